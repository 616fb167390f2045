"""Scission's planner: every way to run a model's blocks in order over a device, an edge server and the cloud,
priced from each tier's bench file and the links between them, best first.

A plan gives the device blocks [0, a), the edge [a, b) and the cloud [b, L), for every a <= b and every choice of
device, edge (or none) and cloud (or none) among the tiers benchmarked. Its predicted end-to-end latency is

    sum of its blocks' times on the tiers that run them
    + per hop: round-trip time + bytes sent / bandwidth + result bytes / bandwidth (the answer comes back)
               + the request's fixed cost on the transport (hop.request_ms, measured by `partition bench`)

(Scission leaves the returning result out; at 1.6 Mbit/s a 1000-class answer takes 20 ms, so it is counted here.)
With the transfer layer, a plan whose device cut is eligible also comes in a variant that pools there: a quarter of
the bytes, plus the measured pooling time on the device and up-sampling time on the receiver. With several transfer
dtypes (`wires`, see wire.py), every plan that crosses a link also comes in a variant per dtype, so the dtype is
chosen together with the cut: the bytes of its values at that dtype, plus encoding on the sender and decoding on the
receiver (values x the ns per value each tier's bench measured).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checks import number
from ..errors import ConfigError, EdgePruneError
from . import hop, wire
from .records import PLAN_FORMAT

ROLES = ("device", "edge", "cloud")
FORMAT = PLAN_FORMAT


class NoPlanError(EdgePruneError):
    """The constraints leave no plan."""


@dataclass(frozen=True)
class Link:
    source: str
    destination: str
    rtt_ms: float
    bandwidth_mbps: float

    def seconds(self, nbytes: int) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6)


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


def check_benches(benches: Sequence[dict]) -> None:
    """All bench files must be of one model (same ONNX) and name different tiers."""
    first = benches[0]
    seen: set[str] = set()
    for b in benches:
        if b["onnx_sha256"] != first["onnx_sha256"]:
            raise ConfigError(f"bench files of different models: tier {b['tier']!r} timed {b['model']} "
                              f"({b['onnx_sha256'][:12]}), tier {first['tier']!r} {first['model']} "
                              f"({first['onnx_sha256'][:12]}); bench every tier on the same ONNX")
        if b["tier"] in seen:
            raise ConfigError(f"two bench files for tier {b['tier']!r}; give one per tier")
        seen.add(b["tier"])


def assign_roles(benches: Sequence[dict], device: Sequence[str] = (), edge: Sequence[str] = (),
                 cloud: Sequence[str] = ()) -> dict[str, str]:
    """{tier: role}. Without --device/--edge/--cloud, the bench files in the order given are device, edge, cloud."""
    tiers = [b["tier"] for b in benches]
    given = {"device": list(device), "edge": list(edge), "cloud": list(cloud)}
    if not any(given.values()):
        if len(tiers) > 3:
            raise ConfigError(f"{len(tiers)} bench files ({', '.join(tiers)}): say which tier is which with "
                              "--device, --edge and --cloud")
        return dict(zip(tiers, ROLES, strict=False))
    roles = {}
    for role, names in given.items():
        for name in names:
            if name not in tiers:
                raise ConfigError(f"--{role} {name!r} has no bench file; tiers benchmarked: {', '.join(tiers)}")
            roles[name] = role
    if "device" not in roles.values():
        raise ConfigError("no --device tier: the input is made on a device; name one of " + ", ".join(tiers))
    return roles


def calibrated(bench: dict) -> dict:
    """The bench with its block times scaled to sum to the whole model's time (both measured in the same passes).

    Scission prints the sum-of-blocks overhead; here it is taken out. Many small blocks each pay a call's fixed cost
    and, under a quota, throttles that a single session spreads differently: on MobileNetV2's 50 blocks the sum came
    to twice the whole model's time. The blocks still say where the time goes; the whole model says how much."""
    scale = bench["whole_ms"] / bench["sum_blocks_ms"]
    return bench | {"calibration": scale, "blocks": [b | {"ms": b["ms"] * scale} for b in bench["blocks"]]}


