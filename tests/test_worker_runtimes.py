"""Runtimes behind a device's lanes: the emulated one waits its profile, onnxruntime's outputs are
exactly what onnxruntime gives, padding never leaks out, bad inputs are refused."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from clockwork.common.checks import BadMessage
from clockwork.common.clock import monotonic_ns
from clockwork.common.config import WorkerConfig
from clockwork.common.models import onnx_signature, parse_profile
from clockwork.common.schema import Prepare
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.common.clock import wait_until
from clockwork.worker.device import Ran, drop_model, pad_inputs, trim_outputs
from clockwork.worker.runtimes.emulated import EmulatedRuntime, exec_ns_for
from clockwork.worker.runtimes.base import RuntimeFailure
from clockwork.worker.runtimes.onnxrt import OnnxRuntime
from tests.worker_helpers import (Collector, MS, direct_run, make_device, make_preparer, profile_blob, small_mlp,
                                  wait_until_true, window)

pytestmark = pytest.mark.timeout(120)


def test_wait_until_never_returns_early():
    for delay_ns in (0, 50_000, 300_000, 2 * MS):
        target = monotonic_ns() + delay_ns
        assert wait_until(target) >= target
        assert monotonic_ns() >= target


def test_emulated_exec_uses_the_smallest_profiled_batch_that_holds_it():
    prof = parse_profile(profile_blob(exec_ms={1: 1.0, 4: 2.0, 16: 5.0}))
    assert [exec_ns_for(prof, b) for b in (1, 2, 4, 5, 16)] == [1 * MS, 2 * MS, 2 * MS, 5 * MS, 5 * MS]


def test_emulated_device_waits_its_profile_and_returns_zero_outputs_trimmed():
    config = WorkerConfig(runtime="emulated", devices=3)
    runtime = EmulatedRuntime(config)
    assert [d.kind for d in runtime.devices()] == ["emulated"] * 3
    device, emit, store = make_device(runtime, device_id=2)
    device.start()
    try:
        blob = profile_blob(load_ms=4.0, exec_ms={1: 3.0, 4: 6.0},
                            inputs=[{"name": "data", "dtype": "float32", "shape": [5]}],
                            outputs=[{"name": "prob", "dtype": "float32", "shape": [7]},
                                     {"name": "boxes", "dtype": "int64", "shape": [2, 3]}])
        assert make_preparer(runtime, store, Collector()).prepare(
            Prepare(model_id="emu", format="profile", blob=blob, max_batch=4)).status.ok
        device.submit_load(1, "emu", *window())
        load = emit.for_parent(1)
        assert load.status is Status.OK and load.duration_ns >= 4 * MS
        x = np.ones((3, 5), dtype=np.float32)
        device.submit_exec(2, "emu", 4, (Tensor.from_array("data", x),), *window())
        done = emit.for_parent(2)
        assert done.status is Status.OK, done.detail
        assert done.duration_ns >= 6 * MS  # batch 4's profiled time; no upper bound asserted
        outputs = {t.name: t.array() for t in done.tensors}
        assert outputs["prob"].shape == (3, 7) and not outputs["prob"].any()
        assert outputs["boxes"].shape == (3, 2, 3) and outputs["boxes"].dtype == np.int64
        assert done.device_id == 2 and done.batch_size == 4
    finally:
        device.stop()


@pytest.fixture(scope="module")
def onnx_device():
    runtime = OnnxRuntime(WorkerConfig(devices=1, pin_lanes=False))
    assert runtime.devices()[0].kind == "cpu-1t"
    device, emit, store = make_device(runtime)
    device.start()
    model = small_mlp(width=16, layers=3, seed=3)
    assert make_preparer(runtime, store, Collector(), device).prepare(
        Prepare(model_id="mlp", format="onnx", blob=model, max_batch=8)).status.ok
    device.submit_load(1, "mlp", *window())
    assert emit.for_parent(1).status is Status.OK
    yield device, emit, model
    device.stop()


def test_an_onnx_load_runs_its_session_once_on_zeros_and_a_model_failing_on_them_still_loads(monkeypatch):
    # A session's first run is slow (its buffers are allocated then): the LOAD takes it, not
    # the first EXEC.
    runtime = OnnxRuntime(WorkerConfig(devices=1, pin_lanes=False))
    model = small_mlp(width=16, layers=2, seed=5)
    prepared = runtime.prepare("mlp", "d", "onnx", model, onnx_signature(model, {}, 8))
    runs, run = [], runtime.execute

    def recorded(device_id, handle, inputs):
        runs.append({name: (array.shape, bool(array.any())) for name, array in inputs.items()})
        return run(device_id, handle, inputs)

    monkeypatch.setattr(runtime, "execute", recorded)
    handle = runtime.load(0, prepared)
    assert runs == [{"x": ((1, 16), False)}]  # once, at batch 1, on zeros, before the handle is out

    def failing(device_id, handle, inputs):
        raise RuntimeFailure(Status.RUNTIME_ERROR, "not on zeros")

    monkeypatch.setattr(runtime, "execute", failing)
    assert runtime.load(0, prepared).output_names == handle.output_names == ("y",)


@pytest.mark.parametrize("samples, batch_size", [(1, 1), (3, 4), (5, 8), (8, 8)])
def test_onnx_outputs_equal_onnxruntime_run_directly_with_padding_trimmed(onnx_device, samples, batch_size):
    device, emit, model = onnx_device
    x = np.random.default_rng(samples).standard_normal((samples, 16)).astype(np.float32)
    parent = 100 + samples * 10 + batch_size
    device.submit_exec(parent, "mlp", batch_size, (Tensor.from_array("x", x),), *window())
    done = emit.for_parent(parent)
    assert done.status is Status.OK, done.detail
    (y,) = done.tensors
    assert y.name == "y" and y.shape == (samples, 16)
    np.testing.assert_allclose(y.array(), direct_run(model, x), rtol=1e-5, atol=1e-6)


def test_onnx_exec_refusals(onnx_device):
    device, emit, _model = onnx_device
    x = Tensor.from_array("x", np.zeros((2, 16), dtype=np.float32))
    cases = {
        201: ("mlp", 1, (x,), Status.BAD_INPUT),  # 2 samples in a batch of 1
        202: ("mlp", 16, (x,), Status.BAD_INPUT),  # over the model's max batch of 8
        203: ("mlp", 2, (Tensor.from_array("x", np.zeros((2, 15), dtype=np.float32)),), Status.BAD_INPUT),
        204: ("mlp", 2, (Tensor.from_array("x", np.zeros((2, 16), dtype=np.float64)),), Status.BAD_INPUT),
        205: ("mlp", 2, (), Status.BAD_INPUT),
        206: ("absent", 2, (x,), Status.NOT_LOADED),
    }
    for parent, (model_id, batch, tensors, _status) in cases.items():
        device.submit_exec(parent, model_id, batch, tensors, *window())
    for parent, (*_, status) in cases.items():
        done = emit.for_parent(parent)
        assert done.status is status and done.detail and done.tensors == ()
    assert device.healthy(monotonic_ns())


def test_onnx_exec_past_its_window_is_too_late_and_not_run(onnx_device):
    device, emit, _model = onnx_device
    now = monotonic_ns()
    device.submit_exec(300, "mlp", 1, (Tensor.from_array("x", np.zeros((1, 16), np.float32)),), now - 5 * MS, now - MS)
    done = emit.for_parent(300)
    assert done.status is Status.TOO_LATE and done.tensors == () and done.duration_ns == 0


def test_pad_and_trim_directly():
    sig = onnx_signature(small_mlp(width=4), {}, 8)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs, samples = pad_inputs(sig, (Tensor.from_array("x", x),), 4)
    assert samples == 2 and inputs["x"].shape == (4, 4)
    np.testing.assert_array_equal(inputs["x"][:2], x)
    assert not inputs["x"][2:].any()
    (y,) = trim_outputs(sig, {"y": np.ones((4, 4), np.float32)}, samples, 4)
    assert y.shape == (2, 4)
    with pytest.raises(BadMessage) as err:
        pad_inputs(sig, (Tensor.from_array("x", x),), 1)
    assert err.value.status is Status.BAD_INPUT


def test_pad_joins_one_chunk_per_request_in_batch_order():
    sig = onnx_signature(small_mlp(width=4), {}, 8)
    a = np.full((1, 4), 1, np.float32)
    b = np.full((2, 4), 2, np.float32)
    inputs, samples = pad_inputs(sig, (Tensor.from_array("x", a), Tensor.from_array("x", b)), 4)
    assert samples == 3
    assert inputs["x"][:, 0].tolist() == [1, 2, 2, 0]
    with pytest.raises(BadMessage):  # a chunk of the wrong shape is refused like any bad input
        pad_inputs(sig, (Tensor.from_array("x", a), Tensor.from_array("x", np.ones((1, 5), np.float32))), 4)


@contextmanager
def executing_device():
    """An emulated device with model "emu" loaded and a 300 ms EXEC of it (parent 2) running:
    yields (device, emit, submit_exec)."""
    runtime = EmulatedRuntime(WorkerConfig(runtime="emulated", devices=1))
    device, emit, store = make_device(runtime)
    device.start()
    try:
        blob = profile_blob(load_ms=1.0, exec_ms={1: 300.0}, inputs=[{"name": "data", "dtype": "float32", "shape": [5]}])
        assert make_preparer(runtime, store, Collector()).prepare(
            Prepare(model_id="emu", format="profile", blob=blob, max_batch=1)).status.ok
        device.submit_load(1, "emu", *window())
        assert emit.for_parent(1).status is Status.OK

        def submit_exec(parent: int) -> None:
            device.submit_exec(parent, "emu", 1, (Tensor.from_array("data", np.ones((1, 5), np.float32)),), *window())

        submit_exec(2)
        wait_until_true(lambda: device._executing == "emu", what="the EXEC to start")  # the guards' own state
        yield device, emit, submit_exec
    finally:
        device.stop()


def test_an_unload_meeting_the_model_executing_is_refused_busy_and_the_exec_completes():
    with executing_device() as (device, emit, _):
        device.submit_unload(3, "emu", *window())
        assert emit.for_parent(3).status is Status.BUSY  # never pulled from under a running EXEC
        assert emit.for_parent(2).status is Status.OK
        device.submit_unload(4, "emu", *window())
        assert emit.for_parent(4).status is Status.OK  # once it is done, it goes


def test_an_exec_result_leaves_once_the_lane_lets_go_of_the_interpreter():
    """Handed over at once, a result woke the daemon's loop while the lane was still between
    EXECs, and the loop took the GIL from it. Back to back, an EXEC's result leaves as the next
    EXEC's device call starts (that EXEC then executing); with nothing queued, as the lane waits."""
    with executing_device() as (device, emit, submit_exec):
        executing_when_emitted = {}
        emit_now = device._emit

        def recording(item) -> None:
            executing_when_emitted[item.parent_id] = device._executing
            emit_now(item)

        device._emit = recording
        submit_exec(3)  # queued behind EXEC 2, which runs for 300 ms
        assert emit.for_parent(2).status is Status.OK
        assert emit.for_parent(3).status is Status.OK
    assert executing_when_emitted == {2: "emu", 3: None}


