"""A device lane's predicted timeline (Clockwork's WorkerTracker), re-anchored by results.

The controller reserves each action it sends; the lane runs them one at a time in order, each
starting at max(previous end, its own start). When a result says when an action really ended,
the remaining reservations are replayed from that moment, so an early or late finish moves the
whole predicted future instead of accumulating error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Slot:
    start_ns: int
    duration_ns: int


class Timeline:
    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}  # action id -> reservation, in insertion (= start) order
        self._anchor_ns = 0  # when the lane last became free, as measured

    def reserve(self, action_id: int, start_ns: int, duration_ns: int) -> int:
        """Book an action; returns its predicted end."""
        self._slots[action_id] = _Slot(start_ns, duration_ns)
        return self.free_at(start_ns)

    def completed(self, action_id: int, end_ns: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._anchor_ns = max(self._anchor_ns, end_ns)

    def cancel(self, action_id: int) -> None:
        self._slots.pop(action_id, None)

    def free_at(self, now_ns: int) -> int:
        """When the lane is predicted to be free, never earlier than now."""
        t = self._anchor_ns
        for slot in self._slots.values():
            t = max(t, slot.start_ns) + slot.duration_ns
        return max(now_ns, t)

    def windows(self) -> list[tuple[int, int]]:
        """Predicted [start, end) of every outstanding action, in order (for invariant checks)."""
        out, t = [], self._anchor_ns
        for slot in self._slots.values():
            start = max(t, slot.start_ns)
            t = start + slot.duration_ns
            out.append((start, t))
        return out

    @property
    def outstanding(self) -> int:
        return len(self._slots)
