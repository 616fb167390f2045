"""The served OpenAPI document against what the server does: a bounded schemathesis run (examples, coverage and
fuzzing phases, positive and negative data, a fixed seed, a bounded count and time) against a real server on
127.0.0.1 must find no 5xx, no undocumented status code, content type or header, and no response that breaks its
documented schema."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_portfolio import portfolio_dir, variant_runs  # noqa: F401  (shared session fixtures)
from test_serve import Running

from edgeprune import serve

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance")


def _schemathesis() -> str | None:
    here = Path(sys.executable).parent / "schemathesis"
    return str(here) if here.exists() else shutil.which("schemathesis")


@pytest.mark.slow  # about 100 s on 2 busy cores, bounded by --max-examples and --max-time
@pytest.mark.skipif(_schemathesis() is None, reason="needs schemathesis (pip install -e '.[dev]')")
def test_schemathesis_finds_no_server_error_and_no_schema_violation(portfolio_dir, tmp_path):  # noqa: F811
    app = serve.build(portfolio_dir, window_s=60, window_requests=10**6, max_body_bytes=200_000)
    with Running(app) as c:
        url = f"http://127.0.0.1:{c.base_url.port}"
        env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
        run = subprocess.run([_schemathesis(), "run", f"{url}/openapi.json", "--checks", CHECKS,
                              "--max-examples", "10", "--seed", "1", "--max-time", "90", "--request-timeout", "20",
                              "--phases", "examples,coverage,fuzzing", "--no-shrink",
                              "--generation-database", "none", "--exclude-path", "/metrics"],
                             capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
        assert c.get("/v2/health/ready").status_code == 200  # and it still serves
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "operations" in run.stdout.lower() or "passed" in run.stdout.lower(), run.stdout[-2000:]
