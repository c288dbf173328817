"""FAKE: stands in for PyCUDA (`pycuda.driver`) and NVML (`pynvml`) where no GPU or CUDA exists.

It follows the real modules' names and semantics closely enough to test the tensorrt runtime's
glue, and is stricter than the real thing where that catches bugs:
- every call that needs a CUDA context (allocation, copies, streams, events, mem_get_info)
  fails with LogicError unless a context is current on the *calling thread*, like the driver
  API's CUDA_ERROR_INVALID_CONTEXT; contexts are per-thread stacks (push/pop);
- device memory is real bytes behind fake addresses: copies out of range or into freed memory
  raise, so use-after-free of a workspace shows up as an error, not as silence;
- a GPU has a capacity: allocations beyond it raise MemoryError ("out of memory");
- GPU time is a fake clock advanced by copies (at `copy_bytes_per_ns`) and by kernels (the fake
  TensorRT engine calls `run_kernel`), so CUDA events give deterministic durations.

Usage: `cuda = FakeCudaDriver([FakeGpu("NVIDIA H200", (9, 0), 140 << 30)])`; pass it where the
runtime expects `pycuda.driver`. `FakeNvml` stands in for `pynvml`.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np


_GAP = 1 << 20


class Error(Exception):
    """pycuda.driver.Error"""


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class CudaRuntimeError(Error):  # pycuda.driver.RuntimeError
    pass


class CudaMemoryError(Error):  # pycuda.driver.MemoryError
    pass


@dataclass
class FakeGpu:
    name: str = "NVIDIA H200"
    compute_capability: tuple[int, int] = (9, 0)
    total_bytes: int = 8 << 30
    pci_bus_id: str = "0000:17:00.0"
    used_bytes: int = 0
    baseline_used_bytes: int = 64 << 20  # the driver's own use before anything is allocated

    def __post_init__(self) -> None:
        self.used_bytes = self.baseline_used_bytes


@dataclass
class _Allocation:
    ptr: int
    size: int
    gpu_index: int
    data: np.ndarray  # uint8 backing store
    freed: bool = False


class _HostAllocation:
    """pycuda.driver.HostAllocation: the `.base` of a pagelocked array, with free()."""

    def __init__(self, driver: "FakeCudaDriver", shape: tuple[int, ...], dtype: np.dtype):
        self._driver = driver
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self._backing = np.zeros(max(1, self.nbytes), dtype=np.uint8)
        self.freed = False
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3,
                                    "data": (self._backing.ctypes.data, False)}

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self._driver.pinned_bytes -= self.nbytes

    __del__ = free  # pycuda frees pinned memory when its last array goes, too


class FakeCudaDriver:
    """The `pycuda.driver` module, for a host with the given GPUs."""

    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: str | None = None,
                 pinned_limit_bytes: int | None = None, copy_bytes_per_ns: float = 20.0):
        self.gpus = list(gpus if gpus is not None else [FakeGpu()])
        self.init_error = init_error
        self.pinned_limit_bytes = pinned_limit_bytes
        self.copy_bytes_per_ns = copy_bytes_per_ns
        self.pinned_bytes = 0
        self.gpu_clock_ns = 0
        self.allocations: dict[int, _Allocation] = {}
        self.retained = [0] * len(self.gpus)
        self.push_log: list[tuple[str, int, str]] = []  # (thread name, gpu index, "push"|"pop")
        self._next_ptr = 0x7F00_0000_0000
        self._lock = threading.Lock()
        self._local = threading.local()
        self._handles = itertools.count(0x1000)
        self.initialized = False
        # Module-level names of pycuda.driver
        self.Error, self.LogicError, self.LaunchError = Error, LogicError, LaunchError
        self.RuntimeError, self.MemoryError = CudaRuntimeError, CudaMemoryError
        self.host_alloc_flags = SimpleNamespace(PORTABLE=1, DEVICEMAP=2, WRITECOMBINED=4)
        self.Device = type("Device", (_Device,), {"_driver": self})
        self.Context = type("Context", (_Context,), {"_driver": self})
        self.Stream = lambda flags=0: _Stream(self, flags)
        self.Event = lambda flags=0: _Event(self)

    # ---------------------------------------------------------------- pycuda.driver functions

    def init(self, flags: int = 0) -> None:
        if self.init_error:
            raise CudaRuntimeError(f"cuInit failed: {self.init_error}")
        self.initialized = True

    def mem_get_info(self) -> tuple[int, int]:
        gpu = self.gpus[self.current_index("cuMemGetInfo")]
        return gpu.total_bytes - gpu.used_bytes, gpu.total_bytes

    def mem_alloc(self, nbytes: int) -> "_DeviceAllocation":
        return _DeviceAllocation(self, self._allocate(self.current_index("cuMemAlloc"), int(nbytes)))

    def pagelocked_empty(self, shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        self.current_index("cuMemHostAlloc")
        dtype = np.dtype(dtype)
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self.pinned_limit_bytes is not None and self.pinned_bytes + nbytes > self.pinned_limit_bytes:
            raise CudaMemoryError("cuMemHostAlloc failed: out of memory")
        host = _HostAllocation(self, shape, dtype)
        self.pinned_bytes += nbytes
        return np.asarray(host)  # like pycuda: an ndarray whose .base is the HostAllocation

    def memcpy_htod_async(self, dest: Any, src: Any, stream: Any = None) -> None:
        self.current_index("cuMemcpyHtoDAsync")
        data = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        self.write(int(dest), data)
        self.gpu_clock_ns += int(data.nbytes / self.copy_bytes_per_ns) + 1

    def memcpy_dtoh_async(self, dest: np.ndarray, src: Any, stream: Any = None) -> None:
        self.current_index("cuMemcpyDtoHAsync")
        out = dest.reshape(-1).view(np.uint8)
        out[:] = self.read(int(src), out.nbytes)
        self.gpu_clock_ns += int(out.nbytes / self.copy_bytes_per_ns) + 1

    # ---------------------------------------------------------------- helpers for the fakes

    def current_index(self, what: str = "call") -> int:
        stack = getattr(self._local, "stack", None)
        if not stack:
            raise LogicError(f"{what} failed: invalid device context (no context is current on this thread)")
        return stack[-1]

    def has_context(self) -> bool:
        return bool(getattr(self._local, "stack", None))

    def _allocate(self, index: int, nbytes: int) -> _Allocation:
        gpu = self.gpus[index]
        with self._lock:
            if gpu.used_bytes + nbytes > gpu.total_bytes:
                raise CudaMemoryError("cuMemAlloc failed: out of memory")
            gpu.used_bytes += nbytes
            alloc = _Allocation(self._next_ptr, nbytes, index, np.zeros(nbytes, dtype=np.uint8))
            self._next_ptr += (nbytes + 2 * _GAP - 1) // _GAP * _GAP  # a gap after each: overruns fail
            self.allocations[alloc.ptr] = alloc
        return alloc

    def _free(self, alloc: _Allocation) -> None:
        with self._lock:
            if alloc.freed:
                return
            alloc.freed = True
            self.gpus[alloc.gpu_index].used_bytes -= alloc.size
            del self.allocations[alloc.ptr]

    def allocate_internal(self, nbytes: int) -> _Allocation:
        """What TensorRT allocates itself (engine weights) on the current device."""
        return self._allocate(self.current_index("cudaMalloc"), nbytes)

    def free_internal(self, alloc: _Allocation) -> None:
        self._free(alloc)

    def resolve(self, ptr: int, nbytes: int) -> tuple[_Allocation, int]:
        """The live allocation holding [ptr, ptr+nbytes) on the current device, and the offset."""
        index = self.current_index("device access")
        for alloc in self.allocations.values():
            if alloc.ptr <= ptr and ptr + nbytes <= alloc.ptr + alloc.size:
                if alloc.gpu_index != index:
                    raise LogicError(f"pointer {ptr:#x} belongs to GPU {alloc.gpu_index}, current is {index}")
                return alloc, ptr - alloc.ptr
        raise LogicError(f"illegal address: [{ptr:#x}, +{nbytes}) is not inside a live allocation")

    def read(self, ptr: int, nbytes: int) -> np.ndarray:
        alloc, offset = self.resolve(ptr, nbytes)
        return alloc.data[offset:offset + nbytes].copy()

    def write(self, ptr: int, data: np.ndarray) -> None:
        alloc, offset = self.resolve(ptr, data.nbytes)
        alloc.data[offset:offset + data.nbytes] = data

    def run_kernel(self, duration_ns: int) -> None:
        self.gpu_clock_ns += int(duration_ns)

    def live_device_bytes(self, index: int | None = None) -> int:
        return sum(a.size for a in self.allocations.values() if index is None or a.gpu_index == index)

    def next_handle(self) -> int:
        return next(self._handles)

    def _push(self, index: int) -> None:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(index)
        self.push_log.append((threading.current_thread().name, index, "push"))

    def _pop(self) -> int:
        stack = getattr(self._local, "stack", None)
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: no context is current on this thread")
        index = stack.pop()
        self.push_log.append((threading.current_thread().name, index, "pop"))
        return index


class _Device:
    _driver: FakeCudaDriver

    def __init__(self, index: int):
        if not self._driver.initialized:
            raise LogicError("cuInit has not been called")
        if not 0 <= index < len(self._driver.gpus):
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.index = index
        self._gpu = self._driver.gpus[index]

    @classmethod
    def count(cls) -> int:
        if not cls._driver.initialized:
            raise LogicError("cuInit has not been called")
        return len(cls._driver.gpus)

    def name(self) -> str:
        return self._gpu.name

    def compute_capability(self) -> tuple[int, int]:
        return self._gpu.compute_capability

    def total_memory(self) -> int:
        return self._gpu.total_bytes

    def pci_bus_id(self) -> str:
        return self._gpu.pci_bus_id

    def retain_primary_context(self) -> "_Context":
        self._driver.retained[self.index] += 1
        return self._driver.Context(self.index)


class _Context:
    _driver: FakeCudaDriver

    def __init__(self, index: int):
        self.index = index
        self.detached = False

    def push(self) -> None:
        if self.detached:
            raise LogicError("cuCtxPushCurrent failed: context was released")
        self._driver._push(self.index)

    @classmethod
    def pop(cls) -> None:
        """Pop this thread's current context (pycuda: Context.pop())."""
        cls._driver._pop()

    def detach(self) -> None:
        if not self.detached:
            self.detached = True
            self._driver.retained[self.index] -= 1


