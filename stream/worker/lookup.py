"""The customer-service lookup: a payment's status from the live state of the partition that
owns it, by reference or by account (`/qris/payments/{reference}`,
`/qris/accounts/{account_id}/payments?since=...`).

Pure answers from a `ReferenceState` and the worker's watch (holds and open incidents); the
web pages, the bearer token and the fan-out to other workers live in `pages`. Account ids are
answered masked: customer service already knows the account it asked about.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote, urlencode

from ..core.decisions import mask_account
from ..core.eventtime import format_ms
from ..core.partition import PartitionEngine, waiting_list
from ..core.reference import ReferenceState
from .watch import WorkerWatch


def payment_path(reference: str) -> str:
    """The lookup's path for a reference, as a worker forwards it to its peers: quoted, since a
    reference may hold `?`, `#`, `/`, `%` or `+` (a helper's hunt: `QR2025?x` was asked as
    `QR2025`, another payment)."""
    return "/qris/payments/" + quote(reference, safe="")


def account_path(account_id: str, since: str | None) -> str:
    """The account query's path and query as forwarded: quoted (a `since` with a `+07:00` offset
    went unquoted, the peer read a space, refused it, and the merged answer silently left out
    every payment held by the other workers)."""
    query = "?" + urlencode({"since": since}) if since else ""
    return "/qris/accounts/" + quote(account_id, safe="") + "/payments" + query


def token_ok(configured: str, authorization: str | None) -> bool:
    """A bearer token matches, compared in constant time. No configured token: never.

    >>> token_ok("s3cret", "Bearer s3cret"), token_ok("s3cret", "Bearer nope"), token_ok("", "Bearer ")
    (True, False, False)
    """
    if not configured or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer ") :].encode(), configured.encode())


def _at(ms: int | None) -> str | None:
    return format_ms(ms) if ms is not None else None


def _state_hold(st: ReferenceState) -> dict[str, Any] | None:
    # Holds kept in the reference's state (refund holds in the core): the newest open one.
    if not st.holds:
        return None
    h = st.holds[-1]
    return {
        "refund_id": h.refund_id,
        "amount": h.amount,
        "incident_id": h.incident_ids[0] if h.incident_ids else None,
        "incident_ids": list(h.incident_ids),
        "release_by": format_ms(h.release_by_ms),
        "deadline": format_ms(h.deadline_ms),
    }


def payment_status(st: ReferenceState, partition: int, watch: WorkerWatch | None = None) -> dict[str, Any]:
    """What customer service tells the customer about one payment."""
    rq = st.request
    hold = _state_hold(st) or (watch.holds.get(st.reference) if watch is not None else None)
    active = [r for r in st.refunds if r.active]
    cancelled = [r for r in st.refunds if not r.active]
    if hold is not None:
        status = "refund_held"
        say = (
            f"refund of {hold['amount']} held while incident {hold.get('incident_id')} is open; "
            f"it comes by {hold.get('release_by')} at the latest"
        )
    elif active:
        status = "refund_requested"
        say = f"refund {active[-1].refund_id} of {active[-1].amount} requested"
    elif cancelled:
        status = "refund_cancelled"
        say = "a refund was requested, then cancelled: the payment settled or was reversed late"
    elif st.settled > 0:
        status = "settled"
        say = "the merchant was paid"
    elif st.failure is not None:
        status = "failed" if st.net <= 0 else "failed_debited"
        say = "the payment failed" + (", the money was taken; a refund follows at the deadline" if st.net > 0 else "")
    elif st.net > 0:
        status = "debited"
        say = "the money was taken and the payment is not settled yet"
        if st.cycle_deadline_ms is not None:
            say += f"; a refund is due at {format_ms(st.cycle_deadline_ms)} if it does not settle"
    else:
        status = "requested"
        say = "the payment was requested; no money was taken"
    incidents = watch.incidents_covering(rq) if watch is not None else []
    return {
        "reference": st.reference,
        "status": status,
        "summary": say,
        "partition": partition,
        "account_id_masked": mask_account(st.account_id or (rq.account_id if rq else None)),
        "merchant_id": rq.merchant_id if rq else None,
        "merchant_name": rq.merchant_name if rq else None,
        "amount": rq.amount if rq else None,
        "requested_at": rq.occurred_at if rq else None,
        "debits": [{"event_id": d.event_id, "amount": d.amount, "occurred_at": d.occurred_at} for d in st.debits],
        "reversals": [{"event_id": r.event_id, "amount": r.amount, "occurred_at": r.occurred_at} for r in st.reversals],
        "net_debited": st.net,
        "settled_amount": st.settled,
        "settled_at": st.settlement.occurred_at if st.settlement else None,
        "failed_at": st.failure.occurred_at if st.failure else None,
        "response_code": st.failure.response_code if st.failure else None,
        "refund_due_at": _at(st.cycle_deadline_ms),
        "refunds": [
            {
                "refund_id": r.refund_id,
                "amount": r.amount,
                "reason": r.reason,
                "deadline": format_ms(r.deadline_ms),
                "status": "requested" if r.active else "cancelled",
            }
            for r in st.refunds
        ],
        "hold": (
            {k: hold.get(k) for k in ("refund_id", "amount", "incident_id", "incident_ids", "release_by", "deadline")}
            if hold is not None
            else None
        ),
        "incidents": [
            {"incident_id": i["incident_id"], "status": i.get("status"), "summary": i.get("summary")} for i in incidents
        ],
    }


def waiting_status(reference: str, partition: int, engine: PartitionEngine) -> dict[str, Any] | None:
    """A reference whose records arrived but wait for the watermark (not decided on yet)."""
    items = engine.pending.get(reference)
    if not items:
        return None
    events = [ev for *_x, ev in waiting_list(items) if ev is not None]
    return {
        "reference": reference,
        "status": "received",
        "summary": f"{len(events)} record(s) received, waiting for the watermark; nothing decided yet",
        "partition": partition,
        "records": [
            {"event_id": ev.event_id, "type": ev.type, "amount": ev.amount, "occurred_at": ev.occurred_at}
            for ev in events
        ],
    }


def lookup_reference(
    engines: dict[int, PartitionEngine], reference: str, watch: WorkerWatch | None = None
) -> dict[str, Any] | None:
    """The status of `reference` if one of `engines` holds it (processed or waiting)."""
    for p, eng in engines.items():
        st = eng.refs.get(reference)
        if st is not None:
            got = payment_status(st, p, watch)
            waiting = waiting_status(reference, p, eng)
            if waiting is not None:
                got["waiting_records"] = waiting["records"]
            return got
    for p, eng in engines.items():
        waiting = waiting_status(reference, p, eng)
        if waiting is not None:
            return waiting
    return None


def account_payments(
    engines: dict[int, PartitionEngine], watch: WorkerWatch, account_id: str, since_ms: int | None
) -> list[dict[str, Any]]:
    """This worker's payments of an account (from the index, checked against live state),
    requested (or first debited) at or after `since_ms`, newest first."""
    out = []
    for ref, p in list(watch.accounts.get(account_id, {}).items()):
        eng = engines.get(p)
        st = eng.refs.get(ref) if eng is not None else None
        if st is None:
            continue  # the partition moved to another worker, or the state expired
        first_ms = st.request.occurred_at_ms if st.request is not None else None
        if first_ms is None and st.debits:
            first_ms = st.debits[0].effective_at_ms
        if since_ms is not None and (first_ms is None or first_ms < since_ms):
            continue
        item = payment_status(st, p, watch)
        item["first_seen_ms"] = first_ms
        out.append(item)
    out.sort(key=lambda x: x["first_seen_ms"] or 0, reverse=True)
    return out
