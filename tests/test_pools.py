"""The routing rule of several pools (client/pools.py): who owns a model, and how answers merge."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from clockwork.client import pools

POOLS = tuple(f"tcp://10.0.0.{i}:5555" for i in range(1, 5))
NAMES = [f"model-{i}" for i in range(1000)]


def test_endpoints_are_read_from_a_comma_list_or_a_list():
    assert pools.endpoints("tcp://a:1, tcp://b:2") == ("tcp://a:1", "tcp://b:2")
    assert pools.endpoints(["tcp://a:1"]) == ("tcp://a:1",)
    for bad in ("", "tcp://a:1,,tcp://b:2", "tcp://a:1,tcp://a:1", []):
        with pytest.raises(ValueError):
            pools.endpoints(bad)


def test_the_owner_is_the_same_in_another_process_and_in_any_order():
    here = [pools.owner(name, POOLS) for name in NAMES[:50]]
    assert [pools.owner(name, POOLS[::-1]) for name in NAMES[:50]] == here
    code = ("from clockwork.client import pools; "
            f"print(','.join(pools.owner(n, {POOLS!r}) for n in {NAMES[:50]!r}))")
    # Another interpreter, so another str-hash seed: the rule must not depend on it.
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other.split(",") == here


def test_a_thousand_models_spread_over_four_pools_within_reason():
    counts = Counter(pools.owner(name, POOLS) for name in NAMES)
    assert set(counts) == set(POOLS)
    assert all(180 <= n <= 320 for n in counts.values()), counts  # 250 each, give or take


def test_adding_a_pool_moves_only_the_models_it_wins():
    before = {name: pools.owner(name, POOLS) for name in NAMES}
    added = "tcp://10.0.0.9:5555"
    after = {name: pools.owner(name, (*POOLS, added)) for name in NAMES}
    moved = [name for name in NAMES if after[name] != before[name]]
    assert all(after[name] == added for name in moved)  # none moves between the old pools
    assert 140 <= len(moved) <= 260  # about 1/5 of 1,000


def test_lists_merge_by_name_tagged_with_their_pool():
    merged = pools.merge_models({"a": [{"name": "m1"}, {"name": "m4"}], "b": [{"name": "m2"}, {"name": "m3"}]}, 3)
    assert [(m["name"], m["pool"]) for m in merged] == [("m1", "a"), ("m2", "b"), ("m3", "b")]


def test_merged_pages_skip_nothing_when_one_pool_has_more():
    # Pool a holds m1..m6 and answers pages of 2; pool b holds m3 only.
    a = {"models": [{"name": "m1"}, {"name": "m2"}], "total": 6, "next": "m2"}
    b = {"models": [{"name": "m3"}], "total": 1, "next": ""}
    page = pools.merge_pages({"a": a, "b": b}, 2)
    assert [m["name"] for m in page["models"]] == ["m1", "m2"]  # m3 waits for the next page
    assert page["total"] == 7 and page["next"] == "m2"
    last = pools.merge_pages({"a": {"models": [{"name": "m5"}], "total": 6, "next": ""},
                              "b": {"models": [], "total": 1, "next": ""}}, 2)
    assert last["next"] == "" and [m["name"] for m in last["models"]] == ["m5"]


def test_status_merges_workers_and_sums_counters():
    merged = pools.merge_status({
        "a": {"workers": [{"name": "w"}], "models": [], "models_total": 2, "counters": {"answered_ok": 3}},
        "b": {"workers": [{"name": "w"}], "models": [{"name": "m"}], "models_total": 1,
              "counters": {"answered_ok": 4, "flag": True}},
    })
    assert [(w["name"], w["pool"]) for w in merged["workers"]] == [("w", "a"), ("w", "b")]
    assert merged["models_total"] == 3 and merged["counters"] == {"answered_ok": 7}
    assert set(merged["pools"]) == {"a", "b"}
