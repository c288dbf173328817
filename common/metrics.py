"""What the controller's and the workers' Prometheus endpoints share.

Each daemon keeps its metrics in its own `CollectorRegistry` (never the global one, so that two
daemons in one test process cannot collide) and serves it with prometheus-client's HTTP server on
`metrics_address` (host:port; empty: off). Metrics are fed from the daemon's loop as it performs
its work; gauges that describe state are refreshed once a second from the same loop. The HTTP
thread only ever reads prometheus-client objects, never daemon state.

Conventions (https://prometheus.io/docs/practices/naming/): the `clockwork_` prefix, base units
(seconds, bytes, ratios 0..1) in the name, `_total` on counters. Label values are bounded:
status names come from one enumeration, devices from the cluster's hardware, and model names from
`BoundedLabels` - the first `cap` models seen get their own label, every later one shares
OTHER. OTHER and ALL start with "_", which no model name can, so they never collide with one.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from clockwork.common.status import Fault, Status

OTHER = "_other"  # models beyond the label cap
ALL = "_all"  # every model together (ratio gauges, which cannot be summed afterwards)
UNKNOWN = "_unknown"  # requests naming no registered model (their names are the caller's, unbounded)

# Request and action latencies: 0.5 ms (a small model on a GPU) to 30 s (a queue under overload).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# LOADs: a copy of weights, milliseconds to seconds.
LOAD_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# |predicted - measured|: 10 us (a well-predicted GPU kernel) to 100 ms (something is wrong).
ERROR_BUCKETS_S = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)

OUTCOMES = {Fault.NONE: "ok", Fault.CALLER: "caller_error", Fault.CAPACITY: "capacity", Fault.SYSTEM: "system_error"}


def new_registry() -> CollectorRegistry:
    """A daemon's own registry, with prometheus-client's process_* metrics (CPU seconds,
    resident memory, open descriptors) in it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def outcome(status: Status) -> str:
    """ok | caller_error | capacity | system_error: whose fault a reply's status is."""
    return OUTCOMES[status.fault]


class BoundedLabels:
    """Model name -> label value, with at most `cap` distinct names (the first seen); the rest
    share OTHER. Labels stay fixed for the process's life, so a series never changes meaning."""

    def __init__(self, cap: int):
        self.cap = max(0, cap)
        self._labels: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        label = self._labels.get(name)
        if label is None:
            label = name if len(self._labels) < self.cap else OTHER
            if label != OTHER:
                self._labels[name] = label
        return label


class ChildCache:
    """`metric.labels(*values)`, looked up once per (metric, values): prometheus-client converts
    and checks the values and takes a lock on every `labels` call, too slow for a daemon's loop,
    which touches a few children for each message it handles."""

    def __init__(self) -> None:
        self._children: dict[tuple, Any] = {}

    def __call__(self, metric: Any, *labels: Any) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def forget(self, metric: Any, *labels: Any) -> None:
        """After `metric.remove(*labels)`: a later call makes a new child, in a new series."""
        self._children.pop((id(metric), *labels), None)


class Window:
    """Per-key sums over the last `seconds`, in one-second buckets (SLO attainment, goodput,
    utilisation). `add` is O(1); `sums` trims what has aged out."""

    def __init__(self, seconds: float, width: int = 2):
        self.seconds = max(1, int(seconds))
        self.width = width
        self._buckets: dict[Hashable, collections.deque] = {}

    def add(self, key: Hashable, now_ns: int, *values: float) -> None:
        second = now_ns // 1_000_000_000
        ring = self._buckets.get(key)
        if ring is None:
            ring = self._buckets[key] = collections.deque()
        if ring and ring[-1][0] == second:
            bucket = ring[-1]
            for i, v in enumerate(values):
                bucket[i + 1] += v
        else:
            ring.append([second, *values, *([0.0] * (self.width - len(values)))])

    def sums(self, key: Hashable, now_ns: int) -> list[float]:
        ring = self._buckets.get(key)
        if not ring:
            return [0.0] * self.width
        oldest = now_ns // 1_000_000_000 - self.seconds + 1
        while ring and ring[0][0] < oldest:
            ring.popleft()
        return [sum(b[i + 1] for b in ring) for i in range(self.width)]

    def keys(self) -> list:
        return list(self._buckets)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)


def parse_address(address: str) -> tuple[str, int]:
    """"127.0.0.1:9464" -> ("127.0.0.1", 9464); "[::1]:9464" -> ("::1", 9464)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics_address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class Server:
    """prometheus-client's HTTP endpoint for one registry; `port` is the bound one (0 picks)."""

    def __init__(self, address: str, registry: CollectorRegistry):
        host, port = parse_address(address)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:  # say which setting: "address in use" alone does not
            raise OSError(exc.errno, f"metrics_address {address!r}: {exc.strerror or exc}") from None
        self.host = host
        self.port = self._httpd.server_port

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
