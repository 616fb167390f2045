"""The TinyDet family: training on stream frames, decoding outside the graph, and ONNX Runtime runners.

A family is one trained TinyDet exported at several input sizes ("d64", "d96", ...): small objects need a
large input, a large input costs latency. `train` fits the one network on frames of a training stream at
every size of the family (a random size per batch), so each member is the same weights at its own size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EdgePruneError
from ..formats import BOX_CHANNELS, FAMILY_FORMAT, FAMILY_RECORD, STRIDE  # noqa: F401  (torch-free: a server decodes)
from .metrics import Detections
from .stream import CANVAS, Stream

FAMILY = FAMILY_RECORD
FORMAT = FAMILY_FORMAT
SCORE_FLOOR = 0.05  # detections below this score are not kept (COCO evaluations keep low scores: recall)
TOP_K = 50


class FamilyError(EdgePruneError):
    """A detector family folder is missing, corrupt or inconsistent."""


def decode(out: np.ndarray, input_size: int, score_floor: float = SCORE_FLOOR, top_k: int = TOP_K) -> Detections:
    """Detections in canvas px from one frame's output (classes + 4, h, w): heat-map peaks (a cell not below
    its 8 neighbours, CenterNet's 3x3 max-pool NMS), the `top_k` highest at or above `score_floor`."""
    classes = out.shape[0] - BOX_CHANNELS
    heat = 1 / (1 + np.exp(-out[:classes]))
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    h, w = heat.shape[1:]
    pooled = np.max([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    peak = (heat >= pooled) & (heat >= score_floor)
    c, y, x = np.nonzero(peak)
    scores = heat[c, y, x]
    keep = np.argsort(-scores, kind="stable")[:top_k]
    c, y, x, scores = c[keep], y[keep], x[keep], scores[keep]
    scale = STRIDE * CANVAS / input_size  # canvas px per output cell
    bw, bh = np.exp(out[classes, y, x]) * scale, np.exp(out[classes + 1, y, x]) * scale
    cx, cy = (x + out[classes + 2, y, x]) * scale, (y + out[classes + 3, y, x]) * scale
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32)
    return Detections(boxes, scores.astype(np.float32), c.astype(np.int64))


def targets(boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], input_size: int, num_classes: int):
    """CenterNet training targets for a batch at `input_size`: heat maps (N, classes, o, o) with a Gaussian
    at each object's centre cell (1 exactly there), and at those cells the box targets (N, 4, o, o) and a mask
    (N, 1, o, o). Sizes are in output cells, so the targets mean the same at every input size."""
    o = input_size // STRIDE
    scale = input_size / CANVAS / STRIDE
    n = len(boxes)
    heat = np.zeros((n, num_classes, o, o), np.float32)
    box = np.zeros((n, BOX_CHANNELS, o, o), np.float32)
    mask = np.zeros((n, 1, o, o), np.float32)
    grid = np.arange(o, dtype=np.float32)
    for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
        b = b * scale
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        bw, bh = np.maximum(b[:, 2] - b[:, 0], 0.25), np.maximum(b[:, 3] - b[:, 1], 0.25)
        ix, iy = np.clip(cx.astype(int), 0, o - 1), np.clip(cy.astype(int), 0, o - 1)
        sigma = np.maximum(0.15 * np.minimum(bw, bh), 0.4)  # wider peaks for larger objects, as CenterNet
        for k in range(len(c)):
            g = np.exp(-((grid[None, :] - ix[k]) ** 2 + (grid[:, None] - iy[k]) ** 2) / (2 * sigma[k] ** 2))
            np.maximum(heat[i, c[k]], g, out=heat[i, c[k]])
            box[i, :, iy[k], ix[k]] = (np.log(bw[k]), np.log(bh[k]), cx[k] - ix[k], cy[k] - iy[k])
            mask[i, 0, iy[k], ix[k]] = 1
    return heat, box, mask


