"""INT8 runs made by ONNX Runtime's quantisation tools, and accuracy measured on the ONNX artifact."""

import gzip
import json
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import small_vgg
from onnx import numpy_helper
from typer.testing import CliRunner

from edgeprune import data, export, jobs, measure, models, quantization, saved
from edgeprune.cli import app
from edgeprune.kinds import quantize as int8
from edgeprune.train import evaluate

runner = CliRunner()
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
SHAPE = (1, 28, 28)


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small conv net trained for one epoch on 3,000 Fashion-MNIST images: a model whose accuracy means something."""
    runs_dir = tmp_path_factory.mktemp("runs")
    result = _invoke("-q", "train", "-m", "conftest:small_vgg", "-d", "fashion-mnist", "--subset", 3000,
                     "--test-subset", 1000, "-e", 1, "-b", 32, "--lr", 0.05, "--measure-runs", 3,
                     "--runs-dir", runs_dir, "--name", "fp32")
    assert result.exit_code == 0, result.output
    return runs_dir / "fp32"


def _accuracy(run: Path, runtime: str) -> float:
    result = _invoke("-q", "eval", run, "--runtime", runtime)
    assert result.exit_code == 0, result.output
    assert f"1000 test samples, {runtime}" in result.output
    return saved.accuracy(run, runtime=runtime)["accuracy"]


@needs_fashion
def test_fp32_onnx_accuracy_matches_pytorch(trained):
    torch_acc, ort_acc = _accuracy(trained, "torch"), _accuracy(trained, "onnxruntime")
    assert torch_acc > 0.5  # trained: far above the 10 % of chance
    assert abs(torch_acc - ort_acc) <= 0.002  # at most 2 of the 1,000 test images change their top-1 class
    report = json.loads((trained / "report.json").read_text())
    assert report["profile"]["accuracy_runtime"] == "torch"
    assert report["profile"]["bytes_onnx"] == (trained / "model.onnx").stat().st_size


def test_onnx_evaluation_is_that_of_the_pytorch_model(tiny):
    x, y = torch.randn(40, 1, 12, 12), torch.randint(0, 3, (40,))
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    ours = measure.evaluate_onnx(export.to_onnx_bytes(tiny, (1, 12, 12)), loader)
    ref = evaluate(tiny, loader)
    assert ours["samples"] == ref["samples"] == 40
    assert ours["accuracy"] == ref["accuracy"]
    assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-4)


def _weight_scales(model_bytes: bytes) -> list[np.ndarray]:
    """The scales of the DequantizeLinear nodes that read a constant INT8 weight (QDQ format)."""
    graph = onnx.load_from_string(model_bytes).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [consts[n.input[1]] for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].dtype == np.int8
            and consts[n.input[0]].ndim == 4]


@pytest.mark.parametrize("per_channel", [False, True])
def test_static_quantisation_is_qdq_with_per_channel_scales_on_request(per_channel):
    torch.manual_seed(0)
    model = small_vgg(10, 1).eval()
    fp32 = export.to_onnx_bytes(model, SHAPE)
    calibration = [np.random.default_rng(i).standard_normal((8, *SHAPE), dtype=np.float32) for i in range(2)]
    int8 = quantization.quantize_onnx(fp32, "static", calibration, per_channel=per_channel, format="qdq")
    assert export.precision_of(int8) == "int8" and export.precision_of(fp32) == "fp32"
    scales = _weight_scales(int8)
    assert len(scales) == 4  # every conv's weight is stored as INT8
    widths = [16, 32, 32, 64]
    assert [s.size for s in scales] == (widths if per_channel else [1] * 4)
    assert len(int8) < len(fp32) / 2.5  # INT8 weights; scales, zero points and the graph take the rest
    graph = onnx.load_from_string(int8).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    activations = {consts[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}
    assert activations == {np.dtype(np.uint8)}  # U8S8: what ONNX Runtime's integer kernels take natively on x86-64


def _activation_types(model_bytes: bytes) -> set:
    graph = onnx.load_from_string(model_bytes).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {consts[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}


def test_auto_format_times_the_candidates_and_keeps_the_fastest_that_agrees():
    torch.manual_seed(0)
    fp32 = export.to_onnx_bytes(small_vgg(10, 1).eval(), SHAPE)
    calibration = [np.random.default_rng(i).standard_normal((8, *SHAPE), dtype=np.float32) for i in range(2)]
    int8, record = quantization.quantize(fp32, "static", calibration)
    candidates = {c["candidate"]: c for c in record["candidates"]}
    assert set(candidates) == {"QDQ U8S8 per-tensor", "QDQ U8S8 per-channel", "QDQ S8S8 per-tensor",
                               "QDQ S8S8 per-channel", "QOperator U8S8 per-tensor", "QOperator U8S8 per-channel"}
    assert all(c["ort_b1_t1_p50_ms"] > 0 and 0 <= c["top1_agreement_with_fp32"] <= 1 for c in candidates.values())
    best = max(c["top1_agreement_with_fp32"] for c in candidates.values())
    eligible = [c for c in candidates.values() if c["top1_agreement_with_fp32"] >= best - record["tolerance"]]
    fastest = min(eligible, key=lambda c: c["ort_b1_t1_p50_ms"])
    established = candidates["QDQ U8S8 per-channel"]
    tie = (established in eligible and established is not fastest
           and established["ort_b1_t1_p50_ms"] <= (1 + quantization.TIE) * fastest["ort_b1_t1_p50_ms"])
    # the fastest that agrees, unless the established format times within TIE of it: a tie goes to it, and says so
    assert candidates[record["chosen"]] is (established if tie else fastest)
    assert record["chosen_by"] == ("auto (a tie within 5% of the fastest goes to QDQ U8S8 per-channel)" if tie
                                   else "auto")
    assert record["agreement_images"] == 16 and record["cpu"] == quantization.cpu_features()
    # the bytes returned are the chosen format's: its activations' type, its operators, its scales
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert ("QLinearConv" in ops) == (record["format"] == "QOperator")
    if record["format"] == "QDQ":
        assert _activation_types(int8) == {np.dtype(np.uint8 if record["activations"] == "uint8" else np.int8)}
        assert [s.size for s in _weight_scales(int8)] == ([16, 32, 32, 64] if record["per_channel"] else [1] * 4)
    # and equal to asking for that format outright (one calibration, repeatable)
    again = quantization.quantize_onnx(fp32, "static", calibration, per_channel=record["per_channel"],
                                 activations=record["activations"], format=record["format"].lower())
    assert again == int8


def test_auto_format_keeps_what_the_caller_fixes():
    torch.manual_seed(0)
    fp32 = export.to_onnx_bytes(small_vgg(10, 1).eval(), SHAPE)
    calibration = [np.random.default_rng(0).standard_normal((4, *SHAPE), dtype=np.float32)]
    _, record = quantization.quantize(fp32, "static", calibration, per_channel=True, activations="int8")
    assert record == {"format": "QDQ", "activations": "int8", "per_channel": True, "chosen_by": "only candidate"}
    int8, record = quantization.quantize(fp32, "static", calibration, per_channel=False)
    assert {c["candidate"] for c in record["candidates"]} == {"QDQ U8S8 per-tensor", "QDQ S8S8 per-tensor",
                                                              "QOperator U8S8 per-tensor"}
    assert record["per_channel"] is False
    with pytest.raises(export.ExportError, match="unknown INT8 format 'qop'.*auto, qdq, qoperator"):
        quantization.quantize(fp32, "static", calibration, format="qop")


def test_cpu_features_are_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n")
    features = quantization.cpu_features(info)
    assert features["flags"] == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False,
                                 "amx_int8": False}
    assert features["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert quantization.cpu_features(tmp_path / "missing")["flags"] == {}


def test_dynamic_quantisation_needs_no_calibration_and_runs():
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=10, in_channels=1).eval()
    int8 = quantization.quantize_onnx(export.to_onnx_bytes(model, SHAPE), "dynamic")
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert "DynamicQuantizeLinear" in ops
    x = torch.randn(4, *SHAPE)
    sess = export.ort_session(int8)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape and np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


@needs_fashion
def test_quantize_makes_a_new_int8_run_and_leaves_the_source_untouched(trained):
    before = _tree(trained)
    result = _invoke("-q", "quantize", trained, "--calibration", 200, "--per-channel", "--measure-runs", 3,
                     "--name", "static")
    assert result.exit_code == 0, result.output
    assert _tree(trained) == before
    run = trained.parent / "static"
    assert {p.name for p in run.iterdir()} == {"config.json", "model.onnx", "report.json"}
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == "quantize"
    assert config["method"] == {"name": "quantize", "source": str(trained), "mode": "static", "per_channel": True,
                                "calibration": 200}
    onnx_bytes = (run / "model.onnx").read_bytes()
    assert export.precision_of(onnx_bytes) == "int8"
    report = json.loads((run / "report.json").read_text())
    p, v = report["profile"], report["vs_source"]
    assert (p["precision"], p["accuracy_runtime"], report["source"]) == ("int8", "onnxruntime", str(trained))
    assert (p["bytes_onnx"], p["bytes_onnx_gzip"]) == (len(onnx_bytes), len(gzip.compress(onnx_bytes, 6)))
    assert {t["runtime"] for t in p["latency"]} == {"onnxruntime"}
    assert p["accuracy"] == _accuracy(run, "onnxruntime")  # the figure recorded is the artifact's own
    assert v["accuracy_source_onnxruntime"] == _accuracy(trained, "onnxruntime")
    assert v["accuracy_delta_pts"] == pytest.approx(100 * (p["accuracy"] - v["accuracy_source_onnxruntime"]))
    assert abs(v["accuracy_delta_pts"]) <= 1.0
    assert v["bytes_onnx_x_smaller"] == pytest.approx((trained / "model.onnx").stat().st_size / len(onnx_bytes))
    assert v["bytes_onnx_x_smaller"] > 3
    assert report["quantization"]["tool"] == "onnxruntime.quantization"
    chosen = report["quantization"]  # --per-channel fixes that; the rest was chosen by timing, and recorded
    assert chosen["per_channel"] is True and chosen["chosen_by"].startswith("auto") and chosen["cpu"]["flags"]
    assert {c["candidate"] for c in chosen["candidates"]} == {"QDQ U8S8 per-channel", "QDQ S8S8 per-channel",
                                                              "QOperator U8S8 per-channel"}
    # calibration is repeatable: the recorded format, asked for outright, gives the same bytes
    bundle = data.loaders(**{**jobs.source_config(trained).data, "augment": False})
    assert quantization.quantize_onnx(trained / "model.onnx", "static", int8.first_images(bundle.train, 200),
                                per_channel=True, activations=chosen["activations"],
                                format=chosen["format"].lower()) == onnx_bytes


@pytest.fixture
def synthetic_run(tmp_path):
    result = _invoke("-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", 1, "--measure-runs", 2, "-b", 64,
                     "--runs-dir", tmp_path, "--name", "r")
    assert result.exit_code == 0, result.output
    return tmp_path / "r"


def test_dynamic_quantize_of_a_synthetic_run_has_no_accuracy(synthetic_run):
    result = _invoke("-q", "quantize", synthetic_run, "--mode", "dynamic", "--measure-runs", 2)
    assert result.exit_code == 0, result.output
    report = json.loads((synthetic_run.parent / "r-int8" / "report.json").read_text())
    assert report["profile"]["precision"] == "int8" and report["profile"]["accuracy"] is None
    assert report["quantization"]["mode"] == "dynamic"
    assert report["quantization"]["calibration_images"] is None


def test_measure_an_int8_run_times_its_onnx_model(synthetic_run, tmp_path):
    assert _invoke("-q", "quantize", synthetic_run, "--calibration", 16, "--measure-runs", 2,
                   "--name", "m-int8", "--overwrite").exit_code == 0
    int8 = synthetic_run.parent / "m-int8"
    result = _invoke("measure", int8, "-b", "1", "-b", "2", "--runs", "3", "--warmup", "1",
                     "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    prof = json.loads((tmp_path / "p.json").read_text())
    assert [(t["runtime"], t["batch_size"]) for t in prof["latency"]] == [("onnxruntime", 1), ("onnxruntime", 2)]
    assert prof["precision"] == "int8" and prof["bytes_onnx"] == (int8 / "model.onnx").stat().st_size
    result = _invoke("measure", int8, "--runtime", "torch")
    assert result.exit_code == 2 and "has no PyTorch model" in result.output
    assert "--runtime onnxruntime" in result.output


def _no_onnx(run: Path) -> Path:
    copy = run.parent / "no-onnx"
    shutil.copytree(run, copy)
    (copy / "model.onnx").unlink()
    return copy


@pytest.mark.parametrize(("make_source", "args", "message"), [
    (lambda r: r, ["--calibration", 0], "--calibration 0"),
    (lambda r: r, ["--calibration", 100000], "--calibration 100000 is more than the 512 training images"),
    (lambda r: r, ["--mode", "dynamic", "--calibration", 8], "--calibration applies to --mode static only"),
    (lambda r: r, ["--mode", "int4"], "--mode 'int4'"),
    (_no_onnx, [], "has no model.onnx to quantise"),
    (lambda r: r, ["--name", "r"], "choose a --name other than the source"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(synthetic_run, make_source, args, message):
    source = make_source(synthetic_run)
    before = _tree(synthetic_run.parent)
    result = _invoke("quantize", source, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert _tree(synthetic_run.parent) == before


def test_quantising_an_int8_run_again_is_refused(synthetic_run):
    assert _invoke("-q", "quantize", synthetic_run, "--calibration", 16, "--measure-runs", 2).exit_code == 0
    before = _tree(synthetic_run.parent)
    result = _invoke("quantize", synthetic_run.parent / "r-int8", "--name", "twice")
    assert result.exit_code == 2
    assert "already quantised" in result.output and f"source {synthetic_run}" in " ".join(result.output.split())
    assert _tree(synthetic_run.parent) == before


def test_an_interrupted_quantize_leaves_nothing_behind(synthetic_run, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantization, "quantize", interrupted)
    before = _tree(synthetic_run.parent)
    result = _invoke("quantize", synthetic_run, "--calibration", 16)
    assert result.exit_code == 130
    assert _tree(synthetic_run.parent) == before
    assert not (synthetic_run.parent / "r-int8").exists()


def test_train_with_quantize_int8_makes_both_runs(tmp_path):
    result = _invoke("-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", 1, "--measure-runs", 2, "-b", 64,
                     "--runs-dir", tmp_path, "--name", "r", "--quantize", "int8")
    assert result.exit_code == 0, result.output
    fp32 = json.loads((tmp_path / "r" / "report.json").read_text())["profile"]
    int8 = json.loads((tmp_path / "r-int8" / "report.json").read_text())
    assert (fp32["precision"], int8["profile"]["precision"]) == ("fp32", "int8")
    assert int8["source"] == str(tmp_path / "r")
    assert export.precision_of(tmp_path / "r-int8" / "model.onnx") == "int8"


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--quantize", "int4"], "--quantize 'int4'"),
    (["prune", "--method", "imp", "--quantize", "int8"], "quantise the levels you want"),
])
def test_quantize_flag_is_checked_before_any_work(tmp_path, args, message):
    result = _invoke(*args, "-m", "lenet5", "-d", "synthetic", "--runs-dir", tmp_path)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())


def test_auto_format_gives_a_tie_to_the_established_format(monkeypatch):
    """Timings within TIE of the fastest are noise: the established QDQ U8S8 per-channel is kept, and beyond it the
    fastest wins."""
    torch.manual_seed(0)
    fp32 = export.to_onnx_bytes(small_vgg(10, 1).eval(), SHAPE)
    calibration = [np.random.default_rng(0).standard_normal((4, *SHAPE), dtype=np.float32)]

    def timed_as(ms: dict):
        def fake(models, *args, **kwargs):  # the timing replaced, the candidates still made and compared for real
            return {k: types.SimpleNamespace(p50_ms=ms.get(k, 2.0)) for k in models}
        return fake

    monkeypatch.setattr(quantization, "_agreement", lambda fp32, int8, batches: dict.fromkeys(int8, 1.0))
    near = {"QDQ S8S8 per-tensor": 1.00, "QDQ U8S8 per-channel": 1.04}
    monkeypatch.setattr(quantization, "latency_onnx_interleaved", timed_as(near))
    int8, record = quantization.quantize(fp32, "static", calibration)
    assert record["chosen"] == "QDQ U8S8 per-channel" and "tie within 5%" in record["chosen_by"]
    assert (record["format"], record["activations"], record["per_channel"]) == ("QDQ", "uint8", True)
    assert int8 == quantization.quantize_onnx(fp32, "static", calibration, per_channel=True, activations="uint8",
                                              format="qdq")  # the bytes are the established format's
    far = {"QDQ S8S8 per-tensor": 1.00, "QDQ U8S8 per-channel": 1.10}
    monkeypatch.setattr(quantization, "latency_onnx_interleaved", timed_as(far))
    _, record = quantization.quantize(fp32, "static", calibration)
    assert record["chosen"] == "QDQ S8S8 per-tensor" and record["chosen_by"] == "auto"
