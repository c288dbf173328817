"""The latency model: what the controller believes each action will take.

Per (model, batch size, device kind) it keeps the last `window` successful measurements and
predicts two figures from them: the tail (a high percentile), which bounds an EXEC's window so
that a batch started in it meets every deadline, and the typical duration (the median), at
which queued work is priced. Tails do not add up: a queue of ten actions does not take ten
p99s, so admission adds one tail allowance to a typical sum, and that allowance is measured
too: how much later than its typical end each EXEC's result reached the controller
(`finish_errors`: the lane starting late, running long and the way back, as one). The
worker's profile seeds both at PREPARE. LOAD time is kept
per (model, device kind) the same way. Only successful measurements feed it (a dropped action
says nothing about how long execution takes), and only undisturbed ones: an EXEC that shared its
GPU with an engine build (Result.disturbed) measured the build as much as the model. Every prediction is compared with what happened;
the error (predicted minus measured) is a metric of its own, and so is the typical figure's
error as a share of it (`exec_typical_error_share_p99`; #12 asks <= 10% at batch 1 on a CPU).
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict, deque
from typing import Collection, cast

import numpy as np


class _Window:
    __slots__ = ("values", "percentile", "_tail", "_typical")

    def __init__(self, size: int, percentile: float):
        self.values: deque[int] = deque(maxlen=size)
        self.percentile = percentile
        self._tail: int | None = None
        self._typical: int | None = None

    def add(self, value_ns: int) -> None:
        self.values.append(value_ns)
        self._tail = self._typical = None

    def drop_worst(self) -> None:
        """Forget the largest measurement, never the last one."""
        if len(self.values) > 1:
            self.values.remove(max(self.values))
            self._tail = self._typical = None

    def estimate(self) -> int:
        """The tail: the window's `percentile`, nearest rank (with few samples it is the max,
        never an interpolation below it)."""
        tail = self._tail
        return tail if tail is not None else self._rank()[0]

    def typical(self) -> int:
        """The median, nearest rank."""
        typical = self._typical
        return typical if typical is not None else self._rank()[1]

    def _rank(self) -> tuple[int, int]:
        """Both figures from one sort (the tail, the median): admission asks for both after
        every new measurement."""
        ordered = sorted(self.values)
        tail = self._tail = _nearest_rank(ordered, self.percentile)
        typical = self._typical = _nearest_rank(ordered, 50.0)
        return tail, typical


def _nearest_rank(ordered: list[int], percentile: float) -> int:
    return ordered[max(1, math.ceil(percentile / 100 * len(ordered))) - 1]


class RecentSamples:
    """Up to `limit` samples, trimmed at each `refresh` to those of the last `span` refreshes,
    never to fewer than `floor`: an allowance read from them forgets an overload within two
    seconds once the rate is above `floor` in that time, and is never read from a handful. Kept
    by count alone, 1,000 samples of an overload outlived it by seconds at a few hundred
    requests a second, and kept refusing. Two seconds, not one: the simulator's 3x runs kept
    slightly more of the admitted in time (docs/benchmarks.md).

    The samples sit in one array of C integers, the oldest dropped by moving a start index (the
    array compacted once `limit` have gone): percentiles read them through a numpy view of it.
    Kept in a deque, every read copied them through np.fromiter, ~200 instructions a sample
    (2.6% of the core's instructions in the issue-19 window, for 3 readings a worker a
    refresh); so, 74,327 -> 72,872 instructions a request there."""

    __slots__ = ("_samples", "_append", "_start", "limit", "added", "floor", "_marks")

    def __init__(self, limit: int = 1000, span: int = 20, floor: int = 200):
        self._samples = array("q")
        self._append = self._samples.append  # bound once: looked up at each call, ~170 instructions more
        self._start = 0  # the samples kept are _samples[_start:]
        self.limit = limit
        self.added = 0
        self.floor = floor
        self._marks: deque[int] = deque([0], maxlen=span + 1)  # `added` at each of the last refreshes

    def __len__(self) -> int:
        return len(self._samples) - self._start

    @property
    def values(self) -> list[int]:
        """The samples kept, oldest first."""
        return self._samples[self._start:].tolist()

    def percentiles(self, percentiles: tuple[float, ...]) -> list[int]:
        """percentiles_of the samples kept, read in place."""
        return percentiles_of(np.frombuffer(self._samples, dtype=np.int64)[self._start:], percentiles)

    def append(self, value: int) -> None:
        self._append(value)
        self.added += 1
        if len(self._samples) - self._start > self.limit:
            self._drop_oldest(1)

    def refresh(self) -> None:
        self._marks.append(self.added)
        keep = max(self.floor, self.added - self._marks[0])
        if len(self) > keep:
            self._drop_oldest(len(self) - keep)

    def drop_worst(self) -> None:
        """Forget the largest sample (the oldest of equals)."""
        if len(self):
            samples = self._samples
            del samples[samples.index(max(samples[self._start:]), self._start)]

    def _drop_oldest(self, count: int) -> None:
        self._start += count
        if self._start >= self.limit:
            del self._samples[:self._start]
            self._start = 0


class _ClientReports:
    """What one client reported: its last `window` hops, the reply it last reported, and the
    figures worked out from them at the last refresh."""

    __slots__ = ("samples", "last_id", "tail_ns", "typical_ns", "worst_ns", "dirty")

    def __init__(self, window: int):
        self.samples: deque[int] = deque(maxlen=window)
        self.last_id = 0
        self.tail_ns: int | None = None
        self.typical_ns: int | None = None
        self.worst_ns: int | None = None
        self.dirty = False


class ClientHops:
    """Per client, how long its INFER_REPLYs took from the core's answer to the client, as the
    client reports them with its next INFER (schema.Infer.last_reply_id): the way back that the
    controller cannot time itself. Once a client has reported `enough` of its last `window`, the
    reply allowance plans their `percentile` for it (`tail_ns`) in place of the fixed floor where
    longer, and the longest of them (`worst_ns`) where shorter, for a request that finds its model
    idle (admission.reply_allowance_ns): on one host the hop is a fraction of a millisecond, and
    the floor (2 ms) refused lone requests with tight SLOs that were served well inside them. At
    most `max_clients` are kept, the one that reported least recently forgotten first: forgetting
    the one that began first let a churn of short-lived clients (scripts that send a few requests
    each) push out a long-lived application's figures, which then took `enough` reports again."""

    def __init__(self, percentile: float, window: int = 100, enough: int = 20, max_clients: int = 4096):
        self._percentile = percentile
        self._window = window
        self._enough = enough
        self._max_clients = max_clients
        self._clients: OrderedDict[bytes, _ClientReports] = OrderedDict()  # the latest to report last
        self._dirty: list[_ClientReports] = []
        self.least_excess_ns = 0  # the smallest tail_ns - typical_ns of the clients with figures

    def observe(self, client: bytes, reply_id: int, hop_ns: int) -> None:
        reports = self._clients.get(client)
        if reports is None:
            if len(self._clients) >= self._max_clients:
                self._clients.popitem(last=False)
            reports = self._clients[client] = _ClientReports(self._window)
        elif reports.last_id == reply_id:
            return  # every INFER sent before the next reply reports the same one
        else:
            self._clients.move_to_end(client)
        reports.last_id = reply_id
        reports.samples.append(max(0, hop_ns))
        if not reports.dirty:
            reports.dirty = True
            self._dirty.append(reports)

    def refresh(self) -> None:
        """Recompute the figures of the clients that reported since the last refresh, and the
        least excess of a tail over its typical hop (what Core.give_up_slack_ns may add: a
        typical reply reaches every such client that much sooner than the allowance planned)."""
        if not self._dirty:
            return
        for reports in self._dirty:
            reports.dirty = False
            if len(reports.samples) >= self._enough:
                reports.tail_ns, reports.typical_ns = percentiles_of(reports.samples, (self._percentile, 50))
                reports.worst_ns = max(reports.samples)
        self._dirty.clear()
        least: int | None = None
        for reports in self._clients.values():
            tail, typical = reports.tail_ns, reports.typical_ns
            if tail is not None and typical is not None and (least is None or tail - typical < least):
                least = tail - typical
        self.least_excess_ns = least or 0

    def tail_ns(self, client: bytes) -> int | None:
        """The client's reply hop at the percentile; None until it has reported enough."""
        reports = self._clients.get(client)
        return None if reports is None else reports.tail_ns

    def worst_ns(self, client: bytes) -> int | None:
        """The longest reply hop in the client's window; None until it has reported enough."""
        reports = self._clients.get(client)
        return None if reports is None else reports.worst_ns

    def summary(self) -> dict:
        tails = [r.tail_ns for r in self._clients.values() if r.tail_ns is not None]
        return {"reply_hop_clients": len(tails), "reply_hop_ms_max": max(tails) / 1e6 if tails else None}


