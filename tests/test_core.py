"""The pure scheduling core, driven step by step; invariants are checked after every step."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re

import numpy as np
import pytest

from clockwork.common import schema
from clockwork.common.config import SchedulerConfig
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller import admission
from clockwork.controller.admission import Headroom
from clockwork.controller.core import Core
from clockwork.controller.policy import ClockworkPolicy
from clockwork.controller.effects import PrepareOn, ToWorker, WorkerLost
from clockwork.controller.invariants import check_invariants
from clockwork.controller.latency import ClientHops
from tests.factories import (
    CLIENT, EXEC_NS, LOAD_NS, MS, MIB, SIG, add_model, hello, infer, make_core, replies, result_for, sent, uploads,
)


def step(core, effects, now):
    check_invariants(core, now)
    return effects


def ready_core(models=("m",), **cfg):
    core = make_core(**cfg)
    hello(core)
    for name in models:
        add_model(core, name)
    return core


def test_core_imports_no_clock_sockets_or_threads():
    root = pathlib.Path(__file__).parent.parent / "controller"
    pure = ["core.py", "policy.py", "admission.py", "invariants.py", "batching.py", "latency.py", "timeline.py",
            "queues.py", "state.py", "lifecycle.py", "effects.py", "placement.py", "baseline.py"]
    for name in pure:
        text = (root / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+(time|zmq|threading|asyncio|socket|logging|structlog)\b", text, re.M), name


def test_unknown_model_bad_input_and_impossible_slo_are_refused_at_once():
    core = ready_core()
    assert replies(infer(core, 1, model="nope"))[0].body.status is Status.MODEL_NOT_FOUND
    bad = schema.Infer(model="m", slo_ns=100 * MS, tensors=())
    assert replies(core.on_request(b"c", 2, bad, 0))[0].body.status is Status.BAD_INPUT
    # 1 sample needs load 8 ms + exec 2 ms + dispatch 1 ms on an idle device
    refused = replies(infer(core, 3, slo_ms=5))[0].body
    assert refused.status is Status.WOULD_MISS_DEADLINE and "idle device" in refused.detail
    assert not core.requests


def test_the_next_load_is_sent_as_the_last_nears_its_end_not_after_its_result():
    """A device has one copy lane. With one LOAD in flight it idled from each LOAD's end until
    the controller had read the result and sent the next (2-4 ms of every 8 ms on a busy host).
    The next goes once the running one ends within the time EXECs are sent ahead, not sooner:
    nothing is placed behind a LOAD far from its end."""
    core = ready_core(models=("a", "b"))
    t = 2000 * MS  # past the start-up grace
    core.on_heartbeat("w1", 1, t, True, t)
    infer(core, 1, model="a", now=t)
    first = sent(step(core, core.tick(t), t), schema.Load)
    assert [load.body.model_id for load in first] == ["a"]
    infer(core, 2, model="b", now=t)
    assert not sent(step(core, core.tick(t), t), schema.Load)  # the lane is 8 ms busy
    dev = core.workers["w1"].devices[0]
    near = t + LOAD_NS - core.ahead_ns(dev)
    assert not sent(step(core, core.tick(near - MS), near - MS), schema.Load)
    second = sent(step(core, core.tick(near), near), schema.Load)
    assert [load.body.model_id for load in second] == ["b"] and dev.loads_in_flight == 2
    assert dev.load_lane.free_at(near) == t + 2 * LOAD_NS  # booked behind the first on the lane
    assert not core.load_slot_free(dev, near)  # never a third


def test_a_cold_model_whose_slo_cannot_cover_a_load_is_loaded_for_the_requests_that_follow():
    """A LOAD (8 ms), the hop (1 ms) and an EXEC (2 ms) do not fit a 7 ms budget; the EXEC alone
    does. Loaded only on demand, the model would stay cold and every request be refused."""
    core = ready_core()
    t = 2000 * MS  # past the start-up grace
    core.on_heartbeat("w1", 1, t, True, t)
    effects = infer(core, 1, now=t, slo_ms=8)
    refused = replies(effects)[0].body
    assert refused.status is Status.WOULD_MISS_DEADLINE and "being loaded now" in refused.detail
    load = sent(effects, schema.Load)[0]
    step(core, result_for(core, load, t + LOAD_NS), t + LOAD_NS)
    t += LOAD_NS
    assert not replies(infer(core, 2, now=t, slo_ms=8))  # resident: admitted
    ex = sent(step(core, core.tick(t), t), schema.Exec)[0]
    assert replies(result_for(core, ex, t + 3 * MS))[0].body.status is Status.OK
    assert core.counters["warm_up_loads"] == 1


def test_welcome_names_the_controllers_host():
    core = Core(SchedulerConfig(), ClockworkPolicy(), host="boot-1")
    (welcome,) = sent(hello(core), schema.Welcome)
    assert welcome.body.host == "boot-1"


def test_without_workers_requests_wait_a_grace_for_them_then_are_refused_at_once():
    core = make_core(worker_timeout_ns=1000 * MS)
    add_model(core, "m", workers=())
    assert not replies(infer(core, 1, now=0, slo_ms=100))  # just started: workers may be rejoining
    assert replies(core.tick(101 * MS))[0].body.status is Status.DEADLINE_MISSED  # nobody came
    assert replies(infer(core, 2, now=1001 * MS))[0].body.status is Status.UNAVAILABLE


def test_a_request_waits_for_a_prepare_in_flight_and_is_served_when_it_lands():
    core = make_core()
    core.tick(0)
    hello(core)
    t = 5000 * MS  # long after start-up: only the PREPARE in flight makes it wait
    core.on_heartbeat("w1", 1, t, True, t)
    prepare = [e for e in core.on_upload("m", "profile", SIG, b"c", 9, t) if isinstance(e, PrepareOn)]
    assert not replies(infer(core, 1, now=t, slo_ms=100))
    core.on_prepared("w1", schema.Prepared(model_id="m", status=Status.OK, weights_bytes=100 * MIB,
                                           load_ns=LOAD_NS, exec_ns=EXEC_NS, max_batch=16), t + MS)
    assert prepare and sent(step(core, core.tick(t + MS), t + MS), schema.Load)


def test_cold_request_loads_then_executes_and_is_answered_with_its_rows():
    core = ready_core()
    infer(core, 7, now=0)
    effects = step(core, core.tick(0), 0)
    loads = sent(effects, schema.Load)
    assert len(loads) == 1 and loads[0].body.model_id == "m"
    assert not sent(effects, schema.Exec)  # never EXEC on a model that is still loading
    effects = result_for(core, loads[0], now=LOAD_NS)
    effects += core.tick(LOAD_NS)
    step(core, effects, LOAD_NS)
    execs = sent(effects, schema.Exec)
    assert len(execs) == 1
    ex = execs[0].body
    assert ex.batch_size == 1 and ex.earliest_ns <= ex.latest_ns
    assert ex.latest_ns + EXEC_NS[1] <= 100 * MS  # the window keeps the deadline
    answer = replies(result_for(core, execs[0], now=LOAD_NS + 3 * MS))[0]
    assert answer.body.status is Status.OK and answer.body.cold_start
    assert answer.body.tensors[0].array().tolist() == [[7.0, 7.0]]
    assert core.counters["met_slo"] == 1


def test_each_request_of_a_batch_gets_its_own_rows_and_one_past_the_outputs_a_runtime_error():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, samples=1)
    infer(core, 2, now=t, samples=2)
    infer(core, 3, now=t, samples=1)
    ex = sent(core.tick(t), schema.Exec)[0]
    assert ex.body.batch_size == 4
    short = Tensor.from_array("y", np.arange(6, dtype=np.float32).reshape(3, 2))  # 3 rows for 4 samples
    msg = schema.Result(action=schema.ActionKind.EXEC, status=Status.OK, device_id=0, model_id="m",
                        begin_ns=t, end_ns=t + EXEC_NS[4], duration_ns=EXEC_NS[4], batch_size=4, tensors=(short,))
    answers = {r.request_id: r.body for r in replies(core.on_result("w1", ex.msg_id, msg, t + EXEC_NS[4]))}
    assert answers[1].tensors[0].array().tolist() == [[0.0, 1.0]]
    assert answers[2].tensors[0].array().tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert answers[3].status is Status.RUNTIME_ERROR and "has shape [3, 2]" in answers[3].detail
    for answer in (answers[1], answers[2]):  # where their time went, hop by hop
        assert answer.status is Status.OK and not answer.cold_start
        assert (answer.queue_ns, answer.lane_start_ns, answer.lane_end_ns, answer.total_ns) == (0, 0, EXEC_NS[4], EXEC_NS[4])
        assert (answer.exec_ns, answer.batch_size, answer.batch_samples, answer.worker) == (EXEC_NS[4], 4, 4, "w1")


def test_a_batch_of_one_request_answers_with_its_outputs_whole_or_with_its_rows_of_them():
    """A lone request whose samples are all the output rows gets the outputs as they came (no
    copy, no cut); one padded to a larger batch gets its rows; too few rows are an error."""
    core = ready_core()
    t = warm(core)
    for request_id, samples, rows in ((1, 2, 2), (2, 3, 4), (3, 2, 1)):
        infer(core, request_id, now=t, samples=samples)
        ex = sent(core.tick(t), schema.Exec)[0]
        out = Tensor.from_array("y", np.arange(rows * 2, dtype=np.float32).reshape(rows, 2))
        msg = schema.Result(action=schema.ActionKind.EXEC, status=Status.OK, device_id=0, model_id="m", begin_ns=t,
                            end_ns=t + MS, duration_ns=MS, batch_size=ex.body.batch_size, tensors=(out,))
        body = replies(core.on_result("w1", ex.msg_id, msg, t + MS))[0].body
        if rows == samples:
            assert body.status is Status.OK and body.tensors[0] is out
        elif rows > samples:
            assert body.status is Status.OK and body.tensors[0].array().tolist() == [[0, 1], [2, 3], [4, 5]]
        else:
            assert body.status is Status.RUNTIME_ERROR and "has shape [1, 2]" in body.detail
        t += 2 * MS


WARM_IDS = itertools.count(10_000)


def warm(core, model="m", now=0):
    """Load `model` on w1/0 and return the time it became resident."""
    infer(core, next(WARM_IDS), model=model, now=now)  # ids once used are remembered a while
    load = sent(core.tick(now), schema.Load)[0]
    t = now + LOAD_NS
    effects = result_for(core, load, t) + core.tick(t)
    for ex in sent(effects, schema.Exec):
        result_for(core, ex, t + 2 * MS)
    return t + 2 * MS


def test_queued_requests_are_batched_to_the_largest_size_that_meets_every_deadline():
    core = ready_core()
    t = warm(core)
    # lane busy with another batch so requests accumulate
    for i in range(5):
        infer(core, i, now=t, slo_ms=100)
    effects = step(core, core.tick(t), t)
    execs = sent(effects, schema.Exec)
    assert len(execs) == 1
    assert execs[0].body.batch_size == 8  # 5 samples padded to the profiled size 8
    assert len(execs[0].body.tensors) == 5  # each request's tensor forwarded as its own chunk
    answers = replies(result_for(core, execs[0], t + 7 * MS))
    assert sorted(a.request_id for a in answers) == [0, 1, 2, 3, 4]
    for a in answers:
        assert a.body.tensors[0].array()[0, 0] == a.request_id  # each gets its own rows back
        assert (a.body.batch_size, a.body.batch_samples) == (8, 5)  # run at 8, 5 of them real


def test_a_tight_deadline_limits_the_batch():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=5.5)  # 1 ms of it is the reply's hop; 2 would take 3 ms + 1 ms dispatch: fits; 4 would not
    for i in range(2, 6):
        infer(core, i, now=t, slo_ms=100)
    ex = sent(core.tick(t), schema.Exec)[0].body
    assert ex.batch_size == 2


def test_infeasible_queued_request_is_answered_before_its_deadline():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=50)
    first = sent(core.tick(t), schema.Exec)[0]  # predicted to run t+1 .. t+3 ms
    assert not replies(infer(core, 2, now=t, slo_ms=7))  # admitted: t+3 + 2 ms exec fits t+6 (1 ms is the reply's)
    # the worker runs late: at t+4.5 ms there is still no result, so request 2 cannot finish
    # before t+4.5 + 1 ms dispatch + 2 ms exec = t+7.5 > its deadline t+6
    later = t + int(4.5 * MS)
    answers = replies(core.tick(later))
    assert [a.request_id for a in answers] == [2]
    assert answers[0].body.status is Status.DEADLINE_MISSED
    assert later < t + 6 * MS  # answered before its deadline
    result_for(core, first, t + 5 * MS)
    check_invariants(core, t + 5 * MS)


def core_with_a_return_tail():
    """A core whose results have taken 0.1 ms from the lane to it, one in twenty-five 2.1 ms:
    the reply allowance keeps the 2.1 ms free (plus its 1 ms floor), a typical reply needs 0.1."""
    core = ready_core()
    for i in range(100):
        back = int(2.1 * MS) if i % 25 == 0 else int(0.1 * MS)
        core.latency.observe_hops("w1", 0, 0, 0, 0, back)
    t = warm(core, now=core.cfg.refresh_ns)  # its tick refreshes the allowances
    assert core.reply_ns == int(3.1 * MS) and core.give_up_slack_ns == 2 * MS
    return core, t


@pytest.mark.parametrize("first_back_ms,outcome", [(4.5, Status.OK), (5.0, Status.DEADLINE_MISSED)])
def test_a_request_late_for_its_plan_runs_while_a_typical_reply_would_still_reach_its_client(first_back_ms, outcome):
    """Request 2 is planned to end by t+5.9 ms (its 9 ms SLO less the 3.1 ms reply allowance).
    The batch ahead of it ends late; from t+4.5 it can end at t+7.5 at best (1 ms dispatch, 2 ms
    exec), past its plan but within the 2 ms a typical reply leaves: it runs, alone, and the
    lane may start it up to t+5.9 (t+5.9 + 2 - 2). From t+5.0 it cannot (t+8.0): given up."""
    core, t = core_with_a_return_tail()
    infer(core, 1, now=t, slo_ms=100)
    first = sent(core.tick(t), schema.Exec)[0]  # t+1 .. t+3 ms
    assert not replies(infer(core, 2, now=t, slo_ms=9))  # t+5 fits t+5.9 less its 0.3 ms headroom
    now = t + int(first_back_ms * MS)
    result_for(core, first, now)
    effects = step(core, core.tick(now), now)
    answers = replies(effects)
    if outcome is Status.DEADLINE_MISSED:
        assert [(a.request_id, a.body.status) for a in answers] == [(2, outcome)]
        return
    assert not answers
    ex = sent(effects, schema.Exec)[0]
    assert ex.body.latest_ns == t + int(5.9 * MS) and ex.body.earliest_ns <= now + MS <= ex.body.latest_ns
    done = replies(result_for(core, ex, now + 3 * MS))
    assert [(a.request_id, a.body.status) for a in done] == [(2, outcome)]


def test_a_request_runs_while_a_typical_hop_to_its_client_would_still_bring_the_reply_in_time():
    """The same with the tail on the way on to the client, which the client reports: hops of
    0.1 ms, one in twenty-five 2.1 ms. Its requests are planned with the 2.1 ms free and given
    up only once even a 0.1 ms hop would come too late: request 2 (SLO 8 ms) is planned to end
    by t+5.9; from t+4.5 it can end at t+7.5, within the 2 ms: it runs and is answered. The slack
    never exceeds the reply allowance's 2 ms floor, whatever a client's tail."""
    long = ready_core(reply_ns=2 * MS)
    for reply_id in range(1, 101):
        long.client_hops.observe(CLIENT, reply_id, 5000 * MS if reply_id % 25 == 0 else int(0.1 * MS))
    warm(long, now=long.cfg.refresh_ns)
    assert long.client_hops.least_excess_ns > 4000 * MS and long.give_up_slack_ns == 2 * MS
    core = ready_core(reply_ns=2 * MS)
    for reply_id in range(1, 101):
        core.client_hops.observe(CLIENT, reply_id, int(2.1 * MS) if reply_id % 25 == 0 else int(0.1 * MS))
    t = warm(core, now=core.cfg.refresh_ns)
    assert core.client_hops.least_excess_ns == 2 * MS and core.give_up_slack_ns == 2 * MS
    infer(core, 1, now=t, slo_ms=100)
    first = sent(core.tick(t), schema.Exec)[0]  # t+1 .. t+3 ms
    assert not replies(infer(core, 2, now=t, slo_ms=8))
    now = t + int(4.5 * MS)
    result_for(core, first, now)
    effects = step(core, core.tick(now), now)
    assert not replies(effects)
    ex = sent(effects, schema.Exec)[0]
    assert ex.body.latest_ns == t + int(5.9 * MS)
    assert [(a.request_id, a.body.status) for a in replies(result_for(core, ex, now + 3 * MS))] == [(2, Status.OK)]


def test_dropped_action_requeues_and_serves_later():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=100)
    ex = sent(core.tick(t), schema.Exec)[0]
    assert not replies(result_for(core, ex, t + 1 * MS, status=Status.TOO_LATE))
    assert len(core.models["m"].queue) == 1
    again = sent(core.tick(t + 1 * MS), schema.Exec)
    assert len(again) == 1
    assert replies(result_for(core, again[0], t + 4 * MS))[0].body.status is Status.OK


def test_eviction_takes_the_least_recently_used_idle_model_never_one_in_flight():
    core = make_core()
    hello(core, memory_bytes=2 * 112 * MIB)  # two 100 MB models (7 pages each) fit, not three
    for name in ("a", "b", "c"):
        add_model(core, name)
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    # "a" is busy: an EXEC of it is in flight; and it is the least recently used, so LRU alone
    # would pick it
    infer(core, 1, model="a", now=t)
    busy = sent(core.tick(t), schema.Exec)
    assert busy and busy[0].body.model_id == "a"
    resident = core.workers["w1"].devices[0].resident  # in LRU order: "b" used last
    resident["b"] = resident.pop("b")
    assert next(iter(resident)) == "a"
    infer(core, 2, model="c", now=t)
    effects = step(core, core.tick(t), t)
    unloads, loads = sent(effects, schema.Unload), sent(effects, schema.Load)
    assert [u.body.model_id for u in unloads] == ["b"]
    assert [l.body.model_id for l in loads] == ["c"]
    assert core.counters["evictions"] == 1


def test_nothing_to_evict_means_no_load():
    core = make_core()
    hello(core, memory_bytes=112 * MIB)
    add_model(core, "a")
    add_model(core, "b")
    t = warm(core, "a")
    infer(core, 1, model="a", now=t)
    sent(core.tick(t), schema.Exec)  # "a" now has work in flight
    infer(core, 2, model="b", now=t)
    assert not sent(step(core, core.tick(t), t), schema.Load)


def test_lost_worker_is_detected_and_its_work_requeued():
    core = ready_core(worker_timeout_ns=2000 * MS)
    t = warm(core)
    infer(core, 1, now=t, slo_ms=5000)
    assert sent(core.tick(t), schema.Exec)
    late = t + 2001 * MS
    step(core, core.tick(late), late)
    assert "w1" not in core.workers and core.counters["workers_lost"] == 1
    assert len(core.models["m"].queue) == 1  # back in the queue, waiting for another device
    hello(core, name="w2")
    prepare = [e for e in hello(core, name="w3") if isinstance(e, PrepareOn)]
    assert prepare and prepare[0].model == "m"


def test_heartbeats_keep_a_worker_and_unknown_workers_are_asked_to_say_hello():
    core = ready_core(worker_timeout_ns=2000 * MS)
    for t in range(0, 5000 * MS, 500 * MS):
        core.on_heartbeat("w1", 1, t, True, t)
        core.tick(t)
    assert "w1" in core.workers
    err = core.on_heartbeat("ghost", 5, 0, True, 0)[0].body
    assert isinstance(err, schema.Error) and err.status is Status.WORKER_LOST


def test_remove_answers_queued_requests_and_drops_after_in_flight_work():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t)
    ex = sent(core.tick(t), schema.Exec)[0]
    infer(core, 2, now=t)
    status, effects = core.on_remove("m", t)
    assert status is Status.OK
    assert [r.body.status for r in replies(effects)] == [Status.MODEL_NOT_FOUND]
    assert not sent(effects, schema.Drop)  # request 1 is still executing
    effects = result_for(core, ex, t + 3 * MS)
    assert replies(effects)[0].body.status is Status.OK
    assert sent(effects, schema.Drop) and "m" not in core.models
    check_invariants(core, t + 3 * MS)


def test_upload_waits_for_workers_and_fails_when_all_refuse():
    core = make_core()
    hello(core)
    effects = core.on_upload("m", "profile", ready_core().models["m"].signature, b"c", 5, 0)
    assert [e.worker for e in effects if isinstance(e, PrepareOn)] == ["w1"]
    assert not uploads(effects)
    done = uploads(core.on_prepared("w1", schema.Prepared(model_id="m", status=Status.BAD_MODEL, detail="op X"), 0))
    assert done[0].status is Status.BAD_MODEL and "op X" in done[0].detail
    assert "m" not in core.models


def test_cancel_answers_a_queued_request_and_it_never_runs():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t)
    ok, _, effects = core.on_cancel(b"client-1", 1, t)
    assert ok and replies(step(core, effects, t))[0].body.status is Status.CANCELLED
    assert not core.models["m"].queue and not core.pending
    assert not sent(step(core, core.tick(t), t), schema.Exec)
    assert core.on_cancel(b"client-1", 1, t)[0] is False


def test_inside_a_priority_class_the_earliest_deadline_is_served_first():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=300, samples=16)  # full batches, so each EXEC carries one request
    infer(core, 2, now=t, slo_ms=100, samples=16)  # arrived later, due sooner
    [ex] = sent(step(core, core.tick(t), t), schema.Exec)
    assert ex.body.tensors[0].array()[0, 0] == 2


def test_priority_class_is_served_first():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=100, samples=16)
    infer(core, 2, now=t, slo_ms=100, samples=16, priority=5)
    ex = sent(core.tick(t), schema.Exec)[0]
    assert ex.body.tensors[0].array()[0, 0] == 2


def test_latency_model_learns_from_measurements():
    core = ready_core()
    t = warm(core)
    for i in range(40):
        infer(core, 100 + i, now=t)
        ex = sent(core.tick(t), schema.Exec)[0]
        t += 5 * MS
        result_for(core, ex, t, duration_ns=3 * MS)
    assert core.latency.exec_ns("m", 1, "emulated") == 3 * MS
    assert core.status(t)["counters"]["exec_prediction_error_ms_p50"] == 0.0


def test_exec_timings_taken_while_a_build_shared_the_gpu_are_left_out():
    core = ready_core()
    t = warm(core)

    def serve(n: int, duration_ns: int, disturbed: bool) -> list:
        nonlocal t
        answers = []
        for i in range(n):
            infer(core, 1000 * n + i + (500 if disturbed else 0), now=t)
            ex = sent(core.tick(t), schema.Exec)[0]
            t += duration_ns + MS
            answers += replies(result_for(core, ex, t, duration_ns=duration_ns, disturbed=disturbed))
        return answers

    serve(40, 3 * MS, disturbed=False)
    finish_errors = list(core.latency.finish_errors.values)
    answers = serve(10, 30 * MS, disturbed=True)  # an engine build ran on the GPU meanwhile
    assert [a.body.status for a in answers] == [Status.OK] * 10  # served and answered all the same
    assert core.latency.exec_ns("m", 1, "emulated") == 3 * MS  # ...but not learnt from
    assert list(core.latency.finish_errors.values) == finish_errors
    assert core.status(t)["counters"]["exec_measurements_disturbed"] == 10
    serve(1, 30 * MS, disturbed=False)  # the same duration, unmarked, is learnt
    assert core.latency.exec_ns("m", 1, "emulated") == 30 * MS


def test_a_hot_model_gets_another_replica_and_both_serve():
    core = make_core()
    hello(core, devices=2)
    add_model(core, "m")
    t = warm(core)
    # 160 samples at 16 per 10 ms on one device take 100 ms; admitted with a 110 ms SLO, they
    # leave no slack for the ones that follow: a second replica is wanted
    for i in range(10):
        assert not replies(infer(core, i, now=t, slo_ms=110, samples=16))
    effects = step(core, core.tick(t), t)
    loads = sent(effects, schema.Load)
    assert [(l.body.device_id, l.body.model_id) for l in loads] == [(1, "m")]
    assert core.counters["replicas_added"] == 1
    t2 = t + LOAD_NS
    effects = step(core, result_for(core, loads[0], t2) + core.tick(t2), t2)
    assert {e.body.device_id for e in sent(effects, schema.Exec)} == {0, 1}  # both replicas serve
    assert len(core.models["m"].replicas) == 2


def test_replicas_of_two_kinds_share_a_queue_as_they_come_and_go():
    """Every device's backlog holds its models' shares (check_invariants, at every step) while a
    hot model's queue is spread over replicas of two device kinds, added while requests wait
    (one of a kind that already holds a share) and lost with their worker."""
    core = make_core()
    hello(core, "w1", devices=2)
    hello(core, "w2", kind="emulated-b")
    add_model(core, "m", workers=("w1", "w2"))
    t = warm(core)
    model = core.models["m"]
    for i in range(0, 90, 10):  # hot: each round's queue wants another replica
        for j in range(i, i + 10):
            step(core, infer(core, j, now=t, slo_ms=110, samples=16), t)
        for load in sent(step(core, core.tick(t), t), schema.Load):
            step(core, result_for(core, load, t + LOAD_NS), t + LOAD_NS)
        t += LOAD_NS
        step(core, core.tick(t), t)
    assert len(model.replicas) == 3 and set(model.backlog_shares) == {"emulated", "emulated-b"}
    w1 = [dev for dev in model.replicas.values() if dev.worker == "w1"]
    t += core.cfg.worker_timeout_ns // 2
    core.on_heartbeat("w1", 1, t, True, t)  # w1 stays, w2 goes silent
    t += core.cfg.worker_timeout_ns // 2 + 1
    step(core, core.tick(t), t)
    assert list(model.replicas.values()) == w1 and set(model.backlog_shares) == {"emulated"}


def test_an_idle_extra_replica_is_released_but_the_last_one_stays():
    core = make_core(replica_idle_ns=500 * MS)
    hello(core, devices=2)
    add_model(core, "m")
    t = warm(core)
    for i in range(10):
        infer(core, i, now=t, slo_ms=105, samples=16)
    first = core.tick(t)
    load = sent(first, schema.Load)[0]
    t += LOAD_NS
    effects = sent(first, schema.Exec) + result_for(core, load, t) + core.tick(t)
    while sent(effects, schema.Exec):  # serve everything
        t += 10 * MS
        effects = [e for ex in sent(effects, schema.Exec) for e in result_for(core, ex, t)] + core.tick(t)
        check_invariants(core, t)
    assert not core.pending
    t += 501 * MS
    unloads = sent(step(core, core.tick(t), t), schema.Unload)
    assert len(unloads) == 1 and core.counters["replicas_released"] == 1
    assert len(core.models["m"].replicas) == 1


def test_planning_touches_only_devices_with_work():
    core = make_core()
    for w in range(25):
        hello(core, name=f"w{w}", devices=4)
    for i in range(400):
        add_model(core, f"m{i}", workers=tuple(f"w{w}" for w in range(25)))
    t = 0
    infer(core, 1, model="m7", now=t)
    loads = sent(core.tick(t), schema.Load)
    assert len(loads) == 1
    t += LOAD_NS
    effects = result_for(core, loads[0], t) + core.tick(t)
    assert len(sent(effects, schema.Exec)) == 1
    assert len(core._due) <= 2  # the heap holds only the device with work, not all 100
    check_invariants(core, t)


def test_finished_actions_are_recorded_when_asked():
    core = ready_core(record_actions=True)
    infer(core, 1)
    load = sent(core.tick(0), schema.Load)[0]
    from clockwork.controller.effects import ActionRecord

    records = [e for e in result_for(core, load, LOAD_NS) if isinstance(e, ActionRecord)]
    assert len(records) == 1
    rec = records[0]
    assert (rec.kind, rec.model, rec.predicted_ns, rec.measured_ns, rec.status) == ("load", "m", LOAD_NS, LOAD_NS, "OK")
    quiet = ready_core()
    infer(quiet, 1)
    assert not [e for e in result_for(quiet, sent(quiet.tick(0), schema.Load)[0], LOAD_NS) if isinstance(e, ActionRecord)]


def test_admission_refuses_a_request_the_queue_ahead_would_make_late():
    core = ready_core()
    t = warm(core)
    for i in range(96):  # 96 samples = 6 batches of 16 at 10 ms: 60 ms of queued work
        infer(core, i, now=t, slo_ms=200)
    refused = replies(infer(core, 1000, now=t, slo_ms=30))
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE
    assert "queued ahead" in refused[0].body.detail
    assert not replies(infer(core, 1001, now=t, slo_ms=150))  # this one can still make it


def test_admission_prices_other_models_queues_at_the_batch_size_they_will_run_in():
    core = make_core()
    hello(core)
    names = [f"m{i}" for i in range(20)]
    t = 0
    for name in names:
        add_model(core, name, weights_bytes=16 * MIB)
        t = warm(core, name, now=t)
    for i, name in enumerate(names):  # one request each: 20 batches of 1 at 2 ms, 40 ms of work
        infer(core, i, model=name, now=t, slo_ms=200)
    check_invariants(core, t)
    # Priced at the batch-16 rate (10 ms / 16 a sample) it would look like 12.5 ms of work.
    refused = replies(infer(core, 1000, model="m0", now=t, slo_ms=30))
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE
    assert not replies(infer(core, 1001, model="m0", now=t, slo_ms=60))


def test_admission_keeps_its_headroom_free():
    outcomes = {}
    for headroom in (0.0, 0.05):
        core = ready_core(admission_headroom=headroom)
        t = warm(core)
        for i in range(96):  # 60 ms of queued work; with the dispatch and the batch it rides in: 63 ms
            infer(core, i, now=t, slo_ms=500)
        outcomes[headroom] = replies(infer(core, 1000, now=t, slo_ms=66))  # 65 ms to finish in
    assert not outcomes[0.0]
    assert outcomes[0.05] and outcomes[0.05][0].body.status is Status.WOULD_MISS_DEADLINE


def serve_all(core, now, limit_ms=1000):
    """Tick every millisecond, each EXEC's result coming back its expected duration after its
    earliest start, until no request is left; the replies on the way."""
    answers, running = [], []
    for _ in range(limit_ms):
        effects = step(core, core.tick(now), now)
        running += [(max(now, ex.body.earliest_ns) + ex.body.expected_ns, ex) for ex in sent(effects, schema.Exec)]
        for done in [r for r in running if r[0] <= now]:
            running.remove(done)
            effects += result_for(core, done[1], now)
        answers += replies(effects)
        if not core.requests and not running:
            return answers
        now += MS
    raise AssertionError(f"{len(core.requests)} requests still unanswered")


def test_a_dry_run_serves_what_admission_would_refuse_and_counts_those_in_time_all_the_same():
    core = ready_core(admission_dry_run=True)
    t = warm(core)
    for i in range(96):  # 60 ms of queued work, as in test_admission_keeps_its_headroom_free
        infer(core, i, now=t, slo_ms=500)
    # Refused behind the queue if not a dry run: priced as if served after it, but the earliest
    # deadline, so served first, and in time.
    assert not replies(infer(core, 1000, now=t, slo_ms=66))
    assert not replies(infer(core, 1001, now=t, slo_ms=3))  # too short even on an idle device
    counters = core.counters
    assert (counters["dry_run_refused"], counters["dry_run_refused_for_backlog"]) == (2, 1)
    assert "rejected_would_miss_deadline" not in counters and "rejected_for_backlog" not in counters
    answers = {a.request_id: a.body for a in serve_all(core, t)}
    assert len(answers) == 98 and answers[1000].status is Status.OK
    assert answers[1001].status is Status.DEADLINE_MISSED  # given up once queued: it cannot make it
    assert core.counters["dry_run_refused_met_slo"] == 1
    assert core.counters["met_slo"] == 96 + 1 + 1  # the queue, warm()'s request and request 1000
    # The headroom follows what admission admits: request 1001's give-up, which an enforcing
    # admission would not have had, does not widen it.
    step(core, core.tick(t + 200 * MS), t + 200 * MS)
    assert core.policy.headroom.share == core.cfg.admission_headroom


def test_a_request_is_priced_riding_in_the_batch_its_model_queue_makes_not_in_one_of_its_own():
    """Its model's queue ahead (20 samples: a batch of 16, then 4 with it in a batch of 8) takes
    10 + 6 ms; priced as the queue (10 + 4 ms) and then a full batch of its own, it took 24."""
    core = ready_core()
    t = warm(core)
    for i in range(20):
        infer(core, i, now=t, slo_ms=500)
    dev = core.workers["w1"].devices[0]
    model = core.models["m"]
    finish = admission.finish_behind_queue_ns(core, model, 1, 0, t)
    assert finish - t == core.cfg.dispatch_ns + EXEC_NS[16] + EXEC_NS[8]
    assert dev.backlog.total == EXEC_NS[16] + EXEC_NS[4]  # what the device's backlog holds for it


def cut_batch_core():
    """A core whose device just ran a batch of 2 where its queue held 5: request 1's deadline
    held it there (as under overload, when requests reach the head with little slack)."""
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=5.5)
    for i in range(2, 6):
        infer(core, i, now=t, slo_ms=100)
    assert [ex.body.batch_size for ex in sent(core.tick(t), schema.Exec)] == [2, 4]  # then the other 3, padded
    for i in range(6, 26):  # a queue to price
        infer(core, i, now=t, slo_ms=500)
    return core, t


def test_a_device_whose_batches_are_cut_short_has_its_queues_priced_at_the_pace_it_keeps():
    """A batch held below what its queue fills costs more per sample than the batches the queue
    is priced in (here 3 ms for 2 samples, where 5 samples cost 6 ms as a batch of 8: 2.4 ms for
    two), so the queue drains slower than priced; a refresh later admission prices it at that.
    The device's other batches since the last refresh (the warm-up's 1 sample, the other 3 as
    a batch of 4) ran as priced: 2 + 3 + 4 ms against 2 + 2.4 + 4."""
    core, t = cut_batch_core()
    model, dev, pace = core.models["m"], core.workers["w1"].devices[0], core.policy.pace
    before = admission.finish_behind_queue_ns(core, model, 1, 0, t, pace=pace)
    assert pace.of(dev.key) == 1.0  # learnt at the next refresh
    pace.refresh()
    assert pace.of(dev.key) == pytest.approx((EXEC_NS[1] + EXEC_NS[2] + EXEC_NS[4])
                                             / (EXEC_NS[1] + EXEC_NS[8] * 2 / 5 + EXEC_NS[4]))
    after = admission.finish_behind_queue_ns(core, model, 1, 0, t, pace=pace)
    assert after > before
    # The same request, admitted at the priced pace, is refused at the device's own.
    share = core.policy.headroom.share
    slo_ms = ((before + after) / 2 - t) / (1 - share) / MS + core.reply_ns / MS
    twin, _ = cut_batch_core()
    assert not replies(infer(twin, 1000, now=t, slo_ms=slo_ms))
    refused = replies(infer(core, 1000, now=t, slo_ms=slo_ms))
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE


def test_drain_pace_is_one_while_batches_run_as_priced_and_capped_when_they_do_not():
    pace = admission.DrainPace()
    pace.sent("w/0", 4 * MS, 4 * MS)
    pace.sent("w/1", 3 * MS, 4 * MS)  # faster than priced (a smaller batch for efficiency): not credited
    pace.sent("w/2", 40 * MS, 1 * MS)
    pace.refresh()
    assert (pace.of("w/0"), pace.of("w/1"), pace.of("w/2"), pace.of("w/9")) == (1.0, 1.0, admission.MAX_DRAIN_PACE, 1.0)
    pace.refresh()  # a refresh with no batches sent forgets the last one's
    assert pace.of("w/2") == 1.0


def test_a_lanes_turnaround_between_back_to_back_execs_is_measured_booked_and_priced():
    """An EXEC already at the worker when the previous one on its lane ends starts a little
    after that end (the worker's hand-offs: ~35 us an action on a 2-core host, 4% of a 0.8 ms
    CNN's run). That lane time is measured from the results, booked after each EXEC and
    counted in the pace queues are priced at; the wait before an EXEC the lane had to wait for
    is not a turnaround."""
    core = ready_core()
    t = warm(core)
    worker, dev, gap = core.workers["w1"], core.workers["w1"].devices[0], MS // 2
    infer(core, 1, now=t)
    first = sent(core.tick(t), schema.Exec)[0]
    infer(core, 2, now=t)
    second = sent(core.tick(t), schema.Exec)[0]  # sent ahead: ready long before the first ends
    first_end = t + core.dispatch_floor_ns + EXEC_NS[1]
    step(core, result_for(core, first, first_end), first_end)
    second_end = first_end + gap + EXEC_NS[1]
    step(core, result_for(core, second, second_end), second_end)
    # A third, sent once the lane is idle: the lane waited for it, which says nothing.
    late = second_end + 20 * MS
    infer(core, 3, now=late)
    third = sent(core.tick(late), schema.Exec)[0]
    step(core, result_for(core, third, late + 10 * MS), late + 10 * MS)
    assert worker.turnaround_ns == 0  # read at the next refresh
    t = late + 10 * MS + core.cfg.refresh_ns
    core.tick(t)
    assert worker.turnaround_ns == gap
    assert core.status(t)["scheduler"]["turnaround_ms"] == gap / MS
    # Booked after each EXEC: the lane is typically free a turnaround after the run, and at the
    # tail the run's own tail later (one in ten runs 3x long here), the turnaround not taken off it.
    for i in range(30):
        core.latency.observe_exec("m", 1, "emulated", EXEC_NS[1] * (3 if i % 10 == 0 else 1), 0)
    tail, typical = core.latency.exec_ns("m", 1, "emulated"), core.latency.typical_exec_ns("m", 1, "emulated")
    assert tail > typical == EXEC_NS[1]
    infer(core, 4, now=t)
    sent(core.tick(t), schema.Exec)
    assert dev.exec_lane.typical_free_at(t) == t + core.dispatch_floor_ns + EXEC_NS[1] + gap
    assert dev.exec_lane.free_at(t) == dev.exec_lane.typical_free_at(t) + tail - typical
    # And in the pace: queues drain at run time plus turnaround per batch.
    core.policy.pace.refresh()
    assert core.policy.pace.of(dev.key) == pytest.approx((EXEC_NS[1] + gap) / EXEC_NS[1])


def test_a_lanes_idle_time_with_work_waiting_is_told_apart_by_where_the_work_waited():
    """Between two runs the lane idles on the worker (the next EXEC was there: its turnaround,
    a stall of its host) or on the controller (the next run's request was here, its EXEC not yet
    at the worker: planning, sending, the hop). Idle time with nothing to run counts in neither."""
    core = ready_core()
    t = warm(core)  # the lane's last run ended at t
    dev, floor, run = core.workers["w1"].devices[0], core.dispatch_floor_ns, EXEC_NS[1]

    def idle():
        return dev.lane_idle_worker_ns, dev.lane_idle_controller_ns

    infer(core, 1, now=t)  # to an idle lane: it waits for the EXEC's dispatch
    first = sent(core.tick(t), schema.Exec)[0]
    infer(core, 2, now=t)
    second = sent(core.tick(t), schema.Exec)[0]  # sent ahead: at the worker before the first ends
    first_end = t + floor + run
    step(core, result_for(core, first, first_end, duration_ns=run), first_end)
    assert idle() == (0, floor)
    late = first_end + run  # the third's request comes while the second runs; planned 2 ms late
    infer(core, 3, now=late)
    second_end = first_end + MS // 2 + run  # the worker started the second 0.5 ms late
    step(core, result_for(core, second, second_end, duration_ns=run), second_end)
    assert idle() == (MS // 2, floor)
    planned = second_end + 2 * MS
    third = sent(core.tick(planned), schema.Exec)[0]
    third_end = planned + floor + run
    step(core, result_for(core, third, third_end, duration_ns=run), third_end)
    assert idle() == (MS // 2, floor + 2 * MS + floor)  # from the second's end, when the lane was free
    quiet = third_end + 20 * MS  # nothing to run for 20 ms: not counted
    infer(core, 4, now=quiet)
    fourth = sent(core.tick(quiet), schema.Exec)[0]
    step(core, result_for(core, fourth, quiet + floor + run, duration_ns=run), quiet + floor + run)
    assert idle() == (MS // 2, 3 * floor + 2 * MS)
    [worker] = core.status(quiet)["workers"]  # summed over the worker's devices (one here)
    assert (worker["lane_idle_worker_ms"], worker["lane_idle_controller_ms"]) == tuple(ns / MS for ns in idle())


def test_met_slo_counts_an_answer_past_the_planning_deadline_until_the_client_would_see_it_late():
    """The planning deadline keeps the whole reply allowance free, the way back from the
    worker's tail (3 ms here) as well as the hop to the client (the floor). Once the result is
    back, only the floor is needed: an answer 2 ms past the planning deadline still reaches the
    client in time; one 4 ms past it does not, and counts as answered late."""
    core = ready_core()
    t = warm(core)
    back_ns = 3 * MS
    outcomes = []
    for request_id, past_ns in ((1, 2 * MS), (2, 4 * MS)):
        infer(core, request_id, now=t, slo_ms=50)
        deadline = core.requests[(CLIENT, request_id)].deadline_ns
        ex = sent(core.tick(t), schema.Exec)[0]
        core.reply_ns = core.cfg.reply_ns + back_ns  # the way back's measured tail, as a refresh sets it
        answer = replies(result_for(core, ex, deadline + past_ns))[0]
        assert answer.body.status is Status.OK
        outcomes.append((core.counters.get("met_slo", 0), core.counters.get("answered_late", 0)))
        t = deadline + past_ns
    assert outcomes == [(2, 0), (2, 1)]  # the warm-up's answer met it too


def test_a_client_that_reports_its_replies_hop_is_planned_with_it_instead_of_the_floor():
    """A client on this host reports each reply 0.3 ms after the core answered it; another
    client reports nothing. The floor (2 ms here) stays the second one's reply allowance; the
    first one's becomes its measured hop for a request that finds the model's device idle, and
    an SLO that the floor would refuse is admitted."""
    core = ready_core(reply_ns=2 * MS)
    t = warm(core)
    near, silent = b"near", b"silent"

    def request(client, request_id, now, slo_ms, last_reply_id=0, seen_ns=None):
        x = np.full((1, 4), request_id, dtype=np.float32)
        msg = schema.Infer(model="m", slo_ns=int(slo_ms * MS), tensors=(Tensor.from_array("x", x),),
                           last_reply_id=last_reply_id)
        return core.on_request(client, request_id, msg, now, 0, seen_ns)

    answered_ns = None
    for request_id in range(1, 31):
        # Reported twice (a second INFER sent before the next reply): counted once.
        for _ in range(2):
            request(near, request_id, t, 100, request_id - 1, None if answered_ns is None else answered_ns + 300_000)
        ex = sent(core.tick(t), schema.Exec)[0]
        t += 3 * MS
        assert replies(result_for(core, ex, t))[0].body.status is Status.OK
        answered_ns = t
    hop = core.client_hops.tail_ns
    assert hop(near) is None  # learnt at the next refresh
    core.client_hops.refresh()
    for reply_id in range(1, 21):  # a client farther than the floor
        core.client_hops.observe(b"far", reply_id, 5 * MS)
    # Two clients as near, each with one stall among its last 100 hops: below the floor, then above.
    for client, stall_ns in ((b"stalled", 1_500_000), (b"stalled_long", 2_500_000)):
        for reply_id in range(1, 101):
            core.client_hops.observe(client, reply_id, stall_ns if reply_id == 50 else 300_000)
    core.client_hops.refresh()
    model, back_ns = core.models["m"], core.reply_ns - 2 * MS

    def allowance(client):
        return admission.reply_allowance_ns(core, client, model, t)

    assert [allowance(c) for c in (near, b"far", silent)] == [back_ns + 300_000, back_ns + 5 * MS, core.reply_ns]
    # Their p99 is near 0.3 ms, but a request planned shorter than the floor is planned with the
    # longest hop of the window: one stall in a hundred would be a late answer in a hundred.
    assert hop(b"stalled") < 350_000
    assert [allowance(c) for c in (b"stalled", b"stalled_long")] == [back_ns + 1_500_000, core.reply_ns]
    assert hop(silent) is None
    assert core.status(t)["scheduler"]["reply_hop_clients"] == 4
    best = admission.best_case_ns(core, model, 1, True)
    slo_ms = (best + core.reply_ns - MS) / MS  # 1 ms short of what the floor needs
    assert replies(request(silent, 1000, t, slo_ms))[0].body.status is Status.WOULD_MISS_DEADLINE
    assert not replies(request(near, 1000, t, slo_ms))  # admitted: queued, no reply yet
    # Behind that queued request the near client's next one is planned with the floor, which is
    # the margin of a request planned to the edge; a client farther than the floor has its own
    # longer hop planned either way.
    assert replies(request(near, 1001, t, slo_ms))[0].body.status is Status.WOULD_MISS_DEADLINE
    assert [allowance(c) for c in (near, b"far")] == [core.reply_ns, back_ns + 5 * MS]


def test_client_hops_keep_a_window_per_client_and_forget_the_least_recent_reporter_when_full():
    hops = ClientHops(percentile=99, window=10, enough=3, max_clients=2)
    for i in (1, 2, 2):  # reply 2 reported by two INFERs: one sample
        hops.observe(b"a", i, i * MS)
    hops.refresh()
    assert hops.tail_ns(b"a") is None  # 2 of the 3 it needs
    for i in range(3, 30):
        hops.observe(b"a", i, (5 if i < 20 else 1) * MS)  # the last 10 all 1 ms
    hops.observe(b"b", 1, -MS)  # a clock that ran backwards: counted as no time
    hops.refresh()
    assert hops.tail_ns(b"a") == hops.worst_ns(b"a") == MS
    hops.observe(b"a", 30, 4 * MS)
    hops.refresh()
    assert hops.worst_ns(b"a") == 4 * MS and hops.tail_ns(b"a") < 4 * MS
    hops.observe(b"c", 1, MS)  # a third client: the one that reported least recently (b) goes
    hops.refresh()
    assert hops.tail_ns(b"a") is not None and hops.summary()["reply_hop_clients"] == 1
    for i, client in enumerate([b"d", b"e", b"f"] * 3):  # a churn of short-lived clients...
        hops.observe(b"a", 31 + i, MS)  # ...while a keeps reporting
        hops.observe(client, 1 + i // 3, MS)
    hops.refresh()
    assert hops.tail_ns(b"a") is not None and hops.tail_ns(b"c") is None  # c went, a stayed
    hops.observe(b"g", 1, MS)
    hops.observe(b"h", 1, MS)  # a stopped reporting: it goes too
    assert hops.tail_ns(b"a") is None and hops.summary()["reply_hop_clients"] == 0


def test_a_lone_request_refused_for_the_headroom_is_told_so_not_that_work_is_queued_ahead():
    """On an idle device the finish estimate is the request's own: an SLO it fits, but not with
    the headroom kept unplanned, is refused for that, and not counted or described as a
    refusal behind the queue (nothing is queued)."""
    core = ready_core()
    t = warm(core)
    model = core.models["m"]
    best = admission.best_case_ns(core, model, 1, True)
    share = core.policy.headroom.share
    budget = best + int(share / 2 * best)  # fits the estimate, not with the headroom's share of it
    slo_ms = (budget + core.reply_ns) / MS
    answer = replies(infer(core, 1, now=t, slo_ms=slo_ms))[0].body
    assert answer.status is Status.WOULD_MISS_DEADLINE
    assert "on an idle device" in answer.detail and "unplanned" in answer.detail
    assert "queued ahead" not in answer.detail
    assert core.counters.get("rejected_for_backlog", 0) == 0
    assert not replies(infer(core, 2, now=t, slo_ms=slo_ms * 1.2))  # with room for the headroom: admitted


def test_headroom_widens_while_admitted_requests_miss_and_narrows_once_they_stop():
    headroom = Headroom(SchedulerConfig(admission_headroom=0.05, max_admission_headroom=0.3, admission_miss_target=0.001))
    for _ in range(20):  # 0.5% of admitted requests missing, ten times the target
        headroom.admitted, headroom.missed = 1000, 5
        headroom.refresh()
    assert headroom.share == pytest.approx(0.3)
    headroom.admitted, headroom.missed = 1000, 1  # at the target: hold
    headroom.refresh()
    assert headroom.share == pytest.approx(0.3)
    for _ in range(200):  # none missing: back to the floor, 16 times more slowly than it rose
        headroom.admitted, headroom.missed = 1000, 0
        headroom.refresh()
    assert headroom.share == pytest.approx(0.05)


def test_headroom_widens_at_once_for_a_run_of_misses_and_by_one_step_for_a_few():
    """A knee's Poisson bursts miss a few at a time and move it one step, as before; a collapse
    under overload misses tens a refresh and widens it several steps at once."""
    cfg = SchedulerConfig(admission_headroom=0.05, max_admission_headroom=0.3, admission_miss_target=0.0001,
                          headroom_step=0.02)
    widened = []
    for missed in (1, 4, 5, 12, 50):
        headroom = Headroom(cfg)
        headroom.admitted, headroom.missed = 1000, missed
        headroom.refresh()
        widened.append(round(headroom.share - 0.05, 4))
    assert widened == [0.02, 0.02, 0.04, 0.06, 0.1]


def refused_behind_a_wide_headroom():
    """A core whose headroom an overload left at 0.3, that just refused a request behind 20 ms of
    queued work which it would have admitted with 0.05 kept free."""
    core = ready_core()
    t = warm(core)
    headroom = core.policy.headroom
    headroom.share = 0.3
    for i in range(32):
        infer(core, i, now=t, slo_ms=500)
    refused = replies(infer(core, 1000, now=t, slo_ms=25))
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE
    return core, t, headroom


def test_headroom_narrows_a_whole_step_once_a_device_it_refused_work_for_goes_idle():
    """After an overload the headroom stays wide; a refusal it made followed by the device
    running out of work shows the overload over: a whole step back, not a sixteenth."""
    shares = {}
    for drained in (False, True):
        core, t, headroom = refused_behind_a_wide_headroom()
        now = t
        while drained and (execs := sent(step(core, core.tick(now), now), schema.Exec)):
            for ex in execs:
                now += ex.body.expected_ns
                result_for(core, ex, now)
        assert now < core.cfg.refresh_ns  # still in the refresh the refusal came in
        step(core, core.tick(core.cfg.refresh_ns), core.cfg.refresh_ns)
        shares[drained] = headroom.share
    step_ = core.cfg.headroom_step
    assert shares == {False: pytest.approx(0.3 - step_ / 16), True: pytest.approx(0.3 - step_)}


def test_a_refusal_counts_for_the_headroom_until_it_is_back_at_its_floor():
    """Refused while the device was busy, which it still was at the next refresh (a sixteenth
    of a step); idle at the one after: a whole step then, though nothing was refused in it."""
    core, t, headroom = refused_behind_a_wide_headroom()
    first = core.cfg.refresh_ns
    execs = sent(step(core, core.tick(first), first), schema.Exec)  # busy at this refresh
    step_ = core.cfg.headroom_step
    assert headroom.share == pytest.approx(0.3 - step_ / 16)
    now = first
    while execs:
        for ex in execs:
            now += ex.body.expected_ns
            result_for(core, ex, now)
        execs = sent(step(core, core.tick(now), now), schema.Exec)
    second = 2 * core.cfg.refresh_ns
    assert now < second
    step(core, core.tick(second), second)
    assert headroom.share == pytest.approx(0.3 - step_ / 16 - step_)


def test_the_backlog_follows_the_queue():
    core = ready_core()
    t = warm(core)
    dev = core.workers["w1"].devices[0]
    for i in range(19):
        infer(core, i, now=t, slo_ms=500)
    assert dev.backlog.total == EXEC_NS[16] + EXEC_NS[4]  # 16 + 3 padded to 4
    effects = step(core, core.tick(t), t)  # a batch of 16 is dispatched: 3 stay queued
    assert sent(effects, schema.Exec) and dev.backlog.total == EXEC_NS[4]


def test_a_higher_class_is_not_refused_for_work_queued_in_lower_ones():
    core = ready_core()
    t = warm(core)
    for i in range(96):  # 60 ms of class-0 work queued
        infer(core, i, now=t, slo_ms=500)
    for i in range(16):  # 10 ms of class-5 work
        infer(core, 200 + i, now=t, slo_ms=500, priority=5)
    assert core.workers["w1"].devices[0].backlog.from_class(5) == EXEC_NS[16]
    refused = replies(infer(core, 1000, now=t, slo_ms=40))  # class 0: behind all 70 ms
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE
    assert not replies(infer(core, 1001, now=t, slo_ms=40, priority=5))  # class 5: behind 10 ms only
    check_invariants(core, t)
    execs = sent(core.tick(t), schema.Exec)
    assert execs[0].body.batch_size == 16 and {len(e.body.tensors) for e in execs[:1]} == {16}
    assert all(chunk.array()[0, 0] >= 200 for chunk in execs[0].body.tensors)  # class 5 runs first


def test_a_short_batch_goes_first_when_the_urgent_long_one_would_make_it_late():
    core = ready_core(models=("long", "short"))
    t = warm(core, "long")
    sent_at = warm(core, "short", now=t)
    t = sent_at + 20 * MS  # both queued 20 ms before the lane is planned (no tick in between)
    for i in range(16):  # a batch of 16 runs 10 ms and must start by t+5 ms (1 ms is the reply's)
        assert not replies(infer(core, 100 + i, model="long", now=sent_at, slo_ms=36))
    assert not replies(infer(core, 1, model="short", now=sent_at, slo_ms=29))  # must start by t+6 ms (2 ms alone)
    execs = sent(step(core, core.tick(t), t), schema.Exec)
    # "long" must start first, yet running it first (t+1 to t+11) would make "short" late,
    # while "short" first (t+1 to t+3) leaves "long" on time: so "short" goes first.
    assert [e.body.model_id for e in execs] == ["short", "long"]
    assert [e.body.batch_size for e in execs] == [1, 16]


@pytest.mark.timeout(30)
def test_a_first_request_after_a_year_of_uptime_is_looked_at_without_walking_every_slot_since_zero():
    """Expiry's looks are booked by housekeeping slot (1 ms): a controller whose clock reads
    a year of uptime, and whose first request comes before its first housekeeping, must not
    walk the slots before it (minutes to hours of work, the core stalled)."""
    year = 365 * 24 * 3600 * 1000 * MS  # a host up a year: 3e10 slots
    core = ready_core()
    core.on_heartbeat("w1", 1, year, True, year)
    infer(core, 1, now=year, slo_ms=100)
    effects = core.tick(year)  # its first housekeeping
    assert sent(effects, schema.Load)  # and it goes on serving
    assert core.policy.describe()["expiry_looks"] == 1


def test_batch_choice_ranks_a_model_anew_once_its_queue_changed():
    """A model's rank is kept between choices (policy.RankMemo) only while its queue stands: a
    request of a higher priority joining "b" while the lane runs "a" puts "b" first at the next
    choice."""
    core = ready_core(models=("a", "b"))
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    infer(core, 1, model="a", now=t, slo_ms=200, samples=16)  # runs first: 10 ms, the lane busy
    infer(core, 2, model="b", now=t, slo_ms=300, samples=16)  # ranked behind "a" at this choice
    [first] = sent(step(core, core.tick(t), t), schema.Exec)
    assert first.body.model_id == "a"
    infer(core, 3, model="a", now=t + MS, slo_ms=200, samples=16)
    assert not replies(infer(core, 4, model="b", now=t + MS, slo_ms=40, priority=5))
    effects = result_for(core, first, t + 10 * MS) + core.tick(t + 10 * MS)
    second = sent(step(core, effects, t + 10 * MS), schema.Exec)[0]
    assert (second.body.model_id, second.body.tensors[0].array()[0, 0]) == ("b", 4)


def test_batch_choice_ranks_a_model_anew_once_its_figures_changed():
    """The same when the latency model's figures for a queued model move (its generation):
    "b", measured far slower than profiled, must start before "a" to finish in time."""
    core = ready_core(models=("a", "b"))
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    infer(core, 1, model="a", now=t, slo_ms=90, samples=16)
    infer(core, 2, model="a", now=t, slo_ms=100, samples=16)  # must start by ~t+89 ms
    infer(core, 3, model="b", now=t, slo_ms=120, samples=16)  # a 10 ms batch: by ~t+109 ms, after "a"'s
    [first] = sent(step(core, core.tick(t), t), schema.Exec)
    assert first.body.model_id == "a"
    for _ in range(50):  # "b" is seen to take 60 ms a batch of 16: it must start by ~t+59 ms
        core.latency.observe_exec("b", 16, "emulated", 60 * MS, 10 * MS)
    effects = result_for(core, first, t + 10 * MS) + core.tick(t + 10 * MS)
    second = sent(step(core, effects, t + 10 * MS), schema.Exec)[0]
    assert second.body.model_id == "b"


def test_eviction_spares_a_model_with_queued_requests():
    core = make_core()
    hello(core, memory_bytes=3 * 112 * MIB)  # three 100 MB models fit, not four
    for name in ("a", "b", "d", "c"):
        add_model(core, name)
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    t = warm(core, "d", now=t)
    for i in range(16):  # "d" runs for 10 ms: the lane is busy past the planning horizon
        infer(core, i, model="d", now=t)
    assert sent(core.tick(t), schema.Exec)
    infer(core, 100, model="a", now=t)  # "a" is the least recently used, but has a request waiting
    assert not sent(core.tick(t), schema.Exec)
    infer(core, 101, model="c", now=t)
    effects = step(core, core.tick(t), t)
    assert [u.body.model_id for u in sent(effects, schema.Unload)] == ["b"]


def test_a_result_that_never_comes_does_not_strand_the_batch():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=500)
    lost = sent(core.tick(t), schema.Exec)[0]
    late = lost.body.latest_ns + lost.body.expected_ns + core.dispatch_ns + core.cfg.result_grace_ns + 1
    answers = replies(step(core, core.tick(late), late))
    assert core.counters["exec_results_lost"] == 1
    assert [(a.request_id, a.body.status) for a in answers] == [(1, Status.DEADLINE_MISSED)]
    assert late - (t + 500 * MS) <= core.dispatch_ns + core.cfg.result_grace_ns + core.cfg.housekeeping_ns
    assert not result_for(core, lost, late + 4 * MS)  # the straggler is ignored
    infer(core, 2, now=late, slo_ms=100)  # and the lane is free for new work
    assert sent(core.tick(late), schema.Exec)


def test_a_resent_request_being_served_or_just_answered_is_absorbed_and_answered_once():
    core = ready_core()
    t = warm(core)
    infer(core, 5, now=t)
    assert infer(core, 5, now=t + MS) == []  # the client's retry: no second reply, no second copy
    assert core.counters["duplicates_absorbed"] == 1 and len(core.models["m"].queue) == 1
    ex = sent(core.tick(t + MS), schema.Exec)[0]
    assert [r.request_id for r in replies(result_for(core, ex, t + 4 * MS))] == [5]
    # A resend that crossed the answer on the wire is absorbed too: it must not run again.
    assert infer(core, 5, now=t + 5 * MS) == [] and not core.models["m"].queue
    assert core.counters["duplicates_absorbed"] == 2
    later = t + 5 * MS + SchedulerConfig().answered_memory_ns
    core.on_heartbeat("w1", 1, later, True, later)
    core.tick(later)  # housekeeping forgets the answered id
    assert not core.answered and replies(infer(core, 5, now=later)) == []
    assert len(core.models["m"].queue) == 1  # long after, the same id is new work


def test_answered_ids_are_forgotten_oldest_first_and_only_once_past_the_memory():
    core = ready_core()
    t = warm(core)
    memory = SchedulerConfig().answered_memory_ns
    for i in range(6):  # answered 10 ms apart
        now = t + i * 10 * MS
        infer(core, 100 + i, now=now)
        replies(result_for(core, sent(core.tick(now), schema.Exec)[0], now + 4 * MS))

    def ours():  # warm()'s own answer aside
        return sorted(key for key in core.answered if 100 <= key[1] < 106)

    assert ours() == [(CLIENT, 100 + i) for i in range(6)]
    for forgotten in range(1, 7):  # each housekeeping past an answer's memory forgets it, and no other
        now = t + (forgotten - 1) * 10 * MS + 5 * MS + memory
        core.on_heartbeat("w1", 1, now, True, now)
        core.tick(now)
        assert ours() == [(CLIENT, 100 + i) for i in range(forgotten, 6)]
        if forgotten < 6:  # the youngest is still remembered: its resend is absorbed
            absorbed = core.counters.get("duplicates_absorbed", 0)
            infer(core, 105, now=now)
            assert core.counters["duplicates_absorbed"] == absorbed + 1


def test_an_unload_refused_busy_is_sent_again_and_a_load_finding_the_model_counts_as_loaded():
    """The worker knows best what it holds: a model it is still executing (a result the core
    gave up on) is unloaded again shortly after; a model it already holds is loaded."""
    core = make_core()
    hello(core, memory_bytes=2 * 112 * MIB)  # two 100 MB models fit, not three
    for name in ("a", "b", "c"):
        add_model(core, name)
    t = warm(core, "a")
    t = warm(core, "b", now=t)
    infer(core, 1, model="c", now=t)
    effects = step(core, core.tick(t), t)
    [unload], [load] = sent(effects, schema.Unload), sent(effects, schema.Load)
    retry = sent(result_for(core, unload, t + MS, status=Status.BUSY), schema.Unload)
    assert len(retry) == 1 and retry[0].body.model_id == unload.body.model_id
    assert retry[0].body.earliest_ns > t + MS
    result_for(core, retry[0], t + 10 * MS)
    result_for(core, load, t + 11 * MS, status=Status.ALREADY_LOADED)
    assert sent(step(core, core.tick(t + 11 * MS), t + 11 * MS), schema.Exec)


def test_a_worker_that_hears_nothing_from_the_controller_is_lost_though_its_heartbeats_arrive():
    """A one-way cut (issue 17): its heartbeats keep it alive, but nothing sent to it arrives."""
    core = make_core()
    hello(core, name="w1")
    hello(core, name="w2")
    add_model(core, "m", workers=("w1", "w2"))
    t = warm(core)
    core.on_heartbeat("w1", 1, t, True, t, unheard_ns=200 * MS)  # heard recently: stays
    assert "w1" in core.workers
    effects = core.on_heartbeat("w1", 2, t, True, t, unheard_ns=core.cfg.worker_timeout_ns + MS)
    assert "w1" not in core.workers and core.counters["workers_lost"] == 1
    (lost,) = [e for e in effects if isinstance(e, WorkerLost)]
    assert lost.worker == "w1" and "heard nothing from the controller for 1001 ms" in lost.why
    assert [e.body.status for e in effects if isinstance(e, ToWorker)] == [Status.WORKER_LOST]
    infer(core, 7, now=t, slo_ms=100)
    assert all(e.worker == "w2" for e in sent(core.tick(t), schema.Exec) + sent(core.tick(t), schema.Load))


def test_a_worker_that_lost_a_result_gets_no_work_until_heard_from():
    core = make_core()
    hello(core, name="w1")
    hello(core, name="w2")
    add_model(core, "m", workers=("w1", "w2"))
    infer(core, 1, slo_ms=50)
    load = sent(core.tick(0), schema.Load)[0]
    t = LOAD_NS
    ex = sent(result_for(core, load, t) + core.tick(t), schema.Exec)[0]
    silent = ex.worker
    t = ex.body.latest_ns + ex.body.expected_ns + core.dispatch_ns + core.cfg.result_grace_ns + 2 * MS
    core.on_heartbeat("w1" if silent == "w2" else "w2", 1, t, True, t)
    core.tick(t)  # the result is overdue: the worker is suspect
    assert core.workers[silent].suspect
    infer(core, 2, now=t, slo_ms=100)
    effects = core.tick(t)
    assert all(e.worker != silent for e in sent(effects, schema.Exec) + sent(effects, schema.Load))
    core.on_heartbeat(silent, 2, t, True, t + MS)
    assert not core.workers[silent].suspect


def test_time_spent_in_queues_before_the_controller_comes_out_of_the_budget():
    core = ready_core()
    t = warm(core)
    x = np.zeros((1, 4), np.float32)
    msg = schema.Infer(model="m", slo_ns=10 * MS, tensors=(Tensor.from_array("x", x),))
    gone = replies(core.on_request(b"c", 1, msg, t, waited_ns=11 * MS))[0].body
    assert gone.status is Status.WOULD_MISS_DEADLINE and "waited 11.00 ms" in gone.detail
    tight = replies(core.on_request(b"c", 2, msg, t, waited_ns=8 * MS))[0].body  # 2 ms left < 3 ms needed
    assert tight.status is Status.WOULD_MISS_DEADLINE and "left" in tight.detail
    assert not core.on_request(b"c", 3, msg, t, waited_ns=2 * MS)
    req = core.requests[(b"c", 3)]
    assert (req.received_ns, req.deadline_ns) == (t - 2 * MS, t + 7 * MS)  # the reply's hop kept apart


def test_the_dispatch_allowance_follows_how_late_lanes_really_start():
    core = ready_core()
    t = warm(core)
    for i in range(50):  # the host is busy: every EXEC starts 6 ms after the planned start
        infer(core, 100 + i, now=t, slo_ms=100)
        ex = sent(core.tick(t), schema.Exec)[0]
        planned = core.actions[ex.msg_id].planned_start_ns
        msg = schema.Result(action="exec", status=Status.OK, device_id=0, model_id="m", begin_ns=planned + 6 * MS,
                            end_ns=planned + 8 * MS, duration_ns=2 * MS, batch_size=1,
                            tensors=(result_tensor(1),))
        core.on_result("w1", ex.msg_id, msg, planned + 9 * MS)
        t = planned + 9 * MS
    core.tick(t + 200 * MS)
    assert core.dispatch_ns == core.cfg.dispatch_ns + 6 * MS
    infer(core, 1, now=t + 200 * MS, slo_ms=8)  # 2 ms exec + 7 ms allowance no longer fits 8 ms
    assert replies(core.tick(t + 200 * MS)) == [] and core.counters["rejected_would_miss_deadline"] == 1


def test_each_worker_is_planned_with_the_dispatch_allowance_its_own_lanes_show():
    """Issue 17: a worker 3 ms away is planned 3 ms further ahead; one nearby is not."""
    core = make_core()
    hello(core, "near")
    hello(core, "far")
    add_model(core, "m", workers=("near",))
    add_model(core, "f", workers=("far",))
    t = warm(core, "m")
    t = warm(core, "f", now=t)
    for i in range(50):
        for model, late in (("m", 0), ("f", 3 * MS)):
            infer(core, 100 + 2 * i + (model == "f"), model=model, now=t, slo_ms=100)
            ex = sent(core.tick(t), schema.Exec)[0]
            planned = core.actions[ex.msg_id].planned_start_ns
            msg = schema.Result(action="exec", status=Status.OK, device_id=0, model_id=model,
                                begin_ns=planned + late, end_ns=planned + late + 2 * MS, duration_ns=2 * MS,
                                batch_size=1, tensors=(result_tensor(1),))
            core.on_result(ex.worker, ex.msg_id, msg, planned + late + 3 * MS)
            t = planned + late + 3 * MS
    t += 200 * MS
    core.tick(t)
    floor = core.cfg.dispatch_ns
    assert (core.workers["near"].dispatch_ns, core.workers["far"].dispatch_ns) == (floor, floor + 3 * MS)
    starts = {}
    for i, model in enumerate(("m", "f")):
        infer(core, 900 + i, model=model, now=t, slo_ms=100)
        (ex,) = sent(core.tick(t), schema.Exec)
        starts[ex.worker] = core.actions[ex.msg_id].planned_start_ns - t
    assert starts == {"near": floor, "far": floor + 3 * MS}
    workers = {w["name"]: w["dispatch_ms"] for w in core.status(t)["workers"]}
    assert workers == {"near": floor / MS, "far": (floor + 3 * MS) / MS}


def test_the_reply_allowance_adds_how_long_results_take_to_come_back():
    """Issues 12 and 17: the way back is planned from what it measures, not a fixed 2 ms."""
    core = ready_core()
    t = warm(core)
    assert core.reply_ns == core.cfg.reply_ns
    for i in range(50):
        infer(core, 100 + i, now=t, slo_ms=100)
        ex = sent(core.tick(t), schema.Exec)[0]
        planned = core.actions[ex.msg_id].planned_start_ns
        msg = schema.Result(action="exec", status=Status.OK, device_id=0, model_id="m", begin_ns=planned,
                            end_ns=planned + 2 * MS, duration_ns=2 * MS, batch_size=1, tensors=(result_tensor(1),))
        t = planned + 6 * MS  # read 4 ms after the lane's end: a distant or busy worker
        core.on_result(ex.worker, ex.msg_id, msg, t)
    t += 200 * MS
    core.tick(t)
    assert core.reply_ns == core.cfg.reply_ns + 4 * MS
    assert core.status(t)["scheduler"]["reply_ms"] == core.reply_ns / MS
    # An idle device needs 1 ms dispatch + 2 ms exec: 6 ms less the 1 ms floor would leave room,
    # less the floor and the 4 ms way back it does not; 9 ms does.
    refused = replies(infer(core, 998, now=t, slo_ms=6))[0].body
    assert refused.status is Status.WOULD_MISS_DEADLINE and "idle device" in refused.detail
    assert not replies(infer(core, 999, now=t, slo_ms=9))


def test_a_queue_is_priced_as_its_batches_would_run_padded_only_where_padding_is_cheaper():
    core = make_core()
    hello(core)
    add_model(core, "cpu", exec_ns={1: 1 * MS, 2: 2 * MS, 4: 4 * MS, 8: 8 * MS, 16: 16 * MS})  # n runs of one
    add_model(core, "gpu")  # EXEC_NS: 4 cost 4 ms, 8 cost 6, 16 cost 10
    cpu, gpu = core.models["cpu"], core.models["gpu"]
    assert [core.drain_ns(cpu, n, "emulated") // MS for n in (3, 5, 9, 25)] == [3, 5, 9, 25]  # 9 as 8 and 1
    assert [core.drain_ns(gpu, n, "emulated") // MS for n in (3, 9, 12)] == [4, 8, 10]  # 3 padded to 4; 9 as 8 + 1


def test_every_reply_and_exec_names_every_field_of_its_messages():
    """The core makes its EXECs, its replies and their rows field by field in compiled code
    (core.made): EXECs, OK replies, refusals and answers without outputs each name every field
    of their class and nothing else, and equal what their class builds."""
    core = ready_core()
    t = warm(core)
    for i in range(3):
        infer(core, 100 + i, now=t, slo_ms=100, samples=1 + i % 2)
    ex = sent(core.tick(t), schema.Exec)[0]
    assert set(vars(ex.body)) == {f.name for f in dataclasses.fields(schema.Exec)}
    assert ex.body == schema.Exec(**vars(ex.body)) and len(ex.body.tensors) == 3
    bodies = [r.body for r in replies(result_for(core, ex, t + 3 * MS))]
    assert len(bodies) == 3 and all(b.status is Status.OK for b in bodies)
    assert [b.tensors[0].shape[0] for b in bodies] == [1, 2, 1]
    refused = replies(infer(core, 200, now=t, slo_ms=1))[0].body
    assert refused.status is Status.WOULD_MISS_DEADLINE and refused.detail
    infer(core, 201, now=t, slo_ms=500, samples=16)
    infer(core, 202, now=t, slo_ms=500, samples=16)  # queued behind the first
    ok, _, effects = core.on_cancel(CLIENT, 202, t + MS)
    cancelled = replies(effects)[0].body
    assert ok and cancelled.status is Status.CANCELLED and cancelled.total_ns == MS
    # Without outputs, the fields the core does not name are the class's defaults.
    assert refused == schema.InferReply.build(status=refused.status, detail=refused.detail)
    assert cancelled == schema.InferReply.build(status=Status.CANCELLED, detail=cancelled.detail, total_ns=MS)
    for body in [*bodies, refused, cancelled]:
        assert set(vars(body)) == {f.name for f in dataclasses.fields(schema.InferReply)}
        assert body == schema.InferReply(**vars(body))
        for tensor in body.tensors:
            assert set(vars(tensor)) == {f.name for f in dataclasses.fields(Tensor)}
            assert tensor == Tensor(**vars(tensor))


def test_the_counts_every_request_moves_add_up():
    """Offered, admitted, answered OK and in time are kept apart from the other counts (as
    native ints) and read with them through `counters`."""
    core = ready_core()
    t = warm(core)
    before = core.counters
    infer(core, 300, now=t, slo_ms=100)
    infer(core, 301, now=t, slo_ms=100)
    infer(core, 302, now=t, slo_ms=1)  # refused
    ex = sent(core.tick(t), schema.Exec)[0]
    assert len(replies(result_for(core, ex, t + 3 * MS))) == 2
    after = core.counters
    moved = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert {k: v for k, v in moved.items() if v} == {
        "requests_offered": 3, "requests_admitted": 2, "rejected_would_miss_deadline": 1, "answered_ok": 2,
        "met_slo": 2, "execs_sent": 1}


def test_a_queues_price_follows_the_measurements_that_make_it():
    """drain_ns keeps its prices between requests (SplitMemo); a measurement that moves a
    typical figure, a doubt and a change of batch sizes each price the queue afresh."""
    core = make_core()
    hello(core)
    add_model(core, "cpu", exec_ns={1: 1 * MS, 2: 2 * MS, 4: 4 * MS, 8: 8 * MS, 16: 16 * MS})
    cpu = core.models["cpu"]
    assert [core.drain_ns(cpu, n, "emulated") // MS for n in (3, 17)] == [3, 17]
    for _ in range(20):  # batch 1 now typically takes 3 ms: 3 samples run padded to 4 (4 ms)
        core.latency.observe_exec("cpu", 1, "emulated", 3 * MS, 0)
    assert [core.drain_ns(cpu, n, "emulated") // MS for n in (3, 17)] == [4, 19]
    for _ in range(20):  # and the largest batch 20 ms
        core.latency.observe_exec("cpu", 16, "emulated", 20 * MS, 0)
    assert core.drain_ns(cpu, 17, "emulated") // MS == 23
    for _ in range(40):  # doubting drops the worst of batch 16's window: its median falls to 16 ms
        core.latency.doubt("cpu")
    assert core.drain_ns(cpu, 16, "emulated") // MS == 16
    cpu.sizes = [1, 2, 4]  # a worker that profiled less is all there is now
    assert core.drain_ns(cpu, 6, "emulated") // MS == 6  # a batch of 4 (4 ms), then one of 2 (2 ms)


def result_tensor(rows: int):
    from clockwork.common.tensors import Tensor

    return Tensor.from_array("y", np.zeros((rows, 2), np.float32))


def test_a_stale_request_is_refused_without_being_looked_at():
    core = ready_core()
    answer = replies(core.refuse_stale(b"c", 7, 120 * MS, 100 * MS))[0]
    assert answer.request_id == 7 and answer.body.status is Status.WOULD_MISS_DEADLINE
    assert "waited 120.00 ms" in answer.body.detail and core.counters["rejected_stale"] == 1


def test_a_shed_request_is_refused_queue_full_and_counted_apart():
    core = ready_core()
    answer = replies(core.refuse_shed(b"c", 8, 25 * MS))[0]
    assert answer.request_id == 8 and answer.body.status is Status.QUEUE_FULL
    assert "25.0 ms behind" in answer.body.detail
    assert core.counters["rejected_shed"] == 1 and core.counters["requests_offered"] == 1


def noisy(core, model="m", kind="emulated"):
    """Measurements whose tail is far above their median, as a shared CPU gives: per batch
    size, 31 at the profile's time and one at four times it."""
    for size, ns in EXEC_NS.items():
        for i in range(32):
            core.latency.observe_exec(model, size, kind, ns * (4 if i == 0 else 1), 0)


def test_queued_work_is_priced_at_typical_durations_with_one_tail_allowance():
    """96 queued samples run as 6 batches of 16: typically 60 ms, 240 ms if every batch took
    its tail. The new request's finish is 60 ms + its own exec (2 ms) + one allowance (its own
    tail above typical, 6 ms) + the hop: about 70 ms."""
    core = ready_core()
    t = warm(core)
    noisy(core)
    for i in range(96):
        infer(core, i, now=t, slo_ms=400)
    assert not replies(infer(core, 1000, now=t, slo_ms=100))  # p99s summed would refuse it
    refused = replies(infer(core, 1001, now=t, slo_ms=60))
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE
    step(core, core.tick(t), t)


def test_the_tail_allowance_follows_how_late_execs_really_end():
    core = ready_core()
    t = warm(core)
    noisy(core)
    for _ in range(100):
        core.latency.observe_finish(0, 40 * MS)  # every EXEC ended 40 ms after its typical end
    core.tick(t + 200 * MS)  # the allowance is refreshed with the dispatch allowance
    t += 200 * MS
    core.on_heartbeat("w1", 1, t, True, t)
    assert core.finish_tail_ns == 40 * MS
    for i in range(96):
        infer(core, i, now=t, slo_ms=400)
    refused = replies(infer(core, 1000, now=t, slo_ms=100))  # 60 + 2 + 40 ms, past 95 ms
    assert refused and refused[0].body.status is Status.WOULD_MISS_DEADLINE


def test_the_tail_allowance_is_one_tail_for_the_whole_way_not_one_per_hop():
    """One result in 25 takes 5.2 ms back, and in another one in 25 the lane ran 5.5 ms late:
    never both. The reply allowance keeps the way back's tail free (5.2 ms); the finish
    allowance adds only what the whole way's p99 has beyond it (0.5 ms), not another 5.5 ms.
    A lone request then needs 1 + 2 + 0.5 ms and the 6.2 ms reply allowance: an 11 ms SLO
    fits, where the two tails added (14.7 ms) refused it."""
    core = ready_core()
    for i in range(100):
        back = int(5.2 * MS) if i % 25 == 0 else int(0.2 * MS)
        late = int(5.5 * MS) if i % 25 == 12 else 0
        core.latency.observe_hops("w1", 0, 0, 0, 0, back)
        core.latency.observe_finish(0, late + back)
    t = warm(core, now=core.cfg.refresh_ns)  # its tick refreshes the allowances
    assert (core.reply_ns, core.finish_tail_ns) == (int(6.2 * MS), int(0.5 * MS))
    assert not replies(infer(core, 1, now=t, slo_ms=11))


def test_allowances_an_overload_left_are_doubted_when_they_alone_refuse_every_request():
    """An overload left results taking 12 ms back in one sample of ten: the reply allowance is
    13 ms, and a 15 ms request needs 3 ms more on an idle device. Nothing is admitted, so no
    result comes to lower it; refusals on the estimates alone doubt the worst samples, and
    within a few hundred refusals requests are admitted again."""
    core = ready_core()
    for i in range(100):
        core.latency.observe_hops("w1", 0, 0, 0, 0, 12 * MS if i % 10 == 0 else MS // 10)
    t = warm(core, now=core.cfg.refresh_ns)
    assert core.reply_ns == 13 * MS
    for i in range(1000):
        if not replies(infer(core, i, now=t, slo_ms=15)):
            break
    assert 100 < i < 300 and core.reply_ns < 3 * MS


def test_an_execs_typical_end_is_measured_against_its_result():
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t)
    ex = sent(core.tick(t), schema.Exec)[0]
    predicted = core.actions[ex.msg_id].typical_end_ns
    assert predicted == t + core.cfg.dispatch_ns + EXEC_NS[1]
    before = len(core.latency.finish_errors.values)
    result_for(core, ex, predicted + 3 * MS)
    assert len(core.latency.finish_errors.values) == before + 1 and core.latency.finish_errors.values[-1] == 3 * MS


def test_expiry_gives_up_only_on_what_the_lane_at_its_typical_pace_cannot_serve():
    """A batch of 16 is booked: typically 10 ms, 40 ms at its tail. A request due 29 ms from
    now is served once the batch typically ends (11 + 2 ms), so expiry must not give it up on
    the tail's account (41 + 8 ms)."""
    core = ready_core()
    t = warm(core)
    noisy(core)
    for i in range(16):
        infer(core, i, now=t, slo_ms=400)
    batch = sent(core.tick(t), schema.Exec)[0]
    assert not replies(infer(core, 100, now=t, slo_ms=30))
    assert not replies(core.tick(t + 2 * MS))  # the tail-priced guess answered DEADLINE_MISSED here
    done = t + 11 * MS
    effects = step(core, result_for(core, batch, done) + core.tick(done), done)
    assert all(r.body.status is Status.OK for r in replies(effects))  # the batch's 16, nothing given up
    assert [e.body.batch_size for e in sent(effects, schema.Exec)] == [1]  # request 100 runs


def test_a_request_put_back_by_a_restarted_worker_still_expires():
    """Found by the stateful test: a requeued request's old queue entry passed for the new one,
    so expiry never looked at it and it waited forever."""
    core = ready_core()
    t = warm(core)
    infer(core, 1, now=t, slo_ms=40)
    assert sent(core.tick(t), schema.Exec)
    core.on_heartbeat("w1", 1, t + 20 * MS, True, t + 20 * MS)
    core.tick(t + 20 * MS)  # expiry looks while the request is executing, and lets it be
    hello(core, now=t + 21 * MS)  # the worker restarted: its EXEC is lost, the request queued again
    later = t + 50 * MS
    core.on_heartbeat("w1", 1, later, True, later)
    answer = replies(step(core, core.tick(later), later))
    assert [(r.request_id, r.body.status) for r in answer] == [(1, Status.DEADLINE_MISSED)]


def refusals_until_admitted(core, t, slo_ms, first_id, most=200):
    for i in range(most):
        if not replies(infer(core, first_id + i, now=t, slo_ms=slo_ms)):
            return i
    return most


def test_one_slow_run_cannot_shut_a_model_out_for_good():
    """A lone 40 ms run (a pause, a slow first run) becomes the p99 of a short window, so a 20 ms
    SLO is refused. Refused, nothing runs, and no measurement can come to correct it: after
    SchedulerConfig().doubt_after such refusals the worst sample is doubted and the model is served again."""
    core = ready_core()
    t = warm(core)
    core.latency.observe_exec("m", 1, "emulated", 40 * MS, 0)
    assert refusals_until_admitted(core, t, 20, 1000) == SchedulerConfig().doubt_after
    assert core.counters["estimates_doubted"] == 1


def test_a_model_that_really_is_slow_stays_refused():
    core = make_core()
    hello(core)
    add_model(core, "m", exec_ns={**EXEC_NS, 1: 40 * MS})
    t = warm(core)  # its runs take 40 ms, as profiled
    assert refusals_until_admitted(core, t, 20, 1000) == 200
    assert core.counters["estimates_doubted"] >= 10 and core.latency.exec_ns("m", 1, "emulated") == 40 * MS


def test_refusals_behind_another_models_queue_doubt_nothing():
    """A model refused because another model's work is queued ahead on the device refuses on
    that queue, not on its own estimates: its measurements stay as they are."""
    core = ready_core(models=("m", "hog"))
    t = warm(core, "m")
    t = warm(core, "hog", now=t)
    core.latency.observe_exec("m", 1, "emulated", 9 * MS, 0)
    for i in range(96):
        infer(core, 5000 + i, model="hog", now=t, slo_ms=400)
    refused = [replies(infer(core, 1000 + i, model="m", now=t, slo_ms=20)) for i in range(3 * SchedulerConfig().doubt_after)]
    assert all(r and r[0].body.status is Status.WOULD_MISS_DEADLINE for r in refused)
    assert core.counters.get("estimates_doubted", 0) == 0 and core.latency.exec_ns("m", 1, "emulated") == 9 * MS


def test_an_exec_that_ran_over_twice_its_planned_time_is_counted_as_an_overrun():
    """A stall (the lane's core or its GIL taken for milliseconds) is rare enough to vanish from
    the error percentiles; the core counts each, since the requests behind it miss."""
    core = ready_core()
    t = warm(core)
    counts = []
    for i, factor in enumerate((1, 2, 3)):
        infer(core, 100 + i, now=t)
        ex = sent(core.tick(t), schema.Exec)[0]
        planned = ex.body.expected_ns
        t += 50 * MS
        step(core, result_for(core, ex, t, duration_ns=planned * factor), t)
        counts.append(core.status(t)["counters"].get("exec_overran", 0))
    assert counts == [0, 0, 1]  # twice its planned time is still within; three times is an overrun
