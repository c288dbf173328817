"""A device lane's predicted timeline (Clockwork's WorkerTracker), re-anchored by results.

The controller reserves each action it sends; the lane runs them one at a time in order, each
starting at max(previous end, its own start). When a result says when an action really ended,
the remaining reservations are replayed from that moment, so an early or late finish moves the
whole predicted future instead of accumulating error.

Each reservation is replayed twice: at the tail duration from its planned start, which the
planner uses so that the next EXEC's window is safe, and at the typical duration from the
earliest it may start, which admission uses to price the lane (see controller/latency.py:
tails do not add up, and a lane starts the next action as soon as the previous one ends).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class _Slot:
    """One per action (its __init__ written out, as request.Request's is)."""

    start_ns: int
    duration_ns: int  # the tail
    typical_start_ns: int  # the earliest it may start
    typical_ns: int

    def __init__(self, start_ns: int, duration_ns: int, typical_start_ns: int, typical_ns: int) -> None:
        self.start_ns = start_ns
        self.duration_ns = duration_ns
        self.typical_start_ns = typical_start_ns
        self.typical_ns = typical_ns


class Timeline:
    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}  # action id -> reservation, in insertion (= start) order
        self._anchor_ns = 0  # when the lane last became free, as measured
        self._end_ns: int | None = 0  # predicted end of the last reservation (None: to recompute)
        self._typical_end_ns: int | None = 0  # the same with typical durations

    def reserve(self, action_id: int, start_ns: int, duration_ns: int, typical_start_ns: int | None = None,
                typical_ns: int | None = None) -> int:
        """Book an action planned at `start_ns` for `duration_ns` (the tail); it may start from
        `typical_start_ns` and typically takes `typical_ns` (by default the same). Returns its
        predicted end, at the tail."""
        typical_start = start_ns if typical_start_ns is None else typical_start_ns
        typical = duration_ns if typical_ns is None else typical_ns
        end, typical_end = self._predicted_end_ns(), self._predicted_typical_end_ns()
        self._slots[action_id] = _Slot(start_ns, duration_ns, typical_start, typical)
        self._end_ns = max(end, start_ns) + duration_ns
        self._typical_end_ns = max(typical_end, typical_start) + typical
        return self._end_ns

    def completed(self, action_id: int, end_ns: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._anchor_ns = max(self._anchor_ns, end_ns)
            self._end_ns = self._typical_end_ns = None

    def cancel(self, action_id: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._end_ns = self._typical_end_ns = None

    def free_at(self, now_ns: int) -> int:
        """When the lane is predicted to be free, never earlier than now."""
        end = self._end_ns
        if end is None:
            end = self._predicted_end_ns()
        return end if end > now_ns else now_ns

    def typical_free_at(self, now_ns: int) -> int:
        """When the lane is typically free, never earlier than now."""
        end = self._typical_end_ns
        if end is None:
            end = self._predicted_typical_end_ns()
        return end if end > now_ns else now_ns

    def _predicted_end_ns(self) -> int:
        """The replay of the reservations from the anchor, kept until the next change (the
        planner asks for it many times between results)."""
        if self._end_ns is None:
            self._end_ns = self._replay(lambda slot: (slot.start_ns, slot.duration_ns))
        return self._end_ns

    def _predicted_typical_end_ns(self) -> int:
        if self._typical_end_ns is None:
            self._typical_end_ns = self._replay(lambda slot: (slot.typical_start_ns, slot.typical_ns))
        return self._typical_end_ns

    def _replay(self, start_and_duration) -> int:
        t = self._anchor_ns
        for slot in self._slots.values():
            start, duration = start_and_duration(slot)
            t = max(t, start) + duration
        return t

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
