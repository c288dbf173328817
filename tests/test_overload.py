"""clockwork-bench overload: a step from a run summary, the verdicts, the outputs, and one tiny real run."""

import json
import math

import pytest

from clockwork.bench import overload


def summary(requests=1000, met=600, by_status=None, goodput=600.0):
    by_status = by_status or {"OK": 610, "WOULD_MISS_DEADLINE": 300, "QUEUE_FULL": 50, "DEADLINE_MISSED": 30,
                              "UNANSWERED": 10}
    return {"requests": requests, "met_slo": met, "offered_per_s": requests / 2.0, "goodput_per_s": goodput,
            "by_status": by_status, "latency_ms": {"p50": 20.0, "p99": 90.0}}


def test_step_splits_refused_at_once_from_failed_after_admission():
    step = overload.step_from_summary("3x", 1500, summary(), {"controller": 80.0, "worker-emu0": 60.0}, 0.2)
    assert step.refused == {"WOULD_MISS_DEADLINE": 300, "QUEUE_FULL": 50}
    assert step.failed_after_admission == {"DEADLINE_MISSED": 30, "UNANSWERED": 10}
    assert step.admitted == 650 and step.admitted_met_slo == 600
    assert step.admitted_in_slo == pytest.approx(600 / 650)
    assert step.system_peak_rss_mib == 140.0 and step.p99_ms == 90.0


def test_nothing_admitted_is_not_a_pass():
    step = overload.step_from_summary("3x", 10, summary(10, 0, {"QUEUE_FULL": 10}, 0.0), {})
    assert step.admitted == 0 and math.isnan(step.admitted_in_slo)
    base = overload.step_from_summary("1x", 10, summary(10, 10, {"OK": 10}, 5.0), {})
    v = overload.verdicts(base, step, 0.999)
    assert not v["admitted_in_slo"]["met"] and not v["goodput_ratio"]["met"] and not v["peak_rss_ratio"]["met"]


def test_verdicts():
    base = overload.step_from_summary("1x", 500, summary(1000, 1000, {"OK": 1000}, 500.0), {"controller": 100.0})
    good = overload.step_from_summary("3x", 1500, summary(3000, 1000, {"OK": 1000, "WOULD_MISS_DEADLINE": 2000},
                                                          460.0), {"controller": 110.0})
    v = overload.verdicts(base, good, 0.999)
    assert v["goodput_ratio"]["value"] == pytest.approx(0.92) and v["goodput_ratio"]["met"]
    assert v["admitted_in_slo"]["value"] == 1.0 and v["admitted_in_slo"]["met"]
    assert v["peak_rss_ratio"]["value"] == pytest.approx(1.1) and v["peak_rss_ratio"]["met"]
    bad = overload.step_from_summary("3x", 1500, summary(3000, 800, {"OK": 800, "DEADLINE_MISSED": 2200}, 400.0),
                                     {"controller": 300.0})
    v = overload.verdicts(base, bad, 0.999)
    assert not any(item["met"] for item in v.values())
    assert "NOT met" in overload.format_verdicts(v)


@pytest.mark.timeout(120)
def test_tiny_real_run(tmp_path, capsys):
    code = overload.main(["--workers", "1", "--devices-per-worker", "1", "--models", "1", "--capacity", "100",
                          "--step-s", "2", "--ramp-s", "0.5", "--warmup-s", "0.5", "--pause-s", "0", "--quiet",
                          "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "overload.json").read_text())
    assert data["capacity_per_s"] == 100 and data["capacity_from"] == "--capacity"
    assert [s["label"] for s in data["steps"]] == ["1x", "3x"]
    assert [s["rate"] for s in data["steps"]] == [100, 300]
    for s in data["steps"]:
        assert s["requests"] > 0 and 0 <= s["admitted"] <= s["requests"] and s["goodput_per_s"] > 0
        assert 0 <= s["admitted_in_slo"] <= 1 and s["peak_rss_mib"]["controller"] > 0
    assert set(data["verdicts"]) == {"goodput_ratio", "admitted_in_slo", "peak_rss_ratio"}
    assert (tmp_path / "overload.png").stat().st_size > 0
    assert "goodput_ratio" in capsys.readouterr().out
