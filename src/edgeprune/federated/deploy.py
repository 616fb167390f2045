"""Federated rounds on Flower's Deployment Engine, on this machine: a SuperLink and one SuperNode per device, each a
process of its own (insecure, on loopback), the job submitted with `flwr run` to a SuperLink connection named in a
Flower Configuration (FLWR_HOME) made for the run, and every process stopped afterwards, also on failure.

The Flower App submitted is generated for the run (a pyproject.toml and an app.py that names `server` and `client`
below): the SuperLink runs the ServerApp and each SuperNode the ClientApp in processes of their own, as in a real
deployment; they read the job from a JSON file named in the run config and the ServerApp writes the result beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .. import reaper
from ..errors import EdgePruneError
from . import split as sp
from .apps import Job, Move, describe, serve_rounds, train_reply

ENGINE = "flower deployment (superlink + supernodes)"
TOOLS = ("flower-superlink", "flower-supernode", "flwr")

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgeprune-fl"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgeprune"

[tool.flwr.app.components]
serverapp = "app:server"
clientapp = "app:client"

[tool.flwr.app.config]
job = ""
"""
# assignments, not an import: `flwr run` finds the components by reading this file, before anything imports it
APP_PY = "from edgeprune.federated import deploy\n\nserver = deploy.server\nclient = deploy.client\n"


class EngineUnavailable(EdgePruneError):
    """Flower's Deployment Engine cannot start here."""


def write_job(path: Path, job: Job, test: dict | None) -> None:
    path.write_text(json.dumps({"job": asdict(job), "test": test}))


def read_job(path: Path) -> tuple[Job, dict | None]:
    d = json.loads(path.read_text())
    j = d["job"]
    job = Job(**{**j, "optim": sp.Optim(**j["optim"]), "moves": [Move(**m) for m in j["moves"]]})
    return job, d["test"]


server = ServerApp()


@server.main()
def _server_main(grid: Grid, context: Context) -> None:
    path = Path(str(context.run_config["job"]))
    job, test = read_job(path)
    evaluate = None
    if test is not None:
        from ..data import loaders
        from ..train import evaluate as evaluate_model

        loader = loaders(**{**test["data"], "batch_size": 500}, test_subset=test["test_subset"], augment=False).test

        def evaluate(model: torch.nn.Module) -> dict:
            return evaluate_model(model, loader)

    torch.save(serve_rounds(job, grid, evaluate=evaluate), path.with_suffix(".result.pt"))


client = ClientApp()


@client.train()
def _client_train(msg: Message, context: Context) -> Message:
    return train_reply(read_job(Path(str(context.run_config["job"])))[0], msg, context)


def tools() -> dict[str, str]:
    """Where Flower's binaries are (beside this Python first); EngineUnavailable names what is missing."""
    here = Path(sys.executable).parent
    found = {t: str(here / t) if (here / t).exists() else shutil.which(t) for t in TOOLS}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        raise EngineUnavailable(f"Flower's Deployment Engine needs {', '.join(missing)} on PATH; install the extra "
                                "(pip install 'edgeprune[fl]') or use --engine simulation")
    return found


def run(job: Job, test: dict | None = None, timeout_s: float = 900.0) -> dict:
    """Run `job` on a SuperLink and `job.devices` SuperNodes started here; returns the global model's state_dict,
    the round history (with the test accuracy of `test` = {data, test_subset} after each round) and the job."""
    exe = tools()
    with tempfile.TemporaryDirectory(prefix="edgeprune-flwr-") as tmp:
        folder = Path(tmp)
        (folder / "app").mkdir()
        (folder / "app" / "pyproject.toml").write_text(APP_PYPROJECT)
        (folder / "app" / "app.py").write_text(APP_PY)
        job_path = folder / "job.json"
        write_job(job_path, job, test)
        port = _free_port()
        (folder / "home").mkdir()
        (folder / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "run"\n\n[superlink.run]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        env = dict(os.environ, FLWR_HOME=str(folder / "home"),
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]))
        procs: list[tuple[subprocess.Popen, Path]] = []

        def start(cmd: list[str], name: str) -> None:
            log = folder / f"{name}.log"
            with open(log, "w") as f:  # a file, not a pipe: a long-lived server that logs would fill a pipe
                procs.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=folder), log))
            reaper.track_process(procs[-1][0].pid)

        try:
            start([exe["flower-superlink"], "--insecure", "--disable-runtime-dependency-installation",
                   "--port", str(port)], "superlink")
            _wait_for_port(port, procs[0], timeout_s=60)
            for k in range(job.devices):
                start([exe["flower-supernode"], "--insecure", "--superlink", f"127.0.0.1:{port}",
                       "--port", str(_free_port()), "--node-config", f"partition-id={k} num-partitions={job.devices}"],
                      f"supernode{k}")
            done = subprocess.run([exe["flwr"], "run", str(folder / "app"), "run", "--run-config",
                                   f"job='{job_path}'", "--stream"], env=env, cwd=folder, capture_output=True,
                                  text=True, timeout=timeout_s)
            result = job_path.with_suffix(".result.pt")
            if not result.exists():
                raise EdgePruneError(f"the Flower deployment run ended without a global model (flwr run exit "
                                     f"{done.returncode}): {(done.stdout + done.stderr).strip()[-400:]}")
            out = torch.load(result, weights_only=True)
        finally:
            stop(p for p, _ in procs)
    return {**out, "job": describe(job, ENGINE)}


def stop(procs) -> None:
    """Stop Flower's processes and everything they started (SuperExec runs detached, in a session of its own)."""
    procs = list(procs)
    pids = [pid for p in procs for pid in reaper.descendants(p.pid)]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in pids:  # those that outlived their parent
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        reaper.forget_process(p.pid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, started: tuple[subprocess.Popen, Path], timeout_s: float) -> None:
    proc, log = started
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"flower-superlink exited ({proc.returncode}): {log.read_text().strip()[-300:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise EngineUnavailable(f"flower-superlink did not listen on port {port} within {timeout_s:.0f} s")
