"""Prometheus metrics: the telemetry fed event by event, then a real cluster's endpoints scraped
over HTTP and parsed with prometheus-client's own parser."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clockwork.bench.models import profile_json
from clockwork.bench.procs import WorkerSpec, cluster, free_port
from clockwork.client import CapacityError, Client
from clockwork.common import schema
from clockwork.common.config import ControllerConfig
from clockwork.common.metrics import ALL, OTHER, UNKNOWN, BoundedLabels, ChildCache, Window
from clockwork.common.status import Status
from clockwork.controller.effects import ToWorker
from clockwork.controller.metrics import ControllerTelemetry

pytestmark = pytest.mark.timeout(120)
MS = 1_000_000
S = 1_000_000_000


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} from exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def family_names(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def infer(model: str, slo_ms: float) -> schema.Infer:
    return schema.Infer(model=model, slo_ns=int(slo_ms * MS), priority=3)


def test_bounded_labels_and_windows():
    labels = BoundedLabels(2)
    assert [labels(m) for m in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    w = Window(10)
    w.add("k", 0, 1, 1)
    w.add("k", S // 2, 1, 0)
    w.add("k", 5 * S, 1, 1)
    assert w.sums("k", 5 * S) == [3, 2]
    assert w.sums("k", 12 * S) == [1, 1]  # the first second aged out
    assert w.sums("nothing", 0) == [0, 0]


def test_child_cache_looks_a_child_up_once_until_forgotten():
    registry = CollectorRegistry()
    a = Counter("a", "a", ["x"], registry=registry)
    b = Counter("b", "b", ["x"], registry=registry)
    child = ChildCache()
    first = child(a, "1")
    assert child(a, "1") is first and child(b, "1") is not first
    a.remove("1")
    child.forget(a, "1")
    assert child(a, "1") is not first


def test_telemetry_from_events(tmp_path):
    log_path = tmp_path / "requests.tsv"
    t = ControllerTelemetry(ControllerConfig(metrics_address="", metrics_max_models=1,
                                             request_log_path=str(log_path)))
    t.enabled = True  # counted as if served, without opening a port
    now = 10 * S
    ok = schema.InferReply(status=Status.OK, queue_ns=2 * MS, exec_ns=3 * MS, total_ns=6 * MS, batch_size=2,
                           cold_start=True, worker="w0")
    late = schema.InferReply(status=Status.OK, queue_ns=9 * MS, exec_ns=3 * MS, total_ns=12 * MS, batch_size=1)
    refused = schema.InferReply(status=Status.WOULD_MISS_DEADLINE, detail="no")
    t.on_request(b"c", 1, infer("resnet", 10), known=True)
    t.on_reply(b"c", 1, ok, now)
    t.on_request(b"c", 2, infer("resnet", 10), known=True)
    t.on_reply(b"c", 2, late, now)
    t.on_request(b"c", 3, infer("bert", 10), known=True)  # over the cap of one model label
    t.on_reply(b"c", 3, refused, now)
    t.on_request(b"c", 4, infer("typo", 10), known=False)
    t.on_reply(b"c", 4, schema.InferReply(status=Status.MODEL_NOT_FOUND), now)
    t.on_action(ToWorker("w0", 77, schema.Exec(model_id="resnet", device_id=0, batch_size=2, earliest_ns=0,
                                               latest_ns=1, expected_ns=4 * MS)))
    t.on_result("w0", 77, schema.Result(action="exec", status=Status.OK, device_id=0, model_id="resnet",
                                  duration_ns=3 * MS, batch_size=2), now)
    t.on_action(ToWorker("w0", 78, schema.Load(model_id="resnet", device_id=0, earliest_ns=0, latest_ns=1,
                                               expected_ns=100 * MS)))
    t.on_result("w0", 78, schema.Result(action="load", status=Status.OK, device_id=0, model_id="resnet",
                                  duration_ns=90 * MS), now)
    status = {"workers": [{"name": "w0", "lane_idle_controller_ms": 2.0, "lane_idle_worker_ms": 0.0,
                           "devices": [{"device_id": 0, "memory_bytes": 1024, "used_bytes": 512,
                                        "loaded": ["resnet"], "loaded_count": 1}]}],
              "models": [{"name": "resnet", "queued": 4, "in_flight": 2}, {"name": "bert", "queued": 1}],
              "models_total": 2,
              "counters": {"evictions": 3, "requests_offered": 4, "exec_prediction_error_ms_p50": 0.5},
              "scheduler": {"admission_headroom": 0.07, "dispatch_ms": 1.0}}
    t.refresh(status, now)
    p = samples(generate_latest(t.registry).decode())

    assert value(p, "clockwork_requests_total", model="resnet", outcome="ok", reason="OK") == 2
    assert value(p, "clockwork_requests_total", model=OTHER, outcome="capacity", reason="WOULD_MISS_DEADLINE") == 1
    assert value(p, "clockwork_requests_total", model=UNKNOWN, outcome="caller_error", reason="MODEL_NOT_FOUND") == 1
    assert value(p, "clockwork_request_duration_seconds_count", model="resnet", phase="end_to_end") == 2
    assert value(p, "clockwork_request_duration_seconds_sum", model="resnet", phase="queue") == pytest.approx(0.011)
    assert value(p, "clockwork_request_duration_seconds_bucket", model="resnet", phase="exec", le="0.005") == 2
    assert value(p, "clockwork_requests_slo_met_total", model="resnet") == 1  # 12 ms missed the 10 ms SLO
    assert value(p, "clockwork_slo_attainment_ratio", model="resnet") == 0.5
    assert value(p, "clockwork_slo_attainment_ratio", model=ALL) == pytest.approx(1 / 3)  # caller errors aside
    assert value(p, "clockwork_goodput_requests_per_second", model=ALL) == 1.0  # 1 met, first second of the window
    assert value(p, "clockwork_cold_starts_total", model="resnet") == 1
    assert value(p, "clockwork_exec_prediction_error_seconds_sum", model="resnet") == pytest.approx(0.001)
    assert value(p, "clockwork_load_prediction_error_seconds_sum", model="resnet") == pytest.approx(0.01)
    assert value(p, "clockwork_load_duration_seconds_count", model="resnet") == 1
    assert value(p, "clockwork_device_busy_seconds_total", worker="w0", device="0") == pytest.approx(0.003)
    assert value(p, "clockwork_device_utilization_ratio", worker="w0", device="0") == pytest.approx(0.003)
    assert value(p, "clockwork_device_memory_used_bytes", worker="w0", device="0") == 512
    assert value(p, "clockwork_worker_lane_idle_seconds_total", worker="w0", waiting_on="controller") == \
        pytest.approx(0.002)
    assert value(p, "clockwork_worker_lane_idle_seconds_total", worker="w0", waiting_on="worker") == 0
    assert value(p, "clockwork_queued_requests", model="resnet") == 4
    assert value(p, "clockwork_queued_requests", model=OTHER) == 1
    assert value(p, "clockwork_evictions_total") == 3
    assert value(p, "clockwork_scheduler_events_total", event="requests_offered") == 4
    assert value(p, "clockwork_workers") == 1
    assert value(p, "clockwork_admission_headroom_ratio") == pytest.approx(0.07)
    status["workers"][0]["lane_idle_controller_ms"] = 5.0  # STATUS's total grew: so does the counter
    t.refresh(status, now + S)
    p = samples(generate_latest(t.registry).decode())
    assert value(p, "clockwork_worker_lane_idle_seconds_total", worker="w0", waiting_on="controller") == \
        pytest.approx(0.005)

    status["workers"] = []  # the worker left: its device series go, nothing else
    t.refresh(status, now + S)
    p = samples(generate_latest(t.registry).decode())
    assert not any(labels and dict(labels).get("worker") == "w0" for _, labels in p)
    t.close()
    rows = [line.split("\t") for line in log_path.read_text().splitlines()]
    assert rows[0][:10] == ["request_id", "model", "priority", "status", "queue_ns", "exec_ns", "total_ns",
                            "batch_size", "cold_start", "worker"]
    assert rows[1][:10] == ["1", "resnet", "3", "OK", "2000000", "3000000", "6000000", "2", "1", "w0"]
    assert [r[3] for r in rows[1:]] == ["OK", "OK", "WOULD_MISS_DEADLINE", "MODEL_NOT_FOUND"]


def test_nothing_is_tracked_when_metrics_and_log_are_off():
    t = ControllerTelemetry(ControllerConfig())
    assert t.server is None and not t.active
    t.on_request(b"c", 1, infer("m", 10), known=True)
    t.on_reply(b"c", 1, schema.InferReply(status=Status.OK), 0)
    assert t._requests == {}
    t.close()


@pytest.fixture(scope="module")
def scraped_cluster(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("metrics")
    controller_port, worker_port = free_port(), free_port()
    settings = [f'metrics_address="127.0.0.1:{controller_port}"', f'request_log_path="{run_dir / "requests.tsv"}"']
    worker = WorkerSpec("emu", "emulated", devices=2, device_memory_mb=256,
                        extra_args=("--set", f'metrics_address="127.0.0.1:{worker_port}"'))
    with cluster(run_dir, [worker], controller_settings=settings) as c:
        with c.client() as admin:
            admin.upload(profile_json(), "resnet", format="profile")
            admin.upload(profile_json(SLOW), "slow", format="profile")
        yield c, controller_port, worker_port, run_dir


SLOW = {"weights_bytes": 1_000_000, "load_ms": 1, "exec_ms": {"1": 1000}}  # no 200 ms SLO fits


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_endpoints_are_scraped_and_parsed(scraped_cluster):
    c, controller_port, worker_port, run_dir = scraped_cluster
    x = np.zeros((1, 16), np.float32)
    with Client(c.client_endpoint, timeout_s=10) as client:
        for _ in range(5):
            client.infer("resnet", {"data": x}, slo_ms=200)
        with pytest.raises(CapacityError) as refused:
            client.infer("slow", {"data": x}, slo_ms=200)
        assert refused.value.status is Status.WOULD_MISS_DEADLINE  # by the controller, so counted there

    # Gauges and the request log refresh once a second: wait for them, not for a second to pass.
    attainment = ("clockwork_slo_attainment_ratio", (("model", "slow"),))
    for _ in range(100):
        text = scrape(controller_port)
        p = samples(text)
        if attainment in p and len((run_dir / "requests.tsv").read_text().splitlines()) == 7:
            break
        time.sleep(0.1)
    assert value(p, "clockwork_requests_total", model="resnet", outcome="ok", reason="OK") == 5
    assert value(p, "clockwork_requests_total", model="slow", outcome="capacity", reason="WOULD_MISS_DEADLINE") == 1
    assert value(p, "clockwork_request_duration_seconds_count", model="resnet", phase="exec") == 5
    assert value(p, "clockwork_requests_slo_met_total", model="resnet") == 5
    assert value(p, "clockwork_slo_attainment_ratio", model="resnet") == 1.0  # 5 of 5
    assert p[attainment] == 0.0  # 0 of 1
    assert value(p, "clockwork_cold_starts_total", model="resnet") >= 1
    assert value(p, "clockwork_workers") == 1
    assert value(p, "clockwork_exec_prediction_error_seconds_count", model="resnet") == 5
    assert {"clockwork_device_utilization_ratio", "clockwork_evictions", "clockwork_goodput_requests_per_second",
            "clockwork_load_duration_seconds", "clockwork_device_memory_bytes",
            "process_resident_memory_bytes"} <= family_names(text)
    assert value(p, "clockwork_device_busy_seconds_total", worker="emu", device="0") + \
        value(p, "clockwork_device_busy_seconds_total", worker="emu", device="1") > 0

    text = scrape(worker_port)
    p = samples(text)
    assert value(p, "clockwork_worker_actions_total", action="exec", outcome="ok", reason="OK") == 5
    assert value(p, "clockwork_worker_connected") == 1 and value(p, "clockwork_worker_lanes_healthy") == 1
    assert value(p, "clockwork_worker_models_prepared") == 2
    # The controller runs on this host (WELCOME says so): one clock, nothing to estimate.
    assert value(p, "clockwork_worker_clock_offset_seconds") == 0
    assert value(p, "clockwork_worker_clock_uncertainty_seconds") == 0
    assert value(p, "clockwork_worker_controller_round_trip_seconds") > 0  # the link is still measured
    assert value(p, "clockwork_worker_action_duration_seconds_count", action="load", model="resnet") >= 1
    assert {"clockwork_worker_lane_utilization_ratio", "clockwork_worker_device_memory_bytes",
            "process_resident_memory_bytes"} <= family_names(text)
    assert not {n for n in family_names(text) if n.startswith("clockwork_device_")}  # the controller's names

    rows = (run_dir / "requests.tsv").read_text().splitlines()
    assert rows[0].startswith("request_id\tmodel\tpriority\tstatus") and len(rows) == 7
    assert sorted(r.split("\t")[3] for r in rows[1:]) == ["OK"] * 5 + ["WOULD_MISS_DEADLINE"]
