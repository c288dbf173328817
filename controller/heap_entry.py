"""The core's heaps: entries the compiled core compares natively, and push and pop for them.

heapq orders tuples item by item through generic comparisons (an equality test for each item
that decides nothing, then the order), and the core's heaps (every queue's service and expiry
order, the actions' give-up times, the devices' planning times) pop a few entries per request
from heaps of hundreds. Entries are ordered by (rank, key, token) as machine integers: rank
first (a queue's service order puts the higher priority first), then key (a time), then token,
unique within a heap, so that entries never tie and the item is never compared.

`push` and `pop` are heapq's heappush and heappop (the same sifts, so the same layouts),
compiled, with the comparison written out in the sifts: heapq, a C function, compared two
entries through Python's rich comparison, a generic call into a `__lt__`, and its sifts were
7% of the core's instructions. An Entry has no `__lt__`, so that heapq on these heaps fails at
once instead of running slowly.
"""

from __future__ import annotations

from typing import Generic, TypeVar, final

T = TypeVar("T")


@final
class Entry(Generic[T]):
    __slots__ = ("rank", "key", "token", "item")

    def __init__(self, key: int, token: int, item: T, rank: int = 0) -> None:
        self.rank = rank
        self.key = key
        self.token = token
        self.item = item


def push(heap: list[Entry[T]], entry: Entry[T]) -> None:
    """heapq.heappush."""
    heap.append(entry)
    _sift_down(heap, 0, len(heap) - 1)


def pop(heap: list[Entry[T]]) -> Entry[T]:
    """heapq.heappop: the least entry (IndexError when the heap is empty)."""
    last = heap.pop()
    if not heap:
        return last
    top = heap[0]
    heap[0] = last
    _sift_up(heap, 0)
    return top


def _sift_down(heap: list[Entry[T]], start: int, pos: int) -> None:
    """heapq._siftdown: the entry at `pos` moves up towards `start` past every greater parent."""
    new = heap[pos]
    rank = new.rank
    key = new.key
    token = new.token
    while pos > start:
        parent_pos = (pos - 1) >> 1
        parent = heap[parent_pos]
        # Whether `new` comes before `parent` (rank, key, token), written out: a call per
        # comparison cost more than the comparison, a dozen times a pop.
        if rank != parent.rank:
            if rank > parent.rank:
                break
        elif key != parent.key:
            if key > parent.key:
                break
        elif token >= parent.token:
            break
        heap[pos] = parent
        pos = parent_pos
    heap[pos] = new


def _sift_up(heap: list[Entry[T]], pos: int) -> None:
    """heapq._siftup: the lesser child moves up until a leaf is free, then the entry that was
    at `pos` settles from there (fewer comparisons than stopping where it fits)."""
    end = len(heap)
    start = pos
    new = heap[pos]
    child = 2 * pos + 1
    while child < end:
        lesser = heap[child]
        right = child + 1
        if right < end:
            other = heap[right]
            # Whether `other` comes before `lesser`, or ties (it never does: tokens are unique).
            if lesser.rank != other.rank:
                right_first = other.rank < lesser.rank
            elif lesser.key != other.key:
                right_first = other.key < lesser.key
            else:
                right_first = other.token <= lesser.token
            if right_first:
                child, lesser = right, other
        heap[pos] = lesser
        pos = child
        child = 2 * pos + 1
    heap[pos] = new
    _sift_down(heap, start, pos)
