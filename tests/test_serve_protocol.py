"""The server's protocol details and bad input (issues 26 and 29): error bodies, the binary extension's tensors
and outputs, versioned routes, Triton's config and statistics, metrics from the start, the control token, switches
beside a busy inference pool, a portfolio changed under a reload-mode server, and the CLI's checks."""

import json
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from test_portfolio import _invoke, portfolio_dir, variant_runs  # noqa: F401  (shared session fixtures)
from test_serve import Gate, Running, body

from edgeprune import serve
from edgeprune.serve import codec
from edgeprune.serve.codec import BadRequest, as_input, binary_body


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal((2, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def client(portfolio_dir):  # noqa: F811
    with Running(serve.build(portfolio_dir, active="dense", window_s=60, window_requests=10**6)) as c:
        yield c


# codec, without a server ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", list(codec.DTYPES))
def test_every_datatype_round_trips_binary_and_json(datatype):
    dtype = codec.DTYPES[datatype]
    a = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    entry, raw = as_input("t", a, datatype)
    content, headers = binary_body([(entry, raw)])
    decoded = codec.decode_http(content, headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(decoded.inputs[0].array, a)
    assert decoded.inputs[0].array.dtype == dtype
    data = a.tolist()  # nested JSON lists, as clients send them
    np.testing.assert_array_equal(codec.from_json_data("t", datatype, [2, 3], data), a)
    out, length = codec.encode_http({}, [codec.Tensor("y", datatype, [2, 3], a)], {}, True)
    head = json.loads(out[:length])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == a.nbytes == len(out) - length
    np.testing.assert_array_equal(np.frombuffer(out[length:], dtype=dtype).reshape(2, 3), a)


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("INT8", [1, 300], "value 300 is out of INT8's range [-128, 127]"),
    ("UINT8", [1, -1], "value -1 is out of UINT8's range"),
    ("INT32", [1, 1.5], "integers only"),
    ("BOOL", [True, 1], "true/false values only"),
    ("FP16", [1.0, 1e6], "outside FP16's finite range"),
    ("FP64", [1.0, 10**400], "outside FP64's finite range"),
    ("FP32", [[1.0], [2.0, 3.0]], "ragged"),
    ("FP32", [1.0, None], "numbers only"),
])
def test_json_data_out_of_type_or_range_is_400(datatype, data, message):
    with pytest.raises(BadRequest, match=None) as e:
        codec.from_json_data("t", datatype, [2], data)
    assert message in str(e.value) and e.value.status == 400


@pytest.mark.parametrize("shape", [[2**62, 4], [-1, 784], [1] * 9])
def test_shapes_that_overflow_or_mean_nothing_are_400(client, shape):
    r = client.post("/v2/models/portfolio/infer", json={"inputs": [{"name": "input", "shape": shape,
                                                                    "datatype": "FP32", "data": []}]})
    assert r.status_code == 400 and "must list at most 8 dimensions, none negative" in r.json()["error"], r.text


def test_binary_bool_bytes_must_be_0_or_1():
    with pytest.raises(BadRequest, match="BOOL bytes must be 0 or 1"):
        codec.from_bytes("t", "BOOL", [2], b"\x01\x02")


# the server -------------------------------------------------------------------------------------------------------
def test_every_error_is_one_line_json_with_the_protocols_status(client):
    cases = [
        (client.get("/nope"), 404, "no route GET /nope"),
        (client.post("/v2/health/live"), 405, "/v2/health/live takes GET, not POST"),
        (client.delete("/v2/portfolio/policy"), 405, "takes GET, PUT, not DELETE"),
        (client.put("/v2/portfolio/policy", json={"name": "fixed", "variant": "r70"}), 400,
         'unknown key \'variant\'; send {"name": "fixed", "params": {"variant": "..."}}'),
        (client.put("/v2/portfolio/policy", json={"name": "fastest"}), 400, "name: Input should be 'fixed'"),
        (client.put("/v2/portfolio/policy", content=b"{", headers={"content-type": "application/json"}), 400,
         "not valid JSON"),
        (client.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "r70", "speed": 1}}), 400,
         "policy 'fixed' takes variant; not speed"),
        (client.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "huge"}}), 400,
         "unknown variant 'huge'; the portfolio holds"),
        (client.get("/v2/models/r70/versions/2"), 404, "model 'r70' has no version '2'; it has version 1 only"),
        (client.get("/v2/models/nope/config"), 404, "unknown model 'nope'"),
        (client.get("/v2/models/nope/versions/1/stats"), 404, "unknown model 'nope'"),
        (client.post("/v2/repository/models/portfolio/unload"), 409, "routed model and cannot be unloaded"),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert r.headers["content-type"] == "application/json" and list(r.json()) == ["error"], r.text
        assert message in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert cases[1][0].headers["allow"] == "GET" and cases[2][0].headers["allow"] == "GET, PUT"
    assert client.get("/v2/portfolio/policy").json()["active"] == "dense"  # nothing half-applied


