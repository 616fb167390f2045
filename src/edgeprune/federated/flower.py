"""Federated rounds on Flower: a ServerApp running FedAvg over the reassembled model, a ClientApp per device that
trains its split with an edge server (federated.split), and `simulate` on Flower's Simulation Engine.

Flower carries the rounds (global model out, local models back); the per-batch traffic of split training goes over
the edge's own gRPC service, as in FedAdapt. Each round's splits come from a policy called after every round with
what the devices measured (FedAdapt's agent is one; a fixed split another), so a policy can re-split mid-run.

Reproducible on a seed: every device's batches are a function of (seed, round, device), and replies are averaged in
device order, not arrival order (float sums depend on their order).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, Subset

from .. import reaper
from ..errors import ConfigError, EdgePruneError
from ..models import create
from ..progress import Reporter, reporter
from . import devices
from . import split as sp
from .spec import check as check_spec

#: a policy: (round just finished, that round's record) -> the splits of the next round, one per device
Policy = Callable[[int, dict], list[int]]


@dataclass
class Move:
    """FedFly: in round `round`, device `device` moves to the edge at `to` after `iteration` local iterations."""

    round: int
    device: int
    iteration: int
    to: str


@dataclass
class Job:
    """One federated run. `model`: create's keyword arguments; `data`: data.loaders' (name, subset, batch_size,
    seed, ...); `edges[k]`: device k's edge server (None where its split offloads nothing); `workers[k]`: device k's
    emulated device process (federated.devices), which then trains in place of the ClientApp's own process."""

    model: dict
    data: dict
    devices: int
    rounds: int
    splits: list[int]
    edges: list[str | None]
    optim: sp.Optim = field(default_factory=sp.Optim)
    moves: list[Move] = field(default_factory=list)
    seed: int = 0
    workers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.devices < 1 or self.rounds < 1:
            raise ConfigError(f"devices and rounds must be >= 1, got {self.devices} and {self.rounds}")
        for name, values in (("splits", self.splits), ("edges", self.edges), ("workers", self.workers)):
            if len(values) != self.devices and (values or name != "workers"):
                raise ConfigError(f"{name} has {len(values)} entries for {self.devices} devices; give one per device")
        model = create(**self.model)
        for s in self.splits:
            sp.check_split(model, s)
        for m in self.moves:
            if not 0 <= m.device < self.devices:
                raise ConfigError(f"move of unknown device {m.device}: the job has devices 0-{self.devices - 1}")
            if not 1 <= m.round <= self.rounds:
                raise ConfigError(f"move in round {m.round}: the job has rounds 1-{self.rounds}")


@functools.lru_cache(maxsize=4)
def _train_set(data: str) -> torch.utils.data.Dataset:
    from ..data import loaders

    return loaders(**json.loads(data), augment=False).train.dataset


def _check_model_takes_data(spec: dict) -> None:
    """ConfigError, before any process starts, if the spec's model cannot take its data's samples."""
    try:
        model = create(**spec["model"])
    except TypeError as e:
        raise ConfigError(f"the FL spec's model {spec['model']!r} is not a model's options ({e})") from None
    x = _train_set(json.dumps(spec["data"], sort_keys=True))[0][0]
    try:
        with torch.no_grad():
            model.eval()(x[None])
    except RuntimeError as e:
        raise ConfigError(f"the FL spec's model {spec['model']!r} cannot take its data's samples of shape "
                          f"{tuple(x.shape)} ({str(e).splitlines()[0][:160]}); set in_channels and image_size to "
                          "match the data") from None


def device_batches(data: dict, device: int, devices: int, round_: int) -> DataLoader:
    """Device `device`'s share of the training set (every `devices`-th sample: IID), shuffled by (seed, round)."""
    dataset = _train_set(json.dumps(data, sort_keys=True))
    share = Subset(dataset, range(device, len(dataset), devices))
    gen = torch.Generator().manual_seed(data.get("seed", 0) * 1_000_003 + round_ * 1009 + device)
    return DataLoader(share, batch_size=data.get("batch_size", 100), shuffle=True, generator=gen)


