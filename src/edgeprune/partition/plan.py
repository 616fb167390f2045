"""Planning a partition: the bench files of one model checked and given roles, a planner's plans (planners.py;
Scission's by default, scission.py) kept where they meet the constraints (constraints.py), the fastest written as the
plan file `partition run` reads, and, for a portfolio, the variant chosen together with the cut.

The records (bench, plan, link) are typed in records.py; the names below are re-exported for the callers that
knew them here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import planners
from .constraints import Constraint, NoPlanError, best, block_constraint, limit_constraint
from .planners import Options
from .records import PLAN_FORMAT, Bench, Hop, Link, Plan, PlanFile, Stage, Tier, read_network
from .scission import ROLES, enumerate_plans, price

if TYPE_CHECKING:
    from ..portfolio import Manifest

FORMAT = PLAN_FORMAT
__all__ = ["Constraint", "Hop", "Link", "NoPlanError", "Options", "Plan", "PlanFile", "Stage", "ROLES", "best",
           "block_constraint", "enumerate_plans", "limit_constraint", "price", "read_network"]


def check_benches(benches: Sequence[Bench]) -> None:
    """All bench files must be of one model (same ONNX) and name different tiers."""
    first = benches[0]
    seen: set[str] = set()
    for b in benches:
        if b.onnx_sha256 != first.onnx_sha256:
            raise ConfigError(f"bench files of different models: tier {b.tier!r} timed {b.model} "
                              f"({b.onnx_sha256[:12]}), tier {first.tier!r} {first.model} "
                              f"({first.onnx_sha256[:12]}); bench every tier on the same ONNX")
        if b.tier in seen:
            raise ConfigError(f"two bench files for tier {b.tier!r}; give one per tier")
        seen.add(b.tier)


def assign_roles(benches: Sequence[Bench], device: Sequence[str] = (), edge: Sequence[str] = (),
                 cloud: Sequence[str] = ()) -> dict[str, str]:
    """{tier: role}. Without --device/--edge/--cloud, the bench files in the order given are device, edge, cloud."""
    tiers = [b.tier for b in benches]
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


def calibrated(bench: Bench) -> Bench:
    """`bench` with its block times scaled to sum to the whole model's time (records.Bench.calibrated)."""
    return bench.calibrated()


def plan_model(recs: Sequence[Bench], links: Mapping[frozenset[str], Link], opts: Options
               ) -> tuple[list[Plan], PlanFile]:
    """(the `opts.top` fastest plans of planner `opts.planner`, the plan file `partition run` reads) for one model's
    bench files."""
    from . import transfer

    planner = planners.get(opts.planner)
    if opts.top < 1:
        raise ConfigError(f"--top {opts.top}: show at least 1 plan")
    check_benches(recs)
    roles = assign_roles(recs, opts.device, opts.edge, opts.cloud)
    by_tier = {r.tier: r if opts.raw_blocks else r.calibrated() for r in recs if r.tier in roles}
    n = len(recs[0].blocks)
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
            last = recs[0].blocks[split - 1]
            if last.output_shape is None:
                raise ConfigError(f"--split {split} --tl: {len(last.output_shapes or ())} tensors cross that cut "
                                  f"({last.output}); the transfer layer pools one; choose a single-tensor cut")
            if last.output_dtypes != ["float32"]:
                raise ConfigError(f"--split {split} --tl: the tensor crossing that cut ({last.output}) is "
                                  f"{last.output_dtypes[0]}, an INT8 graph's quantised activation; the transfer layer "
                                  "pools float32 maps; choose a cut where a float tensor crosses, or drop --tl")
            transfer.check(last.output_shape[:], f"{split} ({last.output})")
        constraints.append(Constraint(f"--split {split}" + (" --tl" if tl else ""),
                                      lambda p: p.stages[0].stop == split and (p.tl or not tl)))
    ranked = best(planner(by_tier, roles, links, opts), constraints, opts.top)
    return ranked, record(ranked, by_tier, roles, links, constraints, tl, opts.planner)


def plan_portfolio(recs: Sequence[Bench], paths: Sequence[str | Path], links: Mapping[frozenset[str], Link],
                   opts: Options, manifest: Manifest, target_ms: float,
                   portfolio: str | Path | None = None) -> tuple[list[Plan], PlanFile, list[dict]]:
    """Choose the variant and the cut together: every variant of `manifest` planned from its own bench files
    (`recs`, read from `paths`), then the most accurate whose fastest plan meets `target_ms` (choose_variant).
    (the chosen variant's plans, its plan file naming the variant, the target, `portfolio` (the folder, as
    `partition run` reads it back) and a row per variant)."""
    results: dict[str, tuple[list[Plan], PlanFile] | NoPlanError] = {}
    for vid, group in by_variant(recs, paths, {v.id: v.sha256 for v in manifest.variants}).items():
        try:
            results[vid] = plan_model(group, links, opts)
        except NoPlanError as e:  # this variant has none; another may
            results[vid] = e
    chosen, rows = choose_variant(results, {v.id: v.accuracy for v in manifest.variants}, target_ms)
    ranked, rec = results[chosen]  # choose_variant picks a variant that has plans
    rec.variant, rec.target_latency_ms, rec.variants = chosen, target_ms, rows
    rec.portfolio = None if portfolio is None else str(portfolio)
    return ranked, rec, rows


def by_variant(recs: Sequence[Bench], paths: Sequence[str | Path], variants: Mapping[str, str]) -> dict[str, list]:
    """The bench files grouped by the portfolio variant they timed ({variant id: ONNX sha256} from its manifest),
    matched by the sha256 of the ONNX file. A file of another model, or a variant without bench files, is refused."""
    ids = {sha: vid for vid, sha in variants.items()}
    groups: dict[str, list[Bench]] = {}
    for rec, path in zip(recs, paths, strict=True):
        if rec.onnx_sha256 not in ids:
            raise ConfigError(f"{path} timed {rec.model}, which is no variant of the portfolio; bench the "
                              "portfolio itself (`edgeprune partition bench PORTFOLIO --tier ...`)")
        groups.setdefault(ids[rec.onnx_sha256], []).append(rec)
    missing = [v for v in variants if v not in groups]
    if missing:
        raise ConfigError(f"no bench files for variant(s) {', '.join(missing)}; bench the portfolio on every tier "
                          "(`edgeprune partition bench PORTFOLIO --tier ...`) and pass all the files")
    return groups


def choose_variant(results: Mapping[str, tuple[list[Plan], PlanFile] | NoPlanError], accuracy: Mapping[str, float],
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


def record(top: Sequence[Plan], benches: Mapping[str, Bench], roles: Mapping[str, str],
           links: Mapping[frozenset[str], Link], constraints: Sequence[Constraint], tl: bool,
           planner: str = planners.DEFAULT) -> PlanFile:
    """What `partition plan` writes (plan.json), and `partition run` reads."""
    some = next(iter(benches.values()))
    return PlanFile(
        model=some.model, onnx_sha256=some.onnx_sha256, input_shape=list(some.input_shape), tl=tl,
        tiers={t: Tier(r, benches[t].threads, benches[t].device, benches[t].slowdown, benches[t].calibration)
               for t, r in roles.items()},
        links=list(links.values()), plans=list(top), constraints=[c.text for c in constraints],
        max_tensors=some.max_tensors, planner=planner)


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
