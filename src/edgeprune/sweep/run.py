"""Running a sweep: what each cell needs (skip a finished one, resume an interrupted one, redo a failed one),
the cells in stages of which starts from which, and `sweep.json` rewritten as each cell lands."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import signal
import time
from collections import Counter
from pathlib import Path

import yaml

from .. import files, jobs, runs, signals
from ..errors import ConfigError, EdgePruneError
from ..progress import Reporter, reporter
from ..record import EXECUTION_FIELDS
from ..train import check_device
from . import executors
from .executors import EXECUTORS, stamp
from .spec import Cell, SweepSpec, cells, load_spec

SPEC = "spec.yaml"
SWEEP = "sweep.json"


def run_sweep(spec_or_path: SweepSpec | str | Path, out: Path | None = None, executor: str = "local",
              address: str | None = None, progress: Reporter | None = None, connect_timeout: float = 15.0,
              num_cpus: int | None = None, only: list[str] | None = None, device: str | None = None,
              first: list[str] | None = None) -> dict:
    """Run every unfinished cell of a sweep; return the summary (also `<out>/sweep.json`).

    `address` joins a running Ray cluster (executor "ray"); without it a local Ray instance with `num_cpus`
    (default: all cores) runs the cells and is shut down after. `only` (shell-style patterns of cell names, e.g.
    "vgg16-*") runs just the unfinished cells matching one, with the cells they start from; the rest stay as they
    are, "not selected" in the summary. `first` (patterns too) runs the cells matching them before the others,
    those of the first pattern first, with the cells they start from; the rest follow in the spec's order.
    `device` runs the cells on that device instead of the spec's (a finished
    cell counts as finished whichever device it ran on). The summary's `counts["failed"]` says how
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
    if device is not None:
        check_device(device, "--device")
    folder = Path(out or spec.folder).resolve()
    todo = [c if device is None else Cell(c.name, dataclasses.replace(c.cfg, device=device))
            for c in cells(spec, folder)]
    picked = _select(todo, only) if only else {c.name for c in todo}
    ranks = _ranks(todo, first or [])
    with runs.locked(folder, "sweep"):
        return _run_locked(spec, text, folder, todo, picked, ranks, executor, address, connect_timeout, num_cpus,
                           report)


def _matching(todo: list[Cell], patterns: list[str], flag: str) -> list[set[str]]:
    """The names of the cells each of `patterns` (fnmatch) matches; a pattern matching none is refused."""
    matched = [{c.name for c in todo if fnmatch.fnmatchcase(c.name, p)} for p in patterns]
    unmatched = [p for p, m in zip(patterns, matched, strict=True) if not m]
    if unmatched:
        some = ", ".join(c.name for c in todo[:3])
        raise ConfigError(f"{flag} {unmatched[0]!r} matches no cell of this spec (cells are named like {some}); "
                          "quote the pattern so the shell leaves its * alone")
    return matched


def _ranks(todo: list[Cell], patterns: list[str]) -> dict[str, tuple[int, int]]:
    """Each cell's place in line from `patterns`: (its chain's rank, its own). A cell's own rank is the index of
    the first pattern that it or a cell starting from it matches (a cell's sources go when it does), len(patterns)
    if none does; its chain's rank is the best own rank in the chain."""
    matched = _matching(todo, patterns, "--first")
    own = {c.name: next((i for i, names in enumerate(matched) if c.name in names), len(patterns)) for c in todo}
    for c in reversed(todo):  # cells() lists a cell after the one it starts from: children before their source
        source = _source(c)
        if source in own:
            own[source] = min(own[source], own[c.name])
    roots = _roots(todo)
    chain: dict[str, int] = {}
    for c in todo:
        chain[roots[c.name]] = min(chain.get(roots[c.name], len(patterns)), own[c.name])
    return {c.name: (chain[roots[c.name]], own[c.name]) for c in todo}


def _select(todo: list[Cell], patterns: list[str]) -> set[str]:
    """The names of the cells matching one of `patterns` (fnmatch), with the cells they start from."""
    picked = set().union(*_matching(todo, patterns, "--only"))
    for c in reversed(todo):  # cells() lists a cell after the one it starts from
        if c.name in picked and _source(c):
            picked.add(_source(c))
    return picked


