import pytest

from edgeprune.errors import ConfigError
from edgeprune.portfolio import Manifest, Variant
from edgeprune.serve import policy
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


def test_expected_realtime_accuracy_discounts_dropped_frames():
    assert expected_realtime_accuracy(0.9, 30.0, 30, 0.5) == pytest.approx(0.9)  # one frame per answer
    assert expected_realtime_accuracy(0.9, 60.0, 30, 0.5) == pytest.approx(0.9 * (1 + 0.5) / 2)
    assert expected_realtime_accuracy(0.9, 90.0, 30, 1.0) == pytest.approx(0.3)  # stale answers worthless
    assert expected_realtime_accuracy(0.9, 1000.0, 30, 0.0) == pytest.approx(0.9)  # a still scene drops nothing


def test_realtime_policy_picks_the_best_expected_accuracy_from_measured_latency(manifest):
    p = policy.make(manifest, "realtime", fps=250, beta=0.5, alpha=1.0)
    d = p.decide(window("dense", 4.0))  # dense as profiled: 1 frame of 4 ms each; 0.9 expected
    assert d.want == "dense" and d.inputs["expected_accuracy"]["dense"] == pytest.approx(0.9)
    d = p.decide(window("dense", 12.0))  # 3x slower now: dense answers 1 frame in 3, mid 1 in 2, small 1 in 1
    exp = d.inputs["expected_accuracy"]
    assert exp["dense"] == pytest.approx(0.9 * 1.75 / 3) and exp["mid"] == pytest.approx(0.88 * 1.5 / 2)
    assert exp["small"] == pytest.approx(0.8) and d.want == "small"
    assert d.inputs["latency_ms"] == {"dense": 12.0, "mid": pytest.approx(6.0), "small": pytest.approx(3.0)}


def test_fixed_policy_keeps_what_the_api_chose(manifest):
    assert policy.make(manifest, "fixed", variant="mid").decide(window("dense", 100.0)).want == "mid"
    assert policy.make(manifest, "fixed").decide(window("dense", 100.0)).want == "dense"


@pytest.mark.parametrize(("name", "params", "message"), [
    ("fastest", {}, "unknown policy 'fastest'; choose from fixed, accuracy-floor, latency, realtime"),
    ("latency", {"budget": 5}, "policy 'latency' takes alpha, budget_ms, down_after, margin, up_after; not budget"),
    ("latency", {"budget_ms": "fast"}, "budget_ms must be a number (float), got 'fast'"),
    ("latency", {"budget_ms": -1}, "budget_ms > 0"),
    ("accuracy-floor", {"accuracy": 85}, "accuracy floor is a fraction in [0, 1], got 85"),
    ("fixed", {"variant": "huge"}, "unknown variant 'huge'; the portfolio holds small, mid, dense"),
])
def test_bad_policy_parameters_are_named(manifest, name, params, message):
    with pytest.raises(Exception, match=None) as e:
        policy.make(manifest, name, **params)
    assert message in str(e.value)
    assert isinstance(e.value, ConfigError) or type(e.value).__name__ == "PortfolioError"
