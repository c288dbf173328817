"""The simulator's event loop: the scheduling core and the emulated workers in virtual time.

Theory of operation
- Time is an integer of nanoseconds. Pending events sit in a heap of (time, seq, kind, a, b);
  `seq` breaks ties in insertion order, so a run never depends on comparing payloads or on hash
  order. Open-loop arrivals come from the workload's sorted arrays, merged with the heap rather
  than pushed into it (tens of millions of requests would not fit as heap entries).
- After every batch of events at one instant the core's `tick` runs, as the daemon ticks after
  each poll; it also runs when `core.next_wakeup_ns` comes due (never more often than
  `min_tick_gap_ns` when the core asks for a time already past). With `tick_every_ns > 0` the
  ticks after events are coalesced to one per that interval (a daemon draining bursts).
- The workers are bench/sim/cluster.py's, with the worker's rules. Every controller <-> worker
  message takes `network_delay_ns`.
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
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clockwork.bench import workload
from clockwork.bench.loopback import Link
from clockwork.bench.models import RESNET50_V100, profile_json
from clockwork.bench.progress import NullProgress, Progress
from clockwork.bench.report import Latencies
from clockwork.bench.sim import instructions
from clockwork.bench.sim.cluster import Cluster, Lane
from clockwork.bench.sim.config import NS_PER_S, SimConfig
from clockwork.common import schema
from clockwork.common.config import MS
from clockwork.common.models import EmulatedProfile, parse_profile
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller.effects import (
    ActionRecord,
    PrepareOn,
    ToClient,
    ToWorker,
    UploadFinished,
    WorkerLost,
)
from clockwork.controller.invariants import check_invariants

CLIENT = b"sim-client"
ADMIN = b"sim-admin"
_CHUNK = 1 << 16  # open-loop arrivals converted to Python ints this many at a time

# event kinds
_TO_CORE, _TO_DEVICE, _LANE, _HEARTBEAT, _SEND, _PREPARE = range(6)


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
        self.counters_at_measure: Counter = Counter()  # the core's counters when measuring began
        self.per_second: dict[str, list[int]] = {}
        self.cluster = Cluster(cfg, self.profile, core.cfg.batch_sizes, self._from_worker, self._wake)
        self.now = 0
        self._heap: list = []
        self._seq = 0
        self._next_tick = 0
        self._last_tick = -1
        self._measure_ns = cfg.warmup_ns + cfg.measure_from_ns
        self._measuring = False
        self._busy_at_measure: list[int] = []
        self._idle_at_measure = (0, 0)
        self._traffic_end_ns = 0
        self._uploads_left = 0
        self._hb_interval = core.cfg.heartbeat_interval_ns
        self._msg_ids = 1 << 40  # worker-side message ids (heartbeats), apart from the core's
        self._clock_bias_ns = _empty_reading_ns()
        self._send_ns: list[int] | np.ndarray = []  # request id -> scheduled send time
        self._model_of: list[int] | np.ndarray = []  # request id -> model index
        self._answered = bytearray()
        self._admitting: int | None = None  # request id inside on_request (its reply = a rejection)
        self._last_reply = (0, 0)  # the clients' last OK reply (request id, arrival), which requests report
        self._closed: workload.ClosedLoop | None = None
        self._client_of: list[int] = []
        self._build_messages()

    # ---------------------------------------------------------------- prebuilt messages

    def _build_messages(self) -> None:
        """Every request's message is built once here and shared."""
        sig = self.profile.signature
        if len(sig.inputs) != 1:
            raise ValueError("the simulator's requests carry one input tensor")
        spec = sig.inputs[0]
        tensor = Tensor.from_array(spec.name, np.zeros((1, *spec.shape), dtype=spec.dtype))
        self.infer_bodies = [schema.Infer(model=n, slo_ns=self.slo_ns, tensors=(tensor,)) for n in self.names]

    # ---------------------------------------------------------------- calling the core

    def _push(self, t: int, kind: int, a, b=None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _window(self) -> Outcome | None:
        """Where the CPU time of a call at `now` counts (None: set-up)."""
        if self.now >= self._measure_ns:
            if not self._measuring:
                self._measuring = True
                if instructions.counting():
                    instructions.start_counting()
                self.counters_at_measure = Counter(self.core.counters)
                self._busy_at_measure = self.cluster.busy_ns()
                self._idle_at_measure = self._lanes_idle_ns()
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
                self._push(now + self.cfg.network_delay_ns, _PREPARE, effect.worker, (effect.msg_id, effect.model))
            elif kind is ActionRecord:
                if self.runlog is not None:
                    self._log_action(effect)
            elif kind is WorkerLost:
                pass  # counted by the core (workers_lost); the simulator's summary reads the counters
            elif kind is UploadFinished:
                if effect.status is not Status.OK:
                    raise RuntimeError(f"upload of {effect.model} failed: {effect.status.name}: {effect.detail}")
                self._uploads_left -= 1

    def _log_action(self, a: ActionRecord) -> None:
        """An action log row, times relative to the start of traffic (runlog's convention)."""
        t0 = self.cfg.warmup_ns
        self.runlog.action(a.action_id, a.kind.name, a.worker, a.device, a.model,
                           a.batch_size, a.sent_ns - t0, a.begin_ns - t0, a.end_ns - t0, a.predicted_ns or -1,
                           a.measured_ns, a.status)

    # ---------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Workers say HELLO and every model is uploaded and prepared, from time 0."""
        cfg = self.cfg
        for w in range(cfg.workers):
            name = f"w{w:03d}"
            hello = self.cluster.add_worker(name)
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
            self.cluster.deliver(a, b[0], b[1], self.now)
        elif kind == _LANE:
            self.cluster.lane_event(a, b, self.now)
        elif kind == _HEARTBEAT:
            self._msg_ids += 1
            msg = self.link.carry(schema.Heartbeat(lanes_alive=True), self._msg_ids, 0, self.now)
            self._push(self.now + self.cfg.network_delay_ns, _TO_CORE, a, (self._msg_ids, msg))
            self._push(self.now + self._hb_interval, _HEARTBEAT, a)
        elif kind == _PREPARE:  # it reached the worker, which answers after preparing
            msg_id, model = b
            msg = self.link.carry(self.cluster.prepare(a, model), 0, msg_id, self.now)
            self._push(self.now + self.cfg.prepare_ns + self.cfg.network_delay_ns, _TO_CORE, a, (0, msg))
        else:  # _SEND: a closed-loop client sends its next request
            self._send_closed(a, b)

    # ---------------------------------------------------------------- clients

    def _arrive(self, request_id: int, model: int) -> None:
        sent_ns = int(self._send_ns[request_id])
        out = self.out if sent_ns >= self._measure_ns else self.warm
        out.offered += 1
        self._series("offered", sent_ns)
        self._admitting = request_id
        body = self.infer_bodies[model]
        last_id, last_ns = self._last_reply
        if last_id:  # as the client library does: the last OK reply, with when it arrived
            body = dataclasses.replace(body, last_reply_id=last_id, last_reply_received_ns=last_ns)
        self._call(self.core.on_request, CLIENT, request_id, body, self.now, 0, last_ns if last_id else None)
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
            self._last_reply = (rid, reply_ns)
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

    def _from_worker(self, worker: str, action_id: int, msg: schema.Result, sent_ns: int) -> None:
        msg = self.link.carry(msg, 0, action_id, sent_ns)
        self._push(sent_ns + self.cfg.network_delay_ns, _TO_CORE, worker, (action_id, msg))

    def _wake(self, t: int, lane: Lane, finished: tuple | None) -> None:
        self._push(t, _LANE, lane, finished)

    def utilisation(self) -> list[float]:
        """Share of the measured window (to the last arrival) each device spent executing."""
        span = max(1, self._traffic_end_ns - self._measure_ns)
        before = self._busy_at_measure or [0] * self.cfg.gpus
        busy = self.cluster.busy_ns()
        return [min(1.0, (b - a) / span) for a, b in zip(before, busy)]

    def idle_with_work(self) -> tuple[float, float]:
        """Share of the measured window the mean device's lane idled while the next run's work
        waited, on the controller and on the worker (Core._lane_gap): planning left unused."""
        span = max(1, self._traffic_end_ns - self._measure_ns) * self.cfg.gpus
        before, after = self._idle_at_measure, self._lanes_idle_ns()
        return (after[0] - before[0]) / span, (after[1] - before[1]) / span

    def _lanes_idle_ns(self) -> tuple[int, int]:
        devices = [d for w in self.core.workers.values() for d in w.devices.values()]
        return sum(d.lane_idle_controller_ns for d in devices), sum(d.lane_idle_worker_ns for d in devices)


_clock = time.process_time_ns


def _empty_reading_ns(samples: int = 2001) -> int:
    """What timing an empty interval reads (the clock's own cost), the median of many."""
    readings = []
    for _ in range(samples):
        t0 = _clock()
        readings.append(_clock() - t0)
    return sorted(readings)[samples // 2]
