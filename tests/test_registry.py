"""The model registry: durable, atomic, deduplicated."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from clockwork.common.models import parse_profile
from clockwork.controller.registry import SCHEMA_VERSION, Registry, RegistryError

PROFILE = b'{"weights_bytes": 1000, "load_ms": 1, "exec_ms": {"1": 1}}'
SIG = parse_profile(PROFILE).signature


def test_models_survive_reopening(tmp_path):
    reg = Registry(tmp_path)
    reg.add("a", "profile", PROFILE, {}, 0, SIG)
    reg.close()
    again = Registry(tmp_path)
    rec = again.get("a")
    assert rec.signature == SIG and again.blob(again.get("a").sha256) == PROFILE
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
    assert reg.blob(reg.get("a").sha256) == other
    assert len(list((tmp_path / "models").iterdir())) == 1  # the replaced bytes are gone


def test_a_change_looks_only_at_the_bytes_it_may_have_orphaned_and_by_the_index(tmp_path):
    """Each upload once read every record's digest and listed every file: 0.75 ms an upload at
    500 models, 2.7 ms at 4,000, in the controller's loop. Now a change checks the digests it
    may have orphaned (a replaced or removed record's, bytes stored then given up), each by
    the sha256 index, and stored bytes given up go at the next change."""
    reg = Registry(tmp_path)
    statements: list[str] = []
    reg._db.set_trace_callback(statements.append)
    for i in range(20):
        reg.add(f"m{i}", "profile", PROFILE.replace(b"1000", str(i).encode()), {}, 0, SIG)
    given_up = reg.store(b"a refused upload's bytes")
    reg.release(given_up)
    assert (tmp_path / "models" / given_up).exists()
    reg.add("m0", "profile", PROFILE, {}, 0, SIG, replace=True)
    reg.remove("m1")
    assert not any("SELECT sha256 FROM models" in s for s in statements)  # no scan of every record
    assert len(list((tmp_path / "models").iterdir())) == 19  # m0's and m1's old bytes, and the refused, gone
    plan = " ".join(str(row) for row in reg._db.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM models WHERE sha256 = ? LIMIT 1", ("x",)))
    assert "models_by_sha256" in plan


def test_a_crash_mid_write_leaves_the_old_state(tmp_path):
    reg = Registry(tmp_path)
    reg.add("a", "profile", PROFILE, {}, 0, SIG)
    reg.close()
    # a crash after the temporary file was written but before rename and commit
    (tmp_path / "models" / ".deadbeef.123.tmp").write_bytes(b"partial")
    (tmp_path / "models" / "deadbeef").write_bytes(b"renamed but never committed")
    reg = Registry(tmp_path)
    assert [r.name for r in reg.all()] == ["a"] and reg.blob(reg.get("a").sha256) == PROFILE
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [reg.get("a").sha256]


def test_pages_walk_names_in_order_from_after_and_match_prefixes_exactly(tmp_path):
    """A prefix is literal and case-sensitive: % and _ are characters, not LIKE's wildcards."""
    reg = Registry(tmp_path)
    names = ["a%c", "a_b", "A_b", "abc", "axb", "b", "a\\x"]
    for name in names:
        reg.add(name, "profile", PROFILE, {}, 0, SIG)

    def page(prefix="", after="", limit=-1):
        with closing(reg.page(prefix, after, limit)) as records:
            return [r.name for r in records]

    assert page() == sorted(names) == [r.name for r in reg.all()]
    assert page("a_") == ["a_b"] and reg.count("a_") == 1
    assert page("a%") == ["a%c"] and reg.count("a%") == 1
    assert page("a\\") == ["a\\x"]
    assert page("a") == ["a%c", "a\\x", "a_b", "abc", "axb"] and reg.count("a") == 5
    assert page("A") == ["A_b"] and reg.count("") == len(names) and reg.count("zz") == 0
    assert page(after="a_b") == ["abc", "axb", "b"]
    assert page("a", after="a\\x", limit=2) == ["a_b", "abc"]
    assert page(after="b") == [] and page(limit=0) == []


def test_a_page_left_unread_releases_its_cursor(tmp_path):
    reg = Registry(tmp_path)
    for i in range(100):
        reg.add(f"m{i:03}", "profile", PROFILE, {}, 0, SIG)
    records = reg.page()
    assert [next(records).name for _ in range(3)] == ["m000", "m001", "m002"]
    records.close()  # the cursor is released; the registry stays usable
    reg.add("n", "profile", PROFILE, {}, 0, SIG)
    assert reg.count() == 101


def _upload_forever(state_dir: str) -> None:
    """A child that uploads 16 MB models until it is killed."""
    import os

    reg = Registry(state_dir)
    base = os.urandom(16 << 20)
    for i in range(10_000):
        reg.add(f"big{os.getpid()}-{i}", "profile", i.to_bytes(8, "big") + base, {}, 0, SIG)


def test_a_process_killed_while_uploading_leaves_no_partial_model_visible(tmp_path):
    """SIGKILL the moment an upload's first file appears, again and again: every file a reader
    can see under its final name holds exactly the bytes its name (their sha256) says, and
    after reopening every record's file is there and whole."""
    import hashlib
    import multiprocessing
    import os
    import signal
    import time

    ctx = multiprocessing.get_context("spawn")
    models = tmp_path / "models"
    for round_ in range(6):
        child = ctx.Process(target=_upload_forever, args=(str(tmp_path),))
        seen = set(os.listdir(models)) if models.exists() else set()
        child.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill at the first new file: mid-write
            if models.exists() and set(os.listdir(models)) - seen:
                break
            time.sleep(0.0002)
        if round_ % 2:
            time.sleep(0.2)  # every other round, later: after some uploads finished
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        for path in models.iterdir():
            if not path.name.startswith("."):  # temporary files are not models
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, "a partial model is visible"
    with closing(Registry(tmp_path)) as reg:
        records = reg.all()
        assert records  # some uploads finished
        for record in records:
            assert hashlib.sha256(reg.blob(record.sha256)).hexdigest() == record.sha256
        assert {p.name for p in models.iterdir()} == {r.sha256 for r in records}


FIXTURE = Path(__file__).parent / "fixtures" / "registry-v1"  # written by schema version 1


@pytest.mark.parametrize("recorded_version", [0, 1])  # 0: made before the version was recorded
def test_a_registry_of_schema_version_1_opens_and_serves_its_models(tmp_path, recorded_version):
    import shutil
    import sqlite3

    shutil.copytree(FIXTURE, tmp_path / "state")
    with closing(sqlite3.connect(tmp_path / "state" / "registry.sqlite3")) as db:
        db.execute(f"PRAGMA user_version = {recorded_version}")
        db.commit()
    with closing(Registry(tmp_path / "state")) as reg:
        assert [(r.name, r.format) for r in reg.all()] == [("emulated", "profile"), ("tiny", "onnx")]
        assert reg.get("tiny").signature.inputs[0].name == "x"
        assert bytes(reg.blob(reg.get("emulated").sha256)).startswith(b'{"weights_bytes"')


def test_a_registry_of_a_later_schema_version_is_refused_with_a_reason(tmp_path):
    import sqlite3

    Registry(tmp_path).close()
    with closing(sqlite3.connect(tmp_path / "registry.sqlite3")) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1}.*run a newer controller"):
        Registry(tmp_path)


