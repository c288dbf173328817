"""clockwork-bench capacity: the search logic with a fake judge, and tiny real searches."""

import json
import math

import pytest

from clockwork.bench import capacity
from clockwork.bench.capacity import Step, search


def fake_judge(threshold: float, seen: list):
    def judge(rate: float) -> Step:
        seen.append(rate)
        ok = rate <= threshold
        return Step(rate=rate, passed=ok, attainment=1.0 if ok else 0.9)
    return judge


def test_grows_then_bisects_to_the_threshold():
    seen = []
    result = search(fake_judge(7000, seen), start_rate=2000, growth=1.5, precision=0.05, max_steps=20)
    assert seen[:5] == pytest.approx([2000, 3000, 4500, 6750, 10125])
    lo, hi = result.bracket
    assert lo == result.best_rate <= 7000 < hi
    assert (hi - lo) / lo <= 0.05
    assert [s.rate for s in result.steps] == seen
    assert all(s.passed == (s.rate <= 7000) for s in result.steps)


def test_steps_down_when_the_first_rate_fails():
    seen = []
    result = search(fake_judge(500, seen), start_rate=2000, growth=2, precision=0.1, max_steps=20)
    assert seen[:3] == [2000, 1000, 500]
    assert result.best_rate == 500 and result.bracket[0] == 500
    assert 500 < result.bracket[1] <= 550  # bisected down from 1000 to within 10%


def test_nothing_passes():
    result = search(fake_judge(0, []), start_rate=100, growth=10, max_steps=5, min_rate=1)
    assert result.best_rate == 0 and [s.rate for s in result.steps] == [100, 10, 1]


def test_everything_passes_up_to_max_rate():
    result = search(fake_judge(math.inf, []), start_rate=1000, max_rate=5000, growth=2, max_steps=10)
    assert [s.rate for s in result.steps] == [1000, 2000, 4000, 5000]
    assert result.best_rate == 5000 and result.bracket == (5000, math.inf)


def test_max_steps_is_a_hard_limit():
    seen = []
    result = search(fake_judge(123_456, seen), start_rate=1, growth=1.1, max_steps=7)
    assert len(seen) == len(result.steps) == 7


def test_bad_arguments():
    with pytest.raises(ValueError):
        search(fake_judge(1, []), start_rate=0)
    with pytest.raises(ValueError):
        search(fake_judge(1, []), start_rate=1, growth=1.0)


def test_step_verdict_from_a_run_summary():
    summary = {"requests": 1000, "attainment": 0.9991, "offered_per_s": 500.0, "throughput_per_s": 499.0,
               "goodput_per_s": 499.5, "latency_ms": {"p50": 3.0, "p99": 9.0, "p99.9": 20.0},
               "by_status": {"OK": 999, "QUEUE_FULL": 1}}
    step = capacity.step_from_summary(500, summary, 1.5, target=0.999)
    assert step.passed and step.not_ok == {"QUEUE_FULL": 1} and step.p999_ms == 20.0
    assert not capacity.step_from_summary(500, {**summary, "attainment": 0.998}, 1.5, 0.999).passed
    empty = {**summary, "requests": 0, "attainment": None, "latency_ms": {}}
    assert not capacity.step_from_summary(500, empty, 0.0, 0.999).passed


def three_searches(system: float, echo: float, relay: float, max_steps: int = 20) -> dict:
    """Fake searches whose ceilings are near the given thresholds (each bracketed by a failure)."""
    return {name: search(fake_judge(threshold, []), start_rate=1000, growth=2, max_steps=max_steps)
            for name, threshold in (("system", system), ("echo", echo), ("relay", relay))}


