"""The run record: config.json and report.json read and written in one place, every field typed."""

import json

import pytest

from edgeprune import record
from edgeprune.errors import CheckpointError, ConfigError
from edgeprune.measure import Profile

PROFILE = Profile(model="lenet5", input_shape=(1, 28, 28), params=10, nonzero_params=5, prunable_params=8,
                  prunable_nonzero=3, macs=100, effective_macs=40, bytes_fp32=40, bytes_gzip=30).to_dict()


def test_a_report_keeps_its_flat_json_and_method_details(tmp_path):
    saved = {"run": "r", "data": "fashion-mnist", "method": "reconvene", "options": {"sparsity": 0.9},
             "prune_seconds": 1.5, "groups": [{"layers": ["a"]}], "profile": PROFILE}
    (tmp_path / "report.json").write_text(json.dumps(saved))
    report = record.read_report(tmp_path)
    assert report.method == "reconvene" and report.profile.prunable_nonzero == 3
    assert report.details == {"groups": [{"layers": ["a"]}]}
    record.write_report(tmp_path / "again.json", report)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == json.loads(json.dumps({**saved, "synthetic_data": False}))


def test_an_imp_report_lists_typed_levels():
    report = record.RunReport.from_dict({"run": "imp", "data": "mnist", "method": "imp",
                                         "levels": [{"level": 0, "density": 1.0, "profile": PROFILE},
                                                    {"level": 1, "density": 0.8, "profile": PROFILE}]})
    assert [lv.density for lv in report.levels] == [1.0, 0.8] and report.last_profile.params == 10


@pytest.mark.parametrize("saved, message", [
    ({}, "holds no measured profile"), ([], "holds no measured profile"),
    ({"run": "r", "data": "d", "profile": {"model": "x"}}, "the profile is incomplete"),
    ({"run": "r", "data": "d", "prune_seconds": "slow", "profile": PROFILE}, "'prune_seconds' is 'slow'"),
])
def test_a_broken_report_is_named(saved, message):
    with pytest.raises((CheckpointError, ConfigError), match=message):
        record.RunReport.from_dict(saved, where="runs/r/report.json")


@pytest.mark.parametrize("change, message", [
    ({"train": {"lr": "fast"}}, "'lr' is 'fast', which is not float"),
    ({"measure": {"batch_sizes": [1, "32"]}}, "'batch_sizes'"),
    ({"device": 0}, "'device' is 0, which is not str"),
    ({"colour": "red"}, "unknown keys ['colour']"),
])
def test_a_hand_edited_config_is_checked_field_by_field(change, message):
    saved = record.RunConfig(command="train", model="lenet5", data={"name": "mnist"}).to_dict()
    for key, value in change.items():
        saved[key] = {**saved[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        record.RunConfig.from_dict(saved)
