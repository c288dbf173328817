"""The host model store, and the prepare thread that fills it.

Every prepared model is kept on the host so that a LOAD is a copy, never a compile. A large model
(from common.models.ISOLATED_CHECK_BYTES on) is first spooled to a file, so that the message that
brought it can be freed before anything parses it: runtimes that read models from files (the
`reads_files` ones) then never hold the bytes in memory at all (onnxruntime maps the weights
from the file: runtimes/onnx_mapping.py), and a 1 GiB model costs its packed weights, not a copy
plus a parse. Models are stored by digest (sha256 of the bytes, the input shapes and the batch limit): a thousand
model ids uploaded with identical bytes share one `PreparedModel` and one profile, so they cost
one copy. A digest is prepared and profiled once; later PREPAREs of it only add a name.

PREPARE runs on its own thread, never on a lane: validation and `runtime.prepare` may take
seconds. Profiling, though, executes the model, so it runs as an internal job on device 0's
EXEC lane to keep one-execution-at-a-time true on that device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clockwork.common.checks import BadMessage
from clockwork.common.models import ISOLATED_CHECK_BYTES, signature_from_file, signature_of
from clockwork.common.schema import Message, Prepare, Prepared
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import PreparedModel, Profile, Runtime, RuntimeFailure

PROFILE_BATCH_SIZES = (1, 2, 4, 8, 16)  # what PREPARE measures (up to the model's max batch)
MAX_DETAIL = 1000  # characters of an exception kept in a reply's detail


def digest_of(fmt: str, content_sha256: str, input_shapes: dict, max_batch: int) -> str:
    """Identity of a prepared model, from the sha256 of its bytes: identical uploads give
    identical digests."""
    meta = {"format": fmt, "input_shapes": {k: list(v) for k, v in input_shapes.items()}, "max_batch": max_batch,
            "sha256": content_sha256}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


SPOOL_CHUNK = 8 * 1024 * 1024
SPOOL_PREFIX = "clockwork-worker-spool-"  # then the worker's pid


def remove_stale_spools(parent: Path | None = None) -> list[Path]:
    """Remove the spool folders of workers that no longer run (killed before they could clean
    up; a spooled model can be a gigabyte). Returns what was removed."""
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*"):
        pid = folder.name[len(SPOOL_PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass
class Incoming:
    """A PREPARE as the prepare thread holds it: the message without its bytes, and the bytes
    either in memory (small models) or in a spooled file (large ones)."""

    msg: Prepare  # blob emptied
    sha256: str  # of the model's bytes
    blob: bytes | None = None
    path: Path | None = None

    def source(self, reads_files: bool) -> bytes | Path:
        """What runtime.prepare gets: the file itself where the runtime reads files."""
        if self.path is None:
            return self.blob
        return self.path if reads_files else self.path.read_bytes()


def take(msg: Prepare, spool_dir: Path) -> Incoming:
    """Hash the PREPARE's bytes, and spool a large model to a file in `spool_dir`."""
    view = memoryview(msg.blob).cast("B")
    h = hashlib.sha256()
    if view.nbytes < ISOLATED_CHECK_BYTES:
        h.update(view)
        return Incoming(dataclasses.replace(msg, blob=b""), h.hexdigest(), blob=bytes(view))
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="model-", suffix=f".{msg.format}", dir=spool_dir)
    with os.fdopen(fd, "wb") as fh:
        for offset in range(0, view.nbytes, SPOOL_CHUNK):
            chunk = view[offset:offset + SPOOL_CHUNK]
            h.update(chunk)
            fh.write(chunk)
    return Incoming(dataclasses.replace(msg, blob=b""), h.hexdigest(), path=Path(name))


def describe_error(exc: BaseException) -> tuple[Status, str]:
    """The status and detail a failure is reported with (runtime contract in runtimes/base.py)."""
    if isinstance(exc, (RuntimeFailure, BadMessage)):
        return exc.status, exc.detail[:MAX_DETAIL]
    text = str(exc).strip().splitlines()
    return Status.RUNTIME_ERROR, f"{type(exc).__name__}: {text[0] if text else ''}"[:MAX_DETAIL]


@dataclass
class _Entry:
    model: PreparedModel  # the one host copy for this digest (its model_id is the first name)
    profile: Profile
    model_ids: set[str] = field(default_factory=set)
    spooled: Path | None = None  # the file the model was spooled to, removed with the entry


