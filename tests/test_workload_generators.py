"""The time-varying workload generators: seeded, skewed, changing per minute, and the reader of
the Azure Functions 2019 trace format."""

import csv

import numpy as np
import pytest

from clockwork.bench import workload
from clockwork.bench.workload import NS_PER_S, AzureLike, ClosedLoop


def same(a, b) -> bool:
    return np.array_equal(a.times_ns, b.times_ns) and np.array_equal(a.models, b.models)


def test_piecewise_rates_follow_each_interval():
    rates = np.array([[1000.0, 0.0], [0.0, 500.0], [250.0, 250.0]])
    s = workload.piecewise_schedule(rates, 2.0, seed=3)
    assert s.duration_ns == 6 * NS_PER_S and np.all(np.diff(s.times_ns) >= 0)
    interval = s.times_ns // (2 * NS_PER_S)
    for k in range(3):
        for m in range(2):
            n = int(((interval == k) & (s.models == m)).sum())
            expected = rates[k, m] * 2
            assert abs(n - expected) <= 5 * np.sqrt(expected)
    assert same(s, workload.piecewise_schedule(rates, 2.0, seed=3))
    with pytest.raises(ValueError):
        workload.piecewise_schedule(np.array([1.0, 2.0]), 1.0, seed=0)


def test_azure_like_is_seeded_and_hits_the_mean_rate():
    a = workload.azure_like_schedule(2000, 300, 120, seed=5)
    b = workload.azure_like_schedule(2000, 300, 120, seed=5)
    c = workload.azure_like_schedule(2000, 300, 120, seed=6)
    assert same(a, b) and not same(a, c)
    assert a.duration_ns == 120 * NS_PER_S and a.times_ns.max() < a.duration_ns
    assert abs(len(a) - 240_000) < 0.02 * 240_000  # the mean is scaled to the asked rate
    assert a.rates_per_s.sum() == pytest.approx(2000, rel=1e-6)


def test_azure_like_popularity_is_zipf_skewed():
    s = workload.azure_like_schedule(5000, 1000, 120, seed=1, shape=AzureLike(burst_probability=0))
    counts = np.sort(s.counts())[::-1]
    top10 = counts[:10].sum() / counts.sum()
    # Zipf(1) over 1000 models: the top 1% of models take ~39% of requests (per-minute noise aside).
    assert 0.25 < top10 < 0.55
    assert counts[0] > 300 * counts[-1]  # Zipf(1): the head is ~1000x the tail
    flat = workload.azure_like_schedule(5000, 1000, 120, seed=1, shape=AzureLike(zipf_exponent=0, minute_sigma=0,
                                                                                burst_probability=0))
    assert flat.counts().max() < 3 * flat.counts().mean()


def test_azure_like_rates_change_from_minute_to_minute():
    shape = AzureLike(burst_probability=0.0, minute_sigma=0.8)
    s = workload.azure_like_schedule(3000, 50, 300, seed=2, shape=shape)
    minute = s.times_ns // (60 * NS_PER_S)
    per_minute = np.array([np.bincount(s.models[minute == k], minlength=50) for k in range(5)])
    # A popular model's count moves far more than Poisson noise (sqrt(n)) between minutes.
    top = per_minute[:, :5].astype(float)
    swings = np.abs(np.diff(top, axis=0)) / np.sqrt(top[:-1] + 1)
    assert swings.max() > 10
    steady = workload.azure_like_schedule(3000, 50, 300, seed=2, shape=AzureLike(burst_probability=0.0,
                                                                                 minute_sigma=0.0))
    m2 = steady.times_ns // (60 * NS_PER_S)
    first = np.array([np.bincount(steady.models[m2 == k], minlength=50) for k in range(5)])[:, 0].astype(float)
    assert np.all(np.abs(np.diff(first)) < 6 * np.sqrt(first[:-1]))


