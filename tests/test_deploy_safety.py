"""Run safety for the deployment commands (portfolio, detect, partition, quantize, neuroflux, fl), as a user meets
it: an output is replaced only if edgeprune made it (of the same kind) and only after success, two processes never
write one output, every output is checked writable before any work, and bad input is one line with exit code 2
that leaves the user's files as they were."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_run_safety import _invoke, _tree  # the same CLI runner and file snapshot as the making commands' cases

from edgeprune import files, runs

TRAIN = ["-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--measure-runs", "2", "-b", "64"]
DETECT = ["-q", "detect", "train", "--frames", "40", "-e", "1", "--sizes", "64", "--width", "4"]


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
    from edgeprune import timing

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(timing, "latency_onnx_interleaved", fail)
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
    training = json.loads((tmp_path / "fam" / "family.json").read_text())["training"]
    assert training["width"] == 8 and training["stream"]["segment_frames"] == 2 and training["stream"]["frames"] == 40
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
    from edgeprune import timing
    from edgeprune.detection import detector
    from edgeprune.partition import bench

    for module, name in ((timing, "latency_onnx_interleaved"), (detector, "train"), (bench, "run"),
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
    from edgeprune import quantization
    from edgeprune.neuroflux import job

    monkeypatch.setattr(quantization, "quantize", lambda *a, **k: pytest.fail("quantised before checking"))
    monkeypatch.setattr(job, "train", lambda *a, **k: pytest.fail("trained before checking"))
    args = (["quantize", runs_dir / "a", "--name", "q"] if command == "quantize"
            else ["neuroflux", "-m", "lenet5", "-d", "synthetic", "--memory-budget", "64MiB", "--val-size", "100",
                  "--name", "n"])
    out = _one_line_error(_invoke("-q", *args, "--runs-dir", "/proc/edgeprune-runs"))
    assert "cannot write run files in '/proc/edgeprune-runs'" in out


def test_a_full_disk_during_prune_is_one_line_and_leaves_no_finished_run(tmp_path, monkeypatch):
    """The disk fills up while the pruned model is saved: one line, and nothing there looks like a finished run."""
    real = files.atomic_write

    def full(path, write, binary=True):
        if Path(path).name == runs.MODEL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write, binary)

    monkeypatch.setattr(files, "atomic_write", full)
    out = _one_line_error(_invoke("-q", "prune", "--method", "magnitude", "--sparsity", "0.5", "-m",
                                  "conftest:small_vgg", "-d", "synthetic", "-e", "1", "--measure-runs", "2",
                                  "-b", "64", "--runs-dir", tmp_path, "--name", "r"))
    assert "No space left on device" in out
    assert not (tmp_path / "r" / "report.json").exists()


# --- 2. bad input: one line, exit 2, naming the value --------------------------------------------------------

FL_SPEC = {"model": {"name": "vgg5", "num_classes": 10, "in_channels": 3, "image_size": 32},
           "data": {"name": "synthetic", "batch_size": 16}, "rounds": 1, "edges": ["edge0"],
           "devices": [{"split": 2, "edge": "edge0"}, {"split": 7}], "optim": {"lr": 0.01}}


@pytest.mark.parametrize("change, message", [
    ({"devices": 3}, "devices must be a list of devices"),
    ({"devices": [{"edge": "edge0"}]}, "device 0 lacks 'split'"),
    ({"rounds": "three"}, "rounds must be an integer >= 1, got 'three'"),
    ({"devices": [{"split": 2, "mbps": 0}]}, "device 0's mbps must be a finite number > 0, got 0"),
    ({"optim": {"lr": -0.1}}, "optim.lr must be a finite number > 0, got -0.1"),
    ({"optim": {"lr": float("nan")}}, "optim.lr must be a finite number > 0, got nan"),
    ({"data": {"name": "synthetic", "batch_size": 0}}, "data.batch_size must be an integer >= 1, got 0"),
    ({"rtt_ms": -5}, "rtt_ms must be a finite number >= 0, got -5"),
    ({"devices": [{"split": 2, "factor": 0}]}, "device 0's factor must be a finite number >= 1, got 0"),
    ({"devices": [{"split": "two"}]}, "device 0's split must be an integer >= 0, got 'two'"),
    ({"devices": [{"split": 2, "edge": "nowhere"}]}, "device 0's edge 'nowhere' is not among"),
    ({"moves": [{"round": 1, "device": 0, "iteration": 1}]}, "move 0 lacks 'to'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"model": {"name": "vgg5", "in_channels": 1, "image_size": 28}}, "cannot take its data's samples of shape"),
])
def test_a_bad_fl_spec_is_one_line_naming_the_value(tmp_path, change, message):
    import yaml

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**FL_SPEC, **change}))
    out = _one_line_error(_invoke("-q", "fl", "run", spec, "--out", tmp_path / "fl.json"))
    assert message in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


@pytest.fixture(scope="module")
def partitioned(made, tmp_path_factory):
    """Bench files of run `a` for two tiers, a links file and a plan; an INT8 copy of run `a`; a portfolio of
    a, b and the INT8 copy."""
    root = tmp_path_factory.mktemp("partitioned")
    shutil.copytree(made / "runs", root / "runs")
    for tier in ("device", "edge"):
        result = _invoke("-q", "partition", "bench", root / "runs" / "a", "--tier", tier, "--out", root)
        assert result.exit_code == 0, result.output
    (root / "links.csv").write_text("source,destination,ping_ms,bandwidth_mbps\ndevice,edge,5,100\n")
    result = _invoke("-q", "partition", "plan", root / "bench-device.json", root / "bench-edge.json", "--network",
                     root / "links.csv", "--out", root / "plan.json")
    assert result.exit_code == 0, result.output
    result = _invoke("-q", "quantize", root / "runs" / "a", "--name", "a-int8", "--calibration", "64",
                     "--measure-runs", "2")
    assert result.exit_code == 0, result.output
    _as_real_data(root / "runs" / "a-int8", 0.55)
    result = _invoke("-q", "portfolio", "build", root / "runs" / "a", root / "runs" / "a-int8", "--out", root / "pf",
                     "--keep-all", "--rounds", 1, "--runs", 2)
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("row, message", [
    ("device,edge,5,nan", "bandwidth_mbps must be a finite number > 0, got nan"),
    ("device,edge,5,inf", "bandwidth_mbps must be a finite number > 0, got inf"),
    ("device,edge,nan,100", "ping_ms must be a finite number >= 0, got nan"),
    ("device,edge,-inf,100", "ping_ms must be a finite number >= 0, got -inf"),
])
def test_plan_refuses_a_link_that_is_not_finite(partitioned, tmp_path, row, message):
    (tmp_path / "links.csv").write_text(f"source,destination,ping_ms,bandwidth_mbps\n{row}\n")
    out = _one_line_error(_invoke("-q", "partition", "plan", partitioned / "bench-device.json",
                                  partitioned / "bench-edge.json", "--network", tmp_path / "links.csv",
                                  "--out", tmp_path / "plan.json"))
    assert message in out and "links.csv:2" in out
    assert not (tmp_path / "plan.json").exists()


def _edited(src: Path, dst: Path, edit) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    dst.write_text(json.dumps(data))
    return dst


def test_plan_refuses_a_bench_file_holding_nan_or_of_another_kind(partitioned, tmp_path):
    nan = _edited(partitioned / "bench-edge.json", tmp_path / "bench-edge.json",
                  lambda d: d["blocks"][0].update(ms=float("nan")))
    args = ["-q", "partition", "plan", partitioned / "bench-device.json", "--network", partitioned / "links.csv",
            "--out", tmp_path / "plan.json"]
    out = _one_line_error(_invoke(*args[:4], nan, *args[4:]))
    assert "blocks[0].ms must be a finite number >= 0, got nan" in out and "bench-edge.json" in out
    out = _one_line_error(_invoke(*args[:4], partitioned / "plan.json", *args[4:]))
    assert "is not a bench file" in out
    typed = _edited(partitioned / "bench-edge.json", tmp_path / "typed.json", lambda d: d.update(tier=3))
    assert "tier is 3, not a string" in _one_line_error(_invoke(*args[:4], typed, *args[4:]))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["plans"][0].update(total_ms=float("nan")), "plans[0].total_ms must be a finite number"),
    (lambda d: d.update(plans=[]), "plans is empty"),
    (lambda d: d["plans"][0]["stages"][0].update(first="zero"), "plans[0].stages[0].first must be an integer"),
    (lambda d: d["links"][0].update(bandwidth_mbps=0), "links[0].bandwidth_mbps must be a finite number > 0"),
    (lambda d: d.update(format="edgeprune.partition.bench/1"), "is not a plan file"),
])
def test_partition_run_refuses_a_broken_plan_file(partitioned, tmp_path, edit, message):
    plan = _edited(partitioned / "plan.json", tmp_path / "plan.json", edit)
    out = _one_line_error(_invoke("-q", "partition", "run", partitioned / "runs" / "a", "--plan", plan))
    assert message in out


@pytest.mark.parametrize("command", ["cuts", "bench"])
def test_a_corrupt_onnx_file_is_one_line(partitioned, tmp_path, command):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((partitioned / "runs" / "a" / "model.onnx").read_bytes()[:500])
    extra = ["--tier", "device", "--out", tmp_path / "b"] if command == "bench" else []
    out = _one_line_error(_invoke("-q", "partition", command, broken, *extra))
    assert "is not a readable ONNX model" in out and "broken.onnx" in out


@pytest.mark.parametrize("command, source", [("cuts", "runs/a-int8"), ("bench", "runs/a-int8"), ("bench", "pf")])
def test_partition_takes_an_int8_model(partitioned, tmp_path, source, command):
    """An INT8 run, alone or in a portfolio, is cut and benched like an fp32 one (tests/test_partition_int8.py)."""
    extra = ["--tier", "device", "--warmup", "1", "--out", tmp_path / "b"] if command == "bench" else []
    result = _invoke("-q", "partition", command, partitioned / source, *extra)
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("bench-*.json"))) == {"cuts": 0, "bench": 1}[command] * (
        2 if source == "pf" else 1)


@pytest.mark.parametrize("args, message", [
    (["--tier", ""], "--tier '' is not a plain name"),
    (["--tier", "a/b"], "--tier 'a/b' is not a plain name"),
    (["--tier", "edge", "--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
    (["--tier", "edge", "--cpu-quota", "nan"], "--cpu-quota must be a finite number > 0, got nan"),
])
def test_partition_bench_refuses_bad_options(partitioned, tmp_path, args, message):
    out = _one_line_error(_invoke("-q", "partition", "bench", partitioned / "runs" / "a", *args, "--out", tmp_path))
    assert message in out
    assert list(tmp_path.iterdir()) == []


def test_a_wrongly_typed_portfolio_manifest_is_one_line(partitioned, tmp_path):
    pf = shutil.copytree(partitioned / "pf", tmp_path / "pf")
    _edited(pf / "portfolio.json", pf / "portfolio.json", lambda d: d["variants"][0].update(accuracy="high"))
    out = _one_line_error(_invoke("portfolio", "show", pf))
    assert "'accuracy' is 'high', which is not float" in out
    out = _one_line_error(_invoke("-q", "partition", "plan", partitioned / "bench-device.json", "--network",
                                  partitioned / "links.csv", "--variants", pf, "--target-latency", "40",
                                  "--out", tmp_path / "plan.json"))
    assert "'accuracy' is 'high'" in out


def test_detect_train_with_fewer_steps_than_a_warm_up_trains(tmp_path, items):
    """300 frames at batch 32 are 10 steps: one cycle's 10 % warm-up was a single step, and it divided by zero."""
    result = _invoke(*DETECT[:3], "--frames", "300", "-e", "1", *DETECT[7:], "--out", tmp_path / "fam")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fam" / "family.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--width", "0"], "--width must be an integer >= 1, got 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1"),
    (["--frames", "0"], "--frames must be an integer >= 1, got 0"),
    (["--sizes", "60"], "--sizes must be multiples of 16"),
])
def test_detect_train_refuses_bad_values_before_any_work(tmp_path, items, monkeypatch, args, message):
    from edgeprune.detection import detector

    monkeypatch.setattr(detector, "train", lambda *a, **k: pytest.fail("trained with a bad value"))
    out = _one_line_error(_invoke(*DETECT, *args, "--out", tmp_path / "fam"))
    assert message in out
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def family(tmp_path, items):
    assert _invoke(*DETECT, "--out", tmp_path / "fam").exit_code == 0
    return tmp_path / "fam"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(classes="ten"), "'classes' (a list of class ids) is 'ten'"),
    (lambda d: d.update(members=[]), "'members' is []"),
    (lambda d: d["members"]["d64"].update(input_size="64"), "member 'd64''s input_size is '64'"),
])
def test_detect_profile_refuses_a_wrongly_typed_family_record(family, tmp_path, edit, message):
    _edited(family / "family.json", family / "family.json", edit)
    before = _tree(tmp_path)
    out = _one_line_error(_invoke("-q", "detect", "profile", family, "--out", tmp_path / "roma.json"))
    assert message in out and "family.json" in out
    assert _tree(tmp_path) == before


