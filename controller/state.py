"""The controller's bookkeeping types: requests, models, devices, workers, actions in flight."""

from __future__ import annotations

from dataclasses import dataclass, field

from clockwork.common.models import Signature
from clockwork.common.schema import ActionKind
from clockwork.controller.batching import RankMemo, SplitMemo
from clockwork.controller.lifecycle import RESIDENCY_MOVES, Residency, check_move
from clockwork.controller.queues import CLASSES, ByClass, QueueBase, RequestQueue
from clockwork.controller.request import Request
from clockwork.controller.timeline import Timeline


@dataclass
class Profile:
    """A worker's PREPARE measurements of one model."""

    load_ns: int
    exec_ns: dict[int, int]  # batch size -> ns
    weights_bytes: int


@dataclass(eq=False, slots=True)
class Model:
    name: str
    format: str
    signature: Signature
    profiles: dict[str, Profile] = field(default_factory=dict)  # worker name -> its PREPARE profile
    queue: QueueBase = field(default_factory=RequestQueue)
    in_flight: int = 0  # EXEC actions outstanding
    removing: bool = False  # REMOVE received; dropped from workers once in_flight == 0
    answered: int = 0  # admitted requests answered, and those of them inside their deadline
    met_slo: int = 0
    replicas: dict[str, "Device"] = field(default_factory=dict)  # device key -> device holding it
    # The same devices by kind: a change of the queue moves the backlogs of one kind's replicas
    # by the same difference, and most changes move none (Core._reshare).
    replicas_by_kind: dict[str, list["Device"]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # batch sizes every preparing worker profiled
    preparing: set[str] = field(default_factory=set)  # workers sent PREPARE, not answered yet
    kinds: list[str] = field(default_factory=list)  # device kinds of the workers that prepared it
    weights_bytes: int = 0  # device memory one replica takes (from the profiles)
    # Device kind -> the time this model's queue adds to the backlog of each of its replicas of
    # that kind, per priority class (an even share of the queued samples, batched): kept so the
    # devices' sums can be updated exactly.
    backlog_shares: dict[str, ByClass] = field(default_factory=dict)
    # With no replica: its queue's EXEC time per class, part of the work waiting for LOADs.
    unplaced_ns: list[int] = field(default_factory=lambda: [0] * CLASSES)
    expiry_token: int = 0  # its live look in the policy's expiry looks
    split_memos: dict[str, SplitMemo] = field(default_factory=dict)  # device kind -> (Core.split_memo)
    rank_memo: RankMemo | None = None  # its rank in batch choice as last worked out (policy._choose_batch)
    # Requests refused on its estimates alone (nothing of it queued or running) since its last
    # EXEC result: past DOUBT_AFTER the core asks the latency model to doubt its worst samples.
    refused_unseen: int = 0
    # Its signature's inputs as (name, dtype, shape) and largest batch, read natively by every
    # request's check (core.samples_in_order; a Signature is an interpreted dataclass): worked
    # out from the signature when the model is made, so that they always agree with it.
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...] = field(init=False)
    max_batch: int = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = input_specs(self.signature)
        self.max_batch = self.signature.max_batch


def input_specs(signature: Signature) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """A signature's inputs as core.samples_in_order reads them (Model.inputs)."""
    return tuple((spec.name, spec.dtype, spec.shape) for spec in signature.inputs)


@dataclass(eq=False, slots=True)
class Resident:
    state: Residency
    pages: int
    last_used_ns: int
    in_flight: int = 0  # EXECs of this model outstanding on this device

    def move(self, new_state: Residency) -> None:
        """To `new_state`, if the residency lifecycle allows it (lifecycle.RESIDENCY_MOVES)."""
        check_move(RESIDENCY_MOVES, self.state, new_state, "Resident")
        self.state = new_state


