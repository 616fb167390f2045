"""How long the pruning step alone takes: SNIP (one batch of 128) and SynFlow (100 rounds, data-free) on a
freshly initialised ResNet-20 (1×28×28) and VGG-16 (3×32×32), to density 0.1. Targets: SNIP < 2 s,
SynFlow < 30 s. Inputs are synthetic tensors (timing only: SNIP's gradients do not depend on which images
they are).

    PYTHONPATH=src .venv/bin/python benchmarks/prune_time.py     # about 3 min on 2 cores

The grids of runs (accuracy, size, latency) are sweeps, not scripts: see benchmarks/README.md.
Results: benchmarks/results/prune_time.{md,json}.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import measured, write_results

from edgeprune import data, masks, measure, models, scores

CASES = (("snip", "resnet20", (1, 28, 28)), ("snip", "vgg16", (3, 32, 32)),
         ("synflow", "resnet20", (1, 28, 28)), ("synflow", "vgg16", (3, 32, 32)))
TARGET_S = {"snip": 2.0, "synflow": 30.0}
REPEATS = 3


def prune_seconds(criterion: str, model_name: str, shape: tuple[int, int, int]) -> list[float]:
    """Seconds to score and mask a fresh model to density 0.1, `REPEATS` times."""
    bundle = data.loaders("synthetic", shape=shape, num_classes=10, size=128, batch_size=128)
    batch = [next(iter(bundle.train))]
    times = []
    for _ in range(REPEATS):
        torch.manual_seed(0)
        model = models.create(model_name, 10, shape[0])
        t0 = time.perf_counter()
        masks.prune_iteratively(model, lambda m: scores.score(criterion, m, batch, input_shape=shape), 0.1,
                                rounds=scores.default_rounds(criterion))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    rows = []
    for criterion, model_name, shape in CASES:
        times = prune_seconds(criterion, model_name, shape)
        rows.append({"criterion": criterion, "model": model_name, "input_shape": list(shape),
                     "rounds": scores.default_rounds(criterion), "median_s": statistics.median(times),
                     "times_s": times, "target_s": TARGET_S[criterion]})
        print(rows[-1], flush=True)
    env = measure.environment()
    lines = ["# Pruning time alone", "",
             measured("prune_time.py", env, "torch") + ": "
             f"seconds to score and mask a freshly initialised model to density 0.1 (median of "
             f"{REPEATS}); SNIP reads one synthetic batch of 128, SynFlow is data-free with 100 rounds. Absolute "
             "times depend on the machine and its load.", "",
             "| criterion | model | input | rounds | median s | target s | met |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['criterion']} | {r['model']} | {'×'.join(map(str, r['input_shape']))} | {r['rounds']} | "
              f"{r['median_s']:.2f} | {r['target_s']:g} | {'yes' if r['median_s'] < r['target_s'] else 'no'} |"
              for r in rows]
    write_results("prune_time", lines, {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
