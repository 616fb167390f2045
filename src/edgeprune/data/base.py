"""What every data set shares: the request, the result, where files may lie, and in-memory images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from edgeprune.errors import ConfigError, DataNotFoundError

# Searched after the root and the cache, as SYSTEM_DIRS/<name> (Debian's dataset-* packages install here).
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets",)


@dataclass(frozen=True)
class Options:
    """What `loaders` asks of every builder; data set specific options come as keyword arguments."""

    root: Path | None
    download: bool
    augment: bool
    seed: int


@dataclass(frozen=True)
class Splits:
    """What a builder returns: the two full splits and what a model needs to know about them."""

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    root: str | None
    synthetic: bool = False
    copy: str | None = None  # a copy that is not the official files (e.g. "JPEG q75 copy"): said wherever it is used
    sha256: str | None = None  # of what the images were decoded from, where the builder checks it


def positive_int(value: object, name: str) -> int:
    """`value` if it is an integer > 0, else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def cache_dir() -> Path:
    """Where downloads go: $EDGEPRUNE_DATA, else ~/.cache/edgeprune."""
    return Path(os.environ.get("EDGEPRUNE_DATA") or Path.home() / ".cache" / "edgeprune").expanduser()


def search_dirs(name: str, root: Path | None, subdirs: Sequence[str]) -> list[Path]:
    """Folders that may hold `name`'s files, most specific first: the cache, then the system folders; a root
    the user names is the only place looked (a run must never record one folder and read another)."""
    if root is not None:
        bases = [root, root / name]
    else:
        bases = [cache_dir() / name] + [Path(d) / name for d in SYSTEM_DIRS]
    dirs = [base / sub for base in bases for sub in ("", *subdirs)]
    return list(dict.fromkeys(dirs))


def locate(
    name: str,
    title: str,
    options: Options,
    files: Sequence[str],
    subdirs: Sequence[str],
    torchvision_class: str,
    root_hint: str,
    suffixes: Sequence[str] = ("",),
    apt_package: str | None = None,
) -> Path:
    """The first folder of `search_dirs` holding every file (as file+suffix for some suffix).

    If there is none and `options.download`, torchvision's downloader fetches the set into the root, or
    the cache without one (its layout is among the folders searched); otherwise the error lists every folder
    and every fix.
    """
    looked = search_dirs(name, options.root, subdirs)
    dest = options.root if options.root is not None else cache_dir() / name

    def first_complete() -> Path | None:
        complete = (d for d in looked if all(any((d / (f + s)).is_file() for s in suffixes) for f in files))
        return next(complete, None)

    found = first_complete()
    if found is None and options.download:
        _download(torchvision_class, dest, title, looked)
        found = first_complete()
    if found is not None:
        return found
    ways = [f"pass --download (download=True) to fetch it into {dest}", f"pass --data-root DIR (root=DIR) {root_hint}"]
    if apt_package:
        ways.insert(0, f"apt-get install {apt_package} (Debian/Ubuntu; no network needed at run time)")
    if options.root is not None:
        ways.insert(0, "leave out --data-root to search the cache and system folders")
    names = [f + (f"[{'|'.join(s for s in suffixes if s)}]" if len(suffixes) > 1 else "") for f in files]
    places = "\n".join(f"  {p}" for p in looked)
    fixes = "\n".join(f"  - {w}" for w in ways)
    raise DataNotFoundError(
        f"{title} not found. Looked for {', '.join(names)} in:\n{places}\nGet it in one of these ways:\n{fixes}"
    )


def _download(class_name: str, dest: Path, title: str, looked: Sequence[Path]) -> None:
    from torchvision import datasets

    dest.mkdir(parents=True, exist_ok=True)
    try:
        getattr(datasets, class_name)(root=str(dest), train=True, download=True)
    except (OSError, RuntimeError) as e:
        places = "\n".join(f"  {p}" for p in looked)
        raise DataNotFoundError(
            f"{title} not found in:\n{places}\nand downloading it into {dest} failed: {e}. "
            "Check the network, or put the files in one of the folders above and pass --data-root."
        ) from e


class ImageTensorDataset(Dataset):
    """A whole split held as uint8 images (N, C, H, W) and int64 labels, transformed a batch at a time.

    Augmentation is random crop after zero padding and horizontal flip, drawn from torch's global
    generator (DataLoader seeds it per worker from its own generator), then normalisation.
    Whole-batch tensor ops keep a 60k-image epoch to well under a second of data work.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 (N, C, H, W) images matching labels, got {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.transform(self.images[index])
        # Samples, not a batch, so that any DataLoader's default collate stacks them.
        return list(zip(images.unbind(0), self.labels[index].unbind(0), strict=True))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> augmented, normalised float batch."""
        if self.pad or self.flip:
            images = crop_flip(images, self.pad, self.flip)
        return (images.float().div_(255) - self.mean).div_(self.std)


def crop_flip(images: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Per-image random crop of the original size from the zero-padded image, then a random mirror.

    Both are one gather: each image's rows and columns are picked by offset, columns reversed when mirrored.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = torch.randint(0, 2 * pad + 1, (b, 1)) + torch.arange(h)
    cols = torch.randint(0, 2 * pad + 1, (b, 1)) + torch.arange(w)
    if flip:
        cols = torch.where(torch.rand(b, 1) < 0.5, cols.flip(1), cols)
    batch = torch.arange(b)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
