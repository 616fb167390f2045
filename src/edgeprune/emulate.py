"""Slower devices and real links on one machine, labelled as such in every result.

Device: the process moves itself into a cgroup whose CPU quota is a fraction of one CPU (cgroup v1
`cpu.cfs_quota_us`, or v2 `cpu.max`); the slowdown this achieves is measured, not assumed (`measure_slowdown`).

Link: network namespaces made for one run, chained by veth pairs (device - edge - cloud), each end shaped by `tc`
tbf to the link's bandwidth; torn down afterwards (and at exit if the run dies). Kernels without the netem qdisc
(this machine's) cannot add delay in the kernel, so the round-trip time is slept by the application (half before
each send, in each direction), and results say so. Without root or `ip netns`, the link is modelled: the processes
talk over loopback and also sleep bytes / bandwidth (`link: "modelled"`).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import reaper
from .errors import ConfigError, EdgePruneError

CGROUP_ROOT = Path("/sys/fs/cgroup")


class EmulationError(EdgePruneError):
    """A device or link cannot be emulated here (no root, no cgroup cpu controller, no `ip netns`)."""


# ---------------------------------------------------------------------------------------------------- device


def cpu_controller(root: Path = CGROUP_ROOT) -> tuple[str, Path]:
    """("v2", root) where the unified hierarchy has the cpu controller, else ("v1", the cpu hierarchy's mount)."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return "v2", root
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name / "cpu.cfs_quota_us").exists():
            return "v1", root / name
    raise EmulationError(f"no cgroup cpu controller under {root} (neither v2 cpu.max nor v1 cpu.cfs_quota_us); "
                         "run on a Linux host with cgroups, or leave out --cpu-quota")


def quota_period_us(fraction: float) -> int:
    """The CFS period for a quota: short, so that throttling is fine-grained, but long enough that the quota is at
    least the kernel's minimum of 1 ms."""
    return max(10_000, math.ceil(1000 / fraction))


