"""Signal handlers set for the length of a block, the way every command that sets one needs them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def handled_by(handler: Callable | int, *signums: int) -> Iterator[bool]:
    """Within the block, `signums` go to `handler` (a function, or signal.SIG_IGN); the handlers before are put
    back after it. Outside the main thread, where none can be set, the block runs as it is. Yields whether the
    handler was set."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
