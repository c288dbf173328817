"""Thousands of models (issue 14): a real controller, an emulated worker and the v2 gateway on
loopback, with 1,200 registered models, more than one reply header ever held (64 KiB held ~180
ModelInfos). Every way of listing or describing models must still answer, and stay bounded."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest

from clockwork.bench.models import profile_json
from clockwork.bench.procs import WorkerSpec, cluster, free_port
from clockwork.client import Client, RequestError, cli
from clockwork.common import schema
from clockwork.common.status import Status
from tests.test_gateway import gateway_argv, live

pytestmark = pytest.mark.timeout(120)

# Prefixes that a LIKE-based filter would get wrong: "beta_" (LIKE's "_" matches the X of
# "betaX"), and "alpha" against "Alpha" (LIKE ignores ASCII case).
NAMES = sorted([f"alpha-{i:04}" for i in range(400)] + [f"Alpha-{i:04}" for i in range(100)]
               + [f"beta_{i:03}" for i in range(200)] + [f"betaX{i:03}" for i in range(200)]
               + [f"gamma.v1-{i:03}" for i in range(290)] + [f"small-{i}" for i in range(10)])
HOT = "alpha-0007"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("many")
    with cluster(run_dir, [WorkerSpec("emu", "emulated", devices=2, device_memory_mb=512)]) as c:
        started = time.monotonic()
        with c.client() as admin:
            for name in NAMES:
                admin.upload(profile_json(), name, format="profile")
        print(f"\n{len(NAMES)} uploads in {time.monotonic() - started:.1f} s")
        port = free_port()
        c.group.start("gateway", gateway_argv(port, c.client_endpoint))
        c.url = f"http://127.0.0.1:{port}"
        c.group.wait_until(lambda: live(c.url), 30, "the gateway to answer /v2/health/live")
        yield c


def test_list_returns_every_model_once_in_order_and_filters_by_prefix(system):
    with Client(system.client_endpoint, timeout_s=10) as client:
        models = client.list()
        assert [m["name"] for m in models] == NAMES  # all, sorted, no duplicates
        assert len(msgpack.packb(models)) > 4 * schema.MAX_HEADER_BYTES  # what one reply used to have to hold
        assert all(m["prepared_on"] == ["emu"] and m["inputs"] for m in models)
        assert [m["name"] for m in client.list("beta_")] == [n for n in NAMES if n.startswith("beta_")]
        assert len(client.list("alpha")) == 400 and len(client.list("Alpha")) == 100
        assert client.list("nothing-") == [] and len(client.list(limit=5)) == 5


def test_pages_cover_everything_exactly_once(system):
    with Client(system.client_endpoint, timeout_s=10) as client:
        full = client.list_page()
        assert 0 < len(full["models"]) < len(NAMES) and full["next"] == full["models"][-1]["name"]
        seen, after, pages = [], "", 0
        while True:
            page = client.list_page(after=after, limit=250)
            assert page["total"] == len(NAMES) and len(page["models"]) <= 250
            seen += [m["name"] for m in page["models"]]
            pages, after = pages + 1, page["next"]
            if not after:
                break
        assert seen == NAMES and pages >= len(NAMES) // 250
        prefixed = client.list_page("gamma.", limit=1000)
        assert prefixed["total"] == 290 and prefixed["models"][0]["name"] == "gamma.v1-000"


def test_one_model_is_looked_up_alone(system):
    with Client(system.client_endpoint, timeout_s=10) as client:
        info = client.model("beta_123")
        assert info["name"] == "beta_123" and info["inputs"][0]["name"] == "data"
        with pytest.raises(RequestError) as missing:
            client.model("beta_999")
        assert missing.value.status is Status.MODEL_NOT_FOUND
        x = np.zeros([1, *info["inputs"][0]["shape"]], np.float32)
        for _ in range(3):  # a bare array: the input name comes from one look-up, not a LIST of 1,200
            client.infer(HOT, x, slo_ms=1000)


def test_status_stays_bounded_and_ranks_the_busy_model_first(system):
    with Client(system.client_endpoint, timeout_s=10) as client:
        client.infer(HOT, {"data": np.zeros((1, 16), np.float32)}, slo_ms=1000)
        status = client.status()
        assert status["models_total"] == len(NAMES) and len(status["models"]) == schema.STATUS_MODELS
        assert status["models"][0]["name"] == HOT and status["models"][0]["answered"] >= 1
        device = status["workers"][0]["devices"][0]
        assert len(device["loaded"]) <= schema.STATUS_NAMES and isinstance(device["loaded_count"], int)
        assert len(client.status(models_limit=schema.MAX_LIST_PAGE)["models"]) > schema.STATUS_MODELS
        frame = cli.render_status(status)
        assert f"… and {len(NAMES) - schema.STATUS_MODELS} more models" in frame


def test_the_cli_lists_pages_and_prints_json(system, capsys):
    def clockwork(*argv: str) -> tuple[int, str, float]:
        started = time.monotonic()
        code = cli.main(["--endpoint", system.client_endpoint, *argv])
        return code, capsys.readouterr().out, time.monotonic() - started

    code, out, _ = clockwork("ls", "--prefix", "beta_", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == [n for n in NAMES if n.startswith("beta_")]
    code, out, all_s = clockwork("ls")
    assert code == 0 and len(out.splitlines()) == 1 + len(NAMES)
    code, out, ten_s = clockwork("ls", "--prefix", "small-")
    assert code == 0 and len(out.splitlines()) == 1 + 10
    code, out, _ = clockwork("ls", "--limit", "3", "--json")
    assert [m["name"] for m in json.loads(out)] == NAMES[:3]
    code, out, _ = clockwork("show", "small-3")
    assert code == 0 and out.startswith("name:        small-3")
    with capsys.disabled():
        print(f"\nclockwork ls: {len(NAMES)} models {all_s * 1000:.0f} ms, 10 models {ten_s * 1000:.0f} ms")


def test_the_gateway_describes_one_model_and_indexes_them_all(system):
    def get(path: str, method: str = "GET") -> tuple[int, dict | list]:
        request = urllib.request.Request(system.url + path, data=b"" if method == "POST" else None, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, meta = get("/v2/models/gamma.v1-042")
    assert status == 200 and meta["name"] == "gamma.v1-042" and meta["inputs"][0]["name"] == "data"
    assert get("/v2/models/gamma.v1-042/ready")[0] == 200 and get("/v2/models/gamma.v1-042/config")[0] == 200
    status, error = get("/v2/models/gamma.v1-999")
    assert status == 404 and error["error"].startswith("MODEL_NOT_FOUND: ")
    status, index = get("/v2/repository/index", "POST")
    assert status == 200 and [m["name"] for m in index] == NAMES
