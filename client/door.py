"""The gateway's door: refuse at once (429) what its own event loop is too far behind to serve.

A gateway process parses JSON on one core. Past that core's capacity, requests wait on its event
loop, every one behind the backlog is late, and without a door they are all answered 504 after
their deadline. The door measures each request's wait in the gateway: how late the loop ran its
handler (a timer that notes how late it fired, every `probe_ns`, says how late the loop runs
what is ready), plus the time its body took to arrive through the busy loop. It feeds that wait
to the CoDel shedder the controller uses at its input (common/shedding.py), with `until_quiet`,
before the body is parsed: a refusal costs a small fraction of serving a request, so the backlog
clears and the admitted requests are served in time. The controller's own refusals are its
business; this signal is the gateway's alone.

The door also says how much of a request's SLO is left for the controller (`slo_left_ms`): not
what the request spent in the gateway before it was forwarded, and not what its answer will
spend on the way back. That way back is the gateway's own hops around the controller's time
(the send, the reply through the client's reader, the handler's turn of the loop), measured on
every answer: at 3x the gateway's capacity they took 6-22 ms of a 50 ms SLO, and with only the
present lag reserved, 2-4% of the admitted requests were answered after their SLO.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from clockwork.common.shedding import InputShedder


class LoopLag:
    """How late this event loop runs a callback that is due, sampled every `probe_ns`."""

    def __init__(self, probe_ns: int):
        self.probe_ns = probe_ns
        self.last_ns = 0  # how late the last probe fired
        self._due_ns = time.monotonic_ns() + probe_ns  # when the pending probe is due

    def now_ns(self, now_ns: int) -> int:
        """The loop's lag as of `now_ns`: the last probe's, or more if the pending one is overdue."""
        return max(self.last_ns, now_ns - self._due_ns)

    async def run(self) -> None:
        while True:
            self._due_ns = time.monotonic_ns() + self.probe_ns
            await asyncio.sleep(self.probe_ns / 1e9)
            self.last_ns = max(0, time.monotonic_ns() - self._due_ns)


class OwnTime:
    """The gateway's own time around the controller's, per request (from the forward to the
    answer in the handler, less the controller's total): its 90th percentile over the last
    `window` answers. Not the most: one hiccup (a descheduled process, a collection) would take
    tens of ms off the next `window` requests' SLOs and make the controller refuse them below
    capacity; a loop that stands behind raises the percentile within a few answers."""

    def __init__(self, window: int = 64):
        self._recent: deque[int] = deque(maxlen=window)
        self.p90_ns = 0

    def observe(self, ns: int) -> None:
        self._recent.append(ns)
        ordered = sorted(self._recent)
        self.p90_ns = ordered[(len(ordered) * 9) // 10]


class Door:
    """`arrival_ns(now)`: when a request whose handler runs now reached the gateway; `sheds(waited,
    now)`: whether to refuse one that has waited that long. `lag_target_ns` 0 opens the door to
    everything and measures nothing (a lag of 0)."""

    def __init__(self, lag_target_ns: int, interval_ns: int, min_requests: int):
        self.lag = LoopLag(max(lag_target_ns // 4, 1_000_000))
        self.shedder = InputShedder(lag_target_ns, interval_ns, min_requests, until_quiet=True)
        self.own = OwnTime()
        self._probe: asyncio.Task | None = None

    def start(self) -> None:
        if self.shedder.target_ns and self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self.lag.run())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    def lag_ns(self, now_ns: int) -> int:
        return self.lag.now_ns(now_ns) if self._probe is not None else 0

    def arrival_ns(self, now_ns: int) -> int:
        return now_ns - self.lag_ns(now_ns)

    def sheds(self, waited_ns: int, now_ns: int) -> bool:
        return self.shedder.shed(waited_ns, now_ns)

    def reserve_ns(self, now_ns: int) -> int:
        """What the answer of a request forwarded now will spend in the gateway: what its hops
        took lately (OwnTime), or one turn of the loop at its present lag, whichever is more. 0
        with the door off. One turn, not the two an answer takes (the reader's and the
        handler's): a lag spike is brief, and reserving twice it took so much of the SLOs
        forwarded during one on a busy host that the controller refused them below capacity."""
        if self._probe is None:
            return 0
        return max(self.own.p90_ns, self.lag.now_ns(now_ns))

    def slo_left_ms(self, slo_ms: float, arrived_ns: int, now_ns: int) -> float:
        """The part of an SLO that the controller may use, for a request that reached the gateway
        at `arrived_ns` and is forwarded at `now_ns`."""
        return slo_ms - (now_ns - arrived_ns + self.reserve_ns(now_ns)) / 1e6

    def answered(self, forwarded_ns: int, now_ns: int, controller_ms: float) -> None:
        """A request forwarded at `forwarded_ns` came back at `now_ns`, `controller_ms` of it the
        controller's: the rest was the gateway's (the reply's reservation)."""
        if self._probe is not None:
            self.own.observe(now_ns - forwarded_ns - round(controller_ms * 1e6))
