"""The worker as a real process on loopback, driven by a stand-in controller (a ROUTER).

Asserts behaviour, never speed: windows are honoured (TOO_LATE is never executed), executions
on a device never overlap, outputs are right, garbage never stops the worker.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockwork.common.affinity import CoreClaims, host_id
from clockwork.common.clock import monotonic_ns
from clockwork.common.codec import encode
from clockwork.common.net import bulk_identity
from clockwork.common.schema import Drop, Error, Exec, Load, Prepare, Prepared, Result, Unload
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.worker.runtimes.onnxrt import lane_cores
from tests.worker_helpers import MS, WorkerProcess, cores_of_threads, direct_run, profile_blob, small_mlp, wait_until_true

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def onnx_worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-worker")  # its own claims: another worker on this host may hold a core
    worker = WorkerProcess(folder, "--runtime", "onnxruntime", "--name", "w-onnx",
                           "--set", f"lane_claims_dir={str(folder / 'claims')!r}")
    try:
        yield worker.start()
    finally:
        worker.close()


@pytest.fixture(scope="module")
def emulated_worker(tmp_path_factory):
    worker = WorkerProcess(tmp_path_factory.mktemp("emu-worker"), "--runtime", "emulated", "--devices", "4",
                           "--name", "w-emu", "--device-memory-mb", "64")
    try:
        yield worker.start()
    finally:
        worker.close()


@pytest.fixture(scope="module")
def mlp_loaded(onnx_worker):
    ctl = onnx_worker.ctl
    model = small_mlp(width=32, layers=3, seed=1)
    prepared: Prepared = ctl.prepare("mlp", model, max_batch=8).body
    assert prepared.status is Status.OK, prepared.detail
    loaded: Result = ctl.load(0, "mlp").body
    assert loaded.status is Status.OK, loaded.detail
    return model


def result(ctl, msg_id: int) -> Result:
    body = ctl.reply_to(msg_id).body
    assert isinstance(body, Result), body
    return body


def test_hello_announces_devices_runtime_and_formats(onnx_worker, emulated_worker):
    hello = onnx_worker.hello
    assert (hello.worker, hello.runtime, hello.formats) == ("w-onnx", "onnxruntime", ("onnx",))
    assert [(d["device_id"], d["kind"]) for d in hello.devices] == [(0, "cpu-1t")]
    emu = emulated_worker.hello
    assert emu.runtime == "emulated" and emu.formats == ("profile",)
    assert [d["device_id"] for d in emu.devices] == [0, 1, 2, 3]
    assert all(d["kind"] == "emulated" and d["memory_bytes"] == 64 * 2**20 for d in emu.devices)
    assert hello.host == host_id() and hello.host  # a controller on this host keeps off its lanes
    allowed = sorted(os.sched_getaffinity(0))
    assert hello.lane_cores == ((allowed[-1],) if len(allowed) > 1 else ())
    assert emu.lane_cores == ()  # emulated devices pin nothing
    wait_until_true(lambda: "worker ready" in onnx_worker.log(), what="'worker ready' logged")


def test_heartbeats_report_live_lanes(onnx_worker):
    ctl = onnx_worker.ctl
    seen = len(ctl.heartbeats)
    ctl.pump_for(0.5)  # heartbeats every 100 ms
    assert len(ctl.heartbeats) > seen
    assert all(hb.lanes_alive for hb in ctl.heartbeats)


def test_heartbeats_say_how_long_the_worker_has_heard_nothing_from_the_controller(emulated_worker):
    ctl = emulated_worker.ctl
    ctl.pump_for(0.5)
    assert 0 < ctl.heartbeats[-1].unheard_ns < 500 * MS  # acked every 100 ms
    ctl.answer_heartbeats = False  # the controller's messages stop reaching it
    try:
        ctl.pump_for(1.2)
        assert ctl.heartbeats[-1].unheard_ns > 1000 * MS
    finally:
        ctl.answer_heartbeats = True
    ctl.pump_for(0.3)
    assert ctl.heartbeats[-1].unheard_ns < 500 * MS


def test_exec_outputs_match_onnxruntime(onnx_worker, mlp_loaded):
    ctl = onnx_worker.ctl
    x = np.random.default_rng(5).standard_normal((3, 32)).astype(np.float32)
    res = result(ctl, ctl.exec_async(0, "mlp", {"x": x}, batch_size=4))
    assert res.status is Status.OK, res.detail
    assert (res.action, res.model_id, res.batch_size) == ("exec", "mlp", 4)
    assert res.end_ns - res.begin_ns >= 0 and res.duration_ns > 0
    (y,) = res.tensors
    assert y.shape == (3, 32)
    np.testing.assert_allclose(y.array(), direct_run(mlp_loaded, x), rtol=1e-5, atol=1e-6)


def test_the_exec_lane_has_a_core_of_its_own(onnx_worker, mlp_loaded):
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one core here: an EXEC lane cannot have one to itself")
    lane_core = allowed[-1]
    threads = cores_of_threads(onnx_worker.proc.pid)
    assert threads.count({lane_core}) == 1, threads  # the EXEC lane, alone on the highest core
    assert all(lane_core not in cores for cores in threads if cores != {lane_core}), threads


def test_lane_cores_leave_a_core_over_or_pin_nothing():
    assert lane_cores(1, 1, {0, 1}) == {0: {1}}
    assert lane_cores(2, 1, {0, 1, 2, 3}) == {0: {3}, 1: {2}}
    assert lane_cores(2, 1, {0, 1}) == {}  # nothing left for the rest of the worker
    assert lane_cores(1, 2, {0, 1, 2, 3}) == {}  # onnxruntime's pool threads would escape the pin
    assert lane_cores(1, 1, {0, 1, 2, 3}, taken={3}) == {0: {2}}  # another worker's lane holds 3
    assert lane_cores(1, 1, {0, 1}, taken={1}) == {}  # ...and here leaves no core over


def test_where_threads_cannot_be_pinned_the_runtime_pins_and_claims_nothing(monkeypatch, tmp_path):
    from clockwork.common.config import WorkerConfig
    from clockwork.worker.runtimes.onnxrt import OnnxRuntime

    monkeypatch.delattr(os, "sched_setaffinity")  # as on macOS
    monkeypatch.delattr(os, "sched_getaffinity")
    runtime = OnnxRuntime(WorkerConfig(devices=1, lane_claims_dir=str(tmp_path)))
    assert runtime.reserved_cores() == runtime.lane_cores_on_host() == set()
    runtime.close()


def test_core_claims_hold_across_processes_until_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from clockwork.common.affinity import CoreClaims\n"
        f"claims = CoreClaims({str(tmp_path)!r})\n"
        "print(claims.claim({5, 6}), flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        mine = CoreClaims(tmp_path)
        assert mine.taken({4, 5, 6, 7}) == {5, 6}
        assert not mine.claim({4, 5})  # all or none: 4 is not kept
        assert mine.taken({4}) == set()
        assert mine.claim({4, 7}) and mine.taken({4, 5, 6, 7}) == {5, 6}  # its own are not "taken"
    finally:
        holder.kill()
        holder.wait()
    assert mine.taken({4, 5, 6, 7}) == set()  # the kernel let go of the dead holder's locks
    other = CoreClaims(tmp_path)
    assert other.taken({4, 5, 6, 7}) == {4, 7}
    mine.release()  # a runtime's close
    assert other.taken({4, 5, 6, 7}) == set()


def test_other_workers_lane_cores_are_seen_after_this_one_moved_off_them(tmp_path):
    """The worker looks again every 5 s from a thread it has moved off the lanes' cores; those
    cores must still be probed, or it moves back onto them, and off again 5 s later."""
    from clockwork.common.config import WorkerConfig
    from clockwork.worker.runtimes.onnxrt import OnnxRuntime

    allowed = set(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one core here: there is no core to keep off")
    top = max(allowed)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from clockwork.common.affinity import CoreClaims\n"
        f"print(CoreClaims({str(tmp_path)!r}).claim({{{top}}}), flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    runtime = OnnxRuntime(WorkerConfig(devices=1, pin_lanes=False, lane_claims_dir=str(tmp_path)))
    try:
        assert holder.stdout.readline().strip() == "True"
        assert runtime.lane_cores_on_host() == {top}
        os.sched_setaffinity(0, allowed - {top})  # as the worker's keep_off leaves this thread
        assert runtime.lane_cores_on_host() == {top}
    finally:
        os.sched_setaffinity(0, allowed)
        runtime.close()
        holder.kill()
        holder.wait()


def test_two_workers_on_one_host_never_share_a_lane_core(tmp_path):
    claims = ("--set", f"lane_claims_dir={str(tmp_path / 'claims')!r}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = WorkerProcess(tmp_path / "a", "--runtime", "onnxruntime", "--name", "w-a", *claims)
    second = None
    try:
        first.start()
        second = WorkerProcess(tmp_path / "b", "--runtime", "onnxruntime", "--name", "w-b", *claims).start()
        allowed = sorted(os.sched_getaffinity(0))
        a, b = set(first.hello.lane_cores), set(second.hello.lane_cores)
        assert not a & b, (a, b)
        if len(allowed) >= 3:
            assert a == {allowed[-1]} and b == {allowed[-2]}
        elif len(allowed) == 2:
            assert a == {allowed[-1]} and not b  # no core over for a second lane
            assert all(allowed[-1] not in cores for cores in cores_of_threads(second.proc.pid))  # kept off a's
    finally:
        first.close()
        if second is not None:
            second.close()


def test_exec_with_a_window_in_the_past_is_too_late(onnx_worker, mlp_loaded):
    ctl = onnx_worker.ctl
    now = monotonic_ns()
    x = np.zeros((1, 32), dtype=np.float32)
    res = result(ctl, ctl.exec_async(0, "mlp", {"x": x}, earliest_ns=now - 20 * MS, latest_ns=now - 10 * MS))
    assert res.status is Status.TOO_LATE and res.tensors == ()


def test_concurrent_execs_on_a_device_never_overlap(onnx_worker, mlp_loaded):
    ctl = onnx_worker.ctl
    x = np.ones((2, 32), dtype=np.float32)
    ids = [ctl.exec_async(0, "mlp", {"x": x}) for _ in range(12)]
    results = [result(ctl, i) for i in ids]
    assert all(r.status is Status.OK for r in results)
    spans = sorted((r.begin_ns, r.end_ns) for r in results)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))


def test_refusals_are_answered(onnx_worker, mlp_loaded):
    ctl = onnx_worker.ctl
    now = monotonic_ns()
    far = now + 60_000 * MS
    x = Tensor.from_array("x", np.zeros((1, 32), dtype=np.float32))
    unknown_device = ctl.send(Exec(device_id=7, model_id="mlp", batch_size=1, earliest_ns=now, latest_ns=far,
                                   tensors=(x,)))
    not_loaded = ctl.send(Exec(device_id=0, model_id="ghost", batch_size=1, earliest_ns=now, latest_ns=far,
                               tensors=(x,)))
    not_prepared = ctl.send(Load(device_id=0, model_id="ghost", earliest_ns=now, latest_ns=far))
    twice = ctl.send(Load(device_id=0, model_id="mlp", earliest_ns=now, latest_ns=far))
    assert result(ctl, unknown_device).status is Status.BAD_INPUT
    assert result(ctl, not_loaded).status is Status.NOT_LOADED
    assert result(ctl, not_prepared).status is Status.NOT_PREPARED
    assert result(ctl, twice).status is Status.ALREADY_LOADED
    bad = ctl.prepare("junk", b"\x00not an onnx file").body
    assert bad.status is Status.BAD_MODEL and bad.detail


def test_too_big_to_load_is_insufficient_memory(emulated_worker):
    ctl = emulated_worker.ctl
    assert ctl.prepare("huge", profile_blob(weights_bytes=65 * 2**20), fmt="profile").body.status is Status.OK
    res = ctl.load(1, "huge").body
    assert res.status is Status.INSUFFICIENT_MEMORY and "pages" in res.detail


def test_emulated_devices_follow_their_profile_and_each_runs_one_exec_at_a_time(emulated_worker):
    ctl = emulated_worker.ctl
    blob = profile_blob(load_ms=3.0, exec_ms={1: 4.0, 4: 8.0}, weights_bytes=16 * 2**20)
    assert ctl.prepare("resnet", blob, fmt="profile", max_batch=4).body.status is Status.OK
    for device_id in range(4):
        loaded = ctl.load(device_id, "resnet").body
        assert loaded.status is Status.OK and loaded.duration_ns >= 3 * MS
    x = np.zeros((1, 16), dtype=np.float32)
    ids = {ctl.exec_async(d, "resnet", {"data": x}): d for _ in range(5) for d in range(4)}
    by_device: dict[int, list] = {d: [] for d in range(4)}
    for msg_id, device_id in ids.items():
        res = result(ctl, msg_id)
        assert res.status is Status.OK and res.device_id == device_id
        assert res.duration_ns >= 4 * MS
        assert res.tensors[0].shape == (1, 10)
        by_device[device_id].append((res.begin_ns, res.end_ns))
    for spans in by_device.values():
        spans.sort()
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))


def test_a_lane_stuck_far_past_its_expected_time_shows_in_heartbeats(emulated_worker):
    ctl = emulated_worker.ctl
    # 2.6 s of exec announced as 1 ms: past the 2 s minimum allowance, the lane counts as stuck
    blob = profile_blob(load_ms=1.0, exec_ms={1: 2600.0})
    assert ctl.prepare("sluggish", blob, fmt="profile").body.status is Status.OK
    assert ctl.load(3, "sluggish").body.status is Status.OK
    seen = len(ctl.heartbeats)
    msg_id = ctl.exec_async(3, "sluggish", {"data": np.zeros((1, 16), np.float32)}, expected_ns=1 * MS)
    assert result(ctl, msg_id).status is Status.OK
    assert any(not hb.lanes_alive for hb in ctl.heartbeats[seen:])
    after = len(ctl.heartbeats)
    ctl.pump_for(0.35)
    assert len(ctl.heartbeats) > after and all(hb.lanes_alive for hb in ctl.heartbeats[after:])


def test_worker_lost_makes_it_release_what_it_holds_and_hello_again(emulated_worker):
    """A clean slate: the controller plans the rejoined worker's devices as empty, so the worker
    releases its resident models itself; prepared ones stay in its store."""
    ctl = emulated_worker.ctl
    assert ctl.prepare("kept", profile_blob(), fmt="profile").body.status is Status.OK
    assert ctl.load(2, "kept").body.status is Status.OK
    ctl.send(Error(status=Status.WORKER_LOST, detail="controller restarted"))
    hello = ctl.wait_hello(10)
    assert len(hello.devices) == 4
    assert ctl.load(2, "kept").body.status is Status.OK  # not ALREADY_LOADED, and still prepared


def test_worker_lost_answering_what_it_sent_before_its_latest_hello_is_stale(emulated_worker):
    """A restarted controller answers every heartbeat queued while it was down with WORKER_LOST;
    the first makes the worker join again, the rest answer messages older than that HELLO."""
    ctl = emulated_worker.ctl
    assert ctl.prepare("held", profile_blob(), fmt="profile").body.status is Status.OK
    ctl.send(Error(status=Status.WORKER_LOST, detail="controller restarted"))
    ctl.wait_hello(10)
    assert ctl.load(1, "held").body.status is Status.OK
    hellos = len(ctl.hellos)
    ctl.send(Error(status=Status.WORKER_LOST, detail="unknown worker; say HELLO"), parent_id=ctl.last_hello_id - 1)
    ctl.pump_for(0.5)
    assert len(ctl.hellos) == hellos  # no HELLO again
    assert ctl.load(1, "held").body.status is Status.ALREADY_LOADED  # nothing released


def test_drop_unloads_everywhere_and_forgets(emulated_worker):
    ctl = emulated_worker.ctl
    assert ctl.prepare("gone", profile_blob(), fmt="profile").body.status is Status.OK
    assert ctl.load(0, "gone").body.status is Status.OK
    assert ctl.load(3, "gone").body.status is Status.OK
    ctl.send(Drop(model_id="gone"))
    now = monotonic_ns()
    unload = ctl.send(Unload(device_id=0, model_id="gone", earliest_ns=now + 50 * MS, latest_ns=now + 60_000 * MS))
    assert result(ctl, unload).status is Status.NOT_LOADED
    assert ctl.load(3, "gone").body.status is Status.NOT_PREPARED
    ctl.send(Error(status=Status.WORKER_LOST))
    ctl.wait_hello(10)
    assert ctl.load(0, "gone").body.status is Status.NOT_PREPARED  # forgotten for good


def load_after_drop(ctl, model_id: str) -> Status:
    """A LOAD on device 0 due after the DROP just sent (a lane takes jobs in `earliest` order)."""
    now = monotonic_ns()
    return result(ctl, ctl.send(Load(device_id=0, model_id=model_id, earliest_ns=now + 50 * MS,
                                     latest_ns=now + 60_000 * MS))).status


def _sent(ctl, frames: list, identity: bytes) -> bool:
    try:
        ctl.send_frames(frames, identity)
        return True
    except zmq.ZMQError:  # not connected (yet): the ROUTER refuses an unknown identity
        return False


def test_a_prepare_on_the_bulk_connection_is_served(emulated_worker):
    """Model bytes come on a connection of their own, so they never hold up actions (docs/protocol.md)."""
    ctl = emulated_worker.ctl
    msg_id = ctl.ids.next()
    frames = encode(Prepare(model_id="bulky", format="profile", blob=profile_blob()), msg_id, 0, monotonic_ns())
    wait_until_true(lambda: _sent(ctl, frames, bulk_identity(ctl.worker)), what="the bulk connection to be up")
    assert ctl.reply_to(msg_id).body.status is Status.OK
    assert ctl.load(1, "bulky").body.status is Status.OK


def test_a_drop_overtaken_by_a_newer_prepare_keeps_its_bytes_and_an_older_prepare_is_ignored(emulated_worker):
    """PREPAREs and DROPs travel on different connections, so either may arrive first; the
    controller's growing ids say which is newer."""
    ctl = emulated_worker.ctl
    assert ctl.prepare("again", profile_blob(), fmt="profile").body.status is Status.OK
    assert ctl.load(0, "again").body.status is Status.OK
    drop_id = ctl.ids.next()  # the DROP of the first upload, overtaken by the PREPARE of the second
    assert ctl.prepare("again", profile_blob(load_ms=3.0), fmt="profile").body.status is Status.OK
    ctl.send_frames(encode(Drop(model_id="again"), drop_id, 0, monotonic_ns()))
    assert load_after_drop(ctl, "again") is Status.OK  # unloaded by the DROP, still prepared
    stale_id = ctl.ids.next()  # a PREPARE overtaken by a newer DROP
    ctl.send(Drop(model_id="again"))
    ctl.send_frames(encode(Prepare(model_id="again", format="profile", blob=profile_blob()), stale_id, 0, monotonic_ns()))
    assert ctl.prepare("other", profile_blob(), fmt="profile").body.status is Status.OK  # PREPAREs are served in order
    assert load_after_drop(ctl, "again") is Status.NOT_PREPARED


