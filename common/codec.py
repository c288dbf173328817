"""Pure codec, the one implementation of the wire format (docs/protocol.md):

- `encode(body, msg_id, parent_id, sent_ns) -> frames` and `decode(frames) -> Envelope`;
- `bundle` and `split` put several messages in one ZeroMQ message and take them apart again
  (`messages` too, for a reader that decodes every part: each header is read once);
- `peek_map` and `peek_id` read a header before (or instead of) a full decode;
- `Template`: one message encoded once and sent many times with new ids, for the load
  generator's tens of thousands of requests a second.

No sockets here, so round-trip and fuzz tests call it directly. `decode` trusts nothing:
header size, frame count, every field's type and range, and every tensor's byte length are
checked, and any violation raises `BadMessage` with a reason code.

Two ways to one result. Each message type whose fields all have a msgspec type (checks.wire_type:
every type but HELLO and REPLY, whose nested records and free-form bodies only the checks read)
gets a msgspec Struct of its header, derived here from the schema; `decode` reads a header with
them first, in C (RESULT: 8.8 -> 3.6 us). When msgspec refuses one, the checks read it again and
say what is wrong, with the same reason code and field path as ever (or accept what msgspec
would not: a protocol version of 1.0). Encoding packs the same map with msgspec's encoder.
"""

from __future__ import annotations

import dataclasses
import struct
from functools import lru_cache
from typing import Any, Callable, Iterator, Literal, Sequence, Union

import msgspec

from clockwork.common import schema
from clockwork.common.checks import BadMessage, integer, wire_type
from clockwork.common.schema import Envelope, Message
from clockwork.common.status import Status
from clockwork.common.tensors import SPECS_WIRE, attach, read_specs

_U64 = integer(0, schema.U64)
_SIGNED = integer(-schema.I64, schema.I64)
_ENCODER = msgspec.msgpack.Encoder()
_read_map = msgspec.msgpack.Decoder().decode  # any msgpack, unvalidated: twice as fast as msgpack.unpackb
# Plain strings: reading an enum member's value costs 0.3 us, paid here once and not per message.
_BUNDLE = schema.MsgType.BUNDLE.value
_ERROR = schema.MsgType.ERROR.value


@dataclasses.dataclass(frozen=True)
class _Plan:
    cls: type
    type_name: str  # on the wire
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
    return _Plan(cls, cls.TYPE.value, tuple(header), tensors, blob)


def encode(body: Message, msg_id: int, parent_id: int = 0, sent_ns: int = 0) -> list:
    """Frames for one message: a msgpack header, then tensor data, then the blob. Raises
    BadMessage(TOO_LARGE) for a header over MAX_HEADER_BYTES, which no peer would decode."""
    plan = _plan(type(body))
    header: dict[str, Any] = {
        "type": plan.type_name,
        "msg_id": msg_id,
        "parent_id": parent_id,
        "sent_ns": sent_ns,
        "proto_version": schema.PROTO_VERSION,
    }
    header.update(vars(body))  # every field, in order (a body has no other attributes)
    frames: list = [b""]
    if plan.tensors:
        tensors = header.pop(plan.tensors)
        header["tensors"] = [t.header() for t in tensors]
        frames.extend(t.data for t in tensors)
    if plan.blob:
        frames.append(header.pop(plan.blob))
    frames[0] = _ENCODER.encode(header)
    if len(frames[0]) > schema.MAX_HEADER_BYTES:  # refused here rather than by the receiver's decode
        raise BadMessage(Status.TOO_LARGE, f"a {body.TYPE.value} header of {len(frames[0])} bytes exceeds the "
                                           f"{schema.MAX_HEADER_BYTES}-byte header limit")
    return frames


