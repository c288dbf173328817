"""KServe v2 (Open Inference Protocol) <-> Clockwork client protocol, without I/O.

The HTTP gateway (`client.gateway`) moves bytes; this module decides what they mean, so every
rule below is unit-tested without sockets:

- datatypes: v2 BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32, FP64 are numpy's bool ..
  float64, the Clockwork wire allow-list. BYTES, BF16 and the wider unsigned types are refused
  with BAD_INPUT (400), saying which types are served.
- shapes: Clockwork describes a model's tensors without the batch dimension; v2 metadata puts
  it first as -1. Request and response shapes are the tensors' full shapes, batch first.
- infer requests: JSON tensors (`data`, flat or nested, read in row-major order as Triton reads
  them: only the count of values must match the shape) or the binary-tensor
  extension (`parameters.binary_data_size` per input, raw little-endian bytes appended after
  the JSON header in input order; `Inference-Header-Content-Length` says where the JSON ends).
  Request parameters: `timeout` in microseconds (as Triton's clients send it) becomes the SLO,
  absent or 0 means the gateway's default SLO; `priority` follows Triton (0 the default, 1 the
  highest, larger is lower) and maps onto Clockwork's 0 (lowest) .. 9 (highest).
- infer responses: outputs as JSON `data`, or as binary when asked (`binary_data_output` for
  all, or an output's own `parameters.binary_data`), in the same framing as requests.
- errors: one `V2Error` per refusal, with the HTTP status, `{"error": "STATUS_NAME: detail"}`
  body and, for capacity refusals, a Retry-After. `HTTP_STATUS` is the status table.

Nothing here reads a clock, opens a socket or awaits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import simdjson

from clockwork.common import schema
from clockwork.common.status import Fault, Status
from clockwork.common.tensors import MAX_DIM, MAX_DIMS
from clockwork.client.errors import ClientClosed, ClockworkError, DeadlineExceeded
from clockwork.client.protocol import InferResult

__all__ = [
    "VERSION", "V2_TO_NUMPY", "NUMPY_TO_V2", "HTTP_STATUS", "V2Error", "error_from", "http_status_of",
    "bad_input", "as_object", "load_json", "load_infer_json", "split_body", "max_batch_size", "timing_parameters",
    "OutputRequest", "InferRequest", "parse_infer_request", "infer_response", "priority_from_v2",
    "tensor_from_bytes", "tensor_from_values", "chosen_outputs",
    "slo_ms_from_timeout_us", "check_version", "server_metadata", "model_metadata", "model_config",
    "model_ready", "repository_index", "ModelStats", "StatsBook",
]

VERSION = "1"  # Clockwork keeps one version of a model: every model is served as version "1"

V2_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NUMPY.items()}
_SERVED = ", ".join(V2_TO_NUMPY)

# Platforms as Triton names them, for tools that look at model metadata.
PLATFORMS = {"onnx": "onnxruntime_onnx", "profile": "clockwork_emulated"}
BACKENDS = {"onnxruntime": "onnxruntime", "torch": "pytorch", "tensorrt": "tensorrt", "emulated": "clockwork_emulated"}

# Clockwork status -> HTTP status. Statuses not listed follow their fault: a caller's fault is
# 400, a capacity refusal 503 with Retry-After, a system fault 500.
HTTP_STATUS: dict[Status, int] = {
    Status.BAD_INPUT: 400,
    Status.BAD_MESSAGE: 400,
    Status.BAD_MODEL: 400,
    Status.MODEL_NOT_FOUND: 404,
    Status.TOO_LARGE: 413,
    Status.WOULD_MISS_DEADLINE: 429,  # this request, with this timeout, cannot be served now
    Status.QUEUE_FULL: 429,  # too many requests right now
    Status.NO_CAPACITY: 503,  # no device can hold or run the model at present
    Status.UNAVAILABLE: 503,  # no worker can serve the model at present
    Status.DEADLINE_MISSED: 504,  # admitted, but the deadline passed (or became infeasible)
    Status.UNKNOWN_TYPE: 500,  # the controller did not understand the gateway: our bug
    Status.UNSUPPORTED_VERSION: 500,
}
# Statuses some builds do not have yet, by name.
HTTP_STATUS.update({Status[name]: code for name, code in (("FORBIDDEN", 403),) if name in Status.__members__})
_BY_FAULT = {Fault.CALLER: 400, Fault.CAPACITY: 503, Fault.SYSTEM: 500, Fault.NONE: 500}
RETRY_STATUSES = (429, 503)


def http_status_of(status: Status) -> int:
    return HTTP_STATUS.get(status, _BY_FAULT[status.fault])


class V2Error(Exception):
    """A refusal, as the gateway answers it: HTTP status, v2 error body, maybe Retry-After."""

    def __init__(self, http_status: int, status: Status | str, detail: str, retry_after_s: int | None = None):
        name = status.name if isinstance(status, Status) else status
        super().__init__(f"{name}: {detail}")
        self.http_status = http_status
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s if http_status in RETRY_STATUSES else None

    @property
    def message(self) -> str:
        return str(self)

    def body(self) -> bytes:
        return dumps({"error": self.message})

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def bad_input(detail: str) -> V2Error:
    return V2Error(400, Status.BAD_INPUT, detail)


def error_from(err: ClockworkError, retry_after_s: int = 1) -> V2Error:
    """The answer to a client-library error. The client's own timeout is a missed deadline
    (504), unless the deadline passed before the request could even be sent: then nothing was
    admitted, and it is refused as one the controller could not serve in time (429); a client
    closed under a pending call means the gateway is stopping (503)."""
    if isinstance(err, ClientClosed):
        return V2Error(503, Status.UNAVAILABLE, "the gateway is shutting down", retry_after_s)
    if isinstance(err, DeadlineExceeded) and err.before_send:
        return V2Error(429, Status.WOULD_MISS_DEADLINE, err.detail, retry_after_s)
    if isinstance(err, DeadlineExceeded):
        return V2Error(504, Status.DEADLINE_MISSED, err.detail)
    return V2Error(http_status_of(err.status), err.status, err.detail, retry_after_s)


# ----------------------------------------------------------------------------- parameters


def slo_ms_from_timeout_us(timeout: Any, default_slo_ms: float) -> float:
    """Triton's `timeout` (microseconds) as an SLO in ms; absent or 0: the default SLO."""
    if timeout is None:
        return default_slo_ms
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout < 0:
        raise bad_input(f"parameters.timeout must be a non-negative number of microseconds, got {timeout!r}")
    if timeout == 0:
        return default_slo_ms
    slo_ms = timeout / 1000.0
    if slo_ms >= 1e9:
        raise bad_input(f"parameters.timeout {timeout!r} us is too large (at most 1e12 us)")
    return slo_ms


