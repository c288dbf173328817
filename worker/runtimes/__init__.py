"""Runtimes execute models on devices; the worker picks one by name (imported lazily, so a
CPU-only host never imports TensorRT)."""

from __future__ import annotations

from worker.runtimes.base import Runtime, RuntimeUnavailable


def create(name: str, config) -> Runtime:
    if name == "onnxruntime":
        from worker.runtimes.onnxrt import OnnxRuntime

        return OnnxRuntime(config)
    if name == "emulated":
        from worker.runtimes.emulated import EmulatedRuntime

        return EmulatedRuntime(config)
    if name == "tensorrt":
        from worker.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(config)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; choose onnxruntime, emulated or tensorrt")
