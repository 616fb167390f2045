"""The planner's cost model and multi-tensor cuts end to end: bench, plan, a real split run (issue 30, item 2)."""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_partition import SHAPES, _quota_works, _sha, fake_bench
from test_segments import MiniInception

from edgeprune import emulate, segments
from edgeprune.errors import ConfigError
from edgeprune.export import ort_session, to_onnx_bytes
from edgeprune.partition import bench, hop, offload, plan, records, wire


@pytest.fixture(scope="module")
def mini() -> bytes:
    torch.manual_seed(0)
    return to_onnx_bytes(MiniInception().eval(), (3, 8, 8))


def _request(send: float, serve: float, free: float) -> dict:
    return {"send_ms": send, "serve_ms": serve, "free_ms": free}


def test_every_crossing_pays_the_senders_client_and_the_receivers_server_share():
    dev = fake_bench("dev", [40, 30, 20, 10], SHAPES, request=_request(9.0, 11.0, 3.0))
    edge = fake_bench("edge", [4, 3, 2, 1], SHAPES, request=_request(3.0, 3.0, 3.0))
    cloud = fake_bench("cloud", [1, 1, 1, 1], SHAPES, request=_request(2.0, 2.0, 2.0))
    links = {frozenset(("dev", "edge")): plan.Link("dev", "edge", 10.0, 8.0),
             frozenset(("edge", "cloud")): plan.Link("edge", "cloud", 2.0, 80.0),
             frozenset(("dev", "cloud")): plan.Link("dev", "cloud", 30.0, 8.0)}
    benches, roles = {"dev": dev, "edge": edge, "cloud": cloud}, {"dev": "device", "edge": "edge", "cloud": "cloud"}
    plans = {p.label: p for p in plan.enumerate_plans(benches, roles, links)}
    local = plans["dev[0-3]"]
    assert local.hops == [] and local.total_ms == 100
    two = plans["dev[0-1] > edge[2-3]"]
    # 9 (dev as client) + 3 (edge as server) - (3 + 3) / 2
    assert two.hops[0].request_ms == pytest.approx(9.0)
    without = plan.price(two.stages, {t: replace(b, request=None) for t, b in benches.items()}, links, False)
    assert two.total_ms == pytest.approx(without.total_ms + 9.0)
    three = plans["dev[0] > edge[1-2] > cloud[3]"]
    assert [h.request_ms for h in three.hops] == pytest.approx([9.0, 3.0 + 2.0 - 2.5])
    assert three.total_ms == pytest.approx(sum(three.compute_ms) + sum(h.rtt_ms + h.transfer_ms for h in three.hops)
                                           + 9.0 + 2.5)
    written = plan.record([two], benches, roles, links, [], False).to_dict()
    assert written["plans"][0]["hops"][0]["request_ms"] == 9.0
    assert records.PlanFile.from_dict(written).plans[0].hops == two.hops  # the file reads back the same


def test_request_cost_is_measured_on_the_real_transport_and_the_server_is_stopped(monkeypatch):
    started = []
    real = hop._server
    monkeypatch.setattr(hop, "_server", lambda env: started.append(real(env)) or started[-1])
    got = hop.measure(None, runs=5, warmup=1)
    assert got["free_ms"] > 0 and got["send_ms"] == got["serve_ms"] == got["free_ms"]
    assert got["body_bytes"] == 4 and "FastAPI" in got["transport"]
    (proc, _), = started
    assert proc.poll() is not None  # stopped
    # a tier with no quota costs a free round trip per request
    assert hop.request_ms(got, got) == pytest.approx(got["free_ms"])
    assert hop.request_ms(None, got) == 0.0  # bench files made before it was measured


def test_bench_of_a_branchy_model_with_multi_tensor_cuts(mini):
    single = bench.run(mini, "mini", "edge", runs=30, warmup=1)
    rec = bench.run(mini, "mini", "edge", runs=30, warmup=1, max_tensors=3)
    seg = segments.load(mini, "mini", 3)
    assert rec.max_tensors == 3 and len(rec.blocks) == seg.n_blocks > len(single.blocks)
    assert [b.output_bytes for b in rec.blocks[:-1]] == [c.bytes for c in seg.cuts]
    for b, c in zip(rec.blocks, seg.cuts, strict=False):
        assert b.output_shapes == [list(s) for s in c.shapes]
        assert (b.output_shape is None) == (not c.single)
        if not c.single:
            assert b.tl is None  # the transfer layer pools one tensor
    assert rec.request["free_ms"] > 0 and rec.request["send_ms"] == rec.request["free_ms"]
    multi = next(i + 1 for i, c in enumerate(seg.cuts) if not c.single)
    with pytest.raises(ConfigError, match="tensors cross that cut"):
        plan.plan_model([rec], {}, plan.Options(split=multi, tl=True))


