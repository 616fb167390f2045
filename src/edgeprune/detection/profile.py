"""Offline profile of a detector family (ROMA's tables), measured on a labelled SYNTHETIC stream:

- AP@0.5 of each detector per object-size bin (box side sqrt(w·h), canvas px);
- per speed bin, AP@0.5 of detections k frames old (frame j's detections against frame j + k's objects,
  k = 0..max_drop) and the degradation factor β fitted to it, log(AP_k / AP_0) = k·log(1 − β), one β per
  speed bin pooled over the detectors (least squares through the origin);
- each detector's latency (graph + decoding, ONNX Runtime, 1 thread), p50 and p90 over the stream's frames,
  timed round-robin with the others;

saved as JSON with the machine it was measured on. `load` reads it back; measured elsewhere, its latencies
are rescaled by the ratio of this machine's latency to the recorded one, measured now, with a warning.
"""

from __future__ import annotations

import bisect
import json
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EdgePruneError
from .metrics import ap50
from .stream import Stream

FORMAT = "edgeprune.roma-profile/1"
SIZE_BINS = (0.0, 12.0, 18.0, 26.0, 36.0, float("inf"))
SPEED_BINS = (0.0, 1.0, 3.0, float("inf"))
MAX_DROP = 6


class ProfileError(EdgePruneError):
    """A ROMA profile is missing, corrupt, or does not fit the detectors it is used with."""


class OtherMachineWarning(UserWarning):
    """The profile was measured on another machine; its latencies were rescaled."""


@dataclass
class DetectorProfile:
    input_size: int
    p50_ms: float
    p90_ms: float
    ap50: float  # over all objects of the profiling stream, fresh detections
    ap_size: list[float]  # per SIZE bin; 0 where nothing was found, NaN where the stream had no such object


@dataclass
class Profile:
    detectors: dict[str, DetectorProfile]
    classes: list[int]
    size_bins: list[float]
    speed_bins: list[float]
    beta: list[float]  # per speed bin
    ap_drop: dict[str, list[list[float]]]  # detector -> speed bin -> AP at k = 0..max_drop
    machine: dict
    stream: dict
    rescaled: dict | None = None
    format: str = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def speed_bin(self, speed: float) -> int:
        """The speed bin of `speed` px/frame (one above the last edge in the last bin)."""
        return min(max(bisect.bisect_right(self.speed_bins, speed) - 1, 0), len(self.speed_bins) - 2)


def machine() -> dict:
    """What identifies the machine a profile was measured on."""
    from ..measure import environment

    return {"host": platform.node(), **environment()}


def fit_beta(ratios: Sequence[Sequence[float]]) -> float:
    """β of (1 − β)^k ≈ AP_k / AP_0, from rows of ratios at k = 1, 2, ... (least squares on the logs, through
    the origin; ratios <= 0 are left out). 0 when nothing is left to fit."""
    k, y = [], []
    for row in ratios:
        for i, r in enumerate(row, start=1):
            if r > 0 and np.isfinite(r):
                k.append(i)
                y.append(np.log(min(r, 1.0)))
    if not k:
        return 0.0
    slope = float(np.dot(k, y) / np.dot(k, k))
    return float(1 - np.exp(slope))


