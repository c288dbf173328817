"""Runtimes execute models on devices; the worker picks one by name (imported lazily, so a
CPU-only host never imports TensorRT or PyTorch)."""

from __future__ import annotations

from clockwork.worker.runtimes.base import Runtime, RuntimeUnavailable


def create(name: str, config) -> Runtime:
    if name == "onnxruntime":
        from clockwork.worker.runtimes.onnxrt import OnnxRuntime

        return OnnxRuntime(config)
    if name == "emulated":
        from clockwork.worker.runtimes.emulated import EmulatedRuntime

        return EmulatedRuntime(config)
    if name == "tensorrt":
        from clockwork.worker.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(config)
    if name == "torch":
        from clockwork.worker.runtimes.torchrt import TorchRuntime

        return TorchRuntime(config)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; choose onnxruntime, emulated, tensorrt or torch")
