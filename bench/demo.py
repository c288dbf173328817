"""`clockwork-bench demo`: the whole system on one machine, under an open-loop load, in ~40 s.

What it does:
1. Starts a controller, an onnxruntime worker (1 CPU device) and an emulated worker with
   several pretend GPUs, on loopback, with their state and logs in a temporary folder.
2. Uploads small generated ONNX MLPs and many copies of an emulated ResNet-50 (102 MB of
   weights, LOAD 8.3 ms, exec 2.7 ms at batch 1 .. 17.3 ms at batch 16) - more copies than the
   emulated devices' memory holds, so the controller has to LOAD and evict as demand moves.
3. Sends open-loop Poisson arrivals for --duration seconds (Zipf popularity over the emulated
   copies, so a long tail of rarely used models keeps causing cold starts).
4. Prints a summary and writes a latency CDF plot and a JSON summary to --out.
Every process it started is stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clockwork.bench import models as bench_models
from clockwork.bench import workload
from clockwork.bench.loadgen import rates_summary, run_open_loop
from clockwork.bench.procs import WorkerSpec, cluster, run_in_temp_dir
from clockwork.bench.progress import Progress, command_main, say as _say
from clockwork.bench.report import LoadResults, format_summary, prediction_counters, summarize, write_cdf_png, write_json
from clockwork.client import Client
from clockwork.common.status import Fault, Status

EMULATED = "emulated"
ONNX = "onnx"


@dataclass(frozen=True)
class DemoModel:
    name: str
    fmt: str  # "onnx" | "profile"
    blob: bytes
    group: str  # EMULATED | ONNX: shares an SLO and a line on the plot
    slo_ms: float
    inputs: dict[str, np.ndarray]  # what one request carries: {input name: [1, ...] array}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=500.0, help="total offered requests per second")
    p.add_argument("--emulated-devices", type=int, default=4, help="pretend GPUs in the emulated worker")
    p.add_argument("--emulated-device-mb", type=int, default=1024,
                   help="model memory per pretend GPU (1024: 9 ResNet-50 copies of 7 pages of 16 MiB)")
    p.add_argument("--models", type=int, default=60, help="emulated ResNet-50 copies to upload")
    p.add_argument("--onnx-models", type=int, default=2, help="ONNX MLPs served on the CPU worker")
    p.add_argument("--onnx-share", type=float, default=0.1, help="fraction of the rate sent to the ONNX MLPs")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity skew over the emulated copies (0: uniform)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="SLO of requests to emulated models")
    p.add_argument("--onnx-slo-ms", type=float, default=50.0, help="SLO of requests to the ONNX MLPs")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival schedule and model weights")
    p.add_argument("--out", default="out", help="folder for the plot and the JSON summary")
    p.add_argument("--keep", action="store_true", help="keep the temporary state and log folder")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any reply blames the (valid) request or the system, or goes unanswered")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for the daemons")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0:
        p.error("--duration and --rate must be positive")
    if args.models < 0 or args.onnx_models < 0 or args.models + args.onnx_models == 0:
        p.error("need at least one model")
    if not 0 <= args.onnx_share <= 1:
        p.error("--onnx-share must be within [0, 1]")
    return args


def build_models(args: argparse.Namespace) -> list[DemoModel]:
    out = []
    for i in range(args.onnx_models):
        blob = bench_models.mlp_onnx(seed=args.seed * 1000 + i, graph_name=f"mlp{i}")
        out.append(DemoModel(f"mlp-{i:02d}", "onnx", blob, ONNX, args.onnx_slo_ms,
                             bench_models.sample_inputs("onnx", blob, seed=i)))
    profile = bench_models.profile_json(bench_models.RESNET50_V100)
    inputs = bench_models.sample_inputs("profile", profile)
    digits = max(2, len(str(max(args.models - 1, 0))))
    for i in range(args.models):
        out.append(DemoModel(f"resnet50-{i:0{digits}d}", "profile", profile, EMULATED, args.slo_ms, inputs))
    return out


def offered_rates(args: argparse.Namespace, demo_models: Sequence[DemoModel]) -> np.ndarray:
    """Per-model rates: the ONNX share split evenly, the rest Zipf over the emulated copies."""
    n_onnx = sum(m.group == ONNX for m in demo_models)
    n_emu = len(demo_models) - n_onnx
    onnx_share = args.onnx_share if n_emu else 1.0
    onnx_share = onnx_share if n_onnx else 0.0
    rates = []
    if n_onnx:
        rates += list(workload.uniform_rates(args.rate * onnx_share, n_onnx))
    if n_emu:
        rates += list(workload.zipf_rates(args.rate * (1 - onnx_share), n_emu, args.zipf))
    return np.asarray(rates)


def upload_all(admin: Client, demo_models: Sequence[DemoModel], say) -> None:
    started = time.monotonic()
    for n, model in enumerate(demo_models, 1):
        admin.upload(model.blob, model.name, format=model.fmt, replace=True)
        if n == len(demo_models) or n % 20 == 0:
            say(f"  uploaded {n}/{len(demo_models)} models ({time.monotonic() - started:.1f} s)")


def residency(status: dict) -> str:
    parts = []
    for worker in status.get("workers", []):
        for dev in worker.get("devices", []):
            used, total = dev.get("used_bytes", 0), dev.get("memory_bytes", 0) or 1
            parts.append(f"{worker.get('name')}/{dev.get('device_id')}: {dev.get('loaded_count', 0)} models, "
                         f"{100 * used / total:.0f}% memory")
    return "; ".join(parts) or "-"


def run(args: argparse.Namespace) -> int:
    demo_models = build_models(args)
    schedule = workload.poisson_schedule(offered_rates(args, demo_models), args.duration, seed=args.seed)
    workers = [WorkerSpec("cpu", "onnxruntime", devices=1)] if args.onnx_models else []
    if args.models:
        workers.append(WorkerSpec("emu", "emulated", devices=args.emulated_devices,
                                  device_memory_mb=args.emulated_device_mb))
    return run_in_temp_dir("clockwork-demo-", args.keep, "demo",
                           lambda run_dir: serve_and_report(args, demo_models, schedule, workers, run_dir))


def serve_and_report(args: argparse.Namespace, demo_models: Sequence[DemoModel], schedule: workload.Schedule,
                     workers: Sequence[WorkerSpec], run_dir: Path) -> int:
    say = _say
    say(f"starting controller and workers ({', '.join(f'{w.name}: {w.runtime} x{w.devices}' for w in workers)})"
        f" in {run_dir}")
    with cluster(run_dir, workers, log_level=args.log_level, ready_timeout_s=args.ready_timeout) as c:
        with c.client() as admin:
            say(f"uploading {args.onnx_models} ONNX MLPs and {args.models} emulated ResNet-50 copies")
            upload_all(admin, demo_models, say)
            say(f"load: {rates_summary(schedule)}; SLO {args.slo_ms:g} ms emulated, "
                f"{args.onnx_slo_ms:g} ms ONNX")
            with Progress(args.duration, label="demo") as bar:
                results = run_open_loop(
                    c.client_endpoint, schedule, [m.name for m in demo_models],
                    {m.name: m.slo_ms for m in demo_models}, {m.name: m.inputs for m in demo_models}, bar,
                    groups={m.name: m.group for m in demo_models}, on_tick=c.check)
            c.check()
            status = admin.status()
    return 0 if report(args, demo_models, results, status, Path(args.out)) else 1


def report(args: argparse.Namespace, demo_models: Sequence[DemoModel], results: LoadResults, status: dict,
           out_dir: Path) -> bool:
    counters = status.get("counters", {}) if isinstance(status.get("counters"), dict) else {}
    summary = summarize(results, name="clockwork demo", prediction_error=prediction_counters(counters))
    print(format_summary(summary))
    print(f"\nresident at the end: {residency(status)}")
    if "loads_sent" in counters or "evictions" in counters:
        print(f"controller: {counters.get('loads_sent', '-')} LOADs, {counters.get('evictions', '-')} evictions")
    slos = {f"{g} SLO": s for g, s in sorted({(m.group, m.slo_ms) for m in demo_models})}
    series = {label: g.latency for label, g in sorted(results.groups.items())}
    png = write_cdf_png(out_dir / "demo-latency-cdf.png", series, slos, title="clockwork demo: latency CDF (OK replies)")
    data = summary.to_json()
    data["setup"] = {k: v for k, v in vars(args).items() if k not in ("keep",)}
    data["controller_counters"] = counters
    summary_path = write_json(out_dir / "demo-summary.json", data)
    print(f"\nwrote {png} and {summary_path}")
    problems = unexpected_replies(summary.by_status)
    if results.unanswered:
        problems["unanswered"] = results.unanswered
    if problems:
        print(f"warning: replies that a correct run never gives (valid requests, healthy daemons): {problems}",
              file=sys.stderr)
    if summary.ok == 0:
        print("demo failed: no request was served", file=sys.stderr)
        return False
    return not (args.strict and problems)


def unexpected_replies(by_status: dict[str, int]) -> dict[str, int]:
    """Statuses blaming the request or the system: the demo's requests are valid, so each is a bug.
    Capacity answers (WOULD_MISS_DEADLINE, QUEUE_FULL, ...) are the system working as designed."""
    out = {}
    for name, count in by_status.items():
        status = Status.__members__.get(name)
        if status is None or status.fault in (Fault.CALLER, Fault.SYSTEM):
            out[name] = count
    return out


main = command_main(parse_args, run, "demo")


if __name__ == "__main__":
    sys.exit(main())
