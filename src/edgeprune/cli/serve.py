"""`edgeprune serve`: a portfolio over HTTP (KServe v2), switched at run time (edgeprune.serve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .common import console, err, handled


def register(app: typer.Typer) -> None:
    app.command("serve")(handled(serve))


def serve(
    folder: Annotated[Path, typer.Argument(help="A portfolio folder (`edgeprune portfolio build`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (HTTP and gRPC).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port, 0-65535 (0: a free one).")] = 8000,
    grpc_port: Annotated[int | None, typer.Option(help="Also serve the protocol's gRPC service on this port "
                                                  "(0-65535; 0: a free one).")] = None,
    switch_mode: Annotated[str, typer.Option(help="preloaded (every variant in memory), reload (new session at "
                                             "switch time) or masks (one dense-shaped PyTorch model).")] = "preloaded",
    policy: Annotated[str, typer.Option(help="fixed, accuracy-floor, latency, realtime, roma (detectors), or a "
                                        "policy a plugin registered (serve/registry.py).")] = "fixed",
    policy_params: Annotated[str, typer.Option(help='The policy\'s parameters as JSON, e.g. \'{"budget_ms": 5}\'; '
                                               'at run time: PUT /v2/portfolio/policy {"name": "fixed", "params": '
                                               '{"variant": "r95"}}.')] = "{}",
    active: Annotated[str | None, typer.Option(help="Variant served first (default: the most accurate).")] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads per session, >= 1 (default: the "
                                                "portfolio's timing setting).")] = None,
    workers: Annotated[int, typer.Option(help="Inference threads, >= 1.")] = 2,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted, in MiB (> 0).")] = 16.0,
    control_token: Annotated[str | None, typer.Option(
        envvar="EDGEPRUNE_CONTROL_TOKEN", show_envvar=True,
        help="Load, unload and PUT policy then need 'Authorization: Bearer <token>' (gRPC: the same metadata).")]
    = None,
) -> None:
    """Serve a portfolio over the KServe v2 / Open Inference Protocol, switching variants at run time.

    The routed model `portfolio` answers with the variant the policy chose. Switch by hand with
    PUT /v2/portfolio/policy {"name": "fixed", "params": {"variant": "r95"}}. Stops on Ctrl-C or SIGTERM after
    requests in flight finish.

    Example: [bold]edgeprune serve pf --port 8000 --policy latency --policy-params '{"budget_ms": 5}'[/]
    """
    try:
        from .. import serve as serve_mod
    except ImportError as e:
        raise ConfigError(f"serving needs the serve extra ({e.name} is missing); pip install 'edgeprune[serve]'") \
            from None
    for name, value in (("--port", port), ("--grpc-port", grpc_port)):
        if value is not None and not 0 <= value <= 65535:
            raise ConfigError(f"{name} must be a port number in 0-65535, got {value}")
    import os

    cpus = os.cpu_count() or 1
    most = max(64, 4 * cpus)  # past this a server spends its time switching threads, not answering
    if threads is not None and not 1 <= threads <= most:
        raise ConfigError(f"--threads must be in 1..{most} (this machine has {cpus} CPUs; or leave it out for the "
                          f"portfolio's setting), got {threads}")
    if not 1 <= workers <= most:
        raise ConfigError(f"--workers must be in 1..{most} (this machine has {cpus} CPUs), got {workers}")
    if not 0 < max_body_mb <= 4096:  # also refuses nan and inf
        raise ConfigError(f"--max-body-mb must be a number of MiB in (0, 4096], got {max_body_mb}")
    if control_token is not None and not control_token.strip():
        raise ConfigError("--control-token (or EDGEPRUNE_CONTROL_TOKEN) is empty; give a token or leave it out")
    try:
        params = json.loads(policy_params)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--policy-params {policy_params!r} is not JSON ({e}); e.g. '{{\"budget_ms\": 5}}'") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--policy-params must be a JSON object, got {policy_params!r}")

    def decided(d: dict) -> None:
        if d["want"] != d["active"]:
            err.print(f"switch {d['active']} -> {d['want']} ({d['policy']}: {d['reason']})", highlight=False)

    if grpc_port == 0:  # a free port, chosen now so that the banner can name it
        probe = serve_mod.bind(host, 0)
        grpc_port = probe.getsockname()[1]
        probe.close()
    app = serve_mod.build(folder, switch_mode=switch_mode, policy=policy, policy_params=params, active=active,
                          threads=threads, workers=workers, max_body_bytes=int(max_body_mb * 2**20),
                          on_decision=decided, control_token=control_token, grpc_port=grpc_port, grpc_host=host)
    sock = serve_mod.bind(host, port)  # before the banner: a port in use is one line
    if grpc_port:  # the gRPC server binds in the app's startup: a port in use is one line here instead
        serve_mod.bind(host, grpc_port).close()
    if control_token is None and not serve_mod.is_loopback(host):
        err.print(f"[bold yellow]warning:[/] serving on {host}, beyond this machine, and the control endpoints "
                  "(load, unload, PUT policy) need no token; set --control-token or EDGEPRUNE_CONTROL_TOKEN",
                  highlight=False, soft_wrap=True)
    grpc = f" and grpc://{host}:{grpc_port}" if grpc_port is not None else ""
    console.print(f"serving {folder} on http://{host}:{sock.getsockname()[1]}{grpc} (switch mode {switch_mode}, "
                  f"policy {policy}); Ctrl-C stops", highlight=False, soft_wrap=True)
    serve_mod.run(app, sock)
