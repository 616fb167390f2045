"""Random tensors with random labels: for smoke tests and timing, never for accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from edgeprune.data.base import Options, Splits, positive_int
from edgeprune.errors import ConfigError


def synthetic(options: Options, shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, size: int = 512) -> Splits:
    """`size` training and `size // 4` (at least 1) test samples, the same for the same seed."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ConfigError(f"synthetic shape must be (C, H, W), got {shape!r}")
    for d in shape:
        positive_int(d, f"each of synthetic shape {shape!r}")
    positive_int(num_classes, "synthetic num_classes")
    positive_int(size, "synthetic size")
    generator = torch.Generator().manual_seed(options.seed)

    def split(n: int) -> TensorDataset:
        images = torch.randn((n, *shape), generator=generator)
        return TensorDataset(images, torch.randint(0, num_classes, (n,), generator=generator))

    return Splits(
        train=split(size),
        test=split(max(1, size // 4)),
        num_classes=num_classes,
        input_shape=shape,
        root=None,
        synthetic=True,
    )