def enumerate_plans(benches: Mapping[str, dict], roles: Mapping[str, str], links: Mapping[frozenset[str], Link],
                    tl: bool = False, wires: Sequence[str] = ("fp32",)) -> list[Plan]:
    """Every plan over the tiers in `roles` (see module docstring), priced; with `tl`, the transfer-layer variants
    too; with several `wires`, a variant per transfer dtype of each plan that crosses a link (fp32 only where a
    crossing tensor is not float32)."""
    for w in wires:
        if w not in wire.WIRES:
            raise ConfigError(f"transfer dtype {w!r}: choose among {', '.join(wire.WIRES)}")
    by_role = {r: [t for t, rr in roles.items() if rr == r] for r in ROLES}
    n = len(next(iter(benches.values()))["blocks"])
    plans, seen = [], set()
    for d in by_role["device"]:
        for e in by_role["edge"] or [None]:
            for c in by_role["cloud"] or [None]:
                for a in range(n + 1):
                    for b in range(a, n + 1):
                        if (e is None and b > a) or (c is None and b < n):
                            continue
                        stages = [Stage(d, "device", 0, a)]
                        stages += [Stage(e, "edge", a, b)] if e is not None and b > a else []
                        stages += [Stage(c, "cloud", b, n)] if c is not None and b < n else []
                        key = tuple(stages)
                        if key in seen:
                            continue
                        seen.add(key)
                        for w in _wires(stages, benches[d], wires):
                            plans.append(price(stages, benches, links, False, w))
                            if tl and len(stages) > 1 and a > 0 and benches[d]["blocks"][a - 1]["tl"] is not None:
                                plans.append(price(stages, benches, links, True, w))
    return plans


def _wires(stages: list[Stage], bench: dict, wires: Sequence[str]) -> Sequence[str]:
    """The dtypes a plan's crossings can travel as: fp32 alone for a plan that crosses no link or sends a tensor
    that is not float32."""
    if len(stages) == 1:
        return ("fp32",)
    cuts = [s.stop for s in stages[:-1]]
    floats = all(set(bench["blocks"][c - 1].get("output_dtypes", ["float32"])) == {"float32"} for c in cuts if c > 0)
    return wires if floats else ("fp32",)


def price(stages: list[Stage], benches: Mapping[str, dict], links: Mapping[frozenset[str], Link], tl: bool,
          dtype: str = "fp32") -> Plan:
    compute = [sum(benches[s.tier]["blocks"][i]["ms"] for i in range(s.first, s.stop)) for s in stages]
    some = next(iter(benches.values()))
    result_bytes = some["blocks"][-1]["output_bytes"]
    hops = []
    for k, (src, dst) in enumerate(zip(stages, stages[1:], strict=False)):
        link = links.get(frozenset((src.tier, dst.tier)))
        if link is None:
            raise ConfigError(f"the network file has no link between {src.tier!r} and {dst.tier!r}; add a line "
                              f"`{src.tier},{dst.tier},PING_MS,BANDWIDTH_MBPS`")
        cut = src.stop
        sent = some["input_bytes"] if cut == 0 else some["blocks"][cut - 1]["output_bytes"]
        tl_ms = 0.0
        if tl and k == 0:
            sent = benches[src.tier]["blocks"][cut - 1]["tl"]["bytes"]
            tl_ms = benches[src.tier]["blocks"][cut - 1]["tl"]["down_ms"] + benches[dst.tier]["blocks"][cut - 1]["tl"][
                "up_ms"]
        values = sent // 4  # float32 activations
        sent = values * wire.ITEMSIZE[dtype]
        hops.append(Hop(src.tier, dst.tier, cut, sent, link.rtt_ms, (link.seconds(sent) + link.seconds(result_bytes))
                        * 1e3, tl_ms, hop.request_ms(benches[src.tier], benches[dst.tier]), dtype,
                        wire.codec_ms(benches[src.tier], benches[dst.tier], dtype, values)))
    return Plan(stages, tl, compute, hops, dtype)


# ------------------------------------------------------------------------------------------------ constraints


@dataclass(frozen=True)
class Constraint:
    """One of Scission's constraints; `text` is how the user wrote it, named when it removes the last plan."""

    text: str
    ok: Callable[[Plan], bool]


def block_constraint(spec: str, roles: Mapping[str, str], n_blocks: int) -> list[Constraint]:
    """`TIER:SPEC` (`--blocks device:0,1,!5`): blocks that must (or, with `!`, must not) run on a tier (a tier name
    or a role)."""
    tier, sep, items = spec.partition(":")
    if not sep or not items:
        raise ConfigError(f"--blocks {spec!r}: write TIER:BLOCKS, e.g. device:0,1 or cloud:!20")
    _check_tier(tier, roles, "--blocks")
    out = []
    for item in items.split(","):
        item = item.strip()
        neg = item.startswith("!")
        try:
            block = int(item.removeprefix("!"))
        except ValueError:
            raise ConfigError(f"--blocks {spec!r}: {item!r} is not a block index (or !index)") from None
        if not 0 <= block < n_blocks:
            raise ConfigError(f"--blocks {spec!r}: block {block} does not exist; the model has blocks 0-{n_blocks - 1}")
        text = f"--blocks {tier}:{item}"
        if neg:
            out.append(Constraint(text, lambda p, b=block: tier not in (p.where(b).tier, p.where(b).role)))
        else:
            out.append(Constraint(text, lambda p, b=block: tier in (p.where(b).tier, p.where(b).role)))
    return out


