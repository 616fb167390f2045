"""Pruning and INT8 in one deployable artifact (issue 14): ResNet-20 and VGG-16 on Fashion-MNIST, dense, SynFlow
(unstructured) and Reconvene (SynFlow criterion, `width`, `sqrt` rule) at sparsity 0.95 (and Reconvene at 0.97, to
see how far the size goes at that accuracy), each as its fp32 model.onnx
and as the INT8 copy `edgeprune quantize` makes (static, QDQ, per-channel, 256 calibration images). Per artifact:
size (raw and gzip), ONNX Runtime p50 at batch 1 / 1 thread and batch 32 / 1 thread (all artifacts of a model
timed round-robin in one pass, with the dense model quantised to S8S8 beside them), and top-1 on the test split
computed in ONNX Runtime.

    nice -n 5 python benchmarks/quantize.py            # trains 8 runs; resumable; writes results/quantize.{md,json}

Budgets as in specs/reconvene.yaml (short: they rank, they do not reach published accuracies; one seed):
ResNet-20 the first 10,000 training images of a fixed shuffle, VGG-16 5,000 (lr 0.02), 2 epochs, top-1 on 5,000
test images. Runs go to benchmarks/runs/quantize (git-ignored); finished ones are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import HERE, measured, write_results

from edgeprune import data, export, jobs, measure, quantization, runs, timing
from edgeprune.kinds import quantize as int8_kind
from edgeprune.methods import registry
from edgeprune.record import MeasureOptions, read_report
from edgeprune.train import TrainConfig

OUT = HERE / "runs" / "quantize"
DATA = {"name": "fashion-mnist", "test_subset": 5000, "batch_size": 128}
MODELS = {"resnet20": ({"subset": 10000}, 0.1), "vgg16": ({"subset": 5000}, 0.02)}  # data, learning rate
SPARSITY = 0.95
RECONVENE = {"criterion": "synflow", "conversion": "width", "width_rule": "sqrt"}
VARIANTS = {"dense": None, "synflow": ("synflow", {"sparsity": SPARSITY}),
            "reconvene": ("reconvene", {**RECONVENE, "sparsity": SPARSITY}),
            "reconvene97": ("reconvene", {**RECONVENE, "sparsity": 0.97})}  # how far the size goes at that accuracy
CALIBRATION = 256
SETTINGS = {"b1": (1, 1, 10, 20), "b32": (32, 1, 5, 4)}  # batch, threads, rounds, runs per round
TARGETS = {"size_x": 20.0, "b1_x": 3.0, "accuracy_pts": 0.5}


def fp32_run(model: str, variant: str) -> Path:
    """The finished fp32 run of `variant` (trained now unless a finished one is there; an interrupted one resumes)."""
    run_dir = OUT / f"{model}-{variant}"
    if runs.is_finished(run_dir):
        return run_dir
    data, lr = MODELS[model]
    method = VARIANTS[variant]
    cfg = jobs.RunConfig(command="train" if method is None else "prune", model=model, data={**DATA, **data},
                         train=TrainConfig(epochs=2, lr=lr, schedule="cosine"),
                         measure=MeasureOptions(runs=10, warmup=3, runtimes=("onnxruntime",), memory=False),
                         method={} if method is None else registry.entry(*method))
    jobs.run(cfg, run_dir, resume=run_dir.is_dir())
    return run_dir


def int8_run(source: Path) -> Path:
    run_dir = source.parent / f"{source.name}-int8"
    if not runs.is_finished(run_dir):
        cfg = int8_kind.config(source, "static", CALIBRATION, per_channel=True, measure_runs=10)
        jobs.run(cfg, run_dir, overwrite=True)
    return run_dir


def s8s8(model: str) -> bytes:
    """The dense model quantised as `edgeprune quantize` does, but with signed activations (S8S8, the tool's
    default): timed beside the rest, it shows why edgeprune quantises to U8S8."""
    dense = OUT / f"{model}-dense"
    bundle = data.loaders(**{**jobs.source_config(dense).data, "augment": False})
    return quantization.quantize_onnx(dense / runs.ONNX, "static", int8_kind.first_images(bundle.train, CALIBRATION),
                                per_channel=True, activations="int8")


def measure_model(model: str) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        fp32 = fp32_run(model, variant)
        int8 = int8_run(fp32)
        src, q = read_report(fp32), read_report(int8)
        for precision, run, acc in (("fp32", fp32, q.vs_source["accuracy_source_onnxruntime"]),
                                    ("int8", int8, q.profile.accuracy)):
            raw, gz = measure.file_bytes(run / runs.ONNX)
            rows.append({"model": model, "variant": variant, "precision": precision, "run": run.name,
                         "bytes": raw, "bytes_gzip": gz, "accuracy_ort": acc,
                         "accuracy_torch": src.profile.accuracy if precision == "fp32" else None,
                         "quantize_s": q.details["quantization"]["seconds"] if precision == "int8" else None})
        print(rows[-2], rows[-1], sep="\n", flush=True)
    shape = tuple(read_report(OUT / f"{model}-dense").profile.input_shape)
    signed = s8s8(model)
    raw, gz = measure.file_bytes(signed)
    rows.append({"model": model, "variant": "dense", "precision": "int8 S8S8", "run": f"{model}-dense-s8s8",
                 "bytes": raw, "bytes_gzip": gz, "accuracy_ort": None, "accuracy_torch": None, "quantize_s": None})
    files = {r["run"]: OUT / r["run"] / runs.ONNX for r in rows[:-1]} | {rows[-1]["run"]: signed}
    for key, (batch, threads, rounds, n) in SETTINGS.items():
        timed = timing.latency_onnx_interleaved({name: (f, shape) for name, f in files.items()}, batch, threads,
                                                 rounds, n)
        for r in rows:
            r[f"{key}_ms"] = timed[r["run"]].p50_ms
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Each artifact against its own fp32 model and against the unstructured fp32 counterpart (SynFlow)."""
    def find(model, variant, precision):
        return next(r for r in rows if (r["model"], r["variant"], r["precision"]) == (model, variant, precision))

    out = []
    for r in rows:
        if r["accuracy_ort"] is None:  # the S8S8 comparison: its latency is in the table above
            continue
        for against, base in (("own fp32", find(r["model"], r["variant"], "fp32")),
                              ("SynFlow fp32", find(r["model"], "synflow", "fp32"))):
            if base is r or (against == "SynFlow fp32" and not r["variant"].startswith("reconvene")):
                continue
            out.append({"model": r["model"], "run": r["run"], "against": against, "vs": base["run"],
                        "size_x": base["bytes"] / r["bytes"], "gzip_x": base["bytes_gzip"] / r["bytes_gzip"],
                        "b1_x": base["b1_ms"] / r["b1_ms"], "b32_x": base["b32_ms"] / r["b32_ms"],
                        "accuracy_pts": 100 * (r["accuracy_ort"] - base["accuracy_ort"])})
    return out


