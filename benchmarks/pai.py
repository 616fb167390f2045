"""Pruning at initialisation vs dense vs IMP on Fashion-MNIST (real data), ResNet-20.

Every cell is a normal edgeprune run under benchmarks/runs/pai/ (re-running skips finished cells),
trained with the same short budget; results go to benchmarks/results/pai.{md,json}. It also times the
pruning step alone (SNIP; SynFlow with 100 rounds) on ResNet-20 and VGG-16.

    python benchmarks/pai.py                    # full grid (about 15 min on 2 cores)
    python benchmarks/pai.py --quick            # 2 sparsities, 1 epoch on 2,000 images: a smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from edgeprune import data, jobs, masks, measure, models, scores
from edgeprune.train import TrainConfig

HERE = Path(__file__).parent
CRITERIA = ("random", "magnitude", "snip", "grasp", "synflow")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)


def cell(runs_dir: Path, name: str, cfg: jobs.RunConfig) -> dict:
    """Run one cell unless it finished before; return its report."""
    run_dir = runs_dir / name
    if (run_dir / "report.json").exists():
        return json.loads((run_dir / "report.json").read_text())
    job = jobs.JOBS[cfg.command]
    return job(cfg, run_dir, overwrite=True, progress=False)


def prune_timing(model_name: str, shape: tuple[int, int, int], criterion: str, density: float = 0.1) -> float:
    """Seconds to score and mask a fresh model (median of 3), data from the synthetic set for SNIP."""
    bundle = data.loaders("synthetic", shape=shape, num_classes=10, size=128, batch_size=128)
    batch = [next(iter(bundle.train))]
    times = []
    for _ in range(3):
        torch.manual_seed(0)
        model = models.create(model_name, 10, shape[0])
        t0 = time.perf_counter()
        masks.prune_iteratively(
            model, lambda m: scores.score(criterion, m, batch, input_shape=shape), density,
            rounds=scores.default_rounds(criterion))
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def row(label: str, method: str, sparsity: float, report: dict) -> dict:
    p = measure.Profile.from_dict(report["profile"])
    ort = p.latency_of("onnxruntime", 1, 1)
    return {"run": label, "method": method, "sparsity": sparsity, "measured_sparsity": p.sparsity,
            "accuracy": p.accuracy, "params": p.params, "nonzero": p.nonzero_params, "macs": p.macs,
            "effective_macs": p.effective_macs, "bytes_gzip": p.bytes_gzip, "ort_p50_ms": ort.p50_ms,
            "prune_s": report.get("prune_seconds", 0.0), "train_s": report["train"]["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--imp-levels", type=int, default=4)
    args = ap.parse_args()
    sparsities = (0.8, 0.95) if args.quick else SPARSITIES
    subset, epochs = (2000, 1) if args.quick else (args.subset, args.epochs)
    runs_dir = HERE / "runs" / ("pai-quick" if args.quick else "pai")
    base = dict(command="prune", model="resnet20",
                data={"name": "fashion-mnist", "subset": subset, "test_subset": 5000, "batch_size": 128},
                train=TrainConfig(epochs=epochs, lr=0.1, schedule="cosine"),
                measure=jobs.MeasureOptions(runs=30, warmup=5, memory=False))
    rows = [row("dense", "dense", 0.0, cell(runs_dir, "dense", jobs.RunConfig(**{**base, "command": "train"})))]
    for crit in CRITERIA:
        for s in sparsities:
            cfg = jobs.RunConfig(**base, method={"name": crit, "sparsity": s})
            rows.append(row(f"{crit}-{s}", crit, s, cell(runs_dir, f"{crit}-{s}", cfg)))
    imp = cell(runs_dir, "imp", jobs.RunConfig(**base, method={"name": "imp", "levels": args.imp_levels,
                                                               "rewind_iter": 20}))
    for lv in imp["levels"][1:]:
        lv_report = json.loads((runs_dir / "imp" / f"level_{lv['level']:02d}" / "report.json").read_text())
        rows.append(row(f"imp-level{lv['level']}", "imp", 1 - lv["density"], lv_report))
    timing = {f"{c} {m}": prune_timing(m, shape, c) for c in ("snip", "synflow")
              for m, shape in (("resnet20", (1, 28, 28)), ("vgg16", (3, 32, 32)))}
    write(rows, timing, subset, epochs, quick=args.quick)


def write(rows: list[dict], timing: dict, subset: int, epochs: int, quick: bool) -> None:
    env = measure.environment()
    budget = (f"ResNet-20 on Fashion-MNIST: the first {subset} training images of a fixed shuffle, {epochs} "
              f"epoch(s), SGD lr 0.1 cosine, batch 128; top-1 on 5,000 test images. IMP: 20 % per level, "
              f"rewind to iteration 20, the same budget per level.")
    lines = ["# Pruning at initialisation vs IMP (Fashion-MNIST, ResNet-20)", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/pai.py` on {env['cpu_count']} CPU cores, "
             f"torch {env['torch']}, onnxruntime {env['onnxruntime']}. {budget} This is a short budget: "
             "accuracies rank the methods under it and are far below fully trained figures. Latency is "
             "ONNX Runtime p50 at batch 1, 1 thread: masks do not make a model faster (all rows stay near dense).",
             "", "| run | sparsity (measured) | top-1 % | non-zero params | effective MACs | gzip KiB | "
             "ORT p50 ms | prune s | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['measured_sparsity']:.3f} | {100 * r['accuracy']:.2f} | {r['nonzero']:,} | "
                     f"{r['effective_macs'] / 1e6:.2f} M | {r['bytes_gzip'] / 1024:.0f} | {r['ort_p50_ms']:.3f} | "
                     f"{r['prune_s']:.2f} | {r['train_s']:.0f} |")
    lines += ["", "Pruning time alone (median of 3, fresh model, density 0.1; SynFlow with 100 rounds; "
              "targets: SNIP < 2 s, SynFlow < 30 s):", "", "| criterion, model | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in timing.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not quick:
        (HERE / "results" / "pai.md").write_text(text)
        (HERE / "results" / "pai.json").write_text(json.dumps(
            {"budget": budget, "environment": env, "rows": rows, "prune_timing_s": timing}, indent=2))


if __name__ == "__main__":
    main()