def measure(detectors: Sequence, stream: Stream, size_bins: Sequence[float] = SIZE_BINS,
            speed_bins: Sequence[float] = SPEED_BINS, max_drop: int = MAX_DROP,
            progress: Callable[[int, int], None] | None = None) -> Profile:
    """The profile of `detectors` (`detector.Runner`s of one class set) on the labelled `stream`."""
    from .detector import check_classes
    from .realtime import trace

    check_classes(detectors)
    if max_drop < 1:
        raise ConfigError(f"max_drop counts frames and must be >= 1, got {max_drop}")
    if any(s.load for s in stream.segments):
        raise ConfigError("the profiling stream has a load segment; profile on an unloaded stream")
    run = trace(detectors, stream, 0, progress)
    gt_b, gt_c = stream.boxes, stream.classes
    profiles, drops = {}, {}
    for d in detectors:
        dets = run.detections[d.name]
        lat = run.latency_ms[d.name]
        profiles[d.name] = DetectorProfile(
            d.input_size, float(np.percentile(lat, 50)), float(np.percentile(lat, 90)), ap50(dets, gt_b, gt_c),
            [ap50(dets, gt_b, gt_c, side_range=bin_) for bin_ in zip(size_bins[:-1], size_bins[1:], strict=True)])
        drops[d.name] = []
        for lo, hi in zip(speed_bins[:-1], speed_bins[1:], strict=True):
            row = []
            for k in range(max_drop + 1):
                j = np.flatnonzero(stream.segment[:len(stream) - k] == stream.segment[k:])  # same segment
                ignore = [~((stream.speeds[i + k] >= lo) & (stream.speeds[i + k] < hi)) for i in j]
                row.append(ap50([dets[i] for i in j], [gt_b[i + k] for i in j], [gt_c[i + k] for i in j],
                                ignore=ignore))
            drops[d.name].append(row)
    beta = []
    for v in range(len(speed_bins) - 1):
        rows = [[r[k] / r[0] for k in range(1, max_drop + 1)] for r in (drops[n][v] for n in drops) if r[0] > 0]
        beta.append(fit_beta(rows))
    return Profile(profiles, list(detectors[0].classes), list(size_bins), list(speed_bins), beta, drops, machine(),
                   stream.describe())


def save(profile: Profile, path: str | Path) -> None:
    from ..files import write_json

    write_json(Path(path), json.loads(json.dumps(profile.to_dict(), allow_nan=True)))


def from_dict(d: dict, where: str) -> Profile:
    """The profile recorded as `d` (Profile.to_dict), read from `where`."""
    try:
        return Profile(**{**d, "detectors": {k: DetectorProfile(**v) for k, v in d["detectors"].items()}})
    except (KeyError, TypeError, AttributeError) as e:
        raise ProfileError(f"{where} is incomplete ({e}); measure the profile again") from None


def load(path: str | Path, detectors: Sequence | None = None, calls: int = 30,
         warn: Callable[[str], None] | None = None) -> Profile:
    """The profile at `path`. With `detectors` (`detector.Runner`s), it must name exactly them, with one class
    set; and if it was measured on another machine, `warn(message)` (default: warnings.warn) is called and its
    latencies are multiplied by the median ratio of their latency now (`calls` calls each on a blank frame,
    round-robin) to the recorded one, which `rescaled` records."""
    from .detector import read_record

    path = Path(path)
    profile = from_dict(read_record(path, FORMAT, ProfileError, "a ROMA profile", f"no profile at {path}",
                                    f"measure one with `edgeprune detect profile FAMILY --out {path}`"), str(path))
    if detectors is None:
        return profile
    from .detector import check_classes

    check_classes(detectors)
    names = sorted(x.name for x in detectors)
    if names != sorted(profile.detectors) or list(detectors[0].classes) != profile.classes:
        raise ProfileError(f"{path} profiles detectors {sorted(profile.detectors)} of classes {profile.classes}, "
                           f"not {names} of classes {list(detectors[0].classes)}; profile these detectors")
    here = machine()
    if any(here.get(k) != profile.machine.get(k) for k in ("host", "processor", "cpu_count")):
        ratio = _latency_ratio(profile, detectors, calls)
        for p in profile.detectors.values():
            p.p50_ms *= ratio
            p.p90_ms *= ratio
        profile.rescaled = {"ratio": ratio, "from": profile.machine, "to": here}
        (warn or (lambda m: warnings.warn(m, OtherMachineWarning, stacklevel=3)))(
            f"profile {path} was measured on {profile.machine.get('host')!r} ({profile.machine.get('processor')}, "
            f"{profile.machine.get('cpu_count')} CPUs), not on this machine ({here['host']!r}); its latencies "
            f"were rescaled by {ratio:.3g}, measured now. Profile on this machine for its own AP tables")
    return profile


def _latency_ratio(profile: Profile, detectors: Sequence, calls: int) -> float:
    from .stream import CANVAS

    frame = np.zeros((CANVAS, CANVAS), np.uint8)
    times = {d.name: [] for d in detectors}
    for d in detectors:
        d.detect(frame)
    for _ in range(calls):
        for d in detectors:
            times[d.name].append(d.detect(frame)[1])
    return float(np.median([np.median(t) / profile.detectors[n].p50_ms for n, t in times.items()]))
