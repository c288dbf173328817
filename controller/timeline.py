"""A device lane's predicted timeline (Clockwork's WorkerTracker), re-anchored by results.

The controller reserves each action it sends; the lane runs them one at a time in order, each
starting at max(previous end, its own start). When a result says when an action really ended,
the remaining reservations are replayed from that moment, so an early or late finish moves the
whole predicted future instead of accumulating error.

The reservations are replayed at their typical durations from the earliest each may start,
which admission uses to price the lane (a lane starts the next action as soon as the previous
one ends). The planner asks when the lane is free at the tail, so that the next EXEC's window is
safe: that replay plus one tail allowance, the most any booked action's tail exceeds its typical
duration. Tails do not add up (controller/latency.py): replaying every action at its tail
planned the next EXEC as if all of them ran long at once, and on a noisy CPU, whose tails are
far above its medians, EXECs were sent ~1.5 ms before the lane's end instead of the 5 ms the
horizon allows, and a stall of the controller's loop longer than that emptied the lane.
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
        self._typical_end_ns: int | None = 0  # typical end of the last reservation (None: to recompute)
        self._excess_ns: int | None = 0  # the most a reservation's tail exceeds its typical (None: the same)

    def reserve(self, action_id: int, start_ns: int, duration_ns: int, typical_start_ns: int | None = None,
                typical_ns: int | None = None) -> int:
        """Book an action planned at `start_ns` for `duration_ns` (the tail); it may start from
        `typical_start_ns` and typically takes `typical_ns` (by default the same). Returns when
        the lane is then free at the tail (free_at)."""
        typical_start = start_ns if typical_start_ns is None else typical_start_ns
        typical = duration_ns if typical_ns is None else typical_ns
        typical_end, excess = self._predicted_typical_end_ns(), self._predicted_excess_ns()
        self._slots[action_id] = _Slot(start_ns, duration_ns, typical_start, typical)
        self._typical_end_ns = typical_end = max(typical_end, typical_start) + typical
        self._excess_ns = excess = max(excess, duration_ns - typical)
        return typical_end + excess

    def completed(self, action_id: int, end_ns: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._anchor_ns = max(self._anchor_ns, end_ns)
            self._typical_end_ns = self._excess_ns = None

    def cancel(self, action_id: int) -> None:
        if self._slots.pop(action_id, None) is not None:
            self._typical_end_ns = self._excess_ns = None

    def free_at(self, now_ns: int) -> int:
        """When the lane is free at the tail (the typical replay and one tail allowance), never
        earlier than now."""
        end = self._predicted_typical_end_ns() + self._predicted_excess_ns()
        return end if end > now_ns else now_ns

    def typical_free_at(self, now_ns: int) -> int:
        """When the lane is typically free, never earlier than now."""
        end = self._typical_end_ns
        if end is None:
            end = self._predicted_typical_end_ns()
        return end if end > now_ns else now_ns

    def _predicted_typical_end_ns(self) -> int:
        """The typical replay of the reservations from the anchor, kept until the next change
        (the planner and admission ask for it many times between results)."""
        end = self._typical_end_ns
        if end is None:
            end = self._anchor_ns
            for slot in self._slots.values():
                end = max(end, slot.typical_start_ns) + slot.typical_ns
            self._typical_end_ns = end
        return end

    def _predicted_excess_ns(self) -> int:
        excess = self._excess_ns
        if excess is None:
            excess = 0
            for slot in self._slots.values():
                excess = max(excess, slot.duration_ns - slot.typical_ns)
            self._excess_ns = excess
        return excess

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
