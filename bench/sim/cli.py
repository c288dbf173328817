"""Virtual-time simulator: the controller's real scheduling core against emulated GPUs.

`clockwork-bench sim` and `python -m clockwork.bench.sim`: one run, or `--compare` for Clockwork
and baseline (a) on the same arrivals; summaries and run logs go to `--out`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from clockwork.bench import workload
from clockwork.bench.progress import NullProgress, Progress
from clockwork.bench.report import write_cdf_png, write_json
from clockwork.bench.sim import instructions
from clockwork.bench.sim.config import GB, NS_PER_S, RunSpec, SimConfig, capacity_per_s
from clockwork.bench.sim.runs import SCHEDULERS, build_schedule, run
from clockwork.bench.sim.summary import comparison, format_comparison, format_result, write_summary
from clockwork.common.config import MS, SchedulerConfig

LOG_LIMIT = 2_000_000  # without --logs, request/action logs are kept only for runs this small


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench sim", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="clockwork")
    p.add_argument("--compare", action="store_true", help="run clockwork and baseline (a) on the same workload")
    p.add_argument("--models", type=int, default=4000)
    p.add_argument("--gpus", type=int, default=100, help="total GPUs (workers = gpus / devices per worker)")
    p.add_argument("--workers", type=int, default=0, help="overrides --gpus")
    p.add_argument("--devices-per-worker", type=int, default=4)
    p.add_argument("--gpu-memory-gb", type=float, default=16.0, help="model memory per GPU (1 GB = 1e9 bytes)")
    p.add_argument("--rate", type=float, default=0.0, help="offered requests/s in total")
    p.add_argument("--load-factor", type=float, default=0.25,
                   help="without --rate: the offered rate as a share of the batch-16 bound (GPUs x 925/s)")
    p.add_argument("--workload", choices=("azure", "poisson", "bursty", "closed"), default="azure")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent across models")
    p.add_argument("--azure-csv", default="", help="an Azure Functions 2019 invocations_per_function file")
    p.add_argument("--azure-scale", type=float, default=1.0)
    p.add_argument("--azure-start-minute", type=int, default=0)
    p.add_argument("--clients", type=int, default=1000, help="closed loop: concurrent clients")
    p.add_argument("--think-ms", type=float, default=0.0, help="closed loop: mean think time")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--measure-from-s", type=float, default=0.0,
                   help="requests sent before this are simulated but reported apart (warm-up)")
    p.add_argument("--prewarm-s", type=float, default=0.0,
                   help="first send one request per model, evenly over this long (reported as warm-up)")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=1, help="seeds the workload and the device noise")
    p.add_argument("--network-delay-ms", type=float, default=0.3)
    p.add_argument("--noise-sigma", type=float, default=0.01)
    p.add_argument("--outlier-prob", type=float, default=0.0)
    p.add_argument("--tick-every-ms", type=float, default=0.0)
    p.add_argument("--max-batch", type=int, default=16, help="baselines: Triton's max batch size")
    p.add_argument("--max-queue-delay-ms", type=float, default=1.0, help="baselines: Triton's max queue delay")
    p.add_argument("--baseline-replicas", action="store_true", help="baselines replicate hot models too")
    p.add_argument("--no-heartbeats", action="store_true")
    p.add_argument("--wire", action="store_true", help="every message through the codec (slow)")
    p.add_argument("--logs", action="store_true", help="write request/action logs whatever the run's size")
    p.add_argument("--no-logs", action="store_true", help="never write request/action logs")
    p.add_argument("--count-instructions", action="store_true",
                   help="count the core's instructions in the measured window under valgrind (slow: keep it short)")
    p.add_argument("--out", default="out/sim")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    workers = args.workers or max(1, math.ceil(args.gpus / args.devices_per_worker))
    sim = SimConfig(workers=workers, devices_per_worker=args.devices_per_worker,
                    device_memory_bytes=int(args.gpu_memory_gb * GB),
                    network_delay_ns=int(args.network_delay_ms * MS), noise_sigma=args.noise_sigma,
                    outlier_probability=args.outlier_prob, tick_every_ns=int(args.tick_every_ms * MS),
                    measure_from_ns=int(args.measure_from_s * NS_PER_S), heartbeats=not args.no_heartbeats,
                    wire=args.wire, seed=args.seed)
    sched = SchedulerConfig()
    if args.no_heartbeats:
        sched = replace(sched, worker_timeout_ns=1 << 60)
    rate = args.rate or args.load_factor * capacity_per_s(sim.gpus)
    return RunSpec(scheduler=args.scheduler, sim=sim, sched=sched, models=args.models, slo_ms=args.slo_ms,
                   workload=args.workload, rate_per_s=rate, duration_s=args.duration_s, zipf=args.zipf,
                   workload_seed=args.seed, clients=args.clients, think_ms=args.think_ms, azure_csv=args.azure_csv,
                   azure_scale=args.azure_scale, azure_start_minute=args.azure_start_minute,
                   max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                   baseline_replicas=args.baseline_replicas, prewarm_s=args.prewarm_s)


def _runlog_for(args: argparse.Namespace, schedule):
    """bench.runlog's RunLog when logs are wanted (and the module is there), else None."""
    if args.no_logs:
        return None
    size = len(schedule) if isinstance(schedule, workload.Schedule) else 0
    if not args.logs and size > LOG_LIMIT:
        return None
    try:
        from clockwork.bench.runlog import RunLog
    except ImportError:
        return None
    return RunLog()


def _write_outputs(args: argparse.Namespace, spec: RunSpec, s: dict, runlog, name: str) -> None:
    out_dir = Path(args.out)
    write_summary(out_dir, s, name)
    if runlog is not None:
        from clockwork.bench.runlog import write_run

        write_run(out_dir / name, runlog, f"{name}: {spec.workload}, {spec.sim.gpus} GPUs, {spec.models} models",
                  spec.slo_ms)
    else:
        write_cdf_png(out_dir / f"{name}-latency-cdf.png", {name: s["latencies"]}, spec.slo_ms,
                      title=f"{name}: latency of OK replies")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.count_instructions:
        why = "--compare runs two cores in one process" if args.compare else instructions.unavailable()
        if why:
            print(f"clockwork-bench sim: cannot count instructions: {why}", file=sys.stderr)
            return 2
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--count-instructions"]
        return instructions.relaunch(rest, Path(args.out), args.scheduler)
    spec = spec_from_args(args)
    schedule = build_schedule(spec)
    schedulers = ("clockwork", "fifo") if args.compare else (args.scheduler,)
    results = {}
    for name in schedulers:
        run_spec = replace(spec, scheduler=name)
        runlog = _runlog_for(args, schedule)
        progress = NullProgress() if args.quiet else Progress(spec.duration_s + spec.prewarm_s, label=f"sim {name}")
        with progress:
            s = run(run_spec, schedule=schedule, runlog=runlog, progress=progress)
        results[name] = s
        print(format_result(s), end="\n\n")
        _write_outputs(args, run_spec, s, runlog, name)
    if args.compare:
        print(format_comparison(results["clockwork"], results["fifo"]))
        write_json(Path(args.out) / "compare.json", comparison(results["clockwork"], results["fifo"]))
    print(f"written to {args.out}/", file=sys.stderr)
    return 0
