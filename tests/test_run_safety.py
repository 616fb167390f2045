"""Run safety as a user meets it: no run name reaches anything but its own run folder, --overwrite loses the old
run only to a complete new one, two processes never write one run, --resume never mixes two configurations, and
every bad value is one line with exit code 2 that leaves the user's files as they were."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune import jobs, runs
from edgeprune.cli import app
from edgeprune.errors import ConfigError, RunBusyError, RunFinished

runner = CliRunner()
TRAIN = ["-q", "train", "-m", "lenet5", "-d", "synthetic", "-e", "1", "--measure-runs", "2", "-b", "64"]
PRUNE = ["-q", "prune", "--method", "magnitude", "--sparsity", "0.5", "-m", "conftest:small_vgg", "-d", "synthetic",
         "-e", "1", "--measure-runs", "2", "-b", "64"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tree(folder: Path) -> dict:
    """Every file below `folder` with its bytes: what a user would lose."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def world(tmp_path):
    """runs/ with one finished run S, an unrelated folder of the user's, and a victim folder beside runs/."""
    runs_dir = tmp_path / "runs"
    result = _invoke(*PRUNE, "--runs-dir", runs_dir, "--name", "S")
    assert result.exit_code == 0, result.output
    (runs_dir / "notes").mkdir()
    (runs_dir / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "thesis.tex").write_text("precious")
    return tmp_path, runs_dir, _tree(tmp_path)


@pytest.mark.parametrize("args", [
    ["rerun", "{S}", "--name", "", "--overwrite"],
    ["rerun", "{S}", "--name", ".", "--overwrite"],
    ["shrink", "{S}", "--name", ".", "--overwrite"],
    ["shrink", "{S}", "--name", "..", "--overwrite"],
    ["rerun", "{S}", "--name", "../victim", "--overwrite"],
    ["rerun", "{S}", "--name", "{abs_victim}", "--overwrite"],
])
def test_no_name_reaches_outside_its_run_folder(world, args):
    tmp_path, runs_dir, before = world
    args = [a.format(S=runs_dir / "S", abs_victim=tmp_path / "victim") for a in args]
    out = _one_line_error(_invoke("-q", *args, "--runs-dir", runs_dir))
    assert "--name" in out and "one folder name inside --runs-dir" in out
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", ["../victim", "", " ", ".hidden", "a/b"])
def test_training_commands_refuse_names_that_are_not_one_folder(world, name):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke(*PRUNE, "--runs-dir", runs_dir, "--name", name, "--overwrite"))
    assert repr(name) in out
    assert _tree(tmp_path) == before


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(world):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke(*TRAIN, "--runs-dir", runs_dir, "--name", "notes", "--overwrite"))
    assert "not an edgeprune run" in out
    assert _tree(tmp_path) == before


def test_a_failed_overwrite_leaves_the_old_run_intact(world):
    tmp_path, runs_dir, before = world
    # A learning rate this large makes the loss infinite in the first epoch.
    out = _one_line_error(_invoke(*PRUNE, "--lr", "1e38", "--runs-dir", runs_dir, "--name", "S", "--overwrite"))
    assert "loss became" in out and "left unchanged" in out
    assert "checkpoint" not in out  # no pointer to a file that is gone
    assert _tree(tmp_path) == before
    assert not list(runs_dir.glob(".S.*"))  # neither the discarded run nor the lock file is left


def test_an_interrupted_overwrite_leaves_the_old_run_intact(world, interrupt):
    tmp_path, runs_dir, before = world
    interrupt(2)
    result = _invoke(*PRUNE, "--runs-dir", runs_dir, "--name", "S", "--overwrite")
    assert result.exit_code == 130 and "interrupted" in result.output and "left unchanged" in result.output
    assert _tree(tmp_path) == before


def test_overwrite_replaces_the_run_once_the_new_one_is_complete(world):
    tmp_path, runs_dir, _ = world
    old = json.loads((runs_dir / "S" / "config.json").read_text())
    result = _invoke(*PRUNE[:5], "0.7", *PRUNE[6:], "--runs-dir", runs_dir, "--name", "S", "--overwrite")
    assert result.exit_code == 0, result.output
    new = json.loads((runs_dir / "S" / "config.json").read_text())
    assert old["method"]["sparsity"] == 0.5 and new["method"]["sparsity"] == 0.7
    assert json.loads((runs_dir / "S" / "report.json").read_text())["run"] == "S"
    assert sorted(p.name for p in runs_dir.iterdir()) == ["S", "notes"]


def test_resume_refuses_other_options_naming_them(world):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke(*PRUNE[:5], "0.8", *PRUNE[6:], "--subset", "100", "--runs-dir", runs_dir,
                                  "--name", "S", "--resume"))
    assert "method.sparsity (saved 0.5, now 0.8)" in out and "data.subset (saved None, now 100)" in out
    assert _tree(tmp_path) == before


