"""`edgeprune models|train|prune|shrink`: the models there are, and the commands that make a run from a model
(`prune` takes the flags of every registered pruning method)."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from ..errors import ConfigError, EdgePruneError
from .common import (
    FROM_SOURCE,
    TRAINING_OPTIONS,
    MeasureRuns,
    Overwrite,
    Threads,
    console,
    err,
    handled,
    print_report,
    progress_bars,
    start_run,
    state,
    training_options,
)


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
    app.command()(train)
    app.command(cls=_PruneCommand, short_help="Prune a model, train it with its masks kept, then save, export and "
                                              "measure it into runs/NAME/.")(prune)
    app.command()(shrink)


@handled
def models_cmd(
    filter: Annotated[str | None, typer.Argument(help="Show only names containing this text.")] = None,
) -> None:
    """List the models `--model` accepts.

    Example: [bold]edgeprune models resnet[/]
    """
    from .. import models

    names = [n for n in models.list_models() if filter is None or filter in n]
    def line(name: str) -> str:  # a model of another task is named with it: the classification commands refuse it
        task = models.task_of(name)
        return name if task == "classify" else f"{name}  ({task}: `{models.registry.TASK_COMMANDS[task]}`)"

    console.print("\n".join(map(line, names)), highlight=False)
    console.print(
        "\nAlso: any `package.module:function` returning an nn.Module (called with num_classes, in_channels).",
        style="dim",
    )


@handled
@training_options
def train(**args) -> None:
    """Train a dense model, then save, export and measure it into runs/NAME/.

    Example: [bold]edgeprune train -m resnet20 -d fashion-mnist --subset 5000 -e 1 --name dense[/]
    """
    start_run("train", args)


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
                if state["debug"]:
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
        from ..methods import registry

        self._methods_listed = True
        self._help += "\n\nMethods (--method):\n" + "\n".join(
            f"  [bold]{n}[/]: {registry.get(n).summary}" for n in registry.list_methods())
        return self._help

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value


def _method_options() -> dict[str, list[tuple[str, object, object]]]:
    """{option: [(method, dataclass field, type)]} over every registered method."""
    from ..methods import registry

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

    taken = {n for n, _, _ in TRAINING_OPTIONS} | set(inspect.signature(prune).parameters)
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


@handled
@training_options
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
    from ..methods import registry

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
        own = [f"--{n.replace('_', '-')}" for n in FROM_SOURCE  # typer's own click: its enum, by name
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
    start_run("prune", args, entry)


@handled
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
    from .. import jobs, lifecycle, runs
    from ..kinds import shrink as kind

    sources = lifecycle.levels_of(run) if lifecycle.has_levels(run) else [run]
    base = f"{run.resolve().name}-shrunk" if name is None else name
    for source in sources:
        run_dir = runs.run_path(runs_dir or run.parent, f"{base}-{source.name}" if source != run else base)
        cfg = kind.config(source, fold_constants=fold_constants, round_to=round_to, measure_runs=measure_runs,
                          threads=threads)
        with progress_bars() as progress:
            report = jobs.run(cfg, run_dir, overwrite=overwrite, progress=progress)
        print_report(report, run_dir)
        v, d = report.vs_source, report.details
        how = {"side by side": "timed side by side", "profiles": "from the two runs' own timings"}
        speedup = ("n/a" if v["ort_b1_speedup"] is None
                   else f"{v['ort_b1_speedup']:.2f}× ({how[v['ort_b1_timing']]})")
        console.print(f"vs the sparse model: {v['params_x_smaller']:.2f}× fewer parameters, "
                      f"{v['bytes_x_smaller']:.2f}× smaller, ORT batch-1 speed-up {speedup}; largest "
                      f"output difference {d['max_abs_error']:.2e}; took {d['shrink_seconds']:.2f} s")
