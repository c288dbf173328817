"""The CUDA contract of worker/runtimes/cuda.py (CudaDevices), on two drivers.

Every test runs twice through the `driver` fixture: on tests/fake_pycuda.py's FakeCudaDriver
(always, here and in CI) and on the real `pycuda.driver` where it imports and sees an NVIDIA GPU
(the `gpu` marker; elsewhere that parameter is skipped with the reason). So the same assertions
that pass on the fake are checked on real PyCUDA on a lent GPU host, next to
`clockwork-bench gpu-check` (`pytest -m gpu tests/test_cuda_devices.py`).

The tests drive CudaDevices the way the tensorrt runtime does: lane threads call enter_lane /
leave_lane (its lane_started / lane_stopped), the prepare thread uses `scoped`. Lane work runs on
real threads. Lane functions return plain data only: with real PyCUDA a stream, event or buffer
must be freed on its lane while the context is current there.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from clockwork.common.status import Status
from tests import fake_pycuda
from tests.fake_pycuda import FakeCudaDriver, FakeGpu
from clockwork.worker.runtimes.base import RuntimeFailure
from clockwork.worker.runtimes.cuda import NON_BLOCKING_STREAM, CudaDevices, cuda_failure
from clockwork.worker.runtimes.tensorrt import TensorRTRuntime

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20


def _real_pycuda() -> tuple[Any, str | None]:
    """(pycuda.driver, None) where it sees a GPU, else (None, why not). Never raises."""
    try:
        if importlib.util.find_spec("pycuda") is None:
            return None, "real PyCUDA: not installed"
        import pycuda.driver as cuda
    except Exception as exc:  # ImportError, or OSError without libcuda
        return None, f"real PyCUDA: cannot import pycuda.driver ({type(exc).__name__}: {exc})"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:
        return None, f"real PyCUDA: no NVIDIA GPU ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "real PyCUDA: no NVIDIA GPU (Device.count() is 0)"
    return cuda, None


REAL_CUDA, REAL_SKIP = _real_pycuda()


@dataclass
class Driver:
    """A driver under test, and how to look into it where the fake and PyCUDA differ."""

    cuda: Any
    gpus: int  # how many GPUs CudaDevices opens
    current_bus_id: Callable[[], str | None]  # PCI bus id of the context current on this thread
    is_pinned: Callable[[np.ndarray], bool]  # page-locked (and PORTABLE where observable)
    retained: Callable[[], list[int] | None]  # primary contexts retained per GPU, if observable


def fake_driver() -> Driver:
    cuda = FakeCudaDriver([FakeGpu("NVIDIA H200", (9, 0), 8 << 30, "0000:17:00.0"),
                           FakeGpu("NVIDIA H200", (9, 0), 8 << 30, "0000:65:00.0")])

    def current_bus_id() -> str | None:
        return cuda.gpus[cuda.current_index()].pci_bus_id if cuda.has_context() else None

    def is_pinned(array: np.ndarray) -> bool:
        return isinstance(array.base, fake_pycuda._HostAllocation) and not array.base.freed

    return Driver(cuda, 2, current_bus_id, is_pinned, lambda: list(cuda.retained))


def real_driver() -> Driver:
    cuda = REAL_CUDA

    def current_bus_id() -> str | None:
        if cuda.Context.get_current() is None:
            return None
        return cuda.Context.get_device().pci_bus_id()

    def is_pinned(array: np.ndarray) -> bool:
        base = array.base
        return isinstance(base, cuda.HostAllocation) and bool(base.get_flags() & cuda.host_alloc_flags.PORTABLE)

    return Driver(cuda, min(2, cuda.Device.count()), current_bus_id, is_pinned, lambda: None)


@pytest.fixture(params=[
    pytest.param("fake", id="fake"),
    pytest.param("real", id="real-pycuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(REAL_SKIP is not None, reason=REAL_SKIP or "real PyCUDA: present")]),
])
def driver(request) -> Driver:
    return fake_driver() if request.param == "fake" else real_driver()


@pytest.fixture
def devices(driver):
    devices = CudaDevices(driver.cuda, driver.gpus)  # on the main thread, like the runtime
    yield devices
    devices.close()


def in_threads(*fns: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Run each fn on its own thread, all at once; their results in order (a failure re-raised here)."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def body(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i, fn), name=f"lane-{i}") for i, fn in enumerate(fns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a lane thread hung"
    if errors:
        raise errors[0]
    return results


def as_lane(devices: CudaDevices, device_id: int, fn: Callable[[Any], Any]) -> Callable[[], Any]:
    """fn as a whole lane's life: enter_lane, fn(this thread's LaneState), leave_lane."""
    def lane() -> Any:
        devices.enter_lane(device_id, threading.current_thread().name)
        try:
            return fn(devices.lane(device_id))
        finally:
            devices.leave_lane()
    return lane


def on_lane(devices: CudaDevices, device_id: int, fn: Callable[[Any], Any]) -> Any:
    return in_threads(as_lane(devices, device_id, fn))[0]


# ------------------------------------------------------------------------------ contexts


def test_the_primary_context_is_current_only_on_lane_threads(driver, devices):
    last = devices.infos[-1]
    assert driver.current_bus_id() is None  # constructing CudaDevices made nothing current here
    with pytest.raises(RuntimeFailure, match="lane threads"):
        devices.lane(last.device_id)

    def lane() -> dict[str, Any]:
        seen: dict[str, Any] = {"before": driver.current_bus_id()}
        devices.enter_lane(last.device_id, "exec")
        try:
            seen["in"] = driver.current_bus_id()
            try:
                devices.enter_lane(last.device_id, "exec again")
            except RuntimeError as exc:
                seen["again"] = str(exc)
        finally:
            devices.leave_lane()
        seen["after"] = driver.current_bus_id()
        return seen

    seen = in_threads(lane)[0]
    assert seen == {"before": None, "in": last.pci_bus_id, "again": "this thread already runs lane 'exec'",
                    "after": None}
    assert driver.current_bus_id() is None


def test_scoped_makes_a_device_current_for_one_block(driver, devices):
    for info in devices.infos:  # the prepare thread's case: nothing current before or after
        with devices.scoped(info.device_id):
            assert driver.current_bus_id() == info.pci_bus_id
            free, total = devices.mem_info()
            assert total == info.total_bytes and 0 < free <= total
        assert driver.current_bus_id() is None
    with pytest.raises(ValueError), devices.scoped(0):
        raise ValueError("a failed build")
    assert driver.current_bus_id() is None

    first, last = devices.infos[0], devices.infos[-1]

    def lane(state) -> tuple[list[str | None], str | None]:  # on a lane, the lane's device comes back
        inside = []
        for info in (last, first):
            with devices.scoped(info.device_id):
                inside.append(driver.current_bus_id())
        return inside, driver.current_bus_id()

    inside, after = on_lane(devices, last.device_id, lane)
    assert inside == [last.pci_bus_id, first.pci_bus_id] and after == last.pci_bus_id


# ------------------------------------------------------------------------------ streams and events


def test_each_lane_owns_its_stream_and_events(driver, devices):
    both_entered = threading.Barrier(2, timeout=30)

    def lane(state) -> tuple[int, list[int]]:
        assert devices.lane(state.device_id) is state
        seen = int(state.stream.handle), [id(e) for e in state.events]
        both_entered.wait()  # the two lanes' streams and events are alive together
        return seen

    (stream_a, events_a), (stream_b, events_b) = in_threads(as_lane(devices, 0, lane), as_lane(devices, 0, lane))
    assert stream_a != stream_b
    assert 0 not in (stream_a, stream_b)  # never the legacy default stream
    assert len(set(events_a)) == len(set(events_b)) == 4
    assert not set(events_a) & set(events_b)


def test_a_lane_stream_does_not_wait_for_the_legacy_default_stream():
    """Only the fake says a stream's flags (PyCUDA has no cuStreamGetFlags)."""
    devices = CudaDevices(fake_driver().cuda, 1)
    try:
        (flags,) = in_threads(as_lane(devices, 0, lambda state: state.stream.flags))
        assert flags == NON_BLOCKING_STREAM
    finally:
        devices.close()


