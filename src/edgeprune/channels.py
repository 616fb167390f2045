"""Choosing whole channels while a model trains, for a structured target (methods/target_rate.py `--structured`).

The coupled channel groups are traced once (torch-pruning's DependencyGraph, `structure._scored_groups`) and kept:
the model's modules stay the same objects while it trains, so torch-pruning's group importance can score them
again at any step. A channel's cost is what one root channel of its group carries, in prunable weights
(conv/linear) or MACs, counted by `kept_cost` from torch-pruning's items (rows and columns removed); a choice
removes the lowest-scored channels of the whole model (`structure.take_lowest`) until their costs reach what the
target asks.
Those per-channel costs are linear (a layer losing inputs and outputs at once is counted twice), so the budget
that lands is bisected on the exact count of what a choice keeps (`kept_cost`); the cut itself: masks zero the
chosen channels' weights and `dead.remove_dead` removes them, their constant outputs folded into the next
layers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from . import dead, masks, measure, structure
from .errors import ConfigError

IMPORTANCES = ("taylor", "bn_scale", "magnitude")
COSTS = ("params", "macs")


def importance(kind: str) -> tp.importance.Importance:
    """torch-pruning's group importance: first-order Taylor (|θ·∂L/∂θ| over the coupled layers: needs the loss
    gradient in the weights), BN scale (|γ|, network slimming) or the L2 norm over coupled layers."""
    if kind not in IMPORTANCES:
        raise ConfigError(f"channel importance must be one of {', '.join(IMPORTANCES)}, got {kind!r}")
    return {"taylor": tp.importance.GroupTaylorImportance, "bn_scale": tp.importance.BNScaleImportance,
            "magnitude": tp.importance.GroupMagnitudeImportance}[kind]()


def cost_of(model: nn.Module, input_shape: tuple[int, ...], kind: str) -> float:
    """Prunable weights (conv/linear) or MACs per sample of `model`'s layers as they are physically, masks aside."""
    if kind == "params":
        return float(sum(w.numel() for _, _, w in measure.effective_weights(model)))
    return float(measure.count_macs(model, input_shape)[0])


