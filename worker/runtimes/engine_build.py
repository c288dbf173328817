"""TensorRT engine builds, away from the serving lanes: in a child process, on a GPU the operator
chooses, or ahead of time.

Why a child process: a build times candidate kernels on a GPU for seconds to minutes, and
parsing and tactic selection hold the GIL of whatever process runs them. In the worker's own
process the build would slow its lanes and its socket loop; in a child (multiprocessing, spawn:
never fork a process that holds CUDA contexts) it shares nothing with them but, at most, the GPU.
The child writes the plan to a file and answers with its key (or a status and a reason); the
worker then checks the plan and caches it. A child that dies (a crash in TensorRT or the driver,
the OOM killer) or outruns `build_timeout_s` fails the PREPARE with RUNTIME_ERROR and what
happened; the worker keeps serving.

Where (`[worker.tensorrt] build_on`):
- "serving": on the first served GPU of the model's kind. Its EXEC lane keeps serving meanwhile,
  and the EXECs that overlap a build are reported `disturbed` (BuildActivity), so that the
  controller's latency model leaves their timings out.
- "gpu:N": on CUDA GPU N, of the kind this worker serves (a plan runs only on the GPU kind that
  built it). If N is also served here, its EXECs are marked as above.
- "ahead": never in the worker. `clockwork build-engine MODEL.onnx --gpu N` builds into the
  engine cache beforehand (build_ahead); a PREPARE whose plan is missing fails NOT_PREPARED.

Both the worker and build_ahead name a plan with `plan_key_for`, from the GPU's name, compute
capability and memory and the same settings, so a plan built ahead is the one a worker looks for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

from clockwork.common.clock import monotonic_ns
from clockwork.common.config import TensorRTConfig, WorkerConfig
from clockwork.common.models import Signature, signature_of
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import RuntimeFailure, RuntimeUnavailable
from clockwork.worker.runtimes.cuda import GpuInfo
from clockwork.worker.runtimes.engine_cache import PlanCache, PlanKey
from clockwork.worker.runtimes.trt_libs import Recipe, check_trt_version, load_libraries, make_logger, trt_failure
from clockwork.worker.store import digest_of

KEEP_MESSAGES = 20  # TensorRT messages a child hands back for the worker's log


# ------------------------------------------------------------------------------ what a plan is for


def profile_shapes(sample_shape: tuple[int, ...], max_batch: int, opt_batch: int = 0
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) dims of one input for the optimization profile: batch 1..max_batch."""
    opt = min(opt_batch, max_batch) if opt_batch > 0 else max_batch
    rest = tuple(int(d) for d in sample_shape)
    return (1, *rest), (opt, *rest), (max_batch, *rest)


def workspace_budget_bytes(settings: TensorRTConfig, total_bytes: int) -> int:
    """The shared execution memory of a GPU with `total_bytes` (see TensorRTConfig)."""
    return min(settings.workspace_bytes, int(total_bytes * settings.workspace_max_fraction))


def plan_key_for(digest: str, trt_version: str, gpu: GpuInfo, signature: Signature,
                 settings: TensorRTConfig) -> PlanKey:
    """The cache key of the plan a GPU of this kind needs for the model."""
    opt = profile_shapes((), signature.max_batch, settings.opt_batch)[1][0]
    builder_workspace = int(workspace_budget_bytes(settings, gpu.total_bytes) * settings.builder_workspace_fraction)
    return PlanKey(digest, trt_version, gpu.name, tuple(gpu.compute_capability), signature.max_batch, opt,
                   builder_workspace)


# ------------------------------------------------------------------------------ building (the child)


def build_plan(trt: Any, logger: Any, blob: bytes, signature: Signature, key: PlanKey) -> bytes:
    """ONNX -> serialized plan on the current device; RuntimeFailure says why not."""
    with logger.capture() as errors:
        plan, problem = _try_build(trt, logger, blob, signature, key)
    # Raised only here, once the builder, network and parser are gone: a traceback that held
    # them would destroy them later, with no CUDA context current.
    if problem:
        raise RuntimeFailure(Status.BAD_MODEL, problem)
    if plan is None:
        raise trt_failure("TensorRT could not build an engine", errors, default=Status.BAD_MODEL)
    return plan


