"""The criterion registry and `score`, the one entry point every method calls.

A scorer is `fn(model, names, batches, input_shape, **options) -> {name: tensor}`, registered with
`@register(name)`. A criterion that re-scores the same model many times (SynFlow's 100 rounds) registers
with `prepares=True` instead: `fn(...)` then does its set-up once and returns
`rescore(model) -> {name: tensor}`, which `scorer` keeps for `masks.prune_iteratively`'s rounds (it may reuse
the tensors it returned at its next call: copy a round's scores to keep them past the next one). Either
way a scorer must leave the caller's model exactly as it was: scorers that run the network work on
`masks.baked_copy(model)`, so weights, masks, BN running statistics, the train/eval flag and `.grad` of the
caller's model are never touched (gradients are taken with `torch.autograd.grad`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .. import masks
from ..errors import ConfigError, unknown_name

Batches = Iterable[tuple[Tensor, Tensor]]
Scorer = Callable[..., dict[str, Tensor]]
SCORERS: dict[str, Scorer] = {}
_NEEDS_DATA: set[str] = set()
_ROUNDS: dict[str, int] = {}
_PREPARES: set[str] = set()
_FIXED = ("model", "names", "batches", "input_shape")  # what `score` passes every scorer


def register(
    name: str, *, needs_data: bool = False, rounds: int = 1, prepares: bool = False
) -> Callable[[Scorer], Scorer]:
    """Decorator adding a scorer under `name`; `rounds` is how many pruning rounds its paper uses; with
    `prepares`, the function returns `rescore(model)` (see the module docstring)."""
    if name in SCORERS:
        raise ValueError(f"criterion {name!r} is registered twice")

    def add(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        _ROUNDS[name] = rounds
        if needs_data:
            _NEEDS_DATA.add(name)
        if prepares:
            _PREPARES.add(name)
        return fn

    return add


def list_criteria() -> list[str]:
    return sorted(SCORERS)


def _known(name: str) -> str:
    if name not in SCORERS:
        raise unknown_name("criterion", name, list_criteria())
    return name


def needs_data(name: str) -> bool:
    """Whether the criterion reads batches of (inputs, labels)."""
    return _known(name) in _NEEDS_DATA


def default_rounds(name: str) -> int:
    """Rounds of `masks.prune_iteratively` the criterion's paper uses (SynFlow 100, the others 1)."""
    return _ROUNDS[_known(name)]


def scorer(
    name: str,
    batches: Batches | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    include=None,
    exclude=(),
    **options,
) -> Callable[[nn.Module], dict[str, Tensor]]:
    """`score` as a function of the model, for re-scoring a model while its masks change, as
    `masks.prune_iteratively` does: criteria that can (SynFlow) do their set-up once, on the first call, and
    again only for another model or changed weights. Arguments as for `score`; they are checked here.
    """
    fn = SCORERS[_known(name)]
    if name in _NEEDS_DATA and batches is None:
        raise ConfigError(f"criterion {name!r} needs data: pass batches of (inputs, labels), e.g. a DataLoader "
                          "(on the command line, give the run a data set)")
    accepted = [p for p in inspect.signature(fn).parameters if p not in _FIXED]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"criterion {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(accepted) or 'none'}")
    prepared: dict = {}  # the model a preparing criterion was set up for, and its rescore

    def run(model: nn.Module) -> dict[str, Tensor]:
        names = list(masks.prunable(model, include, exclude))
        with torch.enable_grad():  # callers may sit inside torch.no_grad()
            if name not in _PREPARES:
                scores = fn(model, names, batches, input_shape, **options)
            else:
                if prepared.get("model") is not model:
                    prepared.update(model=model, rescore=fn(model, names, batches, input_shape, **options))
                scores = prepared["rescore"](model)
        return {n: scores[n] for n in names}

    return run


def score(
    name: str,
    model: nn.Module,
    batches: Batches | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    include=None,
    exclude=(),
    **options,
) -> dict[str, Tensor]:
    """`{weight name: score}` for every prunable weight (see `masks.prunable`); higher = keep.

    `batches` are (inputs, labels) for the data-driven criteria (`needs_data`); `input_shape` is
    (C, H, W) for SynFlow; `options` go to the criterion (e.g. `num_batches`, `seed`, `temperature`).
    """
    return scorer(name, batches, input_shape=input_shape, include=include, exclude=exclude, **options)(model)


def device_of(model: nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device


def effective_weight(model: nn.Module, pname: str) -> Tensor:
    """The weight the forward uses, detached: `weight_orig * weight_mask` when masked.

    Read from the mask reparametrisation, not from `.weight`, which is only refreshed at the next forward
    and so is stale right after an optimizer step.
    """
    module_name, _, attr = pname.rpartition(".")
    module = model.get_submodule(module_name)
    orig = getattr(module, f"{attr}_orig", None)
    w = orig * getattr(module, f"{attr}_mask") if orig is not None else getattr(module, attr)
    return w.detach()


def take(batches: Batches, num_batches: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """The first `num_batches` (inputs, labels) pairs, on `device`."""
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ConfigError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    out = [(b[0].to(device), b[1].to(device)) for b in itertools.islice(batches, num_batches)]
    if not out:
        raise ConfigError("the batches given for scoring are empty: pass at least one (inputs, labels) batch")
    return out


def weights_for_grad(net: nn.Module, names: list[str]) -> list[Tensor]:
    """The named weights of a scoring copy, all requiring grad (the caller may have frozen some)."""
    return [net.get_parameter(n).requires_grad_(True) for n in names]


def grads(output: Tensor, weights: list[Tensor], create_graph: bool = False) -> tuple[Tensor, ...]:
    """d output / d weights; zeros for a weight the output does not depend on."""
    return torch.autograd.grad(output, weights, create_graph=create_graph, allow_unused=True,
                               materialize_grads=True)
