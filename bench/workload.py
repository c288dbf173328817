"""Arrival schedules: when each request is sent and to which model. Pure and seeded.

A schedule is two parallel arrays, `times_ns` (offsets from the run's start, sorted) and
`models` (an index into the caller's list of model names). Nothing here reads a clock or
touches a socket, so the load generator, the tests and the virtual-time simulator all replay
exactly the same arrivals for the same seed.

Open-loop Poisson arrivals over many models are generated as one Poisson process at the total
rate whose arrivals are then labelled by model with probability rate_i / total: the
superposition of independent Poisson processes is a Poisson process, and a thinned one is too,
so this equals one independent process per model, at a fraction of the cost.

Example:
    rates = zipf_rates(total_per_s=500, num_models=60, exponent=1.0)
    sched = poisson_schedule(rates, duration_s=30, seed=1)
    for t_ns, m in sched: ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Schedule:
    times_ns: np.ndarray  # int64, sorted offsets from the start of the run
    models: np.ndarray  # int32, index into the caller's model list, one per arrival
    duration_ns: int  # length of the window the arrivals were drawn over
    rates_per_s: np.ndarray  # float64, the offered rate per model index

    def __len__(self) -> int:
        return len(self.times_ns)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.times_ns.tolist(), self.models.tolist())

    @property
    def num_models(self) -> int:
        return len(self.rates_per_s)

    def counts(self) -> np.ndarray:
        """Arrivals per model index."""
        return np.bincount(self.models, minlength=self.num_models)


def uniform_rates(total_per_s: float, num_models: int) -> np.ndarray:
    """Every model equally popular."""
    _check_positive(num_models, "num_models")
    return np.full(num_models, float(total_per_s) / num_models)


def zipf_weights(num_models: int, exponent: float = 1.0) -> np.ndarray:
    """Popularity of model i proportional to 1 / (i + 1) ** exponent, normalised to sum 1.

    exponent 0 is uniform; 1 is the classic Zipf law, where a few models take most requests
    and a long tail is requested rarely (and so is often not resident: cold starts).
    """
    _check_positive(num_models, "num_models")
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    weights = 1.0 / np.arange(1, num_models + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def zipf_rates(total_per_s: float, num_models: int, exponent: float = 1.0) -> np.ndarray:
    return float(total_per_s) * zipf_weights(num_models, exponent)


def poisson_schedule(rates_per_s: Sequence[float], duration_s: float, seed: int) -> Schedule:
    """Open-loop Poisson arrivals over `duration_s`, model i at `rates_per_s[i]` requests/s."""
    rates = np.asarray(rates_per_s, dtype=np.float64)
    if rates.ndim != 1 or len(rates) == 0:
        raise ValueError("rates_per_s must be a non-empty list of rates")
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError("rates must be finite and >= 0")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    rng = np.random.default_rng(seed)
    duration_ns = int(round(duration_s * NS_PER_S))
    total = float(rates.sum())
    # Given their number, the arrival times of a Poisson process are independent and uniform
    # over the window; drawing them that way is exact and needs no running sum of gaps.
    count = int(rng.poisson(total * duration_s)) if total > 0 else 0
    times = np.sort(rng.integers(0, duration_ns, size=count, dtype=np.int64))
    models = rng.choice(len(rates), size=count, p=rates / total).astype(np.int32) if count else \
        np.zeros(0, dtype=np.int32)
    return Schedule(times, models, duration_ns, rates)


def constant_schedule(rates_per_s: Sequence[float], duration_s: float) -> Schedule:
    """Evenly spaced arrivals per model (no randomness): for a steady baseline."""
    rates = np.asarray(rates_per_s, dtype=np.float64)
    duration_ns = int(round(duration_s * NS_PER_S))
    times, models = [], []
    for index, rate in enumerate(rates):
        if rate <= 0:
            continue
        period_ns = NS_PER_S / rate
        t = np.arange(0, duration_ns, period_ns).astype(np.int64)
        times.append(t)
        models.append(np.full(len(t), index, dtype=np.int32))
    return _merge(times, models, duration_ns, rates)


def concat(first: Schedule, second: Schedule) -> Schedule:
    """`second` played after `first` (e.g. a warm-up phase, then the measured phase)."""
    if first.num_models != second.num_models:
        raise ValueError("schedules cover different model lists")
    times = np.concatenate([first.times_ns, second.times_ns + first.duration_ns])
    models = np.concatenate([first.models, second.models])
    rates = (first.rates_per_s * first.duration_ns + second.rates_per_s * second.duration_ns) / \
        (first.duration_ns + second.duration_ns)
    return Schedule(times, models, first.duration_ns + second.duration_ns, rates)


def _merge(times: list, models: list, duration_ns: int, rates: np.ndarray) -> Schedule:
    if not times:
        return Schedule(np.zeros(0, np.int64), np.zeros(0, np.int32), duration_ns, rates)
    all_times = np.concatenate(times)
    all_models = np.concatenate(models)
    order = np.argsort(all_times, kind="stable")
    return Schedule(all_times[order], all_models[order], duration_ns, rates)


def _check_positive(value: int, name: str) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


# ============================================================================ time-varying rates
#
# Every generator below reduces to one primitive: Poisson arrivals whose rate per model is
# constant inside each interval of a grid (`piecewise_schedule`). Inside an interval that is
# the same exact construction as `poisson_schedule` (a Poisson count, uniform times), so
# per-minute changes, bursts and a replayed trace all come out as one sorted Schedule.


def piecewise_schedule(rates_per_s: np.ndarray, interval_s: float, seed: int | np.random.Generator,
                       start_s: float = 0.0) -> Schedule:
    """Poisson arrivals with rate `rates_per_s[k, i]` for model i during interval k.

    The window is len(rates) * interval_s long; arrivals are offset by `start_s` (for
    chunks of a longer schedule). `seed` may be a Generator to continue a stream.
    """
    rates = np.asarray(rates_per_s, dtype=np.float64)
    if rates.ndim != 2 or rates.shape[1] == 0:
        raise ValueError("rates_per_s must be a 2-d array [interval, model]")
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError("rates must be finite and >= 0")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    intervals, num_models = rates.shape
    step_ns = int(round(interval_s * NS_PER_S))
    counts = rng.poisson(rates * interval_s).ravel()
    cells = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    times = (cells // num_models) * step_ns + rng.integers(0, step_ns, size=cells.size, dtype=np.int64)
    times += int(round(start_s * NS_PER_S))
    order = np.argsort(times, kind="stable")
    mean_rates = rates.mean(axis=0)
    return Schedule(times[order], (cells % num_models).astype(np.int32)[order], intervals * step_ns, mean_rates)


def concat_all(parts: Sequence[Schedule]) -> Schedule:
    """Chunks generated with their own `start_s` offsets, joined without shifting."""
    if not parts:
        raise ValueError("nothing to join")
    duration_ns = sum(p.duration_ns for p in parts)
    rates = sum(p.rates_per_s * p.duration_ns for p in parts) / max(duration_ns, 1)
    return Schedule(np.concatenate([p.times_ns for p in parts]), np.concatenate([p.models for p in parts]),
                    duration_ns, rates)


# ---------------------------------------------------------------------------- bursty on/off


def on_off_schedule(rates_on_per_s: Sequence[float], duration_s: float, seed: int, on_s: float = 5.0,
                    off_s: float = 5.0, rate_off_fraction: float = 0.0) -> Schedule:
    """Each model alternates ON and OFF periods of exponential length (means `on_s`, `off_s`),
    sending Poisson arrivals at its ON rate, or `rate_off_fraction` of it while OFF.

    Every model starts in a random phase (ON with probability on_s / (on_s + off_s)), so the
    models' bursts are independent: the total is bursty only as much as a sum of independent
    on/off sources is. Long-run mean rate of model i: rate_i * (on + fraction * off) / (on + off).
    """
    rates = np.asarray(rates_on_per_s, dtype=np.float64)
    if rates.ndim != 1 or len(rates) == 0 or np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise ValueError("rates_on_per_s must be a non-empty list of finite rates >= 0")
    if duration_s <= 0 or on_s <= 0 or off_s <= 0 or not 0 <= rate_off_fraction <= 1:
        raise ValueError("duration_s, on_s and off_s must be > 0 and rate_off_fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    duration_ns = int(round(duration_s * NS_PER_S))
    times, models = [], []
    for index, rate in enumerate(rates.tolist()):
        if rate <= 0:
            continue
        t, on = 0.0, bool(rng.random() < on_s / (on_s + off_s))
        while t < duration_s:
            length = min(rng.exponential(on_s if on else off_s), duration_s - t)
            period_rate = rate if on else rate * rate_off_fraction
            count = int(rng.poisson(period_rate * length)) if period_rate > 0 else 0
            if count:
                times.append(((t + rng.random(count) * length) * NS_PER_S).astype(np.int64))
                models.append(np.full(count, index, dtype=np.int32))
            t += length
            on = not on
    mean = rates * (on_s + rate_off_fraction * off_s) / (on_s + off_s)
    return _merge(times, models, duration_ns, mean)


# ---------------------------------------------------------------------------- Azure-like


@dataclass(frozen=True)
class AzureLike:
    """Knobs of the synthetic Azure-Functions-like trace (defaults give a heavy-tailed mix).

    Shape, after "Serverless in the Wild" (ATC 2020): popularity spans orders of magnitude
    (Zipf), each function's rate moves from minute to minute, and idle functions wake up in
    short bursts.
    """

    zipf_exponent: float = 1.0  # popularity of model i ~ 1 / (i + 1) ** exponent
    minute_sigma: float = 0.5  # per-minute change: log-rate random walk step (std dev)
    minute_reversion: float = 0.3  # pull of the log-rate back to its base each minute (0..1)
    burst_probability: float = 0.02  # chance a model bursts in a given minute
    burst_factor: float = 10.0  # rate multiplier during a burst
    burst_mean_s: float = 5.0  # mean burst length (exponential, at least one second)
    shuffle: bool = False  # False: model 0 is the most popular (like a sorted trace)


def azure_like_schedule(total_per_s: float, num_models: int, duration_s: float, seed: int,
                        shape: AzureLike = AzureLike()) -> Schedule:
    """An Azure-Functions-like trace: Zipf popularity, per-minute rate changes, bursts.

    Rates are piecewise constant per second; the whole matrix is scaled so that the mean
    offered rate over the run is exactly `total_per_s` (in expectation): per-minute totals
    then wander around it as the popular models' rates do. Generated one minute at a time, so
    memory stays proportional to one minute of arrivals plus the result.
    """
    _check_positive(num_models, "num_models")
    if duration_s <= 0 or total_per_s < 0:
        raise ValueError("duration_s must be > 0 and total_per_s >= 0")
    rng = np.random.default_rng(seed)
    base = zipf_weights(num_models, shape.zipf_exponent)
    if shape.shuffle:
        base = base[rng.permutation(num_models)]
    seconds = int(np.ceil(duration_s))
    minutes = (seconds + 59) // 60
    log_walk = np.zeros(num_models)
    minute_rates = np.empty((minutes, num_models))
    for minute in range(minutes):
        if minute:
            log_walk = (1 - shape.minute_reversion) * log_walk + shape.minute_sigma * rng.standard_normal(num_models)
        # Mean-one multipliers: E[exp(N(0, s^2) - s^2/2)] = 1 keeps the expected mix Zipf.
        phi2 = (1 - shape.minute_reversion) ** 2
        var = shape.minute_sigma ** 2 * (1 - phi2 ** minute) / max(1e-9, 1 - phi2)  # of the walk after `minute` steps
        minute_rates[minute] = base * np.exp(log_walk - var / 2)
    per_second = np.repeat(minute_rates, 60, axis=0)[:seconds]
    burst_boost = np.zeros_like(per_second)
    for minute in range(minutes):
        bursting = np.flatnonzero(rng.random(num_models) < shape.burst_probability)
        for model in bursting.tolist():
            start = minute * 60 + int(rng.integers(0, 60))
            length = max(1, int(round(rng.exponential(shape.burst_mean_s))))
            burst_boost[start:start + length, model] = shape.burst_factor - 1
    per_second = per_second * (1 + burst_boost)
    total = per_second.sum(axis=1).mean()
    per_second *= float(total_per_s) / total if total > 0 else 0.0
    parts = [piecewise_schedule(per_second[s:s + 60], 1.0, rng, start_s=s) for s in range(0, seconds, 60)]
    sched = concat_all(parts)
    cut = int(round(duration_s * NS_PER_S))
    keep = sched.times_ns < cut
    return Schedule(sched.times_ns[keep], sched.models[keep], cut, sched.rates_per_s)


# ---------------------------------------------------------------------------- Azure 2019 CSVs


def read_azure_functions(path: str, num_models: int, scale: float = 1.0, seed: int = 0,
                         start_minute: int = 0, minutes: int | None = None,
                         functions_per_model: int = 0) -> Schedule:
    """Replay the Azure Functions 2019 trace (invocations_per_function_md.anon.dNN.csv).

    Columns: HashOwner, HashApp, HashFunction, Trigger, then 1..1440 invocation counts, one
    per minute of the day. Functions are sorted by total invocations (most popular first; ties
    by their hashes, so the order never depends on the file's row order); model i replays the
    summed counts of a contiguous block of `functions_per_model` functions (0: as many as
    divide evenly among `num_models`), so model 0 is the busiest. Within each minute arrivals
    are Poisson at count * scale / 60 per second. Only minutes [start_minute, +minutes) play.
    """
    import csv

    _check_positive(num_models, "num_models")
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    keys, rows = [], []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        first = _minute_column(header)
        for line in reader:
            if len(line) <= first:
                continue
            counts = np.array([float(v) if v else 0.0 for v in line[first:]], dtype=np.float64)
            keys.append(tuple(line[:first]))
            rows.append(counts)
    if not rows:
        raise ValueError(f"{path}: no function rows")
    width = max(len(r) for r in rows)
    counts = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        counts[i, :len(r)] = r
    order = sorted(range(len(rows)), key=lambda i: (-counts[i].sum(), keys[i]))
    per_model = functions_per_model or max(1, len(rows) // num_models)
    if per_model * num_models > len(rows):
        raise ValueError(f"{path}: {len(rows)} functions cannot give {num_models} models "
                         f"{per_model} function(s) each")
    chosen = counts[order[:per_model * num_models]]
    by_model = chosen.reshape(num_models, per_model, width).sum(axis=1).T  # [minute, model]
    end = width if minutes is None else min(width, start_minute + minutes)
    if not 0 <= start_minute < end:
        raise ValueError(f"no minutes to replay in [{start_minute}, {end})")
    return piecewise_schedule(by_model[start_minute:end] * (scale / 60.0), 60.0, seed)


def _minute_column(header: list[str]) -> int:
    """Index of the column named "1" (the first minute)."""
    for i, name in enumerate(header):
        if name.strip() == "1":
            return i
    raise ValueError("not an Azure Functions invocation file: no minute column '1' in the header")


# ---------------------------------------------------------------------------- closed loop


class ClosedLoop:
    """Closed-loop clients: each has one request outstanding, and sends the next one a think
    time (exponential, mean `think_s`; 0: at once) after the previous reply.

    Client c always asks for model `models[c]`; `clients_for` spreads clients over models by
    popularity. Pure: the driver (simulator or load generator) calls `first_sends()` once and
    `next_send(client, reply_ns)` after each reply, then sends at the returned time.
    Latency here is reply - send: a closed loop cannot fall behind its own schedule.
    """

    def __init__(self, models: Sequence[int], duration_s: float, seed: int, think_s: float = 0.0):
        if len(models) == 0:
            raise ValueError("a closed loop needs at least one client")
        if duration_s <= 0 or think_s < 0:
            raise ValueError("duration_s must be > 0 and think_s >= 0")
        self.models = np.asarray(models, dtype=np.int32)
        self.duration_ns = int(round(duration_s * NS_PER_S))
        self.think_ns = think_s * NS_PER_S
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def clients_for(num_clients: int, num_models: int, seed: int, exponent: float = 1.0) -> np.ndarray:
        """`num_clients` model indices drawn by Zipf popularity (seeded)."""
        rng = np.random.default_rng(seed)
        return rng.choice(num_models, size=num_clients, p=zipf_weights(num_models, exponent)).astype(np.int32)

    def _think(self) -> int:
        return int(self._rng.exponential(self.think_ns)) if self.think_ns else 0

    def first_sends(self) -> list[tuple[int, int, int]]:
        """(send time ns, client, model) for every client, staggered by one think time."""
        return sorted((self._think(), c, int(m)) for c, m in enumerate(self.models.tolist()))

    def next_send(self, client: int, reply_ns: int) -> tuple[int, int] | None:
        """(send time ns, model) of the client's next request, or None once the run is over."""
        t = reply_ns + self._think()
        return (t, int(self.models[client])) if t < self.duration_ns else None
