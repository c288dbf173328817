"""Run logs: one row per request and one per action, and everything a run report is made of.

The simulator (virtual time) and the real system (the load generator's request log plus the
controller's action log) write the same two tables with the same columns, so one report, one
plot and one diff tool serve both.

Conventions:
- Times are integer nanoseconds relative to the run's start (the first scheduled arrival is
  near 0). Durations are integer nanoseconds.
- Statuses are `common.status.Status` names ("OK", "WOULD_MISS_DEADLINE", ...). Three extra
  names exist only in logs: "UNANSWERED" (no reply before the run ended), "SEND_FAILED" (the
  generator could not send) and "BAD_REPLY" (a reply that did not decode).
- -1 in a numeric column means "not applicable / unknown" (e.g. the latency of an unanswered
  request, the begin time of an action that never started).
- A request meets its SLO when its status is OK and arrival_ns + latency_ns <= deadline_ns
  (or latency_ns <= the run's SLO when deadline_ns is -1).

Storage is by column: numbers in `array.array('q')` (8 bytes a value, no Python object per
cell), strings as lists of references to a few shared objects, statuses as given (enum or name)
and converted once at write time. A million rows cost ~100 MB and a second or two to write.

Example:
    log = RunLog()
    log.request(1, "resnet50-0", 0, arrival_ns=0, deadline_ns=100_000_000, status="OK",
                latency_ns=3_100_000, queue_ns=200_000, exec_ns=2_700_000, batch_size=1,
                cold_start=False, worker="w0")
    log.action(7, "EXEC", "w0", 0, "resnet50-0", 1, sent_ns=10, begin_ns=20, end_ns=2_700_020,
               predicted_ns=2_700_000, measured_ns=2_700_000, status="OK")
    summary = write_run("runs/x", log, title="poisson 500/s", slo_ms=100)
"""

from __future__ import annotations

import csv
import json
import math
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from clockwork.bench.report import Latencies, _finite, format_table, saved_figure

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",  # unique within the run
    "model",  # model name
    "priority",  # as sent
    "arrival_ns",  # scheduled send time (open loop) / arrival at the system (simulator)
    "deadline_ns",  # absolute deadline on the same clock, -1 if none
    "status",  # Status name of the reply, or UNANSWERED / SEND_FAILED / BAD_REPLY
    "latency_ns",  # reply received - arrival_ns, -1 if no reply
    "queue_ns",  # controller: received -> batch sent to a worker (OK replies), else -1
    "exec_ns",  # worker-measured exec of the batch (OK replies), else -1
    "batch_size",  # size of the batch that served it, 0 if none
    "cold_start",  # 1 if the model had to be loaded for this request
    "worker",  # worker that ran it, "" if none
)
ACTION_COLUMNS: tuple[str, ...] = (
    "action_id",  # unique within the run
    "kind",  # EXEC | LOAD | UNLOAD (| PREPARE | DROP); upper-cased, an older log's INFER read as EXEC
    "worker",  # worker name
    "device",  # device id on that worker
    "model",  # model name
    "batch_size",  # EXEC: batch size; else 0
    "sent_ns",  # controller sent it
    "begin_ns",  # it started on its lane (worker clock translated), -1 if it never started
    "end_ns",  # it finished (or was refused), -1 if unknown
    "predicted_ns",  # the controller's predicted duration, -1 if none
    "measured_ns",  # the worker-measured duration, -1 if none
    "status",  # Status name of the result
)

_INT_REQUEST = ("request_id", "priority", "arrival_ns", "deadline_ns", "latency_ns", "queue_ns", "exec_ns",
                "batch_size", "cold_start")
_INT_ACTION = ("action_id", "device", "batch_size", "sent_ns", "begin_ns", "end_ns", "predicted_ns", "measured_ns")
EXTRA_STATUSES = ("UNANSWERED", "SEND_FAILED", "BAD_REPLY")
NS_PER_S = 1_000_000_000
BIN_S = 1.0  # time-series resolution: one point per second of the run
PREDICTION_KINDS = ("EXEC", "LOAD")  # actions whose duration the controller predicts


