"""Many hosts: emulated workers on network namespaces behind shaped links, CURVE on, against the
same load on loopback; worker clocks skewed; network faults under load.

Runs, each with a Poisson load at `--load` of the devices' capacity (the sum over devices of 1 /
the model's exec time; the model runs at batch 1 only, so batching cannot stretch it) and the
load generator in a namespace of its own:
1. loopback: the same workers and controller on 127.0.0.1, no keys (the reference);
2. hosts: each worker on its own "host", 1 ms +- 0.3 ms added round trip, CURVE;
3. faults on those hosts, one per run: a worker's link down for 3 s, in the relay (bytes wait)
   and by unplugging its host's cable (the kernel drops them); each one-way partition for
   3 s; 1% loss (a lost segment is retransmitted as TCP would, and holds up the stream behind
   it: bench/faulty_link.py); a slow link (2 MB/s) carrying a 4 MB model's PREPARE while it serves;
4. skew: new hosts whose workers' clocks run +5 s, -5 s and 0 s from the controller's;
5. asymmetric: new hosts, the even-numbered workers 0.1 ms away (round trip), the odd ones 2 ms:
   each worker's dispatch allowance, learned from its own lanes' lateness, is reported.
Each run is checked for the invariants of `clockwork-bench chaos` (every request ends exactly
once, none answered more than 50 ms after its deadline, no model lost, workers rejoin on their
own); it reports the share within SLO, TOO_LATE drops among EXECs sent, and for faults how long
the controller took to declare the worker lost and to take it back.

    clockwork-bench multihost                       # the long profile (~5 minutes)
    clockwork-bench multihost --duration 5 --runs hosts --faults link-down
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clockwork.bench.chaos import Outcome, Report, drive
from clockwork.bench.faulty_link import Shape
from clockwork.bench.netns import HostSpec, MultiHost, multihost, why_not_permitted
from clockwork.bench.procs import ProcessGroup, WorkerSpec, cluster, workers_alive
from clockwork.client import Client

MS = 1_000_000
EXEC_MS = 10.0
PROFILE = {"weights_bytes": 64_000_000, "load_ms": 5.0, "exec_ms": {"1": EXEC_MS}}
DELAY = Shape(delay_ns=500_000, jitter_ns=150_000)  # each way: 1 ms +- 0.3 ms round trip
NEAR, FAR = Shape(delay_ns=50_000), Shape(delay_ns=1_000_000)  # each way: 0.1 ms and 2 ms round trips
OUTAGE_S = 3.0
SLOW_LINK_BYTES_PER_S = 2_000_000
SLOW_MODEL_BYTES = 4_000_000
LATE_BOUND_MS = 50.0  # as `clockwork-bench chaos`: loop and network jitter past a deadline


def profile_bytes(pad_to: int = 0) -> bytes:
    """The emulated model's profile; padded with JSON whitespace to `pad_to` bytes, it crosses a
    link like a model file of that size (the worker parses it the same)."""
    blob = json.dumps(PROFILE, sort_keys=True).encode()
    return blob + b" " * max(0, pad_to - len(blob))


def capacity_per_s(workers: int, devices: int) -> float:
    return workers * devices * 1000.0 / EXEC_MS


# ----------------------------------------------------------------------------- the load, in a namespace


@dataclass
class Load:
    models: list[str]
    rate: float
    duration_s: float
    slo_ms: float
    seed: int = 1


def start_load(group: ProcessGroup, name: str, argv_prefix: Callable[[list[str]], list[str]], endpoint: str,
               load: Load, out: Path, env: dict | None = None):
    """The load generator as a process of `group` (inside a host: `argv_prefix`), writing its
    outcomes to `out`."""
    argv = [sys.executable, "-m", "clockwork.bench.multihost", "drive", "--endpoint", endpoint,
            "--models", ",".join(load.models), "--rate", str(load.rate), "--duration", str(load.duration_s),
            "--slo-ms", str(load.slo_ms), "--seed", str(load.seed), "--out", str(out)]
    group.expect_exit(name)
    return group.start(name, argv_prefix(argv), env=env)


def finish_load(proc, out: Path, timeout_s: float) -> list[Outcome]:
    code = proc.popen.wait(timeout=timeout_s)
    if code:
        raise RuntimeError(f"the load generator exited with status {code}:\n{proc.tail()}")
    return [Outcome(**row) for row in json.loads(out.read_text())]


def _drive_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m clockwork.bench.multihost drive")
    for name in ("--endpoint", "--models", "--out"):
        p.add_argument(name, required=True)
    for name in ("--rate", "--duration", "--slo-ms"):
        p.add_argument(name, type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    outcomes = asyncio.run(drive(a.endpoint, a.models.split(","), a.rate, a.duration, a.slo_ms, a.seed))
    Path(a.out).write_text(json.dumps([asdict(o) for o in outcomes]))
    return 0


# ----------------------------------------------------------------------------- watching membership


class Membership(threading.Thread):
    """Polls the controller's STATUS every `interval_s` and notes when each worker leaves and
    comes back (the controller's own view, as `clockwork status` shows it)."""

    def __init__(self, admin: Callable[[], Client], interval_s: float = 0.02):
        super().__init__(daemon=True, name="membership")
        self.admin, self.interval_s = admin, interval_s
        self.events: list[tuple[int, str, bool]] = []  # (monotonic ns, worker, alive)
        self._alive: dict[str, bool] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        with self.admin() as admin:
            while not self._halt.wait(self.interval_s):
                try:
                    listed = {w["name"] for w in admin.status()["workers"]}
                except Exception:  # a slow answer: poll again
                    continue
                now = time.monotonic_ns()
                for name in listed | set(self._alive):
                    alive = name in listed
                    if self._alive.get(name) != alive:
                        self._alive[name] = alive
                        self.events.append((now, name, alive))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def first(self, worker: str, alive: bool, after_ns: int) -> float | None:
        """ms from `after_ns` until `worker` was first seen alive (or gone); None: never."""
        for at, name, state in self.events:
            if name == worker and state is alive and at >= after_ns:
                return (at - after_ns) / MS
        return None


# ----------------------------------------------------------------------------- one run


@dataclass
class Row:
    name: str
    requests: int
    within_slo: float  # share of all requests answered OK within the SLO
    p50_ms: float  # latency of the requests answered OK, from their scheduled send
    p99_ms: float
    statuses: dict[str, int]
    too_late: int  # EXECs dropped TOO_LATE by workers
    execs: int  # EXECs sent
    results_lost: int  # EXECs whose result never came: their requests went back to the queue
    violations: list[str]
    lost_ms: float | None = None  # from the fault until the controller dropped the worker
    rejoin_ms: float | None = None  # from the repair until the controller listed it again
    extra: dict = field(default_factory=dict)

    def cells(self) -> list[str]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"
        return [self.name, str(self.requests), f"{self.within_slo * 100:.2f}%", f"{self.p50_ms:.1f}/{self.p99_ms:.1f}",
                f"{self.too_late}/{self.execs}", str(self.results_lost), ms(self.lost_ms), ms(self.rejoin_ms)]

    def render(self) -> str:
        held = "all held" if not self.violations else "VIOLATED: " + "; ".join(self.violations)
        return _line(self.cells()) + f"  {held}" + "".join(f", {k} {v}" for k, v in self.extra.items())


COLUMNS = (("run", -28), ("reqs", 6), ("in SLO", 8), ("p50/p99 ms", 11), ("TOO_LATE", 10), ("no res", 6),
           ("lost ms", 8), ("back ms", 8))  # width; negative: left-aligned


def _line(cells: Sequence[str]) -> str:
    return " ".join(c.ljust(-w) if w < 0 else c.rjust(w) for c, (_, w) in zip(cells, COLUMNS))


HEADER = _line([title for title, _ in COLUMNS]) + "  invariants"


def ok_percentiles_ms(outcomes: Sequence[Outcome]) -> tuple[float, float]:
    ok = [(o.ended_ns - o.scheduled_ns) / MS for o in outcomes if o.status == "OK"]
    return tuple(float(v) for v in np.percentile(ok, [50, 99])) if ok else (float("nan"), float("nan"))


def within_slo(outcomes: Sequence[Outcome], slo_ms: float) -> float:
    ok = sum(1 for o in outcomes if o.status == "OK" and o.ended_ns - o.scheduled_ns <= slo_ms * MS)
    return ok / max(1, len(outcomes))


def _counters(admin: Client) -> Counter:
    return Counter(admin.status()["counters"])


class Runner:
    """Runs loads against one cluster (hosts or loopback) and turns each into a Row."""

    def __init__(self, group: ProcessGroup, endpoint: str, admin: Callable[[], Client], run_dir: Path,
                 argv_prefix: Callable[[list[str]], list[str]] = list, env: dict | None = None):
        self.group, self.endpoint, self.admin, self.run_dir = group, endpoint, admin, run_dir
        self.argv_prefix, self.env = argv_prefix, env
        self.runs = 0

    def upload(self, models: Sequence[str], blob: bytes | None = None) -> None:
        with self.admin() as admin:
            for name in models:
                admin.upload(blob or profile_bytes(), name, format="profile")

    def run(self, name: str, load: Load, workers: Sequence[str],
            fault: Callable[[Membership], dict] | None = None) -> Row:
        """`load` while `fault` (if any) runs at 30% of it, from this thread; then the checks."""
        self.runs += 1
        out = self.run_dir / f"load-{self.runs}.json"
        watch = Membership(self.admin)
        with self.admin() as admin:
            before = _counters(admin)
        watch.start()
        proc = start_load(self.group, f"load-{self.runs}", self.argv_prefix, self.endpoint, load, out, self.env)
        found: dict = {}
        try:
            if fault is not None:
                time.sleep(load.duration_s * 0.3)
                found = fault(watch)
            outcomes = finish_load(proc, out, load.duration_s + 60)
            with self.admin() as admin:
                self.group.wait_until(lambda: workers_alive(admin.status(), workers), 15, "every worker to be back")
                after = _counters(admin)
                listed = {m["name"] for m in admin.list()}
        finally:
            watch.stop()
        report = Report(outcomes, load.slo_ms, LATE_BOUND_MS)
        report.models_lost = sorted(set(load.models) - listed)
        delta = after - before
        statuses = dict(Counter(o.status for o in outcomes))
        return Row(name, len(outcomes), within_slo(outcomes, load.slo_ms), *ok_percentiles_ms(outcomes), statuses,
                   delta["exec_dropped_too_late"], delta["execs_sent"], delta["exec_results_lost"], report.violations(),
                   found.pop("lost_ms", None), found.pop("rejoin_ms", None), found)


# ----------------------------------------------------------------------------- faults


def serving_most(mh: MultiHost) -> str:
    """The worker holding the most loaded models now: a fault there hits requests."""
    workers = mh.status()["workers"]
    return max(workers, key=lambda w: sum(d["loaded_count"] for d in w["devices"]))["name"]


def outage(mh: MultiHost, up: bool, down: bool, seconds: float = OUTAGE_S, unplug: bool = False):
    """Cut the link of the worker serving most for `seconds`, then mend it: in the relay, up
    (worker -> controller), down (controller -> worker) or both; or, with `unplug`, the host's
    cable (the kernel drops its packets, and TCP's retransmission backoff decides when traffic
    resumes). Reports when the controller dropped the worker and took it back."""
    def apply(watch: Membership) -> dict:
        worker = serving_most(mh)
        link, host = mh.links[worker], mh.hosts[worker]
        cut_ns = time.monotonic_ns()
        host.plug(False) if unplug else link.hold(up, down)
        time.sleep(seconds)
        host.plug(True) if unplug else link.hold(False, False)
        back_ns = time.monotonic_ns()
        lost_ms = watch.first(worker, False, cut_ns)
        deadline = time.monotonic() + 10
        while lost_ms is not None and watch.first(worker, True, back_ns) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"lost_ms": lost_ms, "rejoin_ms": watch.first(worker, True, back_ns) if lost_ms is not None else None,
                "worker": worker}
    return apply


