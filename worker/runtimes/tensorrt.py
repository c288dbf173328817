"""The `tensorrt` runtime: ONNX models run as TensorRT engines, one NVIDIA GPU per device.

Theory of operation
- PREPARE (prepare thread, seconds to minutes): for each GPU kind among this worker's devices,
  take the plan from the engine cache (engine_cache.py) or build it from the ONNX bytes with one
  optimization profile covering batch 1..max_batch, in a child process on the GPU that
  `build_on` names (engine_build.py; EXECs a build shares its GPU with are reported
  `disturbed`, as are those a plan's check overlaps); deserialize it once on a GPU of that kind to
  check it and to read its tensors and its execution-memory need; keep the plan in pinned host
  memory, so that a LOAD is a copy and never a compile.
- LOAD (LOAD lane): deserialize the pinned plan, grow the GPU's shared workspace if this engine
  needs more than any before it, create its one execution context with USER_MANAGED memory, and
  allocate its device input/output buffers (sized for max_batch) and pinned staging buffers.
- EXEC (on the EXEC lane): stage the inputs in pinned memory; on the lane's stream copy them in,
  `set_input_shape`, `set_tensor_address`, `execute_async_v3`, copy the outputs out; CUDA events
  time each step on the GPU; then sample the SM clock (NVML) for the controller.
- UNLOAD (LOAD lane): the context, then its buffers, then the engine.

Memory, and why the accounting is honest
- What a LOAD costs (`weights_bytes`, counted in pages by the worker) = the plan's size (its
  weights and kernels, which deserialization copies to the GPU) + the model's device I/O
  buffers at max_batch.
- Execution memory (activations, tactic scratch) is not per model: every context on a GPU
  shares one workspace, sized to the largest `device_memory_size_v2` among the engines loaded so
  far. That is safe because the EXEC lane runs one engine at a time; the workspace lock spans an
  EXEC from binding to the end of its stream, so the buffer is never used by two engines and
  never freed under one. It only grows (LOAD lane), up to a budget reserved out of the pages
  from the start, and a model whose engine needs more than the budget is refused at PREPARE.
- A device's `memory_bytes` = free GPU memory at start-up - the workspace budget - a safety
  reserve (CUDA and TensorRT's own allocations, fragmentation, prepare-time builds). A value set
  in `device_memory_bytes` is honoured up to that amount; 0 (the default) means "use the GPU's
  free memory". Knobs live in WorkerConfig.tensorrt (`[worker.tensorrt]`).

API discipline: only what TensorRT 10.1+ and 11.x share (setup.cfg pins >=10.1,<12; the calls
and their status are tabled in docs/gpu-hosts.md). No `create_execution_context_without_
device_memory`, `device_memory_size`, builder precision flags or `EXPLICIT_BATCH` (all removed in
11): contexts come from `create_execution_context(USER_MANAGED)` + `set_device_memory(ptr,
size)`, networks from `create_network(0)` (explicit batch is the only mode since 10).

`tensorrt`, `pycuda` and (optional) `pynvml` are imported when the runtime is constructed, never
at module import, so a CPU-only worker never loads them (trt_libs.py); tests inject stand-ins
through the `gpu` parameter (tests/fake_tensorrt.py, tests/fake_pycuda.py), whose recipe gives a
build's child process the same fakes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from clockwork.common.config import MIB, WorkerConfig
from clockwork.common.models import Signature
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import (DeviceInfo, PreparedModel, Profile, Runtime, RuntimeFailure, RuntimeUnavailable,
                                  sample_inputs, timed_runs)
from clockwork.worker.runtimes.cuda import CudaDevices, GpuInfo, LaneState, SmClocks, cuda_failure, looks_like_oom
from clockwork.worker.runtimes.engine_build import (BuildActivity, BuildRequest, build_in_child, plan_key_for,
                                                    workspace_budget_bytes)
from clockwork.worker.runtimes.engine_cache import PlanCache, PlanKey
from clockwork.worker.runtimes.trt_libs import GpuLibraries, check_trt_version, load_libraries, make_logger, trt_failure

# ------------------------------------------------------------------------------ shapes and engines


@dataclass(frozen=True)
class Binding:
    """One input or output tensor of an engine."""

    name: str
    engine_dtype: np.dtype  # what TensorRT reads or writes
    wire_dtype: np.dtype  # what the model's signature promises callers (may differ for integers)
    sample_shape: tuple[int, ...]  # without the batch (outputs: as seen at max batch)
    max_bytes: int  # bytes at max batch, in engine_dtype

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * self.engine_dtype.itemsize


@dataclass(frozen=True)
class EngineSpec:
    """What PREPARE learnt from deserializing a plan once."""

    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]
    max_batch: int
    device_memory_bytes: int  # the engine's device_memory_size_v2: its need from the workspace
    plan_bytes: int

    @property
    def io_bytes(self) -> int:
        return sum(b.max_bytes for b in self.inputs + self.outputs)

    @property
    def weights_bytes(self) -> int:
        """What one LOAD takes on the device: the deserialized plan and the I/O buffers."""
        return self.plan_bytes + self.io_bytes


def _bad(detail: str) -> RuntimeFailure:
    return RuntimeFailure(Status.BAD_MODEL, detail)


def _np_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (TypeError, KeyError):
        raise _bad(f"tensor {name!r} has TensorRT type {trt_dtype}, which has no numpy equivalent") from None


def _check_dtypes(name: str, engine: np.dtype, wire: np.dtype) -> None:
    """Integer tensors may change width (TensorRT may run int64 as int32); nothing else may."""
    if engine == wire or (np.issubdtype(engine, np.integer) and np.issubdtype(wire, np.integer)):
        return
    raise _bad(f"TensorRT runs tensor {name!r} as {engine.name} but the model declares {wire.name}")


def inspect_engine(trt: Any, engine: Any, signature: Signature, plan_bytes: int) -> EngineSpec:
    """Check a deserialized engine against the model's signature and describe it."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    sig_in = {s.name: s for s in signature.inputs}
    sig_out = {s.name: s for s in signature.outputs}
    batch = signature.max_batch
    inputs = []
    for name in input_names:
        spec = sig_in.get(name)
        if spec is None:
            raise _bad(f"the engine has an input {name!r} that the model's signature does not list")
        max_dims = tuple(engine.get_tensor_profile_shape(name, 0)[2])
        if not max_dims or max_dims[0] < batch:
            raise _bad(f"the engine's profile for {name!r} stops at {max_dims}, below batch {batch}")
        engine_dtype = _np_dtype(trt, engine.get_tensor_dtype(name), name)
        _check_dtypes(name, engine_dtype, np.dtype(spec.dtype))
        inputs.append(Binding(name, engine_dtype, np.dtype(spec.dtype), tuple(spec.shape),
                              math.prod((batch, *spec.shape)) * engine_dtype.itemsize))
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if context is None:
        raise RuntimeFailure(Status.RUNTIME_ERROR, "TensorRT cannot create an execution context for the engine")
    try:
        for b in inputs:
            if not context.set_input_shape(b.name, (batch, *b.sample_shape)):
                raise _bad(f"the engine refuses input {b.name!r} at shape {[batch, *b.sample_shape]}")
        outputs = [_output_binding(trt, engine, context, name, sig_out.get(name), batch) for name in output_names]
    finally:
        del context  # destroyed here, before the engine, as TensorRT requires
    return EngineSpec(tuple(inputs), tuple(outputs), batch, int(engine.device_memory_size_v2), plan_bytes)


