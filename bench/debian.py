"""Debian 13 packages unpacked into a private folder: tools this machine lacks (perf_analyzer's
libraries, haproxy), for tests and benchmarks, without root and without changing the system.

`unpack(packages, root)` reads Debian 13's package lists into a scratch folder (apt-get with
private lists), fetches the .debs (`apt-get download`) and unpacks them under `root`
(`dpkg -x`). `wrapper(path, root, binary)` writes a script that runs `binary` through that
folder's own loader and libraries (`ld.so --library-path`), so Debian 13 binaries, built for
its newer glibc, run on Debian 12 too; `working_wrapper` also checks that it runs. They raise
OSError with the reason when apt-get or the mirror fails, or the result does not run. `find`, `found_or_prepared` and `main` are what each tool's module offers alike.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

SOURCES = """Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
LIBS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    if proc.returncode:
        raise OSError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")


def unpack(packages: Sequence[str], root: Path) -> None:
    """Download `packages` (no dependencies: name every one) and unpack them into `root`,
    replacing what was there."""
    with tempfile.TemporaryDirectory(prefix="clockwork-debian-") as scratch:
        work = Path(scratch)
        (work / "sources").mkdir()
        (work / "sources" / "trixie.sources").write_text(SOURCES)
        (work / "lists" / "partial").mkdir(parents=True)
        apt = ["apt-get", "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={work / 'sources'}",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", "Debug::NoLocking=1"]
        run([*apt, "update"], "apt-get update (Debian 13 lists, into a private folder)")
        debs = work / "debs"
        debs.mkdir()
        run([*apt, "download", *packages], "apt-get download", cwd=debs)
        shutil.rmtree(root, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")


def wrapper(path: Path, root: Path, binary: Path) -> Path:
    """An executable script at `path` that runs `binary` with `root`'s loader and libraries."""
    loader = root / LIBS[0] / "ld-linux-x86-64.so.2"
    library_path = ":".join(str(root / d) for d in LIBS)
    path.write_text(f'#!/bin/sh\nexec "{loader}" --library-path "{library_path}" "{binary}" "$@"\n')
    path.chmod(0o755)
    return path


def working_wrapper(path: Path, root: Path, binary: Path, runs: Callable[[list[str]], bool]) -> list[str]:
    """The command of a `wrapper` for `binary`, once `runs` says it works (OSError otherwise)."""
    command = [str(wrapper(path, root, binary))]
    if not runs(command):
        raise OSError(f"the prepared {command[0]} does not run")
    return command


def find(name: str, env: str, prepared: Path, runs: Callable[[list[str]], bool]) -> list[str] | None:
    """The first of $`env` (a command line), `name` on the PATH and the `prepared` wrapper that
    `runs`; None when none does."""
    configured = os.environ.get(env)
    candidates = [shlex.split(configured)] if configured else []
    if shutil.which(name):
        candidates.append([name])
    candidates.append([str(prepared)])
    return next((cmd for cmd in candidates if runs(cmd)), None)


def found_or_prepared(command: Callable[[], list[str] | None], prepare: Callable[[], list[str]]) -> list[str]:
    """A tool's command, prepared first when it is not here (OSError when that fails)."""
    return command() or prepare()


def main(argv: Sequence[str] | None, module: str, prepare: Callable[[], list[str]],
         command: Callable[[], list[str] | None]) -> int:
    """`python -m MODULE prepare` prepares the tool; any other arguments run it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["prepare"]:
        print(" ".join(prepare()))
        return 0
    cmd = command()
    if cmd is None:
        print(f"{module.rsplit('.', 1)[-1]} is not here: run python -m {module} prepare", file=sys.stderr)
        return 2
    return subprocess.run([*cmd, *args]).returncode
