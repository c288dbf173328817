"""`clockwork-bench codec`: today's codec against msgspec on the messages every request makes.

Issue 19 asks whether msgspec (msgpack with typed schemas, in C) would do the codec's work for
less CPU than msgpack plus the checks in common/checks.py. Both sides do the same work here:

- today: `codec.encode(body, ...)` of a schema dataclass, and `codec.decode(frames)`, which
  validates every header field (type, range, pattern) and every tensor's byte length;
- msgspec: the same header fields as `msgspec.Struct`s, their limits as `msgspec.Meta`
  constraints, tagged by `type`; decoding validates them in C, then the tensor frames are
  attached by the same `tensors.attach` (which checks their byte lengths).

The messages are the four a batch-1 request makes (INFER, EXEC, RESULT, INFER_REPLY), each with
one 3x64x64 float32 tensor, as in `clockwork-bench versus`. The verdict is a ratio of the two in
the same run, and what the controller spends on its codec per batch-1 request (decoding INFER
and RESULT, encoding EXEC and INFER_REPLY) either way.

    clockwork-bench codec [--repeat 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np

from clockwork.common import codec, schema
from clockwork.common.status import Status
from clockwork.common.tensors import DTYPE_SIZES, MAX_DIM, MAX_DIMS, MAX_NAME, MAX_TENSORS, Tensor, attach

Meta = msgspec.Meta
U64 = Annotated[int, Meta(ge=0)]  # msgpack holds no integer past 2**64 - 1
NS = Annotated[int, Meta(ge=0, le=schema.I64)]
SIGNED_NS = Annotated[int, Meta(ge=-schema.I64, le=schema.I64)]
MODEL_NAME = Annotated[str, Meta(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
DETAIL = Annotated[str, Meta(max_length=4096)]
DEVICE_ID = Annotated[int, Meta(ge=0, le=4095)]
BATCH = Annotated[int, Meta(ge=0, le=schema.MAX_BATCH)]
Dtype = Literal[tuple(DTYPE_SIZES)]  # type: ignore[valid-type]


class TensorSpec(msgspec.Struct, frozen=True):
    name: Annotated[str, Meta(max_length=MAX_NAME)]
    dtype: Dtype
    shape: Annotated[list[Annotated[int, Meta(ge=0, le=MAX_DIM)]], Meta(max_length=MAX_DIMS)]


TENSORS = Annotated[list[TensorSpec], Meta(max_length=MAX_TENSORS)]


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    msg_id: U64
    parent_id: U64 = 0
    sent_ns: SIGNED_NS = 0
    proto_version: Literal[1] = 1


class Infer(_Message, tag="infer", kw_only=True):
    model: MODEL_NAME
    slo_ns: Annotated[int, Meta(ge=1, le=schema.I64)]
    priority: Annotated[int, Meta(ge=0, le=schema.MAX_PRIORITY)] = 0
    tensors: TENSORS = []


class Exec(_Message, tag="exec", kw_only=True):
    device_id: DEVICE_ID
    model_id: MODEL_NAME
    batch_size: Annotated[int, Meta(ge=1, le=schema.MAX_BATCH)]
    earliest_ns: SIGNED_NS
    latest_ns: SIGNED_NS
    expected_ns: NS = 0
    tensors: TENSORS = []


class Result(_Message, tag="result", kw_only=True):
    action: Literal["load", "unload", "exec"]
    status: Status
    detail: DETAIL = ""
    device_id: DEVICE_ID
    model_id: MODEL_NAME
    begin_ns: SIGNED_NS = 0
    end_ns: SIGNED_NS = 0
    duration_ns: NS = 0
    batch_size: BATCH = 0
    device_ns: NS = 0
    sm_clock_mhz: Annotated[int, Meta(ge=0, le=100_000)] = 0
    disturbed: bool = False
    tensors: TENSORS = []


class InferReply(_Message, tag="infer_reply", kw_only=True):
    status: Status
    detail: DETAIL = ""
    queue_ns: NS = 0
    exec_ns: NS = 0
    total_ns: NS = 0
    lane_start_ns: NS = 0
    lane_end_ns: NS = 0
    batch_size: BATCH = 0
    batch_samples: BATCH = 0
    cold_start: bool = False
    worker: Annotated[str, Meta(max_length=256)] = ""
    tensors: TENSORS = []


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Union[Infer, Exec, Result, InferReply])
_STRUCTS = {"infer": Infer, "exec": Exec, "result": Result, "infer_reply": InferReply}


def to_struct(body: schema.Message, msg_id: int, parent_id: int, sent_ns: int) -> msgspec.Struct:
    """The msgspec twin of a schema message (for building the inputs, not timed)."""
    fields = {f.name: getattr(body, f.name) for f in dataclasses.fields(body) if f.name != "tensors"}
    fields = {k: (v.value if k == "action" else v) for k, v in fields.items()}
    specs = [TensorSpec(t.name, t.dtype, list(t.shape)) for t in body.tensors]
    return _STRUCTS[body.TYPE.value](msg_id=msg_id, parent_id=parent_id, sent_ns=sent_ns, tensors=specs, **fields)


def msgspec_encode(message: msgspec.Struct, data: Sequence[Any]) -> list:
    return [_ENCODER.encode(message), *data]


def msgspec_decode(frames: Sequence[Any]) -> tuple[msgspec.Struct, tuple[Tensor, ...]]:
    """Header validated by msgspec, tensors attached (and their byte lengths checked) as today."""
    try:
        message = _DECODER.decode(frames[0])
    except msgspec.ValidationError as exc:
        raise codec.BadMessage(Status.BAD_MESSAGE, str(exc)) from None
    specs = [(t.name, t.dtype, tuple(t.shape)) for t in message.tensors]
    if len(frames) != 1 + len(specs):
        raise codec.BadMessage(Status.BAD_MESSAGE, f"{len(frames)} frames, expected {1 + len(specs)}")
    return message, attach(specs, list(frames[1:]), "tensors")


def hot_messages() -> dict[str, schema.Message]:
    """The four messages of a batch-1 request, with the tensor `versus` sends."""
    image = Tensor.from_array("input", np.zeros((1, 3, 64, 64), np.float32))
    logits = Tensor.from_array("logits", np.zeros((1, 10), np.float32))
    return {
        "INFER": schema.Infer(model="cnn", slo_ns=15_000_000, tensors=(image,)),
        "EXEC": schema.Exec(device_id=0, model_id="cnn", batch_size=1, earliest_ns=10**12, latest_ns=10**12 + 5 * 10**6,
                            expected_ns=400_000, tensors=(image,)),
        "RESULT": schema.Result(action=schema.ActionKind.EXEC, status=Status.OK, device_id=0, model_id="cnn",
                                begin_ns=10**12, end_ns=10**12 + 400_000, duration_ns=400_000, batch_size=1,
                                tensors=(logits,)),
        "INFER_REPLY": schema.InferReply(status=Status.OK, queue_ns=150_000, exec_ns=400_000, total_ns=900_000,
                                         lane_start_ns=300_000, lane_end_ns=700_000, batch_size=1, batch_samples=1,
                                         worker="w1", tensors=(logits,)),
    }


IDS = (1 << 40, 1 << 40, 1 << 41)  # msg_id, parent_id, sent_ns as a running system has them


def per_call_us(fn: Callable[[], Any], repeat: int) -> float:
    """Median of five timings of `repeat` calls, in us per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter_ns() - t0) / repeat / 1e3)
    return sorted(runs)[2]


