"""Every message of the protocol, its fields, units and limits. This module is the truth;
docs/protocol.md explains it with examples.

A message is frame 0, a msgpack map (the header), then raw frames: one per tensor, in the
order of the header's `tensors` list, then the `blob` frame for messages that carry one.
Header keys common to all messages: `type`, `msg_id`, `parent_id`, `sent_ns`, `proto_version`.
Times are integers in nanoseconds on the sender's monotonic clock unless a field says otherwise.
Unknown header keys are ignored; unknown types are answered with UNKNOWN_TYPE.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from clockwork.common import checks as c
from clockwork.common.frozen import one_step_init
from clockwork.common.status import Status
from clockwork.common.tensors import MAX_TENSORS, Tensor  # noqa: F401 (MAX_TENSORS is part of the schema)

PROTO_VERSION = 1
U64 = (1 << 64) - 1
I64 = (1 << 63) - 1
MAX_HEADER_BYTES = 64 * 1024
MAX_BATCH = 1024
MAX_PRIORITY = 9  # priority classes 0 (lowest) .. 9 (highest)
MAX_MODEL_BYTES = 2 * 1024**3
MAX_BUNDLE_PARTS = 1024  # messages in one bundle (see BUNDLE below)
# Models in one LIST or STATUS reply at most. A reply is one header of at most MAX_HEADER_BYTES,
# so the controller also stops a page early when the next model would not fit (a ModelInfo is
# ~350 bytes for a one-input model: a page holds ~180); callers page on with `after`.
MAX_LIST_PAGE = 1000
STATUS_MODELS = 50  # models a STATUS lists by default: the busiest, enough for a screen
STATUS_NAMES = 4  # names a STATUS lists per device (models held) and per model (its devices)

MODEL_NAME = c.text(128, r"[A-Za-z0-9][A-Za-z0-9._-]*")
DETAIL = c.text(4096)
NS = c.integer(0, I64)
SIGNED_NS = c.integer(-I64, I64)
DEVICE_ID = c.integer(0, 4095)
SHAPE_FIX = c.mapping(c.text(256), c.sequence(c.integer(1, 1 << 31), 8), MAX_TENSORS)
FORMATS = ("onnx", "profile")  # ONNX model bytes, or a JSON latency profile for emulation


class ActionKind(str, enum.Enum):
    """What a worker runs on its device's lanes, from a LOAD, UNLOAD or EXEC message (RESULT
    says which). One name per action, in code, logs and metrics alike: an execution is an EXEC."""

    LOAD = "load"
    UNLOAD = "unload"
    EXEC = "exec"

    def __str__(self) -> str:  # the value, in f-strings, logs and metric labels
        return self.value

    __format__ = str.__format__


class MsgType(str, enum.Enum):
    # client -> controller
    UPLOAD = "upload"
    REMOVE = "remove"
    LIST = "list"
    MODEL = "model"
    STATUS = "status"
    INFER = "infer"
    CANCEL = "cancel"
    # controller -> client
    REPLY = "reply"
    INFER_REPLY = "infer_reply"
    # worker -> controller
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    PREPARED = "prepared"
    RESULT = "result"
    # controller -> worker
    WELCOME = "welcome"
    HEARTBEAT_ACK = "heartbeat_ack"
    PREPARE = "prepare"
    LOAD = "load"
    UNLOAD = "unload"
    EXEC = "exec"
    DROP = "drop"
    # any direction: a message we could not accept
    ERROR = "error"
    # any direction: several messages in one ZeroMQ message (not a Message itself; see BUNDLE)
    BUNDLE = "bundle"


def f(check: c.Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a header field with its validator (and a default when it may be absent)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def tensors_field() -> Any:
    return field(default=(), metadata={"tensors": True})


def blob_field() -> Any:
    return field(default=b"", metadata={"blob": True})


class Message:
    """Base of every message body; `TYPE` names it on the wire."""

    TYPE: ClassVar[MsgType]
    build: ClassVar[Callable[..., Any]]  # the same as calling the class, cheaper (common/frozen.py)


# ---------------------------------------------------------------- client -> controller


@dataclass(frozen=True, kw_only=True)
class Upload(Message):
    """Register a model. `blob` is the ONNX file, or a JSON profile when format == "profile".

    A large model travels in chunks, in order, so that neither side holds it in one message:
    every chunk repeats the upload's fields with the whole model's `total_bytes` and `sha256`
    and where it starts (`offset`); each is answered {"received": bytes so far}, and the last
    as a whole upload is, once the bytes match their sha256. `total_bytes` 0: this message
    carries the whole model."""

    TYPE = MsgType.UPLOAD
    name: str = f(MODEL_NAME)
    format: str = f(c.one_of(*FORMATS), "onnx")
    input_shapes: dict = f(SHAPE_FIX, {})  # fixes for dynamic non-batch dims, without batch dim
    max_batch: int = f(c.integer(0, MAX_BATCH), 0)  # 0: the model's own limit, capped at 16
    replace: bool = f(c.boolean, False)
    offset: int = f(c.integer(0, MAX_MODEL_BYTES), 0)  # a chunk: where it starts in the model
    total_bytes: int = f(c.integer(0, MAX_MODEL_BYTES), 0)  # a chunk: the whole model's size (0: not chunked)
    sha256: str = f(c.text(64, r"[0-9a-f]{64}|"), "")  # a chunk: the whole model's, checked at the end
    blob: Any = blob_field()


@dataclass(frozen=True, kw_only=True)
class Remove(Message):
    TYPE = MsgType.REMOVE
    name: str = f(MODEL_NAME)


@dataclass(frozen=True, kw_only=True)
class ListModels(Message):
    """One page of the registered models, in name order. Thousands of ModelInfos do not fit one
    header, so the reply body is {"models": [ModelInfo, ...], "total": models matching `prefix`,
    "next": the `after` of the following page, "" on the last}."""

    TYPE = MsgType.LIST
    prefix: str = f(c.text(128), "")  # only names starting with this (case-sensitive, no wildcards)
    after: str = f(c.text(128), "")  # names sorting strictly after this: the previous page's `next`
    limit: int = f(c.integer(0, MAX_LIST_PAGE), 0)  # at most this many; 0: as many as fit one reply


@dataclass(frozen=True, kw_only=True)
class GetModel(Message):
    """One model's ModelInfo (the reply body), or MODEL_NOT_FOUND: a look-up whose cost does not
    grow with the number of models, for clients that need one signature."""

    TYPE = MsgType.MODEL
    name: str = f(MODEL_NAME)


@dataclass(frozen=True, kw_only=True)
class GetStatus(Message):
    """Workers, devices, the busiest models and the counters, bounded whatever the number of
    models: a device lists counts and at most STATUS_NAMES names, and `models` holds the
    `models_limit` busiest (queued + in flight, then answered, then name) of "models_total"."""

    TYPE = MsgType.STATUS
    models_limit: int = f(c.integer(0, MAX_LIST_PAGE), STATUS_MODELS)


@dataclass(frozen=True, kw_only=True)
class Infer(Message):
    """Run a model. The header's msg_id is the request id; tensors carry the batch dim first."""

    TYPE = MsgType.INFER
    model: str = f(MODEL_NAME)
    slo_ns: int = f(c.integer(1, I64))  # budget from the moment the controller receives it
    priority: int = f(c.integer(0, MAX_PRIORITY), 0)
    tensors: tuple[Tensor, ...] = tensors_field()
    # The last INFER_REPLY this client received, for the controller to time the way back to the
    # client, which it cannot see: that reply's request id (0: none) and when it arrived, on the
    # client's monotonic clock.
    last_reply_id: int = f(c.integer(0, U64), 0)
    last_reply_received_ns: int = f(NS, 0)


