"""`clockwork-bench versus --gateway-json`: the v2 gateway against a plain HTTP server, JSON tensors.

What most KServe tooling sends (curl, `requests`, v2 clients without the binary extension):
every request is the model's input as a JSON list. Both targets are played the same seeded
open-loop schedules by one HTTP load generator (bench/http_load.py):

- "gateway": this system (a controller, one onnxruntime worker) behind `clockwork-gateway`
  (`--gateway-processes` processes);
- "plain-http": bench/plain_server.py over HTTP: one process, FIFO, one onnxruntime session on
  one thread, no admission, the same v2 parsing rules.

Both running at once, lone requests (50 ms apart, to each in turn, over a kept-alive
connection), in turn with this system's native client and the model called directly: the
gateway's extra over the plain HTTP server, set beside the native path's over the direct call,
says how much of it is the gateway's own. Then each rate of `--rates`, played to one target
while the other idles, both in turn before the next rate; then the gateway's test of refusing
well: 3x the highest rate it sustained (>= 99.9% of requests within the SLO), played to both.
Reported per rate: offered, answered within the SLO, 429s, 504s,
p50/p99 of the answered, how fast the 429s came back, and how late the
load generator itself sent (its own lag, which every latency includes: when it is large, the
machine, not the target, set the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import orjson

from clockwork.bench import http_load
from clockwork.bench.comparison import (GAP_S, IN_SLO, LONE_REQUESTS, MODEL, SETTLE_SLO_MS, Lone, Point, in_turn,
                                        interleaved, latencies, plot, schedule_for, sustained, worker_spec)
from clockwork.bench.procs import cluster, free_port, start_gateway
from clockwork.bench.progress import say
from clockwork.bench.report import Latencies, format_table, write_json
from clockwork.client import Client, v2

GATEWAY, PLAIN = "gateway", "plain-http"
NATIVE, DIRECT = "native", "direct"  # this system through its native client; the model called directly
OVERLOAD = 3.0  # the gateway's test of refusing well: this many times the rate it sustained


def json_body(inputs: dict[str, np.ndarray], slo_ms: float) -> bytes:
    """A v2 infer request with every input as a flat JSON list, the SLO as parameters.timeout (us)."""
    tensors = [{"name": name, "shape": list(a.shape), "datatype": v2.NUMPY_TO_V2[a.dtype.name], "data": a.reshape(-1)}
               for name, a in inputs.items()]
    return orjson.dumps({"inputs": tensors, "parameters": {"timeout": int(slo_ms * 1000)}},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def http_point(target: str, rate: float, results: http_load.HttpResults, slo_ms: float, shed: int = 0) -> Point:
    ok, refused = Latencies(), Latencies()
    ok.record_many_ns(results.ok_ns)
    refused.record_many_ns(results.refused_ns)
    answered = sum(results.statuses.values())
    return Point(target, rate, results.scheduled, results.within_ns(int(slo_ms * 1e6)), answered - results.statuses[200],
                 results.unanswered, ok.percentile_ms(50), ok.percentile_ms(99), ok.percentile_ms(99.9), math.nan,
                 too_many=results.statuses[429], timed_out=results.statuses[504],
                 after_admission=results.statuses[504] + results.statuses[500],
                 refusal_p99_ms=refused.percentile_ms(99) if results.refused_ns else math.nan,
                 sender_late_p99_ms=float(np.percentile(results.late_sends_ns, 99)) / 1e6, shed_at_door=shed)


def shed_at_door(address: str) -> int:
    """How many infers the gateway at `address` has refused at its door (its /metrics)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("clockwork_gateway_shed_total{"))


class HttpLone:
    """Lone requests to one target over one kept-alive HTTP connection, as `requests` or curl
    sends them one at a time: each answer's status and, for a 200 or a 429, how long it took."""

    def __init__(self, url: str, body: bytes):
        parts = urllib.parse.urlsplit(url)
        self.path, self.body = parts.path, body
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.results = http_load.HttpResults()

    def __call__(self) -> None:
        start = time.monotonic_ns()
        try:
            self.conn.request("POST", self.path, self.body, {"Content-Type": "application/json"})
            reply = self.conn.getresponse()
            reply.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next request connects again
            self.results.unanswered += 1
            return
        took_ns = time.monotonic_ns() - start
        self.results.statuses[reply.status] += 1
        if reply.status == 200:
            self.results.ok_ns.append(took_ns)
        elif reply.status == 429:
            self.results.refused_ns.append(took_ns)

    def clear(self) -> None:
        self.results = http_load.HttpResults()

    def point(self, target: str, slo_ms: float) -> Point:
        self.results.scheduled = sum(self.results.statuses.values()) + self.results.unanswered
        self.results.late_sends_ns = [0]  # each is sent when it is timed
        return http_point(target, 0.0, self.results, slo_ms)


