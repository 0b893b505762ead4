"""A small, slow, independent reading of CONTRACT.md, used as the oracle of the property tests.

It shares only the record parser with the core. Time: every record's effective time is
computed from its own stream; the final watermark (or +inf with drain) decides what is
processed; items are processed by repeatedly taking the minimum `(eff, kind, stream, offset)`
of everything still waiting below the watermark. Rules: plain dictionaries, no cleverness.
"""

from __future__ import annotations

from typing import Any

from stream.core.ids import refund_id
from stream.core.records import LedgerEvent
from stream.core.validation import Rejection, parse_ledger, parse_payment

INF = float("inf")


def decide(
    p_records: list[bytes], l_records: list[bytes], *, timeout_ms: int, lateness_ms: int, drain: bool
) -> list[dict[str, Any]]:
    """Refund decisions for one partition: (type, refund_id, reference, amount, reason, deadline_ms)."""
    items: list[tuple[Any, ...]] = []
    maxes: list[float | None] = [None, None]
    for s, recs in ((0, p_records), (1, l_records)):
        for offset, raw in enumerate(recs):
            ev = parse_payment(None, raw) if s == 0 else parse_ledger(None, raw)
            if isinstance(ev, Rejection):
                continue
            prev = maxes[s]
            eff = ev.occurred_at_ms if prev is None else max(ev.occurred_at_ms, prev - lateness_ms)
            maxes[s] = ev.occurred_at_ms if prev is None else max(prev, ev.occurred_at_ms)
            items.append((eff, 0, s, offset, ev))
    if drain:
        w = INF
    elif maxes[0] is None or maxes[1] is None:
        w = -INF
    else:
        w = min(maxes[0], maxes[1]) - lateness_ms

    refs: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    while True:
        ready = [it for it in items if it[0] < w]
        if not ready:
            break
        it = min(ready, key=lambda x: x[:4])
        items.remove(it)
        eff, kind, s, offset, payload = it
        if kind == 1:
            ref = payload
            st = refs[ref]
            st["open"] = None
            active = sum(r["amount"] for r in st["refunds"] if r["active"])
            owed = st["net"] - st["settled"] - active
            if owed > 0:
                reason = (
                    "EXCESS_DEBIT" if st["settled"] > 0 else "PAYMENT_FAILED" if st["failed"] else "SETTLEMENT_TIMEOUT"
                )
                r = {"id": refund_id(ref, eff), "amount": owed, "active": True, "deadline": eff}
                st["refunds"].append(r)
                out.append(
                    {
                        "type": "refund.requested",
                        "refund_id": r["id"],
                        "reference": ref,
                        "amount": owed,
                        "reason": reason,
                        "deadline_ms": eff,
                    }
                )
            continue
        ev = payload
        st = refs.setdefault(
            ev.reference, {"seen": (set(), set()), "net": 0, "settled": 0, "failed": False, "open": None, "refunds": []}
        )
        if ev.event_id in st["seen"][s]:
            continue
        st["seen"][s].add(ev.event_id)
        if isinstance(ev, LedgerEvent):
            if ev.type == "debited":
                st["net"] += ev.amount
                if st["open"] is None:
                    st["open"] = eff + timeout_ms
                    items.append((eff + timeout_ms, 1, s, offset, ev.reference))
            else:
                st["net"] -= ev.amount
        elif ev.type == "settled":
            if st["settled"] == 0:
                st["settled"] = ev.amount
        elif ev.type == "failed":
            st["failed"] = True
        active = [r for r in st["refunds"] if r["active"]]
        if active and ev.type in ("settled", "reversed"):
            excess = sum(r["amount"] for r in active) - max(0, st["net"] - st["settled"])
            while excess > 0 and active and active[-1]["amount"] <= excess:
                r = active.pop()
                r["active"] = False
                excess -= r["amount"]
                out.append(
                    {
                        "type": "refund.cancel_requested",
                        "refund_id": r["id"],
                        "reference": ev.reference,
                        "amount": r["amount"],
                        "reason": "LATE_SETTLEMENT" if ev.type == "settled" else "LATE_REVERSAL",
                        "deadline_ms": r["deadline"],
                    }
                )
    return out
