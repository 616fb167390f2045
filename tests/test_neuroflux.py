import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeprune import data, export, models
from edgeprune.cli import app
from edgeprune.errors import CheckpointError, ConfigError, UnsupportedModelError
from edgeprune.models.chain import AuxHead, cut
from edgeprune.neuroflux import memory, plan, watch
from edgeprune.neuroflux import train as nf
from edgeprune.train import TrainConfig


class Branchy(nn.Module):
    """A skip connection outside any module: not a layer sequence."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        a = self.c1(x)
        return self.fc((self.c2(a) + a).mean((2, 3)))


def branchy(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return Branchy(num_classes, in_channels)


@pytest.mark.parametrize(("name", "n_layers"), [("vgg11", 8), ("resnet20", 10), ("lenet5", 2)])
def test_layers_and_classifier_recompose_the_model_exactly(name, n_layers):
    torch.manual_seed(0)
    model = models.create(name, 10, 1).eval()
    chain = cut(model, name)
    assert len(chain.layers) == n_layers
    x = torch.randn(3, 1, 28, 28)
    h = x
    for layer in chain.layers:
        h = layer(h)
    assert torch.equal(chain.classifier(h), model(x))
    # the layers share the model's parameters: training them trains the model
    assert {id(p) for m in (*chain.layers, chain.classifier) for p in m.parameters()} == {
        id(p) for p in model.parameters()}


def test_a_branch_outside_a_module_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match="cannot be cut into a layer sequence at module 'c1'"):
        cut(Branchy(), "branchy")


def test_saved_bytes_are_counted_exactly():
    # conv (saves its input: the batch, counted as input; and its weight: a parameter) -> ReLU (saves its output,
    # 4×8×8 floats) -> mean (saves nothing) -> linear (saves its input, 4 floats) -> cross-entropy (saves the
    # log-softmax, 3 floats, and the int64 target)
    unit = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    c = memory.cost("u", [unit, head], (1, 8, 8), 3)
    assert c.saved_per_sample == 4 * 8 * 8 * 4 + 4 * 4 + 3 * 4 + 8
    assert c.input_per_sample == 8 * 8 * 4 and c.output_per_sample == 4 * 8 * 8 * 4
    assert c.params == (36 + 15) * 4 and c.state == c.params  # momentum: one buffer per parameter
    assert c.persistent == 3 * c.params
    # the peak holds at least everything saved, and grows with the batch by at least that much
    assert c.peak_per_sample >= c.saved_per_sample


def _vgg_block_costs(first: int, stop: int, width: int = 16):
    model = models.create("vgg11", 10, 1)
    chain = cut(model, "vgg11")
    shapes = plan.shapes_of(chain, (1, 28, 28))
    heads = [{"in_channels": shapes[k + 1][0], "width": width, "pool": 2, "hidden": 64} for k in range(first, stop)]
    costs = [memory.cost(chain.names[k], [chain.layers[k], AuxHead(num_classes=10, **h)], shapes[k], 10)
             for k, h in zip(range(first, stop), heads, strict=True)]
    return model.edgeprune_spec.to_dict(), heads, costs


@pytest.mark.parametrize(("first", "stop", "batch"), [(0, 2, 32), (4, 6, 16)])
@pytest.mark.slow
def test_predicted_block_memory_is_within_15_percent_of_a_fresh_process(first, stop, batch):
    spec, heads, costs = _vgg_block_costs(first, stop)
    predicted = memory.block_bytes(costs, batch)
    measured = memory.measure_peak(spec, (1, 28, 28), first, stop, heads, batch)
    assert 0.85 <= predicted / measured <= 1.15, (predicted / 2**20, measured / 2**20)


def test_parse_bytes():
    assert plan.parse_bytes("96MiB") == 96 * 2**20
    assert plan.parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert plan.parse_bytes("200MB") == 200 * 10**6
    assert plan.parse_bytes(4096) == 4096
    for bad in ("ninety", "-5MiB", "0", "12 parsecs"):
        with pytest.raises(ConfigError, match="is not a positive size; write e.g. 96MiB"):
            plan.parse_bytes(bad)


def test_plan_fits_the_budget_with_the_largest_batch_per_block():
    model = models.create("vgg11", 10, 1)
    chain = cut(model, "vgg11")
    budget = 48 * 2**20
    opts = plan.Options()
    p = plan.make(chain, (1, 28, 28), 10, budget, 0.1, 128, opts)
    assert [b.first for b in p.blocks][0] == 0 and p.blocks[-1].stop == len(chain.layers)
    assert all(a.stop == b.first for a, b in zip(p.blocks, p.blocks[1:], strict=False))
    for b in p.blocks:
        costs = p.costs[b.first:b.stop]
        assert memory.block_bytes(costs, b.batch) <= 0.9 * budget  # 10 % headroom for the accountant's error
        assert b.batch == opts.max_batch or memory.block_bytes(costs, b.batch + 8) > 0.9 * budget
        assert b.lr == pytest.approx(0.1 * (b.batch / 128) ** 0.5)
    # heads: narrower where the maps are larger, the last layer exits through the model's own classifier
    widths = [h["width"] for h in p.heads[:-1]]
    assert p.heads[-1] is None and widths[0] < widths[-1] and widths == sorted(widths)


def test_a_budget_below_the_largest_layer_names_it_and_the_minimum():
    chain = cut(models.create("vgg11", 10, 1), "vgg11")
    with pytest.raises(plan.BudgetTooSmall, match=r"below what layer 5 \('features.8.0'\) needs to train at the "
                                                  r"smallest batch \(8\) with 10% headroom: .* at least \d+MiB"):
        plan.make(chain, (1, 28, 28), 10, 20 * 2**20, 0.1, 128, plan.Options())


@pytest.fixture(scope="module")
def fmnist():
    b = data.loaders("fashion-mnist", batch_size=32, subset=256, test_subset=64, val_size=64, augment=False)
    return b.train.dataset, b.val.dataset


def _two_blocks_budget() -> int:
    """A budget at which lenet5's first layer trains at batch 40 alone and the second must train apart (homogeneity
    1: a layer joins a block only where the block's batch stays as it was)."""
    chain = cut(models.create("lenet5", 10, 1), "lenet5")
    costs = plan.make(chain, (1, 28, 28), 10, 2**30, 0.1, 32, plan.Options()).costs
    return int(memory.block_bytes(costs[:1], 40) / 0.9) + 1


