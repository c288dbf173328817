"""`clockwork-bench transport`: what one round trip between two processes costs on this host.

The floor under every figure of a request's way: each hop of this system is a ZeroMQ message
between two processes (client -> controller -> worker and back: two round trips, where a plain
server has one). Measured here, in one run, for each message size of `--sizes`:

- raw TCP: a client and an echo process over one loopback TCP connection, each message its
  length and its bytes, read and written by the threads that wait for them;
- ZeroMQ over TCP and over ipc (a Unix socket): a DEALER and a ROUTER echo, sent and read as
  the daemons do (common/net.py: frames sent without copying, read as memoryviews), so each
  message also passes through both processes' ZeroMQ I/O threads.

One message outstanding, back to back and with `--gap-ms` of idleness before each (as real
clients send them: every thread has gone to sleep), the transports interleaved in blocks so
that a drift of the host's speed falls on all alike. The verdict is ZeroMQ's round trip over
raw TCP's at p50: what the mandated transport costs on this host beside the kernel's own.

    clockwork-bench transport                          # 100 B and 1.2 MiB (a 3x320x320 FP32 image)
    clockwork-bench transport --sizes 100,49152 --gap-ms 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import zmq

from clockwork.bench.procs import ProcessGroup, free_port, run_in_temp_dir
from clockwork.bench.progress import say
from clockwork.bench.report import Latencies, format_table, write_json
from clockwork.common.net import dealer, recv_frames, router, send_frames

TRANSPORTS = ("raw tcp", "zeromq tcp", "zeromq ipc")
HEADER = struct.Struct("!I")  # a raw message's length
READY_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------- echo processes


def echo_raw(port: int) -> None:
    """Answer every length-prefixed message on one accepted connection with itself."""
    server = socket.create_server(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = Buffer()
    while True:
        head = buf.read(conn, HEADER.size)
        if head is None:
            return
        size = HEADER.unpack(head)[0]
        body = buf.read(conn, size, HEADER.size)
        if body is None:
            return
        send_message(conn, buf.view[:HEADER.size + size])


def echo_zmq(endpoint: str) -> None:
    """A ROUTER that sends every message back to its sender, frames untouched."""
    sock = router(zmq.Context(), endpoint)
    while True:
        frames = recv_frames(sock)
        send_frames(sock, frames[1:], frames[0])


def send_message(conn: socket.socket, *parts: bytes | memoryview) -> None:
    """All of `parts` in as few system calls as the kernel takes them (one, mostly): a length
    sent apart from its bytes would wake the reader twice."""
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        sent = conn.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][sent:]


class Buffer:
    """One receive buffer, grown as messages need: a fresh zeroed one per message would add a
    pass over every byte that ZeroMQ's own receive does not make."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(0))

    def read(self, conn: socket.socket, n: int, at: int = 0) -> memoryview | None:
        """`n` bytes from `conn` into the buffer from `at`; None when the peer closed."""
        if len(self.view) < at + n:
            grown = bytearray(at + n)
            grown[:at] = self.view[:at]
            self.view = memoryview(grown)
        got = 0
        while got < n:
            k = conn.recv_into(self.view[at + got:at + n])
            if not k:
                return None
            got += k
        return self.view[at:at + n]


# ----------------------------------------------------------------------------- the client side


def connect_raw(port: int) -> socket.socket | None:
    """A connection to the raw TCP echo on `port`; None while it does not listen yet."""
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)
    except ConnectionRefusedError:
        return None


class RawPath:
    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = Buffer()

    def once(self, payload: bytes) -> int:
        start = time.perf_counter_ns()
        send_message(self.conn, HEADER.pack(len(payload)), payload)
        head = self.buf.read(self.conn, HEADER.size)
        body = self.buf.read(self.conn, len(payload), HEADER.size) if head is not None else None
        took = time.perf_counter_ns() - start
        if body is None or HEADER.unpack(head)[0] != len(payload) or body[-8:] != payload[-8:]:
            raise RuntimeError("the raw TCP echo answered something else")
        return took

    def close(self) -> None:
        self.conn.close()


class ZmqPath:
    def __init__(self, ctx: zmq.Context, endpoint: str):
        self.sock = dealer(ctx, endpoint)

    def once(self, payload: bytes) -> int:
        start = time.perf_counter_ns()
        send_frames(self.sock, [payload])
        if not self.sock.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLIN):
            raise TimeoutError(f"no echo within {REPLY_TIMEOUT_S:g} s")
        frames = recv_frames(self.sock)
        took = time.perf_counter_ns() - start
        if len(frames) != 1 or len(frames[0]) != len(payload) or frames[0][-8:] != payload[-8:]:
            raise RuntimeError("the ZeroMQ echo answered something else")
        return took


@contextlib.contextmanager
def zeromq_echo(group: ProcessGroup, endpoint: str, name: str = "zeromq-echo") -> Iterator[ZmqPath]:
    """An echo process on `endpoint`, started in `group`, and a path to it (on a ZeroMQ context
    of its own, ended with the block)."""
    ctx = zmq.Context()
    try:
        group.start(name, echo_argv("zmq", endpoint))
        yield ZmqPath(ctx, endpoint)
    finally:
        ctx.destroy(linger=0)


