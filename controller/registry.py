"""The model registry: SQLite for the records, content-addressed files for the bytes.

Writes are atomic in the order that makes a crash harmless: the bytes are written to a
temporary file, fsynced and renamed into place (named by their sha256, so identical uploads
share one file) before the record is committed; a crash leaves either the old state or the new
one. Start-up removes leftover temporary files and files no record points to; after that, only
the bytes a change may have orphaned are looked at (a replaced or removed record's, stored bytes
given up), each by an index, so an upload costs the same with 40,000 models as with 10.

A large upload's bytes are stored from another thread (`store`, while its model is checked) and
named by a record later (`add_stored`); until then garbage collection leaves them alone.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clockwork.common.models import Signature, signature_from_header

# The layout of registry.sqlite3 (PRAGMA user_version). A registry of a later version is refused
# rather than misread; one made before the version was recorded (0) is version 1.
SCHEMA_VERSION = 1
PAGE_ROWS = 32  # rows parsed per fetch while a page is filled (a full reply holds ~180 models)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    input_shapes TEXT NOT NULL,
    max_batch INTEGER NOT NULL,
    signature TEXT NOT NULL,
    created_unix_s REAL NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS models_by_sha256 ON models (sha256)"


@dataclass(frozen=True)
class ModelRecord:
    name: str
    format: str
    sha256: str
    size_bytes: int
    input_shapes: dict
    max_batch: int  # as requested at upload (0: the model's own limit)
    signature: Signature
    created_unix_s: float

    def info(self) -> dict:
        """The client-facing description (merged with the scheduler's view by the daemon)."""
        return {"name": self.name, "format": self.format, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "created_unix_s": self.created_unix_s, **self.signature.header()}


class RegistryError(RuntimeError):
    """The registry cannot be used as it is on disk."""


class Registry:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.files = self.root / "models"
        self.files.mkdir(parents=True, exist_ok=True)
        # One daemon thread uses it at a time; not pinning it to the creating thread lets tests
        # and embedders run the daemon on a thread of their own.
        self._db = sqlite3.connect(self.root / "registry.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(_INDEX)  # an index only: registries without it read the same
        self._check_version()
        self._lock = threading.Lock()  # guards _pending against garbage collection
        self._pending: Counter[str] = Counter()  # digests stored for records not written yet
        self._unsure: set[str] = set()  # digests whose bytes no record may name any more
        self._collect_garbage()

    def close(self) -> None:
        self._db.close()

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RegistryError(f"the registry in {self.root} has schema version {version}; this controller "
                                f"reads versions up to {SCHEMA_VERSION}: run a newer controller")
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def add(self, name: str, fmt: str, blob: bytes, input_shapes: dict, max_batch: int, signature: Signature,
            replace: bool = False) -> ModelRecord:
        """Store the bytes and the record. Raises KeyError if the name exists and `replace` is
        false."""
        return self.add_stored(name, fmt, self.store(blob), len(blob), input_shapes, max_batch, signature, replace)

    def store(self, blob) -> str:
        """Write `blob` under its sha256 (atomically, once) and keep it for `add_stored`, which
        must follow (or `release`); returns the digest. Safe from any thread."""
        digest = hashlib.sha256(blob).hexdigest()
        with self._lock:
            self._pending[digest] += 1
        try:
            self._write_file(digest, blob)
        except BaseException:
            self.release(digest)
            raise
        return digest

    def adopt(self, path: Path) -> str:
        """Take a file written elsewhere on this filesystem (a chunked upload, complete) as the
        bytes of its sha256, like `store` without a copy in memory; returns the digest."""
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
            os.fsync(fh.fileno())
        digest = h.hexdigest()
        with self._lock:
            self._pending[digest] += 1
        final = self.files / digest
        if final.exists():
            path.unlink()
        else:
            os.replace(path, final)
            self._sync_dir()
        return digest

    def release(self, digest: str) -> None:
        """Give up stored bytes no record will name (the next collection removes them)."""
        with self._lock:
            self._pending[digest] -= 1
            if self._pending[digest] <= 0:
                del self._pending[digest]
                self._unsure.add(digest)

    def add_stored(self, name: str, fmt: str, digest: str, size_bytes: int, input_shapes: dict, max_batch: int,
                   signature: Signature, replace: bool = False) -> ModelRecord:
        """The record for bytes `store` wrote. Raises KeyError if the name exists and `replace`
        is false."""
        try:
            old = self.get(name)
            if old is not None and not replace:
                raise KeyError(name)
            record = ModelRecord(name, fmt, digest, size_bytes, dict(input_shapes), max_batch, signature, time.time())
            with self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, fmt, digest, size_bytes, json.dumps(input_shapes), max_batch,
                     json.dumps(signature.header()), record.created_unix_s))
        finally:
            self.release(digest)
        if old is not None:
            self._unsure.add(old.sha256)  # a replaced model's old bytes
        self._collect_unsure()
        return record

    def path(self, digest: str) -> Path:
        return self.files / digest

    def remove(self, name: str) -> bool:
        old = self.get(name)
        if old is None:
            return False
        with self._transaction():
            self._db.execute("DELETE FROM models WHERE name = ?", (name,))
        self._unsure.add(old.sha256)
        self._collect_unsure()
        return True

    def get(self, name: str) -> ModelRecord | None:
        row = self._db.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[ModelRecord]:
        return [_record(row) for row in self._db.execute("SELECT * FROM models ORDER BY name")]

    # A prefix is compared exactly (substr, not LIKE: LIKE ignores ASCII case and reads % and _
    # as wildcards). Names with a prefix sort at or after it, so the primary key's index starts
    # the scan there (or after `after`) and a page reads its rows in order.
    _PAGE = "SELECT * FROM models WHERE name > ? AND name >= ? AND substr(name, 1, ?) = ? ORDER BY name LIMIT ?"
    _COUNT = "SELECT COUNT(*) FROM models WHERE name >= ? AND substr(name, 1, ?) = ?"

    def page(self, prefix: str = "", after: str = "", limit: int = -1) -> Iterator[ModelRecord]:
        """The records whose names start with `prefix` and sort strictly after `after`, in name
        order, at most `limit` (-1: no limit). Read lazily, a few rows at a time, so a caller
        that stops early (a reply that is full) parses no more; close it when done."""
        cursor = self._db.execute(self._PAGE, (after, prefix, len(prefix), prefix, limit))
        try:
            while rows := cursor.fetchmany(PAGE_ROWS):
                yield from map(_record, rows)
        finally:
            cursor.close()

    def count(self, prefix: str = "") -> int:
        """How many names start with `prefix`."""
        return self._db.execute(self._COUNT, (prefix, len(prefix), prefix)).fetchone()[0]

    def blob(self, digest: str) -> memoryview:
        """The bytes stored under `digest` (a record's sha256), mapped from their file rather
        than read: sending a large model to a worker then costs no copy in this process, and no
        time in the serving loop."""
        with open(self.files / digest, "rb") as fh:
            return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))

    # ------------------------------------------------------------------ internals

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def _write_file(self, digest: str, blob: bytes) -> None:
        final = self.files / digest
        if final.exists():
            return
        tmp = self.files / f".{digest}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:  # a full disk: no half-written file is left for start-up to find
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        dir_fd = os.open(self.files, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    def _collect_unsure(self) -> None:
        """Remove the files of the digests in doubt that no record names and none is stored for."""
        with self._lock:
            unsure, self._unsure = self._unsure - self._pending.keys(), set()
            for digest in unsure:
                if self._db.execute("SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", (digest,)).fetchone() is None:
                    (self.files / digest).unlink(missing_ok=True)

    def _collect_garbage(self) -> None:
        wanted = {row[0] for row in self._db.execute("SELECT sha256 FROM models")}
        with self._lock:  # `store` marks a digest pending before it creates any file for it
            for path in self.files.iterdir():
                temporary = path.name.startswith(".")
                digest = path.name[1:].split(".", 1)[0] if temporary else path.name
                if digest not in self._pending and (temporary or digest not in wanted):
                    path.unlink(missing_ok=True)


def _record(row) -> ModelRecord:
    name, fmt, digest, size, shapes, max_batch, signature, created = row
    return ModelRecord(name, fmt, digest, size, json.loads(shapes), max_batch,
                       signature_from_header(json.loads(signature)), created)
