"""Lanes: earliest order, windows (TOO_LATE never runs), one job at a time, health."""

from __future__ import annotations

import ctypes
import os
import random
import sys
import threading
import time

import pytest

from clockwork.common.clock import monotonic_ns
from clockwork.worker.lanes import NEVER_NS, Job, Lane
from tests.worker_helpers import LOG, MS, wait_until_true

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """Job bodies that record what ran, when, and whether two ever overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran: list[str] = []
        self.late: list[str] = []
        self.intervals: list[tuple[int, int]] = []
        self.running = 0
        self.max_running = 0

    def job(self, label: str, earliest_ns: int, latest_ns: int = NEVER_NS, work_s: float = 0.0,
            expected_ns: int = 0) -> Job:
        def run(start_ns: int) -> None:
            with self.lock:
                self.running += 1
                self.max_running = max(self.max_running, self.running)
            if work_s:
                time.sleep(work_s)
            with self.lock:
                self.running -= 1
                self.ran.append(label)
                self.intervals.append((start_ns, monotonic_ns()))

        def too_late(_now_ns: int) -> None:
            with self.lock:
                self.late.append(label)

        return Job(earliest_ns, latest_ns, run, too_late, expected_ns, label)

    def done(self) -> int:
        with self.lock:
            return len(self.ran) + len(self.late)


@pytest.fixture
def lane():
    lane = Lane("test-lane", LOG)
    lane.start()
    yield lane
    lane.stop()


def test_jobs_run_in_earliest_order_whatever_the_submission_order(lane):
    rec = Recorder()
    base = monotonic_ns() + 100 * MS  # every job is queued before the first is due
    offsets = list(range(20))
    random.Random(7).shuffle(offsets)
    for k in offsets:
        lane.submit(rec.job(f"j{k:02d}", base + k * MS))
    wait_until_true(lambda: rec.done() == 20)
    assert rec.ran == sorted(rec.ran)
    assert rec.late == []


def test_a_job_never_starts_before_its_earliest(lane):
    rec = Recorder()
    earliest = monotonic_ns() + 30 * MS
    lane.submit(rec.job("a", earliest))
    wait_until_true(lambda: rec.done() == 1)
    assert rec.intervals[0][0] >= earliest


def test_a_job_already_past_its_latest_is_too_late_and_never_runs(lane):
    rec = Recorder()
    now = monotonic_ns()
    lane.submit(rec.job("past", now - 10 * MS, now - 1 * MS))
    wait_until_true(lambda: rec.done() == 1)
    assert rec.late == ["past"] and rec.ran == []


def test_a_job_held_up_behind_another_past_its_latest_is_too_late(lane):
    rec = Recorder()
    now = monotonic_ns()
    lane.submit(rec.job("long", now, work_s=0.2))
    lane.submit(rec.job("tight", now + 1 * MS, now + 5 * MS))  # cannot start while "long" runs
    lane.submit(rec.job("loose", now + 2 * MS))
    wait_until_true(lambda: rec.done() == 3)
    assert rec.ran == ["long", "loose"]
    assert rec.late == ["tight"]


def test_jobs_never_overlap_on_one_lane(lane):
    rec = Recorder()
    now = monotonic_ns()
    for k in range(15):
        lane.submit(rec.job(f"j{k}", now, work_s=0.002))
    wait_until_true(lambda: rec.done() == 15)
    assert rec.max_running == 1
    intervals = sorted(rec.intervals)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(intervals, intervals[1:]))


def test_an_earlier_job_submitted_later_overtakes_a_waiting_one(lane):
    rec = Recorder()
    now = monotonic_ns()
    lane.submit(rec.job("later", now + 300 * MS))
    time.sleep(0.02)  # the lane is now sleeping towards "later"
    lane.submit(rec.job("sooner", now + 40 * MS))
    wait_until_true(lambda: rec.done() == 2)
    assert rec.ran == ["sooner", "later"]


def test_a_failing_job_does_not_stop_the_lane(lane):
    rec = Recorder()

    def boom(_start_ns: int) -> None:
        raise RuntimeError("a bug in a job body")

    now = monotonic_ns()
    lane.submit(Job(now, NEVER_NS, boom, lambda t: None, 0, "boom"))
    lane.submit(rec.job("after", now))
    wait_until_true(lambda: rec.done() == 1)
    assert rec.ran == ["after"]
    assert lane.healthy(monotonic_ns())


def test_stopping_answers_queued_jobs_too_late_and_runs_the_stop_hook():
    stopped_on = []
    lane = Lane("stopping", LOG, on_stop=lambda: stopped_on.append(threading.current_thread().name))
    lane.start()
    rec = Recorder()
    lane.submit(rec.job("far", monotonic_ns() + 3600 * 10**9))
    lane.stop()
    assert rec.late == ["far"] and rec.ran == []
    assert stopped_on == ["stopping"]  # on the lane's own thread
    lane.submit(rec.job("after-stop", monotonic_ns()))
    assert rec.late == ["far", "after-stop"]


def test_a_job_overrunning_its_allowance_makes_the_lane_unhealthy():
    lane = Lane("stuck", LOG, stuck_min_ns=20 * MS)
    lane.start()
    release = threading.Event()
    try:
        lane.submit(Job(monotonic_ns(), NEVER_NS, lambda t: release.wait(30), lambda t: None, 1 * MS, "hang"))
        wait_until_true(lambda: not lane.healthy(monotonic_ns()), what="lane reported stuck")
        release.set()
        wait_until_true(lambda: lane.healthy(monotonic_ns()), what="lane healthy again")
    finally:
        release.set()
        lane.stop()


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/comm"), reason="thread names are read from Linux's /proc")
def test_a_lanes_thread_carries_its_name_in_the_os(lane):
    """So that top -H, perf and /proc tell a lane from the daemon's loop."""
    seen = []
    lane.submit(Job(monotonic_ns(), NEVER_NS, lambda _t: seen.append(open("/proc/thread-self/comm").read().strip()),
                    lambda _t: None))
    wait_until_true(lambda: seen, what="the job to run")
    assert seen == ["test-lane"]


PR_GET_TIMERSLACK = 30  # prctl(2)


def timer_slack_ns() -> int:
    """The calling thread's timer slack."""
    return ctypes.CDLL(None).prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)


@pytest.mark.skipif(sys.platform != "linux", reason="timer slack is Linux's")
def test_a_lanes_thread_sleeps_no_longer_than_asked(lane):
    """Its timer slack is 1 ns, not Linux's 50 us: the sleep before a job's earliest would
    otherwise overrun the spin meant to land the start on time. Other threads keep theirs."""
    seen = []
    lane.submit(Job(monotonic_ns(), NEVER_NS, lambda _t: seen.append(timer_slack_ns()), lambda _t: None))
    wait_until_true(lambda: seen, what="the job to run")
    assert seen == [1]
    assert timer_slack_ns() > 1