def canonical_kind(kind: Any) -> str:
    """An action kind as the logs spell it: "exec" -> "EXEC", "load" -> "LOAD", ...; the INFER of
    logs written before the action had one name reads as EXEC."""
    name = _name(kind).strip().upper()
    return "EXEC" if name == "INFER" else name


class _Table:
    """Columns of one log: typed arrays for numbers, lists for text."""

    def __init__(self, columns: Sequence[str], int_columns: Sequence[str],
                 converters: Mapping[str, Callable[[Any], str]] | None = None):
        self.columns = tuple(columns)
        # Text column -> how a value is written (default: a Status or enum as its name).
        self.converters = {c: (converters or {}).get(c, _name) for c in columns}
        self.data: dict[str, Any] = {c: array("q") if c in int_columns else [] for c in columns}
        self.appenders: tuple[Callable[[Any], None], ...] = tuple(self.data[c].append for c in columns)
        self._cache: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.data[self.columns[0]])

    def numeric(self, name: str) -> np.ndarray:
        """A column of numbers as an int64 numpy array (a copy: safe to keep while logging)."""
        return np.array(self.data[name], dtype=np.int64)

    def text(self, name: str) -> list[str]:
        values = self.data[name]
        convert = self.converters[name]
        names = {v: convert(v) for v in set(values)}  # few distinct values: convert each once
        return list(map(names.__getitem__, values))

    def all_columns(self) -> dict[str, Any]:
        """Every column (numbers as int64 arrays, text as str lists), cached until a row is
        added: the summary, the time series and the plots all read the same copy."""
        if self._cache is None or self._cache[0] != len(self):
            cols = {c: self.numeric(c) if isinstance(self.data[c], array) else self.text(c) for c in self.columns}
            self._cache = (len(self), cols)
        return self._cache[1]


class RunLog:
    """Rows of requests and actions, appended in any order, kept by column."""

    def __init__(self) -> None:
        self._requests = _Table(REQUEST_COLUMNS, _INT_REQUEST)
        self._actions = _Table(ACTION_COLUMNS, _INT_ACTION, {"kind": canonical_kind})
        (self._r_id, self._r_model, self._r_prio, self._r_arr, self._r_dl, self._r_status, self._r_lat,
         self._r_queue, self._r_exec, self._r_batch, self._r_cold, self._r_worker) = self._requests.appenders
        self._a_append = self._actions.appenders

    # -- appending (hot: one call per request; keep it to plain appends)

    def request(self, request_id: int, model: str, priority: int, arrival_ns: int, deadline_ns: int,
                status: Any, latency_ns: int, queue_ns: int, exec_ns: int, batch_size: int,
                cold_start: bool, worker: str) -> None:
        self._r_id(request_id)
        self._r_model(model)
        self._r_prio(priority)
        self._r_arr(arrival_ns)
        self._r_dl(deadline_ns)
        self._r_status(status)
        self._r_lat(latency_ns)
        self._r_queue(queue_ns)
        self._r_exec(exec_ns)
        self._r_batch(batch_size)
        self._r_cold(1 if cold_start else 0)
        self._r_worker(worker)

    def action(self, action_id: int, kind: str, worker: str, device: int, model: str, batch_size: int,
               sent_ns: int, begin_ns: int, end_ns: int, predicted_ns: int, measured_ns: int,
               status: Any) -> None:
        a = self._a_append
        a[0](action_id)
        a[1](kind)
        a[2](worker)
        a[3](device)
        a[4](model)
        a[5](batch_size)
        a[6](sent_ns)
        a[7](begin_ns)
        a[8](end_ns)
        a[9](predicted_ns)
        a[10](measured_ns)
        a[11](status)

    # -- reading

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    @property
    def num_actions(self) -> int:
        return len(self._actions)

    def requests(self) -> dict[str, Any]:
        """Columns by name: numbers as int64 numpy arrays, text as lists of str. Shared until
        the next row is added: treat as read-only."""
        return self._requests.all_columns()

    def actions(self) -> dict[str, Any]:
        return self._actions.all_columns()

    def add_requests(self, columns: Mapping[str, Any]) -> None:
        """Append many request rows at once: every column of REQUEST_COLUMNS, equal lengths
        (numbers as numpy arrays or lists of int, text as lists of str or Status)."""
        _add_columns(self._requests, columns)

    def add_actions(self, columns: Mapping[str, Any]) -> None:
        _add_columns(self._actions, columns)

    def extend(self, other: "RunLog") -> None:
        """Append every row of `other` (e.g. the logs of several load generator processes)."""
        for mine, theirs in ((self._requests, other._requests), (self._actions, other._actions)):
            for c in mine.columns:
                mine.data[c].extend(theirs.data[c])

    # -- files

    def write_requests_tsv(self, path: str | Path) -> Path:
        return _write_tsv(path, self._requests)

    def write_actions_tsv(self, path: str | Path) -> Path:
        return _write_tsv(path, self._actions)

    def read_requests_tsv(self, path: str | Path) -> int:
        """Append the rows of a requests.tsv; returns how many."""
        return _read_tsv(path, self._requests)

    def read_actions_tsv(self, path: str | Path, lenient: bool = False) -> int:
        """Append the rows of an actions.tsv (e.g. the controller's action log); returns how many.
        lenient: columns matched by name in any order, missing ones filled (-1 / ""), unknown
        ones ignored, malformed rows skipped, instead of raising."""
        return _read_tsv(path, self._actions, lenient)

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunLog":
        """A run folder's requests.tsv and (if present) actions.tsv, back into a RunLog."""
        log = cls()
        run_dir = Path(run_dir)
        log.read_requests_tsv(run_dir / "requests.tsv")
        if (run_dir / "actions.tsv").exists():
            log.read_actions_tsv(run_dir / "actions.tsv")
        return log


