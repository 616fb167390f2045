"""Does `--target-latency` land on its budget? For ResNet-20 and VGG-16 (Fashion-MNIST shape, 1×28×28)
at batch 1, 1 thread: measure the dense model's ONNX Runtime p50, ask Reconvene (magnitude criterion) for a
fraction of it, and re-measure the chosen model independently afterwards (a fresh export and session).

    python benchmarks/budget.py        # a few minutes; writes results/budget.{md,json}

No training is involved (latency does not depend on trained weights); inputs are synthetic tensors.
"""

from __future__ import annotations

import time

from common import measured, write_results

from edgeprune import budget, data, export, jobs, measure, timing
from edgeprune.errors import ConfigError
from edgeprune.methods.reconvene import ReconveneOptions

FRACTIONS = {"resnet20": (0.95, 0.85, 0.75), "vgg16": (0.8, 0.6, 0.4)}  # of the dense latency


def onnx_of(model, shape) -> bytes:
    return export.to_onnx_bytes(model, shape, check=False)


def ort_p50(onnx: bytes, shape) -> float:
    return timing.latency_onnx(onnx, shape, 1, 1, runs=100, warmup=10).p50_ms


def main() -> None:
    rows = []
    for model_name in ("resnet20", "vgg16"):
        cfg = jobs.RunConfig(command="prune", model=model_name,
                             data={"name": "synthetic", "shape": (1, 28, 28), "num_classes": 10, "size": 128})
        bundle = data.loaders(**cfg.data)
        dense_onnx = onnx_of(jobs.fresh_model(cfg, bundle), bundle.input_shape)
        dense_ms = ort_p50(dense_onnx, bundle.input_shape)
        for f in FRACTIONS[model_name]:
            target = budget.Target("latency", dense_ms * f)
            opts = ReconveneOptions(criterion="magnitude")
            t0 = time.perf_counter()
            try:
                found = jobs.search_budget(cfg, opts, bundle, target, progress=False)
            except ConfigError as e:  # an unreachable budget is a result too
                rows.append({"model": model_name, "dense_ms": dense_ms, "fraction": f, "budget_ms": target.value,
                             "unreachable": str(e)})
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - t0
            chosen = jobs.fresh_model(cfg, bundle)
            jobs.prune_at_init(chosen, "reconvene", ReconveneOptions(criterion="magnitude", sparsity=found.sparsity),
                               bundle)
            chosen_onnx = onnx_of(chosen, bundle.input_shape)
            again = ort_p50(chosen_onnx, bundle.input_shape)
            ratio = timing.latency_ratio_onnx({"chosen": (chosen_onnx, bundle.input_shape),
                                                "dense": (dense_onnx, bundle.input_shape)})  # one pass
            rows.append({"model": model_name, "dense_ms": dense_ms, "fraction": f, "budget_ms": target.value,
                         "found_sparsity": found.sparsity, "search_ms": found.cost, "remeasured_ms": again,
                         "error_pct": 100 * (again - target.value) / target.value, "ratio_to_dense": ratio,
                         "ratio_error_pct": 100 * (ratio - f) / f, "probes": len(found.probes),
                         "refuted": sum("confirmed_cost" in p and not p["meets"] for p in found.probes),
                         "search_s": seconds, "trace": found.probes})
            print(rows[-1], flush=True)
    env = measure.environment()
    lines = ["# Pruning to a latency budget (Reconvene, magnitude)", "",
             measured("budget.py", env, "onnxruntime") + ": "
             f"ONNX Runtime p50 at batch 1, 1 thread, input 1×28×28 (synthetic "
             "tensors; latency does not depend on the data or on trained weights). The budget is a fraction of the "
             f"dense model's latency; the search bisects the sparsity with measured probes ({budget.PROBE_RUNS} timed "
             f"runs each), stops within 5 % under the budget, and times the chosen model again "
             f"({budget.CONFIRM_RUNS} runs) before accepting it: a probe that is over the budget when timed again "
             "counts as over (refuted) and the search goes on. The chosen model is then re-measured twice: alone "
             "(fresh export and session, 100 runs; `vs budget` compares it with the budget in ms, which was fixed from "
             "the dense latency measured minutes earlier), and round-robin with the dense model in one pass (10 "
             "rounds × 20 runs; `ratio vs fraction` compares chosen/dense with the fraction asked for, so drift of the "
             "machine's speed between the two measurements cancels). Target: within 10 % of the budget.", "",
             "| model | dense ms | fraction | budget ms | sparsity found | confirmed ms | re-measured ms | vs budget | "
             "chosen/dense (one pass) | ratio vs fraction | probes | refuted | search s |", "|" + "---|" * 13]
    lines += [f"| {r['model']} | {r['dense_ms']:.3f} | {r['fraction']} | {r['budget_ms']:.3f} | "
              f"{r['found_sparsity']:.4f} | {r['search_ms']:.3f} | {r['remeasured_ms']:.3f} | "
              f"{r['error_pct']:+.1f} % | "
              f"{r['ratio_to_dense']:.3f} | {r['ratio_error_pct']:+.1f} % | {r['probes']} | {r['refuted']} | "
              f"{r['search_s']:.0f} |" if "unreachable" not in r else
              f"| {r['model']} | {r['dense_ms']:.3f} | {r['fraction']} | {r['budget_ms']:.3f} | unreachable: "
              f"{r['unreachable']} ||||||||"
              for r in rows]
    write_results("budget", lines, {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