def test_resume_of_a_finished_run_says_so_and_redoes_nothing(world, monkeypatch):
    tmp_path, runs_dir, before = world
    monkeypatch.setattr(jobs, "prune_at_init", lambda *a, **k: pytest.fail("a finished run was pruned again"))
    result = _invoke(*PRUNE, "--runs-dir", runs_dir, "--name", "S", "--resume")
    assert result.exit_code == 0, result.output
    assert "already finished" in result.output
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_an_interrupted_fresh_run_resumes_exactly(tmp_path, interrupt):
    runs_dir = tmp_path / "runs"
    args = [*PRUNE[:-6], "-e", "2", *PRUNE[-4:], "--runs-dir", runs_dir]
    assert _invoke(*args, "--name", "straight").exit_code == 0
    interrupt(9)  # 8 steps an epoch (512 samples, batch 64): epoch 1 is checkpointed
    result = _invoke(*args, "--name", "cut")
    assert result.exit_code == 130 and "--resume continues" in result.output
    assert (runs_dir / "cut" / "checkpoint.pt").exists() and not (runs_dir / "cut" / "report.json").exists()
    result = _invoke(*args, "--name", "cut", "--resume")
    assert result.exit_code == 0, result.output
    assert (runs_dir / "cut" / "model.pt").read_bytes() == (runs_dir / "straight" / "model.pt").read_bytes()