@dataclass(frozen=True, kw_only=True)
class Cancel(Message):
    TYPE = MsgType.CANCEL
    request_id: int = f(c.integer(0, U64))


# ---------------------------------------------------------------- controller -> client


@dataclass(frozen=True, kw_only=True)
class Reply(Message):
    """Answer to UPLOAD, REMOVE, LIST, MODEL, STATUS, CANCEL; `body` is documented per request."""

    TYPE = MsgType.REPLY
    status: Status = f(c.status)
    detail: str = f(DETAIL, "")
    body: dict = f(c.plain_data(top=dict), {})


@dataclass(frozen=True, kw_only=True)
class InferReply(Message):
    TYPE = MsgType.INFER_REPLY
    status: Status = f(c.status)
    detail: str = f(DETAIL, "")
    queue_ns: int = f(NS, 0)  # received -> its batch sent to a worker
    exec_ns: int = f(NS, 0)  # worker-measured execution of the batch
    total_ns: int = f(NS, 0)  # received -> reply sent, on the controller's clock
    # received -> the worker's lane started and ended the batch (its times translated to the
    # controller's clock), so that a reply tells where its time went hop by hop: the queue, the
    # hop to the lane, the execution, the way back. 0: not executed, or a controller that does not say.
    lane_start_ns: int = f(NS, 0)
    lane_end_ns: int = f(NS, 0)
    batch_size: int = f(c.integer(0, MAX_BATCH), 0)  # the padded size the batch ran at
    batch_samples: int = f(c.integer(0, MAX_BATCH), 0)  # the real samples in it, this request's among them
    cold_start: bool = f(c.boolean, False)  # the model had to be loaded for this request
    worker: str = f(c.text(256), "")
    tensors: tuple[Tensor, ...] = tensors_field()


