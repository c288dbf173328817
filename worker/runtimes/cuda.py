"""The CUDA side of the TensorRT runtime, through PyCUDA: contexts, lanes, memory, timing, clocks.

Rules (why the GPU stays predictable and the process stays sane):
- One *primary* context per GPU, retained once at start-up and released at `close`. It is made
  current only on the device's lane threads (`enter_lane` / `leave_lane`, called from the
  runtime's `lane_started` / `lane_stopped`) and, for the length of one call, around work the
  prepare thread does on a device (`scoped`). Never `pycuda.autoinit`: it would make a context
  current on whichever thread imported it, for good.
- Every lane thread owns one stream (non-blocking: it never waits for the legacy default stream)
  and its own CUDA events; nothing else enqueues on it.
- Host buffers that feed copies are pinned (page-locked), so a copy is one DMA and its time does
  not depend on the kernel's page cache. Pinned buffers are allocated PORTABLE, so a plan pinned
  under device 0's context serves LOADs on device 1.
- Errors from PyCUDA become `RuntimeFailure`: out of memory is INSUFFICIENT_MEMORY (the
  controller's picture of memory was wrong, or something else holds the GPU), anything else
  RUNTIME_ERROR.

The `cuda` argument everywhere is the `pycuda.driver` module or a stand-in with the same names
(tests pass tests/fake_pycuda.py); this module never imports PyCUDA itself.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from clockwork.common.status import Status
from clockwork.worker.runtimes.base import RuntimeFailure, RuntimeUnavailable

# Markers of an out-of-memory failure in CUDA / TensorRT error text (CUDA_ERROR_OUT_OF_MEMORY,
# cudaErrorMemoryAllocation, TensorRT's "Requested amount of GPU memory ... could not be allocated").
_OOM_MARKERS = ("out of memory", "out_of_memory", "memoryallocation", "could not be allocated",
                "failed_allocation", "insufficient memory")


# CU_STREAM_NON_BLOCKING: a lane's stream never waits for the legacy default stream, which work
# done off the lanes (an engine build on the prepare thread) may use.
NON_BLOCKING_STREAM = 0x1


def looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def cuda_failure(cuda: Any, exc: BaseException, what: str) -> RuntimeFailure:
    """The RuntimeFailure for a PyCUDA exception raised while doing `what`."""
    if isinstance(exc, RuntimeFailure):
        return exc
    text = str(exc).strip() or type(exc).__name__
    oom = isinstance(exc, getattr(cuda, "MemoryError", ())) or looks_like_oom(text)
    return RuntimeFailure(Status.INSUFFICIENT_MEMORY if oom else Status.RUNTIME_ERROR, f"{what}: {text}")


@dataclass(frozen=True)
class GpuInfo:
    """What the runtime needs to know about one visible GPU."""

    device_id: int  # CUDA ordinal in this process (after CUDA_VISIBLE_DEVICES)
    name: str  # e.g. "NVIDIA H200"; the controller's device kind
    compute_capability: tuple[int, int]
    pci_bus_id: str  # stable across CUDA_VISIBLE_DEVICES; how NVML finds the same GPU
    total_bytes: int

    @property
    def kind_key(self) -> str:
        """Engines built on one kind run on every GPU of that kind (and only there)."""
        return f"{self.name} sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass
class LaneState:
    """What one lane thread owns: its device, its stream and its timing events."""

    device_id: int
    lane: str
    stream: Any
    # start, inputs copied, executed, outputs copied: recorded on `stream` around each EXEC.
    events: tuple[Any, Any, Any, Any]


class CudaDevices:
    """The first `count` visible GPUs, their primary contexts, and the lanes running on them."""

    def __init__(self, cuda: Any, count: int):
        self.cuda = cuda
        self._local = threading.local()
        self._contexts: list[Any] = []
        try:
            cuda.init()
            visible = cuda.Device.count()
        except cuda.Error as exc:
            raise RuntimeUnavailable(f"the tensorrt runtime cannot use CUDA: {exc} "
                                     "(is the NVIDIA driver loaded? see docs/gpu-hosts.md)") from None
        if visible == 0:
            raise RuntimeUnavailable("the tensorrt runtime found no NVIDIA GPU "
                                     "(check nvidia-smi and CUDA_VISIBLE_DEVICES)")
        if count > visible:
            raise RuntimeUnavailable(f"--devices {count} asks for more GPUs than the {visible} visible")
        try:
            devices = [cuda.Device(i) for i in range(count)]
            self.infos = [GpuInfo(i, str(d.name()), tuple(d.compute_capability()), str(d.pci_bus_id()),
                                  int(d.total_memory())) for i, d in enumerate(devices)]
            for device in devices:
                self._contexts.append(device.retain_primary_context())
        except cuda.Error as exc:
            self.close()
            raise RuntimeUnavailable(f"cannot open the GPUs' CUDA contexts: {exc}") from None

    # ------------------------------------------------------------------ contexts and lanes

    def enter_lane(self, device_id: int, lane: str) -> LaneState:
        """On a lane's thread, before its first action: make the device current, make a stream."""
        if getattr(self._local, "lane", None) is not None:
            raise RuntimeError(f"this thread already runs lane {self._local.lane.lane!r}")
        self._contexts[device_id].push()
        try:
            cuda = self.cuda
            state = LaneState(device_id, lane, cuda.Stream(flags=NON_BLOCKING_STREAM),
                              tuple(cuda.Event() for _ in range(4)))
        except BaseException:
            self.cuda.Context.pop()
            raise
        self._local.lane = state
        return state

    def leave_lane(self) -> None:
        """On a lane's thread, after its last action: drain its stream, release it, pop."""
        state = getattr(self._local, "lane", None)
        if state is None:
            return
        self._local.lane = None
        try:
            state.stream.synchronize()
        finally:
            del state  # stream and events are freed here, while the context is still current
            self.cuda.Context.pop()

    def lane(self, device_id: int) -> LaneState:
        """This thread's lane state; fails unless this thread is a lane of `device_id`."""
        state = getattr(self._local, "lane", None)
        if state is None:
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"device {device_id} work must run on one of its "
                                 "lane threads (lane_started was not called on this thread)")
        if state.device_id != device_id:
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"a lane of device {state.device_id} was asked "
                                 f"to work on device {device_id}")
        return state

    @contextlib.contextmanager
    def scoped(self, device_id: int) -> Iterator[None]:
        """Make the device current on this thread for one block (the prepare thread's builds)."""
        state = getattr(self._local, "lane", None)
        if state is not None and state.device_id == device_id:
            yield  # already current: a lane of this device
            return
        self._contexts[device_id].push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    # ------------------------------------------------------------------ memory (context current)

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of the current device."""
        free, total = self.cuda.mem_get_info()
        return int(free), int(total)

    def alloc(self, nbytes: int, what: str) -> Any:
        """Device memory on the current device; RuntimeFailure(INSUFFICIENT_MEMORY) if it is full."""
        try:
            return self.cuda.mem_alloc(max(1, int(nbytes)))
        except self.cuda.Error as exc:
            raise cuda_failure(self.cuda, exc, f"cannot allocate {nbytes} bytes of GPU memory for {what}") from None

    def pinned(self, nbytes: int, what: str) -> np.ndarray:
        """A pinned, portable host buffer of `nbytes` uint8 (the current context must be set)."""
        cuda = self.cuda
        try:
            return cuda.pagelocked_empty(max(1, int(nbytes)), np.uint8, mem_flags=cuda.host_alloc_flags.PORTABLE)
        except cuda.Error as exc:
            raise cuda_failure(cuda, exc, f"cannot pin {nbytes} bytes of host memory for {what} "
                                          "(check the memlock limit, docs/gpu-hosts.md)") from None

    @staticmethod
    def free_pinned(buffer: np.ndarray | None) -> None:
        """Give a pinned buffer back now rather than whenever the GC gets to it."""
        free = getattr(getattr(buffer, "base", None), "free", None)
        if free is not None:
            free()

    def close(self) -> None:
        """Release the primary contexts (after every lane has left and every buffer is freed)."""
        contexts, self._contexts = self._contexts, []
        for context in contexts:
            try:
                context.detach()
            except self.cuda.Error:
                pass  # the driver is going away with the process anyway


class SmClocks:
    """The SM clock of each GPU, read through NVML (nvidia-ml-py) after each EXEC or by a poller.

    Optional: without `pynvml`, or where NVML cannot be initialised, nothing is reported (None).
    GPUs are matched by PCI bus id, because NVML ignores CUDA_VISIBLE_DEVICES.
    """

    def __init__(self, nvml: Any | None, infos: list[GpuInfo], log: Any):
        self._nvml = nvml
        self._stop: threading.Event | None = None  # set while a background poll runs
        self._handles: list[Any] = [None] * len(infos)
        self.last_mhz: list[int | None] = [None] * len(infos)
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.warning("nvml unavailable: SM clocks will not be reported", error=str(exc))
            self._nvml = None
            return
        for info in infos:
            try:
                self._handles[info.device_id] = nvml.nvmlDeviceGetHandleByPciBusId(info.pci_bus_id.encode())
            except Exception as exc:
                log.warning("nvml cannot find GPU", device_id=info.device_id, pci_bus_id=info.pci_bus_id,
                            error=str(exc))

    def poll_in_background(self, interval_s: float) -> None:
        """Sample every GPU from a daemon thread every `interval_s`, so that no EXEC pays for an
        NVML call; `last_mhz` then holds the latest reading. Stops at close()."""
        if self._nvml is None:
            return
        self._stop = threading.Event()

        def poll() -> None:
            while not self._stop.wait(interval_s):
                for device_id in range(len(self._handles)):
                    self.sample(device_id)

        threading.Thread(target=poll, name="sm-clocks", daemon=True).start()

    def sample(self, device_id: int) -> int | None:
        handle = self._handles[device_id]
        if handle is None:
            return None
        try:
            mhz = int(self._nvml.nvmlDeviceGetClockInfo(handle, self._nvml.NVML_CLOCK_SM))
        except Exception:  # a transient NVML error must not fail an EXEC
            return None
        self.last_mhz[device_id] = mhz
        return mhz

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        nvml, self._nvml = self._nvml, None
        self._handles = [None] * len(self._handles)
        if nvml is not None:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
