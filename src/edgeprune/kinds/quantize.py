"""The INT8 run (`edgeprune quantize`, and `--quantize int8` after a run): a finished fp32 run's model.onnx quantised
by ONNX Runtime's tools (quantization.py) into a new run, measured in ONNX Runtime and against its source. The source
run is only read; the new run's report is its source's, with the INT8 profile."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from .. import data, export, files, measure, quantization, runs
from ..errors import ConfigError
from ..lifecycle import (
    data_fields,
    has_levels,
    levels_of,
    not_the_source,
    run_folder,
    source_config,
    speedup_now,
    thread_policy,
)
from ..progress import Reporter
from ..record import RunConfig, RunReport, read_report, write_report
from . import register

DEFAULT_CALIBRATION = 256  # training images whose activation ranges a static quantisation is calibrated on


def config(source: str | Path, mode: str = "static", calibration: int | None = None,
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


@register("quantize", from_source=True, config=config)
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
    with thread_policy(cfg, run_dir, resume) as cfg, run_folder(cfg, run_dir, overwrite, resume) as rf:
        t0 = time.perf_counter()
        calibration = first_images(bundle.train, q["calibration"]) if q["mode"] == "static" else None
        # --per-channel insists on it; without it the format is chosen (quantization.quantize: timed on this machine)
        int8, chosen = quantization.quantize(source / runs.ONNX, q["mode"], calibration, q["per_channel"] or None)
        seconds = time.perf_counter() - t0
        files.atomic_write(rf.path / runs.ONNX, lambda f: f.write(int8))
        m = cfg.measure
        # parameters, MACs and the fp32 state_dict sizes stay the source's (the weights it was quantised from);
        # what ships, and so what is measured again, is the INT8 model.onnx
        prof = measure.profile_onnx(replace(src.last_profile, precision="int8"), int8, batch_sizes=m.batch_sizes,
                                    threads=m.threads, runs=m.runs, warmup=m.warmup, memory=m.memory)
        source_bytes = measure.file_bytes(source / runs.ONNX)
        vs = {"bytes_onnx_x_smaller": source_bytes[0] / prof.bytes_onnx,
              "bytes_onnx_gzip_x_smaller": source_bytes[1] / prof.bytes_onnx_gzip,
              "ort_b1_speedup": speedup_now(source, rf.path, shape), "ort_b1_timing": "side by side"}
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
    not_the_source(source, run_dir)
    if not (source / runs.ONNX).is_file():
        hint = (f"a whole IMP run: quantize one of its levels, e.g. {levels_of(source)[-1]}" if has_levels(source)
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

