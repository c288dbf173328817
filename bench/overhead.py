"""`clockwork-bench overhead`: what the system adds to a request, beside a bare ZeroMQ relay.

Two paths are measured in one run, interleaved in blocks so that drift (CPU frequency, other
load) hits both alike, each with a single request outstanding, in two modes: back to back
(every thread stays hot) and with a gap before each request (`--gap-ms`, as real clients send
them: every process has gone to sleep when the request comes):

- system: client -> controller -> onnxruntime worker -> back, with a tiny model (y = x + 1);
  overhead = end-to-end latency - the exec time the worker measured.
- relay: the same encoded frames through a relay process with two ROUTERs (the controller's
  socket layout) to an echo DEALER process (the worker's) and back; no decoding in between
  (bench.relay). This is the floor any design over ZeroMQ in Python pays for two hops each way.

Goal: overhead p50 <= 1.5 x the relay's p50, in both modes.

Beside the latencies, each path's processes' CPU per request by thread (bench.cpu), counted
during that path's blocks only: where the system's extra time is work (the controller's loop,
the worker's loop and lane, ZeroMQ's I/O threads, the client) rather than waiting.

`--count-instructions` measures the same two paths in instructions instead of time: each
process on them runs in turn under callgrind (bench/callgrind.py) and counts its instructions
while its path serves back-to-back requests, less what it counts idling as long afterwards
(heartbeats, timers). A figure a request by process that differs by well under 1% between runs,
where CPU time on these VMs moved by 2x: what a change to a daemon's loop saves reads cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import zmq

from clockwork.bench import callgrind
from clockwork.bench import models as bench_models
from clockwork.bench.cpu import CpuTally
from clockwork.bench.procs import WorkerSpec, cluster, free_port, run_in_temp_dir
from clockwork.bench.progress import say
from clockwork.bench.relay import REPLY_TIMEOUT_S, RoundTrip, wait_relay
from clockwork.bench.report import Latencies, format_table, write_json
from clockwork.client.protocol import build_infer
from clockwork.common.net import dealer
from clockwork.common.schema import InferReply
from clockwork.common.status import Status

MODEL = "tiny"
GOAL_RATIO = 1.5
COUNTED_REQUESTS = 500  # --requests under callgrind (~50x slower): ~8 s per path, then as long idle
COUNT_READY_S = 300.0  # four processes starting under valgrind on two cores


# ----------------------------------------------------------------------------- measurement


class _Measure:
    def __init__(self, cpu: tuple[CpuTally, CpuTally] | None = None) -> None:
        self.cpu = cpu  # the system's processes and the relay's, each over its own blocks
        self.overhead = Latencies()  # system e2e - worker exec
        self.e2e = Latencies()
        self.exec = Latencies()
        self.relay = Latencies()
        self.not_ok: dict[str, int] = {}

    def system(self, path: RoundTrip, record: bool) -> None:
        rtt_ns, body = path.once()
        status = getattr(body, "status", Status.INTERNAL)
        if status is not Status.OK or not isinstance(body, InferReply):
            self.not_ok[status.name] = self.not_ok.get(status.name, 0) + 1
            return
        if record:
            self.overhead.record_ns(rtt_ns - body.exec_ns)
            self.e2e.record_ns(rtt_ns)
            self.exec.record_ns(body.exec_ns)

    def bare(self, path: RoundTrip, record: bool) -> None:
        rtt_ns, _ = path.once()
        if record:
            self.relay.record_ns(rtt_ns)


def wait_serving(path: RoundTrip, timeout_s: float) -> None:
    """Until the tiny model answers OK (its first request waits for a LOAD)."""
    deadline = time.monotonic() + timeout_s
    last = "no reply"
    while time.monotonic() < deadline:
        _, body = path.once()
        status = getattr(body, "status", Status.INTERNAL)
        if status is Status.OK:
            return
        last = f"{status.name}: {getattr(body, 'detail', '')}"
        time.sleep(0.1)
    raise TimeoutError(f"the model did not serve within {timeout_s:g} s (last reply {last})")


def measure(system: RoundTrip, relay: RoundTrip, requests: int, warmup: int, block: int, gap_s: float = 0.0,
            cpu: tuple[CpuTally, CpuTally] | None = None) -> _Measure:
    """Both paths, `requests` each, in alternating blocks; `gap_s` of idleness before each;
    `cpu` tallies the system's processes and the relay's during their own blocks."""
    m = _Measure(cpu)
    tallies = cpu or (contextlib.nullcontext(), contextlib.nullcontext())
    for _ in range(warmup):
        m.system(system, record=False)
        m.bare(relay, record=False)
    m.not_ok.clear()
    done = 0
    while done < requests:
        n = min(block, requests - done)
        for path, measure_one, tally in ((system, m.system, tallies[0]), (relay, m.bare, tallies[1])):
            with tally:
                for _ in range(n):
                    if gap_s:
                        time.sleep(gap_s)
                    measure_one(path, record=True)
        done += n
    return m


# ----------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench overhead", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=None,
                   help=f"measured requests per path (default 3000; {COUNTED_REQUESTS} with --count-instructions)")
    p.add_argument("--warmup", type=int, default=300, help="unmeasured requests per path first")
    p.add_argument("--block", type=int, default=100, help="requests per path before switching paths")
    p.add_argument("--gap-ms", type=float, default=10.0, help="idleness before each request in the gapped mode")
    p.add_argument("--gapped-requests", type=int, default=500, help="measured requests per path with gaps")
    p.add_argument("--out", default=None, help="folder for overhead-summary.json (none: print only)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the goal is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary state and log folder")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    p.add_argument("--count-instructions", action="store_true",
                   help="count each process's instructions a request under valgrind instead of timing (back to back)")
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = COUNTED_REQUESTS if args.count_instructions else 3000
    if args.requests < 1 or args.gapped_requests < 1 or args.warmup < 0 or args.block < 1 or args.gap_ms <= 0:
        p.error("--requests, --gapped-requests and --block must be >= 1, --warmup >= 0, --gap-ms > 0")
    return args


def run(args: argparse.Namespace) -> int:
    if args.count_instructions:
        why = callgrind.missing()
        if why:
            print(f"cannot count instructions here: {why}", file=sys.stderr)
            return 2
        return run_in_temp_dir("clockwork-overhead-", args.keep, "overhead instruction count",
                               lambda run_dir: count_and_report(args, run_dir))
    return run_in_temp_dir("clockwork-overhead-", args.keep, "overhead bench",
                           lambda run_dir: measure_and_report(args, run_dir))


@contextlib.contextmanager
def both_paths(args: argparse.Namespace, run_dir: Path, launcher: Callable[[str], list[str]] | None = None,
               ready_s: float = 60.0) -> Iterator[tuple[RoundTrip, RoundTrip, dict[str, int]]]:
    """The system (controller and an onnxruntime worker serving the tiny model) and the relay
    chain, each started through `launcher`'s prefix for its name, both answering: yields their
    round trips and every process's pid by name."""
    blob = bench_models.tiny_onnx()
    body = build_infer(MODEL, bench_models.sample_inputs("onnx", blob), int(REPLY_TIMEOUT_S * 1e9))
    prefix = launcher or (lambda _name: [])
    with cluster(run_dir, [WorkerSpec("cpu", "onnxruntime", devices=1)], log_level=args.log_level,
                 launcher=launcher, ready_timeout_s=ready_s) as c:
        front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        me = [sys.executable, "-m", "clockwork.bench.relay"]
        c.group.start("relay", [*prefix("relay"), *me, "--role", "relay", "--front", front, "--back", back])
        c.group.start("echo", [*prefix("echo"), *me, "--role", "echo", "--back", back])
        with c.client() as admin:
            admin.upload(blob, MODEL, format="onnx", replace=True)
        ctx = zmq.Context()
        try:
            system = RoundTrip(dealer(ctx, c.client_endpoint), body)
            relay = RoundTrip(dealer(ctx, front), body)
            wait_serving(system, ready_s)
            wait_relay(relay, ready_s)
            yield system, relay, {proc.name: proc.pid for proc in c.group.procs}
            c.check()
        finally:
            ctx.destroy(linger=0)


