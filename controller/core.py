"""The scheduling core: every decision the controller makes, as pure code.

Rules
- Events go in with the current time (`now_ns`, the controller's monotonic clock); effects come
  out (controller/effects.py). No sockets, threads or clock reads here, so the daemon, the tests
  and a virtual-time simulator all drive the same code.
- Devices execute one action at a time per lane. The core keeps a predicted timeline per lane
  (controller/timeline.py) and only sends an EXEC when the lane will be free within the
  schedule-ahead horizon, with a window [earliest, latest]: past `latest` some member of the
  batch would miss its deadline, so the worker drops it instead of running it late.
- Memory is an explicit cache: the core alone decides LOAD and UNLOAD; it evicts only idle
  models (nothing in flight), least recently used first, and counts pages exactly as workers do.

Theory of operation
- The core keeps the state and the effects; a `Policy` (below) makes the decisions: admission,
  service order, batch choice, expiry and replication. Clockwork's is controller/policy.py
  (its admission estimates in controller/admission.py), the FIFO baselines controller/baseline.py.
  Tests check controller/invariants.py after every step, whatever the policy.
- `on_request` absorbs resends of requests in progress or just answered, asks the policy to
  `admit` the rest, and queues what it admits.
- Every device keeps its backlog per priority class, the typical EXEC time of its models'
  queued samples (each model's queue split over its replicas, priced at the batch sizes it
  would run in), updated on every queue and replica change (`_reshare`), so that admission
  reads a device's backlog in O(1). Work of models waiting for a LOAD is kept apart
  (`unplaced_work`).
- `tick` runs the phases in order: housekeeping (every `housekeeping_ns`: drop lost workers,
  lost results and overdue uploads, then the policy's expiry and replication, then release
  idle extra replicas), the policy's EXEC planning on the lanes about to free up, LOADs for
  models with demand and no replica (controller/placement.py).
- Work per event is bounded by what the event touches, not by the cluster's size: devices wait in
  a heap keyed by when their EXEC lane needs planning; each device knows which of its resident
  models have queued requests; models without a replica are kept in their own set.
- `on_result` re-anchors the lane's timeline to what really happened, feeds the latency model
  with successful measurements, answers the batch's requests, or puts them back in the queue
  when the worker dropped the action unexecuted.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from typing import Any, Final, TypeVar

from clockwork.common import schema
from clockwork.common.checks import BadMessage
from clockwork.common.config import SchedulerConfig
from clockwork.common.models import Signature, check_inputs
from clockwork.common.schema import ActionKind
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller import heap_entry, placement
from clockwork.controller.batching import Batch, SplitMemo, split_ns
from clockwork.controller.effects import ActionRecord, Effect, PrepareOn, ToClient, ToWorker, UploadFinished, WorkerLost
from clockwork.controller.heap_entry import Entry
from clockwork.controller.latency import ClientHops, LatencyModel
from clockwork.controller.lifecycle import Residency, RequestState
from clockwork.controller.queues import CLASSES, ByClass, QueueBase
from clockwork.controller.request import Request
from clockwork.controller.state import Action, Device, Model, PendingUpload, Profile, Resident, Worker

T = TypeVar("T")

# Fixed, not configuration: an UNLOAD is never too late to be useful (the memory is free once
# it runs), and one refused BUSY (the model was executing) is retried after a typical EXEC.
UNLOAD_WINDOW_NS: Final = 60 * 1_000_000_000
UNLOAD_RETRY_NS: Final = 5_000_000
# An EXEC that ran more than this many times its planned duration (the tail) is counted as an
# overrun (`exec_overran`): its time was not the model's.
OVERRUN_FACTOR: Final = 2


# Enum members read once a request or a batch: Status and ActionKind are defined in interpreted
# modules, and compiled code reads their members through EnumType's __getattr__ hook (~630
# instructions each; a member of an enum compiled with the core is a native constant). OK serves
# the policies and admission too.
OK: Final = Status.OK
_EXEC: Final = ActionKind.EXEC
_ANSWERED: Final = {s: f"answered_{s.name.lower()}" for s in Status}  # counter names, made once
_REJECTED: Final = {s: f"rejected_{s.name.lower()}" for s in Status}


# ================================================================== the policy seam


class Policy:
    """The decisions a scheduler makes, apart from what the core keeps.

    The core keeps the state (models, queues, workers, devices and their timelines, actions in
    flight), turns decisions into effects and keeps the invariants (controller/invariants.py).
    A policy makes the decisions, at fixed points of the core's event handling:

    | concern | hook | called |
    |---|---|---|
    | service order | `new_queue` | when a model is registered: its request queue |
    | admission | `admit` | for every INFER, before anything is queued |
    | expiry | `queued`, `expire` | after a request enters its queue; in housekeeping |
    | replication | `replicate` | in housekeeping, after `expire` |
    | batch choice | `plan_execs` | every tick, before LOADs are planned |
    | waking up | `next_wakeup_ns` | when the shell asks when to tick next |

    A hook changes the core's state only through the core's methods (`send_exec`, `answer`,
    `book`, `load_somewhere`, ...), so the invariants hold whatever the policy. Clockwork's is
    controller/policy.py; the FIFO baselines are controller/baseline.py.
    """

    def start(self, core: Core) -> None:
        """Called once, by the core this policy decides for (before any event)."""

    def new_queue(self) -> QueueBase:
        """An empty request queue in this policy's service order."""
        raise NotImplementedError

    def admit(self, core: Core, client: bytes, request_id: int, msg: schema.Infer, now_ns: int,
              waited_ns: int) -> tuple[Status, str, Request | None]:
        """The request to queue (Status.OK), or the status and reason to refuse it with at once.
        `waited_ns` (time in queues before the controller read it) comes out of its SLO."""
        raise NotImplementedError

    def queued(self, core: Core, model: Model, req: Request, most_urgent: bool, now_ns: int) -> None:
        """`req` entered `model`'s queue (new, or put back after a drop); `most_urgent`: its
        deadline is now the queue's earliest."""

    def expire(self, core: Core, now_ns: int) -> None:
        """Answer queued requests that should not wait any longer."""

    def replicate(self, core: Core, now_ns: int) -> None:
        """Add replicas where one model's demand outgrows the devices holding it."""

    def plan_execs(self, core: Core, now_ns: int) -> None:
        """Send the EXECs to run next, on the devices whose planning came due."""
        raise NotImplementedError

    def next_wakeup_ns(self, core: Core, now_ns: int) -> int | None:
        """A time this policy must be ticked by, beyond what the core watches; None: none."""
        return None

    def describe(self) -> dict:
        """The policy's own state, for STATUS."""
        return {}


