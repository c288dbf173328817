"""CPU cores on a host shared by a worker's EXEC lanes and other daemons (Linux).

On a CPU host a lane's core is its device: a worker pins each EXEC lane to a core of its own
(worker/runtimes/onnxrt.py) and keeps its other threads off it. Other processes on the host
still run there, and every time the scheduler puts one on a lane's core, an EXEC takes longer
than the controller predicted. A worker therefore says in its HELLO which host it is on and
which cores its lanes hold, and a controller on the same host keeps off them (`LaneCores`);
its STATUS lists them, so that a gateway on the host keeps off them as well.
With the controller on the lane's core as well, 222-327 of 22,875 requests failed at 2,287/s
(15 ms SLO, the generated CNN); kept off it, 9-57.

Several workers on one host claim their lanes' cores through `CoreClaims`, so that no two lanes
share a core: each would otherwise take the highest.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def host_id() -> str:
    """This host's boot id: equal for every process of one running kernel, containers included
    (they share the kernel's scheduler too); "" where the system does not say."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def allowed_cores() -> set[int]:
    """The cores this thread may run on now; none where the system cannot set a thread's cores
    (macOS), so that everything here is inert there. Taken before anything is kept off, it is
    what the process started with."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else set()


def keep_off(cores: set[int], allowed: set[int], spare: set[int] = frozenset(), min_left: int = 1) -> set[int]:
    """Run every thread of this process on `allowed` less `cores`: the threads running now, and
    through inheritance those started later; the threads in `spare` (native ids: lanes pinned to
    a core of their own) stay as they are. If that leaves fewer than `min_left` cores, it runs
    on all of `allowed` (sharing the lanes' cores). Returns the cores now used."""
    rest = allowed - cores
    if len(rest) < max(1, min_left):
        rest = allowed
    for thread in os.listdir("/proc/self/task"):
        if int(thread) in spare:
            continue
        try:
            os.sched_setaffinity(int(thread), rest)
        except OSError:  # the thread ended meanwhile
            pass
    return rest


class KeptOff:
    """This process's threads kept off a set of cores that changes (lanes' cores, as workers
    come and go): each change moves them, within the cores the process started with."""

    def __init__(self, min_left: int = 1):
        self.allowed = allowed_cores()
        self.min_left = min_left  # keep_off's: fewer cores left than this, and the lanes' are shared
        self.cores: set[int] | None = None

    def follow(self, cores: set[int], spare: set[int] = frozenset()) -> set[int] | None:
        """The cores this process's threads now run on, if `cores` changed them."""
        if not self.allowed or cores == self.cores:
            return None
        self.cores = set(cores)
        return keep_off(self.cores, self.allowed, spare, self.min_left)


def default_claims_dir() -> Path:
    """Where workers on this host claim cores: /dev/shm, which every process of the host sees
    (systemd's PrivateTmp hides /tmp from other services, not /dev/shm)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / "clockwork-lane-cores"


class CoreClaims:
    """Cores this process claims for its EXEC lanes, host-wide: one lock file per core in a
    folder every worker on the host shares, and a claim is an exclusive flock on it held for the
    process's life. The kernel releases it when the process ends, however it ends, so a crashed
    worker leaves no stale claim."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._held: dict[int, int] = {}  # core -> the descriptor holding its lock

    def _path(self, core: int) -> Path:
        return self.directory / f"cpu{core}.lock"

    def taken(self, cores: set[int]) -> set[int]:
        """Of `cores`, those another process holds."""
        out = set()
        for core in cores - set(self._held):
            try:
                fd = os.open(self._path(core), os.O_RDONLY)
            except OSError:  # never claimed (or unreadable: not ours to judge)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                out.add(core)
            finally:
                os.close(fd)  # and with it the shared lock of the probe
        return out

    def claim(self, cores: set[int]) -> bool:
        """Claim every one of `cores`, or none (False: another process holds one)."""
        try:
            self.directory.mkdir(parents=True)
            self.directory.chmod(0o1777)  # every user's workers claim here, as in /tmp
        except FileExistsError:
            pass
        got = []
        for core in sorted(cores):
            fd = os.open(self._path(core), os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                for taken in got:
                    os.close(self._held.pop(taken))
                return False
            self._held[core] = fd
            got.append(core)
        return True

    def release(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


class LaneCores:
    """The cores the EXEC lanes of workers on this host hold, as their HELLOs say, and this
    process kept off them: joining workers add theirs, lost ones give them back."""

    def __init__(self, host: str | None = None, min_left: int = 1):
        self._kept = KeptOff(min_left)
        # Where the system cannot set a thread's cores (not Linux) there is no host to share.
        self.host = (host_id() if host is None else host) if self._kept.allowed else ""
        self._lanes: dict[str, frozenset[int]] = {}  # worker -> its lanes' cores

    def joined(self, worker: str, host: str, cores: tuple[int, ...]) -> set[int] | None:
        """The cores this process now runs on, if `worker` changed them."""
        mine = frozenset(cores) if host and host == self.host else frozenset()
        if self._lanes.get(worker, frozenset()) == mine:
            return None
        if mine:
            self._lanes[worker] = mine
        else:
            self._lanes.pop(worker, None)
        return self._kept.follow(self.held())

    def left(self, worker: str) -> set[int] | None:
        if self._lanes.pop(worker, None) is None:
            return None
        return self._kept.follow(self.held())

    def held(self) -> set[int]:
        return set().union(*self._lanes.values())

    def follow(self, status: dict) -> set[int] | None:
        """For a client of the controller on the same host (the gateway): the lanes' cores as
        the controller's STATUS lists them (`lane_cores`), kept off like a worker's."""
        said = status.get("lane_cores")
        if not isinstance(said, dict) or not isinstance(said.get("cores"), list):
            return None
        cores = tuple(c for c in said["cores"] if isinstance(c, int))
        return self.joined("controller", str(said.get("host", "")), cores)
