"""Triton's perf_analyzer, runnable on this project's Debian 12 machines, for tests and benchmarks.

    python -m clockwork.bench.perf_analyzer prepare      # once: ~/.cache/clockwork/perf-analyzer (about 25 MB)
    python -m clockwork.bench.perf_analyzer -m mlp -u 127.0.0.1:8000 -i http --concurrency-range 1:4

The real perf_analyzer wheels (2.58 and later) are built for glibc 2.38 (`manylinux_2_38`); on
Debian 12 pip picks a 0.1.0 placeholder instead. `prepare` downloads the real wheel, and Debian
13's libc6, libstdc++6, libgcc-s1, libssl3t64 and zlib1g, unpacks them into a private folder and
writes a `perf_analyzer` wrapper there that runs the binary through that folder's own loader
(bench/debian.py). Nothing on the system changes.

`command()` finds one: $CLOCKWORK_PERF_ANALYZER (a command line), a working `perf_analyzer` on
the PATH, or the prepared folder; None when there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from clockwork.bench import debian

WHEEL = "perf-analyzer==2.60.0"
DEBIAN_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1", "libssl3t64", "zlib1g")
HOME = Path(os.environ.get("CLOCKWORK_PERF_ANALYZER_DIR", Path.home() / ".cache" / "clockwork" / "perf-analyzer"))


def _runs(cmd: list[str]) -> bool:
    """perf_analyzer has no --help: with no arguments it prints its usage (and exits 1)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "SYNOPSIS" in out.stdout + out.stderr


def command(home: Path = HOME) -> list[str] | None:
    return debian.find("perf_analyzer", "CLOCKWORK_PERF_ANALYZER", home / "perf_analyzer", _runs)


def prepare(home: Path = HOME) -> list[str]:
    """Download and unpack everything into `home`; returns the wrapper's command. OSError (with
    the reason) when the index or Debian's mirror cannot be reached."""
    home.mkdir(parents=True, exist_ok=True)
    root = home / "root"
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        work = Path(scratch)
        debian.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_38_x86_64", "--python-version", "3.11", "-d", str(work), WHEEL],
                   f"pip download {WHEEL}")
        debian.unpack(DEBIAN_PACKAGES, root)
        wheel = next(work.glob("perf_analyzer-*.whl"))
        shutil.unpack_archive(str(wheel), str(home / "wheel"), "zip")
    binary = home / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    return debian.working_wrapper(home / "perf_analyzer", root, binary, _runs)


def main(argv: Sequence[str] | None = None) -> int:
    return debian.main(argv, "clockwork.bench.perf_analyzer", prepare, command)


if __name__ == "__main__":
    sys.exit(main())
