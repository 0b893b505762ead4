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
    """Mask an account id for alerts and logs: the last four characters stay visible, and never
    more than half of them (a short id is not left nearly whole).

    >>> mask_account("0012345678")
    '******5678'
    >>> mask_account("12345"), mask_account("1234567")
    ('***45', '****567')
    >>> mask_account("123")
    '****'
    """
    if account_id is None:
        return None
    if len(account_id) <= 4:
        return "****"
    keep = min(4, len(account_id) // 2)
    return "*" * (len(account_id) - keep) + account_id[-keep:]
