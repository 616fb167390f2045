"""NeuroFlux against backpropagation under the same memory budget (issues 18, 31), on real data, CPU.

For each model (VGG-11 and ResNet-20; Fashion-MNIST 1×28×28, or CIFAR-10 3×32×32 with `--dataset cifar10`):
1. M = the training memory backpropagation needs at batch 16: measured (a fresh process's peak resident set above
   what it held before, `memory.measure_peak`) and predicted by the accountant;
2. NeuroFlux plans its blocks under M; every block's training peak is measured in a fresh process at the block's
   batch and set against M and against the prediction;
3. NeuroFlux and backpropagation (batch 16, the largest that fits M by construction) train for the same epochs on
   the same samples, one after the other (NeuroFlux first, so the memory it records in the run (neuroflux/watch.py:
   the process's resident set before training, every block's training increment above it, the process peak) is
   not raised by backpropagation's leftovers), with the same thread count. Validation accuracy is taken every quarter
   epoch for backpropagation (its evaluation time left out of its clock) and after every block for NeuroFlux (its
   exits, evaluated in the caching pass it needs anyway, counted in its clock). Time to accuracy: the first time
   the validation accuracy reaches backpropagation's final validation accuracy − 1 point;
4. the chosen exit against the full backpropagation model: parameters, test accuracy, and ONNX Runtime batch-32
   throughput (1 thread, both timed round-robin in one pass).

Short budget, stated in the results: a training subset, `--epochs` epochs, validation and test subsets.

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/neuroflux.py --lr 0.01   # also --lr 0.05
    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/neuroflux.py --dataset cifar10 --subset 10000 --epochs 4 \
        --lr 0.01 --out neuroflux_cifar10

Results: benchmarks/results/neuroflux.{md,json} (--lr 0.01), neuroflux_lr0.05.{md,json} (renamed by hand),
neuroflux_cifar10.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from common import measured, write_results

PAPER = "2.3–6.1× faster training under tight GPU budgets, 10.9–29.4× fewer parameters, 1.61–3.95× throughput"
MODELS = ("vgg11", "resnet20")
BACKPROP_BATCH = 16


class ValClock:
    """Backpropagation's validation accuracy every `every` steps, with the training time spent until then: CPU
    seconds of this process (one torch thread: its compute, whatever else the shared machine runs) and wall
    seconds, evaluation left out of both."""

    def __init__(self, val, every: int):
        from edgeprune.train import Callback, evaluate

        self.points, self.paused, self.start = [], [0.0, 0.0], [time.process_time(), time.perf_counter()]
        clock = self

        class Hook(Callback):
            def on_step_end(self, model, step):
                if step % every == 0:
                    t0 = clock.now()
                    clock.points.append((t0[0], t0[1], evaluate(model, val)["accuracy"]))
                    t1 = clock.now()
                    clock.paused = [p + b - a for p, a, b in zip(clock.paused, t0, t1, strict=True)]

        self.hook = Hook()

    def now(self) -> tuple[float, float]:
        """(CPU, wall) seconds of training so far."""
        return (time.process_time() - self.start[0] - self.paused[0],
                time.perf_counter() - self.start[1] - self.paused[1])


def first_reaching(points: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    """(CPU, wall) seconds of the first point (cpu, wall, accuracy) at or above `target`."""
    return next(((c, w) for c, w, a in points if a >= target), None)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bench(name: str, args, threads: int) -> dict:
    from edgeprune import data, export, models, timing
    from edgeprune.models.chain import cut
    from edgeprune.neuroflux import memory, plan
    from edgeprune.neuroflux import train as nf
    from edgeprune.train import TrainConfig, evaluate, fit

    bundle = data.loaders(args.dataset, batch_size=BACKPROP_BATCH, subset=args.subset, val_size=args.val,
                          test_subset=args.test, augment=False)
    shape, classes = bundle.input_shape, bundle.num_classes
    args.data_label = bundle.label
    torch.manual_seed(0)
    model = models.create(name, classes, shape[0])
    spec = model.edgeprune_spec.to_dict()

    # 1. the budget: what backpropagation needs at batch 16
    whole = memory.cost(name, [model], shape, classes)
    budget = memory.measure_peak(spec, shape, 0, 0, [], BACKPROP_BATCH, mode="backprop")
    out = {"model": name, "budget_bytes": budget, "backprop_predicted_bytes": whole.at(BACKPROP_BATCH)}

    # 2. the plan under it, every block measured
    settings = nf.Settings(memory_budget=str(budget), val_size=args.val)
    p = plan.make(cut(model, name), shape, classes, budget, args.lr, BACKPROP_BATCH, settings)
    blocks = []
    for b in p.blocks:
        peak = memory.measure_peak(spec, shape, b.first, b.stop, p.heads[b.first:b.stop], b.batch)
        blocks.append({"layers": [b.first, b.stop - 1], "batch": b.batch, "lr": b.lr,
                       "predicted_bytes": b.predicted_bytes, "measured_bytes": peak,
                       "predicted_over_measured": b.predicted_bytes / peak, "measured_over_budget": peak / budget})
    out["blocks"] = blocks

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, schedule="cosine", seed=0)
    # 3. NeuroFlux, then backpropagation at batch 16: same epochs, same samples
    note(f"{name}: M = {budget / 2**20:.1f} MiB, blocks {[(b['layers'], b['batch']) for b in blocks]}; NeuroFlux")
    torch.manual_seed(0)
    fresh = models.create(name, classes, shape[0])
    with tempfile.TemporaryDirectory() as work:
        result = nf.train(fresh, bundle.train.dataset, bundle.val.dataset, classes, shape, cfg, BACKPROP_BATCH,
                          settings, work)
    # backpropagation at batch 16
    torch.manual_seed(0)
    bp = models.create(name, classes, shape[0])
    clock = ValClock(bundle.val, max(1, len(bundle.train) // 4))
    fit(bp, bundle.train, cfg, callbacks=[clock.hook])
    bp_cpu, bp_wall = clock.now()
    bp_val = clock.points[-1][2]
    bp_test = evaluate(bp, bundle.test)["accuracy"]
    target = bp_val - 0.01
    note(f"{name}: backprop val {bp_val:.3f} test {bp_test:.3f} in {bp_cpu:.0f} CPU s")
    out["backprop"] = {"cpu_seconds": bp_cpu, "seconds": bp_wall, "val_curve": clock.points,
                       "final_val_accuracy": bp_val, "test_accuracy": bp_test,
                       "params": sum(q.numel() for q in bp.parameters()),
                       "seconds_to_target": first_reaching(clock.points, target)}

    info = result.info
    best_so_far, curve = 0.0, []
    for d in info["blocks"]:
        best_so_far = max(best_so_far, *d["val_accuracy"].values())
        curve.append((d["cpu_seconds"], d["seconds"], best_so_far))
    exit_test = evaluate(result.model, bundle.test)["accuracy"]
    nf_to_target = first_reaching(curve, target)
    note(f"{name}: NeuroFlux exits {info['val_accuracy']} in {info['blocks'][-1]['cpu_seconds']:.0f} CPU s")
    out["neuroflux"] = {"cpu_seconds": info["blocks"][-1]["cpu_seconds"], "seconds": info["seconds"],
                        "val_curve": curve, "val_accuracy": info["val_accuracy"],
                        "exit": info["exit"], "exit_test_accuracy": exit_test, "params_exit": info["params_exit"],
                        "seconds_to_target": nf_to_target, "memory": info["memory"]}
    out["target_val_accuracy"] = target
    bp_to_target = out["backprop"]["seconds_to_target"]
    out["speedup_to_target_cpu"], out["speedup_to_target_wall"] = (
        (bp_to_target[0] / nf_to_target[0], bp_to_target[1] / nf_to_target[1]) if nf_to_target and bp_to_target
        else (None, None))
    out["params_x_fewer"] = out["backprop"]["params"] / info["params_exit"]
    out["exit_minus_backprop_test_pts"] = 100 * (exit_test - bp_test)

    # 4. ONNX Runtime batch-32 throughput, both timed round-robin
    onnx = {"exit": (export.to_onnx_bytes(result.model.eval(), shape), shape),
            "full": (export.to_onnx_bytes(bp.eval(), shape), shape)}
    lat = timing.latency_onnx_interleaved(onnx, batch_size=32, threads=1, rounds=args.rounds, runs=10)
    out["ort_b32_ms"] = {k: v.p50_ms for k, v in lat.items()}
    out["throughput_x"] = lat["full"].p50_ms / lat["exit"].p50_ms
    out["threads"] = threads
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or cifar10 (the JPEG q75 copy)")
    ap.add_argument("--out", default="neuroflux", help="results/OUT.{md,json}")
    ap.add_argument("--subset", type=int, default=3000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    from edgeprune import measure

    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    results = [bench(m, args, args.threads) for m in args.models]
    load.append(os.getloadavg()[0])
    env = measure.environment()
    mib = 2**20
    lines = [
        "# NeuroFlux against backpropagation under the same memory budget (issue 18)",
        "",
        f"{measured('neuroflux.py', env, 'torch', 'onnxruntime')}, {args.threads} torch thread(s), CPU only. "
        f"{args.data_label}, short budget: {args.subset} training samples, {args.val} validation samples carved "
        f"from the training split, {args.test} test samples, {args.epochs} epoch(s) for both methods, SGD lr "
        f"{args.lr} at batch {BACKPROP_BATCH} (cosine), NeuroFlux's block rates scaled by sqrt(batch/16). "
        f"Reconstructed choices (auxiliary widths, blocking, LR scaling) as in `src/edgeprune/neuroflux/plan.py`.",
        "",
        "M = the measured training peak of backpropagation at batch 16 (fresh process, resident set above what it "
        "held before). Every NeuroFlux block measured the same way at its planned batch.",
        "",
        "| model | M (MiB) | backprop predicted | block (layers) | batch | predicted (MiB) | measured (MiB) | "
        "pred/meas | meas/M |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, b in enumerate(r["blocks"]):
            head = (f"| {r['model']} | {r['budget_bytes'] / mib:.1f} | {r['backprop_predicted_bytes'] / mib:.1f} "
                    if i == 0 else "| | | ")
            lines.append(f"{head}| {b['layers'][0]}–{b['layers'][1]} | {b['batch']} | "
                         f"{b['predicted_bytes'] / mib:.1f} | {b['measured_bytes'] / mib:.1f} | "
                         f"{b['predicted_over_measured']:.3f} | {b['measured_over_budget']:.3f} |")
    lines += [
        "",
        "Times are CPU seconds of the training process (one torch thread), wall seconds in brackets: the machine "
        f"was shared with other sessions (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, "
        "on 2 cores), so the CPU seconds are the comparison.",
        "",
        "| model | backprop: val (final) / test | time to val ≥ target: backprop / NeuroFlux | speed-up CPU (wall) | "
        "total training s: backprop / NeuroFlux | exit (layer) | exit test | exit − backprop (pts) | "
        "params full / exit | ORT b32 p50 ms full / exit | throughput × |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bp, n = r["backprop"], r["neuroflux"]

        def s(v):
            return "not reached" if v is None else f"{v[0]:.0f} s ({v[1]:.0f})"

        speed = ("—" if r["speedup_to_target_cpu"] is None else
                 f"{r['speedup_to_target_cpu']:.2f}× ({r['speedup_to_target_wall']:.2f}×)")
        lines.append(
            f"| {r['model']} | {100 * bp['final_val_accuracy']:.1f} / {100 * bp['test_accuracy']:.1f} % | "
            f"{s(bp['seconds_to_target'])} / {s(n['seconds_to_target'])} | {speed} | "
            f"{bp['cpu_seconds']:.0f} ({bp['seconds']:.0f}) / {n['cpu_seconds']:.0f} ({n['seconds']:.0f}) | "
            f"{n['exit']} | {100 * n['exit_test_accuracy']:.1f} % | "
            f"{r['exit_minus_backprop_test_pts']:+.1f} | {bp['params'] / 1e6:.2f} M / {n['params_exit'] / 1e6:.3f} M "
            f"({r['params_x_fewer']:.1f}×) | {r['ort_b32_ms']['full']:.2f} / {r['ort_b32_ms']['exit']:.2f} | "
            f"{r['throughput_x']:.2f}× |")
    lines += ["", "NeuroFlux's validation accuracy per exit (layer: %):", ""]
    for r in results:
        acc = ", ".join(f"{k}: {100 * a:.1f}" for k, a in sorted(r["neuroflux"]["val_accuracy"].items(),
                                                               key=lambda kv: int(kv[0])))
        lines.append(f"- {r['model']}: {acc}")
    ratios = [b["predicted_over_measured"] for r in results for b in r["blocks"]]
    lines += ["", f"Predicted/measured over all blocks: median {statistics.median(ratios):.3f}, range "
              f"{min(ratios):.3f}–{max(ratios):.3f}. The paper (GPU): {PAPER}."]
    lines += ["", "What the NeuroFlux run itself held (report.json's details.neuroflux.memory; the budget bounds the "
              "increment above the process's resident set before training, which `/usr/bin/time` would add):", "",
              "| model | allocator | baseline RSS (MiB) | peak block increment (MiB) | increment / M | "
              "process peak RSS (MiB) | within M |", "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["neuroflux"]["memory"]

        def fmt(v):
            return "—" if v is None else f"{v / mib:.1f}"

        over = "—" if m["peak_increment"] is None else f"{m['peak_increment'] / m['budget']:.3f}"
        lines.append(f"| {r['model']} | {m['allocator'] or 'default'} | {fmt(m['baseline_rss'])} | "
                     f"{fmt(m['peak_increment'])} | {over} | {fmt(m['process_peak_rss'])} | {m['within_budget']} |")
    write_results(args.out, lines, {"args": vars(args), "environment": env, "results": results})


if __name__ == "__main__":
    sys.exit(main())
