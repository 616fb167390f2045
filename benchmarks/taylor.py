"""Taylor filter pruning (methods/taylor.py) against torch-pruning's own MetaPruner + TaylorImportance.

1. A short dense training of the model on a Fashion-MNIST subset (`edgeprune train`'s job; reused if finished).
2. `edgeprune prune --method taylor --from dense` (its job): steps until the validation accuracy drops by more
   than --max-drop points; every step's parameters, MACs, ONNX Runtime batch-1 latency and validation accuracy.
3. torch-pruning's MetaPruner (global, TaylorImportance on the same number of score batches) from the same dense
   model, in as many steps as the kept Taylor run, each followed by the same fine-tuning (taylor.finetune), its
   channel ratio bisected (one-shot, from dense) so that it lands on the Taylor run's parameter count.
4. Dense, ours and torch-pruning's timed side by side (ONNX Runtime, batch 1, 1 thread, interleaved), their
   test accuracy measured once, at the end.

Run from the repository root (about 20 minutes on two busy cores with the defaults):
    nice -n 5 env PYTHONPATH=src .venv/bin/python benchmarks/taylor.py [--model resnet20] [--subset 20000] ...

Or from runs a sweep already made (steps 1 and 2 read, not run; the data set and budgets are theirs), e.g. CIFAR-10's
table 5 from `cifar10_taylor.yaml`'s ResNet-20 (results under results/cifar10/taylor/):
    PYTHONPATH=src .venv/bin/python benchmarks/taylor.py --from benchmarks/runs/cifar10_taylor/resnet20-dense-seed0 \
        --taylor "$(ls -d benchmarks/runs/cifar10_taylor/resnet20-taylor-*-seed0)" --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from edgeprune import data, export, jobs, measure, runs, threads, timing
from edgeprune.methods import taylor
from edgeprune.record import MeasureOptions, RunConfig, read_config, read_report
from edgeprune.scores import taylor as criteria
from edgeprune.train import TrainConfig, evaluate

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, measured, write_results  # noqa: E402

PAPER = ("Wu et al. (papers.md, IoT inspection on a Jetson TX2) report 9× (VGG-16) and 4× (ResNet-18) faster "
         "inference from iterative Taylor pruning stopped at an accuracy drop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--subset", type=int, default=20000, help="dense training samples (first of a seeded shuffle)")
    ap.add_argument("--epochs", type=int, default=2, help="dense training epochs")
    ap.add_argument("--lr", type=float, default=0.1, help="dense training learning rate (VGG-16 needs about 0.02: "
                    "at 0.1 one epoch on 8,000 images left it at 18 %%)")
    ap.add_argument("--step-fraction", type=float, default=0.05)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--importance", default="activation", help="activation or weight; results of weight get a "
                    "_weight suffix")
    ap.add_argument("--cost", default="none", help="none or macs (score per MAC); results get a _macs suffix")
    ap.add_argument("--round-to", type=int, default=4, help="widths kept at multiples of this (ours and "
                    "torch-pruning's alike); results of 1 get a _any suffix")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-taylor"))
    ap.add_argument("--from", dest="source", type=Path, help="a finished dense run to start from instead of "
                    "training one (its data set, subset and budget replace --model, --subset, --epochs, --lr)")
    ap.add_argument("--taylor", type=Path, help="with --from: a finished Taylor run from it, read instead of run "
                    "(its options replace the Taylor ones above)")
    ap.add_argument("--threads", default="auto", help="torch threads of torch-pruning's steps (default auto)")
    a = ap.parse_args()
    if a.taylor and not a.source:
        ap.error("--taylor needs --from (the dense run it started from)")
    t0 = time.perf_counter()
    if a.source:
        dense_dir, dense_cfg = a.source, _finished_config(a.source, "--from")
        a.model = dense_cfg.model
    else:
        dense_dir = a.work / a.model / "dense"
        dense_cfg = RunConfig(command="train", model=a.model,
                              data={"name": "fashion-mnist", "subset": a.subset, "batch_size": 128, "seed": 0},
                              train=TrainConfig(epochs=a.epochs, lr=a.lr),
                              measure=MeasureOptions(runs=30, memory=False), threads="auto")
        if not runs.is_finished(dense_dir):
            jobs.train(dense_cfg, dense_dir, overwrite=True)
    if a.taylor:
        method = dict(_finished_config(a.taylor, "--taylor").method)
        if Path(method.get("source", "")).name != dense_dir.name:
            ap.error(f"--taylor {a.taylor} started from {method.get('source')}, not from --from {dense_dir}")
        defaults = taylor.TaylorOptions()
        for key in ("importance", "cost", "round_to", "step_fraction", "finetune_steps", "max_drop", "val_size"):
            setattr(a, key, method.get(key, getattr(defaults, key)))
    else:
        method = {"name": "taylor", "source": str(dense_dir), "importance": a.importance,
                  "step_fraction": a.step_fraction, "finetune_steps": a.finetune_steps, "max_drop": a.max_drop,
                  "val_size": a.val_size, "cost": a.cost, "round_to": a.round_to}
    suffix = ("" if a.cost == "none" else f"_{a.cost}") + ("_any" if a.round_to == 1 else "")
    tag = ("" if a.importance == "activation" else f"_{a.importance}") + suffix
    if a.taylor:
        ours = read_report(a.taylor)
    else:
        ours_dir = a.work / a.model / f"taylor-{a.importance}{suffix}"
        ours_cfg = jobs.from_trained(replace(dense_cfg, command="prune", method=method))
        if runs.is_finished(ours_dir) and read_config(ours_dir / runs.CONFIG).method == ours_cfg.method:
            ours = read_report(ours_dir)
        else:
            ours = jobs.prune(ours_cfg, ours_dir, overwrite=True)
        a.taylor = ours_dir
    steps, kept = ours.details["steps"], ours.details["kept_step"]
    fields = {f.name for f in dataclasses.fields(taylor.TaylorOptions)}  # a budget (`target`) is not one of them
    opts = taylor.TaylorOptions(**{k: v for k, v in method.items() if k in fields})
    data_name = dense_cfg.data["name"]
    stem = f"taylor_{a.model}{tag}" if data_name == "fashion-mnist" else f"{data_name}/taylor/vs_torch_pruning_" \
        f"{a.model}{tag}"
    (RESULTS / stem).parent.mkdir(parents=True, exist_ok=True)

    # the runs above set their threads themselves; torch-pruning's baseline runs with as many as --threads says
    torch.set_num_threads(threads.resolve(a.threads))
    bundle = data.loaders(**dense_cfg.data, val_size=a.val_size)
    baseline = _metapruner(dense_dir, bundle, dense_cfg.train, opts, kept, ours.profile.params) if kept else None
    onnx = {"dense": dense_dir / runs.ONNX, "taylor": a.taylor / runs.ONNX}
    if baseline is not None:
        onnx["torch-pruning"] = baseline.pop("onnx")
    shape = bundle.input_shape
    lat = timing.latency_onnx_interleaved({k: (v, shape) for k, v in onnx.items()}, rounds=10, runs=30)
    dense = jobs.load_profile(dense_dir)
    rows = {"dense": {"params": dense.params, "macs": dense.macs, "val_accuracy": steps[0]["val_accuracy"],
                      "test_accuracy": dense.accuracy},
            "taylor": {"params": ours.profile.params, "macs": ours.profile.macs,
                       "val_accuracy": steps[kept]["val_accuracy"], "test_accuracy": ours.profile.accuracy}}
    if baseline is not None:
        rows["torch-pruning"] = baseline
    for name, row in rows.items():
        row.update(ort_b1_p50_ms=lat[name].p50_ms, speedup=lat["dense"].p50_ms / lat[name].p50_ms)
    env = {**measure.environment(), "torch_pruning": tp.__version__}
    _plot(steps, kept, stem)
    write_results(stem, _text(a, env, steps, kept, ours, rows, time.perf_counter() - t0, stem, dense_cfg, shape),
                  {"args": {k: str(v) for k, v in vars(a).items()}, "environment": env, "steps": steps,
                   "kept_step": kept, "stopped": ours.details["stopped"], "compared": rows,
                   "seconds": time.perf_counter() - t0})


def _finished_config(run: Path, flag: str) -> RunConfig:
    if not runs.is_finished(run):
        raise SystemExit(f"{flag} {run}: not a finished run (no report.json); finish it first (`edgeprune sweep` "
                         "resumes it), or give another")
    return read_config(run / runs.CONFIG)


def _metapruner(dense_dir: Path, bundle: data.DataBundle, train_cfg: TrainConfig, opts: taylor.TaylorOptions,
                steps: int, params: int) -> dict:
    """torch-pruning's MetaPruner + TaylorImportance in `steps` steps to about `params` parameters, each step
    fine-tuned as ours are."""
    shape = bundle.input_shape
    x = torch.zeros(1, *shape)

    def pruner(model: nn.Module, ratio: float, iterative_steps: int) -> tp.pruner.MetaPruner:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        return tp.pruner.MetaPruner(model, x, importance=tp.importance.TaylorImportance(), global_pruning=True,
                                    pruning_ratio=ratio, iterative_steps=iterative_steps, ignored_layers=[last],
                                    round_to=opts.round_to if opts.round_to > 1 else None)

    def one_shot(ratio: float) -> int:
        model = jobs.load(dense_dir)[0]
        criteria.weight_gradients(model, bundle.train, opts.score_batches)
        pruner(model, ratio, 1).step()
        return measure.count_params(model)[0]

    lo, hi = 0.0, 0.95
    for _ in range(8):  # channel ratio of torch-pruning whose one-shot model has `params` parameters
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_shot(mid) > params else (lo, mid)
    model = jobs.load(dense_dir)[0]
    p = pruner(model, hi, steps)
    for k in range(1, steps + 1):
        criteria.weight_gradients(model, bundle.train, opts.score_batches)
        p.step()
        model.zero_grad(set_to_none=True)
        taylor.finetune(model, bundle, train_cfg, opts, k)
    model.cpu()
    return {"params": measure.count_params(model)[0], "macs": measure.count_macs(model, shape)[0],
            "val_accuracy": evaluate(model, bundle.val)["accuracy"],
            "test_accuracy": evaluate(model, bundle.test)["accuracy"], "channel_ratio": hi,
            "onnx": export.to_onnx_bytes(copy.deepcopy(model), shape)}


def _plot(steps: list[dict], kept: int, name: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot([s["ort_b1_ms"] for s in steps], [100 * s["val_accuracy"] for s in steps], "o-", label="Taylor steps")
    ax.plot([steps[kept]["ort_b1_ms"]], [100 * steps[kept]["val_accuracy"]], "r*", ms=14, label=f"kept (step {kept})")
    for s in steps:
        ax.annotate(str(s["step"]), (s["ort_b1_ms"], 100 * s["val_accuracy"]), fontsize=7)
    ax.set_xlabel("ONNX Runtime p50, batch 1, 1 thread (ms; timed when each step ended)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def _text(a, env: dict, steps: list[dict], kept: int, ours, rows: dict, seconds: float, stem: str,
          dense_cfg: RunConfig, shape: tuple) -> list[str]:
    d, t = ours.details, dense_cfg.train
    data_name = "Fashion-MNIST" if dense_cfg.data["name"] == "fashion-mnist" else dense_cfg.data["name"]
    copy_note = f" ({ours.data_copy})" if ours.data_copy else ""
    if a.source:
        start = (f"Dense start: `{a.source}`, {a.model} trained {t.epochs} epochs (SGD lr {t.lr}, weight decay "
                 f"{t.weight_decay}, {t.schedule}) on {dense_cfg.data.get('subset') or 'all'} {data_name}"
                 f"{copy_note} training images; our Taylor run is `{a.taylor}`, read, not run again.")
    else:
        start = (f"Dense start: {a.model} trained {a.epochs} epoch(s) on {a.subset} {data_name} training images "
                 "(a short budget: far from convergence).")
    lines = [f"# Taylor filter pruning, {a.model} on {data_name}{copy_note}", "",
             f"{measured('taylor.py', env, 'torch', 'onnxruntime', 'torch_pruning', load=list(os.getloadavg()))}; "
             f"{seconds / 60:.0f} min in all.",
             "", f"{start} Validation: {a.val_size} other training images, never seen "
             "by the dense run; test: the 10,000 test images, measured once per model at the end.",
             f"Taylor: {a.importance} criterion"
             + (" divided by the MACs each channel costs (`--cost macs`)" if a.cost == "macs" else "")
             + (f", widths kept at multiples of {a.round_to} (torch-pruning's `round_to` too)" if a.round_to > 1
                else ", any width")
             + f", {a.step_fraction:.0%} of the removable channels "
             f"({d['channels_per_step']}) per step, {a.finetune_steps} fine-tuning batches (lr "
             f"{ours.options['finetune_lr']}, cosine) per step, stop at a drop > {a.max_drop} point(s); "
             f"stopped: {d['stopped']}.", "",
             "## Steps (the curve: validation accuracy against ONNX Runtime batch-1 latency)", "",
             "Latency of each step was timed when the step ended (30 runs, p50), under whatever load the machine "
             "had then; the comparison below is timed side by side.", "",
             "| step | params | MACs | ORT b1 p50 (ms) | val acc (%) | drop (points) |", "|---|---|---|---|---|---|"]
    for s in steps:
        mark = " (kept)" if s["step"] == kept else ""
        lines.append(f"| {s['step']}{mark} | {s['params']:,} | {s['macs'] / 1e6:.2f} M | {s['ort_b1_ms']:.3f} | "
                     f"{100 * s['val_accuracy']:.2f} | {s.get('drop_points', 0):.2f} |")
    lines += ["", f"![curve]({Path(stem).name}.png)", "",
              f"## At ≤ {a.max_drop} point validation drop: ours vs torch-pruning's MetaPruner + TaylorImportance",
              "", "Same dense model, same number of steps and fine-tuning batches per step; torch-pruning's channel "
              "ratio bisected to land on our parameter count. Latency: ONNX Runtime, batch 1, 1 thread, the three "
              "models interleaved in one pass (10 rounds × 30 runs); speed-up = dense p50 / model p50.", "",
              "| model | params | params removed | MACs | val acc (%) | test acc (%) | ORT b1 p50 (ms) | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    dense = rows["dense"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params']:,} | {1 - r['params'] / dense['params']:.1%} | "
                     f"{r['macs'] / 1e6:.2f} M | {100 * r['val_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | "
                     f"{r['ort_b1_p50_ms']:.3f} | {r['speedup']:.2f}× |")
    lines += ["", f"For scale: {PAPER}; those are TX2 GPU figures on ImageNet-size inputs, these are CPU batch-1 "
              f"figures on {shape[-2]}×{shape[-1]} inputs, where fixed per-call costs weigh more."]
    return lines


if __name__ == "__main__":
    main()
