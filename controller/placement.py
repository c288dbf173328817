"""Where to LOAD a model, what to evict for it, and when a hot model wants another replica
(pure functions over the controller's state).

Rules: only idle models (LOADED, nothing in flight) are evicted, least recently used first,
those with queued requests last; a device that needs no eviction is preferred, then the one
with the least work running and queued, then the one holding the fewest models. A model
wants another replica when draining its queue on the replicas it has, at the throughput of its
largest batch size, would take more than a fraction of its most urgent request's remaining
budget: the replica is then ready before demand outgrows the ones there are.
"""

from __future__ import annotations

from clockwork.common.models import pages_for
from clockwork.controller.latency import LatencyModel
from clockwork.controller.lifecycle import Residency
from clockwork.controller.state import Device, Model, Worker


def victims(dev: Device, short_pages: int) -> list[str] | None:
    """Idle models to evict to free `short_pages`, least recently used first, and models with
    requests queued here only if the others do not free enough (evicting one strands its
    queue until it is loaded again); None if impossible."""
    if short_pages <= 0:
        return []
    chosen, freed = [], 0
    for queued in (False, True):
        for name, res in dev.resident.items():  # insertion order = least recently used first
            if res.state is Residency.LOADED and res.in_flight == 0 and (name in dev.pending) is queued:
                chosen.append(name)
                freed += res.pages
                if freed >= short_pages:
                    return chosen
    return None


def load_target(model: Model, weights_bytes: int, devices: list[Device], now_ns: int
                ) -> tuple[Device, int, list[str]] | None:
    """The device to load `model` onto, the pages it takes there and the models to evict.

    Devices are ranked by (evicts, busy until, models held, load lane free at, key): no
    eviction first; then the device that will be done soonest with what it has running and
    queued, and holds the fewest models, so work spreads over devices and workers instead of
    piling onto a busy one or the first one listed. The order is written out field by field:
    compiled, a tuple per device and their generic comparison were most of a choice's cost,
    asked over every device with a free load slot."""
    pages_by_size: dict[int, int] = {}  # page size -> pages: devices of a kind share one
    best: Device | None = None
    best_pages = 0
    best_evicts = False
    best_busy = best_held = best_load = 0
    for dev in devices:
        if model.name in dev.resident:
            continue
        pages = _pages_on(dev, weights_bytes, pages_by_size)
        if pages > dev.capacity_pages:
            continue
        evicts = pages > dev.free_pages()
        busy = dev.exec_lane.free_at(now_ns) + dev.backlog.total
        held = len(dev.resident)
        load = dev.load_lane.free_at(now_ns)
        if best is None:
            before = True
        elif evicts != best_evicts:
            before = not evicts
        elif busy != best_busy:
            before = busy < best_busy
        elif held != best_held:
            before = held < best_held
        elif load != best_load:
            before = load < best_load
        else:
            before = dev.key < best.key
        if before:
            best, best_pages = dev, pages
            best_evicts, best_busy, best_held, best_load = evicts, busy, held, load
    if best is None:
        return None
    dev, pages = best, best_pages
    chosen = victims(dev, pages - dev.free_pages())
    if chosen is not None:
        return dev, pages, chosen
    # The cheapest device could not make room; fall back to any that can (rare: all in use).
    for other in devices:
        if other is dev or model.name in other.resident:
            continue
        pages = _pages_on(other, weights_bytes, pages_by_size)
        chosen = victims(other, pages - other.free_pages())
        if chosen is not None:
            return other, pages, chosen
    return None


def _pages_on(dev: Device, weights_bytes: int, pages_by_size: dict[int, int]) -> int:
    pages = pages_by_size.get(dev.page_bytes)
    if pages is None:
        pages = pages_by_size[dev.page_bytes] = pages_for(weights_bytes, dev.page_bytes)
    return pages


def wants_replica(model: Model, now_ns: int, workers: dict[str, Worker], latency: LatencyModel,
                  fraction: float) -> bool:
    """True when draining the queue would use more than `fraction` of its head's remaining budget.

    `latency` predicts an EXEC on each replica's kind of device; a replica's worker's
    `dispatch_ns` is the hop from sending to its lane starting (Core.dispatch_of). (Asked of
    every pending model at every replication check: both are read directly, not through a
    closure or a bound method, which compiled code calls generically.)
    """
    head = model.queue.earliest_deadline()
    if head is None or not model.replicas or not model.sizes:
        return False
    size = model.sizes[-1]
    rate = 0.0  # samples per ns over all replicas
    start, found = 0, False  # a native int and a flag: an int | None is boxed at each step
    name = model.name
    for dev in model.replicas.values():
        res = dev.resident.get(name)
        exec_ns = latency.exec_ns(name, size, dev.kind)
        if res is None or exec_ns is None:
            continue
        rate += size / exec_ns
        free = max(dev.exec_lane.free_at(now_ns), now_ns + workers[dev.worker].dispatch_ns)
        if not found or free < start:
            start, found = free, True
    if not found:
        return False
    drain_ns = model.queue.samples.total / rate
    return start + drain_ns - now_ns > fraction * (head - now_ns)
