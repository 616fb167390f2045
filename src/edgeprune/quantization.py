"""INT8 by ONNX Runtime's quantisation tools, with the format chosen on this machine.

`quantize` makes the candidate formats (QDQ U8S8 and S8S8, QOperator U8S8; per-tensor and per-channel weights)
from one calibration, times them here (batch 1, 1 thread, interleaved; `timing.latency_onnx_interleaved`) and keeps
the fastest whose top-1 agreement with fp32 on the calibration images is within `AGREEMENT_TOLERANCE` of the best
(QDQ U8S8 per-channel where it times within `TIE` of that: a tie goes to the established format), recording the
choice, every candidate and the CPU's integer-kernel features. It sits above `timing` (it times) and `export`
(which keeps what every layer needs to know of an INT8 graph: `precision_of`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError
from .export import QUANT_MODES, silenced_stdout
from .ort import ort_session
from .timing import latency_onnx_interleaved

QUANT_FORMATS = ("auto", "qdq", "qoperator")
# The candidates `format="auto"` measures: (format, activations, per-channel weights). QOperator with signed
# activations is left out: ONNX Runtime's own tool warns that it is slow on x86-64.
CANDIDATES = tuple((f, a, pc) for f, a in (("qdq", "uint8"), ("qdq", "int8"), ("qoperator", "uint8"))
                   for pc in (False, True))
AGREEMENT_TOLERANCE = 0.005  # a candidate may agree with fp32 on this much fewer calibration images than the best
# Timings within this fraction of the fastest are a tie (the spread of one p50 on a shared core), and a tie goes to
# the established format, QDQ U8S8 per-channel: on a narrow VGG-16 the six candidates lay within 2 % of each other
# and a choice by noise could land 5 % slower than it (benchmarks/results/quantize_headline.md).
TIE = 0.05
ESTABLISHED = ("qdq", "uint8", True)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


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

    shape = tuple(batches[0].shape[1:])
    timed = latency_onnx_interleaved({k: (d, shape) for k, (_, d) in made.items()}, 1, 1, rounds=5, runs=10)
    agree = _agreement(pre, {k: d for k, (_, d) in made.items()}, batches)
    best = max(agree.values())
    admissible = [k for k in made if agree[k] >= best - tolerance]
    chosen = min(admissible, key=lambda k: timed[k].p50_ms)
    established, chosen_by = _label(*ESTABLISHED), "auto"
    if (established in admissible and established != chosen
            and timed[established].p50_ms <= (1 + TIE) * timed[chosen].p50_ms):
        chosen, chosen_by = established, f"auto (a tie within {TIE:.0%} of the fastest goes to {established})"
    fmt, act, pc = made[chosen][0]
    return made[chosen][1], {
        "format": _FORMAT_NAMES[fmt], "activations": act, "per_channel": pc, "chosen_by": chosen_by, "chosen": chosen,
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
        with warnings.catch_warnings(), silenced_stdout():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
