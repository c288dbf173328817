"""`clockwork-bench many-models`: every control path with thousands of registered models.

Clockwork's point is serving thousands of models at once (its Azure replay had 4,026). This
registers that many through real processes (a controller with metrics on, an emulated worker,
an onnxruntime worker for the ONNX ones, the v2 gateway) and times each way of seeing them:

    clockwork ls (every page), ls --prefix, status, one status --watch frame, Client.list(),
    the gateway's model metadata, config, ready and repository index, tritonclient's
    get_model_metadata, and a metrics scrape.

Each is timed first with 10 models registered, then with all of them, then again after the
controller restarts; the verdict is the ratio to the 10-model time, measured in the same run.
Every call's answer is checked, so a path that fails is reported as failed, not as fast.

    clockwork-bench many-models                    # 4,026 models
    clockwork-bench many-models --models 1000 --json out/many.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import signal
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from clockwork.bench.models import mlp_onnx, profile_json
from clockwork.bench.procs import Cluster, WorkerSpec, cluster, controller_argv, free_port, run_in_temp_dir, workers_alive
from clockwork.bench.progress import Progress, command_main, say
from clockwork.bench.report import format_table, write_json
from clockwork.client import Client, cli

ONNX_MODELS = 3  # real models among the emulated profiles: their signatures come from ONNX
SMALL = 10  # the reference size
REPEATS = 3  # each call is timed this many times; the median is kept


@dataclass(frozen=True)
class Timing:
    call: str
    small_ms: float  # with SMALL models
    large_ms: float  # with all of them
    restarted_ms: float  # with all of them, after a controller restart
    detail: str  # what the large call returned, e.g. "4026 rows"

    @property
    def ratio(self) -> float:
        return self.large_ms / self.small_ms if self.small_ms > 0 else math.nan


def names(total: int) -> list[str]:
    """`total` model names, ONNX ones first; a shared prefix ("m-01") holds a known 10."""
    return [f"onnx-{i}" for i in range(ONNX_MODELS)] + [f"m-{i:05}" for i in range(total - ONNX_MODELS)]


def register(client: Client, todo: Sequence[str], progress: Progress | None = None) -> None:
    for i, name in enumerate(todo):
        if name.startswith("onnx-"):
            client.upload(mlp_onnx(seed=int(name[5:])), name)
        else:
            client.upload(profile_json(), name, format="profile")
        if progress is not None:
            progress.update(i + 1, sent=i + 1, ok=i + 1, rejected=0, force=i + 1 == len(todo))


def cli_output(endpoint: str, *argv: str) -> str:
    """What `clockwork ARGV` prints, run in this process (its start-up would hide the call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["--endpoint", endpoint, *argv])
    if code != 0:
        raise RuntimeError(f"clockwork {' '.join(argv)} exited with {code}")
    return out.getvalue()


def http(url: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.read()


def calls(c: Cluster, gateway: str, metrics: str, count: int) -> dict[str, Callable[[], str]]:
    """Each call, returning a short account of its answer and raising if the answer is wrong."""
    import tritonclient.http as triton

    endpoint, model = c.client_endpoint, "onnx-1"

    def ls_all() -> str:
        rows = len(cli_output(endpoint, "ls").splitlines()) - 1
        return _expect(rows, count, "rows")

    def ls_prefix() -> str:
        return _expect(len(json.loads(cli_output(endpoint, "ls", "--prefix", "m-0000", "--json"))),
                       min(10, count - ONNX_MODELS), "models")

    def listing() -> str:
        with Client(endpoint, timeout_s=60) as client:
            return _expect(len(client.list()), count, "models")

    def index() -> str:
        return _expect(len(json.loads(http(f"{gateway}/v2/repository/index", "POST"))), count, "entries")

    def metadata() -> str:
        return f"inputs {[i['name'] for i in json.loads(http(f'{gateway}/v2/models/{model}'))['inputs']]}"

    def triton_metadata() -> str:
        client = triton.InferenceServerClient(gateway.removeprefix("http://"))
        try:
            return f"inputs {[i['name'] for i in client.get_model_metadata(model)['inputs']]}"
        finally:
            client.close()

    def scrape() -> str:
        text = http(metrics).decode()
        series = [line for line in text.splitlines() if line and not line.startswith("#")]
        models = {line.split('model="', 1)[1].split('"', 1)[0] for line in series if 'model="' in line}
        return f"{len(text) / 1024:.0f} KiB, {len(series)} series, {len(models)} model labels"

    return {
        "clockwork ls (all pages)": ls_all,
        "clockwork ls --prefix": ls_prefix,
        "clockwork status": lambda: f"{len(cli_output(endpoint, 'status').splitlines())} lines",
        "clockwork status --watch (1 frame)": lambda: f"{len(cli_output(endpoint, 'status', '--watch', '--iterations', '1', '--interval', '0.01').splitlines())} lines",
        "Client.list()": listing,
        "gateway model metadata": metadata,
        "gateway model config": lambda: f"{len(http(f'{gateway}/v2/models/{model}/config'))} bytes",
        "gateway model ready": lambda: f"HTTP {urllib.request.urlopen(f'{gateway}/v2/models/{model}/ready', timeout=60).status}",
        "gateway repository index": index,
        "tritonclient get_model_metadata": triton_metadata,
        "metrics scrape": scrape,
    }


def _expect(got: int, want: int, what: str) -> str:
    if got != want:
        raise RuntimeError(f"{got} {what}, expected {want}")
    return f"{got} {what}"


def timed(fn: Callable[[], str]) -> tuple[float, str]:
    """Median milliseconds over REPEATS calls, and the last call's account."""
    took, detail = [], ""
    for _ in range(REPEATS):
        start = time.perf_counter()
        detail = fn()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), detail


