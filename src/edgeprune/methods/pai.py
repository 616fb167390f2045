"""Pruning at initialisation (Random, Magnitude, SNIP, GraSP, SynFlow): score → select → apply, before training.

SynFlow re-scores the masked model over an exponential density schedule (100 rounds by default);
the others prune in one shot. Training afterwards keeps the masks (torch.nn.utils.prune).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from torch import nn

from .. import masks, scores
from ..errors import ConfigError, unknown_name
from ..progress import Reporter, reporter
from .registry import ROUNDS_HELP, option, register


@dataclass
class PaIOptions:
    criterion: str = option("synflow", "Reconvene: the unstructured criterion it starts from.")
    sparsity: float = option(0.9, "Fraction of conv/linear weights removed.")
    scope: str = option("global", "global (rank all layers together) or layer.")
    rounds: int | None = option(None, ROUNDS_HELP)
    min_layer_density: float = option(masks.MIN_LAYER_DENSITY, "Every layer keeps at least this fraction.")
    score_batches: int = option(1, "Batches SNIP/GraSP score on.")
    include: list[str] | None = option(None, "Only these weights are pruned (fnmatch pattern; repeatable).")
    exclude: list[str] = option(help="Weights not to prune (fnmatch pattern; repeatable).", factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1 (or left out for the criterion's default), got {self.rounds}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.score_batches < 1:
            raise ConfigError(f"score_batches must be >= 1, got {self.score_batches}")
        if self.criterion not in scores.list_criteria():
            raise unknown_name("criterion", self.criterion, scores.list_criteria())

    def to_dict(self) -> dict:
        return asdict(self)


def make_scorer(opts: PaIOptions, data: list | None, input_shape: tuple[int, ...]) -> Callable[[nn.Module], dict]:
    """The criterion as a function of the (masked) model, reading every batch in `data`."""
    extra = {"num_batches": len(data)} if data and scores.needs_data(opts.criterion) else {}
    return scores.scorer(opts.criterion, data, input_shape=input_shape, include=opts.include, exclude=opts.exclude,
                         **extra)


def prune_at_init(
    model: nn.Module,
    opts: PaIOptions,
    batches: Iterable | None,
    input_shape: tuple[int, ...],
    progress: Reporter | None = None,
) -> dict:
    """Mask `model` in place to `opts.sparsity`; return what was done (per-layer table, time). The rounds are
    task "<criterion> pruning" of `progress`."""
    names = list(masks.prunable(model, opts.include, opts.exclude))
    data = list(itertools.islice(batches, opts.score_batches)) if batches is not None else None
    rounds = opts.rounds or scores.default_rounds(opts.criterion)

    scorer = make_scorer(opts, data, input_shape)

    report, task = reporter(progress), f"{opts.criterion} pruning"
    t0 = time.perf_counter()
    if opts.sparsity > 0:
        masks.prune_iteratively(model, scorer, 1 - opts.sparsity, rounds=rounds, scope=opts.scope,
                                min_layer_density=opts.min_layer_density,
                                progress=lambda k: report.update(task, k, rounds))
    report.end(task)
    seconds = time.perf_counter() - t0
    return {"method": opts.criterion, "options": opts.to_dict(), "rounds": rounds, "prune_seconds": seconds,
            "density": 1 - opts.sparsity, "layers": masks.table(model, names)}


def _label(o: dict) -> tuple[str, list[str]]:
    """A PaI run is named by its criterion; scope and a non-default number of rounds make its variant."""
    words = [str(o.get("criterion", "?")), f"scope {o.get('scope', 'global')}"]
    if o.get("rounds"):
        words.append(f"{o['rounds']} rounds")
    return str(o.get("criterion", "?")), words


for _criterion in scores.list_criteria():  # every criterion in scores/ is a method of its own
    register(_criterion, kind="init", options=PaIOptions, fixed={"criterion": _criterion}, label=_label,
             summary=f"unstructured pruning at initialisation, {_criterion} scores (masks)")(prune_at_init)
