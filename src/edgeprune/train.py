"""Training and evaluation: SGD with momentum, cosine/step schedules, atomic per-epoch checkpoints,
exact resume, NaN guard. Masks applied with torch.nn.utils.prune stay in force by construction.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, EdgePruneError
from .files import torch_load, torch_save
from .progress import Reporter, reporter
from .runs import CHECKPOINT, append_log

SCHEDULES = ("cosine", "step", "constant")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("fp32", "bf16")
_LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class TrainingDiverged(EdgePruneError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: Sequence[float] = (0.5, 0.75)  # step schedule: fractions of the epochs
    gamma: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0
    steps_per_epoch: int | None = None  # cap batches per epoch (short budgets)
    warmup_epochs: float = 0.0  # the schedule × a linear ramp (t+1)/W over the first W = this × batches per epoch
    # layout of 4-D weights and batches while training: "auto" is channels_last on the CPU (oneDNN's convolutions
    # ran a ResNet-20 step 1.2-1.4x faster so), contiguous elsewhere; the model is handed back contiguous
    memory_format: str = "auto"
    # arithmetic of the forward pass and its backward: "bf16" runs them under torch.autocast(bfloat16) (weights,
    # optimiser and the loss stay fp32); about 2x faster on CPUs with AVX512-BF16 or AMX and on recent GPUs.
    # Evaluation and the exported model stay fp32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"learning rate must be a positive finite number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1) (0.9 is usual), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight decay must be a finite number >= 0 (5e-4 is usual), got {self.weight_decay}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma (the step schedule's factor) must be in (0, 1], got {self.gamma}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose from {list(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise ConfigError(f"steps per epoch must be positive, got {self.steps_per_epoch}")
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise ConfigError(f"warm-up epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"unknown memory_format {self.memory_format!r}; choose from {list(MEMORY_FORMATS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown training precision {self.precision!r}; choose from {list(PRECISIONS)}")
        self.milestones = tuple(self.milestones)

    def to_dict(self) -> dict:
        return asdict(self)


class Callback:
    """Hook points for methods that must act during training (e.g. IMP's rewind snapshot, a target rate's
    gradient selection)."""

    def on_step_begin(self, model: nn.Module, step: int) -> None:
        """After the backward pass, before the optimiser step: the gradients may be changed here."""

    def on_step_end(self, model: nn.Module, step: int) -> None: ...

    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None: ...


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def check_device(device: object, where: str = "device") -> None:
    """That `device` is "auto" or a device torch can name; whether this machine has it is `resolve_device`'s
    question (a sweep spec with GPU cells is still read, and its CPU cells run, on a machine without one)."""
    if device == "auto":
        return
    try:
        if not isinstance(device, str):
            raise TypeError(device)
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where} must be cpu, cuda, cuda:N, mps or auto; got {device!r}") from None


def resolve_device(device: str) -> torch.device:
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
    return torch.device(device)


def steps_per_epoch(loader, cfg: TrainConfig) -> int:
    """Batches an epoch of `fit` takes: the loader's, capped by `cfg.steps_per_epoch`."""
    n = len(loader)
    return min(n, cfg.steps_per_epoch) if cfg.steps_per_epoch else n


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at step t (from 0) is cfg.lr × factor(t): the schedule's factor, times a linear ramp
    (t+1)/W over the first W = ceil(warmup_epochs × steps_per_epoch) steps (a ConfigError where that is under 2).
    The ramp multiplies the schedule, which it does not delay (as open_lth's warm-up, whose ramp t/W starts at 0;
    here the first step runs at 1/W): under cosine the rate peaks a little below cfg.lr."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    bounds = [m * cfg.epochs * steps_per_epoch for m in cfg.milestones]
    warmup = math.ceil(cfg.warmup_epochs * steps_per_epoch)
    if cfg.warmup_epochs > 0 and warmup < 2:  # a ramp of one step runs at the full rate: no warm-up at all
        raise ConfigError(f"warm-up epochs {cfg.warmup_epochs:g} are {warmup} batch(es) at {steps_per_epoch} batches "
                          f"an epoch, too few to ramp; give at least {2 / steps_per_epoch:.3g}, or 0 for none")

    def schedule(step: int) -> float:
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if cfg.schedule == "step":
            return cfg.gamma ** sum(step >= b for b in bounds)
        return 1.0

    def factor(step: int) -> float:
        return schedule(step) * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)

    return factor