def test_policy_parameters_that_would_overflow_are_400_and_later_requests_never_500(portfolio_dir, x):  # noqa: F811
    with Running(serve.build(portfolio_dir, active="dense", window_requests=2, window_s=60)) as c:
        bad = [b'{"name": "realtime", "params": {"fps": Infinity}}', b'{"name": "realtime", "params": {"fps": 1e308}}',
               b'{"name": "realtime", "params": {"beta": NaN}}', b'{"name": "latency", "params": {"budget_ms": NaN}}',
               b'{"name": "latency", "params": {"up_after": 1' + b"0" * 400 + b"}}",
               b'{"name": "realtime", "params": {"history": 1e308}}']
        for content in bad:
            r = c.put("/v2/portfolio/policy", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 400 and list(r.json()) == ["error"], (content, r.text)
            assert "finite number" in r.json()["error"] or "<=" in r.json()["error"], r.text
        assert c.put("/v2/portfolio/policy", json={"name": "realtime", "params": {"fps": 30}}).status_code == 200
        codes = {c.post("/v2/models/portfolio/infer", json=body(x)).status_code for _ in range(8)}
        assert codes == {200}
        assert len(c.get("/v2/portfolio/policy").json()["decisions"]) >= 3  # windows closed and decided


def test_binary_outputs_when_asked_and_requested_outputs(client, x):
    content, headers = binary_body([as_input("input", x)], parameters={"binary_data_output": True}, id="b1")
    r = client.post("/v2/models/r95/infer", content=content, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["id"] == "b1" and head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    y = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 10)
    r = client.post("/v2/models/r95/infer", json={**body(x), "outputs": [{"name": "output"}]})
    np.testing.assert_array_equal(np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 10), y)
    r = client.post("/v2/models/r95/infer", json={**body(x), "outputs": [{"name": "logits"}]})
    assert r.status_code == 400 and "output 'logits' is not an output of this model; it has output" in r.text
    r = client.post("/v2/models/r95/infer", json={**body(x), "parameters": {"binary_data_output": "yes"}})
    assert r.status_code == 400 and "binary_data_output must be true or false" in r.text


def test_versioned_routes_config_and_real_statistics(client, x):
    assert client.get("/v2/models/r70/versions/1").json()["name"] == "r70"
    assert client.get("/v2/models/r70/versions/1/ready").json() == {"name": "r70", "ready": True}
    config = client.get("/v2/models/r70/versions/1/config").json()
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
                                "dims": [1, 28, 28]}]

    def stats():
        return client.get("/v2/models/r70/versions/1/stats").json()["model_stats"][0]

    before = stats()
    for _ in range(2):
        assert client.post("/v2/models/r70/versions/1/infer", json=body(x)).status_code == 200
    assert client.post("/v2/models/r70/infer", json=body(x, shape=[2, 1, 28, 27])).status_code == 400
    after = stats()
    assert after["execution_count"] - before["execution_count"] == 2
    assert after["inference_count"] - before["inference_count"] == 4
    s, b = after["inference_stats"], before["inference_stats"]
    assert s["success"]["count"] - b["success"]["count"] == 2 and s["fail"]["count"] - b["fail"]["count"] == 1
    assert s["compute_infer"]["ns"] > b["compute_infer"]["ns"] and after["last_inference"] > 0
    everything = client.get("/v2/models/stats").json()["model_stats"]
    assert [m["name"] for m in everything] == ["portfolio", "dense", "r70", "r95"] or \
        sorted(m["name"] for m in everything) == ["dense", "portfolio", "r70", "r95"]


