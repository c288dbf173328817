"""How much latency variance and time does the worker add? `clockwork-bench predictability`.

Measures, in one run, one ONNX model (by default a stack of MatMul+Relu layers, a few ms on one
core; `--model cnn` the generated CNN of `versus`, under 1 ms):
  (a) called directly with onnxruntime (1 intra-op thread, sequential), and
  (b) through a real worker process's EXEC lane, driven by an in-process stand-in controller
      (a ROUTER on loopback), using the duration the worker measured (RESULT.duration_ns).
The two are measured in alternating blocks so that drift in the machine's load hits both alike.
The goal: the worker adds under 5% at p99.

Then back to back: bursts of EXECs queued at the worker before the first may start, against the
same number of direct calls in a loop, alternated. The lane's rate over the loop's is the share
of the lane's time that is the model's; what is left is the lane's own turnaround between
actions (the gap from one EXEC's end to the next one's begin) and its work inside an EXEC's
window that is not the run. Goal: the lane's rate >= 0.95 of the loop's. Beside it, the
worker's CPU an EXEC by thread (its loop, its EXEC lane, ZeroMQ's I/O thread): work moved off
the lane lands on the loop, which on a small CPU host shares a core with everything else.

    python -m clockwork.bench.predictability --runs 2000

`StubController`, `spawn_worker` and `mlp_model` are reused by the worker's integration tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from clockwork.bench.cpu import CpuTally
from clockwork.common.clock import monotonic_ns
from clockwork.common.codec import decode, encode, split
from clockwork.common.net import IdSource, configure_socket
from clockwork.common.schema import Envelope, Exec, Heartbeat, HeartbeatAck, Hello, Load, Message, Prepare, Result, Welcome
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor

SECOND_NS = 1_000_000_000


def mlp_model(width: int = 256, rows: int = 0, layers: int = 2, seed: int = 0, opset: int = 17) -> bytes:
    """ONNX bytes: `layers` x (MatMul by a width x width weight, Relu), batch dim 'N' dynamic.

    Input "x" is [N, width], or [N, rows, width] when rows > 0; output "y" has the same shape.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shape = ["N", rows, width] if rows else ["N", width]
    nodes, weights, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by onnxruntime releases older than the onnx package
    return model.SerializeToString()


