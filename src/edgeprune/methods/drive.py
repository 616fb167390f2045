"""DRIVE (Saikumar & Varghese, arXiv 2404.03687; papers.md §3): a few dense epochs, then iterative pruning with a
dual-gradient score, then the rest of the training budget with the masks kept.

A RECONSTRUCTION: the paper's method section was not readable. What is known (papers.md): dense training for a
few epochs "to counteract the randomness at initialisation", a score built from gradients, pruning iterated to
the target, and pruning 43-869x faster than IMP. Here the score is

    S = balance · |θ ⊙ ∂L/∂θ| / Σ|θ ⊙ ∂L/∂θ|  +  (1 − balance) · |θ ⊙ ∂R/∂θ| / Σ|θ ⊙ ∂R/∂θ|

the data-driven connection sensitivity (SNIP's, on `score_batches` training batches) and the data-free path
gradient (SynFlow's), each normalised by its sum over every prunable weight, so `balance` weighs two unitless
shares. Both are recomputed on the masked model at each of `rounds` rounds of SynFlow's exponential schedule,
with no weight update in between: the pruning step costs `rounds` forward/backward passes, not IMP's retraining.
`balance` is an option so its sensitivity can be measured (and the formula replaced once the paper is read).

The training budget is the run's `--epochs`: the first `dense_epochs` train dense, pruning happens at the end of
that epoch (a `train.Callback`), the rest train with the masks kept. The learning-rate schedule runs over the
whole budget, as one training.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import masks, scores
from ..errors import ConfigError
from ..progress import Reporter, reporter
from ..train import Callback, TrainConfig
from .registry import ROUNDS_HELP, option, register


@dataclass
class DriveOptions:
    sparsity: float = option(0.9, "Fraction of conv/linear weights removed.")
    dense_epochs: int = option(1, "DRIVE: epochs trained dense before pruning (within --epochs).")
    rounds: int = option(100, ROUNDS_HELP)
    balance: float = option(0.5, "DRIVE: weight of the data-driven score (1: SNIP's only, 0: SynFlow's only).")
    score_batches: int = option(1, "DRIVE: training batches the data-driven score reads each round.")
    min_layer_density: float = option(masks.MIN_LAYER_DENSITY, "Every layer keeps at least this fraction.")
    include: list[str] | None = option(None, "Only these weights are pruned (fnmatch pattern; repeatable).")
    exclude: list[str] = option(help="Weights not to prune (fnmatch pattern; repeatable).", factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.dense_epochs < 0:
            raise ConfigError(f"dense_epochs must be >= 0 (0 prunes at initialisation), got {self.dense_epochs}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 <= self.balance <= 1:
            raise ConfigError(f"balance must be in [0, 1] (the data-driven score's weight), got {self.balance}")
        if self.score_batches < 1:
            raise ConfigError(f"score_batches must be >= 1, got {self.score_batches}")

    def to_dict(self) -> dict:
        return asdict(self)


def dual_gradient(batches: list, input_shape: tuple[int, ...], balance: float, include=None, exclude=()
                  ) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """DRIVE's score as a function of the (masked) model: both terms from the criterion registry."""
    snip = scores.scorer("snip", batches, input_shape=input_shape, include=include, exclude=exclude,
                         num_batches=len(batches))
    synflow = scores.scorer("synflow", input_shape=input_shape, include=include, exclude=exclude)

    def score(model: nn.Module) -> dict[str, torch.Tensor]:
        data = snip(model) if balance > 0 else {}
        free = synflow(model) if balance < 1 else {}
        names = list(data or free)
        shares = []
        for w, term in ((balance, data), (1 - balance, free)):
            if w > 0:
                term = {n: term[n].double() for n in names}
                total = float(sum(v.sum() for v in term.values()))
                if total > 0:  # a zero sum (all pruned, or an underflowing path product) leaves the term out
                    shares.append((w, term, total))
        return {n: sum(w * t[n] / total for w, t, total in shares) for n in names}

    return score


def prune_trained(model: nn.Module, opts: DriveOptions, batches: Iterable, input_shape: tuple[int, ...],
                  progress: Reporter | None = None) -> dict:
    """Mask `model` (trained or not) in place to `opts.sparsity` with DRIVE's score; what was done."""
    names = list(masks.prunable(model, opts.include, opts.exclude))
    data = [(x, y) for x, y in itertools.islice(batches, opts.score_batches)]
    if not data:
        raise ConfigError("DRIVE's data-driven score needs training batches, and the training data is empty")
    report, task = reporter(progress), "DRIVE pruning"
    was_training = model.training
    t0 = time.perf_counter()
    if opts.sparsity > 0:
        masks.prune_iteratively(model, dual_gradient(data, input_shape, opts.balance, opts.include, opts.exclude),
                                1 - opts.sparsity, rounds=opts.rounds, min_layer_density=opts.min_layer_density,
                                progress=lambda k: report.update(task, k, opts.rounds))
    report.end(task)
    model.train(was_training)
    return {"method": "drive", "options": opts.to_dict(), "rounds": opts.rounds,
            "prune_seconds": time.perf_counter() - t0, "density": 1 - opts.sparsity,
            "layers": masks.table(model, names)}


class Pruner(Callback):
    """Prunes at the end of epoch `dense_epochs` (before that epoch's checkpoint is written); `saved(model, info)`
    keeps the result so a resumed run restores it."""

    def __init__(self, opts: DriveOptions, train_cfg: TrainConfig, batches: Iterable, input_shape: tuple[int, ...],
                 saved: Callable[[nn.Module, dict], None], progress: Reporter | None = None):
        if opts.dense_epochs >= train_cfg.epochs:
            raise ConfigError(f"DRIVE prunes after dense_epochs={opts.dense_epochs} of the run's {train_cfg.epochs} "
                              "epoch(s), and then trains the pruned model: give more --epochs than --dense-epochs")
        self.opts, self.batches, self.input_shape, self.saved, self.progress = (
            opts, batches, input_shape, saved, progress)
        self.info: dict | None = None

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        if epoch == self.opts.dense_epochs:
            self.prune(model)

    def prune(self, model: nn.Module) -> None:
        with torch.no_grad():  # the scorers enable gradients where they need them
            self.info = prune_trained(model, self.opts, self.batches, self.input_shape, self.progress)
        self.saved(model, self.info)


def _label(o: dict) -> tuple[str, list[str]]:
    words = [f"{o.get('dense_epochs', '?')} dense epochs", f"balance {o.get('balance', '?')}"]
    if o.get("rounds", 100) != 100:
        words.append(f"{o['rounds']} rounds")
    return "drive", words


register("drive", kind="in_training", options=DriveOptions, label=_label,
         summary="DRIVE (reconstructed): dense epochs, then dual-gradient iterative pruning, then masked training"
         )(Pruner)
