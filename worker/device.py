"""A device: its two lanes, its page pool, the models resident on it, and the bodies of LOAD,
UNLOAD, EXEC and DROP.

Rules (beyond the lanes' own, worker/lanes.py):
- LOAD, UNLOAD and DROP run on the LOAD lane, EXEC on the EXEC lane.
- A LOAD is refused ALREADY_LOADED if the model is resident, NOT_PREPARED if the worker's store
  does not hold it, INSUFFICIENT_MEMORY if its pages do not fit; nothing is evicted for it.
- An UNLOAD of a model not resident is NOT_LOADED, of one executing BUSY. An EXEC of a model not
  resident when it starts is NOT_LOADED.
- A DROP (the controller forgets a model) first removes it from the store, so no later LOAD
  finds it, then releases it on every device as a LOAD-lane job without window or reply. While
  the model is executing the DROP tries again every DROP_RETRY_NS; it gives up if a LOAD of the
  model started after it was asked (the model then belongs to the controller's new plan).

The simulator's emulated workers (bench/sim/cluster.py) follow the same rules in virtual time;
tests/test_sim_parity.py feeds both the same actions and compares what they answer.

Results are `Done` records handed to `emit`, which must be callable from any thread (the daemon
queues them for its socket). An EXEC that ran is handed over as a `Ran` instead, its outputs as
the runtime returned them: the daemon's loop makes its `Done` while the lane runs the next EXEC.
The lane hands it over only when it next lets go of the interpreter (GIL): right before its next
device call, or before it waits for work. Handed over at once, the loop woke while the lane was
still between EXECs and took the interpreter from it: the lane's gap between back-to-back EXECs
was 30-87 us at p90 and 118-162 us at p99, against 11-25 and 24-40 us so (docs/benchmarks.md).
Likewise an EXEC's inputs are staged (checked, joined and padded into the batch) when it is
submitted, on the daemon's loop, so that between two EXECs the lane does as little as it can.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from clockwork.common.checks import BadMessage
from clockwork.common.clock import monotonic_ns
from clockwork.common.frozen import one_step_init
from clockwork.common.models import Signature, check_inputs
from clockwork.common.schema import ActionKind
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.worker.lanes import NEVER_NS, Job, Lane, run_on
from clockwork.worker.memory import PagePool
from clockwork.worker.runtimes.base import DeviceInfo, PreparedModel, Runtime
from clockwork.worker.store import ModelStore, describe_error

DROP_RETRY_NS = 1_000_000  # a DROP that meets the model executing tries again this much later

@one_step_init  # one per action, made on the daemon's loop for every EXEC (common/frozen.py)
@dataclass(frozen=True)
class Done:
    """What a lane did, on the worker's clock; the daemon turns it into a RESULT."""

    parent_id: int  # the action's msg_id
    action: ActionKind
    status: Status
    device_id: int
    model_id: str
    detail: str = ""
    begin_ns: int = 0
    end_ns: int = 0
    duration_ns: int = 0
    batch_size: int = 0
    tensors: tuple[Tensor, ...] = ()
    device_ns: int = 0
    sm_clock_mhz: int = 0
    disturbed: bool = False  # other work shared the device during this EXEC (Runtime.disturbed)


@dataclass
class Resident:
    model: PreparedModel
    handle: Any  # the runtime's, for execute/unload
    num_pages: int


@dataclass(slots=True)
class Ran:
    """An EXEC that ran, as its lane leaves it: the runtime's outputs as they came. `done` cuts
    them to the batch's samples and wraps them as tensors; the daemon's loop calls it, off the lane."""

    parent_id: int
    device_id: int
    model_id: str
    begin_ns: int
    end_ns: int
    batch_size: int
    samples: int
    signature: Signature
    outputs: dict[str, np.ndarray]
    device_ns: int  # the device's own timing (CUDA events), 0 where it has none
    sm_clock_mhz: int  # the GPU's SM clock right after, 0 where unknown
    disturbed: bool

    def done(self) -> Done:
        try:
            tensors = trim_outputs(self.signature, self.outputs, self.samples, self.batch_size)
            status, detail = Status.OK, ""
        except Exception as exc:  # an output the wire cannot carry: the EXEC failed, not the loop
            tensors = ()
            status, detail = describe_error(exc)
        return Done(self.parent_id, ActionKind.EXEC, status, self.device_id, self.model_id, detail, self.begin_ns,
                    self.end_ns, self.end_ns - self.begin_ns, self.batch_size, tensors, self.device_ns,
                    self.sm_clock_mhz, self.disturbed)