def test_export_refuses_an_opset_it_cannot_write(world):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke("export", runs_dir / "a", "--onnx", tmp_path / "a.onnx", "--opset", "5"))
    assert "--opset must be an integer >= 7 and <= 23, got 5" in out
    assert _tree(tmp_path) == before


def test_export_never_claims_an_opset_it_did_not_write(tiny, monkeypatch):
    from edgeprune import export
    from edgeprune.errors import ExportError

    real = export._export
    monkeypatch.setattr(export, "_export", lambda net, x, buf, opset, name: real(net, x, buf, 18, name))
    with pytest.raises(ExportError, match="--opset 17 cannot be written for this model .the exporter wrote opset 18"):
        export.to_onnx_bytes(tiny, (1, 8, 8), opset=17)


@pytest.mark.parametrize("command", ["rerun", "shrink", "quantize", "compare"])
def test_an_unknown_key_in_the_train_section_is_named(world, command):
    tmp_path, runs_dir, _ = world
    config = runs_dir / "a" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["train"]["colour"] = "red"
    config.write_text(json.dumps(cfg))
    before = _tree(tmp_path)
    args = {"rerun": ["rerun", runs_dir / "a", "--name", "new", "--runs-dir", runs_dir],
            "shrink": ["shrink", runs_dir / "a", "--name", "new", "--runs-dir", runs_dir],
            "quantize": ["quantize", runs_dir / "a", "--name", "new", "--runs-dir", runs_dir],
            "compare": ["compare", runs_dir / "a", runs_dir / "b"]}[command]
    out = _one_line_error(_invoke("-q", *args))
    assert "unknown key 'colour'" in out and "config.json" in out
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", ["shrink", "quantize"])
def test_a_folder_that_is_not_a_run_is_named_itself(world, command):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke("-q", command, tmp_path / "mine", "--name", "new", "--runs-dir", runs_dir))
    assert str(tmp_path / "mine") in out and f"{tmp_path}/config.json" not in out
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("option", ["--batch-size", "--threads", "--rounds", "--runs"])
def test_portfolio_build_refuses_counts_below_one(world, option):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_portfolio(runs_dir, tmp_path / "pf", option, "0"))
    assert f"{option} must be an integer >= 1, got 0" in out
    assert _tree(tmp_path) == before