class _DeviceAllocation:
    def __init__(self, driver: FakeCudaDriver, alloc: _Allocation):
        self._driver = driver
        self._alloc = alloc

    def __int__(self) -> int:
        return self._alloc.ptr

    __index__ = __int__

    def free(self) -> None:
        self._driver._free(self._alloc)


class _Stream:
    def __init__(self, driver: FakeCudaDriver, flags: int = 0):
        driver.current_index("cuStreamCreate")
        self._driver = driver
        self.flags = flags  # what cuStreamGetFlags would say
        self.handle = driver.next_handle()

    def synchronize(self) -> None:
        self._driver.current_index("cuStreamSynchronize")


class _Event:
    def __init__(self, driver: FakeCudaDriver):
        driver.current_index("cuEventCreate")
        self._driver = driver
        self.stamp_ns: int | None = None

    def record(self, stream: Any = None) -> "_Event":
        self._driver.current_index("cuEventRecord")
        self.stamp_ns = self._driver.gpu_clock_ns
        return self

    def synchronize(self) -> "_Event":
        self._driver.current_index("cuEventSynchronize")
        return self

    def time_since(self, event: "_Event") -> float:
        """Milliseconds from `event` to this one (pycuda: end.time_since(start))."""
        if self.stamp_ns is None or event.stamp_ns is None:
            raise LogicError("cuEventElapsedTime failed: event not recorded")
        return (self.stamp_ns - event.stamp_ns) / 1e6


# ------------------------------------------------------------------------------ NVML


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """The `pynvml` module (nvidia-ml-py): SM clocks per GPU, by PCI bus id."""

    sm_clock_mhz: dict[str, int] = field(default_factory=dict)  # pci bus id -> MHz
    init_error: str | None = None
    NVML_CLOCK_SM: int = 1
    NVMLError: type = NVMLError
    initialized: bool = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: bytes | str) -> str:
        key = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        if not self.initialized or key not in self.sm_clock_mhz:
            raise NVMLError("Not Found")
        return key

    def nvmlDeviceGetClockInfo(self, handle: str, clock_type: int) -> int:
        if clock_type != self.NVML_CLOCK_SM:
            raise NVMLError("Invalid Argument")
        return self.sm_clock_mhz[handle]
