"""Pruning at initialisation (Random, Magnitude, SNIP, GraSP, SynFlow): score → select → apply, before training.

SynFlow re-scores the masked model over an exponential density schedule (100 rounds by default);
the others prune in one shot. Training afterwards keeps the masks (torch.nn.utils.prune).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from rich.progress import Progress
from torch import nn

from .. import masks, scores
from ..errors import ConfigError, unknown_name


@dataclass
class PaIOptions:
    criterion: str = "synflow"
    sparsity: float = 0.9
    scope: str = "global"
    rounds: int | None = None  # None: the criterion's default (SynFlow 100, the others 1)
    min_layer_density: float = masks.MIN_LAYER_DENSITY
    score_batches: int = 1  # batches SNIP/GraSP read
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
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
    progress: bool = True,
) -> dict:
    """Mask `model` in place to `opts.sparsity`; return what was done (per-layer table, time)."""
    names = list(masks.prunable(model, opts.include, opts.exclude))
    data = list(itertools.islice(batches, opts.score_batches)) if batches is not None else None
    rounds = opts.rounds or scores.default_rounds(opts.criterion)

    scorer = make_scorer(opts, data, input_shape)

    t0 = time.perf_counter()
    with Progress(disable=not progress or rounds < 5, transient=True) as bar:
        task = bar.add_task(f"{opts.criterion} pruning", total=rounds)
        if opts.sparsity > 0:
            masks.prune_iteratively(model, scorer, 1 - opts.sparsity, rounds=rounds, scope=opts.scope,
                                    min_layer_density=opts.min_layer_density,
                                    progress=lambda k: bar.update(task, completed=k))
    seconds = time.perf_counter() - t0
    return {"method": "pai", "options": opts.to_dict(), "rounds": rounds, "prune_seconds": seconds,
            "density": 1 - opts.sparsity, "layers": masks.table(model, names)}
