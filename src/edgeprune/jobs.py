"""Whole runs, as the CLI, sweeps and `edgeprune rerun` start them: a `RunConfig` in, a run folder (and its
`RunReport`) out. `run` dispatches a config to the job of its kind (kinds/: the registry of every way a run folder is
made); the two kinds declared here are dense training and pruning (every method of methods/registry.py).

A run folder holds config.json (the RunConfig: enough to repeat the run), model.pt, model.onnx,
report.json (the RunReport, written last) and log.jsonl; record.py reads and writes the two records,
runs.py the folder. The CLI only parses options into a RunConfig.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from . import budget, data, export, files, kinds, masks, runs
from .errors import ConfigError
from .lifecycle import (  # noqa: F401  (public: jobs.build, jobs.load ...)
    build,
    data_fields,
    finish,
    fresh_model,
    load,
    load_profile,
    not_the_source,
    save_masks,
    source_config,
)
from .lifecycle import run_folder as _open
from .lifecycle import thread_policy as _threads
from .methods import registry
from .progress import Reporter, reporter
from .record import (
    Level,
    MeasureOptions,
    RunConfig,
    RunReport,
    read_config,
    write_report,
)
from .train import Callback, fit

__all__ = ["MeasureOptions", "RunConfig", "RunReport", "prune", "rerun", "run", "train"]


@kinds.register("train", trained=True)
def train(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          progress: Reporter | None = None) -> RunReport:
    """Train a dense model and measure it. The run is opened (locked, checked writable) before any work."""
    with _threads(cfg, run_dir, resume) as cfg, _open(cfg, run_dir, overwrite, resume) as rf:
        model, bundle = build(cfg)
        hist = fit(model, bundle.train, cfg.train, val_loader=None, run_dir=rf.path,
                   resume=(rf.path / runs.CHECKPOINT).exists(), device=cfg.device, progress=progress)
        report = finish(model, bundle, cfg, rf.path, {"train": {"epochs": hist.epochs, "seconds": hist.seconds}},
                        rf.name)
        write_report(rf.path / runs.REPORT, report)
    return report


@kinds.register("prune")
def prune(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          progress: Reporter | None = None) -> RunReport:
    """Prune with the registered method cfg.method["name"] (at initialisation, or a schedule of levels such as
    IMP's), train with the masks kept, measure."""
    method = registry.get(cfg.method.get("name"))
    opts = method.make_options({k: v for k, v in cfg.method.items() if k not in registry.NOT_OPTIONS})
    target = budget.Target(**cfg.method["target"]) if cfg.method.get("target") else None
    if target is not None and method.kind in ("levels", "in_training"):  # refused before anything is written
        takes = registry.list_methods("init") + registry.list_methods("trained")
        raise ConfigError(f"a budget (--target-*) needs a method that prunes at initialisation or from a trained "
                          f"run ({', '.join(takes)}), not {method.name}")
    if (method.kind == "trained") != ("source" in cfg.method):
        raise ConfigError(f"--method {method.name} starts from a trained run: pass --from RUN" if method.kind ==
                          "trained" else f"--from applies to methods that start from a trained run "
                          f"({', '.join(registry.list_methods('trained'))}), not {method.name}")
    if method.kind == "trained":
        return _from_trained(cfg, method, opts, target, run_dir, overwrite, resume, progress)
    with _threads(cfg, run_dir, resume) as cfg, _open(cfg, run_dir, overwrite, resume) as rf:
        model, bundle = build(cfg)
        if method.kind == "levels":
            levels = method.entry(model, bundle.train, cfg.train, opts, rf.path,
                                  finish=lambda m, out, info: _finish_level(m, bundle, cfg, out, info),
                                  device=cfg.device, progress=progress)
            report = RunReport(run=rf.name, **data_fields(bundle), method=method.name,
                               options=opts.to_dict(),
                               levels=[Level(r.level, r.density, r.profile) for r in levels])
        elif method.kind == "in_training":
            callbacks = _pruner(cfg, method, opts, model, bundle, rf, progress)
            hist = fit(model, bundle.train, cfg.train, run_dir=rf.path, resume=(rf.path / runs.CHECKPOINT).exists(),
                       device=cfg.device, progress=progress, callbacks=callbacks)
            model = callbacks[0].finalize(model) if hasattr(callbacks[0], "finalize") else model
            report = finish(model, bundle, cfg, rf.path,
                            {**callbacks[0].info, "train": {"epochs": hist.epochs, "seconds": hist.seconds}}, rf.name)
        else:
            model, info = _pruned(cfg, method, opts, target, model, bundle, rf, progress)
            hist = fit(model, bundle.train, cfg.train, run_dir=rf.path, resume=(rf.path / runs.CHECKPOINT).exists(),
                       device=cfg.device, progress=progress)
            report = finish(model, bundle, cfg, rf.path,
                            {**info, "train": {"epochs": hist.epochs, "seconds": hist.seconds}}, rf.name)
        write_report(rf.path / runs.REPORT, report)
    return report


def trained_source(path: str | Path | None, method: str) -> Path:
    """`path`, checked to be a finished dense run (made by `edgeprune train`) that method `method` can start from."""
    source = Path(path) if path is not None else None
    if source is None:
        raise ConfigError(f"--method {method} starts from a trained run: pass --from RUN (a run of `edgeprune train`)")
    if not (source / runs.CONFIG).is_file():
        raise ConfigError(f"--from {source} is not a run folder (no {runs.CONFIG}); pass a run made by "
                          "`edgeprune train`")
    command = read_config(source / runs.CONFIG).command
    if not getattr(kinds.find(command), "trained", False):  # a model trained whole: a dense run, NeuroFlux's exit
        raise ConfigError(f"--from {source} is a {command} run; {method} starts from a trained model: a run made by "
                          "`edgeprune train` or `edgeprune neuroflux`")
    if not runs.is_finished(source):
        raise ConfigError(f"--from {source} is not trained yet (no {runs.REPORT}); finish it first "
                          "(`edgeprune train ... --resume`)")
    return source


def from_trained(cfg: RunConfig) -> RunConfig:
    """`cfg` with the model, data and training of the trained run it starts from (cfg.method["source"])."""
    src = read_config(trained_source(cfg.method.get("source"), cfg.method.get("name")) / runs.CONFIG)
    return replace(cfg, model=src.model, data=dict(src.data), train=src.train, model_kwargs=dict(src.model_kwargs),
                   num_classes=src.num_classes, in_channels=src.in_channels)


def _from_trained(cfg: RunConfig, method: registry.Method, opts, target: budget.Target | None, run_dir: str | Path,
                  overwrite: bool, resume: bool, progress: Reporter | None) -> RunReport:
    """A method that starts from a trained run: it reads the source's model and writes a new run, never the
    source's folder."""
    source = trained_source(cfg.method["source"], method.name)
    not_the_source(source, run_dir)
    own = read_config(source / runs.CONFIG)
    if (own.model, own.data) != (cfg.model, cfg.data):
        raise ConfigError(f"run {source} trained {own.model} on {own.data}, this run names {cfg.model} on {cfg.data}; "
                          "take both from the source run (jobs.from_trained)")
    val_size = getattr(opts, "val_size", None)
    # the dense run never saw the validation samples if it trained on a subset (the split is carved behind it)
    # or held out the same split itself
    if val_size is not None and own.data.get("subset") is None and own.data.get("val_size") != val_size:
        raise ConfigError(f"run {source} trained on every training sample, so none is left for a validation split "
                          f"it never saw; train it with --subset (at most the training samples minus {val_size})")
    model, _ = load(source)
    bundle = data.loaders(**{**cfg.data, **({} if val_size is None else {"val_size": val_size})})
    with _threads(cfg, run_dir, resume) as cfg, _open(cfg, run_dir, overwrite, resume) as rf:
        model, info = method.entry(model, bundle, cfg.train, opts, target, cfg.measure.runs, device=cfg.device,
                                   progress=progress, run_dir=rf.path)
        report = finish(model, bundle, cfg, rf.path, info, rf.name)
        report.source = str(source)
        write_report(rf.path / runs.REPORT, report)
    return report


def _finish_level(model: nn.Module, bundle: data.DataBundle, cfg: RunConfig, out: Path, info: dict) -> RunReport:
    report = finish(model, bundle, cfg, out, info)
    write_report(out / runs.REPORT, report)
    return report


def _pruned(cfg: RunConfig, method: registry.Method, opts, target: budget.Target | None, model: nn.Module,
            bundle: data.DataBundle, rf: runs.RunFolder, progress: Reporter | None) -> tuple[nn.Module, dict]:
    """Prune `model` at initialisation (searching the sparsity for a budget first), and save the result in the
    run folder; a resumed run restores that result instead of pruning again (which can take minutes, and a
    budget search times the machine, so it need not find the same sparsity twice)."""
    saved = rf.path / runs.PRUNED
    if rf.mode == "resume" and saved.is_file():
        pruned, extra = export.load(saved)
        if (rf.path / runs.MASKS).is_file():
            masks.apply(pruned, files.torch_load(rf.path / runs.MASKS, "masks"))
        return pruned, extra["pruning"]
    searched = search_budget(cfg, method, opts, bundle, target, progress) if target is not None else None
    if searched is not None:
        opts = replace(opts, sparsity=searched.sparsity)
    info = prune_at_init(model, method, opts, bundle, progress)
    if searched is not None:
        info["budget"] = {"target": asdict(target), "found_sparsity": searched.sparsity,
                          "probes": searched.probes}
    save_masks(model, rf.path)
    export.save_model(model, saved, extra={"pruning": info})  # last: its presence means pruning finished
    return model, info


def _pruner(cfg: RunConfig, method: registry.Method, opts, model: nn.Module, bundle: data.DataBundle,
            rf: runs.RunFolder, progress: Reporter | None) -> list[Callback]:
    """The callbacks of a method that prunes during training: the method's own, then one keeping the masks in
    force beside every checkpoint. A run resumed from a checkpoint of masked weights gets those masks back first,
    and the record of a pruning already done (saved when the method called `saved`)."""
    saved = rf.path / runs.PRUNED

    def save(m: nn.Module, info: dict) -> None:
        save_masks(m, rf.path)
        export.save_model(m, saved, extra={"pruning": info})

    pruner = method.entry(opts, cfg.train, bundle.train, bundle.input_shape, save, progress)
    checkpoint = rf.path / runs.CHECKPOINT
    if checkpoint.is_file():
        if any(n.endswith("_orig") for n in files.torch_load(checkpoint, "checkpoint").get("param_names", ())):
            masks.apply(model, files.torch_load(rf.path / runs.MASKS, "masks"))
        if saved.is_file():
            pruner.info = export.load(saved)[1]["pruning"]
    else:
        pruner.on_epoch_end(model, 0, {})  # epoch 0 ends before training starts: a method may prune there
    return [pruner, _KeepMasks(rf.path)]


class _KeepMasks(Callback):
    """Saves the masks in force at every epoch end, before the checkpoint: a resumed run re-applies them."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None:
        if next(masks.masked_modules(model), None) is not None:
            save_masks(model, self.run_dir)


def prune_at_init(model: nn.Module, method: registry.Method | str, opts, bundle: data.DataBundle,
                  progress: Reporter | None = None) -> dict:
    """Prune `model` in place with an "init" method; return what it did."""
    method = registry.get(method) if isinstance(method, str) else method
    return method.entry(model, opts, bundle.train, bundle.input_shape, progress=progress)


def search_budget(cfg: RunConfig, method: registry.Method, opts, bundle: data.DataBundle, target: budget.Target,
                  progress: Reporter | None) -> budget.Search:
    """Bisect the sparsity of `opts` until the pruned model meets `target` (see budget.py)."""
    note = reporter(progress).note

    def pruned_at(sparsity: float) -> nn.Module:
        model = fresh_model(cfg, bundle)
        if sparsity > 0:
            prune_at_init(model, method, replace(opts, sparsity=sparsity), bundle)
        return model

    def report(p: dict) -> None:
        what, cost = ("timed again", p["confirmed_cost"]) if p.get("confirmation") else ("probe", p["cost"])
        note(f"  {what}: sparsity {p['sparsity']:.4f} → {target.describe(cost)} "
             f"({'meets' if p['meets'] else 'over'} the budget)")

    note(f"searching the sparsity that meets {target.describe()}")
    # The layer-collapse guard keeps at least max(1, ⌈min_layer_density·n⌉) weights of every layer: stay below
    # what it allows (on small models the one-weight floor dominates).
    sizes = [m.get_parameter(p).numel() for m, p in
             masks.prunable(fresh_model(cfg, bundle), opts.include, opts.exclude).values()]
    need = sum(max(1, math.ceil(opts.min_layer_density * n)) for n in sizes) if opts.min_layer_density > 0 else 0
    ceiling = min(target.max_sparsity, 1 - 2 * opts.min_layer_density, 1 - need / sum(sizes))
    hint = method.budget_hint or budget.UNSTRUCTURED_HINT
    return budget.search(replace(target, max_sparsity=ceiling), pruned_at, bundle.input_shape, progress=report,
                         hint=hint)


def run(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
        progress: Reporter | None = None) -> RunReport:
    """Make the run `cfg` describes into `run_dir` with the job of its kind (`cfg.command`, kinds/)."""
    return kinds.get(cfg.command).job(cfg, run_dir, overwrite=overwrite, resume=resume, progress=progress)


def rerun(source: str | Path, run_dir: str | Path, *, overwrite: bool = False,
          progress: Reporter | None = None) -> RunReport:
    """Repeat the run in `source` (a run folder or its config.json) into `run_dir`."""
    source = Path(source)
    cfg = read_config(source / runs.CONFIG if source.is_dir() else source)
    if cfg.threads_used:  # the same thread count gives the same floating-point sums: the very same run
        cfg.threads, cfg.threads_used = str(cfg.threads_used), None
    if kinds.find(cfg.command) is None:
        raise ConfigError(f"config command {cfg.command!r} cannot be rerun; known: {kinds.names()}")
    return run(cfg, run_dir, overwrite=overwrite, progress=progress)
