import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn, small_vgg
from typer.testing import CliRunner

from edgeprune import emulate, segments
from edgeprune.cli import app
from edgeprune.errors import ConfigError
from edgeprune.export import ort_session, to_onnx_bytes
from edgeprune.partition import bench, offload, plan, records, transfer

runner = CliRunner()


# ---------------------------------------------------------------------------------------------- plan (priced)


def fake_bench(tier: str, ms: list[float], shapes: list[tuple[int, ...]], input_bytes: int = 4000,
               **fields) -> records.Bench:
    """A bench record with chosen block times and output shapes (fp32); transfer-layer timings of 1 and 2 ms;
    `fields` replace the record's."""
    blocks = []
    for i, (t, s) in enumerate(zip(ms, shapes, strict=True)):
        nbytes = int(np.prod(s)) * 4
        blocks.append({"index": i, "output": f"t{i}", "output_shape": list(s), "output_bytes": nbytes, "ms": t,
                       "tl": {"bytes": nbytes // 4, "down_ms": 1.0, "up_ms": 2.0} if transfer.eligible(s) else None})
    return records.Bench.from_dict({
        "format": bench.FORMAT, "model": "m", "onnx_sha256": "abc", "input_shape": [1, 10, 100],
        "input_bytes": input_bytes, "tier": tier, "threads": 1, "device": {"cpu_quota": None}, "slowdown": None,
        "blocks": blocks, "whole_ms": sum(ms), "sum_blocks_ms": sum(ms)} | fields)


SHAPES = [(4, 10, 10), (4, 5, 5), (100,), (10,)]  # 1600 bytes (TL-able), 400 (odd sides), 400 (2-D), 40 (the answer)
LINKS = {frozenset(("dev", "edge")): plan.Link("dev", "edge", 10.0, 8.0),
         frozenset(("edge", "cloud")): plan.Link("edge", "cloud", 2.0, 80.0),
         frozenset(("dev", "cloud")): plan.Link("dev", "cloud", 30.0, 8.0)}


def three_tiers():
    benches = {"dev": fake_bench("dev", [40, 30, 20, 10], SHAPES), "edge": fake_bench("edge", [4, 3, 2, 1], SHAPES),
               "cloud": fake_bench("cloud", [1, 1, 1, 1], SHAPES)}
    return benches, {"dev": "device", "edge": "edge", "cloud": "cloud"}


def test_enumeration_covers_every_ordered_split_once():
    benches, roles = three_tiers()
    plans = plan.enumerate_plans(benches, roles, LINKS)
    # device [0,a), edge [a,b), cloud [b,4) for 0 <= a <= b <= 4
    assert len(plans) == 5 * 6 // 2
    assert len({p.label for p in plans}) == len(plans)
    two = plan.enumerate_plans({k: benches[k] for k in ("dev", "edge")}, {"dev": "device", "edge": "edge"}, LINKS)
    assert sorted(p.label for p in two) == sorted(["dev[0-3]", "dev[-] > edge[0-3]", "dev[0] > edge[1-3]",
                                                   "dev[0-1] > edge[2-3]", "dev[0-2] > edge[3]"])


def test_cost_is_compute_plus_rtt_plus_bytes_over_bandwidth_each_way():
    benches, roles = three_tiers()
    plans = {p.label: p for p in plan.enumerate_plans(benches, roles, LINKS)}
    p = plans["dev[0] > edge[1] > cloud[2-3]"]
    # compute 40 + 3 + 1 + 1; hop dev->edge: 10 ms + (1600 + 40 result) bytes at 8 Mbit/s; edge->cloud: 2 ms +
    # (400 + 40) bytes at 80 Mbit/s
    expected = 45 + 10 + (1640 * 8 / 8e6) * 1e3 + 2 + (440 * 8 / 80e6) * 1e3
    assert p.total_ms == pytest.approx(expected)
    send_input = plans["dev[-] > cloud[0-3]"]
    assert send_input.hops[0].bytes == 4000 and send_input.hops[0].rtt_ms == 30
    assert plans["dev[0-3]"].total_ms == 100 and plans["dev[0-3]"].hops == []


def test_calibration_scales_blocks_to_the_whole_models_time():
    b = fake_bench("dev", [40, 30, 20, 10], SHAPES, whole_ms=50.0)
    c = plan.calibrated(b)
    assert [x.ms for x in c.blocks] == [20, 15, 10, 5] and c.calibration == 0.5
    assert [x.ms for x in b.blocks] == [40, 30, 20, 10]  # the bench given is unchanged
    plans = {p.label: p for p in plan.enumerate_plans({"dev": c}, {"dev": "device"}, LINKS)}
    assert plans["dev[0-3]"].total_ms == 50


def test_transfer_layer_variant_sends_a_quarter_and_pays_its_layers():
    benches, roles = three_tiers()
    plans = plan.enumerate_plans(benches, roles, LINKS, tl=True)
    with_tl = [p for p in plans if p.tl]
    # only the cut after block 0 is 4-D with even sides; it leads to edge[1], edge[1-2], edge[1-3] or cloud[1-3]
    assert {p.stages[0].stop for p in with_tl} == {1} and len(with_tl) == 4
    tl = next(p for p in with_tl if p.label == "dev[0] > edge[1-3] +TL")
    plain = next(p for p in plans if p.label == "dev[0] > edge[1-3]")
    assert plain.hops[0].bytes == 4 * tl.hops[0].bytes == 1600
    assert tl.hops[0].tl_ms == 3.0
    assert tl.total_ms == pytest.approx(plain.total_ms - (1200 * 8 / 8e6) * 1e3 + 3.0)


def test_constraints_filter_and_name_the_one_that_emptied_the_list():
    benches, roles = three_tiers()
    plans = plan.enumerate_plans(benches, roles, LINKS)
    on_device = plan.block_constraint("device:0,1", roles, 4)
    assert all(p.where(0).role == "device" and p.where(1).role == "device" for p in plan.best(plans, on_device, 99))
    not_cloud = plan.block_constraint("cloud:!3", roles, 4)
    assert all(p.where(3).role != "cloud" for p in plan.best(plans, not_cloud, 99))
    quiet = plan.limit_constraint("max-upload", "device=0", roles)
    assert [p.label for p in plan.best(plans, [quiet], 99)] == ["dev[0-3]"]
    share = plan.limit_constraint("max-time", "device=10%", roles)
    assert all(p.tier_ms("device") <= 0.1 * p.total_ms for p in plan.best(plans, [share], 99))
    cap = plan.limit_constraint("max-time", "device=5", roles)
    with pytest.raises(plan.NoPlanError, match=r"^no plan satisfies the constraints: --max-time device=5 removed "
                                               r"the last 1 candidate\(s\); relax it$"):
        plan.best(plans, [quiet, cap])


@pytest.mark.parametrize("spec, message", [
    ("device", "write TIER:BLOCKS"), ("gpu:1", "no tier or role 'gpu'"), ("device:x", "'x' is not a block index"),
    ("device:9", "block 9 does not exist; the model has blocks 0-3"),
])
def test_bad_block_constraints(spec, message):
    _, roles = three_tiers()
    with pytest.raises(ConfigError, match=message):
        plan.block_constraint(spec, roles, 4)


def test_missing_link_is_named():
    benches, roles = three_tiers()
    links = {k: v for k, v in LINKS.items() if k != frozenset(("dev", "cloud"))}
    with pytest.raises(ConfigError, match=r"no link between 'dev' and 'cloud'; add a line `dev,cloud,PING_MS"):
        plan.enumerate_plans(benches, roles, links)


def test_network_file(tmp_path):
    f = tmp_path / "links.csv"
    f.write_text("source,destination,ping_ms,bandwidth_mbps\ndevice,edge,66.7,1.6\n# a comment\nedge,cloud,20,50\n")
    links = plan.read_network(f)
    assert links[frozenset(("edge", "device"))] == plan.Link("device", "edge", 66.7, 1.6)
    f.write_text("device,edge,66.7,1.6\nedge,cloud,fast\n")
    with pytest.raises(ConfigError, match=r"links.csv:2: 'edge,cloud,fast' is not `source,destination"):
        plan.read_network(f)
    with pytest.raises(ConfigError, match="does not exist"):
        plan.read_network(tmp_path / "nope.csv")


def test_roles():
    recs = [fake_bench(t, [1, 1, 1, 1], SHAPES) for t in ("pi", "vm", "gpu")]
    assert plan.assign_roles(recs) == {"pi": "device", "vm": "edge", "gpu": "cloud"}
    assert plan.assign_roles(recs, device=["vm"], cloud=["gpu"]) == {"vm": "device", "gpu": "cloud"}
    with pytest.raises(ConfigError, match="--edge 'x' has no bench file"):
        plan.assign_roles(recs, device=["pi"], edge=["x"])
    other = fake_bench("vm", [1, 1, 1, 1], SHAPES, onnx_sha256="def")
    with pytest.raises(ConfigError, match="bench files of different models"):
        plan.check_benches([recs[0], other])


# ---------------------------------------------------------------------------------------------- transfer layer


@pytest.mark.parametrize("shape, why", [((10,), "its output is 2-D"), ((8, 1, 1), "its maps are 1x1"),
                                        ((8, 7, 7), "its maps are 7x7")])
def test_transfer_layer_refused_where_it_cannot_pool(shape, why):
    with pytest.raises(ConfigError, match=f"no transfer layer at cut 'c': {why}"):
        transfer.check(shape, "c")


def test_transfer_layer_pools_and_restores_the_shape():
    torch.manual_seed(0)
    seg = segments.load(to_onnx_bytes(randomize_bn(small_vgg()).eval(), (1, 8, 8)))
    cut = seg.cuts[1]  # the first ReLU: 16 x 8 x 8
    head = transfer.with_down(seg.span(0, 2), cut.shape)
    tail = transfer.with_up(seg.span(2, seg.n_blocks), cut.shape)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    sent = ort_session(head.SerializeToString()).run(None, {seg.input: x})[0]
    assert sent.shape == (1, 16, 4, 4) and sent.nbytes * 4 == cut.bytes
    full = ort_session(seg.span(0, 2).SerializeToString()).run(None, {seg.input: x})[0]
    np.testing.assert_array_equal(sent[0, :, 1, 2], full[0, :, 2:4, 4:6].max(axis=(1, 2)))
    out = ort_session(tail.SerializeToString()).run(None, {tail.graph.input[0].name: sent})[0]
    assert out.shape == (1, 10)


# ---------------------------------------------------------------------------------------------- bench


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple[bytes, str]:
    torch.manual_seed(0)
    data = to_onnx_bytes(randomize_bn(small_vgg()).eval(), (1, 8, 8))
    path = tmp_path_factory.mktemp("m") / "small.onnx"
    path.write_bytes(data)
    return data, str(path)


def test_bench_times_every_block_fed_real_outputs(small_onnx):
    data, _ = small_onnx
    rec = bench.run(data, "small", "edge", threads=1, runs=30, warmup=1)
    seg = segments.load(data)
    assert len(rec.blocks) == seg.n_blocks == 12
    assert [b.output_bytes for b in rec.blocks[:-1]] == [c.bytes for c in seg.cuts]
    assert rec.blocks[-1].output_bytes == 40 and rec.input_bytes == 8 * 8 * 4
    assert all(b.ms > 0 and b.median_ms > 0 for b in rec.blocks)
    # 4-D even maps can take the transfer layer; after the global pool (1x1) and flatten (2-D) they cannot
    tl = [b.tl is not None for b in rec.blocks]
    assert tl == [True] * 9 + [False] * 3
    assert rec.blocks[4].tl.bytes * 4 == rec.blocks[4].output_bytes
    assert rec.runs == 30 and rec.clock == "wall" and rec.device == {"cpu_quota": None}
    assert rec.sum_blocks_ms == pytest.approx(sum(b.ms for b in rec.blocks))
    assert records.Bench.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec  # its file reads back the same
    with pytest.raises(ConfigError, match="at least 30"):
        bench.run(data, "small", "edge", runs=10)


def test_bench_source(tmp_path, small_onnx):
    data, path = small_onnx
    assert bench.source_model(path) == (data, "small")
    (tmp_path / "run").mkdir()
    with pytest.raises(Exception, match=r"has no model.onnx; write it with `edgeprune export"):
        bench.source_model(str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="does not exist"):
        bench.source_model(str(tmp_path / "missing.onnx"))


# ---------------------------------------------------------------------------------------------- emulation


def test_cpu_quota_writes_v1_and_v2_files(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    q = emulate.CpuQuota(0.25, root=v1, name="t")
    assert (q.version, q.period_us, q.quota_us) == ("v1", 10_000, 2500)
    assert (v1 / "cpu" / "t" / "cpu.cfs_quota_us").read_text() == "2500"
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory")
    (v2 / "cgroup.subtree_control").write_text("")
    q = emulate.CpuQuota(0.05, root=v2, name="t")
    assert (v2 / "t" / "cpu.max").read_text() == "1000 20000"  # the kernel's 1 ms minimum quota sets the period
    assert (v2 / "cgroup.subtree_control").read_text() == "+cpu"
    with pytest.raises(emulate.EmulationError, match="no cgroup cpu controller"):
        emulate.CpuQuota(0.5, root=tmp_path / "none")
    with pytest.raises(ConfigError, match="must be > 0"):
        emulate.CpuQuota(0, root=v1)


def _quota_works() -> bool:
    try:
        emulate.CpuQuota(0.5, name="edgeprune-probe").close()
        return True
    except emulate.EmulationError:
        return False


@pytest.mark.skipif(not _quota_works(), reason="needs root and a writable cgroup cpu controller")
def test_cpu_quota_holds_this_process_to_its_share():
    """What the kernel did, not a timing: the quota it was given, the CPU time it charged to the cgroup, and the
    share of wall time this process got while inside, which a quota caps however busy the machine is (other load
    can only lower it)."""
    a = np.random.default_rng(0).standard_normal((200, 200)).astype(np.float32)
    q = emulate.CpuQuota(0.1)
    try:
        limit = (q.path / ("cpu.max" if q.version == "v2" else "cpu.cfs_quota_us")).read_text().split()
        assert int(limit[0]) == q.quota_us and q.quota_us / q.period_us == pytest.approx(0.1, rel=0.01)
        before = q.stat()
        q.enter()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < 1.0:
            [a @ a for _ in range(5)]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        q.leave()
        after = q.stat()
    finally:
        q.close()
    assert after["nr_periods"] > before["nr_periods"]  # the kernel ran this process under the cgroup's bandwidth
    if "usage_usec" in after:  # cgroup v2 also charges the CPU time there
        assert (after["usage_usec"] - before["usage_usec"]) / 1e6 == pytest.approx(cpu, rel=0.5, abs=0.02)
    assert cpu / wall < 0.1 + 2 * q.period_us / 1e6 / wall  # within one period either side of the quota
    assert not q.path.exists()


# ---------------------------------------------------------------------------------------------- real runs


def _record(data: bytes, roles_links, tl=False, constraints=()) -> records.PlanFile:
    """A plan record from a fast (un-timed) bench: the run does not depend on how the plan was priced."""
    seg = segments.load(data)
    shapes = [c.shape for c in seg.cuts] + [(10,)]
    benches = {"dev": fake_bench("dev", [1.0] * seg.n_blocks, shapes, 256, onnx_sha256=_sha(data)),
               "edge": fake_bench("edge", [1.0] * seg.n_blocks, shapes, 256, onnx_sha256=_sha(data))}
    roles, links = roles_links
    ranked = plan.best(plan.enumerate_plans(benches, roles, links, tl), constraints, 3)
    return replace(plan.record(ranked, benches, roles, links, constraints, tl), input_shape=[1, 8, 8])


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


TWO = ({"dev": "device", "edge": "edge"}, {frozenset(("dev", "edge")): plan.Link("dev", "edge", 40.0, 8.0)})


@pytest.mark.slow
def test_two_processes_over_loopback_give_the_whole_models_answer(small_onnx):
    data, _ = small_onnx
    split = [plan.Constraint("--split 5", lambda p: p.stages[0].stop == 5 and len(p.stages) == 2)]
    rec = _record(data, TWO, constraints=split)
    got = offload.execute(data, rec, rank=1, runs=5, warmup=1, allow_namespaces=False)
    assert got["plan"] == "dev[0-4] > edge[5-11]"
    assert got["link"].startswith("modelled") and "no netem" in got["rtt"]
    assert got["max_abs_error"] <= 1e-5
    # the half-RTT sleeps each way and 2048 + 40 bytes at 8 Mbit/s are in every request
    assert min(got["latencies_ms"]) >= 40 + 2088 * 8 / 8e6 * 1e3


def _namespaces_work() -> str | None:
    return emulate.namespaces_unavailable()


@pytest.mark.skipif(_namespaces_work() is not None, reason=f"real links need root and `ip netns`: {_namespaces_work()}")
@pytest.mark.slow
def test_run_over_namespaces_shapes_the_link_and_cleans_up():
    torch.manual_seed(0)
    data = to_onnx_bytes(randomize_bn(small_vgg()).eval(), (1, 64, 64))
    link = ({"dev": "device", "edge": "edge"}, {frozenset(("dev", "edge")): plan.Link("dev", "edge", 10.0, 4.0)})
    after_conv = [plan.Constraint("split 1", lambda p: p.stages[0].stop == 1 and len(p.stages) == 2)]
    rec = replace(_record(data, link, constraints=after_conv), input_shape=[1, 64, 64])
    got = offload.execute(data, rec, rank=1, runs=2, warmup=1)
    assert got["link"] == "namespaces+veth, tc tbf" and got["max_abs_error"] <= 1e-5
    # 16x64x64 floats (262 kB) at 4 Mbit/s take 0.52 s, less the 16 kB bucket tbf lets through at once
    shaped_ms = (16 * 64 * 64 * 4 - 16_000) * 8 / 4e6 * 1e3
    assert shaped_ms <= got["measured_ms"] < 3 * shaped_ms
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"ep{os.getpid() % 100000}-" not in left


@pytest.mark.slow
def test_transfer_layer_run_changes_only_what_crosses(small_onnx):
    data, _ = small_onnx
    tl_at_2 = [plan.Constraint("tl", lambda p: p.tl and p.stages[0].stop == 2)]
    rec = _record(data, TWO, tl=True, constraints=tl_at_2)
    assert rec.plans[0].hops[0].bytes == 16 * 4 * 4 * 4
    got = offload.execute(data, rec, rank=1, runs=2, warmup=0, allow_namespaces=False)
    assert got["tl"] and got["max_abs_error"] > 0  # the edge sees an up-sampled approximation


# ---------------------------------------------------------------------------------------------- the commands


def test_cli_bench_plan_run(tmp_path, small_onnx):
    _, path = small_onnx
    for tier, threads in (("dev", 1), ("edge", 2)):
        r = runner.invoke(app, ["-q", "partition", "bench", path, "--tier", tier, "--threads", str(threads),
                                "--warmup", "1", "--out", str(tmp_path)])
        assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "bench-edge.json").read_text())["threads"] == 2
    (tmp_path / "links.csv").write_text("dev,edge,20,8\n")
    benches = [str(tmp_path / "bench-dev.json"), str(tmp_path / "bench-edge.json")]
    r = runner.invoke(app, ["partition", "plan", *benches, "--network", str(tmp_path / "links.csv"), "--tl",
                            "-k", "3", "--out", str(tmp_path / "plan.json"), "--plot", str(tmp_path / "plan.png")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "plan.json").read_text())
    assert len(rec["plans"]) == 3 and rec["plans"][0]["total_ms"] <= rec["plans"][2]["total_ms"]
    assert (tmp_path / "plan.png").stat().st_size > 0
    r = runner.invoke(app, ["partition", "cuts", path])
    assert r.exit_code == 0 and "11 cuts, 12 blocks" in r.output


def _bad(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def test_cli_bad_input_is_one_line(tmp_path, small_onnx):
    from test_segments import TwoBranches

    two = tmp_path / "twobranch.onnx"
    two.write_bytes(to_onnx_bytes(TwoBranches(), (1, 4, 4)))
    assert "no valid cut" in _bad(["partition", "cuts", str(two)]) and "stays open until" in _bad(
        ["partition", "bench", str(two), "--tier", "dev"])

    seg = segments.load(small_onnx[0])
    shapes = [c.shape for c in seg.cuts] + [(10,)]
    for tier in ("dev", "edge"):
        (tmp_path / f"bench-{tier}.json").write_text(json.dumps(fake_bench(tier, [1.0] * 12, shapes).to_dict()))
    benches = [str(tmp_path / "bench-dev.json"), str(tmp_path / "bench-edge.json")]
    (tmp_path / "links.csv").write_text("dev,edge,20,8\n")
    (tmp_path / "other.csv").write_text("dev,cloud,20,8\n")
    plan_args = ["partition", "plan", *benches, "--out", str(tmp_path / "p.json")]
    net = ["--network", str(tmp_path / "links.csv")]
    assert "its output is 2-D" in _bad([*plan_args, *net, "--split", "11", "--tl"])
    assert "its maps are 1x1" in _bad([*plan_args, *net, "--split", "10", "--tl"])
    assert "no link between 'dev' and 'edge'" in _bad([*plan_args, "--network", str(tmp_path / "other.csv")])
    line = _bad([*plan_args, *net, "--blocks", "edge:3", "--max-upload", "dev=0"])
    assert "--max-upload dev=0 removed the last" in line
    assert "no tier or role 'gpu'" in _bad([*plan_args, *net, "--max-time", "gpu=5"])
    assert "--plan 'nope.json' does not exist" in _bad(["partition", "run", small_onnx[1], "--plan", "nope.json"])


@pytest.mark.slow
def test_no_namespaces_warns_and_labels_the_link_modelled(tmp_path, small_onnx, monkeypatch):
    data, path = small_onnx
    rec = _record(data, TWO, constraints=[plan.Constraint("split", lambda p: p.stages[0].stop == 3)])
    records.write(tmp_path / "plan.json", rec)
    monkeypatch.setattr(emulate, "namespaces_unavailable", lambda: "not root")
    r = runner.invoke(app, ["partition", "run", path, "--plan", str(tmp_path / "plan.json"), "--runs", "2",
                            "--warmup", "0", "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "warning: no network namespaces here (not root); the link is modelled" in r.output
    assert json.loads((tmp_path / "r.json").read_text())["link"].startswith("modelled")


def test_partition_help_does_not_import_torch():
    import sys

    import edgeprune

    code = "import sys; from edgeprune.cli import app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(Path(edgeprune.__file__).parents[1])))
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.skipif(not _quota_works() or _namespaces_work() is not None,
                    reason="needs root, a writable cgroup cpu controller and `ip netns`")
@pytest.mark.slow
def test_tier_quota_is_applied_from_outside_the_namespace(small_onnx):
    """Inside `ip netns exec` /sys has no cgroup mounts: the orchestrator puts each tier's process under its quota."""
    data, _ = small_onnx
    rec = _record(data, TWO, constraints=[plan.Constraint("split", lambda p: p.stages[0].stop == 6)])
    rec.tiers["dev"].device = {"cpu_quota": 0.5}
    got = offload.execute(data, rec, rank=1, runs=2, warmup=0)
    assert got["link"] == "namespaces+veth, tc tbf" and got["max_abs_error"] <= 1e-5
    assert not list(emulate.cpu_controller()[1].glob(f"edgeprune-{os.getpid()}-*"))


def test_transfer_layer_finetune_trains_only_the_edge_part():
    from edgeprune import models
    from edgeprune.partition import finetune
    from edgeprune.train import TrainConfig

    torch.manual_seed(0)
    model = models.create("vgg11", num_classes=3, in_channels=1).eval()
    got = finetune.cuts(model, (1, 16, 16))
    # 16 -> conv 16 -> pool 8 -> conv 8 -> pool 4 -> conv, conv 4 -> pool 2 -> conv, conv 2 -> pool 1 (not eligible)
    assert [s[1:] for _, s in got] == [(16, 16), (8, 8), (8, 8), (4, 4), (4, 4), (4, 4), (2, 2), (2, 2), (2, 2)]
    x = torch.randn(24, 1, 16, 16)
    y = torch.randint(0, 3, (24,))
    data = list(zip(x.split(8), y.split(8), strict=True))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    r = finetune.finetune_cut(model, got[3][0], data, data, TrainConfig(epochs=1, lr=0.01))
    assert r["shape"] == [128, 2, 2] and 0 <= r["accuracy_after"] <= 1
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the model given is untouched
    with pytest.raises(Exception, match="not a chain of layers"):
        finetune.chain(models.create("tv:resnet18"))


def test_tier_server_answers_and_refuses_a_body_that_does_not_match_its_shape(small_onnx, tmp_path):
    from fastapi.testclient import TestClient

    data, path = small_onnx
    seg = segments.load(data)
    tail = segments.save(seg.span(5, seg.n_blocks), tmp_path / "tail.onnx")
    app = offload.make_app(str(tail), 1, offload._Link(0, None), None, offload._Link(0, None))
    act = np.random.default_rng(0).standard_normal((1, *seg.cuts[4].shape)).astype(np.float32)
    with TestClient(app) as client:
        r = client.post("/segment", content=act.tobytes(), headers={"x-shape": "1,32,4,4"})
        assert r.status_code == 200 and r.headers["x-shape"] == "1,10"
        ref = ort_session(tail).run(None, {seg.boundary(5): act})[0]
        np.testing.assert_array_equal(np.frombuffer(r.content, np.float32).reshape(1, 10), ref)
        bad = client.post("/segment", content=act.tobytes()[:100], headers={"x-shape": "1,32,4,4"})
        assert bad.status_code == 422 and "body of 100 bytes does not match x-shape '1,32,4,4'" in bad.text


# ---------------------------------------------------------------------------------------------- variant + cut


def _portfolio(folder: Path) -> dict[str, str]:
    """A two-variant portfolio written by hand (no training): `wide` (more accurate) and `narrow`, two seeds of one
    small model; which is faster, the tests' bench files say."""
    from edgeprune import portfolio

    folder.mkdir()
    variants = []
    for seed, (vid, width, accuracy) in enumerate((("wide", 8, 0.9), ("narrow", 4, 0.8))):
        torch.manual_seed(seed)
        f = folder / f"{vid}.onnx"
        f.write_bytes(to_onnx_bytes(randomize_bn(small_vgg()).eval(), (1, 8, 8)))
        variants.append(portfolio.Variant(
            id=vid, source=str(f), method="test", onnx=f.name, sha256=portfolio.sha256(f), model_file=None,
            model_sha256=None, accuracy=accuracy, params=width, nonzero_params=width, macs=width,
            bytes=f.stat().st_size, p50_ms=1.0, p90_ms=1.0, precision="fp32"))
    name, shape, dtype, classes = portfolio.onnx_signature(folder / "wide.onnx")
    manifest = portfolio.Manifest(data="test", input_name=name, input_shape=shape, datatype=dtype, classes=classes,
                                  batch_size=1, threads=1, variants=variants)
    (folder / portfolio.MANIFEST).write_text(json.dumps(manifest.to_dict()))
    return {v.id: v.sha256 for v in variants}


def test_plan_chooses_the_most_accurate_variant_whose_fastest_plan_meets_the_target(tmp_path):
    shas = _portfolio(tmp_path / "pf")
    seg = segments.load((tmp_path / "pf" / "wide.onnx").read_bytes())
    shapes = [c.shape for c in seg.cuts] + [(10,)]
    benches = []
    for vid, scale in (("wide", 4.0), ("narrow", 1.0)):  # wide: 4x the compute of narrow on every tier
        for tier, ms in (("dev", 5.0), ("edge", 1.0)):
            rec = fake_bench(tier, [ms * scale] * len(shapes), shapes, model=vid, onnx_sha256=shas[vid]).to_dict()
            path = tmp_path / vid / f"bench-{tier}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(rec))
            benches.append(str(path))
    (tmp_path / "links.csv").write_text("dev,edge,1,1000\n")
    fast = {}
    for vid in shas:  # each variant's fastest plan, priced alone
        group = [bench.load(b) for b in benches if f"/{vid}/" in b]
        fast[vid] = plan.plan_model(group, plan.read_network(tmp_path / "links.csv"), plan.Options())[0][0].total_ms
    assert fast["narrow"] < fast["wide"]
    args = ["partition", "plan", *benches, "--network", str(tmp_path / "links.csv"), "--variants",
            str(tmp_path / "pf"), "--out", str(tmp_path / "plan.json")]
    for target, chosen in ((fast["wide"] + 1, "wide"), ((fast["wide"] + fast["narrow"]) / 2, "narrow")):
        r = runner.invoke(app, [*args, "--target-latency", str(target)])
        assert r.exit_code == 0, r.output
        rec = json.loads((tmp_path / "plan.json").read_text())
        assert rec["variant"] == chosen and rec["onnx_sha256"] == shas[chosen]
        assert rec["plans"][0]["total_ms"] == pytest.approx(fast[chosen]) and rec["target_latency_ms"] == target
        assert {r["variant"]: r["meets"] for r in rec["variants"]} == {"wide": chosen == "wide", "narrow": True}
    line = _bad([*args, "--target-latency", str(fast["narrow"] / 2)])
    assert f"the fastest is narrow at {fast['narrow']:.1f} ms" in line
    assert "go together" in _bad([*args])
    assert "no bench files for variant(s) narrow" in _bad(
        [*args[:2], *[b for b in benches if "/wide/" in b], *args[len(benches) + 2:], "--target-latency", "1000"])
    (tmp_path / "other.json").write_text(json.dumps(fake_bench("cloud", [1.0] * len(shapes), shapes).to_dict()))
    assert "which is no variant of the portfolio" in _bad([*args, str(tmp_path / "other.json"), "--target-latency",
                                                           "1000"])
    (tmp_path / "plain.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "variant"}))
    assert "names no variant of it" in _bad(["partition", "run", str(tmp_path / "pf"), "--plan",
                                             str(tmp_path / "plain.json")])
    assert "is a portfolio of several models" in _bad(["partition", "cuts", str(tmp_path / "pf")])


def test_bench_a_portfolio_times_every_variant(tmp_path):
    shas = _portfolio(tmp_path / "pf")
    r = runner.invoke(app, ["-q", "partition", "bench", str(tmp_path / "pf"), "--tier", "dev", "--warmup", "1",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    for vid, sha in shas.items():
        rec = json.loads((tmp_path / "b" / vid / "bench-dev.json").read_text())
        assert (rec["model"], rec["onnx_sha256"], rec["tier"]) == (vid, sha, "dev")
