"""One worker model: the simulator's emulated workers (bench/sim/cluster.py) and the real worker's
`Device` with the emulated runtime (worker/device.py) get the same actions (LOAD, UNLOAD, EXEC,
DROP, with windows) and must answer the same: the status of each action, the order of each
lane's results, and when each began and how long it took.

The simulator runs in virtual time, the Device on its lane threads and the wall clock. Each
scenario therefore keeps every decision at least 3 units (45 ms) from the event it depends on,
and the real times are checked against the simulated ones with that margin: never earlier
(a lane does not start before `earliest`, the emulated runtime waits at least its profile),
and no later than the margin (a worker that late would have changed the statuses anyway).
"""

from __future__ import annotations

import gc
import heapq
import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from clockwork.bench.models import profile_json
from clockwork.bench.sim.cluster import Cluster
from clockwork.bench.sim.config import SimConfig
from clockwork.common import schema
from clockwork.common.clock import monotonic_ns, wait_until
from clockwork.common.config import MIB, WorkerConfig
from clockwork.common.models import parse_profile
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.worker.device import Device, drop_model
from clockwork.worker.runtimes.emulated import EmulatedRuntime
from clockwork.worker.store import ModelStore
from tests.worker_helpers import Collector, make_device, make_preparer

pytestmark = pytest.mark.timeout(60)

U = 15_000_000  # one unit of the scenarios' times: 15 ms
MARGIN_NS = 3 * U
PAGE_BYTES = 16 * MIB
MEMORY_BYTES = 15 * PAGE_BYTES  # two models of 7 pages fit, not three
BLOB = profile_json({"weights_bytes": 100 * MIB, "load_ms": 90.0, "exec_ms": {"1": 75.0, "4": 90.0}})  # 6, 5, 6 U
PROFILE = parse_profile(BLOB)
PREPARED = ("a", "b", "c")  # "x" is never prepared
OK, TOO_LATE, BUSY = Status.OK, Status.TOO_LATE, Status.BUSY
NOT_LOADED, NOT_PREPARED = Status.NOT_LOADED, Status.NOT_PREPARED


@dataclass(frozen=True)
class Step:
    """An action arriving `at` units after the start, its window in units after the start."""

    at: int
    action_id: int  # 0 for a DROP, which has no reply
    kind: str  # load | unload | exec | drop
    model: str
    earliest: int = 0
    latest: int = 100
    batch_size: int = 1  # EXEC: one sample, padded to this

    def body(self, t0: int) -> schema.Message:
        if self.kind == "drop":
            return schema.Drop(model_id=self.model)
        window = {"device_id": 0, "model_id": self.model, "earliest_ns": t0 + self.earliest * U,
                  "latest_ns": t0 + self.latest * U}
        if self.kind == "exec":
            spec = PROFILE.signature.inputs[0]
            one = Tensor.from_array(spec.name, np.zeros((1, *spec.shape), dtype=spec.dtype))
            return schema.Exec(batch_size=self.batch_size, tensors=(one,), **window)
        return (schema.Load if self.kind == "load" else schema.Unload)(**window)


@dataclass(frozen=True)
class Answer:
    lane: str  # load | exec
    action_id: int
    status: Status
    begin_ns: int  # after the start
    end_ns: int


def answer(action: str, action_id: int, status: Status, begin_ns: int, end_ns: int, t0: int) -> Answer:
    return Answer("exec" if action == "exec" else "load", action_id, status, begin_ns - t0, end_ns - t0)


def simulated(steps: list[Step]) -> list[Answer]:
    """The simulator's worker, in virtual time, with no noise."""
    t0 = 1_000_000_000
    events: list = []
    seq = itertools.count()
    answers: list[Answer] = []

    def send(worker, action_id, msg, sent_ns):
        answers.append(answer(msg.action, action_id, msg.status, msg.begin_ns, msg.end_ns, t0))

    def wake(t, lane, finished):
        heapq.heappush(events, (t, next(seq), lane, finished))

    def advance(until_ns: int) -> None:
        while events and events[0][0] <= until_ns:
            t, _, lane, finished = heapq.heappop(events)
            cluster.lane_event(lane, finished, t)

    cfg = SimConfig(workers=1, devices_per_worker=1, device_memory_bytes=MEMORY_BYTES, page_bytes=PAGE_BYTES,
                    noise_sigma=0.0)
    cluster = Cluster(cfg, PROFILE, [1, 4], send, wake)
    cluster.add_worker("w")
    for model in PREPARED:
        cluster.prepare("w", model)
    for step in steps:
        advance(t0 + step.at * U)
        cluster.deliver("w", step.action_id, step.body(t0), t0 + step.at * U)
    advance(1 << 62)
    return answers


def submit(device: Device, store: ModelStore, step: Step, t0: int) -> None:
    """What the worker daemon does with each message (worker/daemon.py, on_load ... on_drop)."""
    m = step.body(t0)
    if step.kind == "drop":
        drop_model(store, [device], m.model_id)
    elif step.kind == "load":
        device.submit_load(step.action_id, m.model_id, m.earliest_ns, m.latest_ns)
    elif step.kind == "unload":
        device.submit_unload(step.action_id, m.model_id, m.earliest_ns, m.latest_ns)
    else:
        device.submit_exec(step.action_id, m.model_id, m.batch_size, m.tensors, m.earliest_ns, m.latest_ns)


