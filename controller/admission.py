"""Clockwork's admission: admit a request only if it can finish in time (pure functions).

A request is refused at once (WOULD_MISS_DEADLINE) when not even an idle device could finish
it within its SLO (`best_case_ns`), or when the work queued ahead of it where it would run
makes it late (`finish_behind_queue_ns`), with a headroom kept unplanned (`Headroom`). In a
dry run (`SchedulerConfig.admission_dry_run`) both are admitted instead, and counted (`dry_run`).

Pricing. Admission is O(1) per replica looked at: every device keeps its backlog per priority
class, the typical EXEC time of its models' queued samples (the core's `reshare`); a request is
charged the classes at and above its own. Tails do not add up, so the queue is priced at
medians and the request's own EXEC carries the one tail allowance (`own_exec_ns`). Work of
models waiting for a LOAD is kept apart and spread over all devices.
"""

from __future__ import annotations

from typing import Any, Final

from clockwork.common import schema
from clockwork.common.checks import BadMessage
from clockwork.common.config import SchedulerConfig
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller.batching import padded_size
from clockwork.controller.core import OK, Core, ms_text, stale_detail
from clockwork.controller.request import Request
from clockwork.controller.state import Device, Model


# A refresh with misses widens the headroom one step, and one more for every HEADROOM_BURST_MISSES
# of them, up to HEADROOM_BURST_STEPS: the few misses of Poisson bursts at a knee move it as
# before, a collapse under overload (batches cut to their most urgent member, tens of misses a
# refresh) at once.
HEADROOM_BURST_MISSES: Final = 5
HEADROOM_BURST_STEPS: Final = 5
# Queues are never priced more than this much slower than full batching would run them.
MAX_DRAIN_PACE: Final = 4.0