@dataclass(eq=False, slots=True)
class Device:
    worker: str
    device_id: int
    kind: str
    capacity_pages: int
    page_bytes: int
    resident: dict[str, Resident] = field(default_factory=dict)  # in LRU order (least recent first)
    used_pages: int = 0
    exec_lane: Timeline = field(default_factory=Timeline)
    load_lane: Timeline = field(default_factory=Timeline)
    loads_in_flight: int = 0
    # Resident models with queued requests: what the EXEC planner looks at on this device.
    pending: dict[str, None] = field(default_factory=dict)
    plan_version: int = 0  # the token of its live planning-heap entry (Core.book): older ones are dead
    booked_ns: int | None = None  # when its live planning-heap entry is due (None: not booked)
    # Predicted EXEC time of the work queued for it, per priority class: each held model's
    # queued samples, split evenly over that model's replicas, at the batch sizes they would run
    # in. Admission puts the classes at and above a new request's ahead of it (kept up to date
    # on every queue and replica change).
    backlog: ByClass = field(default_factory=ByClass)
    sm_clock_mhz: int = 0  # last reported by the worker (GPUs); shows throttling in STATUS
    exec_busy_ns: int = 0  # measured EXEC time so far: utilisation is its rate of change
    exec_end_ns: int = 0  # when its last EXEC that ran ended, as measured (the lane's turnaround)
    # Its EXEC lane's idle time between runs while the next run's work was waiting (Core._lane_gap):
    # for the controller to send it, or at the worker (turnarounds, stalls of the worker's host).
    lane_idle_controller_ns: int = 0
    lane_idle_worker_ns: int = 0

    key: str = field(init=False)  # "worker/device_id": names it in models' replica maps (made once: read per request)

    def __post_init__(self) -> None:
        self.key = f"{self.worker}/{self.device_id}"

    def free_pages(self) -> int:
        return self.capacity_pages - self.used_pages


@dataclass(eq=False, slots=True)
class Worker:
    name: str
    runtime: str
    formats: tuple[str, ...]
    devices: dict[int, Device]
    last_seen_ns: int
    prepared: set[str] = field(default_factory=set)  # models whose PREPARED came back OK
    # A result it owed us never came: plan nothing on it until it is heard from again, rather
    # than lose more work to it while its heartbeat timeout runs.
    suspect: bool = False
    # The allowance from sending it an EXEC to its lane starting it: the configured floor plus
    # how late its lanes have recently started (p99), refreshed every `refresh_ns`.
    dispatch_ns: int = 0
    # The lane time between one EXEC's end and the next one's start when the next was already
    # there (p50; `LatencyModel.turnaround_ns`): what a lane spends on each action besides the
    # run, refreshed with the dispatch allowance.
    turnaround_ns: int = 0


@dataclass(eq=False, slots=True)
class Action:
    """Its __init__ is written out, as request.Request's is (one per action)."""

    action_id: int
    kind: ActionKind
    device: Device
    model: str
    expected_ns: int
    sent_ns: int
    give_up_ns: int  # no result by then: the action is taken as lost (its window plus a grace)
    requests: list[Request]
    batch_size: int
    planned_start_ns: int  # EXEC: when the timeline expected the lane to start it
    typical_end_ns: int  # EXEC: when admission's typical prediction expected it to end
    ready_ns: int  # EXEC: from when the lane could start it (at the worker and inside its window)

    def __init__(self, action_id: int, kind: ActionKind, device: Device, model: str, expected_ns: int, sent_ns: int,
                 give_up_ns: int, requests: list[Request] | None = None, batch_size: int = 0,
                 planned_start_ns: int = 0, typical_end_ns: int = 0, ready_ns: int = 0) -> None:
        self.action_id = action_id
        self.kind = kind
        self.device = device
        self.model = model
        self.expected_ns = expected_ns
        self.sent_ns = sent_ns
        self.give_up_ns = give_up_ns
        self.requests = [] if requests is None else requests
        self.batch_size = batch_size
        self.planned_start_ns = planned_start_ns
        self.typical_end_ns = typical_end_ns
        self.ready_ns = ready_ns


@dataclass(eq=False, slots=True)
class PendingUpload:
    client: bytes
    request_id: int
    waiting: set[str]  # worker names whose PREPARED has not come back
    deadline_ns: int  # answer by then whatever came back
    failures: list[str] = field(default_factory=list)
