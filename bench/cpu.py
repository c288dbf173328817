"""CPU accounting for benchmarks: what each process, and each named thread in it, used (Linux /proc).

Threads carry names, so a figure per thread says which part of a process paid: the main thread
is "main" here (a daemon's loop; the OS names it after the program), a worker's lanes
"dev0-exec", "dev0-load"... (worker/lanes.py names them), ZeroMQ's I/O thread "ZMQbg/IO/0". A
thread's figure comes from its schedstat, in nanoseconds; the clock ticks of /proc/*/stat (10 ms)
cannot tell a few thousand requests apart. A process's own figure is its ticks, which also count
threads that have ended.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

from clockwork.bench.report import format_table


def cpu_seconds(pids: Mapping[str, int], threads: bool = True, self_as: str | None = None) -> dict[str, float]:
    """user + system CPU seconds so far of each process and, as "NAME/THREAD", of its threads
    grouped by thread name; `self_as` names this process too (a load generator). Processes it
    cannot read are left out."""
    out: dict[str, float] = {}
    for name, pid in {**pids, **({self_as: os.getpid()} if self_as else {})}.items():
        total = _ticks_s(Path(f"/proc/{pid}/stat"))
        if total is None:
            continue
        out[name] = total
        if threads:
            for thread, used in thread_cpu_s(pid).items():
                out[f"{name}/{thread}"] = used
    return out


def thread_cpu_s(pid: int) -> dict[str, float]:
    """A process's CPU seconds so far by thread name ("main" for the main thread), the threads of
    one name added up."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            used = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
        out[name] = out.get(name, 0.0) + used
    return out


def _ticks_s(stat: Path) -> float | None:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def host_jiffies() -> tuple[int, int] | None:
    """The whole host's busy and total CPU time so far, in clock ticks over all its cores (the
    "cpu" line of /proc/stat; busy is all but idle and iowait); None where unreadable."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is counted in user already


def host_busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """The share of the host's cores busy between two `host_jiffies` readings, whatever ran
    there (NaN where either is missing): near 1, a benchmark measured the host, not its target."""
    if before is None or after is None or after[1] <= before[1]:
        return math.nan
    return (after[0] - before[0]) / (after[1] - before[1])


class CpuTally:
    """The CPU some processes use over chosen stretches only (`with tally:` around each), as
    `cpu_seconds` names it: in a run that interleaves two paths block by block, one tally per
    path counts each path's processes during its own blocks."""

    def __init__(self, pids: Mapping[str, int], self_as: str | None = None):
        self.pids, self.self_as = dict(pids), self_as
        self.used: dict[str, float] = {}
        self._before: dict[str, float] = {}

    def __enter__(self) -> CpuTally:
        self._before = cpu_seconds(self.pids, self_as=self.self_as)
        return self

    def __exit__(self, *_exc) -> None:
        for name, end in cpu_seconds(self.pids, self_as=self.self_as).items():
            self.used[name] = self.used.get(name, 0.0) + max(0.0, end - self._before.get(name, 0.0))

    def threads_us_per(self, count: int) -> dict[str, float]:
        """Each "PROCESS/THREAD"'s CPU microseconds per unit of work (`count` of them), the
        threads that used under 1 us a unit left out (idle helpers such as ZeroMQ's reaper)."""
        per = {name: used * 1e6 / count for name, used in self.used.items() if "/" in name} if count else {}
        return {name: us for name, us in sorted(per.items(), key=lambda kv: -kv[1]) if us >= 1.0}


def cpu_usage(before: dict[str, float], after: dict[str, float], wall_s: float, requests: int) -> dict:
    """Per process: share of one core over the run and CPU microseconds per offered request."""
    out = {}
    for name, end in after.items():
        if "/" in name and end - before.get(name, 0.0) < 0.005:
            continue  # an idle helper thread (ZeroMQ's reaper): noise in the table
        if name in before:
            used = max(0.0, end - before[name])
            out[name] = {"cpu_s": round(used, 3), "core_share": round(used / max(wall_s, 1e-9), 3),
                         "cpu_us_per_request": round(1e6 * used / requests, 1) if requests else None}
    return out


def format_cpu(usage: dict) -> str:
    rows = [(name, u["cpu_s"], f"{100 * u['core_share']:.0f}%", u["cpu_us_per_request"]) for name, u in usage.items()]
    return format_table(rows, header=("process", "CPU s", "of one core", "CPU us/request"))
