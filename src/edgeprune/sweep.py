"""Sweeps: a grid of runs (models × methods with their options × sparsities × seeds) from one YAML spec.

Every cell is an ordinary run folder `<out>/<cell>/`, made by the same job as `edgeprune train`/`prune`.
`<out>/sweep.json` holds the parsed spec and every cell's status, rewritten atomically as each cell lands;
`<out>/spec.yaml` is a copy of the spec. Re-running a spec skips finished cells (report.json present),
resumes interrupted ones from their checkpoint and redoes failed ones, so a killed sweep loses at most the
cells in flight.

Executors: `local` runs the cells one after another in this process; `ray` runs each cell as a Ray task,
on a local Ray instance or on a cluster (`address`) whose nodes all see `out` (shared storage).

    name: smoke                  # the folder: out, default runs/sweeps/<name>
    data: {name: fashion-mnist, subset: 1000, batch_size: 128}
    models: [resnet20, {name: vgg16, data: {subset: 500}}]   # an entry may override data and train
    train: {epochs: 1}
    measure: {runs: 10, memory: false}
    seeds: [0, 1]
    dense: true                  # a dense baseline per model and seed
    methods:
      - {name: magnitude, sparsities: [0.9, 0.95]}
      - {name: reconvene, criterion: [magnitude, synflow], conversion: [width, dead], sparsities: [0.9]}
      - {name: neuroflux, memory_budget: [64MiB, 96MiB]}   # training under a memory budget (no sparsity)
    resources: {cpus: 1, gpus: 0}   # what each cell asks Ray for
    quantize: {mode: static, calibration: 256, per_channel: true}   # or `quantize: int8` (static, defaults)

A list given for a method option expands the grid; `sparsities` is the list form of `sparsity`. Cells are
named `<model>-<method>-<options>-<sparsity>-seed<seed>` (e.g. resnet20-reconvene-synflow-width-0.9-seed0).
With `quantize`, every cell but those of per-level methods (IMP: quantise a level with `edgeprune quantize`)
gets an INT8 copy `<cell>-int8`, made as `edgeprune quantize` makes it once its cell has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from . import jobs, kinds, models, runs
from .errors import ConfigError, EdgePruneError, unknown_name
from .methods import registry
from .progress import Reporter, reporter
from .record import EXECUTION_FIELDS
from .train import TrainConfig

SPEC = "spec.yaml"
SWEEP = "sweep.json"
EXECUTORS = ("local", "ray")
NEEDS_RAY = "the ray executor needs Ray: pip install 'edgeprune[ray]'"
QUANTIZE_KEYS = ("mode", "calibration", "per_channel")
_BARE = ("criterion", "conversion")  # option values that name themselves in a cell name; sparsity comes last


def list_methods() -> list[str]:
    """Method names a sweep accepts: every registered method (methods.registry), and the run kinds a sweep may name
    (kinds/: NeuroFlux's training under a memory budget)."""
    return sorted([*registry.list_methods(), *kinds.names(in_sweeps=True)])


def _kind(name: str) -> str | None:
    """The pruning method's kind (None for a run kind of its own)."""
    return None if name in kinds.names(in_sweeps=True) else registry.get(name).kind


@dataclass
class Resources:
    """What each cell asks Ray for; a cell's torch uses `cpus` threads."""

    cpus: float = 1
    gpus: float = 0

    def __post_init__(self) -> None:
        for what, value, least in (("cpus", self.cpus, 0), ("gpus", self.gpus, -1)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= least:
                raise ConfigError(f"resources.{what} must be a number {'> 0' if least == 0 else '>= 0'}, "
                                  f"got {value!r}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass
class SweepSpec:
    """A parsed and validated sweep spec (see the module docstring); building it checks every cell."""

    name: str
    data: dict  # keyword arguments of edgeprune.data.loaders
    models: list  # names, or {name, data, train} that override the spec's data and train for that model
    methods: list[dict] = field(default_factory=list)  # {name: ..., sparsities: [...], **options}
    train: dict = field(default_factory=dict)  # TrainConfig fields but seed (see seeds)
    measure: dict = field(default_factory=dict)  # MeasureOptions fields
    seeds: list[int] = field(default_factory=lambda: [0])
    dense: bool = True  # a dense baseline cell per model and seed
    out: str | None = None  # None: runs/sweeps/<name>
    device: str = "cpu"
    resources: Resources = field(default_factory=Resources)
    quantize: dict | str | None = None  # "int8", or {mode, calibration, per_channel} of `edgeprune quantize`

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"name must be a folder name (letters, digits, . _ -), got {self.name!r}")
        if not isinstance(self.data, dict) or "name" not in self.data:
            raise ConfigError(f"data must be a mapping with the data set's name (e.g. {{name: fashion-mnist, "
                              f"subset: 1000}}), got {self.data!r}")
        if not isinstance(self.models, list) or not self.models:
            raise ConfigError(f"models must be a non-empty list of model names, got {self.models!r}")
        if not isinstance(self.methods, list) or not (self.methods or self.dense):
            raise ConfigError("methods must be a list of {name: ..., sparsities: [...]} (or set dense: true)")
        if not _list_of(self.seeds, int):
            raise ConfigError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        if isinstance(self.train, dict) and "seed" in self.train:
            raise ConfigError("train.seed: give the seeds as `seeds: [0, 1, ...]` instead")
        if not isinstance(self.dense, bool):
            raise ConfigError(f"dense must be true or false, got {self.dense!r}")
        if isinstance(self.resources, dict):
            self.resources = _build(Resources, self.resources, "resources")
        if self.quantize is not None and self.quantize != "int8" and not isinstance(self.quantize, dict):
            raise ConfigError(f"quantize must be int8 or a mapping of {', '.join(QUANTIZE_KEYS)}, "
                              f"got {self.quantize!r}")
        cells(self)  # every cell's options are checked here, before anything runs

    @property
    def folder(self) -> Path:
        return Path(self.out) if self.out else Path("runs", "sweeps", self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        if not isinstance(d, dict):
            raise ConfigError(f"a sweep spec is a mapping of {', '.join(cls.__dataclass_fields__)}; got {d!r}")
        _check_keys(d, cls.__dataclass_fields__, "the spec")
        missing = [k for k in ("name", "data", "models") if k not in d]
        if missing:
            raise ConfigError(f"the spec lacks {', '.join(missing)} (required: name, data, models)")
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its folder name under the sweep folder and its config."""

    name: str
    cfg: jobs.RunConfig


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML sweep spec; a bad key, method or option raises ConfigError naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep spec {path} is not valid YAML: {e}") from None
    try:
        return SweepSpec.from_dict(raw)
    except ConfigError as e:
        raise type(e)(f"sweep spec {path}: {e}") from None


def cells(spec: SweepSpec, folder: Path | None = None) -> list[Cell]:
    """Every (model × method with options × sparsity × seed) run of the spec, named stably. A method that
    starts from a trained run (kind "trained") starts from the dense cell of its model and seed in `folder`
    (default: the spec's)."""
    measure = _build(jobs.MeasureOptions, spec.measure, "measure")
    variants = [("dense", {})] if spec.dense else []
    for i, entry in enumerate(spec.methods):
        variants += _expand(entry, f"methods[{i}]")
        if _kind(entry["name"]) == "trained" and not spec.dense:
            raise ConfigError(f"methods[{i}] ({entry['name']}) starts from a trained run: set dense: true, so that "
                              "every model and seed has the dense cell it starts from")
    folder = Path(folder or spec.folder)

    def source(model: str, seed: int, method: dict) -> dict:
        if method and _kind(method["name"]) == "trained":
            return {**method, "source": str(folder / _folder_name(f"{model}-dense-seed{seed}"))}
        return dict(method)

    out = [
        Cell(_folder_name(f"{model}-{label}-seed{seed}"), jobs.RunConfig(
            command=kinds.of_method(method), model=model, data=data, train=TrainConfig(**train, seed=seed),
            measure=dataclasses.replace(measure), method=source(model, seed, method), device=spec.device))
        for model, data, train in _models(spec) for seed in spec.seeds for label, method in variants
    ]
    if spec.quantize is not None:
        q = {} if spec.quantize == "int8" else spec.quantize
        _check_keys(q, QUANTIZE_KEYS, "quantize")
        int8 = kinds.get("quantize").config  # the spec's `quantize` key: an INT8 copy of each cell
        out += [Cell(f"{c.name}-int8", int8(folder / c.name, **q, base=c.cfg)) for c in out
                if not (c.cfg.method and _kind(c.cfg.method["name"]) == "levels")]
    twice = [name for name, n in Counter(c.name for c in out).items() if n > 1]
    if twice:
        raise ConfigError(f"cells {', '.join(twice)} appear more than once; remove the repeated method entries")
    return out


def _stages(todo: list[Cell]) -> dict[str, int]:
    """Each cell's stage: 0 for a cell on its own, else one more than the cell whose run it starts from."""
    stages: dict[str, int] = {}
    for c in todo:  # cells() lists a cell after the one it starts from
        source = c.cfg.method.get("source")
        stages[c.name] = 0 if source is None else stages.get(Path(source).name, -1) + 1
    return stages


def _models(spec: SweepSpec) -> list[tuple[str, dict, dict]]:
    """(model, data, train) of every models entry: a name, or {name, data, train} over the spec's own."""
    known, out = models.list_models(), []
    for i, entry in enumerate(spec.models):
        where = f"models[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        _check_keys(entry, ("name", "data", "train"), where)
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where} must be a model name or {{name: ..., data: {{...}}, train: {{...}}}}; "
                              f"got {entry!r}")
        if ":" not in name and name not in known:  # a package.module:function factory is imported when run
            raise unknown_name("model", name, known, f"in {where}")
        models.require_task(name, "classify", f"a sweep ({where})")
        data, train = ({**base, **_mapping(entry.get(k, {}), f"{where}.{k}")}
                       for k, base in (("data", spec.data), ("train", spec.train)))
        if "seed" in train:
            raise ConfigError(f"{where}.train.seed: give the seeds as `seeds: [0, 1, ...]` instead")
        _build(TrainConfig, train, f"{where}.train" if "train" in entry else "train")
        out.append((name, data, train))
    return out


def _expand(entry: dict, where: str) -> list[tuple[str, dict]]:
    """(label, method config) for every combination of the listed options of one method entry."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where} must be a mapping with a name, e.g. {{name: synflow, sparsities: [0.9]}}; "
                          f"got {entry!r}")
    name = entry["name"]
    if name not in list_methods():
        raise ConfigError(f"{where}: unknown method {name!r}; allowed: {', '.join(list_methods())}")
    kind = kinds.find(name)
    if kind is not None and kind.in_sweeps:  # a run kind of its own (NeuroFlux's), its options the entry's keys
        fields, check = {f.name: f for f in dataclasses.fields(kind.options)}, kind.make_options
    else:
        fields, check = registry.get(name).option_fields(), registry.options_of
    opts = {k: v for k, v in entry.items() if k != "name"}
    _check_keys(opts, [*fields, *(["sparsities"] if "sparsity" in fields else [])], f"{where} ({name}) option")
    if "sparsities" in opts:
        if "sparsity" in opts:
            raise ConfigError(f"{where} ({name}): give sparsity or sparsities, not both")
        opts["sparsity"] = opts.pop("sparsities")
    order = ([k for k in _BARE if k in opts] + sorted(k for k in opts if k not in (*_BARE, "sparsity"))
             + ["sparsity"] * ("sparsity" in opts))
    axes = []
    for k in order:
        grid = isinstance(opts[k], list) and not str(fields[k].type).startswith("list")
        if grid and not opts[k]:
            raise ConfigError(f"{where} ({name}): {k} is an empty list")
        axes.append(opts[k] if grid else [opts[k]])
    out = []
    for values in itertools.product(*axes):
        method = {"name": name, **dict(zip(order, values, strict=True))}
        try:
            check(method)
        except ConfigError as e:
            raise type(e)(f"{where} ({name}): {e}") from None
        parts = [_text(v) if k in _BARE or k == "sparsity" else f"{k}={_text(v)}"
                 for k, v in zip(order, values, strict=True)]
        out.append(("-".join([name, *parts]), method))
    return out


def run_sweep(spec_or_path: SweepSpec | str | Path, out: Path | None = None, executor: str = "local",
              address: str | None = None, progress: Reporter | None = None, connect_timeout: float = 15.0,
              num_cpus: int | None = None) -> dict:
    """Run every unfinished cell of a sweep; return the summary (also `<out>/sweep.json`).

    `address` joins a running Ray cluster (executor "ray"); without it a local Ray instance with `num_cpus`
    (default: all cores) runs the cells and is shut down after. The summary's `counts["failed"]` says how
    many cells failed; each failure is recorded with its error and does not stop the others. The cells are
    task "sweep <name>" of `progress`, and each finished cell a note. A second sweep into the same folder
    at the same time is refused.
    """
    report = reporter(progress)
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise ConfigError("an address joins a Ray cluster: pass --executor ray with it")
    if isinstance(spec_or_path, SweepSpec):
        spec, text = spec_or_path, yaml.safe_dump(spec_or_path.to_dict(), sort_keys=False)
    else:
        spec, text = load_spec(spec_or_path), Path(spec_or_path).read_text()
    if executor == "ray" and spec.device.startswith("cuda") and not spec.resources.gpus:
        raise ConfigError(f"device {spec.device!r} needs a GPU per cell: set resources.gpus (e.g. 1)")
    folder = Path(out or spec.folder).resolve()
    with runs.locked(folder, "sweep"):
        return _run_locked(spec, text, folder, executor, address, connect_timeout, num_cpus, report)


def _run_locked(spec: SweepSpec, text: str, folder: Path, executor: str, address: str | None,
                connect_timeout: float, num_cpus: int | None, report: Reporter) -> dict:
    todo = cells(spec, folder)
    before = _read_statuses(folder / SWEEP)
    plan = {c.name: _plan(c, folder / c.name, before.get(c.name)) for c in todo}

    t0 = time.perf_counter()
    summary = {"name": spec.name, "out": str(folder), "executor": executor, "address": address,
               "spec": spec.to_dict(), "started": _now(), "finished": None, "seconds": None, "counts": {},
               "cells": {}}
    for c in todo:
        summary["cells"][c.name] = {
            "command": c.cfg.command, "model": c.cfg.model, "method": c.cfg.method, "seed": c.cfg.train.seed,
            **({"status": "skipped", "seconds": before.get(c.name, {}).get("seconds")} if plan[c.name] == "finished"
               else {"status": "pending"}),
        }
    run = [(c, folder / c.name, plan[c.name] == "resume") for c in todo if plan[c.name] != "finished"]

    def save() -> None:
        summary["counts"] = dict(Counter(r["status"] for r in summary["cells"].values()))
        runs.write_json(folder / SWEEP, summary)

    task, done = f"sweep {spec.name}", len(todo) - len(run)
    with _executor(executor, spec.resources, address, connect_timeout, num_cpus) as execute:
        report.update(task, done, len(todo))
        folder.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(folder / SPEC, lambda f: f.write(text), binary=False)
        save()

        def record(cell: Cell, result: dict) -> None:
            nonlocal done
            summary["cells"][cell.name].update(result)
            save()
            if result["status"] != "running":
                done += 1
                report.update(task, done, len(todo))
                error = result.get("error")
                report.note(f"{result['status']:>7} {cell.name} ({result['seconds']:.1f} s)"
                            + (f": {error['type']}: {error['message']}" if error else ""))

        # a cell that starts from another cell's run (a trained-run method from the dense cell, an INT8 copy from
        # its cell) waits for it: the cells run in stages of that dependency (a Ray executor runs a batch at once)
        stages = _stages(todo)
        for stage in sorted(set(stages.values())):
            execute([r for r in run if stages[r[0].name] == stage], record)
    summary["finished"], summary["seconds"] = _now(), time.perf_counter() - t0
    save()
    report.end(task)
    return summary


def run_cell(cell: Cell, run_dir: Path, resume: bool = False) -> dict:
    """Run one cell into `run_dir` (resuming it, or replacing what is there); a failure is returned, not raised."""
    started, t0 = _now(), time.perf_counter()
    try:
        jobs.run(cell.cfg, run_dir, overwrite=not resume, resume=resume, progress=False)
    except Exception as e:  # recorded in sweep.json; the other cells go on
        return {**_failure(e), "started": started, "seconds": time.perf_counter() - t0}
    return {"status": "done", "resumed": resume, "error": None, "started": started,
            "seconds": time.perf_counter() - t0}


def _failure(e: BaseException) -> dict:
    return {"status": "failed", "error": {"type": type(e).__name__, "message": str(e),
                                          "traceback": "".join(traceback.format_exception(e)[-6:])}}


def _plan(cell: Cell, run_dir: Path, before: dict | None) -> str:
    """finished | resume | fresh; a finished cell run with another config stops the sweep before it starts."""
    if not run_dir.exists():
        return "fresh"
    changed = _changed(cell.cfg, run_dir)
    if (run_dir / runs.REPORT).exists():
        if changed:
            raise ConfigError(f"{run_dir} is a finished run with a different {', '.join(changed)} than cell "
                              f"{cell.name} of this spec; write the sweep to another --out, or delete that folder")
        return "finished"
    failed = (before or {}).get("status") == "failed"  # a failed cell starts again; an interrupted one resumes
    progress = any(run_dir.rglob(runs.CHECKPOINT)) or any(run_dir.glob(f"*/{runs.REPORT}"))  # IMP: its levels
    return "resume" if (run_dir / runs.CONFIG).is_file() and changed == [] and progress and not failed else "fresh"


def _changed(cfg: jobs.RunConfig, run_dir: Path) -> list[str] | None:
    """The config fields in which `run_dir` differs from `cfg` (None: it records no config)."""
    if not (run_dir / runs.CONFIG).is_file():
        return None
    try:
        old = _plain(jobs.RunConfig.from_dict(runs.read_json(run_dir / runs.CONFIG)))
    except EdgePruneError:
        return ["config.json (unreadable)"]
    new = _plain(cfg)
    return [k for k in new if k not in EXECUTION_FIELDS and old.get(k) != new[k]]


def _plain(cfg: jobs.RunConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


# Executors: a context (connect, clean up) yielding execute([(cell, run_dir, resume)], record).

Execute = Callable[[list[tuple[Cell, Path, bool]], Callable[[Cell, dict], None]], None]


@contextlib.contextmanager
def _executor(kind: str, resources: Resources, address: str | None, connect_timeout: float,
              num_cpus: int | None) -> Iterator[Execute]:
    if kind == "local":
        yield _run_local
        return
    try:
        import ray
    except ImportError:
        raise ConfigError(NEEDS_RAY) from None
    started = not ray.is_initialized()
    if started:
        if address:
            _check_reachable(address, connect_timeout)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            # Workers of a local instance import what this process can (a user's package.module:function
            # model, say): give them its import path.
            path = os.pathsep.join(p for p in sys.path if p)
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        _check_fits(ray, resources)
        yield lambda todo, record: _run_ray(ray, resources, todo, record)
    finally:
        if started:
            ray.shutdown()


def _run_local(todo: list[tuple[Cell, Path, bool]], record: Callable[[Cell, dict], None]) -> None:
    for cell, run_dir, resume in todo:
        record(cell, {"status": "running", "started": _now()})
        record(cell, run_cell(cell, run_dir, resume))


def _run_ray(ray, resources: Resources, todo: list[tuple[Cell, Path, bool]],
             record: Callable[[Cell, dict], None]) -> None:
    task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus)(_ray_cell)
    pending = {task.remote(cell, run_dir, resume, resources.threads): cell for cell, run_dir, resume in todo}
    t0 = time.perf_counter()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # the task's worker died (killed, out of memory): the cell failed
                result = {**_failure(e), "seconds": time.perf_counter() - t0}
            record(cell, result)
    finally:
        for ref in pending:  # interrupted: the cells in flight are lost, the rest never start
            ray.cancel(ref, force=True)


def _ray_cell(cell: Cell, run_dir: Path, resume: bool, threads: int) -> dict:
    # the CPUs Ray gave the cell, not what looks free on a node that other cells share
    return run_cell(dataclasses.replace(cell, cfg=dataclasses.replace(cell.cfg, threads=str(threads))), run_dir,
                    resume)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast on a cluster address that does not answer (ray.init would retry against it for minutes)."""
    if address != "auto":
        host, _, port = address.split("://", 1)[-1].rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or "
                              "ray://10.0.0.5:10001 for Ray Client)")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as e:
            raise ConfigError(f"cannot reach the Ray cluster at {address} ({e}); check the address and that "
                              "`ray start --head` runs there") from None
    # Something answers; whether it is Ray is found out in a child process that can be stopped.
    probe = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, logging_level=40)"
    try:
        done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"no Ray cluster answered at {address} within {timeout:.0f} s; check that the address "
                          "is the head node's (GCS port 6379 by default)") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigError(f"cannot join the Ray cluster at {address}: {last}")


def _check_fits(ray, resources: Resources) -> None:
    """A cell no node can hold would wait forever: refuse it now."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= resources.cpus and n.get("GPU", 0) >= resources.gpus for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPUs/{n.get('GPU', 0):g} GPUs" for n in nodes) or "no live nodes"
        raise ConfigError(f"each cell asks for {resources.cpus:g} CPUs and {resources.gpus:g} GPUs, but no Ray "
                          f"node has that ({have}); lower resources in the spec")


# Small helpers.

def _read_statuses(path: Path) -> dict:
    try:
        return runs.read_json(path).get("cells", {})
    except EdgePruneError:
        return {}


def _build(cls, values: dict, where: str):
    _check_keys(values, cls.__dataclass_fields__, where)
    return cls(**values)


def _mapping(values, where: str) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    return values


def _check_keys(values: dict, allowed: Iterable[str], where: str) -> None:
    _mapping(values, where)
    allowed = list(allowed)
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(allowed)}")


def _list_of(values, kind: type) -> bool:
    return (isinstance(values, list) and bool(values) and len(set(values)) == len(values)
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in values))


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
