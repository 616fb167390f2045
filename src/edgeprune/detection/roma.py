"""Choosing a detector at run time without labels: ROMA (Lee, Varghese, Vandierendonck, WACV 2023;
papers.md §7, reconstructed: its equations were not read) and its predecessor TOD as a baseline.

Both are `realtime.Chooser`s: after each detection they are told only which detector ran, on which frame,
what it returned and how long it took (`realtime.Observation`), and they decide once per window: the
detections made over `window` frames of the stream (fewer detections for a slower detector).

ROMA, per window, from the active detector's outputs and timings only:
- h_b: the share of its confident detections (score >= `min_score`) in each object-size bin;
- v̂: the objects' apparent speed, px/frame: confident detections of one class matched to the nearest
  centre in the previous detection of the window, displacement / frames between them, the median;
- r: how much slower than profiled the machine runs now, an EWMA of the active detector's window-median
  latency over its profiled p50; every detector's latency is taken as its profiled p50 × r;
- for each detector d, with its profiled AP table AP_d(b) and the β of v̂'s speed bin:
  RAP_d = Σ_b h_b · AP_d(b) · s_d, where s_d is the mean of (1 − β)^k over the frames of a stream at `fps`
  answered by results k frames old when every call takes L_d (the timeline of
  `serve.policy.expected_realtime_accuracy`: dropped frames are those arriving while the detector is busy).
It switches to the argmax only when it beats the active detector by more than `margin` (relative) in
`patience` consecutive windows (hysteresis). A window with no confident detection keeps the detector.

TOD: the median side of the window's confident detections against size thresholds tuned offline
(`tune_tod`, on an unloaded calibration stream): below the first threshold the first (largest) detector, ...
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .metrics import Detections, sides
from .profile import Profile
from .realtime import Observation, Trace, replay, score
from .stream import Stream

MIN_SCORE = 0.3
SPEED_PAIRS = 2  # consecutive detections compared per window for the speed estimate (the cost is per pair)
SIZE_SAMPLES = 4  # detections per window whose boxes make the size histogram


def window_full(seen: Sequence[Observation], frames: int) -> bool:
    """Whether the detections `seen` span `frames` frames of the stream."""
    return seen[-1].frame - seen[0].frame + 1 >= frames


@functools.lru_cache(maxsize=4096)
def staleness(frames_per_call: float, beta: float, calls: int = 100) -> float:
    """Mean (1 − β)^age over the frames of a stream answered by a detector whose every call takes
    `frames_per_call` frame periods, over `calls` calls: `serve.policy.expected_realtime_accuracy(1, ...)` for
    a constant latency, in closed form (a selector cannot afford its loop). Under one period a detector answers
    every frame itself; otherwise call n starts at n·ℓ on frame ⌊n·ℓ⌋ and is delivered at (n + 1)·ℓ, so frame
    i gets call ⌊(i + 1)/ℓ⌋ − 1. The caller rounds its arguments, so that this cache serves the selector."""
    if frames_per_call <= 1:
        return 1.0
    frames = np.arange(math.floor(calls * frames_per_call + 1e-9))
    call = np.floor((frames + 1) / frames_per_call + 1e-9) - 1
    answered = call >= 0
    age = frames[answered] - np.floor(call[answered] * frames_per_call + 1e-9)
    return float(np.mean((1 - beta) ** age))


def spread(window: Sequence, count: int) -> Sequence:
    """At most `count` items of `window`, evenly spread (the selector's cost is per item looked at)."""
    return window[::max(1, -(-len(window) // count))]


# The selector runs between detections on the detector's CPU and looks at a few detections per window, each a
# handful of confident boxes among up to decode's top_k: per box, plain Python beats a dozen small numpy calls
# (each costs a microsecond or more of dispatch); the size histogram, over several detections at once, stays numpy.


def confident_rows(d: Detections, min_score: float) -> slice | list[int]:
    """The rows of `d` scoring at least `min_score`: a slice of the first k in decode's order (by falling score),
    found by bisection, else their indices."""
    scores = d.scores.tolist()
    rising = scores[::-1]
    if rising == sorted(rising):
        return slice(len(scores) - bisect.bisect_left(rising, min_score))
    return [i for i, s in enumerate(scores) if s >= min_score]


def confident(obs: Observation, min_score: float) -> list[tuple[float, float, float, int]]:
    """(centre x, centre y, side sqrt(w·h), class) of each detection of `obs` scoring at least `min_score`."""
    d = obs.detections
    rows = confident_rows(d, min_score)
    return [((x0 + x1) / 2, (y0 + y1) / 2, math.sqrt((x1 - x0) * (y1 - y0)), c)
            for (x0, y0, x1, y1), c in zip(d.boxes[rows].tolist(), d.classes[rows].tolist(), strict=True)]


def speed_estimate(window: Sequence[Observation], min_score: float = MIN_SCORE,
                   pairs: int = SPEED_PAIRS) -> float | None:
    """Median apparent speed (px/frame) of objects across consecutive detections of `window` (at most `pairs`
    pairs, evenly spread), matching each confident box to the nearest confident box of its class in the
    earlier detection, within one box side per frame apart; None when nothing matched."""
    speeds = []
    for i in spread(range(len(window) - 1), pairs):
        gap = window[i + 1].frame - window[i].frame
        if gap <= 0:
            continue
        before: dict[int, list[tuple[float, float]]] = {}  # centres by class: a box is matched within its class
        for xa, ya, _, ca in confident(window[i], min_score):
            before.setdefault(ca, []).append((xa, ya))
        if not before:
            continue
        for x, y, side, c in confident(window[i + 1], min_score):
            if c not in before:
                continue
            nearest = math.inf  # squared, as a loop: a generator per box would cost more than the arithmetic
            for xa, ya in before[c]:
                d2 = (x - xa) ** 2 + (y - ya) ** 2
                if d2 < nearest:
                    nearest = d2
            nearest = math.sqrt(nearest)
            if nearest <= side * gap:
                speeds.append(nearest / gap)
    return statistics.median(speeds) if speeds else None


@dataclass
class Roma:
    profile: Profile
    fps: float
    window: int = 30  # frames of the stream per decision
    margin: float = 0.02
    patience: int = 2
    alpha: float = 0.3  # EWMA weight of the newest latency ratio
    min_score: float = MIN_SCORE
    initial: str | None = None  # default: the detector with the highest offline AP
    name: str = "roma"
    keep: int | None = None  # decisions kept in `decisions` (the newest); None: all (a server keeps a bounded log)
    decisions: list[dict] | collections.deque = field(default_factory=list, repr=False)
    _seen: list[Observation] = field(default_factory=list, repr=False)
    _active: str = ""
    _slowdown: float = 1.0
    _speed: float | None = None
    _ahead: tuple[str, int] = ("", 0)

    def __post_init__(self) -> None:
        if self.keep is not None:
            self.decisions = collections.deque(self.decisions, maxlen=self.keep)
        if not self.fps > 0:
            raise ConfigError(f"fps must be a positive number of frames per second, got {self.fps}")
        if self.window < 1 or self.patience < 1 or self.margin < 0 or not 0 < self.alpha <= 1:
            raise ConfigError(f"roma needs window >= 1, patience >= 1, margin >= 0 and 0 < alpha <= 1; got "
                              f"{self.window}, {self.patience}, {self.margin}, {self.alpha}")
        if self.initial is not None and self.initial not in self.profile.detectors:
            raise ConfigError(f"initial detector {self.initial!r} is not in the profile "
                              f"({', '.join(self.profile.detectors)})")
        self._inner_edges = np.array(self.profile.size_bins[1:-1])
        # per detector, its fresh AP per size bin (none where the profiling stream had no such object)
        self._ap = {n: [0.0 if math.isnan(a) else a for a in p.ap_size] for n, p in self.profile.detectors.items()}

    def start(self) -> str:
        self._active = self.initial or max(self.profile.detectors, key=lambda n: self.profile.detectors[n].ap50)
        return self._active

    def observe(self, obs: Observation) -> str:
        seen = self._seen
        seen.append(obs)  # the per-detection cost stays one append: the work is once per window
        if window_full(seen, self.window):
            self._active = self.decide(seen)
            self._seen = []
        return self._active

    def estimate(self, window: Sequence[Observation]) -> dict | None:
        """RAP per detector from one window, with what it was computed from; None for a window with no
        confident detection."""
        p = self.profile
        found = np.concatenate([o.detections.boxes[confident_rows(o.detections, self.min_score)]
                                for o in spread(window, SIZE_SAMPLES)])
        if len(found) == 0:
            return None
        # the inner edges: a side below the first or past the last falls in the first or last bin
        counts = np.bincount(np.searchsorted(self._inner_edges, sides(found), side="right"),
                             minlength=len(p.size_bins) - 1)
        h = (counts / len(found)).tolist()
        speed = speed_estimate(window, self.min_score)
        if speed is not None:
            self._speed = speed
        beta = p.beta[p.speed_bin(self._speed or 0.0)]
        ratio = statistics.median([o.latency_ms for o in window]) / p.detectors[window[-1].detector].p50_ms
        self._slowdown = (1 - self.alpha) * self._slowdown + self.alpha * ratio
        rap = {}
        for n, d in p.detectors.items():
            # frames per call to 0.05 and β to 0.01: the staleness cache then holds every value met
            frames = round(d.p50_ms * self._slowdown * self.fps / 1000 * 20) / 20
            rap[n] = sum(map(operator.mul, h, self._ap[n])) * staleness(frames, round(beta, 2))
        return {"rap": rap, "sizes": h, "speed": self._speed, "beta": beta, "slowdown": self._slowdown}

    def decide(self, window: Sequence[Observation]) -> str:
        active = window[-1].detector
        est = self.estimate(window)
        if est is None:
            self.decisions.append({"frame": window[-1].frame, "active": active, "want": active,
                                   "reason": "no confident detection in the window: keep the detector"})
            return active
        rap = est["rap"]
        best = max(rap, key=rap.get)
        want, reason = active, "the active detector has the highest estimate"
        if best != active and rap[best] > rap[active] * (1 + self.margin):
            count = self._ahead[1] + 1 if self._ahead[0] == best else 1
            self._ahead = (best, count)
            if count >= self.patience:
                want, reason, self._ahead = best, f"{best} ahead for {count} windows", ("", 0)
            else:
                reason = f"{best} ahead {count}/{self.patience} windows"
        else:
            self._ahead = ("", 0)
        self.decisions.append({"frame": window[-1].frame, "active": active, "want": want, "reason": reason, **est})
        return want


@dataclass
class Tod:
    """TOD: detectors by input size, largest first, and `thresholds[i]`: the median side (canvas px) below
    which detector i is chosen (the last detector above every threshold)."""

    detectors: list[str]
    thresholds: list[float]
    window: int = 30
    min_score: float = MIN_SCORE
    name: str = "tod"
    _seen: list[Observation] = field(default_factory=list, repr=False)
    _active: str = ""

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.detectors) - 1 or list(self.thresholds) != sorted(self.thresholds):
            raise ConfigError(f"TOD needs {len(self.detectors) - 1} increasing thresholds for "
                              f"{len(self.detectors)} detectors, got {self.thresholds}")

    def start(self) -> str:
        self._active = self.detectors[0]
        return self._active

    def observe(self, obs: Observation) -> str:
        self._seen.append(obs)
        if window_full(self._seen, self.window):
            found = np.concatenate([o.detections.boxes[o.detections.scores >= self.min_score] for o in self._seen])
            if len(found):
                middle = float(np.median(sides(found)))
                self._active = self.detectors[int(np.searchsorted(self.thresholds, middle, side="right"))]
            self._seen = []
        return self._active


def tune_tod(stream: Stream, trace: Trace, fps: float, detectors: Sequence[str],
             candidates: Sequence[float] = (10, 14, 18, 22, 26, 30, 36, 44), window: int = 30) -> Tod:
    """TOD with the thresholds (from `candidates`, in increasing order) that give the highest real-time AP on
    the labelled `stream` and its `trace` at `fps`: TOD's per-device tuning, done once on a calibration
    stream. `detectors` largest input first."""
    best, best_ap = None, -1.0
    for cut in itertools.combinations(sorted(candidates), len(detectors) - 1):
        tod = Tod(list(detectors), list(cut), window)
        ap = score(stream, replay(trace, fps, tod).detections(trace))
        if ap > best_ap:
            best, best_ap = tod, ap
    return Tod(list(detectors), list(best.thresholds), window)


def compare(stream: Stream, trace: Trace, profile: Profile, fps: float, tod: Tod, window: int = 30) -> dict:
    """Real-time AP@0.5 of each fixed detector, TOD, ROMA and the per-segment oracle on `stream` (traced in
    `trace`) at `fps`: per segment, their mean (`ap50`) and over all frames pooled, with switches and the
    choosers' own time per detection."""
    from .realtime import Fixed, oracle

    choosers = [Fixed(n) for n in trace.detectors] + [tod, Roma(profile, fps, window)]
    replays = {c.name: replay(trace, fps, c) for c in choosers}
    answers = {n: r.detections(trace) for n, r in replays.items()}
    answers["oracle"], oracle_choice = oracle(stream, trace, {n: replays[f"fixed {n}"] for n in trace.detectors})
    segments = {f"{k}:{s.name}": np.flatnonzero(stream.segment == k) for k, s in enumerate(stream.segments)}
    rows = {}
    for name, dets in answers.items():
        r = replays.get(name)
        per_segment = {k: score(stream, dets, f) for k, f in segments.items()}
        # the mean over segments, as MOT benchmarks average over sequences: pooling the frames of several
        # detectors into one ranking by score penalises any mix of differently calibrated detectors, which put
        # the per-segment oracle below a fixed detector (kept as pooled_ap50)
        rows[name] = {"ap50": float(np.mean(list(per_segment.values()))), "pooled_ap50": score(stream, dets),
                      "segments": per_segment, "switches": r.switches if r else None,
                      "calls": len(r.calls) if r else None,
                      "selector_us_per_call": 1e6 * r.selector_s / len(r.calls) if r else None}
    return {"fps": fps, "rows": rows, "oracle_choice": oracle_choice, "tod_thresholds": tod.thresholds,
            "roma_decisions": list(choosers[-1].decisions)}