def measure_and_report(args: argparse.Namespace, run_dir: Path) -> int:
    with both_paths(args, run_dir) as (system, relay, pids):

        def tallies() -> tuple[CpuTally, CpuTally]:
            return (CpuTally({"controller": pids["controller"], "worker": pids["worker-cpu"]}, self_as="client"),
                    CpuTally({"relay": pids["relay"], "echo": pids["echo"]}, self_as="client"))

        say(f"back to back: {args.requests} requests per path after {args.warmup} warm-up ...")
        modes = {"back to back": measure(system, relay, args.requests, args.warmup, args.block, cpu=tallies())}
        say(f"with {args.gap_ms:g} ms gaps: {args.gapped_requests} requests per path "
            f"(~{2 * args.gapped_requests * args.gap_ms / 1000:.0f} s) ...")
        modes[f"{args.gap_ms:g} ms gaps"] = measure(system, relay, args.gapped_requests, 0, args.block,
                                                    args.gap_ms / 1000, cpu=tallies())
    return report(args, modes)


def count_and_report(args: argparse.Namespace, run_dir: Path) -> int:
    """Each process's instructions a request on its path, by callgrind: the path's requests back
    to back, less the same process idling as long right after. One process a path at a time runs
    under callgrind, the others at full speed: a controller waiting ~50x longer for a counted
    worker takes more timer turns a request, and its count then moved by 8% from run to run."""
    paths = {"system": ("controller", "worker-cpu"), "relay": ("relay", "echo")}
    per_request: dict[str, dict[str, float]] = {path: {} for path in paths}
    for turn in range(2):  # first the controller and the relay, then the worker and the echo peer
        counted = {path: names[turn] for path, names in paths.items()}
        counts_dir = run_dir / f"callgrind-{turn}"
        counts_dir.mkdir(parents=True, exist_ok=True)

        def launcher(name: str) -> list[str]:
            return callgrind.launcher(counts_dir / name) if name in counted.values() else []

        say(f"starting both paths, the {' and the '.join(counted.values())} under callgrind ...")
        with both_paths(args, run_dir / f"run-{turn}", launcher, ready_s=COUNT_READY_S) as (system, relay, pids):
            for path in (system, relay):
                for _ in range(args.warmup):
                    path.once()
            for (label, name), path in zip(counted.items(), (system, relay)):
                say(f"{label}: {args.requests} requests with the {name} under callgrind, then as long idle ...")
                per_request[label][name] = _count(path, pids[name], counts_dir / name, args.requests)
    return report_instructions(args, {path: {name: per_request[path][name] for name in names}
                                      for path, names in paths.items()})


