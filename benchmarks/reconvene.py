"""Reconvene vs unstructured pruning at initialisation, and DNNShifter's shrink of IMP levels, on
Fashion-MNIST (real data). The question: how much smaller and faster does structure make a pruned model,
at what accuracy, and how much of the MACs saving reaches ONNX Runtime?

    python benchmarks/reconvene.py            # ResNet-20 and VGG-16 (about an hour on 2 cores)
    python benchmarks/reconvene.py --models resnet20

Every cell is an edgeprune run under benchmarks/runs/<model>/ (see common.py); results go to
benchmarks/results/reconvene.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time

from common import IMP, RESULTS, RUNS, budget_text, cell, p50, remeasure

from edgeprune import jobs, measure

CRITERIA = ("magnitude", "snip", "synflow")
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
# (conversion, width rule): the paper's reconstruction, its parameter-preserving variant, dead channels only
CONVERSIONS = (("width", "channels"), ("width", "sqrt"), ("dead", "channels"))


def summary(report: dict) -> dict:
    p = measure.Profile.from_dict(report["profile"])
    return {"run": report["run"], "accuracy": p.accuracy, "params": p.params, "nonzero": p.nonzero_params,
            "bytes": p.bytes_fp32, "bytes_gzip": p.bytes_gzip, "macs": p.macs, "effective_macs": p.effective_macs,
            "ort_b1_t1_ms": p50(report, 1, 1), "ort_b32_t2_ms": p50(report, 32, 2),
            "prune_s": report.get("prune_seconds", 0.0)}


def retime(model: str, rows: list[dict]) -> None:
    """Replace each row's latencies with a round-robin re-measurement of all of them in one pass."""
    shape = tuple(json.loads((RUNS / model / "dense" / "report.json").read_text())["profile"]["input_shape"])
    fresh = remeasure(model, [r["run"] for r in rows], shape)
    for r in rows:
        r["ort_b1_t1_ms"], r["ort_b32_t2_ms"] = fresh[r["run"]][(1, 1)], fresh[r["run"]][(32, 2)]
    by_run = {(r["criterion"], r["sparsity"]): r for r in rows if r["method"] == "unstructured"}
    for r in rows:
        if "vs_unstructured" in r:
            r["vs_unstructured"] = versus(r, by_run[(r["criterion"], r["sparsity"])])


def versus(rec: dict, upai: dict) -> dict:
    """Reconvene relative to its unstructured counterpart (same criterion and sparsity)."""
    lat = upai["ort_b1_t1_ms"] / rec["ort_b1_t1_ms"]
    macs = upai["macs"] / rec["macs"]  # the unstructured model runs every dense MAC
    return {"size_x": upai["bytes"] / rec["bytes"], "params_x": upai["params"] / rec["params"],
            "latency_x_b1": lat, "latency_x_b32": upai["ort_b32_t2_ms"] / rec["ort_b32_t2_ms"],
            "accuracy_delta": rec["accuracy"] - upai["accuracy"], "speedup_efficiency": lat / macs}


def grid(model: str, criteria=CRITERIA, sparsities=SPARSITIES, report_only: bool = False) -> list[dict]:
    """The rows of `model`'s grid; with `report_only`, only the cells that have finished (nothing is run)."""
    def get(name: str, method: dict | None = None) -> dict | None:
        if report_only and not (RUNS / model / name / "report.json").exists():
            return None
        return summary(cell(model, name, method))

    rows = []
    if dense := get("dense"):
        rows.append({"model": model, "method": "dense", "criterion": "-", "sparsity": 0.0, **dense})
    for crit in criteria:
        for s in sparsities:
            if not (upai := get(f"{crit}-{s}", {"name": crit, "sparsity": s})):
                continue
            rows.append({"model": model, "method": "unstructured", "criterion": crit, "sparsity": s, **upai})
            for conv, rule in CONVERSIONS:
                label = conv if rule == "channels" else f"{conv}-{rule}"
                rec = get(f"reconvene-{crit}-{label}-{s}", {"name": "reconvene", "criterion": crit,
                                                             "conversion": conv, "width_rule": rule, "sparsity": s})
                if rec:
                    rows.append({"model": model, "method": f"reconvene-{label}", "criterion": crit, "sparsity": s,
                                 **rec, "vs_unstructured": versus(rec, upai)})
    return rows


def shrink_imp(model: str) -> list[dict]:
    imp = cell(model, "imp", IMP)
    out = []
    for lv in imp["levels"][1:]:
        level = RUNS / model / "imp" / f"level_{lv['level']:02d}"
        target = RUNS / model / f"imp-shrunk-{lv['level']:02d}"
        report = (json.loads((target / "report.json").read_text()) if (target / "report.json").exists()
                  else jobs.shrink(jobs.shrink_config(level), target, overwrite=True, progress=False))
        sparse = json.loads((level / "report.json").read_text())
        out.append({"model": model, "level": lv["level"], "density": lv["density"],
                    "accuracy": report["profile"]["accuracy"], "max_abs_error": report["max_abs_error"],
                    "shrink_s": report["shrink_seconds"], **report["vs_source"],
                    "ort_b32_speedup": p50(sparse, 32, 2) / p50(report, 32, 2)})
    return out


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | method | criterion | sparsity | top-1 % | params | non-zero | fp32 KiB | gzip KiB | MACs M "
             "(dense / eff.) | ORT b1 t1 ms | ORT b32 t2 ms | prune s | vs unstructured: size × / latency × b1 / "
             "b32 / Δ top-1 / speed-up eff. |", "|" + "---|" * 14]
    for r in rows:
        v = r.get("vs_unstructured")
        vs = (f"{v['size_x']:.2f}× / {v['latency_x_b1']:.2f}× / {v['latency_x_b32']:.2f}× / "
              f"{100 * v['accuracy_delta']:+.2f} / {v['speedup_efficiency']:.2f}") if v else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['criterion']} | {r['sparsity']} | {100 * r['accuracy']:.2f} "
                     f"| {r['params']:,} | {r['nonzero']:,} | {r['bytes'] / 1024:.0f} | {r['bytes_gzip'] / 1024:.0f} | "
                     f"{r['macs'] / 1e6:.1f} / {r['effective_macs'] / 1e6:.1f} | {r['ort_b1_t1_ms']:.3f} | "
                     f"{r['ort_b32_t2_ms']:.2f} | {r['prune_s']:.2f} | {vs} |")
    return lines