# --- 3. processes torn down: Ctrl-C ends a run at once; what a SIGKILL leaves, the next run removes -----------

def _alive(pid: int, start) -> bool:
    from edgeprune import reaper

    return reaper._started(pid) == start


def _records(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in state.glob("*.json")]


def _start_cli(tmp_path: Path, *args) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "EDGEPRUNE_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": str(Path(runs.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    return proc, env


def _wait_for_record(proc, state: Path, ready, what: str, limit_s: float = 240) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        found = [r for r in _records(state) if r.get("owner") == proc.pid and ready(r)]
        if found:
            return found[0]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"{what} never happened (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)


def _below(pid: int) -> list:
    from edgeprune import reaper

    return [(p, reaper._started(p)) for p in reaper.descendants(pid)]


def _all_gone(processes, limit_s: float = 30) -> bool:
    deadline = time.monotonic() + limit_s
    while any(_alive(pid, start) for pid, start in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def fl_job(tmp_path):
    import yaml

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**FL_SPEC, "rounds": 200, "data": {"name": "synthetic", "batch_size": 16,
                                                                        "subset": 64}}))
    return spec


@pytest.mark.slow
def test_ctrl_c_ends_fl_run_at_once_and_stops_everything_it_started(tmp_path, fl_job):
    proc, _ = _start_cli(tmp_path, "fl", "run", fl_job, "--emulation", "modelled")
    try:  # the edge server is up, and Ray's processes (recorded at the first round)
        record = _wait_for_record(proc, tmp_path / "state", lambda r: len(r["processes"]) >= 2, "a first round")
        below = _below(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)  # one Ctrl-C is enough: no hang until a second one
    finally:
        proc.kill()
    assert proc.returncode == 130, f"exit {proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and "interrupted" in err
    assert _all_gone(record["processes"]) and _all_gone(below)  # the edge server, Ray's processes
    deadline = time.monotonic() + 30
    while _records(tmp_path / "state") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _records(tmp_path / "state") == []


