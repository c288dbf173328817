"""The controller daemon's loop in-process, on real ZeroMQ sockets (no worker attached)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import zmq

from clockwork.bench.procs import free_port
from clockwork.bench.models import sample_inputs
from clockwork.client.protocol import build_infer, read_incoming
from clockwork.common import schema
from clockwork.common.codec import bundle, decode, encode, split
from clockwork.common.config import ControllerConfig
from clockwork.common.logsetup import configure
from clockwork.common.models import signature_of
from clockwork.common.net import bulk_identity, dealer, recv_frames, send_frames
from clockwork.common.status import Status
from clockwork.controller import daemon as daemon_module
from clockwork.controller.daemon import ControllerDaemon
from tests.worker_helpers import profile_blob, wait_until_true


@pytest.fixture
def controller(tmp_path):
    cfg = ControllerConfig(client_endpoint=f"tcp://127.0.0.1:{free_port()}",
                           worker_endpoint=f"tcp://127.0.0.1:{free_port()}", state_dir=str(tmp_path / "state"))
    ctl = ControllerDaemon(cfg, configure("warning", "controller"))
    sock = dealer(zmq.Context.instance(), cfg.client_endpoint)
    yield ctl, sock
    sock.close(0)
    ctl.close()


def replies(sock, wanted: int, timeout_s: float = 5.0) -> dict:
    got: dict = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < wanted and time.monotonic() < deadline:
        if sock.poll(100):
            got.update((i.parent_id, i.envelope.body) for i in read_incoming(recv_frames(sock)))
    return got


def test_a_drain_stops_after_its_time_budget_so_planning_is_never_starved(controller, monkeypatch):
    """Bundles can hold many requests: a drain bounded only by message count once took half
    a second behind a backlog, with no planning in between, and the devices went idle."""
    ctl, sock = controller
    for first in range(1, 40, 3):
        send_frames(sock, bundle([encode(schema.ListModels(), first + i) for i in range(3)]))
    time.sleep(0.3)  # all of it queued at the controller's socket
    monkeypatch.setattr(daemon_module, "DRAIN_BUDGET_NS", 0)
    ctl._drain(ctl.clients, ctl._on_client)
    assert len(replies(sock, 3)) == 3  # one bundle, and its three replies
    assert len(replies(sock, 1, timeout_s=0.3)) == 0
    monkeypatch.setattr(daemon_module, "DRAIN_BUDGET_NS", 10**9)
    ctl._drain(ctl.clients, ctl._on_client)
    answered = replies(sock, 36)
    assert sorted(answered) == list(range(4, 40)) and all(r.status is Status.OK for r in answered.values())


def test_a_send_that_fails_for_one_peer_does_not_hold_back_the_others(controller, monkeypatch):
    from clockwork.common import net

    ctl, sock = controller
    real_send = net.send_frames

    def send_frames_failing_for_one(s, frames, identity=None):
        if identity == b"broken":
            raise zmq.ZMQError(zmq.EFSM)
        return real_send(s, frames, identity)

    monkeypatch.setattr(net, "send_frames", send_frames_failing_for_one)
    ctl.to_clients.add(b"broken", encode(schema.Reply(status=Status.OK), 1, 5))
    send_frames(sock, encode(schema.ListModels(), 7))
    assert ctl.clients.poll(2000)
    ctl._drain(ctl.clients, ctl._on_client)  # logs the failure and goes on
    assert list(replies(sock, 1)) == [7]


class _HugeStatus:
    """The daemon's core, with a STATUS too large for one header (a proxy: the compiled core's
    methods cannot be patched on the instance)."""

    def __init__(self, core):
        self._core = core

    def __getattr__(self, name):
        return getattr(self._core, name)

    def status(self, now, limit=None):
        return {"workers": ["w" * schema.MAX_HEADER_BYTES]}


def test_a_reply_over_the_header_limit_is_answered_too_large_instead(controller, monkeypatch):
    """Sent as it was, the client's decode would refuse it and report an undecodable reply."""
    ctl, sock = controller
    monkeypatch.setattr(ctl, "core", _HugeStatus(ctl.core))
    send_frames(sock, encode(schema.GetStatus(), 8))
    assert ctl.clients.poll(2000)
    ctl._drain(ctl.clients, ctl._on_client)
    [(request_id, body)] = replies(sock, 1).items()
    assert request_id == 8 and isinstance(body, schema.Error) and body.status is Status.TOO_LARGE
    assert f"exceeds the {schema.MAX_HEADER_BYTES}-byte header limit, so it was not sent" in body.detail


