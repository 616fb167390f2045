"""Each device's share of the training set: what the Flower client (flower.py) and an emulated device's process
(devices.py) both train on, in a module of its own so that neither imports the other for it."""

from __future__ import annotations

import functools
import json

import torch
from torch.utils.data import DataLoader, Subset


@functools.lru_cache(maxsize=4)
def train_set(data: str) -> torch.utils.data.Dataset:
    """The whole training set of a data spec (JSON, so it can be cached), unaugmented."""
    from ..data import loaders

    return loaders(**json.loads(data), augment=False).train.dataset


def device_batches(data: dict, device: int, devices: int, round_: int) -> DataLoader:
    """Device `device`'s share of the training set (every `devices`-th sample: IID), shuffled by (seed, round)."""
    dataset = train_set(json.dumps(data, sort_keys=True))
    share = Subset(dataset, range(device, len(dataset), devices))
    gen = torch.Generator().manual_seed(data.get("seed", 0) * 1_000_003 + round_ * 1009 + device)
    return DataLoader(share, batch_size=data.get("batch_size", 100), shuffle=True, generator=gen)
