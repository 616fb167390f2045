"""How a federated job's training set is shared among its devices (edgeprune.federated.shares): IID, and the
Dirichlet label skew of the non-IID runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.errors import ConfigError
from edgeprune.federated import shares

DATA = {"name": "synthetic", "shape": [1, 8, 8], "size": 600, "batch_size": 8, "seed": 0}


def parts(data: dict, devices: int) -> tuple[np.ndarray, ...]:
    return shares.shares(json.dumps(data, sort_keys=True), devices)


def test_iid_shares_are_every_nth_sample():
    out = parts(DATA, 5)
    assert [p.tolist() for p in out] == [list(range(d, 600, 5)) for d in range(5)]


def test_dirichlet_shares_partition_the_set_and_are_skewed_and_seeded():
    data = {**DATA, "partition": "dirichlet", "alpha": 0.1}
    out = parts(data, 5)
    together = np.concatenate(out)
    assert len(together) == 600 and len(np.unique(together)) == 600  # every sample on exactly one device
    assert min(len(p) for p in out) >= DATA["batch_size"]
    assert [p.tolist() for p in out] == [p.tolist() for p in parts(dict(data), 5)]  # same seed, same shares
    assert [p.tolist() for p in out] != [p.tolist() for p in parts({**data, "seed": 1}, 5)]
    counts = np.array(shares.class_counts(data, 5))
    assert counts.sum() == 600
    # at alpha 0.1 a device's largest class holds far more than the 1/10 it holds under IID
    assert np.mean(counts.max(axis=1) / counts.sum(axis=1)) > 0.3
    iid = np.array(shares.class_counts(DATA, 5))
    assert np.mean(iid.max(axis=1) / iid.sum(axis=1)) < 0.2


def test_device_batches_read_only_that_devices_share():
    data = {**DATA, "partition": "dirichlet"}  # alpha 0.5 by default
    full = shares.train_set(json.dumps(data, sort_keys=True))
    mine = parts(data, 3)[2]
    labels = shares.labels_of(full)
    seen = np.concatenate([y.numpy() for _, y in shares.device_batches(data, 2, 3, round_=1)])
    assert sorted(seen.tolist()) == sorted(labels[mine].tolist())


@pytest.mark.parametrize("data, message", [
    ({"partition": "shards"}, "data.partition 'shards' is not one of iid, dirichlet"),
    ({"partition": "dirichlet", "alpha": 0}, "data.alpha 0 must be a positive number"),
    ({"partition": "dirichlet", "alpha": "low"}, "data.alpha 'low' must be a positive number"),
    ({"alpha": 0.5}, "data.alpha 0.5 is given but data.partition is 'iid'"),
])
def test_bad_sharing_keys_are_refused_in_one_line(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        shares.check(data)


def test_a_skew_that_starves_a_device_says_what_to_change():
    data = {**DATA, "size": 40, "batch_size": 16, "partition": "dirichlet", "alpha": 0.01}
    with pytest.raises(ConfigError, match="raise alpha, the subset or lower batch_size"):
        parts(data, 8)


def test_fl_run_refuses_a_bad_partition_before_starting(tmp_path):
    pytest.importorskip("flwr")
    from typer.testing import CliRunner

    from edgeprune.cli import app

    path = tmp_path / "job.yaml"
    path.write_text("model: {name: vgg5}\ndata: {name: synthetic, partition: dirichlet, alpha: -1}\nrounds: 1\n"
                    "devices: [{split: 3}]\n")
    result = CliRunner().invoke(app, ["fl", "run", str(path)])
    assert result.exit_code == 2
    assert "data.alpha -1 must be a positive number" in " ".join(result.output.split())


@pytest.mark.slow
def test_a_non_iid_job_runs_through_fl_run_and_a_starving_skew_is_refused_before_it_starts():
    pytest.importorskip("flwr")
    from edgeprune.federated.flower import run_spec

    data = {"name": "synthetic", "shape": [1, 28, 28], "size": 64, "batch_size": 8, "seed": 0,
            "partition": "dirichlet", "alpha": 0.5}
    spec = {"model": {"name": "vgg5", "num_classes": 10, "in_channels": 1, "image_size": 28}, "data": data,
            "rounds": 1, "test_subset": 16, "devices": [{"split": 7}, {"split": 7}], "optim": {"decay_round": 1}}
    result = run_spec(spec, emulation="modelled")
    (r,) = result["history"]
    assert r["dropped"] == [] and sorted(r["devices"]) == [0, 1]
    # each device ran one pass over its own Dirichlet share, in batches of 8
    sizes = [len(p) for p in parts(data, 2)]
    assert [r["devices"][k]["iterations"] for k in (0, 1)] == [-(-n // 8) for n in sizes]
    starving = {**spec, "data": {**data, "size": 16, "alpha": 0.01}, "devices": [{"split": 7}] * 4}
    with pytest.raises(ConfigError, match="left a device with fewer than one batch"):
        run_spec(starving, emulation="modelled")