def lossy(mh: MultiHost, loss: float, seconds: float):
    """Every link loses `loss` of its segments (each retransmitted, late) for `seconds`."""
    def apply(_watch: Membership) -> dict:
        before = [link.counts() for link in mh.links.values()]
        for link in mh.links.values():
            link.shape(Shape(**{**asdict(DELAY), "loss": loss}))
        time.sleep(seconds)
        for link in mh.links.values():
            link.shape(DELAY)
        after = [link.counts() for link in mh.links.values()]
        return {"chunks": sum(a[0] - b[0] for a, b in zip(after, before)),
                "lost": sum(a[1] - b[1] for a, b in zip(after, before))}
    return apply


def slow_prepare(mh: MultiHost, runner: Runner, model: str):
    """The busiest worker's link slowed to 2 MB/s toward it while a 4 MB model is uploaded. The
    PREPARE travels on the worker's bulk connection, beside its actions' (the relay limits each
    connection on its own, as a fair-queueing bottleneck would). Reports how long until that
    worker holds the model, and whether the controller dropped it meanwhile."""
    def apply(watch: Membership) -> dict:
        worker = serving_most(mh)
        link = mh.links[worker]
        link.down.rate_bytes_per_s = SLOW_LINK_BYTES_PER_S
        start_ns = time.monotonic_ns()
        runner.upload([model], profile_bytes(SLOW_MODEL_BYTES))
        with runner.admin() as admin:
            prepared = runner.group.wait_until(
                lambda: worker in next(m for m in admin.list() if m["name"] == model).get("prepared_on", []), 60,
                f"{worker} to prepare {model}")
        ready_ms = (time.monotonic_ns() - start_ns) / MS if prepared else None
        link.down.rate_bytes_per_s = 0
        return {"lost_ms": watch.first(worker, False, start_ns), "prepared_ms": round(ready_ms or 0), "worker": worker}
    return apply