def test_encode_decode_several_tensors():
    arrays = [np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.ones((1, 4), np.float32)]
    body, headers = offload._encode(arrays)
    assert headers["x-shape"] == "1,2,3;1,4" and len(body) == 40
    back = offload._decode(body, headers["x-shape"])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    with pytest.raises(ValueError, match="10 fp32 values for shapes of 11"):
        offload._decode(body, "1,2,3;1,5")


@pytest.mark.slow
def test_split_at_a_multi_tensor_cut_runs_across_processes_and_gives_the_whole_answer(mini):
    seg = segments.load(mini, "mini", 3)
    k = max(i + 1 for i, c in enumerate(seg.cuts) if len(c.tensors) == 3)
    shapes = [c.shapes[0] for c in seg.cuts] + [(10,)]
    benches = {t: fake_bench(t, [1.0] * seg.n_blocks, shapes, 256, onnx_sha256=_sha(mini), max_tensors=3)
               for t in ("dev", "edge")}
    roles = {"dev": "device", "edge": "edge"}
    links = {frozenset(roles): plan.Link("dev", "edge", 0.0, 1000.0)}
    split = [plan.Constraint(f"--split {k}", lambda p: p.stages[0].stop == k and len(p.stages) == 2)]
    ranked = plan.best(plan.enumerate_plans(benches, roles, links), split, 1)
    rec = replace(plan.record(ranked, benches, roles, links, split, False), input_shape=[3, 8, 8])
    assert rec.max_tensors == 3
    got = offload.execute(mini, rec, rank=1, runs=3, warmup=1, allow_namespaces=False)
    assert got["max_abs_error"] <= 1e-5
    # and the reference it is compared with is the whole model's answer on the device's input
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert np.isfinite(ort_session(mini).run(None, {seg.input: x})[0]).all()


@pytest.mark.skipif(not _quota_works(), reason="needs root and a writable cgroup cpu controller")
def test_request_cost_under_a_quota_times_this_tier_as_client_and_as_server(monkeypatch):
    q = emulate.CpuQuota(0.5)
    added = []
    real_add = q.add
    monkeypatch.setattr(q, "add", lambda pid: added.append(pid) or real_add(pid))
    try:
        q.enter()
        got = hop.measure(q, runs=5, warmup=1)
        # one server went in (this tier as the server), this process in and out once a request (as the client), and
        # this process is back inside at the end
        me = os.getpid()
        servers = [p for p in added if p != me]
        assert len(servers) == 1 and added[-1] == me and added.count(me) == 1 + 6 + 1
        assert str(os.getpid()) in (q.path / "cgroup.procs").read_text().split()
        assert all(got[k] > 0 for k in ("send_ms", "serve_ms", "free_ms"))
    finally:
        q.close()


# ---------------------------------------------------------------------------------------------- transfer dtype


def test_wire_dtypes_round_trip_within_their_precision():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 4, 6, 6)).astype(np.float32), rng.standard_normal((1, 10)).astype(np.float32)]
    for dtype, size, tol in (("fp32", 4, 0.0), ("fp16", 2, 2e-3), ("int8", 1, None)):
        body, headers = wire.encode(arrays, dtype)
        assert len(body) == (144 + 10) * size and headers["x-dtype"] == dtype
        back = wire.decode(body, headers["x-shape"], dtype, headers.get("x-scale", ""))
        for a, b in zip(arrays, back, strict=True):
            assert b.dtype == np.float32 and b.shape == a.shape
            # int8: half a step of max|a| / 127, per tensor
            bound = tol * np.abs(a).max() if tol is not None else np.abs(a).max() / 127 / 2 + 1e-6
            assert np.abs(a - b).max() <= bound
    with pytest.raises(ValueError, match="choose one of fp32, fp16, int8"):
        wire.encode(arrays, "bf16")
    body, headers = wire.encode(arrays, "int8")
    with pytest.raises(ValueError, match="1 int8 scale"):
        wire.decode(body, headers["x-shape"], "int8", headers["x-scale"].split(";")[0])


def _codecs(enc: float, dec: float) -> dict:
    return {w: {"encode_ns": enc, "decode_ns": dec} for w in wire.WIRES}


