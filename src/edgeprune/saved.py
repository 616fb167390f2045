"""What a saved model (a run folder or a model.pt) scores and costs now: `edgeprune eval` and `measure`. An INT8
run, which has only its model.onnx, is evaluated and measured in ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from . import data, measure, runs
from . import threads as threads_mod
from .errors import ConfigError
from .lifecycle import load, source_config
from .progress import Reporter
from .record import read_report
from .train import evaluate


def _onnx_only(path: Path) -> bool:
    """A run folder with a model.onnx and no model.pt: an INT8 run."""
    return path.is_dir() and not (path / runs.MODEL).is_file() and (path / runs.ONNX).is_file()


def _needs_onnxruntime(path: Path, verb: str) -> ConfigError:
    return ConfigError(f"{path} holds only an ONNX model (an INT8 run has no PyTorch model); {verb} it with "
                       "--runtime onnxruntime")


def profile(path: str | Path, *, batch_sizes: Iterable[int] = (1,), threads: Iterable[int] = (1,),
            timed_runs: int = 30, warmup: int = 5, runtimes: Iterable[str] | None = None) -> measure.Profile:
    """Profile a saved model (a run folder or a model.pt) now. A run with only an ONNX model (INT8) is measured
    in ONNX Runtime from its model.onnx, over the counts its report recorded."""
    path = Path(path)
    if _onnx_only(path):
        if runtimes is not None and set(runtimes) != {"onnxruntime"}:
            raise _needs_onnxruntime(path, "measure")
        if not (path / runs.REPORT).is_file():
            raise ConfigError(f"{path} has a model.onnx but no report.json (unfinished?); finish or rerun it")
        return measure.profile_onnx(read_report(path / runs.REPORT).last_profile, path / runs.ONNX,
                                    batch_sizes=batch_sizes, threads=threads, runs=timed_runs, warmup=warmup)
    model, extra = load(path)
    shape = tuple(extra.get("input_shape") or ())
    if not shape:
        raise ConfigError(f"{path} records no input shape; save it with edgeprune (train/prune) first")
    return measure.profile(model, shape, batch_sizes=batch_sizes, threads=threads, runs=timed_runs, warmup=warmup,
                           runtimes=runtimes or measure.RUNTIMES)


def accuracy(path: str | Path, data_options: dict | None = None, device: str = "cpu",
             progress: Reporter | None = None, runtime: str = "torch") -> dict:
    """Top-1 accuracy on the test split of the run's data set (or `data_options`) of a saved model: the PyTorch
    model rebuilt from model.pt (`runtime` "torch"), or the run's model.onnx run in ONNX Runtime
    ("onnxruntime": the artifact that ships, INT8 runs included). The result names the runtime."""
    path = Path(path)
    if runtime not in measure.RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is not a runtime; use {' or '.join(measure.RUNTIMES)}")
    if runtime == "onnxruntime":
        run = path.parent if path.is_file() else path
        onnx = path if path.is_file() and path.suffix == ".onnx" else run / runs.ONNX
        if not onnx.is_file():
            raise ConfigError(f"{path} has no {runs.ONNX} to run in ONNX Runtime; pass a finished run folder")
        saved = source_config(run).data
    else:
        if _onnx_only(path):
            raise _needs_onnxruntime(path, "evaluate")
        model, extra = load(path)
        saved = extra.get("data", {})
    opts = {**saved, **(data_options or {})}
    if not opts:
        raise ConfigError(f"{path} records no data set; pass --dataset")
    bundle = data.loaders(**opts)
    if bundle.synthetic:
        raise ConfigError("synthetic data gives no meaningful accuracy; pass a real --dataset")
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        result = measure.evaluate_onnx(onnx, bundle.test, threads_mod.resolve("auto"), progress=progress)
    else:
        result = evaluate(model, bundle.test, device=device, progress=progress)
    return {**result, "data": bundle.name, "runtime": runtime, "seconds": time.perf_counter() - t0}