FAULTS = ("link-down", "unplugged", "partition-to-worker", "partition-to-controller", "loss", "slow-link")


def fault_rows(mh: MultiHost, runner: Runner, load: Load, faults: Sequence[str]) -> list[Row]:
    workers = list(mh.hosts)
    plans = {
        "link-down": (f"link down {OUTAGE_S:g} s", outage(mh, True, True)),
        "unplugged": (f"cable out {OUTAGE_S:g} s (kernel)", outage(mh, True, True, unplug=True)),
        "partition-to-worker": (f"controller->worker cut {OUTAGE_S:g} s", outage(mh, False, True)),
        "partition-to-controller": (f"worker->controller cut {OUTAGE_S:g} s", outage(mh, True, False)),
        "loss": ("1% loss", lossy(mh, 0.01, load.duration_s * 0.5)),
        "slow-link": ("4 MB PREPARE at 2 MB/s", slow_prepare(mh, runner, "late-model")),
    }
    return [runner.run(plans[f][0], load, workers, plans[f][1]) for f in faults]


# ----------------------------------------------------------------------------- the whole study


def specs(workers: int, devices: int, skews: Sequence[float] = ()) -> list[HostSpec]:
    return [HostSpec(WorkerSpec(f"w{i}", "emulated", devices=devices, device_memory_mb=512),
                     skews[i % len(skews)] if skews else 0.0) for i in range(workers)]


