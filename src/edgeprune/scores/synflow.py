"""SynFlow (Tanaka et al., NeurIPS 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1).

On a float64 copy in eval mode, every floating-point entry of the state_dict is replaced by its absolute
value, as Synaptic-Flow's `linearize` does: weights, biases, BN affine parameters and running
statistics. With BN in eval mode and running statistics, BN is a positive per-channel affine map, so the
network is the positive linear(-ised) path sum the paper describes; at initialisation (mean 0, var 1)
taking |·| of the running statistics changes nothing. float64 because the path products of deep nets
over- or underflow float32; the scores are returned in float64 (`masks.select` ranks doubles).
`precision="float32"` trades that for speed where the path products fit, but its rounding flips near-ties,
which cascade over 100 rounds (VGG-16 at density 0.1: 0.8 % of the kept weights differ), so float64 stays
the default; the float64 path is made fast instead (below): its sums run in another order than plain
autograd's, so scores may differ in the last bits (tests allow 1e-12 relative), and the masks are the same
(tests every round on ResNet-20, VGG-5 and uncovered layers; VGG-16's 100 rounds in benchmarks/prune_time.py).

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
buffer kept across rounds: ∂R/∂W = ∂R/∂Y · unfold(X)ᵀ, on the columns the forward unfolded. The convs
themselves run as explicit GEMMs (`_GemmConv`) with the operand order chosen per layer: torch's float64 conv
reads the weight as the narrow operand, 2–4× slower on VGG-16's 4×4 and 2×2 layers (~2× on the whole round's
products, measured per layer on one core). Layers it does not cover (grouped, 1-D/3-D or non-zero-padded
convolutions, a layer called twice) take the plain gradient. Where a layer's input and output gradient are
nonnegative (every ReLU network), |∂R/∂W ⊙ W| needs no abs pass. The scores
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
        cols: dict[nn.Module, Tensor] = {}  # a GEMM conv's unfolded input, kept for its weight gradient
        for layer, n in zip(layers, names, strict=True):
            if n.endswith(".weight") and _direct(layer):
                layer.register_forward_hook(lambda mod, args, out: seen[mod].append((args[0], out)))
                seen[layer] = []
                if isinstance(layer, nn.Conv2d):  # in the private copy only: convs as explicit GEMMs
                    layer.forward = _gemm_forward(layer, cols)
        buffers = [torch.empty_like(w) if layer in seen else None for w, layer in zip(weights, layers, strict=True)]
        # |θ_orig| stays in the model's dtype: |θ| ⊙ mask is exact there (the mask is 0 or 1) and so is widening
        # it, so a product there and one copy give the bits of the float64 product in fewer bytes.
        unmasked = [_unmasked(m, n).abs() for n in names]
        scratch = [torch.empty_like(u) if u.dtype != dtype else None for u in unmasked]
        state.update(key=_weights_key(m, names), net=net, weights=weights, layers=layers, seen=seen, buffers=buffers,
                     cols=cols, unmasked=unmasked, scratch=scratch)

    def forward() -> Tensor:
        for calls in state["seen"].values():
            calls.clear()
        state["cols"].clear()
        return state["net"](state["ones"]).sum()

    def rescore(m: nn.Module) -> dict[str, Tensor]:
        if state.get("key") != _weights_key(m, names):
            prepare(m)
        weights, layers, seen, cols = state["weights"], state["layers"], state["seen"], state["cols"]
        with torch.no_grad():
            for w, n, base, tmp in zip(weights, names, state["unmasked"], state["scratch"], strict=True):
                mask = _mask(m, n)
                if mask is None:
                    w.copy_(base)
                elif mask.dtype == base.dtype == w.dtype:
                    torch.mul(base, mask, out=w)
                elif mask.dtype == base.dtype and tmp is not None:
                    w.copy_(torch.mul(base, mask, out=tmp))
                else:
                    w.copy_(mask).mul_(base)
        total = forward()
        # A GEMM conv called more than once goes back to torch's conv for good (autograd then takes its
        # weight gradient, below), and the pass is redone.
        repeated = [layer for layer, calls in seen.items() if len(calls) > 1 and "forward" in vars(layer)]
        if repeated:
            for layer in repeated:
                del layer.forward
            total = forward()
        # A covered layer called exactly once gives its output; anything else its weight, as plain autograd.
        direct = [layer in seen and len(seen[layer]) == 1 for layer in layers]
        targets = [seen[layer][0][1] if d else w for layer, w, d in zip(layers, weights, direct, strict=True)]
        flow = grads(total, targets)
        out = {}
        for n, w, layer, d, g, buf in zip(names, weights, layers, direct, flow, state["buffers"], strict=True):
            if d:  # the score in place in the layer's buffer: a fresh weight-sized tensor costs page faults
                x = seen[layer][0][0].detach()
                nonnegative = bool(x.min() >= 0) and bool(g.min() >= 0)
                g = _weight_grad(layer, x, g, buf, cols.get(layer))
                # W >= 0 (|θ| ⊙ mask) and, from a nonnegative input and output gradient, ∂R/∂W >= 0: the
                # product is its own absolute value, bit for bit, and the abs pass is skipped.
                out[n] = g.mul_(w.detach()) if nonnegative else g.mul_(w.detach()).abs_()
            else:
                out[n] = g.mul_(w.detach()).abs_()  # |∂R/∂W ⊙ W|
        for calls in seen.values():
            calls.clear()  # the activations are not kept between rounds
        cols.clear()
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


def _weight_grad(layer: nn.Module, x: Tensor, gy: Tensor, out: Tensor, cols: Tensor | None = None) -> Tensor:
    """∂R/∂W of a layer from its input `x` (or its unfolded columns `cols`, as the forward made them) and
    ∂R/∂(its output) `gy`, written into `out` (the weight's shape)."""
    if isinstance(layer, nn.Linear):
        return torch.mm(gy.reshape(-1, gy.shape[-1]).T, x.reshape(-1, x.shape[-1]), out=out)
    if cols is None:
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (B, C_in·k·k, P)
    batch, o = gy.shape[0], gy.shape[1]
    if batch == 1:
        torch.mm(gy.reshape(o, -1), cols[0].T, out=out.view(o, -1))
    else:  # Σ_b gy_b · cols_bᵀ as one product over (batch × positions)
        torch.mm(gy.transpose(0, 1).reshape(o, -1), cols.transpose(1, 2).reshape(-1, cols.shape[1]),
                 out=out.view(o, -1))
    return out


# Output positions up to which a conv's GEMMs run with the positions as the rows of the product (see
# `_GemmConv`); measured per VGG-16 layer in float64 on one core: at 8×8 and below the transposed forms are
# 2–4× faster (the weight matrix is read as the wide operand), at 16×16 and above the plain ones.
SMALL_P = 64


def _gemm_forward(layer: nn.Conv2d, cols: dict) -> Callable[[Tensor], Tensor]:
    """The forward of a covered conv in the scoring copy: `_GemmConv` on a batch of one (its unfolded input
    goes to `cols[layer]`), else the layer's own."""
    plain = layer.forward

    def forward(x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[0] != 1:
            return plain(x)
        return _GemmConv.apply(x, layer.weight, layer.bias, layer, cols)

    return forward


class _GemmConv(torch.autograd.Function):
    """A zero-padded, ungrouped Conv2d on a batch of one as im2col + one GEMM each way, with the operand
    order chosen by the number of output positions P (`SMALL_P`). torch's float64 CPU convolution
    (slow_conv2d) always multiplies W (O × C·k·k) by the columns and Wᵀ by the output gradient; for VGG-16's
    4×4 and 2×2 layers (P = 16, 4) that reads the weight matrix as the narrow operand, 2–4× slower than the
    transposed product. Same sums in another order: the scores agree to rounding (~1e-16 relative), and the
    masks are the same as plain autograd's (tests; VGG-16 in benchmarks/prune_time.py).
    Backward gives the input's and bias's gradients, never the weight's (it comes from `_weight_grad` on the
    kept columns; a conv whose weight autograd must differentiate, one called twice, runs torch's own)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, layer: nn.Conv2d, cols_of: dict) -> Tensor:
        k, d, p, s = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        h, w = x.shape[2:]
        ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        wo = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        cols = F.unfold(x, k, d, p, s)[0]  # (C·k·k, P)
        wm = weight.reshape(weight.shape[0], -1)
        if ho * wo <= SMALL_P:
            y = torch.mm(cols.T, wm.T).T  # (P, O) made, read as (O, P)
        else:
            y = torch.mm(wm, cols)
        y = y.reshape(1, weight.shape[0], ho, wo).contiguous()
        if bias is not None:
            y += bias.view(1, -1, 1, 1)
        cols_of[layer] = cols.unsqueeze(0)
        ctx.save_for_backward(weight.detach())
        ctx.layer, ctx.size = layer, (h, w)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        (weight,) = ctx.saved_tensors
        layer = ctx.layer
        g = gy.reshape(gy.shape[1], -1)  # (O, P)
        gx = gb = None
        if ctx.needs_input_grad[0]:
            wm = weight.reshape(weight.shape[0], -1)
            gcols = torch.mm(g.T, wm).T if g.shape[1] <= SMALL_P else torch.mm(wm.T, g)  # (C·k·k, P)
            gx = F.fold(gcols.unsqueeze(0), ctx.size, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        if ctx.needs_input_grad[2]:
            gb = g.sum(1)
        return gx, None, gb, None, None


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
