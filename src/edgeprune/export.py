"""Deployable artifacts: ONNX (checked against ONNX Runtime), INT8 ONNX made by ONNX Runtime's own quantisation
tools, and state_dict + architecture spec.

`save_model` writes no pickled code: the architecture is a registry name with its arguments
(`ModelSpec`) plus the widths of every layer, so a model whose layers were physically narrowed
after creation is rebuilt by creating the original and resizing its layers before loading weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import masks as masks_mod
from .errors import CheckpointError, ExportError
from .ort import ort_session
from .runs import atomic_write, torch_load, torch_save

FORMAT = "edgeprune.model/1"

# Constructor attributes that physical pruning changes; everything else is fixed by the spec.
_WIDTH_ATTRS: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._NormBase: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.PReLU: ("num_parameters",),
}


def _width_attrs(module: nn.Module) -> dict:
    if own := getattr(type(module), "WIDTH_ATTRS", None):  # edgeprune's own layers (zoo_ops.ChannelShuffle)
        return {a: getattr(module, a) for a in own}
    for kind, attrs in _WIDTH_ATTRS.items():
        if isinstance(module, kind):
            return {a: getattr(module, a) for a in attrs}
    return {}


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Save weights (masks baked in) + the spec that rebuilds the architecture, atomically."""
    spec = getattr(model, "edgeprune_spec", None)
    if spec is None:
        raise ExportError(
            "this model has no edgeprune_spec; create it with edgeprune.models.create(...) "
            "(or a registered factory) so it can be rebuilt without pickled code"
        )
    baked = masks_mod.baked_copy(model)
    widths = {name: w for name, m in baked.named_modules() if (w := _width_attrs(m))}
    payload = {
        "format": FORMAT,
        "spec": spec.to_dict(),
        "widths": widths,
        "state_dict": {k: v.detach().cpu() for k, v in baked.state_dict().items()},
        "extra": extra or {},
    }
    return torch_save(path, payload)


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_model`, physically narrowed layers included."""
    return load(path)[0]


def load(path: str | Path) -> tuple[nn.Module, dict]:
    """(model, the `extra` metadata saved with it) from a file written by `save_model`."""
    from .models import ModelSpec, create

    payload = torch_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edgeprune model file (expected format {FORMAT})")
    spec = ModelSpec.from_dict(payload["spec"])
    model = create(spec.name, spec.num_classes, spec.in_channels, **spec.kwargs)
    if any(k.endswith(".shuffle.index") for k in payload["state_dict"]):  # a ShuffleNetV2 surgery narrowed
        from . import zoo_ops

        zoo_ops.prepare(model)
    modules = dict(model.named_modules())
    for name, attrs in payload["widths"].items():
        if name not in modules:
            raise CheckpointError(f"{path}: layer {name!r} does not exist in a fresh {spec.name}")
        for attr, value in attrs.items():
            setattr(modules[name], attr, tuple(value) if isinstance(value, list) else value)
    _resize_tensors(model, payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit a {spec.name}: {str(e)[:300]}") from None
    return model, payload.get("extra", {})


def _resize_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter/buffer the saved shape so load_state_dict can fill it."""
    for key, saved in state.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        current = getattr(owner, attr, None)
        if not isinstance(current, torch.Tensor) or current.shape == saved.shape:
            continue
        fresh = torch.empty(saved.shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(attr, fresh)


def to_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    **kwargs,
) -> Path:
    """Export to `path` (atomically) after checking the export in ONNX Runtime; see `to_onnx_bytes`."""
    data = to_onnx_bytes(model, input_shape, **kwargs)
    return atomic_write(path, lambda f: f.write(data))


def to_onnx_bytes(
    model: nn.Module,
    input_shape: tuple[int, ...],
    opset: int = 18,
    check: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    exporter: str = "torchscript",
) -> bytes:
    """Export with a dynamic batch dimension; then run it in ONNX Runtime and compare with PyTorch.

    `exporter` is "torchscript" (fast; falls back to "dynamo" for what it cannot export) or "dynamo".
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; use 'torchscript' or 'dynamo'")
    net = masks_mod.baked_copy(model).eval().cpu()
    x = torch.randn(2, *input_shape)
    buf = io.BytesIO()
    order = ("torchscript", "dynamo") if exporter == "torchscript" else ("dynamo",)
    errors: list[Exception] = []
    for name in order:  # the TorchScript exporter is fast; dynamo handles what it cannot
        try:
            with warnings.catch_warnings(), _silenced_stdout():
                warnings.simplefilter("ignore")
                _export(net, x, buf, opset, name)
            break
        except Exception as e:
            errors.append(e)
            buf = io.BytesIO()
    else:
        first = errors[0]
        raise ExportError(
            f"ONNX export failed{_operator_of(first)}: {str(first).splitlines()[0][:300]}. "
            "Replace that operation in the model, or try another --opset"
        ) from first
    data = buf.getvalue()
    written = opset_of(data)
    if written != opset:  # the dynamo exporter writes the opsets it supports, whatever was asked
        raise ExportError(f"--opset {opset} cannot be written for this model (the exporter wrote opset {written}); "
                          f"pass --opset {written}, or an opset the TorchScript exporter supports (7 to 20)")
    if check:
        _check_with_ort(net, data, x, rtol, atol)
    return data


def opset_of(data: bytes) -> int | None:
    """The default-domain opset an ONNX model (its bytes) imports."""
    import onnx

    proto = onnx.load_model_from_string(data)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send what the exporters write to the process's stdout (the TorchScript exporter's C++ side dumps the
    whole graph there when it fails over to dynamo; dynamo prints progress) to nowhere: stdout is the
    user's, for results. Done at the file-descriptor level, since C++ writes bypass sys.stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _export(net: nn.Module, x: torch.Tensor, buf: io.BytesIO, opset: int, exporter: str) -> None:
    names = {"input_names": ["input"], "output_names": ["output"], "opset_version": opset}
    if exporter == "torchscript":
        torch.onnx.export(net, (x,), buf, dynamo=False, dynamic_axes={"input": {0: "batch"}}, **names)
        return
    program = torch.onnx.export(
        net, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names
    )
    buf.write(program.model_proto.SerializeToString())


def _operator_of(e: Exception) -> str:
    text = str(e)
    m = re.search(r"operator '?([\w:.]+)'?", text) or re.search(r"(aten::\w+(?:\.\w+)?)", text)
    return f" at operator {m.group(1)}" if m else ""


def _check_with_ort(net: nn.Module, data: bytes, x: torch.Tensor, rtol: float, atol: float) -> None:
    with torch.no_grad():
        ref = net(x).numpy()
    sess = ort_session(data)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if out.shape != ref.shape or not np.allclose(out, ref, rtol=rtol, atol=atol):
        err = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
        raise ExportError(
            f"ONNX Runtime output differs from PyTorch (max abs error {err:.3g} > atol {atol}, rtol {rtol}); "
            "the model uses an operator whose export is not faithful"
        )



QUANT_MODES = ("static", "dynamic")
QUANT_FORMATS = ("auto", "qdq", "qoperator")
# Operators only a quantised graph holds (QDQ pairs, or the integer operators of QOperator/dynamic graphs).
_QUANTISED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                            "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"})
# The candidates `format="auto"` measures: (format, activations, per-channel weights). QOperator with signed
# activations is left out: ONNX Runtime's own tool warns that it is slow on x86-64.
CANDIDATES = tuple((f, a, pc) for f, a in (("qdq", "uint8"), ("qdq", "int8"), ("qoperator", "uint8"))
                   for pc in (False, True))
AGREEMENT_TOLERANCE = 0.005  # a candidate may agree with fp32 on this much fewer calibration images than the best
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def precision_of(onnx_model: bytes | str | Path) -> str:
    """"int8" if the ONNX graph holds quantisation operators, else "fp32"."""
    import onnx

    proto = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx.load(str(onnx_model))
    return "int8" if any(n.op_type in _QUANTISED_OPS for n in proto.graph.node) else "fp32"


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The integer-kernel features of this CPU that decide which INT8 format is fastest: the /proc/cpuinfo flags of
    `CPU_FLAGS` (True/False; empty where there is no /proc/cpuinfo) and torch's dispatch level."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = None
    found = {} if flags is None else {f: f in flags for f in CPU_FLAGS}
    return {"flags": found, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def quantize_onnx(onnx_model: bytes | str | Path, mode: str = "static", calibration: Iterable[np.ndarray] | None = None,
                  per_channel: bool | None = None, activations: str | None = None, format: str = "auto") -> bytes:
    """An INT8 copy of an fp32 ONNX model (`quantize`'s model, without its record)."""
    return quantize(onnx_model, mode, calibration, per_channel, activations, format)[0]


def quantize(
    onnx_model: bytes | str | Path,
    mode: str = "static",
    calibration: Iterable[np.ndarray] | None = None,
    per_channel: bool | None = None,
    activations: str | None = None,
    format: str = "auto",
    tolerance: float = AGREEMENT_TOLERANCE,
) -> tuple[bytes, dict]:
    """(An INT8 copy of an fp32 ONNX model made by onnxruntime.quantization (never by hand), what was chosen).

    "static": ONNX Runtime's pre-processing first (`quant_pre_process`: shape inference and graph optimisation,
    which folds each BatchNormalization into its Conv so that the fused Conv is what gets quantised), then
    `quantize_static` with signed 8-bit weights and activation ranges from MinMax calibration over `calibration`
    (float32 input batches), calibrated once (ONNX Runtime's calibration cache) for every candidate.
    The fastest format depends on the model and the CPU (benchmarks/results/quantize.md: S8S8 made dense VGG-16
    2.2× faster than U8S8 and dense ResNet-20 2.3× slower), so with `format="auto"` every candidate of
    `CANDIDATES` that fits the given `per_channel` / `activations` (None: both values) is made and timed on this
    machine (ONNX Runtime, batch 1, 1 thread, round-robin), each one's top-1 agreement with the fp32 model on the
    calibration images is counted, and the fastest whose agreement is within `tolerance` of the best one's is
    kept. `format="qdq"` or `"qoperator"` with `per_channel` and `activations` ("uint8": U8S8, "int8": S8S8)
    gives one format without timing (defaults: per-tensor, U8S8). The record: the choice, every candidate's
    p50 and agreement, and `cpu_features()`.
    "dynamic": `quantize_dynamic` on the pre-processed model: INT8 weights, activations quantised at run time.
    The result is checked to load and run in ONNX Runtime.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in QUANT_MODES:
        raise ExportError(f"unknown quantisation mode {mode!r}; use one of {', '.join(QUANT_MODES)}")
    if format not in QUANT_FORMATS:
        raise ExportError(f"unknown INT8 format {format!r}; use one of {', '.join(QUANT_FORMATS)}")
    if activations not in (None, "uint8", "int8"):
        raise ExportError(f"activations {activations!r}: use 'uint8' (U8S8) or 'int8' (S8S8)")
    if mode == "static" and calibration is None:
        raise ExportError("static quantisation needs calibration inputs (a few hundred training images)")
    with tempfile.TemporaryDirectory(prefix="edgeprune-int8-") as tmp:
        src, pre, out = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes())
        with _quiet_quantisation():
            quant_pre_process(str(src), str(pre))
            if mode == "dynamic":
                quantize_dynamic(pre, out, per_channel=bool(per_channel), weight_type=QuantType.QInt8)
                data, record = out.read_bytes(), {"format": "QOperator", "activations": "uint8, dynamic",
                                                  "per_channel": bool(per_channel)}
            else:
                batches = [np.ascontiguousarray(x, dtype=np.float32) for x in calibration]
                data, record = _static(pre, Path(tmp), batches, per_channel, activations, format, tolerance)
    ort_session(data)  # loads in the runtime that will run it, or raises here rather than on the device
    return data, record


def _static(pre: Path, tmp: Path, batches: list[np.ndarray], per_channel: bool | None, activations: str | None,
            format: str, tolerance: float) -> tuple[bytes, dict]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if format == "auto":
        wanted = [c for c in CANDIDATES if per_channel in (None, c[2]) and activations in (None, c[1])]
    else:
        wanted = [(format, activations or "uint8", bool(per_channel))]
    name = ort_session(pre).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {name: x}

    made = {}
    for fmt, act, pc in wanted:  # the first calibrates and writes the cache, the others read it
        out = tmp / f"{fmt}-{act}-{pc}.onnx"
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=pc, activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibration_cache_path=tmp / "calibration.json")
        made[_label(fmt, act, pc)] = ((fmt, act, pc), out.read_bytes())
    if len(made) == 1:
        (fmt, act, pc), data = next(iter(made.values()))
        return data, {"format": _FORMAT_NAMES[fmt], "activations": act, "per_channel": pc,
                      "chosen_by": "given" if format != "auto" else "only candidate"}
    from .measure import latency_onnx_interleaved

    shape = tuple(batches[0].shape[1:])
    timed = latency_onnx_interleaved({k: (d, shape) for k, (_, d) in made.items()}, 1, 1, rounds=5, runs=10)
    agree = _agreement(pre, {k: d for k, (_, d) in made.items()}, batches)
    best = max(agree.values())
    chosen = min((k for k in made if agree[k] >= best - tolerance), key=lambda k: timed[k].p50_ms)
    fmt, act, pc = made[chosen][0]
    return made[chosen][1], {
        "format": _FORMAT_NAMES[fmt], "activations": act, "per_channel": pc, "chosen_by": "auto", "chosen": chosen,
        "candidates": [{"candidate": k, "ort_b1_t1_p50_ms": timed[k].p50_ms, "top1_agreement_with_fp32": agree[k]}
                       for k in made],
        "tolerance": tolerance, "agreement_images": sum(len(b) for b in batches), "cpu": cpu_features()}


_FORMAT_NAMES = {"qdq": "QDQ", "qoperator": "QOperator"}


def _label(fmt: str, act: str, per_channel: bool) -> str:
    kind = "U8S8" if act == "uint8" else "S8S8"
    return f"{_FORMAT_NAMES[fmt]} {kind} {'per-channel' if per_channel else 'per-tensor'}"


def _agreement(fp32: Path, int8: dict[str, bytes], batches: list[np.ndarray]) -> dict[str, float]:
    """Per INT8 model, the fraction of the calibration images whose top-1 (the argmax of each image's output,
    flattened) is the fp32 model's: a stand-in for accuracy that needs no labels."""
    def top1(model) -> np.ndarray:
        sess = ort_session(model)
        feed = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {feed: x})[0].reshape(len(x), -1).argmax(1) for x in batches])

    ref = top1(fp32)
    return {k: float((top1(d) == ref).mean()) for k, d in int8.items()}


@contextlib.contextmanager
def _quiet_quantisation() -> Iterator[None]:
    """The quantisation tools log advice and warnings through `logging` and print to stdout; the library
    reports through callbacks, never by printing."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _silenced_stdout():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
