"""Chaos: serve a workload while workers are killed and frozen and the controller restarts,
then check the promises that must survive it.

Faults (on a seeded schedule): SIGKILL a worker and start it again a moment later; SIGSTOP a
worker and SIGCONT it later; SIGKILL the controller and start a new one on the same state.
Clients are `AsyncClient`s, which resend unanswered requests under the same id.

Invariants checked afterwards:
- every request ends exactly once at its caller: with a reply, or with the client's own
  deadline error (only possible while no controller is up); none is left hanging;
- no request is answered after its deadline plus `--late-bound-ms` (counted, as its deadline
  is, from the call, not from when the schedule wanted it made);
- no registered model is lost;
- every daemon not killed on purpose is still running.
It also measures how long the controller takes to notice a killed and a frozen worker.

    clockwork-bench chaos --duration 60 --rate 200          # the long run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clockwork.bench.models import profile_json
from clockwork.bench.procs import Cluster, WorkerSpec, cluster, controller_argv, worker_argv
from clockwork.client import AsyncClient, ClockworkError, DeadlineExceeded

MS = 1_000_000


@dataclass
class Outcome:
    scheduled_ns: int
    called_ns: int = 0  # when the infer call was made: the client's deadline counts from here
    ended_ns: int = 0
    status: str = ""  # a Status name, or CLIENT_DEADLINE for the client's own timeout
    ends: int = 0  # how many times this request ended (must be 1)


@dataclass
class Report:
    outcomes: list[Outcome]
    slo_ms: float
    late_bound_ms: float
    detection_ms: dict[str, float] = field(default_factory=dict)
    models_lost: list[str] = field(default_factory=list)
    dead_daemons: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        out = []
        bad_ends = [o for o in self.outcomes if o.ends != 1]
        if bad_ends:
            out.append(f"{len(bad_ends)} requests did not end exactly once")
        # From the call, not from the schedule: how late this process's own loop made the call
        # (a fork to restart a daemon stalls it) is not the system's doing (`send_lag_ms`).
        limit_ns = (self.slo_ms + self.late_bound_ms) * MS
        late = [o for o in self.outcomes if o.status != "CLIENT_DEADLINE" and o.ended_ns - o.called_ns > limit_ns]
        if late:
            worst = max(o.ended_ns - o.called_ns for o in late) / MS
            kinds = ", ".join(f"{k} {v}" for k, v in Counter(o.status for o in late).most_common())
            out.append(f"{len(late)} answered later than SLO + {self.late_bound_ms:g} ms ({kinds}; worst {worst:.1f} ms)")
        if self.models_lost:
            out.append(f"models lost: {', '.join(self.models_lost)}")
        if self.dead_daemons:
            out.append(f"daemons died: {', '.join(self.dead_daemons)}")
        return out

    def send_lag_ms(self) -> float:
        """The most this process's loop made a call later than scheduled."""
        return max((o.called_ns - o.scheduled_ns for o in self.outcomes if o.called_ns), default=0) / MS

    def render(self) -> str:
        counts = Counter(o.status for o in self.outcomes)
        lines = [f"requests {len(self.outcomes)}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common())]
        lines.append(f"calls made up to {self.send_lag_ms():.1f} ms after their schedule (the harness's own lag)")
        lines += [f"fault: {f}" for f in self.faults]
        lines += [f"detection of a {k} worker: {v:.0f} ms" for k, v in self.detection_ms.items()]
        problems = self.violations()
        lines.append("invariants: " + ("all held" if not problems else "VIOLATED: " + "; ".join(problems)))
        return "\n".join(lines)


class Chaos:
    """The faults, applied to a running cluster; workers restart under the same name."""

    def __init__(self, c: Cluster, log_level: str = "warning"):
        self.c = c
        self.log_level = log_level
        self.generation = Counter()
        self.base = {"controller": "controller", **{s.name: f"worker-{s.name}" for s in c.workers}}
        self.current = dict(self.base)  # the process now running under each role
        self.faults: list[str] = []

    def _proc(self, name: str):
        return self.c.group.get(self.current[name])

    def kill(self, name: str) -> None:
        proc = self._proc(name)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)
        self.c.group.expect_exit(proc.name)
        self.faults.append(f"SIGKILL {name}")

    def restart(self, name: str) -> None:
        self.generation[name] += 1
        new = f"{self.base[name]}#{self.generation[name]}"
        if name == "controller":
            argv = controller_argv(self.c.state_dir, self.c.client_endpoint, self.c.worker_endpoint, self.log_level, ())
        else:
            spec = next(s for s in self.c.workers if s.name == name)
            argv = worker_argv(spec, self.c.worker_endpoint, self.log_level)
        self.c.group.start(new, argv)
        self.current[name] = new
        self.faults.append(f"restart {name}")

    def freeze(self, name: str) -> None:
        self._proc(name).popen.send_signal(signal.SIGSTOP)
        self.faults.append(f"SIGSTOP {name}")

    def thaw(self, name: str) -> None:
        self._proc(name).popen.send_signal(signal.SIGCONT)
        self.faults.append(f"SIGCONT {name}")


async def _request(cw: AsyncClient, model: str, inputs: dict, slo_ms: float, outcome: Outcome) -> None:
    outcome.called_ns = time.monotonic_ns()
    try:
        await cw.infer(model, inputs, slo_ms=slo_ms)
        outcome.status = "OK"
    except DeadlineExceeded:
        outcome.status = "CLIENT_DEADLINE"
    except ClockworkError as exc:
        outcome.status = exc.status.name
    outcome.ended_ns = time.monotonic_ns()
    outcome.ends += 1


