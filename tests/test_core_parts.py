"""The scheduling core's parts on their own: lifecycles, batch growth, placement and the latency
model. test_core drives them together through the core."""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clockwork.common.checks import BadMessage
from clockwork.common.models import Signature, TensorSpec, check_inputs
from clockwork.common.tensors import Tensor
from clockwork.controller import heap_entry, placement
from clockwork.controller.batching import RankMemo, grow, padded_size, split_ns
from clockwork.controller.heap_entry import Entry
from clockwork.controller.core import ms_text, samples_in_order
from clockwork.controller.latency import LatencyModel, RecentSamples, percentiles_of
from clockwork.controller.lifecycle import IllegalTransition, RequestState, Residency
from clockwork.controller.policy import _take_least
from clockwork.controller.queues import CLASSES, ByClass, RequestQueue
from clockwork.controller.request import Request
from clockwork.controller.state import Device, Resident, input_specs

MS = 1_000_000
SIZES = [1, 2, 4, 8]
EXEC = {1: 2 * MS, 2: 3 * MS, 4: 5 * MS, 8: 9 * MS}


def request(request_id: int, deadline_ms: float, samples: int = 1) -> Request:
    return Request(request_id, b"c", "m", samples, 0, 0, int(deadline_ms * MS), ())


# ----------------------------------------------------------------------------- lifecycle


def test_legal_moves_go_through_and_an_illegal_one_raises_and_changes_nothing():
    req = request(1, 100)
    req.move(RequestState.DISPATCHED)
    req.move(RequestState.QUEUED)  # a dropped batch's request goes back
    req.move(RequestState.ANSWERED)
    with pytest.raises(IllegalTransition):
        req.move(RequestState.QUEUED)  # an answered request never comes back
    assert req.state is RequestState.ANSWERED
    res = Resident(Residency.LOADED, 7, 0)
    with pytest.raises(IllegalTransition):
        res.move(Residency.LOADING)
    assert res.state is Residency.LOADED
    res.move(Residency.ABSENT)


def test_a_class_waits_behind_its_own_and_the_higher_classes_totals():
    figures = ByClass()
    for priority, delta in ((0, 5), (2, 7), (3, 2), (2, 3), (2, -3)):
        figures.add(priority, delta)
    assert [figures.from_class(p) for p in range(5)] == [14, 9, 9, 2, 0]
    assert figures.values == [5, 0, 7, 2] + [0] * (CLASSES - 4) and figures.total == 14
    held = ByClass()
    held.add_each(figures, 1)
    held.add_each(figures, 1)
    held.add_each(figures, -1)
    assert held.values == figures.values and held.total == 14


# ----------------------------------------------------------------------------- batching


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5)), max_size=40), st.integers(0, 6))
def test_a_queue_serves_by_priority_then_deadline_then_arrival_and_expires_by_deadline(entries, cutoff):
    """The heaps' entries (heap_entry.Entry) order exactly as sorting the requests would, ties
    kept in arrival order, requests that left the queue skipped."""
    queue = RequestQueue()
    reqs = [Request(i, b"c", "m", 1, priority, 0, deadline, ()) for i, (priority, deadline) in enumerate(entries)]
    for req in reqs:
        queue.push(req)
    for req in reqs[::3]:  # dispatched: no longer queued
        req.move(RequestState.DISPATCHED)
        queue.removed(req)
    live = [r for r in reqs if r.state is RequestState.QUEUED]
    served = sorted(live, key=lambda r: (-r.priority, r.deadline_ns, r.request_id))
    assert queue.head(len(reqs)) == served and queue.first() == (served[0] if served else None)
    assert queue.earliest_deadline() == min((r.deadline_ns for r in live), default=None)
    expired = sorted((r for r in live if r.deadline_ns < cutoff), key=lambda r: (r.deadline_ns, r.request_id))
    assert queue.pop_expired(cutoff) == expired


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop"]), st.integers(-1, 0), st.integers(0, 5)), max_size=60))
def test_the_core_heaps_pop_in_rank_key_token_order_through_pushes_and_pops(ops):
    """heap_entry's push and pop against heapq on (rank, key, token) tuples."""
    heap: list[Entry[int]] = []
    reference: list[tuple[int, int, int]] = []
    for token, (op, rank, key) in enumerate(ops):
        if op == "push" or not heap:
            heap_entry.push(heap, Entry(key, token, token, rank))
            heapq.heappush(reference, (rank, key, token))
        else:
            entry = heap_entry.pop(heap)
            assert (entry.rank, entry.key, entry.token) == heapq.heappop(reference)
    drained = [heap_entry.pop(heap) for _ in range(len(heap))]
    assert [(e.rank, e.key, e.token) for e in drained] == sorted(reference)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 0), st.integers(0, 4), st.text("abc", max_size=2)), unique_by=lambda r: r[2]))
