import pytest

from edgeprune.errors import ConfigError
from edgeprune.portfolio import Manifest, Variant
from edgeprune.serve import policy, registry
from edgeprune.serve.policy import Window, expected_realtime_accuracy


def variant(vid, accuracy, p50):
    return Variant(id=vid, source=vid, method="x", onnx=f"{vid}.onnx", sha256="", model_file=f"{vid}.pt",
                   model_sha256="", accuracy=accuracy, params=1, nonzero_params=1, macs=1, bytes=1, p50_ms=p50,
                   p90_ms=p50 * 1.2)


@pytest.fixture
def manifest():
    # small: fast and least accurate; dense: slow and most accurate
    return Manifest(data="d", input_name="input", input_shape=[1, 8, 8], datatype="FP32", classes=10, batch_size=1,
                    threads=1, variants=[variant("small", 0.80, 1.0), variant("mid", 0.88, 2.0),
                                         variant("dense", 0.90, 4.0)])


def window(vid, ms, n=20):
    return Window(vid, [ms] * n, 0.5)


def test_accuracy_floor_serves_the_fastest_variant_above_it(manifest):
    p = policy.make(manifest, "accuracy-floor", accuracy=0.85)
    d = p.decide(window("dense", 4.8))
    assert (d.want, d.budget_met) == ("mid", True)
    d = policy.make(manifest, "accuracy-floor", accuracy=0.95).decide(window("mid", 2.4))
    assert (d.want, d.budget_met) == ("dense", False)  # unreachable: the most accurate, flagged


def test_latency_policy_steps_down_at_once_under_load_and_up_only_after_slack(manifest):
    p = policy.make(manifest, "latency", budget_ms=6.0, alpha=1.0, up_after=3)
    assert p.decide(window("dense", 4.8)).want == "dense"  # profiled p90 4.8 ms: fits 6 * 0.9
    d = p.decide(window("dense", 9.6))  # twice as slow: dense 9.6, mid 4.8 fit 5.4; mid is the most accurate
    assert (d.want, d.inputs["slowdown"], d.inputs["fits"]) == ("mid", 2.0, ["small", "mid"])
    assert d.reason == "over budget: down"
    wants = [p.decide(window("mid", 2.4)).want for _ in range(3)]  # the load is gone: up after 3 windows only
    assert wants == ["mid", "mid", "dense"]


def test_latency_policy_hysteresis_resets_when_slack_is_interrupted(manifest):
    p = policy.make(manifest, "latency", budget_ms=6.0, alpha=1.0, up_after=2)
    assert p.decide(window("mid", 2.4)).want == "mid"  # slack 1/2
    assert p.decide(window("mid", 4.8)).want == "mid"  # r = 2: dense no longer fits; mid is what is wanted
    assert p.decide(window("mid", 2.4)).want == "mid"  # slack counted from 1 again
    assert p.decide(window("mid", 2.4)).want == "dense"


def test_latency_policy_serves_the_fastest_when_nothing_fits(manifest):
    d = policy.make(manifest, "latency", budget_ms=1.0, alpha=1.0).decide(window("dense", 4.8))
    assert (d.want, d.budget_met, d.inputs["fits"]) == ("small", False, [])


def test_expected_realtime_accuracy_counts_how_old_each_frames_answer_is():
    assert expected_realtime_accuracy(0.9, 30.0, 30, 0.5) == pytest.approx(0.9)  # every frame its own answer
    # busy 1.99 periods: a call answers frame j at j + 1.99 periods, then takes frame j + 2 (arrived 0.99 periods
    # before); frames j + 2 and j + 3 get frame j's answer, 2 and 3 frames old (the phase drifts by 0.01 periods a
    # call: 50 calls keep the pattern)
    assert expected_realtime_accuracy(0.9, 1.99, 1000, 0.5, calls=50) == pytest.approx(0.9 * (0.25 + 0.125) / 2,
                                                                                          abs=0.006)
    assert expected_realtime_accuracy(0.9, 1000.0, 30, 0.0) == pytest.approx(0.9)  # a still scene loses nothing
    assert expected_realtime_accuracy(0.9, 60.0, 30, 1.0) == 0.0  # every frame a new scene: stale is worthless
    # ... but for chance: a stale answer of another scene is right with probability 1/classes
    assert expected_realtime_accuracy(0.9, 60.0, 30, 1.0, chance=0.1) == pytest.approx(0.1)
    assert expected_realtime_accuracy(0.9, 1.99, 1000, 0.5, chance=0.1, calls=50) == pytest.approx(
        (0.25 * 0.9 + 0.75 * 0.1 + 0.125 * 0.9 + 0.875 * 0.1) / 2, abs=0.006)
    # a measured sequence counts each call for the frames it covers: one call of 10 periods in 10 weighs more
    # than a tenth
    mixed = expected_realtime_accuracy(0.9, [30.0] * 9 + [330.0], 30, 0.5)
    assert mixed < 0.9 * 9 / 10 * 0.9


def rta(accuracy, latencies, fps=250, beta=0.5):
    return expected_realtime_accuracy(accuracy, latencies, fps, beta, chance=0.1)  # 10 classes


