"""Two pools behind the real HAProxy (systemd/haproxy.cfg) and the native client, then one pool's
controller killed: the other pool's models serve on, the lost pool's answer UNAVAILABLE quickly.

Everything is real on loopback: two controllers, each with an onnxruntime worker, a gateway per
pool that knows both pools, and Debian's haproxy, found or prepared by bench/haproxy.py; where
it can be neither, the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from clockwork.bench import debian, haproxy
from clockwork.bench.models import mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster, free_port, http_ok, start_gateway
from clockwork.client import Client, Unreachable, cli, pools
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(300)
SLO_MS = 200
X = np.zeros((1, 64), np.float32)


@pytest.fixture(scope="module")
def lb_command():
    try:
        return debian.found_or_prepared(haproxy.command, haproxy.prepare)
    except OSError as exc:
        pytest.skip(f"haproxy is not installed and could not be prepared: {exc}")


def one_name_per_pool(endpoints: tuple[str, ...]) -> dict[str, str]:
    """{endpoint: a model name that pool owns}."""
    names: dict[str, str] = {}
    for i in range(100):
        names.setdefault(pools.owner(f"mlp-{i}", endpoints), f"mlp-{i}")
    return names


def http_infer(lb: str, model: str) -> tuple[int, dict, float]:
    """(HTTP status, JSON body, seconds) of one v2 infer through the load balancer."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
                       "parameters": {"timeout": 10_000_000}}).encode()  # µs: a 10 s SLO
    request = urllib.request.Request(f"http://{lb}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read()), time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), time.monotonic() - started


def in_slo(cw: Client, model: str, count: int = 30) -> int:
    """How many of `count` infers were answered OK within SLO_MS (a refusal for capacity counts
    as not; any other error fails the test)."""
    met = 0
    for _ in range(count):
        try:
            met += cw.infer(model, X, slo_ms=SLO_MS).total_ms <= SLO_MS
        except Exception as exc:
            assert getattr(exc, "status", None) in (Status.WOULD_MISS_DEADLINE, Status.QUEUE_FULL), exc
    return met


def test_two_pools_serve_through_haproxy_and_the_native_client_and_survive_one_pools_loss(
        tmp_path, lb_command, capsys):
    with cluster(tmp_path / "a", [WorkerSpec("a", "onnxruntime")]) as a, \
            cluster(tmp_path / "b", [WorkerSpec("b", "onnxruntime")]) as b:
        both = (a.client_endpoint, b.client_endpoint)
        names = one_name_per_pool(both)
        model_a, model_b = names[a.client_endpoint], names[b.client_endpoint]
        with Client(",".join(both)) as cw:
            for name in (model_a, model_b):
                cw.upload(mlp_onnx(), name)
            assert [m["name"] for m in cw.list()] == sorted([model_a, model_b])
        with a.client() as only_a, b.client() as only_b:  # each model lives in its owner only
            assert [m["name"] for m in only_a.list()] == [model_a]
            assert [m["name"] for m in only_b.list()] == [model_b]

        gateways = {"CLOCKWORK_GATEWAY_A": start_gateway(a.group, ",".join(both))["http"],
                    "CLOCKWORK_GATEWAY_B": start_gateway(b.group, ",".join(both))["http"]}
        lb = f"127.0.0.1:{free_port()}"
        a.group.start("haproxy", [*lb_command, "-db", "-f", str(haproxy.CONFIG)],
                      env={**os.environ, "CLOCKWORK_LB_BIND": lb, **gateways})
        a.group.wait_until(lambda: http_ok(f"http://{lb}/v2/health/live"), 30, "haproxy to answer")
        for name in (model_a, model_b):
            status, body, _ = http_infer(lb, name)
            assert status == 200 and body["outputs"][0]["shape"] == [1, 10], body

        with Client(",".join(both)) as cw:
            before = in_slo(cw, model_a)
            controller_b = b.group.get("controller")
            b.group.expect_exit("controller")
            controller_b.popen.kill()
            controller_b.popen.wait(timeout=10)

            # The other pool's model, natively and through the load balancer: as before.
            assert in_slo(cw, model_a) >= min(before, 27)
            assert http_infer(lb, model_a)[0] == 200
            # The lost pool's model: UNAVAILABLE naming its pool, within seconds though its
            # SLO is 10 s.
            started = time.monotonic()
            with pytest.raises(Unreachable) as lost:
                cw.infer(model_b, X, slo_ms=10_000)
            assert time.monotonic() - started < 8
            assert lost.value.status is Status.UNAVAILABLE and b.client_endpoint in lost.value.detail
            status, body, took_s = http_infer(lb, model_b)
            assert status == 503 and b.client_endpoint in body["error"] and took_s < 8, body
            with pytest.raises(Unreachable):  # a listing would be missing a pool's models
                cw.list()

        capsys.readouterr()
        assert cli.main(["--endpoint", ",".join(both), "show", model_a]) == 0
        assert cli.main(["--endpoint", ",".join(both), "infer", model_b, "--input", str(save(tmp_path)),
                         "--slo-ms", "100"]) == 6
        assert b.client_endpoint in capsys.readouterr().err


def save(tmp_path) -> os.PathLike:
    path = tmp_path / "x.npy"
    np.save(path, X)
    return path