def decode(frames: Sequence[Any], header: dict | Header | None = None, *, header_only: bool = False) -> Envelope:
    """Validate and decode; frames are bytes-like (bytes, memoryview of a zmq frame). `header`:
    frame 0 already unpacked by `split` or `peek_map` (it is validated here all the same), or
    read by `messages` (then it is not read again). `header_only`: `frames` is frame 0 alone,
    and the body comes without its tensors and blob (for a reader that keeps only headers, as
    the load generator does with its replies)."""
    if not frames:
        raise BadMessage(Status.BAD_MESSAGE, "empty message")
    if isinstance(header, Header):
        return _envelope(header, frames, header_only)
    envelope = _decode_fast(frames, header_only)
    return envelope if envelope is not None else decode_checked(frames, header, header_only)


def decode_checked(frames: Sequence[Any], header: dict | None = None, header_only: bool = False) -> Envelope:
    """`decode` by the checks alone, field by field: the reference reader, which tells what is
    wrong with a message msgspec refused (and what `clockwork-bench codec` weighs it against)."""
    if header is None:
        header = _unpack_header(frames[0])
    if header.get("type") == _BUNDLE:
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
    body = _body(_plan(cls), header, None if header_only else frames)
    return Envelope(body, msg_id, parent_id, sent_ns)


def _check_version(header: dict) -> None:
    """Refuse another protocol version, except in an ERROR: it is how a peer of another version
    says it refused us (its two fields, status and detail, are the same in every version)."""
    version = header.get("proto_version", schema.PROTO_VERSION)
    if version != schema.PROTO_VERSION and header["type"] != _ERROR:
        raise BadMessage(Status.UNSUPPORTED_VERSION, f"protocol version {version!r}, expected {schema.PROTO_VERSION}")


def _unpack_header(frame: Any, max_bytes: int | None = schema.MAX_HEADER_BYTES) -> dict:
    size = memoryview(frame).nbytes
    if max_bytes is not None and size > max_bytes:
        raise BadMessage(Status.BAD_MESSAGE, f"header of {size} bytes exceeds {max_bytes}")
    try:
        header = _read_map(frame)
    except Exception as exc:  # a decoder raises many types for garbage; all mean the same here
        raise BadMessage(Status.BAD_MESSAGE, f"header is not msgpack: {type(exc).__name__}") from None
    if type(header) is not dict:
        raise BadMessage(Status.BAD_MESSAGE, "header is not a map")
    return header


def _body(plan: _Plan, header: dict, frames: Sequence[Any] | None) -> Message:
    """The body from its header fields and, unless `frames` is None, its tensors and blob."""
    values: dict[str, Any] = {}
    for name, check, required in plan.header_fields:
        if name in header:
            values[name] = check(header[name], name)
        elif required:
            raise BadMessage(Status.BAD_MESSAGE, f"{plan.cls.TYPE.value}: missing field {name!r}")
    if frames is None:
        return plan.cls(**values)
    specs = read_specs(header.get("tensors", [])) if plan.tensors else []
    tensors, blob = _payload(plan, specs, frames)
    if plan.tensors:
        values[plan.tensors] = tensors
    if plan.blob:
        values[plan.blob] = blob
    return plan.cls(**values)


def _payload(plan: _Plan, specs: list, frames: Sequence[Any]) -> tuple[tuple, Any]:
    """The tensors (their byte lengths checked against `specs`) and the blob from the frames
    after the header, which must be exactly as many as the message needs."""
    expected = 1 + len(specs) + (1 if plan.blob else 0)
    if len(frames) != expected:
        raise BadMessage(Status.BAD_MESSAGE, f"{plan.type_name}: {len(frames)} frames, expected {expected}")
    tensors = attach(specs, frames[1 : 1 + len(specs)], "tensors") if specs else ()
    return tensors, memoryview(frames[-1]) if plan.blob else b""


# ----------------------------------------------------------------------------- the fast path

