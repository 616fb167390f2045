"""Block-wise local learning under a memory budget, with the best early exit as the result.

Each block of the plan trains on its own: its layers learn from their heads' losses on one batch after another
(`local_step`: no end-to-end backward pass), with the block's batch and learning rate. Once trained, the block runs
once in eval mode over the training and validation samples and writes its outputs to a memory-mapped file on disk:
the next block reads its inputs from there, so no earlier block ever runs forward again. After each block the
validation accuracy of every exit in it (the layers up to there and that layer's head) is recorded with the time
since training began.

Resuming: after each block its weights, its cache and `neuroflux.json` (the blocks done, in order) are written;
an interrupted run resumes at the first block not done, reading the cache the last finished block wrote.

Exit selection: the earliest exit whose validation accuracy is within `exit_tolerance` points of the best; the
validation split is carved from the training samples (data.loaders' val_size), never the test split.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import CheckpointError, ConfigError, EdgePruneError
from ..files import torch_load, torch_save, write_json
from ..models import ModelSpec
from ..models.chain import EXIT_MODEL, AuxHead, Chain, ExitModel, cut
from ..progress import Reporter, reporter
from ..runs import CHECKPOINT
from ..train import TrainConfig, TrainingDiverged, lr_factor, resolve_device
from . import plan as planner
from . import watch
from .options import Settings
from .step import local_step

STATE = "neuroflux.json"
CACHE = "cache"
CACHE_DTYPES = {"float32": np.float32, "float16": np.float16}


class CacheTooLarge(EdgePruneError):
    """The block outputs would not fit on the cache's disk."""


@dataclass
class Result:
    model: ExitModel  # the chosen exit, a standalone model with its edgeprune_spec
    exit: int
    info: dict  # the plan, per-block records, the exits' validation accuracies, the choice


def train(model: nn.Module, train_set, val_set, num_classes: int, image_shape: tuple[int, ...], cfg: TrainConfig,
          base_batch: int, settings: Settings, work_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: Reporter | None = None) -> Result:
    """Train `model` (a freshly created registry model) block-wise under `settings.memory_budget`; `train_set` and
    `val_set` are datasets of (image, label); `cfg.lr` was chosen for batch `base_batch`. State and cache go to
    `work_dir` (its checkpoint.pt holds the weights of the blocks done)."""
    report = reporter(progress)
    allocator = watch.bound_heap()  # this process's allocator follows the measured rule from here on (watch.py)
    spec = getattr(model, "edgeprune_spec", None)
    if spec is None:
        raise ConfigError("NeuroFlux needs a model made by edgeprune.models.create (its exit is saved by name)")
    dev = resolve_device(device)
    chain = cut(model, spec.name)
    plan = planner.make(chain, image_shape, num_classes, settings.budget, cfg.lr, base_batch, settings)
    heads = [chain.classifier if h is None else AuxHead(num_classes=num_classes, **h) for h in plan.heads]
    torch.manual_seed(cfg.seed)
    for h in heads[:-1]:
        _init(h)
    work = Path(work_dir)
    cache = work / CACHE
    itemsize = np.dtype(CACHE_DTYPES[settings.cache_dtype]).itemsize
    n_train, n_val = len(train_set), len(val_set)
    _check_disk(plan, cache, (n_train + n_val) * itemsize)
    done, weights = _restore(work, plan, chain, heads) if resume else ([], [])
    if not resume:
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    labels = _labels(train_set, cache / "train_labels.npy"), _labels(val_set, cache / "val_labels.npy")
    t_start = time.perf_counter() - (done[-1]["seconds"] if done else 0.0)
    cpu_start = time.process_time() - (done[-1]["cpu_seconds"] if done else 0.0)
    memory = watch.Record(settings.budget, allocator, watch.status("VmRSS"), [])
    for b, block in enumerate(plan.blocks):
        if b < len(done):
            continue
        layers, block_heads = chain.layers[block.first:block.stop], heads[block.first:block.stop]
        for m in (*layers, *block_heads):
            m.to(dev)
        source = _Source(b, train_set, val_set, cache, plan, settings.cache_dtype, labels)
        window = watch.Window.open()
        stats = _train_block(b, len(plan.blocks), layers, block_heads, block, source, cfg, dev, report)
        increment, _ = window.close()
        last = b == len(plan.blocks) - 1
        exits = _cache_block(b, layers, block_heads, block, source, cache, plan, settings.cache_dtype, dev, report,
                             write_train=not last)
        memory.add(b, increment, watch.status("VmHWM") if window.reset else None)
        weights.append({part: [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in mods]
                        for part, mods in (("layers", layers), ("heads", block_heads))})
        torch_save(work / CHECKPOINT, {"blocks": weights})
        for m in (*layers, *block_heads):
            m.to("cpu")
        done.append({"block": b, "first": block.first, "stop": block.stop, "batch": block.batch, "lr": block.lr,
                     "val_accuracy": {str(block.first + k): a for k, a in enumerate(exits)}, **stats,
                     "memory": memory.blocks[-1],
                     "seconds": time.perf_counter() - t_start, "cpu_seconds": time.process_time() - cpu_start})
        write_json(work / STATE, {"plan": _fingerprint(plan), "blocks": done})
        if b > 0:  # the previous block's outputs have been read for the last time
            for split in ("train", "val"):
                (cache / f"{split}_{b - 1:02d}.bin").unlink(missing_ok=True)
        report.note(f"block {b + 1}/{len(plan.blocks)} (layers {block.first}-{block.stop - 1}, batch {block.batch}): "
                    f"exit accuracies {', '.join(f'{100 * a:.1f}' for a in exits)} %")
    shutil.rmtree(cache, ignore_errors=True)
    accuracy = {int(k): a for d in done for k, a in d["val_accuracy"].items()}
    best = max(accuracy.values())
    chosen = min(k for k, a in accuracy.items() if a >= best - settings.exit_tolerance / 100)
    exit_model = ExitModel(chain.layers[:chosen + 1], heads[chosen])
    exit_model.edgeprune_spec = ModelSpec(EXIT_MODEL, spec.num_classes, spec.in_channels,
                                          {"base": spec.to_dict(), "exit": chosen, "head": plan.heads[chosen]})
    full_params = sum(p.numel() for p in model.parameters())
    exit_params = sum(p.numel() for p in exit_model.parameters())
    info = {"plan": plan.to_dict(), "blocks": done, "val_accuracy": accuracy, "exit": chosen,
            "exit_tolerance_pts": settings.exit_tolerance, "best_val_accuracy": best,
            "params_full": full_params, "params_exit": exit_params, "params_x_fewer": full_params / exit_params,
            "seconds": done[-1]["seconds"], "memory": _memory(memory, done)}
    return Result(exit_model.eval(), chosen, info)


