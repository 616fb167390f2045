"""`edgeprune quantize`: an INT8 copy of a finished run, made with ONNX Runtime's quantisation tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import MeasureRuns, Overwrite, Threads, console, handled, print_report, progress_bars


def register(app: typer.Typer) -> None:
    app.command()(handled(quantize))


def quantize(
    run: Annotated[Path, typer.Argument(help="A finished fp32 run folder (train, prune, shrink, or an IMP level_NN).")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="The new run (default: <run>-int8).")] = None,
    mode: Annotated[str, typer.Option(help="static (weights and activations INT8, activation ranges calibrated on "
                                      "training images; QDQ format) or dynamic (INT8 weights, activations "
                                      "quantised at run time).")] = "static",
    calibration: Annotated[int | None, typer.Option(help="static: calibrate on the first N training images "
                                                    "(default 256).", show_default=False)] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One scale per output channel of each "
                                              "weight instead of one per tensor.")] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="Folder for the new run (default: beside RUN).")] = None,
    overwrite: Overwrite = False,
    measure_runs: MeasureRuns = 30,
    threads: Threads = "auto",
) -> None:
    """Quantise a run's model.onnx to INT8 with ONNX Runtime's own tools into a new run, and measure the artifact.

    The source run is never modified. The new run's accuracy is measured by running the INT8 model in ONNX
    Runtime over the test split; the report also holds the source's model.onnx evaluated and timed beside it.

    Example: [bold]edgeprune quantize runs/reconvene-90 --calibration 512 --name reconvene-90-int8[/]
    """
    from .. import jobs, runs
    from ..kinds import quantize as kind

    run_dir = runs.run_path(runs_dir or run.parent, f"{run.resolve().name}-int8" if name is None else name)
    cfg = kind.config(run, mode=mode, calibration=calibration, per_channel=per_channel, measure_runs=measure_runs,
                      threads=threads)
    with progress_bars() as progress:
        report = jobs.run(cfg, run_dir, overwrite=overwrite, progress=progress)
    print_report(report, run_dir)
    v = report.vs_source
    speed = "n/a" if v["ort_b1_speedup"] is None else f"{v['ort_b1_speedup']:.2f}× (timed side by side)"
    acc = ("" if "accuracy_delta_pts" not in v else
           f", accuracy {100 * v['accuracy_source_onnxruntime']:.2f} % → {100 * report.profile.accuracy:.2f} % "
           f"({v['accuracy_delta_pts']:+.2f} points, both in ONNX Runtime)")
    console.print(f"vs the fp32 model.onnx of {run}: {v['bytes_onnx_x_smaller']:.2f}× smaller "
                  f"({v['bytes_onnx_gzip_x_smaller']:.2f}× gzip), ORT batch-1 speed-up {speed}{acc}; "
                  f"quantised in {report.details['quantization']['seconds']:.1f} s", highlight=False)
