"""Errors edgeprune raises on bad input. Every message names the offending value and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgePruneError(Exception):
    """Base class: bad input or a state the user can fix. The CLI prints it without a traceback."""


class ConfigError(EdgePruneError, ValueError):
    """An argument or option has a value edgeprune cannot use."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, data set, criterion, method) is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(EdgePruneError, FileNotFoundError):
    """A data set's files could not be found."""


class CheckpointError(EdgePruneError):
    """A checkpoint or saved model is missing, corrupt, truncated or incompatible."""


class RunExistsError(EdgePruneError, FileExistsError):
    """An output run folder exists and --overwrite was not given."""


class RunBusyError(EdgePruneError):
    """Another process is writing a run of the same name."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a scheduler stopping the job), raised where Ctrl-C's KeyboardInterrupt would be, so
    that a run stopped either way keeps its finished epochs and says so (the CLI exits 143 instead of 130)."""


class RunFinished(EdgePruneError):
    """--resume of a run that already finished: nothing to do (the CLI says so and exits 0)."""


class RunWriteError(EdgePruneError, OSError):
    """Run files cannot be written (read-only folder, full disk, a file where a folder should be)."""


class ExportError(EdgePruneError):
    """A model could not be exported or the exported model disagrees with PyTorch."""


class UnsupportedModelError(EdgePruneError):
    """A model (or one of its layers) cannot be handled by an operation."""


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownNameError:
    """An UnknownNameError listing close matches of `name` among `choices`."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    else:
        shown = ", ".join(choices[:20]) + (", …" if len(choices) > 20 else "")
        msg += f"; available: {shown}"
    if hint:
        msg += f" ({hint})"
    return UnknownNameError(msg)
