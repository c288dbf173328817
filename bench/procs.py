"""Supervise the daemons a benchmark (or an integration test) starts, and never leave one behind.

`ProcessGroup` starts children with their stdout and stderr in log files of the run folder, and
stops them all - SIGTERM, then SIGKILL after a grace period - when its `with` block ends: on an
exception, on Ctrl-C, SIGTERM or SIGHUP (each turned into KeyboardInterrupt while the group is
open, in the main thread), and at interpreter exit. Each child runs in its own session, so a
Ctrl-C in the terminal reaches only us and we stop the children ourselves; and each asks the
kernel to SIGTERM it should we die without running any of that (SIGKILL).

`cluster()` is the whole system on loopback: a controller and the workers asked for, started
with free ports and a state folder, returned once the controller lists every worker as alive.

Example:
    with cluster(run_dir, [WorkerSpec("cpu"), WorkerSpec("emu", "emulated", devices=4)]) as c:
        with c.client() as admin:
            admin.upload(blob, "mlp")
        print(c.status())
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import zmq

from clockwork.bench.progress import say
from clockwork.client import Client, ClockworkError
from clockwork.common.affinity import LaneCores

DEFAULT_GRACE_S = 5.0  # a daemon drains and closes its sockets well within this
TAIL_LINES = 20
T = TypeVar("T")


class ProcessDied(RuntimeError):
    """A supervised process exited while it was expected to run."""

    def __init__(self, name: str, returncode: int, tail: str):
        super().__init__(f"{name} exited with status {returncode}; last lines of its log:\n{tail}")
        self.name = name
        self.returncode = returncode
        self.tail = tail


class NotReady(TimeoutError):
    """A condition did not hold in time; the message carries every process's log tail."""


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        return tail_file(self.log_path, lines)


