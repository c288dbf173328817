"""The host model store: identical bytes stored once, prepared and profiled once; PREPARE failures."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from clockwork.common.config import MIB, WorkerConfig
from clockwork.common.schema import Prepare
from clockwork.common.status import Status
from clockwork.worker.runtimes.onnxrt import OnnxRuntime
from clockwork.worker.store import SPOOL_PREFIX, ModelStore, remove_stale_spools
from tests.worker_helpers import Collector, CountingEmulated, make_device, make_preparer, profile_blob, small_mlp

pytestmark = pytest.mark.timeout(120)


def emulated_preparer():
    runtime = CountingEmulated(WorkerConfig(runtime="emulated", devices=1))
    store = ModelStore()
    return runtime, store, make_preparer(runtime, store, Collector())


def test_a_thousand_model_ids_with_identical_bytes_share_one_host_copy():
    runtime, store, preparer = emulated_preparer()
    blob = profile_blob(weights_bytes=100 * MIB)
    replies = [preparer.prepare(Prepare(model_id=f"copy-{i}", format="profile", blob=blob, max_batch=16))
               for i in range(1000)]
    assert all(r.status is Status.OK for r in replies)
    assert len(store) == 1000
    assert store.host_copies() == 1
    hosts = {id(store.get(f"copy-{i}").host) for i in range(1000)}
    assert len(hosts) == 1
    assert store.get("copy-999").model_id == "copy-999"
    assert (runtime.prepares, runtime.profiles) == (1, 1)  # a digest is prepared and profiled once
    assert replies[0].exec_ns == replies[999].exec_ns and replies[0].weights_bytes == 100 * MIB


def test_different_bytes_are_different_copies_and_forgetting_the_last_name_frees_the_copy():
    _runtime, store, preparer = emulated_preparer()
    for name, load_ms in (("a", 1.0), ("b", 2.0), ("a2", 1.0)):
        assert preparer.prepare(Prepare(model_id=name, format="profile", blob=profile_blob(load_ms=load_ms))).status.ok
    assert store.host_copies() == 2
    assert store.forget("a")
    assert store.host_copies() == 2 and "a" not in store and store.get("a2") is not None
    assert store.forget("a2")
    assert store.host_copies() == 1
    assert not store.forget("a2")
    assert store.model_ids() == ["b"]


def test_prepared_reply_describes_the_profile():
    _runtime, _store, preparer = emulated_preparer()
    blob = profile_blob(load_ms=3.0, exec_ms={1: 2.0, 4: 3.0, 16: 6.0}, weights_bytes=5 * MIB)
    reply = preparer.prepare(Prepare(model_id="p", format="profile", blob=blob, max_batch=8))
    assert reply.status is Status.OK
    assert reply.load_ns == 3_000_000 and reply.weights_bytes == 5 * MIB and reply.max_batch == 8
    assert reply.exec_ns == {1: 2_000_000, 2: 3_000_000, 4: 3_000_000, 8: 6_000_000}


@pytest.mark.parametrize("fmt, blob, status", [
    ("profile", b"not json", Status.BAD_MODEL),
    ("profile", b'{"weights_bytes": 1, "load_ms": 1, "exec_ms": {"2": 1}}', Status.BAD_MODEL),
    ("onnx", b"whatever", Status.BAD_MODEL),  # the emulated runtime serves profiles only
])
def test_bad_models_are_refused_with_a_reason(fmt, blob, status):
    _runtime, store, preparer = emulated_preparer()
    reply = preparer.prepare(Prepare(model_id="bad", format=fmt, blob=blob))
    assert reply.status is status and reply.detail
    assert "bad" not in store


def test_onnx_prepare_profiles_on_the_device_exec_lane_and_refuses_garbage():
    runtime = OnnxRuntime(WorkerConfig(devices=1, pin_lanes=False))
    device, _emit, store = make_device(runtime)
    device.start()
    try:
        preparer = make_preparer(runtime, store, Collector(), device)
        ok = preparer.prepare(Prepare(model_id="mlp", format="onnx", blob=small_mlp(), max_batch=4))
        assert ok.status is Status.OK, ok.detail
        assert sorted(ok.exec_ns) == [1, 2, 4] and all(v > 0 for v in ok.exec_ns.values())
        assert ok.load_ns > 0 and ok.max_batch == 4
        bad = preparer.prepare(Prepare(model_id="junk", format="onnx", blob=b"\x08\x07garbage"))
        assert bad.status is Status.BAD_MODEL and "ONNX" in bad.detail
        wrong = preparer.prepare(Prepare(model_id="shapes", format="onnx", blob=small_mlp(),
                                         input_shapes={"nope": [3]}))
        assert wrong.status is Status.BAD_INPUT
        assert store.model_ids() == ["mlp"]
    finally:
        device.stop()


def test_a_large_model_lives_in_its_spooled_file_until_its_last_name_goes(tmp_path):
    """From ISOLATED_CHECK_BYTES on, the bytes go to a file before anything parses them; a runtime
    that reads files keeps the path, not the bytes, and the file goes with the model's last name
    (or at once, when the PREPARE is refused or the digest was already held)."""
    from clockwork.bench.models import matmul_onnx
    from clockwork.common.models import ISOLATED_CHECK_BYTES

    runtime = OnnxRuntime(WorkerConfig(devices=1, pin_lanes=False))
    store = ModelStore()
    preparer = make_preparer(runtime, store, Collector(), spool_dir=tmp_path)
    blob = matmul_onnx(2900)  # 33.6 MB
    assert len(blob) >= ISOLATED_CHECK_BYTES
    assert preparer.prepare(Prepare(model_id="big", format="onnx", blob=blob, max_batch=1)).status is Status.OK
    (spooled,) = tmp_path.iterdir()
    model = store.get("big")
    assert model.host.path == spooled and model.weights_bytes == len(blob) and spooled.read_bytes() == blob
    assert preparer.prepare(Prepare(model_id="twin", format="onnx", blob=blob, max_batch=1)).status is Status.OK
    assert list(tmp_path.iterdir()) == [spooled]  # one file for identical bytes
    damaged = preparer.prepare(Prepare(model_id="bad", format="onnx", blob=blob[:-1] + b"x", max_batch=1,
                                       sha256=hashlib.sha256(blob).hexdigest()))
    assert damaged.status is Status.BAD_MODEL and "do not match" in damaged.detail
    assert list(tmp_path.iterdir()) == [spooled]  # the refused one's file is gone
    store.forget("big")
    assert spooled.exists()  # "twin" still names it
    store.forget("twin")
    assert not spooled.exists()


def test_spool_folders_of_workers_that_no_longer_run_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = tmp_path / f"{SPOOL_PREFIX}{dead.pid}", tmp_path / f"{SPOOL_PREFIX}{os.getpid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model-x.onnx").write_bytes(b"weights")
    assert remove_stale_spools(tmp_path) == [stale]
    assert not stale.exists() and (live / "model-x.onnx").exists()


def test_the_prepare_thread_answers_every_prepare_in_order():
    runtime = CountingEmulated(WorkerConfig(runtime="emulated", devices=1))
    store = ModelStore()
    replies = Collector()
    preparer = make_preparer(runtime, store, replies)
    preparer.start()
    try:
        preparer.submit(11, Prepare(model_id="one", format="profile", blob=profile_blob()))
        preparer.submit(12, Prepare(model_id="two", format="profile", blob=b"{"))
        (first, p1), (second, p2) = replies.take(2)
        assert (p1, first.status) == (11, Status.OK)
        assert (p2, second.status) == (12, Status.BAD_MODEL)
        assert preparer.alive()
    finally:
        preparer.stop()
