"""Idle cores that wake in microseconds: a CPU latency request held for a daemon's life.

An idle core sleeps in an idle state, and the message that wakes it waits out the state's exit.
Below capacity every hop of a request finds its core idle: the client's reply, the controller's
read, the worker's loop, the EXEC lane, and the way back. On the project's 2-core VM (cpuidle
driver haltpoll) a ZeroMQ round trip 10 ms after the last took 0.44 ms at p50 with the cores
free to halt and 0.15 ms with them kept polling, and a lone request through this system up to
0.5 ms less (`clockwork-bench versus`, docs/benchmarks.md): time that is neither the model's nor
the plan's, and varies with how deep each core slept.

Linux's interface for it is the CPU latency QoS request: write the most microseconds a wake-up
may take to /dev/cpu_dma_latency and keep the file open; the kernel keeps idle cores in states
that wake within it until the file is closed, which the process's exit does too. 0 keeps them
polling: more power drawn while idle, and on a VM busy vCPUs (`keep_cores_awake = false` where
they are billed by use). It is one request for the whole host, so one daemon holding it serves
every process there. The device belongs to root; for a service user,
systemd/60-clockwork-cpu-latency.rules lets the clockwork group open it (docs/operations.md).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEVICE = "/dev/cpu_dma_latency"


class CpuLatencyRequest:
    """The open request; `close` (or the process's exit) withdraws it."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def hold(max_us: int, log: Any, device: str = DEVICE) -> CpuLatencyRequest | None:
    """Ask that idle cores wake within `max_us` microseconds, for as long as the returned
    request stays open; None (and a log line saying why) where it cannot be asked."""
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # a container, or systemd's PrivateDevices=yes
            fix = "the device is not visible to this process; another daemon on the host may hold the request"
        else:
            fix = "run as root, or install systemd/60-clockwork-cpu-latency.rules (docs/operations.md)"
        log.info("idle cores may wake slowly: no CPU latency request", device=device, reason=exc.strerror,
                 fix=fix + "; keep_cores_awake = false silences this")
        return None
    try:
        os.write(fd, struct.pack("i", max_us))
    except OSError as exc:  # e.g. a value the kernel refuses
        os.close(fd)
        log.warning("CPU latency request refused", device=device, max_us=max_us, reason=exc.strerror)
        return None
    log.info("idle cores kept quick to wake", max_us=max_us)
    return CpuLatencyRequest(fd)


@contextmanager
def held(max_us: int, log: Any, enabled: bool = True) -> Iterator[None]:
    """The request (`hold`) for the length of a `with` block, where `enabled` (a daemon's
    `keep_cores_awake`) asks for it; withdrawn when the block ends, however it ends."""
    request = hold(max_us, log) if enabled else None
    try:
        yield
    finally:
        if request is not None:
            request.close()