def _run(tmp_path, fmnist, resume=False):
    torch.manual_seed(0)
    model = models.create("lenet5", 10, 1)
    settings = nf.Settings(memory_budget=str(_two_blocks_budget()), max_batch=64, val_size=64, homogeneity=1.0)
    return nf.train(model, *fmnist, 10, (1, 28, 28), TrainConfig(epochs=1, lr=0.05), 32, settings, tmp_path,
                    resume=resume)


def test_block_training_caches_resumes_and_saves_the_exit(tmp_path, fmnist, monkeypatch):
    whole = _run(tmp_path / "whole", fmnist)
    assert [(b["first"], b["stop"], b["batch"]) for b in whole.info["plan"]["blocks"]] == [(0, 1, 40), (1, 2, 64)]
    assert set(whole.info["val_accuracy"]) == {0, 1}
    best = max(whole.info["val_accuracy"].values())
    assert whole.info["val_accuracy"][whole.exit] >= best - 0.01
    assert not (tmp_path / "whole" / nf.CACHE).exists()  # the cache is removed once training is done
    _check_memory_record(whole.info["memory"], _two_blocks_budget())

    # interrupted after the first block: its cache is on disk, and resuming does not train it again
    real = nf._train_block
    trained = []

    def stop_at_second(b, *args):
        if b == 1:
            raise KeyboardInterrupt
        return real(b, *args)

    monkeypatch.setattr(nf, "_train_block", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", fmnist)
    cache = tmp_path / "cut" / nf.CACHE
    assert (cache / "train_00.bin").stat().st_size == 256 * 6 * 14 * 14 * 4  # lenet5's 2nd layer input, float32
    monkeypatch.setattr(nf, "_train_block", lambda b, *a: trained.append(b) or real(b, *a))
    resumed = _run(tmp_path / "cut", fmnist, resume=True)
    assert trained == [1]
    assert resumed.exit == whole.exit and resumed.info["val_accuracy"] == whole.info["val_accuracy"]
    _check_memory_record(resumed.info["memory"], _two_blocks_budget())  # block 0's figure read from neuroflux.json
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(resumed.model(x), whole.model(x))

    # the exit is an ordinary model: saved by name, rebuilt bit for bit
    export.save_model(whole.model, tmp_path / "exit.pt")
    again = export.load_model(tmp_path / "exit.pt").eval()
    assert torch.equal(again(x), whole.model(x))


def _check_memory_record(memory: dict, budget: int) -> None:
    """What a run records of the memory it held: the budget's meaning, the baseline, every block's increment."""
    assert memory["budget"] == budget and memory["meaning"].startswith("budget bounds the increment")
    assert memory["allocator"].startswith(f"glibc M_MMAP_THRESHOLD={watch.MMAP_THRESHOLD}")
    assert [b["block"] for b in memory["blocks"]] == [0, 1]
    for b in memory["blocks"]:
        assert 0 <= b["train_peak_increment"] < 4 * budget  # a real measurement: lenet5 blocks hold a few MiB
        assert b["increment_over_budget"] == pytest.approx(b["train_peak_increment"] / budget)
    assert memory["peak_increment"] == max(b["train_peak_increment"] for b in memory["blocks"])
    assert memory["within_budget"] == (memory["peak_increment"] <= budget)
    assert memory["process_peak_rss"] >= memory["baseline_rss"] > 50 * 2**20  # python + torch at least


_HEAP = """
import sys, torch
from edgeprune.neuroflux import watch
if sys.argv[1] == "pin":
    watch.bound_heap()
big = torch.ones(2**20); del big  # 4 MiB freed: glibc's own rule raises its mmap threshold to that
before = watch.status("VmRSS")
t = torch.ones(2**18)  # 1 MiB, touched
held = watch.status("VmRSS")
del t
print(held - before, watch.status("VmRSS") - before)
"""


def test_the_allocator_rule_is_set_in_the_training_process_itself():
    assert watch.bound_heap() == f"glibc M_MMAP_THRESHOLD={watch.MMAP_THRESHOLD} (mallopt, in the training process)"

    def freed(mode: str) -> tuple[int, int]:
        done = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True, check=True)
        return tuple(int(v) for v in done.stdout.split())

    # glibc's default: a freed 1 MiB activation stays resident (the next block's peak lands on top of it) ...
    held, after = freed("default")
    assert held >= 2**19 and after >= held - 2**16
    # ... pinned as the training process pins it: it leaves the resident set when freed
    held, after = freed("pin")
    assert held >= 2**19 and after < 2**16


