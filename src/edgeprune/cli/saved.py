"""`edgeprune eval|measure|export|rerun`: what a saved model (a run folder or a model.pt) scores, costs and ships
as, and a run repeated from its saved config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DataRoot, Device, Overwrite, RunsDir, TestSubset, console, handled, print_report, progress_bars


def register(app: typer.Typer) -> None:
    app.command("eval")(handled(eval_cmd))
    app.command("measure")(handled(measure_cmd))
    app.command("export")(handled(export_cmd))
    app.command()(handled(rerun))


def eval_cmd(
    path: Annotated[Path, typer.Argument(help="A run folder or a model.pt.")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Override the run's data set.")] = None,
    data_root: DataRoot = None,
    test_subset: TestSubset = None,
    device: Device = "cpu",
    runtime: Annotated[str, typer.Option(help="torch (the PyTorch model in model.pt) or onnxruntime (the run's "
                                         "model.onnx, the artifact that ships; INT8 runs have only this).")]
    = "torch",
) -> None:
    """Top-1 accuracy of a saved model on its data set's test split.

    Example: [bold]edgeprune eval runs/demo --runtime onnxruntime[/]
    """
    from .. import saved

    override = {k: v for k, v in {"name": dataset, "root": str(data_root) if data_root else None,
                                  "test_subset": test_subset}.items() if v is not None}
    with progress_bars() as progress:
        result = saved.accuracy(path, override, device=device, progress=progress, runtime=runtime)
    console.print(f"top-1 accuracy on {result['data']} ({result['samples']} test samples, {result['runtime']}): "
                  f"[bold]{100 * result['accuracy']:.2f} %[/]  (loss {result['loss']:.4f})")


def measure_cmd(
    path: Annotated[Path, typer.Argument(help="A run folder or a model.pt.")],
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", "-b", help="Batch size(s).")] = None,
    threads: Annotated[list[int] | None, typer.Option("--threads", "-t", help="Thread count(s).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per figure.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs.")] = 5,
    runtime: Annotated[list[str] | None, typer.Option(help="onnxruntime and/or torch (default: both).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the profile as JSON here.")] = None,
) -> None:
    """Measure a saved model: parameters, MACs, size, latency and memory (ONNX Runtime and PyTorch, CPU).

    An INT8 run is measured from its model.onnx, in ONNX Runtime.

    Example: [bold]edgeprune measure runs/demo -b 1 -b 32 -t 1 -t 2[/]
    """
    from .. import saved
    from ..files import write_json
    from ..report import profile_table
    from ..runs import check_output_file

    check_output_file(json_out, "--json")
    prof = saved.profile(path, batch_sizes=batch_size or [1], threads=threads or [1], timed_runs=runs,
                              warmup=warmup, runtimes=runtime)
    console.print(profile_table({str(path): prof}, title=f"{prof.model}, input {tuple(prof.input_shape)}"))
    if json_out:
        write_json(json_out, prof.to_dict())


def export_cmd(
    path: Annotated[Path, typer.Argument(help="A run folder or a model.pt.")],
    onnx: Annotated[Path, typer.Option(help="Where to write the ONNX file.")],
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
    exporter: Annotated[str, typer.Option(help="torchscript (fast) or dynamo.")] = "torchscript",
) -> None:
    """Export a saved model to ONNX, checked against ONNX Runtime on a random input.

    Example: [bold]edgeprune export runs/demo --onnx demo.onnx[/]
    """
    from .. import jobs
    from ..checks import number
    from ..export import to_onnx
    from ..runs import check_output_file

    # torch's exporters write opsets 7 to 23 (TorchScript up to 20); to_onnx refuses one it did not write
    number(opset, "--opset", at_least=7, at_most=23, integer=True, hint="18 is the default")
    check_output_file(onnx, "--onnx", "model.onnx")
    model, extra = jobs.load(path)
    to_onnx(model, onnx, tuple(extra["input_shape"]), opset=opset, exporter=exporter)
    console.print(f"wrote {onnx} (checked against ONNX Runtime)")


def rerun(
    run: Annotated[Path, typer.Argument(help="A run folder (or its config.json) to repeat.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the new run.")],
    runs_dir: RunsDir = Path("runs"),
    overwrite: Overwrite = False,
) -> None:
    """Repeat a run from its saved config.json into a new run folder.

    Example: [bold]edgeprune rerun runs/demo --name demo-again[/]
    """
    from .. import jobs, runs

    run_dir = runs.run_path(runs_dir, name)
    with progress_bars() as progress:
        report = jobs.rerun(run, run_dir, overwrite=overwrite, progress=progress)
    print_report(report, run_dir)
