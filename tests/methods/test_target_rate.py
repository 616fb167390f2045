import pytest
import torch
from conftest import Tiny, prune_config

from edgeprune import jobs, masks, runs
from edgeprune.errors import ConfigError
from edgeprune.methods.target_rate import TargetRateOptions, Trainer
from edgeprune.train import TrainConfig

PRUNABLE = 36 + 12  # conftest.Tiny's conv and fc weights


def _cfg(epochs=3, **method):
    method = {"name": "target_rate", "target_compression": 4.0, "interval": 2, "min_layer_density": 0, **method}
    return prune_config(method, epochs)


@pytest.mark.parametrize("scheme", ["gsm", "agp"])
def test_one_run_lands_exactly_on_the_compression_target(tmp_path, scheme):
    report = jobs.prune(_cfg(scheme=scheme), tmp_path / "t", progress=False)
    assert report.profile.prunable_nonzero == PRUNABLE // 4
    saved = torch.load(tmp_path / "t" / "masks.pt", weights_only=True)
    assert sum(int(m.sum()) for m in saved.values()) == PRUNABLE // 4
    updates = report.details["mask_updates"]
    assert updates == 1 if scheme == "gsm" else updates > 3  # agp: every 2nd of 12 steps, and the end


def test_agp_resumes_exactly_with_the_masks_it_had(tmp_path, interrupt):
    jobs.prune(_cfg(scheme="agp"), tmp_path / "straight", progress=False)
    interrupt(9)  # 4 steps an epoch: masks applied at steps 2..8, checkpointed after epoch 2
    with pytest.raises(KeyboardInterrupt):
        jobs.prune(_cfg(scheme="agp"), tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / runs.MASKS).exists() and not (tmp_path / "cut" / runs.REPORT).exists()
    jobs.prune(_cfg(scheme="agp"), tmp_path / "cut", resume=True, progress=False)
    assert (tmp_path / "cut" / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()


def test_gsm_keeps_the_loss_gradient_of_the_top_q_only_and_decays_the_rest():
    torch.manual_seed(0)
    model = Tiny()
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    grads = {n: model.get_parameter(n).grad.clone() for n in ("conv.weight", "fc.weight")}
    opts = TargetRateOptions(target_compression=4.0, decay=0.1)
    trainer = Trainer(opts, TrainConfig(epochs=1), [None] * 4, (1, 8, 8), saved=lambda m, i: None)
    trainer.on_step_begin(model, 1)
    taylor = {n: (model.get_parameter(n) * g).abs() for n, g in grads.items()}
    top = masks.select(taylor, 0.25)
    assert sum(int(t.sum()) for t in top.values()) == PRUNABLE // 4
    for n, g in grads.items():
        w = model.get_parameter(n).detach()
        torch.testing.assert_close(model.get_parameter(n).grad, torch.where(top[n].bool(), g, 0.1 * w))


@pytest.mark.parametrize("bad, message", [
    ({"target_compression": 1.0}, "target_compression must be > 1"),
    ({"scheme": "cubic"}, "scheme must be one of gsm, agp, got 'cubic'"),
    ({"ramp": 0}, "ramp must be in \\(0, 1\\]"),
    ({"structured": True, "scheme": "agp", "channel_importance": "taylor"}, "channel_importance taylor needs the gsm"),
    ({"structured": True, "channel_importance": "gamma"}, "channel_importance must be one of taylor, bn_scale"),
])
def test_bad_options_are_one_line_errors_before_anything_is_written(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        jobs.prune(_cfg(**bad), tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_gsm_default_decay_shrinks_a_weight_outside_the_top_q_1000x_over_the_run(schedule):
    # the decay alone, through the run's own optimiser and schedule: what a weight never in the top Q meets
    from edgeprune.methods.target_rate import RESIDUAL, auto_decay
    from edgeprune.train import lr_factor

    cfg = TrainConfig(epochs=3, lr=0.1, schedule=schedule)
    decay = auto_decay(cfg, 50)
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, 50))
    for _ in range(150):
        w.grad = decay * w.detach().clone()
        opt.step()
        sched.step()
    assert abs(float(w)) <= RESIDUAL
    assert 1e-3 < decay < 1  # not the grid's end: the run's schedule decides it


def _structured(scheme, tmp_path, **extra):
    import dataclasses
    import json

    cfg = _cfg(structured=True, scheme=scheme, target_compression=4.0, **extra)
    cfg = dataclasses.replace(cfg, model="resnet20", data={**cfg.data, "shape": (1, 16, 16)})
    jobs.prune(cfg, tmp_path / scheme, progress=False)
    return json.loads((tmp_path / scheme / runs.REPORT).read_text()), tmp_path / scheme


@pytest.mark.parametrize("scheme", ["gsm", "agp"])
def test_structured_lands_on_the_target_with_a_physically_smaller_model_equal_to_the_masked_one(scheme, tmp_path):
    from edgeprune import export, models

    report, run = _structured(scheme, tmp_path)
    landed = report["structured"]
    dense = sum(m.weight.numel() for m in models.create("resnet20", 3, 1).modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    model, _ = export.load(run / "model.pt")
    kept = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert landed["cost"] == kept and landed["dense"] == dense
    assert abs(dense / kept / 4.0 - 1) <= 0.02  # channels go in quanta of round_to (4): within 2 % here
    assert landed["counted"] == landed["cost"]  # the count the budget was bisected on is the model's
    assert landed["max_abs_error"] < 1e-4  # the removal changed nothing: cut channels output exactly 0
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths) and sum(widths) < 16 * 7 + 32 * 6 + 64 * 6


def test_macs_compression_needs_structured_and_lands_on_macs(tmp_path):
    from edgeprune import export, measure

    with pytest.raises(ConfigError, match="macs_compression needs structured"):
        jobs.prune(_cfg(macs_compression=3.0), tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()
    report, run = _structured("agp", tmp_path, macs_compression=3.0, round_to=1)  # single channels: lands closer
    model, _ = export.load(run / "model.pt")
    assert report["structured"]["cost"] == measure.count_macs(model, (1, 16, 16))[0]
    assert abs(report["structured"]["ratio"] / 3.0 - 1) <= 0.01
