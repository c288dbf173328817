"""bench.runlog: rows in, TSV out and back, summaries from HDR histograms, every report file."""

import json

import numpy as np
import pytest

from clockwork.bench import runlog
from clockwork.bench.report import Latencies
from clockwork.bench.runlog import ACTION_COLUMNS, REQUEST_COLUMNS, RunLog, summarize_run, write_run
from clockwork.common.status import Status

MS = 1_000_000


def make_log(n: int = 200, actions: bool = True) -> RunLog:
    """n requests (every 10th QUEUE_FULL, the last one unanswered) and one EXEC per request."""
    log = RunLog()
    for i in range(n):
        status = Status.QUEUE_FULL if i % 10 == 9 else Status.OK
        if i == n - 1:
            status = "UNANSWERED"
        ok = status is Status.OK
        log.request(i, f"m{i % 3}", i % 2, i * 5 * MS, i * 5 * MS + 100 * MS, status,
                    (i + 1) * MS if status != "UNANSWERED" else -1, 100_000 if ok else -1,
                    2_700_000 if ok else -1, 1 + i % 4 if ok else 0, ok and i < 3, "w0" if ok else "")
        if actions:
            log.action(i, "EXEC" if i % 20 else "LOAD", f"w{i % 2}", i % 4, f"m{i % 3}", 1, i * 5 * MS,
                       i * 5 * MS + 10, i * 5 * MS + 3 * MS, 2_700_000, 2_700_000 + (i % 5) * 10_000,
                       Status.OK if i % 7 else Status.TOO_LATE)
    return log


def test_columns_are_the_agreed_tuples():
    assert REQUEST_COLUMNS == ("request_id", "model", "priority", "arrival_ns", "deadline_ns", "status", "latency_ns",
                               "queue_ns", "exec_ns", "batch_size", "cold_start", "worker")
    assert ACTION_COLUMNS == ("action_id", "kind", "worker", "device", "model", "batch_size", "sent_ns", "begin_ns",
                              "end_ns", "predicted_ns", "measured_ns", "status")


def test_round_trip_through_tsv(tmp_path):
    log = make_log()
    log.write_requests_tsv(tmp_path / "requests.tsv")
    log.write_actions_tsv(tmp_path / "actions.tsv")
    header = (tmp_path / "requests.tsv").read_text().splitlines()[0].split("\t")
    assert tuple(header) == REQUEST_COLUMNS
    assert tuple((tmp_path / "actions.tsv").read_text().splitlines()[0].split("\t")) == ACTION_COLUMNS
    back = RunLog.load(tmp_path)
    assert back.num_requests == log.num_requests == 200 and back.num_actions == 200
    for mine, theirs in ((log.requests(), back.requests()), (log.actions(), back.actions())):
        assert list(mine) == list(theirs)
        for name in mine:
            if isinstance(mine[name], np.ndarray):
                assert np.array_equal(mine[name], theirs[name]), name
            else:
                assert mine[name] == theirs[name], name
    # Statuses are written as names, whether given as enums or as text.
    assert set(back.requests()["status"]) == {"OK", "QUEUE_FULL", "UNANSWERED"}
    assert set(back.actions()["status"]) == {"OK", "TOO_LATE"}


def test_bulk_add_equals_rows():
    rows = make_log(50, actions=False)
    bulk = RunLog()
    bulk.add_requests(rows.requests())
    for name, values in rows.requests().items():
        other = bulk.requests()[name]
        assert (np.array_equal(values, other) if isinstance(values, np.ndarray) else values == other), name
    with pytest.raises(ValueError, match="missing"):
        bulk.add_requests({"request_id": [1]})


def test_tabs_and_newlines_never_break_a_row(tmp_path):
    log = RunLog()
    log.request(1, "a\tb", 0, 0, -1, "OK", 5, 1, 1, 1, False, "w\n1")
    log.write_requests_tsv(tmp_path / "r.tsv")
    back = RunLog()
    assert back.read_requests_tsv(tmp_path / "r.tsv") == 1
    assert back.requests()["model"] == ["a b"] and back.requests()["worker"] == ["w 1"]


def test_lenient_action_reading(tmp_path):
    # Columns in another order, one missing, an unknown extra, a repeated header, a torn line.
    path = tmp_path / "controller-actions.tsv"
    cols = [c for c in ACTION_COLUMNS if c != "begin_ns"][::-1] + ["extra"]
    row = {"action_id": "7", "kind": "EXEC", "worker": "w", "device": "1", "model": "m", "batch_size": "4",
           "sent_ns": "10", "end_ns": "", "predicted_ns": "5", "measured_ns": "6", "status": "OK", "extra": "x"}
    lines = ["\t".join(cols), "\t".join(row[c] for c in cols), "\t".join(cols), "7\tINF"]
    path.write_text("\n".join(lines) + "\n")
    log = RunLog()
    with pytest.raises(ValueError):
        log.read_actions_tsv(path)
    assert log.read_actions_tsv(path, lenient=True) == 1
    act = log.actions()
    assert act["action_id"].tolist() == [7] and act["begin_ns"].tolist() == [-1] and act["end_ns"].tolist() == [-1]
    assert act["kind"] == ["EXEC"] and act["batch_size"].tolist() == [4]


