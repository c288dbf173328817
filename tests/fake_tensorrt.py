"""FAKE: stands in for TensorRT where it cannot be installed (no GPU, no NVIDIA package index).

It mirrors the TensorRT 10.1+/11.x Python API the runtime uses — same names, same return
conventions (None or False plus a logged error on failure, pybind-style exceptions for invalid
arguments) — and deliberately lacks what TensorRT 11 removed (`create_execution_context_without_
device_memory`, `device_memory_size`, builder precision flags, `EXPLICIT_BATCH`), so code that
uses them fails here too. It runs real math: a fake engine executes its ONNX model with
onnxruntime, reading its inputs from and writing its outputs to the fake device memory of
tests/fake_pycuda.py at the addresses the runtime set, so outputs can be checked end to end.

A fake plan is a header (TensorRT version, compute capability, profile, tensors, the engine's
execution-memory need) followed by the ONNX bytes; deserializing it checks the version and the
current GPU's compute capability like real plans do. The fake is stricter than TensorRT in one
place: building and deserializing need a CUDA context current on the calling thread (real
TensorRT would silently use device 0's).

Knobs for tests (attributes of FakeTensorRT): `builds` (records of every build, with its
optimization profiles), `unsupported_ops`, `fail_next_build`, `fail_next_execute`,
`narrow_int64` (report int64 tensors as INT32, as older TensorRT did), `exec_ns` (fake kernel time),
`build_gate` (a path: a build writes PATH.started, then waits until PATH exists), and
`crash_next_build` (the build's process is killed, as a crash or the OOM killer would end it).
An ONNX metadata entry `fake_trt.device_memory_bytes` sets an engine's device_memory_size_v2.

Engines are built in child processes (worker/runtimes/engine_build.py). A child gets the fake the
way the worker got it: `FakeTensorRT.recipe` names `fake_libraries` with this fake's GPUs, version
and build knobs (the next build's failure or crash goes with it), and the child's builds are
appended to a file that `builds` reads back, so a test sees them as if they had run here.
`[worker.tensorrt] libraries = "tests.fake_tensorrt:fake_libraries"` gives a process a default
fake (one 8 GiB H200, TensorRT 10.3.0), e.g. `clockwork build-engine` in a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import signal
import struct
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clockwork.worker.runtimes.trt_libs import GpuLibraries
from tests.fake_pycuda import FakeCudaDriver, FakeGpu

MAGIC = b"FAKETRT1"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                     Severity.INFO, Severity.VERBOSE)

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: Severity = Severity.WARNING):
        super().__init__()
        self.min_severity = min_severity
        self.messages: list[tuple[Severity, str]] = []

    def log(self, severity: Severity, msg: str) -> None:
        if severity <= self.min_severity:
            self.messages.append((severity, msg))


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    BOOL = "bool"
    UINT8 = "uint8"
    INT64 = "int64"
    BF16 = "bfloat16"  # no numpy type: nptype raises TypeError, as the real one does


def nptype(dtype: DataType) -> type:
    if dtype is DataType.BF16:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(dtype.value).type


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    TACTIC_SHARED_MEMORY = 4


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


# ONNX TensorProto element types TensorRT accepts (DOUBLE and INT16 it does not).
_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
               2: DataType.UINT8, 7: DataType.INT64, 16: DataType.BF16}


class IHostMemory(bytes):
    """A serialized plan; supports the buffer protocol like the real one."""

    @property
    def nbytes(self) -> int:
        return len(self)


@dataclass
class ITensor:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dims
    dtype: DataType


@dataclass
class BuildRecord:
    device_index: int
    workspace_limit: int | None
    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]
    pid: int = 0  # the process that built

    @classmethod
    def from_json(cls, line: str) -> "BuildRecord":
        data = json.loads(line)
        profiles = [{name: tuple(tuple(dims) for dims in shapes) for name, shapes in p.items()}
                    for p in data["profiles"]]
        return cls(data["device_index"], data["workspace_limit"], profiles, data["pid"])


class ParserError:
    def __init__(self, text: str):
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text


class FakeTensorRT:
    """The `tensorrt` module, bound to a FakeCudaDriver."""

    def __init__(self, cuda: FakeCudaDriver, version: str = "10.3.0"):
        self.__version__ = version
        self.cuda = cuda
        self._builds: list[BuildRecord] = []
        self._builds_log = ""  # where builds are recorded once a child may make them
        self.unsupported_ops: set[str] = set()
        self.fail_next_build: str | None = None
        self.crash_next_build = False
        self.build_gate = ""
        self.fail_next_execute = False
        self.narrow_int64 = False
        self.exec_ns = 50_000
        self.engines_destroyed_without_context = 0
        self.ILogger, self.Logger, self.DataType, self.nptype = ILogger, Logger, DataType, nptype
        self.TensorIOMode, self.MemoryPoolType = TensorIOMode, MemoryPoolType
        self.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
        self.Builder = type("Builder", (Builder,), {"_trt": self})
        self.Runtime = type("Runtime", (Runtime,), {"_trt": self})
        self.OnnxParser = OnnxParser

    @property
    def builds(self) -> list[BuildRecord]:
        """Every build of this fake, here or in a child process that got its recipe."""
        records = list(self._builds)
        if self._builds_log and os.path.exists(self._builds_log):
            with open(self._builds_log) as fh:
                records += [BuildRecord.from_json(line) for line in fh if line.strip()]
        return records

    def record_build(self, record: BuildRecord) -> None:
        if not self._builds_log:
            self._builds.append(record)
            return
        with open(self._builds_log, "a") as fh:
            fh.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def recipe(self) -> tuple[str, dict]:
        """How a child process gets this fake as it is set now (trt_libs.GpuLibraries.recipe)."""
        if not self._builds_log:
            fd, self._builds_log = tempfile.mkstemp(prefix="fake-trt-builds-", suffix=".jsonl")
            os.close(fd)
            weakref.finalize(self, _remove, self._builds_log)
        fail, self.fail_next_build = self.fail_next_build, None
        crash, self.crash_next_build = self.crash_next_build, False
        return "tests.fake_tensorrt:fake_libraries", {
            "gpus": [dataclasses.asdict(g) for g in self.cuda.gpus], "version": self.__version__,
            "unsupported_ops": sorted(self.unsupported_ops), "fail_next_build": fail, "crash_next_build": crash,
            "build_gate": self.build_gate, "builds_log": self._builds_log}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def fake_libraries(gpus: list[dict] | None = None, version: str = "10.3.0", unsupported_ops: list[str] = (),
                   fail_next_build: str | None = None, crash_next_build: bool = False, build_gate: str = "",
                   builds_log: str = "") -> GpuLibraries:
    """A fresh fake TensorRT and PyCUDA (no NVML), from a recipe (FakeTensorRT.recipe), or with
    their defaults from `[worker.tensorrt] libraries = "tests.fake_tensorrt:fake_libraries"`."""
    cuda = FakeCudaDriver([FakeGpu(**g) for g in gpus] if gpus else None)
    trt = FakeTensorRT(cuda, version=version)
    trt.unsupported_ops = set(unsupported_ops)
    trt.fail_next_build, trt.crash_next_build, trt.build_gate = fail_next_build, crash_next_build, build_gate
    trt._builds_log = builds_log
    return GpuLibraries(trt, cuda, None, recipe=trt.recipe)


# ------------------------------------------------------------------------------ building


class INetworkDefinition:
    def __init__(self) -> None:
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx_bytes: bytes | None = None
        self.metadata: dict[str, str] = {}
        self.unsupported_ops: set[str] = set()

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        self._network = network
        self._logger = logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse(self, model: Any, path: str | None = None) -> bool:
        import onnx

        self._errors = []
        try:
            proto = onnx.load_model_from_string(bytes(memoryview(model)))
            onnx.checker.check_model(proto)
        except Exception as exc:
            return self._fail(f"ModelImporter: failed to parse the ONNX model: {str(exc).splitlines()[0][:200]}")
        for node in proto.graph.node:
            if node.op_type in self._network.unsupported_ops:
                return self._fail(f"In node {node.name or node.op_type} (importer): UNSUPPORTED_NODE: "
                                  f"No importer registered for op: {node.op_type}")
        weights = {t.name for t in proto.graph.initializer}
        for vi, where in [(v, "input") for v in proto.graph.input if v.name not in weights] + \
                         [(v, "output") for v in proto.graph.output]:
            dtype = _ONNX_TYPES.get(vi.type.tensor_type.elem_type)
            if dtype is None:
                return self._fail(f"{where} {vi.name!r}: UNSUPPORTED_GRAPH: unsupported data type "
                                  f"{vi.type.tensor_type.elem_type}")
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            (self._network.inputs if where == "input" else self._network.outputs).append(ITensor(vi.name, dims, dtype))
        self._network.onnx_bytes = proto.SerializeToString()
        self._network.metadata = {p.key: p.value for p in proto.metadata_props}
        return True

    def _fail(self, text: str) -> bool:
        self._errors.append(ParserError(text))
        self._logger.log(Severity.ERROR, text)
        return False


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        if not len(lo) == len(mid) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self.shapes.get(input, ()))


class IBuilderConfig:
    def __init__(self) -> None:
        self.profiles: list[IOptimizationProfile] = []
        self.pool_limits: dict[MemoryPoolType, int] = {}

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if not isinstance(pool, MemoryPoolType):
            raise TypeError("set_memory_pool_limit(): incompatible function arguments")
        self.pool_limits[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pool_limits.get(pool, 0)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)


class Builder:
    _trt: FakeTensorRT

    def __init__(self, logger: ILogger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if flags != 0:
            raise ValueError("only create_network(0) exists in the fake: explicit batch is the only mode")
        network = INetworkDefinition()
        network.unsupported_ops = set(self._trt.unsupported_ops)  # what its parser will refuse
        return network

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        trt = self._trt
        device = trt.cuda.current_index("build_serialized_network")
        if trt.fail_next_build:
            message, trt.fail_next_build = trt.fail_next_build, None
            return self._error(message)
        if network.onnx_bytes is None:
            return self._error("Network must have at least one output")
        if not config.profiles:
            return self._error("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        profile = config.profiles[0].shapes
        for tensor in network.inputs:
            shapes = profile.get(tensor.name)
            if shapes is None:
                return self._error(f"{tensor.name}: dynamic input is missing dimensions in profile 0.")
            for dims in shapes:
                if len(dims) != len(tensor.shape) or any(s != -1 and s != d for s, d in zip(tensor.shape, dims)):
                    return self._error(f"{tensor.name}: profile dimensions {dims} do not match the network's "
                                       f"{tensor.shape}")
        if trt.crash_next_build:
            os.kill(os.getpid(), signal.SIGKILL)  # as a crash in the driver or the OOM killer would end it
        if trt.build_gate:  # a slow build: it waits for the test to let it finish
            Path(trt.build_gate + ".started").touch()
            give_up = time.monotonic() + 60
            while not os.path.exists(trt.build_gate) and time.monotonic() < give_up:
                time.sleep(0.005)
        trt.record_build(BuildRecord(device, config.pool_limits.get(MemoryPoolType.WORKSPACE),
                                     [dict(p.shapes) for p in config.profiles], os.getpid()))
        header = {
            "trt_version": trt.__version__,
            "compute_capability": list(trt.cuda.gpus[device].compute_capability),
            "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
            "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.outputs],
            "device_memory_bytes": _device_memory_bytes(network, profile),
        }
        raw = json.dumps(header).encode()
        return IHostMemory(MAGIC + struct.pack("<I", len(raw)) + raw + network.onnx_bytes)

    def _error(self, message: str) -> None:
        self.logger.log(Severity.ERROR, message)
        return None


def _device_memory_bytes(network: INetworkDefinition, profile: dict) -> int:
    """The engine's execution-memory need: a metadata override, else 1 MiB + 4x its inputs."""
    override = network.metadata.get("fake_trt.device_memory_bytes")
    if override is not None:
        return int(override)
    inputs = sum(int(np.prod(profile[t.name][2])) * np.dtype(t.dtype.value).itemsize for t in network.inputs
                 if t.dtype is not DataType.BF16)
    return (1 << 20) + 4 * inputs


