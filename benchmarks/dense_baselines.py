"""Dense baselines: size, MACs, CPU latency (ONNX Runtime and PyTorch eager) and peak inference memory.

Models are freshly initialised: latency, MACs and size do not depend on trained weights.
Run from the repository root:
    PYTHONPATH=src .venv/bin/python benchmarks/dense_baselines.py [--runs N] [--warmup M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from edgeprune import measure
from edgeprune.models import create

RESULTS = Path(__file__).parent / "results"
THREADS = (1, 2)
# (name, classes, input shape); the first two are the smallest, used by --quick.
MODELS: list[tuple[str, int, tuple[int, int, int]]] = [
    ("resnet20", 10, (3, 32, 32)),
    ("resnet56", 10, (3, 32, 32)),
    ("vgg16", 10, (3, 32, 32)),
    ("mobilenetv2", 10, (3, 32, 32)),
    ("tv:resnet18", 1000, (3, 224, 224)),
    ("tv:mobilenet_v2", 1000, (3, 224, 224)),
]
# Published (params, MACs) per sample: He et al. 2016 for the CIFAR ResNets, torchvision docs for tv:*.
PUBLISHED: dict[str, tuple[float, float]] = {
    "resnet20": (0.27e6, 41e6),
    "resnet56": (0.85e6, 125e6),
    "tv:resnet18": (11.7e6, 1.82e9),
    "tv:mobilenet_v2": (3.5e6, 0.30e9),
}
TOLERANCE = 0.05


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def measure_model(name: str, classes: int, shape: tuple[int, int, int], runs: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = create(name, classes, shape[0]).eval()
    prof = measure.profile(model, shape, batch_sizes=(1,), threads=THREADS, runs=runs, warmup=warmup, memory=True)
    ort1, ort2, pt1 = (prof.latency_of(rt, 1, t) for rt, t in (("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1)))
    published = PUBLISHED.get(name)
    mismatches = [
        f"{what} {ours:,} vs published {ref:,.0f} ({ours / ref - 1:+.1%})"
        for what, ours, ref in zip(("params", "MACs"), (prof.params, prof.macs), published or (), strict=False)
        if abs(ours / ref - 1) > TOLERANCE
    ]
    return {
        "model": name, "input_shape": list(shape), "num_classes": classes,
        "params": prof.params, "macs": prof.macs, "bytes_fp32": prof.bytes_fp32, "bytes_gzip": prof.bytes_gzip,
        "ort_p50_ms_1t": ort1.p50_ms, "ort_p90_ms_1t": ort1.p90_ms,
        "ort_p50_ms_2t": ort2.p50_ms, "ort_p90_ms_2t": ort2.p90_ms,
        "torch_p50_ms_1t": pt1.p50_ms, "ort_speedup_vs_torch_1t": pt1.p50_ms / ort1.p50_ms,
        "peak_memory_mb": prof.peak_memory_mb,
        "published_params": published[0] if published else None,
        "published_macs": published[1] if published else None,
        "mismatches": mismatches,
        "latency": [asdict(t) for t in prof.latency],
    }


def markdown_table(rows: list[dict]) -> str:
    def opt(v: float | None, scale: float, fmt: str) -> str:
        return "–" if v is None else format(v / scale, fmt)

    head = ("Model", "Input", "Params (M)", "Published params (M)", "MACs (M)", "Published MACs (M)",
            "fp32 state (MiB)", "gzip (MiB)", "ORT p50 1 thread (ms)", "ORT p90 1 thread (ms)",
            "ORT p50 2 threads (ms)", "ORT p90 2 threads (ms)", "PyTorch p50 1 thread (ms)",
            "ORT speed-up vs PyTorch (b1, 1 thread)", "Peak inference memory (MiB)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r["model"], "×".join(map(str, r["input_shape"])), f"{r['params'] / 1e6:.3f}",
                 opt(r["published_params"], 1e6, ".2f"), f"{r['macs'] / 1e6:.1f}", opt(r["published_macs"], 1e6, ".0f"),
                 f"{r['bytes_fp32'] / 2**20:.2f}", f"{r['bytes_gzip'] / 2**20:.2f}",
                 f"{r['ort_p50_ms_1t']:.2f}", f"{r['ort_p90_ms_1t']:.2f}", f"{r['ort_p50_ms_2t']:.2f}",
                 f"{r['ort_p90_ms_2t']:.2f}", f"{r['torch_p50_ms_1t']:.2f}", f"{r['ort_speedup_vs_torch_1t']:.2f}×",
                 opt(r["peak_memory_mb"], 1, ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], env: dict, settings: dict) -> str:
    mismatches = [f"- **{r['model']}**: " + "; ".join(r["mismatches"]) for r in rows if r["mismatches"]]
    check = ("Mismatches with published figures (> 5 %):\n\n" + "\n".join(mismatches) if mismatches
             else "All published parameter and MAC counts are matched within 5 %.")
    return f"""# Dense baselines

Measured {settings['date']} by `benchmarks/dense_baselines.py` on {env['cpu_count']} CPU cores
({settings['cpu_model']}, {env['machine']}), Python {env['python']}, torch {env['torch']},
onnxruntime {env['onnxruntime']}; load average at start {settings['load_average']}, measurement wall time
{settings['wall_s']:.0f} s. Models are freshly initialised (latency, MACs and size do not depend on trained
weights). Inputs are synthetic random tensors, batch 1. Latencies are medians (p50) and p90 of
{settings['runs']} timed runs after {settings['warmup']} warm-ups with {' and '.join(map(str, THREADS))} intra-op
threads, on a machine shared with other work: compare ratios within the table rather than absolute values.
The ORT speed-up is PyTorch eager p50 / ONNX Runtime p50 at 1 thread, measured in the same run. MACs are per
sample, conv/linear only (FlopCounterMode FLOPs / 2); state sizes are the fp32 `state_dict` as saved by
`torch.save`, raw and gzip-compressed; peak memory is what a fresh ONNX Runtime CPU process adds to load and
run the model. Published figures: He et al. 2016 (CIFAR ResNets), torchvision documentation (`tv:*`).

{markdown_table(rows)}

{check}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per latency (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs per latency (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: runs=5, warmup=1, two smallest models; prints only, writes no results")
    args = parser.parse_args()
    runs, warmup, models = (5, 1, MODELS[:2]) if args.quick else (args.runs, args.warmup, MODELS)
    load = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for name, classes, shape in models:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(measure_model(name, classes, shape, runs, warmup))
    env = measure.environment()
    settings = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs, "warmup": warmup,
                "batch_size": 1, "threads": list(THREADS), "cpu_model": cpu_model(),
                "load_average": " / ".join(f"{v:.2f}" for v in load), "wall_s": time.perf_counter() - start}
    print(markdown_table(rows))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "dense_baselines.md").write_text(markdown(rows, env, settings))
        payload = {"settings": settings, "environment": env, "rows": rows}
        (RESULTS / "dense_baselines.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
