"""The lane timeline: reservations replayed at the tail (for windows) and typically (for pricing)."""

from clockwork.controller.timeline import Timeline


def test_reservations_replay_at_the_tail_from_the_plan_and_typically_from_the_earliest_start():
    lane = Timeline()
    assert lane.reserve(1, 10, 10, typical_start_ns=2, typical_ns=4) == 20
    assert lane.reserve(2, 20, 10, typical_start_ns=3, typical_ns=4) == 30
    assert lane.free_at(0) == 30  # tail: each from its planned start
    assert lane.typical_free_at(0) == 10  # typically: the second starts as the first ends (2 + 4 + 4)
    lane.completed(1, 7)  # the first really ended at 7
    assert lane.free_at(0) == 30 and lane.typical_free_at(0) == 11
    lane.cancel(2)
    assert lane.free_at(0) == 7 and lane.typical_free_at(8) == 8  # never before now


def test_without_a_typical_figure_the_tail_is_used():
    lane = Timeline()
    lane.reserve(1, 5, 10)
    assert lane.free_at(0) == lane.typical_free_at(0) == 15
