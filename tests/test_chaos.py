"""A short chaos run: workers killed and frozen, the controller restarted, under traffic.
(The long run: `clockwork-bench chaos --duration 60 --rate 200`.)"""

from __future__ import annotations

import pytest

from clockwork.bench.chaos import MS, Outcome, Report, run

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


def test_lateness_counts_from_the_call_as_the_clients_deadline_does():
    """The harness's own loop may make a call late (a fork to restart a daemon stalls it); the
    system is held to the deadline the client set when it called."""
    called_late = Outcome(scheduled_ns=0, called_ns=100 * MS, ended_ns=230 * MS, status="OK", ends=1)
    answered_late = Outcome(scheduled_ns=0, called_ns=0, ended_ns=160 * MS, status="DEADLINE_MISSED", ends=1)
    report = Report([called_late], slo_ms=100, late_bound_ms=50)
    assert report.violations() == [] and report.send_lag_ms() == 100
    assert "calls made up to 100.0 ms after their schedule" in report.render()
    report = Report([called_late, answered_late], slo_ms=100, late_bound_ms=50)
    assert report.violations() == ["1 answered later than SLO + 50 ms (DEADLINE_MISSED 1; worst 160.0 ms)"]
