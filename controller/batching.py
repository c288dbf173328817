"""Choosing one batch for a device whose EXEC lane is about to free up (pure functions).

Rule (Clockwork's): among the models loaded on the device, serve the one whose batch must
start soonest (its most urgent request's deadline less the batch's duration); then grow the
batch, request by request in service order, as long as it still meets the deadline of every
member. Requests that could not finish on this device even alone are skipped here (another
device, or expiry, handles them). Batch sizes are the profiled ones; a batch of 3 samples runs
padded to 4. Of the batches so grown, the largest is taken unless a smaller one, followed by
the members it leaves (batched the same way, `split_ns`), would serve them all sooner
(`BATCH_EFFICIENCY_TOLERANCE`): on a GPU, 3 samples padded to 4 cost little more than 2, but
on a CPU, where a batch of 4 takes four times one, padding is pure loss (3 samples in a batch
of 4 took 1.35 ms where 2 took 0.67 and 1 took 0.34), and the third sample is served sooner by
a batch of its own. Clockwork's policy (controller/policy.py) ranks models by an estimate of
that start and adds one step of lookahead, because an EXEC cannot be preempted.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from clockwork.controller.request import Request

SCAN_LIMIT: Final = 64  # requests looked at per batch: bounds work per decision under deep queues
# A grown batch is taken if it serves all the grown members in at most this much more device
# time than the best split into a smaller batch and one of the rest: the larger batch also saves
# an action (a message and its handling in the controller and the worker), so near-ties go to it.
BATCH_EFFICIENCY_TOLERANCE: Final = 0.1


@dataclass(eq=False, slots=True)
class Batch:
    """A value, as controller/effects.py's ToWorker is (Final fields, __init__ written out)."""

    model: Final[str]
    requests: Final[tuple[Request, ...]]
    batch_size: Final[int]  # padded size the worker runs
    exec_ns: Final[int]  # predicted duration
    latest_start_ns: Final[int]  # past this, some member misses its deadline

    def __init__(self, model: str, requests: tuple[Request, ...], batch_size: int, exec_ns: int,
                 latest_start_ns: int) -> None:
        self.model = model
        self.requests = requests
        self.batch_size = batch_size
        self.exec_ns = exec_ns
        self.latest_start_ns = latest_start_ns


def padded_size(samples: int, sizes: list[int]) -> int | None:
    """Smallest profiled batch size holding `samples` (sizes ascending)."""
    for size in sizes:
        if size >= samples:
            return size
    return None


def grow(model: str, queue: Iterable[Request], start_ns: int, sizes: list[int],
         exec_ns: Callable[[int], int | None], slack_ns: int = 0,
         typical_ns: Callable[[int], int | None] | None = None,
         split_known: dict[int, float] | None = None) -> Batch | None:
    """The largest feasible batch of `model` starting at `start_ns` that padding does not make
    a waste (module docstring), or None. A request that cannot meet its deadline even alone,
    but that a typical run (`typical_ns`) still finishes within `slack_ns` past it (it is not
    given up yet: Core.give_up_slack_ns), runs alone if it comes first. `split_known`: split_ns's
    results for `exec_ns` worked out before (SplitMemo.tail; filled in here)."""
    members: list[Request] = []
    samples = 0
    size = duration = deadline = 0
    grown: list[tuple[int, int, int, int, int]] = []  # (members, samples, size, duration, deadline)
    for scanned, req in enumerate(queue):
        if scanned >= SCAN_LIMIT:
            break
        if req.samples > sizes[-1]:
            continue  # no profiled size holds it (it waited for a worker that profiled less); expiry answers it
        if samples + req.samples > sizes[-1]:
            break
        next_size = padded_size(samples + req.samples, sizes)
        next_duration = exec_ns(next_size) if next_size is not None else None
        if next_size is None or next_duration is None:
            break
        next_deadline = min(deadline, req.deadline_ns) if members else req.deadline_ns
        if start_ns + next_duration > next_deadline:
            # Adding this request breaks the batch: skip it if it cannot make it even alone.
            alone_size = padded_size(req.samples, sizes) or sizes[-1]
            alone = exec_ns(alone_size)
            if alone is not None and start_ns + alone <= req.deadline_ns:
                break
            typical = typical_ns(alone_size) if typical_ns is not None else None
            if alone is None or typical is None or start_ns + typical > req.deadline_ns + slack_ns:
                continue
            if not members:
                return Batch(model, (req,), alone_size, alone, req.deadline_ns - alone)
            break
        members.append(req)
        samples += req.samples
        size, duration, deadline = next_size, next_duration, next_deadline
        grown.append((len(members), samples, size, duration, deadline))
    if not members:
        return None
    count, size, duration, deadline = _least_padded(grown, samples, sizes, exec_ns,
                                                    {} if split_known is None else split_known)
    return Batch(model, tuple(members[:count]), size, duration, deadline - duration)


