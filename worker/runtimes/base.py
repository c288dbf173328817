"""The one interface every runtime implements.

Threading contract (this is what keeps a device predictable):
- `prepare` runs on the worker's prepare thread, never on a lane; it may take seconds
  (validation, engine builds) and must leave everything a LOAD needs in host memory.
- `load` and `unload` run only on the device's LOAD lane thread; `execute` and `profile` only
  on its EXEC lane thread. Each lane is one thread, so a runtime never sees two executions on
  one device at once.
- `lane_started` / `lane_stopped` run on each lane thread when it starts and ends (TensorRT
  uses them to push and pop the device's CUDA context on that thread only).
Errors a runtime raises as `RuntimeFailure(status, detail)` are reported with that status;
anything else is reported as RUNTIME_ERROR and the lane carries on.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from clockwork.common.models import Signature
from clockwork.common.status import Status


class RuntimeUnavailable(Exception):
    """The runtime cannot run on this host (missing library, no device); the worker exits."""


class RuntimeFailure(Exception):
    def __init__(self, status: Status, detail: str):
        super().__init__(f"{status.name}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class DeviceInfo:
    device_id: int
    kind: str  # devices of one kind share latency measurements at the controller
    memory_bytes: int  # memory for model weights, accounted in pages by the worker


@dataclass
class PreparedModel:
    """A model held in host memory, ready to LOAD onto any device of this worker."""

    model_id: str
    digest: str  # sha256 of the uploaded bytes (+ shapes): identical uploads share one entry
    signature: Signature
    weights_bytes: int  # device memory one LOAD takes
    host: Any  # runtime-specific: ONNX bytes, a serialized TensorRT plan, a latency profile
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    load_ns: int
    exec_ns: dict[int, int]  # batch size -> measured exec time (a high percentile of runs)
    # What one LOAD was measured to hold on the device, where the runtime can measure it (torch:
    # the caching allocator's segments); it replaces PREPARE's estimate in weights_bytes.
    weights_bytes: int | None = None


def percentile_ns(samples: list[int], pct: float) -> int:
    ordered = sorted(samples)
    return int(ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))])


def sample_inputs(signature: Signature, batch_size: int) -> dict[str, np.ndarray]:
    """Inputs of the right shapes and dtypes for profiling (zeros: only timing matters)."""
    return {s.name: np.zeros((batch_size, *s.shape), dtype=s.dtype) for s in signature.inputs}


# Warm-up calls before each batch size's timed runs: up to WARMUP_RUNS, within WARMUP_NS (at
# least one). A session's first few dozen runs are slower than the rest, whatever their batch
# size: with one warm-up call, the size timed first came out slowest (a tiny MLP on onnxruntime,
# p90 of 10 runs, three fresh processes: batch 1 16.9-31.1 us against batch 2 11.9-12.6; timed in
# reverse order, batch 16 40-49 us against 34), and the controller priced it so. Twenty calls
# first: batch 1 11.9-12.6 us (uploaded to a fresh onnxruntime worker, as `clockwork show` lists
# it: 16.4-16.6 -> 11.8-12.1 us). A model whose run takes longer than the budget gets one.
WARMUP_RUNS = 20
WARMUP_NS = 50_000_000


def timed_runs(execute: Callable[[dict[str, np.ndarray]], Any], inputs: dict[str, np.ndarray], runs: int,
               clock: Callable[[], int] = time.perf_counter_ns) -> list[int]:
    """What profile() measures per batch size: the warm-up calls above, then `runs` timed calls
    of `execute(inputs)`, in ns."""
    started = clock()
    for _ in range(WARMUP_RUNS):
        execute(inputs)
        if clock() - started >= WARMUP_NS:
            break
    times = []
    for _ in range(max(1, runs)):
        t0 = clock()
        execute(inputs)
        times.append(clock() - t0)
    return times


class Runtime(abc.ABC):
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]  # model formats it can serve ("onnx", "profile")
    # prepare() may get a large model as the Path of the file it was spooled to (which lives as
    # long as the prepared model) instead of its bytes, and then keeps no copy in memory.
    reads_files: ClassVar[bool] = False

    @abc.abstractmethod
    def devices(self) -> list[DeviceInfo]: ...

    @abc.abstractmethod
    def prepare(self, model_id: str, digest: str, fmt: str, blob: bytes, signature: Signature) -> PreparedModel: ...

    @abc.abstractmethod
    def profile(self, device_id: int, model: PreparedModel, batch_sizes: list[int], runs: int) -> Profile:
        """Measure LOAD and EXEC times on the device (called on its EXEC lane)."""

    @abc.abstractmethod
    def load(self, device_id: int, model: PreparedModel) -> Any:
        """Make the model executable on the device; returns a handle for execute/unload."""

    @abc.abstractmethod
    def unload(self, device_id: int, handle: Any) -> None: ...

    @abc.abstractmethod
    def execute(self, device_id: int, handle: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        """Run one batch (inputs already padded to a profiled batch size). Returns the outputs
        and, where the device can time itself (CUDA events), the device-measured ns."""

    def last_sm_clock_mhz(self, device_id: int) -> int | None:
        """The SM clock read after the last EXEC on this device (GPUs that report it), so the
        controller can tell a throttled GPU's slow run from a model's real cost."""
        return None

    def disturbed(self, device_id: int, begin_ns: int, end_ns: int) -> bool:
        """Whether other work (a TensorRT engine build) used the device while an EXEC ran from
        begin_ns to end_ns (monotonic): its timing is then not the model's alone, and the
        controller leaves it out of its latency model."""
        return False

    def reserved_cores(self) -> set[int]:
        """CPU cores the runtime's EXEC lanes keep to themselves (it pins them in `lane_started`);
        the worker says so in its HELLO."""
        return set()

    def lane_cores_on_host(self) -> set[int]:
        """The cores that EXEC lanes on this host hold, this worker's and other workers' (as
        claimed, common/affinity.CoreClaims): the worker keeps its other threads off them."""
        return self.reserved_cores()

    def pinned_threads(self) -> set[int]:
        """Native ids of the lane threads pinned to cores of their own (left alone when the
        worker moves its other threads)."""
        return set()

    def lane_started(self, device_id: int, lane: str) -> None:
        """Called on a lane's thread before its first action."""

    def lane_stopped(self, device_id: int, lane: str) -> None:
        """Called on a lane's thread after its last action."""

    def close(self) -> None:
        """Release everything (the worker is shutting down)."""
