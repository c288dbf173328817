"""Replies that describe many models, kept within one header (schema.MAX_HEADER_BYTES).

A reply is a single msgpack header, and a receiver refuses one over 64 KiB. ModelInfos run to
~0.5 KiB each (more with many inputs or workers), so a few hundred models used to make LIST and
STATUS unreadable. Here a reply is filled greedily, measuring each entry's encoded size, until
the next one would pass the budget: a LIST page then says where the next page starts, and a
STATUS keeps the busiest models that fit. Pure: no sockets, no clock, no registry.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from clockwork.common import schema

# What one reply's entries may take: the header limit less room for the rest of the reply (its
# envelope, detail, "total" and a "next" name of up to 128 characters take well under 1 KiB).
REPLY_BUDGET_BYTES = schema.MAX_HEADER_BYTES - 1024


def packed_size(value: object) -> int:
    return len(msgspec.msgpack.encode(value))  # as common/codec.py encodes it


def fit(entries: Iterable[dict], limit: int, budget_bytes: int) -> tuple[list[dict], bool]:
    """The leading `entries` that fit: at most `limit` of them, and no more encoded bytes than
    `budget_bytes` (a msgpack array costs its items plus a header of at most 5 bytes, counted
    here). The first entry is always taken, so a caller paging through always advances (one
    entry over the budget alone is then refused by the codec, and the client hears TOO_LARGE).
    Also returns whether any entry was left out."""
    taken: list[dict] = []
    used = 5
    for entry in entries:
        cost = packed_size(entry)
        if taken and (len(taken) >= limit or used + cost > budget_bytes):
            return taken, True
        taken.append(entry)
        used += cost
    return taken, False


def page(infos: Iterable[dict], limit: int, total: int, budget_bytes: int = REPLY_BUDGET_BYTES) -> dict:
    """A LIST reply's body from ModelInfos in name order (ask for one more than `limit`, so
    that a full page knows whether another follows): {"models", "total", "next"}, where "next"
    is the last name sent when more remain, else ""."""
    models, more = fit(infos, limit, budget_bytes)
    return {"models": models, "total": total, "next": models[-1]["name"] if more and models else ""}


def fit_status(status: dict, budget_bytes: int = REPLY_BUDGET_BYTES) -> dict:
    """A STATUS body with as many of its (busiest-first) models as fit beside the rest."""
    models = status.get("models", [])
    rest = packed_size({k: v for k, v in status.items() if k != "models"})
    kept, more = fit(models, len(models), budget_bytes - rest)
    return {**status, "models": kept} if more else status
