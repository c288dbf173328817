"""Why this system refused or gave up requests over a stretch of load, from its STATUS.

The controller's counters say how many were refused for what (behind the queue, on an idle
device, stale, shed, queue full) and how many were given up once queued; its scheduler section
holds the allowances admission priced them with. `versus` prints both for each rate, `capacity`
for each step: on a noisy host the reply allowance alone reached 13 ms against a 15 ms SLO, and
that, not the devices, was why. In a dry run of admission the counters also say how many it
would have refused, and how many of those were answered in time all the same. The devices say
how long their lanes idled while work for them waited, and where it waited.
"""

from __future__ import annotations

ALLOWANCES = ("dispatch_ms", "turnaround_ms", "finish_tail_ms", "reply_ms", "reply_hop_ms_max", "admission_headroom")
# The reasons a dry run of admission (SchedulerConfig.admission_dry_run) adds: it refuses nothing.
DRY_RUN_REFUSED, DRY_RUN_MET_SLO = "dry run: would have refused", "dry run: of those, answered in SLO"
# Not a refusal either: the EXECs that ran over twice their planned time (the core's
# `exec_overran`), which the requests given up once queued often follow.
OVERRUNS = "EXECs over twice their planned time"
# Nor where the lanes idled between runs while work for them waited (milliseconds, all devices):
# for the controller to plan and send it, or at the worker (STATUS's `lane_idle_*_ms`).
IDLE_ON_CONTROLLER = "ms lanes idled, the work not yet at the worker"
IDLE_ON_WORKER = "ms lanes idled, the EXEC at the worker"
NOT_REFUSALS = frozenset({DRY_RUN_REFUSED, DRY_RUN_MET_SLO, OVERRUNS, IDLE_ON_CONTROLLER, IDLE_ON_WORKER})


def why(before: dict, after: dict) -> tuple[dict[str, int], dict[str, float]]:
    """Refusals and give-ups by reason between two STATUS replies (the idle-device ones are
    WOULD_MISS_DEADLINE refusals not made for the backlog: the request's own EXEC and the hops,
    after what it waited, did not fit its SLO), and the allowances of the later one. Empty for a
    target without a controller (STATUS {})."""
    counted_before, counted_after = before.get("counters") or {}, after.get("counters") or {}

    def change(name: str) -> int:
        return int(counted_after.get(name, 0) - counted_before.get(name, 0))

    backlog = change("rejected_for_backlog")
    reasons = {
        "behind the queue": backlog,
        "even on an idle device": change("rejected_would_miss_deadline") - backlog,
        "waited too long to be read": change("rejected_stale"),
        "shed at the input": change("rejected_shed"),
        "queue full": change("rejected_queue_full"),
        "given up once queued": change("answered_deadline_missed"),
        OVERRUNS: change("exec_overran"),
        DRY_RUN_REFUSED: change("dry_run_refused"),
        DRY_RUN_MET_SLO: change("dry_run_refused_met_slo"),
        IDLE_ON_CONTROLLER: round(lanes_idle_ms(after, "controller") - lanes_idle_ms(before, "controller")),
        IDLE_ON_WORKER: round(lanes_idle_ms(after, "worker") - lanes_idle_ms(before, "worker")),
    }
    scheduler = after.get("scheduler") or {}
    return ({k: v for k, v in reasons.items() if v > 0},
            {k: float(scheduler[k]) for k in ALLOWANCES if scheduler.get(k) is not None})


def lanes_idle_ms(status: dict, waiting_on: str) -> float:
    """The idle time of every worker's lanes a STATUS lists, with work waiting on "controller"
    or "worker"."""
    return sum(float(w.get(f"lane_idle_{waiting_on}_ms") or 0) for w in status.get("workers") or [])


def why_text(reasons: dict[str, int], allowances: dict[str, float]) -> str:
    """"; N REASON ...; KEY VALUE ..." for a progress line (empty when both are)."""
    return ("".join(f"; {n} {reason}" for reason, n in reasons.items())
            + "".join(f"; {k} {v:g}" for k, v in allowances.items()))