def test_an_exec_result_leaves_before_the_worker_runs_its_own_job_on_the_lane():
    """A profile (run_exclusive) takes seconds: the EXEC before it must not wait for it."""
    with executing_device() as (device, emit, _):
        profile = device.run_exclusive(lambda: emit.for_parent(2, timeout_s=5).status)  # runs after EXEC 2
        assert profile.result(timeout=10) is Status.OK


def test_a_release_waiting_for_an_exec_gives_way_to_a_load_that_comes_after_it():
    """A worker joining again releases what it holds, but a model still executing is released
    only once its EXEC ends; if the new controller LOADs it meanwhile (answered ALREADY_LOADED),
    it must stay: the controller now counts on it."""
    with executing_device() as (device, emit, submit_exec):
        device.submit_drop("emu")  # retried while it executes
        device.submit_load(3, "emu", *window())
        assert emit.for_parent(3).status is Status.ALREADY_LOADED
        assert emit.for_parent(2).status is Status.OK
        submit_exec(4)
        assert emit.for_parent(4).status is Status.OK  # still resident
        assert device.resident_ids() == ["emu"]


def test_inputs_staged_at_submit_are_checked_again_against_a_model_uploaded_anew_before_their_turn():
    """An EXEC's inputs are staged when it arrives; if the model is uploaded again with another
    signature before the EXEC's turn, what runs is checked against the model then resident."""
    runtime = EmulatedRuntime(WorkerConfig(runtime="emulated", devices=1))
    device, emit, store = make_device(runtime)
    preparer = make_preparer(runtime, store, Collector())
    device.start()
    try:
        def upload(model_id: str, parent: int, exec_ms: float, name: str, width: int) -> None:
            blob = profile_blob(load_ms=1.0, exec_ms={1: exec_ms}, inputs=[{"name": name, "dtype": "float32", "shape": [width]}])
            assert preparer.prepare(Prepare(model_id=model_id, format="profile", blob=blob, max_batch=1)).status.ok
            device.submit_load(parent, model_id, *window())
            assert emit.for_parent(parent).status is Status.OK

        def submit_exec(parent: int, model_id: str, name: str, width: int) -> None:
            x = Tensor.from_array(name, np.ones((1, width), np.float32))
            device.submit_exec(parent, model_id, 1, (x,), *window())

        upload("blocker", 1, 2000.0, "data", 5)
        upload("m", 2, 1.0, "data", 5)
        submit_exec(10, "blocker", "data", 5)
        wait_until_true(lambda: device._executing == "blocker", what="the blocker to start")
        submit_exec(11, "m", "data", 5)  # fits the model as it is now
        submit_exec(12, "m", "x", 3)  # fits only the model uploaded next
        drop_model(store, [device], "m")
        upload("m", 3, 1.0, "x", 3)
        assert device._executing == "blocker", "the blocker ended before the model was swapped: no test"
        assert emit.for_parent(10).status is Status.OK
        assert emit.for_parent(11).status is Status.BAD_INPUT
        done = emit.for_parent(12)
        assert done.status is Status.OK, done.detail
    finally:
        device.stop()


def test_an_output_the_wire_cannot_carry_fails_its_exec_and_not_the_loop():
    sig = onnx_signature(small_mlp(width=4), {}, 8)
    ran = Ran(7, 0, "mlp", 100, 200, 1, 1, sig, {"y": np.zeros((1, 4), np.complex64)}, 0, 0, False)
    done = ran.done()
    assert (done.parent_id, done.status, done.tensors) == (7, Status.BAD_INPUT, ())
    assert "complex64" in done.detail and done.duration_ns == 100
