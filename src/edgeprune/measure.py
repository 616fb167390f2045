"""What a model costs and keeps: parameters, MACs, bytes, accuracy, and the profile that gathers them with the
latency and memory that `timing.py` measures.

Conventions (design.md): MACs = FLOPs/2 of conv/linear from torch's FlopCounterMode; effective MACs
of a masked model = Σ layer density × layer MACs; latency = ms per batch, p50/p90/p99 over timed runs
after warm-ups, thread count fixed and recorded.
"""

from __future__ import annotations

import gzip
import io
import os
import platform
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import masks as masks_mod
from .errors import ConfigError
from .masks import PRUNABLE
from .progress import Reporter
from .timing import (
    Latency,
    check_timing,
    latency_onnx,
    latency_torch,
    peak_inference_memory_mb,
)

RUNTIMES = ("onnxruntime", "torch")


@dataclass
class Profile:
    """One JSON-serialisable record of a model's costs. `accuracy` is None without real data."""

    model: str
    input_shape: tuple[int, ...]
    params: int
    nonzero_params: int
    prunable_params: int
    prunable_nonzero: int
    macs: int
    effective_macs: int
    bytes_fp32: int
    bytes_gzip: int
    latency: list[Latency] = field(default_factory=list)
    peak_memory_mb: float | None = None
    accuracy: float | None = None
    accuracy_data: str | None = None
    environment: dict = field(default_factory=dict)
    # which runtime computed `accuracy`: "torch" (the PyTorch model) or "onnxruntime" (the ONNX file that ships)
    accuracy_runtime: str | None = None
    precision: str = "fp32"  # of the deployable artifact, model.onnx: "fp32" or "int8"
    bytes_onnx: int | None = None  # model.onnx, raw and gzip-compressed: the size that ships
    bytes_onnx_gzip: int | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.prunable_nonzero / max(self.prunable_params, 1)

    def latency_of(self, runtime: str, batch_size: int, threads: int) -> Latency | None:
        return next(
            (
                t
                for t in self.latency
                if (t.runtime, t.batch_size, t.threads) == (runtime, batch_size, threads)
            ),
            None,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sparsity"] = self.sparsity
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["latency"] = [Latency(**t) for t in d.get("latency", [])]
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


def effective_weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """(layer name, layer, weight as used in forward, masks applied) for every conv/linear layer."""
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            yield name, module, module.weight


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting each masked weight once and its mask applied."""
    masked = {(id(m), p) for _, m, p in masks_mod.masked_modules(model)}
    total = nonzero = 0
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            base = pname.removesuffix("_orig")
            t = getattr(module, base) if (id(module), base) in masked else param
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    return total, nonzero


def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of one sample through each conv/linear layer (FLOPs/2 from FlopCounterMode)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=_device_of(model))
    with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    root = type(model).__name__
    counts = counter.get_flop_counts()
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            key = f"{root}.{name}" if name else root
            out[name] = int(sum(counts.get(key, {}).values()) // 2)
    return out


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(dense MACs, effective MACs) per sample; effective weighs each layer by its weight density."""
    per_layer = layer_macs(model, input_shape)
    dense = sum(per_layer.values())
    effective = 0.0
    for name, _, w in effective_weights(model):
        density = float(torch.count_nonzero(w)) / max(w.numel(), 1)
        effective += density * per_layer.get(name, 0)
    return dense, int(round(effective))


def state_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the saved fp32 state_dict, bytes of the same gzip-compressed), masks baked in."""
    buf = io.BytesIO()
    torch.save(masks_mod.baked_copy(model).float().state_dict(), buf)
    return file_bytes(buf.getvalue())


def file_bytes(data: bytes | str | os.PathLike) -> tuple[int, int]:
    """(bytes, bytes gzip-compressed at level 6) of a file's contents (bytes or a path)."""
    raw = data if isinstance(data, bytes) else open(data, "rb").read()
    return len(raw), len(gzip.compress(raw, compresslevel=6))


