"""Baseline schedulers with the core's interface, so comparisons run in the same harness.

What a conventional serving system does (Triton's dynamic batcher, as usually deployed):
- FIFO per model: requests are served in arrival order.
- Dynamic batching: a model's queue is dispatched when it holds `max_batch` requests, or when
  its oldest request has waited `max_queue_delay_ns`, onto a device that holds the model and
  is idle (one EXEC in flight per device; no schedule-ahead, no windows).
- Load on miss: a model with queued requests and no copy on any device is loaded where memory
  allows, evicting idle models least recently used first (the core's own LOAD planning).
- No admission control: nothing is refused for lack of capacity (no WOULD_MISS_DEADLINE, no
  QUEUE_FULL); requests wait however long it takes.
- `queue_timeout=True` (baseline b) adds Triton's per-request queue timeout set to the SLO:
  a request still queued at its deadline is answered DEADLINE_MISSED then (not earlier, as the
  core does, and a batch already sent runs to completion however late it is).

`FifoPolicy` is the other implementation of the core's `Policy` (controller/core.py):
admission, service order, expiry, EXEC planning and (by default no) hot-model replication.
Everything else (models, uploads, workers, results, LOAD planning with LRU eviction, the
planning heap, the timelines and the latency model, the invariants) is the core's code, the
same for both, so the two differ only in what is being compared.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass

from clockwork.common import schema
from clockwork.common.checks import BadMessage
from clockwork.common.config import MS
from clockwork.common.status import Status
from clockwork.controller.batching import Batch, padded_size
from clockwork.controller.core import Core, Policy
from clockwork.controller.heap_entry import Entry
from clockwork.controller.lifecycle import RequestState, Residency
from clockwork.controller.policy import HotModelReplicas
from clockwork.controller.queues import QueueBase, is_live
from clockwork.controller.request import Request
from clockwork.controller.state import Device, Model

NO_WINDOW_NS = 3600 * 1_000_000_000  # a baseline EXEC is never too late for the worker


@dataclass(frozen=True)
class BaselineConfig:
    # Triton's max_batch_size: the most requests dispatched together (capped by the model's
    # profiled batch sizes). 16: the largest size the profiles cover.
    max_batch: int = 16
    # Triton's max_queue_delay: how long the oldest request may wait for a fuller batch while a
    # device is idle. 1 ms: a few requests of a popular model arrive meanwhile, and it is
    # noise against a 100 ms SLO. 0 dispatches at once.
    max_queue_delay_ns: int = 1 * MS
    # Triton's default_timeout_microseconds set to each request's SLO (baseline b).
    queue_timeout: bool = False
    # Give a hot model more replicas the way the core does. Off: the baseline as specified
    # (one copy per model, loaded on a miss); on: isolates the batching/admission policies.
    replicate_hot_models: bool = False


class FifoQueue(QueueBase):
    """The per-model queue in arrival order (QueueBase: push, head, first, drain).

    A deque in arrival order (service) beside the base's heap by deadline (expiry), both with
    lazy deletion. When nothing is live both are cleared, so stale entries never pile up.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fifo: deque[Entry[Request]] = deque()  # arrival order

    def push(self, req: Request) -> None:
        token = self._added(req)
        entry = Entry(req.received_ns, token, req)
        if self._fifo and req.received_ns < self._fifo[-1].key:
            # Put back after a drop: it keeps its place by arrival (rare; linear is fine).
            index = next(i for i, e in enumerate(self._fifo) if e.key > req.received_ns)
            self._fifo.insert(index, entry)
        else:
            self._fifo.append(entry)

    def removed(self, req: Request) -> None:
        super().removed(req)
        if self._live == 0:
            self._fifo.clear()
            self._expire.clear()

    def head(self, limit: int) -> list[Request]:
        """Up to `limit` live requests, oldest first."""
        while self._fifo and not is_live(self._fifo[0]):
            self._fifo.popleft()
        out: list[Request] = []
        for entry in self._fifo:
            if len(out) >= limit:
                break
            if is_live(entry):
                out.append(entry.item)
        return out

    def first(self) -> Request | None:
        head = self.head(1)
        return head[0] if head else None

    def drain(self) -> list[Request]:
        out = self.head(self._live)
        self._fifo.clear()
        self._expire.clear()
        return out


