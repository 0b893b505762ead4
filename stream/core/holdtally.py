"""Each incident's holds, counted in its `updated` and `resolved` alerts (CONTRACT.md "Refund
holds during an incident": the alerts "carry the holds it covers").

The holds are decided by the partitions, after the detector's incident alert that they need,
so an alert cannot count them when it is made. Instead the partitions report their hold
decisions (`hold_report`: the events decided since the last report and `decided_through_ms`,
below which everything of the partition is decided), and `HoldTally` keeps each `updated` /
`resolved` alert of event time t pending until every input partition has decided past t; then
it adds `holds`, counted over the events with time <= t attributed to that incident, and emits
it. Reports may come in any interleaving of partitions and repeated (events have a
deterministic key), so the alerts are a function of the input alone: live equals replay.
Imports nothing outside the core; reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .alerts import rupiah, with_suffix
from .decisions import Decision
from .eventtime import format_ms, parse_ms
from .holds import Incident, IncidentTimeline, incident_event
from .incidents import scope_name
from .records import PaymentEvent
from .routing import add_routing, dedup_key
from .signals import MINUTE_MS

NEG_INF = -(2**62)
POS_INF = 2**62

HELD = "held"
REQUESTED = "requested_after_hold"
RELEASED = "released_without_payment"
CANCELLED = "cancellations"
STILL_HELD = "still_held"
EVENT_TYPES = (HELD, REQUESTED, RELEASED, CANCELLED)
CANCELLATION_KINDS = ("LATE_SETTLEMENT", "LATE_REVERSAL")

# A hold event as reported: [type, refund_id, incident_id, amount_idr, at_ms].
HoldEvent = list[Any]
# At most this many events per report (about 250 KB): a report stays far below Kafka's record limit.
HOLD_REPORT_MAX_EVENTS = 2000


def hold_event(d: Decision) -> HoldEvent | None:
    """The tally's event for a decision of a partition, or None: a refund held, requested after
    a hold, or released without payment, each attributed to the hold's (first) incident; and a
    cancellation an incident explains (`explain_cancellations` gave its alert the incident)."""
    v = d.value
    if d.role == "refunds":
        t = v["type"]
        if t == "refund.held":
            return [HELD, v["refund_id"], v["incident_id"], v["amount"], d.at_ms]
        if t == "refund.requested" and "hold" in v:
            return [REQUESTED, v["refund_id"], v["hold"]["incident_id"], v["amount"], d.at_ms]
        if t == "refund.hold_released":
            return [RELEASED, v["refund_id"], v["hold"]["incident_id"], v["hold"]["held_amount"], d.at_ms]
    elif d.role == "alerts" and v.get("kind") in CANCELLATION_KINDS and v.get("incident_id"):
        return [CANCELLED, v["refund_id"], v["incident_id"], v["observed"]["amount_idr"], d.at_ms]
    return None


def explain_cancellations(decisions: list[Decision], request: PaymentEvent | None, incidents: IncidentTimeline) -> None:
    """Give each `LATE_SETTLEMENT`/`LATE_REVERSAL` alert among `decisions` the incident that
    explains it: a `FAILURE_BURST` incident covering the payment, open at the refund's deadline,
    else at the cancellation (earliest opened first). The alert keeps its kind (rule 3 wants an
    alert per cancellation) but takes the incident's `incident_id` and `dedup_key`, so paging
    groups it into the incident. In place; the alerts are not sent yet."""
    deadline_ms_of = {
        d.value["cancels_refund_id"]: parse_ms(d.value["deadline"])
        for d in decisions
        if d.role == "refunds" and d.value["type"] == "refund.cancel_requested"
    }
    for d in decisions:
        v = d.value
        if d.role != "alerts" or v.get("kind") not in CANCELLATION_KINDS or d.at_ms is None:
            continue
        deadline = deadline_ms_of.get(v["refund_id"])
        found: list[Incident] = []
        if deadline is not None:
            found = incidents.covering_open_at(request, deadline)
        if not found:
            found = incidents.covering_open_at(request, d.at_ms)
        if found:
            inc = found[0]
            v["incident_id"] = inc.incident_id
            v["dedup_key"] = dedup_key(v)
            # The page it folds into names the incident; so does its own line, for the refund desk.
            during = f" (during the incident of {scope_name(inc.scope_type, inc.scope_id)}, {inc.incident_id})"
            v["summary"] = with_suffix(v["summary"], during)


def hold_report(partition: int, events: list[HoldEvent], decided_through_ms: int) -> Decision:
    """A partition's hold report for the signals topic: the hold events decided since its last
    report, and that everything of the partition before `decided_through_ms` is decided."""
    value = {"partition": partition, "hold_events": events, "decided_through_ms": decided_through_ms}
    at_ms = decided_through_ms if 0 <= decided_through_ms < POS_INF else None
    return Decision("signals", str(partition).encode(), value, at_ms)


def is_hold_report(value: dict[str, Any]) -> bool:
    return "decided_through_ms" in value


def report_floor_ms(decided_through_ms: int) -> int:
    """The decided-through time a report states: floored to the minute. Whether a partition has
    reported past an alert's time then depends on the minute it reached, not on the instant
    within it at which live incidents happened to arrive: the last report of an input is the
    same live and in replay, so an alert left waiting at its end is too."""
    if decided_through_ms >= POS_INF:
        return POS_INF
    return decided_through_ms - decided_through_ms % MINUTE_MS


class HoldTally:
    """Pending `updated`/`resolved` incident alerts and the hold events they will count."""

    def __init__(self, partitions: Iterable[int], probe_age_ms: int) -> None:
        self.partitions = frozenset(partitions)
        self.probe_age_ms = probe_age_ms
        self.decided: dict[int, int] = {}
        # incident_id -> (type, refund_id) -> [amount, at_ms]
        self.events: dict[str, dict[tuple[str, str], list[int]]] = {}
        # Incidents whose resolved alert is out: their events are dropped, later ones ignored.
        self.finished: set[str] = set()
        # (t_ms, alert value, key, at_ms) in the detector's order.
        self.pending: list[tuple[int, dict[str, Any], bytes | None, int | None]] = []

    @property
    def decided_through_ms(self) -> int:
        """Every partition decided everything before this time."""
        if not self.partitions:
            return NEG_INF
        return min(self.decided.get(p, NEG_INF) for p in self.partitions)

    def on_alerts(self, alerts: Iterable[Decision]) -> list[Decision]:
        """The detector's alerts: `updated`/`resolved` incident alerts wait for the hold decisions
        up to their time; the others pass. Returns what goes out now."""
        out: list[Decision] = []
        for d in alerts:
            ev = incident_event(d.value, self.probe_age_ms) if d.role == "alerts" else None
            if ev is None or ev.status == "opened":
                out.append(d)
                continue
            self.pending.append((ev.at_ms, d.value, d.key, d.at_ms))
        return out + self._ready()

    def on_report(self, value: dict[str, Any]) -> list[Decision]:
        """One partition's hold report (repeats and any interleaving harmless)."""
        p = int(value["partition"])
        for typ, refund_id, incident_id, amount, at_ms in value["hold_events"]:
            if incident_id in self.finished or typ not in EVENT_TYPES:
                continue
            self.events.setdefault(incident_id, {})[(typ, refund_id)] = [int(amount), int(at_ms)]
        through = int(value["decided_through_ms"])
        if through > self.decided.get(p, NEG_INF):
            self.decided[p] = through
        return self._ready()

    def _ready(self) -> list[Decision]:
        if not self.pending:
            return []
        through = self.decided_through_ms
        out: list[Decision] = []
        keep = []
        for item in self.pending:
            t_ms, value, key, at_ms = item
            if t_ms >= through:
                keep.append(item)
                continue
            out.append(self._emit(t_ms, value, key, at_ms))
        self.pending = keep
        return out

    def tally(self, incident_id: str, t_ms: int) -> dict[str, Any]:
        """The incident's holds as of event time t: the hold events with time <= t."""
        counts = {k: [0, 0] for k in (HELD, REQUESTED, RELEASED, STILL_HELD, CANCELLED)}
        of_incident = self.events.get(incident_id, {})
        ended = {rid for (typ, rid), (_a, at) in of_incident.items() if typ in (REQUESTED, RELEASED) and at <= t_ms}
        for (typ, rid), (amount, at) in of_incident.items():
            if at > t_ms:
                continue
            c = counts[typ]
            c[0] += 1
            c[1] += amount
            if typ == HELD and rid not in ended:
                counts[STILL_HELD][0] += 1
                counts[STILL_HELD][1] += amount
        out: dict[str, Any] = {k: {"count": n, "amount_idr": a} for k, (n, a) in counts.items()}
        out["as_of"] = format_ms(t_ms)
        return out

    def _emit(self, t_ms: int, value: dict[str, Any], key: bytes | None, at_ms: int | None) -> Decision:
        incident_id = value["incident_id"]
        out = dict(value)
        out["holds"] = holds = self.tally(incident_id, t_ms)
        if "summary" in out and (phrase := holds_phrase(holds)):
            out["summary"] = with_suffix(out["summary"], f"; {phrase}")
        if value.get("status") == "resolved":
            self.finished.add(incident_id)
            self.events.pop(incident_id, None)
        if "dedup_key" not in out:
            add_routing(out)
        return Decision("alerts", key, out, at_ms)

    # -- snapshots ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "partitions": sorted(self.partitions),
            "probe_age_ms": self.probe_age_ms,
            "decided": sorted(self.decided.items()),
            "events": {
                inc: [[typ, rid, a, at] for (typ, rid), (a, at) in sorted(evs.items())]
                for inc, evs in sorted(self.events.items())
            },
            "finished": sorted(self.finished),
            "pending": [[t, v, None if k is None else k.decode("utf-8"), at] for t, v, k, at in self.pending],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HoldTally:
        tally = cls(state["partitions"], int(state["probe_age_ms"]))
        tally.decided = {int(p): int(ms) for p, ms in state["decided"]}
        tally.events = {
            inc: {(typ, rid): [int(a), int(at)] for typ, rid, a, at in evs} for inc, evs in state["events"].items()
        }
        tally.finished = set(state["finished"])
        tally.pending = [
            (int(t), dict(v), None if k is None else k.encode("utf-8"), at) for t, v, k, at in state["pending"]
        ]
        return tally


