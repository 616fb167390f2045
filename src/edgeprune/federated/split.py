"""Split training between a device and its edge server (FedAdapt's offloading), over gRPC.

The model is a chain of layers (`partition.finetune.chain`: an nn.Sequential such as VGG-5, or an in-house VGG).
Split k puts layers 0..k-1 on the device and the rest on the edge; k = len(chain) is "no offloading" (classic FL).
Per batch the device sends its activations and the labels, the edge runs forward, loss, backward and its optimiser
step, and sends back the gradient with respect to those activations, through which the device back-propagates its
own layers. Both sides use SGD, which is per-parameter: the split run takes exactly the steps of the unsplit one.

The wire (rpc.py, whose names are re-exported here): gRPC unary calls on the service `edgeprune.Edge`, each
message a dict of tensors and plain values. `python -m edgeprune.federated.split serve` is an edge server's
process; it prints the port it listens on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .. import reaper
from ..errors import CheckpointError, ConfigError, EdgePruneError
from ..models import ModelSpec, create
from ..partition.finetune import chain
from .rpc import METHODS, SERVICE, EdgeClient, EdgeRefused, EdgeUnreachable, pack, serve, unpack

__all__ = ["METHODS", "SERVICE", "Edge", "EdgeClient", "EdgeRefused", "EdgeSession", "EdgeUnreachable", "Optim",
           "RoundStats", "check_split", "fingerprint", "halves", "main", "pack", "serve", "start_edge",
           "stop_edge", "train_round", "unpack", "valid_splits"]

# ------------------------------------------------------------------------------------------------- the halves


def valid_splits(model: nn.Module) -> list[int]:
    """The splits of a chain model: k layers on the device, 1 <= k <= len(chain) (the last: no offloading)."""
    return list(range(1, len(chain(model)) + 1))


def check_split(model: nn.Module, split: int) -> None:
    valid = valid_splits(model)
    if split not in valid:
        raise ConfigError(f"split {split!r} is not valid for this {len(valid)}-layer model; choose one of "
                          f"{valid} (layers on the device; {valid[-1]} = no offloading)")


def halves(model: nn.Module, split: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(device layers, edge layers) of `model`. They share the model's modules: training them trains the model."""
    check_split(model, split)
    layers = chain(model)
    return nn.Sequential(*layers[:split]), nn.Sequential(*layers[split:])


@dataclass(frozen=True)
class Optim:
    """SGD settings both halves use (FedAdapt: lr 0.01, momentum 0.9, lr x 0.1 after half the rounds:
    `decay_round`, the first round at the lower rate; 0 never decays)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_round: int = 0

    def make(self, params: Iterable[nn.Parameter]) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def at(self, round_: int) -> Optim:
        """The settings of round `round_` (1-based): lr x 0.1 from `decay_round` on."""
        if self.decay_round and round_ >= self.decay_round:
            return replace(self, lr=self.lr * 0.1, decay_round=0)
        return self


def fingerprint(spec: ModelSpec, split: int, state: dict[str, torch.Tensor]) -> dict:
    """What identifies the edge half of a model: its spec, the split and its tensors' names and shapes."""
    return {"spec": spec.to_dict(), "split": split, "tensors": [[k, list(v.shape)] for k, v in state.items()]}


# ------------------------------------------------------------------------------------------------- the edge


@dataclass
class EdgeSession:
    """One device's training state on an edge: what a FedFly migration moves."""

    fingerprint: dict
    layers: nn.Sequential
    optimizer: torch.optim.SGD
    iteration: int = 0  # the next iteration this edge expects
    pending: dict | None = None  # an activation gradient not yet delivered to the device (a move cut it off)

    def checkpoint(self, device: str) -> dict:
        return {"device": device, "fingerprint": self.fingerprint, "iteration": self.iteration,
                "state": self.layers.state_dict(), "optimizer": self.optimizer.state_dict(), "pending": self.pending}


def _session(spec: dict, split: int, state: dict, optim: dict) -> EdgeSession:
    model_spec = ModelSpec.from_dict(spec)
    _, layers = halves(create(**model_spec.to_dict()), split)
    layers.load_state_dict(state)
    return EdgeSession(fingerprint(model_spec, split, layers.state_dict()), layers.train(), Optim(**optim).make(
        layers.parameters()))