async def drive(endpoint: str, models: list[str], rate: float, duration_s: float, slo_ms: float,
                seed: int) -> list[Outcome]:
    """Poisson arrivals at `rate` over `duration_s`, each to a random one of `models`: how each
    request ended (bench/multihost.py runs it in the clients' namespace too)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.2) + 10)
    times = np.cumsum(gaps)
    times = times[times < duration_s]
    picks = rng.integers(0, len(models), size=len(times))
    inputs = {"data": np.zeros((1, 16), np.float32)}
    outcomes, tasks = [], []
    async with AsyncClient(endpoint, timeout_s=5) as cw:
        start = time.monotonic_ns()
        for t, pick in zip(times, picks):
            scheduled = start + int(t * 1e9)
            delay = (scheduled - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = Outcome(scheduled)
            outcomes.append(outcome)
            tasks.append(asyncio.create_task(_request(cw, models[pick], inputs, slo_ms, outcome)))
        await asyncio.gather(*tasks)
    return outcomes


async def _time_until_gone(endpoint: str, worker: str, since_ns: int, timeout_s: float = 15.0) -> float:
    async with AsyncClient(endpoint, timeout_s=1) as cw:
        while (time.monotonic_ns() - since_ns) / 1e9 < timeout_s:
            try:
                status = await cw.status()
                if worker not in {w.get("name") for w in status.get("workers", [])}:
                    return (time.monotonic_ns() - since_ns) / MS
            except ClockworkError:
                pass
            await asyncio.sleep(0.01)
    return float("inf")


async def _faults(chaos: Chaos, workers: list[str], duration_s: float, seed: int) -> None:
    """Kill one worker, freeze another, restart the controller, spread over the run. Waiting for
    a killed process runs on a thread so the clients' loop does not stall; starting one stays on
    this thread, since a child asks to die with the thread that forked it."""
    rng = random.Random(seed)
    victims = rng.sample(workers, k=min(2, len(workers)))
    steps = [(0.15, chaos.kill, victims[0]), (0.1, chaos.restart, victims[0]), (0.15, chaos.freeze, victims[-1]),
             (0.1, chaos.thaw, victims[-1]), (0.15, chaos.kill, "controller"), (0.02, chaos.restart, "controller")]
    for share, fault, target in steps:
        await asyncio.sleep(duration_s * share)
        if fault == chaos.kill:
            await asyncio.to_thread(fault, target)
        else:
            fault(target)


async def _detect(chaos: Chaos, worker: str) -> dict[str, float]:
    """How long the controller takes to drop a killed and a frozen worker (after the run)."""
    out = {}
    await asyncio.to_thread(chaos.kill, worker)
    out["killed"] = await _time_until_gone(chaos.c.client_endpoint, worker, time.monotonic_ns())
    chaos.restart(worker)
    await asyncio.sleep(1.5)  # it rejoins
    chaos.freeze(worker)
    out["frozen"] = await _time_until_gone(chaos.c.client_endpoint, worker, time.monotonic_ns())
    chaos.thaw(worker)
    return out


def run(duration_s: float, rate: float, slo_ms: float, models: int, workers: int, seed: int,
        late_bound_ms: float, run_dir: Path, detect: bool = True) -> Report:
    specs = [WorkerSpec(f"emu{i}", "emulated", devices=2, device_memory_mb=512) for i in range(workers)]
    names = [f"resnet50-{i:02d}" for i in range(models)]
    with cluster(run_dir, specs) as c:
        with c.client() as admin:
            for name in names:
                admin.upload(profile_json(), name, format="profile")
        chaos = Chaos(c)

        async def main() -> tuple[list[Outcome], dict[str, float]]:
            driving = asyncio.create_task(drive(c.client_endpoint, names, rate, duration_s, slo_ms, seed))
            await _faults(chaos, [s.name for s in specs], duration_s, seed)
            outcomes = await driving
            await asyncio.sleep(2.0)  # the new controller settles and workers rejoin
            detection = await _detect(chaos, specs[0].name) if detect else {}
            return outcomes, detection

        outcomes, detection = asyncio.run(main())
        report = Report(outcomes, slo_ms, late_bound_ms, detection, faults=chaos.faults)
        time.sleep(1.5)  # the last restarted worker rejoins before the final checks
        with c.client(timeout_s=10) as admin:
            listed = {m["name"] for m in admin.list()}
        report.models_lost = sorted(set(names) - listed)
        killed_on_purpose = {p for p in c.group._expected_exit}
        report.dead_daemons = [p.name for p in c.group.procs if not p.alive() and p.name not in killed_on_purpose]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clockwork-bench chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--late-bound-ms", type=float, default=50.0,
                        help="how far past its deadline an answer may come (loop and network jitter)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-detect", action="store_true", help="skip the detection-time measurement")
    parser.add_argument("--keep", type=Path, help="keep logs and state in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clockwork-chaos-") as tmp:
        run_dir = args.keep or Path(tmp)
        report = run(args.duration, args.rate, args.slo_ms, args.models, args.workers, args.seed,
                     args.late_bound_ms, run_dir, detect=not args.no_detect)
    print(report.render())
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())
