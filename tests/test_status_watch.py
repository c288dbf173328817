"""`clockwork status --watch` against a real cluster, and its frame rendered from fixed bodies."""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import pytest

from clockwork.bench.models import profile_json
from clockwork.bench.procs import WorkerSpec, cluster
from clockwork.client import Client, cli

pytestmark = pytest.mark.timeout(120)


def test_watch_prints_refreshing_frames_with_rates(tmp_path, capsys):
    with cluster(tmp_path, [WorkerSpec("emu", "emulated", devices=2, device_memory_mb=256)]) as c:
        with c.client() as admin:
            admin.upload(profile_json(), "resnet", format="profile")
        stop = threading.Event()

        def load():
            with Client(c.client_endpoint, timeout_s=10) as client:
                while not stop.is_set():
                    client.infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ms=200)

        traffic = threading.Thread(target=load, daemon=True)
        traffic.start()
        try:
            code = cli.main(["--endpoint", c.client_endpoint, "status", "--watch", "--interval", "0.5",
                             "--iterations", "3"])
        finally:
            stop.set()
            traffic.join(10)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    frames = out.split("clockwork status  ")[1:]
    assert len(frames) == 3
    first, last = frames[0], frames[-1]
    assert "WORKER" in first and "emu" in first and "resnet" in first and "QUEUED" in first
    assert "requests/s: offered -," in first  # no rate before a second frame
    served = float(last.split("served ")[1].split(",")[0])
    assert served > 0  # the traffic thread's requests, as a rate over the last interval
    assert re.search(r"SLO attainment: \d+\.\d% last interval", last)  # the figure itself: test_a_frame_from_fixed_bodies


def test_a_frame_from_fixed_bodies():
    before = {"workers": [{"name": "w", "devices": [{"device_id": 0, "exec_busy_ns": 1_000_000_000}]}], "models": [{"name": "m", "answered": 10, "met_slo": 10}],
              "counters": {"requests_offered": 10, "answered_ok": 9, "rejected_would_miss_deadline": 1,
                           "rejected_bad_input": 5, "met_slo": 9}}
    after = {"workers": [{"name": "w", "alive": True, "devices": [{"device_id": 0, "kind": "v100",
                                                                   "memory_bytes": 2 << 30, "used_bytes": 1 << 30,
                                                                   "loaded": ["m"], "busy_ms": 1.5,
                                                                   "exec_busy_ns": 2_000_000_000}]}],
             "models": [{"name": "m", "queued": 3, "in_flight": 1, "resident_on": ["w:0"], "answered": 30,
                         "met_slo": 25}],
             "counters": {"requests_offered": 30, "answered_ok": 27, "rejected_would_miss_deadline": 3,
                          "rejected_bad_input": 25, "met_slo": 24}}
    frame = cli.render_watch(after, before, 2.0, "HEADER")
    assert frame.startswith("HEADER")
    assert "1.0 GiB / 2.0 GiB  50.0%" in frame and "v100" in frame  # busy 1 s of the last 2
    model_row = next(line for line in frame.splitlines() if line.startswith("m "))
    assert model_row.split()[-2:] == ["10.0", "75.0%"]  # 20 answered in 2 s, 15 of them in their SLO
    assert "offered 10.0, served 9.0, goodput 7.5, refused 11.0" in frame
    # attainment leaves out the caller's own errors (bad input): 15 met of 20 served
    assert "SLO attainment: 75.0% last interval, 80.0% since the controller started" in frame
    assert "offered -," in cli.render_watch(after, None, 0.0, "H")


def test_ctrl_c_ends_a_watch_cleanly():
    class Interrupting:
        endpoint = "tcp://127.0.0.1:1"

        def status(self, models_limit=50):
            raise KeyboardInterrupt

    out = io.StringIO()
    assert cli.watch_status(Interrupting(), 0.1, out=out) is None


def test_a_frame_at_4000_models_stays_readable():
    names = [f"tenant-{i % 40:02}-model-{i:04}" for i in range(4000)]
    devices = [{"device_id": i, "kind": "h200", "memory_bytes": 141 << 30, "used_bytes": 100 << 30,
                "loaded": names[i:i + 4], "loaded_count": 2000, "loading": names[:1], "loading_count": 1}
               for i in range(8)]
    models = [{"name": n, "queued": 1, "in_flight": 0, "resident_on": ["w/0", "w/1", "w/2", "w/3"], "replicas": 6,
               "answered": 0, "met_slo": 0} for n in names[:50]]
    body = {"workers": [{"name": "w", "alive": True, "devices": devices}], "models": models, "models_total": 4000,
            "counters": {}}
    for frame in (cli.render_watch(body, None, 0.0, "H"), cli.render_status(body)):
        lines = frame.splitlines()
        assert "… and 3950 more models" in frame and len(lines) < 80
        assert max(map(len, lines)) < 160
        assert "tenant-00-model-0000,tenant-01-model-0001 +1998" in frame and "w/0,w/1 +4" in frame
    assert cli.model_table({"models_total": 3}, ["MODEL"], []).startswith("… and 3 more models")
    assert cli.some([], 0) == "-" and cli.some(None, 7) == "7" and cli.some(["a"], None) == "a"


def test_status_shows_each_workers_dispatch_allowance():
    """Across hosts each worker's allowance follows its own link: a far one shows a larger one."""
    body = {"workers": [{"name": n, "runtime": "emulated", "alive": True, "dispatch_ms": ms,
                         "devices": [{"device_id": 0, "kind": "emu"}]} for n, ms in (("near", 1.2), ("far", 3.04))]}
    header, *lines = cli.render_status(body).splitlines()[:3]
    rows = {line.split()[0]: line.split() for line in lines}
    column = header.split().index("DISPATCH_MS")
    assert rows["near"][column] == "1.20" and rows["far"][column] == "3.04"
