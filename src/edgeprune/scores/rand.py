"""Random: uniform scores from a seeded generator; the baseline every criterion must beat.

Named `rand.py` so the module does not shadow the standard library's `random`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import device_of, effective_weight, register


@register("random")
def random(model: nn.Module, names: list[str], batches, input_shape, seed: int = 0) -> dict[str, Tensor]:
    # Drawn on the CPU: the same seed gives the same scores on every device.
    gen = torch.Generator().manual_seed(seed)
    device = device_of(model)
    return {n: torch.rand(effective_weight(model, n).shape, generator=gen).to(device) for n in names}
