"""The tensorrt runtime's glue, tested against named fakes of TensorRT and PyCUDA.

tests/fake_tensorrt.py and tests/fake_pycuda.py stand in for the real libraries (which cannot be
installed here); they follow the real API's names and semantics, check the threading contract
(contexts are per-thread), and run the real math through onnxruntime, so outputs are compared
with onnxruntime directly. The tests marked `gpu` run the real TensorRT and are skipped where
tensorrt or pycuda cannot be imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import structlog

from clockwork.bench import trt_check
from clockwork.bench.device_lanes import DeviceLanes
from clockwork.bench.models import mlp_onnx
from clockwork.common.config import MIB, TensorRTConfig, WorkerConfig
from clockwork.common.models import onnx_signature, pages_for
from clockwork.common.status import Status
from tests.fake_pycuda import FakeCudaDriver, FakeGpu, FakeNvml
from tests.fake_tensorrt import FakeTensorRT
from clockwork.worker import runtimes
from clockwork.worker.runtimes.base import RuntimeFailure, RuntimeUnavailable
from clockwork.worker.runtimes.engine_build import profile_shapes
from clockwork.worker.runtimes.engine_cache import PlanKey
from clockwork.worker.runtimes.tensorrt import TensorRTRuntime
from clockwork.worker.runtimes.trt_libs import GpuLibraries, import_gpu_libraries
from clockwork.worker.store import digest_of

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
LOG = structlog.get_logger()
GIB = 1024 * MIB
H200 = dict(name="NVIDIA H200", compute_capability=(9, 0), total_bytes=8 * GIB, pci_bus_id="0000:17:00.0")
A100 = dict(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0), total_bytes=8 * GIB, pci_bus_id="0000:65:00.0")


# ------------------------------------------------------------------------------ factories


@dataclass
class Rig:
    runtime: TensorRTRuntime
    trt: FakeTensorRT
    cuda: FakeCudaDriver
    nvml: FakeNvml | None
    lanes: list[DeviceLanes]

    def on_load(self, fn, device_id: int = 0):
        return self.lanes[device_id].call(self.lanes[device_id].load, fn)

    def on_exec(self, fn, device_id: int = 0):
        return self.lanes[device_id].call(self.lanes[device_id].exec, fn)

    def load(self, model, device_id: int = 0):
        return self.on_load(lambda: self.runtime.load(device_id, model), device_id)

    def unload(self, handle, device_id: int = 0) -> None:
        self.on_load(lambda: self.runtime.unload(device_id, handle), device_id)

    def execute(self, handle, inputs, device_id: int = 0):
        return self.on_exec(lambda: self.runtime.execute(device_id, handle, inputs), device_id)

    def stop(self) -> None:
        for lanes in self.lanes:
            lanes.stop()
        self.lanes = []
        self.runtime.close()


def make_rig(tmp_path: Path, gpus: list[dict] | None = None, version: str = "10.3.0", nvml: bool = True,
             settings: TensorRTConfig | None = None, lanes: bool = True, cuda: FakeCudaDriver | None = None,
             **config) -> Rig:
    cuda = cuda or FakeCudaDriver([FakeGpu(**g) for g in (gpus or [H200])])
    trt = FakeTensorRT(cuda, version=version)
    fake_nvml = FakeNvml({g.pci_bus_id: 1980 for g in cuda.gpus}) if nvml else None
    config = {"runtime": "tensorrt", "devices": len(cuda.gpus), "engine_cache_dir": str(tmp_path / "engines"), **config}
    if settings is not None:
        config = {**config, "tensorrt": settings}
    runtime = TensorRTRuntime(WorkerConfig(**config), gpu=GpuLibraries(trt, cuda, fake_nvml, trt.recipe), log=LOG)
    rig = Rig(runtime, trt, cuda, fake_nvml, [])
    if lanes:
        rig.lanes = [DeviceLanes(runtime, d.device_id, LOG) for d in runtime.devices()]
    return rig


@pytest.fixture
def rig(tmp_path):
    rig = make_rig(tmp_path)
    yield rig
    rig.stop()


def with_metadata(blob: bytes, **props: str) -> bytes:
    model = onnx.load_model_from_string(blob)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key.replace("__", "."), value
    return model.SerializeToString()


def mlp(seed: int = 0, device_memory_bytes: int | None = None) -> bytes:
    blob = mlp_onnx(sizes=(8, 16, 4), seed=seed)
    if device_memory_bytes is not None:
        blob = with_metadata(blob, fake_trt__device_memory_bytes=str(device_memory_bytes))
    return blob


def add_one(dtype: str, batch: object = "N") -> bytes:
    """y = x + 1 over [batch, 3] of `dtype` (batch 1 makes a fixed-batch model)."""
    from onnx import helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add_one",
        [helper.make_tensor_value_info("x", elem, [batch, 3])], [helper.make_tensor_value_info("y", elem, [batch, 3])],
        [numpy_helper.from_array(np.ones(3, dtype=dtype), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def prepare(runtime: TensorRTRuntime, blob: bytes, max_batch: int = 0, model_id: str = "m"):
    signature = onnx_signature(blob, {}, max_batch)
    return runtime.prepare(model_id, digest_of("onnx", hashlib.sha256(blob).hexdigest(), {}, max_batch), "onnx", blob,
                           signature)


def reference(blob: bytes, inputs: dict) -> dict:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def x_batch(batch: int, width: int = 8, seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)}


def failure(fn) -> RuntimeFailure:
    with pytest.raises(RuntimeFailure) as info:
        fn()
    return info.value


# ------------------------------------------------------------------------------ availability


def test_importing_the_module_loads_no_gpu_library():
    code = ("import sys, clockwork.worker.runtimes, clockwork.worker.runtimes.tensorrt, clockwork.bench.trt_check\n"
            "loaded = [m for m in ('tensorrt', 'pycuda', 'pycuda.driver', 'pynvml') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_missing_libraries_are_named_with_the_install_command():
    def without(*absent):
        def import_module(name):
            if name in absent:
                raise ImportError(f"No module named {name!r}")
            return object()
        return import_module

    with pytest.raises(RuntimeUnavailable) as info:
        import_gpu_libraries(without("tensorrt"))
    assert "tensorrt" in str(info.value) and "pycuda" not in str(info.value)
    assert "pip install '.[gpu]'" in str(info.value)
    with pytest.raises(RuntimeUnavailable, match="pycuda"):
        import_gpu_libraries(without("pycuda.driver"))
    assert import_gpu_libraries(without("pynvml")).nvml is None


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_worker_without_tensorrt_exits_2_with_one_line():
    with pytest.raises(RuntimeUnavailable, match=r"pip install '\.\[gpu\]'"):
        runtimes.create("tensorrt", WorkerConfig(runtime="tensorrt"))
    proc = subprocess.run([sys.executable, "-m", "clockwork.worker.main", "--runtime", "tensorrt"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "tensorrt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cuda, match", [
    (FakeCudaDriver([]), "no NVIDIA GPU"),
    (FakeCudaDriver([FakeGpu()], init_error="no CUDA-capable device is detected"), "cannot use CUDA"),
])
def test_no_usable_gpu_is_unavailable(tmp_path, cuda, match):
    with pytest.raises(RuntimeUnavailable, match=match):
        make_rig(tmp_path, cuda=cuda, devices=1, lanes=False)


def test_a_gpu_held_by_another_process_is_unavailable(tmp_path):
    cuda = FakeCudaDriver([FakeGpu(**H200)])

    def busy() -> tuple[int, int]:
        raise cuda.Error("cuMemGetInfo failed: all CUDA-capable devices are busy or unavailable")

    cuda.mem_get_info = busy
    with pytest.raises(RuntimeUnavailable, match="busy"):
        make_rig(tmp_path, cuda=cuda, lanes=False)
    assert cuda.retained == [0] and not cuda.has_context()


def test_more_devices_than_gpus_and_old_tensorrt_are_unavailable(tmp_path):
    with pytest.raises(RuntimeUnavailable, match="--devices 2"):
        make_rig(tmp_path, devices=2, lanes=False)
    with pytest.raises(RuntimeUnavailable, match="10.1"):
        make_rig(tmp_path, version="8.6.1", lanes=False)


def test_the_fake_lacks_what_tensorrt_11_removed(rig):
    model = prepare(rig.runtime, mlp())
    handle = rig.load(model)
    assert not hasattr(handle.engine, "device_memory_size")
    assert not hasattr(handle.engine, "create_execution_context_without_device_memory")
    assert not hasattr(rig.trt, "NetworkDefinitionCreationFlag") and not hasattr(rig.trt, "BuilderFlag")


# ------------------------------------------------------------------------------ devices and memory


def test_devices_size_model_memory_from_free_gpu_memory(tmp_path):
    rig = make_rig(tmp_path, lanes=False)  # device_memory_bytes left at 0: the runtime sizes it
    try:
        (device,) = rig.runtime.devices()
        free = 8 * GIB - rig.cuda.gpus[0].baseline_used_bytes
        workspace, reserve = 1 * GIB, 512 * MIB  # min(1 GiB, 8 GiB / 8); max(512 MiB, 2% of 8 GiB)
        assert device.kind == "NVIDIA H200"
        assert device.memory_bytes == free - workspace - reserve
    finally:
        rig.stop()


@pytest.mark.parametrize("configured, expected", [(0, None), (2 * GIB, 2 * GIB), (100 * GIB, None)])
def test_configured_device_memory_is_honoured_up_to_what_the_gpu_has(tmp_path, configured, expected):
    rig = make_rig(tmp_path, lanes=False, device_memory_bytes=configured)
    try:
        available = 8 * GIB - rig.cuda.gpus[0].baseline_used_bytes - GIB - 512 * MIB
        assert rig.runtime.devices()[0].memory_bytes == (expected or available)
    finally:
        rig.stop()


def test_weights_bytes_are_the_plan_plus_io_buffers_at_max_batch(rig):
    model = prepare(rig.runtime, mlp(), max_batch=16)
    engine = model.extra["engine"]["NVIDIA H200 sm90"]
    io_bytes = 16 * 8 * 4 + 16 * 4 * 4  # x [16, 8] and y [16, 4] float32
    assert model.weights_bytes == engine["plan_bytes"] + io_bytes
    assert pages_for(model.weights_bytes, 16 * MIB) == 1
    before = rig.cuda.live_device_bytes()
    handle = rig.load(model)
    loaded = rig.cuda.live_device_bytes() - before - rig.runtime.workspace_bytes(0)
    assert loaded == model.weights_bytes  # the accounting matches what the LOAD took
    rig.unload(handle)


# ------------------------------------------------------------------------------ building


def test_profile_shapes_cover_batch_one_to_max():
    assert profile_shapes((3, 224, 224), 16) == ((1, 3, 224, 224), (16, 3, 224, 224), (16, 3, 224, 224))
    assert profile_shapes((8,), 16, opt_batch=4) == ((1, 8), (4, 8), (16, 8))
    assert profile_shapes((8,), 2, opt_batch=4) == ((1, 8), (2, 8), (2, 8))


@pytest.mark.parametrize("blob, max_batch, expected", [
    (mlp(), 0, ((1, 8), (16, 8), (16, 8))),  # the default max batch (16)
    (mlp(), 8, ((1, 8), (8, 8), (8, 8))),
    (add_one("float32", batch=1), 0, ((1, 3), (1, 3), (1, 3))),  # batch fixed at 1 in the model
])
def test_build_uses_one_optimization_profile_over_the_batch_range(rig, blob, max_batch, expected):
    prepare(rig.runtime, blob, max_batch)
    (build,) = rig.trt.builds
    assert build.profiles == [{"x": expected}]
    assert build.workspace_limit == 512 * MIB  # half the 1 GiB workspace: the rest is for activations


def test_opt_batch_setting_tunes_for_that_batch(tmp_path):
    rig = make_rig(tmp_path, settings=TensorRTConfig(opt_batch=4), lanes=False)
    try:
        prepare(rig.runtime, mlp())
        assert rig.trt.builds[0].profiles == [{"x": ((1, 8), (4, 8), (16, 8))}]
    finally:
        rig.stop()


# ------------------------------------------------------------------------------ the plan cache


def test_a_cached_plan_skips_the_build_across_restarts(tmp_path):
    first = make_rig(tmp_path, lanes=False)
    model = prepare(first.runtime, mlp())
    assert len(first.trt.builds) == 1 and model.extra["engine"]["NVIDIA H200 sm90"]["source"] == "built"
    path = Path(first.runtime.plan_path(0, model.digest, model.signature))
    assert path.is_file() and path.with_suffix(".json").is_file()
    first.stop()

    second = make_rig(tmp_path)  # a new process: fresh TensorRT, same cache directory
    try:
        model = prepare(second.runtime, mlp())
        assert second.trt.builds == [] and model.extra["engine"]["NVIDIA H200 sm90"]["source"] == "cache"
        handle = second.load(model)
        outputs, _ = second.execute(handle, x_batch(5))
        np.testing.assert_allclose(outputs["y"], reference(mlp(), x_batch(5))["y"], rtol=1e-6)
    finally:
        second.stop()


def test_plan_cache_key_covers_model_trt_version_gpu_name_and_compute_capability():
    base = PlanKey("d" * 64, "10.3.0", "NVIDIA H200", (9, 0), 16, 16, 512 * MIB)
    variants = [PlanKey("e" * 64, "10.3.0", "NVIDIA H200", (9, 0), 16, 16, 512 * MIB),
                PlanKey("d" * 64, "10.4.0", "NVIDIA H200", (9, 0), 16, 16, 512 * MIB),
                PlanKey("d" * 64, "10.3.0", "NVIDIA H100", (9, 0), 16, 16, 512 * MIB),
                PlanKey("d" * 64, "10.3.0", "NVIDIA H200", (9, 1), 16, 16, 512 * MIB),
                PlanKey("d" * 64, "10.3.0", "NVIDIA H200", (9, 0), 8, 8, 512 * MIB)]
    assert len({k.hexdigest() for k in [base, *variants]}) == 6


@pytest.mark.parametrize("change", [dict(version="10.4.0"), dict(gpus=[{**H200, "compute_capability": (9, 1)}]),
                                    dict(gpus=[{**H200, "name": "NVIDIA H100"}])])
def test_a_different_tensorrt_or_gpu_misses_the_cache(tmp_path, change):
    first = make_rig(tmp_path, lanes=False)
    prepare(first.runtime, mlp())
    first.stop()
    other = make_rig(tmp_path, lanes=False, **change)
    try:
        prepare(other.runtime, mlp())
        assert len(other.trt.builds) == 1
    finally:
        other.stop()


def test_a_different_model_misses_the_cache(rig):
    prepare(rig.runtime, mlp(seed=0))
    prepare(rig.runtime, mlp(seed=1))
    prepare(rig.runtime, mlp(seed=0), max_batch=8)  # another profile: another digest
    prepare(rig.runtime, mlp(seed=0))
    assert len(rig.trt.builds) == 3


def test_a_corrupt_cached_plan_is_rebuilt(rig):
    model = prepare(rig.runtime, mlp())
    path = Path(rig.runtime.plan_path(0, model.digest, model.signature))
    path.write_bytes(b"not a plan")
    again = prepare(rig.runtime, mlp())
    assert again.extra["engine"]["NVIDIA H200 sm90"]["source"] == "built" and len(rig.trt.builds) == 2
    assert path.read_bytes().startswith(b"FAKETRT1")


# ------------------------------------------------------------------------------ INFER


def test_outputs_match_onnxruntime_at_every_batch_size(rig):
    blob = mlp()
    handle = rig.load(prepare(rig.runtime, blob))
    for batch in (1, 2, 3, 8, 16):
        inputs = x_batch(batch, seed=batch)
        outputs, gpu_ns = rig.execute(handle, inputs)
        assert outputs["y"].shape == (batch, 4) and outputs["y"].dtype == np.float32
        np.testing.assert_allclose(outputs["y"], reference(blob, inputs)["y"], rtol=1e-6)
        timing = rig.runtime.last_timing(0)
        assert gpu_ns == timing.total_ns and timing.exec_ns == rig.trt.exec_ns  # the fake kernel's time
        assert timing.copy_in_ns > 0 and timing.copy_out_ns > 0


def test_outputs_are_copies_owned_by_the_caller(rig):
    handle = rig.load(prepare(rig.runtime, mlp()))
    first, _ = rig.execute(handle, x_batch(4, seed=1))
    kept = first["y"].copy()
    rig.execute(handle, x_batch(4, seed=2))  # reuses the pinned staging buffers
    np.testing.assert_array_equal(first["y"], kept)


def test_integer_tensors_tensorrt_narrows_are_cast_back(rig):
    rig.trt.narrow_int64 = True  # report int64 tensors as INT32, as TensorRT may
    blob = add_one("int64")
    handle = rig.load(prepare(rig.runtime, blob))
    x = np.arange(12, dtype=np.int64).reshape(4, 3)
    outputs, _ = rig.execute(handle, {"x": x})
    assert outputs["y"].dtype == np.int64
    np.testing.assert_array_equal(outputs["y"], x + 1)


@pytest.mark.parametrize("inputs", [
    {"x": np.zeros((2, 8), dtype=np.float64)},
    {"x": np.zeros((2, 9), dtype=np.float32)},
    {"x": np.zeros((17, 8), dtype=np.float32)},
    {"x": np.zeros((0, 8), dtype=np.float32)},
    {"other": np.zeros((2, 8), dtype=np.float32)},
])
def test_inputs_that_do_not_fit_the_engine_are_bad_input(rig, inputs):
    handle = rig.load(prepare(rig.runtime, mlp()))
    assert failure(lambda: rig.execute(handle, inputs)).status is Status.BAD_INPUT


# ------------------------------------------------------------------------------ the workspace


def test_one_workspace_per_gpu_sized_to_the_largest_engine_and_grown_by_loads(rig):
    small, big = mlp(seed=1, device_memory_bytes=2 * MIB), mlp(seed=2, device_memory_bytes=6 * MIB)
    a = rig.load(prepare(rig.runtime, small, model_id="a"))
    assert rig.runtime.workspace_bytes(0) == 2 * MIB
    rig.execute(a, x_batch(2))
    first_ptr = a.context.device_memory[0]

    b = rig.load(prepare(rig.runtime, big, model_id="b"))
    assert rig.runtime.workspace_bytes(0) == 6 * MIB
    assert first_ptr not in rig.cuda.allocations  # the old buffer was freed when the new one came in
    for handle, blob in ((a, small), (b, big), (a, small)):
        outputs, _ = rig.execute(handle, x_batch(3))  # a is re-pointed at the new buffer
        np.testing.assert_allclose(outputs["y"], reference(blob, x_batch(3))["y"], rtol=1e-6)
    assert a.context.device_memory == b.context.device_memory == (a.context.device_memory[0], 6 * MIB)

    rig.unload(b)
    c = rig.load(prepare(rig.runtime, mlp(seed=3, device_memory_bytes=1 * MIB), model_id="c"))
    assert rig.runtime.workspace_bytes(0) == 6 * MIB  # never shrinks: its budget is reserved anyway
    rig.execute(c, x_batch(1))


def test_an_engine_needing_more_than_the_workspace_budget_is_too_large(tmp_path):
    rig = make_rig(tmp_path, settings=TensorRTConfig(workspace_bytes=4 * MIB), lanes=False)
    try:
        error = failure(lambda: prepare(rig.runtime, mlp(device_memory_bytes=8 * MIB)))
        assert error.status is Status.TOO_LARGE and "smaller max batch" in error.detail
    finally:
        rig.stop()


def test_an_infer_and_a_growing_load_never_share_the_workspace(rig):
    """LOAD lane loads ever bigger engines while the EXEC lane runs: outputs stay right."""
    blob = mlp(seed=9, device_memory_bytes=1 * MIB)
    handle = rig.load(prepare(rig.runtime, blob, model_id="runner"))
    expected = reference(blob, x_batch(4))["y"]
    growers = [prepare(rig.runtime, mlp(seed=10 + i, device_memory_bytes=(2 + i) * MIB), model_id=f"g{i}")
               for i in range(6)]
    errors = []

    def run_many():
        for _ in range(40):
            out, _ = rig.runtime.execute(0, handle, x_batch(4))
            if not np.allclose(out["y"], expected, rtol=1e-6):
                errors.append("wrong output")

    def load_all():
        for model in growers:
            rig.runtime.unload(0, rig.runtime.load(0, model))

    results = []
    threads = [threading.Thread(target=lambda: results.append(rig.on_exec(run_many))),
               threading.Thread(target=lambda: results.append(rig.on_load(load_all)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert rig.runtime.workspace_bytes(0) == 7 * MIB


# ------------------------------------------------------------------------------ threads and contexts


def test_contexts_are_pushed_on_lane_threads_only_and_popped_when_they_stop(tmp_path):
    rig = make_rig(tmp_path)
    model = prepare(rig.runtime, mlp())
    assert not rig.cuda.has_context()  # construction and PREPARE left nothing current here
    handle = rig.load(model)
    rig.execute(handle, x_batch(1))
    rig.unload(handle)
    rig.lanes[0].stop()
    log = rig.cuda.push_log
    lane_threads = {name for name, _, _ in log if name.startswith("dev0-")}
    assert lane_threads == {"dev0-load", "dev0-exec"}
    for name in lane_threads | {"MainThread"}:
        ops = [op for thread, _, op in log if thread == name]
        assert ops.count("push") == ops.count("pop") and ops[0] == "push"  # balanced, push first
    rig.lanes = []
    rig.runtime.close()
    assert rig.cuda.retained == [0] and rig.cuda.live_device_bytes() == 0 and rig.cuda.pinned_bytes == 0
    assert rig.trt.engines_destroyed_without_context == 0


def test_device_work_off_its_lanes_is_refused(tmp_path):
    rig = make_rig(tmp_path, gpus=[H200, {**H200, "pci_bus_id": "0000:18:00.0"}])
    try:
        model = prepare(rig.runtime, mlp())
        error = failure(lambda: rig.runtime.load(0, model))  # the main thread is no lane
        assert error.status is Status.RUNTIME_ERROR and "lane_started" in error.detail
        error = failure(lambda: rig.on_load(lambda: rig.runtime.load(1, model), device_id=0))
        assert "device 0" in error.detail and "device 1" in error.detail
    finally:
        rig.stop()


def test_each_gpu_kind_gets_its_own_plan(tmp_path):
    rig = make_rig(tmp_path, gpus=[H200, A100])
    try:
        blob = mlp()
        model = prepare(rig.runtime, blob)
        assert sorted(b.device_index for b in rig.trt.builds) == [0, 1]
        assert set(model.extra["engine"]) == {"NVIDIA H200 sm90", "NVIDIA A100-SXM4-80GB sm80"}
        for device_id in (0, 1):
            handle = rig.load(model, device_id)
            outputs, _ = rig.execute(handle, x_batch(2), device_id)
            np.testing.assert_allclose(outputs["y"], reference(blob, x_batch(2))["y"], rtol=1e-6)
        assert [d.kind for d in rig.runtime.devices()] == ["NVIDIA H200", "NVIDIA A100-SXM4-80GB"]
    finally:
        rig.stop()


def test_gpus_of_one_kind_share_one_plan(tmp_path):
    rig = make_rig(tmp_path, gpus=[H200, {**H200, "pci_bus_id": "0000:18:00.0"}])
    try:
        model = prepare(rig.runtime, mlp())
        assert len(rig.trt.builds) == 1
        rig.execute(rig.load(model, 1), x_batch(2), 1)  # the plan pinned under device 0 serves device 1
    finally:
        rig.stop()


# ------------------------------------------------------------------------------ errors


def test_only_onnx_is_served(rig):
    error = failure(lambda: rig.runtime.prepare("m", "d", "profile", b"{}", onnx_signature(mlp(), {})))
    assert error.status is Status.BAD_MODEL and "ONNX" in error.detail


def test_an_op_tensorrt_cannot_import_is_a_bad_model(rig):
    rig.trt.unsupported_ops = {"Relu"}
    error = failure(lambda: prepare(rig.runtime, mlp()))
    assert error.status is Status.BAD_MODEL and "No importer registered for op: Relu" in error.detail


def test_a_type_tensorrt_does_not_support_is_a_bad_model(rig):
    error = failure(lambda: prepare(rig.runtime, add_one("float64")))
    assert error.status is Status.BAD_MODEL and "unsupported data type" in error.detail


@pytest.mark.parametrize("message, status", [
    ("Error Code 2: OutOfMemory (Requested amount of GPU memory (1 bytes) could not be allocated.)",
     Status.INSUFFICIENT_MEMORY),
    ("Error Code 10: Internal Error (Could not find any implementation for node /Gemm.)", Status.BAD_MODEL),
])
def test_build_failures_are_mapped_from_the_logged_reason(rig, message, status):
    rig.trt.fail_next_build = message
    error = failure(lambda: prepare(rig.runtime, mlp()))
    assert error.status is status and "ould not" in error.detail


def test_a_load_that_does_not_fit_is_insufficient_memory_and_leaks_nothing(rig):
    model = prepare(rig.runtime, mlp())
    gpu = rig.cuda.gpus[0]
    hog = rig.on_load(lambda: rig.cuda.allocate_internal(gpu.total_bytes - gpu.used_bytes - 1000))
    before = rig.cuda.live_device_bytes()
    error = failure(lambda: rig.load(model))
    assert error.status is Status.INSUFFICIENT_MEMORY and "could not be allocated" in error.detail
    assert rig.cuda.live_device_bytes() == before
    rig.cuda.free_internal(hog)
    rig.execute(rig.load(model), x_batch(1))  # and it loads once there is room


def test_a_failed_execution_is_a_runtime_error_and_the_next_one_works(rig):
    handle = rig.load(prepare(rig.runtime, mlp()))
    rig.trt.fail_next_execute = True
    error = failure(lambda: rig.execute(handle, x_batch(2)))
    assert error.status is Status.RUNTIME_ERROR and "illegal memory access" in error.detail
    outputs, _ = rig.execute(handle, x_batch(2))
    np.testing.assert_allclose(outputs["y"], reference(mlp(), x_batch(2))["y"], rtol=1e-6)


def test_a_plan_that_no_longer_deserializes_fails_the_load(rig):
    model = prepare(rig.runtime, mlp())
    model.host.plans["NVIDIA H200 sm90"].buffer[:16] = 0  # the host copy got corrupted
    error = failure(lambda: rig.load(model))
    assert error.status is Status.RUNTIME_ERROR and "Magic tag does not match" in error.detail


def test_unloaded_handles_are_not_loaded(rig):
    handle = rig.load(prepare(rig.runtime, mlp()))
    rig.unload(handle)
    assert failure(lambda: rig.unload(handle)).status is Status.NOT_LOADED
    assert failure(lambda: rig.execute(handle, x_batch(1))).status is Status.NOT_LOADED
    assert failure(lambda: rig.execute("not a handle", x_batch(1))).status is Status.NOT_LOADED


def test_a_plan_that_cannot_be_pinned_stays_pageable_and_still_loads(tmp_path):
    rig = make_rig(tmp_path, cuda=FakeCudaDriver([FakeGpu(**H200)], pinned_limit_bytes=1000))
    try:
        model = prepare(rig.runtime, mlp())  # its plan is 1.2 kB, over the memlock-like limit
        assert model.extra["engine"]["NVIDIA H200 sm90"]["pinned"] is False
        outputs, _ = rig.execute(rig.load(model), x_batch(2))  # I/O staging (768 B) still fits
        np.testing.assert_allclose(outputs["y"], reference(mlp(), x_batch(2))["y"], rtol=1e-6)
        rig.cuda.pinned_limit_bytes = 0
        error = failure(lambda: rig.load(model))
        assert error.status is Status.INSUFFICIENT_MEMORY and "memlock" in error.detail
    finally:
        rig.stop()


# ------------------------------------------------------------------------------ clocks and profile


def test_the_sm_clock_after_each_infer_is_kept_per_device(rig):
    handle = rig.load(prepare(rig.runtime, mlp()))
    assert rig.runtime.last_sm_clock_mhz(0) is None
    rig.execute(handle, x_batch(1))
    assert rig.runtime.last_sm_clock_mhz(0) == 1980
    rig.nvml.sm_clock_mhz["0000:17:00.0"] = 1410  # throttling
    rig.execute(handle, x_batch(1))
    assert rig.runtime.last_sm_clock_mhz(0) == 1410


def test_without_nvml_no_clock_is_reported(tmp_path):
    rig = make_rig(tmp_path, nvml=False)
    try:
        rig.execute(rig.load(prepare(rig.runtime, mlp())), x_batch(1))
        assert rig.runtime.last_sm_clock_mhz(0) is None
    finally:
        rig.stop()


def test_profile_loads_and_times_each_batch_size_on_the_exec_lane(rig):
    model = prepare(rig.runtime, mlp(), max_batch=8)
    profile = rig.on_exec(lambda: rig.runtime.profile(0, model, [1, 2, 4, 8, 16], 3))
    assert sorted(profile.exec_ns) == [1, 2, 4, 8] and all(ns > 0 for ns in profile.exec_ns.values())
    assert profile.load_ns > 0
    assert rig.cuda.live_device_bytes() == rig.runtime.workspace_bytes(0)  # unloaded afterwards


# ------------------------------------------------------------------------------ bench/trt_check.py


def test_trt_check_runs_end_to_end_on_the_fakes(tmp_path):
    import io

    cuda = FakeCudaDriver([FakeGpu(**H200)])
    trt = FakeTensorRT(cuda)
    out = io.StringIO()
    args = trt_check.parse_args(["--runs", "3", "--load-runs", "2", "--batch-sizes", "1,4",
                                 "--json", str(tmp_path / "check.json")])
    libraries = GpuLibraries(trt, cuda, FakeNvml({H200["pci_bus_id"]: 1980}), trt.recipe)
    assert trt_check.run_check(args, gpu=libraries, out=out) == 0
    text = out.getvalue()
    assert "all checks passed" in text and "SM clock 1980 MHz" in text
    assert text.count(" ok") == 4  # 2 models x 2 batch sizes, outputs checked against onnxruntime
    assert (tmp_path / "check.json").is_file()
    assert cuda.retained == [0] and cuda.live_device_bytes() == 0


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_check_without_a_gpu_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "clockwork.bench.trt_check", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "skipped" in proc.stdout


# ------------------------------------------------------------------------------ the real thing


def _real_gpu_libraries() -> bool:
    try:
        import pycuda.driver  # noqa: F401  (fails without libcuda)
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu_libraries(), reason="needs tensorrt and pycuda (an NVIDIA GPU host)")
def test_real_tensorrt_builds_caches_and_runs_an_mlp(tmp_path):
    config = WorkerConfig(runtime="tensorrt", devices=1, device_memory_bytes=0, engine_cache_dir=str(tmp_path))
    runtime = TensorRTRuntime(config, log=LOG)
    lanes = DeviceLanes(runtime, 0, LOG)
    try:
        blob = mlp_onnx(sizes=(64, 256, 10))
        model = prepare(runtime, blob)
        assert prepare(runtime, blob).extra["engine"][next(iter(model.extra["engine"]))]["source"] == "cache"
        handle = lanes.call(lanes.load, lambda: runtime.load(0, model))
        assert runtime.workspace_bytes(0) >= 0
        for batch in (1, 7, 16):
            inputs = {"x": np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)}
            outputs, gpu_ns = lanes.call(lanes.exec, lambda: runtime.execute(0, handle, inputs))
            np.testing.assert_allclose(outputs["y"], reference(blob, inputs)["y"], rtol=2e-2, atol=2e-2)
            assert gpu_ns > 0
        profile = lanes.call(lanes.exec, lambda: runtime.profile(0, model, [1, 4, 16], 5))
        assert sorted(profile.exec_ns) == [1, 4, 16]
        lanes.call(lanes.load, lambda: runtime.unload(0, handle))
    finally:
        lanes.stop()
        runtime.close()