class ModelStore:
    """model_id -> digest -> one PreparedModel. Thread-safe: lanes read while PREPARE writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_digest: dict[str, _Entry] = {}
        self._digest_of: dict[str, str] = {}

    def get(self, model_id: str) -> PreparedModel | None:
        """The model under this name; its `host` is the shared copy (never duplicated)."""
        with self._lock:
            digest = self._digest_of.get(model_id)
            if digest is None:
                return None
            model = self._by_digest[digest].model
        return model if model.model_id == model_id else dataclasses.replace(model, model_id=model_id)

    def profile_of(self, digest: str) -> tuple[PreparedModel, Profile] | None:
        with self._lock:
            entry = self._by_digest.get(digest)
            return (entry.model, entry.profile) if entry else None

    def add(self, model_id: str, model: PreparedModel, profile: Profile, spooled: Path | None = None) -> None:
        """Register `model_id` under `model.digest`; the first model of a digest is its copy
        (and `spooled`, its file, goes when its last name does)."""
        with self._lock:
            self._unlink(model_id)
            entry = self._by_digest.setdefault(model.digest, _Entry(model, profile, spooled=spooled))
            entry.model_ids.add(model_id)
            self._digest_of[model_id] = model.digest

    def forget(self, model_id: str) -> bool:
        """Drop a name; the host copy goes with its last name. False if it was unknown."""
        with self._lock:
            return self._unlink(model_id)

    def _unlink(self, model_id: str) -> bool:
        digest = self._digest_of.pop(model_id, None)
        if digest is None:
            return False
        entry = self._by_digest[digest]
        entry.model_ids.discard(model_id)
        if not entry.model_ids:
            del self._by_digest[digest]
            if entry.spooled is not None:
                entry.spooled.unlink(missing_ok=True)
        return True

    def model_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._digest_of)

    def host_copies(self) -> int:
        """How many distinct prepared models are held (identical uploads count once)."""
        with self._lock:
            return len(self._by_digest)

    def __contains__(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._digest_of

    def __len__(self) -> int:
        with self._lock:
            return len(self._digest_of)


ProfileRunner = Callable[[Callable[[], Profile]], Profile]  # runs a function on device 0's EXEC lane
ReplyFn = Callable[[Message, int], None]  # (body, parent_id) -> queued for the controller


class Preparer:
    """The prepare thread: PREPARE in, PREPARED out, the store filled in between."""

    def __init__(self, runtime: Runtime, store: ModelStore, run_on_lane: ProfileRunner,
                 reply: ReplyFn, profile_runs: int, log: Any, spool_dir: Path | None = None):
        self._runtime = runtime
        # Made on the first large model; the daemon removes it at exit, and the next worker on
        # the host removes those that a killed worker left (remove_stale_spools).
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / f"{SPOOL_PREFIX}{os.getpid()}"
        self._store = store
        self._run_on_lane = run_on_lane
        self._reply = reply
        self._profile_runs = profile_runs
        self._log = log
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="prepare", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, msg_id: int, msg: Prepare) -> None:
        self._inbox.put((msg_id, msg))

    def _loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            msg_id, msg = item
            item = None
            try:
                # Rebinding `msg` drops the last reference to the message's frame once spooled.
                incoming = take(msg, self.spool_dir)
                msg = incoming.msg
                reply = self.prepare_taken(incoming)
            except Exception as exc:  # a bug here must not stop later PREPAREs
                self._log.exception("prepare failed", model_id=msg.model_id)
                reply = Prepared(model_id=msg.model_id, status=Status.INTERNAL, detail=describe_error(exc)[1])
            self._reply(reply, msg_id)

    def prepare(self, msg: Prepare) -> Prepared:
        """Validate, hold on the host, profile (once per digest), and describe the result."""
        return self.prepare_taken(take(msg, self.spool_dir))

    def prepare_taken(self, incoming: Incoming) -> Prepared:
        """`prepare`, once the bytes are hashed (and a large model spooled)."""
        try:
            return self._prepare(incoming)
        finally:
            if incoming.path is not None:  # refused, or the digest was already held: nobody adopted it
                incoming.path.unlink(missing_ok=True)

    def _prepare(self, incoming: Incoming) -> Prepared:
        msg = incoming.msg
        if msg.format not in self._runtime.formats:
            return Prepared(model_id=msg.model_id, status=Status.BAD_MODEL,
                            detail=f"the {self._runtime.name} runtime serves {', '.join(self._runtime.formats)} "
                                   f"models, not {msg.format!r}")
        if msg.sha256 and incoming.sha256 != msg.sha256:
            detail = (f"the bytes of {msg.model_id!r} do not match the sha256 they were registered with: the "
                      "controller's copy is damaged; upload the model again")
            self._log.error("prepare refused", model_id=msg.model_id, status="BAD_MODEL", detail=detail)
            return Prepared(model_id=msg.model_id, status=Status.BAD_MODEL, detail=detail)
        digest = digest_of(msg.format, incoming.sha256, msg.input_shapes, msg.max_batch)
        known = self._store.profile_of(digest)
        spooled = None
        if known is None:
            try:
                known = self._prepare_new(incoming, digest)
            except Exception as exc:  # bad model or runtime failure: answered, never fatal
                status, detail = describe_error(exc)
                self._log.info("prepare refused", model_id=msg.model_id, status=status.name, detail=detail)
                return Prepared(model_id=msg.model_id, status=status, detail=detail)
            spooled, incoming.path = incoming.path, None  # the store owns the file now
        model, profile = known
        self._store.add(msg.model_id, model, profile, spooled)
        return Prepared(model_id=msg.model_id, status=Status.OK, weights_bytes=model.weights_bytes,
                        load_ns=profile.load_ns, exec_ns=dict(profile.exec_ns),
                        max_batch=model.signature.max_batch)

    def _prepare_new(self, incoming: Incoming, digest: str) -> tuple[PreparedModel, Profile]:
        msg = incoming.msg
        # A large (spooled) model is checked in a child process: onnx's checker holds the GIL for
        # seconds, which would stop this worker's heartbeats and its lanes.
        if incoming.path is not None:
            signature = signature_from_file(str(incoming.path), msg.format, dict(msg.input_shapes), msg.max_batch)
        else:
            signature = signature_of(msg.format, incoming.blob, dict(msg.input_shapes), msg.max_batch)
        source = incoming.source(self._runtime.reads_files)
        model = self._runtime.prepare(msg.model_id, digest, msg.format, source, signature)
        del source
        batch_sizes = [b for b in PROFILE_BATCH_SIZES if b <= signature.max_batch]
        profile = self._run_on_lane(lambda: self._runtime.profile(0, model, batch_sizes, self._profile_runs))
        if profile.weights_bytes is not None:
            model.weights_bytes = profile.weights_bytes
        self._log.info("model prepared", model_id=msg.model_id, digest=digest[:16],
                       weights_bytes=model.weights_bytes, load_ns=profile.load_ns, exec_ns=profile.exec_ns)
        return model, profile
