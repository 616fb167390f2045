"""The life of a run folder, shared by every kind of run (kinds/): the data and fresh model a config asks for
(`build`), the folder opened, locked and checked with the config recorded (`run_folder`), the thread count its heavy
steps use (`thread_policy`), and the model saved, exported and measured at the end (`finish`); and what a run made
from another run reads of it (`load`, `source_config`, `levels_of`, ...). Its own module, so that every kind of run
uses it without importing jobs.py, which dispatches to every kind."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from . import data, export, files, masks, measure, models, runs, threads, timing
from .errors import ConfigError
from .methods import registry
from .record import EXECUTION_FIELDS, RunConfig, RunReport, read_config, read_report


def build(cfg: RunConfig) -> tuple[nn.Module, data.DataBundle]:
    """Load the data set and create the model to fit it, initialised from the run's seed."""
    bundle = data.loaders(**cfg.data)
    for what, asked, actual in (
        ("num_classes", cfg.num_classes, bundle.num_classes),
        ("in_channels", cfg.in_channels, bundle.in_channels),
    ):
        if asked is not None and asked != actual:
            raise ConfigError(
                f"--{what.replace('_', '-')} {asked} does not match data set {bundle.name!r}, which has "
                f"{actual}; drop the option to take it from the data"
            )
    return fresh_model(cfg, bundle), bundle


def fresh_model(cfg: RunConfig, bundle: data.DataBundle) -> nn.Module:
    """The run's model as initialised from its seed: the same weights every time."""
    models.require_task(cfg.model, "classify", f"`edgeprune {cfg.command}`")
    torch.manual_seed(cfg.train.seed)
    return models.create(cfg.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         **cfg.model_kwargs)


def finish(model: nn.Module, bundle: data.DataBundle, cfg: RunConfig, run_dir: Path, info: dict,
           name: str | None = None) -> RunReport:
    """Save model.pt, masks.pt and model.onnx into `run_dir`, profile the model; return the report, with
    `info` (what the method did) in it. The caller writes report.json, last: it marks the run finished."""
    extra = {"input_shape": bundle.input_shape, "data": cfg.data}
    export.save_model(model, run_dir / runs.MODEL, extra=extra)
    save_masks(model, run_dir)
    onnx_bytes = export.to_onnx_bytes(model, bundle.input_shape)
    files.atomic_write(run_dir / runs.ONNX, lambda f: f.write(onnx_bytes))
    real = None if bundle.synthetic else bundle.test
    prof = measure.profile(
        model, bundle.input_shape, **asdict(cfg.measure), loader=real, data_name=bundle.name,
        onnx_model=onnx_bytes, device=cfg.device,
    )
    return RunReport.from_dict({"run": name or run_dir.name, **data_fields(bundle),
                                **info, "profile": prof.to_dict()})


def data_fields(bundle: data.DataBundle) -> dict:
    """What a report records of the data a run read: its name, whether it was synthetic, and which copy."""
    return {"data": bundle.name, "synthetic_data": bundle.synthetic, "data_copy": bundle.copy,
            "data_sha256": bundle.sha256}


def save_masks(model: nn.Module, run_dir: Path) -> None:
    kept = {f"{name}.{p}" if name else p: getattr(m, f"{p}_mask").bool()
            for name, m, p in masks.masked_modules(model)}
    if kept:
        files.torch_save(run_dir / runs.MASKS, kept)


def run_folder(cfg: RunConfig, run_dir: str | Path, overwrite: bool, resume: bool):
    """The run folder, locked and checked (see runs.open_run), with `cfg` recorded in it. Saved configs are
    compared with their defaults filled in, so a run of an earlier version (without a newer field) resumes.
    A resumed run records its original config (the one written when it started)."""
    def changed(saved: dict, new: dict) -> list[str]:
        try:
            saved = json.loads(json.dumps(RunConfig.from_dict(saved).to_dict(), default=str))
        except ConfigError:
            pass  # compared as it is: the difference is named
        # how a run is executed is not what it is: a resumed run keeps its thread count (thread_policy)
        how = dict.fromkeys(EXECUTION_FIELDS)
        return runs.changed_fields({**saved, **how}, {**new, **how})

    return runs.open_run(run_dir, cfg, overwrite=overwrite, resume=resume, compare=changed)


@contextlib.contextmanager
def thread_policy(cfg: RunConfig, run_dir: str | Path, resume: bool) -> Iterator[RunConfig]:
    """`cfg` with the thread count its heavy steps run with (torch set to it meanwhile): a resumed run keeps
    the count it started with, so that it ends bit for bit where an uninterrupted one would; otherwise
    `cfg.threads` resolved now ("auto": the CPUs free at this moment, threads.py)."""
    saved = Path(run_dir) / runs.CONFIG
    used = read_config(saved).threads_used if resume and saved.is_file() else None
    cfg = replace(cfg, threads_used=used or threads.resolve(cfg.threads))
    with threads.step(cfg.threads_used):
        yield cfg


def load(path: str | Path) -> tuple[nn.Module, dict]:
    """A saved model (a run folder or a model.pt) and the metadata saved with it."""
    path = Path(path)
    return export.load(path / runs.MODEL if path.is_dir() else path)


def load_profile(run_dir: str | Path) -> measure.Profile:
    """The measured profile of a finished run (for IMP, of its last level)."""
    return read_report(Path(run_dir) / runs.REPORT).last_profile


def source_config(source: str | Path) -> RunConfig:
    """The config of run `source`: its own, or for an IMP level (which has none), its run's."""
    source = Path(source)
    if (source / runs.CONFIG).exists():
        return read_config(source / runs.CONFIG)
    if source.name.startswith("level_") and (source.parent / runs.CONFIG).exists():
        return read_config(source.parent / runs.CONFIG)
    raise ConfigError(f"{source} is not an edgeprune run folder (no {runs.CONFIG}); pass a finished run of "
                      "train, prune, shrink or neuroflux (or an IMP run's level_NN)")


def has_levels(path: str | Path) -> bool:
    """Whether `path` is a whole run of a method of levels (IMP: its levels in level_NN folders), not one level."""
    path = Path(path)
    return ((path / runs.CONFIG).is_file()
            and read_config(path / runs.CONFIG).method.get("name") in registry.list_methods("levels"))


def levels_of(path: str | Path) -> list[Path]:
    """The finished, pruned levels of IMP run `path` (level 0 is the dense start and has no masks)."""
    found = sorted(p for p in Path(path).glob("level_[0-9]*")
                   if (p / runs.REPORT).is_file() and (p / runs.MASKS).is_file())
    if not found:
        raise ConfigError(f"IMP run {path} has no finished pruned level (level_NN with {runs.MASKS} and "
                          f"{runs.REPORT}) yet; let it finish (`edgeprune prune --method imp ... --resume`)")
    return found


def not_the_source(source: Path, run_dir: str | Path) -> None:
    """Refuse a new run that would replace the run it is made from."""
    target = Path(run_dir).resolve()
    if target == source.resolve() or target in source.resolve().parents:
        raise ConfigError(f"the new run would replace its source; choose a --name other than the source "
                          f"{source.name!r}")


def speedup_now(source: Path, run_dir: Path, input_shape: tuple[int, ...]) -> float | None:
    """Source / new ONNX Runtime p50 at batch 1, 1 thread, both timed round-robin now: the source's own profile
    was taken when it finished, under another load. None where the source has no model.onnx."""
    if not (source / runs.ONNX).is_file():
        return None
    return timing.latency_ratio_onnx({"source": (source / runs.ONNX, input_shape),
                                       "shrunk": (run_dir / runs.ONNX, input_shape)})
