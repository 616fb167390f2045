import json

import pytest
import torch

from edgeprune import export, jobs
from edgeprune.errors import ConfigError
from edgeprune.train import TrainConfig

DATA = {"name": "synthetic", "shape": (1, 8, 8), "num_classes": 3, "size": 64, "batch_size": 16}


def _cfg(**method):
    return jobs.RunConfig(
        command="prune", model="conftest:Tiny", data=DATA, train=TrainConfig(epochs=1, lr=0.05),
        measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False), method=method,
    )


@pytest.mark.parametrize("criterion", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_pai_run_trains_a_model_of_the_requested_sparsity(tmp_path, criterion):
    report = jobs.prune(_cfg(name=criterion, sparsity=0.75, min_layer_density=0), tmp_path / "r", progress=False)
    prof = report.profile.to_dict()
    assert prof["prunable_nonzero"] == round(0.25 * 48)  # exact, after training
    assert prof["effective_macs"] < prof["macs"]
    assert report.prune_seconds > 0 and report.train["seconds"] > 0
    assert sum(r["kept"] for r in report.details["layers"]) == 12
    saved = torch.load(tmp_path / "r" / "masks.pt", weights_only=True)
    model = export.load_model(tmp_path / "r" / "model.pt")
    for name, mask in saved.items():
        assert torch.all(model.get_parameter(name)[~mask] == 0)


@pytest.mark.parametrize(
    "method, message",
    [({"name": "synflow", "sparsity": 1.0}, "sparsity"), ({"name": "synflw"}, "synflow"),
     ({"name": "snip", "sparsity": 0.999, "min_layer_density": 0.5}, "min_layer_density")],
)
def test_bad_pruning_options_write_nothing(tmp_path, method, message):
    with pytest.raises(ConfigError, match=message):
        jobs.prune(_cfg(**method), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", [{"name": "snip", "sparsity": 0.8}, {"name": "reconvene", "criterion": "synflow",
                                                                       "rounds": 5, "sparsity": 0.8}])
def test_resumed_pruned_run_ends_where_an_uninterrupted_one_does(tmp_path, method, interrupt, monkeypatch):
    cfg = _cfg(**method)
    cfg.model = "conftest:small_vgg"
    cfg.train = TrainConfig(epochs=2, lr=0.05)

    jobs.prune(cfg, tmp_path / "straight", progress=False)
    interrupt(5)  # 4 steps an epoch: stopped in epoch 2, epoch 1 checkpointed
    with pytest.raises(KeyboardInterrupt) as stopped:
        jobs.prune(cfg, tmp_path / "cut", progress=False)
    assert "--resume continues" in stopped.value.__notes__[0]
    assert not (tmp_path / "cut" / "report.json").exists()
    # The pruning result is restored from the run folder, never recomputed.
    monkeypatch.setattr(jobs, "prune_at_init", lambda *a, **k: pytest.fail("resume pruned again"))
    report = jobs.prune(cfg, tmp_path / "cut", resume=True, progress=False)
    a = export.load_model(tmp_path / "straight" / "model.pt").state_dict()
    b = export.load_model(tmp_path / "cut" / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert report.profile.params == json.loads((tmp_path / "straight" / "report.json").read_text())[
        "profile"]["params"]
