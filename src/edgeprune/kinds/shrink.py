"""DNNShifter's run (`edgeprune shrink`): a sparse run's dead channels removed (methods/dnnshifter.py) into a new,
smaller run, measured against the sparse one. The source run is only read."""

from __future__ import annotations

from pathlib import Path

from .. import data, files, masks, measure, runs
from ..errors import ConfigError
from ..lifecycle import (
    finish,
    load,
    load_profile,
    not_the_source,
    run_folder,
    source_config,
    speedup_now,
    thread_policy,
)
from ..progress import Reporter
from ..record import RunConfig, RunReport, write_report
from . import register

METHOD = "dnnshifter"  # what its config's method entry and its report record


def _label(options: dict, source: str | None) -> tuple[str, str, str]:
    return METHOD, "", f"from {Path(source or '?').name}"


def config(source: str | Path, fold_constants: bool = True, round_to: int | None = None,
           measure_runs: int | None = None, threads: str = "auto") -> RunConfig:
    """The config of a shrink of run `source`: its own config (an IMP level's is its parent's), re-aimed."""
    cfg = source_config(source)
    cfg.command = "shrink"
    cfg.threads, cfg.threads_used = threads, None
    cfg.method = {"name": METHOD, "source": str(source), "fold_constants": fold_constants, "round_to": round_to}
    if measure_runs is not None:
        cfg.measure.runs = measure_runs
    return cfg


@register("shrink", method=METHOD, label=_label, from_source=True, config=config)
def shrink(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
           progress: Reporter | None = None) -> RunReport:
    """DNNShifter: remove the dead channels of the sparse run `cfg.method["source"]` into a new run."""
    from ..methods import dnnshifter

    source = Path(cfg.method["source"])
    if not (source / runs.MASKS).exists():
        raise ConfigError(f"{source} has no {runs.MASKS}: shrink takes a sparse run (made by `edgeprune prune`; "
                          "for IMP, one of its level_NN folders)")
    not_the_source(source, run_dir)
    if resume:
        raise ConfigError("shrink has nothing to resume (it takes seconds); run it again with --overwrite")
    model, extra = load(source)
    masks.apply(model, files.torch_load(source / runs.MASKS, "masks"))
    bundle = data.loaders(**cfg.data)
    with thread_policy(cfg, run_dir, resume) as cfg, run_folder(cfg, run_dir, overwrite, resume) as rf:
        small, info = dnnshifter.shrink(model, tuple(extra["input_shape"]), **{
            k: v for k, v in cfg.method.items() if k in ("fold_constants", "round_to")})
        report = finish(small, bundle, cfg, rf.path, {**info, "source": str(source)}, rf.name)
        sparse, dense_shape = load_profile(source), report.profile
        now = speedup_now(source, rf.path, tuple(extra["input_shape"]))
        report.vs_source = {
            "params_x_smaller": sparse.params / dense_shape.params,
            "bytes_x_smaller": sparse.bytes_fp32 / dense_shape.bytes_fp32,
            "macs_x_fewer": sparse.macs / dense_shape.macs,
            "ort_b1_speedup": now if now is not None else _speedup(sparse, dense_shape),
            "ort_b1_timing": "side by side" if now is not None else "profiles",
        }
        write_report(rf.path / runs.REPORT, report)  # once, last: an interrupted shrink never looks finished
    return report


def _speedup(before: measure.Profile, after: measure.Profile) -> float | None:
    a, b = before.latency_of("onnxruntime", 1, 1), after.latency_of("onnxruntime", 1, 1)
    return a.p50_ms / b.p50_ms if a and b else None
