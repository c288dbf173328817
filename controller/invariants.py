"""What must hold after every step of the core, whatever the policy: tests check it.

Memory pages add up on every device; EXEC windows on a lane never overlap; every device's
backlog is the sum of its models' shares, and the work waiting for LOADs the sum of the
unplaced models'; the pending and unplaced sets match the queues; an EXEC in flight is of a
loaded model; a replica is resident where it is listed; every queued request is counted once;
a rank that batch choice keeps for a model (policy.RankMemo) is the one it would work out now.
"""

from __future__ import annotations

from clockwork.common.schema import ActionKind
from clockwork.controller.core import Core
from clockwork.controller.lifecycle import Residency, RequestState
from clockwork.controller.policy import ranked_now
from clockwork.controller.queues import CLASSES, ByClass


class InvariantViolation(AssertionError):
    pass


def check_invariants(core: Core, now_ns: int) -> None:
    """Raise InvariantViolation if the core's plan is inconsistent."""
    for dev in _all_devices(core):
        pages = sum(r.pages for r in dev.resident.values())
        if pages != dev.used_pages or pages > dev.capacity_pages:
            raise InvariantViolation(f"{dev.key}: pages {pages} vs used {dev.used_pages} / {dev.capacity_pages}")
        prev_end = None
        for start, end in dev.exec_lane.windows():
            if prev_end is not None and start < prev_end:
                raise InvariantViolation(f"{dev.key}: overlapping EXEC windows")
            prev_end = end
        held = [core.models[n] for n in dev.resident if n in core.models and dev.key in core.models[n].replicas]
        held_shares = [m.backlog_shares[dev.kind] for m in held if dev.kind in m.backlog_shares]
        _check_total(f"{dev.key}: backlog", dev.backlog)
        shares = [sum(col) for col in zip([0] * CLASSES, *(share.values for share in held_shares))]
        if shares != dev.backlog.values:
            raise InvariantViolation(f"{dev.key}: backlog {dev.backlog.values} ns but its models' shares add to {shares}")
        want = [n for n in dev.resident if n in core.pending]
        if sorted(want) != sorted(dev.pending):
            raise InvariantViolation(f"{dev.key}: pending {sorted(dev.pending)} but queued residents {want}")
    unplaced = [sum(col) for col in zip([0] * CLASSES, *(m.unplaced_ns for m in core.models.values()))]
    _check_total("work waiting for LOADs", core.unplaced_work)
    if unplaced != core.unplaced_work.values:
        raise InvariantViolation(f"work waiting for LOADs {core.unplaced_work.values} ns is not its models' sum")
    for action in core.actions.values():
        if action.kind is ActionKind.EXEC:
            res = action.device.resident.get(action.model)
            if res is None or res.state is not Residency.LOADED or res.in_flight <= 0:
                raise InvariantViolation(f"EXEC {action.action_id} of {action.model} on a non-resident model")
    queued: dict[str, int] = {}  # model -> its queued requests
    queued_samples: dict[str, list[int]] = {}  # model -> their samples by class
    for r in core.requests.values():
        if r.state is RequestState.QUEUED:
            queued[r.model] = queued.get(r.model, 0) + 1
            queued_samples.setdefault(r.model, [0] * CLASSES)[r.priority] += r.samples
    for model in core.models.values():
        if not set(model.backlog_shares) <= {dev.kind for dev in model.replicas.values()}:
            raise InvariantViolation(f"{model.name}: backlog shares for a kind of device that holds no replica")
        for key, dev in model.replicas.items():
            if model.name not in dev.resident or dev.key != key:
                raise InvariantViolation(f"{model.name}: replica on {key} not resident there")
        by_kind = sorted((kind, dev.key) for kind, devs in model.replicas_by_kind.items() for dev in devs)
        if by_kind != sorted((dev.kind, key) for key, dev in model.replicas.items()) or not all(model.replicas_by_kind.values()):
            raise InvariantViolation(f"{model.name}: replicas by kind {by_kind} are not its replicas")
        live, samples = queued.get(model.name, 0), queued_samples.get(model.name, [0] * CLASSES)
        if live != len(model.queue) or (live > 0) != (model.name in core.pending):
            raise InvariantViolation(f"{model.name}: queue length {len(model.queue)} but {live} queued")
        _check_total(f"{model.name}: samples queued", model.queue.samples)
        if samples != model.queue.samples.values:
            raise InvariantViolation(f"{model.name}: {model.queue.samples.values} samples queued by class, "
                                     f"its queued requests hold {samples}")
        for kind, share in model.backlog_shares.items():
            _check_total(f"{model.name}: backlog share on {kind}", share)
        if any(model.unplaced_ns) and model.replicas:
            raise InvariantViolation(f"{model.name}: counted as waiting for a LOAD but it has replicas")
        if (model.name in core.unplaced) != (model.name in core.pending and not model.replicas):
            raise InvariantViolation(f"{model.name}: unplaced set out of date")
        kept = model.rank_memo
        generation = core.latency.generation(model.name)
        if kept is not None and kept.holds(model.queue.version, generation, kept.kind, model.sizes):
            fresh = ranked_now(model, kept.kind, core.latency, generation)
            if (kept.ranked, kept.order, kept.latest_start_ns) != (fresh.ranked, fresh.order, fresh.latest_start_ns):
                raise InvariantViolation(f"{model.name}: batch choice keeps the rank {kept.order, kept.latest_start_ns} "
                                         f"but would work out {fresh.order, fresh.latest_start_ns}")


def _check_total(what: str, figures: ByClass) -> None:
    if figures.total != sum(figures.values):
        raise InvariantViolation(f"{what}: total {figures.total} but {figures.values} by class")


def _all_devices(core: Core):
    for worker in core.workers.values():
        yield from worker.devices.values()
