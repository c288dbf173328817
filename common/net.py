"""ZeroMQ helpers shared by the daemons and clients: socket set-up, framed send and receive.

Frames are received without copying (`copy=False`) and handed on as memoryviews, so tensor
bytes travel client -> controller -> worker without being copied in Python.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import zmq

from clockwork.common.codec import bundles, encode
from clockwork.common.schema import Message


class IdSource:
    """Message ids unique within a process: a random 32-bit prefix then a counter."""

    def __init__(self, seed: int | None = None):
        import os

        prefix = (seed if seed is not None else int.from_bytes(os.urandom(4), "big")) & 0xFFFFFFFF
        self._counter = itertools.count((prefix << 32) | 1)

    def next(self) -> int:
        return next(self._counter)


def configure_socket(sock: zmq.Socket, max_msg_bytes: int = -1, hwm: int = 100_000) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)  # never block process exit on unsent messages
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_msg_bytes > 0:
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)  # per frame: oversized peers are cut off
    if sock.type == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown peer raises instead of vanishing
    return sock


# A worker's second connection, for model bytes (PREPARE): a DEALER whose identity is the
# worker's own plus this suffix, on the controller's worker ROUTER. On its own TCP connection a
# large model on a slow link cannot hold up the timed actions queued behind it on the first.
BULK_SUFFIX = b"\x00bulk"


def bulk_identity(identity: bytes) -> bytes:
    return identity + BULK_SUFFIX


Secure = Callable[[zmq.Socket], None]  # sets CURVE options before bind/connect (common/security.py)


def router(ctx: zmq.Context, endpoint: str, max_msg_bytes: int = -1, *, handover: bool = False,
           secure: Secure | None = None) -> zmq.Socket:
    """A bound ROUTER. handover: a peer reconnecting with a known identity takes it over (a
    restarted worker gets its name back)."""
    sock = configure_socket(ctx.socket(zmq.ROUTER), max_msg_bytes)
    if handover:
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if secure is not None:
        secure(sock)
    sock.bind(endpoint)
    return sock


def dealer(ctx: zmq.Context, endpoint: str, identity: bytes | None = None, max_msg_bytes: int = -1, *,
           secure: Secure | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    configure_socket(sock, max_msg_bytes)
    if secure is not None:
        secure(sock)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)  # back off to 2 s while a peer is down
    sock.connect(endpoint)
    return sock


# pyzmq's own send and recv, read once from its compiled Socket: a pyzmq Socket answers every
# attribute read through a Python __getattr__ hook (~900 instructions a method looked up), and
# its `send` is a Python layer (for draft sockets' routing_id and group) over this one, which
# took 11,700 instructions a two-frame send against 6,500 (callgrind).
_SEND = zmq.backend.Socket.send
_RECV = zmq.backend.Socket.recv


def _recv(sock: zmq.Socket, flags: int) -> tuple[list[memoryview], zmq.Frame]:
    """One message's frames, and its last zmq.Frame. Frame by frame on `Frame.more`: pyzmq's
    recv_multipart asks the socket for RCVMORE after every frame, which made receiving the
    small frames of INFER and RESULT cost twice as much (27 against 12 us for 21 frames)."""
    frame = _RECV(sock, flags, False)
    frames = [frame.buffer]
    while frame.more:
        frame = _RECV(sock, flags, False)
        frames.append(frame.buffer)
    return frames, frame


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[memoryview]:
    return _recv(sock, flags)[0]


def recv_frames_from(sock: zmq.Socket, flags: int = 0) -> tuple[list[memoryview], str | None]:
    """Frames and the sender's authenticated User-Id (a CURVE public key, z85), if any."""
    frames, last = _recv(sock, flags)
    try:
        user = last.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler named this peer
        user = None
    return frames, user


_MORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)  # flags as plain ints: pyzmq's are Python enums, slow to combine
_POLLIN = int(zmq.POLLIN)


def waiting(sock: zmq.Socket, limit: int, read: Callable[[zmq.Socket, int], Any] = recv_frames) -> Iterator[Any]:
    """The messages waiting in `sock`, up to `limit`, each as `read(sock, NOBLOCK)` returns it:
    how a daemon's loop drains a socket its poll found ready. Before each read after the first
    it asks whether another message waits, since a read that finds nothing raises zmq.Again,
    whose making (pyzmq's ZMQError imports inside its __init__) cost twice the question between
    wake-ups on a VM (24 against 12 us at p50 in the worker's loop). It asks by a poll that
    does not wait: `getsockopt(EVENTS)` makes a Python enum of the option's number on every
    call (9,700 instructions against the poll's 2,800)."""
    ready = [(sock, _POLLIN)]
    for n in range(limit):
        if n and not zmq.zmq_poll(ready, 0):
            return
        try:
            message = read(sock, NOBLOCK)
        except zmq.Again:  # nothing after all (a drain without a poll before it)
            return
        yield message


def send_frames(sock: zmq.Socket, frames: list[Any], identity: bytes | None = None, flags: int = 0) -> bool:
    """Send without copying tensor frames; False when a ROUTER peer is gone (it is not an error
    for us: the peer disconnected, and its liveness is judged elsewhere), or, with NOBLOCK, when
    the peer's queue is full (only a message's first frame can meet that)."""
    try:
        more = flags | _MORE
        if identity is not None:
            _SEND(sock, identity, more, False)
        last = len(frames) - 1
        for i, frame in enumerate(frames):  # send_multipart costs ~1.6 us more per message in enum handling
            _SEND(sock, frame, more if i < last else flags, False)
        return True
    except zmq.ZMQError as exc:
        if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
            return False
        raise


def send(sock: zmq.Socket, body: Message, msg_id: int, parent_id: int = 0, sent_ns: int = 0,
         identity: bytes | None = None) -> bool:
    return send_frames(sock, encode(body, msg_id, parent_id, sent_ns), identity)


class Outgoing:
    """Messages for a ROUTER's peers, held until `flush`, which sends each peer one ZeroMQ
    message (a bundle when it has several): the replies to a batch then cost the sender and
    their receiver one message each, not one per request. Callers flush once per unit of work
    (one incoming message, one planning pass), so nothing waits longer than that unit."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self._by_peer: dict[bytes, list[list]] = {}

    def add(self, identity: bytes, frames: list) -> None:
        self._by_peer.setdefault(identity, []).append(frames)

    def flush(self) -> None:
        """Send everything held; a socket error for one peer does not keep the others' messages
        back (the first such error is raised once all were tried)."""
        if not self._by_peer:
            return
        by_peer, self._by_peer = self._by_peer, {}
        error: zmq.ZMQError | None = None
        for identity, messages in by_peer.items():
            for frames in bundles(messages):
                try:
                    send_frames(self.sock, frames, identity)
                except zmq.ZMQError as exc:
                    error = error or exc
        if error is not None:
            raise error