def test_a_damaged_or_missing_model_file_is_refused_at_prepare_and_the_rest_serve(tmp_path):
    """The controller restarts on a registry whose files were damaged behind its back: the worker
    checks the bytes against their registered sha256, the controller a file it cannot read; both
    models are refused with their reason, and the intact one serves."""
    import signal

    import numpy as np

    from clockwork.bench.models import profile_json
    from clockwork.bench.procs import WorkerSpec, cluster, controller_argv
    from clockwork.client import Client, ClockworkError
    from clockwork.common.status import Status

    with cluster(tmp_path, [WorkerSpec("emu", "emulated")], log_level="info") as c:
        with c.client() as admin:
            for name, ms in (("intact", 1), ("damaged", 2), ("missing", 3)):
                admin.upload(profile_json({"weights_bytes": 1000, "load_ms": 1, "exec_ms": {"1": ms}}), name,
                             format="profile")
        old = c.group.get("controller")
        old.popen.send_signal(signal.SIGTERM)
        old.popen.wait(timeout=30)
        c.group.expect_exit("controller")
        with closing(Registry(c.state_dir)) as reg:
            damaged, missing = reg.path(reg.get("damaged").sha256), reg.path(reg.get("missing").sha256)
        damaged.write_bytes(damaged.read_bytes().replace(b'"exec_ms"', b'"exec_MS"'))
        missing.unlink()
        again = c.group.start("controller-again", controller_argv(c.state_dir, c.client_endpoint, c.worker_endpoint,
                                                                  "info", ()))
        with Client(c.client_endpoint, timeout_s=10) as client:
            c.group.wait_until(lambda: client.model("intact")["prepared_on"] == ["emu"], 30, "the intact model")
            assert client.infer("intact", {"data": np.zeros((1, 16), np.float32)}, slo_ms=1000).outputs
            for name in ("damaged", "missing"):
                assert client.model(name)["prepared_on"] == []
                with pytest.raises(ClockworkError) as refused:
                    client.infer(name, {"data": np.zeros((1, 16), np.float32)}, slo_ms=1000)
                # UNAVAILABLE, or DEADLINE_MISSED while the restarted controller still gives workers
                # their start-up grace to prepare it
                assert refused.value.status in (Status.UNAVAILABLE, Status.DEADLINE_MISSED)
        assert "do not match the sha256" in c.group.get("worker-emu").tail(200)
        assert "model file unreadable" in again.tail(200)
