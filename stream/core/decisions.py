"""Decisions are values: what the core wants sent, never a side effect.

A `Decision` names an output topic (by role, not by name: drivers map roles to configured
topic names), the record key as bytes, the JSON-ready value, and its event time. Builders for
each output record live in `refunds`, `alerts` and `deadletter`. Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .routing import add_routing

# `signals` are internal: a partition's closed minutes for the burst detector (`signals`, `burst`).
OutputRole = Literal["refunds", "alerts", "dead_letter", "signals"]

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Decision:
    role: OutputRole
    key: bytes | None
    value: dict[str, Any]
    # Event time of the decision (ms), for the output record's timestamp; None if not known.
    at_ms: int | None

    def __post_init__(self) -> None:
        # Every alert, whichever module built it, carries its routing fields (dedup key, labels).
        if self.role == "alerts" and "dedup_key" not in self.value:
            add_routing(self.value)


def mask_account(account_id: str | None) -> str | None:
    """Mask an account id for alerts and logs: only the last four characters stay visible.

    >>> mask_account("0012345678")
    '******5678'
    >>> mask_account("123")
    '****'
    """
    if account_id is None:
        return None
    if len(account_id) <= 4:
        return "****"
    return "*" * (len(account_id) - 4) + account_id[-4:]
