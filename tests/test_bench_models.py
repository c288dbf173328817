"""Generated models are valid for the system's own checks and for onnxruntime."""

import json

import numpy as np
import onnxruntime as ort

from clockwork.bench import models
from clockwork.common.models import onnx_signature, parse_profile


def test_mlp_has_dynamic_batch_and_runs():
    blob = models.mlp_onnx((64, 256, 256, 10), seed=3)
    sig = onnx_signature(blob, {}, 0)
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("x", "float32", (64,))]
    assert sig.outputs[0].shape == (10,) and sig.max_batch == 16
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        (y,) = session.run(None, {"x": np.ones((batch, 64), np.float32)})
        assert y.shape == (batch, 10)
    assert models.mlp_onnx(seed=3) == blob and models.mlp_onnx(seed=4) != blob


def test_tiny_adds_one():
    blob = models.tiny_onnx(4)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((2, 4), np.float32)})
    assert np.array_equal(y, np.ones((2, 4), np.float32))


def test_resnet_profile_parses(tmp_path):
    path = models.write_profile(tmp_path / "r50.json")
    assert json.loads(path.read_text())["exec_ms"]["16"] == 17.3
    prof = parse_profile(path.read_bytes())
    assert prof.weights_bytes == 102_000_000 and prof.load_ns == 8_300_000
    assert sorted(prof.exec_ns) == [1, 2, 4, 8, 16] and prof.signature.max_batch == 16


def test_sample_inputs_fit_the_signature():
    arrays = models.sample_inputs("onnx", models.mlp_onnx(), batch=3)
    assert list(arrays) == ["x"] and arrays["x"].shape == (3, 64) and arrays["x"].dtype == np.float32
    emulated = models.sample_inputs("profile", models.profile_json())
    assert emulated["data"].shape == (1, 16)