_ENVELOPE_WIRE = [
    ("msg_id", _U64.wire),
    ("parent_id", _U64.wire, 0),
    ("sent_ns", _SIGNED.wire, 0),
    ("proto_version", Literal[schema.PROTO_VERSION], schema.PROTO_VERSION),
]


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """A header as the fast reader read it (`messages`), one Struct type per message type.
    `get` answers as a header map's does, so that a reader of headers (peek_id, the
    controller's shedding) takes either."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.__struct_config__.tag if key == "type" else getattr(self, key, default)


def _header_struct(plan: _Plan) -> type | None:
    """The msgspec Struct of this message type's header (tagged by its `type`), or None where a
    field has no msgspec type."""
    fields: list[tuple] = list(_ENVELOPE_WIRE)
    declared = {fld.name: fld for fld in dataclasses.fields(plan.cls)}
    for name, check, required in plan.header_fields:
        wire = wire_type(check)
        if wire is None:
            return None
        if required:
            fields.append((name, wire))
        else:
            fld = declared[name]
            default = (msgspec.field(default_factory=fld.default_factory)
                       if fld.default_factory is not dataclasses.MISSING else fld.default)
            fields.append((name, wire, default))
    if plan.tensors:
        fields.append(("tensors", SPECS_WIRE, ()))
    return msgspec.defstruct(f"{plan.cls.__name__}Header", fields, bases=(Header,), kw_only=True, frozen=True,
                             tag=plan.type_name, tag_field="type")


def _builder(plan: _Plan) -> Callable[[Any, tuple, Any], Message]:
    """`build(header, tensors, blob)`: the body, every field set from the decoded header as the
    dataclass's __init__ would set it, without calling it: the one-step __init__
    (common/frozen.py) parses a keyword per field, which a decoded header does not need (RESULT,
    one timing on a noisy host: 0.79-1.13 us through __init__, 0.58-0.62 us this way)."""
    items = [f"{name!r}: h.{name}" for name, _check, _required in plan.header_fields]
    items += [f"{plan.tensors!r}: tensors"] if plan.tensors else []
    items += [f"{plan.blob!r}: blob"] if plan.blob else []
    source = (f"def build(h, tensors, blob):\n"
              f"    body = new(cls)\n"
              f"    set_attribute(body, '__dict__', {{{', '.join(items)}}})\n"
              f"    return body\n")
    namespace = {"new": object.__new__, "cls": plan.cls, "set_attribute": object.__setattr__}
    exec(source, namespace)  # noqa: S102 (the source is made here, from the schema's field names)
    return namespace["build"]


def _fast_paths() -> tuple[msgspec.msgpack.Decoder, dict[type, tuple[_Plan, Callable]]]:
    paths = {}
    for cls in schema.MESSAGE_TYPES.values():
        plan = _plan(cls)
        struct_type = _header_struct(plan)
        if struct_type is not None:
            paths[struct_type] = (plan, _builder(plan))
    return msgspec.msgpack.Decoder(Union[tuple(paths)]), paths  # type: ignore[return-value]


_FAST_DECODER, _FAST_PATHS = _fast_paths()


def _decode_fast(frames: Sequence[Any], header_only: bool) -> Envelope | None:
    """The message read by its header Struct, or None where msgspec refuses it (or it has no
    Struct); a tensor's byte length or the frame count wrong raises as the slow path would."""
    header = _read_fast(frames[0])
    return None if header is None else _envelope(header, frames, header_only)


def _read_fast(frame: Any) -> Header | None:
    """Frame 0 read by the header Structs, or None where msgspec refuses it."""
    try:
        if memoryview(frame).nbytes > schema.MAX_HEADER_BYTES:
            return None
        return _FAST_DECODER.decode(frame)
    except (msgspec.MsgspecError, TypeError, RecursionError):  # RecursionError: nesting past msgspec's depth
        return None


def _envelope(header: Header, frames: Sequence[Any], header_only: bool) -> Envelope:
    plan, build = _FAST_PATHS[type(header)]
    if header_only:
        tensors, blob = (), b""
    else:
        specs = [(t.name, t.dtype, t.shape) for t in header.tensors] if plan.tensors else []
        tensors, blob = _payload(plan, specs, frames)
    return Envelope(build(header, tensors, blob), header.msg_id, header.parent_id, header.sent_ns)


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
    return _ENCODER.encode({"type": _BUNDLE, "parts": counts, "proto_version": schema.PROTO_VERSION})


