"""Which variant to serve: switching policies that look at the portfolio's profile and at what the server
measures, never at labels.

A policy sees one `Window` at a time (the latencies of the requests the active variant answered since the
last decision) and returns a `Decision`: the variant it wants, whether the budget is met, and the inputs
it decided on, so every decision can be logged and checked.

- `fixed`: one variant, switched only by the API.
- `accuracy-floor`: the fastest variant whose accuracy is at least A.
- `latency`: keep p90 within a budget B. The slowdown r (observed/profiled p90 of the active variant, an
  EWMA) estimates how much slower the machine runs now; variants whose profiled p90 × r fits B·(1 − margin)
  are candidates and the most accurate is wanted. It switches down after `down_after` windows that want a
  faster variant and up only after `up_after` windows that want a more accurate one (hysteresis).
- `realtime` (after ROMA, papers.md §7): a stream of F frames/s, each frame answered by the newest result
  available before the next frame arrives. A variant whose latency is L answers about one frame in L·F and the
  others get stale results, of the same scene with probability (1 − β)^k when k frames old (β: how often the
  scene changes), and right by chance (1/classes) otherwise. Its expected real-time accuracy
  (`expected_realtime_accuracy`) is taken over the latencies the variant was measured at while active (an
  unmeasured one: the active one's, scaled by their profiled ratio); it switches for a gain above a margin.
- `roma` (papers.md §7; edgeprune.detection.roma): for a portfolio of detectors (`edgeprune portfolio build
  FAMILY --profile PATH`): each window's decoded detections of the routed requests are handed, with their
  latencies (graph + decoding), to ROMA, which estimates every detector's real-time AP from them (never from
  labels) and switches with hysteresis. The requests are taken as the frames of a stream at `fps` that the
  active detector kept up with. Its tables are the profile recorded in the portfolio (or `profile=PATH`).

A policy is a `Policy` dataclass declared with `@register(name, tasks=...)`: its fields after `manifest` are its
parameters (checked by type in `make`, shown by the API), `decide` is called once per window. The built-in ones
are below; others are imported from the `edgeprune.policies` entry-point group and from `$EDGEPRUNE_POLICIES`
(comma-separated modules), or by importing their module (tests/plugin_policy.py is the complete example). The
server, its API's schema and `make` know a policy only from the registry (registry.py).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ..portfolio import Manifest
from .interface import TASKS, Decision, Policy, Window  # noqa: F401  (re-exported: a policy imports them here)
from .registry import make, names, register  # noqa: F401  (make and names re-exported: policy.make(...))

DECISIONS_KEPT = 100  # the newest decisions the roma policy keeps in memory
# upper bounds of the parameters: past them a policy's arithmetic overflows (1e308 frames/s) or means nothing
MAX_MS, MAX_FPS, MAX_COUNT = 1e6, 1e4, 10**6
MIN_FPS = 1e-3  # one frame in about 17 minutes: below it a frame's period overflows the decision arithmetic


@register("fixed")
@dataclass
class Fixed(Policy):
    variant: str | None = None
    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.variant is not None:
            if not isinstance(self.variant, str):
                raise ConfigError(f"policy 'fixed': variant must be a variant's id, one of "
                                  f"{', '.join(self.manifest.ids)}; got {self.variant!r}")
            self.manifest.variant(self.variant)

    def decide(self, window: Window) -> Decision:
        want = self.variant or window.variant
        return Decision(self.name, window.variant, want, True, {"variant": self.variant}, "fixed by the API")


@register("accuracy-floor")
@dataclass
class AccuracyFloor(Policy):
    accuracy: float = 0.0
    name: str = "accuracy-floor"

    def __post_init__(self) -> None:
        if not 0 <= self.accuracy <= 1:
            raise ConfigError(f"accuracy floor is a fraction in [0, 1], got {self.accuracy}")

    def decide(self, window: Window) -> Decision:
        ok = [v for v in self.manifest.variants if v.accuracy >= self.accuracy]
        if ok:
            want = min(ok, key=lambda v: v.p50_ms)
            return Decision(self.name, window.variant, want.id, True, {"floor": self.accuracy},
                            f"fastest variant with accuracy >= {self.accuracy:.4f}")
        best = max(self.manifest.variants, key=lambda v: v.accuracy)
        return Decision(self.name, window.variant, best.id, False, {"floor": self.accuracy},
                        f"no variant reaches {self.accuracy:.4f}: the most accurate is served")


@dataclass
class _Slowdown:
    """EWMA of observed/profiled p90 of the active variant: how much slower than profiled the machine runs now."""

    alpha: float = 0.2
    r: float = 1.0

    def update(self, manifest: Manifest, window: Window) -> float:
        ratio = window.p90_ms / manifest.variant(window.variant).p90_ms
        self.r = (1 - self.alpha) * self.r + self.alpha * ratio
        return ratio


@register("latency")
@dataclass
class Latency(Policy):
    budget_ms: float = 10.0
    margin: float = 0.1
    alpha: float = 0.2
    down_after: int = 1
    up_after: int = 5
    name: str = "latency"
    _slow: _Slowdown = field(default_factory=_Slowdown, repr=False)
    _down: int = 0
    _up: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.budget_ms <= MAX_MS or not 0 <= self.margin < 1 or not 0 < self.alpha <= 1:
            raise ConfigError(f"latency policy needs 0 < budget_ms <= {MAX_MS:g}, 0 <= margin < 1, 0 < alpha <= 1; "
                              f"got {self.budget_ms}, {self.margin}, {self.alpha}")
        if not 1 <= self.down_after <= MAX_COUNT or not 1 <= self.up_after <= MAX_COUNT:
            raise ConfigError(f"down_after and up_after count windows and must be in [1, {MAX_COUNT}], got "
                              f"{self.down_after}, {self.up_after}")
        self._slow.alpha = self.alpha

    def decide(self, window: Window) -> Decision:
        ratio = self._slow.update(self.manifest, window)
        r, limit = self._slow.r, self.budget_ms * (1 - self.margin)
        fits = [v for v in self.manifest.variants if v.p90_ms * r <= limit]
        target = max(fits, key=lambda v: v.accuracy) if fits else min(self.manifest.variants, key=lambda v: v.p90_ms)
        active = self.manifest.variant(window.variant)
        inputs = {"observed_p90_ms": window.p90_ms, "ratio": ratio, "slowdown": r, "limit_ms": limit,
                  "fits": [v.id for v in fits], "requests": len(window.latencies_ms)}
        want, reason = active.id, "the active variant is the one wanted"
        if target.accuracy < active.accuracy or (target.id != active.id and active not in fits):
            self._down, self._up = self._down + 1, 0
            want, reason = (target.id, "over budget: down") if self._down >= self.down_after else \
                (active.id, f"over budget {self._down}/{self.down_after} windows")
        elif target.accuracy > active.accuracy:
            self._up, self._down = self._up + 1, 0
            want, reason = (target.id, "slack: up") if self._up >= self.up_after else \
                (active.id, f"slack {self._up}/{self.up_after} windows")
        else:
            self._up = self._down = 0
        if want != active.id:
            self._up = self._down = 0
        met = self.manifest.variant(want).p90_ms * r <= self.budget_ms
        return Decision(self.name, active.id, want, met, inputs, reason)


@register("realtime", tasks=("classify",))
@dataclass
class Realtime(Policy):
    fps: float = 30.0
    beta: float = 0.5
    margin: float = 0.01  # switch only for an expected gain above this (hysteresis)
    history: int = 200  # latencies remembered per variant, measured while it was active
    name: str = "realtime"
    _seen: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.manifest.task == "detect":
            raise ConfigError("the realtime policy scores classifiers (right or wrong per frame); this portfolio "
                              "holds detectors: use the roma policy")
        if not MIN_FPS <= self.fps <= MAX_FPS or not 0 <= self.beta <= 1 or not 0 <= self.margin <= 1 \
                or not 1 <= self.history <= MAX_COUNT:
            raise ConfigError(f"realtime policy needs {MIN_FPS:g} <= fps <= {MAX_FPS:g}, 0 <= beta <= 1, "
                              f"0 <= margin <= 1 and 1 <= history <= {MAX_COUNT}; got {self.fps}, {self.beta}, "
                              f"{self.margin}, {self.history}")

    def decide(self, window: Window) -> Decision:
        # Every variant's latencies: its own, as measured while it was active (the tail included: on a shared
        # CPU, preemptions of several ms hit a long call more often than a short one); a variant not measured
        # yet gets the active one's samples scaled by the ratio of their profiled p50.
        active = self.manifest.variant(window.variant)
        seen = self._seen.setdefault(active.id, collections.deque(maxlen=self.history))
        seen.extend(window.latencies_ms)
        mine = np.asarray(seen)
        score, latency, measured = {}, {}, []
        for v in self.manifest.variants:
            if v.id in self._seen:
                samples = np.asarray(self._seen[v.id])
                measured.append(v.id)
            else:
                samples = mine * (v.p50_ms / active.p50_ms)
            latency[v.id] = float(np.median(samples))
            score[v.id] = expected_realtime_accuracy(v.accuracy, samples, self.fps, self.beta,
                                                     1 / self.manifest.classes)
        best = max(score, key=score.get)
        gain = score[best] - score[active.id]
        want, reason = (best, "highest expected real-time accuracy") if gain > self.margin else \
            (active.id, f"no variant better by more than {self.margin}")
        return Decision(self.name, active.id, want, True,
                        {"latency_ms": latency, "expected_accuracy": score, "measured": measured, "fps": self.fps,
                         "beta": self.beta, "requests": len(window.latencies_ms)}, reason)


def expected_realtime_accuracy(accuracy: float, latency_ms: float | Sequence[float], fps: float, beta: float,
                               chance: float = 0.0, calls: int = 200) -> float:
    """The share of frames answered right on a stream of `fps` frames/s by a variant of offline `accuracy` whose
    calls take `latency_ms` (one value, or a measured sequence, repeated to `calls` calls). The stream's timeline
    is played without images: frame i arrives at i/F; a free server takes the newest frame that has arrived (or
    waits for the next); frame i is answered by the newest result delivered before frame i + 1 arrives, made
    from frame j: k = i − j frames old. That result is of the same scene with probability s = (1 − β)^k (β: the
    chance that the scene changes from one frame to the next) and then right with probability `accuracy`;
    otherwise it is right by `chance` (1/classes for a classifier). Frames before the first result are not
    counted."""
    lat = np.atleast_1d(np.asarray(latency_ms, dtype=float)) / 1000
    lat = np.resize(lat, max(calls, len(lat)))
    done, made = np.empty(len(lat)), np.empty(len(lat), dtype=int)  # when each result is delivered, from which frame
    t, frame = 0.0, 0
    for n, seconds in enumerate(lat):
        frame = max(frame, math.floor(t * fps + 1e-9))  # the newest frame arrived (or the next one, waited for)
        t = max(t, frame / fps) + seconds
        done[n], made[n] = t, frame
        frame += 1
    first, last = made[0], math.floor(t * fps) - 1  # frames whose deadline ((i + 1) / F) falls within the calls
    frames = np.arange(first, last + 1)
    newest = np.searchsorted(done, (frames + 1) / fps, side="right") - 1
    answered = newest >= 0
    same = (1 - beta) ** (frames[answered] - made[newest[answered]])
    return float(np.mean(same * accuracy + (1 - same) * chance)) if answered.any() else 0.0


@register("roma", tasks=("detect",))
@dataclass
class Roma(Policy):
    profile: str = ""  # a ROMA profile of the portfolio's detectors; default: the one the portfolio records
    fps: float = 30.0
    margin: float = 0.02
    patience: int = 2
    name: str = "roma"
    reads_outputs: ClassVar[bool] = True
    _roma: object = field(default=None, repr=False)
    _frame: int = 0

    def __post_init__(self) -> None:
        from ..detection import profile as prof
        from ..detection import roma

        if not MIN_FPS <= self.fps <= MAX_FPS or not 0 <= self.margin <= 1 \
                or not 1 <= self.patience <= MAX_COUNT:
            raise ConfigError(f"roma policy needs {MIN_FPS:g} <= fps <= {MAX_FPS:g}, 0 <= margin <= 1 and "
                              f"1 <= patience <= {MAX_COUNT}; got {self.fps}, {self.margin}, {self.patience}")
        if self.manifest.task != "detect":
            raise ConfigError("the roma policy chooses among detectors; this portfolio holds classifiers: build "
                              "one from a detector family (`edgeprune portfolio build FAMILY --profile PATH`)")
        p = prof.load(self.profile) if self.profile else prof.from_dict(self.manifest.detection["profile"],
                                                                        "the portfolio's manifest")
        if sorted(p.detectors) != sorted(self.manifest.ids):
            raise ConfigError(f"profile {self.profile} is of detectors {sorted(p.detectors)}, the portfolio holds "
                              f"{sorted(self.manifest.ids)}; profile the portfolio's detectors")
        # a server decides for as long as it runs: keep the newest decisions only (the switch log has the rest)
        self._roma = roma.Roma(p, self.fps, margin=self.margin, patience=self.patience, keep=DECISIONS_KEPT)

    def decide(self, window: Window) -> Decision:
        from ..detection.realtime import Observation

        seen = []
        # a policy set in mid-window has the outputs of the window's last requests only
        latencies = window.latencies_ms[len(window.latencies_ms) - len(window.outputs):]
        for dets, ms in zip(window.outputs, latencies, strict=True):
            for d in dets:  # one frame per sample of the batch
                # frames a stream at fps delivered while this one was processed: the next one is that far on
                self._frame += max(1, math.ceil(ms * self.fps / 1000))
                seen.append(Observation(window.variant, self._frame, d, ms))
        if not seen:
            return Decision(self.name, window.variant, window.variant, True, {"requests": 0},
                            "no output in the window: keep the detector")
        want = self._roma.decide(seen)
        last = self._roma.decisions[-1]
        inputs = {k: v for k, v in last.items() if k not in ("active", "want", "reason")}
        return Decision(self.name, window.variant, want, True, {**inputs, "requests": len(seen)}, last["reason"])
