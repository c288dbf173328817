"""Clockwork's scheduling policy (the interface it implements is `Policy`, in controller/core.py).

- Admission on predicted finish times (controller/admission.py).
- Service order: priority, then earliest deadline (controller/queues.py's RequestQueue).
- Batch choice: the model whose batch must start soonest, grown to the largest size that
  meets every member's deadline (controller/batching.py), with one step of lookahead.
- Expiry: queued requests that can no longer make it are answered early, DEADLINE_MISSED.
- Replication: another replica for a model whose queue cannot drain in time on those it has.
"""

from __future__ import annotations

from typing import Final

from clockwork.common import schema
from clockwork.common.status import Status
from clockwork.controller import admission, placement
from clockwork.controller.batching import Batch, RankMemo, grow, padded_size
from clockwork.controller.core import Core, Policy
from clockwork.controller.heap_entry import Entry
from clockwork.controller.latency import LatencyModel
from clockwork.controller.lifecycle import Residency
from clockwork.controller.queues import QueueBase, RequestQueue
from clockwork.controller.request import Request
from clockwork.controller.state import Device, Model

# A batch is grown from this many requests beyond the largest batch size: room to skip requests
# that can no longer make it (expiry answers them within a housekeeping interval). Fixed: it
# bounds work per decision, and expiry, not this, decides when a request is given up.
HOPELESS_SCAN: Final = 8


