"""A short chaos run: workers killed and frozen, the controller restarted, under traffic.
(The long run: `clockwork-bench chaos --duration 60 --rate 200`.)"""

from __future__ import annotations

import pytest

from clockwork.bench.chaos import run

pytestmark = pytest.mark.timeout(240)


def test_invariants_hold_through_worker_and_controller_failures(tmp_path):
    report = run(duration_s=8, rate=50, slo_ms=100, models=4, workers=3, seed=3, late_bound_ms=50,
                 run_dir=tmp_path)
    assert report.violations() == [], report.render()
    assert len(report.outcomes) > 300
    assert sum(o.status == "OK" for o in report.outcomes) > len(report.outcomes) / 2
    faults = set(report.faults)
    assert {"SIGKILL controller", "restart controller"} <= faults  # every kind of fault happened
    assert any(f.startswith("SIGKILL emu") for f in faults) and any(f.startswith("SIGSTOP emu") for f in faults)
    assert report.detection_ms["killed"] < 2000 and report.detection_ms["frozen"] < 2000
