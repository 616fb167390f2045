"""SynFlow (Tanaka et al., NeurIPS 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1).

On a float64 copy in eval mode, every floating-point entry of the state_dict is replaced by its absolute
value, as Synaptic-Flow's `linearize` does: weights, biases, BN affine parameters and running
statistics. With BN in eval mode and running statistics, BN is a positive per-channel affine map, so the
network is the positive linear(-ised) path sum the paper describes; at initialisation (mean 0, var 1)
taking |·| of the running statistics changes nothing. float64 because the path products of deep nets
over- or underflow float32; the scores are returned in float64 (`masks.select` ranks doubles).

One round only: the paper's 100-round exponential schedule is
`masks.prune_iteratively(model, scorer, density, rounds=default_rounds("synflow"))`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import masks
from ..errors import ConfigError
from .registry import device_of, grads, register, weights_for_grad


@register("synflow", rounds=100)
def synflow(model: nn.Module, names: list[str], batches, input_shape) -> dict[str, Tensor]:
    if input_shape is None:
        raise ConfigError("criterion 'synflow' needs input_shape=(C, H, W), the shape of one input without "
                          "the batch dimension; it reads no data")
    net = masks.baked_copy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    weights = weights_for_grad(net, names)
    ones = torch.ones(1, *input_shape, dtype=torch.float64, device=device_of(model))
    flow = grads(net(ones).sum(), weights)
    return {n: (w.detach() * g).abs_() for n, w, g in zip(names, weights, flow, strict=True)}