def limit_constraint(kind: str, spec: str, roles: Mapping[str, str]) -> Constraint:
    """`--max-upload TIER=MB` (bytes the tier sends) or `--max-time TIER=MS` / `TIER=P%` (its compute time, or its
    share of the plan's total)."""
    tier, sep, value = spec.partition("=")
    if not sep:
        raise ConfigError(f"--{kind} {spec!r}: write TIER=VALUE, e.g. device=0.5")
    _check_tier(tier, roles, f"--{kind}")
    share = kind == "max-time" and value.endswith("%")
    try:
        limit = float(value.removesuffix("%") if share else value)
    except ValueError:
        raise ConfigError(f"--{kind} {spec!r}: {value!r} is not a number") from None
    if limit < 0:
        raise ConfigError(f"--{kind} {spec!r}: the limit must be >= 0")
    text = f"--{kind} {spec}"
    if kind == "max-upload":
        return Constraint(text, lambda p: p.upload_bytes(tier) <= limit * 1e6)
    if share:
        return Constraint(text, lambda p: p.tier_ms(tier) <= limit / 100 * p.total_ms)
    return Constraint(text, lambda p: p.tier_ms(tier) <= limit)


def _check_tier(tier: str, roles: Mapping[str, str], option: str) -> None:
    if tier not in roles and tier not in roles.values():
        known = ", ".join(f"{t} ({r})" for t, r in roles.items())
        raise ConfigError(f"{option}: no tier or role {tier!r}; tiers: {known}")


@dataclass
class Options:
    """What `partition plan` asks of every plan (the CLI's options): roles, transfer layer, constraints."""

    device: Sequence[str] = ()
    edge: Sequence[str] = ()
    cloud: Sequence[str] = ()
    tl: bool = False
    split: int | None = None
    blocks: Sequence[str] = ()
    max_upload: Sequence[str] = ()
    max_time: Sequence[str] = ()
    raw_blocks: bool = False
    top: int = 5
    wires: Sequence[str] = ("fp32",)  # transfer dtypes to choose among, with the cut (wire.WIRES)


def plan_model(recs: Sequence[dict], links: Mapping[frozenset[str], Link], opts: Options) -> tuple[list[Plan], dict]:
    """(the `opts.top` fastest plans, the plan record `partition run` reads) for one model's bench files."""
    from . import transfer

    if opts.top < 1:
        raise ConfigError(f"--top {opts.top}: show at least 1 plan")
    check_benches(recs)
    roles = assign_roles(recs, opts.device, opts.edge, opts.cloud)
    by_tier = {r["tier"]: r if opts.raw_blocks else calibrated(r) for r in recs if r["tier"] in roles}
    n = len(recs[0]["blocks"])
    constraints = [c for spec in opts.blocks for c in block_constraint(spec, roles, n)]
    constraints += [limit_constraint("max-upload", s, roles) for s in opts.max_upload]
    constraints += [limit_constraint("max-time", s, roles) for s in opts.max_time]
    split, tl = opts.split, opts.tl
    if split is not None:
        if not 0 <= split <= n:
            raise ConfigError(f"--split {split}: the model has blocks 0-{n - 1}; give 0 (send the input) to {n}")
        if tl:
            if split in (0, n):
                raise ConfigError(f"--split {split} --tl: a transfer layer sits at a cut between blocks, 1 to {n - 1}")
            last = recs[0]["blocks"][split - 1]
            if last.get("output_shape") is None:
                raise ConfigError(f"--split {split} --tl: {len(last['output_shapes'])} tensors cross that cut "
                                  f"({last['output']}); the transfer layer pools one; choose a single-tensor cut")
            transfer.check(last["output_shape"][:], f"{split} ({last['output']})")
        constraints.append(Constraint(f"--split {split}" + (" --tl" if tl else ""),
                                      lambda p: p.stages[0].stop == split and (p.tl or not tl)))
    ranked = best(enumerate_plans(by_tier, roles, links, tl, opts.wires), constraints, opts.top)
    return ranked, record(ranked, by_tier, roles, links, constraints, tl)


