"""The lane timeline: reservations replayed at the tail (for windows) and typically (for pricing)."""

from clockwork.controller.timeline import Timeline


def test_the_lane_is_free_at_the_tail_after_its_typical_replay_and_one_tail_allowance():
    """Tails do not add up: the lane is free at the tail once its reservations have typically
    run, plus the most any one of them runs long, not each running long in turn."""
    lane = Timeline()
    assert lane.reserve(1, 10, 10, typical_start_ns=2, typical_ns=4) == 12  # typically 2 + 4, its tail 6 more
    assert lane.reserve(2, 20, 7, typical_start_ns=3, typical_ns=4) == 16  # typically 6 + 4, the tail 6 more
    assert lane.free_at(0) == 16 and lane.typical_free_at(0) == 10
    lane.completed(1, 7)  # the first really ended at 7: the second typically at 11, its tail 3 more
    assert lane.free_at(0) == 14 and lane.typical_free_at(0) == 11
    lane.cancel(2)
    assert lane.free_at(0) == 7 and lane.typical_free_at(8) == 8  # never before now


def test_without_a_typical_figure_the_tail_is_used():
    lane = Timeline()
    lane.reserve(1, 5, 10)
    assert lane.free_at(0) == lane.typical_free_at(0) == 15
