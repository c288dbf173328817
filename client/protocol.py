"""The client protocol without I/O: build requests, read replies, map statuses to errors.

`Client` (blocking) and `AsyncClient` (asyncio) share this module and differ only in how they
move frames; the load generator uses the module-level functions directly.

Theory of operation. A call is a `Call`: the message to send, the monotonic time at which the
client stops waiting, and the function that turns the reply into a value or raises. A shell
(sync or async) does the same four things with it:

    msg_id = core.next_id()                      # the request id; replies carry it as parent_id
    frames = codec.encode(call.message(now_ns), msg_id, sent_ns=now_ns)   # once writable
    incoming = read_incoming(frames_received)    # a list: until route(one, pending) == msg_id
    return call.finish(incoming)                 # value, or a typed ClockworkError

Rules:
- Every wait is bounded: `Call.wait_until_ns` is the SLO/deadline plus a grace for INFER, and a
  fixed timeout for admin calls. Past it the shell raises `Call.timeout_error()`.
- Replies are matched on parent_id only. A reply for a request nobody waits for any more (it
  timed out) is discarded, never handed to a later call. An ERROR with parent_id 0 (the
  controller could not even read our header) is given to the one pending call when there is
  exactly one, and dropped otherwise.
- An INFER's `slo_ns` is the budget left at the moment it is sent, so time spent waiting for a
  connection is not granted twice.
- Inputs are checked here before sending (names, dtypes, batch dim), so an obviously bad request
  fails fast with `RequestError(BAD_INPUT)` and costs the controller nothing.

No sockets, threads or clock reads happen here: callers pass `now_ns` (time.monotonic_ns()).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from clockwork.common import checks, codec, schema
from clockwork.common.checks import BadMessage
from clockwork.common.net import IdSource
from clockwork.common.schema import Envelope, Message
from clockwork.common.status import Status
from clockwork.common.tensors import MAX_DIM, MAX_DIMS, Tensor
from clockwork.client import nnef, pools
from clockwork.client.errors import ClockworkError, DeadlineExceeded, RequestError, ServerError, Unreachable, error_for

T = TypeVar("T")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
ENDPOINT_ENV = "CLOCKWORK_ENDPOINT"
MS = 1_000_000
S = 1_000_000_000
# A model larger than this travels in chunks of this size (schema.Upload): the controller then
# holds one chunk at a time, and writing one to its staging file stays a few milliseconds.
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024

__all__ = [
    "DEFAULT_ENDPOINT", "ENDPOINT_ENV", "default_endpoint", "client_options", "upload_name", "Options", "POOL_CONNECT_TIMEOUT_S", "InferResult", "Incoming", "Call",
    "ClientCore", "Listing", "Uploading", "UPLOAD_CHUNK_BYTES", "detect_format", "deadline_ns", "build_upload", "build_remove", "build_list",
    "build_model", "build_status", "build_infer", "build_cancel", "read_incoming", "route", "parse_reply",
    "parse_infer_reply", "parse_upload_reply", "parse_remove_reply", "parse_list_reply", "parse_model_reply",
    "parse_status_reply", "parse_cancel_reply", "input_names",
]


def upload_name(model: str | os.PathLike | bytes, name: str | None, format: str | None) -> str:
    """The name an upload registers: `name`, else the file's stem (an NNEF folder's or archive's
    name); TypeError for bytes without a name, or NNEF given as bytes."""
    is_bytes = isinstance(model, (bytes, bytearray, memoryview))
    if format == nnef.FORMAT or (format is None and nnef.looks_like_nnef(model)):
        if is_bytes:
            raise TypeError("an NNEF model is uploaded from its folder or .tgz path, not from bytes")
        return name if name is not None else nnef.default_name(os.fspath(model))
    if name is not None:
        return name
    if is_bytes:
        raise TypeError("upload of bytes needs a name")
    return os.path.splitext(os.path.basename(os.fspath(model)))[0]


def client_options(endpoint: str | Sequence[str] | None, timeout_s: float, upload_timeout_s: float, grace_s: float,
                   connect_timeout_s: float | None) -> tuple[Options, dict[str, dict[str, float]]]:
    """A client's Options and, with several pools (client/pools.py), the keyword arguments of
    each pool's own client by endpoint ({} with one controller)."""
    endpoints = pools.endpoints(endpoint or default_endpoint())
    options = Options(",".join(endpoints), timeout_s, upload_timeout_s, grace_s,
                      connect_timeout_s=connect_timeout_s or 0.0)
    each = dict(timeout_s=timeout_s, upload_timeout_s=upload_timeout_s, grace_s=grace_s,
                connect_timeout_s=POOL_CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s)
    return options, ({ep: each for ep in endpoints} if len(endpoints) > 1 else {})


