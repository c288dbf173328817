"""An entry of the core's heaps that the compiled core compares natively.

heapq orders tuples item by item through generic comparisons (an equality test for each item
that decides nothing, then the order), and the core's heaps (every queue's service and expiry
order, the policy's expiry looks, the actions' give-up times) pop a few entries per request
from heaps of hundreds. An
entry compares (rank, key, token) as machine integers: rank first (a queue's service order puts
the higher priority first), then key (a time), then token, unique within a heap, so that
entries never tie and the item is never compared.
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

    def __lt__(self, other: Entry[T]) -> bool:
        if self.rank != other.rank:
            return self.rank < other.rank
        if self.key != other.key:
            return self.key < other.key
        return self.token < other.token
