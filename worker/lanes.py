"""Lanes: where actions run, one at a time, inside their windows.

Rules (Clockwork's, and the reason latency is predictable):
- Each device has a LOAD lane and an EXEC lane (worker/device.py). A lane is one thread and
  runs one job at a time, so a device never executes two batches at once and never loads two
  models at once.
- A lane takes jobs in `earliest` order (a heap). A job is not started before its `earliest`;
  a job that cannot start by its `latest` is answered TOO_LATE and never run: at once when it
  arrives already past it, else when the lane comes to it.
- Every time here is on the worker's own monotonic clock; the daemon translates the controller's
  windows on the way in and the measured times on the way out.
- A lane reports whether it is healthy: its thread is alive and its current job has not run far
  longer than expected. The daemon puts that in its heartbeats.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from clockwork.common.clock import SPIN_NS, monotonic_ns, wait_until

NEVER_NS = 1 << 62  # a `latest` that never passes (internal jobs)
# A job is "stuck" once it has run STUCK_FACTOR times its expected duration (at least
# STUCK_MIN_NS, so that scheduling noise on a tiny action does not raise the alarm); jobs with
# no expectation (profiling, drops) get STUCK_UNKNOWN_NS, enough for a large model's profile.
STUCK_FACTOR = 20
STUCK_MIN_NS = 2_000_000_000
STUCK_UNKNOWN_NS = 300_000_000_000
PR_SET_NAME = 15  # prctl(2)
PR_SET_TIMERSLACK = 29


@dataclass
class Job:
    earliest_ns: int
    latest_ns: int
    run: Callable[[int], None]  # called with the start time when the window holds
    too_late: Callable[[int], None]  # called instead when it cannot start by latest_ns
    expected_ns: int = 0  # predicted duration; 0 when unknown
    label: str = ""


class Lane:
    """One thread running jobs one at a time, in earliest order, inside their windows."""

    def __init__(self, name: str, log: Any, on_start: Callable[[], None] = lambda: None,
                 on_stop: Callable[[], None] = lambda: None, stuck_min_ns: int = STUCK_MIN_NS,
                 flush: Callable[[], None] = lambda: None):
        self.name = name
        self._stuck_min_ns = stuck_min_ns
        self._log = log
        self._on_start = on_start
        self._on_stop = on_stop
        # On the lane's thread whenever it turns to something other than running a job (waiting,
        # answering one TOO_LATE, stopping): what its last job held back leaves then, in order.
        self._flush = flush
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._current: tuple[int, int] | None = None  # (started_ns, allowed_ns) of the running job
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the current job, answer the queued ones TOO_LATE, run on_stop, end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def submit(self, job: Job) -> None:
        """Queue a job (any thread). One already past its latest is answered at once."""
        now = monotonic_ns()
        if now > job.latest_ns:
            self._answer_too_late(job, now)
            return
        with self._cond:
            accepted = not self._stopping
            if accepted:
                heapq.heappush(self._heap, (job.earliest_ns, next(self._seq), job))
                if self._heap[0][2] is job:  # else the lane's wait, for an earlier job, still holds
                    self._cond.notify()
        if not accepted:
            self._answer_too_late(job, now)

    def healthy(self, now_ns: int) -> bool:
        """False if the thread died or its current job overran its allowance."""
        if not self._thread.is_alive():
            return self._stopping
        current = self._current
        return current is None or now_ns - current[0] <= current[1]

    def _loop(self) -> None:
        name_os_thread(self.name)
        precise_sleeps()
        try:
            self._on_start()
        except Exception:
            self._log.exception("lane start hook failed", lane=self.name)
        while (job := self._next()) is not None:
            now = wait_until(job.earliest_ns)
            if now > job.latest_ns:
                self._flush()
                self._answer_too_late(job, now)
            else:
                self._run(job, now)
        self._flush()
        for job in self._drain():
            self._answer_too_late(job, monotonic_ns())
        try:
            self._on_stop()
        except Exception:
            self._log.exception("lane stop hook failed", lane=self.name)

    def _next(self) -> Job | None:
        """The job with the earliest `earliest`, once it is due (minus the spin); None to stop."""
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._flush()
                    self._cond.wait()
                    continue
                delay_ns = self._heap[0][0] - monotonic_ns() - SPIN_NS
                if delay_ns > 0:
                    self._flush()
                    self._cond.wait(delay_ns / 1e9)  # a newly submitted, earlier job wakes us
                    continue
                return heapq.heappop(self._heap)[2]
            return None

    def _drain(self) -> list[Job]:
        with self._cond:
            jobs = [entry[2] for entry in sorted(self._heap)]
            self._heap.clear()
            return jobs

    def _run(self, job: Job, start_ns: int) -> None:
        allowed = max(job.expected_ns * STUCK_FACTOR, self._stuck_min_ns) if job.expected_ns else STUCK_UNKNOWN_NS
        self._current = (start_ns, allowed)
        try:
            job.run(start_ns)
        except Exception:  # the job reports its own failures; this is a bug, but the lane goes on
            self._log.exception("lane job failed", lane=self.name, job=job.label)
        finally:
            self._current = None

    def _answer_too_late(self, job: Job, now_ns: int) -> None:
        try:
            job.too_late(now_ns)
        except Exception:
            self._log.exception("lane too-late answer failed", lane=self.name, job=job.label)


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the OS as well (Linux keeps 15 bytes), so that `top -H`,
    perf and /proc tell a lane's thread from the daemon's loop; elsewhere, nothing."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def precise_sleeps() -> None:
    """End the calling thread's timed sleeps and waits when asked: Linux lets them run up to the
    thread's timer slack late (50 us by default) to batch wake-ups, past the spin that should
    land the start on time. Measured on an idle lane here (bench: 2,000 jobs due 1 ms after
    submission, each an emulated 272 us EXEC): starts 32-57 us late at p50 with the default
    slack, 0-6 us with 1 ns; the EXEC 24-39 us long, 0.1 us. Elsewhere, nothing."""
    _prctl(PR_SET_TIMERSLACK, 1)  # nanoseconds; 0 would restore the default


def _prctl(option: int, arg: int | bytes) -> None:
    try:
        ctypes.CDLL(None).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: not Linux
        pass


def run_on(lane: Lane, fn: Callable[[], Any], label: str) -> Future:
    """Run fn on `lane` as soon as it is free, outside any window; the future holds its result
    (or the error, or a RuntimeError if the lane stopped first)."""
    fut: Future = Future()

    def run(_start_ns: int) -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)

    def abandoned(_now_ns: int) -> None:
        fut.set_exception(RuntimeError(f"lane {lane.name} stopped"))

    lane.submit(Job(monotonic_ns(), NEVER_NS, run, abandoned, 0, label))
    return fut
