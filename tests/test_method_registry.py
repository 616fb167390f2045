"""The method registry: a method declared once, in a module outside edgeprune, is a `prune --method` with its
own flags, a sweep-spec method with its own keys, and a labelled report row; nothing else was touched."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from edgeprune import jobs
from edgeprune.cli import app
from edgeprune.errors import ConfigError
from edgeprune.methods import registry
from edgeprune.report import collect
from edgeprune.sweep import cells, load_spec

plugin_method = pytest.importorskip("plugin_method")  # tests/plugin_method.py registers method "every"
runner = CliRunner()
SYNTH = ["-m", "conftest:small_vgg", "-d", "synthetic", "-e", "1", "--measure-runs", "2", "-b", "64"]


def test_every_builtin_method_is_registered_with_its_kind():
    kinds = {n: registry.get(n).kind for n in registry.list_methods()}
    assert {n: kinds[n] for n in ("random", "magnitude", "snip", "grasp", "synflow", "reconvene", "imp")} == {
        **{n: "init" for n in ("random", "magnitude", "snip", "grasp", "synflow", "reconvene")}, "imp": "levels"}


def test_a_plugin_method_is_a_command_line_method_with_its_own_flags(tmp_path):
    help_text = runner.invoke(app, ["prune", "--help"], env={"COLUMNS": "200"}).output
    assert "every: a test method" in help_text and "--stride" in help_text
    result = runner.invoke(app, ["-q", "prune", "--method", "every", "--stride", "3", "--sparsity", "0.75", *SYNTH,
                                 "--runs-dir", str(tmp_path), "--name", "e"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["method"] == {"name": "every", "sparsity": 0.75, "stride": 3}  # every option written out
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["profile"]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    bad = runner.invoke(app, ["prune", "--method", "every", "--stride", "0", *SYNTH, "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "stride must be >= 1, got 0" in bad.output
    other = runner.invoke(app, ["prune", "--method", "every", "--levels", "2", *SYNTH, "--runs-dir", str(tmp_path)])
    assert other.exit_code == 2 and "--levels does not apply to --method every" in other.output


def test_a_plugin_method_parses_from_a_sweep_spec_and_is_labelled_in_a_report(tmp_path):
    spec = {"name": "p", "out": str(tmp_path / "p"), "models": ["conftest:small_vgg"],
            "data": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 32, "batch_size": 16},
            "train": {"epochs": 1}, "measure": {"runs": 2, "warmup": 0, "memory": False}, "dense": False,
            "methods": [{"name": "every", "stride": [2, 3], "sparsities": [0.5]}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    grid = cells(load_spec(tmp_path / "p.yaml"))
    assert [c.cfg.method for c in grid] == [{"name": "every", "stride": 2, "sparsity": 0.5},
                                            {"name": "every", "stride": 3, "sparsity": 0.5}]
    jobs.prune(grid[1].cfg, tmp_path / "runs" / grid[1].name)
    row, = collect([tmp_path / "runs"])
    assert (row.method, row.variant, row.sparsity_requested) == ("every3", "stride 3", 0.5)
    spec["methods"] = [{"name": "every", "strid": 2}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="strid"):
        cells(load_spec(tmp_path / "p.yaml"))


def test_options_are_checked_against_the_method():
    with pytest.raises(ConfigError, match="has no option 'levels'"):
        registry.options_of({"name": "synflow", "levels": 3})
    with pytest.raises(ConfigError, match="fixes criterion to 'synflow'"):
        registry.options_of({"name": "synflow", "criterion": "snip"})
    with pytest.raises(ConfigError, match="unknown method 'synflo'; did you mean 'synflow'"):
        registry.get("synflo")


def test_a_method_module_that_cannot_be_imported_is_one_line(monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_METHODS", "no_such_methods_module")
    monkeypatch.setattr(registry, "_loaded", False)
    result = runner.invoke(app, ["prune", "--method", "synflow"])
    assert result.exit_code == 2 and "cannot import pruning-method module 'no_such_methods_module'" in result.output
    assert "Traceback" not in result.output


plugin_runkind = pytest.importorskip("plugin_runkind")  # tests/plugin_runkind.py registers run kind "untrained"


def test_a_plugin_run_kind_makes_runs_through_the_job_path_reruns_sweeps_and_reports(tmp_path):
    from dataclasses import replace

    from conftest import prune_config

    from edgeprune import kinds, runs
    from edgeprune.sweep import list_methods

    assert "untrained" in kinds.names() and "untrained" in list_methods()
    cfg = replace(prune_config({"name": "untrained", "scale": 0.5}), command="untrained")
    report = jobs.run(cfg, tmp_path / "runs" / "u", progress=False)
    assert runs.is_finished(tmp_path / "runs" / "u") and report.method == "untrained"
    config = json.loads((tmp_path / "runs" / "u" / "config.json").read_text())
    assert (config["command"], config["method"]) == ("untrained", {"name": "untrained", "scale": 0.5})
    assert json.loads((tmp_path / "runs" / "u" / "report.json").read_text())["options"] == {"scale": 0.5}
    row, = collect([tmp_path / "runs"])
    assert (row.method, row.variant, row.sparsity_requested) == ("untrained", "scale 0.5", None)
    again = runner.invoke(app, ["-q", "rerun", str(tmp_path / "runs" / "u"), "--name", "again", "--runs-dir",
                                str(tmp_path / "more")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "more" / "again" / "config.json").read_text())["command"] == "untrained"

    spec = {"name": "k", "models": ["conftest:Tiny"], "dense": False,
            "data": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 32, "batch_size": 16},
            "methods": [{"name": "untrained", "scale": [0.5, 2.0]}]}
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(spec))
    grid = cells(load_spec(tmp_path / "k.yaml"))
    assert [(c.name, c.cfg.command, c.cfg.method) for c in grid] == [
        ("conftest_Tiny-untrained-scale=0.5-seed0", "untrained", {"name": "untrained", "scale": 0.5}),
        ("conftest_Tiny-untrained-scale=2.0-seed0", "untrained", {"name": "untrained", "scale": 2.0})]
    spec["methods"] = [{"name": "untrained", "scale": 0}]
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="scale must be > 0"):
        cells(load_spec(tmp_path / "k.yaml"))
