import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
import yaml

from edgeprune import sweep
from edgeprune.errors import ConfigError
from edgeprune.sweep import run as sweep_run

DATA = {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 32, "batch_size": 16}
RUN_FILES = {"config.json", "model.pt", "model.onnx", "report.json", "log.jsonl"}


def _spec(tmp_path, name="t", **over) -> Path:
    d = {"name": name, "out": str(tmp_path / name), "data": DATA, "models": ["conftest:Tiny"],
         "train": {"epochs": 1, "lr": 0.05}, "measure": {"runs": 2, "warmup": 0, "memory": False},
         "methods": [{"name": "magnitude", "sparsities": [0.5, 0.75]}, {"name": "random", "sparsities": [0.5, 0.75]}],
         **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _statuses(out) -> dict:
    return {k: v["status"] for k, v in json.loads((out / "sweep.json").read_text())["cells"].items()}


def _descends(pid: int, ancestor: int | None = None) -> bool:
    """Whether process `pid` descends from `ancestor` (this process by default), read from /proc."""
    ancestor = os.getpid() if ancestor is None else ancestor
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if pid == ancestor:
            return True
    return False


def _files(folder) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_sweep_runs_every_cell_then_skips_finished_ones_and_redoes_missing_ones(tmp_path):
    path = _spec(tmp_path)
    out = tmp_path / "t"
    summary = sweep.run_sweep(path, progress=False)
    names = ["conftest_Tiny-dense-seed0", "conftest_Tiny-magnitude-0.5-seed0", "conftest_Tiny-magnitude-0.75-seed0",
             "conftest_Tiny-random-0.5-seed0", "conftest_Tiny-random-0.75-seed0"]
    assert list(summary["cells"]) == names
    assert summary["counts"] == {"done": 5} and _statuses(out) == dict.fromkeys(names, "done")
    assert (out / "spec.yaml").read_text() == path.read_text()
    for name in names:
        files = {p.name for p in (out / name).iterdir()}
        assert RUN_FILES <= files and ("masks.pt" in files) == ("dense" not in name)
    report = json.loads((out / names[2] / "report.json").read_text())
    assert report["profile"]["prunable_nonzero"] == round(0.25 * 48)

    before = {name: _files(out / name) for name in names}
    summary = sweep.run_sweep(path, progress=False)
    assert summary["counts"] == {"skipped": 5}
    assert {name: _files(out / name) for name in names} == before  # nothing rewritten

    (out / names[1] / "report.json").unlink()  # interrupted while finishing: its checkpoint is there
    summary = sweep.run_sweep(path, progress=False)
    assert _statuses(out) == {**dict.fromkeys(names, "skipped"), names[1]: "done"}
    assert summary["cells"][names[1]]["resumed"] is True
    assert (out / names[1] / "report.json").exists()
    assert all(_files(out / name) == before[name] for name in names if name != names[1])

    with pytest.raises(ConfigError, match="different train"):  # a finished cell is never silently reused
        sweep.run_sweep(_spec(tmp_path, train={"epochs": 2, "lr": 0.05}), progress=False)


def test_a_failing_cell_is_recorded_and_the_others_finish_without_ray(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # the local executor never needs Ray
    path = _spec(tmp_path, dense=False, methods=[
        {"name": "magnitude", "sparsities": [0.5]},
        {"name": "magnitude", "sparsities": [0.9], "min_layer_density": 0.5},  # fails only when pruning
    ])
    summary = sweep.run_sweep(path, progress=False)
    bad, good = "conftest_Tiny-magnitude-min_layer_density=0.5-0.9-seed0", "conftest_Tiny-magnitude-0.5-seed0"
    assert summary["counts"] == {"done": 1, "failed": 1}
    error = json.loads((tmp_path / "t" / "sweep.json").read_text())["cells"][bad]["error"]
    assert error["type"] == "ConfigError" and "min_layer_density" in error["message"]
    assert (tmp_path / "t" / good / "report.json").exists()
    assert sweep.run_sweep(path, progress=False)["counts"] == {"skipped": 1, "failed": 1}  # failed cells are redone


@pytest.mark.parametrize("change, named, allowed", [
    ({"epochs": 1}, "'epochs'", "methods"),
    ({"methods": [{"name": "synflw", "sparsities": [0.9]}]}, "'synflw'", "synflow"),
    ({"methods": [{"name": "snip", "sparsty": [0.9]}]}, "'sparsty'", "sparsities"),
    ({"methods": [{"name": "imp", "sparsities": [0.9]}]}, "'sparsities'", "rewind_iter"),
    ({"measure": {"run": 2}}, "'run'", "warmup"),
    ({"resources": {"cpu": 2}}, "'cpu'", "gpus"),
    ({"models": [{"name": "resnet20", "dat": {}}]}, "'dat'", "train"),
    ({"models": ["resnet2O"]}, "'resnet2O'", "resnet20"),
    ({"quantize": {"mod": "static"}}, "'mod'", "per_channel"),
    ({"quantize": {"calibration": 0}}, "--calibration 0", "at least 1"),
    ({"quantize": "fp16"}, "'fp16'", "int8"),
])
def test_bad_specs_name_the_key_and_the_allowed_ones_and_write_nothing(tmp_path, change, named, allowed):
    path = _spec(tmp_path, **change)
    for call in (sweep.load_spec, lambda p: sweep.run_sweep(p, progress=False)):
        with pytest.raises(ConfigError) as e:
            call(path)
        assert named in str(e.value) and allowed in str(e.value) and str(path) in str(e.value)
    assert not (tmp_path / "t").exists()


def test_quantize_adds_an_int8_copy_of_every_cell_made_after_it(tmp_path):
    path = _spec(tmp_path, methods=[{"name": "magnitude", "sparsities": [0.5]}],
                 quantize={"mode": "static", "calibration": 8, "per_channel": True})
    out = tmp_path / "t"
    summary = sweep.run_sweep(path, progress=False)
    names = ["conftest_Tiny-dense-seed0", "conftest_Tiny-magnitude-0.5-seed0"]
    assert list(summary["cells"]) == [*names, *(f"{n}-int8" for n in names)]
    assert summary["counts"] == {"done": 4}
    for name in names:
        report = json.loads((out / f"{name}-int8" / "report.json").read_text())
        assert report["profile"]["precision"] == "int8" and report["source"] == str(out / name)
        assert report["quantization"]["calibration_images"] == 8
        ops = {n.op_type for n in onnx.load(out / f"{name}-int8" / "model.onnx").graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: made by ONNX Runtime's static quantisation
    assert sweep.run_sweep(path, progress=False)["counts"] == {"skipped": 4}  # the INT8 cells count as finished
    # the sweep folder moved (another checkout, or carried to another machine): its cells, whose INT8 copies
    # record the absolute path of the run they copy, are still the same finished cells
    out.rename(tmp_path / "moved")
    assert sweep.run_sweep(path, out=tmp_path / "moved", progress=False)["counts"] == {"skipped": 4}


def test_only_runs_the_matching_cells_and_what_they_start_from(tmp_path):
    path = _spec(tmp_path, methods=[{"name": "magnitude", "sparsities": [0.5]},
                                    {"name": "random", "sparsities": [0.5]}], quantize={"calibration": 8})
    out = tmp_path / "t"
    summary = sweep.run_sweep(path, only=["*magnitude*-int8"], progress=False)
    ran = {"conftest_Tiny-magnitude-0.5-seed0", "conftest_Tiny-magnitude-0.5-seed0-int8"}  # the INT8 copy's source
    assert {k for k, v in _statuses(out).items() if v == "done"} == ran
    assert {k for k, v in _statuses(out).items() if v == "not selected"} == {
        "conftest_Tiny-dense-seed0", "conftest_Tiny-random-0.5-seed0", "conftest_Tiny-dense-seed0-int8",
        "conftest_Tiny-random-0.5-seed0-int8"}
    assert summary["counts"] == {"done": 2, "not selected": 4}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(ran)
    assert sweep.run_sweep(path, progress=False)["counts"] == {"skipped": 2, "done": 4}  # the rest, later

    with pytest.raises(ConfigError, match=r"--only 'vgg16-\*' matches no cell.*conftest_Tiny-dense-seed0"):
        sweep.run_sweep(path, only=["vgg16-*"], progress=False)


def test_only_keeps_what_earlier_sweeps_recorded_of_the_cells_it_leaves(tmp_path):
    path = _spec(tmp_path, dense=False, methods=[
        {"name": "magnitude", "sparsities": [0.5]},
        {"name": "magnitude", "sparsities": [0.9], "min_layer_density": 0.5},  # fails only when pruning
    ])
    bad, good = "conftest_Tiny-magnitude-min_layer_density=0.5-0.9-seed0", "conftest_Tiny-magnitude-0.5-seed0"
    assert sweep.run_sweep(path, progress=False)["counts"] == {"done": 1, "failed": 1}
    (tmp_path / "t" / good / "report.json").unlink()  # interrupted while finishing
    summary = sweep.run_sweep(path, only=[good], progress=False)
    assert summary["cells"][good]["status"] == "done" and summary["cells"][good]["resumed"] is True
    left = json.loads((tmp_path / "t" / "sweep.json").read_text())["cells"][bad]
    assert left["status"] == "not selected" and left["earlier"]["status"] == "failed"
    assert "min_layer_density" in left["earlier"]["error"]["message"]


def test_a_cell_finished_since_the_sweep_planned_it_is_not_run_again(tmp_path):
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}])
    sweep.run_sweep(path, progress=False)
    [cell] = sweep.cells(sweep.load_spec(path))
    run_dir = tmp_path / "t" / cell.name
    before = _files(run_dir)
    result = sweep.run_cell(cell, run_dir, resume=False)  # planned fresh, then someone finished it meanwhile
    assert result["status"] == "skipped" and _files(run_dir) == before