def _messages(sock, timeout_s: float = 0.5) -> list:
    """Every message `sock` receives within `timeout_s` (bundles opened)."""
    got, deadline = [], time.monotonic() + timeout_s
    while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        got += [decode(part, head).body for head, part in split(recv_frames(sock))]
    return got


def test_a_prepare_goes_on_the_workers_bulk_connection_and_with_the_actions_where_it_has_none(controller):
    """A model's bytes must not hold up a worker's actions on a slow link (docs/protocol.md)."""
    ctl, sock = controller
    send_frames(sock, encode(schema.Upload(name="m", format="profile", blob=profile_blob()), 3))
    assert ctl.clients.poll(2000)
    ctl._drain(ctl.clients, ctl._on_client)
    assert replies(sock, 1)[3].status is Status.OK
    ctx, endpoint = zmq.Context.instance(), ctl.cfg.worker_endpoint
    plain, main, bulk = (dealer(ctx, endpoint, name) for name in (b"plain", b"two", bulk_identity(b"two")))
    try:
        probe = encode(schema.HeartbeatAck(echo_sent_ns=0), 1)
        wait_until_true(lambda: send_frames(ctl.workers, probe, bulk_identity(b"two")), what="the bulk connection")
        assert [type(m) for m in _messages(bulk)] == [schema.HeartbeatAck]
        hello = schema.Hello(worker="w", runtime="emulated", formats=("profile",),
                             devices=({"device_id": 0, "kind": "emu", "memory_bytes": 1 << 30, "page_bytes": 1 << 20},))
        for i, dealer_sock in enumerate((plain, main)):
            send_frames(dealer_sock, encode(hello, 10 + i))
        deadline = time.monotonic() + 5
        while len(ctl.core.workers) < 2 and time.monotonic() < deadline:
            if ctl.workers.poll(100):
                ctl._drain(ctl.workers, ctl._on_worker)
        while ctl.prepares:  # a loop turn sends 2 ms of them: on a slow host, one at a time
            ctl._send_prepares()
        assert [type(m) for m in _messages(plain)] == [schema.Welcome, schema.Prepare]
        assert [type(m) for m in _messages(main)] == [schema.Welcome]
        [prepare] = _messages(bulk)
        assert isinstance(prepare, schema.Prepare) and prepare.model_id == "m" and bytes(prepare.blob) == profile_blob()
    finally:
        for s in (plain, main, bulk):
            s.close(0)


def test_copies_of_a_look_up_that_waited_in_the_socket_are_answered_once(controller):
    """A client resends a LIST, model look-up or STATUS every 250 ms while no reply has come:
    behind a busy loop the copies queue up, and each answered is more work for a busy loop."""
    ctl, sock = controller
    for _ in range(3):
        send_frames(sock, encode(schema.ListModels(), 7))
    send_frames(sock, encode(schema.GetStatus(), 8))
    send_frames(sock, encode(schema.GetStatus(), 8))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if ctl.clients.poll(50):
            ctl._drain(ctl.clients, ctl._on_client)
    got = []
    while sock.poll(200):
        got += [i.parent_id for i in read_incoming(recv_frames(sock))]
    assert sorted(got) == [7, 8]
    send_frames(sock, encode(schema.ListModels(), 9))  # a new call is answered as ever
    assert ctl.clients.poll(2000)
    ctl._drain(ctl.clients, ctl._on_client)
    assert replies(sock, 1)[9].status is Status.OK


