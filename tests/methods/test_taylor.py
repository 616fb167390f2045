"""Taylor filter pruning from a trained run: the criterion is Molchanov's, the steps remove the globally
lowest channels physically, the validation split is carved from unseen training samples, and bad input is
one line, exit 2, with the source run untouched."""

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from conftest import Tiny, small_vgg
from torch import nn
from typer.testing import CliRunner

from edgeprune import data, export, measure, models, structure
from edgeprune.cli import app
from edgeprune.errors import ConfigError
from edgeprune.measure import PRUNABLE
from edgeprune.scores import taylor as criteria
from edgeprune.surgery import materialize

runner = CliRunner()
SYNTH = ["-m", "conftest:small_vgg", "-d", "synthetic", "-b", "32", "--measure-runs", "2", "--threads", "1"]
QUICK = ["--val-size", "128", "--finetune-steps", "2", "--step-fraction", "0.25", "--measure-runs", "2",
         "--threads", "1"]


class Shuffled(nn.Module):
    """Two convs with a channel shuffle between them (view, transpose, reshape): surgery refuses it."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.a, self.b = nn.Conv2d(in_channels, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


def shuffled(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return Shuffled(num_classes, in_channels)


def test_the_activation_criterion_is_molchanovs_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model, x, y = Tiny().train(), torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    scores = criteria.activation_taylor(model, [(x, y)], 1)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()  # by hand: |mean over positions of z·dL/dz| per example, averaged, L2-normalised per layer
    z = model.conv(x)
    z.retain_grad()
    F.cross_entropy(model.fc(torch.relu(model.bn(z)).mean((2, 3))), y).backward()
    theta = (z * z.grad).mean((2, 3)).abs().mean(0)
    assert torch.allclose(scores[model.conv].float(), theta / theta.norm(), atol=1e-6)
    assert scores[model.fc].norm().item() == pytest.approx(1.0)


def test_a_step_removes_the_lowest_channels_across_layers_and_every_layer_keeps_one():
    model = small_vgg()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    scores = {m: torch.ones(m.out_channels, dtype=torch.float64) for m in convs}
    scores[convs[0]][[3, 5]] = torch.tensor([0.01, 0.02], dtype=torch.float64)
    scores[convs[1]][7] = 0.015
    x = torch.zeros(1, 1, 8, 8)
    keep = structure.global_keep(model, x, 3, criteria.ActivationTaylorImportance(scores))
    assert keep == {"0": [i for i in range(16) if i not in (3, 5)], "3": [i for i in range(32) if i != 7]}
    floor = structure.global_keep(model, x, 10**6, criteria.ActivationTaylorImportance(scores))
    assert {n: len(k) for n, k in floor.items()} == {"0": 1, "3": 1, "7": 1, "10": 1}


@pytest.mark.parametrize(("factor", "goes"), [(0.999, ("3", 7)), (1.001, ("0", None))])
def test_per_mac_ranks_by_score_over_the_work_a_channel_costs(factor, goes):
    """small_vgg at 8x8: a channel of conv 0 costs 9·1·64 MACs of its own and 9·32·64 of conv 3's, one of
    conv 3 costs 9·16·64 + conv 7's 9·32·16 (after the pool); a conv 3 channel scored just below (above)
    13824/19008 of conv 0's goes first (second)."""
    model = small_vgg()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    scores = {m: torch.ones(m.out_channels, dtype=torch.float64) for m in convs}
    scores[convs[1]][7] = factor * (9 * 16 * 64 + 9 * 32 * 16) / (9 * 1 * 64 + 9 * 32 * 64)
    macs = {m: measure.layer_macs(model, (1, 8, 8))[n] for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    per_mac = criteria.PerMacImportance(criteria.ActivationTaylorImportance(scores), macs)
    keep = structure.global_keep(model, torch.zeros(1, 1, 8, 8), 1, per_mac)
    layer, channel = goes  # conv 0's channels tie: one of them
    assert list(keep) == [layer] and len(keep[layer]) == scores[convs[0 if layer == "0" else 1]].numel() - 1
    assert channel is None or channel not in keep[layer]


def test_round_to_removes_whole_quanta_when_their_last_channel_comes_up():
    model = small_vgg()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    scores = {m: torch.ones(m.out_channels, dtype=torch.float64) for m in convs}
    scores[convs[0]][:4] = torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64)
    scores[convs[1]][7] = 0.015
    x, imp = torch.zeros(1, 1, 8, 8), criteria.ActivationTaylorImportance(scores)
    assert structure.global_keep(model, x, 3, imp, round_to=4) == {"0": list(range(4, 16))}
    assert structure.global_keep(model, x, 2, imp) == {"0": list(range(1, 16)), "3": [i for i in range(32) if i != 7]}
    floor = structure.global_keep(model, x, 10**6, imp, round_to=8)
    assert {n: len(k) for n, k in floor.items()} == {"0": 8, "3": 8, "7": 8, "10": 8}
    with pytest.raises(ConfigError, match="round_to must be a positive integer, got 0"):
        structure.global_keep(model, x, 3, imp, round_to=0)


