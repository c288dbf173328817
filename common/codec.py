"""Pure codec: `encode(body, msg_id, parent_id, sent_ns) -> frames` and `decode(frames) -> Envelope`;
`bundle` and `split` put several messages in one ZeroMQ message and take them apart again.

No sockets here, so round-trip and fuzz tests call it directly. `decode` trusts nothing:
header size, frame count, every field's type and range, and every tensor's byte length are
checked, and any violation raises `BadMessage` with a reason code.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Iterator, Sequence

import msgpack

from clockwork.common import schema
from clockwork.common.checks import BadMessage, integer
from clockwork.common.schema import Envelope, Message
from clockwork.common.status import Status
from clockwork.common.tensors import attach, read_specs

_U64 = integer(0, schema.U64)
_SIGNED = integer(-schema.I64, schema.I64)


@dataclasses.dataclass(frozen=True)
class _Plan:
    cls: type
    header_fields: tuple  # (name, check, required)
    tensors: str | None  # the tensors field's name, if any
    blob: str | None  # the blob field's name, if any


@lru_cache(maxsize=None)
def _plan(cls: type) -> _Plan:
    header, tensors, blob = [], None, None
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("tensors"):
            tensors = fld.name
        elif fld.metadata.get("blob"):
            blob = fld.name
        else:
            required = fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING
            header.append((fld.name, fld.metadata["check"], required))
    return _Plan(cls, tuple(header), tensors, blob)


def encode(body: Message, msg_id: int, parent_id: int = 0, sent_ns: int = 0) -> list:
    """Frames for one message: a msgpack header, then tensor data, then the blob. Raises
    BadMessage(TOO_LARGE) for a header over MAX_HEADER_BYTES, which no peer would decode."""
    plan = _plan(type(body))
    header: dict[str, Any] = {
        "type": body.TYPE.value,
        "msg_id": msg_id,
        "parent_id": parent_id,
        "sent_ns": sent_ns,
        "proto_version": schema.PROTO_VERSION,
    }
    for name, _check, _required in plan.header_fields:
        header[name] = getattr(body, name)
    frames: list = [b""]
    if plan.tensors:
        tensors = getattr(body, plan.tensors)
        header["tensors"] = [t.header() for t in tensors]
        frames.extend(t.data for t in tensors)
    if plan.blob:
        frames.append(getattr(body, plan.blob))
    frames[0] = msgpack.packb(header, use_bin_type=True)
    if len(frames[0]) > schema.MAX_HEADER_BYTES:  # refused here rather than by the receiver's decode
        raise BadMessage(Status.TOO_LARGE, f"a {body.TYPE.value} header of {len(frames[0])} bytes exceeds the "
                                           f"{schema.MAX_HEADER_BYTES}-byte header limit")
    return frames


def decode(frames: Sequence[Any], header: dict | None = None) -> Envelope:
    """Validate and decode; frames are bytes-like (bytes, memoryview of a zmq frame). `header`:
    frame 0 already unpacked by `split` or `peek_map` (it is validated here all the same)."""
    if not frames:
        raise BadMessage(Status.BAD_MESSAGE, "empty message")
    if header is None:
        header = _unpack_header(frames[0])
    if header.get("type") == schema.MsgType.BUNDLE.value:
        raise BadMessage(Status.BAD_MESSAGE, "a bundle is not one message (and bundles do not nest)")
    for key in ("type", "msg_id"):
        if key not in header:
            raise BadMessage(Status.BAD_MESSAGE, f"header has no {key!r}")
    msg_id = _U64(header["msg_id"], "msg_id")
    parent_id = _U64(header.get("parent_id", 0), "parent_id")
    sent_ns = _SIGNED(header.get("sent_ns", 0), "sent_ns")
    _check_version(header)
    cls = schema.MESSAGE_TYPES.get(header["type"]) if isinstance(header["type"], str) else None
    if cls is None:
        raise BadMessage(Status.UNKNOWN_TYPE, f"unknown message type {str(header['type'])[:64]!r}")
    body = _body(_plan(cls), header, frames)
    return Envelope(body, msg_id, parent_id, sent_ns)


def _check_version(header: dict) -> None:
    """Refuse another protocol version, except in an ERROR: it is how a peer of another version
    says it refused us (its two fields, status and detail, are the same in every version)."""
    version = header.get("proto_version", schema.PROTO_VERSION)
    if version != schema.PROTO_VERSION and header["type"] != schema.MsgType.ERROR.value:
        raise BadMessage(Status.UNSUPPORTED_VERSION, f"protocol version {version!r}, expected {schema.PROTO_VERSION}")


def _unpack_header(frame: Any) -> dict:
    raw = memoryview(frame)
    if raw.nbytes > schema.MAX_HEADER_BYTES:
        raise BadMessage(Status.BAD_MESSAGE, f"header of {raw.nbytes} bytes exceeds {schema.MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same here
        raise BadMessage(Status.BAD_MESSAGE, f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise BadMessage(Status.BAD_MESSAGE, "header is not a map")
    return header


def _body(plan: _Plan, header: dict, frames: Sequence[Any]) -> Message:
    values: dict[str, Any] = {}
    for name, check, required in plan.header_fields:
        if name in header:
            values[name] = check(header[name], name)
        elif required:
            raise BadMessage(Status.BAD_MESSAGE, f"{plan.cls.TYPE.value}: missing field {name!r}")
    specs: list = []
    if plan.tensors:
        specs = read_specs(header.get("tensors", []))
    expected = 1 + len(specs) + (1 if plan.blob else 0)
    if len(frames) != expected:
        raise BadMessage(Status.BAD_MESSAGE, f"{plan.cls.TYPE.value}: {len(frames)} frames, expected {expected}")
    if plan.tensors:
        values[plan.tensors] = attach(specs, frames[1 : 1 + len(specs)], "tensors")
    if plan.blob:
        values[plan.blob] = memoryview(frames[-1])
    return plan.cls(**values)


def bundle(messages: Sequence[list]) -> list:
    """The frames of one ZeroMQ message carrying `messages` (each a message's frames, as
    `encode` makes them): the message itself when there is one, else a bundle (schema.BUNDLE)."""
    if len(messages) == 1:
        return messages[0]
    if not 1 < len(messages) <= schema.MAX_BUNDLE_PARTS:
        raise ValueError(f"a bundle holds 1 to {schema.MAX_BUNDLE_PARTS} messages, not {len(messages)}")
    frames = [bundle_header([len(m) for m in messages])]
    for message in messages:
        frames.extend(message)
    return frames


def bundles(messages: Sequence[list]) -> Iterator[list]:
    """The ZeroMQ messages that carry `messages` in order: one `bundle` per MAX_BUNDLE_PARTS."""
    for at in range(0, len(messages), schema.MAX_BUNDLE_PARTS):
        yield bundle(messages[at:at + schema.MAX_BUNDLE_PARTS])


def bundle_header(counts: list[int]) -> bytes:
    """Frame 0 of a bundle whose messages have `counts` frames each (for senders that lay the
    frames out themselves, as the load generator does)."""
    return msgpack.packb({"type": schema.MsgType.BUNDLE.value, "parts": counts,
                          "proto_version": schema.PROTO_VERSION}, use_bin_type=True)


def split(frames: Sequence[Any]) -> list[tuple[dict | None, Sequence[Any]]]:
    """The messages in one ZeroMQ message (itself, or a bundle's parts), each as (its header
    map, unvalidated, or None where unreadable; its frames), ready for `decode(frames, header)`.
    Raises BadMessage when a bundle's part counts do not describe its frames."""
    head = peek_map(frames)
    if head is None or head.get("type") != schema.MsgType.BUNDLE.value:
        return [(head, frames)]
    _check_version(head)
    counts = head.get("parts")
    if not isinstance(counts, list) or not 1 <= len(counts) <= schema.MAX_BUNDLE_PARTS:
        raise BadMessage(Status.BAD_MESSAGE, f"bundle: parts must list 1 to {schema.MAX_BUNDLE_PARTS} frame counts")
    parts, at = [], 1
    for n in counts:
        if type(n) is not int or not 1 <= n <= schema.MAX_PART_FRAMES:
            raise BadMessage(Status.BAD_MESSAGE, f"bundle: a part of {str(n)[:32]} frames "
                                                 f"(1 to {schema.MAX_PART_FRAMES})")
        part = frames[at:at + n]
        at += n
        parts.append((peek_map(part), part))
    if at != len(frames):
        raise BadMessage(Status.BAD_MESSAGE, f"bundle: parts count {at - 1} frames, the message has {len(frames) - 1}")
    return parts


def peek_map(frames: Sequence[Any]) -> dict | None:
    """The header as a plain map, unvalidated (every value must be type-checked by the caller),
    or None: for deciding cheaply about a message before paying for a full decode."""
    try:
        return _unpack_header(frames[0])
    except (BadMessage, IndexError, TypeError):
        return None


def peek_header(frames: Sequence[Any]) -> tuple[str | None, int]:
    """Best-effort (type, msg_id) of a message that failed to decode, so the error reply can
    name it; (None, 0) where even that is unreadable."""
    try:
        header = _unpack_header(frames[0])
    except (BadMessage, IndexError, TypeError):
        return None, 0
    msg_type = header.get("type")
    try:
        msg_id = _U64(header.get("msg_id", 0), "msg_id")
    except BadMessage:
        msg_id = 0
    return (msg_type if isinstance(msg_type, str) else None), msg_id
