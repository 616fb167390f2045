"""How long the pruning step alone takes, on a quiet machine and beside a busy core (issue 20).

SNIP and GraSP (one synthetic batch of 128) and SynFlow (100 rounds, data-free) prune a freshly initialised
ResNet-20 (1×28×28), ResNet-56 and VGG-16 (3×32×32) to density 0.1, with 1 and 2 torch threads and with
`threads.resolve("auto")` (resolved before the timed step, as a run resolves it once at its start), each
`--repeats` times, median reported:
- quiet: nothing of ours runs beside it;
- busy: a second process spins on one core throughout (bounded to `SPIN_LIMIT_S`, killed after).
Today's implementation (`BASELINE`, the commit before issue 20, unpacked from git into a temporary folder)
is timed quiet in the same run with torch's default thread count (all cores: it chose none), for the
ratios. Every measurement records `os.getloadavg()` at its start: other work on the machine shows there.
Each (implementation, condition) runs in its own process, so the baseline's modules never mix with ours.

    PYTHONPATH=src nice -n 5 .venv/bin/python benchmarks/prune_time.py [--repeats 3]

Long: on 2026-11-30, at load 5-8, today's part alone took 24 min.

Targets: quiet SynFlow-100 ≤ 10 s and SNIP ≤ 1 s on VGG-16; beside a busy core `auto` within 1.2× of the
best fixed thread count for every step. Results: benchmarks/results/prune_time.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import measured, write_results

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "7d00840"  # the last commit before issue 20's changes to scoring and selection
CRITERIA = ("snip", "grasp", "synflow")
MODELS = (("resnet20", (1, 28, 28)), ("resnet56", (3, 32, 32)), ("vgg16", (3, 32, 32)))
THREADS = (1, 2, "auto")
TARGET_S = {("synflow", "vgg16"): 10.0, ("snip", "vgg16"): 1.0}
AUTO_WITHIN = 1.2
SPIN_LIMIT_S = 3600
SPIN = f"import time\nt = time.time()\nwhile time.time() - t < {SPIN_LIMIT_S}: pass"


def worker(impl: str, settings: list, repeats: int) -> None:
    """In a fresh process on `impl`'s sources: time every (criterion, model, threads), one JSON line each."""
    import torch

    from edgeprune import data, masks, models, scores

    warm = True  # the first step in a process pays one-off costs (allocator, kernels): run it once untimed
    for criterion, model_name, shape, spec in settings:
        shape = tuple(shape)
        batch = [next(iter(data.loaders("synthetic", shape=shape, num_classes=10, size=128, batch_size=128).train))]
        times, loads, resolved = [], [], []
        for i in range(-1 if warm else 0, repeats):
            if spec == "auto":
                from edgeprune import threads
                n = threads.resolve("auto")
            else:
                n = spec
            torch.set_num_threads(n)
            torch.manual_seed(0)
            model = models.create(model_name, 10, shape[0])
            loads.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            scorer = _scorer(scores, impl, criterion, batch, shape)
            masks.prune_iteratively(model, scorer, 0.1, rounds=scores.default_rounds(criterion))
            if i >= 0:
                times.append(time.perf_counter() - t0)
                resolved.append(n)
        if warm:
            loads, warm = loads[1:], False
        print(json.dumps({"impl": impl, "criterion": criterion, "model": model_name, "threads": spec,
                          "resolved": resolved, "times_s": times, "loadavg_at_start": loads}), flush=True)


def precision_worker(repeats: int) -> None:
    """SynFlow-100 on VGG-16 in float64 (the default) and float32 (`precision="float32"`), quiet, threads auto:
    medians, and the fraction of the kept weights the two choose differently. One JSON line."""
    import torch

    from edgeprune import masks, models, scores, threads

    shape, times, kept = (3, 32, 32), {}, {}
    torch.set_num_threads(threads.resolve("auto"))
    for precision in ("float64", "float32"):
        times[precision] = []
        for i in range(-1, repeats):  # the first, untimed, pays one-off costs
            torch.manual_seed(0)
            model = models.create("vgg16", 10, 3)
            t0 = time.perf_counter()
            kept[precision] = masks.prune_iteratively(
                model, scores.scorer("synflow", input_shape=shape, precision=precision), 0.1, rounds=100)
            if i >= 0:
                times[precision].append(time.perf_counter() - t0)
    total = sum(int(m.sum()) for m in kept["float64"].values())
    differ = sum(int((kept["float64"][n] != kept["float32"][n]).sum()) for n in kept["float64"]) // 2
    print(json.dumps({"impl": "precision", "criterion": "synflow", "model": "vgg16", "threads": "auto",
                      "times_s": times, "kept": total, "kept_differently": differ}), flush=True)


def _scorer(scores, impl: str, criterion: str, batch: list, shape: tuple):
    if impl == "today":  # it had no scores.scorer: a fresh score per round
        return lambda m: scores.score(criterion, m, batch, input_shape=shape)
    return scores.scorer(criterion, batch, input_shape=shape)


def run_worker(impl: str, src: Path, settings: list, repeats: int) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, __file__, "--worker", impl, "--repeats", str(repeats), json.dumps(settings)],
                         env=env, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for r in rows:
        print(r, flush=True)
    return rows


