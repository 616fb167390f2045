import json

import pytest
import torch

from edgeprune import jobs, masks, runs
from edgeprune.errors import ConfigError
from edgeprune.methods import imp
from edgeprune.train import Callback, TrainConfig, fit

DATA = {"name": "synthetic", "shape": (1, 8, 8), "num_classes": 3, "size": 64, "batch_size": 16}


def _cfg(**method):
    return jobs.RunConfig(
        command="prune", model="conftest:Tiny", data=DATA, train=TrainConfig(epochs=1, lr=0.05),
        measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False),
        method={"name": "imp", "min_layer_density": 0, **method},
    )


def test_levels_keep_the_geometric_density_and_are_saved_as_runs(tmp_path):
    report = jobs.prune(_cfg(levels=2, fraction=0.5), tmp_path / "imp", progress=False)
    assert [lv.level for lv in report.levels] == [0, 1, 2]
    prunable = 36 + 12  # Tiny's conv and fc weights
    for lv in report.levels:
        level = tmp_path / "imp" / f"level_{lv.level:02d}"
        assert {"model.pt", "model.onnx", "report.json"} <= {p.name for p in level.iterdir()}
        assert lv.profile.prunable_nonzero == round(0.5 ** lv.level * prunable)
        if lv.level:
            saved = torch.load(level / "masks.pt", weights_only=True)
            assert sum(int(m.sum()) for m in saved.values()) == round(0.5 ** lv.level * prunable)


def test_survivors_rewind_to_the_recorded_iteration(tmp_path):
    cfg = _cfg(levels=1, fraction=0.5, rewind_iter=3)
    model, bundle = jobs.build(cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def finish(m, out, info):
        seen[info["level"]] = imp.weights_state(m)
        return {"level": info["level"], "density": info["density"], "profile": {}}

    imp.run(model, bundle.train, cfg.train, imp.IMPOptions(levels=1, fraction=0.5, rewind_iter=3), tmp_path,
            finish, progress=False)
    # an independent run of the same training, stopped at iteration 3, gives the rewind point
    replay, _ = jobs.build(cfg)
    replay.load_state_dict(init)
    at_3 = {}

    class Grab(Callback):
        def on_step_end(self, m, step):
            if step == 3:
                at_3.update(imp.weights_state(m))

    fit(replay, bundle.train, cfg.train, progress=False, callbacks=[Grab()])
    rewound = torch.load(tmp_path / imp.REWIND, weights_only=True)
    assert all(torch.equal(rewound[k], at_3[k]) for k in at_3)
    # and rewind() puts exactly those values back under the masks
    target, _ = jobs.build(cfg)
    masks.apply(target, {"conv.weight": (torch.rand(4, 1, 3, 3) > 0.5).float()})
    imp.rewind(target, rewound)
    assert torch.equal(target.conv.weight, rewound["conv.weight"] * target.conv.weight_mask)
    assert torch.equal(target.bn.running_mean, rewound["bn.running_mean"])


def test_rewind_past_the_end_of_training_is_refused(tmp_path):
    # 64 samples in batches of 16, one epoch: iterations 0..4 exist, so 5 is the first past the end
    with pytest.raises(ConfigError) as e:
        jobs.prune(_cfg(levels=1, rewind_iter=5), tmp_path / "x", progress=False)
    assert str(e.value) == ("rewind_iter 5 is past the end of training (4 iterations); "
                            "choose a smaller --rewind-iter")


def test_resume_skips_finished_levels(tmp_path):
    run = tmp_path / "imp"
    jobs.prune(_cfg(levels=2, fraction=0.5), run, progress=False)
    first = {p: (run / p).read_bytes() for p in ("level_00/model.pt", "level_01/model.pt", "level_02/model.pt")}
    for f in (run / "level_02").iterdir():  # as if killed during level 2
        f.unlink()
    (run / runs.REPORT).unlink()
    report = jobs.prune(_cfg(levels=2, fraction=0.5), run, resume=True, progress=False)
    assert len(report.levels) == 3
    assert (run / "level_00/model.pt").read_bytes() == first["level_00/model.pt"]  # not redone
    again = torch.load(run / "level_02/model.pt", weights_only=True)["state_dict"]
    before = torch.load(__import__("io").BytesIO(first["level_02/model.pt"]), weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], before[k]) for k in before)  # redone identically
    assert json.loads((run / runs.REPORT).read_text())["method"] == "imp"
