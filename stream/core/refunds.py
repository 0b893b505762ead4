"""Refund instructions for the refund service (`qris.refunds`), built from a reference's state.

Each record carries everything the refund service needs to act without looking anything up:
the account, the amount, the reason, the cycle deadline and the evidence (every debit, reversal,
settlement, failure and request seen, with event ids and times). The refund service must treat
`refund_id` as its idempotency key. Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .decisions import SCHEMA_VERSION, Decision
from .eventtime import format_ms
from .records import CURRENCY, LedgerEvent, PaymentEvent

if TYPE_CHECKING:
    from .holds import Hold
    from .reference import LedgerEntry, ReferenceState

# How a hold ended: the hold, why, and the event time it ended.
HoldEnd = tuple["Hold", str, int]


@dataclass(slots=True)
class Refund:
    refund_id: str
    amount: int
    deadline_ms: int
    reason: str
    active: bool
    # The event time a held refund was requested: the end of its hold (CONTRACT.md "Refund
    # holds"), which can be long after its deadline. None for a refund requested at its deadline,
    # and for one restored from state saved without it, which may have been held: a cancellation
    # then speaks of the deadline only, which is true either way. The partition's
    # `PartitionEngine.request_times_from_ms` tells the two apart.
    requested_at_ms: int | None = None


def refund_account(st: ReferenceState) -> str | None:
    """The account a refund of the reference is paid to: the first debit's, else the request's."""
    rq = st.request
    return st.account_id if st.account_id is not None or rq is None else rq.account_id


def _ledger_items(entries: list[LedgerEntry], account_id: str | None) -> list[dict[str, Any]]:
    # An entry names its account only when it is not the record's `account_id`: the refund
    # service sees that another account was debited (or reversed) and can check who is owed.
    items = []
    for x in entries:
        item = {
            "event_id": x.event_id,
            "entry_id": x.entry_id,
            "amount": x.amount,
            "occurred_at": x.occurred_at,
            "effective_at": format_ms(x.effective_at_ms),
        }
        other = x.account_id
        if other is not None and other != account_id:
            item["account_id"] = other
        items.append(item)
    return items


def evidence(
    st: ReferenceState,
    active_before: int,
    trigger: PaymentEvent | LedgerEvent | None,
    trigger_eff_ms: int | None,
    held_before: int = 0,
) -> dict[str, Any]:
    """The evidence block: what the decision was based on (`held_refunds_before`: amounts of the
    reference's other holds, counted as refunded; present only when there are any)."""
    settlement = None
    if st.settlement is not None:
        s = st.settlement
        settlement = {
            "event_id": s.event_id,
            "amount": s.amount,
            "occurred_at": s.occurred_at,
            "effective_at": format_ms(s.effective_at_ms),
        }
    failure = None
    if st.failure is not None:
        f = st.failure
        failure = {
            "event_id": f.event_id,
            "occurred_at": f.occurred_at,
            "effective_at": format_ms(f.effective_at_ms),
            "response_code": f.response_code,
        }
    request = None
    rq = st.request
    if rq is not None:
        request = {
            "event_id": rq.event_id,
            "occurred_at": rq.occurred_at,
            "amount": rq.amount,
            "merchant_id": rq.merchant_id,
            "merchant_name": rq.merchant_name,
            "mcc": rq.mcc,
            "acquirer_id": rq.acquirer_id,
            "issuer_id": rq.issuer_id,
            "switch_id": rq.switch_id,
            "terminal_id": rq.terminal_id,
            "channel": rq.channel,
        }
    trig = None
    if trigger is not None and trigger_eff_ms is not None:
        trig = {
            "event_id": trigger.event_id,
            "type": trigger.type,
            "occurred_at": trigger.occurred_at,
            "effective_at": format_ms(trigger_eff_ms),
        }
    account_id = refund_account(st)
    found = {
        "debits": _ledger_items(st.debits, account_id),
        "reversals": _ledger_items(st.reversals, account_id),
        # The lists hold the first 20 and the last 5 entries; counts and sums cover them all.
        "debit_count": st.debit_count,
        "debited_total": st.debited_total,
        "reversal_count": st.reversal_count,
        "reversed_total": st.reversed_total,
        "truncated": st.debit_count > len(st.debits) or st.reversal_count > len(st.reversals),
        "settlement": settlement,
        "failure": failure,
        "request": request,
        "net_debited": st.net,
        "settled_amount": st.settled,
        "active_refunds_before": active_before,
        "trigger": trig,
    }
    if held_before:
        found["held_refunds_before"] = held_before
    return found


def _common(kind: str, st: ReferenceState, refund: Refund, partition: int) -> dict[str, Any]:
    # The record's first fields, `type` (`kind`) first.
    rq = st.request
    return {
        "type": kind,
        "refund_id": refund.refund_id,
        "reference": st.reference,
        "account_id": refund_account(st),
        "amount": refund.amount,
        "currency": CURRENCY,
        "reason": refund.reason,
        "deadline": format_ms(refund.deadline_ms),
        "partition": partition,
        "merchant_id": rq.merchant_id if rq else None,
        "merchant_name": rq.merchant_name if rq else None,
        "switch_id": rq.switch_id if rq else None,
        "acquirer_id": rq.acquirer_id if rq else None,
        "issuer_id": rq.issuer_id if rq else None,
    }


def hold_fields(hold: Hold, because: str, ended_ms: int) -> dict[str, Any]:
    """The `hold` object of a refund requested after a hold, or of a hold released."""
    return {
        "held_from": format_ms(hold.deadline_ms),
        "held_until": format_ms(ended_ms),
        "held_ms": ended_ms - hold.deadline_ms,
        "held_amount": hold.amount,
        "incident_id": hold.incident_ids[0],
        "incident_ids": list(hold.incident_ids),
        "release_by": format_ms(hold.release_by_ms),
        "released_because": because,
    }


def refund_request_record(
    st: ReferenceState,
    refund: Refund,
    partition: int,
    active_before: int,
    hold_end: HoldEnd | None = None,
    held_before: int = 0,
) -> Decision:
    """`refund.requested`, decided at the cycle deadline, or when the hold on it ended
    (`hold_end`: then `decided_at` is the end of the hold and `hold` says how long and why)."""
    value = _common("refund.requested", st, refund, partition)
    if hold_end is None:
        at_ms = refund.deadline_ms
        value["decided_at"] = value["deadline"]  # (the same instant: formatted once)
    else:
        at_ms = hold_end[2]
        value["decided_at"] = format_ms(at_ms)
    value["evidence"] = evidence(st, active_before, None, None, held_before)
    if hold_end is not None:
        value["hold"] = hold_fields(*hold_end)
    value["schema_version"] = SCHEMA_VERSION
    return Decision("refunds", st.reference.encode("utf-8"), value, at_ms)


def refund_held_record(
    st: ReferenceState, hold: Hold, partition: int, active_before: int, held_before: int = 0
) -> Decision:
    """`refund.held`: the refund `refund_id` is known and owed, but an incident covering the
    payment is open at the deadline; it is paid or released by `release_by` at the latest."""
    refund = Refund(hold.refund_id, hold.amount, hold.deadline_ms, "SETTLEMENT_TIMEOUT", False)
    value = _common("refund.held", st, refund, partition)
    value["decided_at"] = value["deadline"]
    value["incident_id"] = hold.incident_ids[0]
    value["incident_ids"] = list(hold.incident_ids)
    value["release_by"] = format_ms(hold.release_by_ms)
    value["evidence"] = evidence(st, active_before, None, None, held_before)
    value["schema_version"] = SCHEMA_VERSION
    return Decision("refunds", st.reference.encode("utf-8"), value, hold.deadline_ms)


def hold_released_record(
    st: ReferenceState,
    hold_release_id: str,
    hold_end: HoldEnd,
    trigger: PaymentEvent | LedgerEvent | None,
    partition: int,
    active_before: int,
    held_before: int = 0,
) -> Decision:
    """`refund.hold_released`: the held refund is not owed any more (the `trigger` record settled
    or reversed it, or nothing was owed when the hold ended); nothing is paid."""
    hold, because, at_ms = hold_end
    if trigger is not None:
        reason = "LATE_SETTLEMENT" if trigger.type == "settled" else "LATE_REVERSAL"
    elif st.settlement is not None:
        reason = "LATE_SETTLEMENT"
    elif st.reversals:
        reason = "LATE_REVERSAL"
    else:
        reason = "SETTLEMENT_TIMEOUT"
    refund = Refund(hold.refund_id, hold.amount, hold.deadline_ms, reason, False)
    value = _common("refund.hold_released", st, refund, partition)
    value["hold_release_id"] = hold_release_id
    value["decided_at"] = format_ms(at_ms)
    value["hold"] = hold_fields(hold, because, at_ms)
    value["evidence"] = evidence(st, active_before, trigger, at_ms if trigger is not None else None, held_before)
    value["schema_version"] = SCHEMA_VERSION
    return Decision("refunds", st.reference.encode("utf-8"), value, at_ms)


def cancellation_record(
    st: ReferenceState,
    refund: Refund,
    cancel_id: str,
    reason: str,
    trigger: PaymentEvent | LedgerEvent,
    eff_ms: int,
    partition: int,
    active_before: int,
) -> Decision:
    """`refund.cancel_requested` for `refund`, decided when `trigger` was processed."""
    value = _common("refund.cancel_requested", st, refund, partition)
    value["reason"] = reason
    value["cancel_id"] = cancel_id
    value["cancels_refund_id"] = refund.refund_id
    value["decided_at"] = format_ms(eff_ms)
    value["evidence"] = evidence(st, active_before, trigger, eff_ms)
    value["schema_version"] = SCHEMA_VERSION
    return Decision("refunds", st.reference.encode("utf-8"), value, eff_ms)