class Edge:
    """An edge server's state: one EdgeSession per device. Methods take and return message dicts."""

    def __init__(self, name: str = "edge"):
        self.name = name
        self.sessions: dict[str, EdgeSession] = {}
        self.lock = threading.Lock()
        self.loss = nn.CrossEntropyLoss()

    def _get(self, device: str) -> EdgeSession:
        with self.lock:
            if device not in self.sessions:
                raise EdgeRefused(f"edge {self.name!r} has no training state for device {device!r} (it knows "
                                  f"{sorted(self.sessions) or 'none'}); configure the device here first, or migrate "
                                  "it from the edge that trains it")
            return self.sessions[device]

    def configure(self, m: dict) -> dict:
        session = _session(m["spec"], m["split"], m["state"], m["optim"])
        session.iteration = m.get("iteration", 0)
        with self.lock:
            self.sessions[m["device"]] = session
        return {"tensors": len(session.fingerprint["tensors"])}

    def step(self, m: dict) -> dict:
        s = self._get(m["device"])
        if m["iteration"] != s.iteration:
            raise EdgeRefused(f"device {m['device']!r} sent iteration {m['iteration']}, edge {self.name!r} expects "
                              f"{s.iteration}; resume the device from the edge's iteration")
        t0 = time.thread_time()
        a = m["activations"].requires_grad_()
        out = s.layers(a)
        loss = self.loss(out, m["labels"])
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.iteration += 1
        reply = {"grad": a.grad, "loss": loss.item(), "correct": int((out.argmax(1) == m["labels"]).sum()),
                 "edge_s": time.thread_time() - t0, "iteration": m["iteration"]}
        if m.get("move_to"):
            # FedFly: the move cuts the reply off; the gradient travels in the checkpoint and the destination
            # delivers it, so the device finishes this iteration there.
            s.pending = reply
            t1 = time.perf_counter()
            try:
                EdgeClient(m["move_to"]).call("Restore", {"checkpoint": s.checkpoint(m["device"])})
            except EdgePruneError as e:  # unreachable, or refused: the device stays here, the miss is recorded
                s.pending = None
                return {**reply, "move_failed": f"{type(e).__name__}: {e}"}
            with self.lock:
                del self.sessions[m["device"]]
            return {"moved_to": m["move_to"], "migration_s": time.perf_counter() - t1, "iteration": m["iteration"]}
        return reply

    def pull(self, m: dict) -> dict:
        s = self._get(m["device"])
        return {"state": s.layers.state_dict(), "iteration": s.iteration}

    def restore(self, m: dict) -> dict:
        ck = m["checkpoint"]
        fp = ck["fingerprint"]
        with self.lock:
            held = self.sessions.get(ck["device"])
        if held is not None and held.fingerprint != fp:
            raise CheckpointError(f"checkpoint of device {ck['device']!r} is for {fp['spec']['name']} split "
                                  f"{fp['split']}, edge {self.name!r} trains {held.fingerprint['spec']['name']} split "
                                  f"{held.fingerprint['split']} for it; migrate only between edges of one FL job")
        s = _session(fp["spec"], fp["split"], ck["state"], {"lr": 1.0})
        if s.fingerprint != fp:
            raise CheckpointError(f"checkpoint of device {ck['device']!r}: its tensors do not match "
                                  f"{fp['spec']['name']} split {fp['split']}; it was written for another model")
        s.optimizer.load_state_dict(ck["optimizer"])  # the optimiser's own settings travel with its state
        s.iteration, s.pending = ck["iteration"], ck["pending"]
        with self.lock:
            self.sessions[ck["device"]] = s
        return {"iteration": s.iteration}

    def resume(self, m: dict) -> dict:
        s = self._get(m["device"])
        if s.pending is None:
            return {"iteration": s.iteration}
        reply, s.pending = s.pending, None
        return reply

    def health(self, m: dict) -> dict:
        return {"edge": self.name, "devices": sorted(self.sessions)}


# ------------------------------------------------------------------------------------------------- the device


