"""edgeprune.data on small files written in the official formats."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.data import DataBundle, base, list_datasets, loaders
from edgeprune.data.idx import FILES
from edgeprune.errors import ConfigError, DataNotFoundError, UnknownNameError

N_TRAIN, N_TEST = 64, 16
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the real cache or the real Debian files unless it asks for them."""
    monkeypatch.setattr(base, "SYSTEM_DIRS", (str(tmp_path / "system"),))
    monkeypatch.setenv("EDGEPRUNE_DATA", str(tmp_path / "cache"))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx(folder: Path, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        FILES[0]: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        FILES[1]: (np.arange(N_TRAIN) % 10).astype(np.uint8),
        FILES[2]: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        FILES[3]: (np.arange(N_TEST) * 3 % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def cat(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def unnormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


# --- idx: MNIST and Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("name", "mean", "std"), [("fashion-mnist", 0.2860, 0.3530), ("mnist", 0.1307, 0.3081)])
def test_idx_loads_and_normalises(tmp_path, gz, name, mean, std):
    arrays = make_idx(tmp_path / "d", gz=gz)
    bundle = loaders(name, root=tmp_path / "d", batch_size=10, augment=False)
    assert isinstance(bundle, DataBundle)
    assert (bundle.name, bundle.num_classes, bundle.in_channels) == (name, 10, 1)
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.root == str(tmp_path / "d") and not bundle.synthetic
    assert len(bundle.train.dataset) == N_TRAIN and len(bundle.test.dataset) == N_TEST
    x, y = cat(bundle.test)
    assert x.shape == (N_TEST, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == arrays[FILES[3]].tolist()
    expected = torch.from_numpy(arrays[FILES[2]]).float().unsqueeze(1) / 255
    torch.testing.assert_close(unnormalise(x, [mean], [std]), expected)
    x, y = cat(bundle.train)
    assert sorted(y.tolist()) == sorted(arrays[FILES[1]].tolist())
    assert bundle.train.dataset.labels.tolist() == arrays[FILES[1]].tolist()


@pytest.mark.parametrize("layout", ["fashion-mnist", "fashion-mnist/raw", "FashionMNIST/raw"])
def test_idx_found_in_subfolders_of_root(tmp_path, layout):
    make_idx(tmp_path / "root" / layout, gz=True)
    bundle = loaders("fmnist", root=tmp_path / "root")
    assert bundle.name == "fashion-mnist" and bundle.root == str(tmp_path / "root" / layout)


def test_idx_search_order_root_then_cache_then_system(tmp_path):
    make_idx(tmp_path / "system" / "mnist", seed=1)
    assert loaders("mnist").root == str(tmp_path / "system" / "mnist")
    make_idx(tmp_path / "cache" / "mnist" / "raw", seed=2)
    assert loaders("mnist").root == str(tmp_path / "cache" / "mnist" / "raw")
    make_idx(tmp_path / "mine", seed=3)
    assert loaders("mnist", root=tmp_path / "mine").root == str(tmp_path / "mine")


def test_fashion_mnist_train_augmentation_crops_and_flips(tmp_path):
    arrays = make_idx(tmp_path)
    plain = loaders("fashion-mnist", root=tmp_path, augment=False).train.dataset
    augmented = loaders("fashion-mnist", root=tmp_path, augment=True).train.dataset
    torch.manual_seed(0)
    x = unnormalise(torch.stack([augmented[i][0] for i in range(N_TRAIN)]), [0.2860], [0.3530])
    original = torch.from_numpy(arrays[FILES[0]]).float().unsqueeze(1) / 255
    assert x.shape == original.shape and not torch.allclose(x, original)
    torch.testing.assert_close(unnormalise(plain[5][0], [0.2860], [0.3530]), original[5])
    # Test images and MNIST training images are never augmented.
    mnist = loaders("mnist", root=tmp_path, augment=True)
    assert torch.equal(mnist.train.dataset[3][0], loaders("mnist", root=tmp_path, augment=False).train.dataset[3][0])


def test_crop_flip_picks_a_padded_crop_or_its_mirror():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (200, 2, 6, 6), dtype=torch.uint8)
    out = base.crop_flip(images, pad=2, flip=True)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for image, result in zip(padded, out, strict=True):
        crops = [image[:, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(result, c) for c in crops)
        mirrored = any(torch.equal(result, c.flip(-1)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 50 < flips < 150
    assert torch.equal(base.crop_flip(images, pad=0, flip=False), images)


def test_missing_idx_lists_places_and_fixes(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        loaders("fashion-mnist")
    msg = str(info.value)
    for place in [tmp_path / "cache" / "fashion-mnist", tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw"]:
        assert f"  {place}\n" in msg
    assert str(tmp_path / "system" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg and "--data-root" in msg
    assert "train-images-idx3-ubyte" in msg
    with pytest.raises(DataNotFoundError, match="--download") as info:
        loaders("mnist")
    assert "apt-get" not in str(info.value)


def test_a_data_root_is_the_only_place_looked(tmp_path):
    """A run records the root it was given: it must never silently read the cache or system copy instead."""
    make_idx(tmp_path / "cache" / "fashion-mnist")
    assert loaders("fashion-mnist").root == str(tmp_path / "cache" / "fashion-mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        loaders("fashion-mnist", root=tmp_path / "empty")
    msg = str(info.value)
    for place in [tmp_path / "empty", tmp_path / "empty" / "FashionMNIST" / "raw"]:
        assert f"  {place}\n" in msg
    assert str(tmp_path / "cache") not in msg and "leave out --data-root" in msg


def test_download_uses_torchvision_into_the_cache(tmp_path, monkeypatch):
    from torchvision import datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            calls.append(root)
            make_idx(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(datasets, "FashionMNIST", FakeFashionMNIST)
    bundle = loaders("fashion-mnist", download=True)
    assert calls == [str(tmp_path / "cache" / "fashion-mnist")]
    assert bundle.root == str(tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw")
    loaders("fashion-mnist", download=True)
    assert len(calls) == 1  # found this time, not fetched again


def test_failed_download_says_so(monkeypatch):
    from torchvision import datasets

    def offline(**_):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DataNotFoundError, match="downloading it into .* failed: Error downloading"):
        loaders("mnist", download=True)


def test_corrupt_idx_files_give_clear_errors(tmp_path):
    make_idx(tmp_path)
    images = tmp_path / FILES[0]
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataNotFoundError, match="truncated or corrupt") as info:
        loaders("mnist", root=tmp_path)
    assert str(images) in str(info.value)
    images.write_bytes(b"\x00\x00\x0d\x03" + bytes(8))
    with pytest.raises(DataNotFoundError, match="not an idx file of unsigned bytes"):
        loaders("mnist", root=tmp_path)
    images.unlink()
    make_idx(tmp_path / "gz", gz=True)
    labels = tmp_path / "gz" / f"{FILES[1]}.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    with pytest.raises(DataNotFoundError, match="cannot read"):
        loaders("mnist", root=tmp_path / "gz")
    write_idx(labels, np.zeros(N_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="disagree"):
        loaders("mnist", root=tmp_path / "gz")


# --- subsets, shuffling and argument checks ------------------------------------------------------------


def test_subsets_are_seeded_and_stable(tmp_path):
    make_idx(tmp_path)

    def picked(seed: int) -> tuple[list[int], list[int]]:
        b = loaders("mnist", root=tmp_path, subset=20, test_subset=5, seed=seed)
        assert len(b.train.dataset) == 20 and len(b.test.dataset) == 5
        assert len(b.train.dataset.dataset) == N_TRAIN
        return b.train.dataset.indices, b.test.dataset.indices

    assert picked(0) == picked(0)
    assert picked(0) != picked(1)
    assert len(set(picked(0)[0])) == 20
    x, _ = cat(loaders("mnist", root=tmp_path, subset=1000).train)
    assert len(x) == N_TRAIN


def test_shuffle_is_seeded(tmp_path):
    make_idx(tmp_path)

    def order(seed: int) -> list[int]:
        return cat(loaders("mnist", root=tmp_path, batch_size=7, seed=seed).train)[1].tolist()

    first = order(0)
    assert first == order(0) != order(1)
    bundle = loaders("mnist", root=tmp_path, batch_size=7)
    assert [len(y) for _, y in bundle.train] == [7] * 9 + [1]  # drop_last=False
    assert cat(bundle.train)[1].tolist() != cat(bundle.train)[1].tolist()  # a new order each epoch


def test_root_that_does_not_exist(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist") as info:
        loaders("mnist", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        loaders("cifar10", root=tmp_path / "file")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"subset": 0}, "subset must be a positive integer, got 0"),
        ({"test_subset": -3}, "test_subset must be a positive integer, got -3"),
        ({"num_workers": -1}, "num_workers"),
        ({"image_size": 32}, "does not take option.* image_size; it takes: shape, num_classes, size"),
        ({"shape": (3, 32)}, r"shape must be \(C, H, W\)"),
        ({"size": 0}, "synthetic size must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        loaders("synthetic", **kwargs)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="'fashion-mnist'"):
        loaders("fashion-mnst")
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagefolder", "mnist", "synthetic"]


# --- CIFAR ---------------------------------------------------------------------------------------------


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar(root: Path, hundred: bool = False, n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batches as the official archive holds them: dicts with bytes keys; returns (train x, train y, test y)."""
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes, key = (100, b"fine_labels") if hundred else (10, b"labels")
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for name in [*names, "test"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, n).tolist()
        batch = {b"batch_label": name.encode(), key: y, b"data": x, b"filenames": [b"f.png"] * n}
        if hundred:
            batch[b"coarse_labels"] = [c // 5 for c in y]
        write_pickle(folder / (name if hundred or name != "test" else "test_batch"), batch)
        xs.append(x)
        ys.append(y)
    meta = {b"fine_label_names": [b"c"] * 100} if hundred else {b"label_names": [b"c"] * 10, b"num_vis": 3072}
    write_pickle(folder / ("meta" if hundred else "batches.meta"), meta)
    return np.concatenate(xs[:-1]), np.concatenate(ys[:-1]), np.array(ys[-1])


def test_cifar10_loads_batches(tmp_path):
    train_x, train_y, test_y = make_cifar(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        bundle = loaders("cifar10", root=root, batch_size=16, augment=False)
        assert bundle.root == str(tmp_path / "cifar-10-batches-py")
        assert (bundle.num_classes, bundle.in_channels, bundle.input_shape) == (10, 3, (3, 32, 32))
        assert len(bundle.train.dataset) == 100 and len(bundle.test.dataset) == 20
    assert bundle.train.dataset.labels.tolist() == train_y.tolist()
    x, y = cat(bundle.test)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == test_y.tolist()
    # Rows are R, G, B planes of 32 x 32, in that order; means and stds are per channel.
    x = unnormalise(bundle.train.dataset[7][0], (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    torch.testing.assert_close(x, torch.from_numpy(train_x[7]).float().view(3, 32, 32) / 255)
    augmented = loaders("cifar10", root=tmp_path, augment=True, subset=8)
    assert next(iter(augmented.train))[0].shape == (8, 3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path):
    _, train_y, test_y = make_cifar(tmp_path / "c", hundred=True)
    bundle = loaders("cifar-100", root=tmp_path / "c", test_subset=4)
    assert bundle.name == "cifar100" and bundle.num_classes == 100
    assert bundle.train.dataset.labels.tolist() == train_y.tolist()
    _, y = cat(bundle.test)
    assert len(y) == 4 and set(y.tolist()) <= set(test_y.tolist())
    x, _ = next(iter(bundle.test))
    assert abs(float(x.mean())) < 0.5  # normalised: uniform bytes give mean about (0.5 - 0.49) / 0.27


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found") as info:
        loaders("cifar10")
    assert str(tmp_path / "cache" / "cifar10" / "cifar-10-batches-py") in str(info.value)
    assert "--download" in str(info.value)
    make_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(batch, {b"data": np.zeros((4, 100), np.uint8)})
    with pytest.raises(DataNotFoundError, match="data_batch_3 is not a CIFAR batch: expected keys"):
        loaders("cifar10", root=tmp_path)
    write_pickle(batch, {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    with pytest.raises(DataNotFoundError, match=r"data_batch_3 holds data uint8 \(4, 100\)"):
        loaders("cifar10", root=tmp_path)
    write_pickle(batch, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})
    with pytest.raises(DataNotFoundError, match="labels outside 0..9"):
        loaders("cifar10", root=tmp_path)
    batch.write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="cannot read"):
        loaders("cifar10", root=tmp_path)


def make_cifar_jpeg(root: Path, per_class: int = 2, archive: bool = False) -> Path:
    """The JPEG copy's layout, cifar10-jpg/{train,test}/<class>/NNNN.jpg, with a few images per class; as a
    .tar.gz of that folder (as the shared copy is packed) when `archive`."""
    from edgeprune.data.cifar_jpeg import CLASSES

    rng = np.random.default_rng(1)
    top = root / "cifar10-jpg"
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        for c in CLASSES:
            (top / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(top / split / c / f"{i:04d}.jpg", quality=75)
    if not archive:
        return top
    with tarfile.open(root / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(top, arcname="cifar10-jpg")
    shutil.rmtree(top)
    return root / "cifar10-jpg.tar.gz"


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_reads_the_jpeg_copy_and_says_so(tmp_path, archive):
    from edgeprune.data import cifar_jpeg

    source = make_cifar_jpeg(tmp_path / "d", archive=archive)
    bundle = loaders("cifar10", root=tmp_path / "d", augment=False)
    assert bundle.copy == "JPEG q75 copy" and bundle.label == "cifar10 (JPEG q75 copy)"
    assert bundle.root == str(source) and bundle.sha256 == cifar_jpeg.checksum(source)
    assert (bundle.num_classes, bundle.input_shape) == (10, (3, 32, 32))
    train, test = bundle.train.dataset, bundle.test.dataset
    assert len(train) == 20 and len(test) == 10
    assert train.labels.tolist() == [c for c in range(10) for _ in range(2)]  # class folders in label order
    if not archive:  # every image is what PIL decodes from its file
        expected = np.asarray(Image.open(source / "train" / "dog" / "0001.jpg").convert("RGB")).transpose(2, 0, 1)
        assert torch.equal(train.images[5 * 2 + 1], torch.from_numpy(expected.copy()))
    # The same images whether read as a folder or an archive, so the archive's decoding equals the folder's.
    meta = json.loads(next((tmp_path / "cache" / "cifar10").glob("decoded-*/meta.json")).read_text())
    assert meta["sha256"] == bundle.sha256 and meta["images"] == {"train": 20, "test": 10}


def test_the_jpeg_copy_is_decoded_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from edgeprune.data import cifar_jpeg

    source = make_cifar_jpeg(tmp_path / "d")
    first = loaders("cifar10", root=tmp_path / "d", augment=False)
    decode = cifar_jpeg.decode
    monkeypatch.setattr(cifar_jpeg, "decode", lambda s: pytest.fail("decoded although cached"))
    again = loaders("cifar10", root=tmp_path / "d", augment=False)
    assert torch.equal(first.train.dataset.images, again.train.dataset.images)
    calls = []
    monkeypatch.setattr(cifar_jpeg, "decode", lambda s: calls.append(s) or decode(s))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(source / "test" / "cat" / "0000.jpg", quality=75)
    changed = loaders("cifar10", root=tmp_path / "d", augment=False)
    assert calls == [source] and changed.sha256 != first.sha256
    assert int(changed.test.dataset.images[3].max()) < 8  # the new all-black cat image


def test_cifar10_prefers_the_official_files_and_finds_the_copy_in_the_cache(tmp_path):
    make_cifar_jpeg(tmp_path / "cache" / "cifar10", archive=True)
    cached = loaders("cifar10", augment=False)  # no root: the cache is searched, as for the official files
    assert cached.copy == "JPEG q75 copy" and cached.root == str(tmp_path / "cache" / "cifar10" / "cifar10-jpg.tar.gz")
    make_cifar(tmp_path / "cache" / "cifar10")
    official = loaders("cifar10", augment=False)
    assert official.copy is None and official.label == "cifar10" and len(official.train.dataset) == 100


def test_a_broken_jpeg_copy_is_named(tmp_path):
    source = make_cifar_jpeg(tmp_path / "d")
    (source / "train" / "cat" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataNotFoundError, match=r"cannot decode train/cat/0000.jpg in .*cifar10-jpg"):
        loaders("cifar10", root=tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "cifar10-jpg.tar.gz").write_bytes(b"truncated")
    with pytest.raises(DataNotFoundError, match="cannot read .*cifar10-jpg.tar.gz"):
        loaders("cifar10", root=tmp_path / "e")
    with pytest.raises(DataNotFoundError, match="or put the JPEG q75 copy"):
        loaders("cifar10", root=tmp_path)


def test_a_run_on_the_copy_records_it(tmp_path):
    from edgeprune.jobs import data_fields

    make_cifar_jpeg(tmp_path / "d")
    fields = data_fields(loaders("cifar10", root=tmp_path / "d"))
    assert fields["data"] == "cifar10" and fields["data_copy"] == "JPEG q75 copy" and len(fields["data_sha256"]) == 64


# --- image folders -------------------------------------------------------------------------------------


def make_images(folder: Path, classes: dict[str, int]) -> None:
    for i, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for j in range(count):
            Image.new("RGB", (12 + j, 10), (80 * i, 10 * j, 200)).save(folder / name / f"{j}.png")


def test_imagefolder_train_and_test(tmp_path):
    make_images(tmp_path / "train", {"cat": 3, "dog": 2, "eel": 2})
    make_images(tmp_path / "val", {"cat": 1, "dog": 1, "eel": 2})
    bundle = loaders("imagefolder", root=tmp_path, image_size=16, batch_size=4)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_shape) == (3, 3, (3, 16, 16))
    x, y = cat(bundle.test)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 2]
    # ImageNet normalisation of the blue channel (200/255).
    torch.testing.assert_close(x[:, 2], torch.full((4, 16, 16), (200 / 255 - 0.406) / 0.225))
    x, y = cat(bundle.train)
    assert x.shape == (7, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 2, 2]


def test_imagefolder_single_folder_is_split_by_seed(tmp_path):
    make_images(tmp_path, {"a": 7, "b": 7, "c": 6})
    bundle = loaders("imagefolder", root=tmp_path, image_size=8, augment=False)
    assert len(bundle.train.dataset) == 18 and len(bundle.test.dataset) == 2
    assert bundle.num_classes == 3
    held_out = set(bundle.test.dataset.indices)
    assert held_out.isdisjoint(bundle.train.dataset.indices)
    again = loaders("imagefolder", root=tmp_path, image_size=8, augment=False)
    assert set(again.test.dataset.indices) == held_out
    assert next(iter(bundle.train))[0].shape[1:] == (3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs a root"):
        loaders("imagefolder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no images found"):
        loaders("imagefolder", root=tmp_path / "empty")
    make_images(tmp_path / "mixed" / "train", {"a": 1, "b": 1})
    make_images(tmp_path / "mixed" / "test", {"a": 1})
    with pytest.raises(ConfigError, match="different class folders"):
        loaders("imagefolder", root=tmp_path / "mixed")


# --- synthetic -----------------------------------------------------------------------------------------


def test_synthetic_is_marked_and_seeded():
    bundle = loaders("synthetic", shape=(2, 5, 7), num_classes=4, size=40, batch_size=16, seed=3)
    assert bundle.synthetic and bundle.root is None
    assert (bundle.num_classes, bundle.in_channels, bundle.input_shape) == (4, 2, (2, 5, 7))
    assert len(bundle.train.dataset) == 40 and len(bundle.test.dataset) == 10
    x, y = cat(bundle.test)
    assert x.shape == (10, 2, 5, 7) and y.dtype == torch.int64 and int(y.max()) < 4
    again = loaders("synthetic", shape=(2, 5, 7), num_classes=4, size=40, seed=3)
    assert torch.equal(x, cat(again.test)[0])
    assert not torch.equal(x, cat(loaders("synthetic", shape=(2, 5, 7), size=40, seed=4).test)[0])
    assert loaders("synthetic").input_shape == (3, 32, 32)


# --- the real thing, where Debian's dataset-fashion-mnist is installed --------------------------------


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(base, "SYSTEM_DIRS", ("/usr/share/datasets",))
    bundle = loaders("fashion-mnist", subset=256, test_subset=256, batch_size=64)
    assert bundle.root == str(DEBIAN_FASHION) and not bundle.synthetic
    assert len(bundle.train.dataset.dataset) == 60000 and len(bundle.test.dataset.dataset) == 10000
    assert (bundle.num_classes, bundle.input_shape) == (10, (1, 28, 28))
    x, y = cat(bundle.test)
    assert x.shape == (256, 1, 28, 28) and len(set(y.tolist())) == 10
    assert abs(float(bundle.test.dataset.dataset.images.float().mean() / 255) - 0.2860) < 0.01
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2
