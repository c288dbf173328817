"""The measurements of `clockwork-bench gpu-check`: the torch runtime on a real GPU, beside PyTorch.

    python -m clockwork.bench.gpu_measure --out runs/gpu            # on a host with a CUDA GPU and torch
    python -m clockwork.bench.gpu_measure --out runs/gpu --quick    # fewer runs and shorter load steps
    python -m clockwork.bench.gpu_measure --out /tmp/m --device cpu --image 32 --quick   # the same steps on CPU torch

Three parts, each judged against a reference measured in the same run:
1. EXEC: torchvision's ResNet-50 (random weights, exported to ONNX here, nothing downloaded)
   served by the torch runtime and timed on a real worker EXEC lane, against the same converted
   module run directly in this process with a CUDA graph (what a careful user writes), and
   against PyTorch eager (what a quick one writes). p50/p99/p99.9 per batch size.
   Goals: lane p99 <= 1.05x direct p99 at batch 1 and 16; lane p99.9/p50 <= 1.10.
2. LOAD: time of a LOAD on the LOAD lane against the bytes it moves, for MLPs of 16 MiB to
   512 MiB and the ResNet-50 (a LOAD also captures the model's CUDA graphs).
3. SLO: a controller, a torch worker on the GPU and the load generator on this host. A short
   search finds the highest Poisson rate that keeps >= 99.9% of requests within the SLO
   (the capacity), then the load runs at 50%, 80% and 100% of it. Goal: >= 99.9% at 80%.

It writes gpu-measure.json and gpu-measure.png into --out and prints each figure as it goes.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import structlog

from clockwork.bench.capacity import Step, search
from clockwork.bench.device_lanes import DeviceLanes
from clockwork.bench.loadgen import run_open_loop
from clockwork.bench.models import mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster
from clockwork.bench.progress import Progress, say
from clockwork.bench.report import format_table, percentiles_ms, saved_figure, write_json
from clockwork.bench import workload
from clockwork.client import Client
from clockwork.common.config import MIB, TorchConfig, WorkerConfig
from clockwork.common.models import onnx_signature

PERCENTILES = (50.0, 99.0, 99.9)
EXEC_BATCHES = (1, 16)
MLP_MIB = (16, 64, 256, 512)
FRACTIONS = (0.5, 0.8, 1.0)
IN_SLO = 0.999
MODEL = "resnet50"
BLOCKS = 10  # lane and direct runs alternate in this many blocks
FRESH_LOADS = 3


@dataclass
class ExecRow:
    batch: int
    runs: int
    lane_ms: dict[str, float]  # wall time of one EXEC on the worker's EXEC lane
    lane_gpu_ms: dict[str, float]  # the same EXECs timed by CUDA events
    direct_ms: dict[str, float]  # the converted module with a CUDA graph, called directly
    eager_ms: dict[str, float]  # torchvision's module, eager, called directly
    max_abs_err: float  # lane outputs against the direct ones
    first_after_load_ms: list[float]  # the first EXEC after each of a few fresh LOADs


@dataclass
class LoadRow:
    model: str
    weights_mib: float  # what the LOAD holds on the device (measured at profile)
    load_ms: dict[str, float]


@dataclass
class SloRow:
    fraction: float
    rate: float
    offered: int
    within_slo: int
    refused: int
    p50_ms: float
    p99_ms: float
    batch_sizes: dict[int, int]
    not_ok: dict[str, int]  # status -> replies, other than OK

    @property
    def attainment(self) -> float:
        return self.within_slo / self.offered if self.offered else math.nan


@dataclass
class Report:
    environment: dict = field(default_factory=dict)
    execs: list[ExecRow] = field(default_factory=list)
    loads: list[LoadRow] = field(default_factory=list)
    load_ms_per_mib: float = math.nan
    capacity_per_s: float = 0.0
    capacity_steps: list[dict] = field(default_factory=list)
    slo: list[SloRow] = field(default_factory=list)
    verdicts: list[tuple[str, str, str, bool]] = field(default_factory=list)  # what, measured, goal, met


def resnet50(image: int = 224) -> tuple[Any, bytes]:
    """torchvision's ResNet-50 with random weights, and its ONNX export with a dynamic batch."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, image, image),), buf, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    return model, buf.getvalue()