def test_on_a_residual_network_the_count_lands_exactly():
    torch.manual_seed(0)
    model, x = models.create("resnet20", num_classes=10).eval(), torch.zeros(1, 3, 32, 32)
    before = structure.removable_channels(model, x)
    keep = structure.global_keep(model, x, 40, tp.importance.GroupMagnitudeImportance())
    materialize(model, keep, x, strict=True)
    assert structure.removable_channels(model, x) == before - 40


def test_the_validation_split_is_carved_from_training_samples_the_same_subset_never_holds():
    plain = data.loaders("synthetic", subset=300, seed=3)
    carved = data.loaders("synthetic", subset=300, val_size=100, seed=3)
    train, val = carved.train.dataset.indices, carved.val.dataset.indices
    assert train == plain.train.dataset.indices and len(val) == 100 and not set(train) & set(val)
    with pytest.raises(ConfigError, match="subset 500 and val_size 100 together ask more than the 512"):
        data.loaders("synthetic", subset=500, val_size=100)


def _tree(path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["-q", "train", *SYNTH, "--subset", "256", "-e", "1", "--runs-dir", str(runs_dir),
                                 "--name", "dense"])
    assert result.exit_code == 0, result.output
    return runs_dir / "dense"


def _taylor(dense, tmp_path, *extra):
    return runner.invoke(app, ["-q", "prune", "--method", "taylor", "--from", str(dense), *QUICK, *extra,
                               "--runs-dir", str(tmp_path), "--name", "t"], env={"COLUMNS": "300"})


