import pytest
import torch
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from edgeprune import runs
from edgeprune.errors import ConfigError
from edgeprune.train import Callback, TrainConfig, TrainingDiverged, evaluate, fit, lr_factor


def _loader(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()  # learnable, 3 classes
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())


def _model():
    from conftest import Tiny

    torch.manual_seed(0)
    return Tiny()


def test_training_learns(tmp_path):
    model, loader = _model(), _loader()
    before = evaluate(model, loader)["loss"]
    hist = fit(model, loader, TrainConfig(epochs=5, lr=0.05), run_dir=tmp_path, progress=False)
    assert hist.last["train_loss"] < before and evaluate(model, loader)["loss"] < before
    assert len((tmp_path / runs.LOG).read_text().splitlines()) == 5


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, schedule="step")
    straight = _model()
    fit(straight, _loader(), cfg, run_dir=tmp_path / "a", progress=False)

    interrupted = _model()

    class Stop(Callback):
        def on_epoch_end(self, model, epoch, record):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, _loader(), cfg, run_dir=tmp_path / "b", progress=False, callbacks=[Stop()])
    # the epoch-2 checkpoint was not written (interrupted in its callback); epoch 1's was
    resumed = _model()
    hist = fit(resumed, _loader(), cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert [r["epoch"] for r in hist.epochs] == [1, 2, 3]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_channels_last_trains_the_same_model_and_hands_it_back_contiguous(tmp_path):
    # "auto" is channels_last on the CPU (faster oneDNN convolutions); the weights it reaches agree with a
    # contiguous run's to rounding, and the model comes back in the usual layout (for export and saving)
    runs_ = {}
    for layout in ("auto", "contiguous"):
        model = _model()
        fit(model, _loader(), TrainConfig(epochs=2, lr=0.05, memory_format=layout), run_dir=tmp_path / layout,
            progress=False)
        assert all(t.is_contiguous() for t in model.state_dict().values())
        saved = torch.load(tmp_path / layout / runs.CHECKPOINT, weights_only=False)
        runs_[layout] = model.state_dict(), saved["memory_format"]
    assert runs_["auto"][1] == "channels_last" and runs_["contiguous"][1] == "contiguous"
    for k, a in runs_["auto"][0].items():
        torch.testing.assert_close(a, runs_["contiguous"][0][k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_checkpoint_from_before_layouts_resumes_contiguous_bit_for_bit(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05, schedule="step")
    contiguous = TrainConfig(**{**cfg.to_dict(), "memory_format": "contiguous"})
    straight = _model()
    fit(straight, _loader(), contiguous, run_dir=tmp_path / "a", progress=False)

    class Stop(Callback):
        def on_epoch_end(self, model, epoch, record):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # epoch 1's checkpoint, stripped of the layout as older versions wrote it
        fit(_model(), _loader(), contiguous, run_dir=tmp_path / "b", progress=False, callbacks=[Stop()])
    ckpt = torch.load(tmp_path / "b" / runs.CHECKPOINT, weights_only=False)
    del ckpt["memory_format"], ckpt["config"]["memory_format"]
    torch.save(ckpt, tmp_path / "b" / runs.CHECKPOINT)
    resumed = _model()
    fit(resumed, _loader(), cfg, run_dir=tmp_path / "b", resume=True, progress=False)  # "auto" now
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_bf16_trains_under_autocast_and_hands_back_an_fp32_model(tmp_path):
    # the forward and backward in bfloat16 (the weights it reaches differ from fp32's by bf16 rounding, not by
    # more), weights, optimiser state and evaluation in fp32; a run resumes only in the precision it started in
    models = {}
    for precision in ("fp32", "bf16"):
        model = _model()
        hist = fit(model, _loader(), TrainConfig(epochs=2, lr=0.05, precision=precision),
                   run_dir=tmp_path / precision, progress=False)
        assert all(t.dtype in (torch.float32, torch.int64) for t in model.state_dict().values())
        saved = torch.load(tmp_path / precision / runs.CHECKPOINT, weights_only=False)
        assert saved["config"]["precision"] == precision
        assert all(s.dtype == torch.float32 for st in saved["optimizer"]["state"].values() for s in st.values()
                   if torch.is_tensor(s) and s.is_floating_point())
        assert hist.last["train_loss"] < 1.2  # learns (ln 3 = 1.10 at chance, a little above on the first batch)
        models[precision] = model.state_dict()
    differ = [k for k, a in models["fp32"].items() if not torch.equal(a, models["bf16"][k])]
    assert "conv.weight" in differ  # autocast was on: bf16 rounding moved the weights
    for k, a in models["fp32"].items():
        torch.testing.assert_close(a.float(), models["bf16"][k].float(), rtol=0.05, atol=0.02, msg=k)
    with pytest.raises(ConfigError, match="precision"):
        fit(_model(), _loader(), TrainConfig(epochs=3, lr=0.05, precision="fp32"), run_dir=tmp_path / "bf16",
            resume=True, progress=False)


def test_resume_refuses_changed_settings(tmp_path):
    fit(_model(), _loader(), TrainConfig(epochs=1), run_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        fit(_model(), _loader(), TrainConfig(epochs=2, lr=0.5), run_dir=tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model, loader = _model(), _loader()
    fit(model, loader, TrainConfig(epochs=1, lr=0.01), run_dir=tmp_path, progress=False)
    good = (tmp_path / runs.CHECKPOINT).read_bytes()
    with torch.no_grad():
        model.fc.weight.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, batch 1") as e:
        fit(model, loader, TrainConfig(epochs=2, lr=0.01), run_dir=tmp_path, progress=False)
    assert "Lower the learning rate" in str(e.value)
    assert (tmp_path / runs.CHECKPOINT).read_bytes() == good


def test_masked_weights_stay_zero_under_momentum_and_weight_decay():
    model = _model()
    mask = (torch.rand_like(model.conv.weight) > 0.5).float()
    prune.custom_from_mask(model.conv, "weight", mask)
    fit(model, _loader(), TrainConfig(epochs=2, lr=0.1, momentum=0.9, weight_decay=1e-2), progress=False)
    assert torch.all(model.conv.weight[mask == 0] == 0)
    assert torch.any(model.conv.weight[mask == 1] != 0)


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"lr": 0}, {"schedule": "linear"}, {"steps_per_epoch": 0},
                                 {"epochs": 2, "warmup_epochs": 3}, {"warmup_epochs": -0.5},
                                 {"memory_format": "nhwc"}, {"precision": "fp16"}])
def test_bad_train_config(bad):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**bad)
    assert str(next(iter(bad.values()))) in str(e.value)


def test_warmup_rises_linearly_then_follows_the_schedule():
    steps = 10
    warm = lr_factor(TrainConfig(epochs=4, schedule="step", warmup_epochs=0.5), steps)
    assert [warm(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert warm(20) == pytest.approx(0.1) and warm(30) == pytest.approx(0.01)  # milestones at 50 % and 75 %
    cosine, plain = (lr_factor(TrainConfig(epochs=4, warmup_epochs=w), steps) for w in (1, 0))
    assert cosine(4) == pytest.approx(0.5 * plain(4))  # the schedule is not delayed by the warm-up
    assert [cosine(t) for t in range(10, 40)] == [plain(t) for t in range(10, 40)]
    assert plain(0) == 1.0


def test_fit_trains_under_the_warmup(tmp_path):
    # 6 batches an epoch, warm-up over both epochs: after epoch 1 the optimiser is at step 7 of 12
    hist = fit(_model(), _loader(), TrainConfig(epochs=2, lr=0.1, warmup_epochs=2, schedule="constant"),
               run_dir=tmp_path, progress=False)
    assert [e["lr"] for e in hist.epochs] == pytest.approx([0.1 * 7 / 12, 0.1])


def test_a_warmup_too_short_to_ramp_is_refused():
    with pytest.raises(ConfigError, match="too few to ramp"):
        lr_factor(TrainConfig(epochs=2, warmup_epochs=0.1), 4)  # 0.4 of a batch: the first step would run at lr
    assert lr_factor(TrainConfig(epochs=2, warmup_epochs=0.5), 4)(0) == pytest.approx(0.5)  # 2 batches