def test_a_run_interrupted_before_any_epoch_leaves_nothing_behind(tmp_path, interrupt):
    interrupt(1)
    result = _invoke(*PRUNE, "--runs-dir", tmp_path, "--name", "r")
    assert result.exit_code == 130 and "was removed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_writing_the_same_run_fails_at_once(tmp_path, monkeypatch):
    """A real second process holds run `r`; this one must refuse before any work (no data read), and run once that
    process is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom edgeprune import runs\n"
         "with runs.open_run(sys.argv[1], {'command': 'x', 'edgeprune_version': '0'}) as rf:\n"
         "    print(rf.path, flush=True)\n    time.sleep(60)\n", str(tmp_path / "r")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == str(tmp_path / "r")
        from edgeprune import jobs

        read = []
        with monkeypatch.context() as m:
            m.setattr(jobs.data, "loaders", lambda *a, **k: read.append(a) or pytest.fail("data read before refusal"))
            out = _one_line_error(_invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "r", "--overwrite"))
        assert "being written by another edgeprune process" in out
        assert read == []  # refused before any work, not after it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # The kernel released the killed process's lock: the run goes ahead, replacing the partial folder.
    result = _invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "r", "--overwrite")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_killed_overwrite_keeps_the_old_run_and_its_leftovers_are_cleaned(tmp_path):
    """SIGKILL in the middle of an --overwrite (a real process): the old run stays whole; the next start removes
    the partial replacement."""
    runs_dir = tmp_path / "runs"
    assert _invoke(*TRAIN, "--runs-dir", runs_dir, "--name", "r").exit_code == 0
    before = _tree(runs_dir / "r")
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *TRAIN[:6], "-e", "50", *TRAIN[8:],
                             "--runs-dir", str(runs_dir), "--name", "r", "--overwrite"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(runs_dir.glob(".r.staging-*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, "the overwrite never checkpointed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _tree(runs_dir / "r") == before
    assert list(runs_dir.glob(".r.staging-*"))
    with pytest.raises(RunFinished):  # any next start on `r` cleans up first
        with runs.open_run(runs_dir / "r", json.loads((runs_dir / "r" / "config.json").read_text()), resume=True):
            pass
    assert sorted(p.name for p in runs_dir.iterdir()) == ["r"]


def test_an_interrupted_swap_is_undone_and_stray_temporary_files_removed(tmp_path):
    old = tmp_path / ".r.old-123"  # killed between the two renames of a swap: the old run is only here
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"command": "train", "edgeprune_version": "0"}))
    (old / ".model.pt.x1.tmp").write_bytes(b"half")
    with runs.open_run(tmp_path / "r", {"command": "train", "edgeprune_version": "0"}, resume=True) as rf:
        assert rf.mode == "resume"
        assert not (tmp_path / "r" / ".model.pt.x1.tmp").exists()
    assert (tmp_path / "r" / "config.json").exists() and not old.exists()


def test_the_lock_is_exclusive_and_released(tmp_path):
    cfg = {"command": "train", "edgeprune_version": "0"}
    with runs.open_run(tmp_path / "r", cfg):
        with pytest.raises(RunBusyError, match="another edgeprune process"):
            with runs.open_run(tmp_path / "r", cfg, overwrite=True):
                pass
    with runs.open_run(tmp_path / "r", cfg, overwrite=True) as rf:
        assert rf.mode == "replace"


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/abs", "a/b", ".hidden", " x", "x\0y"])
def test_run_path_takes_one_plain_folder_name(tmp_path, name):
    with pytest.raises(ConfigError, match="one folder name inside --runs-dir"):
        runs.run_path(tmp_path, name)


def test_runs_dir_that_is_a_file_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "prune_at_init", lambda *a, **k: pytest.fail("pruned before checking the runs folder"))
    (tmp_path / "file").write_text("mine")
    out = _one_line_error(_invoke(*PRUNE, "--runs-dir", tmp_path / "file", "--name", "r"))
    assert "is a file" in out and (tmp_path / "file").read_text() == "mine"


def test_unwritable_runs_dir_fails_before_any_work(monkeypatch):
    monkeypatch.setattr(jobs, "prune_at_init", lambda *a, **k: pytest.fail("pruned before checking the runs folder"))
    out = _one_line_error(_invoke(*PRUNE, "--runs-dir", "/proc/edgeprune-runs", "--name", "r"))  # /proc takes no dirs
    assert "cannot write run files in '/proc/edgeprune-runs'" in out and "--runs-dir" in out


def test_full_disk_fails_before_any_work(tmp_path, monkeypatch):
    """A full disk, simulated: writing the probe file raises ENOSPC as a full file system does."""
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jobs, "prune_at_init", lambda *a, **k: pytest.fail("pruned before checking the runs folder"))
    monkeypatch.setattr(runs.os, "fsync", full)
    out = _one_line_error(_invoke(*PRUNE, "--runs-dir", tmp_path, "--name", "r"))
    assert "No space left on device" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--momentum", "-0.5"], "momentum must be in [0, 1)"),
    (["--weight-decay", "-1e-4"], "weight decay must be a finite number >= 0"),
    (["--weight-decay", "inf"], "weight decay must be a finite number >= 0"),
    (["--rounds", "0"], "rounds must be >= 1"),
    (["--method", "imp", "--levels", "0"], "levels must be >= 1"),
])
def test_bad_training_values_are_one_line(tmp_path, args, message):
    base = PRUNE if args[0] != "--method" else [a for a in PRUNE if a not in ("--sparsity", "0.5")]
    out = _one_line_error(_invoke(*base, *args, "--runs-dir", tmp_path, "--name", "r"))
    assert message in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["rerun", "shrink"])
def test_a_wrong_typed_config_field_is_named(world, command):
    tmp_path, runs_dir, _ = world
    config = runs_dir / "S" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["train"]["epochs"] = "two"
    config.write_text(json.dumps(cfg))
    before = _tree(tmp_path)
    out = _one_line_error(_invoke("-q", command, runs_dir / "S", "--name", "new", "--runs-dir", runs_dir))
    assert "'epochs' is 'two', which is not int" in out
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("content", ["", "{}", "[]"])
def test_compare_on_an_empty_report_is_one_line(world, content):
    tmp_path, runs_dir, _ = world
    (runs_dir / "S" / "report.json").write_text(content)
    out = _one_line_error(_invoke("compare", runs_dir / "S"))
    assert "report.json" in out


def test_an_option_of_another_method_is_refused_naming_the_method(tmp_path):
    out = _one_line_error(_invoke(*PRUNE, "--levels", "2", "--runs-dir", tmp_path, "--name", "r"))
    assert "--levels does not apply to --method magnitude" in out and "--sparsity" in out
    assert list(tmp_path.iterdir()) == []


def test_export_onto_a_folder_is_one_line(world):
    tmp_path, runs_dir, before = world
    out = _one_line_error(_invoke("export", runs_dir / "S", "--onnx", runs_dir / "notes"))
    assert "is a folder" in out
    assert _tree(tmp_path) == before


def test_exporter_chatter_stays_off_stdout(tmp_path, capfd):
    """LeNet-5 at 32×32 makes the TorchScript exporter fail over to dynamo; its C++ side dumped the graph."""
    result = _invoke(*TRAIN, "--runs-dir", tmp_path, "--name", "r")
    assert result.exit_code == 0, result.output
    seen = result.output + "".join(capfd.readouterr())
    assert "graph(" not in seen and "return (%" not in seen


# `prune`'s own flags come from the method registry, whose methods import torch: only prune waits for it.
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"], ["train", "--epochs", "x"],
                                  ["report", "--bogus"]])
def test_cli_answers_without_importing_torch(args):
    code = ("import sys\nfrom edgeprune.cli import main\nsys.argv = ['edgeprune', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


def test_the_thread_count_is_recorded_and_a_resume_keeps_it(tmp_path, interrupt):
    args = [*PRUNE[:-6], "-e", "2", *PRUNE[-4:], "--runs-dir", tmp_path, "--name", "r"]
    interrupt(9)
    assert _invoke(*args, "--threads", "1").exit_code == 130
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["threads"], config["threads_used"]) == ("1", 1)
    result = _invoke(*args, "--threads", "auto", "--resume")  # how to run is not what ran: accepted
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads_used"] == 1
    out = _one_line_error(_invoke(*args, "--threads", "0", "--overwrite"))
    assert "threads must be a positive integer or 'auto', got '0'" in out
