"""Run a plan for real: one process per tier, each running its blocks with ONNX Runtime, activations sent as raw
bytes over HTTP from the device to the edge (and on to the cloud), over links emulated for the run (emulate.Chain).

The device process times each request end to end: its own blocks, the send, the remote blocks, the answer back.
Each non-device tier is a small FastAPI app (`POST /segment`, body = the activation's bytes, header `x-shape`) that
runs its blocks, forwards to the next tier if there is one, and answers with the result.

Round-trip time is slept by the application, half before each send in each direction (the kernel here has no netem);
on a modelled link (no root or namespaces) the sender also sleeps bytes / bandwidth.

`python -m edgeprune.partition.offload serve|device ...` are the two processes' entry points; `execute` starts them.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and they name classes imported
# inside make_app, which string annotations could not be resolved against.
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import emulate, reaper, segments
from ..errors import ConfigError, EdgePruneError
from ..progress import Reporter, reporter
from . import transfer, wire
from .records import Plan, PlanFile, Stage, Tier

PORT = 8000
READY_S = 120.0


class OffloadError(EdgePruneError):
    """A tier's process failed during a run."""


# ------------------------------------------------------------------------------------------------ the processes


class _Link:
    """The sending side of a hop: sleeps half the RTT (and, when modelled, bytes / bandwidth) before each send."""

    def __init__(self, rtt_ms: float, modelled_mbps: float | None):
        self.half_rtt_s, self.mbps = rtt_ms / 2e3, modelled_mbps

    def before_send(self, nbytes: int) -> None:
        delay = self.half_rtt_s + (nbytes * 8 / (self.mbps * 1e6) if self.mbps else 0.0)
        if delay > 0:
            time.sleep(delay)


def _encode(arrays: Sequence[np.ndarray], dtype: str = "fp32") -> tuple[bytes, dict[str, str]]:
    """The tensors crossing a cut as one body, sent as `dtype` (wire.encode: headers x-shape, x-dtype, x-scale)."""
    return wire.encode(arrays, dtype)


def _decode(body: bytes, shape_header: str, dtype: str = "fp32", scale_header: str = "",
            elem_header: str = "") -> list[np.ndarray]:
    return wire.decode(body, shape_header, dtype, scale_header, elem_header)


def _decode_response(r) -> list[np.ndarray]:
    return _decode(r.content, r.headers["x-shape"], r.headers.get("x-dtype", "fp32"), r.headers.get("x-scale", ""),
                   r.headers.get("x-elem", ""))


