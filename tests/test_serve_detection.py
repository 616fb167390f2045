"""A detector family served end to end: `portfolio build FAMILY --profile`, the real server answering frames with
decoded detections, and the roma policy switching detectors from what it served (edgeprune.portfolio, serve)."""

import json

import numpy as np
import pytest
import torch
from test_serve import Running, body, wait_active

from edgeprune import portfolio, serve
from edgeprune.detection import detector
from edgeprune.detection import profile as prof
from edgeprune.detection.stream import CANVAS
from edgeprune.errors import ConfigError
from edgeprune.models import create
from edgeprune.portfolio import PortfolioError
from edgeprune.serve import policy
from edgeprune.serve.codec import as_input, binary_body


def family(folder, sizes, classes=10):
    """A TinyDet with random weights (the tests check plumbing, not accuracy), its heat-map bias at 0 so that
    it finds peaks with scores around 0.5 in any frame."""
    torch.manual_seed(0)
    model = create("tinydet", num_classes=classes, in_channels=1, width=4).eval()
    torch.nn.init.zeros_(model.head[-1].bias[:classes])
    detector.save_family(model, sizes, folder, {})
    return folder


def hand_profile(path, names=("d96", "d64")):
    """d96 the better detector offline (served first), both alike per object size, d96 twice as slow: at a high
    frame rate, where each call of d96 leaves frames unanswered, ROMA wants d64."""
    rows = {"d96": prof.DetectorProfile(96, 2.0, 2.4, 0.9, [0.5] * 5),
            "d64": prof.DetectorProfile(64, 1.0, 1.2, 0.5, [0.5] * 5)}
    p = prof.Profile({n: rows[n] for n in names}, list(range(10)), list(prof.SIZE_BINS), list(prof.SPEED_BINS),
                     [0.5, 0.5, 0.5], {}, prof.machine(), {"synthetic": True})
    prof.save(p, path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    family(root / "fam", (96, 64))
    hand_profile(root / "roma.json")
    portfolio.build([root / "fam"], root / "pf", profile=root / "roma.json")
    return root


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, (2, CANVAS, CANVAS)).astype(np.uint8)
    x[0, 20:60, 30:50] = 220  # an item-like block in each frame
    x[1, 70:90, 64:120] = 220
    return x


def test_a_family_portfolio_records_every_member_with_its_profile(root):
    m = portfolio.load(root / "pf")
    assert (m.task, m.input_shape, m.datatype, m.classes) == ("detect", [1, CANVAS, CANVAS], "FP32", 10)
    assert m.ids == ["d64", "d96"]  # fastest first, none dropped
    assert [(v.accuracy, v.p50_ms, v.p90_ms) for v in m.variants] == [(0.5, 1.0, 1.2), (0.9, 2.0, 2.4)]
    assert m.detection["input_sizes"] == {"d96": 96, "d64": 64} and m.detection["class_ids"] == list(range(10))
    assert sorted(m.detection["profile"]["detectors"]) == ["d64", "d96"]
    for v in m.variants:
        assert (root / "pf" / v.onnx).read_bytes() == (root / "fam" / v.onnx).read_bytes()
        assert v.model_file is None and v.source == str(root / "fam") and v.method == "tinydet"
    assert m.variant("d96").macs > m.variant("d64").macs and m.variant("d96").params == m.variant("d64").params