class ClockworkPolicy(Policy):
    def __init__(self) -> None:
        self.headroom: admission.Headroom | None = None  # made at start, from the core's config
        self.pace = admission.DrainPace()
        # Expiry's looks by the housekeeping slot they fall due in (expire): booking one is an
        # append, where a heap took a sift of ~1,700 instructions, two looks a request.
        self._looks: dict[int, list[Entry[Model]]] = {}
        self._slot_ns = 1  # a housekeeping interval: set at start
        self._looked_slot = 0  # the slots before this one are looked at
        self._expiry_tokens = 0  # the last one handed out
        self._next_refresh_ns = 0
        self._replicas = HotModelReplicas()
        self._recheck_ns = (0, 0)  # set at start

    def start(self, core: Core) -> None:
        self.headroom = admission.Headroom(core.cfg)
        # The bounds of a re-look's delay (expire), read natively: the config's fields are read by name.
        self._recheck_ns = (core.cfg.housekeeping_ns, core.cfg.expiry_recheck_ns)
        self._slot_ns = max(1, core.cfg.housekeeping_ns)

    def new_queue(self) -> QueueBase:
        return RequestQueue()

    # ------------------------------------------------------------------ admission

    def admit(self, core: Core, client: bytes, request_id: int, msg: schema.Infer, now_ns: int,
              waited_ns: int) -> tuple[Status, str, Request | None]:
        headroom = self.headroom
        assert headroom is not None, "start() comes before any event"
        status, detail, req = admission.admit(core, headroom, self.pace, client, request_id, msg, now_ns, waited_ns)
        # The headroom follows what admission admits: in a dry run, the requests it would have
        # refused count for it neither as admitted nor, once given up, as misses.
        if req is not None and not req.dry_run_refused:
            headroom.admitted += 1
        return status, detail, req

    # ------------------------------------------------------------------ expiry

    def queued(self, core: Core, model: Model, req: Request, most_urgent: bool, now_ns: int) -> None:
        if most_urgent:
            self._watch(model, now_ns)  # a new most urgent request: look at it soon

    def _watch(self, model: Model, at_ns: int, done: Entry[Model] | None = None) -> None:
        """Look at `model`'s queue for requests that can no longer make it at `at_ns` (this
        replaces any earlier look booked for it); `done`: the look at `model` just done, whose
        entry the new look reuses."""
        self._expiry_tokens += 1
        model.expiry_token = token = self._expiry_tokens
        if done is not None:
            done.key, done.token = at_ns, token
            entry = done
        else:
            entry = Entry(at_ns, token, model)
        self._looks.setdefault(max(at_ns // self._slot_ns, self._looked_slot), []).append(entry)

    def expire(self, core: Core, now_ns: int) -> None:
        """Answer DEADLINE_MISSED, early, the queued requests no device can finish in time.
        A model is looked at again after half the slack its most urgent request had (between
        one housekeeping interval and `expiry_recheck_ns`), so the sweep costs O(models near a
        miss), not O(models with a queue), every millisecond. Misses widen the headroom; a device
        idle that admission refused work for narrows it (admission.Headroom)."""
        headroom = self.headroom
        assert headroom is not None, "start() comes before any event"
        if now_ns >= self._next_refresh_ns:
            self._next_refresh_ns = now_ns + core.cfg.refresh_ns
            headroom.refresh(spare=headroom.widened() and admission.any_replica_idle(core, headroom.refused, now_ns))
            self.pace.refresh()
        current = now_ns // self._slot_ns
        if current - self._looked_slot > len(self._looks):
            # A long gap (the first housekeeping after a start at hours of uptime, a shell that
            # ticked seldom): the booked slots, not every one in between.
            slots = sorted([slot for slot in self._looks if slot <= current])
        else:
            slots = list(range(self._looked_slot, current + 1))
        for slot in slots:
            looks = self._looks.pop(slot, None)
            if looks is None:
                continue
            for entry in looks:
                if entry.key > now_ns:  # the current slot's later part: its own slot again
                    self._looks.setdefault(current, []).append(entry)
                elif entry.token == entry.item.expiry_token:  # else a later look replaced it
                    self._look(core, entry, now_ns)
        self._looked_slot = current

    def _look(self, core: Core, entry: Entry[Model], now_ns: int) -> None:
        """Answer the requests of the model of `entry` (the look due) that can no longer make
        it, and book its next look while it has a queue."""
        model = entry.item
        if model.name not in core.pending or core.models.get(model.name) is not model:
            return
        head = model.queue.earliest_deadline()
        soonest = _soonest_finish_ns(core, model, now_ns, head)
        # Given up once even a typical reply would come too late (Core.give_up_slack_ns).
        cutoff = (now_ns if soonest is None else soonest) - core.give_up_slack_ns
        if head is not None and head < cutoff:
            headroom = self.headroom
            assert headroom is not None, "start() comes before any event"
            for req in model.queue.pop_expired(cutoff):
                if not req.dry_run_refused:
                    headroom.missed += 1
                late = (cutoff - req.deadline_ns) / 1e6
                core.answer(req, Status.DEADLINE_MISSED,
                            f"can no longer finish in time (at best {late:.2f} ms after its deadline)", now_ns)
            head = model.queue.earliest_deadline()
        if model.name in core.pending and head is not None:
            slack = (head - cutoff) // 2
            self._watch(model, now_ns + min(max(slack, self._recheck_ns[0]), self._recheck_ns[1]), entry)

    # ------------------------------------------------------------------ replication

    def replicate(self, core: Core, now_ns: int) -> None:
        self._replicas(core, now_ns)

    # ------------------------------------------------------------------ batch choice

    def plan_execs(self, core: Core, now_ns: int) -> None:
        """Plan every device whose EXEC lane is due (free within the horizon) and has work."""
        if not core.planning_due(now_ns):
            return
        for dev in core.due_devices(now_ns):
            horizon = now_ns + core.ahead_ns(dev)
            while dev.pending:
                free = dev.exec_lane.free_at(now_ns)
                if free > horizon:
                    break
                start = max(free, now_ns + core.dispatch_of(dev))
                batch = _choose_batch(core, dev, start)
                if batch is None:
                    break  # nothing runnable now; a request, load or result books it again
                # Priced while its requests are still in the queue, whose depth sets the price.
                priced_ns = admission.priced_batch_ns(core, core.models[batch.model],
                                                      sum(req.samples for req in batch.requests), dev.kind)
                self.pace.sent(dev.key, core.send_exec(dev, batch, start, now_ns), priced_ns)
            else:
                continue
            if dev.exec_lane.free_at(now_ns) > horizon:
                core.plan_device_soon(dev, now_ns)

    def describe(self) -> dict:
        headroom = self.headroom
        return {"admission_headroom": round(headroom.share, 4) if headroom else None,
                "expiry_looks": sum(len(looks) for looks in self._looks.values())}


class HotModelReplicas:
    """Policy.replicate as Clockwork does it (the baselines may borrow it): every
    `replication_check_ns`, another replica for each model whose queue would take more than
    `replicate_backlog_fraction` of its most urgent request's budget to drain."""

    def __init__(self) -> None:
        self._next_ns = 0

    def __call__(self, core: Core, now_ns: int) -> None:
        if now_ns < self._next_ns:
            return
        cfg = core.cfg
        self._next_ns = now_ns + cfg.replication_check_ns
        slots = core.free_load_slots(now_ns)
        # Read once per check, not per pending model (the config is interpreted: read by name).
        workers, latency, fraction = core.workers, core.latency, cfg.replicate_backlog_fraction
        for name in list(core.pending):
            if not slots:
                return
            model = core.models[name]
            if model.replicas and placement.wants_replica(model, now_ns, workers, latency, fraction):
                if core.load_somewhere(model, now_ns, slots):
                    slots = [d for d in slots if core.load_slot_free(d, now_ns)]
                    core.count("replicas_added")


def _choose_batch(core: Core, dev: Device, start_ns: int) -> Batch | None:
    """The batch to run next on `dev` from `start_ns` (the rule is controller/batching.py's).

    Models are ranked by when their batch must start, estimated from the most urgent
    request and the batch size its queue makes (no queue is scanned for that; RankMemo keeps
    each model's rank while its queue and figures stand), and only the winners are grown.
    One step of lookahead, since an EXEC cannot be preempted: if running the first batch
    would make a shorter one late, and the first still fits after it, the shorter one runs
    first.
    """
    ranked: list[RankMemo] = []
    # The latency model, not its bound methods: compiled, a method called on it is a native call.
    models, resident, kind, latency = core.models, dev.resident, dev.kind, core.latency
    for name in dev.pending:  # every pending model on the device, each planning: kept lean
        if resident[name].state is not Residency.LOADED:
            continue
        model = models[name]
        memo = model.rank_memo
        generation = latency.generation(name)
        if memo is None or not memo.holds(model.queue.version, generation, kind, model.sizes):
            memo = model.rank_memo = ranked_now(model, kind, latency, generation)
        if memo.ranked:
            ranked.append(memo)
    first = None
    while ranked:
        least = _take_least(ranked)
        name = least.name
        if first is not None and (least.order != -first.requests[0].priority
                                  or least.latest_start_ns >= start_ns + first.exec_ns):
            break  # running `first` makes nobody else late
        model = core.models[name]
        batch = grow(name, model.queue.head(model.sizes[-1] + HOPELESS_SCAN), start_ns, model.sizes,
                     lambda size: core.latency.exec_ns(name, size, dev.kind),  # used at once: no late binding
                     core.give_up_slack_ns, lambda size: core.latency.typical_exec_ns(name, size, dev.kind),
                     core.split_memo(model, dev.kind).tail)
        if batch is None:
            continue
        if first is None:
            first = batch
        elif (batch.latest_start_ns < start_ns + first.exec_ns
              and start_ns + batch.exec_ns <= first.latest_start_ns):
            return batch
    return first


def ranked_now(model: Model, kind: str, latency: LatencyModel, generation: int) -> RankMemo:
    """`model`'s rank on a device of `kind` (RankMemo), estimated from its most urgent request
    and the batch size its queue makes: no queue is scanned for it."""
    queue = model.queue
    head = queue.first()
    if head is not None:
        sizes = model.sizes
        size = padded_size(min(queue.samples.total, sizes[-1]), sizes)
        exec_ns = latency.exec_ns(model.name, size, kind) if size else None
        if exec_ns is not None:
            return RankMemo(queue.version, generation, kind, sizes, True, -head.priority, head.deadline_ns - exec_ns,
                            model.name)
    return RankMemo(queue.version, generation, kind, model.sizes, False, 0, 0, model.name)


def _take_least(ranked: list[RankMemo]) -> RankMemo:
    """Remove and return the least of `ranked` by (order, latest start, name), the order sorting
    gives (names unique): batch choice seldom looks past the first one or two, so a native scan
    for each beats sorting them all (the rest's order is left as it comes)."""
    at = 0
    least = ranked[0]
    for i in range(1, len(ranked)):
        other = ranked[i]
        if other.order < least.order or (other.order == least.order and (
                other.latest_start_ns < least.latest_start_ns or (
                    other.latest_start_ns == least.latest_start_ns and other.name < least.name))):
            at, least = i, other
    last = ranked.pop()
    if at < len(ranked):
        ranked[at] = last
    return least


def _soonest_finish_ns(core: Core, model: Model, now_ns: int, enough_ns: int | None = None) -> int | None:
    """Earliest moment any device could typically finish a one-sample batch of `model`:
    requests due earlier cannot be served. Typical durations, not the planner's tails: the
    lane's booked work ends at its tails only rarely, so a tail-priced guess would answer
    DEADLINE_MISSED to requests that the lane, freeing up at its typical pace, serves in time
    (at 90% load on a CPU, 85 of 22,875 admitted requests were so given up after half their
    SLO). The first replica that finishes by `enough_ns` is answer enough (a hot model has many)."""
    if not model.sizes:
        return None
    size = model.sizes[0]
    soonest, found = 0, False  # a native int and a flag, not an int | None boxed at each step
    latency, name = core.latency, model.name
    for dev in model.replicas.values():
        exec_ns = latency.typical_exec_ns(name, size, dev.kind)
        if exec_ns is not None:
            finish = core.replica_start_ns(dev, name, now_ns) + exec_ns
            if not found or finish < soonest:
                soonest, found = finish, True
            if enough_ns is not None and soonest <= enough_ns:
                return soonest
    if not found:  # no replica: a LOAD first, on whichever kind is fastest
        for kind in model.kinds:
            exec_ns = latency.typical_exec_ns(name, size, kind)
            if exec_ns is not None:
                finish = now_ns + core.dispatch_ns + (core.latency.load_ns(model.name, kind) or 0) + exec_ns
                if not found or finish < soonest:
                    soonest, found = finish, True
    return soonest if found else None
