"""The model registry: durable, atomic, deduplicated."""

from __future__ import annotations

import pytest

from common.models import parse_profile
from controller.registry import Registry

PROFILE = b'{"weights_bytes": 1000, "load_ms": 1, "exec_ms": {"1": 1}}'
SIG = parse_profile(PROFILE).signature


def test_models_survive_reopening(tmp_path):
    reg = Registry(tmp_path)
    reg.add("a", "profile", PROFILE, {}, 0, SIG)
    reg.close()
    again = Registry(tmp_path)
    rec = again.get("a")
    assert rec.signature == SIG and again.blob("a") == PROFILE
    assert [r.name for r in again.all()] == ["a"]


def test_identical_bytes_are_stored_once_and_freed_with_the_last_name(tmp_path):
    reg = Registry(tmp_path)
    for i in range(5):
        reg.add(f"m{i}", "profile", PROFILE, {}, 0, SIG)
    assert len(list((tmp_path / "models").iterdir())) == 1
    for i in range(4):
        reg.remove(f"m{i}")
    assert len(list((tmp_path / "models").iterdir())) == 1
    reg.remove("m4")
    assert not list((tmp_path / "models").iterdir())


def test_existing_name_needs_replace(tmp_path):
    reg = Registry(tmp_path)
    reg.add("a", "profile", PROFILE, {}, 0, SIG)
    with pytest.raises(KeyError):
        reg.add("a", "profile", PROFILE, {}, 0, SIG)
    other = PROFILE.replace(b"1000", b"2000")
    reg.add("a", "profile", other, {}, 0, SIG, replace=True)
    assert reg.blob("a") == other
    assert len(list((tmp_path / "models").iterdir())) == 1  # the replaced bytes are gone


def test_a_crash_mid_write_leaves_the_old_state(tmp_path):
    reg = Registry(tmp_path)
    reg.add("a", "profile", PROFILE, {}, 0, SIG)
    reg.close()
    # a crash after the temporary file was written but before rename and commit
    (tmp_path / "models" / ".deadbeef.123.tmp").write_bytes(b"partial")
    (tmp_path / "models" / "deadbeef").write_bytes(b"renamed but never committed")
    reg = Registry(tmp_path)
    assert [r.name for r in reg.all()] == ["a"] and reg.blob("a") == PROFILE
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [reg.get("a").sha256]