def _output_binding(trt: Any, engine: Any, context: Any, name: str, spec: Any, batch: int) -> Binding:
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise _bad(f"output {name!r} has a data-dependent shape {list(shape)}, which this runtime does not serve")
    if not shape or shape[0] != batch:
        raise _bad(f"output {name!r} has shape {list(shape)} at batch {batch}; outputs must be batch-first")
    engine_dtype = _np_dtype(trt, engine.get_tensor_dtype(name), name)
    wire = np.dtype(spec.dtype) if spec is not None else engine_dtype
    _check_dtypes(name, engine_dtype, wire)
    return Binding(name, engine_dtype, wire, shape[1:], math.prod(shape) * engine_dtype.itemsize)


@dataclass(eq=False)
class HostPlan:
    """A plan held in host memory (pinned unless pinning failed) with what PREPARE learnt of it."""

    buffer: Any  # np.uint8 array (pinned) or bytes
    pinned: bool
    spec: EngineSpec
    source: str  # "cache" | "built"


@dataclass(eq=False)
class TrtModel:
    """PreparedModel.host of this runtime: one plan per GPU kind of this worker."""

    plans: dict[str, HostPlan]


@dataclass(frozen=True)
class ExecTiming:
    """GPU time of the parts of one EXEC, from CUDA events on the lane's stream."""

    copy_in_ns: int
    exec_ns: int
    copy_out_ns: int

    @property
    def total_ns(self) -> int:
        return self.copy_in_ns + self.exec_ns + self.copy_out_ns