def _count(path: RoundTrip, pid: int, counts: Path, requests: int) -> float:
    """The counted process's instructions a request: `requests` back to back, less as long idle."""
    callgrind.control(pid, "-z")
    callgrind.control(pid, "-i", "on")
    started = time.monotonic()
    for _ in range(requests):
        path.once()
    took = time.monotonic() - started
    callgrind.control(pid, "-d", "busy")
    time.sleep(took)
    callgrind.control(pid, "-d", "idle")
    callgrind.control(pid, "-i", "off")
    # A process's dumps are numbered in order: its busy stretch .1, its idle one .2.
    return (callgrind.read_total(counts.with_name(f"{counts.name}.1"))
            - callgrind.read_total(counts.with_name(f"{counts.name}.2"))) / requests


def report_instructions(args: argparse.Namespace, per_request: dict[str, dict[str, float]]) -> int:
    totals = {path: sum(by_process.values()) for path, by_process in per_request.items()}
    rows = [(f"{path}: {name}", f"{count:,.0f}") for path, by_process in per_request.items()
            for name, count in by_process.items()]
    rows += [(f"{path} in all", f"{total:,.0f}") for path, total in totals.items()]
    print("\ninstructions a request, back to back (all of a process's threads, less as long idle):\n"
          + format_table(rows, header=("process", "instructions")))
    ratio = totals["system"] / totals["relay"] if totals["relay"] > 0 else float("nan")
    print(f"system / relay = {ratio:.2f}x")
    if args.out:
        data = {"requests": args.requests, "instructions_per_request": per_request, "totals": totals,
                "system_over_relay": ratio}
        print(f"wrote {write_json(Path(args.out) / 'overhead-instructions.json', data)}")
    return 0


def report(args: argparse.Namespace, modes: dict[str, _Measure]) -> int:
    data: dict = {"goal": GOAL_RATIO, "modes": {}}
    for mode, m in modes.items():
        rows = []
        for label, lat in (("overhead (e2e - exec)", m.overhead), ("bare relay RTT", m.relay),
                           ("system e2e", m.e2e), ("worker exec", m.exec)):
            rows.append((label, lat.count, lat.percentile_ms(50), lat.percentile_ms(99), lat.max_ms()))
        ratio = m.overhead.percentile_ms(50) / m.relay.percentile_ms(50) if m.relay.count else float("nan")
        print(f"\n{mode}:\n" + format_table(rows, header=("ms", "n", "p50", "p99", "max")))
        print(f"overhead p50 / relay p50 = {ratio:.2f}x (goal <= {GOAL_RATIO:g}x): "
              f"{'met' if ratio <= GOAL_RATIO else 'MISSED'}")
        if m.not_ok:
            print(f"non-OK replies during measurement: {m.not_ok}")
        cpu = cpu_per_request(m)
        if cpu:
            print(format_cpu(cpu))
        data["modes"][mode] = {"ratio_p50": ratio, "met": ratio <= GOAL_RATIO, "not_ok": m.not_ok,
                               **{f"{key}_ms": lat.summary_ms() for key, lat in (
                                   ("overhead", m.overhead), ("relay", m.relay), ("e2e", m.e2e), ("exec", m.exec))},
                               "cpu_us_per_request": cpu}
    data["met"] = all(mode["met"] for mode in data["modes"].values())
    if args.out:
        print(f"wrote {write_json(Path(args.out) / 'overhead-summary.json', data)}")
    return 1 if args.strict and not data["met"] else 0


def cpu_per_request(m: _Measure) -> dict:
    """Each path's CPU microseconds a request by "process/thread", with its total; {} untallied."""
    if m.cpu is None:
        return {}
    out = {}
    for path, tally, count in (("system", m.cpu[0], m.e2e.count), ("relay", m.cpu[1], m.relay.count)):
        threads = tally.threads_us_per(count)
        out[path] = {"threads": {name: round(us, 1) for name, us in threads.items()}, "total": round(sum(threads.values()), 1)}
    return out


def format_cpu(cpu: dict) -> str:
    lines = ["CPU a request by process/thread (us; main: a process's main thread, a daemon's loop):"]
    for path, figures in cpu.items():
        threads = ", ".join(f"{name} {us:.0f}" for name, us in figures["threads"].items())
        lines.append(f"  {path}: {figures['total']:.0f} in all: {threads or 'not readable here'}")
    system, relay = cpu["system"]["total"], cpu["relay"]["total"]
    if system and relay:
        lines.append(f"  system / relay = {system / relay:.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
