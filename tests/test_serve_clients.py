"""The server as the protocol's standard clients see it: tritonclient (HTTP and gRPC, sync and asyncio, binary and
JSON tensors) and the kserve SDK's v2 REST client, against a real uvicorn server with its gRPC service on
127.0.0.1 (free ports), torn down after. Every output is compared with ONNX Runtime's, bit for bit."""

import asyncio

import numpy as np
import pytest
from test_portfolio import portfolio_dir, variant_runs  # noqa: F401  (shared session fixtures)
from test_serve import Running

from edgeprune import portfolio, serve
from edgeprune.ort import ort_session

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((3, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(portfolio_dir, x):  # noqa: F811
    m = portfolio.load(portfolio_dir)
    return {v.id: ort_session(portfolio_dir / v.onnx).run(None, {"input": x})[0] for v in m.variants}


@pytest.fixture(scope="module")
def urls(portfolio_dir):  # noqa: F811
    app = serve.build(portfolio_dir, active="dense", window_s=60, window_requests=10**6, control_token=TOKEN,
                      grpc_port=0, max_body_bytes=200_000)
    with Running(app) as c:
        yield {"http": f"127.0.0.1:{c.base_url.port}", "grpc": f"127.0.0.1:{app.state.grpc_port}",
               "base": str(c.base_url), "client": c}


def _inputs(module, x, binary):
    inp = module.InferInput("input", list(x.shape), "FP32")
    if module is httpclient:
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    return [inp]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_sync(urls, x, expected, binary):
    c = httpclient.InferenceServerClient(urls["http"])
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("portfolio") and c.is_model_ready("portfolio", "1") and c.is_model_ready("r70", "1")
        assert not c.is_model_ready("portfolio", "2")
        meta = c.get_model_metadata("r95", "1")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        config = c.get_model_config("r95")
        assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [1, 28, 28]
        assert config["output"][0] == {"name": "output", "data_type": "TYPE_FP32", "dims": [10]}
        before = c.get_inference_statistics("r70")["model_stats"][0]
        for vid, want in expected.items():
            outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
            r = c.infer(vid, _inputs(httpclient, x, binary), outputs=outputs, model_version="1", request_id="q1")
            np.testing.assert_array_equal(r.as_numpy("output"), want)
            assert r.get_response()["parameters"]["variant"] == vid and r.get_response()["id"] == "q1"
            assert ("binary_data_size" in r.get_output("output").get("parameters", {})) == binary
        r = c.infer("portfolio", _inputs(httpclient, x, binary))  # no outputs named: all in binary
        np.testing.assert_array_equal(r.as_numpy("output"), expected["dense"])
        after = c.get_inference_statistics("r70", "1")["model_stats"][0]
        assert after["execution_count"] == before["execution_count"] + 1
        assert after["inference_count"] == before["inference_count"] + 3
        s = after["inference_stats"]
        assert s["success"]["count"] == after["execution_count"] and s["compute_infer"]["ns"] > 0
        assert s["success"]["ns"] >= s["compute_infer"]["ns"] + s["queue"]["ns"]
        with pytest.raises(InferenceServerException, match=r"input shape \[3, 1, 28\] does not fit"):
            c.infer("portfolio", [httpclient.InferInput("input", [3, 1, 28], "FP32").set_data_from_numpy(
                x[:, :, 0], binary_data=binary)])
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            c.get_model_metadata("nope")
    finally:
        c.close()


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_http_compressed_requests(urls, x, expected, compression):
    c = httpclient.InferenceServerClient(urls["http"])
    try:
        r = c.infer("r70", _inputs(httpclient, x, True), request_compression_algorithm=compression,
                    response_compression_algorithm=compression)
        np.testing.assert_array_equal(r.as_numpy("output"), expected["r70"])
    finally:
        c.close()
    bomb = __import__("gzip").compress(b"\0" * 300_000)  # inflates past the server's limit
    r = urls["client"].post("/v2/models/r70/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "inflates past the limit" in r.json()["error"]
    r = urls["client"].post("/v2/models/r70/infer", content=b"x", headers={"content-encoding": "br"})
    assert r.status_code == 400 and "Content-Encoding 'br' is not accepted" in r.json()["error"]


def test_tritonclient_http_control_needs_the_token(urls):
    c = httpclient.InferenceServerClient(urls["http"])
    try:
        with pytest.raises(InferenceServerException, match="needs the header 'Authorization: Bearer <token>'"):
            c.unload_model("r70")
        c.unload_model("r70", headers={"Authorization": f"Bearer {TOKEN}"})
        assert not c.is_model_ready("r70")
        index = {m["name"]: m["state"] for m in c.get_model_repository_index()}
        assert index["r70"] == "UNAVAILABLE"
        c.load_model("r70", headers={"Authorization": f"Bearer {TOKEN}"})
        assert c.is_model_ready("r70")
    finally:
        c.close()


def test_tritonclient_http_asyncio(urls, x, expected):
    aio = pytest.importorskip("tritonclient.http.aio")

    async def main():
        c = aio.InferenceServerClient(urls["http"])
        try:
            assert await c.is_model_ready("portfolio", "1")
            for binary in (True, False):
                outputs = [aio.InferRequestedOutput("output", binary_data=binary)]
                r = await c.infer("r95", _inputs(aio, x, binary), outputs=outputs)
                np.testing.assert_array_equal(r.as_numpy("output"), expected["r95"])
            return (await c.get_inference_statistics("r95"))["model_stats"][0]["execution_count"]
        finally:
            await c.close()

    assert asyncio.run(main()) >= 2


def test_tritonclient_grpc_sync(urls, x, expected):
    c = grpcclient.InferenceServerClient(urls["grpc"])
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("portfolio", "1") and not c.is_model_ready("portfolio", "2")
        assert c.get_server_metadata().name == "edgeprune"
        meta = c.get_model_metadata("r95", as_json=True)
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
        config = c.get_model_config("r95", as_json=True)["config"]
        assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == ["1", "28", "28"]
        before = c.get_inference_statistics("dense", as_json=True)["model_stats"][0].get("execution_count", "0")
        for vid, want in expected.items():
            r = c.infer(vid, _inputs(grpcclient, x, True), outputs=[grpcclient.InferRequestedOutput("output")])
            np.testing.assert_array_equal(r.as_numpy("output"), want)
            assert r.get_response().parameters["variant"].string_param == vid
        np.testing.assert_array_equal(c.infer("portfolio", _inputs(grpcclient, x, True)).as_numpy("output"),
                                      expected["dense"])
        after = c.get_inference_statistics("dense", as_json=True)["model_stats"][0]
        assert int(after["execution_count"]) == int(before) + 1 and int(after["inference_count"]) >= 3
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            c.infer("nope", _inputs(grpcclient, x, True))
        with pytest.raises(InferenceServerException, match="needs the metadata 'authorization: Bearer <token>'"):
            c.unload_model("r70")
        c.unload_model("r70", headers={"authorization": f"Bearer {TOKEN}"})
        assert not c.is_model_ready("r70")
        with pytest.raises(InferenceServerException, match="not loaded"):
            c.infer("r70", _inputs(grpcclient, x, True))
        c.load_model("r70", headers={"authorization": f"Bearer {TOKEN}"})
        np.testing.assert_array_equal(c.infer("r70", _inputs(grpcclient, x, True)).as_numpy("output"),
                                      expected["r70"])
        index = {m.name: m.state for m in c.get_model_repository_index().models}
        assert index == dict.fromkeys(expected, "READY")
    finally:
        c.close()


def test_tritonclient_grpc_asyncio(urls, x, expected):
    aio = pytest.importorskip("tritonclient.grpc.aio")

    async def main():
        c = aio.InferenceServerClient(urls["grpc"])
        try:
            assert await c.is_model_ready("r70")
            r = await c.infer("r70", _inputs(aio, x, True))
            np.testing.assert_array_equal(r.as_numpy("output"), expected["r70"])
        finally:
            await c.close()

    asyncio.run(main())


# kserve's generated protobuf modules and tritonclient's define the same symbols (package `inference`) in
# protobuf's default pool, so one process cannot import both: the kserve client runs in a process of its own.
KSERVE_SCRIPT = """
import asyncio, sys
import httpx, numpy as np
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

base, data, out, grpc_url = sys.argv[1:5]
x = np.load(data)


async def main():
    c = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        assert await c.is_server_ready(base) and await c.is_model_ready(base, "portfolio")
        assert not await c.is_model_ready(base, "nope")
        got = {}
        for binary in (True, False):
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest("r95", [inp], request_id="k1",
                                   request_outputs=[RequestedOutput("output", {"binary_data": binary})])
            r = await c.infer(base, request, model_name="r95")
            assert r.id == "k1", r.id
            got[f"binary_{binary}"] = r.outputs[0].as_numpy()
        bad = InferInput("input", [3, 1, 28], "FP32")
        bad.set_data_from_numpy(x[:, :, 0])
        try:
            await c.infer(base, InferRequest("r95", [bad]), model_name="r95")
        except httpx.HTTPStatusError as e:
            got["error"] = np.array(str(e))
        g = InferenceGRPCClient(grpc_url, retries=2, timeout=30)
        try:
            assert await g.is_server_ready() and await g.is_model_ready("r70")
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            r = await g.infer(InferRequest("r70", [inp], request_id="g1"))
            got["grpc_r70"] = r.outputs[0].as_numpy()
        finally:
            await g.close()
        np.savez(out, **got)
    finally:
        await c.close()


asyncio.run(main())
"""


def test_kserve_rest_and_grpc_clients(urls, x, expected, tmp_path):
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("needs the kserve SDK (pip install -e '.[dev]')")
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", KSERVE_SCRIPT, urls["base"], str(tmp_path / "x.npy"),
                          str(tmp_path / "out.npz"), urls["grpc"]], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(got["binary_True"], expected["r95"])
    np.testing.assert_array_equal(got["binary_False"], expected["r95"])
    np.testing.assert_array_equal(got["grpc_r70"], expected["r70"])  # kserve's own gRPC stubs, same service
    assert "input shape [3, 1, 28] does not fit" in str(got["error"]) and "400 Bad Request" in str(got["error"])


def test_cli_serves_grpc_beside_http_and_stops_on_sigterm(portfolio_dir, x, expected):  # noqa: F811
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", "from edgeprune.cli import main; main()", "serve",
                             str(portfolio_dir), "--port", "0", "--grpc-port", "0", "--active", "r70"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        found = re.search(r"grpc://127\.0\.0\.1:(\d+)", banner)
        assert found, banner
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{found.group(1)}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if c.is_server_ready():
                    break
            except InferenceServerException:
                time.sleep(0.1)
        r = c.infer("portfolio", _inputs(grpcclient, x, True))
        np.testing.assert_array_equal(r.as_numpy("output"), expected["r70"])
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("mode", ["preloaded", "reload", "masks"])
def test_no_request_fails_while_switches_land_binary_and_grpc(portfolio_dir, x, expected, mode):  # noqa: F811
    """Two binary-HTTP and two gRPC clients, a bounded count of requests each, while the control API switches the
    routed model round robin: every answer is a 200/OK, computed by a variant of the portfolio, and equal to what
    that variant computes (the answer names it): no answer from a variant that was not the one named."""
    import threading

    import httpx

    from edgeprune.serve.codec import as_input, binary_body

    app = serve.build(portfolio_dir, switch_mode=mode, active="dense", window_s=60, window_requests=10**6,
                      grpc_port=0)
    content, headers = binary_body([as_input("input", x)], parameters={"binary_data_output": True})
    problems, answered = [], []

    def same(y, vid):  # masks mode computes with PyTorch: ONNX Runtime's output up to float rounding
        return np.allclose(y, expected[vid], rtol=1e-4, atol=1e-5) if mode == "masks" else \
            np.array_equal(y, expected[vid])

    def http_client(c):
        for _ in range(60):
            r = c.post("/v2/models/portfolio/infer", content=content, headers=headers)
            if r.status_code != 200:
                problems.append(r.text)
                continue
            n = int(r.headers["inference-header-content-length"])
            y = np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 10)
            vid = r.headers["edgeprune-variant"]
            answered.append(vid)
            if not same(y, vid):
                problems.append(f"HTTP answer of {vid} differs from {vid}'s output")

    def grpc_client(url):
        c = grpcclient.InferenceServerClient(url)
        try:
            for _ in range(60):
                try:
                    r = c.infer("portfolio", _inputs(grpcclient, x, True))
                except InferenceServerException as e:
                    problems.append(str(e))
                    continue
                vid = r.get_response().parameters["variant"].string_param
                answered.append(vid)
                if not same(r.as_numpy("output"), vid):
                    problems.append(f"gRPC answer of {vid} differs from {vid}'s output")
        finally:
            c.close()

    with Running(app) as c:
        grpc_url = f"127.0.0.1:{app.state.grpc_port}"
        clients = [threading.Thread(target=http_client, args=(httpx.Client(base_url=c.base_url, timeout=60),))
                   for _ in range(2)] + [threading.Thread(target=grpc_client, args=(grpc_url,)) for _ in range(2)]
        for t in clients:
            t.start()
        switches = 0
        while any(t.is_alive() for t in clients) and switches < 300:  # bounded
            target = list(expected)[switches % len(expected)]
            assert c.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": target}}
                         ).status_code == 200
            switches += 1
        for t in clients:
            t.join(120)
    assert problems == [] and len(answered) == 240
    assert switches >= 3 and len(set(answered)) >= 2  # switches landed between requests
