"""`clockwork-gateway --processes N`: N gateway processes sharing one port, for when one core's
worth of JSON parsing is not enough.

Each process is a whole gateway (`--process-index K` added to the same arguments): its own event
loop, its own controller connections, its own door and its own /metrics. They all bind the port
with SO_REUSEPORT, so the kernel spreads new connections over them, and a process that dies
takes only its own connections with it. This supervisor starts them, passes SIGTERM/SIGINT on,
and does not restart one that dies (it logs it; the others keep the port): a process manager
that restarts the whole service when it exits (systemd's Restart=) does that, once the last
process is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Sequence


def supervise(argv: Sequence[str], processes: int, log: Any) -> int:
    """Run `processes` gateways with `argv` until they have all exited; 0 if they all stopped
    cleanly, else 1."""
    children = [subprocess.Popen([sys.executable, "-m", "clockwork.client.gateway", *argv, "--process-index", str(k)])
                for k in range(processes)]
    stopping = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    log.info("processes_started", pids=[c.pid for c in children])
    running = {k: c for k, c in enumerate(children)}
    failed = False
    while running:
        for k, child in list(running.items()):
            code = child.poll()
            if code is None:
                continue
            del running[k]
            failed |= code != 0
            if not stopping:
                log.error("process_exited", process=k, pid=child.pid, status=code, still_serving=sorted(running))
        time.sleep(0.1)
    return 1 if failed else 0
