"""Devices emulated for federated runs: each device a process of its own, under a cgroup CPU quota fitted to its
recorded speed factor (the slowdown achieved is measured and recorded), on a veth link to its edge server(s) shaped by
tc tbf, in network namespaces made for the run (emulate.Chain); all torn down afterwards, also when the run fails.
This kernel has no netem: the device sleeps its link's round-trip time before each call to an edge
(split.EdgeClient.rtt_ms). Where none of this can be done (not root, no `ip netns`, no cgroup cpu controller),
`Emulation` raises EmulationError saying why, and callers fall back to the modelled clock (`round_seconds`),
labelled so in their results.

A device process serves `edgeprune.Device` on a Unix socket, which a process in any network namespace reaches:
Probe (time one training iteration of the job's model, before and under the quota), Train (one Flower round of split
training: what a ClientApp asks of its device) and FedFly (a whole FedFly run with one move). The split-training
traffic (activations out, gradients back) goes from the device's namespace to its edge's, over the shaped link; the
edge half's weights (set up before a round, pulled after it) go over the edge's Unix socket, as in FedAdapt they go
between the server and the edge. Flower's round messages (the global model to each device and back) travel on
loopback: model transfer is in no one's round time, classic FL's included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import emulate, reaper
from ..models import create
from . import split as sp

SERVICE = "edgeprune.Device"
METHODS = ("Probe", "Train", "FedFly")
CLOCK_EMULATED = ("wall clock, emulated devices: cgroup CPU quota per device, tc-tbf-shaped veth to the edge in "
                  "network namespaces, RTT slept in the application (this kernel has no netem)")
CLOCK_MODELLED = "modelled: measured compute x speed factor + bytes / bandwidth + RTT (devices not emulated)"


# ------------------------------------------------------------------------------------------------ the device process


class Device:
    """What a device process does on request; `rtt_ms` is its link's round-trip time, slept per call to an edge;
    `lan` maps its edges' addresses to their Unix sockets, for what travels between server and edge
    (split.train_round)."""

    def __init__(self, rtt_ms: float, lan: dict[str, str]):
        self.rtt_ms, self.lan = rtt_ms, lan

    def probe(self, m: dict) -> dict:
        """Mean time (ms) of one training iteration of `model` on a batch; with `slowdown`, also the quota that should
        slow it so much (emulate.quota_for_slowdown). `data`: load the training set now, not under the quota."""
        if m.get("data"):
            from .shares import device_batches

            device_batches(m["data"], 0, m.get("devices", 1), 0)
        model = create(**m["model"]).train()
        x = torch.randn(m["batch"], *m["input_shape"])
        y = torch.zeros(m["batch"], dtype=torch.long)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()

        out = {"ms": float(np.mean(emulate.timed(step, m["min_s"])))}
        if m.get("slowdown"):
            out.update(emulate.quota_for_slowdown(step, m["slowdown"], m["min_s"]))
        return out

    def train(self, m: dict) -> dict:
        from .shares import device_batches

        model = create(**m["model"])
        model.load_state_dict(m["state"])
        edge = sp.EdgeClient(m["edge"], rtt_ms=self.rtt_ms) if m["edge"] else None
        try:
            stats = sp.train_round(model, m["split"], device_batches(m["data"], m["device"], m["devices"], m["round"]),
                                   sp.Optim(**m["optim"]), device=f"device{m['device']}", edge=edge, move=m["move"],
                                   lan=self.lan)
        finally:
            if edge is not None:
                edge.close()
        return {"state": model.state_dict(), "stats": stats.to_dict()}

    def fedfly(self, m: dict) -> dict:
        from . import fedfly
        from .shares import device_batches

        data = [list(device_batches(m["data"], 0, 1, r)) for r in range(m["rounds"])]

        def make() -> torch.nn.Module:
            torch.manual_seed(m["seed"])
            return create(**m["model"])

        out = fedfly.train(make, m["split"], lambda r: data[r], m["rounds"], sp.Optim(**m["optim"]), m["source"],
                           m["destination"], m["move_at"], m["restart"], m["device"], rtt_ms=self.rtt_ms,
                           lan=self.lan)
        return {**{k: v for k, v in out.items() if k != "model"}, "state": out["model"].state_dict()}


# ------------------------------------------------------------------------------------------------ the emulation


@dataclass(frozen=True)
class DeviceSpec:
    """A device: `factor` times slower than this machine (1: no quota), on a link of `mbps` to its edge."""

    factor: float = 1.0
    mbps: float = 1000.0


@dataclass
class Emulation:
    """Device processes, their edge servers and their links for one run; a context manager that removes them all.

    Device k lives in namespace `fl{k}`, its edge server(s) in `fl{k}e0` (and `fl{k}e1` with `edges=2`: the second
    reached through the first over a `backhaul_mbps` link, for FedFly's moves). `workers[k]` is device k's address
    (for `client(k)`), `edges[k]` its edge servers' addresses as the device (and the first edge) reach them.
    `model`, `batch`, `input_shape`: the iteration each device is timed on to fit and check its quota; `data`: the
    training set the devices load before their quota binds."""

    devices: Sequence[DeviceSpec]
    model: dict
    batch: int
    input_shape: Sequence[int]
    rtt_ms: float = 5.0
    data: dict | None = None
    edges_per_device: int = 1
    backhaul_mbps: float = 1000.0
    probe_s: float = 0.3
    workers: list[str] = field(default_factory=list)
    edges: list[list[str]] = field(default_factory=list)
    measured: list[dict] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _quotas: list[emulate.CpuQuota] = field(default_factory=list, repr=False)
    _chains: list[emulate.Chain] = field(default_factory=list, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    def __enter__(self) -> Emulation:
        why = emulate.namespaces_unavailable()
        if why is not None:
            raise emulate.EmulationError(f"cannot emulate devices here ({why}); run as root on Linux with iproute2, "
                                         "or use the modelled clock")
        emulate.cpu_controller()
        try:
            self._tmp = tempfile.mkdtemp(prefix="edgeprune-fl-")
            for k, d in enumerate(self.devices):
                self._start(k, d)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, k: int, d: DeviceSpec) -> None:
        links = [emulate.LinkSpec(d.mbps, self.rtt_ms)]
        links += [emulate.LinkSpec(self.backhaul_mbps, 0.0)] * (self.edges_per_device - 1)
        chain = emulate.Chain([f"fl{k}", *(f"fl{k}e{j}" for j in range(self.edges_per_device))], links,
                              routed=self.edges_per_device > 1)
        self._chains.append(chain)
        chain.__enter__()
        addresses, lan = [], {}
        for j in range(self.edges_per_device):
            unix = f"{self._tmp}/edge{k}.{j}.sock"
            proc, address = sp.start_edge(f"edge{k}.{j}", prefix=chain.prefix(j + 1), host="0.0.0.0", unix=unix)
            self._procs.append(proc)
            addresses.append(f"{chain.address[j + 1]}:{address.rsplit(':', 1)[1]}")
            lan[addresses[-1]] = f"unix:{unix}"
        self.edges.append(addresses)
        socket = f"unix:{self._tmp}/device{k}.sock"
        proc = _start_process([*chain.prefix(0), sys.executable, "-m", __name__, "serve", "--socket", socket,
                               "--rtt-ms", str(self.rtt_ms), "--lan", json.dumps(lan)], f"device {k}")
        self._procs.append(proc)
        self.workers.append(socket)
        probe = {"model": self.model, "batch": self.batch, "input_shape": list(self.input_shape),
                 "min_s": self.probe_s}
        free = self.client(k).call("Probe", {**probe, "data": self.data, "devices": len(self.devices),
                                             "slowdown": d.factor if d.factor > 1 else None})
        record = {"device": k, "factor": d.factor, "mbps": d.mbps, "rtt_ms": self.rtt_ms, "free_ms": free["ms"],
                  "namespace": chain.namespaces[0], "edges": addresses}
        if d.factor > 1:
            # from here, where the cgroup mounts are visible (see CpuQuota.add); children inherit the cgroup
            quota = emulate.CpuQuota(free["cpu_quota"], name=f"edgeprune-fl-{os.getpid()}-{k}")
            self._quotas.append(quota)
            quota.add(proc.pid)
            held = self.client(k).call("Probe", probe)["ms"]
            record.update(quota.describe(), cpu_share_free=free["cpu_share_free"], quota_ms=held,
                          slowdown=held / free["ms"])
        self.measured.append(record)

    def client(self, k: int) -> sp.EdgeClient:
        return sp.EdgeClient(self.workers[k], service=SERVICE)

    def set_bandwidth(self, k: int, mbps: float) -> None:
        """Device k's link to its edge, from now on (a bandwidth drop mid-run)."""
        self._chains[k].shape(0, mbps)

    def close(self) -> None:
        for proc in self._procs:
            sp.stop_edge(proc)
        for quota in self._quotas:
            quota.close()
        for chain in self._chains:
            chain.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._procs, self._quotas, self._chains = [], [], []

    def __exit__(self, *exc) -> None:
        self.close()


def _start_process(cmd: list[str], what: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    log = tempfile.TemporaryFile("w+")  # not a pipe: a long-lived process that logs would fill it and stall
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    reaper.track_process(proc.pid)  # sp.stop_edge forgets it
    if proc.stdout.readline().strip() != "ready":
        sp.stop_edge(proc)
        log.seek(0)
        raise emulate.EmulationError(f"{what} did not start: {log.read().strip()[-300:]}")
    return proc


def round_seconds(devices: dict, emulated: bool, factors: Sequence[float], mbps: Sequence[float],
                  rtt_ms: float) -> dict[int, float]:
    """Each device's time for one round (a round record's `devices`): its measured wall time when emulated, else the
    modelled clock (fedadapt.measured_iteration_s at its factor and link, times its iterations)."""
    from .fedadapt import measured_iteration_s

    if emulated:
        return {k: d["wall_s"] for k, d in devices.items()}
    return {k: measured_iteration_s(d, factors[k], mbps[k], rtt_ms) * d["iterations"] for k, d in devices.items()}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgeprune.federated.devices")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--socket", required=True)
    s.add_argument("--rtt-ms", type=float, default=0.0)
    s.add_argument("--lan", default="{}", help="JSON: edge address -> its Unix socket")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from . import fedfly, shares  # noqa: F401  imported now, before the quota binds: imports are slow under it

    server, _ = sp.serve(Device(args.rtt_ms, json.loads(args.lan)), args.socket, SERVICE, METHODS)
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