def test_an_interrupted_cell_is_not_restarted_on_another_device(tmp_path):
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}],
                 train={"epochs": 2, "lr": 0.05})
    sweep.run_sweep(path, progress=False)
    [cell] = sweep.cells(sweep.load_spec(path))
    run_dir = tmp_path / "t" / cell.name
    (run_dir / "report.json").unlink()  # interrupted: its checkpoint is there
    before = _files(run_dir)
    with pytest.raises(ConfigError, match=r"interrupted while training on cpu; resume it there \(--device cpu\)"):
        sweep.run_sweep(path, device="cuda", progress=False)
    assert _files(run_dir) == before  # nothing thrown away


def test_a_models_device_and_the_device_option(tmp_path):
    # a model entry may name its own device; --device overrides it, and a cell finished on another device (a GPU
    # machine's, brought back) counts as finished here
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}],
                 models=[{"name": "conftest:Tiny", "device": "cuda:0"}])
    [cell] = sweep.cells(sweep.load_spec(path))
    assert cell.cfg.device == "cuda:0"
    out, name = tmp_path / "t", cell.name
    if not torch.cuda.is_available():
        summary = sweep.run_sweep(path, progress=False)
        assert summary["counts"] == {"failed": 1}
        assert "CUDA is not available here" in summary["cells"][name]["error"]["message"]
    assert sweep.run_sweep(path, device="cpu", progress=False)["counts"] == {"done": 1}
    assert json.loads((out / name / "config.json").read_text())["device"] == "cpu"  # where it ran
    assert sweep.run_sweep(path, progress=False)["counts"] == {"skipped": 1}
    for bad in ({"device": "gpu"}, {"models": [{"name": "conftest:Tiny", "device": "cuda0"}]}):
        with pytest.raises(ConfigError, match="must be cpu, cuda, cuda:N, mps or auto"):
            sweep.load_spec(_spec(tmp_path, name="bad", **bad))
    with pytest.raises(ConfigError, match="--device must be cpu, cuda"):
        sweep.run_sweep(path, device="gpu", progress=False)


