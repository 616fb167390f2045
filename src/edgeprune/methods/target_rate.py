"""Train once and land on a compression target (EURASIP 2021's scheme, papers.md): `--target-compression C` keeps
exactly 1/C of the prunable weights at the end of one training run (the run's `--epochs`).

`--scheme gsm` (Global Sparse Momentum SGD, Ding et al., NeurIPS 2019, which the EURASIP paper cites): at every
step the Q = N/C weights with the largest first-order Taylor score |θ ⊙ ∂L/∂θ| get their loss gradient, the others
none, only a decay `--decay` · θ on top of the run's weight decay, so momentum SGD drives them towards zero; after the
last step the Q largest-magnitude weights are kept, exactly. `--scheme agp` (Zhu & Gupta 2017, the classic
baseline): magnitude masks every `--interval` steps along the cubic schedule s_t = s (1 − (1 − t/T)^3) over the
first `--ramp` of the steps, reaching exactly 1 − 1/C. Either way the result is a masked (unstructured) model.

GSM's decay must fit the run's length: the paper trains hundreds of epochs with a small decay, and a weight left
outside the top Q shrinks by about exp(−decay · Σ_t lr_t / (1 − momentum)) over the run. A fixed 1e-3 over 2 epochs
(158 steps) left those weights at 90 % of their size, and cutting them took ResNet-20 to chance (10 %). By default
(`--decay` unset) the decay is chosen from the run's own learning rates, momentum and weight decay so that such a
weight ends within 1/1000 of zero (`RESIDUAL`, `auto_decay`): the cut then removes almost nothing the network uses.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .. import masks, scores
from ..errors import ConfigError
from ..progress import Reporter
from ..train import Callback, TrainConfig, lr_factor, steps_per_epoch
from .registry import option, register

SCHEMES = ("gsm", "agp")
RESIDUAL = 1e-3  # gsm's default decay: what is left of a weight outside the top Q at every step, by the last step


@dataclass
class TargetRateOptions:
    target_compression: float = option(10.0, "Target rate: dense weights / weights kept at the end (10 keeps 1/10).")
    scheme: str = option("gsm", "Target rate: gsm (global sparse momentum) or agp (gradual magnitude, cubic).")
    decay: float | None = option(None, "Target rate, gsm: extra decay of the weights outside the top Q, per step "
                                       "(default: what shrinks them 1000x over the run's learning rates).")
    interval: int = option(10, "Target rate, agp: steps between mask updates.")
    ramp: float = option(0.75, "Target rate, agp: fraction of the steps over which sparsity rises.")
    min_layer_density: float = option(masks.MIN_LAYER_DENSITY, "Every layer keeps at least this fraction.")
    include: list[str] | None = option(None, "Only these weights are pruned (fnmatch pattern; repeatable).")
    exclude: list[str] = option(help="Weights not to prune (fnmatch pattern; repeatable).", factory=list)

    def __post_init__(self) -> None:
        if not self.target_compression > 1:
            raise ConfigError(f"target_compression must be > 1 (dense weights / kept weights, e.g. 17), "
                              f"got {self.target_compression}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.decay is not None and self.decay < 0:
            raise ConfigError(f"decay must be >= 0, got {self.decay}")
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1 step, got {self.interval}")
        if not 0 < self.ramp <= 1:
            raise ConfigError(f"ramp must be in (0, 1] (a fraction of the training steps), got {self.ramp}")

    @property
    def sparsity(self) -> float:
        return 1 - 1 / self.target_compression

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer(Callback):
    """The schedule as training callbacks; `saved(model, info)` keeps the result once the target is reached."""

    def __init__(self, opts: TargetRateOptions, train_cfg: TrainConfig, batches: Iterable, input_shape: tuple,
                 saved: Callable[[nn.Module, dict], None], progress: Reporter | None = None):
        if train_cfg.epochs < 1:
            raise ConfigError("a target-rate run prunes while it trains: give it at least one epoch (--epochs)")
        self.opts, self.epochs, self.saved = opts, train_cfg.epochs, saved
        per_epoch = steps_per_epoch(batches, train_cfg)
        self.steps = train_cfg.epochs * per_epoch
        self.decay = opts.decay if opts.decay is not None else auto_decay(train_cfg, per_epoch)
        self.info: dict | None = None
        self.seconds = 0.0  # spent choosing and masking, beyond plain training
        self.updates = 0

    def _names(self, model: nn.Module) -> list[str]:
        return list(masks.prunable(model, self.opts.include, self.opts.exclude))

    def on_step_begin(self, model: nn.Module, step: int) -> None:
        if self.opts.scheme != "gsm":
            return
        t0 = time.perf_counter()
        names = self._names(model)
        with torch.no_grad(), warnings.catch_warnings():
            # A layer outside the top Q this step is not cut (the cut comes at the end): no "pruned completely".
            warnings.simplefilter("ignore", UserWarning)
            taylor = {n: (model.get_parameter(n) * model.get_parameter(n).grad).abs() for n in names}
            top = masks.select(taylor, 1 - self.opts.sparsity, min_layer_density=self.opts.min_layer_density)
            for n in names:
                w = model.get_parameter(n)
                # Outside the top Q: no loss gradient, only the decay (momentum SGD carries it on).
                w.grad.mul_(top[n]).add_(w.detach() * (1 - top[n]), alpha=self.decay)
        self.seconds += time.perf_counter() - t0

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.opts.scheme != "agp" or (step % self.opts.interval and step != self.steps):
            return
        t0 = time.perf_counter()
        ramp = max(1, round(self.opts.ramp * self.steps))
        target = self.opts.sparsity * (1 - (1 - min(step, ramp) / ramp) ** 3)
        self._cut(model, target)
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        if epoch < self.epochs:
            return
        t0 = time.perf_counter()
        self._cut(model, self.opts.sparsity)  # gsm: the exact cut; agp: already there, re-checked
        self.seconds += time.perf_counter() - t0
        names = self._names(model)
        self.info = {"method": "target_rate", "options": self.opts.to_dict(), "prune_seconds": self.seconds,
                     **({"decay": self.decay} if self.opts.scheme == "gsm" else {}),
                     "mask_updates": self.updates, "density": 1 - self.opts.sparsity,
                     "layers": masks.table(model, names)}
        self.saved(model, self.info)

    def _cut(self, model: nn.Module, sparsity: float) -> None:
        """Magnitude masks at `sparsity`, combined with those in force (pruned weights stay pruned)."""
        if sparsity <= 0:
            return
        names = self._names(model)
        chosen = masks.select(scores.score("magnitude", model, include=self.opts.include, exclude=self.opts.exclude),
                              1 - sparsity, min_layer_density=self.opts.min_layer_density,
                              alive=masks.current(model, names))
        masks.apply(model, chosen)
        self.updates += 1


def auto_decay(cfg: TrainConfig, steps_per_epoch: int) -> float:
    """GSM's decay for a run of `cfg`: the smallest on a grid (1e-4 to 10, 20 a decade) for which a weight outside
    the top Q at every step stays within RESIDUAL of zero over the last 5 % of the run, found by running the run's
    own update (momentum SGD, Nesterov or not, with its weight decay and learning-rate schedule) on that weight for
    every candidate at once. Momentum makes the update oscillate once the decay is large, so no closed form holds;
    if no candidate gets there (too few steps, too small a learning rate) the one that gets closest."""
    decays = np.logspace(-4, 1, 101)
    steps = cfg.epochs * steps_per_epoch
    factor = lr_factor(cfg, steps_per_epoch)
    w, v, tail = np.ones_like(decays), np.zeros_like(decays), np.zeros_like(decays)
    for t in range(steps):
        g = (decays + cfg.weight_decay) * w
        v = cfg.momentum * v + g
        w = w - cfg.lr * factor(t) * (g + cfg.momentum * v if cfg.nesterov else v)
        if t >= steps - max(1, steps // 20):
            tail = np.maximum(tail, np.abs(w))
    ok = np.flatnonzero(tail <= RESIDUAL)
    return float(decays[ok[0]] if len(ok) else decays[np.argmin(tail)])


def _label(o: dict) -> tuple[str, list[str]]:
    return f"target-rate {o.get('scheme', 'gsm')}", [f"{o.get('target_compression', '?')}x"]


register("target_rate", kind="in_training", options=TargetRateOptions, label=_label,
         summary="train once and land on --target-compression (GSM, or AGP's cubic magnitude schedule)")(Trainer)
