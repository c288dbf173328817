"""The open-loop generator against an in-process fake controller (a ROUTER thread)."""

import gc
import threading

import msgpack
import numpy as np
import pytest
import zmq

from clockwork.bench import workload
from clockwork.bench.loadgen import per_model, run_open_loop
from clockwork.bench.progress import Progress
from clockwork.common import gc_tuning
from clockwork.common.codec import bundle, decode, encode, split
from clockwork.common.net import recv_frames, router
from clockwork.common.schema import Error, InferReply
from clockwork.common.status import Status

MS = 1_000_000


class FakeController:
    """Answers INFER: OK for most models, QUEUE_FULL for "full", nothing for "silent"; an ERROR
    for "refused", a reply that fails validation for "garbled", an unreadable one for "junk"."""

    def __init__(self, ctx: zmq.Context):
        self.sock = router(ctx, "tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seen: list = []
        self.reports: list = []  # (msg_id, model, last_reply_id, last_reply_received_ns) of each INFER
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)

    def _loop(self):
        loaded = set()
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, *frames = recv_frames(self.sock)
            replies = [r for head, part in split(frames) if (r := self._answer(decode(part, head), loaded))]
            try:
                if replies:  # a bundle's replies go back in one bundle, as the controller does
                    self.sock.send_multipart([bytes(ident), *bundle(replies)])
            except zmq.ZMQError:
                pass  # the generator already left

    def _answer(self, env, loaded: set) -> list | None:
        body = env.body
        self.seen.append((env.msg_id, body.model, body.slo_ns, body.tensors[0].shape))
        self.reports.append((env.msg_id, body.model, body.last_reply_id, body.last_reply_received_ns))
        if body.model == "silent":
            return None
        if body.model == "garbled":
            return [msgpack.packb({"type": "infer_reply", "msg_id": 1, "parent_id": env.msg_id, "status": "x"})]
        if body.model == "junk":
            return [b"\xc1"]
        if body.model == "refused":
            reply = Error(status=Status.BAD_INPUT, detail="no such input")
        elif body.model == "full":
            reply = InferReply(status=Status.QUEUE_FULL, detail="full")
        else:
            cold = body.model not in loaded
            loaded.add(body.model)
            reply = InferReply(status=Status.OK, exec_ns=2 * MS, batch_size=1, cold_start=cold, worker="w",
                               tensors=body.tensors)
        return encode(reply, 1, parent_id=env.msg_id)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def inputs(names):
    return {n: {"x": np.zeros((1, 4), np.float32)} for n in names}


def test_every_request_sent_once_and_answered(ctx, capsys):
    names = ["a", "b", "full"]
    sched = workload.poisson_schedule([300, 100, 100], 0.5, seed=3)
    with FakeController(ctx) as fake:
        progress = Progress(0.5, label="t", tty=False, line_every_s=0.2)
        res = run_open_loop(fake.endpoint, sched, names, {"a": 50, "b": 50, "full": 10}, inputs(names), progress,
                            groups={"a": "ab", "b": "ab", "full": "f"}, ctx=ctx)
    counts = sched.counts()
    assert res.scheduled == len(sched) == res.sent == res.answered
    assert res.unanswered == 0 and res.stray_replies == 0
    assert res.by_status["OK"] == counts[0] + counts[1]
    assert res.by_status["QUEUE_FULL"] == counts[2]
    assert res.latency.count == res.ok and res.reject_latency.count == counts[2]
    assert res.cold_starts == 2  # first request to "a" and to "b"
    assert res.batch_sizes == {1: res.ok} and res.workers == {"w": res.ok}
    assert res.groups["ab"].ok == res.ok and res.groups["f"].ok == 0
    assert res.groups["ab"].sent == counts[0] + counts[1]
    assert res.exec_time.percentile_ms(50) == pytest.approx(2.0, rel=1e-2)
    # SLOs travel on the wire, ids are unique, the batch dimension is first.
    slo_by_model = {m: slo for _, m, slo, _ in fake.seen}
    assert slo_by_model == {"a": 50 * MS, "b": 50 * MS, "full": 10 * MS}
    assert len({msg_id for msg_id, *_ in fake.seen}) == len(fake.seen)
    assert {shape for *_, shape in fake.seen} == {(1, 4)}
    assert res.met_slo <= res.ok
    assert "sent" in capsys.readouterr().err


