"""The bare relay chain (bench.relay) and the overhead bench: real relay and echo processes, round trips."""

import json
import sys

import numpy as np
import pytest
import zmq

from clockwork.bench import callgrind, overhead, relay
from clockwork.bench.procs import ProcessGroup, free_port
from clockwork.client.protocol import build_infer
from clockwork.common.net import dealer


def test_relay_echoes_the_same_frames(tmp_path):
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    me = [sys.executable, "-m", "clockwork.bench.relay"]
    ctx = zmq.Context()
    try:
        with ProcessGroup(tmp_path / "logs", grace_s=2) as group:
            group.start("relay", [*me, "--role", "relay", "--front", front, "--back", back])
            group.start("echo", [*me, "--role", "echo", "--back", back])
            body = build_infer("tiny", {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}, 10**9)
            path = relay.RoundTrip(dealer(ctx, front), body)
            relay.wait_relay(path, 20)
            for _ in range(20):
                rtt_ns, echoed = path.once()
                assert 0 < rtt_ns < 10**9
                assert echoed.model == "tiny" and echoed.tensors[0].array().tolist() == [[0, 1, 2, 3]]
            group.check()
    finally:
        ctx.destroy(linger=0)


def test_parse_args_defaults():
    args = overhead.parse_args([])
    assert args.requests == 3000


def test_overhead_measures_both_modes_and_judges_each(tmp_path):
    out = tmp_path / "out"
    assert overhead.main(["--requests", "40", "--warmup", "10", "--block", "10", "--gapped-requests", "20",
                          "--gap-ms", "5", "--out", str(out)]) == 0
    summary = json.loads((out / "overhead-summary.json").read_text())
    assert set(summary["modes"]) == {"back to back", "5 ms gaps"}
    for mode in summary["modes"].values():
        assert 0 < mode["relay_ms"]["p50"] <= mode["relay_ms"]["max"] and 0 < mode["overhead_ms"]["p50"]
        assert mode["met"] == (mode["ratio_p50"] <= summary["goal"])
        # Each path's CPU counts its own processes only: the system's never names the relay's, and
        # the worker's EXEC lane (a thread named by the worker) shows apart from its loop.
        system, bare = mode["cpu_us_per_request"]["system"]["threads"], mode["cpu_us_per_request"]["relay"]["threads"]
        assert {"controller/main", "worker/main", "worker/dev0-exec"} <= set(system), system
        assert {"relay/main", "echo/main"} <= set(bare) and not any(n.startswith(("relay/", "echo/")) for n in system)
        assert not any(n.startswith(("controller/", "worker/")) for n in bare)
    assert summary["met"] == all(mode["met"] for mode in summary["modes"].values())


@pytest.mark.slow
def test_overhead_counts_each_process_instructions_a_request(tmp_path):
    """--count-instructions: every process on both paths runs under callgrind and reports what a
    request cost it beyond idling; the system's daemons decode, plan and encode, the relay only
    forwards frames, so the system counts more."""
    why = callgrind.missing()
    if why:
        pytest.skip(f"cannot count instructions here: {why}")
    out = tmp_path / "out"
    assert overhead.main(["--count-instructions", "--requests", "40", "--warmup", "10", "--out", str(out)]) == 0
    data = json.loads((out / "overhead-instructions.json").read_text())
    counts = data["instructions_per_request"]
    assert set(counts) == {"system", "relay"}
    assert set(counts["system"]) == {"controller", "worker-cpu"} and set(counts["relay"]) == {"relay", "echo"}
    assert all(count > 10_000 for by_process in counts.values() for count in by_process.values()), counts
    assert data["totals"]["system"] == sum(counts["system"].values())
    assert data["system_over_relay"] == data["totals"]["system"] / data["totals"]["relay"] > 1