def test_summary_percentiles_come_from_hdr():
    # Latencies 1..10000 ms, one each: the percentiles are known to within HDR's 0.1%.
    log = RunLog()
    for i in range(10_000):
        log.request(i, "m", 0, i * MS, -1, "OK", (i + 1) * MS, -1, -1, 1, False, "w")
    s = summarize_run(log, "known", slo_ms=5000)
    lat = s["latency_ms"]
    for key, expected in (("p50", 5000), ("p99", 9900), ("p99.9", 9990), ("p99.99", 9999), ("max", 10000)):
        assert lat[key] == pytest.approx(expected, rel=2e-3), key
    assert s["met_slo"] == 5000 and s["attainment"] == pytest.approx(0.5)  # deadline -1: the run's SLO
    assert s["ok"] == 10_000 and s["by_status"] == {"OK": 10_000}
    # The same numbers as recording one value at a time.
    one = Latencies()
    for i in range(10_000):
        one.record_ns((i + 1) * MS)
    assert one.summary_ms() == lat


def test_record_many_matches_record_one_by_one():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(14, 2.5, 20_000).astype(np.int64), [0, -5, 999, 1000, 2_047_999, 2_048_000]])
    a, b = Latencies(), Latencies()
    for v in values.tolist():
        a.record_ns(v)
    b.record_many_ns(values)
    assert a.count == b.count and a.summary_ms() == b.summary_ms() and a.min_ms() == b.min_ms()
    assert list(a._hist.counts) == list(b._hist.counts)


def test_summary_counts_and_slo_by_deadline():
    log = make_log()
    s = summarize_run(log, "t", slo_ms=100)
    assert s["requests"] == 200
    assert s["by_status"] == {"OK": 180, "QUEUE_FULL": 19, "UNANSWERED": 1}
    assert s["unanswered"] == 1
    # Each request's deadline is arrival + 100 ms and latency (i + 1) ms: OK ones with i < 100 meet it.
    assert s["met_slo"] == sum(1 for i in range(100) if i % 10 != 9)
    assert s["cold_starts"] == 3
    assert s["actions"]["by_kind"]["LOAD"]["count"] == 10
    err = s["actions"]["prediction_error"]["EXEC"]
    assert err["abs_error_ms"]["max"] == pytest.approx(0.04, rel=0.01)
    assert 0 < err["underpredicted_fraction"] < 1


def test_write_run_writes_every_file(tmp_path):
    summary = write_run(tmp_path / "r", make_log(), "a run", 100, extra={"setup": {"rate": 5}})
    for name in ("requests.tsv", "actions.tsv", "summary.json", "summary.csv", "timeseries.csv", "timeseries.png",
                 "cdf.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert on_disk["ok"] == summary["ok"] == 180 and on_disk["setup"] == {"rate": 5}
    csv_text = (tmp_path / "r" / "summary.csv").read_text()
    assert "latency_ms.p99.99," in csv_text and "by_status.QUEUE_FULL,19" in csv_text
    series = (tmp_path / "r" / "timeseries.csv").read_text().splitlines()
    assert series[0].startswith("t_s,offered_per_s,throughput_per_s,goodput_per_s")
    assert len(series) == 1 + 1  # 1 s of arrivals: one bin


def test_write_run_without_actions_or_rows(tmp_path):
    write_run(tmp_path / "a", make_log(20, actions=False), "no actions", 100)
    assert not (tmp_path / "a" / "actions.tsv").exists() and (tmp_path / "a" / "cdf.png").exists()
    summary = write_run(tmp_path / "b", RunLog(), "empty", 100)
    assert summary["requests"] == 0 and summary["latency_ms"]["p50"] is None
    assert (tmp_path / "b" / "timeseries.png").exists()


def test_timeseries_bins():
    log = RunLog()
    for i in range(3000):  # 1000/s for 3 s, all OK in 2 ms, batch 2; an UNLOAD every second
        log.request(i, "m", 0, i * MS, -1, "OK", 2 * MS, 0, 1, 2, i % 1000 == 0, "w")
    for s in range(3):
        log.action(s, "UNLOAD", "w", 0, "m", 0, s * 1000 * MS, -1, -1, -1, -1, "OK")
    ts = runlog.timeseries(log, slo_ms=100)
    assert ts["offered_per_s"].tolist() == [1000, 1000, 1000]
    assert ts["throughput_per_s"].sum() == 3000 and ts["goodput_per_s"].sum() == 3000
    assert ts["evictions_per_s"].tolist() == [1, 1, 1] and ts["cold_starts_per_s"].tolist() == [1, 1, 1]
    assert ts["mean_batch_size"].tolist() == [2, 2, 2]
    assert ts["latency_p50_ms"] == pytest.approx([2, 2, 2], rel=1e-2)


def test_window_keeps_and_shifts():
    log = make_log(100)  # arrivals every 5 ms
    part = runlog.window(log, 100 * MS, 200 * MS)
    req = part.requests()
    assert part.num_requests == 20 and req["arrival_ns"].tolist() == [i * 5 * MS for i in range(20)]
    assert req["deadline_ns"][0] == 100 * MS and req["request_id"].tolist() == list(range(20, 40))
    assert part.num_actions == 20 and part.actions()["sent_ns"][0] == 0
    assert runlog.window(log, 0).num_requests == 100


def test_action_kinds_are_canonical(tmp_path):
    # The controller's ActionRecord says exec/load/unload; the logs say EXEC/LOAD/UNLOAD (an old log's INFER reads as EXEC).
    log = RunLog()
    for i, kind in enumerate(("exec", "load", "unload", "INFER")):
        log.action(i, kind, "w", 0, "m", 1, i, i, i + 1, 5, 6, "OK")
    assert log.actions()["kind"] == ["EXEC", "LOAD", "UNLOAD", "EXEC"]
    log.write_actions_tsv(tmp_path / "a.tsv")
    assert [line.split("\t")[1] for line in (tmp_path / "a.tsv").read_text().splitlines()[1:]] == \
        ["EXEC", "LOAD", "UNLOAD", "EXEC"]
    s = summarize_run(log)
    assert s["actions"]["by_kind"]["EXEC"]["count"] == 2 and "EXEC" in s["actions"]["prediction_error"]
