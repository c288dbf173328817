"""A link between two hosts that we control: a TCP relay adding delay, jitter, loss, a bandwidth
limit or an outage, each direction on its own.

The kernel here has no netem qdisc, so `bench/netns.py` puts one of these between each worker's
namespace and the controller's. A worker connects to the relay's address; the relay connects on
to the controller and moves bytes both ways. Each direction of each connection is a reader
thread and a writer thread: the reader stamps every chunk it reads with the time it may leave,
the writer sends it then. What each setting models, honestly, on a TCP stream:

- `delay_ns` +- `jitter_ns` (uniform): one-way propagation. A stream never reorders, so a chunk
  never leaves before the one read ahead of it.
- `loss`: the share of chunks (a chunk is what one read returned: usually one ZeroMQ message,
  as a thin stream sends one segment per message) lost once and retransmitted, which TCP does
  in one of two ways. If another chunk follows, its selective ACK reveals the gap (Linux's
  RACK), and the retransmission arrives about 2.5 one-way delays after that chunk would have.
  If none follows, the kernel's tail-loss probe or retransmission timeout fires (`rto_ns`, about
  200 ms on a stream with one segment in flight). Either way the stream behind the lost chunk
  waits for it (head-of-line blocking). Bytes are never dropped: TCP does not lose them, it
  delivers them late.
- `rate_bytes_per_s`: a slow link. Chunks queue behind each other at that rate.
- `held`: an outage (the link is down, or this direction is partitioned). Bytes queue as the
  sender's kernel would keep them for retransmission, and flow the moment the link is back. On
  a real link the kernel's exponential retransmission backoff decides when traffic resumes:
  `Host.plug` in bench/netns.py cuts a host's cable to measure that.

    link = Link(("10.0.0.1", 0), ("10.0.0.2", 5556))
    link.shape(Shape(delay_ns=500_000, jitter_ns=150_000))     # both directions
    link.hold(up=True, down=False)                             # worker -> controller cut
    ...
    link.close()
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections import deque
from dataclasses import dataclass

from clockwork.common.clock import monotonic_ns

CHUNK_BYTES = 64 * 1024
LINUX_MIN_RTO_NS = 200_000_000


@dataclass
class Shape:
    """One direction's behaviour; changed while traffic flows (each field is read per chunk)."""

    delay_ns: int = 0  # one-way delay added to every chunk
    jitter_ns: int = 0  # +- this, uniform
    loss: float = 0.0  # share of chunks lost once: resent after the next chunk's SACK, else after rto_ns
    rto_ns: int = LINUX_MIN_RTO_NS
    rate_bytes_per_s: float = 0.0  # 0: unlimited
    held: bool = False  # True: nothing leaves (an outage), bytes wait


class _Pipe:
    """One direction of one relayed connection. The writer sends chunks in the order read, each
    no earlier than its own time: a chunk held back holds back the stream behind it."""

    def __init__(self, src: socket.socket, dst: socket.socket, shape: Shape, rng: random.Random, on_close):
        self.src, self.dst, self.shape, self.rng = src, dst, shape, rng
        self.on_close = on_close
        self.queue: deque[list] = deque()  # [release_ns, bytes], in stream order
        self.lost: list[list] = []  # chunks waiting for a retransmission that a later chunk can hasten
        self.cond = threading.Condition()
        self.eof = False
        self.line_free_ns = 0
        self.chunks = self.chunks_lost = 0

    def start(self) -> None:
        for target in (self._read, self._write):
            threading.Thread(target=target, daemon=True, name="faulty-link").start()

    def _add(self, now_ns: int, data: bytes) -> None:
        """Under the lock: queue what was just read, with the time it may leave."""
        s = self.shape
        at = now_ns + s.delay_ns + (int(self.rng.uniform(-s.jitter_ns, s.jitter_ns)) if s.jitter_ns else 0)
        if s.rate_bytes_per_s:
            self.line_free_ns = max(self.line_free_ns, now_ns) + int(len(data) / s.rate_bytes_per_s * 1e9)
            at = max(at, self.line_free_ns + s.delay_ns)
        self.chunks += 1
        if s.loss and self.rng.random() < s.loss:
            self.chunks_lost += 1
            self.lost.append(entry := [at + s.rto_ns, data])
        else:
            # This chunk's selective ACK tells the sender what was lost before it: the
            # retransmission arrives a round trip and a reorder window (RTT / 4) after it.
            repaired_ns = at + 2 * s.delay_ns + s.delay_ns // 2
            for chunk in self.lost:
                chunk[0] = min(chunk[0], repaired_ns)
            self.lost.clear()
            entry = [at, data]
        self.queue.append(entry)
        self.cond.notify()

    def _read(self) -> None:
        try:
            while data := self.src.recv(CHUNK_BYTES):
                with self.cond:
                    self._add(monotonic_ns(), data)
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        if self.queue and not self.shape.held:
                            wait_ns = self.queue[0][0] - monotonic_ns()
                            if wait_ns <= 0:
                                data = self.queue.popleft()[1]
                                break
                        elif self.eof and not self.queue:
                            return
                        else:
                            wait_ns = 50_000_000  # held or idle: look again (a release changes `held`)
                        self.cond.wait(wait_ns / 1e9)
                self.dst.sendall(data)
        except OSError:
            pass
        finally:
            self.on_close()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()


class Link:
    """A relay listening on `listen` (host, port; port 0: any) that connects each accepted
    connection to `target`. `up` shapes what the connecting side sends, `down` what it receives."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], seed: int = 0):
        self.target = target
        self.up, self.down = Shape(), Shape()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket, _Pipe, _Pipe]] = []
        self._closed = False
        self._server = socket.create_server(listen)
        self.address = self._server.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True, name="faulty-link-accept").start()

    def shape(self, shape: Shape) -> None:
        """The same behaviour both ways (a copy each)."""
        for mine in (self.up, self.down):
            mine.__dict__.update(shape.__dict__)
        self.changed()

    def hold(self, up: bool, down: bool) -> None:
        """Cut (True) or restore (False) each direction: both for a link down, one for a partition."""
        self.up.held, self.down.held = up, down
        self.changed()

    def changed(self) -> None:
        """Wake the writers so a lifted hold takes effect at once."""
        with self._lock:
            pipes = [p for conn in self._conns for p in conn[2:]]
        for pipe in pipes:
            pipe.wake()

    def counts(self) -> tuple[int, int]:
        """(chunks relayed, chunks lost once) over the open connections, both directions."""
        with self._lock:
            pipes = [p for conn in self._conns for p in conn[2:]]
        return sum(p.chunks for p in pipes), sum(p.chunks_lost for p in pipes)

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                far = socket.create_connection(self.target, timeout=5)
                far.settimeout(None)
            except OSError:
                near.close()  # the far side is down: the connecting peer retries, as it would
                continue
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._open(near, far)

    def _open(self, near: socket.socket, far: socket.socket) -> None:
        done = threading.Event()
        conn: list = []

        def close_both() -> None:  # either direction ending ends the connection, as TCP would
            if not done.is_set():
                done.set()
                for sock in (near, far):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                with self._lock:
                    if conn and conn[0] in self._conns:
                        self._conns.remove(conn[0])

        with self._lock:
            if self._closed:
                near.close()
                far.close()
                return
            up = _Pipe(near, far, self.up, random.Random(self._rng.random()), close_both)
            down = _Pipe(far, near, self.down, random.Random(self._rng.random()), close_both)
            conn.append((near, far, up, down))
            self._conns.append(conn[0])
        up.start()
        down.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        self._server.close()
        for near, far, *_ in conns:
            for sock in (near, far):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
