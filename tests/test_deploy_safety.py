"""Run safety for the deployment commands (portfolio, detect, partition, quantize, neuroflux, fl), as a user meets
it: an output is replaced only if edgeprune made it (of the same kind) and only after success, two processes never
write one output, every output is checked writable before any work, and bad input is one line with exit code 2
that leaves the user's files as they were."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeprune import runs
from edgeprune.cli import app

runner = CliRunner()
TRAIN = ["-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--measure-runs", "2", "-b", "64"]
DETECT = ["-q", "detect", "train", "--frames", "40", "-e", "1", "--sizes", "64", "--width", "4"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tree(folder: Path) -> dict:
    """Every file below `folder` with its bytes: what a user would lose."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return " ".join(result.output.split())  # the message, unwrapped


def _as_real_data(run: Path, accuracy: float) -> None:
    """Make a synthetic run look trained on a real data set (none is installed here): portfolios choose by accuracy."""
    report = json.loads((run / "report.json").read_text())
    report.update(data="fashion-mnist", synthetic_data=False)
    report["profile"].update(accuracy=accuracy, accuracy_data="fashion-mnist")
    (run / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two finished runs (as if on real data) and a detector family, made once."""
    root = tmp_path_factory.mktemp("made")
    for name, acc in (("a", 0.5), ("b", 0.6)):
        result = _invoke(*TRAIN, "--runs-dir", root / "runs", "--name", name)
        assert result.exit_code == 0, result.output
        _as_real_data(root / "runs" / name, acc)
    return root


@pytest.fixture
def world(made, tmp_path):
    """A copy of `made` with the user's notes beside the runs and a folder of the user's beside runs/."""
    shutil.copytree(made / "runs", tmp_path / "runs")
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    return tmp_path, tmp_path / "runs", _tree(tmp_path)


@pytest.fixture
def items(monkeypatch):
    """Fashion-MNIST is not installed here: the detection stream draws ten kinds of bright rectangles instead."""
    from edgeprune.detection import stream

    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.arange(20) % 10
    for i, c in enumerate(labels):
        images[i, 4:24, 4 + c:24 - c // 2] = 200
    monkeypatch.setattr(stream, "items", lambda pool: (images, labels))


def _portfolio(runs_dir, out, *more):
    return _invoke("-q", "portfolio", "build", runs_dir / "a", runs_dir / "b", "--out", out, "--rounds", 1,
                   "--runs", 2, *more)


# --- 1. nothing lost: only edgeprune's own output of the same kind is replaced, and only after success ------------

@pytest.mark.parametrize("target", ["runs", "runs/a", "mine"])
def test_portfolio_overwrite_never_replaces_what_is_not_a_portfolio(world, target):
    """The folder holding the source runs, a source run itself, a user's folder: refused, nothing touched."""
    tmp_path, runs_dir, before = world
    out = _one_line_error(_portfolio(runs_dir, tmp_path / target, "--overwrite"))
    assert "--out" in out and ("not an edgeprune portfolio" in out or "source" in out)
    assert _tree(tmp_path) == before


def test_portfolio_overwrite_never_replaces_a_run_of_another_kind(world):
    tmp_path, runs_dir, _ = world
    shutil.copytree(runs_dir / "a", tmp_path / "other-run")
    before = _tree(tmp_path)
    out = _one_line_error(_portfolio(runs_dir, tmp_path / "other-run", "--overwrite"))
    assert "is not an edgeprune portfolio" in out and "portfolio.json" in out
    assert _tree(tmp_path) == before


def test_portfolio_overwrite_replaces_a_portfolio_once_the_new_one_is_complete(world):
    tmp_path, runs_dir, _ = world
    assert _portfolio(runs_dir, tmp_path / "pf", "--keep-all").exit_code == 0
    old = _tree(tmp_path / "pf")
    assert _one_line_error(_portfolio(runs_dir, tmp_path / "pf")).count("already exists") == 1
    assert _tree(tmp_path / "pf") == old
    result = _portfolio(runs_dir, tmp_path / "pf", "--keep-all", "--overwrite", "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pf" / "portfolio.json").read_text())["batch_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging, no lock left


def test_a_failed_portfolio_overwrite_leaves_the_old_one(world, monkeypatch):
    tmp_path, runs_dir, _ = world
    assert _portfolio(runs_dir, tmp_path / "pf", "--keep-all").exit_code == 0
    before = _tree(tmp_path)
    from edgeprune import measure

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(measure, "latency_onnx_interleaved", fail)
    result = _portfolio(runs_dir, tmp_path / "pf", "--overwrite")
    assert result.exit_code != 0
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pf.")]


@pytest.mark.parametrize("target", ["runs/a", "mine"])
def test_detect_train_overwrite_never_replaces_what_is_not_a_family(world, items, target):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke(*DETECT, "--out", tmp_path / target, "--overwrite"))
    assert "is not an edgeprune detector family" in out and "family.json" in out
    assert _tree(tmp_path) == before


