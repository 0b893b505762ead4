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


def saved_state_v2(d: dict[str, Any]) -> dict[str, Any]:
    """A reference's saved state (version 3 or 4, named fields) in the layout version 2 wrote
    (two-letter keys, every field present): what an older worker left in its store."""
    debits, reversals = d.get("debits", []), d.get("reversals", [])
    rq, st = d.get("request"), d.get("settlement")
    if rq is not None and d["v"] >= 4:
        # (4 saves the request without its type and reference.)
        rq = [rq[0], "requested", d["reference"], *rq[1:]]
    debited = d.get("debited_total", sum(x[2] for x in debits))
    reversed_ = d.get("reversed_total", sum(x[2] for x in reversals))
    old: dict[str, Any] = {
        "ref": d["reference"],
        "sp": d.get("seen_p", []),
        "sl": d.get("seen_l", []),
        "spd": d.get("seen_p_digests"),
        "sld": d.get("seen_l_digests"),
        "d": debits,
        "r": reversals,
        "dc": d.get("debit_count", len(debits)),
        "ds": debited,
        "rc": d.get("reversal_count", len(reversals)),
        "rs": reversed_,
        "st": st,
        "f": d.get("failure"),
        "rq": rq,
        "re": d.get("request_eff_ms", rq[4] if rq else None),
        "a": d.get("account_id"),
        "n": d.get("net", debited - reversed_),
        "s": d.get("settled", st[1] if st else 0),
        "cd": d.get("cycle_deadline_ms"),
        "co": d.get("cycle_opened_by"),
        "rf": d.get("refunds", []),
        "le": d["last_eff_ms"],
        "lk": d["last_key"],
        "rt": d.get("retention"),
        "v": 2,
    }
    if d.get("holds"):
        old["h"] = d["holds"]
    return old
