"""How the library tells its caller what it is doing. The library never draws or prints: slow steps call a
`Reporter` the caller passes (the CLI's draws rich progress bars; a notebook's could update a widget), and
the default reports nowhere.

A task is a named counter (`update("epoch 2/5", 40, 469, "loss 0.31")`); a note is one line worth telling
(`note("probe: sparsity 0.9 → 0.21 ms, meets the budget")`).
"""

from __future__ import annotations

from collections.abc import Callable


class Reporter:
    """Receives progress; this base class ignores it. Subclass it to draw."""

    def update(self, task: str, done: int, total: int | None = None, status: str = "") -> None:
        """`done` of `total` units of `task` are finished (total None: unknown)."""

    def end(self, task: str) -> None:
        """`task` is over (a bar may be removed)."""

    def note(self, text: str) -> None:
        """A line worth telling the user."""

    def __bool__(self) -> bool:  # `if progress:` reads as "is anyone listening"
        return type(self) is not Reporter


SILENT = Reporter()


class _Function(Reporter):
    def __init__(self, fn: Callable[..., None]):
        self.fn = fn

    def update(self, task: str, done: int, total: int | None = None, status: str = "") -> None:
        self.fn(task, done, total)


def reporter(progress: Reporter | Callable[..., None] | bool | None) -> Reporter:
    """The Reporter for a `progress=` argument: a Reporter as it is, a function `(task, done, total)` for its
    updates, and None or False for silence. True is refused: the library has nothing to draw with."""
    if isinstance(progress, Reporter):
        return progress
    if progress is None or progress is False:
        return SILENT
    if progress is True:
        raise TypeError("progress=True: pass a Reporter (edgeprune.progress) or a function; the library never draws")
    return _Function(progress)


class Prefixed(Reporter):
    """`inner` with every task name prefixed (IMP's levels each train: "level 2: epoch 1/3")."""

    def __init__(self, inner: Reporter | Callable[..., None] | None, prefix: str):
        self.inner, self.prefix = reporter(inner), prefix

    def update(self, task: str, done: int, total: int | None = None, status: str = "") -> None:
        self.inner.update(self.prefix + task, done, total, status)

    def end(self, task: str) -> None:
        self.inner.end(self.prefix + task)

    def note(self, text: str) -> None:
        self.inner.note(self.prefix + text)

    def __bool__(self) -> bool:
        return bool(self.inner)
