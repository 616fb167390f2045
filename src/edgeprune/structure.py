"""Structure: per-weight decisions turned into per-channel decisions.

`remove_dead` is DNNShifter's structural step (papers.md §2): output channels whose weights are all zero
are removed physically. A dead channel still outputs a constant (its bias, or its BN's shift, through the
activation); unlike the DNNShifter repository, `remove_dead` folds that constant into the layers reading
it before the channel goes (papers.md §2, caveat [I]), so the smaller model computes what the sparse one did.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from . import masks as masks_mod
from . import zoo_ops
from .errors import ConfigError
from .measure import PRUNABLE, effective_weights
from .reference import zero_inputs
from .surgery import Decisions, SurgeryReport, materialize
from .tracing import CHANNELWISE, branch_mode, dependency_graph, mapped_once, out_channel_group, traced, width


@dataclass
class DeadLayer:
    before: int  # output channels
    after: int
    dead: int  # channels whose weights are all zero
    removed: int
    folded: int  # removed dead channels whose non-zero constant output was folded into their consumers


@dataclass
class DeadReport:
    layers: dict[str, DeadLayer]
    kept_dead: dict[str, str]  # layer -> why some of its dead channels stay (see also surgery.skipped)
    folded_into: dict[str, str]  # consumer layer -> where its folded constants went
    approximate: list[str]  # consumers whose fold is exact only away from zero-padded image borders
    max_abs_error: float  # largest output difference, masked model vs returned model, random inputs, eval mode
    surgery: SurgeryReport = field(default_factory=SurgeryReport)

    def to_dict(self) -> dict:
        """The record, without the surgery's mask tensors."""
        return {**{k: v for k, v in asdict(self).items() if k != "surgery"}, "surgery": self.surgery.to_dict()}


