"""The reference surgery checks a pruned model against: the unpruned model with the removed channels'
consumers zeroed (`zero_inputs`, `zero_attention`), and the statistics that depend on a channel count
(LayerNorm/GroupNorm mean and variance, the attention scale) frozen at that reference's values
(`frozen_statistics`), so both runs must agree on everything else. See surgery.py's docstring."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class Unchecked(Exception):
    """A layer whose reference this module cannot build; surgery treats the group as failing its check."""


@contextmanager
def frozen_statistics(statistics: list, record: bool) -> Iterator[None]:
    """LayerNorm, GroupNorm and scaled-dot-product attention computing with recorded statistics.

    With `record`, each call appends its input's shape and what depends on its channel count (per-sample
    mean and 1/std, the attention scale) and computes as usual; otherwise each call uses, in call order,
    what the recording pass appended. A model with channels removed then computes exactly what the
    original with their consumers zeroed did. A norm whose input kept its shape lost no channels: its own
    statistics are the recorded ones, so it runs torch's fused kernel. The functions are patched in
    torch.nn.functional, where every nn layer looks them up per call.
    """
    originals = {name: getattr(F, name) for name in ("layer_norm", "group_norm", "scaled_dot_product_attention")}
    calls = iter(statistics)

    def frozen(x: torch.Tensor, dims, eps: float) -> tuple | None:
        """The recorded (mean, 1/std) where `x` lost channels since; None where torch's own op is exact."""
        if record:
            var, mean = torch.var_mean(x, dims, unbiased=False, keepdim=True)
            statistics.append((x.shape, mean, (var + eps).rsqrt()))
            return None
        shape, mean, rstd = next(calls)
        return None if x.shape == shape else (mean, rstd)

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if (stats := frozen(x, tuple(range(-len(normalized_shape), 0)), eps)) is None:
            return originals["layer_norm"](x, normalized_shape, weight, bias, eps)
        y = (x - stats[0]) * stats[1]  # weight and bias have normalized_shape: they broadcast over the last dims
        y = y if weight is None else y * weight
        return y if bias is None else y + bias

    def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
        g = x.reshape(x.shape[0], num_groups, -1)
        if (stats := frozen(g, -1, eps)) is None:
            return originals["group_norm"](x, num_groups, weight, bias, eps)
        y = ((g - stats[0]) * stats[1]).reshape(x.shape)
        trailing = (1,) * (x.dim() - 2)  # weight and bias are per channel, on dim 1
        y = y if weight is None else y * weight.view(-1, *trailing)
        return y if bias is None else y + bias.view(-1, *trailing)

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if record:
            statistics.append(scale if scale is not None else q.size(-1) ** -0.5)
        else:
            scale = next(calls)
        return originals["scaled_dot_product_attention"](q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                                         **kwargs)

    patched = {"layer_norm": layer_norm, "group_norm": group_norm, "scaled_dot_product_attention": attention}
    for name, fn in patched.items():
        setattr(F, name, fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)


@contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """nn.MultiheadAttention's fused inference path skips scaled_dot_product_attention: off for the check."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def zero_inputs(layer: nn.Module, idxs: Sequence[int]) -> Callable[[], None]:
    """Zero the weights with which a conv/linear layer reads input channels `idxs`; return the undo step."""
    w = layer.weight
    with torch.no_grad():
        idxs = torch.as_tensor(list(idxs), dtype=torch.long, device=w.device)
        if isinstance(layer, nn.Linear) or layer.transposed or layer.groups == 1:
            dim = 0 if getattr(layer, "transposed", False) else 1  # the input-channel dimension of the weight
            saved = w.index_select(dim, idxs)  # only the slice: copying whole weights costs as much as a forward
            w.index_fill_(dim, idxs, 0.0)
            return lambda: w.data.index_copy_(dim, idxs, saved)
        saved = w.detach().clone()
        per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        for i in idxs.tolist():  # input channel i of a grouped conv is position i % per_in of group i // per_in
            g, j = divmod(i, per_in)
            w[g * per_out:(g + 1) * per_out, j] = 0.0
        return lambda: w.data.copy_(saved)


def zero_attention(mha: nn.MultiheadAttention, idxs: Sequence[int]) -> Callable[[], None]:
    """Zero what nn.MultiheadAttention reads and computes on embedding channels `idxs`; return the undo step.

    torch-pruning removes those positions from the inputs and from the query, key and value projections
    alike; zeroed, they add nothing to the attention scores or the values.
    """
    if mha.in_proj_weight is None:
        raise Unchecked("attention with separate query/key/value sizes is not checked")
    w, b, e = mha.in_proj_weight, mha.in_proj_bias, mha.embed_dim
    rows = torch.as_tensor([i + k * e for k in range(3) for i in idxs], dtype=torch.long, device=w.device)
    cols = torch.as_tensor(list(idxs), dtype=torch.long, device=w.device)
    saved_w, saved_b = w.detach().clone(), None if b is None else b.detach().clone()
    with torch.no_grad():
        w.index_fill_(0, rows, 0.0).index_fill_(1, cols, 0.0)
        if b is not None:
            b.index_fill_(0, rows, 0.0)

    def undo() -> None:
        w.data.copy_(saved_w)
        if b is not None:
            b.data.copy_(saved_b)

    return undo
