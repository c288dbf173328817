"""`clockwork-bench run`: the real system under a chosen workload, with a full run report.

A controller and emulated workers start on loopback (bench.procs.cluster); M copies of the
emulated ResNet-50 profile are uploaded; a short warm-up loads them; then the open-loop load
generator plays the workload for --duration-s at --rate and every request becomes a row of the
run log. The report (bench.runlog.write_run) goes to --out: requests.tsv, actions.tsv (when the
controller can write an action log), summary.json/.csv, timeseries.csv/.png, cdf.png.

Latency is measured at the client from each request's *scheduled* send time (no coordinated
omission); --loadgen-procs N splits the schedule over N generator processes.

    clockwork-bench run --rate 2000 --duration-s 20 --workers 4 --devices-per-worker 4 --out runs/r1
    clockwork-bench run --workload azure --rate 1000 --models 200 --device-memory-mb 1024
    clockwork-bench run --echo --rate 40000   # the generator alone, against a bare echo ROUTER
    clockwork-bench run --echo relay --rate 30000   # the same through a bare relay (two ROUTERs)

Workloads: poisson (Zipf popularity, --zipf 0 for uniform), bursty (independent on/off
sources), azure (Azure-Functions-like: Zipf, per-minute changes, bursts), closed (--clients
each with one request outstanding, --think-ms between a reply and the next request; latency
then counts from when the client meant to send).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import multiprocessing
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import zmq

from clockwork.bench import models as bench_models
from clockwork.bench import workload
from clockwork.bench.comparison import settle
from clockwork.bench.cpu import cpu_seconds, cpu_usage, format_cpu
from clockwork.bench.loadgen import rates_summary, run_closed_loop, run_open_loop, serve_echo
from clockwork.bench.procs import NotReady, ProcessDied, WorkerSpec, cluster, free_port, run_in_temp_dir
from clockwork.bench.progress import NullProgress, Progress, command_main, say as _say
from clockwork.bench.relay import RoundTrip, relay_main, wait_relay
from clockwork.bench.report import LoadResults, format_table, prediction_counters
from clockwork.bench.runlog import RunLog, format_run_summary, write_run
from clockwork.client import Client
from clockwork.client.protocol import build_infer
from clockwork.common.config import ControllerConfig
from clockwork.common.net import dealer
from clockwork.common.schema import Message

WORKLOADS = ("poisson", "bursty", "azure")
ECHO_PEERS = ("direct", "relay")  # --echo: the echo server where the generator sends, or behind a bare relay
ACTION_LOG_SETTING = "action_log_path"  # the controller's TSV action log, when it has one
WARMUP_RATE_PER_MODEL = 20.0  # requests/s per model during warm-up: enough to load each one
# ... and at most this many in all: at 20/s each, 4,000 models made the warm-up an 80,000/s
# overload whose backlog the controller was still refusing a second into the measured part.
WARMUP_MAX_PER_S = 2000.0


def parse_args(argv: Sequence[str] | None, prog: str = "clockwork-bench run") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(p)
    p.add_argument("--rate", type=float, default=1000.0, help="offered requests per second (mean)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds of measured load")
    p.add_argument("--workload", choices=WORKLOADS + ("closed",), default="poisson", help="arrival process")
    p.add_argument("--clients", type=int, default=64,
                   help="closed workload: clients, each with one request outstanding (spread over models by --zipf)")
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="closed workload: mean think time between a reply and the client's next request")
    p.add_argument("--out", default="runs/run", help="folder for the report")
    p.add_argument("--title", default="", help="title of the report (default: a description of the run)")
    return p.parse_args(argv)


def add_system_args(p: argparse.ArgumentParser) -> None:
    """Options shared with `clockwork-bench capacity`: the system and the generator."""
    p.add_argument("--workers", type=int, default=4, help="emulated worker processes")
    p.add_argument("--devices-per-worker", type=int, default=4, help="pretend GPUs per worker")
    p.add_argument("--device-memory-mb", type=int, default=None,
                   help="model memory per device (default: the worker's); small values force evictions")
    p.add_argument("--models", type=int, default=16, help="copies of the emulated ResNet-50 to upload")
    p.add_argument("--exec-scale", type=float, default=1.0,
                   help="multiply the profile's exec and load times (< 1: faster pretend GPUs)")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity skew over models (0: uniform)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="SLO of every request")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival schedule")
    p.add_argument("--warmup-s", type=float, default=2.0, help="seconds of light load before measuring (0: none)")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="controller setting, e.g. --set scheduler.schedule_ahead_ns=3000000 (repeatable)")
    p.add_argument("--echo", nargs="?", const="direct", choices=ECHO_PEERS, default=None,
                   help="no controller: a bare echo ROUTER answers (measures the generator alone); "
                        "--echo relay: through a bare relay process (two ROUTERs, no decoding) to the echo "
                        "peer, as the controller and worker sit (the generator plus two ZeroMQ hops)")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for the daemons")
    p.add_argument("--keep", action="store_true", help="keep the daemons' state and log folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                   help="sample PROCESS (controller, worker-emu0, ...) with py-spy during the measured load; "
                        "raw stacks and a top-functions table go to --out (repeatable)")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--profile-gil", action="store_true",
                   help="keep only samples holding the GIL (Python work; drops waits in syscalls and for a CPU)")


# ----------------------------------------------------------------------------- the system


@dataclass
class System:
    """Where the generator sends, how to check the daemons, what was uploaded."""

    endpoint: str
    check: Callable[[], None]  # raises when a daemon died
    models: list[str]
    inputs: dict[str, dict[str, np.ndarray]]
    status: Callable[[], dict]  # the controller's STATUS ({} for the echo server)
    action_log: Path | None  # the controller's action log file, when it writes one
    pids: dict[str, int]  # process name -> pid (for a profiler)


def scaled_profile(scale: float) -> dict:
    base = bench_models.RESNET50_V100
    return {"weights_bytes": base["weights_bytes"], "load_ms": round(base["load_ms"] * scale, 4),
            "exec_ms": {k: round(v * scale, 4) for k, v in base["exec_ms"].items()}}


def controller_supports(setting: str) -> bool:
    """Whether this checkout's controller has a top-level setting (e.g. action_log_path)."""
    return setting in {f.name for f in dataclasses.fields(ControllerConfig)}


