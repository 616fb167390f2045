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

import copy
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from . import masks as masks_mod
from . import zoo_ops
from .errors import ConfigError, UnsupportedModelError, unknown_name
from .measure import PRUNABLE
from .reference import Unchecked, frozen_statistics, mha_fastpath, zero_attention, zero_inputs

# Layers that pass a channel on without mixing it with others. A constant cannot be folded through anything
# else (structure.remove_dead); a failed check names the others in the group (attention, pooling over channels).
CHANNELWISE = {
    OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.BN, OPTYPE.DEPTHWISE_CONV, OPTYPE.ELEMENTWISE, OPTYPE.CONCAT,
    OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.SLICE, OPTYPE.PRELU, OPTYPE.IN, OPTYPE.UNBIND, OPTYPE.EXPAND,
}
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)  # never reported as an unsupported model
TOLERANCE = 1e-4  # of the largest output magnitude: float32 sums in another order, nothing more


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


def width(layer: nn.Module) -> int:
    """Output channels of a conv or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of `model`, traced with training-only branches (see `trace`)."""
    return trace(model, example_inputs)[0]


def trace(model: nn.Module, example_inputs: torch.Tensor) -> tuple[tp.DependencyGraph, Exception | None]:
    """(torch-pruning's DependencyGraph of `model`, why branch mode failed or None where it was used).

    Branch mode (`branch_mode`) reaches layers only a training forward uses, such as auxiliary
    classifiers; a model whose training forward cannot run on `example_inputs` alone (inception_v3's
    auxiliary head at 224 px) is traced in eval mode. Raises UnsupportedModelError where torch-pruning
    cannot trace it.
    """
    error = None
    zoo_ops.prepare(model)  # ShuffleNetV2's shuffles and splits made prunable; what the model computes is unchanged
    for branches in (True, False):
        try:
            with branch_mode(model, False), torch.enable_grad():  # restores the training flags afterwards

                def forward(m: nn.Module, x: torch.Tensor, branches: bool = branches):  # after tp's model.eval()
                    with branch_mode(m, branches):
                        return m(x)  # not m(*x), torch-pruning's default, which unbatches a one-sample tensor

                dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, forward_fn=forward, verbose=False,
                    customized_pruners=zoo_ops.customized(),
                )
                zoo_ops.couple(dg)
            return dg, error
        except OUT_OF_MEMORY:
            raise
        except Exception as e:
            error = e
    where = _torch_pruning_function(error)
    hint = " (a view/reshape that moves channels, such as a channel shuffle)" if "reshape" in where else ""
    raise UnsupportedModelError(
        f"torch-pruning cannot trace {type(model).__name__}: {type(error).__name__} in {where or 'the forward'}"
        f"{hint}: {_short(error)}. Channel surgery needs a model torch-pruning can trace; remove or replace "
        "that operation"
    ) from error


@contextmanager
def branch_mode(model: nn.Module, branches: bool = True) -> Iterator[nn.Module]:
    """The model in eval mode, or with `branches` its containers in training mode and its leaf layers
    (norms, dropout, stochastic depth) and attention in eval mode: a training forward's branches
    (auxiliary heads), deterministically. Training flags are restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    if branches:
        for m in model.modules():
            if next(m.children(), None) is not None and not isinstance(m, nn.MultiheadAttention):
                m.training = True
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


def out_channel_group(dg: tp.DependencyGraph, layer: nn.Module, idxs: Iterable[int], name: str):
    """torch-pruning's group for removing output channels `idxs` of `layer` (named `name` in errors)."""
    try:
        return dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, list(idxs))
    except OUT_OF_MEMORY:
        raise
    except Exception as e:
        raise UnsupportedModelError(
            f"torch-pruning cannot prune the output channels of layer {name!r} ({type(layer).__name__}): "
            f"{type(e).__name__}: {_short(e)}. Leave that layer out of the decisions"
        ) from e


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
        dg, branch_error = trace(model, example_inputs)
        surgeon = _Surgeon(model, dg, branch_error is None, layers, decisions, ignored, example_inputs, strict, held)
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
            f"{len(report.unreached)} layer(s) are not on the traced forward ({_few(report.unreached)}): their "
            "inputs were not narrowed with their producers, so a forward that uses them will fail. The "
            f"training-mode forward (auxiliary heads) could not run on the example input: {_short(branch_error)}; "
            "pass an example input it accepts (inception_v3: 3x299x299) to prune those layers too",
            stacklevel=2)
    for name, alive in surgeon.alive.items():
        if name in decisions or len(alive) != widths[name]:
            report.before[name], report.after[name] = widths[name], len(alive)
            if len(alive) != widths[name]:
                report.kept[name] = list(alive)
    return report


