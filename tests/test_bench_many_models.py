"""Issue 14's acceptance through real processes: 4,026 models (emulated profiles and ONNX), then
every control path answers correctly, before and after a controller restart. The benchmark
checks each answer (rows, entries, input names) and raises on a wrong one."""

from __future__ import annotations

import json

import pytest

from clockwork.bench import many_models

pytestmark = pytest.mark.timeout(300)


def test_every_control_path_answers_with_4026_models_and_after_a_restart(tmp_path, capsys):
    out = tmp_path / "many.json"
    assert many_models.main(["--models", "4026", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    calls = {t["call"]: t for t in report["timings"]}
    assert len(calls) == 11 and report["models"] == 4026
    assert calls["Client.list()"]["detail"] == "4026 models"
    assert calls["gateway repository index"]["detail"] == "4026 entries"
    assert calls["tritonclient get_model_metadata"]["detail"] == "inputs ['x']"
    labels = int(calls["metrics scrape"]["detail"].split(", ")[2].split()[0])
    assert labels <= 21  # metrics_max_models (20) and "_other": bounded however many models
    assert all(t["restarted_ms"] > 0 for t in calls.values())
    assert "4026 models" in capsys.readouterr().out
