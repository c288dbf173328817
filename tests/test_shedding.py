"""CoDel-style shedding at the controller's input (common/shedding.py), in virtual time."""

from clockwork.common.shedding import InputShedder

MS = 1_000_000


def feed(shedder: InputShedder, start_ms: float, end_ms: float, waited_ms: float, every_ms: float = 1.0) -> list[bool]:
    out, t = [], start_ms
    while t < end_ms:
        out.append(shedder.shed(int(waited_ms * MS), int(t * MS)))
        t += every_ms
    return out


def test_a_burst_shorter_than_the_interval_is_not_shed():
    shedder = InputShedder(10 * MS, 100 * MS)
    assert not any(feed(shedder, 0, 100, 1))
    assert not any(feed(shedder, 100, 150, 30))  # half an interval of lag
    assert not any(feed(shedder, 150, 400, 2))


def test_a_standing_lag_is_shed_until_a_request_is_read_within_the_target():
    shedder = InputShedder(10 * MS, 100 * MS)
    assert not any(feed(shedder, 0, 100, 1))
    assert not any(feed(shedder, 100, 200, 25))  # a whole interval above the target...
    assert all(feed(shedder, 200, 260, 25))  # ...so the next late ones are refused
    assert not shedder.shed(5 * MS, 260 * MS)  # caught up: served, and shedding stops
    assert not any(feed(shedder, 261, 280, 25))


def test_a_standing_lag_that_may_not_start_shedding_is_served_until_it_may():
    """The gateway's door while its answers leave with time to spare: the queue stands, but is
    served; the first request read once it may start is refused at once (it stood all along)."""
    shedder = InputShedder(10 * MS, 100 * MS)
    assert not any(shedder.shed(25 * MS, t * MS, may_start=False) for t in range(0, 300))
    assert shedder.shed(25 * MS, 300 * MS)
    assert shedder.shed(25 * MS, 301 * MS, may_start=False)  # once begun, shedding goes on


def test_shedding_off():
    shedder = InputShedder(0, 100 * MS)
    assert not any(feed(shedder, 0, 500, 1000))


def test_a_few_late_requests_are_not_a_standing_queue():
    """A remote client at 2 requests a second over a jittery network must not be turned away."""
    shedder = InputShedder(10 * MS, 100 * MS)
    assert not any(feed(shedder, 0, 2000, 40, every_ms=50))  # 2 per window, all 40 ms late


def test_quiet_sheds_the_late_ones_until_a_whole_quiet_period_passes_without_any():
    """The gateway's rule: its refusals empty its queue at once, so a fresh request does not
    mean the overload is over; only a period in which nothing was late does."""
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, quiet_ns=100 * MS)
    assert not any(feed(shedder, 0, 100, 25))  # a whole interval above the target...
    assert all(feed(shedder, 100, 150, 25))  # ...so the late ones are refused,
    assert not any(feed(shedder, 150, 160, 2))  # the fresh ones served,
    assert all(feed(shedder, 160, 200, 25))  # and shedding goes on through this window
    assert all(feed(shedder, 200, 230, 25))  # and the next, which saw late ones as well
    assert not any(feed(shedder, 300, 400, 2))  # nothing late for a whole interval...
    assert not any(feed(shedder, 400, 430, 25))  # ...ends it: a new burst is not shed at once


def test_an_interval_in_which_nothing_was_read_ends_shedding():
    for quiet_ns in (0, 100 * MS):
        shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, quiet_ns=quiet_ns)
        assert not any(feed(shedder, 0, 100, 25))
        assert all(feed(shedder, 100, 150, 25))
        assert not shedder.shed(25 * MS, 400 * MS)  # silence since 150 ms


def test_a_stall_does_not_pass_for_silence():
    """Nothing read for an interval because the shell stood still, not because nothing came: the
    requests read after it waited through it, and shedding goes on."""
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, quiet_ns=100 * MS)
    assert not any(feed(shedder, 0, 100, 25))
    assert all(feed(shedder, 100, 150, 25))
    assert all(feed(shedder, 400, 410, 260))  # read at 400 ms, there since 140 ms


def test_shedding_drains_the_lag_below_the_level_that_started_it():
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, quiet_ns=300 * MS, drain_to_ns=2 * MS)
    assert not any(feed(shedder, 0, 100, 5))  # under the target: not a standing queue
    assert not any(feed(shedder, 100, 200, 25))  # a whole interval above it...
    assert shedder.shed(25 * MS, 200 * MS)  # ...ends in shedding,
    assert all(feed(shedder, 201, 250, 5))  # and now 5 ms is late, though under the target
    assert not any(feed(shedder, 250, 420, 1))  # within the drain level: served,
    assert all(feed(shedder, 420, 430, 5))  # and shedding lasts the whole quiet period,
    assert not any(feed(shedder, 430, 800, 1))
    assert not any(feed(shedder, 800, 820, 5))  # which, passed without a late one, ends it


def test_shedding_starts_one_interval_after_the_lag_passed_the_target():
    """CoDel's first_above_time: not at the end of the next whole window, which at 3x a
    gateway's capacity let its lag grow past 40 ms first."""
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8)
    assert not any(feed(shedder, 0, 150, 1))
    assert not any(feed(shedder, 150, 250, 25))
    assert shedder.shed(25 * MS, 250 * MS)


def test_a_request_past_the_ceiling_is_refused_before_the_queue_stands():
    """The onset of an overload: the lag grows faster than an interval lets the rule see."""
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, ceiling_ns=15 * MS)
    assert not any(feed(shedder, 0, 50, 14))  # above the target, under the ceiling, no standing queue yet
    assert all(feed(shedder, 50, 60, 16))  # past the ceiling: refused at once
    assert not shedder.shedding  # and the standing-queue rule has not fired
    assert not any(feed(shedder, 300, 400, 1))
    assert not InputShedder(10 * MS, 100 * MS, min_requests=8).shed(16 * MS, 0)  # no ceiling: served


def test_the_ceiling_refuses_only_a_burst_of_late_requests_not_one_held_up_by_a_stall():
    shedder = InputShedder(10 * MS, 100 * MS, min_requests=8, ceiling_ns=15 * MS)
    assert not any(feed(shedder, 0, 1000, 1, every_ms=100))  # light load, on time
    assert not shedder.shed(40 * MS, 1040 * MS)  # one request behind a 40 ms stall: served
    assert not any(feed(shedder, 1100, 2000, 1, every_ms=100))
    late = feed(shedder, 2000, 2010, 20, every_ms=1)  # ten in 10 ms, all 20 ms late
    assert not any(late[:7]) and all(late[7:])  # refused from the eighth on
