"""Run folders: `runs/<name>/` with config.json, model.pt, model.onnx, report.json, log.jsonl.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written artifact. An existing run is never overwritten
unless the caller asks for it (`files.py` writes each file so; this module names, checks, locks and stages the
folders).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import formats
from .errors import CheckpointError, ConfigError, RunBusyError, RunExistsError, RunFinished, RunWriteError
from .files import jsonable, read_json, write_json

CONFIG = "config.json"
MODEL = "model.pt"
MASKS = "masks.pt"
ONNX = "model.onnx"
REPORT = "report.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"


# What a file system says when it cannot take a run's files: full, over quota, read-only, not permitted.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def append_log(run_dir: str | Path, record: dict) -> None:
    """Append one JSON line; a line is small enough that an interrupt loses at most that line."""
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(json.dumps(record, default=jsonable) + "\n")


NAME_HELP = "a run name is one folder name inside --runs-dir, e.g. 'resnet20-synflow-90'"
PRUNED = "pruned.pt"  # the pruning result before training, so a resumed run restores it instead of recomputing


def run_path(runs_dir: str | Path, name: str) -> Path:
    """`runs_dir/name`, refusing any name that is not exactly one folder inside `runs_dir`.

    A name such as "", ".", ".." or "../x" would point at the runs folder itself or outside it, and with
    --overwrite that folder would be replaced: never let a name reach anything but its own run folder.
    """
    bad = (not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name
           or "\0" in name or name.startswith(".") or name != name.strip() or Path(name).is_absolute())
    if bad:
        why = "is empty" if isinstance(name, str) and not name.strip() else "is not a plain folder name"
        raise ConfigError(f"--name {name!r} {why}: {NAME_HELP} (no '/', not starting with '.')")
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ConfigError(f"--runs-dir {str(runs_dir)!r} is a file, not a folder; choose a folder for the runs")
    return runs_dir / name


# What marks a folder as made by edgeprune, per kind: (record file, keys it holds or {key: value} it matches).
KINDS: dict[str, tuple[tuple[str, Any], ...]] = {
    "run": ((CONFIG, ("command", "edgeprune_version")), (REPORT, ("profile",)), (REPORT, ("levels",))),
    "portfolio": ((formats.PORTFOLIO_MANIFEST, {"format": formats.PORTFOLIO_FORMAT}),),
    "detector family": ((formats.FAMILY_RECORD, {"format": formats.FAMILY_FORMAT}),),
}


def is_run(path: str | Path, kind: str = "run") -> bool:
    """Whether `path` is a folder edgeprune made of `kind` (KINDS): a run (config.json naming its command and
    version) or a level of one (report.json with a profile), a portfolio, a detector family. Only such folders
    are ever replaced or removed, and only by a command that makes that kind."""
    path = Path(path)
    for record, keys in KINDS[kind]:
        try:
            obj = json.loads((path / record).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and (all(obj.get(k) == v for k, v in keys.items()) if isinstance(keys, dict)
                                      else all(k in obj for k in keys)):
            return True
    return False


def is_finished(path: str | Path) -> bool:
    """A run is finished once its report.json is written: it is written last."""
    return (Path(path) / REPORT).is_file()


def check_writable(folder: str | Path, option: str = "--runs-dir") -> None:
    """Raise RunWriteError unless files can be created in `folder` (made if missing): before any work."""
    folder = Path(folder)
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgeprune-probe.", dir=folder)
        with os.fdopen(fd, "wb") as f:  # a folder on a full disk accepts an empty file, not a block of data
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        what = "run files" if option == "--runs-dir" else "files"
        raise RunWriteError(f"cannot write {what} in {str(folder)!r} ({e.strerror or e}); choose another "
                            f"{option}, or free space / fix its permissions") from None
    finally:
        if probe:
            Path(probe).unlink(missing_ok=True)


# Files that mark a folder edgeprune made (a run, a sweep, a portfolio, a detector family): no single-file output
# goes inside one, where it could replace what the folder holds.
_MADE_MARKERS = {CONFIG: "run", REPORT: "run", "sweep.json": "sweep", formats.PORTFOLIO_MANIFEST: "portfolio",
                 formats.FAMILY_RECORD: "detector family"}


def check_output_file(path: str | Path | None, option: str, example: str = "out.json") -> None:
    """Before any work: the file `option` names can be written (not a folder; its folder made and writable), lies
    in no folder edgeprune made, and replaces no file but one of the kind it writes (`example`'s suffix; for JSON,
    a JSON document), so a mistyped path never costs a user's file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {str(path)!r} is a folder; give a file path, e.g. {str(path / example)!r}")
    for folder in (path.parent.resolve(), *path.parent.resolve().parents):
        kind = next((k for marker, k in _MADE_MARKERS.items() if (folder / marker).is_file()), None)
        if kind is not None:
            raise ConfigError(f"{option} {str(path)!r} lies inside the {kind} folder {str(folder)!r}, whose files it "
                              f"could replace; write it outside, e.g. {str(folder.parent / example)!r}")
    if path.exists():
        suffix = Path(example).suffix
        if not path.is_file() or (suffix and path.suffix.lower() != suffix):
            raise ConfigError(f"{option} {str(path)!r} exists and is not a {suffix or 'plain'} file edgeprune "
                              f"writes; choose another path (e.g. {example!r}) or remove it yourself")
        if suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                raise ConfigError(f"{option} {str(path)!r} exists and is not JSON that edgeprune wrote; choose "
                                  "another path or remove it yourself") from None
    check_writable(path.parent, option)


