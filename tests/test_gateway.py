"""The v2 HTTP gateway with the real `tritonclient[http]` against a running system: a real
controller, an onnxruntime worker and an emulated one, and `python -m clockwork.client.gateway`, all on
loopback. Each test states a promise the gateway makes to existing v2 clients."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from clockwork.bench.models import INDEX_MODELS, mlp_onnx, profile_json  # noqa: E402
from clockwork.bench.procs import WorkerSpec, cluster, free_port, http_ok  # noqa: E402

pytestmark = pytest.mark.timeout(180)

MAX_BODY_MB = 1


def gateway_argv(port: int, controller: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clockwork.client.gateway", "--listen", f"127.0.0.1:{port}", "--controller", controller,
            "--connections", "2", "--default-slo-ms", "1000", "--max-body-mb", str(MAX_BODY_MB),
            "--body-timeout-s", "1", "--load-wait-s", "1", "--log-level", "warning", *extra]


def live(url: str) -> bool:
    return http_ok(f"{url}/v2/health/live")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gateway")
    workers = [WorkerSpec("cpu", "onnxruntime"), WorkerSpec("emu", "emulated", devices=2, device_memory_mb=256)]
    with cluster(run_dir, workers) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "mlp")
            admin.upload(profile_json(), "resnet", format="profile")
        port = free_port()
        c.group.start("gateway", gateway_argv(port, c.client_endpoint))
        c.url = f"http://127.0.0.1:{port}"
        c.address = f"127.0.0.1:{port}"
        c.group.wait_until(lambda: live(c.url), 30, "the gateway to answer /v2/health/live")
        yield c


@pytest.fixture
def triton(system):
    client = tritonclient_http.InferenceServerClient(system.address, network_timeout=30)
    yield client
    client.close()


def raw(system, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one plain HTTP request, whatever the status."""
    request = urllib.request.Request(system.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def v2_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def mlp_input(x: np.ndarray, binary: bool, dtype: str = "FP32"):
    tensor = tritonclient_http.InferInput("x", list(x.shape), dtype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def expected_mlp(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(mlp_onnx(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# ----------------------------------------------------------------------------- health and metadata


def test_health_answers_with_the_status_code_and_an_empty_body(system):
    for path in ("/v2/health/live", "/v2/health/ready"):
        with urllib.request.urlopen(system.url + path, timeout=2) as reply:
            assert reply.status == 200 and reply.read() == b""


def test_without_a_controller_readiness_is_503_within_a_second_and_liveness_holds(system):
    port = free_port()
    proc = system.group.start("gateway-orphan", gateway_argv(port, f"tcp://127.0.0.1:{free_port()}"))  # no one there
    url = f"http://127.0.0.1:{port}"
    try:
        system.group.wait_until(lambda: live(url), 30, "the orphan gateway")
        start = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=5)
        assert info.value.code == 503 and info.value.read() == b""
        assert time.monotonic() - start < 1.0
    finally:
        system.group.expect_exit("gateway-orphan")
        proc.popen.send_signal(signal.SIGTERM)
        proc.popen.wait(timeout=15)


def test_server_is_live_and_ready_and_describes_itself(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "clockwork"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_metadata_puts_the_batch_dim_first_as_minus_one(triton):
    meta = triton.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    assert triton.get_model_metadata("mlp", model_version="1")["name"] == "mlp"
    emulated = triton.get_model_metadata("resnet")
    assert emulated["inputs"][0]["name"] == "data" and emulated["inputs"][0]["shape"][0] == -1
    config = triton.get_model_config("mlp")
    assert config["max_batch_size"] >= 1 and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [64]


def test_model_readiness(triton):
    assert triton.is_model_ready("mlp") and triton.is_model_ready("resnet")
    assert not triton.is_model_ready("nope")
    assert not triton.is_model_ready("mlp", model_version="7")


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_equals_onnxruntime_run_directly(triton, binary):
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    outputs = [tritonclient_http.InferRequestedOutput("y", binary_data=binary)]
    result = triton.infer("mlp", [mlp_input(x, binary)], outputs=outputs, request_id="req-7", timeout=500_000)
    np.testing.assert_allclose(result.as_numpy("y"), expected_mlp(x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "mlp" and response["model_version"] == "1"
    out = response["outputs"][0]
    assert ("binary_data_size" in out.get("parameters", {})) is binary and ("data" in out) is not binary
    assert response["parameters"]["batch_size"] >= 3 and response["parameters"]["exec_ms"] > 0


def test_infer_without_outputs_answers_every_output_in_binary(triton):
    x = np.ones((2, 64), np.float32)
    result = triton.infer("mlp", [mlp_input(x, binary=False)])  # tritonclient asks binary_data_output
    np.testing.assert_allclose(result.as_numpy("y"), expected_mlp(x), rtol=1e-5, atol=1e-6)


def test_infer_on_the_emulated_model_with_priority(triton):
    data = tritonclient_http.InferInput("data", [1, 16], "FP32")
    data.set_data_from_numpy(np.zeros((1, 16), np.float32))
    result = triton.infer("resnet", [data], priority=1, timeout=200_000)
    assert result.as_numpy("prob").shape == (1, 10)


@pytest.fixture(scope="module")
def ppocr_cls(system):
    """PaddleOCR's angle classifier as rapidocr-onnxruntime ships it: its batch, height and
    width are written dim_value -1 (rapidocr feeds it 48x192 crops), and its output is named
    save_infer_model/scale_0.tmp_1."""
    try:
        blob = INDEX_MODELS["ppocr-cls"].fetch()
    except OSError as exc:
        pytest.skip(f"the package index is out of reach: {exc}")
    with system.client() as admin:
        admin.upload(blob, "ppocr-cls", input_shapes=INDEX_MODELS["ppocr-cls"].input_shapes)
    return blob


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("binary", [True, False])
def test_a_paddle_export_with_batch_dim_minus_one_serves_onnxruntimes_outputs(triton, ppocr_cls, batch, binary):
    # quarters: short in JSON, so batch 4 stays under this gateway's 1 MB body limit
    x = (np.random.default_rng(batch).integers(0, 4, (batch, 3, 48, 192)) / 4).astype(np.float32)
    tensor = tritonclient_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    name = "save_infer_model/scale_0.tmp_1"
    result = triton.infer("ppocr-cls", [tensor], outputs=[tritonclient_http.InferRequestedOutput(name, binary_data=binary)])
    (expected,) = ort.InferenceSession(ppocr_cls, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-4, atol=1e-5)
    assert triton.get_model_metadata("ppocr-cls")["inputs"][0]["shape"] == [-1, 3, 48, 192]


def test_compressed_requests_are_understood(triton):
    x = np.full((1, 64), 0.5, np.float32)
    for algorithm in ("gzip", "deflate"):
        result = triton.infer("mlp", [mlp_input(x, binary=True)], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("y"), expected_mlp(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_unknown_model_is_404(triton):
    x = np.zeros((1, 64), np.float32)
    assert v2_error(lambda: triton.infer("nope", [mlp_input(x, True)])).status() == "404"
    assert v2_error(lambda: triton.get_model_metadata("nope")).status() == "404"
    assert v2_error(lambda: triton.infer("mlp", [mlp_input(x, True)], model_version="2")).status() == "404"


def test_wrong_dtype_shape_or_name_is_400_with_the_reason(triton):
    cases = [
        mlp_input(np.zeros((1, 64), np.float64), True, "FP64"),  # dtype
        mlp_input(np.zeros((1, 63), np.float32), False),  # shape
        mlp_input(np.zeros((64,), np.float32), True),  # no batch dim... still 1-d: a 64-sample batch of scalars
    ]
    for tensor in cases:
        err = v2_error(lambda: triton.infer("mlp", [tensor]))
        assert err.status() == "400", err
        assert err.message().startswith("BAD_INPUT: ")
    wrong_name = tritonclient_http.InferInput("z", [1, 64], "FP32")
    wrong_name.set_data_from_numpy(np.zeros((1, 64), np.float32))
    assert v2_error(lambda: triton.infer("mlp", [wrong_name])).status() == "400"
    missing_output = [tritonclient_http.InferRequestedOutput("nope")]
    x = mlp_input(np.zeros((1, 64), np.float32), True)
    assert "no output 'nope'" in v2_error(lambda: triton.infer("mlp", [x], outputs=missing_output)).message()


def test_bytes_tensors_are_refused_with_a_clear_message(system):
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode()
    status, _, reply = raw(system, "POST", "/v2/models/mlp/infer", body)
    assert status == 400 and "BYTES is not supported" in json.loads(reply)["error"]


def test_an_infeasible_timeout_is_429_with_retry_after(system, triton):
    data = tritonclient_http.InferInput("data", [1, 16], "FP32")
    data.set_data_from_numpy(np.zeros((1, 16), np.float32))
    err = v2_error(lambda: triton.infer("resnet", [data], timeout=1000))  # 1 ms < the 2.7 ms exec
    assert err.status() == "429" and err.message().startswith("WOULD_MISS_DEADLINE: ")
    body = json.dumps({"inputs": [{"name": "data", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}],
                       "parameters": {"timeout": 1000}}).encode()
    status, headers, reply = raw(system, "POST", "/v2/models/resnet/infer", body)
    assert status == 429 and headers["Retry-After"] == "1"
    assert json.loads(reply)["error"].startswith("WOULD_MISS_DEADLINE: ")


def test_a_burst_beyond_capacity_is_refused_or_answered_deadline_missed(system):
    """A burst far beyond two emulated devices, each with 8 ms: what waited in the gateway goes on
    with what is left of its SLO, so the controller refuses at once (429) what cannot make it,
    and answers those it can no longer finish in time DEADLINE_MISSED (504), never late."""
    import asyncio

    import aiohttp

    body = json.dumps({"inputs": [{"name": "data", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}],
                       "parameters": {"timeout": 8000}}).encode()

    async def burst(n: int) -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            async def one():
                async with session.post(f"{system.url}/v2/models/resnet/infer", data=body) as reply:
                    return reply.status, (await reply.json()).get("error", "")
            return await asyncio.gather(*(one() for _ in range(n)))

    seen = asyncio.run(burst(200))
    assert {status for status, _ in seen} <= {200, 429, 504}
    refused = [error for status, error in seen if status != 200]
    assert refused and all(e.startswith(("WOULD_MISS_DEADLINE: ", "QUEUE_FULL: ", "DEADLINE_MISSED: ")) for e in refused)
    assert all(error.startswith("DEADLINE_MISSED: ") for status, error in seen if status == 504)


def test_malformed_bodies_get_400_or_413_and_serving_goes_on(system, triton):
    path = "/v2/models/mlp/infer"
    good = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
    cases = [
        (b"{not json", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'{"inputs": []}', {}, 400),
        (b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1, 2]}]}', {}, 400),
        (good.encode(), {"Inference-Header-Content-Length": "99999"}, 400),
        (good.encode(), {"Inference-Header-Content-Length": "-3"}, 400),
        (good.encode() + b"\0" * 8, {"Inference-Header-Content-Length": str(len(good))}, 400),
        (b"\xff\xfe" * 10, {}, 400),
        (b"[" * 100_000, {}, 400),
        (b"\0" * (MAX_BODY_MB * (1 << 20) + 1), {}, 413),
        (gzip.compress(b"\0" * (2 * MAX_BODY_MB << 20)), {"Content-Encoding": "gzip"}, 413),  # a small bomb
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
    ]
    for body, headers, want in cases:
        status, _, reply = raw(system, "POST", path, body, headers)
        assert status == want, (body[:40], status, reply[:200])
        assert json.loads(reply)["error"]
    assert raw(system, "GET", "/v2/nowhere")[0] == 404
    assert raw(system, "DELETE", "/v2/models/mlp")[0] == 405
    assert triton.infer("mlp", [mlp_input(np.zeros((1, 64), np.float32), True)]).as_numpy("y").shape == (1, 10)
    system.check()


def test_a_body_shorter_than_its_content_length_gets_408_not_a_hang(system):
    host, port = system.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v2/models/mlp/infer")
    conn.putheader("Content-Length", "1000")
    conn.endheaders(b'{"inputs": [')
    reply = conn.getresponse()
    assert reply.status == 408 and json.loads(reply.read())["error"]
    conn.close()


# ----------------------------------------------------------------------------- repository and statistics


def test_model_repository_index_load_and_unload(triton):
    index = {m["name"]: m for m in triton.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY" and index["resnet"]["version"] == "1"
    triton.load_model("mlp")  # registered and prepared: nothing to wait for
    triton.unload_model("mlp")  # accepted; residency stays the controller's decision
    assert triton.is_model_ready("mlp")
    assert v2_error(lambda: triton.load_model("nope")).status() == "404"
    assert v2_error(lambda: triton.unload_model("nope")).status() == "404"
    assert v2_error(lambda: triton.load_model("mlp", config="{}")).status() == "400"


def test_statistics_count_what_the_gateway_saw(triton):
    before = triton.get_inference_statistics("mlp")["model_stats"][0]
    x = np.zeros((2, 64), np.float32)
    triton.infer("mlp", [mlp_input(x, True)])
    v2_error(lambda: triton.infer("mlp", [mlp_input(np.zeros((1, 5), np.float32), True)]))
    after = triton.get_inference_statistics("mlp")["model_stats"][0]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert after["name"] == "mlp" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 1  # a lone request: a batch of its own
    counts = {stats[k]["count"] - old[k]["count"] for k in ("compute_input", "compute_infer", "compute_output")}
    assert counts == {1}  # perf_analyzer stops unless the three agree
    assert stats["success"]["count"] == old["success"]["count"] + 1
    assert stats["success"]["ns"] > old["success"]["ns"] and stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["fail"]["count"] == old["fail"]["count"] + 1
    every = {m["name"] for m in triton.get_inference_statistics()["model_stats"]}
    assert {"mlp", "resnet"} <= every
    assert v2_error(lambda: triton.get_inference_statistics("nope")).status() == "404"


def test_the_gateway_serves_its_own_prometheus_metrics(system, triton):
    from prometheus_client.parser import text_string_to_metric_families

    triton.infer("mlp", [mlp_input(np.zeros((1, 64), np.float32), True)])
    v2_error(lambda: triton.infer("ghost", [mlp_input(np.zeros((1, 64), np.float32), True)]))
    status, _, body = raw(system, "GET", "/metrics")
    assert status == 200
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    ok = ("clockwork_gateway_requests_total",
          (("model", "mlp"), ("outcome", "ok"), ("protocol", "http"), ("reason", "OK")))
    unknown = ("clockwork_gateway_requests_total", (("model", "_unknown"), ("outcome", "caller_error"),
                                                   ("protocol", "http"), ("reason", "MODEL_NOT_FOUND")))
    assert found[ok] >= 1 and found[unknown] >= 1  # a made-up name never becomes a label
    assert found[("clockwork_gateway_request_duration_seconds_count", (("model", "mlp"), ("protocol", "http")))] >= 1
    assert found[("clockwork_gateway_requests_in_flight", (("protocol", "http"),))] == 0
    assert found[("process_resident_memory_bytes", ())] > 0


# ----------------------------------------------------------------------------- process


def test_command_line_flags_make_the_config(monkeypatch):
    from clockwork.client.gateway import GatewayConfig, parse_args, parse_listen

    monkeypatch.setenv("CLOCKWORK_ENDPOINT", "tcp://10.0.0.1:5555")
    config, level = parse_args([])
    assert config == GatewayConfig(controller="tcp://10.0.0.1:5555") and level == "info"
    assert config.host == "127.0.0.1"  # loopback unless asked
    config, _ = parse_args(["--listen", "[::1]:9000", "--controller", "tcp://h:1", "--connections", "2",
                            "--default-slo-ms", "250", "--max-body-mb", "0.5", "--log-level", "debug"])
    assert (config.host, config.port, config.controller, config.connections) == ("::1", 9000, "tcp://h:1", 2)
    assert config.default_slo_ms == 250 and config.max_body_bytes == 512 * 1024
    config, _ = parse_args(["--shed-lag-ms", "8", "--shed-ceiling-ms", "0"])
    assert (config.shed_lag_ms, config.shed_ceiling_ms) == (8, 0)
    assert parse_listen("0.0.0.0:8000") == ("0.0.0.0", 8000) and parse_listen(":8001") == ("127.0.0.1", 8001)
    for bad in (["--listen", "nohost"], ["--listen", "h:\u00b2"], ["--listen", "h:99999"], ["--connections", "0"],
                ["--default-slo-ms", "-1"], ["--default-slo-ms", "inf"], ["--log-level", "loud"]):
        with pytest.raises(SystemExit):
            parse_args(bad)



def test_sigterm_stops_the_gateway_cleanly(system):
    port = free_port()
    proc = system.group.start("gateway-term", gateway_argv(port, system.client_endpoint, "--log-level", "info"))
    system.group.wait_until(lambda: live(f"http://127.0.0.1:{port}"), 30, "the second gateway")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=15) == 0
    system.group.expect_exit("gateway-term")
    assert "listening" in proc.tail(50)


def test_a_taken_port_is_a_clean_failure(system):
    port = int(system.address.split(":")[1])
    proc = system.group.start("gateway-clash", gateway_argv(port, system.client_endpoint))
    system.group.expect_exit("gateway-clash")
    assert proc.popen.wait(timeout=15) == 1
    assert "cannot_listen" in proc.tail(20)
