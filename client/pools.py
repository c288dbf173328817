"""Which pool owns a model, and how answers from several pools merge: the one routing rule that
clients, the CLI and gateways share (docs/architecture.md, "Several pools").

A deployment that outgrows one controller runs independent pools, each a controller with its own
workers. Nothing is shared between them but this rule: a model belongs to the pool whose endpoint
scores highest for it (rendezvous hashing), so every client that lists the same endpoints agrees
on the owner without asking anyone, and adding a pool moves only the models it now wins (about
1/N of them). A pool's identity is its endpoint string exactly as written: every client and
gateway must spell the list alike (the order does not matter).

Pure: no sockets, no clock.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Mapping, Sequence

__all__ = ["endpoints", "owner", "merge_models", "merge_pages", "merge_status"]


def endpoints(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The pools' endpoints from a comma-separated string or a list; ValueError for an empty
    one or the same endpoint twice (it would be two pools that are one)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    found = tuple(item.strip() for item in items if isinstance(item, str))
    if len(found) != len(items) or not found or not all(found):
        raise ValueError(f"expected controller endpoints separated by commas, e.g. "
                         f"tcp://10.0.0.1:5555,tcp://10.0.0.2:5555; got {spec!r}")
    if len(set(found)) != len(found):
        raise ValueError(f"an endpoint is listed twice in {spec!r}")
    return found


def _score(endpoint: str, model: str) -> int:
    # blake2b, not hash(): Python's str hash differs between processes.
    digest = hashlib.blake2b(f"{endpoint}\n{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(model: str, pools: Sequence[str]) -> str:
    """The endpoint of the pool that owns `model`: the highest score, ties broken by endpoint."""
    return max(pools, key=lambda endpoint: (_score(endpoint, model), endpoint))


def _tagged(models: list[dict], endpoint: str) -> list[dict]:
    return [{**m, "pool": endpoint} for m in models]


def merge_models(lists: Mapping[str, list[dict]], limit: int = 0) -> list[dict]:
    """Every pool's name-ordered ModelInfo list as one, in name order, each tagged with its
    "pool"; at most `limit` (0: all)."""
    merged = list(heapq.merge(*(_tagged(models, ep) for ep, models in lists.items()), key=lambda m: m["name"]))
    return merged[:limit] if limit else merged


def merge_pages(pages: Mapping[str, dict], limit: int = 0) -> dict:
    """One LIST page from each pool's page for the same (prefix, after, limit), as one page.

    Models are merged by name. A pool with more to come stops the merged page at its last name,
    so that the next page, which starts after the merged page's last name, skips nothing."""
    more = [page["models"][-1]["name"] for page in pages.values() if page.get("next") and page.get("models")]
    models = [m for m in merge_models({ep: page.get("models", []) for ep, page in pages.items()})
              if not more or m["name"] <= min(more)]
    cut = bool(limit) and len(models) > limit
    models = models[:limit] if limit else models
    last = models[-1]["name"] if models else ""
    return {"models": models, "total": sum(page.get("total", 0) for page in pages.values()),
            "next": last if cut or more else ""}


def merge_status(bodies: Mapping[str, dict]) -> dict:
    """Every pool's STATUS as one: its workers and models tagged with their "pool", counters
    and models_total summed, and each pool's own reply under "pools" (by endpoint)."""
    counters: dict[str, float] = {}
    for body in bodies.values():
        for name, value in (body.get("counters") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counters[name] = counters.get(name, 0) + value
    return {"workers": [w for ep, body in bodies.items() for w in _tagged(body.get("workers") or [], ep)],
            "models": [m for ep, body in bodies.items() for m in _tagged(body.get("models") or [], ep)],
            "models_total": sum(body.get("models_total") or 0 for body in bodies.values()),
            "counters": counters, "pools": dict(bodies)}
