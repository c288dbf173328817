"""`clockwork-bench predictability` end to end on a real worker process: lone EXECs against the
direct call, and bursts queued at once against direct calls back to back."""

from __future__ import annotations

import os
import re

import pytest

from clockwork.bench import predictability

pytestmark = pytest.mark.timeout(180)


def test_predictability_reports_lone_and_back_to_back_ratios(capsys):
    assert predictability.main(["--model", "cnn", "--runs", "20", "--block", "10", "--warmup", "2",
                                "--burst", "20", "--bursts", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"runs: 20 each; worker / direct at p50: \d+\.\d+", out), out
    ratio = re.search(r"back to back, 2 bursts of 20: direct [\d.]+ us a call; worker lane's rate / direct's: "
                      r"median (\d+\.\d+)", out)
    assert ratio and float(ratio.group(1)) > 0, out
    gaps = re.search(r"gap from an EXEC's end to the next one's begin: p50 (-?[\d.]+) us", out)
    assert gaps and float(gaps.group(1)) >= 0, out  # one lane: an EXEC never begins before the last one ended
    if os.path.exists("/proc/thread-self/comm"):  # the worker's CPU by thread, its EXEC lane by name
        cpu = re.search(r"CPU an EXEC by thread .*: (.*)", out)
        assert cpu and re.search(r"\bdev0-exec \d+", cpu.group(1)), out
