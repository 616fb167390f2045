"""The planner: auxiliary widths, blocks under a memory budget, each block's batch and learning rate.

Reconstructed choices (NeuroFlux's method section was not readable; each is an option of `Options`):
- auxiliary width per layer: `aux_max_width × sqrt(smallest map / this layer's map)`, clipped to
  [aux_min_width, aux_max_width]: fewer filters where activation maps are large (the paper's AAN, in spirit);
- blocks: greedy over the layer sequence; a layer joins the block before it while the block's largest batch stays
  at least `homogeneity` × what it was without it ("memory-homogeneous": layers of like memory per sample train
  together), and at least `min_batch`;
- batch: the largest that fits the budget less `headroom` (memory.block_bytes), a multiple of 8 from 8 up, at most
  `max_batch`;
- learning rate: the base rate (chosen for the run's --batch-size) scaled by (batch / base_batch) ** 0.5 (`lr_scaling`
  "sqrt", Krizhevsky 2014), or linearly (Goyal et al. 2017), or not at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..errors import EdgePruneError
from ..models.chain import AuxHead, Chain
from .memory import Cost, block_bytes, cost
from .options import LR_SCALINGS, Options, parse_bytes  # noqa: F401  (the callers that knew them here)


class BudgetTooSmall(EdgePruneError):
    """No block can train under the memory budget."""


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass
class Block:
    first: int
    stop: int
    batch: int
    lr: float
    predicted_bytes: float


@dataclass
class Plan:
    budget: int
    shapes: list[tuple[int, ...]]  # per-sample input shape of each layer, then the classifier's
    heads: list[dict | None]  # AuxHead options per layer; None: the model's own classifier (the last layer)
    costs: list[Cost]
    blocks: list[Block] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget, "shapes": self.shapes, "heads": self.heads,
                "costs": [c.to_dict() for c in self.costs], "blocks": [asdict(b) for b in self.blocks]}


def shapes_of(chain: Chain, image_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-sample input shape of each layer and of the classifier (one sample through, in eval mode: batch norm's
    statistics are left as they were)."""
    out = []
    modes = [m.training for m in chain.layers]
    h = torch.zeros(1, *image_shape)
    with torch.no_grad():
        for layer in chain.layers:
            out.append(tuple(h.shape[1:]))
            h = layer.eval()(h)
    for layer, mode in zip(chain.layers, modes, strict=True):
        layer.train(mode)
    return [*out, tuple(h.shape[1:])]


def aux_widths(shapes: list[tuple[int, ...]], opts: Options) -> list[int]:
    """Auxiliary width per layer output (all but the last): narrower where the activation map is larger."""
    areas = [math.prod(s[1:]) for s in shapes[1:]]
    smallest = min(areas)
    return [max(opts.aux_min_width, min(opts.aux_max_width, round(opts.aux_max_width * math.sqrt(smallest / a))))
            for a in areas[:-1]]


def make(chain: Chain, image_shape: tuple[int, ...], num_classes: int, budget: int, lr: float, base_batch: int,
         opts: Options) -> Plan:
    """The plan of training `chain` under `budget` bytes; `lr` is the learning rate chosen for batch `base_batch`."""
    shapes = shapes_of(chain, image_shape)
    widths = aux_widths(shapes, opts)
    heads: list[dict | None] = [{"in_channels": shapes[k + 1][0], "width": w, "pool": opts.aux_pool,
                                 "hidden": opts.aux_hidden} for k, w in enumerate(widths)] + [None]
    costs = []
    for k, layer in enumerate(chain.layers):
        head = chain.classifier if heads[k] is None else AuxHead(num_classes=num_classes, **heads[k])
        costs.append(cost(chain.names[k], [layer, head], shapes[k], num_classes))
    plan = Plan(budget, shapes, heads, costs)
    usable = budget * (1 - opts.headroom)
    need = [c.at(opts.min_batch) / (1 - opts.headroom) for c in costs]
    worst = max(range(len(costs)), key=need.__getitem__)
    if need[worst] > budget:
        raise BudgetTooSmall(
            f"--memory-budget {mib(budget)} is below what layer {worst} ({chain.names[worst]!r}) needs to train "
            f"at the smallest batch ({opts.min_batch}) with {opts.headroom:.0%} headroom: {mib(need[worst])}; "
            f"raise --memory-budget to at least {math.ceil(need[worst] / 2**20)}MiB (or lower --min-batch)")
    first = 0
    while first < len(costs):
        stop, batch = first + 1, largest_batch(costs[first:first + 1], usable, opts)
        while stop < len(costs):
            wider = largest_batch(costs[first:stop + 1], usable, opts)
            if wider < max(opts.min_batch, opts.homogeneity * batch):
                break
            stop, batch = stop + 1, wider
        factor = {"sqrt": math.sqrt(batch / base_batch), "linear": batch / base_batch, "none": 1.0}
        plan.blocks.append(Block(first, stop, batch, lr * factor[opts.lr_scaling],
                                 block_bytes(costs[first:stop], batch)))
        first = stop
    return plan


def largest_batch(costs: list[Cost], budget: float, opts: Options) -> int:
    """The largest batch at which the block `costs` fits `budget` (a multiple of 8 from 8 up, at most max_batch);
    0 where not even min_batch fits."""
    lo, hi = 0, opts.max_batch
    while lo < hi:  # block_bytes grows with the batch: bisect
        mid = (lo + hi + 1) // 2
        if block_bytes(costs, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    rounded = lo - lo % 8
    batch = rounded if rounded >= opts.min_batch else lo
    return batch if batch >= opts.min_batch else 0
