"""Train once and land on a compression target (EURASIP 2021's scheme, papers.md): `--target-compression C` keeps
exactly 1/C of the prunable weights at the end of one training run (the run's `--epochs`).

`--scheme gsm` (Global Sparse Momentum SGD, Ding et al., NeurIPS 2019, which the EURASIP paper cites): at every
step the Q = N/C weights with the largest first-order Taylor score |θ ⊙ ∂L/∂θ| get their loss gradient, the others
none, only a decay `--decay` · θ on top of the run's weight decay, so momentum SGD drives them towards zero; after the
last step the Q largest-magnitude weights are kept, exactly. `--scheme agp` (Zhu & Gupta 2017, the classic
baseline): magnitude masks every `--interval` steps along the cubic schedule s_t = s (1 − (1 − t/T)^3) over the
first `--ramp` of the steps, reaching exactly 1 − 1/C. Either way the result is a masked (unstructured) model.

`--structured` (the issue's variant; channels.py): the same two schemes on whole output channels, every coupled
layer deciding together (torch-pruning's groups). GSM: each step the channels outside the top choice (by
torch-pruning's group Taylor importance, averaged over steps) get no loss gradient in any coupled layer, only the
decay; AGP: channel masks along the cubic schedule (by the L2 norm). The target is on the physically smaller
model: its conv/linear weights (`--target-compression`) or its MACs (`--macs-compression`), landed by bisecting the
choice's budget on an exact count of what it keeps; widths stay multiples of `--round-to`, so the landing is as
close as those quanta allow. The cut zeroes the chosen channels (weights masked, norm scale and shift 0) and
`dead.remove_dead` removes them after training: the smaller model computes what the masked one did.

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

from .. import channels, dead, masks, scores
from ..errors import ConfigError
from ..progress import Reporter
from ..train import Callback, TrainConfig, lr_factor, steps_per_epoch
from .registry import option, register

SCHEMES = ("gsm", "agp")
SMOOTHING = 0.9  # structured gsm: scores are an exponential average over steps (one batch's Taylor scores are noisy)
RESIDUAL = 1e-3  # gsm's default decay: what is left of a weight outside the top Q at every step, by the last step


def default_importance(scheme: str) -> str:
    """The structured variant's channel importance where none is given: Taylor for gsm (its passive channels
    keep their gradients), the L2 norm for agp (masked weights have none)."""
    return "taylor" if scheme == "gsm" else "magnitude"


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
    structured: bool = option(False, "Target rate: choose whole channels and end physically smaller (the target on "
                                     "the smaller model's conv/linear weights, or its MACs with --macs-compression).")
    macs_compression: float | None = option(None, "Target rate, structured: land on dense MACs / this instead.")
    channel_importance: str | None = option(None, "Target rate, structured: taylor (|w*grad|, gsm's default), "
                                                  "bn_scale (|BN gamma|) or magnitude (L2, agp's default), over "
                                                  "coupled layers (torch-pruning's).")
    round_to: int = option(4, "Target rate, structured: every layer keeps a multiple of this many channels.")

    def __post_init__(self) -> None:
        if self.macs_compression is not None and not self.structured:
            raise ConfigError("macs_compression needs structured: masks remove no MACs a CPU runtime skips; add "
                              "--structured")
        if self.macs_compression is not None and not self.macs_compression > 1:
            raise ConfigError(f"macs_compression must be > 1 (dense MACs / kept MACs, e.g. 4), got "
                              f"{self.macs_compression}")
        if self.structured and self.importance not in channels.IMPORTANCES:
            raise ConfigError(f"channel_importance must be one of {', '.join(channels.IMPORTANCES)}, got "
                              f"{self.channel_importance!r}")
        if self.structured and self.scheme == "agp" and self.importance == "taylor":
            raise ConfigError("channel_importance taylor needs the gsm scheme: agp's masks leave the masked weights "
                              "no gradient; use magnitude or bn_scale")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}")
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

    @property
    def importance(self) -> str:
        """The structured variant's channel importance: the one given, else the scheme's own."""
        return self.channel_importance or default_importance(self.scheme)

    @property
    def target(self) -> tuple[str, float]:
        """What the structured variant lands on: ("params" or "macs", dense / kept)."""
        if self.macs_compression is not None:
            return "macs", self.macs_compression
        return "params", self.target_compression

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
        self.input_shape = tuple(input_shape)
        self.channels: channels.Channels | None = None  # structured: the channel groups, traced once
        self.budget = 0.0  # structured gsm: the budget of the top choice, landing on the target on the dense model
        self.removed: list[set[int]] | None = None  # structured agp: the channels cut so far
        self.small: nn.Module | None = None  # structured: the smaller model the final cut's landing made

    def _channels(self, model: nn.Module) -> channels.Channels:
        if self.channels is None:
            kind, target = self.opts.target
            self.channels = channels.Channels(model, self.input_shape, self.opts.importance, kind,
                                              self.opts.round_to)
            self.budget = self.channels.budget_for(target)
            if next(masks.masked_modules(model), None) is not None:  # resumed: the cut so far is in the masks
                self.removed = self.channels.removed_by_masks()
        return self.channels

    def _names(self, model: nn.Module) -> list[str]:
        return list(masks.prunable(model, self.opts.include, self.opts.exclude))

    def on_step_begin(self, model: nn.Module, step: int) -> None:
        if self.opts.scheme != "gsm":
            return
        t0 = time.perf_counter()
        if self.opts.structured:
            self._passive_channels(model)
            self.seconds += time.perf_counter() - t0
            return
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
        progress = 1 - (1 - min(step, ramp) / ramp) ** 3
        if self.opts.structured:
            ch = self._channels(model)
            ch.rescore(self.removed)  # the channels cut so far rank first: they stay cut
            target = self.opts.target[1]
            self.removed = ch.choose(ch.budget_for(1 / (1 - progress * (1 - 1 / target))))
            ch.cut(model, self.removed)
            self.updates += 1
        else:
            self._cut(model, self.opts.sparsity * progress)
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        if self.opts.structured and epoch == 0:
            t0 = time.perf_counter()
            self._channels(model)  # traced and calibrated on the dense model, before training
            self.seconds += time.perf_counter() - t0
        if epoch < self.epochs:
            return
        t0 = time.perf_counter()
        landing = None
        if self.opts.structured:  # the final cut, settled on the model: see finalize
            ch = self._channels(model)
            choice, self.small, landing = ch.land(self.opts.target[1], self.removed)
            ch.cut(model, choice)
            landing["channels_removed"] = sum(len(c) for c in choice)
        else:
            self._cut(model, self.opts.sparsity)  # gsm: the exact cut; agp: already there, re-checked
        self.seconds += time.perf_counter() - t0
        names = self._names(model)
        self.info = {"method": "target_rate", "options": self.opts.to_dict(), "prune_seconds": self.seconds,
                     **({"decay": self.decay} if self.opts.scheme == "gsm" else {}),
                     **({"structured": landing} if landing else {"density": 1 - self.opts.sparsity}),
                     "mask_updates": self.updates, "layers": masks.table(model, names)}
        self.saved(model, self.info)

    def finalize(self, model: nn.Module) -> nn.Module:
        """After training: the structured variant's model, physically smaller (its cut channels removed by
        `dead.remove_dead`, their outputs being 0: the same function as the masked model), the one the final
        cut's landing already made where this run made the cut; else `model` itself."""
        if not self.opts.structured:
            return model
        if self.small is None:  # resumed after the cut: remove it from the masked model
            self.small, report = dead.remove_dead(model, torch.zeros(1, *self.input_shape))
            self.info["structured"]["max_abs_error"] = report.max_abs_error
        return self.small.to(next(model.parameters()).device)

    def _passive_channels(self, model: nn.Module) -> None:
        """GSM on channels: the channels outside the top choice get no loss gradient, only the decay, in every
        coupled layer (conv/linear rows, BN scale and shift)."""
        ch = self._channels(model)
        ch.rescore(smoothing=SMOOTHING)
        with torch.no_grad():
            for module, rows in ch.rows(ch.choose(self.budget)).items():
                for p in (module.weight, module.bias):
                    if p is not None and p.grad is not None:
                        p.grad[rows] = self.decay * p.detach()[rows]

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
    if o.get("structured"):
        what = (f"{o['macs_compression']}x MACs" if o.get("macs_compression")
                else f"{o.get('target_compression', '?')}x")
        scheme = o.get("scheme", "gsm")
        chosen = o.get("channel_importance") or default_importance(scheme)
        return f"target-rate {scheme} structured", [what, chosen]
    return f"target-rate {o.get('scheme', 'gsm')}", [f"{o.get('target_compression', '?')}x"]


register("target_rate", kind="in_training", options=TargetRateOptions, label=_label,
         summary="train once and land on --target-compression (GSM, or AGP's cubic magnitude schedule); "
                 "--structured: whole channels (physically smaller)")(Trainer)