def lone_requests(urls: dict[str, str], body: bytes, args: argparse.Namespace, native: Lone,
                  direct: Callable[[], object]) -> tuple[list[Point], float]:
    """Every target's lone requests, the native client's (`native`) and the direct call's, in
    turn (comparison.interleaved), after ten each that are not counted: the HTTP targets' and
    the native client's Points, and the direct call's p50 in ms."""
    calls = {target: HttpLone(url, body) for target, url in urls.items()}
    took = interleaved({**calls, native.target: native, DIRECT: direct},
                       max(10, min(LONE_REQUESTS, round(args.duration_s / GAP_S))), warmup=10)
    points = [call.point(target, args.slo_ms) for target, call in calls.items()]
    for p in points:
        say(f"{p.target} lone: {p.within_slo}/{p.offered} within {args.slo_ms:g} ms, p50 {p.p50_ms:.2f} ms, "
            f"p99 {p.p99_ms:.2f} ms")
    direct_ms = latencies(took[DIRECT]).percentile_ms(50)
    say(f"direct onnxruntime lone: p50 {direct_ms:.2f} ms")
    return [*points, native.point(took[native.target])], direct_ms


def measure(target: str, url: str, body: bytes, rate: float, args: argparse.Namespace,
            shed: Callable[[], int]) -> Point:
    """One rate against one running target; `shed` counts the requests its door refused so far."""
    schedule = schedule_for(args.workload, rate, args.duration_s, args.seed + round(rate))
    before = shed()
    results = asyncio.run(http_load.play(url, body, schedule, max(1.0, 10 * args.slo_ms / 1000)))
    p = http_point(target, rate, results, args.slo_ms, shed() - before)
    say(f"{target} {p.rate:g}/s: {p.within_slo}/{p.offered} within {args.slo_ms:g} ms, "
        f"{p.too_many} x 429 ({p.shed_at_door} at the door), {p.timed_out} x 504, {p.unanswered} unanswered, p50 {p.p50_ms:.2f} ms, "
        f"p99 {p.p99_ms:.2f} ms, sent late by {p.sender_late_p99_ms:.2f} ms at p99")
    return p


def settle(urls: Sequence[str], inputs: dict) -> None:
    """Wait until every target has worked off what an earlier rate left: one request each with a
    two-minute SLO, answered after everything queued before it (the plain server is FIFO; the
    gateway's controller serves it by its deadline, the latest). Both idle while either is
    measured, as `versus` has it (versus.settle)."""
    probe = json_body(inputs, SETTLE_SLO_MS)
    for url in urls:
        give_up = time.monotonic() + SETTLE_SLO_MS / 1000
        while True:
            request = urllib.request.Request(url, data=probe, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=SETTLE_SLO_MS / 1000) as reply:
                    reply.read()
                break
            except urllib.error.HTTPError as exc:  # a 429 from a door still shedding what the rate left
                if time.monotonic() > give_up:
                    raise RuntimeError(f"the target at {url} answered {exc.code} for two minutes") from None
                time.sleep(0.1)
            except OSError as exc:  # no answer at all: the target failed, the run ends here (logs kept)
                raise RuntimeError(f"the target at {url} answered nothing: {exc}") from None


def sweep(urls: dict[str, str], body: bytes, inputs: dict, rates: Sequence[float], args: argparse.Namespace,
          shed: Callable[[], int]) -> tuple[list[Point], float]:
    """Each rate played to both targets in turn before the next (the first place passing between
    them), then 3x the highest rate the gateway sustained, to both, as `versus` plays its rates
    (versus.sweep): minutes between one target's sweep and the other's were a change of the
    host's phase as often as not. The points, and that overload rate (0: none was played)."""
    sheds = {GATEWAY: shed, PLAIN: lambda: 0}

    def at(rates: Sequence[float], first_turn: int) -> list[Point]:
        points = []
        for i, rate in enumerate(rates):
            for target in in_turn(list(urls), first_turn + i):
                settle(list(urls.values()), inputs)
                points.append(measure(target, urls[target], body, rate, args, sheds[target]))
        return points

    points = at(rates, 0)
    overload = OVERLOAD * sustained(points, GATEWAY)
    if overload and overload not in rates:
        points += at([overload], len(rates))
    return points, overload


@contextlib.contextmanager
def plain_http(model_path: Path) -> Iterator[str]:
    """bench/plain_server.py over HTTP; its infer URL."""
    address = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "clockwork.bench.plain_server", str(model_path), address],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the plain HTTP server did not start (exit status {server.poll()})")
        yield f"{address}/v2/models/{MODEL}/infer"
    finally:
        server.terminate()
        server.wait(timeout=10)