def fit(
    model: nn.Module,
    train_loader: Iterable,
    cfg: TrainConfig,
    *,
    val_loader: Iterable | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: Reporter | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train `model` in place. With `run_dir`, a checkpoint is written after every epoch and
    `resume=True` continues from it exactly (same batches, same augmentation, same weights).
    Each epoch is a task of `progress` (edgeprune.progress), counted in batches.
    """
    report = reporter(progress)
    dev = resolve_device(device)
    model.to(dev)
    steps = steps_per_epoch(train_loader, cfg)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history, start = History(), 0
    layout = memory_format(cfg, dev)  # a name of _LAYOUTS, recorded in the checkpoint
    ckpt_path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if resume:
        if ckpt_path is None:
            raise ConfigError("resume needs a run folder")
        start, history, layout = _restore(ckpt_path, model, opt, sched, cfg)
    model.to(memory_format=_LAYOUTS[layout])  # in place: the optimiser's parameters stay the model's
    in_precision = autocast(cfg.precision, dev)
    try:
        t_start = time.perf_counter() - history.seconds
        for epoch in range(start, cfg.epochs):
            _seed_epoch(train_loader, cfg.seed, epoch)
            task = f"epoch {epoch + 1}/{cfg.epochs}"
            report.update(task, 0, steps)
            model.train()
            seen = correct = 0
            loss_sum = 0.0
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(train_loader):
                if i >= steps:
                    break
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=_LAYOUTS[layout])
                with in_precision:
                    out = model(x)
                    loss = loss_fn(out, y)
                if not torch.isfinite(loss):  # the run folder's owner says what was kept (runs.open_run)
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}. "
                        f"Lower the learning rate (now {cfg.lr}) or check the input data."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                step = epoch * steps + i + 1
                for cb in callbacks:
                    cb.on_step_begin(model, step)
                opt.step()
                sched.step()
                for cb in callbacks:
                    cb.on_step_end(model, step)
                seen += y.numel()
                loss_sum += loss.item() * y.numel()
                correct += int((out.argmax(1) == y).sum())
                report.update(task, i + 1, steps, f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            if val_loader is not None:
                val = evaluate(model, val_loader, device=str(dev), progress=False)
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                report.update(task, steps, steps, f"loss {record['train_loss']:.3f} val acc {val['accuracy']:.3f}")
            report.end(task)
            history.epochs.append(record)
            history.seconds = time.perf_counter() - t_start
            for cb in callbacks:
                cb.on_epoch_end(model, epoch + 1, record)
            if run_dir is not None:
                torch_save(ckpt_path, {
                    "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": history.epochs, "param_names": _param_names(model, opt),
                    "seconds": history.seconds, "config": cfg.to_dict(), "memory_format": layout,
                })
                append_log(run_dir, record)
        history.seconds = time.perf_counter() - t_start
        return history
    finally:
        model.to(memory_format=torch.contiguous_format)


def memory_format(cfg: TrainConfig, device: torch.device) -> str:
    """The layout training runs in (channels_last or contiguous): cfg.memory_format, "auto" resolved for `device`."""
    if cfg.memory_format == "auto":
        return "channels_last" if device.type == "cpu" else "contiguous"
    return cfg.memory_format


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward and loss run in for TrainConfig.precision `precision` on `device`:
    torch.autocast(bfloat16) for bf16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"training precision {precision} runs on cpu or cuda, not {device.type}; "
                          "use precision fp32 there")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _seed_epoch(loader, seed: int, epoch: int) -> None:
    """Make an epoch's shuffling and augmentation a function of (seed, epoch) alone, so resume is exact."""
    torch.manual_seed(seed * 1_000_003 + epoch)
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(seed * 1_000_003 + epoch)


def _restore(path: Path, model, opt, sched, cfg: TrainConfig) -> tuple[int, History, str]:
    """The epoch, history and layout a checkpoint holds, its weights and optimiser state loaded. A run resumes in
    the layout it started in (one written before layouts were recorded trained contiguous), so that it ends bit
    for bit where an uninterrupted run would."""
    ckpt = torch_load(path)
    try:
        saved, now = TrainConfig(**ckpt["config"]).to_dict(), cfg.to_dict()
        changed = {k for k in saved if k != "epochs" and saved[k] != now[k]}
        if changed:
            raise ConfigError(
                f"cannot resume with different training settings ({', '.join(sorted(changed))}); "
                "use the saved config or start a new run"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(_by_name(ckpt["optimizer"], ckpt.get("param_names"), _param_names(model, opt)))
        sched.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise CheckpointError(f"checkpoint {path} does not match this model/run ({str(e)[:200]})") from None
    return (int(ckpt["epoch"]), History(list(ckpt["history"]), float(ckpt.get("seconds", 0.0))),
            "channels_last" if ckpt.get("memory_format") == "channels_last" else "contiguous")


def _param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's order: model.parameters() when it was made, which a method that masks
    weights during training (DRIVE) changes afterwards (`weight` becomes `weight_orig`, registered last)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]


def _by_name(state: dict, saved: list[str] | None, now: list[str]) -> dict:
    """The optimiser state re-ordered from the saved parameter order to today's. A model rebuilt from the run
    folder (a resumed pruned run) registers the same parameters in another order; torch maps by position."""
    if saved is None or saved == now:
        return state
    if sorted(saved) != sorted(now):
        raise CheckpointError(f"the checkpoint's parameters differ from the model's: "
                              f"{sorted(set(saved) ^ set(now))[:5]}")
    if len(state["param_groups"]) != 1:
        raise CheckpointError("cannot re-order a checkpoint with several parameter groups")
    where = {name: i for i, name in enumerate(saved)}
    moved = {i: state["state"][where[name]] for i, name in enumerate(now) if where[name] in state["state"]}
    return {"state": moved, "param_groups": [{**state["param_groups"][0], "params": list(range(len(now)))}]}


def evaluate(model: nn.Module, loader: Iterable, device: str = "cpu", progress: Reporter | None = None) -> dict:
    """Mean cross-entropy and top-1 accuracy over `loader` (task "evaluate" of `progress`, in batches)."""
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    try:
        return classify(lambda x: model(x.to(dev)), loader, "evaluate", progress)
    finally:
        model.train(was_training)


@torch.no_grad()
def classify(forward: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, task: str,
             progress: Reporter | None = None) -> dict:
    """Mean cross-entropy and top-1 accuracy of `forward` (inputs -> logits, any runtime) over `loader`."""
    report = reporter(progress)
    total = len(loader) if hasattr(loader, "__len__") else None
    seen = correct = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loader):
        out = forward(x)
        y = y.to(out.device)
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += int((out.argmax(1) == y).sum())
        seen += y.numel()
        report.update(task, i + 1, total)
    report.end(task)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "samples": seen}
