"""What `report` adds around the summary: the selection of decisions by time and scope, the net
outstanding refunds (per refund id, its latest record in the selection: requested and not
cancelled; holds beside), a CSV view, the check that it was given decisions, not input, and the
check of each output value for the fields the summary reads. Pure functions over output values.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core.eventtime import BadTimestamp, parse_ms

SCOPES = ("merchant", "switch", "acquirer", "issuer")


@dataclass(frozen=True)
class Selection:
    """Decisions decided in [since_ms, until_ms) about one scope (all when None)."""

    since_ms: int | None = None
    until_ms: int | None = None
    scope_type: str | None = None
    scope_id: str | None = None

    def keep(self, role: str, v: dict[str, Any]) -> bool:
        at = _decided_ms(role, v)
        if self.since_ms is not None and (at is None or at < self.since_ms):
            return False
        if self.until_ms is not None and (at is None or at >= self.until_ms):
            return False
        if self.scope_type is None:
            return True
        if role == "refunds":
            return bool(v.get(f"{self.scope_type}_id") == self.scope_id)
        if role == "alerts":
            scope = v.get("scope") or {}
            return bool(scope.get("type") == self.scope_type and scope.get("id") == self.scope_id)
        return False  # dead letters have no scope

    def select(self, outputs: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The decisions kept; with a scope, also the incident alerts of another scope that held
        refunds kept (a merchant's refunds held by its switch's incident: the report of the
        merchant names that incident, not none).

        >>> held = {"type": "refund.held", "merchant_id": "M", "incident_ids": ["in_1"]}
        >>> held["decided_at"] = "2025-03-29T00:05:00Z"
        >>> alert = {"kind": "FAILURE_BURST", "incident_id": "in_1", "scope": {"type": "switch", "id": "S"},
        ...          "occurred_at": "2025-03-29T00:01:00Z"}
        >>> other = {**alert, "incident_id": "in_2"}
        >>> [v.get("incident_id") for _r, v in Selection(scope_type="merchant", scope_id="M").select(
        ...     [("alerts", alert), ("alerts", other), ("refunds", held)])]
        ['in_1', None]
        """
        if self.scope_type is None:
            return (o for o in outputs if self.keep(*o))
        every = list(outputs)
        kept = [v for role, v in every if role == "refunds" and self.keep(role, v)]
        held_by = {
            i
            for v in kept
            # (a refund requested after its hold names every incident that kept it on in `hold`)
            for i in [*(v.get("incident_ids") or ()), *((v.get("hold") or {}).get("incident_ids") or ())]
        }
        # The alerts about one payment (a cancellation's LATE_*, OVER_REFUND) are scoped to its
        # merchant: a switch's report keeps those of the payments whose refunds it keeps, or it
        # counts their cancellations with none of their alerts.
        references = {v["reference"] for v in kept if isinstance(v.get("reference"), str)}
        by_time = Selection(self.since_ms, self.until_ms)
        return (
            (role, v)
            for role, v in every
            if self.keep(role, v)
            or (
                role == "alerts"
                and by_time.keep(role, v)
                and (
                    (v.get("kind") == "FAILURE_BURST" and v.get("incident_id") in held_by)
                    or (
                        v.get("kind") != "FAILURE_BURST"
                        and isinstance(v.get("reference"), str)
                        and v["reference"] in references
                    )
                )
            )
        )


def _decided_ms(role: str, v: dict[str, Any]) -> int | None:
    text = v.get("decided_at") if role == "refunds" else v.get("occurred_at")
    if role == "dead_letter":
        ts = v.get("source_timestamp_ms")
        return int(ts) if isinstance(ts, int) else None
    try:
        return parse_ms(text) if isinstance(text, str) else None
    except BadTimestamp:
        return None


