"""The HTTP server: a portfolio behind the KServe v2 / Open Inference Protocol, with Triton's model-control,
configuration and statistics endpoints, a switching policy and Prometheus metrics.

- `GET /v2/health/live|ready`, `GET /v2`, `GET /v2/models`, `GET /v2/models/{m}[/versions/1][/ready|config|stats]`
- `POST /v2/models/{m}[/versions/1]/infer`: JSON tensors `{"inputs": [{"name", "shape", "datatype", "data"}]}`,
  or the binary tensor extension (`Inference-Header-Content-Length`; serve/codec.py), answered in binary for the
  outputs asked so. `portfolio` is the routed model: it answers with the active variant, and every response
  names the variant that computed it (`parameters.variant` and the `Edgeprune-Variant` header).
- `POST /v2/repository/index`, `POST /v2/repository/models/{m}/load|unload` (Triton's repository extension)
- `GET|PUT /v2/portfolio/policy`: the policy, its parameters, the decision and switch logs; PUT sets a policy
  as `{"name": "fixed", "params": {"variant": "r95"}}` (a fixed variant switches at once; the parameters of
  each policy are in serve/policy.py). Load, unload and PUT policy are the control endpoints: with a control
  token they need `Authorization: Bearer <token>`.
- `GET /metrics`: Prometheus text format; `GET /`: a status page (serve/status.py).

Every error, unknown routes and malformed bodies included, is `{"error": "<one line>"}`: 400 bad request, 401
control endpoint without the token, 404 unknown model, version or route, 405 method, 409 a state conflict (a
variant not loaded, the active one unloaded), 413 body over `--max-body-mb`, 503 not ready.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .. import __version__
from ..errors import EdgePruneError
from ..portfolio import ROUTED
from . import codec, status
from . import policy as policy_mod
from .codec import BadRequest
from .control import MAX_BATCH, MAX_BODY_BYTES, Server, conflict_status  # noqa: F401  (re-exported)


class PolicyRequest(BaseModel):
    """`{"name": <policy>, "params": {...}}`; nothing else."""

    model_config = ConfigDict(extra="forbid")
    name: str  # a registered policy (policy.names())
    params: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        known = policy_mod.names()
        if name not in known:
            expected = " or ".join([", ".join(repr(n) for n in known[:-1]), repr(known[-1])] if len(known) > 1
                                   else [repr(n) for n in known])
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return name


class ErrorBody(BaseModel):
    error: str


def _errors(*codes: int) -> dict:
    what = {400: "Bad request", 401: "Control endpoint without the bearer token", 404: "Unknown model or version",
            409: "Conflict with the server's state", 413: "Body over the limit", 503: "Not ready"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


def _infer_body() -> dict:
    schema = codec.InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "JSON, or the binary tensor extension (Inference-Header-Content-Length: the JSON "
                       "header's length)"},
        "responses": {"200": {"description": "The outputs", "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}}


MAX_ERROR_CHARS = 400  # an error names the value it refuses; a long value (a 20 MiB variant name) is cut


def _one_line(e: Exception | str) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


class BodyLimit:
    """Every route's request body is held to --max-body-mb, not only the infer routes' (which read it themselves):
    a declared Content-Length over the limit is a 413 before anything is read, and a chunked body is cut off there."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.server.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"error": f"request body of {int(declared)} bytes is over the limit of {limit} "
                                              "bytes (--max-body-mb); send smaller batches"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BadRequest(413, f"request body is over the limit of {limit} bytes (--max-body-mb); send "
                                      "smaller batches")
            return message

        return await self.app(scope, bounded, send)


