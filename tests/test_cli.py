"""The CLI as a user meets it: files written, exit codes, one-line errors, nothing of theirs changed."""

import json
import traceback

import pytest
import torch
from typer.testing import CliRunner

from edgeprune import export
from edgeprune.cli import app
from edgeprune.errors import UnknownNameError

runner = CliRunner()
# LeNet-5 on synthetic 1×28×28 data: the cheapest full run (train, save, export, measure).
TRAIN = ["-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--measure-runs", "2", "-b", "64"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def run(tmp_path):
    result = _invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "r")
    assert result.exit_code == 0, result.output
    return tmp_path / "r"


def test_train_writes_a_complete_run(run):
    assert {p.name for p in run.iterdir()} >= {"config.json", "model.pt", "model.onnx", "report.json",
                                               "log.jsonl", "checkpoint.pt"}
    report = json.loads((run / "report.json").read_text())
    assert report["synthetic_data"] is True
    assert report["profile"]["accuracy"] is None  # synthetic data never yields an accuracy
    assert report["profile"]["params"] == sum(p.numel() for p in export.load_model(run / "model.pt").parameters())
    assert {t["runtime"] for t in report["profile"]["latency"]} == {"onnxruntime", "torch"}


def test_precision_reaches_the_run_config_and_a_bad_one_is_one_line(tmp_path):
    result = _invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "bf", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["train"]["precision"] == "bf16"
    result = _invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "bad", "--precision", "fp16")
    assert result.exit_code == 2
    assert "unknown training precision 'fp16'; choose from ['fp32', 'bf16']" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    # NeuroFlux's block-wise training has its own loop, in fp32: refused before any work, not silently ignored
    result = _invoke("-q", "neuroflux", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--memory-budget", "64MiB",
                     "--precision", "bf16", "--runs-dir", tmp_path, "--name", "nf")
    assert result.exit_code == 2 and "does not apply to neuroflux" in result.output, result.output
    assert not (tmp_path / "nf").exists()


def test_existing_run_is_refused_and_untouched(run):
    before = _snapshot(run)
    result = _invoke(*TRAIN, "--runs-dir", run.parent, "--name", "r")
    assert result.exit_code == 2
    assert "already exists" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(run) == before


def test_rerun_repeats_the_run_exactly(run):
    result = _invoke("-q", "rerun", run, "--name", "again", "--runs-dir", run.parent)
    assert result.exit_code == 0, result.output
    a = export.load_model(run / "model.pt").state_dict()
    b = export.load_model(run.parent / "again" / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_measure_and_export_a_saved_run(run, tmp_path):
    result = _invoke("measure", run, "-b", "1", "-b", "4", "--runs", "3", "--warmup", "1", "--runtime",
                     "onnxruntime", "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert "onnxruntime p50, batch 4" in result.output
    assert len(json.loads((tmp_path / "p.json").read_text())["latency"]) == 2
    result = _invoke("export", run, "--onnx", tmp_path / "m.onnx")
    assert result.exit_code == 0 and (tmp_path / "m.onnx").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "-m", "resnet21", "-d", "synthetic"], "'resnet20'"),
        (["train", "-m", "lenet5", "-d", "fashion-mnst"], "fashion-mnist"),
        (["train", "-m", "lenet5", "-d", "synthetic", "-b", "0"], "batch"),
        (["train", "-m", "lenet5", "-d", "mnist", "--data-root", "/nonexistent/dir"], "/nonexistent/dir"),
        (["train", "-m", "lenet5", "-d", "synthetic", "--num-classes", "7"], "--num-classes 7"),
        (["train", "-m", "lenet5", "-d", "synthetic", "--in-channels", "1"], "--in-channels 1"),
        (["train", "-m", "lenet5", "-d", "synthetic", "--resume"], "cannot resume"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, message):
    result = _invoke("-q", *args, "--runs-dir", tmp_path, "--name", "bad")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_corrupt_model_is_a_clear_error(run):
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:300])
    result = _invoke("eval", run)
    assert result.exit_code == 2 and "corrupt or truncated" in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = _invoke("--debug", "train", "-m", "resnet21", "-d", "synthetic", "--runs-dir", tmp_path)
    # Without --debug the error becomes SystemExit(2), which the runner records as an exception too.
    assert isinstance(result.exception, UnknownNameError), repr(result.exception)
    assert "models/registry.py" in "".join(traceback.format_exception(*result.exc_info))


