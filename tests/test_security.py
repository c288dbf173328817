"""Keys, allow-lists and roles: a controller and workers with CURVE keys on loopback, and the
loopback rule when no keys are configured."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clockwork.bench.models import profile_json
from clockwork.bench.procs import ProcessGroup, free_port, workers_alive
from clockwork.client import Client, DeadlineExceeded, RequestError, cli
from clockwork.common import security
from clockwork.common.security import SecurityError
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- without processes


def test_generate_writes_a_public_and_a_private_file(tmp_path, capsys):
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "alice"]) == 0
    public, secret = tmp_path / "k" / "alice.key", tmp_path / "k" / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    pub, sec = security.load_secret(secret)
    assert security.load_public(public) == pub and len(pub) == len(sec) == 40
    assert pub.decode() in capsys.readouterr().out
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "alice"]) == 4  # no overwrite
    with pytest.raises(SecurityError):
        security.load_secret(public)  # a public file is not a key pair
    with pytest.raises(SecurityError):
        security.generate(tmp_path, "../escape")


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:5555", True),
    ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://127.0.0.1:1;10.0.0.2:5556", False),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.1.2.3:5556", False),
    ("tcp://eth0:5555", False), ("tcp://ctl.example.com:5556", False), ("garbage", False),
])
def test_loopback_endpoints(endpoint, local):
    assert security.is_loopback(endpoint) is local


def test_settings_that_cannot_work_are_refused(tmp_path):
    security.generate(tmp_path, "ctl")
    secret = str(tmp_path / "ctl.key_secret")
    with pytest.raises(SecurityError, match="worker_keys_dir"):
        security.controller_keys(secret, str(tmp_path), "", "")
    with pytest.raises(SecurityError, match="no client"):
        security.controller_keys(secret, "", "", str(tmp_path))
    with pytest.raises(SecurityError, match="secret_key_file"):
        security.controller_keys("", str(tmp_path), "", "")
    with pytest.raises(SecurityError, match="does not exist"):
        security.controller_keys(secret, str(tmp_path / "nope"), "", str(tmp_path))
    with pytest.raises(SecurityError, match="both"):
        security.client_keys(secret, "")
    with pytest.raises(SecurityError, match="loopback only"):
        security.require_loopback({"metrics_address": "0.0.0.0:9464"})
    security.require_loopback({"metrics_address": "127.0.0.1:9464", "client_endpoint": "tcp://127.0.0.1:1"})


def test_allow_lists_see_keys_added_later(tmp_path):
    allowed = tmp_path / "clients"
    allowed.mkdir()
    keys = security.AllowList([str(allowed)])
    assert keys.keys() == frozenset()
    public, _ = security.generate(tmp_path, "late")
    os.replace(public, allowed / "late.key")
    assert security.load_public(allowed / "late.key") in keys


def test_without_keys_daemons_refuse_non_loopback_addresses(tmp_path):
    controller = subprocess.run([sys.executable, "-m", "clockwork.controller.main", "--state-dir", str(tmp_path / "s"),
                                 "--client-endpoint", "tcp://0.0.0.0:0"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert controller.returncode == 1 and "loopback only" in controller.stderr
    worker = subprocess.run([sys.executable, "-m", "clockwork.worker.main", "--controller", "tcp://10.0.0.1:5556",
                             "--runtime", "emulated"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert worker.returncode == 2 and "loopback only" in worker.stderr


# ----------------------------------------------------------------------------- with processes


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A keyed controller with one allowed worker, one admin and one client key, plus keys that
    are not allowed anywhere; yields (endpoints, keys folder, process group)."""
    root = tmp_path_factory.mktemp("security")
    keys = root / "keys"
    for folder in ("clients", "admins", "workers"):
        (keys / folder).mkdir(parents=True)
    for name in ("controller", "impostor-controller", "worker", "stranger-worker", "admin", "alice", "mallory"):
        security.generate(keys, name)
    for name, folder in (("worker", "workers"), ("admin", "admins"), ("alice", "clients")):
        os.replace(keys / f"{name}.key", keys / folder / f"{name}.key")
    client_ep, worker_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with ProcessGroup(root / "logs") as group:
        group.start("controller", [
            sys.executable, "-m", "clockwork.controller.main", "--state-dir", str(root / "state"), "--client-endpoint", client_ep,
            "--worker-endpoint", worker_ep, "--log-level", "info",
            "--set", f'secret_key_file="{keys / "controller.key_secret"}"',
            "--set", f'client_keys_dir="{keys / "clients"}"', "--set", f'admin_keys_dir="{keys / "admins"}"',
            "--set", f'worker_keys_dir="{keys / "workers"}"'])
        for name, worker_key, controller_key in (("good", "worker", "controller"),
                                                 ("wrong-server-key", "worker", "impostor-controller"),
                                                 ("unlisted", "stranger-worker", "controller")):
            group.start(f"worker-{name}", [
                sys.executable, "-m", "clockwork.worker.main", "--controller", worker_ep, "--runtime", "emulated",
                "--name", name, "--log-level", "info",
                "--set", f'secret_key_file="{keys / (worker_key + ".key_secret")}"',
                "--set", f'controller_public_key_file="{keys / (controller_key + ".key")}"'])
        with admin_client(client_ep, keys) as admin:
            group.wait_until(lambda: workers_alive(admin.status(), ["good"]), 60, "the keyed worker to join")
            admin.upload(profile_json(), "resnet", format="profile")
        yield client_ep, keys, group


