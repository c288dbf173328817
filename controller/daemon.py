"""The controller daemon: a Poller loop around the pure scheduling core.

Poll until the core's next wake-up or a message; decode; hand the event to the core or the
registry; perform the effects the core returns; tick. Every message is validated by the codec,
and anything that fails is answered with its reason code (or dropped and logged when it cannot
be answered), so no input stops the loop.

Operations (docs/operations.md): with keys both ROUTERs are CURVE servers and only admin keys may
UPLOAD or REMOVE (common/security.py); the metrics and the request log are fed from the events
and effects performed here (controller/metrics.py); systemd hears READY=1 once the sockets are
bound and the registry is loaded (workers report their own readiness, and they start after us),
then WATCHDOG=1 from this loop (common/sdnotify.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from contextlib import closing
from pathlib import Path

import zmq

from clockwork.common import schema, security
from clockwork.common.affinity import LaneCores, host_id
from clockwork.common.checks import BadMessage
from clockwork.common.clock import QueueDelay, monotonic_ns
from clockwork.common.codec import Header, decode, encode, messages, peek_id
from clockwork.common.config import ControllerConfig
from clockwork.common.models import Signature, signature_of
from clockwork.common.net import (IdSource, Outgoing, bulk_identity, recv_frames, recv_frames_from, router, send,
                                  send_frames, waiting)
from clockwork.common.sdnotify import Notifier
from clockwork.common.status import Status
from clockwork.controller import listing
from clockwork.controller.core import Core
from clockwork.controller.policy import ClockworkPolicy
from clockwork.controller.effects import ActionRecord, PrepareOn, ToClient, ToWorker, UploadFinished, WorkerLost
from clockwork.controller.intake import Checked, Intake
from clockwork.controller.metrics import ControllerTelemetry
from clockwork.controller.prepare_queue import PrepareQueue
from clockwork.controller.registry import ModelRecord, Registry
from clockwork.common.shedding import InputShedder

BURST = 512  # messages taken from one socket before looking at the other and ticking
# ... or this long, whichever comes first. A message may be a bundle of many requests: bounded
# by count alone, a drain behind a backlog once ran for half a second without planning, the
# devices went idle, queues and replicas grew, and the controller never caught up (at 20,000
# requests/s most runs collapsed to 18-55% within the SLO, with ~250 LOADs of new replicas).
# 4 ms keeps planning (5 ms ahead) fed and input flowing.
DRAIN_BUDGET_NS = 4_000_000
PREPARE_BUDGET_NS = 2_000_000  # of queued PREPAREs a loop turn sends (at least one)
INTAKE_POLL_MS = 10  # how soon a large upload's finished check is picked up
MIN_POLL_MS = 1  # floor on the sleep, so a wake-up that changes nothing cannot spin hot
MAX_POLL_MS = 100.0  # ceiling, so a stop request is noticed promptly
# The look-ups a client resends while no reply has come (client/protocol.py `_admin`).
RESENT_LOOKUPS = (schema.ListModels, schema.GetModel, schema.GetStatus)


def _frames_no_user(sock: zmq.Socket, flags: int) -> tuple[list, None]:
    """A message's frames as `recv_frames_from` gives them, without CURVE: no user to name."""
    return recv_frames(sock, flags), None


