"""MNIST and Fashion-MNIST, read from the official idx files (plain or gzipped)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.data.base import ImageTensorDataset, Options, Splits, locate
from edgeprune.errors import DataNotFoundError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_UBYTE = 0x08
NUM_CLASSES = 10


@dataclass(frozen=True)
class IdxSet:
    name: str  # registry name, also the folder name under root, cache and system dirs
    title: str
    torchvision_class: str  # also torchvision's folder: root/<class>/raw
    mean: float
    std: float
    augment_train: bool  # crop+flip suits clothes; a mirrored digit is another digit
    apt_package: str | None = None


FASHION_MNIST = IdxSet(
    name="fashion-mnist",
    title="Fashion-MNIST",
    torchvision_class="FashionMNIST",
    mean=0.2860,
    std=0.3530,
    augment_train=True,
    apt_package="dataset-fashion-mnist",
)
MNIST = IdxSet(name="mnist", title="MNIST", torchvision_class="MNIST", mean=0.1307, std=0.3081, augment_train=False)


def fashion_mnist(options: Options) -> Splits:
    return load(FASHION_MNIST, options)


def mnist(options: Options) -> Splits:
    return load(MNIST, options)


def load(spec: IdxSet, options: Options) -> Splits:
    """Both splits of an idx data set, found (or downloaded) and checked."""
    folder = locate(
        spec.name,
        spec.title,
        options,
        files=FILES,
        subdirs=("raw", f"{spec.torchvision_class}/raw"),
        torchvision_class=spec.torchvision_class,
        root_hint="with the four files in DIR",
        suffixes=("", ".gz"),
        apt_package=spec.apt_package,
    )
    # Plain first: torchvision leaves both, and the plain file reads faster.
    paths = [folder / f if (folder / f).is_file() else folder / f"{f}.gz" for f in FILES]
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataNotFoundError(
                f"{spec.title} {split} files in {folder} disagree: images {images.shape}, labels {labels.shape}. "
                "Replace them with the official files."
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DataNotFoundError(
                f"{spec.title} {split} labels in {folder} go up to {labels.max()}, expected 0..{NUM_CLASSES - 1}. "
                "Replace them with the official files."
            )
    pad = 2 if options.augment and spec.augment_train else 0

    def dataset(images: np.ndarray, labels: np.ndarray, pad: int) -> ImageTensorDataset:
        x = torch.from_numpy(images).unsqueeze(1)
        return ImageTensorDataset(x, torch.from_numpy(labels), [spec.mean], [spec.std], pad=pad, flip=pad > 0)

    return Splits(
        train=dataset(train_x, train_y, pad),
        test=dataset(test_x, test_y, 0),
        num_classes=NUM_CLASSES,
        input_shape=(1, *train_x.shape[1:]),
        root=str(folder),
    )


def read_idx(path: Path) -> np.ndarray:
    """An idx file (magic 0x0000, type 0x08 = ubyte, ndim, big-endian uint32 dims, then the data)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataNotFoundError(f"cannot read {path}: {e}. Delete it and fetch the data set again.") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] == 0:
        raise DataNotFoundError(
            f"{path} is not an idx file of unsigned bytes (header {data[:4].hex() or 'missing'}). "
            "Delete it and fetch the data set again."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataNotFoundError(f"{path} is truncated inside its header. Delete it and fetch the data set again.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataNotFoundError(
            f"{path} holds {len(data)} bytes but its header {dims} says {expected}: it is truncated or corrupt. "
            "Delete it and fetch the data set again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()