def headline(rows: list[dict]) -> list[str]:
    """Best size and latency gains of Reconvene at no accuracy loss (≤ 0.5 points) vs its counterpart."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rec = [r for r in rows if r["model"] == model and "vs_unstructured" in r]
        fair = [r for r in rec if r["vs_unstructured"]["accuracy_delta"] >= -0.005]
        if not fair:
            out.append(f"- {model}: no Reconvene row within 0.5 points of its unstructured counterpart.")
            continue
        big = max(fair, key=lambda r: r["vs_unstructured"]["size_x"])
        fast = max(fair, key=lambda r: r["vs_unstructured"]["latency_x_b1"])
        out.append(f"- {model}: up to {big['vs_unstructured']['size_x']:.2f}× smaller ({big['method']}, "
                   f"{big['criterion']}, {big['sparsity']}) and up to "
                   f"{fast['vs_unstructured']['latency_x_b1']:.2f}× faster at batch 1 "
                   f"({fast['method']}, {fast['criterion']}, {fast['sparsity']}) than unstructured PaI, within 0.5 "
                   f"points of its accuracy ({len(fair)} of {len(rec)} Reconvene rows qualify).")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    ap.add_argument("--report-only", action="store_true", help="tabulate the finished cells of the full grid; run none")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not args.report_only:  # run what was asked for
        for m in args.models:
            grid(m, args.criteria, args.sparsities)
    rows = []
    for m in args.models:
        model_rows = grid(m, report_only=True)
        if model_rows:
            retime(m, model_rows)
        rows += model_rows
    shrunk = shrink_imp("resnet20") if "resnet20" in args.models and not args.report_only or (
        RUNS / "resnet20" / "imp" / "report.json").exists() else []
    env = measure.environment()
    lines = [
        "# Reconvene vs unstructured pruning at initialisation (Fashion-MNIST)", "",
        f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/reconvene.py` on {env['cpu_count']} CPU cores, torch "
        f"{env['torch']}, onnxruntime {env['onnxruntime']}; {time.perf_counter() - t0:.0f} s for this invocation "
        "(finished cells are reused).", "",
        "Cells run: every row below (the full grid is 3 criteria × 4 sparsities × unstructured/3 conversions per "
        "model; rows missing for a model were not run in the time available).", "",
        "Budgets (the same for every row of a model): " + "; ".join(budget_text(m) for m in args.models) + ". "
        "These short budgets rank methods; they are far from fully trained accuracies, and one seed per cell "
        "means differences of about a point are noise.", "",
        "Latency: ONNX Runtime CPU p50, batch 1 with 1 thread and batch 32 with 2 threads, re-measured for all "
        "cells of a model in one round-robin pass at the end (6 rounds × 10 timed runs per cell, after warm-up), "
        "so the ratios between rows are taken under the same conditions; absolute times depend on the machine. "
        "Size: the fp32 state_dict "
        "(what a runtime loads; an unstructured model stores its zeros) and the same gzip-compressed. "
        "Speed-up efficiency = latency ratio / dense-MACs ratio against the unstructured model, which executes "
        "every dense MAC.", "", "## Headline", "", *headline(rows), "",
        "Published claim (Reconvene, CIFAR-10/Tiny ImageNet): up to 16.21× smaller and 2× faster than unstructured "
        "PaI at equal accuracy.", "", "## All rows", "", *table(rows), "",
    ]
    if shrunk:
        lines += ["## DNNShifter: shrinking IMP levels (ResNet-20, 50 % of the remaining weights per level, rewind to "
                  "iteration 20)", "", "| level | density | top-1 % | params × smaller | fp32 × smaller | ORT b1 "
                  "speed-up | ORT b32 speed-up | max output difference | shrink s |", "|" + "---|" * 9]
        lines += [f"| {r['level']} | {r['density']:.4f} | {100 * r['accuracy']:.2f} | {r['params_x_smaller']:.2f} | "
                  f"{r['bytes_x_smaller']:.2f} | {r['ort_b1_speedup']:.2f} | {r['ort_b32_speedup']:.2f} | "
                  f"{r['max_abs_error']:.1e} | {r['shrink_s']:.2f} |" for r in shrunk]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "reconvene.md").write_text(text)
    (RESULTS / "reconvene.json").write_text(json.dumps({"environment": env, "rows": rows, "dnnshifter": shrunk},
                                                       indent=2))


if __name__ == "__main__":
    main()
