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

A hold is attributed to one incident, so that the incidents' counts add up to all holds; yet
another incident covering the payment keeps it on too (it lasts while any covering incident is
open, and one opening within G of the last one's resolution continues it). So that the page of
that incident shows the money it keeps back, its alerts also count `kept_held`: the holds
attributed to other incidents that it covers and that are still held at t. For that a report
carries, beside each `refund.held` event, the tags (`holds.scope_tag`) of the payment's scopes
as its request gave them when the hold was decided; a request processed after the hold adds no
scope to what the tally counts (the partition's own hold does follow it), a rare case: the
request then came later than the debit's deadline.
Imports nothing outside the core; reads no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Final

from .alerts import rupiah, with_suffix
from .decisions import Decision
from .eventtime import format_ms, parse_ms
from .holds import Incident, IncidentTimeline, incident_event, payment_scope_keys, scope_key, scope_tag
from .incidents import scope_name
from .records import PaymentEvent
from .routing import add_routing, dedup_key
from .signals import MINUTE_MS
from .steps import run_to_end

NEG_INF: Final = -(2**62)
POS_INF: Final = 2**62

HELD = "held"
REQUESTED = "requested_after_hold"
RELEASED = "released_without_payment"
CANCELLED = "cancellations"
STILL_HELD = "still_held"
KEPT_HELD = "kept_held"
EVENT_TYPES = (HELD, REQUESTED, RELEASED, CANCELLED)
CANCELLATION_KINDS = ("LATE_SETTLEMENT", "LATE_REVERSAL")

# A hold event as reported: [type, refund_id, incident_id, amount_idr, at_ms].
HoldEvent = list[Any]
# At most this many events per report (about 250 KB, and about 270 KB more of `hold_scopes` at
# most: a refund id and up to 5 tags of 16 hex digits per `refund.held` event, whatever the
# length of the input's ids): a report stays below Kafka's 1 MB record limit.
HOLD_REPORT_MAX_EVENTS = 2000
# Rows of a saved tally (events and holds) rebuilt between two steps of `from_state_steps`:
# about 2 ms of a takeover's event loop.
RESTORE_ROWS = 1000


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


def held_scope_tags(d: Decision) -> list[str] | None:
    """For a `refund.held` decision: the tags (`holds.scope_tag`) of the scopes other than `all`
    whose incidents cover the payment, from the request in its evidence ([] without a request:
    only scope `all` covers it). None for any other decision."""
    v = d.value
    if d.role != "refunds" or v.get("type") != "refund.held":
        return None
    rq = (v.get("evidence") or {}).get("request")
    if not rq:
        return []
    keys = payment_scope_keys(
        rq.get("switch_id"), rq.get("acquirer_id"), rq.get("issuer_id"), rq.get("merchant_id"), rq.get("mcc")
    )
    return [scope_tag(k) for k in keys]


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


def hold_report(
    partition: int, events: list[HoldEvent], decided_through_ms: int, scopes: dict[str, list[str]] | None = None
) -> Decision:
    """A partition's hold report for the signals topic: the hold events decided since its last
    report, and that everything of the partition before `decided_through_ms` is decided. With
    `scopes` (refund_id -> `held_scope_tags`), `hold_scopes` gives those of its `refund.held`
    events: a key of its own, which a tally that does not know it passes over."""
    value: dict[str, Any] = {"partition": partition, "hold_events": events, "decided_through_ms": decided_through_ms}
    if scopes:
        tags = {e[1]: scopes[e[1]] for e in events if e[0] == HELD and e[1] in scopes}
        if tags:
            value["hold_scopes"] = tags
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
        # Every incident's holds, kept past its resolved alert until they ended before any alert
        # still to come: other incidents covering them count them (`kept_held`).
        # refund_id -> [incident_id, amount, held_at_ms, ended_at_ms or None, scope tags]
        self.held: dict[str, list[Any]] = {}
        self.held_by_tag: dict[str, set[str]] = {}
        # (ended_at_ms, refund_id) of the ended ones in `held`, earliest first: forgetting them
        # reads only those it forgets.
        self.ends: list[tuple[int, str]] = []
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
        before = self.decided.get(p, NEG_INF)
        through = int(value["decided_through_ms"])
        tags_of = value.get("hold_scopes") or {}
        for typ, refund_id, incident_id, amount, at_ms in value["hold_events"]:
            if typ not in EVENT_TYPES:
                continue
            self._follow(typ, refund_id, incident_id, int(amount), int(at_ms), through < before, tags_of)
            if incident_id in self.finished:
                continue
            self.events.setdefault(incident_id, {})[(typ, refund_id)] = [int(amount), int(at_ms)]
        if through > before:
            self.decided[p] = through
        out = self._ready()
        self._forget_ended()
        return out

    def _follow(
        self, typ: str, refund_id: str, incident_id: str, amount: int, at_ms: int, again: bool, tags_of: dict[str, Any]
    ) -> None:
        # `again`: the report states less decided than the partition's previous one, so it is one
        # sent again (the partition restored a state saved before it), whose `refund.held` may
        # have ended and been forgotten since; taken again, it would look held for ever. The
        # events' own times do not tell: a partition whose idle floor dropped at its first record
        # (`PartitionEngine._drop_floor_without_records`) reports holds dated before its previous
        # report, for the first time. A repeat that states as much as the previous report or more
        # holds the end of any hold of it that was forgotten (an end is decided after its hold,
        # and reported with it or later), so taking its hold again ends it again.
        if typ == HELD:
            if refund_id in self.held or again:
                return
            tags = [str(t) for t in tags_of.get(refund_id, ())]
            self.held[refund_id] = [incident_id, amount, at_ms, None, tags]
            for tag in tags:
                self.held_by_tag.setdefault(tag, set()).add(refund_id)
        elif typ in (REQUESTED, RELEASED):
            h = self.held.get(refund_id)
            if h is not None and (h[3] is None or at_ms < h[3]):
                h[3] = at_ms
                heapq.heappush(self.ends, (at_ms, refund_id))

    def _forget_ended(self) -> None:
        # Every alert still to come is at or after this time: the pending ones, and those the
        # detector has not made yet, which reach the tally before any partition decides past
        # them. A hold ended by then is still held at no such alert's time.
        horizon = min([self.decided_through_ms, *(t for t, *_ in self.pending)])
        ends, held = self.ends, self.held
        while ends and ends[0][0] <= horizon:
            at_ms, rid = heapq.heappop(ends)
            h = held.get(rid)
            if h is None or h[3] != at_ms:
                continue
            for tag in held.pop(rid)[4]:
                of_tag = self.held_by_tag[tag]
                of_tag.discard(rid)
                if not of_tag:
                    del self.held_by_tag[tag]

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

    def tally(self, incident_id: str, t_ms: int, scope: dict[str, Any] | None = None) -> dict[str, Any]:
        """The incident's holds as of event time t: the hold events with time <= t; and, given its
        `scope`, the holds of other incidents it covers that are still held at t (`kept_held`)."""
        counts = {k: [0, 0] for k in (HELD, REQUESTED, RELEASED, STILL_HELD, CANCELLED, KEPT_HELD)}
        if scope is not None:
            counts[KEPT_HELD] = self.kept(incident_id, str(scope["type"]), str(scope["id"]), t_ms)
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

    def kept(self, incident_id: str, scope_type: str, scope_id: str, t_ms: int) -> list[int]:
        """[count, rupiah] of the holds attributed to other incidents that an incident of this
        scope covers (`holds.payment_scope_keys`) and that are held at t: held at or before t,
        not ended at or before t."""
        held = self.held
        if scope_type == "all":
            ids: Iterable[str] = held.keys()
        else:
            ids = self.held_by_tag.get(scope_tag(scope_key(scope_type, scope_id)), ())
        n = amount = 0
        for rid in ids:
            inc, a, at, ended, _tags = held[rid]
            if inc != incident_id and at <= t_ms and (ended is None or ended > t_ms):
                n += 1
                amount += a
        return [n, amount]

    def _emit(self, t_ms: int, value: dict[str, Any], key: bytes | None, at_ms: int | None) -> Decision:
        incident_id = value["incident_id"]
        out = dict(value)
        out["holds"] = holds = self.tally(incident_id, t_ms, value.get("scope"))
        if "summary" in out and (phrase := holds_phrase(holds)):
            out["summary"] = with_suffix(out["summary"], f"; {phrase}")
        if value.get("status") == "resolved":
            self.finished.add(incident_id)
            self.events.pop(incident_id, None)
        if "dedup_key" not in out:
            add_routing(out)
        return Decision("alerts", key, out, at_ms)

    # -- snapshots ----------------------------------------------------------------------------

    def to_state(self, lazily: bool = False) -> dict[str, Any]:
        """The tally as JSON-ready named fields; `from_state` rebuilds an equal tally.

        The events and the holds are in the tally's own order: every use of them is a sum or a
        heap, so their order means nothing, and sorting them is one step that cannot be cut
        (0.15-0.25 s at 50,000 holds). `lazily`: each incident's events and the holds as
        iterators that build each row when it is read, so that a snapshot can be encoded in
        pieces (`burstsnapshot.encode_pieces`). The tally must not change until they are read.
        They come from generator functions, not generator expressions: a compiled build (mypyc)
        makes a generator expression a list, every row built before the first piece."""
        events = {inc: _event_rows(evs) for inc, evs in sorted(self.events.items())}
        held = _held_rows(self.held)
        return {
            "partitions": sorted(self.partitions),
            "probe_age_ms": self.probe_age_ms,
            "decided": sorted(self.decided.items()),
            "events": events if lazily else {inc: list(rows) for inc, rows in events.items()},
            "finished": sorted(self.finished),
            "pending": [[t, v, None if k is None else k.decode("utf-8"), at] for t, v, k, at in self.pending],
            # A key of its own (a tally that does not know it passes over it; restored without
            # it, the holds reported before count in no other incident's `kept_held`).
            **({"held": held if lazily else list(held)} if self.held else {}),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HoldTally:
        """The tally `to_state` saved (in any order of its rows: sorted or the tally's own)."""
        return run_to_end(cls.from_state_steps(state))

    @classmethod
    def from_state_steps(cls, state: dict[str, Any]) -> Generator[None, None, HoldTally]:
        """`from_state` in steps of about `RESTORE_ROWS` rows (the generator's value, once it
        stops, is the tally), so that a takeover can give the event loop back between them: a
        tally of 50,000 holds takes 0.25 s to build at once. The tally is the caller's only
        when whole: nothing can decide from one half built."""
        tally = cls(state["partitions"], int(state["probe_age_ms"]))
        tally.decided = {int(p): int(ms) for p, ms in state["decided"]}
        tally.finished = set(state["finished"])
        tally.pending = [
            (int(t), dict(v), None if k is None else k.encode("utf-8"), at) for t, v, k, at in state["pending"]
        ]
        rows = 0
        for inc, evs in state["events"].items():
            of_incident: dict[tuple[str, str], list[int]] = {}
            tally.events[inc] = of_incident
            for typ, rid, a, at in evs:
                of_incident[(typ, rid)] = [int(a), int(at)]
                rows += 1
                if rows % RESTORE_ROWS == 0:
                    yield
        held, ends, held_by_tag = tally.held, tally.ends, tally.held_by_tag
        for rid, inc, amount, at, ended, tags in state.get("held", ()):
            held[rid] = [inc, int(amount), int(at), None if ended is None else int(ended), list(tags)]
            if ended is not None:
                ends.append((int(ended), rid))
            for tag in tags:
                held_by_tag.setdefault(tag, set()).add(rid)
            rows += 1
            if rows % RESTORE_ROWS == 0:
                yield
        heapq.heapify(ends)
        return tally


def _event_rows(events: dict[tuple[str, str], list[int]]) -> Iterator[list[Any]]:
    # (A generator function, built row by row as it is read, compiled or not: `to_state`.)
    for (typ, rid), (amount, at_ms) in events.items():
        yield [typ, rid, amount, at_ms]


def _held_rows(held: dict[str, list[Any]]) -> Iterator[list[Any]]:
    for rid, h in held.items():
        yield [rid, *h]


def holds_phrase(holds: dict[str, Any]) -> str:
    """The holds in words for the alert's summary line ("" when the incident held nothing and
    keeps no other incident's holds on), so that operations reading only the summary see what
    the incident held back, what is left, and the money of other incidents it keeps back.

    >>> holds_phrase({"held": {"count": 3, "amount_idr": 2_500_000},
    ...               "released_without_payment": {"count": 1, "amount_idr": 500_000},
    ...               "still_held": {"count": 2, "amount_idr": 2_000_000}})
    'refunds held: 3 (Rp 2.500.000), 1 released without payment, 2 still held (Rp 2.000.000)'
    >>> holds_phrase({"held": {"count": 0, "amount_idr": 0},
    ...               "kept_held": {"count": 297, "amount_idr": 21_396_500}})
    'holds of other incidents kept on: 297 (Rp 21.396.500)'
    """
    parts = []
    held = holds["held"]
    if held["count"]:
        released, still = holds["released_without_payment"], holds["still_held"]
        parts.append(
            f"refunds held: {held['count']} ({rupiah(held['amount_idr'])}), "
            f"{released['count']} released without payment, "
            f"{still['count']} still held ({rupiah(still['amount_idr'])})"
        )
    kept = holds.get(KEPT_HELD)
    if kept and kept["count"]:
        parts.append(f"holds of other incidents kept on: {kept['count']} ({rupiah(kept['amount_idr'])})")
    return "; ".join(parts)


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
