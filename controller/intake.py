"""Large uploads, stored and checked off the serving loop.

An uploaded model is checked before it is registered. For a large ONNX model the check takes
seconds (onnx's checker holds the GIL for ~1.4 s per GB) and writing it to the registry about
as long again. Done in the serving loop, every request and heartbeat would wait behind it, and
workers would be declared lost (a 400 MB upload did exactly that). So a large model's bytes are
stored by a thread of its own, the check runs in a child process
(`common.models.signature_from_file`), and the loop registers the model once both are done.
Small models are still checked in the loop: a child's start-up would cost more than the check.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass

from common import schema
from common.checks import BadMessage
from common.models import ISOLATED_CHECK_BYTES, Signature, signature_from_file
from common.status import Status
from controller.registry import Registry


@dataclass(frozen=True)
class Checked:
    """A large upload whose bytes are stored (`digest`) and checked: `signature`, or `error`."""

    client: bytes
    msg_id: int
    msg: schema.Upload  # without its blob, which is in the registry's files by now
    size_bytes: int
    digest: str | None
    signature: Signature | None
    error: BadMessage | None


class Intake:
    def __init__(self, registry: Registry):
        self._registry = registry
        self._done: queue.SimpleQueue[Checked] = queue.SimpleQueue()
        self.checking: set[str] = set()  # names of uploads in progress (the loop's thread only)

    @staticmethod
    def wants(msg: schema.Upload) -> bool:
        """Whether `msg` is large enough to be stored and checked off the loop."""
        return msg.format == "onnx" and len(msg.blob) >= ISOLATED_CHECK_BYTES

    def submit(self, client: bytes, msg_id: int, msg: schema.Upload) -> None:
        self.checking.add(msg.name)
        threading.Thread(target=self._check, args=(client, msg_id, msg), name=f"intake-{msg.name}",
                         daemon=True).start()

    def finished(self) -> list[Checked]:
        """The uploads checked since the last call (called by the loop)."""
        out = []
        while True:
            try:
                checked = self._done.get_nowait()
            except queue.Empty:
                return out
            self.checking.discard(checked.msg.name)
            out.append(checked)

    def _check(self, client: bytes, msg_id: int, msg: schema.Upload) -> None:
        digest = signature = error = None
        try:
            digest = self._registry.store(msg.blob)
            signature = signature_from_file(str(self._registry.path(digest)), msg.format, dict(msg.input_shapes),
                                            msg.max_batch)
        except BadMessage as exc:
            error = exc
        except Exception as exc:  # the disk, most likely: the upload fails, the controller serves on
            error = BadMessage(Status.INTERNAL, f"storing the model failed: {type(exc).__name__}: {exc}")
        if error is not None and digest is not None:
            self._registry.release(digest)
            digest = None
        self._done.put(Checked(client, msg_id, dataclasses.replace(msg, blob=b""), len(msg.blob), digest,
                               signature, error))
