"""A worker's telemetry: Prometheus metrics, and its state as told to systemd (sd_notify).

The daemon hands over each PREPARE it accepts (`on_prepare`) and everything it sends from the
outbox (`on_sent`: lanes' `Done` records and the preparer's replies), and calls `tick` from its
timer (every HELLO retry or heartbeat: at least once a second). Lanes and the preparer never
touch this object: only the loop's thread does.

systemd: READY=1 once the controller has welcomed us and no PREPARE is in progress. `tick` runs
first one heartbeat after WELCOME, and the controller sends its PREPAREs right behind WELCOME,
so by then they have arrived (a very large model on a slow link may still be in transit: it is
then prepared after READY, which is safe - the controller sends work for a model only to workers
that have answered its PREPARE). WATCHDOG=1 only while every lane and the preparer are healthy
(`Daemon.lanes_alive`), so a stuck lane gets the worker restarted.

With keys, the socket's CURVE handshakes are watched (a ZeroMQ monitor, read on each tick): a
controller that refuses our key, or a server key that does not match, is logged once with what
to check and shown in systemd's STATUS, instead of leaving the worker silently knocking.

Metrics (seconds, bytes, ratios; `model` bounded by metrics_max_models, `lane` is load|exec):

    clockwork_worker_actions_total{action,outcome,reason}   every LOAD/UNLOAD/EXEC answered
    clockwork_worker_action_duration_seconds{action,model}  measured duration of successful ones
    clockwork_worker_lane_busy_seconds_total{device,lane}   time the lane spent running actions
    clockwork_worker_lane_utilization_ratio{device,lane}    busy share of the last metrics_window_s
    clockwork_worker_device_memory_bytes / _used_bytes{device}  page-accounted model memory
    clockwork_worker_device_resident_models{device}
    clockwork_worker_prepares_total{outcome,reason}, clockwork_worker_prepares_pending
    clockwork_worker_models_prepared, clockwork_worker_lanes_healthy (0/1),
    clockwork_worker_connected (0/1: welcomed by the controller)
    clockwork_worker_clock_offset_seconds       the controller's clock minus ours, as estimated
    clockwork_worker_clock_uncertainty_seconds  the most it can be off: half the best round trip (0 on
                                                the controller's own host: one clock)
    clockwork_worker_controller_round_trip_seconds  the best heartbeat round trip of the estimate's window
    process_*                                               the process's CPU, memory and descriptors

Every name is the worker's own: the controller's `clockwork_device_*` series are the
controller's view of the same devices, labelled by worker. One meaning per name.
"""

from __future__ import annotations

from typing import Any, Iterable

import zmq
from prometheus_client import Counter, Gauge, Histogram
from zmq.utils.monitor import recv_monitor_message

from clockwork.common import schema
from clockwork.common.clock import SkewEstimator
from clockwork.common.config import WorkerConfig
from clockwork.common.metrics import LATENCY_BUCKETS_S, BoundedLabels, ChildCache, Server, Window, new_registry, outcome
from clockwork.common.sdnotify import Notifier
from clockwork.common.status import Status
from clockwork.worker.device import Done

S = 1e-9
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the controller refused this worker's key: is its NAME.key in the "
                                     "controller's worker_keys_dir?",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the CURVE handshake failed: is controller_public_key_file the "
                                          "controller's public key?",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the CURVE handshake failed: does the controller have keys configured?",
}


