"""Replies about many models stay within one header: the LIST page builder, the STATUS bound, and
the core's bounded status at 100 devices x 4,000 models."""

from __future__ import annotations

import pytest

from clockwork.common import schema
from clockwork.common.codec import encode
from clockwork.common.status import Status
from clockwork.controller import listing
from clockwork.controller.lifecycle import Residency
from clockwork.controller.state import Resident
from tests.factories import add_model, hello, infer, make_core

GIB = 1 << 30


def info(name: str, inputs: int = 1) -> dict:
    """A ModelInfo like the controller's (~0.4 KiB with one input)."""
    specs = [{"name": f"input_{i}", "dtype": "float32", "shape": [3, 224, 224]} for i in range(inputs)]
    return {"name": name, "format": "profile", "sha256": "ab" * 32, "size_bytes": 1234, "created_unix_s": 1.7e9,
            "inputs": specs, "outputs": [{"name": "prob", "dtype": "float32", "shape": [1000]}], "max_batch": 16,
            "prepared_on": ["gpu-host-01"], "load_ms": 8.3, "exec_ms": {str(b): 2.5 * b for b in (1, 2, 4, 8, 16)},
            "weights_bytes": 102_000_000}


def reply_bytes(body: dict) -> int:
    return len(encode(schema.Reply(status=Status.OK, body=body), 2**64 - 1, 2**64 - 1, 2**63 - 1)[0])


def test_a_page_stops_at_its_limit_and_names_the_next():
    infos = [info(f"m{i}") for i in range(4)]
    assert listing.page(iter(infos[:3]), 2, 4) == {"models": infos[:2], "total": 4, "next": "m1"}
    assert listing.page(iter(infos[2:]), 2, 4) == {"models": infos[2:], "total": 4, "next": ""}
    assert listing.page(iter([]), 5, 0) == {"models": [], "total": 0, "next": ""}


@pytest.mark.parametrize("inputs", [1, 20, 64])
def test_a_page_stops_before_the_header_limit_whatever_the_signatures(inputs):
    infos = [info(f"model-{i:05}-{'x' * 100}", inputs) for i in range(schema.MAX_LIST_PAGE + 1)]
    body = listing.page(iter(infos), schema.MAX_LIST_PAGE, len(infos))
    assert 0 < len(body["models"]) < schema.MAX_LIST_PAGE and body["next"] == body["models"][-1]["name"]
    assert reply_bytes(body) <= schema.MAX_HEADER_BYTES
    one_more = listing.page(iter(infos), len(body["models"]) + 1, len(infos), budget_bytes=10**9)
    assert listing.packed_size(one_more) > listing.REPLY_BUDGET_BYTES  # the page was as full as it could be


def test_the_builder_takes_no_more_entries_than_it_sends_plus_one():
    taken = []

    def infos():
        for i in range(1000):
            taken.append(i)
            yield info(f"m{i:04}")

    body = listing.page(infos(), 10, 1000)
    assert len(body["models"]) == 10 and len(taken) == 11  # the ModelInfos made are those sent, and one


def test_an_entry_too_large_alone_is_still_sent_so_paging_advances():
    body = listing.page(iter([info("huge"), info("next")]), 5, 2, budget_bytes=10)
    assert [m["name"] for m in body["models"]] == ["huge"] and body["next"] == "huge"


def test_fit_status_keeps_the_leading_models_that_fit():
    status = {"workers": [], "counters": {"x": 1}, "models_total": 3000,
              "models": [{"name": f"m{i:04}-{'y' * 100}", "queued": i} for i in range(3000)]}
    fitted = listing.fit_status(status)
    assert 0 < len(fitted["models"]) < 3000 and fitted["models"] == status["models"][:len(fitted["models"])]
    assert reply_bytes(fitted) <= schema.MAX_HEADER_BYTES
    small = {**status, "models": status["models"][:3]}
    assert listing.fit_status(small) is small


def test_status_lists_the_busiest_models_by_queue_then_answers_then_name():
    core = make_core()
    hello(core, devices=1)
    for name in ("e", "d", "c", "b", "a"):
        add_model(core, name)
    for request_id, model in enumerate(["b", "a", "a"], 1):
        infer(core, request_id, model)
    core.models["c"].answered = core.models["d"].answered = 5
    status = core.status(0, models_limit=4)
    assert [(m["name"], m["queued"]) for m in status["models"]] == [("a", 2), ("b", 1), ("c", 0), ("d", 0)]
    assert status["models_total"] == 5 and len(core.status(0)["models"]) == 5  # None: all, for the metrics
    assert core.status(0, models_limit=0)["models"] == []


def test_a_status_of_100_devices_and_4000_models_fits_one_reply():
    core = make_core()
    hello(core, "gpu-host-01", devices=100, memory_bytes=64 * GIB)
    for i in range(4000):
        add_model(core, f"tenant-{i % 40:02}-model-{i:04}", workers=("gpu-host-01",))
    # Residency as 8,000 LOAD results would leave it (two replicas each), set directly: what is
    # tested is the report, not the planner.
    devices = list(core.workers["gpu-host-01"].devices.values())
    for i, (name, model) in enumerate(core.models.items()):
        for dev in (devices[i % 100], devices[(i + 1) % 100]):
            dev.resident[name] = Resident(Residency.LOADED if i % 10 else Residency.LOADING, 1, i)
            model.replicas[dev.key] = dev
    status = listing.fit_status(core.status(0, schema.STATUS_MODELS))
    assert reply_bytes(status) <= schema.MAX_HEADER_BYTES // 2
    assert len(status["models"]) == schema.STATUS_MODELS and status["models_total"] == 4000
    dev = status["workers"][0]["devices"][0]
    assert (dev["loaded_count"], dev["loading_count"]) == (40, 40)
    assert len(dev["loaded"]) == len(dev["loading"]) == schema.STATUS_NAMES
    assert dev["loaded"][0] == "tenant-39-model-3999"  # the most recently used first
    assert all(m["replicas"] == 2 and len(m["resident_on"]) == 2 for m in status["models"])
    everything = listing.fit_status(core.status(0, schema.MAX_LIST_PAGE))
    assert reply_bytes(everything) <= schema.MAX_HEADER_BYTES and len(everything["models"]) < schema.MAX_LIST_PAGE
