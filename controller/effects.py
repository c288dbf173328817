"""What the scheduling core asks its shell to do. The core returns these; it never does I/O."""

from __future__ import annotations

from dataclasses import dataclass

from clockwork.common.schema import ActionKind, Message
from clockwork.common.status import Status


@dataclass(frozen=True)
class ToWorker:
    worker: str  # worker name (its ZeroMQ identity)
    msg_id: int  # the action id for LOAD/UNLOAD/EXEC
    body: Message
    parent_id: int = 0


@dataclass(frozen=True)
class ToClient:
    client: bytes  # the client's ZeroMQ identity
    request_id: int  # becomes the reply's parent_id
    body: Message


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