def evaluate_onnx(onnx_model: bytes | str | os.PathLike, loader: Iterable, threads: int = 1,
                  progress: Reporter | None = None) -> dict:
    """Mean cross-entropy and top-1 accuracy of an ONNX model run in ONNX Runtime (CPU, `threads` intra-op
    threads) over `loader`: what train.evaluate gives for the PyTorch model, measured on the artifact."""
    from .export import ort_session
    from .train import classify

    sess = ort_session(onnx_model, threads)
    name = sess.get_inputs()[0].name
    return classify(lambda x: torch.from_numpy(sess.run(None, {name: x.numpy().astype(np.float32, copy=False)})[0]),
                    loader, "evaluate (onnxruntime)", progress)


def environment() -> dict:
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def profile_onnx(
    base: Profile, onnx_model: bytes | str | os.PathLike, *, batch_sizes: Iterable[int] = (1,),
    threads: Iterable[int] = (1,), runs: int = 30, warmup: int = 5, memory: bool = True,
) -> Profile:
    """`base` (the profile of the model an ONNX file was made from: parameters, MACs, state_dict sizes) with
    what is measured on the file itself: ONNX Runtime latency, inference memory, its size raw and gzip. For an
    artifact with no PyTorch model to measure, such as an INT8 model.onnx; accuracy is left unmeasured."""
    shape = tuple(base.input_shape)
    prof = replace(
        base, environment=environment(),
        latency=[latency_onnx(onnx_model, shape, b, t, runs, warmup) for b in batch_sizes for t in threads],
        peak_memory_mb=peak_inference_memory_mb(onnx_model, shape) if memory else None,
        accuracy=None, accuracy_data=None, accuracy_runtime=None)
    prof.bytes_onnx, prof.bytes_onnx_gzip = file_bytes(onnx_model)
    return prof


def profile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_sizes: Iterable[int] = (1,),
    threads: Iterable[int] = (1,),
    runtimes: Iterable[str] = RUNTIMES,
    runs: int = 30,
    warmup: int = 5,
    memory: bool = True,
    loader: Iterable | None = None,
    data_name: str | None = None,
    onnx_model: bytes | str | None = None,
    device: str = "cpu",
) -> Profile:
    """Measure everything about `model` for inputs of `input_shape` (C, H, W).

    `loader` (real data) adds top-1 accuracy. `onnx_model` reuses an export; otherwise the model
    is exported in memory when an ONNX Runtime figure is asked for.
    """
    from .export import to_onnx_bytes
    from .train import evaluate

    runtimes = tuple(runtimes)
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ConfigError(f"unknown runtime(s) {sorted(unknown)}; choose from {list(RUNTIMES)}")
    batch_sizes, threads = tuple(batch_sizes), tuple(threads)
    for b in batch_sizes:
        check_timing(b, 1, runs, warmup)
    for t in threads:
        check_timing(1, t, runs, warmup)
    params, nonzero = count_params(model)
    prunable = [w for _, _, w in effective_weights(model)]
    macs, eff_macs = count_macs(model, input_shape)
    size, gz = state_bytes(model)
    prof = Profile(
        model=getattr(getattr(model, "edgeprune_spec", None), "name", type(model).__name__),
        input_shape=tuple(input_shape),
        params=params,
        nonzero_params=nonzero,
        prunable_params=sum(w.numel() for w in prunable),
        prunable_nonzero=sum(int(torch.count_nonzero(w)) for w in prunable),
        macs=macs,
        effective_macs=eff_macs,
        bytes_fp32=size,
        bytes_gzip=gz,
        environment=environment(),
    )
    if "onnxruntime" in runtimes or memory:
        onnx_model = onnx_model if onnx_model is not None else to_onnx_bytes(model, input_shape)
    if onnx_model is not None:
        prof.bytes_onnx, prof.bytes_onnx_gzip = file_bytes(onnx_model)
    for rt in runtimes:
        for b in batch_sizes:
            for t in threads:
                if rt == "torch":
                    prof.latency.append(latency_torch(model, input_shape, b, t, runs, warmup))
                else:
                    prof.latency.append(latency_onnx(onnx_model, input_shape, b, t, runs, warmup))
    if memory:
        prof.peak_memory_mb = peak_inference_memory_mb(onnx_model, input_shape)
    if loader is not None:
        prof.accuracy = evaluate(model, loader, device=device)["accuracy"]
        prof.accuracy_data, prof.accuracy_runtime = data_name, "torch"
    return prof


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

