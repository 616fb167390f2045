"""Surgery: make a model physically smaller by removing output channels, on torch-pruning's DependencyGraph.

torch-pruning finds everything coupled to a channel (its BN, the consumers' input channels, residual-add
partners, concatenation slices, depthwise convs) and removes it everywhere at once. On top of that this
module turns per-layer decisions into group decisions:

- a channel of a coupled group goes only if every coupled layer with a say lets it go (a layer without a
  decision keeps all; a depthwise conv without one follows its input);
- the model's outputs never change, and grouped convs lose the same positions in every group;
- each group's removal is checked against the unpruned model with the removed inputs zeroed, so a graph
  torch-pruning mapped wrongly raises UnsupportedModelError instead of returning a wrong model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from . import masks as masks_mod
from .errors import ConfigError, UnsupportedModelError, unknown_name
from .measure import PRUNABLE, count_params

# Layers that pass a channel on without mixing it with others: where a group holds anything else, the
# reference check cannot hold, and its failure names these (GroupNorm, LayerNorm, attention, ...).
CHANNELWISE = {
    OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.DEPTHWISE_CONV, OPTYPE.ELEMENTWISE, OPTYPE.CONCAT,
    OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.SLICE, OPTYPE.PRELU, OPTYPE.IN, OPTYPE.UNBIND, OPTYPE.EXPAND,
}


@dataclass
class SurgeryReport:
    """What `materialize` did. Layer names are those of `model.named_modules()`."""

    before: dict[str, int] = field(default_factory=dict)  # output channels before, decided or changed layers
    after: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)  # original indices each changed layer kept
    skipped: dict[str, str] = field(default_factory=dict)  # why a decision was not applied in full
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def width(layer: nn.Module) -> int:
    """Output channels of a conv or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `model`; UnsupportedModelError where torch-pruning cannot trace it."""
    was_training = model.training  # tracing leaves the model in eval mode
    try:
        with torch.enable_grad():
            # forward_fn: torch-pruning would otherwise try model(*x), which unbatches a one-sample tensor.
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=lambda m, x: m(x), verbose=False
            )
    except Exception as e:
        where = _torch_pruning_function(e)
        hint = " (a view/reshape that moves channels, such as a channel shuffle)" if "reshape" in where else ""
        raise UnsupportedModelError(
            f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__} in {where or 'the forward'}"
            f"{hint}: {str(e)[:200]}. Channel surgery needs a model torch-pruning can trace; remove or replace "
            "that operation"
        ) from e
    finally:
        model.train(was_training)


def out_channel_group(dg: tp.DependencyGraph, layer: nn.Module, idxs: Iterable[int], name: str):
    """torch-pruning's group for removing output channels `idxs` of `layer` (named `name` in errors)."""
    try:
        return dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, list(idxs))
    except Exception as e:
        raise UnsupportedModelError(
            f"torch-pruning cannot prune the output channels of layer {name!r} ({type(layer).__name__}): "
            f"{type(e).__name__}: {str(e)[:200]}. Leave that layer out of the decisions"
        ) from e


def materialize(
    model: nn.Module,
    keep: Mapping[str, Sequence[int] | torch.Tensor],
    example_inputs: torch.Tensor,
    round_to: int | None = None,
    ignored: Sequence[str] = (),
) -> SurgeryReport:
    """Remove every output channel not in `keep[layer]` (indices, or a bool mask) from `model`, in place.

    Masks are baked first. Layers in `ignored` and the layers producing the model's outputs keep all
    their output channels, and so does everything coupled to them. `round_to` keeps extra channels (the
    lowest-index ones) so that each decided group keeps a multiple of it. Decisions that cannot be
    applied in full are explained in `report.skipped`. Raises UnsupportedModelError (the model may then
    be partly pruned: work on a copy) where torch-pruning cannot trace or correctly prune a layer.
    """
    masks_mod.bake(model)  # torch-pruning replaces weights, which would orphan a prune reparametrisation
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
    params_before = count_params(model)[0]
    surgeon = _Surgeon(model, dependency_graph(model, example_inputs), layers, decisions, ignored, example_inputs)
    was_training = model.training
    try:
        for name in [n for n in layers if n in decisions]:  # model order, so reports read top-down
            surgeon.apply(name, round_to)
    finally:
        model.train(was_training)
    report = SurgeryReport(skipped=surgeon.skipped, params_before=params_before, params_after=count_params(model)[0])
    for name, alive in surgeon.alive.items():
        if name in decisions or len(alive) != widths[name]:
            report.before[name], report.after[name] = widths[name], len(alive)
            if len(alive) != widths[name]:
                report.kept[name] = list(alive)
    return report


