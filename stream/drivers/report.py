"""What payment operations need to see from the output topics: failure-burst incidents first,
then refunds requested (count, rupiah, by reason), cancellations, dead letters, other alerts.
Pure summarising plus a text view. Every string taken from the outputs is escaped
(`escape_text`): a file or topic may hold anything, and this text goes to a terminal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..core.alerts import rupiah
from ..core.routing import SEVERITY_RANK
from ..core.text import escape_text
from .reportselect import outstanding


def summarise(outputs: Iterable[tuple[str, dict[str, Any]]], scope: tuple[str, str] | None = None) -> dict[str, Any]:
    """`outputs` are (role, value) with role refunds | alerts | dead_letter. The money
    (`refund_totals`, and `net_outstanding_idr` from it) is `outstanding`'s, the one rule for
    every net figure: per refund id, its latest record in `outputs`. `scope` (type, id): the
    scope `outputs` were selected for (`Selection`), which each incident's lines then name:
    its resolved alert counts the holds of the whole incident, the refunds read only the
    scope's."""
    outputs = list(outputs)
    money = outstanding(outputs)
    req_n: Counter[str] = Counter()
    req_idr: Counter[str] = Counter()
    can_n: Counter[str] = Counter()
    can_idr: Counter[str] = Counter()
    dl: Counter[str] = Counter()
    alerts: Counter[str] = Counter()
    seen: set[str] = set()
    alert_lines: list[tuple[int, str]] = []  # (severity rank, line)
    incident_lines: list[str] = []
    incident_holds: dict[str, dict[str, Any]] = {}
    holds = {"held": 0, "held_idr": 0}
    # How each hold ended here (requested or released, and the amount), by refund id: the
    # ends of holds that began in `outputs` add up with those still held to `held`; the ends
    # of earlier holds (a window's `--since` cuts their start off) are counted apart.
    holds_ended: dict[str, tuple[str, int]] = {}
    holds_started: set[str] = set()
    # Each hold's deadline (ms), for the wait of those still held: `longest_hold_s` counts only
    # the holds that ended, so mid-outage it alone would say 0.0 min beside a thousand refunds held.
    hold_deadline_ms: dict[str, int] = {}
    longest_hold_ms = 0
    # How each incident's holds ended, from the refunds themselves: its resolved alert counts
    # them as of its own time, when most are still held (they end up to G later).
    after: dict[str, dict[str, list[int]]] = {}
    holds_line_at: dict[str, int] = {}
    for role, v in outputs:
        if role == "refunds":
            rid = v["type"] + v.get("cancel_id", v["refund_id"])
            if rid in seen:  # redelivered output: the refund service dedupes the same way
                continue
            seen.add(rid)
            hold = v.get("hold")
            if hold is not None:
                how = "requested" if v["type"] == "refund.requested" else "released"
                holds_ended[v["refund_id"]] = (how, v["amount"])
                longest_hold_ms = max(longest_hold_ms, hold["held_ms"])
                # An end of a hold begun before the selection (`--since`) is said apart: counted
                # with the holds begun in it, it would make more ends than holds and say "still
                # held 0" beside holds still held.
                prefix = "" if v["refund_id"] in holds_started else "earlier_"
                _count_in(after, str(hold.get("incident_id")), prefix + how, v["amount"])
            if v["type"] == "refund.requested":
                req_n[_text(v["reason"])] += 1
                req_idr[_text(v["reason"])] += v["amount"]
            elif v["type"] == "refund.held":
                holds["held"] += 1
                holds["held_idr"] += v["amount"]
                holds_started.add(v["refund_id"])
                deadline_ms = _ms(v.get("deadline"))
                if deadline_ms is not None:
                    hold_deadline_ms[v["refund_id"]] = deadline_ms
                _count_in(after, str(v.get("incident_id")), "held", v["amount"])
            elif v["type"] != "refund.hold_released":
                can_n[_text(v["reason"])] += 1
                can_idr[_text(v["reason"])] += v["amount"]
        elif role == "dead_letter":
            if v["dead_letter_id"] in seen:
                continue
            seen.add(v["dead_letter_id"])
            dl[escape_text(str(v["error"]), 40)] += 1
        elif role == "alerts":
            if v["alert_id"] in seen:
                continue
            seen.add(v["alert_id"])
            label = escape_text(str(v["kind"]), 40) + (
                f"/{escape_text(str(v['status']), 20)}" if v.get("status") else ""
            )
            alerts[label] += 1
            if v["kind"] == "FAILURE_BURST":
                window = v.get("window") or {}
                incident_lines.append(
                    f"[{_text(v['severity'])}] {_text(v['status']):<8} {_when(window.get('start'))} .. "
                    f"{_when(window.get('end'))} {_text(v['summary'], 1000)}"
                )
                if v.get("status") == "resolved" and isinstance(v.get("holds"), dict):
                    # The holds the incident covered, as its resolved alert counts them.
                    incident_holds[_text(v.get("incident_id"))] = v["holds"]
                    incident_lines.append("         " + _holds_line(v["holds"], scope))
                    holds_line_at[str(v.get("incident_id"))] = len(incident_lines)
            else:
                if v["kind"] in ("LATE_SETTLEMENT", "LATE_REVERSAL") and v.get("incident_id"):
                    # A clawback its incident explains (the alert carries the incident's id): the
                    # resolved alert counts those up to its own time, this line those read.
                    observed = v.get("observed")
                    amount = observed.get("amount_idr") if isinstance(observed, dict) else None
                    amount = amount if isinstance(amount, int) and not isinstance(amount, bool) else 0
                    _count_in(after, str(v["incident_id"]), "clawed_back", amount)
                alert_lines.append(
                    (
                        SEVERITY_RANK.get(v["severity"], len(SEVERITY_RANK)),
                        f"[{_text(v['severity'])}] {_text(v['kind'])}: {_text(v['summary'], 1000)}",
                    )
                )
    # After each resolved incident's holds, how they ended (the refunds read here).
    for incident_id, at in sorted(holds_line_at.items(), key=lambda kv: -kv[1]):
        if incident_id in after:
            incident_lines.insert(at, "         " + _ended_line(after[incident_id], scope))
    return {
        "refunds_requested": {
            "count": sum(req_n.values()),
            "idr": sum(req_idr.values()),
            "by_reason": {k: {"count": req_n[k], "idr": req_idr[k]} for k in sorted(req_n)},
        },
        "cancellations": {
            "count": sum(can_n.values()),
            "idr": sum(can_idr.values()),
            "by_reason": {k: {"count": can_n[k], "idr": can_idr[k]} for k in sorted(can_n)},
        },
        "holds": {
            **holds,
            **_hold_ends(holds_ended, holds_started),
            "still_held": len(holds_started - holds_ended.keys()),
            "oldest_still_held_deadline": _oldest(hold_deadline_ms, holds_started - holds_ended.keys()),
            "longest_hold_s": longest_hold_ms / 1000,
        },
        "net_outstanding_idr": money["net_outstanding"]["idr"],
        "refund_totals": money,
        "dead_letters": {"count": sum(dl.values()), "by_error": dict(sorted(dl.items()))},
        # The most severe first, each severity in the outputs' order: the text shows the first
        # few, and an OVER_REFUND (critical: a person must look) after a day's LATE_SETTLEMENT
        # warnings must be among them.
        "alerts": {
            "count": sum(alerts.values()),
            "by_kind": dict(sorted(alerts.items())),
            "lines": [line for _rank, line in sorted(alert_lines, key=lambda x: x[0])],
        },
        "incidents": incident_lines,
        "incident_holds": incident_holds,
        "incident_holds_ended": {
            _text(k): {how: {"count": n, "amount_idr": a} for how, (n, a) in v.items()}
            for k, v in sorted(after.items())
        },
    }