def window(log: RunLog, start_ns: int, end_ns: int | None = None) -> RunLog:
    """The requests arriving and actions sent in [start_ns, end_ns), as a new RunLog with its
    times shifted so that start_ns becomes 0 (e.g. a run without its ramp-up)."""
    out = RunLog()
    for columns, time_key, shifted, add in (
            (log.requests(), "arrival_ns", ("arrival_ns", "deadline_ns"), out.add_requests),
            (log.actions(), "sent_ns", ("sent_ns", "begin_ns", "end_ns"), out.add_actions)):
        t = columns[time_key]
        keep = (t >= start_ns) & (t < end_ns if end_ns is not None else True)
        picked: dict[str, Any] = {}
        for name, values in columns.items():
            if isinstance(values, np.ndarray):
                values = values[keep]
                if name in shifted:
                    values = np.where(values >= 0, values - start_ns, -1)
                picked[name] = values
            else:
                picked[name] = [v for v, k in zip(values, keep.tolist()) if k]
        add(picked)
    return out


def _add_columns(table: _Table, columns: Mapping[str, Any]) -> None:
    missing = [c for c in table.columns if c not in columns]
    if missing:
        raise ValueError(f"columns missing: {', '.join(missing)}")
    lengths = {len(columns[c]) for c in table.columns}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    for c in table.columns:
        target, values = table.data[c], columns[c]
        if isinstance(target, array):
            target.frombytes(np.ascontiguousarray(values, dtype=np.int64).tobytes())
        else:
            target.extend(values)