class _Surgeon:
    """Applies decisions group by group, tracking which original channel each current channel is."""

    def __init__(self, model, dg, layers, decisions, ignored, x):
        self.model, self.dg, self.layers, self.decisions, self.x = model, dg, layers, decisions, x
        self.names = {m: n for n, m in model.named_modules()}
        self.ignored = {layers[n] for n in ignored}
        # alive[layer][i] = original index of current output channel i: later groups see shifted indices.
        self.alive = {n: list(range(width(m))) for n, m in layers.items()}
        self.covered: set[str] = set()  # layers whose channels an earlier group already decided
        self.skipped: dict[str, str] = {}

    def apply(self, root_name: str, round_to: int | None) -> None:
        """Decide and remove the channels of the group `root_name` belongs to."""
        if root_name in self.covered:
            return
        n = width(self.layers[root_name])
        full = self._group(root_name, range(n))
        members = {
            self.names[it.dep.target.module]: it
            for it in full
            if self.dg.is_out_channel_pruning_fn(it.dep.handler) and isinstance(it.dep.target.module, PRUNABLE)
        }
        self.covered |= {m for m, it in members.items() if len(set(it.idxs)) == width(self.layers[m])}
        # Everything below works on root indices: channel r of the root and whatever is tied to it.
        wishes = {m: self._removals(m, it) for m, it in members.items() if m in self.decisions}
        if not any(wishes.values()):
            return
        if blocker := self._blocker(full):
            return self._note(wishes, set(range(n)), blocker)

        removable, keepers = self._vote(members)
        for m, wish in wishes.items():
            if lost := wish - removable:
                others = ", ".join(sorted(set().union(*(keepers[r] for r in lost)) - {m}))
                self._note({m: wish}, lost, f"kept {len(lost)} of the {len(wish)} channels it would remove: "
                           f"coupled through {_coupling(full)} with {others}, which keep those channels")
        unit, why = self._units(full, n)
        lost = {r for r in removable if not set(unit(r)) <= removable}
        self._note(wishes, lost, why)
        removable -= lost
        if round_to and removable:
            target = min(n, math.ceil((n - len(removable)) / round_to) * round_to)
            restored = set()
            for r in sorted(removable):  # bring back the lowest-index channels first
                if n - len(removable - restored) >= target:
                    break
                restored |= set(unit(r))
            removable -= restored
            self._note(wishes, restored, f"kept {len(restored)} more channels so that {root_name} keeps a "
                       f"multiple of round_to={round_to} (or all of its {n})")
        while removable:  # never remove every channel of a layer
            exhausted = self._exhausted(full, removable)
            if exhausted is None:
                break
            back = set(unit(min(r for r in exhausted.root_idxs if r in removable)))
            removable -= back
            self._note(wishes, back, f"would remove every channel of {self._name(exhausted)}; kept {root_name} "
                       f"channel(s) {sorted(self.alive[root_name][r] for r in back)}")
        if removable:
            self._prune(root_name, self._group(root_name, sorted(removable)))

    def _vote(self, members) -> tuple[set[int], dict[int, set[str]]]:
        """Root channels every coupled layer with a say lets go; and who keeps each of the others."""
        removable, keepers = set(), {}
        for m, it in members.items():
            if m not in self.decisions and _is_depthwise(self.layers[m]):
                continue  # a depthwise conv's channels follow its input; it has no say of its own
            wish = self._removals(m, it) if m in self.decisions else set()
            removable |= wish
            for r in set(it.root_idxs) - wish:
                keepers.setdefault(r, set()).add(m)
        return removable - set(keepers), keepers

    def _removals(self, m: str, item) -> set[int]:
        """Root channels whose counterpart in decided layer `m` the decision removes."""
        return {r for i, r in zip(item.idxs, item.root_idxs, strict=True) if self.alive[m][i] not in self.decisions[m]}

    def _group(self, name: str, idxs: Iterable[int]):
        return out_channel_group(self.dg, self.layers[name], idxs, name)

    def _blocker(self, group) -> str | None:
        """Why no channel of `group` may go: they are the model's output, or an ignored layer's output.

        As in torch-pruning's ignored_layers, an ignored layer may still lose input channels.
        """
        for it in group:
            if not self.dg.is_out_channel_pruning_fn(it.dep.handler):
                continue
            if not it.dep.target.outputs:
                return f"its channels are the model's output (through {self._name(it)}), which never changes"
            if it.dep.target.module in self.ignored:
                return f"coupled through {_coupling(group)} with ignored layer {self._name(it)}"
        return None

    def _units(self, group, n: int):
        """Root channels that must go together (a grouped conv loses the same positions in every group),
        and why that reduces a decision."""
        grouped = [it for it in group if isinstance(it.dep.target.module, nn.modules.conv._ConvNd)
                   and it.dep.target.module.groups > 1 and not _is_depthwise(it.dep.target.module)]
        if not grouped:
            return (lambda r: (r,)), ""
        groups = max(it.dep.target.module.groups for it in grouped)
        names = ", ".join(sorted({self._name(it) for it in grouped}))
        if n % groups:
            why = f"coupled with grouped convolution {names}, whose {groups} groups cannot share {n} channels evenly"
            return (lambda r: range(n)), why
        size = n // groups
        why = (f"coupled with grouped convolution {names}: a channel goes only where the same position goes in "
               f"all {groups} groups")
        return (lambda r: range(r % size, n, size)), why

    def _exhausted(self, group, removable: set[int]):
        """The first member of `group` that would lose all its channels (torch-pruning's check_pruning_group,
        naming the culprit, and read off the full group rather than tracing a new one)."""
        for it in group:
            lost = len({i for i, r in zip(it.idxs, it.root_idxs, strict=True) if r in removable})
            for is_fn, count in ((self.dg.is_out_channel_pruning_fn, self.dg.get_out_channels),
                                 (self.dg.is_in_channel_pruning_fn, self.dg.get_in_channels)):
                if lost and is_fn(it.dep.handler) and (c := count(it.dep.target.module)) is not None and c <= lost:
                    return it
        return None

    def _prune(self, root_name: str, group) -> None:
        """Prune `group`, checking the result against the model with the removed channels' inputs zeroed."""
        self.model.eval()
        with torch.no_grad():
            undo = _zero_consumed(self.dg, group)
            reference = tp.utils.flatten_as_list(self.model(self.x))
            for undo_step in undo:
                undo_step()
        try:
            group.prune()
            with torch.no_grad():
                result = tp.utils.flatten_as_list(self.model(self.x))
            error = max((a - b).abs().max().item() for a, b in zip(result, reference, strict=True))
        except Exception as e:  # a shape torch-pruning got wrong
            error, cause = math.inf, f" ({type(e).__name__}: {str(e)[:150]})"
        else:
            cause = ""
        scale = max(r.abs().max().item() for r in reference)
        if not error <= 1e-4 * max(scale, 1e-6):
            mixing = sorted({self._name(it) for it in group if it.dep.target.type not in CHANNELWISE})
            suspects = f"; it passes through {', '.join(mixing)}, which mixes channels" if mixing else ""
            raise UnsupportedModelError(
                f"removing output channels of layer {root_name!r} through torch-pruning changed what the rest of "
                f"the model computes (max error {error:.3g}{cause}){suspects}. torch-pruning mis-traced an "
                "operation that reorders or mixes channels; leave that layer out of the decisions"
            )
        for it in group:
            m = self.names.get(it.dep.target.module)
            if m in self.alive and self.dg.is_out_channel_pruning_fn(it.dep.handler):
                gone = set(it.idxs)
                self.alive[m] = [a for i, a in enumerate(self.alive[m]) if i not in gone]

    def _note(self, wishes: dict[str, set[int]], lost: set[int], reason: str) -> None:
        for m, wish in wishes.items():
            if wish & lost and reason not in self.skipped.get(m, ""):
                self.skipped[m] = f"{self.skipped[m]}; {reason}" if m in self.skipped else reason

    def _name(self, item) -> str:
        module = item.dep.target.module
        return self.names.get(module) or ("the model output" if item.dep.target.type == OPTYPE.OUTPUT else
                                          repr(module))


