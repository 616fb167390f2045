"""ScissionLite's transfer layer costs accuracy: the edge part sees a 2x2 max-pooled, nearest up-sampled activation.
How much, at every cut where it fits, and how much does a short fine-tune of the edge part (device part frozen)
win back?

VGG-16 (in-house, 1x28x28) trained briefly on a Fashion-MNIST subset; then, for every eligible cut (4-D, even
sides: 28x28, 14x14, 4x4 and 2x2 maps; the 7x7 ones are odd), the accuracy with the transfer layer before and after
one epoch of fine-tuning the layers behind it. The fine-tune gives the edge part one more epoch than the uncut
model had, so "uncut" is the trained model with that same extra epoch of the whole network, for a fair comparison.

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/partition_tl_accuracy.py [--subset 3000]

Results: benchmarks/results/partition_tl_accuracy.{md,json}.

With --run, the model is a finished run's (trained on its own data set, e.g. the CIFAR-10 dense sweep's ResNet-20,
whose blocks form a chain), nothing is trained first, and the fine-tune reads the first --subset images of that
data set's training split (augmented as in training); the test is its whole test split unless --test-subset:

    env PYTHONPATH=src .venv/bin/python benchmarks/partition_tl_accuracy.py \
        --run benchmarks/runs/cifar10_dense/resnet20-dense-seed0 --subset 10000 --out partition_tl_accuracy_cifar10
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from common import measured, write_results

from edgeprune import lifecycle, measure, models, record, runs
from edgeprune.data import loaders
from edgeprune.partition import finetune
from edgeprune.train import TrainConfig, evaluate, fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", type=int, default=3000)
    ap.add_argument("--test-subset", type=int, help="test images (default: 1000 on Fashion-MNIST, all with --run)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--run", help="a finished run folder to cut instead of training VGG-16 on Fashion-MNIST")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="partition_tl_accuracy", help="results/<OUT>.{md,json}")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.run:
        model, _ = lifecycle.load(args.run)
        cfg = lifecycle.source_config(args.run)
        dataset = cfg.data["name"]
        bundle = loaders(dataset, batch_size=cfg.data.get("batch_size") or 128, subset=args.subset,
                         test_subset=args.test_subset)
        label = _label(args.run, dataset)
        described = (f"{cfg.model} of run `{args.run}` ({cfg.train.epochs} epochs on all of {label}, "
                     f"nothing trained here); the fine-tunes read the first {args.subset} training images "
                     f"(augmented as in training, batch {cfg.data.get('batch_size') or 128}), top-1 on "
                     f"{args.test_subset or 'all the'} test images")
    else:
        args.test_subset = args.test_subset or 1000
        bundle = loaders("fashion-mnist", batch_size=64, subset=args.subset, test_subset=args.test_subset)
        model = models.create("vgg16", num_classes=10, in_channels=1)
        fit(model, bundle.train, TrainConfig(epochs=args.epochs, lr=0.02))
        described = (f"in-house VGG-16 on the first {args.subset} Fashion-MNIST training images ({args.epochs} "
                     f"epochs, SGD lr 0.02, batch 64), top-1 on {args.test_subset} test images")
    trained = evaluate(model, bundle.test)["accuracy"]
    extra = copy.deepcopy(model)
    tune = TrainConfig(epochs=1, lr=0.005, weight_decay=cfg.train.weight_decay if args.run else 5e-4)
    fit(extra, bundle.train, tune)
    uncut = evaluate(extra, bundle.test)["accuracy"]
    print(f"trained {trained:.4f}, +1 epoch {uncut:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for k, _ in finetune.cuts(model, bundle.input_shape):
        rows.append(finetune.finetune_cut(model.eval(), k, bundle.train, bundle.test, tune))
        print(rows[-1], flush=True)
    env = measure.environment()
    best = max(rows, key=lambda r: r["accuracy_after"])
    lines = ["# Transfer layer: accuracy cost and a short fine-tune of the edge part", "",
             measured("partition_tl_accuracy.py", env, "torch") + f", {args.threads} torch thread(s): {described}. "
             "Transfer layer = 2x2 max-pool after the cut (device) and nearest x2 "
             "up-sampling before the rest (edge). Fine-tune: 1 epoch of the edge part (lr 0.005, cosine), device "
             "part frozen in eval mode. Bytes over the link: a quarter of the map at the cut, always (2x2 max-pool)."
             + ("" if args.run else " Short budgets: these rank cuts, they are far from converged accuracy."), "",
             f"Trained: {trained:.2%}. Uncut with the same extra epoch (whole network): {uncut:.2%}.", "",
             "| cut (after layer k) | layer | map at the cut | KiB sent / image, fp32 (without TL) | TL, no fine-tune "
             "| TL + fine-tune | vs uncut |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['cut']} | {r['after_layer']} | {_map(r['shape'])} | {_kib(r['shape']):g} "
              f"({4 * _kib(r['shape']):g}) "
              f"| {r['accuracy_before']:.2%} | {r['accuracy_after']:.2%} | {(r['accuracy_after'] - uncut) * 100:+.2f} "
              "pts |" for r in rows]
    close = [r for r in rows if r["accuracy_after"] >= uncut - 0.01]
    lines += ["", f"{len(close)} of {len(rows)} cuts within 1 point of the uncut model after the fine-tune; best: "
              f"cut {best['cut']} ({best['accuracy_after']:.2%})."]
    write_results(args.out, lines, {"environment": env, "run": args.run, "subset": args.subset,
                                                   "test_subset": args.test_subset, "epochs": args.epochs,
                                                   "trained": trained, "uncut": uncut, "cuts": rows})


def _label(run: str, dataset: str) -> str:
    """The data set as the run recorded reading it: "cifar10 (JPEG q75 copy)" where it read that copy."""
    copy_read = record.read_report(Path(run) / runs.REPORT).data_copy
    return f"{dataset} ({copy_read})" if copy_read else dataset


def _kib(pooled: list[int]) -> float:
    c, h, w = pooled
    return c * h * w * 4 / 1024


def _map(pooled: list[int]) -> str:
    """The activation at the cut, from what crosses the link (a quarter of it)."""
    c, h, w = pooled
    return f"{c}x{2 * h}x{2 * w}"


if __name__ == "__main__":
    main()
