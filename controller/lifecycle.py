"""Lifecycles as data: each enum has a table of legal moves and `move()` refuses anything else,
so an illegal transition is a loud bug in tests instead of a silent corruption."""

from __future__ import annotations

import enum


class IllegalTransition(RuntimeError):
    pass


class RequestState(enum.Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"  # part of an EXEC sent to a worker
    ANSWERED = "answered"


class Residency(enum.Enum):
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


def move(obj, new_state) -> None:
    table = _REQUEST_MOVES if isinstance(new_state, RequestState) else _RESIDENCY_MOVES
    if new_state not in table[obj.state]:
        raise IllegalTransition(f"{type(obj).__name__}: {obj.state.name} -> {new_state.name}")
    obj.state = new_state