@contextlib.contextmanager
def start_system(args: argparse.Namespace, run_dir: Path, say: Callable[[str], None],
                 action_log: bool = True) -> Iterator[System]:
    """The controller, workers and models of `args` (or an echo server); stopped on exit.
    action_log: have the controller write its action log (when this controller can)."""
    names = [f"resnet50-{i:0{len(str(max(args.models - 1, 0)))}d}" for i in range(args.models)]
    profile = bench_models.profile_json(scaled_profile(args.exec_scale))
    inputs = bench_models.sample_inputs("profile", profile)
    by_model = {n: inputs for n in names}
    if args.echo:
        probe = build_infer(names[0], inputs, int(args.slo_ms * 1e6))
        with _echo_peers(args.echo == "relay", probe) as (endpoint, procs):
            def check() -> None:
                for name, proc in procs.items():
                    if not proc.is_alive():
                        raise ProcessDied(name, proc.exitcode or 0, "")
            yield System(endpoint, check, names, by_model, dict, None, {n: p.pid for n, p in procs.items()})
        return
    settings = list(args.settings)
    log_path = None
    if action_log and controller_supports(ACTION_LOG_SETTING) and \
            not any(s.startswith(ACTION_LOG_SETTING + "=") for s in settings):
        log_path = run_dir / "controller-actions.tsv"
        settings.append(f"{ACTION_LOG_SETTING}={log_path}")
    specs = [WorkerSpec(f"emu{w}", "emulated", devices=args.devices_per_worker, device_memory_mb=args.device_memory_mb)
             for w in range(args.workers)]
    say(f"starting a controller and {args.workers} emulated workers x {args.devices_per_worker} devices in {run_dir}")
    with cluster(run_dir, specs, log_level=args.log_level, controller_settings=settings,
                 ready_timeout_s=args.ready_timeout) as c:
        with c.client(timeout_s=60.0) as admin:
            started = time.monotonic()
            for name in names:
                admin.upload(profile, name, format="profile", replace=True)
            say(f"uploaded {len(names)} emulated ResNet-50 models ({time.monotonic() - started:.1f} s)")
            pids = {p.name: p.pid for p in c.group.procs}
            yield System(c.client_endpoint, c.check, names, by_model, admin.status, log_path, pids)


