"""Virtual-time simulator: the controller's real scheduling core against emulated GPUs.

`clockwork-bench sim` runs hours of traffic on hundreds of GPUs and thousands of models in
minutes, deterministically from a seed: no sockets, no threads, no sleeping. The core
(controller/core.py, or a baseline from controller/baseline.py) is the same object the daemon
drives; here a discrete-event loop feeds it events at virtual times and performs its effects.

Theory of operation
- Time is an integer of nanoseconds. Pending events sit in a heap of (time, seq, kind, a, b);
  `seq` breaks ties in insertion order, so a run never depends on comparing payloads or on hash
  order. Open-loop arrivals come from the workload's sorted arrays, merged with the heap rather
  than pushed into it (tens of millions of requests would not fit as heap entries).
- After every batch of events at one instant the core's `tick` runs, as the daemon ticks after
  each poll; it also runs when `core.next_wakeup_ns` comes due (never more often than
  `min_tick_gap_ns` when the core asks for a time already past). With `tick_every_ns > 0` the
  ticks after events are coalesced to one per that interval (a daemon draining bursts).
- Each emulated device has a LOAD lane and an EXEC lane with worker/lanes.py's rules: a lane
  runs one action at a time, takes queued actions in `earliest` order, starts one at
  max(arrival, lane free, earliest) and answers TOO_LATE without running it when that is past
  `latest`. Durations are the profile's times a seeded multiplicative lognormal noise (plus rare
  outliers). Memory is counted in pages as the worker does; a LOAD that does not fit is refused
  INSUFFICIENT_MEMORY. Every controller <-> worker message takes `network_delay_ns`.
- Every reply (a ToClient effect) is recorded once: status, latency from the request's
  *scheduled* send time (open loop: no coordinated omission), batch size, cold start. A reply
  that comes straight out of `on_request` is a rejection at admission.
- Requests sent in the first `measure_from_ns` of traffic are simulated but reported apart
  (`warmup`): every run starts with an empty cluster, and the cold-start storm of thousands of
  models says little about steady state.
- The core's CPU time is the process CPU time (process_time) spent inside every call into it
  (events, ticks and wake-up queries), per offered request of the measured window. Each reading
  has the median of an empty interval's reading taken off: on a VM one read of that clock is a
  system call of ~0.6 us, which would otherwise add ~10 us to every request's figure. (A wall
  clock would be cheaper to read but counts the time the OS runs other processes.) The
  process's own CPU time for the whole run is reported beside it.

Messages are passed as objects through bench.loopback.Link; the codec is skipped unless
`wire=True` (see that module for why). Heartbeats are emulated: each worker sends one every
`heartbeat_interval_ns` of virtual time, so the core's liveness logic runs as in production.

Example:
    spec = RunSpec(sim=SimConfig(workers=4, devices_per_worker=4), models=400, rate_per_s=2000)
    summary = run(spec)
    print(format_result(summary))
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clockwork.bench import workload
from clockwork.bench.loopback import Link
from clockwork.bench.models import RESNET50_V100, profile_json
from clockwork.bench.progress import NullProgress, Progress
from clockwork.bench.report import Latencies, format_table, write_cdf_png, write_json
from clockwork.common import schema
from clockwork.common.config import MIB, MS, SchedulerConfig
from clockwork.common.models import EmulatedProfile, pages_for, parse_profile
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller.baseline import BaselineConfig, FifoPolicy
from clockwork.controller.core import Core
from clockwork.controller.effects import (
    ActionRecord,
    PrepareOn,
    ToClient,
    ToWorker,
    UploadFinished,
)
from clockwork.controller.invariants import check_invariants
from clockwork.controller.policy import ClockworkPolicy

GB = 1_000_000_000
NS_PER_S = 1_000_000_000
CLIENT = b"sim-client"
ADMIN = b"sim-admin"
DEVICE_KIND = "emulated-v100"
_CHUNK = 1 << 16  # open-loop arrivals converted to Python ints this many at a time
LOG_LIMIT = 2_000_000  # without --logs, request/action logs are kept only for runs this small

# event kinds
_TO_CORE, _TO_DEVICE, _LANE, _HEARTBEAT, _SEND = range(5)
_KIND = {schema.Exec: "exec", schema.Load: "load", schema.Unload: "unload"}
_LOG_KIND = {"exec": "INFER", "load": "LOAD", "unload": "UNLOAD"}  # bench/runlog.py's names


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulated cluster, with why its default is what it is."""

    # Cluster shape: 25 workers x 4 GPUs = 100 GPUs (a rack of 4-GPU hosts).
    workers: int = 25
    devices_per_worker: int = 4
    # Model memory per GPU (the acceptance setting: 16 GB of a 32 GB V100 for weights).
    device_memory_bytes: int = 16 * GB
    page_bytes: int = 16 * MIB  # the workers' page size (WorkerConfig.page_bytes)
    # One-way controller <-> worker message delay: a LAN hop plus Python's send/receive.
    network_delay_ns: int = 300_000
    # One-way client <-> controller delay; latency is measured at the client, so it counts twice.
    client_delay_ns: int = 0
    # Action durations = profile x exp(N(0, sigma^2)): GPU kernels vary by ~1% run to run.
    noise_sigma: float = 0.01
    # Rare stragglers (e.g. a clock-throttled GPU): this share of actions takes `outlier_factor` x.
    outlier_probability: float = 0.0
    outlier_factor: float = 3.0
    # PREPARE answered this long after it arrives (the emulated runtime reads a JSON profile).
    prepare_ns: int = 1 * MS
    # Workers heartbeat every SchedulerConfig.heartbeat_interval_ns (True) or never (False: the
    # core's worker timeout must then be longer than the run).
    heartbeats: bool = True
    # 0: tick after every distinct event time (exact). > 0: at most one tick per this interval
    # after events (a daemon that drains bursts before ticking); wake-ups still tick on time.
    tick_every_ns: int = 0
    # Floor between ticks when the core asks to be woken in the past (the daemon's MIN_POLL_MS).
    min_tick_gap_ns: int = 200_000
    # Models are uploaded at time 0; traffic starts this much later (all PREPAREs answered).
    warmup_ns: int = 1 * NS_PER_S
    # Requests sent in this first stretch of traffic are simulated but reported apart.
    measure_from_ns: int = 0
    # After the last arrival, run on at most this long for outstanding replies.
    drain_ns: int = 30 * NS_PER_S
    # Every message through the real codec (slow; a schema check of a whole run).
    wire: bool = False
    # controller.invariants.check_invariants after every call into the core (slow; for tests).
    check_invariants: bool = False
    seed: int = 0  # device noise; the workload has its own seed

    @property
    def gpus(self) -> int:
        return self.workers * self.devices_per_worker


