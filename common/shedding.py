"""Load shedding at a daemon's input: CoDel's rule for the queue in front of a shell (the
controller's sockets, the gateway's event loop).

When the controller cannot keep up with its clients, requests wait in the sockets ahead of it,
and a FIFO queue makes every request behind a backlog late as well: served late, they miss
their SLOs at the client. Measured at 24,000 requests/s offered against ~21,500 of capacity
(one 8 s run each): goodput fell to zero within 5 s (6,871/s over the run); with this rule it
held at 19,101/s, and at 19,581-20,340/s once common/clock.QueueDelay stopped taking a standing
lag for the floor of its estimate (80-84% of all offered requests within the SLO, the rest
refused at once).

The rule (Nichols and Jacobson's CoDel, with "drop" meaning "refuse unread, at once"): once the
lag has stayed above `target_ns` for a whole `interval_ns` (a standing queue, not a burst;
counted, as CoDel's first_above_time, from the first request read past the target), every
request read more than `target_ns` late is refused from its header, which costs a fraction of
serving it, until one arrives within the target: the backlog clears in milliseconds and the
requests behind it are fresh again. The last interval must also have seen `min_requests`: a few
requests jittered by a slow network are not a standing queue, and refusing them would turn a
lightly loaded controller away from a remote client. Pure: the shell passes the times in.

Three options for the gateway (client/door.py), whose signal is its event loop's lag, which its
own cheap refusals bring under the target at once:
- `quiet_ns`: shedding ends not at the first request read within the target but once none was
  read late for that long. Ending at once, its shedding stopped and started again every
  interval, and each restart let through a full interval of requests that queued behind a
  growing lag and were answered late.
- `ceiling_ns`: a request read more than this late is refused at once, standing queue or not,
  once the last `min_requests` reads were all late: at the onset of an overload the lag grows
  faster than an interval lets the rule see, and a request that waited that long is answered
  late whatever is done for it. (One request held up by a stall of a lightly loaded reader is
  not load: it is served.)
- `drain_to_ns`: while shedding, "late" means waited more than this (below the target), so the
  backlog is drained well below the level that started it. A request admitted at the target
  still waits that lag again for each turn of the loop on its way out (its reply, its wake-up),
  and a loop held at 10 ms answered 11% of the admitted requests past a 50 ms SLO at 3x its
  capacity; drained to 2.5 ms, 0-1%.
"""

from __future__ import annotations

from collections import deque


class InputShedder:
    def __init__(self, target_ns: int, interval_ns: int, min_requests: int = 64, quiet_ns: int = 0,
                 drain_to_ns: int | None = None, ceiling_ns: int = 0):
        self.target_ns = target_ns  # 0: never shed
        self.ceiling_ns = ceiling_ns  # 0: none
        self.interval_ns = interval_ns
        self.min_requests = min_requests
        self.quiet_ns = quiet_ns  # 0: CoDel's rule, shedding ends at the first request within the target
        self.drain_to_ns = target_ns if drain_to_ns is None else min(drain_to_ns, target_ns)
        self.shedding = False
        self._above_since_ns: int | None = None  # every request read since then waited past the target
        self._above_reads: deque[int] = deque(maxlen=max(1, min_requests))  # when the latest of them were read
        self._last_read_ns: int | None = None
        self._last_late_ns = 0  # when the last request read late while shedding was read

    def shed(self, waited_ns: int, now_ns: int, may_start: bool = True) -> bool:
        """Whether to refuse a request that waited `waited_ns` before being read at `now_ns`.
        `may_start` False: a standing queue does not start shedding (the gateway's door while
        its answers leave with time to spare); the ceiling and shedding already begun apply."""
        if not self.target_ns:
            return False
        if self._last_read_ns is not None and now_ns - waited_ns >= self._last_read_ns + self.interval_ns:
            # A whole interval passed in which nothing was read, and this request came after it:
            # the load went away. (One that came within it and waited was behind a stall.)
            self.shedding, self._above_since_ns = False, None
        self._last_read_ns = now_ns
        if waited_ns > self.target_ns:
            if self._above_since_ns is None:
                self._above_since_ns = now_ns
                self._above_reads.clear()
            self._above_reads.append(now_ns)
            if not self.shedding and may_start and self._standing(now_ns):
                self.shedding, self._last_late_ns = True, now_ns
        else:
            self._above_since_ns = None
        if not self.shedding:
            return 0 < self.ceiling_ns < waited_ns and self._late_burst(now_ns)
        if waited_ns > self.drain_to_ns:
            self._last_late_ns = now_ns
            return True
        if now_ns - self._last_late_ns >= self.quiet_ns:
            self.shedding = False  # caught up (and, with quiet_ns, stayed so)
        return False

    def _standing(self, now_ns: int) -> bool:
        """Above the target for a whole interval, with min_requests read late in the last one."""
        return now_ns - self._above_since_ns >= self.interval_ns and self._late_burst(now_ns)

    def _late_burst(self, now_ns: int) -> bool:
        """The last min_requests reads were all late, and within the last interval: load, not
        one request held up by a stall of the reader."""
        return (len(self._above_reads) == self._above_reads.maxlen
                and now_ns - self._above_reads[0] <= self.interval_ns)
