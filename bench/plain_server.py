"""The plain server that `clockwork-bench versus` measures this system against.

What a user would write in an afternoon: one process, one onnxruntime session on one thread,
requests served first come first served, no admission, no deadlines. It comes in two variants:

- over ZeroMQ (a tcp:// endpoint), speaking this system's client protocol (INFER in,
  INFER_REPLY out, bundles accepted), so the same load generator drives both and the only
  difference left is the server. With `max_batch` > 1 it batches what is waiting (simple
  dynamic batching, no waiting for more).
- over HTTP (an http:// address), speaking KServe v2 with JSON or binary tensors, as the
  gateway does (the same `client.v2` rules, so the only difference left is what is behind
  them): an aiohttp loop parses, and one thread runs the session, in arrival order.

It is a reference, not a product: a request is never refused, so past its capacity its queue
and its latency grow without bound, which is the behaviour the comparison is meant to show.

    python -m clockwork.bench.plain_server MODEL.onnx tcp://127.0.0.1:5600 [--max-batch 8]
    python -m clockwork.bench.plain_server MODEL.onnx http://127.0.0.1:8600
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque
from typing import Sequence

import numpy as np
import zmq
from aiohttp import web

from clockwork.bench.predictability import direct_session
from clockwork.client import v2
from clockwork.client.protocol import InferResult
from clockwork.common.checks import BadMessage
from clockwork.common.codec import bundle, decode, encode, peek_id, split
from clockwork.common.net import IdSource
from clockwork.common.schema import Error, GetStatus, Infer, InferReply, Reply
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor

WORKER_NAME = "plain"


class PlainServer:
    """FIFO over one onnxruntime session; `busy_ns` is the time spent inside `session.run`."""

    def __init__(self, model: bytes, max_batch: int = 1):
        self.session = direct_session(model)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_batch = max_batch
        self.queue: deque[tuple[bytes, int, int, Infer]] = deque()  # (client, id, received, request)
        self.busy_ns = 0
        self.ids = IdSource()

    def receive(self, sock: zmq.Socket) -> None:
        """Queue every request already waiting on the socket; answer bad ones at once."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now, client = time.monotonic_ns(), frames[0].bytes
            for header, parts in split(frames[1:]):
                try:
                    env = decode(parts, header)
                except BadMessage as exc:
                    msg_id = peek_id(header, "msg_id")
                    self._send(sock, client, [encode(Error(status=exc.status, detail=exc.detail), self.ids.next(),
                                                     msg_id if isinstance(msg_id, int) else 0, now)])
                    continue
                if isinstance(env.body, Infer):
                    self.queue.append((client, env.msg_id, now, env.body))
                elif isinstance(env.body, GetStatus):  # what `versus` reads: the device's busy time
                    status = {"workers": [{"name": WORKER_NAME, "devices": [{"exec_busy_ns": self.busy_ns}]}]}
                    self._send(sock, client, [encode(Reply(status=Status.OK, body=status), self.ids.next(),
                                                     env.msg_id, now)])

    def serve_next(self, sock: zmq.Socket) -> None:
        """Run the oldest request (with those behind it for the same model, up to max_batch)."""
        batch = [self.queue.popleft()]
        while self.queue and len(batch) < self.max_batch:
            batch.append(self.queue.popleft())
        inputs = {t.name: np.concatenate([r[3].tensors[i].array() for r in batch])
                  for i, t in enumerate(batch[0][3].tensors)}
        start = time.monotonic_ns()
        outputs = self.session.run(self.output_names, inputs)
        end = time.monotonic_ns()
        self.busy_ns += end - start
        replies: dict[bytes, list] = {}
        row = 0
        for client, msg_id, received, request in batch:
            rows = request.tensors[0].array().shape[0]
            tensors = tuple(Tensor.from_array(n, np.ascontiguousarray(o[row:row + rows]))
                            for n, o in zip(self.output_names, outputs))
            row += rows
            reply = InferReply(status=Status.OK, queue_ns=start - received, exec_ns=end - start,
                               lane_start_ns=start - received, lane_end_ns=end - received,
                               total_ns=time.monotonic_ns() - received, batch_size=len(batch),
                               worker=WORKER_NAME, tensors=tensors)
            replies.setdefault(client, []).append(encode(reply, self.ids.next(), msg_id, end))
        for client, messages in replies.items():
            self._send(sock, client, messages)

    @staticmethod
    def _send(sock: zmq.Socket, client: bytes, messages: list) -> None:
        try:
            sock.send_multipart([client, *bundle(messages)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # the client went away; a plain server shrugs
            pass


def serve(model: bytes, endpoint: str, max_batch: int = 1) -> None:
    """Serve until SIGTERM/SIGINT; prints "ready" once bound and its busy time at exit."""
    server = PlainServer(model, max_batch)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print("ready", flush=True)
    try:
        while not stopping:
            if not server.queue and not sock.poll(100):
                continue
            server.receive(sock)
            if server.queue:
                server.serve_next(sock)
    finally:
        print(f"busy_ns {server.busy_ns}", flush=True)
        sock.close(0)
        ctx.term()


class PlainHttpServer:
    """KServe v2 infer over HTTP; requests wait their turn for the one session thread (an
    executor of one thread takes jobs in arrival order)."""

    def __init__(self, model: bytes):
        from concurrent.futures import ThreadPoolExecutor

        self.session = direct_session(model)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.executor = ThreadPoolExecutor(1)
        self.busy_ns = 0

    def run(self, inputs: dict) -> tuple[dict, int, int]:
        start = time.monotonic_ns()
        outputs = self.session.run(self.output_names, inputs)
        end = time.monotonic_ns()
        self.busy_ns += end - start
        return dict(zip(self.output_names, outputs)), start, end

    async def infer(self, request: web.Request) -> web.Response:
        received = time.monotonic_ns()
        name = request.match_info["model"]
        try:
            req = v2.parse_infer_request(await request.read(), request.headers.get("Inference-Header-Content-Length"),
                                         1000.0)
            outputs, start, end = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, req.inputs)
            result = InferResult(outputs, (start - received) / 1e6, (end - start) / 1e6, (end - received) / 1e6,
                                 1, False, WORKER_NAME)
            payload, header_length = v2.infer_response(name, req, result)
        except v2.V2Error as err:
            return web.Response(status=err.http_status, body=err.body(), content_type="application/json")
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        return web.Response(body=payload, headers=headers, content_type="application/json" if header_length is None
                            else "application/octet-stream")

    async def live(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)


async def serve_http(model: bytes, address: str) -> None:
    """Serve until SIGTERM/SIGINT; prints "ready" once listening and its busy time at exit. A
    caller that disconnects withdraws its request if it has not started, so that a load
    generator that gave up does not leave a backlog to the next measurement."""

    host, _, port = address.removeprefix("http://").rpartition(":")
    server = PlainHttpServer(model)
    app = web.Application(client_max_size=64 << 20)
    app.add_routes([web.post("/v2/models/{model}/infer", server.infer), web.get("/v2/health/live", server.live),
                    web.get("/v2/health/ready", server.live)])
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        print(f"busy_ns {server.busy_ns}", flush=True)
        await runner.cleanup()
        server.executor.shutdown(cancel_futures=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clockwork.bench.plain_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("endpoint", help="ZeroMQ address to bind, e.g. tcp://127.0.0.1:5600, or an HTTP address "
                        "to serve KServe v2 on, e.g. http://127.0.0.1:8600")
    parser.add_argument("--max-batch", type=int, default=1, help="batch what is waiting, up to this many")
    args = parser.parse_args(argv)
    with open(args.model, "rb") as fh:
        model = fh.read()
    if args.endpoint.startswith("http://"):
        asyncio.run(serve_http(model, args.endpoint))
    else:
        serve(model, args.endpoint, args.max_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
