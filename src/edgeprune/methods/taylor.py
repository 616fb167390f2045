"""Taylor filter pruning from a trained model, stopped by accuracy or a budget (Molchanov et al., ICLR 2017;
the iterative scheme of the IoT inspection paper in papers.md, Wu et al., which reports 9× (VGG-16) and 4×
(ResNet-18) faster inference on a Jetson TX2).

Each step:
1. score every output channel by the first-order Taylor criterion (scores/taylor.py): the activation
   criterion |mean z·∂L/∂z| normalised per layer (default), or torch-pruning's weight `TaylorImportance`;
   with `cost` "macs", divided by the MACs the channel costs (its layer's and its consumers' share);
   a layer loses channels only in whole multiples of `round_to`, so its width stays one the runtime's
   kernels are fast at (benchmarks/results/odd_widths.md: widths that are no multiple of 4 ran 1.6x slower
   per channel in ONNX Runtime on this CPU, and a ResNet-20 pruned to widths 14/29/58 ran 1.8x slower than
   the dense one);
2. remove the `step_fraction` × (the dense model's removable channels) lowest-scored channels, ranked across
   the whole model, coupled channels (residual adds) as one (`structure.global_keep`), physically
   (`surgery.materialize`, strict: a group torch-pruning maps wrongly is an error, not a silent skip);
3. fine-tune `finetune_steps` batches on the training split;
4. measure parameters, MACs, ONNX Runtime batch-1 latency and accuracy on a validation split carved from the
   training samples the dense run never saw (data.loaders' val_size), never the test split.
It stops when a step loses more than `max_drop` points of validation accuracy against the dense model (that
step is discarded: the run keeps the last step within the tolerance), when a `--target-*` budget is met, or
when no channel is left to remove. Every step is recorded in the report (`steps`); the kept model is the run's
model, and its test accuracy is measured once, by the run's profile.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from .. import export, measure, runs, structure, surgery, timing
from ..budget import Target
from ..data import DataBundle
from ..errors import ConfigError, unknown_name
from ..progress import Prefixed, Reporter, reporter
from ..scores import taylor as criteria
from ..train import TrainConfig, evaluate, fit
from .registry import option, register


@dataclass
class TaylorOptions:
    importance: str = option("activation", "Taylor: activation (Molchanov: |mean z·dL/dz| per channel, L2-normalised "
                             "per layer) or weight (torch-pruning's TaylorImportance).")
    step_fraction: float = option(0.05, "Taylor: channels removed per step, as a fraction of the dense model's "
                                  "removable channels.")
    finetune_steps: int = option(100, "Taylor: fine-tuning batches after each step.")
    finetune_lr: float = option(0.01, "Taylor: learning rate of each fine-tuning (cosine to 0 within it).")
    max_drop: float = option(1.0, "Taylor: stop when validation accuracy falls more than this many points below "
                             "the dense model's.")
    val_size: int = option(5000, "Taylor: validation samples, carved from the training samples the dense run did "
                           "not train on.")
    score_batches: int = option(4, "Taylor: batches each step's scores are averaged over.")
    round_to: int = option(4, "Taylor: every layer keeps a multiple of this many channels (ONNX Runtime's CPU "
                           "convolutions ran 1.6x slower per channel at other widths); 1: any width.")
    cost: str = option("none", "Taylor: none (rank channels by their score, Molchanov) or macs (by score per MAC "
                       "the channel costs: the same parameters removed take more of the work away).")

    def __post_init__(self) -> None:
        if self.importance not in criteria.IMPORTANCES:
            raise unknown_name("Taylor importance", self.importance, criteria.IMPORTANCES)
        if self.cost not in criteria.COSTS:
            raise unknown_name("Taylor cost", self.cost, criteria.COSTS)
        if not 0 < self.step_fraction < 1:
            raise ConfigError(f"step_fraction must be in (0, 1), got {self.step_fraction}")
        if self.finetune_steps < 0:
            raise ConfigError(f"finetune_steps must be >= 0, got {self.finetune_steps}")
        if not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be positive, got {self.finetune_lr}")
        if not self.max_drop >= 0:
            raise ConfigError(f"max_drop must be >= 0 points of accuracy (e.g. 1 for one point), got {self.max_drop}")
        for what in ("val_size", "score_batches", "round_to"):
            if getattr(self, what) < 1:
                raise ConfigError(f"{what} must be >= 1, got {getattr(self, what)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _label(o: dict) -> tuple[str, list[str]]:
    per_mac = o.get("cost", "none") == "macs"
    words = [f"{o.get('importance', 'activation')} Taylor" + (" per MAC" if per_mac else ""),
             f"−{o.get('step_fraction', 0):.0%}/step", f"{o.get('finetune_steps')} fine-tuning steps",
             f"max drop {o.get('max_drop')}"]
    return f"taylor-{o.get('importance', 'activation')}" + ("-macs" if per_mac else ""), words


@register("taylor", kind="trained", options=TaylorOptions, label=_label,
          summary="Taylor filter pruning of a trained run (--from RUN): channels removed step by step, fine-tuned, "
                  "until validation accuracy drops by --max-drop or a --target-* budget is met (smaller model)")
def prune(model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig, opts: TaylorOptions, target: Target | None,
          measure_runs: int = 30, device: str = "cpu", progress: Reporter | None = None,
          run_dir: Path | None = None) -> tuple[nn.Module, dict]:
    """Prune trained `model` (changed in place) step by step; return the kept model and every step's record.
    With `run_dir`, every step within the tolerance is checkpointed there (the model and the steps so far), and
    a checkpoint found there is gone on from instead of `model`: an interrupted run loses one step at most."""
    report, t0 = reporter(progress), time.perf_counter()
    shape, x = bundle.input_shape, torch.zeros(1, *bundle.input_shape)
    if target is not None:
        _check_reachable(model, x, shape, target)
    checkpoint = None if run_dir is None else Path(run_dir) / runs.CHECKPOINT
    if checkpoint is not None and checkpoint.is_file():
        model, extra = export.load(checkpoint)
        steps, per_step = extra["taylor"]["steps"], extra["taylor"]["per_step"]
        report.note(f"resumed after step {steps[-1]['step']} (the last one checkpointed)")
    else:
        per_step = max(1, round(opts.step_fraction * structure.removable_channels(model, x)))
        steps = [{"step": 0, "removed": 0, **_measure(model, bundle, shape, measure_runs, device)}]
    first, kept = steps[0], copy.deepcopy(model)
    report.note(_describe(steps[-1], first))
    while True:
        k = len(steps)
        report.update("taylor steps", k - 1, None, f"val acc {100 * steps[-1]['val_accuracy']:.2f} %")
        scorer = criteria.importance(opts.importance, model, bundle.train, opts.score_batches, device, opts.cost,
                                     shape)
        keep = structure.global_keep(model.cpu(), x, per_step, scorer, opts.round_to)
        model.zero_grad(set_to_none=True)
        if not keep:
            stop = "no channel left to remove"
            break
        cut = surgery.materialize(model, keep, x, strict=True)
        finetune(model, bundle, train_cfg, opts, k, device, Prefixed(progress, f"step {k}: "))
        record = {"step": k, "removed": cut.channels_removed, **_measure(model, bundle, shape, measure_runs, device)}
        record["drop_points"] = 100 * (first["val_accuracy"] - record["val_accuracy"])
        steps.append(record)
        report.note(_describe(record, first))
        if record["drop_points"] > opts.max_drop:
            stop = f"step {k} lost {record['drop_points']:.2f} points > max_drop {opts.max_drop}"
            break
        kept = copy.deepcopy(model)
        if checkpoint is not None:  # the kept model is the current one here: one file holds the state
            export.save_model(model, checkpoint, extra={"taylor": {"steps": steps, "per_step": per_step}})
        if target is not None and (cost := target.cost(model, shape)) <= target.value:
            stop = f"step {k} meets {target.describe()} ({target.describe(cost)})"
            break
    report.end("taylor steps")
    chosen = max(s["step"] for s in steps if s["step"] == 0 or s["drop_points"] <= opts.max_drop)
    met = None if target is None else target.cost(kept, shape) <= target.value
    return kept, {
        "method": "taylor", "options": opts.to_dict(), "prune_seconds": time.perf_counter() - t0,
        "steps": steps, "kept_step": chosen, "stopped": stop, "channels_per_step": per_step,
        "target_met": met, "validation": {"samples": len(bundle.val.dataset), "split": "carved from training"},
    }


def _check_reachable(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...], target: Target) -> None:
    """A budget even the narrowest model (one channel per coupled group) misses is refused before any step."""
    floor = copy.deepcopy(model).cpu()
    keep = structure.global_keep(floor, x, structure.removable_channels(floor, x),
                                 tp.importance.GroupMagnitudeImportance())  # which channel stays does not matter
    surgery.materialize(floor, keep, x, strict=True)
    least = target.cost(floor, shape)
    if least > target.value:
        raise ConfigError(f"{target.describe()} cannot be met: with one channel left in every prunable layer the "
                          f"model still has {target.describe(least)}; ask for at least that")


def finetune(model: nn.Module, bundle: DataBundle, train_cfg: TrainConfig, opts: TaylorOptions, step: int,
             device: str = "cpu", progress: Reporter | None = None) -> None:
    """Step `step`'s fine-tuning: `opts.finetune_steps` batches of the training split."""
    if opts.finetune_steps == 0:
        return
    epochs = math.ceil(opts.finetune_steps / len(bundle.train))
    # the source's optimiser settings at the fine-tuning rate, no warm-up (the model is trained already); a seed
    # per step, so steps see different batches
    cfg = replace(train_cfg, epochs=epochs, steps_per_epoch=math.ceil(opts.finetune_steps / epochs),
                  lr=opts.finetune_lr, schedule="cosine", seed=train_cfg.seed + step, warmup_epochs=0.0)
    fit(model, bundle.train, cfg, device=device, progress=progress)


def _measure(model: nn.Module, bundle: DataBundle, shape: tuple[int, ...], runs: int, device: str) -> dict:
    model.cpu()
    onnx = export.to_onnx_bytes(model, shape, check=False)
    return {"params": measure.count_params(model)[0], "macs": measure.count_macs(model, shape)[0],
            "ort_b1_ms": timing.latency_onnx(onnx, shape, 1, 1, runs=runs).p50_ms,
            "val_accuracy": evaluate(model, bundle.val, device=device)["accuracy"]}


def _describe(record: dict, first: dict) -> str:
    return (f"step {record['step']}: {record['params'] / first['params']:.1%} of the parameters, "
            f"{record['macs'] / first['macs']:.1%} of the MACs, ORT {record['ort_b1_ms']:.3f} ms, "
            f"val acc {100 * record['val_accuracy']:.2f} %")
