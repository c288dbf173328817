"""Real exports as users bring them (bench/models.INDEX_MODELS: wheels on the package index),
uploaded by name with the shapes they are served at and answered by the real system, the
onnxruntime worker behind the controller, as onnxruntime called directly answers them."""

import numpy as np
import onnxruntime as ort
import pytest

from clockwork.bench.models import INDEX_MODELS, model_for
from clockwork.bench.procs import WorkerSpec, cluster


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with cluster(tmp_path_factory.mktemp("real-models"), [WorkerSpec("cpu", "onnxruntime")]) as c:
        yield c


@pytest.mark.parametrize("name", sorted(INDEX_MODELS))
def test_an_index_model_serves_what_onnxruntime_computes(system, name):
    try:
        blob, shapes = model_for(name)
    except OSError as exc:
        pytest.skip(f"the package index is out of reach: {exc}")
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (spec,) = session.get_inputs()
    with system.client() as client:
        client.upload(blob, name, input_shapes=shapes)
        for batch in (1, 2):
            x = np.random.default_rng(batch).random((batch, *shapes[spec.name]), dtype=np.float32)
            result = client.infer(name, {spec.name: x}, slo_ms=10_000)
            (expected,) = session.run(None, {spec.name: x})
            (out,) = session.get_outputs()
            assert result.outputs[out.name].shape == expected.shape
            np.testing.assert_allclose(result.outputs[out.name], expected, rtol=1e-4, atol=1e-4)
            assert result.exec_ms > 0


def test_a_model_is_named_or_a_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not checked here")
    assert model_for(str(path)) == (b"not checked here", {})
    with pytest.raises(ValueError, match="yolov8n-320"):
        model_for(str(tmp_path / "missing.onnx"))
