"""How far apart does interleaved timing put identical models? `edgeprune report --retime` and budget.py time
several ONNX Runtime sessions round-robin (timing.latency_onnx_interleaved). Here every session holds the
same model, so every p50 should be equal: the spread (slowest / fastest p50) is the noise a latency ratio
between two runs of a report carries. Timed with and without the pause that lets the previous session's
spinning worker threads go idle (timing.SETTLE_S), at batch 1 with 1 thread and batch 32 with 2 threads,
for fresh dense ResNet-20 (1×28×28) and VGG-16 (3×32×32). Inputs are synthetic tensors (latency does not
depend on the data or the weights).

    PYTHONPATH=src .venv/bin/python benchmarks/timing_noise.py     # about 2 min on 2 cores

Results: benchmarks/results/timing_noise.{md,json}.
"""

from __future__ import annotations

import statistics

import torch
from common import measured, write_results

from edgeprune import export, measure, models, timing

CASES = (("resnet20", (1, 28, 28)), ("vgg16", (3, 32, 32)))
SETTINGS = ((1, 1), (32, 2))  # (batch size, threads)
COPIES = 12
ROUNDS, RUNS = 6, 10  # edgeprune report's defaults


def spread(onnx: bytes, shape: tuple[int, ...], batch: int, threads: int, settle_s: float) -> dict:
    copies = {f"copy{i}": (onnx, shape) for i in range(COPIES)}
    got = timing.latency_onnx_interleaved(copies, batch, threads, ROUNDS, RUNS, settle_s=settle_s)
    p50 = sorted(t.p50_ms for t in got.values())
    return {"min_ms": p50[0], "median_ms": statistics.median(p50), "max_ms": p50[-1], "spread": p50[-1] / p50[0]}


def main() -> None:
    rows = []
    for model_name, shape in CASES:
        torch.manual_seed(0)
        onnx = export.to_onnx_bytes(models.create(model_name, 10, shape[0]), shape, check=False)
        for batch, threads in SETTINGS:
            for settle in (0.0, timing.SETTLE_S):
                rows.append({"model": model_name, "batch": batch, "threads": threads, "settle_s": settle,
                             **spread(onnx, shape, batch, threads, settle)})
                print(rows[-1], flush=True)
    env = measure.environment()
    lines = ["# Interleaved timing of identical models", "",
             measured("timing_noise.py", env, "onnxruntime") + ": "
             f"{COPIES} sessions of the same fresh model timed round-robin "
             f"({ROUNDS} rounds × {RUNS} calls each, as `edgeprune report --retime` does), synthetic inputs. All "
             "p50s should be equal; spread = slowest / fastest p50, the noise in a latency ratio between two runs. "
             f"Pause: seconds waited (then one untimed call) before each model's block; {timing.SETTLE_S:g} s is "
             "the default with more than one thread.", "",
             "| model | batch | threads | pause s | fastest p50 ms | median p50 ms | slowest p50 ms | spread |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['threads']} | {r['settle_s']:g} | {r['min_ms']:.3f} | "
              f"{r['median_ms']:.3f} | {r['max_ms']:.3f} | {r['spread']:.2f}× |" for r in rows]
    write_results("timing_noise", lines, {"environment": env, "copies": COPIES, "rounds": ROUNDS, "runs": RUNS,
                                          "rows": rows})


if __name__ == "__main__":
    main()
