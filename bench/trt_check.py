"""GPU-host check of the tensorrt runtime: build, load, run and time test engines.

On a host with an NVIDIA GPU, TensorRT and PyCUDA (`pip install '.[gpu]'`, docs/gpu-hosts.md):

    python -m clockwork.bench.trt_check                  # all checks, 10000 timed runs per batch size
    python -m clockwork.bench.trt_check --quick          # 1000 runs: a smoke test in under a minute
    python -m clockwork.bench.trt_check --json out.json  # also keep the numbers

For each device and each generated test model (an MLP and a small conv net, both with a dynamic
batch dimension, built with onnx.helper: nothing is downloaded) it:
1. PREPAREs the model (builds the engine into a fresh cache unless --cache-dir is given), then
   PREPAREs it again and checks that the plan cache answered (no second build);
2. LOADs and UNLOADs it repeatedly on the device's LOAD lane: LOAD time, and per MiB;
3. on the EXEC lane, for each batch size, checks the outputs against onnxruntime on the CPU,
   then times --runs EXECs: p50 / p99 / p99.9 / p99.99 of wall time and of GPU time (CUDA events).
The lanes are the worker's own (worker.lanes.Lane), one LOAD and one EXEC thread per device,
each calling the runtime's lane_started / lane_stopped, exactly as the worker drives a runtime.

Where there is no GPU, or TensorRT or PyCUDA is missing, it says so and exits 0. It exits 1 if a
check failed (wrong outputs, a cache miss on the second PREPARE, a runtime error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np
import structlog

from clockwork.bench.device_lanes import DeviceLanes
from clockwork.bench.models import mlp_onnx, sample_inputs
from clockwork.bench.report import format_table, percentiles_ms
from clockwork.common.config import WorkerConfig
from clockwork.common.models import onnx_signature
from clockwork.worker.runtimes.base import RuntimeUnavailable

BATCH_SIZES = (1, 2, 4, 8, 16)
PERCENTILES = (50.0, 99.0, 99.9, 99.99)
MIB = 1024 * 1024
# TensorRT may run float32 matmuls and convolutions in TF32 (10 mantissa bits) on Ampere and later.
RTOL = 2e-2


def conv_onnx(channels: int = 32, classes: int = 10, size: int = 64, seed: int = 0) -> bytes:
    """A small float32 conv net: image [N, 3, size, size] -> Conv/Relu x2 -> mean -> Gemm -> [N, classes]."""
    from onnx import TensorProto, helper, numpy_helper

    from clockwork.bench.models import IR_VERSION, OPSET

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:])) or 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [weight("w1", channels, 3, 3, 3), weight("w2", 2 * channels, channels, 3, 3),
             weight("fc", 2 * channels, classes), numpy_helper.from_array(np.zeros(classes, np.float32), "fcb")]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gpu-check")
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def check_models() -> dict[str, bytes]:
    return {"mlp": mlp_onnx(sizes=(512, 2048, 2048, 10)), "conv": conv_onnx()}


# ------------------------------------------------------------------------------ measuring


@dataclass
class ExecRow:
    device_id: int
    model: str
    batch: int
    runs: int
    wall_ms: dict[str, float]  # percentile label -> ms
    gpu_ms: dict[str, float]
    max_abs_err: float
    outputs_ok: bool


@dataclass
class LoadRow:
    device_id: int
    model: str
    weights_mib: float
    plan_source: str
    second_prepare_source: str
    pinned: bool
    load_ms: dict[str, float]
    ms_per_mib: float


@dataclass
class Report:
    environment: dict = field(default_factory=dict)
    loads: list[LoadRow] = field(default_factory=list)
    execs: list[ExecRow] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def reference_outputs(blob: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


def check_device(runtime: Any, lanes: DeviceLanes, device_id: int, name: str, blob: bytes, args: Any,
                 report: Report) -> None:
    signature = onnx_signature(blob, {}, max(args.batch_sizes))
    digest = f"gpu-check-{name}-{len(blob)}"
    model = runtime.prepare(name, digest, "onnx", blob, signature)
    again = runtime.prepare(name, digest, "onnx", blob, signature)  # must come from the plan cache
    kind = next(iter(model.extra["engine"]))
    first, second = model.extra["engine"][kind]["source"], again.extra["engine"][kind]["source"]
    if second != "cache":
        report.failures.append(f"{name}: the second PREPARE did not hit the plan cache ({second})")

    def loads() -> list[int]:
        samples = []
        for _ in range(args.load_runs):
            t0 = time.perf_counter_ns()
            handle = runtime.load(device_id, again)
            samples.append(time.perf_counter_ns() - t0)
            runtime.unload(device_id, handle)
        return samples

    load_ns = lanes.call(lanes.load, loads, "load")
    mib = model.weights_bytes / MIB
    load_ms = percentiles_ms(load_ns, PERCENTILES)
    report.loads.append(LoadRow(device_id, name, round(mib, 3), first, second, model.extra["engine"][kind]["pinned"],
                                load_ms, load_ms["p50"] / mib if mib else float("nan")))
    handle = lanes.call(lanes.load, lambda: runtime.load(device_id, again), "load")
    try:
        for batch in [b for b in args.batch_sizes if b <= signature.max_batch]:
            report.execs.append(lanes.call(lanes.exec, lambda: _time_batch(runtime, device_id, handle, name, blob,
                                                                          batch, args.runs), "exec"))
            if not report.execs[-1].outputs_ok:
                report.failures.append(f"{name} batch {batch}: outputs differ from onnxruntime "
                                       f"(max abs error {report.execs[-1].max_abs_err:.3g})")
    finally:
        lanes.call(lanes.load, lambda: runtime.unload(device_id, handle), "unload")


def _time_batch(runtime: Any, device_id: int, handle: Any, name: str, blob: bytes, batch: int, runs: int) -> ExecRow:
    """On the EXEC lane: check outputs once, then time `runs` EXECs of the same inputs."""
    inputs = sample_inputs("onnx", blob, batch=batch, seed=batch)
    outputs, _ = runtime.execute(device_id, handle, inputs)
    expected = reference_outputs(blob, inputs)
    err, ok = 0.0, True
    for key, ref in expected.items():
        diff = float(np.max(np.abs(outputs[key].astype(np.float64) - ref))) if ref.size else 0.0
        err = max(err, diff)
        ok &= bool(np.allclose(outputs[key], ref, rtol=RTOL, atol=RTOL * max(1.0, float(np.max(np.abs(ref))))))
    wall, gpu = [], []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        _, gpu_ns = runtime.execute(device_id, handle, inputs)
        wall.append(time.perf_counter_ns() - t0)
        gpu.append(gpu_ns or 0)
    return ExecRow(device_id, name, batch, runs, percentiles_ms(wall, PERCENTILES), percentiles_ms(gpu, PERCENTILES),
                   err, ok)


# ------------------------------------------------------------------------------ report


def format_report(report: Report) -> str:
    env = report.environment
    lines = [f"TensorRT {env.get('trt_version')}, CUDA_MODULE_LOADING={env.get('cuda_module_loading')}"]
    for d in env.get("devices", []):
        lines.append(f"device {d['device_id']}: {d['kind']}, {d['memory_bytes'] / MIB:.0f} MiB for models, "
                     f"SM clock {d.get('sm_clock_mhz') or '-'} MHz")
    lines += ["", "LOAD (plan already in pinned host memory; ms)", format_table(
        [[r.device_id, r.model, r.weights_mib, r.plan_source, r.second_prepare_source, "yes" if r.pinned else "NO",
          r.load_ms["p50"], r.load_ms["p99"], r.ms_per_mib] for r in report.loads],
        ["dev", "model", "MiB", "1st prepare", "2nd prepare", "pinned", "p50", "p99", "ms/MiB"])]
    lines += ["", "EXEC (wall = what the EXEC lane sees; gpu = CUDA events; ms)", format_table(
        [[r.device_id, r.model, r.batch, r.runs, *r.wall_ms.values(), r.gpu_ms["p50"], r.gpu_ms["p99"],
          r.wall_ms["p99"] / r.wall_ms["p50"] if r.wall_ms["p50"] else None, "ok" if r.outputs_ok else "WRONG"]
         for r in report.execs],
        ["dev", "model", "batch", "runs", "p50", "p99", "p99.9", "p99.99", "gpu p50", "gpu p99", "p99/p50", "outputs"])]
    lines.append("")
    lines += [f"FAILED: {f}" for f in report.failures] or ["all checks passed"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clockwork.bench.trt_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1, help="GPUs to check (the first N visible)")
    p.add_argument("--runs", type=int, default=10_000, help="timed EXECs per model and batch size")
    p.add_argument("--load-runs", type=int, default=20, help="timed LOADs per model")
    p.add_argument("--quick", action="store_true", help="1000 runs and 5 loads: a smoke test")
    p.add_argument("--batch-sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=BATCH_SIZES)
    p.add_argument("--cache-dir", default="", help="engine cache (default: a fresh temporary one)")
    p.add_argument("--json", default="", help="also write the numbers to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.load_runs = min(args.runs, 1000), min(args.load_runs, 5)
    return args


def run_check(args: argparse.Namespace, gpu: Any = None, out: TextIO = sys.stdout) -> int:
    """Run every check; `gpu` injects GpuLibraries (tests pass the fakes). Returns the exit code."""
    from clockwork.worker.runtimes.tensorrt import TensorRTRuntime

    log = structlog.get_logger().bind(process="gpu-check")
    with tempfile.TemporaryDirectory(prefix="clockwork-gpu-check-") as scratch:
        config = WorkerConfig(runtime="tensorrt", devices=args.devices, device_memory_bytes=0,
                              engine_cache_dir=args.cache_dir or scratch)
        try:
            runtime = TensorRTRuntime(config, gpu=gpu, log=log)
        except RuntimeUnavailable as exc:
            print(f"trt_check: skipped, no usable GPU here: {exc}", file=out)
            return 0
        report = Report({"trt_version": runtime.trt_version,
                         "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING", "(default)")})
        all_lanes = [DeviceLanes(runtime, d.device_id, log) for d in runtime.devices()]
        try:
            for device, lanes in zip(runtime.devices(), all_lanes):
                for name, blob in check_models().items():
                    try:
                        check_device(runtime, lanes, device.device_id, name, blob, args, report)
                    except Exception as exc:  # report and go on: one failure should not hide the rest
                        report.failures.append(f"device {device.device_id} {name}: {type(exc).__name__}: {exc}")
        finally:
            for lanes in all_lanes:
                lanes.stop()
            report.environment["devices"] = [{**asdict(d), "sm_clock_mhz": runtime.last_sm_clock_mhz(d.device_id)}
                                             for d in runtime.devices()]
            runtime.close()
    print(format_report(report), file=out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(report), fh, indent=1, default=str)
    return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    return run_check(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
