"""Structure: per-weight decisions turned into per-channel decisions on torch-pruning's coupled groups.

Reconvene's layer sensitivity and density-to-width, and the group-level decisions (`group_keep`, `global_keep`)
that `surgery.materialize` carries out. Removing dead channels, with their constants folded, is `dead.py`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from . import masks as masks_mod
from . import zoo_ops
from .errors import ConfigError
from .measure import PRUNABLE
from .surgery import Decisions
from .tracing import dependency_graph, mapped_once, out_channel_group, traced, width

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
