"""Reports for people: a profile (or several side by side) as a rich table, and a collection of runs as
CSV, Markdown, PNG plots and one self-contained HTML page.

Runs on different data sets are never compared: every table and plot holds one data set. Ratios
(compression, size, speed-up, accuracy Δ) are to the dense run of the same model and data set found in
the collection, and blank without one.

One concern per module: `collect` finds runs and reads their records, `labels` names them, `pairs`
relates them (dense run, counterpart), `retime` re-measures their latency, `sections` decides what each
data set's part of the report holds, `tables` (CSV, Markdown, rich), `plots` and `html` write it. This
module puts them together (`write_report`) and never prints: progress goes to a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .. import files
from ..errors import ConfigError
from ..progress import Reporter
from . import html, sections, tables
from .collect import MAIN_LATENCY, RunRow, find, is_run
from .pairs import Pair, headline, pairs, relate
from .plots import pareto_front
from .retime import Retime, retime
from .tables import profile_table, verdicts

__all__ = ["MAIN_LATENCY", "Pair", "Retime", "RunRow", "collect", "headline", "pairs", "pareto_front",
           "profile_table", "retime", "verdicts", "write_report"]


def collect(paths: Sequence[str | Path]) -> list[RunRow]:
    """The finished runs under `paths`: run folders, sweep folders (any folder holding run folders, at any
    depth) and IMP runs (one row per level), related to their dense runs and sources. Unfinished runs
    inside sweeps are skipped."""
    rows = find(paths)[0]
    relate(rows)
    return rows


def write_report(paths: Sequence[str | Path], out: str | Path, title: str = "edgeprune report",
                 layer_runs: Sequence[str] | None = None, retime_opts: Retime | None = None,
                 tolerance: float = 0.5, progress: Reporter | Callable | None = None) -> dict[str, Path]:
    """Collect the runs under `paths` and write results.csv, results.md, report.html and the PNG plots
    into the folder `out`, and pairs.csv when structured runs have counterparts (see `pairs`).
    `layer_runs` names the runs to draw per-layer figures of (default: the sparsest run of each method, at
    most plots.MAX_LAYER_FIGURES). `retime_opts` re-measures every run's latency in one pass first (see
    Retime), reporting to `progress` (edgeprune.progress); `tolerance` (points) is the accuracy loss the
    headline of the pairs allows. Returns {"csv", "md", "html", "pairs", <png stem>: path}."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report output {out} is a file; pass a folder")
    if is_run(out):
        raise ConfigError(f"report output {out} is a run folder; write the report to a folder of its own")
    if tolerance < 0:
        raise ConfigError(f"tolerance is the accuracy loss allowed, in points, and must be >= 0; got {tolerance}")
    rows, unfinished = find(paths)
    timing = None
    if retime_opts is not None:
        timing = retime(rows, retime_opts, progress)
    relate(rows)
    parts = sections.sections(rows, layer_runs, tolerance)
    intro = sections.intro(rows, unfinished, timing)

    def text(name: str, s: str) -> Path:
        return files.atomic_write(out / name, lambda f: f.write(s), binary=False)

    written = {"csv": text("results.csv", tables.results_csv(rows)),
               "md": text("results.md", tables.markdown(title, parts, intro))}
    all_pairs = [p for s in parts for p in s.pairs]
    if all_pairs:
        written["pairs"] = text("pairs.csv", tables.pairs_csv(all_pairs))
    for s in parts:
        for p in s.plots:
            written[Path(p.file).stem] = files.atomic_write(out / p.file, lambda f, b=p.png: f.write(b))
    written["html"] = text("report.html", html.page(title, parts, intro))
    return written
