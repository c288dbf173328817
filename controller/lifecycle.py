"""Lifecycles as data: each enum has a table of legal moves, and the objects that live by one
(Request.move, Resident.move) refuse anything else through `check_move`, so an illegal
transition is a loud bug in tests instead of a silent corruption."""

from __future__ import annotations

import enum
from typing import Any, Final


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


REQUEST_MOVES: Final[dict[RequestState, set[RequestState]]] = {
    RequestState.QUEUED: {RequestState.DISPATCHED, RequestState.ANSWERED},
    RequestState.DISPATCHED: {RequestState.ANSWERED, RequestState.QUEUED},  # QUEUED: retry after a drop
    RequestState.ANSWERED: set(),
}
RESIDENCY_MOVES: Final[dict[Residency, set[Residency]]] = {
    Residency.LOADING: {Residency.LOADED, Residency.ABSENT},
    Residency.LOADED: {Residency.ABSENT},
    Residency.ABSENT: set(),
}


def check_move(moves: dict[Any, set[Any]], state: Any, new_state: Any, owner: str) -> None:
    """IllegalTransition unless the table `moves` lets `state` become `new_state`. The owners
    call it from their own typed `move` methods: a generic `move(obj)` read and set the state
    by name, ~800 instructions a move, several a request."""
    if new_state not in moves[state]:
        raise IllegalTransition(f"{owner}: {state.name} -> {new_state.name}")
