"""Large uploads, stored and checked off the serving loop.

An uploaded model is checked before it is registered. For a large ONNX model the check takes
seconds (onnx's checker holds the GIL for ~1.4 s per GB) and writing it to the registry about
as long again. Done in the serving loop, every request and heartbeat would wait behind it, and
workers would be declared lost (a 400 MB upload did exactly that). So a large model's bytes are
stored by a thread of its own, the check runs in a child process
(`common.models.signature_from_file`), and the loop registers the model once both are done.
Small models are still checked in the loop: a child's start-up would cost more than the check.

A model sent in chunks (schema.Upload) is appended chunk by chunk to a staging file (the loop
holds one chunk at a time), and once whole it takes the same path: the thread checks its sha256,
moves it into the registry and checks the model.
"""

from __future__ import annotations

import dataclasses
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from clockwork.common import schema
from clockwork.common.checks import BadMessage
from clockwork.common.models import ISOLATED_CHECK_BYTES, Signature, signature_from_file
from clockwork.common.status import Status
from clockwork.controller.registry import Registry


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


# A chunked upload whose next chunk has not come for this long is abandoned and its file removed.
STAGING_IDLE_NS = 300 * 1_000_000_000


@dataclass
class Staged:
    """A chunked upload being received."""

    path: Path
    file: BinaryIO
    total_bytes: int
    sha256: str
    received: int = 0
    touched_ns: int = 0


@dataclass(frozen=True)
class Chunk:
    """What one chunk did: refused (`error`), or `received` bytes so far; `complete` when the
    whole model is in (it has been handed to the checking thread)."""

    received: int = 0
    complete: bool = False
    error: BadMessage | None = None


class Intake:
    def __init__(self, registry: Registry, staging_dir: str | Path):
        self._registry = registry
        self._done: queue.SimpleQueue[Checked] = queue.SimpleQueue()
        self._out = 0  # checks submitted and not yet taken back by `finished`
        self.checking: set[str] = set()  # names of uploads in progress (the loop's thread only)
        self._staging_dir = Path(staging_dir)
        shutil.rmtree(self._staging_dir, ignore_errors=True)  # what a stopped controller left
        self._staging_dir.mkdir(parents=True)
        self._staged: dict[tuple[bytes, str], Staged] = {}
        self._files = 0

    @staticmethod
    def wants(msg: schema.Upload) -> bool:
        """Whether `msg` is large enough to be stored and checked off the loop."""
        return msg.format == "onnx" and len(msg.blob) >= ISOLATED_CHECK_BYTES

    def submit(self, client: bytes, msg_id: int, msg: schema.Upload, staged: Staged | None = None) -> None:
        """Store and check `msg`'s model on a thread of its own: its bytes, or the `staged` file
        of a chunked upload (then `msg` carries no bytes)."""
        self.checking.add(msg.name)
        self._out += 1
        threading.Thread(target=self._check, args=(client, msg_id, msg, staged), name=f"intake-{msg.name}",
                         daemon=True).start()

    def chunk(self, client: bytes, msg_id: int, msg: schema.Upload, now_ns: int) -> Chunk:
        """Append one chunk of a model sent in pieces; the last hands the model to `submit`'s
        path (its file instead of its bytes)."""
        key = (client, msg.name)
        staged = self._staged.get(key)
        if msg.offset == 0:  # a first chunk (re)starts the upload
            if staged is not None:
                self._drop(key)
            self._files += 1
            path = self._staging_dir / f"{self._files}.part"
            staged = self._staged[key] = Staged(path, open(path, "wb"), msg.total_bytes, msg.sha256)
        elif staged is None:
            return Chunk(error=BadMessage(Status.BAD_INPUT, f"no upload of {msg.name!r} in progress from this "
                                                            "client: send its first chunk (offset 0) again"))
        size = len(msg.blob)
        if msg.offset != staged.received or (msg.total_bytes, msg.sha256) != (staged.total_bytes, staged.sha256):
            self._drop(key)
            return Chunk(error=BadMessage(Status.BAD_INPUT, f"chunk at byte {msg.offset} of {msg.total_bytes}, but "
                                                            f"{staged.received} of {staged.total_bytes} were expected "
                                                            "next: start again from offset 0"))
        if size == 0 or staged.received + size > staged.total_bytes:
            self._drop(key)
            return Chunk(error=BadMessage(Status.BAD_INPUT, f"a chunk of {size} bytes at {msg.offset} does not fit "
                                                            f"a model of {staged.total_bytes}"))
        staged.file.write(msg.blob)
        staged.received += size
        staged.touched_ns = now_ns
        if staged.received < staged.total_bytes:
            return Chunk(received=staged.received)
        del self._staged[key]
        staged.file.close()
        self.submit(client, msg_id, dataclasses.replace(msg, blob=b""), staged)
        return Chunk(received=staged.received, complete=True)

    def expire(self, now_ns: int) -> None:
        """Abandon chunked uploads whose next chunk never came."""
        for key in [k for k, s in self._staged.items() if now_ns - s.touched_ns > STAGING_IDLE_NS]:
            self._drop(key)

    def _drop(self, key: tuple[bytes, str]) -> None:
        staged = self._staged.pop(key)
        staged.file.close()
        staged.path.unlink(missing_ok=True)

    def finished(self) -> list[Checked]:
        """The uploads checked since the last call (called by the loop, at every turn: with no
        check out it costs a comparison, not an empty queue's exception, ~8 us on a VM)."""
        out: list[Checked] = []
        while self._out:
            try:
                checked = self._done.get_nowait()
            except queue.Empty:
                break
            self._out -= 1
            self.checking.discard(checked.msg.name)
            out.append(checked)
        return out

    def _check(self, client: bytes, msg_id: int, msg: schema.Upload, staged: Staged | None = None) -> None:
        digest = signature = error = None
        size = staged.total_bytes if staged is not None else len(msg.blob)
        try:
            if staged is None:
                digest = self._registry.store(msg.blob)
            else:
                digest = self._registry.adopt(staged.path)
                if digest != staged.sha256:
                    raise BadMessage(Status.BAD_INPUT, f"the {size} bytes received have sha256 {digest}, not the "
                                                       f"{staged.sha256} announced: upload the model again")
            signature = signature_from_file(str(self._registry.path(digest)), msg.format, dict(msg.input_shapes),
                                            msg.max_batch)
        except BadMessage as exc:
            error = exc
        except Exception as exc:  # the disk, most likely: the upload fails, the controller serves on
            error = BadMessage(Status.INTERNAL, f"storing the model failed: {type(exc).__name__}: {exc}")
        if error is not None and digest is not None:
            self._registry.release(digest)
            digest = None
        if staged is not None:
            staged.path.unlink(missing_ok=True)  # adopted (moved) already unless something failed first
        self._done.put(Checked(client, msg_id, dataclasses.replace(msg, blob=b""), size, digest, signature, error))