def _feeds(sess, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """A segment's inputs are the cut's tensors in the order they are sent."""
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(arrays):
        raise ValueError(f"{len(arrays)} tensor(s) received, the segment takes {len(names)}")
    return dict(zip(names, arrays, strict=True))


def make_app(model: str | None, threads: int, back: _Link, next_url: str | None, forward: _Link,
             next_dtype: str = "fp32"):
    """The tier's server: runs `model` (None: passes the activation on) and forwards to `next_url` if given, sending
    the activations as `next_dtype` (the answer always comes back as fp32)."""
    import httpx
    from fastapi import FastAPI, HTTPException, Request, Response
    from starlette.concurrency import run_in_threadpool

    from ..export import ort_session

    sess = ort_session(Path(model), threads, spin=False) if model else None
    client = httpx.Client(timeout=600) if next_url else None
    app = FastAPI(title="edgeprune partition tier")

    @app.get("/health")
    def health() -> dict:
        if client is not None:
            client.get(f"{next_url}/health").raise_for_status()
        return {"ready": True}

    def work(body: bytes, shape: str, dtype: str, scale: str, elem: str) -> tuple[bytes, dict[str, str]]:
        a = _decode(body, shape, dtype, scale, elem)
        if sess is not None:
            a = sess.run(None, _feeds(sess, a))
        if client is not None:
            body, headers = _encode(a, next_dtype)
            forward.before_send(len(body))
            r = client.post(f"{next_url}/segment", content=body, headers=headers)
            r.raise_for_status()
            a = _decode_response(r)
        body, headers = _encode(a)
        back.before_send(len(body))
        return body, headers

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        body, shape = await request.body(), request.headers.get("x-shape", "")
        dtype, scale = request.headers.get("x-dtype", "fp32"), request.headers.get("x-scale", "")
        elem = request.headers.get("x-elem", "")
        try:
            _decode(body, shape, dtype, scale, elem)
        except ValueError as e:
            raise HTTPException(422, f"body of {len(body)} bytes does not match x-shape {shape!r}: {e}") from None
        # ONNX Runtime and the sleeps block: off the event loop
        out, headers = await run_in_threadpool(work, body, shape, dtype, scale, elem)
        return Response(out, media_type="application/octet-stream", headers=headers)

    return app


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    app = make_app(args.model, args.threads, _Link(args.rtt_ms, args.modelled_mbps), args.next_url,
                   _Link(args.next_rtt_ms, args.next_modelled_mbps), args.next_dtype)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def _device(args: argparse.Namespace) -> None:
    import httpx

    from ..export import ort_session

    sess = ort_session(Path(args.model), args.threads, spin=False) if args.model else None
    shape = tuple(int(v) for v in args.input_shape.split(","))
    x = np.random.default_rng(args.seed).standard_normal((1, *shape)).astype(np.float32)
    link = _Link(args.rtt_ms, args.modelled_mbps)
    client = httpx.Client(timeout=600) if args.url else None
    if client is not None:
        _wait_ready(client, args.url)

    def once() -> np.ndarray:
        a = sess.run(None, {sess.get_inputs()[0].name: x}) if sess is not None else [x]
        if client is None:
            return a[0]
        body, headers = _encode(a, args.dtype)
        link.before_send(len(body))
        r = client.post(f"{args.url}/segment", content=body, headers=headers)
        if r.status_code != 200:
            raise OffloadError(f"{args.url} answered {r.status_code}: {r.text[:300]}")
        return _decode_response(r)[0]

    sys.stdin.readline()  # "go": the orchestrator has put this process under its tier's CPU quota
    for _ in range(args.warmup):
        out = once()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = once()
        times.append((time.perf_counter() - t0) * 1e3)
    np.save(Path(args.out).with_suffix(".npy"), out)
    Path(args.out).write_text(json.dumps({"latencies_ms": times}))


def _wait_ready(client, url: str) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        try:
            client.get(f"{url}/health").raise_for_status()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgeprune.partition.offload")
    sub = p.add_subparsers(dest="role", required=True)
    for name in ("serve", "device"):
        s = sub.add_parser(name)
        s.add_argument("--model", default=None)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--rtt-ms", type=float, default=0.0)
        s.add_argument("--modelled-mbps", type=float, default=None)
    serve, device = sub.choices["serve"], sub.choices["device"]
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=PORT)
    serve.add_argument("--next-url", default=None)
    serve.add_argument("--next-rtt-ms", type=float, default=0.0)
    serve.add_argument("--next-modelled-mbps", type=float, default=None)
    serve.add_argument("--next-dtype", default="fp32", choices=wire.WIRES)
    device.add_argument("--dtype", default="fp32", choices=wire.WIRES)
    device.add_argument("--url", default=None)
    device.add_argument("--input-shape", required=True)
    device.add_argument("--runs", type=int, default=20)
    device.add_argument("--warmup", type=int, default=3)
    device.add_argument("--seed", type=int, default=0)
    device.add_argument("--out", required=True)
    args = p.parse_args(argv)
    (_serve if args.role == "serve" else _device)(args)


# ------------------------------------------------------------------------------------------------ orchestration


def segment_models(onnx_model: bytes, plan: Plan, folder: Path, max_tensors: int = 1) -> list[Path | None]:
    """Write each stage's blocks (with the transfer layer where the plan has one) to `folder`; None for a device
    that runs no block (it sends the input). `max_tensors` must be the one the bench files were made with."""
    seg = segments.load(onnx_model, "model", max_tensors)
    paths: list[Path | None] = []
    for k, st in enumerate(plan.stages):
        if st.stop == st.first:
            paths.append(None)
            continue
        model = seg.span(st.first, st.stop)
        if plan.tl and k == 0:
            cut = seg.cuts[st.stop - 1]
            transfer.check(cut.shape, cut.tensor)
            model = transfer.with_down(model, cut.shape)
        if plan.tl and k == 1:
            cut = seg.cuts[st.first - 1]
            model = transfer.with_up(model, cut.shape)
        paths.append(segments.save(model, folder / f"stage{k}-{st.tier}.onnx"))
    return paths


