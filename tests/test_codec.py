"""The pure codec: round trips, limits, and fuzzing (no sockets)."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clockwork.common import codec, schema
from clockwork.common.checks import BadMessage
from clockwork.common.codec import Header, Template, bundle, bundles, decode, encode, messages, peek_id, peek_map, split
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor


def roundtrip(body, **ids):
    frames = encode(body, ids.get("msg_id", 1), ids.get("parent_id", 0), ids.get("sent_ns", 0))
    return decode([bytes(f) for f in frames])


def every_message() -> list[schema.Message]:
    """One body of every message type, most fields set."""
    x = Tensor.from_array("x", np.arange(12, dtype=np.float32).reshape(3, 4))
    return [
        schema.Upload(name="resnet50", format="profile", input_shapes={"x": (3, 224, 224)}, max_batch=8, blob=b"{}"),
        schema.Remove(name="m"), schema.ListModels(), schema.ListModels(prefix="re%_", after="res", limit=7),
        schema.GetModel(name="m"), schema.GetStatus(), schema.GetStatus(models_limit=0),
        schema.Infer(model="m", slo_ns=10**7, priority=3, tensors=(x,)), schema.Cancel(request_id=5),
        schema.Reply(status=Status.OK, body={"models": [{"name": "m"}]}),
        schema.InferReply(status=Status.OK, queue_ns=1, exec_ns=2, total_ns=3, batch_size=4, cold_start=True,
                          worker="w", tensors=(x,)),
        schema.Hello(worker="w", runtime="emulated", formats=("profile",),
                     devices=({"device_id": 0, "kind": "k", "memory_bytes": 10, "page_bytes": 1},)),
        schema.Heartbeat(lanes_alive=False),
        schema.Prepared(model_id="m", status=Status.OK, exec_ns={1: 5, 16: 9}, load_ns=3, weights_bytes=7),
        schema.Result(action="exec", status=Status.TOO_LATE, device_id=0, model_id="m", begin_ns=-5, end_ns=5),
        schema.Welcome(), schema.HeartbeatAck(echo_sent_ns=-3),
        schema.Prepare(model_id="m", blob=b"onnx"), schema.Load(device_id=1, model_id="m", earliest_ns=1, latest_ns=2),
        schema.Unload(device_id=1, model_id="m", earliest_ns=1, latest_ns=2),
        schema.Exec(device_id=0, model_id="m", batch_size=4, earliest_ns=0, latest_ns=9, tensors=(x, x)),
        schema.Drop(model_id="m"), schema.Error(status=Status.BAD_MESSAGE, detail="why"),
    ]


def test_every_message_type_round_trips():
    bodies = every_message()
    assert {type(b) for b in bodies} == set(schema.MESSAGE_TYPES.values())
    for body in bodies:
        env = roundtrip(body, msg_id=9, parent_id=4, sent_ns=-7)
        assert (env.msg_id, env.parent_id, env.sent_ns) == (9, 4, -7)
        assert type(env.body) is type(body)
        for name in body.__dataclass_fields__:
            got, want = getattr(env.body, name), getattr(body, name)
            if name == "tensors":
                assert [t.array().tolist() for t in got] == [t.array().tolist() for t in want]
            elif name == "blob":
                assert bytes(got) == bytes(want)
            elif isinstance(want, tuple):
                assert tuple(got) == tuple(want) or list(map(tuple, got)) == list(map(tuple, want)) or got == want
            else:
                assert got == want, name


@pytest.mark.parametrize("how", ["class", "build"])
def test_a_message_is_built_with_its_fields_defaults_and_fresh_factories_and_stays_frozen(how):
    """The one-step __init__ and `build` (common/frozen.py) keep the dataclass's parameters."""
    def make(cls, *args, **kwargs):
        return cls(*args, **kwargs) if how == "class" else cls.build(*args, **kwargs)

    for body in every_message():
        cls, fields = type(body), dataclasses.fields(body)
        given = {fld.name: getattr(body, fld.name) for fld in fields}
        built = make(cls, **given)
        assert type(built) is cls and built == body
        assert all(getattr(built, name) is value for name, value in given.items())
        required = {fld.name: given[fld.name] for fld in fields
                    if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING}
        least = make(cls, **required)
        for fld in fields:
            if fld.name not in required:
                default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
                assert getattr(least, fld.name) == default, (cls.__name__, fld.name)
    upload = make(schema.Upload, name="m")
    assert make(schema.Upload, name="n").input_shapes is not upload.input_shapes  # a fresh dict each
    with pytest.raises(TypeError, match="name"):
        make(schema.Upload)
    with pytest.raises(TypeError):
        make(schema.Upload, name="m", nmae="typo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        upload.name = "x"
    tensor = make(Tensor, "x", "float32", (1, 2), b"12345678")  # positional parameters, as declared
    assert (tensor.name, tensor.dtype, tensor.shape, tensor.data) == ("x", "float32", (1, 2), b"12345678")
    assert tensor == make(Tensor, name="x", dtype="float32", shape=(1, 2), data=b"12345678")
    with pytest.raises(TypeError):
        make(Tensor, "x", "float32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tensor.shape = (2,)


def test_tensor_bytes_are_not_copied_on_decode():
    data = bytearray(np.ones((2, 2), np.float32).tobytes())
    frames = encode(schema.Infer(model="m", slo_ns=1, tensors=(Tensor("x", "float32", (2, 2), data),)), 1)
    env = decode([frames[0], memoryview(data)])
    data[0:4] = np.float32(5).tobytes()
    assert env.body.tensors[0].array()[0, 0] == 5.0


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int16", "int32", "int64", "uint8", "bool"])
def test_an_array_of_either_byte_order_arrives_with_its_values(dtype):
    values = np.arange(6).reshape(2, 3).astype(dtype)
    for order in "<>":
        tensor = Tensor.from_array("x", values.astype(values.dtype.newbyteorder(order)))
        assert tensor.dtype == dtype and tensor.shape == (2, 3)
        frames = encode(schema.Infer(model="m", slo_ns=1, tensors=(tensor,)), 1)
        np.testing.assert_array_equal(decode(frames).body.tensors[0].array(), values)
    with pytest.raises(BadMessage, match="dtype complex64 is not supported"):
        Tensor.from_array("x", values.astype(np.complex64))


def bad(frames):
    with pytest.raises(BadMessage) as info:
        decode(frames)
    return info.value


def header(**fields):
    base = {"type": "infer", "msg_id": 1, "model": "m", "slo_ns": 5, "tensors": []}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


def test_limits_and_reasons():
    assert bad([]).status is Status.BAD_MESSAGE
    assert bad([b"\xc1garbage"]).status is Status.BAD_MESSAGE
    assert bad([msgpack.packb([1, 2])]).status is Status.BAD_MESSAGE
    assert bad([header(type="nope")]).status is Status.UNKNOWN_TYPE
    assert bad([header(proto_version=99)]).status is Status.UNSUPPORTED_VERSION
    assert "slo_ns" in bad([header(slo_ns=-1)]).detail
    assert "model" in bad([header(model="../etc")]).detail
    assert "missing field" in bad([header(model=None)]).detail
    desc = {"name": "x", "dtype": "float32", "shape": [2, 2]}
    assert "needs 16" in bad([header(tensors=[desc]), b"\0" * 15]).detail  # byte length = shape x itemsize
    assert "frames" in bad([header(tensors=[desc])]).detail  # truncated: the data frame is missing
    assert bad([header(tensors=[{**desc, "dtype": "object"}]), b""]).status is Status.BAD_MESSAGE
    assert bad([b"\x80" + b"\0" * (schema.MAX_HEADER_BYTES + 1)]).status is Status.BAD_MESSAGE
    assert "more than" in bad([header(tensors=[desc] * (schema.MAX_TENSORS + 1))]).detail


def test_a_header_over_the_limit_is_refused_when_encoded_and_when_decoded():
    """Both ends hold the limit: a sender learns at once that a message cannot go (the
    controller then answers TOO_LARGE), and a receiver never unpacks one that came anyway."""
    def reply(pad: int) -> schema.Reply:
        return schema.Reply(status=Status.OK, body={"pad": "x" * pad})

    fill = schema.MAX_HEADER_BYTES - len(encode(reply(300), 1)[0]) + 300  # a str16 pad from 256 characters
    assert len(encode(reply(fill), 1)[0]) == schema.MAX_HEADER_BYTES
    assert decode(encode(reply(fill), 1)).body == reply(fill)
    with pytest.raises(BadMessage) as info:
        encode(reply(fill + 1), 1)
    assert info.value.status is Status.TOO_LARGE
    assert f"{schema.MAX_HEADER_BYTES + 1} bytes exceeds the {schema.MAX_HEADER_BYTES}-byte" in info.value.detail
    too_big = msgpack.packb({"type": "reply", "msg_id": 1, "status": 0, "body": {"pad": "x" * schema.MAX_HEADER_BYTES}})
    with pytest.raises(BadMessage, match=f"exceeds {schema.MAX_HEADER_BYTES}") as info:
        decode([too_big])
    assert info.value.status is Status.BAD_MESSAGE


def test_list_model_and_status_fields_are_checked():
    def fields(**extra) -> bytes:
        return msgpack.packb({"type": "list", "msg_id": 1, **extra})

    assert decode([fields()]).body == schema.ListModels(prefix="", after="", limit=0)
    for bad_fields in (dict(limit=schema.MAX_LIST_PAGE + 1), dict(limit=-1), dict(prefix="x" * 129), dict(after=3)):
        with pytest.raises(BadMessage):
            decode([fields(**bad_fields)])
    with pytest.raises(BadMessage, match="models_limit"):
        decode([msgpack.packb({"type": "status", "msg_id": 1, "models_limit": schema.MAX_LIST_PAGE + 1})])
    with pytest.raises(BadMessage, match="does not match"):
        decode([msgpack.packb({"type": "model", "msg_id": 1, "name": "../x"})])


def test_unknown_header_fields_are_ignored():
    env = decode([header(future_field={"a": 1})])
    assert env.body.model == "m"


def test_peek_reads_the_ids_of_a_broken_request():
    assert peek_id(peek_map([msgpack.packb({"msg_id": 42, "type": 3})]), "msg_id") == 42
    assert peek_id(peek_map([msgpack.packb({"msg_id": -1, "parent_id": 7})]), "msg_id") == 0
    assert peek_id(peek_map([msgpack.packb({"msg_id": "1", "parent_id": 7})]), "msg_id") == 0
    assert peek_map([b"junk"]) is None and peek_map([]) is None and peek_map([msgpack.packb([1])]) is None
    assert peek_id(None, "msg_id") == 0


def test_peek_refuses_an_oversized_header_unless_told_to_read_any_size():
    huge = [msgpack.packb({"parent_id": 9, "pad": "x" * schema.MAX_HEADER_BYTES})]
    assert peek_map(huge) is None
    assert peek_id(peek_map(huge, max_bytes=None), "parent_id") == 9


def test_a_header_alone_decodes_without_its_tensors():
    reply = schema.InferReply(status=Status.OK, batch_size=4, worker="w", tensors=(Tensor.from_array("y", np.ones((4, 2))),))
    frames = encode(reply, 5, 6, 7)
    env = decode(frames[:1], header_only=True)
    assert (env.msg_id, env.parent_id, env.sent_ns) == (5, 6, 7)
    assert env.body == schema.InferReply(status=Status.OK, batch_size=4, worker="w")
    with pytest.raises(BadMessage, match="frames"):  # without header_only the tensor frame is missing
        decode(frames[:1])
    with pytest.raises(BadMessage, match="status"):
        decode([msgpack.packb({"type": "infer_reply", "msg_id": 1, "status": "x"})], header_only=True)


def test_a_template_is_byte_identical_to_encode():
    body = schema.Infer(model="resnet50-00", slo_ns=100_000_000, priority=3,
                        tensors=(Tensor.from_array("data", np.arange(16, dtype=np.float32).reshape(1, 16)),))
    tpl = Template(body)
    for msg_id, sent_ns in ((1 << 32, 1 << 32), ((0xDEADBEEF << 32) | 77, 123_456_789_012_345),
                            (schema.U64, schema.I64),
                            (5, 7), (1 << 40, 3), (1 << 40, 1 << 63)):  # the last three are encoded in full
        expected = [bytes(f) for f in encode(body, msg_id, sent_ns=sent_ns)]
        assert [bytes(f) for f in tpl.frames(msg_id, sent_ns)] == expected
    assert tpl.n_frames == 2


def test_a_template_splices_any_of_its_integer_fields():
    body = schema.InferReply(status=Status.OK, batch_size=1, worker="echo")
    for spliced, fixed in ((("msg_id", "parent_id"), {"sent_ns": 3}), (("msg_id", "sent_ns"), {}),
                           (("parent_id", "sent_ns"), {"msg_id": 1 << 50})):
        tpl = Template(body, spliced, **fixed)
        for values in (((1 << 33) + 1, (1 << 34) + 2), (1, 2)):
            ids = {**fixed, **dict(zip(spliced, values))}
            assert tpl.header(*values) == bytes(encode(body, **ids)[0])
    # The load generator's: header ids and the body's report of the last reply, 0 before the first.
    infer = schema.Infer(model="m", slo_ns=100_000_000, tensors=(Tensor.from_array("x", np.ones((1, 2), np.float32)),))
    tpl = Template(infer, ("msg_id", "sent_ns", "last_reply_id", "last_reply_received_ns"))
    for values in (((1 << 40) + 9, 1 << 36, (1 << 40) + 3, (1 << 36) - 5), ((1 << 40) + 9, 1 << 36, 0, 0)):
        expected = encode(dataclasses.replace(infer, last_reply_id=values[2], last_reply_received_ns=values[3]),
                          values[0], sent_ns=values[1])
        assert tpl.frames(*values) == [bytes(f) for f in expected]
    for spliced, fixed in ((("msg_id", "sent_ns"), {"sent_ns": 1}), (("msg_id", "model"), {}),
                           (("msg_id", "msg_id"), {}), ((), {}), (("msg_id",), {"priority": 1})):
        with pytest.raises(ValueError, match="splice some of"):
            Template(infer, spliced, **fixed)
    with pytest.raises(ValueError, match="cannot find sent_ns then msg_id"):
        Template(body, ("sent_ns", "msg_id"))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_frames_never_raise_anything_but_bad_message(frames):
    try:
        decode(frames)
    except BadMessage:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "msg_id", "model", "slo_ns", "tensors", "name", "blob",
                                        "status", "device_id", "priority", "body", "exec_ns"]),
                       st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
                                    | st.binary(max_size=8), lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=8)),
       st.sampled_from(sorted(schema.MESSAGE_TYPES)), st.integers(0, 3))
