"""A request as the core keeps it, from admission to its answer. Its own module so that the
queues, which state.py holds, can name it (controller/queues.py)."""

from __future__ import annotations

from dataclasses import dataclass

from clockwork.common.tensors import Tensor
from clockwork.controller.lifecycle import REQUEST_MOVES, RequestState, check_move


@dataclass(eq=False, slots=True)
class Request:
    """Its __init__ is written out (as state.Action's is): the compiled core runs a
    dataclass-generated one as interpreted code (6.5x the time to build), once per request."""

    request_id: int
    client: bytes
    model: str
    samples: int
    priority: int
    received_ns: int
    deadline_ns: int
    tensors: tuple[Tensor, ...]
    state: RequestState
    cold: bool  # no device held the model when it arrived
    dry_run_refused: bool  # admitted only because admission runs dry (admission.dry_run)
    dispatched_ns: int
    queue_token: int  # set by RequestQueue.push

    def __init__(self, request_id: int, client: bytes, model: str, samples: int, priority: int, received_ns: int,
                 deadline_ns: int, tensors: tuple[Tensor, ...], cold: bool = False) -> None:
        self.request_id = request_id
        self.client = client
        self.model = model
        self.samples = samples
        self.priority = priority
        self.received_ns = received_ns
        self.deadline_ns = deadline_ns
        self.tensors = tensors
        self.state = RequestState.QUEUED
        self.cold = cold
        self.dry_run_refused = False
        self.dispatched_ns = 0
        self.queue_token = -1

    def move(self, new_state: RequestState) -> None:
        """To `new_state`, if the request lifecycle allows it (lifecycle.REQUEST_MOVES)."""
        check_move(REQUEST_MOVES, self.state, new_state, "Request")
        self.state = new_state
