"""An independent oracle of the refund-hold rules, for one partition run to the end (drain).

Written from the text of /work/shared/CONTRACT.md only ("Time", "Per-reference rules" and
"Refund holds during an incident"), independent of the engine (`stream.core`) and of
tests/reference_model.py: its own time parsing, effective times, incident timeline and rules.
The one thing taken from the project is `stream.core.ids.refund_id`, the id derivation, which
the contract leaves open ("e.g. derived from reference and cycle deadline").
tests/test_hold_oracle.py compares it with `PartitionEngine` on random cases.

Where the contract is silent or open to two readings, the oracle makes a CHOICE (marked so in
the code). The engine makes the same ones: the comparison finds no difference, and README
states most of them ("Refund holds during an incident" and its table of readings).

- Held amounts count as refunded in `owed` (the contract's formula names only `active`): the
  amounts of a reference's *other* holds are subtracted at a deadline, at a hold's end and when
  a record is checked for ending a hold.
- A record ends the holds it brings to `owed <= 0` oldest first, with `refund.hold_released`,
  reason `LATE_SETTLEMENT` / `LATE_REVERSAL` (the record's type otherwise).
- A `failed` record, or a first `settled` one that leaves something owed, does not end a hold
  (it is not on the contract's list of what ends one); at the hold's end the reason is rule 2's
  then (`PAYMENT_FAILED`, `EXCESS_DEBIT`).
- A hold lasts while any covering incident is open, including one opened after the deadline,
  and ends at `resolved + G` of the last one (at that instant, no longer on); coverage is
  judged with the reference's `requested` record as known then (one may arrive during the hold).
  A deadline within G after the incidents resolved is not held: an incident must be *open at*
  the deadline (G extends holds, it does not start them).
- The `incident_id` of a hold covered by several incidents: the earliest opened, then the
  smallest id.
- A hold ending at a timer with nothing owed: `refund.hold_released` with reason None (the
  contract does not fix it; the comparison ignores the engine's reason there).
- Order at one instant: records, then deadlines, then hold ends, then retention; timers of one
  instant by the (stream, offset) of the record that set them.
- A merchant pool is the scope `merchant` with id `MCC-<mcc>` (`MCC-unknown` without `mcc`):
  the detector's naming of pools (README); the contract says only that a pool covers its
  merchants. The escaping of a merchant id that itself begins with `MCC-` is not modelled (the
  test's merchant ids never do).
- Incidents: the first `opened` and first `resolved` alert of an incident id, at `occurred_at`
  plus the detector's decision delay (`probe`); other alerts and statuses are ignored.

Input, a case (dict):
  params: T, A, R, F, G, H, probe (all ms);
  records: {stream: "P" | "L", offset, ts (Kafka timestamp ms or None), value (dict), valid
    (False: dead-lettered)}, each stream's records in offset order;
  alerts: FAILURE_BURST alert values (kind, status, incident_id, scope {type, id}, occurred_at).
Output: the refund decisions (dicts with `type`, `reference`, `refund_id`, `amount`, `reason`,
`at`, ...), in processing order.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stream.core.ids import refund_id  # the id derivation only (the contract's e.g.)

# Kinds of heap items, in their order at one instant.
REC, DEADLINE, HOLD_END, RETENTION = 0, 1, 2, 3
CANCEL_REASONS = {"settled": "LATE_SETTLEMENT", "reversed": "LATE_REVERSAL"}


def parse_ms(text: str) -> int:
    """RFC 3339 -> epoch ms, digits finer than ms truncated."""
    t = text
    frac = ""
    if "." in t[19:]:  # split the fraction off by hand to truncate (not round) it to ms
        head, rest = t[:19], t[20:]
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, zone = rest[:i], rest[i:]
        t = head + zone
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    ms = int(datetime.fromisoformat(t).timestamp()) * 1000
    if frac:
        ms += int((frac + "000")[:3])
    return ms


@dataclass
class Incident:
    iid: str
    stype: str
    sid: str
    opened: int
    resolved: int | None = None


def timeline(alerts: list[dict[str, Any]], probe_ms: int) -> dict[str, Incident]:
    """Incidents from the detector's decisions: event time = alert occurred_at + decision delay."""
    incs: dict[str, Incident] = {}
    for a in alerts:
        if a.get("kind") != "FAILURE_BURST":
            continue
        t = parse_ms(a["occurred_at"]) + probe_ms
        iid = a["incident_id"]
        inc = incs.get(iid)
        if a["status"] == "opened" and inc is None:
            incs[iid] = Incident(iid, a["scope"]["type"], a["scope"]["id"], t)
        elif a["status"] == "resolved" and inc is not None and inc.resolved is None:
            inc.resolved = t
    return incs


