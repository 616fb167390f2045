"""Executors: a context (connect, clean up) yielding execute([(cell, run_dir, resume)], record). `local` runs the
cells one after another in this process; `ray` runs each cell as a Ray task, on a local Ray instance or a cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import jobs, runs
from ..errors import ConfigError
from .spec import Cell, Resources

EXECUTORS = ("local", "ray")
NEEDS_RAY = "the ray executor needs Ray: pip install 'edgeprune[ray]'"

Execute = Callable[[list[tuple[Cell, Path, bool]], Callable[[Cell, dict], None]], None]


def run_cell(cell: Cell, run_dir: Path, resume: bool = False) -> dict:
    """Run one cell into `run_dir` (resuming it, or replacing what is there); a failure is returned, not raised."""
    started, t0 = stamp(), time.perf_counter()
    if not resume and (run_dir / runs.REPORT).exists():  # finished since the sweep planned it (a GPU's cell unpacked)
        return {"status": "skipped", "error": None, "started": started, "seconds": 0.0}
    try:
        jobs.run(cell.cfg, run_dir, overwrite=not resume, resume=resume, progress=False)
    except Exception as e:  # recorded in sweep.json; the other cells go on
        return {**_failure(e), "started": started, "seconds": time.perf_counter() - t0}
    return {"status": "done", "resumed": resume, "error": None, "started": started,
            "seconds": time.perf_counter() - t0}


def _failure(e: BaseException, worker: bool = False) -> dict:
    """A failed cell's record; `worker`: the process running it died (the run itself raised nothing), so what it
    checkpointed is sound and the next sweep resumes from it instead of starting it again."""
    error = {"type": type(e).__name__, "message": str(e), "traceback": "".join(traceback.format_exception(e)[-6:])}
    return {"status": "failed", "error": {**error, "worker_died": True} if worker else error}


@contextlib.contextmanager
def start(kind: str, resources: Resources, address: str | None, connect_timeout: float,
          num_cpus: int | None) -> Iterator[Execute]:
    if kind == "local":
        yield _run_local
        return
    try:
        import ray
    except ImportError:
        raise ConfigError(NEEDS_RAY) from None
    started = not ray.is_initialized()
    # ray.init makes SIGTERM exit the driver (SystemExit); a handler the caller chose (the CLI's, which stops the
    # sweep as Ctrl-C does) is put back after it.
    chosen = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
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
    if callable(chosen):
        signal.signal(signal.SIGTERM, chosen)
    try:
        _check_fits(ray, resources)
        yield lambda todo, record: _run_ray(ray, resources, todo, record)
    finally:
        if started:
            ray.shutdown()


def _run_local(todo: list[tuple[Cell, Path, bool]], record: Callable[[Cell, dict], None]) -> None:
    for cell, run_dir, resume in todo:
        record(cell, {"status": "running", "started": stamp()})
        record(cell, run_cell(cell, run_dir, resume))


def _run_ray(ray, resources: Resources, todo: list[tuple[Cell, Path, bool]],
             record: Callable[[Cell, dict], None]) -> None:
    # Each cell is a generator task: its first value says it has started (sweep.json marks it running, as the
    # local executor does), its second is the result.
    # No retries: Ray would start a cell whose worker it lost again from its first plan (from scratch, for a fresh
    # cell), while a worker it lost for being unresponsive may still be training into the same folder. The cell is
    # recorded failed instead, marked as its worker's failure, and the next sweep resumes it from its last epoch.
    task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0)(_ray_cell)
    pending = {task.remote(cell, run_dir, resume, resources.threads): cell for cell, run_dir, resume in todo}
    t0 = time.perf_counter()
    try:
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            cell = pending[ready]
            try:
                result = ray.get(next(ready))
            except StopIteration:  # the task ended without a result (cannot happen: _ray_cell yields two)
                result = {"status": "failed", "seconds": time.perf_counter() - t0,
                          "error": {"type": "RuntimeError", "message": "the task returned nothing", "traceback": ""}}
            except Exception as e:  # the task's worker died (killed, out of memory), or Ray could not run it
                result = {**_failure(e, worker=_worker_died(ray, e)), "seconds": time.perf_counter() - t0}
            if result["status"] != "running":
                pending.pop(ready)
            record(cell, result)
    finally:
        for ref in pending:  # interrupted: the cells in flight are lost, the rest never start
            ray.cancel(ref, force=True)


def _worker_died(ray, e: BaseException) -> bool:
    """Whether Ray lost the process or node running a cell (killed, out of memory), as against a task that raised
    or could not start: only then is what the run checkpointed sound to resume from."""
    lost = tuple(getattr(ray.exceptions, name) for name in ("WorkerCrashedError", "OutOfMemoryError",
                                                            "NodeDiedError", "LocalRayletDiedError")
                 if hasattr(ray.exceptions, name))
    return isinstance(e, lost)


def _ray_cell(cell: Cell, run_dir: Path, resume: bool, threads: int) -> Iterator[dict]:
    yield {"status": "running", "started": stamp()}
    # the CPUs Ray gave the cell, not what looks free on a node that other cells share
    yield run_cell(dataclasses.replace(cell, cfg=dataclasses.replace(cell.cfg, threads=str(threads))), run_dir,
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

def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
