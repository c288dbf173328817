"""PREPAREs waiting to be sent, a few per turn of the controller's loop.

A worker that joins is sent a PREPARE of every registered model. With thousands of models that
is seconds of reading files and sending. Sent in one go, they held the loop: no heartbeat was
read meanwhile, so the worker that had just joined looked silent, was dropped, joined again and
was sent everything again, over and over, while clients timed out (`clockwork-bench
many-models` on a busy host). Queued here, they leave between the loop's other work, and a
model that requests wait for goes first (`hurry`): after a restart, the models in use are
served again first, not in name order.

The newest PREPARE of a (worker, model) replaces an older one still waiting; a lost worker's are
forgotten (it is sent them anew when it joins again).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from clockwork.controller.effects import PrepareOn


class PrepareQueue:
    def __init__(self) -> None:
        self._order: deque[PrepareOn] = deque()  # may hold replaced or hurried copies, skipped when reached
        self._current: dict[tuple[str, str], PrepareOn] = {}  # (worker, model) -> the one to send

    def __len__(self) -> int:
        return len(self._current)

    def add(self, prepare: PrepareOn) -> None:
        key = (prepare.worker, prepare.model)
        self._current.pop(key, None)
        self._current[key] = prepare
        self._order.append(prepare)

    def hurry(self, model: str, workers: Iterable[str]) -> None:
        """Send `model`'s waiting PREPAREs (to any of `workers`) before the others."""
        for worker in workers:
            prepare = self._current.get((worker, model))
            if prepare is not None:
                self._order.appendleft(prepare)

    def forget_worker(self, worker: str) -> None:
        for key in [key for key in self._current if key[0] == worker]:
            del self._current[key]
        if not self._current:
            self._order.clear()

    def next(self) -> PrepareOn | None:
        """The oldest PREPARE still wanted (hurried ones first), or None."""
        while self._order:
            prepare = self._order.popleft()
            key = (prepare.worker, prepare.model)
            if self._current.get(key) is prepare:
                del self._current[key]
                return prepare
        return None
