"""SynFlow (Tanaka et al., NeurIPS 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1).

On a float64 copy in eval mode, every floating-point entry of the state_dict is replaced by its absolute
value, as Synaptic-Flow's `linearize` does: weights, biases, BN affine parameters and running
statistics. With BN in eval mode and running statistics, BN is a positive per-channel affine map, so the
network is the positive linear(-ised) path sum the paper describes; at initialisation (mean 0, var 1)
taking |·| of the running statistics changes nothing. float64 because the path products of deep nets
over- or underflow float32; the scores are returned in float64 (`masks.select` ranks doubles).
`precision="float32"` trades that for speed (half the bytes in every pass) where the path products fit: its
rounding flips near-ties, which cascade over 100 rounds (VGG-16 at density 0.1: 0.8 % of the kept weights
differ; ResNet-20: none), so float64 stays the default.

One round only: the paper's 100-round exponential schedule is
`masks.prune_iteratively(model, scores.scorer("synflow", input_shape=...), density, rounds=100)`.
Between rounds only the masks change, so the float64 |·| copy is made once (`prepares=True`): each round
writes |θ_orig| ⊙ mask into it, which is bit for bit the |double(θ_orig ⊙ mask)| a fresh copy would hold
(the mask is 0 or 1), and runs the forward and backward; the copy is remade if the model's weights,
buffers or other masks change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import masks
from ..errors import ConfigError
from .registry import device_of, grads, register, weights_for_grad


@register("synflow", rounds=100, prepares=True)
def synflow(model: nn.Module, names: list[str], batches, input_shape,
            precision: str = "float64") -> Callable[[nn.Module], dict[str, Tensor]]:
    if input_shape is None:
        raise ConfigError("criterion 'synflow' needs input_shape=(C, H, W), the shape of one input without "
                          "the batch dimension; it reads no data")
    if precision not in PRECISIONS:
        raise ConfigError(f"synflow precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    state: dict = {"dtype": PRECISIONS[precision]}

    def prepare(m: nn.Module) -> None:
        dtype = state["dtype"]
        state["ones"] = torch.ones(1, *input_shape, dtype=dtype, device=device_of(m))
        net = masks.baked_copy(m).to(dtype).eval()
        with torch.no_grad():
            for t in net.state_dict().values():
                if t.is_floating_point():
                    t.abs_()
        state.update(key=_weights_key(m, names), net=net, weights=weights_for_grad(net, names),
                     unmasked=[_unmasked(m, n).to(dtype).abs() for n in names])

    def rescore(m: nn.Module) -> dict[str, Tensor]:
        if state.get("key") != _weights_key(m, names):
            prepare(m)
        weights = state["weights"]
        with torch.no_grad():
            for w, n, base in zip(weights, names, state["unmasked"], strict=True):
                mask = _mask(m, n)
                # Cast the mask first, then multiply in place: a mixed-dtype multiplication is ~3× slower.
                w.copy_(base) if mask is None else w.copy_(mask).mul_(base)
        flow = grads(state["net"](state["ones"]).sum(), weights)
        # In place: the gradients are fresh tensors of the weights' size, and a new one per weight per round
        # costs page faults (first touch of freshly mapped memory) on top of the multiplication.
        return {n: g.mul_(w.detach()).abs_() for n, w, g in zip(names, weights, flow, strict=True)}

    return rescore


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def _mask(model: nn.Module, pname: str) -> Tensor | None:
    module_name, _, attr = pname.rpartition(".")
    return getattr(model.get_submodule(module_name), f"{attr}_mask", None)


def _unmasked(model: nn.Module, pname: str) -> Tensor:
    """The weight before its mask (`weight_orig`, or the weight itself when unmasked), detached."""
    module_name, _, attr = pname.rpartition(".")
    module = model.get_submodule(module_name)
    orig = getattr(module, f"{attr}_orig", None)
    return (orig if orig is not None else getattr(module, attr)).detach()


def _weights_key(model: nn.Module, names: list[str]) -> list[tuple[int, int]]:
    """Storage and in-place version of every parameter and buffer but the masks of `names`: it changes when
    anything the copy was made from does. Sorted: masking a weight renames it (`weight_orig`) but keeps it."""
    skip = {f"{n}_mask" for n in names}
    tensors = [t for n, t in model.named_buffers() if n not in skip] + list(model.parameters())
    return sorted((t.data_ptr(), t._version) for t in tensors)
