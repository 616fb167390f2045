"""Tensors in and out of the KServe v2 / Open Inference Protocol, as its clients send them.

- JSON: `{"inputs": [{"name", "shape", "datatype", "data"}]}`, data flat or nested (row-major).
- The binary tensor extension (the protocol's and Triton's): the `Inference-Header-Content-Length` header gives
  the length of the JSON header that starts the body; the raw little-endian bytes of every input whose
  `parameters.binary_data_size` is set follow it, in the order of the inputs. An output is answered in binary when
  its `parameters.binary_data` is true, or, for outputs without that parameter, when the request's
  `parameters.binary_data_output` is; the response then has the same header and layout.
- gRPC (`ModelInferRequest`): typed `contents`, or `raw_input_contents` (one bytes string per input).

Every datatype here is served (BYTES is not: no portfolio input or output is a string). What does not decode is a
`BadRequest` (400) naming the tensor, what was sent and what was expected.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

HEADER_LENGTH = "inference-header-content-length"
DTYPES = {"BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
          "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
          "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
SHAPE_EXAMPLE = '{"inputs": [{"name", "shape", "datatype", "data"}]}'


class BadRequest(Exception):
    """A request the server refuses: `status` and one line naming the value and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Open):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class OutputRequest(_Open):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(_Open):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[OutputRequest] | None = None


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class Decoded:
    """A request's inputs, which outputs it wants (None: all) and in which form (True: binary)."""

    inputs: list[Tensor]
    id: str | None = None
    outputs: list[str] | None = None
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def _flag(params: dict | None, key: str, where: str) -> bool | None:
    if not params or key not in params:
        return None
    value = params[key]
    if not isinstance(value, bool):
        raise BadRequest(400, f"{where}: parameters.{key} must be true or false, got {value!r}")
    return value


def _unsupported(params: dict | None, where: str) -> None:
    for key in ("shared_memory_region", "classification"):
        if params and key in params:
            raise BadRequest(400, f"{where}: parameters.{key} is not supported by this server; send the tensor "
                                  "in the request (JSON data or binary)")


def nbytes(datatype: str, shape: list[int]) -> int:
    return math.prod(shape) * DTYPES[datatype].itemsize


def check_datatype(name: str, datatype: str) -> np.dtype:
    if datatype not in DTYPES:
        raise BadRequest(400, f"input {name!r}: datatype {datatype!r} is not served; use one of "
                              f"{', '.join(DTYPES)}")
    return DTYPES[datatype]


MAX_ELEMENTS = 2**32


def check_dims(name: str, shape: list[int]) -> None:
    if any(d < 0 for d in shape) or len(shape) > 8 or math.prod(shape) > MAX_ELEMENTS:
        shown = str(shape) if len(str(shape)) <= 80 else str(shape)[:77] + "..."
        raise BadRequest(400, f"input {name!r}: shape {shown} must list at most 8 dimensions, none negative, "
                              f"at most {MAX_ELEMENTS} elements in all")


def from_json_data(name: str, datatype: str, shape: list[int], data: list) -> np.ndarray:
    """The array of a JSON `data` list: only JSON booleans for BOOL, only numbers (no booleans, no strings) in
    the datatype's range otherwise."""
    dtype = check_datatype(name, datatype)
    try:
        values = np.asarray(data, dtype=object)
    except ValueError:
        raise BadRequest(400, f"input {name!r}: data is ragged; send a flat list, or nested lists of equal "
                              "lengths") from None
    flat = values.ravel()
    kinds = {type(v) for v in flat}
    want = {bool} if datatype == "BOOL" else {int} if dtype.kind in "iu" else {int, float}
    if list in kinds:
        raise BadRequest(400, f"input {name!r}: data is ragged; send a flat list, or nested lists of equal "
                              "lengths")
    if not kinds <= want:
        odd = next(v for v in flat if type(v) not in want)
        kind = "true/false values" if datatype == "BOOL" else "integers" if dtype.kind in "iu" else "numbers"
        raise BadRequest(400, f"input {name!r}: data must hold {kind} only, as {datatype} values; got {odd!r}")
    if flat.size != math.prod(shape):
        raise BadRequest(400, f"input {name!r}: shape {shape} needs {math.prod(shape)} elements, got {flat.size}")
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype)
        lo, hi = min(flat), max(flat)
        if lo < info.min or hi > info.max:
            raise BadRequest(400, f"input {name!r}: value {lo if lo < info.min else hi} is out of {datatype}'s "
                                  f"range [{info.min}, {info.max}]")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = flat.astype(dtype)
    except OverflowError:
        array = None
    if array is None or (dtype.kind == "f" and not np.isfinite(array).all()):
        raise BadRequest(400, f"input {name!r}: data holds a number outside {datatype}'s finite range; send "
                              "finite numbers")
    return array.reshape(shape)


