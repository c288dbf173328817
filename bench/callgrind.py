"""Counting instructions with valgrind's callgrind: the benchmarks' figure that travels.

CPU time for the same command varied 1.7x between runs on one of the development VMs, and
capacities measured on one machine have not carried to the next. The instructions a process
executes for the same work differ by well under 1% between runs, so an A/B of code reads as a
clean difference there. Both users start their processes with `launcher`, instrumentation
off (set-up runs at valgrind's base speed), and switch it on (`control(pid, "-i", "on")`) for
the stretch they measure: `clockwork-bench sim --count-instructions` (the scheduling core, in
one process) and `clockwork-bench overhead --count-instructions` (each daemon on a request's
path, and the bare relay's processes beside them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

TOOLS = ("valgrind", "callgrind_control")


def missing() -> str | None:
    """Why callgrind cannot run here, or None."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package valgrind)"
    return None


def launcher(out_file: Path, *options: str) -> list[str]:
    """The argv prefix that runs a program under callgrind, counting nothing until switched on,
    its counts written to `out_file` (and `out_file`.N for each dump). With a fixed hash seed:
    sets and dicts of strings then probe alike in every run (with a random one, the same run of
    the simulator counted ~0.2% apart; with it, less than 0.01%)."""
    return ["env", "PYTHONHASHSEED=0", "valgrind", "--quiet", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            "--instr-atstart=no", *options]


def control(pid: int, *args: str) -> None:
    """callgrind_control `args` for the process `pid` ("-i on", "-z", "-d label"...)."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def read_total(path: Path) -> int:
    """The instructions a callgrind output file counted in all."""
    match = re.search(r"^(?:summary|totals):\s*(\d+)", path.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{path} holds no callgrind totals")
    return int(match.group(1))