def by_variant(recs: Sequence[dict], paths: Sequence[str | Path], variants: Mapping[str, str]) -> dict[str, list]:
    """The bench files grouped by the portfolio variant they timed ({variant id: ONNX sha256} from its manifest),
    matched by the sha256 of the ONNX file. A file of another model, or a variant without bench files, is refused."""
    ids = {sha: vid for vid, sha in variants.items()}
    groups: dict[str, list[dict]] = {}
    for rec, path in zip(recs, paths, strict=True):
        if rec["onnx_sha256"] not in ids:
            raise ConfigError(f"{path} timed {rec['model']}, which is no variant of the portfolio; bench the "
                              "portfolio itself (`edgeprune partition bench PORTFOLIO --tier ...`)")
        groups.setdefault(ids[rec["onnx_sha256"]], []).append(rec)
    missing = [v for v in variants if v not in groups]
    if missing:
        raise ConfigError(f"no bench files for variant(s) {', '.join(missing)}; bench the portfolio on every tier "
                          "(`edgeprune partition bench PORTFOLIO --tier ...`) and pass all the files")
    return groups


def choose_variant(results: Mapping[str, tuple[list[Plan], dict] | NoPlanError], accuracy: Mapping[str, float],
                   target_ms: float) -> tuple[str, list[dict]]:
    """(the variant to run, a row per variant): the most accurate variant whose fastest plan is predicted to meet
    `target_ms` (ties: the faster). A NoPlanError names the fastest variant when none meets it."""
    if not target_ms > 0:
        raise ConfigError(f"--target-latency {target_ms}: give a latency in ms > 0")
    rows = []
    for vid, res in results.items():
        fastest = None if isinstance(res, NoPlanError) else res[0][0]
        rows.append({"variant": vid, "accuracy": accuracy[vid], "plan": fastest.label if fastest else None,
                     "predicted_ms": fastest.total_ms if fastest else None,
                     "meets": bool(fastest) and fastest.total_ms <= target_ms,
                     "why_not": str(res) if isinstance(res, NoPlanError) else None})
    ok = [r for r in rows if r["meets"]]
    if not ok:
        timed = [r for r in rows if r["predicted_ms"] is not None]
        if not timed:
            raise NoPlanError(f"no variant has a plan that satisfies the constraints ({rows[0]['why_not']})")
        f = min(timed, key=lambda r: r["predicted_ms"])
        raise NoPlanError(f"no variant meets --target-latency {target_ms:g} ms: the fastest is {f['variant']} at "
                          f"{f['predicted_ms']:.1f} ms ({f['plan']}); raise the target or add a faster variant")
    chosen = max(ok, key=lambda r: (r["accuracy"], -r["predicted_ms"]))
    return chosen["variant"], sorted(rows, key=lambda r: -r["accuracy"])


def best(plans: Iterable[Plan], constraints: Sequence[Constraint] = (), k: int = 5) -> list[Plan]:
    """The k fastest plans that meet every constraint. Raises NoPlanError naming the constraint that removed the
    last candidate."""
    left = list(plans)
    for c in constraints:
        kept = [p for p in left if c.ok(p)]
        if not kept:
            raise NoPlanError(f"no plan satisfies the constraints: {c.text} removed the last {len(left)} "
                              "candidate(s); relax it")
        left = kept
    return sorted(left, key=lambda p: p.total_ms)[:k]


def record(top: Sequence[Plan], benches: Mapping[str, dict], roles: Mapping[str, str],
           links: Mapping[frozenset[str], Link], constraints: Sequence[Constraint], tl: bool) -> dict:
    """What `partition plan` writes (plan.json), and `partition run` reads."""
    some = next(iter(benches.values()))
    return {
        "format": FORMAT, "model": some["model"], "onnx_sha256": some["onnx_sha256"],
        "input_shape": some["input_shape"], "clock": "predicted", "tl": tl,
        "max_tensors": some.get("max_tensors", 1),
        "tiers": {t: {"role": r, "threads": benches[t]["threads"], "device": benches[t]["device"],
                      "slowdown": benches[t]["slowdown"], "calibration": benches[t].get("calibration")}
                  for t, r in roles.items()},
        "links": [asdict(v) for v in links.values()], "constraints": [c.text for c in constraints],
        "plans": [p.to_dict() for p in top],
    }


def plot(top: Sequence[Plan], path: str | Path, title: str) -> Path:
    """Horizontal stacked bars, one per plan: compute per tier, then link time (RTT + bytes, and the transfer
    layer's pooling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"device": "tab:blue", "edge": "tab:orange", "cloud": "tab:green"}
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(top) + 1.5))
    for y, p in enumerate(reversed(top)):
        left = 0.0
        for s, ms in zip(p.stages, p.compute_ms, strict=True):
            ax.barh(y, ms, left=left, color=colours[s.role])
            left += ms
        link = sum(h.ms for h in p.hops)
        ax.barh(y, link, left=left, color="tab:gray")
    ax.set_yticks(range(len(top)), [p.label for p in reversed(top)], fontsize=8)
    ax.set_xlabel("predicted end-to-end latency (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (*colours.values(), "tab:gray")]
    ax.legend(handles, [*colours, "link"], loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
