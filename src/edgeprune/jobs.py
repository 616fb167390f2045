"""Whole runs, as the CLI and `edgeprune rerun` start them: a `RunConfig` in, a run folder out.

A run folder holds config.json (this RunConfig: enough to repeat the run), model.pt, model.onnx,
report.json and log.jsonl (see runs.py). The CLI only parses options into a RunConfig.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import __version__, budget, data, export, masks, measure, models, runs
from .errors import ConfigError, unknown_name
from .train import TrainConfig, evaluate, fit


@dataclass
class MeasureOptions:
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    runs: int = 30
    warmup: int = 5
    runtimes: tuple[str, ...] = measure.RUNTIMES
    memory: bool = True

    def __post_init__(self) -> None:
        self.batch_sizes, self.threads, self.runtimes = map(tuple, (self.batch_sizes, self.threads, self.runtimes))


@dataclass
class RunConfig:
    """Everything needed to repeat a run."""

    command: str
    model: str
    data: dict  # keyword arguments of edgeprune.data.loaders
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    model_kwargs: dict = field(default_factory=dict)
    num_classes: int | None = None  # None: taken from the data set
    in_channels: int | None = None
    method: dict = field(default_factory=dict)  # the pruning method's options (later commands)
    device: str = "cpu"
    edgeprune_version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"config has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        d["measure"] = MeasureOptions(**d.get("measure", {}))
        return cls(**d)


def build(cfg: RunConfig) -> tuple[nn.Module, data.DataBundle]:
    """Load the data set and create the model to fit it, initialised from the run's seed."""
    bundle = data.loaders(**cfg.data)
    for what, asked, actual in (
        ("num_classes", cfg.num_classes, bundle.num_classes),
        ("in_channels", cfg.in_channels, bundle.in_channels),
    ):
        if asked is not None and asked != actual:
            raise ConfigError(
                f"--{what.replace('_', '-')} {asked} does not match data set {bundle.name!r}, which has "
                f"{actual}; drop the option to take it from the data"
            )
    return fresh_model(cfg, bundle), bundle


def fresh_model(cfg: RunConfig, bundle: data.DataBundle) -> nn.Module:
    """The run's model as initialised from its seed: the same weights every time."""
    torch.manual_seed(cfg.train.seed)
    return models.create(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         **cfg.model_kwargs)


def finish(model: nn.Module, bundle: data.DataBundle, cfg: RunConfig, run_dir: Path, report: dict,
           progress: bool = True) -> dict:
    """Save model.pt and model.onnx, profile the model, write report.json; return the report."""
    extra = {"input_shape": bundle.input_shape, "data": cfg.data}
    export.save_model(model, run_dir / runs.MODEL, extra=extra)
    kept = {f"{name}.{p}" if name else p: getattr(m, f"{p}_mask").bool()
            for name, m, p in masks.masked_modules(model)}
    if kept:
        runs.torch_save(run_dir / runs.MASKS, kept)
    onnx_bytes = export.to_onnx_bytes(model, bundle.input_shape)
    runs.atomic_write(run_dir / runs.ONNX, lambda f: f.write(onnx_bytes))
    real = None if bundle.synthetic else bundle.test
    prof = measure.profile(
        model, bundle.input_shape, **asdict(cfg.measure), loader=real, data_name=bundle.name,
        onnx_model=onnx_bytes, device=cfg.device,
    )
    report = {"run": run_dir.name, "data": bundle.name, "synthetic_data": bundle.synthetic, **report,
              "profile": prof.to_dict()}
    runs.write_json(run_dir / runs.REPORT, report)
    return report


def train(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True) -> dict:
    """Train a dense model and measure it."""
    runs.check(run_dir, overwrite=overwrite, resume=resume)
    model, bundle = build(cfg)
    resume_fit = resume and (Path(run_dir) / runs.CHECKPOINT).exists()
    run_dir = runs.prepare(run_dir, overwrite=overwrite, resume=resume)
    runs.write_json(run_dir / runs.CONFIG, cfg)
    hist = fit(model, bundle.train, cfg.train, val_loader=None, run_dir=run_dir, resume=resume_fit,
               device=cfg.device, progress=progress)
    return finish(model, bundle, cfg, run_dir, {"train": {"epochs": hist.epochs, "seconds": hist.seconds}},
                  progress)


def method_options(method: dict):
    """The options object of a pruning method from its config entry: {"name": ..., **options}."""
    from . import scores
    from .methods.imp import IMPOptions
    from .methods.pai import PaIOptions
    from .methods.reconvene import ReconveneOptions

    opts = {k: v for k, v in method.items() if k not in ("name", "target")}
    name = method.get("name")
    if name == "imp":
        return IMPOptions(**opts)
    if name == "reconvene":
        return ReconveneOptions(**opts)
    if name in scores.list_criteria():
        return PaIOptions(criterion=name, **opts)
    raise unknown_name("method", str(name), [*scores.list_criteria(), "imp", "reconvene"])


