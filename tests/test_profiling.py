"""Profiles at upload (worker/runtimes/base.timed_runs): a session's first runs are slower than
the rest, so each batch size's timed runs come after warm-up calls, bounded in number and time.
A fake clock that each call moves on stands in for the model's run time."""

from __future__ import annotations

import numpy as np

from clockwork.worker.runtimes.base import WARMUP_NS, WARMUP_RUNS, timed_runs


class FakeModel:
    """`execute` moves the clock on by `run_ns`; counts its calls."""

    def __init__(self, run_ns: int):
        self.run_ns = run_ns
        self.now_ns = 0
        self.calls = 0

    def clock(self) -> int:
        return self.now_ns

    def execute(self, _inputs: dict[str, np.ndarray]) -> None:
        self.calls += 1
        self.now_ns += self.run_ns


def test_a_fast_model_is_warmed_up_by_its_full_count_of_calls_before_the_timed_runs():
    model = FakeModel(run_ns=20_000)
    times = timed_runs(model.execute, {}, 10, clock=model.clock)
    assert model.calls == WARMUP_RUNS + 10
    assert times == [20_000] * 10


def test_a_slow_model_is_warmed_up_within_the_time_budget_and_at_least_once():
    model = FakeModel(run_ns=WARMUP_NS // 3 + 1)  # three calls pass the budget
    timed_runs(model.execute, {}, 5, clock=model.clock)
    assert model.calls == 3 + 5
    slower = FakeModel(run_ns=2 * WARMUP_NS)  # one call is past it already
    assert timed_runs(slower.execute, {}, 1, clock=slower.clock) == [2 * WARMUP_NS]
    assert slower.calls == 1 + 1
