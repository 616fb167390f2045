"""Run folders: `runs/<name>/` with config.json, model.pt, model.onnx, report.json, log.jsonl.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written artifact. An existing run is never overwritten
unless the caller asks for it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, RunExistsError

CONFIG = "config.json"
MODEL = "model.pt"
MASKS = "masks.pt"
ONNX = "model.onnx"
REPORT = "report.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"


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
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=_jsonable), binary=False)


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


def append_log(run_dir: str | Path, record: dict) -> None:
    """Append one JSON line; a line is small enough that an interrupt loses at most that line."""
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def check(run_dir: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Raise unless `prepare` would succeed; writes nothing (call it before expensive work)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if resume and not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"cannot resume: {run_dir} holds no started run ({CONFIG} is missing); "
                              "start a new run instead")
    if not resume and not overwrite and run_dir.exists() and any(run_dir.iterdir()):
        raise RunExistsError(
            f"run folder {run_dir} already exists; pass --overwrite to replace it, "
            "--resume to continue it, or choose another --name"
        )
    return run_dir


def prepare(run_dir: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Make `run_dir` ready for a new run (or a resumed one), refusing to clobber an existing run."""
    run_dir = check(run_dir, overwrite, resume)
    if not resume:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    return run_dir


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, tuple | set):
        return list(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