def loss(out, heat, box, mask):
    """CenterNet's focal loss on the heat map (per object) plus L1 on the box channels at object centres."""
    import torch

    classes = heat.shape[1]
    p = torch.sigmoid(out[:, :classes]).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat) ** 4 * p ** 2 * torch.log(1 - p)).sum()
    objects = mask.sum().clamp(min=1)
    l1 = (torch.abs(out[:, classes:] - box) * mask).sum() / objects
    return focal / objects + l1


def frames_tensor(frames: np.ndarray):
    """uint8 frames (N, H, W) as the float (N, 1, H, W) in [0, 1] the detectors take."""
    import torch

    return torch.from_numpy(frames).float().div_(255).unsqueeze(1)


@dataclass
class TrainConfig:
    sizes: tuple[int, ...] = (64, 80, 96, 128)
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 16
    seed: int = 0

    def check(self, frames: int = 1) -> None:
        """One-line ConfigError for a value training cannot use, before anything is written."""
        from ..checks import number

        if not self.sizes or any(s < 16 or s % 16 for s in self.sizes):
            raise ConfigError(f"--sizes must be multiples of 16 (at least 16), got {','.join(map(str, self.sizes))}")
        number(frames, "--frames", at_least=1, integer=True)
        number(self.epochs, "--epochs", at_least=1, integer=True)
        number(self.batch_size, "batch size", at_least=1, integer=True)
        number(self.width, "--width", at_least=1, integer=True, hint="TinyDet's base width; 16 is the default")
        number(self.lr, "--lr", above=0, hint="a peak learning rate such as 3e-3")