class Snapshot:
    """Every module's attributes and every parameter's and buffer's data as they are now, to put back
    exactly: torch-pruning and `masks.bake` replace tensors and attributes rather than write into them."""

    def __init__(self, model: nn.Module):
        self.modules = [(m, type(m), {k: copy.copy(v) if isinstance(v, dict | set | list) else v
                                      for k, v in vars(m).items()}) for m in model.modules()]
        self.data = [(t, t.data) for m in model.modules()
                     for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]

    def restore(self) -> None:
        for m, cls, attrs in self.modules:
            m.__class__ = cls
            vars(m).clear()
            vars(m).update(attrs)
        for t, data in self.data:
            t.data = data


class _Mismatch(Unchecked):
    """torch-pruning's removal changed what the model computes; the reason reads as a `skipped` entry."""


@dataclass
class _Plan:
    root: str
    removable: list[int]  # root channels, original indices
    wishes: dict[str, set[int]]  # decided layer -> root channels its decision removes
    items: list[tuple]  # (torch-pruning Dependency, indices of the unpruned model) removing them


class _Surgeon:
    """Plans every group's removal on the unpruned model, then applies and checks them all at once."""

    def __init__(self, model, dg, branches, layers, decisions, ignored, x, strict, held):
        self.model, self.dg, self.branches, self.layers, self.decisions, self.x, self.strict = (
            model, dg, branches, layers, decisions, x, strict)
        # Per masked layer, a twin holding its mask as the weight: every removal applied to the layer is
        # applied to its twin by the same torch-pruning handler, so the mask is narrowed exactly as the weight.
        self.twins = {name: _twin(layers[name], mask) for name, mask in held.items()}
        self.names = {m: n for n, m in model.named_modules()}
        self.ignored = {layers[n] for n in ignored}
        # alive[layer][i] = original index of current output channel i: later groups see shifted indices.
        self.alive = {n: list(range(width(m))) for n, m in layers.items()}
        self.covered: set[str] = set()  # layers whose channels an earlier group already decided
        self.skipped: dict[str, str] = {}
        self.plans: list[_Plan] = []

    def plan(self, root_name: str, round_to: int | None) -> None:
        """Decide the channels of the group `root_name` belongs to."""
        if root_name in self.covered:
            return
        if self.layers[root_name] not in self.dg.module2node:
            if len(self.decisions[root_name]) < width(self.layers[root_name]):
                holder = zoo_ops.whole_holder(self.model, root_name)
                self._unapplied(root_name, [root_name], f"inside {holder}, whose channels stay (see the groups "
                                "coupled with it)" if holder else "not in torch-pruning's graph: the traced forward "
                                "never reaches it, or it belongs to a module pruned as a whole (such as "
                                "MultiheadAttention's out_proj)")
            return
        n = width(self.layers[root_name])
        full = self._group(root_name, range(n))
        members = {
            self.names[it.dep.target.module]: it
            for it in full
            if self.dg.is_out_channel_pruning_fn(it.dep.handler) and isinstance(it.dep.target.module, PRUNABLE)
        }
        self.covered |= {m for m, it in members.items() if len(set(it.idxs)) == width(self.layers[m])}
        if outside := _few(m for m, it in members.items() if max(it.idxs) >= width(self.layers[m])):
            decided = [m for m in members if m in self.decisions and len(self.decisions[m]) < width(self.layers[m])]
            if decided:  # seen after a concatenation followed by a split
                self._unapplied(root_name, decided, f"torch-pruning maps its channels past the last channel of "
                                f"{outside}")
            return
        # Everything below works on root indices: channel r of the root and whatever is tied to it.
        wishes = {m: self._removals(m, it) for m, it in members.items() if m in self.decisions}
        if not any(wishes.values()):
            return
        if blocker := self._blocker(full):
            return self._note(wishes, set(range(n)), blocker)

        removable, keepers = self._vote(members)
        for m, wish in wishes.items():
            if lost := wish - removable:
                others = _few(set().union(*(keepers[r] for r in lost)) - {m})
                self._note({m: wish}, lost, f"kept {len(lost)} of the {len(wish)} channels it would remove: "
                           f"coupled through {_coupling(full)} with {others}, which keep those channels")
        unit, why = self._units(full, n)
        lost = {r for r in removable if not set(unit(r)) <= removable}
        self._note(wishes, lost, why)
        removable -= lost
        for item, size, what in self._sections(full):
            back = _equal_per_section(item, size, removable)
            removable -= back
            self._note(wishes, back, f"kept {len(back)} channels so that each {what} of {self._name(item)} "
                       f"loses as many channels as the others")
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
                       f"channel(s) {sorted(back)[:8]}")
        if removable:
            parts = [(it.dep, [i for i, r in zip(it.idxs, it.root_idxs, strict=True) if r in removable]) for it in full]
            self.plans.append(_Plan(root_name, sorted(removable), wishes, [(d, i) for d, i in parts if i]))

    def execute(self) -> None:
        """Apply every plan with one check; where it fails, redo them one by one and leave out the wrong ones.

        All at once, each plan's part of its group as traced while planning is merged into one group whose
        indices are those of the unpruned model. One by one, each plan's group is traced again: the groups
        pruned before it have shifted the indices of the layers they share (the consumers of a concatenation).
        """
        if not self.plans:
            return
        snapshot, alive = Snapshot(self.model), self._alive_copy()
        try:
            return self._apply(self._merged([item for plan in self.plans for item in plan.items]))
        except Unchecked:
            self._roll_back(snapshot, alive)
        for plan in self.plans:
            snapshot, alive = Snapshot(self.model), self._alive_copy()
            try:
                self._apply(self._group(plan.root, self._current(plan)))
            except Unchecked as e:
                self._roll_back(snapshot, alive)
                self._unapplied(plan.root, [m for m, wish in plan.wishes.items() if wish], str(e))

    def _unapplied(self, root: str, decided: list[str], reason: str) -> None:
        """Decisions on `root`'s group that torch-pruning cannot apply: an error when strict, else left
        unpruned and reported."""
        if self.strict:
            raise UnsupportedModelError(
                f"cannot remove channels of the group of layer {root!r} ({_few(decided)}): {reason}. Leave those "
                "layers out of the decisions, or pass strict=False to leave them unpruned and reported")
        for m in decided:
            self._explain(m, f"left unpruned: {reason}")

    def _roll_back(self, snapshot: Snapshot, alive: dict[str, list[int]]) -> None:
        """The model as in `snapshot`, and a graph traced anew: pruning also changed torch-pruning's own
        records (concatenation sizes, which node holds an unwrapped parameter), which the model does not hold."""
        snapshot.restore()
        self.alive = alive
        self.dg = trace(self.model, self.x)[0]

    def _merged(self, items) -> tp.dependency.Group:
        """One torch-pruning group removing every index of `items` (each layer's indices pruned at once)."""
        merged: dict[tuple, set[int]] = defaultdict(set)
        deps = {}
        for dep, idxs in items:
            key = (dep.target, dep.handler)
            deps.setdefault(key, dep)
            merged[key] |= set(idxs)
        group = tp.dependency.Group()
        group._DG = self.dg
        for key, idxs in merged.items():
            group.add_dep(deps[key], sorted(idxs))
        return group

    def _apply(self, group) -> None:
        """Prune `group`, checking the result against the model with the removed channels' consumers zeroed."""
        with branch_mode(self.model, self.branches), mha_fastpath(False):
            zero: dict[nn.Module, set[int]] = defaultdict(set)
            for it in group:
                module = it.dep.target.module
                if isinstance(module, nn.MultiheadAttention) or (
                        isinstance(module, PRUNABLE) and not self.dg.is_out_channel_pruning_fn(it.dep.handler)):
                    zero[module] |= set(it.idxs)
            if outside := _few(self.names[m] for m, cols in zero.items() if max(cols) >= _inputs(m)):
                raise _Mismatch(f"torch-pruning maps its channels past the last input channel of {outside}")
            undo = [(zero_attention if isinstance(m, nn.MultiheadAttention) else zero_inputs)(m, sorted(cols))
                    for m, cols in zero.items()]
            statistics: list = []
            try:
                with torch.no_grad(), frozen_statistics(statistics, record=True):
                    reference = tp.utils.flatten_as_list(self.model(self.x))
            finally:
                for undo_step in undo:
                    undo_step()
            try:
                group.prune(record_history=False)
                self._update_alive(group)
                _record_widths(self.model)
                with torch.no_grad(), frozen_statistics(statistics, record=False):
                    result = tp.utils.flatten_as_list(self.model(self.x))
                error = max((a - b).abs().max().item() for a, b in zip(result, reference, strict=True))
                cause = ""
            except OUT_OF_MEMORY:
                raise
            except Exception as e:  # a shape torch-pruning got wrong
                error, cause = math.inf, f", {type(e).__name__}: {_short(e, 120)}"
        scale = max(r.abs().max().item() for r in reference)
        if not error <= TOLERANCE * max(scale, 1e-6):
            mixing = {self._name(it) for it in group if it.dep.target.type not in CHANNELWISE}
            suspects = f"; the group passes through {_few(mixing)}" if mixing else ""
            raise _Mismatch(f"torch-pruning's removal changed what the model computes (max error "
                            f"{error:.3g}{cause}){suspects}")
        for it in group:
            twin = self.twins.get(self.names.get(it.dep.target.module))
            if twin is not None and it.idxs:
                # What torch-pruning's Dependency.__call__ does to the layer, done to its twin.
                it.dep.handler.__self__.pruning_dim = it.dep.target.pruning_dim
                it.dep.handler(twin, tp._helpers.to_plain_idxs(it.idxs)
                               if isinstance(it.idxs[0], tp._helpers._HybridIndex) else it.idxs)

    def _alive_copy(self) -> dict[str, list[int]]:
        return {m: list(a) for m, a in self.alive.items()}

    def _current(self, plan: _Plan) -> list[int]:
        """The plan's root channels as indices into the root's current channels."""
        position = {a: i for i, a in enumerate(self.alive[plan.root])}
        return [position[r] for r in plan.removable]

    def _update_alive(self, group) -> None:
        for it in group:
            m = self.names.get(it.dep.target.module)
            if m in self.alive and self.dg.is_out_channel_pruning_fn(it.dep.handler):
                gone = set(it.idxs)
                self.alive[m] = [a for i, a in enumerate(self.alive[m]) if i not in gone]

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
        for it in group:
            if isinstance(it.dep.target.module, zoo_ops.whole_types()):
                return (f"coupled with {type(it.dep.target.module).__name__} {self._name(it)}, whose head size is "
                        "its input width over its number of heads: its embedding channels stay")
        return None

    def _units(self, group, n: int):
        """Root channels that must go together (a grouped conv loses the same positions in every group),
        and why that reduces a decision."""
        grouped = [it for it in group if isinstance(it.dep.target.module, nn.modules.conv._ConvNd)
                   and it.dep.target.module.groups > 1 and not _is_depthwise(it.dep.target.module)]
        if not grouped:
            return (lambda r: (r,)), ""
        groups = max(it.dep.target.module.groups for it in grouped)
        names = _few({self._name(it) for it in grouped})
        if n % groups:
            why = f"coupled with grouped convolution {names}, whose {groups} groups cannot share {n} channels evenly"
            return (lambda r: range(n)), why
        size = n // groups
        why = (f"coupled with grouped convolution {names}: a channel goes only where the same position goes in "
               f"all {groups} groups")
        return (lambda r: range(r % size, n, size)), why

    def _sections(self, group) -> list[tuple]:
        """(item, channels per section, what a section is) for each GroupNorm and attention in `group`:
        their groups and heads must each lose as many channels as the others to stay whole."""
        found = {}
        for it in group:
            m = it.dep.target.module
            if isinstance(m, nn.GroupNorm) and m not in found:
                found[m] = (it, m.num_channels // m.num_groups, "group")
            elif isinstance(m, nn.MultiheadAttention) and m not in found:
                found[m] = (it, m.embed_dim // m.num_heads, "head")
        return list(found.values())

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

    def _note(self, wishes: dict[str, set[int]], lost: set[int], reason: str) -> None:
        for m, wish in wishes.items():
            if wish & lost:
                self._explain(m, reason)

    def _explain(self, m: str, reason: str) -> None:
        if reason not in self.skipped.get(m, ""):
            self.skipped[m] = f"{self.skipped[m]}; {reason}" if m in self.skipped else reason

    def _name(self, item) -> str:
        module = item.dep.target.module
        return self.names.get(module) or ("the model output" if item.dep.target.type == OPTYPE.OUTPUT else
                                          type(module).__name__.strip("_"))


def _equal_per_section(item, size: int, removable: set[int]) -> set[int]:
    """Root channels to keep so that every section of `size` channels of `item`'s layer loses as many as
    the one that loses fewest (and keeps one); the lowest-index ones come back first, as for round_to."""
    per_section: dict[int, list[int]] = defaultdict(list)
    for i, r in zip(item.idxs, item.root_idxs, strict=True):
        if r in removable:
            per_section[i // size].append(r)
    sections = len(set(item.idxs)) // size
    allowed = min(size - 1, *(len(per_section[s]) for s in range(max(sections, 1))))
    return {r for rs in per_section.values() for r in sorted(rs)[:len(rs) - allowed]}


def _twin(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """A copy of `layer` whose weight is `mask` (the same shape), for torch-pruning's handlers to narrow."""
    if mask.shape != layer.weight.shape:
        raise ConfigError(f"a mask of shape {tuple(mask.shape)} was given for a weight of shape "
                          f"{tuple(layer.weight.shape)}; pass each layer's own weight mask")
    weight, layer.weight = layer.weight, None  # not copied: the twin gets the mask instead
    try:
        twin = copy.deepcopy(layer)
    finally:
        layer.weight = weight
    twin.weight = nn.Parameter(mask.detach().clone().to(weight.dtype), requires_grad=False)
    return twin


def _record_widths(model: nn.Module) -> None:
    """Update the widths a model keeps as attributes and computes with, which torch-pruning does not
    know of: torchvision's VisionTransformer reshapes its patch embedding with `hidden_dim`."""
    vision_transformer = sys.modules.get("torchvision.models.vision_transformer")  # imported if such a model exists
    if vision_transformer is None:
        return
    for m in model.modules():
        if isinstance(m, vision_transformer.VisionTransformer):
            m.hidden_dim = m.conv_proj.out_channels


def _inputs(layer: nn.Module) -> int:
    """Input channels of a conv, linear or attention layer."""
    if isinstance(layer, nn.MultiheadAttention):
        return layer.embed_dim
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _parameters(model: nn.Module) -> int:
    """Parameters of a model whose masks are baked (measure.count_params also counts non-zeros: a pass over
    every weight that surgery does not need)."""
    return sum(p.numel() for p in model.parameters())


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


def _short(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line and cut short: torch-pruning's can print whole tensors."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " …"


def _few(names: Iterable[str], shown: int = 3) -> str:
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