# ============================================================================ emulated devices


class _Noise:
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


class _Lane:
    __slots__ = ("device", "heap", "busy", "wake_ns")

    def __init__(self, device: _Device):
        self.device = device
        self.heap: list = []  # (earliest_ns, seq, action_id, body)
        self.busy = False
        self.wake_ns = -1  # a wake-up event is pending for this time


class _Device:
    __slots__ = ("worker", "device_id", "total_pages", "used_pages", "resident", "loading", "executing",
                 "load_lane", "exec_lane", "drops", "busy_ns")

    def __init__(self, worker: str, device_id: int, total_pages: int):
        self.worker, self.device_id, self.total_pages = worker, device_id, total_pages
        self.used_pages = 0
        self.resident: dict[str, int] = {}  # model -> pages (loaded)
        self.loading: dict[str, int] = {}  # model -> pages (LOAD running)
        self.executing: str | None = None
        self.load_lane = _Lane(self)
        self.exec_lane = _Lane(self)
        self.drops: list[str] = []  # DROPs waiting for an EXEC of the model to end
        self.busy_ns = 0  # EXEC lane time spent executing (for utilisation)


# ============================================================================ results


@dataclass
class Outcome:
    """What one window of a run measured (the summary is derived from it)."""

    offered: int = 0
    admitted: int = 0
    answered: int = 0
    by_status: Counter = field(default_factory=Counter)  # all replies, by status name
    rejected: Counter = field(default_factory=Counter)  # refused at admission, by status name
    ok: int = 0
    met_slo: int = 0  # OK and latency <= SLO, measured at the client
    cold_starts: int = 0  # OK replies whose model was not loaded when they arrived
    batch_sizes: Counter = field(default_factory=Counter)  # OK replies by the batch they ran in
    latency: Latencies = field(default_factory=Latencies)  # OK replies, from scheduled send
    admitted_latency: Latencies = field(default_factory=Latencies)  # every admitted request's reply
    core_cpu_ns: int = 0  # core calls made while the simulated clock was in this window


