"""Timing: latency in PyTorch and ONNX Runtime (one model, several interleaved, the ratio of two), and the peak
memory an ONNX Runtime session adds to a fresh process. Latency = ms per batch, p50/p90/p99 over timed runs after
warm-ups, the thread count fixed and recorded (design.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import masks as masks_mod
from .errors import ConfigError, EdgePruneError


class MeasurementError(EdgePruneError):
    """A measurement could not be taken."""


@dataclass
class Latency:
    runtime: str
    batch_size: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup: int



def _percentiles(times_ms: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(times_ms)
    return (
        float(np.percentile(a, 50)),
        float(np.percentile(a, 90)),
        float(np.percentile(a, 99)),
        float(a.mean()),
    )


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def latency_torch(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, threads: int = 1,
    runs: int = 30, warmup: int = 5,
) -> Latency:
    """PyTorch eager latency on CPU with `threads` intra-op threads (restored afterwards)."""
    check_timing(batch_size, threads, runs, warmup)
    net = masks_mod.baked_copy(model).eval().cpu()
    x = torch.randn(batch_size, *input_shape)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times = _time(lambda: net(x), runs, warmup)
    finally:
        torch.set_num_threads(old)
    return Latency("torch", batch_size, threads, *_percentiles(times), runs=runs, warmup=warmup)


def latency_onnx(
    onnx_model: bytes | str | os.PathLike, input_shape: tuple[int, ...], batch_size: int = 1,
    threads: int = 1, runs: int = 30, warmup: int = 5,
) -> Latency:
    """ONNX Runtime CPU latency of an exported model (bytes or path)."""
    from .export import ort_session

    check_timing(batch_size, threads, runs, warmup)
    sess = ort_session(onnx_model, threads)
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
        (batch_size, *input_shape), dtype=np.float32)}
    times = _time(lambda: sess.run(None, feed), runs, warmup)
    return Latency("onnxruntime", batch_size, threads, *_percentiles(times), runs=runs, warmup=warmup)


# ONNX Runtime's intra-op worker threads spin for a while after a call returns. Round-robin over several
# sessions with threads > 1, the workers of the session just timed still spin while the next one runs and
# take its cores: identical models then differed by up to 1.7x at batch 32, 2 threads on two cores
# (benchmarks/results/timing_noise.md). A short pause before each model's block lets them go idle.
SETTLE_S = 0.02


def latency_onnx_interleaved(
    onnx_models: Mapping[str, tuple[bytes | str | os.PathLike, tuple[int, ...]]], batch_size: int = 1,
    threads: int = 1, rounds: int = 6, runs: int = 10, warmup: int = 3,
    progress: Callable[[int, int], None] | None = None, settle_s: float | None = None,
) -> dict[str, Latency]:
    """ONNX Runtime CPU latency of several models ({name: (onnx bytes or path, input shape)}), timed
    round-robin: each of `rounds` rounds times `runs` calls of every model in turn, so load that changes
    during the pass falls on all models alike and the ratios between them are taken under the same
    conditions. Each model's figures pool its rounds*runs timings. With threads > 1, each model's block
    starts after a pause of `settle_s` seconds (default SETTLE_S; 0 with one thread) and one untimed call,
    so that the previous session's spinning worker threads do not share its cores.
    `progress(done, total)` after each round."""
    from .export import ort_session

    check_timing(batch_size, threads, runs, warmup)
    if rounds < 1:
        raise ConfigError(f"need rounds >= 1, got {rounds}")
    settle = (SETTLE_S if threads > 1 else 0.0) if settle_s is None else settle_s
    if settle < 0:
        raise ConfigError(f"settle_s must be >= 0 seconds, got {settle_s}")
    calls = {}
    for name, (onnx_model, shape) in onnx_models.items():
        sess = ort_session(onnx_model, threads)
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
            (batch_size, *shape), dtype=np.float32)}
        calls[name] = lambda sess=sess, feed=feed: sess.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        _time(call, 0, warmup)
    for i in range(rounds):
        for name, call in calls.items():
            if settle > 0:
                time.sleep(settle)
                call()
            times[name] += _time(call, runs, 0)
        if progress is not None:
            progress(i + 1, rounds)
    return {name: Latency("onnxruntime", batch_size, threads, *_percentiles(t), runs=len(t), warmup=warmup)
            for name, t in times.items()}


def latency_ratio_onnx(
    pair: Mapping[str, tuple[bytes | str | os.PathLike, tuple[int, ...]]], batch_size: int = 1, threads: int = 1,
    rounds: int = 10, runs: int = 20,
) -> float:
    """p50 latency of the first of two ONNX models ({name: (onnx, input shape)}) / that of the second, both
    timed round-robin in one pass (latency_onnx_interleaved), so the same load falls on both."""
    if len(pair) != 2:
        raise ConfigError(f"latency_ratio_onnx compares two models, got {len(pair)}: {list(pair)}")
    first, second = latency_onnx_interleaved(pair, batch_size, threads, rounds, runs).values()
    return first.p50_ms / second.p50_ms


def check_timing(batch_size: int, threads: int, runs: int, warmup: int) -> None:
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if threads <= 0:
        raise ConfigError(f"thread count must be positive, got {threads}")
    if runs < 1 or warmup < 0:
        raise ConfigError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")


# Runs in a fresh interpreter; VmHWM (peak RSS) belongs to that process's own address space,
# unlike ru_maxrss, which Linux carries over from the parent across fork and exec.
_MEMORY_PROBE = """
import sys
import numpy as np, onnxruntime as ort
def status(key):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ':'))
base = status('VmRSS')
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.log_severity_level = 3
sess = ort.InferenceSession(sys.argv[1], opts, providers=['CPUExecutionProvider'])
x = np.zeros([int(v) for v in sys.argv[2].split(',')], dtype=np.float32)
for _ in range(3):
    sess.run(None, {sess.get_inputs()[0].name: x})
print(status('VmHWM') - base)
"""


def peak_inference_memory_mb(
    onnx_model: bytes | str | os.PathLike, input_shape: tuple[int, ...], batch_size: int = 1
) -> float | None:
    """Peak resident memory an ONNX Runtime CPU session adds to a fresh process to load and run the
    model (MiB): the figure a device needs beyond the runtime itself. None where /proc is unavailable.
    """
    if not os.path.exists("/proc/self/status"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_model
        if isinstance(onnx_model, bytes):
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(onnx_model)
        shape = ",".join(str(v) for v in (batch_size, *input_shape))
        done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), shape],
                              capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise MeasurementError(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(done.stdout.strip()) / 2**20

