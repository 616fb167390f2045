import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from edgeprune import portfolio
from edgeprune.cli import app
from edgeprune.export import to_onnx
from edgeprune.portfolio import PortfolioError

runner = CliRunner()
# Real data (a small slice of Fashion-MNIST), so every run has an accuracy to choose by.
COMMON = ["-m", "conftest:small_vgg", "-d", "fashion-mnist", "--subset", "128", "--test-subset", "64", "-e", "1",
          "-b", "64", "--measure-runs", "2"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def variant_runs(tmp_path_factory):
    """A dense run and two Reconvene runs of it, made by the ordinary commands."""
    root = tmp_path_factory.mktemp("runs")
    for args in (["train", "--name", "dense"],
                 ["prune", "--method", "reconvene", "--criterion", "magnitude", "--sparsity", "0.7", "--name", "r70"],
                 ["prune", "--method", "reconvene", "--criterion", "magnitude", "--sparsity", "0.95", "--name", "r95"]):
        result = _invoke("-q", *args, *COMMON, "--runs-dir", root)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def portfolio_dir(variant_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pf") / "pf"
    portfolio.build([variant_runs / n for n in ("dense", "r70", "r95")], out, keep_all=True, rounds=2, runs=3)
    return out


def test_build_writes_a_verified_manifest_with_every_variant(portfolio_dir, variant_runs):
    m = portfolio.load(portfolio_dir)
    assert sorted(m.ids) == ["dense", "r70", "r95"]
    assert (m.input_shape, m.datatype, m.classes, m.data) == ([1, 28, 28], "FP32", 10, "fashion-mnist")
    assert [v.p50_ms for v in m.variants] == sorted(v.p50_ms for v in m.variants)  # fastest first
    for v in m.variants:
        report = json.loads((variant_runs / v.id / "report.json").read_text())
        assert v.accuracy == report["profile"]["accuracy"]
        assert v.params == report["profile"]["params"]
        assert v.sha256 == portfolio.sha256(portfolio_dir / v.onnx)
        assert v.bytes == (portfolio_dir / v.onnx).stat().st_size
        assert (portfolio_dir / v.onnx).read_bytes() == (variant_runs / v.id / "model.onnx").read_bytes()
        assert 0 < v.p50_ms <= v.p90_ms
    assert m.variant("r95").params < m.variant("r70").params < m.variant("dense").params


def test_without_keep_all_only_the_pareto_front_stays(variant_runs, tmp_path):
    m = portfolio.build([variant_runs], tmp_path / "front", rounds=2, runs=3)
    kept = {v.id: v for v in m.variants}
    assert len(kept) + len(m.dropped) == 3 and kept
    for d in m.dropped:
        assert not (tmp_path / "front" / f"{d['id']}.onnx").exists()
        by = kept[d["why"].split("Pareto-dominated by ")[1].split(":")[0]]
        assert by.p50_ms <= d["p50_ms"] and by.accuracy >= d["accuracy"]
    for a in kept.values():  # no kept variant is beaten on both axes by another kept one
        assert not any(b.p50_ms < a.p50_ms and b.accuracy > a.accuracy for b in kept.values())


def _copy(portfolio_dir, tmp_path):
    return shutil.copytree(portfolio_dir, tmp_path / "copy")


def test_corrupt_onnx_is_refused_naming_the_file(portfolio_dir, tmp_path):
    pf = _copy(portfolio_dir, tmp_path)
    f = pf / "r70.onnx"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(PortfolioError, match=r"variant r70: .*r70\.onnx does not match its sha256"):
        portfolio.load(pf)


def test_missing_onnx_is_refused_naming_the_file(portfolio_dir, tmp_path):
    pf = _copy(portfolio_dir, tmp_path)
    (pf / "dense.onnx").unlink()
    with pytest.raises(PortfolioError, match=r"variant dense: .*dense\.onnx is missing"):
        portfolio.load(pf)


def test_a_variant_with_another_input_shape_is_refused(portfolio_dir, tmp_path, tiny):
    pf = _copy(portfolio_dir, tmp_path)
    to_onnx(tiny, pf / "r70.onnx", (1, 8, 8))  # a model of 1x8x8 images where 1x28x28 is served
    manifest = json.loads((pf / "portfolio.json").read_text())
    for v in manifest["variants"]:
        if v["id"] == "r70":
            v["sha256"] = portfolio.sha256(pf / "r70.onnx")
    (pf / "portfolio.json").write_text(json.dumps(manifest))
    with pytest.raises(PortfolioError, match=r"variant r70: .*r70\.onnx takes input 'input' FP32 \[1, 8, 8\] with 3 "
                                             r"classes, but the portfolio serves 'input' FP32 \[1, 28, 28\] with 10"):
        portfolio.load(pf)


def test_runs_of_other_shapes_or_without_accuracy_are_refused(variant_runs, tmp_path):
    result = _invoke("-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--measure-runs", "2",
                     "--runs-dir", tmp_path, "--name", "syn")
    assert result.exit_code == 0, result.output
    with pytest.raises(PortfolioError, match="syn has no measured accuracy"):
        portfolio.build([variant_runs / "dense", tmp_path / "syn"], tmp_path / "pf")
    other = shutil.copytree(variant_runs / "r70", tmp_path / "other")
    torch.manual_seed(0)
    to_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), other / "model.onnx",
            (3, 32, 32))
    with pytest.raises(PortfolioError, match=r"other has input shape \[3, 32, 32\], but .*dense has \[1, 28, 28\]"):
        portfolio.build([variant_runs / "dense", other], tmp_path / "pf")