def priority_from_v2(priority: Any) -> int:
    """Triton's priority (0 default, 1 highest, larger lower) as Clockwork's (0 lowest .. 9 highest):
    0 -> 0, 1 -> 9, 2 -> 8, ..., 9 -> 1, 10 and more -> 0."""
    if priority is None:
        return 0
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise bad_input(f"parameters.priority must be a non-negative integer, got {priority!r}")
    if priority == 0:
        return 0
    return max(0, schema.MAX_PRIORITY + 1 - priority)


def check_version(model: str, version: str | None) -> None:
    """Every model has the single version "1"; asking for another is asking for an unknown model."""
    if version not in (None, "", VERSION):
        raise V2Error(404, Status.MODEL_NOT_FOUND, f"model {model!r} has no version {version!r}; "
                      f"Clockwork serves one version of each model, \"{VERSION}\"")


# ----------------------------------------------------------------------------- infer requests


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool  # answer this output as binary data after the JSON header


@dataclass(frozen=True)
class InferRequest:
    """A v2 infer request, checked and decoded: what `AsyncClient.infer` needs, and how to answer."""

    inputs: dict[str, np.ndarray]  # batch dim first, as the v2 shape says
    slo_ms: float  # from parameters.timeout, or the gateway's default
    priority: int  # Clockwork's 0 (lowest) .. 9 (highest)
    request_id: str | None = None  # echoed in the response
    outputs: tuple[OutputRequest, ...] | None = None  # None: every output of the model
    binary_output: bool = False  # for outputs not listed (parameters.binary_data_output)


