"""What a cut's activations travel as between tiers: fp32 as computed, fp16, or int8 (symmetric, one scale per
tensor, max |x| / 127), chosen by the planner together with the cut (plan.enumerate_plans(wires=...)).

fp16 halves the bytes and int8 quarters them, at the cost of encoding on the sender and decoding on the receiver and
of precision (fp16 keeps about 3 significant digits; int8 rounds to 1/127 of the tensor's largest magnitude). The
answer that comes back is always fp32. `measure` times the codecs per value on this tier, so the planner can price
a candidate (cut, dtype) as bytes / bandwidth + values x (encode ns on the sender + decode ns on the receiver).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

WIRES = ("fp32", "fp16", "int8")
ITEMSIZE = {"fp32": 4, "fp16": 2, "int8": 1}


def parse(text: str, option: str = "--wire") -> tuple[str, ...]:
    """The transfer dtypes a comma-separated option names (`fp32,fp16`, or `all`), refused in one line if one is
    unknown or none is given."""
    names = list(WIRES) if text.strip() == "all" else [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in WIRES]
    if bad or not names:
        raise ConfigError(f"{option} {text!r}: choose among {', '.join(WIRES)} (comma-separated), or all")
    return tuple(dict.fromkeys(names))


def _check(wire: str) -> None:
    if wire not in WIRES:
        raise ValueError(f"transfer dtype {wire!r}: choose one of {', '.join(WIRES)}")


def encode(arrays: Sequence[np.ndarray], wire: str = "fp32") -> tuple[bytes, dict[str, str]]:
    """The tensors as one body (one after the other) and the headers that describe them: `x-shape`
    (`1,64,8,8;1,32,8,8`), `x-dtype`, and for int8 `x-scale` (one per tensor).

    fp32 sends the tensors as computed: float ones as float32, and the quantised (uint8/int8) activations of an
    INT8 graph in their own dtype, named in `x-elem` (`float32;uint8`; absent when all are float32). fp16 and int8
    re-code float tensors only: a tensor that is not float is refused (the planner offers them only where every
    tensor crossing is float32)."""
    _check(wire)
    parts, scales, elems = [], [], []
    for a in arrays:
        a = np.asarray(a)
        if wire == "fp32" and a.dtype.kind in "iub":
            parts.append(np.ascontiguousarray(a).tobytes())
            elems.append(a.dtype.name)
            continue
        if a.dtype.kind != "f":
            raise ValueError(f"a {a.dtype} tensor cannot travel as {wire}: send it as fp32 (as computed)")
        a = np.ascontiguousarray(a, dtype=np.float32)
        elems.append("float32")
        if wire == "fp16":
            parts.append(a.astype(np.float16).tobytes())
        elif wire == "int8":
            top = float(np.abs(a).max()) if a.size else 0.0
            scale = top / 127 if top > 0 else 1.0
            parts.append(np.rint(a / np.float32(scale)).astype(np.int8).tobytes())
            scales.append(scale)
        else:
            parts.append(a.tobytes())
    headers = {"x-shape": ";".join(",".join(map(str, a.shape)) for a in arrays), "x-dtype": wire}
    if scales:
        headers["x-scale"] = ";".join(repr(s) for s in scales)
    if any(e != "float32" for e in elems):
        headers["x-elem"] = ";".join(elems)
    return b"".join(parts), headers


def decode(body: bytes, shape_header: str, wire: str = "fp32", scale_header: str = "",
           elem_header: str = "") -> list[np.ndarray]:
    """The tensors of a body made by `encode`: float32, or for fp32 with `x-elem` each in the dtype it names."""
    _check(wire)
    shapes = [tuple(int(v) for v in part.split(",")) for part in shape_header.split(";")]
    sizes = [int(np.prod(s)) for s in shapes]
    coded = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "int8": np.dtype(np.int8)}[wire]
    if elem_header:
        if wire != "fp32":
            raise ValueError(f"x-elem is for fp32 bodies, not {wire}")
        dtypes = [np.dtype(e) for e in elem_header.split(";")]
        if len(dtypes) != len(shapes) or any(d.kind not in "fiub" for d in dtypes):
            raise ValueError(f"x-elem {elem_header!r} does not name a numeric dtype per tensor")
    else:
        dtypes = [coded] * len(shapes)
    if len(body) != sum(n * d.itemsize for n, d in zip(sizes, dtypes, strict=True)):
        got = f"{len(body)} bytes" if elem_header else f"{len(body) / coded.itemsize:g} {wire} values"
        raise ValueError(f"{got} for shapes of {sum(sizes)} in all")
    scales = [float(v) for v in scale_header.split(";")] if wire == "int8" else [1.0] * len(shapes)
    if len(scales) != len(shapes):
        raise ValueError(f"{len(scales)} int8 scale(s) for {len(shapes)} tensor(s)")
    out, offset = [], 0
    for n, s, k, d in zip(sizes, shapes, scales, dtypes, strict=True):
        a = np.frombuffer(body, dtype=d, count=n, offset=offset).reshape(s)
        offset += n * d.itemsize
        out.append(a if wire == "fp32" else a.astype(np.float32) * np.float32(k) if wire == "int8"
                   else a.astype(np.float32))
    return out


def measure(values: int = 1 << 18, runs: int = 30, warmup: int = 3, seed: int = 0) -> dict:
    """{wire: {"encode_ns", "decode_ns"}} per value on this machine as it is now (under the caller's quota, if any):
    the mean over `runs` codings of a `values`-long standard-normal tensor (means, like the blocks' times: a quota's
    throttles fall on some calls and not others)."""
    a = np.random.default_rng(seed).standard_normal(values).astype(np.float32).reshape(1, -1)
    out = {}
    for wire in WIRES:
        enc, dec = [], []
        for k in range(warmup + runs):
            t0 = time.perf_counter()
            body, headers = encode([a], wire)
            t1 = time.perf_counter()
            decode(body, headers["x-shape"], wire, headers.get("x-scale", ""))
            t2 = time.perf_counter()
            if k >= warmup:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
        out[wire] = {"encode_ns": float(np.mean(enc)) / values * 1e9, "decode_ns": float(np.mean(dec)) / values * 1e9}
    return out


def codec_ms(sender: dict | None, receiver: dict | None, wire: str, values: int) -> float:
    """Encoding on a tier whose bench measured `sender` (its `wire`, from `measure`) plus decoding on one that
    measured `receiver`, for `values` values; 0 for bench files made before the codecs were timed (None)."""
    if not sender or not receiver:
        return 0.0
    return values * (sender[wire]["encode_ns"] + receiver[wire]["decode_ns"]) / 1e6
