"""The whole system on loopback: real controller and worker processes, real sockets, real
onnxruntime. Each test states a promise the system makes to its users."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper

from clockwork.bench.models import mlp_onnx, profile_json
from clockwork.bench.procs import WorkerSpec, cluster, controller_argv
from clockwork.client import Client, ClockworkError
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e")
    workers = [WorkerSpec("cpu", "onnxruntime"), WorkerSpec("emu", "emulated", devices=2, device_memory_mb=256)]
    with cluster(run_dir, workers, controller_settings=["max_model_bytes=4000000"]) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "mlp")
            admin.upload(profile_json(), "resnet", format="profile")
        yield c


@pytest.fixture
def client(system):
    with Client(system.client_endpoint, timeout_s=30) as c:
        yield c


def error_of(call) -> ClockworkError:
    with pytest.raises(ClockworkError) as info:
        call()
    return info.value


def test_infer_equals_onnxruntime_run_directly(client):
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    result = client.infer("mlp", {"x": x}, slo_ms=500)
    session = ort.InferenceSession(mlp_onnx(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-5, atol=1e-6)
    assert result.batch_size >= 3 and result.exec_ms > 0 and result.total_ms >= result.exec_ms


def test_a_reply_says_where_its_time_went_hop_by_hop(client):
    x = np.zeros((1, 64), np.float32)
    start = time.monotonic_ns()
    result = client.infer("mlp", {"x": x}, slo_ms=500)
    hops = result.hops((time.monotonic_ns() - start) / 1e6)
    assert list(hops) == ["client hops", "queue", "to the lane", "exec", "back from the lane"]
    # The hops come in order: the worker runs on the controller's host, so its lane's stamps are
    # on the controller's clock, exactly (WELCOME's host; no skew estimate, which once put
    # lane_end 0.9 ms past total_ms on a loaded 2-core host).
    assert 0 <= result.queue_ms <= result.lane_start_ms, result
    assert result.lane_start_ms < result.lane_end_ms <= result.total_ms, result
    assert all(v >= 0 for v in hops.values()), hops
    assert hops["exec"] == pytest.approx(result.exec_ms, abs=0.5)  # the lane's span is the measured run


def test_the_controller_times_the_way_back_to_a_client_from_what_the_client_reports(system, client):
    """Each INFER reports when the last reply arrived; after enough of them the controller plans
    this client's own hop instead of the fixed floor (STATUS counts the clients it has timed)."""
    timed = lambda: client.status()["scheduler"]["reply_hop_clients"]
    before = timed()
    with Client(system.client_endpoint, timeout_s=30) as reporting:
        for _ in range(25):
            reporting.infer("mlp", {"x": np.zeros((1, 64), np.float32)}, slo_ms=500)
        deadline = time.monotonic() + 10
        while timed() == before and time.monotonic() < deadline:
            time.sleep(0.05)  # learnt at the controller's next refresh (every 100 ms)
    scheduler = client.status()["scheduler"]
    assert scheduler["reply_hop_clients"] == before + 1
    assert 0 < scheduler["reply_hop_ms_max"] < 20  # on loopback: well under max_reply_ns


def test_emulated_model_is_served_with_a_timing_breakdown(client):
    result = client.infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ms=200)
    assert result.outputs["prob"].shape == (1, 10)
    assert result.exec_ms >= 2.7  # the profile's batch-1 time: the device really waited it


def test_bad_requests_get_their_reason_and_serving_goes_on(client):
    x = np.zeros((1, 64), np.float32)
    cases = [
        (lambda: client.infer("nope", {"x": x}, slo_ms=100), Status.MODEL_NOT_FOUND),
        (lambda: client.infer("mlp", {"x": x.astype(np.float64)}, slo_ms=100), Status.BAD_INPUT),
        (lambda: client.infer("mlp", {"x": np.zeros((1, 63), np.float32)}, slo_ms=100), Status.BAD_INPUT),
        (lambda: client.infer("mlp", {"x": x, "extra": x}, slo_ms=100), Status.BAD_INPUT),
        (lambda: client.infer("mlp", {"x": np.zeros((17, 64), np.float32)}, slo_ms=100), Status.BAD_INPUT),
        (lambda: client.upload(b"\x08\x07 definitely not onnx", "corrupt"), Status.BAD_MODEL),
        (lambda: client.upload(b"\0" * 4_000_001, "huge"), Status.TOO_LARGE),
        (lambda: client.upload(mlp_onnx(), "mlp"), Status.MODEL_EXISTS),
        (lambda: client.remove("nope"), Status.MODEL_NOT_FOUND),
    ]
    for call, status in cases:
        assert error_of(call).status is status
    wrong_name = error_of(lambda: client.infer("mlp", {"X": x}, slo_ms=100)).detail
    assert "'X', which the model does not have" in wrong_name and "the model's inputs: x" in wrong_name
    assert "clockwork upload --replace" in error_of(lambda: client.upload(mlp_onnx(), "mlp")).detail
    assert client.infer("mlp", {"x": x}, slo_ms=500).outputs["y"].shape == (1, 10)


