"""The libraries the tensorrt runtime drives (TensorRT, PyCUDA, NVML), and how a child process
gets the same ones.

An engine build runs in a child process (engine_build.py), which must import its own copy of
the libraries: a module object cannot cross a process boundary. So every GpuLibraries carries a
`recipe`: the "module:function" that makes it and that function's keyword arguments. The real
libraries' recipe imports them again; a named fake's (tests/fake_tensorrt.py) hands its current
settings on, so a child build runs the fake exactly as the parent would.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from clockwork.common.status import Status
from clockwork.worker.runtimes.base import RuntimeFailure, RuntimeUnavailable
from clockwork.worker.runtimes.cuda import looks_like_oom

MIN_TRT_VERSION = (10, 1)  # device_memory_size_v2 and set_device_memory(ptr, size) arrived in 10.1
REAL_LIBRARIES = "clockwork.worker.runtimes.trt_libs:import_gpu_libraries"

Recipe = tuple[str, dict]  # ("module:function", keyword arguments) -> GpuLibraries


def _real_recipe() -> Recipe:
    return REAL_LIBRARIES, {}


@dataclass(frozen=True)
class GpuLibraries:
    """The modules the runtime drives: the real ones, or named fakes in tests."""

    trt: Any  # the `tensorrt` module
    cuda: Any  # `pycuda.driver`
    nvml: Any | None = None  # `pynvml` (nvidia-ml-py); None: SM clocks are not reported
    # How a child process makes the same libraries; called at each build, so that a fake can
    # hand on what it is set to do now.
    recipe: Callable[[], Recipe] = _real_recipe


def load_libraries(recipe: Recipe) -> GpuLibraries:
    """Call the recipe's function with its arguments (RuntimeUnavailable if it cannot be found)."""
    provider, kwargs = recipe
    module, _, function = provider.partition(":")
    try:
        make = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise RuntimeUnavailable(f"[worker.tensorrt] libraries = {provider!r} names no function: {exc}") from None
    return make(**kwargs)


def import_gpu_libraries(import_module: Callable[[str], Any] = importlib.import_module) -> GpuLibraries:
    """Import TensorRT, PyCUDA and (optionally) NVML; RuntimeUnavailable says what is missing."""
    found: dict[str, Any] = {}
    missing = []
    for name, label in (("tensorrt", "tensorrt>=10.1,<12"), ("pycuda.driver", "pycuda")):
        try:
            found[name] = import_module(name)
        except (ImportError, OSError) as exc:  # OSError: the package is there, a CUDA library is not
            missing.append(f"{label} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    if missing:
        raise RuntimeUnavailable("the tensorrt runtime needs TensorRT and PyCUDA on a host with an NVIDIA "
                                 f"driver; missing: {'; '.join(missing)}. Install them with "
                                 "pip install '.[gpu]' (see docs/gpu-hosts.md)")
    try:
        nvml = import_module("pynvml")
    except (ImportError, OSError):
        nvml = None
    return GpuLibraries(found["tensorrt"], found["pycuda.driver"], nvml)


def check_trt_version(trt: Any) -> str:
    version = str(getattr(trt, "__version__", "0"))
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_TRT_VERSION:
        raise RuntimeUnavailable(f"the tensorrt runtime needs TensorRT >= 10.1, found {version}; "
                                 "upgrade with pip install '.[gpu]'")
    return version


def make_logger(trt: Any, log: Any) -> Any:
    """A trt.ILogger that forwards warnings and errors to our log, and lets a caller capture
    the errors its own calls produce (`with logger.capture() as errors:`) to explain a failure."""
    severity = trt.ILogger.Severity
    error_levels = {severity.INTERNAL_ERROR, severity.ERROR}

    class TrtLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._local = threading.local()

        def log(self, sev: Any, msg: str) -> None:
            if sev in error_levels:
                captured = getattr(self._local, "errors", None)
                if captured is not None:
                    captured.append(str(msg))
                log.warning("tensorrt error", message=str(msg))
            elif sev == severity.WARNING:
                log.info("tensorrt warning", message=str(msg))

        @contextlib.contextmanager
        def capture(self) -> Iterator[list[str]]:
            outer = getattr(self._local, "errors", None)
            self._local.errors = errors = []
            try:
                yield errors
            finally:
                self._local.errors = outer
                if outer is not None:
                    outer.extend(errors)

    return TrtLogger()


def trt_failure(what: str, errors: list[str], default: Status = Status.RUNTIME_ERROR) -> RuntimeFailure:
    """A failure TensorRT reported only through its logger (a None or False return)."""
    detail = "; ".join(errors[-3:]) if errors else "TensorRT logged no reason"
    status = Status.INSUFFICIENT_MEMORY if any(looks_like_oom(e) for e in errors) else default
    return RuntimeFailure(status, f"{what}: {detail}")
