"""The gateway past its own capacity: its door (client/door.py) on a real event loop that is kept
behind, and `--processes N` with real processes sharing one port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.request

import numpy as np
import pytest

from clockwork.bench.models import mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster, free_port, http_ok
from clockwork.client import v2
from clockwork.client.gateway import Gateway, GatewayConfig
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(120)
MS = 1_000_000


def admit(gateway: Gateway) -> v2.V2Error | int:
    """What the door does with a request whose handler runs now: its arrival time, or the refusal."""
    arrived_ns = gateway.door.arrival_ns(time.monotonic_ns())
    try:
        gateway.admit("m", "http", arrived_ns)
    except v2.V2Error as err:
        return err
    return arrived_ns


def test_the_door_sheds_with_429_while_the_loop_stands_behind_and_stops_after_a_quiet_interval():
    async def behind(gateway: Gateway, seconds: float) -> list[v2.V2Error | int]:
        """Keep the loop 20 ms late for `seconds` (what a saturated gateway does), admitting two
        requests per turn: what each got (its arrival time, or the refusal)."""
        outcomes = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
            await asyncio.sleep(0)
            for _ in range(2):
                outcomes.append(admit(gateway))
        return outcomes

    async def caught_up(gateway: Gateway) -> v2.V2Error | int:
        """A request read once the loop runs on time again (its lag within the level shedding
        drains to; on a busy host a fixed 5 ms pause did not always get there), within 30 ms:
        inside the 50 ms interval, after which a read would find the load gone."""
        deadline = time.monotonic() + 0.03
        while True:
            await asyncio.sleep(0.002)
            on_time = gateway.door.lag_ns(time.monotonic_ns()) <= gateway.door.shedder.drain_to_ns
            if on_time or time.monotonic() > deadline:
                return admit(gateway)

    async def scenario() -> tuple[list, list, list, list]:
        # 10 ms: the door probes the loop every 2.5 ms and drains to 2.5 ms, well above the
        # ~0.75 ms late that asyncio's millisecond timers fire a probe on an idle loop.
        gateway = Gateway(GatewayConfig(shed_lag_ms=10, shed_interval_ms=50, shed_min_requests=4, retry_after_s=2,
                                        shed_ceiling_ms=0))
        gateway.door.start()
        try:
            gateway.door.answered(46 * MS, 50 * MS, time.monotonic_ns())  # near its deadline: the lag hurts
            standing = await behind(gateway, 0.5)
            fresh = [await caught_up(gateway)]  # on time: served even while shedding
            again = await behind(gateway, 0.001)  # late again within the interval: still shed
            await asyncio.sleep(0.3)  # a quiet interval or more ends the shedding
            burst = await behind(gateway, 0.001)
            return standing, fresh, again, burst
        finally:
            await gateway.door.stop()

    standing, fresh, again, burst = asyncio.run(scenario())
    refusals = [o for o in standing if isinstance(o, v2.V2Error)]
    assert len(refusals) > len(standing) // 2 and isinstance(standing[0], int)
    err = refusals[-1]
    assert err.http_status == 429 and err.headers() == {"Retry-After": "2"} and "behind its input" in err.message
    assert err.status is Status.QUEUE_FULL
    assert isinstance(fresh[0], int)
    assert all(isinstance(o, v2.V2Error) for o in again)
    assert all(isinstance(o, int) for o in burst)


def test_a_standing_lag_is_served_while_answers_leave_in_time_and_shed_once_one_comes_near_its_deadline():
    """A gateway short of CPU at half its capacity: its loop stands 20 ms behind, but the infers
    it lets in are answered with time to spare, so nothing is shed; an answer with less than a
    tenth of its SLO left shows that the lag now hurts, and the door sheds."""
    async def behind(gateway: Gateway, seconds: float, used_ms: float) -> list[v2.V2Error | int]:
        """Keep the loop 20 ms late for `seconds`, admitting two requests per turn and answering
        one that used `used_ms` of a 50 ms SLO."""
        outcomes = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
            await asyncio.sleep(0)
            outcomes += [admit(gateway), admit(gateway)]
            gateway.door.answered(int(used_ms * MS), 50 * MS, time.monotonic_ns())
        return outcomes

    async def scenario() -> tuple[list, list]:
        gateway = Gateway(GatewayConfig(shed_lag_ms=10, shed_interval_ms=50, shed_min_requests=4, shed_ceiling_ms=0))
        gateway.door.start()
        try:
            return await behind(gateway, 0.4, used_ms=35), await behind(gateway, 0.2, used_ms=46)
        finally:
            await gateway.door.stop()

    in_time, near = asyncio.run(scenario())
    assert all(isinstance(o, int) for o in in_time)
    assert any(isinstance(o, v2.V2Error) and o.http_status == 429 for o in near)


def test_the_door_is_open_when_shedding_is_off():
    async def scenario() -> None:
        gateway = Gateway(GatewayConfig(shed_lag_ms=0, shed_min_requests=1))
        gateway.door.start()
        for _ in range(50):
            time.sleep(0.01)
            await asyncio.sleep(0)
            assert abs(admit(gateway) - time.monotonic_ns()) < 1_000_000  # and no lag is taken
        await gateway.door.stop()

    asyncio.run(scenario())


def infer_json(url: str) -> dict:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/mlp/infer", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def serving_process(url: str) -> tuple[int, int]:
    """(process index, pid) of the gateway process that a new connection reaches."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    index, pid = re.search(r'clockwork_gateway_process_info\{pid="(\d+)",process="(\d+)"\}', text).group(2, 1)
    return int(index), int(pid)