def train_reply(job: Job, msg: Message, context: Context) -> Message:
    """A device's answer to a round: load the global model, train its split for one pass over its data (here, or in
    its emulated device process), reply with the model and what the round measured; on failure, an Error."""
    torch.set_num_threads(1)
    k = int(context.node_config["partition-id"])
    cfg = msg.content["config"]
    model = create(**job.model)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    split, address = cfg["splits"][k], cfg["edges"][k]
    move = None
    if cfg["move-device"] == k:
        move = (cfg["move-iteration"], cfg["move-to"])
    client = None
    if job.workers:
        client = sp.EdgeClient(job.workers[k], service=devices.SERVICE)
    elif address:
        client = sp.EdgeClient(address)
    try:
        if job.workers:
            reply = client.call("Train", {"model": job.model, "state": model.state_dict(), "split": split,
                                          "edge": address, "data": job.data, "device": k, "devices": job.devices,
                                          "round": cfg["server-round"], "optim": asdict(job.optim), "move": move})
            model.load_state_dict(reply["state"])
            stats = sp.RoundStats(**reply["stats"])
        else:
            stats = sp.train_round(model, split, device_batches(job.data, k, job.devices, cfg["server-round"]),
                                   job.optim, device=f"device{k}", edge=client, move=move)
    except EdgePruneError as e:  # the round goes on without this device; the server records why
        return Message(Error(code=1, reason=f"device {k}: {type(e).__name__}: {e}"), reply_to=msg)
    finally:
        if client is not None:
            client.close()
    metrics = {k_: v for k_, v in stats.to_dict().items() if isinstance(v, int | float)}
    metrics.update({"partition-id": k, "num-examples": stats.samples, "split": split,
                    "moved": int(stats.moved_to is not None), "move-failed": int(stats.move_failed is not None)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


def client_app(job: Job) -> ClientApp:
    """The ClientApp every device runs (train_reply)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(job, msg, context)

    return app


class SplitFedAvg(FedAvg):
    """FedAvg over every device, with per-device splits and edges in each round's config, replies averaged in
    device order, and a record of every round (per-device metrics, devices that dropped out and why)."""

    def __init__(self, job: Job, policy: Policy | None = None):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=job.devices,
                         min_available_nodes=job.devices)
        self.job, self.policy = job, policy
        self.splits = list(job.splits)
        self.history: list[dict] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        reaper.track_descendants()  # Ray's processes are up by now: a SIGKILL of this one must not orphan them
        config["splits"] = list(self.splits)
        config["edges"] = [e or "" for e in self.job.edges]
        move = next((m for m in self.job.moves if m.round == server_round), None)
        config["move-device"] = move.device if move else -1
        config["move-iteration"] = move.iteration if move else -1
        config["move-to"] = move.to if move else ""
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        ok = sorted((r for r in replies if not r.has_error()),
                    key=lambda r: r.content["metrics"]["partition-id"])
        devices = {int(r.content["metrics"]["partition-id"]): dict(r.content["metrics"]) for r in ok}
        record = {"round": server_round, "splits": list(self.splits), "devices": devices,
                  "dropped": [r.error.reason for r in replies if r.has_error()]}
        self.history.append(record)
        if self.policy is not None:
            self.splits = list(self.policy(server_round, record))
        return super().aggregate_train(server_round, ok)


def serve_rounds(job: Job, grid: Grid, policy: Policy | None = None,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None) -> dict:
    """A ServerApp's work, on either engine: FedAvg over `job.rounds` rounds from a seeded initial model; returns the
    global model's state_dict and the round history (with `evaluate(model)` of the global model after each round)."""
    torch.manual_seed(job.seed)  # the initial global model
    model = create(**job.model)
    strategy = SplitFedAvg(job, policy)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if evaluate is None or server_round == 0:
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(model)
        strategy.history[-1]["global"] = metrics
        return MetricRecord({k: v for k, v in metrics.items() if isinstance(v, int | float)})

    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=job.rounds, evaluate_fn=evaluate_fn)
    return {"state_dict": result.arrays.to_torch_state_dict(), "history": strategy.history}


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


def describe(job: Job, engine: str) -> dict:
    d = asdict(job)
    d["engine"] = engine
    return d


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
                shape = _train_set(json.dumps(spec["data"], sort_keys=True))[0][0].shape
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
        test = {"data": spec["data"], "test_subset": spec.get("test_subset")}
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
