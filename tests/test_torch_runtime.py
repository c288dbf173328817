"""The torch runtime: ONNX through onnx2torch, checked against onnxruntime on the same inputs.

Everything without CUDA runs here on CPU torch (`[worker.torch] device = "cpu"`): conversion,
checks, LOAD/INFER/UNLOAD, profiling and a real worker process behind a real controller. The CUDA
parts (graph capture, pinned staging, CUDA events, measured device memory) run only where a GPU
is visible, as they do in `clockwork-bench gpu-check` on a lent GPU; elsewhere they are skipped
and say so.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed (pip install '.[torch]')")

from clockwork.bench.models import cnn_onnx, mlp_onnx, sample_inputs  # noqa: E402
from clockwork.bench.procs import WorkerSpec, cluster  # noqa: E402
from clockwork.client import Client  # noqa: E402
from clockwork.common.config import TorchConfig, WorkerConfig  # noqa: E402
from clockwork.common.models import onnx_signature  # noqa: E402
from clockwork.common.status import Status  # noqa: E402
from clockwork.worker.runtimes.base import RuntimeFailure, RuntimeUnavailable  # noqa: E402
from clockwork.worker.runtimes.torchrt import TorchRuntime  # noqa: E402

# torchvision's export goes through the TorchScript exporter, which torch now marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA parts of the torch runtime: no CUDA GPU visible "
                                "(they run in clockwork-bench gpu-check on a lent GPU)")


def runtime(device: str) -> TorchRuntime:
    return TorchRuntime(WorkerConfig(runtime="torch", torch=TorchConfig(device=device)))


def resnet18_onnx() -> bytes:
    """torchvision's ResNet-18 with random weights, exported with a dynamic batch: a real topology."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buf, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