def verdicts(pairs: list[dict]) -> list[str]:
    t = TARGETS
    lines = []
    for p in pairs:
        if p["run"].endswith("-int8") and "-reconvene" in p["run"] and p["against"] == "SynFlow fp32":
            met = {"size": p["size_x"] >= t["size_x"], "speed": p["b1_x"] >= t["b1_x"],
                   "accuracy": p["accuracy_pts"] >= -t["accuracy_pts"]}
            lines.append(f"- {p['run']} (Reconvene + INT8) against the unstructured fp32 counterpart: "
                         f"{p['size_x']:.1f}× smaller (gzip {p['gzip_x']:.1f}×; target ≥ {t['size_x']:g}×: "
                         f"{'met' if met['size'] else 'missed'}), {p['b1_x']:.2f}× faster at batch 1 (target ≥ "
                         f"{t['b1_x']:g}×: {'met' if met['speed'] else 'missed'}), accuracy {p['accuracy_pts']:+.2f} "
                         f"points (target within {t['accuracy_pts']:g}: {'met' if met['accuracy'] else 'missed'}).")
    for model in dict.fromkeys(p["model"] for p in pairs):
        own = [p for p in pairs if p["model"] == model and p["against"] == "own fp32"]
        worst = min(own, key=lambda p: p["accuracy_pts"])
        ok = worst["accuracy_pts"] >= -t["accuracy_pts"]
        lines.append(f"- {model}, INT8 static against its own fp32 model: accuracy "
                     + ", ".join(f"{p['run'].removesuffix('-int8')} {p['accuracy_pts']:+.2f}" for p in own)
                     + f" points (target: loss ≤ {t['accuracy_pts']:g}: {'met' if ok else 'missed'} for all).")
    return lines


