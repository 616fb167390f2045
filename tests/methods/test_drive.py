import pytest
import torch
from conftest import prune_config
from typer.testing import CliRunner

from edgeprune import export, jobs, masks, models, runs, scores
from edgeprune.cli import app
from edgeprune.errors import ConfigError
from edgeprune.methods import drive

PRUNABLE = 36 + 12  # conftest.Tiny's conv and fc weights


def _cfg(epochs=3, **method):
    method = {"name": "drive", "sparsity": 0.5, "dense_epochs": 1, "rounds": 4, "min_layer_density": 0, **method}
    return prune_config(method, epochs)


def test_prunes_after_the_dense_epochs_to_the_exact_count_and_trains_the_rest(tmp_path):
    report = jobs.prune(_cfg(), tmp_path / "d", progress=False)
    assert report.method == "drive" and report.profile.prunable_nonzero == PRUNABLE // 2
    pruned, extra = export.load(tmp_path / "d" / runs.PRUNED)
    model, _ = jobs.build(_cfg())  # the same initial weights
    # The weights pruned were trained for one dense epoch: they are not the initial ones.
    assert not torch.equal(pruned.conv.weight, model.conv.weight * (pruned.conv.weight != 0))
    assert extra["pruning"]["method"] == "drive" and extra["pruning"]["rounds"] == 4
    saved = torch.load(tmp_path / "d" / "masks.pt", weights_only=True)
    final, _ = jobs.load(tmp_path / "d")
    assert sum(int(m.sum()) for m in saved.values()) == PRUNABLE // 2
    assert all(torch.equal((final.get_parameter(n) != 0).float(), m) for n, m in saved.items())
    log = (tmp_path / "d" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3  # one budget: 1 dense epoch + 2 with the masks


def test_an_interrupted_run_resumes_after_pruning_exactly(tmp_path, interrupt):
    jobs.prune(_cfg(), tmp_path / "straight", progress=False)
    interrupt(9)  # 4 steps an epoch: pruned at the end of epoch 1, checkpointed after epoch 2
    with pytest.raises(KeyboardInterrupt):
        jobs.prune(_cfg(), tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / runs.PRUNED).exists() and not (tmp_path / "cut" / runs.REPORT).exists()
    jobs.prune(_cfg(), tmp_path / "cut", resume=True, progress=False)
    assert (tmp_path / "cut" / "model.pt").read_bytes() == (tmp_path / "straight" / "model.pt").read_bytes()


def test_balance_one_and_zero_are_snips_and_synflows_own_iterative_masks():
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))]
    for balance, criterion in ((1.0, "snip"), (0.0, "synflow")):
        got, want = (models.create("conftest:Tiny", 3, 1) for _ in range(2))
        want.load_state_dict(got.state_dict())
        masks.prune_iteratively(got, drive.dual_gradient(batches, (1, 8, 8), balance), 0.3, rounds=3,
                                min_layer_density=0)
        masks.prune_iteratively(want, scores.scorer(criterion, batches, input_shape=(1, 8, 8)), 0.3, rounds=3,
                                min_layer_density=0)
        assert all(torch.equal(a, b) for a, b in zip(masks.current(got, ["conv.weight", "fc.weight"]).values(),
                                                      masks.current(want, ["conv.weight", "fc.weight"]).values(),
                                                      strict=True))


def test_dense_epochs_must_leave_epochs_to_train(tmp_path):
    with pytest.raises(ConfigError, match="dense_epochs=3 of the run's 3 epoch"):
        jobs.prune(_cfg(dense_epochs=3), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()
    result = CliRunner().invoke(app, ["prune", "--method", "drive", "--balance", "1.5", "--model", "resnet20",
                                      "--dataset", "synthetic", "--name", "x", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "balance must be in [0, 1]" in result.output
    assert list(tmp_path.iterdir()) == []