class Simulation:
    """One simulated cluster around one scheduling core: `setup()`, then one `run_*` call."""

    def __init__(self, core, cfg: SimConfig, num_models: int, slo_ns: int,
                 profile: EmulatedProfile | None = None, runlog=None, progress: Progress | None = None):
        self.core = core
        self.cfg = cfg
        self.slo_ns = slo_ns
        self.profile = profile or parse_profile(profile_json(RESNET50_V100))
        self.names = [f"m{i:05d}" for i in range(num_models)]
        self.link = Link(cfg.wire)
        self.runlog = runlog
        self.progress = progress or NullProgress()
        self._label = self.progress.label
        self._wall0 = time.monotonic()
        self.out = Outcome()  # the measured window
        self.warm = Outcome()  # requests sent before it (and set-up CPU time, apart)
        self.setup_cpu_ns = 0
        self.duplicates = 0  # second replies to one request (a bug if > 0)
        self.core_calls = self.ticks = self.events = 0
        self.device_actions: Counter = Counter()  # "exec OK", "load TOO_LATE", ...
        self.counters_at_measure: Counter = Counter()  # the core's counters when measuring began
        self.per_second: dict[str, list[int]] = {}
        self.noise = _Noise(np.random.default_rng([cfg.seed, 0x5137]), cfg.noise_sigma, cfg.outlier_probability,
                            cfg.outlier_factor)
        self.now = 0
        self._heap: list = []
        self._seq = 0
        self._workers: dict[str, list[_Device]] = {}
        self._next_tick = 0
        self._last_tick = -1
        self._measure_ns = cfg.warmup_ns + cfg.measure_from_ns
        self._measuring = False
        self._busy_at_measure: list[int] = []
        self._traffic_end_ns = 0
        self._uploads_left = 0
        self._hb_interval = core.cfg.heartbeat_interval_ns
        self._msg_ids = 1 << 40  # worker-side message ids (heartbeats), apart from the core's
        self._clock_bias_ns = _empty_reading_ns()
        self._send_ns: list[int] | np.ndarray = []  # request id -> scheduled send time
        self._model_of: list[int] | np.ndarray = []  # request id -> model index
        self._answered = bytearray()
        self._admitting: int | None = None  # request id inside on_request (its reply = a rejection)
        self._closed: workload.ClosedLoop | None = None
        self._client_of: list[int] = []
        self._build_messages()

    # ---------------------------------------------------------------- prebuilt messages

    def _build_messages(self) -> None:
        """Everything sent per request or per EXEC is built once here and shared."""
        sig = self.profile.signature
        if len(sig.inputs) != 1:
            raise ValueError("the simulator's requests carry one input tensor")
        spec = sig.inputs[0]
        tensor = Tensor.from_array(spec.name, np.zeros((1, *spec.shape), dtype=spec.dtype))
        self.infer_bodies = [schema.Infer(model=n, slo_ns=self.slo_ns, tensors=(tensor,)) for n in self.names]
        max_batch = max(self.profile.exec_ns)
        # One zero buffer per output; a batch of n real samples gets a view of its first n rows.
        buffers = [np.zeros((max_batch, *(1 if d < 0 else d for d in o.shape)), dtype=o.dtype) for o in sig.outputs]
        self.outputs: list[tuple[Tensor, ...]] = [()] + [
            tuple(Tensor.from_array(o.name, b[:n]) for o, b in zip(sig.outputs, buffers))
            for n in range(1, max_batch + 1)]
        # What the emulated runtime does for any batch size (padded up to a profiled one), and
        # what its PREPARE reports for the batch sizes the core asks about.
        self.exec_ns = {b: _exec_ns_for(self.profile, b) for b in range(1, max_batch + 1)}
        profiled = {b: _exec_ns_for(self.profile, b) for b in self.core.cfg.batch_sizes}
        self._prepared = {n: schema.Prepared(model_id=n, status=Status.OK, weights_bytes=self.profile.weights_bytes,
                                             load_ns=self.profile.load_ns, exec_ns=profiled, max_batch=max_batch)
                          for n in self.names}
        self.pages = pages_for(self.profile.weights_bytes, self.cfg.page_bytes)

    # ---------------------------------------------------------------- calling the core

    def _push(self, t: int, kind: int, a, b=None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _window(self) -> Outcome | None:
        """Where the CPU time of a call at `now` counts (None: set-up)."""
        if self.now >= self._measure_ns:
            if not self._measuring:
                self._measuring = True
                self.counters_at_measure = Counter(self.core.counters)
                self._busy_at_measure = [d.busy_ns for devs in self._workers.values() for d in devs]
            return self.out
        return self.warm if self.now >= self.cfg.warmup_ns else None

    def _charge(self, cpu_ns: int) -> None:
        cpu_ns = max(0, cpu_ns - self._clock_bias_ns)
        window = self._window()
        if window is None:
            self.setup_cpu_ns += cpu_ns
        else:
            window.core_cpu_ns += cpu_ns

    def _call(self, fn: Callable, *args) -> None:
        t0 = _clock()
        effects = fn(*args)
        self._charge(_clock() - t0)
        self.core_calls += 1
        if effects:
            self._perform(effects)
        if self.cfg.check_invariants:
            check_invariants(self.core, self.now)

    def _perform(self, effects: list) -> None:
        now = self.now
        for effect in effects:
            kind = type(effect)
            if kind is ToClient:
                self._reply(effect)
            elif kind is ToWorker:
                body = effect.body
                if type(body) in (schema.Welcome, schema.HeartbeatAck):
                    continue  # the emulated worker needs neither
                body = self.link.carry(body, effect.msg_id, effect.parent_id, now)
                self._push(now + self.cfg.network_delay_ns, _TO_DEVICE, effect.worker, (effect.msg_id, body))
            elif kind is PrepareOn:
                msg = self.link.carry(self._prepared[effect.model], 0, effect.msg_id, now)
                self._push(now + 2 * self.cfg.network_delay_ns + self.cfg.prepare_ns, _TO_CORE, effect.worker,
                           (0, msg))
            elif kind is ActionRecord:
                if self.runlog is not None:
                    self._log_action(effect)
            elif kind is UploadFinished:
                if effect.status is not Status.OK:
                    raise RuntimeError(f"upload of {effect.model} failed: {effect.status.name}: {effect.detail}")
                self._uploads_left -= 1

    def _log_action(self, a: ActionRecord) -> None:
        """An action log row, times relative to the start of traffic (runlog's convention)."""
        t0 = self.cfg.warmup_ns
        self.runlog.action(a.action_id, _LOG_KIND.get(a.kind, a.kind.upper()), a.worker, a.device, a.model,
                           a.batch_size, a.sent_ns - t0, a.begin_ns - t0, a.end_ns - t0, a.predicted_ns or -1,
                           a.measured_ns, a.status)

    # ---------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Workers say HELLO and every model is uploaded and prepared, from time 0."""
        cfg = self.cfg
        memory = cfg.device_memory_bytes
        for w in range(cfg.workers):
            name = f"w{w:03d}"
            self._workers[name] = [_Device(name, d, memory // cfg.page_bytes) for d in range(cfg.devices_per_worker)]
            hello = schema.Hello(worker=name, runtime="emulated", formats=("profile",), devices=tuple(
                {"device_id": d, "kind": DEVICE_KIND, "memory_bytes": memory, "page_bytes": cfg.page_bytes}
                for d in range(cfg.devices_per_worker)))
            self._call(self.core.on_hello, name, self.link.carry(hello), 0)
            if cfg.heartbeats:
                self._push(self._hb_interval, _HEARTBEAT, name)
        self._uploads_left = len(self.names)
        for i, name in enumerate(self.names):
            self._call(self.core.on_upload, name, "profile", self.profile.signature, ADMIN, i, 0)
        self._loop(until_ns=cfg.warmup_ns)
        if self._uploads_left:
            raise RuntimeError(f"{self._uploads_left} uploads unfinished after the warm-up; raise warmup_ns")

    # ---------------------------------------------------------------- runs

    def run_open_loop(self, sched: workload.Schedule) -> None:
        start = self.cfg.warmup_ns
        self._send_ns = sched.times_ns + start
        self._model_of = sched.models
        self._answered = bytearray(len(sched))
        self._init_series(sched.duration_ns)
        end = self._traffic_end_ns = start + sched.duration_ns
        self._loop(end, (sched.times_ns + start + self.cfg.client_delay_ns, sched.models))
        self._drain(end)

    def run_closed_loop(self, loop: workload.ClosedLoop) -> None:
        start = self.cfg.warmup_ns
        self._closed = loop
        self._send_ns, self._model_of = [], []
        self._init_series(loop.duration_ns)
        for t, client, model in loop.first_sends():
            self._push(start + t + self.cfg.client_delay_ns, _SEND, client, model)
        end = self._traffic_end_ns = start + loop.duration_ns
        self._loop(until_ns=end)
        self._drain(end)

    def _drain(self, end: int) -> None:
        self._closed = None  # no new closed-loop sends
        limit = end + self.cfg.drain_ns
        while self.core.requests and self.now < limit:
            self._loop(until_ns=min(limit, self.now + 100 * MS))
        self._show_progress(force=True)

    # ---------------------------------------------------------------- the loop

    def _loop(self, until_ns: int, arrivals: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Process events (and open-loop arrivals) up to `until_ns`, ticking the core."""
        heap = self._heap
        tick_every = self.cfg.tick_every_ns
        arr_t: list[int] = []  # the current chunk of arrival times, as Python ints
        arr_m: list[int] = []
        ai = first = 0  # position in the chunk; request id of the chunk's first arrival
        base = 0  # request id of the next chunk
        inf = 1 << 62
        while True:
            if arrivals is not None and ai >= len(arr_t) and base < len(arrivals[0]):
                arr_t = arrivals[0][base:base + _CHUNK].tolist()
                arr_m = arrivals[1][base:base + _CHUNK].tolist()
                first, base, ai = base, base + _CHUNK, 0
            t = min(heap[0][0] if heap else inf, arr_t[ai] if ai < len(arr_t) else inf, self._next_tick)
            if t > until_ns:
                break
            self.now = t
            handled = False
            while heap and heap[0][0] == t:
                _, _, kind, a, b = heapq.heappop(heap)
                self._event(kind, a, b)
                handled = True
            while arrivals is not None:
                if ai >= len(arr_t):  # simultaneous arrivals may straddle two chunks
                    if base >= len(arrivals[0]):
                        break
                    arr_t = arrivals[0][base:base + _CHUNK].tolist()
                    arr_m = arrivals[1][base:base + _CHUNK].tolist()
                    first, base, ai = base, base + _CHUNK, 0
                if arr_t[ai] != t:
                    break
                self._arrive(first + ai, arr_m[ai])
                ai += 1
                handled = True
            if t >= self._next_tick or (handled and (tick_every == 0 or t - self._last_tick >= tick_every)):
                self._tick(t)
            elif handled:
                self._next_tick = min(self._next_tick, self._last_tick + tick_every)
            self.events += 1
            if self.events & 0xFFF == 0:
                self._show_progress()
        self.now = max(self.now, until_ns)

    def _tick(self, t: int) -> None:
        self._call(self.core.tick, t)
        t0 = _clock()
        wake = self.core.next_wakeup_ns(t)
        self._charge(_clock() - t0)
        self._next_tick = wake if wake > t else t + self.cfg.min_tick_gap_ns
        self._last_tick = t
        self.ticks += 1

    def _show_progress(self, force: bool = False) -> None:
        elapsed = max(0.0, (self.now - self.cfg.warmup_ns) / NS_PER_S)
        self.progress.label = f"{self._label} wall {time.monotonic() - self._wall0:.0f} s, simulated"
        offered = self.out.offered + self.warm.offered
        ok = self.out.ok + self.warm.ok
        rejected = sum(self.out.rejected.values()) + sum(self.warm.rejected.values())
        self.progress.update(elapsed, offered, ok, rejected, force=force)

    def _event(self, kind: int, a, b) -> None:
        if kind == _TO_CORE:
            action_id, msg = b
            if type(msg) is schema.Result:
                self._call(self.core.on_result, a, action_id, msg, self.now)
            elif type(msg) is schema.Prepared:
                self._call(self.core.on_prepared, a, msg, self.now)
            else:  # a heartbeat
                self._call(self.core.on_heartbeat, a, action_id, self.now - self.cfg.network_delay_ns, True, self.now)
        elif kind == _TO_DEVICE:
            self._deliver(a, *b)
        elif kind == _LANE:
            self._lane_event(a, b)
        elif kind == _HEARTBEAT:
            self._msg_ids += 1
            msg = self.link.carry(schema.Heartbeat(lanes_alive=True), self._msg_ids, 0, self.now)
            self._push(self.now + self.cfg.network_delay_ns, _TO_CORE, a, (self._msg_ids, msg))
            self._push(self.now + self._hb_interval, _HEARTBEAT, a)
        else:  # _SEND: a closed-loop client sends its next request
            self._send_closed(a, b)

    # ---------------------------------------------------------------- clients

    def _arrive(self, request_id: int, model: int) -> None:
        sent_ns = int(self._send_ns[request_id])
        out = self.out if sent_ns >= self._measure_ns else self.warm
        out.offered += 1
        self._series("offered", sent_ns)
        self._admitting = request_id
        self._call(self.core.on_request, CLIENT, request_id, self.infer_bodies[model], self.now)
        if self._admitting is not None:  # no reply came straight back
            out.admitted += 1
        self._admitting = None

    def _send_closed(self, client: int, model: int) -> None:
        request_id = len(self._send_ns)
        self._send_ns.append(self.now - self.cfg.client_delay_ns)
        self._model_of.append(model)
        self._answered.append(0)
        self._client_of.append(client)
        self._arrive(request_id, model)

    def _reply(self, effect: ToClient) -> None:
        rid = effect.request_id
        if self._answered[rid]:
            self.duplicates += 1
            return
        self._answered[rid] = 1
        body = effect.body
        status = body.status
        reply_ns = self.now + self.cfg.client_delay_ns
        sent_ns = int(self._send_ns[rid])
        latency = reply_ns - sent_ns
        out = self.out if sent_ns >= self._measure_ns else self.warm
        out.answered += 1
        out.by_status[status.name] += 1
        rejected = rid == self._admitting
        if rejected:
            out.rejected[status.name] += 1
            self._admitting = None
            self._series("rejected", sent_ns)
        else:
            out.admitted_latency.record_ns(latency)
        if status is Status.OK:
            out.ok += 1
            out.latency.record_ns(latency)
            out.batch_sizes[body.batch_size] += 1
            if body.cold_start:
                out.cold_starts += 1
            if latency <= self.slo_ns:
                out.met_slo += 1
                self._series("goodput", sent_ns)
            else:
                self._series("late", sent_ns)
        elif not rejected:
            self._series("dropped", sent_ns)
        if self.runlog is not None:
            self._log_request(rid, body, sent_ns, latency)
        if self._closed is not None:
            client = self._client_of[rid]
            nxt = self._closed.next_send(client, reply_ns - self.cfg.warmup_ns)
            if nxt is not None:
                self._push(nxt[0] + self.cfg.warmup_ns + self.cfg.client_delay_ns, _SEND, client, nxt[1])

    def _log_request(self, rid: int, body, sent_ns: int, latency: int) -> None:
        ok = body.status is Status.OK
        arrival = sent_ns - self.cfg.warmup_ns
        self.runlog.request(rid, self.names[int(self._model_of[rid])], 0, arrival, arrival + self.slo_ns,
                            body.status.name, latency, body.queue_ns if ok else -1, body.exec_ns if ok else -1,
                            body.batch_size, body.cold_start, body.worker)

    def log_unanswered(self) -> None:
        """Rows for requests never answered (runlog's UNANSWERED), once the run is over."""
        if self.runlog is None:
            return
        for rid in (i for i, done in enumerate(self._answered) if not done):
            if rid < len(self._send_ns):
                arrival = int(self._send_ns[rid]) - self.cfg.warmup_ns
                self.runlog.request(rid, self.names[int(self._model_of[rid])], 0, arrival, arrival + self.slo_ns,
                                    "UNANSWERED", -1, -1, -1, 0, False, "")

    def _init_series(self, duration_ns: int) -> None:
        bins = int(math.ceil(duration_ns / NS_PER_S)) + 1
        self.per_second = {k: [0] * bins for k in ("offered", "rejected", "goodput", "late", "dropped")}

    def _series(self, key: str, sent_ns: int) -> None:
        series = self.per_second[key]
        series[min(len(series) - 1, max(0, (sent_ns - self.cfg.warmup_ns) // NS_PER_S))] += 1

    # ---------------------------------------------------------------- workers

    def _deliver(self, worker: str, action_id: int, body) -> None:
        devices = self._workers[worker]
        kind = type(body)
        if kind is schema.Exec:
            self._submit(devices[body.device_id].exec_lane, action_id, body)
        elif kind is schema.Load or kind is schema.Unload:
            self._submit(devices[body.device_id].load_lane, action_id, body)
        elif kind is schema.Drop:
            for dev in devices:
                self._drop(dev, body.model_id)

    def _submit(self, lane: _Lane, action_id: int, body) -> None:
        self._seq += 1
        heapq.heappush(lane.heap, (body.earliest_ns, self._seq, action_id, body))
        if not lane.busy:
            self._start(lane)

    def _lane_event(self, lane: _Lane, finished) -> None:
        if finished is not None:
            lane.busy = False
            self._finish(lane, *finished)
        elif lane.wake_ns == self.now:
            lane.wake_ns = -1
        if not lane.busy:
            self._start(lane)

    def _start(self, lane: _Lane) -> None:
        """Start the next action that is due (or answer it TOO_LATE), as a worker lane does."""
        now = self.now
        while lane.heap:
            earliest, _, action_id, body = lane.heap[0]
            if earliest > now:
                if lane.wake_ns < 0 or lane.wake_ns > earliest:
                    lane.wake_ns = earliest
                    self._push(earliest, _LANE, lane, None)
                return
            heapq.heappop(lane.heap)
            if now > body.latest_ns:
                self._result(lane.device, action_id, body, Status.TOO_LATE, now, now,
                             "could not start inside its window; not executed")
                continue
            duration = self._begin(lane.device, action_id, body)
            if duration is not None:
                lane.busy = True
                self._push(now + duration, _LANE, lane, (action_id, body, now))
                return

    def _begin(self, dev: _Device, action_id: int, body) -> int | None:
        """Check and start an action; its duration, or None if it was answered at once."""
        now = self.now
        kind = type(body)
        model = body.model_id
        if kind is schema.Exec:
            if model not in dev.resident:
                self._result(dev, action_id, body, Status.NOT_LOADED, now, now, f"{model!r} is not loaded")
                return None
            dev.executing = model
            return int(self.exec_ns[body.batch_size] * self.noise.factor())
        if kind is schema.Load:
            if model in dev.resident or model in dev.loading:
                self._result(dev, action_id, body, Status.ALREADY_LOADED, now, now, f"{model!r} is already loaded")
                return None
            if dev.used_pages + self.pages > dev.total_pages:
                self._result(dev, action_id, body, Status.INSUFFICIENT_MEMORY, now, now,
                             f"needs {self.pages} pages; {dev.total_pages - dev.used_pages} free")
                return None
            dev.used_pages += self.pages
            dev.loading[model] = self.pages
            return int(self.profile.load_ns * self.noise.factor())
        # UNLOAD: immediate, as the worker's is (a bookkeeping release)
        if model not in dev.resident:
            status, detail = Status.NOT_LOADED, f"{model!r} is not loaded"
        elif dev.executing == model:
            status, detail = Status.BUSY, f"{model!r} is executing"
        else:
            dev.used_pages -= dev.resident.pop(model)
            status, detail = Status.OK, ""
        self._result(dev, action_id, body, status, now, now, detail)
        return None

    def _finish(self, lane: _Lane, action_id: int, body, begin_ns: int) -> None:
        dev = lane.device
        if type(body) is schema.Exec:
            dev.executing = None
            dev.busy_ns += self.now - begin_ns
            n = sum(t.shape[0] for t in body.tensors)
            self._result(dev, action_id, body, Status.OK, begin_ns, self.now, "", self.outputs[n])
            for name in list(dev.drops):
                self._drop(dev, name)
        else:
            dev.resident[body.model_id] = dev.loading.pop(body.model_id)
            self._result(dev, action_id, body, Status.OK, begin_ns, self.now, "")

    def _drop(self, dev: _Device, model: str) -> None:
        if dev.executing == model:
            if model not in dev.drops:
                dev.drops.append(model)
            return
        if model in dev.drops:
            dev.drops.remove(model)
        if model in dev.resident:
            dev.used_pages -= dev.resident.pop(model)

    def _result(self, dev: _Device, action_id: int, body, status: Status, begin_ns: int, end_ns: int,
                detail: str, tensors: tuple = ()) -> None:
        kind = _KIND[type(body)]
        msg = schema.Result(action=kind, status=status, detail=detail, device_id=dev.device_id,
                            model_id=body.model_id, begin_ns=begin_ns, end_ns=end_ns, duration_ns=end_ns - begin_ns,
                            batch_size=getattr(body, "batch_size", 0), tensors=tensors)
        self.device_actions[f"{kind} {status.name}"] += 1
        msg = self.link.carry(msg, 0, action_id, end_ns)
        self._push(end_ns + self.cfg.network_delay_ns, _TO_CORE, dev.worker, (action_id, msg))

    def utilisation(self) -> list[float]:
        """Share of the measured window (to the last arrival) each device spent executing."""
        span = max(1, self._traffic_end_ns - self._measure_ns)
        before = self._busy_at_measure or [0] * self.cfg.gpus
        busy = [d.busy_ns for devs in self._workers.values() for d in devs]
        return [min(1.0, (b - a) / span) for a, b in zip(before, busy)]


_clock = time.process_time_ns


def _empty_reading_ns(samples: int = 2001) -> int:
    """What timing an empty interval reads (the clock's own cost), the median of many."""
    readings = []
    for _ in range(samples):
        t0 = _clock()
        readings.append(_clock() - t0)
    return sorted(readings)[samples // 2]


def _exec_ns_for(profile: EmulatedProfile, batch_size: int) -> int:
    """The emulated runtime's rule: the smallest profiled size that holds the batch."""
    fits = [b for b in profile.exec_ns if b >= batch_size]
    return profile.exec_ns[min(fits)] if fits else profile.exec_ns[max(profile.exec_ns)]


# ============================================================================ building runs


SCHEDULERS = ("clockwork", "fifo", "fifo-timeout")


def make_core(scheduler: str, sched_cfg: SchedulerConfig, max_batch: int = 16, max_queue_delay_ns: int = MS,
              replicate: bool = False):
    """The scheduling core with a policy by name: Clockwork's, or baseline (a) `fifo` / (b) `fifo-timeout`."""
    if scheduler == "clockwork":
        return Core(sched_cfg, ClockworkPolicy())
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; one of {', '.join(SCHEDULERS)}")
    return Core(sched_cfg, FifoPolicy(BaselineConfig(max_batch=max_batch, max_queue_delay_ns=max_queue_delay_ns,
                                                     queue_timeout=scheduler == "fifo-timeout",
                                                     replicate_hot_models=replicate)))


def capacity_per_s(gpus: int, profile: dict = RESNET50_V100) -> float:
    """Requests a second the GPUs could run at most: the largest batch back to back, no loads.
    An upper bound: a many-model workload batches far less (see docs/simulator.md)."""
    largest = max(profile["exec_ms"], key=int)
    return gpus * int(largest) / (profile["exec_ms"][largest] / 1000.0)


@dataclass(frozen=True)
class RunSpec:
    """One simulated experiment: the cluster, the core, the workload."""

    scheduler: str = "clockwork"
    sim: SimConfig = SimConfig()
    sched: SchedulerConfig = SchedulerConfig()
    models: int = 4000
    slo_ms: float = 100.0
    workload: str = "azure"  # azure | poisson | bursty | closed
    rate_per_s: float = 10_000.0
    duration_s: float = 60.0
    zipf: float = 1.0
    workload_seed: int = 1
    clients: int = 1000  # closed loop
    think_ms: float = 0.0  # closed loop
    azure_csv: str = ""  # replay a real trace instead of the synthetic one
    azure_scale: float = 1.0
    azure_start_minute: int = 0
    max_batch: int = 16  # baselines: Triton's max batch size
    max_queue_delay_ms: float = 1.0  # baselines: Triton's max queue delay
    baseline_replicas: bool = False  # baselines: replicate hot models as the core does
    # Before the workload, one request per model, evenly spaced over this long (0: none): the
    # cluster starts warm instead of with a storm of thousands of cold starts. These requests,
    # like those in the first `sim.measure_from_ns` of the workload, are reported as warm-up.
    prewarm_s: float = 0.0


def build_schedule(spec: RunSpec) -> workload.Schedule | workload.ClosedLoop:
    """The workload's arrivals, after the pre-warm requests if any (open loop only)."""
    sched = _workload_schedule(spec)
    if spec.prewarm_s <= 0 or isinstance(sched, workload.ClosedLoop):
        return sched
    step_ns = int(spec.prewarm_s * NS_PER_S) // spec.models
    warm = workload.Schedule(np.arange(spec.models, dtype=np.int64) * step_ns, np.arange(spec.models, dtype=np.int32),
                             int(spec.prewarm_s * NS_PER_S), np.full(spec.models, 1 / spec.prewarm_s))
    return workload.concat(warm, sched)


def _measured_spec(spec: RunSpec) -> RunSpec:
    """Pre-warm time counts as warm-up: measuring starts after it."""
    if spec.prewarm_s <= 0 or spec.workload == "closed":
        return spec
    return replace(spec, sim=replace(spec.sim, measure_from_ns=spec.sim.measure_from_ns + int(spec.prewarm_s * NS_PER_S)))


def _workload_schedule(spec: RunSpec) -> workload.Schedule | workload.ClosedLoop:
    if spec.workload == "closed":
        clients = workload.ClosedLoop.clients_for(spec.clients, spec.models, spec.workload_seed, spec.zipf)
        return workload.ClosedLoop(clients, spec.duration_s, spec.workload_seed, spec.think_ms / 1000.0)
    if spec.workload == "azure" and spec.azure_csv:
        return workload.read_azure_functions(spec.azure_csv, spec.models, spec.azure_scale, spec.workload_seed,
                                             spec.azure_start_minute, max(1, math.ceil(spec.duration_s / 60)))
    if spec.workload == "azure":
        return workload.azure_like_schedule(spec.rate_per_s, spec.models, spec.duration_s, spec.workload_seed,
                                            workload.AzureLike(zipf_exponent=spec.zipf))
    rates = workload.zipf_rates(spec.rate_per_s, spec.models, spec.zipf)
    if spec.workload == "poisson":
        return workload.poisson_schedule(rates, spec.duration_s, spec.workload_seed)
    if spec.workload == "bursty":
        # ON half the time at twice the rate: the same mean load, delivered in bursts.
        return workload.on_off_schedule(rates * 2, spec.duration_s, spec.workload_seed, on_s=5.0, off_s=5.0)
    raise ValueError(f"unknown workload {spec.workload!r}")


def run(spec: RunSpec, schedule=None, runlog=None, progress: Progress | None = None) -> dict:
    """Run one experiment; returns its summary (a dict; `latencies` holds the HDR histogram)."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    schedule = schedule if schedule is not None else build_schedule(spec)
    spec = _measured_spec(spec)
    sched_cfg = replace(spec.sched, record_actions=True) if runlog is not None else spec.sched
    core = make_core(spec.scheduler, sched_cfg, spec.max_batch, int(spec.max_queue_delay_ms * MS),
                     spec.baseline_replicas)
    sim = Simulation(core, spec.sim, spec.models, int(spec.slo_ms * MS), runlog=runlog, progress=progress)
    sim.setup()
    if isinstance(schedule, workload.ClosedLoop):
        sim.run_closed_loop(schedule)
    else:
        sim.run_open_loop(schedule)
    sim.log_unanswered()
    summary = summarize(spec, sim, schedule.duration_ns, time.monotonic() - wall0)
    summary["process_cpu_s"] = round(time.process_time() - cpu0, 3)  # the whole run: workload, sim and core
    return summary


def summarize(spec: RunSpec, sim: Simulation, duration_ns: int, wall_s: float) -> dict:
    """The JSON-ready numbers of a run (the measured window; the warm-up in `warmup`)."""
    out, warm = sim.out, sim.warm
    seconds = max(1e-9, (duration_ns - spec.sim.measure_from_ns) / NS_PER_S)
    counters = Counter(sim.core.counters)
    counters.subtract(sim.counters_at_measure)
    util = sim.utilisation()
    return {
        "scheduler": spec.scheduler,
        "workload": spec.workload,
        "seed": spec.sim.seed,
        "workload_seed": spec.workload_seed,
        "models": spec.models,
        "gpus": spec.sim.gpus,
        "workers": spec.sim.workers,
        "devices_per_worker": spec.sim.devices_per_worker,
        "gpu_memory_gb": spec.sim.device_memory_bytes / GB,
        "slo_ms": spec.slo_ms,
        "simulated_s": duration_ns / NS_PER_S,
        "measured_from_s": spec.sim.measure_from_ns / NS_PER_S,
        "prewarm_s": spec.prewarm_s,
        "wall_s": round(wall_s, 3),
        "offered": out.offered,
        "offered_per_s": out.offered / seconds,
        "capacity_bound_per_s": capacity_per_s(spec.sim.gpus),
        "admitted": out.admitted,
        "rejected": sum(out.rejected.values()),
        "rejected_by_status": dict(sorted(out.rejected.items())),
        "answered": out.answered,
        "unanswered": out.offered - out.answered,
        "duplicates": sim.duplicates,
        "replies_by_status": dict(sorted(out.by_status.items())),
        "ok": out.ok,
        "met_slo": out.met_slo,
        "ok_late": out.ok - out.met_slo,
        "dropped_after_admission": out.answered - sum(out.rejected.values()) - out.ok,  # admitted, answered not OK
        "goodput_per_s": out.met_slo / seconds,
        "slo_attainment_admitted": out.met_slo / out.admitted if out.admitted else None,
        "slo_attainment_executed": out.met_slo / out.ok if out.ok else None,
        "slo_attainment_all": out.met_slo / out.offered if out.offered else None,
        "latency_ok_ms": out.latency.summary_ms(),
        "latency_admitted_ms": out.admitted_latency.summary_ms(),
        "cold_starts": out.cold_starts,
        "loads": counters.get("loads_sent", 0),
        "evictions": counters.get("evictions", 0),
        "batch_sizes": {str(k): v for k, v in sorted(out.batch_sizes.items())},
        "gpu_utilisation": {"mean": float(np.mean(util)), "min": float(np.min(util)), "max": float(np.max(util))},
        "core_cpu_s": out.core_cpu_ns / 1e9,
        "core_cpu_us_per_request": out.core_cpu_ns / 1e3 / max(out.offered, 1),
        "core_setup_cpu_s": sim.setup_cpu_ns / 1e9,
        "core_calls": sim.core_calls,
        "ticks": sim.ticks,
        "events": sim.events,
        "device_actions": dict(sorted(sim.device_actions.items())),
        "core_counters": {k: v for k, v in sorted(counters.items()) if v},
        "prediction": sim.core.latency.error_summary(),
        "warmup": {
            "offered": warm.offered, "admitted": warm.admitted, "met_slo": warm.met_slo, "ok": warm.ok,
            "replies_by_status": dict(sorted(warm.by_status.items())), "core_cpu_s": warm.core_cpu_ns / 1e9,
        },
        "per_second": sim.per_second,
        "latencies": out.latency,  # not JSON; write_summary leaves it out
    }


# ============================================================================ output


def format_result(s: dict) -> str:
    lat = s["latency_ok_ms"]
    pct = lambda v: "-" if v is None else f"{100 * v:.4f}%"
    warm = s["warmup"]
    rows = [
        ("scheduler", s["scheduler"]),
        ("cluster", f"{s['gpus']} GPUs ({s['workers']} x {s['devices_per_worker']}), {s['gpu_memory_gb']:g} GB each"),
        ("workload", f"{s['workload']}, {s['models']} models, SLO {s['slo_ms']:g} ms"),
        ("simulated / wall", f"{s['simulated_s']:.1f} s (measured from {s['measured_from_s']:g} s) / {s['wall_s']:.1f} s"),
        ("offered", f"{s['offered']} ({s['offered_per_s']:.0f}/s; batch-16 bound {s['capacity_bound_per_s']:.0f}/s)"),
        ("admitted", s["admitted"]),
        ("rejected", f"{s['rejected']} {s['rejected_by_status']}"),
        ("replies", s["replies_by_status"]),
        ("goodput", f"{s['goodput_per_s']:.1f}/s ({s['met_slo']} in SLO, {s['ok_late']} OK but late)"),
        ("SLO attainment", f"admitted {pct(s['slo_attainment_admitted'])}, executed "
                           f"{pct(s['slo_attainment_executed'])}, all {pct(s['slo_attainment_all'])}"),
        ("latency OK (ms)", "  ".join(f"{k} {v:.2f}" for k, v in lat.items() if v is not None and not math.isnan(v))),
        ("cold starts / loads / evictions", f"{s['cold_starts']} / {s['loads']} / {s['evictions']}"),
        ("batch sizes", "  ".join(f"{k}:{v}" for k, v in s["batch_sizes"].items())),
        ("GPU busy", "mean {mean:.2f}  min {min:.2f}  max {max:.2f}".format(**s["gpu_utilisation"])),
        ("core CPU", f"{s['core_cpu_s']:.2f} s = {s['core_cpu_us_per_request']:.1f} us/request "
                     f"({s['core_calls']} calls, {s['ticks']} ticks)"),
        ("unanswered / duplicates", f"{s['unanswered']} / {s['duplicates']}"),
    ]
    if "process_cpu_s" in s:
        rows.append(("process CPU (whole run)", f"{s['process_cpu_s']:.1f} s"))
    if warm["offered"]:
        rows.append(("warm-up (not above)", f"offered {warm['offered']}, met SLO {warm['met_slo']}, "
                                            f"replies {warm['replies_by_status']}"))
    return format_table(rows)


def write_summary(out_dir: str | Path, s: dict, name: str = "sim") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(out_dir / f"{name}-summary.json", {k: v for k, v in s.items() if k != "latencies"})
    (out_dir / f"{name}-summary.txt").write_text(format_result(s) + "\n")
    return path


def comparison(clockwork: dict, baseline: dict) -> dict:
    ratio = clockwork["goodput_per_s"] / baseline["goodput_per_s"] if baseline["goodput_per_s"] else math.inf
    both = {"clockwork": clockwork, baseline["scheduler"]: baseline}
    return {
        "offered_per_s": clockwork["offered_per_s"],
        "goodput_ratio": ratio,
        "goodput_per_s": {k: v["goodput_per_s"] for k, v in both.items()},
        "p99_ok_ms": {k: v["latency_ok_ms"]["p99"] for k, v in both.items()},
        "p99_admitted_ms": {k: v["latency_admitted_ms"]["p99"] for k, v in both.items()},
        "slo_attainment_all": {k: v["slo_attainment_all"] for k, v in both.items()},
        "slo_attainment_admitted": {k: v["slo_attainment_admitted"] for k, v in both.items()},
    }


def format_comparison(clockwork: dict, baseline: dict) -> str:
    c = comparison(clockwork, baseline)
    names = list(c["goodput_per_s"])
    rows = [("goodput /s", *(f"{c['goodput_per_s'][n]:.1f}" for n in names)),
            ("p99 of OK replies (ms)", *(c["p99_ok_ms"][n] for n in names)),
            ("p99 of admitted (ms)", *(c["p99_admitted_ms"][n] for n in names)),
            ("SLO attainment, admitted", *(c["slo_attainment_admitted"][n] for n in names)),
            ("SLO attainment, all", *(c["slo_attainment_all"][n] for n in names))]
    return (f"== {' vs '.join(names)} at {c['offered_per_s']:.0f} req/s offered: goodput ratio "
            f"{c['goodput_ratio']:.2f}x ==\n" + format_table(rows, header=("", *names)))


# ============================================================================ command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench sim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="clockwork")
    p.add_argument("--compare", action="store_true", help="run clockwork and baseline (a) on the same workload")
    p.add_argument("--models", type=int, default=4000)
    p.add_argument("--gpus", type=int, default=100, help="total GPUs (workers = gpus / devices per worker)")
    p.add_argument("--workers", type=int, default=0, help="overrides --gpus")
    p.add_argument("--devices-per-worker", type=int, default=4)
    p.add_argument("--gpu-memory-gb", type=float, default=16.0, help="model memory per GPU (1 GB = 1e9 bytes)")
    p.add_argument("--rate", type=float, default=0.0, help="offered requests/s in total")
    p.add_argument("--load-factor", type=float, default=0.25,
                   help="without --rate: the offered rate as a share of the batch-16 bound (GPUs x 925/s)")
    p.add_argument("--workload", choices=("azure", "poisson", "bursty", "closed"), default="azure")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent across models")
    p.add_argument("--azure-csv", default="", help="an Azure Functions 2019 invocations_per_function file")
    p.add_argument("--azure-scale", type=float, default=1.0)
    p.add_argument("--azure-start-minute", type=int, default=0)
    p.add_argument("--clients", type=int, default=1000, help="closed loop: concurrent clients")
    p.add_argument("--think-ms", type=float, default=0.0, help="closed loop: mean think time")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--measure-from-s", type=float, default=0.0,
                   help="requests sent before this are simulated but reported apart (warm-up)")
    p.add_argument("--prewarm-s", type=float, default=0.0,
                   help="first send one request per model, evenly over this long (reported as warm-up)")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=1, help="seeds the workload and the device noise")
    p.add_argument("--network-delay-ms", type=float, default=0.3)
    p.add_argument("--noise-sigma", type=float, default=0.01)
    p.add_argument("--outlier-prob", type=float, default=0.0)
    p.add_argument("--tick-every-ms", type=float, default=0.0)
    p.add_argument("--max-batch", type=int, default=16, help="baselines: Triton's max batch size")
    p.add_argument("--max-queue-delay-ms", type=float, default=1.0, help="baselines: Triton's max queue delay")
    p.add_argument("--baseline-replicas", action="store_true", help="baselines replicate hot models too")
    p.add_argument("--no-heartbeats", action="store_true")
    p.add_argument("--wire", action="store_true", help="every message through the codec (slow)")
    p.add_argument("--logs", action="store_true", help="write request/action logs whatever the run's size")
    p.add_argument("--no-logs", action="store_true", help="never write request/action logs")
    p.add_argument("--out", default="out/sim")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    workers = args.workers or max(1, math.ceil(args.gpus / args.devices_per_worker))
    sim = SimConfig(workers=workers, devices_per_worker=args.devices_per_worker,
                    device_memory_bytes=int(args.gpu_memory_gb * GB),
                    network_delay_ns=int(args.network_delay_ms * MS), noise_sigma=args.noise_sigma,
                    outlier_probability=args.outlier_prob, tick_every_ns=int(args.tick_every_ms * MS),
                    measure_from_ns=int(args.measure_from_s * NS_PER_S), heartbeats=not args.no_heartbeats,
                    wire=args.wire, seed=args.seed)
    sched = SchedulerConfig()
    if args.no_heartbeats:
        sched = replace(sched, worker_timeout_ns=1 << 60)
    rate = args.rate or args.load_factor * capacity_per_s(sim.gpus)
    return RunSpec(scheduler=args.scheduler, sim=sim, sched=sched, models=args.models, slo_ms=args.slo_ms,
                   workload=args.workload, rate_per_s=rate, duration_s=args.duration_s, zipf=args.zipf,
                   workload_seed=args.seed, clients=args.clients, think_ms=args.think_ms, azure_csv=args.azure_csv,
                   azure_scale=args.azure_scale, azure_start_minute=args.azure_start_minute,
                   max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                   baseline_replicas=args.baseline_replicas, prewarm_s=args.prewarm_s)


def _runlog_for(args: argparse.Namespace, schedule):
    """bench.runlog's RunLog when logs are wanted (and the module is there), else None."""
    if args.no_logs:
        return None
    size = len(schedule) if isinstance(schedule, workload.Schedule) else 0
    if not args.logs and size > LOG_LIMIT:
        return None
    try:
        from clockwork.bench.runlog import RunLog
    except ImportError:
        return None
    return RunLog()


def _write_outputs(args: argparse.Namespace, spec: RunSpec, s: dict, runlog, name: str) -> None:
    out_dir = Path(args.out)
    write_summary(out_dir, s, name)
    if runlog is not None:
        from clockwork.bench.runlog import write_run

        write_run(out_dir / name, runlog, f"{name}: {spec.workload}, {spec.sim.gpus} GPUs, {spec.models} models",
                  spec.slo_ms)
    else:
        write_cdf_png(out_dir / f"{name}-latency-cdf.png", {name: s["latencies"]}, spec.slo_ms,
                      title=f"{name}: latency of OK replies")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = spec_from_args(args)
    schedule = build_schedule(spec)
    schedulers = ("clockwork", "fifo") if args.compare else (args.scheduler,)
    results = {}
    for name in schedulers:
        run_spec = replace(spec, scheduler=name)
        runlog = _runlog_for(args, schedule)
        progress = NullProgress() if args.quiet else Progress(spec.duration_s + spec.prewarm_s, label=f"sim {name}")
        with progress:
            s = run(run_spec, schedule=schedule, runlog=runlog, progress=progress)
        results[name] = s
        print(format_result(s), end="\n\n")
        _write_outputs(args, run_spec, s, runlog, name)
    if args.compare:
        print(format_comparison(results["clockwork"], results["fifo"]))
        write_json(Path(args.out) / "compare.json", comparison(results["clockwork"], results["fifo"]))
    print(f"written to {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
