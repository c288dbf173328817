"""`clockwork-bench codec` times what the daemons call, on messages that decode both ways."""

import pytest

from clockwork.bench import codec_compare as cc
from clockwork.common import codec


@pytest.mark.parametrize("name", list(cc.hot_messages()))
def test_the_timed_messages_take_the_fast_path_and_read_the_same_by_the_checks(name):
    frames = [bytes(f) for f in codec.encode(cc.hot_messages()[name], *cc.IDS)]
    assert codec._decode_fast(frames, False) is not None
    fast, checked = codec.decode(frames), codec.decode_checked(frames)
    assert (fast.msg_id, fast.parent_id, fast.sent_ns) == (checked.msg_id, checked.parent_id, checked.sent_ns) == cc.IDS
    assert {k: v for k, v in vars(fast.body).items() if k != "tensors"} == \
        {k: v for k, v in vars(checked.body).items() if k != "tensors"}


def test_the_report_prices_the_controllers_four_codec_calls_per_request():
    figures = cc.measure(repeat=20)
    assert set(figures) == {"INFER", "EXEC", "RESULT", "INFER_REPLY"}
    assert all(set(f) == set(cc.READERS) and all(v > 0 for v in f.values()) for f in figures.values())
    assert cc.controller_per_request_us(figures, "checked_decode") == pytest.approx(
        figures["INFER"]["checked_decode"] + figures["RESULT"]["checked_decode"]
        + figures["EXEC"]["encode"] + figures["INFER_REPLY"]["encode"])
