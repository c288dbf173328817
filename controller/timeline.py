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
        self._end_ns: int | None = 0  # predicted end of the last reservation (None: to recompute)

    def reserve(self, action_id: int, start_ns: int, duration_ns: int) -> int:
        """Book an action; returns its predicted end."""
        self._slots[action_id] = _Slot(start_ns, duration_ns)
        self._end_ns = max(self._predicted_end_ns(), start_ns) + duration_ns
        return max(start_ns, self._end_ns)

    def completed(self, action_id: int, end_ns: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._anchor_ns = max(self._anchor_ns, end_ns)
            self._end_ns = None

    def cancel(self, action_id: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._end_ns = None

    def free_at(self, now_ns: int) -> int:
        """When the lane is predicted to be free, never earlier than now."""
        return max(now_ns, self._predicted_end_ns())

    def _predicted_end_ns(self) -> int:
        """The replay of the reservations from the anchor, kept until the next change (the
        planner asks for it many times between results)."""
        if self._end_ns is None:
            t = self._anchor_ns
            for slot in self._slots.values():
                t = max(t, slot.start_ns) + slot.duration_ns
            self._end_ns = t
        return self._end_ns

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