def split_ns(samples: int, sizes: list[int], exec_ns: Callable[[int], int | None],
             known: dict[int, float] | None = None) -> float:
    """Device time for `samples` (at most the largest size) run as batching runs them: padded up
    to one batch, or as the largest smaller batch and the rest split the same way, whichever
    is cheaper. On a CPU, 7 samples padded to 8 cost 8 runs of one; as 4, 2 and 1, seven.
    `known`: results already worked out for this `exec_ns`, by samples (filled in here)."""
    if known is not None and samples in known:
        return known[samples]
    at = bisect_left(sizes, samples)  # sizes[at] is the padded size, sizes[at - 1] the largest smaller
    padded = exec_ns(sizes[min(at, len(sizes) - 1)])
    first = exec_ns(sizes[at - 1]) if at else None  # the largest smaller size
    if first is None:
        ns = math.inf if padded is None else padded
    else:
        rest = first + split_ns(samples - sizes[at - 1], sizes, exec_ns, known)
        ns = rest if padded is None else min(padded, rest)
    if known is not None:
        known[samples] = ns
    return ns


class SplitMemo:
    """split_ns's results for one model on one device kind, kept between requests: at typical
    durations (`typical`, which queues are priced at: Core.drain_ns) and at the tails (`tail`,
    which batches are chosen with: grow), with the largest batch's typical run (`full_ns`).
    Good while the latency model's generation for the model, and the model's batch sizes, are
    the ones they were worked out with; a model's figures change with about one request in four."""

    __slots__ = ("generation", "sizes", "full_ns", "typical", "tail")

    def __init__(self, generation: int, sizes: list[int], full_ns: int) -> None:
        self.generation = generation
        self.sizes = sizes
        self.full_ns = full_ns
        self.typical: dict[int, float] = {}
        self.tail: dict[int, float] = {}


class RankMemo:
    """A model's rank in batch choice on a device kind (controller/policy.py): its most urgent
    request's priority, negated (`order`), then the latest start of the batch its queue makes,
    then its name (`ranked` False: nothing to rank), with what it was worked out from: good while
    its queue's `version`, the latency model's generation for it, the kind and its batch sizes
    are those. Between two choices on a device, four in five of its models' queues stand
    unchanged. Native fields, not a tuple: compiled, a tuple held in a field is unboxed when read
    and boxed anew, with its ints, when listed."""

    __slots__ = ("version", "generation", "kind", "sizes", "ranked", "order", "latest_start_ns", "name")

    def __init__(self, version: int, generation: int, kind: str, sizes: list[int], ranked: bool, order: int,
                 latest_start_ns: int, name: str) -> None:
        self.version = version
        self.generation = generation
        self.kind = kind
        self.sizes = sizes
        self.ranked = ranked
        self.order = order
        self.latest_start_ns = latest_start_ns
        self.name = name

    def holds(self, version: int, generation: int, kind: str, sizes: list[int]) -> bool:
        """Whether this rank is still the model's: worked out from these."""
        return (self.version == version and self.generation == generation and self.kind == kind
                and self.sizes is sizes)


def _least_padded(grown: list[tuple[int, int, int, int, int]], total: int, sizes: list[int],
                  exec_ns: Callable[[int], int | None], known: dict[int, float]) -> tuple[int, int, int, int]:
    """(members, size, duration, deadline) of the largest grown batch that serves all `total`
    samples, followed by the samples it leaves (`split_ns`), within the tolerance of the best.
    Plain loops: compiled, a closure, a generator and zip(reversed(...)) are generic calls."""
    costs: list[float] = []  # per grown batch: its duration plus the split of what it leaves
    for g in grown:
        rest = total - g[1]
        costs.append(g[3] + (split_ns(rest, sizes, exec_ns, known) if rest else 0))
    limit = min(costs) * (1 + BATCH_EFFICIENCY_TOLERANCE)
    at = len(grown) - 1
    while costs[at] > limit:  # the largest within the limit (the best is, so one is)
        at -= 1
    count, _, size, duration, deadline = grown[at]
    return count, size, duration, deadline