def covers(inc: Incident, request: dict[str, Any] | None) -> bool:
    """Scope `all`, or the payment's switch, acquirer, issuer or merchant (or its merchant pool)."""
    if inc.stype == "all":
        return True
    if request is None:
        return False
    if inc.stype in ("switch", "acquirer", "issuer"):
        return bool(request.get(inc.stype + "_id") == inc.sid)
    if inc.stype == "merchant":
        if inc.sid.startswith("MCC-"):  # CHOICE: a merchant pool covers the merchants of its MCC
            return "MCC-" + (request.get("mcc") or "unknown") == inc.sid
        return bool(request.get("merchant_id") == inc.sid)
    return False


def open_at(inc: Incident, t: int) -> bool:
    """Opened at or before t and not resolved before t."""
    return inc.opened <= t and not (inc.resolved is not None and inc.resolved < t)


@dataclass
class Ref:
    """A reference's state: records seen per stream, amounts, its request, refunds and holds."""

    seen: tuple[set[str], set[str]] = field(default_factory=lambda: (set(), set()))
    net: int = 0
    settled: int = 0
    has_settlement: bool = False
    failed: bool = False
    request: dict[str, Any] | None = None
    cycle: int | None = None
    cycle_key: tuple[int, int] | None = None
    refunds: list[dict[str, Any]] = field(default_factory=list)  # {id, amount, active, after_hold?}
    holds: list[dict[str, Any]] = field(default_factory=list)
    last_eff: int = 0

    @property
    def active(self) -> int:
        return sum(r["amount"] for r in self.refunds if r["active"])

    def reason(self) -> str:
        if self.settled > 0:
            return "EXCESS_DEBIT"
        if self.failed:
            return "PAYMENT_FAILED"
        return "SETTLEMENT_TIMEOUT"


