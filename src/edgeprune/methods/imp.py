"""Iterative magnitude pruning with rewinding (Frankle et al.; open_lth's `lottery`).

Level 0 trains the dense model, remembering the weights at iteration `rewind_iter`. Each further
level removes `fraction` of the surviving weights (global magnitude), rewinds the survivors to the
remembered values and retrains; level L keeps (1 − fraction)^L of the weights. Every level is saved
as a run of its own (`level_LL/`), so a portfolio can be built from them, and a finished level is
never redone when the job is resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .. import files, masks, runs, scores
from ..errors import ConfigError
from ..progress import Prefixed, Reporter
from ..record import RunReport, read_report
from ..train import Callback, TrainConfig, fit
from .registry import option, register

REWIND = "rewind.pt"


@dataclass
class IMPOptions:
    levels: int = option(3, "IMP: pruning levels after the dense one.")
    fraction: float = option(0.2, "IMP: fraction of remaining weights removed per level.")
    rewind_iter: int = option(0, "IMP: iteration whose weights survivors rewind to (0: initialisation).")
    scope: str = option("global", "global (rank all layers together) or layer.")
    min_layer_density: float = option(masks.MIN_LAYER_DENSITY, "Every layer keeps at least this fraction.")
    include: list[str] | None = option(None, "Only these weights are pruned (fnmatch pattern; repeatable).")
    exclude: list[str] = option(help="Weights not to prune (fnmatch pattern; repeatable).", factory=list)

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ConfigError(f"levels must be >= 1 (level 0 is the dense model every IMP run trains first), "
                              f"got {self.levels}")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.rewind_iter < 0:
            raise ConfigError(f"rewind_iter must be >= 0, got {self.rewind_iter}")

    def to_dict(self) -> dict:
        return asdict(self)


def weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under their unmasked names (`conv.weight`, not `conv.weight_orig`)."""
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("_mask"):
            continue
        state[k.removesuffix("_orig")] = v.detach().clone()
    return state


def rewind(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Return every parameter and buffer to `state`; masks stay, so pruned weights stay zero."""
    current = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            target = current.get(f"{k}_orig", current.get(k))
            if target is None:
                raise ConfigError(f"rewind state has {k!r}, which the model lacks")
            target.copy_(v)
    for _, module, pname in masks.masked_modules(model):  # refresh weight = weight_orig * mask
        setattr(module, pname, getattr(module, f"{pname}_orig") * getattr(module, f"{pname}_mask"))


class _Snapshot(Callback):
    def __init__(self, at: int, path: Path):
        self.at, self.path = at, path

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step == self.at:
            files.torch_save(self.path, weights_state(model))


def level_dir(run_dir: Path, level: int) -> Path:
    return run_dir / f"level_{level:02d}"


def _label(o: dict) -> tuple[str, list[str]]:
    return "imp", [f"magnitude, scope {o.get('scope', 'global')}, −{o.get('fraction', 0):.0%}/level, "
                   f"rewind {o.get('rewind_iter', 0)}"]


@register("imp", kind="levels", options=IMPOptions, label=_label,
          summary="iterative magnitude pruning with rewinding (lottery tickets); every level a run (masks)")
def run(
    model: nn.Module,
    train_loader,
    train_cfg: TrainConfig,
    opts: IMPOptions,
    run_dir: Path,
    finish: Callable[[nn.Module, Path, dict], RunReport],
    device: str = "cpu",
    progress: Reporter | None = None,
) -> list[RunReport]:
    """Train, prune, rewind, retrain for `opts.levels` levels; `finish(model, level_dir, info)` saves each."""
    names = list(masks.prunable(model, opts.include, opts.exclude))
    rewind_path = run_dir / REWIND
    if opts.rewind_iter == 0 and not rewind_path.exists():
        files.torch_save(rewind_path, weights_state(model))
    steps = len(train_loader) if train_cfg.steps_per_epoch is None else min(len(train_loader),
                                                                              train_cfg.steps_per_epoch)
    if opts.rewind_iter > train_cfg.epochs * steps:
        raise ConfigError(f"rewind_iter {opts.rewind_iter} is past the end of training "
                          f"({train_cfg.epochs * steps} iterations); choose a smaller --rewind-iter")
    reports = []
    for level in range(opts.levels + 1):
        out = level_dir(run_dir, level)
        if (out / runs.REPORT).exists():  # finished earlier: take its masks and weights, go on
            _load_level(model, out)
            reports.append(read_report(out / runs.REPORT))
            continue
        if level > 0:  # deterministic, so a resumed level recomputes the same masks
            keep = masks.select(
                scores.score("magnitude", model, include=opts.include, exclude=opts.exclude),
                (1 - opts.fraction) ** level, scope=opts.scope, min_layer_density=opts.min_layer_density,
                alive=masks.current(model, names),
            )
            masks.apply(model, keep)
            rewind(model, files.torch_load(rewind_path, "rewind weights"))
        out.mkdir(parents=True, exist_ok=True)
        callbacks = [_Snapshot(opts.rewind_iter, rewind_path)] if level == 0 and opts.rewind_iter > 0 else []
        hist = fit(model, train_loader, train_cfg, run_dir=out, resume=(out / runs.CHECKPOINT).exists(),
                   device=device, progress=Prefixed(progress, f"level {level}: "), callbacks=callbacks)
        info = {"method": "imp", "level": level, "density": (1 - opts.fraction) ** level,
                "options": opts.to_dict(), "layers": masks.table(model, names),
                "train": {"epochs": hist.epochs, "seconds": hist.seconds}}
        reports.append(finish(model, out, info))
    return reports


def _load_level(model: nn.Module, out: Path) -> None:
    if (out / runs.MASKS).exists():  # level 0 is dense
        masks.apply(model, files.torch_load(out / runs.MASKS, "masks"))
    rewind(model, files.torch_load(out / runs.MODEL, "model file")["state_dict"])