def test_each_request_reports_the_last_ok_reply_as_the_client_library_does(ctx):
    names = ["a", "full"]
    sched = workload.poisson_schedule([300, 300], 0.5, seed=4)
    with FakeController(ctx) as fake:
        run_open_loop(fake.endpoint, sched, names, {"a": 50, "full": 50}, inputs(names), ctx=ctx)
    ok_ids = {msg_id for msg_id, model, *_ in fake.reports if model == "a"}
    reported = [(last_id, last_ns) for _, _, last_id, last_ns in fake.reports]
    assert reported[0] == (0, 0)  # nothing answered yet
    assert {last_id for last_id, _ in reported} - {0} <= ok_ids  # QUEUE_FULL replies are not reported
    assert sum(1 for last_id, _ in reported if last_id) > len(reported) // 2
    arrivals = [last_ns for _, last_ns in reported]
    assert arrivals == sorted(arrivals)


def test_replies_are_judged_by_the_codec(ctx):
    names = ["a", "refused", "garbled", "junk"]
    sched = workload.constant_schedule([40.0] * 4, 0.5)
    with FakeController(ctx) as fake:
        res = run_open_loop(fake.endpoint, sched, names, 100, inputs(names), drain_timeout_s=0.5, ctx=ctx)
    counts = sched.counts()
    assert res.ok == counts[0] and res.by_status["BAD_INPUT"] == counts[1]
    assert res.first_detail["BAD_INPUT"] == "no such input"
    # garbled: answered, but bad; junk: no request can be named, so unanswered as well as bad.
    assert res.by_status["BAD_REPLY"] == counts[2] + counts[3] and res.unanswered == counts[3]
    assert "status" in res.first_detail["BAD_REPLY"]


def test_requests_go_out_on_schedule_not_after_replies(ctx):
    # "silent" never answers: an open loop still sends everything on time.
    sched = workload.constant_schedule([200.0], 0.3)
    with FakeController(ctx) as fake:
        res = run_open_loop(fake.endpoint, sched, ["silent"], 20, inputs(["silent"]), drain_timeout_s=0.2, ctx=ctx)
    assert res.sent == len(sched) == 60
    assert res.answered == 0 and res.unanswered == 60  # every send went out though nothing came back
    assert res.duration_ns >= 0.3e9


def test_on_tick_can_abort_the_run(ctx):
    sched = workload.constant_schedule([100.0], 5.0)

    def boom():
        raise RuntimeError("a daemon died")

    with FakeController(ctx) as fake:
        with pytest.raises(RuntimeError, match="daemon died"):
            run_open_loop(fake.endpoint, sched, ["a"], 50, inputs(["a"]), on_tick=boom, ctx=ctx)


def test_argument_checks():
    assert per_model(5, ["a", "b"], "x") == [5, 5]
    assert per_model({"a": 1, "b": 2}, ["b", "a"], "x") == [2, 1]
    with pytest.raises(ValueError):
        per_model({"a": 1}, ["a", "b"], "x")
    with pytest.raises(ValueError):
        per_model([1, 2, 3], ["a", "b"], "x")
    sched = workload.constant_schedule([10.0, 10.0], 1.0)
    with pytest.raises(ValueError, match="model index"):
        run_open_loop("tcp://127.0.0.1:1", sched, ["only-one"], 10, inputs(["only-one"]))
    with pytest.raises(ValueError, match="no inputs"):
        run_open_loop("tcp://127.0.0.1:1", sched, ["a", "b"], 10, inputs(["a"]))


def test_the_generator_plays_with_the_daemons_collector_settings_and_restores_its_own(ctx):
    """Its own full collections (17-33 ms measured) would read answers late that came in time."""
    seen = []
    before = gc.get_threshold()
    with FakeController(ctx) as fake:
        run_open_loop(fake.endpoint, workload.constant_schedule([100.0], 0.3), ["a"], 50, inputs(["a"]), ctx=ctx,
                      on_tick=lambda: seen.append((gc.get_threshold(), gc.get_freeze_count())))
    assert seen and all(threshold == (gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS) and frozen > 0
                        for threshold, frozen in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