# ------------------------------------------------------------------------------- garbage

def _valid_frames() -> list[list[bytes]]:
    x = Tensor.from_array("x", np.zeros((1, 32), dtype=np.float32))
    msgs = [Exec(device_id=0, model_id="mlp", batch_size=1, earliest_ns=0, latest_ns=1, tensors=(x,)),
            Load(device_id=0, model_id="mlp", earliest_ns=0, latest_ns=1)]
    return [[bytes(f) for f in encode(m, 1 << 40)] for m in msgs]


VALID = _valid_frames()
packable_ints = st.integers(-2**63, 2**64 - 1)
field_values = st.one_of(st.none(), st.booleans(), packable_ints, st.text(max_size=20),
                         st.binary(max_size=20), st.lists(packable_ints, max_size=3), st.floats(allow_nan=True))
headers = st.fixed_dictionaries(
    {"type": st.sampled_from(["exec", "load", "unload", "prepare", "drop", "hello", "nonsense", 7]),
     "msg_id": st.one_of(st.integers(0, 2**64 - 1), st.text(max_size=3))},
    optional={"device_id": field_values, "model_id": field_values, "batch_size": field_values,
              "earliest_ns": field_values, "latest_ns": field_values, "tensors": field_values,
              "proto_version": field_values},
).map(lambda h: [msgpack.packb(h, use_bin_type=True)])
random_frames = st.lists(st.binary(max_size=200), min_size=0, max_size=4)


