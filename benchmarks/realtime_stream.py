"""The `realtime` policy (after ROMA) on a stream of Fashion-MNIST test images, against every fixed variant and an
oracle that knows the labels, at several frame rates and load levels (issue 15).

    nice -n 5 python benchmarks/realtime_stream.py          # -> results/realtime_stream.{md,json,png}

With --runs, the portfolio is those finished runs instead (e.g. issue 31's CIFAR-10 variants: dense, Taylor and
their INT8 copies from specs/cifar10_taylor.yaml), the stream comes from their data set's test split, and --out
names the results:

    python benchmarks/realtime_stream.py --runs benchmarks/runs/cifar10_taylor/* --out realtime_stream_cifar10

The stream: test images that the variants' accuracy was not measured on (the accuracy uses the first 2,000 of
the loader's fixed permutation; the stream draws from the rest), each held for a scene of a random length
(geometric, mean M frames), so that a stale answer stays right until the scene changes.

Trace-driven, with measured latencies: at each load level (0, 1 or 2 busy processes on the 2 cores), every
variant classifies every scene image with ONNX Runtime (1 thread), round-robin, and each call is timed. The
stream is then replayed on a timeline at F frames/s for each chooser: a server that is free takes the newest
frame and answers it (the variant's prediction for that image) after the variant's next measured latency, in
the order the calls were timed; the frames arriving meanwhile are dropped; frame i is scored with the newest
answer delivered before frame i + 1 arrives (labels are used only here). Choosers: each fixed variant; the
`realtime` policy (edgeprune.serve.policy.Realtime, fed only the measured latencies of what it ran, a
decision every 20 answers, switches instant as in `preloaded`); and the oracle, which for every segment of
100 frames takes, knowing the labels, the fixed variant that scored best there (switching free).
Frame rates are scaled to this CPU: the variants' latencies here are 0.05–1 ms where a camera's frame
period is 33 ms, and the replay only depends on their ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import HERE, RESULTS, measured, write_results

from edgeprune import portfolio
from edgeprune.measure import environment
from edgeprune.ort import ort_session
from edgeprune.serve.policy import Realtime, Window

RUNS = HERE / "runs" / "realtime"
ROOT = HERE.parent
DATA = ["-d", "fashion-mnist", "--test-subset", "2000", "-b", "64", "--measure-runs", "10"]
VARIANTS = {  # name: training command (short budgets, stated in the results)
    "lenet5": ["train", "-m", "lenet5", "--subset", "5000", "-e", "2"],
    "resnet20": ["train", "-m", "resnet20", "--subset", "10000", "-e", "2"],
    "resnet20-rec0.9": ["prune", "--method", "reconvene", "--criterion", "magnitude", "--sparsity", "0.9", "-m",
                        "resnet20", "--subset", "10000", "-e", "2"],
}
MEAN_SCENE = 5  # frames
DECIDE_EVERY = 20  # answers
SEGMENT = 100  # frames, for the oracle


def make_runs() -> list[Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for name, args in VARIANTS.items():
        if not (RUNS / name / "report.json").is_file():
            subprocess.run([sys.executable, "-c", "from edgeprune.cli import main; main()", "-q", *args, *DATA,
                            "--runs-dir", str(RUNS), "--name", name, "--overwrite"], env=env, check=True)
    return [RUNS / n for n in VARIANTS]


def stream(frames: int, seed: int = 0, dataset: str = "fashion-mnist",
           held_out: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scene images, each frame's scene index, each frame's label). The scenes skip the first `held_out` test
    images of the fixed permutation (those the variants' accuracy was measured on) where enough are left."""
    from edgeprune import data

    size = len(data.loaders(dataset, batch_size=256).test.dataset)
    test = data.loaders(dataset, test_subset=size, batch_size=256).test.dataset  # all of it, the fixed permutation
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < frames:
        lengths.append(int(rng.geometric(1 / MEAN_SCENE)))
    start = held_out if len(test) - held_out >= len(lengths) else 0
    picks = rng.choice(np.arange(start, len(test)), size=len(lengths), replace=False)
    images = np.stack([test[int(i)][0].numpy() for i in picks]).astype(np.float32)
    labels = np.array([int(test[int(i)][1]) for i in picks])
    scene = np.repeat(np.arange(len(lengths)), lengths)[:frames]
    return images, scene, labels[scene]


