"""An ONNX file's large weights, handed to onnxruntime as external data that stays in the file.

Built from an ONNX file whose weights are inline, onnxruntime parses them onto the heap (one copy)
and, packing them for its MatMul/Gemm/Conv kernels ("prepacking"), makes another before it frees
the first: a model costs twice its size while a session is built. Given a file whose initializers
are external data instead, onnxruntime maps their byte ranges (file-backed pages, read-only) and
frees each mapping right after packing it, so a session costs the packed copy plus one tensor.

`external_header` writes no weights: it walks the protobuf wire format of the (already spooled)
model and returns a small ModelProto in which each large top-level initializer's `raw_data` is
replaced by an external-data reference to that same byte range of the original file. Everything
else (nodes, small initializers, `float_data` tensors, Constant nodes, subgraphs) is copied as is.
onnxruntime maps an unaligned offset by mapping from the page below it (its POSIX Env does).

Wire format (protobuf encoding): ModelProto.graph = 7; GraphProto.initializer = 5;
TensorProto.raw_data = 9, .external_data = 13 (StringStringEntryProto: key 1, value 2),
.data_location = 14 (EXTERNAL = 1).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

MAPPED_MIN_BYTES = 64 * 1024  # smaller initializers stay inline: a mapping costs a page and a call

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 9, 13, 14, 1
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class NotMappable(ValueError):
    """The file is not an ONNX model this module can map (malformed, or refers to external data)."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise NotMappable("a truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, payload start, payload end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, payload = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            stop = _varint(buf, payload, end)[1]
        elif wire in (_FIXED64, _FIXED32):
            stop = payload + (8 if wire == _FIXED64 else 4)
        elif wire == _LENGTH:
            size, payload = _varint(buf, payload, end)
            stop = payload + size
        else:
            raise NotMappable(f"protobuf wire type {wire} (groups) in an ONNX model")
        if stop > end:
            raise NotMappable("a field runs past the end of its message")
        yield number, wire, pos, payload, stop
        pos = stop


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH) + _encode_varint(len(payload)) + payload


def _tensor(buf, start: int, end: int, location: str, min_bytes: int) -> bytes:
    """One TensorProto: its raw_data, when large, becomes a reference into the file."""
    kept = bytearray()
    raw = None
    for number, wire, field_start, payload, stop in _fields(buf, start, end):
        if number in (_EXTERNAL_DATA, _DATA_LOCATION):
            raise NotMappable("an initializer refers to external data: upload models with their weights inside")
        if number == _RAW_DATA and wire == _LENGTH and stop - payload >= min_bytes:
            raw = (payload, stop - payload)
        else:
            kept += buf[field_start:stop]
    if raw is None:
        return bytes(buf[start:end])
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        kept += _length_delimited(_EXTERNAL_DATA, _length_delimited(1, key.encode()) + _length_delimited(2, value.encode()))
    kept += _encode_varint(_DATA_LOCATION << 3 | _VARINT) + _encode_varint(_EXTERNAL)
    return bytes(kept)


def _graph(buf, start: int, end: int, location: str, min_bytes: int) -> bytes:
    out = bytearray()
    for number, wire, field_start, payload, stop in _fields(buf, start, end):
        if number == _GRAPH_INITIALIZER and wire == _LENGTH:
            out += _length_delimited(_GRAPH_INITIALIZER, _tensor(buf, payload, stop, location, min_bytes))
        else:
            out += buf[field_start:stop]
    return bytes(out)


def external_header(path: Path, min_bytes: int = MAPPED_MIN_BYTES) -> bytes:
    """The model at `path` as a ModelProto whose large initializers are external data in `path`
    itself (location: its name, so the header must be loaded from a file in the same folder)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        out = bytearray()
        for number, wire, field_start, payload, stop in _fields(buf, 0, len(buf)):
            if number == _MODEL_GRAPH and wire == _LENGTH:
                out += _length_delimited(_MODEL_GRAPH, _graph(buf, payload, stop, path.name, min_bytes))
            else:
                out += buf[field_start:stop]
        return bytes(out)
