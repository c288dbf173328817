"""`clockwork-bench codec` compares like with like: the msgspec twins of the hot messages carry
the same fields and refuse the same bad input as today's codec."""

import dataclasses

import msgspec
import pytest

from clockwork.bench import codec_compare as cc
from clockwork.common import codec
from clockwork.common.checks import BadMessage


@pytest.mark.parametrize("name", list(cc.hot_messages()))
def test_both_codecs_carry_the_same_fields_and_tensors(name):
    body = cc.hot_messages()[name]
    today = codec.decode([bytes(f) for f in codec.encode(body, *cc.IDS)])
    data = [t.data for t in body.tensors]
    struct, tensors = cc.msgspec_decode([bytes(f) for f in cc.msgspec_encode(cc.to_struct(body, *cc.IDS), data)])
    assert (struct.msg_id, struct.parent_id, struct.sent_ns) == (today.msg_id, today.parent_id, today.sent_ns)
    for field in dataclasses.fields(body):
        if field.name != "tensors":
            mine = getattr(today.body, field.name)
            assert getattr(struct, field.name) == (mine.value if field.name == "action" else mine), field.name
    assert [(t.name, t.dtype, t.shape, bytes(t.data)) for t in tensors] == \
        [(t.name, t.dtype, t.shape, bytes(t.data)) for t in today.body.tensors]


@pytest.mark.parametrize("change", [{"priority": 10}, {"model": "../etc"}, {"slo_ns": 0}, {"model": "m" * 129}])
def test_both_codecs_refuse_the_same_bad_fields(change):
    body = dataclasses.replace(cc.hot_messages()["INFER"], **change)
    frames = [bytes(f) for f in codec.encode(body, *cc.IDS)]
    with pytest.raises(BadMessage):
        codec.decode(frames)
    header = msgspec.msgpack.decode(frames[0])
    with pytest.raises(BadMessage):
        cc.msgspec_decode([msgspec.msgpack.encode(header), *frames[1:]])


def test_both_codecs_refuse_a_tensor_frame_of_the_wrong_length():
    body = cc.hot_messages()["EXEC"]
    frames = [bytes(f) for f in codec.encode(body, *cc.IDS)]
    short = [frames[0], frames[1][:-4]]
    with pytest.raises(BadMessage):
        codec.decode(short)
    with pytest.raises(BadMessage):
        cc.msgspec_decode(short)


def test_the_report_prices_the_controllers_four_codec_calls_per_request():
    figures = cc.measure(repeat=20)
    assert set(figures) == {"INFER", "EXEC", "RESULT", "INFER_REPLY"}
    assert all(value > 0 for f in figures.values() for value in f.values())
    assert cc.controller_per_request_us(figures, "today") == pytest.approx(
        figures["INFER"]["today_decode_us"] + figures["RESULT"]["today_decode_us"]
        + figures["EXEC"]["today_encode_us"] + figures["INFER_REPLY"]["today_encode_us"])
