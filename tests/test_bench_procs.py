"""The process supervisor: children are stopped, crashes are reported with their last words."""

import os
import shutil
import signal
import socket
import sys
import time

import pytest

from clockwork.bench import procs
from clockwork.bench.procs import NotReady, ProcessDied, ProcessGroup, free_port, run_in_temp_dir, tail_file, workers_alive

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); our Popen.wait reaped it, so a live pid means alive.
    return False


def test_stop_all_terminates_running_children(tmp_path):
    with ProcessGroup(tmp_path / "logs", grace_s=2) as group:
        proc = group.start("sleeper", SLEEPER)
        group.wait_until(lambda: "up" in proc.tail(), 10, "the child to start")
        assert proc.alive()
        group.check()
    assert not proc.alive()
    assert proc.popen.returncode == -signal.SIGTERM
    assert _gone(proc.pid)


def test_child_ignoring_sigterm_is_killed_after_grace(tmp_path):
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)"]
    group = ProcessGroup(tmp_path / "logs", grace_s=0.3)
    with group:
        proc = group.start("stubborn", stubborn)
        group.wait_until(lambda: "up" in proc.tail(), 10, "the child to start")
        started = time.monotonic()
    assert proc.popen.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_stop_on_exception_inside_block(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ProcessGroup(tmp_path / "logs", grace_s=2) as group:
            proc = group.start("sleeper", SLEEPER)
            raise RuntimeError("boom")
    assert not proc.alive()


def test_sigterm_to_us_becomes_keyboard_interrupt_and_stops_children(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with ProcessGroup(tmp_path / "logs", grace_s=2) as group:
            proc = group.start("sleeper", SLEEPER)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once by the handler
    assert not proc.alive()
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is gone again


def test_crashing_child_is_reported_with_stderr_tail(tmp_path):
    crasher = [sys.executable, "-c", "import sys; print('line one'); sys.stderr.write('fatal: no config\\n'); sys.exit(3)"]
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("crasher", crasher)
        with pytest.raises(ProcessDied) as info:
            group.wait_until(lambda: False, 10, "something that never happens")
    assert info.value.name == "crasher" and info.value.returncode == 3
    assert "fatal: no config" in str(info.value) and "line one" in info.value.tail


def test_timeout_message_carries_every_tail(tmp_path):
    with ProcessGroup(tmp_path / "logs") as group:
        proc = group.start("sleeper", SLEEPER)
        group.wait_until(lambda: "up" in proc.tail(), 10, "the child to start")
        with pytest.raises(NotReady) as info:
            group.wait_until(lambda: False, 0.2, "the impossible")
    assert "the impossible" in str(info.value) and "sleeper" in str(info.value) and "up" in str(info.value)


def test_expected_exit_is_not_a_crash_and_names_are_unique(tmp_path):
    with ProcessGroup(tmp_path / "logs") as group:
        proc = group.start("oneshot", [sys.executable, "-c", "pass"])
        group.expect_exit("oneshot")
        proc.popen.wait(10)
        group.check()
        with pytest.raises(ValueError):
            group.start("oneshot", [sys.executable, "-c", "pass"])


def test_free_ports_lie_outside_the_ephemeral_range_and_skip_a_held_one(monkeypatch):
    """A daemon binds the port after other processes connected somewhere: a port the kernel could
    give such a connection as its local port makes it fail with 'Address already in use'."""
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and not any(low <= port <= high for port in ports)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[0]))
        held.listen()
        monkeypatch.setattr(procs, "_next_port", procs._PORTS.index(ports[0]))
        assert free_port() != ports[0]


def test_helpers(tmp_path):
    assert tail_file(tmp_path / "missing.log") == "(no log)"
    log = tmp_path / "x.log"
    log.write_text("\n".join(str(i) for i in range(100)))
    assert tail_file(log, 3) == "97\n98\n99"
    status = {"workers": [{"name": "a", "alive": True}, {"name": "b", "alive": False}]}
    assert workers_alive(status, ["a"]) and not workers_alive(status, ["a", "b"])
    assert not workers_alive(status, ["c"]) and workers_alive({}, [])


def test_run_folder_is_removed_after_a_clean_run_and_kept_after_a_failure(capsys):
    folders = []

    def body(fails: Exception | None):
        def in_folder(run_dir):
            folders.append(run_dir)
            assert run_dir.is_dir()
            if fails is not None:
                raise fails
            return 7
        return in_folder

    assert run_in_temp_dir("clockwork-test-", False, "test", body(None)) == 7
    assert not folders[-1].exists()
    assert run_in_temp_dir("clockwork-test-", False, "test", body(NotReady("the daemons are late"))) == 1
    assert folders[-1].is_dir()
    assert f"test failed: the daemons are late\nstate and logs kept in {folders[-1]}" in capsys.readouterr().err
    with pytest.raises(ValueError):  # not a failure of the system: raised, and nothing kept
        run_in_temp_dir("clockwork-test-", False, "test", body(ValueError("a bug")))
    assert not folders[-1].exists()
    assert run_in_temp_dir("clockwork-test-", True, "test", body(None)) == 7  # --keep
    assert folders[-1].is_dir()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