def test_structured_garbage_is_refused_cleanly(fields, msg_type, extra_frames):
    fields.setdefault("type", msg_type)
    fields.setdefault("msg_id", 1)
    try:
        decode([msgpack.packb(fields, use_bin_type=True)] + [b"x"] * extra_frames)
    except BadMessage:
        pass


def test_truncated_encodings_of_real_messages_are_refused():
    x = Tensor.from_array("x", np.ones((2, 3), np.float32))
    frames = [bytes(f) for f in encode(schema.Infer(model="m", slo_ns=9, tensors=(x,)), 3)]
    for cut in range(len(frames[0])):
        with pytest.raises(BadMessage):
            decode([frames[0][:cut], frames[1]])
    for cut in range(len(frames[1])):
        with pytest.raises(BadMessage):
            decode([frames[0], frames[1][:cut]])


# ----------------------------------------------------------------------------- bundles


def test_a_bundle_splits_back_into_its_messages_with_their_headers():
    x = Tensor.from_array("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    bodies = [schema.Infer(model="a", slo_ns=5, tensors=(x,)), schema.ListModels(),
              schema.Upload(name="b", format="profile", blob=b"{}")]
    frames = [bytes(f) for f in bundle([encode(b, 10 + i) for i, b in enumerate(bodies)])]
    parts = list(split(frames))
    assert len(frames) == 1 + 2 + 1 + 2 and len(parts) == 3
    decoded = [decode(part, head) for head, part in parts]
    assert [e.msg_id for e in decoded] == [10, 11, 12]
    assert [e.body for e in decoded[1:]] == bodies[1:]
    assert decoded[0].body.tensors[0].array().tolist() == x.array().tolist()