def trace(folder: Path, manifest: portfolio.Manifest, images: np.ndarray, hogs: int) -> dict:
    """{variant: (latency ms per scene image, prediction per scene image)} under `hogs` busy processes."""
    sessions = {v.id: ort_session(folder / v.onnx, 1) for v in manifest.variants}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, {manifest.input_name: images[:1]})
    code = "import time\nt = time.time() + 600\nwhile time.time() < t:\n    pass\n"  # bounded, and killed below
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(hogs)]
    try:
        time.sleep(0.5 if hogs else 0)
        out = {vid: ([], []) for vid in sessions}
        for i in range(len(images)):
            for vid, s in sessions.items():
                t0 = time.perf_counter()
                y = s.run(None, {manifest.input_name: images[i:i + 1]})[0]
                out[vid][0].append((time.perf_counter() - t0) * 1e3)
                out[vid][1].append(int(y.argmax()))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {vid: (np.array(lat), np.array(pred)) for vid, (lat, pred) in out.items()}


def replay(fps: float, scene: np.ndarray, labels: np.ndarray, traces: dict, choose, observe=None) -> np.ndarray:
    """Whether each frame was answered right by a chooser (`choose(frame) -> variant`, `observe(variant, ms)`);
    its mean is the delivered real-time accuracy."""
    n = len(scene)
    t, nxt = 0.0, 0
    delivered: list[tuple[float, int]] = []  # (time, predicted class)
    calls = dict.fromkeys(traces, 0)
    while nxt < n:
        j = max(nxt, min(n - 1, math.floor(t * fps + 1e-9)))  # the newest frame that has arrived, or the next
        start = max(t, j / fps)
        vid = choose(j)
        lat, pred = traces[vid]
        ms = float(lat[calls[vid] % len(lat)])  # the variant's measured calls, in the order they were timed
        calls[vid] += 1
        t = start + ms / 1e3
        delivered.append((t, int(pred[scene[j]])))
        if observe is not None:
            observe(vid, ms)
        nxt = j + 1
    times = np.array([d[0] for d in delivered])
    preds = np.array([d[1] for d in delivered])
    # frame i: the newest answer delivered before frame i + 1 arrives
    k = np.searchsorted(times, (np.arange(n) + 1) / fps, side="right") - 1
    return (k >= 0) & (preds[np.maximum(k, 0)] == labels)


def realtime_policy(manifest: portfolio.Manifest, fps: float):
    policy = Realtime(manifest, fps=fps, beta=1 / MEAN_SCENE)
    state = {"active": max(manifest.variants, key=lambda v: v.accuracy).id, "window": [], "switches": 0,
             "answers": dict.fromkeys(manifest.ids, 0)}

    def choose(_frame: int) -> str:
        return state["active"]

    def observe(vid: str, ms: float) -> None:
        state["answers"][vid] += 1
        state["window"].append(ms)
        if len(state["window"]) >= DECIDE_EVERY:
            d = policy.decide(Window(vid, state["window"], sum(state["window"]) / 1e3))
            state["window"] = []
            if d.want != state["active"]:
                state["active"], state["switches"] = d.want, state["switches"] + 1

    return choose, observe, state