# ------------------------------------------------------------------------------ running


class Runtime:
    _trt: FakeTensorRT

    def __init__(self, logger: ILogger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> "ICudaEngine | None":
        trt = self._trt
        device = trt.cuda.current_index("deserialize_cuda_engine")
        data = bytes(memoryview(serialized_engine).cast("B"))
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            return self._error("1: [stdArchiveReader.cpp::StdArchiveReader::42] Error Code 1: Serialization "
                               "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
        (length,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        try:
            header = json.loads(data[start:start + length])
        except ValueError:
            return self._error("Error Code 1: Serialization (corrupt engine header)")
        if header["trt_version"] != trt.__version__:
            return self._error("Error Code 6: API Usage Error (The engine plan file is not compatible with this "
                               f"version of TensorRT, expecting library version {trt.__version__} got "
                               f"{header['trt_version']}, please rebuild.)")
        cc = list(trt.cuda.gpus[device].compute_capability)
        if header["compute_capability"] != cc:
            return self._error("Error Code 6: API Usage Error (The engine plan file is generated on an incompatible "
                               f"device, expecting compute {cc} got compute {header['compute_capability']}, please rebuild.)")
        try:
            return ICudaEngine(trt, self.logger, device, header, data[start + length:], len(data))
        except trt.cuda.MemoryError:
            return self._error(f"Error Code 2: OutOfMemory (Requested amount of GPU memory ({len(data)} bytes) "
                               "could not be allocated. There may not be enough free memory for allocation to succeed.)")

    def _error(self, message: str) -> None:
        self.logger.log(Severity.ERROR, message)
        return None


class ICudaEngine:
    def __init__(self, trt: FakeTensorRT, logger: ILogger, device: int, header: dict, onnx_bytes: bytes,
                 plan_bytes: int):
        import onnxruntime as ort

        self._trt = trt
        self.logger = logger  # contexts report their errors here, like TensorRT does
        self._device = device
        self._weights = trt.cuda.allocate_internal(plan_bytes)  # weights and kernels go to the GPU
        self._header = header
        self._io: dict[str, tuple[TensorIOMode, DataType, tuple[int, ...]]] = {}
        for mode, key in ((TensorIOMode.INPUT, "inputs"), (TensorIOMode.OUTPUT, "outputs")):
            for name, dtype, shape in header[key]:
                dt = DataType[dtype]
                if trt.narrow_int64 and dt is DataType.INT64:
                    dt = DataType.INT32
                self._io[name] = (mode, dt, tuple(shape))
        self._onnx_dtypes = {name: DataType[dtype] for name, dtype, _ in header["inputs"] + header["outputs"]}
        self.profile = {name: [tuple(s) for s in shapes] for name, shapes in header["profile"].items()}
        self.device_memory_size_v2 = int(header["device_memory_bytes"])
        self.num_optimization_profiles = 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def __del__(self) -> None:
        weights = getattr(self, "_weights", None)
        if weights is not None:
            if not self._trt.cuda.has_context():
                self._trt.engines_destroyed_without_context += 1
            self._trt.cuda.free_internal(weights)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return list(self._io)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][0] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self.profile:
            raise RuntimeError(f"{name} is not an input of profile {profile_index}")
        return list(self.profile[name])

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy =
                                 ExecutionContextAllocationStrategy.STATIC) -> "IExecutionContext":
        return IExecutionContext(self, strategy)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy):
        self.engine = engine  # keeps the engine alive, as the real binding does
        self._trt = engine._trt
        self._trt.cuda.current_index("createExecutionContext")
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._shape_cache: dict[tuple, dict[str, tuple[int, ...]]] = {}
        self.device_memory: tuple[int, int] | None = None  # (ptr, size) set by the user
        self.strategy = strategy
        self._own_memory = None
        if strategy is ExecutionContextAllocationStrategy.STATIC and engine.device_memory_size_v2:
            self._own_memory = self._trt.cuda.allocate_internal(engine.device_memory_size_v2)

    def __del__(self) -> None:
        own = getattr(self, "_own_memory", None)
        if own is not None:
            self._trt.cuda.free_internal(own)

    def _log_error(self, message: str) -> bool:
        self.engine.logger.log(Severity.ERROR, message)
        return False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        if self.engine.get_tensor_mode(name) is not TensorIOMode.INPUT:
            return self._log_error(f"setInputShape: {name} is not an input tensor")
        lo, _, hi = self.engine.profile[name]
        if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return self._log_error(f"setInputShape: {name} shape {shape} is outside the profile [{lo}, {hi}]")
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode, _, shape = self.engine._io[name]
        if mode is TensorIOMode.INPUT:
            return self._shapes.get(name, shape)
        inputs = [n for n, (m, _, _) in self.engine._io.items() if m is TensorIOMode.INPUT]
        if any(n not in self._shapes for n in inputs):
            return shape  # -1 where dynamic, like TensorRT before all input shapes are known
        return self._output_shapes()[name]

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted(self._shapes.items()))
        if key not in self._shape_cache:  # the fake's shape inference: run the model on zeros
            feeds = {n: np.zeros(s, dtype=self.engine._onnx_dtypes[n].value) for n, s in self._shapes.items()}
            outs = self.engine.session.run(None, feeds)
            names = [o.name for o in self.engine.session.get_outputs()]
            self._shape_cache[key] = {n: tuple(o.shape) for n, o in zip(names, outs)}
        return self._shape_cache[key]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._io:
            return self._log_error(f"setTensorAddress: no tensor named {name}")
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_device_memory(self, memory: int, size: int) -> None:
        if self.strategy is not ExecutionContextAllocationStrategy.USER_MANAGED:
            self._log_error("setDeviceMemory: the context was not created with USER_MANAGED memory")
            return
        if int(size) < self.engine.device_memory_size_v2:
            self._log_error(f"setDeviceMemoryV2: size {size} < required {self.engine.device_memory_size_v2}")
            return
        self.device_memory = (int(memory), int(size))

    def execute_async_v3(self, stream_handle: int) -> bool:
        trt, cuda, engine = self._trt, self._trt.cuda, self.engine
        if trt.fail_next_execute:
            trt.fail_next_execute = False
            return self._log_error("Error Code 1: Cuda Runtime (an illegal memory access was encountered)")
        try:
            if cuda.current_index("enqueueV3") != engine._device:
                return self._log_error("enqueueV3: the engine's device is not the current device")
        except cuda.Error as exc:
            return self._log_error(str(exc))
        missing = [n for n in engine._io if n not in self._addresses]
        unset = [n for n, (m, _, _) in engine._io.items() if m is TensorIOMode.INPUT and n not in self._shapes]
        if missing or unset:
            return self._log_error(f"enqueueV3: addresses not set for {missing}, shapes not set for {unset}")
        if self.strategy is ExecutionContextAllocationStrategy.USER_MANAGED and engine.device_memory_size_v2:
            if self.device_memory is None:
                return self._log_error("enqueueV3: USER_MANAGED context without device memory")
            try:
                cuda.resolve(self.device_memory[0], engine.device_memory_size_v2)  # live, right device
            except cuda.Error as exc:
                return self._log_error(f"enqueueV3: workspace {exc}")
        try:
            return self._run()
        except cuda.Error as exc:
            return self._log_error(f"enqueueV3: {exc}")

    def _run(self) -> bool:
        engine, cuda = self.engine, self._trt.cuda
        feeds = {}
        for name, (mode, dtype, _) in engine._io.items():
            if mode is TensorIOMode.INPUT:
                shape = self._shapes[name]
                raw = cuda.read(self._addresses[name], int(np.prod(shape)) * np.dtype(dtype.value).itemsize)
                feeds[name] = raw.view(dtype.value).reshape(shape).astype(engine._onnx_dtypes[name].value)
        outs = engine.session.run(None, feeds)
        for meta, value in zip(engine.session.get_outputs(), outs):
            _, dtype, _ = engine._io[meta.name]
            cuda.write(self._addresses[meta.name], np.ascontiguousarray(value.astype(dtype.value)).reshape(-1).view(np.uint8))
        cuda.run_kernel(self._trt.exec_ns)
        return True
