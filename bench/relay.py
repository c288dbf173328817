"""A bare ZeroMQ relay chain: the floor any design over ZeroMQ in Python pays for two hops each way.

client -> relay (two ROUTERs, the controller's socket layout) -> echo (a DEALER, the worker's)
and back, with no decoding in between. `clockwork-bench overhead` times single round trips
through it; `clockwork-bench capacity` drives it with the load generator (behind the relay the
generator's echo server, bench.loadgen.serve_echo, answers instead of `echo_main`).

    python -m clockwork.bench.relay --role relay --front tcp://127.0.0.1:5000 --back tcp://127.0.0.1:5001
    python -m clockwork.bench.relay --role echo --back tcp://127.0.0.1:5001
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import zmq

from clockwork.common.codec import decode, encode
from clockwork.common.net import IdSource, dealer, recv_frames, router
from clockwork.common.schema import Message

HELLO = b"hello"  # an echo peer's first message: the relay learns its id from it
REPLY_TIMEOUT_S = 10.0


def relay_main(front_ep: str, back_ep: str) -> None:
    """Two ROUTERs: client frames go to the echo peer prefixed with the client's id, and back."""
    ctx = zmq.Context()
    front, back = router(ctx, front_ep), router(ctx, back_ep)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    echo_id = None
    while True:
        ready = dict(poller.poll())
        if back in ready:
            frames = back.recv_multipart(copy=False)
            if len(frames) == 2 and frames[1].bytes == HELLO:
                echo_id = frames[0].bytes
            elif len(frames) >= 3:
                _send(front, frames[1:])  # [client id, *message]
        if front in ready:
            frames = front.recv_multipart(copy=False)
            if echo_id is not None:
                _send(back, [echo_id, *frames])  # [echo id, client id, *message]


def echo_main(back_ep: str) -> None:
    """Every message back as it came (a DEALER, as a worker connects)."""
    ctx = zmq.Context()
    sock = dealer(ctx, back_ep)
    sock.send(HELLO)
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def _send(sock: zmq.Socket, frames: list) -> None:
    try:
        sock.send_multipart(frames, copy=False)
    except zmq.ZMQError:
        pass  # the peer left: drop, as the controller would


class RoundTrip:
    """One closed-loop path: send a request, wait for its answer, return timings."""

    def __init__(self, sock: zmq.Socket, body: Message):
        self.sock = sock
        self.body = body
        self.ids = IdSource()

    def once(self, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[int, object]:
        """(round trip ns, decoded answer); stale answers to earlier timed-out sends are skipped."""
        msg_id = self.ids.next()
        sent_ns = time.monotonic_ns()
        self.sock.send_multipart(encode(self.body, msg_id, sent_ns=sent_ns), copy=False)
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sock.poll(left_ms, zmq.POLLIN):
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            frames = recv_frames(self.sock)
            recv_ns = time.monotonic_ns()
            envelope = decode(frames)
            if envelope.parent_id == msg_id or envelope.msg_id == msg_id:  # reply, or echo of it
                return recv_ns - sent_ns, envelope.body


def wait_relay(path: RoundTrip, timeout_s: float) -> None:
    """Until the echo peer has said hello to the relay (earlier requests are dropped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            path.once(timeout_s=0.2)
            return
        except TimeoutError:
            continue
    raise TimeoutError("the relay and echo processes did not answer")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clockwork.bench.relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("relay", "echo"), required=True)
    p.add_argument("--front", help="the relay's client-facing endpoint (role relay)")
    p.add_argument("--back", required=True, help="the relay's echo-facing endpoint")
    args = p.parse_args(argv)
    if args.role == "relay" and not args.front:
        p.error("--role relay needs --front")
    try:
        if args.role == "relay":
            relay_main(args.front, args.back)
        else:
            echo_main(args.back)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
