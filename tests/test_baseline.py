"""The FIFO / dynamic-batching baselines, driven step by step like the core; invariants are
checked after every step."""

from __future__ import annotations

import pathlib
import re

from clockwork.common import schema
from clockwork.common.config import SchedulerConfig
from clockwork.common.status import Status
from clockwork.controller.baseline import BaselineConfig, FifoPolicy
from clockwork.controller.core import Core
from clockwork.controller.invariants import check_invariants
from tests.factories import (
    EXEC_NS,
    LOAD_NS,
    MIB,
    MS,
    add_model,
    hello,
    infer,
    replies,
    result_for,
    sent,
)


def make_fifo(max_batch: int = 16, delay_ms: float = 1.0, timeout: bool = False, models=("m",), memory=1024 * MIB,
              **cfg) -> Core:
    core = Core(SchedulerConfig(**cfg), FifoPolicy(BaselineConfig(max_batch=max_batch, max_queue_delay_ns=int(delay_ms * MS),
                                                                  queue_timeout=timeout)))
    hello(core, memory_bytes=memory)
    for name in models:
        add_model(core, name)
    return core


def step(core, effects, now):
    check_invariants(core, now)
    return effects


def warm(core, model="m", now=0):
    """Load `model` and run one request through it; returns when the device is idle again."""
    infer(core, 10_000 + now, model=model, now=now)
    load = sent(step(core, core.tick(now), now), schema.Load)[0]
    t = now + LOAD_NS
    effects = result_for(core, load, t) + core.tick(t)
    execs = sent(step(core, effects, t), schema.Exec)
    assert len(execs) == 1
    t += 3 * MS
    step(core, result_for(core, execs[0], t), t)
    return t


def test_baseline_is_pure_code():
    text = (pathlib.Path(__file__).parent.parent / "controller" / "baseline.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(time|zmq|threading|asyncio|socket)\b", text, re.MULTILINE)


def test_never_rejects_for_admission():
    core = make_fifo(max_queue_per_model=4)
    # 5 ms cannot cover a LOAD (8 ms) plus an EXEC: the core refuses it, the baseline queues it.
    assert not replies(infer(core, 1, slo_ms=5))
    for i in range(2, 20):  # past max_queue_per_model: no QUEUE_FULL either
        assert not replies(infer(core, i, slo_ms=100))
    assert len(core.models["m"].queue) == 19 and core.counters["requests_admitted"] == 19
    check_invariants(core, 0)
    # What no system could serve is still refused.
    assert replies(infer(core, 99, model="nope"))[0].body.status is Status.MODEL_NOT_FOUND


def test_dispatches_a_full_batch_at_once_and_the_rest_after_the_queue_delay():
    core = make_fifo(max_batch=8, delay_ms=2.0)
    t = warm(core)
    for i in range(11):
        infer(core, i, now=t)
    execs = sent(step(core, core.tick(t), t), schema.Exec)
    assert len(execs) == 1 and len(execs[0].body.tensors) == 8 and execs[0].body.batch_size == 8
    assert execs[0].body.latest_ns - t > 1000 * MS  # no window: a baseline EXEC is never dropped
    ids = [a.request_id for a in replies(result_for(core, execs[0], t + 7 * MS))]
    assert ids == list(range(8))  # FIFO: the first eight
    t2 = t + 7 * MS  # the remaining 3 have waited 7 ms > 2 ms: due at once
    execs = sent(step(core, core.tick(t2), t2), schema.Exec)
    assert len(execs[0].body.tensors) == 3 and execs[0].body.batch_size == 4  # padded to a profiled size
    result_for(core, execs[0], t2 + 5 * MS)
    # A lone request on an idle device waits out the delay for company, then goes alone.
    t3 = t2 + 10 * MS
    infer(core, 50, now=t3)
    assert not sent(step(core, core.tick(t3), t3), schema.Exec)
    assert core.next_wakeup_ns(t3) <= t3 + 2 * MS
    infer(core, 51, now=t3 + 1 * MS)
    assert not sent(core.tick(t3 + 1 * MS), schema.Exec)
    execs = sent(step(core, core.tick(t3 + 2 * MS), t3 + 2 * MS), schema.Exec)
    assert len(execs) == 1 and len(execs[0].body.tensors) == 2