def effective_times(case: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(eff, record) of the valid records: clock guard, then `max(occurred_at, max_S before - A)`."""
    p = case["params"]
    lateness, skew = p["A"], p["F"]
    mx: dict[str, int | None] = {"P": None, "L": None}
    out = []
    for r in case["records"]:
        if not r["valid"]:
            continue  # dead-lettered: counts nowhere
        occ = parse_ms(r["value"]["occurred_at"])
        ts = r.get("ts")
        if ts is not None and ts >= 0 and occ - ts > skew:
            occ = ts  # clock guard
        s = r["stream"]
        prev = mx[s]
        eff = occ if prev is None else max(occ, prev - lateness)
        mx[s] = occ if prev is None else max(prev, occ)
        out.append((eff, r))
    return out


def run(case: dict[str, Any], cov: Counter[str] | None = None) -> list[dict[str, Any]]:
    """The case's refund decisions, in processing order. `cov`, if given, counts the situations
    met (holds ended by a record, at resolution + G, at deadline + H, boundary instants, ...)."""
    p = case["params"]
    timeout, retention, grace, max_hold = p["T"], p["R"], p["G"], p["H"]
    incs = sorted(timeline(case["alerts"], p["probe"]).values(), key=lambda i: (i.opened, i.iid))
    refs: dict[str, Ref] = {}
    dropped: set[str] = set()
    out: list[dict[str, Any]] = []
    heap: list[tuple[int, int, int, int, int, str, Any]] = []
    seq = 0

    def push(t: int, kind: int, key: tuple[int, int], ref: str, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, kind, key[0], key[1], seq, ref, payload))

    for eff, r in effective_times(case):
        push(eff, REC, (0 if r["stream"] == "P" else 1, r["offset"]), r["value"]["reference"], r)

    def emit(ref: str, **kw: Any) -> None:
        out.append({"reference": ref, **kw})

    def note(what: str) -> None:
        if cov is not None:
            cov[what] += 1

    def owed_for(st: Ref, exclude: dict[str, Any] | None = None) -> int:
        # CHOICE: the amounts of the reference's other holds count as refunded.
        others: int = sum(h["amount"] for h in st.holds if h is not exclude)
        return st.net - st.settled - st.active - others

    def hold_on(st: Ref, t: int) -> bool:
        # The hold lasts while any covering incident is open, and ends G after the last
        # covering incident resolved.
        return any(
            covers(inc, st.request) and inc.opened <= t and (inc.resolved is None or t < inc.resolved + grace)
            for inc in incs
        )

    def maybe_retire(ref: str, st: Ref, t: int) -> None:
        if st.cycle is None and not st.holds and t >= st.last_eff + retention:
            push(t, RETENTION, (9, 9), ref, None)

    while heap:
        t, kind, _s, _o, _seq, ref, payload = heapq.heappop(heap)
        if kind == REC:
            r = payload
            v = r["value"]
            s = 0 if r["stream"] == "P" else 1
            st = refs.get(ref)
            if st is None:
                if ref in dropped:
                    note("record_after_retention_drop")
                st = refs[ref] = Ref()
            if v["event_id"] in st.seen[s]:
                continue  # duplicate: ignored entirely
            st.seen[s].add(v["event_id"])
            st.last_eff = t
            typ = v["type"]
            if typ == "debited":
                st.net += v["amount"]
                if st.cycle is None:  # rule 1
                    st.cycle = t + timeout
                    st.cycle_key = (s, r["offset"])
                    push(st.cycle, DEADLINE, (s, r["offset"]), ref, st.cycle)
            elif typ == "reversed":
                st.net -= v["amount"]
            elif typ == "settled":
                if not st.has_settlement:
                    st.has_settlement = True
                    st.settled = v["amount"]
            elif typ == "failed":
                st.failed = True
            elif typ == "requested" and st.request is None:
                st.request = v
            reason = CANCEL_REASONS.get(typ, "?" + typ)
            # rule 3
            if any(x["active"] for x in st.refunds):
                excess = st.active - max(0, st.net - st.settled)
                while excess > 0:
                    newest = next((x for x in reversed(st.refunds) if x["active"]), None)
                    if newest is None or newest["amount"] > excess:
                        break
                    newest["active"] = False
                    excess -= newest["amount"]
                    note("cancel_after_hold" if newest.get("after_hold") else "cancel")
                    emit(
                        ref,
                        type="refund.cancel_requested",
                        refund_id=newest["id"],
                        amount=newest["amount"],
                        reason=reason,
                        at=t,
                    )
            # Holds ended by a record bringing owed to 0 or less (CHOICE: oldest first).
            for h in list(st.holds):
                if owed_for(st, exclude=h) <= 0:
                    st.holds.remove(h)
                    note("hold_end_record")
                    emit(
                        ref,
                        type="refund.hold_released",
                        refund_id=h["id"],
                        amount=h["amount"],
                        reason=reason,
                        at=t,
                        deadline=h["deadline"],
                        by="record",
                    )
            push(t + retention, RETENTION, (s, r["offset"]), ref, None)
        elif kind == DEADLINE:
            st = refs.get(ref)
            if st is None or st.cycle != payload:
                continue
            key = st.cycle_key
            st.cycle = st.cycle_key = None
            owed = owed_for(st)
            if owed > 0:
                reason = st.reason()
                rid = refund_id(ref, t)
                covering = [i for i in incs if open_at(i, t) and covers(i, st.request)] if max_hold > 0 else []
                if st.holds:
                    note("deadline_with_other_hold")
                if any(i.opened == t for i in covering):
                    note("deadline_at_incident_open_instant")
                if any(i.resolved == t for i in covering):
                    note("deadline_at_incident_resolve_instant")
                if (
                    reason == "SETTLEMENT_TIMEOUT"
                    and not covering
                    and any(
                        i.resolved is not None and i.resolved < t <= i.resolved + grace and covers(i, st.request)
                        for i in incs
                    )
                ):
                    note("deadline_in_grace_not_held")
                if reason == "SETTLEMENT_TIMEOUT" and covering:
                    if len(covering) > 1:
                        note("held_multi_covering")
                    if st.request is None:
                        note("held_without_request")
                    # CHOICE: the incident named is the earliest opened (then smallest id).
                    h = {
                        "id": rid,
                        "deadline": t,
                        "amount": owed,
                        "incident_id": covering[0].iid,
                        "release_by": t + max_hold,
                        "req_missing": st.request is None,
                    }
                    st.holds.append(h)
                    emit(
                        ref,
                        type="refund.held",
                        refund_id=rid,
                        amount=owed,
                        reason=reason,
                        at=t,
                        deadline=t,
                        incident_id=covering[0].iid,
                        release_by=t + max_hold,
                    )
                    # The instants the hold may end at a timer: deadline + H, and every
                    # resolution + G before it (hold_on decides whether it does).
                    ends = {t + max_hold} | {
                        i.resolved + grace
                        for i in incs
                        if i.resolved is not None and t <= i.resolved + grace < t + max_hold
                    }
                    assert key is not None
                    for end in sorted(ends):
                        push(end, HOLD_END, key, ref, rid)
                else:
                    st.refunds.append({"id": rid, "amount": owed, "active": True})
                    emit(ref, type="refund.requested", refund_id=rid, amount=owed, reason=reason, at=t, deadline=t)
            maybe_retire(ref, st, t)
        elif kind == HOLD_END:
            st = refs.get(ref)
            if st is None:
                continue
            hold = next((x for x in st.holds if x["id"] == payload), None)
            if hold is None:
                continue
            if t < hold["release_by"] and hold_on(st, t):
                continue
            st.holds.remove(hold)
            owed = owed_for(st)
            if t == hold["deadline"]:
                note("hold_end_at_its_deadline")
            note("hold_end_max" if t >= hold["release_by"] else "hold_end_incident")
            if t == hold["release_by"] and not hold_on(st, t):
                note("hold_end_tie_max_and_grace")
            if st.request is not None and hold["req_missing"]:
                note("hold_request_arrived_during")
            if any(i.opened > hold["deadline"] and i.opened <= t and covers(i, st.request) for i in incs):
                note("hold_extended_by_later_incident")
            if st.holds:
                note("hold_end_with_other_holds")
            if owed > 0 and owed != hold["amount"]:
                note("hold_end_amount_changed")
            if owed > 0 and st.reason() != "SETTLEMENT_TIMEOUT":
                note("hold_end_reason_" + st.reason())
            if owed > 0:
                st.refunds.append({"id": hold["id"], "amount": owed, "active": True, "after_hold": True})
                emit(
                    ref,
                    type="refund.requested",
                    refund_id=hold["id"],
                    amount=owed,
                    reason=st.reason(),
                    at=t,
                    deadline=hold["deadline"],
                    after_hold=True,
                )
            else:
                # CHOICE (not fixed by the contract): no reason for a release at a timer.
                emit(
                    ref,
                    type="refund.hold_released",
                    refund_id=hold["id"],
                    amount=hold["amount"],
                    reason=None,
                    at=t,
                    deadline=hold["deadline"],
                    by="timer",
                )
            maybe_retire(ref, st, t)
        else:  # retention (rule 4)
            st = refs.get(ref)
            if st is None or st.last_eff + retention > t or st.cycle is not None or st.holds:
                continue
            del refs[ref]
            dropped.add(ref)
    return out