def test_realtime_policy_picks_the_best_expected_accuracy_from_measured_latency(manifest):
    d = policy.make(manifest, "realtime", fps=250, beta=0.5).decide(window("dense", 3.9))
    assert d.want == "dense" and d.inputs["expected_accuracy"]["dense"] == pytest.approx(0.9)  # within a 4 ms period
    # 3x slower than profiled: dense busy 2.9 periods, mid (not measured: scaled, 5.85 ms) 1.5, small (2.9 ms) 0.7
    d = policy.make(manifest, "realtime", fps=250, beta=0.5).decide(window("dense", 11.7))
    assert d.inputs["expected_accuracy"] == {"dense": pytest.approx(rta(0.9, 11.7)), "mid": pytest.approx(
        rta(0.88, 5.85)), "small": pytest.approx(0.8)}
    assert rta(0.9, 11.7) < rta(0.88, 5.85) < 0.8
    assert d.want == "small" and d.inputs["latency_ms"] == pytest.approx({"dense": 11.7, "mid": 5.85, "small": 2.925})
    assert d.inputs["measured"] == ["dense"]


def test_realtime_policy_weighs_the_latencies_it_measured_not_their_median(manifest):
    p = policy.make(manifest, "realtime", fps=250, beta=0.5)
    jittery = [1.9] * 12 + [4.5] * 8  # median 1.9 ms (within a period), but 8 calls of more than one
    d = p.decide(Window("mid", jittery, 0.5))
    assert d.inputs["expected_accuracy"]["mid"] == pytest.approx(rta(0.88, jittery)) != pytest.approx(0.88)
    assert d.inputs["expected_accuracy"]["dense"] == pytest.approx(rta(0.9, [2 * ms for ms in jittery]))


def test_realtime_policy_remembers_each_variants_own_latencies(manifest):
    p = policy.make(manifest, "realtime", fps=250, beta=0.5)
    assert p.decide(window("dense", 9.0)).want == "small"  # dense measured at 9 ms: over 2 periods
    d = p.decide(window("small", 0.9))  # scaled, dense would look fine again (3.6 ms)
    assert d.inputs["latency_ms"]["dense"] == 9.0 and d.inputs["measured"] == ["small", "dense"]
    assert d.want == "mid"  # never measured: scaled from small, 1.8 ms fits a period; 0.88 > 0.8


def test_realtime_policy_switches_only_for_a_gain_above_its_margin(manifest):
    # mid and dense both answer every frame: 0.88 against 0.90 is a gain of 0.02
    assert policy.make(manifest, "realtime", fps=250, beta=0.5).decide(window("mid", 1.9)).want == "dense"
    d = policy.make(manifest, "realtime", fps=250, beta=0.5, margin=0.05).decide(window("mid", 1.9))
    assert d.want == "mid" and d.reason == "no variant better by more than 0.05"


def test_fixed_policy_keeps_what_the_api_chose(manifest):
    assert policy.make(manifest, "fixed", variant="mid").decide(window("dense", 100.0)).want == "mid"
    assert policy.make(manifest, "fixed").decide(window("dense", 100.0)).want == "dense"


@pytest.mark.parametrize(("name", "params", "message"), [
    ("fastest", {}, "unknown policy 'fastest'; choose from fixed, accuracy-floor, latency, realtime"),
    ("latency", {"budget": 5}, "policy 'latency' takes alpha, budget_ms, down_after, margin, up_after; not budget"),
    ("latency", {"budget_ms": "fast"}, "budget_ms must be a number (float), got 'fast'"),
    ("latency", {"budget_ms": -1}, "0 < budget_ms <= 1e+06"),
    ("latency", {"budget_ms": float("nan")}, "budget_ms must be a finite number (float), got nan"),
    ("latency", {"budget_ms": 1e308}, "0 < budget_ms <= 1e+06"),
    ("latency", {"up_after": 10**400}, "up_after must be a finite number (int), got 1000000000"),
    ("latency", {"margin": 10**400}, "margin must be a finite number (float), got 1000000000"),
    ("realtime", {"fps": float("inf")}, "fps must be a finite number (float), got inf"),
    ("realtime", {"fps": 1e308}, "0.001 <= fps <= 10000"),
    ("realtime", {"history": 1e308}, "1 <= history <= 1000000"),
    ("realtime", {"margin": float("nan")}, "margin must be a finite number (float), got nan"),
    ("roma", {"fps": 1e308}, "0.001 <= fps <= 10000"),
    ("fixed", {"variant": 3}, "variant must be a variant's id, one of small, mid, dense; got 3"),
    ("roma", {"profile": 5}, "policy 'roma': profile must be a string, got 5"),
    ("accuracy-floor", {"accuracy": 85}, "accuracy floor is a fraction in [0, 1], got 85"),
    ("fixed", {"variant": "huge"}, "unknown variant 'huge'; the portfolio holds small, mid, dense"),
])
def test_bad_policy_parameters_are_named(manifest, name, params, message):
    with pytest.raises(Exception, match=None) as e:
        policy.make(manifest, name, **params)
    assert message in str(e.value)
    assert isinstance(e.value, ConfigError) or type(e.value).__name__ == "PortfolioError"


def test_a_plugin_policy_is_one_file_named_in_the_environment(manifest, monkeypatch):
    """tests/plugin_policy.py is the whole policy: naming it in $EDGEPRUNE_POLICIES (or importing it) registers
    it; `make` checks its parameters by their declared types like a built-in's."""
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setenv("EDGEPRUNE_POLICIES", "plugin_policy")
    assert policy.names() == ["fixed", "accuracy-floor", "latency", "realtime", "roma", "most-accurate"]
    assert "most-accurate" in policy.names("classify") and "most-accurate" not in policy.names("detect")
    assert policy.make(manifest, "most-accurate").decide(window("small", 1.0)).want == "dense"
    assert policy.make(manifest, "most-accurate", max_ms=2.5).decide(window("small", 1.0)).want == "mid"
    with pytest.raises(ConfigError, match="policy 'most-accurate': max_ms must be a number"):
        policy.make(manifest, "most-accurate", max_ms="fast")