def _memory(record: watch.Record, done: list[dict]) -> dict:
    """The run's memory record, with the blocks a resumed run trained before it was interrupted (their figures
    from neuroflux.json; the process peak and baseline are this process's)."""
    trained_here = {m["block"] for m in record.blocks}
    record.blocks = sorted([d["memory"] for d in done if "memory" in d and d["block"] not in trained_here]
                           + record.blocks, key=lambda m: m["block"])
    return record.to_dict()


def _init(head: nn.Module) -> None:
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _check_disk(plan: planner.Plan, cache: Path, bytes_per_value_sample: int) -> None:
    """CacheTooLarge unless the largest pair of consecutive block caches fits the free space of `cache`'s disk
    (block b reads cache b-1 while it writes cache b)."""
    sizes = [math.prod(plan.shapes[blk.stop]) * bytes_per_value_sample for blk in plan.blocks[:-1]]
    need = max((a + b for a, b in zip([0, *sizes], sizes, strict=False)), default=0)
    where = cache if cache.exists() else next(p for p in cache.parents if p.exists())
    free = shutil.disk_usage(where).free
    if need > free:
        raise CacheTooLarge(f"the block-output cache needs {planner.mib(need)} on disk but {where} has "
                            f"{planner.mib(free)} free; free space, train on a --subset, or use --cache-dtype float16")


def _fingerprint(plan: planner.Plan) -> dict:
    return {"budget": plan.budget, "heads": plan.heads,
            "blocks": [[b.first, b.stop, b.batch] for b in plan.blocks]}


def _restore(work: Path, plan: planner.Plan, chain: Chain, heads: list[nn.Module]) -> tuple[list[dict], list[dict]]:
    """The records and weights of the blocks done (the weights loaded into the layers and heads)."""
    path = work / STATE
    if not path.is_file():
        return [], []
    state = json.loads(path.read_text())
    if state.get("plan") != json.loads(json.dumps(_fingerprint(plan))):
        raise CheckpointError(f"{path} was planned differently (another budget, model or options); resume with the "
                              "options the run started with, or start it again with --overwrite")
    done = state["blocks"]
    if done and len(done) < len(plan.blocks):
        last = done[-1]["block"]
        for split in ("train", "val"):
            if not (work / CACHE / f"{split}_{last:02d}.bin").is_file():
                raise CheckpointError(f"the cache of block {last} ({work / CACHE}) is missing: the next block has "
                                      "no inputs; start the run again with --overwrite")
    weights = torch_load(work / CHECKPOINT)["blocks"][:len(done)] if done else []
    for d, saved in zip(done, weights, strict=True):
        for m, s in zip((*chain.layers[d["first"]:d["stop"]], *heads[d["first"]:d["stop"]]),
                        (*saved["layers"], *saved["heads"]), strict=True):
            m.load_state_dict(s)
    return done, weights


def _labels(dataset, path: Path) -> np.ndarray:
    if not path.is_file():
        ys = np.concatenate([y.numpy() for _, y in DataLoader(dataset, batch_size=1024, shuffle=False)])
        np.save(path, ys)
    return np.load(path)