class Core:
    def __init__(self, config: SchedulerConfig, policy: Policy, host: str = ""):
        self.cfg = config
        self.policy = policy
        self.host = host  # the boot id of the controller's host, for WELCOME ("": not said)
        self.latency = LatencyModel(config.latency_window, config.latency_percentile)
        self.models: dict[str, Model] = {}
        self.workers: dict[str, Worker] = {}
        self.actions: dict[int, Action] = {}  # in flight, by action id (= message id)
        self.requests: dict[tuple[bytes, int], Request] = {}  # live, by (client, request id)
        self.answered: dict[tuple[bytes, int], int] = {}  # recently answered -> when
        # The same, oldest first, as (when, id) from _answered_from on (_forget_answered): an
        # OrderedDict's insertion took ~1,600 instructions; so, 459 fewer a request in the
        # issue-19 run (85,729 -> 85,270).
        self._answered_order: list[tuple[int, Any]] = []
        self._answered_from = 0
        self.pending: dict[str, None] = {}  # models with queued requests (an ordered set)
        self.unplaced: dict[str, None] = {}  # pending models with no replica: LOAD candidates
        self.replicated: dict[str, None] = {}  # models on more than one device
        self.uploads: dict[str, PendingUpload] = {}
        self.unplaced_work = ByClass()  # EXEC time queued for models waiting for a LOAD (admission)
        self.device_count = 0  # devices of connected workers
        # Event counts by name (`counters`; STATUS lists them): a plain dict, since a Counter's
        # += took three times as long (a dict subclass goes through generic item access). The
        # four that every request moves are native ints: a dict's update cost ~550 instructions.
        self._counts: dict[str, int] = {}
        self._offered = self._admitted = self._answered_ok = self._met_slo = 0
        # The planning heap: each device booked at most once live (Device.plan_version is the
        # token of its latest booking; the bookings' count makes tokens unique, and ties in time
        # are served in booking order).
        self._due: list[Entry[Device]] = []
        self._bookings = 0
        self._give_ups: list[Entry[None]] = []  # by (give up at, action id), lazily cleaned
        self._next_housekeeping_ns = 0
        # The configured floors of the dispatch and reply allowances, read several times a
        # request: the config is an interpreted dataclass, whose fields compiled code reads by name.
        self.dispatch_floor_ns: Final = config.dispatch_ns
        self.reply_floor_ns: Final = config.reply_ns
        # The same for the limits and switches read per request, per planned EXEC or per result.
        self.record_actions: Final = config.record_actions
        self.max_queue_per_model: Final = config.max_queue_per_model
        self.admission_replicas: Final = config.admission_replicas
        self.schedule_ahead_ns: Final = config.schedule_ahead_ns
        self.max_loads_per_device: Final = config.max_loads_per_device
        # The smallest of the workers' dispatch allowances (Worker.dispatch_ns), for the
        # estimates that cannot know which worker will run the work.
        self.dispatch_ns = config.dispatch_ns
        # Admission prices queued work at typical durations and adds one allowance for the tail
        # (refresh_allowances), never less than the request's own EXEC tail above its typical
        # time (admission.own_exec_ns).
        self.finish_tail_ns = 0
        self.reply_ns = config.reply_ns  # the reply allowance: its floor plus the measured return hop
        self.client_hops = ClientHops(config.latency_percentile)  # what replaces the floor per client
        # Requests are planned to finish by a deadline that keeps the reply allowance (its tail)
        # free; a request is given up only once it cannot finish by when its reply would
        # typically still reach the client: this much later (the return hop's p99 over its p50,
        # and the client hop's, the least any client with figures has).
        # Giving up at the planning deadline dropped, on a noisy CPU, EXECs that would typically
        # have been answered with milliseconds to spare.
        self.give_up_slack_ns = 0
        self._next_refresh_ns = 0
        self._next_release_ns = 0
        self.started_ns: int | None = None  # first event seen: workers get a timeout's grace to (re)join
        self._ids = itertools.count(1)
        self._out: list[Effect] = []
        policy.start(self)

    def _emit(self, effect: Effect) -> None:
        self._out.append(effect)

    def _take(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    # ================================================================== models

    def add_model(self, name: str, fmt: str, signature: Signature) -> None:
        """A model known from the registry at start-up (no client waits for it)."""
        self.models[name] = Model(name, fmt, signature, queue=self.policy.new_queue())

    def on_upload(self, name: str, fmt: str, signature: Signature, client: bytes, request_id: int,
                  now_ns: int) -> list[Effect]:
        old = self.models.get(name)
        if old is not None and (old.removing or name in self.uploads):
            self._emit(UploadFinished(client, request_id, name, Status.BUSY, "the model is being removed or uploaded"))
            return self._take()
        self.models[name] = Model(name, fmt, signature, queue=self.policy.new_queue())
        waiting = {w.name for w in self.workers.values() if fmt in w.formats}
        for worker in sorted(waiting):
            self._prepare_on(worker, self.models[name])
        if waiting:
            self.uploads[name] = PendingUpload(client, request_id, waiting, now_ns + self.cfg.upload_wait_ns)
        else:
            self._emit(UploadFinished(client, request_id, name, Status.OK,
                                      f"registered; no connected worker serves format {fmt!r} yet"))
        return self._take()

    def on_remove(self, name: str, now_ns: int) -> tuple[Status, list[Effect]]:
        model = self.models.get(name)
        if model is None or model.removing:
            return Status.MODEL_NOT_FOUND, []
        model.removing = True
        for req in model.queue.drain():
            self.answer(req, Status.MODEL_NOT_FOUND, "the model was removed", now_ns)
        upload = self.uploads.pop(name, None)
        if upload:
            self._emit(UploadFinished(upload.client, upload.request_id, name, Status.MODEL_NOT_FOUND,
                                      "removed while it was being prepared"))
        self._finish_removal(model)
        return Status.OK, self._take()

    def _finish_removal(self, model: Model) -> None:
        """Drop the model everywhere once nothing of it is in flight."""
        if not model.removing or model.in_flight:
            return
        for dev in list(model.replicas.values()):
            self._evict(dev, model.name)
        for worker in self.workers.values():
            if model.name in worker.prepared or model.name in model.profiles:
                worker.prepared.discard(model.name)
                self._emit(ToWorker(worker.name, next(self._ids), schema.Drop(model_id=model.name)))
        self.latency.forget(model.name)
        del self.models[model.name]

    def model_info(self, name: str) -> dict:
        model = self.models.get(name)
        if model is None:
            return {}
        profile = next(iter(model.profiles.values()), None)
        return {
            "prepared_on": sorted(model.profiles),
            "load_ms": profile.load_ns / 1e6 if profile else None,
            "exec_ms": {str(b): ns / 1e6 for b, ns in sorted(profile.exec_ns.items())} if profile else {},
            "weights_bytes": profile.weights_bytes if profile else None,
            "device_kinds": list(model.kinds),
            "runtimes": sorted({self.workers[w].runtime for w in model.profiles if w in self.workers}),
        }

    def _prepare_on(self, worker: str, model: Model) -> None:
        model.preparing.add(worker)
        self._emit(PrepareOn(worker, next(self._ids), model.name))

    def _refresh_model(self, model: Model) -> None:
        """Recompute what the profiles imply: usable batch sizes and the memory a replica takes."""
        sizes: set[int] | None = None
        for profile in model.profiles.values():
            sizes = set(profile.exec_ns) if sizes is None else sizes & set(profile.exec_ns)
        model.sizes = sorted(s for s in sizes or () if s <= model.signature.max_batch)
        model.kinds = sorted({dev.kind for name in model.profiles if name in self.workers
                              for dev in self.workers[name].devices.values()})
        model.weights_bytes = max((p.weights_bytes for p in model.profiles.values()), default=0)

    # ================================================================== the queue's bookkeeping

    def _enqueue(self, model: Model, req: Request, now_ns: int) -> None:
        head = model.queue.earliest_deadline()
        model.queue.push(req)
        self.policy.queued(self, model, req, head is None or req.deadline_ns < head, now_ns)
        newly_pending = model.name not in self.pending
        if newly_pending:
            self.pending[model.name] = None
            if not model.replicas:
                self.unplaced[model.name] = None
        self._reshare(model, classes=(req.priority,))
        for devs in model.replicas_by_kind.values():  # lists: compiled, they iterate natively
            for dev in devs:
                if newly_pending:  # else every replica lists it already (see _place)
                    dev.pending[model.name] = None
                if dev.booked_ns is None:  # a booked device plans all it has pending when due
                    self.plan_device_soon(dev, now_ns)

    def _dequeued(self, model: Model, requests: tuple[Request, ...]) -> None:
        """`requests` left the queue (dispatched or answered)."""
        for req in requests:
            model.queue.removed(req)
        self._reshare(model, classes={req.priority for req in requests})
        if not model.queue:
            self.pending.pop(model.name, None)
            self.unplaced.pop(model.name, None)
            for dev in model.replicas.values():
                dev.pending.pop(model.name, None)

    def _reshare(self, model: Model, added: Device | None = None, removed: Device | None = None,
                 classes: Iterable[int] | None = None) -> None:
        """Keep every replica's backlog holding the time its share of the model's queue takes,
        per priority class (after the queue changed in `classes`, or for every class with queued
        work after a replica was `added` or `removed`); a model with no replica counts in
        `unplaced_work` instead. A class with nothing queued has no share anywhere. Replicas
        of one kind hold the same share (Model.backlog_shares), so a change moves each of their
        backlogs by one difference, worked out once per kind."""
        shares = model.backlog_shares
        if added is not None and added.kind in shares:  # its kind's share as it stands; the update below moves it with the rest
            added.backlog.add_each(shares[added.kind], 1)
        if removed is not None:
            if removed.kind in shares:
                removed.backlog.add_each(shares[removed.kind], -1)
            if removed.kind not in model.replicas_by_kind:
                shares.pop(removed.kind, None)
        waiting = model.queue.samples.values
        if classes is None:
            classes = [c for c in range(CLASSES) if waiting[c] or model.unplaced_ns[c]]
        for c in classes:
            cost = self.drain_ns(model, waiting[c], model.kinds[0]) if not model.replicas and model.kinds else 0
            self.unplaced_work.add(c, cost - model.unplaced_ns[c])
            model.unplaced_ns[c] = cost
        if not model.replicas:
            return
        for c in classes:
            samples = waiting[c] / len(model.replicas)
            for kind, devs in model.replicas_by_kind.items():
                share = shares.get(kind)
                if share is None:
                    share = shares[kind] = ByClass()
                delta = self.drain_ns(model, samples, kind) - share.values[c]
                if delta:
                    share.add(c, delta)
                    for dev in devs:
                        dev.backlog.add(c, delta)

    def drain_ns(self, model: Model, samples: float, kind: str) -> int:
        """Predicted EXEC time of `samples` queued samples of `model` on a device of `kind`,
        batched as they would run: full batches of the largest size, then the rest (`split_ns`;
        a fraction of a sample, a replica's share of a small queue, costs its fraction). Worked
        out once per model, kind and latency figures (SplitMemo): admission and every change of
        a queue ask, with the same figures, several times a request."""
        if samples <= 0 or not model.sizes:
            return 0
        memo = self.split_memo(model, kind)
        # Native float arithmetic compiled (divmod() and a float times an int are generic calls),
        # to divmod's digits: mypyc's // and % are CPython's float_divmod.
        largest = float(model.sizes[-1])
        full, rest = samples // largest, samples % largest
        ns = full * float(memo.full_ns)
        if rest:
            count = max(1, math.ceil(rest))
            split = memo.typical.get(count)
            if split is None:
                # The latency model, not its bound method: compiled, a method called on it is a native call.
                name, latency = model.name, self.latency
                split = split_ns(count, model.sizes, lambda size: latency.typical_exec_ns(name, size, kind), memo.typical)
            ns += min(rest, 1.0) * (0.0 if split == math.inf else split)
        return int(ns)

    def split_memo(self, model: Model, kind: str) -> SplitMemo:
        """`model`'s batch splits on `kind` as worked out so far with its current figures."""
        generation = self.latency.generation(model.name)
        memo = model.split_memos.get(kind)
        if memo is None or memo.generation != generation or memo.sizes is not model.sizes:
            full_ns = self.latency.typical_exec_ns(model.name, model.sizes[-1], kind) or 0
            memo = model.split_memos[kind] = SplitMemo(generation, model.sizes, full_ns)
        return memo

    def _place(self, dev: Device, model: Model, res: Resident) -> None:
        dev.resident[model.name] = res
        dev.used_pages += res.pages
        model.replicas[dev.key] = dev
        model.replicas_by_kind.setdefault(dev.kind, []).append(dev)
        if len(model.replicas) > 1:
            self.replicated[model.name] = None
        self._reshare(model, added=dev)
        self.unplaced.pop(model.name, None)
        if model.name in self.pending:
            dev.pending[model.name] = None

    def _evict(self, dev: Device, name: str) -> None:
        """Forget that `dev` holds `name` (its UNLOAD, if any, is sent by the caller)."""
        res = dev.resident.pop(name)
        res.move(Residency.ABSENT)
        dev.used_pages -= res.pages
        dev.pending.pop(name, None)
        model = self.models.get(name)
        if model is not None:
            if model.replicas.pop(dev.key, None) is not None:
                of_kind = model.replicas_by_kind[dev.kind]
                of_kind.remove(dev)
                if not of_kind:
                    del model.replicas_by_kind[dev.kind]
            self._reshare(model, removed=dev)
            if len(model.replicas) < 2:
                self.replicated.pop(name, None)
            if name in self.pending and not model.replicas:
                self.unplaced[name] = None

    def refresh_allowances(self) -> None:
        """The dispatch and reply allowances, the finish tail and the give-up slack, from what
        the latency model holds now (every refresh, and when admission doubts its estimates)."""
        pct = self.cfg.latency_percentile
        for worker in self.workers.values():
            late = self.latency.start_lateness_ns(worker.name, pct)
            worker.dispatch_ns = min(self.cfg.dispatch_ns + late, self.cfg.max_dispatch_ns)
            worker.turnaround_ns = self.latency.turnaround_ns(worker.name)
        self.dispatch_ns = min((w.dispatch_ns for w in self.workers.values()), default=self.cfg.dispatch_ns)
        back = typical_back = 0  # the way back's tail and typical, the longest of the workers'
        for w in self.workers:
            tail, typical = self.latency.return_ns(w, (pct, 50))
            back, typical_back = max(back, tail), max(typical_back, typical)
        self.reply_ns = min(self.cfg.reply_ns + back, self.cfg.max_reply_ns)
        back_kept = self.reply_ns - self.cfg.reply_ns  # the way back's tail as the reply allowance keeps it
        # One tail for the whole way: how much later than their typical end EXECs' results have
        # reached the controller (p99), less the way back's own tail, which the reply allowance
        # keeps free already. On a busy 2-core host the lanes' lateness and the way back each had
        # a p99 near 5 ms, seldom both at once.
        self.finish_tail_ns = max(0, self.latency.finish_tail_ns(pct) - back_kept)
        # The way on to the client is planned at its tail too (reply_ns_for): a typical reply
        # leaves every client with figures at least its least excess more. Never more than the
        # floor, which a client without figures has planned for its hop: one client's long
        # tail (seconds, from a client that paused) must not keep everyone's hopeless requests.
        self.give_up_slack_ns = max(0, back_kept - typical_back) + min(self.client_hops.least_excess_ns,
                                                                       self.reply_floor_ns)

    def reply_ns_for(self, hop: int | None) -> int:
        """The reply allowance with `hop` planned for the way on to the client (None: the floor)
        after the way back from the worker's tail; admission.reply_allowance_ns says which hop."""
        if hop is None:
            return self.reply_ns
        return min(self.reply_ns - self.reply_floor_ns + hop, self.cfg.max_reply_ns)

    def dispatch_of(self, dev: Device) -> int:
        """The allowance from sending an EXEC to `dev`'s lane starting it (its worker's)."""
        return self.workers[dev.worker].dispatch_ns

    def ahead_ns(self, dev: Device) -> int:
        """How far ahead of `dev`'s lane freeing up its next EXEC is sent: the configured horizon
        plus the lateness learned into its worker's dispatch allowance, so that on a busy or
        distant host the next action is already at the worker when the lane frees, instead of
        the lane idling for it."""
        return self.schedule_ahead_ns + self.dispatch_of(dev) - self.dispatch_floor_ns

    def _live(self, dev: Device) -> bool:
        """The device belongs to a connected worker that is not suspected of losing work."""
        worker = self.workers.get(dev.worker)
        return worker is not None and not worker.suspect and worker.devices.get(dev.device_id) is dev

    def plan_device_soon(self, dev: Device, now_ns: int) -> None:
        """Book the device in the planning heap for when its EXEC lane nears free."""
        if dev.pending and self._live(dev):
            self.book(dev, dev.exec_lane.free_at(now_ns) - self.ahead_ns(dev))

    def book(self, dev: Device, at_ns: int) -> None:
        """Plan `dev` at `at_ns`, unless it is booked no later already (then that booking
        serves: planning early finds the lane busy and books again), so a burst of requests
        for a model on many devices does not push a heap entry per device per request."""
        if dev.booked_ns is not None and dev.booked_ns <= at_ns:
            return
        self._bookings += 1
        dev.plan_version = self._bookings
        dev.booked_ns = at_ns
        heap_entry.push(self._due, Entry(at_ns, self._bookings, dev))

    def planning_due(self, now_ns: int) -> bool:
        """Some device's booking may have come due (most ticks find none: checked first, cheaply)."""
        return bool(self._due) and self._due[0].key <= now_ns

    def due_devices(self, now_ns: int):
        """The live devices whose booking has come due, each unbooked as it is handed out."""
        while self._due and self._due[0].key <= now_ns:
            entry = heap_entry.pop(self._due)
            dev = entry.item
            if entry.token == dev.plan_version:  # else a newer booking replaced this one
                dev.booked_ns = None
                if self._live(dev):
                    yield dev

    # ================================================================== requests

    def on_request(self, client: bytes, request_id: int, msg: schema.Infer, now_ns: int,
                   waited_ns: int = 0, reply_seen_ns: int | None = None) -> list[Effect]:
        """`waited_ns`: how long the request sat in queues before reaching us (the shell
        estimates it from the client's send stamps); it comes out of the SLO budget.
        `reply_seen_ns`: when the client received the reply it reports (msg.last_reply_id), on
        our clock at the latest (the shell translates it), for ClientHops."""
        if self.started_ns is None:
            self.started_ns = now_ns
        if reply_seen_ns is not None:
            last_reply_id = msg.last_reply_id
            answered_ns = self.answered.get((client, last_reply_id)) if last_reply_id else None
            if answered_ns is not None:
                self.client_hops.observe(client, last_reply_id, reply_seen_ns - answered_ns)
        # Any, so that it is one boxed tuple: compiled, a tuple-typed local is a struct, boxed
        # anew (and hashed anew) for each dictionary it is looked up in.
        key: Any = (client, request_id)
        if key in self.requests or key in self.answered:
            # A client's resend of a request still being served or just answered (it retries when
            # a reply is slow, in case we restarted and lost it): the original's answer serves both.
            self.count("duplicates_absorbed")
            return []
        self._offered += 1
        status, detail, req = self.policy.admit(self, client, request_id, msg, now_ns, waited_ns)
        if status is not OK or req is None:  # an OK always carries its request
            self.count(_REJECTED[status])
            self._emit(ToClient(client, request_id, reply_without_outputs(status, detail)))
            return self._take()
        self._admitted += 1
        self.requests[key] = req
        self._enqueue(self.models[req.model], req, now_ns)
        return self._take()

    def model_and_samples(self, name: str, tensors: tuple[Tensor, ...]) -> tuple[Model, int]:
        """The model an INFER names and how many samples its tensors carry; BadMessage (with
        its reason code) if the model is unknown or the tensors do not fit its signature."""
        model = self.models.get(name)
        if model is None or model.removing:
            raise BadMessage(Status.MODEL_NOT_FOUND, f"no model named {name!r}")
        samples = samples_in_order(model.inputs, model.max_batch, tensors)
        return model, samples if samples is not None else check_inputs(model.signature, tensors)

    def refuse_stale(self, client: bytes, request_id: int, waited_ns: int, slo_ns: int) -> list[Effect]:
        """A request that waited in queues for much of its SLO (the shell decides how much),
        refused before it is even decoded: when the controller falls behind, this keeps the cost
        of each hopeless request small, so the queue in front of it drains and fresh requests
        are served again."""
        return self._refuse_unread(client, request_id, "rejected_stale", Status.WOULD_MISS_DEADLINE,
                                   stale_detail(waited_ns, slo_ns))

    def refuse_shed(self, client: bytes, request_id: int, waited_ns: int) -> list[Effect]:
        """A request refused unread because the controller is behind on its input
        (common/shedding.py): QUEUE_FULL, as "too many requests right now"."""
        return self._refuse_unread(client, request_id, "rejected_shed", Status.QUEUE_FULL,
                                   f"the controller is {waited_ns / 1e6:.1f} ms behind on its input and sheds load "
                                   "to catch up; retry shortly")

    def _refuse_unread(self, client: bytes, request_id: int, counter: str, status: Status, detail: str) -> list[Effect]:
        self._offered += 1
        self.count(counter)
        self._emit(ToClient(client, request_id, reply_without_outputs(status, detail)))
        return self._take()

    def on_cancel(self, client: bytes, request_id: int, now_ns: int) -> tuple[bool, str, list[Effect]]:
        req = self.requests.get((client, request_id))
        if req is None:
            return False, "no such request in progress", []
        if req.state is not RequestState.QUEUED:
            return False, "already executing", []
        self.answer(req, Status.CANCELLED, "cancelled by the client", now_ns)
        return True, "", self._take()

    def answer(self, req: Request, status: Status, detail: str, now_ns: int) -> None:
        """Answer `req` without outputs (refused after admission, failed, removed, cancelled)."""
        total_ns = max(0, now_ns - req.received_ns)
        self._send_answer(req, status, reply_without_outputs(status, detail, req.cold, total_ns), now_ns)

    def _send_answer(self, req: Request, status: Status, body: schema.InferReply, now_ns: int) -> None:
        """Send `body` (whose status is `status`: the reply is an interpreted class, read by
        name) to `req`'s client and keep the books: the request leaves, the counters count it
        (met_slo for an OK in time)."""
        if req.state is RequestState.QUEUED and req.model in self.models:
            self._dequeued(self.models[req.model], (req,))
        req.move(RequestState.ANSWERED)
        key: Any = (req.client, req.request_id)  # one boxed tuple for both dicts (see on_request)
        self.requests.pop(key, None)
        self.answered[key] = now_ns
        self._answered_order.append((now_ns, key))
        model = self.models.get(req.model)
        if model is not None:
            model.answered += 1
        if status is not OK:
            self.count(_ANSWERED[status])
        else:
            self._answered_ok += 1
            if self.in_time(req, now_ns):
                self._met_slo += 1
                if model is not None:
                    model.met_slo += 1
                if req.dry_run_refused:
                    self.count("dry_run_refused_met_slo")
            else:
                self.count("answered_late")
        self._emit(ToClient(req.client, req.request_id, body))

    def count(self, name: str) -> None:
        """One more of the events `name` counts (Core.counters)."""
        counts = self._counts
        counts[name] = counts.get(name, 0) + 1

    @property
    def counters(self) -> dict[str, int]:
        """Every event count by name, each once it has happened."""
        out = dict(self._counts)
        for name, n in (("requests_offered", self._offered), ("requests_admitted", self._admitted),
                        ("answered_ok", self._answered_ok), ("met_slo", self._met_slo)):
            if n:
                out[name] = n
        return out

    def in_time(self, req: Request, now_ns: int) -> bool:
        """Whether an answer sent now reaches the client by its SLO, with the hop to the client
        that the request was planned with (the floor, or the client's measured hop) to spare:
        what `met_slo` counts. The planning deadline keeps the whole reply allowance free, the
        way back from the worker's tail included (as measured now, which a refresh may have
        moved since the request came); an answer sent past it, with that way behind it, still
        reaches the client in time."""
        return now_ns <= req.deadline_ns + self.reply_ns - self.reply_floor_ns

    # ================================================================== workers

    def on_hello(self, name: str, msg: schema.Hello, now_ns: int) -> list[Effect]:
        if name in self.workers:
            self._lose_worker(self.workers[name], now_ns, "the worker restarted")
        devices = {
            d["device_id"]: Device(name, d["device_id"], d["kind"], d["memory_bytes"] // d["page_bytes"], d["page_bytes"])
            for d in msg.devices
        }
        worker = self.workers[name] = Worker(name, msg.runtime, tuple(msg.formats), devices, now_ns,
                                             dispatch_ns=self.cfg.dispatch_ns)
        self.device_count += len(devices)
        self.count("workers_joined")
        self._emit(ToWorker(name, next(self._ids), schema.Welcome(heartbeat_interval_ns=self.cfg.heartbeat_interval_ns,
                                                                   host=self.host)))
        # Start from a clean slate: the worker released what it held before saying HELLO, and
        # everything is prepared again (a worker answers PREPARE of bytes it holds at once).
        for model in self.models.values():
            if not model.removing and model.format in worker.formats:
                self._prepare_on(name, model)
        return self._take()

    def on_heartbeat(self, name: str, msg_id: int, sent_ns: int, lanes_alive: bool, now_ns: int,
                     unheard_ns: int = 0) -> list[Effect]:
        """`unheard_ns`: how long the worker had heard nothing from us when it sent this (its
        clock). Past the worker timeout it hears none of what we send: it is lost, as a silent
        worker would be, and rejoins with HELLO once it hears us again."""
        worker = self.workers.get(name)
        if worker is not None and unheard_ns > self.cfg.worker_timeout_ns:
            self._lose_worker(worker, now_ns, f"its heartbeats arrive, but it has heard nothing from the controller "
                                              f"for {unheard_ns / 1e6:.0f} ms")
            worker = None
        if worker is None:
            self._emit(ToWorker(name, next(self._ids), schema.Error(status=Status.WORKER_LOST, detail="unknown worker; say HELLO"), msg_id))
            return self._take()
        if lanes_alive:  # a stuck lane stops refreshing liveness, so the worker times out
            self._heard_from(worker, now_ns)
        self._emit(ToWorker(name, next(self._ids), schema.HeartbeatAck(echo_sent_ns=sent_ns), msg_id))
        return self._take()

    def on_prepared(self, name: str, msg: schema.Prepared, now_ns: int) -> list[Effect]:
        worker = self.workers.get(name)
        model = self.models.get(msg.model_id)
        if worker is None:
            return []
        self._heard_from(worker, now_ns)
        if model is None or model.removing:
            self._emit(ToWorker(name, next(self._ids), schema.Drop(model_id=msg.model_id)))
            return self._take()
        model.preparing.discard(name)
        upload = self.uploads.get(model.name)
        if msg.status is Status.OK and msg.exec_ns:
            model.profiles[name] = Profile(msg.load_ns, dict(msg.exec_ns), msg.weights_bytes)
            worker.prepared.add(model.name)
            self._refresh_model(model)
            for kind in {d.kind for d in worker.devices.values()}:
                self.latency.seed(model.name, kind, msg.load_ns, msg.exec_ns)
        elif upload is not None:
            upload.failures.append(f"{name}: {msg.status.name}: {msg.detail}")
        if upload is not None:
            upload.waiting.discard(name)
            if not upload.waiting:
                self._finish_upload(model)
        return self._take()

    def _heard_from(self, worker: Worker, now_ns: int) -> None:
        worker.last_seen_ns = now_ns
        if worker.suspect:
            worker.suspect = False
            for dev in worker.devices.values():
                self.plan_device_soon(dev, now_ns)

    def _finish_upload(self, model: Model) -> None:
        upload = self.uploads.pop(model.name)
        if model.profiles or not upload.failures:
            detail = "; ".join(upload.failures)
            self._emit(UploadFinished(upload.client, upload.request_id, model.name, Status.OK, detail))
            return
        del self.models[model.name]
        self._emit(UploadFinished(upload.client, upload.request_id, model.name, Status.BAD_MODEL,
                                  "no worker could prepare the model: " + "; ".join(upload.failures)))

    def _lose_worker(self, worker: Worker, now_ns: int, why: str) -> None:
        del self.workers[worker.name]
        self.latency.forget_worker(worker.name)
        self.device_count -= len(worker.devices)
        self.count("workers_lost")
        self._emit(WorkerLost(worker.name, why))
        for action_id in [a for a, act in self.actions.items() if act.device.worker == worker.name]:
            action = self.actions.pop(action_id)
            if action.kind is ActionKind.EXEC:
                self._exec_ended(action)
                self._requeue(action.requests, now_ns)
            elif action.kind is ActionKind.LOAD:
                action.device.loads_in_flight -= 1
        for dev in worker.devices.values():
            for name in list(dev.resident):
                self._evict(dev, name)
        for model in self.models.values():
            model.preparing.discard(worker.name)
            if model.profiles.pop(worker.name, None) is not None:
                self._refresh_model(model)
        for name in list(self.uploads):
            upload = self.uploads[name]
            upload.waiting.discard(worker.name)
            if not upload.waiting:
                upload.failures.append(f"{worker.name}: {why}")
                self._finish_upload(self.models[name])

    # ================================================================== results

    def on_result(self, name: str, action_id: int, msg: schema.Result, now_ns: int) -> list[Effect]:
        worker = self.workers.get(name)
        if worker is not None:
            self._heard_from(worker, now_ns)
        action = self.actions.get(action_id)
        if action is None or action.device.worker != name:
            self.count("results_unknown")
            return []
        del self.actions[action_id]
        # The RESULT is an interpreted class: its fields are read from its __dict__ (one generic
        # read, then a dict look-up each), not each by name (~280 instructions a read, a dozen
        # reads an EXEC's result).
        fields: dict[str, Any] = msg.__dict__
        status: Status = fields["status"]
        if self.record_actions:
            dev = action.device
            self._emit(ActionRecord(action_id, action.kind, dev.worker, dev.device_id, action.model,
                                    action.batch_size, action.sent_ns, fields["begin_ns"], fields["end_ns"],
                                    action.expected_ns, fields["duration_ns"], status.name))
        end_ns: int = fields["end_ns"] if status is OK else now_ns
        if action.kind is _EXEC:
            action.device.exec_lane.completed(action_id, end_ns)
            self._exec_result(action, status, fields, now_ns)
        else:
            action.device.load_lane.completed(action_id, end_ns)
            if action.kind is ActionKind.LOAD:
                self._load_result(action, msg, now_ns)
            elif status is Status.BUSY:  # it was executing; the worker holds it until unloaded
                self._send_unload(action.device, action.model, now_ns + UNLOAD_RETRY_NS, evict=False)
        self.plan_device_soon(action.device, now_ns)  # its timeline moved
        return self._take()

    def _exec_ended(self, action: Action) -> None:
        model = self.models.get(action.model)
        res = action.device.resident.get(action.model)
        if res is not None:
            res.in_flight -= 1
        if model is not None:
            model.in_flight -= 1
            self._finish_removal(model)

    def _exec_result(self, action: Action, status: Status, result: dict[str, Any], now_ns: int) -> None:
        """`result`: the RESULT's fields (on_result), `status` among them."""
        self._exec_ended(action)
        if status is OK:
            model = self.models.get(action.model)
            if model is not None:
                model.refused_unseen = 0
            duration_ns: int = result["duration_ns"]
            disturbed: bool = result["disturbed"]
            self.latency.observe_exec(action.model, action.batch_size, action.device.kind, duration_ns,
                                      action.expected_ns, disturbed)
            if 0 < OVERRUN_FACTOR * action.expected_ns < duration_ns:
                # A stall (on a CPU host, the lane's core or its GIL taken for milliseconds):
                # rare enough to vanish from the error percentiles, yet the requests queued
                # behind it at the edge of their budget miss.
                self.count("exec_overran")
            self.latency.observe_hops(action.device.worker, action.sent_ns, action.planned_start_ns,
                                      result["begin_ns"], result["end_ns"], now_ns)
            self._lane_gap(action, result["begin_ns"], result["end_ns"], disturbed)
            self.latency.observe_finish(action.typical_end_ns, now_ns, disturbed)
            action.device.exec_busy_ns += duration_ns
            sm_clock_mhz: int = result["sm_clock_mhz"]
            if sm_clock_mhz:
                action.device.sm_clock_mhz = sm_clock_mhz
            self._answer_batch(action, result, now_ns)
        elif status in (Status.TOO_LATE, Status.TOO_EARLY, Status.NOT_LOADED, Status.BUSY):
            self.count(f"exec_dropped_{status.name.lower()}")
            self._requeue(action.requests, now_ns)
        else:
            self.count("exec_failed")
            for req in action.requests:
                self.answer(req, status, result["detail"] or "the worker failed to execute the batch", now_ns)

    def _lane_gap(self, action: Action, begin_ns: int, end_ns: int, disturbed: bool) -> None:
        """The EXEC lane's gap before this run, where work for it was waiting. Ready at the
        worker (by the controller's reckoning: its earliest start, or its send plus the dispatch
        floor) before the previous run ended, the EXEC waited on the worker: the lane's
        turnaround, measured here (on a 2-core host ~35 us an action, 4% of a 0.8 ms CNN's run,
        which a backlog priced at run times alone leaves out), or a stall of its host. Not
        ready by then though its requests were here, it waited on the controller (planning,
        sending, the hop) from when both the lane and its first request were there. A lane with
        nothing to do counts in neither."""
        dev = action.device
        previous = dev.exec_end_ns
        dev.exec_end_ns = end_ns
        if not previous:
            return
        if action.ready_ns <= previous:
            if begin_ns > previous:
                dev.lane_idle_worker_ns += begin_ns - previous
            if not disturbed:
                self.latency.observe_turnaround(dev.worker, begin_ns - previous)
            return
        first = begin_ns
        for req in action.requests:
            if req.received_ns < first:
                first = req.received_ns
        waiting_from = first if first > previous else previous
        if begin_ns > waiting_from:
            dev.lane_idle_controller_ns += begin_ns - waiting_from

    def _answer_batch(self, action: Action, result: dict[str, Any], now_ns: int) -> None:
        """Answer each request of an EXEC that ran with its rows of the outputs and where its
        time went (the reply's hop-by-hop fields); `result`: the RESULT's fields (on_result)."""
        offset = 0
        requests = action.requests
        samples = sum(req.samples for req in requests)
        begin_ns: int = result["begin_ns"]
        end_ns: int = result["end_ns"]
        duration_ns: int = result["duration_ns"]
        results: tuple[Tensor, ...] = result["tensors"]
        # A batch of one request whose samples are every row of every output answers with the
        # outputs as they came; any other is cut into each request's rows.
        whole = len(requests) == 1 and all(_rows_of(t) == samples for t in results)
        outputs = [] if whole else [_Rows(t) for t in results]
        # The fields every reply of the batch shares, copied for each (a copy is a third of
        # building the twelve anew); the request's own are set on the copy.
        shared: dict[str, Any] = {
            "status": OK, "detail": "", "queue_ns": 0, "exec_ns": duration_ns, "total_ns": 0, "lane_start_ns": 0,
            "lane_end_ns": 0, "batch_size": action.batch_size, "batch_samples": samples, "cold_start": False,
            "worker": action.device.worker, "tensors": results}
        for req in requests:
            try:
                tensors = results if whole else tuple(rows.take(offset, req.samples) for rows in outputs)
            except ValueError as exc:
                self.answer(req, Status.RUNTIME_ERROR, f"bad outputs from the worker: {exc}", now_ns)
            else:
                received = req.received_ns
                fields = shared.copy()
                fields["queue_ns"] = req.dispatched_ns - received
                fields["total_ns"] = max(0, now_ns - received)
                fields["lane_start_ns"] = max(0, begin_ns - received)
                fields["lane_end_ns"] = max(0, end_ns - received)
                fields["cold_start"] = req.cold
                fields["tensors"] = tensors
                self._send_answer(req, OK, made(schema.InferReply, fields), now_ns)
            offset += req.samples

    def _requeue(self, requests: list[Request], now_ns: int) -> None:
        for req in requests:
            model = self.models.get(req.model)
            if model is None or model.removing:
                self.answer(req, Status.MODEL_NOT_FOUND, "the model was removed", now_ns)
                continue
            req.move(RequestState.QUEUED)
            self._enqueue(model, req, now_ns)

    def _load_result(self, action: Action, msg: schema.Result, now_ns: int) -> None:
        dev = action.device
        dev.loads_in_flight -= 1
        res = dev.resident.get(action.model)
        if res is None or res.state is not Residency.LOADING:
            return
        if msg.status in (Status.OK, Status.ALREADY_LOADED):  # either way it is resident, as planned
            res.move(Residency.LOADED)
            res.last_used_ns = now_ns
            if msg.status is Status.OK:
                self.latency.observe_load(action.model, dev.kind, msg.duration_ns, action.expected_ns)
        else:
            self.count(f"load_failed_{msg.status.name.lower()}")
            self._evict(dev, action.model)

    # ================================================================== tick

    def tick(self, now_ns: int) -> list[Effect]:
        if self.started_ns is None:
            self.started_ns = now_ns
        if now_ns >= self._next_housekeeping_ns:
            self._housekeeping(now_ns)
        self.policy.plan_execs(self, now_ns)
        self._plan_loads(now_ns)
        return self._take()

    def _housekeeping(self, now_ns: int) -> None:
        self._next_housekeeping_ns = now_ns + self.cfg.housekeeping_ns
        if now_ns >= self._next_refresh_ns:
            self._next_refresh_ns = now_ns + self.cfg.refresh_ns
            self.latency.refresh()
            self.client_hops.refresh()
            self.refresh_allowances()
        self._expire_workers(now_ns)
        self._expire_actions(now_ns)
        self._expire_uploads(now_ns)
        self._forget_answered(now_ns)
        self.policy.expire(self, now_ns)
        self.policy.replicate(self, now_ns)
        self._release_idle_replicas(now_ns)

    def _expire_workers(self, now_ns: int) -> None:
        for worker in list(self.workers.values()):
            if now_ns - worker.last_seen_ns > self.cfg.worker_timeout_ns:
                self._lose_worker(worker, now_ns, "no heartbeat")

    def _track(self, action: Action) -> None:
        self.actions[action.action_id] = action
        heap_entry.push(self._give_ups, Entry(action.give_up_ns, action.action_id, None))

    def _expire_actions(self, now_ns: int) -> None:
        """A result that never came (lost message, wedged runtime) must not strand requests:
        past its give-up time the action counts as dropped, its requests go back to the queue
        (where expiry answers the ones that can no longer make it), its lane is freed."""
        while self._give_ups and self._give_ups[0].key < now_ns:
            action = self.actions.pop(heap_entry.pop(self._give_ups).token, None)
            if action is None:
                continue  # its result came
            self.count(f"{action.kind}_results_lost")
            dev = action.device
            worker = self.workers.get(dev.worker)
            if worker is not None and action.kind is not ActionKind.UNLOAD and worker.last_seen_ns <= action.sent_ns:
                worker.suspect = True  # silent since we sent it: probably frozen or cut off
            if action.kind is ActionKind.EXEC:
                dev.exec_lane.cancel(action.action_id)
                self._exec_ended(action)
                self._requeue(action.requests, now_ns)
            else:
                dev.load_lane.cancel(action.action_id)
                if action.kind is ActionKind.LOAD:
                    dev.loads_in_flight -= 1
                    if action.model in dev.resident:
                        self._evict(dev, action.model)
            self.plan_device_soon(dev, now_ns)

    def _forget_answered(self, now_ns: int) -> None:
        """Drop the answered ids older than `answered_memory_ns` (the oldest come first); the
        forgotten part of the order goes once it is half of it."""
        answered, order = self.answered, self._answered_order
        cutoff = now_ns - self.cfg.answered_memory_ns
        at = self._answered_from
        while at < len(order) and order[at][0] <= cutoff:
            when, key = order[at]
            if answered.get(key) == when:  # an id is answered once while remembered: a guard
                del answered[key]
            at += 1
        if at * 2 > len(order):
            del order[:at]
            at = 0
        self._answered_from = at

    def _expire_uploads(self, now_ns: int) -> None:
        for name in [n for n, u in self.uploads.items() if u.deadline_ns <= now_ns]:
            self.uploads[name].failures.append("timed out waiting for PREPARED")
            self._finish_upload(self.models[name])

    def send_exec(self, dev: Device, batch: Batch, start_ns: int, now_ns: int) -> int:
        """Book `batch` on `dev`'s EXEC lane and send it; returns the lane time it typically
        takes, as booked: its run and the lane's turnaround to the next action."""
        model = self.models[batch.model]
        action_id = next(self._ids)
        for req in batch.requests:
            req.move(RequestState.DISPATCHED)
            req.dispatched_ns = now_ns
        self._dequeued(model, batch.requests)
        model.in_flight += 1
        resident = dev.resident
        res = resident[batch.model]
        del resident[batch.model]
        resident[batch.model] = res  # most recently used goes last (LRU order)
        res.in_flight += 1
        res.last_used_ns = now_ns
        earliest = max(now_ns, start_ns - self.ahead_ns(dev))
        typical_ns = self.latency.typical_exec_ns(batch.model, batch.batch_size, dev.kind) or batch.exec_ns
        typical_end = self.typical_start_ns(dev, now_ns) + typical_ns
        # The lane drops it once it could no longer typically be answered in time (give_up_slack_ns).
        latest = max(batch.latest_start_ns,
                     batch.latest_start_ns + batch.exec_ns + self.give_up_slack_ns - typical_ns)
        ready = max(earliest, now_ns + self.dispatch_floor_ns)
        turnaround = self.workers[dev.worker].turnaround_ns
        lane_ns = typical_ns + turnaround
        # The turnaround at the tail too: the lane's one tail allowance is the run's tail over
        # its typical time (Timeline.free_at), not that less the turnaround.
        dev.exec_lane.reserve(action_id, start_ns, batch.exec_ns + turnaround, ready, lane_ns)
        tensors = tuple(t for req in batch.requests for t in req.tensors)  # chunks, forwarded as-is
        self._track(Action(action_id, _EXEC, dev, batch.model, batch.exec_ns, now_ns,
                           latest + batch.exec_ns + self.dispatch_of(dev) + self.cfg.result_grace_ns,
                           list(batch.requests), batch.batch_size, start_ns, typical_end, ready))
        self.count("execs_sent")
        self._emit(ToWorker(dev.worker, action_id, made(schema.Exec, {
            "device_id": dev.device_id, "model_id": batch.model, "batch_size": batch.batch_size,
            "earliest_ns": earliest, "latest_ns": latest, "expected_ns": batch.exec_ns, "tensors": tensors})))
        return lane_ns

    def _plan_loads(self, now_ns: int) -> None:
        """Models with queued requests and no replica, longest waiting first. Only as many as
        there are free LOAD slots are tried (a few more, for models that fit nowhere), so a
        tick costs O(devices), not O(unplaced models x devices)."""
        if not self.unplaced:
            return
        slots = self.free_load_slots(now_ns)
        if not slots:
            return
        for name in list(itertools.islice(self.unplaced, 2 * len(slots) + 8)):
            if self.load_somewhere(self.models[name], now_ns, slots):
                slots = [d for d in slots if self.load_slot_free(d, now_ns)]
                if not slots:
                    return

    def free_load_slots(self, now_ns: int) -> list[Device]:
        return [d for w in self.workers.values() if not w.suspect for d in w.devices.values()
                if self.load_slot_free(d, now_ns)]

    def load_slot_free(self, dev: Device, now_ns: int) -> bool:
        """Whether a LOAD may be sent to `dev` now: none is in flight, or fewer than
        `max_loads_per_device` and the last one booked ends within the time an EXEC is sent
        ahead (`ahead_ns`). The next then reaches the worker as its copy lane frees, instead of
        the lane idling until we have read the last one's result and sent another (2-4 ms of
        every 8 ms LOAD on a busy host), and nothing is placed behind a LOAD far from its end."""
        in_flight = dev.loads_in_flight
        if in_flight == 0:
            return True
        return in_flight < self.max_loads_per_device and dev.load_lane.free_at(now_ns) - now_ns <= self.ahead_ns(dev)

    def warm_up(self, model: Model, now_ns: int) -> bool:
        """LOAD `model`, which no request waits for: whether a LOAD was sent. Its requests are
        refused while it is cold when their SLO cannot cover a LOAD as well; loaded only on
        demand, it would stay cold, and refused, for good."""
        if model.replicas or model.name in self.unplaced:
            return False
        slots = self.free_load_slots(now_ns)
        if not slots or not self.load_somewhere(model, now_ns, slots):
            return False
        self.count("warm_up_loads")
        return True

    def load_somewhere(self, model: Model, now_ns: int, slots: list[Device]) -> bool:
        devices = [d for d in slots if d.worker in model.profiles]
        choice = placement.load_target(model, model.weights_bytes, devices, now_ns)
        if choice is None:
            return False
        self._send_load(model, *choice, now_ns)
        return True

    def _release_idle_replicas(self, now_ns: int) -> None:
        """Unload extra replicas idle for `replica_idle_ns`, keeping each model's freshest one."""
        if now_ns < self._next_release_ns:
            return
        self._next_release_ns = now_ns + self.cfg.release_check_ns
        idle_since = now_ns - self.cfg.replica_idle_ns
        for name in list(self.replicated):
            model = self.models[name]
            if name in self.pending:
                continue
            residents = sorted(((dev.resident[model.name], key, dev) for key, dev in model.replicas.items()),
                               key=lambda item: (item[0].last_used_ns, item[1]))
            for res, _, dev in residents[:-1]:
                if res.state is Residency.LOADED and res.in_flight == 0 and res.last_used_ns < idle_since:
                    self._send_unload(dev, model.name, now_ns)
                    self.count("replicas_released")

    def _send_unload(self, dev: Device, name: str, now_ns: int, evict: bool = True) -> None:
        """UNLOAD `name` from `dev` from `now_ns` on; `evict=False` when our books already say it is gone."""
        if evict:
            self._evict(dev, name)
        action_id = next(self._ids)
        self._track(Action(action_id, ActionKind.UNLOAD, dev, name, 0, now_ns,
                           now_ns + UNLOAD_WINDOW_NS + self.cfg.result_grace_ns))
        dev.load_lane.reserve(action_id, now_ns, 0)
        self._emit(ToWorker(dev.worker, action_id, schema.Unload(
            device_id=dev.device_id, model_id=name, earliest_ns=now_ns, latest_ns=now_ns + UNLOAD_WINDOW_NS)))

    def _send_load(self, model: Model, dev: Device, pages: int, victims: list[str], now_ns: int) -> None:
        for name in victims:
            self._send_unload(dev, name, now_ns)
            self.count("evictions")
        load_ns = self.latency.load_ns(model.name, dev.kind) or 0
        action_id = next(self._ids)
        start = max(now_ns, dev.load_lane.free_at(now_ns))
        dev.load_lane.reserve(action_id, start, load_ns)
        self._place(dev, model, Resident(Residency.LOADING, pages, now_ns))
        dev.loads_in_flight += 1
        latest = start + 10 * load_ns + UNLOAD_WINDOW_NS // 60
        self._track(Action(action_id, ActionKind.LOAD, dev, model.name, load_ns, now_ns,
                           latest + 10 * load_ns + self.cfg.result_grace_ns))
        self.count("loads_sent")
        self._emit(ToWorker(dev.worker, action_id, schema.Load(
            device_id=dev.device_id, model_id=model.name, earliest_ns=now_ns,
            latest_ns=latest, expected_ns=load_ns)))

    # ================================================================== estimates

    def loaded_somewhere(self, model: Model) -> bool:
        return any(dev.resident[model.name].state is Residency.LOADED for dev in model.replicas.values())

    def devices_for(self, model: Model):
        """Live devices of the workers that prepared `model`."""
        for worker_name in model.profiles:
            worker = self.workers.get(worker_name)
            if worker is not None and not worker.suspect:
                yield from worker.devices.values()


    def typical_start_ns(self, dev: Device, now_ns: int) -> int:
        """When an EXEC sent now would typically start on `dev`: after the hop, once what is
        booked on its lane has typically run."""
        return max(now_ns + self.dispatch_floor_ns, dev.exec_lane.typical_free_at(now_ns))

    def replica_start_ns(self, dev: Device, name: str, now_ns: int) -> int:
        """When an EXEC of model `name` sent now would typically start on `dev`, which holds it
        or is loading it (then not before its LOAD ends)."""
        start = self.typical_start_ns(dev, now_ns)
        if dev.resident[name].state is Residency.LOADING:
            start = max(start, dev.load_lane.free_at(now_ns))
        return start

    def next_wakeup_ns(self, now_ns: int) -> int:
        """When `tick` next has something to do (the shell sleeps until then or a message)."""
        wakeup = self._due[0].key if self._due else now_ns + self.cfg.heartbeat_interval_ns
        while self._give_ups and self._give_ups[0].token not in self.actions:
            heap_entry.pop(self._give_ups)
        if self._give_ups:  # a lost result must be noticed on time, not at the next heartbeat
            wakeup = min(wakeup, max(self._give_ups[0].key + 1, self._next_housekeeping_ns))
        if self.pending or self.replicated:
            wakeup = min(wakeup, self._next_housekeeping_ns)
        elif self.workers or self.uploads:  # only liveness and upload timeouts to watch
            wakeup = min(wakeup, max(self._next_housekeeping_ns, now_ns + self.cfg.heartbeat_interval_ns // 2))
        policy_wakeup = self.policy.next_wakeup_ns(self, now_ns)
        return wakeup if policy_wakeup is None else min(wakeup, policy_wakeup)

    # ================================================================== status and invariants

    def status(self, now_ns: int, models_limit: int | None = None) -> dict:
        """Workers, devices, models and counters, bounded for a reply whatever the number of
        models: a device gives counts and its schema.STATUS_NAMES most recently used models, a
        model its replica count and a few of them, and `models` holds the `models_limit`
        busiest (queued + in flight, then answered, then name; None: every model, unranked,
        for the metrics) of "models_total"."""
        few = schema.STATUS_NAMES

        def held(dev: Device, state: Residency) -> list[str]:  # most recently used first
            return [n for n, r in reversed(dev.resident.items()) if r.state is state]

        workers = []
        for w in self.workers.values():
            devices = []
            # The lanes' idle time over the worker's devices: a hundred devices' STATUS must leave room in one reply.
            idle_controller = idle_worker = 0
            for d in w.devices.values():
                idle_controller += d.lane_idle_controller_ns
                idle_worker += d.lane_idle_worker_ns
                loaded, loading = held(d, Residency.LOADED), held(d, Residency.LOADING)
                devices.append({
                    "device_id": d.device_id, "kind": d.kind, "memory_bytes": d.capacity_pages * d.page_bytes,
                    "used_bytes": d.used_pages * d.page_bytes,
                    "loaded": loaded[:few], "loaded_count": len(loaded),
                    "loading": loading[:few], "loading_count": len(loading),
                    "busy_ms": max(0, d.exec_lane.free_at(now_ns) - now_ns) / 1e6,
                    "sm_clock_mhz": d.sm_clock_mhz or None,
                    "exec_busy_ns": d.exec_busy_ns,
                })
            workers.append({"name": w.name, "runtime": w.runtime, "alive": True, "dispatch_ms": w.dispatch_ns / 1e6,
                            "turnaround_ms": w.turnaround_ns / 1e6, "lane_idle_controller_ms": idle_controller / 1e6,
                            "lane_idle_worker_ms": idle_worker / 1e6,
                            "last_seen_ms_ago": (now_ns - w.last_seen_ns) / 1e6, "devices": devices})
        chosen = self.models.values() if models_limit is None else heapq.nsmallest(
            models_limit, self.models.values(), key=lambda m: (-len(m.queue) - m.in_flight, -m.answered, m.name))
        models = [{
            "name": m.name, "queued": len(m.queue), "in_flight": m.in_flight,
            "resident_on": sorted(m.replicas)[:few], "replicas": len(m.replicas),
            "answered": m.answered, "met_slo": m.met_slo,
        } for m in chosen]
        counters: dict[str, float] = dict(self.counters)
        counters.update(self.latency.error_summary())
        dispatch = max((w.dispatch_ns for w in self.workers.values()), default=self.cfg.dispatch_ns)
        turnaround = max((w.turnaround_ns for w in self.workers.values()), default=0)
        scheduler = {**self.policy.describe(), "dispatch_ms": dispatch / 1e6, "turnaround_ms": turnaround / 1e6,
                     "finish_tail_ms": self.finish_tail_ns / 1e6, "reply_ms": self.reply_ns / 1e6,
                     # The sizes of what the core keeps: bounded under any load (bench/soak.py).
                     "requests_live": len(self.requests), "actions_in_flight": len(self.actions),
                     "answered_remembered": len(self.answered), "give_up_heap": len(self._give_ups),
                     "planning_heap": len(self._due), **self.client_hops.summary()}
        return {"workers": workers, "models": models, "models_total": len(self.models), "counters": counters,
                "scheduler": scheduler}

def stale_detail(waited_ns: int, slo_ns: int) -> str:
    return f"it waited {ms_text(waited_ns)} ms in queues before reaching the controller; SLO is {ms_text(slo_ns)} ms"


_HUNDREDTHS: Final = tuple(f"{n:02d}" for n in range(100))  # ms_text's decimals, each made once


def ms_text(ns: int) -> str:
    """`ns` in milliseconds with two decimals ("12.34"), as f"{ns / 1e6:.2f}" writes it but in
    integer arithmetic: formatting a float took ~2,500 instructions, and past capacity, where
    every request's cost counts, each refusal's reason carries two such figures."""
    hundredths = (abs(ns) + 5_000) // 10_000
    text = f"{hundredths // 100}.{_HUNDREDTHS[hundredths % 100]}"
    return "-" + text if ns < 0 else text


def made(cls: type[T], fields: dict[str, Any]) -> T:
    """An instance of the frozen dataclass `cls` whose fields are exactly `fields` (every one,
    by name), made as common/frozen.py's build() makes it but in compiled code: the core builds
    a reply and its rows per request, and the interpreted build() took 7,000 and 4,000
    instructions for them. tests/test_core.py checks that what the core makes so names every
    field of its class, and nothing else."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    return obj


# The fields of a reply without outputs that never change, copied for each (reply_without_outputs).
_NO_OUTPUTS: Final[dict[str, Any]] = {
    "status": OK, "detail": "", "queue_ns": 0, "exec_ns": 0, "total_ns": 0, "lane_start_ns": 0, "lane_end_ns": 0,
    "batch_size": 0, "batch_samples": 0, "cold_start": False, "worker": "", "tensors": ()}


def reply_without_outputs(status: Status, detail: str, cold_start: bool = False,
                          total_ns: int = 0) -> schema.InferReply:
    """A reply that carries no outputs (a refusal, a failure), made as the OK ones are: the
    interpreted InferReply.build cost ~7,000 instructions, and past capacity every refused
    request makes one; its twelve fields copied and four set, a third of building them."""
    fields = _NO_OUTPUTS.copy()
    fields["status"] = status
    fields["detail"] = detail
    fields["cold_start"] = cold_start
    fields["total_ns"] = total_ns
    return made(schema.InferReply, fields)


def samples_in_order(inputs: tuple[tuple[str, str, tuple[int, ...]], ...], max_batch: int,
                     tensors: tuple[Tensor, ...]) -> int | None:
    """The samples of a request whose tensors match the model's `inputs` (Model.inputs: name,
    dtype, shape) one for one and in its order, as clients send them, checked here in compiled
    code (common.models.check_inputs is interpreted: 6,700 instructions a request in the
    issue-19 run); None for anything else, which check_inputs then checks the whole way, saying
    what is wrong."""
    if len(tensors) != len(inputs) or not tensors:
        return None
    samples = -1
    for i in range(len(tensors)):
        # A Tensor is an interpreted frozen dataclass: one read of its __dict__ and three
        # lookups in it cost a third of three generic attribute reads (~390 instructions each
        # from compiled code, 2.7% of the issue-19 run).
        t: dict[str, Any] = tensors[i].__dict__
        name, dtype, spec_shape = inputs[i]
        shape: tuple[int, ...] = t["shape"]
        if not shape:
            return None
        if samples < 0:
            samples = shape[0]
        if (t["name"] != name or t["dtype"] != dtype or len(shape) != len(spec_shape) + 1
                or shape[0] != samples or shape[1:] != spec_shape):
            return None
    return samples if 0 < samples <= max_batch else None


class _Rows:
    """An output tensor of a batch, cut into each request's rows without copying. Its row size,
    row shape and byte view are worked out once per batch: per request they cost 14,000
    instructions."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.name, self.dtype = tensor.name, tensor.dtype
        self.rows = _rows_of(tensor)
        self.row_shape = tensor.shape[1:]
        self.one_row_shape = (1, *self.row_shape)  # the usual request's, made once per batch
        self.row_bytes = tensor.nbytes // self.rows if self.rows else 0
        self.data = memoryview(tensor.data).cast("B")
        # A one-row tensor's fields but its data, copied for each (a copy of four is a third of
        # building them anew).
        self.one_row: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": self.one_row_shape,
                                        "data": b""}

    def take(self, offset: int, count: int) -> Tensor:
        """Rows [offset, offset+count)."""
        row = self.row_bytes
        if self.rows < offset + count:
            raise ValueError(f"output {self.name!r} has shape {list(self.tensor.shape)}")
        fields = self.one_row.copy()
        if count != 1:
            fields["shape"] = (count, *self.row_shape)
        fields["data"] = self.data[offset * row:(offset + count) * row]
        return made(Tensor, fields)


def _rows_of(tensor: Tensor) -> int:
    return tensor.shape[0] if tensor.shape else 0
