"""SynFlow (Tanaka et al., NeurIPS 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1).

On a float64 copy in eval mode, every floating-point entry of the state_dict is replaced by its absolute
value, as Synaptic-Flow's `linearize` does: weights, biases, BN affine parameters and running
statistics. With BN in eval mode and running statistics, BN is a positive per-channel affine map, so the
network is the positive linear(-ised) path sum the paper describes; at initialisation (mean 0, var 1)
taking |·| of the running statistics changes nothing. float64 because the path products of deep nets
over- or underflow float32; the scores are returned in float64 (`masks.select` ranks doubles).
`precision="float32"` trades that for speed where the path products fit, but its rounding flips near-ties,
which cascade over 100 rounds (VGG-16 at density 0.1: 0.8 % of the kept weights differ), so float64 stays
the default; the float64 path is made fast instead (below), with results bit for bit those of plain autograd.

One round only: the paper's 100-round exponential schedule is
`masks.prune_iteratively(model, scores.scorer("synflow", input_shape=...), density, rounds=100)`.
Between rounds only the masks change, so the float64 |·| copy is made once (`prepares=True`): each round
writes |θ_orig| ⊙ mask into it, which is bit for bit the |double(θ_orig ⊙ mask)| a fresh copy would hold
(the mask is 0 or 1), and runs the forward and backward; the copy is remade if the model's weights,
buffers or other masks change.

Where a round's time goes (issue 30): in float64 torch's CPU convolution is the im2col + GEMM path, whose
backward zero-fills a fresh weight-sized gradient for every layer every round (page faults on 120 MB for
VGG-16) before accumulating into it. So autograd is asked only for ∂R/∂(layer output) of every Conv2d and
Linear (the backward then skips every weight gradient), and the weight gradient is one GEMM per layer into a
buffer kept across rounds: ∂R/∂W = ∂R/∂Y · unfold(X)ᵀ, the product torch's own backward computes, in the same
order (the tests hold the masks equal to plain `torch.autograd.grad` on the weights). Layers it does not cover
(grouped, 1-D/3-D or non-zero-padded convolutions, a layer called twice) take the plain gradient. The scores
of covered layers live in those buffers: a round's scores are valid until the scorer's next call (what
`masks.prune_iteratively` needs); `scores.score` makes a new scorer each time, so its results are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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
        weights = weights_for_grad(net, names)
        layers = [net.get_submodule(n.rpartition(".")[0]) for n in names]
        seen: dict[nn.Module, list] = {}
        for layer, n in zip(layers, names, strict=True):
            if n.endswith(".weight") and _direct(layer):
                layer.register_forward_hook(lambda mod, args, out: seen[mod].append((args[0], out)))
                seen[layer] = []
        buffers = [torch.empty_like(w) if layer in seen else None for w, layer in zip(weights, layers, strict=True)]
        state.update(key=_weights_key(m, names), net=net, weights=weights, layers=layers, seen=seen, buffers=buffers,
                     unmasked=[_unmasked(m, n).to(dtype).abs() for n in names])

    def rescore(m: nn.Module) -> dict[str, Tensor]:
        if state.get("key") != _weights_key(m, names):
            prepare(m)
        weights, layers, seen = state["weights"], state["layers"], state["seen"]
        with torch.no_grad():
            for w, n, base in zip(weights, names, state["unmasked"], strict=True):
                mask = _mask(m, n)
                # Cast the mask first, then multiply in place: a mixed-dtype multiplication is ~3× slower.
                w.copy_(base) if mask is None else w.copy_(mask).mul_(base)
        for calls in seen.values():
            calls.clear()
        total = state["net"](state["ones"]).sum()
        # A covered layer called exactly once gives its output; anything else its weight, as plain autograd.
        direct = [layer in seen and len(seen[layer]) == 1 for layer in layers]
        targets = [seen[layer][0][1] if d else w for layer, w, d in zip(layers, weights, direct, strict=True)]
        flow = grads(total, targets)
        out = {}
        for n, w, layer, d, g, buf in zip(names, weights, layers, direct, flow, state["buffers"], strict=True):
            if d:  # the score in place in the layer's buffer: a fresh weight-sized tensor costs page faults
                g = _weight_grad(layer, seen[layer][0][0].detach(), g, buf)
            out[n] = g.mul_(w.detach()).abs_()  # |∂R/∂W ⊙ W|
        for calls in seen.values():
            calls.clear()  # the activations are not kept between rounds
        return out

    return rescore


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def _direct(layer: nn.Module) -> bool:
    """Whether `_weight_grad` covers the layer: a Linear, or a Conv2d without groups and with zero padding
    given as numbers (what `F.unfold` takes)."""
    if isinstance(layer, nn.Linear):
        return True
    return (type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def _weight_grad(layer: nn.Module, x: Tensor, gy: Tensor, out: Tensor) -> Tensor:
    """∂R/∂W of a layer from its input `x` and ∂R/∂(its output) `gy`, written into `out` (the weight's shape)."""
    if isinstance(layer, nn.Linear):
        return torch.mm(gy.reshape(-1, gy.shape[-1]).T, x.reshape(-1, x.shape[-1]), out=out)
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (B, C_in·k·k, P)
    batch, o = gy.shape[0], gy.shape[1]
    if batch == 1:
        torch.mm(gy.reshape(o, -1), cols[0].T, out=out.view(o, -1))
    else:  # Σ_b gy_b · cols_bᵀ as one product over (batch × positions)
        torch.mm(gy.transpose(0, 1).reshape(o, -1), cols.transpose(1, 2).reshape(-1, cols.shape[1]),
                 out=out.view(o, -1))
    return out


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