def test_the_transfer_dtype_is_chosen_with_the_cut():
    dev = fake_bench("dev", [400, 300, 200, 100], SHAPES, wire=_codecs(2.0, 0.0))
    edge = fake_bench("edge", [4, 3, 2, 1], SHAPES, wire=_codecs(0.0, 1.0))
    benches, roles = {"dev": dev, "edge": edge}, {"dev": "device", "edge": "edge"}
    links = {frozenset(roles): plan.Link("dev", "edge", 10.0, 0.008)}  # 1 byte per ms
    plans = {p.label: p for p in plan.enumerate_plans(benches, roles, links, wires=wire.WIRES)}
    assert "dev[0-3] @int8" not in plans  # nothing crosses: no dtype to choose
    for dtype, size in (("fp32", 4), ("fp16", 2), ("int8", 1)):
        p = plans["dev[0] > edge[1-3]" + ("" if dtype == "fp32" else f" @{dtype}")]
        h, = p.hops
        assert p.wire == h.wire == dtype and h.bytes == 1600 // 4 * size  # 400 values
        assert h.transfer_ms == pytest.approx(h.bytes + 40)  # the fp32 answer comes back
        assert h.codec_ms == pytest.approx(400 * 3.0 / 1e6)
        assert p.to_dict()["hops"][0]["wire"] == dtype
    # on a slow link the fewest bytes win; the run is told which dtype each hop sends
    assert plan.best(plans.values(), k=1)[0].wire == "int8"
    assert plan.best(plan.enumerate_plans(benches, roles, links), k=1)[0].wire == "fp32"
    with pytest.raises(ConfigError, match="transfer dtype 'bf16'"):
        plan.enumerate_plans(benches, roles, links, wires=("bf16",))
    # a crossing tensor that is not float32 travels as it is
    ints = fake_bench("dev", [40, 30, 20, 10], SHAPES)
    ints.blocks[0].output_dtypes = ["int64"]
    got = {p.label for p in plan.enumerate_plans({"dev": ints, "edge": edge}, roles, links, wires=wire.WIRES)}
    assert "dev[0] > edge[1-3]" in got and "dev[0] > edge[1-3] @int8" not in got and "dev[0-1] > edge[2-3] @int8" in got


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_a_run_sends_the_dtype_its_plan_chose(mini, dtype):
    seg = segments.load(mini, "mini", 3)
    k = max(i + 1 for i, c in enumerate(seg.cuts) if len(c.tensors) == 3)
    shapes = [c.shapes[0] for c in seg.cuts] + [(10,)]
    benches = {t: fake_bench(t, [1.0] * seg.n_blocks, shapes, 256, onnx_sha256=_sha(mini), max_tensors=3)
               for t in ("dev", "edge")}
    roles = {"dev": "device", "edge": "edge"}
    links = {frozenset(roles): plan.Link("dev", "edge", 0.0, 1000.0)}
    only = [plan.Constraint("split", lambda p: p.stages[0].stop == k and len(p.stages) == 2 and p.wire == dtype)]
    ranked = plan.best(plan.enumerate_plans(benches, roles, links, wires=wire.WIRES), only, 1)
    rec = replace(plan.record(ranked, benches, roles, links, only, False), input_shape=[3, 8, 8])
    got = offload.execute(mini, rec, rank=1, runs=2, warmup=1, allow_namespaces=False)
    assert got["wire"] == dtype
    # the answer is close to the whole model's but not bit-exact: the activations were rounded on the way
    assert 0 < got["max_abs_error"] <= (5e-3 if dtype == "fp16" else 0.1)


