"""Triton's perf_analyzer, runnable on this project's Debian 12 machines, for tests and benchmarks.

    python -m bench.perf_analyzer prepare      # once: ~/.cache/clockwork/perf-analyzer (about 25 MB)
    python -m bench.perf_analyzer -m mlp -u 127.0.0.1:8000 -i http --concurrency-range 1:4

The real perf_analyzer wheels (2.58 and later) are built for glibc 2.38 (`manylinux_2_38`); on
Debian 12 pip picks a 0.1.0 placeholder instead. `prepare` downloads the real wheel, and Debian
13's libc6, libstdc++6, libgcc-s1, libssl3t64 and zlib1g, unpacks them into a private folder and
writes a `perf_analyzer` wrapper there that runs the binary through that folder's own loader
(`ld.so --library-path`). Nothing on the system changes.

`command()` finds one: $CLOCKWORK_PERF_ANALYZER (a command line), a working `perf_analyzer` on
the PATH, or the prepared folder; None when there is none.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

WHEEL = "perf-analyzer==2.60.0"
DEBIAN_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1", "libssl3t64", "zlib1g")
DEBIAN_SOURCES = """Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOME = Path(os.environ.get("CLOCKWORK_PERF_ANALYZER_DIR", Path.home() / ".cache" / "clockwork" / "perf-analyzer"))
LIBS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def _runs(cmd: list[str]) -> bool:
    """perf_analyzer has no --help: with no arguments it prints its usage (and exits 1)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "SYNOPSIS" in out.stdout + out.stderr


def command(home: Path = HOME) -> list[str] | None:
    configured = os.environ.get("CLOCKWORK_PERF_ANALYZER")
    candidates = [shlex.split(configured)] if configured else []
    if shutil.which("perf_analyzer"):
        candidates.append(["perf_analyzer"])
    candidates.append([str(home / "perf_analyzer")])
    for cmd in candidates:
        if _runs(cmd):
            return cmd
    return None


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise OSError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")


def prepare(home: Path = HOME) -> list[str]:
    """Download and unpack everything into `home`; returns the wrapper's command. OSError (with
    the reason) when the index or Debian's mirror cannot be reached."""
    home.mkdir(parents=True, exist_ok=True)
    root = home / "root"
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as scratch:
        work = Path(scratch)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--platform", "manylinux_2_38_x86_64", "--python-version", "3.11", "-d", str(work), WHEEL],
             f"pip download {WHEEL}")
        (work / "sources").mkdir()
        (work / "sources" / "trixie.sources").write_text(DEBIAN_SOURCES)
        (work / "lists" / "partial").mkdir(parents=True)
        apt = ["apt-get", "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={work / 'sources'}",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", "Debug::NoLocking=1"]
        _run([*apt, "update"], "apt-get update (Debian 13 lists, into a private folder)")
        debs = work / "debs"
        debs.mkdir()
        proc = subprocess.run([*apt, "download", *DEBIAN_PACKAGES], cwd=debs, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode:
            raise OSError(f"apt-get download failed: {proc.stderr.strip()[-400:]}")
        shutil.rmtree(root, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
        wheel = next(work.glob("perf_analyzer-*.whl"))
        shutil.unpack_archive(str(wheel), str(home / "wheel"), "zip")
    binary = home / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    loader = root / LIBS[0] / "ld-linux-x86-64.so.2"
    wrapper = home / "perf_analyzer"
    library_path = ":".join(str(root / d) for d in LIBS)
    wrapper.write_text(f'#!/bin/sh\nexec "{loader}" --library-path "{library_path}" "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    if not _runs([str(wrapper)]):
        raise OSError(f"the prepared {wrapper} does not run")
    return [str(wrapper)]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["prepare"]:
        print(" ".join(prepare()))
        return 0
    cmd = command()
    if cmd is None:
        print("perf_analyzer is not here: run python -m bench.perf_analyzer prepare", file=sys.stderr)
        return 2
    return subprocess.run([*cmd, *args]).returncode


if __name__ == "__main__":
    sys.exit(main())
