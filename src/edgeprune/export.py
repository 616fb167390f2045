"""Deployable artifacts: ONNX (checked against ONNX Runtime), INT8 ONNX made by ONNX Runtime's own quantisation
tools, and state_dict + architecture spec.

`save_model` writes no pickled code: the architecture is a registry name with its arguments
(`ModelSpec`) plus the widths of every layer, so a model whose layers were physically narrowed
after creation is rebuilt by creating the original and resizing its layers before loading weights.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import masks as masks_mod
from .errors import CheckpointError, ExportError
from .files import atomic_write, torch_load, torch_save
from .ort import ort_session

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
            with warnings.catch_warnings(), silenced_stdout():
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
def silenced_stdout() -> Iterator[None]:
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
# Operators only a quantised graph holds (QDQ pairs, or the integer operators of QOperator/dynamic graphs).
_QUANTISED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                            "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm"})


def precision_of(onnx_model: bytes | str | Path) -> str:
    """"int8" if the ONNX graph holds quantisation operators, else "fp32"."""
    import onnx

    try:
        proto = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx.load(str(onnx_model))
    except Exception as e:  # protobuf's DecodeError: a truncated or foreign file
        what = "the ONNX model given" if isinstance(onnx_model, bytes) else str(onnx_model)
        raise CheckpointError(f"cannot read {what} as an ONNX model ({type(e).__name__}); it is truncated or not "
                              "ONNX: export it again (`edgeprune export RUN --onnx FILE`, or rerun the run)") from None
    return "int8" if any(n.op_type in _QUANTISED_OPS for n in proto.graph.node) else "fp32"
