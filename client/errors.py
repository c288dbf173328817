"""Typed errors for everything a Clockwork call can answer besides a result.

Every error carries the wire `Status` (`err.status`, `err.code`) and the controller's detail.
The class says whose fault it is, following `Status.fault`, so callers can decide what to do
without a table of codes:

- `RequestError`  (Fault.CALLER):   fix the request; retrying it unchanged fails again.
- `CapacityError` (Fault.CAPACITY): the system cannot do it now; retry later or with a looser SLO.
- `ServerError`   (Fault.SYSTEM):   something inside the system failed; report it.

`DeadlineExceeded` is the client's own timeout (no reply within the SLO plus a grace, or the
admin timeout). Its status is DEADLINE_MISSED, like the controller's own "became infeasible
while queued" answer, which arrives as a plain `CapacityError`; so `err.status is
Status.DEADLINE_MISSED` covers both, and `isinstance(err, DeadlineExceeded)` only ours.
"""

from __future__ import annotations

from clockwork.common.status import Fault, Status

__all__ = [
    "ClockworkError",
    "RequestError",
    "CapacityError",
    "ServerError",
    "DeadlineExceeded",
    "ClientClosed",
    "error_for",
]


class ClockworkError(Exception):
    """Base of every error a Clockwork client raises for a request."""

    def __init__(self, status: Status, detail: str = ""):
        super().__init__(status, detail)
        self.status = Status(status)
        self.detail = detail

    @property
    def code(self) -> int:
        return int(self.status)

    @property
    def fault(self) -> Fault:
        return self.status.fault

    def __str__(self) -> str:
        head = f"{self.status.name} (code {self.code})"
        return f"{head}: {self.detail}" if self.detail else head

    def __reduce__(self):  # keep (status, detail) across pickling, e.g. to a process pool
        return type(self), (self.status, self.detail)


class RequestError(ClockworkError):
    """The request is wrong (bad input, unknown model, bad model file...)."""


class CapacityError(ClockworkError):
    """The system cannot serve this now (would miss its deadline, queue full, no capacity...)."""


class ServerError(ClockworkError):
    """Something inside the system failed (a worker was lost, a runtime error, a bad reply...)."""


class DeadlineExceeded(CapacityError):
    """The client gave up waiting: no reply within its own timeout, or the deadline had
    already passed before sending (`before_send`: nothing was sent, so nothing was admitted,
    which a gateway answers as a refusal rather than as a missed deadline)."""

    def __init__(self, status: Status = Status.DEADLINE_MISSED, detail: str = "", before_send: bool = False):
        super().__init__(status, detail)
        self.before_send = before_send

    def __reduce__(self):
        return type(self), (self.status, self.detail, self.before_send)


class Unreachable(CapacityError):
    """Nothing answered at the endpoint within a short probe: the controller is not running
    there, the endpoint is wrong, or the network drops it."""

    def __init__(self, status: Status = Status.UNAVAILABLE, detail: str = ""):
        super().__init__(status, detail)


class ClientClosed(RequestError):
    """The client was closed while the call was pending, or used after close()."""

    def __init__(self, status: Status = Status.CANCELLED, detail: str = "the client is closed"):
        super().__init__(status, detail)


_BY_FAULT: dict[Fault, type[ClockworkError]] = {
    Fault.CALLER: RequestError,
    Fault.CAPACITY: CapacityError,
    Fault.SYSTEM: ServerError,
}


def error_for(status: Status, detail: str = "") -> ClockworkError:
    """The error for a non-OK status, of the class its fault names."""
    status = Status(status)
    if status.ok:
        raise ValueError("Status.OK is not an error")
    return _BY_FAULT[status.fault](status, detail)
