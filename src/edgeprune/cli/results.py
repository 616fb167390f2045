"""`edgeprune compare|sweep|report`: runs side by side, grids of runs, and the tables and plots over them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .common import console, err, handled, progress_bars, sigterm_as_interrupt


def register(app: typer.Typer) -> None:
    app.command()(compare)
    app.command()(sweep)
    app.command()(report)


@handled
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to put side by side (an IMP run: each level).")],
    retime: Annotated[bool, typer.Option(help="Time every model's ONNX Runtime batch-1 latency again, side by side "
                                         "in one pass, so that the speed-ups compare like with like (the runs' "
                                         "own timings were taken at other times, under other loads).")] = True,
) -> None:
    """Print the profiles of several runs side by side, with ratios to the first.

    One closing line per run says what the table shows.

    Example: [bold]edgeprune compare runs/dense runs/synflow-90 runs/reconvene-90[/]
    """
    from ..report import Retime, collect, profile_table, verdicts
    from ..report import retime as retime_rows

    rows = collect(runs)
    timing = "the runs' own timings"
    if retime:
        with progress_bars() as progress:
            retime_rows(rows, Retime(rounds=5, runs=20, settings=((1, 1),)), progress)
        timing = "ONNX Runtime, timed side by side"
    profiles = {r.name: r.profile for r in rows}
    console.print(profile_table(profiles, title="runs compared"))
    for line in verdicts(profiles, timing) if len(profiles) > 1 else []:
        console.print(line, highlight=False, soft_wrap=True)


@handled
def sweep(
    spec: Annotated[Path, typer.Argument(help="A sweep spec (YAML): models, data, methods, sparsities, seeds, "
                                         "training budget.")],
    executor: Annotated[str, typer.Option(help="local (one cell at a time, here) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray: join the cluster at this address (host:port); without "
                                                "it a local Ray instance is started.")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (default: the spec's `out`, else "
                                             "runs/sweeps/<name>).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="Ray: CPUs of the local instance (default: all).")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", metavar="PATTERN", help="Run only the cells whose "
                                                   "names match this shell-style pattern, e.g. 'vgg16-*' "
                                                   "(repeatable), and the cells they start from; quote it.")]
    = None,
    first: Annotated[list[str] | None, typer.Option("--first", metavar="PATTERN", help="Run the cells matching "
                                                    "this pattern before the others (repeatable: the first "
                                                    "pattern's first), with the cells they start from; the rest "
                                                    "follow in the spec's order. With Ray a cell that starts "
                                                    "from another still waits for that cell's whole stage.")]
    = None,
    device: Annotated[str | None, typer.Option(help="Run the cells on this device (cpu, cuda, cuda:N) instead of "
                                               "the spec's; a finished cell counts as finished wherever it ran.")]
    = None,
) -> None:
    """Run every cell of a sweep spec as a run of its own; re-running skips finished cells.

    A failing cell is recorded with its error in sweep.json and the others go on; the exit code is 1 if any
    failed. Ctrl-C or `kill PID` marks the cells in flight "interrupted" (exit 130 / 143); the same command
    resumes them from their last epoch. Then `edgeprune report SWEEP_FOLDER` makes the tables and plots.

    Example: [bold]edgeprune sweep benchmarks/specs/smoke.yaml && edgeprune report runs/sweeps/smoke[/]

    On a GPU machine, just the expensive cells: [bold]edgeprune sweep spec.yaml --only 'vgg16-*' --device cuda[/]

    The headline's cells before the rest: [bold]edgeprune sweep spec.yaml --first 'vgg16-*-0.95-*'[/]
    """
    from ..sweep import run_sweep

    with sigterm_as_interrupt(), progress_bars() as progress:
        summary = run_sweep(spec, out=out, executor=executor, address=address, progress=progress, num_cpus=num_cpus,
                            only=only, device=device, first=first)
    counts = summary["counts"]
    console.print("sweep finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) +
                  f" — results in [bold]{summary.get('out', out)}[/]")
    for name, cell in summary["cells"].items():
        if cell["status"] == "failed":
            err.print(f"[red]failed[/] {name}: {cell['error']['type']}: {cell['error']['message']}", highlight=False)
    if counts.get("failed", 0):
        raise typer.Exit(1)


@handled
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run folders and/or sweep folders (searched for runs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.csv/.md, the PNG plots and "
                                      "report.html.")] = Path("report"),
    title: Annotated[str, typer.Option(help="Title of the report.")] = "edgeprune report",
    retime: Annotated[bool, typer.Option("--retime", help="Re-measure every run's ONNX Runtime latency in one "
                                         "interleaved pass first, so ratios between runs are taken under the same "
                                         "load (the runs are not modified).")] = False,
    retime_rounds: Annotated[int, typer.Option(help="--retime: rounds over all models.")] = 6,
    retime_runs: Annotated[int, typer.Option(help="--retime: timed calls per model and round.")] = 10,
    retime_at: Annotated[list[str] | None, typer.Option("--retime-at", metavar="BATCHxTHREADS", help="--retime: "
                                                        "only this batch size and thread count, e.g. 1x1 "
                                                        "(repeatable; default: every setting the runs measured); "
                                                        "ONNX Runtime figures at other settings are left out.")]
    = None,
    tolerance: Annotated[float, typer.Option(help="Accuracy loss (points) a structured run may have against its "
                                             "counterpart and still count in the headline.")] = 0.5,
    layer_run: Annotated[list[str] | None, typer.Option("--layer-run", help="Draw the per-layer figure of this run "
                                                        "(repeatable; default: the sparsest run of each method).")]
    = None,
) -> None:
    """Tables (CSV, Markdown), plots (PNG) and one self-contained HTML page over many runs.

    Runs of different data sets get separate sections; ratios are against the dense run of the same model.
    Reconvene runs are also set against their unstructured counterpart (same criterion, sparsity and
    budget) and DNNShifter runs against the sparse run they shrank (pairs.csv and a table of its own).

    Example: [bold]edgeprune report runs/sweeps/smoke --retime --out report/[/]
    """
    from ..report import Retime, write_report

    settings = tuple(_batch_threads(v) for v in retime_at) if retime_at else None
    if settings and not retime:
        raise ConfigError("--retime-at chooses what --retime re-measures: pass --retime with it")
    opts = Retime(rounds=retime_rounds, runs=retime_runs, settings=settings) if retime else None
    with progress_bars() as progress:
        files = write_report(paths, out, title=title, layer_runs=layer_run, retime_opts=opts, tolerance=tolerance,
                             progress=progress)
    console.print(f"wrote {len(files)} files to {out}: open [bold]{files['html']}[/] in a browser")


def _batch_threads(text: str) -> tuple[int, int]:
    b, sep, t = text.lower().partition("x")
    if not (sep and b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 0):
        raise ConfigError(f"--retime-at {text!r} is not BATCHxTHREADS with positive numbers, e.g. 1x1 or 32x2")
    return int(b), int(t)