def test_metrics_are_there_from_the_start_and_count_errors_by_code(portfolio_dir, x):  # noqa: F811
    with Running(serve.build(portfolio_dir, active="dense", window_s=60, window_requests=10**6)) as c:
        first = c.get("/metrics").text
        for line in ('edgeprune_switches_total{mode="preloaded"} 0.0', 'edgeprune_http_responses_total{code="404"} 0.0',
                     'edgeprune_http_responses_total{code="400"} 0.0',
                     'edgeprune_requests_total{code="200",model="portfolio",variant="r95"} 0.0',
                     'edgeprune_requests_total{code="400",model="portfolio",variant=""} 0.0',
                     'edgeprune_switch_failures_total{mode="preloaded"} 0.0', "process_cpu_seconds_total",
                     "process_resident_memory_bytes", "python_info"):
            assert line in first, line
        c.get("/nope")
        c.post("/v2/models/portfolio/infer", json=body(x, datatype="FP16"))
        c.post("/v2/models/portfolio/infer", json=body(x))
        text = c.get("/metrics").text
        assert 'edgeprune_http_responses_total{code="404"} 1.0' in text
        assert 'edgeprune_http_responses_total{code="400"} 1.0' in text
        assert 'edgeprune_requests_total{code="400",model="portfolio",variant=""} 1.0' in text
        assert 'edgeprune_requests_total{code="200",model="portfolio",variant="dense"} 1.0' in text
        traffic = c.get("/v2/portfolio/policy").json()["traffic"]
        assert (traffic["requests"], traffic["errors_4xx"], traffic["errors_5xx"]) == (1, 2, 0)
        assert traffic["by_variant"]["dense"] == 1
        page = c.get("/").text
        assert 'id="e4xx"' in page and 'id="rate"' in page and "UTC" in page


def test_control_endpoints_need_the_token_when_one_is_set(portfolio_dir, x):  # noqa: F811
    with Running(serve.build(portfolio_dir, active="dense", control_token="t0k")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0k"}):
            for r in (c.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "r95"}},
                            headers=headers),
                      c.post("/v2/repository/models/r70/unload", headers=headers),
                      c.post("/v2/repository/models/r70/load", headers=headers)):
                assert r.status_code == 401 and "Authorization: Bearer <token>" in r.json()["error"], r.text
        assert c.get("/v2/portfolio/policy").json()["active"] == "dense"
        assert c.post("/v2/models/portfolio/infer", json=body(x)).status_code == 200  # inference needs none
        ok = {"Authorization": "Bearer t0k"}
        r = c.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "r95"}}, headers=ok)
        assert r.status_code == 200 and r.json()["active"] == "r95"
        assert c.post("/v2/repository/models/r70/unload", headers=ok).status_code == 200


class Held(Gate):
    """A gated runner that also says when its wait ended: a switch answered before then did not queue behind it."""

    def __init__(self, inner):
        super().__init__(inner)
        self.released = threading.Event()

    def run(self, x):
        self.entered.set()
        self.open.wait(30)
        self.released.set()
        return self.inner.run(x)


def test_a_switch_does_not_wait_for_a_busy_inference_pool(portfolio_dir, x):  # noqa: F811
    app = serve.build(portfolio_dir, active="dense", workers=1, window_s=60, window_requests=10**6)
    sessions = app.state.server.sessions
    gate = Held(sessions.current()[1])
    sessions._current = ("dense", gate)
    with Running(app) as c:
        done = threading.Event()

        def held():  # occupies the only inference thread until the gate opens
            with httpx.Client(base_url=c.base_url, timeout=60) as other:
                other.post("/v2/models/portfolio/infer", json=body(x))
            done.set()

        t = threading.Thread(target=held)
        t.start()
        try:
            assert gate.entered.wait(30)
            r = c.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "r95"}})
            answered_while_busy = not gate.released.is_set() and not done.is_set()
        finally:
            gate.open.set()
            t.join(60)
        assert r.status_code == 200 and r.json()["active"] == "r95"
        assert answered_while_busy  # the switch was answered while the inference pool was still held