def test_the_server_answers_frames_with_detections_and_roma_switches_detectors(root, frames):
    app = serve.build(root / "pf", policy="roma", policy_params={"fps": 2000, "patience": 1}, window_requests=4,
                      window_s=60)
    runners = {r.name: r for r in detector.runners(root / "fam")}
    x = (frames.astype(np.float32) / 255)[:, None]
    with Running(app) as client:
        meta = client.get("/v2/models/portfolio").json()
        assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "batch_index"]
        served = []
        for _ in range(4):  # one window of requests to d96, the best offline
            r = client.post("/v2/models/portfolio/infer", json=body(x))
            assert r.status_code == 200, r.text
            served.append(r.json())
        first = served[0]
        assert first["parameters"]["variant"] == r.headers["edgeprune-variant"] == "d96"
        out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in first["outputs"]}
        assert len(out["scores"]) > 0
        for i, frame in enumerate(frames):  # the very detections of the detector run on its own
            want, _ = runners["d96"].detect(frame)
            mine = out["batch_index"] == i
            np.testing.assert_array_equal(out["boxes"][mine].astype(np.float32), want.boxes)
            np.testing.assert_array_equal(out["scores"][mine].astype(np.float32), want.scores)
            np.testing.assert_array_equal(out["classes"][mine], want.classes)
        state = wait_active(client, "d64")  # the switch runs on the control thread, after the answer
        assert state["name"] == "roma" and state["active"] == "d64"
        switch = state["switches"][-1]
        assert (switch["from"], switch["to"]) == ("d96", "d64") and switch["why"].startswith("policy roma: d64")
        decision = state["decisions"][-1]
        assert sorted(decision["inputs"]["rap"]) == ["d64", "d96"] and decision["inputs"]["requests"] == 8
        assert decision["inputs"]["rap"]["d64"] > decision["inputs"]["rap"]["d96"]
        assert set(state["live_latency"]) == {"d96"}
        r = client.post("/v2/models/portfolio/infer", json=body(x[:1]))
        assert r.json()["parameters"]["variant"] == "d64" and set(r.json()["outputs"][3]["data"]) <= {0}
        metrics = client.get("/metrics").text
        assert 'edgeprune_active_variant{variant="d64"} 1.0' in metrics
        assert 'edgeprune_active_variant{variant="d96"} 0.0' in metrics
        answered = sum(len(s["outputs"][1]["data"]) for s in served)
        assert f'edgeprune_detections_total{{variant="d96"}} {float(answered)}' in metrics
        assert 'edgeprune_requests_total{code="200",model="portfolio",variant="d64"} 1.0' in metrics
        page = client.get("/").text
        assert 'data-variant="d96"' in page and 'data-variant="d64"' in page and "profiled AP@0.5" in page
        r = client.post("/v2/models/portfolio/infer", json=body(x[:, :, :64]))
        assert r.status_code == 400 and "expected [N, 1, 128, 128]" in r.json()["error"]
        # the binary extension both ways: INT64 and FP32 outputs as raw bytes, equal to the JSON answer
        content, headers = binary_body([as_input("input", x)], parameters={"binary_data_output": True})
        r = client.post("/v2/models/d64/infer", content=content, headers=headers)
        n = int(r.headers["inference-header-content-length"])
        raw, offset, binary = r.content[n:], 0, {}
        for o in json.loads(r.content[:n])["outputs"]:
            size = o["parameters"]["binary_data_size"]
            dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
            binary[o["name"]] = np.frombuffer(raw[offset:offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
        as_json = client.post("/v2/models/d64/infer", json=body(x)).json()["outputs"]
        assert offset == len(raw) and [o["name"] for o in as_json] == list(binary)
        for o in as_json:
            np.testing.assert_array_equal(binary[o["name"]], np.asarray(o["data"], dtype=binary[o["name"]].dtype)
                                          .reshape(o["shape"]))


def test_mixing_detectors_and_classifiers_is_refused(root, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(PortfolioError, match="is a detector family but .* is not: a portfolio serves detectors or "
                                             "classifiers, not both; build one portfolio of each"):
        portfolio.build([root / "fam", runs], tmp_path / "pf", profile=root / "roma.json")
    with pytest.raises(ConfigError, match="is not a detector family .*leave --profile out"):
        portfolio.build([runs], tmp_path / "pf", profile=root / "roma.json")
    assert not (tmp_path / "pf").exists()


def test_detectors_with_different_class_sets_are_refused(root, tmp_path):
    family(tmp_path / "five", (80,), classes=5)
    with pytest.raises(ConfigError, match=r"detector d80 detects classes \[0, 1, 2, 3, 4\] but d96 detects "
                                          r"\[0, .*9\]; choose among detectors of one class set"):
        portfolio.build([root / "fam", tmp_path / "five"], tmp_path / "pf", profile=root / "roma.json")
    family(tmp_path / "again", (64,))
    with pytest.raises(detector.FamilyError, match="detector d64 is in both .* named apart"):
        portfolio.build([root / "fam", tmp_path / "again"], tmp_path / "pf", profile=root / "roma.json")


def test_a_detector_portfolio_needs_the_profile_of_its_detectors(root, tmp_path):
    with pytest.raises(PortfolioError, match="needs their ROMA profile: pass --profile PATH"):
        portfolio.build([root / "fam"], tmp_path / "pf")
    other = hand_profile(tmp_path / "other.json", names=("d96",))
    with pytest.raises(prof.ProfileError, match=r"profiles detectors \['d96'\]"):
        portfolio.build([root / "fam"], tmp_path / "pf", profile=other)


def test_policies_and_switch_modes_refuse_the_wrong_kind_of_portfolio(root):
    m = portfolio.load(root / "pf")
    with pytest.raises(ConfigError, match="holds detectors: use the roma policy"):
        policy.make(m, "realtime")
    with pytest.raises(ConfigError, match="use --switch preloaded or reload"):
        serve.build(root / "pf", switch_mode="masks")
    classifier = portfolio.Manifest(**{**m.__dict__, "task": "classify", "detection": None})
    with pytest.raises(ConfigError, match="this portfolio holds classifiers: build one from a detector family"):
        policy.make(classifier, "roma")


def test_cli_builds_and_shows_a_detector_portfolio(root, tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["portfolio", "build", str(root / "fam"), "--profile", str(root / "roma.json"),
                              "--out", str(tmp_path / "pf")])
    assert res.exit_code == 0, res.output
    assert "AP@0.5" in res.output and "d96" in res.output
    assert json.loads((tmp_path / "pf" / "portfolio.json").read_text())["task"] == "detect"
    res = runner.invoke(app, ["portfolio", "build", str(root / "fam"), "--out", str(tmp_path / "none")])
    assert res.exit_code == 2 and "needs their ROMA profile" in res.output
