"""`clockwork-bench sim --count-instructions`: the core's cost as instructions, a figure that travels.

The core's CPU time per request read anywhere from 51 to 89 us for the same command on one of
the development VMs, and capacities measured on one machine have not carried to the next. The
instructions the core executes differ by less than 0.01% between runs of the same command and
code (the simulator runs in virtual time; what moves is how objects hashed by address probe),
so an A/B of the core reads as a clean difference.

The run is relaunched under valgrind's callgrind (bench/callgrind.py) with instrumentation off
(set-up and warm-up run at valgrind's base speed); when the measured window opens, the
simulator switches it on, and instructions are counted only inside the core's entry points,
the same calls whose CPU time the simulator charges to the core. Entry points are the compiled
core's C symbols, so this needs the compiled core (mypyc), which is also what the daemon runs.
Under callgrind the core runs ~50x slower than natively: count over a short measured window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clockwork.bench import callgrind
from clockwork.bench.callgrind import read_total
from clockwork.bench.report import write_json

ENV = "CLOCKWORK_SIM_COUNTING"  # set in the relaunched run: it switches instrumentation on
# The Core methods the simulator calls (events.Simulation), as mypyc names their Python entries.
ENTRY_POINTS = ("on_request", "on_result", "on_heartbeat", "on_prepared", "on_upload", "on_hello", "tick",
                "next_wakeup_ns")
SYMBOL = "CPyPy_core___Core___{}"


def unavailable() -> str | None:
    """Why instructions cannot be counted here, or None."""
    why = callgrind.missing()
    if why:
        return why
    from clockwork.controller import core

    if not str(core.__file__).endswith(".so"):
        return "the core is not compiled (CLOCKWORK_PURE_PYTHON is set, or the build has no mypyc core)"
    return None


def counting() -> bool:
    """Whether this process is the relaunched run."""
    return os.environ.get(ENV) == "1"


def start_counting() -> None:
    """Switch callgrind's instrumentation on in this process (the measured window opens)."""
    callgrind.control(os.getpid(), "-i", "on")


def relaunch(argv: list[str], out_dir: Path, name: str) -> int:
    """Run the simulator with `argv` under callgrind; add the count to `name`'s summary and print it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = out_dir / f"{name}.callgrind"
    toggles = (f"--toggle-collect={SYMBOL.format(e)}" for e in ENTRY_POINTS)
    cmd = [*callgrind.launcher(counts, "--collect-atstart=no", *toggles), sys.executable, "-m", "clockwork.bench.sim",
           *argv]
    rc = subprocess.run(cmd, env={**os.environ, ENV: "1"}).returncode
    if rc != 0:
        return rc
    summary_path = out_dir / f"{name}-summary.json"
    summary = json.loads(summary_path.read_text())
    total = read_total(counts)
    per_request = total / max(1, summary["offered"])
    summary["core_instructions"] = total
    summary["core_instructions_per_request"] = per_request
    write_json(summary_path, summary)
    print(f"core instructions  {total:,} = {per_request:,.0f} per offered request (measured window; {counts})")
    return 0