def test_quantize_skips_per_level_methods_and_waits_for_the_run_it_copies(tmp_path):
    spec = sweep.load_spec(_spec(tmp_path, quantize="int8", methods=[
        {"name": "imp", "levels": 2, "fraction": 0.5}, {"name": "taylor", "max_drop": 1.0}]))
    cells = sweep.cells(spec)
    stages = sweep_run._stages(cells)
    assert {c.name: stages[c.name] for c in cells} == {
        "conftest_Tiny-dense-seed0": 0, "conftest_Tiny-imp-fraction=0.5-levels=2-seed0": 0,
        "conftest_Tiny-taylor-max_drop=1.0-seed0": 1, "conftest_Tiny-dense-seed0-int8": 1,
        "conftest_Tiny-taylor-max_drop=1.0-seed0-int8": 2}


def test_one_at_a_time_each_models_chain_finishes_before_the_next_model_starts(tmp_path):
    # a cheap model's dense run, the Taylor run from it and both INT8 copies come before an expensive model's
    # first cell; Ray gets whole stages (every dense run at once)
    spec = sweep.load_spec(_spec(tmp_path, quantize="int8", models=["resnet20", "vgg16"],
                                 methods=[{"name": "taylor", "max_drop": 1.0}]))
    cells = sweep.cells(spec)
    run = [(c, tmp_path / c.name, False) for c in cells if c.name != "resnet20-dense-seed0"]  # that one finished
    [local] = sweep_run._batches(cells, run, "local")
    assert [r[0].name for r in local] == [
        "resnet20-taylor-max_drop=1.0-seed0", "resnet20-dense-seed0-int8", "resnet20-taylor-max_drop=1.0-seed0-int8",
        "vgg16-dense-seed0", "vgg16-taylor-max_drop=1.0-seed0", "vgg16-dense-seed0-int8",
        "vgg16-taylor-max_drop=1.0-seed0-int8"]
    assert [[r[0].name for r in b] for b in sweep_run._batches(cells, run, "ray")] == [
        ["vgg16-dense-seed0"], ["resnet20-taylor-max_drop=1.0-seed0", "vgg16-taylor-max_drop=1.0-seed0",
                                "resnet20-dense-seed0-int8", "vgg16-dense-seed0-int8"],
        ["resnet20-taylor-max_drop=1.0-seed0-int8", "vgg16-taylor-max_drop=1.0-seed0-int8"]]
    assert sweep_run._batches(cells, [], "local") == []


