"""Per-model request queue: served by priority then earliest deadline, expired by deadline.

Two heaps over the same requests with lazy deletion: a request that left the queue (dispatched,
answered) stays in the heaps until it surfaces and is skipped. An entry is live only while its
request is QUEUED and carries the token of its latest push, so a request put back after a drop
is never served twice. `len()` counts only live requests.

`QueueBase` is what every queue order shares (the expiry heap and the counts); the baselines'
FIFO queue (controller/baseline.py) is another order on it.

A queue reads of a request its deadline_ns, priority, samples and state, and keeps its
queue_token (the token of its latest push; -1 once it left the queue). It names the class
itself, not a protocol: the compiled core then reads those fields natively, not by name.
"""

from __future__ import annotations

from typing import Final, final

from clockwork.common.schema import MAX_PRIORITY
from clockwork.controller import heap_entry
from clockwork.controller.heap_entry import Entry
from clockwork.controller.lifecycle import RequestState
from clockwork.controller.request import Request

CLASSES: Final = MAX_PRIORITY + 1  # priority classes 0 .. MAX_PRIORITY

_QUEUED: Final = RequestState.QUEUED


@final
class ByClass:
    """A figure per priority class (queued samples, EXEC time) with its total over the
    classes beside it, kept together: a request of class c waits behind the classes at and
    above c, and one of the lowest class, the usual one, reads the total, not a sum of ten."""

    def __init__(self) -> None:
        self.values = [0] * CLASSES
        self.total = 0

    def add(self, priority: int, delta: int) -> None:
        self.values[priority] = self.values[priority] + delta
        self.total += delta

    def add_each(self, other: ByClass, sign: int) -> None:
        """Add `other`'s figures (sign 1) or take them away (sign -1), class by class."""
        for priority, delta in enumerate(other.values):
            self.add(priority, sign * delta)

    def from_class(self, priority: int) -> int:
        """The total over class `priority` and the classes above it: a loop the compiled core
        runs natively, where sum() over a slice is a generic call on a new list."""
        if priority == 0:
            return self.total
        values = self.values
        total = 0
        for i in range(priority, len(values)):
            total += values[i]
        return total


class QueueBase:
    """The expiry heap and the counts of a per-model queue; subclasses add the service order
    (push, head, first, drain)."""

    def __init__(self) -> None:
        self._expire: list[Entry[Request]] = []  # by (deadline, token)
        self._pushes = 0  # the next push's token
        self._live = 0
        self.samples = ByClass()  # live requests' samples per priority class: the work waiting
        self.version = 0  # moves whenever a request joins or leaves: its head and samples may have changed

    def __len__(self) -> int:
        return self._live

    def _added(self, req: Request) -> int:
        """Count a request in and file it for expiry; returns the token of this push."""
        token = req.queue_token = self._pushes
        self._pushes += 1
        heap_entry.push(self._expire, Entry(req.deadline_ns, token, req))
        self._live += 1
        self.version += 1
        self.samples.add(req.priority, req.samples)
        return token

    def removed(self, req: Request) -> None:
        """Call when a queued request leaves the queue by any path (its state leaves QUEUED).
        Its entries die with it: a request put back later (a dropped batch) is pushed anew, and
        an old entry must not pass for the new one (it did, and hid the request from expiry)."""
        req.queue_token = -1
        self._live -= 1
        self.version += 1
        self.samples.add(req.priority, -req.samples)

    def earliest_deadline(self) -> int | None:
        expire = self._expire
        while expire and not is_live(expire[0]):
            heap_entry.pop(expire)
        return expire[0].key if expire else None

    def pop_expired(self, before_ns: int) -> list[Request]:
        """Live requests with a deadline before `before_ns`; they are still QUEUED: the caller
        answers them (and calls removed() for each)."""
        out: list[Request] = []
        expire = self._expire
        while expire and expire[0].key < before_ns:
            entry = heap_entry.pop(expire)
            if is_live(entry):
                out.append(entry.item)
        return out

    def push(self, req: Request) -> None:
        raise NotImplementedError

    def head(self, limit: int) -> list[Request]:
        """Up to `limit` live requests in service order, the queue unchanged."""
        raise NotImplementedError

    def first(self) -> Request | None:
        """The live request served next."""
        raise NotImplementedError

    def drain(self) -> list[Request]:
        """Every live request, in service order; the caller answers each (calling removed())."""
        raise NotImplementedError


class RequestQueue(QueueBase):
    def __init__(self) -> None:
        super().__init__()
        self._serve: list[Entry[Request]] = []  # by (-priority, deadline, token)

    def push(self, req: Request) -> None:
        token = self._added(req)
        heap_entry.push(self._serve, Entry(req.deadline_ns, token, req, -req.priority))

    def head(self, limit: int) -> list[Request]:
        """Up to `limit` live requests in service order; O(limit log n), the queue unchanged."""
        serve = self._serve
        taken: list[Entry[Request]] = []
        out: list[Request] = []
        while serve and len(out) < limit:
            entry = heap_entry.pop(serve)
            if is_live(entry):
                taken.append(entry)
                out.append(entry.item)
        for entry in taken:
            heap_entry.push(serve, entry)
        return out

    def first(self) -> Request | None:
        """The live request served next (amortised O(1): stale entries on top are dropped)."""
        serve = self._serve
        while serve and not is_live(serve[0]):
            heap_entry.pop(serve)
        return serve[0].item if serve else None

    def drain(self) -> list[Request]:
        """Every live request, in service order; the caller answers each (calling removed())."""
        out = self.head(self._live)
        self._serve.clear()
        self._expire.clear()
        return out


def is_live(entry: Entry[Request]) -> bool:
    """The entry still stands for its request: it is queued, and this is its latest push."""
    req = entry.item
    return req.state is _QUEUED and req.queue_token == entry.token