# ---------------------------------------------------------------- worker -> controller

DEVICE = c.record(
    {
        "device_id": DEVICE_ID,
        "kind": c.text(128),  # e.g. "cpu-1core", "emulated-v100", "NVIDIA H200"
        "memory_bytes": c.integer(0, I64),
        "page_bytes": c.integer(1, I64),
    }
)


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """A worker announces itself and its devices. It holds nothing the controller did not ask
    for: a worker joining again releases its resident models itself first (a clean slate), so
    HELLO stays small however many models a host holds."""

    TYPE = MsgType.HELLO
    worker: str = f(c.text(256))
    runtime: str = f(c.one_of("onnxruntime", "tensorrt", "torch", "emulated"))
    formats: tuple = f(c.sequence(c.one_of(*FORMATS), 4))
    devices: tuple = f(c.sequence(DEVICE, 4096))
    # The host's boot id and the CPU cores its EXEC lanes hold to themselves: a controller on
    # the same host keeps off them (common/affinity.py). Empty: none, or not said.
    host: str = f(c.text(64), "")
    lane_cores: tuple = f(c.sequence(c.integer(0, 65535), 4096), ())


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """Sent by the worker from its lanes' loop; `lanes_alive` is false if a lane is stuck."""

    TYPE = MsgType.HEARTBEAT
    lanes_alive: bool = f(c.boolean, True)
    # How long before sending this the worker last received anything from the controller, on its
    # own clock (0: nothing yet). A worker whose heartbeats arrive but that hears nothing back (a
    # one-way cut) would otherwise stay in the plan and lose everything sent to it.
    unheard_ns: int = f(NS, 0)


PROFILE = c.mapping(c.integer(1, MAX_BATCH), NS, 64)  # batch size -> exec ns


@dataclass(frozen=True, kw_only=True)
class Prepared(Message):
    """Result of PREPARE: the model is held in host memory and was profiled."""

    TYPE = MsgType.PREPARED
    model_id: str = f(MODEL_NAME)
    status: Status = f(c.status)
    detail: str = f(DETAIL, "")
    weights_bytes: int = f(c.integer(0, I64), 0)
    load_ns: int = f(NS, 0)
    exec_ns: dict = f(PROFILE, {})
    max_batch: int = f(c.integer(0, MAX_BATCH), 0)


@dataclass(frozen=True, kw_only=True)
class Result(Message):
    """Outcome of a LOAD, UNLOAD or EXEC action; parent_id is the action's msg_id.

    begin_ns/end_ns are on the controller's clock (translated by the worker's skew estimate);
    duration_ns is measured locally and is exact.
    """

    TYPE = MsgType.RESULT
    action: ActionKind = f(c.member(ActionKind))
    status: Status = f(c.status)
    detail: str = f(DETAIL, "")
    device_id: int = f(DEVICE_ID)
    model_id: str = f(MODEL_NAME)
    begin_ns: int = f(SIGNED_NS, 0)
    end_ns: int = f(SIGNED_NS, 0)
    duration_ns: int = f(NS, 0)
    batch_size: int = f(c.integer(0, MAX_BATCH), 0)
    device_ns: int = f(NS, 0)  # the device's own timing of an EXEC (CUDA events); 0: none
    sm_clock_mhz: int = f(c.integer(0, 100_000), 0)  # GPU SM clock after an EXEC; 0: unknown
    # Other work (a TensorRT engine build) shared the device during this EXEC: its duration is
    # not the model's alone, so the controller's latency model leaves it out.
    disturbed: bool = f(c.boolean, False)
    tensors: tuple[Tensor, ...] = tensors_field()


# ---------------------------------------------------------------- controller -> worker


