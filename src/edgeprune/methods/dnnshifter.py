"""DNNShifter's structural step (Eccles et al., FGCS 2024; papers.md §2): a sparse model (IMP levels, PaI)
loses every channel whose weights are all zero, constants folded so the output stays the same, and
becomes a smaller dense-shaped model that is faster on any runtime. The surviving zeros stay masked.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .. import dead, masks


def shrink(model: nn.Module, input_shape: tuple[int, ...], fold_constants: bool = True,
           round_to: int | None = None) -> tuple[nn.Module, dict]:
    """A physically smaller copy of masked `model` and the report of what went (`model` is untouched)."""
    t0 = time.perf_counter()
    small, report = dead.remove_dead(model, torch.zeros(1, *input_shape), fold_constants, round_to)
    names = list(masks.prunable(small))
    masks.apply(small, {n: m for n, m in report.surgery.masks.items() if not m.all()})  # the rest stays masked
    return small, {"method": "dnnshifter", "shrink_seconds": time.perf_counter() - t0,
                   "max_abs_error": report.max_abs_error, "structure": report.to_dict(),
                   "layers": masks.table(small, names)}