def test_detect_train_overwrite_replaces_a_family(tmp_path, items):
    assert _invoke(*DETECT, "--out", tmp_path / "fam").exit_code == 0
    assert "already exists" in _one_line_error(_invoke(*DETECT, "--out", tmp_path / "fam"))
    result = _invoke(*DETECT[:-1], "8", "--out", tmp_path / "fam", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "fam" / "family.json").read_text())["training"]["width"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fam"]


def _holder(out: Path, kind: str) -> subprocess.Popen:
    """A real second process writing `out` (holding its lock) until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom edgeprune import runs\n"
         "with runs.open_run(sys.argv[1], None, kind=sys.argv[2], option='--out') as rf:\n"
         "    print(rf.path, flush=True)\n    time.sleep(60)\n", str(out), kind],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(runs.__file__).parents[1])})
    assert proc.stdout.readline().strip() == str(out)
    return proc


@pytest.mark.parametrize("command", ["portfolio", "detect"])
def test_a_second_process_writing_the_same_output_is_refused(world, items, command):
    tmp_path, runs_dir, _ = world
    out_dir = tmp_path / "out"
    holder = _holder(out_dir, "portfolio" if command == "portfolio" else "detector family")
    try:
        result = (_portfolio(runs_dir, out_dir, "--overwrite") if command == "portfolio"
                  else _invoke(*DETECT, "--out", out_dir, "--overwrite"))
        assert "is being written by another edgeprune process" in _one_line_error(result)
        assert "--out" in result.output
    finally:
        holder.kill()
        holder.wait(10)


def test_a_glob_character_in_a_name_touches_no_other_run(tmp_path):
    """`a*` being replaced must not remove the staging folder of run `ab` (being replaced by another process)."""
    cfg = {"command": "train", "edgeprune_version": "0"}
    for name in ("ab", "a*"):
        with runs.open_run(tmp_path / name, cfg):
            pass
    other = tmp_path / ".ab.staging-99999"
    other.mkdir()
    (other / "config.json").write_text("{}")
    old = tmp_path / ".ab.old-99999"
    old.mkdir()
    with runs.open_run(tmp_path / "a*", cfg, overwrite=True) as rf:
        assert rf.mode == "replace"
    assert other.is_dir() and (other / "config.json").is_file() and old.is_dir()


# --- outputs checked writable before any work ------------------------------------------------------------------

def _no_work(monkeypatch):
    """Fail the test if any command gets as far as its work."""
    from edgeprune import measure
    from edgeprune.detection import detector
    from edgeprune.partition import bench

    for module, name in ((measure, "latency_onnx_interleaved"), (detector, "train"), (bench, "run"),
                         (bench, "source_model")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("worked before checking the output"))


@pytest.mark.parametrize("kind", ["file", "unwritable"])
@pytest.mark.parametrize("command", ["portfolio", "detect", "bench", "plan", "fl", "profile"])
def test_an_output_that_cannot_be_written_fails_before_any_work(world, monkeypatch, items, kind, command):
    tmp_path, runs_dir, _ = world
    _no_work(monkeypatch)
    (tmp_path / "a-file").write_text("mine")
    base = tmp_path / "a-file" if kind == "file" else Path("/proc/edgeprune-out")
    target = base / "x" if command in ("portfolio", "detect") else base
    if command in ("plan", "fl", "profile"):
        target = base / "out.json"
    args = {"portfolio": ["-q", "portfolio", "build", runs_dir / "a", "--out", target],
            "detect": [*DETECT, "--out", target],
            "bench": ["-q", "partition", "bench", runs_dir / "a", "--tier", "device", "--out", target],
            "plan": ["-q", "partition", "plan", runs_dir / "a", "--network", tmp_path / "n.csv", "--out", target],
            "fl": ["-q", "fl", "run", tmp_path / "job.yaml", "--out", target],
            "profile": ["-q", "detect", "profile", tmp_path / "fam", "--out", target]}[command]
    before = _tree(tmp_path)
    out = _one_line_error(_invoke(*args))
    assert "cannot write files in" in out and "--out" in out
    assert _tree(tmp_path) == before


def test_a_portfolio_out_that_is_a_file_is_one_line(world):
    tmp_path, runs_dir, _ = world
    (tmp_path / "a-file").write_text("mine")
    out = _one_line_error(_portfolio(runs_dir, tmp_path / "a-file", "--overwrite"))
    assert "is a file" in out and (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize("command", ["quantize", "neuroflux"])
def test_run_making_deployment_commands_check_the_runs_dir_first(world, monkeypatch, command):
    tmp_path, runs_dir, _ = world
    from edgeprune import export
    from edgeprune.neuroflux import job

    monkeypatch.setattr(export, "quantize_onnx", lambda *a, **k: pytest.fail("quantised before checking"))
    monkeypatch.setattr(job, "train", lambda *a, **k: pytest.fail("trained before checking"))
    args = (["quantize", runs_dir / "a", "--name", "q"] if command == "quantize"
            else ["neuroflux", "-m", "lenet5", "-d", "synthetic", "--memory-budget", "64MiB", "--val-size", "100",
                  "--name", "n"])
    out = _one_line_error(_invoke("-q", *args, "--runs-dir", "/proc/edgeprune-runs"))
    assert "cannot write run files in '/proc/edgeprune-runs'" in out


def test_a_full_disk_during_prune_is_one_line_and_leaves_no_finished_run(tmp_path, monkeypatch):
    """The disk fills up while the pruned model is saved: one line, and nothing there looks like a finished run."""
    real = runs.atomic_write

    def full(path, write, binary=True):
        if Path(path).name == runs.MODEL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write, binary)

    monkeypatch.setattr(runs, "atomic_write", full)
    out = _one_line_error(_invoke("-q", "prune", "--method", "magnitude", "--sparsity", "0.5", "-m",
                                  "conftest:small_vgg", "-d", "synthetic", "-e", "1", "--measure-runs", "2",
                                  "-b", "64", "--runs-dir", tmp_path, "--name", "r"))
    assert "No space left on device" in out
    assert not (tmp_path / "r" / "report.json").exists()