@contextmanager
def locked(path: str | Path, what: str = "run") -> Iterator[None]:
    """Hold the lock of folder `path` (a run, a sweep) for the block; RunBusyError at once if another process
    holds it."""
    lock = _Lock(Path(path), what)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _Lock:
    """An exclusive lock on `<parent>/.<name>.lock` for as long as a process writes folder `name`.

    flock is released by the kernel when the process dies (even by SIGKILL), so a killed run never leaves a
    stale lock. The lock file sits beside the run folder, not in it, because the folder may be swapped.
    """

    def __init__(self, folder: Path, what: str = "run"):
        self.folder, self.what = folder, what
        self.path = folder.parent / f".{folder.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunBusyError(
                    f"{self.what} {self.folder} is being written by another edgeprune process; "
                    "wait for it to finish, or choose another " + ("--name" if self.what == "run" else "--out")
                ) from None
            try:  # the holder before us may have unlinked the file it locked: then lock the new one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.fd = fd
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked, so no one else holds the file we remove
            os.close(self.fd)
            self.fd = None


@dataclass
class RunFolder:
    """A run being written: `path` is where its files go, `final` the name it will have.

    mode "fresh": a new run written in place (an interrupted one stays there for --resume);
    "resume": an interrupted run continued in place; "replace": --overwrite of an existing run, written
    into a hidden sibling and swapped in only once complete, so the old run is lost only to a finished one.
    """

    path: Path
    final: Path
    mode: str

    @property
    def name(self) -> str:
        return self.final.name

    def has_progress(self) -> bool:
        """Whether anything worth resuming was written (a checkpoint, or a finished IMP level)."""
        return has_progress(self.path)


def has_progress(path: Path) -> bool:
    """Whether run folder `path` holds epochs to resume from: a checkpoint, or a finished IMP level."""
    return any(path.rglob(CHECKPOINT)) or any(path.glob(f"*/{REPORT}"))


@contextmanager
def open_run(run_dir: str | Path, config: Any, *, overwrite: bool = False, resume: bool = False,
             compare: Callable[[dict, dict], list[str]] | None = None, kind: str = "run",
             option: str = "--name") -> Iterator[RunFolder]:
    """Lock run `run_dir`, make it ready to be written and record `config` in it; commit when the block ends.

    Refuses before any work: a --resume whose config differs from the saved one (naming the fields), a
    --resume of a finished run (RunFinished), an existing run without --overwrite, --overwrite of a folder
    that is not an edgeprune run, a runs folder that cannot be written. Stray temporary files and partial
    replacements left by a killed process are removed first. On failure a replacement is discarded (the old
    run is unchanged) and a fresh run with nothing worth resuming is removed; the exception says which.
    Other kinds of output folder (KINDS: a portfolio, a detector family; `option` names the flag) go the same
    way; `config` None records none, and only a folder of the same kind is replaced.
    """
    final = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{final} is a file, not a {kind} folder; choose another {option}")
    check_writable(final.parent, "--runs-dir" if option == "--name" else option)
    with locked(final, kind):
        _clean_strays(final)
        folder = _prepare(final, config, overwrite=overwrite, resume=resume, compare=compare, kind=kind,
                          option=option)
        try:
            yield folder
        except OSError as e:
            if e.errno not in WRITE_ERRORS or isinstance(e, RunWriteError):
                _abandon(folder, e)
                raise
            err = RunWriteError(f"cannot write {e.filename or folder.path} ({e.strerror}); free space or fix the "
                                f"permissions of {final.parent}, then run again")
            _abandon(folder, err)
            raise err from None
        except BaseException as e:
            _abandon(folder, e)
            raise
        if folder.mode == "replace":
            _swap(folder.path, final)


