"""`qris-guard trace REF`: why one reference got the decisions it got, or none.

Re-runs the core over the input of the partition(s) holding the reference (offline, like
`replay`), with an `EngineObserver` attached that collects the facts of that one reference:
each input record (partition, offset, Kafka time, occurred_at, effective time, accepted,
duplicate or dead-lettered and why, the watermark on arrival and when processed), every
deadline with its numbers, retention, and the decisions (refunds, cancellations, holds, alerts).
Nothing is parsed back from printed output. Reads records given to it; the CLI does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core import codec
from ..core.burst import BurstParams
from ..core.decisions import Decision
from ..core.eventtime import BadTimestamp, format_ms, parse_ms, wib_and_utc
from ..core.holds import IncidentTimeline
from ..core.partition import NEG_INF, Params
from ..core.records import LedgerEvent, PaymentEvent, Stream
from ..core.reference import ReferenceState
from ..core.text import escape_text
from .replay import Replay, WarmStart, with_incidents
from .replayfile import KafkaRecord

REFUND_WORDS = {
    "refund.requested": "refund requested",
    "refund.cancel_requested": "refund cancelled",
    "refund.held": "refund HELD",
    "refund.hold_released": "hold released (no refund)",
}


REASON_WORDS = {
    "SETTLEMENT_TIMEOUT": "debited and neither settled nor failed by the deadline",
    "PAYMENT_FAILED": "debited although the payment failed",
    "EXCESS_DEBIT": "debited more than the settled amount",
}


BACKSLASH = b"\\"  # (every JSON escape starts with one)


def _value_reference(value: bytes | None) -> str | None:
    try:
        v = codec.loads(value) if value else None
    except Exception:  # a dead letter's bytes need not be JSON
        return None
    ref = v.get("reference") if isinstance(v, dict) else None
    return ref if isinstance(ref, str) else None


@dataclass
class TraceObserver:
    """Collects the facts of one reference from a `PartitionEngine` (the core's observer hook)."""

    reference: str
    partition: int
    topics: tuple[str, str]
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    deadlines: list[dict[str, Any]] = field(default_factory=list)
    dropped_at: dict[str, Any] | None = None

    def _mine(self, key: bytes | None, value: bytes | None, event: PaymentEvent | LedgerEvent | None) -> bool:
        if event is not None:
            return event.reference == self.reference
        return key == self.reference.encode() or _value_reference(value) == self.reference

    def taken(
        self,
        stream: Stream,
        offset: int,
        timestamp_ms: int | None,
        key: bytes | None,
        value: bytes | None,
        event: PaymentEvent | LedgerEvent | None,
        eff_ms: int | None,
        watermark_ms: int,
        rejection: str | None,
    ) -> None:
        if not self._mine(key, value, event):
            return
        fact: dict[str, Any] = {
            "topic": self.topics[int(stream)],
            "stream": stream.name,
            "partition": self.partition,
            "offset": offset,
            "kafka_time_ms": timestamp_ms,
            "watermark_on_arrival_ms": watermark_ms,
        }
        if event is None:
            fact.update(outcome="dead-lettered", reason=rejection)
        else:
            fact.update(
                event_id=event.event_id,
                type=event.type,
                amount=event.amount,
                occurred_at=event.occurred_at,
                occurred_at_ms=event.occurred_at_ms,
                effective_ms=eff_ms,
                outcome="waiting",
                reason=(
                    f"late: effective time raised to its stream's maximum - A ({format_ms(eff_ms)})"
                    if eff_ms is not None and eff_ms > event.occurred_at_ms
                    else None
                ),
            )
        self.records[(int(stream), offset)] = fact

    def processed(
        self,
        stream: Stream,
        offset: int,
        eff_ms: int,
        watermark_ms: int,
        event: PaymentEvent | LedgerEvent,
        duplicate: bool,
        state: ReferenceState,
        decisions: list[Decision],
    ) -> None:
        if event.reference != self.reference:
            return
        fact = self.records.get((int(stream), offset))
        if fact is None:
            return
        fact["watermark_when_processed_ms"] = watermark_ms
        if duplicate:
            fact["outcome"] = "duplicate"
            # (Escaped as the record lines escape it: the id may hold a zero-width or a
            # right-to-left mark, which the contract allows.)
            fact["reason"] = f"event_id {escape_text(event.event_id)} already processed on this stream: ignored"
        else:
            fact["outcome"] = "accepted"
            fact["after"] = {"net": state.net, "settled": state.settled, "active": state.active}

    def deadline(
        self,
        reference: str,
        deadline_ms: int,
        watermark_ms: int,
        numbers: tuple[int, int, int],
        state: ReferenceState,
        decisions: list[Decision],
    ) -> None:
        if reference != self.reference:
            return
        net, settled, active = numbers
        refunds = [d.value for d in decisions if d.role == "refunds"]
        self.deadlines.append(
            {
                "deadline_ms": deadline_ms,
                "watermark_ms": watermark_ms,
                "net": net,
                "settled": settled,
                "active": active,
                "owed": net - settled - active,
                "decided": [(r["type"], r["refund_id"]) for r in refunds],
            }
        )

    def dropped(self, reference: str, at_ms: int, watermark_ms: int, state: ReferenceState) -> None:
        if reference == self.reference:
            self.dropped_at = {"at_ms": at_ms, "watermark_ms": watermark_ms, "last_effective_ms": state.last_eff_ms}


def _decides_about(d: Decision, reference: str) -> bool:
    v = d.value
    if d.role == "refunds":
        return bool(v.get("reference") == reference)
    if d.role == "alerts":
        return v.get("reference") == reference or reference in (v.get("references") or ())
    return False


def partitions_of(records: Iterable[KafkaRecord], reference: str, topics: tuple[str, str]) -> set[int]:
    r"""Partitions whose input names `reference`: by key, or in the value however its JSON spells
    it. A record sent without a key may escape the reference (`\"`, `\u00e9`, any character as
    `\uXXXX`): a value with a backslash that the raw search misses is parsed. Without a
    backslash a JSON string is its UTF-8 bytes, so the raw search is exact and most records are
    never parsed.

    >>> keyless = KafkaRecord("p", 3, 0, None, None, b'{"reference": "QR-Caf\\u00e9\\"1"}')
    >>> partitions_of([keyless], 'QR-Caf\N{LATIN SMALL LETTER E WITH ACUTE}"1', ("p", "l"))
    {3}
    """
    ref = reference.encode()
    return {
        r.partition
        for r in records
        if r.topic in topics
        and (
            r.key == ref
            or ((v := r.value) is not None and (ref in v or (BACKSLASH in v and _value_reference(v) == reference)))
        )
    }


def _incident_ids(v: dict[str, Any]) -> list[str]:
    ids = v.get("incident_ids")
    if isinstance(ids, list) and ids:
        return [str(i) for i in ids]
    return [str(v["incident_id"])] if v.get("incident_id") else []


def hold_incidents(
    decisions: Iterable[tuple[int, Decision]], timelines: dict[int, IncidentTimeline]
) -> list[dict[str, Any]]:
    """Per hold among the reference's `decisions` (partition, decision), the incidents behind it,
    as its records carry them (CONTRACT.md: a hold lasts while any incident covering the payment
    is open): `open_at_deadline` (`incident_ids` of `refund.held`), `incident_ids` (every one that
    kept it on: the ending record's `hold.incident_ids` once it ended), how it ended, and, when
    the last resolution ended it, `ended_by_incident`: the one of them that resolved last, with
    its resolution's event time from the partition's incident timeline."""
    holds: dict[str, dict[str, Any]] = {}
    for p, d in decisions:
        v = d.value
        if d.role != "refunds":
            continue
        end = v.get("hold")
        if v.get("type") != "refund.held" and not isinstance(end, dict):
            continue
        h = holds.setdefault(
            str(v["refund_id"]),
            {
                "refund_id": v["refund_id"],
                "partition": p,
                "open_at_deadline": [],
                "incident_ids": [],
                "released_because": None,
                "ended_by_incident": None,
                "resolved_at_ms": None,
            },
        )
        if v.get("type") == "refund.held":
            h["open_at_deadline"] = _incident_ids(v)
            h["incident_ids"] = h["incident_ids"] or list(h["open_at_deadline"])
        if isinstance(end, dict):
            h["incident_ids"] = _incident_ids(end) or h["incident_ids"]
            h["released_because"] = end.get("released_because")
            timeline = timelines.get(p)
            if end.get("released_because") == "incident_resolved" and timeline is not None:
                resolved = [
                    (inc.resolved_at_ms, inc.incident_id)
                    for inc in (timeline.incidents.get(i) for i in h["incident_ids"])
                    if inc is not None and inc.resolved_at_ms is not None
                ]
                if resolved:
                    h["resolved_at_ms"], h["ended_by_incident"] = max(resolved)
    return list(holds.values())


def trace(
    records: Iterable[KafkaRecord],
    reference: str,
    params: Params,
    partitions: set[int],
    *,
    drain: bool = False,
    burst: BurstParams | None = None,
    all_partitions: bool = False,
    warm: WarmStart | None = None,
) -> dict[str, Any] | None:
    """The facts of `reference` from a replay of `records` of `partitions` (all records when
    `all_partitions`, which also runs the burst detector). None if no record names it. `warm`:
    the snapshot the burst detector starts from, as `replay --detector-snapshot` (None: cold).

    With refund holds on, decisions depend on the incidents, which need every partition: as
    `replay` does, a first pass over all records finds the detector's incident timeline, and
    the observed pass decides with it (only `partitions`, unless `all_partitions`)."""
    topics = (params.payment_topic, params.ledger_topic)
    burst = burst or BurstParams()
    timeline: list[Decision] | None = None
    if params.holds:
        records = list(records)
        r, timeline = with_incidents(records, params, burst, drain=drain, warm=warm)
    else:
        r = Replay(params, burst, warm=warm)
    observers: dict[int, TraceObserver] = {}
    decisions: list[tuple[int, Decision]] = []
    read = 0
    for rec in records:
        if not all_partitions and rec.partition not in partitions:
            continue
        read += 1
        if rec.partition not in observers and rec.topic in topics:
            obs = observers[rec.partition] = TraceObserver(reference, rec.partition, topics)
            r.engine(rec.partition).observer = obs
        decisions.extend((rec.partition, d) for d in r.feed(rec))
    if drain:
        decisions.extend(r.drain())
    incidents: list[dict[str, Any]] = []
    if timeline is not None:
        incidents = [d.value for d in timeline]
    elif all_partitions:
        incidents = [d.value for d in r.bursts()]
    facts = [f for o in observers.values() for f in o.records.values()]
    if not facts:
        return None
    # Processing order (eff, stream, offset); dead letters, which have no effective time, last.
    facts.sort(
        key=lambda f: (
            f["partition"],
            f["outcome"] == "dead-lettered",
            f.get("effective_ms") or 0,
            f["stream"],
            f["offset"],
        )
    )
    mine = [(p, d) for p, d in decisions if _decides_about(d, reference)]
    out_decisions: list[dict[str, Any]] = [
        {"partition": p, "role": d.role, "at_ms": d.at_ms, "value": d.value} for p, d in mine
    ]
    holds = hold_incidents(mine, {p: eng.incidents for p, eng in r.engines.items()})
    held = {i for h in holds for i in h["incident_ids"]}
    behind = [i for i in incidents if i.get("incident_id") in held]
    # When each of them opened and resolved in event time, as the holds count it (the minute
    # decided plus the probe age, from the partition's incident timeline): the times the hold
    # lines say, so the incident lines read in the same story.
    incident_times: dict[str, dict[str, int | None]] = {}
    for p in observers:
        for incident_id in sorted(held):
            inc = r.engines[p].incidents.incidents.get(incident_id)
            if inc is not None:
                incident_times[incident_id] = {"opened_at_ms": inc.opened_at_ms, "resolved_at_ms": inc.resolved_at_ms}
    deadlines = [x for o in observers.values() for x in o.deadlines]
    dropped = next((o.dropped_at for o in observers.values() if o.dropped_at), None)
    finals = [(p, r.engines[p]) for p in observers]
    final: dict[str, Any] | None = None
    watermarks = {str(p): eng.watermark_ms for p, eng in finals}
    for _p, eng in finals:
        st = eng.refs.get(reference)
        if st is not None:
            final = {
                "net": st.net,
                "settled": st.settled,
                "active": st.active,
                "open_deadline_ms": st.cycle_deadline_ms,
                "failed": st.failure is not None,
                "refunds": [
                    {"refund_id": x.refund_id, "amount": x.amount, "reason": x.reason, "active": x.active}
                    for x in st.refunds
                ],
            }
    result = {
        "reference": reference,
        "partitions": sorted(observers),
        "records_replayed": read,
        "records": facts,
        "deadlines": deadlines,
        "decisions": out_decisions,
        "holds": holds,
        "incidents_behind_holds": behind,
        "incident_times": incident_times,
        "incidents_known": all_partitions or timeline is not None,
        "dropped": dropped,
        "final": final,
        "watermark_ms": watermarks,
        "drained": drain,
    }
    result["why"] = explain(result)
    return result


def explain(t: dict[str, Any]) -> list[str]:
    """One line per reason the reference got what it got (or nothing)."""
    lines: list[str] = []
    types = [d["value"].get("type") for d in t["decisions"] if d["role"] == "refunds"]
    holds = {str(h["refund_id"]): h for h in t.get("holds", ())}
    for d in t["decisions"]:
        v = d["value"]
        if d["role"] != "refunds":
            continue
        if v["type"] == "refund.requested":
            why = REASON_WORDS.get(v["reason"], v["reason"])
            lines.append(f"Refund {v['refund_id']} of {_rp(v['amount'])} requested: {why}.")
        elif v["type"] == "refund.cancel_requested":
            what = "a settlement" if v["reason"] == "LATE_SETTLEMENT" else "a ledger reversal"
            lines.append(f"Refund {v['refund_id']} cancelled: {what} arrived after it was requested.")
        elif v["type"] == "refund.held":
            lines.append(
                f"Refund {v['refund_id']} held while an incident covering the payment is open "
                f"({_ids_text(_incident_ids(v))} at the deadline); "
                f"paid by {_text_time(v.get('release_by'))} at the latest unless the payment settles."
            )
        elif v["type"] == "refund.hold_released":
            lines.append(f"Hold {v['refund_id']} released without a refund: the payment settled or was reversed.")
        h = holds.get(str(v["refund_id"])) if isinstance(v.get("hold"), dict) else None
        if h is not None and h["ended_by_incident"] is not None:
            last, ids = h["ended_by_incident"], h["incident_ids"]
            who = f"{last}, the last of its incidents ({_ids_text(ids)})," if len(ids) > 1 else f"its incident {last}"
            lines.append(f"Its hold ended {_grace_text(v['hold'], h)} after {who} resolved.")
    accepted = [f for f in t["records"] if f["outcome"] == "accepted"]
    debits = [f for f in accepted if f.get("type") == "debited"]
    waiting = [f for f in t["records"] if f["outcome"] == "waiting"]
    for dl in t["deadlines"]:
        if dl["owed"] <= 0:
            lines.append(
                f"At the deadline {wib_and_utc(dl['deadline_ms'])}: owed = net {dl['net']} - settled {dl['settled']}"
                f" - active refunds {dl['active']} = {dl['owed']}: nothing owed, no refund."
            )
    if waiting:
        w = max(t["watermark_ms"].values(), default=NEG_INF)
        lines.append(
            f"{len(waiting)} record(s) still waiting for the watermark (now {wib_and_utc(w)}): "
            "not processed yet; replay with --drain to process the end of the input."
        )
    final = t["final"]
    if final is not None and final["open_deadline_ms"] is not None:
        w = max(t["watermark_ms"].values(), default=NEG_INF)
        lines.append(
            f"Not yet due: the open cycle's deadline is {wib_and_utc(final['open_deadline_ms'])}; the watermark "
            f"reached only {wib_and_utc(w)} (a deadline fires once the watermark is past it)."
        )
    if t["dropped"] is not None:
        lines.append(
            f"State expired: dropped by retention at {wib_and_utc(t['dropped']['at_ms'])} (last record "
            f"{wib_and_utc(t['dropped']['last_effective_ms'])}); a later record starts afresh."
        )
    ledger_rejected = [f for f in t["records"] if f["outcome"] == "dead-lettered" and f["stream"] == Stream.L.name]
    if not debits and not waiting and ledger_rejected:
        # A rejected ledger record says nothing of what the core bank did: it may be a debit.
        lines.append(
            f"No debit was processed, but {len(ledger_rejected)} ledger record(s) of this reference were "
            "dead-lettered (above): whether the customer's money was taken is not known from this input; "
            "look at the core bank's journal."
        )
    elif not debits and not waiting:
        lines.append("No debit was processed: the customer's money was not taken, so nothing is refunded.")
    if not types and not lines:
        lines.append("No refund was decided.")
    if "refund.held" in types and not t["incidents_known"]:
        lines.append("A hold names its incidents; trace with --all-partitions to see the incidents themselves.")
    return lines


# -- text ------------------------------------------------------------------------------------


def _text_time(text: Any) -> str:
    try:
        return wib_and_utc(parse_ms(text)) if isinstance(text, str) else "?"
    except BadTimestamp:
        return str(text)


def _rp(amount: int | None) -> str:
    from ..core.alerts import rupiah

    return rupiah(amount) if amount is not None else "-"


def _grace_text(hold: dict[str, Any], h: dict[str, Any]) -> str:
    try:
        return f"{(parse_ms(hold['held_until']) - h['resolved_at_ms']) / 60_000:.0f} min"
    except (BadTimestamp, KeyError, TypeError):
        return "the grace"


def _ids_text(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "?"


def _ended_by(h: dict[str, Any] | None) -> str:
    """Which resolution ended a hold (`hold_incidents`), in words; empty when not known."""
    if h is None or h.get("ended_by_incident") is None:
        return ""
    last = "the last of its incidents" if len(h["incident_ids"]) > 1 else "its incident"
    return f": {last} to resolve, {h['ended_by_incident']}, resolved at {wib_and_utc(h['resolved_at_ms'])}"


def _incident_when(status: Any, times: dict[str, int | None] | None) -> str:
    """When an incident's alert took effect for the holds, in words; an `updated` alert last
    means the incident was still open at the end of what was replayed."""
    if times is None:
        return ""
    if status == "opened":
        return f" at {wib_and_utc(times['opened_at_ms'])}" if times.get("opened_at_ms") is not None else ""
    if status == "resolved":
        return f" at {wib_and_utc(times['resolved_at_ms'])}" if times.get("resolved_at_ms") is not None else ""
    return " (its latest alert: still open at the end of the input)" if times.get("resolved_at_ms") is None else ""


def render(t: dict[str, Any]) -> str:
    """Human text: a few lines per record and decision, times in WIB with UTC beside."""
    ref = escape_text(t["reference"])
    lines = [
        f"Reference {ref}: partition {', '.join(map(str, t['partitions']))}, "
        f"{len(t['records'])} input record(s), {len(t['decisions'])} decision(s). Times: WIB (UTC+7), UTC in brackets."
    ]
    if len(t["partitions"]) > 1:
        lines.append(
            f"WARNING: this reference's records are on {len(t['partitions'])} partitions. Each partition decides "
            "alone: a settlement or reversal on one is not counted for a debit on another, so a refund below can be "
            "for a payment that settled on the other partition. Were partitions added to the input topics? "
            "(README, 'Input partitions are fixed')"
        )
    lines.append("Input records (in processing order; dead-lettered ones last):")
    for f in t["records"]:
        where = f"{f['topic']}[{f['partition']}]@{f['offset']}"
        kafka = wib_and_utc(f["kafka_time_ms"]) if f["kafka_time_ms"] is not None else "no Kafka time"
        if f["outcome"] == "dead-lettered":
            lines.append(f"  {where} DEAD-LETTERED: {f['reason']} (Kafka time {kafka})")
            continue
        lines.append(
            f"  {where} {f['type']} {_rp(f['amount'])} event_id {escape_text(f['event_id'])}: {f['outcome'].upper()}"
        )
        lines.append(
            f"      occurred_at {f['occurred_at']}; effective {wib_and_utc(f['effective_ms'])}; Kafka time {kafka}"
        )
        wp = f.get("watermark_when_processed_ms")
        lines.append(
            f"      watermark when read (in this input's order) {wib_and_utc(f['watermark_on_arrival_ms'])}"
            + (f", processed when it reached {wib_and_utc(wp)}" if wp is not None else ", not processed yet")
        )
        if f.get("reason"):
            lines.append(f"      {f['reason']}")
        if f.get("after"):
            a = f["after"]
            lines.append(
                f"      after it: net {_rp(a['net'])}, settled {_rp(a['settled'])}, active refunds {_rp(a['active'])}"
            )
    if t["deadlines"]:
        lines.append("Deadlines:")
        for dl in t["deadlines"]:
            what = ", ".join(f"{k} {rid}" for k, rid in dl["decided"]) or "nothing"
            lines.append(
                f"  {wib_and_utc(dl['deadline_ms'])}: owed = net {dl['net']} - settled {dl['settled']} - active "
                f"{dl['active']} = {dl['owed']} -> {what}"
            )
    holds = {str(h["refund_id"]): h for h in t.get("holds", ())}
    lines.append("Decisions:" if t["decisions"] else "Decisions: none")
    for d in t["decisions"]:
        v = d["value"]
        if d["role"] == "refunds":
            word = REFUND_WORDS.get(v["type"], v["type"])
            line = f"  {word} {v['refund_id']} {_rp(v['amount'])} reason {v['reason']} at {wib_and_utc(d['at_ms'])}"
            if v.get("cancels_refund_id"):
                line += f" (cancels {v['cancels_refund_id']}, cancel_id {v.get('cancel_id')})"
            lines.append(line)
            ev = v.get("evidence") or {}
            if "net_debited" in ev:
                lines.append(
                    f"      numbers: net {ev['net_debited']}, settled {ev['settled_amount']}, "
                    f"active before {ev['active_refunds_before']}"
                )
            if v["type"] == "refund.held":
                lines.append(
                    f"      held while an incident covering the payment is open: {_ids_text(_incident_ids(v))} open "
                    f"at the deadline; paid by {_text_time(v.get('release_by'))} at the latest unless the payment "
                    "settles"
                )
            hold = v.get("hold")
            if isinstance(hold, dict):
                since, until = _text_time(hold.get("held_from")), _text_time(hold.get("held_until"))
                lines.append(
                    f"      after a hold from {since} to {until} ({(hold.get('held_ms') or 0) / 60_000:.0f} min), "
                    f"ended by {hold.get('released_because')}{_ended_by(holds.get(str(v['refund_id'])))}; "
                    f"incidents that kept it on: {_ids_text(_incident_ids(hold))}"
                )
        else:
            lines.append(f"  alert {v['kind']} [{v['severity']}]: {v['summary']}")
    # Each incident behind a hold: the alert that opened it and its latest one.
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for inc in t["incidents_behind_holds"]:
        by_incident.setdefault(str(inc.get("incident_id")), []).append(inc)
    times = t.get("incident_times") or {}
    for incident_id, alerts in by_incident.items():
        for inc in [alerts[0]] if len(alerts) == 1 else [alerts[0], alerts[-1]]:
            lines.append(
                f"  incident {inc.get('incident_id')} {inc.get('status')}"
                f"{_incident_when(inc.get('status'), times.get(incident_id))}: {inc.get('summary')}"
            )
    lines.append("Why:")
    lines += [f"  {x}" for x in t["why"]]
    return "\n".join(lines)
