"""The `torch` runtime: ONNX models run as PyTorch modules, on NVIDIA GPUs or on CPU core sets.

For GPU hosts that have PyTorch but no TensorRT, and for measuring this system on a real GPU.

Theory of operation
- PREPARE (prepare thread): onnx2torch turns the ONNX graph into a torch.fx module on the CPU;
  one batch-1 forward on the CPU checks that it runs and that its outputs match the signature.
  The weights stay in host memory (pinned on a GPU host, so a LOAD is one DMA per tensor), and
  the module itself is kept on the `meta` device: a skeleton that a LOAD copies without data.
- LOAD (LOAD lane): copy the skeleton, allocate its tensors on the GPU (`to_empty`) and copy the
  pinned weights in on the lane's own stream. Then, per profiled batch size, largest first: one
  warm-up forward, and one CUDA graph captured with static inputs and outputs, every graph of
  the model sharing one private memory pool; each graph is replayed once, so its first launch
  (which uploads it) is not an EXEC's. A model that cannot be captured runs eagerly.
- EXEC (on the EXEC lane): stage the inputs in pinned memory, copy them into the graph's static
  inputs, replay, copy the outputs out, all on the lane's stream; CUDA events time it on the
  GPU. The SM clock the controller gets is the latest a background thread read (NVML).
- UNLOAD (LOAD lane): drop the graphs, the module and the buffers, and give the freed memory
  back to the device, so the pages the worker accounts stay true.

Why it stays predictable: each lane thread has its own stream and only the EXEC lane runs an
EXEC; captures use CUDA's thread-local capture mode, so the EXEC lane keeps running while the
LOAD lane captures; cuDNN's autotuner stays off (no first-run search at a new shape).

Memory: what one LOAD takes (`weights_bytes`) is measured when the model is profiled on device
0: the weights, the static I/O buffers and the graphs' private pool, read from the caching
allocator's segments (PREPARE's own figure, the weights and I/O at max batch, is replaced by it).
A device's pages are the GPU's free memory at start-up less a reserve (TorchConfig).

`torch` and `onnx2torch` are imported when the runtime is constructed, never at module import,
so a worker of another runtime never loads them. The CPU mode (`[worker.torch] device = "cpu"`)
runs the same conversion and checks without CUDA; the tests run it on CPU torch.
"""

from __future__ import annotations

import copy
import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from clockwork.common.clock import monotonic_ns
from clockwork.common.config import HOST_DEVICE_MEMORY_BYTES, WorkerConfig
from clockwork.common.models import Signature
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import (DeviceInfo, PreparedModel, Profile, Runtime, RuntimeFailure, RuntimeUnavailable,
                                  percentile_ns, sample_inputs, timed_runs)
from clockwork.worker.runtimes.cuda import GpuInfo, SmClocks, looks_like_oom
from clockwork.worker.store import PROFILE_BATCH_SIZES  # EXEC pads to these: one graph each

# The SM clock is read by a background thread this often, not after each EXEC: an NVML call
# took ~0.15 ms on the lane of a lent H200 (a VM), 13% of a batch-1 ResNet-50.
CLOCK_POLL_S = 0.05



def import_torch() -> tuple[Any, Any]:
    """torch and onnx2torch, or RuntimeUnavailable saying what is missing."""
    found = []
    for name in ("torch", "onnx2torch"):
        try:
            found.append(importlib.import_module(name))
        except Exception as exc:  # ImportError, or a broken install (a torchvision built for another torch)
            raise RuntimeUnavailable(f"the torch runtime needs PyTorch and onnx2torch: importing {name} failed "
                                     f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); install "
                                     "them with pip install '.[torch]'") from None
    return found[0], found[1]


