"""GraSP (Wang et al., ICLR 2020): keep the weights whose removal would most reduce gradient flow.

g = ∇L with logits divided by `temperature` (T = 200), summed over `num_batches` batches; Hg by double
backprop: z = Σ_b ∇L_b · stopgrad(g), Hg = ∇z. The paper's score is S = −θ ⊙ Hg and it removes the
weights with the *highest* S (Algorithm 1: keep S < τ, τ the percentile).

Sign convention, checked against both reference codes: alecwangcq/GraSP `pruner/GraSP.py` computes
`-weight * weight.grad` (−θ⊙Hg) and keeps `score <= threshold` with the threshold from `topk` over the
scores to remove, i.e. removes the highest −θ⊙Hg. ganguli-lab/Synaptic-Flow `GraSP.score` stores
`p.grad * p.data` (+θ⊙Hg) and its mask keeps `score > threshold`, i.e. keeps the highest θ⊙Hg. Both keep
the highest θ⊙Hg, so with higher = keep the score returned here is +θ ⊙ Hg (not −θ ⊙ Hg).
The reference re-initialises linear layers (xavier) before scoring; a scorer must not change weights, so
that is not done. The copy runs in train mode (BN batch statistics), as the reference's network does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from .registry import device_of, grads, register, take, weights_for_grad


@register("grasp", needs_data=True)
def grasp(
    model: nn.Module, names: list[str], batches, input_shape, num_batches: int = 1, temperature: float = 200.0
) -> dict[str, Tensor]:
    data = take(batches, num_batches, device_of(model))
    net = masks.baked_copy(model).train()
    weights = weights_for_grad(net, names)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(net(x) / temperature, y)

    g_fixed = [0.0] * len(weights)
    for x, y in data:
        g_fixed = [t + g for t, g in zip(g_fixed, grads(loss(x, y), weights), strict=True)]
    hg = [0.0] * len(weights)
    for x, y in data:
        g = grads(loss(x, y), weights, create_graph=True)
        z = sum((gi * fi).sum() for gi, fi in zip(g, g_fixed, strict=True))
        hg = [t + h for t, h in zip(hg, grads(z, weights), strict=True)]
    return {n: w.detach() * h for n, w, h in zip(names, weights, hg, strict=True)}