def test_events_on_the_lane_stream_time_a_copy_in_ns(driver, devices):
    cuda, nbytes = driver.cuda, 8 * MIB

    def lane(state):
        start, copied_in, executed, copied_out = state.events
        host, device = devices.pinned(nbytes, "a timed copy"), devices.alloc(nbytes, "a timed copy")
        start.record(state.stream)
        cuda.memcpy_htod_async(device, host, state.stream)
        copied_in.record(state.stream)
        executed.record(state.stream)
        cuda.memcpy_dtoh_async(host, device, state.stream)
        copied_out.record(state.stream)
        copied_out.synchronize()
        elapsed_ms = [event.time_since(start) for event in (copied_in, executed, copied_out)]
        timing = TensorRTRuntime._timing(state)  # what an INFER reports, from the lane's events
        device.free()
        devices.free_pinned(host)
        return elapsed_ms, timing

    elapsed_ms, timing = on_lane(devices, 0, lane)
    assert 0 <= elapsed_ms[0] <= elapsed_ms[1] <= elapsed_ms[2]
    assert timing.copy_in_ns == round(elapsed_ms[0] * 1e6)
    assert timing.exec_ns >= 0
    for copy_ns in (timing.copy_in_ns, timing.copy_out_ns):  # 8 MiB: over 8 us even at 1 TB/s
        assert isinstance(copy_ns, int) and 8_000 < copy_ns < 1_000_000_000