def test_ratios_and_the_goal():
    results = three_searches(3000, 4000, 8000)
    found = capacity.ratios(results)
    assert found == pytest.approx({"system/echo": results["system"].best_rate / results["echo"].best_rate,
                                   "system/relay": results["system"].best_rate / results["relay"].best_rate})
    assert capacity.goal_met(results) is (found["system/echo"] >= capacity.GOAL_OF_ECHO)
    assert capacity.goal_met(three_searches(1000, 8000, 8000)) is False
    assert capacity.goal_met(three_searches(8000, 8000, 8000)) is True
    # A search that never failed gives only a lower bound of its ceiling: judged only where
    # the bound decides (an echo bound makes the ratio an upper bound, a system bound a lower one).
    assert capacity.goal_met(three_searches(8000, 8000, 8000, max_steps=2)) is None
    exact_low, exact_high, bound = three_searches(1000, 1000, 1000), three_searches(9000, 9000, 9000), \
        three_searches(8000, 8000, 8000, max_steps=3)
    assert capacity.goal_met({**bound, "system": exact_low["system"]}) is False  # <= 1,000 / 4,000
    assert capacity.goal_met({**exact_high, "echo": bound["echo"]}) is None  # <= 8,724 / 4,000: either
    assert capacity.goal_met({**exact_low, "system": bound["system"]}) is True  # >= 4,000 / 1,000
    assert capacity.goal_met({**exact_high, "system": bound["system"]}) is None  # >= 4,000 / 8,724: either
    assert capacity.ratios({"echo": results["echo"]}) == {} and capacity.goal_met({"echo": results["echo"]}) is None


def test_outputs(tmp_path):
    results = three_searches(3000, 4000, 8000, max_steps=4)
    args = capacity.parse_args(["--out", str(tmp_path)])
    paths = capacity.write_outputs(tmp_path, results, args)
    assert [p.name for p in paths] == ["capacity.json", "capacity.csv", "capacity.png"]
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert data["ceilings_per_s"] == {name: r.best_rate for name, r in results.items()}
    assert set(data["ratios"]) == {"system/echo", "system/relay"} and "goal_met" in data
    assert [len(data["searches"][name]["steps"]) for name in results] == [len(r.steps) for r in results.values()]
    rows = (tmp_path / "capacity.csv").read_text().splitlines()
    assert rows[0].startswith("search,rate,") and len(rows) == 1 + sum(len(r.steps) for r in results.values())
    assert "attainment" in capacity.format_steps(results["system"].steps)
    verdict = capacity.format_verdict(results, args)
    assert all(name in verdict for name in results) and "system/echo = " in verdict and "system/relay = " in verdict


def test_tiny_search_against_the_echo_server(tmp_path, capsys):
    code = capacity.main(["--echo", "--start-rate", "300", "--max-steps", "2", "--step-s", "0.5", "--pause-s", "0",
                          "--quiet", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert list(data["searches"]) == ["echo"] and data["ratios"] == {}
    assert [s["rate"] for s in data["searches"]["echo"]["steps"]] == [300, 450]
    assert data["ceilings_per_s"] == {"echo": 450}
    assert "echo    >= 450/s" in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_one_run_reports_three_ceilings_and_their_ratios(tmp_path, capsys):
    """The plumbing of the default command: the system, the echo server and the relay chain are
    each searched (one tiny step here) and the report has every ceiling and both ratios."""
    code = capacity.main(["--workers", "1", "--devices-per-worker", "2", "--models", "2", "--warmup-s", "0.5",
                          "--start-rate", "100", "--max-steps", "1", "--step-s", "1", "--ramp-s", "0.2",
                          "--pause-s", "0", "--quiet", "--step-reports", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert set(data["searches"]) == set(data["ceilings_per_s"]) == {"system", "echo", "relay"}
    for name in ("system", "echo", "relay"):
        step = data["searches"][name]["steps"][0]
        assert step["passed"] and step["attainment"] >= 0.999 and data["ceilings_per_s"][name] == 100
        assert (tmp_path / "steps" / name / "01-100" / "requests.tsv").exists()
    system_step = data["searches"]["system"]["steps"][0]
    assert system_step["controller_cpu"] is not None
    assert {"controller", "worker-emu0", "loadgen"} <= set(system_step["process_cpu"])
    # The system's steps carry the allowances it priced with; the references have no controller.
    assert "reply_ms" in data["searches"]["system"]["steps"][0]["allowances"]
    assert all(data["searches"][ref]["steps"][0]["allowances"] == {} for ref in ("echo", "relay"))
    assert all(0 < data["searches"][name]["steps"][0]["host_cpu"] <= 1 for name in ("system", "echo", "relay"))
    assert data["ratios"] == {"system/echo": 1.0, "system/relay": 1.0}
    assert data["goal_met"] is None  # no reference search failed: its ceiling is only a lower bound
    out = capsys.readouterr().out
    assert "system/echo = 1.00" in out and "system/relay = 1.00" in out and "relay   >= 100/s" in out