def holds_phrase(holds: dict[str, Any]) -> str:
    """The holds in words for the alert's summary line ("" when the incident held nothing), so
    that operations reading only the summary see what the incident held back and what is left.

    >>> holds_phrase({"held": {"count": 3, "amount_idr": 2_500_000},
    ...               "released_without_payment": {"count": 1, "amount_idr": 500_000},
    ...               "still_held": {"count": 2, "amount_idr": 2_000_000}})
    'refunds held: 3 (Rp 2.500.000), 1 released without payment, 2 still held (Rp 2.000.000)'
    """
    held = holds["held"]
    if not held["count"]:
        return ""
    released, still = holds["released_without_payment"], holds["still_held"]
    return (
        f"refunds held: {held['count']} ({rupiah(held['amount_idr'])}), "
        f"{released['count']} released without payment, "
        f"{still['count']} still held ({rupiah(still['amount_idr'])})"
    )


def tallied_alerts(
    alerts: list[Decision], reports: Iterable[dict[str, Any]], partitions: Iterable[int], probe_age_ms: int
) -> list[Decision]:
    """Replay: the detector's alerts with their holds, from every partition's hold reports, in
    the detector's order; an alert some partition did not decide past stays out, as live."""
    tally = HoldTally(partitions, probe_age_ms)
    done = {d.value["alert_id"]: d for d in tally.on_alerts(alerts)}
    for value in reports:
        if is_hold_report(value):
            for d in tally.on_report(value):
                done[d.value["alert_id"]] = d
    return [done[d.value["alert_id"]] for d in alerts if d.value["alert_id"] in done]
