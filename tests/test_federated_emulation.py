"""Flower's Deployment Engine (a real SuperLink and SuperNodes) and emulated devices (cgroup CPU quota, shaped links in
network namespaces) for federated split training."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("grpc")
pytest.importorskip("flwr")

from edgeprune import emulate  # noqa: E402
from edgeprune.errors import ConfigError  # noqa: E402
from edgeprune.federated import devices  # noqa: E402
from edgeprune.federated import split as sp  # noqa: E402
from edgeprune.federated.flower import run_spec  # noqa: E402
from edgeprune.federated.shares import device_batches  # noqa: E402
from edgeprune.models import create  # noqa: E402
from edgeprune.progress import Reporter  # noqa: E402

MODEL = {"name": "vgg5", "num_classes": 10, "in_channels": 1, "image_size": 28}
DATA = {"name": "synthetic", "shape": [1, 28, 28], "size": 32, "batch_size": 8, "seed": 0}
OPTIM = sp.Optim(lr=0.05, momentum=0.9)


def fedavg_reference(splits_devices: int, rounds: int = 1) -> dict[str, torch.Tensor]:
    """What FedAvg over unsplit training must give: every device trains the global model on its share, equal
    shares are averaged."""
    torch.manual_seed(0)
    state = create(**MODEL).state_dict()
    for r in range(1, rounds + 1):
        trained = []
        for k in range(splits_devices):
            model = create(**MODEL)
            model.load_state_dict(state)
            sp.train_round(model, 7, device_batches(DATA, k, splits_devices, r), OPTIM)
            trained.append(model.state_dict())
        state = {n: torch.stack([t[n].float() for t in trained]).mean(0).to(state[n].dtype) for n in state}
    return state


def deployment_unavailable() -> str | None:
    from edgeprune.federated.deploy import EngineUnavailable, tools

    try:
        tools()
    except EngineUnavailable as e:
        return str(e)
    return None


@pytest.mark.slow
def test_deployment_engine_runs_a_round_on_a_real_superlink_and_two_supernodes(monkeypatch):
    why = deployment_unavailable()
    if why:
        pytest.skip(why)
    # no emulation here, whatever the machine allows: the fallback must say which clock it used
    monkeypatch.setattr(emulate, "namespaces_unavailable", lambda: "not root (test)")
    before = flower_processes()
    notes = []
    spec = {"model": MODEL, "data": DATA, "rounds": 1, "seed": 0, "test_subset": 16, "edges": ["e0"],
            "optim": {"lr": 0.05, "momentum": 0.9},
            "devices": [{"split": 3, "edge": "e0", "factor": 4, "mbps": 20}, {"split": 7}]}
    result = run_spec(spec, engine="deployment", progress=Notes(notes))
    assert notes == ["devices not emulated: cannot emulate devices here (not root (test)); run as root on Linux "
                     "with iproute2, or use the modelled clock; round times are on the modelled clock"]
    expected = fedavg_reference(2)
    for k, v in expected.items():  # split training over the edge's gRPC equals unsplit training; FedAvg averages
        assert torch.allclose(result["state_dict"][k].float(), v.float(), atol=1e-6), k
    (r,) = result["history"]
    assert r["splits"] == [3, 7] and r["dropped"] == [] and sorted(r["devices"]) == [0, 1]
    assert r["devices"][0]["bytes_up"] > 0 and r["devices"][1]["bytes_up"] == 0
    assert 0 <= r["global"]["accuracy"] <= 1 and r["round_s"] > 0
    assert result["job"]["engine"].startswith("flower deployment")
    assert result["clock"].startswith("modelled") and result["emulation"] is None
    assert flower_processes() <= before  # SuperLink, SuperNodes, their SuperExecs and apps: all stopped


class Notes(Reporter):
    def __init__(self, into: list[str]):
        self.into = into

    def note(self, text: str) -> None:
        self.into.append(text)


def flower_processes() -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(t.encode() in cmdline.read_bytes() for t in ("flower-super", "flwr-serverapp", "flwr-clientapp")):
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_a_bad_engine_or_emulation_and_emulated_moves_are_refused():
    spec = {"model": MODEL, "data": DATA, "rounds": 1, "edges": ["e0", "e1"],
            "devices": [{"split": 3, "edge": "e0"}], "moves": [{"round": 1, "device": 0, "iteration": 1, "to": "e1"}]}
    with pytest.raises(ConfigError, match=r"engine 'ray': choose one of \['simulation', 'deployment'\]"):
        run_spec(spec, engine="ray")
    with pytest.raises(ConfigError, match=r"emulation 'yes': choose one of \['auto', 'real', 'modelled'\]"):
        run_spec(spec, emulation="yes")
    with pytest.raises(ConfigError, match="moves cannot be emulated"):
        run_spec(spec, emulation="real")
    with pytest.raises(ConfigError, match=r"device 0 has unknown key 'speed'; allowed: edge, factor, mbps, split"):
        run_spec({**spec, "devices": [{"split": 3, "speed": 2}]})


@pytest.mark.slow
def test_an_emulated_device_trains_under_its_quota_over_its_shaped_link_and_is_torn_down():
    emulation = devices.Emulation([devices.DeviceSpec(factor=4.0, mbps=8.0)], MODEL, batch=8, input_shape=(1, 28, 28),
                                  rtt_ms=20.0, data=DATA, probe_s=0.2)
    try:
        emulation.__enter__()
    except emulate.EmulationError as e:  # not root, no `ip netns`, no writable cgroup cpu controller (CI)
        pytest.skip(f"devices cannot be emulated here: {e}")
    try:
        (measured,) = emulation.measured
        # what the kernel was told and did, not a timing: the quota set from the measured share, the device
        # process inside the cgroup, and the CPU time of its probe charged there
        assert 0 < measured["cpu_quota"] < 1 and measured["slowdown"] > 0
        namespaces = list(emulation._chains[0].namespaces)
        quota = emulation._quotas[0]
        cgroup = quota.path
        assert cgroup.exists()
        assert str(emulation._procs[-1].pid) in (cgroup / "cgroup.procs").read_text().split()
        assert quota.quota_us / quota.period_us == pytest.approx(measured["cpu_quota"], rel=0.05, abs=1e-4)
        assert quota.stat()["nr_periods"] > 0  # the device's probe ran under the cgroup's bandwidth control
        torch.manual_seed(0)
        state = create(**MODEL).state_dict()

        def round_(r: int) -> dict:
            m = {"model": MODEL, "state": state, "split": 1, "edge": emulation.edges[0][0], "data": DATA,
                 "device": 0, "devices": 1, "round": r, "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
                 "move": None}
            return emulation.client(0).call("Train", m)

        fast = round_(1)
        emulation.set_bandwidth(0, 2.0)
        slow = round_(1)
    finally:
        emulation.close()
    reference = create(**MODEL)
    reference.load_state_dict(state)
    sp.train_round(reference, 7, device_batches(DATA, 0, 1, 1), OPTIM)
    for k, v in reference.state_dict().items():  # the device process and its edge train as one model would
        assert torch.equal(fast["state"][k], v) and torch.equal(slow["state"][k], v), k
    stats = fast["stats"]
    wire_s = (stats["bytes_up"] + stats["bytes_down"]) * 8 / 8e6
    assert stats["iterations"] == 4 and stats["wall_s"] > wire_s + 4 * 0.020  # the link and the RTT bind
    assert slow["stats"]["wall_s"] > fast["stats"]["wall_s"] + 0.5 * wire_s * 3  # 4x less bandwidth after the drop
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in namespaces) and not cgroup.exists()


def test_modelled_round_seconds_follow_the_cost_of_the_measured_work():
    d = {0: {"iterations": 2, "device_s": 0.5, "edge_s": 0.25, "bytes_up": 500_000, "bytes_down": 500_000,
             "wall_s": 9.0}}
    assert devices.round_seconds(d, True, [3.0], [8.0], 10.0) == {0: 9.0}
    # 3 x 0.5 s on the device, 0.25 s on the edge, 1 MB over 8 Mbit/s, one 10 ms RTT per iteration
    assert devices.round_seconds(d, False, [3.0], [8.0], 10.0)[0] == pytest.approx(1.5 + 0.25 + 1.0 + 0.02)