# ------------------------------------------------------------------------------ EXEC


def time_on_lane(runtime: Any, handle: Any, inputs: dict, runs: int) -> tuple[list[int], list[int], dict]:
    """On the EXEC lane: `runs` EXECs; wall ns, GPU ns, and the last outputs."""
    wall, gpu = [], []
    outputs: dict = {}
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        outputs, gpu_ns = runtime.execute(0, handle, inputs)
        wall.append(time.perf_counter_ns() - t0)
        gpu.append(gpu_ns or 0)
    return wall, gpu, outputs


class Direct:
    """The same converted module, run the way a careful user would: pinned staging, one CUDA
    graph, copy in, replay, copy out, synchronize; all on this thread's own stream. (On CPU
    torch: the module called on the array.)"""

    def __init__(self, module: Any, x: np.ndarray, device: str):
        import torch

        self.torch, self.module, self.x, self.cuda = torch, module, x, device == "cuda"
        if not self.cuda:
            return
        self.stream = torch.cuda.Stream()
        with torch.cuda.stream(self.stream), torch.inference_mode():
            self.staging = torch.from_numpy(x).pin_memory()
            self.static_in = self.staging.cuda()
            module(self.static_in)  # warm-up
            self.stream.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.static_out = module(self.static_in)
            self.out_host = torch.empty_like(self.static_out, device="cpu").pin_memory()

    def run(self, runs: int) -> tuple[list[int], np.ndarray]:
        torch, took = self.torch, []
        with torch.inference_mode():
            if not self.cuda:
                for _ in range(runs):
                    t0 = time.perf_counter_ns()
                    result = self.module(torch.from_numpy(self.x)).numpy()
                    took.append(time.perf_counter_ns() - t0)
                return took, result
            with torch.cuda.stream(self.stream):
                for _ in range(runs):
                    t0 = time.perf_counter_ns()
                    self.staging.numpy()[...] = self.x
                    self.static_in.copy_(self.staging, non_blocking=True)
                    self.graph.replay()
                    self.out_host.copy_(self.static_out, non_blocking=True)
                    self.stream.synchronize()
                    result = self.out_host.numpy().copy()
                    took.append(time.perf_counter_ns() - t0)
        return took, result


def time_eager(model: Any, x: np.ndarray, runs: int, device: str) -> list[int]:
    """torchvision's module as a quick user calls it: tensor to the GPU, forward, result back."""
    import torch

    model = model.to(device)
    took = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            t0 = time.perf_counter_ns()
            model(torch.from_numpy(x).to(device)).cpu().numpy()
            took.append(time.perf_counter_ns() - t0)
    model.cpu()
    return took[1:]


