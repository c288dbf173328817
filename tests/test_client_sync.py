"""The blocking Client against a scripted controller on a real loopback socket."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clockwork.bench.procs import free_port
from clockwork.client import CapacityError, Client, ClientClosed, DeadlineExceeded, RequestError, ServerError
from tests.client_peer import ScriptedPeer
from clockwork.common import schema
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(30)
GRACE_S = 0.2


@pytest.fixture
def peer():
    with ScriptedPeer() as p:
        yield p


@pytest.fixture
def cw(peer):
    with Client(peer.endpoint, timeout_s=5, grace_s=GRACE_S) as c:
        yield c


def free_endpoint() -> str:
    """A loopback endpoint nobody listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


def x(samples: int = 1, value: float = 1.0) -> np.ndarray:
    return np.full((samples, 4), value, np.float32)


def test_upload_list_status_remove(cw, peer, tmp_path):
    path = tmp_path / "r50.onnx"
    path.write_bytes(b"\x08\x07model")
    info = cw.upload(path, "r50", input_shapes={"image": [3, 8, 8]}, max_batch=4)
    assert info["name"] == "r50" and info["inputs"][0]["shape"] == [3, 8, 8]
    sent = peer.requests(schema.Upload)[-1].body
    assert (sent.format, sent.max_batch, bytes(sent.blob)) == ("onnx", 4, b"\x08\x07model")
    assert [m["name"] for m in cw.list()] == ["echo", "pair", "r50"]  # two pages of the fake's two
    assert [m["name"] for m in cw.list("p")] == ["pair"] and cw.list(limit=1)[0]["name"] == "echo"
    assert cw.list_page(limit=1) == {"models": [cw.model("echo")], "total": 3, "next": "echo"}
    assert cw.list_page(after="pair")["models"][0]["name"] == "r50"
    status = cw.status()
    assert status["workers"][0]["name"] == "w0" and status["counters"]["requests"] == 42
    assert peer.requests(schema.GetStatus)[-1].body.models_limit == schema.STATUS_MODELS
    cw.remove("r50")
    assert "r50" not in {m["name"] for m in cw.list()}
    with pytest.raises(RequestError) as missing:
        cw.model("r50")
    assert missing.value.status is Status.MODEL_NOT_FOUND


def test_upload_of_a_model_whose_shapes_cannot_be_fixed(cw):
    with pytest.raises(RequestError, match="dynamic dimensions") as info:
        cw.upload(b"\x08\x07", "broken")
    assert info.value.status is Status.BAD_MODEL


def test_remove_unknown_model(cw):
    with pytest.raises(RequestError) as info:
        cw.remove("ghost")
    assert info.value.status is Status.MODEL_NOT_FOUND


def test_infer_with_named_inputs_and_several_samples(cw, peer):
    a, b = np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((3, 2), np.int64)
    result = cw.infer("pair", {"a": a, "b": b}, slo_ms=500, priority=7)
    np.testing.assert_array_equal(result.outputs["a_out"], a * 2)
    np.testing.assert_array_equal(result.outputs["b_out"], b * 2)
    assert (result.batch_size, result.worker, result.cold_start) == (3, "w0", True)
    assert (result.queue_ms, result.exec_ms, result.total_ms) == (0.4, 2.5, 3.25)
    sent = peer.requests(schema.Infer)[-1]
    assert sent.body.priority == 7 and 0 < sent.body.slo_ns <= 500_000_000
    assert result.request_id == sent.msg_id


def test_each_infer_reports_when_the_last_infer_reply_arrived(cw, peer):
    """The controller times the way back to the client from this (schema.Infer.last_reply_id)."""
    before = time.monotonic_ns()
    first = cw.infer("pair", {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.int64)}, slo_ms=500)
    after = time.monotonic_ns()
    with pytest.raises(CapacityError):  # a refusal is not reported: the controller keeps no answer time for it
        cw.infer("overload", {"data": x()}, slo_ms=500)
    cw.infer("pair", {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.int64)}, slo_ms=500)
    reports = [(e.body.last_reply_id, e.body.last_reply_received_ns) for e in peer.requests(schema.Infer)]
    assert reports[0] == (0, 0)
    assert reports[1] == reports[2] and reports[1][0] == first.request_id and before < reports[1][1] < after