def default_endpoint() -> str:
    """$CLOCKWORK_ENDPOINT, else tcp://127.0.0.1:5555 (the controller's default client ROUTER)."""
    return os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT


@dataclass(frozen=True)
class Options:
    """How a client talks to the controller; the same for the blocking and asyncio clients."""

    endpoint: str = DEFAULT_ENDPOINT
    # remove, list, status: the controller answers these from memory in milliseconds; the
    # timeout only bounds a dead or wedged controller.
    timeout_s: float = 30.0
    # upload: the controller validates the model and workers prepare and profile it before
    # the reply; a TensorRT engine build takes minutes.
    upload_timeout_s: float = 300.0
    # infer waits for the SLO plus this: the controller answers every request by its deadline,
    # the grace covers the network and a GC pause before we call the controller unresponsive.
    grace_s: float = 1.0
    # infer, list and status are resent with the same request id when no reply came within
    # this (0: never): a controller that restarted lost them, and the one that is still
    # serving them ignores the copy. Uploads and removals are never resent.
    retry_s: float = 0.25
    # A call that finds no connection to the controller within this fails with Unreachable,
    # naming the endpoint (0: it waits for one as long as for its reply, so a lone controller
    # may restart under it). Clients of several pools use POOL_CONNECT_TIMEOUT_S.
    connect_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "upload_timeout_s", "grace_s", "retry_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e7:
                raise ValueError(f"{name} must be a number of seconds in [0, 1e7), got {value!r}")
        if not isinstance(self.endpoint, str) or not self.endpoint:
            raise ValueError(f"endpoint must be a ZeroMQ address such as {DEFAULT_ENDPOINT}")


# With several pools, a down pool's models fail within this, naming the pool, while the other
# pools serve on: long enough for a reconnect after a blip (the DEALER retries every 0.1 s),
# short enough that a caller is not left hanging (docs/architecture.md, "Several pools").
POOL_CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class InferResult:
    """A successful inference.

    `outputs` maps output names to arrays with the batch dimension first (one row per sample
    sent). The arrays are copies that own their memory. Times are on the controller's clock:
    queue_ms from receipt to dispatch, exec_ms the worker-measured execution of the batch,
    total_ms from receipt to reply; lane_start_ms and lane_end_ms from receipt to the worker's
    lane starting and ending the batch (`hops` splits the total with them).
    """

    outputs: dict[str, np.ndarray]
    queue_ms: float  # received -> its batch sent to a worker
    exec_ms: float  # worker-measured execution of the batch this request ran in
    total_ms: float  # received -> reply sent
    batch_size: int  # the batch the request ran in, padded (may hold other requests' samples)
    cold_start: bool  # the model had to be loaded for this request
    worker: str  # which worker ran it
    request_id: int = 0  # the INFER's msg_id
    batch_samples: int = 0  # the real samples in that batch (0: a controller that does not say)
    lane_start_ms: float = 0.0  # received -> the lane started the batch (0: not said)
    lane_end_ms: float = 0.0  # received -> the lane ended it

    def hops(self, round_trip_ms: float) -> dict[str, float]:
        """Where a request's `round_trip_ms` (timed by the caller around the call) went: the
        client's hops to the controller and back (with the client library), the controller's
        queue, its hop to the worker's lane, the execution, and the way back to the reply."""
        return {"client hops": round_trip_ms - self.total_ms, "queue": self.queue_ms,
                "to the lane": self.lane_start_ms - self.queue_ms, "exec": self.lane_end_ms - self.lane_start_ms,
                "back from the lane": self.total_ms - self.lane_end_ms}

    @property
    def output(self) -> np.ndarray:
        """The only output, for single-output models."""
        if len(self.outputs) != 1:
            raise ValueError(f"the model has {len(self.outputs)} outputs ({', '.join(self.outputs)}); use .outputs")
        return next(iter(self.outputs.values()))


# ----------------------------------------------------------------------------- errors


def _bad_input(detail: str) -> RequestError:
    return RequestError(Status.BAD_INPUT, detail)


def _as_int(value: Any) -> Any:
    """numpy integers are fine where the wire wants an int; floats and bools are not."""
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        return value  # left for the schema check to refuse with a clear message
    return operator.index(value)