def spawn_worker(endpoint: str, *args: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """Start `python -m clockwork.worker.main` connected to `endpoint`."""
    cmd = [sys.executable, "-m", "clockwork.worker.main", "--controller", endpoint, *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)


def stop_worker(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


class StubController:
    """A controller stand-in on loopback: welcomes workers, acks heartbeats, lets a caller act.

    Everything the worker sends other than HELLO and HEARTBEAT is kept for `recv`/`wait_for`.
    """

    def __init__(self, heartbeat_interval_ns: int = 200_000_000, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = configure_socket(self.ctx.socket(zmq.ROUTER))
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.heartbeat_interval_ns = heartbeat_interval_ns
        self.ids = IdSource()
        self.worker: bytes | None = None  # identity of the last worker that said HELLO
        self.hellos: list[Hello] = []
        self.last_hello_id = 0
        self.heartbeats: list[Heartbeat] = []
        self.welcome = True  # set False to leave HELLOs unanswered
        self.answer_heartbeats = True  # set False to leave heartbeats unanswered (a one-way cut)
        self._backlog: deque[Envelope] = deque()

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, body: Message, parent_id: int = 0, identity: bytes | None = None) -> int:
        msg_id = self.ids.next()
        self.send_frames(encode(body, msg_id, parent_id, monotonic_ns()), identity)
        return msg_id

    def send_frames(self, frames: Sequence[Any], identity: bytes | None = None) -> None:
        self.sock.send_multipart([identity or self.worker, *frames], copy=False)

    def _pump(self, timeout_ms: int) -> bool:
        if not self.sock.poll(timeout_ms):
            return False
        identity, *frames = self.sock.recv_multipart(copy=False)
        for head, part in split([f.buffer for f in frames]):  # a worker bundles results finished together
            self._keep(identity.bytes, decode(part, head))
        return True

    def _keep(self, identity: bytes, env: Envelope) -> None:
        if isinstance(env.body, Hello):
            self.worker = identity
            self.last_hello_id = env.msg_id
            self.hellos.append(env.body)
            if self.welcome:
                self.send(Welcome(heartbeat_interval_ns=self.heartbeat_interval_ns), env.msg_id)
        elif isinstance(env.body, Heartbeat):
            self.heartbeats.append(env.body)
            if self.answer_heartbeats:
                self.send(HeartbeatAck(echo_sent_ns=env.sent_ns), env.msg_id)
        else:
            self._backlog.append(env)

    def wait_for(self, predicate: Callable[[Envelope], bool], timeout_s: float = 30.0) -> Envelope:
        """The first kept message matching `predicate` (others stay kept); TimeoutError if none."""
        deadline = time.monotonic() + timeout_s
        while True:
            for env in self._backlog:
                if predicate(env):
                    self._backlog.remove(env)
                    return env
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError("no matching message from the worker")
            self._pump(min(left_ms, 100))

    def reply_to(self, msg_id: int, timeout_s: float = 30.0) -> Envelope:
        return self.wait_for(lambda env: env.parent_id == msg_id, timeout_s)

    def wait_hello(self, timeout_s: float = 30.0) -> Hello:
        deadline = time.monotonic() + timeout_s
        seen = len(self.hellos)
        while len(self.hellos) == seen:
            if time.monotonic() > deadline:
                raise TimeoutError("no HELLO from the worker")
            self._pump(100)
        return self.hellos[-1]

    def pump_for(self, seconds: float) -> None:
        """Keep answering HELLOs and heartbeats for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(max(1, int((deadline - time.monotonic()) * 1000)))

    def drain(self) -> list[Envelope]:
        while self._pump(0):
            pass
        kept, self._backlog = list(self._backlog), deque()
        return kept

    # conveniences for driving a worker
    def prepare(self, model_id: str, blob: bytes, fmt: str = "onnx", max_batch: int = 16,
                input_shapes: dict | None = None, timeout_s: float = 120.0) -> Envelope:
        msg_id = self.send(Prepare(model_id=model_id, format=fmt, blob=blob, max_batch=max_batch,
                                   input_shapes=input_shapes or {}))
        return self.reply_to(msg_id, timeout_s)

    def load(self, device_id: int, model_id: str, window_ns: int = 60 * SECOND_NS, timeout_s: float = 60.0) -> Envelope:
        now = monotonic_ns()
        msg_id = self.send(Load(device_id=device_id, model_id=model_id, earliest_ns=now, latest_ns=now + window_ns))
        return self.reply_to(msg_id, timeout_s)

    def exec_async(self, device_id: int, model_id: str, inputs: dict[str, np.ndarray], batch_size: int = 0,
                   earliest_ns: int | None = None, latest_ns: int | None = None, expected_ns: int = 0) -> int:
        now = monotonic_ns()
        tensors = tuple(Tensor.from_array(name, arr) for name, arr in inputs.items())
        samples = next(iter(inputs.values())).shape[0]
        return self.send(Exec(device_id=device_id, model_id=model_id, batch_size=batch_size or samples,
                              earliest_ns=now if earliest_ns is None else earliest_ns,
                              latest_ns=now + 60 * SECOND_NS if latest_ns is None else latest_ns,
                              expected_ns=expected_ns, tensors=tensors))


# ------------------------------------------------------------------------------- the bench


def percentiles_ms(samples_ns: list[int]) -> tuple[float, float, float]:
    p50, p99, p999 = np.percentile(np.asarray(samples_ns, dtype=np.float64), [50, 99, 99.9])
    return p50 / 1e6, p99 / 1e6, p999 / 1e6


def direct_session(model: bytes):
    """One onnxruntime session on one thread, sequential: the model called directly, the
    reference every comparison with the worker measures against."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def time_direct(session, inputs: dict[str, np.ndarray], runs: int) -> list[int]:
    times = []
    for _ in range(runs):
        t0 = monotonic_ns()
        session.run(None, inputs)
        times.append(monotonic_ns() - t0)
    return times


def ok_result(env: Envelope) -> Result:
    result: Result = env.body
    if result.status is not Status.OK:
        raise RuntimeError(f"EXEC failed: {result.status.name} {result.detail}")
    return result


def time_worker(ctl: StubController, inputs: dict[str, np.ndarray], runs: int) -> list[int]:
    return [ok_result(ctl.reply_to(ctl.exec_async(0, "bench", inputs))).duration_ns for _ in range(runs)]


def burst_direct(session, inputs: dict[str, np.ndarray], runs: int) -> int:
    """Nanoseconds for `runs` direct calls back to back."""
    t0 = monotonic_ns()
    for _ in range(runs):
        session.run(None, inputs)
    return monotonic_ns() - t0


def burst_worker(ctl: StubController, inputs: dict[str, np.ndarray], runs: int) -> tuple[int, list[int]]:
    """`runs` EXECs sent at once, none to start before all are queued at the worker (a lead of
    50 ms and 0.5 ms an EXEC): nanoseconds from the first one's begin to the last one's end, and
    the gaps from each end to the next begin."""
    start = monotonic_ns() + 50_000_000 + runs * 500_000
    ids = [ctl.exec_async(0, "bench", inputs, earliest_ns=start) for _ in range(runs)]
    results = sorted((ok_result(ctl.reply_to(i)) for i in ids), key=lambda r: r.begin_ns)
    gaps = [b.begin_ns - a.end_ns for a, b in zip(results, results[1:])]
    return results[-1].end_ns - results[0].begin_ns, gaps


def start_bench_worker(model: bytes, log_path: str | None) -> tuple[StubController, subprocess.Popen]:
    ctl = StubController()
    stderr = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = spawn_worker(ctl.endpoint, "--runtime", "onnxruntime", "--devices", "1", "--name", "bench-worker",
                        stderr=stderr)
    ctl.wait_hello(60)
    prepared = ctl.prepare("bench", model).body
    if prepared.status is not Status.OK:
        raise RuntimeError(f"PREPARE failed: {prepared.status.name} {prepared.detail}")
    loaded = ctl.load(0, "bench").body
    if loaded.status is not Status.OK:
        raise RuntimeError(f"LOAD failed: {loaded.status.name} {loaded.detail}")
    return ctl, proc


def report(direct: list[int], worker: list[int]) -> str:
    d, w = percentiles_ms(direct), percentiles_ms(worker)
    lines = [
        f"{'':<26}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'p99/p50':>10}",
        f"{'onnxruntime direct':<26}{d[0]:>10.3f}{d[1]:>10.3f}{d[2]:>10.3f}{d[1] / d[0]:>10.2f}",
        f"{'worker EXEC lane':<26}{w[0]:>10.3f}{w[1]:>10.3f}{w[2]:>10.3f}{w[1] / w[0]:>10.2f}",
        f"runs: {len(direct)} each; worker / direct at p50: {w[0] / d[0]:.3f}, at p99: {w[1] / d[1]:.3f} "
        f"(goal: under 1.05 at p99)",
    ]
    return "\n".join(lines)


def report_bursts(runs: int, direct_ns: list[int], worker_ns: list[int], gaps: list[int], cpu: CpuTally) -> str:
    """The lane's rate over the direct loop's, burst by burst (each pair run back to back), and
    the worker's CPU an EXEC by thread while it ran them (`cpu`)."""
    ratios = [d / w for d, w in zip(direct_ns, worker_ns)]
    g50, g90, g99 = np.percentile(np.asarray(gaps, dtype=np.float64), [50, 90, 99]) / 1e3
    per_call = float(np.median(direct_ns)) / runs / 1e3
    by_thread = ", ".join(f"{name.split('/', 1)[1]} {us:.0f}"
                          for name, us in cpu.threads_us_per(runs * len(worker_ns)).items())
    return "\n".join([
        f"back to back, {len(ratios)} bursts of {runs}: direct {per_call:.1f} us a call; "
        f"worker lane's rate / direct's: median {np.median(ratios):.3f} (bursts {min(ratios):.3f}-{max(ratios):.3f}; "
        f"goal >= 0.95)",
        f"  the lane's gap from an EXEC's end to the next one's begin: p50 {g50:.1f} us, p90 {g90:.1f}, p99 {g99:.1f}",
        f"  the worker's CPU an EXEC by thread (us; main is its loop): {by_thread or 'not readable here'}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clockwork-bench predictability", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2000, help="timed executions per path (default 2000)")
    p.add_argument("--block", type=int, default=100, help="runs per alternating block (default 100)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: MatMul+Relu layers shaped by the options below (default); cnn: versus's CNN")
    p.add_argument("--width", type=int, default=256, help="MatMul width (default 256)")
    p.add_argument("--rows", type=int, default=256, help="rows per sample (default 256)")
    p.add_argument("--layers", type=int, default=8, help="MatMul+Relu layers (default 8)")
    p.add_argument("--warmup", type=int, default=50, help="untimed runs per path first (default 50)")
    p.add_argument("--burst", type=int, default=200, help="EXECs per back-to-back burst; 0 skips them (default 200)")
    p.add_argument("--bursts", type=int, default=6, help="bursts per path, alternated (default 6)")
    p.add_argument("--worker-log", help="write the worker's JSON log here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.block < 1 or args.burst < 0 or (args.burst and args.bursts < 1):
        p.error("--runs, --block and --bursts must be positive, --burst not negative")

    if args.model == "cnn":
        from clockwork.bench.models import cnn_onnx, sample_inputs

        model = cnn_onnx()
        inputs = sample_inputs("onnx", model, 1, 1)
    else:
        model = mlp_model(args.width, args.rows, args.layers)
        inputs = {"x": np.random.default_rng(1).standard_normal((1, args.rows, args.width)).astype(np.float32)}
    print("starting a worker process...", file=sys.stderr)
    ctl, proc = start_bench_worker(model, args.worker_log)
    try:
        session = direct_session(model)
        time_direct(session, inputs, args.warmup)
        time_worker(ctl, inputs, args.warmup)
        direct, worker = [], []
        while len(direct) < args.runs:
            n = min(args.block, args.runs - len(direct))
            direct += time_direct(session, inputs, n)
            worker += time_worker(ctl, inputs, n)
            print(f"  {len(direct)}/{args.runs} runs per path", file=sys.stderr)
        direct_bursts, worker_bursts, gaps = [], [], []
        cpu = CpuTally({"worker": proc.pid})
        for i in range(args.bursts if args.burst else 0):
            direct_bursts.append(burst_direct(session, inputs, args.burst))
            with cpu:
                span, burst_gaps = burst_worker(ctl, inputs, args.burst)
            worker_bursts.append(span)
            gaps += burst_gaps
            print(f"  {i + 1}/{args.bursts} bursts of {args.burst} per path", file=sys.stderr)
    finally:
        stop_worker(proc)
        ctl.close()
    print(report(direct, worker))
    if worker_bursts:
        print(report_bursts(args.burst, direct_bursts, worker_bursts, gaps, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