def dead_channels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per conv/linear layer, a bool mask of the output channels whose weights (masks applied) are all zero."""
    return {
        name: (w.detach().flatten(1) == 0).all(1)
        for name, layer, w in effective_weights(model)
        if not getattr(layer, "transposed", False)  # a transposed conv keeps output channels on dim 1
    }


def remove_dead(
    model: nn.Module,
    example_inputs: torch.Tensor,
    fold_constants: bool = True,
    round_to: int | None = None,
) -> tuple[nn.Module, DeadReport]:
    """A new, physically smaller copy of `model` without its dead output channels (masks baked in; the surviving
    masks, narrowed, are in `report.surgery.masks`).

    With `fold_constants` (the default) a dead channel's constant output is folded into the layers that read
    it, and a dead channel whose value cannot be folded (it meets live values, e.g. in a residual add, or
    reaches something that is not a conv/linear layer) stays. Without it dead channels are dropped with
    their constants, as the DNNShifter repository does. `report.max_abs_error` measures the difference.
    """
    net = masks_mod.baked_copy(model).eval()
    dead = {name: mask for name, mask in dead_channels(net).items() if mask.any()}
    kept_dead, folded, folded_into, approximate, done = {}, {}, {}, [], None
    keep = {name: ~mask for name, mask in dead.items()}
    if fold_constants and dead:
        stay, folded, folded_into, approximate, done = _fold_constants(net, dead, example_inputs)
        for name, reasons in stay.items():
            keep[name][list(reasons)] = True
            by_reason = defaultdict(list)
            for channel, reason in sorted(reasons.items()):
                by_reason[reason].append(channel)
            kept_dead[name] = "; ".join(f"{len(chs)} dead channel(s) {chs[:8]} kept: {r}"
                                        for r, chs in by_reason.items())
    keep = Decisions({name: mask for name, mask in keep.items() if not mask.all()}, traced=done)
    held = {name: m.weight_mask.detach() for name, m, attr in masks_mod.masked_modules(model) if attr == "weight"}
    surgery = materialize(net, keep, example_inputs, round_to=round_to, masks=held)
    layers, order = {}, [n for n, _ in net.named_modules()]
    for name in sorted(set(dead) | set(surgery.after), key=order.index):
        before = surgery.before.get(name, width(net.get_submodule(name)))
        after = surgery.after.get(name, before)
        kept = set(surgery.kept.get(name, range(before)))
        removed_folded = sum(1 for c in folded.get(name, ()) if c not in kept)
        layers[name] = DeadLayer(before, after, int(dead[name].sum()) if name in dead else 0, before - after,
                                 removed_folded)
    error = _max_abs_error(model, net, example_inputs)
    net.train(model.training)
    return net, DeadReport(layers, kept_dead, folded_into, approximate, error, surgery)


def _fold_constants(net: nn.Module, dead: dict[str, torch.Tensor], example_inputs: torch.Tensor):
    """Fold the constants dead channels feed their consumers into the consumers' biases, in place.

    Returns (channels that must stay: layer -> {channel: reason}, folded channels per layer,
    where each consumer's constants went, consumers folded only approximately, the trace made here).
    """
    done = traced(net, example_inputs)  # folding changes values only: materialize reuses it
    dg, branches = done.dg, done.branch_error is None
    names = {m: n for n, m in net.named_modules()}
    dead = {name: mask for name, mask in dead.items() if net.get_submodule(name) in dg.module2node}  # see materialize
    reads: dict[tuple[str, int], list[tuple[nn.Module, int]]] = defaultdict(list)
    stay: dict[str, dict[int, str]] = defaultdict(dict)
    with mapped_once(dg):  # planning: nothing is pruned
        for name, mask in dead.items():
            layer = net.get_submodule(name)
            for it in out_channel_group(dg, layer, mask.nonzero().flatten().tolist(), name):
                node, module = it.dep.target, it.dep.target.module
                if isinstance(module, PRUNABLE) and not dg.is_out_channel_pruning_fn(it.dep.handler):
                    for col, channel in zip(it.idxs, it.root_idxs, strict=True):
                        reads[name, channel].append((module, col))
                elif not node.outputs or node.type not in CHANNELWISE:
                    what = names.get(module, "an operation")
                    reason = (f"it is part of the model's output (through {what})" if not node.outputs else
                              f"it reaches {what}, which mixes channels, so its constant cannot be folded")
                    for channel in it.root_idxs:
                        stay[name][channel] = reason

    # Observe what every consumer reads on random inputs: a dead channel reads the same for every input.
    seen = _consumer_inputs(net, {m for pairs in reads.values() for m, _ in pairs}, example_inputs, branches)
    folds: dict[nn.Module, dict[int, float]] = defaultdict(dict)
    folded: dict[str, set[int]] = defaultdict(set)
    approximate = set()
    for (name, channel), pairs in reads.items():
        constants = {}
        for module, col in pairs:
            if channel in stay[name]:
                break
            value, varies = _constant(seen[module], module, col)
            if value is None:
                stay[name][channel] = f"it meets live values (residual add, multiplication) before {names[module]}"
            elif value != 0 and not _foldable(module):
                stay[name][channel] = f"cannot fold its constant into {names[module]} ({type(module).__name__})"
            elif value != 0:
                constants[module, col] = value
                if varies:
                    approximate.add(names[module])
        if channel not in stay[name]:
            for (module, col), value in constants.items():
                folds[module][col] = value
            if constants:
                folded[name].add(channel)

    folded_into = {}
    with torch.no_grad():
        for module, columns in folds.items():
            cols, values = list(columns), torch.tensor(list(columns.values()), dtype=module.weight.dtype)
            delta = _constant_response(module, cols, values.to(module.weight.device))
            zero_inputs(module, cols)  # the constant now arrives through the bias; the channel feeds nothing
            folded_into[names[module]] = _add_to_bias(dg, module, delta, names)
            if _zero_padded(module):
                approximate.add(names[module])  # zero padding reads 0, not the constant, at the borders
    return {n: s for n, s in stay.items() if s}, dict(folded), folded_into, sorted(approximate), done


def _constant(inputs: torch.Tensor, module: nn.Module, col: int) -> tuple[float | None, bool]:
    """(the constant `module` reads on input `col`, None where it depends on the input; whether it varies
    over positions, as a constant that passed a zero-padded conv does at the image borders)."""
    v = inputs[..., col] if isinstance(module, nn.Linear) else inputs[:, col]
    if (v - v[:1]).abs().max() > 1e-6 * (1 + v[:1].abs().max()):
        return None, False
    return v[0].flatten().median().item(), bool(v[0].flatten().unique().numel() > 1)


def _zero_padded(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and module.padding not in ("valid", (0, 0))


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (type(module) is nn.Conv2d and not module.transposed)


def _constant_response(module: nn.Module, cols: list[int], values: torch.Tensor) -> torch.Tensor:
    """What constant inputs `values` on input channels `cols` add to each output, away from borders."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return w[:, cols] @ values
    # One receptive field without padding, the constant channels filled in: exactly the interior response.
    extent = [d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size, strict=True)]
    x = torch.zeros(1, module.in_channels, *extent, dtype=w.dtype, device=w.device)
    x[0, cols] = values.view(-1, 1, 1)
    return F.conv2d(x, w, None, 1, 0, module.dilation, module.groups).flatten()