def real(steps: list[Step]) -> list[Answer]:
    """The worker's Device with the emulated runtime, on its lane threads."""
    runtime = EmulatedRuntime(WorkerConfig(runtime="emulated", devices=1, device_memory_bytes=MEMORY_BYTES,
                                           page_bytes=PAGE_BYTES))
    device, emit, store = make_device(runtime, page_bytes=PAGE_BYTES)
    preparer = make_preparer(runtime, store, Collector())
    for model in PREPARED:
        assert preparer.prepare(schema.Prepare(model_id=model, format="profile", blob=BLOB)).status is OK
    device.start()
    gc.collect()  # no collection of what earlier tests left may stall the lanes mid-scenario
    gc.disable()
    try:
        t0 = monotonic_ns() + U
        for step in steps:
            wait_until(t0 + step.at * U)
            submit(device, store, step, t0)
        dones = emit.take(sum(step.kind != "drop" for step in steps))
    finally:
        gc.enable()
        device.stop()
    return [answer(d.action, d.parent_id, d.status, d.begin_ns, d.end_ns, t0) for d in dones]


def per_lane(answers: list[Answer]) -> dict[str, list[tuple[int, Status]]]:
    lanes: dict[str, list[tuple[int, Status]]] = {"load": [], "exec": []}
    for a in answers:
        lanes[a.lane].append((a.action_id, a.status))
    return lanes


def assert_same(steps: list[Step], expected: dict[str, list[tuple[int, Status]]]) -> None:
    sim, worker = simulated(steps), real(steps)
    assert per_lane(sim) == expected
    assert per_lane(worker) == expected
    worker_of = {a.action_id: a for a in worker}
    for s in sim:
        w = worker_of[s.action_id]
        assert s.begin_ns <= w.begin_ns < s.begin_ns + MARGIN_NS, (s, w)
        took, should = w.end_ns - w.begin_ns, s.end_ns - s.begin_ns
        assert should <= took < should + MARGIN_NS, (s, w)


def test_windows_one_at_a_time_in_earliest_order():
    assert_same([
        Step(0, 1, "load", "a"),  # 0-6
        Step(9, 2, "exec", "a", 9),  # 9-14
        Step(9, 3, "exec", "a", 9, 11),  # the lane comes to it at 14, past its latest: TOO_LATE then
        Step(9, 4, "exec", "a", 20, batch_size=4),  # waits for its earliest: 20-26
        Step(23, 5, "exec", "a", 16, 18),  # arrives past its latest while 4 runs: TOO_LATE at once
        Step(29, 6, "exec", "a"),  # earliest long past, latest not: starts on arrival
    ], {"load": [(1, OK)], "exec": [(2, OK), (3, TOO_LATE), (5, TOO_LATE), (4, OK), (6, OK)]})


def test_memory_and_preparation():
    assert_same([
        Step(0, 1, "load", "a"),  # 0-6
        Step(0, 2, "load", "a"),
        Step(0, 3, "load", "b"),  # 6-12
        Step(0, 4, "load", "c"),  # a third does not fit
        Step(3, 5, "exec", "b"),  # still loading
        Step(3, 6, "exec", "x"),  # never prepared
        Step(15, 7, "unload", "b"),
        Step(18, 8, "load", "x"),  # room now, but never prepared
        Step(18, 9, "unload", "b"),
        Step(18, 10, "load", "c"),
    ], {"load": [(1, OK), (2, Status.ALREADY_LOADED), (3, OK), (4, Status.INSUFFICIENT_MEMORY), (7, OK),
                 (8, NOT_PREPARED), (9, NOT_LOADED), (10, OK)],
        "exec": [(5, NOT_LOADED), (6, NOT_LOADED)]})


def test_unload_of_a_model_executing_is_busy():
    assert_same([
        Step(0, 1, "load", "a"),
        Step(9, 2, "exec", "a", 9, batch_size=4),  # 9-15
        Step(12, 3, "unload", "a"),
        Step(18, 4, "unload", "a"),
    ], {"load": [(1, OK), (3, BUSY), (4, OK)], "exec": [(2, OK)]})


def test_drop_during_exec_releases_the_model_when_the_exec_ends_and_forgets_it():
    assert_same([
        Step(0, 1, "load", "a"),
        Step(9, 2, "exec", "a", 9, batch_size=4),  # 9-15
        Step(12, 0, "drop", "a"),  # tried again every millisecond until 15
        Step(12, 3, "exec", "a", 18),
        Step(18, 4, "load", "a"),  # the store forgot it
    ], {"load": [(1, OK), (4, NOT_PREPARED)], "exec": [(2, OK), (3, NOT_LOADED)]})


def test_a_load_after_a_drop_keeps_the_model():
    assert_same([
        Step(0, 1, "load", "a"),
        Step(9, 2, "exec", "a", 9, batch_size=4),  # 9-15
        Step(12, 0, "drop", "a"),
        Step(12, 3, "load", "a"),  # the controller's new plan has it: the DROP gives up
        Step(12, 4, "exec", "a", 18),
    ], {"load": [(1, OK), (3, Status.ALREADY_LOADED)], "exec": [(2, OK), (4, OK)]})


def test_a_drop_waits_its_turn_on_the_load_lane():
    assert_same([
        Step(0, 1, "load", "a"),  # 0-6
        Step(9, 2, "load", "b"),  # 9-15
        Step(12, 0, "drop", "a"),  # runs at 15, while 3 executes: released at 17
        Step(12, 3, "exec", "a"),  # 12-17
        Step(20, 4, "exec", "a"),
    ], {"load": [(1, OK), (2, OK)], "exec": [(3, OK), (4, NOT_LOADED)]})