def test_models_the_runtime_cannot_run_or_whose_shapes_cannot_be_fixed_are_refused(client):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    unsupported = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                          helper.make_opsetid("com.example", 1)])
    err = error_of(lambda: client.upload(unsupported.SerializeToString(), "unsupported"))
    assert err.status is Status.BAD_MODEL and "cpu" in err.detail
    assert "unsupported" not in [m["name"] for m in client.list()]  # a refused upload leaves nothing
    dyn = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [dyn], [y])
    err = error_of(lambda: client.upload(helper.make_model(graph).SerializeToString(), "dynamic"))
    assert err.status is Status.BAD_MODEL and "--input-shape x=" in err.detail
    info = client.upload(helper.make_model(graph).SerializeToString(), "fixed", input_shapes={"x": [4]})
    assert info["inputs"][0]["shape"] == [4]
    assert client.infer("fixed", {"x": -np.ones((2, 4), np.float32)}, slo_ms=500).outputs["y"].max() == 0


def test_an_infeasible_deadline_is_refused_at_admission_never_queued(system, client):
    """Refused at once, by admission: not queued, not answered at its deadline. (How fast that
    is, is a benchmark's business: clockwork-bench overhead.)"""
    from clockwork.client.protocol import build_infer
    from clockwork.common.codec import decode
    from clockwork.common.net import dealer, recv_frames, send

    before = client.status()["counters"]
    sock = dealer(zmq.Context.instance(), system.client_endpoint)
    try:
        body = build_infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ns=1_000_000)
        for msg_id in range(1, 51):
            send(sock, body, msg_id, sent_ns=time.monotonic_ns())
            assert sock.poll(5000), "no answer"
            reply = decode(recv_frames(sock)).body
            # "even on an idle device"; or, if this busy host held it 0.5 ms on the way, "it waited
            # ... in queues": refused from its header, before the core even looks at it
            assert reply.status is Status.WOULD_MISS_DEADLINE and ("idle device" in reply.detail
                                                                  or "in queues" in reply.detail)
            assert reply.queue_ns == reply.exec_ns == 0
    finally:
        sock.close(0)
    after = client.status()["counters"]
    refused = [after.get(k, 0) - before.get(k, 0) for k in ("rejected_would_miss_deadline", "rejected_stale")]
    assert sum(refused) == 50
    assert after.get("requests_admitted", 0) == before.get("requests_admitted", 0)


def test_admission_in_a_dry_run_serves_what_it_would_refuse_and_counts_it(tmp_path):
    """`scheduler.admission_dry_run`, set as an operator sets it: requests whose SLO not even an
    idle device meets are served instead of refused (answered late, or given up once queued),
    and STATUS counts them as admission would have refused them."""
    with cluster(tmp_path, [WorkerSpec("emu", "emulated")],
                 controller_settings=["scheduler.admission_dry_run=true"]) as c, c.client() as admin:
        admin.upload(profile_json(), "resnet", format="profile")  # 2.7 ms at batch 1, plus the hops
        outcomes = []
        for _ in range(5):
            try:
                admin.infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ms=3)
                outcomes.append(Status.OK)  # late
            except ClockworkError as exc:
                outcomes.append(exc.status)
        counters = admin.status()["counters"]
    stale = counters.get("rejected_stale", 0)  # a busy host may hold one on the way: refused from its header
    assert outcomes.count(Status.WOULD_MISS_DEADLINE) == stale
    assert set(outcomes) <= {Status.OK, Status.DEADLINE_MISSED, Status.WOULD_MISS_DEADLINE}
    assert counters["dry_run_refused"] == 5 - stale and "rejected_would_miss_deadline" not in counters


def test_a_request_that_waited_half_its_slo_before_the_controller_is_refused_from_its_header(system):
    from clockwork.client.protocol import build_infer
    from clockwork.common.codec import decode
    from clockwork.common.net import dealer, recv_frames, send

    sock = dealer(zmq.Context.instance(), system.client_endpoint)
    try:
        body = build_infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ns=200_000_000)

        def ask(msg_id: int, waited_ms: float):
            send(sock, body, msg_id, sent_ns=time.monotonic_ns() - int(waited_ms * 1e6))
            assert sock.poll(5000), "no answer"
            return decode(recv_frames(sock)).body

        assert ask(1, 0).status is Status.OK  # the controller learns this client's queueing floor
        time.sleep(0.15)  # send stamps must keep increasing
        late = ask(2, 120)  # as if it sat 120 ms (60% of its SLO) in queues before being read
        assert late.status is Status.WOULD_MISS_DEADLINE and "in queues before reaching the controller" in late.detail
        assert ask(3, 0).status is Status.OK
    finally:
        sock.close(0)


