"""Files written whole or not at all: each is written to a temporary name beside its path and renamed into place,
so an interrupted write never leaves half a file. JSON and torch files (tensors and plain containers only) read
back with one error type, CheckpointError, that names the file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved artifact gets the user's usual mode
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=jsonable), binary=False)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; is {path.parent} an edgeprune run folder?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt") from None


def torch_save(path: str | Path, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """Load a torch file saved by edgeprune (tensors and plain containers only, never pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt zip archives
        raise CheckpointError(
            f"{what} {path} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "re-create it, or resume from an earlier copy"
        ) from None


def jsonable(o: Any) -> Any:
    """What json.dump writes for the values edgeprune records: paths, tensors, tuples, sets, records."""
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, tuple | set):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