def test_a_portfolio_rebuilt_under_a_reload_server_is_a_409_not_a_500(portfolio_dir, tmp_path, x):  # noqa: F811
    pf = shutil.copytree(portfolio_dir, tmp_path / "pf")
    app = serve.build(pf, switch_mode="reload", active="dense", policy="accuracy-floor",
                      policy_params={"accuracy": 0.0}, window_requests=2, window_s=60)
    with Running(app) as c:
        variants = {v.id: v for v in app.state.server.manifest.variants}
        for vid in ("r70", "r95"):  # rebuilt: every other variant's file replaced (here: by the dense one's)
            (pf / variants[vid].onnx).unlink()
            shutil.copy(pf / variants["dense"].onnx, pf / variants[vid].onnx)
        r = c.put("/v2/portfolio/policy", json={"name": "fixed", "params": {"variant": "r95"}})
        assert r.status_code == 409 and "changed on disk since the server started" in r.json()["error"], r.text
        assert c.put("/v2/portfolio/policy", json={"name": "accuracy-floor", "params": {"accuracy": 0.0}}
                     ).status_code == 200
        codes = [c.post("/v2/models/portfolio/infer", json=body(x)).status_code for _ in range(6)]
        assert codes == [200] * 6  # the policy wants the fastest, its switch fails, requests are answered
        failed = 'edgeprune_switch_failures_total{mode="reload"} 0.0'
        deadline = time.monotonic() + 30  # the policy's switch runs on the control thread, after the answer
        while failed in c.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert failed not in c.get("/metrics").text  # counted, once the control thread tried
        assert c.get("/v2/portfolio/policy").json()["active"] == "dense"
        assert c.post("/v2/models/portfolio/infer", json=body(x)).status_code == 200


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "-1"], "--port must be a port number in 0-65535, got -1"),
    (["--port", "70000"], "--port must be a port number in 0-65535, got 70000"),
    (["--grpc-port", "70000"], "--grpc-port must be a port number in 0-65535, got 70000"),
    (["--threads", "-1"], "--threads must be in 1.."),
    (["--threads", "1000"], "--threads must be in 1.."),
    (["--workers", "0"], "--workers must be in 1.."),
    (["--workers", "100000"], "--workers must be in 1.."),
    (["--max-body-mb", "nan"], "--max-body-mb must be a number of MiB in (0, 4096], got nan"),
    (["--max-body-mb", "inf"], "--max-body-mb must be a number of MiB in (0, 4096], got inf"),
    (["--policy", "latency", "--policy-params", '{"budget_ms": NaN}'], "budget_ms must be a finite number"),
    (["--control-token", " "], "is empty"),
])
def test_cli_bad_options_are_one_line_exit_2(portfolio_dir, args, message):  # noqa: F811
    result = _invoke("serve", portfolio_dir, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_cli_warns_when_serving_beyond_loopback_without_a_token(portfolio_dir, monkeypatch):  # noqa: F811
    monkeypatch.setattr(serve, "bind", lambda host, port: socket.socket())  # nothing listens, nothing is served
    monkeypatch.setattr(serve, "run", lambda app, sock: sock.close())
    result = _invoke("serve", portfolio_dir, "--host", "192.0.2.7", "--port", "8000")
    assert result.exit_code == 0 and "the control endpoints (load, unload, PUT policy) need no token" in result.output
    result = _invoke("serve", portfolio_dir, "--host", "192.0.2.7", "--control-token", "abc")
    assert result.exit_code == 0 and "need no token" not in result.output
    result = _invoke("serve", portfolio_dir, "--host", "127.0.0.1")
    assert result.exit_code == 0 and "need no token" not in result.output
    monkeypatch.setenv("EDGEPRUNE_CONTROL_TOKEN", "from-env")
    result = _invoke("serve", portfolio_dir, "--host", "192.0.2.7")
    assert result.exit_code == 0 and "need no token" not in result.output
    assert serve.is_loopback("::1") and serve.is_loopback("localhost") and not serve.is_loopback("0.0.0.0")


def test_the_openapi_document_lists_the_error_answers_the_server_gives(client):
    doc = client.get("/openapi.json").json()
    assert '"422"' not in client.get("/openapi.json").text  # validation errors are 400 {"error"}
    infer = doc["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert sorted(infer["responses"]) == ["200", "400", "404", "409", "413"]
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "InputTensor" in doc["components"]["schemas"]
    assert sorted(doc["paths"]["/v2/portfolio/policy"]["put"]["responses"]) == ["200", "400", "401", "409"]
    unload = doc["paths"]["/v2/repository/models/{model}/unload"]["post"]
    assert sorted(unload["responses"]) == ["200", "401", "404", "409"]
    model = next(p for p in infer["parameters"] if p["name"] == "model")
    assert model["schema"]["enum"] == ["portfolio", "dense", "r70", "r95"] or \
        sorted(model["schema"]["enum"]) == ["dense", "portfolio", "r70", "r95"]


# what an independent pass found after the protocol work: each was a 500, a silent accept or a success that did nothing
@pytest.mark.parametrize(("params", "message"), [
    ({"name": "latency", "params": {"budget_ms": None}}, "budget_ms cannot be null"),
    ({"name": "realtime", "params": {"fps": None}}, "fps cannot be null"),
    ({"name": "realtime", "params": {"fps": "30"}}, "fps must be a number (float), got '30'"),
    ({"name": "realtime", "params": {"history": 2.5}}, "history counts and must be a whole number, got 2.5"),
    ({"name": "realtime", "params": {"fps": 1e-320}}, "realtime policy needs 0.001 <= fps"),
    ({"name": "fixed", "params": {"variant": "a" * 100_000}}, "unknown variant"),
])
def test_policy_values_are_checked_not_coerced(client, x, params, message):
    r = client.put("/v2/portfolio/policy", json=params)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert len(r.json()["error"]) <= 400  # a long value is cut, not echoed whole
    assert client.post("/v2/models/portfolio/infer", json=body(x)).status_code == 200


def test_a_non_ascii_digit_in_the_header_length_is_400(client):
    r = client.post("/v2/models/portfolio/infer", content=b'{"inputs": []}',
                    headers={"Inference-Header-Content-Length": b"\xb2"})  # '²', a digit to str.isdigit
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_every_route_holds_the_body_limit(portfolio_dir):  # noqa: F811
    with Running(serve.build(portfolio_dir, active="dense", max_body_bytes=1000)) as c:
        big = json.dumps({"name": "fixed", "params": {"variant": "a" * 5000}})
        for method, path in (("PUT", "/v2/portfolio/policy"), ("POST", "/v2/repository/index"),
                             ("POST", "/v2/repository/models/dense/unload")):
            r = c.request(method, path, content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "--max-body-mb" in r.json()["error"], (path, r.text)


def test_an_output_json_cannot_carry_is_a_400_naming_binary():
    t = codec.Tensor("logits", "FP32", (1, 2), np.array([[np.nan, 1.0]], np.float32))
    with pytest.raises(BadRequest, match="holds NaN or infinity.*binary_data"):
        codec.encode_http({}, [t], {}, False)
    text, length = codec.encode_http({}, [t], {"logits": True}, False)  # in binary it travels as it is
    assert length is not None


@pytest.mark.parametrize("mode", ["reload", "masks"])
def test_loading_an_inactive_variant_outside_preloaded_mode_is_a_409_that_says_what_to_do(portfolio_dir, mode):  # noqa: F811
    with Running(serve.build(portfolio_dir, switch_mode=mode, active="dense")) as c:
        r = c.post("/v2/repository/models/r70/load")
        assert r.status_code == 409 and "PUT /v2/portfolio/policy" in r.json()["error"], r.text
        assert c.post("/v2/repository/models/dense/load").status_code == 200  # the active one: nothing to do


def test_a_plugin_policy_serves_through_the_server_and_its_api(portfolio_dir, monkeypatch):  # noqa: F811
    """The server, its PUT /v2/portfolio/policy and its OpenAPI document know a policy from the registry alone:
    tests/plugin_policy.py, named in $EDGEPRUNE_POLICIES, is served like a built-in."""
    from edgeprune.serve import registry

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setenv("EDGEPRUNE_POLICIES", "plugin_policy")
    with Running(serve.build(portfolio_dir, policy="most-accurate", active="r70")) as c:
        state = c.get("/v2/portfolio/policy").json()
        assert state["name"] == "most-accurate" and state["params"] == {"max_ms": 1e6}
        r = c.put("/v2/portfolio/policy", json={"name": "most-accurate", "params": {"max_ms": 1e5}})
        assert r.status_code == 200 and r.json()["params"] == {"max_ms": 1e5}
        r = c.put("/v2/portfolio/policy", json={"name": "fastest"})
        assert r.status_code == 400 and "Input should be 'fixed', 'accuracy-floor'" in r.text
        enum = c.get("/openapi.json").json()["components"]["schemas"]["PolicyRequest"]["properties"]["name"]["enum"]
        assert enum == ["fixed", "accuracy-floor", "latency", "realtime", "most-accurate"]  # roma: detectors only