def on_loopback(run_dir: Path, load: Load, workers: int, devices: int) -> Row:
    with cluster(run_dir / "loopback", [h.worker for h in specs(workers, devices)]) as c:
        runner = Runner(c.group, c.client_endpoint, c.client, run_dir / "loopback")
        runner.upload(load.models)
        return runner.run("loopback", load, [f"w{i}" for i in range(workers)])


def on_hosts(run_dir: Path, name: str, load: Load, workers: int, devices: int, skews: Sequence[float] = (),
             faults: Sequence[str] = (), shapes: Sequence[Shape] = (DELAY,)
             ) -> tuple[list[Row], dict[str, tuple[float, float]]]:
    """Rows for the load on hosts (worker i's link shaped `shapes[i % len(shapes)]`, then each
    fault), and each worker's clock error and uncertainty (ms: half its best round trip)."""
    with multihost(run_dir / name, specs(workers, devices, skews)) as mh:
        for i, link in enumerate(mh.links.values()):
            link.shape(shapes[i % len(shapes)])
        runner = Runner(mh.group, mh.client_endpoint, mh.admin, run_dir / name, mh.clients.argv, mh.key_env())
        runner.upload(load.models)
        rows = [runner.run(name, load, list(mh.hosts))]
        rows[0].extra.update(per_worker(mh.status()))
        clocks = {w: mh.clock_error_ms(w) for w in mh.hosts}
        rows += fault_rows(mh, runner, load, faults)
        return rows, clocks