def split(frames: Sequence[Any]) -> Iterator[tuple[dict | None, Sequence[Any]]]:
    """The messages in one ZeroMQ message (itself, or a bundle's parts), each as (its header
    map, unvalidated, or None where unreadable; its frames), ready for `decode(frames, header)`.
    Raises BadMessage, here rather than while iterating, when a bundle's part counts do not
    describe its frames. Each part's header is unpacked as the iteration reaches it, so a reader
    of thousands of replies a second (the load generator) holds one part at a time."""
    return _split(frames, _unpack_header)


def _split(frames: Sequence[Any], read: Callable[[Any], Any]) -> Iterator[tuple[Any, Sequence[Any]]]:
    """`split`, each bundle part's header read by `read`."""
    head = peek_map(frames)
    if head is None or head.get("type") != _BUNDLE:
        return iter(((head, frames),))
    _check_version(head)
    counts = head.get("parts")
    if type(counts) is not list or not 1 <= len(counts) <= schema.MAX_BUNDLE_PARTS:
        raise BadMessage(Status.BAD_MESSAGE, f"bundle: parts must list 1 to {schema.MAX_BUNDLE_PARTS} frame counts")
    total, max_frames = 1, schema.MAX_PART_FRAMES
    for n in counts:
        if type(n) is not int or not 1 <= n <= max_frames:
            raise BadMessage(Status.BAD_MESSAGE, f"bundle: a part of {str(n)[:32]} frames (1 to {max_frames})")
        total += n
    if total != len(frames):
        raise BadMessage(Status.BAD_MESSAGE, f"bundle: parts count {total - 1} frames, the message has {len(frames) - 1}")
    return _parts(frames, counts, read)


def messages(frames: Sequence[Any]) -> Iterator[tuple[dict | Header | None, Sequence[Any]]]:
    """`split` for a reader that decodes every message it takes apart (the daemons, the client):
    a header the fast reader takes comes as its Struct, from which `decode` builds the message
    without reading the header again (`get` reads its fields as a header map's would); any
    other as `split` gives it. Each header was read twice before, a generic map and then the
    Struct: 10,600 of a worker's 247,500 instructions an EXEC."""
    header = _read_fast(frames[0]) if frames else None
    if header is not None:  # a bundle's header is no message's: the fast reader refuses it
        return iter(((header, frames),))
    return _split(frames, _read_part)


def _read_part(frame: Any) -> Any:
    """A bundle part's header for `messages`: its Struct, else its map (raises as `split`'s do)."""
    header = _read_fast(frame)
    return header if header is not None else _unpack_header(frame)


def _parts(frames: Sequence[Any], counts: list[int],
           read: Callable[[Any], Any]) -> Iterator[tuple[Any, Sequence[Any]]]:
    at = 1
    for n in counts:
        part = frames[at:at + n]
        at += n
        try:
            yield read(part[0]), part
        except (BadMessage, TypeError):  # as peek_map: unreadable, left to decode to refuse
            yield None, part


def peek_map(frames: Sequence[Any], max_bytes: int | None = schema.MAX_HEADER_BYTES) -> dict | None:
    """The header as a plain map, unvalidated (read its fields with `peek_id`, or type-check
    them), or None where unreadable: for deciding about a message before paying for a full
    decode, or for naming the message that a failed decode refuses. `max_bytes=None` reads a
    header of any size: a client uses it to name the request whose reply was too large."""
    try:
        return _unpack_header(frames[0], max_bytes)
    except (BadMessage, IndexError, TypeError):
        return None


def peek_id(header: dict | Header | None, key: str) -> int:
    """The id field `key` ("msg_id", "parent_id") of an unvalidated header (or one `messages`
    read), 0 where the header or the field is missing or not a uint64."""
    value = header.get(key, 0) if header is not None else 0
    return value if type(value) is int and 0 <= value <= schema.U64 else 0


# ----------------------------------------------------------------------------- templates

_FIXED_MIN = 1 << 32  # msgpack packs an int as the 9-byte uint64 0xcf + 8 bytes from here up
_MARK = 0x7EADBEEF5A5A0001  # placeholders from here on: distinctive, in [2**32, 2**63)
_ENVELOPE_IDS = {"msg_id": schema.U64, "parent_id": schema.U64, "sent_ns": schema.I64}


