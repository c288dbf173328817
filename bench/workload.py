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

from dataclasses import dataclass
from typing import Iterator, Sequence

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