# ------------------------------------------------------------------------------ device state


@dataclass(eq=False)
class LoadedEngine:
    """The handle LOAD returns: an engine, its context and its buffers on one device."""

    device_id: int
    model_id: str
    spec: EngineSpec
    engine: Any = None
    context: Any = None
    device_buffers: dict[str, Any] = field(default_factory=dict)  # name -> DeviceAllocation
    host_buffers: dict[str, np.ndarray] = field(default_factory=dict)  # name -> pinned uint8
    bound_generation: int = -1  # the workspace generation its context points at
    released: bool = False
    # Held by an EXEC of this engine and by its release: an UNLOAD (a caller's bug) never frees
    # buffers in use, yet unloading one model never waits for an EXEC of another.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def host_view(self, binding: Binding, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = binding.nbytes(shape)
        return self.host_buffers[binding.name][:nbytes].view(binding.engine_dtype).reshape(shape)


class Workspace:
    """One execution-memory buffer per GPU, shared by every execution context on it.

    `lock` is held by the EXEC lane from binding a context to the end of its EXEC's stream, and
    by the LOAD lane while it swaps in a bigger buffer: the buffer is never in use by two engines,
    nor freed under one. (So a LOAD that grows the workspace waits for the EXEC in flight; growth
    happens only when a bigger engine than any before arrives.)
    """

    def __init__(self, devices: CudaDevices, device_id: int, budget_bytes: int):
        self.lock = threading.Lock()
        self.device_id = device_id
        self.budget_bytes = budget_bytes
        self.size_bytes = 0
        self.generation = 0  # bumped each time the buffer changes
        self._devices = devices
        self._buffer: Any = None

    def ensure(self, nbytes: int) -> None:
        """Grow to at least nbytes (a lane thread of this device). The new buffer is allocated
        before taking the lock, so an EXEC in flight is delayed only by the swap."""
        nbytes = int(nbytes)
        if nbytes <= self.size_bytes:
            return
        if nbytes > self.budget_bytes:
            raise RuntimeFailure(Status.INSUFFICIENT_MEMORY, f"the engine needs {nbytes} bytes of execution "
                                 f"memory; the workspace of device {self.device_id} is limited to {self.budget_bytes}")
        new = self._devices.alloc(nbytes, "the shared TensorRT workspace")
        with self.lock:
            if nbytes <= self.size_bytes:  # the other lane grew it meanwhile
                old = new
            else:
                old, self._buffer = self._buffer, new
                self.size_bytes = nbytes
                self.generation += 1
            if old is not None:
                old.free()

    def bind(self, loaded: LoadedEngine) -> None:
        """Point the context at the current buffer if it is not already (caller holds `lock`)."""
        if loaded.bound_generation == self.generation:
            return
        if self._buffer is not None:
            loaded.context.set_device_memory(int(self._buffer), self.size_bytes)
        loaded.bound_generation = self.generation

    def close(self) -> None:
        with self.lock:
            buffer, self._buffer = self._buffer, None
            self.size_bytes = 0
            self.generation += 1
            if buffer is not None:
                buffer.free()


