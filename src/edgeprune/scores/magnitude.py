"""Magnitude: |θ|. Pruned weights (θ = 0) score 0."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import effective_weight, register


@register("magnitude")
def magnitude(model: nn.Module, names: list[str], batches, input_shape) -> dict[str, Tensor]:
    return {n: effective_weight(model, n).abs() for n in names}