class Channels:
    """The channel groups of `model` (coupled layers decided together) with their importance and cost."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], kind: str = "bn_scale",
                 cost: str = "params", round_to: int = 1):
        if cost not in COSTS:
            raise ConfigError(f"channel cost must be one of {', '.join(COSTS)}, got {cost!r}")
        self.model, self.input_shape, self.cost, self.round_to = model, tuple(input_shape), cost, round_to
        self.kind, self.importance = kind, importance(kind)
        self.x = torch.zeros(1, *input_shape)
        # traced with the L2 norm (no gradients needed); `rescore` scores with the chosen importance
        self.groups = structure._scored_groups(model, self.x, importance("magnitude"))
        if not self.groups:
            raise ConfigError("this model has no channel group that may lose channels: use the unstructured scheme")
        self.dense = cost_of(model, self.input_shape, cost)
        self.positions: dict[nn.Module, float] = {}
        if cost == "macs":  # the positions a layer's weights are applied at: its MACs over its weights
            macs = measure.layer_macs(model, self.input_shape)
            self.positions = {model.get_submodule(n): m / model.get_submodule(n).weight.numel()
                              for n, m in macs.items()}
        whole = self.kept_cost([set()] * len(self.groups))
        self.costs = [self._one_channel(i, whole) for i in range(len(self.groups))]

    def _one_channel(self, i: int, whole: float) -> float:
        """What one root channel of group `i` carries: the cost `kept_cost` counts without one channel of each
        of its sections, per channel."""
        g = self.groups[i]
        one = [set() for _ in self.groups]
        one[i] = set(structure._lowest(g.scores, g.size, g.same_positions, 1 / g.size))
        return max(whole - self.kept_cost(one), 1e-9) / len(one[i])

    def rescore(self, removed: Sequence[set[int]] | None = None, smoothing: float = 0.0) -> None:
        """Score every group again on the weights as they are now, the new scores weighted 1 - `smoothing` against
        the last ones (an exponential average: one batch's Taylor scores are noisy); channels in `removed` (root
        indices per group) rank first, so a choice keeps them removed. Without loss gradients in the weights
        (before training) the Taylor importance falls back to the L2 norm."""
        with torch.no_grad():
            scorer = self.importance
            if self.kind == "taylor" and any(p.grad is None for p in self.model.parameters() if p.requires_grad):
                scorer = importance("magnitude")
            for i, g in enumerate(self.groups):
                scores = scorer(g.group)
                if scores is not None:
                    new = scores.double().cpu()
                    finite = torch.isfinite(g.scores)
                    g.scores = torch.where(finite, smoothing * g.scores + (1 - smoothing) * new, new) if (
                        smoothing and g.scores.shape == new.shape) else new
                if removed is not None and removed[i]:
                    g.scores[list(removed[i])] = -float("inf")

    def choose(self, budget: float) -> list[set[int]]:
        """Root channels to remove per group, the lowest-scored of the model, costing about `budget`."""
        taken = structure.take_lowest(self.groups, budget, self.round_to, self.costs)
        return [set(structure._lowest(g.scores, g.size, g.same_positions, k / g.scores.numel())) if k else set()
                for g, k in zip(self.groups, taken, strict=True)]

    def rows(self, removed: Sequence[set[int]]) -> dict[nn.Module, list[int]]:
        """The output rows of every coupled conv, linear and norm layer that `removed` (root channels) maps to."""
        out: dict[nn.Module, set[int]] = defaultdict(set)
        for g, gone in zip(self.groups, removed, strict=True):
            if not gone:
                continue
            for it in g.members:
                module = it.dep.target.module
                if isinstance(module, (*masks.PRUNABLE, nn.modules.batchnorm._BatchNorm)):
                    out[module] |= {i for i, root in zip(it.idxs, it.root_idxs, strict=True) if root in gone}
        return {m: sorted(r) for m, r in out.items() if r}

    def cut(self, model: nn.Module, removed: Sequence[set[int]]) -> nn.Module:
        """Zero the removed channels of `model` (this model or a copy of it): masks on the rows of every coupled
        conv and linear layer (`masks.apply` combines them with those in force), and the scale and shift of every
        coupled norm layer, so that each channel outputs exactly 0 and `dead.remove_dead` removes it
        exactly (a constant would be folded only approximately next to zero-padded borders)."""
        order = {id(m): n for n, m in self.model.named_modules()}
        chosen = {}
        for module, rows in self.rows(removed).items():
            name = order[id(module)]
            if isinstance(module, masks.PRUNABLE):
                m = torch.ones(module.weight.shape, dtype=torch.bool)
                m[rows] = False
                chosen[f"{name}.weight"] = m
            else:
                with torch.no_grad():
                    for p in (model.get_submodule(name).weight, model.get_submodule(name).bias):
                        if p is not None:
                            p[rows] = 0
        return masks.apply(model, chosen)

    def removed_by_masks(self) -> list[set[int]]:
        """The root channels whose rows the masks in force zero in every coupled conv/linear layer (a resumed
        run's choice so far)."""
        out = []
        for g in self.groups:
            gone = set(range(g.scores.numel()))
            for it in g.members:
                if isinstance(module := it.dep.target.module, masks.PRUNABLE):
                    mask = getattr(module, "weight_mask", None)
                    gone = set() if mask is None else gone - {
                        root for i, root in zip(it.idxs, it.root_idxs, strict=True) if mask[i].any()}
            out.append(gone)
        return out

    def kept_cost(self, removed: Sequence[set[int]]) -> float:
        """The cost of the model without the `removed` root channels, counted from torch-pruning's items: every
        conv/linear layer keeps its remaining output rows times its remaining input columns."""
        out_rm: dict[nn.Module, set[int]] = defaultdict(set)
        in_rm: dict[nn.Module, set[int]] = defaultdict(set)
        for g, gone in zip(self.groups, removed, strict=True):
            if not gone:
                continue
            for it in g.group:
                module, fn = it.dep.target.module, getattr(it.dep.handler, "__name__", "")
                if isinstance(module, masks.PRUNABLE) and fn in ("prune_out_channels", "prune_in_channels"):
                    idx = {i for i, root in zip(it.idxs, it.root_idxs, strict=True) if root in gone}
                    (out_rm if fn == "prune_out_channels" else in_rm)[module] |= idx
        total = 0.0
        for module in self.model.modules():
            if isinstance(module, masks.PRUNABLE):
                w = module.weight
                groups = getattr(module, "groups", 1) if w.dim() > 2 else 1
                # a depthwise conv's one column per row goes with its row; a plain layer loses whole columns
                cols = w.shape[1] if groups > 1 else w.shape[1] - len(in_rm[module])
                kept = (w.shape[0] - len(out_rm[module])) * cols * w[0, 0].numel()
                total += kept * self.positions.get(module, 1.0)
        return total

    def budget_for(self, target: float) -> float:
        """The budget whose choice (on the scores as they are) comes closest to dense / `target` by `kept_cost`:
        bisected, the kept cost falling as the budget grows."""
        goal, lo, hi = self.dense / target, 0.0, 2 * self.dense * max(self.costs) / min(self.costs)
        best = (math.inf, 0.0)
        for _ in range(40):
            mid = (lo + hi) / 2
            got = self.kept_cost(self.choose(mid))
            best = min(best, (abs(got - goal), mid))
            lo, hi = (mid, hi) if got > goal else (lo, mid)
        return best[1]

    def land(self, target: float, removed: Sequence[set[int]] | None = None
             ) -> tuple[list[set[int]], nn.Module, dict]:
        """The channels to remove so that the physically smaller model's cost is closest to dense / `target`
        (channels go in `round_to` quanta), `removed` among them: chosen by score at the budget `budget_for`
        finds, checked on a copy through `dead.remove_dead`. Returns the choice, the smaller copy and what
        was measured."""
        self.rescore(removed)
        budget = self.budget_for(target)
        choice = self.choose(budget)
        trial = self.cut(masks.baked_copy(self.model).cpu(), choice)
        small, report = dead.remove_dead(trial, self.x)
        got = cost_of(small, self.input_shape, self.cost)
        return choice, small, {"dense": self.dense, "goal": self.dense / target, "counted": self.kept_cost(choice),
                               "cost": got, "ratio": self.dense / got, "target": target, "budget": budget,
                               "max_abs_error": report.max_abs_error}