def prune(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True) -> dict:
    """Prune (at initialisation, or iteratively with IMP), train with the masks kept, measure."""
    from .methods import imp

    opts = method_options(cfg.method)  # bad options fail here, before anything is written
    target = budget.Target(**cfg.method["target"]) if cfg.method.get("target") else None
    if target is not None and isinstance(opts, imp.IMPOptions):
        raise ConfigError("a budget (--target-latency/--target-size/--target-macs) needs a method that prunes "
                          "at initialisation (random, magnitude, snip, grasp, synflow, reconvene), not imp")
    runs.check(run_dir, overwrite=overwrite, resume=resume)
    model, bundle = build(cfg)
    if isinstance(opts, imp.IMPOptions):
        run_dir = runs.prepare(run_dir, overwrite=overwrite, resume=resume)
        runs.write_json(run_dir / runs.CONFIG, cfg)
        levels = imp.run(model, bundle.train, cfg.train, opts, run_dir,
                         finish=lambda m, out, info: finish(m, bundle, cfg, out, info, progress),
                         device=cfg.device, progress=progress)
        report = {"run": run_dir.name, "data": bundle.name, "method": "imp", "options": opts.to_dict(),
                  "levels": [{"level": r["level"], "density": r["density"], "profile": r["profile"]} for r in levels]}
        runs.write_json(run_dir / runs.REPORT, report)
        return report
    searched = search_budget(cfg, opts, bundle, target, progress) if target is not None else None
    if searched is not None:
        opts = replace(opts, sparsity=searched.sparsity)
    # Pruning at initialisation is deterministic (seeded model, seeded data order), so a resumed run
    # redoes it and gets the very masks and widths its checkpoint was trained with.
    info = prune_at_init(model, opts, bundle, progress)
    resume_fit = resume and (Path(run_dir) / runs.CHECKPOINT).exists()
    run_dir = runs.prepare(run_dir, overwrite=overwrite, resume=resume)
    runs.write_json(run_dir / runs.CONFIG, cfg)
    if searched is not None:
        info["budget"] = {"target": asdict(target), "found_sparsity": searched.sparsity,
                          "probes": searched.probes}
    hist = fit(model, bundle.train, cfg.train, run_dir=run_dir, resume=resume_fit, device=cfg.device,
               progress=progress)
    return finish(model, bundle, cfg, run_dir, {**info, "train": {"epochs": hist.epochs, "seconds": hist.seconds}},
                  progress)


def prune_at_init(model: nn.Module, opts, bundle: data.DataBundle, progress: bool) -> dict:
    from .methods import pai, reconvene

    method = reconvene.reconvene if isinstance(opts, reconvene.ReconveneOptions) else pai.prune_at_init
    return method(model, opts, bundle.train, bundle.input_shape, progress=progress)