def test_a_variant_in_both_precisions(variant_runs, tmp_path):
    """An INT8 run joins beside its fp32 source: ONNX only, chosen by the accuracy of its INT8 artifact; served
    by the ONNX switch modes, refused by the masks mode (which switches PyTorch weights) with what to use."""
    from edgeprune.serve.sessions import Sessions

    result = _invoke("-q", "quantize", variant_runs / "r70", "--calibration", 32, "--measure-runs", 2,
                     "--runs-dir", tmp_path / "q")
    assert result.exit_code == 0, result.output
    m = portfolio.build([variant_runs / "r70", tmp_path / "q" / "r70-int8"], tmp_path / "pf", keep_all=True,
                        rounds=1, runs=2)
    fp32, int8 = m.variant("r70"), m.variant("r70-int8")
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert int8.model_file is None and not (tmp_path / "pf" / "r70-int8.pt").exists()
    report = json.loads((tmp_path / "q" / "r70-int8" / "report.json").read_text())
    assert int8.accuracy == report["profile"]["accuracy"] and report["profile"]["accuracy_runtime"] == "onnxruntime"
    assert int8.params == fp32.params and int8.bytes < fp32.bytes / 2
    assert portfolio.load(tmp_path / "pf").variant("r70-int8").precision == "int8"
    sessions = Sessions(tmp_path / "pf", m, mode="preloaded", warmup=1)
    assert sorted(sessions.loaded()) == ["r70", "r70-int8"]
    with pytest.raises(PortfolioError, match="variant r70-int8 is INT8.*use --switch preloaded or reload"):
        Sessions(tmp_path / "pf", m, mode="masks")
    result = _invoke("portfolio", "show", tmp_path / "pf")
    assert result.exit_code == 0 and "int8" in result.output


def test_cli_build_and_show(variant_runs, tmp_path):
    result = _invoke("-q", "portfolio", "build", variant_runs / "dense", variant_runs / "r95", "--out", tmp_path / "p",
                     "--keep-all", "--rounds", "1", "--runs", "2")
    assert result.exit_code == 0, result.output
    assert "dense" in result.output and "r95" in result.output
    result = _invoke("portfolio", "show", tmp_path / "p")
    assert result.exit_code == 0 and "verified" in result.output
    (tmp_path / "p" / "r95.onnx").write_bytes(b"junk")
    result = _invoke("portfolio", "show", tmp_path / "p")
    assert result.exit_code == 2
    assert "r95.onnx does not match its sha256" in result.output
    result = _invoke("portfolio", "build", variant_runs / "dense", "--out", tmp_path / "p")
    assert result.exit_code == 2 and "--overwrite" in result.output


@pytest.mark.parametrize("command", [["portfolio", "build"], ["portfolio", "show"], ["serve"]])
def test_help_has_an_example(command):
    result = _invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_python_m_edgeprune_cli_has_the_command_modules():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeprune.cli", "portfolio", "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "build" in done.stdout and "show" in done.stdout


def test_the_cli_imports_neither_torch_nor_the_server_for_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, edgeprune.cli; "
                          "print(sorted(m for m in ('torch', 'fastapi', 'onnxruntime') if m in sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
