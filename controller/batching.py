"""Choosing one batch for a device whose EXEC lane is about to free up (pure functions).

Rule (Clockwork's): among the models loaded on the device, serve the one whose batch must
start soonest (its most urgent request's deadline less the batch's duration); then grow the
batch, request by request in service order, to the largest batch size that still meets the
deadline of every member. Requests that could not finish on this device even alone are
skipped here (another device, or expiry, handles them). Batch sizes are the profiled ones; a
batch of 3 samples runs padded to 4. Clockwork's policy (controller/policy.py) ranks models by an
estimate of that start and adds one step of lookahead, because an EXEC cannot be preempted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clockwork.controller.state import Request

SCAN_LIMIT = 64  # requests looked at per batch: bounds work per decision under deep queues


@dataclass(frozen=True)
class Batch:
    model: str
    requests: tuple[Request, ...]
    batch_size: int  # padded size the worker runs
    exec_ns: int  # predicted duration
    latest_start_ns: int  # past this, some member misses its deadline


def padded_size(samples: int, sizes: list[int]) -> int | None:
    """Smallest profiled batch size holding `samples` (sizes ascending)."""
    for size in sizes:
        if size >= samples:
            return size
    return None


def grow(model: str, queue: Iterable[Request], start_ns: int, sizes: list[int],
         exec_ns: Callable[[int], int | None]) -> Batch | None:
    """The largest feasible batch of `model` starting at `start_ns`, or None."""
    members: list[Request] = []
    samples = 0
    size = duration = deadline = 0
    for scanned, req in enumerate(queue):
        if scanned >= SCAN_LIMIT:
            break
        if req.samples > sizes[-1]:
            continue  # no profiled size holds it (it waited for a worker that profiled less); expiry answers it
        if samples + req.samples > sizes[-1]:
            break
        next_size = padded_size(samples + req.samples, sizes)
        next_duration = exec_ns(next_size) if next_size else None
        if next_duration is None:
            break
        next_deadline = min(deadline, req.deadline_ns) if members else req.deadline_ns
        if start_ns + next_duration > next_deadline:
            # Adding this request breaks the batch: skip it if it cannot make it even alone.
            alone = exec_ns(padded_size(req.samples, sizes) or sizes[-1])
            if alone is None or start_ns + alone > req.deadline_ns:
                continue
            break
        members.append(req)
        samples += req.samples
        size, duration, deadline = next_size, next_duration, next_deadline
    return Batch(model, tuple(members), size, duration, deadline - duration) if members else None
