"""Switching a served portfolio at run time (issue 15): switch overhead and steady memory per switch mode, and
a load test with switches and a load step. Loopback only; every loop is bounded in count and time.

    edgeprune sweep benchmarks/specs/serve_switch.yaml      # the runs: ResNet-20, VGG-16, dense + Reconvene
    nice -n 5 python benchmarks/serve_switch.py             # -> results/serve_switch.{md,json}
    nice -n 5 python benchmarks/serve_switch.py --matrix --models resnet20   # -> results/serve_switch_matrix_*

Per model, one server process per switch mode (`edgeprune serve --switch-mode preloaded|reload|masks`) runs
at the same time; the switches are interleaved across them (round r switches every server to the same
variant, in a rotating order), so the same machine load falls on each mode. Switch overhead is what a
client sees: from sending `PUT /v2/portfolio/policy {"name": "fixed", ...}` to the first inference response
computed by the new variant. Steady memory is each server's VmRSS after every variant has served.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import HERE, measured, write_results

from edgeprune import portfolio, serve
from edgeprune.measure import environment
from edgeprune.serve.codec import as_input, binary_body

RUNS = HERE / "runs" / "serve_switch"
MODES = ("preloaded", "reload", "masks")
ROOT = HERE.parent


class ServerProc:
    """`edgeprune serve` in a process of its own, on a free loopback port."""

    def __init__(self, folder: Path, mode: str, *extra: str):
        sock = serve.bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        sock.close()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen([sys.executable, "-c", "from edgeprune.cli import main; main()", "serve",
                                      str(folder), "--port", str(self.port), "--switch-mode", mode, *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        self.conn = self.connect()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server ({mode}) exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"server ({mode}) did not become ready")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def stop(self) -> None:
        self.client.close()
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# The clients use the standard library's http.client on one keep-alive connection: it adds about 1 ms a request
# here, where httpx added about 5 ms, a fixed cost that would sit in every mode's switch time alike.
# Requests use the protocol's binary tensor extension (what tritonclient sends by default).
Request = tuple[bytes, dict]


def request(manifest: portfolio.Manifest, x: np.ndarray | None = None) -> Request:
    """A binary-extension request body and headers for one sample (zeros, or `x`)."""
    if x is None:
        x = np.zeros((1, *manifest.input_shape), dtype=np.float32)
    return binary_body([as_input(manifest.input_name, x.reshape(1, *manifest.input_shape))])


def infer(conn: http.client.HTTPConnection, req: Request) -> tuple[int, str]:
    conn.request("POST", "/v2/models/portfolio/infer", body=req[0], headers=req[1])
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("edgeprune-variant", "")


def put_policy(conn: http.client.HTTPConnection, name: str, **params) -> None:
    conn.request("PUT", "/v2/portfolio/policy", body=json.dumps({"name": name, "params": params}),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"PUT /v2/portfolio/policy: {r.status} {body[:200]!r}")


def switch_ms(conn: http.client.HTTPConnection, target: str, req: Request) -> float:
    """Client-side: PUT the switch, then infer until the new variant answers (at most 100 tries)."""
    t0 = time.perf_counter()
    put_policy(conn, "fixed", variant=target)
    for _ in range(100):
        if infer(conn, req)[1] == target:
            return (time.perf_counter() - t0) * 1e3
    raise RuntimeError(f"{target} never answered after the switch")


def build(model: str, rounds: int) -> tuple[Path, portfolio.Manifest]:
    runs = sorted(p for p in RUNS.glob(f"{model}-*") if (p / "report.json").is_file())
    if len(runs) < 4:
        raise SystemExit(f"need the runs of benchmarks/specs/serve_switch.yaml for {model} (found {len(runs)}); "
                         "run `edgeprune sweep benchmarks/specs/serve_switch.yaml` first")
    out = HERE / "runs" / "serve_switch_portfolios" / model
    # every variant kept: one-epoch accuracies are too noisy to prune the portfolio by
    return out, portfolio.build(runs, out, keep_all=True, overwrite=True, rounds=rounds, runs=10)


def switching(folder: Path, manifest: portfolio.Manifest, switches: int) -> dict:
    req = request(manifest, np.random.default_rng(0).standard_normal(manifest.input_shape, dtype=np.float32))
    servers = {m: ServerProc(folder, m) for m in MODES}
    try:
        for s in servers.values():  # every variant serves once before memory is read
            for vid in manifest.ids:
                switch_ms(s.conn, vid, req)
        rss = {m: s.rss_mib() for m, s in servers.items()}
        times: dict[str, list[float]] = {m: [] for m in MODES}
        ids = manifest.ids
        for i in range(switches):
            target = ids[i % len(ids)]
            order = MODES[i % 3:] + MODES[:i % 3]
            for m in order:
                times[m].append(switch_ms(servers[m].conn, target, req))
        rss_after = {m: s.rss_mib() for m, s in servers.items()}
        # the server's own share: the switch call alone, without HTTP and without the new variant's inference
        inside = {m: [sw["seconds"] * 1e3 for sw in s.client.get("/v2/portfolio/policy").json()["switches"]][-switches:]
                  for m, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    p50 = {m: float(np.median(t)) for m, t in times.items()}
    server_p50 = {m: float(np.median(t)) for m, t in inside.items()}
    return {"switches": switches, "switch_ms": times, "p50_ms": p50, "server_switch_ms": inside,
            "server_p50_ms": server_p50,
            "reload_over_preloaded": p50["reload"] / p50["preloaded"],
            "masks_over_preloaded": p50["masks"] / p50["preloaded"],
            "server_reload_over_preloaded": server_p50["reload"] / server_p50["preloaded"],
            "server_masks_over_preloaded": server_p50["masks"] / server_p50["preloaded"],
            "rss_mib": rss, "rss_mib_after": rss_after,
            "masks_rss_over_preloaded": rss["masks"] / rss["preloaded"]}


HOGS_PER_CORE = 2


def hog(seconds: float) -> list[subprocess.Popen]:
    """A bounded CPU hog: HOGS_PER_CORE busy processes per core, each ending by itself after `seconds`."""
    code = f"import time\nt = time.time() + {seconds}\nwhile time.time() < t:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(HOGS_PER_CORE * (os.cpu_count() or 2))]


# Run in a fresh interpreter: the resident memory ONNX Runtime sessions of the given files add once each has run.
_MEMORY_PROBE = """
import sys
import numpy as np, onnxruntime as ort
def rss():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024
base = rss()
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.log_severity_level = 3
shape = [int(v) for v in sys.argv[1].split(',')]
sessions = [ort.InferenceSession(p, opts, providers=['CPUExecutionProvider']) for p in sys.argv[2:]]
for s in sessions:
    s.run(None, {s.get_inputs()[0].name: np.zeros(shape, np.float32)})
