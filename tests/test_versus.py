"""`clockwork-bench versus` and its plain reference server: a real server process answering
like the model itself, the verdicts as ratios within one run, and a short end-to-end run."""

from __future__ import annotations

import http.client
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import zmq

from clockwork.bench import comparison, report, versus, versus_json
from clockwork.bench.models import cnn_onnx
from clockwork.bench.procs import free_port
from clockwork.client import Client
from clockwork.common.codec import decode, encode
from clockwork.common.net import dealer, recv_frames, send_frames
from clockwork.common.schema import GetStatus
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(180)


def plain_server(folder, endpoint: str, *extra: str):
    """bench/plain_server.py serving the CNN at `endpoint`, checked to start, and to stop cleanly
    reporting its busy time."""
    path = folder / "cnn.onnx"
    path.write_bytes(cnn_onnx())
    server = subprocess.Popen([sys.executable, "-m", "clockwork.bench.plain_server", str(path), endpoint, *extra],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
        assert server.stdout.read().startswith("busy_ns ")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for _ in plain_server(tmp_path_factory.mktemp("plain"), endpoint, "--max-batch", "4"):
        yield endpoint


def test_the_plain_server_answers_what_the_model_computes(plain):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with Client(plain, timeout_s=10) as client:
        result = client.infer("cnn", {"input": x}, slo_ms=5000)
        busy = versus.busy_ns(client.status())
    (expected,) = ort.InferenceSession(cnn_onnx(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-4, atol=1e-5)
    assert result.worker == "plain" and 0 < result.exec_ms and busy >= result.exec_ms * 1e6 * 0.99


def test_the_plain_server_answers_garbage_with_a_reason_and_serves_on(plain):
    sock = dealer(zmq.Context.instance(), plain)
    try:
        send_frames(sock, [b"\xc1 not msgpack"])
        assert sock.poll(5000)
        assert decode(recv_frames(sock)).body.status is Status.BAD_MESSAGE
        send_frames(sock, encode(GetStatus(), 7))
        assert sock.poll(5000)
        assert decode(recv_frames(sock)).parent_id == 7
    finally:
        sock.close(0)


def point(target, rate, offered, within, refused=0, p99=5.0):
    return comparison.Point(target, rate, offered, within, refused, 0, 1.0, p99, p99, 0.5)


def test_verdicts_compare_targets_within_the_run():
    plain_lone = comparison.Point("plain", 0, 100, 100, 0, 0, 0.8, 5.0, 5.0, 0.5)
    points = [plain_lone, point("clockwork", 0, 100, 100),
              point("plain", 100, 1000, 1000), point("plain", 200, 2000, 1999), point("plain", 400, 4000, 40),
              point("clockwork", 100, 1000, 1000), point("clockwork", 200, 2000, 1997, 3),
              point("clockwork", 400, 4000, 1900, 2000)]
    assert comparison.sustained(points, "plain") == 200  # 99.95% at 200/s
    assert comparison.sustained(points, "clockwork") == 100  # 99.85% at 200/s falls short
    tight = [{"slo_ms": 2.0, "sent": 40, "admitted": 38, "within": 38},
             {"slo_ms": 2.5, "sent": 40, "admitted": 40, "within": 39},  # one answered late
             {"slo_ms": 3.0, "sent": 40, "admitted": 40, "within": 40}]
    worker = {"lone_exec_ms": 0.55, "typical_error_share_p99_batch1": 0.125, "tight_slo": tight}
    rows = {what: measured for what, measured, _ in versus.verdicts(points, _floor(0.5), worker)}
    assert rows["tightest SLO admitted and met for every lone request / plain's lone p99"] == (
        f"3.00 / {points[0].p99_ms:.2f} ms = {3.0 / points[0].p99_ms:.2f}")
    assert rows["lone request p50 - direct p50"] == "0.50 ms (plain's own 0.30 ms)"
    with_hop = {what: measured for what, measured, _ in versus.verdicts(points, _floor(0.5), worker, _floor(0.2))}
    assert with_hop["lone request p50 - direct p50"] == (
        "0.50 ms (plain's own 0.30 ms); a bare ZeroMQ round trip 0.20 ms, this path makes two")
    assert rows["worker's exec p50 / direct p50 (lone)"] == "1.10"
    assert rows["exec prediction error p99 at batch 1, share of the typical prediction"] == (
        "12.5% (the direct call's own p99 is 0.0% over its p50)")
    assert rows["refusals at rates <= 70% of plain's"] == "0"
    assert "goodput 190/s" in rows["clockwork at 400/s = 2.0 x plain's"]
    # refusals below 70% say why, so that a host's stall is told from admission's pricing
    points[5] = replace(point("clockwork", 100, 1000, 997, 3), reasons={"behind the queue": 1, "even on an idle device": 2})
    rows = {what: measured for what, measured, _ in versus.verdicts(points, _floor(0.5), worker)}
    assert rows["refusals at rates <= 70% of plain's"] == "3 (2 even on an idle device, 1 behind the queue)"
    assert not any(what.startswith("admission's dry run") for what in rows)
    # admission in a dry run: how many of what it would have refused made it, over the rates
    points[5] = replace(points[5], reasons={**points[5].reasons, "dry run: would have refused": 4,
                                            "dry run: of those, answered in SLO": 3})
    points[6] = replace(points[6], reasons={"dry run: would have refused": 36, "dry run: of those, answered in SLO": 23})
    points[7] = replace(points[7], reasons={"dry run: would have refused": 60, "dry run: of those, answered in SLO": 35})
    rows = {what: measured for what, measured, _ in versus.verdicts(points, _floor(0.5), worker)}
    assert rows["admission's dry run: what it would have refused, answered in SLO all the same"] == "61 of 100 (61%)"
    # what a dry run would have refused was served: not among the refusals' reasons
    assert rows["refusals at rates <= 70% of plain's"] == "3 (2 even on an idle device, 1 behind the queue)"
    # whether or not the plain server sustained any rate (in a noisy phase it may not)
    rows = {what: measured for what, measured, _ in versus.verdicts(points[5:], _floor(0.5), worker)}
    assert rows["admission's dry run: what it would have refused, answered in SLO all the same"] == "61 of 100 (61%)"


def test_requests_given_up_after_admission_count_as_admitted_misses_not_refusals():
    """A request answered DEADLINE_MISSED once queued was admitted: the share of admitted
    requests in SLO counts it as a miss. It was left out as a refusal, which at 3x read 99.80%
    where 99.20% of the admitted were in time (48 given up of 8,039)."""
    by_status = {"OK": 7991, "WOULD_MISS_DEADLINE": 9602, "DEADLINE_MISSED": 48, "SEND_FAILED": 3}
    after = report.answered_after_admission(by_status, "SEND_FAILED")
    assert after == 48
    p = comparison.Point("clockwork", 1747, 17644, 7975, 9653, 0, 7.6, 13.2, 15.6, 0.74, after_admission=after)
    assert p.admitted == 8039 and p.admitted_within_slo == pytest.approx(7975 / 8039)
    rows = {what: measured for what, measured, _ in versus.verdicts(
        [point("plain", 0, 100, 100), point("plain", 500, 5000, 5000), point("plain", 1747, 17644, 100), p],
        _floor(0.5), None)}
    assert rows["clockwork at 1747/s = 3.5 x plain's"].endswith("admitted in SLO 99.20%")


def test_refinement_halves_the_step_where_a_target_stops_meeting_its_slo():
    points = [point("plain", 100, 1000, 1000), point("plain", 200, 2000, 1999), point("plain", 400, 4000, 40),
              point("clockwork", 100, 1000, 1000), point("clockwork", 200, 2000, 1000)]
    assert versus.refine_between(points, "plain") == (200, 400)
    assert versus.refine_between(points, "clockwork") == (100, 200)
    points.append(point("plain", 300, 3000, 3000))  # passed: the knee is above it
    assert versus.refine_between(points, "plain") == (300, 400)
    assert versus.refine_between([point("plain", 100, 1000, 1000)], "plain") is None  # passed everything
    assert versus.refine_between([point("plain", 100, 1000, 10)], "plain") is None  # failed everything


def _floor(ms):
    from clockwork.bench.report import Latencies

    lat = Latencies()
    lat.record_ns(int(ms * 1e6))
    return lat


def test_lone_requests_go_to_every_target_in_blocks_in_turn_the_order_rotating():
    order = []
    took = comparison.interleaved({name: (lambda name=name: order.append(name)) for name in "abc"}, requests=5,
                                  gap_s=0, block=2)
    # no target always first, or always after another; the last block is what is left
    assert "".join(order) == "aabbcc" + "bbccaa" + "cab"
    assert {name: len(ns) for name, ns in took.items()} == {"a": 5, "b": 5, "c": 5}
    assert all((ns >= 0).all() for ns in took.values())


def test_warm_up_calls_go_first_untimed_and_a_call_that_can_clear_forgets_them():
    class Counted:
        def __init__(self):
            self.calls = self.cleared = 0

        def __call__(self):
            self.calls += 1

        def clear(self):
            self.cleared, self.calls = self.calls, 0

    counted, plain = Counted(), []
    took = comparison.interleaved({"counted": counted, "plain": lambda: plain.append(1)}, requests=4, gap_s=0,
                                  warmup=3)
    assert (counted.cleared, counted.calls, len(plain)) == (3, 4, 7)
    assert {name: len(ns) for name, ns in took.items()} == {"counted": 4, "plain": 4}


def test_a_target_that_answers_nothing_ends_the_run_instead_of_being_measured(monkeypatch):
    """settle() before a rate (or a run's measured part): no reply at all (here a socket that
    reads and never answers) is the target failing; versus then stops, and run_in_temp_dir
    keeps the daemons' logs."""
    monkeypatch.setattr(comparison, "SETTLE_SLO_MS", 300.0)
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=5) as client:
            with pytest.raises(RuntimeError, match="answered nothing"):
                comparison.settle(client, "model", {"input": np.zeros((1, 3, 64, 64), np.float32)})
    finally:
        silent.close(linger=0)


def test_versus_runs_end_to_end_and_writes_its_report(tmp_path, capfd):
    out = tmp_path / "out"
    assert versus.main(["--duration-s", "1", "--rates", "50,60", "--refine", "0", "--out", str(out)]) == 0
    # each rate goes to both targets before the next, the first turn passing from one to the other
    played = [line.split(":")[0] for line in capfd.readouterr().err.splitlines() if "/s: " in line]
    assert played == ["plain 50/s", "clockwork 50/s", "clockwork 60/s", "plain 60/s"]
    report = json.loads((out / "versus.json").read_text())
    runs = [(p["target"], p["rate"]) for p in report["points"]]  # grouped by target, its lone run first
    assert runs == [("plain", 0.0), ("plain", 50.0), ("plain", 60.0),
                    ("clockwork", 0.0), ("clockwork", 50.0), ("clockwork", 60.0)]
    assert all(p["offered"] > 0 and p["within_slo"] + p["refused"] + p["unanswered"] <= p["offered"]
               for p in report["points"])
    assert report["direct_ms"]["p50"] > 0 and (out / "versus.png").stat().st_size > 0
    assert 0 < report["zeromq_round_trip_ms"]["p50"] <= report["zeromq_round_trip_ms"]["max"]
    assert report["worker"]["lone_exec_ms"] > 0 and 0 <= report["worker"]["typical_error_share_p99_batch1"] < 100
    tight = report["worker"]["tight_slo"]
    assert len(tight) == len(versus.TIGHT_FACTORS) and all(
        row["sent"] == versus.TIGHT_REQUESTS and row["within"] <= row["admitted"] <= row["sent"] for row in tight)
    ours = next(p for p in report["points"] if p["target"] == "clockwork" and p["rate"] == 50.0)
    assert ours["allowances"]["reply_ms"] > 0 and sum(ours["reasons"].values()) >= ours["refused"]
    assert all(0 < p["host_cpu"] <= 1 for p in report["points"] if p["rate"])  # each rate's host share
    assert all(p["sender_late_p99_ms"] >= 0 for p in report["points"] if p["rate"])  # the generator's own lag


# ----------------------------------------------------------------------------- --gateway-json


@pytest.fixture(scope="module")
def plain_http(tmp_path_factory):
    address = f"127.0.0.1:{free_port()}"
    for _ in plain_server(tmp_path_factory.mktemp("plain-http"), f"http://{address}"):
        yield address


def post(address: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, timeout=10)
    try:
        conn.request("POST", "/v2/models/cnn/infer", body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_the_plain_http_server_answers_v2_json_and_binary_with_what_the_model_computes(plain_http):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    (expected,) = ort.InferenceSession(cnn_onnx(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    status, body = post(plain_http, versus_json.json_body({"input": x}, 50))
    assert status == 200
    [out] = json.loads(body)["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [2, 10])
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(2, 10), expected, rtol=1e-4, atol=1e-5)

    httpclient = pytest.importorskip("tritonclient.http")
    triton = httpclient.InferenceServerClient(plain_http)
    tensor = httpclient.InferInput("input", [2, 3, 64, 64], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = triton.infer("cnn", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)


def test_the_plain_http_server_answers_bad_input_with_a_reason_and_serves_on(plain_http):
    status, body = post(plain_http, b"{not json")
    assert status == 400 and json.loads(body)["error"].startswith("BAD_INPUT")
    x = np.zeros((1, 3, 64, 64), np.float32)
    assert post(plain_http, versus_json.json_body({"input": x}, 50))[0] == 200


def test_gateway_json_verdicts_judge_the_overload_rate_against_the_sweep():
    def p(target, rate, offered, within, too_many=0, timed_out=0):
        return comparison.Point(target, rate, offered, within, too_many + timed_out, 0, 2.0, 9.0, 9.0, math.nan,
                                too_many=too_many, timed_out=timed_out, refusal_p99_ms=1.5, after_admission=timed_out)

    points = [p("gateway", 0, 100, 100), p("plain-http", 0, 100, 100),
              p("gateway", 100, 500, 500), p("gateway", 200, 1000, 999), p("gateway", 600, 3000, 1500, 1498, 1),
              p("plain-http", 100, 500, 500), p("plain-http", 200, 1000, 990), p("plain-http", 600, 3000, 30)]
    rows = {what: measured for what, measured, _ in versus_json.verdicts(points, [100, 200], 600)}
    assert rows["rate sustained (>= 99.9% in SLO), gateway / plain HTTP"] == "200 / 100 = 2.00"
    # The 504 was admitted: a miss among the admitted, not a refusal.
    assert rows["gateway at 600/s = 3 x its sustained rate: admitted within SLO"] == "99.87% (1500 of 1502)"
    assert rows["  the rest refused quickly"] == "1498 x 429, p99 1.50 ms"
    assert rows["  answers after the deadline (504)"] == "1"
    assert rows["plain HTTP at 600/s"] == "in SLO 1.0%"
    # With the native client's lone requests and the direct call's p50, the two extras side by side.
    assert "  over plain HTTP / native client over the direct call" not in rows
    rows = {what: measured for what, measured, _ in versus_json.verdicts([*points, p("native", 0, 100, 100)], [100, 200],
                                                                          600, direct_ms=1.5)}
    assert rows["  over plain HTTP / native client over the direct call"] == "+0.00 / +0.50 ms"


def test_an_http_target_that_answers_nothing_ends_the_run_instead_of_being_measured():
    """versus_json.settle() before a rate, as versus.settle: no answer at all (nothing listens
    there) is the target failing; the run stops with the reason and keeps the daemons' logs."""
    with pytest.raises(RuntimeError, match="answered nothing"):
        versus_json.settle([f"http://127.0.0.1:{free_port()}/v2/models/cnn/infer"],
                           {"input": np.zeros((1, 3, 64, 64), np.float32)})


def test_versus_gateway_json_runs_end_to_end_and_writes_its_report(tmp_path, capfd):
    out = tmp_path / "out"
    assert versus.main(["--gateway-json", "--duration-s", "0.5", "--rates", "40", "--out", str(out)]) == 0
    report = json.loads((out / "versus-json.json").read_text())
    assert report["slo_ms"] == 50
    runs = {(p["target"], p["rate"]) for p in report["points"]}
    overload = report["overload_rate"]
    assert {("gateway", 0.0), ("gateway", 40.0), ("plain-http", 0.0), ("plain-http", 40.0)} <= runs
    assert overload in (0, 120) and (overload == 0 or {("gateway", 120.0), ("plain-http", 120.0)} <= runs)
    # each rate to both targets in turn, the first place passing from one to the other
    played = [line.split(":")[0] for line in capfd.readouterr().err.splitlines() if "/s: " in line]
    assert played == ["gateway 40/s", "plain-http 40/s"] + (["plain-http 120/s", "gateway 120/s"] if overload else [])
    assert all(p["offered"] > 0 and p["within_slo"] + p["refused"] + p["unanswered"] <= p["offered"]
               and p["too_many"] + p["timed_out"] <= p["refused"] for p in report["points"])
    assert (out / "versus-json.png").stat().st_size > 0
    assert report["direct_p50_ms"] > 0 and report["native_lone"]["offered"] > 0  # the lone block's references


def test_a_model_that_is_neither_a_file_nor_a_known_name_is_refused_with_the_names(tmp_path, capfd):
    assert versus.main(["--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "out")]) == 2
    said = capfd.readouterr()
    assert "neither an ONNX file nor a model the index ships" in said.out + said.err
    assert "yolov8n-320" in said.out + said.err


def test_without_an_slo_a_slow_model_gets_room_for_a_queue_and_a_fast_one_the_usual():
    assert versus.default_slo_ms(1.15, gateway_json=False) == 15.0
    assert versus.default_slo_ms(1.15, gateway_json=True) == 50.0
    assert versus.default_slo_ms(25.3, gateway_json=False) == 105.0  # the detector: 4 x 25.3, rounded up to 5 ms
    assert versus.default_slo_ms(25.3, gateway_json=True) == 105.0


def test_an_slo_shorter_than_the_model_itself_is_refused_before_the_run(tmp_path, capfd):
    assert versus.main(["--slo-ms", "0.01", "--out", str(tmp_path / "out")]) == 2
    said = capfd.readouterr()
    assert "shorter than the model's own run" in said.out + said.err and "try --slo-ms 15" in said.out + said.err
