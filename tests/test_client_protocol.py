"""The client's pure protocol module: builders, parsers, routing and error mapping, through the
real codec and without sockets."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from clockwork.client import protocol
from clockwork.client.errors import (CapacityError, ClientClosed, ClockworkError, DeadlineExceeded, RequestError, ServerError,
                           Unreachable, error_for)
from clockwork.client.protocol import Call, ClientCore, Incoming, Options
from clockwork.common import codec, schema
from clockwork.common.status import Fault, Status
from clockwork.common.tensors import Tensor

MS = 1_000_000
S = 1_000_000_000


def wire(body: schema.Message, parent_id: int = 0, msg_id: int = 99) -> schema.Envelope:
    """What the other side would decode."""
    return codec.decode(codec.encode(body, msg_id, parent_id, 123))


def ok_infer_reply(**outputs: np.ndarray) -> schema.InferReply:
    return schema.InferReply(status=Status.OK, queue_ns=1_500_000, exec_ns=2_000_000, total_ns=4_000_000,
                             batch_size=4, cold_start=True, worker="w1",
                             tensors=tuple(Tensor.from_array(k, v) for k, v in outputs.items()))


def model(name: str, *inputs: str) -> dict:
    return {"name": name, "inputs": [{"name": i, "dtype": "float32", "shape": [2]} for i in inputs]}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("status", [s for s in Status if not s.ok])
def test_error_for_picks_the_class_of_the_status_fault(status):
    err = error_for(status, "why")
    expected = {Fault.CALLER: RequestError, Fault.CAPACITY: CapacityError, Fault.SYSTEM: ServerError}[status.fault]
    assert type(err) is expected
    assert (err.status, err.code, err.detail) == (status, int(status), "why")
    assert str(err) == f"{status.name} (code {int(status)}): why"


def test_error_for_ok_is_a_bug():
    with pytest.raises(ValueError):
        error_for(Status.OK, "")


def test_client_side_errors():
    err = DeadlineExceeded(detail="gave up")
    assert isinstance(err, CapacityError) and err.status is Status.DEADLINE_MISSED
    assert isinstance(ClientClosed(), RequestError) and ClientClosed().status is Status.CANCELLED


@pytest.mark.parametrize("err", [error_for(Status.QUEUE_FULL, "full"), DeadlineExceeded(detail="late"), ClientClosed(),
                                 DeadlineExceeded(detail="unsent", before_send=True)])
def test_errors_survive_pickling(err):
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and (copy.status, copy.detail) == (err.status, err.detail)
    assert getattr(copy, "before_send", None) == getattr(err, "before_send", None)


# ----------------------------------------------------------------------------- building


def test_build_infer_round_trips_through_the_codec():
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 4)  # three samples
    y = np.array([[1], [2], [3]], dtype=np.int64)
    env = wire(protocol.build_infer("resnet50", {"x": x, "y": y}, slo_ns=50 * MS, priority=np.int64(3)))
    body = env.body
    assert isinstance(body, schema.Infer)
    assert (body.model, body.slo_ns, body.priority) == ("resnet50", 50 * MS, 3)
    got = {t.name: t.array() for t in body.tensors}
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], y)


def test_build_infer_names_a_bare_array_from_the_signature():
    body = protocol.build_infer("m", np.zeros((1, 2), np.float32), MS, input_names=("data",))
    assert [t.name for t in body.tensors] == ["data"]
    with pytest.raises(RequestError, match="2 inputs") as info:
        protocol.build_infer("m", np.zeros((1, 2), np.float32), MS, input_names=("a", "b"))
    assert info.value.status is Status.BAD_INPUT


def test_build_infer_takes_non_contiguous_arrays():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)[:, ::2]
    body = protocol.build_infer("m", {"x": x}, MS)
    np.testing.assert_array_equal(wire(body).body.tensors[0].array(), x)


@pytest.mark.parametrize("inputs, match", [
    ({"x": np.zeros((1, 2), np.complex64)}, "complex64"),
    ({"x": np.array([["a"]], dtype=object)}, "object"),
    ({"x": np.array(1.0, np.float32)}, "batch dimension"),
    ({"x": np.zeros((0, 2), np.float32)}, "0 samples"),
    ({"x": np.zeros((2, 2), np.float32), "y": np.zeros((3, 2), np.float32)}, "disagree"),
    ({"x": [[1.0, 2.0]]}, "numpy array"),
    ({}, "no inputs"),
    ({1: np.zeros((1, 2), np.float32)}, "input name"),
])
def test_build_infer_rejects_bad_inputs_client_side(inputs, match):
    with pytest.raises(RequestError, match=match) as info:
        protocol.build_infer("m", inputs, MS)
    assert info.value.status is Status.BAD_INPUT


@pytest.mark.parametrize("kwargs", [dict(model="bad name"), dict(priority=10), dict(priority=-1),
                                    dict(priority=True), dict(slo_ns=0), dict(slo_ns=1.5)])
def test_build_infer_rejects_bad_fields(kwargs):
    args = dict(model="m", inputs={"x": np.zeros((1, 2), np.float32)}, slo_ns=MS, priority=0) | kwargs
    with pytest.raises(RequestError) as info:
        protocol.build_infer(**args)
    assert info.value.status is Status.BAD_INPUT


def test_build_upload_round_trips_through_the_codec():
    body = protocol.build_upload("r50", b"\x08\x01onnx", input_shapes={"data": (3, np.int32(224), 224)},
                                 max_batch=8, replace=True)
    env = wire(body)
    assert isinstance(env.body, schema.Upload)
    assert (env.body.name, env.body.format, env.body.max_batch, env.body.replace) == ("r50", "onnx", 8, True)
    assert env.body.input_shapes == {"data": (3, 224, 224)}
    assert bytes(env.body.blob) == b"\x08\x01onnx"


@pytest.mark.parametrize("kwargs, status", [
    (dict(input_shapes={"data": [0, 2]}), Status.BAD_INPUT),
    (dict(input_shapes={"data": [2.5]}), Status.BAD_INPUT),
    (dict(input_shapes={"data": "3,224"}), Status.BAD_INPUT),
    (dict(max_batch=-1), Status.BAD_INPUT),
    (dict(format="tflite"), Status.BAD_INPUT),
    (dict(blob=b""), Status.BAD_MODEL),
    (dict(name="-x"), Status.BAD_INPUT),
])
def test_build_upload_rejects_bad_fields(kwargs, status):
    args = dict(name="m", blob=b"x") | kwargs
    with pytest.raises(RequestError) as info:
        protocol.build_upload(args.pop("name"), args.pop("blob"), **args)
    assert info.value.status is status


def test_detect_format():
    assert protocol.detect_format("models/r50.onnx") == "onnx"
    assert protocol.detect_format("profiles/r50.JSON") == "profile"
    assert protocol.detect_format(b'  {"load_ms": 1}') == "profile"
    assert protocol.detect_format(b"\x08\x07") == "onnx"


def test_admin_builders_round_trip():
    assert wire(protocol.build_list()).body == schema.ListModels(prefix="", after="", limit=0)
    assert wire(protocol.build_list("re", "res1", np.int64(5))).body == schema.ListModels(prefix="re", after="res1",
                                                                                           limit=5)
    assert wire(protocol.build_model("m")).body == schema.GetModel(name="m")
    assert wire(protocol.build_status()).body.models_limit == schema.STATUS_MODELS
    assert wire(protocol.build_status(0)).body.models_limit == 0
    assert wire(protocol.build_remove("m")).body.name == "m"
    assert wire(protocol.build_cancel(2**63 + 5)).body.request_id == 2**63 + 5


# ----------------------------------------------------------------------------- deadlines


def test_deadline_from_slo_or_absolute_deadline():
    assert protocol.deadline_ns(50, None, now_ns=1_000) == 1_000 + 50 * MS
    assert protocol.deadline_ns(None, 2.5, now_ns=1_000) == 2_500_000_000


@pytest.mark.parametrize("slo_ms, deadline", [(None, None), (10, 1.0)])
def test_deadline_needs_exactly_one(slo_ms, deadline):
    with pytest.raises(TypeError):
        protocol.deadline_ns(slo_ms, deadline, 0)


def test_past_deadline_raises_without_sending():
    with pytest.raises(DeadlineExceeded, match="nothing was sent") as info:
        protocol.deadline_ns(None, 1.0, now_ns=2_000_000_000)
    assert info.value.before_send


@pytest.mark.parametrize("slo_ms", [0, -5, float("nan"), float("inf"), "50"])
def test_bad_slo_is_bad_input(slo_ms):
    with pytest.raises(RequestError) as info:
        protocol.deadline_ns(slo_ms, None, 0)
    assert info.value.status is Status.BAD_INPUT


def test_infer_call_sends_the_budget_left_at_send_time():
    core = ClientCore(Options(grace_s=0.5))
    call = core.infer("m", {"x": np.zeros((1, 1), np.float32)}, deadline_ns=100 * MS, now_ns=10 * MS)
    assert call.wait_until_ns == 100 * MS + 500 * MS
    assert call.message(40 * MS).slo_ns == 60 * MS
    with pytest.raises(DeadlineExceeded, match="nothing was sent") as info:
        call.message(100 * MS)
    assert info.value.before_send


def test_timeout_errors_say_they_are_the_clients_own():
    call = ClientCore(Options(timeout_s=2)).status(now_ns=0)
    assert call.wait_until_ns == 2_000_000_000
    sent, unsent = call.timeout_error("tcp://h:1", sent=True), call.timeout_error("tcp://h:1", sent=False)
    assert isinstance(sent, DeadlineExceeded) and "client-side timeout" in sent.detail and "2 s" in sent.detail
    assert "could not reach" in unsent.detail and "nothing was sent" in unsent.detail


def test_a_connect_timeout_bounds_each_attempt_to_send_not_the_call():
    """With several pools a call gives each send (the first, or a resend) connect_timeout_s to
    find a connection, then fails with Unreachable naming the pool; a call that lasts longer
    while connected is not cut short. Without it, a send waits for the whole call."""
    pooled = ClientCore(Options("tcp://h:1", timeout_s=30, connect_timeout_s=2))
    call = pooled.status(now_ns=0)
    assert pooled.send_by_ns(call, since_ns=0) == 2 * S
    assert pooled.send_by_ns(call, since_ns=10 * S) == 12 * S  # a resend late in a long call
    assert pooled.send_by_ns(call, since_ns=29 * S) == 30 * S  # never past the call's own end
    error = pooled.unsent_error(call, since_ns=0)
    assert isinstance(error, Unreachable) and error.status is Status.UNAVAILABLE and "tcp://h:1" in error.detail
    lone = ClientCore(Options("tcp://h:1", timeout_s=30))
    assert lone.send_by_ns(call, since_ns=0) == call.wait_until_ns
    assert type(lone.unsent_error(call, since_ns=0)) is DeadlineExceeded


# ----------------------------------------------------------------------------- parsing


def test_parse_infer_reply_gives_owned_outputs_and_timing_in_ms():
    prob = np.random.default_rng(0).random((4, 10), dtype=np.float32)
    result = protocol.parse_infer_reply(wire(ok_infer_reply(prob=prob), parent_id=77))
    out = result.outputs["prob"]
    np.testing.assert_array_equal(out, prob)
    assert out.flags.owndata and out.flags.writeable  # a copy, not a view of the frame
    assert (result.queue_ms, result.exec_ms, result.total_ms) == (1.5, 2.0, 4.0)
    assert (result.batch_size, result.cold_start, result.worker, result.request_id) == (4, True, "w1", 77)
    np.testing.assert_array_equal(result.output, prob)


def test_result_output_needs_a_single_output():
    result = protocol.parse_infer_reply(wire(ok_infer_reply(a=np.zeros((1, 1)), b=np.zeros((1, 1)))))
    with pytest.raises(ValueError, match="2 outputs"):
        result.output


@pytest.mark.parametrize("body, cls, status", [
    (schema.InferReply(status=Status.WOULD_MISS_DEADLINE, detail="d"), CapacityError, Status.WOULD_MISS_DEADLINE),
    (schema.InferReply(status=Status.WORKER_LOST, detail="d"), ServerError, Status.WORKER_LOST),
    (schema.Error(status=Status.BAD_MESSAGE, detail="d"), RequestError, Status.BAD_MESSAGE),
    (schema.Reply(status=Status.MODEL_NOT_FOUND, detail="d"), RequestError, Status.MODEL_NOT_FOUND),
    (schema.Reply(status=Status.OK), ServerError, Status.INTERNAL),
    (schema.Error(status=Status.OK), ServerError, Status.INTERNAL),
])
def test_parse_infer_reply_raises_typed_errors(body, cls, status):
    with pytest.raises(cls) as info:
        protocol.parse_infer_reply(wire(body))
    assert type(info.value) is cls and info.value.status is status


def test_parse_admin_replies():
    info = {"name": "m", "inputs": [{"name": "data", "dtype": "float32", "shape": [3]}]}
    assert protocol.parse_upload_reply(wire(schema.Reply(status=Status.OK, body={"model": info}))) == info
    listed = wire(schema.Reply(status=Status.OK, body={"models": [info, "junk"], "total": 7, "next": "m"}))
    assert protocol.parse_list_reply(listed) == {"models": [info], "total": 7, "next": "m"}
    assert protocol.parse_list_reply(wire(schema.Reply(status=Status.OK))) == {"models": [], "total": 0, "next": ""}
    assert protocol.parse_model_reply(wire(schema.Reply(status=Status.OK, body=info))) == info
    with pytest.raises(RequestError) as err:
        protocol.parse_model_reply(wire(schema.Reply(status=Status.MODEL_NOT_FOUND, detail="no model named 'x'")))
    assert err.value.status is Status.MODEL_NOT_FOUND
    assert protocol.parse_cancel_reply(wire(schema.Reply(status=Status.OK, body={"cancelled": True}))) is True
    assert protocol.parse_remove_reply(wire(schema.Reply(status=Status.OK))) is None
    status = {"workers": [], "models": [], "counters": {"requests": 1}}
    assert protocol.parse_status_reply(wire(schema.Reply(status=Status.OK, body=status))) == status
    with pytest.raises(RequestError, match="shapes") as err:
        protocol.parse_upload_reply(wire(schema.Reply(status=Status.BAD_MODEL, detail="shapes")))
    assert err.value.status is Status.BAD_MODEL
    with pytest.raises(ServerError):
        protocol.parse_reply(wire(ok_infer_reply()))


def test_input_names_is_tolerant():
    assert protocol.input_names(model("m", "a", "b")) == ("a", "b")
    assert protocol.input_names({"name": "m"}) is None
    assert protocol.input_names({"inputs": [{"dtype": "float32"}]}) is None


# ----------------------------------------------------------------------------- receiving


def test_read_incoming_decodes_and_keeps_the_parent():
    [incoming] = protocol.read_incoming(codec.encode(schema.Reply(status=Status.OK), 5, 42))
    assert incoming.parent_id == 42 and incoming.error is None


def test_read_incoming_reads_every_reply_of_a_bundle_and_spoils_only_the_bad_one():
    bad = [msgpack.packb({"type": "reply", "msg_id": 6, "parent_id": 43, "status": "not a number"})]
    frames = codec.bundle([codec.encode(schema.Reply(status=Status.OK), 5, 42), bad,
                           codec.encode(schema.InferReply(status=Status.OK, batch_size=2), 7, 44)])
    first, second, third = protocol.read_incoming(frames)
    assert (first.parent_id, first.error) == (42, None)
    assert second.parent_id == 43 and isinstance(second.error, ServerError)
    assert third.parent_id == 44 and third.envelope.body.batch_size == 2


def test_a_bundle_whose_counts_are_wrong_is_one_anonymous_error():
    frames = codec.bundle([codec.encode(schema.Reply(status=Status.OK), 5, 42)] * 2)[:-1]
    [incoming] = protocol.read_incoming(frames)
    assert incoming.parent_id == 0 and isinstance(incoming.error, ServerError)


def test_undecodable_reply_becomes_a_server_error_for_its_request():
    header = msgpack.packb({"type": "reply", "msg_id": 5, "parent_id": 42, "status": "not a number"})
    [incoming] = protocol.read_incoming([header])
    assert incoming.parent_id == 42 and incoming.envelope is None
    assert isinstance(incoming.error, ServerError) and incoming.error.status is Status.INTERNAL
    with pytest.raises(ServerError, match="undecodable"):
        Call(schema.ListModels(), "list", 0, 1, protocol.parse_list_reply).finish(incoming)
    assert [i.parent_id for i in protocol.read_incoming([b"\xc1garbage"])] == [0]
    assert [i.parent_id for i in protocol.read_incoming([])] == [0]


def test_a_reply_over_the_header_limit_still_names_its_request():
    reply = codec.encode(schema.Reply(status=Status.OK), 5, 42)
    huge = msgpack.packb({**msgpack.unpackb(reply[0]), "pad": "x" * schema.MAX_HEADER_BYTES})
    [incoming] = protocol.read_incoming([huge])
    assert incoming.parent_id == 42 and isinstance(incoming.error, ServerError)
    assert "exceeds" in incoming.error.detail


def test_route_matches_parent_ids_only():
    reply = Incoming(42, wire(schema.Reply(status=Status.OK), parent_id=42))
    assert protocol.route(reply, {41, 42}) == 42
    assert protocol.route(reply, {41}) is None  # a late reply to an abandoned request


def test_route_gives_an_anonymous_error_to_the_only_pending_call():
    anonymous = Incoming(0, wire(schema.Error(status=Status.BAD_MESSAGE)))
    assert protocol.route(anonymous, {7}) == 7
    assert protocol.route(anonymous, {7, 8}) is None  # cannot tell whose it is
    assert protocol.route(anonymous, set()) is None
    anonymous_reply = Incoming(0, wire(schema.Reply(status=Status.OK)))
    assert protocol.route(anonymous_reply, {7}) is None


# ----------------------------------------------------------------------------- the core


def test_core_learns_input_names_from_list_model_and_upload_and_forgets_on_remove():
    core = ClientCore(Options())
    x = np.zeros((1, 2), np.float32)
    assert core.needs_signature("m", x) and not core.needs_signature("m", {"a": x})
    listed = core.list_page(0).parse(wire(schema.Reply(status=Status.OK, body={"models": [model("m", "a")]})))
    assert listed["models"] == [model("m", "a")] and not core.needs_signature("m", x)
    assert [t.name for t in core.infer("m", x, 10 * MS, 0).body.tensors] == ["a"]
    core.uploading(b"x", "n").next_call(0).parse(wire(schema.Reply(status=Status.OK, body={"model": model("n", "b")})))
    assert not core.needs_signature("n", x)
    core.remove("n", 0).parse(wire(schema.Reply(status=Status.OK)))
    assert core.needs_signature("n", x)
    assert core.model("n", 0).parse(wire(schema.Reply(status=Status.OK, body=model("n", "c")))) == model("n", "c")
    assert [t.name for t in core.infer("n", x, 10 * MS, 0).body.tensors] == ["c"]


def test_core_forgets_a_signature_the_controller_refuses():
    core = ClientCore(Options())
    core.model("m", 0).parse(wire(schema.Reply(status=Status.OK, body=model("m", "a"))))
    call = core.infer("m", np.zeros((1, 2), np.float32), 10 * MS, 0)
    with pytest.raises(RequestError):
        call.parse(wire(schema.InferReply(status=Status.BAD_INPUT, detail="missing input 'b'")))
    assert core.needs_signature("m", np.zeros(1))


def test_core_bare_array_for_an_unknown_model():
    with pytest.raises(RequestError) as info:
        ClientCore(Options()).infer("ghost", np.zeros((1, 2), np.float32), 10 * MS, 0)
    assert info.value.status is Status.MODEL_NOT_FOUND


def test_core_look_up_for_a_signature_is_bounded_by_the_infer_deadline():
    call = ClientCore(Options(timeout_s=30)).model("m", 0, wait_until_ns=5 * MS)
    assert call.wait_until_ns == 5 * MS and call.body == schema.GetModel(name="m") and call.retry_ns > 0


def page(names: list[str], after: str, total: int = 5) -> schema.Envelope:
    return wire(schema.Reply(status=Status.OK, body={"models": [model(n, "a") for n in names], "total": total,
                                                     "next": after}))


def test_a_listing_pages_on_from_each_next_until_the_last():
    listing = ClientCore(Options()).listing("m")
    call = listing.next_call(0)
    assert call.body == schema.ListModels(prefix="m", after="", limit=0)
    listing.add(call.parse(page(["m1", "m2"], "m2")))
    call = listing.next_call(0)
    assert call.body == schema.ListModels(prefix="m", after="m2", limit=0)
    listing.add(call.parse(page(["m3", "m4", "m5"], "")))
    assert listing.next_call(0) is None
    assert [m["name"] for m in listing.models] == ["m1", "m2", "m3", "m4", "m5"]


def test_a_listing_with_a_limit_asks_for_no_more_than_it_needs():
    listing = ClientCore(Options()).listing(None, limit=3)
    assert listing.next_call(0).body.limit == 3
    listing.add(protocol.parse_list_reply(page(["a", "b"], "b")))
    assert listing.next_call(0).body == schema.ListModels(prefix="", after="b", limit=1)
    listing.add(protocol.parse_list_reply(page(["c", "d"], "d")))  # a controller that sent more: only what was asked is kept
    assert listing.next_call(0) is None and [m["name"] for m in listing.models] == ["a", "b", "c"]
    assert ClientCore(Options()).listing(limit=schema.MAX_LIST_PAGE * 3).next_call(0).body.limit == schema.MAX_LIST_PAGE


def test_a_listing_whose_next_does_not_advance_is_an_error_not_a_loop():
    listing = ClientCore(Options()).listing()
    listing.add(protocol.parse_list_reply(page(["a", "b"], "b")))
    with pytest.raises(ServerError, match="did not advance"):
        listing.add(protocol.parse_list_reply(page(["a", "b"], "b")))
    with pytest.raises(ServerError, match="did not advance"):
        listing.add(protocol.parse_list_reply(page([], "c")))


def test_core_upload_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "tiny-net.json"
    path.write_bytes(b'{"weights_bytes": 1, "load_ms": 1, "exec_ms": {"1": 1}}')
    call = ClientCore(Options(upload_timeout_s=7)).uploading(path, None).next_call(0)
    assert (call.body.name, call.body.format, call.wait_until_ns) == ("tiny-net", "profile", 7_000_000_000)
    assert call.body.total_bytes == 0 and bytes(call.body.blob) == path.read_bytes()  # small: one message


def test_a_large_model_goes_in_chunks_that_name_the_whole_and_the_last_is_the_upload(tmp_path):
    import hashlib

    path = tmp_path / "big.onnx"
    path.write_bytes(bytes(range(256)) * 10)  # 2,560 bytes in chunks of 1,000
    uploading = ClientCore(Options(timeout_s=3, upload_timeout_s=9)).uploading(path, None, chunk_bytes=1000)
    sha, bodies = hashlib.sha256(path.read_bytes()).hexdigest(), []
    while (call := uploading.next_call(0)) is not None:
        bodies.append(call.body)
        last = len(bodies) == 3
        assert call.wait_until_ns == (9 if last else 3) * 1_000_000_000  # only the last waits for workers
        reply = {"model": model("big", "x")} if last else {"received": uploading.sent + len(call.body.blob)}
        uploading.add(call.parse(wire(schema.Reply(status=Status.OK, body=reply))))
    assert [(b.offset, len(b.blob), b.total_bytes, b.sha256) for b in bodies] == [
        (0, 1000, 2560, sha), (1000, 1000, 2560, sha), (2000, 560, 2560, sha)]
    assert b"".join(bytes(b.blob) for b in bodies) == path.read_bytes()
    assert uploading.info == model("big", "x") and uploading.sent == uploading.total == 2560


def test_a_controller_that_acknowledges_other_bytes_is_an_error():
    uploading = ClientCore(Options()).uploading(b"y" * 30, "m", format="profile", chunk_bytes=10)
    call = uploading.next_call(0)
    with pytest.raises(ServerError):
        uploading.add(call.parse(wire(schema.Reply(status=Status.OK, body={"received": 7}))))


@pytest.mark.parametrize("kwargs", [dict(timeout_s=-1), dict(grace_s=float("nan")), dict(endpoint="")])
def test_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        Options(**kwargs)


def test_clockwork_error_is_the_base():
    assert all(issubclass(c, ClockworkError) for c in (RequestError, CapacityError, ServerError, DeadlineExceeded))
