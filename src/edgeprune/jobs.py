"""Whole runs, as the CLI and `edgeprune rerun` start them: a `RunConfig` in, a run folder (and its
`RunReport`) out.

A run folder holds config.json (the RunConfig: enough to repeat the run), model.pt, model.onnx,
report.json (the RunReport, written last) and log.jsonl; record.py reads and writes the two records,
runs.py the folder. The CLI only parses options into a RunConfig.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from . import budget, data, export, masks, measure, quantization, runs
from .errors import ConfigError
from .lifecycle import build, data_fields, finish, fresh_model, save_masks  # noqa: F401  (public: jobs.build ...)
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
    read_report,
    write_report,
)
from .train import Callback, fit

__all__ = ["JOBS", "MeasureOptions", "RunConfig", "RunReport", "prune", "rerun", "shrink", "train"]


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


TRAINED_COMMANDS = ("train", "neuroflux")


def trained_source(path: str | Path | None, method: str) -> Path:
    """`path`, checked to be a finished dense run (made by `edgeprune train`) that method `method` can start from."""
    source = Path(path) if path is not None else None
    if source is None:
        raise ConfigError(f"--method {method} starts from a trained run: pass --from RUN (a run of `edgeprune train`)")
    if not (source / runs.CONFIG).is_file():
        raise ConfigError(f"--from {source} is not a run folder (no {runs.CONFIG}); pass a run made by "
                          "`edgeprune train`")
    command = read_config(source / runs.CONFIG).command
    if command not in TRAINED_COMMANDS:  # a model trained whole: a dense run, or NeuroFlux's exit model
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
    _not_the_source(source, run_dir)
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


def _not_the_source(source: Path, run_dir: str | Path) -> None:
    target = Path(run_dir).resolve()
    if target == source.resolve() or target in source.resolve().parents:
        raise ConfigError(f"the new run would replace its source; choose a --name other than the source "
                          f"{source.name!r}")


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
            masks.apply(pruned, runs.torch_load(rf.path / runs.MASKS, "masks"))
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
        if any(n.endswith("_orig") for n in runs.torch_load(checkpoint, "checkpoint").get("param_names", ())):
            masks.apply(model, runs.torch_load(rf.path / runs.MASKS, "masks"))
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


def shrink(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
           progress: Reporter | None = None) -> RunReport:
    """DNNShifter: remove the dead channels of the sparse run `cfg.method["source"]` into a new run."""
    from .methods import dnnshifter

    source = Path(cfg.method["source"])
    if not (source / runs.MASKS).exists():
        raise ConfigError(f"{source} has no {runs.MASKS}: shrink takes a sparse run (made by `edgeprune prune`; "
                          "for IMP, one of its level_NN folders)")
    _not_the_source(source, run_dir)
    if resume:
        raise ConfigError("shrink has nothing to resume (it takes seconds); run it again with --overwrite")
    model, extra = load(source)
    masks.apply(model, runs.torch_load(source / runs.MASKS, "masks"))
    bundle = data.loaders(**cfg.data)
    with _threads(cfg, run_dir, resume) as cfg, _open(cfg, run_dir, overwrite, resume) as rf:
        small, info = dnnshifter.shrink(model, tuple(extra["input_shape"]), **{
            k: v for k, v in cfg.method.items() if k in ("fold_constants", "round_to")})
        report = finish(small, bundle, cfg, rf.path, {**info, "source": str(source)}, rf.name)
        sparse, dense_shape = load_profile(source), report.profile
        now = _speedup_now(source, rf.path, tuple(extra["input_shape"]))
        report.vs_source = {
            "params_x_smaller": sparse.params / dense_shape.params,
            "bytes_x_smaller": sparse.bytes_fp32 / dense_shape.bytes_fp32,
            "macs_x_fewer": sparse.macs / dense_shape.macs,
            "ort_b1_speedup": now if now is not None else _speedup(sparse, dense_shape),
            "ort_b1_timing": "side by side" if now is not None else "profiles",
        }
        write_report(rf.path / runs.REPORT, report)  # once, last: an interrupted shrink never looks finished
    return report


def is_imp_run(path: str | Path) -> bool:
    """Whether `path` is a whole IMP run (its levels in level_NN folders), not one level of it."""
    path = Path(path)
    return (path / runs.CONFIG).is_file() and read_config(path / runs.CONFIG).method.get("name") == "imp"


def imp_levels(path: str | Path) -> list[Path]:
    """The finished, pruned levels of IMP run `path` (level 0 is the dense start and has no masks)."""
    found = sorted(p for p in Path(path).glob("level_[0-9]*")
                   if (p / runs.REPORT).is_file() and (p / runs.MASKS).is_file())
    if not found:
        raise ConfigError(f"IMP run {path} has no finished pruned level (level_NN with {runs.MASKS} and "
                          f"{runs.REPORT}) yet; let it finish (`edgeprune prune --method imp ... --resume`)")
    return found


def shrink_config(source: str | Path, fold_constants: bool = True, round_to: int | None = None,
                  measure_runs: int | None = None, threads: str = "auto") -> RunConfig:
    """The config of a shrink of run `source`: its own config (an IMP level's is its parent's), re-aimed."""
    cfg = source_config(source)
    cfg.command = "shrink"
    cfg.threads, cfg.threads_used = threads, None
    cfg.method = {"name": "dnnshifter", "source": str(source), "fold_constants": fold_constants, "round_to": round_to}
    if measure_runs is not None:
        cfg.measure.runs = measure_runs
    return cfg


def source_config(source: str | Path) -> RunConfig:
    """The config of run `source`: its own, or for an IMP level (which has none), its run's."""
    source = Path(source)
    if (source / runs.CONFIG).exists():
        return read_config(source / runs.CONFIG)
    if source.name.startswith("level_") and (source.parent / runs.CONFIG).exists():
        return read_config(source.parent / runs.CONFIG)
    raise ConfigError(f"{source} is not an edgeprune run folder (no {runs.CONFIG}); pass a finished run of "
                      "train, prune, shrink or neuroflux (or an IMP run's level_NN)")


