"""The data entry point: `loaders(name, ...)` -> DataBundle, and `list_datasets()`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from edgeprune.data import cifar, folder, idx, synthetic
from edgeprune.data.base import Options, Splits, positive_int
from edgeprune.errors import ConfigError, DataNotFoundError, unknown_name

_BUILDERS: dict[str, Callable[..., Splits]] = {
    "fashion-mnist": idx.fashion_mnist,
    "mnist": idx.mnist,
    "cifar10": cifar.cifar10,
    "cifar100": cifar.cifar100,
    "imagefolder": folder.imagefolder,
    "synthetic": synthetic.synthetic,
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


@dataclass
class DataBundle:
    """Train and test loaders of one data set, and what a model needs to know about its inputs."""

    name: str
    train: DataLoader
    test: DataLoader
    num_classes: int
    in_channels: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    synthetic: bool  # True: accuracy measured on it means nothing and must never be reported as real
    root: str | None  # the folder the files were read from
    # held-out training samples, unaugmented (loaders' val_size): what stopping rules and selection read,
    # never the test split
    val: DataLoader | None = None
    copy: str | None = None  # "JPEG q75 copy" where the files are not the official ones
    sha256: str | None = None  # of what the images were decoded from, where known

    @property
    def label(self) -> str:
        """The data set as tables name it: "cifar10 (JPEG q75 copy)" where a copy was read."""
        return f"{self.name} ({self.copy})" if self.copy else self.name


def list_datasets() -> list[str]:
    """Names `loaders` accepts (aliases aside)."""
    return sorted(_BUILDERS)


def loaders(
    name: str,
    root: str | Path | None = None,
    batch_size: int = 128,
    subset: int | None = None,
    test_subset: int | None = None,
    val_size: int | None = None,
    download: bool = False,
    augment: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    **kwargs: Any,
) -> DataBundle:
    """Loaders for data set `name`.

    `subset`/`test_subset` keep the first N samples of a permutation fixed by `seed` (so the same samples
    every run, about balanced across classes); the training loader shuffles with a generator seeded by
    `seed`. `val_size` carves a validation split, unaugmented, from the last samples of that same training
    permutation: the training samples stay the first `subset` ones, so a run trained with `subset` and no
    validation split never saw the validation samples of a later run with the same `subset`. Data-set specific
    options come as keyword arguments (imagefolder: image_size; synthetic: shape, num_classes, size).
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _BUILDERS:
        raise unknown_name("data set", name, list_datasets())
    builder = _BUILDERS[key]
    positive_int(batch_size, "batch_size")
    for value, label in ((subset, "subset"), (test_subset, "test_subset"), (val_size, "val_size")):
        if value is not None:
            positive_int(value, label)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    options = Options(root=_existing(root), download=download, augment=augment, seed=seed)
    _check_options(key, builder, options, kwargs)

    splits = builder(options, **kwargs)
    val = None
    if val_size is None:
        train = _first(splits.train, subset, seed)
    else:
        train, val = _carve(splits.train, builder(replace(options, augment=False), **kwargs).train, subset,
                            val_size, seed)
    test = _first(splits.test, test_subset, seed)
    shuffle = torch.Generator().manual_seed(seed)
    return DataBundle(
        name=key,
        train=DataLoader(train, batch_size, shuffle=True, generator=shuffle, num_workers=num_workers),
        test=DataLoader(test, batch_size, shuffle=False, num_workers=num_workers),
        num_classes=splits.num_classes,
        in_channels=splits.input_shape[0],
        input_shape=splits.input_shape,
        synthetic=splits.synthetic,
        root=splits.root,
        val=None if val is None else DataLoader(val, batch_size, shuffle=False, num_workers=num_workers),
        copy=splits.copy,
        sha256=splits.sha256,
    )


def _existing(root: str | Path | None) -> Path | None:
    if root is None:
        return None
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataNotFoundError(
            f"data root {str(path)!r} {what}: pass a folder that holds the data set with --data-root, "
            "or leave it out to search the cache and system folders"
        )
    return path


def _check_options(name: str, builder: Callable[..., Splits], options: Options, kwargs: dict[str, Any]) -> None:
    try:
        inspect.signature(builder).bind(options, **kwargs)
    except TypeError:
        takes = [p for p in inspect.signature(builder).parameters if p != "options"]
        raise ConfigError(
            f"data set {name!r} does not take option(s) {', '.join(sorted(set(kwargs) - set(takes)))}; "
            f"it takes: {', '.join(takes) or 'none'}"
        ) from None


def _carve(train: Dataset, plain: Dataset, subset: int | None, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """(the training samples, the validation samples) of the seeded permutation `_first` takes: training from
    its front, validation (from `plain`, the same samples unaugmented) from its back, never overlapping."""
    n = len(train)
    room = n - val_size if subset is None else subset
    if room < 1 or room + val_size > n:
        asked = f"subset {subset} and val_size {val_size} together" if subset is not None else f"val_size {val_size}"
        raise ConfigError(f"{asked} ask more than the {n} training samples (validation is carved from them); "
                          "choose a smaller --subset or --val-size")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train, order[:room]), Subset(plain, order[n - val_size:])


def _first(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """The first `n` samples of a seeded permutation of `dataset` (all of it when n is None)."""
    if n is None:
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:n].tolist())
