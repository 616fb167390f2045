"""What the training process itself holds while NeuroFlux trains, so the budget can be checked against it.

The budget (`--memory-budget M`) bounds the memory training adds to the process: the resident set above what the
process held just before the first block (Python, torch's libraries, the data set in memory: the *baseline*,
which no choice of block or batch changes). A run records both figures, so a user who reads `/usr/bin/time`'s
maximum resident set (baseline + increment) can hold it against the budget:

- ``baseline_rss``: the resident set before the first block trains;
- per block, ``train_peak_increment``: the high-water mark of the resident set while the block trains, above the
  resident set when it began, less the file-backed pages faulted in meanwhile (the previous block's memory-mapped
  outputs and kernel code, which the kernel may drop at will); the same measure as `memory.measure_peak`;
- ``process_peak_rss``: the highest resident set seen from the baseline on (what `/usr/bin/time` reports, less
  what the process held before training began and dropped since).

The allocator: glibc keeps freed blocks below its mmap threshold in the heap, and raises that threshold as larger
blocks are freed, so a freed activation may stay resident and the next block's peak lands on top of it (with the
default threshold one of three identical runs went 5 % over M). `bound_heap()` pins the threshold at 64 KiB in
the training process itself (`mallopt`), the setting `memory.measure_peak` gives its measuring subprocess, so what
the planner predicts and what the run holds follow the same rule. The kernel's high-water mark is reset through
`/proc/self/clear_refs` (Linux); elsewhere the figures are recorded as null.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from dataclasses import asdict, dataclass

MMAP_THRESHOLD = 65536  # bytes: blocks above it are mmapped and returned to the system when freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


@functools.cache
def bound_heap() -> str | None:
    """Pin glibc's mmap threshold at MMAP_THRESHOLD bytes in this process (once); the setting applied, or None
    where the C library is not glibc (the budget then holds less tightly: the run's record says so)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return None
    return f"glibc M_MMAP_THRESHOLD={MMAP_THRESHOLD} (mallopt, in the training process)"


def status(key: str) -> int | None:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM, RssFile, ...), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":")), None)
    except OSError:
        return None


def reset_high_water() -> bool:
    """Reset the kernel's high-water mark of the resident set (VmHWM) to the present resident set."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Window:
    """A measured stretch of training: resident set and file-backed pages when it began."""

    rss: int | None
    file: int | None
    reset: bool

    @classmethod
    def open(cls) -> Window:
        reset = reset_high_water()
        return cls(status("VmRSS"), status("RssFile"), reset)

    def close(self) -> tuple[int | None, int | None]:
        """(peak increment above the start, less file-backed pages faulted in; the high-water mark itself)."""
        hwm, file = status("VmHWM"), status("RssFile")
        if not self.reset or None in (hwm, self.rss, file, self.file):
            return None, hwm
        return max(0, hwm - self.rss - max(0, file - self.file)), hwm


@dataclass
class Record:
    """The run's memory record (report.json's details.neuroflux.memory)."""

    budget: int
    allocator: str | None
    baseline_rss: int | None
    blocks: list[dict]
    process_peak_rss: int | None = None

    def add(self, block: int, increment: int | None, hwm: int | None) -> None:
        self.blocks.append({"block": block, "train_peak_increment": increment,
                            "increment_over_budget": None if increment is None else increment / self.budget})
        if hwm is not None:
            self.process_peak_rss = max(self.process_peak_rss or 0, hwm)

    def to_dict(self) -> dict:
        increments = [b["train_peak_increment"] for b in self.blocks if b["train_peak_increment"] is not None]
        return {**asdict(self), "meaning": "budget bounds the increment above baseline_rss",
                "peak_increment": max(increments, default=None),
                "within_budget": None if not increments else max(increments) <= self.budget}
