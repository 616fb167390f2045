"""The partition records, typed, and read and written here alone (as `record.py` does for runs): a tier's bench
file (`Bench`, what `partition bench` writes), a plan file (`PlanFile`, what `partition plan` writes and `partition
run` reads) and the plans in it (`Plan`, its `Stage`s and `Hop`s), and the network file (`Link`s).

The files keep their flat JSON form, so those of earlier versions still read (a field added since takes its
default). Every file is checked field by field when read: a hand-edited, truncated or wrong-kind file (or one
holding NaN) is one line naming the file and the field, not a traceback later.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..checks import number, record
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


def _known(cls, d: dict) -> dict:
    """The keys of `d` that are fields of dataclass `cls` (a file may hold keys of a later version)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ------------------------------------------------------------------------------------------------ bench


@dataclass(frozen=True)
class TransferTiming:
    """The transfer layer at a cut: the bytes it sends, and its pooling (sender) and up-sampling (receiver) times."""

    bytes: int
    down_ms: float
    up_ms: float


@dataclass
class Block:
    """One block as one tier ran it: its time, and what its output weighs on the wire."""

    index: int
    output_bytes: int
    ms: float  # the mean over the timed passes (scaled by `Bench.calibrated`)
    output_shape: list[int] | None = None  # None: several tensors cross (see output_shapes)
    output_shapes: list[list[int]] | None = None
    output_dtypes: list[str] = field(default_factory=lambda: ["float32"])
    median_ms: float | None = None
    tl: TransferTiming | None = None  # None: the transfer layer cannot pool this cut
    output: str = ""
    output_op: str = ""
    first_node: str = ""
    last_node: str = ""
    nodes: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> Block:
        tl = d.get("tl")
        return cls(**_known(cls, d) | {"tl": TransferTiming(**tl) if tl is not None else None})


@dataclass
class Bench:
    """A tier's bench file: every block of one model timed on one machine as that tier (partition/bench.py)."""

    model: str
    onnx_sha256: str
    input_shape: list[int]
    input_bytes: int
    tier: str
    threads: int
    device: dict  # the CPU quota (and the fit of --slowdown), or {"cpu_quota": None}
    blocks: list[Block]
    whole_ms: float
    sum_blocks_ms: float
    input: str | None = None
    slowdown: dict | None = None
    max_tensors: int = 1
    clock: str = "wall"
    runs: int | None = None
    warmup: int | None = None
    statistic: str = "mean"
    request: dict | None = None  # a request's fixed cost on the transport (hop.measure); None before it was
    wire: dict | None = None  # each transfer dtype's encode/decode ns per value (wire.measure)
    blocks_over_whole: float | None = None
    environment: dict | None = None
    weights_seed: int | None = None  # the seed of a model built by name
    calibration: float | None = None  # set by `calibrated`: the factor the blocks' times were scaled by
    format: str = BENCH_FORMAT

    def calibrated(self) -> Bench:
        """A copy with its block times scaled to sum to the whole model's time (both measured in the same passes).

        Scission prints the sum-of-blocks overhead; here it is taken out. Many small blocks each pay a call's fixed
        cost and, under a quota, throttles that a single session spreads differently: on MobileNetV2's 50 blocks the
        sum came to twice the whole model's time. The blocks still say where the time goes; the whole model says
        how much."""
        from dataclasses import replace

        scale = self.whole_ms / self.sum_blocks_ms
        return replace(self, calibration=scale, blocks=[replace(b, ms=b.ms * scale) for b in self.blocks])

    def sent_bytes(self, cut: int) -> int:
        """What crosses boundary `cut` as computed (0: the input, i: block i-1's output)."""
        return self.input_bytes if cut == 0 else self.blocks[cut - 1].output_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"format": d.pop("format"), **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> Bench:
        """A bench record from its JSON form, checked field by field (ConfigError naming the field)."""
        record(d, BENCH, where)
        if not d["blocks"]:
            raise ConfigError(f"{where}.blocks is empty")
        return cls(**_known(cls, d) | {"blocks": [Block.from_dict(b) for b in d["blocks"]]})


