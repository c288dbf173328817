"""Clock skew estimation, configuration loading, ONNX signatures and profiles."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clockwork.common import config as cfg
from clockwork.common.checks import BadMessage
from clockwork.common.clock import SkewEstimator
from clockwork.common.models import check_inputs, onnx_signature, parse_profile
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor


def test_skew_estimator_keeps_the_sample_with_the_smallest_round_trip():
    est = SkewEstimator(window=4)
    offset = 1_000_000
    # (send, remote, receive): remote = local + offset, legs of 10/10 us, then a congested 10/500 us sample
    est.add(0, 10_000 + offset, 20_000)
    est.add(100_000, 100_010_000 - 100_000_000 + 100_000 + offset, 600_000)
    assert est.offset_ns == offset
    assert est.uncertainty_ns == 10_000
    assert est.to_local(est.to_remote(123)) == 123


def test_skew_window_slides():
    est = SkewEstimator(window=2)
    est.add(0, 5, 10)  # rtt 10, offset 0
    est.add(100, 150 + 7, 200)  # rtt 100, offset 7
    est.add(300, 350 + 7, 400)  # the rtt-10 sample has left the window
    assert est.offset_ns == 7


def test_skew_is_exactly_zero_on_one_clock_when_the_measurements_agree():
    one = SkewEstimator()
    one.same_host(True)
    assert not one.same_clock  # nothing measured yet: nothing to agree with
    one.add(0, 400, 1_000)  # the peer read 400 on our clock: offset -100, within half the round trip
    assert one.same_clock and (one.offset_ns, one.uncertainty_ns, one.round_trip_ns) == (0, 0, 1_000)
    assert one.to_local(123) == 123
    one.same_host(False)  # a controller elsewhere took over
    assert (one.offset_ns, one.uncertainty_ns) == (-100, 500)
    namespaced = SkewEstimator()  # one kernel (one boot id), but a clock 5 s ahead
    namespaced.same_host(True)
    namespaced.add(0, 5_000_000_400, 1_000)
    assert not namespaced.same_clock and namespaced.offset_ns == 4_999_999_900


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[controller]\nstate_dir = "/srv/cw"\n[controller.scheduler]\nlatency_window = 64\n')
    c = cfg.load(cfg.ControllerConfig, "controller", path, ["scheduler.schedule_ahead_ns=3000000",
                                                            "client_endpoint=tcp://0.0.0.0:1"])
    assert c.state_dir == "/srv/cw" and c.scheduler.latency_window == 64
    assert c.scheduler.schedule_ahead_ns == 3_000_000 and c.client_endpoint == "tcp://0.0.0.0:1"
    with pytest.raises(ValueError, match="unknown setting"):
        cfg.load(cfg.ControllerConfig, "controller", None, ["scheduler.typo=1"])
    with pytest.raises(ValueError, match="expected int"):
        cfg.load(cfg.WorkerConfig, "worker", None, ["devices=many"])


@pytest.mark.parametrize("override, reason", [
    ("scheduler.latency_percentile=250", "a percentile is within (0, 100]"),
    ('scheduler.batch_sizes=["a",3]', "expected a list of int"),
    ("scheduler.batch_sizes=[4,2]", "positive integers in ascending order"),
    ("scheduler.admission_headroom=2", "a share is within [0, 1]"),
    ("scheduler.reply_ns=-1", "must be a finite number >= 0"),
])
def test_config_values_out_of_range_are_refused_with_the_reason(override, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        cfg.load(cfg.ControllerConfig, "controller", None, [override])


def mlp(dims=("N", 4), extra_input=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    inputs = [x] + ([extra_input] if extra_input else [])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", inputs, [y])).SerializeToString()


def test_onnx_signature_fixes_shapes_and_explains_what_it_cannot():
    sig = onnx_signature(mlp(), {})
    assert sig.inputs[0].shape == (4,) and sig.max_batch == 16
    dyn = mlp(("N", "C"))
    with pytest.raises(BadMessage, match="--input-shape x="):
        onnx_signature(dyn, {})
    assert onnx_signature(dyn, {"x": [4]}).inputs[0].shape == (4,)
    with pytest.raises(BadMessage) as info:
        onnx_signature(mlp(), {"x": [5]})
    assert info.value.status is Status.BAD_INPUT
    with pytest.raises(BadMessage) as info:
        onnx_signature(b"\x08\x07not onnx", {})
    assert info.value.status is Status.BAD_MODEL
    assert onnx_signature(mlp((1, 4)), {}).max_batch == 1
    with pytest.raises(BadMessage, match="fixed at 8"):
        onnx_signature(mlp((8, 4)), {})


@pytest.mark.parametrize("spelling", ["named", "empty", -1, 0])
def test_every_spelling_of_a_dynamic_dimension_is_dynamic(spelling):
    """Exporters write a dynamic dim as a name, as nothing, or as dim_value -1 (Paddle) or 0."""
    model = onnx.load_model_from_string(mlp(("N", "C")))
    for dim in model.graph.input[0].type.tensor_type.shape.dim:
        dim.Clear()
        if spelling == "named":
            dim.dim_param = "D"
        elif spelling != "empty":
            dim.dim_value = spelling
    blob = model.SerializeToString()
    with pytest.raises(BadMessage, match="--input-shape x="):  # the non-batch one too
        onnx_signature(blob, {})
    sig = onnx_signature(blob, {"x": [4]})
    assert sig.inputs[0].shape == (4,) and sig.max_batch == 16  # the batch one: not fixed at 1


def test_request_inputs_are_checked_against_the_signature():
    sig = onnx_signature(mlp(), {})
    ok = Tensor.from_array("x", np.zeros((3, 4), np.float32))
    assert check_inputs(sig, (ok,)) == 3
    for tensors, words in [((), "expected 1"), ((Tensor.from_array("x", np.zeros((3, 4), np.float64)),), "dtype"),
                           ((Tensor.from_array("x", np.zeros((3, 5), np.float32)),), "shape"),
                           ((Tensor.from_array("z", np.zeros((3, 4), np.float32)),), "missing"),
                           ((Tensor.from_array("x", np.zeros((17, 4), np.float32)),), "max batch")]:
        with pytest.raises(BadMessage, match=words) as info:
            check_inputs(sig, tensors)
        assert info.value.status is Status.BAD_INPUT


def test_profiles_parse_and_refuse_nonsense():
    prof = parse_profile(b'{"weights_bytes": 102000000, "load_ms": 8.3, "exec_ms": {"1": 2.7, "8": 9.9}}')
    assert prof.load_ns == 8_300_000 and prof.exec_ns == {1: 2_700_000, 8: 9_900_000}
    assert prof.signature.max_batch == 8
    for blob in (b"nope", b"[]", b'{"weights_bytes": 1, "load_ms": -1, "exec_ms": {"1": 1}}',
                 b'{"weights_bytes": 1, "load_ms": 1, "exec_ms": {"2": 1}}'):
        with pytest.raises(BadMessage) as info:
            parse_profile(blob)
        assert info.value.status is Status.BAD_MODEL


def test_profile_weights_may_be_written_as_a_whole_float_but_not_infinity():
    assert parse_profile(b'{"weights_bytes": 1.02e8, "load_ms": 1, "exec_ms": {"1": 1}}').weights_bytes == 102_000_000
    for bad in (b"1e999", b"NaN", b"1.5"):
        with pytest.raises(BadMessage):
            parse_profile(b'{"weights_bytes": ' + bad + b', "load_ms": 1, "exec_ms": {"1": 1}}')


def test_queue_delay_sees_waiting_across_an_unknown_clock_offset():
    from clockwork.common.clock import QueueDelay

    q = QueueDelay()
    offset = 7_000_000_000  # the peer's clock is far from ours: it cancels out
    assert q.waited_ns(b"a", 1_000, 1_000 + offset + 50) == 0  # first message: nothing known
    assert q.waited_ns(b"a", 2_000, 2_000 + offset + 50) == 0
    assert q.waited_ns(b"a", 3_000, 3_000 + offset + 50 + 30_000) == 30_000  # sat 30 us in a queue
    assert q.waited_ns(b"b", 3_000, 3_000 + 10) == 0  # peers are independent
    assert q.waited_ns(b"a", 3_000, 3_000 + offset + 50 + 20_000) == 20_000  # the same stamp: a queue still
    assert q.waited_ns(b"a", 2_500, 2_500 + offset + 900) == 0  # stamps went backwards: start over


def test_a_peers_time_comes_onto_our_clock_late_by_its_bare_transit_never_early():
    from clockwork.common.clock import QueueDelay

    q = QueueDelay()
    offset = 7_000_000_000  # our clock = the peer's + offset
    assert q.local_ns(b"a", 5_000) is None  # not heard from
    q.waited_ns(b"a", 1_000, 1_000 + offset + 50)  # bare transit 50 ns
    q.waited_ns(b"a", 2_000, 2_000 + offset + 900)  # this one waited
    assert q.local_ns(b"a", 5_000) == 5_000 + offset + 50


def test_queue_delay_forgets_old_minimums():
    from clockwork.common.clock import QueueDelay

    q = QueueDelay(window_ns=1000)
    q.waited_ns(b"a", 1, 1 + 100)
    assert q.waited_ns(b"a", 2, 2 + 500) == 400  # within the window: the 100 is still the floor
    for t in range(600, 3000, 600):  # transit slows to 500 for good: two windows on, 500 is the floor
        last = q.waited_ns(b"a", t, t + 500)
    assert last == 0


def test_a_standing_lag_does_not_become_the_floor():
    """A controller that stays 5 ms behind must keep seeing 5 ms, less at most max_rise_ns per
    window, not 0 after a window or two."""
    from clockwork.common.clock import QueueDelay

    q = QueueDelay(window_ns=1_000_000, max_rise_ns=10_000)
    q.waited_ns(b"a", 1, 1 + 100)
    seen = [q.waited_ns(b"a", t, t + 100 + 5_000_000) for t in range(100_000, 10_000_000, 100_000)]
    assert min(seen) >= 5_000_000 - 10 * 10_000
    assert q.waited_ns(b"a", 10_000_001, 10_000_001 + 100) == 0  # the floor falls back at once
