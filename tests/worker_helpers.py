"""Factories for the worker's tests: small ONNX models, emulated profiles, devices, worker processes.

No mocks: models are real ONNX graphs built with onnx.helper, runtimes are the real ones (or a
named subclass that counts calls), and worker processes are real, driven by `StubController`
(a ROUTER on loopback, shared with bench/predictability.py).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import structlog

from clockwork.bench.predictability import StubController, mlp_model, spawn_worker, stop_worker
from clockwork.common import cpu_latency
from clockwork.common.clock import monotonic_ns
from clockwork.common.config import MIB, WorkerConfig
from clockwork.worker.device import Device, Done, Ran
from clockwork.worker.runtimes.base import Profile, Runtime
from clockwork.worker.runtimes.emulated import EmulatedRuntime
from clockwork.worker.store import ModelStore, Preparer

LOG = structlog.get_logger()
MS = 1_000_000


def small_mlp(width: int = 8, layers: int = 2, seed: int = 0) -> bytes:
    """A MatMul+Relu stack with a dynamic batch dim 'N': x [N, width] -> y [N, width]."""
    return mlp_model(width=width, layers=layers, seed=seed)


def profile_blob(load_ms: float = 2.0, exec_ms: dict | None = None, weights_bytes: int = 10 * MIB,
                 inputs: list | None = None, outputs: list | None = None) -> bytes:
    prof: dict[str, Any] = {"weights_bytes": weights_bytes, "load_ms": load_ms,
                            "exec_ms": {str(k): v for k, v in (exec_ms or {1: 2.0, 4: 3.0, 16: 6.0}).items()}}
    if inputs is not None:
        prof["inputs"] = inputs
    if outputs is not None:
        prof["outputs"] = outputs
    return json.dumps(prof).encode()


def wait_until_true(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout_s} s")
        time.sleep(0.005)


class Collector:
    """An `emit` target: keeps what lanes report, and waits for it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def __call__(self, item: Any) -> None:
        self._queue.put(item.done() if isinstance(item, Ran) else item)  # as the daemon's loop does

    def next(self, timeout_s: float = 10.0) -> Any:
        return self._queue.get(timeout=timeout_s)

    def take(self, n: int, timeout_s: float = 10.0) -> list:
        return [self.next(timeout_s) for _ in range(n)]

    def for_parent(self, parent_id: int, timeout_s: float = 10.0) -> Done:
        deadline = time.monotonic() + timeout_s
        while True:
            item = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if getattr(item, "parent_id", None) == parent_id:
                return item


class CountingEmulated(EmulatedRuntime):
    """The emulated runtime, counting prepare and profile calls (a named fake, not a mock)."""

    def __init__(self, config: WorkerConfig):
        super().__init__(config)
        self.prepares = 0
        self.profiles = 0

    def prepare(self, *args, **kwargs):
        self.prepares += 1
        return super().prepare(*args, **kwargs)

    def profile(self, *args, **kwargs) -> Profile:
        self.profiles += 1
        return super().profile(*args, **kwargs)


def make_device(runtime: Runtime, store: ModelStore | None = None, device_id: int = 0,
                page_bytes: int = 16 * MIB) -> tuple[Device, Collector, ModelStore]:
    store = store if store is not None else ModelStore()
    emit = Collector()
    info = runtime.devices()[device_id]
    device = Device(info, page_bytes, runtime, store, emit, LOG)
    return device, emit, store


def make_preparer(runtime: Runtime, store: ModelStore, replies: Collector, device: Device | None = None,
                  spool_dir: Path | None = None) -> Preparer:
    """A Preparer profiling on `device`'s EXEC lane, or inline when no device is given."""
    run_on_lane = (lambda fn: device.run_exclusive(fn).result()) if device else (lambda fn: fn())
    return Preparer(runtime, store, run_on_lane, lambda body, parent: replies((body, parent)), 3, LOG,
                    spool_dir=spool_dir)


def window(ahead_ms: float = 0.0, width_ms: float = 60_000.0) -> tuple[int, int]:
    start = monotonic_ns() + int(ahead_ms * MS)
    return start, start + int(width_ms * MS)


class WorkerProcess:
    """A real `python -m clockwork.worker.main` wired to a StubController; always stopped by `close()`."""

    def __init__(self, tmp_dir: Path, *args: str, heartbeat_interval_ns: int = 100 * MS):
        self.ctl = StubController(heartbeat_interval_ns=heartbeat_interval_ns)
        self.log_path = Path(tmp_dir) / "worker.log"
        self._log = open(self.log_path, "wb")
        self.proc: subprocess.Popen = spawn_worker(self.ctl.endpoint, *args, stderr=self._log)
        self.hello = None

    def start(self, timeout_s: float = 60.0) -> "WorkerProcess":
        try:
            self.hello = self.ctl.wait_hello(timeout_s)
        except TimeoutError:
            raise TimeoutError(f"worker sent no HELLO; its log:\n{self.log()}") from None
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> int | None:
        try:
            return stop_worker(self.proc)
        finally:
            self._log.close()
            self.ctl.close()


def direct_run(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def cores_of_threads(pid: int) -> list[set[int]]:
    """Each thread's allowed cores, from /proc (Cpus_allowed_list: "0-1", "3", "0,2-3")."""
    out = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        line = next(l for l in status.read_text().splitlines() if l.startswith("Cpus_allowed_list:"))
        cores = set()
        for part in line.split(":", 1)[1].strip().split(","):
            low, _, high = part.partition("-")
            cores.update(range(int(low), int(high or low) + 1))
        out.append(cores)
    return out


def holds_the_device(pid: int, device: str = cpu_latency.DEVICE) -> bool:
    """Whether process `pid` has `device` open (common/cpu_latency.py holds its request so)."""
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) == device for fd in fds.iterdir() if fd.is_symlink())
