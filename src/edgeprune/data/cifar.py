"""CIFAR-10 and CIFAR-100, read from the official python pickle batches; CIFAR-10 also from its JPEG q75 copy
(`cifar_jpeg`) where the official files are absent."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.data import cifar_jpeg
from edgeprune.data.base import ImageTensorDataset, Options, Splits, locate
from edgeprune.errors import DataNotFoundError


@dataclass(frozen=True)
class CifarSet:
    name: str
    title: str
    folder: str  # the archive's folder, which torchvision also extracts into its root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str


CIFAR10 = CifarSet(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    torchvision_class="CIFAR10",
)
CIFAR100 = CifarSet(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    torchvision_class="CIFAR100",
)


def cifar10(options: Options) -> Splits:
    return load(CIFAR10, options)


def cifar100(options: Options) -> Splits:
    return load(CIFAR100, options)


def load(spec: CifarSet, options: Options) -> Splits:
    """Both splits, found (or downloaded) and checked; augmentation is crop 32 after padding 4, and flip.

    The official files come first. For CIFAR-10, where they are absent (and not downloaded), the JPEG q75 copy
    is read instead, from the same places (`cifar_jpeg.candidates`), and the splits say so (`copy`)."""
    try:
        folder = locate(
            spec.name,
            spec.title,
            options,
            files=spec.train_files + spec.test_files,
            subdirs=(spec.folder,),
            torchvision_class=spec.torchvision_class,
            root_hint=f"with {spec.folder}/ from the official python archive in DIR",
        )
    except DataNotFoundError as missing:
        copy = cifar_jpeg.find(options.root) if spec is CIFAR10 else None
        if copy is None:
            if spec is not CIFAR10:
                raise
            raise DataNotFoundError(
                f"{missing}\n  - or put the JPEG q75 copy ({cifar_jpeg.NAME}/ or {cifar_jpeg.ARCHIVE}) in one of "
                "the folders above, or in the --data-root you pass (`make data` does this from ../shared/datasets)"
            ) from None
        arrays, digest = cifar_jpeg.load(copy)
        return _splits(spec, options, arrays, str(copy), copy=cifar_jpeg.COPY_LABEL, sha256=digest)
    train_x, train_y = _read_batches(spec, [folder / f for f in spec.train_files])
    test_x, test_y = _read_batches(spec, [folder / f for f in spec.test_files])
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return _splits(spec, options, arrays, str(folder))


def _splits(spec: CifarSet, options: Options, arrays: dict, root: str, copy: str | None = None,
            sha256: str | None = None) -> Splits:
    t = {k: torch.as_tensor(v) for k, v in arrays.items()}
    pad = 4 if options.augment else 0
    return Splits(
        train=ImageTensorDataset(t["train_x"], t["train_y"], spec.mean, spec.std, pad=pad, flip=options.augment),
        test=ImageTensorDataset(t["test_x"], t["test_y"], spec.mean, spec.std),
        num_classes=spec.num_classes,
        input_shape=(3, 32, 32),
        root=root,
        copy=copy,
        sha256=sha256,
    )


def _read_batches(spec: CifarSet, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in paths:
        x, y = _read_batch(spec, path)
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _read_batch(spec: CifarSet, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: {b"data": N x 3072 uint8 (R, G, B planes of 32x32), b"<label_key>": N ints}."""
    fix = f"Delete it and fetch {spec.title} again."
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as e:
        raise DataNotFoundError(f"cannot read {path}: {e}. {fix}") from e
    keys = (b"data", spec.label_key.encode())
    if not isinstance(batch, dict) or not all(k in batch for k in keys):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataNotFoundError(f"{path} is not a CIFAR batch: expected keys {keys}, got {got}. {fix}")
    data, labels = np.asarray(batch[keys[0]]), np.asarray(batch[keys[1]])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DataNotFoundError(
            f"{path} holds data {data.dtype} {data.shape} and labels {labels.shape}; "
            f"expected uint8 N x 3072 and N. {fix}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataNotFoundError(f"{path} has labels outside 0..{spec.num_classes - 1}. {fix}")
    return data.reshape(-1, 3, 32, 32), labels
