"""A controller keeps off the cores that workers on its host pin their EXEC lanes to
(common/affinity.py): real processes, cores read back from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from clockwork.bench.procs import WorkerSpec, cluster, kept_off_lanes, start_gateway
from clockwork.client.gateway import parse_args
from clockwork.common.affinity import LaneCores, host_id
from tests.worker_helpers import cores_of_threads, wait_until_true

pytestmark = pytest.mark.timeout(120)


def test_lane_cores_follow_the_workers_on_this_host_and_only_those():
    """In a process of its own: it changes that process's cores."""
    code = textwrap.dedent("""
        import os
        from clockwork.common.affinity import LaneCores
        allowed = set(os.sched_getaffinity(0))
        top = max(allowed)
        lanes = LaneCores(host="this-host")
        assert lanes.joined("far", "other-host", (top,)) is None  # another host's cores are not ours
        assert lanes.joined("near", "", (top,)) is None  # nor those of a worker that does not say
        assert lanes.joined("near", "this-host", (top,)) == allowed - {top}
        assert all(os.sched_getaffinity(int(t)) == allowed - {top} for t in os.listdir("/proc/self/task"))
        assert lanes.joined("near", "this-host", (top,)) is None  # said again: nothing changes
        assert lanes.joined("all", "this-host", tuple(allowed)) == allowed  # none left over: stay put
        few = LaneCores(host="this-host", min_left=len(allowed))  # keeping off would leave too few
        assert few.joined("near", "this-host", (top,)) == allowed
        assert all(os.sched_getaffinity(int(t)) == allowed for t in os.listdir("/proc/self/task"))
        assert lanes.left("all") == allowed - {top} and lanes.left("near") == allowed
        assert os.sched_getaffinity(0) == allowed and lanes.left("near") is None
        gateway = LaneCores(host="this-host")  # a client follows the controller's STATUS
        assert gateway.follow({"workers": []}) is None  # a controller that does not say
        assert gateway.follow({"lane_cores": {"host": "this-host", "cores": [top]}}) == allowed - {top}
        assert gateway.follow({"lane_cores": {"host": "this-host", "cores": []}}) == allowed
    """)
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core here: there is no core to keep off")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_where_threads_cannot_be_pinned_nothing_is_kept_off(monkeypatch):
    monkeypatch.delattr(os, "sched_setaffinity")  # as on macOS
    lanes = LaneCores()
    assert lanes.host == "" and lanes.joined("near", host_id(), (0,)) is None
    assert lanes.follow({"lane_cores": {"host": host_id(), "cores": [0]}}) is None


@pytest.fixture
def lane() -> int:
    """The core a one-device onnxruntime worker pins its EXEC lane to: the highest."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one core here: a worker pins no EXEC lane, so there is nothing to keep off")
    return allowed[-1]


@pytest.fixture
def lane_worker(tmp_path) -> WorkerSpec:
    """A one-device onnxruntime worker that claims its lane's core in a folder of its own: in the
    host-wide one, a worker of another test run (or a deployment) on this host may hold the
    highest core, and this one's lane would go elsewhere."""
    return WorkerSpec("cpu", "onnxruntime", extra_args=("--set", f"lane_claims_dir={str(tmp_path / 'claims')!r}"))


def off(pid: int, core: int) -> bool:
    return all(core not in cores for cores in cores_of_threads(pid))


def test_a_controller_keeps_off_the_lane_core_of_a_worker_on_its_host_and_takes_it_back(tmp_path, lane, lane_worker):
    with cluster(tmp_path, [lane_worker]) as c:
        controller = c.group.get("controller")
        wait_until_true(lambda: off(controller.pid, lane), what="every controller thread off the lane's core")
        worker = c.group.get("worker-cpu")
        c.group.expect_exit(worker.name)
        worker.popen.send_signal(signal.SIGKILL)  # lost after worker_timeout_ns: its core is free again
        wait_until_true(lambda: all(lane in cores for cores in cores_of_threads(controller.pid)),
                        timeout_s=10, what="the controller back on every core")


