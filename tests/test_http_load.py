"""The HTTP load generator (bench/http_load.py) against an aiohttp server in the same loop."""

import asyncio
import gc

from aiohttp import web

from clockwork.bench import http_load, workload
from clockwork.common import gc_tuning


def test_every_request_is_posted_and_plays_with_the_daemons_collector_settings():
    """Its own full collections (17-33 ms measured) would read answers late that came in time."""
    seen = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((await request.read(), gc.get_threshold(), gc.get_freeze_count()))
        return web.Response(text="{}", status=200 if len(seen) % 2 else 429)

    async def main() -> http_load.HttpResults:
        app = web.Application()
        app.router.add_post("/infer", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            port = runner.addresses[0][1]
            return await http_load.play(f"http://127.0.0.1:{port}/infer", b'{"x": 1}',
                                        workload.constant_schedule([100.0], 0.2), timeout_s=5)
        finally:
            await runner.cleanup()

    before = gc.get_threshold()
    results = asyncio.run(main())
    assert results.scheduled == len(seen) == 20 and results.unanswered == 0
    assert results.statuses == {200: 10, 429: 10} and len(results.ok_ns) == len(results.refused_ns) == 10
    assert all(body == b'{"x": 1}' and threshold == (gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS)
               and frozen > 0 for body, threshold, frozen in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