def _shape_fix(input_shapes: Mapping | None) -> dict:
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        raise _bad_input("input_shapes must map input names to dims, e.g. {'data': [3, 224, 224]}")
    shapes = {}
    for name, dims in (input_shapes or {}).items():
        if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
            raise _bad_input(f"input_shapes[{name!r}]: expected a list of dims, got {dims!r}")
        shapes[name] = [_as_int(d) for d in dims]
    return _checked(schema.SHAPE_FIX, shapes, "input_shapes")


def _checked(check: Callable[[Any, str], Any], value: Any, path: str) -> Any:
    """Run a schema check on a caller's value; its failure is the caller's BAD_INPUT."""
    try:
        return check(value, path)
    except BadMessage as exc:
        raise _bad_input(exc.detail) from None


# ----------------------------------------------------------------------------- building


def detect_format(model: str | os.PathLike | bytes | bytearray | memoryview) -> str:
    """The upload format: "profile" for a .json path (or bytes that look like JSON), else "onnx"."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return "profile" if bytes(memoryview(model)[:64]).lstrip().startswith(b"{") else "onnx"
    return "profile" if os.fspath(model).lower().endswith(".json") else "onnx"


def build_upload(name: str, blob: Any, *, format: str = "onnx", input_shapes: Mapping | None = None,
                 max_batch: int = 0, replace: bool = False, offset: int = 0, total_bytes: int = 0,
                 sha256: str = "") -> schema.Upload:
    """UPLOAD of model bytes, or of one chunk of them (offset, total_bytes and sha256 of the whole,
    see schema.Upload). input_shapes fixes dynamic non-batch dims: {input: [3, 224, 224]}."""
    _checked(schema.MODEL_NAME, name, "name")
    _checked(checks.one_of(*schema.FORMATS), format, "format")
    shapes = _shape_fix(input_shapes)
    max_batch = _checked(checks.integer(0, schema.MAX_BATCH), _as_int(max_batch), "max_batch")
    _checked(checks.boolean, replace, "replace")
    whole = total_bytes or memoryview(blob).nbytes
    if whole > schema.MAX_MODEL_BYTES:
        raise RequestError(Status.TOO_LARGE, f"the model file has {whole} bytes; the limit is {schema.MAX_MODEL_BYTES}")
    if whole == 0:
        raise RequestError(Status.BAD_MODEL, "the model file is empty")
    return schema.Upload(name=name, format=format, input_shapes={k: list(v) for k, v in shapes.items()},
                         max_batch=max_batch, replace=replace, offset=offset, total_bytes=total_bytes,
                         sha256=sha256, blob=blob)


def build_remove(name: str) -> schema.Remove:
    return schema.Remove(name=_checked(schema.MODEL_NAME, name, "name"))


def build_list(prefix: str = "", after: str = "", limit: int = 0) -> schema.ListModels:
    """One page of LIST: names starting with `prefix`, after `after` (the previous page's
    "next"), at most `limit` (0: as many as fit one reply; at most schema.MAX_LIST_PAGE)."""
    return schema.ListModels(prefix=_checked(checks.text(128), prefix, "prefix"),
                             after=_checked(checks.text(128), after, "after"),
                             limit=_checked(checks.integer(0, schema.MAX_LIST_PAGE), _as_int(limit), "limit"))


def build_model(name: str) -> schema.GetModel:
    return schema.GetModel(name=_checked(schema.MODEL_NAME, name, "name"))


def build_status(models_limit: int = schema.STATUS_MODELS) -> schema.GetStatus:
    """STATUS listing the `models_limit` busiest models (0 to schema.MAX_LIST_PAGE)."""
    limit = _checked(checks.integer(0, schema.MAX_LIST_PAGE), _as_int(models_limit), "models_limit")
    return schema.GetStatus(models_limit=limit)


def build_cancel(request_id: int) -> schema.Cancel:
    return schema.Cancel(request_id=_checked(checks.integer(0, schema.U64), request_id, "request_id"))


def build_infer(model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, slo_ns: int, priority: int = 0,
                input_names: tuple[str, ...] | None = None) -> schema.Infer:
    """INFER with the given budget. `inputs` maps input names to arrays whose first dimension is
    the batch (one sample: shape [1, ...]); a bare array is the only input and needs
    `input_names` (the model's inputs, see `input_names()`). Raises RequestError(BAD_INPUT)."""
    _checked(schema.MODEL_NAME, model, "model")
    slo_ns = _checked(checks.integer(1, schema.I64), _as_int(slo_ns), "slo_ns")
    priority = _checked(checks.integer(0, schema.MAX_PRIORITY), _as_int(priority), "priority")
    named = _name_inputs(model, inputs, input_names)
    return schema.Infer(model=model, slo_ns=slo_ns, priority=priority, tensors=_tensors(named))


def _name_inputs(model: str, inputs: Any, input_names: tuple[str, ...] | None) -> Mapping:
    if isinstance(inputs, Mapping):
        return inputs
    if input_names is None:
        raise _bad_input(f"a bare array for {model!r} needs the model's input name; pass {{name: array}}")
    if len(input_names) != 1:
        raise _bad_input(f"model {model!r} has {len(input_names)} inputs ({', '.join(input_names)}); "
                         "pass a dict {name: array}")
    return {input_names[0]: inputs}


def _tensors(inputs: Mapping) -> tuple[Tensor, ...]:
    if not inputs:
        raise _bad_input("no inputs given")
    if len(inputs) > schema.MAX_TENSORS:
        raise _bad_input(f"more than {schema.MAX_TENSORS} inputs")
    tensors, samples = [], set()
    for name, array in inputs.items():
        _checked(checks.text(256), name, "input name")
        if not isinstance(array, np.ndarray):
            raise _bad_input(f"input {name!r} is a {type(array).__name__}; pass a numpy array")
        if not 1 <= array.ndim <= MAX_DIMS or any(d > MAX_DIM for d in array.shape):
            raise _bad_input(f"input {name!r} has shape {list(array.shape)}; inputs need the batch dimension "
                             f"first (one sample: [1, ...]) and at most {MAX_DIMS} dimensions")
        try:
            tensors.append(Tensor.from_array(name, array))
        except BadMessage as exc:
            raise _bad_input(exc.detail) from None
        samples.add(array.shape[0])
    if len(samples) != 1:
        raise _bad_input(f"inputs disagree on the batch dimension: {sorted(samples)}")
    count = samples.pop()
    if not 1 <= count <= schema.MAX_BATCH:
        raise _bad_input(f"{count} samples; a request carries 1 to {schema.MAX_BATCH}")
    return tuple(tensors)


def deadline_ns(slo_ms: float | None, deadline: float | None, now_ns: int) -> int:
    """The absolute deadline (monotonic ns) from exactly one of slo_ms or deadline (monotonic s).
    A deadline already past raises DeadlineExceeded; nothing is sent."""
    if (slo_ms is None) == (deadline is None):
        raise TypeError("give exactly one of slo_ms (a budget in milliseconds) or deadline (time.monotonic() seconds)")
    if slo_ms is not None:
        if isinstance(slo_ms, bool) or not isinstance(slo_ms, (int, float)) or not 0 < slo_ms < 1e12:
            raise _bad_input(f"slo_ms must be a positive number of milliseconds, got {slo_ms!r}")
        return now_ns + max(1, int(slo_ms * MS))
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        raise _bad_input(f"deadline must be a time.monotonic() value in seconds, got {deadline!r}")
    when_ns = int(deadline * S)
    if when_ns <= now_ns:
        raise DeadlineExceeded(detail=f"the deadline passed {(now_ns - when_ns) / MS:.3f} ms before the "
                               "request could be sent (client-side check; nothing was sent)", before_send=True)
    return when_ns


# ----------------------------------------------------------------------------- receiving


@dataclass(frozen=True)
class Incoming:
    """One received message: the request it answers, and either the decoded envelope or the
    error that decoding it raised."""

    parent_id: int
    envelope: Envelope | None
    error: ClockworkError | None = None


def read_incoming(frames: list) -> list[Incoming]:
    """Decode what arrived: one reply, or each reply of a bundle (the controller bundles the
    replies it has for one client at once). An undecodable reply becomes a ServerError for its
    request, if its header is readable enough to say which request that is."""
    try:
        parts = codec.messages(frames)
    except BadMessage as exc:
        return [_undecodable(0, exc)]
    return [_read_one(part, head) for head, part in parts]


def _read_one(frames: Any, header: dict | codec.Header | None) -> Incoming:
    try:
        envelope = codec.decode(frames, header)
    except BadMessage as exc:
        # Read at any size: a reply too large to decode still names the request it fails.
        return _undecodable(codec.peek_id(codec.peek_map(frames, max_bytes=None), "parent_id"), exc)
    return Incoming(envelope.parent_id, envelope)


def _undecodable(parent_id: int, exc: BadMessage) -> Incoming:
    detail = f"the controller sent an undecodable reply: {exc.status.name}: {exc.detail}"
    return Incoming(parent_id, None, ServerError(Status.INTERNAL, detail))


def route(incoming: Incoming, pending: Collection[int]) -> int | None:
    """The pending request id this message answers, or None to discard it."""
    if incoming.parent_id in pending:
        return incoming.parent_id
    anonymous_error = incoming.envelope is None or isinstance(incoming.envelope.body, schema.Error)
    if incoming.parent_id == 0 and anonymous_error and len(pending) == 1:
        return next(iter(pending))
    return None


def _checked_reply(envelope: Envelope, expected: type[Message]) -> Message:
    body = envelope.body
    if isinstance(body, schema.Error):
        if body.status.ok:
            raise ServerError(Status.INTERNAL, f"the controller sent an ERROR with status OK: {body.detail}")
        raise error_for(body.status, body.detail or "the controller refused the message")
    if isinstance(body, (schema.Reply, schema.InferReply)) and not body.status.ok:
        raise error_for(body.status, body.detail)
    if not isinstance(body, expected):
        raise ServerError(Status.INTERNAL, f"expected a {expected.TYPE.value} message, got {body.TYPE.value}")
    return body


def parse_reply(envelope: Envelope) -> dict:
    """The body of an OK REPLY; raises the typed error for anything else."""
    return _checked_reply(envelope, schema.Reply).body


def parse_infer_reply(envelope: Envelope) -> InferResult:
    """The InferResult of an OK INFER_REPLY; raises the typed error for anything else."""
    body = _checked_reply(envelope, schema.InferReply)
    return InferResult(
        outputs={t.name: np.array(t.array()) for t in body.tensors},  # copy: outlive the zmq frame
        queue_ms=body.queue_ns / MS,
        exec_ms=body.exec_ns / MS,
        total_ms=body.total_ns / MS,
        batch_size=body.batch_size,
        cold_start=body.cold_start,
        worker=body.worker,
        request_id=envelope.parent_id,
        batch_samples=body.batch_samples,
        lane_start_ms=body.lane_start_ns / MS,
        lane_end_ms=body.lane_end_ns / MS,
    )


def parse_upload_reply(envelope: Envelope) -> dict:
    """The uploaded model's ModelInfo (a dict; see `ClientCore` for its keys)."""
    body = parse_reply(envelope)
    info = body.get("model")
    return info if isinstance(info, dict) else body


def parse_remove_reply(envelope: Envelope) -> None:
    parse_reply(envelope)


def parse_list_reply(envelope: Envelope) -> dict:
    """A LIST page: {"models": [ModelInfo, ...], "total": int, "next": str ("" on the last)}."""
    body = parse_reply(envelope)
    models, total, after = body.get("models"), body.get("total"), body.get("next")
    return {"models": [m for m in models if isinstance(m, dict)] if isinstance(models, list) else [],
            "total": total if type(total) is int else 0, "next": after if isinstance(after, str) else ""}


def parse_model_reply(envelope: Envelope) -> dict:
    """A MODEL reply: the model's ModelInfo."""
    return parse_reply(envelope)


def parse_status_reply(envelope: Envelope) -> dict:
    return parse_reply(envelope)


def parse_cancel_reply(envelope: Envelope) -> bool:
    return parse_reply(envelope).get("cancelled") is True


def input_names(model_info: Mapping) -> tuple[str, ...] | None:
    """The input names of a ModelInfo, or None when it does not list them readably."""
    inputs = model_info.get("inputs")
    if not isinstance(inputs, list):
        return None
    names = tuple(i.get("name") for i in inputs if isinstance(i, dict))
    return names if names and all(isinstance(n, str) for n in names) else None


# ----------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, ready for a shell to send and await."""

    body: Message
    what: str  # names the request in errors, e.g. "infer on 'resnet50'"
    started_ns: int  # when the caller asked (monotonic)
    wait_until_ns: int  # stop waiting for the reply at this monotonic time
    parse: Callable[[Envelope], T]
    slo_deadline_ns: int | None = None  # INFER: slo_ns is set to the budget left at send time
    retry_ns: int = 0  # resend after this long without a reply (0: never; idempotent calls only)

    def next_send_ns(self, sent_ns: int) -> int | None:
        """When to resend if no reply has come, or None."""
        return sent_ns + self.retry_ns if self.retry_ns else None

    def message(self, now_ns: int, last_reply: tuple[int, int] = (0, 0)) -> Message:
        """The message to send now; raises DeadlineExceeded if an INFER's deadline has passed.
        An INFER reports `last_reply` (ClientCore.last_reply)."""
        if self.slo_deadline_ns is None:
            return self.body
        left_ns = self.slo_deadline_ns - now_ns
        if left_ns <= 0:
            raise DeadlineExceeded(detail=f"{self.what}: the deadline passed {-left_ns / MS:.3f} ms before the "
                                   "request could be sent (client-side check; nothing was sent)", before_send=True)
        return dataclasses.replace(self.body, slo_ns=left_ns, last_reply_id=last_reply[0],
                                   last_reply_received_ns=last_reply[1])

    def remaining_ns(self, now_ns: int) -> int:
        return self.wait_until_ns - now_ns

    def finish(self, incoming: Incoming) -> T:
        """The call's value from its reply, or the typed error."""
        if incoming.error is not None:
            raise incoming.error
        return self.parse(incoming.envelope)

    def timeout_error(self, endpoint: str, sent: bool) -> DeadlineExceeded:
        waited = (self.wait_until_ns - self.started_ns) / S
        if not sent:
            return DeadlineExceeded(detail=f"{self.what}: could not reach the controller at {endpoint} within "
                                    f"{waited:.3g} s (client-side timeout; nothing was sent)")
        return DeadlineExceeded(detail=f"{self.what}: no reply from the controller at {endpoint} within "
                                f"{waited:.3g} s (client-side timeout)")


class ClientCore:
    """What a client knows besides its socket: options, request ids, and each model's input
    names (learned from upload, list and model replies) so that `infer(model, array)` can name a
    single input. Builds every `Call`; shells only move frames.

    ModelInfo, as returned by upload, list and model: {"name", "format", "max_batch",
    "inputs": [{"name", "dtype", "shape"}], "outputs": [...], "size_bytes", "sha256",
    "created_unix_s", "prepared_on": [worker names], "load_ms", "exec_ms": {"1": ms, ...}}.
    """

    def __init__(self, options: Options, ids: IdSource | None = None, report_reply_hops: bool = True):
        self.options = options
        self._ids = ids or IdSource()
        self._inputs: dict[str, tuple[str, ...]] = {}  # model -> input names
        # The last INFER_REPLY's (request id, arrival on this host's monotonic clock), which the
        # next INFER carries: the controller times the way back to us with it, and plans that
        # instead of a fixed allowance. Off for a relay (the gateway), whose own way back to its
        # caller comes after ours and is not timed.
        self.report_reply_hops = report_reply_hops
        self.last_reply = (0, 0)

    def heard(self, incoming: Incoming, received_ns: int) -> None:
        """Note a message's arrival (an OK INFER_REPLY's is reported with the next INFER: the
        controller remembers when it answered those, not its refusals)."""
        body = incoming.envelope.body if incoming.envelope is not None else None
        if self.report_reply_hops and isinstance(body, schema.InferReply) and body.status is Status.OK:
            self.last_reply = (incoming.parent_id, received_ns)

    def next_id(self) -> int:
        return self._ids.next()

    def send_by_ns(self, call: Call, since_ns: int) -> int:
        """Until when a shell that began to send `call` at `since_ns` waits for a connection
        (then `unsent_error`)."""
        if not self.options.connect_timeout_s:
            return call.wait_until_ns
        return min(call.wait_until_ns, since_ns + round(self.options.connect_timeout_s * S))

    def unsent_error(self, call: Call, since_ns: int) -> ClockworkError:
        """Why `call` was not sent by `send_by_ns`: Unreachable when a connect timeout is set,
        else the call's own timeout."""
        if not self.options.connect_timeout_s:
            return call.timeout_error(self.options.endpoint, sent=False)
        waited = (self.send_by_ns(call, since_ns) - since_ns) / S
        return Unreachable(detail=f"{call.what}: no connection to the controller at {self.options.endpoint} within "
                                  f"{waited:.3g} s (is that pool's controller running?)")

    def _admin(self, body: Message, what: str, parse: Callable[[Envelope], T], now_ns: int,
               timeout_s: float | None = None) -> Call[T]:
        wait_s = self.options.timeout_s if timeout_s is None else timeout_s
        idempotent = isinstance(body, (schema.ListModels, schema.GetModel, schema.GetStatus))
        return Call(body, what, now_ns, now_ns + int(wait_s * S), parse,
                    retry_ns=int(self.options.retry_s * S) if idempotent else 0)

    def uploading(self, model: str | os.PathLike | bytes, name: str | None, *, format: str | None = None,
                  input_shapes: Mapping | None = None, max_batch: int = 0, replace: bool = False,
                  chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> "Uploading":
        """An upload for a shell to drive (see `Uploading`). `model` is a path, read a chunk at
        a time, or the bytes; `name` defaults to the file's stem. An NNEF model (format "nnef",
        or a folder with graph.nnef, or a .nnef.tgz) is converted to ONNX first (client/nnef.py)."""
        name = upload_name(model, name, format)
        if format == nnef.FORMAT or (format is None and nnef.looks_like_nnef(model)):
            model, format = nnef.to_onnx(model), "onnx"  # converted here: the daemons serve ONNX
        if isinstance(model, (bytes, bytearray, memoryview)):
            source: Any = memoryview(model).cast("B")
            size = source.nbytes
        else:
            source = os.fspath(model)
            size = os.path.getsize(source)
        fields = dict(format=format or detect_format(model), input_shapes=input_shapes, max_batch=max_batch,
                      replace=replace)
        build_upload(name, b"", total_bytes=max(size, 1), **fields)  # refuse bad fields before reading anything
        return Uploading(self, name, source, size, fields, chunk_bytes)

    def _upload_call(self, body: schema.Upload, now_ns: int) -> Call[dict]:
        """One UPLOAD message: a chunk ({"received": bytes}) or the whole or last one (ModelInfo)."""
        name, last = body.name, not body.total_bytes or body.offset + len(body.blob) == body.total_bytes

        def parse(envelope: Envelope) -> dict:
            if not last:
                return parse_reply(envelope)
            self._inputs.pop(name, None)
            info = parse_upload_reply(envelope)
            self._learn(info)
            return info

        what = f"upload of {name!r}" if not body.total_bytes else f"upload of {name!r} at byte {body.offset}"
        wait_s = self.options.upload_timeout_s if last else self.options.timeout_s
        return self._admin(body, what, parse, now_ns, wait_s)

    def remove(self, name: str, now_ns: int) -> Call[None]:
        def parse(envelope: Envelope) -> None:
            self._inputs.pop(name, None)
            parse_remove_reply(envelope)

        return self._admin(build_remove(name), f"remove of {name!r}", parse, now_ns)

    def list_page(self, now_ns: int, prefix: str = "", after: str = "", limit: int = 0) -> Call[dict]:
        """One LIST page (see `build_list`); {"models", "total", "next"}."""
        def parse(envelope: Envelope) -> dict:
            page = parse_list_reply(envelope)
            for info in page["models"]:
                self._learn(info)
            return page

        return self._admin(build_list(prefix, after, limit), "list", parse, now_ns)

    def listing(self, prefix: str | None = None, limit: int = 0) -> "Listing":
        """Every model (whose name starts with `prefix`; at most `limit`, 0: all), page by page."""
        return Listing(self, prefix or "", limit)

    def model(self, name: str, now_ns: int, wait_until_ns: int | None = None) -> Call[dict]:
        """One model's ModelInfo; `wait_until_ns` bounds it by an infer's deadline."""
        def parse(envelope: Envelope) -> dict:
            info = parse_model_reply(envelope)
            self._learn(info)
            return info

        call = self._admin(build_model(name), f"look-up of {name!r}", parse, now_ns)
        if wait_until_ns is not None and wait_until_ns < call.wait_until_ns:
            call = dataclasses.replace(call, wait_until_ns=wait_until_ns)
        return call

    def status(self, now_ns: int, models_limit: int = schema.STATUS_MODELS) -> Call[dict]:
        return self._admin(build_status(models_limit), "status", parse_status_reply, now_ns)

    def cancel(self, request_id: int, now_ns: int) -> Call[bool]:
        return self._admin(build_cancel(request_id), f"cancel of request {request_id}", parse_cancel_reply, now_ns)

    def needs_signature(self, model: str, inputs: Any) -> bool:
        """True when `inputs` is a bare array and the model's input name is not known yet:
        the shell then runs `model()` (bounded by the infer's deadline) before `infer()`."""
        return not isinstance(inputs, Mapping) and model not in self._inputs

    def infer(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, deadline_ns: int, now_ns: int,
              priority: int = 0) -> Call[InferResult]:
        """`deadline_ns` from `deadline_ns()`; the client waits until it plus the grace."""
        names = self._inputs.get(model)
        if not isinstance(inputs, Mapping) and names is None:
            raise RequestError(Status.MODEL_NOT_FOUND, f"model {model!r} is not registered at {self.options.endpoint} "
                               "(or its inputs are not listed); pass {name: array}")
        body = build_infer(model, inputs, max(1, deadline_ns - now_ns), priority, names)

        def parse(envelope: Envelope) -> InferResult:
            try:
                return parse_infer_reply(envelope)
            except RequestError as exc:
                if exc.status in (Status.MODEL_NOT_FOUND, Status.BAD_INPUT):
                    self._inputs.pop(model, None)  # the model may have been replaced
                raise

        wait_until_ns = deadline_ns + int(self.options.grace_s * S)
        return Call(body, f"infer on {model!r}", now_ns, wait_until_ns, parse, slo_deadline_ns=deadline_ns,
                    retry_ns=int(self.options.retry_s * S))

    def _learn(self, info: Mapping) -> None:
        name, names = info.get("name"), input_names(info)
        if isinstance(name, str) and names:
            self._inputs[name] = names


class Uploading:
    """An upload, in one message or, for a model over `chunk_bytes`, in chunks, for a shell to
    drive::

        uploading = core.uploading(path, name)
        while (call := uploading.next_call(now_ns)) is not None:
            uploading.add(send_and_wait(call))
        uploading.info   # the model's ModelInfo; uploading.sent / uploading.total: progress

    A file is read one chunk at a time (its sha256 first, for the controller to check the whole),
    so neither this process nor the controller holds a large model in one piece.
    """

    def __init__(self, core: ClientCore, name: str, source: Any, size: int, fields: dict, chunk_bytes: int):
        self._core, self.name, self._source, self.total = core, name, source, size
        self._fields, self._chunk_bytes = fields, chunk_bytes
        self.sent = 0
        self.info: dict | None = None
        self._pending = 0  # bytes in the call out now
        self._sha256 = _sha256(self._read, size) if size > chunk_bytes else ""

    def next_call(self, now_ns: int) -> Call[dict] | None:
        """The next message's call, or None once the upload is answered."""
        if self.info is not None:
            return None
        if not self._sha256:  # small: the whole model in one message
            blob, chunk = self._read(0, self.total), {}
        else:
            blob = self._read(self.sent, min(self._chunk_bytes, self.total - self.sent))
            chunk = dict(offset=self.sent, total_bytes=self.total, sha256=self._sha256)
        self._pending = len(blob)
        return self._core._upload_call(build_upload(self.name, blob, **self._fields, **chunk), now_ns)

    def add(self, value: dict) -> None:
        """Take the reply (the value of `next_call`'s Call)."""
        self.sent += self._pending
        if self.sent == self.total:
            self.info = value
        elif value.get("received") != self.sent:
            raise ServerError(Status.INTERNAL, f"the controller acknowledged {value.get('received')!r} bytes of "
                                               f"{self.name!r}, {self.sent} were sent")

    def _read(self, offset: int, count: int) -> Any:
        if isinstance(self._source, memoryview):
            return self._source[offset:offset + count]
        with open(self._source, "rb") as fh:
            fh.seek(offset)
            return fh.read(count)


def _sha256(read: Callable[[int, int], Any], size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, 1 << 22):
        digest.update(read(offset, min(1 << 22, size - offset)))
    return digest.hexdigest()


class Listing:
    """A LIST paged to its end, for a shell to drive::

        listing = core.listing(prefix)
        while (call := listing.next_call(now_ns)) is not None:
            listing.add(send_and_wait(call))
        listing.models   # every ModelInfo, in name order, each once

    Pages are keyed by name (`after`), so models added or removed meanwhile never make another
    appear twice or be skipped; a controller whose `next` does not advance is an error, not a loop.
    """

    def __init__(self, core: ClientCore, prefix: str, limit: int = 0):
        self._core = core
        self.prefix = prefix
        self.limit = limit  # at most this many models in all (0: every one)
        self.models: list[dict] = []
        self._after: str | None = ""  # None once the last page came

    def next_call(self, now_ns: int) -> Call[dict] | None:
        """The next page's request, or None when the listing is complete."""
        wanted = self.limit - len(self.models) if self.limit else 0
        if self._after is None or (self.limit and wanted <= 0):
            return None
        return self._core.list_page(now_ns, self.prefix, self._after, min(wanted, schema.MAX_LIST_PAGE))

    def add(self, page: dict) -> None:
        """Take a page (the value of `next_call`'s Call)."""
        after = page["next"]
        if after and (after <= self._after or not page["models"]):
            raise ServerError(Status.INTERNAL, f"the controller's LIST did not advance past {self._after!r}")
        self.models.extend(page["models"][:self.limit - len(self.models)] if self.limit else page["models"])
        self._after = after or None