def test_batch_choice_takes_pending_models_in_the_order_sorting_gives(ranked):
    """policy._take_least, taken until none is left: the sorted order (names unique, as on a device)."""
    left = [RankMemo(0, 0, "gpu", [1], True, order, start, name) for order, start, name in ranked]
    taken = []
    while left:
        least = _take_least(left)
        taken.append((least.order, least.latest_start_ns, least.name))
    assert taken == sorted(ranked)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.integers(-2, 0), st.integers(0, 6)), st.none()), max_size=60))
def test_the_cores_heap_keeps_heapqs_layout_and_order(steps):
    """heap_entry.push and pop are heapq's, compiled: after any pushes (rank, key) and pops
    (None) both heaps hold the same entries in the same places, and pop the same ones."""
    ours: list[Entry[int]] = []
    theirs: list[tuple[int, int, int]] = []
    for token, step in enumerate(steps):
        if step is None:
            if theirs:
                entry = heap_entry.pop(ours)
                assert (entry.rank, entry.key, entry.token) == heapq.heappop(theirs)
            else:
                with pytest.raises(IndexError):
                    heap_entry.pop(ours)
        else:
            heap_entry.push(ours, Entry(step[1], token, token, step[0]))
            heapq.heappush(theirs, (step[0], step[1], token))
        assert [(e.rank, e.key, e.token) for e in ours] == theirs


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["float32", "int64"]),
                          st.lists(st.integers(1, 3), max_size=2)), min_size=1, max_size=3, unique_by=lambda i: i[0]),
       st.data())
def test_the_cores_check_of_inputs_in_order_agrees_with_the_full_check(specs, data):
    """The core's own check (core.samples_in_order) accepts only what check_inputs accepts,
    with the same samples, and every input in the model's order that check_inputs accepts;
    anything else it leaves to check_inputs, which says what is wrong."""
    sig = Signature(tuple(TensorSpec(n, d, tuple(shape)) for n, d, shape in specs), (), 4)
    tensors = []
    for name, dtype, shape in data.draw(st.permutations(specs)):
        name = data.draw(st.sampled_from([name, name, "z"]))
        dtype = data.draw(st.sampled_from([dtype, dtype, "float64"]))
        shape = tuple(data.draw(st.sampled_from([shape, shape, [*shape, 1], [d + 1 for d in shape]])))
        tensors.append(Tensor.from_array(name, np.zeros((data.draw(st.integers(0, 5)), *shape), dtype)))
    tensors = tuple(data.draw(st.sampled_from([tensors, tensors, tensors[:-1]])))
    fast = samples_in_order(input_specs(sig), sig.max_batch, tensors)
    try:
        full = check_inputs(sig, tensors)
    except BadMessage:
        full = None
    assert fast is None or fast == full
    if full is not None and [t.name for t in tensors] == [s.name for s in sig.inputs]:
        assert fast == full


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(-10**12, 10**12), st.integers(-20_000, 20_000)))
def test_a_duration_reads_in_milliseconds_as_the_float_formatting_writes_it(ns):
    """ms_text, the refusals' integer formatting, writes what f"{ns / 1e6:.2f}" writes, but
    where a value lies exactly half-way between two hundredths (where it rounds up)."""
    text = ms_text(ns)
    if ns % 10_000 != 5_000:
        assert text == f"{ns / 1e6:.2f}"
    else:
        assert abs(float(text) - ns / 1e6) <= 0.005 and text.split(".")[1].isdigit() and len(text.split(".")[1]) == 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["cpu", "gpu"]), st.sampled_from([0, 1, 2, 4, 1024])),
                max_size=30), st.sampled_from("ab"))
