"""Peers that speak another protocol version (issue 13): real processes, one of them made to
speak version PROTO_VERSION + 1. Each side gets a clear refusal it can read, logs it once however
often the other retries, and neither crashes nor loops on it."""

from __future__ import annotations

import sys
import time

import pytest

from clockwork.bench.procs import WorkerSpec, cluster, worker_argv
from clockwork.client import Client, ClockworkError
from clockwork.common import schema
from clockwork.common.status import Status
from clockwork.worker.daemon import HELLO_RETRY_NS

pytestmark = pytest.mark.timeout(120)
OTHER = schema.PROTO_VERSION + 1


def test_a_worker_of_another_version_is_refused_once_and_both_serve_on(tmp_path):
    with cluster(tmp_path, [WorkerSpec("good", "emulated")]) as c:
        argv = worker_argv(WorkerSpec("future", "emulated"), c.worker_endpoint, "info")
        wrapper = (f"import sys, clockwork.common.schema as s; s.PROTO_VERSION = {OTHER}; "
                   "from clockwork.worker.main import main; sys.exit(main(sys.argv[1:]))")
        future = c.group.start("worker-future", [sys.executable, "-c", wrapper, *argv[3:]])
        c.group.wait_until(lambda: "speaks another protocol version" in future.tail(), 30,
                           "the worker to read the controller's refusal")
        time.sleep(4 * HELLO_RETRY_NS / 1e9)  # it keeps asking: the retries must not be logged again
        with c.client() as admin:
            assert [w["name"] for w in admin.status()["workers"]] == ["good"]
        c.group.check()  # nobody crashed
        assert future.tail(1000).count("speaks another protocol version") == 1
        controller = c.group.get("controller").tail(1000)
        assert controller.count("UNSUPPORTED_VERSION") == 1 and f"protocol version {OTHER}" in controller


def test_a_client_of_another_version_gets_a_clear_refusal(tmp_path, monkeypatch):
    with cluster(tmp_path, [WorkerSpec("good", "emulated")]) as c:
        monkeypatch.setattr(schema, "PROTO_VERSION", OTHER)
        with Client(c.client_endpoint, timeout_s=10) as client:
            with pytest.raises(ClockworkError) as refused:
                client.status()
        assert refused.value.status is Status.UNSUPPORTED_VERSION
        assert f"protocol version {OTHER}, expected {OTHER - 1}" in refused.value.detail
        monkeypatch.undo()
        with c.client() as admin:  # the controller serves on
            assert [w["name"] for w in admin.status()["workers"]] == ["good"]
