"""`clockwork-bench overhead`: what the system adds to a request, beside a bare ZeroMQ relay.

Two paths are measured in one run, interleaved in blocks so that drift (CPU frequency, other
load) hits both alike, each with a single request outstanding, in two modes: back to back
(every thread stays hot) and with a gap before each request (`--gap-ms`, as real clients send
them: every process has gone to sleep when the request comes):

- system: client -> controller -> onnxruntime worker -> back, with a tiny model (y = x + 1);
  overhead = end-to-end latency - the exec time the worker measured.
- relay: the same encoded frames through a relay process with two ROUTERs (the controller's
  socket layout) to an echo DEALER process (the worker's) and back; no decoding in between.
  This is the floor any design over ZeroMQ in Python pays for two hops each way.

Goal: overhead p50 <= 1.5 x the relay's p50, in both modes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import zmq

from clockwork.bench import models as bench_models
from clockwork.bench.procs import WorkerSpec, cluster, free_port, run_in_temp_dir
from clockwork.bench.progress import say
from clockwork.bench.report import Latencies, format_table, write_json
from clockwork.client.protocol import build_infer
from clockwork.common.codec import decode, encode
from clockwork.common.net import IdSource, dealer, recv_frames, router
from clockwork.common.schema import Infer, InferReply
from clockwork.common.status import Status

MODEL = "tiny"
HELLO = b"hello"
REPLY_TIMEOUT_S = 10.0
GOAL_RATIO = 1.5


# ----------------------------------------------------------------------------- relay processes


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


# ----------------------------------------------------------------------------- measurement


class _Path:
    """One closed-loop path: send a request, wait for its answer, return timings."""

    def __init__(self, sock: zmq.Socket, body: Infer):
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


class _Measure:
    def __init__(self) -> None:
        self.overhead = Latencies()  # system e2e - worker exec
        self.e2e = Latencies()
        self.exec = Latencies()
        self.relay = Latencies()
        self.not_ok: dict[str, int] = {}

    def system(self, path: _Path, record: bool) -> None:
        rtt_ns, body = path.once()
        status = getattr(body, "status", Status.INTERNAL)
        if status is not Status.OK or not isinstance(body, InferReply):
            self.not_ok[status.name] = self.not_ok.get(status.name, 0) + 1
            return
        if record:
            self.overhead.record_ns(rtt_ns - body.exec_ns)
            self.e2e.record_ns(rtt_ns)
            self.exec.record_ns(body.exec_ns)

    def bare(self, path: _Path, record: bool) -> None:
        rtt_ns, _ = path.once()
        if record:
            self.relay.record_ns(rtt_ns)


def wait_serving(path: _Path, timeout_s: float) -> None:
    """Until the tiny model answers OK (its first request waits for a LOAD)."""
    deadline = time.monotonic() + timeout_s
    last = "no reply"
    while time.monotonic() < deadline:
        _, body = path.once()
        status = getattr(body, "status", Status.INTERNAL)
        if status is Status.OK:
            return
        last = f"{status.name}: {getattr(body, 'detail', '')}"
        time.sleep(0.1)
    raise TimeoutError(f"the model did not serve within {timeout_s:g} s (last reply {last})")


def wait_relay(path: _Path, timeout_s: float) -> None:
    """Until the echo peer has said hello to the relay (earlier requests are dropped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            path.once(timeout_s=0.2)
            return
        except TimeoutError:
            continue
    raise TimeoutError("the relay and echo processes did not answer")


def measure(system: _Path, relay: _Path, requests: int, warmup: int, block: int, gap_s: float = 0.0) -> _Measure:
    """Both paths, `requests` each, in alternating blocks; `gap_s` of idleness before each."""
    m = _Measure()
    for _ in range(warmup):
        m.system(system, record=False)
        m.bare(relay, record=False)
    m.not_ok.clear()
    done = 0
    while done < requests:
        n = min(block, requests - done)
        for path, record in ((system, m.system), (relay, m.bare)):
            for _ in range(n):
                if gap_s:
                    time.sleep(gap_s)
                record(path, record=True)
        done += n
    return m


# ----------------------------------------------------------------------------- command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench overhead", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="measured requests per path")
    p.add_argument("--warmup", type=int, default=300, help="unmeasured requests per path first")
    p.add_argument("--block", type=int, default=100, help="requests per path before switching paths")
    p.add_argument("--gap-ms", type=float, default=10.0, help="idleness before each request in the gapped mode")
    p.add_argument("--gapped-requests", type=int, default=500, help="measured requests per path with gaps")
    p.add_argument("--out", default=None, help="folder for overhead-summary.json (none: print only)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the goal is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary state and log folder")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    p.add_argument("--role", choices=("relay", "echo"), help=argparse.SUPPRESS)
    p.add_argument("--front", help=argparse.SUPPRESS)
    p.add_argument("--back", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.requests < 1 or args.gapped_requests < 1 or args.warmup < 0 or args.block < 1 or args.gap_ms <= 0:
        p.error("--requests, --gapped-requests and --block must be >= 1, --warmup >= 0, --gap-ms > 0")
    return args


def run(args: argparse.Namespace) -> int:
    return run_in_temp_dir("clockwork-overhead-", args.keep, "overhead bench",
                           lambda run_dir: measure_and_report(args, run_dir))


def measure_and_report(args: argparse.Namespace, run_dir: Path) -> int:
    blob = bench_models.tiny_onnx()
    body = build_infer(MODEL, bench_models.sample_inputs("onnx", blob), int(REPLY_TIMEOUT_S * 1e9))
    with cluster(run_dir, [WorkerSpec("cpu", "onnxruntime", devices=1)], log_level=args.log_level) as c:
        front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        me = [sys.executable, "-m", "clockwork.bench.overhead"]
        c.group.start("relay", [*me, "--role", "relay", "--front", front, "--back", back])
        c.group.start("echo", [*me, "--role", "echo", "--back", back])
        with c.client() as admin:
            admin.upload(blob, MODEL, format="onnx", replace=True)
        ctx = zmq.Context()
        try:
            system = _Path(dealer(ctx, c.client_endpoint), body)
            relay = _Path(dealer(ctx, front), body)
            wait_serving(system, 60.0)
            wait_relay(relay, 30.0)
            say(f"back to back: {args.requests} requests per path after {args.warmup} warm-up ...")
            modes = {"back to back": measure(system, relay, args.requests, args.warmup, args.block)}
            say(f"with {args.gap_ms:g} ms gaps: {args.gapped_requests} requests per path "
                f"(~{2 * args.gapped_requests * args.gap_ms / 1000:.0f} s) ...")
            modes[f"{args.gap_ms:g} ms gaps"] = measure(system, relay, args.gapped_requests, 0, args.block,
                                                        args.gap_ms / 1000)
            c.check()
        finally:
            ctx.destroy(linger=0)
    return report(args, modes)


def report(args: argparse.Namespace, modes: dict[str, _Measure]) -> int:
    data: dict = {"goal": GOAL_RATIO, "modes": {}}
    for mode, m in modes.items():
        rows = []
        for label, lat in (("overhead (e2e - exec)", m.overhead), ("bare relay RTT", m.relay),
                           ("system e2e", m.e2e), ("worker exec", m.exec)):
            rows.append((label, lat.count, lat.percentile_ms(50), lat.percentile_ms(99), lat.max_ms()))
        ratio = m.overhead.percentile_ms(50) / m.relay.percentile_ms(50) if m.relay.count else float("nan")
        print(f"\n{mode}:\n" + format_table(rows, header=("ms", "n", "p50", "p99", "max")))
        print(f"overhead p50 / relay p50 = {ratio:.2f}x (goal <= {GOAL_RATIO:g}x): "
              f"{'met' if ratio <= GOAL_RATIO else 'MISSED'}")
        if m.not_ok:
            print(f"non-OK replies during measurement: {m.not_ok}")
        data["modes"][mode] = {"ratio_p50": ratio, "met": ratio <= GOAL_RATIO, "not_ok": m.not_ok,
                               **{f"{key}_ms": lat.summary_ms() for key, lat in (
                                   ("overhead", m.overhead), ("relay", m.relay), ("e2e", m.e2e), ("exec", m.exec))}}
    data["met"] = all(mode["met"] for mode in data["modes"].values())
    if args.out:
        print(f"wrote {write_json(Path(args.out) / 'overhead-summary.json', data)}")
    return 1 if args.strict and not data["met"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.role == "relay":
            relay_main(args.front, args.back)
        elif args.role == "echo":
            echo_main(args.back)
        else:
            return run(args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