print(rss() - base)
"""


def held_memory(folder: Path, manifest: portfolio.Manifest) -> dict:
    """MiB that ONNX Runtime sessions of every variant add to a fresh process: as the portfolio holds them
    (physically smaller), and as dense-shaped sparse models (each variant's weights in the dense shapes, zeros
    elsewhere: what the masks mode holds, here in the same runtime so that only the representation differs)."""
    import tempfile

    from edgeprune.export import to_onnx_bytes
    from edgeprune.serve.sessions import MaskedModel

    shape = ",".join(map(str, [1, *manifest.input_shape]))

    def probe(files: list[Path]) -> float:
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, shape, *map(str, files)], capture_output=True,
                             text=True, check=True)
        return float(out.stdout)

    masked = MaskedModel(folder, manifest, 1)
    with tempfile.TemporaryDirectory() as tmp:
        dense_shaped = []
        for vid in manifest.ids:
            masked.activate(vid)
            f = Path(tmp) / f"{vid}.onnx"
            f.write_bytes(to_onnx_bytes(masked.model, tuple(manifest.input_shape)))
            dense_shaped.append(f)
        sparse = probe(dense_shaped)
    small = probe([folder / v.onnx for v in manifest.variants])
    return {"portfolio_mib": small, "dense_shaped_mib": sparse, "dense_shaped_over_portfolio": sparse / small}


def under_load(folder: Path, manifest: portfolio.Manifest, seconds: float) -> dict:
    """Two clients for `seconds`: the first half with a forced switch every 1.2 s (fixed policy), the second
    under the latency policy with a CPU hog from 30 % to 60 % of that half. The p90 budget is 1.25× the dense
    variant's p99 inference time measured by the server in the first half, under the same two clients: dense fits
    it before the hog, and not during it."""
    req = request(manifest)
    s = ServerProc(folder, "preloaded")
    results: list[tuple[float, float, int, str]] = []  # (sent, latency ms, status, variant)
    stop = threading.Event()

    def client() -> None:
        conn = s.connect()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                code, vid = infer(conn, req)
            except (OSError, http.client.HTTPException) as e:
                code, vid = 0, type(e).__name__
                conn.close()
                conn = s.connect()
            results.append((t0, (time.perf_counter() - t0) * 1e3, code, vid))
        conn.close()

    clients = [threading.Thread(target=client) for _ in range(2)]
    half = seconds / 2
    forced = 0
    try:
        start = time.perf_counter()
        for c in clients:
            c.start()
        while time.perf_counter() - start < half:  # bounded: half the time
            target = manifest.ids[forced % len(manifest.ids)]
            put_policy(s.conn, "fixed", variant=target)
            forced += 1
            time.sleep(1.2)
        dense = max(manifest.variants, key=lambda v: v.params).id
        budget_ms = 1.25 * s.client.get("/v2/portfolio/policy").json()["live_latency"][dense]["p99_ms"]
        put_policy(s.conn, "latency", budget_ms=budget_ms)
        policy_start = time.perf_counter()
        time.sleep(0.3 * half)
        hog_start = time.time()
        hogs = hog(0.3 * half)
        for h in hogs:
            h.wait()
        hog_end = time.time()
        time.sleep(max(0.0, start + seconds - time.perf_counter()))
        stop.set()
        for c in clients:
            c.join(60)
        state = s.client.get("/v2/portfolio/policy").json()
        metrics = s.client.get("/metrics").text
    finally:
        stop.set()
        s.stop()
    failed = [r for r in results if r[2] != 200]
    per_variant = {}
    for vid in manifest.ids:
        lat = [r[1] for r in results if r[2] == 200 and r[3] == vid]
        if lat:
            per_variant[vid] = {"requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                                "p99_ms": float(np.percentile(lat, 99))}
    decisions = [d for d in state["decisions"] if d["policy"] == "latency"]
    during = [d for d in decisions if hog_start <= d["time"] <= hog_end]
    over = next((d for d in during if d["inputs"]["observed_p90_ms"] > budget_ms), None)
    back = next((d for d in decisions if over and d["time"] > over["time"]
                 and d["inputs"]["observed_p90_ms"] <= budget_ms), None)
    acc = {v.id: v.accuracy for v in manifest.variants}
    up = next((sw for sw in state["switches"] if sw["time"] >= hog_end and acc[sw["to"]] > acc[sw["from"]]), None)
    served_during = sorted({d["active"] for d in during})
    switches_total = sum(float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith("edgeprune_switches_total"))
    return {"seconds": seconds, "clients": 2, "budget_ms": budget_ms, "requests": len(results),
            "failed": len(failed), "failed_examples": failed[:5], "forced_switches": forced,
            "switches_total": switches_total, "per_variant": per_variant,
            "policy_seconds_before_hog": hog_start - (time.time() - (time.perf_counter() - policy_start)),
            "hog_seconds": hog_end - hog_start,
            "hogs": HOGS_PER_CORE * (os.cpu_count() or 2), "windows_during_hog": len(during),
            "windows_within_budget_during_hog": sum(d["inputs"]["observed_p90_ms"] <= budget_ms for d in during),
            "served_during_hog": served_during,
            "back_within_budget_s": (back["time"] - over["time"]) if back else None,
            "first_over_budget_s": (over["time"] - hog_start) if over else None,
            "back_up_after_hog_s": (up["time"] - hog_end) if up else None,
            "switches_during_policy": [sw for sw in state["switches"] if sw["why"].startswith("policy")]}


STEADY = 5  # requests to B after its first response: their median is B's steady latency


def timed_infer(conn: http.client.HTTPConnection, req: Request) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    code, vid = infer(conn, req)
    return (time.perf_counter() - t0) * 1e3, code, vid


def put_fixed(conn: http.client.HTTPConnection, vid: str) -> dict:
    conn.request("PUT", "/v2/portfolio/policy", body=json.dumps({"name": "fixed", "params": {"variant": vid}}),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"PUT /v2/portfolio/policy: {r.status} {body[:200]!r}")
    return json.loads(body)


def transition_matrix(folder: Path, manifest: portfolio.Manifest, reps: int) -> dict:
    """Per switch mode and ordered pair A→B, `reps` times: A made active and serving, then the switch to B; the
    server-side swap time (the PUT's `switch_seconds`), and the cost B's first response pays: its client-side
    latency minus B's steady latency (the median of the next STEADY requests), so B's own inference is taken out.
    One server at a time, the pairs in the same order in each mode."""
    req = request(manifest, np.random.default_rng(0).standard_normal(manifest.input_shape, dtype=np.float32))
    pairs = [(a, b) for a in manifest.ids for b in manifest.ids if a != b]
    out: dict = {}
    for mode in MODES:
        s = ServerProc(folder, mode)
        cells = {f"{a}->{b}": {"swap_ms": [], "cost_ms": []} for a, b in pairs}
        try:
            for _ in range(reps):
                for a, b in pairs:
                    put_fixed(s.conn, a)
                    for _ in range(3):  # A serving, as before any switch
                        timed_infer(s.conn, req)
                    swap = put_fixed(s.conn, b)["switch_seconds"] * 1e3
                    first, code, vid = timed_infer(s.conn, req)
                    if code != 200 or vid != b:
                        raise RuntimeError(f"{mode}: first response after {a}->{b} was {code} from {vid!r}")
                    steady = float(np.median([timed_infer(s.conn, req)[0] for _ in range(STEADY)]))
                    cells[f"{a}->{b}"]["swap_ms"].append(swap)
                    cells[f"{a}->{b}"]["cost_ms"].append(first - steady)
        finally:
            s.stop()
        out[mode] = {pair: {"swap_ms_p50": float(np.median(c["swap_ms"])),
                            "swap_ms_p99": float(np.percentile(c["swap_ms"], 99)),
                            "cost_ms_p50": float(np.median(c["cost_ms"])),
                            "cost_ms_p99": float(np.percentile(c["cost_ms"], 99)), "n": len(c["cost_ms"]),
                            **c} for pair, c in cells.items()}
    median = {m: float(np.median([c["cost_ms_p50"] for c in out[m].values()])) for m in MODES}
    swap = {m: float(np.median([c["swap_ms_p50"] for c in out[m].values()])) for m in MODES}
    return {"reps": reps, "steady_requests": STEADY, "pairs": out, "median_cost_ms": median,
            "median_swap_ms": swap, "reload_over_preloaded_cost": median["reload"] / median["preloaded"],
            "masks_over_preloaded_cost": median["masks"] / median["preloaded"]}


def in_flight(folder: Path, manifest: portfolio.Manifest, seconds: float, every_s: float = 0.1) -> dict:
    """Per switch mode: two clients sending for `seconds`, in blocks of 2 s alternating between no switching and a
    switch every `every_s` (round robin over the variants); the p99 of the requests in flight in each kind of
    block (alternating blocks put the same machine load on both), and every failure."""
    return {"seconds": seconds, "switch_every_s": every_s,
            "modes": {mode: _in_flight(folder, manifest, mode, seconds, every_s) for mode in MODES}}


def _in_flight(folder: Path, manifest: portfolio.Manifest, mode: str, seconds: float, every_s: float) -> dict:
    req = request(manifest)
    s = ServerProc(folder, mode)
    lat: dict[str, list[float]] = {"none": [], "switching": []}
    failed: list = []
    phase = ["none"]
    stop = threading.Event()

    def client() -> None:
        conn = s.connect()
        while not stop.is_set():
            kind = phase[0]
            try:
                ms, code, vid = timed_infer(conn, req)
            except (OSError, http.client.HTTPException) as e:
                code, vid = 0, type(e).__name__
                conn.close()
                conn = s.connect()
            if code == 200:
                lat[kind].append(ms)
            else:
                failed.append((code, vid))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(2)]
    switches = 0
    try:
        for t in threads:
            t.start()
        start = time.perf_counter()
        block = 0
        while time.perf_counter() - start < seconds:  # bounded
            phase[0] = "none" if block % 2 == 0 else "switching"
            end = time.perf_counter() + 2.0
            while time.perf_counter() < end:
                if phase[0] == "switching":
                    put_fixed(s.conn, manifest.ids[switches % len(manifest.ids)])
                    switches += 1
                time.sleep(every_s)
            block += 1
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        s.stop()
    p99 = {k: float(np.percentile(v, 99)) for k, v in lat.items() if v}
    return {"requests": {k: len(v) for k, v in lat.items()}, "p99_ms": p99, "failed": len(failed),
            "failed_examples": failed[:5], "switches": switches,
            "switching_over_none": p99["switching"] / p99["none"] if len(p99) == 2 else None}


def stress(folder: Path, manifest: portfolio.Manifest, switches: int, limit_s: float = 150.0) -> dict:
    """Per switch mode: one binary-HTTP and one gRPC client (tritonclient) sending without pause while the control
    API switches round robin, back to back, `switches` times (at most `limit_s` seconds), under the CPU hog
    (HOGS_PER_CORE busy processes per core, ending by themselves). Every answer must be a 200/OK from a variant of
    the portfolio: the failures are counted per path."""
    import tritonclient.grpc as grpcclient

    req = request(manifest)
    x = np.zeros((1, *manifest.input_shape), dtype=np.float32)
    out = {}
    for mode in MODES:
        probe = serve.bind("127.0.0.1", 0)
        grpc_port = probe.getsockname()[1]
        probe.close()
        s = ServerProc(folder, mode, "--grpc-port", str(grpc_port))
        counts = {"http": 0, "grpc": 0}
        failed: dict[str, list] = {"http": [], "grpc": []}
        stop = threading.Event()

        def http_client(s=s, counts=counts, failed=failed, stop=stop) -> None:
            conn = s.connect()
            while not stop.is_set():
                try:
                    code, vid = infer(conn, req)
                except (OSError, http.client.HTTPException) as e:
                    code, vid = 0, type(e).__name__
                    conn.close()
                    conn = s.connect()
                counts["http"] += 1
                if code != 200 or vid not in manifest.ids:
                    failed["http"].append((code, vid))
            conn.close()

        def grpc_client(counts=counts, failed=failed, stop=stop, port=grpc_port) -> None:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            inp = grpcclient.InferInput(manifest.input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            while not stop.is_set():
                try:
                    vid = c.infer("portfolio", [inp]).get_response().parameters["variant"].string_param
                except Exception as e:  # noqa: BLE001  every failure is counted, whatever it is
                    vid = f"{type(e).__name__}: {str(e)[:100]}"
                counts["grpc"] += 1
                if vid not in manifest.ids:
                    failed["grpc"].append(vid)
            c.close()

        threads = [threading.Thread(target=http_client), threading.Thread(target=grpc_client)]
        hogs = hog(limit_s)
        done = 0
        start = time.perf_counter()
        try:
            for t in threads:
                t.start()
            while done < switches and time.perf_counter() - start < limit_s:  # bounded
                put_fixed(s.conn, manifest.ids[done % len(manifest.ids)])
                done += 1
        finally:
            seconds = time.perf_counter() - start
            stop.set()
            for t in threads:
                t.join(60)
            for h in hogs:
                h.kill()
                h.wait()
            s.stop()
        out[mode] = {"switches": done, "seconds": seconds, "requests": dict(counts),
                     "failed": {k: len(v) for k, v in failed.items()},
                     "failed_examples": {k: v[:5] for k, v in failed.items()}}
    return {"hogs": HOGS_PER_CORE * (os.cpu_count() or 2), "modes": out}


def stress_report(st: dict) -> list[str]:
    lines = ["## Switching under a CPU hog, binary HTTP and gRPC", "",
             f"Per mode: one binary-extension HTTP client and one gRPC client (tritonclient) without pause, switches "
             f"back to back through the control API, a CPU hog of {st['hogs']} busy processes:", "",
             "| mode | switches | seconds | HTTP requests | HTTP failed | gRPC requests | gRPC failed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {r['switches']} | {r['seconds']:.0f} | {r['requests']['http']} | {r['failed']['http']} | "
              f"{r['requests']['grpc']} | {r['failed']['grpc']} |" for m, r in st["modes"].items()]
    return [*lines, ""]


def _common_prefix(pairs: list[str]) -> str:
    names = [n for pair in pairs for n in pair.split("->")]
    prefix = os.path.commonprefix(names)
    return prefix[:prefix.rfind("-") + 1] if "-" in prefix else ""


def matrix_report(model: str, mx: dict, fl: dict, env: dict) -> list[str]:
    lines = [f"# Switch cost per transition: {model}", "",
             f"{measured('serve_switch.py --matrix', env, 'torch', 'onnxruntime')}, loopback, shared with other work "
             "(load average about 6 on 2 cores). **The variants' weights are not trained to accuracy**: "
             "`benchmarks/specs/serve_switch.yaml` trains 1 epoch on 1,000 Fashion-MNIST images; the issue's matrix "
             "on a VGG-16 portfolio trained on real data (CIFAR-10) is not measured here. Switch cost does not depend "
             "on the weights' values, only on the variants' shapes.", "",
             f"Per ordered pair A→B, {mx['reps']} times: A active and serving, then `PUT /v2/portfolio/policy` to B. "
             "*swap*: the server's own switch time (`switch_seconds`). *cost*: B's first response (client-side) "
             f"minus B's steady response (median of the next {mx['steady_requests']}), so B's own inference is "
             f"taken out. p99 over {mx['reps']} repetitions is close to their maximum.", "",
             "| mode | median over pairs of swap p50 ms | median over pairs of cost p50 ms |", "|---|---|---|"]
    lines += [f"| {m} | {mx['median_swap_ms'][m]:.4f} | {mx['median_cost_ms'][m]:.3f} |" for m in MODES]
    swap, cost = mx["median_swap_ms"], mx["median_cost_ms"]
    lines += ["", "Server-side swap, median over pairs: reload / preloaded = "
              f"**{swap['reload'] / swap['preloaded']:.0f}×**, masks / preloaded = "
              f"**{swap['masks'] / swap['preloaded']:.0f}×**."]
    if cost["preloaded"] > 0.1:
        lines += [f"First-response cost, median over pairs: reload / preloaded = "
                  f"**{cost['reload'] / cost['preloaded']:.1f}×**, masks / preloaded = "
                  f"**{cost['masks'] / cost['preloaded']:.1f}×**.", ""]
    else:
        lines += [f"First-response cost: preloaded's median ({cost['preloaded']:.3f} ms) is within this machine's "
                  "noise (a difference of two client-side latencies of a ~1 ms model under load), so a ratio to it "
                  "means nothing; the medians of reload and masks are "
                  f"{cost['reload']:.2f} ms and {cost['masks']:.2f} ms.", ""]
    prefix = _common_prefix(list(mx["pairs"][MODES[0]]))
    if prefix:
        lines += [f"Variant names below drop their common prefix `{prefix}`.", ""]
    for m in MODES:
        lines += [f"## {m}", "", "| A → B | swap p50 ms | swap p99 ms | cost p50 ms | cost p99 ms |",
                  "|---|---|---|---|---|"]
        lines += [f"| {pair.replace(prefix, '')} | {c['swap_ms_p50']:.4f} | {c['swap_ms_p99']:.4f} | "
                  f"{c['cost_ms_p50']:.3f} | {c['cost_ms_p99']:.3f} |" for pair, c in mx["pairs"][m].items()]
        lines.append("")
    lines += ["## Requests in flight while switching", "",
              f"Two clients for {fl['seconds']:.0f} s per mode, 2 s blocks alternating between no switching and a "
              f"switch every {fl['switch_every_s']} s:", "",
              "| mode | requests (none / switching) | switches | failed | p99 ms, no switching | p99 ms, switching | "
              "ratio |", "|---|---|---|---|---|---|---|"]
    for m, r in fl["modes"].items():
        ratio = "-" if r["switching_over_none"] is None else f"{r['switching_over_none']:.2f}×"
        lines.append(f"| {m} | {r['requests']['none']} / {r['requests']['switching']} | {r['switches']} | "
                     f"{r['failed']} | {r['p99_ms'].get('none', float('nan')):.2f} | "
                     f"{r['p99_ms'].get('switching', float('nan')):.2f} | {ratio} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", type=int, default=20)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--retime-rounds", type=int, default=4)
    ap.add_argument("--matrix", action="store_true", help="only the per-transition switch-cost matrix and the "
                    "in-flight p99 (-> results/serve_switch_matrix_MODEL.{md,json})")
    ap.add_argument("--models", default="vgg16,resnet20")
    ap.add_argument("--matrix-reps", type=int, default=5)
    ap.add_argument("--in-flight-seconds", type=float, default=24.0)
    ap.add_argument("--stress-switches", type=int, default=0, help="with --matrix: also this many switches per "
                    "mode under a CPU hog with a binary-HTTP and a gRPC client (0: skip)")
    ap.add_argument("--rewrite", action="store_true", help="with --matrix: re-write the tables from the stored JSON "
                    "(with --stress-switches: that part measured now and added)")
    args = ap.parse_args()
    env = environment()
    if args.matrix and args.rewrite:  # the tables again from the stored measurements
        for model in args.models.split(","):
            stored = json.loads((HERE / "results" / f"serve_switch_matrix_{model}.json").read_text())
            if args.stress_switches:  # measured now, added to the stored matrix
                folder, manifest = build(model, args.retime_rounds)
                stored["stress"] = {**stress(folder, manifest, args.stress_switches), "environment": environment()}
            lines = matrix_report(model, stored["matrix"], stored["in_flight"], stored["environment"])
            if "stress" in stored:
                lines += ["", *stress_report(stored["stress"])]
            write_results(f"serve_switch_matrix_{model}", lines, stored)
        return
    if args.matrix:
        (HERE / "results").mkdir(exist_ok=True)
        for model in args.models.split(","):
            folder, manifest = build(model, args.retime_rounds)
            mx = transition_matrix(folder, manifest, args.matrix_reps)
            fl = in_flight(folder, manifest, args.in_flight_seconds)
            payload = {"environment": env, "model": model, "variants": manifest.ids, "matrix": mx, "in_flight": fl}
            lines = matrix_report(model, mx, fl, env)
            if args.stress_switches:
                payload["stress"] = stress(folder, manifest, args.stress_switches)
                lines += ["", *stress_report(payload["stress"])]
            write_results(f"serve_switch_matrix_{model}", lines, payload)
        return
    payload: dict = {"environment": env, "models": {}}
    for model in ("vgg16", "resnet20"):
        folder, manifest = build(model, args.retime_rounds)
        dense = max(manifest.variants, key=lambda v: v.params)
        payload["models"][model] = {
            "variants": [{k: getattr(v, k) for k in ("id", "accuracy", "params", "bytes", "p50_ms", "p90_ms")}
                         for v in manifest.variants],
            "smallest_x_smaller": dense.params / min(v.params for v in manifest.variants),
            "switching": switching(folder, manifest, args.switches)}
        payload["models"][model]["held_memory"] = held_memory(folder, manifest)
        if model == "vgg16":
            payload["models"][model]["load"] = under_load(folder, manifest, args.load_seconds)
    (HERE / "results").mkdir(exist_ok=True)
    write_results("serve_switch", report(payload, args), payload)


def report(p: dict, args) -> list[str]:
    env = p["environment"]
    lines = ["# Serving a portfolio: switch overhead, memory, load", "",
             f"{measured('serve_switch.py', env, 'torch', 'onnxruntime')}, loopback, shared with other work. "
             "Runs: `benchmarks/specs/serve_switch.yaml` (Fashion-MNIST, first 1,000 training images, 1 epoch: "
             "accuracies are only what the policies rank by). ONNX Runtime 1 thread per session, 2 inference threads.",
             ""]
    for model, m in p["models"].items():
        sw = m["switching"]
        lines += [f"## {model}", "", "| variant | accuracy | params | ONNX bytes | p50 ms | p90 ms |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v['id']} | {100 * v['accuracy']:.2f} % | {v['params']:,} | {v['bytes']:,} | {v['p50_ms']:.3f} | "
                  f"{v['p90_ms']:.3f} |" for v in m["variants"]]
        lines += ["", f"Smallest variant {m['smallest_x_smaller']:.1f}× fewer parameters than dense. "
                  f"{sw['switches']} switches per mode, interleaved across three servers:", "",
                  "| mode | switch p50 ms: switch request → first response of the new variant (client) | "
                  "switch call alone p50 ms (server) | steady RSS MiB |", "|---|---|---|---|"]
        lines += [f"| {mode} | {sw['p50_ms'][mode]:.2f} | {sw['server_p50_ms'][mode]:.4f} | {sw['rss_mib'][mode]:.0f} |"
                  for mode in MODES]
        lines += ["", f"Client-side: reload / preloaded = **{sw['reload_over_preloaded']:.1f}×**, masks / preloaded = "
                  f"**{sw['masks_over_preloaded']:.1f}×** (both include one inference by the new variant and two "
                  f"HTTP round trips). Server-side switch call: reload / preloaded = "
                  f"**{sw['server_reload_over_preloaded']:.0f}×**, masks / preloaded = "
                  f"**{sw['server_masks_over_preloaded']:.0f}×**. Steady RSS masks / preloaded = "
                  f"**{sw['masks_rss_over_preloaded']:.2f}×** (the masks server holds the PyTorch runtime too).", ""]
        mem = m["held_memory"]
        lines += [f"Same runtime, only the representation differing (ONNX Runtime sessions of every variant in a fresh "
                  f"process, memory added): portfolio {mem['portfolio_mib']:.0f} MiB, the same levels as dense-shaped "
                  f"sparse models {mem['dense_shaped_mib']:.0f} MiB: "
                  f"**{mem['dense_shaped_over_portfolio']:.2f}×**.", ""]
        if "load" in m:
            ld = m["load"]
            lines += [f"Under load ({ld['clients']} clients, {ld['seconds']:.0f} s; first half a forced switch every "
                      f"1.2 s, second half the latency policy with p90 budget {ld['budget_ms']:.2f} ms and a "
                      f"{ld['hog_seconds']:.1f} s CPU hog of {ld['hogs']} busy processes): {ld['requests']} requests, "
                      f"**{ld['failed']} failed**, {ld['switches_total']:.0f} switches "
                      f"({ld['forced_switches']} forced).", "",
                      "| variant | requests | client p50 ms | client p99 ms |", "|---|---|---|---|"]
            lines += [f"| {vid} | {v['requests']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |"
                      for vid, v in ld["per_variant"].items()]
            fmt = lambda s: "not observed" if s is None else f"{s:.2f} s"  # noqa: E731
            lines += ["", f"During the hog: {ld['windows_within_budget_during_hog']} of {ld['windows_during_hog']} "
                      f"policy windows within budget, served {', '.join(ld['served_during_hog']) or 'nothing'}; first "
                      f"window over budget {fmt(ld['first_over_budget_s'])} after the hog started, back within "
                      f"budget {fmt(ld['back_within_budget_s'])} after that window; after the hog ended, switched "
                      f"back up after {fmt(ld['back_up_after_hog_s'])}.", ""]
    return lines


if __name__ == "__main__":
    main()