def test_two_gateway_processes_share_the_port_and_one_dying_leaves_it_to_the_other(tmp_path):
    with cluster(tmp_path, [WorkerSpec("cpu", "onnxruntime")]) as c:
        with c.client() as admin:
            admin.upload(mlp_onnx(), "mlp")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        c.group.start("gateway", [sys.executable, "-m", "clockwork.client.gateway", "--listen", f"127.0.0.1:{port}",
                                  "--controller", c.client_endpoint, "--processes", "2", "--log-level", "warning"])
        c.group.wait_until(lambda: http_ok(f"{url}/v2/health/ready"), 30, "the gateway to be ready")
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            index, pid = serving_process(url)
            seen[index] = pid
            assert infer_json(url)["outputs"][0]["name"] == "y"
        assert sorted(seen) == [0, 1], "new connections reached one process only"

        os.kill(seen[0], signal.SIGKILL)
        time.sleep(0.5)
        for _ in range(20):  # every new connection now reaches the survivor, which serves it
            assert serving_process(url) == (1, seen[1])
            assert np.asarray(infer_json(url)["outputs"][0]["data"]).shape == (10,)
        assert http_ok(f"{url}/v2/health/live")


def test_a_request_that_spent_its_slo_in_the_gateway_is_refused_429_unsent():
    """A request that waited its whole SLO in the gateway is refused 429 with Retry-After,
    without reaching the controller (the gateway here has no controller connection at all)."""
    req = v2.parse_infer_request(json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                                         "data": [0, 1]}], "parameters": {"timeout": 50_000}}).encode(),
                                 None, 1000.0)

    async def scenario() -> tuple[v2.V2Error, bool, bool]:
        gateway = Gateway(GatewayConfig(shed_lag_ms=10, retry_after_s=3))
        gateway.door.start()
        try:
            now = time.monotonic_ns()
            calm = gateway.door.pressed(now)
            with pytest.raises(v2.V2Error) as refused:
                await gateway.run_infer("m", req, "http", now - 55_000_000)  # arrived 55 ms ago
            return refused.value, calm, gateway.door.pressed(time.monotonic_ns())
        finally:
            await gateway.door.stop()

    err, calm, pressed = asyncio.run(scenario())
    assert not calm and pressed  # a deadline spent in the gateway lets a standing lag be shed
    assert err.http_status == 429 and err.headers() == {"Retry-After": "3"}
    assert err.status is Status.WOULD_MISS_DEADLINE and "spent its whole 50 ms SLO" in err.message


def test_past_the_ceiling_the_door_refuses_at_once_without_a_standing_queue():
    """The onset of an overload: infers read 30 ms late are refused, not admitted, once as many
    as shed_min_requests came late in a row (one alone, behind a stall, is served)."""
    async def scenario() -> list:
        gateway = Gateway(GatewayConfig(shed_lag_ms=10, shed_interval_ms=1000, shed_min_requests=4,
                                        shed_ceiling_ms=15))
        gateway.door.start()
        try:
            await asyncio.sleep(0.003)  # the lag probe is running
            time.sleep(0.03)  # the loop stands 30 ms behind
            await asyncio.sleep(0)
            late = [admit(gateway) for _ in range(6)]
            await asyncio.sleep(0.02)
            return late + [admit(gateway)]  # on time again: served
        finally:
            await gateway.door.stop()

    *late, fresh = asyncio.run(scenario())
    assert all(isinstance(o, int) for o in late[:3])  # fewer than shed_min_requests late: served
    assert all(isinstance(o, v2.V2Error) and o.http_status == 429 for o in late[3:])
    assert isinstance(fresh, int)


def test_an_idle_gateway_stops_probing_its_loop_and_the_next_request_starts_it_again():
    """No request for a while: the lag probe stops (it woke an idle gateway 400 times a second),
    so a stall then is no lag; the next request starts it again, and a stall after that is."""
    async def stalled_lag(gateway: Gateway) -> int:
        time.sleep(0.03)  # the loop stands 30 ms behind
        return gateway.door.lag_ns(time.monotonic_ns())

    async def scenario() -> tuple[int, int]:
        gateway = Gateway(GatewayConfig(shed_lag_ms=10))
        gateway.door.start()
        try:
            await asyncio.sleep(0.6)  # 40 probes of 2.5 ms with no request, five times over
            idle = await stalled_lag(gateway)
            assert isinstance(admit(gateway), int)
            await asyncio.sleep(0.01)  # the probe runs again
            return idle, await stalled_lag(gateway)
        finally:
            await gateway.door.stop()

    idle, busy = asyncio.run(scenario())
    assert idle == 0 and busy >= 25_000_000
