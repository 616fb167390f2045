"""Channel surgery over every torchvision classifier, beside torch-pruning's own pruner (issue 11).

For each model of `torchvision.models.list_models(module=torchvision.models)` (weights=None, seed 0, one
3×224×224 input, or the model's own resolution where its training forward cannot run at 224: inception_v3),
each in its own subprocess with a time limit and an address-space cap:

- `per_layer`: `surgery.materialize` asked to remove 30 % of every conv/linear layer's output channels,
  the lowest by L2 norm of their weights, each layer on its own (a coupled channel goes only where every
  coupled layer removes it);
- `group`: the same 30 % ranked once per coupled group (`structure.group_keep`, torch-pruning's
  GroupMagnitudeImportance), then `materialize`;
- `dead`: `dead.remove_dead` after zeroing those same 30 % of rows in every layer; its max_abs_error
  against the masked model, over the largest output magnitude, is the exactness of dead-structure removal;
- `tp`: torch-pruning's `BasePruner` (GroupMagnitudeImportance p=2, pruning_ratio 0.3, the layers producing
  the 1000 logits ignored, `num_heads` for every nn.MultiheadAttention), `step()` once.

Recorded per model and task: outcome (pruned: fewer parameters and eval and training-mode forwards run;
refused: the exception's type and first lines; wrong: the returned model fails a forward or gives another
output shape; timeout / memory / crash), parameters before and after, the fraction of the decided layers'
channels removed, seconds (materialize alone; group_keep's ranking separately; torch-pruning: pruner
construction + step), the torch-pruning traces the task made (group_keep and remove_dead hand theirs to
materialize: 1), and whether a refused call left the model's state_dict exactly as it was.

    nice -n 5 env PYTHONPATH=src .venv/bin/python benchmarks/zoo_surgery.py            # hours on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/zoo_surgery.py --models googlenet,vit_b_16 --tasks group

Results (merged with earlier ones, model by model): benchmarks/results/zoo_surgery.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, measured, write_results

RATIO = 0.3
SIZE = 224
TASKS = ("per_layer", "group", "dead", "tp")
STEM = "zoo_surgery"


def child(name: str, task: str) -> dict:
    """One task on one model, in this process; returns the row."""
    import torch
    import torch_pruning as tp
    import torchvision
    from torch import nn

    from edgeprune import dead, structure, surgery
    from edgeprune.measure import PRUNABLE, count_params

    traces, build = [], tp.DependencyGraph.build_dependency  # torch-pruning traces made by the task, counted

    def counted(self, *args, **kwargs):
        traces.append(1)
        return build(self, *args, **kwargs)

    tp.DependencyGraph.build_dependency = counted
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = SIZE
    try:  # inception_v3's auxiliary head cannot run at 224 px even unpruned: then the model's own resolution
        with torch.no_grad():  # on a copy: a training forward would update the model's BN running statistics
            copy.deepcopy(model).train()(torch.randn(2, 3, size, size))
    except RuntimeError:
        size = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]
    model.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        shape = model(x).shape
        scale = float(model(x).abs().max())  # errors are stated relative to the output's magnitude
    row = {"params_before": count_params(model)[0], "size": size}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    lowest = {n: (m.weight.detach().flatten(1).norm(dim=1) if not getattr(m, "transposed", False) else None)
              for n, m in layers.items()}
    keep = {n: sorted(torch.topk(s, s.numel() - round(RATIO * s.numel())).indices.tolist())
            for n, s in lowest.items() if s is not None and round(RATIO * s.numel()) > 0}
    state, start = {k: v.clone() for k, v in model.state_dict().items()}, time.perf_counter()
    try:
        if task == "tp":
            logits = [m for m in model.modules() if isinstance(m, PRUNABLE) and surgery.width(m) == 1000]
            heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
            pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=RATIO, ignored_layers=logits, num_heads=heads)
            pruner.step()
        elif task == "dead":
            with torch.no_grad():
                for n, kept in keep.items():
                    w = layers[n].weight
                    w[[i for i in range(w.shape[0]) if i not in set(kept)]] = 0.0
            state, start = {k: v.clone() for k, v in model.state_dict().items()}, time.perf_counter()
            model, report = dead.remove_dead(model, x)
            row["max_abs_error"] = report.max_abs_error
            if scale > 0:  # torchvision's ViTs start with a zero head: their output is 0, nothing to be relative to
                row["max_rel_error"] = report.max_abs_error / scale
        else:
            if task == "group":
                keep = structure.group_keep(model, x, RATIO)
                row["decide_s"] = time.perf_counter() - start
                start = time.perf_counter()
            report = surgery.materialize(model, keep, x)
            row["skipped"] = len(report.skipped)
            row["left_unpruned"] = sum("left unpruned" in v for v in report.skipped.values())
            row["channels_asked"], row["channels_removed"] = report.channels_asked, report.channels_removed
            decided = sum(report.before[n] for n in keep)  # widths before: `layers` holds the pruned modules now
            row["channels_removed_fraction"] = report.channels_removed / decided if decided else 0.0
    except Exception as e:
        row["seconds"] = time.perf_counter() - start
        lines = str(e).splitlines()
        row.update(outcome="refused", error=f"{type(e).__name__}: {lines[0][:400] if lines else ''}",
                   message_chars=len(str(e)), message_lines=len(lines))
        after = model.state_dict()
        row["unchanged"] = state.keys() == after.keys() and all(
            state[k].shape == after[k].shape and torch.equal(state[k], after[k]) for k in state)
        return row
    row["seconds"] = time.perf_counter() - start
    row["traces"] = len(traces)  # group_keep / remove_dead hand their trace to materialize since commit "surgery: …"
    row["params_after"] = count_params(model)[0]
    row["outcome"] = "pruned" if row["params_after"] < row["params_before"] else "unchanged"
    try:
        with torch.no_grad():
            if model.eval()(x).shape != shape:
                row["outcome"] = "wrong"
        row["eval_ok"] = True
    except Exception as e:
        row.update(outcome="wrong", eval_ok=False, error=f"eval forward: {type(e).__name__}: {str(e)[:200]}")
    try:
        model.train()(torch.randn(2, 3, size, size))  # two samples: BN in training mode needs more than one value
        row["train_ok"] = True
    except Exception as e:
        row.update(train_ok=False, train_error=f"{type(e).__name__}: {str(e)[:200]}")
        if row["outcome"] == "pruned":
            row["outcome"] = "wrong"
    return row


def run(name: str, task: str, timeout: float, memory_gb: float) -> dict:
    def cap():
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, __file__, "--child", name, "--tasks", task]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "seconds": timeout}
    wall = time.perf_counter() - start
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line) | {"wall_s": wall}
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    memory = "MemoryError" in done.stderr or "OutOfMemory" in done.stderr or done.returncode in (-9, 137)
    return {"outcome": "memory" if memory else "crash", "error": tail, "wall_s": wall}


OUTCOMES = ("pruned", "unchanged", "refused", "wrong", "timeout", "memory", "crash")


def summary(rows: dict, all_models: list[str]) -> tuple[list[str], dict]:
    done = [m for m in all_models if m in rows and all(t in rows[m] for t in TASKS)]
    counts = {t: {o: sum(rows[m][t]["outcome"] == o for m in done) for o in OUTCOMES} for t in TASKS}
    shown = ("pruned", "refused", "wrong", "timeout")  # always, even at 0
    outcomes = [o for o in OUTCOMES if o in shown or any(c[o] for c in counts.values())]
    both = [m for m in done if rows[m]["tp"].get("outcome") == "pruned"
            and all(rows[m][t].get("outcome") == "pruned" for t in ("per_layer", "group"))]
    ratios = {}
    for t in ("per_layer", "group", "group+ranking", "dead"):  # times compared only within one run of this script
        task = t.split("+")[0]
        ok = [m for m in done if rows[m][task].get("outcome") == "pruned" and rows[m]["tp"].get("outcome") == "pruned"
              and rows[m][task].get("run") is not None and rows[m][task].get("run") == rows[m]["tp"].get("run")]
        if ok:
            ours = [rows[m][task]["seconds"] + (rows[m][task].get("decide_s", 0) if "+" in t else 0) for m in ok]
            theirs = [rows[m]["tp"]["seconds"] for m in ok]
            ratios[t] = {"models": len(ok), "ours_s": sum(ours), "torch_pruning_s": sum(theirs),
                         "total_ratio": sum(ours) / sum(theirs),
                         "median_ratio": statistics.median(a / b for a, b in zip(ours, theirs, strict=True))}
    kept = {t: statistics.median(rows[m][t]["params_after"] / rows[m][t]["params_before"] for m in both)
            for t in ("per_layer", "group", "tp")} if both else {}
    asked = {t: {k: sum(rows[m][t].get(k, 0) for m in done) for k in ("channels_asked", "channels_removed")}
             | {"models_left_partly_unpruned": sum(rows[m][t].get("left_unpruned", 0) > 0 for m in done)}
             for t in ("per_layer", "group")}
    removed = [rows[m]["group"]["channels_removed_fraction"] for m in done
               if rows[m]["group"].get("outcome") == "pruned"]
    errors = [rows[m]["dead"]["max_rel_error"] for m in done if "max_rel_error" in rows[m]["dead"]]
    refused = [rows[m][t] for m in done for t in TASKS[:3] if rows[m][t].get("outcome") == "refused"]
    stats = {"models_done": len(done), "models_listed": len(all_models), "outcomes": counts, "time": ratios,
             "median_params_kept_where_all_pruned": kept, "channels": asked,
             "group_channels_removed": {"min": min(removed), "median": statistics.median(removed),
                                        "max": max(removed)} if removed else {},
             "dead_max_rel_error": max(errors) if errors else None,
             "refusals_leaving_model_unchanged": f"{sum(r.get('unchanged', False) for r in refused)}/{len(refused)}",
             "longest_refusal_lines": max((r.get("message_lines", 0) for r in refused), default=0)}
    lines = [f"{len(done)} of {len(all_models)} models finished every task.", "",
             "| task | " + " | ".join(outcomes) + " |", "|---" * (len(outcomes) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(str(counts[t][o]) for o in outcomes) + " |" for t in TASKS]
    lines.append("")
    for t, r in ratios.items():
        lines.append(f"- `{t}` time over torch-pruning's, on the {r['models']} models both pruned in one run: total "
                     f"{r['ours_s']:.0f} s / {r['torch_pruning_s']:.0f} s = **{r['total_ratio']:.2f}×**, "
                     f"median {r['median_ratio']:.2f}×")
    if kept:
        lines.append(f"- median fraction of parameters kept, on the {len(both)} models all three pruned: "
                     + ", ".join(f"{t} {v:.2f}" for t, v in kept.items()))
    for t, a in asked.items():
        lines.append(f"- `{t}`: channels asked to go {a['channels_asked']}, removed {a['channels_removed']} "
                     f"({a['channels_removed'] / max(a['channels_asked'], 1):.0%}); models with a decision left "
                     f"unpruned (torch-pruning cannot apply it, see the note column): "
                     f"{a['models_left_partly_unpruned']}")
    if removed:
        lines.append(f"- group-level request for {RATIO:.0%} of the decided layers' channels removed "
                     f"{stats['group_channels_removed']['median']:.1%} at the median "
                     f"({min(removed):.1%}–{max(removed):.1%})")
    if errors:
        lines.append(f"- dead-structure removal: largest output difference to the masked model {max(errors):.2g} of "
                     "the largest output magnitude")
    lines.append(f"- refusals leaving the model's state_dict unchanged: {stats['refusals_leaving_model_unchanged']};"
                 f" longest refusal message {stats['longest_refusal_lines']} line(s)")
    return lines, stats


def table(rows: dict, all_models: list[str]) -> list[str]:
    def cell(r: dict | None) -> str:
        if not r:
            return "—"
        o = r["outcome"]
        if o in ("pruned", "unchanged", "wrong") and "params_after" in r:
            o += f" {r['params_after'] / r['params_before']:.2f} · {r['seconds']:.1f}s"
        elif "seconds" in r:
            o += f" · {r['seconds']:.0f}s"
        return o

    def versus(r: dict, t: str) -> str:
        ours, theirs = r.get(t, {}), r.get("tp", {})
        if ours.get("outcome") != "pruned" or theirs.get("outcome") != "pruned":
            return "—"
        return f"{ours['seconds'] / theirs['seconds']:.2f}"

    def landed(r: dict | None) -> str:
        return f"{r['channels_removed']}/{r['channels_asked']}" if r and "channels_asked" in r else "—"

    out = ["| model | params | per-layer | group | dead | torch-pruning | time per-layer/tp | time group/tp "
           "| channels removed/asked (per-layer · group) | note |", "|---" * 10 + "|"]
    for m in all_models:
        r = rows.get(m, {})
        note = "; ".join(f"{t}: {r[t]['error'][:120]}" for t in TASKS if t in r and "error" in r[t])
        note += "".join(f"; {t}: {r[t]['left_unpruned']} decision(s) left unpruned" for t in TASKS[:2]
                        if r.get(t, {}).get("left_unpruned"))
        params = next((r[t]["params_before"] for t in TASKS if t in r and "params_before" in r[t]), None)
        out.append(f"| {m} | {params / 1e6:.1f}M | " if params else f"| {m} | — | ")
        out[-1] += " | ".join(cell(r.get(t)) for t in TASKS) + f" | {versus(r, 'per_layer')} | {versus(r, 'group')} | "
        out[-1] += f"{landed(r.get('per_layer'))} · {landed(r.get('group'))} | {note.strip('; ').replace('|', '/')} |"
    return out


def caps(rows: dict) -> str:
    """The address-space caps the rows ran under, in words (rows from before the cap was kept: the default)."""
    by_cap: dict[float, list[str]] = {}
    for m, r in rows.items():
        for cap in {row.get("memory_gb", 10) for row in r.values()}:
            by_cap.setdefault(cap, []).append(m)
    common = max(by_cap, key=lambda c: len(by_cap[c]))
    others = "".join(f"; {c:.0f} GB: {', '.join(sorted(set(ms)))}" for c, ms in by_cap.items() if c != common)
    return f"{common:.0f} GB{f' ({others[2:]})' if others else ''}"


def write(rows: dict, all_models: list[str], timeout: float) -> None:
    import torchvision

    from edgeprune import measure

    lines, stats = summary(rows, all_models)
    env = measure.environment()
    head = [f"# Channel surgery over the torchvision zoo ({RATIO:.0%} of output channels, {SIZE} px)", "",
            f"{measured('zoo_surgery.py', env, 'torch')}, torch-pruning "
            f"{__import__('torch_pruning').__version__}, torchvision {torchvision.__version__}; one model and "
            f"task at a time, {timeout:.0f} s and {caps(rows)} per subprocess. Each cell: outcome, "
            "parameters kept (fraction), seconds. 'wrong' = the returned model fails an eval or training-mode "
            "forward or changes the output shape. Input 224 px, or the model's own resolution where its "
            "training-mode forward cannot run at 224 (inception_v3: 299). Whether the kept weights compute what "
            "they did is surgery's own check (see src/edgeprune/surgery.py), not repeated here.", ""]
    write_results(STEM, head + lines + ["", *table(rows, all_models)],
                  {"ratio": RATIO, "size": SIZE, "env": env, "summary": stats, "models": rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: every torchvision classifier)")
    p.add_argument("--limit", type=int, help="only the first N models")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--timeout", type=float, default=600, help="seconds per model and task")
    p.add_argument("--memory-gb", type=float, default=10, help="address-space cap per subprocess")
    p.add_argument("--rewrite", action="store_true", help="only re-write the results from the stored rows")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tasks)))
        return

    import torchvision

    all_models = torchvision.models.list_models(module=torchvision.models)
    names = args.models.split(",") if args.models else all_models
    names = names[:args.limit] if args.limit else names
    path = RESULTS / f"{STEM}.json"
    rows = json.loads(path.read_text())["models"] if path.exists() else {}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")  # rows measured by this run: times are compared within a run
    for name in [] if args.rewrite else names:
        for task in args.tasks.split(","):
            rows.setdefault(name, {})[task] = run(name, task, args.timeout, args.memory_gb) | {
                "run": started, "memory_gb": args.memory_gb}
            print(name, task, rows[name][task].get("outcome"), f"{rows[name][task].get('seconds', math.nan):.1f}s",
                  flush=True)
        write(rows, all_models, args.timeout)
    if args.rewrite:
        write(rows, all_models, args.timeout)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
