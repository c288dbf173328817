"""clockwork-bench run: end to end on real processes, plus its pure helpers (action-log
merging, profile tables) and the multi-process generator."""

import json

import numpy as np
import pytest

from clockwork.bench import run as bench_run
from clockwork.bench import workload
from clockwork.bench.loadgen import RawResults, _merge_raw, add_to_runlog, results_from_raw
from clockwork.bench.runlog import ACTION_COLUMNS, REQUEST_COLUMNS, RunLog

REPORT_FILES = ("requests.tsv", "summary.json", "summary.csv", "timeseries.csv", "timeseries.png", "cdf.png")


def test_merge_of_generator_parts_by_schedule_index():
    def part(codes, worker_names, workers):
        n = len(codes)
        return RawResults(1 << 32, 1000, 5000, np.array(codes, np.int16), np.full(n, 1100, np.int64),
                          np.full(n, 2000, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                          np.ones(n, np.int32), np.zeros(n, np.int8), np.array(workers, np.int32), worker_names,
                          {"OK": ""}, 1, 0)

    a = part([0, 21], ["w1"], [0, -1])
    b = part([0, -1], ["w2"], [0, -1])
    merged = _merge_raw([a, b], [np.array([0, 2]), np.array([1, 3])], 4)
    assert merged.status.tolist() == [0, 0, 21, -1]
    assert [merged.workers[w] if w >= 0 else None for w in merged.worker.tolist()] == ["w1", "w2", None, None]
    assert merged.bad_replies == 2
    sched = workload.Schedule(np.array([0, 100, 200, 300]), np.array([0, 1, 0, 1], np.int32), 1000,
                              np.array([1.0, 1.0]))
    res = results_from_raw(merged, sched, [100.0, 100.0], [None, None])
    assert res.ok == 2 and res.by_status["QUEUE_FULL"] == 1 and res.unanswered == 1 and res.by_status["BAD_REPLY"] == 2
    log = RunLog()
    add_to_runlog(log, merged, sched, ["a", "b"], [100.0, 100.0])
    req = log.requests()
    assert req["status"] == ["OK", "OK", "QUEUE_FULL", "UNANSWERED"]
    assert req["latency_ns"].tolist() == [1000, 900, 800, -1]  # recv - (start + scheduled)
    assert req["deadline_ns"].tolist() == [100_000_000, 100_000_100, 100_000_200, 100_000_300]
    assert req["worker"] == ["w1", "w2", "", ""] and req["request_id"].tolist() == [0, 1, 2, 3]


def test_action_log_merge_makes_times_relative(tmp_path):
    start = 10_000_000_000
    path = tmp_path / "controller-actions.tsv"
    def row(i, sent):
        return "\t".join(str(v) for v in (i, "EXEC", "w", 0, "m", 1, sent, sent + 5, sent + 10, 9, 10, "OK"))

    (tmp_path / "controller-actions.tsv.1").write_text("\t".join(ACTION_COLUMNS) + "\n" + row(1, start - 50) + "\n"
                                                       + row(2, start + 100) + "\n")
    path.write_text("\t".join(ACTION_COLUMNS) + "\n" + row(3, start + 200) + "\n")
    log = RunLog()
    assert bench_run.merge_action_log(log, path, start) == 2  # the one before the start is left out
    act = log.actions()
    assert act["action_id"].tolist() == [2, 3]
    assert act["sent_ns"].tolist() == [100, 200] and act["end_ns"].tolist() == [110, 210]
    assert bench_run.merge_action_log(RunLog(), None, start) == 0


def test_profile_tables(tmp_path):
    raw = tmp_path / "p.txt"
    base = "main (/x/controller/main.py:3);run (/x/controller/daemon.py:70)"
    raw.write_text(f"{base};poll (/v/site-packages/zmq/sugar/poll.py:9) 30\n"
                   f"{base};tick (/x/controller/core.py:5) 10\n")
    t = bench_run.profile_tables(raw)
    assert t["samples"] == 40
    assert t["own"][0] == ("poll (zmq/sugar/poll.py)", 30, 75.0)
    assert ("run (controller/daemon.py)", 40, 100.0) in t["inclusive"]
    assert "poll" in bench_run.format_profile("controller", t, 1.0, 100)


def test_schedules_by_name():
    for kind in bench_run.WORKLOADS:
        sched = bench_run.make_schedule(kind, 200.0, 5, 2.0, seed=1)
        assert len(sched) > 0 and sched.num_models == 5
    with pytest.raises(ValueError):
        bench_run.make_schedule("nope", 1.0, 1, 1.0, 1)


def test_echo_run_with_two_generator_processes(tmp_path, capsys):
    out = tmp_path / "echo"
    code = bench_run.main(["--echo", "--rate", "2000", "--duration-s", "1", "--loadgen-procs", "2", "--models", "4",
                           "--quiet", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 1500 and summary["ok"] == summary["requests"]
    assert summary["workers"] == {"echo": summary["ok"]}
    lines = (out / "requests.tsv").read_text().splitlines()
    assert tuple(lines[0].split("\t")) == REQUEST_COLUMNS and len(lines) == summary["requests"] + 1
    ids = [int(line.split("\t")[0]) for line in lines[1:]]
    assert sorted(ids) == list(range(len(ids)))


@pytest.mark.timeout(120)
def test_real_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = bench_run.main(["--rate", "100", "--duration-s", "1.5", "--workers", "1", "--devices-per-worker", "2",
                           "--models", "3", "--warmup-s", "0.5", "--quiet", "--out", str(out)])
    assert code == 0
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 100 and summary["unanswered"] == 0
    assert summary["ok"] >= 0.99 * summary["requests"]
    assert summary["setup"]["rate"] == 100 and "controller" in summary["cpu"]
    back = RunLog.load(out)
    assert back.num_requests == summary["requests"]
    assert set(back.requests()["worker"]) <= {"emu0", ""}
    assert back.num_actions > 0  # the controller's action log: its rows are merged in
    text = capsys.readouterr().out
    assert "met SLO" in text and "CPU us/request" in text


def test_closed_loop_against_the_echo_server(tmp_path):
    out = tmp_path / "closed"
    code = bench_run.main(["--echo", "--workload", "closed", "--clients", "4", "--think-ms", "2", "--duration-s", "0.5",
                           "--models", "3", "--quiet", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # 4 clients, ~2 ms think + sub-ms reply: roughly 4 / 2.3 ms over 0.5 s, every one answered.
    assert 200 < summary["requests"] < 1500 and summary["ok"] == summary["requests"]
    back = RunLog.load(out)
    arrivals = back.requests()["arrival_ns"]
    assert arrivals.min() >= 0 and arrivals.max() < 0.5e9
