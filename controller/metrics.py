"""The controller's telemetry: Prometheus metrics and the request log, fed by the daemon shell.

The scheduling core is pure, so nothing here looks inside it: the shell hands over what it
performs and receives - each INFER as it arrives (`on_request`), each INFER_REPLY it sends
(`on_reply`), each action it sends a worker (`on_action`) and each RESULT (`on_result`) - and,
once a second, the core's `status()` (`refresh`). Every call is a few dict operations and
histogram observations; the loop never waits on the HTTP thread or the disk.

Metrics (all in seconds, bytes or ratios; `model` bounded by `metrics_max_models`):

    clockwork_requests_total{model,outcome,reason}          every answered INFER; outcome is whose
                                                            fault (ok, caller_error, capacity,
                                                            system_error), reason the status name
    clockwork_request_duration_seconds{model,phase}         OK replies: phase = queue (received to
                                                            dispatched), exec (worker-measured),
                                                            end_to_end (received to reply)
    clockwork_load_duration_seconds{model}                  each successful LOAD
    clockwork_requests_slo_met_total{model}                 OK inside the SLO
    clockwork_slo_attainment_ratio{model}                   met / answered (caller errors aside),
                                                            over the last metrics_window_s; model
                                                            "_all" for the whole system
    clockwork_goodput_requests_per_second{model}            met per second, same window
    clockwork_cold_starts_total{model}                      replies to requests that waited for a LOAD
    clockwork_evictions_total                               models unloaded to make room
    clockwork_exec_prediction_error_seconds{model}          |predicted - measured| per EXEC
    clockwork_load_prediction_error_seconds{model}          |predicted - measured| per LOAD
    clockwork_device_busy_seconds_total{worker,device}      worker-measured EXEC time
    clockwork_device_utilization_ratio{worker,device}       busy share of the last window
    clockwork_device_memory_bytes / _used_bytes{worker,device}, clockwork_device_loaded_models
    clockwork_queued_requests{model}, clockwork_in_flight_requests{model}
    clockwork_workers, clockwork_models                     connected workers, registered models
    clockwork_scheduler_events_total{event}                 the core's counters, as they are
    process_*                                               the process's CPU, memory and descriptors
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable

from prometheus_client import Counter, Gauge, Histogram

from clockwork.common import schema
from clockwork.common.config import ControllerConfig
from clockwork.common.metrics import (ALL, UNKNOWN, ERROR_BUCKETS_S, LATENCY_BUCKETS_S, LOAD_BUCKETS_S, BoundedLabels,
                            ChildCache, Server, Window, new_registry, outcome)
from clockwork.common.rotating_log import open_tsv
from clockwork.common.status import Fault, Status
from clockwork.controller.effects import ActionRecord, ToWorker

REQUEST_LOG_COLUMNS = ("request_id", "model", "priority", "status", "queue_ns", "exec_ns", "total_ns",
                       "batch_size", "cold_start", "worker", "slo_ns", "unix_s")
ACTION_LOG_COLUMNS = tuple(f.name for f in dataclasses.fields(ActionRecord))
MAX_TRACKED = 1 << 20  # requests/actions remembered awaiting their answer; beyond this the oldest go
MAX_DEVICE_SERIES = 1024  # (worker, device) pairs with their own series
REFRESH_NS = 1_000_000_000
S = 1e-9  # seconds per nanosecond
IDLE_WAITING_ON = ("controller", "worker")  # where a lane's next run waited (STATUS: lane_idle_*_ms)


def _grown(seen: dict, key: Hashable, total: float) -> float:
    """How much a total that STATUS reports grew since the last refresh, for a counter to follow
    it (0 where it fell: the core's count starts again at 0 when a worker joins again)."""
    delta = total - seen.get(key, 0)
    seen[key] = total
    return delta if delta > 0 else 0


class ControllerTelemetry:
    def __init__(self, config: ControllerConfig):
        self.enabled = bool(config.metrics_address)  # metrics cost nothing when nobody scrapes
        self.request_log = open_tsv(config.request_log_path, REQUEST_LOG_COLUMNS, config.log_max_bytes,
                                    config.log_backups)
        self.action_log = open_tsv(config.action_log_path, ACTION_LOG_COLUMNS, config.log_max_bytes,
                                   config.log_backups)
        self.active = self.enabled or self.request_log.enabled  # else every on_ call returns at once
        self.registry = new_registry()
        self.model_label = BoundedLabels(config.metrics_max_models)
        self.window = Window(config.metrics_window_s)  # model label -> (answered, met)
        self.busy = Window(config.metrics_window_s, width=1)  # (worker, device) -> busy seconds
        self._requests: dict[tuple[bytes, int], tuple] = {}  # -> (model, priority, slo_ns, label)
        self._actions: dict[int, tuple[str, str, int, tuple[str, str]]] = {}  # id -> kind, model, expected, dev
        self._child = ChildCache()
        self._model_children: dict[str, tuple] = {}  # model label -> what an OK reply touches
        self._counters_seen: dict[str, int] = {}
        self._device_series: set[tuple[str, str]] = set()
        self._idle_seen: dict[tuple[str, str], float] = {}  # (worker, waiting on) -> STATUS's ms
        self._model_series: set[str] = set()
        self._started_ns = 0
        self._next_refresh_ns = 0
        self._define()
        self.server = Server(config.metrics_address, self.registry) if self.enabled else None

    def _define(self) -> None:
        r = self.registry
        self.requests = Counter("clockwork_requests", "Answered inference requests", ["model", "outcome", "reason"],
                                registry=r)
        self.duration = Histogram("clockwork_request_duration_seconds", "Latency of OK requests by phase",
                                  ["model", "phase"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.load_duration = Histogram("clockwork_load_duration_seconds", "Duration of successful LOADs",
                                       ["model"], buckets=LOAD_BUCKETS_S, registry=r)
        self.slo_met = Counter("clockwork_requests_slo_met", "Requests answered OK inside their SLO", ["model"],
                               registry=r)
        self.attainment = Gauge("clockwork_slo_attainment_ratio",
                                "Share of answered requests (caller errors aside) that met their SLO, last window",
                                ["model"], registry=r)
        self.goodput = Gauge("clockwork_goodput_requests_per_second", "Requests meeting their SLO per second, "
                             "last window", ["model"], registry=r)
        self.cold_starts = Counter("clockwork_cold_starts", "Requests that waited for their model to load",
                                   ["model"], registry=r)
        self.evictions = Counter("clockwork_evictions", "Models unloaded to make room for others", registry=r)
        self.exec_error = Histogram("clockwork_exec_prediction_error_seconds", "|predicted - measured| EXEC time",
                                    ["model"], buckets=ERROR_BUCKETS_S, registry=r)
        self.load_error = Histogram("clockwork_load_prediction_error_seconds", "|predicted - measured| LOAD time",
                                    ["model"], buckets=ERROR_BUCKETS_S, registry=r)
        dev = ["worker", "device"]
        self.device_busy = Counter("clockwork_device_busy_seconds", "Worker-measured EXEC time", dev, registry=r)
        self.utilization = Gauge("clockwork_device_utilization_ratio", "EXEC busy share, last window", dev,
                                 registry=r)
        self.lane_idle = Counter("clockwork_worker_lane_idle_seconds", "A worker's EXEC lanes idle between runs "
                                 "while the next run's work waited, on the controller (not yet at the worker) or "
                                 "the worker", ["worker", "waiting_on"], registry=r)
        self.memory = Gauge("clockwork_device_memory_bytes", "Model memory of a device", dev, registry=r)
        self.memory_used = Gauge("clockwork_device_memory_used_bytes", "Model memory in use", dev, registry=r)
        self.loaded = Gauge("clockwork_device_loaded_models", "Models loaded on a device", dev, registry=r)
        self.queued = Gauge("clockwork_queued_requests", "Requests waiting for a batch", ["model"], registry=r)
        self.in_flight = Gauge("clockwork_in_flight_requests", "Requests executing", ["model"], registry=r)
        self.workers = Gauge("clockwork_workers", "Connected workers", registry=r)
        self.models = Gauge("clockwork_models", "Registered models", registry=r)
        self.headroom = Gauge("clockwork_admission_headroom_ratio",
                              "Share of a request's budget admission leaves unplanned (widens while admitted "
                              "requests miss)", registry=r)
        self.events = Counter("clockwork_scheduler_events", "The scheduling core's counters", ["event"], registry=r)

    def _per_model(self, label: str) -> tuple:
        """The children an OK reply touches for one model label, looked up once."""
        children = self._model_children.get(label)
        if children is None:
            children = self._model_children[label] = (
                self.duration.labels(label, "queue"), self.duration.labels(label, "exec"),
                self.duration.labels(label, "end_to_end"), self.requests.labels(label, "ok", "OK"),
                self.slo_met.labels(label), self.cold_starts.labels(label))
        return children

    # ------------------------------------------------------------------ fed by the daemon

    def on_request(self, client: bytes, request_id: int, msg: schema.Infer, known: bool) -> None:
        """`known`: the model is registered (only those get a label of their own)."""
        key = (client, request_id)
        if self.active and key not in self._requests:  # a client's resend must not replace the original
            if len(self._requests) >= MAX_TRACKED:
                del self._requests[next(iter(self._requests))]
            label = self.model_label(msg.model) if known else UNKNOWN
            self._requests[key] = (msg.model, msg.priority, msg.slo_ns, label)

    def on_reply(self, client: bytes, request_id: int, reply: schema.InferReply, now_ns: int) -> None:
        if not self.active:
            return
        key = (client, request_id)
        known = self._requests.pop(key, None)
        model, priority, slo_ns, label = known or ("", 0, 0, UNKNOWN)
        status = reply.status
        if self.request_log.enabled:  # one f-string: this runs for every request
            worker = reply.worker if "\t" not in reply.worker and "\n" not in reply.worker else "?"
            self.request_log.write_line(
                f"{request_id}\t{model}\t{priority}\t{status.name}\t{reply.queue_ns}\t{reply.exec_ns}\t"
                f"{reply.total_ns}\t{reply.batch_size}\t{int(reply.cold_start)}\t{worker}\t{slo_ns}\t"
                f"{time.time():.6f}\n")
        if not self.enabled:
            return
        met = status is Status.OK and known is not None and reply.total_ns <= slo_ns
        if status is Status.OK:
            queue, exec_, end_to_end, ok, slo_met, cold = self._per_model(label)
            ok.inc()
            queue.observe(reply.queue_ns * S)
            exec_.observe(reply.exec_ns * S)
            end_to_end.observe(reply.total_ns * S)
            if met:
                slo_met.inc()
            if reply.cold_start:
                cold.inc()
        else:
            self._child(self.requests, label, outcome(status), status.name).inc()
            if reply.cold_start:
                self._child(self.cold_starts, label).inc()
        if status.fault is not Fault.CALLER:
            self.window.add(label, now_ns, 1, met)
            self.window.add(ALL, now_ns, 1, met)

    def on_action(self, effect: ToWorker) -> None:
        """An EXEC or LOAD sent to a worker: remembered until its RESULT, for the error metrics."""
        body = effect.body
        if not self.enabled or not isinstance(body, (schema.Exec, schema.Load)):
            return
        if len(self._actions) >= MAX_TRACKED:
            del self._actions[next(iter(self._actions))]
        kind = "exec" if isinstance(body, schema.Exec) else "load"
        self._actions[effect.msg_id] = (kind, body.model_id, body.expected_ns, (effect.worker, str(body.device_id)))

    def on_result(self, worker: str, action_id: int, msg: schema.Result, now_ns: int) -> None:
        action = self._actions.get(action_id) if self.enabled else None
        if action is None or action[3][0] != worker:  # not ours, or not that worker's to answer
            return
        del self._actions[action_id]
        kind, model, expected_ns, device = action
        if msg.status is not Status.OK:
            return
        label = self.model_label(model)
        error_s = abs(expected_ns - msg.duration_ns) * S
        if kind == "exec":
            if expected_ns:
                self._child(self.exec_error, label).observe(error_s)
            if device in self._device_series or len(self._device_series) < MAX_DEVICE_SERIES:
                self._device_series.add(device)
                self._child(self.device_busy, *device).inc(msg.duration_ns * S)
                self.busy.add(device, now_ns, msg.duration_ns * S)
        else:
            self._child(self.load_duration, label).observe(msg.duration_ns * S)
            if expected_ns:
                self._child(self.load_error, label).observe(error_s)

    def on_action_record(self, record: ActionRecord) -> None:
        """A finished action, as the core saw it (emitted only while the action log is on)."""
        # Not dataclasses.astuple: it deep-copies every field, a measurable cost per action.
        self.action_log.write(tuple(getattr(record, name) for name in ACTION_LOG_COLUMNS))

    # ------------------------------------------------------------------ once a second

    def due(self, now_ns: int) -> bool:
        return now_ns >= self._next_refresh_ns

    def refresh(self, status: dict, now_ns: int) -> None:
        """Gauges from the core's status and the windows; flush the request log."""
        self._next_refresh_ns = now_ns + REFRESH_NS
        self._started_ns = self._started_ns or now_ns
        self.request_log.maybe_flush(now_ns)
        self.action_log.maybe_flush(now_ns)
        if not self.enabled:
            return
        span_s = max(1.0, min(self.window.seconds, (now_ns - self._started_ns) * S + 1))
        for label in self.window.keys():
            answered, met = self.window.sums(label, now_ns)
            self._child(self.attainment, label).set(met / answered if answered else 1.0)
            self._child(self.goodput, label).set(met / span_s)
        self._refresh_devices(status, now_ns, span_s)
        self._refresh_models(status)
        self._refresh_counters(status.get("counters", {}))
        self.headroom.set(status.get("scheduler", {}).get("admission_headroom", 0.0))

    def _refresh_devices(self, status: dict, now_ns: int, span_s: float) -> None:
        present = set()
        for w in status.get("workers", []):
            for waiting_on in IDLE_WAITING_ON:
                self._lane_idle(w["name"], waiting_on, float(w.get(f"lane_idle_{waiting_on}_ms") or 0))
            for d in w.get("devices", []):
                key = (w["name"], str(d["device_id"]))
                if key not in self._device_series and len(self._device_series) >= MAX_DEVICE_SERIES:
                    continue
                self._device_series.add(key)
                present.add(key)
                self.memory.labels(*key).set(d.get("memory_bytes", 0))
                self.memory_used.labels(*key).set(d.get("used_bytes", 0))
                self.loaded.labels(*key).set(d.get("loaded_count", 0))
                self.utilization.labels(*key).set(min(1.0, self.busy.sums(key, now_ns)[0] / span_s))
        for key in self._device_series - present:  # a worker left: its devices' series go too
            for metric in (self.memory, self.memory_used, self.loaded, self.utilization, self.device_busy):
                try:
                    metric.remove(*key)
                except KeyError:
                    pass
            self._child.forget(self.device_busy, *key)
            self.busy.forget(key)
        self._device_series = present
        names = {w["name"] for w in status.get("workers", [])}
        for name, waiting_on in [key for key in self._idle_seen if key[0] not in names]:  # a worker left
            del self._idle_seen[name, waiting_on]
            try:
                self.lane_idle.remove(name, waiting_on)
            except KeyError:
                pass
        self.workers.set(len(status.get("workers", [])))

    def _lane_idle(self, worker: str, waiting_on: str, idle_ms: float) -> None:
        grown_ms = _grown(self._idle_seen, (worker, waiting_on), idle_ms)
        if grown_ms:
            self.lane_idle.labels(worker, waiting_on).inc(grown_ms / 1e3)

    def _refresh_models(self, status: dict) -> None:
        queued: dict[str, int] = {}
        in_flight: dict[str, int] = {}
        for m in status.get("models", []):
            label = self.model_label(m["name"])
            queued[label] = queued.get(label, 0) + m.get("queued", 0)
            in_flight[label] = in_flight.get(label, 0) + m.get("in_flight", 0)
        for label in self._model_series - set(queued):
            self.queued.remove(label)
            self.in_flight.remove(label)
        for label, value in queued.items():
            self.queued.labels(label).set(value)
            self.in_flight.labels(label).set(in_flight[label])
        self._model_series = set(queued)
        self.models.set(status.get("models_total", 0))

    def _refresh_counters(self, counters: dict) -> None:
        for name, value in counters.items():
            if type(value) is not int:
                continue  # the latency model's error percentiles: floats, not counts
            delta = _grown(self._counters_seen, name, value)
            if delta:
                self._child(self.events, name).inc(delta)
                if name == "evictions":
                    self.evictions.inc(delta)

    def close(self) -> None:
        self.request_log.close()
        self.action_log.close()
        if self.server is not None:
            self.server.close()
