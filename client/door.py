"""The gateway's door: refuse at once (429) what its own event loop is too far behind to serve.

A gateway process parses JSON on one core. Past that core's capacity, requests wait on its event
loop, every one behind the backlog is late, and without a door they are all answered 504 after
their deadline. The door measures each request's wait in the gateway: how late the loop ran its
handler (a timer that notes how late it fired, every `probe_ns`, says how late the loop runs
what is ready), plus the time its body took to arrive through the busy loop. It feeds that wait
to the CoDel shedder the controller uses at its input (common/shedding.py) before the body is
parsed: a refusal costs a small fraction of serving a request, so the backlog clears and the
admitted requests are served in time. The controller's own refusals are its business; this
signal is the gateway's alone.

Once shedding, the door drains the loop's lag to a quarter of the level that started it, and
goes on until none was late for five intervals. An admitted request meets the loop's lag again
on each turn it needs after the door (its reply, its wake-up): with the lag held at the 10 ms
that starts shedding, 11-15% of the admitted requests were answered past a 50 ms SLO at 3x the
gateway's capacity; drained to 2.5 ms and held so, 0-1% (clockwork-bench versus --gateway-json,
2-core host). Starting to shed at 3 ms instead refused 2.5% of the requests at the gateway's
own capacity, which it serves in time without shedding.

Before shedding starts (a whole interval above the level), a request that has already waited
past a ceiling (15 ms, 1.5 times the level) is refused at once all the same, once the last
eight reads were all late (one request behind a stall of a lightly loaded loop is served): from
idle to 3x its capacity, the loop's lag grows by 2 ms per ms, and the requests read in the first
20-30 ms, admitted, were answered in 44-68 ms, past a 50 ms SLO (the onset: one run in three
ended at 99.0% in time). With the ceiling, every run at 3x since: 100.00% of the admitted
requests in time; none refused by it at the gateway's own capacity.

A standing lag starts shedding only while it hurts (`Door.pressed`): an infer was answered with
less than a tenth of its SLO left (or refused or given up for its deadline), or one was read past
the ceiling, within the last five intervals. Below its capacity, on two cores shared with the
lane, the controller and a load generator, a gateway's loop stood 10-11 ms behind at 450 JSON
infers/s while every infer it let in was answered within a 50 ms SLO (p99 26-38 ms), and the
door shed 0-393 of 3,622 that would have made it; with this rule, five runs alternated with
five of the door without it, 0-76 (mean 42) against 0-255 (mean 108), fewer in each pair. An
overload shows its pressure before it costs anything: its onset passes the ceiling within
milliseconds.
"""

from __future__ import annotations

import asyncio
import time

from clockwork.common.shedding import InputShedder

DRAIN_DIVISOR = 4  # while shedding, a request is late past the start level / this
QUIET_INTERVALS = 5  # shedding ends after this many intervals with no late request
PRESSURE_INTERVALS = 5  # a sign of pressure lets a standing lag start shedding for this many intervals
TIGHT_SHARE = 0.9  # an answer that used more of its SLO than this was near its deadline
IDLE_PROBES = 40  # the lag probe waits for a request after this many with none (100 ms at the default 2.5 ms)
NEVER_NS = 1 << 62  # the pending probe's due time while it waits: never overdue


class LoopLag:
    """How late this event loop runs a callback that is due, sampled every `probe_ns` while
    requests come; after `IDLE_PROBES` probes with none read, the probe waits for the next one
    (`read`). Probing an idle loop woke the gateway 400 times a second and took 3% of a core
    for nothing (a lone request's lag is zero). The request that ends the wait counts as the
    probe due when it was read, so that a burst after a pause is measured from its start."""

    def __init__(self, probe_ns: int):
        self.probe_ns = probe_ns
        self.last_ns = 0  # how late the last probe fired
        self._due_ns = time.monotonic_ns() + probe_ns  # when the pending probe is due
        self._quiet = 0  # probes since a request was last read
        self._resume: asyncio.Event | None = None  # set while the probe waits for a request

    def now_ns(self, now_ns: int) -> int:
        """The loop's lag as of `now_ns`: the last probe's, or more if the pending one is overdue."""
        return max(self.last_ns, now_ns - self._due_ns)

    def read(self, now_ns: int) -> None:
        """A request was read at `now_ns`."""
        self._quiet = 0
        if self._resume is not None and not self._resume.is_set():
            self._due_ns, self.last_ns = now_ns, 0
            self._resume.set()

    async def run(self) -> None:
        self._resume = asyncio.Event()
        self._resume.set()
        while True:
            if self._quiet >= IDLE_PROBES:
                self._resume.clear()
                self._due_ns, self.last_ns = NEVER_NS, 0
                await self._resume.wait()
            self._due_ns = time.monotonic_ns() + self.probe_ns
            await asyncio.sleep(self.probe_ns / 1e9)
            self.last_ns = max(0, time.monotonic_ns() - self._due_ns)
            self._quiet += 1


class Door:
    """`arrival_ns(now)`: when a request whose handler runs now reached the gateway; `sheds(waited,
    now)`: whether to refuse one that has waited that long. `lag_target_ns` 0 opens the door to
    everything and measures nothing (a lag of 0); `ceiling_ns` 0 sets no ceiling."""

    def __init__(self, lag_target_ns: int, interval_ns: int, min_requests: int, ceiling_ns: int = 0):
        self.lag = LoopLag(max(lag_target_ns // 4, 1_000_000))
        self.shedder = InputShedder(lag_target_ns, interval_ns, min_requests, quiet_ns=QUIET_INTERVALS * interval_ns,
                                    drain_to_ns=lag_target_ns // DRAIN_DIVISOR, ceiling_ns=ceiling_ns)
        self._probe: asyncio.Task | None = None
        self._pressed_ns = -NEVER_NS  # when the last sign of pressure came (`pressed`)

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
        self.lag.read(now_ns)
        return now_ns - self.lag_ns(now_ns)

    def answered(self, used_ns: int, slo_ns: int, now_ns: int) -> None:
        """An infer's result reached the gateway at `now_ns`, `used_ns` into its `slo_ns`; one
        refused or given up for its deadline used all of it."""
        if used_ns > TIGHT_SHARE * slo_ns:
            self._pressed_ns = now_ns

    def pressed(self, now_ns: int) -> bool:
        """Whether the gateway's lag hurts: an answer near its deadline, or a read past the
        ceiling, within the last PRESSURE_INTERVALS intervals."""
        return now_ns - self._pressed_ns <= PRESSURE_INTERVALS * self.shedder.interval_ns

    def sheds(self, waited_ns: int, now_ns: int) -> bool:
        if 0 < self.shedder.ceiling_ns < waited_ns:
            self._pressed_ns = now_ns
        return self.shedder.shed(waited_ns, now_ns, may_start=self.pressed(now_ns))
