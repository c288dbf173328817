"""Results into numbers, tables, a JSON file and a latency CDF plot.

Percentiles come from HDR histograms (the hdrhistogram package): constant memory however long
the run, and a bounded relative error (3 significant digits) at every percentile, p99.99
included, which sorted lists of samples do not give for free.

Example:
    lat = Latencies()
    lat.record_ns(2_300_000)
    summary = summarize(results, slo_ms=100)
    print(format_summary(summary))
    write_json(out / "summary.json", summary)
    write_cdf_png(out / "cdf.png", {"all": lat}, slo_ms=100)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 99.0, 99.9, 99.99)
LOWEST_US = 1  # 1 microsecond: below anything a message round trip can take
HIGHEST_US = 3_600_000_000  # one hour: nothing in a benchmark legitimately takes longer
SIGNIFICANT_DIGITS = 3  # relative error of a recorded value at most 0.1%


class Latencies:
    """An HDR histogram of durations, recorded in ns, kept in microseconds."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        # Values share a bucket when they agree on their top `_sub_bucket_bits` bits.
        self._sub_bucket_bits = int(self._hist.sub_bucket_count).bit_length() - 1

    def record_ns(self, value_ns: int) -> None:
        # Clamped, not refused: a negative difference (clock granularity) or an absurd value
        # must not abort a run that took minutes; both ends stay visible as min and max.
        value_us = min(max(int(value_ns) // 1000, LOWEST_US), HIGHEST_US)
        self._hist.record_value(value_us)

    def record_many_ns(self, values_ns: Any) -> None:
        """Record a whole array of durations at once: equal microsecond values are counted
        together, so a million samples cost one histogram update per distinct value."""
        import numpy as np

        values = np.asarray(values_ns, dtype=np.int64)
        if not values.size:
            return
        values_us = np.clip(values // 1000, LOWEST_US, HIGHEST_US)
        # Down to the lowest value of each value's HDR bucket first (what the histogram keeps
        # anyway): a few thousand distinct keys however many samples.
        bits = np.frexp(values_us.astype(np.float64))[1]  # = bit length, exact below 2**53
        shift = np.maximum(bits - self._sub_bucket_bits, 0)
        keys, counts = np.unique((values_us >> shift) << shift, return_counts=True)
        record = self._hist.record_value
        for key, count in zip(keys.tolist(), counts.tolist()):
            record(key, count)

    def add(self, other: "Latencies") -> None:
        self._hist.add(other._hist)

    @property
    def count(self) -> int:
        return self._hist.get_total_count()

    def percentile_ms(self, percentile: float) -> float:
        if not self.count:
            return math.nan
        return self._hist.get_value_at_percentile(percentile) / 1000.0

    def max_ms(self) -> float:
        return self._hist.get_max_value() / 1000.0 if self.count else math.nan

    def min_ms(self) -> float:
        return self._hist.get_min_value() / 1000.0 if self.count else math.nan

    def mean_ms(self) -> float:
        return self._hist.get_mean_value() / 1000.0 if self.count else math.nan

    def summary_ms(self) -> dict[str, float]:
        """{"p50": .., "p99": .., "p99.9": .., "p99.99": .., "max": ..} in milliseconds."""
        out = {_label(p): self.percentile_ms(p) for p in PERCENTILES}
        out["max"] = self.max_ms()
        return out

    def cdf_ms(self) -> tuple[list[float], list[float]]:
        """(latency ms, fraction of samples <= it) at every recorded value, for plotting."""
        xs, ys = [], []
        total = self.count
        if not total:
            return xs, ys
        for item in self._hist.get_recorded_iterator():
            xs.append(item.value_iterated_to / 1000.0)  # the top of the value's bucket
            ys.append(item.total_count_to_this_value / total)
        return xs, ys


def _label(percentile: float) -> str:
    return f"p{percentile:g}"


@dataclass
class GroupResults:
    """Outcomes for one group of models (e.g. "emulated", "onnx") sharing an SLO."""

    slo_ms: float
    sent: int = 0
    ok: int = 0
    met_slo: int = 0
    latency: Latencies = field(default_factory=Latencies)


# What the controller answers when it refuses a request at once, before admitting it
# (controller/core.py on_request). Any other answer but OK came after admission
# (DEADLINE_MISSED once queued, a worker lost, ...): a miss of an admitted request.
REFUSED_AT_ONCE = ("WOULD_MISS_DEADLINE", "QUEUE_FULL", "UNAVAILABLE", "MODEL_NOT_FOUND", "BAD_INPUT")


def answered_after_admission(by_status: Mapping[str, int], never_sent: str = "") -> int:
    """How many of `by_status`'s answers came after admission (`never_sent`: the load generator's
    own status for a request it could not send, which the system never saw)."""
    return sum(n for status, n in by_status.items() if status not in ("OK", never_sent, *REFUSED_AT_ONCE))


@dataclass
class LoadResults:
    """What one load run measured (bench.loadgen fills it in; `summarize` reads it)."""

    scheduled: int  # requests in the schedule
    schedule_duration_ns: int
    sent: int = 0
    answered: int = 0
    unanswered: int = 0  # sent, but no reply before the drain deadline
    met_slo: int = 0  # OK and latency <= the model's SLO
    cold_starts: int = 0
    stray_replies: int = 0  # replies to no request of ours, or a second reply to one
    duration_ns: int = 0  # first scheduled send -> end of the run
    by_status: Counter = field(default_factory=Counter)  # status name -> replies
    first_detail: dict[str, str] = field(default_factory=dict)  # status name -> its first detail
    batch_sizes: Counter = field(default_factory=Counter)  # batch size -> OK replies
    workers: Counter = field(default_factory=Counter)  # worker name -> OK replies
    latency: Latencies = field(default_factory=Latencies)  # OK replies, from scheduled send
    reject_latency: Latencies = field(default_factory=Latencies)  # non-OK replies
    exec_time: Latencies = field(default_factory=Latencies)  # worker-measured, OK replies
    send_lag: Latencies = field(default_factory=Latencies)  # sent - scheduled
    groups: dict[str, GroupResults] = field(default_factory=dict)
    start_ns: int = 0  # monotonic time of the schedule's offset 0 (the request log's time origin)

    @property
    def ok(self) -> int:
        return self.by_status.get("OK", 0)

    @property
    def rejected(self) -> int:
        return self.answered - self.ok


@dataclass(frozen=True)
class Summary:
    """What a load run achieved. Latencies are from each request's scheduled send time."""

    name: str
    duration_s: float  # wall time from the first scheduled send to the last reply
    offered: int  # requests sent
    offered_rate_per_s: float
    answered: int  # requests that got any reply
    ok: int  # replies with status OK
    met_slo: int  # OK replies within their model's SLO, measured at the client
    goodput_per_s: float  # met_slo per second of the schedule
    by_status: dict[str, int]  # status name -> replies
    first_detail: dict[str, str]  # status name -> the controller's detail of its first reply
    unanswered: int  # sent but never answered before the drain deadline (a bug if > 0)
    cold_starts: int  # OK replies whose model had to be loaded first
    latency_ms: dict[str, float]  # of OK replies: p50, p99, p99.9, p99.99, max
    reject_latency_ms: dict[str, float]  # how fast non-OK replies came back
    exec_ms: dict[str, float]  # worker-measured exec time of the batch, per OK reply
    send_lag_ms: dict[str, float]  # how late the generator sent vs its schedule (client health)
    batch_sizes: dict[str, int]  # batch size -> OK replies served in a batch that size
    prediction_error: dict[str, Any] = field(default_factory=dict)  # controller counters
    groups: dict[str, dict] = field(default_factory=dict)  # per model group: ok, met_slo, latency

    def to_json(self) -> dict:
        return _finite(asdict(self))


def summarize(results: LoadResults, name: str = "run", prediction_error: Mapping | None = None) -> Summary:
    duration_s = max(results.duration_ns / 1e9, 1e-9)
    schedule_s = max(results.schedule_duration_ns / 1e9, 1e-9)
    groups = {
        label: {"ok": g.ok, "met_slo": g.met_slo, "slo_ms": g.slo_ms, "latency_ms": g.latency.summary_ms()}
        for label, g in sorted(results.groups.items())
    }
    return Summary(
        name=name,
        duration_s=round(duration_s, 3),
        offered=results.sent,
        offered_rate_per_s=results.sent / schedule_s,
        answered=results.answered,
        ok=results.by_status.get("OK", 0),
        met_slo=results.met_slo,
        goodput_per_s=results.met_slo / schedule_s,
        by_status=dict(sorted(results.by_status.items(), key=lambda kv: (-kv[1], kv[0]))),
        first_detail={k: v for k, v in sorted(results.first_detail.items()) if k != "OK"},
        unanswered=results.unanswered,
        cold_starts=results.cold_starts,
        latency_ms=results.latency.summary_ms(),
        reject_latency_ms=results.reject_latency.summary_ms(),
        exec_ms=results.exec_time.summary_ms(),
        send_lag_ms=results.send_lag.summary_ms(),
        batch_sizes={str(k): v for k, v in sorted(results.batch_sizes.items())},
        prediction_error=dict(prediction_error or {}),
        groups=groups,
    )


def percentiles_ms(samples_ns: Sequence[int], percentiles: Sequence[float]) -> dict[str, float]:
    """{"p50": ms, "p99": ms, ...} of ns samples; each the sample at or above its rank (numpy's
    "higher"), so a tail is a time that was really measured."""
    import numpy as np

    arr = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {f"p{p:g}": float(np.percentile(arr, p, method="higher")) for p in percentiles}


def prediction_counters(counters: Mapping[str, Any]) -> dict[str, Any]:
    """The controller's predicted-vs-measured counters: every key that mentions "prediction"."""
    return {k: v for k, v in sorted(counters.items()) if "prediction" in str(k)}


# ----------------------------------------------------------------------------- text


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Columns aligned: text left, numbers right."""
    cells = [[_cell(v) for v in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(width)]
    numeric = [all(_is_number(r[i]) for r in cells[1 if header else 0:] if r[i]) for i in range(width)]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text.rstrip("%x"))
        return True
    except ValueError:
        return False


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def format_summary(s: Summary) -> str:
    """The human report: counts, outcomes by status, latency percentiles."""
    rows = [
        ("offered", s.offered, f"{s.offered_rate_per_s:.0f}/s"),
        ("answered", s.answered, _pct(s.answered, s.offered)),
        ("ok", s.ok, _pct(s.ok, s.offered)),
        ("met SLO", s.met_slo, _pct(s.met_slo, s.offered)),
        ("goodput", f"{s.goodput_per_s:.0f}/s", ""),
        ("cold starts", s.cold_starts, _pct(s.cold_starts, s.ok)),
        ("unanswered", s.unanswered, _pct(s.unanswered, s.offered)),
    ]
    parts = [f"== {s.name}: {s.duration_s:.1f} s ==", format_table(rows)]
    rejected = [(name, n, _pct(n, s.offered), _clip(s.first_detail.get(name, "")))
                for name, n in s.by_status.items() if name != "OK"]
    parts += ["", "replies by status (not OK)", format_table(rejected) if rejected else "  none"]
    lat_rows = [("latency (OK)", *_ms_row(s.latency_ms))]
    for label, g in s.groups.items():
        lat_rows.append((f"  {label} (SLO {g['slo_ms']:g} ms)", *_ms_row(g["latency_ms"])))
    lat_rows += [("rejections", *_ms_row(s.reject_latency_ms)),
                 ("exec (worker)", *_ms_row(s.exec_ms)),
                 ("send lag", *_ms_row(s.send_lag_ms))]
    parts += ["", format_table(lat_rows, header=("ms", *(_label(p) for p in PERCENTILES), "max"))]
    if s.batch_sizes:
        parts += ["", "batch sizes (OK replies): " + "  ".join(f"{k}:{v}" for k, v in s.batch_sizes.items())]
    pred = format_table(sorted(s.prediction_error.items())) if s.prediction_error else "  -"
    parts += ["", "predicted vs measured exec (controller)", pred]
    return "\n".join(parts)


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _ms_row(latency_ms: Mapping[str, float]) -> list[float]:
    return [latency_ms.get(_label(p), math.nan) for p in PERCENTILES] + [latency_ms.get("max", math.nan)]


# ----------------------------------------------------------------------------- files


def write_json(path: str | Path, data: Summary | Mapping) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.to_json() if isinstance(data, Summary) else _finite(dict(data))
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN: an empty histogram's percentiles become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextmanager
def saved_figure(path: str | Path, *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """`plt.subplots(*args, **kwargs)` for the block to draw on; laid out and saved to `path`
    when it ends, and closed either way. matplotlib is imported on first use, headless (no
    display needed, and never stealing a terminal's window system)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_cdf_png(path: str | Path, series: Mapping[str, Latencies], slo_ms: float | Mapping[str, float] | None = None,
                  title: str = "Latency CDF") -> Path:
    """One CDF line per series on a log-x axis, with a dashed vertical line at each SLO."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with saved_figure(path, figsize=(7, 4.5), dpi=110) as (_, ax):
        for label, lat in series.items():
            xs, ys = lat.cdf_ms()
            if xs:
                ax.step(xs, ys, where="post", label=f"{label} (n={lat.count})")
        slos = slo_ms if isinstance(slo_ms, Mapping) else ({"SLO": slo_ms} if slo_ms else {})
        for label, value in slos.items():
            ax.axvline(value, linestyle="--", color="grey", linewidth=1)
            # Left of the line, mid-height: clear of the legend and of the plot's right edge.
            ax.annotate(f"{label} {value:g} ms", (value, 0.5), rotation=90, fontsize=8, ha="right",
                        va="center", xytext=(-2, 0), textcoords="offset points", color="grey")
        ax.set_xscale("log")
        if slos:
            left, right = ax.get_xlim()
            ax.set_xlim(left, max(right, 1.5 * max(slos.values())))
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("latency from scheduled send (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(loc="lower right", fontsize=8)
    return path