def reason(exc: BaseException) -> str:
    """One line naming the exception: a KeyError's text alone ('conv1_w') explains nothing."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:500]}" if lines else type(exc).__name__


def failure(exc: BaseException, what: str) -> RuntimeFailure:
    if isinstance(exc, RuntimeFailure):
        return exc
    text = reason(exc)
    status = Status.INSUFFICIENT_MEMORY if looks_like_oom(text) else Status.RUNTIME_ERROR
    return RuntimeFailure(status, f"{what}: {text}")


@dataclass(eq=False)
class TorchModel:
    """PreparedModel.host of this runtime."""

    skeleton: Any  # GPU hosts: the module on the meta device, structure without data
    weights: dict[str, Any]  # parameter or buffer name -> host tensor (pinned on a GPU host)
    cpu_module: Any  # CPU devices: the converted module with its weights


@dataclass(eq=False)
class Graph:
    """One batch size of a loaded model: static inputs, the captured graph (None: eager), its outputs."""

    inputs: list[Any]
    graph: Any
    outputs: list[Any]


@dataclass(eq=False)
class Loaded:
    """What LOAD returns: the module on the device and, on a GPU, one Graph per batch size."""

    module: Any
    outputs: tuple[Any, ...]  # the signature's output specs, in the module's output order
    graphs: dict[int, Graph] = field(default_factory=dict)
    staging_in: list[Any] = field(default_factory=list)  # pinned host tensors at max batch, one per input
    staging_out: list[Any] = field(default_factory=list)  # pinned host tensors at max batch, one per output
    pool: Any = None  # the graphs' shared private memory pool
    graph_error: str = ""  # why the model runs eagerly, when it does
    released: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # an EXEC against its UNLOAD

    def named(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {spec.name: v.astype(spec.dtype, copy=False) for spec, v in zip(self.outputs, values)}


@dataclass
class LaneStream:
    stream: Any
    events: tuple[Any, Any]  # before the inputs are copied in, after the outputs are copied out


class TorchRuntime(Runtime):
    name = "torch"
    formats = ("onnx",)
    reads_files = True

    def __init__(self, config: WorkerConfig, log: Any = None):
        self._config = config
        self._settings = config.torch
        self._log = log or structlog.get_logger().bind(runtime="torch")
        self.torch, self._onnx2torch = import_torch()
        torch = self.torch
        torch.backends.cudnn.benchmark = False  # no autotuning search at a new shape
        self._local = threading.local()
        self._cuda = self._settings.device == "cuda"
        if self._settings.device not in ("cuda", "cpu"):
            raise RuntimeUnavailable(f"[worker.torch] device must be 'cuda' or 'cpu', not {self._settings.device!r}")
        if self._cuda:
            if not torch.cuda.is_available():
                raise RuntimeUnavailable("the torch runtime found no CUDA GPU (torch.cuda.is_available() is False; "
                                         f"torch {torch.__version__}); set [worker.torch] device = \"cpu\" to run "
                                         "on CPU cores")
            count = min(max(1, config.devices), torch.cuda.device_count())
            self._gpus = [self._gpu_info(i) for i in range(count)]
            self._devices = [DeviceInfo(g.device_id, f"torch {g.kind_key}", self._memory_bytes(g)) for g in self._gpus]
            self._clocks = SmClocks(_nvml(), self._gpus, self._log)
            self._clocks.poll_in_background(CLOCK_POLL_S)
        else:
            torch.set_num_threads(max(1, int(config.threads_per_lane)))
            kind = f"torch-cpu-{max(1, int(config.threads_per_lane))}t"
            memory = config.device_memory_bytes or HOST_DEVICE_MEMORY_BYTES
            self._devices = [DeviceInfo(i, kind, memory) for i in range(max(1, config.devices))]
            self._clocks = None
        self.torch_version = torch.__version__

    # ---------------------------------------------------------------------------- devices

    def _gpu_info(self, index: int) -> GpuInfo:
        props = self.torch.cuda.get_device_properties(index)
        bus = (f"{getattr(props, 'pci_domain_id', 0):08X}:{getattr(props, 'pci_bus_id', 0):02X}:"
               f"{getattr(props, 'pci_device_id', 0):02X}.0")
        return GpuInfo(index, props.name, (props.major, props.minor), bus, int(props.total_memory))

    def _memory_bytes(self, gpu: GpuInfo) -> int:
        free, total = self.torch.cuda.mem_get_info(gpu.device_id)
        reserve = max(self._settings.reserve_min_bytes, int(total * self._settings.reserve_fraction))
        available = max(0, int(free) - reserve)
        configured = self._config.device_memory_bytes
        if configured and configured > available:
            self._log.warning("device_memory_bytes is more than the GPU has free; using what it has",
                              device_id=gpu.device_id, configured=configured, available=available)
        return min(configured, available) if configured else available

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def last_sm_clock_mhz(self, device_id: int) -> int | None:
        return self._clocks.last_mhz[device_id] if self._clocks else None

    def lane_started(self, device_id: int, lane: str) -> None:
        """Give this lane thread its own stream and events, and create cuBLAS/cuDNN handles now,
        outside any capture and outside any EXEC's time."""
        if not self._cuda:
            return
        torch = self.torch
        device = torch.device("cuda", device_id)
        torch.cuda.set_device(device)
        stream = torch.cuda.Stream(device)
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._local.lane = LaneStream(stream, events)
        with torch.cuda.stream(stream), torch.inference_mode():
            x = torch.ones((8, 8), device=device)
            (x @ x).sum()
            torch.nn.functional.linear(x, x, x[0])  # cuBLASLt, which keeps its own workspace per stream
            torch.nn.functional.conv2d(x.view(1, 1, 8, 8), x[:3, :3].reshape(1, 1, 3, 3))
        stream.synchronize()

    def lane_stopped(self, device_id: int, lane: str) -> None:
        self._local.lane = None

    # ---------------------------------------------------------------------------- prepare

    def prepare(self, model_id: str, digest: str, fmt: str, blob: bytes | Path, signature: Signature) -> PreparedModel:
        if fmt != "onnx":
            raise RuntimeFailure(Status.BAD_MODEL, f"the torch runtime serves ONNX models, not {fmt!r}")
        import onnx

        torch = self.torch
        try:
            proto = onnx.load(str(blob)) if isinstance(blob, Path) else onnx.load_from_string(bytes(blob))
            module = self._onnx2torch.convert(weights_as_initializers(proto)).eval()
            del proto
        except Exception as exc:
            raise RuntimeFailure(Status.BAD_MODEL, f"onnx2torch cannot convert the model: {reason(exc)}") from None
        try:
            with torch.inference_mode():
                outputs = _as_list(module(*_tensors(torch, sample_inputs(signature, 1), "cpu")))
        except Exception as exc:
            raise RuntimeFailure(Status.BAD_MODEL, f"the converted model does not run on PyTorch: {reason(exc)}") from None
        if len(outputs) != len(signature.outputs):
            raise RuntimeFailure(Status.BAD_MODEL, f"the converted model returns {len(outputs)} outputs; the "
                                 f"ONNX graph declares {len(signature.outputs)}")
        weights = {name: t.detach() for name, t in _tensors_of(module)}
        weights_bytes = sum(t.numel() * t.element_size() for t in weights.values()) + _io_bytes(signature)
        if not self._cuda:
            return PreparedModel(model_id, digest, signature, weights_bytes, TorchModel(None, weights, module))
        weights = {name: t.pin_memory() for name, t in weights.items()}
        skeleton = module.to("meta")  # in place: the CPU weights live on only in their pinned copies
        return PreparedModel(model_id, digest, signature, weights_bytes, TorchModel(skeleton, weights, None))

    # ---------------------------------------------------------------------------- load / unload

    def load(self, device_id: int, model: PreparedModel) -> Any:
        host: TorchModel = model.host
        if not self._cuda:  # CPU devices share the one module: inference does not mutate it
            return Loaded(host.cpu_module, model.signature.outputs)
        torch = self.torch
        lane = self._lane()
        device = torch.device("cuda", device_id)
        try:
            with torch.cuda.stream(lane.stream), torch.inference_mode():
                module = copy.deepcopy(host.skeleton).to_empty(device=device)
                for name, t in _tensors_of(module):
                    t.copy_(host.weights[name], non_blocking=True)
                loaded = Loaded(module, model.signature.outputs)
                self._build_graphs(loaded, model.signature, device, lane)
            lane.stream.synchronize()
        except Exception as exc:
            raise failure(exc, f"loading {model.model_id!r} on GPU {device_id}") from None
        if loaded.graph_error:
            self._log.warning("model runs without CUDA graphs", model_id=model.model_id, reason=loaded.graph_error)
        return loaded

    def _build_graphs(self, loaded: Loaded, signature: Signature, device: Any, lane: LaneStream) -> None:
        """Static inputs per batch size; a warm-up forward, then a capture into the shared pool."""
        torch = self.torch
        sizes = sorted((b for b in PROFILE_BATCH_SIZES if b <= signature.max_batch), reverse=True)
        for batch in sizes:
            inputs = [torch.zeros((batch, *s.shape), dtype=_torch_dtype(torch, s.dtype), device=device)
                      for s in signature.inputs]
            outputs = _as_list(loaded.module(*inputs))  # warm-up: kernels loaded, algorithms chosen
            if not loaded.graphs:  # the largest batch size: it sizes the pinned staging buffers
                loaded.staging_in = [torch.empty_like(t, device="cpu").pin_memory() for t in inputs]
                loaded.staging_out = [torch.empty_like(t, device="cpu").pin_memory() for t in outputs]
            elif any(o.shape[0] != batch or o.shape[1:] != big.shape[1:] for o, big in zip(outputs, loaded.staging_out)):
                raise RuntimeFailure(Status.BAD_MODEL, f"an output's shape at batch {batch} is not its shape at "
                                     "max batch with a smaller first dimension; outputs must be batch-first")
            loaded.graphs[batch] = Graph(inputs, None, outputs)
        if not self._settings.cuda_graphs:
            loaded.graph_error = "cuda_graphs is off"
            return
        loaded.pool = torch.cuda.graph_pool_handle()
        for batch in sizes:
            graph = torch.cuda.CUDAGraph()
            static = loaded.graphs[batch]
            try:
                graph.capture_begin(pool=loaded.pool, capture_error_mode="thread_local")
                try:
                    outputs = _as_list(loaded.module(*static.inputs))
                finally:
                    graph.capture_end()
            except Exception as exc:
                loaded.graph_error = reason(exc)
                for g in loaded.graphs.values():
                    g.graph = None
                return
            loaded.graphs[batch] = Graph(static.inputs, graph, outputs)
        for g in loaded.graphs.values():
            g.graph.replay()  # a graph's first launch uploads it to the GPU: LOAD pays for that, not an EXEC
        lane.stream.synchronize()

    def unload(self, device_id: int, handle: Any) -> None:
        if not self._cuda:
            return
        with handle.lock:
            handle.released = True
            handle.graphs.clear()
            for sub in handle.module.modules():  # torch.fx modules hold reference cycles: free the
                sub._parameters.clear()  # tensors now, not at the garbage collector's next pass
                sub._buffers.clear()
            handle.module = None
            handle.staging_in = handle.staging_out = []
            handle.pool = None
        self.torch.cuda.empty_cache()  # the freed memory goes back to the device, as the pages say

    # ---------------------------------------------------------------------------- execute

    def execute(self, device_id: int, handle: Loaded, inputs: dict[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], int | None]:
        torch = self.torch
        if not self._cuda:
            try:
                with torch.inference_mode():
                    values = _as_list(handle.module(*_tensors(torch, inputs, "cpu")))
            except Exception as exc:
                raise failure(exc, "EXEC failed") from None
            return handle.named([v.numpy() for v in values]), None
        with handle.lock:
            if handle.released:
                raise RuntimeFailure(Status.RUNTIME_ERROR, "EXEC of a model that was unloaded")
            try:
                return self._execute_gpu(handle, inputs)
            except Exception as exc:
                raise failure(exc, "EXEC failed") from None

    def _execute_gpu(self, handle: Loaded, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        torch = self.torch
        lane = self._lane()
        arrays = list(inputs.values())
        batch = int(arrays[0].shape[0])
        static = handle.graphs.get(batch)
        if static is None:
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"batch {batch} is not one of the model's batch sizes "
                                 f"{sorted(handle.graphs)}")
        start, end = lane.events
        with torch.cuda.stream(lane.stream), torch.inference_mode():
            start.record()
            for array, pinned, target in zip(arrays, handle.staging_in, static.inputs):
                host = pinned[:batch]
                host.numpy()[...] = array
                target.copy_(host, non_blocking=True)
            if static.graph is not None:
                static.graph.replay()
                outputs = static.outputs
            else:
                outputs = _as_list(handle.module(*static.inputs))
            for pinned, value in zip(handle.staging_out, outputs):
                pinned[:batch].copy_(value, non_blocking=True)
            end.record()
        end.synchronize()
        values = [pinned[:batch].numpy().copy() for pinned in handle.staging_out]
        return handle.named(values), int(start.elapsed_time(end) * 1_000_000)

    def profile(self, device_id: int, model: PreparedModel, batch_sizes: list[int], runs: int) -> Profile:
        """On the EXEC lane: LOAD, time `runs` EXECs per batch size, measure what the LOAD holds
        on the device, UNLOAD."""
        lane_started = self._cuda and getattr(self._local, "lane", None) is None
        if lane_started:  # profiling before the lanes ever ran (tests, gpu-check)
            self.lane_started(device_id, "exec")
        try:
            t0 = monotonic_ns()
            handle = self.load(device_id, model)
            load_ns = monotonic_ns() - t0
            try:
                exec_ns = {batch: percentile_ns(timed_runs(lambda x: self.execute(device_id, handle, x),
                                                           sample_inputs(model.signature, batch), runs),
                                                self._settings.profile_percentile)
                           for batch in batch_sizes}
                device_bytes = self._device_bytes(handle) if self._cuda else None
            finally:
                self.unload(device_id, handle)
        finally:
            if lane_started:
                self.lane_stopped(device_id, "exec")
        return Profile(load_ns, exec_ns, device_bytes)

    def _device_bytes(self, handle: Loaded) -> int:
        """The loaded model's footprint: its tensors, its static I/O, and its graphs' pool."""
        tensors = [t for _, t in _tensors_of(handle.module)]
        for g in handle.graphs.values():
            tensors += g.inputs + (g.outputs if g.graph is None else [])
        total = sum(_rounded(t.untyped_storage().nbytes()) for t in {id(t): t for t in tensors}.values())
        if handle.pool is not None:
            total += sum(seg["total_size"] for seg in self.torch.cuda.memory_snapshot()
                         if tuple(seg.get("segment_pool_id", ())) == tuple(handle.pool))
        return total

    def _lane(self) -> LaneStream:
        lane = getattr(self._local, "lane", None)
        if lane is None:
            raise RuntimeFailure(Status.RUNTIME_ERROR, "a GPU action ran off the device's lanes")
        return lane

    def close(self) -> None:
        if self._clocks:
            self._clocks.close()


