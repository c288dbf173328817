"""Validators for untrusted wire values.

Each check takes a decoded msgpack value and a field path and returns the value in its
Python form, or raises `BadMessage` naming the field. They are small and composable so that
the schema module reads as a table of fields and limits.

Most checks also say their limits as a msgspec type (`wire_type`): one that accepts exactly the
values the check accepts, and gives the same Python value. The codec decodes the messages whose
every field has one in C (common/codec.py), and runs the checks themselves only on a message
msgspec refuses, to say what is wrong in the same words as always.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from msgspec import Meta

from clockwork.common.status import Status

# Where a value sits in a message: a field name, or (parent path, key) pairs built as checks
# descend, rendered as text only when a check fails (formatting every path up front cost more
# than the checks themselves). A str key renders as ".key", an int as "[i]", a list [k] as "[k!r]".
FieldPath = Any
Check = Callable[[Any, FieldPath], Any]


class BadMessage(Exception):
    """A remote peer sent something we refuse; carries the status to answer with."""

    def __init__(self, status: Status, detail: str):
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail


def render(path: FieldPath) -> str:
    """A field path as text, e.g. `tensors[0].shape[1]`."""
    if not isinstance(path, tuple):
        return str(path)
    parent, key = path
    if isinstance(key, int):
        return f"{render(parent)}[{key}]"
    if isinstance(key, list):
        return f"{render(parent)}[{key[0]!r}]"
    return f"{render(parent)}.{key}"


def _fail(path: FieldPath, what: str) -> BadMessage:
    return BadMessage(Status.BAD_MESSAGE, f"{render(path)}: {what}")


def wire_type(check: Check) -> Any:
    """The msgspec type that accepts what `check` accepts, as the same value; None where there
    is none (nested records and free-form data: the check alone reads them)."""
    return getattr(check, "wire", None)


def _wired(check: Check, wire: Any) -> Check:
    check.wire = wire  # type: ignore[attr-defined]
    return check


_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, path: FieldPath) -> int:
        if type(value) is not int:
            raise _fail(path, f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise _fail(path, f"{value} outside [{lo}, {hi}]")
        return value

    # msgspec bounds must fit an int64; msgpack holds no integer past UINT64_MAX, so that bound
    # needs no constraint.
    if lo < _INT64_MIN or _INT64_MAX < hi < _UINT64_MAX:
        return check
    return _wired(check, Annotated[int, Meta(ge=lo, le=hi)] if hi <= _INT64_MAX else Annotated[int, Meta(ge=lo)])


def boolean(value: Any, path: FieldPath) -> bool:
    if type(value) is not bool:
        raise _fail(path, f"expected a boolean, got {type(value).__name__}")
    return value


_wired(boolean, bool)


def text(max_len: int, pattern: str | None = None) -> Check:
    regex = re.compile(pattern) if pattern else None

    def check(value: Any, path: FieldPath) -> str:
        if type(value) is not str:
            raise _fail(path, f"expected a string, got {type(value).__name__}")
        if len(value) > max_len:
            raise _fail(path, f"longer than {max_len} characters")
        if regex is not None and not regex.fullmatch(value):
            raise _fail(path, f"{value!r} does not match {pattern}")
        return value

    # msgspec searches a pattern; anchored so, it matches as fullmatch does (\Z: not before a
    # final newline, where $ would).
    meta = Meta(max_length=max_len, pattern=f"^(?:{pattern})\\Z") if pattern else Meta(max_length=max_len)
    return _wired(check, Annotated[str, meta])


def one_of(*allowed: str) -> Check:
    def check(value: Any, path: FieldPath) -> str:
        if value not in allowed:
            raise _fail(path, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return _wired(check, Literal[allowed])


def member(enum_cls: type[enum.Enum]) -> Check:
    """A member of a string enum, sent as its value."""
    members = {m.value: m for m in enum_cls}

    def check(value: Any, path: FieldPath) -> enum.Enum:
        found = members.get(value) if type(value) is str else None
        if found is None:
            raise _fail(path, f"{value!r} is not one of {', '.join(members)}")
        return found

    return _wired(check, enum_cls)


def status(value: Any, path: FieldPath) -> Status:
    try:
        return Status(integer(0, 255)(value, path))
    except ValueError:
        raise _fail(path, f"unknown status {value}") from None


_wired(status, Status)


def sequence(item: Check, max_len: int) -> Check:
    def check(value: Any, path: FieldPath) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected a list, got {type(value).__name__}")
        if len(value) > max_len:
            raise _fail(path, f"more than {max_len} items")
        return tuple(item(v, (path, i)) for i, v in enumerate(value))

    wire = wire_type(item)
    return check if wire is None else _wired(check, Annotated[tuple[wire, ...], Meta(max_length=max_len)])


def mapping(key: Check, val: Check, max_len: int) -> Check:
    def check(value: Any, path: FieldPath) -> dict:
        if not isinstance(value, dict):
            raise _fail(path, f"expected a map, got {type(value).__name__}")
        if len(value) > max_len:
            raise _fail(path, f"more than {max_len} entries")
        return {key(k, (path, "key")): val(v, (path, [k])) for k, v in value.items()}

    key_wire, val_wire = wire_type(key), wire_type(val)
    if key_wire is None or val_wire is None:
        return check
    return _wired(check, Annotated[dict[key_wire, val_wire], Meta(max_length=max_len)])


def record(fields: dict[str, Check], optional: frozenset[str] = frozenset()) -> Check:
    """A nested map with known fields, returned as a dict; unknown fields are ignored."""

    def check(value: Any, path: FieldPath) -> dict:
        if not isinstance(value, dict):
            raise _fail(path, f"expected a map, got {type(value).__name__}")
        out = {}
        for name, field_check in fields.items():
            if name in value:
                out[name] = field_check(value[name], (path, name))
            elif name not in optional:
                raise _fail(path, f"missing field {name!r}")
        return out

    return check


def plain_data(max_depth: int = 6, max_items: int = 100_000, top: type | None = None) -> Check:
    """Any msgpack tree of maps, lists and scalars, bounded in depth and size (reply bodies);
    `top` requires the outermost value to be of that type."""

    def walk(value: Any, path: str, depth: int, budget: list[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _fail(path, "too many items")
        if isinstance(value, dict):
            if depth >= max_depth:
                raise _fail(path, "nested too deeply")
            return {k: walk(v, path, depth + 1, budget) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if depth >= max_depth:
                raise _fail(path, "nested too deeply")
            return [walk(v, path, depth + 1, budget) for v in value]
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        raise _fail(path, f"unsupported value of type {type(value).__name__}")

    def check(value: Any, path: FieldPath) -> Any:
        if top is not None and not isinstance(value, top):
            raise _fail(path, f"expected a {top.__name__}, got {type(value).__name__}")
        return walk(value, path, 0, [max_items])

    return check
