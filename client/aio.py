"""The asyncio client: many concurrent calls over one DEALER, replies routed by parent_id."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypeVar

import numpy as np
import zmq
import zmq.asyncio

from clockwork.common import codec, schema, security
from clockwork.common.status import Status
from clockwork.client import pools, protocol
from clockwork.client.errors import ClockworkError, ClientClosed, DeadlineExceeded, ServerError, Unreachable
from clockwork.client.protocol import Call, ClientCore, Incoming, InferResult, Options
from clockwork.client.sync import open_dealer, poll_ms

T = TypeVar("T")
log = logging.getLogger("clockwork.client")


class AsyncClient:
    """asyncio client for a Clockwork controller; the same calls as `Client`, awaitable, and any
    number of them in flight at once over one socket.

    Quick start::

        import asyncio
        import numpy as np
        from clockwork.client import AsyncClient

        async def main():
            async with AsyncClient("tcp://127.0.0.1:5555") as cw:
                x = np.zeros((1, 3, 224, 224), np.float32)
                results = await asyncio.gather(
                    *(cw.infer("resnet50", x, slo_ms=50) for _ in range(100)),
                    return_exceptions=True)   # InferResults and ClockworkErrors

        asyncio.run(main())

    Keys (`key_file`, `server_key_file`, or $CLOCKWORK_KEY and $CLOCKWORK_SERVER_KEY) and
    defaults are those of `Client`: endpoint $CLOCKWORK_ENDPOINT or tcp://127.0.0.1:5555,
    admin calls 30 s, uploads 300 s, an infer its SLO plus 1 s; past that DeadlineExceeded.
    Cancelling the task awaiting an infer also sends a best-effort CANCEL to the controller.
    `close()` (or leaving `async with`) fails pending calls with ClientClosed. Use one
    AsyncClient from one event loop. Several pools (a list of endpoints): as `Client`.
    A relay that answers callers of its own (the gateway) passes `report_reply_hops=False`: the
    controller then keeps its fixed allowance for the way back, which covers the relay's own
    hop as well, instead of planning with the timed hop to the relay alone.
    """

    def __init__(self, endpoint: str | Sequence[str] | None = None, *, timeout_s: float = Options.timeout_s,
                 upload_timeout_s: float = Options.upload_timeout_s, grace_s: float = Options.grace_s,
                 context: zmq.asyncio.Context | None = None, key_file: str | None = None,
                 server_key_file: str | None = None, connect_timeout_s: float | None = None,
                 report_reply_hops: bool = True):
        options, each_pool = protocol.client_options(endpoint, timeout_s, upload_timeout_s, grace_s, connect_timeout_s)
        self._pools = {ep: AsyncClient(ep, context=context, key_file=key_file, server_key_file=server_key_file,
                                       report_reply_hops=report_reply_hops, **kw)
                       for ep, kw in each_pool.items()}
        self._core = ClientCore(options, report_reply_hops=report_reply_hops)
        self._sock = None if self._pools else open_dealer(
            context or zmq.asyncio.Context.instance(), options.endpoint,
            security.client_keys_from(key_file, server_key_file))  # as Client: files, else env
        self._pending: dict[int, asyncio.Future] = {}  # request id -> future of its Incoming
        self._reader: asyncio.Task | None = None
        self._lookups: dict[str, asyncio.Future] = {}  # model -> its look-up for bare-array infers
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The controller's endpoint; with several pools, theirs separated by commas."""
        return self._core.options.endpoint

    def _owner(self, model: str) -> "AsyncClient":
        return self._pools[pools.owner(model, tuple(self._pools))]

    async def _each(self, call: Callable[["AsyncClient"], Any]) -> dict[str, Any]:
        """`call` on every pool at once: {endpoint: its answer}; the first error raises."""
        answers = await asyncio.gather(*(call(c) for c in self._pools.values()))
        return dict(zip(self._pools, answers))

    # ------------------------------------------------------------------ the API (see Client)

    async def upload(self, model: str | os.PathLike | bytes, name: str | None = None, *, format: str | None = None,
                     input_shapes: Mapping[str, Any] | None = None, max_batch: int = 0,
                     replace: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
        """See `Client.upload`. The file is read in a thread, off the event loop."""
        if self._pools:
            return await self._owner(protocol.upload_name(model, name, format)).upload(
                model, name, format=format, input_shapes=input_shapes, max_batch=max_batch, replace=replace,
                progress=progress)
        uploading = await asyncio.to_thread(self._core.uploading, model, name, format=format,
                                            input_shapes=input_shapes, max_batch=max_batch, replace=replace)
        while (call := await asyncio.to_thread(uploading.next_call, time.monotonic_ns())) is not None:
            uploading.add(await self._call(call))
            if progress is not None:
                progress(uploading.sent, uploading.total)
        return uploading.info

    async def remove(self, name: str) -> None:
        if self._pools:
            return await self._owner(name).remove(name)
        await self._call(self._core.remove(name, time.monotonic_ns()))

    async def list(self, prefix: str | None = None, *, limit: int = 0) -> list[dict]:
        """See `Client.list`."""
        if self._pools:
            return pools.merge_models(await self._each(lambda c: c.list(prefix, limit=limit)), limit)
        listing = self._core.listing(prefix, limit)
        while (call := listing.next_call(time.monotonic_ns())) is not None:
            listing.add(await self._call(call))
        return listing.models

    async def list_page(self, prefix: str = "", after: str = "", limit: int = 0) -> dict:
        """See `Client.list_page`."""
        if self._pools:
            return pools.merge_pages(await self._each(lambda c: c.list_page(prefix, after, limit)), limit)
        return await self._call(self._core.list_page(time.monotonic_ns(), prefix, after, limit))

    async def model(self, name: str) -> dict:
        """See `Client.model`."""
        if self._pools:
            return await self._owner(name).model(name)
        return await self._call(self._core.model(name, time.monotonic_ns()))

    async def status(self, models_limit: int = schema.STATUS_MODELS) -> dict:
        """See `Client.status`."""
        if self._pools:
            return pools.merge_status(await self._each(lambda c: c.status(models_limit)))
        return await self._call(self._core.status(time.monotonic_ns(), models_limit))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, *,
                    slo_ms: float | None = None, deadline: float | None = None, priority: int = 0) -> InferResult:
        """See `Client.infer`. Runs in the caller's task, not a task of its own: on a busy event
        loop every extra task, callback or poll is another turn of the loop's whole backlog
        (measured in the gateway at 3x its capacity: ~4 ms a turn, 15 ms of a 50 ms SLO)."""
        if self._pools:
            return await self._owner(model).infer(model, inputs, slo_ms=slo_ms, deadline=deadline, priority=priority)
        deadline_ns = protocol.deadline_ns(slo_ms, deadline, time.monotonic_ns())
        return await self._infer(model, inputs, deadline_ns, priority, self._core.next_id())

    def submit(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, *,
               slo_ms: float | None = None, deadline: float | None = None, priority: int = 0) -> "PendingInfer":
        """Start an infer and return at once a handle: `await handle` for the InferResult,
        `await handle.cancel()` to withdraw it while it is still queued (True when the controller
        confirms; the handle then raises RequestError(CANCELLED))."""
        if self._pools:
            return self._owner(model).submit(model, inputs, slo_ms=slo_ms, deadline=deadline, priority=priority)
        deadline_ns = protocol.deadline_ns(slo_ms, deadline, time.monotonic_ns())
        request_id = self._core.next_id()
        return PendingInfer(self, request_id, asyncio.ensure_future(
            self._infer(model, inputs, deadline_ns, priority, request_id)))

    async def _infer(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, deadline_ns: int,
                     priority: int, request_id: int) -> InferResult:
        if self._core.needs_signature(model, inputs):
            await self._fetch_signature(model, deadline_ns)
        call = self._core.infer(model, inputs, deadline_ns, time.monotonic_ns(), priority)
        return await self._call(call, request_id)

    async def cancel(self, request_id: int) -> bool:
        """Ask the controller to drop a queued request; True if it was still queued (it is then
        answered CANCELLED), False if it was already executing or done. (With several pools,
        every pool is asked: `PendingInfer.cancel` asks only the one that has the request.)"""
        if self._pools:
            return any((await self._each(lambda c: c.cancel(request_id))).values())
        return await self._call(self._core.cancel(request_id, time.monotonic_ns()))

    async def _fetch_signature(self, model: str, deadline_ns: int) -> None:
        """One look-up of a model in flight for every infer that needs its input names, each
        waiting at most until its own deadline."""
        lookup = self._lookups.get(model)
        if lookup is None or lookup.done():
            lookup = asyncio.ensure_future(self._call(self._core.model(model, time.monotonic_ns(), deadline_ns)))
            lookup.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            self._lookups[model] = lookup
        remaining_s = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        try:
            await asyncio.wait_for(asyncio.shield(lookup), remaining_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(detail=f"infer on {model!r}: no answer to the look-up of its input names from "
                                   f"{self.endpoint} before the deadline (client-side timeout)") from None

    async def close(self) -> None:
        """Stop the reader, fail pending calls with ClientClosed, close the socket."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        self._fail_pending(lambda: ClientClosed(detail="the client was closed before the reply arrived"))
        if self._sock is not None:
            self._sock.close(linger=0)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ I/O

    async def _call(self, call: Call[T], msg_id: int | None = None) -> T:
        if self._closed:
            raise ClientClosed()
        self._start_reader()
        msg_id = self._core.next_id() if msg_id is None else msg_id
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        sent = False
        try:
            await self._send(call, msg_id)
            sent = True
            incoming = await self._await_reply(call, msg_id, future)
        except asyncio.TimeoutError:
            raise call.timeout_error(self.endpoint, sent) from None
        except asyncio.CancelledError:
            if sent and isinstance(call.body, schema.Infer) and not self._closed:
                self._cancel_quietly(msg_id)
            raise
        finally:
            self._pending.pop(msg_id, None)
        return call.finish(incoming)

    async def _await_reply(self, call: Call, msg_id: int, future: asyncio.Future) -> Incoming:
        """Wait for the reply, resending idempotent calls (same id) as Call.retry_ns says. The
        reply wakes this task straight from `_deliver`: a timer fails the future at the wait's
        end (wait_for and shield cost two more turns of the loop per reply); a resend waits on
        a fresh future under the same id, as does a reply that `_deliver` found the timer's."""
        loop = asyncio.get_running_loop()
        while True:
            now_ns = time.monotonic_ns()
            resend_ns = call.next_send_ns(now_ns)
            remaining_ns = call.remaining_ns(now_ns)
            wait_ns = remaining_ns if resend_ns is None else min(remaining_ns, resend_ns - now_ns)
            timer = loop.call_later(max(0.0, wait_ns / 1e9), _time_out, future)
            try:
                return await future
            except asyncio.TimeoutError:
                if call.remaining_ns(time.monotonic_ns()) <= 0 or resend_ns is None:
                    raise
            finally:
                timer.cancel()
            delivered = self._pending[msg_id]
            if delivered is not future:  # the reply came after the timer, before this turn
                return delivered.result()
            future = self._pending[msg_id] = loop.create_future()
            try:
                await self._send(call, msg_id)
            except Unreachable:  # a pool's controller went away under the call
                raise
            except ClockworkError:  # the deadline passed while resending
                raise asyncio.TimeoutError from None

    async def _send(self, call: Call, msg_id: int) -> None:
        """Send at once when the socket takes it (it nearly always does), and poll only while it
        cannot: a poll first costs a busy event loop two turns per request (measured in the
        gateway at 3x its capacity: ~6 ms a turn). A send that pyzmq would queue instead (it
        does while another call polls for a connection) is withdrawn: queued, it would leave
        with the SLO left when it was made, and reach a restarted controller stale but looking
        fresh (`clockwork-bench chaos`: 25 answered OK ~0.7 s past their SLO)."""
        since_ns = time.monotonic_ns()
        while True:
            now_ns = time.monotonic_ns()
            sending = self._sock.send_multipart(codec.encode(call.message(now_ns, self._core.last_reply), msg_id,
                                                             sent_ns=now_ns),
                                                flags=zmq.DONTWAIT, copy=False)
            if sending.done():
                if sending.exception() is None:
                    return
                if not isinstance(sending.exception(), zmq.Again):  # no connection yet, or its queue is full
                    raise sending.exception()
            else:
                sending.cancel()
            remaining_ns = self._core.send_by_ns(call, since_ns) - time.monotonic_ns()
            if remaining_ns <= 0:
                raise self._core.unsent_error(call, since_ns)
            await self._sock.poll(poll_ms(remaining_ns), zmq.POLLOUT)

    def _cancel_quietly(self, request_id: int) -> None:
        """Tell the controller nobody waits for this request any more; its answer is discarded."""
        now_ns = time.monotonic_ns()
        cancel = self._core.cancel(request_id, now_ns)
        frames = codec.encode(cancel.message(now_ns), self._core.next_id(), sent_ns=now_ns)
        try:
            sent = self._sock.send_multipart(frames, flags=zmq.DONTWAIT)
        except zmq.ZMQError:
            return  # best effort: the controller answers the request by its deadline anyway
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve, so no warning

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                frames = await self._sock.recv_multipart(copy=False)
                received_ns = time.monotonic_ns()
                for incoming in protocol.read_incoming([f.buffer for f in frames]):
                    self._core.heard(incoming, received_ns)
                    self._deliver(incoming)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket failed: nothing more will arrive for anyone
            log.warning("clockwork client receive loop failed: %r", exc)
            detail = f"the client's receive loop failed: {exc!r}"
            self._fail_pending(lambda: ServerError(Status.INTERNAL, detail))

    def _deliver(self, incoming: Incoming) -> None:
        request_id = protocol.route(incoming, self._pending)
        future = self._pending.get(request_id) if request_id is not None else None
        if future is None:
            log.debug("discarding a reply to request %d: no call waits for it", incoming.parent_id)
            return
        if future.done():
            # The resend timer failed this future and its call has not run since: the reply
            # waits for it in a fresh one. Dropped, it was lost for good: the controller
            # answers a request once and absorbs the resends.
            future = self._pending[request_id] = asyncio.get_running_loop().create_future()
        future.set_result(incoming)

    def _fail_pending(self, make_error: Callable[[], Exception]) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(make_error())  # one instance each: tracebacks are per raise


def _time_out(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class PendingInfer:
    """An infer in flight (from `AsyncClient.submit`): await it for the result."""

    def __init__(self, client: AsyncClient, request_id: int, task: asyncio.Future):
        self.request_id = request_id
        self._client = client
        self._task = task

    def __await__(self):
        return self._task.__await__()

    async def cancel(self) -> bool:
        return await self._client.cancel(self.request_id)