def test_several_samples_per_request_and_concurrent_requests_each_get_their_own_rows(system):
    from clockwork.client.aio import AsyncClient
    import asyncio

    async def burst():
        async with AsyncClient(system.client_endpoint) as c:
            xs = [np.full((2, 64), i, np.float32) for i in range(12)]
            results = await asyncio.gather(*(c.infer("mlp", {"x": x}, slo_ms=1000) for x in xs))
            return xs, results

    xs, results = asyncio.run(burst())
    session = ort.InferenceSession(mlp_onnx(), providers=["CPUExecutionProvider"])
    for x, result in zip(xs, results):
        np.testing.assert_allclose(result.outputs["y"], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_requests_queued_behind_busy_devices_share_one_exec(system):
    import asyncio
    import json

    from clockwork.client.aio import AsyncClient

    slow = json.dumps({"weights_bytes": 1_000_000, "load_ms": 1,
                       "exec_ms": {"1": 40, "2": 41, "4": 42, "8": 43, "16": 44}}).encode()
    with Client(system.client_endpoint) as admin:
        admin.upload(slow, "batchy", format="profile")
    x = {"data": np.zeros((1, 16), np.float32)}

    async def scenario():
        async with AsyncClient(system.client_endpoint) as c:
            await c.infer("batchy", x, slo_ms=1000)  # loaded now
            blockers = [asyncio.create_task(c.infer("batchy", x, slo_ms=1000)) for _ in range(2)]
            await asyncio.sleep(0.01)  # both emulated devices are busy for 40 ms
            queued = await asyncio.gather(*(c.infer("batchy", x, slo_ms=1000) for _ in range(8)))
            await asyncio.gather(*blockers)
            return queued

    queued = asyncio.run(scenario())
    assert max(r.batch_size for r in queued) >= 4  # they waited together, so they ran together
    assert all(r.outputs["prob"].shape == (1, 10) for r in queued)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=48), min_size=1, max_size=4), target=st.sampled_from(["client", "worker"]))
def test_random_and_truncated_frames_do_not_stop_the_daemons(system, frames, target):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(system.client_endpoint if target == "client" else system.worker_endpoint)
    sock.send_multipart(frames)
    sock.close()
    with Client(system.client_endpoint, timeout_s=10) as after:
        assert {w["name"] for w in after.status()["workers"]} == {"cpu", "emu"}  # it still answers, all there
    system.check()  # and no process died


def test_daemons_still_serve_after_the_garbage(client, system):
    system.check()  # no process died
    assert client.infer("mlp", {"x": np.ones((1, 64), np.float32)}, slo_ms=500).outputs["y"].shape == (1, 10)
    assert client.infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ms=200).batch_size == 1


def test_uploads_survive_a_controller_restart(tmp_path):
    with cluster(tmp_path, [WorkerSpec("cpu", "onnxruntime")]) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "kept")
        old = c.group.get("controller")
        old.popen.send_signal(signal.SIGTERM)
        assert old.popen.wait(timeout=10) == 0
        c.group.expect_exit("controller")
        c.group.start("controller-again", controller_argv(c.state_dir, c.client_endpoint, c.worker_endpoint,
                                                          "warning", ()))
        with Client(c.client_endpoint, timeout_s=5) as admin:
            assert [m["name"] for m in admin.list()] == ["kept"]
            # the worker notices the new controller, says HELLO again and re-prepares the model
            c.group.wait_until(lambda: admin.list()[0].get("prepared_on") == ["cpu"], 30, "re-prepare")
            out = admin.infer("kept", {"x": np.ones((1, 64), np.float32)}, slo_ms=500)
            assert out.outputs["y"].shape == (1, 10)


def test_the_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clockwork.bench.demo", "--duration", "4", "--rate", "150", "--strict", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "met SLO" in proc.stdout
    assert (tmp_path / "demo-latency-cdf.png").stat().st_size > 10_000