@pytest.mark.parametrize("command", ["models", "train", "eval", "measure", "export", "rerun"])
def test_every_command_has_help_with_an_example(command):
    result = _invoke(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_prune_reconvene_from_the_command_line(tmp_path):
    result = _invoke("-q", "prune", "--method", "reconvene", "--criterion", "magnitude", "--sparsity", "0.9",
                     "-m", "conftest:small_vgg", "-d", "synthetic", "-e", "1", "--measure-runs", "2",
                     "--runs-dir", tmp_path, "--name", "rec")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["method"] == "reconvene" and report["options"]["sparsity"] == 0.9
    assert any(g["width_after"] < g["width_before"] for g in report["groups"])
    assert "pruning took" in result.output


def test_two_budgets_at_once_are_refused(tmp_path):
    result = _invoke("prune", "--method", "reconvene", "--target-size", "1", "--target-macs", "1000",
                     "-d", "synthetic", "--runs-dir", tmp_path)
    assert result.exit_code == 2 and "one budget" in result.output


def test_report_over_runs(run, tmp_path):
    result = _invoke("report", run, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "results.csv").exists()
    assert oct((tmp_path / "rep" / "report.html").stat().st_mode & 0o777) != "0o600"
    result = _invoke("report", run, "--out", tmp_path / "rep2", "--retime", "--retime-at", "1x1", "--retime-rounds",
                     "1", "--retime-runs", "2")
    assert result.exit_code == 0, result.output
    assert "re-measured for all 1 models in one interleaved pass" in (tmp_path / "rep2" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [(["--retime", "--retime-at", "1by1"], "'1by1' is not BATCHxTHREADS"),
                                           (["--retime-at", "1x1"], "pass --retime with it"),
                                           (["--retime", "--retime-rounds", "0"], "rounds >= 1")])
def test_bad_retime_options_say_what_to_do(run, tmp_path, args, message):
    result = _invoke("report", run, "--out", tmp_path / "rep", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "rep").exists()


def test_sweep_then_report_from_the_command_line(tmp_path):
    import yaml

    spec = {"name": "s", "out": str(tmp_path / "s"), "models": ["conftest:Tiny"],
            "data": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 32, "batch_size": 16},
            "train": {"epochs": 1}, "measure": {"runs": 2, "warmup": 0, "memory": False},
            "methods": [{"name": "magnitude", "sparsities": [0.5]},
                        {"name": "snip", "sparsities": [0.99], "min_layer_density": 0.9}]}  # fails when pruning
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = _invoke("-q", "sweep", tmp_path / "s.yaml")
    assert result.exit_code == 1, result.output  # one cell failed; the others finished
    assert "failed" in result.output and "min_layer_density" in result.output
    assert (tmp_path / "s" / "conftest_Tiny-magnitude-0.5-seed0" / "report.json").exists()
    result = _invoke("report", tmp_path / "s", "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "conftest_Tiny-magnitude-0.5-seed0" in (tmp_path / "rep" / "report.html").read_text()
    result = _invoke("-q", "sweep", tmp_path / "s.yaml", "--only", "vgg16-*")
    assert result.exit_code == 2 and "--only 'vgg16-*' matches no cell" in result.output, result.output
    result = _invoke("-q", "sweep", tmp_path / "s.yaml", "--only", "*magnitude*", "--device", "cpu")
    assert result.exit_code == 0 and "1 not selected" in result.output, result.output


def test_compare_retimes_side_by_side_and_says_what_the_table_shows(tmp_path):
    common = ["-m", "conftest:small_vgg", "-d", "synthetic", "--subset", "64", "--test-subset", "16", "-e", "1",
              "--measure-runs", "2", "--runs-dir", tmp_path]
    for args in (["train", "--name", "dense"],
                 ["prune", "--method", "reconvene", "--criterion", "magnitude", "--sparsity", "0.9", "--name", "rec"]):
        result = _invoke("-q", *args, *common)
        assert result.exit_code == 0, result.output
    result = _invoke("-q", "compare", tmp_path / "dense", tmp_path / "rec")
    assert result.exit_code == 0, result.output
    line = next(t for t in result.output.splitlines() if t.startswith("rec vs dense:"))
    assert "at batch 1 (ONNX Runtime, timed side by side)" in line
    size_x = float(line.split("× smaller")[0].rsplit(" ", 1)[-1])
    saved = {r: json.loads((tmp_path / r / "report.json").read_text())["profile"] for r in ("dense", "rec")}
    assert size_x == pytest.approx(saved["dense"]["bytes_fp32"] / saved["rec"]["bytes_fp32"], abs=0.05) and size_x > 2


def test_neuroflux_flags_are_its_settings_fields():
    """Every NeuroFlux setting is a --flag with its field's type, default and help; the budget is required (one
    line, exit 2)."""
    import dataclasses

    import typer.main

    from edgeprune.neuroflux.options import Settings

    command = typer.main.get_command(app).commands["neuroflux"]
    params = {p.name: p for p in command.params}
    for f in dataclasses.fields(Settings):
        p = params[f.name]
        assert p.opts == [f"--{f.name.replace('_', '-')}"] and p.help == f.metadata["help"]
        assert p.required if f.metadata.get("required") else (not p.required and p.default == f.default)
    missing = runner.invoke(app, ["neuroflux", "-d", "synthetic"])
    assert missing.exit_code == 2 and "--memory-budget" in missing.output
