"""The simulated cluster's workers: emulated GPUs in virtual time, with the worker's rules.

Per GPU a LOAD lane and an EXEC lane follow worker/lanes.py and worker/device.py:
- A lane runs one action at a time, takes queued actions in `earliest` order, and starts one at
  max(arrival, lane free, earliest). An action that arrives past its `latest` is answered
  TOO_LATE at once; one whose `latest` passes while it waits, when the lane comes to it.
- A LOAD is ALREADY_LOADED if the model is resident, NOT_PREPARED if its PREPARE has not reached
  the worker (or a DROP came since), INSUFFICIENT_MEMORY if its pages do not fit. An UNLOAD is
  NOT_LOADED or BUSY (executing); an EXEC of a model not resident when it starts, NOT_LOADED.
- A DROP forgets the prepared model, then releases it on each device as a LOAD-lane job without
  reply, tried again every DROP_RETRY_NS while the model executes, abandoned once a LOAD of the
  model has started since the DROP came.
Durations are the emulated runtime's (worker/runtimes/emulated.py) times a seeded
multiplicative lognormal noise (plus rare outliers). tests/test_sim_parity.py feeds these
workers and the real worker's `Device` the same actions and compares what they answer.

The cluster schedules nothing itself: it is handed the virtual time with every event, asks the
event loop to call `lane_event` again through `wake`, and hands its results to `send`.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Callable

import numpy as np

from clockwork.bench.sim.config import SimConfig
from clockwork.common import schema
from clockwork.common.models import EmulatedProfile, pages_for
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.worker.device import DROP_RETRY_NS
from clockwork.worker.lanes import NEVER_NS
from clockwork.worker.memory import PagePool
from clockwork.worker.runtimes.emulated import exec_ns_for

DEVICE_KIND = "emulated-v100"
TOO_LATE_DETAIL = "could not start inside its window; not executed"


class Noise:
    """Seeded multiplicative noise, drawn in blocks (one numpy call per 64k actions)."""

    BLOCK = 65536

    def __init__(self, rng: np.random.Generator, sigma: float, outlier_p: float, outlier_factor: float):
        self.rng, self.sigma, self.outlier_p, self.outlier_factor = rng, sigma, outlier_p, outlier_factor
        self._block: list[float] = []
        self._i = 0

    def factor(self) -> float:
        if self._i >= len(self._block):
            block = np.exp(self.sigma * self.rng.standard_normal(self.BLOCK)) if self.sigma else np.ones(self.BLOCK)
            if self.outlier_p:
                block[self.rng.random(self.BLOCK) < self.outlier_p] *= self.outlier_factor
            self._block, self._i = block.tolist(), 0
        self._i += 1
        return self._block[self._i - 1]


class Lane:
    __slots__ = ("device", "heap", "busy", "wake_ns")

    def __init__(self, device: Device):
        self.device = device
        self.heap: list = []  # (earliest_ns, seq, action_id, body)
        self.busy = False
        self.wake_ns = -1  # a wake-up event is pending for this time


class DropJob:
    """A DROP on one device's LOAD lane (no window, no reply)."""

    __slots__ = ("model_id", "earliest_ns", "latest_ns", "loads")

    def __init__(self, model_id: str, earliest_ns: int, loads: int):
        self.model_id, self.earliest_ns, self.latest_ns, self.loads = model_id, earliest_ns, NEVER_NS, loads


class Device:
    __slots__ = ("worker", "device_id", "pool", "resident", "loading", "executing", "load_lane", "exec_lane",
                 "loads", "busy_ns")

    def __init__(self, worker: str, device_id: int, pool: PagePool):
        self.worker, self.device_id, self.pool = worker, device_id, pool
        self.resident: dict[str, int] = {}  # model -> pages (loaded)
        self.loading: dict[str, int] = {}  # model -> pages (LOAD running)
        self.executing: str | None = None
        self.load_lane = Lane(self)
        self.exec_lane = Lane(self)
        self.loads: dict[str, int] = {}  # model -> LOADs started (a DROP asked before the last gives up)
        self.busy_ns = 0  # EXEC lane time spent executing (for utilisation)


Send = Callable[[str, int, schema.Result, int], None]  # (worker, action id, result, sent at)
Wake = Callable[[int, Lane, tuple | None], None]  # (at, lane, (action id, body, begin) of the one ending)