# ------------------------------------------------------------------------------ the runtime


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    formats = ("onnx",)

    def __init__(self, config: WorkerConfig, gpu: GpuLibraries | None = None,
                 log: Any = None):
        self._config = config
        self._settings = config.tensorrt
        self._log = log or structlog.get_logger().bind(runtime="tensorrt")
        if gpu is None:  # the configured provider's (the real ones by default); tests hand in fakes
            if self._settings.eager_module_loading:
                os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # read once, at CUDA's initialisation
            gpu = load_libraries((self._settings.libraries, {}))
        libs = gpu
        self._libraries = libs
        self._trt = libs.trt
        self.trt_version = check_trt_version(libs.trt)
        self._cuda = CudaDevices(libs.cuda, config.devices)
        self._lock = threading.Lock()  # guards _loaded
        self._loaded: list[set[LoadedEngine]] = [set() for _ in self._cuda.infos]
        self._plans: weakref.WeakSet[HostPlan] = weakref.WeakSet()
        self._timings: list[ExecTiming | None] = [None] * len(self._cuda.infos)
        self._closed = False
        try:
            self._logger = make_logger(libs.trt, self._log)
            self._cache = PlanCache(config.engine_cache_dir, self._log)
            self._open_devices()
            self._check_build_gpu()
            self._builds = BuildActivity(len(self._cuda.infos))
            self._clocks = SmClocks(libs.nvml, self._cuda.infos, self._log)
        except libs.cuda.Error as exc:  # e.g. a GPU held by another process in exclusive mode
            self._cuda.close()
            raise RuntimeUnavailable(f"the tensorrt runtime cannot use the GPUs: {exc} (is another "
                                     "process using them? see docs/gpu-hosts.md)") from None
        except BaseException:
            self._cuda.close()
            raise
        self._log.info("tensorrt runtime ready", trt_version=self.trt_version,
                       devices=[dataclasses.asdict(d) for d in self._devices],
                       workspace_bytes=[w.budget_bytes for w in self._workspaces])

    def _open_devices(self) -> None:
        self._runtimes: list[Any] = []  # one trt.Runtime per GPU, used under its lock
        self._deserialize_locks = [threading.Lock() for _ in self._cuda.infos]
        self._workspaces: list[Workspace] = []
        self._devices: list[DeviceInfo] = []
        for info in self._cuda.infos:
            with self._cuda.scoped(info.device_id):
                # Creating the runtime initialises CUDA's runtime API on this context (and, with
                # eager loading, TensorRT's kernels), so the free memory read next excludes them.
                self._runtimes.append(self._trt.Runtime(self._logger))
                free, total = self._cuda.mem_info()
            budget = workspace_budget_bytes(self._settings, info.total_bytes)  # as plan_key_for
            self._workspaces.append(Workspace(self._cuda, info.device_id, budget))
            self._devices.append(DeviceInfo(info.device_id, info.name, self._memory_bytes(info, free, total, budget)))

    def _check_build_gpu(self) -> None:
        """build_on = "gpu:N" must name a GPU of the one kind served here: a plan runs only on
        the kind that built it."""
        number = self._settings.build_gpu
        if number is None:
            return
        cuda = self._cuda.cuda
        try:
            device = cuda.Device(number)
            kind = GpuInfo(number, str(device.name()), tuple(device.compute_capability()), "", 0).kind_key
        except cuda.Error as exc:
            raise RuntimeUnavailable(f'[worker.tensorrt] build_on = "gpu:{number}": no such GPU here ({exc})') from None
        served = sorted({info.kind_key for info in self._cuda.infos})
        if served != [kind]:
            raise RuntimeUnavailable(f'[worker.tensorrt] build_on = "gpu:{number}" is a {kind}, but this worker serves '
                                     f"{', '.join(served)}: a plan runs only on the GPU kind that built it. Build on "
                                     'a GPU of that kind, on "serving", or "ahead" (docs/gpu-hosts.md)')

    def _memory_bytes(self, info: GpuInfo, free: int, total: int, workspace: int) -> int:
        reserve = max(self._settings.reserve_min_bytes, int(total * self._settings.reserve_fraction))
        available = max(0, free - workspace - reserve)
        configured = self._config.device_memory_bytes
        if configured == 0:
            return available
        if configured > available:
            self._log.warning("device_memory_bytes is more than the GPU has free; using what it has",
                              device_id=info.device_id, configured=configured, available=available)
            return available
        return configured

    # ------------------------------------------------------------------ Runtime interface

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def lane_started(self, device_id: int, lane: str) -> None:
        self._cuda.enter_lane(device_id, lane)

    def lane_stopped(self, device_id: int, lane: str) -> None:
        self._cuda.leave_lane()

    def last_sm_clock_mhz(self, device_id: int) -> int | None:
        """The SM clock sampled after the device's last EXEC (None: not known)."""
        return self._clocks.last_mhz[device_id]

    def last_timing(self, device_id: int) -> ExecTiming | None:
        """The GPU-timed parts of the device's last EXEC."""
        return self._timings[device_id]

    def workspace_bytes(self, device_id: int) -> int:
        """The size of the device's shared workspace now (the largest engine loaded so far)."""
        return self._workspaces[device_id].size_bytes

    def disturbed(self, device_id: int, begin_ns: int, end_ns: int) -> bool:
        """Whether an engine build, or a plan's check, used the GPU while [begin_ns, end_ns] ran."""
        return self._builds.overlapped(device_id, begin_ns, end_ns)

    def prepare(self, model_id: str, digest: str, fmt: str, blob: bytes, signature: Signature) -> PreparedModel:
        if fmt not in self.formats:
            raise _bad(f"the tensorrt runtime serves ONNX models, not {fmt!r}")
        blob = bytes(blob)
        plans = {kind: self._prepare_on(device_id, digest, blob, signature)
                 for kind, device_id in self._first_device_of_each_kind().items()}
        weights = max(p.spec.weights_bytes for p in plans.values())
        extra = {"engine": {kind: {"source": p.source, "plan_bytes": p.spec.plan_bytes, "pinned": p.pinned,
                                   "workspace_bytes": p.spec.device_memory_bytes} for kind, p in plans.items()}}
        return PreparedModel(model_id, digest, signature, weights, TrtModel(plans), extra)

    def load(self, device_id: int, model: PreparedModel) -> LoadedEngine:
        self._cuda.lane(device_id)
        host = self._host_plan(device_id, model)
        loaded = LoadedEngine(device_id, model.model_id, host.spec)
        try:
            self._materialize(loaded, host)
        except BaseException as exc:
            self._release(loaded)
            if isinstance(exc, self._cuda.cuda.Error):
                raise cuda_failure(self._cuda.cuda, exc, f"LOAD of {model.model_id!r}") from None
            raise
        with self._lock:
            self._loaded[device_id].add(loaded)
        return loaded

    def unload(self, device_id: int, handle: Any) -> None:
        self._cuda.lane(device_id)
        loaded = self._loaded_handle(device_id, handle)
        with self._lock:
            self._loaded[device_id].discard(loaded)
        self._release(loaded)

    def execute(self, device_id: int, handle: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        lane = self._cuda.lane(device_id)
        loaded = self._loaded_handle(device_id, handle)
        workspace = self._workspaces[device_id]
        try:
            with loaded.lock:
                if loaded.released:
                    raise RuntimeFailure(Status.NOT_LOADED, f"{loaded.model_id!r} was unloaded")
                batch = self._stage_inputs(loaded, inputs)
                with workspace.lock:
                    workspace.bind(loaded)
                    shapes = self._enqueue(loaded, lane, batch)
                    lane.events[3].synchronize()
                outputs = {b.name: loaded.host_view(b, shapes[b.name]).astype(b.wire_dtype, copy=True)
                           for b in loaded.spec.outputs}
        except self._cuda.cuda.Error as exc:
            raise cuda_failure(self._cuda.cuda, exc, f"EXEC of {loaded.model_id!r}") from None
        timing = self._timing(lane)
        self._timings[device_id] = timing
        self._clocks.sample(device_id)
        return outputs, timing.total_ns

    def profile(self, device_id: int, model: PreparedModel, batch_sizes: list[int], runs: int) -> Profile:
        """LOAD once (timed), then per batch size the warm-up and `runs` timed EXECs of zeros (base.timed_runs)."""
        self._cuda.lane(device_id)
        started = time.perf_counter_ns()
        handle = self.load(device_id, model)
        load_ns = time.perf_counter_ns() - started
        try:
            exec_ns = {}
            for batch in sorted({b for b in batch_sizes if 1 <= b <= model.signature.max_batch}):
                samples = timed_runs(lambda x: self.execute(device_id, handle, x), sample_inputs(model.signature, batch),
                                     runs)
                exec_ns[batch] = int(np.percentile(samples, self._settings.profile_percentile, method="higher"))
        finally:
            self.unload(device_id, handle)
        return Profile(load_ns, exec_ns)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for info in self._cuda.infos:
            with self._cuda.scoped(info.device_id):
                with self._lock:
                    loaded, self._loaded[info.device_id] = list(self._loaded[info.device_id]), set()
                for engine in loaded:
                    self._release(engine)
                self._workspaces[info.device_id].close()
                if info.device_id == 0:
                    for host in list(self._plans):  # portable: any context may free them
                        self._unpin(host)
                self._runtimes[info.device_id] = None
        self._clocks.close()
        self._cuda.close()

    # ------------------------------------------------------------------ PREPARE

    def _first_device_of_each_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for info in self._cuda.infos:
            kinds.setdefault(info.kind_key, info.device_id)
        return kinds

    def plan_key(self, device_id: int, digest: str, signature: Signature) -> PlanKey:
        return plan_key_for(digest, self.trt_version, self._cuda.infos[device_id], signature, self._settings)

    def plan_path(self, device_id: int, digest: str, signature: Signature) -> str:
        return str(self._cache.path_for(self.plan_key(device_id, digest, signature)))

    def _prepare_on(self, device_id: int, digest: str, blob: bytes, signature: Signature) -> HostPlan:
        key = self.plan_key(device_id, digest, signature)
        source, plan = "cache", self._cache.get(key)
        spec = self._check(device_id, plan, signature) if plan is not None else None
        if plan is not None and spec is None:
            self._log.warning("cached engine does not deserialize; rebuilding", path=str(self._cache.path_for(key)))
            self._cache.discard(key)
        if spec is None:
            source, plan = "built", self._build(device_id, key, blob, signature)
            spec = self._check(device_id, plan, signature)
            if spec is None:
                raise RuntimeFailure(Status.RUNTIME_ERROR, "TensorRT built an engine it cannot deserialize")
            self._cache.put(key, plan)
        budget = self._workspaces[device_id].budget_bytes
        if spec.device_memory_bytes > budget:
            raise RuntimeFailure(Status.TOO_LARGE, f"the engine needs {spec.device_memory_bytes / MIB:.0f} MiB "
                                 f"of execution memory at batch {signature.max_batch}, over this worker's "
                                 f"{budget / MIB:.0f} MiB workspace; upload it with a smaller max batch")
        with self._cuda.scoped(device_id):
            return self._pin(plan, spec, source)

    def _build(self, device_id: int, key: PlanKey, blob: bytes, signature: Signature) -> bytes:
        """The plan for `key`, built in a child process where build_on says (engine_build.py)."""
        settings = self._settings
        if settings.build_on == "ahead":
            raise RuntimeFailure(Status.NOT_PREPARED, f"no engine for this model on {key.gpu_name} in the engine "
                                 f"cache ({self._cache.path_for(key)}), and [worker.tensorrt] build_on = \"ahead\" "
                                 "builds none in the worker: run `clockwork build-engine MODEL.onnx --gpu N` on this "
                                 "host with the upload's --input-shape and --max-batch and this worker's --config, "
                                 "then upload again")
        gpu = device_id if settings.build_gpu is None else settings.build_gpu
        request = BuildRequest(self._libraries.recipe(), gpu, key.digest, signature, settings)
        with self._builds.running(gpu):  # marks the EXECs of a served GPU that the build shares
            done, plan = build_in_child(request, blob, settings.build_timeout_s)
        for message in done.messages:
            self._log.info("tensorrt build message", message=message)
        if done.key != key:
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"GPU {gpu} built a plan for {done.key.gpu_name} sm"
                                 f"{''.join(map(str, done.key.compute_capability))}, TensorRT {done.key.trt_version}, "
                                 f"but device {device_id} needs one for {key.gpu_name} (check build_on)")
        self._log.info("engine built", seconds=round(done.seconds, 3), plan_bytes=len(plan), gpu=key.gpu_name,
                       build_gpu=gpu, max_batch=key.max_batch)
        return plan

    def _check(self, device_id: int, plan: bytes, signature: Signature) -> EngineSpec | None:
        """_inspect on the device, marked as other work for its EXEC lane (it copies the plan's
        weights onto the GPU)."""
        with self._cuda.scoped(device_id), self._builds.running(device_id):
            return self._inspect(device_id, plan, signature)

    def _inspect(self, device_id: int, plan: bytes, signature: Signature) -> EngineSpec | None:
        """Deserialize once to check the plan and describe it; None if it does not deserialize."""
        with self._logger.capture() as errors:
            with self._deserialize_locks[device_id]:
                engine = self._runtimes[device_id].deserialize_cuda_engine(plan)
        if engine is None:
            if any(looks_like_oom(e) for e in errors):
                raise trt_failure("no GPU memory to check the engine", errors)
            return None
        try:
            spec, problem = inspect_engine(self._trt, engine, signature, len(plan)), None
        except RuntimeFailure as exc:  # re-raised below without the frames that hold the engine
            spec, problem = None, RuntimeFailure(exc.status, exc.detail)
        del engine  # its device memory goes now, on this thread, with the context current
        if problem is not None:
            raise problem
        return spec

    def _pin(self, plan: bytes, spec: EngineSpec, source: str) -> HostPlan:
        try:
            buffer = self._cuda.pinned(len(plan), "a TensorRT plan")
            buffer[:] = np.frombuffer(plan, dtype=np.uint8)
            pinned = True
        except RuntimeFailure as exc:
            self._log.warning("plan kept in pageable memory; LOADs will be slower", error=exc.detail)
            buffer, pinned = plan, False
        host = HostPlan(buffer, pinned, spec, source)
        self._plans.add(host)
        return host

    def _unpin(self, host: HostPlan) -> None:
        if host.pinned:
            buffer, host.buffer, host.pinned = host.buffer, None, False
            self._cuda.free_pinned(buffer)

    # ------------------------------------------------------------------ LOAD / UNLOAD

    def _host_plan(self, device_id: int, model: PreparedModel) -> HostPlan:
        host = model.host
        if not isinstance(host, TrtModel):
            raise RuntimeFailure(Status.NOT_PREPARED, f"{model.model_id!r} was not prepared by the tensorrt runtime")
        kind = self._cuda.infos[device_id].kind_key
        plan = host.plans.get(kind)
        if plan is None or plan.buffer is None:
            raise RuntimeFailure(Status.NOT_PREPARED, f"{model.model_id!r} has no engine for {kind} "
                                 f"(prepared for {', '.join(sorted(host.plans))})")
        return plan

    def _materialize(self, loaded: LoadedEngine, host: HostPlan) -> None:
        device_id = loaded.device_id
        with self._logger.capture() as errors:
            with self._deserialize_locks[device_id]:
                loaded.engine = self._runtimes[device_id].deserialize_cuda_engine(host.buffer)
            if loaded.engine is None:
                raise trt_failure(f"cannot deserialize the engine of {loaded.model_id!r}", errors)
            self._workspaces[device_id].ensure(loaded.engine.device_memory_size_v2)
            loaded.context = loaded.engine.create_execution_context(
                self._trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if loaded.context is None:
                raise trt_failure(f"cannot create an execution context for {loaded.model_id!r}", errors)
        for binding in loaded.spec.inputs + loaded.spec.outputs:
            what = f"tensor {binding.name!r} of {loaded.model_id!r}"
            loaded.device_buffers[binding.name] = self._cuda.alloc(binding.max_bytes, what)
            loaded.host_buffers[binding.name] = self._cuda.pinned(binding.max_bytes, what)

    def _release(self, loaded: LoadedEngine) -> None:
        """Context, buffers, engine, in that order (a lane thread of the device, or close)."""
        with loaded.lock:  # an EXEC of it in flight ends first
            loaded.released = True
            context, loaded.context = loaded.context, None
            del context
        device_buffers, loaded.device_buffers = loaded.device_buffers, {}
        host_buffers, loaded.host_buffers = loaded.host_buffers, {}
        for buffer in device_buffers.values():
            buffer.free()
        for buffer in host_buffers.values():
            self._cuda.free_pinned(buffer)
        engine, loaded.engine = loaded.engine, None
        del engine

    def _loaded_handle(self, device_id: int, handle: Any) -> LoadedEngine:
        if not isinstance(handle, LoadedEngine) or handle.device_id != device_id:
            raise RuntimeFailure(Status.NOT_LOADED, f"not a model loaded on device {device_id}")
        if handle.released:
            raise RuntimeFailure(Status.NOT_LOADED, f"{handle.model_id!r} was unloaded from device {device_id}")
        return handle

    # ------------------------------------------------------------------ EXEC

    def _stage_inputs(self, loaded: LoadedEngine, inputs: dict[str, np.ndarray]) -> int:
        """Check the batch against the engine and copy it into the pinned staging buffers."""
        arrays, batch = [], None
        for b in loaded.spec.inputs:
            if b.name not in inputs:
                raise RuntimeFailure(Status.BAD_INPUT, f"missing input {b.name!r}")
            arr = np.asarray(inputs[b.name])
            if arr.dtype != b.wire_dtype or arr.ndim != len(b.sample_shape) + 1 or arr.shape[1:] != b.sample_shape:
                raise RuntimeFailure(Status.BAD_INPUT, f"input {b.name!r}: {arr.dtype.name}{list(arr.shape)}, "
                                     f"expected {b.wire_dtype.name}[batch, {', '.join(map(str, b.sample_shape))}]")
            if batch is not None and arr.shape[0] != batch:
                raise RuntimeFailure(Status.BAD_INPUT, "inputs disagree on the batch dimension")
            batch = arr.shape[0]
            arrays.append((b, arr))
        if batch is None or not 1 <= batch <= loaded.spec.max_batch:
            raise RuntimeFailure(Status.BAD_INPUT, f"batch of {batch} outside the engine's 1..{loaded.spec.max_batch}")
        for b, arr in arrays:
            np.copyto(loaded.host_view(b, arr.shape), arr, casting="unsafe")  # only integer widths differ
        return batch

    def _enqueue(self, loaded: LoadedEngine, lane: LaneState, batch: int) -> dict[str, tuple[int, ...]]:
        """Queue copy-in, execution and copy-out on the lane's stream, between its events."""
        cuda, context, stream = self._cuda.cuda, loaded.context, lane.stream
        start, copied_in, executed, copied_out = lane.events
        try:
            for b in loaded.spec.inputs:
                if not context.set_input_shape(b.name, (batch, *b.sample_shape)):
                    raise RuntimeFailure(Status.BAD_INPUT, f"the engine refuses input {b.name!r} at batch {batch}")
                context.set_tensor_address(b.name, int(loaded.device_buffers[b.name]))
            shapes = {b.name: (batch, *b.sample_shape) for b in loaded.spec.inputs}
            for b in loaded.spec.outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(b.name))
                if any(d < 0 for d in shape) or b.nbytes(shape) > b.max_bytes:
                    raise RuntimeFailure(Status.RUNTIME_ERROR, f"output {b.name!r} has shape {list(shape)} at "
                                         f"batch {batch}, beyond its buffer")
                context.set_tensor_address(b.name, int(loaded.device_buffers[b.name]))
                shapes[b.name] = shape
            start.record(stream)
            for b in loaded.spec.inputs:
                cuda.memcpy_htod_async(loaded.device_buffers[b.name], loaded.host_view(b, shapes[b.name]), stream)
            copied_in.record(stream)
            with self._logger.capture() as errors:
                if not context.execute_async_v3(stream.handle):
                    raise trt_failure(f"execute_async_v3 of {loaded.model_id!r} failed", errors)
            executed.record(stream)
            for b in loaded.spec.outputs:
                cuda.memcpy_dtoh_async(loaded.host_view(b, shapes[b.name]), loaded.device_buffers[b.name], stream)
            copied_out.record(stream)
        except BaseException:
            with contextlib.suppress(Exception):
                stream.synchronize()  # nothing of this EXEC may still run once the lock is released
            raise
        return shapes

    @staticmethod
    def _timing(lane: LaneState) -> ExecTiming:
        start, copied_in, executed, copied_out = lane.events

        def ns(later: Any, earlier: Any) -> int:
            return max(0, int(round(later.time_since(earlier) * 1e6)))

        return ExecTiming(ns(copied_in, start), ns(executed, copied_in), ns(copied_out, executed))