def test_cli_multi_tensor_cuts_and_wire_dtypes(tmp_path, mini):
    from test_partition import _bad, runner

    from edgeprune.cli import app

    path = tmp_path / "mini.onnx"
    path.write_bytes(mini)
    seg = segments.load(mini, "mini", 3)
    r = runner.invoke(app, ["partition", "cuts", str(path), "--max-tensors", "3"])
    assert r.exit_code == 0 and f"{len(seg.cuts)} cuts, {seg.n_blocks} blocks" in r.output, r.output
    r = runner.invoke(app, ["-q", "partition", "bench", str(path), "--tier", "dev", "--warmup", "1",
                            "--max-tensors", "3", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (tmp_path / "links.csv").write_text("dev,edge,20,1\n")
    edge = replace(bench.load(tmp_path / "bench-dev.json"), tier="edge")
    import json

    records.write(tmp_path / "bench-edge.json", edge)
    args = ["partition", "plan", str(tmp_path / "bench-dev.json"), str(tmp_path / "bench-edge.json"), "--network",
            str(tmp_path / "links.csv"), "-k", "50", "--out", str(tmp_path / "plan.json")]
    r = runner.invoke(app, [*args, "--wire", "fp32,int8"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "plan.json").read_text())
    assert rec["max_tensors"] == 3 and {p["wire"] for p in rec["plans"]} == {"fp32", "int8"}
    assert "--wire 'fp64': choose among fp32, fp16, int8" in _bad([*args, "--wire", "fp64"])
    zero = "--max-tensors must be an integer >= 1, got 0"
    assert zero in _bad(["partition", "cuts", str(path), "--max-tensors", "0"])
    assert zero in _bad(["partition", "bench", str(path), "--tier", "d", "--max-tensors", "0"])


def test_a_plugin_planner_plans_through_the_library_and_the_command(tmp_path, monkeypatch):
    """tests/plugin_planner.py is one file; naming it in $EDGEPRUNE_PLANNERS (or importing it) registers it."""
    from test_partition import _bad, runner

    from edgeprune.cli import app
    from edgeprune.partition import planners

    monkeypatch.setattr(planners, "_loaded", False)
    monkeypatch.setenv("EDGEPRUNE_PLANNERS", "plugin_planner")
    assert planners.names() == ["halves", "scission"]
    recs = [fake_bench("dev", [40, 30, 20, 10], SHAPES), fake_bench("edge", [4, 3, 2, 1], SHAPES)]
    links = {frozenset(("dev", "edge")): plan.Link("dev", "edge", 10.0, 8.0)}
    ranked, rec = plan.plan_model(recs, links, plan.Options(planner="halves", max_upload=["dev=1"]))
    assert [p.label for p in ranked] == ["dev[0-1] > edge[2-3]"] and rec.planner == "halves"
    for r in recs:
        records.write(tmp_path / f"bench-{r.tier}.json", r)
    (tmp_path / "links.csv").write_text("dev,edge,10,8\n")
    args = ["partition", "plan", str(tmp_path / "bench-dev.json"), str(tmp_path / "bench-edge.json"), "--network",
            str(tmp_path / "links.csv"), "--out", str(tmp_path / "plan.json")]
    r = runner.invoke(app, [*args, "--planner", "halves"])
    assert r.exit_code == 0, r.output
    got = records.read_plan(tmp_path / "plan.json")
    assert got.planner == "halves" and [p.label for p in got.plans] == ["dev[0-1] > edge[2-3]"]
    assert got.plans[0].total_ms == pytest.approx(ranked[0].total_ms)
    assert "--planner 'nope': no such planner; choose from halves, scission" in _bad([*args, "--planner", "nope"])


def test_committed_bench_records_and_an_old_plan_file_still_load(tmp_path):
    """Bench records of earlier versions (the committed benchmark results) and a plan file without the fields
    added since (wire, request and codec costs, planner) read as typed records and price as before."""
    import json
    from pathlib import Path

    results = Path(__file__).parents[1] / "benchmarks" / "results"
    slow = json.loads((results / "partition_slowdevice.json").read_text())["benches"]
    benches = {t: records.Bench.from_dict(b).calibrated() for t, b in slow.items()}
    assert benches["device"].request is None and benches["device"].max_tensors == 1
    link = {frozenset(("device", "edge")): plan.Link("device", "edge", 67.0, 8.0)}
    ranked = plan.best(plan.enumerate_plans(benches, {"device": "device", "edge": "edge"}, link), k=3)
    assert all(h.request_ms == 0 and h.codec_ms == 0 for p in ranked for h in p.hops)
    for m in json.loads((results / "partition.json").read_text())["models"]:
        assert all(records.Bench.from_dict(b).blocks for b in m["benches"].values())
    old = {"format": records.PLAN_FORMAT, "model": "m", "onnx_sha256": "abc", "input_shape": [1, 8, 8],
           "clock": "predicted", "tl": False,
           "tiers": {"dev": {"role": "device", "threads": 1, "device": {"cpu_quota": None}, "slowdown": None}},
           "links": [{"source": "dev", "destination": "edge", "rtt_ms": 5.0, "bandwidth_mbps": 8.0}],
           "constraints": [], "plans": [{"label": "dev[0] > edge[1]", "total_ms": 7.5, "tl": False,
                                         "stages": [{"tier": "dev", "role": "device", "first": 0, "stop": 1,
                                                     "compute_ms": 1.0},
                                                    {"tier": "edge", "role": "edge", "first": 1, "stop": 2,
                                                     "compute_ms": 0.5}],
                                         "hops": [{"source": "dev", "destination": "edge", "cut": 1, "bytes": 100,
                                                   "rtt_ms": 5.0, "transfer_ms": 1.0, "tl_ms": 0.0}]}]}
    (tmp_path / "plan.json").write_text(json.dumps(old))
    got = records.read_plan(tmp_path / "plan.json")
    assert got.planner == "scission" and got.max_tensors == 1 and got.plans[0].wire == "fp32"
    assert got.plans[0].label == "dev[0] > edge[1]" and got.plans[0].total_ms == 7.5
    assert got.link("edge", "dev").rtt_ms == 5.0
    with pytest.raises(ConfigError, match="no link between 'dev' and 'cloud'"):
        got.link("dev", "cloud")