FORMAT_MODELS = ("resnet20", "vgg16")
FIXED = ("qdq", "uint8", True)  # what `edgeprune quantize --per-channel` made before issue 30


def formats(repeats: int) -> None:
    """Issue 30: `quantization.quantize(format="auto")` on freshly initialised dense ResNet-20 and VGG-16 (Fashion-MNIST
    shape, calibrated on the first 256 training images), its choice timed against the fixed QDQ U8S8
    per-channel beside it, round-robin, `repeats` passes; load average recorded. Accuracy is not measured here
    (untrained weights): the choice's agreement with fp32 on the calibration images is in the record."""
    import os
    import statistics
    import time

    import torch

    from edgeprune import models

    bundle = data.loaders("fashion-mnist", subset=1024, batch_size=128, augment=False)
    calibration = list(int8_kind.first_images(bundle.train, CALIBRATION))
    rows = []
    for name in FORMAT_MODELS:
        torch.manual_seed(0)
        fp32 = export.to_onnx_bytes(models.create(name, 10, 1).eval(), (1, 28, 28))
        load, t0 = os.getloadavg()[0], time.perf_counter()
        auto, record = quantization.quantize(fp32, "static", calibration)
        seconds = time.perf_counter() - t0
        fixed = quantization.quantize_onnx(fp32, "static", calibration, per_channel=FIXED[2], activations=FIXED[1],
                                     format=FIXED[0])
        passes = []
        for _ in range(repeats):
            timed = timing.latency_onnx_interleaved({"auto": (auto, (1, 28, 28)), "fixed": (fixed, (1, 28, 28)),
                                                      "fp32": (fp32, (1, 28, 28))}, 1, 1, rounds=10, runs=20)
            passes.append({k: v.p50_ms for k, v in timed.items()} | {"load": os.getloadavg()[0]})
        med = {k: statistics.median(p[k] for p in passes) for k in ("auto", "fixed", "fp32")}
        rows.append({"model": name, "record": record, "quantize_s": seconds, "load_before": load, "passes": passes,
                     "median_ms": med, "auto_same_as_fixed": auto == fixed})
        print(rows[-1], flush=True)
    env = measure.environment()
    lines = ["# INT8 format chosen per model (issue 30)", "",
             measured("quantize.py", env, "torch", "onnxruntime") + ". Command: `PYTHONPATH=src nice -n 5 python "
             f"benchmarks/quantize.py --formats --repeats {repeats}`. Dense, freshly initialised models at the "
             "Fashion-MNIST shape (1×28×28), calibrated on the first 256 training images. `quantization.quantize` "
             "(format auto) makes every candidate from one calibration, times them (ONNX Runtime, batch 1, 1 "
             "thread, round-robin) and keeps the fastest whose top-1 agreement with fp32 on the calibration "
             "images is within 0.5 points of the best. Then its choice, the fixed QDQ U8S8 per-channel (what "
             "`edgeprune quantize --per-channel` made before) and fp32 are timed round-robin in "
             f"{repeats} passes of 10 rounds × 20 runs; medians of the passes' p50.", "",
             f"CPU features: {rows[0]['record']['cpu']}", "",
             "| model | candidate | p50 at choice (ms) | top-1 agreement with fp32 | chosen |", "|---|---|---|---|---|"]
    for r in rows:
        chosen = r["record"]["chosen"]
        lines += [f"| {r['model']} | {c['candidate']} | {c['ort_b1_t1_p50_ms']:.3f} | "
                  f"{100 * c['top1_agreement_with_fp32']:.1f} % | {'**yes**' if c['candidate'] == chosen else ''} |"
                  for c in r["record"]["candidates"]]
    lines += ["", "| model | chosen | auto p50 (ms) | fixed U8S8 per-channel p50 (ms) | fp32 p50 (ms) | fixed ÷ auto | "
              "load (1 min) | quantise auto (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["median_ms"]
        loads = [p["load"] for p in r["passes"]] + [r["load_before"]]
        lines.append(f"| {r['model']} | {r['record']['chosen']} | {m['auto']:.3f} | {m['fixed']:.3f} | "
                     f"{m['fp32']:.3f} | {m['fixed'] / m['auto']:.2f}× | {min(loads):.1f}–{max(loads):.1f} | "
                     f"{r['quantize_s']:.1f} |")
    write_results("quantize_formats", lines, {"environment": env, "rows": rows})


SIZE_SPARSITIES = (0.95, 0.97)


def sizes(configs: list[tuple[float, str]], earlier: Path | None) -> None:
    """Issue 30: how the size of VGG-16 Reconvene (SynFlow-100, `width`, `sqrt`) follows the sparsity with the PSE's
    `reference="global"` (default) and `"all"`: parameters, model.onnx fp32 and INT8 (auto format) against the
    unstructured SynFlow fp32 model.onnx (dense-shaped, the same at every sparsity). Fresh models, no training:
    sizes only, no accuracy."""
    import os

    import torch

    from edgeprune import models
    from edgeprune.methods.reconvene import ReconveneOptions, reconvene

    shape = (1, 28, 28)
    bundle = data.loaders("fashion-mnist", subset=1024, batch_size=128, augment=False)
    calibration = list(int8_kind.first_images(bundle.train, CALIBRATION))
    torch.manual_seed(0)
    synflow_bytes = len(export.to_onnx_bytes(models.create("vgg16", 10, 1), shape))
    rows = json.loads(earlier.read_text()) if earlier else []  # rows a cut-short run printed
    for sparsity, reference in configs:
        torch.manual_seed(0)
        model = models.create("vgg16", 10, 1)
        info = reconvene(model, ReconveneOptions(criterion="synflow", sparsity=sparsity, reference=reference,
                                                 **{k: v for k, v in RECONVENE.items() if k != "criterion"}),
                         None, shape, progress=False)
        fp32 = export.to_onnx_bytes(model.eval(), shape)
        int8, record = quantization.quantize(fp32, "static", calibration)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"sparsity": sparsity, "reference": reference, "params": params, "fp32_bytes": len(fp32),
                     "int8_bytes": len(int8), "int8_format": record["chosen"], "load": os.getloadavg()[0],
                     "converted": sum(not g["sensitive"] for g in info["groups"]), "groups": len(info["groups"]),
                     "widths": [g["width_after"] for g in info["groups"]]})
        print(json.dumps(rows[-1]), flush=True)
    env = measure.environment()
    lines = ["# Reconvene's size past 0.95: reference global against all (issue 30)", "",
             measured("quantize.py", env, "torch", "onnxruntime") + ". Command: `PYTHONPATH=src nice -n 5 python "
             "benchmarks/quantize.py --sizes`. VGG-16 at 1×28×28, freshly initialised, Reconvene with SynFlow-100, "
             "`width`, `sqrt`; INT8 by `quantization.quantize` (format auto, 256 Fashion-MNIST calibration images). "
             f"Against the unstructured SynFlow fp32 model.onnx ({synflow_bytes / 2**20:.2f} MiB: its zeros are "
             "stored). No training: sizes only.", "",
             "| sparsity | reference | converted layers | widths after | parameters (M) | fp32 MiB | "
             "INT8 MiB (format) | SynFlow fp32 ÷ INT8 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sparsity']} | {r['reference']} | {r['converted']} of {r['groups']} | "
              f"{', '.join(map(str, r['widths']))} | {r['params'] / 1e6:.3f} | {r['fp32_bytes'] / 2**20:.2f} | "
              f"{r['int8_bytes'] / 2**20:.2f} ({r['int8_format']}) | {synflow_bytes / r['int8_bytes']:.1f}× |"
              for r in rows]
    write_results("quantize_sizes", lines, {"environment": env, "synflow_fp32_bytes": synflow_bytes, "rows": rows})