def _count_in(after: dict[str, dict[str, list[int]]], incident_id: str, how: str, amount: int) -> None:
    c = after.setdefault(incident_id, {}).setdefault(how, [0, 0])
    c[0] += 1
    c[1] += amount


def _ended_line(c: dict[str, list[int]], scope: tuple[str, str] | None = None) -> str:
    """How an incident's holds ended, from the refund records: its resolved alert counts them
    as of its own time, most of them still held then. The ends of holds begun before the
    selection (`earlier_...`) are said apart, as in the report's holds line. In a scope's
    report, the scope's holds only, and the line says so beside the incident's."""
    held, requested, released = (c.get(k, [0, 0]) for k in ("held", "requested", "released"))
    whose = f", {scope_words(scope)} only" if scope else ""
    line = (
        f"holds in the end{whose} (the refunds read): held {held[0]} ({rupiah(held[1])}), requested after "
        f"the hold {requested[0]} ({rupiah(requested[1])}), released without payment {released[0]} "
        f"({rupiah(released[1])}), still held {max(0, held[0] - requested[0] - released[0])}"
    )
    clawed_back = c.get("clawed_back", [0, 0])
    line += f", clawbacks explained by it {clawed_back[0]} ({rupiah(clawed_back[1])})"
    early_requested, early_released = (c.get(k, [0, 0]) for k in ("earlier_requested", "earlier_released"))
    if early_requested[0] or early_released[0]:
        line += (
            f"; {early_requested[0] + early_released[0]} holds from before the selection ended in it: requested "
            f"{early_requested[0]} ({rupiah(early_requested[1])}), released without payment {early_released[0]} "
            f"({rupiah(early_released[1])})"
        )
    return line