def execute(onnx_model: bytes, record: PlanFile, rank: int = 1, runs: int = 20, warmup: int = 3,
            progress: Reporter | None = None, allow_namespaces: bool = True) -> dict:
    """Run plan number `rank` of a plan record (plan.record) for real and measure its end-to-end latency at the
    device (median of `runs` requests after `warmup`). Everything started is stopped, everything made is removed."""
    import hashlib

    progress = reporter(progress)
    if hashlib.sha256(onnx_model).hexdigest() != record.onnx_sha256:
        raise ConfigError("the model given is not the one the plan was made for (ONNX sha256 differs); run the "
                          "plan on the model its bench files timed (a model built by name: with the same --seed, "
                          "--input-shape and --num-classes as `partition bench`)")
    plan = record.plan(rank)
    stages, hops = plan.stages, plan.hops
    tiers = record.tiers
    hop_links = [record.link(h.source, h.destination) for h in hops]
    why_not = emulate.namespaces_unavailable() if (hops and allow_namespaces) else None
    modelled = bool(hops) and (why_not is not None or not allow_namespaces)
    if hops and why_not is not None:
        progress.note(f"warning: no network namespaces here ({why_not}); the link is modelled: processes talk over "
                      "loopback and sleep bytes/bandwidth + RTT, and results say link: modelled")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    procs: list[subprocess.Popen] = []
    quotas: list[emulate.CpuQuota] = []
    chain = None

    def start(cmd: list[str], k: int, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
        procs.append(proc)
        reaper.track_process(proc.pid)
        fraction = tiers[stages[k].tier].device.get("cpu_quota")
        if fraction:  # from here, where the cgroup mounts are visible (see CpuQuota.add)
            quotas.append(emulate.CpuQuota(fraction, name=f"edgeprune-{os.getpid()}-{k}"))
            quotas[-1].add(proc.pid)
        return proc

    with tempfile.TemporaryDirectory(prefix="edgeprune-partition-") as tmp:
        folder = Path(tmp)
        models = segment_models(onnx_model, plan, folder, record.max_tensors)
        try:
            if hops and not modelled:
                chain = emulate.Chain([s.tier for s in stages],
                                      [emulate.LinkSpec(lk.bandwidth_mbps, lk.rtt_ms) for lk in hop_links])
                chain.__enter__()
            prefix = (lambda i: chain.prefix(i)) if chain is not None else (lambda i: [])
            hosts = chain.address if chain is not None else ["127.0.0.1"] * len(stages)
            ports = [PORT] * len(stages) if chain is not None else [_free_port() for _ in stages]
            url = [f"http://{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
            for k in range(len(stages) - 1, 0, -1):  # the last tier first, so each tier's next one is up
                cmd = [*prefix(k), sys.executable, "-m", __name__, "serve", *_tier_args(stages[k], tiers, models[k]),
                       "--host", "0.0.0.0" if chain is not None else "127.0.0.1", "--port", str(ports[k]),
                       "--rtt-ms", str(hop_links[k - 1].rtt_ms)]
                if modelled:
                    cmd += ["--modelled-mbps", str(hop_links[k - 1].bandwidth_mbps)]
                if k + 1 < len(stages):
                    cmd += ["--next-url", url[k + 1], "--next-rtt-ms", str(hop_links[k].rtt_ms),
                            "--next-dtype", hops[k].wire]
                    if modelled:
                        cmd += ["--next-modelled-mbps", str(hop_links[k].bandwidth_mbps)]
                start(cmd, k)
            out = folder / "device.json"
            cmd = [*prefix(0), sys.executable, "-m", __name__, "device", *_tier_args(stages[0], tiers, models[0]),
                   "--input-shape", ",".join(map(str, record.input_shape)), "--runs", str(runs),
                   "--warmup", str(warmup), "--out", str(out)]
            if hops:
                cmd += ["--url", url[1], "--rtt-ms", str(hop_links[0].rtt_ms), "--dtype",
                        hops[0].wire]
                if modelled:
                    cmd += ["--modelled-mbps", str(hop_links[0].bandwidth_mbps)]
            progress.note(f"running plan {rank}: {plan.label} ({runs} requests)")
            device = start(cmd, 0, stdin=subprocess.PIPE)
            _, stderr = device.communicate("go\n")
            if device.returncode != 0:
                raise OffloadError(f"the device process failed: {_last_line(stderr)}{_servers_said(procs[:-1])}")
            times = json.loads(out.read_text())["latencies_ms"]
            final = np.load(out.with_suffix(".npy"))
            netem = chain.netem if chain is not None else False
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                reaper.forget_process(p.pid)
            for q in quotas:
                q.close()
            if chain is not None:
                chain.close()
    ref = _reference(onnx_model, record.input_shape)
    return {
        "plan": plan.label, "rank": rank, "predicted_ms": plan.total_ms,
        "measured_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "latencies_ms": times,
        "runs": runs, "warmup": warmup, "clock": "wall",
        "link": ("none" if not hops else "modelled (loopback, bytes/bandwidth slept)" if modelled
                 else "namespaces+veth, tc tbf"),
        "rtt": ("none" if not hops else "application (half before each send)"
                + ("" if netem else "; kernel has no netem")),
        "max_abs_error": float(np.abs(final - ref).max()), "tl": plan.tl, "wire": plan.wire,
    }


def _tier_args(stage: Stage, tiers: dict[str, Tier], model: Path | None) -> list[str]:
    t = tiers[stage.tier]
    return ["--threads", str(t.threads)] + (["--model", str(model)] if model is not None else [])


def _reference(onnx_model: bytes, input_shape: Sequence[int]) -> np.ndarray:
    from ..export import ort_session

    sess = ort_session(onnx_model)
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _servers_said(procs: list[subprocess.Popen]) -> str:
    said = []
    for p in procs:
        if p.poll() is not None and p.stderr is not None:
            said.append(_last_line(p.stderr.read()))
    return f"; a tier's server exited: {'; '.join(said)}" if said else ""


if __name__ == "__main__":
    main()
