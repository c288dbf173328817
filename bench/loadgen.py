"""Open-loop load generator: one thread, one DEALER, thousands of requests a second.

Rules of measurement:
- Open loop. Each request is sent at its scheduled time whatever happened to earlier ones; a
  slow reply never delays the next send (that would be a closed loop, which hides overload).
- No coordinated omission. Latency = reply received - request *scheduled*, not - sent: when
  the generator itself falls behind, the lateness counts against the system rather than
  vanishing. How late sends were is recorded separately (`send_lag`) so a saturated generator
  is visible in the report instead of silently flattering the numbers.
- Percentiles from HDR histograms (bench.report.Latencies), never from sorted lists.

The loop is: send everything due, read every reply already here, sleep in `poll` until the
next send is due (or a reply arrives). Request ids are consecutive from a random base, so a
reply finds its request by subtraction, without a dict.

Example:
    sched = workload.poisson_schedule(workload.zipf_rates(500, 10), duration_s=30, seed=1)
    results = run_open_loop("tcp://127.0.0.1:5555", sched, names, slo_ms=100,
                            inputs_by_model={n: inputs for n in names})
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import zmq

from bench.progress import NullProgress, Progress
from bench.report import Latencies
from bench.workload import Schedule
from common.checks import BadMessage
from client.protocol import build_infer
from common.codec import decode, encode
from common.net import IdSource, dealer, recv_frames
from common.schema import InferReply
from common.status import Status

TICK_S = 0.1  # how often progress is drawn and the health check runs
MAX_SLEEP_MS = 100  # never sleep longer than this, so ticks stay on time
SEND_FAILED = "SEND_FAILED"  # the socket refused a send (high-water mark reached)
BAD_REPLY = "BAD_REPLY"  # a reply that did not decode


@dataclass
class GroupResults:
    """Outcomes for one group of models (e.g. "emulated", "onnx") sharing an SLO."""

    slo_ms: float
    sent: int = 0
    ok: int = 0
    met_slo: int = 0
    latency: Latencies = field(default_factory=Latencies)


@dataclass
class LoadResults:
    scheduled: int  # requests in the schedule
    schedule_duration_ns: int
    sent: int = 0
    answered: int = 0
    unanswered: int = 0  # sent, but no reply before the drain deadline
    met_slo: int = 0  # OK and latency <= the model's SLO
    cold_starts: int = 0
    stray_replies: int = 0  # replies to no request of ours, or a second reply to one
    duration_ns: int = 0  # first scheduled send -> end of the run
    by_status: Counter = field(default_factory=Counter)  # status name -> replies
    first_detail: dict[str, str] = field(default_factory=dict)  # status name -> its first detail
    batch_sizes: Counter = field(default_factory=Counter)  # batch size -> OK replies
    workers: Counter = field(default_factory=Counter)  # worker name -> OK replies
    latency: Latencies = field(default_factory=Latencies)  # OK replies, from scheduled send
    reject_latency: Latencies = field(default_factory=Latencies)  # non-OK replies
    exec_time: Latencies = field(default_factory=Latencies)  # worker-measured, OK replies
    send_lag: Latencies = field(default_factory=Latencies)  # sent - scheduled
    groups: dict[str, GroupResults] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.by_status.get("OK", 0)

    @property
    def rejected(self) -> int:
        return self.answered - self.ok


def per_model(value: float | Sequence[float] | Mapping[str, float], models: Sequence[str], what: str) -> list:
    """A scalar, a list by model index, or a map by model name -> a list by model index."""
    if isinstance(value, Mapping):
        missing = [m for m in models if m not in value]
        if missing:
            raise ValueError(f"{what}: no value for model(s) {', '.join(missing)}")
        return [value[m] for m in models]
    if isinstance(value, (int, float)):
        return [value] * len(models)
    values = list(value)
    if len(values) != len(models):
        raise ValueError(f"{what}: {len(values)} values for {len(models)} models")
    return values


class _OpenLoop:
    """The state of one run; `run()` is the loop, the rest are its steps."""

    def __init__(self, sock: zmq.Socket, schedule: Schedule, models: Sequence[str], slo_ms: list[float],
                 inputs: list[Mapping[str, np.ndarray]], groups: list[str | None], priority: int):
        self.sock = sock
        self.times = schedule.times_ns.tolist()
        self.model_of = schedule.models.tolist()
        self.slo_ns = [int(s * 1e6) for s in slo_ms]
        # One body per model, built (and checked) once by the client library's shared builder;
        # only the header's msg_id and sent_ns change from one request to the next.
        self.bodies = [build_infer(m, inputs[i], self.slo_ns[i], priority) for i, m in enumerate(models)]
        self.group_of = groups
        self.res = LoadResults(len(self.times), schedule.duration_ns)
        for label, slo in sorted({(g, s) for g, s in zip(groups, slo_ms) if g is not None}):
            if label in self.res.groups and self.res.groups[label].slo_ms != slo:
                raise ValueError(f"group {label!r} mixes SLOs; give each SLO its own group")
            self.res.groups[label] = GroupResults(slo)
        self.base_id = IdSource().next()
        self.answered = bytearray(len(self.times))
        self.next_index = 0
        self.outstanding = 0
        self.start_ns = 0

    def send_due(self, now_ns: int) -> None:
        times, start, res = self.times, self.start_ns, self.res
        while self.next_index < len(times) and start + times[self.next_index] <= now_ns:
            index = self.next_index
            self.next_index += 1
            model = self.model_of[index]
            sent_ns = time.monotonic_ns()
            frames = encode(self.bodies[model], self.base_id + index, sent_ns=sent_ns)
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                res.by_status[SEND_FAILED] += 1
                continue
            res.sent += 1
            self.outstanding += 1
            res.send_lag.record_ns(sent_ns - (start + times[index]))
            label = self.group_of[model]
            if label is not None:
                res.groups[label].sent += 1
            now_ns = sent_ns

    def receive_ready(self) -> None:
        while True:
            try:
                frames = recv_frames(self.sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_reply(frames, time.monotonic_ns())

    def on_reply(self, frames: list, recv_ns: int) -> None:
        res = self.res
        try:
            envelope = decode(frames)
        except BadMessage:
            res.by_status[BAD_REPLY] += 1
            return
        index = envelope.parent_id - self.base_id
        if not 0 <= index < self.next_index or self.answered[index]:
            res.stray_replies += 1
            return
        self.answered[index] = 1
        self.outstanding -= 1
        res.answered += 1
        body = envelope.body
        status = getattr(body, "status", Status.INTERNAL)
        res.by_status[status.name] += 1
        if status.name not in res.first_detail:
            res.first_detail[status.name] = getattr(body, "detail", "")
        latency_ns = recv_ns - (self.start_ns + self.times[index])
        if status is not Status.OK or not isinstance(body, InferReply):
            res.reject_latency.record_ns(latency_ns)
            return
        self.on_ok(self.model_of[index], body, latency_ns)

    def on_ok(self, model: int, body: InferReply, latency_ns: int) -> None:
        res = self.res
        res.latency.record_ns(latency_ns)
        res.exec_time.record_ns(body.exec_ns)
        res.batch_sizes[body.batch_size] += 1
        res.workers[body.worker] += 1
        res.cold_starts += body.cold_start
        met = latency_ns <= self.slo_ns[model]
        res.met_slo += met
        label = self.group_of[model]
        if label is not None:
            group = res.groups[label]
            group.ok += 1
            group.met_slo += met
            group.latency.record_ns(latency_ns)

    def run(self, progress: Progress, drain_timeout_ns: int, start_delay_ns: int,
            on_tick: Callable[[], None] | None) -> LoadResults:
        n = len(self.times)
        self.start_ns = time.monotonic_ns() + start_delay_ns
        total_s = max(self.res.schedule_duration_ns / 1e9, 1e-9)
        drain_deadline_ns = None
        next_tick_ns = self.start_ns
        while True:
            now_ns = time.monotonic_ns()
            self.send_due(now_ns)
            self.receive_ready()
            now_ns = time.monotonic_ns()
            if now_ns >= next_tick_ns:
                next_tick_ns = now_ns + int(TICK_S * 1e9)
                self.tick(progress, now_ns, total_s, on_tick)
            if self.next_index >= n:
                if self.outstanding == 0:
                    break
                if drain_deadline_ns is None:
                    drain_deadline_ns = now_ns + drain_timeout_ns
                elif now_ns >= drain_deadline_ns:
                    break
                wake_ns = min(drain_deadline_ns, next_tick_ns)
            else:
                wake_ns = min(self.start_ns + self.times[self.next_index], next_tick_ns)
            # Round up: waking early would spin the CPU the daemons need; a late send is
            # accounted for anyway (latency counts from the scheduled time).
            wait_ms = min(MAX_SLEEP_MS, math.ceil((wake_ns - time.monotonic_ns()) / 1e6))
            if wait_ms > 0:
                self.sock.poll(wait_ms, zmq.POLLIN)
        end_ns = time.monotonic_ns()
        self.tick(progress, end_ns, total_s, None, force=True)
        self.res.unanswered = self.outstanding
        self.res.duration_ns = max(0, end_ns - self.start_ns)
        return self.res

    def tick(self, progress: Progress, now_ns: int, total_s: float, on_tick: Callable[[], None] | None,
             force: bool = False) -> None:
        elapsed_s = min(max(0.0, (now_ns - self.start_ns) / 1e9), total_s)
        progress.update(elapsed_s, self.res.sent, self.res.ok, self.res.rejected, force=force)
        if on_tick is not None:
            on_tick()


def run_open_loop(endpoint: str, schedule: Schedule, models: Sequence[str],
                  slo_ms: float | Sequence[float] | Mapping[str, float],
                  inputs_by_model: Mapping[str, Mapping[str, np.ndarray]], progress: Progress | None = None, *,
                  groups: Sequence[str | None] | Mapping[str, str] | None = None, priority: int = 0,
                  drain_timeout_s: float | None = None, start_delay_s: float = 0.05,
                  on_tick: Callable[[], None] | None = None, ctx: zmq.Context | None = None) -> LoadResults:
    """Play `schedule` against the controller's client endpoint and measure every reply.

    models: names, indexed by the schedule's model indices.
    slo_ms: one SLO, one per model index, or a map by name; sent as each request's slo_ns and
        used to count "met SLO" (OK and latency from the scheduled send within it).
    inputs_by_model: by model name, the {input name: array} each request carries (batch
        dimension first, e.g. shape [1, 64] for one sample).
    groups: optional label per model (list by index or map by name) for per-group latency.
    drain_timeout_s: how long to wait for the last replies after the last send; default the
        largest SLO plus 5 s, after which requests still unanswered are counted as such.
    on_tick: called every ~0.1 s; raise from it (e.g. a process died) to abort the run.
    """
    if len(schedule) and int(schedule.models.max()) >= len(models):
        raise ValueError(f"the schedule uses model index {int(schedule.models.max())}; only {len(models)} names given")
    slos = [float(s) for s in per_model(slo_ms, models, "slo_ms")]
    inputs = [inputs_by_model[m] if m in inputs_by_model else _missing(m) for m in models]
    labels = per_model(groups, models, "groups") if groups is not None else [None] * len(models)
    drain_s = drain_timeout_s if drain_timeout_s is not None else max(slos, default=0) / 1000 + 5.0
    own_ctx = ctx is None
    context = zmq.Context() if own_ctx else ctx
    sock = dealer(context, endpoint)
    try:
        loop = _OpenLoop(sock, schedule, models, slos, inputs, labels, priority)
        return loop.run(progress or NullProgress(), int(drain_s * 1e9), int(start_delay_s * 1e9), on_tick)
    finally:
        sock.close(linger=0)
        if own_ctx:
            context.term()


def _missing(model: str) -> tuple:
    raise ValueError(f"inputs_by_model has no inputs for model {model!r}")


def rates_summary(schedule: Schedule) -> str:
    """"N requests over D s (R/s) to M models" for logs."""
    counts = schedule.counts()
    used = int(np.count_nonzero(counts))
    seconds = schedule.duration_ns / 1e9
    return f"{len(schedule)} requests over {seconds:g} s ({len(schedule) / seconds:.0f}/s) to {used} models"
