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
from pathlib import Path

from common import HERE, measured, write_results

from edgeprune import data, export, jobs, measure, runs
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
    jobs.JOBS[cfg.command](cfg, run_dir, resume=run_dir.is_dir())
    return run_dir


def int8_run(source: Path) -> Path:
    run_dir = source.parent / f"{source.name}-int8"
    if not runs.is_finished(run_dir):
        cfg = jobs.quantize_config(source, "static", CALIBRATION, per_channel=True, measure_runs=10)
        jobs.quantize(cfg, run_dir, overwrite=True)
    return run_dir


def s8s8(model: str) -> bytes:
    """The dense model quantised as `edgeprune quantize` does, but with signed activations (S8S8, the tool's
    default): timed beside the rest, it shows why edgeprune quantises to U8S8."""
    dense = OUT / f"{model}-dense"
    bundle = data.loaders(**{**jobs.source_config(dense).data, "augment": False})
    return export.quantize_onnx(dense / runs.ONNX, "static", jobs.first_images(bundle.train, CALIBRATION),
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
        timed = measure.latency_onnx_interleaved({name: (f, shape) for name, f in files.items()}, batch, threads,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    args = parser.parse_args()
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
