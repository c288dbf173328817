"""Arrival schedules: deterministic for a seed, statistically right, pure."""

import numpy as np
import pytest

from clockwork.bench import workload
from clockwork.bench.workload import NS_PER_S


def test_same_seed_same_schedule_and_different_seed_differs():
    rates = workload.zipf_rates(300, 10)
    a = workload.poisson_schedule(rates, 5, seed=7)
    b = workload.poisson_schedule(rates, 5, seed=7)
    c = workload.poisson_schedule(rates, 5, seed=8)
    assert np.array_equal(a.times_ns, b.times_ns) and np.array_equal(a.models, b.models)
    assert not (len(a) == len(c) and np.array_equal(a.times_ns, c.times_ns))


def test_times_sorted_inside_window_and_models_in_range():
    s = workload.poisson_schedule([100, 50, 25], 2.0, seed=1)
    assert s.times_ns.dtype == np.int64 and s.models.dtype == np.int32
    assert np.all(np.diff(s.times_ns) >= 0)
    assert s.times_ns.min() >= 0 and s.times_ns.max() < 2 * NS_PER_S
    assert set(np.unique(s.models)) <= {0, 1, 2}
    assert s.duration_ns == 2 * NS_PER_S
    pairs = list(s)
    assert len(pairs) == len(s) and pairs[0] == (int(s.times_ns[0]), int(s.models[0]))


def test_rates_within_statistical_tolerance():
    # Fixed seed, so this is deterministic; the tolerance is ~5 standard deviations.
    rates = np.array([400.0, 200.0, 100.0, 50.0])
    duration_s = 20.0
    s = workload.poisson_schedule(rates, duration_s, seed=123)
    expected = rates * duration_s
    counts = s.counts()
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))
    assert abs(len(s) - expected.sum()) <= 5 * np.sqrt(expected.sum())


def test_interarrival_gaps_are_exponential():
    s = workload.poisson_schedule([1000.0], 20.0, seed=5)
    gaps_s = np.diff(s.times_ns) / NS_PER_S
    mean = gaps_s.mean()
    assert mean == pytest.approx(1e-3, rel=0.03)
    # Exponential: standard deviation equals the mean, and P(gap > mean) = e^-1.
    assert gaps_s.std() == pytest.approx(mean, rel=0.05)
    assert (gaps_s > mean).mean() == pytest.approx(np.exp(-1), abs=0.02)


def test_zipf_weights():
    w = workload.zipf_weights(5, 1.0)
    assert w.sum() == pytest.approx(1.0)
    assert np.all(np.diff(w) < 0)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert np.allclose(workload.zipf_weights(4, 0.0), 0.25)
    assert workload.zipf_rates(100, 5).sum() == pytest.approx(100)
    with pytest.raises(ValueError):
        workload.zipf_weights(0)
    with pytest.raises(ValueError):
        workload.zipf_weights(3, -1)


def test_zero_rate_models_get_nothing_and_bad_input_is_refused():
    s = workload.poisson_schedule([100.0, 0.0], 3.0, seed=2)
    assert s.counts()[1] == 0
    assert len(workload.poisson_schedule([0.0], 1.0, seed=2)) == 0
    for bad in ([], [-1.0], [float("nan")]):
        with pytest.raises(ValueError):
            workload.poisson_schedule(bad, 1.0, seed=0)
    with pytest.raises(ValueError):
        workload.poisson_schedule([1.0], 0, seed=0)


def test_constant_and_concat():
    s = workload.constant_schedule([10.0, 5.0], 1.0)
    assert list(s.counts()) == [10, 5]
    assert np.all(np.diff(s.times_ns) >= 0)
    both = workload.concat(s, workload.poisson_schedule([10.0, 5.0], 1.0, seed=1))
    assert both.duration_ns == 2 * NS_PER_S
    assert np.all(np.diff(both.times_ns) >= 0)
    assert both.times_ns[len(s):].min() >= NS_PER_S