def test_one_message_is_sent_as_itself_and_splits_into_itself():
    frames = encode(schema.GetStatus(), 3)
    assert bundle([frames]) is frames
    [(head, part)] = split(frames)
    assert head["type"] == "status" and decode(part, head).msg_id == 3


def test_messages_reads_each_header_once_and_decodes_as_split_does():
    """`messages` hands a daemon each part with its header read by the fast reader (a Header,
    which `get` reads as a map is read); a header that reader refuses comes as split gives it."""
    x = Tensor.from_array("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    infer = schema.Infer(model="a", slo_ns=5, tensors=(x,))
    reply = schema.Reply(status=Status.OK, body={"free": ["form"]})  # no Struct: its body is free-form
    for frames in (encode(infer, 7, sent_ns=99), [bytes(f) for f in bundle([encode(infer, 10), encode(reply, 11)])]):
        by_messages, by_split = list(messages(frames)), list(split(frames))
        assert len(by_messages) == len(by_split)
        for (head, part), (map_head, _) in zip(by_messages, by_split):
            assert isinstance(head, dict if map_head["type"] == "reply" else Header)
            for key in ("type", "msg_id", "sent_ns", "slo_ns", "model", "absent"):
                assert head.get(key) == map_head.get(key) and peek_id(head, key) == peek_id(map_head, key)
            assert decode(part, head) == decode(part, map_head) == decode(part)
    [(head, _)] = messages(encode(infer, 7))
    assert isinstance(head, Header)


def test_messages_refuses_what_split_refuses_and_a_broken_part_as_decode_would():
    frame = encode(schema.ListModels(), 1)[0]
    with pytest.raises(BadMessage, match="bundle: parts count 3 frames"):
        messages([msgpack.packb({"type": "bundle", "parts": [1, 2]}), frame, frame])
    infer = encode(schema.Infer(model="a", slo_ns=5, tensors=(Tensor.from_array("x", np.zeros(2, np.float32)),)), 4)
    (head, part), (head2, part2) = messages(bundle([infer[:1], encode(schema.ListModels(), 3)]))  # a tensor short
    assert isinstance(head, Header) and head.get("msg_id") == 4
    with pytest.raises(BadMessage, match="frames"):
        decode(part, head)
    assert decode(part2, head2).msg_id == 3


@pytest.mark.parametrize("parts", [[], [0, 1], [1, 100], "2", [1.5], [1] * (schema.MAX_BUNDLE_PARTS + 1)])
def test_a_bundle_with_bad_counts_is_refused(parts):
    frame = encode(schema.ListModels(), 1)[0]
    with pytest.raises(BadMessage) as info:
        split([msgpack.packb({"type": "bundle", "parts": parts}), frame, frame])
    assert info.value.status is Status.BAD_MESSAGE


def test_counts_must_cover_the_frames_exactly():
    frame = encode(schema.ListModels(), 1)[0]
    for frames in ([frame] * 2, [frame] * 4):
        with pytest.raises(BadMessage, match="bundle: parts count 3 frames"):
            split([msgpack.packb({"type": "bundle", "parts": [1, 2]}), *frames])


def test_a_bundle_of_another_version_is_refused():
    frame = encode(schema.ListModels(), 1)[0]
    with pytest.raises(BadMessage) as info:
        split([msgpack.packb({"type": "bundle", "parts": [1], "proto_version": 99}), frame])
    assert info.value.status is Status.UNSUPPORTED_VERSION


def test_bundles_do_not_nest_and_a_bad_part_spoils_only_itself():
    inner = msgpack.packb({"type": "bundle", "parts": [1]})
    (head, part), (head2, part2) = split(bundle([[inner], encode(schema.ListModels(), 3)]))
    with pytest.raises(BadMessage, match="do not nest"):
        decode(part, head)
    assert decode(part2, head2).msg_id == 3


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-2, 70) | st.text(max_size=2), max_size=6), st.integers(0, 8))
def test_garbage_bundles_split_or_raise_bad_message_only(parts, n_frames):
    frame = encode(schema.ListModels(), 1)[0]
    try:
        for head, part in split([msgpack.packb({"type": "bundle", "parts": parts}), *[frame] * n_frames]):
            decode(part, head)
    except BadMessage:
        pass