def test_a_gateway_on_the_host_keeps_off_the_lane_core_too(tmp_path, lane, lane_worker):
    with cluster(tmp_path, [lane_worker]) as c:
        with c.client() as admin:
            assert admin.status()["lane_cores"]["cores"] == [lane]
        start_gateway(c.group, c.client_endpoint, extra=["--min-cores-left", "1"])
        gateway = c.group.get("gateway")
        wait_until_true(lambda: off(gateway.pid, lane), what="every gateway thread off the lane's core")


def test_a_bench_load_generator_keeps_off_the_lane_core_while_it_plays(tmp_path, lane, lane_worker):
    """bench/procs.kept_off_lanes, as `versus` uses it around its load: this very process."""
    allowed = os.sched_getaffinity(0)
    with cluster(tmp_path, [lane_worker]) as c, c.client() as admin:
        with kept_off_lanes(admin) as cores:
            assert cores == allowed - {lane}
            assert all(mine == allowed - {lane} for mine in cores_of_threads(os.getpid()))
        assert all(mine == allowed for mine in cores_of_threads(os.getpid()))


def test_a_gateway_that_would_be_left_too_few_cores_shares_the_lanes(tmp_path, lane, lane_worker):
    """On a 2-core host one core is too little for the gateway's JSON work beside the controller
    and the worker's loop (docs/benchmarks.md): it stays on every core, the lane's included."""
    allowed = os.sched_getaffinity(0)
    with cluster(tmp_path, [lane_worker]) as c:
        start_gateway(c.group, c.client_endpoint, extra=["--min-cores-left", str(len(allowed)), "--log-level", "info"])
        gateway = c.group.get("gateway")
        wait_until_true(lambda: "sharing the EXEC lanes' cores" in gateway.log_path.read_text(errors="replace"),
                        what="the gateway saying it shares the lanes' cores")
        assert all(cores == allowed for cores in cores_of_threads(gateway.pid))


def test_the_gateway_keeps_off_lane_cores_unless_told_not_to():
    assert parse_args([])[0].avoid_lane_cores  # a host with more cores than lanes loses nothing
    assert not parse_args(["--no-avoid-lane-cores"])[0].avoid_lane_cores
    assert parse_args([])[0].min_cores_left == 2 and parse_args(["--min-cores-left", "1"])[0].min_cores_left == 1


def test_a_worker_follows_the_lane_cores_claimed_after_it():
    """In a process of its own: its threads move off a core another worker claimed later, and
    back when it is given up; a lane pinned to a core of its own stays where it is."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core here: nothing to keep off")
    code = textwrap.dedent("""
        import os, threading, time
        from clockwork.common.affinity import KeptOff
        allowed = set(os.sched_getaffinity(0))
        top = max(allowed)
        kept = KeptOff()
        pinned, ready = {}, threading.Event()
        def lane():
            os.sched_setaffinity(0, {top})
            pinned["id"] = threading.get_native_id()
            ready.set()
            time.sleep(30)
        threading.Thread(target=lane, daemon=True).start()
        ready.wait()
        other = threading.Thread(target=time.sleep, args=(30,), daemon=True)
        other.start()
        spare = {pinned["id"]}
        assert kept.follow(set(), spare) == allowed  # nothing claimed yet
        assert kept.follow({top}, spare) == allowed - {top}  # another worker claims a core
        assert os.sched_getaffinity(other.native_id) == os.sched_getaffinity(0) == allowed - {top}
        assert os.sched_getaffinity(pinned["id"]) == {top}  # the pinned lane stays
        assert kept.follow({top}, spare) is None  # nothing changed, nothing done
        assert kept.follow(set(), spare) == allowed and os.sched_getaffinity(other.native_id) == allowed
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
