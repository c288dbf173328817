"""The progress bar: in place on a terminal, plain lines otherwise."""

import io
import os

import pytest

from clockwork.bench.progress import NullProgress, Progress, command_main
from clockwork.common import cpu_latency
from tests.worker_helpers import holds_the_device


def test_plain_lines_when_not_a_tty():
    out = io.StringIO()
    bar = Progress(10, label="run", stream=out, line_every_s=3600)
    bar.update(1.0, sent=10, ok=9, rejected=1)
    bar.update(2.0, sent=20, ok=19, rejected=1)  # within the interval: not drawn
    bar.update(10.0, sent=30, ok=28, rejected=2, force=True)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert "sent 30" in lines[1] and "ok 28" in lines[1] and "rejected 2" in lines[1] and "10.0/10 s" in lines[1]


def test_redraws_in_place_on_a_tty():
    out = io.StringIO()
    with Progress(4, stream=out, tty=True, redraw_s=0) as bar:
        bar.update(1, 1, 1, 0)
        bar.message("hello")
        bar.update(4, 2, 2, 0)
    text = out.getvalue()
    assert text.count("\r") >= 2 and "hello\n" in text and text.endswith("\n")
    assert "[" + "#" * 28 + "]" in text


def test_render_clamps_and_null_is_silent():
    bar = Progress(10, stream=io.StringIO(), tty=False)
    assert "[" + "." * 28 + "]" in bar.render(-1, 0, 0, 0)
    assert "[" + "#" * 28 + "]" in bar.render(99, 0, 0, 0)
    NullProgress().update(1, 2, 3, 4)


@pytest.mark.skipif(not os.access(cpu_latency.DEVICE, os.W_OK), reason=f"{cpu_latency.DEVICE} is not writable")
def test_a_command_runs_with_idle_cores_kept_polling_and_withdraws_the_request_after():
    """capacity measures its echo and relay references with no daemon running: the command itself
    keeps idle cores polling, as the daemons would have."""
    seen = []
    main = command_main(lambda argv: argv, lambda args: seen.append(holds_the_device(os.getpid())) or 0, "test")
    assert main([]) == 0
    assert seen == [True] and not holds_the_device(os.getpid())