# ------------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Link:
    source: str
    destination: str
    rtt_ms: float
    bandwidth_mbps: float

    def seconds(self, nbytes: int) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6)


@dataclass(frozen=True)
class Stage:
    tier: str
    role: str
    first: int
    stop: int  # blocks first..stop-1

    def __str__(self) -> str:
        span = "-" if self.stop == self.first else f"{self.first}" if self.stop == self.first + 1 else \
            f"{self.first}-{self.stop - 1}"
        return f"{self.tier}[{span}]"


@dataclass
class Hop:
    source: str
    destination: str
    cut: int  # the boundary: 0 = the input, i = block i-1's output
    bytes: int
    rtt_ms: float
    transfer_ms: float  # bytes and the returning result over the bandwidth
    tl_ms: float = 0.0  # transfer layer: pooling on the sender + up-sampling on the receiver
    request_ms: float = 0.0  # the request's fixed cost on the transport (HTTP client + tier server), hop.request_ms
    wire: str = "fp32"  # the dtype the activations travel as
    codec_ms: float = 0.0  # encoding them on the sender + decoding on the receiver

    @property
    def ms(self) -> float:
        return self.rtt_ms + self.transfer_ms + self.tl_ms + self.request_ms + self.codec_ms


@dataclass
class Plan:
    stages: list[Stage]
    tl: bool
    compute_ms: list[float]
    hops: list[Hop]
    wire: str = "fp32"
    total_ms: float = field(init=False)

    def __post_init__(self):
        self.total_ms = sum(self.compute_ms) + sum(h.ms for h in self.hops)

    @property
    def label(self) -> str:
        return " > ".join(str(s) for s in self.stages) + (" +TL" if self.tl else "") + (
            f" @{self.wire}" if self.wire != "fp32" else "")

    def tier_ms(self, tier_or_role: str) -> float:
        return sum(ms for s, ms in zip(self.stages, self.compute_ms, strict=True) if tier_or_role in (s.tier, s.role))

    def upload_bytes(self, tier_or_role: str) -> int:
        return sum(h.bytes for h in self.hops if tier_or_role in (h.source, self._role(h.source)))

    def where(self, block: int) -> Stage:
        return next(s for s in self.stages if s.first <= block < s.stop)

    def _role(self, tier: str) -> str:
        return next(s.role for s in self.stages if s.tier == tier)

    def to_dict(self) -> dict:
        return {"label": self.label, "total_ms": self.total_ms, "tl": self.tl, "wire": self.wire,
                "stages": [asdict(s) | {"compute_ms": ms} for s, ms in zip(self.stages, self.compute_ms, strict=True)],
                "hops": [asdict(h) for h in self.hops]}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        stages = [Stage(s["tier"], s["role"], s["first"], s["stop"]) for s in d["stages"]]
        return cls(stages, d["tl"], [s["compute_ms"] for s in d["stages"]],
                   [Hop(**_known(Hop, h)) for h in d["hops"]], d.get("wire", "fp32"))


@dataclass
class Tier:
    role: str
    threads: int
    device: dict
    slowdown: dict | None = None
    calibration: float | None = None


