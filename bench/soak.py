"""`clockwork-bench soak`: minutes of mixed load, and nothing that only grows.

A controller and an emulated worker serve an open-loop Poisson load over six models whose SLOs
range from impossible (refused at once) through tight (some answered DEADLINE_MISSED while
queued) to loose, while a second client submits requests to a slow model and cancels half of
them. Every second the controller's and the worker's resident memory and open file
descriptors are sampled, with the sizes of what the scheduling core keeps (live requests,
actions in flight, answered ids it remembers, its lazily cleaned heaps: STATUS "scheduler").

Verdict: after the first third (warm-up: caches, first LOADs, the allocator's arenas, the
latency model's windows filling), the last third's maximum of each series must stay within its
slack of the middle third's: 4 MiB of memory, 2 descriptors, a quarter (and 16 entries) of a
table. A leak grows steadily and fails that; a bounded series does not. Writes soak.json and
soak.png (every series over time).

    clockwork-bench soak --duration-s 300 --rate 600
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from clockwork.bench import workload
from clockwork.bench.loadgen import run_open_loop
from clockwork.bench.models import RESNET50_V100, profile_json
from clockwork.bench.procs import WorkerSpec, cluster, run_in_temp_dir
from clockwork.bench.progress import Progress, command_main, say
from clockwork.bench.report import format_table, saved_figure, write_json
from clockwork.client import Client, ClockworkError
from clockwork.client.aio import AsyncClient

# model -> SLO (ms): 2 ms cannot be met even on an idle device (refused at once); 8 ms is tight
# (some become infeasible while queued); the rest are comfortable.
SLOS_MS = {"m-100": 100.0, "m-50": 50.0, "m-200": 200.0, "m-20": 20.0, "m-tight": 8.0, "m-refused": 2.0}
SLOW = {"weights_bytes": 10_000_000, "load_ms": 2, "exec_ms": {"1": 40}}  # what the canceller asks for
SLACK_RSS_KIB = 4 * 1024
SLACK_FDS = 2
TABLES = ("requests_live", "actions_in_flight", "answered_remembered", "give_up_heap", "expiry_looks",
          "planning_heap")


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """Every `interval_s`: memory and descriptors of each process, and the core's tables."""

    def __init__(self, endpoint: str, pids: dict[str, int], interval_s: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.endpoint, self.pids, self.interval_s = endpoint, pids, interval_s
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with Client(self.endpoint, timeout_s=10) as client:
            while not self.stop.wait(self.interval_s):
                sample = {"t_s": round(time.monotonic() - started, 2)}
                for name, pid in self.pids.items():
                    sample[f"{name}.rss_kib"] = proc_rss_kib(pid)
                    sample[f"{name}.fds"] = proc_fds(pid)
                scheduler = client.status(models_limit=0)["scheduler"]
                sample.update({f"core.{key}": scheduler[key] for key in TABLES})
                self.samples.append(sample)


def cancel_half(endpoint: str, stop: threading.Event, rate_per_s: float, counts: dict) -> None:
    """Submit requests to the slow model four at a time and cancel the last two straight away:
    they are still queued behind the first, so most cancels take."""

    async def main() -> None:
        async with AsyncClient(endpoint) as client:
            x = {"data": np.zeros((1, 16), np.float32)}
            pending = []
            while not stop.is_set():
                burst = [client.submit("slow", x, slo_ms=1000) for _ in range(4)]
                for handle in burst[2:]:
                    counts["cancelled"] += await handle.cancel()
                pending += burst
                await asyncio.sleep(4 / rate_per_s)
                while len(pending) > 200:  # keep what is awaited bounded too
                    try:
                        await pending.pop(0)
                    except ClockworkError as exc:
                        counts[exc.status.name] = counts.get(exc.status.name, 0) + 1
            for handle in pending:
                try:
                    await handle
                except ClockworkError:
                    pass

    asyncio.run(main())


def verdict(samples: list[dict]) -> list[tuple[str, float, float, bool]]:
    """(series, middle third's max, last third's max, bounded) for every series."""
    third = len(samples) // 3
    rows = []
    for key in [k for k in samples[0] if k != "t_s"]:
        middle = max(s[key] for s in samples[third:2 * third])
        last = max(s[key] for s in samples[2 * third:])
        kind = key.rsplit(".", 1)[1]
        slack = SLACK_RSS_KIB if kind == "rss_kib" else SLACK_FDS if kind == "fds" else middle // 4 + 16
        rows.append((key, middle, last, last <= middle + slack))
    return rows


def run(args: argparse.Namespace) -> int:
    models = list(SLOS_MS)

    def body(run_dir: Path) -> int:
        with cluster(run_dir, [WorkerSpec("emu", "emulated", devices=2, device_memory_mb=512)]) as c:
            with Client(c.client_endpoint, timeout_s=30) as admin:
                for name in models:
                    admin.upload(profile_json(RESNET50_V100), name, format="profile")
                admin.upload(profile_json(SLOW), "slow", format="profile")
            pids = {p.name.removeprefix("worker-"): p.pid for p in c.group.procs}
            sampler = Sampler(c.client_endpoint, pids, args.sample_s)
            stop, counts = threading.Event(), {"cancelled": 0}
            canceller = threading.Thread(target=cancel_half, args=(c.client_endpoint, stop, 20.0, counts), daemon=True)
            sampler.start()
            canceller.start()
            schedule = workload.poisson_schedule(workload.zipf_rates(args.rate, len(models), 0.5), args.duration_s,
                                                 args.seed)
            inputs = {m: {"data": np.zeros((1, 16), np.float32)} for m in models}
            try:
                with Progress(total_s=args.duration_s, label="soak") as bar:
                    results = run_open_loop(c.client_endpoint, schedule, models, SLOS_MS, inputs, bar)
            finally:
                stop.set()
                canceller.join(30)
                sampler.stop.set()
                sampler.join(30)
            c.group.check()
        samples = sampler.samples
        if len(samples) < 6:
            say("soak: too few samples for a verdict; run longer")
            return 1
        rows = verdict(samples)
        print(format_table([[k, m, l, "bounded" if ok else "GROWING"] for k, m, l, ok in rows],
                           ["series", "max, middle third", "max, last third", "verdict"]))
        print(f"\n{results.scheduled} requests: {dict(results.by_status)}; cancelled {counts['cancelled']}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "soak.json", {"samples": samples, "by_status": dict(results.by_status),
                                       "cancelled": counts["cancelled"],
                                       "verdict": [{"series": k, "middle_max": m, "last_max": l, "bounded": ok}
                                                   for k, m, l, ok in rows]})
        plot(out / "soak.png", samples)
        say(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
        return 0 if all(ok for *_, ok in rows) else 1

    return run_in_temp_dir("cw-soak-", args.keep, "soak", body)


def plot(path: Path, samples: list[dict]) -> None:
    keys = [k for k in samples[0] if k != "t_s"]
    t = [s["t_s"] for s in samples]
    with saved_figure(path, len(keys), 1, figsize=(8, 1.6 * len(keys)), sharex=True) as (_, axes):
        for ax, key in zip(axes, keys):
            ax.plot(t, [s[key] for s in samples])
            ax.set_ylabel(key, rotation=0, ha="right", fontsize=8)
        axes[-1].set_xlabel("seconds")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clockwork-bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--rate", type=float, default=400.0, help="requests/s over the six models")
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="out/soak")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    args = parser.parse_args(argv)
    if args.duration_s < 6 * args.sample_s:
        parser.error("--duration-s must hold at least six samples")
    return args


main = command_main(parse_args, run, "soak")


if __name__ == "__main__":
    sys.exit(main())