def train(stream: Stream, cfg: TrainConfig, progress: Callable[[int, int, float], None] | None = None):
    """A TinyDet fitted to `stream`'s frames (Adam, cosine schedule), each batch at a random size of the
    family; `progress(step, steps, loss)` after each step. Returns (model, seconds)."""
    import torch

    from ..models import create

    cfg.check(len(stream))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    num_classes = 10
    model = create("tinydet", num_classes=num_classes, in_channels=1, width=cfg.width)
    per_epoch = -(-len(stream) // cfg.batch_size)
    steps = per_epoch * cfg.epochs
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # one cycle needs at least one step warming up and one annealing: a short run warms up over 2 steps, not 10 %
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=max(0.1, 2 / steps))
             if steps >= 3 else None)
    start, step = time.perf_counter(), 0
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(stream))
        for b in range(per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            size = int(rng.choice(cfg.sizes))
            model.input_size = size
            heat, box, mask = (torch.from_numpy(a) for a in targets(
                [stream.boxes[i] for i in idx], [stream.classes[i] for i in idx], size, num_classes))
            value = loss(model(frames_tensor(stream.frames[idx])), heat, box, mask)
            if not torch.isfinite(value):
                raise EdgePruneError(f"detector training diverged at step {step} (loss {value.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            if progress is not None:
                progress(step, steps, value.item())
    model.input_size = None
    return model.eval(), time.perf_counter() - start


def member(size: int) -> str:
    return f"d{size}"


def save_family(model, sizes: Sequence[int], folder: str | Path, extra: dict) -> dict:
    """Write `model.pt` and one ONNX file per input size (each checked against ONNX Runtime) into `folder`,
    with `family.json` naming the members; returns that record."""
    import copy

    from ..export import save_model, to_onnx
    from ..files import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / "model.pt")
    members = {}
    for size in sizes:
        sized = copy.deepcopy(model)
        sized.input_size = size
        to_onnx(sized, folder / f"{member(size)}.onnx", (1, CANVAS, CANVAS))
        members[member(size)] = {"onnx": f"{member(size)}.onnx", "input_size": size}
    record = {"format": FORMAT, "canvas": CANVAS, "classes": list(range(model.edgeprune_spec.num_classes)),
              "members": members, "synthetic": True, **extra}
    write_json(folder / FAMILY, record)
    return record


def read_record(path: Path, fmt: str, error: type[EdgePruneError], what: str, missing: str, make: str) -> dict:
    """The JSON record at `path` of format `fmt`; `error` says, in one line, that it is missing (`missing`; `make`
    says how to make one), not JSON, or not `what`."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{missing}; {make}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e}); {make}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{path} is not {what} (format {fmt}); {make}")
    return record


def load_family(folder: str | Path) -> dict:
    """The family record of `folder`, each member's ONNX file checked to be there."""
    path = Path(folder) / FAMILY
    record = read_record(path, FORMAT, FamilyError, "a detector family record", f"{folder} holds no {FAMILY}",
                         f"train a family with `edgeprune detect train --out {folder}`")
    _check_record(record, path)
    for name, m in record["members"].items():
        if not (Path(folder) / m["onnx"]).is_file():
            raise FamilyError(f"member {name}: {Path(folder) / m['onnx']} is missing; train the family again")
    return record


def _check_record(record: dict, path: Path) -> None:
    """FamilyError naming the field of a family record (often hand-edited) that is not of its type."""
    def bad(field: str, value) -> FamilyError:
        return FamilyError(f"{path}: {field} is {value!r}, not what `edgeprune detect train` writes; train the "
                           "family again or fix that field")

    classes = record.get("classes")
    if not isinstance(classes, list) or not classes or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise bad("'classes' (a list of class ids)", classes)
    members = record.get("members")
    if not isinstance(members, dict) or not members:
        raise bad("'members'", members)
    for name, m in members.items():
        if not isinstance(m, dict) or not isinstance(m.get("onnx"), str) or "/" in m["onnx"]:
            raise bad(f"member {name!r}", m)
        size = m.get("input_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 16 or size % 16:
            raise bad(f"member {name!r}'s input_size", size)


class Runner:
    """One detector of a family in ONNX Runtime (1 thread): `detect(frame)` -> (Detections, ms), the time
    covering the graph and the decoding (what a caller waits for)."""

    def __init__(self, name: str, onnx: str | Path, input_size: int, classes: Sequence[int], threads: int = 1):
        from ..ort import ort_session

        self.name, self.onnx, self.input_size, self.classes = name, Path(onnx), input_size, tuple(classes)
        self.session = ort_session(self.onnx, threads)
        self.input = self.session.get_inputs()[0].name

    def detect(self, frame: np.ndarray) -> tuple[Detections, float]:
        x = (frame.astype(np.float32) / 255)[None, None]
        t0 = time.perf_counter()
        out = self.session.run(None, {self.input: x})[0][0]
        dets = decode(out, self.input_size)
        return dets, (time.perf_counter() - t0) * 1e3


def runners(folders: str | Path | Sequence[str | Path], threads: int = 1) -> list[Runner]:
    """The members of one family folder, or of several, as runners, largest input first. Several families must
    share one class set and name their members apart (a member's name is its id in a profile and a portfolio)."""
    folders = [folders] if isinstance(folders, str | Path) else list(folders)
    out, where = [], {}
    for folder in folders:
        record = load_family(folder)
        for name, m in record["members"].items():
            if name in where:
                raise FamilyError(f"detector {name} is in both {where[name]} and {folder}; pass families whose "
                                  "members are named apart (trained at other --sizes)")
            where[name] = folder
            out.append(Runner(name, Path(folder) / m["onnx"], m["input_size"], record["classes"], threads))
    check_classes(out)
    return sorted(out, key=lambda r: -r.input_size)


def check_classes(detectors: Sequence[Runner]) -> None:
    """Refuse detectors that do not share one class set: their detections could not be compared."""
    first = detectors[0]
    for d in detectors[1:]:
        if d.classes != first.classes:
            raise ConfigError(f"detector {d.name} detects classes {list(d.classes)} but {first.name} detects "
                              f"{list(first.classes)}; choose among detectors of one class set")
