"""`clockwork-bench sweep`: simulator runs across offered loads, tabulated and plotted."""

from __future__ import annotations

import json

import pytest

from clockwork.bench import sim, sweep


def summary(scheduler: str, offered_per_s: float, attainment: float) -> dict:
    offered = int(offered_per_s * 10)
    return {"scheduler": scheduler, "offered": offered, "offered_per_s": offered_per_s, "rejected": offered // 10,
            "goodput_per_s": offered_per_s * attainment * 0.9, "slo_attainment_admitted": attainment,
            "latency_ok_ms": {"p99": 50.0}}


def test_a_row_has_what_the_plot_needs():
    row = sweep.row_of(summary("clockwork", 100.0, 0.9999))
    assert row == {"scheduler": "clockwork", "offered_per_s": 100.0, "goodput_per_s": pytest.approx(89.991),
                   "refused_share": 0.1, "admitted_in_slo": 0.9999, "p99_ok_ms": 50.0}


def test_summaries_written_earlier_are_plotted(tmp_path):
    for name, rate, att in (("clockwork", 100.0, 1.0), ("clockwork", 200.0, 0.9999), ("fifo", 100.0, 0.5)):
        folder = tmp_path / f"{name}{rate:g}"
        folder.mkdir()
        (folder / f"{name}-summary.json").write_text(json.dumps(summary(name, rate, att)))
    out = tmp_path / "out"
    assert sweep.main(["--from", *map(str, sorted(tmp_path.glob("*0"))), "--out", str(out)]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert sorted((r["scheduler"], r["offered_per_s"]) for r in rows) == \
        [("clockwork", 100.0), ("clockwork", 200.0), ("fifo", 100.0)]
    assert (out / "sweep.png").stat().st_size > 10_000


def test_a_small_sweep_runs_every_scheduler_at_every_rate(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = sweep.main(["--rates", "200,400", "--schedulers", "clockwork,fifo", "--gpus", "2", "--devices-per-worker", "2",
                       "--models", "8", "--duration-s", "1", "--no-logs", "--quiet", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert sorted((r["scheduler"], r["offered_per_s"] > 300) for r in rows) == \
        [("clockwork", False), ("clockwork", True), ("fifo", False), ("fifo", True)]
    assert all(0 < r["goodput_per_s"] <= r["offered_per_s"] + 1e-9 for r in rows)
    assert len(list((out / "runs").glob("*-summary.json"))) == 4  # each run's own summary is kept
    assert "admitted in SLO" in capsys.readouterr().out


def test_the_sims_own_rate_options_are_refused():
    with pytest.raises(SystemExit):
        sweep.parse_args(["--rates", "100", "--rate", "100"])
    with pytest.raises(SystemExit):
        sweep.parse_args(["--rates", "100", "--schedulers", "lifo"])
    with pytest.raises(SystemExit):
        sweep.parse_args([])
    args, sim_args = sweep.parse_args(["--rates", "100,250", "--gpus", "8"])
    assert args.rates == [100.0, 250.0] and sim.spec_from_args(sim_args).sim.gpus == 8
