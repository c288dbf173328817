"""bench.cpu: CPU by process and named thread, from /proc, over chosen stretches."""

import os
import threading
import time

import math

from clockwork.bench.cpu import CpuTally, cpu_seconds, host_busy_share, host_jiffies, thread_cpu_s
from clockwork.worker.lanes import name_os_thread


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_named_thread_is_counted_apart_from_the_main_thread():
    done = threading.Event()

    def busy():
        name_os_thread("cpu-test-spin")
        _spin(0.05)
        done.set()
        time.sleep(1)  # still alive when read

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    assert done.wait(5)
    by_thread = thread_cpu_s(os.getpid())
    assert by_thread["cpu-test-spin"] >= 0.04 and "main" in by_thread
    assert "me/cpu-test-spin" in cpu_seconds({}, self_as="me")


def test_a_tally_counts_only_its_stretches():
    tally = CpuTally({}, self_as="me")
    with tally:
        _spin(0.05)
    _spin(0.2)  # outside any stretch: not counted
    with tally:
        _spin(0.05)
    assert 0.09 <= tally.used["me/main"] < 0.2
    per = tally.threads_us_per(1000)
    assert 90 <= per["me/main"] < 200 and list(per) == sorted(per, key=per.get, reverse=True)


def test_the_hosts_busy_share_counts_a_spinning_core():
    before = host_jiffies()
    _spin(0.3)  # one core busy for 0.3 s of CPU, whatever else runs
    after = host_jiffies()
    assert before is not None and after is not None and after[0] > before[0] and after[1] > before[1]
    share = host_busy_share(before, after)
    assert 1 / (os.cpu_count() or 1) - 0.2 < share <= 1.0  # at least about one core of the host's
    assert math.isnan(host_busy_share(None, after)) and math.isnan(host_busy_share(after, after))
