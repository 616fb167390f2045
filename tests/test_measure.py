import json

import pytest
import torch
from torch.nn.utils import prune

from edgeprune import measure, timing
from edgeprune.errors import ConfigError


def test_params_and_nonzero_count(tiny):
    # conv 4*1*3*3 = 36, BN 4 weights (1) + 4 biases (0), fc 4*3 + 3
    assert measure.count_params(tiny) == (36 + 8 + 15, 36 + 4 + 15)
    with torch.no_grad():
        tiny.conv.weight[0] = 0
    assert measure.count_params(tiny) == (59, 55 - 9)


def test_macs_are_exact_for_conv_and_linear(tiny):
    # conv: 8*8 outputs * 4 channels * (1*3*3) ; fc: 4*3
    assert measure.layer_macs(tiny, (1, 8, 8)) == {"conv": 2304, "fc": 12}
    assert measure.count_macs(tiny, (1, 8, 8)) == (2316, 2316)


def test_effective_macs_weigh_layers_by_density(tiny):
    mask = torch.ones_like(tiny.conv.weight)
    mask[:2] = 0  # half of the conv's weights
    prune.custom_from_mask(tiny.conv, "weight", mask)
    dense, effective = measure.count_macs(tiny, (1, 8, 8))
    assert (dense, effective) == (2316, 2304 // 2 + 12)
    # weight_orig is counted once, the mask buffer not at all, and masked weights are zeros
    assert measure.count_params(tiny) == (59, 55 - 18)


def test_latency_percentiles_are_ordered(tiny):
    from edgeprune.export import to_onnx_bytes

    t = timing.latency_torch(tiny, (1, 8, 8), batch_size=2, threads=1, runs=7, warmup=1)
    o = timing.latency_onnx(to_onnx_bytes(tiny, (1, 8, 8)), (1, 8, 8), batch_size=2, runs=7, warmup=1)
    for lat, rt in ((t, "torch"), (o, "onnxruntime")):
        assert lat.runtime == rt and lat.runs == 7 and lat.threads == 1 and lat.batch_size == 2
        assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms


def test_interleaved_latency_times_every_model_every_round(tiny, tmp_path):
    from edgeprune.export import to_onnx_bytes

    small = to_onnx_bytes(tiny, (1, 8, 8))
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1))
    (tmp_path / "wide.onnx").write_bytes(to_onnx_bytes(wide, (1, 32, 32)))
    rounds = []
    got = timing.latency_onnx_interleaved({"small": (small, (1, 8, 8)), "wide": (tmp_path / "wide.onnx", (1, 32, 32))},
                                           batch_size=2, threads=1, rounds=3, runs=4, warmup=1,
                                           progress=lambda done, total: rounds.append((done, total)))
    assert rounds == [(1, 3), (2, 3), (3, 3)]
    for lat in got.values():
        assert lat.runtime == "onnxruntime" and lat.batch_size == 2 and lat.runs == 12 and lat.warmup == 1
        assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms
    assert got["wide"].p50_ms > got["small"].p50_ms  # 64-channel convs at 32×32 vs a few hundred MACs
    with pytest.raises(ConfigError, match="rounds >= 1, got 0"):
        timing.latency_onnx_interleaved({"small": (small, (1, 8, 8))}, rounds=0)


def test_interleaved_latency_lets_spinning_threads_settle_only_with_several_threads(tiny, monkeypatch):
    from edgeprune.export import to_onnx_bytes

    onnx = to_onnx_bytes(tiny, (1, 8, 8))
    pauses = []
    monkeypatch.setattr(timing.time, "sleep", pauses.append)
    two = {"a": (onnx, (1, 8, 8)), "b": (onnx, (1, 8, 8))}
    timing.latency_onnx_interleaved(two, threads=2, rounds=3, runs=2, warmup=0)
    assert pauses == [timing.SETTLE_S] * 6  # before every model's block in every round
    pauses.clear()
    timing.latency_onnx_interleaved(two, threads=1, rounds=3, runs=2, warmup=0)
    timing.latency_onnx_interleaved(two, threads=2, rounds=3, runs=2, warmup=0, settle_s=0)
    assert pauses == []  # one thread: no worker threads to wait for; settle_s=0 turns it off
    with pytest.raises(ConfigError, match="settle_s must be >= 0 seconds, got -1"):
        timing.latency_onnx_interleaved(two, threads=2, settle_s=-1)


def test_latency_ratio_is_first_over_second_and_takes_exactly_two(tiny, monkeypatch):
    from edgeprune.export import to_onnx_bytes

    onnx = to_onnx_bytes(tiny, (1, 8, 8))
    fake = {"x": timing.Latency("onnxruntime", 1, 1, 3.0, 3.0, 3.0, 3.0, 1, 0),
            "y": timing.Latency("onnxruntime", 1, 1, 2.0, 2.0, 2.0, 2.0, 1, 0)}
    monkeypatch.setattr(timing, "latency_onnx_interleaved", lambda pair, *a: {n: fake[n] for n in pair})
    assert timing.latency_ratio_onnx({"x": (onnx, (1, 8, 8)), "y": (onnx, (1, 8, 8))}) == pytest.approx(1.5)
    assert timing.latency_ratio_onnx({"y": (onnx, (1, 8, 8)), "x": (onnx, (1, 8, 8))}) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="compares two models, got 1"):
        timing.latency_ratio_onnx({"x": (onnx, (1, 8, 8))})


def test_profile_round_trips_through_json(tiny):
    prof = measure.profile(tiny, (1, 8, 8), batch_sizes=(1, 4), threads=(1,), runs=3, warmup=1)
    assert len(prof.latency) == 4  # 2 runtimes × 2 batch sizes × 1 thread count
    assert prof.bytes_gzip < prof.bytes_fp32
    assert prof.accuracy is None
    back = measure.Profile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert back == prof
    assert back.latency_of("onnxruntime", 4, 1) is not None


@pytest.mark.parametrize("kwargs", [{"batch_sizes": (0,)}, {"threads": (0,)}, {"runtimes": ("tflite",)}])
def test_bad_measurement_options_name_the_value(tiny, kwargs):
    with pytest.raises(ConfigError) as e:
        measure.profile(tiny, (1, 8, 8), runs=1, warmup=0, **kwargs)
    assert str(next(iter(kwargs.values()))[0]) in str(e.value)
