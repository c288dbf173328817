"""HAProxy, runnable without root on this project's Debian 12 machines, for the test of several
pools behind a load balancer (tests/test_pools_haproxy.py) and for trying systemd/haproxy.cfg.

    python -m clockwork.bench.haproxy prepare        # once: ~/.cache/clockwork/haproxy (about 35 MB)
    python -m clockwork.bench.haproxy -c -f systemd/haproxy.cfg

`prepare` downloads Debian 13's haproxy and the libraries it links (Lua, PCRE2, OpenSSL,
jemalloc, OpenTracing, with libc6 and libstdc++6), unpacks them into a private folder and writes
a `haproxy` wrapper there that runs it through that folder's own loader (bench/debian.py).

`command()` finds one: $CLOCKWORK_HAPROXY (a command line), a working `haproxy` on the PATH, or
the prepared folder; None when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from clockwork.bench import debian

DEBIAN_PACKAGES = ("haproxy", "libc6", "libcrypt1", "libjemalloc2", "liblua5.4-0", "libopentracing-c-wrapper0t64",
                   "libopentracing1", "libpcre2-8-0", "libssl3t64", "zlib1g", "libstdc++6", "libgcc-s1")
HOME = Path(os.environ.get("CLOCKWORK_HAPROXY_DIR", Path.home() / ".cache" / "clockwork" / "haproxy"))
CONFIG = Path(__file__).resolve().parent.parent / "systemd" / "haproxy.cfg"


def _runs(cmd: list[str]) -> bool:
    try:
        out = subprocess.run([*cmd, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "HAProxy version" in out.stdout


def command(home: Path = HOME) -> list[str] | None:
    return debian.find("haproxy", "CLOCKWORK_HAPROXY", home / "haproxy", _runs)


def prepare(home: Path = HOME) -> list[str]:
    """Download and unpack haproxy into `home`; returns the wrapper's command. OSError (with the
    reason) when Debian's mirror cannot be reached or the result does not run."""
    home.mkdir(parents=True, exist_ok=True)
    root = home / "root"
    debian.unpack(DEBIAN_PACKAGES, root)
    return debian.working_wrapper(home / "haproxy", root, root / "usr" / "sbin" / "haproxy", _runs)


def main(argv: Sequence[str] | None = None) -> int:
    return debian.main(argv, "clockwork.bench.haproxy", prepare, command)


if __name__ == "__main__":
    sys.exit(main())
