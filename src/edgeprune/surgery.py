"""Surgery: make a model physically smaller by removing output channels, on torch-pruning's DependencyGraph.

torch-pruning finds everything coupled to a channel (its BN, the consumers' input channels, residual-add
partners, concatenation slices, depthwise convs, norms, attention) and removes it everywhere at once. On
top of that this module turns per-layer decisions into group decisions:

- a channel of a coupled group goes only if every coupled layer with a say lets it go (a layer without a
  decision keeps all; a depthwise conv without one follows its input). On residual networks this keeps far
  more than each layer asked for: a stage's convs must all agree on a channel. To remove a fraction of every
  group, rank each group once (`structure.group_keep`, torch-pruning's group importance) and pass that;
- the model's outputs never change; grouped convs lose the same positions in every group; GroupNorm
  groups and attention heads each lose the same number of channels, so every group and head stays whole;
- the result is checked, in one pass, against the unpruned model with the removed channels' consumers
  zeroed (the inputs they read set to nothing). Channel-count-dependent statistics (LayerNorm and GroupNorm
  mean and variance, the attention scale 1/sqrt(head dim)) are those of that reference in both runs: they
  are what removing channels redefines, everything else (every kept weight and where it sits) is checked.
  Where the check fails, the groups are redone one by one and a group torch-pruning mapped wrongly is left
  unpruned and reported in `SurgeryReport.skipped`, so no wrong model is returned;
- the trace runs the model in training mode with its norm and dropout layers in eval mode, so branches
  taken only in training (auxiliary classifiers) are in the graph and stay consistent with the trunk.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import masks as masks_mod
from . import zoo_ops
from .errors import ConfigError, unknown_name
from .measure import PRUNABLE
from .surgeon import Surgeon
from .tracing import (  # noqa: F401  (the public ones re-exported: users find them here)
    CHANNELWISE,
    OUT_OF_MEMORY,
    TOLERANCE,
    Decisions,
    Snapshot,
    Traced,
    branch_mode,
    dependency_graph,
    few_names,
    mapped_once,
    out_channel_group,
    short_message,
    signature,
    trace,
    traced,
    width,
)


@dataclass
class SurgeryReport:
    """What `materialize` did. Layer names are those of `model.named_modules()`."""

    before: dict[str, int] = field(default_factory=dict)  # output channels before, decided or changed layers
    after: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)  # original indices each changed layer kept
    skipped: dict[str, str] = field(default_factory=dict)  # why a decision was not applied in full
    channels_asked: int = 0  # output channels the decisions remove, summed over the decided layers
    channels_removed: int = 0  # of those, the ones removed (the rest: see skipped)
    params_before: int = 0
    params_after: int = 0
    unreached: list[str] = field(default_factory=list)  # conv/linear layers the traced forward never runs
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the masks, narrowed (see materialize)

    def to_dict(self) -> dict:
        """The record, without the mask tensors."""
        return {k: v for k, v in asdict(self).items() if k != "masks"}


def materialize(
    model: nn.Module,
    keep: Mapping[str, Sequence[int] | torch.Tensor],
    example_inputs: torch.Tensor,
    round_to: int | None = None,
    ignored: Sequence[str] = (),
    strict: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> SurgeryReport:
    """Remove every output channel not in `keep[layer]` (indices, or a bool mask) from `model`, in place.

    Masks are baked first, and `report.masks` hands them back narrowed as their weights were (torch-pruning's
    own handlers replayed on them), `{"<layer>.weight": mask}`, for the caller to re-apply where a layer
    stays unstructured; `masks` adds those of layers the caller baked already (`{layer name: mask}`).

    Layers in `ignored` and the layers producing the model's outputs keep all their output channels, and so does
    everything coupled to them. A channel tied to others (residual add, depthwise conv, ...) goes only if every
    coupled layer with a decision removes it: per-layer decisions on a residual network remove far less than each
    asked (see `structure.group_keep` for decisions made once per group, which land). `round_to` keeps extra
    channels (the lowest-index ones) so that each decided group keeps a multiple of it. Decisions that cannot be
    applied in full are explained in `report.skipped`, and `report.channels_asked` / `channels_removed` say how much
    of the request landed. Decided layers the traced forward never reaches and groups torch-pruning maps wrongly
    (the check fails) are left unpruned and reported, or with `strict` raise UnsupportedModelError naming the group.
    Raises UnsupportedModelError where torch-pruning cannot trace the model; on any error the model is left exactly
    as it was.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    decisions = {name: _kept_indices(model, layers, name, idxs) for name, idxs in keep.items()}
    for name in ignored:
        if name not in layers:
            raise _unknown_layer(model, layers, name)
    if round_to is not None:
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
        for name in decisions:
            if width(layers[name]) < round_to:
                raise ConfigError(
                    f"round_to={round_to} is larger than layer {name!r}, which has {width(layers[name])} "
                    "output channels; use a smaller round_to or leave that layer out"
                )
    widths = {n: width(m) for n, m in layers.items()}
    held = {name: m.weight_mask.detach().clone() for name, m, attr in masks_mod.masked_modules(model)
            if attr == "weight" and name in layers} | dict(masks or {})

    snapshot = Snapshot(model)
    try:
        masks_mod.bake(model)  # torch-pruning replaces weights, which would orphan a prune reparametrisation
        params_before = _parameters(model)
        reuse = None
        if isinstance(keep, Decisions):  # used once: pruning changes torch-pruning's own records
            reuse, keep.traced = keep.traced, None
        if reuse is not None and reuse.signature == signature(model, example_inputs):
            dg, branch_error = reuse.dg, reuse.branch_error
        else:
            dg, branch_error = trace(model, example_inputs)
        surgeon = Surgeon(model, dg, branch_error is None, layers, decisions, ignored, example_inputs, strict, held)
        with mapped_once(dg):  # planning prunes nothing
            for name in [n for n in layers if n in decisions]:  # model order, so reports read top-down
                surgeon.plan(name, round_to)
        surgeon.execute()
    except BaseException:
        snapshot.restore()
        raise
    report = SurgeryReport(skipped=surgeon.skipped, params_before=params_before, params_after=_parameters(model),
                           channels_asked=sum(widths[n] - len(kept) for n, kept in decisions.items()),
                           channels_removed=sum(widths[n] - len(surgeon.alive[n]) for n in decisions),
                           unreached=[n for n, m in layers.items() if m not in dg.module2node
                                      and zoo_ops.whole_holder(model, n) is None],
                           masks={f"{n}.weight": twin.weight.detach() for n, twin in surgeon.twins.items()})
    if branch_error is not None and report.unreached:
        warnings.warn(
            f"{len(report.unreached)} layer(s) are not on the traced forward ({few_names(report.unreached)}): their "
            "inputs were not narrowed with their producers, so a forward that uses them will fail. The "
            "training-mode forward (auxiliary heads) could not run on the example input: "
            f"{short_message(branch_error)}; "
            "pass an example input it accepts (inception_v3: 3x299x299) to prune those layers too",
            stacklevel=2)
    for name, alive in surgeon.alive.items():
        if name in decisions or len(alive) != widths[name]:
            report.before[name], report.after[name] = widths[name], len(alive)
            if len(alive) != widths[name]:
                report.kept[name] = list(alive)
    return report