def test_taylor_records_every_step_and_keeps_the_last_within_the_drop(dense, tmp_path):
    source = _tree(dense)
    result = _taylor(dense, tmp_path, "--max-drop", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    steps, kept = report["steps"], report["kept_step"]
    assert [s["step"] for s in steps] == list(range(len(steps))) and len(steps) >= 2
    assert all(s["drop_points"] <= 0 for s in steps[1:kept + 1])
    assert kept == len(steps) - 1 or steps[kept + 1]["drop_points"] > 0  # the first step over the drop is undone
    assert report["profile"]["params"] == steps[kept]["params"] and steps[0]["params"] > steps[-1]["params"]
    assert report["source"] == str(dense) and report["validation"]["samples"] == 128
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["method"]["source"] == str(dense) and config["model"] == "conftest:small_vgg"
    assert config["data"] == json.loads((dense / "config.json").read_text())["data"]
    assert _tree(dense) == source


def test_an_interrupted_run_resumes_after_its_last_checkpointed_step(dense, tmp_path, monkeypatch):
    from edgeprune.methods import taylor

    assert _taylor(dense, tmp_path / "whole", "--max-drop", "100").exit_code == 0
    whole = json.loads((tmp_path / "whole" / "t" / "report.json").read_text())["steps"]
    assert len(whole) >= 4
    real, calls = taylor.finetune, []

    def interrupted(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(taylor, "finetune", interrupted)
    result = _taylor(dense, tmp_path, "--max-drop", "100")
    assert result.exit_code == 130 and not (tmp_path / "t" / "report.json").exists()
    saved = export.load(tmp_path / "t" / "checkpoint.pt")[1]["taylor"]["steps"]
    assert [s["step"] for s in saved] == [0, 1, 2]
    monkeypatch.setattr(taylor, "finetune", lambda *args, **kwargs: calls.append(args[4]) or real(*args, **kwargs))
    result = _taylor(dense, tmp_path, "--max-drop", "100", "--resume")
    assert result.exit_code == 0, result.output
    assert calls == [1, 2, 3, *range(3, len(whole))]  # step 3 again (it was cut short), steps 1-2 never redone
    steps = json.loads((tmp_path / "t" / "report.json").read_text())["steps"]
    assert [s["params"] for s in steps] == [s["params"] for s in whole]
    assert steps[:3] == saved  # the steps before the interruption, as recorded then


def test_a_parameter_budget_stops_at_the_first_step_that_meets_it(dense, tmp_path):
    assert _taylor(dense, tmp_path / "free", "--max-drop", "100").exit_code == 0
    steps = json.loads((tmp_path / "free" / "t" / "report.json").read_text())["steps"]
    result = _taylor(dense, tmp_path, "--max-drop", "100", "--target-params", str(steps[2]["params"] + 1))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["kept_step"] == 2 and len(report["steps"]) == 3 and report["target_met"] is True
    assert report["profile"]["params"] == steps[2]["params"]


@pytest.mark.parametrize(("args", "message"), [
    (["--max-drop", "-1"], "max_drop must be >= 0 points of accuracy (e.g. 1 for one point), got -1.0"),
    (["--target-params", "10"], "params 10 parameters cannot be met: with one channel left in every prunable layer"),
    (["-e", "3", "--lr", "0.5"], "--epochs, --lr does not apply with --from"),
    (["--sparsity", "0.5"], "--sparsity does not apply to --method taylor"),
])
def test_bad_input_is_one_line_exit_2_and_the_source_is_untouched(dense, tmp_path, args, message):
    source = _tree(dense)
    result = _taylor(dense, tmp_path, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and _tree(dense) == source


def test_a_run_that_is_not_trained_is_refused(dense, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((dense / "config.json").read_text())
    for source, message in ((unfinished, "is not trained yet (no report.json)"),
                            (tmp_path / "nothing", "is not a run folder (no config.json)")):
        result = _taylor(source, tmp_path)
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, ["prune", "--method", "synflow", "--from", str(dense), *SYNTH])
    assert result.exit_code == 2 and "--from applies to methods that start from a trained run (taylor)" in result.output
    result = runner.invoke(app, ["prune", "--method", "taylor", *SYNTH])
    assert result.exit_code == 2 and "--method taylor starts from a trained run: pass --from RUN" in result.output


def test_a_dense_run_that_saw_every_training_sample_and_a_model_surgery_refuses_are_refused(tmp_path):
    for name, model, subset in (("all", "conftest:small_vgg", []), ("shuffle", "test_taylor:shuffled", ["--subset",
                                                                                                       "256"])):
        args = ["-q", "train", *SYNTH, "-m", model, *subset, "--runs-dir", str(tmp_path), "--name", name]
        assert runner.invoke(app, args).exit_code == 0
    source = _tree(tmp_path / "all")
    result = _taylor(tmp_path / "all", tmp_path)
    assert result.exit_code == 2 and "trained on every training sample" in result.output, result.output
    assert _tree(tmp_path / "all") == source
    source = _tree(tmp_path / "shuffle")
    result = _taylor(tmp_path / "shuffle", tmp_path)
    assert result.exit_code == 2 and "torch-pruning" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and _tree(tmp_path / "shuffle") == source


def test_a_sweep_starts_taylor_from_the_dense_cell_of_its_model_and_seed(tmp_path):
    import yaml

    from edgeprune.report import collect
    from edgeprune.report.plots import steps_figure
    from edgeprune.sweep import load_spec, run_sweep

    spec = {"name": "t", "out": str(tmp_path / "t"), "models": ["conftest:small_vgg"], "seeds": [0],
            "data": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 256, "subset": 128,
                     "batch_size": 32},
            "train": {"epochs": 1}, "measure": {"runs": 2, "warmup": 0, "memory": False},
            "methods": [{"name": "taylor", "val_size": 64, "finetune_steps": 1, "step_fraction": 0.5,
                         "max_drop": 100}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    summary = run_sweep(tmp_path / "t.yaml")
    assert summary["counts"] == {"done": 2}, summary["cells"]
    dense = tmp_path / "t" / "conftest_small_vgg-dense-seed0"
    cell, = (tmp_path / "t").glob("conftest_small_vgg-taylor-*-seed0")
    taylor = json.loads((cell / "report.json").read_text())
    assert taylor["source"] == str(dense) and len(taylor["steps"]) >= 2
    rows = {r.method: r for r in collect([tmp_path / "t"])}
    assert rows["taylor-activation"].variant.startswith("activation Taylor") and "dense" in rows
    assert rows["taylor-activation"].steps == taylor["steps"]
    assert steps_figure(rows["taylor-activation"]).png.startswith(b"\x89PNG")
    spec["dense"] = False
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"methods\[0\] \(taylor\) starts from a trained run: set dense: true"):
        load_spec(tmp_path / "t.yaml")


def test_a_dense_run_that_held_out_the_same_validation_split_is_accepted(tmp_path):
    from dataclasses import replace

    from edgeprune import jobs

    held = {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 256, "batch_size": 32, "val_size": 64}
    cfg = jobs.RunConfig(command="train", model="conftest:small_vgg", data=held, threads=1,
                         measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False))
    jobs.train(cfg, tmp_path / "dense")
    method = {"name": "taylor", "source": str(tmp_path / "dense"), "val_size": 64, "finetune_steps": 1,
              "step_fraction": 0.5, "max_drop": 100}
    report = jobs.prune(replace(cfg, command="prune", method=method), tmp_path / "t")
    assert report.details["validation"]["samples"] == 64 and len(report.details["steps"]) >= 2
    with pytest.raises(ConfigError, match="trained on every training sample"):
        jobs.prune(replace(cfg, command="prune", method={**method, "val_size": 32}), tmp_path / "u")