def test_a_request_in_flight_when_the_controller_dies_is_retried_and_answered(tmp_path):
    import json
    import threading

    slow = json.dumps({"weights_bytes": 1_000_000, "load_ms": 1, "exec_ms": {"1": 1500}}).encode()
    with cluster(tmp_path, [WorkerSpec("emu", "emulated")]) as c:
        with c.client() as admin:
            admin.upload(slow, "slow", format="profile")
        outcome = {}

        def call():
            with Client(c.client_endpoint, timeout_s=30) as cw:
                try:
                    outcome["result"] = cw.infer("slow", {"data": np.zeros((1, 16), np.float32)}, slo_ms=15_000)
                except ClockworkError as exc:
                    outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        with c.client() as watcher:  # wait until the request is executing on the worker
            c.group.wait_until(lambda: [m["in_flight"] for m in watcher.status()["models"]] == [1], 30,
                               "the request to be executing")
        old = c.group.get("controller")
        old.popen.send_signal(signal.SIGKILL)
        old.popen.wait(timeout=10)
        c.group.expect_exit("controller")
        c.group.start("controller-again", controller_argv(c.state_dir, c.client_endpoint, c.worker_endpoint,
                                                          "warning", ()))
        caller.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].outputs["prob"].shape == (1, 10)


def test_a_queued_request_can_be_cancelled_and_the_cancel_is_acknowledged(system):
    import asyncio
    import json

    from clockwork.client.aio import AsyncClient
    from clockwork.client.errors import RequestError

    slow = json.dumps({"weights_bytes": 1_000_000, "load_ms": 1, "exec_ms": {"1": 1000}}).encode()
    with Client(system.client_endpoint) as admin:
        admin.upload(slow, "cancellable", format="profile")
    x = {"data": np.zeros((1, 16), np.float32)}

    async def until(c, ready):
        """Wait for the controller's own view of the model, not for time to pass."""
        for _ in range(500):
            [m] = [m for m in (await c.status())["models"] if m["name"] == "cancellable"]
            if ready(m):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the controller never reached the state the test waits for: {m}")

    async def scenario():
        async with AsyncClient(system.client_endpoint) as c:
            await c.infer("cancellable", x, slo_ms=10000)  # loaded
            executing = c.submit("cancellable", x, slo_ms=10000)
            await until(c, lambda m: m["in_flight"] == 1 and m["queued"] == 0)  # sent to a device
            other = c.submit("cancellable", x, slo_ms=10000)  # runs beside it, or next on its device
            await until(c, lambda m: m["in_flight"] + m["queued"] == 2)
            queued = c.submit("cancellable", x, slo_ms=10000)  # behind both: no device frees for ~1 s
            await until(c, lambda m: m["in_flight"] + m["queued"] == 3 and m["queued"] >= 1)
            acknowledged = await queued.cancel()
            with pytest.raises(RequestError) as info:
                await queued
            late = await executing.cancel()  # already executing: not cancelled, and it completes
            return acknowledged, info.value.status, late, [await executing, await other]

    acknowledged, status, late, results = asyncio.run(scenario())
    assert acknowledged and status is Status.CANCELLED
    assert late is False and all(r.outputs["prob"].shape == (1, 10) for r in results)


def test_a_bundle_of_requests_is_answered_part_by_part_and_a_bad_part_spoils_only_itself(system):
    import msgpack

    from clockwork.client.protocol import build_infer, read_incoming
    from clockwork.common import schema
    from clockwork.common.codec import bundle, encode
    from clockwork.common.net import dealer, recv_frames, send_frames

    sock = dealer(zmq.Context.instance(), system.client_endpoint)
    try:
        infer = build_infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ns=2_000_000_000)
        now = time.monotonic_ns()
        broken = [msgpack.packb({"type": "infer", "msg_id": 12, "slo_ns": 5})]  # no model, no tensors
        send_frames(sock, bundle([encode(infer, 11, sent_ns=now), broken, encode(infer, 13, sent_ns=now),
                                  encode(schema.ListModels(), 14, sent_ns=now)]))
        replies = {}
        deadline = time.monotonic() + 10
        while len(replies) < 4 and time.monotonic() < deadline:
            if sock.poll(200):
                replies.update((i.parent_id, i.envelope.body) for i in read_incoming(recv_frames(sock)))
        assert replies[11].status is Status.OK and replies[13].status is Status.OK
        assert isinstance(replies[12], schema.Error) and replies[12].status is Status.BAD_MESSAGE
        assert "model" in replies[12].detail
        assert replies[14].status is Status.OK and any(m["name"] == "resnet" for m in replies[14].body["models"])

        # Counts that do not describe the frames: one anonymous error, and the controller serves on.
        send_frames(sock, [msgpack.packb({"type": "bundle", "parts": [1, 5]}), *encode(schema.ListModels(), 15)])
        assert sock.poll(5000)
        [incoming] = read_incoming(recv_frames(sock))
        assert incoming.parent_id == 0 and incoming.envelope.body.status is Status.BAD_MESSAGE
        send_frames(sock, encode(schema.ListModels(), 16, sent_ns=time.monotonic_ns()))
        assert sock.poll(5000)
        assert read_incoming(recv_frames(sock))[0].parent_id == 16
    finally:
        sock.close(0)