def test_a_refusal_names_the_field_path_down_to_the_item():
    fields = {"type": "infer", "msg_id": 1, "model": "m", "slo_ns": 5,
              "tensors": [{"name": "x", "dtype": "float32", "shape": [2, -1]}]}
    with pytest.raises(BadMessage, match=r"^BAD_MESSAGE: tensors\[0\]\.shape\[1\]: -1 outside"):
        decode([msgpack.packb(fields), b""])
    fields = {"type": "prepared", "msg_id": 1, "model_id": "m", "status": 0, "exec_ns": {1: 5, 2: "slow"}}
    with pytest.raises(BadMessage, match=r"exec_ns\[2\]: expected an integer"):
        decode([msgpack.packb(fields)])


def test_more_messages_than_a_bundle_holds_go_out_in_several_in_order():
    messages = [encode(schema.ListModels(), i + 1) for i in range(schema.MAX_BUNDLE_PARTS + 1)]
    out = list(bundles(messages))
    assert len(out) == 2 and out[1] == messages[-1]
    assert [decode(part, head).msg_id for head, part in split(out[0])] == list(range(1, schema.MAX_BUNDLE_PARTS + 1))


# ------------------------------------------------------------------ the fast path (msgspec)


def test_msgspec_reads_every_message_type_but_the_two_with_free_form_fields():
    fast = {plan.cls for plan, _build in codec._FAST_PATHS.values()}
    assert fast == set(schema.MESSAGE_TYPES.values()) - {schema.Hello, schema.Reply}
    for body in every_message():  # and it is what decode uses for them
        frames = [bytes(f) for f in encode(body, 9, 4, -7)]
        assert (codec._decode_fast(frames, False) is not None) == (type(body) in fast)


