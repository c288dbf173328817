"""Reports: HDR percentiles against known data, tables, JSON, and the CDF plot."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from clockwork.bench import report
from clockwork.bench.report import GroupResults, Latencies, LoadResults


def test_percentiles_match_known_data_within_hdr_precision():
    lat = Latencies()
    values_ms = np.arange(1, 10_001) / 10.0  # 0.1 .. 1000 ms, uniformly
    for v in values_ms:
        lat.record_ns(int(v * 1e6))
    assert lat.count == 10_000
    for p in (50, 99, 99.9, 99.99):
        exact = np.percentile(values_ms, p, method="higher")
        assert lat.percentile_ms(p) == pytest.approx(exact, rel=2e-3)
    assert lat.max_ms() == pytest.approx(1000, rel=1e-3)
    assert lat.min_ms() == pytest.approx(0.1, rel=1e-3)
    summary = lat.summary_ms()
    assert list(summary) == ["p50", "p99", "p99.9", "p99.99", "max"]


def test_empty_histogram_is_nan_and_values_are_clamped():
    lat = Latencies()
    assert math.isnan(lat.percentile_ms(50)) and math.isnan(lat.max_ms())
    assert lat.cdf_ms() == ([], [])
    lat.record_ns(-5)  # clock granularity can make a difference negative: kept, at the floor
    lat.record_ns(10**18)
    assert lat.count == 2
    assert lat.min_ms() == pytest.approx(0.001)


def test_cdf_is_monotone_and_ends_at_one():
    lat = Latencies()
    for v in [1, 1, 2, 3, 5, 8, 13, 21, 34]:
        lat.record_ns(v * 1_000_000)
    xs, ys = lat.cdf_ms()
    assert xs == sorted(xs) and ys == sorted(ys)
    assert ys[-1] == pytest.approx(1.0)
    assert ys[0] == pytest.approx(2 / 9)


def _results() -> LoadResults:
    res = LoadResults(scheduled=10, schedule_duration_ns=2_000_000_000)
    res.sent, res.answered, res.met_slo, res.cold_starts = 10, 9, 6, 1
    res.by_status = Counter({"OK": 7, "QUEUE_FULL": 2})
    res.unanswered = 1
    res.batch_sizes = Counter({1: 5, 4: 2})
    group = GroupResults(slo_ms=100.0, sent=10, ok=7, met_slo=6)
    for v in range(1, 8):
        res.latency.record_ns(v * 20_000_000)
        group.latency.record_ns(v * 20_000_000)
        res.exec_time.record_ns(3_000_000)
        res.send_lag.record_ns(50_000)
    res.reject_latency.record_ns(1_000_000)
    res.groups["emulated"] = group
    return res


def test_summary_table_and_json(tmp_path):
    s = report.summarize(_results(), name="t", prediction_error={"exec_prediction_error_ns_p99": 12345})
    assert s.offered == 10 and s.ok == 7 and s.met_slo == 6 and s.unanswered == 1
    assert s.goodput_per_s == pytest.approx(3.0)
    assert s.by_status == {"OK": 7, "QUEUE_FULL": 2}
    text = report.format_summary(s)
    for needle in ("offered", "met SLO", "QUEUE_FULL", "p99.9", "cold starts", "exec_prediction_error_ns_p99",
                   "emulated (SLO 100 ms)"):
        assert needle in text
    path = report.write_json(tmp_path / "sub" / "s.json", s)
    data = json.loads(path.read_text())
    assert data["latency_ms"]["p50"] == pytest.approx(80, rel=2e-3)
    assert data["groups"]["emulated"]["met_slo"] == 6


def test_json_turns_nan_into_null(tmp_path):
    s = report.summarize(LoadResults(scheduled=0, schedule_duration_ns=1))
    data = json.loads(report.write_json(tmp_path / "s.json", s).read_text())
    assert data["latency_ms"]["p50"] is None
    assert "-" in report.format_summary(s)


def test_prediction_counters_picks_prediction_keys_only():
    counters = {"exec_prediction_error_ns_p50": 1, "loads": 3, "load_prediction_error_ns_p99": 2}
    assert report.prediction_counters(counters) == {"exec_prediction_error_ns_p50": 1,
                                                     "load_prediction_error_ns_p99": 2}


def test_format_table_aligns_columns():
    text = report.format_table([("a", 1, 2.5), ("long name", 100, float("nan"))], header=("what", "n", "ms"))
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].index("1") == lines[3].index("100") + 2  # numbers right-aligned
    assert lines[3].endswith("-")


def test_cdf_png_written(tmp_path):
    a, b = Latencies(), Latencies()
    rng = np.random.default_rng(0)
    for v in rng.lognormal(2, 0.5, 500):
        a.record_ns(int(v * 1e6))
        b.record_ns(int(v * 2e6))
    path = report.write_cdf_png(tmp_path / "out" / "cdf.png", {"a": a, "b": b, "empty": Latencies()},
                                slo_ms={"SLO a": 50, "SLO b": 100})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
