"""The files `partition bench` and `partition plan` write, checked when read back: a hand-edited, truncated or
wrong-kind file (or one holding NaN) is one line naming the file and the field, not a traceback later."""

from __future__ import annotations

from pathlib import Path

from ..checks import record
from ..errors import ConfigError

BENCH_FORMAT = "edgeprune.partition.bench/1"
PLAN_FORMAT = "edgeprune.partition.plan/1"

_TL = ("?", {"bytes": "int0", "down_ms": "num+", "up_ms": "num+"})
BENCH = {
    "model": "str", "onnx_sha256": "str", "input": ("?", "str"), "input_shape": ["int+"], "input_bytes": "int0",
    "tier": "str", "threads": "int+", "device": "dict", "slowdown": ("?", "dict"),
    "blocks": [{"index": "int0", "output_shape": ("?", ["int+"]), "output_bytes": "int0", "ms": "num+",
                "median_ms": ("?", "num+"), "tl": _TL}],
    "whole_ms": "num>0", "sum_blocks_ms": "num>0",
}
PLAN = {
    "model": "str", "onnx_sha256": "str", "input_shape": ["int+"], "tl": "bool",
    "tiers": "dict", "links": [{"source": "str", "destination": "str", "rtt_ms": "num+", "bandwidth_mbps": "num>0"}],
    "plans": [{"label": "str", "total_ms": "num+", "tl": "bool",
               "stages": [{"tier": "str", "role": "str", "first": "int0", "stop": "int0", "compute_ms": "num+"}],
               "hops": [{"source": "str", "destination": "str", "cut": "int0", "bytes": "int0", "rtt_ms": "num+",
                         "transfer_ms": "num+", "tl_ms": "num+"}]}],
}
TIER = {"role": "str", "threads": "int+", "device": "dict"}


def load(path: str | Path, kind: str) -> dict:
    """The bench ("bench") or plan ("plan") file at `path`, checked field by field."""
    from ..runs import read_json

    fmt, spec, make = ((BENCH_FORMAT, BENCH, "partition bench") if kind == "bench"
                       else (PLAN_FORMAT, PLAN, "partition plan"))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} does not exist; write it with `edgeprune {make}`")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ConfigError(f"{str(path)!r} is not a {kind} file ({fmt}); write it with `edgeprune {make}`")
    try:
        record(data, spec, "")
        if kind == "bench" and not data["blocks"]:
            raise ConfigError(".blocks is empty")
        if kind == "plan":
            if not data["plans"]:
                raise ConfigError(".plans is empty")
            for tier, t in data["tiers"].items():
                record(t, TIER, f".tiers.{tier}")
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).lstrip('.')}; write the {kind} file again with `edgeprune {make}`"
                          ) from None
    return data
