"""The fixed cost of one request between tiers, measured on the transport `partition run` uses.

Each hop of a split run is an HTTP request (httpx client, FastAPI/uvicorn tier server, the activation's bytes as the
body, offload.make_app): besides the bytes on the link and the link's RTT, it costs the sender's client work and the
receiver's server work (parsing, the thread hand-off, the answer). At millisecond model scales that cost is most of a
split's time: leaving it out made the planner 2.3-4.4x too low.

`measure` times a tiny tensor's round trip over loopback to a pass-through tier server (`offload serve` without a
model), the median of `runs` requests, in three arrangements taking turns: this tier as the client (`send_ms`, its
server free), this tier as the server (`serve_ms`, its client free) and both free (`free_ms`). With a CPU quota,
"this tier" runs under it and "free" does not. A hop from tier S to tier R then costs (plan.price)

    request_ms = send_ms[S] + serve_ms[R] - (free_ms[S] + free_ms[R]) / 2

that is S's client share plus R's server share (each arrangement's free side counted as half a free round trip).
Without a quota the three arrangements measure the same thing and a hop costs `free_ms`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import EdgePruneError

TINY_SHAPE = (1, 1)


def _server(env: dict) -> tuple[subprocess.Popen, str]:
    from . import offload

    port = offload._free_port()
    cmd = [sys.executable, "-m", offload.__name__, "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _round_trips(client, url: str, runs: int, warmup: int) -> list[float]:
    from . import offload

    body, headers = offload._encode([np.zeros(TINY_SHAPE, np.float32)])
    times = []
    for k in range(warmup + runs):
        t0 = time.perf_counter()
        r = client.post(f"{url}/segment", content=body, headers=headers)
        r.raise_for_status()
        offload._decode_response(r)
        if k >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(quota=None, runs: int = 30, warmup: int = 10) -> dict:
    """The per-request cost record of this tier (see module docstring). `quota` (an emulate.CpuQuota, or None) is
    the tier's; this process is left inside it if it was inside it on entry. The three arrangements take turns
    request by request (two servers: one outside the quota, one inside), so that the machine's load falls on them
    alike. The servers are always stopped."""
    import httpx

    from . import offload

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    if quota is not None:
        quota.leave()  # the servers start outside the quota (a child inherits its parent's cgroup)
    servers = [_server(env) for _ in range(1 if quota is None else 2)]
    out: dict = {"transport": "http: httpx client -> FastAPI/uvicorn tier server, loopback",
                 "body_bytes": int(np.prod(TINY_SHAPE)) * 4, "runs": runs, "statistic": "median"}
    times: dict[str, list[float]] = {"free_ms": [], "send_ms": [], "serve_ms": []}
    try:
        with httpx.Client(timeout=60) as client:
            for proc, url in servers:
                try:
                    offload._wait_ready(client, url)
                except Exception:
                    proc.poll()
                    why = offload._last_line(proc.stderr.read()) if proc.returncode is not None else "not ready"
                    raise EdgePruneError(f"the request-cost server did not start: {why}") from None
            free_url = servers[0][1]
            if quota is not None:
                quota.add(servers[1][0].pid)
            for k in range(warmup + runs):
                got = {"free_ms": _round_trips(client, free_url, 1, 0)[0]}
                if quota is not None:
                    quota.enter()
                    got["send_ms"] = _round_trips(client, free_url, 1, 0)[0]
                    quota.leave()
                    got["serve_ms"] = _round_trips(client, servers[1][1], 1, 0)[0]
                if k >= warmup:
                    for key, v in got.items():
                        times[key].append(v)
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if quota is not None:
            quota.enter()
    out["free_ms"] = float(np.median(times["free_ms"]))
    for key in ("send_ms", "serve_ms"):
        out[key] = float(np.median(times[key])) if times[key] else out["free_ms"]
    return out


def request_ms(sender: dict | None, receiver: dict | None) -> float:
    """The fixed cost of one request from a tier whose bench measured `sender` (its `request`, from `measure`) to
    one that measured `receiver`; 0 for bench files made before it was measured (None)."""
    if not sender or not receiver:
        return 0.0
    return max(0.0, sender["send_ms"] + receiver["serve_ms"] - (sender["free_ms"] + receiver["free_ms"]) / 2)
