"""Any image classification set laid out as class sub-folders (torchvision's ImageFolder)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2

from edgeprune.data.base import Options, Splits, positive_int
from edgeprune.errors import ConfigError, DataNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_FRACTION = 0.1  # of a single folder, held out when there is no train/ + test/ (or val/) pair


def imagefolder(options: Options, image_size: int = 224) -> Splits:
    """`root/train` + `root/test` (or `root/val`), or one folder of classes split 90/10 by the seed."""
    if options.root is None:
        raise ConfigError(
            "the imagefolder data set needs a root: pass --data-root DIR (root=DIR), where DIR holds "
            "train/ and test/ (or val/) folders of class sub-folders, or class sub-folders only"
        )
    positive_int(image_size, "image_size")
    root = options.root
    train_tf, test_tf = _transforms(image_size, options.augment)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = _folder(root / "train", train_tf), _folder(test_dir, test_tf)
        if train.classes != test.classes:
            raise ConfigError(
                f"{root / 'train'} and {test_dir} have different class folders "
                f"({len(train.classes)} vs {len(test.classes)}): give both the same class sub-folders"
            )
        classes = train.classes
    else:
        # Two views of the same files, each with its own transforms, split by one seeded permutation.
        full_train, full_test = _folder(root, train_tf), _folder(root, test_tf)
        n = len(full_train)
        n_test = max(1, round(TEST_FRACTION * n))
        if n_test >= n:
            raise DataNotFoundError(f"{root} holds {n} image(s): too few to split into train and test")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed)).tolist()
        train, test = Subset(full_train, order[n_test:]), Subset(full_test, order[:n_test])
        classes = full_train.classes
    return Splits(
        train=train,
        test=test,
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        root=str(root),
    )


def _transforms(image_size: int, augment: bool) -> tuple[v2.Transform, v2.Transform]:
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    test = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), *to_input])
    if not augment:
        return test, test
    train = v2.Compose([v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), *to_input])
    return train, test


def _folder(path: Path, transform: v2.Transform) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as e:  # no class folders, or no images in them
        raise DataNotFoundError(
            f"no images found in {path}: {e}. An image folder needs one sub-folder of images per class."
        ) from e
