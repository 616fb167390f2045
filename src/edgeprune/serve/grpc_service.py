"""The protocol's gRPC service (`inference.GRPCInferenceService`), served beside HTTP from the same state.

The messages and the service descriptor are the ones `tritonclient` ships, generated from Triton's
`grpc_service.proto`: a superset of the Open Inference Protocol's `grpc_predict_v2.proto` with the same package,
service and message names, so KServe's and Triton's gRPC clients both talk to it. Nothing is generated here
(KServe and MLServer each ship messages generated from their own copy of the proto, in the same package: one
process cannot import two of these sets, kserve/kserve#3099, so this module is imported only with a gRPC port).
Served: ServerLive/Ready/Metadata, ModelReady/Metadata/Infer/Config/Statistics and the repository extension
(RepositoryIndex, RepositoryModelLoad/Unload: with a control token they need the metadata
`authorization: Bearer <token>`). The shared-memory, trace, log and streaming calls answer UNIMPLEMENTED.
Errors carry the HTTP side's one-line message: INVALID_ARGUMENT (400), NOT_FOUND (404),
FAILED_PRECONDITION (409), UNAUTHENTICATED (401), UNAVAILABLE (503).
"""

from __future__ import annotations

import functools
import logging
import time

import grpc
from google.protobuf.json_format import ParseDict

from .. import __version__
from ..errors import EdgePruneError
from ..portfolio import ROUTED
from . import codec
from .codec import BadRequest
from .control import Server, conflict_status

try:
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
except ImportError as e:  # pragma: no cover  (the serve extra installs it)
    raise ImportError(f"the gRPC service needs tritonclient[grpc] ({e.name} is missing); pip install "
                      "'edgeprune[serve]'") from e

log = logging.getLogger("edgeprune.serve")
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         503: grpc.StatusCode.UNAVAILABLE}


def _answered(method):
    """Turn the server's errors into gRPC status codes with their one-line message, and count every call."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            reply = await method(self, request, context)
        except BadRequest as e:
            status = e.status
            message = str(e)
        except EdgePruneError as e:
            status = conflict_status(e)
            message = " ".join(str(e).split())
        except Exception as e:  # noqa: BLE001  a gRPC call must end in a status, never a dropped stream
            log.exception("gRPC %s failed", method.__name__)
            self.server.metrics.grpc_call("INTERNAL", 500)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__})")
        else:
            self.server.metrics.grpc_call("OK")
            return reply
        code = CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
        self.server.metrics.grpc_call(code.name, status)
        await context.abort(code, message)

    return wrapper


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: Server):
        self.server = server

    def _control(self, context) -> None:
        auth = dict(context.invocation_metadata()).get("authorization")
        if not self.server.authorized(auth):
            raise BadRequest(401, "this control call needs the metadata 'authorization: Bearer <token>' with the "
                                  "server's --control-token")

    @_answered
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_answered
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.server.ready)

    @_answered
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="edgeprune", version=__version__, extensions=[
            "model_repository", "binary_tensor_data", "statistics", "model_configuration", "edgeprune_portfolio"])

    @_answered
    async def ModelReady(self, request, context):
        try:  # as Triton: an unknown model or version is not ready, not an error
            self.server.check_model(request.name, request.version)
        except BadRequest:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.server.is_ready(request.name))

    @_answered
    async def ModelMetadata(self, request, context):
        self.server.check_model(request.name, request.version)
        meta = self.server.metadata(request.name)
        return ParseDict({k: meta[k] for k in ("name", "versions", "platform", "inputs", "outputs")},
                         service_pb2.ModelMetadataResponse())

    @_answered
    async def ModelConfig(self, request, context):
        self.server.check_model(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=ParseDict(self.server.config(request.name),
                                                                model_config_pb2.ModelConfig()))

    @_answered
    async def ModelStatistics(self, request, context):
        if request.name:
            self.server.check_model(request.name, request.version)
        models = [request.name] if request.name else self.server.model_ids()
        return ParseDict(self.server.metrics.triton_stats(models), service_pb2.ModelStatisticsResponse())

    @_answered
    async def ModelInfer(self, request, context):
        t_start = time.perf_counter_ns()
        model = request.model_name
        self.server.check_model(model, request.model_version)
        try:
            decoded = codec.decode_grpc(request)
        except BadRequest as e:
            self.server.metrics.failed(model, e.status, time.perf_counter_ns() - t_start)
            raise
        vid, outputs = await self.server.infer(model, decoded, t_start, time.perf_counter_ns() - t_start)
        reply = service_pb2.ModelInferResponse(model_name=model, model_version="1", id=request.id)
        reply.parameters["variant"].string_param = vid
        for t in outputs:
            reply.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            reply.raw_output_contents.append(t.array.astype(codec.DTYPES[t.datatype], copy=False).tobytes())
        context.set_trailing_metadata((("edgeprune-variant", vid),))
        return reply

    @_answered
    async def RepositoryIndex(self, request, context):
        loaded = set(self.server.sessions.loaded())
        return service_pb2.RepositoryIndexResponse(models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(name=v, version="1",
                                                           state="READY" if v in loaded else "UNAVAILABLE")
            for v in self.server.manifest.ids if not request.ready or v in loaded])

    @_answered
    async def RepositoryModelLoad(self, request, context):
        self._control(context)
        self.server.check_model(request.model_name)
        if request.model_name != ROUTED:
            await self.server.on_control(self.server.sessions.load, request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_answered
    async def RepositoryModelUnload(self, request, context):
        self._control(context)
        self.server.check_model(request.model_name)
        if request.model_name == ROUTED:
            raise BadRequest(409, f"{ROUTED!r} is the routed model and cannot be unloaded; unload a variant")
        await self.server.on_control(self.server.sessions.unload, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


async def start(server: Server, host: str, port: int) -> grpc.aio.Server:
    """The gRPC server of `server`, listening on host:port (0: a free port, then in `.port`)."""
    from ..errors import ConfigError

    grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", server.max_body_bytes),
                                           ("grpc.so_reuseport", 0)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(server), grpc_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"cannot listen for gRPC on {address}; choose another --grpc-port or stop what uses it")
    await grpc_server.start()
    grpc_server.port = bound
    return grpc_server