HEADLINE = {"synflow": VARIANTS["synflow"],
            "reconvene_all": ("reconvene", {**RECONVENE, "sparsity": SPARSITY, "reference": "all"})}
HEADLINE_TARGETS = {"size_x": 20.0, "b1_x": 10.0, "accuracy_pts": 0.5}


def headline(repeats: int) -> None:
    """Issue 30's acceptance: VGG-16 Reconvene (reference `all`, so every layer narrows) + INT8 with the format
    chosen on this machine, against SynFlow fp32 at the same sparsity, trained as the main table trains them
    (Fashion-MNIST, 5,000 images, 2 epochs). Size, ONNX Runtime batch-1 p50 (the artifacts and the same model
    quantised to the fixed QDQ U8S8 per-channel timed round-robin, `repeats` passes, medians) and top-1 on 5,000
    test images."""
    import os
    import statistics

    VARIANTS.update(HEADLINE)
    synflow, recon = fp32_run("vgg16", "synflow"), fp32_run("vgg16", "reconvene_all")
    int8_dir = recon.parent / f"{recon.name}-int8-auto"
    if not runs.is_finished(int8_dir):
        jobs.run(int8_kind.config(recon, "static", CALIBRATION, per_channel=False, measure_runs=10), int8_dir,
                 overwrite=True)
    q = read_report(int8_dir)
    record = q.details["quantization"]
    bundle = data.loaders(**{**jobs.source_config(recon).data, "augment": False})
    fixed = quantization.quantize_onnx(recon / runs.ONNX, "static", int8_kind.first_images(bundle.train, CALIBRATION),
                                       per_channel=FIXED[2], activations=FIXED[1], format=FIXED[0])
    shape = tuple(q.profile.input_shape)
    files = {"synflow fp32": synflow / runs.ONNX, "reconvene all fp32": recon / runs.ONNX,
             "reconvene all INT8 (auto)": int8_dir / runs.ONNX, "reconvene all INT8 (fixed U8S8)": fixed}
    passes = []
    for _ in range(repeats):
        timed = timing.latency_onnx_interleaved({k: (f, shape) for k, f in files.items()}, 1, 1, rounds=10, runs=20)
        passes.append({k: v.p50_ms for k, v in timed.items()} | {"load": os.getloadavg()[0]})
    med = {k: statistics.median(p[k] for p in passes) for k in files}
    size = {k: len(f) if isinstance(f, bytes) else f.stat().st_size for k, f in files.items()}
    acc = {"synflow fp32": read_report(synflow).profile.accuracy, "reconvene all fp32":
           q.vs_source["accuracy_source_onnxruntime"], "reconvene all INT8 (auto)": q.profile.accuracy}
    best, base = "reconvene all INT8 (auto)", "synflow fp32"
    got = {"size_x": size[base] / size[best], "b1_x": med[base] / med[best],
           "accuracy_pts": 100 * (acc[best] - acc[base]), "auto_vs_fixed_x": med["reconvene all INT8 (fixed U8S8)"]
           / med[best]}
    t = HEADLINE_TARGETS
    env = measure.environment()
    loads = [p["load"] for p in passes]
    lines = ["# Reconvene + INT8 against SynFlow fp32 on VGG-16 (issue 30's acceptance)", "",
             measured("quantize.py", env, "torch", "onnxruntime") + ". Command: `PYTHONPATH=src nice -n 5 python "
             f"benchmarks/quantize.py --headline --repeats {repeats}`. VGG-16, Fashion-MNIST (real), trained as "
             "`results/quantize.md` trains it (5,000 images, 2 epochs, lr 0.02, cosine; one seed: accuracies rank, "
             f"about a point is noise). SynFlow-100 unstructured at {SPARSITY}; Reconvene (SynFlow criterion, "
             f"`width`, `sqrt`, reference `all`) at {SPARSITY}, then `edgeprune quantize` with the format chosen on "
             f"this machine: **{record.get('chosen')}**. Batch-1 ONNX Runtime p50, 1 thread, the four artifacts "
             f"round-robin in {repeats} passes of 10 rounds × 20 runs, medians; load (1 min) "
             f"{min(loads):.1f}–{max(loads):.1f} on 2 cores. Top-1 on 5,000 test images in ONNX Runtime.", "",
             "| artifact | model.onnx (MiB) | b1 p50 (ms) | top-1 (%) |", "|---|---|---|---|"]
    lines += [f"| {k} | {size[k] / 2**20:.3f} | {med[k]:.3f} | "
              + ("—" if k not in acc else f"{100 * acc[k]:.2f}") + " |" for k in files]
    lines += ["", f"- {got['size_x']:.1f}× smaller than SynFlow fp32 (target ≥ {t['size_x']:g}×: "
              f"{'met' if got['size_x'] >= t['size_x'] else 'missed'})",
              f"- {got['b1_x']:.1f}× faster at batch 1 (target ≥ {t['b1_x']:g}×: "
              f"{'met' if got['b1_x'] >= t['b1_x'] else 'missed'})",
              f"- accuracy {got['accuracy_pts']:+.2f} points (target within {t['accuracy_pts']:g}: "
              f"{'met' if got['accuracy_pts'] >= -t['accuracy_pts'] else 'missed'})",
              (f"- the chosen format ({record.get('chosen')}) against the fixed QDQ U8S8 per-channel on the same "
               f"model: {got['auto_vs_fixed_x']:.2f}× faster (target > 1×: "
               f"{'met' if got['auto_vs_fixed_x'] > 1 else 'missed'})" if record.get("chosen") != "QDQ U8S8 per-channel"
               else f"- the format chosen is the fixed one itself ({record.get('chosen_by')}; the six candidates "
               f"timed {min(c['ort_b1_t1_p50_ms'] for c in record['candidates']):.3f}–"
               f"{max(c['ort_b1_t1_p50_ms'] for c in record['candidates']):.3f} ms): the two copies timed above "
               f"are the same model, {got['auto_vs_fixed_x']:.2f}× apart by noise. Where the formats differ, on "
               "dense VGG-16, auto's choice is faster than the fixed one: `results/quantize_formats.md`")]
    write_results("quantize_headline", lines, {"environment": env, "passes": passes, "median_ms": med,
                                               "bytes": size, "accuracy": acc, "ratios": got, "record": record})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--formats", action="store_true", help="issue 30: the INT8 format auto chooses, timed against "
                        "the fixed U8S8 per-channel (fresh dense models; no training)")
    parser.add_argument("--repeats", type=int, default=3, help="with --formats: timing passes")
    parser.add_argument("--sizes", action="store_true", help="issue 30: VGG-16 Reconvene's size with reference "
                        "global and all at 0.95 and 0.97 (fresh models; no training)")
    parser.add_argument("--size-configs", help="with --sizes: sparsity:reference pairs",
                        default=",".join(f"{s}:{r}" for s in SIZE_SPARSITIES for r in ("global", "all")))
    parser.add_argument("--size-rows", type=Path, help="with --sizes: a JSON list of rows measured earlier")
    parser.add_argument("--headline", action="store_true", help="issue 30's acceptance: VGG-16 Reconvene (reference "
                        "all) + INT8 (format auto) against SynFlow fp32, trained (Fashion-MNIST, short)")
    args = parser.parse_args()
    if args.headline:
        headline(args.repeats)
        return
    if args.formats:
        formats(args.repeats)
        return
    if args.sizes:
        sizes([(float(c.split(":")[0]), c.split(":")[1]) for c in args.size_configs.split(",") if c], args.size_rows)
        return
    rows = [r for m in args.models.split(",") for r in measure_model(m)]
    pairs = ratios(rows)
    env = measure.environment()
    b1, b32 = SETTINGS["b1"], SETTINGS["b32"]
    lines = ["# Pruning + INT8 in one artifact (ResNet-20, VGG-16, Fashion-MNIST)", "",
             measured("quantize.py", env, "torch", "onnxruntime") + ". "
             f"Each fp32 run (dense; SynFlow unstructured at sparsity {SPARSITY}; Reconvene, SynFlow criterion, "
             f"`width` with the `sqrt` rule, at {SPARSITY} and at 0.97 (`reconvene97`)) and its INT8 copy made by "
             "`edgeprune quantize --mode "
             f"static --per-channel --calibration {CALIBRATION}` (onnxruntime.quantization: pre-processing, then "
             "QDQ with signed 8-bit weights and unsigned 8-bit activations (U8S8), MinMax calibration on the first 256 "
             "training images). The `int8 S8S8` row is the dense model quantised the same way but with signed "
             "activations (the tool's default), timed in the same pass: why edgeprune uses U8S8 on x86-64. "
             "Size: the model.onnx file, raw and gzip. Latency: ONNX Runtime CPU p50, the nine artifacts of a model "
             f"timed round-robin in one pass ({b1[2]} rounds × {b1[3]} runs at batch 1, {b32[2]} × {b32[3]} at "
             "batch 32, 1 thread). Accuracy: top-1 on 5,000 test images computed in ONNX Runtime from the "
             "artifact; PyTorch's figure beside it for the fp32 models. Training is short (ResNet-20: 10,000 "
             "images, VGG-16: 5,000, lr 0.02; 2 epochs; one seed), so accuracies rank the variants and differences "
             "of about a point between runs are noise; INT8 vs its own fp32 model is the same weights, so that "
             "difference is the quantisation's alone.", "",
             "| model | variant | precision | model.onnx (MiB) | gzip (MiB) | ORT b1 t1 p50 (ms) | ORT b32 t1 p50 (ms) "
             "| top-1 ORT (%) | top-1 PyTorch (%) | quantise (s) |", "|" + "---|" * 10]
    lines += [f"| {r['model']} | {r['variant']} | {r['precision']} | {r['bytes'] / 2**20:.3f} | "
              f"{r['bytes_gzip'] / 2**20:.3f} | {r['b1_ms']:.3f} | {r['b32_ms']:.2f} | "
              + ("—" if r["accuracy_ort"] is None else f"{100 * r['accuracy_ort']:.2f}") + " | "
              + ("—" if r["accuracy_torch"] is None else f"{100 * r['accuracy_torch']:.2f}") + " | "
              + ("—" if r["quantize_s"] is None else f"{r['quantize_s']:.1f}") + " |" for r in rows]
    lines += ["", "Ratios (×: the reference / the artifact, higher is better; accuracy Δ: artifact − reference, "
              "points, both in ONNX Runtime):", "",
              "| model | artifact | against | size × | gzip × | b1 speed-up × | b32 speed-up × | accuracy Δ (pts) |",
              "|" + "---|" * 8]
    lines += [f"| {p['model']} | {p['run']} | {p['vs']} | {p['size_x']:.2f} | {p['gzip_x']:.2f} | {p['b1_x']:.2f} | "
              f"{p['b32_x']:.2f} | {p['accuracy_pts']:+.2f} |" for p in pairs]
    lines += ["", "Targets (issue 14):", "", *verdicts(pairs)]
    write_results("quantize", lines, {"environment": env, "rows": rows, "ratios": pairs, "targets": TARGETS})


if __name__ == "__main__":
    main()
