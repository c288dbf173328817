"""The soak benchmark's short version (issue 13): mixed load with refusals, expiries and
cancels through real processes; memory, descriptors and the core's tables stay bounded.
`clockwork-bench soak --duration-s 300` is the long one."""

from __future__ import annotations

import json

import pytest

from clockwork.bench import soak

pytestmark = pytest.mark.timeout(180)


def test_a_short_soak_stays_bounded(tmp_path):
    assert soak.main(["--duration-s", "21", "--rate", "200", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "soak.json").read_text())
    assert all(row["bounded"] for row in report["verdict"])
    assert len(report["samples"]) >= 18 and report["cancelled"] > 0
    assert report["by_status"]["OK"] > 0 and report["by_status"]["WOULD_MISS_DEADLINE"] > 0
    assert {f"core.{t}" for t in soak.TABLES} <= set(report["samples"][0])
    assert (tmp_path / "soak.png").stat().st_size > 0


def test_the_verdict_tells_a_growing_series_from_a_bounded_one():
    samples = [{"t_s": i, "controller.rss_kib": 50_000 + 1_000 * i, "core.requests_live": 10 + i % 3}
               for i in range(30)]
    rows = {key: ok for key, _, _, ok in soak.verdict(samples)}
    assert rows == {"controller.rss_kib": False, "core.requests_live": True}
