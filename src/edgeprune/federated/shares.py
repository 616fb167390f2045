"""Each device's share of the training set: what the Flower client (flower.py) and an emulated device's process
(devices.py) both train on, in a module of its own so that neither imports the other for it.

How the set is shared is part of the job's data spec, beside data.loaders' own keys:
- `partition: iid` (the default): device d gets every `devices`-th sample starting at d, so every device sees
  every class in the set's proportions;
- `partition: dirichlet` with `alpha` (default 0.5): non-IID, as FedAdapt's and most FL papers' label-skew
  variant: for every class, the fractions of its samples that go to each device are drawn from Dirichlet(alpha)
  (seeded by the data spec's `seed`), so a small alpha gives each device a few dominant classes and an unequal
  number of samples. A draw that leaves a device with fewer than one batch is redrawn (up to 100 draws).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError

PARTITIONS = ("iid", "dirichlet")
SHARE_KEYS = ("partition", "alpha")  # how the set is shared among devices, not data.loaders' options
DRAWS = 100


def loader_spec(data: dict) -> dict:
    """The data spec without its sharing keys: what data.loaders takes."""
    return {k: v for k, v in data.items() if k not in SHARE_KEYS}


@functools.lru_cache(maxsize=4)
def train_set(data: str) -> torch.utils.data.Dataset:
    """The whole training set of a data spec (JSON, so it can be cached), unaugmented."""
    from ..data import loaders

    return loaders(**loader_spec(json.loads(data)), augment=False).train.dataset


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every sample's label, read from the tensors where the set holds them (no image is decoded)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    held = getattr(dataset, "labels", getattr(dataset, "targets", None))  # ours; torchvision's (ImageFolder)
    if held is None and isinstance(dataset, torch.utils.data.TensorDataset):
        held = dataset.tensors[-1]
    if held is None:
        held = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(torch.as_tensor(held), dtype=np.int64)


def check(data: dict) -> None:
    """The sharing keys of a data spec, checked: ConfigError naming a bad value and what to use."""
    partition = data.get("partition", "iid")
    if partition not in PARTITIONS:
        raise ConfigError(f"data.partition {partition!r} is not one of {', '.join(PARTITIONS)}: use iid, or "
                          "dirichlet with data.alpha (e.g. 0.5) for non-IID shares")
    if "alpha" in data:
        alpha = data["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < float("inf"):
            raise ConfigError(f"data.alpha {alpha!r} must be a positive number (e.g. 0.5; smaller is more skewed)")
        if partition != "dirichlet":
            raise ConfigError(f"data.alpha {alpha!r} is given but data.partition is {partition!r}: add "
                              "partition: dirichlet, or drop alpha")


@functools.lru_cache(maxsize=8)
def shares(data: str, devices: int) -> tuple[np.ndarray, ...]:
    """Each device's sample indices into `train_set(data)` (sorted), by the spec's partition."""
    spec = json.loads(data)
    check(spec)
    n = len(train_set(data))
    if spec.get("partition", "iid") == "iid":
        return tuple(np.arange(d, n, devices) for d in range(devices))
    labels = labels_of(train_set(data))
    alpha, least = float(spec.get("alpha", 0.5)), int(spec.get("batch_size", 100))
    rng = np.random.default_rng(spec.get("seed", 0))
    for _ in range(DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(devices)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * devices))[:-1] * len(idx)).astype(int)
            for d, chunk in enumerate(np.split(idx, cuts)):
                parts[d].append(chunk)
        out = tuple(np.sort(np.concatenate(p)) for p in parts)
        if min(len(p) for p in out) >= least:
            return out
    raise ConfigError(f"data.alpha {alpha:g} left a device with fewer than one batch ({least} samples) in "
                      f"{DRAWS} draws over {n} samples and {devices} devices: raise alpha, the subset or lower "
                      "batch_size")


def class_counts(data: dict, devices: int) -> list[list[int]]:
    """Per device, how many samples of each class its share holds (for a report of how skewed the shares are)."""
    key = json.dumps(data, sort_keys=True)
    labels = labels_of(train_set(key))
    classes = int(labels.max()) + 1
    return [np.bincount(labels[s], minlength=classes).tolist() for s in shares(key, devices)]


def device_batches(data: dict, device: int, devices: int, round_: int) -> DataLoader:
    """Device `device`'s share of the training set (see the module docstring), shuffled by (seed, round)."""
    key = json.dumps(data, sort_keys=True)
    share = Subset(train_set(key), shares(key, devices)[device].tolist())
    gen = torch.Generator().manual_seed(data.get("seed", 0) * 1_000_003 + round_ * 1009 + device)
    return DataLoader(share, batch_size=data.get("batch_size", 100), shuffle=True, generator=gen)