def test_first_puts_the_matching_cells_and_their_sources_ahead_in_the_order_of_the_patterns(tmp_path):
    spec = sweep.load_spec(_spec(tmp_path, quantize="int8", models=["resnet20", "vgg16"],
                                 methods=[{"name": "taylor", "max_drop": 1.0}, {"name": "snip", "sparsities": [0.9]}]))
    cells = sweep.cells(spec)
    run = [(c, tmp_path / c.name, False) for c in cells]
    ranks = sweep_run._ranks(cells, ["vgg16-snip-*", "vgg16-taylor-*"])
    [local] = sweep_run._batches(cells, run, "local", ranks)
    names = [r[0].name for r in local]
    # the VGG-16 SNIP chain, then the VGG-16 dense chain (its Taylor cell asked for), then ResNet-20's chains as
    # without --first
    assert names[:2] == ["vgg16-snip-0.9-seed0", "vgg16-snip-0.9-seed0-int8"]
    assert names[2:6] == ["vgg16-dense-seed0", "vgg16-taylor-max_drop=1.0-seed0", "vgg16-dense-seed0-int8",
                          "vgg16-taylor-max_drop=1.0-seed0-int8"]
    assert names[6:] == [r[0].name for r in sweep_run._batches(cells, run, "local")[0] if "resnet20" in r[0].name]
    ray_batches = [[r[0].name for r in b] for b in sweep_run._batches(cells, run, "ray", ranks)]
    assert ray_batches[0] == ["vgg16-snip-0.9-seed0", "vgg16-dense-seed0", "resnet20-dense-seed0",
                              "resnet20-snip-0.9-seed0"]
    assert ray_batches[1][:3] == ["vgg16-snip-0.9-seed0-int8", "vgg16-taylor-max_drop=1.0-seed0",
                                  "vgg16-dense-seed0-int8"]
    # no --first: the spec's order, as before
    assert sweep_run._batches(cells, run, "local", sweep_run._ranks(cells, [])) == sweep_run._batches(
        cells, run, "local")
    # within a chain, the cell asked for before its siblings (after its source)
    spec2 = sweep.load_spec(_spec(tmp_path, models=["resnet20"], methods=[
        {"name": "taylor", "max_drop": [1.0, 2.0]}]))
    cells2 = sweep.cells(spec2)
    run2 = [(c, tmp_path / c.name, False) for c in cells2]
    ranks2 = sweep_run._ranks(cells2, ["*max_drop=2.0*"])
    order = ["resnet20-dense-seed0", "resnet20-taylor-max_drop=2.0-seed0", "resnet20-taylor-max_drop=1.0-seed0"]
    assert [r[0].name for r in sweep_run._batches(cells2, run2, "local", ranks2)[0]] == order
    assert [r[0].name for b in sweep_run._batches(cells2, run2, "ray", ranks2) for r in b] == order
    with pytest.raises(ConfigError, match=r"--first 'vgg19-\*' matches no cell.*resnet20-dense-seed0"):
        sweep.run_sweep(_spec(tmp_path, models=["resnet20"]), first=["vgg19-*"], progress=False)
    assert not (tmp_path / "t").exists()


