"""The worker's daemon shell: two sockets to the controller, a Poller loop, nothing decided here.

The second socket (common/net.py: bulk_identity) only receives PREPAREs: a model's bytes on a
connection of their own never hold up the timed actions on the first. A PREPARE and a DROP of one
model may so arrive out of order; the controller's ids grow, so the larger id is the newer
(`_is_newest`). The loop (the only thread that touches the sockets) does four things:
- joins: HELLO every second until WELCOME, again whenever the controller says WORKER_LOST;
- heartbeats every interval with `lanes_alive`, and turns each HEARTBEAT_ACK into a skew sample;
- decodes each message and hands it to its device's lane or to the prepare thread, translating
  windows from the controller's clock to ours;
- sends what the lanes and the prepare thread finished. They never touch the socket (ZeroMQ
  sockets are not thread-safe): they put results on the `Outbox`, a queue plus a pipe whose
  read end sits in the Poller, so the loop wakes the moment a result is ready.
Each timer also tells systemd and the metrics how the worker is doing (worker/metrics.py).
Nothing a peer sends can stop the loop: bad frames are answered with ERROR or logged and dropped.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any, Callable

import zmq

from clockwork.common import schema, security
from clockwork.common.affinity import KeptOff, host_id
from clockwork.common.checks import BadMessage
from clockwork.common.clock import SkewEstimator, monotonic_ns
from clockwork.common.codec import Header, bundles, decode, encode, messages, peek_id, peek_map
from clockwork.common.config import WorkerConfig
from clockwork.common.net import NOBLOCK, IdSource, bulk_identity, dealer, send_frames, waiting
from clockwork.common.schema import (ActionKind, Drop, Envelope, Error, Exec, Hello, Heartbeat, HeartbeatAck, Load, Message, Prepare,
                           Result, Unload, Welcome)
from clockwork.common.status import Status
from clockwork.worker.device import Device, Done, Ran, drop_model
from clockwork.worker.outbox import Outbox
from clockwork.worker.metrics import WorkerTelemetry
from clockwork.worker.runtimes.base import Runtime
from clockwork.worker.store import ModelStore, Preparer, remove_stale_spools

HELLO_RETRY_NS = 1_000_000_000  # until WELCOME arrives
# How often the worker looks again at the lane cores claimed on its host: a worker started
# later may claim a core this one's threads run on.
LANE_CORES_CHECK_NS = 5_000_000_000
MAX_RECV_PER_WAKE = 256  # then look at the outbox, so results never wait behind a flood
MAX_DETAIL = 4096


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Daemon:
    def __init__(self, config: WorkerConfig, runtime: Runtime, log: Any, ctx: zmq.Context | None = None):
        self.config = config
        self.name = config.name or default_name()
        self.runtime = runtime
        self.log = log
        self.skew = SkewEstimator()
        self.ids = IdSource()
        self.kept_off = KeptOff()  # before any thread starts: they inherit the main thread's cores
        self.kept_off.follow(runtime.lane_cores_on_host())
        self._lane_cores_check_ns = monotonic_ns() + LANE_CORES_CHECK_NS
        self.outbox = Outbox()
        self.store = ModelStore()
        self.devices = {info.device_id: Device(info, config.page_bytes, runtime, self.store, self.outbox.put, log)
                        for info in runtime.devices()}
        remove_stale_spools()
        self.preparer = Preparer(runtime, self.store, self._profile_on_device0,
                                 lambda body, parent: self.outbox.put((body, parent)), config.profile_runs, log)
        self._ctx = ctx or zmq.Context.instance()
        keys = security.for_worker(config, log)  # before connecting: no keys, loopback only
        secure = keys and (lambda sock: security.make_client(sock, keys))
        self._sock, self._bulk = (dealer(self._ctx, config.controller, identity, secure=secure,
                                         max_msg_bytes=schema.MAX_MODEL_BYTES + schema.MAX_HEADER_BYTES)
                                  for identity in (self.name.encode(), bulk_identity(self.name.encode())))
        self.telemetry = WorkerTelemetry(config, log=log, handshakes=self._sock if keys else None)
        self._welcomed = False
        self._ever_welcomed = False
        self._version_refused = False  # the controller refused our protocol version (logged once)
        self._heartbeat_ns = 0
        self._heard_ns = 0  # when the controller was last heard from (0: never)
        self._next_timer_ns = 0  # next HELLO retry or heartbeat
        self._hellos: dict[int, int] = {}  # HELLO msg_id -> sent_ns, for a skew sample from WELCOME
        self._last_hello_id = 0  # a WORKER_LOST answering an older message is stale (see on_error)
        self._lane_end_ns: dict[tuple[int, bool], int] = {}  # (device, is exec lane) -> last end, remote
        self._newest: dict[str, int] = {}  # model_id -> msg_id of the newest PREPARE or DROP of it
        self._stopping = False
        self._handlers: dict[type, Callable[[Envelope], None]] = {
            Welcome: self.on_welcome, HeartbeatAck: self.on_heartbeat_ack, Error: self.on_error,
            Prepare: self.on_prepare, Load: self.on_load, Unload: self.on_unload, Exec: self.on_exec,
            Drop: self.on_drop,
        }

    def _profile_on_device0(self, fn):
        return self.devices[0].run_exclusive(fn).result()

    # ---------------------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """Serve until stop() is called (from a signal handler or another thread)."""
        for device in self.devices.values():
            device.start()
        self.preparer.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._bulk, zmq.POLLIN)
        outbox = self.outbox.fileno()
        poller.register(outbox, zmq.POLLIN)
        try:
            while not self._stopping:
                timeout_ms = max(0, (self._next_timer_ns - monotonic_ns()) // 1_000_000 + 1)
                events = dict(poller.poll(timeout_ms))
                for sock in (self._sock, self._bulk):
                    if sock in events:
                        self._receive(sock)
                if outbox in events:  # else nothing waits: a put writes its wake-up before the poll
                    self._flush_outbox()
                if monotonic_ns() >= self._next_timer_ns:
                    self._on_timer(monotonic_ns())
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the loop to end; safe from signal handlers and other threads."""
        self._stopping = True
        self.outbox.wake()

    def _shutdown(self) -> None:
        self.telemetry.stopping()
        for device in self.devices.values():
            device.stop()  # each lane finishes its job and runs runtime.lane_stopped on its thread
        self.preparer.stop()
        try:
            self.runtime.close()
        except Exception:
            self.log.exception("runtime close failed")
        shutil.rmtree(self.preparer.spool_dir, ignore_errors=True)
        self._sock.close(linger=0)
        self._bulk.close(linger=0)
        self.outbox.close()
        self.telemetry.close()
        self.log.info("worker stopped", worker=self.name)

    # ---------------------------------------------------------------------------- timers

    def _on_timer(self, now_ns: int) -> None:
        if now_ns >= self._lane_cores_check_ns:
            self._lane_cores_check_ns = now_ns + LANE_CORES_CHECK_NS
            moved = self.kept_off.follow(self.runtime.lane_cores_on_host(), self.runtime.pinned_threads())
            if moved is not None:
                self.log.info("threads moved off the host's lane cores", cores=sorted(moved))
        healthy = self.lanes_alive(now_ns)
        if not self._welcomed:
            self._send_hello()
            self._next_timer_ns = now_ns + HELLO_RETRY_NS
        else:
            self._send(Heartbeat(lanes_alive=healthy, unheard_ns=monotonic_ns() - self._heard_ns if self._heard_ns else 0))
            self._next_timer_ns = now_ns + self._heartbeat_ns
        self.telemetry.tick(now_ns, self._welcomed, healthy, self.devices.values(), len(self.store), self.skew)

    def lanes_alive(self, now_ns: int) -> bool:
        return self.preparer.alive() and all(d.healthy(now_ns) for d in self.devices.values())

    def hello(self) -> Hello:
        devices = [{"device_id": d.device_id, "kind": d.info.kind, "memory_bytes": d.info.memory_bytes,
                    "page_bytes": self.config.page_bytes} for d in self.devices.values()]
        return Hello(worker=self.name, runtime=self.runtime.name, formats=tuple(self.runtime.formats),
                     devices=tuple(devices), host=host_id(), lane_cores=tuple(sorted(self.runtime.reserved_cores())))

    def _send_hello(self) -> None:
        msg_id, sent_ns = self._send(self.hello())
        self._last_hello_id = msg_id
        self._hellos = {k: v for k, v in self._hellos.items() if sent_ns - v < 10 * HELLO_RETRY_NS}
        self._hellos[msg_id] = sent_ns

    # ---------------------------------------------------------------------------- inbound

    def _receive(self, sock: zmq.Socket) -> None:
        for frames in waiting(sock, MAX_RECV_PER_WAKE):
            self._on_frames(frames)

    def _on_frames(self, frames: list) -> None:
        """One ZeroMQ message: a message, or a bundle of them (each handled on its own)."""
        try:
            parts = messages(frames)
        except BadMessage as exc:
            self._refuse(frames, exc.status, exc.detail)
            return
        for head, part in parts:
            self._on_message(part, head)

    def _on_message(self, frames: list, head: dict | Header | None) -> None:
        try:
            env = decode(frames, head)
        except BadMessage as exc:
            self._refuse(frames, exc.status, exc.detail)
            return
        self._heard_ns = monotonic_ns()  # for the heartbeats' unheard_ns
        handler = self._handlers.get(type(env.body))
        if handler is None:
            self._send(Error(status=Status.BAD_MESSAGE, detail=f"a worker does not handle {env.body.TYPE.value!r}"),
                       env.msg_id)
            return
        try:
            handler(env)
        except Exception:  # our bug: logged loudly, but one message never stops the worker
            self.log.exception("handler failed", type=env.body.TYPE.value, msg_id=env.msg_id)
            self._send(Error(status=Status.INTERNAL, detail="the worker failed handling this message"), env.msg_id)

    def _refuse(self, frames: list, status: Status, detail: str) -> None:
        header = peek_map(frames) or {}
        msg_type, msg_id = header.get("type"), peek_id(header, "msg_id")
        self.log.warning("bad message", status=status.name, detail=detail[:300], type=msg_type)
        if msg_type != schema.MsgType.ERROR.value:  # never answer an error with an error
            self._send(Error(status=status, detail=detail[:MAX_DETAIL]), msg_id)

    def on_welcome(self, env: Envelope) -> None:
        sent_ns = self._hellos.pop(env.parent_id, None)
        if sent_ns is not None:
            self.skew.add(sent_ns, env.sent_ns, monotonic_ns())
        same_host = bool(env.body.host) and env.body.host == host_id()
        self.skew.same_host(same_host)
        if same_host:
            self.log.info("controller on this host: one clock, unless the skew measured says otherwise",
                          same_clock=self.skew.same_clock)
        self._heartbeat_ns = env.body.heartbeat_interval_ns
        self._next_timer_ns = monotonic_ns() + self._heartbeat_ns
        if not self._welcomed:
            self._welcomed = True
            event = "worker rejoined" if self._ever_welcomed else "worker ready"
            self._ever_welcomed = True
            self.log.info(event, worker=self.name, runtime=self.runtime.name, devices=len(self.devices),
                          controller=self.config.controller, heartbeat_interval_ns=self._heartbeat_ns)

    def on_heartbeat_ack(self, env: Envelope) -> None:
        self.skew.add(env.body.echo_sent_ns, env.sent_ns, monotonic_ns())

    def on_error(self, env: Envelope) -> None:
        body: Error = env.body
        if body.status is Status.WORKER_LOST:
            if 0 < env.parent_id < self._last_hello_id:
                # It answers what we sent before our latest HELLO (heartbeats queued while a
                # controller restarted): that HELLO already joins us again. Taken as news, each
                # such answer made another HELLO, and the controller dropped and re-prepared us
                # for each one.
                return
            self.log.warning("controller lost us; joining again", detail=body.detail)
            self._welcomed = False
            self._next_timer_ns = 0
            self._newest.clear()  # a restarted controller numbers its messages from another random base
            self._release_everything()
        elif body.status is Status.UNSUPPORTED_VERSION:
            if not self._version_refused:  # it answers every HELLO so: said once is enough
                self.log.error("the controller speaks another protocol version; upgrade one of them (joining "
                               "is retried)", detail=body.detail, proto_version=schema.PROTO_VERSION)
            self._version_refused = True
        else:
            self.log.warning("controller error", status=body.status.name, detail=body.detail, parent_id=env.parent_id)

    def _release_everything(self) -> None:
        """A clean slate before joining again: the controller plans each device as empty, so
        every resident model is released (on the LOAD lanes, ahead of any LOAD the controller
        sends after WELCOME). Prepared models stay in the store: PREPARE finds them there."""
        for device in self.devices.values():
            for model_id in device.resident_ids():
                device.submit_drop(model_id)

    def on_prepare(self, env: Envelope) -> None:
        """Handed over as it came: the prepare thread hashes the bytes, spools a large model to a
        file and drops the message's frame, off this loop (a gigabyte is seconds of I/O)."""
        if not self._is_newest(env):  # a newer PREPARE of this name came first: its bytes stand
            self.log.info("older prepare ignored", model_id=env.body.model_id, msg_id=env.msg_id)
            return
        self.telemetry.on_prepare()
        self.preparer.submit(env.msg_id, env.body)

    def on_load(self, env: Envelope) -> None:
        m: Load = env.body
        if (device := self._device(env)) is not None:
            device.submit_load(env.msg_id, m.model_id, self.skew.to_local(m.earliest_ns),
                               self.skew.to_local(m.latest_ns), m.expected_ns)

    def on_unload(self, env: Envelope) -> None:
        m: Unload = env.body
        if (device := self._device(env)) is not None:
            device.submit_unload(env.msg_id, m.model_id, self.skew.to_local(m.earliest_ns),
                                 self.skew.to_local(m.latest_ns))

    def on_exec(self, env: Envelope) -> None:
        m: Exec = env.body
        if (device := self._device(env)) is not None:
            device.submit_exec(env.msg_id, m.model_id, m.batch_size, m.tensors, self.skew.to_local(m.earliest_ns),
                               self.skew.to_local(m.latest_ns), m.expected_ns)

    def on_drop(self, env: Envelope) -> None:
        """Unload everywhere and forget; a DROP older than a PREPARE already here (the name
        uploaded again) only unloads: the store keeps the newer bytes."""
        model_id = env.body.model_id
        known = drop_model(self.store if self._is_newest(env) else None, self.devices.values(), model_id)
        self.log.info("model dropped", model_id=model_id, was_prepared=known)

    def _is_newest(self, env: Envelope) -> bool:
        """Whether this PREPARE or DROP is newer than any of its model seen (then noted as such).
        PREPAREs come on the bulk connection, DROPs on the other, so one can overtake the other."""
        model_id = env.body.model_id
        if env.msg_id < self._newest.get(model_id, 0):
            return False
        self._newest[model_id] = env.msg_id
        return True

    def _device(self, env: Envelope) -> Device | None:
        device = self.devices.get(env.body.device_id)
        if device is None:
            self._send(Result(action=env.body.ACTION, status=Status.BAD_INPUT, device_id=env.body.device_id,
                              model_id=env.body.model_id, detail=f"this worker has no device {env.body.device_id}; "
                              f"it has {len(self.devices)}", batch_size=getattr(env.body, "batch_size", 0)), env.msg_id)
        return device

    # ---------------------------------------------------------------------------- outbound

    def _flush_outbox(self) -> None:
        """Send what the lanes and the preparer finished; several at once leave as one bundle
        (a ZeroMQ message, and a wake-up of the controller, per flush rather than per result)."""
        now_ns = monotonic_ns()
        messages = []
        for item in self.outbox.drain():
            if isinstance(item, Ran):
                item = item.done()
            self.telemetry.on_sent(item, now_ns)
            body, parent_id = (self.result_of(item), item.parent_id) if isinstance(item, Done) else item
            messages.append(encode(body, self.ids.next(), parent_id, monotonic_ns()))
        for frames in bundles(messages):
            self._send_frames(frames)

    def result_of(self, done: Done) -> Result:
        """The RESULT for what a lane did, its times moved onto the controller's clock.

        The skew estimate improves as samples arrive, so two results translated with different
        estimates could appear to overlap by a few microseconds. A lane's actions are disjoint in
        fact, so a begin is never put before the lane's previous end; durations stay exact.
        """
        begin_ns = self.skew.to_remote(done.begin_ns)
        if done.status is not Status.TOO_LATE:  # TOO_LATE never ran, so it occupied no lane
            lane = (done.device_id, done.action is ActionKind.EXEC)
            begin_ns = max(begin_ns, self._lane_end_ns.get(lane, begin_ns))
            self._lane_end_ns[lane] = begin_ns + (done.end_ns - done.begin_ns)
        return Result.build(action=done.action, status=done.status, detail=done.detail[:MAX_DETAIL],
                            device_id=done.device_id, model_id=done.model_id, begin_ns=begin_ns,
                            end_ns=begin_ns + (done.end_ns - done.begin_ns), duration_ns=done.duration_ns,
                            batch_size=done.batch_size, device_ns=done.device_ns, sm_clock_mhz=done.sm_clock_mhz,
                            disturbed=done.disturbed, tensors=done.tensors)

    def _send(self, body: Message, parent_id: int = 0) -> tuple[int, int]:
        msg_id, sent_ns = self.ids.next(), monotonic_ns()
        self._send_frames(encode(body, msg_id, parent_id, sent_ns))
        return msg_id, sent_ns

    def _send_frames(self, frames: list) -> None:
        if not send_frames(self._sock, frames, flags=NOBLOCK):  # the controller is gone and the queue is full
            self.log.warning("send dropped", frames=len(frames))  # it will resync us
