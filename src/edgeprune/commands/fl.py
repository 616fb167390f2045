"""`edgeprune fl run SPEC.yaml`: federated learning with split training (FedAdapt's offloading, FedFly's moves) on
Flower's Simulation Engine, with edge servers started here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli import _handled, console
from ..errors import ConfigError

fl = typer.Typer(help="Federated learning at the edge: split training with edge servers, on Flower.",
                 no_args_is_help=True, rich_markup_mode="rich")


def register(app: typer.Typer) -> None:
    app.add_typer(fl, name="fl")


@fl.command("run")
@_handled
def run_cmd(
    spec: Annotated[Path, typer.Argument(help="A YAML job: model, data, rounds, devices (split, edge), edges, "
                                              "optim, moves, seed, test_subset.")],
    out: Annotated[Path | None, typer.Option(help="Write the round history and job to this JSON file.")] = None,
) -> None:
    """Run federated rounds whose devices train their first layers and offload the rest to edge servers.

    Example: [bold]edgeprune fl run benchmarks/fl_smoke.yaml --out fl.json[/]
    """
    import yaml
    from rich.table import Table

    from ..federated.flower import run_spec
    from ..runs import write_json

    try:
        job = yaml.safe_load(spec.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read FL spec {spec}: {e}; give a YAML file") from None
    if not isinstance(job, dict):
        raise ConfigError(f"FL spec {spec} is not a mapping of keys to values; see the README's example")
    result = run_spec(job)
    table = Table(title=f"{spec.name}: {len(result['history'])} rounds")
    for col in ("round", "splits", "devices", "dropped", "moved", "test accuracy"):
        table.add_column(col)
    for r in result["history"]:
        moved = [str(k) for k, d in r["devices"].items() if d.get("moved")]
        table.add_row(str(r["round"]), " ".join(map(str, r["splits"])), str(len(r["devices"])),
                      "; ".join(r["dropped"]) or "-", ", ".join(moved) or "-",
                      f"{100 * r['global']['accuracy']:.2f} %")
    console.print(table)
    if out is not None:
        write_json(out, {"history": result["history"], "job": result["job"]})
        console.print(f"wrote {out}")