class CpuQuota:
    """While entered, this process (all its threads) may use `fraction` of one CPU per CFS period.

    `fraction` may exceed 1 (2.0 = two CPUs' worth). Enter and leave as often as needed (measure_slowdown does);
    `close()` removes the cgroup."""

    def __init__(self, fraction: float, root: Path = CGROUP_ROOT, name: str | None = None):
        if not fraction > 0:
            raise ConfigError(f"--cpu-quota must be > 0 (a fraction of one CPU, e.g. 0.25), got {fraction}")
        self.fraction = fraction
        self.version, mount = cpu_controller(root)
        self.root = mount
        self.period_us = quota_period_us(fraction)
        self.quota_us = round(fraction * self.period_us)
        self.path = mount / (name or f"edgeprune-{os.getpid()}")
        self._home: Path | None = None
        try:
            reaper.track_cgroup(self.path)
            self.path.mkdir(exist_ok=True)
            if self.version == "v2":
                _enable_cpu_v2(mount)
                (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as e:
            reaper.forget_cgroup(self.path)
            raise EmulationError(f"cannot set a CPU quota in {self.path} ({e.strerror}); run as root, or leave out "
                                 "--cpu-quota and import a profile measured on the device") from None
        atexit.register(self.close)

    def enter(self) -> None:
        self._home = self._home or _current_cgroup(self.root, self.version)
        self.add(os.getpid())

    def add(self, pid: int) -> None:
        """Put process `pid` (all its threads) under the quota. A process in a network namespace of its own cannot
        do this itself: `ip netns exec` gives it a fresh /sys, without the cgroup mounts."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def leave(self) -> None:
        if self._home is not None:
            (self._home / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        self.leave()
        if self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                return  # a process we started is still inside; the kernel removes nothing until it leaves
        reaper.forget_cgroup(self.path)

    def __enter__(self) -> CpuQuota:
        self.enter()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stat(self) -> dict[str, int]:
        """The kernel's accounting of the cgroup's CPU bandwidth control (its cpu.stat): `nr_periods` (periods in
        which its tasks were runnable), `nr_throttled`, `throttled_usec`, and on cgroup v2 `usage_usec`. What a
        quota did, read rather than timed."""
        out: dict[str, int] = {}
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
        if "throttled_time" in out:  # v1 counts nanoseconds
            out["throttled_usec"] = out.pop("throttled_time") // 1000
        return out

    def describe(self) -> dict:
        return {"cpu_quota": self.fraction, "cgroup": self.version, "period_us": self.period_us,
                "quota_us": self.quota_us}


def _enable_cpu_v2(root: Path) -> None:
    control = root / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def _current_cgroup(mount: Path, version: str, proc_self: Path = Path("/proc/self")) -> Path:
    for line in (proc_self / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == "v2" and controllers == "") or (version == "v1" and "cpu" in controllers.split(",")):
            return mount / path.lstrip("/")
    return mount


def measure_slowdown(call: Callable[[], object], quota: CpuQuota, rounds: int = 3, min_s: float = 0.5) -> dict:
    """The slowdown the quota achieves on `call`: mean time inside / mean time outside, in alternating rounds of at
    least `min_s` seconds each way, so that other load falls on both alike. Means, because a call shorter than a
    CFS period either runs free or waits out the throttle: its cost is the average. Leaves the process inside."""
    free: list[float] = []
    held: list[float] = []
    for _ in range(rounds):
        quota.leave()
        free += timed(call, min_s)
        quota.enter()
        held += timed(call, min_s)
    free_ms, held_ms = float(np.mean(free)), float(np.mean(held))
    return {"free_ms": free_ms, "quota_ms": held_ms, "slowdown": held_ms / free_ms, "samples": [len(free), len(held)]}


def quota_for_slowdown(call: Callable[[], object], slowdown: float, min_s: float = 1.0) -> dict:
    """The quota that should make `call` `slowdown` times slower than it runs now: the CPU share it gets unconfined
    (process CPU time / wall time over at least `min_s` seconds), divided by `slowdown`."""
    if not slowdown > 1:
        raise ConfigError(f"--slowdown must be > 1 (times slower than this machine), got {slowdown}")
    call()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < min_s:
        call()
    share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    # the kernel's minimum quota is 1 ms per period: no finer than 0.01 CPU with a period of 100 ms or less
    return {"target_slowdown": slowdown, "cpu_share_free": share, "cpu_quota": max(share / slowdown, 0.01)}


def timed(call: Callable[[], object], min_s: float) -> list[float]:
    """Wall times (ms) of `call` after one warm-up, at least two and at least `min_s` seconds in all."""
    call()
    out: list[float] = []
    while len(out) < 2 or sum(out) < min_s * 1e3:
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---------------------------------------------------------------------------------------------------- link


@dataclass(frozen=True)
class LinkSpec:
    """One hop of the chain: bandwidth (Mbit/s, each direction) and round-trip time (ms)."""

    bandwidth_mbps: float
    rtt_ms: float


def namespaces_unavailable() -> str | None:
    """Why real links cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    probe = f"epprobe{os.getpid()}"
    reaper.track_namespace(probe)
    try:
        made = _sh(["ip", "netns", "add", probe], check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        _sh(["ip", "netns", "del", probe], check=False)
    finally:
        reaper.forget_namespace(probe)
    return None


def netem_available(namespace: str, device: str) -> bool:
    """Whether the kernel has the netem qdisc (tried on `device`, then removed)."""
    ok = _sh(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "netem", "delay", "1ms"],
             check=False).returncode == 0
    if ok:
        _sh(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device, "root"], check=False)
    return ok