@dataclass(slots=True)
class _Exec:
    """An EXEC waiting for its lane, its inputs staged against `signature` when it was submitted
    (`staged` is (arrays by name, real samples), or the error staging raised)."""

    parent_id: int
    model_id: str
    batch_size: int
    tensors: tuple[Tensor, ...]
    signature: Signature | None = None
    staged: tuple[dict[str, np.ndarray], int] | Exception | None = None

    def stage(self, signature: Signature) -> None:
        self.signature = signature
        try:
            self.staged = pad_inputs(signature, self.tensors, self.batch_size)
        except Exception as exc:  # reported when the EXEC's turn comes, as it would have been then
            self.staged = exc

    def inputs(self, signature: Signature) -> tuple[dict[str, np.ndarray], int]:
        """The staged inputs, staged again if the resident model is not the one they were staged for."""
        if signature is not self.signature:
            self.stage(signature)
        staged = self.staged
        if isinstance(staged, Exception):
            raise staged
        assert staged is not None
        return staged


class Device:
    """One device: its LOAD and EXEC lanes, its pages, the models resident on it."""

    def __init__(self, info: DeviceInfo, page_bytes: int, runtime: Runtime, store: ModelStore,
                 emit: Callable[[Done | Ran], None], log: Any):
        self.info = info
        self.device_id = info.device_id
        self.pool = PagePool.for_device(info.memory_bytes, page_bytes)
        self._runtime = runtime
        self._store = store
        self._emit = emit
        self._log = log
        self._lock = threading.Lock()  # guards pool, _resident, _executing
        self._resident: dict[str, Resident] = {}
        self._executing: str | None = None  # model id the EXEC lane is running right now
        self._held: Ran | None = None  # the EXEC lane's last result, until the lane lets go of the GIL
        # LOADs asked of each model so far: a drop waiting for an EXEC to end gives up once a LOAD
        # of that model came after it (the model then belongs to the controller's new plan).
        self._loads: dict[str, int] = {}
        self.load_lane = self._lane("load")
        self.exec_lane = self._lane("exec")

    def _lane(self, kind: str) -> Lane:
        return Lane(f"dev{self.device_id}-{kind}", self._log,
                    on_start=lambda: self._runtime.lane_started(self.device_id, kind),
                    on_stop=lambda: self._runtime.lane_stopped(self.device_id, kind),
                    flush=self._hand_over if kind == "exec" else lambda: None)

    def start(self) -> None:
        self.load_lane.start()
        self.exec_lane.start()

    def stop(self) -> None:
        self.load_lane.stop()
        self.exec_lane.stop()

    def healthy(self, now_ns: int) -> bool:
        return self.load_lane.healthy(now_ns) and self.exec_lane.healthy(now_ns)

    def resident_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._resident)

    # -------------------------------------------------------------- submitting (any thread)

    def submit_load(self, parent_id: int, model_id: str, earliest_ns: int, latest_ns: int,
                    expected_ns: int = 0) -> None:
        self.load_lane.submit(Job(earliest_ns, latest_ns, lambda t: self._load(parent_id, model_id, t),
                                  self._too_late(parent_id, ActionKind.LOAD, model_id), expected_ns, "load"))

    def submit_unload(self, parent_id: int, model_id: str, earliest_ns: int, latest_ns: int) -> None:
        self.load_lane.submit(Job(earliest_ns, latest_ns, lambda t: self._unload(parent_id, model_id, t),
                                  self._too_late(parent_id, ActionKind.UNLOAD, model_id), 0, "unload"))

    def submit_exec(self, parent_id: int, model_id: str, batch_size: int, tensors: tuple[Tensor, ...],
                    earliest_ns: int, latest_ns: int, expected_ns: int = 0) -> None:
        req = _Exec(parent_id, model_id, batch_size, tensors)
        model = self._store.get(model_id)
        if model is not None:
            req.stage(model.signature)
        self.exec_lane.submit(Job(earliest_ns, latest_ns, lambda t: self._exec(req, t),
                                  self._too_late(parent_id, ActionKind.EXEC, model_id, batch_size), expected_ns, "exec"))

    def submit_drop(self, model_id: str, earliest_ns: int | None = None, loads: int | None = None) -> None:
        """Unload `model_id` if resident (on the LOAD lane, no window, no reply; retried while
        it is executing, unless a LOAD of it comes meanwhile)."""
        start = monotonic_ns() if earliest_ns is None else earliest_ns
        if loads is None:
            with self._lock:
                loads = self._loads.get(model_id, 0)
        self.load_lane.submit(Job(start, NEVER_NS, lambda t: self._drop(model_id, loads), lambda t: None, 0, "drop"))

    def run_exclusive(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the EXEC lane as soon as it is free (profiling); the future holds its result.
        The lane's held result leaves first: a profile takes seconds."""
        def run() -> Any:
            self._hand_over()
            return fn()

        return run_on(self.exec_lane, run, "internal")

    def _too_late(self, parent_id: int, action: ActionKind, model_id: str, batch_size: int = 0) -> Callable[[int], None]:
        def answer(now_ns: int) -> None:
            self._emit(Done(parent_id, action, Status.TOO_LATE, self.device_id, model_id,
                            "could not start inside its window; not executed",
                            begin_ns=now_ns, end_ns=now_ns, batch_size=batch_size))

        return answer

    # -------------------------------------------------------------- action bodies (lane threads)

    def _load(self, parent_id: int, model_id: str, start_ns: int) -> None:
        def done(status: Status, detail: str = "") -> None:
            end = monotonic_ns()
            self._emit(Done(parent_id, ActionKind.LOAD, status, self.device_id, model_id, detail, start_ns, end, end - start_ns))

        with self._lock:
            self._loads[model_id] = self._loads.get(model_id, 0) + 1
            if model_id in self._resident:
                return done(Status.ALREADY_LOADED, f"{model_id!r} is already loaded on device {self.device_id}")
            model = self._store.get(model_id)
            if model is None:
                return done(Status.NOT_PREPARED, f"{model_id!r} was not prepared on this worker")
            pages = self.pool.pages_for(model.weights_bytes)
            if not self.pool.reserve(pages):
                return done(Status.INSUFFICIENT_MEMORY, f"{model_id!r} needs {pages} pages; device "
                            f"{self.device_id} has {self.pool.free_pages} of {self.pool.total_pages} free")
        try:
            handle = self._runtime.load(self.device_id, model)
        except Exception as exc:
            with self._lock:
                self.pool.release(pages)
            return done(*describe_error(exc))
        with self._lock:
            self._resident[model_id] = Resident(model, handle, pages)
        done(Status.OK)

    def _unload(self, parent_id: int, model_id: str, start_ns: int) -> None:
        def done(status: Status, detail: str = "") -> None:
            end = monotonic_ns()
            self._emit(Done(parent_id, ActionKind.UNLOAD, status, self.device_id, model_id, detail,
                            start_ns, end, end - start_ns))

        status, detail = self._release(model_id)
        done(status, detail)

    def _release(self, model_id: str) -> tuple[Status, str]:
        with self._lock:
            res = self._resident.get(model_id)
            if res is None:
                return Status.NOT_LOADED, f"{model_id!r} is not loaded on device {self.device_id}"
            if self._executing == model_id:
                return Status.BUSY, f"{model_id!r} is executing on device {self.device_id}"
            del self._resident[model_id]
        try:
            self._runtime.unload(self.device_id, res.handle)
            return Status.OK, ""
        except Exception as exc:  # the copy is gone from our books either way
            return describe_error(exc)
        finally:
            with self._lock:
                self.pool.release(res.num_pages)

    def _drop(self, model_id: str, loads: int) -> None:
        with self._lock:
            if self._loads.get(model_id, 0) != loads:
                return  # loaded again since the drop was asked: it stays
        status, detail = self._release(model_id)
        if status is Status.BUSY:
            self.submit_drop(model_id, monotonic_ns() + DROP_RETRY_NS, loads)
        elif status is not Status.NOT_LOADED:
            self._log.info("dropped from device", device_id=self.device_id, model_id=model_id,
                           status=status.name, detail=detail)

    def _exec(self, req: _Exec, start_ns: int) -> None:
        """Run the batch; the end time is taken when the device is done. What is not device time
        (staging inputs, cutting outputs) happens elsewhere: see the module's docstring."""
        with self._lock:
            res = self._resident.get(req.model_id)
            if res is not None:
                self._executing = req.model_id
        if res is None:
            return self._failed(req, start_ns, Status.NOT_LOADED,
                                f"{req.model_id!r} is not loaded on device {self.device_id}")
        try:
            signature = res.model.signature
            inputs, samples = req.inputs(signature)
            self._hand_over()
            outputs, device_ns = self._runtime.execute(self.device_id, res.handle, inputs)
            end_ns = monotonic_ns()
        except Exception as exc:
            return self._failed(req, start_ns, *describe_error(exc))
        finally:
            with self._lock:
                self._executing = None
        self._held = Ran(req.parent_id, self.device_id, req.model_id, start_ns, end_ns, req.batch_size, samples,
                         signature, outputs, device_ns or 0, self._runtime.last_sm_clock_mhz(self.device_id) or 0,
                         self._runtime.disturbed(self.device_id, start_ns, end_ns))

    def _hand_over(self) -> None:
        """Emit the EXEC lane's held result (on that lane's thread only)."""
        held, self._held = self._held, None
        if held is not None:
            self._emit(held)

    def _failed(self, req: _Exec, start_ns: int, status: Status, detail: str) -> None:
        self._hand_over()  # results leave in the lane's order
        end_ns = monotonic_ns()
        self._emit(Done(req.parent_id, ActionKind.EXEC, status, self.device_id, req.model_id, detail,
                        start_ns, end_ns, end_ns - start_ns, req.batch_size))


def drop_model(store: ModelStore | None, devices: Iterable[Device], model_id: str) -> bool:
    """DROP: forget the prepared model first (unless `store` is None), so that no later LOAD
    finds it, then release it on every device; True if the store held it."""
    known = store is not None and store.forget(model_id)
    for device in devices:
        device.submit_drop(model_id)
    return known


def pad_inputs(signature: Signature, tensors: tuple[Tensor, ...], batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """Join the batch's chunks and zero-pad to batch_size; returns (arrays by name, real samples).

    The controller forwards each request's tensors unchanged, so an input arrives as one chunk
    per request, in batch order; this is the one place they are copied, into the padded batch.
    """
    if batch_size > signature.max_batch:
        raise BadMessage(Status.BAD_INPUT,
                         f"batch size {batch_size} exceeds the model's max batch {signature.max_batch}")
    chunks: dict[str, list[Tensor]] = {}
    if len(tensors) == len(signature.inputs):  # one request's inputs (or a mix check_inputs refuses)
        samples = check_inputs(signature, tensors)
        if samples == batch_size:  # nothing to join or pad: the arrays as they came
            return {t.name: t.array() for t in tensors}, samples
        chunks = {t.name: [t] for t in tensors}
    else:
        for t in tensors:
            chunks.setdefault(t.name, []).append(t)
        counts = {len(c) for c in chunks.values()}
        if len(counts) != 1:
            raise BadMessage(Status.BAD_INPUT, "inputs disagree on the number of chunks in the batch")
        per_request = [tuple(c[i] for c in chunks.values()) for i in range(counts.pop())]
        samples = sum(check_inputs(signature, group) for group in per_request)
    if samples > batch_size:
        raise BadMessage(Status.BAD_INPUT, f"{samples} samples do not fit a batch of {batch_size}")
    inputs = {}
    for name, parts in chunks.items():
        first = parts[0].array()
        batch = np.zeros((batch_size, *first.shape[1:]), dtype=first.dtype)
        offset = 0
        for part in parts:
            arr = part.array()
            batch[offset:offset + arr.shape[0]] = arr
            offset += arr.shape[0]
        inputs[name] = batch
    return inputs, samples


def trim_outputs(signature: Signature, outputs: dict[str, np.ndarray], samples: int,
                 batch_size: int) -> tuple[Tensor, ...]:
    """Outputs in signature order, cut back to the real samples (padding never leaves the worker)."""
    names = [s.name for s in signature.outputs if s.name in outputs]
    if len(names) < len(outputs):
        names += [n for n in outputs if n not in names]
    if samples == batch_size:
        return tuple([Tensor.from_array(name, outputs[name]) for name in names])
    tensors = []
    for name in names:
        arr = np.asarray(outputs[name])
        if arr.ndim >= 1 and arr.shape[0] == batch_size:
            arr = arr[:samples]
        tensors.append(Tensor.from_array(name, arr))
    return tuple(tensors)