@dataclass
class RoundStats:
    """What one device's local training of a round did and cost. `device_s`: its own layers' forward and backward;
    `edge_s`: the edge's part; both CPU time of the thread that did the work (torch on one thread, as the clients
    and edges here run it): on a shared machine wall time also counts waiting for a core, and a modelled clock
    wants the work. `wall_s`: the whole round, wall clock. `bytes_up`/`bytes_down`: activations+labels sent,
    gradients received."""

    iterations: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    device_s: float = 0.0
    edge_s: float = 0.0
    wall_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    migration_s: float = 0.0
    moved_to: str | None = None
    move_failed: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def train_round(model: nn.Module, split: int, batches: Iterable, optim: Optim, device: str = "device",
                edge: EdgeClient | None = None, move: tuple[int, str] | None = None,
                lan: Mapping[str, str] | None = None) -> RoundStats:
    """One round of local training of `model` (in place) with its first `split` layers here and the rest on `edge`.

    The edge is configured from the model's own edge layers at the start and pulled back into them at the end, so
    afterwards `model` is the reassembled model FedAvg averages. `move=(i, address)`: at iteration i the edge
    migrates this device's state to `address` (FedFly), where the round continues. `lan[address]`: another address
    of that edge for the set-up and the pull, which in FedAdapt travel between the server and the edge, not over
    the device's link (an emulated device's edge: a Unix socket beside its shaped link)."""
    lan = lan or {}

    def setup(method: str, message: dict) -> dict:
        if edge.address not in lan:
            return edge.call(method, message)
        side = replace(edge, address=lan[edge.address], rtt_ms=0.0, _channel=None)
        try:
            return side.call(method, message)
        finally:
            side.close()

    here, there = halves(model, split)
    stats, t_start = RoundStats(), time.perf_counter()
    opt = optim.make(here.parameters())
    model.train()
    if len(there) == 0:
        loss_fn = nn.CrossEntropyLoss()
    elif edge is None:
        raise ConfigError(f"split {split} offloads layers {split}.. to an edge, and no edge address was given")
    else:
        setup("Configure", {"device": device, "spec": model.edgeprune_spec.to_dict(), "split": split,
                            "state": there.state_dict(), "optim": asdict(optim)})
    for i, (x, y) in enumerate(batches):
        t0 = time.thread_time()
        a = here(x)
        if len(there) == 0:
            loss = loss_fn(a, y)
            reply = {"loss": loss.item(), "correct": int((a.argmax(1) == y).sum()), "edge_s": 0.0}
            opt.zero_grad(set_to_none=True)
            loss.backward()
        else:
            stats.device_s += time.thread_time() - t0
            sent = a.detach()
            moving = move is not None and move[0] == i
            reply = edge.call("Step", {"device": device, "iteration": i, "activations": sent, "labels": y,
                                       "move_to": move[1] if moving else None})
            stats.bytes_up += _nbytes(sent, y)
            stats.move_failed = reply.get("move_failed", stats.move_failed)
            if "moved_to" in reply:
                stats.migration_s, stats.moved_to = reply["migration_s"], reply["moved_to"]
                edge.close()
                edge = replace(edge, address=reply["moved_to"], _channel=None)
                reply = edge.call("Resume", {"device": device})
                if reply.get("iteration") != i or "grad" not in reply:
                    raise CheckpointError(f"device {device!r} moved at iteration {i} but the destination resumed "
                                          f"at {reply.get('iteration')}; the migration lost state")
            stats.bytes_down += _nbytes(reply["grad"])
            t0 = time.thread_time()
            opt.zero_grad(set_to_none=True)
            a.backward(reply["grad"])
        opt.step()
        stats.device_s += time.thread_time() - t0
        stats.edge_s += reply["edge_s"]
        stats.iterations += 1
        stats.samples += len(y)
        stats.loss_sum += reply["loss"] * len(y)
        stats.correct += reply["correct"]
    if len(there):
        there.load_state_dict(setup("Pull", {"device": device})["state"])
    stats.wall_s = time.perf_counter() - t_start
    return stats


# ------------------------------------------------------------------------------------------------- processes


def start_edge(name: str = "edge", threads: int = 1, prefix: Sequence[str] = (), host: str = "127.0.0.1",
               unix: str | None = None) -> tuple[subprocess.Popen, str]:
    """An edge server in a process of its own (behind `prefix`, e.g. `ip netns exec ns`), also at the Unix socket
    `unix` if given; returns it and the TCP address it listens on. Stop it with `stop_edge`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [*prefix, sys.executable, "-m", __name__, "serve", "--name", name, "--threads", str(threads), "--host", host,
           *(["--unix", unix] if unix else [])]
    log = tempfile.TemporaryFile("w+")  # not a pipe: a long-lived server that logs would fill it and stall
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    reaper.track_process(proc.pid)
    line = proc.stdout.readline()
    if not line.startswith("port "):
        stop_edge(proc)
        log.seek(0)
        raise EdgeUnreachable(f"edge server {name!r} did not start: {log.read().strip()[-300:]}")
    return proc, f"{host}:{int(line.split()[1])}"


def stop_edge(proc: subprocess.Popen) -> None:
    """Stop a server process started here (an edge server, an emulated device), and forget its record."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reaper.forget_process(proc.pid)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgeprune.federated.split")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", default="edge")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--unix", help="also listen at this Unix socket")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    server, port = serve(Edge(args.name), f"{args.host}:{args.port}", also=[f"unix:{args.unix}"] if args.unix else [])
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