def onnxruntime_outputs(blob: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def serve_and_compare(rt: TorchRuntime, blob: bytes, batches: tuple[int, ...], max_batch: int = 8,
                      rtol: float = 1e-3) -> None:
    signature = onnx_signature(blob, {}, max_batch)
    model = rt.prepare("m", "digest", "onnx", blob, signature)
    handle = rt.load(0, model)
    try:
        for batch in batches:
            inputs = sample_inputs("onnx", blob, batch=batch, seed=batch)
            outputs, _ = rt.execute(0, handle, inputs)
            for name, expected in onnxruntime_outputs(blob, inputs).items():
                assert outputs[name].dtype == expected.dtype and outputs[name].shape == expected.shape
                scale = max(1.0, float(np.max(np.abs(expected))))
                np.testing.assert_allclose(outputs[name], expected, rtol=rtol, atol=rtol * 0.1 * scale)
    finally:
        rt.unload(0, handle)


# ------------------------------------------------------------------------------ CPU torch


@pytest.mark.parametrize("name, blob", [("cnn", cnn_onnx()), ("mlp", mlp_onnx())])
def test_generated_models_give_onnxruntime_outputs_on_cpu(name, blob):
    serve_and_compare(runtime("cpu"), blob, batches=(1, 4))


def test_a_torchvision_resnet_export_gives_onnxruntime_outputs_on_cpu():
    serve_and_compare(runtime("cpu"), resnet18_onnx(), batches=(2,))


def test_profile_times_each_batch_size_and_leaves_weights_bytes_to_prepare_on_cpu():
    rt = runtime("cpu")
    blob = cnn_onnx()
    model = rt.prepare("cnn", "d", "onnx", blob, onnx_signature(blob, {}, 4))
    profile = rt.profile(0, model, [1, 2, 4], runs=3)
    assert set(profile.exec_ns) == {1, 2, 4} and all(ns > 0 for ns in profile.exec_ns.values())
    assert profile.weights_bytes is None  # nothing to measure on a CPU device
    params = sum(t.numel() * t.element_size() for t in model.host.weights.values())
    assert model.weights_bytes > params  # the weights plus the I/O at max batch


def test_a_model_onnx2torch_cannot_convert_is_bad_model_naming_the_reason():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    with pytest.raises(RuntimeFailure) as info:
        runtime("cpu").prepare("hm", "d", "onnx", blob, onnx_signature(blob, {}, 4))
    assert info.value.status is Status.BAD_MODEL
    assert "onnx2torch cannot convert" in info.value.detail and "Hardmax" in info.value.detail


def test_other_formats_are_refused():
    with pytest.raises(RuntimeFailure) as info:
        runtime("cpu").prepare("p", "d", "profile", b"{}", onnx_signature(mlp_onnx(), {}, 4))
    assert info.value.status is Status.BAD_MODEL


@pytest.mark.skipif(CUDA, reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_unavailable_and_says_how_to_run_on_cpu():
    with pytest.raises(RuntimeUnavailable, match='device = "cpu"'):
        runtime("cuda")


def test_a_worker_process_on_the_torch_runtime_serves_behind_the_controller(tmp_path):
    blob = cnn_onnx()
    spec = WorkerSpec("torch", "torch", extra_args=("--set", 'torch.device="cpu"'))
    with cluster(tmp_path, [spec]) as c:
        with Client(c.client_endpoint, timeout_s=60) as client:
            client.upload(blob, "cnn")
            inputs = sample_inputs("onnx", blob, batch=2, seed=3)
            result = client.infer("cnn", inputs, slo_ms=2000)
    np.testing.assert_allclose(result.outputs["logits"], onnxruntime_outputs(blob, inputs)["logits"],
                               rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------ CUDA


@contextlib.contextmanager
def as_lane(rt: TorchRuntime, lane: str) -> Iterator[None]:
    """This thread acts as device 0's `lane` for the block, as the worker's lane threads do."""
    rt.lane_started(0, lane)
    try:
        yield
    finally:
        rt.lane_stopped(0, lane)


@needs_cuda
def test_cuda_graphs_give_onnxruntime_outputs_at_every_batch_size():
    rt = runtime("cuda")
    with as_lane(rt, "exec"):
        # cuDNN may run float32 convolutions in TF32 (10 mantissa bits), as PyTorch does by default
        serve_and_compare(rt, cnn_onnx(), batches=(1, 2, 4, 8), rtol=2e-2)


@needs_cuda
def test_a_load_captures_a_graph_per_batch_size_and_measures_its_device_memory():
    rt = runtime("cuda")
    blob = resnet18_onnx()
    model = rt.prepare("r18", "d", "onnx", blob, onnx_signature(blob, {}, 16))
    params = sum(t.numel() * t.element_size() for t in model.host.weights.values())
    assert all(t.is_pinned() for t in model.host.weights.values())
    profile = rt.profile(0, model, [1, 4, 16], runs=5)
    assert params < profile.weights_bytes < params + 512 * 2**20
    after_unload = []
    with as_lane(rt, "load"):
        for _ in range(3):
            handle = rt.load(0, model)
            assert sorted(handle.graphs) == [1, 2, 4, 8, 16] and not handle.graph_error
            assert all(g.graph is not None for g in handle.graphs.values())
            outputs, gpu_ns = rt.execute(0, handle, sample_inputs("onnx", blob, batch=4))
            assert outputs["logits"].shape == (4, 1000) and gpu_ns > 0
            rt.unload(0, handle)
            after_unload.append((torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)))
    # Each UNLOAD frees at once every tensor its LOAD made, and gives the memory back. (Before the
    # tensors were released explicitly, torch.fx's reference cycles kept them until a GC pass.)
    assert after_unload[2] == after_unload[1]


@needs_cuda
def test_gpu_actions_off_the_lanes_are_refused():
    rt = runtime("cuda")
    blob = mlp_onnx()
    model = rt.prepare("mlp", "d", "onnx", blob, onnx_signature(blob, {}, 4))
    with pytest.raises(RuntimeFailure, match="off the device's lanes"):
        rt.load(0, model)