class LatencyModel:
    def __init__(self, window: int = 32, percentile: float = 99.0, error_window: int = 10_000):
        self._window = window
        self._percentile = percentile
        # Model -> device kind -> windows indexed by batch size (None where none was profiled or
        # measured; sizes are at most schema.MAX_BATCH): looked up a dozen times a request, and
        # two lookups by a string and an index cost less than one by a tuple made for it.
        self._exec: dict[str, dict[str, list[_Window | None]]] = {}
        # The last (model, kind) looked up and its windows by batch: the look-ups of one request,
        # one batch choice or one batch's growth mostly ask about one model on one kind in a row.
        # A list found stays the one in _exec (windows are added to it) until forget() clears this.
        self._last_model = ""
        self._last_kind = ""
        self._last_by_batch: list[_Window | None] = []
        # Model -> a number that moves whenever one of its exec figures may have (never back to
        # an earlier one): what prices worked out from them and kept (Core.drain_ns) are checked against.
        self._generations: dict[str, int] = {}
        self._changes = 0
        self._load: dict[tuple[str, str], _Window] = {}
        self.exec_errors: deque[int] = deque(maxlen=error_window)  # predicted (the tail) - measured, ns
        # |typical - measured| / typical per EXEC, all batch sizes and batch 1 alone: how well the
        # median prices an execution, which is what queued work is priced at.
        self.typical_errors: deque[float] = deque(maxlen=error_window)
        self.typical_errors_batch1: deque[float] = deque(maxlen=error_window)
        self.load_errors: deque[int] = deque(maxlen=error_window)
        # Controller send -> lane start, and lane end -> result received: what `dispatch_ns` must cover.
        self.dispatch_delays: deque[int] = deque(maxlen=error_window)
        self.return_delays: deque[int] = deque(maxlen=error_window)
        # Per worker, how much later than planned its lanes started EXECs: what its dispatch
        # allowance must add (a worker 2 ms away is planned further ahead than one 0.1 ms away).
        self._lateness: dict[str, RecentSamples] = {}
        # Per worker, lane end -> result read by the controller: the part of the way back to the
        # client that the controller can time (what the reply allowance adds to its floor).
        self._returns: dict[str, RecentSamples] = {}
        # Per worker, its lanes' turnaround: an EXEC's end to the next one's start, the next
        # having been there already (Core._lane_gap): lane time that no run measures.
        self._turnarounds: dict[str, RecentSamples] = {}
        # How much later than its typical end each EXEC's result arrived: the one tail allowance.
        self.finish_errors = RecentSamples()
        self.disturbed_execs = 0  # measurements left out: taken while a build shared the GPU

    def _load_window(self, model: str, kind: str) -> _Window:
        win = self._load.get((model, kind))
        if win is None:
            win = self._load[(model, kind)] = _Window(self._window, self._percentile)
        return win

    def _exec_window(self, model: str, batch: int, kind: str) -> _Window:
        by_batch = self._exec.setdefault(model, {}).setdefault(kind, [])
        if batch >= len(by_batch):
            by_batch.extend([None] * (batch + 1 - len(by_batch)))
        win = by_batch[batch]
        if win is None:
            win = by_batch[batch] = _Window(self._window, self._percentile)
        return win

    def _find(self, model: str, batch: int, kind: str) -> _Window | None:
        if model == self._last_model and kind == self._last_kind:
            by_batch = self._last_by_batch
        else:
            by_kind = self._exec.get(model)
            if by_kind is None:
                return None
            found = by_kind.get(kind)
            if found is None:
                return None
            by_batch = found
            self._last_model, self._last_kind, self._last_by_batch = model, kind, by_batch
        return by_batch[batch] if 0 <= batch < len(by_batch) else None

    def _changed(self, model: str) -> None:
        self._changes += 1
        self._generations[model] = self._changes

    def generation(self, model: str) -> int:
        """Moves whenever an exec figure of `model` may have changed: prices worked out from
        them stay good while it does not."""
        return self._generations.get(model, 0)

    # ------------------------------------------------------------------ feeding

    def seed(self, model: str, kind: str, load_ns: int, exec_ns: dict[int, int]) -> None:
        """A worker's profile: only used where nothing was measured yet."""
        self._changed(model)
        for batch, value in exec_ns.items():
            win = self._exec_window(model, batch, kind)
            if not win.values:
                win.add(value)
        win = self._load_window(model, kind)
        if not win.values and load_ns:
            win.add(load_ns)

    def observe_exec(self, model: str, batch: int, kind: str, measured_ns: int, predicted_ns: int,
                     disturbed: bool = False) -> None:
        if disturbed:
            self.disturbed_execs += 1
            return
        self._changed(model)
        win = self._exec_window(model, batch, kind)
        if win.values:
            typical = win.typical()
            share = abs(typical - measured_ns) / typical
            self.typical_errors.append(share)
            if batch == 1:
                self.typical_errors_batch1.append(share)
        win.add(measured_ns)
        if predicted_ns:
            self.exec_errors.append(predicted_ns - measured_ns)

    def observe_hops(self, worker: str, sent_ns: int, planned_start_ns: int, begin_ns: int, end_ns: int,
                     received_ns: int) -> None:
        self.dispatch_delays.append(begin_ns - sent_ns)
        self.return_delays.append(received_ns - end_ns)
        lateness = self._lateness.get(worker)
        if lateness is None:
            lateness = self._lateness[worker] = RecentSamples()
            self._returns[worker] = RecentSamples()
        lateness.append(max(0, begin_ns - planned_start_ns))
        self._returns[worker].append(max(0, received_ns - end_ns))

    def refresh(self) -> None:
        """Before the allowances are read again: what an earlier load measured goes (RecentSamples)."""
        self.finish_errors.refresh()
        for samples in (*self._lateness.values(), *self._returns.values(), *self._turnarounds.values()):
            samples.refresh()

    def start_lateness_ns(self, worker: str, percentile: float) -> int:
        """How late `worker`'s lanes have started EXECs against the plan, at `percentile`."""
        lateness = self._lateness.get(worker)
        return lateness.percentiles((percentile,))[0] if lateness is not None else 0

    def return_ns(self, worker: str, percentiles: tuple[float, ...]) -> list[int]:
        """How long `worker`'s results took from the lane's end to the controller, at each of
        `percentiles`."""
        returns = self._returns.get(worker)
        return returns.percentiles(percentiles) if returns is not None else [0 for _ in percentiles]

    def observe_turnaround(self, worker: str, gap_ns: int) -> None:
        """One of `worker`'s lanes started an EXEC `gap_ns` after the previous one ended, the
        EXEC having been ready before that end."""
        samples = self._turnarounds.get(worker)
        if samples is None:
            samples = self._turnarounds[worker] = RecentSamples()
        samples.append(max(0, gap_ns))

    def turnaround_ns(self, worker: str) -> int:
        """`worker`'s lanes' typical turnaround between back-to-back EXECs (0 until measured)."""
        samples = self._turnarounds.get(worker)
        return samples.percentiles((50,))[0] if samples is not None else 0

    def forget_worker(self, worker: str) -> None:
        """A worker that rejoins may be somewhere else: its hops are measured afresh."""
        self._lateness.pop(worker, None)
        self._returns.pop(worker, None)
        self._turnarounds.pop(worker, None)

    def observe_finish(self, predicted_end_ns: int, received_ns: int, disturbed: bool = False) -> None:
        """An EXEC's result reached the controller at `received_ns`; at dispatch its typical
        end was `predicted_end_ns`."""
        if not disturbed:
            self.finish_errors.append(received_ns - predicted_end_ns)

    def finish_tail_ns(self, percentile: float) -> int:
        """How much later than their typically predicted end EXECs' results arrive, at
        `percentile` (0 when they arrive earlier, or before any was measured)."""
        return max(0, self.finish_errors.percentiles((percentile,))[0])

    def observe_load(self, model: str, kind: str, measured_ns: int, predicted_ns: int) -> None:
        self._load_window(model, kind).add(measured_ns)
        if predicted_ns:
            self.load_errors.append(predicted_ns - measured_ns)

    def doubt(self, model: str) -> None:
        """Admission keeps refusing `model` on these estimates while nothing of it runs, so no new
        measurement can correct them: forget the worst measurement of each of its windows (never
        the last), the worst finish error and each worker's worst lateness and way back. A lone
        outlier (a pause, a slow first run) then stops shutting the model out; a model that
        really is slow keeps its other slow samples, and with them its refusals. The hops count
        too: after an overload on a 2-core host the reply allowance stood at 13 ms, every 15 ms
        request was refused on it, and no result ever came to lower it."""
        self._changed(model)
        for by_batch in self._exec.get(model, {}).values():
            for win in by_batch:
                if win is not None:
                    win.drop_worst()
        for samples in (self.finish_errors, *self._lateness.values(), *self._returns.values()):
            samples.drop_worst()

    def forget(self, model: str) -> None:
        self._generations.pop(model, None)  # what was worked out from its figures went with its Model
        self._exec.pop(model, None)
        self._last_model = self._last_kind = ""
        self._last_by_batch = []
        self._load = {k: v for k, v in self._load.items() if k[0] != model}

    # ------------------------------------------------------------------ predicting

    # The two below run several times per request: the cached figure is read inline and
    # returned as the object the window holds. Compiled, an `int | None` narrowed to int by a
    # None test is unboxed, and returned it is boxed again (a new int object for any duration of
    # nanoseconds), ~265,000 times in the issue-19 window.

    def exec_ns(self, model: str, batch: int, kind: str) -> int | None:
        """The tail: what an EXEC's window must leave for it."""
        win = self._find(model, batch, kind)
        if win is None:
            return None
        tail: object = win._tail
        if tail is not None:
            return cast("int | None", tail)
        return win.estimate() if win.values else None

    def typical_exec_ns(self, model: str, batch: int, kind: str) -> int | None:
        """The median: what queued work is priced at."""
        win = self._find(model, batch, kind)
        if win is None:
            return None
        typical: object = win._typical
        if typical is not None:
            return cast("int | None", typical)
        return win.typical() if win.values else None

    def load_ns(self, model: str, kind: str) -> int | None:
        win = self._load.get((model, kind))
        return win.estimate() if win is not None and win.values else None

    def error_summary(self) -> dict[str, float]:
        """Percentiles of |predicted - measured| in ms, the mean signed error, and the hop
        delays around each EXEC (for STATUS)."""
        out: dict[str, float] = {}
        for name, errors in (("exec", self.exec_errors), ("load", self.load_errors)):
            if errors:
                arr = np.fromiter(errors, dtype=np.int64)
                absolute = np.abs(arr)
                out[f"{name}_prediction_error_ms_p50"] = float(np.percentile(absolute, 50)) / 1e6
                out[f"{name}_prediction_error_ms_p99"] = float(np.percentile(absolute, 99)) / 1e6
                out[f"{name}_prediction_bias_ms_mean"] = float(arr.mean()) / 1e6
                out[f"{name}_predictions"] = len(arr)
        for name, shares in (("", self.typical_errors), ("_batch1", self.typical_errors_batch1)):
            if shares:
                out[f"exec_typical_error_share_p99{name}"] = float(np.percentile(np.fromiter(shares, float), 99))
        for name, delays in (("dispatch", self.dispatch_delays), ("return", self.return_delays),
                             ("finish", self.finish_errors.values)):
            if delays:
                arr = np.fromiter(delays, dtype=np.int64)
                out[f"{name}_delay_ms_p50"] = float(np.percentile(arr, 50)) / 1e6
                out[f"{name}_delay_ms_p99"] = float(np.percentile(arr, 99)) / 1e6
        if self.disturbed_execs:
            out["exec_measurements_disturbed"] = self.disturbed_execs
        return out