class Cluster:
    """Every emulated worker of a run, all of them serving one latency profile."""

    def __init__(self, cfg: SimConfig, profile: EmulatedProfile, batch_sizes: list[int], send: Send, wake: Wake):
        self.cfg = cfg
        self.profile = profile
        self.noise = Noise(np.random.default_rng([cfg.seed, 0x5137]), cfg.noise_sigma, cfg.outlier_probability,
                           cfg.outlier_factor)
        self.workers: dict[str, list[Device]] = {}
        self.prepared: dict[str, set[str]] = {}  # worker -> models its store holds
        self.device_actions: Counter = Counter()  # "exec OK", "load TOO_LATE", ...
        self._send = send
        self._wake = wake
        self._seq = 0
        self._build_answers(batch_sizes)

    def _build_answers(self, batch_sizes: list[int]) -> None:
        """What EXEC and PREPARE answer, built once and shared."""
        sig = self.profile.signature
        max_batch = max(self.profile.exec_ns)
        # One zero buffer per output; a batch of n real samples gets a view of its first n rows.
        buffers = [np.zeros((max_batch, *(1 if d < 0 else d for d in o.shape)), dtype=o.dtype) for o in sig.outputs]
        self.outputs: list[tuple[Tensor, ...]] = [()] + [
            tuple(Tensor.from_array(o.name, b[:n]) for o, b in zip(sig.outputs, buffers))
            for n in range(1, max_batch + 1)]
        # What the emulated runtime does for any batch size (padded up to a profiled one), and
        # what its PREPARE reports for the batch sizes the core asks about.
        self.exec_ns = {b: exec_ns_for(self.profile, b) for b in range(1, max_batch + 1)}
        self._profiled = {b: exec_ns_for(self.profile, b) for b in batch_sizes}
        self.pages = pages_for(self.profile.weights_bytes, self.cfg.page_bytes)

    def add_worker(self, name: str) -> schema.Hello:
        """A worker with `devices_per_worker` empty devices; the HELLO it says."""
        cfg = self.cfg
        memory = cfg.device_memory_bytes
        self.workers[name] = [Device(name, d, PagePool.for_device(memory, cfg.page_bytes))
                              for d in range(cfg.devices_per_worker)]
        self.prepared[name] = set()
        return schema.Hello(worker=name, runtime="emulated", formats=("profile",), devices=tuple(
            {"device_id": d, "kind": DEVICE_KIND, "memory_bytes": memory, "page_bytes": cfg.page_bytes}
            for d in range(cfg.devices_per_worker)))

    def prepare(self, worker: str, model: str) -> schema.Prepared:
        """PREPARE of `model` has reached `worker`: its store holds the model; what it answers."""
        self.prepared[worker].add(model)
        return schema.Prepared(model_id=model, status=Status.OK, weights_bytes=self.profile.weights_bytes,
                               load_ns=self.profile.load_ns, exec_ns=self._profiled, max_batch=max(self.exec_ns))

    def busy_ns(self) -> list[int]:
        """Per device, EXEC lane time spent executing so far."""
        return [d.busy_ns for devs in self.workers.values() for d in devs]

    # ---------------------------------------------------------------- actions

    def deliver(self, worker: str, action_id: int, body, now: int) -> None:
        devices = self.workers[worker]
        kind = type(body)
        if kind is schema.Exec:
            self._submit(devices[body.device_id].exec_lane, action_id, body, now)
        elif kind is schema.Load or kind is schema.Unload:
            self._submit(devices[body.device_id].load_lane, action_id, body, now)
        elif kind is schema.Drop:
            model = body.model_id
            self.prepared[worker].discard(model)  # first, so that no later LOAD finds it
            for dev in devices:
                self._submit(dev.load_lane, 0, DropJob(model, now, dev.loads.get(model, 0)), now)

    def _submit(self, lane: Lane, action_id: int, body, now: int) -> None:
        if now > body.latest_ns:
            self._result(lane.device, action_id, body, Status.TOO_LATE, now, now, TOO_LATE_DETAIL)
            return
        self._queue(lane, action_id, body)
        if not lane.busy:
            self._start(lane, now)

    def _queue(self, lane: Lane, action_id: int, body) -> None:
        self._seq += 1
        heapq.heappush(lane.heap, (body.earliest_ns, self._seq, action_id, body))

    def lane_event(self, lane: Lane, finished: tuple | None, now: int) -> None:
        """A lane's action ended (`finished`), or a queued one came due."""
        if finished is not None:
            lane.busy = False
            self._finish(lane, *finished, now)
        elif lane.wake_ns == now:
            lane.wake_ns = -1
        if not lane.busy:
            self._start(lane, now)

    def _start(self, lane: Lane, now: int) -> None:
        """Start the next action that is due (or answer it TOO_LATE), as a worker lane does."""
        while lane.heap:
            earliest, _, action_id, body = lane.heap[0]
            if earliest > now:
                if lane.wake_ns < 0 or lane.wake_ns > earliest:
                    lane.wake_ns = earliest
                    self._wake(earliest, lane, None)
                return
            heapq.heappop(lane.heap)
            if now > body.latest_ns:
                self._result(lane.device, action_id, body, Status.TOO_LATE, now, now, TOO_LATE_DETAIL)
                continue
            duration = self._begin(lane.device, action_id, body, now)
            if duration is not None:
                lane.busy = True
                self._wake(now + duration, lane, (action_id, body, now))
                return

    def _begin(self, dev: Device, action_id: int, body, now: int) -> int | None:
        """Check and start an action; its duration, or None if it was answered at once."""
        kind = type(body)
        model = body.model_id
        if kind is schema.Exec:
            if model not in dev.resident:
                self._result(dev, action_id, body, Status.NOT_LOADED, now, now, f"{model!r} is not loaded")
                return None
            dev.executing = model
            return int(self.exec_ns[body.batch_size] * self.noise.factor())
        if kind is schema.Load:
            dev.loads[model] = dev.loads.get(model, 0) + 1
            if model in dev.resident:
                self._result(dev, action_id, body, Status.ALREADY_LOADED, now, now, f"{model!r} is already loaded")
                return None
            if model not in self.prepared[dev.worker]:
                self._result(dev, action_id, body, Status.NOT_PREPARED, now, now, f"{model!r} was not prepared")
                return None
            if not dev.pool.reserve(self.pages):
                self._result(dev, action_id, body, Status.INSUFFICIENT_MEMORY, now, now,
                             f"needs {self.pages} pages; {dev.pool.free_pages} free")
                return None
            dev.loading[model] = self.pages
            return int(self.profile.load_ns * self.noise.factor())
        if kind is DropJob:
            self._drop(dev, body, now)
            return None
        # UNLOAD: immediate, as the worker's is (a bookkeeping release)
        if model not in dev.resident:
            status, detail = Status.NOT_LOADED, f"{model!r} is not loaded"
        elif dev.executing == model:
            status, detail = Status.BUSY, f"{model!r} is executing"
        else:
            dev.pool.release(dev.resident.pop(model))
            status, detail = Status.OK, ""
        self._result(dev, action_id, body, status, now, now, detail)
        return None

    def _finish(self, lane: Lane, action_id: int, body, begin_ns: int, now: int) -> None:
        dev = lane.device
        if type(body) is schema.Exec:
            dev.executing = None
            dev.busy_ns += now - begin_ns
            n = sum(t.shape[0] for t in body.tensors)
            self._result(dev, action_id, body, Status.OK, begin_ns, now, "", self.outputs[n])
        else:
            dev.resident[body.model_id] = dev.loading.pop(body.model_id)
            self._result(dev, action_id, body, Status.OK, begin_ns, now, "")

    def _drop(self, dev: Device, job: DropJob, now: int) -> None:
        model = job.model_id
        if dev.loads.get(model, 0) != job.loads:
            return  # loaded again since the DROP was asked: it stays
        if dev.executing == model:
            self._queue(dev.load_lane, 0, DropJob(model, now + DROP_RETRY_NS, job.loads))
        elif model in dev.resident:
            dev.pool.release(dev.resident.pop(model))

    def _result(self, dev: Device, action_id: int, body, status: Status, begin_ns: int, end_ns: int,
                detail: str, tensors: tuple = ()) -> None:
        kind = body.ACTION
        msg = schema.Result(action=kind, status=status, detail=detail, device_id=dev.device_id,
                            model_id=body.model_id, begin_ns=begin_ns, end_ns=end_ns, duration_ns=end_ns - begin_ns,
                            batch_size=getattr(body, "batch_size", 0), tensors=tensors)
        self.device_actions[f"{kind} {status.name}"] += 1
        self._send(dev.worker, action_id, msg, end_ns)
