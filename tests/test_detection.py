"""The detection stream, AP@0.5, the TinyDet family, real-time scoring and ROMA (edgeprune.detection)."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch

from edgeprune.detection import detector, profile, realtime, roma
from edgeprune.detection import stream as st
from edgeprune.detection.metrics import Detections, ap50
from edgeprune.errors import ConfigError


@pytest.fixture(scope="module")
def item_set():
    """Ten 'classes' of 28x28 items: bright rectangles of class-specific proportions (no data set needed)."""
    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.arange(20) % 10
    for i, c in enumerate(labels):
        images[i, 4:24, 4 + c:24 - c // 2] = 200
    return images, labels


def small_stream(item_set, seed=0, frames=12):
    return st.make([st.Segment("a", frames, (10, 20), (1.0, 2.0)), st.Segment("b", frames, (30, 40), (3.0, 5.0))],
                   seed=seed, item_set=item_set)


def test_stream_is_deterministic_by_seed_and_its_truth_fits_the_segments(item_set):
    a, b, c = small_stream(item_set), small_stream(item_set), small_stream(item_set, seed=1)
    assert np.array_equal(a.frames, b.frames)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not np.array_equal(a.frames, c.frames)
    assert a.describe()["synthetic"] is True and len(a) == 24 and list(a.frames_of("b")) == list(range(12, 24))
    for t in range(len(a)):
        seg = a.segments[a.segment[t]]
        boxes = a.boxes[t]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= st.CANVAS).all()
        assert (boxes[:, 2:] - boxes[:, :2] <= seg.sizes[1]).all()
        assert ((a.speeds[t] >= seg.speeds[0]) & (a.speeds[t] <= seg.speeds[1])).all()
    # an object moves by its speed from one frame to the next (no bounce in most frames)
    moved = np.linalg.norm(a.boxes[1][:, :2] - a.boxes[0][:, :2], axis=1)
    assert np.median(np.abs(moved - a.speeds[0])) < 1.0


def test_the_mixed_scenario_runs_every_kind_of_segment_and_ends_with_the_load_step():
    assert [s.name for s in st.scenario("mixed", 10)] == ["small-slow", "small-fast", "large-slow", "large-fast",
                                                         "mixed-sizes", "load-step"]
    assert [s.load for s in st.scenario("mixed", 10)] == [False] * 5 + [True]
    assert not any(s.load for s in st.scenario("calibration"))


def test_bad_segments_and_scenarios_are_refused(item_set):
    with pytest.raises(ConfigError, match="sizes"):
        st.make([st.Segment("x", 5, (20, 10), (0, 1))], item_set=item_set)
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        st.scenario("nope")


def fixture(rng, frames=30, classes=3):
    boxes, cls, dets = [], [], []
    for _ in range(frames):
        n = rng.integers(0, 6)
        xy, wh = rng.uniform(0, 100, (n, 2)), rng.uniform(5, 120, (n, 2))
        b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        c = rng.integers(0, classes, n)
        m = rng.integers(0, 8)
        src = rng.integers(0, max(n, 1), m)
        db = (b[src] if n else np.zeros((m, 4), np.float32)) + rng.normal(0, 6, (m, 4)).astype(np.float32)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dc = np.where(rng.uniform(size=m) < 0.8, c[src] if n else 0, rng.integers(0, classes, m))
        boxes.append(b)
        cls.append(c)
        dets.append(Detections(db, rng.uniform(size=m).astype(np.float32), dc))
    return dets, boxes, cls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap50_matches_torchmetrics_overall_and_in_size_ranges(seed):
    from torchmetrics.detection import MeanAveragePrecision

    dets, boxes, cls = fixture(np.random.default_rng(seed))
    m = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    m.update([dict(boxes=torch.from_numpy(d.boxes), scores=torch.from_numpy(d.scores),
                   labels=torch.from_numpy(d.classes)) for d in dets],
             [dict(boxes=torch.from_numpy(b), labels=torch.from_numpy(c)) for b, c in zip(boxes, cls, strict=True)])
    want = m.compute()
    assert ap50(dets, boxes, cls) == pytest.approx(float(want["map_50"]), abs=0.005)
    for key, sides in (("map_small", (0, 32)), ("map_medium", (32, 96)), ("map_large", (96, 1e9))):
        assert ap50(dets, boxes, cls, side_range=sides) == pytest.approx(float(want[key]), abs=0.005)


def test_ap50_ignored_objects_count_neither_way():
    box = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    dets = [Detections(box.copy(), np.array([0.9, 0.8], np.float32), np.array([0, 0]))]
    assert ap50(dets, [box], [np.array([0, 0])]) == pytest.approx(1.0)
    # the second object ignored: its detection is neither a hit nor a false alarm
    assert ap50(dets, [box], [np.array([0, 0])], ignore=[np.array([False, True])]) == pytest.approx(1.0)
    assert np.isnan(ap50(dets, [box], [np.array([0, 0])], ignore=[np.array([True, True])]))
    miss = [Detections(box[::-1] + 30, np.array([0.9, 0.8], np.float32), np.array([0, 0]))]
    assert ap50(miss, [box], [np.array([0, 0])]) == 0.0


def test_decode_inverts_the_training_targets():
    boxes = [np.array([[10.0, 20.0, 30.0, 52.0], [70.0, 64.0, 118.0, 100.0]], np.float32)]
    classes = [np.array([3, 7])]
    size = 96
    heat, box, mask = detector.targets(boxes, classes, size, 10)
    logits = np.log(np.clip(heat[0], 1e-6, 1 - 1e-6) / (1 - np.clip(heat[0], 1e-6, 1 - 1e-6)))
    out = np.concatenate([logits, box[0]])
    dets = detector.decode(out, size, score_floor=0.99)
    order = np.argsort(dets.classes)
    assert list(dets.classes[order]) == [3, 7]
    np.testing.assert_allclose(dets.boxes[order], boxes[0], atol=1e-3)


def test_tinydet_family_member_takes_the_frame_and_exports_to_onnx():
    from edgeprune.export import to_onnx_bytes
    from edgeprune.models import create, list_models
    from edgeprune.ort import ort_session

    assert "tinydet" in list_models(task="detect") and "tinydet" not in list_models(task="classify")
    model = create("tinydet", num_classes=10, in_channels=1, width=4, input_size=64).eval()
    x = torch.rand(1, 1, st.CANVAS, st.CANVAS)
    assert model(x).shape == (1, 14, 16, 16)  # 64 px input, stride 4
    sess = ort_session(to_onnx_bytes(model, (1, st.CANVAS, st.CANVAS)))  # checked against PyTorch inside
    assert sess.run(None, {"input": x.numpy()})[0].shape == (1, 14, 16, 16)
    with pytest.raises(ConfigError, match="multiple of 16"):
        create("tinydet", num_classes=10, in_channels=1, input_size=70)


def test_classification_commands_refuse_a_detector_naming_its_command(tmp_path):
    from typer.testing import CliRunner

    from edgeprune import sweep
    from edgeprune.cli import app

    res = CliRunner().invoke(app, ["train", "-m", "tinydet", "--epochs", "1", "--subset", "64",
                                   "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "model 'tinydet' is a 'detect' model and `edgeprune train` takes 'classify' models only; use " \
           "`edgeprune detect train` for it" in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())  # nothing half-written
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndata: {name: fashion-mnist}\nmodels: [tinydet]\n"
                    "methods: [{name: snip, sparsities: [0.5]}]\n")
    with pytest.raises(ConfigError, match=r"model 'tinydet' is a 'detect' model and a sweep \(models\[0\]\) takes"):
        sweep.load_spec(spec)
    listed = CliRunner().invoke(app, ["models", "tinydet"]).output
    assert "tinydet  (detect: `edgeprune detect train`)" in listed


def test_training_fits_a_few_frames(item_set):
    stream = st.make([st.Segment("a", 16, (24, 40), (0.0, 1.0), objects=(2, 3))], seed=0, item_set=item_set)
    cfg = detector.TrainConfig(sizes=(64,), epochs=30, batch_size=8, lr=5e-3, width=4)
    losses = []
    model, _ = detector.train(stream, cfg, lambda s, n, loss: losses.append(loss))
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert model.input_size is None and not model.training


class Stub:
    """A detector without a network: fixed latency, detections read off the frame (no ground truth)."""

    def __init__(self, name, input_size, ms, classes=tuple(range(10))):
        self.name, self.input_size, self.ms, self.classes = name, input_size, ms, tuple(classes)

    def detect(self, frame):
        ys, xs = np.nonzero(frame > 100)
        if not len(xs):
            return Detections.empty(), self.ms
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return Detections(box, np.array([0.9], np.float32), np.array([0])), self.ms


def constant_trace(frames, ms):
    det = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([0]))
    return realtime.Trace({n: [det] * frames for n in ms}, {n: np.full(frames, v) for n, v in ms.items()}, 0)


def test_replay_skips_frames_while_busy_and_answers_with_the_newest_result():
    trace = constant_trace(10, {"slow": 240.0})
    r = realtime.replay(trace, 10.0, realtime.Fixed("slow"))
    assert [c[1] for c in r.calls] == [0, 2, 4, 7, 9]  # each call takes the newest frame that has arrived
    assert r.answers[:8] == [None, None, ("slow", 0), ("slow", 0), ("slow", 2), ("slow", 2), ("slow", 2),
                             ("slow", 4)]
    with pytest.raises(ConfigError, match="fps must be a positive"):
        realtime.replay(trace, 0, realtime.Fixed("slow"))


def test_selector_inputs_never_include_labels(item_set):
    # structurally: what a chooser is handed, and what the replay that hands it is given
    assert [f.name for f in dataclasses.fields(realtime.Observation)] == ["detector", "frame", "detections",
                                                                           "latency_ms"]
    assert list(inspect.signature(realtime.replay).parameters) == ["trace", "fps", "chooser", "frames",
                                                                 "charge_selector"]
    assert {f.name for f in dataclasses.fields(realtime.Trace)} == {"detections", "latency_ms", "load_processes"}
    # behaviourally: the same frames with other ground truth give the same decisions (the selector's own time
    # left off the clock, so that the two replays are timed alike)
    stream = small_stream(item_set, frames=60)
    scrambled = dataclasses.replace(stream, boxes=[b[::-1] * 0.5 for b in stream.boxes],
                                    classes=[(c + 1) % 10 for c in stream.classes])
    prof = synthetic_profile()
    decisions = []
    for s in (stream, scrambled):
        dets = [Stub("d128", 128, 4.0), Stub("d64", 64, 1.0)]
        chooser = roma.Roma(prof, fps=500, window=5)
        realtime.replay(realtime.trace(dets, s, 0), 500, chooser, charge_selector=False)
        decisions.append([(d["frame"], d["want"], d.get("rap")) for d in chooser.decisions])
    assert decisions[0] == decisions[1] and len(decisions[0]) > 3


def synthetic_profile(host=None):
    """d128: good at small objects, slow; d64: blind to small objects, fast."""
    from edgeprune.detection.profile import DetectorProfile, Profile, machine

    here = machine()
    return Profile(
        detectors={"d128": DetectorProfile(128, 4.0, 5.0, 0.8, [0.8, 0.8, 0.8, 0.8, 0.8]),
                   "d64": DetectorProfile(64, 1.0, 1.2, 0.5, [0.0, 0.1, 0.6, 0.75, 0.8])},
        classes=list(range(10)), size_bins=list(profile.SIZE_BINS), speed_bins=list(profile.SPEED_BINS),
        beta=[0.0, 0.1, 0.4], ap_drop={}, machine={**here, "host": host or here["host"]}, stream={})


def obs(detector, frame, side, ms, speed=0.0, n=3):
    boxes = np.array([[10 + 30 * i + speed * frame, 10, 10 + 30 * i + speed * frame + side, 10 + side]
                      for i in range(n)], np.float32)
    return realtime.Observation(detector, frame, Detections(boxes, np.full(n, 0.9, np.float32),
                                                            np.zeros(n, np.int64)), ms)


def test_roma_prefers_the_large_input_for_small_slow_objects_and_the_fast_one_for_large_fast_objects():
    r = roma.Roma(synthetic_profile(), fps=500, window=7, patience=2, alpha=1.0)
    assert r.start() == "d128"
    # large (40 px) fast (6 px/frame) objects at d128's profiled latency (2 frames per call, so 4 calls in a
    # window of 7 frames): d64 wins, but only after two windows (hysteresis)
    wants = [r.observe(obs("d128", 2 * i, 40, 4.0, speed=6.0)) for i in range(8)]
    assert wants == ["d128"] * 7 + ["d64"]
    assert r.decisions[0]["rap"]["d64"] > r.decisions[0]["rap"]["d128"]
    # small (10 px) slow objects, seen by d64 in every frame: back to d128, again after two windows
    wants = [r.observe(obs("d64", 100 + i, 10, 1.0)) for i in range(14)]
    assert wants == ["d64"] * 13 + ["d128"]


def test_roma_size_histogram_bins_confident_sides_with_the_profiles_edges():
    # sides 6, 12 (an edge: the bin above), 17.9, 40 and 1000 (past the last edge: the last bin); a 0.2 score
    # is not confident and not counted
    sides_, scores = [6.0, 12.0, 17.9, 40.0, 1000.0, 20.0], [0.9, 0.9, 0.9, 0.9, 0.9, 0.2]
    boxes = np.array([[0, 0, s, s] for s in sides_], np.float32)
    window = [realtime.Observation("d128", 0, Detections(boxes, np.array(scores, np.float32),
                                                         np.zeros(6, np.int64)), 4.0)]
    est = roma.Roma(synthetic_profile(), fps=500).estimate(window)
    assert est["sizes"] == [0.2, 0.4, 0.0, 0.0, 0.4]
    assert est["rap"]["d64"] == pytest.approx(0.2 * 0.0 + 0.4 * 0.1 + 0.4 * 0.8)  # no speed seen: β 0


def test_roma_keeps_the_detector_on_an_empty_window_and_tracks_the_slowdown():
    r = roma.Roma(synthetic_profile(), fps=500, window=3, alpha=1.0)
    r.start()
    empty = [realtime.Observation("d128", i, Detections.empty(), 4.0) for i in range(3)]
    assert [r.observe(e) for e in empty] == ["d128"] * 3
    assert "no confident detection" in r.decisions[-1]["reason"]
    for i in range(3):
        r.observe(obs("d128", i, 10, 8.0))
    assert r.decisions[-1]["slowdown"] == pytest.approx(2.0)  # observed 8 ms against a profiled 4 ms


def test_roma_keeps_only_the_newest_decisions_when_asked():
    # a server decides for as long as it runs: its decision log is bounded, the choices the same
    full, bounded = (roma.Roma(synthetic_profile(), fps=500, window=3, alpha=1.0, keep=keep) for keep in (None, 2))
    wants = []
    for r in (full, bounded):
        r.start()
        wants.append([r.observe(obs("d128", i, 40, 4.0, speed=6.0)) for i in range(15)])
    assert len(full.decisions) == 5 and list(bounded.decisions) == list(full.decisions)[-2:]
    assert wants[0] == wants[1] and "d64" in wants[0]


@pytest.mark.parametrize("kwargs, message", [({"fps": 0}, "fps must be a positive"),
                                             ({"fps": -30}, "fps must be a positive"),
                                             ({"fps": 30, "window": 0}, "window >= 1"),
                                             ({"fps": 30, "initial": "d999"}, "'d999' is not in the profile")])
def test_roma_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        roma.Roma(synthetic_profile(), **kwargs)


def test_detectors_with_different_class_sets_are_refused():
    with pytest.raises(ConfigError, match="detects classes"):
        detector.check_classes([Stub("a", 64, 1.0), Stub("b", 96, 1.0, classes=range(5))])


def test_a_profile_from_another_machine_warns_and_is_rescaled_by_a_measured_ratio(tmp_path):
    path = tmp_path / "roma.json"
    profile.save(synthetic_profile(host="jetson-nano"), path)
    messages = []
    dets = [Stub("d128", 128, 8.0), Stub("d64", 64, 2.0)]  # twice as slow here as profiled
    p = profile.load(path, dets, warn=messages.append)
    assert len(messages) == 1 and "'jetson-nano'" in messages[0] and "rescaled by 2" in messages[0]
    assert (p.detectors["d128"].p50_ms, p.detectors["d64"].p50_ms, p.rescaled["ratio"]) == (8.0, 2.0, 2.0)
    profile.save(synthetic_profile(), tmp_path / "here.json")
    same = profile.load(tmp_path / "here.json", dets, warn=messages.append)
    assert len(messages) == 1 and same.rescaled is None  # measured here: used as recorded
    with pytest.raises(profile.ProfileError, match="profiles detectors"):
        profile.load(path, [Stub("d96", 96, 1.0)], warn=messages.append)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(profile.ProfileError, match="not a ROMA profile"):
        profile.load(tmp_path / "bad.json")


def test_fit_beta_recovers_the_degradation_factor():
    assert profile.fit_beta([[0.9 ** k for k in range(1, 7)], [0.9 ** k for k in range(1, 4)]]) == \
        pytest.approx(0.1)
    assert profile.fit_beta([[0.0, -1.0]]) == 0.0


# latencies whose deliveries never fall exactly on a frame's deadline: there the loop's float clock decides
# either way
@pytest.mark.parametrize("frames_per_call", [0.5, 1.37, 2.718, 4.123])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5])
def test_staleness_is_the_realtime_timeline_for_a_constant_latency(frames_per_call, beta):
    from edgeprune.serve.policy import expected_realtime_accuracy

    want = expected_realtime_accuracy(1.0, frames_per_call * 10, 100.0, beta, 0.0, calls=100)  # 10 ms periods
    assert roma.staleness(frames_per_call, beta) == pytest.approx(want, abs=2e-3)  # the last frame may differ


def test_tod_follows_the_median_size_through_its_thresholds():
    tod = roma.Tod(["d128", "d96", "d64"], [15.0, 30.0], window=2)
    assert tod.start() == "d128"
    assert [tod.observe(obs("d128", i, 40, 4.0)) for i in range(2)] == ["d128", "d64"]
    assert [tod.observe(obs("d64", i, 20, 1.0)) for i in range(2)] == ["d64", "d96"]
    with pytest.raises(ConfigError, match="increasing thresholds"):
        roma.Tod(["d128", "d64"], [10.0, 20.0])


def test_the_serving_layer_roma_policy_decides_from_the_requests_outputs(tmp_path):
    from edgeprune.portfolio import Manifest, Variant
    from edgeprune.serve import policy

    def variant(vid, p50):
        return Variant(id=vid, source=vid, method="tinydet", onnx=f"{vid}.onnx", sha256="", model_file=f"{vid}.pt",
                       model_sha256="", accuracy=0.0, params=1, nonzero_params=1, macs=1, bytes=1, p50_ms=p50,
                       p90_ms=p50)

    manifest = Manifest(data="synthetic-stream", input_name="input", input_shape=[1, 128, 128], datatype="FP32",
                        classes=10, batch_size=1, threads=1, variants=[variant("d64", 1.0), variant("d128", 4.0)],
                        task="detect")
    path = tmp_path / "roma.json"
    profile.save(synthetic_profile(), path)
    p = policy.make(manifest, "roma", profile=str(path), fps=500, patience=1)
    assert p.params() == {"profile": str(path), "fps": 500.0, "margin": 0.02, "patience": 1}

    def output(shift):  # what d128 (32x32 cells) answers, decoded, for two 40 px objects moved by `shift` px
        boxes = np.array([[10 + shift + 42 * i, 30, 50 + shift + 42 * i, 70] for i in range(2)], np.float32)
        heat, box, _ = detector.targets([boxes], [np.array([1, 2])], 128, 10)
        h = np.clip(heat[0], 1e-6, 1 - 1e-6)
        return [detector.decode(np.concatenate([np.log(h / (1 - h)), box[0]]), 128)]

    # 4 ms per request at 500 fps: 2 frames apart, objects 12 px further each time: fast, d128 drops frames
    d = p.decide(policy.Window("d128", [4.0] * 5, 0.02, [output(12 * i) for i in range(5)]))
    assert (d.active, d.want) == ("d128", "d64")
    assert d.inputs["speed"] == pytest.approx(6.0, abs=0.1) and d.inputs["requests"] == 5
    assert p.decide(policy.Window("d64", [1.0], 0.01, [])).reason == "no output in the window: keep the detector"
    with pytest.raises(ConfigError, match="this portfolio holds classifiers"):
        policy.make(dataclasses.replace(manifest, task="classify"), "roma", profile=str(path))
    other = Manifest(**{**manifest.__dict__, "variants": [variant("d96", 2.0)]})
    with pytest.raises(ConfigError, match="the portfolio holds"):
        policy.make(other, "roma", profile=str(path))


@pytest.mark.slow
def test_detect_commands_train_profile_and_compare_choosers(tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app
    from edgeprune.errors import DataNotFoundError

    try:
        st.items("val")
    except DataNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (make data)")
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, ["-q", "detect", *map(str, args)])
        assert result.exit_code == 0, result.output
        return result

    fam, prof_path, out = tmp_path / "fam", tmp_path / "roma.json", tmp_path / "run.json"
    invoke("train", "--out", fam, "--frames", 40, "-e", 1, "--sizes", "64,80", "--width", 4)
    assert sorted(p.name for p in fam.iterdir()) == ["d64.onnx", "d80.onnx", "family.json", "model.pt"]
    invoke("profile", fam, "--out", prof_path, "--frames-per-segment", 10)
    assert sorted(json.loads(prof_path.read_text())["detectors"]) == ["d64", "d80"]
    invoke("run", prof_path, "--family", fam, "--fps", 500, "--frames-per-segment", 20, "--load-processes", 0,
           "--window", 5, "--json", out)
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == ["fixed d64", "fixed d80", "oracle", "roma", "tod"]
    for seg, ap in rows["oracle"]["segments"].items():  # the oracle takes the best fixed detector of each segment
        assert ap == max(rows[f"fixed {d}"]["segments"][seg] for d in ("d64", "d80"))
    bad = runner.invoke(app, ["detect", "run", str(prof_path), "--family", str(fam), "--fps", "0"])
    assert bad.exit_code == 2 and "--fps must be a positive number" in bad.output
    assert runner.invoke(app, ["detect", "train", "--help"]).output.count("Example") == 1
