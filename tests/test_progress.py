"""The library never prints: slow steps report to the Reporter their caller passes, and the CLI draws."""

import pytest

from edgeprune import jobs
from edgeprune.progress import Prefixed, Reporter, reporter
from edgeprune.train import TrainConfig


class Recorder(Reporter):
    def __init__(self):
        self.updates, self.ended, self.notes = [], [], []

    def update(self, task, done, total=None, status=""):
        self.updates.append((task, done, total))

    def end(self, task):
        self.ended.append(task)

    def note(self, text):
        self.notes.append(text)


def _cfg(method):
    return jobs.RunConfig(
        command="prune", model="conftest:Tiny",
        data={"name": "synthetic", "shape": (1, 8, 8), "num_classes": 3, "size": 64, "batch_size": 16},
        train=TrainConfig(epochs=2), measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False), method=method,
    )


def test_a_pruning_run_reports_its_steps_and_prints_nothing(tmp_path, capfd):
    rec = Recorder()
    jobs.prune(_cfg({"name": "synflow", "sparsity": 0.5, "rounds": 5}), tmp_path / "r", progress=rec)
    assert capfd.readouterr() == ("", "")
    assert ("synflow pruning", 5, 5) in rec.updates
    assert ("epoch 2/2", 4, 4) in rec.updates  # 64 samples, batch 16
    assert rec.ended == ["synflow pruning", "epoch 1/2", "epoch 2/2"]


def test_imp_levels_are_named_and_a_budget_search_notes_its_probes(tmp_path):
    rec = Recorder()
    jobs.prune(_cfg({"name": "imp", "levels": 1}), tmp_path / "imp", progress=rec)
    assert {t for t, _, _ in rec.updates} == {f"level {lv}: epoch {e}/2" for lv in (0, 1) for e in (1, 2)}
    rec = Recorder()
    jobs.prune(_cfg({"name": "reconvene", "criterion": "magnitude",
                                  "target": {"metric": "macs", "value": 1500}}), tmp_path / "b", progress=rec)
    assert rec.notes[0].startswith("searching the sparsity that meets")
    assert any("probe: sparsity" in n for n in rec.notes[1:])


def test_reporter_takes_functions_and_refuses_true():
    seen = []
    reporter(lambda *a: seen.append(a)).update("t", 1, 2)
    Prefixed(lambda *a: seen.append(a), "level 1: ").update("t", 2, 2)
    assert seen == [("t", 1, 2), ("level 1: t", 2, 2)]
    assert not reporter(None) and not reporter(False)
    with pytest.raises(TypeError, match="never draws"):
        reporter(True)
