"""Why pruned widths are rounded: ONNX Runtime's CPU convolutions at channel counts that are, and are not,
multiples of 4 and 8 (synthetic inputs and fresh weights: latency only).

1. Two 3x3 convolutions, 32 -> C -> 32 channels on a 14x14 map, for every C from 24 to 48: p50 per channel.
2. ResNet-20 (1x28x28, Fashion-MNIST's shape) with 10 % and 25 % of every coupled group's channels removed by
   magnitude (`structure.group_keep` + `surgery.materialize`), without and with `round_to` 4 and 8, against the
   dense model.

Every model of a part is timed round-robin in one pass (batch 1, 1 thread; medians of rounds), so the ratios
hold under load; absolute times do not.

    nice -n 5 env PYTHONPATH=src .venv/bin/python benchmarks/odd_widths.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from edgeprune import export, measure, models, structure, surgery, timing

sys.path.insert(0, str(Path(__file__).parent))
from common import measured, write_results  # noqa: E402

WIDTHS = range(24, 49)
PAIR_SHAPE = (32, 14, 14)
RESNET_SHAPE = (1, 28, 28)
ROUNDS, RUNS = 10, 40


def conv_pairs() -> list[dict]:
    torch.manual_seed(0)
    onnx = {str(c): (export.to_onnx_bytes(nn.Sequential(nn.Conv2d(32, c, 3, padding=1), nn.ReLU(),
                                                        nn.Conv2d(c, 32, 3, padding=1)).eval(), PAIR_SHAPE),
                     PAIR_SHAPE) for c in WIDTHS}
    lat = timing.latency_onnx_interleaved(onnx, 1, 1, ROUNDS, RUNS)
    return [{"width": c, "p50_ms": lat[str(c)].p50_ms, "us_per_channel": 1000 * lat[str(c)].p50_ms / c,
             "mod4": c % 4 == 0, "mod8": c % 8 == 0} for c in WIDTHS]


def resnets() -> list[dict]:
    torch.manual_seed(0)
    dense = models.create("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.zeros(1, *RESNET_SHAPE)
    variants = {"dense": dense}
    for fraction in (0.10, 0.25):
        for round_to in (None, 4, 8):
            m = copy.deepcopy(dense)
            keep = structure.group_keep(m, x, fraction, tp.importance.GroupMagnitudeImportance())
            surgery.materialize(m, keep, x, round_to=round_to)
            variants[f"{fraction:.0%} removed" + (f", round_to {round_to}" if round_to else "")] = m
    lat = timing.latency_onnx_interleaved({k: (export.to_onnx_bytes(m, RESNET_SHAPE), RESNET_SHAPE)
                                            for k, m in variants.items()}, 1, 1, ROUNDS, RUNS)
    return [{"model": k, "params": measure.count_params(m)[0], "macs": measure.count_macs(m, RESNET_SHAPE)[0],
             "widths": sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)}),
             "p50_ms": lat[k].p50_ms, "speedup": lat["dense"].p50_ms / lat[k].p50_ms,
             "macs_ratio": measure.count_macs(dense, RESNET_SHAPE)[0] / measure.count_macs(m, RESNET_SHAPE)[0]}
            for k, m in variants.items()]


def main() -> None:
    env = measure.environment()
    pairs, nets = conv_pairs(), resnets()
    by = {k: [p["us_per_channel"] for p in pairs if p["mod4"] == k] for k in (True, False)}
    slower = (sum(by[False]) / len(by[False])) / (sum(by[True]) / len(by[True]))
    lines = ["# Pruned widths and ONNX Runtime's CPU convolutions", "",
             measured("odd_widths.py", env, "torch", "onnxruntime") + ". Synthetic inputs and fresh weights "
             f"(latency only). Batch 1, 1 thread; each part's models timed round-robin in one pass ({ROUNDS} "
             f"rounds × {RUNS} runs, median), while other work ran on the machine: read the ratios.", "",
             "## Two 3×3 convolutions 32 → C → 32 on a 14×14 map", "",
             f"Widths that are no multiple of 4 cost **{slower:.2f}×** as much per channel as those that are "
             "(mean over the widths below).", "",
             "| C | p50 (ms) | µs per channel | multiple of 4 | multiple of 8 |", "|---|---|---|---|---|"]
    lines += [f"| {p['width']} | {p['p50_ms']:.3f} | {p['us_per_channel']:.2f} | {'yes' if p['mod4'] else ''} | "
              f"{'yes' if p['mod8'] else ''} |" for p in pairs]
    lines += ["", "## ResNet-20, every coupled group pruned by magnitude", "",
              "| model | conv widths | params | MACs | MACs × fewer | ORT b1 p50 (ms) | speed-up over dense |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {n['model']} | {', '.join(map(str, n['widths']))} | {n['params']:,} | {n['macs'] / 1e6:.2f} M | "
              f"{n['macs_ratio']:.2f} | {n['p50_ms']:.3f} | {n['speedup']:.2f}× |" for n in nets]
    lines += ["", "What it means: removing channels makes a model faster in ONNX Runtime only where the widths it "
              "leaves are ones the runtime's kernels handle well; Taylor pruning therefore keeps every layer at a "
              "multiple of `round_to` (default 4), and `surgery.materialize` / `edgeprune shrink` take `round_to` "
              "too."]
    write_results("odd_widths", lines, {"environment": env, "conv_pairs": pairs, "resnet20": nets})


if __name__ == "__main__":
    main()