def _try_build(trt: Any, logger: Any, blob: bytes, signature: Signature, key: PlanKey) -> tuple[bytes | None, str]:
    """(plan, "") or (None, why); every TensorRT object it makes dies when it returns."""
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch: the only mode since TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(blob):
            reasons = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            return None, "TensorRT cannot parse the ONNX model: " + "; ".join(reasons[:3] or ["no reason given"])
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.builder_workspace_bytes)
        profile, problem = _optimization_profile(builder, network, signature, key.opt_batch)
        if problem:
            return None, problem
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
    except (RuntimeError, TypeError, ValueError) as exc:  # pybind11's way of saying "invalid"
        return None, f"TensorRT refused the model: {exc}"
    return (None if serialized is None else bytes(memoryview(serialized))), ""


def _optimization_profile(builder: Any, network: Any, signature: Signature, opt_batch: int) -> tuple[Any, str]:
    profile = builder.create_optimization_profile()
    specs = {s.name: s for s in signature.inputs}
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        spec = specs.get(name)
        if spec is None:
            return None, f"TensorRT sees an input {name!r} that the model's signature does not list"
        profile.set_shape(name, *profile_shapes(spec.shape, signature.max_batch, opt_batch))
    return profile, ""


@dataclass(frozen=True)
class BuildRequest:
    """What a child needs to build one plan (pickled to it)."""

    recipe: Recipe  # how the child gets TensorRT and PyCUDA (trt_libs.GpuLibraries.recipe)
    gpu: int  # the CUDA ordinal to build on (as this process sees them)
    digest: str  # the model's digest (worker/store.digest_of)
    signature: Signature
    settings: TensorRTConfig
    onnx_path: str = ""
    plan_path: str = ""


@dataclass(frozen=True)
class BuildDone:
    key: PlanKey  # what the plan is for: the build GPU's kind, TensorRT version, profile
    seconds: float
    messages: tuple[str, ...]  # TensorRT's warnings and errors, for the parent's log


@dataclass(frozen=True)
class BuildFailed:
    status: int  # a Status; its detail carries the errors TensorRT logged
    detail: str


