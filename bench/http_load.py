"""An open-loop load generator for KServe v2 over HTTP: one body, posted at a schedule's times.

What `clockwork-bench versus --gateway-json` plays against the gateway and the plain HTTP server
alike. Each request gets its own connection when none is free (no limit), so a slow server
never holds back the schedule (no coordinated omission), and its latency counts from its
scheduled time, not from when it was sent. A request unanswered after `timeout_s` is given up
(and its connection closed, which a server may take as a cancel).

    results = asyncio.run(play(url, body, schedule, timeout_s=1))
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from clockwork.bench.workload import Schedule
from clockwork.common import gc_tuning


@dataclass
class HttpResults:
    """What came back, by HTTP status; latencies in ns from each request's scheduled time."""

    scheduled: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> count
    ok_ns: list[int] = field(default_factory=list)  # 200s
    refused_ns: list[int] = field(default_factory=list)  # 429s
    unanswered: int = 0  # given up after timeout_s, or the connection failed
    late_sends_ns: list[int] = field(default_factory=list)  # how late this process sent each request

    def within_ns(self, slo_ns: int) -> int:
        return int((np.asarray(self.ok_ns, dtype=np.int64) <= slo_ns).sum())


async def play(url: str, body: bytes, schedule: Schedule, timeout_s: float) -> HttpResults:
    """Post `body` to `url` at every time of `schedule` and wait for the answers (or timeout_s)."""
    results = HttpResults(scheduled=len(schedule))
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # The daemons' collector settings: this process's own full collections (17-33 ms with
    # thousands of requests in flight) read answers late that came in time.
    with gc_tuning.serving():
        await _play(url, body, schedule, results, headers, timeout)
    return results


async def _play(url: str, body: bytes, schedule: Schedule, results: HttpResults, headers: dict,
                timeout: aiohttp.ClientTimeout) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one(due_ns: int) -> None:
            results.late_sends_ns.append(time.monotonic_ns() - due_ns)
            try:
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    took_ns = time.monotonic_ns() - due_ns
                    results.statuses[reply.status] += 1
                    if reply.status == 200:
                        results.ok_ns.append(took_ns)
                    elif reply.status == 429:
                        results.refused_ns.append(took_ns)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                results.unanswered += 1

        start_ns = time.monotonic_ns()
        tasks = []
        for offset_ns in schedule.times_ns.tolist():
            due_ns = start_ns + offset_ns
            delay_ns = due_ns - time.monotonic_ns()
            if delay_ns > 0:
                await asyncio.sleep(delay_ns / 1e9)
            tasks.append(asyncio.create_task(one(due_ns)))
        await asyncio.gather(*tasks)