def _truncate(which: int, frames_cut: int, header_cut: int) -> list[bytes]:
    """A valid message missing its last frames and/or the end of its header."""
    frames = VALID[which][: len(VALID[which]) - frames_cut]
    return [f[: max(0, len(f) - header_cut)] if i == 0 else f for i, f in enumerate(frames)]


truncated = st.builds(_truncate, st.sampled_from(range(len(VALID))), st.integers(0, 3), st.integers(0, 400))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.one_of(random_frames, headers, truncated))
def test_garbage_never_stops_the_worker(onnx_worker, frames):
    ctl = onnx_worker.ctl
    ctl.send_frames(frames)
    probe = ctl.send(Exec(device_id=4000, model_id="probe", batch_size=1, earliest_ns=0, latest_ns=2**62,
                          tensors=(Tensor.from_array("x", np.zeros((1, 32), np.float32)),)))
    assert result(ctl, probe).status is Status.BAD_INPUT
    ctl.drain()  # the ERROR replies to the garbage
    assert onnx_worker.proc.poll() is None


def test_hello_repeats_until_welcomed_and_sigterm_stops_cleanly(tmp_path):
    worker = WorkerProcess(tmp_path, "--runtime", "emulated", "--devices", "2")
    try:
        worker.ctl.welcome = False
        first = worker.start().hello
        assert worker.ctl.wait_hello(10) == first  # once a second until WELCOME
        worker.ctl.welcome = True
        worker.ctl.wait_hello(10)
        wait_until_true(lambda: "worker ready" in worker.log(), what="'worker ready' logged")
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
        assert "worker stopped" in worker.log()
    finally:
        worker.close()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_an_unavailable_runtime_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "clockwork.worker.main", "--runtime", "tensorrt", "--controller",
                           "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "tensorrt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_bad_setting_exits_2():
    proc = subprocess.run([sys.executable, "-m", "clockwork.worker.main", "--set", "no_such_knob=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no_such_knob" in proc.stderr