def _same(a: schema.Envelope, b: schema.Envelope) -> bool:
    """Equal, value for value and type for type (True is not 1, a tuple not a list)."""
    def fields(env):
        values = dict(vars(env.body))
        tensors = [(t.name, t.dtype, t.shape, bytes(t.data)) for t in values.pop("tensors", ())]
        blob = bytes(values.pop("blob", b""))
        return repr(sorted(values.items())), tensors, blob, (env.msg_id, env.parent_id, env.sent_ns)

    return type(a.body) is type(b.body) and fields(a) == fields(b)


# Values at and across the schema's limits, and of every type msgpack carries.
EDGE_INTS = [0, 1, -1, 9, 10, 64, 65, 128, 129, 255, 256, 1023, 1024, 1025, 4095, 4096, 100_000, 100_001, 1_000_000,
             999_999, 2**31, 2**31 + 1, 2**32, 2**63 - 1, 2**63, -(2**63 - 1), -(2**63), 2**64 - 1]
EDGE_TEXTS = ["m", "m\n", "\nm", "-m", "m.v2_x-1", "é" * 128, "é" * 129, "a" * 128, "a" * 129, "f" * 64, "f" * 65,
              "F" * 64, "x" * 256, "x" * 257, "x" * 4096, "x" * 4097, "onnx", "profile", "exec", "load", "unload",
              "emulated", "float32", "1", ""]
