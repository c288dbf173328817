"""The onnxruntime runtime: each device is a CPU core set running one session at a time.

Predictability on a CPU comes from not sharing: one EXEC lane runs one `session.run` at a time
with `threads_per_lane` intra-op threads (1 by default: measured, 2 intra-op threads on 2 shared
cores put p99 at 9-22x the median; 1 thread keeps it at 1.1-1.4x), one inter-op thread and
sequential execution. PREPARE validates the model by building a session once, off the lanes,
and keeps the bytes in host memory; LOAD builds the device's session from those bytes and runs
it once, so that no EXEC pays for its first run.

A large model stays in the file it was spooled to, and its sessions read its weights from there
as external data (onnx_mapping): onnxruntime then maps each weight and lets it go once packed,
instead of parsing all of them onto the heap before packing, so building a session costs the
packed weights plus the one tensor being packed, not twice the model (docs/benchmarks.md, "big-model").
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clockwork.common.affinity import CoreClaims, allowed_cores, default_claims_dir
from clockwork.common.clock import monotonic_ns
from clockwork.common.config import HOST_DEVICE_MEMORY_BYTES
from clockwork.common.models import Signature
from clockwork.common.status import Status
from clockwork.worker.runtimes.onnx_mapping import NotMappable, external_header
from clockwork.worker.runtimes.base import (DeviceInfo, PreparedModel, Profile, Runtime, RuntimeFailure, RuntimeUnavailable,
                                  percentile_ns, sample_inputs, timed_runs)

PROFILE_PERCENTILE = 90  # exec time reported per batch size: a high percentile of the runs
ORT_LOG_ERRORS_ONLY = 3


def lane_cores(devices: int, threads: int, allowed: set[int], taken: set[int] = frozenset()) -> dict[int, set[int]]:
    """The cores each device's EXEC lane has to itself: the highest of `allowed` that other
    workers' lanes have not `taken`, one per device, the rest left to everything else (the
    worker's other threads, LOADs and PREPAREs). None are pinned when that leaves no core over,
    or with more than one thread per lane (onnxruntime starts a lane's pool threads on the LOAD
    lane, where the pin would not reach them)."""
    cores = sorted(allowed - taken)
    if threads != 1 or devices >= len(cores):
        return {}
    return {device: {cores[-1 - device]} for device in range(devices)}


def claim_lane_cores(devices: int, threads: int, allowed: set[int], claims: CoreClaims,
                     tries: int = 3) -> dict[int, set[int]]:
    """`lane_cores` of `allowed`, claimed host-wide (common/affinity.CoreClaims); another worker
    claiming at the same moment makes us look again."""
    for _ in range(tries):
        chosen = lane_cores(devices, threads, allowed, claims.taken(allowed))
        if not chosen or claims.claim(set().union(*chosen.values())):
            return chosen
    return {}


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeUnavailable(f"onnxruntime is not installed: {exc}") from None
    return onnxruntime


@dataclass(frozen=True)
class MappedOnnx:
    """A spooled model as its sessions read it: `header` is the model with its large weights
    referring to byte ranges of `path` (onnx_mapping.external_header)."""

    path: Path
    header: bytes


@dataclass(frozen=True)
class _Loaded:
    session: Any  # onnxruntime.InferenceSession
    output_names: tuple[str, ...]


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnx",)
    reads_files = True  # a spooled model's sessions map its weights from the file (MappedOnnx)

    def __init__(self, config):
        self._ort = _ort()
        if "CPUExecutionProvider" not in self._ort.get_available_providers():
            raise RuntimeUnavailable("onnxruntime has no CPUExecutionProvider")
        self._config = config
        self._threads = max(1, int(config.threads_per_lane))
        self._claims = CoreClaims(config.lane_claims_dir or default_claims_dir())
        # The cores the worker started with (none where threads cannot be pinned): looked at
        # later from a thread kept off some of them, the host's lanes must still be probed on all.
        self._allowed = allowed_cores()
        self._lane_cores = (claim_lane_cores(config.devices, self._threads, self._allowed, self._claims)
                            if config.pin_lanes else {})
        self._pinned: set[int] = set()  # native ids of the EXEC lane threads pinned so far

    def reserved_cores(self) -> set[int]:
        return set().union(*self._lane_cores.values())

    def lane_cores_on_host(self) -> set[int]:
        return self.reserved_cores() | self._claims.taken(self._allowed)

    def close(self) -> None:
        self._claims.release()

    def pinned_threads(self) -> set[int]:
        return set(self._pinned)

    def lane_started(self, device_id: int, lane: str) -> None:
        if lane == "exec" and device_id in self._lane_cores:
            os.sched_setaffinity(0, self._lane_cores[device_id])  # this thread only (Linux)
            self._pinned.add(threading.get_native_id())

    def devices(self) -> list[DeviceInfo]:
        kind = f"cpu-{self._threads}t"
        return [DeviceInfo(i, kind, self._config.device_memory_bytes or HOST_DEVICE_MEMORY_BYTES) for i in range(self._config.devices)]

    def session_options(self):
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = ORT_LOG_ERRORS_ONLY
        return opts

    def _session(self, model: bytes | MappedOnnx, prepack: bool = True):
        """A session from the model's bytes, or from its spooled file. Without `prepack` the
        weights are used as they are (a session that only proves the model loads)."""
        opts = self.session_options()
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            if isinstance(model, MappedOnnx):
                return self._mapped_session(model, opts)
            return self._ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()
            reason = first[0][:500] if first else type(exc).__name__
            raise RuntimeFailure(Status.RUNTIME_ERROR, f"onnxruntime cannot load the model: {reason}")

    def _mapped_session(self, model: MappedOnnx, opts):
        # onnxruntime finds external data beside the model file it reads, so the header is
        # written next to the spooled file for the time the session takes to build.
        with tempfile.NamedTemporaryFile(prefix=f"{model.path.name}.", suffix=".header.onnx", dir=model.path.parent) as fh:
            fh.write(model.header)
            fh.flush()
            return self._ort.InferenceSession(fh.name, opts, providers=["CPUExecutionProvider"])

    def prepare(self, model_id: str, digest: str, fmt: str, blob: bytes | Path, signature: Signature) -> PreparedModel:
        if fmt != "onnx":
            raise RuntimeFailure(Status.BAD_MODEL, f"the onnxruntime runtime serves ONNX models, not {fmt!r}")
        if isinstance(blob, Path):  # a spooled model stays in its file
            try:
                model: bytes | MappedOnnx = MappedOnnx(blob, external_header(blob))
            except NotMappable as exc:
                raise RuntimeFailure(Status.BAD_MODEL, f"the ONNX model cannot be read: {exc}")
        else:
            model = bytes(blob)
        self._session(model, prepack=False)  # fail here, off the lanes, if onnxruntime cannot run it
        size = blob.stat().st_size if isinstance(blob, Path) else len(model)
        return PreparedModel(model_id, digest, signature, size, model)

    def profile(self, device_id: int, model: PreparedModel, batch_sizes: list[int], runs: int) -> Profile:
        start = monotonic_ns()
        session = self.load(device_id, model)
        load_ns = monotonic_ns() - start
        exec_ns = {batch: percentile_ns(timed_runs(lambda x: self.execute(device_id, session, x),
                                                   sample_inputs(model.signature, batch), runs), PROFILE_PERCENTILE)
                   for batch in batch_sizes}
        return Profile(load_ns, exec_ns)

    def load(self, device_id: int, model: PreparedModel) -> _Loaded:
        """A session from the model's bytes, run once on zeros at batch 1 before it is handed
        over: a session's first run takes up to twice its later ones (its buffers are allocated
        then), and an EXEC that met it after each cold LOAD ran late and put an outlier into the
        latency window. On the LOAD lane, eight LOADs each of the generated CNN and the OCR
        classifier: their first EXEC at most 0.91-1.02 ms against 1.59-1.65 ms without (the
        later ones 0.77-0.90; a throwaway script). The profile's LOAD time includes the run. A
        model that fails on zeros is loaded all the same: its inputs, not the LOAD, decide."""
        session = self._session(model.host)
        loaded = _Loaded(session, tuple(o.name for o in session.get_outputs()))
        try:
            self.execute(device_id, loaded, sample_inputs(model.signature, 1))
        except RuntimeFailure:
            pass
        return loaded

    def unload(self, device_id: int, handle) -> None:
        pass  # dropping the last reference frees the session

    def execute(self, device_id: int, handle: _Loaded,
                inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        names = handle.output_names
        try:
            values = handle.session.run(names, inputs)
        except Exception as exc:
            first = str(exc).strip().splitlines()
            raise RuntimeFailure(Status.RUNTIME_ERROR, first[0][:500] if first else type(exc).__name__)
        return dict(zip(names, values)), None