def _add_to_bias(dg, module: nn.Module, delta: torch.Tensor, names: dict) -> str:
    """Add `delta` to what `module` outputs; say where it went."""
    if module.bias is not None:
        module.bias += delta
        return "bias"
    node = dg.module2node[module]
    follower = node.outputs[0].module if len(node.outputs) == 1 else None
    if isinstance(follower, nn.modules.batchnorm._BatchNorm) and follower.running_mean is not None:
        # BN(y + d) with running statistics is BN(y) with its mean lowered by d; this keeps the layer
        # bias-free, so the architecture spec (and export.load_model) still rebuilds it.
        follower.running_mean -= delta
        return f"running mean of {names[follower]}"
    module.bias = nn.Parameter(delta.clone())
    return "new bias (the architecture spec has none: export.load_model cannot rebuild this layer)"


def _probe(example_inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """A few random inputs shaped like `example_inputs`, the same on every call with the same seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((4, *example_inputs.shape[1:]), generator=g).to(example_inputs)


def _consumer_inputs(net: nn.Module, consumers: set[nn.Module], example_inputs: torch.Tensor, branches: bool) -> dict:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].detach())) for m in consumers]
    try:
        with torch.no_grad(), branch_mode(net, branches):  # the traced branches: auxiliary heads read channels too
            net(_probe(example_inputs, seed=0))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _max_abs_error(model: nn.Module, net: nn.Module, example_inputs: torch.Tensor) -> float:
    x = _probe(example_inputs, seed=1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float((model(x) - net.eval()(x)).abs().max())
    finally:
        model.train(was_training)


# --- Reconvene: layer sensitivity and density-to-width (papers.md §1) -------------------------------------


def channel_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[list[str]]:
    """Conv/linear layers whose output channels are tied (residual adds, depthwise convs, …), in model
    order, from torch-pruning's dependency graph; a layer tied to nothing is a group of its own."""
    dg = dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    groups, seen = [], set()
    with mapped_once(dg):
        for name, layer in model.named_modules():
            if not isinstance(layer, PRUNABLE) or name in seen:
                continue
            group = out_channel_group(dg, layer, range(width(layer)), name)
            members = {names[it.dep.target.module] for it in group
                       if dg.is_out_channel_pruning_fn(it.dep.handler) and isinstance(it.dep.target.module, PRUNABLE)}
            members = sorted(members | {name}, key=order.__getitem__)
            seen |= set(members)
            groups.append(members)
    return groups


def group_sparsity(model: nn.Module, group: list[str]) -> float:
    """Fraction of zero weights over all layers of a group, masks applied."""
    ws = [model.get_submodule(n).weight for n in group]
    return 1 - sum(int(torch.count_nonzero(w)) for w in ws) / sum(w.numel() for w in ws)


def channel_scores(model: nn.Module, scores: dict[str, torch.Tensor], group: list[str]) -> torch.Tensor | None:
    """Summed score of each output channel's surviving weights, over all layers of a group.

    None where the group's layers differ in width (a concatenation maps channels apart).
    """
    per_layer = []
    for n in group:
        w = model.get_submodule(n).weight.detach()
        per_layer.append((scores[f"{n}.weight"].double() * (w != 0)).flatten(1).sum(1))
    if len({t.numel() for t in per_layer}) != 1:
        return None
    return torch.stack(per_layer).sum(0)


WIDTH_RULES = ("channels", "sqrt")


def density_to_width(channel_score: torch.Tensor, density: float, rule: str = "channels") -> list[int]:
    """The best channels by score (ties to the lower index), at least one:

    - `channels`: ⌈density × C⌉, the layer's weight density read as a channel fraction;
    - `sqrt`: ⌈√density × C⌉: where the neighbouring layers shrink as well, a layer loses inputs too, and
      this keeps about density × its weights instead of density².
    """
    if rule not in WIDTH_RULES:
        raise ConfigError(f"unknown width rule {rule!r}; choose from {list(WIDTH_RULES)}")
    fraction = density if rule == "channels" else math.sqrt(density)
    k = max(1, math.ceil(fraction * channel_score.numel() - 1e-9))
    return sorted(masks_mod.top_k(channel_score.double(), k).nonzero().flatten().tolist())


def rectify(model: nn.Module, shapes_before: dict[str, tuple]) -> list[str]:
    """Re-initialise every conv/linear/norm layer whose parameter shapes changed, with its new fan-in
    and fan-out (Reconvene's Resilient Layer Rectifier); return their names.

    Convs get Kaiming-normal (fan-out, ReLU), as the in-house models are initialised; linears and norms
    their PyTorch defaults (norms: weight 1, bias 0, running statistics reset).
    """
    changed = []
    for name, module in model.named_modules():
        before = shapes_before.get(name)
        if before is None or before == parameter_shapes(module):
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()  # Linear; BatchNorm also resets its running statistics
        changed.append(name)
    return changed


def parameter_shapes(module: nn.Module) -> tuple:
    return tuple(tuple(p.shape) for p in module.parameters(recurse=False))


# --- Group-level decisions -------------------------------------------------------------------------------


def group_keep(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratio: float,
    importance: tp.importance.Importance | None = None,
) -> dict[str, list[int]]:
    """Keep decisions for `surgery.materialize` that remove `ratio` of the channels of every coupled group.

    Each group (layers tied by residual adds, depthwise convs, ...) is ranked once by torch-pruning's
    group importance (default: `GroupMagnitudeImportance`, the L2 norm over every coupled layer) and
    every coupled layer gets the same decision, so none keeps what another removes and the request
    lands. Groups whose channels are the model's output, and layers the traced forward never reaches,
    get no decision. Where a group holds grouped convs, GroupNorms or attention heads, each of their
    groups (heads) loses round(ratio × its size) channels.
    """
    if not 0 <= ratio < 1:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}: the fraction of each group's channels to remove")
    done = traced(model, example_inputs)
    groups = _scored_groups(model, example_inputs, importance or tp.importance.GroupMagnitudeImportance(p=2), done.dg)
    return Decisions(_decisions(model, [(g, _lowest(g.scores, g.size, g.same_positions, ratio)) for g in groups]),
                     traced=done)