def time_all(c: Cluster, gateway: str, metrics: str, count: int) -> dict[str, tuple[float, str]]:
    return {name: timed(fn) for name, fn in calls(c, gateway, metrics, count).items()}


def restart_controller(c: Cluster, settings: Sequence[str], expected: int) -> None:
    """SIGTERM the controller, start it on the same state, wait for the workers and models."""
    old = next(p for p in c.group.procs if p.name == "controller")
    old.popen.send_signal(signal.SIGTERM)
    old.popen.wait(timeout=30)
    c.group.expect_exit("controller")
    c.group.start("controller-restarted", controller_argv(c.state_dir, c.client_endpoint, c.worker_endpoint,
                                                          "warning", settings))
    names_ = [w.name for w in c.workers]
    with Client(c.client_endpoint, timeout_s=5) as client:
        c.group.wait_until(lambda: workers_alive(client.status(), names_) and client.list_page(limit=1)["total"] == expected,
                           120, "the restarted controller to see its workers and models", interval_s=0.5)


def run(args: argparse.Namespace) -> int:
    metrics_port = free_port()
    settings = [f'metrics_address="127.0.0.1:{metrics_port}"']
    workers = [WorkerSpec("emu", "emulated", devices=4, device_memory_mb=2048), WorkerSpec("cpu", "onnxruntime")]
    every = names(args.models)

    def body(run_dir: Path) -> int:
        with cluster(run_dir, workers, controller_settings=settings) as c:
            port = free_port()
            c.group.start("gateway", [sys.executable, "-m", "clockwork.client.gateway", "--listen", f"127.0.0.1:{port}",
                                      "--controller", c.client_endpoint, "--log-level", "warning"])
            gateway, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
            c.group.wait_until(lambda: _answers(f"{gateway}/v2/health/live"), 30, "the gateway to answer")
            with Client(c.client_endpoint, timeout_s=60) as admin:
                register(admin, every[:SMALL])
                small = time_all(c, gateway, metrics, SMALL)
                started = time.monotonic()
                with Progress(total_s=len(every) - SMALL, label="registering") as bar:
                    register(admin, every[SMALL:], bar)
                upload_s = time.monotonic() - started
                say(f"registered {len(every) - SMALL} more models in {upload_s:.1f} s")
            large = time_all(c, gateway, metrics, len(every))
            started = time.monotonic()
            restart_controller(c, settings, len(every))
            restart_s = time.monotonic() - started
            say(f"controller restarted and saw all {len(every)} models again in {restart_s:.1f} s")
            again = time_all(c, gateway, metrics, len(every))
        timings = [Timing(name, small[name][0], large[name][0], again[name][0], large[name][1]) for name in small]
        print(format_table([[t.call, f"{t.small_ms:.1f}", f"{t.large_ms:.1f}", f"{t.ratio:.1f}x",
                             f"{t.restarted_ms:.1f}", t.detail] for t in timings],
                           ["call", f"{SMALL} models ms", f"{len(every)} models ms", "ratio", "after restart ms",
                            "answer"]))
        print(f"\nuploads: {len(every) - SMALL} in {upload_s:.1f} s; controller restart to serving: {restart_s:.1f} s")
        if args.json:
            write_json(args.json, {"models": len(every), "upload_s": upload_s, "restart_s": restart_s,
                                   "timings": [{**t.__dict__, "ratio": t.ratio} for t in timings]})
        return 0

    return run_in_temp_dir("cw-many-", args.keep, "many-models benchmark", body)


def _answers(url: str) -> bool:
    try:
        http(url)
        return True
    except OSError:
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clockwork-bench many-models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=4026, help="models to register (default: the Azure trace's 4,026)")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    args = parser.parse_args(argv)
    if args.models < SMALL + ONNX_MODELS:
        parser.error(f"--models must be at least {SMALL + ONNX_MODELS}")
    return args


main = command_main(parse_args, run, "benchmark")


if __name__ == "__main__":
    sys.exit(main())
