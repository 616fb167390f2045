"""`edgeprune partition cuts|bench|plan|run`: split a model across device, edge and cloud (Scission, ScissionLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ConfigError
from .common import console, handled, progress_bars

partition = typer.Typer(help="Split a model across device, edge and cloud: cut points, per-tier benchmarks, plans, "
                             "and real runs over emulated links.", no_args_is_help=True, rich_markup_mode="rich")

Source = Annotated[str, typer.Argument(help="A run folder (its model.onnx), an .onnx file, a portfolio folder (bench: "
                                            "every variant; run: the variant the plan chose), or a model name such "
                                            "as tv:vgg16 (weights drawn from --seed).")]
InputShape = Annotated[str, typer.Option(help="C,H,W for a model name (a run's ONNX fixes its own).")]
NumClasses = Annotated[int, typer.Option(help="Outputs of a model built by name (ImageNet's 1000 by default).")]
Seed = Annotated[int, typer.Option(help="Seed of the weights of a model built by name (recorded in the bench file): "
                                        "every command given the same name and seed builds the same model.")]
MaxTensors = Annotated[int, typer.Option(help="Also cut where up to this many activations cross (a minimum cut "
                                              "by bytes, as DADS): branchy models (Inception, DenseNet) get cut "
                                              "points inside their branches; the tensors of a cut travel together.")]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: write C,H,W with positive integers, e.g. 3,224,224")
    return shape


@partition.command("cuts")
@handled
def cuts_cmd(source: Source, input_shape: InputShape = "3,224,224", num_classes: NumClasses = 1000,
             seed: Seed = 0, max_tensors: MaxTensors = 1) -> None:
    """List a model's valid cut points: where exactly one activation crosses (up to --max-tensors).

    Example: [bold]edgeprune partition cuts tv:resnet18[/]; [bold]edgeprune partition cuts tv:inception_v3
    --input-shape 3,299,299 --max-tensors 8[/]
    """
    from .. import segments
    from ..checks import number
    from ..partition import bench, transfer

    number(max_tensors, "--max-tensors", at_least=1, integer=True)
    data, name = bench.source_model(source, _shape(input_shape), num_classes, seed)
    seg = segments.load(data, name, max_tensors)
    table = Table(title=f"{name}: {len(seg.cuts)} cuts, {seg.n_blocks} blocks")
    for col in ("cut", "after node", "op", "shape", "bytes", "transfer layer"):
        table.add_column(col)
    for i, c in enumerate(seg.cuts, 1):
        table.add_row(str(i), c.node, c.op, " + ".join("x".join(map(str, s)) for s in c.shapes), f"{c.bytes:,}",
                      "yes" if c.single and transfer.eligible(c.shape) else "")
    console.print(table)


@partition.command("bench")
@handled
def bench_cmd(
    source: Source,
    tier: Annotated[str, typer.Option(help="Name of the tier this machine plays (device, edge, cloud, pi4, ...).")],
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads on this tier.")] = 1,
    cpu_quota: Annotated[float | None, typer.Option(help="Emulate a slower device: a CPU quota, in CPUs (0.25 = a "
                                                         "quarter of one), via cgroups (root).")] = None,
    slowdown: Annotated[float | None, typer.Option(help="Emulate a device this many times slower than this "
                                                        "machine as loaded now: a quota fitted to the CPU share the "
                                                        "model gets unconfined (root).")] = None,
    input_shape: InputShape = "3,224,224",
    num_classes: NumClasses = 1000,
    seed: Seed = 0,
    runs: Annotated[int, typer.Option(help="Timed passes over the blocks (at least 30).")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed passes first.")] = 5,
    max_tensors: MaxTensors = 1,
    out: Annotated[Path, typer.Option(help="Folder for bench-<tier>.json.")] = Path("."),
) -> None:
    """Time every block of a model on this machine as one tier, fed real activations; write bench-<tier>.json
    (for a portfolio folder: every variant, into OUT/<variant>/bench-<tier>.json).

    Example: [bold]edgeprune partition bench tv:vgg16 --tier device --cpu-quota 0.25[/]
    """
    from .. import reaper
    from ..checks import name as plain_name
    from ..checks import number
    from ..partition import bench, records
    from ..runs import check_writable

    plain_name(tier, "--tier")
    number(warmup, "--warmup", at_least=0, integer=True)
    number(max_tensors, "--max-tensors", at_least=1, integer=True)
    for option, value in (("--cpu-quota", cpu_quota), ("--slowdown", slowdown)):
        if value is not None:
            number(value, option, above=0)
    check_writable(out, "--out")
    reaper.reap_and_say(lambda m: console.print(f"[yellow]{m}[/]"))  # a killed bench may have left its cgroup
    variants = bench.portfolio_models(source)
    todo = {name: (data, out / name) for name, data in variants.items()} if variants else {
        (m := bench.source_model(source, _shape(input_shape), num_classes, seed))[1]: (m[0], out)}
    for _, folder in todo.values():
        check_writable(folder, "--out")
    for name, (data, folder) in todo.items():
        with progress_bars() as progress:
            rec = bench.run(data, name, tier, threads, cpu_quota, runs, warmup, progress, slowdown=slowdown,
                            max_tensors=max_tensors)
        rec.weights_seed = seed if bench.by_name(source) else None
        path = records.write(bench.path_for(folder, tier), rec)
        slow = f", quota slowdown {rec.slowdown['slowdown']:.2f}x measured" if rec.slowdown else ""
        console.print(f"{name} on {tier}: {len(rec.blocks)} blocks, whole model {rec.whole_ms:.2f} ms, sum of "
                      f"blocks {rec.sum_blocks_ms:.2f} ms ({rec.blocks_over_whole:.2f}x){slow}; wrote {path}")


@partition.command("plan")
@handled
def plan_cmd(
    benches: Annotated[list[Path], typer.Argument(help="bench-<tier>.json files (device, edge, cloud in that order "
                                                       "unless --device/--edge/--cloud say otherwise).")],
    network: Annotated[Path, typer.Option(help="CSV of links: source,destination,ping_ms,bandwidth_mbps.")],
    device: Annotated[list[str] | None, typer.Option(help="Tier(s) that can be the device.")] = None,
    edge: Annotated[list[str] | None, typer.Option(help="Tier(s) that can be the edge.")] = None,
    cloud: Annotated[list[str] | None, typer.Option(help="Tier(s) that can be the cloud.")] = None,
    tl: Annotated[bool, typer.Option("--tl", help="Also consider ScissionLite's transfer layer at the device's cut "
                                                  "(2x2 max-pool there, nearest up-sampling after).")] = False,
    split: Annotated[int | None, typer.Option(help="Only plans whose device runs blocks 0..SPLIT-1.")] = None,
    blocks: Annotated[list[str] | None, typer.Option(help="TIER:BLOCKS, blocks that must (or with !, must not) run "
                                                          "there, e.g. device:0 or cloud:!20.")] = None,
    max_upload: Annotated[list[str] | None, typer.Option(help="TIER=MB the tier may send.")] = None,
    max_time: Annotated[list[str] | None, typer.Option(help="TIER=MS (or TIER=P%) of compute on the tier.")] = None,
    raw_blocks: Annotated[bool, typer.Option("--raw-blocks", help="Price blocks at their own measured times, not "
                                                                  "scaled to sum to the whole model's.")] = False,
    top: Annotated[int, typer.Option("--top", "-k", help="How many plans to show.")] = 5,
    planner: Annotated[str, typer.Option(help="The planner that makes the plans: scission (every ordered split, "
                                              "priced), or one declared in $EDGEPRUNE_PLANNERS.")] = "scission",
    wire: Annotated[str, typer.Option(help="Transfer dtypes to choose among with the cut, comma-separated: fp32, "
                                           "fp16, int8 (symmetric, a scale per tensor), or all.")] = "fp32",
    variants: Annotated[Path | None, typer.Option(help="A portfolio: choose the variant and the cut together (the "
                                                       "bench files are its variants', from `partition bench "
                                                       "PORTFOLIO`); needs --target-latency.")] = None,
    target_latency: Annotated[float | None, typer.Option(help="With --variants: the most accurate variant whose "
                                                              "fastest plan is predicted within MS.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write the plans (read by `partition run`).")] = Path("plan.json"),
    plot: Annotated[Path | None, typer.Option(help="Also draw the plans to this PNG.")] = None,
) -> None:
    """Scission's planner: every device/edge/cloud split priced from the bench files and the links, best first.

    Example: [bold]edgeprune partition plan bench-device.json bench-edge.json --network links.csv --tl[/]
    With a portfolio: [bold]edgeprune partition plan pfb/*/bench-*.json --network links.csv --variants pf
    --target-latency 40[/]
    """
    from ..checks import number
    from ..partition import bench, plan, records
    from ..partition import wire as wires
    from ..runs import check_output_file

    dtypes = wires.parse(wire)
    check_output_file(out, "--out")
    if plot is not None:
        from matplotlib.figure import Figure

        kinds = Figure().canvas.get_supported_filetypes()
        if plot.suffix.lower().lstrip(".") not in kinds:
            raise ConfigError(f"--plot {str(plot)!r}: matplotlib writes {', '.join(sorted(kinds))}, chosen by the "
                              "file's suffix; give e.g. plans.png")
        check_output_file(plot, "--plot", "plans" + plot.suffix.lower())
    if target_latency is not None:
        number(target_latency, "--target-latency", above=0)
    if (variants is None) != (target_latency is None):
        raise ConfigError("--variants and --target-latency go together: the portfolio to choose from and the "
                          "latency the choice must meet")
    opts = plan.Options(device or (), edge or (), cloud or (), tl, split, blocks or (), max_upload or (),
                        max_time or (), raw_blocks, top, dtypes, planner)
    recs = [bench.load(p) for p in benches]
    links = plan.read_network(network)
    if variants is None:
        ranked, rec = plan.plan_model(recs, links, opts)
    else:
        from .. import portfolio

        ranked, rec, rows = plan.plan_portfolio(recs, benches, links, opts, portfolio.load(variants), target_latency,
                                                portfolio=variants)
        _variant_table(rows, rec.variant, target_latency)

    table = Table(title=f"{rec.model}: the {len(ranked)} fastest plans (predicted)")
    for col in ("#", "plan", "predicted ms", "compute ms", "link ms", "bytes sent"):
        table.add_column(col, justify="right" if col != "plan" else "left")
    for i, p in enumerate(ranked, 1):
        link_ms = sum(h.ms for h in p.hops)  # round trip, transfer, transfer layer, request cost and codec
        table.add_row(str(i), p.label, f"{p.total_ms:.1f}", f"{sum(p.compute_ms):.1f}", f"{link_ms:.1f}",
                      " + ".join(f"{h.bytes:,}" for h in p.hops) or "-")
    console.print(table)
    records.write(out, rec)
    console.print(f"wrote {out}")
    if plot is not None:
        plan.plot(ranked, plot, f"{rec.model}, predicted; links from {network.name}")
        console.print(f"wrote {plot}")


def _variant_table(rows: list[dict], chosen: str, target_ms: float) -> None:
    table = Table(title=f"variants against --target-latency {target_ms:g} ms (chosen: {chosen})")
    for col in ("variant", "accuracy", "fastest plan", "predicted ms", "meets"):
        table.add_column(col, justify="right" if col in ("accuracy", "predicted ms") else "left")
    for r in rows:
        table.add_row(("* " if r["variant"] == chosen else "") + r["variant"], f"{100 * r['accuracy']:.2f} %",
                      r["plan"] or f"none: {r['why_not']}",
                      "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.1f}", "yes" if r["meets"] else "no")
    console.print(table)


@partition.command("run")
@handled
def run_cmd(
    source: Source,
    plan_file: Annotated[Path, typer.Option("--plan", help="plan.json from `partition plan`.")],
    rank: Annotated[int, typer.Option(help="Which of its plans to run (1 = the fastest).")] = 1,
    runs: Annotated[int, typer.Option(help="Timed requests.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed requests first.")] = 3,
    input_shape: InputShape = "3,224,224",
    num_classes: NumClasses = 1000,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Write the measurement here (JSON).")] = None,
) -> None:
    """Run a plan for real: one process per tier, activations sent over links emulated in network namespaces
    (tc tbf bandwidth, RTT slept by the application); end-to-end latency measured at the device.

    Example: [bold]edgeprune partition run tv:vgg16 --plan plan.json --rank 1[/]
    """
    from .. import reaper
    from ..files import write_json
    from ..partition import bench, offload, records
    from ..runs import check_output_file

    reaper.reap_and_say(lambda m: console.print(f"[yellow]{m}[/]"))  # what a killed run left
    if not plan_file.is_file():
        raise ConfigError(f"--plan {str(plan_file)!r} does not exist; write it with `edgeprune partition plan`")
    if runs < 1 or warmup < 0:
        raise ConfigError(f"need --runs >= 1 and --warmup >= 0, got {runs} and {warmup}")
    check_output_file(out, "--out")
    record = records.read_plan(plan_file)
    variants = bench.portfolio_models(source)
    if variants is None:
        data, _ = bench.source_model(source, _shape(input_shape), num_classes, seed)
    elif record.variant in variants:
        data = variants[record.variant]
    else:
        raise ConfigError(f"{source} is a portfolio, but {plan_file} names no variant of it; plan with `partition "
                          f"plan --variants {source} --target-latency MS`, or run a variant's run or ONNX file")
    with progress_bars() as progress:
        result = offload.execute(data, record, rank, runs, warmup, progress)
    console.print(f"{result['plan']}: measured {result['measured_ms']:.1f} ms (median of {runs}), predicted "
                  f"{result['predicted_ms']:.1f} ms; link: {result['link']}; RTT: {result['rtt']}")
    if out is not None:
        write_json(out, result)


def register(app: typer.Typer) -> None:
    app.add_typer(partition, name="partition")