EDGE_OTHERS = [None, True, False, 1.0, 0.5, b"", b"m", [], [1], [3] * 8, [3] * 9, [0], [-1], ["onnx"], {}, {"x": [3, 4]},
               {"x": []}, {"x": [0]}, {"x": [3] * 9}, {1: 5}, {"1": 5}, {0: 5}, {1025: 5}, {1: -1}, {1: True},
               {i: 1 for i in range(1, 66)}, {"x": "y"}]
EDGE_VALUES = EDGE_INTS + EDGE_TEXTS + EDGE_OTHERS
EDGE_SPECS = [[{"name": "x", "dtype": "float32", "shape": shape}] for shape in ([3, 4], [12], [4, 3], [2, 6], [3, 4, 1])] + [
    [{"name": name, "dtype": dtype, "shape": [3, 4]}] for name, dtype in (("x", "float64"), ("x", "int8"),
                                                                         ("x" * 257, "float32"), ("x", "f32"), (1, "float32"))
] + [[{"name": "x", "dtype": "float32"}], [{"name": "x", "dtype": "float32", "shape": [3, 4], "more": 1}], [[1]], [], None]


def _read_both(frames: list) -> tuple:
    def outcome(read):
        try:
            return read(frames)
        except BadMessage as exc:
            return exc.status, exc.detail

    return outcome(lambda f: codec._decode_fast(f, False)), outcome(lambda f: codec.decode_checked(f, None, False))