def test_latency_figures_looked_up_in_any_order_are_each_models_own_and_none_once_forgotten(asks, forgotten):
    """LatencyModel keeps the last (model, kind) looked up: whatever the order of the look-ups,
    each answer is the one a fresh model gives (none for a size never profiled or measured),
    a size first measured after the look-ups is found, and a forgotten model has none, then
    new ones."""
    def seeded() -> LatencyModel:
        latency = LatencyModel()
        for i, (name, kind) in enumerate([("a", "cpu"), ("a", "gpu"), ("b", "cpu")]):
            latency.seed(name, kind, 0, {1: 100 * i + 1, 2: 100 * i + 2})
        return latency

    latency = seeded()
    for name, kind, batch in asks:
        assert latency.exec_ns(name, batch, kind) == seeded().exec_ns(name, batch, kind)
    assert [seeded().exec_ns("a", batch, "cpu") for batch in (0, 1, 2, 4, 1024)] == [None, 1, 2, None, None]
    latency.observe_exec("a", 8, "cpu", 5, 0)
    assert latency.exec_ns("a", 8, "cpu") == 5 and latency.typical_exec_ns("a", 8, "cpu") == 5
    assert latency.exec_ns("a", 4, "cpu") is None and latency.exec_ns("b", 8, "cpu") is None
    latency.forget(forgotten)
    assert all(latency.exec_ns(forgotten, batch, kind) is None for _, kind, batch in asks)
    latency.seed(forgotten, "cpu", 0, {1: 7})
    assert latency.exec_ns(forgotten, 1, "cpu") == 7 and latency.typical_exec_ns(forgotten, 1, "cpu") == 7