@dataclass(frozen=True, kw_only=True)
class Welcome(Message):
    """The controller accepts a HELLO; the worker may start heartbeating."""

    TYPE = MsgType.WELCOME
    heartbeat_interval_ns: int = f(c.integer(1_000_000, I64), 200_000_000)
    # The controller host's boot id (as HELLO's `host`): a worker on the same host reads the
    # same monotonic clock, and needs no skew estimate (common/clock.SkewEstimator.same_clock).
    host: str = f(c.text(64), "")


@dataclass(frozen=True, kw_only=True)
class HeartbeatAck(Message):
    """Echo of a heartbeat; with the header's sent_ns it gives the worker one skew sample."""

    TYPE = MsgType.HEARTBEAT_ACK
    echo_sent_ns: int = f(SIGNED_NS)


@dataclass(frozen=True, kw_only=True)
class Prepare(Message):
    TYPE = MsgType.PREPARE
    model_id: str = f(MODEL_NAME)
    format: str = f(c.one_of(*FORMATS), "onnx")
    input_shapes: dict = f(SHAPE_FIX, {})
    max_batch: int = f(c.integer(1, MAX_BATCH), 16)
    sha256: str = f(c.text(64, r"[0-9a-f]{64}|"), "")  # of the bytes, as registered ("": not checked)
    blob: Any = blob_field()


WINDOW_FIELDS = ("earliest_ns", "latest_ns")


@dataclass(frozen=True, kw_only=True)
class Load(Message):
    TYPE = MsgType.LOAD
    ACTION = ActionKind.LOAD
    device_id: int = f(DEVICE_ID)
    model_id: str = f(MODEL_NAME)
    earliest_ns: int = f(SIGNED_NS)  # window on the controller's clock
    latest_ns: int = f(SIGNED_NS)
    expected_ns: int = f(NS, 0)  # the controller's predicted duration


@dataclass(frozen=True, kw_only=True)
class Unload(Message):
    TYPE = MsgType.UNLOAD
    ACTION = ActionKind.UNLOAD
    device_id: int = f(DEVICE_ID)
    model_id: str = f(MODEL_NAME)
    earliest_ns: int = f(SIGNED_NS)
    latest_ns: int = f(SIGNED_NS)


@dataclass(frozen=True, kw_only=True)
class Exec(Message):
    """Run a batch; the tensors hold the real samples, the worker pads up to batch_size."""

    TYPE = MsgType.EXEC
    ACTION = ActionKind.EXEC
    device_id: int = f(DEVICE_ID)
    model_id: str = f(MODEL_NAME)
    batch_size: int = f(c.integer(1, MAX_BATCH))
    earliest_ns: int = f(SIGNED_NS)
    latest_ns: int = f(SIGNED_NS)
    expected_ns: int = f(NS, 0)
    tensors: tuple[Tensor, ...] = tensors_field()


@dataclass(frozen=True, kw_only=True)
class Drop(Message):
    """Forget a prepared model (it is unloaded everywhere first)."""

    TYPE = MsgType.DROP
    model_id: str = f(MODEL_NAME)


# ---------------------------------------------------------------- any direction


@dataclass(frozen=True, kw_only=True)
class Error(Message):
    TYPE = MsgType.ERROR
    status: Status = f(c.status)
    detail: str = f(DETAIL, "")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE.value: cls
    for cls in (
        Upload, Remove, ListModels, GetModel, GetStatus, Infer, Cancel, Reply, InferReply,
        Hello, Heartbeat, Prepared, Result,
        Welcome, HeartbeatAck, Prepare, Load, Unload, Exec, Drop, Error,
    )
}

for _cls in MESSAGE_TYPES.values():  # each built in one step, not field by field (common/frozen.py)
    one_step_init(_cls)


# ---------------------------------------------------------------- bundles

# A bundle carries several complete messages in one ZeroMQ message, so a sender with many
# messages for one peer at once (a load generator's due requests, a batch's replies) pays the
# per-message cost of ZeroMQ and of the receiver's loop once. Frame 0 is the map
# {"type": "bundle", "parts": [n1, n2, ...], "proto_version": 1}; then the first message's n1
# frames (its header first), the second's n2, and so on. A part is never itself a bundle.
# Every part is validated and answered on its own, so one bad part spoils only itself.
MAX_PART_FRAMES = MAX_TENSORS + 2  # header, tensors, blob


@dataclass(frozen=True)
class Envelope:
    """A decoded message with its header ids."""

    body: Message
    msg_id: int
    parent_id: int = 0
    sent_ns: int = 0