def _assert_agree(fast, checked) -> None:
    """Whatever the fast path accepts, the checks accept as the same message; what it refuses
    goes to the checks, which say why (or accept: a protocol version of 1.0)."""
    if isinstance(fast, schema.Envelope):
        assert isinstance(checked, schema.Envelope) and _same(fast, checked)
    elif fast is not None:  # a header it read, but tensor bytes or frames that do not match it
        assert checked == fast


def _mutated(body: schema.Message, changes: dict) -> list:
    frames = [bytes(f) for f in encode(body, 9, 4, -7)]
    header = peek_map(frames)
    header.update(changes)
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def test_msgspec_and_the_checks_agree_on_every_field_at_its_limits():
    accepted = refused = 0
    for body in every_message():
        names = [name for name in peek_map(encode(body, 9)) if name not in ("type", "tensors")] + ["unknown"]
        for name in names:
            for value in EDGE_VALUES:
                fast, checked = _read_both(_mutated(body, {name: value}))
                _assert_agree(fast, checked)
                accepted += isinstance(fast, schema.Envelope)
                refused += fast is None
        if body.TYPE.value in ("infer", "infer_reply", "result", "exec"):
            for specs in EDGE_SPECS:
                _assert_agree(*_read_both(_mutated(body, {"tensors": specs})))
    assert accepted > 1000 and refused > 1000  # both ways taken, many times


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(every_message()) - 1), st.data())
def test_msgspec_and_the_checks_agree_on_random_changes(which, data):
    body = every_message()[which]
    fields = [name for name in peek_map(encode(body, 9)) if name != "type"] + ["unknown", "type"]
    values = st.sampled_from(EDGE_VALUES) | st.recursive(
        st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=6) | st.floats()
        | st.binary(max_size=4), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=10)
    changes = {}
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(fields))
        changes[name] = data.draw(st.sampled_from(EDGE_SPECS) if name == "tensors" else
                                  st.sampled_from(sorted(schema.MESSAGE_TYPES)) if name == "type" else values)
    _assert_agree(*_read_both(_mutated(body, changes)))


@pytest.mark.parametrize("where", ["unknown", "model", "tensors"])
def test_a_header_nested_past_the_decoders_depth_is_refused_with_a_reason(where):
    """msgspec raises RecursionError for nesting past its depth, even in a field it would skip;
    the codec answers BAD_MESSAGE, as for any other garbage (a daemon's handler would otherwise
    log a failure and leave the sender unanswered)."""
    header = peek_map([bytes(f) for f in encode(schema.Infer(model="m", slo_ns=10), 1)])
    header.pop(where, None)
    header[where] = None  # the last key
    packed = msgpack.packb(header, use_bin_type=True)
    assert packed.endswith(b"\xc0")  # the field's value (nil) is the last byte, so it can be swapped out
    frames = [packed[:-1] + b"\x91" * 60_000 + b"\x00"]
    with pytest.raises(BadMessage) as refused:
        decode(frames)
    assert refused.value.status is Status.BAD_MESSAGE


def test_a_key_given_twice_reads_as_its_last_value_on_both_paths():
    """msgpack allows a map to repeat a key; the checks read a dict, where the last one wins."""
    def header(*pairs):
        return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)

    twice = [header(("type", "infer"), ("msg_id", 1), ("model", "a"), ("slo_ns", 10), ("model", "b"))]
    _assert_agree(*_read_both(twice))
    assert decode(twice).body.model == "b"
    retyped = [header(("type", "infer"), ("msg_id", 1), ("model", "a"), ("slo_ns", 10), ("type", "exec"))]
    _assert_agree(*_read_both(retyped))
    with pytest.raises(BadMessage, match="exec: missing field"):
        decode(retyped)
