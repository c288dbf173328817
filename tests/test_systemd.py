"""The systemd units and example configuration in systemd/: what they promise, checked as text
(always), and by `systemd-analyze verify` (where it is installed)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from clockwork.common import config

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
INSTALLED_BIN = "/opt/clockwork/venv/bin/"  # where docs/operations.md installs the console scripts


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name", ["clockwork-controller.service", "clockwork-worker@.service"])
def test_services_are_notify_watched_restarted_and_hardened(name):
    service = unit(name)["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] and service["Restart"] == "on-failure"
    assert service["ExecStart"].startswith(INSTALLED_BIN) and "--config /etc/clockwork/" in service["ExecStart"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("LimitMEMLOCK", "infinity"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")):
        assert service[key] == value, key
    assert service["StateDirectory"].startswith("clockwork")
    assert unit(name)["Install"]["WantedBy"] == "clockwork.target"
    assert unit(name)["Unit"]["PartOf"] == "clockwork.target"


def test_gpu_workers_still_see_the_gpus():
    service = unit("clockwork-worker@.service")["Service"]
    assert service["PrivateDevices"] == "no"
    assert "DevicePolicy" not in service and "DeviceAllow" not in service
    assert "MemoryDenyWriteExecute" not in service  # CUDA JIT-compiles kernels
    assert "%i" in service["ExecStart"] and "%i" in service["StateDirectory"]
    assert unit("clockwork-controller.service")["Service"]["PrivateDevices"] == "yes"


def test_example_configuration_loads():
    controller = config.load(config.ControllerConfig, "controller", UNITS / "controller.toml")
    worker = config.load(config.WorkerConfig, "worker", UNITS / "worker-gpu0.toml")
    assert controller.secret_key_file and controller.worker_keys_dir and controller.admin_keys_dir
    assert controller.state_dir == "/var/lib/clockwork" and controller.metrics_address
    assert controller.request_log_path.startswith("/var/log/clockwork/")  # LogsDirectory= of the unit
    assert worker.secret_key_file and worker.controller_public_key_file and worker.runtime == "tensorrt"
    assert worker.engine_cache_dir.startswith("/var/cache/clockwork-worker/")  # CacheDirectory= of the unit
    assert worker.metrics_address != controller.metrics_address
    assert worker.keep_cores_awake and controller.keep_cores_awake


def test_the_udev_rule_lets_the_service_group_hold_a_cpu_latency_request():
    rule = (UNITS / "60-clockwork-cpu-latency.rules").read_text()
    [line] = [l for l in rule.splitlines() if l and not l.startswith("#")]
    assert 'KERNEL=="cpu_dma_latency"' in line and 'GROUP="clockwork"' in line and 'MODE="0660"' in line
    assert unit("clockwork-worker@.service")["Service"]["Group"] == "clockwork"  # the group the rule names


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)")
def test_systemd_analyze_verify(tmp_path):
    """verify checks every directive and that ExecStart is executable, so the units are copied
    with ExecStart pointing at stand-in executables (the real ones live on the GPU host)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for script in ("clockwork-controller", "clockwork-worker"):
        (bin_dir / script).write_text("#!/bin/sh\n")
        (bin_dir / script).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for path in [*UNITS.glob("*.service"), *UNITS.glob("*.target")]:
        (units / path.name).write_text(path.read_text().replace(INSTALLED_BIN, f"{bin_dir}/"))
    shutil.copy(units / "clockwork-worker@.service", units / "clockwork-worker@gpu0.service")
    names = ["clockwork-controller.service", "clockwork-worker@gpu0.service", "clockwork.target"]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(units / n) for n in names]],
                          capture_output=True, text=True, timeout=60, cwd=units)
    # verify exits 0 even for unknown keys and bad values, so any complaint about our files fails
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if str(tmp_path) in line or any(n.split(".")[0] in line for n in names)]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr
