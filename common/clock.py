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


def monotonic_ns() -> int:
    return time.monotonic_ns()


class SkewEstimator:
    """Offset of a remote clock against the local one (remote = local + offset_ns)."""

    def __init__(self, window: int = 32):
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)  # (rtt_ns, offset_ns)
        self._best: tuple[int, int] | None = None

    def add(self, sent_local_ns: int, remote_ns: int, recv_local_ns: int) -> None:
        rtt_ns = recv_local_ns - sent_local_ns
        if rtt_ns < 0:
            return  # not a real round trip; ignore rather than poison the estimate
        offset_ns = remote_ns - (sent_local_ns + recv_local_ns) // 2
        self._samples.append((rtt_ns, offset_ns))
        self._best = min(self._samples)

    @property
    def known(self) -> bool:
        return self._best is not None

    @property
    def offset_ns(self) -> int:
        return self._best[1] if self._best else 0

    @property
    def uncertainty_ns(self) -> int:
        """Half the best round trip: the most the offset can be wrong by."""
        return self._best[0] // 2 if self._best else 0

    def to_local(self, remote_ns: int) -> int:
        return remote_ns - self.offset_ns

    def to_remote(self, local_ns: int) -> int:
        return local_ns + self.offset_ns