def _speedup_now(source: Path, run_dir: Path, input_shape: tuple[int, ...]) -> float | None:
    """Source / shrunk ONNX Runtime p50 at batch 1, 1 thread, both timed round-robin now: the source's own
    profile was taken when it finished, under another load. None where the source has no model.onnx."""
    if not (source / runs.ONNX).is_file():
        return None
    return measure.latency_ratio_onnx({"source": (source / runs.ONNX, input_shape),
                                       "shrunk": (run_dir / runs.ONNX, input_shape)})


def _speedup(before: measure.Profile, after: measure.Profile) -> float | None:
    a, b = before.latency_of("onnxruntime", 1, 1), after.latency_of("onnxruntime", 1, 1)
    return a.p50_ms / b.p50_ms if a and b else None


DEFAULT_CALIBRATION = 256  # training images whose activation ranges a static quantisation is calibrated on


def quantize_config(source: str | Path, mode: str = "static", calibration: int | None = None,
                    per_channel: bool = False, measure_runs: int | None = None, threads: str = "auto",
                    base: RunConfig | None = None) -> RunConfig:
    """The config of an INT8 copy of run `source`: its own config (an IMP level's is its run's), re-aimed;
    `base` stands in for that config where the source is not written yet (a sweep plans its cells before any
    runs). `calibration` (static only) defaults to DEFAULT_CALIBRATION training images."""
    if mode not in export.QUANT_MODES:
        raise ConfigError(f"--mode {mode!r} is not a quantisation mode; use {' or '.join(export.QUANT_MODES)}")
    if mode == "dynamic" and calibration is not None:
        raise ConfigError("--calibration applies to --mode static only (dynamic quantisation measures activation "
                          "ranges at run time); drop it or use --mode static")
    _check_calibration(calibration)
    cfg = copy.deepcopy(base) if base is not None else source_config(source)
    cfg.command = "quantize"
    cfg.threads, cfg.threads_used = threads, None
    cfg.method = {"name": "quantize", "source": str(source), "mode": mode, "per_channel": per_channel,
                  "calibration": (DEFAULT_CALIBRATION if calibration is None else calibration)
                  if mode == "static" else None}
    if measure_runs is not None:
        cfg.measure.runs = measure_runs
    return cfg


def _check_calibration(calibration) -> None:
    if calibration is not None and (isinstance(calibration, bool) or not isinstance(calibration, int)
                                    or calibration < 1):
        raise ConfigError(f"--calibration {calibration!r}: static quantisation needs at least 1 calibration image "
                          f"(a few hundred are typical; default {DEFAULT_CALIBRATION})")


