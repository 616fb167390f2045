"""Scission's planner: every way to run a model's blocks in order over a device, an edge server and the cloud,
priced from each tier's bench file and the links between them.

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

from collections.abc import Mapping, Sequence

from ..errors import ConfigError
from . import hop, wire
from .planners import Options, register
from .records import Bench, Hop, Link, Plan, Stage

ROLES = ("device", "edge", "cloud")


@register("scission")
def scission(benches: Mapping[str, Bench], roles: Mapping[str, str], links: Mapping[frozenset[str], Link],
             opts: Options) -> list[Plan]:
    return enumerate_plans(benches, roles, links, opts.tl, opts.wires)


def enumerate_plans(benches: Mapping[str, Bench], roles: Mapping[str, str], links: Mapping[frozenset[str], Link],
                    tl: bool = False, wires: Sequence[str] = ("fp32",)) -> list[Plan]:
    """Every plan over the tiers in `roles` (see module docstring), priced; with `tl`, the transfer-layer variants
    too; with several `wires`, a variant per transfer dtype of each plan that crosses a link (fp32 only where a
    crossing tensor is not float32)."""
    for w in wires:
        if w not in wire.WIRES:
            raise ConfigError(f"transfer dtype {w!r}: choose among {', '.join(wire.WIRES)}")
    by_role = {r: [t for t, rr in roles.items() if rr == r] for r in ROLES}
    n = len(next(iter(benches.values())).blocks)
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
                            if tl and len(stages) > 1 and a > 0 and benches[d].blocks[a - 1].tl is not None:
                                plans.append(price(stages, benches, links, True, w))
    return plans


def _wires(stages: list[Stage], bench: Bench, wires: Sequence[str]) -> Sequence[str]:
    """The dtypes a plan's crossings can travel as: fp32 alone for a plan that crosses no link or sends a tensor
    that is not float32."""
    if len(stages) == 1:
        return ("fp32",)
    cuts = [s.stop for s in stages[:-1]]
    floats = all(set(bench.blocks[c - 1].output_dtypes) == {"float32"} for c in cuts if c > 0)
    return wires if floats else ("fp32",)


def price(stages: list[Stage], benches: Mapping[str, Bench], links: Mapping[frozenset[str], Link], tl: bool,
          dtype: str = "fp32") -> Plan:
    compute = [sum(benches[s.tier].blocks[i].ms for i in range(s.first, s.stop)) for s in stages]
    some = next(iter(benches.values()))
    result_bytes = some.blocks[-1].output_bytes
    hops = []
    for k, (src, dst) in enumerate(zip(stages, stages[1:], strict=False)):
        link = links.get(frozenset((src.tier, dst.tier)))
        if link is None:
            raise ConfigError(f"the network file has no link between {src.tier!r} and {dst.tier!r}; add a line "
                              f"`{src.tier},{dst.tier},PING_MS,BANDWIDTH_MBPS`")
        sender, receiver = benches[src.tier], benches[dst.tier]
        cut = src.stop
        sent = some.sent_bytes(cut)
        tl_ms = 0.0
        if tl and k == 0:
            at = sender.blocks[cut - 1].tl
            sent = at.bytes
            tl_ms = at.down_ms + receiver.blocks[cut - 1].tl.up_ms
        values = sent // 4  # re-coded only where every tensor crossing is float32 (_wires)
        if dtype != "fp32":
            sent = values * wire.ITEMSIZE[dtype]
        hops.append(Hop(src.tier, dst.tier, cut, sent, link.rtt_ms, (link.seconds(sent) + link.seconds(result_bytes))
                        * 1e3, tl_ms, hop.request_ms(sender.request, receiver.request), dtype,
                        wire.codec_ms(sender.wire, receiver.wire, dtype, values)))
    return Plan(stages, tl, compute, hops, dtype)