def percentiles_of(values: Collection[int], percentiles: tuple[float, ...]) -> list[int]:
    """np.percentile's default (linear) readings, truncated to ints, from one partition around
    the ranks they interpolate between: the same figures in a third of the time (~40 against
    ~105 us for 1,000 values), and the values copied into an array once however many are read
    (the copy is most of the cost; an ndarray, as RecentSamples passes, is partitioned as it
    is). The core reads 3 per worker every refresh: with a hundred
    workers, 300 np.percentile calls held one turn of the controller's loop for 10-20 ms."""
    n = len(values)
    if not n:
        return [0 for _ in percentiles]
    ranks: list[tuple[int, int, float]] = []  # (lo, hi, virtual) per percentile
    for percentile in percentiles:
        virtual = (n - 1) * (percentile / 100)
        lo = math.floor(virtual)
        ranks.append((lo, min(lo + 1, n - 1), virtual))
    array_of = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=np.int64, count=n)
    ranked = np.partition(array_of, [r for lo, hi, _ in ranks for r in (lo, hi)])
    out: list[int] = []
    for lo, hi, virtual in ranks:
        below, above = int(ranked[lo]), int(ranked[hi])
        share = virtual - lo
        step = above - below
        # numpy's _lerp, term for term, so that the float rounding (and the int) agree
        out.append(int(below + step * share if share < 0.5 else above - step * (1 - share)))
    return out
