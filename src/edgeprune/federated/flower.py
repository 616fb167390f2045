"""Federated rounds on Flower: a ServerApp running FedAvg over the reassembled model, a ClientApp per device that
trains its split with an edge server (federated.split), and `simulate` on Flower's Simulation Engine.

Flower carries the rounds (global model out, local models back); the per-batch traffic of split training goes over
the edge's own gRPC service, as in FedAdapt. Each round's splits come from a policy called after every round with
what the devices measured (FedAdapt's agent is one; a fixed split another), so a policy can re-split mid-run.

Reproducible on a seed: every device's batches are a function of (seed, round, device), and replies are averaged in
device order, not arrival order (float sums depend on their order).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..errors import ConfigError, EdgePruneError
from ..models import create
from ..progress import Reporter, reporter
from . import devices
from . import split as sp
from .apps import Job, Move, Policy, client_app, describe, serve_rounds
from .shares import loader_spec, shares, train_set
from .spec import check as check_spec


def _check_model_takes_data(spec: dict) -> None:
    """ConfigError, before any process starts, if the spec's model cannot take its data's samples."""
    try:
        model = create(**spec["model"])
    except TypeError as e:
        raise ConfigError(f"the FL spec's model {spec['model']!r} is not a model's options ({e})") from None
    key = json.dumps(spec["data"], sort_keys=True)
    x = train_set(key)[0][0]
    shares(key, len(spec["devices"]))  # a skew that starves a device is refused here, not inside every round
    try:
        with torch.no_grad():
            model.eval()(x[None])
    except RuntimeError as e:
        raise ConfigError(f"the FL spec's model {spec['model']!r} cannot take its data's samples of shape "
                          f"{tuple(x.shape)} ({str(e).splitlines()[0][:160]}); set in_channels and image_size to "
                          "match the data") from None


def simulate(job: Job, policy: Policy | None = None,
             evaluate: Callable[[torch.nn.Module], dict] | None = None, quiet: bool = False) -> dict:
    """Run `job` on Flower's Simulation Engine (Ray), the ServerApp in this process; returns serve_rounds' result and
    the job. `quiet`: Flower logs warnings and errors only, and Ray does not relay its workers' output."""
    from flwr.simulation import run_simulation

    out: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        out.update(serve_rounds(job, grid, policy, evaluate))

    # with device processes the ClientApps only relay: all devices run at once, whatever the cores Ray counts
    backend: dict = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {}}
    if job.workers:
        backend["init_args"]["num_cpus"] = job.devices
    if quiet:
        backend["init_args"]["log_to_driver"] = False
    flower_log = logging.getLogger("flwr")  # Flower's own logger (flwr.common.logger), INFO by default
    level = flower_log.level
    if quiet:
        flower_log.setLevel(logging.WARNING)
    try:
        run_simulation(server, client_app(job), num_supernodes=job.devices, backend_config=backend)
    finally:
        flower_log.setLevel(level)
    if "state_dict" not in out:
        raise EdgePruneError("the Flower simulation ended without a global model; see its log above")
    return {**out, "job": describe(job, "flower simulation (ray)")}


ENGINES = ("simulation", "deployment")
EMULATIONS = ("auto", "real", "modelled")


def run_spec(spec: dict, engine: str = "simulation", emulation: str = "auto",
             progress: Reporter | Callable[..., None] | None = None, quiet: bool = False) -> dict:
    """Run a federated job described by a spec (`edgeprune fl run SPEC.yaml`; see the README) on Flower's Simulation
    or Deployment Engine, and return the round history (with each round's time and the global model's test accuracy)
    and the job.

    Devices with a speed `factor` and a link (`mbps`, the spec's `rtt_ms`) are emulated where this machine allows
    (`emulation` "auto"; "real" insists, "modelled" never tries; federated.devices): each a process under a CPU quota
    with its own edge server behind a shaped link, and rounds are timed on the wall clock. Otherwise the edge servers
    are processes here on loopback and round times are modelled; `clock` in the result says which. `quiet`: as
    simulate's (the Deployment Engine's processes log to files of their own)."""
    from ..data import loaders
    from ..emulate import EmulationError
    from ..train import evaluate

    progress = reporter(progress)
    check_spec(spec)
    _check_model_takes_data(spec)
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r}: choose one of {list(ENGINES)}")
    if emulation not in EMULATIONS:
        raise ConfigError(f"emulation {emulation!r}: choose one of {list(EMULATIONS)}")
    names = list(spec.get("edges", []))
    specs = spec["devices"]
    factors = [float(d.get("factor", 1.0)) for d in specs]
    mbps = [float(d.get("mbps", 1000.0)) for d in specs]
    rtt_ms = float(spec.get("rtt_ms", 0.0))
    if emulation == "real" and spec.get("moves"):
        raise ConfigError("moves cannot be emulated: each emulated device has an edge server of its own, which no "
                          "other device's edge reaches; leave out the moves or run with --emulation modelled")
    emulated = None
    started = []
    try:
        if emulation != "modelled" and not spec.get("moves"):
            try:
                shape = train_set(json.dumps(spec["data"], sort_keys=True))[0][0].shape
                emulated = devices.Emulation(
                    [devices.DeviceSpec(f, b) for f, b in zip(factors, mbps, strict=True)], spec["model"],
                    spec["data"].get("batch_size", 100), shape, rtt_ms=rtt_ms, data=spec["data"]).__enter__()
            except EmulationError as e:
                if emulation == "real":
                    raise
                progress.note(f"devices not emulated: {e}; round times are on the modelled clock")
        if emulated is not None:
            address = {}
            edges = [emulated.edges[k][0] if d.get("edge") is not None else None for k, d in enumerate(specs)]
        else:
            for name in names:
                started.append(sp.start_edge(name))
            address = {name: a for name, (_, a) in zip(names, started, strict=True)}
            edges = [address.get(d.get("edge")) for d in specs]
        job = Job(model=spec["model"], data=spec["data"], devices=len(specs), rounds=int(spec["rounds"]),
                  splits=[int(d["split"]) for d in specs], edges=edges, optim=sp.Optim(**spec.get("optim", {})),
                  seed=int(spec.get("seed", 0)), workers=emulated.workers if emulated is not None else [],
                  moves=[Move(m["round"], m["device"], m["iteration"], address[m["to"]])
                         for m in spec.get("moves", [])])
        test = {"data": loader_spec(spec["data"]), "test_subset": spec.get("test_subset")}
        if engine == "deployment":
            from . import deploy

            result = deploy.run(job, test)
        else:
            loader = loaders(**{**test["data"], "batch_size": 500}, test_subset=test["test_subset"],
                             augment=False).test
            result = simulate(job, evaluate=lambda model: evaluate(model, loader), quiet=quiet)
    finally:
        if emulated is not None:
            emulated.close()
        for proc, _ in started:
            sp.stop_edge(proc)
    for r in result["history"]:
        r["device_s"] = devices.round_seconds(r["devices"], emulated is not None, factors, mbps, rtt_ms)
        r["round_s"] = max(r["device_s"].values(), default=0.0)
    result["clock"] = devices.CLOCK_EMULATED if emulated is not None else devices.CLOCK_MODELLED
    result["emulation"] = emulated.measured if emulated is not None else None
    result["job"]["edges"] = [d.get("edge") for d in specs]  # names: addresses were for this run only
    result["job"]["workers"] = []
    return result