class FifoPolicy(Policy):
    """Baseline (a), or (b) with `BaselineConfig(queue_timeout=True)`: `Core(config, FifoPolicy())`."""

    def __init__(self, baseline: BaselineConfig = BaselineConfig()):
        if baseline.max_batch < 1 or baseline.max_queue_delay_ns < 0:
            raise ValueError("max_batch must be >= 1 and max_queue_delay_ns >= 0")
        self.baseline = baseline
        self._timeouts: list[tuple[int, int, Request]] = []  # (b): (deadline, seq, request), lazily pruned
        self._timeout_seq = itertools.count()
        self._replicas = HotModelReplicas() if baseline.replicate_hot_models else None

    def new_queue(self) -> QueueBase:
        return FifoQueue()

    # ------------------------------------------------------------------ admission: none

    def admit(self, core: Core, client: bytes, request_id: int, msg: schema.Infer, now_ns: int,
              waited_ns: int) -> tuple[Status, str, Request | None]:
        """Only what no system could serve is refused: unknown model, bad input, no worker.
        Time spent in queues before arriving comes out of the SLO budget, as in the core."""
        try:
            model, samples = core.model_and_samples(msg.model, msg.tensors)
        except BadMessage as exc:
            return exc.status, exc.detail, None
        if not model.sizes or next(core.devices_for(model), None) is None:
            return Status.UNAVAILABLE, f"no connected worker has prepared {model.name!r} yet", None
        if samples > model.sizes[-1]:
            return Status.BAD_INPUT, f"{samples} samples exceed the largest batch size {model.sizes[-1]}", None
        return Status.OK, "", Request(request_id, client, model.name, samples, msg.priority, now_ns - waited_ns,
                                      now_ns - waited_ns + msg.slo_ns, msg.tensors,
                                      cold=not core.loaded_somewhere(model))

    # ------------------------------------------------------------------ expiry: only (b), at the deadline

    def queued(self, core: Core, model: Model, req: Request, most_urgent: bool, now_ns: int) -> None:
        if self.baseline.queue_timeout:  # every enqueue, so a request put back keeps its timeout
            heapq.heappush(self._timeouts, (req.deadline_ns, next(self._timeout_seq), req))

    def _time_out(self, core: Core, now_ns: int) -> None:
        """(b): a request still queued at its deadline is answered then; (a) never expires one."""
        while self._timeouts and self._timeouts[0][0] <= now_ns:
            req = heapq.heappop(self._timeouts)[2]
            if req.state is RequestState.QUEUED:
                core.answer(req, Status.DEADLINE_MISSED, "queue timeout (the SLO) reached", now_ns)

    def next_wakeup_ns(self, core: Core, now_ns: int) -> int | None:
        while self._timeouts and self._timeouts[0][2].state is not RequestState.QUEUED:
            heapq.heappop(self._timeouts)  # dispatched or answered: no timeout to watch
        return self._timeouts[0][0] if self._timeouts else None

    def replicate(self, core: Core, now_ns: int) -> None:
        if self._replicas is not None:
            self._replicas(core, now_ns)

    # ------------------------------------------------------------------ the dynamic batcher

    def plan_execs(self, core: Core, now_ns: int) -> None:
        """Requests past their queue timeout are answered first, as Triton's batcher does when it
        forms batches. Then each due device that is idle runs the ready model whose oldest
        request is oldest; a device whose models are all waiting out the queue delay is booked
        for when one is due."""
        self._time_out(core, now_ns)
        for dev in core.due_devices(now_ns):
            if dev.exec_lane.outstanding:
                continue  # busy: its result books it again
            chosen, wake = self._ready_model(core, dev, now_ns)
            if chosen is not None:
                self._dispatch(core, dev, chosen, now_ns)
            elif wake is not None:
                core.book(dev, wake)

    def _ready_model(self, core: Core, dev: Device, now_ns: int) -> tuple[Model | None, int | None]:
        """The model to run now on idle `dev` (oldest request first), else when one will be due."""
        best, best_key, wake = None, None, None
        for name in dev.pending:
            if dev.resident[name].state is not Residency.LOADED:
                continue
            model = core.models[name]
            oldest = model.queue.first()
            if oldest is None:
                continue
            due = oldest.received_ns + self.baseline.max_queue_delay_ns
            if len(model.queue) < self.baseline.max_batch and now_ns < due:
                wake = due if wake is None else min(wake, due)
                continue
            key = (oldest.received_ns, name)
            if best_key is None or key < best_key:
                best, best_key = model, key
        return best, wake

    def _dispatch(self, core: Core, dev: Device, model: Model, now_ns: int) -> None:
        sizes = model.sizes
        limit = min(self.baseline.max_batch, sizes[-1])
        members, samples = [], 0
        for req in model.queue.head(limit):
            if samples + req.samples > limit:
                break
            members.append(req)
            samples += req.samples
        size = padded_size(samples, sizes) or sizes[-1]  # samples <= limit <= sizes[-1]
        exec_ns = core.latency.exec_ns(model.name, size, dev.kind) or 0
        batch = Batch(model.name, tuple(members), size, exec_ns, now_ns + NO_WINDOW_NS)
        core.send_exec(dev, batch, now_ns + core.cfg.dispatch_ns, now_ns)