def test_bare_array_fetches_the_signature_once(cw, peer):
    assert cw.infer("echo", x(value=3), slo_ms=500).outputs["data_out"][0, 0] == 6
    assert cw.infer("echo", x(value=4), deadline=time.monotonic() + 0.5).output[0, 0] == 8
    assert [e.body.name for e in peer.requests(schema.GetModel)] == ["echo"] and not peer.requests(schema.ListModels)
    assert [t.name for t in peer.requests(schema.Infer)[0].body.tensors] == ["data"]


def test_bare_array_for_a_multi_input_model_is_refused(cw):
    with pytest.raises(RequestError, match="2 inputs"):
        cw.infer("pair", x(), slo_ms=100)


def test_capacity_rejection_carries_the_status(cw):
    with pytest.raises(CapacityError, match="5 ms left") as info:
        cw.infer("overload", {"data": x()}, slo_ms=100)
    assert info.value.status is Status.WOULD_MISS_DEADLINE and info.value.code == 20


def test_silence_raises_deadline_exceeded_within_the_slo_plus_grace(cw):
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="client-side timeout") as info:
        cw.infer("silent", {"data": x()}, slo_ms=100)
    elapsed = time.monotonic() - start
    assert 0.1 + GRACE_S - 0.05 <= elapsed < 0.1 + GRACE_S + 1.0
    assert info.value.status is Status.DEADLINE_MISSED


def test_a_late_reply_is_not_mistaken_for_the_next_one(cw, peer):
    with pytest.raises(DeadlineExceeded):
        cw.infer("late", {"data": x()}, slo_ms=50)
    result = cw.infer("echo", {"data": x(value=5)}, slo_ms=1000)  # the stale reply arrives first
    assert set(result.outputs) == {"data_out"} and result.output[0, 0] == 10
    assert result.request_id == peer.requests(schema.Infer)[-1].msg_id


def test_admin_timeout_when_nobody_listens():
    with Client(free_endpoint(), timeout_s=0.3) as c:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="could not reach"):
            c.list()
        assert time.monotonic() - start < 1.5


def test_past_deadline_is_refused_without_sending(cw, peer):
    with pytest.raises(DeadlineExceeded, match="nothing was sent"):
        cw.infer("echo", {"data": x()}, deadline=time.monotonic() - 0.01)
    assert peer.received == []


def test_anonymous_error_goes_to_the_pending_call(cw):
    with pytest.raises(RequestError, match="cannot read header") as info:
        cw.infer("anon-error", {"data": x()}, slo_ms=1000)
    assert info.value.status is Status.BAD_MESSAGE


def test_undecodable_and_wrong_replies_are_server_errors(cw):
    with pytest.raises(ServerError, match="undecodable"):
        cw.infer("garbage", {"data": x()}, slo_ms=1000)
    with pytest.raises(ServerError, match="expected a infer_reply"):
        cw.infer("wrongtype", {"data": x()}, slo_ms=1000)
    assert cw.infer("echo", {"data": x(value=1)}, slo_ms=1000).output[0, 0] == 2  # still usable


def test_bad_dtype_is_refused_client_side(cw, peer):
    with pytest.raises(RequestError, match="complex128") as info:
        cw.infer("echo", {"data": np.zeros((1, 4), np.complex128)}, slo_ms=100)
    assert info.value.status is Status.BAD_INPUT and peer.received == []


def test_a_closed_client_refuses_calls(peer):
    c = Client(peer.endpoint)
    c.close()
    c.close()
    with pytest.raises(ClientClosed):
        c.list()


def test_threads_may_share_a_client(cw):
    errors, results = [], []

    def run(value: float) -> None:
        try:
            for _ in range(5):
                results.append((value, cw.infer("echo", {"data": x(value=value)}, slo_ms=1000).output[0, 0]))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (1.0, 2.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(results) == 15 and all(out == 2 * v for v, out in results)