@contextlib.contextmanager
def serving_a_worker(ctl, on_message=lambda msg: None):
    """`ctl.run` on a thread, and worker "w" joined: a thread of its own heartbeats every 50 ms
    and hands what it receives to `on_message` (one thread, as a socket wants)."""
    worker = dealer(zmq.Context.instance(), ctl.cfg.worker_endpoint, b"w")
    done = threading.Event()

    def the_worker():
        msg_id, next_beat = 100, 0.0
        while not done.is_set():
            if time.monotonic() >= next_beat:
                msg_id, next_beat = msg_id + 1, time.monotonic() + 0.05
                send_frames(worker, encode(schema.Heartbeat(lanes_alive=True, unheard_ns=0), msg_id))
            if worker.poll(10):
                for head, part in split(recv_frames(worker)):
                    on_message(decode(part, head).body)

    hello = schema.Hello(worker="w", runtime="emulated", formats=("profile",),
                         devices=({"device_id": 0, "kind": "emu", "memory_bytes": 1 << 30, "page_bytes": 1 << 20},))
    loop, beats = threading.Thread(target=ctl.run, daemon=True), threading.Thread(target=the_worker, daemon=True)
    loop.start()
    try:
        send_frames(worker, encode(hello, 1))
        wait_until_true(lambda: "w" in ctl.core.workers, what="the worker to join")
        beats.start()
        yield
    finally:
        done.set()
        ctl.stopping = True
        loop.join(timeout=5)
        if beats.is_alive():
            beats.join(timeout=5)
        worker.close(0)


@pytest.mark.parametrize("held_by", ["client", "worker"])
def test_a_handler_that_holds_the_loop_does_not_lose_the_workers_whose_heartbeats_wait(controller, held_by):
    """An upload on a busy disk (or onnx's first import, on a fresh install) once held the loop
    past the worker timeout; the tick that followed found both workers silent, though their
    heartbeats sat unread in the socket, and dropped them with the upload they were preparing.
    A worker's message handled slowly must not do it either."""
    ctl, sock = controller
    timeout_ns = ctl.cfg.scheduler.worker_timeout_ns
    handlers, kind = ((ctl._client_handlers, schema.ListModels) if held_by == "client"
                      else (ctl._worker_handlers, schema.Prepared))
    slow = handlers[kind]

    def held(*args):
        time.sleep(1.5 * timeout_ns / 1e9)
        slow(*args)

    handlers[kind] = held
    with serving_a_worker(ctl):
        if held_by == "client":
            send_frames(sock, encode(schema.ListModels(), 7))
            assert replies(sock, 1, timeout_s=5)[7].status is Status.OK  # answered once the handler let go
        else:
            other = dealer(zmq.Context.instance(), ctl.cfg.worker_endpoint, b"other")
            send_frames(other, encode(schema.Prepared(model_id="m", status=Status.OK), 3))
            time.sleep(1.5 * timeout_ns / 1e9)
            other.close(0)
        time.sleep(0.3)
        assert "w" in ctl.core.workers and ctl.core.counters.get("workers_lost", 0) == 0


def test_a_worker_joining_with_many_models_is_sent_them_between_the_loops_other_work(controller, monkeypatch):
    """A join's PREPARE of every model once held the loop for seconds (4,026 models on a busy
    host): the worker's heartbeats sat unread, so it was dropped, joined again and was sent
    everything again, over and over, while clients timed out. Here each PREPARE takes 5 ms (a
    slow disk): sent in one go, 300 would hold the loop 1.5 s, past the worker timeout."""
    ctl, sock = controller
    models, blob = 300, profile_blob()
    signature = signature_of("profile", blob, {}, 0)
    for i in range(models):
        record = ctl.registry.add(f"m-{i:03}", "profile", blob, {}, 0, signature)
        ctl.core.add_model(record.name, record.format, record.signature)
    read = ctl.registry.blob

    def slow_blob(digest):
        time.sleep(0.005)
        return read(digest)

    monkeypatch.setattr(ctl.registry, "blob", slow_blob)
    prepared: list[str] = []
    with serving_a_worker(ctl, lambda msg: isinstance(msg, schema.Prepare) and prepared.append(msg.model_id)):
        send_frames(sock, encode(schema.ListModels(limit=1), 7))
        assert replies(sock, 1, timeout_s=5)[7].status is Status.OK
        assert len(ctl.prepares) > 0  # answered while the join's PREPAREs were still leaving
        # A request for the last model in name order: its PREPARE goes next, not last.
        infer = build_infer("m-299", sample_inputs("profile", blob), 5 * 10**9)
        send_frames(sock, encode(infer, 8))
        wait_until_true(lambda: "m-299" in prepared, timeout_s=30, what="m-299's PREPARE")
        assert prepared.index("m-299") < models // 4
        wait_until_true(lambda: len(prepared) >= models, timeout_s=30, what="every PREPARE to arrive")
        assert sorted(prepared) == [f"m-{i:03}" for i in range(models)]
        assert ctl.core.counters.get("workers_lost", 0) == 0 and ctl.core.counters["workers_joined"] == 1