def per_worker(status: dict) -> dict[str, str]:
    """Each worker's dispatch allowance (learned from its own link and host) and EXEC time served."""
    workers = sorted(status["workers"], key=lambda w: w["name"])
    return {"dispatch ms": " ".join(f"{w['name']} {w['dispatch_ms']:.2f}" for w in workers),
            "exec s": " ".join(f"{w['name']} {sum(d['exec_busy_ns'] for d in w['devices']) / 1e9:.1f}" for w in workers)}


RUNS = ("loopback", "hosts", "skew", "asymmetric")


def study(run_dir: Path, args: argparse.Namespace) -> list[str]:
    rate = args.load * capacity_per_s(args.workers, args.devices)
    load = Load([f"m{i}" for i in range(args.models)], rate, args.duration, args.slo_ms, args.seed)
    lines = [f"{args.workers} workers x {args.devices} emulated devices, exec {EXEC_MS:g} ms at batch 1: capacity "
             f"{capacity_per_s(args.workers, args.devices):.0f}/s; Poisson load {rate:.0f}/s for {args.duration:g} s per "
             f"run, SLO {args.slo_ms:g} ms", HEADER]
    rows, clocks, firsts = [], {}, {}
    if "loopback" in args.runs:
        firsts["loopback"] = on_loopback(run_dir, load, args.workers, args.devices)
        rows.append(firsts["loopback"])
    for run, name, kwargs in (
            ("hosts", "hosts 1+-0.3 ms", {"faults": args.faults}),
            ("skew", f"hosts, skew +-{args.skew:g} s", {"skews": (args.skew, -args.skew, 0.0)}),
            ("asymmetric", "hosts 0.1 / 2 ms", {"shapes": (NEAR, FAR)})):
        if run in args.runs:
            found, clocks[run] = on_hosts(run_dir, name, load, args.workers, args.devices, **kwargs)
            firsts[run] = found[0]
            rows += found
    lines += [row.render() for row in rows]
    reference, hosts, skewed = (firsts.get(run) for run in ("loopback", "hosts", "skew"))
    if reference and hosts:
        lines.append(f"hosts / loopback, within SLO: {hosts.within_slo / max(reference.within_slo, 1e-9):.4f}; "
                     f"p50 {hosts.p50_ms / reference.p50_ms:.2f}x, p99 {hosts.p99_ms / reference.p99_ms:.2f}x")
    if hosts and skewed:
        lines.append(f"skewed - unskewed, within SLO: {(skewed.within_slo - hosts.within_slo) * 100:+.2f} pp")
    for run, found in clocks.items():
        lines.append(f"clock estimate error ({run}): " + ", ".join(
            f"{w} {err:+.3f} ms (uncertainty {unc:.3f})" for w, (err, unc) in found.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "clocks": clocks}, indent=1) + "\n")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["drive"]:
        return _drive_main(argv[1:])
    p = argparse.ArgumentParser(prog="clockwork-bench multihost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    p.add_argument("--load", type=float, default=0.5, help="share of the devices' capacity offered")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=3, help="hosts, one worker each")
    p.add_argument("--devices", type=int, default=2, help="emulated devices per worker")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--skew", type=float, default=5.0, help="seconds the skewed workers' clocks are off")
    p.add_argument("--runs", nargs="*", choices=RUNS, default=list(RUNS), help="which clusters to run (faults: on hosts)")
    p.add_argument("--faults", nargs="*", choices=FAULTS, default=list(FAULTS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--keep", type=Path, help="keep logs and state in this folder")
    args = p.parse_args(argv)
    reason = why_not_permitted()
    if reason:
        print(f"clockwork-bench multihost: cannot make namespaces here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="clockwork-multihost-") as tmp:
        lines = study(args.keep or Path(tmp), args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
