"""The `edgeprune` command. It parses options, calls the library, prints. No logic lives here."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand

# Only what parsing needs is imported here: `--help`, `--version` and argument errors answer without torch
# (importing it takes seconds on a busy machine). Commands import the library when they run.
from . import __version__
from .errors import ConfigError, EdgePruneError, RunFinished

app = typer.Typer(
    help="Prune deep neural networks for edge devices, and measure what each variant costs and keeps.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()
err = Console(stderr=True)
_state = {"debug": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeprune {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state.update(debug=debug, quiet=quiet)


def _handled(fn):
    """Print an EdgePruneError as one line and exit 2 (the traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RunFinished as e:
            console.print(str(e), highlight=False, soft_wrap=True)
        except EdgePruneError as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {_with_notes(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            err.print(_with_notes(e, "interrupted"), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def _progress() -> Iterator:
    """The Reporter the library's slow steps report to: rich bars and notes on stderr, nothing with --quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .progress import SILENT, Reporter

    if _state["quiet"]:
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


def _with_notes(e: BaseException, text: str | None = None) -> str:
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
Seed = Annotated[int, typer.Option(help="Seed of initialisation, shuffling and augmentation.")]
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
_TRAINING_OPTIONS = [
    ("model", Model, "resnet20"), ("dataset", Dataset, "fashion-mnist"), ("data_root", DataRoot, None),
    ("subset", Subset, None), ("test_subset", TestSubset, None), ("batch_size", BatchSize, 128),
    ("download", Download, False), ("epochs", Epochs, 1), ("lr", Lr, 0.1), ("momentum", Momentum, 0.9),
    ("weight_decay", WeightDecay, 5e-4), ("schedule", Schedule, "cosine"), ("label_smoothing", LabelSmoothing, 0.0),
    ("steps_per_epoch", StepsPerEpoch, None), ("seed", Seed, 0), ("num_classes", NumClasses, None),
    ("in_channels", InChannels, None), ("device", Device, "cpu"), ("name", Name, None),
    ("runs_dir", RunsDir, Path("runs")), ("overwrite", Overwrite, False), ("resume", Resume, False),
    ("measure_batch", Ints, None), ("measure_threads", Ints, None), ("measure_runs", MeasureRuns, 30),
    ("threads", Threads, "auto"), ("quantize", Quantize, None),
]


# What a run started with --from takes from its source run, not from flags.
_FROM_SOURCE = ("model", "dataset", "data_root", "subset", "test_subset", "batch_size", "download", "epochs", "lr",
                "momentum", "weight_decay", "schedule", "label_smoothing", "steps_per_epoch", "seed", "num_classes",
                "in_channels")


def _training_options(fn):
    """Give `fn(..., **args)` the training options as keyword parameters typer can see."""
    sig = inspect.signature(fn, eval_str=True)  # resolve the postponed annotations typer needs
    own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
              for n, a, d in _TRAINING_OPTIONS]
    fn.__signature__ = sig.replace(parameters=own + shared)
    return fn


def _start(command: str, args: dict, method: dict | None = None) -> None:
    """Build the RunConfig from a command's options, run the job, print its report."""
    from . import jobs, runs
    from .train import TrainConfig

    a = args
    data = {"name": a["dataset"], "root": str(a["data_root"]) if a["data_root"] else None,
            "batch_size": a["batch_size"], "subset": a["subset"], "test_subset": a["test_subset"],
            "download": a["download"], "seed": a["seed"]}
    cfg = jobs.RunConfig(
        command=command, model=a["model"], data=data,
        train=TrainConfig(epochs=a["epochs"], lr=a["lr"], momentum=a["momentum"], weight_decay=a["weight_decay"],
                          schedule=a["schedule"], label_smoothing=a["label_smoothing"], seed=a["seed"],
                          steps_per_epoch=a["steps_per_epoch"]),
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
    with _progress() as progress:
        report = jobs.JOBS[command](cfg, run_dir, overwrite=a["overwrite"], resume=a["resume"], progress=progress)
    _print_report(report, run_dir)
    if int8 is not None:
        qcfg = jobs.quantize_config(run_dir, measure_runs=a["measure_runs"], threads=a["threads"])
        with _progress() as progress:
            report = jobs.quantize(qcfg, int8, overwrite=a["overwrite"], progress=progress)
        _print_report(report, int8)


def _quantize_after(precision: str | None, method: dict | None, run_dir: Path) -> Path | None:
    """The run --quantize makes beside `run_dir` (None without it); refused before any work where it cannot."""
    from . import runs
    from .methods import registry

    if precision is None:
        return None
    if precision != "int8":
        raise ConfigError(f"--quantize {precision!r}: the precision edgeprune quantises to is int8")
    if method and registry.get(method["name"]).kind == "levels":
        raise ConfigError(f"--quantize makes one INT8 run; {method['name']} makes a run per level: quantise "
                          "the levels you want with `edgeprune quantize RUN/level_NN` after it")
    return runs.run_path(run_dir.parent, f"{run_dir.name}-int8")


def _print_report(report, run_dir: Path) -> None:
    from .report import profile_table

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


@app.command("models")
@_handled
def models_cmd(
    filter: Annotated[str | None, typer.Argument(help="Show only names containing this text.")] = None,
) -> None:
    """List the models `--model` accepts.

    Example: [bold]edgeprune models resnet[/]
    """
    from . import models

    names = [n for n in models.list_models() if filter is None or filter in n]
    def line(name: str) -> str:  # a model of another task is named with it: the classification commands refuse it
        task = models.task_of(name)
        return name if task == "classify" else f"{name}  ({task}: `{models.registry.TASK_COMMANDS[task]}`)"

    console.print("\n".join(map(line, names)), highlight=False)
    console.print(
        "\nAlso: any `package.module:function` returning an nn.Module (called with num_classes, in_channels).",
        style="dim",
    )


@app.command()
@_handled
@_training_options
def train(**args) -> None:
    """Train a dense model, then save, export and measure it into runs/NAME/.

    Example: [bold]edgeprune train -m resnet20 -d fashion-mnist --subset 5000 -e 1 --name dense[/]
    """
    _start("train", args)


class _PruneCommand(TyperCommand):
    """`prune` takes the options of every registered method (methods.registry) as flags. They are made the
    first time prune's options are needed: registering the methods imports torch, which `edgeprune --help`,
    `--version` and the other commands need not wait for, and a method registered by a plugin is included."""

    @property
    def params(self) -> list:
        if not getattr(self, "_with_methods", False):
            self._with_methods = True
            try:
                self._params = [*self._params, *_method_flags()]
            except EdgePruneError as e:  # a method module that cannot be imported: one line, as everywhere
                if _state["debug"]:
                    raise
                err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
        return self._params

    @params.setter
    def params(self, value: list) -> None:
        self._params = value

    def invoke(self, ctx: typer.Context):
        # typer hands the function only the parameters it made itself: pass the methods' ones beside them
        options = _method_options()
        ctx.meta["method_options"] = {k: ctx.params.pop(k) for k in list(ctx.params) if k in options}
        return super().invoke(ctx)

    @property
    def help(self) -> str | None:
        if self._help is None or getattr(self, "_methods_listed", False):
            return self._help
        from .methods import registry

        self._methods_listed = True
        self._help += "\n\nMethods (--method):\n" + "\n".join(
            f"  [bold]{n}[/]: {registry.get(n).summary}" for n in registry.list_methods())
        return self._help

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value


def _method_options() -> dict[str, list[tuple[str, object, object]]]:
    """{option: [(method, dataclass field, type)]} over every registered method."""
    from .methods import registry

    owners: dict[str, list] = {}
    for name in registry.list_methods():
        m = registry.get(name)
        hints = typing.get_type_hints(m.options)
        for option, f in m.option_fields().items():
            owners.setdefault(option, []).append((name, f, hints[option]))
    return owners


def _method_flags() -> list:
    """A --flag for every method option, each defaulting to None ("not given": the method's default applies),
    made by typer itself from a signature so that they read like every other flag."""
    import dataclasses

    taken = {n for n, _, _ in _TRAINING_OPTIONS} | set(inspect.signature(prune).parameters)
    params = []
    for option, owners in _method_options().items():
        if option in taken:
            raise ConfigError(f"method option {option!r} of {owners[0][0]} clashes with a prune flag; rename it")
        field, hint = owners[0][1], owners[0][2]
        defaults = sorted({repr(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                           for _, f, _ in owners})
        where = ", ".join(n for n, _, _ in owners)
        text = f"{field.metadata.get('help', '')} ({where}; default {' / '.join(defaults)})"
        kind = hint if type(None) in typing.get_args(hint) else hint | None
        params.append(inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            kind, typer.Option(f"--{option.replace('_', '-')}", help=text, show_default=False)]))

    def flags(**_) -> None: ...

    flags.__signature__ = inspect.Signature(params)
    maker = typer.Typer(add_completion=False)
    maker.command()(flags)
    return [p for p in typer.main.get_command(maker).params if p.name in _method_options()]


@app.command(cls=_PruneCommand, short_help="Prune a model, train it with its masks kept, then save, export and "
                                           "measure it into runs/NAME/.")
@_handled
@_training_options
def prune(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="The pruning method: one of those listed above.")],
    target_latency: Annotated[float | None, typer.Option(help="Find the least sparsity whose model runs within "
                                                         "this many ms (ONNX Runtime p50, measured here).")] = None,
    target_size: Annotated[float | None, typer.Option(help="… whose fp32 model is at most this many MiB.")] = None,
    target_macs: Annotated[float | None, typer.Option(help="… whose model needs at most this many MACs.")] = None,
    target_batch: Annotated[int, typer.Option(help="Batch size of the latency budget.")] = 1,
    target_threads: Annotated[int, typer.Option(help="Threads of the latency budget.")] = 1,
    target_params: Annotated[float | None, typer.Option(help="… whose model has at most this many parameters "
                                                        "(a physically smaller one: taylor, reconvene).")] = None,
    source: Annotated[Path | None, typer.Option("--from", help="A finished `edgeprune train` run that a method "
                                                "pruning a trained model (taylor) starts from; the model, data and "
                                                "training settings are the run's.")] = None,
    **args,
) -> None:
    """Prune a model, train it with its masks kept, then save, export and measure it into runs/NAME/.

    Examples:
      [bold]edgeprune prune --method synflow --sparsity 0.9 -m resnet20 -d fashion-mnist -e 1[/]
      [bold]edgeprune prune --method reconvene --criterion synflow --sparsity 0.9 -m vgg16 -e 1[/]
      [bold]edgeprune prune --method imp --levels 3 --rewind-iter 100 -m resnet20 -e 1[/]
      [bold]edgeprune prune --method reconvene --criterion magnitude --target-latency 0.2 -m resnet20[/]

      [bold]edgeprune prune --method taylor --from runs/dense --max-drop 1 --step-fraction 0.05 --name taylor[/]

    With a --target-* budget the sparsity is searched (bisection over measured probes) instead of given;
    taylor stops at the first step that meets it.
    Each method takes the options marked with its name below; the others do not apply to it.
    """
    from .methods import registry

    chosen = registry.get(method)
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in ctx.meta["method_options"].items()
             if v is not None and v != ()}
    foreign = sorted(set(given) - set(chosen.option_fields()))
    if foreign:
        flags = ", ".join(f"--{o.replace('_', '-')}" for o in foreign)
        raise ConfigError(f"{flags} does not apply to --method {method}; its options: "
                          + (", ".join(f"--{o.replace('_', '-')}" for o in chosen.option_fields()) or "none"))
    entry = registry.entry(method, given)
    if source is not None:
        entry["source"] = str(source)
        own = [f"--{n.replace('_', '-')}" for n in _FROM_SOURCE  # typer's own click: its enum, by name
               if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") != "DEFAULT"] * (chosen.kind == "trained")
        if own:
            raise ConfigError(f"{', '.join(own)} does not apply with --from: the model, data and training settings "
                              f"are those of {source}")
    targets = {k: v for k, v in {"latency": target_latency, "size": target_size, "macs": target_macs,
                                 "params": target_params}.items() if v is not None}
    if len(targets) > 1:
        raise EdgePruneError(f"give one budget, not {len(targets)} ({', '.join('--target-' + k for k in targets)})")
    if targets:
        (metric, value), = targets.items()
        entry["target"] = {"metric": metric, "value": value, "batch_size": target_batch, "threads": target_threads}
    _start("prune", args, entry)


@app.command()
@_handled
def shrink(
    run: Annotated[Path, typer.Argument(help="A sparse run folder (from `edgeprune prune`), an IMP level_NN, or a "
                                        "whole IMP run (every level is shrunk).")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="The new run (default: <run>-shrunk; for an IMP "
                                             "run, <name>-level_NN per level).")] = None,
    fold_constants: Annotated[bool, typer.Option(help="Fold the constant output of removed channels into "
                                                 "their consumers (exact); off drops it, as DNNShifter does.")]
    = True,
    round_to: Annotated[int | None, typer.Option(help="Keep channel counts multiples of this.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Folder for the new run (default: beside RUN).")] = None,
    overwrite: Overwrite = False,
    measure_runs: MeasureRuns = 30,
    threads: Threads = "auto",
) -> None:
    """Remove every channel a sparse run's masks emptied (DNNShifter) into a new, smaller run.

    The input run is never modified. Reports the size and speed against the sparse model and the largest
    output difference between them. Given a whole IMP run, shrinks each of its pruned levels into a run of
    its own: the portfolio of DNNShifter.

    Example: [bold]edgeprune shrink runs/imp/level_03 --name imp3-small[/]
    """
    from . import jobs, runs

    sources = jobs.imp_levels(run) if jobs.is_imp_run(run) else [run]
    base = f"{run.resolve().name}-shrunk" if name is None else name
    for source in sources:
        run_dir = runs.run_path(runs_dir or run.parent, f"{base}-{source.name}" if source != run else base)
        cfg = jobs.shrink_config(source, fold_constants=fold_constants, round_to=round_to, measure_runs=measure_runs,
                                 threads=threads)
        with _progress() as progress:
            report = jobs.shrink(cfg, run_dir, overwrite=overwrite, progress=progress)
        _print_report(report, run_dir)
        v, d = report.vs_source, report.details
        how = {"side by side": "timed side by side", "profiles": "from the two runs' own timings"}
        speedup = ("n/a" if v["ort_b1_speedup"] is None
                   else f"{v['ort_b1_speedup']:.2f}× ({how[v['ort_b1_timing']]})")
        console.print(f"vs the sparse model: {v['params_x_smaller']:.2f}× fewer parameters, "
                      f"{v['bytes_x_smaller']:.2f}× smaller, ORT batch-1 speed-up {speedup}; largest "
                      f"output difference {d['max_abs_error']:.2e}; took {d['shrink_seconds']:.2f} s")


@app.command()
@_handled
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
    from .report import Retime, collect, profile_table, verdicts
    from .report import retime as retime_rows

    rows = collect(runs)
    timing = "the runs' own timings"
    if retime:
        with _progress() as progress:
            retime_rows(rows, Retime(rounds=5, runs=20, settings=((1, 1),)), progress)
        timing = "ONNX Runtime, timed side by side"
    profiles = {r.name: r.profile for r in rows}
    console.print(profile_table(profiles, title="runs compared"))
    for line in verdicts(profiles, timing) if len(profiles) > 1 else []:
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
@_handled
def sweep(
    spec: Annotated[Path, typer.Argument(help="A sweep spec (YAML): models, data, methods, sparsities, seeds, "
                                         "training budget.")],
    executor: Annotated[str, typer.Option(help="local (one cell at a time, here) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray: join the cluster at this address (host:port); without "
                                                "it a local Ray instance is started.")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (default: the spec's `out`, else "
                                             "runs/sweeps/<name>).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="Ray: CPUs of the local instance (default: all).")] = None,
) -> None:
    """Run every cell of a sweep spec as a run of its own; re-running skips finished cells.

    A failing cell is recorded with its error in sweep.json and the others go on; the exit code is 1 if any
    failed. Then `edgeprune report SWEEP_FOLDER` makes the tables and plots.

    Example: [bold]edgeprune sweep benchmarks/specs/smoke.yaml && edgeprune report runs/sweeps/smoke[/]
    """
    from .sweep import run_sweep

    with _progress() as progress:
        summary = run_sweep(spec, out=out, executor=executor, address=address, progress=progress, num_cpus=num_cpus)
    counts = summary["counts"]
    console.print("sweep finished: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) +
                  f" — results in [bold]{summary.get('out', out)}[/]")
    for name, cell in summary["cells"].items():
        if cell["status"] == "failed":
            err.print(f"[red]failed[/] {name}: {cell['error']['type']}: {cell['error']['message']}", highlight=False)
    if counts.get("failed", 0):
        raise typer.Exit(1)


@app.command()
@_handled
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
    from .report import Retime, write_report

    settings = tuple(_batch_threads(v) for v in retime_at) if retime_at else None
    if settings and not retime:
        raise ConfigError("--retime-at chooses what --retime re-measures: pass --retime with it")
    opts = Retime(rounds=retime_rounds, runs=retime_runs, settings=settings) if retime else None
    with _progress() as progress:
        files = write_report(paths, out, title=title, layer_runs=layer_run, retime_opts=opts, tolerance=tolerance,
                             progress=progress)
    console.print(f"wrote {len(files)} files to {out}: open [bold]{files['html']}[/] in a browser")


def _batch_threads(text: str) -> tuple[int, int]:
    b, sep, t = text.lower().partition("x")
    if not (sep and b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 0):
        raise ConfigError(f"--retime-at {text!r} is not BATCHxTHREADS with positive numbers, e.g. 1x1 or 32x2")
    return int(b), int(t)


# Commands on a saved run (eval, measure, export, rerun) and of the deployment half (quantize, portfolio, serve,
# partition, ...) live in `edgeprune.commands.<name>`, each a module with `register(app)` that imports only typer at
# module level (so `--help` stays torch-free) and uses this module's helpers (`_handled`, `_progress`, `console`,
# `RunsDir`, ...). Add a module's name here.
COMMAND_MODULES: tuple[str, ...] = ("saved", "quantize", "portfolio", "serve", "partition", "detect", "fl",
                                     "neuroflux")
# Run as `python -m edgeprune.cli`, this file is `__main__` and the command modules' `from ..cli import ...` load it
# a second time as `edgeprune.cli`: only that copy registers them (registering from both would import a command
# module while it is still being imported), and `__main__` hands over to it below.
if __name__ != "__main__":
    for _name in COMMAND_MODULES:
        __import__(f"{__package__}.commands.{_name}", fromlist=["register"]).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    from edgeprune.cli import main as _main

    sys.exit(_main())
