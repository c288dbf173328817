"""sd_notify against a datagram socket standing in for systemd: the protocol by hand, then the
real daemons telling it READY, WATCHDOG, STATUS and STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid

import pytest

from clockwork.bench.procs import ProcessGroup, free_port
from clockwork.common.config import WorkerConfig
from clockwork.common.schema import Prepared
from clockwork.common.status import Status
from clockwork.common.sdnotify import Notifier, socket_address, watchdog_interval_ns
from clockwork.worker.metrics import WorkerTelemetry

pytestmark = pytest.mark.timeout(90)
S = 1_000_000_000


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, path: str):
        self.name = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(path))
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout_s: float = 0.2) -> list[dict[str, str]]:
        """Every datagram that arrives within timeout_s, parsed into {KEY: VALUE}."""
        self.sock.settimeout(timeout_s)
        got = []
        try:
            while True:
                data = self.sock.recv(4096).decode()
                got.append(dict(line.split("=", 1) for line in data.split("\n") if "=" in line))
        except socket.timeout:
            pass
        self.messages += got
        return got

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in self.receive(0.1):
                if key in msg and (value is None or msg[key] == value):
                    return msg
        raise AssertionError(f"no {key}={value or '*'} within {timeout_s} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    yield fake
    fake.close()


def test_ready_watchdog_status_and_stopping_reach_the_socket(systemd):
    n = Notifier(systemd.name, watchdog_ns=1 * S)
    n.tick(0, ready=False, healthy=True, status="starting")
    assert systemd.receive() == [{"WATCHDOG": "1", "STATUS": "starting"}]  # not ready yet: no READY
    n.tick(1, ready=True, status="up")
    assert systemd.receive() == [{"READY": "1", "STATUS": "up"}]
    n.tick(2, ready=True, status="up")
    assert systemd.receive() == []  # nothing due, nothing changed
    n.tick(1 * S + 5, ready=True, healthy=False, status="up")
    assert systemd.receive() == []  # due, but unhealthy: the watchdog starves
    n.tick(1 * S + 6, ready=True, healthy=True, status="up")
    assert systemd.receive() == [{"WATCHDOG": "1"}]
    n.stopping()
    assert systemd.receive() == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_abstract_socket_names_and_environment(tmp_path):
    name = f"@clockwork-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(name)
    try:
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "3000000", "OTHER": "x"}
        n = Notifier.from_env(env, pid=42)
        assert env == {"OTHER": "x"}  # children we start will not think they are the service
        assert n.watchdog_ns == 1_500_000_000  # half the interval systemd asked for
        n.ready("hello")
        assert fake.receive() == [{"READY": "1", "STATUS": "hello"}]
    finally:
        fake.close()
    assert watchdog_interval_ns({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "7"}, pid=42) == 0  # not for us
    assert watchdog_interval_ns({"WATCHDOG_USEC": "junk"}, pid=42) == 0
    outside = Notifier.from_env({}, pid=1)
    assert not outside.enabled and not outside.send("READY=1")  # outside systemd: a no-op


def test_a_vanished_systemd_never_hurts(tmp_path):
    n = Notifier(str(tmp_path / "nobody-listens"), watchdog_ns=S)
    assert n.send("READY=1") is False
    n.tick(0, ready=True, status="x")  # no exception


def test_worker_readiness_waits_for_welcome_and_prepares_and_watchdog_for_healthy_lanes(systemd):
    t = WorkerTelemetry(WorkerConfig(controller="tcp://127.0.0.1:1"), Notifier(systemd.name, watchdog_ns=S))
    t.tick(0, connected=False, healthy=True, devices=[], models=0)
    assert systemd.receive() == [{"WATCHDOG": "1", "STATUS": "waiting for the controller at tcp://127.0.0.1:1"}]
    t.on_prepare()
    t.tick(1, connected=True, healthy=True, devices=[], models=0)
    assert systemd.receive() == []  # welcomed, but a PREPARE is in progress: not ready
    t.on_sent((Prepared(model_id="m", status=Status.OK), 1), 2)
    t.tick(S + 2, connected=True, healthy=False, devices=[], models=1)
    assert systemd.receive() == [{"READY": "1", "STATUS": "serving 1 models"}]  # no WATCHDOG: unhealthy


def test_real_controller_and_worker_notify(tmp_path):
    controller_sd = FakeSystemd(str(tmp_path / "controller.sock"))
    worker_sd = FakeSystemd(str(tmp_path / "worker.sock"))
    client_ep, worker_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            env = {**os.environ, "NOTIFY_SOCKET": controller_sd.name, "WATCHDOG_USEC": "400000"}
            controller = group.start("controller", [
                sys.executable, "-m", "clockwork.controller.main", "--state-dir", str(tmp_path / "state"),
                "--client-endpoint", client_ep, "--worker-endpoint", worker_ep, "--log-level", "warning"], env=env)
            assert controller_sd.wait_for("READY", "1")
            pings = [controller_sd.wait_for("WATCHDOG", "1", 5) for _ in range(3)]  # every 0.2 s
            assert len(pings) == 3
            env = {**os.environ, "NOTIFY_SOCKET": worker_sd.name, "WATCHDOG_USEC": "2000000"}
            worker = group.start("worker", [
                sys.executable, "-m", "clockwork.worker.main", "--controller", worker_ep, "--runtime", "emulated",
                "--name", "w0", "--log-level", "warning"], env=env)
            ready = worker_sd.wait_for("READY", "1")
            assert ready.get("STATUS", "").startswith("serving")
            worker_sd.wait_for("WATCHDOG", "1", 5)
            status = controller_sd.wait_for("STATUS", timeout_s=5)["STATUS"]
            assert "workers" in status and "models" in status
            for proc, fake in ((worker, worker_sd), (controller, controller_sd)):
                proc.popen.send_signal(signal.SIGTERM)
                assert proc.popen.wait(timeout=15) == 0
                assert fake.wait_for("STOPPING", "1", 5)
    finally:
        controller_sd.close()
        worker_sd.close()
