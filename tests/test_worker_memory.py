"""Page accounting, and a device's LOAD/UNLOAD refusals (never an eviction of its own)."""

from __future__ import annotations

import hashlib

import pytest

from clockwork.common.config import MIB, WorkerConfig
from clockwork.common.schema import Prepare
from clockwork.common.status import Status
from clockwork.worker.memory import PagePool
from clockwork.worker.runtimes.emulated import EmulatedRuntime
from clockwork.worker.store import digest_of
from tests.worker_helpers import Collector, make_device, make_preparer, profile_blob, window

pytestmark = pytest.mark.timeout(60)


def test_capacity_is_whole_pages():
    pool = PagePool.for_device(memory_bytes=100 * MIB, page_bytes=16 * MIB)
    assert (pool.total_pages, pool.free_pages) == (6, 6)
    assert pool.pages_for(1) == 1 and pool.pages_for(16 * MIB) == 1 and pool.pages_for(16 * MIB + 1) == 2


def test_a_reservation_that_does_not_fit_is_refused_and_takes_nothing():
    pool = PagePool.for_device(memory_bytes=64 * MIB, page_bytes=16 * MIB)
    assert pool.reserve(3)
    assert not pool.reserve(2)
    assert pool.used_pages == 3
    assert pool.reserve(1)
    assert pool.free_pages == 0
    pool.release(4)
    assert pool.free_pages == 4


def test_releasing_more_than_is_used_is_our_bug_and_fails_loudly():
    pool = PagePool.for_device(memory_bytes=64 * MIB, page_bytes=16 * MIB)
    pool.reserve(1)
    with pytest.raises(ValueError):
        pool.release(2)


@pytest.fixture
def emulated_device():
    config = WorkerConfig(runtime="emulated", devices=1, device_memory_bytes=64 * MIB, page_bytes=16 * MIB)
    runtime = EmulatedRuntime(config)
    device, emit, store = make_device(runtime, page_bytes=config.page_bytes)
    replies = Collector()
    preparer = make_preparer(runtime, store, replies)
    device.start()
    yield device, emit, preparer
    device.stop()


def prepare(preparer, model_id: str, weights_bytes: int) -> None:
    blob = profile_blob(load_ms=0.5, exec_ms={1: 0.5}, weights_bytes=weights_bytes)
    reply = preparer.prepare(Prepare(model_id=model_id, format="profile", blob=blob, max_batch=1))
    assert reply.status is Status.OK, reply.detail


def test_device_load_refusals_and_page_accounting(emulated_device):
    device, emit, preparer = emulated_device
    prepare(preparer, "big", 40 * MIB)  # 3 pages of 4
    prepare(preparer, "small", 10 * MIB)  # 1 page
    prepare(preparer, "medium", 20 * MIB)  # 2 pages

    device.submit_load(1, "big", *window())
    assert emit.for_parent(1).status is Status.OK
    assert device.pool.used_pages == 3
    device.submit_load(2, "big", *window())
    assert emit.for_parent(2).status is Status.ALREADY_LOADED
    device.submit_load(3, "medium", *window())
    refused = emit.for_parent(3)
    assert refused.status is Status.INSUFFICIENT_MEMORY and "2 pages" in refused.detail
    assert device.resident_ids() == ["big"]  # nothing was evicted to make room
    device.submit_load(4, "small", *window())
    assert emit.for_parent(4).status is Status.OK
    device.submit_load(5, "nobody", *window())
    assert emit.for_parent(5).status is Status.NOT_PREPARED

    device.submit_unload(6, "big", *window())
    assert emit.for_parent(6).status is Status.OK
    assert device.pool.used_pages == 1
    device.submit_unload(7, "big", *window())
    assert emit.for_parent(7).status is Status.NOT_LOADED
    device.submit_load(8, "medium", *window())
    assert emit.for_parent(8).status is Status.OK
    assert device.resident_ids() == ["medium", "small"]


def test_a_load_measures_its_begin_end_and_duration(emulated_device):
    device, emit, preparer = emulated_device
    prepare(preparer, "timed", 1 * MIB)
    device.submit_load(1, "timed", *window())
    done = emit.for_parent(1)
    assert done.status is Status.OK
    assert done.end_ns - done.begin_ns == done.duration_ns
    assert done.duration_ns >= 500_000  # the profile's load_ms


def test_digest_depends_on_bytes_shapes_and_batch():
    abc, abd = hashlib.sha256(b"abc").hexdigest(), hashlib.sha256(b"abd").hexdigest()
    base = digest_of("onnx", abc, {}, 16)
    assert base == digest_of("onnx", abc, {}, 16)
    assert base != digest_of("onnx", abd, {}, 16)
    assert base != digest_of("onnx", abc, {"x": [3]}, 16)
    assert base != digest_of("onnx", abc, {}, 8)
    assert base != digest_of("profile", abc, {}, 16)
