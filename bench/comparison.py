"""What every comparison of this system with a plain server shares (`clockwork-bench versus`,
native and --gateway-json): the record of one target at one rate, the seeded schedules, the
rule for the rate a target sustains, and the plot."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from clockwork.bench import workload
from clockwork.bench.procs import WorkerSpec
from clockwork.bench.predictability import direct_session
from clockwork.bench.progress import say
from clockwork.bench.report import Latencies, answered_after_admission, saved_figure
from clockwork.client import Client, ClockworkError, DeadlineExceeded

MODEL = "model"
GAP_S = 0.05  # between lone requests: the system idles, as it does between real clients' calls
LONE_REQUESTS = 100
LONE_BLOCK = 10  # lone requests in a row to one target before the next one's (interleaved)
IN_SLO = 0.999  # a rate is sustained when this share of offered requests is answered within the SLO
SETTLE_SLO_MS = 120_000.0  # the probe that waits out a target's backlog before each rate


@dataclass(frozen=True)
class Point:
    """One target at one rate."""

    target: str
    rate: float  # requests/s asked for (0: the lone-request run)
    offered: int
    within_slo: int  # answered OK within the SLO
    refused: int  # answered with a refusal (any status but OK)
    unanswered: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    busy_share: float  # device time executing / wall time of the run
    too_many: int = 0  # of the refused, answered HTTP 429 (--gateway-json)
    timed_out: int = 0  # of the refused, answered HTTP 504: after the deadline (--gateway-json)
    refusal_p99_ms: float = math.nan  # how fast the 429s came back (--gateway-json)
    sender_late_p99_ms: float = math.nan  # how late the load generator sent: its own lag
    shed_at_door: int = 0  # of the 429s, the gateway's door's (--gateway-json, one gateway process)
    # Of the refused, those answered after admission (given up once queued: DEADLINE_MISSED or a
    # 504; a worker lost): misses of admitted requests, not refusals.
    after_admission: int = 0
    # This system's refusals and give-ups by reason, and its allowances when the rate ended
    # (bench.refusals.why): what a refusal count alone does not say.
    reasons: dict[str, int] = field(default_factory=dict)
    allowances: dict[str, float] = field(default_factory=dict)
    # The share of all the host's cores busy while the rate ran (bench.cpu.host_busy_share):
    # near 1, the run measured the host as much as the target.
    host_cpu: float = math.nan

    @property
    def share_within_slo(self) -> float:
        return self.within_slo / self.offered if self.offered else math.nan

    @property
    def admitted(self) -> int:
        return self.offered - self.refused + self.after_admission

    @property
    def admitted_within_slo(self) -> float:
        return self.within_slo / self.admitted if self.admitted else math.nan


def interleaved(calls: Mapping[str, Callable[[], object]], requests: int = LONE_REQUESTS, gap_s: float = GAP_S,
                block: int = LONE_BLOCK, warmup: int = 0) -> dict[str, np.ndarray]:
    """How long each call took (ns), `requests` times each, `gap_s` apart, after `warmup` calls
    to each that are not timed (a call with a `clear()` method then forgets what they did): lone
    requests to every target in blocks of `block`, the targets in turn (their order rotating
    each round), so that a machine whose speed drifts (a VM's neighbours come and go) moves them
    all alike; measured one target after the other, minutes apart, one server's lone p50
    differed by 0.35 ms between two runs. In blocks, as bench/overhead.py does, because a call right after another target's
    is colder: one at a time in turn, the plain server's lone p50 rose from 0.37 to 0.82 ms over
    the direct call, and this system's by as much."""
    names = list(calls)
    for _ in range(warmup):
        for call in calls.values():
            call()
    for call in calls.values():
        getattr(call, "clear", lambda: None)()
    took = {name: np.empty(requests, dtype=np.int64) for name in names}
    done = dict.fromkeys(names, 0)
    for turn in range(-(-requests // block)):
        for name in in_turn(names, turn):
            for _ in range(min(block, requests - done[name])):
                time.sleep(gap_s)
                start = time.monotonic_ns()
                calls[name]()
                took[name][done[name]] = time.monotonic_ns() - start
                done[name] += 1
    return took


def settle(client: Client, model: str, inputs: dict, before: str = "the next rate") -> None:
    """Wait until the target has worked off what it was sent so far: past its capacity it
    still works (a plain server) or reads and refuses (this system) for seconds after the load
    generator gave up on its requests, and what comes next would start behind that. A request
    to `model` with an SLO this long is served after everything queued before it (FIFO, and
    EDF alike). No answer at all in that time is the target failing, not an outcome: the run
    ends there and keeps the daemons' logs (bench/procs.run_in_temp_dir)."""
    try:
        client.infer(model, inputs, slo_ms=SETTLE_SLO_MS)
    except DeadlineExceeded as exc:
        raise RuntimeError(f"the target at {client.endpoint} answered nothing: {exc}") from None
    except ClockworkError as exc:  # not expected; what follows shows what is wrong
        say(f"settling before {before}: {exc}")


def in_turn(names: Sequence[str], turn: int) -> list[str]:
    """`names` starting with the one whose turn `turn` is: targets taken in turn, the first
    place passing from one to the next each turn, so that none always runs first."""
    first = turn % len(names)
    return [*names[first:], *names[:first]]


def schedule_for(kind: str, rate: float, duration_s: float, seed: int) -> workload.Schedule:
    if kind == "bursty":  # on 2 s, off 2 s at a fifth of the rate: the same mean, in bursts
        return workload.on_off_schedule([rate * 2 / 1.2], duration_s, seed, on_s=2.0, off_s=2.0,
                                        rate_off_fraction=0.2)
    return workload.poisson_schedule([rate], duration_s, seed)


def sustained(points: Sequence[Point], target: str) -> float:
    """The highest rate at which `target` answered IN_SLO of offered requests within the SLO."""
    ok = [p.rate for p in points if p.target == target and p.rate > 0 and p.share_within_slo >= IN_SLO]
    return max(ok, default=0.0)


def plot(path: Path, points: Sequence[Point], slo_ms: float) -> None:
    with saved_figure(path, 1, 2, figsize=(11, 4)) as (_, (left, right)):
        for target in sorted({p.target for p in points}):
            mine = sorted((p for p in points if p.target == target and p.rate > 0), key=lambda p: p.rate)
            rates = [p.rate for p in mine]
            left.plot(rates, [p.within_slo / (p.offered / p.rate) if p.offered else 0 for p in mine], "o-",
                      label=target)
            right.plot(rates, [p.p99_ms for p in mine], "o-", label=f"{target} p99")
        top = max((p.rate for p in points), default=1)
        left.plot([0, top], [0, top], ":", color="grey", label="offered")
        left.set(xlabel="offered requests/s", ylabel="answered within SLO /s", title="goodput")
        right.axhline(slo_ms, color="grey", linestyle=":", label="SLO")
        right.set(xlabel="offered requests/s", ylabel="ms", yscale="log", title="latency of answered requests")
        left.legend()
        right.legend()


def worker_spec(args) -> WorkerSpec:
    """The onnxruntime worker both comparisons start, with the settings given by --worker-set."""
    return WorkerSpec("cpu", "onnxruntime", extra_args=tuple(a for kv in args.worker_set for a in ("--set", kv)))


def latencies(values_ns: np.ndarray) -> Latencies:
    lat = Latencies()
    lat.record_many_ns(values_ns)
    return lat


def breakdown(parts: list[dict[str, float]]) -> dict[str, float]:
    """Medians of where a lone request's time goes (InferResult.hops: the client's round trip
    split by the reply's own timings, on the server's clock)."""
    return {key: float(np.median([p[key] for p in parts])) for key in parts[0]}


def direct_call(model: bytes, inputs: dict) -> Callable[[], object]:
    """The model called directly on one onnxruntime thread, in the session the plain server uses."""
    session = direct_session(model)
    return lambda: session.run(None, inputs)


class Lone:
    """Lone requests to one target through the native client: the refusals, and what each
    answered call took and where its time went (InferResult.hops)."""

    def __init__(self, target: str, client: Client, inputs: dict, slo_ms: float):
        self.target, self.client, self.inputs, self.slo_ms = target, client, inputs, slo_ms
        self.refused: list[str] = []
        self.parts: list[dict[str, float]] = []
        self.answered_ns: list[int] = []

    def __call__(self) -> None:
        start = time.monotonic_ns()
        try:
            result = self.client.infer(MODEL, self.inputs, slo_ms=self.slo_ms)
        except ClockworkError as exc:  # counted, not fatal: a refusal is an outcome to report
            self.refused.append(exc.status.name)
            return
        self.answered_ns.append(time.monotonic_ns() - start)
        self.parts.append(result.hops(self.answered_ns[-1] / 1e6))

    def clear(self) -> None:
        for outcomes in (self.refused, self.parts, self.answered_ns):
            outcomes.clear()

    def point(self, took: np.ndarray) -> Point:
        """The lone run's Point (latencies of the answered calls; refusals are quick: not latency)."""
        lone = latencies(np.array(self.answered_ns, dtype=np.int64) if self.answered_ns else took)
        say(f"{self.target} lone: p50 {lone.percentile_ms(50):.2f} ms, p99 {lone.percentile_ms(99):.2f} ms"
            + (f", refused {len(self.refused)}: {sorted(set(self.refused))}" if self.refused else ""))
        if self.parts:
            say(f"{self.target} lone, where the p50 goes: "
                + ", ".join(f"{k} {v:.3f} ms" for k, v in self.hops().items()))
        within = sum(1 for t in self.answered_ns if t <= self.slo_ms * 1e6)
        return Point(self.target, 0.0, len(took), within, len(self.refused), 0, lone.percentile_ms(50),
                     lone.percentile_ms(99), lone.percentile_ms(99.9), math.nan, after_admission=self.given_up())

    def given_up(self) -> int:
        """Of the refused, those answered after admission (a miss, not a refusal)."""
        return answered_after_admission(Counter(self.refused))

    def hops(self) -> dict[str, float]:
        """Where a lone request's time goes (medians; empty if its replies carry no timings)."""
        return breakdown(self.parts) if self.parts else {}
