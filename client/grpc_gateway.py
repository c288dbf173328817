"""The KServe v2 / Triton gRPC protocol (`inference.GRPCInferenceService`), beside the HTTP one.

Served by the gateway process when it is given `--grpc-listen HOST:PORT` (Triton's port is 8001),
from the same pieces as HTTP: the translation rules of `client.v2` (datatypes, shapes, timeouts,
priorities, metadata, statistics, the error table), the same controller connections and the same
statistics book. Only the framing differs:

- ModelInfer takes inputs as `raw_input_contents` (what tritonclient.grpc sends) or as typed
  `contents`, and answers every output as `raw_output_contents`. The SLO is the `timeout`
  parameter (microseconds, as in HTTP), else the call's gRPC deadline, else the default SLO;
  with both, the tighter one. `priority` is a request parameter, as in HTTP.
- Metadata, config, statistics and the repository index are the HTTP documents, turned into
  their protobuf messages field by field (json_format: the HTTP JSON is the protobuf JSON).
- A refusal ends the call with the gRPC code matching its HTTP status (400 INVALID_ARGUMENT,
  404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, ...) and the
  same "STATUS_NAME: detail" message.
- ServerLive, ServerReady (controller answering within 0.8 s with a live worker), ModelReady,
  ServerMetadata, ModelMetadata, ModelConfig, ModelInfer, ModelStatistics, RepositoryIndex and
  RepositoryModelLoad/Unload are served; the rest (streaming, shared memory, tracing, logging)
  answer UNIMPLEMENTED.

The protobuf bindings are those tritonclient[grpc] publishes, generated from Triton's
grpc_service.proto (BSD-3-Clause): the protocol's own package, imported rather than copied.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Awaitable, Callable

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from clockwork.client import v2

GRPC_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED,
             404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
             413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
             503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# InferTensorContents field per v2 datatype, for inputs sent as typed values.
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP16": None, "FP32": "fp32_contents", "FP64": "fp64_contents"}


# ----------------------------------------------------------------------------- translation


def _param(params: Any, key: str) -> Any:
    """The value of an InferParameter, whichever of its fields is set; None when absent."""
    if key not in params:
        return None
    choice = params[key].WhichOneof("parameter_choice")
    return getattr(params[key], choice) if choice else None


def infer_request(msg: pb.ModelInferRequest, default_slo_ms: float, time_remaining_s: float | None
                  ) -> v2.InferRequest:
    """A ModelInferRequest, checked and decoded; V2Error (400) naming the first problem."""
    for key in ("sequence_id", "sequence_start", "sequence_end"):
        if _param(msg.parameters, key) not in (None, 0, False, ""):
            raise v2.bad_input(f"parameters.{key}: sequence batching is not supported by Clockwork")
    if not msg.inputs:
        raise v2.bad_input("inputs must be a non-empty list of tensors")
    if msg.raw_input_contents and len(msg.raw_input_contents) != len(msg.inputs):
        raise v2.bad_input(f"{len(msg.raw_input_contents)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        if tensor.name in inputs:
            raise v2.bad_input(f"inputs[{i}]: input {tensor.name!r} is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise v2.bad_input(f"input {tensor.name!r}: shared-memory tensors are not supported; send the data")
        shape = list(tensor.shape)
        if msg.raw_input_contents:
            inputs[tensor.name] = v2.tensor_from_bytes(tensor.name, tensor.datatype, shape,
                                                       memoryview(msg.raw_input_contents[i]))
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise v2.bad_input(f"input {tensor.name!r}: send {tensor.datatype or 'its data'} in raw_input_contents")
            inputs[tensor.name] = v2.tensor_from_values(tensor.name, tensor.datatype, shape,
                                                        list(getattr(tensor.contents, field)))
    slo_ms = v2.slo_ms_from_timeout_us(_param(msg.parameters, "timeout"), default_slo_ms)
    if time_remaining_s is not None and "timeout" not in msg.parameters:
        slo_ms = max(0.001, time_remaining_s * 1000.0)
    elif time_remaining_s is not None:
        slo_ms = min(slo_ms, max(0.001, time_remaining_s * 1000.0))
    outputs = tuple(v2.OutputRequest(o.name, True) for o in msg.outputs) or None
    return v2.InferRequest(inputs=inputs, slo_ms=slo_ms, priority=v2.priority_from_v2(_param(msg.parameters, "priority")),
                           request_id=msg.id or None, outputs=outputs, binary_output=True)


def infer_response(model: str, request: v2.InferRequest, result: Any) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=model, model_version=v2.VERSION, id=request.request_id or "")
    for name, _ in v2.chosen_outputs(model, request, result):
        array = result.outputs[name]
        reply.outputs.add(name=name, datatype=v2.NUMPY_TO_V2[array.dtype.name], shape=list(array.shape))
        reply.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    for key, value in v2.timing_parameters(result).items():
        param = reply.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value if math.isfinite(value) else 0.0
        else:
            param.string_param = str(value)
    return reply


def message(doc: Any, proto: Any) -> Any:
    """An HTTP document as its protobuf message (the v2 HTTP JSON is the protobuf's JSON form)."""
    return json_format.ParseDict(doc, proto, ignore_unknown_fields=True)


# ----------------------------------------------------------------------------- the service


def answers_v2_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A refusal ends the call with the matching gRPC code; a bug of ours with INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: "GrpcGateway", request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except v2.V2Error as err:
            await context.abort(GRPC_CODE.get(err.http_status, grpc.StatusCode.INTERNAL), err.message)
        except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
            if isinstance(exc, grpc.aio.AbortError):
                raise
            self.log.exception("internal_error", method=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"INTERNAL: {exc!r}")

    return wrapper


class GrpcGateway(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over a `client.gateway.Gateway` (its pool, statistics and config)."""

    def __init__(self, gateway: Any, log: Any):
        self.gateway = gateway
        self.log = log

    async def _info(self, name: str, version: str) -> dict:
        v2.check_version(name, version)
        return await self.gateway.model_info(name)

    @answers_v2_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @answers_v2_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await self.gateway.is_ready())

    @answers_v2_errors
    async def ModelReady(self, request, context):
        """Not ready (rather than an error) for a model or version that does not exist, as Triton answers."""
        try:
            info = await self._info(request.name, request.version)
        except v2.V2Error as err:
            if err.http_status != 404:
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=v2.model_ready(info))

    @answers_v2_errors
    async def ServerMetadata(self, request, context):
        return message(self.gateway.server_metadata, pb.ServerMetadataResponse())

    @answers_v2_errors
    async def ModelMetadata(self, request, context):
        return message(v2.model_metadata(await self._info(request.name, request.version)), pb.ModelMetadataResponse())

    @answers_v2_errors
    async def ModelConfig(self, request, context):
        config = v2.model_config(await self._info(request.name, request.version))
        return pb.ModelConfigResponse(config=message(config, config_pb.ModelConfig()))

    @answers_v2_errors
    async def ModelStatistics(self, request, context):
        if request.name:
            names = [(await self._info(request.name, request.version))["name"]]
        else:
            names = [m.get("name") for m in await self.gateway.all_models() if isinstance(m.get("name"), str)]
        return message(self.gateway.stats.document(names), pb.ModelStatisticsResponse())

    @answers_v2_errors
    async def RepositoryIndex(self, request, context):
        index = v2.repository_index(await self.gateway.all_models(), request.ready)
        return message({"models": index}, pb.RepositoryIndexResponse())

    @answers_v2_errors
    async def RepositoryModelLoad(self, request, context):
        await self.gateway.wait_prepared(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @answers_v2_errors
    async def RepositoryModelUnload(self, request, context):
        await self._info(request.model_name, "")
        return pb.RepositoryModelUnloadResponse()

    @answers_v2_errors
    async def ModelInfer(self, request, context):
        v2.check_version(request.model_name, request.model_version)
        start_ns = self.gateway.door.arrival_ns(time.monotonic_ns())
        self.gateway.admit(request.model_name, "grpc", start_ns)
        with self.gateway.metrics.in_flight.labels("grpc").track_inprogress():
            req = infer_request(request, self.gateway.config.default_slo_ms, context.time_remaining())
            result = await self.gateway.run_infer(request.model_name, req, "grpc", start_ns)
        return infer_response(request.model_name, req, result)


async def start(gateway: Any, host: str, port: int, max_message_bytes: int, log: Any) -> grpc.aio.Server:
    """A started gRPC server on host:port serving GRPCInferenceService over `gateway`."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcGateway(gateway, log), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc raises this when the port is taken
        raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server
