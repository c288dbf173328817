"""A short fuzzing run of every decoder (the long campaign is `python -m clockwork.bench.fuzz all`)."""

from __future__ import annotations

import pytest

from clockwork.bench.fuzz import TARGETS, run_mutate


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_decoders_only_refuse_with_their_documented_errors(target, tmp_path):
    runs = {"onnx": 300}.get(target, 3000)
    done, crashes = run_mutate(target, seconds=60, max_runs=runs, seed=1, crashes_dir=tmp_path, progress=False)
    assert done == runs
    assert crashes == 0, list(tmp_path.iterdir())