class Template:
    """One message encoded once, for sending many times with new values of some of its integer
    fields (by default the header's msg_id and sent_ns): the load generator's fast path, and the
    echo server's.

    msgpack writes every integer in [2**32, 2**64) as 0xcf + 8 big-endian bytes, so a header
    packed with placeholders there takes any other such value by splicing, and the result is
    byte-identical to `encode(body, ...)`. Values outside that range (a small id, a clock under
    4.3 s since boot, a 0 for "none") are encoded in full instead.

        tpl = Template(build_infer("m", inputs, slo_ns))
        sock.send_multipart([tpl.header(msg_id, now_ns), *tpl.tail])
    """

    def __init__(self, body: Message, spliced: tuple[str, ...] = ("msg_id", "sent_ns"), **fixed: int):
        """`spliced`: the fields that `header()` sets, in header order (msg_id, parent_id,
        sent_ns, then the body's integer fields in their order); `fixed`: the value of another
        of msg_id, parent_id and sent_ns (default 0)."""
        ints = {f.name for f in dataclasses.fields(body) if type(getattr(body, f.name)) is int}
        if (not spliced or len(set(spliced)) != len(spliced) or not {*spliced} <= _ENVELOPE_IDS.keys() | ints
                or not {*fixed} <= _ENVELOPE_IDS.keys() or {*spliced} & {*fixed}):
            raise ValueError(f"splice some of {', '.join(_ENVELOPE_IDS)} and the body's integer fields "
                             "(no name twice), and fix only other ids of those three")
        self.body, self.spliced, self.fixed = body, spliced, fixed
        marks = {name: _MARK + k for k, name in enumerate(spliced)}
        frames = encode(dataclasses.replace(body, **{n: m for n, m in marks.items() if n in ints}), **fixed,
                        **{n: m for n, m in marks.items() if n in _ENVELOPE_IDS})
        head = bytes(frames[0])
        pieces, at = [], 0
        for mark in marks.values():
            packed = b"\xcf" + mark.to_bytes(8, "big")
            found = head.find(packed, at)
            if found < 0 or head.count(packed) != 1:
                raise ValueError(f"cannot find {' then '.join(spliced)} in the packed header")
            pieces.append(head[at:found + 1])
            at = found + 9
        pieces.append(head[at:])
        # header() is made for this many fields (as the codec's builders are): a loop over
        # them cost the load generator 2.6 us a request, against 0.3 us spelt out.
        values = ", ".join(f"v{k}" for k in range(len(spliced)))
        fits = " and ".join(f"{_FIXED_MIN} <= v{k} <= {_ENVELOPE_IDS.get(name, schema.I64)}"
                            for k, name in enumerate(spliced))
        spliced_in = "".join(f"p[{k}], v{k}, " for k in range(len(spliced)))
        source = (f"def header({values}):\n"
                  f"    if {fits}:\n"
                  f"        return pack({spliced_in}p[{len(spliced)}])\n"
                  f"    return encoded({values})\n")
        namespace = {"pack": struct.Struct(">" + "Q".join(f"{len(p)}s" for p in pieces)).pack,
                     "p": tuple(pieces), "encoded": self._encoded}
        exec(source, namespace)
        self.header: Callable[..., bytes] = namespace["header"]  # frame 0 with the spliced fields set
        self.tail = tuple(bytes(f) for f in frames[1:])  # tensors and blob: the same every time
        self.n_frames = len(frames)

    def _encoded(self, *values: int) -> bytes:
        """header() for values outside what splicing takes: encoded in full."""
        named = dict(zip(self.spliced, values))
        body = dataclasses.replace(self.body, **{n: v for n, v in named.items() if n not in _ENVELOPE_IDS})
        return bytes(encode(body, **self.fixed, **{n: v for n, v in named.items() if n in _ENVELOPE_IDS})[0])

    def frames(self, *values: int) -> list:
        return [self.header(*values), *self.tail]