def _zero_consumed(dg: tp.DependencyGraph, group) -> list[Callable[[], None]]:
    """Zero the inputs through which consumers read the group's channels; return the undo steps.

    With those inputs zeroed the channels feed nothing, so the model must compute exactly what the
    pruned model computes: the reference `_Surgeon._prune` checks torch-pruning's result against.
    """
    return [
        zero_inputs(it.dep.target.module, it.idxs)
        for it in group
        if isinstance(it.dep.target.module, PRUNABLE) and not dg.is_out_channel_pruning_fn(it.dep.handler)
    ]


def zero_inputs(layer: nn.Module, idxs: Sequence[int]) -> Callable[[], None]:
    """Zero the weights with which a conv/linear layer reads input channels `idxs`; return the undo step."""
    w = layer.weight
    with torch.no_grad():
        idxs = torch.as_tensor(list(idxs), dtype=torch.long, device=w.device)
        if isinstance(layer, nn.Linear) or layer.transposed:
            dim = 1 if isinstance(layer, nn.Linear) else 0
            saved = w.index_select(dim, idxs)  # only the slice: a classifier can be huge
            w.index_fill_(dim, idxs, 0.0)
            return lambda: w.data.index_copy_(dim, idxs, saved)
        saved = w.detach().clone()
        per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        for i in idxs.tolist():  # input channel i of a grouped conv is position i % per_in of group i // per_in
            g, j = divmod(i, per_in)
            w[g * per_out:(g + 1) * per_out, j] = 0.0
        return lambda: w.data.copy_(saved)


def _coupling(group) -> str:
    """How a group's layers are tied, in words."""
    kinds = set()
    for it in group:
        node = it.dep.target
        op = str(getattr(node.module, "_grad_fn", ""))
        if node.type == OPTYPE.ELEMENTWISE and ("Add" in op or "Sub" in op):
            kinds.add("a residual add")
        elif node.type == OPTYPE.ELEMENTWISE and ("Mul" in op or "Div" in op):
            kinds.add("a multiplication")
        elif node.type == OPTYPE.CONCAT:
            kinds.add("a concatenation")
        elif node.type == OPTYPE.DEPTHWISE_CONV:
            kinds.add("a depthwise convolution")
    return " and ".join(sorted(kinds)) or "shared channels"


def _is_depthwise(layer: nn.Module) -> bool:
    return tp.ops.module2type(layer) == OPTYPE.DEPTHWISE_CONV


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


def _torch_pruning_function(e: Exception) -> str:
    """The innermost torch-pruning function an exception passed through, to name what it failed on."""
    where, tb = "", e.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            where = f"torch-pruning's {tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where