def search_budget(cfg: RunConfig, opts, bundle: data.DataBundle, target: budget.Target,
                   progress: bool) -> budget.Search:
    """Bisect the sparsity of `opts` until the pruned model meets `target` (see budget.py)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)

    def pruned_at(sparsity: float) -> nn.Module:
        model = fresh_model(cfg, bundle)
        if sparsity > 0:
            prune_at_init(model, replace(opts, sparsity=sparsity), bundle, progress=False)
        return model

    def report(p: dict) -> None:
        what, cost = ("timed again", p["confirmed_cost"]) if p.get("confirmation") else ("probe", p["cost"])
        console.print(f"  {what}: sparsity {p['sparsity']:.4f} → {target.describe(cost)} "
                      f"({'meets' if p['meets'] else 'over'} the budget)", highlight=False)

    console.print(f"searching the sparsity that meets {target.describe()}", highlight=False)
    # The layer-collapse guard keeps min_layer_density of every layer: stay below what it allows.
    ceiling = min(target.max_sparsity, 1 - 2 * opts.min_layer_density)
    from .methods.reconvene import ReconveneOptions

    hint = ("let Reconvene convert more layers (--reference mean), or prune the sensitive layers with another "
            "method: it leaves them unstructured" if isinstance(opts, ReconveneOptions) else budget.UNSTRUCTURED_HINT)
    return budget.search(replace(target, max_sparsity=ceiling), pruned_at, bundle.input_shape, progress=report,
                         hint=hint)


def shrink(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
           progress: bool = True) -> dict:
    """DNNShifter: remove the dead channels of the sparse run `cfg.method["source"]` into a new run."""
    from .methods import dnnshifter

    source = Path(cfg.method["source"])
    if not (source / runs.MASKS).exists():
        raise ConfigError(f"{source} has no {runs.MASKS}: shrink takes a sparse run (made by `edgeprune prune`; "
                          "for IMP, one of its level_NN folders)")
    if Path(run_dir).resolve() == source.resolve():
        raise ConfigError(f"shrink writes a new run; choose a --name other than the source {source.name!r}")
    runs.check(run_dir, overwrite=overwrite)
    model, extra = load(source)
    masks.apply(model, runs.torch_load(source / runs.MASKS, "masks"))
    small, info = dnnshifter.shrink(model, tuple(extra["input_shape"]), **{
        k: v for k, v in cfg.method.items() if k in ("fold_constants", "round_to")})
    bundle = data.loaders(**cfg.data)
    run_dir = runs.prepare(run_dir, overwrite=overwrite)
    runs.write_json(run_dir / runs.CONFIG, cfg)
    report = finish(small, bundle, cfg, run_dir, {**info, "source": str(source)}, progress)
    sparse = load_profile(source)
    dense_shape = measure.Profile.from_dict(report["profile"])
    now = _speedup_now(source, run_dir, tuple(extra["input_shape"]))
    report["vs_source"] = {
        "params_x_smaller": sparse.params / dense_shape.params,
        "bytes_x_smaller": sparse.bytes_fp32 / dense_shape.bytes_fp32,
        "macs_x_fewer": sparse.macs / dense_shape.macs,
        "ort_b1_speedup": now if now is not None else _speedup(sparse, dense_shape),
        "ort_b1_timing": "side by side" if now is not None else "profiles",
    }
    runs.write_json(run_dir / runs.REPORT, report)
    return report


def is_imp_run(path: str | Path) -> bool:
    """Whether `path` is a whole IMP run (its levels in level_NN folders), not one level of it."""
    path = Path(path)
    return (path / runs.CONFIG).is_file() and runs.read_json(path / runs.CONFIG).get("method", {}).get("name") == "imp"


def imp_levels(path: str | Path) -> list[Path]:
    """The finished, pruned levels of IMP run `path` (level 0 is the dense start and has no masks)."""
    found = sorted(p for p in Path(path).glob("level_[0-9]*")
                   if (p / runs.REPORT).is_file() and (p / runs.MASKS).is_file())
    if not found:
        raise ConfigError(f"IMP run {path} has no finished pruned level (level_NN with {runs.MASKS} and "
                          f"{runs.REPORT}) yet; let it finish (`edgeprune prune --method imp ... --resume`)")
    return found


def shrink_config(source: str | Path, fold_constants: bool = True, round_to: int | None = None,
                  measure_runs: int | None = None) -> RunConfig:
    """The config of a shrink of run `source`: its own config (an IMP level's is its parent's), re-aimed."""
    source = Path(source)
    own = source / runs.CONFIG
    cfg = RunConfig.from_dict(runs.read_json(own if own.exists() else source.parent / runs.CONFIG))
    cfg.command = "shrink"
    cfg.method = {"name": "dnnshifter", "source": str(source), "fold_constants": fold_constants, "round_to": round_to}
    if measure_runs is not None:
        cfg.measure.runs = measure_runs
    return cfg


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


JOBS: dict[str, Callable[..., dict]] = {"train": train, "prune": prune, "shrink": shrink}


def rerun(source: str | Path, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Repeat the run in `source` (a run folder or its config.json) into `run_dir`."""
    source = Path(source)
    cfg = RunConfig.from_dict(runs.read_json(source / runs.CONFIG if source.is_dir() else source))
    if cfg.command not in JOBS:
        raise ConfigError(f"config command {cfg.command!r} cannot be rerun; known: {sorted(JOBS)}")
    return JOBS[cfg.command](cfg, run_dir, overwrite=overwrite, progress=progress)


def load(path: str | Path) -> tuple[nn.Module, dict]:
    """A saved model (a run folder or a model.pt) and the metadata saved with it."""
    path = Path(path)
    return export.load(path / runs.MODEL if path.is_dir() else path)


def evaluate_saved(path: str | Path, data_options: dict | None = None, device: str = "cpu",
                   progress: bool = True) -> dict:
    """Top-1 accuracy of a saved model on the test split of its data set (or `data_options`)."""
    model, extra = load(path)
    opts = {**extra.get("data", {}), **(data_options or {})}
    if not opts:
        raise ConfigError(f"{path} records no data set; pass --dataset")
    bundle = data.loaders(**opts)
    if bundle.synthetic:
        raise ConfigError("synthetic data gives no meaningful accuracy; pass a real --dataset")
    t0 = time.perf_counter()
    result = evaluate(model, bundle.test, device=device, progress=progress)
    return {**result, "data": bundle.name, "seconds": time.perf_counter() - t0}


def load_profile(run_dir: str | Path) -> measure.Profile:
    """The measured profile of a finished run (for IMP, of its last level)."""
    report = runs.read_json(Path(run_dir) / runs.REPORT)
    if "levels" in report:
        report = report["levels"][-1]
    return measure.Profile.from_dict(report["profile"])
