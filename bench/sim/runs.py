"""Building and running one simulated experiment: the core by name, the workload, the run."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from clockwork.bench import workload
from clockwork.bench.progress import Progress
from clockwork.bench.sim.config import NS_PER_S, RunSpec
from clockwork.bench.sim.events import Simulation
from clockwork.bench.sim.summary import summarize
from clockwork.common import gc_tuning
from clockwork.common.config import MS, SchedulerConfig
from clockwork.controller.baseline import BaselineConfig, FifoPolicy
from clockwork.controller.core import Core
from clockwork.controller.policy import ClockworkPolicy

SCHEDULERS = ("clockwork", "fifo", "fifo-timeout")


def make_core(scheduler: str, sched_cfg: SchedulerConfig, max_batch: int = 16, max_queue_delay_ns: int = MS,
              replicate: bool = False):
    """The scheduling core with a policy by name: Clockwork's, or baseline (a) `fifo` / (b) `fifo-timeout`."""
    if scheduler == "clockwork":
        return Core(sched_cfg, ClockworkPolicy())
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; one of {', '.join(SCHEDULERS)}")
    return Core(sched_cfg, FifoPolicy(BaselineConfig(max_batch=max_batch, max_queue_delay_ns=max_queue_delay_ns,
                                                     queue_timeout=scheduler == "fifo-timeout",
                                                     replicate_hot_models=replicate)))


def build_schedule(spec: RunSpec) -> workload.Schedule | workload.ClosedLoop:
    """The workload's arrivals, after the pre-warm requests if any (open loop only)."""
    sched = _workload_schedule(spec)
    if spec.prewarm_s <= 0 or isinstance(sched, workload.ClosedLoop):
        return sched
    step_ns = int(spec.prewarm_s * NS_PER_S) // spec.models
    warm = workload.Schedule(np.arange(spec.models, dtype=np.int64) * step_ns, np.arange(spec.models, dtype=np.int32),
                             int(spec.prewarm_s * NS_PER_S), np.full(spec.models, 1 / spec.prewarm_s))
    return workload.concat(warm, sched)


def _measured_spec(spec: RunSpec) -> RunSpec:
    """Pre-warm time counts as warm-up: measuring starts after it."""
    if spec.prewarm_s <= 0 or spec.workload == "closed":
        return spec
    return replace(spec, sim=replace(spec.sim, measure_from_ns=spec.sim.measure_from_ns + int(spec.prewarm_s * NS_PER_S)))


def _workload_schedule(spec: RunSpec) -> workload.Schedule | workload.ClosedLoop:
    if spec.workload == "closed":
        clients = workload.ClosedLoop.clients_for(spec.clients, spec.models, spec.workload_seed, spec.zipf)
        return workload.ClosedLoop(clients, spec.duration_s, spec.workload_seed, spec.think_ms / 1000.0)
    if spec.workload == "azure" and spec.azure_csv:
        return workload.read_azure_functions(spec.azure_csv, spec.models, spec.azure_scale, spec.workload_seed,
                                             spec.azure_start_minute, max(1, math.ceil(spec.duration_s / 60)))
    if spec.workload == "azure":
        return workload.azure_like_schedule(spec.rate_per_s, spec.models, spec.duration_s, spec.workload_seed,
                                            workload.AzureLike(zipf_exponent=spec.zipf))
    rates = workload.zipf_rates(spec.rate_per_s, spec.models, spec.zipf)
    if spec.workload == "poisson":
        return workload.poisson_schedule(rates, spec.duration_s, spec.workload_seed)
    if spec.workload == "bursty":
        # ON half the time at twice the rate: the same mean load, delivered in bursts.
        return workload.on_off_schedule(rates * 2, spec.duration_s, spec.workload_seed, on_s=5.0, off_s=5.0)
    raise ValueError(f"unknown workload {spec.workload!r}")


def run(spec: RunSpec, schedule=None, runlog=None, progress: Progress | None = None) -> dict:
    """Run one experiment; returns its summary (a dict; `latencies` holds the HDR histogram)."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    schedule = schedule if schedule is not None else build_schedule(spec)
    spec = _measured_spec(spec)
    sched_cfg = replace(spec.sched, record_actions=True) if runlog is not None else spec.sched
    core = make_core(spec.scheduler, sched_cfg, spec.max_batch, int(spec.max_queue_delay_ms * MS),
                     spec.baseline_replicas)
    sim = Simulation(core, spec.sim, spec.models, int(spec.slo_ms * MS), runlog=runlog, progress=progress)
    sim.setup()
    with gc_tuning.serving():  # the controller daemon's garbage-collector settings
        if isinstance(schedule, workload.ClosedLoop):
            sim.run_closed_loop(schedule)
        else:
            sim.run_open_loop(schedule)
    sim.log_unanswered()
    summary = summarize(spec, sim, schedule.duration_ns, time.monotonic() - wall0)
    summary["process_cpu_s"] = round(time.process_time() - cpu0, 3)  # the whole run: workload, sim and core
    return summary

