"""The CPU latency request the daemons hold (common/cpu_latency.py): against a file standing in
for /dev/cpu_dma_latency, against the real device where this user may open it, and in a real
worker process."""

from __future__ import annotations

import os
import struct

import pytest

from clockwork.bench.procs import WorkerSpec, cluster, start_gateway
from clockwork.common import cpu_latency
from tests.worker_helpers import WorkerProcess, holds_the_device, wait_until_true

WRITABLE = os.access(cpu_latency.DEVICE, os.W_OK)


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def info(self, event, **fields):
        self.lines.append(("info", event, fields))

    def warning(self, event, **fields):
        self.lines.append(("warning", event, fields))


def test_the_request_is_written_as_the_kernel_reads_it_and_held_until_closed(tmp_path):
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    request = cpu_latency.hold(25, Log(), device=str(device))
    assert request is not None
    assert device.read_bytes() == struct.pack("i", 25)  # a native 32-bit integer, as the kernel takes it
    os.fstat(request.fd)  # still open: closing the file would withdraw the request
    fd = request.fd
    request.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    request.close()  # twice is harmless


def test_a_device_that_cannot_be_opened_is_logged_with_the_fix_and_serving_goes_on(tmp_path):
    log = Log()
    assert cpu_latency.hold(0, log, device=str(tmp_path / "missing" / "cpu_dma_latency")) is None
    [(level, event, fields)] = log.lines
    assert level == "info" and "wake slowly" in event
    assert fields["reason"] and "not visible" in fields["fix"]  # a container, or PrivateDevices=yes
    unwritable = tmp_path / "cpu_dma_latency"
    unwritable.write_bytes(b"")
    unwritable.chmod(0o400)
    if os.access(unwritable, os.W_OK):  # root writes it all the same
        return
    log = Log()
    assert cpu_latency.hold(0, log, device=str(unwritable)) is None
    assert "60-clockwork-cpu-latency.rules" in log.lines[0][2]["fix"]  # not this user's to open


@pytest.mark.skipif(not WRITABLE, reason=f"{cpu_latency.DEVICE} is not writable by this user")
def test_the_real_device_takes_the_request_while_it_is_held():
    def effective_us() -> int:  # reading the device gives the host's current target
        with open(cpu_latency.DEVICE, "rb") as f:
            return struct.unpack("i", f.read(4))[0]

    request = cpu_latency.hold(3, Log())
    assert request is not None
    try:
        assert effective_us() <= 3  # the lowest request wins; another holder may ask for less
    finally:
        request.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("awake", [True, False])
def test_a_worker_holds_the_request_while_it_serves_unless_told_not_to(tmp_path, awake):
    worker = WorkerProcess(tmp_path, "--runtime", "emulated", "--name", f"w-awake-{awake}",
                           "--set", f"keep_cores_awake={str(awake).lower()}")
    try:
        worker.start()
        log = worker.log()
        if not awake:
            assert not holds_the_device(worker.proc.pid) and "idle cores" not in log
        elif WRITABLE:
            assert holds_the_device(worker.proc.pid) and "idle cores kept quick to wake" in log
        else:
            assert not holds_the_device(worker.proc.pid) and "idle cores may wake slowly" in log
    finally:
        worker.close()


@pytest.mark.timeout(180)
def test_the_controller_and_the_gateway_hold_it_too(tmp_path):
    with cluster(tmp_path, [WorkerSpec("w0", "emulated")], log_level="info") as c:
        start_gateway(c.group, c.client_endpoint, extra=["--log-level", "info"])
        for name in ("controller", "gateway"):
            proc = c.group.get(name)
            wait_until_true(lambda: "idle cores" in proc.log_path.read_text(errors="replace"),
                            what=f"the {name} saying whether it holds the request")
            assert holds_the_device(proc.pid) == WRITABLE, name