def _hold_ends(ended: dict[str, tuple[str, int]], started: set[str]) -> dict[str, int]:
    """The ends of the holds that began in the outputs (`requested_after`, `released`), and of
    those that began before them (`earlier_...`)."""
    out = dict.fromkeys(("requested_after", "released", "released_idr"), 0)
    out |= dict.fromkeys(("earlier_requested_after", "earlier_released", "earlier_released_idr"), 0)
    for rid, (how, amount) in ended.items():
        prefix = "" if rid in started else "earlier_"
        if how == "requested":
            out[f"{prefix}requested_after"] += 1
        else:
            out[f"{prefix}released"] += 1
            out[f"{prefix}released_idr"] += amount
    return out


def scope_words(scope: tuple[str, str]) -> str:
    """A report's scope as its lines name it, the id escaped (right-to-left letters too, so that
    they cannot reorder the counts after it).

    >>> scope_words(("merchant", "M1"))
    'merchant M1'
    """
    return f"{escape_text(scope[0], 20)} {escape_text(scope[1])}"


def _holds_line(h: dict[str, Any], scope: tuple[str, str] | None = None) -> str:
    """The holds an incident's resolved alert counts: every scope the incident covers, which
    a scope's report, beside its own holds (`_ended_line`), says in words."""

    def part(name: str, label: str) -> str:
        c = h.get(name) or {}
        return f"{label} {int(c.get('count', 0))} ({rupiah(int(c.get('amount_idr', 0)))})"

    whole = ", the whole incident (all its scopes, as its resolved alert counts them)" if scope else ""
    return f"holds at {_when(h.get('as_of'))}{whole}: " + ", ".join(
        (
            part("held", "held"),
            part("requested_after_hold", "requested after the hold"),
            part("released_without_payment", "released without payment"),
            part("still_held", "still held"),
            part("cancellations", "clawbacks explained by it"),
        )
    )


def _ms(text: object) -> int | None:
    from ..core.eventtime import BadTimestamp, parse_ms

    try:
        return parse_ms(text) if isinstance(text, str) else None
    except BadTimestamp:
        return None


