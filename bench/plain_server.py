"""The plain server that `clockwork-bench versus` measures this system against.

What a user would write in an afternoon: one process, one onnxruntime session on one thread,
requests served first come first served, no admission, no deadlines. It speaks this system's
client protocol over ZeroMQ (INFER in, INFER_REPLY out, bundles accepted), so the same load
generator drives both and the only difference left is the server. With `max_batch` > 1 it
batches what is waiting (simple dynamic batching, no waiting for more).

It is a reference, not a product: a request is never refused, so past its capacity its queue
and its latency grow without bound, which is the behaviour the comparison is meant to show.

    python -m bench.plain_server MODEL.onnx tcp://127.0.0.1:5600 [--max-batch 8]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import deque
from typing import Sequence

import numpy as np
import zmq

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
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("endpoint", help="ZeroMQ address to bind, e.g. tcp://127.0.0.1:5600")
    parser.add_argument("--max-batch", type=int, default=1, help="batch what is waiting, up to this many")
    args = parser.parse_args(argv)
    with open(args.model, "rb") as fh:
        serve(fh.read(), args.endpoint, args.max_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
