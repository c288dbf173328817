"""Clocks: each host uses its own monotonic clock; a worker maps the controller's times onto its
own with an NTP-style skew estimate.

A round trip gives one sample: the worker sends at local t0, the controller stamps its clock t1,
the worker receives at local t2. If the two legs take equal time, offset = t1 - (t0 + t2) / 2,
and the error is at most half the round trip. Queueing only ever adds delay, so the sample with
the smallest round trip in a sliding window is the most trustworthy one; we keep that one.
"""

from __future__ import annotations

import time
from collections import deque


monotonic_ns = time.monotonic_ns  # the clock itself, not a wrapper: read a few times per message


# Sleeping is only accurate to a wake-up (~20-50 us here), so the last stretch before a deadline
# is spun. A spin holds the GIL from the worker's other threads: measured here, 200 us spins hit
# targets within 3 us at p99 but cost the worker ~28% more CPU under load than 20 us spins (which
# overshoot 109 us at p99); 50 us overshoots 75 us at p99, inside the emulated device's +-100 us
# goal. The sleep must end when asked for the spin to land: a lane's thread sets its timer slack
# to 1 ns (worker/lanes.precise_sleeps), else Linux lets it run 50 us long.
SPIN_NS = 50_000


def wait_until(target_ns: int) -> int:
    """Wait precisely until the monotonic clock reaches target_ns: sleep, then spin. Returns now."""
    now = monotonic_ns()
    if target_ns - now > SPIN_NS:
        time.sleep((target_ns - now - SPIN_NS) / 1e9)
        now = monotonic_ns()
    while now < target_ns:
        now = monotonic_ns()
    return now


class SkewEstimator:
    """Offset of a remote clock against the local one (remote = local + offset_ns)."""

    def __init__(self, window: int = 32):
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)  # (rtt_ns, offset_ns)
        self._best: tuple[int, int] | None = None
        self._same_host = self.same_clock = False

    def add(self, sent_local_ns: int, remote_ns: int, recv_local_ns: int) -> None:
        rtt_ns = recv_local_ns - sent_local_ns
        if rtt_ns < 0:
            return  # not a real round trip; ignore rather than poison the estimate
        offset_ns = remote_ns - (sent_local_ns + recv_local_ns) // 2
        self._samples.append((rtt_ns, offset_ns))
        self._best = min(self._samples)
        self._check_same_clock()

    def same_host(self, same: bool) -> None:
        """The peer says whether it runs on this host, and so reads the same monotonic clock:
        then the offset is exactly 0 (`same_clock`) while what is measured agrees. With one
        clock every sample's offset lies within half its round trip of 0; a time namespace
        (bench/netns.py runs "hosts" 5 s apart on one kernel) fails that, and keeps the estimate."""
        self._same_host = same
        self._check_same_clock()

    def _check_same_clock(self) -> None:
        best = self._best
        self.same_clock = self._same_host and best is not None and abs(best[1]) <= best[0] // 2

    @property
    def known(self) -> bool:
        return self._best is not None

    @property
    def offset_ns(self) -> int:
        return self._best[1] if self._best and not self.same_clock else 0

    @property
    def round_trip_ns(self) -> int:
        """The best round trip of the window (what the link costs, one clock or two)."""
        return self._best[0] if self._best else 0

    @property
    def uncertainty_ns(self) -> int:
        """Half the best round trip: the most the offset can be wrong by (0 on one clock)."""
        return self._best[0] // 2 if self._best and not self.same_clock else 0

    def to_local(self, remote_ns: int) -> int:
        return remote_ns - self.offset_ns

    def to_remote(self, local_ns: int) -> int:
        return local_ns + self.offset_ns


class QueueDelay:
    """How long each peer's messages waited on their way to us, from the peer's send stamps.

    For one peer, received - sent = clock offset + transit + queueing. The offset is constant
    and the bare transit nearly so, so the smallest value is offset + transit (the floor) and
    the excess over it is the time spent in queues (sockets, a loop that was behind). That works
    across unsynchronised clocks, in O(1) per message.

    The floor falls at once to any smaller value. It rises toward the smallest value of the last
    `window_ns`, but by at most `max_rise_ns` per window: enough for a slewed clock or a new
    route, which move it slowly. A controller that stays behind its input inflates every value
    by its lag and never shows the true floor again; rising freely (as it did, to the minimum of
    the last 2-4 s), the floor took the lag in within seconds and the requests stuck behind it
    looked fresh. A peer whose stamps go backwards (a restart, a clock that is not monotonic)
    starts over; equal stamps do not (a client that stamps its requests with their scheduled
    times, as a load generator may, can give two of them one).
    """

    def __init__(self, window_ns: int = 2_000_000_000, max_rise_ns: int = 1_000_000, max_peers: int = 4096):
        self._window_ns = window_ns
        self._max_rise_ns = max_rise_ns
        self._max_peers = max_peers
        self._peers: dict[bytes, list[int]] = {}  # peer -> [last_sent, window_start, window_min, floor]

    def waited_ns(self, peer: bytes, sent_ns: int, recv_ns: int) -> int:
        delta = recv_ns - sent_ns
        state = self._peers.get(peer)
        if state is None or sent_ns < state[0]:
            if state is None and len(self._peers) >= self._max_peers:
                self._peers.pop(next(iter(self._peers)))  # forget the oldest peer
            self._peers[peer] = [sent_ns, recv_ns, delta, delta]
            return 0
        state[0] = sent_ns
        if recv_ns - state[1] > self._window_ns:  # a new window: the floor may rise a little
            state[3] = min(state[2], state[3] + self._max_rise_ns)
            state[1], state[2] = recv_ns, delta
        elif delta < state[2]:
            state[2] = delta
        if delta < state[3]:
            state[3] = delta
        return delta - state[3]

    def local_ns(self, peer: bytes, peer_ns: int) -> int | None:
        """A time on `peer`'s clock, on ours, at the latest: the floor holds the clock offset and
        the bare transit, so the result is late by that transit (a longer way to the peer, never
        a shorter one). None for a peer not heard from."""
        state = self._peers.get(peer)
        return None if state is None else peer_ns + state[3]