def _name(value: Any) -> str:
    """A Status (or any enum) as its name; text as itself."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value)


def _write_tsv(path: str | Path, table: _Table) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = []
    for c in table.columns:
        values = table.data[c]
        if isinstance(values, array):
            cells.append(list(map(str, values)))
        else:
            convert = table.converters[c]
            names = {v: _clean(convert(v)) for v in set(values)}  # few distinct values: convert once
            cells.append(list(map(names.__getitem__, values)))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(table.columns) + "\n")
        if len(table):
            fh.write("\n".join(map("\t".join, zip(*cells))))
            fh.write("\n")
    return path


def _clean(text: str) -> str:
    """No tab or newline may reach a TSV cell."""
    return text.replace("\t", " ").replace("\n", " ") if ("\t" in text or "\n" in text) else text


def _read_tsv(path: str | Path, table: _Table, lenient: bool = False) -> int:
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if tuple(header) != table.columns and not lenient:
            raise ValueError(f"{path}: columns {header} are not {list(table.columns)}")
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    if lenient:
        return _read_lenient(rows, header, table)
    for i, c in enumerate(table.columns):
        values = [row[i] for row in rows]
        if isinstance(table.data[c], array):
            table.data[c].extend(map(int, values))
        else:
            table.data[c].extend(values)
    return len(rows)


def _read_lenient(rows: list[list[str]], header: list[str], table: _Table) -> int:
    where = {name: i for i, name in enumerate(header)}
    parsed = []
    for row in rows:
        if len(row) != len(header) or row[:len(header)] == header:
            continue  # a torn last line, or a header repeated after a log rotation
        try:
            parsed.append([_cell_value(row[where[c]], isinstance(table.data[c], array)) if c in where
                           else (-1 if isinstance(table.data[c], array) else "") for c in table.columns])
        except ValueError:
            continue
    for i, c in enumerate(table.columns):
        table.data[c].extend(row[i] for row in parsed)
    return len(parsed)


def _cell_value(text: str, numeric: bool) -> Any:
    if not numeric:
        return text
    if text in ("", "-"):
        return -1
    return int(float(text)) if ("." in text or "e" in text) else int(text)


# ----------------------------------------------------------------------------- summary


def summarize_run(log: RunLog, title: str = "run", slo_ms: float = 100.0) -> dict:
    """The numbers of a run, as one JSON-ready dict (percentiles from HDR histograms)."""
    req = log.requests()
    n = log.num_requests
    status = np.array(req["status"], dtype=object) if n else np.zeros(0, dtype=object)
    ok = status == "OK" if n else np.zeros(0, dtype=bool)
    met = _met_slo(req, ok, slo_ms)
    arrival, latency = req["arrival_ns"], req["latency_ns"]
    span_ns = int(arrival.max() - arrival.min()) if n else 0
    span_s = max(span_ns / NS_PER_S, 1e-9)
    answered = latency >= 0
    end_ns = int((arrival + np.where(answered, latency, 0)).max()) if n else 0
    by_status: dict[str, int] = {}
    if n:
        names, counts = np.unique(status.astype(str), return_counts=True)
        by_status = {str(k): int(v) for k, v in sorted(zip(names, counts), key=lambda kv: (-kv[1], kv[0]))}
    out = {
        "title": title,
        "slo_ms": slo_ms,
        "requests": n,
        "arrival_span_s": round(span_ns / NS_PER_S, 6),
        "duration_s": round(max(end_ns, span_ns) / NS_PER_S, 6),
        "offered_per_s": n / span_s if n > 1 else 0.0,
        "ok": int(ok.sum()),
        "met_slo": int(met.sum()),
        "attainment": float(met.sum() / n) if n else math.nan,  # met SLO / offered
        "throughput_per_s": float(ok.sum()) / span_s if n > 1 else 0.0,
        "goodput_per_s": float(met.sum()) / span_s if n > 1 else 0.0,
        "unanswered": int((~answered).sum()),
        "by_status": by_status,
        "cold_starts": int(req["cold_start"][ok].sum()) if n else 0,
        "latency_ms": _hdr(latency[ok]).summary_ms(),
        "latency_all_answered_ms": _hdr(latency[answered]).summary_ms(),
        "reject_latency_ms": _hdr(latency[answered & ~ok]).summary_ms(),
        "queue_ms": _hdr(req["queue_ns"][ok & (req["queue_ns"] >= 0)]).summary_ms(),
        "exec_ms": _hdr(req["exec_ns"][ok & (req["exec_ns"] >= 0)]).summary_ms(),
        "batch_sizes": _histogram(req["batch_size"][ok]),
        "models": len(set(req["model"])),
        "workers": _count(np.array(req["worker"], dtype=object)[ok]) if n else {},
    }
    out["actions"] = _summarize_actions(log)
    return out


def _met_slo(req: Mapping[str, Any], ok: np.ndarray, slo_ms: float) -> np.ndarray:
    if not len(ok):
        return ok
    latency, arrival, deadline = req["latency_ns"], req["arrival_ns"], req["deadline_ns"]
    budget = np.where(deadline >= 0, deadline - arrival, int(slo_ms * 1e6))
    return ok & (latency >= 0) & (latency <= budget)


def _hdr(values_ns: np.ndarray) -> Latencies:
    lat = Latencies()
    lat.record_many_ns(values_ns)
    return lat


def _histogram(values: np.ndarray) -> dict[str, int]:
    if not len(values):
        return {}
    keys, counts = np.unique(values, return_counts=True)
    return {str(int(k)): int(v) for k, v in zip(keys, counts)}


def _count(values: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def _summarize_actions(log: RunLog) -> dict:
    if not log.num_actions:
        return {"count": 0}
    act = log.actions()
    kind = np.array(act["kind"], dtype=object)
    status = np.array(act["status"], dtype=object)
    out: dict[str, Any] = {"count": log.num_actions, "by_kind": {}}
    for k in sorted(set(act["kind"])):
        mask = kind == k
        out["by_kind"][k] = {"count": int(mask.sum()), "by_status": _count(status[mask])}
    errors = {}
    for k in PREDICTION_KINDS:
        err = prediction_error_ns(act, k)
        if len(err):
            errors[k] = {
                "count": int(len(err)),
                "abs_error_ms": _hdr(np.abs(err)).summary_ms(),
                "mean_error_ms": float(err.mean() / 1e6),  # > 0: slower than predicted
                "underpredicted_fraction": float((err > 0).mean()),
            }
    out["prediction_error"] = errors
    return out


def prediction_error_ns(act: Mapping[str, Any], kind: str = "EXEC") -> np.ndarray:
    """measured - predicted (ns) of successful `kind` actions that carry both."""
    if not len(act["kind"]):
        return np.zeros(0, dtype=np.int64)
    mask = ((np.array(act["kind"], dtype=object) == kind) & (np.array(act["status"], dtype=object) == "OK")
            & (act["predicted_ns"] > 0) & (act["measured_ns"] > 0))
    return act["measured_ns"][mask] - act["predicted_ns"][mask]


def format_run_summary(s: Mapping[str, Any]) -> str:
    """The human table of a summarize_run() dict."""
    n = s["requests"]

    def pct(x: int) -> str:
        return f"{100.0 * x / n:.2f}%" if n else "-"

    rows = [
        ("offered", n, f"{s['offered_per_s']:.0f}/s"),
        ("ok", s["ok"], pct(s["ok"])),
        ("met SLO", s["met_slo"], pct(s["met_slo"])),
        ("throughput", f"{s['throughput_per_s']:.0f}/s", ""),
        ("goodput", f"{s['goodput_per_s']:.0f}/s", ""),
        ("cold starts", s["cold_starts"], pct(s["cold_starts"])),
        ("unanswered", s["unanswered"], pct(s["unanswered"])),
    ]
    parts = [f"== {s['title']}: {s['duration_s']:.1f} s, SLO {s['slo_ms']:g} ms ==", format_table(rows)]
    not_ok = [(k, v, pct(v)) for k, v in s["by_status"].items() if k != "OK"]
    parts += ["", "replies by status (not OK)", format_table(not_ok) if not_ok else "  none"]
    header = ("ms", "p50", "p99", "p99.9", "p99.99", "max")
    lat = [(label, *(s[key].get(p) for p in header[1:])) for label, key in
           (("latency (OK)", "latency_ms"), ("rejections", "reject_latency_ms"), ("queue", "queue_ms"),
            ("exec", "exec_ms"))]
    parts += ["", format_table(lat, header=header)]
    if s["batch_sizes"]:
        parts += ["", "batch sizes (OK requests): " + "  ".join(f"{k}:{v}" for k, v in s["batch_sizes"].items())]
    acts = s.get("actions", {})
    if acts.get("count"):
        kinds = "  ".join(f"{k}:{v['count']}" for k, v in acts["by_kind"].items())
        parts += ["", f"actions: {acts['count']} ({kinds})"]
        for k, e in acts.get("prediction_error", {}).items():
            a = e["abs_error_ms"]
            parts.append(f"  {k} |measured - predicted| ms: p50 {a['p50']:.3f}  p99 {a['p99']:.3f}  "
                         f"p99.9 {a['p99.9']:.3f}  max {a['max']:.3f}; slower than predicted "
                         f"{100 * e['underpredicted_fraction']:.1f}%")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- time series


def timeseries(log: RunLog, slo_ms: float = 100.0, bin_s: float = BIN_S) -> dict[str, np.ndarray]:
    """Per-bin series: offered (by arrival), throughput and goodput (by completion), latency
    p50/p99 (HDR, by arrival), cold starts, loads, evictions (UNLOADs), mean batch size."""
    req = log.requests()
    bin_ns = int(bin_s * NS_PER_S)
    arrival, latency = req["arrival_ns"], req["latency_ns"]
    ok = np.array(req["status"], dtype=object) == "OK" if len(arrival) else np.zeros(0, bool)
    met = _met_slo(req, ok, slo_ms)
    done = arrival + np.maximum(latency, 0)
    act = log.actions()
    kind = np.array(act["kind"], dtype=object)
    # Bins cover the arrivals; replies and actions after the last arrival count in its bin (a
    # trailing half-empty bin would read as a collapse of throughput that did not happen).
    sent = act["sent_ns"]
    last_ns = int(arrival.max()) if len(arrival) else (int(sent.max()) if len(sent) else 0)
    bins = last_ns // bin_ns + 1
    a_bin = arrival // bin_ns
    d_bin = done // bin_ns

    def count(bin_index: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        idx = bin_index if mask is None else bin_index[mask]
        return np.bincount(np.clip(idx, 0, bins - 1), minlength=bins)[:bins].astype(np.float64) / bin_s

    out = {"t_s": (np.arange(bins) + 0.5) * bin_s, "offered_per_s": count(a_bin), "throughput_per_s": count(d_bin, ok),
           "goodput_per_s": count(d_bin, met), "cold_starts_per_s": count(d_bin, ok & (req["cold_start"] > 0))}
    p50, p99 = np.full(bins, np.nan), np.full(bins, np.nan)
    ok_bins, ok_lat = a_bin[ok], latency[ok]
    order = np.argsort(ok_bins, kind="stable")
    ok_bins, ok_lat = ok_bins[order], ok_lat[order]
    edges = np.searchsorted(ok_bins, np.arange(bins + 1))
    for b in range(bins):
        if edges[b + 1] > edges[b]:
            lat = _hdr(ok_lat[edges[b]:edges[b + 1]])
            p50[b], p99[b] = lat.percentile_ms(50), lat.percentile_ms(99)
    out["latency_p50_ms"], out["latency_p99_ms"] = p50, p99
    batch_sum = np.bincount(np.clip(d_bin[ok], 0, bins - 1), weights=req["batch_size"][ok], minlength=bins)
    served = count(d_bin, ok) * bin_s
    # Per request served, so it reads "the batch an average request rode in".
    out["mean_batch_size"] = np.where(served > 0, batch_sum / np.maximum(served, 1), np.nan)
    a_bin_act = act["sent_ns"] // bin_ns
    out["loads_per_s"] = count(a_bin_act, kind == "LOAD") if len(kind) else np.zeros(bins)
    out["evictions_per_s"] = count(a_bin_act, kind == "UNLOAD") if len(kind) else np.zeros(bins)
    return out


def write_timeseries_csv(path: str | Path, series: Mapping[str, np.ndarray]) -> Path:
    path = Path(path)
    keys = list(series)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for row in zip(*(series[k] for k in keys)):
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" for v in row])
    return path


# ----------------------------------------------------------------------------- plots


def write_timeseries_png(path: str | Path, series: Mapping[str, np.ndarray], title: str, slo_ms: float) -> Path:
    t = series["t_s"]
    with saved_figure(path, 4, 1, figsize=(9, 10), dpi=100, sharex=True) as (_, axes):
        ax = axes[0]
        ax.plot(t, series["offered_per_s"], label="offered", color="grey", linestyle="--")
        ax.plot(t, series["throughput_per_s"], label="throughput (OK)")
        ax.plot(t, series["goodput_per_s"], label="goodput (within SLO)")
        ax.set_ylabel("requests/s")
        ax.legend(loc="lower right", fontsize=8)
        ax = axes[1]
        ax.plot(t, series["latency_p50_ms"], label="p50")
        ax.plot(t, series["latency_p99_ms"], label="p99")
        ax.axhline(slo_ms, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
        if np.any(np.isfinite(series["latency_p99_ms"])):
            ax.set_yscale("log")
        ax.set_ylabel("latency of OK (ms)")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[2]
        ax.plot(t, series["cold_starts_per_s"], label="cold starts")
        ax.plot(t, series["loads_per_s"], label="LOADs")
        ax.plot(t, series["evictions_per_s"], label="evictions (UNLOADs)")
        ax.set_ylabel("per second")
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[3]
        ax.plot(t, series["mean_batch_size"], label="mean batch size (per OK request)")
        ax.set_ylabel("batch size")
        ax.set_xlabel(f"time since start (s); one point per {t[1] - t[0] if len(t) > 1 else BIN_S:g} s bin")
        ax.legend(loc="upper right", fontsize=8)
        for ax in axes:
            ax.grid(True, alpha=0.3)
        axes[0].set_title(title)
    return Path(path)


def write_run_cdf_png(path: str | Path, log: RunLog, title: str, slo_ms: float) -> Path:
    """Latency CDF of OK requests (from HDR buckets); beside it, when actions carry both a
    prediction and a measurement, the CDF of measured - predicted per action kind."""
    req = log.requests()
    ok = np.array(req["status"], dtype=object) == "OK" if log.num_requests else np.zeros(0, bool)
    act = log.actions()
    errors = {k: prediction_error_ns(act, k) for k in PREDICTION_KINDS} if log.num_actions else {}
    errors = {k: v for k, v in errors.items() if len(v)}
    with saved_figure(path, 1, 2 if errors else 1, figsize=(12 if errors else 7, 4.5), dpi=100,
                      squeeze=False) as (_, axes):
        ax = axes[0][0]
        for label, mask in (("OK", ok), ("all answered", req["latency_ns"] >= 0)):
            lat = _hdr(req["latency_ns"][mask])
            xs, ys = lat.cdf_ms()
            if xs:
                ax.step(xs, ys, where="post", label=f"{label} (n={lat.count})")
        ax.axvline(slo_ms, linestyle="--", color="grey", linewidth=1, label=f"SLO {slo_ms:g} ms")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{title}: latency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        if errors:
            ax = axes[0][1]
            for k, err in errors.items():
                xs = np.sort(err) / 1e6
                if len(xs) > 20_000:  # a plot needs no more points than pixels
                    xs = xs[np.linspace(0, len(xs) - 1, 20_000).astype(np.int64)]
                ax.step(xs, np.linspace(0, 1, len(xs)), where="post", label=f"{k} (n={len(err)})")
            ax.axvline(0, linestyle="--", color="grey", linewidth=1)
            ax.set_xlabel("measured - predicted (ms); > 0: slower than predicted")
            ax.set_ylabel("fraction of actions")
            ax.set_title("prediction error")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
    return Path(path)


# ----------------------------------------------------------------------------- the lot


def write_summary_csv(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """The summary flattened to `key,value` rows (nested keys joined with '.')."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("key", "value"))
        for key, value in _flatten(summary):
            w.writerow((key, "" if value is None else value))
    return path


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def write_run(out_dir: str | Path, runlog: RunLog, title: str, slo_ms: float,
              extra: Mapping[str, Any] | None = None) -> dict:
    """Every file of a run report into `out_dir`; returns the summary dict.

    requests.tsv, actions.tsv (when there are actions), summary.json, summary.csv,
    timeseries.csv, timeseries.png, cdf.png. `extra` (e.g. the setup, controller counters) is
    added to the summary under its own keys.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runlog.write_requests_tsv(out / "requests.tsv")
    if runlog.num_actions:
        runlog.write_actions_tsv(out / "actions.tsv")
    summary = summarize_run(runlog, title, slo_ms)
    summary.update(extra or {})
    summary = _finite(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_summary_csv(out / "summary.csv", summary)
    series = timeseries(runlog, slo_ms)
    write_timeseries_csv(out / "timeseries.csv", series)
    write_timeseries_png(out / "timeseries.png", series, title, slo_ms)
    write_run_cdf_png(out / "cdf.png", runlog, title, slo_ms)
    return summary