@pytest.mark.slow
def test_what_a_killed_fl_run_left_is_removed_by_the_next_run(tmp_path, fl_job):
    proc, env = _start_cli(tmp_path, "fl", "run", fl_job, "--emulation", "modelled")
    try:
        record = _wait_for_record(proc, tmp_path / "state", lambda r: len(r["processes"]) >= 2, "a first round")
        below = _below(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    left = [p for p in record["processes"] if _alive(*p)]
    assert left, "SIGKILL left nothing behind: the test proves nothing"
    done = subprocess.run([sys.executable, "-m", "edgeprune.cli", "fl", "run", tmp_path / "missing.yaml"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cleaned up after an earlier run that was killed" in done.stdout
    assert _all_gone(left) and _all_gone(below)
    assert _records(tmp_path / "state") == []


@pytest.mark.slow
def test_what_a_killed_partition_run_left_is_removed_by_the_next_run(partitioned, tmp_path):
    from edgeprune import emulate

    why = emulate.namespaces_unavailable()
    if why is not None:
        pytest.skip(f"partition run makes no namespaces here ({why})")
    plan = tmp_path / "plan.json"  # the device runs block 0 and sends the rest to the edge: a server, a link
    result = _invoke("-q", "partition", "plan", partitioned / "bench-device.json", partitioned / "bench-edge.json",
                     "--network", partitioned / "links.csv", "--split", "1", "--out", plan)
    assert result.exit_code == 0, result.output
    proc, env = _start_cli(tmp_path, "-q", "partition", "run", partitioned / "runs" / "a", "--plan", plan, "--runs",
                           1_000_000)
    try:
        record = _wait_for_record(proc, tmp_path / "state", lambda r: r["processes"] and len(r["namespaces"]) >= 2,
                                  "the tiers' start")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(ns in names for ns in record["namespaces"])
    assert any(_alive(*p) for p in record["processes"])
    done = subprocess.run([sys.executable, "-m", "edgeprune.cli", "partition", "run", "x", "--plan",
                           tmp_path / "missing.json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cleaned up after an earlier run that was killed" in done.stdout
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in names for ns in record["namespaces"])
    assert _all_gone(record["processes"])


@pytest.mark.slow
def test_ctrl_c_of_partition_run_removes_its_servers_and_links(partitioned, tmp_path):
    plan = tmp_path / "plan.json"
    result = _invoke("-q", "partition", "plan", partitioned / "bench-device.json", partitioned / "bench-edge.json",
                     "--network", partitioned / "links.csv", "--split", "1", "--out", plan)
    assert result.exit_code == 0, result.output
    proc, _ = _start_cli(tmp_path, "-q", "partition", "run", partitioned / "runs" / "a", "--plan", plan, "--runs",
                         1_000_000)
    try:
        record = _wait_for_record(proc, tmp_path / "state", lambda r: len(r["processes"]) >= 2, "the device's start")
        below = _below(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert _all_gone(record["processes"]) and _all_gone(below)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout if os.geteuid() == 0 else ""
    assert not any(ns in names for ns in record["namespaces"])
    assert _records(tmp_path / "state") == []


def test_reap_leaves_live_owners_and_reused_pids_alone(tmp_path, monkeypatch):
    from edgeprune import reaper

    monkeypatch.setenv("EDGEPRUNE_STATE_DIR", str(tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = reaper._started(sleeper.pid)
        dead = {"owner": 2 ** 22 + 1, "owner_start": 1, "namespaces": [], "cgroups": []}
        (tmp_path / "1.json").write_text(json.dumps({**dead, "processes": [[sleeper.pid, start + 1]]}))  # pid reused
        live = {"owner": owner.pid, "owner_start": reaper._started(owner.pid), "namespaces": [], "cgroups": []}
        (tmp_path / "2.json").write_text(json.dumps({**live, "processes": [[sleeper.pid, start]]}))
        assert reaper.reap() == []
        assert sleeper.poll() is None  # neither the other process nor a live run's server was signalled
        assert sorted(p.name for p in tmp_path.iterdir()) == ["2.json"]
        owner.kill()
        owner.wait(10)
        assert reaper.reap() == [f"process {sleeper.pid}"]
        assert sleeper.wait(10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        owner.kill()


# --- 4. the README's partition quick-start works as written, each command in a process of its own -----------

def _readme_partition_commands() -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("### Splitting a model across device, edge and cloud", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0].replace("\\\n", " ")
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_partition_quick_start_runs_in_separate_processes(tmp_path):
    """The README's commands, each in a new process, on a small input (3x64x64, 10 classes) and without the CPU
    quota (root only; bench's own tests cover it): `plan` and `run` accept what the other processes built."""
    commands = _readme_partition_commands()
    assert [c.split()[:3] for c in commands if c.startswith("edgeprune")] == [
        ["edgeprune", "partition", "cuts"], ["edgeprune", "partition", "bench"], ["edgeprune", "partition", "bench"],
        ["edgeprune", "partition", "plan"], ["edgeprune", "partition", "run"]]
    small = ["--input-shape", "3,64,64", "--num-classes", "10"]
    env = {**os.environ, "PYTHONPATH": str(Path(runs.__file__).parents[1]), "EDGEPRUNE_STATE_DIR": str(tmp_path / "s")}
    for line in commands:
        if line.startswith("printf"):
            (tmp_path / "links.csv").write_text("device,edge,67,8\n")
            continue
        args = line.split()[1:]
        if "--cpu-quota" in args:
            del args[args.index("--cpu-quota"):args.index("--cpu-quota") + 2]
        args = [a.replace("tv:vgg16", "tv:resnet18") for a in args]
        if args[1] in ("cuts", "bench", "run"):
            args += small
        if args[1] == "run":
            args += ["--runs", "3", "--warmup", "1", "--out", "measured.json"]
        done = subprocess.run([sys.executable, "-m", "edgeprune.cli", "-q", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    benches = [json.loads((tmp_path / "bench" / f"bench-{t}.json").read_text()) for t in ("device", "edge")]
    assert benches[0]["onnx_sha256"] == benches[1]["onnx_sha256"] and benches[0]["weights_seed"] == 0
    measured = json.loads((tmp_path / "measured.json").read_text())
    assert measured["max_abs_error"] < 1e-3 and (tmp_path / "plan.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["run", "roma.json", "--family", "fam", "--fps", "nan"], "--fps must be a positive number of frames per second"),
    (["run", "roma.json", "--family", "fam", "--fps", "30", "--window", "0"], "--window must be an integer >= 1"),
    (["run", "roma.json", "--family", "fam", "--fps", "30", "--load-processes", "-1"],
     "--load-processes must be an integer >= 0 and <= 64, got -1"),
    (["run", "roma.json", "--family", "fam", "--fps", "30", "--frames-per-segment", "1"],
     "--frames-per-segment must be an integer >= 2, got 1"),
    (["profile", "fam", "--out", "roma.json", "--frames-per-segment", "0"],
     "--frames-per-segment must be an integer >= 1, got 0"),
])
def test_detect_run_and_profile_refuse_bad_values(tmp_path, args, message):
    out = _one_line_error(_invoke("-q", "detect", *[tmp_path / a if a in ("roma.json", "fam") else a for a in args]))
    assert message in out
    assert list(tmp_path.iterdir()) == []


def test_measure_json_onto_a_folder_is_one_line_before_any_work(world, monkeypatch):
    tmp_path, runs_dir, before = world
    from edgeprune import saved

    monkeypatch.setattr(saved, "profile", lambda *a, **k: pytest.fail("profiled before checking --json"))
    out = _one_line_error(_invoke("measure", runs_dir / "a", "--json", tmp_path / "mine"))
    assert "--json" in out and "is a folder" in out
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------------------- a second, independent pass
# A tester tried the same kinds of cases again after the fixes above; each of these still lost a file or printed a
# traceback. Single-file outputs now replace only a file of the kind they write, and never inside an edgeprune folder.
def test_a_file_output_never_replaces_a_users_file_or_lands_inside_a_run(partitioned, tmp_path):
    root = partitioned
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "notes.json").write_text("not json at all")
    plan_args = ("partition", "plan", root / "bench-device.json", root / "bench-edge.json", "--network",
                 root / "links.csv")
    before = _tree(root / "runs")
    for out, says in ((tmp_path / "keep.txt", "is not a .json file edgeprune writes"),
                      (tmp_path / "notes.json", "is not JSON that edgeprune wrote"),
                      (root / "runs" / "a" / "config.json", "lies inside the run folder"),
                      (root / "runs" / "a" / "sub" / "plan.json", "lies inside the run folder")):
        assert says in _one_line_error(_invoke(*plan_args, "--out", out)), out
    assert (tmp_path / "keep.txt").read_text() == "mine" and (tmp_path / "notes.json").read_text() == "not json at all"
    assert _tree(root / "runs") == before
    # its own earlier output (JSON) is rewritten, as a rerun expects
    assert _invoke("-q", *plan_args, "--out", root / "plan.json").exit_code == 0


def test_a_plot_whose_format_matplotlib_cannot_write_is_refused_before_any_work(partitioned, tmp_path):
    root = partitioned
    out = _one_line_error(_invoke("partition", "plan", root / "bench-device.json", root / "bench-edge.json",
                                  "--network", root / "links.csv", "--plot", tmp_path / "plans.txt"))
    assert "matplotlib writes" in out and "plans.png" in out
    assert not (tmp_path / "plans.txt").exists()


def test_a_truncated_model_onnx_is_one_line_for_quantize(world):
    tmp_path, runs_dir, _ = world
    (runs_dir / "a" / "model.onnx").write_bytes((runs_dir / "a" / "model.onnx").read_bytes()[:100])
    out = _one_line_error(_invoke("quantize", runs_dir / "a", "--name", "q", "--runs-dir", tmp_path / "q"))
    assert "model.onnx as an ONNX model" in out and "truncated or not ONNX" in out


@pytest.mark.parametrize(("args", "says"), [
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--sizes", "160000"], "--sizes must be at most 1024 px"),
    (["--sizes", "64,64"], "--sizes names a size twice"),
    (["--segment-frames", "0"], "--segment-frames must be"),
])
def test_detect_train_refuses_a_negative_seed_and_sizes_out_of_reach(tmp_path, args, says):
    out = _one_line_error(_invoke("detect", "train", "--out", tmp_path / "f", "--frames", 40, "-e", 1, *args))
    assert says in out
    assert not (tmp_path / "f").exists()
