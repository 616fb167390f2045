"""Training step time on the CPU in the two memory layouts `TrainConfig.memory_format` chooses between: contiguous
(NCHW, what training used before) and channels_last (NHWC, the "auto" default on the CPU since). The CIFAR-10
sweeps' models: dense ResNet-20, ResNet-20 under SynFlow 0.9 masks (torch's pruning hooks), Reconvene's narrow
ResNet-20 (SynFlow 0.9, sqrt, the sweep's default) and dense VGG-16.

One training step (forward, loss, backward, SGD with momentum and weight decay) on a batch of 128 CIFAR-10 images
(JPEG q75 copy; real batches, though any data would time the same), 1 torch thread, as the sweeps' cells run. The
two layouts are timed alternately, `--rounds` times `--steps` steps each after 2 warm-up steps, so load that
changes during the run falls on both; medians of the pooled steps, and their ratio.

    PYTHONPATH=src python benchmarks/train_layout.py      # about 5 minutes on quiet cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import measured, write_results
from reconvene_shapes import build

from edgeprune import data
from edgeprune.measure import environment
from edgeprune.methods import registry
from edgeprune.models import create
from edgeprune.train import autocast

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def model(kind: str, bundle) -> torch.nn.Module:
    """A model named as the tables name them: "<model>", "<model> SynFlow <sparsity> masks" (torch's pruning hooks)
    or "<model> Reconvene SynFlow <sparsity>[ all]" (the sweep's conversion; "all": every layer narrowed), seed 0."""
    torch.manual_seed(0)
    name, *rest = kind.split()
    if len(rest) >= 3 and rest[0] == "SynFlow" and rest[2] == "masks":
        net = create(name, bundle.num_classes, bundle.in_channels)
        method = registry.get("synflow")
        method.entry(net, method.options(sparsity=float(rest[1])), bundle.train, bundle.input_shape)
        return net
    if len(rest) >= 3 and rest[:2] == ["Reconvene", "SynFlow"]:
        return build(name, bundle, "synflow", "all" if rest[3:] == ["all"] else "global", "sqrt", float(rest[2]))
    if rest:
        raise SystemExit(f"unknown model {kind!r}: give '<model>', '<model> SynFlow 0.9 masks' or '<model> "
                         "Reconvene SynFlow 0.9[ all]'")
    return create(name, bundle.num_classes, bundle.in_channels)


def step_times(net: torch.nn.Module, layout: torch.memory_format, batches: list, warmup: int = 2,
               bf16: bool = False) -> list[float]:
    """Seconds of each training step after `warmup` ones; `bf16` as training runs TrainConfig.precision bf16."""
    net = net.to(memory_format=layout).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn, times = torch.nn.CrossEntropyLoss(), []
    for i, (x, y) in enumerate(batches):
        x = x.contiguous(memory_format=layout)
        t0 = time.perf_counter()
        with autocast("bf16" if bf16 else "fp32", torch.device("cpu")):
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def alternate(kinds: list[str], variants: dict[str, dict], rounds: int, steps: int) -> tuple[object, list[dict]]:
    """Training-step medians (s) of each model kind under each of `variants` (name -> step_times keywords), the
    variants timed alternately on a fresh copy of the model each time (so all start from the same weights), 1
    torch thread, on real CIFAR-10 batches; (the data bundle, one row a kind: model, steps, <variant>_s)."""
    torch.set_num_threads(1)
    bundle = data.loaders("cifar10", batch_size=128)
    batches, it = [], iter(bundle.train)
    while len(batches) < steps + 2:
        batches.append(next(it))
    rows = []
    for kind in kinds:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, how in variants.items():
                times[name] += step_times(model(kind, bundle), batches=batches, **how)
        rows.append({"model": kind, "steps": len(times[next(iter(variants))]),
                     **{f"{name}_s": statistics.median(t) for name, t in times.items()}})
    return bundle, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet20 SynFlow 0.9 masks",
                                                    "resnet20 Reconvene SynFlow 0.9", "vgg16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    bundle, rows = alternate(args.models, {name: {"layout": layout} for name, layout in LAYOUTS.items()},
                             args.rounds, args.steps)
    for row in rows:
        row["speedup"] = row["contiguous_s"] / row["channels_last_s"]
        print(row, flush=True)
    payload = {"environment": environment(), "load_average": os.getloadavg(), "data": bundle.name,
               "data_copy": bundle.copy, "rounds": args.rounds, "steps": args.steps, "rows": rows}
    write_results("train_layout", report(payload), payload)


def report(p: dict) -> list[str]:
    lines = ["# Training step time: contiguous against channels_last (CPU, 1 thread)", "",
             f"{measured('train_layout.py', p['environment'], 'torch', load=p['load_average'])}. One "
             f"training step on a batch of 128 {p['data']} images ({p.get('data_copy') or 'official files'}), 1 "
             f"torch thread; the layouts timed alternately, {p['rounds']} rounds of {p['steps']} steps each after 2 "
             "warm-up steps; medians of the pooled steps. `TrainConfig.memory_format` \"auto\" trains in "
             "channels_last on the CPU; a run resumed from a checkpoint keeps the layout it started in.", "",
             "| model | steps timed | contiguous (s / step) | channels_last (s / step) | speed-up |",
             "|---|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['model']} | {r['steps']} | {r['contiguous_s']:.3f} | {r['channels_last_s']:.3f} | "
                     f"{r['speedup']:.2f}× |")
    return lines + [""]


if __name__ == "__main__":
    main()
