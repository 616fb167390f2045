"""Real-time accuracy of detector choosers on a stream: frames arrive at a fixed rate, a busy detector skips
the frames that arrive meanwhile, and every frame is scored (AP@0.5) with the newest detection finished by
the time the next frame arrives, stale or not.

Trace-driven, with measured latencies: `trace` runs every detector on every frame with ONNX Runtime,
round-robin (so load that changes during the pass falls on all alike; segments flagged `load` run beside
`load_processes` busy processes), and records each one's detections and latency (graph + decoding).
`replay` then plays the stream's timeline for one chooser: a free detector takes the newest frame that has
arrived, finishes after its measured latency on that frame, and the chooser, handed only what the detector
returned and how long it took, names the detector for the next frame. The chooser's own time is measured and
added to the clock. Ground truth is read only by `score`, after the replay.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from .metrics import Detections, ap50
from .stream import Stream


@dataclass(frozen=True)
class Observation:
    """Everything a chooser is told after a detection: which detector ran, on which frame (the stream's clock),
    what it returned, and how long it took. No ground truth."""

    detector: str
    frame: int
    detections: Detections
    latency_ms: float


class Chooser(Protocol):
    name: str

    def start(self) -> str:
        """The detector for the first frame."""

    def observe(self, obs: Observation) -> str:
        """The detector for the next frame, after `obs`."""


@dataclass
class Fixed:
    detector: str
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"fixed {self.detector}"

    def start(self) -> str:
        return self.detector

    def observe(self, obs: Observation) -> str:
        return self.detector


@dataclass
class Trace:
    """Per detector: its detections and latency (ms) on every frame of one stream."""

    detections: dict[str, list[Detections]]
    latency_ms: dict[str, np.ndarray]
    load_processes: int

    @property
    def detectors(self) -> list[str]:
        return list(self.detections)


@contextlib.contextmanager
def cpu_load(processes: int, limit_s: float = 900.0) -> Iterator[None]:
    """`processes` busy-looping Python processes for the duration of the block (each also ends by itself after
    `limit_s`, should this process die without stopping them)."""
    code = f"import time\nend = time.time() + {limit_s}\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        if procs:
            time.sleep(0.3)  # let them get scheduled before anything is timed
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def trace(detectors: Sequence, stream: Stream, load_processes: int = 2,
          progress: Callable[[int, int], None] | None = None) -> Trace:
    """Run every detector (a `detector.Runner`) on every frame of `stream`, round-robin with a rotating first
    detector; segments flagged `load` run beside `load_processes` busy processes. `progress(done, total)`
    after each frame."""
    names = [d.name for d in detectors]
    dets = {n: [] for n in names}
    lat = {n: np.empty(len(stream)) for n in names}
    for d in detectors:  # warm-up: first calls allocate
        d.detect(stream.frames[0])
    t = 0
    for k, seg in enumerate(stream.segments):
        frames = np.flatnonzero(stream.segment == k)
        with cpu_load(load_processes if seg.load else 0):
            for i in frames:
                for j in range(len(detectors)):
                    d = detectors[(i + j) % len(detectors)]
                    out, ms = d.detect(stream.frames[i])
                    dets[d.name].append((i, out))
                    lat[d.name][i] = ms
                t += 1
                if progress is not None:
                    progress(t, len(stream))
    ordered = {n: [o for _, o in sorted(v, key=lambda p: p[0])] for n, v in dets.items()}
    return Trace(ordered, lat, load_processes)


@dataclass
class Replay:
    """One chooser on one stream: for every frame the answer it was scored with ((detector, source frame),
    or None before the first detection finished), every call made, and the chooser's own time."""

    chooser: str
    answers: list[tuple[str, int] | None]
    calls: list[tuple[str, int, float]]  # detector, frame, finished at (s)
    selector_s: float
    switches: int
    extras: dict = field(default_factory=dict)

    def detections(self, trace: Trace) -> list[Detections]:
        empty = Detections.empty()
        return [empty if a is None else trace.detections[a[0]][a[1]] for a in self.answers]


def replay(trace: Trace, fps: float, chooser: Chooser, frames: int | None = None,
           charge_selector: bool = True) -> Replay:
    """Play the stream's timeline at `fps` frames/s for `chooser` (see the module docstring); with
    charge_selector=False the chooser's time is measured but not added to the clock (replays timed alike)."""
    if not fps > 0 or not math.isfinite(fps):
        raise ConfigError(f"fps must be a positive number of frames per second, got {fps}")
    total = frames or len(next(iter(trace.latency_ms.values())))
    active = chooser.start()
    if active not in trace.detections:
        raise ConfigError(f"chooser {chooser.name} named detector {active!r}; the trace has "
                          f"{', '.join(trace.detectors)}")
    t, nxt, calls, selector, switches = 0.0, 0, [], 0.0, 0
    while True:
        j = max(nxt, math.floor(t * fps + 1e-9))  # the newest frame that has arrived, or the next one
        if j >= total:
            break
        ms = float(trace.latency_ms[active][j])
        t = max(t, j / fps) + ms / 1000
        calls.append((active, j, t))
        nxt = j + 1
        t0 = time.perf_counter()
        want = chooser.observe(Observation(active, j, trace.detections[active][j], ms))
        spent = time.perf_counter() - t0
        selector += spent
        if charge_selector:
            t += spent  # the chooser runs on the same CPU, between detections
        if want != active:
            if want not in trace.detections:
                raise ConfigError(f"chooser {chooser.name} named detector {want!r}; the trace has "
                                  f"{', '.join(trace.detectors)}")
            switches += 1
            active = want
    done = np.array([c[2] for c in calls])
    newest = np.searchsorted(done, (np.arange(total) + 1) / fps, side="right") - 1  # finished before i + 1 arrives
    answers = [None if n < 0 else (calls[n][0], calls[n][1]) for n in newest]
    return Replay(chooser.name, answers, calls, selector, switches)


def score(stream: Stream, dets: Sequence[Detections], frames: np.ndarray | None = None) -> float:
    """Real-time AP@0.5 of per-frame answers `dets` against the stream's ground truth (of `frames` only)."""
    idx = np.arange(len(stream)) if frames is None else frames
    return ap50([dets[i] for i in idx], [stream.boxes[i] for i in idx], [stream.classes[i] for i in idx])


def oracle(stream: Stream, trace: Trace, fixed: dict[str, Replay]) -> tuple[list[Detections], dict[str, str]]:
    """The per-segment oracle (an upper bound that reads labels): in each segment, the answers of the fixed
    detector whose real-time AP there is highest, switching free. Returns (answers, segment -> detector)."""
    answers: list[Detections] = [Detections.empty()] * len(stream)
    per_fixed = {n: r.detections(trace) for n, r in fixed.items()}
    chosen = {}
    for k, seg in enumerate(stream.segments):
        frames = np.flatnonzero(stream.segment == k)
        best = max(per_fixed, key=lambda n: score(stream, per_fixed[n], frames))
        chosen[f"{k}:{seg.name}"] = best
        for i in frames:
            answers[i] = per_fixed[best][i]
    return answers, chosen
