"""How much faster Reconvene's narrow models run than their masked counterparts, measured before any training
(issue 27, table 3's headline: on VGG-16, >= 10x smaller and >= 2x faster on ONNX Runtime at batch 1 than the
SNIP/SynFlow masks at the same sparsity).

A model's latency on ONNX Runtime's dense kernels depends on its shapes, not on its weights' values, and
Reconvene fixes the shapes at initialisation: so the speed half of the headline can be timed now, on the models
`reconvene_shapes.py` builds (the sweep's cells: SynFlow and SNIP, width rule sqrt, both references, seed 0). The
masked counterpart keeps the dense shapes, and ONNX Runtime runs its zeros through the same dense kernels, so it
is timed as the dense model. Each Reconvene model is timed round-robin against it in one interleaved pass per
setting (`timing.latency_onnx_interleaved`), so each ratio is taken under the same load. Pairs, not one pass over
all thirteen models: in one pass, ResNet-20's narrow models timed up to a fifth slower at batch 1 than beside their
dense counterpart alone (1.34x instead of the trained pair's 1.72x, measured 2026-12-08). The trained ResNet-20 pair of
`results/cifar10/pai/` (1.29x at batch 1) checks that the untrained shapes predict the trained model's speed.

Run it on quiet cores (stop the sweeps first):
    PYTHONPATH=src python benchmarks/reconvene_speed.py       # -> results/cifar10/reconvene_speed.md
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os

import torch
from common import RESULTS, measured, write_results
from reconvene_shapes import build

from edgeprune import data, measure, timing
from edgeprune.export import to_onnx_bytes
from edgeprune.measure import environment
from edgeprune.models import create

CRITERIA = ("synflow", "snip")  # the headline's two
REFERENCES = ("global", "all")
SPARSITIES = (0.9, 0.95, 0.98)
SETTINGS = ((1, 1), (32, 2))  # (batch, threads), as the sweeps' reports retime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    ap.add_argument("--data", default="cifar10", help="data for SNIP's scores (default cifar10)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = data.loaders(args.data, batch_size=128)
    shape = bundle.input_shape
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        models = {"dense": (create(name, bundle.num_classes, bundle.in_channels), None)}
        for reference, criterion, sparsity in itertools.product(REFERENCES, CRITERIA, SPARSITIES):
            key = f"{criterion} {sparsity:g} {reference}"
            models[key] = (build(name, bundle, criterion, reference, "sqrt", sparsity),
                           (criterion, reference, sparsity))
            print("built", name, key, flush=True)
        onnx = {k: (to_onnx_bytes(m, shape), shape) for k, (m, _) in models.items()}
        p0, m0 = measure.count_params(models["dense"][0])[0], measure.count_macs(models["dense"][0], shape)[0]
        for key, (model, cell) in models.items():
            if cell is None:
                continue
            row = {"model": name, "criterion": cell[0], "reference": cell[1], "sparsity": cell[2],
                   "params_x": p0 / measure.count_params(model)[0], "macs_x": m0 / measure.count_macs(model, shape)[0]}
            for batch, threads in SETTINGS:  # each pair on its own, as a report times a pair
                lat = timing.latency_onnx_interleaved({"dense": onnx["dense"], key: onnx[key]}, batch, threads,
                                                      args.rounds, args.runs)
                row[f"p50_ms_b{batch}t{threads}"] = lat[key].p50_ms
                row[f"dense_p50_ms_b{batch}t{threads}"] = lat["dense"].p50_ms
                row[f"speed_x_b{batch}t{threads}"] = lat["dense"].p50_ms / lat[key].p50_ms
            print("timed", name, key, flush=True)
            rows.append(row)
    payload = {"environment": environment(), "load_average": os.getloadavg(), "data": bundle.name,
               "data_copy": bundle.copy, "rounds": args.rounds, "runs": args.runs, "rows": rows}
    write_results("cifar10/reconvene_speed", report(payload), payload)


NARROWED = {"global": "sparser than the sparsity (default)", "all": "all (reference: all)"}


def report(p: dict) -> list[str]:
    trained = trained_pairs()
    lines = ["# Reconvene against its masks, timed before training: the headline's speed half", "",
             f"{measured('reconvene_speed.py', p['environment'], 'torch', 'onnxruntime', load=p['load_average'])}. "
             f"ONNX Runtime p50 latency, each Reconvene model timed round-robin with the dense model "
             f"in a pass of its own per setting ({p['rounds']} rounds × {p['runs']} calls each; the dense p50 in the "
             "headings is the first pair's). The models are the sweep's Reconvene "
             f"cells at initialisation (width rule sqrt, seed 0; SNIP scored on {p['data']}, "
             f"{p.get('data_copy') or 'official files'}): Reconvene fixes the shapes before training, and latency "
             "on dense kernels depends on the shapes only. The masked counterpart at the same sparsity keeps the "
             "dense shapes and runs its zeros through the same kernels, so it is timed as the dense model. "
             "`speed ×`: the masks' p50 over Reconvene's. The headline (issue 27) asks ≥ 10× smaller and ≥ 2× "
             "faster at batch 1 on VGG-16; accuracy waits for the trained cells. `trained pair`: the same cell "
             "after training, against its trained masks (`pai/pairs.csv`, retimed side by side there), where one "
             "has finished: the check that the shapes predict the trained models' speed.", ""]
    for model in dict.fromkeys(r["model"] for r in p["rows"]):
        rows = [r for r in p["rows"] if r["model"] == model]
        lines += [f"## {model}: the masks (dense shapes) at {rows[0]['dense_p50_ms_b1t1']:.2f} ms at batch 1 on 1 "
                  f"thread, {rows[0]['dense_p50_ms_b32t2']:.1f} ms at batch 32 on 2 threads", "",
                  "| layers narrowed | criterion | sparsity | params × | MACs × | speed × batch 1, 1 thread | "
                  "speed × batch 32, 2 threads | trained pair, speed × (batch 1 / 32) | ≥ 10× smaller and ≥ 2× faster "
                  "|", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            meet = "yes" if r["params_x"] >= 10 and r["speed_x_b1t1"] >= 2 else "no"
            pair = trained.get(cell_name(r))
            seen = "—" if pair is None else (f"{float(pair['latency_x_b1_t1']):.2f} / "
                                             f"{float(pair['latency_x_b32_t2']):.2f}")
            lines.append(f"| {NARROWED[r['reference']]} | {r['criterion']} | {r['sparsity']:g} | "
                         f"{r['params_x']:.1f} | {r['macs_x']:.2f} | {r['speed_x_b1t1']:.2f} | "
                         f"{r['speed_x_b32t2']:.2f} | {seen} | {meet} |")
        lines.append("")
    return lines


def cell_name(r: dict) -> str:
    """The cifar10_pai sweep's name for this Reconvene cell."""
    reference = "reference=all-" if r["reference"] == "all" else ""
    return f"{r['model']}-reconvene-{r['criterion']}-width-{reference}width_rule=sqrt-{r['sparsity']:g}-seed0"


def trained_pairs() -> dict[str, dict]:
    """The trained pairs of results/cifar10/pai/pairs.csv (retimed side by side), by Reconvene run."""
    path = RESULTS / "cifar10" / "pai" / "pairs.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f) if row["precision"] == "fp32 vs fp32"}


if __name__ == "__main__":
    main()
