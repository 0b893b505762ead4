"""Literal record builders for tests: bytes exactly as a producer would write them."""

from __future__ import annotations

from typing import Any

import orjson

from stream.core.eventtime import format_ms, parse_ms

T0 = parse_ms("2025-03-29T07:00:00+07:00")


def at(seconds: float) -> str:
    """RFC 3339 text for T0 + seconds."""
    return format_ms(T0 + round(seconds * 1000))


def payment(event_id: str, typ: str, ref: str, t: float, amount: int = 25_000, **extra: Any) -> bytes:
    v: dict[str, Any] = {
        "event_id": event_id,
        "type": typ,
        "reference": ref,
        "occurred_at": at(t),
        "amount": amount,
        "currency": "IDR",
    }
    if typ == "requested":
        v.update(
            account_id="7700009876",
            merchant_id="ID1020012345678",
            merchant_name="Warung Bu Sri",
            switch_id="RINTIS",
            acquirer_id="BCA",
            issuer_id="BANKDKI",
            mcc="5812",
        )
    v.update(extra)
    return orjson.dumps(v)


def ledger(event_id: str, typ: str, ref: str, t: float, amount: int = 25_000, **extra: Any) -> bytes:
    v: dict[str, Any] = {
        "event_id": event_id,
        "type": typ,
        "reference": ref,
        "occurred_at": at(t),
        "amount": amount,
        "currency": "IDR",
        "entry_id": "J-" + event_id,
        "account_id": "7700009876",
    }
    v.update(extra)
    return orjson.dumps(v)
