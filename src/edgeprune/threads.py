"""Thread policy for CPU-heavy steps (scoring, training, surgery checks, ONNX Runtime outside timed settings).

`--threads N|auto`: `resolve(spec)` turns it into a count when a step starts, `step(spec)` runs a step with
torch set to it. `auto` counts the CPUs this process may use (its affinity mask, capped by a cgroup v2
`cpu.max` or v1 CFS quota) minus the work other processes are doing on them right now, sampled from
/proc/stat over `SAMPLE_S` with this process's own CPU time taken out. The load average is not used: it
is a one-minute mean, so a competitor that started seconds ago barely shows in it.

Why it matters: torch's intra-op workers wait for each other at every operator, so a thread that shares
its core with another process stalls the rest. With one of two cores busy, SynFlow-100 on ResNet-20 took
16–18 s with two threads and 5.5–5.7 s with one (issue 20).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConfigError

AUTO = "auto"
SAMPLE_S = 0.1
# A core that others keep more than this busy is not worth a thread of ours (see the module docstring).
SLACK = 0.25


def resolve(spec: str | int, sample_s: float = SAMPLE_S) -> int:
    """The thread count for `spec`: a positive integer (as int or text) as given, or `"auto"` (see module)."""
    if isinstance(spec, str) and spec.strip().lower() == AUTO:
        return auto(usable_cpus(), busy_elsewhere(sample_s))
    return check(spec)


def check(spec: str | int) -> int:
    """A fixed thread count as an int, 0 for "auto"; ConfigError naming the fix for anything else (no sampling:
    cheap enough to validate options with)."""
    if isinstance(spec, str) and spec.strip().lower() == AUTO:
        return 0
    try:
        n = int(spec)
    except (TypeError, ValueError):
        n = 0
    if isinstance(spec, bool) or n < 1 or str(spec).strip() != str(n):
        raise ConfigError(f"threads must be a positive integer or 'auto', got {spec!r}: e.g. --threads 2 or "
                          "--threads auto")
    return n


def auto(usable: float, busy: float) -> int:
    """Threads for `usable` CPUs of which others keep `busy` CPUs' worth occupied: the free whole cores,
    where a core counts as free unless others use more than `SLACK` of it; at least 1."""
    return max(1, min(math.floor(usable), math.floor(usable - busy + SLACK)))


@contextmanager
def step(spec: str | int) -> Iterator[int]:
    """Run a step with torch's intra-op threads set from `spec` (resolved now); yields the count, restores
    the previous count afterwards."""
    n = resolve(spec)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> float:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (fractional)."""
    cpus = float(len(_affinity()))
    quota = cgroup_quota(cgroup_root, proc_self)
    return min(cpus, quota) if quota is not None else cpus


def cgroup_quota(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, v2 or v1; None if none."""
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: cpu.max holds "max PERIOD" or "QUOTA PERIOD"
            quotas += [q / p for q, p in _walk(cgroup_root, path, _v2_quota)]
        elif "cpu" in controllers.split(","):  # v1: cpu.cfs_quota_us is -1 when unlimited
            for mount in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root / "cpuacct,cpu"):
                quotas += [q / p for q, p in _walk(mount, path, _v1_quota)]
    return min(quotas) if quotas else None


def _walk(mount: Path, path: str, read) -> list[tuple[int, int]]:
    """`read(folder)` for the cgroup folder and each ancestor up to the mount; inside a container the
    cgroup namespace shows the path as "/", so that is the mount itself."""
    found = []
    folder = mount / path.strip("/")
    while True:
        value = read(folder)
        if value is not None:
            found.append(value)
        if folder == mount or mount not in folder.parents:
            return found
        folder = folder.parent


def _v2_quota(folder: Path) -> tuple[int, int] | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else (int(quota), int(period))


def _v1_quota(folder: Path) -> tuple[int, int] | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return (quota, period) if quota > 0 and period > 0 else None


def busy_elsewhere(sample_s: float = SAMPLE_S, proc_stat: Path = Path("/proc/stat")) -> float:
    """CPUs' worth of work that other processes do on this process's CPUs, measured over `sample_s`."""
    cpus = _affinity()
    try:
        before, own_before, t0 = _busy_ticks(proc_stat, cpus), _own_seconds(), time.perf_counter()
        time.sleep(sample_s)
        after, own_after, t1 = _busy_ticks(proc_stat, cpus), _own_seconds(), time.perf_counter()
    except (OSError, ValueError):  # no /proc (macOS): the load average is all there is
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = (after - before) / os.sysconf("SC_CLK_TCK") - (own_after - own_before)
    return max(0.0, busy / (t1 - t0))


def _busy_ticks(proc_stat: Path, cpus: set[int]) -> int:
    """Clock ticks the given CPUs spent not idle (everything but idle and iowait), from /proc/stat."""
    total = 0
    for line in proc_stat.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks) - ticks[3] - ticks[4]
    return total


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))
