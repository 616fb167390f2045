"""Training step time on the CPU in the two precisions `TrainConfig.precision` offers: fp32 and bf16 (the forward
and backward under torch.autocast(bfloat16); weights and optimiser fp32). The CIFAR-10 sweeps' models: ResNet-20
dense, under SynFlow 0.9 masks, and Reconvene's; VGG-16 dense, under SynFlow 0.95 masks, and Reconvene's with every
layer narrowed (the headline pair's cells).

One training step (forward, loss, backward, SGD with momentum and weight decay) on a batch of 128 CIFAR-10 images
(JPEG q75 copy), 1 torch thread, channels_last (the CPU's "auto" layout), as the sweeps' cells run. The two
precisions are timed alternately, `--rounds` times `--steps` steps each after 2 warm-up steps, on a fresh copy of
the model each time; medians of the pooled steps, and their ratio. Whether bf16 pays depends on the CPU: it needs
AVX512-BF16 or AMX (the report names the CPU's flags).

    PYTHONPATH=src python benchmarks/train_precision.py     # about 4 minutes on quiet cores
    bash benchmarks/quiet.sh env PYTHONPATH=src .venv/bin/python benchmarks/train_precision.py   # beside a sweep
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from common import measured, write_results
from train_layout import alternate

from edgeprune.measure import environment

PRECISIONS = {"fp32": False, "bf16": True}


def cpu_flags() -> list[str]:
    """The CPU's bf16-related instruction set flags (from /proc/cpuinfo), e.g. avx512_bf16, amx_bf16."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[
        "resnet20", "resnet20 SynFlow 0.9 masks", "resnet20 Reconvene SynFlow 0.9", "vgg16",
        "vgg16 SynFlow 0.95 masks", "vgg16 Reconvene SynFlow 0.95 all"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    bundle, rows = alternate(args.models, {name: {"layout": torch.channels_last, "bf16": bf16}
                                           for name, bf16 in PRECISIONS.items()}, args.rounds, args.steps)
    for row in rows:
        row["speedup"] = row["fp32_s"] / row["bf16_s"]
        print(row, flush=True)
    payload = {"environment": environment(), "cpu_flags": cpu_flags(), "load_average": os.getloadavg(),
               "data": bundle.name, "data_copy": bundle.copy, "rounds": args.rounds, "steps": args.steps,
               "rows": rows}
    write_results("train_precision", report(payload), payload)


def report(p: dict) -> list[str]:
    lines = ["# Training step time: fp32 against bf16 autocast (CPU, 1 thread)", "",
             f"{measured('train_precision.py', p['environment'], 'torch', load=p['load_average'])}; the CPU's "
             f"bf16 flags: {', '.join(p['cpu_flags']) or 'none'}. One training step on a batch of 128 {p['data']} "
             f"images ({p.get('data_copy') or 'official files'}), 1 torch thread, channels_last; the precisions "
             f"timed alternately, {p['rounds']} rounds of {p['steps']} steps each after 2 warm-up steps, each on a "
             "fresh copy of the model; medians of the pooled steps. `TrainConfig.precision` bf16 (`--precision "
             "bf16`, a spec's `train: {precision: bf16}`) runs the forward and backward under "
             "torch.autocast(bfloat16); weights, optimiser state and evaluation stay fp32.", "",
             "| model | steps timed | fp32 (s / step) | bf16 (s / step) | speed-up |", "|---|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['model']} | {r['steps']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | {r['speedup']:.2f}× |")
    return lines + [""]


if __name__ == "__main__":
    main()