def test_padded_size_is_the_smallest_profiled_size_that_holds_the_samples():
    assert [padded_size(n, SIZES) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


def test_a_batch_grows_to_the_largest_size_every_member_meets():
    queue = [request(i, 6) for i in range(3)] + [request(9, 100)]
    batch = grow("m", queue, 0, SIZES, EXEC.get)
    assert [r.request_id for r in batch.requests] == [0, 1, 2, 9]  # 4 samples in 5 ms: all make 6 ms
    assert (batch.batch_size, batch.exec_ns, batch.latest_start_ns) == (4, 5 * MS, 1 * MS)
    tight = grow("m", [request(0, 3.5), request(1, 100), request(2, 100)], 0, SIZES, EXEC.get)
    assert [r.request_id for r in tight.requests] == [0, 1]  # a third would pad to 4 (5 ms): past 3.5 ms


def test_padding_a_batch_where_it_costs_as_much_as_real_samples_is_left_to_the_next_batch():
    linear = {1: 1 * MS, 2: 2 * MS, 4: 4 * MS, 8: 8 * MS}.get  # a CPU: a batch of n takes n times one
    queue = [request(i, 100) for i in range(5)]
    assert grow("m", queue[:3], 0, SIZES, linear).batch_size == 2  # not 3 padded to 4: the third runs next
    assert len(grow("m", queue[:4], 0, SIZES, linear).requests) == 4  # fills 4 exactly
    assert len(grow("m", queue, 0, SIZES, linear).requests) == 4  # not 5 padded to 8
    # Where padding costs no more than a batch of the rest (EXEC: 4 in 5 ms = 2 in 3 ms, then 1
    # in 2 ms), 3 samples still run padded to 4; 5 padded to 8 (9 ms) would cost more than 4 and 1 (7 ms).
    assert grow("m", queue[:3], 0, SIZES, EXEC.get).batch_size == 4
    assert grow("m", queue, 0, SIZES, EXEC.get).batch_size == 4


def test_the_rest_of_a_batch_is_priced_split_as_batching_runs_it():
    linear = {1: 1 * MS, 2: 2 * MS, 4: 4 * MS, 8: 8 * MS}.get
    assert [split_ns(n, SIZES, linear) // MS for n in (3, 5, 6, 7)] == [3, 5, 6, 7]  # 7 as 4 + 2 + 1, not 8
    assert [split_ns(n, SIZES, EXEC.get) // MS for n in (3, 5, 7)] == [5, 7, 9]  # padded where cheaper
    queue = [request(i, 100) for i in range(7)]
    assert grow("m", queue, 0, SIZES, linear).batch_size == 4  # 4, then 3 as 2 + 1: not 7 padded to 8


def test_a_request_that_cannot_make_it_even_alone_is_skipped_not_a_stopper():
    batch = grow("m", [request(0, 1), request(1, 50)], 0, SIZES, EXEC.get)
    assert [r.request_id for r in batch.requests] == [1]
    assert grow("m", [request(0, 1)], 0, SIZES, EXEC.get) is None


# ----------------------------------------------------------------------------- placement


def device(resident: dict[str, Resident], capacity: int = 20) -> Device:
    dev = Device("w", 0, "emulated", capacity, 16 * 1024 * 1024, dict(resident))
    dev.used_pages = sum(r.pages for r in resident.values())
    return dev


def test_victims_are_idle_least_recently_used_first_queued_last_never_in_flight():
    dev = device({"old_busy": Resident(Residency.LOADED, 5, 0, in_flight=1),
                  "old_queued": Resident(Residency.LOADED, 5, 1),
                  "loading": Resident(Residency.LOADING, 5, 2),
                  "idle": Resident(Residency.LOADED, 5, 3)})
    dev.pending["old_queued"] = None
    assert placement.victims(dev, 0) == []
    assert placement.victims(dev, 5) == ["idle"]
    assert placement.victims(dev, 10) == ["idle", "old_queued"]  # a queue stranded only if it must be
    assert placement.victims(dev, 11) is None  # never the busy one, nor one still loading


# ----------------------------------------------------------------------------- latency


def test_the_tail_is_a_nearest_rank_percentile_and_the_typical_the_median():
    model = LatencyModel(window=10, percentile=99)
    for ms in (1, 1, 1, 1, 1, 1, 1, 1, 2, 9):
        model.observe_exec("m", 1, "k", ms * MS, 0)
    assert model.exec_ns("m", 1, "k") == 9 * MS and model.typical_exec_ns("m", 1, "k") == 1 * MS
    for _ in range(10):  # the window slides: the outlier is gone
        model.observe_exec("m", 1, "k", 3 * MS, 0)
    assert model.exec_ns("m", 1, "k") == model.typical_exec_ns("m", 1, "k") == 3 * MS


def test_a_profile_seeds_only_what_was_never_measured_and_forget_drops_a_model():
    model = LatencyModel()
    model.observe_exec("m", 1, "k", 4 * MS, 0)
    model.seed("m", "k", 8 * MS, {1: 1 * MS, 2: 2 * MS})
    assert model.exec_ns("m", 1, "k") == 4 * MS and model.exec_ns("m", 2, "k") == 2 * MS
    assert model.load_ns("m", "k") == 8 * MS
    model.forget("m")
    assert model.exec_ns("m", 1, "k") is None and model.load_ns("m", "k") is None


def test_doubt_forgets_a_models_worst_measurements_but_never_its_last():
    model = LatencyModel()
    for ns in (2 * MS, 2 * MS, 40 * MS):
        model.observe_exec("m", 1, "k", ns, 0)
    model.observe_exec("m", 4, "k", 9 * MS, 0)
    model.observe_exec("other", 1, "k", 30 * MS, 0)
    model.observe_exec("other", 1, "k", 3 * MS, 0)
    model.observe_finish(0, 30 * MS)
    model.observe_finish(0, 1 * MS)
    model.doubt("m")
    assert model.exec_ns("m", 1, "k") == 2 * MS  # the lone 40 ms run is forgotten
    assert model.exec_ns("m", 4, "k") == 9 * MS  # a window keeps its last measurement
    assert model.exec_ns("other", 1, "k") == 30 * MS  # other models keep theirs
    assert list(model.finish_errors.values) == [1 * MS]
    model.forget("m")
    model.doubt("m")  # a removed model has nothing left to doubt
    assert model.exec_ns("m", 1, "k") is None


def test_the_tail_allowance_is_the_late_side_of_the_finish_error_only():
    model = LatencyModel()
    assert model.finish_tail_ns(99) == 0  # nothing measured yet
    for error_ms in range(-50, 50):
        model.observe_finish(100 * MS, (100 + error_ms) * MS)
    assert 48 * MS <= model.finish_tail_ns(99) <= 49 * MS
    early = LatencyModel()
    early.observe_finish(100 * MS, 90 * MS)
    assert early.finish_tail_ns(99) == 0  # ending early asks for no allowance


def test_the_allowances_forget_an_overload_within_two_seconds_at_a_few_hundred_requests_a_second():
    """1,000 results of an overload came back 10 ms late; then 30 per 100 ms refresh, 1 ms late.
    Kept by count they would set the reply allowance for 33 refreshes; kept by the last twenty
    refreshes, for twenty."""
    model = LatencyModel()
    for _ in range(1000):
        model.observe_hops("w", 0, 0, 0, 0, 10 * MS)
        model.observe_finish(0, 10 * MS)
    model.refresh()
    refreshes = 0
    while model.return_ns("w", (99,))[0] > MS:
        for _ in range(30):
            model.observe_hops("w", 0, 0, 0, 0, MS)
            model.observe_finish(0, MS)
        model.refresh()
        refreshes += 1
        assert refreshes <= 21
    assert refreshes >= 19 and model.finish_tail_ns(99) == MS and model.start_lateness_ns("w", 99) == 0
    quiet = LatencyModel()  # 5 results a refresh: never fewer than 200 samples to read a p99 from
    for i in range(100):
        for _ in range(5):
            quiet.observe_finish(0, i)
        quiet.refresh()
    assert len(quiet.finish_errors.values) == 200 and min(quiet.finish_errors.values) == 60


def test_the_typical_error_is_each_measurement_against_the_median_before_it_as_a_share():
    model = LatencyModel(window=10, percentile=99)
    model.observe_exec("m", 1, "cpu", 1_000_000, predicted_ns=0)  # nothing predicted it: no error
    assert "exec_typical_error_share_p99" not in model.error_summary()
    for measured in (1_050_000, 900_000):  # the median is still 1 ms before each
        model.observe_exec("m", 1, "cpu", measured, predicted_ns=0)
    model.observe_exec("m", 2, "cpu", 2_000_000, predicted_ns=0)
    model.observe_exec("m", 2, "cpu", 3_000_000, predicted_ns=0)  # batch 2: 50% off its median
    summary = model.error_summary()
    assert summary["exec_typical_error_share_p99_batch1"] == pytest.approx(0.1, rel=0.02)
    assert summary["exec_typical_error_share_p99"] == pytest.approx(0.5, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["append", "append", "append", "refresh", "drop_worst"]),
                                st.integers(-5, 5)), min_size=60, max_size=400))
