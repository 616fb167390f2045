"""`edgeprune serve`: a portfolio served over the KServe v2 / Open Inference Protocol (HTTP, and gRPC beside it),
switched at run time by a policy.

`app` is the FastAPI application, `grpc_service` the gRPC one, `control` the state both share (the control loop),
`codec` the tensor formats, `metrics` what is counted, `sessions` holds the variants in a switch mode, `policy`
chooses the variant. `build` puts them together from a portfolio folder (verified before anything is served) and `run`
serves it with uvicorn until SIGINT/SIGTERM, letting requests in flight finish. Needs `edgeprune[serve]`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

__all__ = ["bind", "build", "is_loopback", "run"]


def build(folder: str | Path, *, switch_mode: str = "preloaded", policy: str = "fixed",
          policy_params: dict | None = None, active: str | None = None, threads: int | None = None,
          workers: int = 2, max_body_bytes: int | None = None, window_requests: int = 20, window_s: float = 0.5,
          on_decision: Callable[[dict], None] | None = None, control_token: str | None = None,
          grpc_port: int | None = None, grpc_host: str = "127.0.0.1"):
    """The FastAPI app serving the portfolio in `folder` (loaded and verified now; a bad portfolio raises a
    PortfolioError naming the file). `threads`: ONNX Runtime threads per session (default: the portfolio's).
    `control_token`: load, unload and PUT policy then need `Authorization: Bearer <token>`. `grpc_port`: the
    protocol's gRPC service too, on that port (0: a free one; `app.state.grpc_port` says which), from the same
    state."""
    from .. import portfolio
    from . import app as app_mod
    from . import control
    from . import policy as policy_mod
    from .sessions import Sessions

    manifest = portfolio.load(folder)
    sessions = Sessions(folder, manifest, switch_mode, threads or manifest.threads, active)
    chosen = policy_mod.make(manifest, policy, **(policy_params or {}))
    server = control.Server(folder, manifest, sessions, chosen, workers=workers, window_requests=window_requests,
                            window_s=window_s, max_body_bytes=max_body_bytes or control.MAX_BODY_BYTES,
                            on_decision=on_decision, control_token=control_token)
    return app_mod.create_app(server, grpc_port, grpc_host)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a port in use (or a bad address) is one ConfigError line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio turns Nagle's algorithm off only on sockets whose proto is IPPROTO_TCP, and
    # with it on, every keep-alive response waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or stop what "
                          "uses it") from None
    sock.listen(128)
    return sock


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(app, sock: socket.socket, graceful_s: float = 10.0) -> None:
    """Serve `app` on the listening socket `sock` (see `bind`) until SIGINT/SIGTERM; requests in flight then
    get `graceful_s` seconds to finish."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
