"""The blocking client: one DEALER socket, one call at a time, every wait bounded."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import zmq

from clockwork.common import codec, net, schema, security
from clockwork.client import pools, protocol
from clockwork.client.errors import ClientClosed, ClockworkError, Unreachable
from clockwork.client.protocol import Call, ClientCore, InferResult, Options

T = TypeVar("T")
log = logging.getLogger("clockwork.client")


def open_dealer(ctx: zmq.Context, endpoint: str, keys: security.CurveClient | None = None) -> zmq.Socket:
    """A DEALER to the controller that queues nothing while it is not connected (IMMEDIATE):
    a request waits (within its timeout) for a live connection instead of sitting in a pipe
    and reaching a restarted controller long after its caller gave up. With `keys` it is a
    CURVE client; a controller that refuses the key never connects, so calls time out."""
    sock = ctx.socket(zmq.DEALER)
    # A fixed identity: after a reconnect, a resent request is still the same (client, id) pair.
    sock.setsockopt(zmq.IDENTITY, b"client-" + os.urandom(8).hex().encode())
    sock.setsockopt(zmq.IMMEDIATE, 1)
    net.configure_socket(sock)
    if keys is not None:
        security.make_client(sock, keys)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)  # back off to 2 s while the controller is down
    sock.connect(endpoint)
    return sock


def poll_ms(remaining_ns: int) -> int:
    return max(1, math.ceil(remaining_ns / 1e6))


class Client:
    """Blocking client for a Clockwork controller.

    Workflow: upload a model once (the controller validates it and workers prepare and profile
    it), then send inference requests with a latency objective. Every request is answered with
    the result inside its deadline or, as early as the controller knows, with a typed error.

    Quick start::

        import numpy as np
        from clockwork.client import Client, CapacityError

        with Client("tcp://127.0.0.1:5555") as cw:
            cw.upload("resnet50.onnx", "resnet50", input_shapes={"data": [3, 224, 224]})
            x = np.random.rand(1, 3, 224, 224).astype(np.float32)   # batch dim first
            try:
                r = cw.infer("resnet50", x, slo_ms=50)
                print(r.output.shape, r.queue_ms, r.exec_ms, r.total_ms)
            except CapacityError as err:            # e.g. WOULD_MISS_DEADLINE, QUEUE_FULL
                print("not now:", err.status.name, err.detail)

    Methods: `upload(model, name=None, *, format=None, input_shapes=None, max_batch=0,
    replace=False) -> dict`, `remove(name)`, `list(prefix=None) -> list[dict]` (every page),
    `list_page(prefix="", after="", limit=0) -> dict`, `model(name) -> dict`,
    `status(models_limit=50) -> dict`, `infer(model, inputs, *, slo_ms=None, deadline=None,
    priority=0) -> InferResult`.
    Errors are `ClockworkError` subclasses carrying the status: `RequestError` (fix the
    request), `CapacityError` (retry later or with a looser SLO), `ServerError`, and
    `DeadlineExceeded` for the client's own timeout.

    Keys: a controller with keys configured (docs/operations.md) admits only CURVE clients whose
    public key it allows: pass `key_file` (your NAME.key_secret) and `server_key_file` (the
    controller's NAME.key), or set $CLOCKWORK_KEY and $CLOCKWORK_SERVER_KEY. Uploads and
    removals need an admin key (else RequestError(FORBIDDEN)).

    Defaults: endpoint $CLOCKWORK_ENDPOINT or tcp://127.0.0.1:5555; admin calls time out after
    30 s (`timeout_s`), uploads after 300 s (`upload_timeout_s`), an infer after its SLO plus
    1 s (`grace_s`). Nothing waits longer than that, whether or not the controller is up.

    Threads: calls are serialized by a lock, so a Client may be shared, but a blocked call holds
    it. For many requests in flight use `AsyncClient` (or one Client per thread).

    Several pools: `endpoint` may list several controllers ("tcp://a:5555,tcp://b:5555" or a
    list). Each model then belongs to one of them (client/pools.py): upload, infer, model and
    remove go to its owner; list merges every pool's models by name and status merges their
    replies. A call to a pool with no connection fails within `connect_timeout_s` (default
    2 s with several pools) with `Unreachable` naming it; the other pools serve on.
    """

    def __init__(self, endpoint: str | Sequence[str] | None = None, *, timeout_s: float = Options.timeout_s,
                 upload_timeout_s: float = Options.upload_timeout_s, grace_s: float = Options.grace_s,
                 context: zmq.Context | None = None, key_file: str | None = None,
                 server_key_file: str | None = None, connect_timeout_s: float | None = None):
        options, each_pool = protocol.client_options(endpoint, timeout_s, upload_timeout_s, grace_s, connect_timeout_s)
        self._pools = {ep: Client(ep, context=context, key_file=key_file, server_key_file=server_key_file, **kw)
                       for ep, kw in each_pool.items()}
        self._core = ClientCore(options)
        self._lock = threading.RLock()  # infer holds it across its list and infer calls
        self._sock: zmq.Socket | None = None if self._pools else open_dealer(
            context or zmq.Context.instance(), options.endpoint, security.client_keys_from(key_file, server_key_file))

    @property
    def endpoint(self) -> str:
        """The controller's endpoint; with several pools, theirs separated by commas."""
        return self._core.options.endpoint

    def _owner(self, model: str) -> "Client":
        return self._pools[pools.owner(model, tuple(self._pools))]

    # ------------------------------------------------------------------ the API

    def upload(self, model: str | os.PathLike | bytes, name: str | None = None, *, format: str | None = None,
               input_shapes: Mapping[str, Any] | None = None, max_batch: int = 0, replace: bool = False,
               progress: Callable[[int, int], None] | None = None) -> dict:
        """Register a model; returns its ModelInfo. `model` is a path (.onnx, or a .json latency
        profile for emulated workers) or the file's bytes; `name` defaults to the file's stem.
        `input_shapes` fixes dynamic non-batch dims ({"data": [3, 224, 224]}); a model whose
        shapes cannot be fixed gets RequestError(BAD_MODEL) with the reason. A model over
        protocol.UPLOAD_CHUNK_BYTES travels in chunks; `progress(bytes_sent, total)` follows them."""
        if self._pools:
            return self._owner(protocol.upload_name(model, name, format)).upload(
                model, name, format=format, input_shapes=input_shapes, max_batch=max_batch, replace=replace,
                progress=progress)
        uploading = self._core.uploading(model, name, format=format, input_shapes=input_shapes,
                                         max_batch=max_batch, replace=replace)
        while (call := uploading.next_call(time.monotonic_ns())) is not None:
            uploading.add(self._call(call))
            if progress is not None:
                progress(uploading.sent, uploading.total)
        return uploading.info

    def remove(self, name: str) -> None:
        """Forget a model everywhere."""
        if self._pools:
            return self._owner(name).remove(name)
        self._call(self._core.remove(name, time.monotonic_ns()))

    def list(self, prefix: str | None = None, *, limit: int = 0) -> list[dict]:
        """Every registered model's ModelInfo in name order (those whose names start with
        `prefix`; at most `limit`, 0: all), fetched page by page."""
        if self._pools:
            return pools.merge_models({ep: c.list(prefix, limit=limit) for ep, c in self._pools.items()}, limit)
        listing = self._core.listing(prefix, limit)
        while (call := listing.next_call(time.monotonic_ns())) is not None:
            listing.add(self._call(call))
        return listing.models

    def list_page(self, prefix: str = "", after: str = "", limit: int = 0) -> dict:
        """One page: {"models": [ModelInfo, ...], "total": models matching `prefix`, "next": the
        `after` of the following page ("" on the last)}. `limit` 0: as many as fit one reply."""
        if self._pools:
            return pools.merge_pages({ep: c.list_page(prefix, after, limit) for ep, c in self._pools.items()}, limit)
        return self._call(self._core.list_page(time.monotonic_ns(), prefix, after, limit))

    def model(self, name: str) -> dict:
        """One model's ModelInfo; RequestError(MODEL_NOT_FOUND) when it is not registered."""
        if self._pools:
            return self._owner(name).model(name)
        return self._call(self._core.model(name, time.monotonic_ns()))

    def status(self, models_limit: int = schema.STATUS_MODELS) -> dict:
        """Workers, devices, models and counters: {"workers": [...], "models": [...],
        "models_total": n, "counters": {...}}; "models" holds the `models_limit` busiest (of
        each pool, with several: see pools.merge_status)."""
        if self._pools:
            return pools.merge_status({ep: c.status(models_limit) for ep, c in self._pools.items()})
        return self._call(self._core.status(time.monotonic_ns(), models_limit))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray] | np.ndarray, *, slo_ms: float | None = None,
              deadline: float | None = None, priority: int = 0) -> InferResult:
        """Run `model` on `inputs` within a latency objective.

        inputs: {input name: array} or, for a single-input model, a bare array. The first
        dimension is the batch: one sample is shape [1, ...], several samples may be sent at once.
        slo_ms: budget from now in milliseconds; or deadline: an absolute time.monotonic() value
        (exactly one). priority: 0 (lowest, default) to 9.

        Returns an InferResult: `outputs` {name: array, batch dim first} (copies you own),
        `output` for a single-output model, and the controller's timing breakdown `queue_ms`,
        `exec_ms`, `total_ms`, plus `batch_size`, `cold_start`, `worker`. Raises a
        ClockworkError subclass carrying the status; waits at most the SLO plus `grace_s`::

            r = cw.infer("resnet50", {"data": np.zeros((8, 3, 224, 224), np.float32)}, slo_ms=100)
            top1 = r.outputs["prob"].argmax(axis=1)          # one per sample
            print(f"{r.total_ms:.1f} ms = queue {r.queue_ms:.1f} + exec {r.exec_ms:.1f} + overhead")
        """
        if self._pools:
            return self._owner(model).infer(model, inputs, slo_ms=slo_ms, deadline=deadline, priority=priority)
        deadline_ns = protocol.deadline_ns(slo_ms, deadline, time.monotonic_ns())
        with self._lock:  # the signature look-up and the infer are one call for other threads
            if self._core.needs_signature(model, inputs):
                self._call(self._core.model(model, time.monotonic_ns(), deadline_ns))
            return self._call(self._core.infer(model, inputs, deadline_ns, time.monotonic_ns(), priority))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ I/O

    def _call(self, call: Call[T]) -> T:
        with self._lock:
            if self._sock is None:
                raise ClientClosed()
            msg_id = self._core.next_id()
            self._send(call, msg_id, self._sock)
            return call.finish(self._wait(call, msg_id, self._sock))

    def _send(self, call: Call, msg_id: int, sock: zmq.Socket) -> None:
        since_ns = time.monotonic_ns()
        while True:
            remaining_ns = self._core.send_by_ns(call, since_ns) - time.monotonic_ns()
            if remaining_ns <= 0:
                raise self._core.unsent_error(call, since_ns)
            if not sock.poll(poll_ms(remaining_ns), zmq.POLLOUT):
                continue
            now_ns = time.monotonic_ns()
            try:
                sock.send_multipart(codec.encode(call.message(now_ns, self._core.last_reply), msg_id, sent_ns=now_ns),
                                    flags=zmq.DONTWAIT, copy=False)
                return
            except zmq.Again:  # the connection went away between poll and send
                continue

    def _wait(self, call: Call, msg_id: int, sock: zmq.Socket) -> protocol.Incoming:
        resend_ns = call.next_send_ns(time.monotonic_ns())
        while True:
            now_ns = time.monotonic_ns()
            remaining_ns = call.remaining_ns(now_ns)
            if remaining_ns <= 0:
                raise call.timeout_error(self.endpoint, sent=True)
            if resend_ns is not None and now_ns >= resend_ns:
                try:  # same request id: a controller still serving it ignores the copy
                    self._send(call, msg_id, sock)
                except Unreachable:  # a pool's controller went away under the call
                    raise
                except ClockworkError:
                    raise call.timeout_error(self.endpoint, sent=True) from None
                resend_ns = call.next_send_ns(time.monotonic_ns())
                continue
            wait_ns = remaining_ns if resend_ns is None else min(remaining_ns, resend_ns - now_ns)
            if not sock.poll(poll_ms(wait_ns), zmq.POLLIN):
                continue
            frames = net.recv_frames(sock, zmq.DONTWAIT)
            received_ns = time.monotonic_ns()
            for incoming in protocol.read_incoming(frames):
                self._core.heard(incoming, received_ns)
                if protocol.route(incoming, (msg_id,)) == msg_id:
                    return incoming
                log.debug("discarding a reply to request %d: no call waits for it", incoming.parent_id)