def _prepare(final: Path, config: Any, *, overwrite: bool, resume: bool,
             compare: Callable[[dict, dict], list[str]] | None, kind: str = "run", option: str = "--name") -> RunFolder:
    new = json.loads(json.dumps(config, default=jsonable))
    if resume:
        if not (final / CONFIG).is_file():
            raise CheckpointError(f"cannot resume: {final} holds no started run ({CONFIG} is missing); "
                                  "start a new run instead")
        saved = read_json(final / CONFIG)
        changed = (compare or changed_fields)(saved, new)
        if changed:
            raise ConfigError(
                f"cannot resume {final}: the options differ from the saved run in {', '.join(changed)}; resume "
                f"with the options it was started with (saved in {final / CONFIG}), or start a new run with "
                "--overwrite or another --name"
            )
        if is_finished(final):
            raise RunFinished(f"run {final} is already finished: nothing was redone (its results are in "
                              f"{final / REPORT}; pass --overwrite to redo it)")
        folder = RunFolder(final, final, "resume")
    elif final.exists() and any(final.iterdir()):
        if not overwrite:
            resume_hint = "--resume to continue it, " if kind == "run" else ""
            raise RunExistsError(f"{kind} folder {final} already exists; pass --overwrite to replace it, "
                                 f"{resume_hint}or choose another {option}")
        if not is_run(final, kind):
            marker = KINDS[kind][0][0]
            raise ConfigError(f"{final} exists and is not an edgeprune {kind} (no {marker} written by edgeprune); "
                              f"edgeprune replaces only its own {kind} folders: move that folder away or choose "
                              f"another {option}")
        staging = final.parent / f".{final.name}.staging-{os.getpid()}"
        staging.mkdir()
        folder = RunFolder(staging, final, "replace")
    else:
        final.mkdir(parents=True, exist_ok=True)
        folder = RunFolder(final, final, "fresh")
    if folder.mode != "resume" and config is not None:
        write_json(folder.path / CONFIG, new)
    return folder


def changed_fields(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ, with both values (the version is not an option)."""
    out = []
    for key in sorted(set(saved) | set(new)):
        if key == "edgeprune_version":
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (saved {a!r}, now {b!r})")
    return out


def _abandon(folder: RunFolder, e: BaseException) -> None:
    """Clean up after a run that did not complete, and say on the exception what was kept."""
    if folder.mode == "replace":
        shutil.rmtree(folder.path, ignore_errors=True)
        e.add_note(f"the existing run {folder.final} was left unchanged; the new run was discarded")
    elif folder.has_progress():
        e.add_note(f"the finished epochs are kept in {folder.final} (--resume continues from the last one)")
    elif folder.mode == "fresh":
        shutil.rmtree(folder.path, ignore_errors=True)
        e.add_note(f"nothing worth resuming was written; {folder.final} was removed")


def _swap(staging: Path, final: Path) -> None:
    """Put the complete `staging` in place of `final`; the old run is removed only after the new one is in."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _clean_strays(final: Path) -> None:
    """Remove what a killed process left of run `final` (call with its lock held): partial replacements,
    temporary files of interrupted writes; and put back an old run a swap was killed in the middle of."""
    parent = final.parent
    name = glob.escape(final.name)  # a name such as 'a*' must match its own leftovers only
    for old in parent.glob(f".{name}.old-*"):
        if not final.exists():
            os.rename(old, final)  # killed between the two renames of _swap: keep the old run
        else:
            shutil.rmtree(old, ignore_errors=True)
    for staging in parent.glob(f".{name}.staging-*"):
        shutil.rmtree(staging, ignore_errors=True)
    if final.is_dir():
        for tmp in final.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)