# -------------------------------------------------------------------------------- helpers


def weights_as_initializers(model: Any) -> Any:
    """Turn the main graph's Constant nodes, and Identity nodes of an initializer, into initializers.

    Exporters spell a weight in several ways: torch's TorchScript exporter emits some folded conv
    weights as Constant nodes, and shares identical ones through Identity nodes. onnx2torch reads
    a Conv's or Gemm's weight and bias only from the initializers.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        tensor = None
        if node.op_type == "Identity" and node.input and node.input[0] in initializers:
            tensor = type(initializers[node.input[0]])()
            tensor.CopyFrom(initializers[node.input[0]])
        elif node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            if attr.name == "value":
                tensor = value
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                tensor = numpy_helper.from_array(np.array(value, dtype=np.float32 if "float" in attr.name else np.int64))
        if tensor is None or len(node.output) != 1:  # sparse and string constants stay nodes
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        initializers[tensor.name] = tensor
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except Exception:
        return None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _tensors_of(module: Any) -> list[tuple[str, Any]]:
    """Every parameter and buffer, persistent or not: what a LOAD must copy."""
    return [*module.named_parameters(), *module.named_buffers()]


def _torch_dtype(torch: Any, dtype: str) -> Any:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _tensors(torch: Any, arrays: dict[str, np.ndarray], device: str) -> list[Any]:
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays.values()]


def _io_bytes(signature: Signature) -> int:
    return sum(int(np.prod((signature.max_batch, *s.shape))) * np.dtype(s.dtype).itemsize
               for s in (*signature.inputs, *signature.outputs))


def _rounded(nbytes: int, block: int = 512) -> int:
    """The caching allocator hands out blocks in multiples of 512 bytes."""
    return -(-nbytes // block) * block