def as_object(value: Any, path: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad_input(f"{path} must be a JSON object, got {type(value).__name__}")
    return value


def _flag(params: Mapping, key: str, path: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise bad_input(f"{path}.{key} must be true or false, got {value!r}")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON header, binary tail) of a body framed by `Inference-Header-Content-Length`."""
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):  # not "²", which isdigit() accepts
        raise bad_input(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    n = int(text)
    if not 0 < n <= len(view):
        raise bad_input(f"Inference-Header-Content-Length is {n}, but the body has {len(view)} bytes")
    return view[:n], view[n:]


def dumps(doc: Any) -> bytes:
    """Compact JSON; numpy arrays are written by orjson straight from their memory (a reply's
    `tolist()` and json.dumps took 1.3 ms for 1,000 floats, orjson 0.02 ms). orjson writes every
    v2 datatype (BOOL to FP64) this way, so no array goes through a Python list."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def load_json(data: memoryview) -> Any:
    """orjson, not the standard library's json: a [1,3,64,64] FP32 input is 250 kB of JSON, which
    json.loads read in 3.4 ms of the gateway's single core and orjson in 0.9 ms."""
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise bad_input(f"the request header is not valid JSON: {exc}") from None


def load_infer_json(data: memoryview) -> Any:
    """An infer request's JSON header as Python objects, except that each input's `data` array
    stays a simdjson Array, whose numbers `_from_json` reads straight into the tensor. The
    values of a [1,3,64,64] FP32 input are 12,288 numbers: orjson made them Python floats and
    numpy read those back (1.0 ms on this project's machines), simdjson writes them into one
    buffer (0.4 ms). A fresh parser per request: a parser's arrays die with its next document."""
    try:
        doc = simdjson.Parser().parse(data)
        if not isinstance(doc, simdjson.Object):
            return _python(doc)
        return {key: ([_input_item(value[i]) for i in range(len(value))] if key == "inputs"
                      and isinstance(value, simdjson.Array) else _python(value))
                for key in doc.keys() for value in (doc[key],)}
    except (ValueError, RuntimeError) as exc:  # malformed, too deep, not UTF-8, an integer past 64 bits
        raise bad_input(f"the request header is not valid JSON: {exc}") from None


def _input_item(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _python(item)
    return {key: value if key == "data" and isinstance(value, simdjson.Array) else _python(value)
            for key in item.keys() for value in (item[key],)}


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def parse_infer_request(body: bytes, header_length: str | None, default_slo_ms: float) -> InferRequest:
    """Decode a v2 infer request body. Raises V2Error (400) naming the first problem."""
    head, tail = split_body(body, header_length)
    doc = load_infer_json(head)
    if not isinstance(doc, Mapping):
        raise bad_input("the request must be a JSON object with an \"inputs\" list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_input(f"id must be a string, got {type(request_id).__name__}")
    params = as_object(doc.get("parameters"), "parameters")
    for key in ("sequence_id", "sequence_start", "sequence_end"):
        if params.get(key) not in (None, 0, False, ""):
            raise bad_input(f"parameters.{key}: sequence batching is not supported by Clockwork")
    inputs = _parse_inputs(doc.get("inputs"), tail)
    return InferRequest(
        inputs=inputs,
        slo_ms=slo_ms_from_timeout_us(params.get("timeout"), default_slo_ms),
        priority=priority_from_v2(params.get("priority")),
        request_id=request_id,
        outputs=_parse_outputs(doc.get("outputs"), params),
        binary_output=_flag(params, "binary_data_output", "parameters"),
    )


def _parse_inputs(items: Any, tail: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise bad_input("inputs must be a non-empty list of tensors")
    if len(items) > schema.MAX_TENSORS:
        raise bad_input(f"{len(items)} inputs; at most {schema.MAX_TENSORS}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(items):
        name, shape, dtype, params = _tensor_head(item, f"inputs[{i}]")
        if name in arrays:
            raise bad_input(f"inputs[{i}]: input {name!r} is given twice")
        path = f"input {name!r}"
        if "shared_memory_region" in params:
            raise bad_input(f"{path}: shared-memory tensors are not supported; send the data in the request")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise bad_input(f"{path}: binary_data_size must be a byte count, got {size!r}")
            if offset + size > len(tail):
                raise bad_input(f"{path}: binary_data_size {size} runs past the end of the body "
                                f"({len(tail) - offset} bytes left after the JSON header)")
            arrays[name] = _from_bytes(tail[offset:offset + size], shape, dtype, path)
            offset += size
        elif "data" in item:
            arrays[name] = _from_json(item["data"], shape, dtype, path)
        else:
            raise bad_input(f"{path}: no data (give \"data\" or parameters.binary_data_size)")
    if offset != len(tail):
        raise bad_input(f"{len(tail) - offset} bytes after the JSON header belong to no input "
                        "(check Inference-Header-Content-Length and each binary_data_size)")
    return arrays


def tensor_from_bytes(name: str, datatype: Any, shape: Any, data: memoryview) -> np.ndarray:
    """One input sent as raw little-endian bytes (gRPC's raw_input_contents), checked."""
    path = f"input {name!r}"
    return _from_bytes(data, _shape(shape, path), _dtype(datatype, path), path)


def tensor_from_values(name: str, datatype: Any, shape: Any, values: Any) -> np.ndarray:
    """One input sent as a flat list of values (gRPC's typed contents), checked."""
    path = f"input {name!r}"
    return _from_json(values, _shape(shape, path), _dtype(datatype, path), path)


def _tensor_head(item: Any, path: str) -> tuple[str, tuple[int, ...], np.dtype, Mapping]:
    if not isinstance(item, Mapping):
        raise bad_input(f"{path} must be a JSON object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise bad_input(f"{path}.name must be a non-empty string of at most 256 characters")
    return name, _shape(item.get("shape"), f"input {name!r}"), _dtype(item.get("datatype"), f"input {name!r}"), \
        as_object(item.get("parameters"), f"input {name!r} parameters")


def _shape(value: Any, path: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DIMS \
            or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DIM for d in value):
        raise bad_input(f"{path}: shape must list 1 to {MAX_DIMS} non-negative dims, batch first; got {value!r}")
    return tuple(value)


def _dtype(value: Any, path: str) -> np.dtype:
    if not isinstance(value, str):
        raise bad_input(f"{path}: datatype must be a string such as \"FP32\"")
    if value not in V2_TO_NUMPY:
        raise bad_input(f"{path}: datatype {value} is not supported (served: {_SERVED})")
    return np.dtype(V2_TO_NUMPY[value]).newbyteorder("<")  # v2 binary data is little-endian


def _from_bytes(data: memoryview, shape: tuple[int, ...], dtype: np.dtype, path: str) -> np.ndarray:
    need = math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise bad_input(f"{path}: binary_data_size is {len(data)} bytes, but shape {list(shape)} of "
                        f"{NUMPY_TO_V2[dtype.name]} needs {need}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


# numpy kind -> how simdjson writes an array's numbers into a buffer, and the buffer's type.
_BUFFERS = {"f": ("d", np.float64), "i": ("i", np.int64), "u": ("u", np.uint64)}


def _from_json(data: Any, shape: tuple[int, ...], dtype: np.dtype, path: str) -> np.ndarray:
    """A JSON tensor's values (a simdjson Array from a request, a sequence from gRPC) at any
    depth of nesting, in row-major order, as Triton reads them; the count must fit the shape."""
    dtype = dtype.newbyteorder("=")
    array = _numbers(data, dtype) if isinstance(data, simdjson.Array) else None
    if array is None:  # not all numbers of that type: numpy's reading of the values says why
        try:
            array = np.asarray(_flat(data), dtype=dtype)
        except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
            raise bad_input(f"{path}: data is not a list of {NUMPY_TO_V2[dtype.name]} values: {exc}") from None
    if array.size != math.prod(shape):
        raise bad_input(f"{path}: data has {array.size} values, but shape {list(shape)} needs {math.prod(shape)}")
    return array.reshape(shape)


def _flat(data: Any) -> Any:
    """The values of nested lists in row-major order (without recursion: JSON may nest 1,000
    deep); a string or an object is refused."""
    if isinstance(data, simdjson.Array):
        data = data.as_list()
    if isinstance(data, (str, Mapping)):
        raise TypeError("data must be a list of numbers (flat or nested, row-major)")
    if not isinstance(data, list) or not any(isinstance(item, list) for item in data):
        return data
    values: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            values.append(item)
        else:
            stack.pop()
    return values


def _numbers(data: simdjson.Array, dtype: np.dtype) -> np.ndarray | None:
    """Every number in `data` (at any depth, in order) as an array of `dtype`, read by simdjson
    without a Python object per value; None where they are not all numbers that `dtype` holds
    (booleans, strings, fractions for an integer type, integers out of its range)."""
    buffer = _BUFFERS.get(dtype.kind)
    if buffer is None:  # BOOL
        return None
    code, wide = buffer
    try:
        values = np.frombuffer(data.as_buffer(of_type=code), dtype=wide)
    except (TypeError, ValueError, RuntimeError):
        return None
    if dtype.kind != "f" and values.size:
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            return None
    return values.astype(dtype, copy=False)


def _parse_outputs(items: Any, params: Mapping) -> tuple[OutputRequest, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise bad_input("outputs must be a list of {\"name\": ...} objects")
    default = _flag(params, "binary_data_output", "parameters")
    outputs, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise bad_input(f"outputs[{i}] must be an object with a \"name\"")
        name = item["name"]
        out_params = as_object(item.get("parameters"), f"output {name!r} parameters")
        for unsupported in ("classification", "shared_memory_region"):
            if out_params.get(unsupported) not in (None, 0):
                raise bad_input(f"output {name!r}: parameters.{unsupported} is not supported")
        if name in seen:
            raise bad_input(f"output {name!r} is requested twice")
        seen.add(name)
        outputs.append(OutputRequest(name, _flag(out_params, "binary_data", f"output {name!r} parameters", default)))
    return tuple(outputs)


# ----------------------------------------------------------------------------- infer responses


def infer_response(model: str, request: InferRequest, result: InferResult) -> tuple[bytes, int | None]:
    """(body, JSON header length) of the response; the length is None when no output is binary,
    else the value of the `Inference-Header-Content-Length` header."""
    chosen = chosen_outputs(model, request, result)
    entries, blobs = [], []
    for name, binary in chosen:
        array = result.outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": NUMPY_TO_V2[array.dtype.name], "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("="))
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": VERSION, "outputs": entries,
                           "parameters": timing_parameters(result)}
    if request.request_id is not None:
        doc["id"] = request.request_id
    header = dumps(doc)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def timing_parameters(result: InferResult) -> dict[str, Any]:
    """The controller's account of the request, as response parameters (ignored by v2 clients
    that do not look for them)."""
    return {"queue_ms": round(result.queue_ms, 6), "exec_ms": round(result.exec_ms, 6),
            "total_ms": round(result.total_ms, 6), "batch_size": result.batch_size,
            "cold_start": result.cold_start, "worker": result.worker}


def chosen_outputs(model: str, request: InferRequest, result: InferResult) -> list[tuple[str, bool]]:
    if request.outputs is None:
        return [(name, request.binary_output) for name in result.outputs]
    for out in request.outputs:
        if out.name not in result.outputs:
            raise bad_input(f"model {model!r} has no output {out.name!r} (outputs: {', '.join(result.outputs)})")
    return [(out.name, out.binary) for out in request.outputs]


# ----------------------------------------------------------------------------- metadata


def server_metadata(version: str) -> dict:
    return {"name": "clockwork", "version": version,
            "extensions": ["binary_tensor_data", "model_repository", "statistics"]}


def _tensor_meta(spec: Any) -> dict:
    spec = spec if isinstance(spec, Mapping) else {}
    shape = spec.get("shape") if isinstance(spec.get("shape"), list) else []
    dtype = spec.get("dtype")
    return {"name": str(spec.get("name", "")),
            "datatype": NUMPY_TO_V2.get(dtype, str(dtype).upper()),
            "shape": [-1, *(d if isinstance(d, int) and d >= 0 else -1 for d in shape)]}


def _specs(info: Mapping, key: str) -> list:
    value = info.get(key)
    return value if isinstance(value, list) else []


def model_metadata(info: Mapping) -> dict:
    """v2 model metadata from a ModelInfo (LIST): the batch dim leads every shape as -1."""
    return {"name": info.get("name"), "versions": [VERSION],
            "platform": PLATFORMS.get(info.get("format"), str(info.get("format"))),
            "inputs": [_tensor_meta(s) for s in _specs(info, "inputs")],
            "outputs": [_tensor_meta(s) for s in _specs(info, "outputs")]}


def max_batch_size(info: Mapping) -> int:
    """The most samples one request may carry: the upload's max_batch, else the largest
    profiled batch size."""
    max_batch = info.get("max_batch")
    if isinstance(max_batch, int) and max_batch > 0:
        return max_batch
    return max(batch_sizes(info), default=1)


def model_config(info: Mapping) -> dict:
    """A Triton-style model configuration (GET .../config), for tools such as perf_analyzer that
    read max_batch_size and the tensors from it. Dims exclude the batch dim, as Triton's do."""
    def tensors(key: str) -> list[dict]:
        out = []
        for meta in (_tensor_meta(s) for s in _specs(info, key)):
            out.append({"name": meta["name"], "data_type": f"TYPE_{meta['datatype']}", "dims": meta["shape"][1:]})
        return out

    return {"name": info.get("name"), "platform": PLATFORMS.get(info.get("format"), str(info.get("format"))),
            "backend": backend_of(info), "max_batch_size": max_batch_size(info),
            "input": tensors("inputs"), "output": tensors("outputs"),
            # the batch sizes the controller forms batches of (profiled; requests are padded up)
            "dynamic_batching": {"preferred_batch_size": batch_sizes(info)},
            "instance_group": [{"name": kind, "kind": instance_kind(kind), "count": 1}
                               for kind in _strings(info.get("device_kinds"))]}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def batch_sizes(info: Mapping) -> list[int]:
    exec_ms = info.get("exec_ms")
    return sorted(int(k) for k in exec_ms if str(k).isascii() and str(k).isdigit()) if isinstance(exec_ms, Mapping) else []


def backend_of(info: Mapping) -> str:
    """Triton's name for the backend: the workers' runtime, when they all run the same one."""
    runtimes = set(_strings(info.get("runtimes")))
    if len(runtimes) != 1:
        return "clockwork"
    return BACKENDS.get(runtimes.pop(), "clockwork")


def instance_kind(device_kind: str) -> str:
    """KIND_CPU for CPU core sets, KIND_MODEL for emulated devices, KIND_GPU otherwise."""
    lowered = device_kind.lower()
    if "cpu" in lowered:
        return "KIND_CPU"
    return "KIND_MODEL" if "emulated" in lowered else "KIND_GPU"


def model_ready(info: Mapping) -> bool:
    """Ready once some worker has prepared it: the controller then loads it where and when
    demand needs it (only the controller decides what is resident)."""
    prepared = info.get("prepared_on")
    return isinstance(prepared, list) and len(prepared) > 0


def repository_index(models: Iterable[Mapping], ready_only: bool = False) -> list[dict]:
    index = []
    for info in models:
        ready = model_ready(info)
        if ready_only and not ready:
            continue
        index.append({"name": info.get("name"), "version": VERSION, "state": "READY" if ready else "UNAVAILABLE",
                      "reason": "" if ready else "not prepared on any connected worker"})
    return index


# ----------------------------------------------------------------------------- statistics


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, int(ns))

    def doc(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Executions:
    """Executions (batches) seen through the requests that shared them. A request that ran in a
    batch of b samples carrying s of them is s/b of that execution, so the shares of the requests
    of one batch add up to one execution; with every request through this gateway the count is
    exact, otherwise it is this gateway's share."""

    count: float = 0.0
    infer_ns: float = 0.0
    hops_ns: float = 0.0

    def add(self, share: float, exec_ns: int, hops_ns: int) -> None:
        self.count += share
        self.infer_ns += share * exec_ns
        self.hops_ns += share * hops_ns

    def doc(self) -> dict:
        count = round(self.count)
        return {"compute_input": {"count": count, "ns": round(self.hops_ns)},
                "compute_infer": {"count": count, "ns": round(self.infer_ns)},
                "compute_output": {"count": count, "ns": 0}}


@dataclass
class ModelStats:
    """What the gateway saw of one model's requests (gateway bookkeeping, never on a wire), in
    Triton's meaning: inference_stats count requests, execution_count and batch_stats count
    executions (batches), inference_count counts samples."""

    inference_count: int = 0  # samples answered OK (a request of shape [4, ...] counts 4)
    executions: _Executions = field(default_factory=_Executions)
    last_inference_ms: int = 0  # unix ms of the last OK answer
    success: _Duration = field(default_factory=_Duration)  # request received -> answered OK, at the gateway
    fail: _Duration = field(default_factory=_Duration)  # refused by the controller, or timed out
    queue: _Duration = field(default_factory=_Duration)  # the controller's queue_ms
    # The hops between controller and worker, both ways (compute_output counts the same requests
    # at 0 ns: the two directions are not timed apart), and the worker-measured execution.
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Executions] = field(default_factory=dict)  # batch size -> its executions

    def doc(self, name: str) -> dict:
        zero = {"count": 0, "ns": 0}
        return {"name": name, "version": VERSION, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": round(self.executions.count),
                "inference_stats": {"success": self.success.doc(), "fail": self.fail.doc(),
                                    "queue": self.queue.doc(), "compute_input": self.compute_input.doc(),
                                    "compute_infer": self.compute_infer.doc(),
                                    "compute_output": self.compute_output.doc(),
                                    "cache_hit": dict(zero), "cache_miss": dict(zero)},
                "batch_stats": [{"batch_size": size, **ex.doc()} for size, ex in sorted(self.batches.items())]}


class StatsBook:
    """Per-model statistics in the shape of the v2 statistics extension.

    Names come from callers, so the book holds at most `max_models` entries: a stream of
    requests for made-up names cannot grow it without bound (later names go uncounted)."""

    def __init__(self, max_models: int = 10_000) -> None:
        self._models: dict[str, ModelStats] = {}
        self.max_models = max_models

    def _entry(self, model: str) -> ModelStats:
        stats = self._models.get(model)
        if stats is None:
            stats = ModelStats()
            if len(self._models) < self.max_models:
                self._models[model] = stats
        return stats

    def success(self, model: str, result: InferResult, samples: int, duration_ns: int, now_unix_ms: int) -> None:
        stats = self._entry(model)
        queue_ns, exec_ns = round(result.queue_ms * 1e6), round(result.exec_ms * 1e6)
        hops_ns = max(0, round(result.total_ms * 1e6) - queue_ns - exec_ns)
        stats.inference_count += samples
        stats.last_inference_ms = now_unix_ms
        stats.success.add(duration_ns)
        stats.queue.add(queue_ns)
        stats.compute_input.add(hops_ns)
        stats.compute_infer.add(exec_ns)
        stats.compute_output.add(0)
        batch = max(result.batch_size, samples, 1)  # batch_stats are per size run, padding included
        share = samples / max(result.batch_samples or batch, samples)  # of one execution
        stats.executions.add(share, exec_ns, hops_ns)
        stats.batches.setdefault(batch, _Executions()).add(share, exec_ns, hops_ns)

    def failure(self, model: str, status: Status, duration_ns: int) -> None:
        """Counted for registered models only: an unknown name must not grow the book."""
        if status is not Status.MODEL_NOT_FOUND:
            self._entry(model).fail.add(duration_ns)

    def get(self, model: str) -> ModelStats:
        return self._models.get(model, ModelStats())

    def document(self, names: Iterable[str]) -> dict:
        return {"model_stats": [self.get(name).doc(name) for name in names]}