class _Source:
    """Where block `b` reads its inputs: the data set (block 0) or the previous block's memory-mapped outputs."""

    def __init__(self, b: int, train_set, val_set, cache: Path, plan: planner.Plan, dtype: str,
                 labels: tuple[np.ndarray, np.ndarray]):
        self.b, self.sets, self.labels = b, {"train": train_set, "val": val_set}, dict(zip(("train", "val"), labels,
                                                                                          strict=True))
        self.maps = {} if b == 0 else {
            split: np.memmap(cache / f"{split}_{b - 1:02d}.bin", dtype=CACHE_DTYPES[dtype], mode="r",
                             shape=(len(self.labels[split]), *plan.shapes[plan.blocks[b].first]))
            for split in ("train", "val")}

    def batches(self, split: str, batch: int, generator: torch.Generator | None = None) -> Iterator:
        """(x, y) batches of `split`, shuffled by `generator` when given, in order otherwise."""
        if self.b == 0:
            yield from DataLoader(self.sets[split], batch_size=batch, shuffle=generator is not None,
                                  generator=generator)
            return
        n = len(self.labels[split])
        order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
        for i in range(0, n, batch):
            idx = np.sort(order[i:i + batch])  # sorted reads are sequential on disk
            x = torch.from_numpy(np.ascontiguousarray(self.maps[split][idx])).float()
            yield x, torch.from_numpy(self.labels[split][idx]).long()

    def steps(self, split: str, batch: int) -> int:
        return math.ceil(len(self.labels[split]) / batch)


def _train_block(b: int, n_blocks: int, layers, heads, block: planner.Block, source: _Source, cfg: TrainConfig,
                 dev: torch.device, report) -> dict:
    steps = source.steps("train", block.batch)
    steps = min(steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else steps
    opts = [torch.optim.SGD([*layer.parameters(), *head.parameters()], lr=block.lr, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
            for layer, head in zip(layers, heads, strict=True)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor(cfg, steps)) for o in opts]
    for m in (*layers, *heads):
        m.train()
    gen = torch.Generator()
    records = []
    for epoch in range(cfg.epochs):
        gen.manual_seed(cfg.seed * 1_000_003 + 1009 * b + epoch)
        task = f"block {b + 1}/{n_blocks} epoch {epoch + 1}/{cfg.epochs}"
        seen, loss_sum, correct = 0, torch.zeros(len(layers)), torch.zeros(len(layers))
        for i, (x, y) in enumerate(source.batches("train", block.batch, gen)):
            if i >= steps:
                break
            x, y = x.to(dev), y.to(dev)
            _, losses, right = local_step(layers, heads, opts, x, y)
            for s in scheds:
                s.step()
            loss_sum += torch.stack(losses).cpu() * len(y)
            correct += torch.stack(right).cpu()
            seen += len(y)
            if not math.isfinite(float(losses[-1])):
                raise TrainingDiverged(f"a local loss became {float(losses[-1])} in block {b + 1}, batch {i + 1}; "
                                       f"lower the learning rate (now {cfg.lr}) or use --lr-scaling none")
            report.update(task, i + 1, steps, f"loss {float(loss_sum[-1]) / seen:.3f}")
        report.end(task)
        records.append({"epoch": epoch + 1, "train_loss": (loss_sum / max(seen, 1)).tolist(),
                        "train_accuracy": (correct / max(seen, 1)).tolist()})
    return {"epochs": records, "steps_per_epoch": steps}


@torch.no_grad()
def _cache_block(b: int, layers, heads, block: planner.Block, source: _Source, cache: Path, plan: planner.Plan,
                 dtype: str, dev: torch.device, report, write_train: bool) -> list[float]:
    """Run the trained block once in eval mode over the validation (and, unless it is the last block, the
    training) samples, writing its outputs to `cache`; return each layer's exit accuracy on validation."""
    for m in (*layers, *heads):
        m.eval()
    shape = plan.shapes[block.stop]
    correct = [0] * len(layers)
    for split in ("val", "train") if write_train else ("val",):
        n = len(source.labels[split])
        out = np.memmap(cache / f".{split}_{b:02d}.bin", dtype=CACHE_DTYPES[dtype], mode="w+", shape=(n, *shape))
        at, task = 0, f"block {b + 1}: caching {split}"
        for i, (x, y) in enumerate(source.batches(split, block.batch)):
            x = x.to(dev)
            for k, (layer, head) in enumerate(zip(layers, heads, strict=True)):
                x = layer(x)
                if split == "val":
                    correct[k] += int((head(x).argmax(1).cpu() == y).sum())
            out[at:at + len(x)] = x.cpu().numpy()
            at += len(x)
            report.update(task, i + 1, source.steps(split, block.batch))
        report.end(task)
        out.flush()
        del out
        (cache / f".{split}_{b:02d}.bin").rename(cache / f"{split}_{b:02d}.bin")  # complete: visible to resume
    return [c / len(source.labels["val"]) for c in correct]