class _Messages:
    """The child's log: the last few TensorRT messages, handed back with its answer."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=KEEP_MESSAGES)

    def _keep(self, event: str, message: str = "", **_: Any) -> None:
        self.lines.append(f"{event}: {message}")

    info = warning = _keep


def _child_main(request: BuildRequest, conn: Any) -> None:
    """The child process: build, write the plan, send one BuildDone or BuildFailed."""
    log = _Messages()
    try:
        outcome: BuildDone | BuildFailed = _build_here(request, log)
    except RuntimeFailure as exc:
        outcome = BuildFailed(int(exc.status), exc.detail)
    except RuntimeUnavailable as exc:  # no TensorRT here (`clockwork build-engine` on a host without it)
        outcome = BuildFailed(int(Status.UNAVAILABLE), str(exc))
    except Exception as exc:  # a failure nobody foresaw: said in words
        outcome = BuildFailed(int(Status.RUNTIME_ERROR), f"{type(exc).__name__}: {exc}")
    conn.send(outcome)
    conn.close()


def _build_here(request: BuildRequest, log: _Messages) -> BuildDone:
    started = time.monotonic()
    libs = load_libraries(request.recipe)
    trt, cuda = libs.trt, libs.cuda
    version = check_trt_version(trt)
    try:
        cuda.init()
        device = cuda.Device(request.gpu)
        gpu = GpuInfo(request.gpu, str(device.name()), tuple(device.compute_capability()), str(device.pci_bus_id()),
                      int(device.total_memory()))
        context = device.retain_primary_context()
    except cuda.Error as exc:
        raise RuntimeFailure(Status.RUNTIME_ERROR, f"cannot open GPU {request.gpu} to build on: {exc} (a GPU in "
                             "EXCLUSIVE_PROCESS compute mode admits no second process: see build_on in "
                             "docs/gpu-hosts.md)") from None
    key = plan_key_for(request.digest, version, gpu, request.signature, request.settings)
    context.push()
    try:
        with open(request.onnx_path, "rb") as fh:
            blob = fh.read()
        plan = build_plan(trt, make_logger(trt, log), blob, request.signature, key)
    finally:
        cuda.Context.pop()
        context.detach()
    with open(request.plan_path, "wb") as fh:
        fh.write(plan)
    return BuildDone(key, time.monotonic() - started, tuple(log.lines))


# ------------------------------------------------------------------------------ running a child


def build_in_child(request: BuildRequest, blob: bytes, timeout_s: float) -> tuple[BuildDone, bytes]:
    """Build in a child process; (what it built, the plan), or RuntimeFailure with the reason."""
    with tempfile.TemporaryDirectory(prefix="clockwork-build-") as scratch:
        onnx_path, plan_path = os.path.join(scratch, "model.onnx"), os.path.join(scratch, "engine.plan")
        with open(onnx_path, "wb") as fh:
            fh.write(blob)
        outcome = _run_child(dataclasses.replace(request, onnx_path=onnx_path, plan_path=plan_path), timeout_s)
        if isinstance(outcome, BuildFailed):
            raise RuntimeFailure(Status(outcome.status), outcome.detail)
        with open(plan_path, "rb") as fh:
            return outcome, fh.read()


def _run_child(request: BuildRequest, timeout_s: float) -> BuildDone | BuildFailed:
    spawn = multiprocessing.get_context("spawn")
    receiver, sender = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_child_main, args=(request, sender), name="clockwork-engine-build", daemon=True)
    child.start()
    sender.close()  # the child holds the only writer now: its death closes the pipe
    try:
        if not receiver.poll(timeout_s):
            child.kill()
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"the engine build on GPU {request.gpu} ran past "
                                 f"build_timeout_s ({timeout_s:g} s) and was stopped; raise [worker.tensorrt] "
                                 "build_timeout_s, or build the engine ahead of time (clockwork build-engine)")
        try:
            return receiver.recv()
        except EOFError:  # it died before answering
            child.join()
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"the engine build process on GPU {request.gpu} "
                                 f"{_how_it_ended(child.exitcode)}; nothing was cached. Retry the upload, or run "
                                 "`clockwork build-engine` on the host to see the build's own output") from None
    finally:
        receiver.close()
        child.join()


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = f"signal {-exitcode}"
        with contextlib.suppress(ValueError):
            name = signal.Signals(-exitcode).name
        return f"was killed by {name} before it answered (a crash in TensorRT or the driver, or the OOM killer)"
    return f"exited with status {exitcode} before it answered (its error output is in the worker's log)"


# ------------------------------------------------------------------------------ builds ahead of time


def build_ahead(blob: bytes, gpu: int, input_shapes: dict, max_batch: int, worker: WorkerConfig,
                log: Any) -> tuple[BuildDone, str]:
    """`clockwork build-engine`: build on `gpu`, into `worker`'s engine cache, the plan that a
    worker with these settings looks for when this model is uploaded with these input shapes and
    max batch; (what was built, where it is). RuntimeFailure or BadMessage say why not."""
    signature = signature_of("onnx", blob, input_shapes, max_batch)  # as the controller resolves it
    digest = digest_of("onnx", hashlib.sha256(blob).hexdigest(), input_shapes, signature.max_batch)
    settings = worker.tensorrt
    request = BuildRequest((settings.libraries, {}), gpu, digest, signature, settings)
    done, plan = build_in_child(request, blob, settings.build_timeout_s)
    cache = PlanCache(worker.engine_cache_dir, log)
    path = cache.put(done.key, plan)
    if path is None:
        raise RuntimeFailure(Status.RUNTIME_ERROR, f"the engine was built but cannot be written under {cache.directory}")
    return done, str(path)


# ------------------------------------------------------------------------------ marking EXECs


class BuildActivity:
    """When builds ran on each served GPU, so that an EXEC can tell whether one overlapped it."""

    KEEP = 64  # spans per GPU: builds run one at a time, so these reach far back

    def __init__(self, devices: int):
        self._lock = threading.Lock()
        self._spans: list[deque[list]] = [deque(maxlen=self.KEEP) for _ in range(devices)]

    @contextlib.contextmanager
    def running(self, device_id: int | None) -> Iterator[None]:
        """Mark `device_id` busy with other work for the block (None, or a GPU not served: nothing)."""
        if device_id is None or not 0 <= device_id < len(self._spans):
            yield
            return
        span = [monotonic_ns(), None]  # [start, end]; end None while it runs
        with self._lock:
            self._spans[device_id].append(span)
        try:
            yield
        finally:
            with self._lock:
                span[1] = monotonic_ns()

    def overlapped(self, device_id: int, begin_ns: int, end_ns: int) -> bool:
        with self._lock:
            return any(start <= end_ns and (end is None or end >= begin_ns) for start, end in self._spans[device_id])
