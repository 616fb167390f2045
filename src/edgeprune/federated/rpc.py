"""The wire between a device and its edge server in split training (split.py): gRPC unary calls on the service
`edgeprune.Edge`, without generated stubs; each message is a dict of tensors and plain values, `torch.save`d, and
read back with `weights_only=True` (no pickled code crosses the wire). An edge's refusal travels back as its error
type; an edge that does not answer is retried with doubling backoff."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import torch

from ..errors import CheckpointError, EdgePruneError

SERVICE = "edgeprune.Edge"
METHODS = ("Configure", "Step", "Pull", "Restore", "Resume", "Health")


class EdgeUnreachable(EdgePruneError):
    """An edge server did not answer after the retries."""


class EdgeRefused(EdgePruneError):
    """An edge server refused a request (unknown device, a checkpoint of another model, ...)."""


def pack(message: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(message, buf)
    return buf.getvalue()


def unpack(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def _handler(target: object, service: str, methods: Sequence[str]) -> grpc.GenericRpcHandler:
    def wrap(method):
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return pack(method(unpack(request)))
            except EdgePruneError as e:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(e).__name__}: {e}")
            except (KeyError, RuntimeError, ValueError) as e:  # a malformed message: say what, keep serving
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(e).__name__}: {str(e)[:300]}")

        return grpc.unary_unary_rpc_method_handler(call)

    return grpc.method_handlers_generic_handler(
        service, {name: wrap(getattr(target, name.lower())) for name in methods})


def serve(target: object, address: str = "127.0.0.1:0", service: str = SERVICE,
          methods: Sequence[str] = METHODS, also: Sequence[str] = ()) -> tuple[grpc.Server, int]:
    """Serve `target`'s methods (an Edge's by default) on a gRPC server at `address` (port 0: any free one; or
    `unix:PATH`) and the addresses in `also`; returns the server and the port of `address`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=_OPTIONS)
    server.add_generic_rpc_handlers((_handler(target, service, methods),))
    port = server.add_insecure_port(address)
    for extra in also:
        server.add_insecure_port(extra)
    server.start()
    return server, port


# Activations of a batch of 100 at VGG-5's first layer are 13 MB; gRPC's default cap is 4 MB.
_OPTIONS = [("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]


@dataclass
class EdgeClient:
    """Calls an edge at `address`; retries an unreachable edge `retries` times with doubling backoff. `rtt_ms`: a
    round-trip time slept before each call, for links emulated on a kernel without netem (see emulate)."""

    address: str
    retries: int = 3
    backoff_s: float = 0.2
    timeout_s: float = 600.0
    rtt_ms: float = 0.0
    service: str = SERVICE
    _channel: grpc.Channel | None = field(default=None, repr=False)

    def call(self, method: str, message: dict) -> dict:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=_OPTIONS)
        rpc = self._channel.unary_unary(f"/{self.service}/{method}")
        delay = self.backoff_s
        time.sleep(self.rtt_ms / 1e3)
        for attempt in range(self.retries + 1):
            try:
                return unpack(rpc(pack(message), timeout=self.timeout_s))
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                    kind, _, text = e.details().partition(": ")
                    raise (CheckpointError if kind == "CheckpointError" else EdgeRefused)(text) from None
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise EdgeUnreachable(f"edge {self.address} did not answer {method} ({e.code().name}) after "
                                          f"{attempt + 1} tries; check that its server runs and the address is "
                                          "right") from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