def tail_file(path: Path, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the atexit and signal paths still apply


# Looked up here, in the parent: a forked child of a threaded process must not dlopen.
_PRCTL = _find_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the parent dies, the one
    guarantee left when we are SIGKILLed and no handler of ours runs."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class ProcessGroup:
    def __init__(self, log_dir: str | Path, grace_s: float = DEFAULT_GRACE_S):
        self.log_dir = Path(log_dir)
        self.grace_s = grace_s
        self.procs: list[Proc] = []
        self._expected_exit: set[str] = set()
        self._old_handlers: dict[int, Any] = {}
        self._closed = False

    # -- lifecycle of the group

    def __enter__(self) -> "ProcessGroup":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop_all)
        if threading.current_thread() is threading.main_thread():
            # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps
            # that, so without our handler such a run could not be stopped with kill -INT.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[signum] = signal.signal(signum, _interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers.clear()
            atexit.unregister(self.stop_all)

    # -- children

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> Proc:
        if any(p.name == name for p in self.procs):
            raise ValueError(f"a process named {name!r} was already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "wb")
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONUNBUFFERED"] = "1"  # a crash's last words reach the log
        try:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=child_env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent,
            )
        except BaseException:
            log_file.close()
            raise
        proc = Proc(name, list(argv), popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def get(self, name: str) -> Proc:
        for proc in self.procs:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def expect_exit(self, name: str) -> None:
        """`check` will not complain when this process exits (a one-shot helper)."""
        self._expected_exit.add(name)

    def check(self) -> None:
        """Raise ProcessDied for the first process that exited unexpectedly."""
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None and proc.name not in self._expected_exit:
                raise ProcessDied(proc.name, code, proc.tail())

    def tails(self, lines: int = TAIL_LINES) -> str:
        parts = []
        for proc in self.procs:
            state = "running" if proc.alive() else f"exited with status {proc.popen.returncode}"
            parts.append(f"--- {proc.name} (pid {proc.pid}, {state}), {proc.log_path}:\n{proc.tail(lines)}")
        return "\n".join(parts)

    def wait_until(self, predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
        """Poll `predicate` until it returns something truthy; fail fast if a process dies."""
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            self.check()
            try:
                value = predicate()
                if value:
                    return value
            except (zmq.ZMQError, TimeoutError, ClockworkError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                why = f" (last error: {last_error})" if last_error else ""
                raise NotReady(f"timed out after {timeout_s:g} s waiting for {what}{why}\n{self.tails()}")
            time.sleep(interval_s)

    def stop_all(self) -> None:
        """SIGTERM every running child, wait up to the grace period, SIGKILL the rest."""
        if self._closed:
            return
        self._closed = True
        with _signals_ignored():
            running = [p for p in reversed(self.procs) if p.alive()]
            for proc in running:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            for proc in running:
                try:
                    proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for proc in self.procs:
                # The whole session: a daemon's own children go too.
                _signal_group(proc, signal.SIGKILL, even_if_exited=True)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
                if proc._log_file is not None:
                    proc._log_file.close()
                    proc._log_file = None


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While stopping children, a second Ctrl-C must not abandon them half-way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _signal_group(proc: Proc, signum: int, even_if_exited: bool = False) -> None:
    if not even_if_exited and not proc.alive():
        return
    try:
        os.killpg(proc.pid, signum)  # start_new_session made the child its group's leader
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------------------- the cluster


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """A GET of `url` answered 200 within `timeout_s` (a daemon's health endpoint, polled)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status == 200
    except OSError:
        return False


def _listen_ports() -> range:
    """Ports outside the kernel's ephemeral range: a port the OS handed out as free (bind to 0)
    comes from that range, and any connection made before a daemon binds it (a worker's, a
    client's) may take it as its local port, so the daemon fails with 'Address already in use'
    (CI, stop 46). Outside the range only a listener can hold a port, and the check sees it."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(10000, low) if low > 12000 else range(high + 1, 65536)


_PORTS = _listen_ports()
_next_port = random.randrange(len(_PORTS))  # processes that pick at once start apart


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody holds now, outside the ephemeral range; successive calls in a process
    never repeat one until the range wraps, so the two ports a cluster asks for differ."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port % len(_PORTS)]
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in {_PORTS.start}-{_PORTS.stop - 1}")


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    runtime: str = "onnxruntime"  # onnxruntime | emulated | tensorrt
    devices: int = 1
    device_memory_mb: int | None = None  # None: the worker's default
    extra_args: tuple[str, ...] = ()


@dataclass
class Cluster:
    client_endpoint: str  # where clients (and the load generator) connect
    worker_endpoint: str
    state_dir: Path
    group: ProcessGroup
    workers: tuple[WorkerSpec, ...]

    def check(self) -> None:
        self.group.check()

    def client(self, timeout_s: float = 30.0) -> Client:
        """A blocking client for admin calls (upload, status); close it (or use `with`)."""
        return Client(self.client_endpoint, timeout_s=timeout_s)

    def status(self, timeout_s: float = 5.0) -> dict:
        with self.client(timeout_s) as admin:
            return admin.status()


def controller_argv(state_dir: Path, client_ep: str, worker_ep: str, log_level: str,
                    settings: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", "clockwork.controller.main", "--state-dir", str(state_dir),
            "--client-endpoint", client_ep, "--worker-endpoint", worker_ep, "--log-level", log_level]
    for item in settings:
        argv += ["--set", item]
    return argv


def worker_argv(spec: WorkerSpec, worker_ep: str, log_level: str) -> list[str]:
    argv = [sys.executable, "-m", "clockwork.worker.main", "--controller", worker_ep, "--runtime", spec.runtime,
            "--devices", str(spec.devices), "--name", spec.name, "--log-level", log_level]
    if spec.device_memory_mb is not None:
        argv += ["--device-memory-mb", str(spec.device_memory_mb)]
    return argv + list(spec.extra_args)


def workers_alive(status: Mapping, names: Sequence[str]) -> bool:
    listed = {w.get("name"): w for w in status.get("workers", []) if isinstance(w, Mapping)}
    return all(name in listed and listed[name].get("alive", False) for name in names)


def start_gateway(group: ProcessGroup, controller: str, name: str = "gateway", grpc: bool = False,
                  extra: Sequence[str] = ()) -> dict[str, str]:
    """A `clockwork-gateway` for `controller` on free loopback ports, started in `group` and
    answering /v2/health/live; its HOST:PORT by protocol ("http", and "grpc" when asked)."""
    addresses = {"http": f"127.0.0.1:{free_port()}"}
    argv = [sys.executable, "-m", "clockwork.client.gateway", "--listen", addresses["http"], "--controller", controller,
            "--default-slo-ms", "1000", "--log-level", "warning", *extra]
    if grpc:
        addresses["grpc"] = f"127.0.0.1:{free_port()}"
        argv += ["--grpc-listen", addresses["grpc"]]
    group.start(name, argv)
    group.wait_until(lambda: http_ok(f"http://{addresses['http']}/v2/health/live"), 30, f"{name} to answer")
    return addresses


@contextlib.contextmanager
def cluster(run_dir: str | Path, workers: Sequence[WorkerSpec], *, log_level: str = "warning",
            controller_settings: Sequence[str] = (), ready_timeout_s: float = 60.0,
            grace_s: float = DEFAULT_GRACE_S, launcher: Callable[[str], Sequence[str]] | None = None
            ) -> Iterator[Cluster]:
    """A controller plus `workers` on loopback, state in `run_dir`/state, logs in `run_dir`/logs.

    Yields once the controller's STATUS lists every worker as alive; every process is stopped
    when the block ends, however it ends. `controller_settings` are `scheduler.key=value` items;
    `launcher` gives the argv prefix that starts the process of a name ("controller",
    "worker-NAME"), such as a profiler's.
    """
    def argv(name: str, command: list[str]) -> list[str]:
        return [*launcher(name), *command] if launcher else command

    run_dir = Path(run_dir)
    state_dir = run_dir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    client_ep = f"tcp://127.0.0.1:{free_port()}"
    worker_ep = f"tcp://127.0.0.1:{free_port()}"
    with ProcessGroup(run_dir / "logs", grace_s=grace_s) as group:
        group.start("controller", argv("controller", controller_argv(state_dir, client_ep, worker_ep, log_level,
                                                                     controller_settings)))
        for spec in workers:
            group.start(f"worker-{spec.name}", argv(f"worker-{spec.name}", worker_argv(spec, worker_ep, log_level)))
        names = [spec.name for spec in workers]
        with Client(client_ep, timeout_s=1.0) as admin:
            group.wait_until(lambda: workers_alive(admin.status(), names), ready_timeout_s,
                             f"the controller to list workers {', '.join(names) or '(none)'} as alive",
                             interval_s=0.2)
        yield Cluster(client_ep, worker_ep, state_dir, group, tuple(workers))


@contextlib.contextmanager
def kept_off_lanes(admin: Client) -> Iterator[set[int] | None]:
    """This process (a load generator) kept off the cores the EXEC lanes of this host hold, as
    the controller and the gateway keep off them (common/affinity.py), until the block ends;
    yields the cores it runs on (None: nothing to keep off). A client on a lane's core lengthens
    EXECs as any other process there does: in `versus` at 2x a CNN's capacity, kept off, 2, 1
    and 8 of ~5,000 EXECs ran over 3x their median against 16, 5 and 9, and 31-54 admitted
    requests were given up once queued against 53-67. Clients of a serving host run elsewhere."""
    lanes = LaneCores()
    try:
        yield lanes.follow(admin.status(models_limit=0))
    finally:
        lanes.left("controller")


def run_in_temp_dir(prefix: str, keep: bool, what: str, body: Callable[[Path], int]) -> int:
    """`body(run_dir)`'s exit status, with a new temporary folder as `run_dir` for the daemons'
    state and logs, removed afterwards unless `keep`.

    A failure of the system (a daemon died or never got ready, a request was refused, a wait
    timed out, a step the system could not carry out: RuntimeError) ends the command with
    status 1 and "<what> failed: why", and keeps the folder: the daemons' logs in it explain
    the failure.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return body(run_dir)
    except (ProcessDied, NotReady, ClockworkError, TimeoutError, RuntimeError) as exc:
        keep = True
        say(f"{what} failed: {exc}")
        return 1
    finally:
        if keep:
            say(f"state and logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
