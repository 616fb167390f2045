"""The planning and checking half of `surgery.materialize`: every coupled group's removal planned on the
unpruned model (per-layer decisions voted on, grouped convs, GroupNorm groups and heads kept whole, round_to,
never a layer emptied), then applied at once and checked against the reference (`reference.py`); where the
check fails, redone group by group and the wrong ones left unpruned. See surgery.py's docstring."""

from __future__ import annotations

import copy
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from . import zoo_ops
from .errors import ConfigError, UnsupportedModelError
from .measure import PRUNABLE
from .reference import Unchecked, frozen_statistics, mha_fastpath, zero_attention, zero_inputs
from .tracing import (
    CHANNELWISE,
    OUT_OF_MEMORY,
    TOLERANCE,
    Snapshot,
    branch_mode,
    few_names,
    out_channel_group,
    short_message,
    trace,
    width,
)


class _Mismatch(Unchecked):
    """torch-pruning's removal changed what the model computes; the reason reads as a `skipped` entry."""


@dataclass
class _Plan:
    root: str
    removable: list[int]  # root channels, original indices
    wishes: dict[str, set[int]]  # decided layer -> root channels its decision removes
    items: list[tuple]  # (torch-pruning Dependency, indices of the unpruned model) removing them


class Surgeon:
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
        if outside := few_names(m for m, it in members.items() if max(it.idxs) >= width(self.layers[m])):
            decided = [m for m in members if m in self.decisions and len(self.decisions[m]) < width(self.layers[m])]
            if decided:  # seen after a concatenation followed by a split, and around an attention traced whole
                self._unapplied(root_name, decided, self._whole(full) or f"torch-pruning maps its channels past the "
                                f"last channel of {outside}")
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
                others = few_names(set().union(*(keepers[r] for r in lost)) - {m})
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
                f"cannot remove channels of the group of layer {root!r} ({few_names(decided)}): {reason}. Leave those "
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
            if outside := few_names(self.names[m] for m, cols in zero.items() if max(cols) >= _inputs(m)):
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
                error, cause = math.inf, f", {type(e).__name__}: {short_message(e, 120)}"
        scale = max(r.abs().max().item() for r in reference)
        if not error <= TOLERANCE * max(scale, 1e-6):
            mixing = {self._name(it) for it in group if it.dep.target.type not in CHANNELWISE}
            suspects = f"; the group passes through {few_names(mixing)}" if mixing else ""
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
        return self._whole(group)

    def _whole(self, group) -> str | None:
        """Why no channel of `group` may go, if it passes through an attention traced whole (zoo_ops)."""
        if (it := zoo_ops.whole_item(group)) is None:
            return None
        return (f"coupled with {type(it.dep.target.module).__name__} {self._name(it)}, an attention whose heads are "
                "cut from its input width: its embedding channels stay")

    def _units(self, group, n: int):
        """Root channels that must go together (a grouped conv loses the same positions in every group),
        and why that reduces a decision."""
        grouped = [it for it in group if isinstance(it.dep.target.module, nn.modules.conv._ConvNd)
                   and it.dep.target.module.groups > 1 and not _is_depthwise(it.dep.target.module)]
        if not grouped:
            return (lambda r: (r,)), ""
        groups = max(it.dep.target.module.groups for it in grouped)
        names = few_names({self._name(it) for it in grouped})
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