def test_worker_deaths_are_counted_and_never_hide_a_failure_of_the_run_itself():
    died = {"status": "failed", "error": {"type": "WorkerCrashedError", "message": "killed", "worker_died": True}}
    first = sweep_run._with_deaths(died, {"status": "interrupted"})
    assert first["error"]["worker_died"] is True and first["error"]["worker_deaths"] == 1
    second = sweep_run._with_deaths(died, first)
    assert second["error"]["worker_deaths"] == 2 and second["error"]["worker_died"] is True
    third = sweep_run._with_deaths(died, second)  # it keeps dying: the next sweep starts it again
    assert third["error"]["worker_died"] is False and "died 3 times in a row" in third["error"]["message"]
    # a cell that diverged and was being redone elsewhere keeps its own failure: nothing of its to resume
    diverged = {"status": "failed", "error": {"type": "TrainingDiverged", "message": "loss became nan"}}
    assert sweep_run._with_deaths(died, diverged)["error"] == diverged["error"]
    done = {"status": "done", "error": None}
    assert sweep_run._with_deaths(done, diverged) == done


def test_cells_expand_option_lists_and_seeds_with_stable_names(tmp_path):
    spec = sweep.load_spec(_spec(tmp_path, models=["resnet20", {"name": "vgg16", "data": {"size": 8}}], seeds=[0, 1],
                                 methods=[
        {"name": "reconvene", "conversion": ["width", "dead"], "criterion": ["magnitude", "synflow"],
         "sparsities": [0.9]}]))
    cells = sweep.cells(spec)
    assert [c.name for c in cells[:5]] == ["resnet20-dense-seed0", "resnet20-reconvene-magnitude-width-0.9-seed0",
                                           "resnet20-reconvene-magnitude-dead-0.9-seed0",
                                           "resnet20-reconvene-synflow-width-0.9-seed0",
                                           "resnet20-reconvene-synflow-dead-0.9-seed0"]
    assert len(cells) == 20 and [c.cfg.train.seed for c in cells] == ([0] * 5 + [1] * 5) * 2
    assert cells[0].cfg.data == DATA and cells[10].cfg.data == {**DATA, "size": 8}
    assert cells[10].name == "vgg16-dense-seed0" and cells[10].cfg.train.epochs == 1
    assert cells[2].cfg.command == "prune" and cells[2].cfg.method == {
        "name": "reconvene", "criterion": "magnitude", "conversion": "dead", "sparsity": 0.9}
    assert cells[0].cfg.command == "train" and cells[0].cfg.measure.runs == 2


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_terminated_sweep_marks_its_cell_interrupted_and_the_same_command_resumes_it(tmp_path, executor):
    """`kill PID` of a background `edgeprune sweep` (a real process): it exits 143 naming the cell it stopped,
    sweep.json says "interrupted" instead of "running", and running the same command resumes that cell. Under
    Ray too, which installs its own SIGTERM handler and re-raises a handler's exception as a plain
    KeyboardInterrupt."""
    if executor == "ray":
        pytest.importorskip("ray")
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}],
                 train={"epochs": 400, "lr": 0.05})
    [cell] = sweep.cells(sweep.load_spec(path))
    out, tests = tmp_path / "t", Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(sweep.__file__).parents[2]), str(tests)])}
    command = [sys.executable, "-m", "edgeprune", "--quiet", "sweep", str(path), "--executor", executor,
               *(["--num-cpus", "1"] if executor == "ray" else [])]
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / cell.name / "log.jsonl").exists() or _statuses(out).get(cell.name) != "running":
            assert proc.poll() is None and time.monotonic() < deadline, "the cell never finished an epoch"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert f"1 cell(s) stopped mid-run ({cell.name}); the same sweep command resumes them" in err
    assert _statuses(out) == {cell.name: "interrupted"}
    assert not (out / cell.name / "report.json").exists()

    done = subprocess.run(command, env=env, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["cells"][cell.name]["status"] == "done" and summary["cells"][cell.name]["resumed"] is True


def test_a_cell_stopped_after_pruning_resumes_in_place_from_its_pruning_result(tmp_path):
    # killed between pruning and its first checkpoint (a Ray worker cancelled): the folder holds config.json and
    # pruned.pt. Resumed in place, its next checkpoints land where the next stop keeps them; started again as a
    # replacement, it would train in a staging copy that a stop discards whole, every time
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}])
    sweep.run_sweep(path, progress=False)
    [cell] = sweep.cells(sweep.load_spec(path))
    run_dir = tmp_path / "t" / cell.name
    for p in run_dir.iterdir():
        if p.name not in ("config.json", "pruned.pt", "masks.pt"):
            p.unlink()
    pruned = _files(run_dir)["pruned.pt"]
    summary = sweep.run_sweep(path, progress=False)
    assert summary["cells"][cell.name]["status"] == "done" and summary["cells"][cell.name]["resumed"] is True
    assert _files(run_dir)["pruned.pt"] == pruned  # restored, not pruned again
    assert not list((tmp_path / "t").glob(".*staging*"))


