"""PREPAREs waiting to be sent, a few per turn of the controller's loop.

A worker that joins is sent a PREPARE of every registered model. With thousands of models that
is seconds of reading files and sending. Sent in one go, they held the loop: no heartbeat was
read meanwhile, so the worker that had just joined looked silent, was dropped, joined again and
was sent everything again, over and over, while clients timed out (`clockwork-bench
many-models` on a busy host). Queued here, they leave between the loop's other work.

The newest PREPARE of a (worker, model) replaces an older one still waiting; a lost worker's are
forgotten (it is sent them anew when it joins again).
"""

from __future__ import annotations

from collections import deque

from clockwork.controller.effects import PrepareOn


class PrepareQueue:
    def __init__(self) -> None:
        self._order: deque[PrepareOn] = deque()
        self._current: dict[tuple[str, str], int] = {}  # (worker, model) -> msg_id of the one to send

    def __len__(self) -> int:
        return len(self._current)

    def add(self, prepare: PrepareOn) -> None:
        key = (prepare.worker, prepare.model)
        if key in self._current:  # the older one stays in the deque, skipped when reached
            del self._current[key]
        self._current[key] = prepare.msg_id
        self._order.append(prepare)

    def forget_worker(self, worker: str) -> None:
        for key in [key for key in self._current if key[0] == worker]:
            del self._current[key]
        if not self._current:
            self._order.clear()

    def next(self) -> PrepareOn | None:
        """The oldest PREPARE still wanted, or None."""
        while self._order:
            prepare = self._order.popleft()
            key = (prepare.worker, prepare.model)
            if self._current.get(key) == prepare.msg_id:
                del self._current[key]
                return prepare
        return None
