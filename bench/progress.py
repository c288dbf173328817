"""A progress bar on stderr, without dependencies.

On a terminal it redraws one line in place (at most every `redraw_s`); when stderr is a file or
a pipe (CI logs) it writes one plain line every `line_every_s` instead, so logs stay readable.

Example:
    with Progress(total_s=30, label="demo") as bar:
        bar.update(elapsed_s, sent=120, ok=118, rejected=2)
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from clockwork.common import cpu_latency

BAR_WIDTH = 28


class Progress:
    def __init__(self, total_s: float, label: str = "", stream: TextIO | None = None,
                 redraw_s: float = 0.1, line_every_s: float = 5.0, tty: bool | None = None):
        self.total_s = max(float(total_s), 1e-9)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self._min_interval_s = redraw_s if self.tty else line_every_s
        self._last_draw = -float("inf")
        self._last_text = ""
        self._drew_inline = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, elapsed_s: float, sent: int, ok: int, rejected: int, force: bool = False) -> None:
        """Cheap when called often: draws only when the interval has passed (or `force`)."""
        now = time.monotonic()
        if not force and now - self._last_draw < self._min_interval_s:
            return
        self._last_draw = now
        self._last_text = self.render(elapsed_s, sent, ok, rejected)
        if self.tty:
            self.stream.write("\r\x1b[2K" + self._last_text)
            self._drew_inline = True
        else:
            self.stream.write(self._last_text + "\n")
        self.stream.flush()

    def render(self, elapsed_s: float, sent: int, ok: int, rejected: int) -> str:
        fraction = min(max(elapsed_s / self.total_s, 0.0), 1.0)
        filled = int(round(fraction * BAR_WIDTH))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        prefix = f"{self.label} " if self.label else ""
        return (f"{prefix}[{bar}] {elapsed_s:5.1f}/{self.total_s:.0f} s  "
                f"sent {sent}  ok {ok}  rejected {rejected}")

    def message(self, text: str) -> None:
        """A line of its own, without tearing a bar being drawn."""
        if self._drew_inline:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        if self._drew_inline and self._last_text:
            self.stream.write(self._last_text)
        self.stream.flush()

    def close(self) -> None:
        if self._drew_inline:
            self.stream.write("\n")
            self.stream.flush()
            self._drew_inline = False


class NullProgress(Progress):
    """Draws nothing (tests, --quiet)."""

    def __init__(self) -> None:
        super().__init__(1.0, tty=False)

    def update(self, elapsed_s: float, sent: int, ok: int, rejected: int, force: bool = False) -> None:
        return None

    def message(self, text: str) -> None:
        return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def say(text: str) -> None:
    """A line for the person watching (stderr, so stdout stays the report)."""
    print(text, file=sys.stderr, flush=True)


class _Said:
    """common/cpu_latency's log lines, said."""

    def info(self, event: str, **fields: object) -> None:
        details = ", ".join(f"{key}={value}" for key, value in fields.items())
        say(event + (f" ({details})" if details else ""))

    warning = info


def command_main(parse_args, run, what: str):
    """The `main(argv)` of a command that starts processes: Ctrl-C ends it with status 130 once
    every process it started has been stopped (bench.procs does the stopping).

    It runs with idle cores kept polling, as the daemons keep them (common/cpu_latency.py), so
    that a reference measured while no daemon runs (capacity's echo and relay searches) meets
    the same idle cores the system met."""

    def main(argv=None) -> int:
        args = parse_args(argv)
        try:
            with cpu_latency.held(0, _Said()):
                return run(args)
        except KeyboardInterrupt:
            say(f"interrupted; every process the {what} started has been stopped")
            return 130

    return main
