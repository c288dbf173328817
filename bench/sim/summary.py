"""A run's summary: the numbers (`summarize`), as text (`format_result`), on disk
(`write_summary`), and two schedulers side by side (`comparison`)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from clockwork.bench.report import format_table, write_json
from clockwork.bench.sim.config import GB, NS_PER_S, RunSpec, capacity_per_s
from clockwork.bench.sim.events import Simulation


def summarize(spec: RunSpec, sim: Simulation, duration_ns: int, wall_s: float) -> dict:
    """The JSON-ready numbers of a run (the measured window; the warm-up in `warmup`)."""
    out, warm = sim.out, sim.warm
    seconds = max(1e-9, (duration_ns - spec.sim.measure_from_ns) / NS_PER_S)
    counters = Counter(sim.core.counters)
    counters.subtract(sim.counters_at_measure)
    util = sim.utilisation()
    return {
        "scheduler": spec.scheduler,
        "workload": spec.workload,
        "seed": spec.sim.seed,
        "workload_seed": spec.workload_seed,
        "models": spec.models,
        "gpus": spec.sim.gpus,
        "workers": spec.sim.workers,
        "devices_per_worker": spec.sim.devices_per_worker,
        "gpu_memory_gb": spec.sim.device_memory_bytes / GB,
        "slo_ms": spec.slo_ms,
        "simulated_s": duration_ns / NS_PER_S,
        "measured_from_s": spec.sim.measure_from_ns / NS_PER_S,
        "prewarm_s": spec.prewarm_s,
        "wall_s": round(wall_s, 3),
        "offered": out.offered,
        "offered_per_s": out.offered / seconds,
        "capacity_bound_per_s": capacity_per_s(spec.sim.gpus),
        "admitted": out.admitted,
        "rejected": sum(out.rejected.values()),
        "rejected_by_status": dict(sorted(out.rejected.items())),
        "answered": out.answered,
        "unanswered": out.offered - out.answered,
        "duplicates": sim.duplicates,
        "replies_by_status": dict(sorted(out.by_status.items())),
        "ok": out.ok,
        "met_slo": out.met_slo,
        "ok_late": out.ok - out.met_slo,
        "dropped_after_admission": out.answered - sum(out.rejected.values()) - out.ok,  # admitted, answered not OK
        "goodput_per_s": out.met_slo / seconds,
        "slo_attainment_admitted": out.met_slo / out.admitted if out.admitted else None,
        "slo_attainment_executed": out.met_slo / out.ok if out.ok else None,
        "slo_attainment_all": out.met_slo / out.offered if out.offered else None,
        "latency_ok_ms": out.latency.summary_ms(),
        "latency_admitted_ms": out.admitted_latency.summary_ms(),
        "cold_starts": out.cold_starts,
        "loads": counters.get("loads_sent", 0),
        "evictions": counters.get("evictions", 0),
        "batch_sizes": {str(k): v for k, v in sorted(out.batch_sizes.items())},
        "gpu_utilisation": {"mean": float(np.mean(util)), "min": float(np.min(util)), "max": float(np.max(util))},
        "gpu_idle_with_work": dict(zip(("controller", "worker"), sim.idle_with_work())),
        "core_cpu_s": out.core_cpu_ns / 1e9,
        "core_cpu_us_per_request": out.core_cpu_ns / 1e3 / max(out.offered, 1),
        "core_setup_cpu_s": sim.setup_cpu_ns / 1e9,
        "core_calls": sim.core_calls,
        "ticks": sim.ticks,
        "events": sim.events,
        "device_actions": dict(sorted(sim.cluster.device_actions.items())),
        "core_counters": {k: v for k, v in sorted(counters.items()) if v},
        "prediction": sim.core.latency.error_summary(),
        "warmup": {
            "offered": warm.offered, "admitted": warm.admitted, "met_slo": warm.met_slo, "ok": warm.ok,
            "replies_by_status": dict(sorted(warm.by_status.items())), "core_cpu_s": warm.core_cpu_ns / 1e9,
        },
        "per_second": sim.per_second,
        "latencies": out.latency,  # not JSON; write_summary leaves it out
    }


def format_result(s: dict) -> str:
    lat = s["latency_ok_ms"]
    pct = lambda v: "-" if v is None else f"{100 * v:.4f}%"
    warm = s["warmup"]
    rows = [
        ("scheduler", s["scheduler"]),
        ("cluster", f"{s['gpus']} GPUs ({s['workers']} x {s['devices_per_worker']}), {s['gpu_memory_gb']:g} GB each"),
        ("workload", f"{s['workload']}, {s['models']} models, SLO {s['slo_ms']:g} ms"),
        ("simulated / wall", f"{s['simulated_s']:.1f} s (measured from {s['measured_from_s']:g} s) / {s['wall_s']:.1f} s"),
        ("offered", f"{s['offered']} ({s['offered_per_s']:.0f}/s; batch-16 bound {s['capacity_bound_per_s']:.0f}/s)"),
        ("admitted", s["admitted"]),
        ("rejected", f"{s['rejected']} {s['rejected_by_status']}"),
        ("replies", s["replies_by_status"]),
        ("goodput", f"{s['goodput_per_s']:.1f}/s ({s['met_slo']} in SLO, {s['ok_late']} OK but late)"),
        ("SLO attainment", f"admitted {pct(s['slo_attainment_admitted'])}, executed "
                           f"{pct(s['slo_attainment_executed'])}, all {pct(s['slo_attainment_all'])}"),
        ("latency OK (ms)", "  ".join(f"{k} {v:.2f}" for k, v in lat.items() if v is not None and not math.isnan(v))),
        ("cold starts / loads / evictions", f"{s['cold_starts']} / {s['loads']} / {s['evictions']}"),
        ("batch sizes", "  ".join(f"{k}:{v}" for k, v in s["batch_sizes"].items())),
        ("GPU busy", "mean {mean:.2f}  min {min:.2f}  max {max:.2f}".format(**s["gpu_utilisation"])),
        ("GPU idle, work waiting", "on the controller {controller:.4f}  on the worker {worker:.4f}"
                                   .format(**s["gpu_idle_with_work"])),
        ("core CPU", f"{s['core_cpu_s']:.2f} s = {s['core_cpu_us_per_request']:.1f} us/request "
                     f"({s['core_calls']} calls, {s['ticks']} ticks)"),
        ("unanswered / duplicates", f"{s['unanswered']} / {s['duplicates']}"),
    ]
    if "process_cpu_s" in s:
        rows.append(("process CPU (whole run)", f"{s['process_cpu_s']:.1f} s"))
    if warm["offered"]:
        rows.append(("warm-up (not above)", f"offered {warm['offered']}, met SLO {warm['met_slo']}, "
                                            f"replies {warm['replies_by_status']}"))
    return format_table(rows)


def write_summary(out_dir: str | Path, s: dict, name: str = "sim") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(out_dir / f"{name}-summary.json", {k: v for k, v in s.items() if k != "latencies"})
    (out_dir / f"{name}-summary.txt").write_text(format_result(s) + "\n")
    return path


def comparison(clockwork: dict, baseline: dict) -> dict:
    ratio = clockwork["goodput_per_s"] / baseline["goodput_per_s"] if baseline["goodput_per_s"] else math.inf
    both = {"clockwork": clockwork, baseline["scheduler"]: baseline}
    return {
        "offered_per_s": clockwork["offered_per_s"],
        "goodput_ratio": ratio,
        "goodput_per_s": {k: v["goodput_per_s"] for k, v in both.items()},
        "p99_ok_ms": {k: v["latency_ok_ms"]["p99"] for k, v in both.items()},
        "p99_admitted_ms": {k: v["latency_admitted_ms"]["p99"] for k, v in both.items()},
        "slo_attainment_all": {k: v["slo_attainment_all"] for k, v in both.items()},
        "slo_attainment_admitted": {k: v["slo_attainment_admitted"] for k, v in both.items()},
    }


def format_comparison(clockwork: dict, baseline: dict) -> str:
    c = comparison(clockwork, baseline)
    names = list(c["goodput_per_s"])
    rows = [("goodput /s", *(f"{c['goodput_per_s'][n]:.1f}" for n in names)),
            ("p99 of OK replies (ms)", *(c["p99_ok_ms"][n] for n in names)),
            ("p99 of admitted (ms)", *(c["p99_admitted_ms"][n] for n in names)),
            ("SLO attainment, admitted", *(c["slo_attainment_admitted"][n] for n in names)),
            ("SLO attainment, all", *(c["slo_attainment_all"][n] for n in names))]
    return (f"== {' vs '.join(names)} at {c['offered_per_s']:.0f} req/s offered: goodput ratio "
            f"{c['goodput_ratio']:.2f}x ==\n" + format_table(rows, header=("", *names)))