def test_recent_samples_keep_what_a_deque_of_limit_trimmed_at_each_refresh_keeps(steps):
    """The samples sit in one array behind a start index; what they keep, and the percentiles
    read from them, are those of the deque they replaced (maxlen `limit`, the oldest popped at a
    refresh down to the last `span` refreshes' samples or `floor`, the first largest removed)."""
    limit, span, floor = 20, 3, 5
    samples = RecentSamples(limit, span, floor)
    kept: deque[int] = deque(maxlen=limit)
    marks: deque[int] = deque([0], maxlen=span + 1)
    added = 0
    for op, value in steps:
        if op == "append":
            samples.append(value)
            kept.append(value)
            added += 1
        elif op == "refresh":
            samples.refresh()
            marks.append(added)
            while len(kept) > max(floor, added - marks[0]):
                kept.popleft()
        else:
            samples.drop_worst()
            if kept:
                kept.remove(max(kept))
        assert samples.values == list(kept) and len(samples) == len(kept)
        assert samples.percentiles((50.0, 99.0)) == percentiles_of(list(kept), (50.0, 99.0))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(-2**40, 2**40) | st.integers(0, 50), max_size=300),
       percentiles=st.lists(st.sampled_from([0.0, 50.0, 90.0, 99.0, 99.9, 100.0]) | st.floats(0, 100),
                            min_size=1, max_size=3))
def test_percentiles_are_numpys_linear_percentiles(values, percentiles):
    """The allowances refreshed from measured delays keep the figures np.percentile gave them,
    read one at a time or several from one partition."""
    expected = [int(np.percentile(np.array(values, dtype=np.int64), p)) if values else 0 for p in percentiles]
    assert percentiles_of(values, tuple(percentiles)) == expected
    assert [percentiles_of(values, (p,))[0] for p in percentiles] == expected
    assert percentiles_of(np.array(values, dtype=np.int64), tuple(percentiles)) == expected  # read in place