def test_azure_like_bursts_raise_a_quiet_model_for_seconds():
    shape = AzureLike(zipf_exponent=0.0, minute_sigma=0.0, burst_probability=0.5, burst_factor=50, burst_mean_s=3)
    s = workload.azure_like_schedule(200, 20, 60, seed=4, shape=shape)
    per_second = np.zeros((60, 20))
    np.add.at(per_second, (s.times_ns // NS_PER_S, s.models), 1)
    assert per_second.max() > 10 * per_second.mean()


def test_on_off_bursts_and_mean_rate():
    s = workload.on_off_schedule([400.0, 0.0, 100.0], 200, seed=9, on_s=2, off_s=2)
    assert same(s, workload.on_off_schedule([400.0, 0.0, 100.0], 200, seed=9, on_s=2, off_s=2))
    counts = s.counts()
    assert counts[1] == 0
    assert abs(counts[0] - 400 * 100) < 0.15 * 400 * 100  # ON half the time
    per_second = np.bincount(s.times_ns[s.models == 0] // NS_PER_S, minlength=200)
    assert (per_second == 0).mean() > 0.2 and per_second.max() > 300  # silences and bursts
    assert s.rates_per_s[0] == pytest.approx(200)


def test_closed_loop_clients_wait_for_replies():
    clients = ClosedLoop.clients_for(50, 10, seed=1)
    assert len(clients) == 50 and np.bincount(clients, minlength=10)[0] > np.bincount(clients, minlength=10)[9]
    loop = ClosedLoop(clients, duration_s=1.0, seed=2, think_s=0.01)
    first = loop.first_sends()
    assert len(first) == 50 and first == sorted(first)
    t, model = loop.next_send(3, reply_ns=500_000_000)
    assert t >= 500_000_000 and model == clients[3]
    assert loop.next_send(3, reply_ns=2 * NS_PER_S) is None  # past the run
    again = ClosedLoop(clients, duration_s=1.0, seed=2, think_s=0.01)
    assert again.first_sends() == first


def write_azure_csv(path, rows):
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["HashOwner", "HashApp", "HashFunction", "Trigger"] + [str(m) for m in range(1, 1441)])
        for i, counts in enumerate(rows):
            out.writerow([f"o{i}", f"a{i}", f"f{i}", "http"] + [str(c) for c in counts])


def test_azure_csv_reader_sorts_blocks_and_scales(tmp_path):
    minutes = 1440
    rows = []
    # Function popularity in file order: 1, 4, 2, 3 (x 60 per minute) for 2 minutes, then silence.
    for level in (1, 4, 2, 3):
        counts = [0] * minutes
        counts[0] = counts[1] = 60 * level
        rows.append(counts)
    path = tmp_path / "invocations_per_function_md.anon.d01.csv"
    write_azure_csv(path, rows)
    s = workload.read_azure_functions(str(path), num_models=2, scale=2.0, seed=1, minutes=2)
    assert s.duration_ns == 120 * NS_PER_S
    # Sorted by popularity: functions (4, 3) -> model 0, (2, 1) -> model 1; both scaled by 2.
    counts = s.counts()
    expected = np.array([(4 + 3) * 60 * 2 * 2, (2 + 1) * 60 * 2 * 2])
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected))
    minute = s.times_ns // (60 * NS_PER_S)
    assert abs((minute == 0).sum() - (minute == 1).sum()) < 5 * np.sqrt(len(s))
    again = workload.read_azure_functions(str(path), num_models=2, scale=2.0, seed=1, minutes=2)
    assert same(s, again)
    one_each = workload.read_azure_functions(str(path), num_models=4, seed=1, minutes=2)
    order = np.argsort(-one_each.counts())
    assert list(order) == [0, 1, 2, 3]  # model 0 is the busiest
    with pytest.raises(ValueError):
        workload.read_azure_functions(str(path), num_models=5, seed=1)
    later = workload.read_azure_functions(str(path), num_models=2, seed=1, start_minute=2, minutes=5)
    assert len(later) == 0  # the trace is silent after minute 2


def test_azure_csv_reader_refuses_other_files(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError):
        workload.read_azure_functions(str(bad), num_models=1)
