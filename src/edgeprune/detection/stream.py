"""A SYNTHETIC video stream for detectors, deterministic by seed: Fashion-MNIST items moving on a dark canvas,
in scenario segments of chosen object sizes and speeds, with boxes and classes as ground truth.

It stands in for MOT17Det/MOT20Det, which cannot be had offline: a mechanism check of run-time detector
choice (ROMA), never a result on real video. Each segment holds its own set of objects for its whole length;
an object keeps its item, size and velocity and bounces off the canvas edges, so a detection k frames old is
off by about k × speed pixels, the effect ROMA's dropped-frame model describes. The `load` flag of a segment
asks whoever runs detectors on it to add CPU load (the stream itself is unchanged by it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError

CANVAS = 128  # px, square
ITEM_PIXEL = 32  # an item's pixel brighter than this (of 255) is part of its box
NOISE = 6.0  # background noise, std in grey levels


@dataclass(frozen=True)
class Segment:
    """A stretch of `frames` frames whose objects have sides in `sizes` px and speeds in `speeds` px/frame."""

    name: str
    frames: int
    sizes: tuple[int, int]
    speeds: tuple[float, float]
    objects: tuple[int, int] = (3, 6)
    load: bool = False


# Small objects need a large input; fast ones need a short latency (a stale box misses them): the kinds are
# chosen so that no one detector of an input-size family is best everywhere.
KINDS = {
    "small-slow": dict(sizes=(8, 16), speeds=(0.0, 0.5)),
    "small-fast": dict(sizes=(8, 16), speeds=(1.5, 3.0)),
    "large-slow": dict(sizes=(28, 48), speeds=(0.0, 0.5)),
    "large-fast": dict(sizes=(28, 48), speeds=(4.0, 8.0)),
    "mixed-sizes": dict(sizes=(8, 48), speeds=(0.0, 4.0)),
    "load-step": dict(sizes=(8, 48), speeds=(0.0, 4.0), load=True),
}
SCENARIOS = {
    **{kind: (kind,) for kind in KINDS},
    "mixed": ("small-slow", "small-fast", "large-slow", "large-fast", "mixed-sizes", "load-step"),
    "calibration": ("small-slow", "small-fast", "large-slow", "large-fast", "mixed-sizes"),  # no load: TOD's tuning
}
SEGMENT_FRAMES = 2  # frames per training segment: new objects every 2 frames (see training_segments)
POOLS = ("train", "val", "test")  # Fashion-MNIST items: training split; test split's first / second half


@dataclass
class Stream:
    """Frames (T, H, W) uint8 and, per frame, the ground truth: boxes (n, 4) xyxy in canvas px, classes (n,),
    speeds (n,) px/frame. `segment[t]` indexes `segments`. Always synthetic."""

    frames: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    speeds: list[np.ndarray]
    segment: np.ndarray
    segments: list[Segment]
    seed: int
    pool: str
    synthetic: bool = field(default=True, init=False)

    def __len__(self) -> int:
        return len(self.frames)

    def describe(self) -> dict:
        """What a result records about the stream it was measured on."""
        return {"synthetic": True, "frames": len(self), "seed": self.seed, "pool": self.pool, "canvas": CANVAS,
                "segments": [asdict(s) for s in self.segments]}

    def frames_of(self, name: str) -> np.ndarray:
        """Indices of the frames of every segment called `name`."""
        ids = [i for i, s in enumerate(self.segments) if s.name == name]
        if not ids:
            raise ConfigError(f"the stream has no segment {name!r}; it has {', '.join(s.name for s in self.segments)}")
        return np.flatnonzero(np.isin(self.segment, ids))


def scenario(name: str, frames_per_segment: int = 300) -> list[Segment]:
    """The segments of scenario `name` (a key of SCENARIOS), each `frames_per_segment` frames long."""
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if frames_per_segment < 1:
        raise ConfigError(f"frames per segment must be >= 1, got {frames_per_segment}")
    return [Segment(kind, frames_per_segment, **KINDS[kind]) for kind in SCENARIOS[name]]


def training_segments(frames: int, length: int = SEGMENT_FRAMES) -> list[Segment]:
    """Segments of every unloaded kind in turn, `length` frames each, `frames` in all: what a detector family
    is trained on. Each segment draws its own objects, so short segments show more items, sizes and speeds for
    the same frames (6,000 frames in segments of 20 hold about 1,350 items; in segments of 2, about 13,500)."""
    if frames < 1:
        raise ConfigError(f"training frames must be >= 1, got {frames}")
    kinds = [k for k, v in KINDS.items() if not v.get("load")]
    return [Segment(kinds[i % len(kinds)], min(length, frames - i * length), **KINDS[kinds[i % len(kinds)]])
            for i in range(-(-frames // length))]


def items(pool: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (images (N, 28, 28) uint8, labels (N,)) of `pool` (see POOLS)."""
    from ..data import idx
    from ..data.base import Options

    if pool not in POOLS:
        raise ConfigError(f"unknown item pool {pool!r}; choose from {', '.join(POOLS)}")
    splits = idx.load(idx.FASHION_MNIST, Options(root=None, download=False, augment=False, seed=0))
    data = splits.train if pool == "train" else splits.test
    images, labels = data.images[:, 0].numpy(), data.labels.numpy()
    half = len(images) // 2
    cut = {"train": slice(None), "val": slice(0, half), "test": slice(half, None)}[pool]
    return images[cut], labels[cut]


