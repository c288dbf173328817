"""The demo's pure parts: arguments, models, rates, and which replies count as bugs."""

import numpy as np
import pytest

from clockwork.bench import demo


def test_defaults_and_models():
    args = demo.parse_args([])
    assert (args.duration, args.rate, args.emulated_devices, args.models, args.seed, args.out) == \
        (30.0, 500.0, 4, 60, 1, "out")
    small = demo.parse_args(["--models", "3", "--onnx-models", "1", "--rate", "100"])
    built = demo.build_models(small)
    assert [m.name for m in built] == ["mlp-00", "resnet50-00", "resnet50-01", "resnet50-02"]
    assert [m.group for m in built] == ["onnx", "emulated", "emulated", "emulated"]
    assert built[0].inputs["x"].shape == (1, 64) and built[1].inputs["data"].shape == (1, 16)
    rates = demo.offered_rates(small, built)
    assert rates.sum() == pytest.approx(100) and rates[0] == pytest.approx(10)
    assert np.all(np.diff(rates[1:]) < 0)  # Zipf over the emulated copies


def test_rates_without_one_kind():
    args = demo.parse_args(["--models", "0", "--onnx-models", "2", "--rate", "50"])
    assert demo.offered_rates(args, demo.build_models(args)).tolist() == [25.0, 25.0]
    args = demo.parse_args(["--onnx-models", "0", "--models", "2", "--rate", "30", "--zipf", "0"])
    assert demo.offered_rates(args, demo.build_models(args)).tolist() == [15.0, 15.0]


def test_bad_arguments_exit():
    for argv in (["--duration", "0"], ["--models", "0", "--onnx-models", "0"], ["--onnx-share", "2"]):
        with pytest.raises(SystemExit):
            demo.parse_args(argv)


def test_unexpected_replies_are_caller_and_system_faults():
    by_status = {"OK": 10, "QUEUE_FULL": 2, "WOULD_MISS_DEADLINE": 1, "BAD_INPUT": 3, "WORKER_LOST": 1,
                 "SEND_FAILED": 1}
    assert demo.unexpected_replies(by_status) == {"BAD_INPUT": 3, "WORKER_LOST": 1, "SEND_FAILED": 1}