def measure_exec(runtime: Any, lanes: DeviceLanes, torch_model: Any, blob: bytes, args: argparse.Namespace,
                 report: Report) -> Any:
    import onnx
    import onnx2torch

    from clockwork.worker.runtimes.torchrt import weights_as_initializers

    signature = onnx_signature(blob, {}, max(EXEC_BATCHES))
    model = runtime.prepare(MODEL, "gpu-check", "onnx", blob, signature)
    handle = lanes.call(lanes.load, lambda: runtime.load(0, model), "load")
    if handle.graph_error:
        say(f"note: the ResNet-50 runs eagerly on the lane: {handle.graph_error}")
    direct_module = onnx2torch.convert(weights_as_initializers(onnx.load_from_string(blob))).eval().to(args.device)
    rng = np.random.default_rng(0)
    try:
        for batch in EXEC_BATCHES:
            x = rng.standard_normal((batch, 3, args.image, args.image)).astype(np.float32)
            reference = Direct(direct_module, x, args.device)
            reference.run(args.warmup_runs)  # clocks up, caches warm
            lanes.call(lanes.exec, lambda: time_on_lane(runtime, handle, {"image": x}, 10), "exec")
            wall: list[int] = []
            gpu: list[int] = []
            direct: list[int] = []
            block = max(1, args.runs // BLOCKS)
            for _ in range(BLOCKS):  # interleaved, so both see the same GPU and host conditions
                w, g, outputs = lanes.call(lanes.exec, lambda: time_on_lane(runtime, handle, {"image": x}, block), "exec")
                d, expected = reference.run(block)
                wall += w
                gpu += g
                direct += d
            eager = time_eager(torch_model, x, max(50, args.runs // 10), args.device)
            first = first_after_load(runtime, lanes, model, {"image": x}, FRESH_LOADS)
            lane_ms, gpu_ms, direct_ms, eager_ms = (percentiles_ms(s, PERCENTILES) for s in (wall, gpu, direct, eager))
            row = ExecRow(batch, len(wall), lane_ms, gpu_ms, direct_ms, eager_ms,
                          float(np.max(np.abs(outputs["logits"] - expected))), first)
            report.execs.append(row)
            say(f"exec batch {batch}: lane p50 {row.lane_ms['p50']:.3f} p99 {row.lane_ms['p99']:.3f} "
                f"p99.9 {row.lane_ms['p99.9']:.3f} ms; direct graph p50 {row.direct_ms['p50']:.3f} p99 "
                f"{row.direct_ms['p99']:.3f} p99.9 {row.direct_ms['p99.9']:.3f} ms; eager p99 "
                f"{row.eager_ms['p99']:.3f} ms; first EXEC after a LOAD {', '.join(f'{v:.2f}' for v in first)} ms")
    finally:
        lanes.call(lanes.load, lambda: runtime.unload(0, handle), "unload")
    return model


def first_after_load(runtime: Any, lanes: DeviceLanes, model: Any, inputs: dict, loads: int) -> list[float]:
    """The first EXEC after each of `loads` fresh LOADs (what a cold start's EXEC costs), ms."""
    took = []
    for _ in range(loads):
        handle = lanes.call(lanes.load, lambda: runtime.load(0, model), "load")
        try:
            took.append(ns_to_ms(lanes.call(lanes.exec, lambda: time_on_lane(runtime, handle, inputs, 1), "exec")[0][0]))
        finally:
            lanes.call(lanes.load, lambda: runtime.unload(0, handle), "unload")
    return took


def ns_to_ms(ns: int) -> float:
    return round(ns / 1e6, 3)


# ------------------------------------------------------------------------------ LOAD


def mlp_of(mib: int) -> bytes:
    """An MLP whose weights are about `mib` MiB: four square float32 layers."""
    width = int(math.sqrt(mib * MIB / 4 / 4))
    return mlp_onnx(sizes=(width,) * 5, graph_name=f"mlp{mib}")


def measure_loads(runtime: Any, lanes: DeviceLanes, resnet: Any, args: argparse.Namespace, report: Report) -> None:
    load_runs = args.load_runs
    models = [(f"mlp-{mib}MiB", None, mlp_of(mib)) for mib in args.load_mib] + [(MODEL, resnet, b"")]
    for name, prepared, blob in models:
        if prepared is None:
            prepared = runtime.prepare(name, name, "onnx", blob, onnx_signature(blob, {}, 16))
        profile = lanes.call(lanes.exec, lambda: runtime.profile(0, prepared, [1, 16], 3), "profile")

        def loads() -> list[int]:
            took = []
            for _ in range(load_runs):
                t0 = time.perf_counter_ns()
                handle = runtime.load(0, prepared)
                took.append(time.perf_counter_ns() - t0)
                runtime.unload(0, handle)
            return took

        held = profile.weights_bytes if profile.weights_bytes is not None else prepared.weights_bytes
        row = LoadRow(name, round(held / MIB, 1), percentiles_ms(lanes.call(lanes.load, loads, "load"), PERCENTILES))
        report.loads.append(row)
        say(f"load {name}: {row.weights_mib:.0f} MiB on the device, p50 {row.load_ms['p50']:.1f} ms")
    mib = np.array([r.weights_mib for r in report.loads])
    ms = np.array([r.load_ms["p50"] for r in report.loads])
    report.load_ms_per_mib = float(np.polyfit(mib, ms, 1)[0]) if len(mib) > 1 else math.nan


# ------------------------------------------------------------------------------ SLO


def measure_slo(run_dir: Path, blob: bytes, args: argparse.Namespace, report: Report) -> None:
    x = {"image": np.random.default_rng(1).standard_normal((1, 3, args.image, args.image)).astype(np.float32)}
    worker = WorkerSpec("torch", "torch", extra_args=("--set", f'torch.device="{args.device}"'))
    with cluster(run_dir, [worker], ready_timeout_s=120) as c:
        with Client(c.client_endpoint, timeout_s=120) as client:
            client.upload(blob, MODEL)
            for _ in range(20):
                client.infer(MODEL, x, slo_ms=1000)
            say(f"after 20 requests: scheduler {client.status()['scheduler']}")

            def play(rate: float, seconds: float, seed: int, label: str) -> Any:
                schedule = workload.poisson_schedule([rate], seconds, seed)
                with Progress(total_s=seconds, label=label) as bar:
                    return run_open_loop(c.client_endpoint, schedule, [MODEL], args.slo_ms, {MODEL: x}, bar)

            def judge(rate: float) -> Step:
                r = play(rate, args.step_s, int(rate), f"search {rate:.0f}/s")
                share = r.met_slo / r.scheduled if r.scheduled else 0.0
                not_ok = {k: v for k, v in r.by_status.items() if k != "OK"}
                say(f"search {rate:.0f}/s: {100 * share:.2f}% within {args.slo_ms:g} ms, p99 "
                    f"{r.latency.percentile_ms(99):.2f} ms" + (f"; {not_ok}, first: "
                    f"{[r.first_detail.get(k) for k in not_ok][:1]}" if not_ok else ""))
                return Step(rate, share >= IN_SLO, share, p99_ms=r.latency.percentile_ms(99), not_ok=not_ok)

            found = search(judge, args.start_rate, growth=1.6, precision=0.1, max_steps=args.search_steps)
            report.capacity_per_s = found.best_rate
            report.capacity_steps = [asdict(s) for s in found.steps]
            say(f"capacity: {found.best_rate:.0f}/s (bracket {found.bracket[0]:.0f}-{found.bracket[1]:.0f}/s)")
            for i, fraction in enumerate(FRACTIONS):
                rate = fraction * found.best_rate
                if rate <= 0:
                    continue
                r = play(rate, args.run_s, 100 + i, f"{100 * fraction:.0f}% of capacity")
                row = SloRow(fraction, rate, r.scheduled, r.met_slo, r.rejected, r.latency.percentile_ms(50),
                             r.latency.percentile_ms(99), dict(r.batch_sizes),
                             {k: v for k, v in r.by_status.items() if k != "OK"})
                report.slo.append(row)
                say(f"{100 * fraction:.0f}% ({rate:.0f}/s): {100 * row.attainment:.3f}% within {args.slo_ms:g} ms, "
                    f"{row.refused} refused {row.not_ok or ''}, p99 {row.p99_ms:.2f} ms")
            say(f"scheduler after the runs: {client.status()['scheduler']}")


# ------------------------------------------------------------------------------ verdicts, outputs


def judge_report(report: Report) -> None:
    for row in report.execs:
        ratio = row.lane_ms["p99"] / row.direct_ms["p99"]
        report.verdicts.append((f"batch {row.batch}: lane p99 / direct p99", f"{ratio:.3f}", "<= 1.05", ratio <= 1.05))
        tail = row.lane_ms["p99.9"] / row.lane_ms["p50"]
        report.verdicts.append((f"batch {row.batch}: lane p99.9 / p50", f"{tail:.3f}", "<= 1.10", tail <= 1.10))
    if report.capacity_steps and not report.capacity_per_s:
        report.verdicts.append(("a rate kept 99.9% within the SLO", "none of "
                                f"{len(report.capacity_steps)} tried", "capacity > 0", False))
    for row in report.slo:
        if row.fraction == 0.8:
            report.verdicts.append(("SLO attainment at 80% of capacity", f"{100 * row.attainment:.3f}%", ">= 99.9%",
                                    row.attainment >= IN_SLO))


def plot(path: Path, report: Report, slo_ms: float) -> None:
    with saved_figure(path, ncols=3, figsize=(16, 4.5)) as (fig, axes):
        ax = axes[0]
        labels, width = list(PERCENTILES), 0.25
        for k, row in enumerate(report.execs):
            for j, (name, series) in enumerate((("lane", row.lane_ms), ("direct graph", row.direct_ms),
                                                ("eager", row.eager_ms))):
                xs = np.arange(len(labels)) + k * (len(labels) + 1) + (j - 1) * width
                ax.bar(xs, [series[f"p{p:g}"] for p in labels], width, label=f"{name}" if k == 0 else None,
                       color=f"C{j}")
        ax.set_xticks([k * (len(labels) + 1) + i for k in range(len(report.execs)) for i in range(len(labels))],
                      [f"b{r.batch} p{p:g}" for r in report.execs for p in labels], rotation=45)
        ax.set_ylabel("ms")
        ax.set_title("ResNet-50 exec: worker lane vs direct")
        if report.execs:
            ax.legend()
        ax = axes[1]
        ax.plot([r.weights_mib for r in report.loads], [r.load_ms["p50"] for r in report.loads], "o-")
        for r in report.loads:
            ax.annotate(r.model, (r.weights_mib, r.load_ms["p50"]), fontsize=7)
        ax.set_xlabel("MiB on the device")
        ax.set_ylabel("LOAD p50, ms")
        ax.set_title(f"LOAD vs bytes ({report.load_ms_per_mib:.3f} ms/MiB)")
        ax = axes[2]
        ax.plot([100 * r.fraction for r in report.slo], [100 * r.attainment for r in report.slo], "o-")
        ax.axhline(100 * IN_SLO, color="grey", linestyle="--", label="99.9%")
        ax.set_xlabel(f"% of capacity ({report.capacity_per_s:.0f}/s)")
        ax.set_ylabel(f"% within {slo_ms:g} ms")
        ax.set_title("SLO attainment")
        ax.legend()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clockwork.bench.gpu_measure", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu-measure.json and gpu-measure.png")
    p.add_argument("--runs", type=int, default=3000, help="timed EXECs per batch size, lane and direct each")
    p.add_argument("--warmup-runs", type=int, default=500, help="direct EXECs before timing each batch size")
    p.add_argument("--load-runs", type=int, default=10)
    p.add_argument("--load-mib", type=lambda s: tuple(int(x) for x in s.split(",")), default=MLP_MIB,
                   help="sizes of the MLPs whose LOADs are timed, MiB (comma-separated)")
    p.add_argument("--slo-ms", type=float, default=25.0)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the same steps on CPU torch")
    p.add_argument("--image", type=int, default=224, help="ResNet-50 input height and width")
    p.add_argument("--start-rate", type=float, default=200.0, help="first rate of the capacity search")
    p.add_argument("--search-steps", type=int, default=8)
    p.add_argument("--step-s", type=float, default=4.0, help="seconds per capacity-search step")
    p.add_argument("--run-s", type=float, default=12.0, help="seconds at each share of capacity")
    p.add_argument("--quick", action="store_true", help="300 runs, 3 loads, 2 s steps, 5 s runs")
    p.add_argument("--skip", action="append", default=[], choices=("exec", "load", "slo"))
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.warmup_runs, args.load_runs, args.step_s, args.run_s = 300, 50, 3, 2.0, 5.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from clockwork.worker.runtimes.torchrt import TorchRuntime

    runtime = TorchRuntime(WorkerConfig(runtime="torch", torch=TorchConfig(device=args.device)))
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (CPU torch)"
    report = Report({"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "image": args.image,
                     "device_memory_mib": runtime.devices()[0].memory_bytes // MIB})
    say(f"{report.environment}")
    lanes = DeviceLanes(runtime, 0, structlog.get_logger().bind(process="gpu-measure"))
    try:
        torch_model, blob = resnet50(args.image)
        resnet = None
        if "exec" not in args.skip:
            resnet = measure_exec(runtime, lanes, torch_model, blob, args, report)
        if "load" not in args.skip:
            if resnet is None:
                resnet = runtime.prepare(MODEL, MODEL, "onnx", blob, onnx_signature(blob, {}, 16))
            measure_loads(runtime, lanes, resnet, args, report)
    finally:
        lanes.stop()
        runtime.close()
    if "slo" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="gpu-measure-") as run_dir:  # logs stay out of --out
            measure_slo(Path(run_dir), blob, args, report)
    judge_report(report)
    print(format_table([list(v[:3]) + ["met" if v[3] else "NOT MET"] for v in report.verdicts],
                       ["what", "measured", "goal", ""]))
    write_json(out / "gpu-measure.json", asdict(report))
    plot(out / "gpu-measure.png", report, args.slo_ms)
    return 0 if all(v[3] for v in report.verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
