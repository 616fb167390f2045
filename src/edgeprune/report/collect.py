"""Finding finished runs and reading their records (config.json, report.json) into RunRows.

This is the one module that reads those JSON files and knows their keys; everything else in the report
works on RunRow. An IMP run becomes one row per finished level.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import kinds, runs
from ..errors import ConfigError
from ..measure import Profile
from ..record import RunConfig, RunReport, read_config, read_report
from .labels import describe

RUN_FOLDER = "a run folder contains config.json and, once the run has finished, report.json"
MAIN_LATENCY = ("onnxruntime", 1, 1)  # the latency ratios, plots and headline are taken at


@dataclass(frozen=True)
class Training:
    """What a run's accuracy was trained with, from its config.json, in words for the report's intro."""

    data_options: str  # in words; "all of it" without any
    schedule: str  # epochs, optimiser, schedule; "" when the run was not trained
    seed: int | None
    key: tuple[str, str]  # data options and training config without the seed: equal keys differ only in seed


@dataclass
class RunRow:
    """One finished run (or one IMP level) as a report shows it."""

    name: str  # the run folder's name; an IMP level is "<run>/level_NN"
    path: Path
    data: str
    synthetic: bool
    model: str
    method: str  # dense, a PaI criterion, reconvene-<conversion>-<criterion>, imp, dnnshifter
    variant: str  # the options that make a different curve of the same method (not sparsity, level, budget)
    options: str  # the method's options, compactly
    options_full: dict
    sparsity_requested: float | None
    profile: Profile
    prune_seconds: float | None
    train_seconds: float | None
    training: Training
    model_kwargs: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)  # per-layer rows: layer, shape, weights, kept, density
    groups: list[dict] = field(default_factory=list)  # Reconvene: coupled channels, width_before/width_after
    dense_layers: dict[str, list[int]] = field(default_factory=dict)  # layer -> shape in the dense original
    source: str | None = None  # DNNShifter: the sparse run it shrank; Taylor: the dense run it started from
    steps: list[dict] = field(default_factory=list)  # Taylor: every step's params, MACs, latency, val accuracy
    kept_step: int | None = None
    budget: str = ""  # what the run was trained under: data options, training config (with seed), model kwargs
    # ratios to the dense run of the same model and data set (None without one)
    dense_run: str | None = None
    compression: float | None = None  # dense prunable weights / remaining prunable weights
    size_x_fp32: float | None = None
    size_x_gzip: float | None = None
    size_x_onnx: float | None = None  # the deployable model.onnx, whatever its precision
    speedup: float | None = None  # ONNX Runtime p50, batch 1, 1 thread
    accuracy_delta: float | None = None  # percentage points

    @property
    def accuracy(self) -> float | None:
        return self.profile.accuracy

    @property
    def sparsity_measured(self) -> float:
        return self.profile.sparsity

    def latency_ms(self, runtime: str = "onnxruntime", batch_size: int = 1, threads: int = 1) -> float | None:
        t = self.profile.latency_of(runtime, batch_size, threads)
        return None if t is None else t.p50_ms

    @property
    def plot_sparsity(self) -> float:
        """Sparsity for accuracy-vs-sparsity: as requested; else as measured against the dense original."""
        if self.sparsity_requested is not None:
            return self.sparsity_requested
        return 1 - 1 / self.compression if self.compression else self.sparsity_measured


def find(paths: Sequence[str | Path]) -> tuple[list[RunRow], list[Path]]:
    """The rows of the finished runs under `paths` (run folders, sweep folders holding run folders at any
    depth, IMP runs: one row per level) and the unfinished run folders found beside them."""
    if isinstance(paths, str | Path):
        paths = [paths]
    folders: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name in (runs.REPORT, runs.CONFIG):
            p = p.parent
        if not p.is_dir():
            raise ConfigError(f"{p} is not a run or sweep folder: {'it is a file' if p.exists() else 'no such folder'}"
                              f"; pass run folders or folders holding them ({RUN_FOLDER})")
        found = [p] if is_run(p) else _runs_under(p)
        if not found:
            raise ConfigError(f"{p} is not a run or sweep folder: no run folder in it at any depth ({RUN_FOLDER})")
        folders += found
    rows: list[RunRow] = []
    unfinished: list[Path] = []
    seen: set[Path] = set()
    for d in folders:
        if d.resolve() in seen:
            continue
        seen.add(d.resolve())
        got = _read_run(d)
        rows += got
        if not got:
            unfinished.append(d)
    if not rows:
        shown = ", ".join(str(d) for d in unfinished[:5]) or ", ".join(map(str, paths))
        raise ConfigError(f"no finished runs in {shown}: {RUN_FOLDER} (or, for IMP, level_NN/report.json)")
    _unique_names(rows)
    return rows, unfinished


def is_run(d: Path) -> bool:
    return (d / runs.REPORT).is_file() or (d / runs.CONFIG).is_file()


def _runs_under(d: Path) -> list[Path]:
    out = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [sub] if is_run(sub) else _runs_under(sub)
    return out


def _read_run(d: Path) -> list[RunRow]:
    """The rows of one run folder: one, one per finished IMP level, or none while unfinished."""
    own, parent = d / runs.CONFIG, d.parent / runs.CONFIG  # an IMP level's config is its run's
    config = read_config(own) if own.is_file() else read_config(parent) if parent.is_file() else None
    report = read_report(d / runs.REPORT) if (d / runs.REPORT).is_file() else None
    level_dirs = sorted(p for p in d.glob("level_[0-9]*") if (p / runs.REPORT).is_file())
    if report is None and not level_dirs:
        return []
    if report is None or report.levels:  # IMP, finished or not: one row per finished level
        by_level = {lv.level: lv for lv in (report.levels if report else [])}
        rows = []
        for p in level_dirs:
            level = read_report(p / runs.REPORT)
            by_level.pop(level.level, None)
            rows.append(_row(p, f"{d.name}/{p.name}", level, config))
        for lv in by_level.values():  # a level folder gone: its profile is still in the run's report
            gone = RunReport(run=f"level_{lv.level:02d}", data=report.data, synthetic_data=report.synthetic_data,
                             method=report.method, options=report.options, level=lv.level, density=lv.density,
                             profile=lv.profile)
            rows.append(_row(d / gone.run, f"{d.name}/{gone.run}", gone, config))
        return sorted(rows, key=lambda r: r.name)
    return [_row(d, d.name, report, config)]


def _row(d: Path, name: str, report: RunReport, config: RunConfig | None) -> RunRow:
    profile, details = report.profile, report.details
    label = describe(report.method, report.options, level=report.level, density=report.density,
                     source=report.source, target=(report.budget or {}).get("target"))
    plain = json.loads(json.dumps(config.to_dict(), default=str)) if config else {}
    return RunRow(
        name=name, path=d, data=(report.data or profile.accuracy_data or "unknown")
        + (f" ({report.data_copy})" if report.data_copy else ""),
        # a NeuroFlux run's model is an exit of its base model: it stands beside backpropagation of that model
        synthetic=report.synthetic_data, model=config.model if config and _names_base_model(config.command) else
        profile.model, method=label.method,
        variant=label.variant, options=label.options, options_full=report.options,
        sparsity_requested=label.sparsity_requested, profile=profile,
        prune_seconds=report.prune_seconds if report.prune_seconds is not None else details.get("shrink_seconds"),
        train_seconds=(report.train or {}).get("seconds"), training=_training(plain),
        model_kwargs=plain.get("model_kwargs", {}),
        layers=details.get("layers", []), groups=details.get("groups", []),
        dense_layers={r["layer"]: r["shape"] for r in (details.get("pai") or {}).get("layers", [])},
        source=report.source, steps=details.get("steps", []), kept_step=details.get("kept_step"),
        budget=json.dumps({k: plain.get(k) for k in ("data", "train", "model_kwargs")}, sort_keys=True),
    )


def _names_base_model(command: str) -> bool:
    kind = kinds.find(command)
    return kind is not None and kind.base_model


def _training(config: dict) -> Training:
    data = config.get("data") or {}
    t = dict(config.get("train") or {})
    seed = t.pop("seed", None)
    if t.get("precision", "fp32") == "fp32":  # the default, and what runs recorded before there was a choice
        t.pop("precision", None)
    key = (json.dumps(config.get("data"), sort_keys=True), json.dumps(t, sort_keys=True))
    data_text = ", ".join(f"{k} {v}" for k, v in sorted(data.items()) if k not in ("name", "root")) or "all of it"
    if not t:
        return Training(data_text, "", seed, key)
    text = (f"{t.get('epochs')} epoch(s), SGD lr {t.get('lr')} (momentum {t.get('momentum')}, weight decay "
            f"{t.get('weight_decay')}), {t.get('schedule')} schedule")
    if t.get("steps_per_epoch"):
        text += f", at most {t['steps_per_epoch']} batches per epoch"
    if t.get("warmup_epochs"):
        text += f", linear warm-up over {t['warmup_epochs']:g} epoch(s)"
    if t.get("label_smoothing"):
        text += f", label smoothing {t['label_smoothing']}"
    if t.get("precision"):
        text += f", {t['precision']} autocast"
    return Training(data_text, text, seed, key)


def _unique_names(rows: list[RunRow]) -> None:
    """Runs of different sweeps may share a folder name: name those by their parent folder too."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in rows:
        if counts[r.name] > 1:
            run_dir = r.path.parent if "/" in r.name else r.path  # an IMP level's run is its parent
            r.name = f"{run_dir.parent.name}/{r.name}"
