import pytest
import torch
from torch import nn

from edgeprune import budget, jobs, measure, timing
from edgeprune.errors import ConfigError
from edgeprune.train import TrainConfig


class _Priced(nn.Module):
    """A stand-in whose 'size' is known exactly: 100 MiB × (1 − sparsity)."""

    def __init__(self, sparsity):
        super().__init__()
        self.cost = 100 * (1 - sparsity)


def _search(value, **kw):
    target = budget.Target("size", value, **kw)
    target.cost = lambda model, shape: model.cost  # the search logic alone
    return budget.search(target, _Priced, (1,))


def test_search_lands_just_under_the_budget_in_few_probes():
    found = _search(30.0)
    assert 27.0 <= found.cost <= 30.0  # within 10 %, never over
    assert found.sparsity == pytest.approx(0.7, abs=0.03)
    assert len(found.probes) <= 10 and found.probes[0]["sparsity"] == 0.0


def test_a_dense_model_within_budget_needs_no_pruning():
    assert _search(150.0).sparsity == 0.0


def test_an_unreachable_budget_names_the_closest_probe():
    with pytest.raises(ConfigError, match="closest probe") as e:
        _search(0.1)
    assert "reconvene" in str(e.value)


def test_a_lucky_latency_probe_is_timed_again_before_it_is_accepted(monkeypatch):
    """Probes read 10 % fast (a quiet moment); the longer confirmation tells the truth: 100 ms × (1 − s)."""
    monkeypatch.setattr(budget.export, "to_onnx_bytes", lambda model, shape, check: str(model.cost).encode())
    target = budget.Target("latency", 30.0)
    target.latency = lambda onnx, shape, runs=budget.PROBE_RUNS: float(onnx) * (
        0.9 if runs == budget.PROBE_RUNS else 1.0)
    found = budget.search(target, _Priced, (1,))
    assert found.cost <= 30.0 and found.cost == pytest.approx(100 * (1 - found.sparsity))
    refuted = [p for p in found.probes if p.get("confirmed_cost", 0) > 30.0]
    assert refuted and not any(p["meets"] for p in refuted)  # measured under, confirmed over: not taken
    assert all(p["sparsity"] < found.sparsity for p in refuted)


def test_an_unconfirmed_budget_is_unreachable(monkeypatch):
    monkeypatch.setattr(budget.export, "to_onnx_bytes", lambda model, shape, check: str(model.cost).encode())
    target = budget.Target("latency", 0.45, max_sparsity=0.995)
    target.latency = lambda onnx, shape, runs=budget.PROBE_RUNS: float(onnx) * (
        0.5 if runs == budget.PROBE_RUNS else 1.0)  # every probe meets it, no confirmation does
    with pytest.raises(ConfigError, match="closest probe was latency 0.5 ms"):
        budget.search(target, _Priced, (1,))


@pytest.mark.parametrize("bad", [{"metric": "energy", "value": 1}, {"metric": "size", "value": 0}])
def test_bad_targets(bad):
    with pytest.raises(ConfigError):
        budget.Target(**bad)


def _cfg(method):
    return jobs.RunConfig(
        command="prune", model="conftest:small_vgg",
        data={"name": "synthetic", "shape": (1, 12, 12), "num_classes": 10, "size": 64, "batch_size": 32},
        train=TrainConfig(epochs=1, lr=0.05), measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False),
        method=method)


def test_reconvene_to_a_size_budget(tmp_path):
    dense = measure.state_bytes(jobs.fresh_model(_cfg({}), jobs.data.loaders(**_cfg({}).data)))[0] / 2**20
    target = {"metric": "size", "value": dense / 3}
    report = jobs.prune(_cfg({"name": "reconvene", "criterion": "magnitude", "target": target}), tmp_path / "r",
                        progress=False)
    assert report.profile.bytes_fp32 / 2**20 <= dense / 3
    b = report.budget
    assert b["probes"][0] == {"sparsity": 0.0, "cost": pytest.approx(dense), "meets": False}
    assert b["found_sparsity"] == report.options["sparsity"] > 0


def test_unstructured_methods_cannot_meet_a_size_budget_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="unstructured masks do not make a model smaller"):
        jobs.prune(_cfg({"name": "magnitude", "target": {"metric": "size", "value": 0.01}}), tmp_path / "r",
                   progress=False)
    assert not (tmp_path / "r").exists()


def test_latency_budget_is_measured_on_onnx_runtime(monkeypatch):
    from edgeprune.export import ort_session

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    calls = []
    real = timing.latency_onnx

    def spy(onnx, shape, batch_size, threads, **kw):
        calls.append((onnx, shape, batch_size, threads))
        calls.append(real(onnx, shape, batch_size, threads, **kw))
        return calls[-1]

    monkeypatch.setattr(timing, "latency_onnx", spy)
    ms = budget.Target("latency", 1.0, batch_size=4, threads=2).cost(model, (1, 4, 4))
    assert len(calls) == 2, "the cost is one ONNX Runtime measurement"
    (onnx, shape, batch_size, threads), timed = calls
    assert (shape, batch_size, threads) == ((1, 4, 4), 4, 2) and ms == timed.p50_ms and timed.runtime == "onnxruntime"
    x = torch.randn(4, 1, 4, 4)  # and what ONNX Runtime timed is this model
    with torch.no_grad():
        expected = model(x).numpy()
    assert ort_session(onnx).run(None, {"input": x.numpy()})[0] == pytest.approx(expected, abs=1e-5)