def outstanding(outputs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The refund service's money from the refund records in `outputs` (a selection): per
    refund id, its latest record there; requested (and not cancelled) counts as outstanding,
    held as held now (not paid yet); cancelled and released count as neither.

    A selection is judged on its own records, as if they were all the refund service had seen:
    what is outstanding as a result of them, at the selection's end. A refund requested in it and
    cancelled after it (past `--until`) is outstanding; one requested before it (before
    `--since`) and cancelled in it is not, and its cancellation takes nothing off: nothing of it
    was outstanding here. Such cancellations are in `cancelled` and counted apart in
    `cancelled_earlier`, so net outstanding = requested - (cancelled - cancelled_earlier), never
    negative.

    >>> out = outstanding([("refunds", {"type": "refund.requested", "refund_id": "a", "amount": 5}),
    ...                    ("refunds", {"type": "refund.requested", "refund_id": "b", "amount": 7}),
    ...                    ("refunds", {"type": "refund.cancel_requested", "refund_id": "b", "amount": 7}),
    ...                    ("refunds", {"type": "refund.cancel_requested", "refund_id": "z", "amount": 40})])
    >>> out["net_outstanding"], out["requested"], out["cancelled"], out["cancelled_earlier"]
    ({'count': 1, 'idr': 5}, {'count': 2, 'idr': 12}, {'count': 2, 'idr': 47}, {'count': 1, 'idr': 40})
    """
    state: dict[str, tuple[str, int]] = {}
    totals = {k: {"count": 0, "idr": 0} for k in ("requested", "held", "cancelled", "released")}
    word = {
        "refund.requested": "requested",
        "refund.held": "held",
        "refund.cancel_requested": "cancelled",
        "refund.hold_released": "released",
    }
    seen: set[str] = set()
    requested: set[str] = set()
    cancellations: list[tuple[str, int]] = []
    for role, v in outputs:
        if role != "refunds" or v.get("type") not in word:
            continue
        ident = v["type"] + str(v.get("cancel_id", v["refund_id"]))
        if ident in seen:
            continue
        seen.add(ident)
        kind = word[v["type"]]
        refund_id, amount = str(v["refund_id"]), int(v["amount"])
        totals[kind]["count"] += 1
        totals[kind]["idr"] += amount
        if kind == "requested":
            requested.add(refund_id)
        elif kind == "cancelled":
            cancellations.append((refund_id, amount))
        state[refund_id] = (kind, amount)
    net = [a for k, a in state.values() if k == "requested"]
    held = [a for k, a in state.values() if k == "held"]
    earlier = [a for rid, a in cancellations if rid not in requested]
    return {
        **totals,
        "cancelled_earlier": {"count": len(earlier), "idr": sum(earlier)},
        "net_outstanding": {"count": len(net), "idr": sum(net)},
        "held_now": {"count": len(held), "idr": sum(held)},
    }


REFUND_TYPES = ("refund.requested", "refund.held", "refund.cancel_requested", "refund.hold_released")
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def output_problem(role: str, v: dict[str, Any]) -> str | None:
    """What in output value `v` `summarise`, `render` and `Selection` could not read (the first
    field they need that is missing or of the wrong type), or None. Checked line by line, so a
    hostile or truncated line is named by its line number instead of failing the whole summary.

    >>> output_problem("refunds", {"type": "refund.requested", "amount": 5, "reason": "LATE"})
    'a refunds value needs "refund_id" (a string)'
    >>> output_problem("alerts", {"alert_id": "a", "kind": "FEED_SILENT", "severity": "info", "summary": "s"})
    """
    if role == "refunds":
        if v.get("type") not in REFUND_TYPES:
            return f'a refunds value needs "type" (one of {", ".join(REFUND_TYPES)})'
        hold = v.get("hold")
        if hold is not None and (not isinstance(hold, dict) or not _number(hold.get("held_ms"))):
            return 'a refunds value\'s "hold" must be an object with a number "held_ms"'
        if "cancel_id" in v and not isinstance(v["cancel_id"], str):  # (read in place of refund_id)
            return 'a refunds value\'s "cancel_id" must be a string or absent'
        # (A scope's selection collects the incident ids of the refunds it keeps, into a set.)
        if not all(_strings(x.get("incident_ids")) for x in (v, hold or {})):
            return 'a refunds value\'s "incident_ids" (and its "hold"\'s) must be a list of strings, null or absent'
        return _fields(role, v, {"refund_id": str, "amount": int, "reason": str}, {})
    if role == "dead_letter":
        return _fields(role, v, {"dead_letter_id": str, "error": str}, {})
    problem = _fields(
        role,
        v,
        {"alert_id": str, "kind": str, "severity": str, "summary": str},
        # (`incident_id`: looked up in a set of ids by a scope's selection.)
        {"status": str, "scope": dict, "window": dict, "holds": dict, "incident_id": str},
    )
    if problem:
        return problem
    if v["kind"] == "FAILURE_BURST" and not isinstance(v.get("status"), str):
        return 'a FAILURE_BURST alert needs "status" (a string)'
    window, holds = v.get("window") or {}, v.get("holds") or {}
    if any(window.get(k) is not None and not isinstance(window[k], str) for k in ("start", "end")):
        return 'an alert\'s "window" "start" and "end" must be strings'
    if holds.get("as_of") is not None and not isinstance(holds["as_of"], str):
        return 'an alert\'s "holds" "as_of" must be a string'
    for tally in (c for k, c in holds.items() if k != "as_of"):
        if tally is not None and (
            not isinstance(tally, dict) or not all(_number(tally.get(k, 0)) for k in ("count", "amount_idr"))
        ):
            return 'an alert\'s "holds" counts must be objects of numbers "count" and "amount_idr"'
    return None


def _fields(role: str, v: dict[str, Any], needed: dict[str, type], optional: dict[str, type]) -> str | None:
    for name, kind in needed.items():
        if not isinstance(v.get(name), kind) or isinstance(v[name], bool):
            return f'a {role} value needs "{name}" ({_TYPE_NAMES[kind]})'
    for name, kind in optional.items():
        if v.get(name) is not None and not isinstance(v[name], kind):
            return f'a {role} value\'s "{name}" must be {_TYPE_NAMES[kind]}, null or absent'
    return None


def _strings(x: object) -> bool:
    """`x` is a list of strings, or None."""
    return x is None or (isinstance(x, list) and all(isinstance(i, str) for i in x))


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def input_topics_seen(lines: Iterable[str], input_topics: Iterable[str]) -> dict[str, int]:
    """How many lines of a replay file are input records (`report` summarises decisions)."""
    inputs = set(input_topics)
    seen: dict[str, int] = {}
    for topic in lines:
        if topic in inputs:
            seen[topic] = seen.get(topic, 0) + 1
    return seen


def to_csv(summary: dict[str, Any], money: dict[str, Any]) -> str:
    """The summary as CSV rows: section, item, count, rupiah."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "item", "count", "idr"])
    for kind in ("requested", "held", "cancelled", "cancelled_earlier", "released", "net_outstanding", "held_now"):
        w.writerow(["refunds", kind, money[kind]["count"], money[kind]["idr"]])
    for reason, x in summary["refunds_requested"]["by_reason"].items():
        w.writerow(["refunds_requested_by_reason", reason, x["count"], x["idr"]])
    for reason, x in summary["cancellations"]["by_reason"].items():
        w.writerow(["cancellations_by_reason", reason, x["count"], x["idr"]])
    for error, n in summary["dead_letters"]["by_error"].items():
        w.writerow(["dead_letters_by_error", error, n, ""])
    for kind, n in summary["alerts"]["by_kind"].items():
        w.writerow(["alerts_by_kind", kind, n, ""])
    return buf.getvalue()
