"""The v2 gRPC protocol with the real `tritonclient[grpc]` against a running system: a real
controller, an onnxruntime worker, and `python -m clockwork.client.gateway --grpc-listen`, on loopback.
Each test states a promise the gateway makes to Triton's gRPC clients."""

from __future__ import annotations

import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from clockwork.bench.models import INDEX_MODELS, mlp_onnx  # noqa: E402
from clockwork.bench.procs import WorkerSpec, cluster, start_gateway  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with cluster(tmp_path_factory.mktemp("grpc"), [WorkerSpec("cpu", "onnxruntime")]) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "mlp")
        addresses = start_gateway(c.group, c.client_endpoint, grpc=True)
        c.grpc_address, c.http_address = addresses["grpc"], addresses["http"]
        yield c


@pytest.fixture
def triton(system):
    client = grpcclient.InferenceServerClient(system.grpc_address)
    yield client
    client.close()


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def mlp_infer(triton, x: np.ndarray, **kwargs):
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return triton.infer("mlp", [tensor], **kwargs)


def expected_mlp(x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(mlp_onnx(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "clockwork" and "statistics" in meta["extensions"]
    model = triton.get_model_metadata("mlp", as_json=True)
    assert model["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "64"]}  # int64 as JSON strings
    config = triton.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 16 and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == ["64"] and config["backend"] == "onnxruntime"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert [int(b) for b in config["dynamic_batching"]["preferred_batch_size"]] == [1, 2, 4, 8, 16]
    assert triton.is_model_ready("mlp") and not triton.is_model_ready("nope")
    assert not triton.is_model_ready("mlp", model_version="7")


@pytest.mark.parametrize("batch", [1, 4])
def test_infer_equals_onnxruntime(triton, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
    result = mlp_infer(triton, x, request_id="r-1", priority=1, timeout=500_000)
    np.testing.assert_allclose(result.as_numpy("y"), expected_mlp(x), rtol=1e-5, atol=1e-6)
    response = result.get_response(as_json=True)
    assert response["id"] == "r-1" and response["model_version"] == "1"
    assert int(response["parameters"]["batch_size"]["int64_param"]) >= batch


def test_a_paddle_export_with_batch_dim_minus_one(triton, system):
    try:
        blob = INDEX_MODELS["ppocr-cls"].fetch()
    except OSError as exc:
        pytest.skip(f"the package index is out of reach: {exc}")
    with system.client() as admin:
        admin.upload(blob, "ppocr-cls", input_shapes=INDEX_MODELS["ppocr-cls"].input_shapes, replace=True)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = np.random.default_rng(batch).random((batch, 3, 48, 192), dtype=np.float32)
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        name = "save_infer_model/scale_0.tmp_1"
        result = triton.infer("ppocr-cls", [tensor], outputs=[grpcclient.InferRequestedOutput(name)])
        np.testing.assert_allclose(result.as_numpy(name), session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_refusals_carry_the_matching_grpc_code_and_the_reason(triton):
    assert error_of(lambda: triton.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("x", [1, 64], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 64), np.int32))
    err = error_of(lambda: triton.infer("mlp", [wrong]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "BAD_INPUT" in err.message()
    # 1 us: hopeless. Refused at admission (429's RESOURCE_EXHAUSTED), or past before the answer (504's)
    err = error_of(lambda: mlp_infer(triton, np.zeros((1, 64), np.float32), timeout=1))
    assert (err.status(), err.message().split(":")[0]) in {("StatusCode.RESOURCE_EXHAUSTED", "WOULD_MISS_DEADLINE"),
                                                          ("StatusCode.DEADLINE_EXCEEDED", "DEADLINE_MISSED")}


def test_the_grpc_deadline_becomes_the_slo(triton):
    err = error_of(lambda: mlp_infer(triton, np.zeros((1, 64), np.float32), client_timeout=0.0001))
    assert err.status() in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED")
    result = mlp_infer(triton, np.zeros((1, 64), np.float32), client_timeout=5)
    assert result.as_numpy("y").shape == (1, 10)


def test_statistics_repository_and_metrics(triton, system):
    before = triton.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    mlp_infer(triton, np.zeros((2, 64), np.float32))
    after = triton.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    stats = after["inference_stats"]
    counts = {int(stats[k].get("count", 0)) for k in ("compute_input", "compute_infer", "compute_output")}
    assert len(counts) == 1  # perf_analyzer stops unless the three agree
    index = triton.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in [{k: m.get(k) for k in ("name", "version", "state")}
                                                                   for m in index]
    metrics = urllib.request.urlopen(f"http://{system.http_address}/metrics", timeout=5).read().decode()
    assert 'clockwork_gateway_requests_total{model="mlp",outcome="ok",protocol="grpc",reason="OK"}' in metrics
    triton.load_model("mlp")
    triton.unload_model("mlp")
    assert triton.is_model_ready("mlp")  # unload changes nothing: the controller decides residency
