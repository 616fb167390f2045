"""A pruning method declared outside edgeprune, as a user's own would be: importing this module registers it."""

import time
from dataclasses import asdict, dataclass

import torch

from edgeprune import masks
from edgeprune.errors import ConfigError
from edgeprune.methods.registry import option, register


@dataclass
class EveryOptions:
    sparsity: float = option(0.5, "Fraction of weights removed.")
    stride: int = option(2, "Every: prefer each stride-th weight, then the next ones.")

    def __post_init__(self):
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")

    def to_dict(self):
        return asdict(self)


def _label(o):
    return f"every{o.get('stride')}", [f"stride {o.get('stride')}"]


@register("every", kind="init", options=EveryOptions, label=_label,
          summary="a test method: keeps weights by their position, every stride-th first")
def prune_every(model, opts, batches, input_shape, progress=None):
    t0 = time.perf_counter()
    names = list(masks.prunable(model))
    scores = {}
    for n in names:
        size = model.get_parameter(n).numel()
        index = torch.arange(size, dtype=torch.float64)
        scores[n] = (-(index % opts.stride) * size - index).view_as(model.get_parameter(n))
    masks.apply(model, masks.select(scores, 1 - opts.sparsity, min_layer_density=0))
    return {"method": "every", "options": opts.to_dict(), "prune_seconds": time.perf_counter() - t0,
            "density": 1 - opts.sparsity, "layers": masks.table(model, names)}