# ----------------------------------------------------------------------------- measuring


def measure(paths: dict[str, Callable[[bytes], int]], payload: bytes, round_trips: int, warmup: int, block: int,
            gap_s: float) -> dict[str, Latencies]:
    """`round_trips` each, the transports taking turns in blocks of `block`."""
    out = {name: Latencies() for name in paths}
    for once in paths.values():
        for _ in range(warmup):
            once(payload)
    done = 0
    while done < round_trips:
        n = min(block, round_trips - done)
        for name, once in paths.items():
            for _ in range(n):
                if gap_s:
                    time.sleep(gap_s)
                out[name].record_ns(once(payload))
        done += n
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench transport", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=f"100,{3 * 320 * 320 * 4}",
                   help="message sizes in bytes, comma-separated (default: 100 and a 3x320x320 FP32 image)")
    p.add_argument("--round-trips", type=int, default=500, help="measured round trips per transport, size and mode")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--block", type=int, default=50, help="round trips in a row before the next transport's turn")
    p.add_argument("--gap-ms", type=float, default=10.0, help="idleness before each round trip in the gapped mode")
    p.add_argument("--out", default="out/transport")
    p.add_argument("--keep", action="store_true", help="keep the echo processes' logs")
    p.add_argument("--serve", nargs=2, metavar=("KIND", "WHERE"), help=argparse.SUPPRESS)  # an echo process
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be byte counts separated by commas, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 8:
        p.error("every size must be at least 8 bytes")
    if args.round_trips < 1 or args.block < 1 or args.warmup < 0 or args.gap_ms < 0:
        p.error("--round-trips and --block must be positive, --warmup and --gap-ms not negative")
    return args


def echo_argv(kind: str, where: str) -> list[str]:
    """The command of an echo process: kind "raw" (`where`: a TCP port) or "zmq" (an endpoint)."""
    return [sys.executable, "-m", "clockwork.bench.transport", "--serve", kind, where]


def run(args: argparse.Namespace, run_dir: Path) -> int:
    port = free_port()
    tcp, ipc = f"tcp://127.0.0.1:{free_port()}", f"ipc://{run_dir / 'echo.ipc'}"
    with ProcessGroup(run_dir / "logs") as group, zeromq_echo(group, tcp, "zmq-tcp-echo") as over_tcp, \
            zeromq_echo(group, ipc, "zmq-ipc-echo") as over_ipc:
        group.start("raw-echo", echo_argv("raw", str(port)))
        raw = RawPath(group.wait_until(lambda: connect_raw(port), READY_TIMEOUT_S, "the raw TCP echo to listen",
                                       interval_s=0.05))
        clients = dict(zip(TRANSPORTS, (raw, over_tcp, over_ipc)))
        try:
            results = []
            modes = [("back to back", 0.0)] + ([(f"{args.gap_ms:g} ms gaps", args.gap_ms / 1000)] if args.gap_ms else [])
            for size in args.sizes:
                payload = os.urandom(size)
                for mode, gap_s in modes:
                    say(f"{size} B, {mode}: {args.round_trips} round trips per transport ...")
                    series = measure({n: c.once for n, c in clients.items()}, payload, args.round_trips,
                                     args.warmup, args.block, gap_s)
                    results += [{"size_bytes": size, "mode": mode, "transport": name, **lat.summary_ms()}
                                for name, lat in series.items()]
                    group.check()
        finally:
            raw.close()
    return report(args, results)


def report(args: argparse.Namespace, results: list[dict]) -> int:
    rows, verdicts = [], []
    for r in results:
        rows.append([r["size_bytes"], r["mode"], r["transport"], r["p50"], r["p99"], r["max"]])
    by = {(r["size_bytes"], r["mode"], r["transport"]): r for r in results}
    for (size, mode, name), r in by.items():
        if name != "raw tcp":
            raw = by[(size, mode, "raw tcp")]["p50"]
            verdicts.append({"size_bytes": size, "mode": mode, "transport": name, "p50_ms": r["p50"], "raw_p50_ms": raw,
                             "over_raw_ms": r["p50"] - raw, "ratio_p50": r["p50"] / raw if raw else None})
    print(format_table(rows, ["bytes", "mode", "transport", "p50 ms", "p99 ms", "max ms"]))
    print()
    print(format_table([[v["size_bytes"], v["mode"], v["transport"], f"{v['over_raw_ms']:+.3f} ms",
                         f"{v['ratio_p50']:.2f}x" if v["ratio_p50"] else "-"] for v in verdicts],
                       ["bytes", "mode", "transport", "round trip p50 over raw TCP's", "ratio"]))
    path = write_json(Path(args.out) / "transport.json", {"round_trips": args.round_trips, "gap_ms": args.gap_ms,
                                                          "results": results, "over_raw_tcp": verdicts})
    say(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        kind, where = args.serve
        try:
            echo_raw(int(where)) if kind == "raw" else echo_zmq(where)
        except KeyboardInterrupt:
            return 130
        return 0
    return run_in_temp_dir("clockwork-transport-", args.keep, "transport bench", lambda run_dir: run(args, run_dir))


if __name__ == "__main__":
    sys.exit(main())