@dataclass
class Chain:
    """Namespaces node0 - node1 - ... joined by veth pairs; `address[i]` is node i's address on the link towards
    node i-1 (where node i-1 reaches it). `routed`: every node reaches every other, through the nodes between
    (their forwarding on), each hop shaped as its link; otherwise only neighbours reach each other. Use as a context
    manager: everything is removed on exit."""

    tiers: Sequence[str]
    links: Sequence[LinkSpec]
    routed: bool = False
    namespaces: list[str] = field(default_factory=list)
    address: list[str] = field(default_factory=list)
    netem: bool = False

    def __post_init__(self):
        if len(self.links) != len(self.tiers) - 1:
            raise ValueError(f"{len(self.tiers)} tiers need {len(self.tiers) - 1} links, got {len(self.links)}")
        tag = f"ep{os.getpid() % 100000}"
        self.namespaces = [f"{tag}-{t}"[:30] for t in self.tiers]
        self._veths = [(f"{tag}v{i}a", f"{tag}v{i}b") for i in range(len(self.links))]

    def __enter__(self) -> Chain:
        atexit.register(self.close)
        try:
            for ns in self.namespaces:
                reaper.track_namespace(ns)  # before it exists: a SIGKILL between the two leaves nothing unrecorded
                _sh(["ip", "netns", "add", ns])
                self.exec(ns, ["ip", "link", "set", "lo", "up"])
            self.address = ["127.0.0.1"]
            for i, ((a, b), link) in enumerate(zip(self._veths, self.links, strict=True)):
                _sh(["ip", "link", "add", a, "netns", self.namespaces[i], "type", "veth", "peer", "name", b,
                     "netns", self.namespaces[i + 1]])
                for ns, dev, host in ((self.namespaces[i], a, 1), (self.namespaces[i + 1], b, 2)):
                    self.exec(ns, ["ip", "addr", "add", f"10.213.{i}.{host}/24", "dev", dev])
                    self.exec(ns, ["ip", "link", "set", dev, "up"])
                    self.exec(ns, ["tc", "qdisc", "add", "dev", dev, "root", *tbf_args(link.bandwidth_mbps)])
                self.address.append(f"10.213.{i}.2")
            if self.routed:
                self._route()
            self.netem = netem_available(self.namespaces[0], self._veths[0][0]) if self.links else False
        except BaseException:
            self.close()
            raise
        return self

    def _route(self) -> None:
        for i, ns in enumerate(self.namespaces):
            for j in range(len(self.links)):  # subnet 10.213.j.0/24 joins node j (.1) and node j + 1 (.2)
                if j > i:
                    self.exec(ns, ["ip", "route", "add", f"10.213.{j}.0/24", "via", f"10.213.{i}.2"])
                elif j < i - 1:
                    self.exec(ns, ["ip", "route", "add", f"10.213.{j}.0/24", "via", f"10.213.{i - 1}.1"])
            if 0 < i < len(self.namespaces) - 1:
                self.exec(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def shape(self, hop: int, bandwidth_mbps: float) -> None:
        """Change link `hop`'s bandwidth (both ends) while the chain is up: a link that drops mid-run."""
        for end, dev in enumerate(self._veths[hop]):
            self.exec(self.namespaces[hop + end], ["tc", "qdisc", "change", "dev", dev, "root",
                                                   *tbf_args(bandwidth_mbps)])

    def exec(self, namespace: str, cmd: Sequence[str]) -> subprocess.CompletedProcess:
        return _sh(["ip", "netns", "exec", namespace, *cmd])

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in tier i's namespace."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its veth ends, and with them their peers
            _sh(["ip", "netns", "del", ns], check=False)
            reaper.forget_namespace(ns)

    def __exit__(self, *exc) -> None:
        self.close()


def tbf_args(bandwidth_mbps: float) -> list[str]:
    """tc tbf arguments for a rate: a bucket of 4 ms at the rate (at least 16 kB, so full-size segments pass) and
    a queue of up to 1 s, so that TCP, not drops, paces the sender."""
    rate_bps = bandwidth_mbps * 1e6
    burst = max(16_000, int(rate_bps / 8 * 0.004))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "1000ms"]


def _sh(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise EmulationError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done