def _oldest(deadline_ms: dict[str, int], refund_ids: set[str]) -> str | None:
    """The earliest deadline among `refund_ids` (RFC 3339), or None."""
    from ..core.eventtime import format_ms

    known = [deadline_ms[r] for r in refund_ids if r in deadline_ms]
    return format_ms(min(known)) if known else None


def _text(v: object, max_chars: int = 64) -> str:
    return escape_text(str(v), max_chars)


def _when(text: str | None) -> str:
    # Incident windows in WIB with UTC beside, like the summaries (issue 10).
    from ..core.eventtime import BadTimestamp, parse_ms, wib_and_utc

    try:
        return wib_and_utc(parse_ms(text)) if text else "?"
    except BadTimestamp:
        return _text(text)


def render(summary: dict[str, Any], max_alert_lines: int = 15) -> str:
    r, c, d, a = summary["refunds_requested"], summary["cancellations"], summary["dead_letters"], summary["alerts"]
    incidents = summary.get("incidents", [])
    n_alerts = sum(1 for x in incidents if not x.startswith(" "))  # (a holds line is indented)
    lines = [f"Failure-burst incidents (opened/updated/resolved alerts): {n_alerts}"]
    lines += [f"  {x}" for x in incidents]
    lines.append(f"Refunds requested: {r['count']} ({rupiah(r['idr'])})")
    lines += [f"  {k:<20} {v['count']:>6}  {rupiah(v['idr'])}" for k, v in r["by_reason"].items()]
    h = summary.get("holds")
    earlier_ends = h["earlier_requested_after"] + h["earlier_released"] if h else 0
    if h and (h["held"] or earlier_ends):
        line = (
            f"Refunds held during incidents: {h['held']} ({rupiah(h['held_idr'])}); then requested "
            f"{h['requested_after']}, released without payment {h['released']} ({rupiah(h['released_idr'])}), "
            f"still held {h['still_held']}"
        )
        if earlier_ends:
            line += (
                f"; {earlier_ends} holds from before the selection ended in it: requested "
                f"{h['earlier_requested_after']}, released without payment {h['earlier_released']} "
                f"({rupiah(h['earlier_released_idr'])})"
            )
        line += f"; longest wait past the deadline {h['longest_hold_s'] / 60:.1f} min"
        oldest = h.get("oldest_still_held_deadline")
        if oldest:
            line += f" (of the holds that ended); the oldest still held waits since its deadline {_when(oldest)}"
        lines.append(line)
    lines.append(f"Refund cancellations (clawbacks): {c['count']} ({rupiah(c['idr'])})")
    lines += [f"  {k:<20} {v['count']:>6}  {rupiah(v['idr'])}" for k, v in c["by_reason"].items()]
    money = summary.get("refund_totals")
    if money:
        net, earlier = money["net_outstanding"], money["cancelled_earlier"]
        line = (
            f"Net refunds outstanding (requested and not cancelled, by each refund's latest record): "
            f"{net['count']} ({rupiah(net['idr'])})"
        )
        if earlier["count"]:
            line += (
                f"; the cancellations of {earlier['count']} refunds requested before the selection "
                f"({rupiah(earlier['idr'])}) take nothing off it"
            )
        lines.append(line)
    lines.append(f"Dead letters: {d['count']}")
    lines += [f"  {k:<20} {v:>6}" for k, v in d["by_error"].items()]
    lines.append(f"Alerts: {a['count']}")
    width = max((len(k) for k in a["by_kind"]), default=0)  # (a kind/status can pass 20 characters)
    lines += [f"  {k:<{width}} {v:>6}" for k, v in a["by_kind"].items()]
    shown = a["lines"][:max_alert_lines]
    if shown:
        lines.append(
            "Alerts, the most severe first:"
            if len(a["lines"]) <= max_alert_lines
            else f"{len(shown)} of {len(a['lines'])} alerts, the most severe first:"
        )
        lines += [f"  {x}" for x in shown]
    return "\n".join(lines)