def from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """The array of a tensor's raw little-endian bytes; their count must be what shape and datatype need."""
    dtype = check_datatype(name, datatype)
    need = nbytes(datatype, shape)
    if len(raw) != need:
        raise BadRequest(400, f"input {name!r}: shape {shape} of {datatype} needs {need} bytes, got {len(raw)}")
    if datatype == "BOOL" and bytes(raw).strip(b"\0\1"):
        raise BadRequest(400, f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body as sent with `Content-Encoding` gzip or deflate (tritonclient's request compression),
    inflated to at most `limit` bytes (more is a 413: no body inflates past --max-body-mb)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(400, f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or none")
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(400, f"the body does not inflate as {encoding} ({e})") from None
    if len(out) > limit:
        raise BadRequest(413, f"the {encoding} body inflates past the limit of {limit} bytes (--max-body-mb); send "
                              "smaller batches")
    if not inflater.eof:
        raise BadRequest(400, f"the {encoding} body is truncated")
    return out


def decode_http(body: bytes, header_length: str | None) -> Decoded:
    """A REST request: the JSON body, or (with the `Inference-Header-Content-Length` header) the binary
    extension's JSON header and raw tensors."""
    if header_length is None:
        head, rest = body, b""
    else:
        digits = header_length.strip()
        if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
            raise BadRequest(400, f"Inference-Header-Content-Length {header_length!r} must be the byte length of the "
                                  f"JSON header at the start of the body ({len(body)} bytes)")
        n = int(header_length)
        head, rest = body[:n], memoryview(body)[n:]
    try:
        req = InferRequest.model_validate_json(head)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            hint = "" if header_length is not None else \
                " (binary tensors need the Inference-Header-Content-Length header)"
            raise BadRequest(400, f"request body is not valid JSON ({err['msg']}){hint}; send {SHAPE_EXAMPLE}") \
                from None
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(400, f"{where}: {err['msg']}; expected {SHAPE_EXAMPLE}") from None
    out = Decoded([], req.id, binary_default=bool(_flag(req.parameters, "binary_data_output", "request")))
    offset = 0
    for inp in req.inputs:
        where = f"input {inp.name!r}"
        _unsupported(inp.parameters, where)
        check_dims(inp.name, inp.shape)
        size = (inp.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(400, f"{where}: parameters.binary_data_size must be a byte count, got {size!r}")
            if inp.data is not None:
                raise BadRequest(400, f"{where}: has both data and binary_data_size; send one")
            if offset + size > len(rest):
                raise BadRequest(400, f"{where}: binary_data_size {size} runs past the body's end ({len(rest)} "
                                      "bytes of tensor data after the JSON header)")
            array = from_bytes(inp.name, inp.datatype, inp.shape, rest[offset:offset + size])
            offset += size
        elif inp.data is None:
            raise BadRequest(400, f"{where}: has neither data nor parameters.binary_data_size")
        else:
            array = from_json_data(inp.name, inp.datatype, inp.shape, inp.data)
        out.inputs.append(Tensor(inp.name, inp.datatype, inp.shape, array))
    if offset != len(rest):
        raise BadRequest(400, f"the body has {len(rest)} bytes of tensor data after the JSON header, the inputs' "
                              f"binary_data_size add up to {offset}")
    if req.outputs is not None:
        out.outputs = []
        for o in req.outputs:
            _unsupported(o.parameters, f"output {o.name!r}")
            out.outputs.append(o.name)
            flag = _flag(o.parameters, "binary_data", f"output {o.name!r}")
            if flag is not None:
                out.binary[o.name] = flag
    return out


def encode_http(head: dict, outputs: list[Tensor], binary: dict[str, bool], binary_default: bool
                ) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when some output is in binary (None: plain JSON)."""
    chunks, listed = [], []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary.get(t.name, binary_default):
            raw = np.ascontiguousarray(t.array, dtype=DTYPES[t.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if t.array.dtype.kind == "f" and not np.isfinite(t.array).all():
                raise BadRequest(400, f"output {t.name!r} holds NaN or infinity (the input drove the model out of "
                                      "range), which JSON cannot carry; request it in binary "
                                      '(outputs: [{"name": ..., "parameters": {"binary_data": true}}])')
            entry["data"] = t.array.ravel().tolist()
        listed.append(entry)
    text = json.dumps({**head, "outputs": listed}, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


# gRPC: the typed contents field of each datatype (FP16 travels in raw contents only)
GRPC_CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                 "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                 "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                 "FP32": "fp32_contents", "FP64": "fp64_contents"}


def decode_grpc(request) -> Decoded:
    """A `ModelInferRequest`'s inputs, from raw contents (as tritonclient sends them) or typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(400, f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one per input")
    out = Decoded([], request.id or None)
    for i, inp in enumerate(request.inputs):
        shape = [int(d) for d in inp.shape]
        check_dims(inp.name, shape)
        check_datatype(inp.name, inp.datatype)
        if raw:
            array = from_bytes(inp.name, inp.datatype, shape, raw[i])
        else:
            fieldname = GRPC_CONTENTS.get(inp.datatype)
            if fieldname is None:
                raise BadRequest(400, f"input {inp.name!r}: {inp.datatype} travels in raw_input_contents only")
            values = list(getattr(inp.contents, fieldname))
            array = from_json_data(inp.name, inp.datatype, shape, values)
        out.inputs.append(Tensor(inp.name, inp.datatype, shape, array))
    for o in request.outputs:
        out.outputs = [*(out.outputs or []), o.name]
    return out


def as_input(name: str, array: np.ndarray, datatype: str = "FP32") -> tuple[dict, bytes]:
    """(the JSON header entry, the raw bytes) of one input in the binary extension: what a client sends."""
    raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "parameters": {"binary_data_size": len(raw)}}, raw


def binary_body(inputs: list[tuple[dict, bytes]], **request: Any) -> tuple[bytes, dict]:
    """A binary-extension request body and its headers, for clients without a KServe library (benchmarks)."""
    head = json.dumps({**request, "inputs": [entry for entry, _ in inputs]}).encode()
    return b"".join([head, *(raw for _, raw in inputs)]), {
        "Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


# ------------------------------------------------------------------------------------------------ one codec per task


class ClassifyCodec:
    """A classifier portfolio's outputs: one FP32 row of class scores per sample, as the graph computed it."""

    task = "classify"
    quality = "accuracy"  # what a variant's `accuracy` measures, as the status page names it

    def output_specs(self, manifest) -> list[dict]:
        return [{"name": "output", "datatype": "FP32", "shape": [-1, manifest.classes]}]

    def config_dims(self, spec: dict) -> list[int]:
        """Triton's dims of an output: the batch dimension is implied by max_batch_size and left out."""
        return spec["shape"][1:] or [-1]

    def decode(self, manifest, vid: str, y: np.ndarray) -> np.ndarray:
        return y

    def detections(self, y: Any) -> int | None:
        return None

    def outputs(self, y: np.ndarray) -> list[Tensor]:
        return [Tensor("output", "FP32", list(y.shape), y)]


class DetectCodec:
    """A detector portfolio's outputs: the graph's raw maps decoded (NMS) per sample into ragged detections, answered
    flattened with each row tagged by its sample (as torchvision's batched NMS does)."""

    task = "detect"
    quality = "profiled AP@0.5"

    def output_specs(self, manifest) -> list[dict]:
        return [{"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "scores", "datatype": "FP32", "shape": [-1]},
                {"name": "classes", "datatype": "INT64", "shape": [-1]},
                {"name": "batch_index", "datatype": "INT64", "shape": [-1]}]

    def config_dims(self, spec: dict) -> list[int]:
        return spec["shape"]  # one row per detection, not per sample: no batch dimension

    def decode(self, manifest, vid: str, y: Any) -> list:
        """Detections per sample (a caller waits for the decoding too, and the profile timed both)."""
        from ..detection.detector import decode

        size = manifest.detection["input_sizes"][vid]
        return [decode(out, size) for out in y]

    def detections(self, y: list) -> int:
        return sum(len(d) for d in y)

    def outputs(self, y: list) -> list[Tensor]:
        index = np.repeat(np.arange(len(y)), [len(d) for d in y]).astype(np.int64)
        boxes = np.concatenate([d.boxes for d in y]).reshape(-1, 4).astype(np.float32)
        columns = (("boxes", boxes, "FP32"), ("scores", np.concatenate([d.scores for d in y]), "FP32"),
                   ("classes", np.concatenate([d.classes for d in y]), "INT64"), ("batch_index", index, "INT64"))
        return [Tensor(n, t, list(a.shape), a) for n, a, t in columns]


TASK_CODECS = {"classify": ClassifyCodec(), "detect": DetectCodec()}


def for_task(task: str) -> ClassifyCodec | DetectCodec:
    """The codec of a portfolio's task (its manifest's `task`)."""
    return TASK_CODECS[task]
