"""Triton's real perf_analyzer against the v2 gateway, over HTTP and gRPC: the load tool Triton
users reach for first.

perf_analyzer is found or prepared by bench/perf_analyzer.py (the real binary, with Debian 13's
libraries in a private folder); where neither works, every test here is skipped and says why.
The system is real: a controller, an onnxruntime worker and the gateway on loopback.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from clockwork.bench import debian, perf_analyzer
from clockwork.bench.models import mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster, start_gateway

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def perf():
    try:
        return debian.found_or_prepared(perf_analyzer.command, perf_analyzer.prepare)
    except OSError as exc:
        pytest.skip(f"perf_analyzer is not installed and could not be prepared: {exc}")


@pytest.fixture(scope="module")
def system(tmp_path_factory, perf):
    with cluster(tmp_path_factory.mktemp("perf"), [WorkerSpec("cpu", "onnxruntime")]) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "mlp")
        c.urls = start_gateway(c.group, c.client_endpoint, grpc=True)
        yield c


def run(perf: list[str], system, protocol: str, *args: str) -> str:
    # Stability is judged loosely: on a 2-core machine perf_analyzer, the gateway, the controller
    # and the worker share the cores, and throughput varies more than its default 10%.
    proc = subprocess.run([*perf, "-m", "mlp", "-u", system.urls[protocol], "-i", protocol, "--measurement-interval", "800",
                           "--stability-percentage", "100", "--max-trials", "10", *args],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def client_and_server_counts(report: str) -> list[tuple[int, int, int]]:
    """Per load level: (client request count, server successful request count, server executions)."""
    clients = [int(n) for n in re.findall(r"Client:\s*\n\s*Request count: (\d+)", report)]
    servers = [int(n) for n in re.findall(r"Successful request count: (\d+)", report)]
    executions = [int(n) for n in re.findall(r"Execution count: (\d+)", report)]
    return list(zip(clients, servers, executions))


def agree(client: int, server: int) -> bool:
    """The same requests, give or take those in flight at the measurement window's two edges
    (perf_analyzer reads the server's statistics there): at 300/s with answers of 5-10 ms on a
    slow 2-core host, up to three at each, more than the two once allowed."""
    return client > 0 and abs(server - client) <= max(2, client // 40)


def answered(system) -> int:
    return next(m["answered"] for m in system.status()["models"] if m["name"] == "mlp")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_concurrency_sweep_runs_and_the_server_counts_what_the_client_sent(perf, system, protocol):
    before = answered(system)
    levels = client_and_server_counts(run(perf, system, protocol, "--concurrency-range", "1:4"))
    assert len(levels) == 4
    for client, server, executions in levels:
        assert agree(client, server)  # one gateway sees all of this model's traffic
        assert 0 < executions <= server  # requests that shared a batch share an execution
    # the controller answered everything perf_analyzer measured, and its warm-up besides
    assert answered(system) - before >= sum(server for _, server, _ in levels)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_poisson_request_rate_sweep_runs(perf, system, protocol):
    levels = client_and_server_counts(run(perf, system, protocol, "--request-rate-range", "100:300:100",
                                          "--request-distribution", "poisson"))
    assert len(levels) == 3
    assert all(agree(client, server) for client, server, _ in levels)