def verdicts(points: Sequence[Point], rates: Sequence[float], overload: float,
             direct_ms: float = math.nan) -> list[tuple[str, str, str]]:
    """(what, measured, goal) rows, every figure a ratio or a count within this run: the sweep's
    `rates`, the `overload` rate (0: none was played), and the direct call's lone p50."""
    lone = {p.target: p for p in points if p.rate == 0}
    sweep = [p for p in points if p.rate in rates]
    rows = []
    if GATEWAY in lone and PLAIN in lone:
        g, p = lone[GATEWAY].p50_ms, lone[PLAIN].p50_ms
        rows.append(("lone request p50, gateway / plain HTTP", f"{g:.2f} / {p:.2f} ms = {g / p:.2f}", "<= 1.2"))
        if NATIVE in lone and not math.isnan(direct_ms):
            n = lone[NATIVE].p50_ms
            rows.append(("  over plain HTTP / native client over the direct call", f"+{g - p:.2f} / +{n - direct_ms:.2f} ms",
                         "(alike: none of it the gateway's own)"))
    gw, plain = sustained(sweep, GATEWAY), sustained(sweep, PLAIN)
    rows.append((f"rate sustained (>= {100 * IN_SLO:g}% in SLO), gateway / plain HTTP",
                 f"{gw:g} / {plain:g} = {gw / plain if plain else math.nan:.2f}", ">= 1.0"))
    if not overload:
        rows.append((f"gateway at {OVERLOAD:g} x its sustained rate", "not played: it sustained none of the rates",
                     ">= 99.9% admitted in SLO"))
    for p in [q for q in points if overload and q.rate == overload]:
        if p.target == GATEWAY:
            rows.append((f"gateway at {p.rate:g}/s = {OVERLOAD:g} x its sustained rate: admitted within SLO",
                         f"{100 * p.admitted_within_slo:.2f}% ({p.within_slo} of {p.admitted})", ">= 99.9%"))
            rows.append(("  the rest refused quickly", f"{p.too_many} x 429, p99 {p.refusal_p99_ms:.2f} ms", "429, fast"))
            rows.append(("  answers after the deadline (504)", str(p.timed_out), "0"))
        else:
            rows.append((f"plain HTTP at {p.rate:g}/s", f"in SLO {100 * p.share_within_slo:.1f}%", "(collapses)"))
    return rows


def run(args: argparse.Namespace, model: bytes, shapes: dict, inputs: dict, model_path: Path, rates: list[float],
        run_dir: Path, out: Path, direct: Callable[[], object]) -> int:
    body = json_body(inputs, args.slo_ms)
    with cluster(run_dir / "clockwork", [worker_spec(args)], controller_settings=args.set) as c, \
            plain_http(model_path) as plain_url:
        with Client(c.client_endpoint, timeout_s=60) as client:
            client.upload(model, MODEL, input_shapes=shapes)
            address = start_gateway(c.group, c.client_endpoint, extra=["--processes", str(args.gateway_processes)])["http"]
            url = f"http://{address}/v2/models/{MODEL}/infer"
            door = (lambda: shed_at_door(address)) if args.gateway_processes == 1 else (lambda: 0)
            (gateway_lone, plain_lone, native_lone), direct_ms = lone_requests(
                {GATEWAY: url, PLAIN: plain_url}, body, args, Lone(NATIVE, client, inputs, args.slo_ms), direct)
        played, overload = sweep({GATEWAY: url, PLAIN: plain_url}, body, inputs, rates, args, door)
        points = sorted([gateway_lone, plain_lone, *played], key=lambda p: (p.target != GATEWAY, p.rate))
    header = ["target", "rate/s", "offered", "in SLO", "429", "of them door's", "504", "other refusals", "unanswered", "p50 ms",
              "p99 ms", "429 p99 ms", "sent late p99 ms"]
    print(format_table([[p.target, p.rate or "lone", p.offered, f"{100 * p.share_within_slo:.2f}%", p.too_many,
                         p.shed_at_door, p.timed_out, p.refused - p.too_many - p.timed_out, p.unanswered, p.p50_ms, p.p99_ms,
                         p.refusal_p99_ms, p.sender_late_p99_ms] for p in points], header))
    print(format_table(verdicts([*points, native_lone], rates, overload, direct_ms), ["verdict", "measured", "goal"]))
    write_json(out / "versus-json.json", {"slo_ms": args.slo_ms, "workload": args.workload,
                                          "gateway_processes": args.gateway_processes, "overload_rate": overload,
                                          "direct_p50_ms": direct_ms, "native_lone": asdict(native_lone),
                                          "points": [asdict(p) for p in points]})
    plot(out / "versus-json.png", points, args.slo_ms)
    say(f"wrote {out / 'versus-json.json'} and {out / 'versus-json.png'}")
    return 0
