"""systemd's service notification protocol (sd_notify), spoken directly: no libsystemd.

A `Type=notify` service tells systemd its state by sending datagrams of `KEY=VALUE` lines to the
AF_UNIX socket named in $NOTIFY_SOCKET (a path, or an abstract name written with a leading "@").
The daemons use four messages:

    READY=1            startup is complete (sockets bound; models prepared - see each daemon)
    WATCHDOG=1         "still healthy"; systemd kills and restarts us when these stop for
                       WatchdogSec (it tells us the interval in $WATCHDOG_USEC)
    STATUS=...         one line for `systemctl status`
    STOPPING=1         shutdown has begun

Rules: the watchdog is fed by the daemon's own loop, only when what it guards is healthy (never
by a timer thread, which would keep a wedged daemon alive), at half the interval systemd asked
for. Outside systemd (no $NOTIFY_SOCKET) every call is a cheap no-op, and a failed send is
ignored: notification must never take a daemon down.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping, MutableMapping

NS_PER_US = 1000


def socket_address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET as an address for socket.sendto: "@name" is the abstract name "\\0name"."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval_ns(env: Mapping[str, str], pid: int) -> int:
    """How often to ping (half of $WATCHDOG_USEC), or 0 when no watchdog is asked of this process.
    $WATCHDOG_PID, when set, names the process the watchdog is meant for."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return 0
    return int(usec) * NS_PER_US // 2


class Notifier:
    """Speaks to systemd for one daemon. Build it with `from_env()`; call `tick()` from the loop.

    tick(now_ns, ready=..., healthy=..., status=...) sends READY=1 the first time `ready` holds,
    WATCHDOG=1 whenever a ping is due and `healthy` holds, and STATUS= when the text changed
    (at most once per ping interval, so a fast loop never floods systemd).
    """

    def __init__(self, address: str | bytes | None, watchdog_ns: int = 0):
        self.address = address
        self.watchdog_ns = watchdog_ns  # ping interval; 0: no watchdog
        self.ready_sent = False
        self._sock: socket.socket | None = None
        self._next_ping_ns = 0
        self._status = ""
        self._next_status_ns = 0

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        """Read $NOTIFY_SOCKET and $WATCHDOG_USEC, and remove them from `env` (os.environ by
        default) so that no child process we might start mistakes itself for the service."""
        env = os.environ if env is None else env
        name = env.pop("NOTIFY_SOCKET", "")
        watchdog = watchdog_interval_ns(env, os.getpid() if pid is None else pid)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        return cls(socket_address(name) if name else None, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of KEY=VALUE lines; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False  # systemd went away or the socket is full: never fatal for us

    def ready(self, status: str = "") -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def next_due_ns(self, now_ns: int) -> int:
        """When the loop must call tick() again at the latest (far away without a watchdog)."""
        return self._next_ping_ns if self.watchdog_ns else now_ns + 3600 * 10**9

    def tick(self, now_ns: int, *, ready: bool = False, healthy: bool = True, status: str = "") -> None:
        if self.address is None:
            return
        if ready and not self.ready_sent:
            self.ready(status)
            self._status = status
        fields = []
        if self.watchdog_ns and healthy and now_ns >= self._next_ping_ns:
            fields.append("WATCHDOG=1")
            self._next_ping_ns = now_ns + self.watchdog_ns
        if status and status != self._status and now_ns >= self._next_status_ns:
            fields.append(f"STATUS={status}")
            self._status = status
            self._next_status_ns = now_ns + max(self.watchdog_ns, 1_000_000_000)
        if fields:
            self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