class ControllerDaemon:
    def __init__(self, config: ControllerConfig, log):
        self.cfg = config
        self.log = log
        self.ctx = zmq.Context.instance()
        self.keys = security.for_controller(config, log)  # None: loopback only, everyone is admin
        self.auth = security.Authenticator(self.ctx, self.keys, log) if self.keys else None  # before binding
        self.telemetry = ControllerTelemetry(config)
        self.notify = Notifier.from_env()
        self.clients = router(self.ctx, config.client_endpoint, max_msg_bytes=2 * config.max_model_bytes,
                              secure=self._secure(security.CLIENTS_DOMAIN))
        self.workers = router(self.ctx, config.worker_endpoint, max_msg_bytes=2 * config.max_model_bytes,
                              handover=True, secure=self._secure(security.WORKERS_DOMAIN))
        self.registry = Registry(config.state_dir)
        self.intake = Intake(self.registry, Path(config.state_dir) / "incoming")
        self._other_versions: set[str] = set()  # workers refused for their protocol version (logged once)
        scheduler = config.scheduler
        if self.telemetry.action_log.enabled:  # the core emits action rows only when someone logs them
            scheduler = dataclasses.replace(scheduler, record_actions=True)
        self.core = Core(scheduler, ClockworkPolicy(), host=host_id())
        for record in self.registry.all():
            self.core.add_model(record.name, record.format, record.signature)
        self.ids = IdSource()
        # Replies and actions leave in bundles: one ZeroMQ message per peer and unit of work.
        self.to_clients = Outgoing(self.clients)
        self.to_workers = Outgoing(self.workers)
        self.prepares = PrepareQueue()
        self._lookups: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # (client, msg_id) -> answered at
        self.queue_delay = QueueDelay()  # time each client's requests spent in queues before us
        self.lane_cores = LaneCores() if config.avoid_lane_cores else None  # workers' lanes on this host
        self.shedder = InputShedder(config.shed_lag_ns, config.shed_interval_ns)
        self.stopping = False
        self._status_line = "starting"
        # What each message and effect is handled by (a message of another type is refused).
        self._client_handlers = {
            schema.Infer: self._on_infer, schema.Upload: self._on_upload, schema.Remove: self._on_remove,
            schema.ListModels: self._on_list, schema.GetModel: self._on_get_model, schema.GetStatus: self._on_status,
            schema.Cancel: self._on_cancel,
        }
        self._worker_handlers = {
            schema.Result: self._on_result, schema.Heartbeat: self._on_heartbeat, schema.Prepared: self._on_prepared,
            schema.Hello: self._on_hello, schema.Error: self._on_worker_error,
        }
        self._effect_handlers = {
            ToWorker: self._send_action, ToClient: self._send_reply, PrepareOn: self.prepares.add,
            UploadFinished: self._upload_finished, ActionRecord: self.telemetry.on_action_record,
            WorkerLost: self._worker_lost,
        }
        self.log.info("controller ready", clients=config.client_endpoint, workers=config.worker_endpoint,
                      models=len(self.core.models), state_dir=config.state_dir, curve=self.keys is not None,
                      metrics=self.telemetry.server and f"{self.telemetry.server.host}:{self.telemetry.server.port}")

    def _secure(self, domain: str):
        keys = self.keys
        return keys and (lambda sock: security.make_server(sock, keys, domain))

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers, zmq.POLLIN)
        while not self.stopping:
            now = monotonic_ns()
            # Whole milliseconds (pyzmq truncates fractions, and poll(0) would spin): a timer
            # a fraction of a millisecond late costs nothing, as planning runs 5 ms ahead.
            wait_ms = min(MAX_POLL_MS, max(MIN_POLL_MS, math.ceil((self.core.next_wakeup_ns(now) - now) / 1e6)))
            if self.intake.checking:
                wait_ms = min(wait_ms, INTAKE_POLL_MS)
            if self.prepares:
                wait_ms = 0
            ready = dict(poller.poll(wait_ms))
            for checked in self.intake.finished():
                self._checked(checked)
            started = monotonic_ns()
            if self.workers in ready:
                self._drain(self.workers, self._on_worker)
            if self.clients in ready:
                self._drain(self.clients, self._on_client, roles=self.keys is not None)
            if monotonic_ns() - started > self.cfg.scheduler.heartbeat_interval_ns:
                # A handler held the loop (an upload's check and store on a busy disk): read the
                # heartbeats that came meanwhile, so that the tick does not find workers silent
                # whose heartbeats wait unread in the socket, and drop them.
                self._drain(self.workers, self._on_worker)
            self._perform(self.core.tick(monotonic_ns()))
            self._flush()
            if self.prepares:
                self._send_prepares()
            self._housekeeping(monotonic_ns())

    def _housekeeping(self, now: int) -> None:
        """Once a second: metrics gauges, log flushes, systemd's STATUS, abandoned chunked uploads;
        the watchdog when due."""
        if self.telemetry.due(now):
            self.intake.expire(now)
            status = self.core.status(now) if self.telemetry.enabled or self.notify.enabled else {}
            self.telemetry.refresh(status, now)
            counters = status.get("counters", {})
            self._status_line = (f"{len(status.get('workers', ()))} workers, {len(self.core.models)} models, "
                                 f"{counters.get('answered_ok', 0)} requests served")
        self.notify.tick(now, ready=True, status=self._status_line)

    def close(self) -> None:
        self.notify.stopping()
        self.clients.close(0)
        self.workers.close(0)
        self.registry.close()
        self.telemetry.close()
        if self.auth is not None:
            self.auth.stop()
        self.notify.close()

    def _drain(self, sock: zmq.Socket, handler, roles: bool = False) -> None:
        """Up to BURST ZeroMQ messages or DRAIN_BUDGET_NS, each a message or a bundle of them;
        what answers one leaves together (the outgoing bundles are flushed after each)."""
        until_ns = monotonic_ns() + DRAIN_BUDGET_NS
        for frames, user in waiting(sock, BURST, recv_frames_from if roles else _frames_no_user):
            if len(frames) < 2:
                continue  # a ROUTER always prepends the identity; nothing to answer
            peer = bytes(frames[0])
            try:
                parts = messages(frames[1:])
            except BadMessage as exc:  # a bundle whose parts cannot be told apart: none is answered
                self.log.warning("bad bundle", status=exc.status.name, detail=exc.detail)
                send(sock, schema.Error(status=exc.status, detail=exc.detail), self.ids.next(), 0, monotonic_ns(),
                     identity=peer)
                continue
            for head, part in parts:
                try:
                    handler(peer, part, head, user)
                except Exception:  # our bug: log loudly, keep serving everyone else
                    self.log.exception("handler failed")
            self._flush()
            if monotonic_ns() > until_ns:
                return

    def _flush(self) -> None:
        for outgoing in (self.to_clients, self.to_workers):
            try:
                outgoing.flush()
            except zmq.ZMQError:  # not a vanished peer (send_frames absorbs that): log, serve on
                self.log.exception("send failed")

    # ------------------------------------------------------------------ clients

    def _on_client(self, client: bytes, frames: list, head: dict | Header | None, user: str | None) -> None:
        now = monotonic_ns()
        waited = self._waited_or_refused(client, head, now)
        if waited is None:
            return
        try:
            env = decode(frames, head)
        except BadMessage as exc:
            self._to_client(client, peek_id(head, "msg_id"), schema.Error(status=exc.status, detail=exc.detail))
            return
        if isinstance(env.body, RESENT_LOOKUPS) and self._answered_lately(client, env.msg_id, now):
            return
        handler = self._client_handlers.get(type(env.body))
        if handler is None:
            self._to_client(client, env.msg_id, schema.Error(
                status=Status.UNKNOWN_TYPE, detail=f"{env.body.TYPE.value!r} is not a client request"))
        else:
            handler(client, env, user, now, waited)

    def _answered_lately(self, client: bytes, msg_id: int, now: int) -> bool:
        """Whether this look-up was answered in the last `answered_memory_ns`. A client resends
        one every 250 ms while no reply has come, so behind a busy loop the copies pile up in
        the socket; answering each (a LIST page of thousands of models takes ~15 ms) made the
        loop busier still, and slower replies brought more copies."""
        lookups, key = self._lookups, (client, msg_id)
        while lookups and next(iter(lookups.values())) <= now - self.cfg.scheduler.answered_memory_ns:
            lookups.popitem(last=False)
        if key in lookups:
            return True
        lookups[key] = now
        return False

    def _on_infer(self, client: bytes, env: schema.Envelope, _user, now: int, waited: int) -> None:
        body = env.body
        self.telemetry.on_request(client, env.msg_id, body, body.model in self.core.models)
        if self.prepares and (model := self.core.models.get(body.model)) is not None and not model.sizes:
            self.prepares.hurry(body.model, self.core.workers)  # waited for: prepared first
        seen = self.queue_delay.local_ns(client, body.last_reply_received_ns) if body.last_reply_id else None
        self._perform(self.core.on_request(client, env.msg_id, body, now, waited, seen))

    def _admin_only(self, client: bytes, env: schema.Envelope, user: str | None) -> bool:
        """True if `user` may change the models; else the client is told so."""
        if self.keys and not self.keys.is_admin(user):
            self.log.warning("refused a non-admin key", type=env.body.TYPE.value, key=user)
            self._reply(client, env.msg_id, Status.FORBIDDEN, "only admin keys may upload or remove models")
            return False
        return True

    def _on_upload(self, client: bytes, env: schema.Envelope, user: str | None, now: int, _waited) -> None:
        if self._admin_only(client, env, user):
            self._upload(client, env.msg_id, env.body, now)

    def _on_remove(self, client: bytes, env: schema.Envelope, user: str | None, now: int, _waited) -> None:
        if self._admin_only(client, env, user):
            self._remove(client, env.msg_id, env.body.name, now)

    def _on_list(self, client: bytes, env: schema.Envelope, _user, _now, _waited) -> None:
        self._reply(client, env.msg_id, Status.OK, body=self._list(env.body))

    def _on_get_model(self, client: bytes, env: schema.Envelope, _user, _now, _waited) -> None:
        record = self.registry.get(env.body.name)
        if record is None:
            self._reply(client, env.msg_id, Status.MODEL_NOT_FOUND, f"no model named {env.body.name!r}")
        else:
            self._reply(client, env.msg_id, Status.OK, body=self._model_info(record))

    def _on_status(self, client: bytes, env: schema.Envelope, _user, now: int, _waited) -> None:
        status = self.core.status(now, env.body.models_limit)
        if self.lane_cores is not None:  # so that a gateway on this host keeps off them too
            status["lane_cores"] = {"host": self.lane_cores.host, "cores": sorted(self.lane_cores.held())}
        self._reply(client, env.msg_id, Status.OK, body=listing.fit_status(status))

    def _on_cancel(self, client: bytes, env: schema.Envelope, _user, now: int, _waited) -> None:
        cancelled, detail, effects = self.core.on_cancel(client, env.body.request_id, now)
        self._perform(effects)
        self._reply(client, env.msg_id, Status.OK, detail, {"cancelled": cancelled})

    def _waited_or_refused(self, client: bytes, head: dict | Header | None, now: int) -> int | None:
        """How long an INFER waited in queues (0 for other messages), from its header alone
        (unvalidated: every value is type-checked here); None once one that waited
        `refuse_after_waiting` of its SLO or more has been refused without a full decode."""
        if head is None or head.get("type") != "infer" or type(head.get("sent_ns")) is not int:
            return 0
        waited = self.queue_delay.waited_ns(client, head.get("sent_ns"), now)
        slo_ns, msg_id = head.get("slo_ns"), head.get("msg_id")
        if type(slo_ns) is not int or type(msg_id) is not int or not 0 <= msg_id <= schema.U64:
            return waited  # the full decode says what is wrong
        if 0 < slo_ns * self.cfg.refuse_after_waiting <= waited:
            self._perform(self.core.refuse_stale(client, msg_id, waited, slo_ns))
            return None
        if self.shedder.shed(waited, now):
            self._perform(self.core.refuse_shed(client, msg_id, waited))
            return None
        return waited

    def _upload(self, client: bytes, msg_id: int, msg: schema.Upload, now: int) -> None:
        size = msg.total_bytes or len(msg.blob)
        if size > self.cfg.max_model_bytes:
            self._reply(client, msg_id, Status.TOO_LARGE, f"{size} bytes exceed the limit of {self.cfg.max_model_bytes}")
        elif msg.name in self.intake.checking:
            self._reply(client, msg_id, Status.BUSY, f"an upload of {msg.name!r} is being checked; retry")
        elif msg.total_bytes:  # a chunk: the last one goes on like a large upload (_checked follows)
            chunk = self.intake.chunk(client, msg_id, msg, now)
            if chunk.error is not None:
                self._reply(client, msg_id, chunk.error.status, chunk.error.detail)
            elif chunk.complete:
                self.log.info("checking a large model", model=msg.name, bytes=msg.total_bytes, chunked=True)
            else:
                self._reply(client, msg_id, Status.OK, body={"received": chunk.received})
        elif self.intake.wants(msg):
            self.log.info("checking a large model", model=msg.name, bytes=len(msg.blob))
            self.intake.submit(client, msg_id, msg)  # _register follows in the loop once it is checked
        else:
            try:
                signature = signature_of(msg.format, msg.blob, msg.input_shapes, msg.max_batch)
            except BadMessage as exc:
                self._reply(client, msg_id, exc.status, exc.detail)
                return
            self._register(client, msg_id, msg, len(msg.blob), signature, None, now)

    def _checked(self, checked: Checked) -> None:
        if checked.error is not None:
            self.log.info("large model refused", model=checked.msg.name, status=checked.error.status.name)
            self._reply(checked.client, checked.msg_id, checked.error.status, checked.error.detail)
        else:
            self._register(checked.client, checked.msg_id, checked.msg, checked.size_bytes, checked.signature,
                           checked.digest, monotonic_ns())

    def _register(self, client: bytes, msg_id: int, msg: schema.Upload, size_bytes: int, signature: Signature,
                  digest: str | None, now: int) -> None:
        """Record a checked model (its bytes stored already when `digest` is given) and have
        the workers prepare it."""
        refusal = self._name_refusal(msg, now)
        if refusal is not None:
            if digest is not None:
                self.registry.release(digest)
            self._reply(client, msg_id, *refusal)
            return
        digest = digest if digest is not None else self.registry.store(msg.blob)
        self.registry.add_stored(msg.name, msg.format, digest, size_bytes, msg.input_shapes, msg.max_batch,
                                 signature, replace=True)
        self.log.info("model uploaded", model=msg.name, format=msg.format, bytes=size_bytes)
        self._perform(self.core.on_upload(msg.name, msg.format, signature, client, msg_id, now))

    def _name_refusal(self, msg: schema.Upload, now: int) -> tuple[Status, str] | None:
        """Why the name cannot take this upload, or None (a model it replaces is removed)."""
        if msg.name not in self.core.models:
            return None
        if not msg.replace:
            return Status.MODEL_EXISTS, (f"{msg.name!r} exists; upload it with replace=True "
                                         "(clockwork upload --replace) to overwrite it")
        status, effects = self.core.on_remove(msg.name, now)
        if status is not Status.OK or msg.name in self.core.models:
            return Status.BUSY, f"{msg.name!r} still has work in flight; retry"
        self._perform(effects)
        return None

    def _remove(self, client: bytes, msg_id: int, name: str, now: int) -> None:
        status, effects = self.core.on_remove(name, now)
        if status is Status.OK:
            self.registry.remove(name)
            self.log.info("model removed", model=name)
        self._perform(effects)
        self._reply(client, msg_id, status, "" if status is Status.OK else f"no model named {name!r}")

    def _list(self, msg: schema.ListModels) -> dict:
        """One page, its ModelInfos made only for the models that fit (the query asks for one
        more than the limit, so that a full page knows whether another follows)."""
        limit = msg.limit or schema.MAX_LIST_PAGE
        with closing(self.registry.page(msg.prefix, msg.after, limit + 1)) as records:
            return listing.page(map(self._model_info, records), limit, self.registry.count(msg.prefix))

    def _model_info(self, record: ModelRecord) -> dict:
        return {**record.info(), **self.core.model_info(record.name)}

    def _reply(self, client: bytes, request_id: int, status: Status, detail: str = "", body: dict | None = None):
        self._to_client(client, request_id, schema.Reply(status=status, detail=detail, body=body or {}))

    def _to_client(self, client: bytes, request_id: int, body: schema.Message) -> None:
        try:
            frames = encode(body, self.ids.next(), request_id, monotonic_ns())
        except BadMessage as exc:  # over the header limit: the client could not read it, so say why
            self.log.error("reply too large", type=body.TYPE.value, detail=exc.detail)
            detail = f"{exc.detail}, so it was not sent; ask for less (a smaller LIST page or STATUS models_limit)"
            frames = encode(schema.Error(status=exc.status, detail=detail), self.ids.next(), request_id, monotonic_ns())
        self.to_clients.add(client, frames)

    # ------------------------------------------------------------------ workers

    def _on_worker(self, identity: bytes, frames: list, head: dict | Header | None, _user: str | None
                   ) -> None:
        name = identity.decode("latin-1")  # bijective, so the name maps back to the identity
        try:
            env = decode(frames, head)
        except BadMessage as exc:
            if exc.status is not Status.UNSUPPORTED_VERSION or name not in self._other_versions:
                self.log.warning("bad message from worker", worker=name, status=exc.status.name, detail=exc.detail)
            if exc.status is Status.UNSUPPORTED_VERSION:  # it retries its HELLO: said once is enough
                self._other_versions.add(name)
            send(self.workers, schema.Error(status=exc.status, detail=exc.detail), self.ids.next(),
                 peek_id(head, "msg_id"), monotonic_ns(), identity=identity)
            return
        handler = self._worker_handlers.get(type(env.body))
        now = monotonic_ns()
        if handler is None:
            send(self.workers, schema.Error(status=Status.UNKNOWN_TYPE,
                                            detail=f"{env.body.TYPE.value!r} is not a worker message"),
                 self.ids.next(), env.msg_id, now, identity=identity)
        else:
            handler(name, env, now)

    def _on_result(self, name: str, env: schema.Envelope, now: int) -> None:
        self.telemetry.on_result(name, env.parent_id, env.body, now)
        self._perform(self.core.on_result(name, env.parent_id, env.body, now))

    def _on_heartbeat(self, name: str, env: schema.Envelope, now: int) -> None:
        self._perform(self.core.on_heartbeat(name, env.msg_id, env.sent_ns, env.body.lanes_alive, now, env.body.unheard_ns))

    def _on_prepared(self, name: str, env: schema.Envelope, now: int) -> None:
        body = env.body
        # Every model is prepared again on each join: with thousands registered, a line each at
        # info buried the rest. Those a client's upload waits for, and failures, stay in view.
        log = self.log.info if body.model_id in self.core.uploads else self.log.debug
        if body.status is not Status.OK:
            log = self.log.warning
        log("model prepared", worker=name, model=body.model_id, status=body.status.name, detail=body.detail)
        self._perform(self.core.on_prepared(name, body, now))

    def _on_hello(self, name: str, env: schema.Envelope, now: int) -> None:
        body = env.body
        self.log.info("worker joined", worker=name, runtime=body.runtime, devices=len(body.devices))
        if self.lane_cores is not None:
            self._cores_changed(self.lane_cores.joined(name, body.host, body.lane_cores))
        self._perform(self.core.on_hello(name, body, now))

    def _worker_lost(self, lost: WorkerLost) -> None:
        self.log.warning("worker lost", worker=lost.worker, why=lost.why)
        self.prepares.forget_worker(lost.worker)
        if self.lane_cores is not None:
            self._cores_changed(self.lane_cores.left(lost.worker))

    def _cores_changed(self, cores: set[int] | None) -> None:
        """Say so when a worker joining or lost moved this process to other cores."""
        if cores is not None:
            self.log.info("running on cores the workers' EXEC lanes on this host leave free",
                          cores=sorted(cores), lanes=sorted(self.lane_cores.held()))

    def _on_worker_error(self, name: str, env: schema.Envelope, _now: int) -> None:
        self.log.warning("worker reported an error", worker=name, status=env.body.status.name, detail=env.body.detail)

    # ------------------------------------------------------------------ effects

    def _perform(self, effects: list) -> None:
        handlers = self._effect_handlers
        for effect in effects:
            handlers[type(effect)](effect)

    def _send_action(self, effect: ToWorker) -> None:
        self.telemetry.on_action(effect)
        self.to_workers.add(effect.worker.encode("latin-1"), encode(effect.body, effect.msg_id, effect.parent_id,
                                                                   monotonic_ns()))

    def _send_reply(self, effect: ToClient) -> None:
        if isinstance(effect.body, schema.InferReply):
            self.telemetry.on_reply(effect.client, effect.request_id, effect.body, monotonic_ns())
        self._to_client(effect.client, effect.request_id, effect.body)

    def _send_prepares(self) -> None:
        """Queued PREPAREs for up to PREPARE_BUDGET_NS (at least one), then back to the loop, so
        that a worker joining with thousands of models holds up no heartbeat or client."""
        until_ns = monotonic_ns() + PREPARE_BUDGET_NS
        while (prepare := self.prepares.next()) is not None:
            self._prepare(prepare)
            if monotonic_ns() > until_ns:
                break
        self._flush()

    def _prepare(self, effect: PrepareOn) -> None:
        record = self.registry.get(effect.model)
        if record is None:
            return
        try:
            blob = self.registry.blob(record.sha256)
        except OSError as exc:  # the file is gone: this model cannot be prepared, the others can
            self.log.error("model file unreadable", model=record.name, detail=str(exc))
            self._perform(self.core.on_prepared(effect.worker, schema.Prepared(
                model_id=record.name, status=Status.BAD_MODEL,
                detail=f"the controller cannot read the model's file: {exc}"), monotonic_ns()))
            return
        msg = schema.Prepare(model_id=record.name, format=record.format, input_shapes=record.input_shapes,
                             max_batch=record.signature.max_batch, sha256=record.sha256, blob=blob)
        frames = encode(msg, effect.msg_id, 0, monotonic_ns())
        identity = effect.worker.encode("latin-1")
        # On the worker's bulk connection, so that the bytes never hold up its actions; where that
        # is not connected (yet: a worker just joining), with the actions (docs/protocol.md).
        if not send_frames(self.workers, frames, bulk_identity(identity)):
            self.to_workers.add(identity, frames)

    def _upload_finished(self, effect: UploadFinished) -> None:
        record = self.registry.get(effect.model)
        info = self._model_info(record) if record else {"name": effect.model}
        if effect.status is not Status.OK:
            self.registry.remove(effect.model)
            self.log.warning("upload refused", model=effect.model, status=effect.status.name, detail=effect.detail)
        self._reply(effect.client, effect.request_id, effect.status, effect.detail, {"model": info})