def _run_locked(spec: SweepSpec, text: str, folder: Path, todo: list[Cell], picked: set[str],
                ranks: dict[str, tuple[int, int]], executor: str, address: str | None, connect_timeout: float,
                num_cpus: int | None, report: Reporter) -> dict:
    before = _read_statuses(folder / SWEEP)
    # cells not selected are only looked at, never refused: a finished one counts, the rest wait
    plan = {c.name: _plan(c, folder / c.name, before.get(c.name)) if c.name in picked
            else "finished" if (folder / c.name / runs.REPORT).exists() else "not selected" for c in todo}

    t0 = time.perf_counter()
    summary = {"name": spec.name, "out": str(folder), "executor": executor, "address": address,
               "spec": spec.to_dict(), "started": stamp(), "finished": None, "seconds": None, "counts": {},
               "cells": {}}
    for c in todo:
        summary["cells"][c.name] = {
            "command": c.cfg.command, "model": c.cfg.model, "method": c.cfg.method, "seed": c.cfg.train.seed,
            **({"status": "skipped", "seconds": before.get(c.name, {}).get("seconds")} if plan[c.name] == "finished"
               else {"status": "pending"} if c.name in picked
               # what an earlier sweep recorded stays (a failure and its error), for the run that selects it
               else {"status": "not selected", "earlier": _earlier(before.get(c.name))}),
        }
    run = [(c, folder / c.name, plan[c.name] == "resume") for c in todo if plan[c.name] in ("resume", "fresh")]
    gpu = sorted({c.cfg.device for c, _, _ in run if c.cfg.device.startswith("cuda")})  # finished cells need none
    if executor == "ray" and gpu and not spec.resources.gpus:
        raise ConfigError(f"device {gpu[0]!r} needs a GPU per cell: set resources.gpus (e.g. 1)")

    def save() -> None:
        summary["counts"] = dict(Counter(r["status"] for r in summary["cells"].values()))
        files.write_json(folder / SWEEP, summary)

    task, done = f"sweep {spec.name}", len(todo) - len(run)
    with executors.start(executor, spec.resources, address, connect_timeout, num_cpus) as execute:
        report.update(task, done, len(todo))
        folder.mkdir(parents=True, exist_ok=True)
        files.atomic_write(folder / SPEC, lambda f: f.write(text), binary=False)
        save()

        def record(cell: Cell, result: dict) -> None:
            nonlocal done
            result = _with_deaths(result, _earlier(before.get(cell.name)))
            summary["cells"][cell.name].update(result)
            save()
            if result["status"] != "running":
                done += 1
                report.update(task, done, len(todo))
                error = result.get("error")
                report.note(f"{result['status']:>7} {cell.name} ({result['seconds']:.1f} s)"
                            + (f": {error['type']}: {error['message']}" if error else ""))

        try:
            for batch in _batches(todo, run, executor, ranks):
                execute(batch, record)
        except BaseException as e:  # Ctrl-C, SIGTERM: the cells in flight say so, and resume on the next run
            with signals.handled_by(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C waits
                stopped = [n for n, r in summary["cells"].items()
                           if r["status"] == "running" and not (folder / n / runs.REPORT).exists()]
                for name in stopped:
                    earlier = _earlier(before.get(name))
                    if earlier.get("status") == "failed":  # a failed cell being redone: it starts again next time
                        summary["cells"][name] = {**summary["cells"][name], **earlier}
                    else:
                        summary["cells"][name].update(status="interrupted", interrupted=stamp())
                save()
                if stopped:
                    e.add_note(f"{len(stopped)} cell(s) stopped mid-run ({', '.join(stopped)}); the same sweep "
                               "command resumes them (from their last finished epoch, where one was saved)")
            raise
    summary["finished"], summary["seconds"] = stamp(), time.perf_counter() - t0
    save()
    report.end(task)
    return summary


def _batches(todo: list[Cell], run: list, executor: str,
             ranks: dict[str, tuple[int, int]] | None = None) -> list[list]:
    """The cells to run, in the batches the executor gets them. A cell that starts from another cell's run (a
    trained-run method from the dense cell, an INT8 copy from its cell) waits for it. Ray runs a whole stage of
    that dependency at once, one stage after another; one at a time (local), each chain (a model and seed's dense
    run, what starts from it, their INT8 copies) finishes before the next chain starts, in the spec's order, so a
    cheap model's cells are all done before an expensive model's first epoch. `ranks` (from --first) goes before
    both: the chains it puts first go first, and within a chain or a Ray stage the cells it puts first (Ray starts
    tasks of one shape in the order given). With Ray a stage still waits for the one before it."""
    stages, roots, ranks = _stages(todo), _roots(todo), ranks or {}
    place = {c.name: i for i, c in enumerate(todo)}
    rank = lambda name: ranks.get(name, (0, 0))  # noqa: E731
    if executor == "local":
        first: dict[str, int] = {}  # each chain's place: where its first cell is listed
        for i, c in enumerate(todo):
            first.setdefault(roots[c.name], i)
        return [sorted(run, key=lambda r: (rank(r[0].name)[0], first[roots[r[0].name]], stages[r[0].name],
                                           rank(r[0].name)[1], place[r[0].name]))] if run else []
    return [sorted((r for r in run if stages[r[0].name] == stage), key=lambda r: (*rank(r[0].name), place[r[0].name]))
            for stage in sorted(set(stages.values()))]


def _roots(todo: list[Cell]) -> dict[str, str]:
    """Each cell's chain: the cell that the cells it starts from start from, or itself."""
    roots: dict[str, str] = {}
    for c in todo:  # cells() lists a cell after the one it starts from
        source = _source(c)
        roots[c.name] = c.name if source is None else roots.get(source, source)
    return roots


def _stages(todo: list[Cell]) -> dict[str, int]:
    """Each cell's stage: 0 for a cell on its own, else one more than the cell whose run it starts from."""
    stages: dict[str, int] = {}
    for c in todo:  # cells() lists a cell after the one it starts from
        source = _source(c)
        stages[c.name] = 0 if source is None else stages.get(source, -1) + 1
    return stages


def _source(cell: Cell) -> str | None:
    """The name of the cell whose run `cell` starts from (a Taylor run's dense cell, an INT8 copy's cell)."""
    source = cell.cfg.method.get("source")
    return None if source is None else Path(source).name


def _plan(cell: Cell, run_dir: Path, before: dict | None) -> str:
    """finished | resume | fresh; a finished cell run with another config stops the sweep before it starts."""
    if not run_dir.exists():
        return "fresh"
    changed = _changed(cell.cfg, run_dir)
    if (run_dir / runs.REPORT).exists():
        # A finished cell is finished wherever it ran (a GPU machine's cells brought back to a CPU one, say);
        # an interrupted one resumes only on the device it started on.
        changed = [k for k in changed or [] if k != "device"]
        if changed:
            raise ConfigError(f"{run_dir} is a finished run with a different {', '.join(changed)} than cell "
                              f"{cell.name} of this spec; write the sweep to another --out, or delete that folder")
        return "finished"
    # a failed cell starts again; an interrupted one resumes, as does one whose worker died under it
    earlier = _earlier(before)
    failed = earlier.get("status") == "failed" and not (earlier.get("error") or {}).get("worker_died")
    # what a resumed run goes on from in place: its epochs, or the pruning result of a cell stopped before its
    # first epoch (a cell started again instead would train in a staging copy that the next stop throws away whole)
    progress = runs.has_progress(run_dir) or (run_dir / runs.PRUNED).is_file()
    if changed == ["device"] and progress and not failed:
        old = files.read_json(run_dir / runs.CONFIG).get("device")
        raise ConfigError(f"{run_dir} was interrupted while training on {old}; resume it there (--device {old}), "
                          f"or delete that folder to start it again on {cell.cfg.device}")
    return "resume" if (run_dir / runs.CONFIG).is_file() and changed == [] and progress and not failed else "fresh"


MAX_WORKER_DEATHS = 3  # a cell whose worker dies this many times in a row starts again instead of resuming


def _with_deaths(result: dict, earlier: dict) -> dict:
    """A cell's result with its worker deaths counted. A cell that failed on its own and was being redone keeps
    that failure when its worker dies (it was not training in its own folder: nothing there to resume); a cell
    whose worker keeps dying stops being resumed after MAX_WORKER_DEATHS."""
    error = result.get("error") or {}
    if result.get("status") != "failed" or not error.get("worker_died"):
        return result
    before = earlier.get("error") or {}
    if earlier.get("status") == "failed" and not before.get("worker_died"):
        return {**result, "error": before}
    deaths = (before.get("worker_deaths", 1) if before.get("worker_died") else 0) + 1
    error = {**error, "worker_deaths": deaths}
    if deaths >= MAX_WORKER_DEATHS:
        error.update(worker_died=False, message=f"{error['message']} (its worker died {deaths} times in a row: "
                                                "it starts again next time)")
    return {**result, "error": error}


def _earlier(status: dict | None) -> dict:
    """A cell's last status that says what happened to it (a "not selected" entry keeps the one before)."""
    status = status or {}
    return status.get("earlier") or {} if status.get("status") == "not selected" else status


def _changed(cfg: jobs.RunConfig, run_dir: Path) -> list[str] | None:
    """The config fields in which `run_dir` differs from `cfg` (None: it records no config)."""
    if not (run_dir / runs.CONFIG).is_file():
        return None
    try:
        old = _plain(jobs.RunConfig.from_dict(files.read_json(run_dir / runs.CONFIG)))
    except EdgePruneError:
        return ["config.json (unreadable)"]
    new = _plain(cfg)
    return [k for k in new if k not in EXECUTION_FIELDS and old.get(k) != new[k]]


def _plain(cfg: jobs.RunConfig) -> dict:
    """The config as JSON values; a source run (a cell of the same sweep) by its folder's name, so that a sweep
    folder moved or carried to another checkout still finds its finished cells the same."""
    plain = json.loads(json.dumps(cfg.to_dict(), default=str))
    method = plain.get("method")
    if isinstance(method, dict) and isinstance(method.get("source"), str):
        method["source"] = Path(method["source"]).name
    return plain


def _read_statuses(path: Path) -> dict:
    try:
        return files.read_json(path).get("cells", {})
    except EdgePruneError:
        return {}