def test_a_failed_cell_stopped_while_being_redone_stays_failed_so_it_starts_again(tmp_path, monkeypatch):
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}],
                 train={"epochs": 2, "lr": 0.05})
    sweep.run_sweep(path, progress=False)
    [cell] = sweep.cells(sweep.load_spec(path))
    out = tmp_path / "t"
    (out / cell.name / "report.json").unlink()  # it failed after its epochs: the checkpoint is there
    state = json.loads((out / "sweep.json").read_text())
    failure = {"status": "failed", "error": {"type": "OSError", "message": "disk full", "traceback": ""}}
    state["cells"][cell.name].update(failure)
    (out / "sweep.json").write_text(json.dumps(state))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the failed cell is being redone from scratch
    monkeypatch.setattr(sweep_run.executors.jobs, "run", stopped)
    with pytest.raises(KeyboardInterrupt) as caught:
        sweep.run_sweep(path, progress=False)
    assert f"1 cell(s) stopped mid-run ({cell.name})" in caught.value.__notes__[0]
    recorded = json.loads((out / "sweep.json").read_text())["cells"][cell.name]
    assert recorded["status"] == "failed" and recorded["error"] == failure["error"]
    # so the next run starts it again instead of resuming the failed run's checkpoint
    assert sweep_run._plan(cell, out / cell.name, recorded) == "fresh"
    assert sweep_run._plan(cell, out / cell.name, {"status": "interrupted"}) == "resume"
    # a cell whose Ray worker died under it (killed, out of memory) raised nothing itself: it resumes
    died = {"status": "failed", "error": {"type": "WorkerCrashedError", "message": "", "worker_died": True}}
    assert sweep_run._plan(cell, out / cell.name, died) == "resume"


def test_a_gpu_device_on_ray_needs_gpus_only_for_cells_still_to_run(tmp_path, monkeypatch):
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5]}])
    monkeypatch.setitem(sys.modules, "ray", None)  # what is refused is refused before Ray starts
    with pytest.raises(ConfigError, match="device 'cuda' needs a GPU per cell: set resources.gpus"):
        sweep.run_sweep(path, executor="ray", device="cuda", progress=False)
    sweep.run_sweep(path, progress=False)  # finished here: nothing left that needs a GPU
    with pytest.raises(ConfigError, match=r"pip install 'edgeprune\[ray\]'"):
        sweep.run_sweep(path, executor="ray", device="cuda", progress=False)