def create_app(server: Server, grpc_port: int | None = None, grpc_host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app serving `server`; its lifespan starts the thread pools (and the gRPC server on
    `grpc_port`, when given) and, at shutdown, waits for the jobs in them to finish."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        grpc_server = None
        if grpc_port is not None:
            from .grpc_service import start

            grpc_server = await start(server, grpc_host, grpc_port)
            app.state.grpc_port = grpc_server.port
        try:
            yield
        finally:
            server.ready = False
            if grpc_server is not None:
                await grpc_server.stop(5)
            server.stop()

    app = FastAPI(title="edgeprune serve", version=__version__, lifespan=lifespan,
                  description=__doc__.split("\n\n")[0])
    app.state.server = server
    app.add_middleware(BodyLimit, server=server)
    m = server.manifest

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        server.metrics.response(response.status_code)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": _one_line(e)}, status_code=e.status)

    @app.exception_handler(EdgePruneError)
    async def edgeprune_error(request: Request, e: EdgePruneError) -> JSONResponse:
        return JSONResponse({"error": _one_line(e)}, status_code=conflict_status(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {where!r}"
        elif err["type"] == "json_invalid":
            msg = "body is not valid JSON"
        else:
            msg = f"{where}: {err['msg']}"
        hint = '; send {"name": "fixed", "params": {"variant": "..."}}' if request.url.path.endswith("/policy") \
            else ""
        return JSONResponse({"error": msg + hint}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; the API is listed at /docs"
        elif e.status_code == 405:  # Allow: the methods of every route of this path, not only the first's
            allowed = sorted({method for r in app.router.routes if r.matches(request.scope)[0] != Match.NONE
                              for method in getattr(r, "methods", ()) or ()})
            msg = f"{request.url.path} takes {', '.join(allowed)}, not {request.method}"
            return JSONResponse({"error": _one_line(msg)}, status_code=405, headers={"Allow": ", ".join(allowed)})
        else:
            msg = str(e.detail)
        return JSONResponse({"error": _one_line(msg)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        server.metrics.response(500)  # the middleware does not see a response the handler makes
        return JSONResponse({"error": f"internal error ({type(e).__name__}); the server's log has the details"},
                            status_code=500)

    def control(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if not server.authorized(authorization):
            raise BadRequest(401, "this control endpoint needs the header 'Authorization: Bearer <token>' with "
                                  "the server's --control-token")

    guarded = [Depends(control)]

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        return status.page(m, server.sessions.mode)

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", responses=_errors(503))
    def ready() -> dict:
        if not server.ready:
            raise BadRequest(503, "the server is starting or stopping")
        return {"ready": True}

    @app.get("/v2")
    def metadata() -> dict:
        return {"name": "edgeprune", "version": __version__,
                "extensions": ["model_repository", "binary_tensor_data", "statistics", "model_configuration",
                               "edgeprune_portfolio"]}

    @app.get("/v2/models")
    def models() -> dict:
        return {"active": server.sessions.active, "models": [
            {"name": i, "state": "READY" if server.is_ready(i) else "UNAVAILABLE"} for i in server.model_ids()]}

    @app.get("/v2/models/stats", responses=_errors(404))
    def all_stats() -> dict:
        return server.metrics.triton_stats(server.model_ids())

    # documented as the models this server holds and its one version; another name is a 404 all the same
    Model = Path(description="A variant, or the routed model", json_schema_extra={"enum": server.model_ids()})
    Version = Path(description="The model's version", json_schema_extra={"enum": ["1"]})

    def unversioned(model: str = Model) -> tuple[str, None]:
        return model, None

    def versioned(model: str = Model, version: str = Version) -> tuple[str, str]:
        return model, version

    for prefix, key in (("/v2/models/{model}", unversioned), ("/v2/models/{model}/versions/{version}", versioned)):
        @app.get(prefix, responses=_errors(404))
        def model_metadata(k: tuple = Depends(key)) -> dict:
            server.check_model(*k)
            return server.metadata(k[0])

        @app.get(f"{prefix}/ready", responses=_errors(400, 404))
        def model_ready(k: tuple = Depends(key)) -> dict:
            server.check_model(*k)
            if not server.is_ready(k[0]):
                raise BadRequest(400, f"model {k[0]!r} is not loaded; load it (POST "
                                      f"/v2/repository/models/{k[0]}/load)")
            return {"name": k[0], "ready": True}

        @app.get(f"{prefix}/config", responses=_errors(404))
        def model_config(k: tuple = Depends(key)) -> dict:
            server.check_model(*k)
            return server.config(k[0])

        @app.get(f"{prefix}/stats", responses=_errors(404))
        def model_stats(k: tuple = Depends(key)) -> dict:
            server.check_model(*k)
            return server.metrics.triton_stats([k[0]])

        @app.post(f"{prefix}/infer", responses=_errors(400, 404, 409, 413), openapi_extra=_infer_body())
        async def infer(request: Request, k: tuple = Depends(key)) -> Response:
            t_start = time.perf_counter_ns()
            model = k[0]
            server.check_model(*k)
            try:
                body = codec.inflate(await read_body(server, request), request.headers.get("content-encoding"),
                                     server.max_body_bytes)
                decoded = codec.decode_http(body, request.headers.get(codec.HEADER_LENGTH))
            except BadRequest as e:
                server.metrics.failed(model, e.status, time.perf_counter_ns() - t_start)
                raise
            input_ns = time.perf_counter_ns() - t_start
            vid, outputs = await server.infer(model, decoded, t_start, input_ns)
            head: dict[str, Any] = {"model_name": model, "model_version": "1", "parameters": {"variant": vid}}
            if decoded.id is not None:
                head["id"] = decoded.id
            content, length = codec.encode_http(head, outputs, decoded.binary, decoded.binary_default)
            headers = {"Edgeprune-Variant": vid}
            if length is None:
                return Response(content, media_type="application/json", headers=headers)
            headers["Inference-Header-Content-Length"] = str(length)
            return Response(content, media_type="application/octet-stream", headers=headers)

    @app.post("/v2/repository/index")
    def index() -> list:
        loaded = set(server.sessions.loaded())
        return [{"name": v, "version": "1", "state": "READY" if v in loaded else "UNAVAILABLE"} for v in m.ids]

    @app.post("/v2/repository/models/{model}/load", dependencies=guarded, responses=_errors(401, 404, 409))
    async def load(model: str = Model) -> dict:
        server.check_model(model)
        if model != ROUTED:
            await server.on_control(server.sessions.load, model)
        return {"name": model, "loaded": True}

    @app.post("/v2/repository/models/{model}/unload", dependencies=guarded, responses=_errors(401, 404, 409))
    async def unload(model: str = Model) -> dict:
        server.check_model(model)
        if model == ROUTED:
            raise BadRequest(409, f"{ROUTED!r} is the routed model and cannot be unloaded; unload a variant")
        await server.on_control(server.sessions.unload, model)
        return {"name": model, "loaded": False}

    @app.get("/v2/portfolio/policy")
    def get_policy() -> dict:
        return {**server.policy_state(), "live_latency": server.live_latency(), "traffic": server.metrics.summary(),
                "server_time": time.time()}

    @app.put("/v2/portfolio/policy", dependencies=guarded, responses=_errors(400, 401, 409))
    async def put_policy(req: PolicyRequest) -> dict:
        return await server.on_control(server.set_policy, req.name, req.params)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            defs = codec.InferRequest.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs)
            # validation errors are answered 400 {"error"} (documented per route), never FastAPI's 422
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            # the policies this portfolio's task takes (realtime scores classifiers, roma chooses detectors)
            name_schema = schemas.get("PolicyRequest", {}).get("properties", {}).get("name")
            if name_schema is not None:
                name_schema["enum"] = policy_mod.names(m.task)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


async def read_body(server: Server, request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > server.max_body_bytes:
        raise BadRequest(413, f"request body of {int(declared)} bytes is over the limit of {server.max_body_bytes} "
                              "bytes (--max-body-mb); send smaller batches")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > server.max_body_bytes:
            raise BadRequest(413, f"request body is over the limit of {server.max_body_bytes} bytes "
                                  "(--max-body-mb); send smaller batches")
        chunks.append(chunk)
    return b"".join(chunks)