def make(segments: list[Segment], seed: int = 0, pool: str = "test",
         item_set: tuple[np.ndarray, np.ndarray] | None = None) -> Stream:
    """The stream of `segments` in order, drawn with `seed` from the Fashion-MNIST items of `pool` (or from
    `item_set`, (images, labels), e.g. for tests). The same arguments give the same stream, bit for bit."""
    import torch
    import torch.nn.functional as F

    if not segments:
        raise ConfigError("a stream needs at least one segment")
    for s in segments:
        if s.frames < 1 or not 1 <= s.sizes[0] <= s.sizes[1] <= CANVAS or not 0 <= s.speeds[0] <= s.speeds[1] \
                or not 1 <= s.objects[0] <= s.objects[1]:
            raise ConfigError(f"segment {s.name!r}: needs frames >= 1, 1 <= sizes <= {CANVAS}, 0 <= speeds and "
                              f">= 1 object, ranges low <= high; got {s}")
    images, labels = item_set if item_set is not None else items(pool)
    rng = np.random.default_rng(seed)
    total = sum(s.frames for s in segments)
    frames = np.empty((total, CANVAS, CANVAS), dtype=np.uint8)
    boxes, classes, speeds, seg = [], [], [], np.empty(total, dtype=np.int64)
    t = 0
    for k, s in enumerate(segments):
        n = int(rng.integers(s.objects[0], s.objects[1] + 1))
        picks = rng.integers(0, len(images), n)
        sides = rng.integers(s.sizes[0], s.sizes[1] + 1, n)
        speed = rng.uniform(*s.speeds, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        vel = np.stack([np.cos(angle), np.sin(angle)], 1) * speed[:, None]
        pos = rng.uniform(0, 1, (n, 2)) * (CANVAS - sides)[:, None]  # top-left corners
        sprites, extents = [], []
        for i, side in zip(picks, sides, strict=True):
            item = torch.from_numpy(images[i]).float()[None, None]
            sprite = F.interpolate(item, size=(int(side), int(side)), mode="bilinear", antialias=True)[0, 0]
            sprite = sprite.clamp(0, 255).round().numpy().astype(np.uint8)
            ys, xs = np.nonzero(sprite > ITEM_PIXEL)
            sprites.append(sprite)
            # the tight box of the item inside its square (a sandal is narrower than a coat)
            extents.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, side, side))
        extents = np.asarray(extents, dtype=np.float32)
        for _ in range(s.frames):
            canvas = rng.normal(0, NOISE, (CANVAS, CANVAS)).clip(0, 255)
            corner = np.round(pos).astype(int)
            for sprite, (x, y) in zip(sprites, corner, strict=True):
                h, w = sprite.shape
                np.maximum(canvas[y:y + h, x:x + w], sprite, out=canvas[y:y + h, x:x + w])
            frames[t] = canvas.astype(np.uint8)
            boxes.append(extents + np.tile(corner, 2).astype(np.float32))
            classes.append(labels[picks].astype(np.int64))
            speeds.append(speed.astype(np.float32))
            seg[t] = k
            t += 1
            pos += vel
            for axis in (0, 1):  # bounce off the edges
                low, high = pos[:, axis] < 0, pos[:, axis] > CANVAS - sides
                vel[low | high, axis] *= -1
                pos[:, axis] = np.clip(pos[:, axis], 0, CANVAS - sides)
    return Stream(frames, boxes, classes, speeds, seg, list(segments), seed, pool if item_set is None else "given")
