"""The asyncio client against a scripted controller on a real loopback socket."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import zmq

from clockwork.client import AsyncClient, CapacityError, ClientClosed, DeadlineExceeded, RequestError
from clockwork.common import schema
from clockwork.common.status import Status
from tests.client_peer import ScriptedPeer
from tests.test_client_sync import free_endpoint

pytestmark = pytest.mark.timeout(30)
GRACE_S = 0.2


def x(value: float = 1.0, samples: int = 1) -> np.ndarray:
    return np.full((samples, 4), value, np.float32)


def run(scenario, endpoint: str | None = None, **options):
    """Run `scenario(client, peer)` against a fresh peer on a fresh event loop."""
    async def main(peer):
        async with AsyncClient(endpoint or peer.endpoint, grace_s=GRACE_S, **options) as c:
            return await scenario(c, peer)

    with ScriptedPeer() as peer:
        return asyncio.run(main(peer))


def test_admin_calls():
    async def scenario(c, peer):
        info = await c.upload(b'{"load_ms": 1}', "emu")
        models = await c.list()
        assert [m["name"] for m in await c.list("e", limit=1)] == ["echo"]
        assert (await c.list_page(after="emu"))["models"][0]["name"] == "pair"
        assert (await c.model("emu"))["name"] == "emu"
        status = await c.status(models_limit=3)
        await c.remove("emu")
        with pytest.raises(RequestError) as info_missing:
            await c.remove("emu")
        return info, models, status, info_missing.value, peer.requests(schema.Upload)[0].body

    info, models, status, missing, upload = run(scenario)
    assert info["name"] == "emu" and upload.format == "profile"
    assert [m["name"] for m in models] == ["echo", "emu", "pair"] and status["counters"]["rejected"] == 2
    assert missing.status is Status.MODEL_NOT_FOUND


def test_many_concurrent_infers_get_their_own_replies():
    async def scenario(c, peer):
        calls = [c.infer("echo", x(value=i, samples=1 + i % 3), slo_ms=2000) for i in range(20)]
        calls.append(c.infer("slow", {"data": x(value=99)}, slo_ms=2000))
        return await asyncio.gather(*calls), peer

    results, peer = run(scenario)
    for i, result in enumerate(results[:20]):
        assert result.output.shape == (1 + i % 3, 4) and np.all(result.output == 2 * i)
    assert results[20].output[0, 0] == 198
    assert len(peer.requests(schema.GetModel)) == 1  # one signature look-up for all 20


def test_infers_report_the_last_reply_unless_the_client_relays_for_callers_of_its_own():
    async def scenario(c, peer):
        first = await c.infer("echo", {"data": x()}, slo_ms=2000)
        await c.infer("echo", {"data": x()}, slo_ms=2000)
        return first.request_id, [e.body.last_reply_id for e in peer.requests(schema.Infer)]

    first_id, reported = run(scenario)
    assert reported == [0, first_id]
    _, relayed = run(scenario, report_reply_hops=False)  # the gateway's: its caller's hop is not timed
    assert relayed == [0, 0]


def test_errors_are_typed():
    async def scenario(c, peer):
        return await asyncio.gather(c.infer("overload", {"data": x()}, slo_ms=100),
                                    c.infer("pair", x(), slo_ms=100), return_exceptions=True)

    overload, bare = run(scenario)
    assert isinstance(overload, CapacityError) and overload.status is Status.WOULD_MISS_DEADLINE
    assert isinstance(bare, RequestError) and bare.status is Status.BAD_INPUT


def test_silence_times_out_and_a_late_reply_is_discarded():
    async def scenario(c, peer):
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="client-side timeout"):
            await c.infer("late", {"data": x()}, slo_ms=50)
        elapsed = time.monotonic() - start
        result = await c.infer("echo", {"data": x(value=7)}, slo_ms=1000)  # the stale reply arrives first
        return elapsed, result

    elapsed, result = run(scenario)
    assert 0.05 + GRACE_S - 0.05 <= elapsed < 0.05 + GRACE_S + 1.0
    assert set(result.outputs) == {"data_out"} and result.output[0, 0] == 14


def test_a_reply_that_arrives_as_the_resend_timer_fires_still_answers_the_call():
    """The controller answers a request once and absorbs its resends. When the loop wakes to
    the reply and the resend timer together (here it stalls past both), the reply must reach
    the caller: dropped there, the call waited out its SLO (the e2e cancel test's 1 s exec
    against resends every 0.25 s did, now and then)."""
    async def scenario(c, peer):
        call = asyncio.ensure_future(c.infer("once", {"data": x(value=3)}, slo_ms=1000))
        while not peer.requests(schema.Infer):
            await asyncio.sleep(0.01)
        time.sleep(0.4)  # the reply (after 0.2 s) and the resend timer (0.25 s) are both due on waking
        return await call

    assert run(scenario).output[0, 0] == 6


def test_unreachable_controller_times_out():
    async def scenario(c, peer):
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="could not reach"):
            await c.status()
        return time.monotonic() - start

    assert run(scenario, endpoint=free_endpoint(), timeout_s=0.3) < 1.5


def test_close_fails_pending_calls():
    async def scenario(c, peer):
        pending = asyncio.ensure_future(c.infer("silent", {"data": x()}, slo_ms=5000))
        while not peer.requests(schema.Infer):
            await asyncio.sleep(0.01)
        await c.close()
        with pytest.raises(ClientClosed, match="closed before the reply"):
            await pending
        with pytest.raises(ClientClosed):
            await c.list()

    run(scenario)


def test_cancelling_the_task_cancels_the_request():
    async def scenario(c, peer):
        task = asyncio.ensure_future(c.infer("silent", {"data": x()}, slo_ms=5000))
        while not peer.requests(schema.Infer):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not peer.requests(schema.Cancel):
            await asyncio.sleep(0.01)
        assert (await c.infer("echo", {"data": x(value=2)}, slo_ms=1000)).output[0, 0] == 4
        return peer.requests(schema.Infer)[0].msg_id, peer.requests(schema.Cancel)[0].body.request_id

    infer_id, cancelled_id = run(scenario)
    assert infer_id == cancelled_id


def test_an_infer_that_could_not_be_sent_in_time_is_never_sent():
    """While one call polls for a connection, pyzmq queues every other send behind it, already
    encoded with the SLO left when it was made. Such a send must be withdrawn: a controller that
    comes up later would read it as fresh and answer it long after its caller's deadline."""
    endpoint = free_endpoint()

    async def main():
        async with AsyncClient(endpoint, grace_s=0.3) as c:
            calls = asyncio.gather(*(c.infer("echo", {"data": x()}, slo_ms=100) for _ in range(3)),
                                   return_exceptions=True)
            await asyncio.sleep(0.2)  # every deadline has passed; the calls still wait for a connection
            with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
                router.bind(endpoint)
                errors = await calls
                received = router.poll(500)  # anything sent on connecting arrives by now
        return errors, received

    errors, received = asyncio.run(main())
    assert all(isinstance(e, DeadlineExceeded) and e.before_send for e in errors), errors
    assert received == 0