# ------------------------------------------------------------------------------ memory


def test_pinned_buffers_round_trip_through_the_device(driver, devices):
    cuda = driver.cuda
    payload = np.random.default_rng(7).integers(0, 256, 3 * MIB + 5, dtype=np.uint8)

    def lane(state):
        src, dst = devices.pinned(payload.nbytes, "inputs"), devices.pinned(payload.nbytes, "outputs")
        pinned = driver.is_pinned(src) and driver.is_pinned(dst)
        shape, dtype = src.shape, src.dtype
        src[:] = payload
        device = devices.alloc(payload.nbytes, "a round trip")
        cuda.memcpy_htod_async(device, src, state.stream)
        cuda.memcpy_dtoh_async(dst, device, state.stream)
        state.stream.synchronize()
        back = dst.copy()
        device.free()
        devices.free_pinned(src)
        devices.free_pinned(dst)
        return pinned, shape, dtype, back

    pinned, shape, dtype, back = on_lane(devices, 0, lane)
    assert pinned
    assert shape == payload.shape and dtype == np.uint8
    np.testing.assert_array_equal(back, payload)
    devices.free_pinned(None)  # pageable or absent buffers: nothing to give back
    devices.free_pinned(np.zeros(3, dtype=np.uint8))


def test_an_impossible_allocation_is_insufficient_memory_and_the_lane_goes_on(driver, devices):
    cuda, total = driver.cuda, devices.infos[0].total_bytes

    def lane(state):
        try:
            devices.alloc(4 * total, "a test hog")
            failure = None
        except RuntimeFailure as exc:
            failure = (exc.status, exc.detail)
        small, host = devices.alloc(4096, "after the failure"), devices.pinned(4096, "after the failure")
        host[:] = 7
        cuda.memcpy_htod_async(small, host, state.stream)
        host[:] = 0
        cuda.memcpy_dtoh_async(host, small, state.stream)
        state.stream.synchronize()
        works = bool((host == 7).all())
        small.free()
        devices.free_pinned(host)
        return failure, works

    failure, works = on_lane(devices, 0, lane)
    assert failure is not None, "an allocation of 4x the GPU's memory succeeded"
    status, detail = failure
    assert status == Status.INSUFFICIENT_MEMORY
    assert f"cannot allocate {4 * total} bytes of GPU memory for a test hog" in detail
    assert works


def test_cuda_failure_classifies_the_drivers_errors(driver):
    cuda = driver.cuda
    cases = [(cuda.MemoryError("cuMemAlloc failed: out of memory"), Status.INSUFFICIENT_MEMORY),
             (cuda.LogicError("cuMemHostAlloc failed: out of memory"), Status.INSUFFICIENT_MEMORY),
             (cuda.LaunchError("cuStreamSynchronize failed: an illegal memory access was encountered"),
              Status.RUNTIME_ERROR),
             (cuda.LogicError("cuMemcpyHtoDAsync failed: invalid argument"), Status.RUNTIME_ERROR)]
    for exc, status in cases:
        failure = cuda_failure(cuda, exc, "EXEC of 'm'")
        assert (failure.status, failure.detail) == (status, f"EXEC of 'm': {exc}")
    already = RuntimeFailure(Status.BAD_INPUT, "as it was")
    assert cuda_failure(cuda, already, "EXEC of 'm'") is already


# ------------------------------------------------------------------------------ close


def test_close_releases_the_primary_contexts(driver, devices):
    count = len(devices.infos)
    assert driver.retained() in (None, [1] * count)
    assert on_lane(devices, 0, lambda state: "worked") == "worked"
    devices.close()
    assert driver.retained() in (None, [0] * count)

    def late_lane() -> tuple[str | None, str | None]:
        try:
            devices.enter_lane(0, "late")
        except Exception as exc:
            return type(exc).__name__, driver.current_bus_id()
        devices.leave_lane()
        return None, None

    refused, current = in_threads(late_lane)[0]
    assert refused is not None, "a lane entered a device after close()"
    assert current is None
    devices.close()  # twice is harmless
