"""Garbage-collector settings for the daemons' serving loops.

A daemon allocates many short-lived containers per request (headers, tuples, effects) and its
code makes almost no reference cycles, so CPython's defaults (a young collection every 700
allocations; older ones that walk every long-lived object: the registry, queues, imported
modules) spent about 4% of the controller's time finding nothing (perf, 9,000 requests/s).
Once started, what exists is frozen out of collections and the young generation is collected
less often. Reference counting still frees everything acyclic at once; cycles are still found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)
OLDER_THRESHOLDS = (20, 50)  # young collections per middle one, middle ones per full one (default 10, 10)


def tune_for_serving() -> None:
    """Call once, after start-up and before the serving loop."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


@contextmanager
def serving() -> Iterator[None]:
    """The same settings for a stretch of work in a process that goes on afterwards (the
    simulator runs the core as the controller daemon does, then reports); restored after."""
    thresholds = gc.get_threshold()
    tune_for_serving()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
