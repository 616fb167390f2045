"""The HTTP server: a portfolio behind the KServe v2 / Open Inference Protocol, with Triton's model-control
endpoints, a switching policy and Prometheus metrics.

- `GET /v2/health/live|ready`, `GET /v2`, `GET /v2/models`, `GET /v2/models/{id}[/ready]`
- `POST /v2/models/{id}/infer`: a JSON body `{"inputs": [{"name", "shape", "datatype", "data"}]}`, or the raw
  little-endian tensor with `Content-Type: application/octet-stream` and its shape in the `Inference-Shape`
  header ("1,1,28,28"). `portfolio` is the routed model: it answers with the active variant, and every
  response names the variant that computed it (`parameters.variant` and the `Edgeprune-Variant` header).
- `POST /v2/repository/index`, `POST /v2/repository/models/{id}/load|unload` (Triton's repository extension)
- `GET|PUT /v2/portfolio/policy`: the policy, its parameters, the decision log and the switch log; PUT sets
  a policy (`{"name": "fixed", "variant": "..."}` switches at once)
- `GET /metrics`: Prometheus text format; `GET /`: a status page (serve/status.py).

A portfolio of detectors (`task` "detect") takes frames the same way and answers with the decoded detections
of every sample, as four outputs of one length: `boxes` (n, 4; xyxy, canvas px), `scores`, `classes` and
`batch_index` (the sample each belongs to). Decoding runs in the inference thread and is timed with the graph.

Inference runs in a thread pool (ONNX Runtime releases the GIL); bad requests are answered 4xx with one
line naming what was expected, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..errors import ConfigError, EdgePruneError
from ..portfolio import ROUTED, Manifest
from . import policy as policy_mod
from . import status
from .sessions import Sessions, SwitchConflict

MAX_BODY_BYTES = 16 * 2**20
MAX_BATCH = 64
V2_DTYPES = {"FP32": np.float32}


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    inputs: list[InferInput]
    id: str | None = None


class PolicyRequest(BaseModel):
    name: str
    params: dict[str, Any] = {}


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Server:
    """What the endpoints share: sessions, policy, windows, logs and metrics."""

    def __init__(self, folder: str | Path, manifest: Manifest, sessions: Sessions, policy: policy_mod.Policy,
                 workers: int = 2, window_requests: int = 20, window_s: float = 0.5,
                 max_body_bytes: int = MAX_BODY_BYTES, on_decision: Callable[[dict], None] | None = None):
        if workers < 1 or window_requests < 1 or window_s <= 0 or max_body_bytes < 1:
            raise ConfigError(f"need workers >= 1, window_requests >= 1, window_s > 0, max_body_bytes >= 1; got "
                              f"{workers}, {window_requests}, {window_s}, {max_body_bytes}")
        self.folder, self.manifest, self.sessions, self.policy = Path(folder), manifest, sessions, policy
        self.workers, self.window_requests, self.window_s = workers, window_requests, window_s
        self.max_body_bytes, self.on_decision = max_body_bytes, on_decision
        self.executor: ThreadPoolExecutor | None = None
        self.ready = False
        self.decisions: collections.deque = collections.deque(maxlen=200)
        self.switches: collections.deque = collections.deque(maxlen=200)
        self._window: list[float] = []
        self._outputs: list[np.ndarray] = []  # kept only for a policy that reads them (policy.reads_outputs)
        self._window_start = time.perf_counter()
        self._window_lock = threading.Lock()
        self._recent: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=500))
        self.registry = CollectorRegistry()
        self.m_requests = Counter("edgeprune_requests", "Inference requests answered", ["model", "variant", "code"],
                                  registry=self.registry)
        self.m_latency = Histogram("edgeprune_inference_seconds", "Inference time per request (thread pool)",
                                   ["variant"], registry=self.registry,
                                   buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.m_active = Gauge("edgeprune_active_variant", "1 for the variant the routed model answers with",
                              ["variant"], registry=self.registry)
        self.m_switches = Counter("edgeprune_switches", "Switches of the active variant", ["mode"],
                                  registry=self.registry)
        self.m_detections = Counter("edgeprune_detections", "Detections answered (detector portfolios)",
                                    ["variant"], registry=self.registry)
        self.m_switch_s = Histogram("edgeprune_switch_seconds", "Time a switch took in the server", ["mode"],
                                    registry=self.registry, buckets=(1e-5, 1e-4, .001, .01, .05, .1, .5, 1, 5))
        self._show_active()

    def _show_active(self) -> None:
        for v in self.manifest.variants:
            self.m_active.labels(v.id).set(1 if v.id == self.sessions.active else 0)

    # inference --------------------------------------------------------------------------------------------
    def run(self, model: str, x: np.ndarray) -> tuple[str, Any]:
        """Run `x` on `model` (a variant id, or the routed model) in this thread; record the timing and let
        the policy decide when a window is full. A variant without a session now is a NotLoaded (409).
        Returns the variant and its output: an array, or a detector's Detections per sample."""
        t0 = time.perf_counter()
        vid, y = self.sessions.infer(x, None if model == ROUTED else model)
        if self.manifest.task == "detect":  # a caller waits for the decoding too, and the profile timed both
            from ..detection.detector import decode

            size = self.manifest.detection["input_sizes"][vid]
            y = [decode(out, size) for out in y]
        ms = (time.perf_counter() - t0) * 1e3
        self.m_latency.labels(vid).observe(ms / 1e3)
        self._recent[vid].append(ms)
        if model == ROUTED:
            self._observe(vid, ms, y)
        return vid, y

    def _observe(self, vid: str, ms: float, y: Any) -> None:
        with self._window_lock:
            if vid != self.sessions.active:
                return  # a request begun before a switch says nothing about the new variant
            self._window.append(ms)
            if self.policy.reads_outputs:
                self._outputs.append(y)
            seconds = time.perf_counter() - self._window_start
            if len(self._window) < self.window_requests and seconds < self.window_s:
                return
            window = policy_mod.Window(vid, self._window, seconds, self._outputs)
            self._window, self._outputs, self._window_start = [], [], time.perf_counter()
            decision = self.policy.decide(window)
            self._log(decision)
        if decision.want != decision.active:  # outside the lock: a switch starts a new window under it
            self.switch(decision.want, f"policy {decision.policy}: {decision.reason}")

    def _log(self, decision: policy_mod.Decision) -> None:
        entry = asdict(decision)
        self.decisions.append(entry)
        if self.on_decision is not None:
            self.on_decision(entry)

    def switch(self, vid: str, why: str) -> float:
        before = self.sessions.active
        seconds = self.sessions.switch(vid)
        if before != vid:
            self.switches.append({"time": time.time(), "from": before, "to": vid, "seconds": seconds, "why": why})
            self.m_switches.labels(self.sessions.mode).inc()
            self.m_switch_s.labels(self.sessions.mode).observe(seconds)
            with self._window_lock:
                self._window, self._outputs, self._window_start = [], [], time.perf_counter()
            self._show_active()
        return seconds

    def set_policy(self, name: str, params: dict) -> dict:
        new = policy_mod.make(self.manifest, name, **params)
        switched = None
        if isinstance(new, policy_mod.Fixed) and new.variant is not None:
            switched = self.switch(new.variant, "PUT /v2/portfolio/policy")
        self.policy = new
        return {**self.policy_state(), "switch_seconds": switched}

    def policy_state(self) -> dict:
        last = self.decisions[-1] if self.decisions else None
        return {"name": self.policy.name, "params": self.policy.params(), "active": self.sessions.active,
                "switch_mode": self.sessions.mode, "budget_met": last["budget_met"] if last else True,
                "decisions": list(self.decisions)[-50:], "switches": list(self.switches)[-50:]}

    def live_latency(self) -> dict:
        return {vid: {"p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)), "n": len(d)}
                for vid, d in list(self._recent.items()) if d}

    # responses --------------------------------------------------------------------------------------------
    def output_specs(self) -> list[dict]:
        if self.manifest.task != "detect":
            return [{"name": "output", "datatype": "FP32", "shape": [-1, self.manifest.classes]}]
        return [{"name": "boxes", "datatype": "FP32", "shape": [-1, 4]}, {"name": "scores", "datatype": "FP32",
                "shape": [-1]}, {"name": "classes", "datatype": "INT64", "shape": [-1]},
                {"name": "batch_index", "datatype": "INT64", "shape": [-1]}]

    def outputs(self, vid: str, y: Any) -> list[dict]:
        """The KServe v2 outputs of `y`, what `run` returned for variant `vid`."""
        if self.manifest.task != "detect":
            return [{"name": "output", "shape": list(y.shape), "datatype": "FP32", "data": y.ravel().tolist()}]
        # ragged per-sample detections flattened, each tagged with its sample (as torchvision's batched NMS does)
        index = np.repeat(np.arange(len(y)), [len(d) for d in y])
        boxes = np.concatenate([d.boxes for d in y]).reshape(-1, 4)
        self.m_detections.labels(vid).inc(len(index))
        columns = (("boxes", boxes, "FP32"), ("scores", np.concatenate([d.scores for d in y]), "FP32"),
                   ("classes", np.concatenate([d.classes for d in y]), "INT64"), ("batch_index", index, "INT64"))
        return [{"name": n, "shape": list(a.shape), "datatype": t, "data": a.ravel().tolist()} for n, a, t in columns]

    # request parsing --------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        return [ROUTED, *self.manifest.ids]

    def check_model(self, model: str) -> None:
        if model not in self.model_ids():
            raise BadRequest(404, f"unknown model {model!r}; this server holds {', '.join(self.model_ids())}")

    def tensor_from_json(self, body: bytes) -> tuple[np.ndarray, str | None]:
        """The input tensor of a JSON request, and the request's id."""
        try:
            req = InferRequest.model_validate_json(body)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "json_invalid":
                raise BadRequest(400, f"request body is not valid JSON ({err['msg']}); send "
                                      '{"inputs": [{"name", "shape", "datatype", "data"}]}') from None
            raise BadRequest(422, f"{where or 'body'}: {err['msg']}; expected "
                                  '{"inputs": [{"name", "shape", "datatype", "data"}]}') from None
        m = self.manifest
        if len(req.inputs) != 1:
            raise BadRequest(422, f"expected 1 input named {m.input_name!r}, got {len(req.inputs)}")
        inp = req.inputs[0]
        if inp.datatype not in V2_DTYPES or inp.datatype != m.datatype:
            raise BadRequest(422, f"input {inp.name!r} has datatype {inp.datatype!r}; expected {m.datatype!r}")
        self.check_shape(inp.shape)
        try:
            x = np.asarray(inp.data, dtype=V2_DTYPES[inp.datatype])
        except (TypeError, ValueError):
            raise BadRequest(422, f"input {inp.name!r}: data must hold numbers only (flat or nested lists), as "
                                  f"{m.datatype} values") from None
        return self.reshape(x, inp.shape), req.id

    def tensor_from_bytes(self, body: bytes, shape_header: str | None) -> np.ndarray:
        try:
            shape = [int(s) for s in (shape_header or "").split(",")]
        except ValueError:
            example = ",".join(map(str, [1, *self.manifest.input_shape]))
            raise BadRequest(400, f"a binary body needs its shape in the Inference-Shape header, e.g. "
                                  f"'{example}'; got {shape_header!r}") from None
        self.check_shape(shape)
        return self.reshape(np.frombuffer(body, dtype="<f4"), shape, nbytes=len(body))

    def check_shape(self, shape: list[int]) -> None:
        want = self.manifest.input_shape
        if len(shape) != len(want) + 1 or list(shape[1:]) != want or not 1 <= shape[0] <= MAX_BATCH:
            raise BadRequest(422, f"input shape {list(shape)} does not fit: expected [N, {', '.join(map(str, want))}] "
                                  f"with 1 <= N <= {MAX_BATCH}")

    def reshape(self, x: np.ndarray, shape: list[int], nbytes: int | None = None) -> np.ndarray:
        need = int(np.prod(shape))
        if x.size != need:
            got = f"{nbytes} bytes ({x.size} FP32 values)" if nbytes is not None else f"{x.size} elements"
            raise BadRequest(422, f"shape {shape} needs {need} elements, got {got}")
        if not np.isfinite(x).all():
            raise BadRequest(422, "data holds NaN or infinity; send finite numbers")
        return np.ascontiguousarray(x.reshape(shape), dtype=np.float32)

    async def read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BadRequest(413, f"request body of {int(declared)} bytes is over the limit of {self.max_body_bytes} "
                                  f"bytes (--max-body-mb); send smaller batches")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BadRequest(413, f"request body is over the limit of {self.max_body_bytes} bytes "
                                      "(--max-body-mb); send smaller batches")
            chunks.append(chunk)
        return b"".join(chunks)


def create_app(server: Server) -> FastAPI:
    """The FastAPI app serving `server`; its lifespan starts the thread pool and, at shutdown, waits for the
    inference jobs in it to finish."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.executor = ThreadPoolExecutor(server.workers, thread_name_prefix="edgeprune-infer")
        server.ready = True
        try:
            yield
        finally:
            server.ready = False
            server.executor.shutdown(wait=True)

    app = FastAPI(title="edgeprune serve", version=__version__, lifespan=lifespan)
    app.state.server = server
    m = server.manifest

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(EdgePruneError)
    async def edgeprune_error(request: Request, e: EdgePruneError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=409 if isinstance(e, SwitchConflict) else 422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return JSONResponse({"error": f"{where}: {err['msg']}"}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        return status.page(m, server.sessions.mode)

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 503)

    @app.get("/v2")
    def metadata() -> dict:
        return {"name": "edgeprune", "version": __version__,
                "extensions": ["model_repository", "edgeprune_portfolio", "binary_tensor_data"]}

    @app.get("/v2/models")
    def models() -> dict:
        loaded = set(server.sessions.loaded())
        return {"active": server.sessions.active, "models": [
            {"name": i, "state": "READY" if i == ROUTED or i in loaded else "UNAVAILABLE"} for i in server.model_ids()]}

    @app.get("/v2/models/{model}")
    def model_metadata(model: str) -> dict:
        server.check_model(model)
        params: dict[str, Any] = {"active_variant": server.sessions.active} if model == ROUTED else {
            k: v for k, v in asdict(m.variant(model)).items() if k in ("accuracy", "params", "bytes", "p50_ms",
                                                                        "p90_ms", "method", "sha256",
                                                                        "precision")}
        return {"name": model, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": m.input_name, "datatype": m.datatype, "shape": [-1, *m.input_shape]}],
                "outputs": server.output_specs(), "parameters": params}

    @app.get("/v2/models/{model}/ready")
    def model_ready(model: str) -> Response:
        server.check_model(model)
        ok = model == ROUTED or model in server.sessions.loaded()
        return JSONResponse({"name": model, "ready": ok}, status_code=200 if ok else 400)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        server.check_model(model)
        body = await server.read_body(request)
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            x = server.tensor_from_bytes(body, request.headers.get("inference-shape"))
            rid = None
        else:
            x, rid = server.tensor_from_json(body)
        loop = asyncio.get_running_loop()
        try:
            vid, y = await loop.run_in_executor(server.executor, server.run, model, x)
        except SwitchConflict:
            server.m_requests.labels(model, "", "409").inc()
            raise
        server.m_requests.labels(model, vid, "200").inc()
        out = {"model_name": model, "model_version": "1", "outputs": server.outputs(vid, y),
               "parameters": {"variant": vid}}
        if rid is not None:
            out["id"] = rid
        return JSONResponse(out, headers={"Edgeprune-Variant": vid})

    @app.post("/v2/repository/index")
    def index() -> list:
        loaded = set(server.sessions.loaded())
        return [{"name": v, "version": "1", "state": "READY" if v in loaded else "UNAVAILABLE"} for v in m.ids]

    @app.post("/v2/repository/models/{model}/load")
    async def load(model: str) -> dict:
        server.check_model(model)
        await asyncio.get_running_loop().run_in_executor(server.executor, server.sessions.load, model)
        return {"name": model, "loaded": True}

    @app.post("/v2/repository/models/{model}/unload")
    def unload(model: str) -> dict:
        server.check_model(model)
        server.sessions.unload(model)
        return {"name": model, "loaded": False}

    @app.get("/v2/portfolio/policy")
    def get_policy() -> dict:
        return {**server.policy_state(), "live_latency": server.live_latency()}

    @app.put("/v2/portfolio/policy")
    async def put_policy(req: PolicyRequest) -> dict:
        return await asyncio.get_running_loop().run_in_executor(server.executor, server.set_policy, req.name,
                                                                req.params)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    return app
