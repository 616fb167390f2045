"""Re-timing: every collected run's ONNX Runtime latency measured again in one interleaved pass."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import runs
from ..errors import ConfigError
from ..progress import Reporter, reporter
from .collect import RunRow


@dataclass
class Retime:
    """Re-measure the ONNX Runtime latency of every collected run round-robin in one pass (see
    timing.latency_onnx_interleaved), so that ratios between runs are taken under the same conditions
    instead of at the different times (and loads) at which each run finished. The runs are not modified."""

    rounds: int = 6
    runs: int = 10  # timed calls per model and round
    warmup: int = 3
    settings: tuple[tuple[int, int], ...] | None = None  # (batch, threads); None: every ORT setting measured

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"re-timing needs rounds >= 1, runs >= 1 and warmup >= 0; got rounds={self.rounds}, "
                              f"runs={self.runs}, warmup={self.warmup}")


def retime(rows: list[RunRow], opts: Retime | None = None, progress: Reporter | Callable | None = None) -> dict:
    """Replace the ONNX Runtime latencies of `rows` with one interleaved re-measurement of their model.onnx
    files at `opts.settings` (default: every setting they measured); ONNX Runtime figures at other settings
    are dropped, so that stale and fresh timings never meet in a ratio. A run without a model.onnx keeps no
    ONNX Runtime latency. `progress` (see edgeprune.progress) follows the rounds of each setting. Returns what was
    done (settings, rounds, seconds, runs without a model.onnx)."""
    from ..timing import latency_onnx_interleaved

    opts = opts or Retime()
    report = reporter(progress)
    settings = sorted(opts.settings or {(t.batch_size, t.threads) for r in rows for t in r.profile.latency
                                        if t.runtime == "onnxruntime"} or {(1, 1)})
    for r in rows:  # timings of other settings, taken when each run finished, are never set beside fresh ones
        kept = [t for t in r.profile.latency if t.runtime != "onnxruntime"]
        r.profile = dataclasses.replace(r.profile, latency=kept)
    found = {r.name: r.path / runs.ONNX for r in rows}
    missing = sorted(n for n, f in found.items() if not f.is_file())
    todo = {r.name: (found[r.name], r.profile.input_shape) for r in rows if r.name not in missing}
    t0 = time.perf_counter()
    for batch, threads in settings:
        task = f"re-timing {len(todo)} models, batch {batch}, {threads} thread(s)"
        report.update(task, 0, opts.rounds)  # shown before the first round, which can take a while
        fresh = latency_onnx_interleaved(todo, batch, threads, opts.rounds, opts.runs, opts.warmup,
                                         progress=functools.partial(report.update, task))
        for r in rows:
            if r.name in fresh:
                r.profile = dataclasses.replace(r.profile, latency=[*r.profile.latency, fresh[r.name]])
    return {"settings": [list(s) for s in settings], "rounds": opts.rounds, "runs": opts.runs, "warmup": opts.warmup,
            "models": len(todo), "seconds": time.perf_counter() - t0, "without_onnx": missing}
