"""`edgeprune fl run SPEC.yaml`: federated learning with split training (FedAdapt's offloading, FedFly's moves) on
Flower's Simulation or Deployment Engine, with edge servers (and, where possible, emulated devices) started here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..progress import Reporter
from .common import console, err, handled, state

fl = typer.Typer(help="Federated learning at the edge: split training with edge servers, on Flower.",
                 no_args_is_help=True, rich_markup_mode="rich")


class _Notes(Reporter):
    """Prints the library's notes (a fallback to the modelled clock) and nothing else."""

    def note(self, text: str) -> None:
        console.print(f"[yellow]{text}[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(fl, name="fl")


@fl.command("run")
@handled
def run_cmd(
    spec: Annotated[Path, typer.Argument(help="A YAML job: model, data (with partition: iid or dirichlet and "
                                              "alpha for non-IID shares), rounds, devices (split, edge), edges, "
                                              "optim (lr, momentum, weight_decay, decay_round), moves, seed, "
                                              "test_subset.")],
    out: Annotated[Path | None, typer.Option(help="Write the round history and job to this JSON file.")] = None,
    engine: Annotated[str, typer.Option(help="simulation: Flower's Simulation Engine (Ray) in this process; "
                                             "deployment: a SuperLink and one SuperNode per device, as processes "
                                             "here.")] = "simulation",
    emulation: Annotated[str, typer.Option(help="auto: emulate the devices (CPU quota, shaped links; needs root and "
                                                "`ip netns`) where possible, else model their time; real: emulate "
                                                "or fail; modelled: never emulate.")] = "auto",
) -> None:
    """Run federated rounds whose devices train their first layers and offload the rest to edge servers.

    Example: [bold]edgeprune fl run benchmarks/fl_smoke.yaml --engine deployment --out fl.json[/]
    """
    import yaml
    from rich.table import Table

    from .. import reaper
    from ..federated.spec import check as check_spec
    from ..files import write_json
    from ..runs import check_output_file

    reaper.reap_and_say(lambda m: console.print(f"[yellow]{m}[/]"))  # what a killed run left
    check_output_file(out, "--out")
    try:
        job = yaml.safe_load(spec.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read FL spec {spec}: {e}; give a YAML file") from None
    if not isinstance(job, dict):
        raise ConfigError(f"FL spec {spec} is not a mapping of keys to values; see the README's example")
    check_spec(job)  # before Flower and Ray are even imported
    from ..federated.flower import run_spec

    before = reaper.recorded()
    try:
        with reaper.interrupt_promptly(lambda m: err.print(m, highlight=False)):
            result = run_spec(job, engine, emulation, progress=_Notes(), quiet=state["quiet"])
    finally:
        reaper.reap_own(since=before)  # what this run started and is still running (a Ray agent) goes with it
    if result["emulation"]:
        devices = Table(title="emulated devices")
        for col in ("device", "speed factor", "cpu quota", "measured slowdown", "link (Mbit/s)", "rtt (ms)"):
            devices.add_column(col)
        for d in result["emulation"]:
            quota = f"{d['cpu_quota']:.3f}" if "cpu_quota" in d else "-"
            slowdown = f"{d['slowdown']:.1f}x" if "slowdown" in d else "-"
            devices.add_row(str(d["device"]), f"{d['factor']:g}", quota, slowdown, f"{d['mbps']:g}", f"{d['rtt_ms']:g}")
        console.print(devices)
    table = Table(title=f"{spec.name}: {len(result['history'])} rounds, {result['job']['engine']}",
                  caption=f"round time: {result['clock']}")
    for col in ("round", "splits", "devices", "dropped", "moved", "round (s)", "test accuracy"):
        table.add_column(col)
    for r in result["history"]:
        moved = [str(k) for k, d in r["devices"].items() if d.get("moved")]
        table.add_row(str(r["round"]), " ".join(map(str, r["splits"])), str(len(r["devices"])),
                      "; ".join(r["dropped"]) or "-", ", ".join(moved) or "-", f"{r['round_s']:.2f}",
                      f"{100 * r['global']['accuracy']:.2f} %")
    console.print(table)
    if out is not None:
        write_json(out, {k: result[k] for k in ("history", "job", "clock", "emulation")})
        console.print(f"wrote {out}")
