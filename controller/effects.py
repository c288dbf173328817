"""What the scheduling core asks its shell to do. The core returns these; it never does I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from clockwork.common.schema import ActionKind, Message
from clockwork.common.status import Status


# ToWorker and ToClient, one per action and per reply, write their __init__ out and declare
# their fields Final instead of frozen: compiled, a dataclass-generated __init__ runs as
# interpreted code (docs/architecture.md, "The compiled core"), and a written-out one cannot
# assign a frozen field. The type checker, which the compiled build runs, refuses any
# assignment to them after __init__, as frozen did at run time.


@dataclass(eq=False, slots=True)
class ToWorker:
    worker: Final[str]  # worker name (its ZeroMQ identity)
    msg_id: Final[int]  # the action id for LOAD/UNLOAD/EXEC
    body: Final[Message]
    parent_id: Final[int]

    def __init__(self, worker: str, msg_id: int, body: Message, parent_id: int = 0) -> None:
        self.worker = worker
        self.msg_id = msg_id
        self.body = body
        self.parent_id = parent_id


@dataclass(eq=False, slots=True)
class ToClient:
    client: Final[bytes]  # the client's ZeroMQ identity
    request_id: Final[int]  # becomes the reply's parent_id
    body: Final[Message]

    def __init__(self, client: bytes, request_id: int, body: Message) -> None:
        self.client = client
        self.request_id = request_id
        self.body = body


@dataclass(frozen=True)
class PrepareOn:
    """Send PREPARE for a registered model; the shell reads its bytes from the registry."""

    worker: str
    msg_id: int
    model: str


@dataclass(frozen=True)
class UploadFinished:
    """Workers have answered PREPARE (or the wait timed out). On failure the shell forgets the
    model's files; either way it answers the client with the model's info."""

    client: bytes
    request_id: int
    model: str
    status: Status
    detail: str


@dataclass(frozen=True)
class ActionRecord:
    """One finished action, for the action log (emitted only when SchedulerConfig.record_actions).

    Times are on the controller's clock; the columns match bench/runlog.py's ACTION_COLUMNS so
    the simulator and the real system write the same log.
    """

    action_id: int
    kind: ActionKind
    worker: str
    device: int
    model: str
    batch_size: int
    sent_ns: int
    begin_ns: int
    end_ns: int
    predicted_ns: int
    measured_ns: int
    status: str  # a Status name


@dataclass(frozen=True)
class WorkerLost:
    """A worker left the plan, and why (the shell logs it; its work was re-queued)."""

    worker: str
    why: str


Effect = ToWorker | ToClient | PrepareOn | UploadFinished | ActionRecord | WorkerLost
