"""Load shedding at the controller's input: CoDel's rule for the queue in front of the shell.

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
"""

from __future__ import annotations


class InputShedder:
    def __init__(self, target_ns: int, interval_ns: int, min_requests: int = 64):
        self.target_ns = target_ns  # 0: never shed
        self.interval_ns = interval_ns
        self.min_requests = min_requests
        self.shedding = False
        self._window_end_ns: int | None = None
        self._window_min_ns: int | None = None  # the smallest lag seen in the current window
        self._window_count = 0

    def shed(self, waited_ns: int, now_ns: int) -> bool:
        """Whether to refuse a request that waited `waited_ns` before being read at `now_ns`."""
        if not self.target_ns:
            return False
        if self._window_end_ns is None or now_ns >= self._window_end_ns:
            if self._window_min_ns is not None:
                self.shedding = self._window_count >= self.min_requests and self._window_min_ns > self.target_ns
            self._window_end_ns, self._window_min_ns, self._window_count = now_ns + self.interval_ns, None, 0
        if self._window_min_ns is None or waited_ns < self._window_min_ns:
            self._window_min_ns = waited_ns
        self._window_count += 1
        if waited_ns <= self.target_ns:
            self.shedding = False  # caught up
        return self.shedding
