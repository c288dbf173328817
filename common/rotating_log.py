"""Size-rotating TSV logs (the controller's request log and action log).

One row per event, tab-separated, a header row at the top of every file. Rows are buffered in
memory and written by `maybe_flush(now_ns)` (called from the daemon's loop, at most every
`flush_interval_ns` or when `max_buffered` rows wait) and by `close()`, so a row costs the loop a
list append, never a system call. When a file passes `max_bytes` it becomes PATH.1 (PATH.1
becomes PATH.2, ...; the oldest beyond `backups` is deleted) and a fresh PATH is started. An
empty path turns the log off: `open_tsv("")` returns a writer whose methods do nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

FLUSH_INTERVAL_NS = 1_000_000_000  # rows reach the disk within a second
MAX_BUFFERED = 4096  # ...or sooner under heavy load, bounding memory


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    text = value if isinstance(value, str) else str(value)
    if "\t" in text or "\n" in text or "\r" in text:  # a field never breaks the row apart
        text = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return text


class TsvLog:
    def __init__(self, path: str | os.PathLike, columns: Sequence[str], max_bytes: int = 64 * 1024 * 1024,
                 backups: int = 5, flush_interval_ns: int = FLUSH_INTERVAL_NS, max_buffered: int = MAX_BUFFERED):
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"a rotating log needs max_bytes > 0 and backups >= 0, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.columns = tuple(columns)
        self.max_bytes = max_bytes
        self.backups = backups
        self.flush_interval_ns = flush_interval_ns
        self.max_buffered = max_buffered
        self._rows: list[str] = []
        self._next_flush_ns = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()

    @property
    def enabled(self) -> bool:
        return True

    def _open(self):
        fh = open(self.path, "a", encoding="utf-8", newline="\n")
        if fh.tell() == 0:
            fh.write("\t".join(self.columns) + "\n")
            fh.flush()
        return fh

    def write(self, row: Sequence[Any]) -> None:
        self._rows.append("\t".join(map(_text, row)) + "\n")

    def write_line(self, line: str) -> None:
        """A row already joined with tabs and ended with a newline (the caller's fast path)."""
        self._rows.append(line)

    def maybe_flush(self, now_ns: int) -> None:
        if self._rows and (now_ns >= self._next_flush_ns or len(self._rows) >= self.max_buffered):
            self.flush()
            self._next_flush_ns = now_ns + self.flush_interval_ns

    def flush(self) -> None:
        if self._file is None:
            return
        if self._rows:
            self._file.write("".join(self._rows))
            self._rows.clear()
        self._file.flush()
        if self._file.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None


class NullLog:
    """A turned-off log: the same methods, no work."""

    enabled = False

    def write(self, row: Sequence[Any]) -> None:
        pass

    def write_line(self, line: str) -> None:
        pass

    def maybe_flush(self, now_ns: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_tsv(path: str, columns: Sequence[str], max_bytes: int = 64 * 1024 * 1024, backups: int = 5) -> TsvLog | NullLog:
    """A rotating TSV log at `path`, or a NullLog when `path` is empty (the log is off)."""
    return TsvLog(path, columns, max_bytes, backups) if path else NullLog()
