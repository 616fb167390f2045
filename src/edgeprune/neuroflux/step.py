"""One batch of block-wise local learning: what the trainer runs and the memory accountant measures. In a module
of its own, so that memory.py (which measures it) and train.py (which runs it) both import it, and neither the
other."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def local_step(layers: Sequence[nn.Module], heads: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One batch through a block: each layer learns from its own head's loss on its input, detached from the
    layers before it (no end-to-end backward pass); its graph is freed before the next layer runs. Returns the
    block's output (detached), and each layer's loss and correct count (as tensors: no synchronisation here)."""
    losses, correct = [], []
    for layer, head, opt in zip(layers, heads, optimizers, strict=True):
        out = layer(x)
        logits = head(out)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        x = out.detach()
        losses.append(loss.detach())
        correct.append((logits.detach().argmax(1) == y).sum())
    return x, losses, correct
