import pytest
import torch
from torch import nn

from edgeprune import export, jobs
from edgeprune.errors import ConfigError
from edgeprune.kinds import shrink
from edgeprune.train import TrainConfig

DATA = {"name": "synthetic", "shape": (1, 12, 12), "num_classes": 10, "size": 64, "batch_size": 32}


def _sparse_run(tmp_path, method):
    cfg = jobs.RunConfig(command="prune", model="conftest:small_vgg", data=DATA, train=TrainConfig(epochs=1, lr=0.05),
                         measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False), method=method)
    jobs.prune(cfg, tmp_path / "sparse", progress=False)
    return tmp_path / "sparse"


def _nonzero(model):
    return sum(int(m.weight.count_nonzero()) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shrink_makes_a_smaller_equivalent_run_and_leaves_the_source(tmp_path):
    source = _sparse_run(tmp_path, {"name": "magnitude", "sparsity": 0.97})
    before = _snapshot(source)
    report = jobs.run(shrink.config(source, fold_constants=False), tmp_path / "small", progress=False)
    assert _snapshot(source) == before
    assert report.vs_source["params_x_smaller"] > 1.0
    sparse, small = export.load_model(source / "model.pt"), export.load_model(tmp_path / "small" / "model.pt")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in sparse.parameters())
    x = torch.randn(8, 1, 12, 12)
    sparse.eval(), small.eval()
    with torch.no_grad():  # the dead channels dropped here carried no constant (ReLU cut it): nothing to fold
        err = float((sparse(x) - small(x)).abs().max())
    assert err < 1e-5 and report.details["max_abs_error"] < 1e-5
    # surviving weights stay; the only ones lost are those that read a removed (dead) channel. small_vgg is a
    # chain, so each conv/linear layer reads the output channels of the one before it.
    chain = [m for m in sparse.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    reading_dead = sum(int(consumer.weight[:, producer.weight.flatten(1).count_nonzero(1) == 0].count_nonzero())
                       for producer, consumer in zip(chain, chain[1:], strict=False))
    assert reading_dead > 0  # else this checks nothing
    assert _nonzero(small) == _nonzero(sparse) - reading_dead == report.profile.prunable_nonzero


def test_shrink_times_source_and_shrunk_model_side_by_side(tmp_path, monkeypatch):
    from edgeprune import timing

    source = _sparse_run(tmp_path, {"name": "magnitude", "sparsity": 0.97})
    timed = []
    real = timing.latency_onnx_interleaved

    def spy(models, *args, **kwargs):
        timed.append({name: path for name, (path, _) in models.items()})
        got = real(models, *args, **kwargs)
        timed.append(got)
        return got

    monkeypatch.setattr(timing, "latency_onnx_interleaved", spy)
    report = jobs.run(shrink.config(source), tmp_path / "small", progress=False)
    assert timed[0] == {"source": source / "model.onnx", "shrunk": tmp_path / "small" / "model.onnx"}
    v = report.vs_source
    assert v["ort_b1_timing"] == "side by side"
    assert v["ort_b1_speedup"] == pytest.approx(timed[1]["source"].p50_ms / timed[1]["shrunk"].p50_ms)
    (source / "model.onnx").unlink()  # without the source's ONNX file: the two runs' own profiles
    report = jobs.run(shrink.config(source), tmp_path / "small2", progress=False)
    assert report.vs_source["ort_b1_timing"] == "profiles" and len(timed) == 2
    assert report.vs_source["ort_b1_speedup"] == pytest.approx(
        jobs.load_profile(source).latency_of("onnxruntime", 1, 1).p50_ms
        / jobs.load_profile(tmp_path / "small2").latency_of("onnxruntime", 1, 1).p50_ms)


def test_shrink_of_an_imp_level_and_the_cli_message(tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    run = _sparse_run(tmp_path, {"name": "imp", "levels": 1, "fraction": 0.9})
    result = CliRunner().invoke(app, ["-q", "shrink", str(run / "level_01"), "--name", "l1", "--measure-runs", "2"])
    assert result.exit_code == 0, result.output
    assert "largest output difference" in result.output and (run / "l1" / "model.onnx").exists()


def test_a_run_without_masks_is_refused(tmp_path):
    cfg = jobs.RunConfig(command="train", model="conftest:small_vgg", data=DATA, train=TrainConfig(epochs=1),
                         measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False))
    jobs.train(cfg, tmp_path / "dense", progress=False)
    with pytest.raises(ConfigError, match="masks.pt"):
        jobs.run(shrink.config(tmp_path / "dense"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_shrinking_a_whole_imp_run_makes_one_run_per_level_paired_in_the_report(tmp_path):
    from typer.testing import CliRunner

    from edgeprune import report
    from edgeprune.cli import app

    run = _sparse_run(tmp_path, {"name": "imp", "levels": 2, "fraction": 0.8})
    result = CliRunner().invoke(app, ["-q", "shrink", str(run), "--runs-dir", str(tmp_path / "out"),
                                      "--measure-runs", "2"])
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made == ["sparse-shrunk-level_01", "sparse-shrunk-level_02"]  # level 0 is dense: nothing to shrink
    ps = report.pairs(report.collect([tmp_path / "sparse", tmp_path / "out"]))
    assert {(p.run.name, p.counterpart.name) for p in ps} == {
        ("sparse-shrunk-level_01", "sparse/level_01"), ("sparse-shrunk-level_02", "sparse/level_02")}
    assert all(p.params_x >= 1 for p in ps)
