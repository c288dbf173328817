"""`python -m clockwork.bench.gateway_bench`: what the KServe v2 HTTP gateway adds to a request.

One run, one cluster (a controller and an onnxruntime worker on loopback), one tiny model
(y = x + 1 on [1, 4] float32), and a `clockwork-gateway` in front of the controller:

- overhead: closed loop, one request outstanding, interleaved in blocks so that drift hits both
  paths alike; the native client (`client.Client`) and a v2 client through the gateway (JSON
  tensors; `tritonclient.http` when it is installed, else a keep-alive `http.client`).
  Reports p50 and p99 of each and their differences (gateway minus native).
- rate: the most requests per second the gateway answers with a few concurrent keep-alive
  connections (aiohttp client) for a few seconds. On a small machine the load generator, the
  gateway, the controller and the worker share the cores: the figure is a floor.

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clockwork.bench import models as bench_models
from clockwork.bench.procs import WorkerSpec, cluster, free_port, http_ok, run_in_temp_dir
from clockwork.bench.report import Latencies, format_table, write_json
from clockwork.client import Client

MODEL = "tiny"
WIDTH = 4
SLO_MS = 1000.0


# ----------------------------------------------------------------------------- the two paths


def native_path(endpoint: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    client = Client(endpoint, timeout_s=10)

    def once(x: np.ndarray) -> np.ndarray:
        return client.infer(MODEL, {"x": x}, slo_ms=SLO_MS).outputs["y"]

    return once, client.close


def v2_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}],
                       "parameters": {"timeout": int(SLO_MS * 1000)}}).encode()


def gateway_path(address: str, kind: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """A closed-loop v2 client over one keep-alive connection, JSON tensors both ways."""
    if kind == "triton":
        import tritonclient.http as httpclient

        triton = httpclient.InferenceServerClient(address, connection_timeout=10, network_timeout=10)
        wanted = [httpclient.InferRequestedOutput("y", binary_data=False)]

        def once(x: np.ndarray) -> np.ndarray:
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=False)
            return triton.infer(MODEL, [tensor], outputs=wanted, timeout=int(SLO_MS * 1000)).as_numpy("y")

        return once, triton.close
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def once_http(x: np.ndarray) -> np.ndarray:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=v2_body(x),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        doc = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"gateway answered {reply.status}: {doc.get('error')}")
        out = doc["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    return once_http, conn.close


def timed(once: Callable[[np.ndarray], np.ndarray], x: np.ndarray, into: Latencies | None,
          failures: dict[str, int], label: str) -> None:
    start = time.perf_counter_ns()
    try:
        once(x)
    except Exception as exc:  # counted, shown in the report; a benchmark run goes on
        key = f"{label}: {type(exc).__name__}"
        failures[key] = failures.get(key, 0) + 1
        return
    if into is not None:
        into.record_ns(time.perf_counter_ns() - start)


def measure_overhead(native: Callable, gateway: Callable, requests: int, warmup: int, block: int,
                     failures: dict[str, int]) -> tuple[Latencies, Latencies]:
    x = np.zeros((1, WIDTH), np.float32)
    for _ in range(warmup):
        timed(native, x, None, failures, "native")
        timed(gateway, x, None, failures, "gateway")
    failures.clear()
    native_lat, gateway_lat = Latencies(), Latencies()
    done = 0
    while done < requests:
        n = min(block, requests - done)
        for _ in range(n):
            timed(native, x, native_lat, failures, "native")
        for _ in range(n):
            timed(gateway, x, gateway_lat, failures, "gateway")
        done += n
    return native_lat, gateway_lat


# ----------------------------------------------------------------------------- rate


async def measure_rate(url: str, concurrency: int, seconds: float) -> tuple[int, dict[int, int], float, Latencies]:
    """(OK answers, other answers by HTTP status (0: none), elapsed s, latency) of `concurrency`
    closed loops over keep-alive connections for `seconds`."""
    import aiohttp

    body = v2_body(np.zeros((1, WIDTH), np.float32))
    latency = Latencies()
    other: dict[int, int] = {}
    ok = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def loop() -> None:
            nonlocal ok
            while time.monotonic() < stop_at:
                start = time.perf_counter_ns()
                try:
                    async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                            headers={"Content-Type": "application/json"}) as reply:
                        await reply.read()
                        status = reply.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0  # no HTTP answer: counted as status 0
                if status == 200:
                    ok += 1
                    latency.record_ns(time.perf_counter_ns() - start)
                else:
                    other[status] = other.get(status, 0) + 1

        begin = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.monotonic() - begin
    return ok, other, elapsed, latency


# ----------------------------------------------------------------------------- command


def default_client() -> str:
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "http"
    return "triton"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clockwork.bench.gateway_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="measured closed-loop requests per path")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests per path first")
    p.add_argument("--block", type=int, default=100, help="requests per path before switching paths")
    p.add_argument("--client", choices=("triton", "http"), default=default_client(),
                   help="v2 client for the overhead loop: tritonclient.http, or a bare http.client")
    p.add_argument("--rate-seconds", type=float, default=5.0, help="length of the request-rate run (0: skip)")
    p.add_argument("--concurrency", type=int, default=8, help="connections of the request-rate run")
    p.add_argument("--connections", type=int, default=4, help="the gateway's controller connections")
    p.add_argument("--out", default=None, help="folder for gateway-summary.json (none: print only)")
    p.add_argument("--keep", action="store_true", help="keep the temporary state and log folder")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    args = p.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.block < 1 or args.concurrency < 1 or args.connections < 1:
        p.error("--requests, --block, --concurrency and --connections must be >= 1, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> int:
    return run_in_temp_dir("clockwork-gateway-bench-", args.keep, "gateway bench",
                           lambda run_dir: measure_and_report(args, run_dir))


def measure_and_report(args: argparse.Namespace, run_dir: Path) -> int:
    with cluster(run_dir, [WorkerSpec("cpu", "onnxruntime", devices=1)], log_level=args.log_level) as c:
        port = free_port()
        address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        c.group.start("gateway", [sys.executable, "-m", "clockwork.client.gateway", "--listen", address,
                                  "--controller", c.client_endpoint, "--connections", str(args.connections),
                                  "--log-level", args.log_level])
        with c.client() as admin:
            admin.upload(bench_models.tiny_onnx(WIDTH), MODEL, format="onnx", replace=True)
            c.group.wait_until(lambda: admin.infer(MODEL, {"x": np.zeros((1, WIDTH), np.float32)},
                                                   slo_ms=SLO_MS), 60, "the model to serve")
        c.group.wait_until(lambda: http_ok(f"{url}/v2/health/ready"), 30, "the gateway to be ready")
        native, close_native = native_path(c.client_endpoint)
        gateway, close_gateway = gateway_path(address, args.client)
        failures: dict[str, int] = {}
        try:
            print(f"measuring {args.requests} requests per path ({args.client} client through the gateway) "
                  f"after {args.warmup} warm-up ...", file=sys.stderr, flush=True)
            native_lat, gateway_lat = measure_overhead(native, gateway, args.requests, args.warmup,
                                                       args.block, failures)
        finally:
            close_native()
            close_gateway()
        rate = None
        if args.rate_seconds > 0:
            print(f"request rate: {args.concurrency} connections for {args.rate_seconds:g} s ...",
                  file=sys.stderr, flush=True)
            rate = asyncio.run(measure_rate(url, args.concurrency, args.rate_seconds))
        c.check()
    return report(args, native_lat, gateway_lat, failures, rate)


def report(args: argparse.Namespace, native: Latencies, gateway: Latencies, failures: dict[str, int],
           rate: tuple[int, dict[int, int], float, Latencies] | None) -> int:
    diff = {p: gateway.percentile_ms(p) - native.percentile_ms(p) for p in (50, 99)}
    rows = [("native client", native.count, native.percentile_ms(50), native.percentile_ms(99), native.max_ms()),
            (f"gateway ({args.client}, JSON)", gateway.count, gateway.percentile_ms(50), gateway.percentile_ms(99),
             gateway.max_ms()),
            ("gateway - native", "", diff[50], diff[99], None)]
    print(format_table(rows, header=("closed loop, ms", "n", "p50", "p99", "max")))
    if failures:
        print(f"failed requests during measurement: {failures}")
    data: dict = {"requests": args.requests, "client": args.client, "native_ms": native.summary_ms(),
                  "gateway_ms": gateway.summary_ms(), "overhead_p50_ms": diff[50], "overhead_p99_ms": diff[99],
                  "failures": failures}
    if rate is not None:
        ok, other, elapsed, latency = rate
        print(f"\ngateway request rate: {ok / elapsed:.0f} req/s OK with {args.concurrency} connections over "
              f"{elapsed:.1f} s (p50 {latency.percentile_ms(50):.3f} ms, p99 {latency.percentile_ms(99):.3f} ms)"
              + (f"; non-OK answers by HTTP status: {other}" if other else ""))
        data.update(rate_per_s=ok / elapsed, rate_concurrency=args.concurrency, rate_other=other,
                    rate_latency_ms=latency.summary_ms())
    if args.out:
        print(f"wrote {write_json(Path(args.out) / 'gateway-summary.json', data)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
