"""Models for demos, benchmarks and tests: generated ONNX graphs, emulated latency profiles, and
real exports that ship inside packages on the index.

The generated ONNX models are built with onnx.helper from seeded random weights, and the
emulated profile carries published-order figures for ResNet-50 on a V100 (the Clockwork paper's
reference model), which is what the emulated runtime pretends to run. `index_model` fetches a
model file out of a wheel on the package index (pip download --no-deps, cached), for testing
with the exports users really bring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clockwork.common.models import signature_of

INDEX_CACHE = Path(os.environ.get("CLOCKWORK_MODEL_CACHE", Path.home() / ".cache" / "clockwork" / "index-models"))

# ONNX IR version and opset: old enough for any onnxruntime >= 1.16 to load.
IR_VERSION = 8
OPSET = 17

# ResNet-50 (batch 1..16) on a V100-class GPU: 102 MB of weights, LOAD 8.3 ms over PCIe.
RESNET50_V100: dict = {
    "weights_bytes": 102_000_000,
    "load_ms": 8.3,
    "exec_ms": {"1": 2.7, "2": 4.1, "4": 5.9, "8": 9.9, "16": 17.3},
}


def mlp_onnx(sizes: Sequence[int] = (64, 256, 256, 10), seed: int = 0, graph_name: str = "mlp") -> bytes:
    """A float32 MLP (Gemm + Relu per hidden layer) with a dynamic batch dimension 'N'.

    Input "x" is [N, sizes[0]], output "y" is [N, sizes[-1]]. Different seeds give different
    weights, hence different bytes: the registry does not see two seeds as one model.
    """
    from onnx import TensorProto, helper, numpy_helper

    if len(sizes) < 2:
        raise ValueError("an MLP needs at least an input and an output size")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(bias, f"b{layer}")]
        last = layer == len(sizes) - 2
        gemm_out = "y" if last else f"h{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"a{layer}"]))
            current = f"a{layer}"
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    return _serialize(graph)


def cnn_onnx(seed: int = 0, channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] = (1, 2, 2)) -> bytes:
    """A small image classifier like the ones users bring: three 3x3 Conv+Relu, then a global
    average pool and a dense layer. Input `input` FP32 [N, 3, 64, 64], output `logits`
    [N, 10]; about 0.6 ms per image on one CPU thread."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev, c_in = [], [], "input", 3
    for i, (c_out, stride) in enumerate(zip(channels, strides)):
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, c_in = f"r{i}", c_out
    dense = (rng.standard_normal((c_in, 10)) / np.sqrt(c_in)).astype(np.float32)
    inits += [numpy_helper.from_array(dense, "dense"), numpy_helper.from_array(np.zeros(10, np.float32), "bias")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "dense", "bias"], ["logits"])]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _serialize(graph)


def matmul_onnx(n: int, seed: int = 0, layers: int = 1) -> bytes:
    """y = x @ W1 @ ... @ W_layers, each W n x n float32: 4 n^2 bytes of weights per layer (a big
    model of any size; many layers are what a real big model has: many tensors, none of them huge).
    Weights lie in [0, 2/n), so that values stay near their input's through any number of layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    names = ["x", *(f"h{i}" for i in range(1, layers)), "y"]
    weights = [numpy_helper.from_array(rng.random((n, n), dtype=np.float32) * np.float32(2 / n), f"w{i}")
               for i in range(layers)]
    nodes = [helper.make_node("MatMul", [names[i], w.name], [names[i + 1]]) for i, w in enumerate(weights)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], weights)
    return _serialize(graph)


def tiny_onnx(width: int = 4) -> bytes:
    """The smallest useful model: y = x + 1 on [N, width] float32 (for the overhead bench)."""
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones(width, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [one],
    )
    return _serialize(graph)


def _serialize(graph) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="clockwork-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def profile_json(profile: dict = RESNET50_V100) -> bytes:
    """A profile as the bytes UPLOAD(format="profile") carries."""
    return json.dumps(profile, sort_keys=True).encode("utf-8")


def write_profile(path: str | Path, profile: dict = RESNET50_V100) -> Path:
    path = Path(path)
    path.write_bytes(profile_json(profile))
    return path


def sample_inputs(fmt: str, blob: bytes, batch: int = 1, seed: int = 0,
                  input_shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Random inputs that fit the model's signature, `batch` samples each: {name: array}."""
    signature = signature_of(fmt, blob, input_shapes or {}, 0)
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in signature.inputs:
        shape = (batch, *spec.shape)
        if np.dtype(spec.dtype).kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            array = rng.integers(0, 2, size=shape).astype(bool)
        else:
            array = rng.integers(0, 10, size=shape).astype(spec.dtype)
        arrays[spec.name] = array
    return arrays


@dataclass(frozen=True)
class IndexModel:
    """A real export that ships inside a wheel on the package index, and the shapes its dynamic
    dimensions are served at (what its user passes to `clockwork upload --input-shape`)."""

    requirement: str  # name==version
    member: str  # the .onnx file's path inside the wheel
    input_shapes: dict[str, list[int]]
    about: str

    def fetch(self) -> bytes:
        return index_model(self.requirement, self.member)


# Models as users bring them, by the names the benchmarks' --model takes.
INDEX_MODELS: dict[str, IndexModel] = {
    "ppocr-cls": IndexModel("rapidocr-onnxruntime==1.4.4",
                            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": [3, 48, 192]},
                            "PaddleOCR's text direction classifier (rapidocr-onnxruntime 1.4.4), 48x192 crops"),
    "yolov8n-320": IndexModel("nudenet==3.4.2", "nudenet/320n.onnx", {"images": [3, 320, 320]},
                              "an Ultralytics YOLOv8n detector at 320x320 (nudenet 3.4.2)"),
}


def model_for(spec: str) -> tuple[bytes, dict[str, list[int]]]:
    """A benchmark's `--model`: one of INDEX_MODELS by name (fetched from the index once, with
    the shapes it is served at), else an ONNX file's bytes and no shapes. ValueError when it is
    neither; OSError when the index cannot be reached."""
    named = INDEX_MODELS.get(spec)
    if named is not None:
        return named.fetch(), {name: list(dims) for name, dims in named.input_shapes.items()}
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec!r} is neither an ONNX file nor a model the index ships "
                         f"({', '.join(sorted(INDEX_MODELS))})")
    return path.read_bytes(), {}


def index_model(requirement: str, member: str, cache: Path = INDEX_CACHE) -> bytes:
    """The bytes of `member` inside the wheel of `requirement` (name==version), downloaded once
    with pip (no dependencies) into `cache`. Raises OSError when the index cannot be reached."""
    name, version = requirement.split("==")
    target = cache / requirement / member
    if not target.exists():
        wheels = cache / "wheels"
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "-d", str(wheels), requirement], capture_output=True, text=True, timeout=300)
        found = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if proc.returncode or not found:
            raise OSError(f"pip download {requirement} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(found[0]) as wheel:
            target.write_bytes(wheel.read(member))
    return target.read_bytes()
