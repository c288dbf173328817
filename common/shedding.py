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
lag has stayed above `target_ns` for a whole `interval_ns` (a standing queue, not a burst), every
request read more than `target_ns` late is refused from its header, which costs a fraction of
serving it, until one arrives within the target: the backlog clears in milliseconds and the
requests behind it are fresh again. A window must also have seen `min_requests`: a few
requests jittered by a slow network are not a standing queue, and refusing them would turn a
lightly loaded controller away from a remote client. Pure: the shell passes the times in.

Two options change how shedding ends, for the gateway (client/door.py), whose signal is its
event loop's lag, which its own cheap refusals bring under the target at once:
- `quiet_ns`: shedding ends not at the first request read within the target but once none was
  read late for that long. Ending at once, its shedding stopped and started again every
  interval, and each restart let through a full interval of requests that queued behind a
  growing lag and were answered late.
- `drain_to_ns`: while shedding, "late" means waited more than this (below the target), so the
  backlog is drained well below the level that started it. A request admitted at the target
  still waits that lag again for each turn of the loop on its way out (its reply, its wake-up),
  and a loop held at 10 ms answered 11% of the admitted requests past a 50 ms SLO at 3x its
  capacity; drained to 2.5 ms, 0-1%.
"""

from __future__ import annotations


class InputShedder:
    def __init__(self, target_ns: int, interval_ns: int, min_requests: int = 64, quiet_ns: int = 0,
                 drain_to_ns: int | None = None):
        self.target_ns = target_ns  # 0: never shed
        self.interval_ns = interval_ns
        self.min_requests = min_requests
        self.quiet_ns = quiet_ns  # 0: CoDel's rule, shedding ends at the first request within the target
        self.drain_to_ns = target_ns if drain_to_ns is None else min(drain_to_ns, target_ns)
        self.shedding = False
        self._window_end_ns: int | None = None
        self._window_min_ns: int | None = None  # the smallest lag seen in the current window
        self._window_count = 0
        self._last_late_ns = 0  # when the last request read late while shedding was read

    def shed(self, waited_ns: int, now_ns: int) -> bool:
        """Whether to refuse a request that waited `waited_ns` before being read at `now_ns`."""
        if not self.target_ns:
            return False
        if self._window_end_ns is None:
            self._window_end_ns = now_ns + self.interval_ns
        if now_ns >= self._window_end_ns:
            self._end_window(now_ns, waited_ns)
        if self._window_min_ns is None or waited_ns < self._window_min_ns:
            self._window_min_ns = waited_ns
        self._window_count += 1
        if not self.shedding:
            return False
        if waited_ns > self.drain_to_ns:
            self._last_late_ns = now_ns
            return True
        if not self.quiet_ns:
            self.shedding = False  # caught up
        return False

    def _end_window(self, now_ns: int, waited_ns: int) -> None:
        if now_ns >= self._window_end_ns + self.interval_ns:
            # A whole interval passed in which nothing was read: the load went away if nothing
            # arrived in it either; a request that arrived in it and waited was behind a stall.
            self.shedding = self.shedding and now_ns - waited_ns < self._window_end_ns + self.interval_ns
        elif self._window_min_ns is not None:
            standing = self._window_count >= self.min_requests and self._window_min_ns > self.target_ns
            if standing and not self.shedding:
                self._last_late_ns = now_ns
            self.shedding = standing or (self.shedding and now_ns - self._last_late_ns < self.quiet_ns)
        self._window_end_ns, self._window_min_ns, self._window_count = now_ns + self.interval_ns, None, 0
