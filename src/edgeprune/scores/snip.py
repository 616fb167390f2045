"""SNIP (Lee et al., ICLR 2019): connection sensitivity |θ ⊙ ∂L/∂θ| on a few batches.

∂L/∂c at c = 1 for a mask c on θ is θ ⊙ ∂L/∂θ. The gradient is summed over `num_batches` batches. The
paper divides by the sum of all scores; that does not change the ranking, so raw values are returned.
The copy runs in train mode: BN normalises with batch statistics, as the reference code does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from .registry import device_of, grads, register, take, weights_for_grad


@register("snip", needs_data=True)
def snip(model: nn.Module, names: list[str], batches, input_shape, num_batches: int = 1) -> dict[str, Tensor]:
    data = take(batches, num_batches, device_of(model))
    net = masks.baked_copy(model).train()
    weights = weights_for_grad(net, names)
    total = [0.0] * len(weights)
    for x, y in data:
        total = [t + g for t, g in zip(total, grads(F.cross_entropy(net(x), y), weights), strict=True)]
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, total, strict=True)}
