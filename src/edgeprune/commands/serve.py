"""`edgeprune serve`: a portfolio over HTTP (KServe v2), switched at run time (edgeprune.serve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..cli import _handled, console, err
from ..errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("serve")(_handled(serve))


def serve(
    folder: Annotated[Path, typer.Argument(help="A portfolio folder (`edgeprune portfolio build`).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    switch_mode: Annotated[str, typer.Option(help="preloaded (every variant in memory), reload (new session at "
                                             "switch time) or masks (one dense-shaped PyTorch model).")] = "preloaded",
    policy: Annotated[str, typer.Option(help="fixed, accuracy-floor, latency, realtime, roma (detectors).")] = "fixed",
    policy_params: Annotated[str, typer.Option(help='The policy\'s parameters as JSON, e.g. \'{"budget_ms": 5}\'.')]
    = "{}",
    active: Annotated[str | None, typer.Option(help="Variant served first (default: the most accurate).")] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads per session (default: the "
                                                "portfolio's timing setting).")] = None,
    workers: Annotated[int, typer.Option(help="Inference threads.")] = 2,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted.")] = 16.0,
) -> None:
    """Serve a portfolio over the KServe v2 protocol, switching variants at run time.

    The routed model `portfolio` answers with the variant the policy chose. Stops on Ctrl-C or SIGTERM after
    requests in flight finish.

    Example: [bold]edgeprune serve pf --port 8000 --policy latency --policy-params '{"budget_ms": 5}'[/]
    """
    try:
        from .. import serve as serve_mod
    except ImportError as e:
        raise ConfigError(f"serving needs the serve extra ({e.name} is missing); pip install 'edgeprune[serve]'") \
            from None
    try:
        params = json.loads(policy_params)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--policy-params {policy_params!r} is not JSON ({e}); e.g. '{{\"budget_ms\": 5}}'") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--policy-params must be a JSON object, got {policy_params!r}")
    if max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be positive, got {max_body_mb}")

    def decided(d: dict) -> None:
        if d["want"] != d["active"]:
            err.print(f"switch {d['active']} -> {d['want']} ({d['policy']}: {d['reason']})", highlight=False)

    app = serve_mod.build(folder, switch_mode=switch_mode, policy=policy, policy_params=params, active=active,
                          threads=threads, workers=workers, max_body_bytes=int(max_body_mb * 2**20),
                          on_decision=decided)
    sock = serve_mod.bind(host, port)  # before the banner: a port in use is one line
    console.print(f"serving {folder} on http://{host}:{port} (switch mode {switch_mode}, policy {policy}); "
                  "Ctrl-C stops", highlight=False)
    serve_mod.run(app, sock)
