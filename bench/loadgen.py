"""Open-loop load generator: one thread, one DEALER, tens of thousands of requests a second.

Rules of measurement:
- Open loop. Each request is sent at its scheduled time whatever happened to earlier ones; a
  slow reply never delays the next send (that would be a closed loop, which hides overload).
- No coordinated omission. Latency = reply received - request *scheduled*, not - sent: when
  the generator itself falls behind, the lateness counts against the system rather than
  vanishing. How late sends were is recorded separately (`send_lag`) so a saturated generator
  is visible in the report instead of silently flattering the numbers.
- Percentiles from HDR histograms (bench.report.Latencies), never from sorted lists.
- The generator's own garbage collections must not count against the system: a full one of
  this process, with its reply list growing, stalled it 17-33 ms and read replies in time
  late. A run goes with the daemons' settings (common/gc_tuning.py), start-up objects frozen.

The loop is: send everything due, read every reply already here, sleep in `poll` until the
next send is due (or a reply arrives). Request ids are consecutive from a random base, so a
reply finds its request by subtraction, without a dict.

What keeps the per-request cost low (a few microseconds of Python each way):
- Each model's INFER is encoded once (by the client library's shared builder and the codec's
  `Template`); per send only the header's msg_id and sent_ns change, with the last OK reply it
  reports (as the client library does: the controller times the way back with it), spliced into
  the packed header by the codec.
- Every request due at one wake-up leaves in one bundle (schema.BUNDLE), and the controller
  answers a batch's requests in one bundle too, so ZeroMQ's per-message cost (and the
  controller's per-message loop) is paid per wake-up and per batch, not per request.
- A reply is split from its bundle by `codec.split`, matched to its request by `codec.peek_id`,
  and its header frame kept by request index; decoding (`codec.decode`, header only), status
  names, histograms and the request log are all done once after the run, not per reply.
- With `procs=N` the schedule is split round-robin over N generator processes that start at
  the same monotonic instant (CLOCK_MONOTONIC is system-wide), and their results are merged.

Example:
    sched = workload.poisson_schedule(workload.zipf_rates(500, 10), duration_s=30, seed=1)
    results = run_open_loop("tcp://127.0.0.1:5555", sched, names, slo_ms=100,
                            inputs_by_model={n: inputs for n in names})
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import zmq

from clockwork.bench.progress import NullProgress, Progress
from clockwork.bench.relay import HELLO
from clockwork.bench.report import GroupResults, LoadResults
from clockwork.bench.workload import Schedule
from clockwork.client.protocol import build_infer
from clockwork.common import gc_tuning
from clockwork.common.checks import BadMessage
from clockwork.common.codec import Template, bundle, bundle_header, decode, peek_id, split
from clockwork.common.net import IdSource, dealer, recv_frames
from clockwork.common.schema import MAX_BUNDLE_PARTS, Error, InferReply
from clockwork.common.status import Status

if TYPE_CHECKING:
    from clockwork.bench.runlog import RunLog

TICK_S = 0.1  # how often progress is drawn and the health check runs
MAX_SLEEP_MS = 100  # never sleep longer than this, so ticks stay on time
SEND_FAILED = "SEND_FAILED"  # the socket refused a send (high-water mark reached)
BAD_REPLY = "BAD_REPLY"  # a reply that did not decode
UNANSWERED = "UNANSWERED"  # sent, no reply before the drain deadline (request log only)
# Codes in the raw status array beside the (non-negative) Status values.
CODE_UNANSWERED = -1
CODE_SEND_FAILED = -2
CODE_BAD_REPLY = -3
SNDHWM = 1_000_000  # the generator must never be the one to refuse a send
# What each request's header takes from one send to the next (Template): its id and send time,
# and the last OK reply it reports (schema.Infer.last_reply_*).
REPORTING = ("msg_id", "sent_ns", "last_reply_id", "last_reply_received_ns")


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


# ----------------------------------------------------------------------------- raw results


@dataclass
class RawResults:
    """What one loop saw, by request index (numpy arrays), before any summary is made."""

    base_id: int  # request i went out with msg_id base_id + i
    start_ns: int  # monotonic time of schedule offset 0
    end_ns: int  # monotonic time the loop ended
    status: np.ndarray  # int16: Status value, or CODE_UNANSWERED / CODE_SEND_FAILED / CODE_BAD_REPLY
    sent_ns: np.ndarray  # int64 monotonic send time, 0 if never sent
    recv_ns: np.ndarray  # int64 monotonic reply time, 0 if none
    queue_ns: np.ndarray  # int64, OK replies only (else -1)
    exec_ns: np.ndarray  # int64, OK replies only (else -1)
    batch_size: np.ndarray  # int32, OK replies only (else 0)
    cold_start: np.ndarray  # int8
    worker: np.ndarray  # int32 index into `workers`, -1 if none
    workers: list[str]  # worker names
    first_detail: dict[str, str]  # status name -> detail of its first reply
    bad_replies: int = 0  # replies that did not decode (not attributable to a request)
    stray_replies: int = 0


class _OpenLoop:
    """The state of one run; `run()` is the loop, the rest are its steps."""

    def __init__(self, sock: zmq.Socket, schedule: Schedule, models: Sequence[str], slo_ms: list[float],
                 inputs: list[Mapping[str, np.ndarray]], priority: int, drain_ns: int, counters: Any = None):
        self.sock = sock
        self.drain_ns = drain_ns  # how long the last replies are waited for (see next_wake_ns)
        self.drain_deadline_ns: int | None = None
        self.times = schedule.times_ns.tolist()
        self.model_of = schedule.models.tolist()
        self.schedule_duration_ns = schedule.duration_ns
        slo_ns = [int(s * 1e6) for s in slo_ms]
        # One body per model, built (and checked) once by the client library's shared builder;
        # only the header's msg_id and sent_ns change from one request to the next, and the last
        # OK reply each request reports, as the client library's do (ClientCore.last_reply).
        self.templates = [Template(build_infer(m, inputs[i], slo_ns[i], priority), REPORTING)
                          for i, m in enumerate(models)]
        self.last_reply = (0, 0)  # (request id, arrival) of the last OK reply
        n = len(self.times)
        self.base_id = IdSource().next()
        self.replies: list = [None] * n  # index -> (recv_ns, reply header frame), or CODE_SEND_FAILED
        self.sent_at = [0] * n
        self.next_index = 0
        self.sent = self.answered = self.ok = 0
        self.bad_replies = self.stray_replies = 0
        self.first_bad: list = []
        self.start_ns = 0
        self.counters = counters  # a shared array [sent, ok, rejected] for a parent's progress
        self.track: list[int] | None = None  # a closed loop collects answered indices here

    def send_due(self, now_ns: int) -> None:
        """Send every request now due, as one bundle (schema.BUNDLE) of up to MAX_BUNDLE_PARTS."""
        times, model_of, templates = self.times, self.model_of, self.templates
        sent_at = self.sent_at
        i, n, start, base = self.next_index, len(times), self.start_ns, self.base_id
        monotonic_ns = time.monotonic_ns
        frames: list = []
        parts: list[int] = []
        first = i
        last_id, last_ns = self.last_reply
        while i < n and start + times[i] <= now_ns:
            tpl = templates[model_of[i]]
            sent_ns = monotonic_ns()
            frames.append(tpl.header(base + i, sent_ns, last_id, last_ns))
            frames.extend(tpl.tail)
            parts.append(tpl.n_frames)
            sent_at[i] = sent_ns
            i += 1
            now_ns = sent_ns
            if len(parts) == MAX_BUNDLE_PARTS:
                self._send(frames, parts, first, i)
                frames, parts, first = [], [], i
        if parts:
            self._send(frames, parts, first, i)
        self.next_index = i

    def _send(self, frames: list, parts: list[int], first: int, end: int) -> None:
        """Requests first..end-1 (their frames back to back), in one ZeroMQ message."""
        if len(parts) > 1:
            frames.insert(0, bundle_header(parts))
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            for i in range(first, end):
                self.replies[i] = CODE_SEND_FAILED
                self.sent_at[i] = 0
        else:
            self.sent += end - first

    def receive_ready(self) -> None:
        sock, noblock, record = self.sock, zmq.NOBLOCK, self._record
        monotonic_ns = time.monotonic_ns
        while True:
            try:
                frames = recv_frames(sock, noblock)
            except zmq.Again:
                return
            recv_ns = monotonic_ns()
            try:
                messages = split(frames)
            except BadMessage:
                self._bad(frames)
                continue
            for header, part in messages:
                record(header, recv_ns, part)

    def _record(self, header: dict | None, recv_ns: int, frames: Sequence) -> None:
        """One reply: its header frame kept by request index (decoded after the run)."""
        if header is None:
            self._bad(frames)
            return
        index = peek_id(header, "parent_id") - self.base_id
        replies = self.replies
        if not 0 <= index < self.next_index or replies[index] is not None:
            self.stray_replies += 1
            return
        replies[index] = (recv_ns, bytes(frames[0]))
        self.answered += 1
        if header.get("status") == Status.OK:  # for the progress line (collect() decides) and the report
            self.ok += 1
            self.last_reply = (self.base_id + index, recv_ns)
        if self.track is not None:
            self.track.append(index)

    def _bad(self, frames: list) -> None:
        self.bad_replies += 1
        if not self.first_bad:
            self.first_bad.append(frames)

    def run(self, progress: Progress, start_ns: int, on_tick: Callable[[], None] | None) -> RawResults:
        """The loop of open and closed loops alike; `next_wake_ns` says when it is over."""
        self.start_ns = start_ns
        total_s = max(self.schedule_duration_ns / 1e9, 1e-9)
        next_tick_ns = start_ns
        poll = self.sock.poll
        while True:
            now_ns = time.monotonic_ns()
            self.send_due(now_ns)
            self.receive_ready()
            now_ns = time.monotonic_ns()
            if now_ns >= next_tick_ns:
                next_tick_ns = now_ns + int(TICK_S * 1e9)
                self.tick(progress, now_ns, total_s, on_tick)
            wake_ns = self.next_wake_ns(now_ns, next_tick_ns)
            if wake_ns is None:
                break
            # Round up: waking early would spin the CPU the daemons need; a late send is
            # accounted for anyway (latency counts from the scheduled time).
            wait_ms = min(MAX_SLEEP_MS, math.ceil((wake_ns - time.monotonic_ns()) / 1e6))
            if wait_ms > 0:
                poll(wait_ms, zmq.POLLIN)
        end_ns = time.monotonic_ns()
        self.tick(progress, end_ns, total_s, None, force=True)
        return self.collect(end_ns)

    def next_wake_ns(self, now_ns: int, next_tick_ns: int) -> int | None:
        """When the loop has something to do next, the next tick at the latest; None once the
        whole schedule is sent and answered, or the drain deadline after it has passed."""
        if self.next_index < len(self.times):
            return min(self.start_ns + self.times[self.next_index], next_tick_ns)
        if self.answered >= self.sent:
            return None
        if self.drain_deadline_ns is None:
            self.drain_deadline_ns = now_ns + self.drain_ns
        elif now_ns >= self.drain_deadline_ns:
            return None
        return min(self.drain_deadline_ns, next_tick_ns)

    def tick(self, progress: Progress, now_ns: int, total_s: float, on_tick: Callable[[], None] | None,
             force: bool = False) -> None:
        elapsed_s = min(max(0.0, (now_ns - self.start_ns) / 1e9), total_s)
        progress.update(elapsed_s, self.sent, self.ok, self.answered - self.ok, force=force)
        if self.counters is not None:
            self.counters[0], self.counters[1], self.counters[2] = self.sent, self.ok, self.answered - self.ok
        if on_tick is not None:
            on_tick()

    def collect(self, end_ns: int) -> RawResults:
        """The replies, decoded and laid out as arrays (once, after the run)."""
        n = len(self.times)
        status = np.full(n, CODE_UNANSWERED, dtype=np.int16)
        recv = np.zeros(n, dtype=np.int64)
        queue = np.full(n, -1, dtype=np.int64)
        exec_ = np.full(n, -1, dtype=np.int64)
        batch = np.zeros(n, dtype=np.int32)
        cold = np.zeros(n, dtype=np.int8)
        worker = np.full(n, -1, dtype=np.int32)
        worker_ids: dict[str, int] = {}
        first_detail: dict[str, str] = {"OK": ""}
        for i, reply in enumerate(self.replies):
            if reply is None:
                continue
            if isinstance(reply, int):  # CODE_SEND_FAILED
                status[i] = CODE_SEND_FAILED
                continue
            recv[i] = reply[0]
            try:
                body = _reply_body(reply[1])
            except BadMessage as exc:
                status[i] = CODE_BAD_REPLY
                first_detail.setdefault(BAD_REPLY, exc.detail)
                continue
            status[i] = body.status
            if body.status is Status.OK:
                queue[i], exec_[i], batch[i], cold[i] = body.queue_ns, body.exec_ns, body.batch_size, body.cold_start
                worker[i] = worker_ids.setdefault(body.worker, len(worker_ids))
            else:
                first_detail.setdefault(body.status.name, body.detail)
        for frames in self.first_bad[:1]:
            first_detail.setdefault(BAD_REPLY, _why_bad(frames))
        return RawResults(self.base_id, self.start_ns, end_ns, status, np.array(self.sent_at, dtype=np.int64), recv,
                          queue, exec_, batch, cold, worker, list(worker_ids), first_detail, self.bad_replies,
                          self.stray_replies)


def _reply_body(header: bytes) -> InferReply | Error:
    """The reply in a kept header frame, decoded by the codec; BadMessage for anything but an
    INFER reply or an ERROR that refuses (an OK needs the INFER reply's fields)."""
    body = decode([header], header_only=True).body
    if isinstance(body, InferReply) or (isinstance(body, Error) and body.status is not Status.OK):
        return body
    raise BadMessage(Status.BAD_MESSAGE, f"an INFER answered by a {body.TYPE.value} message"
                                         + (" with status OK" if isinstance(body, Error) else ""))


def _why_bad(frames: list) -> str:
    """The codec's reason for refusing a reply that could not be matched to a request."""
    try:
        for header, part in split(frames):
            decode(part, header)
    except BadMessage as exc:
        return exc.detail
    return "a reply the codec accepts on a second reading"


# ----------------------------------------------------------------------------- results


def results_from_raw(raw: RawResults, schedule: Schedule, slo_ms: Sequence[float],
                     groups: Sequence[str | None]) -> LoadResults:
    """The LoadResults (counts and HDR histograms) of a run, from its raw arrays."""
    res = LoadResults(len(schedule), schedule.duration_ns)
    for label, slo in sorted({(g, s) for g, s in zip(groups, slo_ms) if g is not None}):
        if label in res.groups and res.groups[label].slo_ms != slo:
            raise ValueError(f"group {label!r} mixes SLOs; give each SLO its own group")
        res.groups[label] = GroupResults(slo)
    status, models = raw.status, schedule.models
    sent = status != CODE_SEND_FAILED
    answered = status >= 0
    ok = status == 0
    res.sent = int(sent.sum())
    res.answered = int(answered.sum())
    res.unanswered = int((status == CODE_UNANSWERED).sum())
    res.stray_replies = raw.stray_replies
    res.duration_ns = max(0, raw.end_ns - raw.start_ns)
    res.start_ns = raw.start_ns
    codes, counts = np.unique(status, return_counts=True)
    for code, count in zip(codes.tolist(), counts.tolist()):
        if code >= 0:
            res.by_status[Status(code).name] += count
        elif code == CODE_SEND_FAILED:
            res.by_status[SEND_FAILED] += count
        elif code == CODE_BAD_REPLY:
            res.by_status[BAD_REPLY] += count
    if raw.bad_replies:
        res.by_status[BAD_REPLY] += raw.bad_replies
    res.first_detail = {k: v for k, v in raw.first_detail.items() if k in res.by_status}
    scheduled_ns = raw.start_ns + schedule.times_ns
    latency = raw.recv_ns - scheduled_ns
    slo_ns = (np.asarray(slo_ms, dtype=np.float64) * 1e6).astype(np.int64) if len(slo_ms) else np.zeros(0, np.int64)
    met = ok & (latency <= slo_ns[models]) if len(models) else ok
    res.latency.record_many_ns(latency[ok])
    res.reject_latency.record_many_ns(latency[answered & ~ok])
    res.exec_time.record_many_ns(raw.exec_ns[ok])
    res.send_lag.record_many_ns(raw.sent_ns[sent & (raw.sent_ns > 0)] - scheduled_ns[sent & (raw.sent_ns > 0)])
    res.met_slo = int(met.sum())
    res.cold_starts = int(raw.cold_start[ok].sum())
    res.batch_sizes.update(_counts(raw.batch_size[ok]))
    res.workers.update({raw.workers[w]: c for w, c in _counts(raw.worker[ok]).items()})
    label_of = np.array([g if g is not None else "" for g in groups] or [""], dtype=object)
    for label, group in res.groups.items():
        in_group = label_of[models] == label if len(models) else np.zeros(0, bool)
        group.sent = int((in_group & sent).sum())
        group.ok = int((in_group & ok).sum())
        group.met_slo = int((in_group & met).sum())
        group.latency.record_many_ns(latency[in_group & ok])
    return res


def _counts(values: np.ndarray) -> dict[int, int]:
    if not len(values):
        return {}
    keys, counts = np.unique(values, return_counts=True)
    return {int(k): int(c) for k, c in zip(keys, counts)}


def add_to_runlog(log: "RunLog", raw: RawResults, schedule: Schedule, models: Sequence[str],
                  slo_ms: Sequence[float], priority: int = 0) -> None:
    """One request row per scheduled request, times relative to the schedule's start; the
    request_id is the request's index in the schedule."""
    n = len(schedule)
    if not n:
        return
    times = schedule.times_ns
    slo_ns = (np.asarray(slo_ms, dtype=np.float64) * 1e6).astype(np.int64)[schedule.models]
    names = {int(s): s.name for s in Status}
    names.update({CODE_UNANSWERED: UNANSWERED, CODE_SEND_FAILED: SEND_FAILED, CODE_BAD_REPLY: BAD_REPLY})
    status_names = [names[c] for c in raw.status.tolist()]
    has_reply = raw.status >= 0
    latency = np.where(has_reply, raw.recv_ns - raw.start_ns - times, -1)
    workers = raw.workers + [""]
    log.add_requests({
        "request_id": np.arange(n, dtype=np.int64),
        "model": [models[m] for m in schedule.models.tolist()],
        "priority": np.full(n, priority, dtype=np.int64),
        "arrival_ns": times,
        "deadline_ns": times + slo_ns,
        "status": status_names,
        "latency_ns": latency,
        "queue_ns": raw.queue_ns,
        "exec_ns": raw.exec_ns,
        "batch_size": raw.batch_size,
        "cold_start": raw.cold_start,
        "worker": [workers[w] for w in raw.worker.tolist()],
    })


# ----------------------------------------------------------------------------- entry points


def run_open_loop(endpoint: str, schedule: Schedule, models: Sequence[str],
                  slo_ms: float | Sequence[float] | Mapping[str, float],
                  inputs_by_model: Mapping[str, Mapping[str, np.ndarray]], progress: Progress | None = None, *,
                  groups: Sequence[str | None] | Mapping[str, str] | None = None, priority: int = 0,
                  drain_timeout_s: float | None = None, start_delay_s: float = 0.05,
                  on_tick: Callable[[], None] | None = None, ctx: zmq.Context | None = None,
                  request_log: "RunLog | None" = None, procs: int = 1) -> LoadResults:
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
    request_log: a bench.runlog.RunLog that receives one row per scheduled request.
    procs: generator processes sharing the schedule (1: this thread does it all).
    """
    if len(schedule) and int(schedule.models.max()) >= len(models):
        raise ValueError(f"the schedule uses model index {int(schedule.models.max())}; only {len(models)} names given")
    slos = [float(s) for s in per_model(slo_ms, models, "slo_ms")]
    inputs = [inputs_by_model[m] if m in inputs_by_model else _missing(m) for m in models]
    labels = per_model(groups, models, "groups") if groups is not None else [None] * len(models)
    drain_s = drain_timeout_s if drain_timeout_s is not None else max(slos, default=0) / 1000 + 5.0
    if procs > 1:
        raw = run_in_processes(endpoint, schedule, list(models), slos, inputs, priority, drain_s, start_delay_s,
                               procs, progress or NullProgress(), on_tick)
    else:
        with gc_tuning.serving():  # before the start time is taken: it collects once
            raw = run_raw(endpoint, schedule, models, slos, inputs, priority, drain_s, start_delay_s,
                          progress or NullProgress(), on_tick, ctx)
    results = results_from_raw(raw, schedule, slos, labels)
    if request_log is not None:
        add_to_runlog(request_log, raw, schedule, models, slos, priority)
    return results


def run_raw(endpoint: str, schedule: Schedule, models: Sequence[str], slo_ms: list[float],
            inputs: list[Mapping[str, np.ndarray]], priority: int, drain_s: float, start_delay_s: float,
            progress: Progress, on_tick: Callable[[], None] | None = None, ctx: zmq.Context | None = None,
            counters: Any = None) -> RawResults:
    """One loop in this thread, schedule offset 0 `start_delay_s` after the loop is built (one
    request body per model: 0.8 s for 4,000 models, which the schedule's clock, started
    before, counted as every early request's send lag)."""
    own_ctx = ctx is None
    context = zmq.Context() if own_ctx else ctx
    sock = dealer(context, endpoint)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, SNDHWM)
    try:
        loop = _OpenLoop(sock, schedule, models, slo_ms, inputs, priority, int(drain_s * 1e9), counters)
        return loop.run(progress, time.monotonic_ns() + int(start_delay_s * 1e9), on_tick)
    finally:
        sock.close(linger=0)
        if own_ctx:
            context.term()


def _missing(model: str) -> tuple:
    raise ValueError(f"inputs_by_model has no inputs for model {model!r}")


# ----------------------------------------------------------------------------- closed loop


class _ClosedLoop(_OpenLoop):
    """Clients with one request outstanding each (bench.workload.ClosedLoop decides when each
    sends next). The "schedule" grows as the run goes: a request's scheduled time is when its
    client decided to send it (reply + think), so latency is still counted from that moment."""

    def __init__(self, sock: zmq.Socket, closed: Any, models: Sequence[str], slo_ms: list[float],
                 inputs: list[Mapping[str, np.ndarray]], priority: int, drain_ns: int):
        empty = Schedule(np.zeros(0, np.int64), np.zeros(0, np.int32), closed.duration_ns, np.zeros(len(models)))
        super().__init__(sock, empty, models, slo_ms, inputs, priority, drain_ns)
        self.closed = closed
        self.client_of: list[int] = []
        self.heap = [(t, c, m) for t, c, m in closed.first_sends()]
        self.track = []  # indices answered since the last look: their clients send again

    def send_due(self, now_ns: int) -> None:
        import heapq

        heap, start = self.heap, self.start_ns
        while heap and start + heap[0][0] <= now_ns:
            t, client, model = heapq.heappop(heap)
            self.times.append(t)
            self.model_of.append(model)
            self.client_of.append(client)
            self.replies.append(None)
            self.sent_at.append(0)
            super().send_due(now_ns)  # sends exactly the one just appended
            if isinstance(self.replies[-1], int):  # refused by the socket: the client tries again
                heapq.heappush(heap, (t + 1_000_000, client, model))

    def receive_ready(self) -> None:
        import heapq

        super().receive_ready()
        for index in self.track:
            reply = self.replies[index]
            nxt = self.closed.next_send(self.client_of[index], reply[0] - self.start_ns)
            if nxt is not None:
                heapq.heappush(self.heap, (nxt[0], self.client_of[index], nxt[1]))
        self.track.clear()

    def next_wake_ns(self, now_ns: int, next_tick_ns: int) -> int | None:
        """A client's next send, the next tick at the latest; None once every client is done
        and answered, or the run's duration and the drain after it have passed."""
        over_ns = self.start_ns + self.closed.duration_ns + self.drain_ns
        if (not self.heap and self.answered >= self.sent) or now_ns >= over_ns:
            return None
        return min(self.start_ns + self.heap[0][0], next_tick_ns) if self.heap else next_tick_ns


def run_closed_loop(endpoint: str, closed: Any, models: Sequence[str],
                    slo_ms: float | Sequence[float] | Mapping[str, float],
                    inputs_by_model: Mapping[str, Mapping[str, np.ndarray]], progress: Progress | None = None, *,
                    priority: int = 0, drain_timeout_s: float | None = None, start_delay_s: float = 0.05,
                    on_tick: Callable[[], None] | None = None, request_log: "RunLog | None" = None,
                    ctx: zmq.Context | None = None) -> tuple[LoadResults, Schedule]:
    """Drive a bench.workload.ClosedLoop (clients, each with one request outstanding) against
    the controller. Returns the results and the schedule as it happened (for reports)."""
    slos = [float(s) for s in per_model(slo_ms, models, "slo_ms")]
    inputs = [inputs_by_model[m] if m in inputs_by_model else _missing(m) for m in models]
    drain_s = drain_timeout_s if drain_timeout_s is not None else max(slos, default=0) / 1000 + 5.0
    own_ctx = ctx is None
    context = zmq.Context() if own_ctx else ctx
    sock = dealer(context, endpoint)
    try:
        loop = _ClosedLoop(sock, closed, models, slos, inputs, priority, int(drain_s * 1e9))
        with gc_tuning.serving():
            raw = loop.run(progress or NullProgress(), time.monotonic_ns() + int(start_delay_s * 1e9), on_tick)
        model_of = np.array(loop.model_of, dtype=np.int32)
        rates = np.bincount(model_of, minlength=len(models)) / max(closed.duration_ns / 1e9, 1e-9)
        schedule = Schedule(np.array(loop.times, dtype=np.int64), model_of, closed.duration_ns, rates)
    finally:
        sock.close(linger=0)
        if own_ctx:
            context.term()
    results = results_from_raw(raw, schedule, slos, [None] * len(models))
    if request_log is not None:
        add_to_runlog(request_log, raw, schedule, models, slos, priority)
    return results, schedule


# ----------------------------------------------------------------------------- several processes


class _Slot:
    """Three cells [sent, ok, rejected] of a shared array, for a parent's progress line."""

    def __init__(self, shared: Any, offset: int):
        self.shared, self.offset = shared, offset

    def __setitem__(self, index: int, value: int) -> None:
        self.shared[self.offset + index] = value


def run_in_processes(endpoint: str, schedule: Schedule, models: list[str], slo_ms: list[float],
                     inputs: list[Mapping[str, np.ndarray]], priority: int, drain_s: float, start_delay_s: float,
                     procs: int, progress: Progress, on_tick: Callable[[], None] | None = None) -> RawResults:
    """Split the schedule round-robin over `procs` generator processes started together.

    Each child connects its own DEALER, says it is ready, and is then given the common
    monotonic start time; its raw arrays come back in a .npz file (no pickle) and are merged
    by schedule index. The parent only watches: progress, `on_tick`, children's health.
    """
    import json
    import multiprocessing
    import tempfile
    from pathlib import Path

    mp = multiprocessing.get_context("spawn")  # never fork a process that holds ZeroMQ sockets
    shared = mp.Array("q", 3 * procs, lock=False)
    parts = [np.arange(k, len(schedule), procs) for k in range(procs)]
    with tempfile.TemporaryDirectory(prefix="clockwork-loadgen-") as tmp:
        children, pipes = [], []
        try:
            for k, part in enumerate(parts):
                sub = Schedule(schedule.times_ns[part], schedule.models[part], schedule.duration_ns,
                               schedule.rates_per_s / procs)
                parent_end, child_end = mp.Pipe()
                child = mp.Process(target=_child_main, name=f"loadgen-{k}", daemon=True,
                                   args=(child_end, shared, k, endpoint, sub, models, slo_ms, inputs, priority,
                                         drain_s, str(Path(tmp) / f"part{k}.npz")))
                child.start()
                children.append(child)
                pipes.append(parent_end)
            for k, pipe in enumerate(pipes):
                _wait_message(pipe, children[k], 60.0, "ready")
            start_ns = time.monotonic_ns() + int(max(start_delay_s, 0.05) * 1e9)
            for pipe in pipes:
                pipe.send(("start", start_ns))
            total_s = max(schedule.duration_ns / 1e9, 1e-9)
            while any(c.is_alive() for c in children):
                for c in children:
                    if c.exitcode not in (None, 0):
                        raise RuntimeError(f"load generator process {c.name} exited with status {c.exitcode}")
                sent, ok, rejected = (sum(shared[i::3]) for i in range(3))
                elapsed_s = min(max(0.0, (time.monotonic_ns() - start_ns) / 1e9), total_s)
                progress.update(elapsed_s, sent, ok, rejected)
                if on_tick is not None:
                    on_tick()
                for c in children:
                    c.join(TICK_S / len(children))
            for c in children:
                if c.exitcode != 0:
                    raise RuntimeError(f"load generator process {c.name} exited with status {c.exitcode}")
            sent, ok, rejected = (sum(shared[i::3]) for i in range(3))
            progress.update(total_s, sent, ok, rejected, force=True)
            part_raws = []
            for k in range(procs):
                with np.load(Path(tmp) / f"part{k}.npz", allow_pickle=False) as data:
                    arrays = {key: data[key] for key in data.files}
                meta = json.loads(str(arrays.pop("meta")))
                part_raws.append(RawResults(**arrays, **meta))
        finally:
            for c in children:
                if c.is_alive():
                    c.kill()
                    c.join(5)
    return _merge_raw(part_raws, parts, len(schedule))


def _wait_message(pipe: Any, child: Any, timeout_s: float, expected: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not pipe.poll(0.1):
        if not child.is_alive():
            raise RuntimeError(f"load generator process {child.name} exited with status {child.exitcode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"load generator process {child.name} not {expected} after {timeout_s:g} s")
    return pipe.recv()


def _child_main(pipe: Any, shared: Any, k: int, endpoint: str, schedule: Schedule, models: list[str],
                slo_ms: list[float], inputs: list, priority: int, drain_s: float, out_path: str) -> None:
    import json

    context = zmq.Context()
    sock = dealer(context, endpoint)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, SNDHWM)
    try:
        loop = _OpenLoop(sock, schedule, models, slo_ms, inputs, priority, int(drain_s * 1e9), _Slot(shared, 3 * k))
        gc_tuning.tune_for_serving()  # this process ends with the run
        pipe.send(("ready", 0))
        _what, start_ns = pipe.recv()
        raw = loop.run(NullProgress(), start_ns, None)
    finally:
        sock.close(linger=0)
        context.term()
    meta = {key: getattr(raw, key) for key in ("base_id", "start_ns", "end_ns", "workers", "first_detail",
                                               "bad_replies", "stray_replies")}
    arrays = {key: getattr(raw, key) for key in ("status", "sent_ns", "recv_ns", "queue_ns", "exec_ns",
                                                 "batch_size", "cold_start", "worker")}
    np.savez(out_path, meta=np.array(json.dumps(meta)), **arrays)


def _merge_raw(raws: list[RawResults], parts: list[np.ndarray], n: int) -> RawResults:
    """The parts' arrays put back at their schedule indices; worker names re-numbered."""
    first = raws[0]
    merged = RawResults(first.base_id, first.start_ns, max(r.end_ns for r in raws),
                        np.full(n, CODE_UNANSWERED, np.int16), np.zeros(n, np.int64), np.zeros(n, np.int64),
                        np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n, np.int32),
                        np.zeros(n, np.int8), np.full(n, -1, np.int32), [], {},
                        sum(r.bad_replies for r in raws), sum(r.stray_replies for r in raws))
    ids: dict[str, int] = {}
    for raw, part in zip(raws, parts):
        for key in ("status", "sent_ns", "recv_ns", "queue_ns", "exec_ns", "batch_size", "cold_start"):
            getattr(merged, key)[part] = getattr(raw, key)
        remap = np.array([ids.setdefault(w, len(ids)) for w in raw.workers] + [-1], dtype=np.int32)
        merged.worker[part] = remap[raw.worker]  # -1 indexes the trailing -1
        for name, detail in raw.first_detail.items():
            merged.first_detail.setdefault(name, detail)
    merged.workers = list(ids)
    return merged


# ----------------------------------------------------------------------------- a bare echo server


def serve_echo(endpoint: str, ready: Any = None, stop: Any = None, behind_relay: bool = False) -> None:
    """A ROUTER answering every message with an OK INFER reply (batch 1, exec 0, worker "echo"):
    the fastest possible "controller", to measure what the generator alone can offer.
    behind_relay: a DEALER connected to a bare relay's back instead (bench.relay.relay_main: it
    hands over [client id, *message] as a ROUTER would), to measure the generator plus two hops.
    `ready`/`stop`: multiprocessing Events (set once bound or connected / set to end)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER if behind_relay else zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.RCVHWM, SNDHWM)
    sock.setsockopt(zmq.LINGER, 0)
    if behind_relay:
        sock.connect(endpoint)
        sock.send(HELLO)
    else:
        sock.bind(endpoint)
    reply = Template(InferReply(status=Status.OK, batch_size=1, worker="echo"), spliced=("msg_id", "parent_id"))
    reply_ids = itertools.count(IdSource().next())
    recv, send, noblock = sock.recv_multipart, sock.send_multipart, zmq.NOBLOCK
    if ready is not None:
        ready.set()
    try:
        while stop is None or not stop.is_set():
            if not sock.poll(100):
                continue
            for _ in range(10_000):
                try:
                    frames = recv(noblock)
                except zmq.Again:
                    break
                replies = [[reply.header(next(reply_ids), peek_id(head, "msg_id"))] for head, _ in split(frames[1:])]
                send([frames[0], *bundle(replies)], noblock)
    finally:
        sock.close(0)
        context.term()


def rates_summary(schedule: Schedule) -> str:
    """"N requests over D s (R/s) to M models" for logs."""
    counts = schedule.counts()
    used = int(np.count_nonzero(counts))
    seconds = schedule.duration_ns / 1e9
    return f"{len(schedule)} requests over {seconds:g} s ({len(schedule) / seconds:.0f}/s) to {used} models"