@pytest.mark.slow
def test_ray_executor_makes_the_same_run_folders(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    methods = [{"name": "magnitude", "sparsities": [0.5, 0.75]}]
    local = sweep.run_sweep(_spec(tmp_path, "a", dense=False, methods=methods), progress=False)
    seen = []  # sweep.json as each record landed
    monkeypatch.setattr(sweep_run.files, "write_json", lambda path, data, _w=sweep_run.files.write_json: (
        seen.append({k: v["status"] for k, v in data["cells"].items()}), _w(path, data))[-1])
    remote = sweep.run_sweep(_spec(tmp_path, "b", dense=False, methods=methods), executor="ray", num_cpus=2,
                             progress=False)
    assert remote["counts"] == local["counts"] == {"done": 2}
    for name in local["cells"]:  # each cell was marked running while it ran, as the local executor does
        assert [s[name] for s in seen if s[name] != "pending"][0] == "running"
    for name in local["cells"]:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        assert {p.name for p in a.iterdir()} == {p.name for p in b.iterdir()}
        ma, mb = (torch.load(d / "masks.pt", weights_only=True) for d in (a, b))
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert _statuses(tmp_path / "b") == dict.fromkeys(local["cells"], "done")


@pytest.mark.slow
def test_ray_starts_the_first_cells_first(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    path = _spec(tmp_path, dense=False, methods=[{"name": "magnitude", "sparsities": [0.5, 0.75]},
                                                 {"name": "random", "sparsities": [0.5, 0.75]}])
    started = []  # the order in which cells were marked running; one CPU runs one cell at a time
    monkeypatch.setattr(sweep_run.files, "write_json", lambda path, data, _w=sweep_run.files.write_json: (
        started.extend(k for k, v in data["cells"].items() if v["status"] == "running" and k not in started),
        _w(path, data))[-1])
    sweep.run_sweep(path, executor="ray", num_cpus=1, first=["*random-0.75*", "*magnitude-0.75*"], progress=False)
    assert started == ["conftest_Tiny-random-0.75-seed0", "conftest_Tiny-magnitude-0.75-seed0",
                       "conftest_Tiny-magnitude-0.5-seed0", "conftest_Tiny-random-0.5-seed0"]


@pytest.mark.slow
def test_a_cell_whose_ray_worker_dies_is_not_retried_and_resumes_next_time(tmp_path):
    pytest.importorskip("ray")
    import threading

    path = _spec(tmp_path, dense=False, models=["conftest:SlowTiny"], train={"epochs": 40, "lr": 0.05},
                 methods=[{"name": "magnitude", "sparsities": [0.5]}])
    out = tmp_path / "t"
    [cell] = sweep.cells(sweep.load_spec(path))
    log, killed = out / cell.name / "log.jsonl", []

    def kill_the_worker():  # once it has checkpointed an epoch: SIGKILL, as the kernel's OOM killer would
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.1)
        for proc in Path("/proc").glob("[0-9]*"):
            try:  # this test's cell only: a worker of the Ray instance this process started, not another sweep's
                if proc.joinpath("cmdline").read_bytes().startswith(b"ray::_ray_cell") and _descends(int(proc.name)):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
            except OSError:
                pass

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    summary = sweep.run_sweep(path, executor="ray", num_cpus=1, progress=False)
    killer.join()
    assert killed and summary["counts"] == {"failed": 1}  # recorded once, not started again by Ray
    error = summary["cells"][cell.name]["error"]
    assert error["worker_died"] is True
    epochs = len(log.read_text().splitlines())
    assert 1 <= epochs < 40
    summary = sweep.run_sweep(path, progress=False)  # the next sweep goes on from the last checkpoint
    assert summary["cells"][cell.name]["status"] == "done" and summary["cells"][cell.name]["resumed"] is True
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(range(1, 41))


@pytest.mark.timeout(120)  # a hang fails here; how fast it fails is not a unit test's business
def test_an_unreachable_ray_address_fails_fast(tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="127.0.0.1:1"):
        sweep.run_sweep(_spec(tmp_path), executor="ray", address="127.0.0.1:1", connect_timeout=2, progress=False)
    assert not (tmp_path / "t").exists()


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'edgeprune\[ray\]'"):
        sweep.run_sweep(_spec(tmp_path), executor="ray", progress=False)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "specs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_committed_benchmark_specs_are_valid(path):
    """The benchmark results are made from these specs: each must parse, and its comment must say how to
    run it and how many cells it has."""
    spec = sweep.load_spec(path)
    cells = sweep.cells(spec)
    assert cells and len({c.name for c in cells}) == len(cells)
    assert f"edgeprune sweep benchmarks/specs/{path.name}" in path.read_text()
    if spec.name == "reconvene":  # every Reconvene cell has its unstructured counterpart in the grid
        names = {c.name for c in cells}
        for c in cells:
            if c.cfg.method.get("name") == "reconvene":
                m = c.cfg.method
                assert f"{c.cfg.model}-{m['criterion']}-{m['sparsity']}-seed0" in names
        assert {c.cfg.train.lr for c in cells if c.cfg.model == "vgg16"} == {0.02}