def admin_client(endpoint: str, keys, name: str = "admin", timeout_s: float = 10) -> Client:
    return Client(endpoint, timeout_s=timeout_s, key_file=str(keys / f"{name}.key_secret"),
                  server_key_file=str(keys / "controller.key"))


def test_a_client_without_an_allowed_key_cannot_connect_or_infer(secured):
    endpoint, keys, _ = secured
    x = {"data": np.zeros((1, 16), np.float32)}
    with admin_client(endpoint, keys, "mallory", timeout_s=1) as mallory:
        with pytest.raises(DeadlineExceeded):
            mallory.status()
        with pytest.raises(DeadlineExceeded):
            mallory.infer("resnet", x, slo_ms=100)
    with Client(endpoint, timeout_s=1) as plain:  # no CURVE at all
        with pytest.raises(DeadlineExceeded):
            plain.list()
    with Client(endpoint, timeout_s=1, key_file=str(keys / "admin.key_secret"),  # right key, wrong server
                server_key_file=str(keys / "impostor-controller.key")) as fooled:
        with pytest.raises(DeadlineExceeded):
            fooled.list()


def test_a_non_admin_key_cannot_upload_or_remove_but_may_infer(secured):
    endpoint, keys, _ = secured
    with admin_client(endpoint, keys, "alice") as alice:
        with pytest.raises(RequestError) as info:
            alice.upload(profile_json(), "mine", format="profile")
        assert info.value.status is Status.FORBIDDEN and "admin" in info.value.detail
        with pytest.raises(RequestError) as info:
            alice.remove("resnet")
        assert info.value.status is Status.FORBIDDEN
        assert [m["name"] for m in alice.list()] == ["resnet"]
        result = alice.infer("resnet", {"data": np.zeros((1, 16), np.float32)}, slo_ms=200)
        assert result.outputs["prob"].shape == (1, 10)


def test_keys_come_from_the_environment_too(secured, monkeypatch, capsys):
    endpoint, keys, _ = secured
    monkeypatch.setenv(security.KEY_ENV, str(keys / "alice.key_secret"))
    monkeypatch.setenv(security.SERVER_KEY_ENV, str(keys / "controller.key"))
    assert cli.main(["--endpoint", endpoint, "--timeout", "10", "ls"]) == 0
    assert "resnet" in capsys.readouterr().out


def test_workers_with_the_wrong_controller_key_or_an_unlisted_key_are_refused(secured):
    endpoint, keys, group = secured
    group.wait_until(lambda: "controller_public_key_file" in group.get("worker-wrong-server-key").tail()
                     and "refused a key" in group.get("controller").tail(100), 30,
                     "both refused workers to have tried to join")
    with admin_client(endpoint, keys) as admin:
        names = [w["name"] for w in admin.status()["workers"]]
        assert names == ["good"]
        assert admin.list()[0]["prepared_on"] == ["good"]
    group.check()  # the refused workers keep trying; nobody crashed
    # ...and each says what to check, once
    assert "controller_public_key_file" in group.get("worker-wrong-server-key").tail()
    assert "worker_keys_dir" in group.get("worker-unlisted").tail()
    assert "refused a key" in group.get("controller").tail(100)