@contextlib.contextmanager
def _echo_peers(behind_relay: bool, probe: Message) -> Iterator[tuple[str, dict[str, multiprocessing.Process]]]:
    """The echo server (bench.loadgen.serve_echo) where the generator sends or, behind_relay,
    behind a bare relay (bench.relay.relay_main) in a third process, answering `probe` once
    the relay knows the echo peer. Yields the generator's endpoint and the processes by name."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    back = f"tcp://127.0.0.1:{free_port()}" if behind_relay else endpoint
    mp = multiprocessing.get_context("spawn")
    ready, stop = mp.Event(), mp.Event()
    procs = {"echo": mp.Process(target=serve_echo, args=(back, ready, stop, behind_relay), name="echo", daemon=True)}
    if behind_relay:
        procs["relay"] = mp.Process(target=relay_main, args=(endpoint, back), name="relay", daemon=True)
    for proc in procs.values():
        proc.start()
    try:
        if not ready.wait(30):
            raise NotReady("the echo server did not start")
        if behind_relay:  # the relay drops requests until the echo peer's hello has reached it
            context = zmq.Context()
            try:
                wait_relay(RoundTrip(dealer(context, endpoint), probe), 30.0)
            finally:
                context.destroy(linger=0)
        yield endpoint, procs
    finally:
        stop.set()
        if behind_relay:
            procs["relay"].terminate()  # it runs until killed
        for proc in procs.values():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# ----------------------------------------------------------------------------- workloads


def make_schedule(kind: str, rate: float, num_models: int, duration_s: float, seed: int,
                  zipf: float = 1.0) -> workload.Schedule:
    if kind == "poisson":
        return workload.poisson_schedule(workload.zipf_rates(rate, num_models, zipf), duration_s, seed)
    if kind == "bursty":
        # On half the time on average, at twice the rate: the same mean, in bursts.
        rates = 2.0 * workload.zipf_rates(rate, num_models, zipf)
        return workload.on_off_schedule(rates, duration_s, seed, on_s=2.0, off_s=2.0)
    if kind == "azure":
        shape = workload.AzureLike(zipf_exponent=zipf)
        return workload.azure_like_schedule(rate, num_models, duration_s, seed, shape)
    raise ValueError(f"unknown workload {kind!r}; choose one of {', '.join(WORKLOADS)}")


def warm_up(system: System, args: argparse.Namespace, say: Callable[[str], None]) -> LoadResults | None:
    """A light uniform load so that the models are resident (as many as fit) before the
    measured part, which starts once the system has worked it off (`settle`)."""
    if args.warmup_s <= 0 or args.echo:
        return None
    total = min(WARMUP_RATE_PER_MODEL * len(system.models), WARMUP_MAX_PER_S)
    schedule = workload.poisson_schedule(workload.uniform_rates(total, len(system.models)), args.warmup_s, args.seed)
    say(f"warm-up: {rates_summary(schedule)}")
    results = run_open_loop(system.endpoint, schedule, system.models, args.slo_ms, system.inputs,
                            on_tick=system.check, drain_timeout_s=args.slo_ms / 1000 + 2)
    with Client(system.endpoint) as client:
        model = system.models[0]
        settle(client, model, system.inputs[model], "the measured part")
    return results


def drive(system: System, schedule: workload.Schedule, args: argparse.Namespace, label: str,
          quiet: bool = False) -> tuple[LoadResults, RunLog]:
    """Play `schedule`; the request log comes back beside the LoadResults."""
    log = RunLog()
    progress = NullProgress() if quiet else Progress(schedule.duration_ns / 1e9, label=label)
    with progress:
        results = run_open_loop(system.endpoint, schedule, system.models, args.slo_ms, system.inputs, progress,
                                on_tick=system.check, request_log=log, procs=args.loadgen_procs,
                                drain_timeout_s=args.slo_ms / 1000 + 2)
    return results, log


def drive_closed(system: System, args: argparse.Namespace, quiet: bool = False
                 ) -> tuple[LoadResults, RunLog, workload.Schedule]:
    """Closed-loop clients (bench.workload.ClosedLoop) for --duration-s."""
    clients = workload.ClosedLoop.clients_for(args.clients, len(system.models), args.seed, args.zipf)
    closed = workload.ClosedLoop(clients, args.duration_s, args.seed, think_s=args.think_ms / 1000)
    log = RunLog()
    progress = NullProgress() if quiet else Progress(args.duration_s, label="run (closed loop)")
    with progress:
        results, schedule = run_closed_loop(system.endpoint, closed, system.models, args.slo_ms, system.inputs,
                                            progress, on_tick=system.check, request_log=log,
                                            drain_timeout_s=args.slo_ms / 1000 + 2)
    return results, log, schedule


def merge_action_log(log: RunLog, path: Path | None, start_ns: int) -> int:
    """The controller's action log (and its rotated parts), times made relative to the run's
    start (controller and generator share the host's monotonic clock). Rows sent before the
    run started (uploads, warm-up) are left out. Returns rows merged."""
    if path is None:
        return 0
    parts = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -_rotation_index(p)) + [path]
    raw = RunLog()
    for part in parts:
        if part.exists() and part.stat().st_size:
            raw.read_actions_tsv(part, lenient=True)
    if not raw.num_actions:
        return 0
    cols = dict(raw.actions())
    keep = cols["sent_ns"] >= start_ns
    out = {}
    for name, values in cols.items():
        if isinstance(values, np.ndarray):
            values = values[keep]
            if name in ("sent_ns", "begin_ns", "end_ns"):
                values = np.where(values >= 0, values - start_ns, -1)
            out[name] = values
        else:
            out[name] = [v for v, k in zip(values, keep.tolist()) if k]
    log.add_actions(out)
    return int(keep.sum())


def _rotation_index(path: Path) -> int:
    suffix = path.suffix.lstrip(".")
    return int(suffix) if suffix.isdigit() else 0


# ----------------------------------------------------------------------------- memory


def proc_status_mib(pid: int, key: str) -> float | None:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM...) in MiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Each process's peak resident memory so far (VmHWM), in MiB; unreadable ones left out."""
    peaks = {name: proc_status_mib(pid, "VmHWM") for name, pid in pids.items()}
    return {name: mib for name, mib in peaks.items() if mib is not None}


# ----------------------------------------------------------------------------- profiling


def py_spy_path() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return found


@contextlib.contextmanager
def profiled(system: System, names: Sequence[str], seconds: float, out_dir: Path, rate: int,
             say: Callable[[str], None], gil: bool = False) -> Iterator[dict[str, Path]]:
    """py-spy (non-blocking: the target is never paused) on each named process while the
    block runs; yields {name: raw stacks file}, complete once the block has exited."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    procs, paths = [], {}
    for name in names:
        if name not in system.pids:
            raise RuntimeError(f"no process named {name!r} to profile; choose from {', '.join(system.pids)}")
        path = out_dir / f"profile-{name}.txt"
        argv = [py_spy_path(), "record", "-p", str(system.pids[name]), "-d", str(max(1, int(math.ceil(seconds)))),
                "-r", str(rate), "-f", "raw", "-o", str(path), "--nonblocking"] + (["--gil"] if gil else [])
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        paths[name] = path
    try:
        yield paths
    finally:
        for proc, name in zip(procs, paths):
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode:
                say(f"py-spy on {name} failed: {err.decode(errors='replace').strip()[-300:]}")


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def profile_tables(raw_path: Path, top: int = 20) -> dict:
    """Collapsed stacks -> where the samples went: by function's own time (leaf frame) and
    inclusive time (anywhere on the stack), as (function, samples, % of samples)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def rows(counts: dict[str, int]) -> list[tuple[str, int, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(f, n, round(100.0 * n / total, 1) if total else 0.0) for f, n in ranked]

    return {"samples": total, "own": rows(own), "inclusive": rows(inclusive)}


def _short(frame: str) -> str:
    """"on_request (/work/main/controller/core.py:123)" -> "on_request (controller/core.py)"."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        parts = Path(path).parts
        path = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{m.group('func')} ({path})"


def format_profile(name: str, tables: dict, seconds: float, rate: int) -> str:
    busy = 100.0 * tables["samples"] / max(1.0, seconds * rate)
    head = (f"== py-spy: {name}, {tables['samples']} samples (~{busy:.0f}% of {seconds:g} s at {rate}/s "
            "were on-CPU/non-idle) ==")
    own = format_table(tables["own"], header=("own time: function", "samples", "%"))
    inc = format_table(tables["inclusive"], header=("inclusive: function", "samples", "%"))
    return "\n".join([head, own, "", inc])


def describe(args: argparse.Namespace, rate: float) -> str:
    if getattr(args, "workload", "") == "closed":
        return (f"closed loop, {args.clients} clients, think {args.think_ms:g} ms, {args.models} models"
                + ("" if args.echo else f", {args.workers}x{args.devices_per_worker} emulated devices"))
    if args.echo == "relay":
        return f"generator via a bare relay to echo, {rate:g}/s"
    if args.echo:
        return f"generator vs echo, {rate:g}/s"
    return (f"{args.workload} {rate:g}/s, {args.models} models, {args.workers}x{args.devices_per_worker} "
            f"emulated devices, SLO {args.slo_ms:g} ms")


def setup_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("keep", "quiet")}


# ----------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    say = _say
    out_dir = Path(args.out)
    title = args.title or describe(args, args.rate)
    closed = args.workload == "closed"
    schedule = None if closed else make_schedule(args.workload, args.rate, args.models, args.duration_s, args.seed,
                                                 args.zipf)

    def body(run_dir: Path) -> int:
        nonlocal schedule
        with start_system(args, run_dir, say) as system:
            warm_up(system, args, say)
            if closed:
                say(f"load: {args.clients} closed-loop clients, think {args.think_ms:g} ms, {args.duration_s:g} s, "
                    f"SLO {args.slo_ms:g} ms")
            else:
                say(f"load: {rates_summary(schedule)} ({args.workload}), SLO {args.slo_ms:g} ms, "
                    f"{args.loadgen_procs} generator process(es)")
            cpu_before, wall_before = cpu_seconds(system.pids, self_as="loadgen"), time.monotonic()
            with profiled(system, args.profile, args.duration_s, out_dir, args.profile_rate, say,
                          args.profile_gil) as profiles:
                if closed:
                    results, log, schedule = drive_closed(system, args, args.quiet)
                else:
                    results, log = drive(system, schedule, args, "run", args.quiet)
            cpu = cpu_usage(cpu_before, cpu_seconds(system.pids, self_as="loadgen"), time.monotonic() - wall_before,
                            len(schedule))
            peak_rss = peak_rss_mib(system.pids)
            system.check()
            status = system.status()
            action_log = system.action_log
        merged = merge_action_log(log, action_log, results.start_ns)
        counters = status.get("counters", {}) if isinstance(status.get("counters"), dict) else {}
        extra = {"setup": setup_of(args), "controller_counters": counters,
                 "prediction_counters": prediction_counters(counters),
                 "generator": {"send_lag_ms": results.send_lag.summary_ms(), "stray_replies": results.stray_replies,
                               "procs": args.loadgen_procs},
                 "action_log_rows": merged, "cpu": cpu, "peak_rss_mib": peak_rss}
        summary = write_run(out_dir, log, title, args.slo_ms, extra=extra)
        print(format_run_summary(summary))
        lag = results.send_lag.summary_ms()
        print(f"\ngenerator send lag ms: p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}")
        print("\n" + format_cpu(cpu))
        print("peak memory (RSS, MiB): " + ", ".join(f"{name} {mib:.0f}" for name, mib in peak_rss.items()))
        if action_log is None and not args.echo:
            print(f"(no action log: this controller has no {ACTION_LOG_SETTING} setting)")
        for name, path in profiles.items():
            if path.exists():
                text = format_profile(name, profile_tables(path), args.duration_s, args.profile_rate)
                (out_dir / f"profile-{name}-top.txt").write_text(text + "\n")
                print("\n" + text)
        print(f"wrote the report to {out_dir}/")
        return 0 if summary["ok"] else 1

    return run_in_temp_dir("clockwork-run-", args.keep, "run", body)


main = command_main(parse_args, run, "run")


if __name__ == "__main__":
    sys.exit(main())
