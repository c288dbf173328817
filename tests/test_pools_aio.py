"""Two real pools through one AsyncClient, with no load balancer (so this runs where haproxy
cannot): uploads land in the owner, infers follow them, and a killed pool fails fast by name."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from clockwork.bench.models import mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster
from clockwork.client import AsyncClient, Unreachable, pools

pytestmark = pytest.mark.timeout(120)


def test_an_async_client_routes_each_model_to_its_pool_and_names_a_lost_one(tmp_path):
    with cluster(tmp_path / "a", [WorkerSpec("a")]) as a, cluster(tmp_path / "b", [WorkerSpec("b")]) as b:
        both = [a.client_endpoint, b.client_endpoint]
        owned = {}
        for i in range(100):
            owned.setdefault(pools.owner(f"m{i}", both), f"m{i}")
        model_a, model_b = owned[a.client_endpoint], owned[b.client_endpoint]
        x = np.zeros((1, 64), np.float32)

        async def run() -> None:
            async with AsyncClient(both) as cw:
                await asyncio.gather(cw.upload(mlp_onnx(), model_a), cw.upload(mlp_onnx(), model_b))
                assert [(m["name"], m["pool"]) for m in await cw.list()] == sorted(
                    [(model_a, a.client_endpoint), (model_b, b.client_endpoint)])
                assert {w["pool"] for w in (await cw.status())["workers"]} == set(both)
                for model in (model_a, model_b):
                    assert (await cw.infer(model, x, slo_ms=1000)).output.shape == (1, 10)

                b.group.expect_exit("controller")
                b.group.get("controller").popen.kill()
                b.group.get("controller").popen.wait(timeout=10)
                assert (await cw.infer(model_a, x, slo_ms=1000)).output.shape == (1, 10)
                started = time.monotonic()
                with pytest.raises(Unreachable) as lost:
                    await cw.infer(model_b, x, slo_ms=10_000)
                assert time.monotonic() - started < 8 and b.client_endpoint in lost.value.detail

        asyncio.run(run())
        with a.client() as only_a:
            assert [m["name"] for m in only_a.list()] == [model_a]
