"""The pure KServe v2 <-> Clockwork translation (client.v2): no sockets, no event loop."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clockwork.client import v2
from clockwork.client.errors import CapacityError, ClientClosed, DeadlineExceeded, RequestError, ServerError
from clockwork.client.protocol import InferResult
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(60)

MLP_INFO = {
    "name": "mlp", "format": "onnx", "max_batch": 0, "prepared_on": ["cpu"],
    "inputs": [{"name": "x", "dtype": "float32", "shape": [64]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [10]}],
    "exec_ms": {"1": 0.1, "2": 0.1, "4": 0.1, "8": 0.2, "16": 0.3},
}


def make_result(**outputs: np.ndarray) -> InferResult:
    return InferResult(outputs=outputs or {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}, queue_ms=0.5,
                       exec_ms=1.25, total_ms=2.0, batch_size=4, cold_start=False, worker="cpu", request_id=7)


def json_request(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def binary_request(arrays: dict[str, tuple[np.ndarray, str]], **extra) -> tuple[bytes, str]:
    """A body in the binary-tensor extension and its Inference-Header-Content-Length."""
    inputs = [{"name": n, "shape": list(a.shape), "datatype": dt, "parameters": {"binary_data_size": a.nbytes}}
              for n, (a, dt) in arrays.items()]
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(a.tobytes() for a, _ in arrays.values()), str(len(head))


def refusal(call) -> v2.V2Error:
    with pytest.raises(v2.V2Error) as info:
        call()
    return info.value


# ----------------------------------------------------------------------------- requests


def test_json_tensors_flat_or_nested_become_arrays_with_their_shape():
    flat = v2.parse_infer_request(json_request([{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}]), None, 1000)
    nested = v2.parse_infer_request(json_request([{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                                   "data": [[1, 2], [3, 4]]}]), None, 1000)
    for req in (flat, nested):
        np.testing.assert_array_equal(req.inputs["x"], np.array([[1, 2], [3, 4]], np.float32))
        assert req.inputs["x"].dtype == np.float32
    assert flat.slo_ms == 1000 and flat.priority == 0 and flat.outputs is None and not flat.binary_output


@pytest.mark.parametrize("datatype", sorted(v2.V2_TO_NUMPY))
def test_every_served_datatype_round_trips_as_binary_and_json(datatype):
    dtype = np.dtype(v2.V2_TO_NUMPY[datatype])
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    body, length = binary_request({"a": (array, datatype)})
    got = v2.parse_infer_request(body, length, 1000).inputs["a"]
    assert got.dtype == dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, array)
    via_json = v2.parse_infer_request(json_request([{"name": "a", "shape": [2, 3], "datatype": datatype,
                                                     "data": array.reshape(-1).tolist()}]), None, 1000)
    np.testing.assert_array_equal(via_json.inputs["a"], array)
    reply, length = v2.infer_response("m", via_json, make_result(y=array[:, ::-1]))  # not contiguous either
    assert length is None
    [out] = json.loads(reply)["outputs"]
    assert (out["datatype"], out["shape"]) == (datatype, [2, 3])
    assert out["data"] == array[:, ::-1].reshape(-1).tolist()


def test_nested_data_is_read_in_row_major_order_as_triton_reads_it():
    """Triton's HTTP server flattens `data` at any depth and checks only the count; so does the
    gateway (a client that nests rows unevenly is not refused for it)."""
    for data in ([[1, 2, 3], [4]], [1, [2, [3]], 4], [[[1, 2]], [[3, 4]]]):
        req = v2.parse_infer_request(json_request([{"name": "x", "shape": [2, 2], "datatype": "INT32",
                                                    "data": data}]), None, 1000)
        assert req.inputs["x"].tolist() == [[1, 2], [3, 4]] and req.inputs["x"].dtype == np.int32


# Integers within 64 bits: past them orjson read a float and simdjson refuses the document (a
# BAD_BODIES case), a difference left as it is.
VALUES = st.one_of(st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
                   st.integers(-300, 300), st.text(max_size=3))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(datatype=st.sampled_from(sorted(v2.V2_TO_NUMPY)), values=st.lists(VALUES, min_size=1, max_size=6),
       split=st.integers(0, 6))
def test_json_data_reads_as_numpy_reads_the_same_values(datatype, values, split):
    """simdjson writes a JSON tensor's numbers straight into the array; whatever it reads must be
    what numpy makes of the same values as Python objects (the reading it replaced, still used
    where simdjson cannot: booleans, strings, values out of range), and whatever numpy refuses
    must be refused. `split` nests the values in two rows, evenly or not."""
    dtype = np.dtype(v2.V2_TO_NUMPY[datatype])
    data = [values[:split], values[split:]] if split else values
    body = json_request([{"name": "x", "shape": [len(values)], "datatype": datatype, "data": data}])
    try:
        expected = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        expected = None
    try:
        got = v2.parse_infer_request(body, None, 1000).inputs["x"]
    except v2.V2Error as err:
        assert expected is None, err.message
        assert err.http_status == 400 and "not a list of" in err.message
        return
    assert expected is not None and got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


def test_several_binary_inputs_are_cut_from_the_tail_in_order():
    a, b = np.arange(4, dtype=np.int64).reshape(1, 4), np.ones((1, 3), np.float16)
    body, length = binary_request({"a": (a, "INT64"), "b": (b, "FP16")})
    req = v2.parse_infer_request(body, length, 1000)
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], b)


def test_json_and_binary_inputs_mix():
    a = np.full((1, 2), 7, np.int32)
    head = json.dumps({"inputs": [
        {"name": "j", "shape": [1, 1], "datatype": "BOOL", "data": [True]},
        {"name": "a", "shape": [1, 2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
    ]}).encode()
    req = v2.parse_infer_request(head + a.tobytes(), str(len(head)), 1000)
    assert req.inputs["j"].dtype == np.bool_ and req.inputs["a"].tolist() == [[7, 7]]


def test_parameters_map_to_slo_priority_and_output_choice():
    body = json_request([{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}], id="r1",
                        outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
                        parameters={"timeout": 25_000, "priority": 1, "binary_data_output": False, "custom": "ok"})
    req = v2.parse_infer_request(body, None, 1000)
    assert req.slo_ms == 25.0 and req.priority == 9 and req.request_id == "r1"
    assert req.outputs == (v2.OutputRequest("y", True), v2.OutputRequest("z", False))


def test_timeout_is_microseconds_and_zero_or_absent_means_the_default():
    assert v2.slo_ms_from_timeout_us(None, 1000) == 1000
    assert v2.slo_ms_from_timeout_us(0, 1000) == 1000
    assert v2.slo_ms_from_timeout_us(1500, 1000) == 1.5
    for bad in (-1, True, "5", float("nan"), 1e13):
        assert refusal(lambda: v2.slo_ms_from_timeout_us(bad, 1000)).http_status == 400


def test_triton_priority_maps_onto_clockwork_classes():
    assert [v2.priority_from_v2(p) for p in (None, 0, 1, 2, 9, 10, 1000)] == [0, 0, 9, 8, 1, 0, 0]
    for bad in (-1, 1.5, True, "1"):
        assert refusal(lambda: v2.priority_from_v2(bad)).http_status == 400


BAD_BODIES = [
    (b"{", None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[" * 50_000, None, "not valid JSON"),
    (b"[1]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty list"),
    (b'{"inputs": [5]}', None, "JSON object"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', None, "BYTES is not supported"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BF16", "data": [1]}]}', None, "BF16 is not supported"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}', None, "has 1 values"),
    (b'{"inputs": [{"name": "x", "shape": [], "datatype": "FP32", "data": 1}]}', None, "shape must"),
    (b'{"inputs": [{"name": "x", "shape": [-1, 2], "datatype": "FP32", "data": [1, 2]}]}', None, "shape must"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "no data"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]}', None, "has 3 values"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [{}]}]}', None, "not a list"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}', None, "INT8"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [-1]}]}', None, "UINT8"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1' + b'0' * 25 + b']}]}', None,
     "not valid JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": "abc"}]}', None, "list of numbers"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1e30]}]}', None, "INT64"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}, '
     b'{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}', None, "given twice"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}], "id": 5}', None, "id must"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}], '
     b'"parameters": {"sequence_id": 3}}', None, "sequence batching"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}], '
     b'"outputs": [{"name": "y", "parameters": {"classification": 3}}]}', None, "classification"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
     b'"parameters": {"shared_memory_region": "r"}}]}', None, "shared-memory"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}', "abc", "byte count"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}', "999", "body has"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}', "0", "body has"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}]}', "\u00b2", "byte count"),
]


@pytest.mark.parametrize("body,header_length,reason", BAD_BODIES)
def test_bad_requests_are_400_bad_input_with_the_reason(body, header_length, reason):
    err = refusal(lambda: v2.parse_infer_request(body, header_length, 1000))
    assert err.http_status == 400 and err.status is Status.BAD_INPUT
    assert reason in err.message and err.message.startswith("BAD_INPUT: ")
    assert json.loads(err.body())["error"] == err.message and err.headers() == {}


def test_binary_sizes_must_match_the_shape_and_the_body():
    array = np.zeros((1, 4), np.float32)
    body, length = binary_request({"x": (array, "FP32")})
    assert "runs past the end" in refusal(lambda: v2.parse_infer_request(body[:-4], length, 1000)).message
    assert "belong to no input" in refusal(lambda: v2.parse_infer_request(body + b"\0", length, 1000)).message
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 32}}]}).encode()
    assert "runs past the end" in refusal(lambda: v2.parse_infer_request(head + array.tobytes(), str(len(head)),
                                                                         1000)).message
    short = head.replace(b'"binary_data_size": 32', b'"binary_data_size": 12')
    assert "needs 16" in refusal(lambda: v2.parse_infer_request(short + array.tobytes()[:12], str(len(short)),
                                                                1000)).message


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=200), header_length=st.one_of(st.none(), st.text(max_size=6)))
def test_garbage_never_raises_anything_but_a_400(body, header_length):
    try:
        v2.parse_infer_request(body, header_length, 1000)
    except v2.V2Error as err:
        assert err.http_status == 400


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                            st.sampled_from(["inputs", "name", "shape", "datatype", "data", "parameters",
                                             "binary_data_size", "outputs", "timeout", "priority", "id"]),
                            inner, max_size=5), max_leaves=20))
def test_structured_garbage_never_raises_anything_but_a_400(doc):
    try:
        v2.parse_infer_request(json.dumps(doc).encode(), None, 1000)
    except v2.V2Error as err:
        assert err.http_status == 400


# ----------------------------------------------------------------------------- responses


def test_json_response_carries_shape_datatype_row_major_data_and_timing():
    request = v2.InferRequest(inputs={}, slo_ms=1, priority=0, request_id="abc")
    body, length = v2.infer_response("mlp", request, make_result())
    assert length is None
    doc = json.loads(body)
    assert doc["id"] == "abc" and doc["model_name"] == "mlp" and doc["model_version"] == "1"
    assert doc["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}]
    assert doc["parameters"]["exec_ms"] == 1.25 and doc["parameters"]["batch_size"] == 4


def test_binary_response_appends_each_chosen_output_after_the_header():
    y, z = np.arange(3, dtype=np.int64).reshape(1, 3), np.array([[True, False]])
    request = v2.InferRequest(inputs={}, slo_ms=1, priority=0,
                              outputs=(v2.OutputRequest("z", True), v2.OutputRequest("y", False)))
    body, length = v2.infer_response("m", request, make_result(y=y, z=z))
    doc = json.loads(body[:length])
    assert [o["name"] for o in doc["outputs"]] == ["z", "y"]
    assert doc["outputs"][0] == {"name": "z", "datatype": "BOOL", "shape": [1, 2],
                                 "parameters": {"binary_data_size": 2}}
    assert doc["outputs"][1]["data"] == [0, 1, 2] and "id" not in doc
    assert body[length:] == z.tobytes()


def test_binary_data_output_applies_to_every_output():
    request = v2.InferRequest(inputs={}, slo_ms=1, priority=0, binary_output=True)
    body, length = v2.infer_response("m", request, make_result())
    assert np.frombuffer(body[length:], np.float32).tolist() == [0, 1, 2, 3, 4, 5]


def test_the_response_agrees_with_tritonclients_reader():
    tritonclient_http = pytest.importorskip("tritonclient.http")
    y = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float16)
    for binary in (False, True):
        request = v2.InferRequest(inputs={}, slo_ms=1, priority=0, binary_output=binary)
        body, length = v2.infer_response("m", request, make_result(y=y))
        result = tritonclient_http.InferResult.from_response_body(body, header_length=length)
        np.testing.assert_array_equal(result.as_numpy("y"), y)


def test_an_unknown_requested_output_is_400():
    request = v2.InferRequest(inputs={}, slo_ms=1, priority=0, outputs=(v2.OutputRequest("nope", False),))
    err = refusal(lambda: v2.infer_response("m", request, make_result()))
    assert err.http_status == 400 and "no output 'nope'" in err.message


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("status,http,retry", [
    (Status.BAD_INPUT, 400, False), (Status.BAD_MESSAGE, 400, False), (Status.BAD_MODEL, 400, False),
    (Status.MODEL_NOT_FOUND, 404, False), (Status.WOULD_MISS_DEADLINE, 429, True), (Status.QUEUE_FULL, 429, True),
    (Status.NO_CAPACITY, 503, True), (Status.UNAVAILABLE, 503, True), (Status.DEADLINE_MISSED, 504, False),
    (Status.TOO_LATE, 503, True), (Status.WORKER_LOST, 500, False), (Status.RUNTIME_ERROR, 500, False),
    (Status.INTERNAL, 500, False), (Status.UNKNOWN_TYPE, 500, False), (Status.DUPLICATE_REQUEST, 400, False),
])
def test_status_table(status, http, retry):
    from clockwork.client.errors import error_for

    err = v2.error_from(error_for(status, "why"), retry_after_s=2)
    assert err.http_status == http
    assert err.message == f"{status.name}: why"
    assert err.headers() == ({"Retry-After": "2"} if retry else {})


def test_every_status_has_an_http_answer():
    for status in Status:
        if not status.ok:
            assert 400 <= v2.http_status_of(status) < 600


def test_the_clients_own_timeout_is_504_and_a_closing_client_503():
    assert v2.error_from(DeadlineExceeded(detail="late")).http_status == 504
    unsent = v2.error_from(DeadlineExceeded(detail="no time left to send it", before_send=True), retry_after_s=1)
    assert (unsent.http_status, unsent.status, unsent.headers()) == (429, Status.WOULD_MISS_DEADLINE, {"Retry-After": "1"})
    closed = v2.error_from(ClientClosed(), retry_after_s=1)
    assert closed.http_status == 503 and closed.headers() == {"Retry-After": "1"}
    assert v2.error_from(CapacityError(Status.QUEUE_FULL)).http_status == 429
    assert v2.error_from(RequestError(Status.BAD_INPUT, "x")).http_status == 400
    assert v2.error_from(ServerError(Status.INTERNAL, "x")).http_status == 500


def test_versions_other_than_1_are_unknown_models():
    v2.check_version("m", None)
    v2.check_version("m", "1")
    assert refusal(lambda: v2.check_version("m", "2")).http_status == 404


# ----------------------------------------------------------------------------- metadata


def test_model_metadata_and_config_from_model_info():
    meta = v2.model_metadata(MLP_INFO)
    assert meta == {"name": "mlp", "versions": ["1"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]}
    config = v2.model_config(MLP_INFO)
    assert config["max_batch_size"] == 16 and config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]
    assert v2.model_config({**MLP_INFO, "max_batch": 4})["max_batch_size"] == 4


def test_the_config_says_how_a_model_is_batched_where_and_by_what():
    info = {**MLP_INFO, "device_kinds": ["cpu-1t", "NVIDIA H200 sm90", "emulated"], "runtimes": ["onnxruntime"]}
    config = v2.model_config(info)
    assert config["dynamic_batching"] == {"preferred_batch_size": [1, 2, 4, 8, 16]}
    assert [(g["name"], g["kind"]) for g in config["instance_group"]] == [
        ("cpu-1t", "KIND_CPU"), ("NVIDIA H200 sm90", "KIND_GPU"), ("emulated", "KIND_MODEL")]
    assert config["backend"] == "onnxruntime"
    assert v2.model_config({**info, "runtimes": ["torch"]})["backend"] == "pytorch"
    assert v2.model_config({**info, "runtimes": ["torch", "tensorrt"]})["backend"] == "clockwork"  # mixed


def test_metadata_of_a_sparse_model_info_does_not_raise():
    meta = v2.model_metadata({"name": "odd", "inputs": [{"name": "a", "dtype": "weird", "shape": [None, 3]}, 5]})
    assert meta["inputs"][0] == {"name": "a", "datatype": "WEIRD", "shape": [-1, -1, 3]}
    assert v2.model_config({"name": "odd"})["max_batch_size"] == 1
    assert v2.model_config({"name": "odd", "exec_ms": {"\u00b2": 1, "8": 1}})["max_batch_size"] == 8


def test_readiness_and_the_repository_index():
    unprepared = {**MLP_INFO, "name": "cold", "prepared_on": []}
    assert v2.model_ready(MLP_INFO) and not v2.model_ready(unprepared)
    index = v2.repository_index([MLP_INFO, unprepared])
    assert [(m["name"], m["state"]) for m in index] == [("mlp", "READY"), ("cold", "UNAVAILABLE")]
    assert [m["name"] for m in v2.repository_index([MLP_INFO, unprepared], ready_only=True)] == ["mlp"]


def test_server_metadata_lists_the_extensions():
    meta = v2.server_metadata("1.2.3")
    assert meta["version"] == "1.2.3" and "binary_tensor_data" in meta["extensions"]


# ----------------------------------------------------------------------------- statistics


def test_statistics_accumulate_per_model():
    book = v2.StatsBook()
    book.success("mlp", make_result(), samples=2, duration_ns=3_000_000, now_unix_ms=99)
    book.success("mlp", make_result(), samples=1, duration_ns=1_000_000, now_unix_ms=100)
    book.failure("mlp", Status.WOULD_MISS_DEADLINE, 500)
    book.failure("ghost", Status.MODEL_NOT_FOUND, 500)
    (mlp, other) = book.document(["mlp", "other"])["model_stats"]
    # Both requests ran in batches of 4 (make_result): 2/4 + 1/4 of an execution so far.
    assert mlp["inference_count"] == 3 and mlp["execution_count"] == 1 and mlp["last_inference"] == 100
    stats = mlp["inference_stats"]
    assert stats["success"] == {"count": 2, "ns": 4_000_000}
    assert stats["queue"] == {"count": 2, "ns": 1_000_000} and stats["compute_infer"] == {"count": 2, "ns": 2_500_000}
    # perf_analyzer stops unless the three compute counts agree; the hops are total - queue - exec
    assert stats["compute_input"] == {"count": 2, "ns": 500_000} and stats["compute_output"]["count"] == 2
    assert stats["fail"] == {"count": 1, "ns": 500}
    assert [b["batch_size"] for b in mlp["batch_stats"]] == [4]
    assert mlp["batch_stats"][0]["compute_infer"] == {"count": 1, "ns": 937_500}
    assert other["inference_count"] == 0 and other["inference_stats"]["success"]["count"] == 0
    assert "ghost" not in book._models


def test_executions_are_counted_once_per_batch_from_the_requests_that_shared_it():
    book = v2.StatsBook()
    for samples in (1, 1, 2):  # three requests that made one batch of 4
        book.success("m", make_result(), samples=samples, duration_ns=1, now_unix_ms=1)
    book.success("m", dataclasses.replace(make_result(), batch_size=1), samples=1, duration_ns=1, now_unix_ms=2)
    # a lone request of 3 samples, run padded to 4: one execution, whatever the padding
    book.success("m", dataclasses.replace(make_result(), batch_samples=3), samples=3, duration_ns=1, now_unix_ms=3)
    (m,) = book.document(["m"])["model_stats"]
    assert m["execution_count"] == 3 and m["inference_count"] == 8
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in m["batch_stats"]] == [(1, 1), (4, 2)]


def test_the_stats_book_is_bounded():
    book = v2.StatsBook(max_models=2)
    for name in ("a", "b", "c"):
        book.failure(name, Status.BAD_INPUT, 1)
    assert sorted(book._models) == ["a", "b"]
