"""The one status enumeration shared by every process.

Grouped by decade (after Clockwork): 0 OK; 10s request errors; 20s admission; 30s action
windows; 40s memory; 50s models and workers; 60s protocol. Values are stable wire numbers,
never compared by order. Each status says whose fault it is, so a client knows whether to
fix its request, retry later, or report a bug.
"""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    NONE = "none"
    CALLER = "caller"  # the request itself is wrong; retrying it unchanged will fail again
    CAPACITY = "capacity"  # the system cannot do it now; a later or looser request may work
    SYSTEM = "system"  # something inside the system failed


class Status(enum.IntEnum):
    OK = 0

    BAD_INPUT = 10  # wrong dtype, shape, number of inputs, or a malformed field
    MODEL_NOT_FOUND = 11
    MODEL_EXISTS = 12
    BAD_MODEL = 13  # corrupt, unsupported, or shapes that cannot be fixed
    TOO_LARGE = 14  # over a configured size limit
    CANCELLED = 15
    DUPLICATE_REQUEST = 16
    FORBIDDEN = 17  # the caller's key may not do this (only admin keys upload or remove models)

    WOULD_MISS_DEADLINE = 20  # cannot finish in time even on an idle device
    QUEUE_FULL = 21
    DEADLINE_MISSED = 22  # admitted, but became infeasible while queued
    NO_CAPACITY = 23  # no device can hold or run this model

    TOO_EARLY = 30
    TOO_LATE = 31  # the action could not start inside its window and was not executed

    INSUFFICIENT_MEMORY = 40
    NOT_LOADED = 41
    ALREADY_LOADED = 42
    BUSY = 43  # the model has work in flight

    NOT_PREPARED = 50
    WORKER_LOST = 51
    RUNTIME_ERROR = 52
    UNAVAILABLE = 53  # no worker can serve this model right now

    BAD_MESSAGE = 60  # undecodable, truncated, or schema-violating frames
    UNKNOWN_TYPE = 61
    UNSUPPORTED_VERSION = 62
    INTERNAL = 63

    @property
    def fault(self) -> Fault:
        return _FAULTS[self]

    @property
    def ok(self) -> bool:
        return self is Status.OK


_FAULTS: dict[Status, Fault] = {
    Status.OK: Fault.NONE,
    Status.BAD_INPUT: Fault.CALLER,
    Status.MODEL_NOT_FOUND: Fault.CALLER,
    Status.MODEL_EXISTS: Fault.CALLER,
    Status.BAD_MODEL: Fault.CALLER,
    Status.TOO_LARGE: Fault.CALLER,
    Status.CANCELLED: Fault.CALLER,
    Status.DUPLICATE_REQUEST: Fault.CALLER,
    Status.FORBIDDEN: Fault.CALLER,
    Status.WOULD_MISS_DEADLINE: Fault.CAPACITY,
    Status.QUEUE_FULL: Fault.CAPACITY,
    Status.DEADLINE_MISSED: Fault.CAPACITY,
    Status.NO_CAPACITY: Fault.CAPACITY,
    Status.TOO_EARLY: Fault.CAPACITY,
    Status.TOO_LATE: Fault.CAPACITY,
    Status.INSUFFICIENT_MEMORY: Fault.CAPACITY,
    Status.NOT_LOADED: Fault.SYSTEM,
    Status.ALREADY_LOADED: Fault.SYSTEM,
    Status.BUSY: Fault.CAPACITY,
    Status.NOT_PREPARED: Fault.SYSTEM,
    Status.WORKER_LOST: Fault.SYSTEM,
    Status.RUNTIME_ERROR: Fault.SYSTEM,
    Status.UNAVAILABLE: Fault.CAPACITY,
    Status.BAD_MESSAGE: Fault.CALLER,
    Status.UNKNOWN_TYPE: Fault.CALLER,
    Status.UNSUPPORTED_VERSION: Fault.CALLER,
    Status.INTERNAL: Fault.SYSTEM,
}