def measure(repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, body in hot_messages().items():
        frames = [bytes(f) for f in codec.encode(body, *IDS)]
        struct = to_struct(body, *IDS)
        data = [t.data for t in body.tensors]
        ours = [bytes(f) for f in msgspec_encode(struct, data)]
        out[name] = {
            "today_encode_us": per_call_us(lambda: codec.encode(body, *IDS), repeat),
            "today_decode_us": per_call_us(lambda: codec.decode(frames), repeat),
            "msgspec_encode_us": per_call_us(lambda: msgspec_encode(struct, data), repeat),
            "msgspec_decode_us": per_call_us(lambda: msgspec_decode(ours), repeat),
        }
    return out


def controller_per_request_us(figures: dict[str, dict[str, float]], side: str) -> float:
    """What the controller spends on its codec per batch-1 request: INFER and RESULT in, EXEC
    and INFER_REPLY out."""
    return (figures["INFER"][f"{side}_decode_us"] + figures["RESULT"][f"{side}_decode_us"]
            + figures["EXEC"][f"{side}_encode_us"] + figures["INFER_REPLY"][f"{side}_encode_us"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clockwork-bench codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20_000, help="calls per timing (five timings, median)")
    args = parser.parse_args(argv)
    figures = measure(args.repeat)
    print(f"{'message':12s} {'today enc':>10s} {'msgspec enc':>12s} {'today dec':>10s} {'msgspec dec':>12s}  (us per call)")
    for name, f in figures.items():
        print(f"{name:12s} {f['today_encode_us']:10.2f} {f['msgspec_encode_us']:12.2f} "
              f"{f['today_decode_us']:10.2f} {f['msgspec_decode_us']:12.2f}")
    today, theirs = controller_per_request_us(figures, "today"), controller_per_request_us(figures, "msgspec")
    print(f"the controller's codec per batch-1 request: today {today:.2f} us, msgspec {theirs:.2f} us "
          f"(msgspec / today = {theirs / today:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
