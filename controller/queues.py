"""Per-model request queue: served by priority then earliest deadline, expired by deadline.

Two heaps over the same requests with lazy deletion: a request that left the queue (dispatched,
answered) stays in the heaps until it surfaces and is skipped. An entry is live only while its
request is QUEUED and carries the token of its latest push, so a request put back after a drop
is never served twice. `len()` counts only live requests.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Iterator

from controller.lifecycle import RequestState

if TYPE_CHECKING:
    from controller.state import Request

_QUEUED = RequestState.QUEUED


class RequestQueue:
    def __init__(self) -> None:
        self._serve: list[tuple[int, int, int, "Request"]] = []  # (-priority, deadline, token, req)
        self._expire: list[tuple[int, int, "Request"]] = []  # (deadline, token, req)
        self._seq = itertools.count()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, req: "Request") -> None:
        seq = req.queue_token = next(self._seq)
        heapq.heappush(self._serve, (-req.priority, req.deadline_ns, seq, req))
        heapq.heappush(self._expire, (req.deadline_ns, seq, req))
        self._live += 1

    def removed(self) -> None:
        """Call when a queued request leaves the queue by any path (its state leaves QUEUED)."""
        self._live -= 1

    def in_order(self) -> Iterator["Request"]:
        """Live requests in service order, lazily: a batch takes a few from the front."""
        while self._serve and not _live(self._serve[0][3], self._serve[0][2]):
            heapq.heappop(self._serve)
        heap = list(self._serve)  # pop from a copy: order without disturbing ours
        while heap:
            _, _, token, req = heapq.heappop(heap)
            if _live(req, token):
                yield req

    def earliest_deadline(self) -> int | None:
        while self._expire and not _live(self._expire[0][2], self._expire[0][1]):
            heapq.heappop(self._expire)
        return self._expire[0][0] if self._expire else None

    def pop_expired(self, before_ns: int) -> list["Request"]:
        """Live requests with a deadline before `before_ns`; they are still QUEUED: the caller
        answers them (and calls removed() for each)."""
        out = []
        while self._expire and self._expire[0][0] < before_ns:
            _, token, req = heapq.heappop(self._expire)
            if _live(req, token):
                out.append(req)
        return out

    def drain(self) -> list["Request"]:
        """Every live request, in service order; the caller answers each (calling removed())."""
        out = list(self.in_order())
        self._serve.clear()
        self._expire.clear()
        return out


def _live(req: "Request", token: int) -> bool:
    return req.state is _QUEUED and req.queue_token == token
