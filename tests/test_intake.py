"""controller.intake: checks run off the loop, and the loop takes each result back exactly once."""

import time

from clockwork.bench.models import tiny_onnx
from clockwork.common import schema
from clockwork.common.status import Status
from clockwork.controller.intake import Intake
from clockwork.controller.registry import Registry


def _all_finished(intake: Intake, count: int, timeout_s: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += intake.finished()
        time.sleep(0.01)
    return got


def test_each_check_comes_back_once_and_an_idle_intake_returns_nothing(tmp_path):
    intake = Intake(Registry(tmp_path / "state"), tmp_path / "staging")
    assert intake.finished() == []  # nothing submitted
    intake.submit(b"c", 1, schema.Upload(name="good", blob=tiny_onnx()))
    intake.submit(b"c", 2, schema.Upload(name="bad", blob=b"not a model"))
    assert intake.checking == {"good", "bad"}
    done = {checked.msg.name: checked for checked in _all_finished(intake, 2)}
    assert set(done) == {"good", "bad"}
    assert done["good"].error is None and done["good"].signature is not None and done["good"].digest
    assert done["bad"].error is not None and done["bad"].error.status is Status.BAD_MODEL and done["bad"].digest is None
    assert intake.checking == set() and intake.finished() == []
    # A later check is still picked up: nothing stays counted out.
    intake.submit(b"c", 3, schema.Upload(name="again", blob=tiny_onnx(8)))
    assert [checked.msg.name for checked in _all_finished(intake, 1)] == ["again"]
    assert intake.finished() == []