def measure_all(repeats: int) -> list[dict]:
    ours = ROOT / "src"
    cases = [[c, m, list(s)] for c in CRITERIA for m, s in MODELS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        default = os.cpu_count()  # what today's torch uses when nobody chooses
        rows += [dict(r, condition="quiet") for r in run_worker("today", Path(tmp) / "src",
                                                                 [c + [default] for c in cases], repeats)]
    rows += [dict(r, condition="quiet") for r in run_worker("new", ours, [c + [t] for c in cases for t in THREADS],
                                                            repeats)]
    rows += [dict(r, condition="quiet") for r in run_worker("precision", ours, [], repeats)]
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(1.0)  # spinning before anything is sampled or timed
        rows += [dict(r, condition="busy") for r in run_worker("new", ours, [c + [t] for c in cases for t in THREADS],
                                                               repeats)]
    finally:
        spinner.kill()
        spinner.wait()
    for r in rows:
        if r["impl"] == "precision":
            r["median_s"] = {p: statistics.median(t) for p, t in r["times_s"].items()}
        else:
            r["median_s"] = statistics.median(r["times_s"])
    return rows


def table(rows: list[dict]) -> list[str]:
    def get(impl, cond, crit, model, spec):
        return next(r for r in rows if (r["impl"], r["condition"], r["criterion"], r["model"], r["threads"])
                    == (impl, cond, crit, model, spec))

    lines = ["| criterion | model | today, quiet, all cores s | quiet 1 / 2 / auto s (auto =) | today ÷ auto | "
             "busy 1 / 2 / auto s (auto =) | busy: auto ÷ best fixed | load at start, quiet / busy |",
             "|---|---|---|---|---|---|---|---|"]
    for crit in CRITERIA:
        for model, _ in MODELS:
            today = next(r for r in rows if (r["impl"], r["criterion"], r["model"]) == ("today", crit, model))
            quiet = [get("new", "quiet", crit, model, t) for t in THREADS]
            busy = [get("new", "busy", crit, model, t) for t in THREADS]
            best = min(busy[0]["median_s"], busy[1]["median_s"])
            load = [r["loadavg_at_start"] for r in quiet], [r["loadavg_at_start"] for r in busy]
            lo = [f"{min(min(x) for x in ls):.1f}–{max(max(x) for x in ls):.1f}" for ls in load]
            lines.append(
                f"| {crit} | {model} | {today['median_s']:.2f} | "
                f"{_medians(quiet)} ({_resolved(quiet[2])}) | "
                f"{today['median_s'] / quiet[2]['median_s']:.1f}× | "
                f"{_medians(busy)} ({_resolved(busy[2])}) | "
                f"{busy[2]['median_s'] / best:.2f} | {lo[0]} / {lo[1]} |")
    return lines


def _medians(rows: list[dict]) -> str:
    return " / ".join(f"{r['median_s']:.2f}" for r in rows)


def _resolved(row: dict) -> str:
    return "/".join(map(str, sorted(set(row["resolved"]))))


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for (crit, model), target in TARGET_S.items():
        r = next(r for r in rows if (r["impl"], r["condition"], r["criterion"], r["model"], r["threads"])
                 == ("new", "quiet", crit, model, "auto"))
        out.append(f"- quiet {crit} on {model} with auto threads: {r['median_s']:.2f} s, target ≤ {target:g} s: "
                   f"{'met' if r['median_s'] <= target else 'missed'}")
    ratios = []
    for r in rows:
        if (r["impl"], r["condition"], r["threads"]) == ("new", "busy", "auto"):
            fixed = [x["median_s"] for x in rows if (x["impl"], x["condition"], x["criterion"], x["model"])
                     == ("new", "busy", r["criterion"], r["model"]) and x["threads"] != "auto"]
            ratios.append((r["median_s"] / min(fixed), r["criterion"], r["model"]))
    p = next(r for r in rows if r["impl"] == "precision")
    out.append(f"- opt-in `precision=\"float32\"`, SynFlow-100 on vgg16, quiet, auto threads: "
               f"{p['median_s']['float32']:.2f} s against float64's {p['median_s']['float64']:.2f} s "
               f"({p['median_s']['float64'] / p['median_s']['float32']:.2f}× faster); "
               f"{p['kept_differently']} of {p['kept']} kept weights ({p['kept_differently'] / p['kept']:.2%}) "
               "chosen differently")
    worst = max(ratios)
    out.append(f"- busy: auto is at worst {worst[0]:.2f}× the best fixed count ({worst[1]} on {worst[2]}), target "
               f"≤ {AUTO_WITHIN}×: {'met' if worst[0] <= AUTO_WITHIN else 'missed'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("settings", nargs="?")
    args = parser.parse_args()
    if args.worker == "precision":
        precision_worker(args.repeats)
        return
    if args.worker:
        worker(args.worker, json.loads(args.settings), args.repeats)
        return
    t0 = time.perf_counter()
    rows = measure_all(args.repeats)
    from edgeprune import measure

    env = measure.environment()
    lines = ["# Pruning time alone, quiet and beside a busy core", "",
             measured("prune_time.py", env, "torch") + f" in {(time.perf_counter() - t0) / 60:.0f} min: seconds "
             f"to score and mask a freshly initialised model to density 0.1, median of {args.repeats}. SNIP and "
             "GraSP read one synthetic batch of 128; SynFlow is data-free with 100 rounds. *today* is commit "
             f"`{BASELINE}` (before issue 20) with torch's default threads, timed quiet in the same run. *busy*: "
             "another process spins on one core throughout. *auto* is `threads.resolve('auto')` just before "
             "each timed step; the count it chose is in brackets. The last column is the 1-minute load average "
             "at the start of the measurements: other sessions share these cores, so *quiet* means nothing of "
             "this benchmark ran beside it, not that the machine was idle.", ""]
    lines += table(rows) + [""] + verdicts(rows)
    write_results("prune_time", lines, {"environment": env, "baseline": BASELINE, "repeats": args.repeats,
                                        "rows": rows})


if __name__ == "__main__":
    main()