def test_resume_refuses_another_plan_and_a_lost_cache(tmp_path, fmnist, monkeypatch):
    real = nf._train_block
    monkeypatch.setattr(nf, "_train_block", lambda b, *a: (_ for _ in ()).throw(KeyboardInterrupt) if b == 1
                        else real(b, *a))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, fmnist)
    state = json.loads((tmp_path / nf.STATE).read_text())
    state["plan"]["budget"] += 1
    (tmp_path / nf.STATE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="was planned differently"):
        _run(tmp_path, fmnist, resume=True)
    state["plan"]["budget"] -= 1
    (tmp_path / nf.STATE).write_text(json.dumps(state))
    shutil.rmtree(tmp_path / nf.CACHE)
    with pytest.raises(CheckpointError, match="the cache of block 0 .* is missing"):
        _run(tmp_path, fmnist, resume=True)


def _cli(*args):
    return CliRunner().invoke(app, ["-q", "neuroflux", "-d", "fashion-mnist", "--subset", "256", "--test-subset",
                                    "64", "--val-size", "64", "--measure-runs", "2", *args])


def test_cli_writes_an_ordinary_run_of_the_exit(tmp_path):
    r = _cli("-m", "lenet5", "--memory-budget", "24MiB", "--runs-dir", str(tmp_path), "--name", "nf")
    assert r.exit_code == 0, r.output
    run = tmp_path / "nf"
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == "neuroflux" and report["neuroflux"]["exit"] in (0, 1)
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == "neuroflux" and config["method"]["memory_budget"] == "24MiB"
    # model.onnx is the exit model, in ONNX Runtime as in torch
    model = export.load_model(run / "model.pt").eval()
    x = torch.randn(2, 1, 28, 28)
    sess = export.ort_session(str(run / "model.onnx"))
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(onnx_out, model(x).detach().numpy(), atol=1e-4)
    # reports set it beside backpropagation of its base model, named by its budget
    from edgeprune.report import collect

    row, = collect([run])
    assert (row.model, row.method, row.variant) == ("lenet5", "neuroflux", "budget 24MiB, val_size 64")
    # and Taylor filter pruning starts from it as from a dense run (issue 18: "so prune ... works on it")
    r = CliRunner().invoke(app, ["-q", "prune", "--method", "taylor", "--from", str(run), "--runs-dir", str(tmp_path),
                                 "--name", "nf-taylor", "--step-fraction", "0.5", "--finetune-steps", "2",
                                 "--val-size", "64", "--max-drop", "0", "--measure-runs", "2"])
    assert r.exit_code == 0, r.output
    pruned = json.loads((tmp_path / "nf-taylor" / "report.json").read_text())
    assert pruned["source"] == str(run) and len(pruned["steps"]) >= 2
    assert pruned["steps"][1]["params"] < pruned["steps"][0]["params"]


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "vgg11", "--memory-budget", "8MiB"], r"below what layer \d+ \('features\.\d+\.0'\) needs .* at least "),
    (["-m", "test_neuroflux:branchy", "--memory-budget", "64MiB"], "cannot be cut into a layer sequence at module"),
    (["-m", "lenet5", "--memory-budget", "lots"], "--memory-budget 'lots' is not a positive size"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = _cli(*args, "--runs-dir", str(tmp_path))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in r.output and __import__("re").search(message, text), text


def test_cli_cache_that_does_not_fit_on_disk_names_both_sizes(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(nf.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    r = _cli("-m", "lenet5", "--memory-budget", str(_two_blocks_budget()), "--homogeneity", "1",
             "--runs-dir", str(tmp_path))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "the block-output cache needs 1.4 MiB on disk but" in text and "has 0.0 MiB free" in text, text


def test_sweep_cells_run_neuroflux_with_its_options():
    from edgeprune import sweep

    spec = sweep.SweepSpec.from_dict({
        "name": "nf", "data": {"name": "fashion-mnist", "subset": 256}, "models": ["lenet5"], "dense": True,
        "methods": [{"name": "neuroflux", "memory_budget": ["24MiB", "48MiB"], "exit_tolerance": 0.5}]})
    cells = {c.name: c.cfg for c in sweep.cells(spec)}
    assert sorted(c.command for c in cells.values()) == ["neuroflux", "neuroflux", "train"]
    budgets = sorted(c.method["memory_budget"] for c in cells.values() if c.command == "neuroflux")
    assert budgets == ["24MiB", "48MiB"]
    with pytest.raises(ConfigError, match=r"methods\[0\] \(neuroflux\): --memory-budget 'lots' is not a positive"):
        sweep.SweepSpec.from_dict({"name": "nf", "data": {"name": "fashion-mnist"}, "models": ["lenet5"],
                                   "methods": [{"name": "neuroflux", "memory_budget": "lots"}]})
    with pytest.raises(ConfigError, match="neuroflux.* option"):
        sweep.SweepSpec.from_dict({"name": "nf", "data": {"name": "fashion-mnist"}, "models": ["lenet5"],
                                   "methods": [{"name": "neuroflux", "sparsity": 0.9}]})
