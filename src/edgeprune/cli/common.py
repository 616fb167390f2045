"""What every command shares: the consoles, the global flags' state, the error handler, progress bars, the options
of every command that trains a model, and starting a run from them. Public names, imported by the command modules.

Only what parsing needs is imported at module level: `--help`, `--version` and argument errors answer without torch
(importing it takes seconds on a busy machine). Commands import the library when they run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import signal
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import ConfigError, EdgePruneError, RunFinished, Terminated

console = Console()
err = Console(stderr=True)
state = {"debug": False, "quiet": False}  # the global flags, set by the app's callback


def handled(fn):
    """Print an EdgePruneError as one line and exit 2 (the traceback only with --debug); Ctrl-C exits 130 and a
    SIGTERM that `sigterm_as_interrupt` turned into Terminated 143, each with what the library noted."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RunFinished as e:
            console.print(str(e), highlight=False, soft_wrap=True)
        except EdgePruneError as e:
            if state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {with_notes(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            # Ray re-raises what a handler raised inside ray.wait as a plain KeyboardInterrupt: the flag says
            stopped = isinstance(e, Terminated) or _sigterm["seen"]
            err.print(with_notes(e, "terminated" if stopped else "interrupted"), highlight=False, soft_wrap=True)
            raise typer.Exit(143 if stopped else 130) from None

    return wrapper


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so that `kill PID` of a
    background job stops it as Ctrl-C does (what it started is cleaned up, what it records says so); elsewhere,
    or where something else already handles SIGTERM, the block runs as it is."""
    from .. import signals

    def terminate(signum, frame) -> None:
        _sigterm["seen"] = True
        raise Terminated()

    _sigterm["seen"] = False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return
    with signals.handled_by(terminate, signal.SIGTERM):
        yield


_sigterm = {"seen": False}  # set by sigterm_as_interrupt's handler, read by handled


@contextlib.contextmanager
def progress_bars() -> Iterator:
    """The Reporter the library's slow steps report to: rich bars and notes on stderr, nothing with --quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..progress import SILENT, Reporter

    if state["quiet"]:
        yield SILENT
        return

    class Bars(Reporter):
        def __init__(self, bars: Progress):
            self.bars, self.tasks = bars, {}

        def update(self, task: str, done: int, total: int | None = None, status: str = "") -> None:
            if task not in self.tasks:
                self.tasks[task] = self.bars.add_task(task, total=total, status=status)
            self.bars.update(self.tasks[task], completed=done, total=total, status=status)

        def end(self, task: str) -> None:
            self.tasks.pop(task, None)  # its bar stays on screen; the same name later starts a new one

        def note(self, text: str) -> None:
            self.bars.console.print(text, highlight=False, soft_wrap=True)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=err) as bars:
        yield Bars(bars)


def with_notes(e: BaseException, text: str | None = None) -> str:
    """The message with what the library noted on the way out (e.g. which run folder was kept)."""
    return "; ".join([text if text is not None else str(e), *getattr(e, "__notes__", [])])


# Options shared by every command that builds a model and its data.
Model = Annotated[str, typer.Option("--model", "-m", help="Model name (see `edgeprune models`).")]
Dataset = Annotated[str, typer.Option("--dataset", "-d", help="fashion-mnist, mnist, cifar10 (the official "
                                      "files, else the JPEG q75 copy that `make data` prepares), cifar100, "
                                      "imagefolder or synthetic.")]
DataRoot = Annotated[Path | None, typer.Option(help="Folder holding the data set's files.")]
Subset = Annotated[int | None, typer.Option(help="Train on the first N samples of a fixed shuffle.")]
TestSubset = Annotated[int | None, typer.Option(help="Evaluate on the first N test samples.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Training batch size.")]
Download = Annotated[bool, typer.Option(help="Download the data set if it is not found.")]
Epochs = Annotated[int, typer.Option("--epochs", "-e", help="Training epochs.")]
Name = Annotated[str | None, typer.Option("--name", "-n", help="Run name (default: <model>-<dataset>).")]
RunsDir = Annotated[Path, typer.Option(help="Folder holding run folders.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run of the same name.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Ints = Annotated[list[int] | None, typer.Option()]
Lr = Annotated[float, typer.Option(help="Initial learning rate (SGD).")]
Momentum = Annotated[float, typer.Option(help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(help="L2 weight decay.")]
Schedule = Annotated[str, typer.Option(help="cosine, step (×0.1 at 50 % and 75 %) or constant.")]
LabelSmoothing = Annotated[float, typer.Option(help="Label smoothing of the loss.")]
StepsPerEpoch = Annotated[int | None, typer.Option(help="Cap the batches per epoch.")]
WarmupEpochs = Annotated[float, typer.Option(help="Multiply --schedule by a linear ramp from 1/W to 1 over "
                                             "the first W batches, W = this many epochs' worth (fractions "
                                             "allowed); 1-2 lets VGG-16 with batch norm train at lr 0.1.")]
Seed = Annotated[int, typer.Option(help="Seed of initialisation, shuffling and augmentation.")]
Precision = Annotated[str, typer.Option(help="Training arithmetic: fp32, or bf16 (autocast; weights, optimiser "
                                        "and evaluation stay fp32): about 2x faster on CPUs with AVX512-BF16 "
                                        "or AMX.")]
NumClasses = Annotated[int | None, typer.Option(help="Check the data set has this many classes.")]
InChannels = Annotated[int | None, typer.Option(help="Check the data has this many channels.")]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
MeasureRuns = Annotated[int, typer.Option(help="Timed runs per latency figure.")]
Quantize = Annotated[str | None, typer.Option(help="int8: also quantise the finished run's model.onnx (as "
                                             "`edgeprune quantize RUN`: static, 256 calibration images) into the "
                                             "run <name>-int8.")]
Threads = Annotated[str, typer.Option(help="CPU threads of the heavy steps (pruning, training, surgery): a count, "
                                      "or auto (the CPUs this process may use that other processes leave free "
                                      "now). Recorded in the run; latency settings are separate (--measure-threads).")]


# Options of every command that trains a model, declared once and appended to each such command.
TRAINING_OPTIONS = [
    ("model", Model, "resnet20"), ("dataset", Dataset, "fashion-mnist"), ("data_root", DataRoot, None),
    ("subset", Subset, None), ("test_subset", TestSubset, None), ("batch_size", BatchSize, 128),
    ("download", Download, False), ("epochs", Epochs, 1), ("lr", Lr, 0.1), ("momentum", Momentum, 0.9),
    ("weight_decay", WeightDecay, 5e-4), ("schedule", Schedule, "cosine"), ("label_smoothing", LabelSmoothing, 0.0),
    ("steps_per_epoch", StepsPerEpoch, None), ("warmup_epochs", WarmupEpochs, 0.0), ("seed", Seed, 0),
    ("precision", Precision, "fp32"), ("num_classes", NumClasses, None), ("in_channels", InChannels, None),
    ("device", Device, "cpu"),
    ("name", Name, None), ("runs_dir", RunsDir, Path("runs")), ("overwrite", Overwrite, False),
    ("resume", Resume, False), ("measure_batch", Ints, None), ("measure_threads", Ints, None),
    ("measure_runs", MeasureRuns, 30), ("threads", Threads, "auto"), ("quantize", Quantize, None),
]


# What a run started with --from takes from its source run, not from flags.
FROM_SOURCE = ("model", "dataset", "data_root", "subset", "test_subset", "batch_size", "download", "epochs", "lr",
               "momentum", "weight_decay", "schedule", "label_smoothing", "steps_per_epoch", "warmup_epochs", "seed",
               "precision", "num_classes", "in_channels")


def training_options(fn):
    """Give `fn(..., **args)` the training options as keyword parameters typer can see."""
    sig = inspect.signature(fn, eval_str=True)  # resolve the postponed annotations typer needs
    own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    clash = sorted({p.name for p in own} & {n for n, _, _ in TRAINING_OPTIONS})
    if clash:
        raise TypeError(f"{fn.__name__}: option(s) {', '.join(clash)} clash with the training options; rename them")
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
              for n, a, d in TRAINING_OPTIONS]
    fn.__signature__ = sig.replace(parameters=own + shared)
    return fn


def options_of(cls: type):
    """Give `fn(..., **args)` a --flag for every field of dataclass `cls` that carries help text
    (field metadata "help"; "required": no default), typed, defaulted and explained as the field is, ahead of the
    options it already has: the command's flags are generated from the options it fills, never written twice."""
    hints = typing.get_type_hints(cls)

    def add(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own}
        flags = []
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata or f.name in taken:
                continue
            required = f.metadata.get("required", False)
            hint = hints[f.name]
            if required and typing.get_origin(hint) in (typing.Union, types.UnionType):  # never None: drop it
                hint = typing.Union[tuple(a for a in typing.get_args(hint) if a is not type(None))]  # noqa: UP007
            option = typer.Option(f"--{f.name.replace('_', '-')}", help=f.metadata["help"])
            if required:
                default = inspect.Parameter.empty
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = f.default
            flags.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[hint, option],
                                           default=default))
        rest = [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
        # required flags first (a keyword-only parameter without a default may come anywhere, but reads best there)
        flags.sort(key=lambda p: p.default is not inspect.Parameter.empty)
        fn.__signature__ = sig.replace(parameters=own + flags + rest)
        return fn

    return add


def start_run(command: str, args: dict, method: dict | None = None) -> None:
    """Build the RunConfig from a command's options, run the job, print its report."""
    from .. import jobs, kinds, runs
    from ..train import TrainConfig

    a = args
    data = {"name": a["dataset"], "root": str(a["data_root"]) if a["data_root"] else None,
            "batch_size": a["batch_size"], "subset": a["subset"], "test_subset": a["test_subset"],
            "download": a["download"], "seed": a["seed"]}
    cfg = jobs.RunConfig(
        command=command, model=a["model"], data=data,
        train=TrainConfig(epochs=a["epochs"], lr=a["lr"], momentum=a["momentum"], weight_decay=a["weight_decay"],
                          schedule=a["schedule"], label_smoothing=a["label_smoothing"], seed=a["seed"],
                          steps_per_epoch=a["steps_per_epoch"], warmup_epochs=a["warmup_epochs"],
                          precision=a["precision"]),
        measure=jobs.MeasureOptions(batch_sizes=tuple(a["measure_batch"] or (1,)),
                                    threads=tuple(a["measure_threads"] or (1,)), runs=a["measure_runs"]),
        num_classes=a["num_classes"], in_channels=a["in_channels"], method=method or {}, device=a["device"],
        threads=a["threads"],
    )
    default = f"{a['model'].replace(':', '_').replace('/', '_')}-{a['dataset']}" + (
        f"-{method['name']}" if method else "")
    if method and "source" in method:  # a method that starts from a trained run takes what the run was
        cfg = jobs.from_trained(cfg)
        default = f"{Path(method['source']).name}-{method['name']}"
    run_dir = runs.run_path(a["runs_dir"], default if a["name"] is None else a["name"])
    int8 = _quantize_after(a["quantize"], method, run_dir)
    with progress_bars() as progress:
        report = jobs.run(cfg, run_dir, overwrite=a["overwrite"], resume=a["resume"], progress=progress)
    print_report(report, run_dir)
    if int8 is not None:
        qcfg = kinds.get("quantize").config(run_dir, measure_runs=a["measure_runs"], threads=a["threads"])
        with progress_bars() as progress:
            report = jobs.run(qcfg, int8, overwrite=a["overwrite"], progress=progress)
        print_report(report, int8)


def _quantize_after(precision: str | None, method: dict | None, run_dir: Path) -> Path | None:
    """The run --quantize makes beside `run_dir` (None without it); refused before any work where it cannot."""
    from .. import runs
    from ..methods import registry

    if precision is None:
        return None
    if precision != "int8":
        raise ConfigError(f"--quantize {precision!r}: the precision edgeprune quantises to is int8")
    if method and registry.get(method["name"]).kind == "levels":
        raise ConfigError(f"--quantize makes one INT8 run; {method['name']} makes a run per level: quantise "
                          "the levels you want with `edgeprune quantize RUN/level_NN` after it")
    return runs.run_path(run_dir.parent, f"{run_dir.name}-int8")


def print_report(report, run_dir: Path) -> None:
    from ..report import profile_table

    if report.levels:  # IMP: one column per level
        profiles = {f"level {lv.level} (density {lv.density:.3f})": lv.profile for lv in report.levels}
        title = f"IMP levels on {report.data}"
    else:
        profiles = {report.run: report.profile}
        title = f"{report.profile.model} on {report.data}"
    console.print(profile_table(profiles, title=title))
    if report.budget:
        b = report.budget
        console.print(f"budget search: {len(b['probes'])} probes, sparsity {b['found_sparsity']:.4f} chosen")
    if report.prune_seconds is not None and report.train:
        console.print(f"pruning took {report.prune_seconds:.2f} s; training {report.train['seconds']:.1f} s")
    console.print(f"run saved in [bold]{run_dir}[/]")

