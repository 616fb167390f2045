"""`edgeprune portfolio build|show`: variants of one model gathered for serving (edgeprune.portfolio)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, handled, progress_bars


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Gather pruned variants of one model into a portfolio that `edgeprune serve` "
                        "switches between.", no_args_is_help=True)
    group.command("build")(handled(build))
    group.command("show")(handled(show))
    app.add_typer(group, name="portfolio")


def build(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, IMP runs (every level) or sweep folders; or "
                                               "detector family folders (`edgeprune detect train`).")],
    out: Annotated[Path, typer.Option(help="The portfolio folder to write.")],
    profile: Annotated[Path | None, typer.Option(help="Detector families only: their ROMA profile "
                                                 "(`edgeprune detect profile`), recorded for the roma policy.")]
    = None,
    keep_all: Annotated[bool, typer.Option(help="Keep Pareto-dominated variants too.")] = False,
    batch_size: Annotated[int, typer.Option(help="Serving batch size the variants are timed at.")] = 1,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads the variants are timed (and served) with.")] = 1,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds.")] = 6,
    timed_runs: Annotated[int, typer.Option("--runs", help="Timed calls per variant and round.")] = 10,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing portfolio folder.")] = False,
) -> None:
    """Check the runs share data set, input shape and classes, re-time them side by side, keep the
    accuracy/latency Pareto front and write portfolio.json with the ONNX files. Detector families (one class
    set) with --profile: every member is kept, with the profile's AP@0.5 and latency (the timing options
    do not apply).

    Example: [bold]edgeprune portfolio build runs/dense runs/rec-0.9 runs/imp --out pf[/]
    """
    from .. import portfolio

    with progress_bars() as progress:
        task = "re-timing the variants, interleaved"
        manifest = portfolio.build(runs, out, keep_all=keep_all, batch_size=batch_size, threads=threads,
                                   rounds=rounds, runs=timed_runs, overwrite=overwrite,
                                   progress=lambda done, total: progress.update(task, done, total), profile=profile,
                                   warn=lambda m: console.print(f"warning: {m}", highlight=False))
    _table(manifest, f"portfolio {out}")
    for d in manifest.dropped:
        console.print(f"dropped {d['id']} ({100 * d['accuracy']:.2f} %, {d['p50_ms']:.3f} ms): {d['why']}",
                      highlight=False)


def show(folder: Annotated[Path, typer.Argument(help="A portfolio folder.")]) -> None:
    """Verify a portfolio (files, hashes, shapes) and list its variants.

    Example: [bold]edgeprune portfolio show pf[/]
    """
    from .. import portfolio

    _table(portfolio.load(folder), f"portfolio {folder} (verified)")


def _table(manifest, title: str) -> None:
    from rich.table import Table

    t = Table(title=f"{title}: {manifest.data}, input {manifest.datatype} {manifest.input_shape}, "
              f"{manifest.classes} classes, batch {manifest.batch_size}, {manifest.threads} thread(s)")
    quality = "AP@0.5" if manifest.task == "detect" else "accuracy"
    for col in ("variant", "method", "precision", quality, "params", "ONNX bytes", "p50 ms", "p90 ms", "source"):
        t.add_column(col, justify="left" if col in ("variant", "method", "precision", "source") else "right")
    for v in manifest.variants:
        t.add_row(v.id, v.method, v.precision, f"{100 * v.accuracy:.2f} %", f"{v.params:,}", f"{v.bytes:,}",
                  f"{v.p50_ms:.3f}", f"{v.p90_ms:.3f}", v.source)
    console.print(t)