@dataclass
class PlanFile:
    """What `partition plan` writes and `partition run` reads: the best plans of one model, and the tiers and links
    they were priced on."""

    model: str
    onnx_sha256: str
    input_shape: list[int]
    tl: bool
    tiers: dict[str, Tier]
    links: list[Link]
    plans: list[Plan]
    constraints: list[str] = field(default_factory=list)
    max_tensors: int = 1
    clock: str = "predicted"
    planner: str = "scission"
    # a plan of a portfolio (`partition plan --variants`): the variant chosen and the rows it was chosen from
    variant: str | None = None
    portfolio: str | None = None
    target_latency_ms: float | None = None
    variants: list[dict] | None = None
    format: str = PLAN_FORMAT

    def plan(self, rank: int) -> Plan:
        if not 1 <= rank <= len(self.plans):
            raise ConfigError(f"--rank {rank}: the plan file has plans 1-{len(self.plans)}")
        return self.plans[rank - 1]

    def link(self, source: str, destination: str) -> Link:
        found = next((lk for lk in self.links if {lk.source, lk.destination} == {source, destination}), None)
        if found is None:
            raise ConfigError(f"the plan file has no link between {source!r} and {destination!r}, which its plan "
                              "crosses; write it again with `edgeprune partition plan`")
        return found

    def to_dict(self) -> dict:
        d = {"format": self.format, "model": self.model, "onnx_sha256": self.onnx_sha256,
             "input_shape": self.input_shape, "clock": self.clock, "tl": self.tl, "max_tensors": self.max_tensors,
             "planner": self.planner, "tiers": {t: asdict(v) for t, v in self.tiers.items()},
             "links": [asdict(lk) for lk in self.links], "constraints": list(self.constraints),
             "plans": [p.to_dict() for p in self.plans]}
        if self.variant is not None:
            d |= {"variant": self.variant, "portfolio": self.portfolio, "target_latency_ms": self.target_latency_ms,
                  "variants": self.variants}
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> PlanFile:
        record(d, PLAN, where)
        if not d["plans"]:
            raise ConfigError(f"{where}.plans is empty")
        for tier, t in d["tiers"].items():
            record(t, TIER, f"{where}.tiers.{tier}")
        return cls(**_known(cls, d) | {
            "tiers": {t: Tier(**_known(Tier, v)) for t, v in d["tiers"].items()},
            "links": [Link(**_known(Link, lk)) for lk in d["links"]],
            "plans": [Plan.from_dict(p) for p in d["plans"]]})


# ------------------------------------------------------------------------------------------------ files


def _read(path: str | Path, kind: str) -> tuple[Path, dict, str]:
    from ..runs import read_json

    fmt, make = (BENCH_FORMAT, "partition bench") if kind == "bench" else (PLAN_FORMAT, "partition plan")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} does not exist; write it with `edgeprune {make}`")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ConfigError(f"{str(path)!r} is not a {kind} file ({fmt}); write it with `edgeprune {make}`")
    return path, data, make


def read_bench(path: str | Path) -> Bench:
    """The bench file at `path`, checked field by field."""
    path, data, make = _read(path, "bench")
    try:
        return Bench.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).lstrip('.')}; write the bench file again with `edgeprune {make}`"
                          ) from None


def read_plan(path: str | Path) -> PlanFile:
    """The plan file at `path`, checked field by field."""
    path, data, make = _read(path, "plan")
    try:
        return PlanFile.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).lstrip('.')}; write the plan file again with `edgeprune {make}`"
                          ) from None


def write(path: str | Path, rec: Bench | PlanFile) -> Path:
    """A bench or plan file, written atomically."""
    from ..runs import write_json

    return write_json(path, rec.to_dict())


def load(path: str | Path, kind: str) -> Any:
    """The bench ("bench") or plan ("plan") file at `path`, checked field by field."""
    return read_bench(path) if kind == "bench" else read_plan(path)


def read_network(path: str | Path) -> dict[frozenset[str], Link]:
    """Scission's network file: `source,destination,ping_ms,bandwidth_mbps` per line (a header line is skipped).
    Links are symmetric: one line serves both directions."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"network file {str(path)!r} does not exist; write one with lines "
                          "`source,destination,ping_ms,bandwidth_mbps`")
    links: dict[frozenset[str], Link] = {}
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                src, dst, rtt, bw = (v.strip() for v in row)
                link = Link(src, dst, float(rtt), float(bw))
            except ValueError:
                if n == 1:
                    continue  # the header
                raise ConfigError(f"{path}:{n}: {','.join(row)!r} is not `source,destination,ping_ms,bandwidth_mbps`"
                                  ) from None
            number(link.rtt_ms, f"{path}:{n}: ping_ms", at_least=0)
            number(link.bandwidth_mbps, f"{path}:{n}: bandwidth_mbps", above=0)
            links[frozenset((src, dst))] = link
    return links
