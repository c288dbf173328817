"""Many hosts on one machine: each "host" a Linux network namespace, the network between them
ours to shape, the whole cluster CURVE-keyed as it must be off loopback.

    root namespace:  bridge 10.213.N.1/24  +  one faulty_link.Link per worker (delay, loss, outages)
    ctl  namespace:  controller on 10.213.N.2 (clients :5555, workers :5556, metrics :9464)
    cli  namespace:  the load generator and clients, straight over the bridge
    wK   namespace:  worker K, connecting to its Link on 10.213.N.1, which relays to the controller;
                     optionally under a time namespace (`unshare --time`) whose CLOCK_MONOTONIC is
                     shifted by seconds, so its clock differs from the controller's

Namespaces, veths and the bridge are named `cwk<pid>x<n>...`, so a run killed before it could clean
up is recognised by its dead pid and removed by the next run (`remove_stale`). Everything is torn
down when the `with` block ends, however it ends. `why_not_permitted()` says why this machine
cannot run it (not root, no `ip`, namespaces refused), for a test to skip with that reason.

    with multihost(run_dir, [HostSpec(WorkerSpec("w0", "emulated")), HostSpec(..., skew_s=5)]) as mh:
        mh.links["w0"].shape(Shape(delay_ns=500_000))
        with mh.admin() as admin: ...
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from prometheus_client.parser import text_string_to_metric_families

from clockwork.bench.faulty_link import Link
from clockwork.bench.procs import ProcessGroup, WorkerSpec, controller_argv, worker_argv, workers_alive
from clockwork.client import Client
from clockwork.common import security

PREFIX = "cwk"
CLIENT_PORT, WORKER_PORT, METRICS_PORT = 5555, 5556, 9464
SUBNET = "10.213.{}.0/24"
ADMIN, CLIENT = "admin", "client"


class NotPermitted(RuntimeError):
    """This machine cannot make namespaces (the reason is the message)."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise NotPermitted(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def why_not_permitted() -> str | None:
    """None when network and time namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["ip", "netns", "del", probe])
        _run(["unshare", "--time", "--fork", "--monotonic=1", "true"])
    except (NotPermitted, OSError, subprocess.TimeoutExpired) as exc:
        _run(["ip", "netns", "del", probe], check=False)
        return str(exc)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    match = re.fullmatch(rf"{PREFIX}(\d+)(?:x\d+)?(?:br|v\d+|-.*)", name)
    return int(match.group(1)) if match else None


def _kill_inside(netns: str) -> None:
    """SIGKILL whatever still runs in `netns` (a daemon that outlived its group)."""
    pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def _delete(namespaces: Sequence[str], links: Sequence[str]) -> None:
    for netns in namespaces:
        _kill_inside(netns)
        _run(["ip", "netns", "del", netns], check=False)
    for link in links:
        _run(["ip", "link", "del", link], check=False)


def remove_stale() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone; their names."""
    namespaces = [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
    links = re.findall(r"^\d+: ([^:@\s]+)", _run(["ip", "-o", "link", "show"]).stdout, re.M)
    stale_ns = [n for n in namespaces if (pid := _owner(n)) is not None and not _pid_alive(pid)]
    stale_links = [n for n in links if (pid := _owner(n)) is not None and not _pid_alive(pid)]
    _delete(stale_ns, stale_links)
    return stale_ns + stale_links


@dataclass(frozen=True)
class Host:
    role: str
    netns: str
    address: str
    veth: str  # its cable's end on the bridge, in the root namespace

    def plug(self, up: bool) -> None:
        """Plug or unplug the host's cable: the kernel drops every packet while it is out."""
        _run(["ip", "link", "set", self.veth, "up" if up else "down"])

    def argv(self, argv: Sequence[str], monotonic_offset_s: float = 0) -> list[str]:
        """`argv` run inside this host, its monotonic clock shifted by the offset if any."""
        prefix = ["ip", "netns", "exec", self.netns]
        if monotonic_offset_s:
            # unshare forks the daemon and ignores SIGTERM, so the parent-death signal that
            # procs gives every child must be SIGKILL for it; --kill-child passes it on.
            prefix += ["setpriv", "--pdeathsig", "SIGKILL", "unshare", "--time", "--kill-child=SIGTERM",
                       f"--monotonic={monotonic_offset_s:g}"]
        return prefix + list(argv)


class Network:
    """A bridge in this (root) namespace and hosts hanging off it; `with` removes them all."""

    _made = itertools.count()

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}x{next(self._made)}"  # interface names: 15 characters at most
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []
        self.veths: list[str] = []
        self.gateway = ""  # the bridge's address: where hosts reach this namespace (the links)
        self._prefix = ""

    def __enter__(self) -> "Network":
        reason = why_not_permitted()
        if reason:
            raise NotPermitted(reason)
        remove_stale()
        self._prefix = self._free_prefix()
        self.gateway = f"{self._prefix}.1"
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        _delete([h.netns for h in self.hosts], [*self.veths, self.bridge])
        self.hosts.clear()
        self.veths.clear()

    @staticmethod
    def _free_prefix() -> str:
        used = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for n in range(1, 255):
            prefix = SUBNET.format(n).rsplit(".", 1)[0]
            if f" {prefix}." not in used:
                return prefix
        raise NotPermitted("no free 10.213.N.0/24 subnet for the bridge")

    def add_host(self, role: str) -> Host:
        index = len(self.hosts)
        veth = f"{self.tag}v{index}"
        host = Host(role, f"{self.tag}-{role}", f"{self._prefix}.{index + 2}", veth)
        self.hosts.append(host)  # before creating: close() removes what was made
        _run(["ip", "netns", "add", host.netns])
        self.veths.append(veth)
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        inside = ["ip", "netns", "exec", host.netns, "ip"]
        _run([*inside, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run([*inside, "link", "set", "eth0", "up"])
        _run([*inside, "link", "set", "lo", "up"])
        return host


# ----------------------------------------------------------------------------- a keyed cluster


@dataclass(frozen=True)
class HostSpec:
    worker: WorkerSpec
    skew_s: float = 0.0  # the worker's monotonic clock runs this far ahead of the controller's


@dataclass
class MultiHost:
    net: Network
    controller: Host
    clients: Host
    hosts: dict[str, Host]  # worker name -> its host
    links: dict[str, Link]  # worker name -> the link between it and the controller
    specs: tuple[HostSpec, ...]
    keys: Path
    group: ProcessGroup
    state_dir: Path
    client_endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.client_endpoint = f"tcp://{self.controller.address}:{CLIENT_PORT}"

    def key_env(self, name: str = CLIENT) -> dict[str, str]:
        """Environment for a client process: its key and the controller's (security.KEY_ENV)."""
        return {**os.environ, security.KEY_ENV: str(self.keys / f"{name}.key_secret"),
                security.SERVER_KEY_ENV: str(self.keys / "controller.key")}

    def admin(self, timeout_s: float = 10.0) -> Client:
        """An admin client from this (root) namespace, over the bridge."""
        return Client(self.client_endpoint, timeout_s=timeout_s, key_file=str(self.keys / f"{ADMIN}.key_secret"),
                      server_key_file=str(self.keys / "controller.key"))

    def status(self, timeout_s: float = 5.0) -> dict:
        with self.admin(timeout_s) as admin:
            return admin.status()

    def worker_metrics(self, name: str) -> dict[str, float]:
        """The worker's own metrics (unlabelled samples), scraped over the bridge."""
        url = f"http://{self.hosts[name].address}:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}

    def clock_error_ms(self, name: str) -> tuple[float, float]:
        """(the worker's clock estimate minus the truth, its stated uncertainty), in ms. The truth
        is known here: the time namespace shifts the worker's clock by exactly `skew_s`."""
        skew_s = next(s.skew_s for s in self.specs if s.worker.name == name)
        m = self.worker_metrics(name)
        return ((m["clockwork_worker_clock_offset_seconds"] + skew_s) * 1e3,
                m["clockwork_worker_clock_uncertainty_seconds"] * 1e3)


def make_keys(folder: Path, workers: Sequence[str]) -> None:
    """The controller's pair, one per worker, an admin and a client, filed as the controller reads them."""
    for sub in ("workers", "admins", "clients"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, sub in ((ADMIN, "admins"), (CLIENT, "clients"), *((f"worker-{w}", "workers") for w in workers)):
        public, _ = security.generate(folder, name)
        shutil.copy(public, folder / sub / public.name)
    security.generate(folder, "controller")


def _controller_settings(keys: Path, address: str) -> list[str]:
    return [f'secret_key_file="{keys / "controller.key_secret"}"', f'worker_keys_dir="{keys / "workers"}"',
            f'admin_keys_dir="{keys / "admins"}"', f'client_keys_dir="{keys / "clients"}"',
            f'metrics_address="{address}:{METRICS_PORT}"']


def _worker_settings(keys: Path, name: str, address: str) -> list[str]:
    settings = [f'secret_key_file="{keys / f"worker-{name}.key_secret"}"',
                f'controller_public_key_file="{keys / "controller.key"}"', f'metrics_address="{address}:{METRICS_PORT}"']
    return [arg for item in settings for arg in ("--set", item)]


@contextlib.contextmanager
def multihost(run_dir: str | Path, specs: Sequence[HostSpec], *, log_level: str = "warning",
              controller_settings: Sequence[str] = (), ready_timeout_s: float = 60.0, seed: int = 0) -> Iterator[MultiHost]:
    """A controller, and each worker on a host of its own behind its own Link, all CURVE-keyed.
    Yields once the controller lists every worker as alive; tears everything down after."""
    run_dir = Path(run_dir)
    keys, state_dir = run_dir / "keys", run_dir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    make_keys(keys, [s.worker.name for s in specs])
    links: dict[str, Link] = {}
    with Network() as net, ProcessGroup(run_dir / "logs") as group:
        try:
            ctl, clients = net.add_host("ctl"), net.add_host("cli")
            hosts = {s.worker.name: net.add_host(f"w{i}") for i, s in enumerate(specs)}
            mh = MultiHost(net, ctl, clients, hosts, links, tuple(specs), keys, group, state_dir)
            worker_ep = f"tcp://{ctl.address}:{WORKER_PORT}"
            group.start("controller", ctl.argv(controller_argv(
                state_dir, mh.client_endpoint, worker_ep, log_level, [*_controller_settings(keys, ctl.address),
                                                                       *controller_settings])))
            for i, spec in enumerate(specs):
                name, host = spec.worker.name, hosts[spec.worker.name]
                link = links[name] = Link((net.gateway, 0), (ctl.address, WORKER_PORT), seed=seed + i)
                via = f"tcp://{link.address[0]}:{link.address[1]}"
                argv = worker_argv(spec.worker, via, log_level) + _worker_settings(keys, name, host.address)
                group.start(f"worker-{name}", host.argv(argv, spec.skew_s))
            names = list(hosts)
            with mh.admin(timeout_s=1.0) as admin:
                group.wait_until(lambda: workers_alive(admin.status(), names), ready_timeout_s,
                                 f"the controller to list workers {', '.join(names)} as alive", interval_s=0.2)
            yield mh
        finally:
            group.stop_all()  # before the links and namespaces go, so daemons end cleanly
            for link in links.values():
                link.close()

