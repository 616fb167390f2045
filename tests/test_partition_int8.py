"""INT8 graphs bench and plan (issue 30, item 2): a quantised model (made by edgeprune's quantization.py, QDQ and
QOperator) is cut, timed, planned and run across processes like an fp32 one. Its cuts carry float tensors or
quantised (uint8) ones; a uint8 tensor travels as it is, so head then tail gives exactly the uncut INT8 model's
answer (max |difference| <= 1e-6 asserted; 0 measured)."""

import numpy as np
import pytest
import torch
from conftest import randomize_bn, small_vgg
from test_partition import TWO, _bad, runner

from edgeprune import segments
from edgeprune.cli import app
from edgeprune.errors import ConfigError
from edgeprune.export import ort_session, precision_of, to_onnx_bytes
from edgeprune.partition import bench, offload, plan, wire
from edgeprune.quantization import quantize_onnx

EXACT = 1e-6


@pytest.fixture(scope="module", params=["qdq", "qoperator"])
def int8(request) -> bytes:
    torch.manual_seed(0)
    data = to_onnx_bytes(randomize_bn(small_vgg()).eval(), (1, 8, 8))
    calibration = [np.random.default_rng(i).standard_normal((4, 1, 8, 8)).astype(np.float32) for i in range(4)]
    q = quantize_onnx(data, "static", calibration, per_channel=False, activations="uint8", format=request.param)
    assert precision_of(q) == "int8"
    return q


def test_every_cut_of_an_int8_graph_recomposes_to_the_uncut_models_answer(int8):
    seg = segments.load(int8, "q")
    assert any(c.itemsize == 1 for c in seg.cuts)  # quantised activations cross some cuts
    x = np.random.default_rng(5).standard_normal((1, 1, 8, 8)).astype(np.float32)
    ref = ort_session(int8).run(None, {seg.input: x})[0]
    for i in range(1, seg.n_blocks):
        head = ort_session(seg.span(0, i).SerializeToString())
        tail = ort_session(seg.span(i, seg.n_blocks).SerializeToString())
        mid = head.run(None, {seg.input: x})
        out = tail.run(None, dict(zip(seg.boundaries(i), mid, strict=True)))[0]
        assert np.abs(out - ref).max() <= EXACT, (i, seg.cuts[i - 1].op)


def test_an_int8_graph_benches_and_plans(int8):
    rec = bench.run(int8, "q", "edge", runs=30, warmup=1)
    quantised = [b for b in rec.blocks[:-1] if b.output_dtypes == ["uint8"]]
    assert quantised and all(b.tl is None for b in quantised)  # the transfer layer pools float maps only
    assert all(b.output_bytes == int(np.prod(b.output_shape)) for b in quantised)  # one byte a value
    dev = bench.run(int8, "q", "dev", runs=30, warmup=1)
    links = {frozenset(("dev", "edge")): plan.Link("dev", "edge", 1.0, 8.0)}
    ranked, written = plan.plan_model([dev, rec], links, plan.Options(top=1000, wires=wire.WIRES))
    for p in ranked:
        for h in p.hops:
            if h.cut and rec.blocks[h.cut - 1].output_dtypes == ["uint8"]:
                assert p.wire == "fp32" and h.bytes == rec.blocks[h.cut - 1].output_bytes  # sent as it is
    cut = next(b.index + 1 for b in quantised if b.output_shape and len(b.output_shape) == 3)
    with pytest.raises(ConfigError, match=r"is uint8, an INT8 graph's quantised activation; the transfer layer"):
        plan.plan_model([dev, rec], links, plan.Options(split=cut, tl=True))


def test_an_int8_graph_split_at_a_quantised_cut_runs_across_processes(int8):
    seg = segments.load(int8, "q")
    k = next(i for i, c in enumerate(seg.cuts, 1) if c.itemsize == 1 and i > 1)
    from test_partition import _record

    only = [plan.Constraint(f"--split {k}", lambda p: p.stages[0].stop == k and len(p.stages) == 2)]
    rec = _record(int8, TWO, constraints=only)
    got = offload.execute(int8, rec, rank=1, runs=2, warmup=0, allow_namespaces=False)
    assert got["max_abs_error"] <= EXACT


def test_quantised_tensors_travel_as_they_are():
    arrays = [np.arange(12, dtype=np.uint8).reshape(1, 3, 4), np.ones((1, 2), np.float32)]
    body, headers = wire.encode(arrays)
    assert headers["x-elem"] == "uint8;float32" and len(body) == 12 + 8
    back = wire.decode(body, headers["x-shape"], "fp32", "", headers["x-elem"])
    assert [b.dtype for b in back] == [np.uint8, np.float32]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    assert "x-elem" not in wire.encode(arrays[1:])[1]  # an fp32-only body is as before
    with pytest.raises(ValueError, match="a uint8 tensor cannot travel as fp16"):
        wire.encode(arrays, "fp16")


def test_the_commands_take_an_int8_model(tmp_path, int8):
    path = tmp_path / "q.onnx"
    path.write_bytes(int8)
    r = runner.invoke(app, ["partition", "cuts", str(path)])
    assert r.exit_code == 0 and f"{len(segments.load(int8).cuts)} cuts" in r.output, r.output
    r = runner.invoke(app, ["-q", "partition", "bench", str(path), "--tier", "dev", "--warmup", "1", "--out",
                            str(tmp_path)])
    assert r.exit_code == 0, r.output
    (tmp_path / "links.csv").write_text("dev,edge,1,8\n")
    seg = segments.load(int8)
    k = next(i for i, c in enumerate(seg.cuts, 1) if c.itemsize == 1 and len(c.shape) == 3)
    line = _bad(["partition", "plan", str(tmp_path / "bench-dev.json"), "--network", str(tmp_path / "links.csv"),
                 "--split", str(k), "--tl", "--out", str(tmp_path / "p.json")])
    assert "is uint8, an INT8 graph's quantised activation" in line