class WorkerTelemetry:
    def __init__(self, config: WorkerConfig, notify: Notifier | None = None, log: Any = None,
                 handshakes: zmq.Socket | None = None):
        self.controller = config.controller
        self.notify = notify or Notifier.from_env()
        self.log = log
        self.refused = ""  # why the last CURVE handshake failed; "" once one succeeds
        self._monitor = handshakes.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(HANDSHAKE_FAILURES)) if handshakes is not None else None
        self.enabled = bool(config.metrics_address)
        self.prepares_pending = 0
        self.registry = new_registry()
        self.model_label = BoundedLabels(config.metrics_max_models)
        self.busy = Window(config.metrics_window_s, width=1)
        self._started_ns = 0
        self._child = ChildCache()
        r = self.registry
        self.actions = Counter("clockwork_worker_actions", "Actions answered", ["action", "outcome", "reason"],
                               registry=r)
        self.duration = Histogram("clockwork_worker_action_duration_seconds", "Measured duration of actions",
                                  ["action", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.device_busy = Counter("clockwork_worker_lane_busy_seconds", "Time a lane spent running actions",
                                   ["device", "lane"], registry=r)
        self.utilization = Gauge("clockwork_worker_lane_utilization_ratio", "Busy share of a lane, last window",
                                 ["device", "lane"], registry=r)
        self.memory = Gauge("clockwork_worker_device_memory_bytes", "Model memory of a device", ["device"], registry=r)
        self.memory_used = Gauge("clockwork_worker_device_memory_used_bytes", "Model memory in use", ["device"],
                                 registry=r)
        self.resident = Gauge("clockwork_worker_device_resident_models", "Models loaded on a device", ["device"],
                              registry=r)
        self.prepares = Counter("clockwork_worker_prepares", "PREPAREs answered", ["outcome", "reason"], registry=r)
        self.pending = Gauge("clockwork_worker_prepares_pending", "PREPAREs accepted, not yet answered", registry=r)
        self.prepared = Gauge("clockwork_worker_models_prepared", "Models held in host memory", registry=r)
        self.healthy = Gauge("clockwork_worker_lanes_healthy", "1 when every lane is alive and on time", registry=r)
        self.connected = Gauge("clockwork_worker_connected", "1 when welcomed by the controller", registry=r)
        self.clock_offset = Gauge("clockwork_worker_clock_offset_seconds",
                                  "The controller's clock minus this worker's, as estimated", registry=r)
        self.clock_uncertainty = Gauge("clockwork_worker_clock_uncertainty_seconds",
                                       "The most the clock estimate can be off (0 on the controller's host)", registry=r)
        self.round_trip = Gauge("clockwork_worker_controller_round_trip_seconds",
                                "The best heartbeat round trip to the controller, of the recent ones", registry=r)
        self.server = Server(config.metrics_address, self.registry) if self.enabled else None

    def on_prepare(self) -> None:
        self.prepares_pending += 1

    def on_sent(self, item: Any, now_ns: int) -> None:
        """Something the outbox gave the loop to send: a lane's Done, or (body, parent_id)."""
        if isinstance(item, Done):
            if self.enabled:
                self._done(item, now_ns)
            return
        body = item[0]
        if isinstance(body, schema.Prepared):
            self.prepares_pending = max(0, self.prepares_pending - 1)
            if self.enabled:
                self._child(self.prepares, outcome(body.status), body.status.name).inc()

    def _done(self, done: Done, now_ns: int) -> None:
        self._child(self.actions, done.action, outcome(done.status), done.status.name).inc()
        if done.status is Status.TOO_LATE:
            return  # never ran: the lane was not busy
        lane = "exec" if done.action is schema.ActionKind.EXEC else "load"
        device = str(done.device_id)
        busy_s = max(0, done.end_ns - done.begin_ns) * S
        self._child(self.device_busy, device, lane).inc(busy_s)
        self.busy.add((device, lane), now_ns, busy_s)
        if done.status is Status.OK:
            self._child(self.duration, done.action, self.model_label(done.model_id)).observe(done.duration_ns * S)

    def tick(self, now_ns: int, connected: bool, healthy: bool, devices: Iterable[Any], models: int,
             skew: SkewEstimator | None = None) -> None:
        """From the daemon's timer: systemd, then the state gauges, the clock estimate and the
        utilisation window."""
        if self._monitor is not None:
            self._check_handshakes()
        ready = connected and self.prepares_pending == 0
        status = (f"serving {models} models" if ready else f"preparing {self.prepares_pending} models"
                  if connected else f"refused by {self.controller}: {self.refused}" if self.refused
                  else f"waiting for the controller at {self.controller}")
        self.notify.tick(now_ns, ready=ready, healthy=healthy, status=status)
        if self.enabled:
            self._refresh(now_ns, devices, connected, healthy, models)
            if skew is not None and skew.known:
                self.clock_offset.set(skew.offset_ns * S)
                self.clock_uncertainty.set(skew.uncertainty_ns * S)
                self.round_trip.set(skew.round_trip_ns * S)

    def _refresh(self, now_ns: int, devices: Iterable[Any], connected: bool, healthy: bool, models: int) -> None:
        self._started_ns = self._started_ns or now_ns
        span_s = max(1.0, min(self.busy.seconds, (now_ns - self._started_ns) * S + 1))
        for device in devices:
            d = str(device.device_id)
            pool = device.pool
            self._child(self.memory, d).set(pool.total_pages * pool.page_bytes)
            self._child(self.memory_used, d).set(pool.used_pages * pool.page_bytes)
            self._child(self.resident, d).set(len(device.resident_ids()))
            for lane in ("load", "exec"):
                self._child(self.utilization, d, lane).set(min(1.0, self.busy.sums((d, lane), now_ns)[0] / span_s))
        self.pending.set(self.prepares_pending)
        self.prepared.set(models)
        self.healthy.set(1 if healthy else 0)
        self.connected.set(1 if connected else 0)

    def _check_handshakes(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            why = HANDSHAKE_FAILURES.get(event, "")
            if why and why != self.refused and self.log is not None:
                self.log.warning("cannot join the controller", controller=self.controller, why=why)
            self.refused = why

    def stopping(self) -> None:
        self.notify.stopping()

    def close(self) -> None:
        self.notify.close()
        if self._monitor is not None:
            self._monitor.close(0)
        if self.server is not None:
            self.server.close()
