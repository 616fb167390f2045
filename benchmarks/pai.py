"""Pruning at initialisation (Random, Magnitude, SNIP, GraSP, SynFlow) vs dense vs IMP, ResNet-20 on
Fashion-MNIST (real data), all with the same short training budget (common.py); plus the time the
pruning step alone takes (SNIP; SynFlow with 100 rounds) on ResNet-20 and VGG-16.

    python benchmarks/pai.py       # about 20 min on 2 cores; cells shared with reconvene.py are reused

Results: benchmarks/results/pai.{md,json}.
"""

from __future__ import annotations

import json
import time

import torch
from common import IMP, RESULTS, RUNS, budget_text, cell, p50

from edgeprune import data, masks, measure, models, scores

CRITERIA = ("random", "magnitude", "snip", "grasp", "synflow")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)


def row(run: str, method: str, sparsity: float, report: dict) -> dict:
    p = measure.Profile.from_dict(report["profile"])
    return {"run": run, "method": method, "sparsity": sparsity, "measured_sparsity": p.sparsity,
            "accuracy": p.accuracy, "nonzero": p.nonzero_params, "effective_macs": p.effective_macs,
            "bytes_gzip": p.bytes_gzip, "ort_p50_ms": p50(report), "prune_s": report.get("prune_seconds", 0.0),
            "train_s": report["train"]["seconds"]}


def prune_timing(model_name: str, shape: tuple[int, int, int], criterion: str) -> float:
    """Seconds to score and mask a fresh model to density 0.1 (median of 3); SNIP reads one batch of 128."""
    bundle = data.loaders("synthetic", shape=shape, num_classes=10, size=128, batch_size=128)
    batch = [next(iter(bundle.train))]
    times = []
    for _ in range(3):
        torch.manual_seed(0)
        model = models.create(model_name, 10, shape[0])
        t0 = time.perf_counter()
        masks.prune_iteratively(model, lambda m: scores.score(criterion, m, batch, input_shape=shape), 0.1,
                                rounds=scores.default_rounds(criterion))
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def main() -> None:
    model = "resnet20"
    rows = [row("dense", "dense", 0.0, cell(model, "dense"))]
    for crit in CRITERIA:
        for s in SPARSITIES:
            rows.append(row(f"{crit}-{s}", crit, s, cell(model, f"{crit}-{s}", {"name": crit, "sparsity": s})))
    imp = cell(model, "imp", IMP)
    for lv in imp["levels"][1:]:
        level = json.loads((RUNS / model / "imp" / f"level_{lv['level']:02d}" / "report.json").read_text())
        rows.append(row(f"imp level {lv['level']}", "imp", round(1 - lv["density"], 4), level))
    timing = {f"{c}, {m}": prune_timing(m, shape, c) for c in ("snip", "synflow")
              for m, shape in (("resnet20", (1, 28, 28)), ("vgg16", (3, 32, 32)))}
    env = measure.environment()
    lines = [
        "# Pruning at initialisation vs IMP (Fashion-MNIST, ResNet-20)", "",
        f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/pai.py` on {env['cpu_count']} CPU cores, torch "
        f"{env['torch']}, onnxruntime {env['onnxruntime']}. Budget for every row: {budget_text(model)}. IMP: "
        f"{IMP['levels']} levels removing {IMP['fraction']:.0%} of the remaining weights each, survivors rewound to "
        f"iteration {IMP['rewind_iter']}, the same budget per level (so IMP trains {IMP['levels'] + 1}× longer). "
        "One seed per cell: differences of about a point are noise. Latency is ONNX Runtime p50 at batch 1, "
        "1 thread: unstructured masks leave it at the dense figure, which is why edgeprune removes structure.", "",
        "| run | sparsity (measured) | top-1 % | non-zero params | effective MACs M | gzip KiB | ORT p50 ms | "
        "prune s | train s |", "|" + "---|" * 9,
    ]
    lines += [f"| {r['run']} | {r['measured_sparsity']:.3f} | {100 * r['accuracy']:.2f} | {r['nonzero']:,} | "
              f"{r['effective_macs'] / 1e6:.2f} | {r['bytes_gzip'] / 1024:.0f} | {r['ort_p50_ms']:.3f} | "
              f"{r['prune_s']:.2f} | {r['train_s']:.0f} |" for r in rows]
    lines += ["", "Pruning time alone (median of 3 on a fresh model, density 0.1; SynFlow 100 rounds). Targets: "
              "SNIP < 2 s, SynFlow < 30 s.", "", "| criterion, model | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timing.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "pai.md").write_text(text)
    (RESULTS / "pai.json").write_text(json.dumps({"environment": env, "rows": rows, "prune_timing_s": timing},
                                                 indent=2))


if __name__ == "__main__":
    main()