def test_one_exec_in_flight_per_device():
    core = make_fifo(max_batch=4, delay_ms=0)
    t = warm(core)
    for i in range(12):
        infer(core, i, now=t)
    first = sent(core.tick(t), schema.Exec)
    assert len(first) == 1  # the core would book a second batch ahead; the baseline waits
    assert not sent(core.tick(t + 1 * MS), schema.Exec)
    effects = result_for(core, first[0], t + 5 * MS) + core.tick(t + 5 * MS)
    assert len(sent(step(core, effects, t + 5 * MS), schema.Exec)) == 1


def test_oldest_request_first_across_models_on_a_device():
    core = make_fifo(models=("a", "b"), delay_ms=0)
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    infer(core, 1, model="b", now=t)
    infer(core, 2, model="a", now=t + 1)
    ex = sent(core.tick(t + 1), schema.Exec)[0]
    assert ex.body.model_id == "b"


def test_loads_on_a_miss_and_evicts_the_least_recently_used_idle_model():
    core = make_fifo(models=("a", "b", "c"), memory=2 * 112 * MIB, delay_ms=0)  # room for two
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    infer(core, 1, model="c", now=t)
    effects = step(core, core.tick(t), t)
    assert [u.body.model_id for u in sent(effects, schema.Unload)] == ["a"]
    assert [x.body.model_id for x in sent(effects, schema.Load)] == ["c"]
    assert core.counters["evictions"] == 1


def test_fifo_never_answers_deadline_missed_it_runs_late():
    core = make_fifo(delay_ms=0)
    t = warm(core)
    infer(core, 1, now=t, slo_ms=100)
    slow = sent(core.tick(t), schema.Exec)[0]
    infer(core, 2, now=t, slo_ms=20)
    for later in (t + 19 * MS, t + 25 * MS, t + 200 * MS):
        assert not replies(step(core, core.tick(later), later))
    done = t + 200 * MS  # the first batch finally finishes
    assert [a.request_id for a in replies(result_for(core, slow, done))] == [1]
    ex = sent(core.tick(done), schema.Exec)[0]
    late = replies(result_for(core, ex, done + 3 * MS))[0]
    assert late.request_id == 2 and late.body.status is Status.OK  # OK, 180 ms past its SLO
    assert core.counters["met_slo"] == 1  # only the warm-up request: 1 and 2 both ran late


def test_fifo_timeout_answers_deadline_missed_at_the_deadline():
    core = make_fifo(delay_ms=0, timeout=True)
    t = warm(core)
    infer(core, 1, now=t, slo_ms=100)
    slow = sent(core.tick(t), schema.Exec)[0]
    infer(core, 2, now=t, slo_ms=20)
    # Unlike the core, it does not answer early, although the device is known to be busy...
    assert not replies(step(core, core.tick(t + 10 * MS), t + 10 * MS))
    assert not replies(step(core, core.tick(t + 20 * MS - 1), t + 20 * MS - 1))
    # ...but at the deadline.
    deadline = t + 20 * MS
    assert core.next_wakeup_ns(t + 20 * MS - 1) <= deadline
    answers = replies(step(core, core.tick(deadline), deadline))
    assert [(a.request_id, a.body.status) for a in answers] == [(2, Status.DEADLINE_MISSED)]
    assert answers[0].body.total_ns == 20 * MS
    # A batch already sent runs to completion however late.
    assert replies(result_for(core, slow, t + 300 * MS))[0].body.status is Status.OK
    check_invariants(core, t + 300 * MS)


def test_dropped_batch_keeps_its_place_at_the_front():
    core = make_fifo(max_batch=2, delay_ms=0)
    t = warm(core)
    for i in range(4):
        infer(core, i, now=t + i)
    ex = sent(core.tick(t + 4), schema.Exec)[0]
    assert not replies(result_for(core, ex, t + 1 * MS, status=Status.NOT_LOADED))
    again = sent(step(core, core.tick(t + 1 * MS), t + 1 * MS), schema.Exec)[0]
    ids = [a.request_id for a in replies(result_for(core, again, t + 6 * MS))]
    assert ids == [0, 1]


def test_exec_time_prediction_comes_from_the_latency_model():
    core = make_fifo(delay_ms=0)
    t = warm(core)
    infer(core, 1, now=t)
    ex = sent(core.tick(t), schema.Exec)[0]
    assert ex.body.expected_ns == EXEC_NS[1]
