"""The Flower apps of split federated learning: the job every app reads (`Job`, `Move`), the ClientApp's answer to
a round (`train_reply`: a device trains its split with an edge server, federated.split), and the ServerApp's
rounds (`serve_rounds`: FedAvg over the reassembled model, each round's splits from a policy). Both engines run
these: flower.simulate on Flower's Simulation Engine, deploy.run on a real SuperLink.

Reproducible on a seed: every device's batches are a function of (seed, round, device), and replies are averaged in
device order, not arrival order (float sums depend on their order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .. import reaper
from ..errors import ConfigError, EdgePruneError
from ..models import create
from . import devices
from . import split as sp
from .shares import device_batches

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
    client, optim = None, job.optim.at(cfg["server-round"])
    if job.workers:
        client = sp.EdgeClient(job.workers[k], service=devices.SERVICE)
    elif address:
        client = sp.EdgeClient(address)
    try:
        if job.workers:
            reply = client.call("Train", {"model": job.model, "state": model.state_dict(), "split": split,
                                          "edge": address, "data": job.data, "device": k, "devices": job.devices,
                                          "round": cfg["server-round"], "optim": asdict(optim), "move": move})
            model.load_state_dict(reply["state"])
            stats = sp.RoundStats(**reply["stats"])
        else:
            stats = sp.train_round(model, split, device_batches(job.data, k, job.devices, cfg["server-round"]),
                                   optim, device=f"device{k}", edge=client, move=move)
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


def describe(job: Job, engine: str) -> dict:
    d = asdict(job)
    d["engine"] = engine
    return d