class Headroom:
    """The share of a budget admission leaves unplanned, between the configured floor and
    ceiling: it widens quickly while admitted requests miss more often than the target
    (overload puts every admitted request at the edge of its estimate) and narrows slowly once
    none do: lulls between bursts of misses come during an overload too. It narrows a whole
    step at a refresh that finds idle a device holding a model refused for its backlog since
    it widened (`spare`): an overload keeps those busy, so the refusals are then the
    headroom's own, and at a sixteenth of a step a 15 ms SLO kept 4.5 ms unplanned for 20 s
    after an overload ended."""

    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.share = cfg.admission_headroom
        self.admitted = self.missed = 0  # since the last refresh
        self.refused: set[str] = set()  # models refused for their backlog while it is widened

    def refresh(self, spare: bool = False) -> None:
        cfg = self.cfg
        if self.missed > cfg.admission_miss_target * self.admitted:
            steps = 1 + min(HEADROOM_BURST_STEPS - 1, self.missed // HEADROOM_BURST_MISSES)
            self.share = min(cfg.max_admission_headroom, self.share + steps * cfg.headroom_step)
        elif not self.missed:
            step = cfg.headroom_step if spare else cfg.headroom_step / 16
            self.share = max(cfg.admission_headroom, self.share - step)
        self.admitted = self.missed = 0
        if not self.widened():
            self.refused.clear()

    def widened(self) -> bool:
        return self.share > self.cfg.admission_headroom


class DrainPace:
    """How much slower each device drains its queues than admission prices them, from the
    batches sent in the last refresh: the lane time they were booked for (their runs and the
    lane's turnaround after each, Core.send_exec) over what their samples cost in the batches
    their queue would make (`Core.drain_ns`, which backlogs are priced with). It is 1 while
    batching runs as priced and the lane turns around at once. Under overload, when requests
    reach the head of their queue with little slack left, batches are cut to what their most
    urgent member allows: on a GPU a batch of 4 costs far more per sample than one of 16,
    queues drain slower than priced, the requests behind become urgent in turn, and admission,
    pricing full batches, kept the queue long enough for that to last (at 3x, seconds of
    batches a quarter full). Queues are then priced at the pace the device keeps. On a CPU a
    sample costs the same in any batch, and the pace is the lane's turnaround alone: ~1.04 for
    a 0.8 ms CNN on a 2-core host."""

    def __init__(self) -> None:
        self._sent: dict[str, list[int]] = {}  # device key -> [lane time of its batches, the same priced]
        self._pace: dict[str, float] = {}

    def sent(self, dev_key: str, batch_ns: int, priced_ns: int) -> None:
        totals = self._sent.get(dev_key)
        if totals is None:
            totals = self._sent[dev_key] = [0, 0]
        totals[0] = totals[0] + batch_ns
        totals[1] = totals[1] + priced_ns

    def refresh(self) -> None:
        self._pace = {key: min(MAX_DRAIN_PACE, sent / priced) for key, (sent, priced) in self._sent.items()
                      if priced and sent > priced}
        self._sent = {}

    def of(self, dev_key: str) -> float:
        return self._pace.get(dev_key, 1.0)


def priced_batch_ns(core: Core, model: Model, samples: int, kind: str) -> int:
    """What `samples` of `model` cost in the batches its queue makes (as backlogs price them),
    for DrainPace: their share of the largest batch the queue fills."""
    depth = min(model.queue.samples.total, model.sizes[-1]) if model.sizes else 0
    if depth <= samples:
        return core.drain_ns(model, samples, kind)
    return core.drain_ns(model, depth, kind) * samples // depth


def admit(core: Core, headroom: Headroom, pace: DrainPace, client: bytes, request_id: int, msg: schema.Infer,
          now_ns: int, waited_ns: int) -> tuple[Status, str, Request | None]:
    """The request to queue, or the status and reason it is refused with."""
    cfg = core.cfg
    # The INFER is an interpreted class: its fields are read from its __dict__ (one generic
    # read, then a dict look-up each), not each by name (~280 instructions a read).
    infer: dict[str, Any] = msg.__dict__
    tensors: tuple[Tensor, ...] = infer["tensors"]
    try:
        model, samples = core.model_and_samples(infer["model"], tensors)
    except BadMessage as exc:
        return exc.status, exc.detail, None
    if len(model.queue) >= core.max_queue_per_model:
        return Status.QUEUE_FULL, f"{len(model.queue)} requests already queued for {model.name!r}", None
    slo_ns: int = infer["slo_ns"]
    priority: int = infer["priority"]
    budget = slo_ns - waited_ns
    if budget <= 0:
        return Status.WOULD_MISS_DEADLINE, stale_detail(waited_ns, slo_ns), None
    reply_ns = reply_allowance_ns(core, client, model, now_ns)
    budget -= reply_ns  # what is left to finish in, with the reply's way back kept apart
    received, deadline = now_ns - waited_ns, now_ns + budget
    if not model.sizes:
        started_ns = now_ns if core.started_ns is None else core.started_ns
        if model.preparing or now_ns < started_ns + cfg.worker_timeout_ns:
            # Workers are (re)joining or preparing it: wait for them, up to the deadline.
            return OK, "", Request(request_id, client, model.name, samples, priority, received,
                                          deadline, tensors, cold=True)
        return Status.UNAVAILABLE, f"no connected worker has prepared {model.name!r} yet", None
    if samples > model.sizes[-1]:
        return Status.BAD_INPUT, f"{samples} samples exceed the largest batch size {model.sizes[-1]}", None
    loaded = core.loaded_somewhere(model)
    own: dict[str, int | None] = {}  # kind -> own_exec_ns at the request's size, shared by both estimates
    best = best_case_ns(core, model, samples, loaded, own)
    if best is None:
        return Status.UNAVAILABLE, f"no live device can serve {model.name!r}", None
    if best > budget and not cfg.admission_dry_run:
        refused_on_estimates(core, model)
        waited = (f", {ms_text(waited_ns)} ms of which it spent in queues ({ms_text(max(0, slo_ns - waited_ns))} "
                  "ms left)") if waited_ns > cfg.dispatch_ns else ""
        cold = ""
        if not loaded:
            warm = best_case_ns(core, model, samples, True)
            if warm is not None and warm <= budget and core.warm_up(model, now_ns):
                cold = f"; it must be loaded first, and is being loaded now: {ms_text(warm)} ms once it is"
        return (Status.WOULD_MISS_DEADLINE,
                f"needs at least {ms_text(best + reply_ns)} ms even on an idle device (its execution "
                f"and the hops to the worker and back to you); its SLO is {ms_text(slo_ns)} ms{waited}{cold}",
                None)
    backlog = finish_behind_queue_ns(core, model, samples, priority, now_ns, own, pace)
    unplanned = int(headroom.share * budget)
    behind = False  # its finish behind the queue, with the headroom kept free, past its deadline
    if best <= budget and backlog is not None and backlog > deadline - unplanned:
        behind = True
        headroom.refused.add(model.name)
        if not cfg.admission_dry_run:
            if replicas_idle(model, now_ns):
                # Nothing ahead: its own estimates and the headroom refused it, not a backlog.
                refused_on_estimates(core, model)
                return (Status.WOULD_MISS_DEADLINE,
                        f"needs {ms_text(backlog - now_ns + reply_ns)} ms on an idle device (its execution and the "
                        f"hops to the worker and back to you), and admission keeps {ms_text(unplanned)} ms "
                        f"({headroom.share:.0%} of its budget) unplanned for estimates that run long; its SLO is "
                        f"{ms_text(slo_ns)} ms", None)
            core.count("rejected_for_backlog")
            return (Status.WOULD_MISS_DEADLINE,
                    f"the work queued ahead finishes {ms_text(backlog - now_ns)} ms from now at the earliest; "
                    f"{ms_text(budget)} ms of its SLO are left", None)
    req = Request(request_id, client, model.name, samples, priority, received, deadline, tensors, cold=not loaded)
    if best > budget or behind:  # refused as too late, were admission not running dry
        dry_run(core, behind and not replicas_idle(model, now_ns), req)
    return OK, "", req


def dry_run(core: Core, for_backlog: bool, req: Request) -> None:
    """Mark and count a request admission refuses as too late, admitted all the same in a dry
    run (SchedulerConfig.admission_dry_run): `dry_run_refused`, `..._for_backlog` as
    `rejected_for_backlog` would have counted it, and, once answered in time,
    `dry_run_refused_met_slo` (Core._send_answer)."""
    core.count("dry_run_refused")
    if for_backlog:
        core.count("dry_run_refused_for_backlog")
    req.dry_run_refused = True


def any_replica_idle(core: Core, models: set[str], now_ns: int) -> bool:
    """Whether some device holding one of `models` has no work queued or booked now."""
    for name in models:
        model = core.models.get(name)
        if model is not None and any(_idle(dev, now_ns) for dev in model.replicas.values()):
            return True
    return False


def _idle(dev: Device, now_ns: int) -> bool:
    return not dev.backlog.total and dev.exec_lane.typical_free_at(now_ns) <= now_ns


def replicas_idle(model: Model, now_ns: int) -> bool:
    """No work queued or booked on any device holding the model (or it has none yet)."""
    return all(_idle(dev, now_ns) for dev in model.replicas.values())


def reply_allowance_ns(core: Core, client: bytes, model: Model, now_ns: int) -> int:
    """The reply allowance of a request of `client` for `model` (Core.reply_ns_for): the way on
    to the client as the client reports it (ClientHops), else the floor. A hop shorter than the
    floor only for a request that finds every device holding its model idle, which runs at once,
    and then the longest of the client's window, not its percentile: that request is one the
    floor would refuse, and at a p99 of the last 100 hops one stall in a hundred (a noisy host
    had several-millisecond ones) is a late answer in a hundred. Behind queued work a request is
    planned to the edge of its deadline (batches grow to it), and there the floor is the margin
    that keeps answers in time: with every client's hop planned, the simulator's 2-GPU 3x runs
    answered up to 4x as many OK late (31 against 7), kept up to 0.1 points fewer of the admitted
    in SLO and up to 6% less goodput."""
    hops, floor = core.client_hops, core.reply_floor_ns
    hop = hops.tail_ns(client)
    if hop is not None and hop < floor:
        worst = hops.worst_ns(client)
        idle = bool(model.replicas) and replicas_idle(model, now_ns)
        hop = worst if idle and worst is not None and worst < floor else None
    return core.reply_ns_for(hop)


def refused_on_estimates(core: Core, model: Model) -> None:
    """A refusal with nothing of the model queued or running rests on its estimates alone;
    a run of them (`doubt_after`) means no measurement will come to correct those, so its worst
    measurements are doubted (LatencyModel.doubt)."""
    if model.queue or model.in_flight:
        return
    model.refused_unseen += 1
    if model.refused_unseen >= core.cfg.doubt_after:
        model.refused_unseen = 0
        core.latency.doubt(model.name)
        core.refresh_allowances()
        core.count("estimates_doubted")


def overtaken_ns(full_batch_ns: int, exec_ns: int, ahead_ns: int) -> int:
    """How much work arriving later can still go ahead of a request that waits behind
    `ahead_ns` of queued work: a batch must start by its deadline less its duration, so a full
    batch due up to (its duration less this request's) later must start first. At most one
    such batch (the model's own largest, `full_batch_ns`, stands for the others'), and no more
    than the wait."""
    return max(0, min(full_batch_ns - exec_ns, ahead_ns))


def best_case_ns(core: Core, model: Model, samples: int, loaded: bool,
                 own: dict[str, int | None] | None = None) -> int | None:
    """Shortest possible receive-to-finish time on an idle device; `loaded`: a replica holds
    the model already. `own` collects own_exec_ns by kind, for finish_behind_queue_ns."""
    size = padded_size(samples, model.sizes) or model.sizes[-1]  # admit checked that the samples fit
    # A replica is LOADED or LOADING (an evicted one leaves `replicas`): either way no LOAD is needed.
    loaded = loaded or bool(model.replicas)
    own = {} if own is None else own
    best = None
    for kind in model.kinds:
        exec_ns = own[kind] = own_exec_ns(core, model, size, kind)
        if exec_ns is None:
            continue
        load = 0 if loaded else (core.latency.load_ns(model.name, kind) or 0)
        total = core.dispatch_floor_ns + load + exec_ns
        best = total if best is None else min(best, total)
    return best


def finish_behind_queue_ns(core: Core, model: Model, samples: int, priority: int, now_ns: int,
                           own: dict[str, int | None] | None = None, pace: DrainPace | None = None) -> int | None:
    """When a new request could finish at the earliest behind the work already queued on
    one of its model's replicas in its priority class and above (under load a new request
    has the latest deadline, so earliest-deadline-first serves it last in its class; lower
    classes wait for it), plus its part of the work still waiting for LOADs, which will land
    on some device ahead of it. With no replica yet: after its own LOAD, behind those of the
    models ahead of it. Everything ahead is priced at typical durations, the request's own
    EXEC with the tail allowance (own_exec_ns; `own` holds those already computed, by kind),
    and the queues at the pace each device keeps (`pace`, DrainPace). At most
    `admission_replicas` replicas are looked at: bounded work per request even for a model
    replicated on a hundred GPUs (their backlogs differ only by the other models they hold)."""
    size = padded_size(samples, model.sizes) or model.sizes[-1]  # admit checked that the samples fit
    spill_ns = core.unplaced_work.from_class(priority) // max(1, core.device_count)
    if not model.replicas:
        return _finish_after_load_ns(core, model, size, priority, spill_ns, now_ns)
    own = {} if own is None else own
    latency, name, shares = core.latency, model.name, model.backlog_shares
    best, found = 0, False  # a native int and a flag: an int | None is boxed at each step
    # This model's queue on one replica, the new request last in it: it rides in the batch its
    # queue's tail makes, not in a batch of its own behind the queue.
    mine_samples = model.queue.samples.from_class(priority) / len(model.replicas) + samples
    # What a replica's kind decides, worked out again only when the kind changes (replicas share kinds).
    cost_kind: str | None = None
    typical: int | None = None
    typical_ns = tail_ns = full_ns = mine_ns = share_ns = 0
    looked, limit = 0, core.admission_replicas
    for dev in model.replicas.values():
        if looked == limit:
            break
        looked += 1
        kind = dev.kind
        if kind != cost_kind:
            cost_kind = kind
            typical = latency.typical_exec_ns(name, size, kind)
            own_ns = own[kind] if kind in own else own_exec_ns(core, model, size, kind)
            typical_ns = typical or 0
            tail_ns = (own_ns or 0) - typical_ns
            full_ns = _full_batch_ns(core, model, kind)
            mine_ns = core.drain_ns(model, mine_samples, kind)
            share = shares.get(kind)  # what this model's queue already adds to each replica of the kind
            share_ns = share.from_class(priority) if share is not None else 0
        if typical is None:
            continue
        start = core.replica_start_ns(dev, name, now_ns)
        others_ns = dev.backlog.from_class(priority) - share_ns + spill_ns
        queued_ns = others_ns + mine_ns
        if pace is not None:
            queued_ns = int(queued_ns * pace.of(dev.key))
        finish = start + queued_ns + overtaken_ns(full_ns, typical_ns, others_ns) + tail_ns
        if not found or finish < best:
            best, found = finish, True
    return best if found else None


def own_exec_ns(core: Core, model: Model, size: int, kind: str) -> int | None:
    """A new request's own EXEC as admission counts it: typical, plus the one tail allowance
    for everything its finish estimate could not see."""
    typical = core.latency.typical_exec_ns(model.name, size, kind)
    if typical is None:
        return None
    tail = core.latency.exec_ns(model.name, size, kind)  # known whenever the typical is
    return typical + max(core.finish_tail_ns, (tail or typical) - typical)


def _full_batch_ns(core: Core, model: Model, kind: str) -> int:
    return core.latency.typical_exec_ns(model.name, model.sizes[-1], kind) or 0


def _finish_after_load_ns(core: Core, model: Model, size: int, priority: int, spill_ns: int,
                          now_ns: int) -> int | None:
    # Models waiting for a LOAD get one in turn, as each device's copy lane frees up (a second
    # LOAD in flight waits behind the first on the worker: it closes the gap between them, and
    # adds no lane). What a device's kind decides is worked out once per kind: a cold model
    # may have a hundred devices.
    lanes = max(1, core.device_count)
    hop_ns, waiting = now_ns + core.cfg.dispatch_ns, len(core.unplaced)
    by_kind: dict[str, tuple[int, int, int, int] | None] = {}  # kind -> (load + turn, typical, a full batch's, own)
    best = None
    dev: Device
    for dev in core.devices_for(model):
        kind = dev.kind
        if kind not in by_kind:
            typical_ns = core.latency.typical_exec_ns(model.name, size, kind)
            load_ns = core.latency.load_ns(model.name, kind)
            own_ns = own_exec_ns(core, model, size, kind)
            by_kind[kind] = None if typical_ns is None or load_ns is None or own_ns is None else (
                waiting * load_ns // lanes + load_ns, typical_ns, _full_batch_ns(core, model, kind), own_ns)
        costs = by_kind[kind]
        if costs is None:
            continue
        load_ns, typical_ns, full_ns, own_ns = costs
        loaded = max(hop_ns, dev.load_lane.free_at(now_ns)) + load_ns
        ahead_ns = dev.backlog.from_class(priority) + spill_ns
        behind = core.typical_start_ns(dev, now_ns) + ahead_ns + overtaken_ns(full_ns, typical_ns, ahead_ns)
        finish = max(loaded, behind) + own_ns
        best = finish if best is None else min(best, finish)
    return best