def _parameters(model: nn.Module) -> int:
    """Parameters of a model whose masks are baked (measure.count_params also counts non-zeros: a pass over
    every weight that surgery does not need)."""
    return sum(p.numel() for p in model.parameters())


def _kept_indices(model: nn.Module, layers: dict[str, nn.Module], name: str, idxs) -> frozenset[int]:
    if name not in layers:
        if name in dict(model.named_modules()):
            module = model.get_submodule(name)
            raise ConfigError(f"layer {name!r} is a {type(module).__name__}; keep decisions name conv or linear layers")
        raise _unknown_layer(model, layers, name)
    n = width(layers[name])
    t = torch.as_tensor(idxs)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ConfigError(f"keep mask for {name!r} has shape {tuple(t.shape)}; expected ({n},)")
        t = t.nonzero().flatten()
    if t.numel() and (t.is_floating_point() or t.dim() != 1 or t.min() < 0 or t.max() >= n):
        raise ConfigError(f"keep indices for {name!r} must be integers in [0, {n}), got {t.tolist()[:10]}")
    return frozenset(t.tolist())


def _unknown_layer(model: nn.Module, layers: dict[str, nn.Module], name: str) -> ConfigError:
    return unknown_name("layer", name, layers, hint=f"name conv/linear layers of {type(model).__name__} "
                        "as model.named_modules() does")
