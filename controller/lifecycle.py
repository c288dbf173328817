"""Lifecycles as data: each enum has a table of legal moves and `move()` refuses anything else,
so an illegal transition is a loud bug in tests instead of a silent corruption."""

from __future__ import annotations

import enum
from typing import Any


class IllegalTransition(Exception):
    pass


class _IdentityHashed(enum.Enum):
    """Members are singletons, so their identity is their hash: `move` hashes a state twice
    for every request, and Enum's own __hash__ (of the name) is Python code even where this
    module is compiled (597,952 interpreted calls in the issue-19 simulator command)."""

    __hash__ = object.__hash__


class RequestState(_IdentityHashed):
    QUEUED = "queued"
    DISPATCHED = "dispatched"  # part of an EXEC sent to a worker
    ANSWERED = "answered"


class Residency(_IdentityHashed):
    LOADING = "loading"  # LOAD sent, pages reserved
    LOADED = "loaded"
    ABSENT = "absent"  # not on the device (the entry is then removed)


_REQUEST_MOVES = {
    RequestState.QUEUED: {RequestState.DISPATCHED, RequestState.ANSWERED},
    RequestState.DISPATCHED: {RequestState.ANSWERED, RequestState.QUEUED},  # QUEUED: retry after a drop
    RequestState.ANSWERED: set(),
}
_RESIDENCY_MOVES = {
    Residency.LOADING: {Residency.LOADED, Residency.ABSENT},
    Residency.LOADED: {Residency.ABSENT},
    Residency.ABSENT: set(),
}


def move(obj: Any, new_state: RequestState | Residency) -> None:
    """Set `obj.state` (a request's or a resident model's) to `new_state` if the table allows it."""
    allowed: set = (_REQUEST_MOVES[obj.state] if isinstance(new_state, RequestState)
                    else _RESIDENCY_MOVES[obj.state])
    if new_state not in allowed:
        raise IllegalTransition(f"{type(obj).__name__}: {obj.state.name} -> {new_state.name}")
    obj.state = new_state