def global_keep(
    model: nn.Module, example_inputs: torch.Tensor, count: int, importance: tp.importance.Importance,
    round_to: int = 1,
) -> dict[str, list[int]]:
    """Keep decisions for `surgery.materialize` that remove the `count` lowest-scored channels of the whole
    model, ranked across groups (Molchanov et al.'s iterative step: scores made comparable by the importance,
    e.g. normalised per layer). Every group (every section of one: a grouped conv's group, a head) keeps at
    least one channel; fewer than `count` go where that floor is reached. Groups are as in `group_keep`.

    With `round_to` > 1 a group (of one section) loses channels only so as to keep a multiple of `round_to`:
    it goes in whole quanta, each when its last (highest-scored) channel comes up in the ranking, and a group
    narrower than `round_to` keeps all; up to `round_to` - 1 more than `count` may go. ONNX Runtime's CPU
    convolutions ran 1.6x slower per channel at widths that are no multiple of 4
    (benchmarks/results/odd_widths.md)."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    done = traced(model, example_inputs)
    groups = _scored_groups(model, example_inputs, importance, done.dg)
    taken = take_lowest(groups, count, round_to)
    return Decisions(_decisions(model, [(g, _lowest(g.scores, g.size, g.same_positions, k / g.scores.numel()))
                                        for g, k in zip(groups, taken, strict=True) if k]), traced=done)


def take_lowest(groups: Sequence[_Scored], budget: float, round_to: int = 1,
                costs: Sequence[float] | None = None) -> list[int]:
    """How many channels each group loses when the lowest-scored channels of the whole model go, one at a time,
    until their `costs` (per channel of each group; default 1: a count) add up to `budget`; floors and `round_to`
    quanta as in `global_keep`, whose loop this is."""
    flat = torch.cat([g.scores for g in groups]) if groups else torch.zeros(0)
    owner = torch.cat([torch.full((g.scores.numel(),), i) for i, g in enumerate(groups)]) if groups else flat.long()
    costs = [1.0] * len(groups) if costs is None else costs
    taken, pending = [0] * len(groups), [0] * len(groups)
    rounded = [round_to > 1 and g.size == g.scores.numel() for g in groups]
    room = [max(g.scores.numel() - round_to, 0) if r
            else g.scores.numel() // g.size * (g.size - 1) for g, r in zip(groups, rounded, strict=True)]
    for i in owner[torch.sort(flat, stable=True).indices].tolist():  # ties: the model's earlier channels first
        if budget <= 0:
            break
        if taken[i] + pending[i] >= room[i]:
            continue
        pending[i] += 1
        if not rounded[i] or (groups[i].scores.numel() - taken[i] - pending[i]) % round_to == 0:
            taken[i], budget, pending[i] = taken[i] + pending[i], budget - pending[i] * costs[i], 0
    return taken


def removable_channels(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """How many channels `global_keep` ranks: those of every coupled group that may lose channels, each once."""
    groups = _scored_groups(model, example_inputs, tp.importance.GroupMagnitudeImportance())
    return sum(g.scores.numel() for g in groups)


@dataclass
class _Scored:
    members: list  # torch-pruning's out-channel items of the group
    scores: torch.Tensor  # one per root channel, float64, on the CPU
    size: int  # channels per section (see _sections)
    same_positions: bool
    group: object = None  # torch-pruning's whole group: scored again where the weights change (channels.py)


def _scored_groups(model: nn.Module, example_inputs: torch.Tensor, importance: tp.importance.Importance,
                   dg: tp.DependencyGraph | None = None) -> list[_Scored]:
    """Every coupled group that may lose channels, once, scored by `importance` (torch-pruning's group
    importance); not the groups holding the model's outputs or passing through a module whose channels stay
    (`zoo_ops.whole_types`: Swin's window attention), nor layers the traced forward never reaches."""
    dg = dg or dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    out, covered = [], set()
    with mapped_once(dg):
        for name, layer in model.named_modules():
            if not isinstance(layer, PRUNABLE) or name in covered or layer not in dg.module2node:
                continue
            n = width(layer)
            group = out_channel_group(dg, layer, range(n), name)
            members = [it for it in group if dg.is_out_channel_pruning_fn(it.dep.handler)]
            covered |= {names[it.dep.target.module] for it in members if isinstance(it.dep.target.module, PRUNABLE)}
            if any(not it.dep.target.outputs for it in members):
                continue  # the model's outputs never change
            if zoo_ops.whole_item(group) is not None:
                continue  # through a module whose channels stay (Swin's window attention): surgery would refuse it
            with torch.no_grad():
                scores = importance(group)
            if scores is not None:
                out.append(_Scored(members, scores.double().cpu(), *_sections(group, n), group))
    return out


def _decisions(model: nn.Module, removals: list[tuple[_Scored, list[int]]]) -> dict[str, list[int]]:
    """Per-layer keep lists from root channels to remove, group by group: every coupled layer loses the
    channels its items map the root channels to."""
    names = {m: n for n, m in model.named_modules()}
    removed: dict[str, set[int]] = defaultdict(set)
    for g, roots in removals:
        gone = set(roots)
        for it in g.members:
            if isinstance(it.dep.target.module, PRUNABLE):
                removed[names[it.dep.target.module]] |= {i for i, root in zip(it.idxs, it.root_idxs, strict=True)
                                                         if root in gone}
    return {m: sorted(set(range(width(model.get_submodule(m)))) - gone) for m, gone in removed.items() if gone}


def _sections(group, n: int) -> tuple[int, bool]:
    """(channels per section that must lose equally, in root indices: a grouped conv's group, a GroupNorm
    group, an attention head, or n; whether they must lose the same positions, as grouped convs do)."""
    size, same_positions = n, False
    for it in group:
        m = it.dep.target.module
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.in_channels and n % m.groups == 0:
            size, same_positions = math.gcd(size, n // m.groups), True
        elif isinstance(m, nn.GroupNorm) and len(set(it.idxs)) == n:
            size = math.gcd(size, m.num_channels // m.num_groups)
        elif isinstance(m, nn.MultiheadAttention) and len(set(it.idxs)) == n:
            size = math.gcd(size, m.embed_dim // m.num_heads)
    return size, same_positions


def _lowest(scores: torch.Tensor, size: int, same_positions: bool, ratio: float) -> list[int]:
    """round(ratio × size) lowest-scored channels of every section of `size` channels (ties to the higher
    index); with `same_positions`, the same positions in every section, ranked by their summed score."""
    k = min(size - 1, round(ratio * size))
    sections = scores.view(-1, size)
    if same_positions:
        positions = (~masks_mod.top_k(sections.sum(0), size - k)).nonzero().flatten()
        return sorted(start + p for start in range(0, scores.numel(), size) for p in positions.tolist())
    return [s * size + i for s, section in enumerate(sections)
            for i in (~masks_mod.top_k(section, size - k)).nonzero().flatten().tolist()]