def paired_interval(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of mean(a) - mean(b) over the same frames (`a`, `b`: whether each frame was answered right),
    by a block bootstrap over segments of SEGMENT frames (frames within a scene are not independent)."""
    diff = a.astype(float) - b.astype(float)
    starts = np.arange(0, len(diff), SEGMENT)
    blocks, sizes = np.add.reduceat(diff, starts), np.diff(np.append(starts, len(diff)))
    pick = np.random.default_rng(seed).integers(0, len(blocks), (resamples, len(blocks)))
    means = blocks[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def oracle(fixed: dict[str, np.ndarray]) -> float:
    """Knowing the labels, the best fixed variant of every segment of SEGMENT frames, from their replays (switches
    free): at least the best fixed variant's accuracy."""
    right = np.stack(list(fixed.values()))
    n = right.shape[1]
    return sum(right[:, s:s + SEGMENT].sum(axis=1).max() for s in range(0, n, SEGMENT)) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--fps", type=float, nargs="+", default=[250, 500, 1000, 2000, 4000])
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", type=Path, nargs="+", help="finished runs to serve, all of one data set (default: "
                    "train the Fashion-MNIST variants named in VARIANTS)")
    ap.add_argument("--out", default="realtime_stream", help="results/<OUT>.{md,json,png}")
    args = ap.parse_args()
    folder = HERE / "runs" / f"{args.out}_portfolio"
    load = {"start": os.getloadavg()[0]}
    runs = args.runs or make_runs()
    dataset, held_out, described = _data_of(runs) if args.runs else ("fashion-mnist", 2000, FASHION_TEXT)
    manifest = portfolio.build(runs, folder, keep_all=True, overwrite=True, rounds=6, runs=20)
    images, scene, labels = stream(args.frames, dataset=dataset, held_out=held_out)
    rows = []
    for hogs in args.hogs:
        traces = trace(folder, manifest, images, hogs)
        for fps in args.fps:
            right = {vid: replay(fps, scene, labels, traces, lambda _j, v=vid: v) for vid in traces}
            fixed = {vid: float(r.mean()) for vid, r in right.items()}
            choose, observe, state = realtime_policy(manifest, fps)
            policy_right = replay(fps, scene, labels, traces, choose, observe)
            best = max(fixed, key=fixed.get)
            rows.append({"hogs": hogs, "fps": fps, "fixed": fixed, "best_fixed": best,
                         "realtime": float(policy_right.mean()), "switches": state["switches"],
                         "realtime_answers": state["answers"], "oracle": oracle(right),
                         "realtime_minus_best_95": paired_interval(policy_right, right[best]),
                         "latency_p50_ms": {v: float(np.median(t[0])) for v, t in traces.items()}})
    env = environment()
    payload = {"environment": env, "load_average": load, "frames": args.frames, "mean_scene_frames": MEAN_SCENE,
               "variants_text": described,
               "runs": [str(r) for r in runs], "out": args.out,
               "variants": [{"id": v.id, "accuracy": v.accuracy, "p50_ms": v.p50_ms} for v in manifest.variants],
               "rows": rows}
    plot(rows, args.hogs, args.out)
    write_results(args.out, report(payload), payload)


FASHION_TEXT = ("Variants trained briefly on Fashion-MNIST (LeNet-5: 5,000 images, 2 epochs; ResNet-20 and its "
                "Reconvene 0.9: 10,000 images, 2 epochs); offline accuracy on 2,000 test images, the stream from other "
                "test images.")


def _data_of(runs: list[Path]) -> tuple[str, int, str]:
    """(data set, test images the accuracies were measured on, a sentence saying so) of finished runs."""
    from edgeprune import lifecycle, record
    from edgeprune import runs as runs_mod

    configs = [lifecycle.source_config(r) for r in runs]
    names = {c.data["name"] for c in configs}
    if len(names) != 1:
        raise SystemExit(f"--runs: one data set, please; these were trained on {', '.join(sorted(names))}")
    name = names.pop()
    held = max(c.data.get("test_subset") or 0 for c in configs)
    copies = {record.read_report(r / runs_mod.REPORT).data_copy for r in runs} - {None}
    label = f"{name} ({', '.join(sorted(copies))})" if copies else name
    where = (f"offline accuracy on the first {held} test images, the stream from the others" if held else
             "offline accuracy on the whole test split, which the stream also draws from (a stream of unseen images "
             "would need the accuracy measured on part of it)")
    return name, held, (f"Variants: the finished runs {', '.join(r.name for r in runs)}, on {label}; {where}.")


def plot(rows: list[dict], hogs: list[int], out: str = "realtime_stream") -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hogs), figsize=(5 * len(hogs), 4), sharey=True, squeeze=False)
    for ax, h in zip(axes[0], hogs, strict=True):
        rs = [r for r in rows if r["hogs"] == h]
        fps = [r["fps"] for r in rs]
        for vid in rs[0]["fixed"]:
            ax.plot(fps, [100 * r["fixed"][vid] for r in rs], "--", marker="o", ms=4, label=f"fixed {vid}")
        ax.plot(fps, [100 * r["realtime"] for r in rs], "-", marker="s", lw=2, label="realtime policy")
        ax.plot(fps, [100 * r["oracle"] for r in rs], ":", marker="^", label="oracle (labels)")
        ax.set_xscale("log")
        ax.set_xticks(fps, [f"{f:g}" for f in fps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{h} busy process(es)")
        ax.set_xlabel("frames per second (scaled to this CPU)")
    axes[0][0].set_ylabel("delivered real-time accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{out}.png", dpi=110)


def _load_text(p: dict) -> str:
    """The machine's own load around the run, besides the busy processes the script starts at each level."""
    load = p.get("load_average")
    if not load:
        return "other load not recorded"
    return (f"1-minute load average {load['start']:.1f} at the start (other work on the machine; the busy processes "
            "of each load level come on top, and raise the average from then on)")


def report(p: dict) -> list[str]:
    lines = ["# Real-time accuracy on a stream: the `realtime` policy against fixed variants and an oracle", "",
             f"{measured('realtime_stream.py', p['environment'], 'onnxruntime')}, {_load_text(p)}. "
             f"{p['frames']} frames, scenes of mean {p['mean_scene_frames']} frames (the policy's β = 1/mean). "
             f"{p.get('variants_text', FASHION_TEXT)} Trace-driven replay with latencies measured at each load level "
             f"(see the script). ![plot]({p.get('out', 'realtime_stream')}.png)", "",
             "| variant | offline accuracy | profiled p50 ms |", "|---|---|---|"]
    lines += [f"| {v['id']} | {100 * v['accuracy']:.2f} % | {v['p50_ms']:.3f} |" for v in p["variants"]]
    lines += ["", "| busy processes | fps | best fixed | best fixed acc. | realtime acc. | Δ vs best fixed, 95 % "
              "interval (pts) | switches | realtime's answers by the best fixed | oracle acc. | ≥ best fixed | not "
              "worse than best fixed (interval reaches 0) | within 15 % of oracle |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def share(r: dict) -> str:
        answers = r.get("realtime_answers")
        return "—" if not answers else f"{100 * answers[r['best_fixed']] / max(1, sum(answers.values())):.1f} %"


    def interval(r: dict) -> str:
        lo_hi = r.get("realtime_minus_best_95")
        return "—" if lo_hi is None else f"{100 * lo_hi[0]:+.2f} to {100 * lo_hi[1]:+.2f}"

    def not_worse(r: dict) -> str:
        lo_hi = r.get("realtime_minus_best_95")
        return "—" if lo_hi is None else ("yes" if lo_hi[1] >= 0 else "no")

    for r in p["rows"]:
        best = r["fixed"][r["best_fixed"]]
        lines.append(f"| {r['hogs']} | {r['fps']:g} | {r['best_fixed']} | {100 * best:.2f} % | "
                     f"{100 * r['realtime']:.2f} % | {interval(r)} | {r['switches']} | {share(r)} | "
                     f"{100 * r['oracle']:.2f} % | "
                     f"{'yes' if r['realtime'] >= best else 'no'} | {not_worse(r)} | "
                     f"{'yes' if r['realtime'] >= 0.85 * r['oracle'] else 'no'} |")
    met = sum(r["realtime"] >= r["fixed"][r["best_fixed"]] for r in p["rows"])
    near = sum(r["realtime"] >= 0.85 * r["oracle"] for r in p["rows"])
    n = len(p["rows"])
    lines += ["", f"At least the best fixed variant's accuracy in **{met} of {n}** settings; within 15 % of the oracle "
              f"in **{near} of {n}**."]
    if all("realtime_minus_best_95" in r for r in p["rows"]):
        tie = sum(r["realtime_minus_best_95"][1] >= 0 for r in p["rows"])
        lines.append(f"Not distinguishably worse than the best fixed variant (the paired 95 % interval of the "
                     f"difference, a bootstrap over {SEGMENT}-frame segments, reaches 0) in **{tie} of {n}**: where "
                     "one variant is best throughout a setting, a policy can at best tie it, and a tie measured on one "
                     "stream lands above or below it by chance.")
    below = [r for r in p["rows"] if r["realtime"] < r["fixed"][r["best_fixed"]] and r.get("realtime_answers")]
    if below:
        most = [max(r["realtime_answers"], key=r["realtime_answers"].get) for r in below]
        shares = [r["realtime_answers"][m] / max(1, sum(r["realtime_answers"].values()))
                  for r, m in zip(below, most, strict=True)]
        gaps = [r["fixed"][r["best_fixed"]] - r["fixed"][m] for r, m in zip(below, most, strict=True)]
        same = sum(m == r["best_fixed"] for r, m in zip(below, most, strict=True))
        lines.append(f"Where it fell below the best fixed variant ({len(below)} settings), the variant it served most "
                     f"({100 * min(shares):.1f} % of its calls or more) was that variant in {same}, and in the others "
                     f"one whose own fixed accuracy there was at most {100 * max(gaps):.2f} points below it: the "
                     "policy moves after its first window of measured latencies and then stays, and what is left "
                     "of the gap is a near-tie between variants, or the frames a switch moved it to, that one "
                     "stream ranks by chance (the interval above).")
    return lines + [""]


if __name__ == "__main__":
    main()
