"""What the benchmark scripts share: one training budget per model, and cells that are ordinary runs.

A cell is an edgeprune run folder under benchmarks/runs/<model>/; a finished cell (report.json present)
is read back, not redone, so scripts share cells and an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune import jobs, measure
from edgeprune.train import TrainConfig

HERE = Path(__file__).parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"

# Short budgets that fit two CPU cores: they rank methods, they do not reach published accuracies.
BUDGETS = {
    "resnet20": {"subset": 10_000, "epochs": 2, "lr": 0.1},
    # At lr 0.1 the dense VGG-16's loss starts at 4.5 and 80 steps do not bring it back (16 % top-1).
    "vgg16": {"subset": 5_000, "epochs": 2, "lr": 0.02},
}
IMP = {"name": "imp", "levels": 5, "fraction": 0.5, "rewind_iter": 20}  # densities 0.5 … 0.03
MEASURE = jobs.MeasureOptions(batch_sizes=(1, 32), threads=(1, 2), runtimes=("onnxruntime",), runs=30, warmup=5,
                              memory=False)


def budget_text(model: str) -> str:
    b = BUDGETS[model]
    return (f"{model}: the first {b['subset']:,} Fashion-MNIST training images of a fixed shuffle, {b['epochs']} "
            f"epochs, SGD (lr {b['lr']}, momentum 0.9, weight decay 5e-4, cosine), batch 128; top-1 on 5,000 test "
            "images")


def config(model: str, method: dict | None = None) -> jobs.RunConfig:
    b = BUDGETS[model]
    return jobs.RunConfig(
        command="prune" if method else "train", model=model,
        data={"name": "fashion-mnist", "subset": b["subset"], "test_subset": 5000, "batch_size": 128},
        train=TrainConfig(epochs=b["epochs"], lr=b["lr"], schedule="cosine"), measure=MEASURE, method=method or {},
    )


def cell(model: str, name: str, method: dict | None = None) -> dict:
    """The report of run `name` for `model`, running it first if it has not finished before."""
    run_dir = RUNS / model / name
    if (run_dir / "report.json").exists():
        return json.loads((run_dir / "report.json").read_text())
    cfg = config(model, method)
    print(f"running {model}/{name} …", flush=True)
    return jobs.JOBS[cfg.command](cfg, run_dir, overwrite=True, progress=False)


def p50(report: dict, batch: int = 1, threads: int = 1) -> float:
    t = measure.Profile.from_dict(report["profile"]).latency_of("onnxruntime", batch, threads)
    return t.p50_ms


def remeasure(model: str, names: list[str], shape: tuple[int, ...], rounds: int = 6, runs: int = 10,
              settings: tuple[tuple[int, int], ...] = ((1, 1), (32, 2))) -> dict[str, dict[tuple[int, int], float]]:
    """ONNX Runtime p50 of every named cell's model.onnx, timed round-robin in one pass: each round times
    every cell in turn, so load that changes during the pass affects all cells alike and the ratios
    between cells are measured under the same conditions."""
    import time

    import numpy as np

    from edgeprune.export import ort_session

    out: dict[str, dict[tuple[int, int], float]] = {n: {} for n in names}
    for batch, threads in settings:
        sessions = {n: ort_session(RUNS / model / n / "model.onnx", threads) for n in names}
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        times: dict[str, list[float]] = {n: [] for n in names}
        for s in sessions.values():  # warm-up
            for _ in range(3):
                s.run(None, {"input": x})
        for _ in range(rounds):
            for n, s in sessions.items():
                for _ in range(runs):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    times[n].append((time.perf_counter() - t0) * 1e3)
        for n in names:
            out[n][(batch, threads)] = float(np.median(times[n]))
    return out