def quantize(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
             progress: Reporter | None = None) -> RunReport:
    """INT8 copy of the finished fp32 run `cfg.method["source"]` as a new run: its model.onnx quantised by ONNX
    Runtime's tools (quantization.quantize_onnx), static quantisation calibrated on the first `calibration` training
    images (un-augmented, in the run's fixed shuffle); measured in ONNX Runtime (latency, memory, top-1 on the
    test split), and against the source's model.onnx, evaluated and timed side by side now. The source is only
    read."""
    q = cfg.method
    source = Path(q["source"])
    _check_quantizable(source, Path(run_dir), q.get("calibration"), resume)
    src = read_report(source / runs.REPORT)
    shape = tuple(src.last_profile.input_shape)
    bundle = data.loaders(**{**cfg.data, "augment": False})  # calibration sees the images, not augmentations
    if q["mode"] == "static" and q["calibration"] > len(bundle.train.dataset):
        raise ConfigError(f"--calibration {q['calibration']} is more than the {len(bundle.train.dataset)} training "
                          f"images of {source}; use at most that many")
    with _threads(cfg, run_dir, resume) as cfg, _open(cfg, run_dir, overwrite, resume) as rf:
        t0 = time.perf_counter()
        calibration = first_images(bundle.train, q["calibration"]) if q["mode"] == "static" else None
        # --per-channel insists on it; without it the format is chosen (quantization.quantize: timed on this machine)
        int8, chosen = quantization.quantize(source / runs.ONNX, q["mode"], calibration, q["per_channel"] or None)
        seconds = time.perf_counter() - t0
        runs.atomic_write(rf.path / runs.ONNX, lambda f: f.write(int8))
        m = cfg.measure
        # parameters, MACs and the fp32 state_dict sizes stay the source's (the weights it was quantised from);
        # what ships, and so what is measured again, is the INT8 model.onnx
        prof = measure.profile_onnx(replace(src.last_profile, precision="int8"), int8, batch_sizes=m.batch_sizes,
                                    threads=m.threads, runs=m.runs, warmup=m.warmup, memory=m.memory)
        source_bytes = measure.file_bytes(source / runs.ONNX)
        vs = {"bytes_onnx_x_smaller": source_bytes[0] / prof.bytes_onnx,
              "bytes_onnx_gzip_x_smaller": source_bytes[1] / prof.bytes_onnx_gzip,
              "ort_b1_speedup": _speedup_now(source, rf.path, shape), "ort_b1_timing": "side by side"}
        if not bundle.synthetic:  # both artifacts on the same test images, in the runtime that ships them
            before, after = (measure.evaluate_onnx(onnx, bundle.test, cfg.threads_used, progress)["accuracy"]
                             for onnx in (source / runs.ONNX, int8))
            prof.accuracy, prof.accuracy_data, prof.accuracy_runtime = after, bundle.name, "onnxruntime"
            vs.update(accuracy_source_onnxruntime=before, accuracy_delta_pts=100 * (after - before))
        report = replace(src, run=rf.name, **data_fields(bundle), profile=prof,
                         source=str(source), vs_source=vs, details={"quantization": {
                             "mode": q["mode"], "weights": "int8", **chosen, "calibration_images": q["calibration"],
                             "tool": "onnxruntime.quantization", "seconds": seconds}})
        write_report(rf.path / runs.REPORT, report)  # once, last: an interrupted quantize never looks finished
    return report


def _check_quantizable(source: Path, run_dir: Path, calibration: int | None, resume: bool) -> None:
    """One-line errors, before anything is written, for what cannot be quantised into `run_dir`."""
    _check_calibration(calibration)
    if resume:
        raise ConfigError("quantize has nothing to resume (it takes seconds); run it again with --overwrite")
    _not_the_source(source, run_dir)
    if not (source / runs.ONNX).is_file():
        hint = (f"a whole IMP run: quantize one of its levels, e.g. {imp_levels(source)[-1]}" if is_imp_run(source)
                else "it is unfinished or was not made by edgeprune train/prune/shrink; finish it (--resume) or "
                     "rerun it (`edgeprune rerun`)")
        raise ConfigError(f"{source} has no {runs.ONNX} to quantise: {hint}")
    if not (source / runs.REPORT).is_file():
        raise ConfigError(f"{source} is not finished (no {runs.REPORT}); finish it with --resume first")
    if export.precision_of(source / runs.ONNX) != "fp32":
        made = source_config(source).method.get("source") if (source / runs.CONFIG).is_file() else None
        raise ConfigError(f"{source} is already quantised (its {runs.ONNX} is INT8); quantise its fp32 source "
                          f"{made or 'run'} instead")


def first_images(loader: Iterable, n: int) -> Iterator:
    """The first `n` images `loader` yields, as float32 numpy batches."""
    for x, _ in loader:
        if n <= 0:
            return
        yield x[:n].numpy()
        n -= len(x)


def neuroflux(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
              progress: Reporter | None = None) -> RunReport:
    """Train under a memory budget with NeuroFlux's block-wise local learning; the run's model is its best exit."""
    from .neuroflux.job import run

    return run(cfg, run_dir, overwrite=overwrite, resume=resume, progress=progress)


JOBS: dict[str, Callable[..., RunReport]] = {"train": train, "prune": prune, "shrink": shrink, "quantize": quantize,
                                             "neuroflux": neuroflux}


def rerun(source: str | Path, run_dir: str | Path, *, overwrite: bool = False,
          progress: Reporter | None = None) -> RunReport:
    """Repeat the run in `source` (a run folder or its config.json) into `run_dir`."""
    source = Path(source)
    cfg = read_config(source / runs.CONFIG if source.is_dir() else source)
    if cfg.threads_used:  # the same thread count gives the same floating-point sums: the very same run
        cfg.threads, cfg.threads_used = str(cfg.threads_used), None
    if cfg.command not in JOBS:
        raise ConfigError(f"config command {cfg.command!r} cannot be rerun; known: {sorted(JOBS)}")
    return JOBS[cfg.command](cfg, run_dir, overwrite=overwrite, progress=progress)


def load(path: str | Path) -> tuple[nn.Module, dict]:
    """A saved model (a run folder or a model.pt) and the metadata saved with it."""
    path = Path(path)
    return export.load(path / runs.MODEL if path.is_dir() else path)


def load_profile(run_dir: str | Path) -> measure.Profile:
    """The measured profile of a finished run (for IMP, of its last level)."""
    return read_report(Path(run_dir) / runs.REPORT).last_profile
