"""Routing fields of every alert: a `dedup_key` and flat string `labels` that Alertmanager and
PagerDuty (Events API v2) understand, derived from the alert itself (docs/alert-routing.md).

The dedup key groups the alerts of one problem: the incident id of a `FAILURE_BURST` (opened,
updated, resolved share it), the refund of a cancellation (or the incident that explains it),
the reference of an over-refund or of a debit from another account, the topic partition of
dead letters and clock skew, the topic of a silent feed or of a stalled event time.
Deterministic, like every output. Imports nothing outside the core.
"""

from __future__ import annotations

from typing import Any

from .text import escape_text

SERVICE = "qris-guard"
# The severities, the most urgent first: how lists and counts of alerts put them for a person
# (other severities after these).
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def dedup_key(value: dict[str, Any]) -> str:
    """The key that groups repeated alerts of one problem.

    >>> dedup_key({"kind": "FAILURE_BURST", "incident_id": "inc_1", "scope": {"type": "switch", "id": "X"}})
    'inc_1'
    >>> dedup_key({"kind": "DEAD_LETTER", "topic": "t", "partition": 3, "scope": {"type": "all", "id": "all"}})
    'DEAD_LETTER:t:3'
    """
    kind = value["kind"]
    if kind == "FAILURE_BURST" and value.get("incident_id"):
        return str(value["incident_id"])
    if kind in ("LATE_SETTLEMENT", "LATE_REVERSAL") and value.get("incident_id"):
        return str(value["incident_id"])  # explained by an incident: paged as part of it (holds on)
    if kind in ("LATE_SETTLEMENT", "LATE_REVERSAL") and value.get("refund_id"):
        return f"{kind}:{value['refund_id']}"
    if kind in ("OVER_REFUND", "DEBIT_ACCOUNT_MISMATCH") and value.get("reference"):
        return f"{kind}:{value['reference']}"
    if kind in ("FEED_SILENT", "EVENT_TIME_STALLED", "INPUT_REPARTITIONED") and value.get("topic"):
        return f"{kind}:{value['topic']}"
    if kind == "SCOPE_LIMIT" and value.get("scope_type"):
        return f"{kind}:{value['scope_type']}"  # one limit per scope type: each its own problem
    if value.get("topic") is not None and value.get("partition") is not None:
        return f"{kind}:{value['topic']}:{value['partition']}"
    scope = value["scope"]
    return f"{kind}:{scope['type']}:{scope['id']}"


def labels(value: dict[str, Any]) -> dict[str, str]:
    r"""Flat string labels: `alertname` (the kind), `severity`, `kind`, `scope_type`, `scope_id`
    (escaped as alert text is, `text.escape_text`, right-to-left letters kept: a label is matched,
    not read),
    `service`, and `status` / `topic` / `partition` when the alert has them. Alertmanager tells
    alerts apart by their labels, so a cancellation's carry its `refund_id` (two cancellations
    of one merchant, explained by one incident, would otherwise be one alert, the second
    overwriting the first), a scope limit's the type it limits (`limit_scope_type`), and a
    `DEBIT_ACCOUNT_MISMATCH` the entry it is about (`ledger_entry`: `debited`, or `reversed`
    when `observed` has `reversed_idr`): a payment's debit from another account and its reversal
    to another share the dedup key but ask the refund desk two different things.

    >>> labels({"kind": "LATE_SETTLEMENT", "severity": "warning", "refund_id": "rf_1",
    ...         "scope": {"type": "merchant", "id": "M\u200f1"}})["scope_id"]
    'M\\u200f1'
    """
    scope = value["scope"]
    out = {
        "alertname": str(value["kind"]),
        "severity": str(value["severity"]),
        "kind": str(value["kind"]),
        "scope_type": str(scope["type"]),
        "scope_id": escape_text(str(scope["id"]), keep_right_to_left=True),
        "service": SERVICE,
    }
    for name in ("status", "topic", "partition"):
        if value.get(name) is not None:
            out[name] = str(value[name])
    if value["kind"] in ("LATE_SETTLEMENT", "LATE_REVERSAL") and value.get("refund_id"):
        out["refund_id"] = str(value["refund_id"])
    if value["kind"] == "SCOPE_LIMIT" and value.get("scope_type"):
        out["limit_scope_type"] = str(value["scope_type"])
    if value["kind"] == "DEBIT_ACCOUNT_MISMATCH":
        out["ledger_entry"] = "reversed" if "reversed_idr" in (value.get("observed") or {}) else "debited"
    return out


def add_routing(value: dict[str, Any]) -> None:
    """Add `dedup_key` and `labels` to an alert value (in place, before it is sent)."""
    value["dedup_key"] = dedup_key(value)
    value["labels"] = labels(value)
