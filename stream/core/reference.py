"""The per-reference state machine: cycles, deadlines, refunds and cancellations (CONTRACT.md
"Per-reference rules"). It is told records and deadlines in processing order by `partition` and
returns decisions; it never decides when things happen. Imports nothing outside the core.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import blake2b
from operator import itemgetter
from typing import Any, Final, NamedTuple

from . import ids
from .alerts import (
    cancellation_alert,
    debit_account_mismatch_alert,
    over_refund_alert,
    reversal_account_mismatch_alert,
)
from .decisions import Decision
from .eventtime import parse_ms
from .holds import Hold, IncidentTimeline, ReleasedBecause
from .records import EVENT_ID, OCCURRED_AT_MS, REFERENCE, TYPE, LedgerEvent, PaymentEvent
from .refunds import (
    Refund,
    cancellation_record,
    hold_released_record,
    refund_held_record,
    refund_request_record,
)

# Version of a saved reference entry (`ReferenceState.to_json`): 4 saves the request without
# its type and reference (always "requested" and the entry's own) and leaves out the request's
# effective time, `net` and `settled` when they equal what the rest gives (its occurred time, the
# debited less the reversed total, the settlement's amount): a release that reads only 3 would
# misread them, so it refuses 4. 3 names every field and leaves out empty ones; 2 added holds
# ("h") to the two-letter keys of 1 (entries without "v"). `from_json` reads all four. A new
# optional field of 4 needs no new version: an absent one reads as empty, and a release that
# does not know it restores the rest by name.
STATE_VERSION = 4


class StateVersionError(ValueError):
    """Saved state of a version this code does not read (a newer release wrote it): refused
    rather than misread. A partition's metadata (`partition.META_VERSION`) or a reference entry."""


# Facts kept as evidence: named tuples, small in memory, saved as JSON arrays in field order and
# rebuilt by name (`Type(*saved)`): a field added at the end with a default keeps older saved
# entries readable. Expanded only when a refund is written. A ledger entry's array holds its
# first five fields, whatever release reads it; its account and its guarded date, when it has
# one, are saved in lists of their own (`to_json`).
class LedgerEntry(NamedTuple):
    """A processed `debited` or `reversed` record."""

    event_id: str
    entry_id: str
    amount: int
    occurred_at: str
    effective_at_ms: int
    # The account the entry was booked on when it is not the reference's `account_id` (the
    # first debit's), else None: a reference debited from two accounts shows the refund service
    # whose money moved, and the common single-account reference stores nothing more.
    account_id: str | None = None
    # The date the clock guard counts a first debit at (its Kafka timestamp) when the debit is
    # dated more than F ahead of it and is processed before the reference's request, else None:
    # `CLOCK_MISMATCH` compares it with the request's once that comes (`partition._check_clocks`),
    # and neither the text nor the effective time says it. Other entries' dates are never
    # compared, so only this one pays for finding it out (a parse of its text).
    guarded_at_ms: int | None = None


class Settlement(NamedTuple):
    """The first processed `settled` record."""

    event_id: str
    amount: int
    occurred_at: str
    effective_at_ms: int


class Failure(NamedTuple):
    """The first processed `failed` record."""

    event_id: str
    occurred_at: str
    effective_at_ms: int
    response_code: str | None


class RecordKey(NamedTuple):
    """Where a record came from in its partition: the stream (0 = P, 1 = L) and its offset."""

    stream: int
    offset: int


class RetentionTimer(NamedTuple):
    """A pending retention check: its time and the record that set it (the heap's tie-break)."""

    at_ms: int
    stream: int
    offset: int


# A reference hammered with thousands of debits keeps (and shows as evidence) only its first
# EVIDENCE_FIRST and last EVIDENCE_LAST entries per list, plus their count and sum: state and
# refund records stay small whatever the input, and the totals still add up.
EVIDENCE_FIRST: Final = 20
EVIDENCE_LAST: Final = 5
# Deduplication keeps the first SEEN_PLAIN event ids of a stream as they are, and further ones as
# 96-bit digests in a set: a reference hammered with thousands of distinct events costs 24
# characters per event in its saved state instead of up to 128, and a lookup stays O(1). (Two
# different ids of one reference share a digest with probability ~n^2 / 2^97: never in practice.)
SEEN_PLAIN: Final = 16
# A new reference's `last_key` (one shared tuple: replaced at its first record).
_NO_KEY: Final = RecordKey(0, 0)


@dataclass(slots=True, init=False)
class ReferenceState:
    reference: str
    # Event ids processed per stream: a reference sees a handful, so lists beat sets in memory.
    seen_p: list[str]
    seen_l: list[str]
    # Digests of the event ids after the first SEEN_PLAIN, per stream (None while there are none).
    seen_more_p: set[str] | None
    seen_more_l: set[str] | None
    debits: list[LedgerEntry]
    reversals: list[LedgerEntry]
    # Count and rupiah of every processed debit / reversal (the lists above may be cut).
    debit_count: int
    debited_total: int
    reversal_count: int
    reversed_total: int
    settlement: Settlement | None
    failure: Failure | None
    request: PaymentEvent | None
    request_eff_ms: int | None
    account_id: str | None
    net: int
    settled: int
    # The open cycle: its deadline and the (stream, offset) of the debit that opened it.
    cycle_deadline_ms: int | None
    cycle_opened_by: RecordKey | None
    refunds: list[Refund]
    last_eff_ms: int
    last_key: RecordKey
    # The pending retention timer, if any.
    retention: RetentionTimer | None
    # Refunds held during an incident, oldest first (at most one per cycle).
    holds: list[Hold]

    # Written out rather than generated by `dataclass`: compiled (`make compiled`), the generated
    # `__init__` stays interpreted Python, a frame and a generic attribute store per field, at
    # every reference's first record and every burst view (`facts_copy`). A list left out (None)
    # is a new empty one.
    def __init__(
        self,
        reference: str,
        seen_p: list[str] | None = None,
        seen_l: list[str] | None = None,
        seen_more_p: set[str] | None = None,
        seen_more_l: set[str] | None = None,
        debits: list[LedgerEntry] | None = None,
        reversals: list[LedgerEntry] | None = None,
        debit_count: int = 0,
        debited_total: int = 0,
        reversal_count: int = 0,
        reversed_total: int = 0,
        settlement: Settlement | None = None,
        failure: Failure | None = None,
        request: PaymentEvent | None = None,
        request_eff_ms: int | None = None,
        account_id: str | None = None,
        net: int = 0,
        settled: int = 0,
        cycle_deadline_ms: int | None = None,
        cycle_opened_by: RecordKey | None = None,
        refunds: list[Refund] | None = None,
        last_eff_ms: int = 0,
        last_key: RecordKey = _NO_KEY,
        retention: RetentionTimer | None = None,
        holds: list[Hold] | None = None,
    ) -> None:
        self.reference = reference
        self.seen_p = [] if seen_p is None else seen_p
        self.seen_l = [] if seen_l is None else seen_l
        self.seen_more_p = seen_more_p
        self.seen_more_l = seen_more_l
        self.debits = [] if debits is None else debits
        self.reversals = [] if reversals is None else reversals
        self.debit_count = debit_count
        self.debited_total = debited_total
        self.reversal_count = reversal_count
        self.reversed_total = reversed_total
        self.settlement = settlement
        self.failure = failure
        self.request = request
        self.request_eff_ms = request_eff_ms
        self.account_id = account_id
        self.net = net
        self.settled = settled
        self.cycle_deadline_ms = cycle_deadline_ms
        self.cycle_opened_by = cycle_opened_by
        self.refunds = [] if refunds is None else refunds
        self.last_eff_ms = last_eff_ms
        self.last_key = last_key
        self.retention = retention
        self.holds = [] if holds is None else holds

    def has_seen(self, stream: int, event_id: str) -> bool:
        """Whether an event with this id was processed on `stream` (0 = P, 1 = L)."""
        if event_id in (self.seen_p if stream == 0 else self.seen_l):
            return True
        more = self.seen_more_p if stream == 0 else self.seen_more_l
        return more is not None and _id_digest(event_id) in more

    def _mark_seen(self, stream: int, event_id: str) -> None:
        plain = self.seen_p if stream == 0 else self.seen_l
        if len(plain) < SEEN_PLAIN:
            plain.append(event_id)
            return
        if stream == 0:
            if self.seen_more_p is None:
                self.seen_more_p = set()
            self.seen_more_p.add(_id_digest(event_id))
        else:
            if self.seen_more_l is None:
                self.seen_more_l = set()
            self.seen_more_l.add(_id_digest(event_id))

    @property
    def active(self) -> int:
        refunds = self.refunds  # (most references have none: then no generator)
        return sum(r.amount for r in refunds if r.active) if refunds else 0

    @property
    def held(self) -> int:
        holds = self.holds
        return sum(h.amount for h in holds) if holds else 0

    # -- records ---------------------------------------------------------------------------

    def apply(
        self,
        stream: int,
        offset: int,
        eff_ms: int,
        event: PaymentEvent | LedgerEvent,
        timeout_ms: int,
        partition: int,
        own_accounts: frozenset[str],
    ) -> tuple[list[Decision], int | None] | None:
        """Apply one record in processing order. Returns decisions and, when the record opened
        a cycle, the new deadline (the caller schedules the timer). `own_accounts`: the ledger's
        own accounts (`Params.ledger_own_accounts`), on which a reversal raises no alert.

        Duplicates (same `event_id` on the same stream) are ignored entirely: returns None.
        """
        may_over_refund = self.apply_facts(stream, eff_ms, event)
        if may_over_refund is None:
            return None
        self.last_eff_ms = eff_ms
        # (`tuple.__new__`: a named tuple's own `__new__` is a Python function, a frame a record.)
        key = self.last_key = _new_tuple(RecordKey, (1 if stream else 0, offset))
        opened: int | None = None
        alerts: list[Decision] | None = None
        if type(event) is LedgerEvent:
            if event.type == "debited":
                if self.cycle_deadline_ms is None:
                    opened = self.cycle_deadline_ms = eff_ms + timeout_ms
                    self.cycle_opened_by = key
                if self.debits[-1].account_id is not None:  # (its entry: set by `apply_facts`)
                    return self._other_account_debited(event, eff_ms, partition), opened
                if self.reversals and self.debit_count == 1:
                    alerts = self._reversed_before_the_first_debit(eff_ms, partition, own_accounts)
            elif self.debits and self.reversals[-1].account_id is not None:
                alerts = self._reversed_to_another_account(eff_ms, partition, own_accounts)
        if self.holds:
            out = self._cancel_excess(event, eff_ms, partition) if may_over_refund and self._any_active() else []
            out.extend(self._release_covered_holds(event, eff_ms, partition))
        elif not may_over_refund or not self.refunds or not self._any_active():
            out = []
        else:
            out = self._cancel_excess(event, eff_ms, partition)
        return (alerts + out if alerts else out), opened

    def _other_account_debited(self, debit: LedgerEvent, eff_ms: int, partition: int) -> list[Decision]:
        # A debit on an account other than the first debit's: one alert per such account (as
        # far as the kept debits show), not per debit, so a person is asked once who is owed.
        # Otherwise decided as any debit: it cancels no refund, and holds are asked as always.
        account = debit.account_id
        seen = any(x.account_id == account for x in self.debits[:-1])
        out = [] if seen else [debit_account_mismatch_alert(self, debit, eff_ms, partition)]
        if self.holds:
            out.extend(self._release_covered_holds(debit, eff_ms, partition))
        return out

    def _reversed_to_another_account(self, eff_ms: int, partition: int, own_accounts: frozenset[str]) -> list[Decision]:
        # A reversal booked on an account other than the first debit's, of a reference already
        # debited. Unless that account was debited too, or is one the ledger books reversals on
        # for itself (a suspense account, from which the customer is paid back apart), the
        # reversal gave the money to someone not charged while the net debit counts it as given
        # back (no refund for it): one alert per such account, as far as the kept entries show.
        # An earlier reversal on it was alerted at itself or, ahead of every debit, at the first
        # debit.
        reversal = self.reversals[-1]
        account = reversal.account_id
        if account is None or account in own_accounts or any(x.account_id == account for x in self.debits):
            return []
        if any(x.account_id == account for x in self.reversals[:-1]):
            return []
        return [reversal_account_mismatch_alert(self, reversal, account, eff_ms, partition)]

    def _reversed_before_the_first_debit(
        self, eff_ms: int, partition: int, own_accounts: frozenset[str]
    ) -> list[Decision]:
        # Reversals processed ahead of every debit (dated earlier) are judged once the first
        # debit names the reference's account: those on another account, not one of the
        # ledger's own, are alerted now, once per account, in the order processed.
        out: list[Decision] = []
        alerted = {self.account_id}
        for reversal in self.reversals:
            account = reversal.account_id
            if account is not None and account not in alerted and account not in own_accounts:
                alerted.add(account)
                out.append(reversal_account_mismatch_alert(self, reversal, account, eff_ms, partition))
        return out

    def _any_active(self) -> bool:
        return any(r.active for r in self.refunds)

    def apply_facts(
        self, stream: int, eff_ms: int, event: PaymentEvent | LedgerEvent, intern: bool = True
    ) -> bool | None:
        """The facts part of a record: what was debited, reversed, settled, failed, requested.
        Returns None for a duplicate (ignored), else whether the record can make active refunds
        exceed what is owed (a settlement or reversal). Burst signals use this alone on a copy
        (`facts_copy`) to judge payments ahead of the decisions (`intern` False: the copy is
        dropped after, its request needs no shared strings)."""
        # `has_seen` and `_mark_seen` inline for the common reference (few events, no digests).
        event_id = event[EVENT_ID]
        if stream:
            plain, more = self.seen_l, self.seen_more_l
        else:
            plain, more = self.seen_p, self.seen_more_p
        if event_id in plain or (more is not None and _id_digest(event_id) in more):
            return None
        if len(plain) < SEEN_PLAIN:
            plain.append(event_id)
        else:
            self._mark_seen(int(stream), event_id)
        may_over_refund = False
        if type(event) is LedgerEvent:
            _id, typ, _ref, occurred_at, occ_ms, amount, entry_id, account_id = event
            if typ == "debited":
                self.net += amount
                self.debit_count += 1
                self.debited_total += amount
                entries = self.debits
                if self.account_id is None:
                    self.account_id = account_id
            else:
                self.net -= amount
                self.reversal_count += 1
                self.reversed_total += amount
                entries = self.reversals
                may_over_refund = True
            # One string compare per ledger record: the entry names its account only when it is
            # not the reference's (a reversal ahead of every debit names it too).
            other = None if account_id == self.account_id else account_id
            guarded = None
            if self.request is None and typ == "debited" and self.debit_count == 1 and parse_ms(occurred_at) != occ_ms:
                guarded = occ_ms
            entry = _new_tuple(LedgerEntry, (event_id, entry_id, amount, occurred_at, eff_ms, other, guarded))
            # `_keep`, inline.
            entries.append(entry)
            if len(entries) > EVIDENCE_FIRST + EVIDENCE_LAST:
                del entries[EVIDENCE_FIRST]
        else:
            assert type(event) is PaymentEvent
            payment_type = event[TYPE]
            if payment_type == "settled":
                if self.settlement is None:
                    self.settlement = _new_tuple(Settlement, (event_id, event.amount, event.occurred_at, eff_ms))
                    self.settled = event.amount
                    may_over_refund = True
            elif payment_type == "failed":
                if self.failure is None:
                    self.failure = _new_tuple(Failure, (event_id, event.occurred_at, eff_ms, event.response_code))
            elif self.request is None:
                self.request = _interned(event) if intern else event
                self.request_eff_ms = eff_ms
        return may_over_refund

    def facts_copy(self) -> ReferenceState:
        """A copy of the facts only (no cycle, refunds or holds), for `apply_facts` ahead."""
        return ReferenceState(
            self.reference,
            seen_p=list(self.seen_p),
            seen_l=list(self.seen_l),
            seen_more_p=set(self.seen_more_p) if self.seen_more_p is not None else None,
            seen_more_l=set(self.seen_more_l) if self.seen_more_l is not None else None,
            debits=list(self.debits),
            reversals=list(self.reversals),
            debit_count=self.debit_count,
            debited_total=self.debited_total,
            reversal_count=self.reversal_count,
            reversed_total=self.reversed_total,
            settlement=self.settlement,
            failure=self.failure,
            request=self.request,
            request_eff_ms=self.request_eff_ms,
            account_id=self.account_id,
            net=self.net,
            settled=self.settled,
        )

    def _cancel_excess(self, trigger: PaymentEvent | LedgerEvent, eff_ms: int, partition: int) -> list[Decision]:
        # Rule 3: cancel the newest refunds that the late settlement or reversal made
        # unnecessary; what cannot be cancelled whole is an over-refund for a person.
        out: list[Decision] = []
        excess = self.active - max(0, self.net - self.settled)
        active_before = self.active
        reason = "LATE_SETTLEMENT" if trigger.type == "settled" else "LATE_REVERSAL"
        while excess > 0:
            newest = next((r for r in reversed(self.refunds) if r.active), None)
            if newest is None or newest.amount > excess:
                break
            newest.active = False
            excess -= newest.amount
            cancel_id = ids.cancel_id(newest.refund_id, trigger.event_id)
            out.append(cancellation_record(self, newest, cancel_id, reason, trigger, eff_ms, partition, active_before))
            out.append(cancellation_alert(self, newest, cancel_id, reason, trigger, eff_ms, partition))
        if excess > 0:
            out.append(over_refund_alert(self, excess, trigger, eff_ms, partition))
        return out

    # -- timers ----------------------------------------------------------------------------

    def on_deadline(
        self,
        deadline_ms: int,
        partition: int,
        incidents: IncidentTimeline | None = None,
        max_hold_ms: int = 0,
        grace_ms: int = 0,
    ) -> list[Decision]:
        """Rule 2: at the cycle's deadline, request a refund for what is still owed; the cycle
        closes either way. With holds on (`max_hold_ms` > 0), a `SETTLEMENT_TIMEOUT` refund of
        a payment covered by an incident open at the deadline is held instead (`holds`): the
        caller schedules its end at the new hold's `release_at_ms`. Amounts already held by
        other cycles count as refunded here, so no amount is paid twice."""
        opened_by = self.cycle_opened_by
        self.cycle_deadline_ms = None
        self.cycle_opened_by = None
        active = self.active
        held = self.held
        owed = self.net - self.settled - active - held
        if owed <= 0:
            return []
        reason = self._reason()
        refund_id = ids.refund_id(self.reference, deadline_ms)
        if max_hold_ms > 0 and reason == "SETTLEMENT_TIMEOUT" and incidents is not None:
            covering = incidents.covering_open_at(self.request, deadline_ms)
            if covering:
                release_by = deadline_ms + max_hold_ms
                until, _chain = incidents.release_at(self.request, deadline_ms, grace_ms)
                hold = Hold(
                    refund_id,
                    deadline_ms,
                    owed,
                    [i.incident_id for i in covering],
                    release_by,
                    opened_by if opened_by is not None else (0, 0),
                    min(until, release_by),
                )
                self.holds.append(hold)
                return [refund_held_record(self, hold, partition, active, held)]
        refund = Refund(refund_id, owed, deadline_ms, reason, True)
        self.refunds.append(refund)
        return [refund_request_record(self, refund, partition, active, held_before=held)]

    def _reason(self) -> str:
        if self.settled > 0:
            return "EXCESS_DEBIT"
        if self.failure is not None:
            return "PAYMENT_FAILED"
        return "SETTLEMENT_TIMEOUT"

    def reschedule_holds(self, incidents: IncidentTimeline, grace_ms: int) -> list[Hold]:
        """A resolution became known: holds that now end earlier get a new `release_at_ms`.
        Returns those holds (the caller schedules their timers)."""
        moved = []
        for hold in self.holds:
            until, _chain = incidents.release_at(self.request, hold.deadline_ms, grace_ms, hold.incident_ids)
            at = min(until, hold.release_by_ms)
            if at != hold.release_at_ms:
                hold.release_at_ms = at
                moved.append(hold)
        return moved

    def on_hold_timer(
        self, at_ms: int, opened_by: tuple[int, int], incidents: IncidentTimeline, grace_ms: int, partition: int
    ) -> tuple[list[Decision], Hold | None]:
        """A hold's scheduled end at `at_ms` (every incident decision up to it is known). If a
        covering incident opened within the grace, the hold goes on: returns it rescheduled.
        Otherwise the hold ends: the refund is requested for what is owed now, or released."""
        hold = next((h for h in self.holds if h.opened_by == opened_by and h.release_at_ms == at_ms), None)
        if hold is None:
            return [], None  # a stale timer: the hold ended or was moved
        until, chain = incidents.release_at(self.request, hold.deadline_ms, grace_ms, hold.incident_ids)
        at = min(until, hold.release_by_ms)
        if at > at_ms:
            hold.release_at_ms = at
            return [], hold
        # The incidents that kept it on: those opened by now (a replay knows later ones too).
        for incident_id in chain:
            known = incidents.incidents.get(incident_id)
            if incident_id not in hold.incident_ids and known is not None and known.opened_at_ms <= at_ms:
                hold.incident_ids.append(incident_id)
        because: ReleasedBecause = "incident_resolved" if until <= at_ms else "max_hold"
        return self._end_hold(hold, because, None, at_ms, partition), None

    def _end_hold(
        self,
        hold: Hold,
        because: ReleasedBecause,
        trigger: PaymentEvent | LedgerEvent | None,
        at_ms: int,
        partition: int,
    ) -> list[Decision]:
        self.holds.remove(hold)
        active = self.active
        held = self.held
        owed = self.net - self.settled - active - held
        release = (hold, because, at_ms)
        if owed > 0 and trigger is None:
            refund = Refund(hold.refund_id, owed, hold.deadline_ms, self._reason(), True, at_ms)
            self.refunds.append(refund)
            return [refund_request_record(self, refund, partition, active, release, held)]
        hold_release_id = ids.hold_release_id(hold.refund_id)
        return [hold_released_record(self, hold_release_id, release, trigger, partition, active, held)]

    def _release_covered_holds(
        self, trigger: PaymentEvent | LedgerEvent, eff_ms: int, partition: int
    ) -> list[Decision]:
        # A record that brings what a hold would pay to 0 or less ends it without payment;
        # other holds' amounts count as refunded, oldest hold first.
        out: list[Decision] = []
        for hold in list(self.holds):
            if self.net - self.settled - self.active - (self.held - hold.amount) <= 0:
                out.extend(self._end_hold(hold, "owed_covered", trigger, eff_ms, partition))
        return out

    # -- persistence -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The saved form (version `STATE_VERSION`): named fields; empty, absent and derivable
        ones (counts of uncut evidence lists, the request's type and reference, and its
        effective time, `net` and `settled` when the rest gives them) left out, which keeps a
        reference under 1 KiB unless its evidence lists are long. Nested records are arrays in
        their named tuple's field order (the request's without its type and reference); ledger
        entries' accounts, when any entry of a list has one, are a list beside it
        (`debit_accounts`, `reversal_accounts`: one per entry, null for the reference's account),
        so a release that does not know them restores the entries as before; so are the request
        times of refunds requested at a hold's end (`refunds_requested_at_ms`: one per refund,
        null for one requested at its deadline; absent when no refund has one)."""
        # Once per changed reference per batch in the live worker: each field read once, named
        # tuples copied by slicing (orjson writes no tuple subclass; `x[:]` of one is a plain
        # tuple made by one copy, where `tuple(x)` iterates it), `map` where a comprehension would
        # cost a frame, and a reference's one debit (the common case) without `map`'s setup.
        d: dict[str, Any] = {"v": STATE_VERSION, "reference": self.reference}
        if self.seen_p:
            d["seen_p"] = self.seen_p
        if self.seen_l:
            d["seen_l"] = self.seen_l
        if self.seen_more_p:
            d["seen_p_digests"] = sorted(self.seen_more_p)
        if self.seen_more_l:
            d["seen_l_digests"] = sorted(self.seen_more_l)
        debits = self.debits
        if debits:
            if len(debits) == 1:
                debit = debits[0]
                d["debits"] = [debit[:5]]
                if debit.account_id:
                    d["debit_accounts"] = [debit.account_id]
            else:
                d["debits"] = list(map(_entry_fields, debits))
                if any(map(_entry_account, debits)):
                    d["debit_accounts"] = list(map(_entry_account, debits))
            if debits[0].guarded_at_ms is not None:
                # Only a first debit has one: one per debit, null for the others, like the
                # accounts; absent for every other reference, so a release that does not know it
                # restores the entries, and compares that debit at the earlier of its text and
                # its effective time.
                d["debit_guarded_at_ms"] = [x.guarded_at_ms for x in debits]
            if self.debit_count != len(debits):
                d["debit_count"], d["debited_total"] = self.debit_count, self.debited_total
        reversals = self.reversals
        if reversals:
            d["reversals"] = list(map(_entry_fields, reversals))
            if any(map(_entry_account, reversals)):
                d["reversal_accounts"] = list(map(_entry_account, reversals))
            if self.reversal_count != len(reversals):
                d["reversal_count"], d["reversed_total"] = self.reversal_count, self.reversed_total
        settlement, failure, request = self.settlement, self.failure, self.request
        if settlement is not None:
            d["settlement"] = settlement[:]
        if failure is not None:
            d["failure"] = failure[:]
        if request is not None:
            # Its type is "requested" and its reference the entry's own (`apply_facts` keeps only
            # a request, and the partition gives a reference its own records only): rebuilt on
            # restore.
            d["request"] = _request_fields(request)
            if self.request_eff_ms != request[OCCURRED_AT_MS]:  # (a request taken in order: equal)
                d["request_eff_ms"] = self.request_eff_ms
        if self.account_id is not None:
            d["account_id"] = self.account_id
        # Each only when it differs from what the rest of the entry gives (it never does when
        # `apply_facts` set both): absent, it reads as that.
        if self.net != self.debited_total - self.reversed_total:
            d["net"] = self.net
        if self.settled != (settlement.amount if settlement is not None else 0):
            d["settled"] = self.settled
        if self.cycle_deadline_ms is not None:
            d["cycle_deadline_ms"] = self.cycle_deadline_ms
            opened_by = self.cycle_opened_by
            d["cycle_opened_by"] = opened_by[:] if opened_by is not None else None
        refunds = self.refunds
        if refunds:
            # (One loop for both lists: each reference of a refund burst has a refund to save.)
            saved: list[tuple[str, int, int, str, bool]] = []
            requested_at_ms: list[int | None] = []
            for r in refunds:
                saved.append((r.refund_id, r.amount, r.deadline_ms, r.reason, r.active))
                requested_at_ms.append(r.requested_at_ms)
            d["refunds"] = saved
            if requested_at_ms.count(None) != len(requested_at_ms):
                d["refunds_requested_at_ms"] = requested_at_ms
        d["last_eff_ms"] = self.last_eff_ms
        d["last_key"] = self.last_key[:]
        if self.retention is not None:
            d["retention"] = self.retention[:]
        if self.holds:
            d["holds"] = [h.to_json() for h in self.holds]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReferenceState:
        """A saved reference of any version (1 and 2: two-letter keys; 3 and 4: named fields).
        Raises `StateVersionError` for another version."""
        version = d.get("v", 1)
        if type(version) is not int or not 1 <= version <= STATE_VERSION:
            raise StateVersionError(
                f"a saved reference entry of version {version!r}, this worker reads versions 1 to"
                f" {STATE_VERSION} (state saved by a newer release?)"
            )
        if version < 3:
            return cls._from_json_v2(d)
        reference = d["reference"]
        debits = _saved_entries(d.get("debits", ()), d.get("debit_accounts"), d.get("debit_guarded_at_ms"))
        reversals = _saved_entries(d.get("reversals", ()), d.get("reversal_accounts"))
        debited_total = d.get("debited_total", sum(x.amount for x in debits))
        reversed_total = d.get("reversed_total", sum(x.amount for x in reversals))
        rq, st, f, rt = d.get("request"), d.get("settlement"), d.get("failure"), d.get("retention")
        spd, sld, co = d.get("seen_p_digests"), d.get("seen_l_digests"), d.get("cycle_opened_by")
        request = None
        if rq:
            request = PaymentEvent(*rq) if version == 3 else PaymentEvent(rq[0], "requested", reference, *rq[1:])
        settlement = Settlement(*st) if st else None
        # (Version 3 saves all three whenever they are set: the defaults are 4's.)
        request_eff_ms = d.get("request_eff_ms", request.occurred_at_ms if request is not None else None)
        return cls(
            reference=reference,
            seen_p=list(d.get("seen_p", ())),
            seen_l=list(d.get("seen_l", ())),
            seen_more_p=set(spd) if spd else None,
            seen_more_l=set(sld) if sld else None,
            debits=debits,
            reversals=reversals,
            debit_count=d.get("debit_count", len(debits)),
            debited_total=debited_total,
            reversal_count=d.get("reversal_count", len(reversals)),
            reversed_total=reversed_total,
            settlement=settlement,
            failure=Failure(*f) if f else None,
            request=request,
            request_eff_ms=request_eff_ms,
            account_id=d.get("account_id"),
            net=d.get("net", debited_total - reversed_total),
            settled=d.get("settled", settlement.amount if settlement is not None else 0),
            cycle_deadline_ms=d.get("cycle_deadline_ms"),
            cycle_opened_by=RecordKey(*co) if co else None,
            refunds=_saved_refunds(d.get("refunds", ()), d.get("refunds_requested_at_ms")),
            last_eff_ms=d["last_eff_ms"],
            last_key=RecordKey(*d["last_key"]),
            retention=RetentionTimer(*rt) if rt else None,
            holds=[Hold.from_json(h) for h in d.get("holds", ())],
        )

    @classmethod
    def _from_json_v2(cls, d: dict[str, Any]) -> ReferenceState:
        # Versions 1 and 2 (written before the fields were named); 1 had no "v" and no holds.
        debits = [LedgerEntry(*x) for x in d["d"]]
        reversals = [LedgerEntry(*x) for x in d["r"]]
        return cls(
            reference=d["ref"],
            seen_p=list(d["sp"]),
            seen_l=list(d["sl"]),
            seen_more_p=set(d["spd"]) if d.get("spd") else None,
            seen_more_l=set(d["sld"]) if d.get("sld") else None,
            debits=debits,
            reversals=reversals,
            # State saved before the counts existed kept every entry.
            debit_count=d.get("dc", len(debits)),
            debited_total=d.get("ds", sum(x.amount for x in debits)),
            reversal_count=d.get("rc", len(reversals)),
            reversed_total=d.get("rs", sum(x.amount for x in reversals)),
            settlement=Settlement(*d["st"]) if d["st"] else None,
            failure=Failure(*d["f"]) if d["f"] else None,
            request=PaymentEvent(*d["rq"]) if d["rq"] else None,
            request_eff_ms=d.get("re"),
            account_id=d["a"],
            net=d["n"],
            settled=d["s"],
            cycle_deadline_ms=d["cd"],
            cycle_opened_by=RecordKey(*d["co"]) if d["co"] else None,
            refunds=[Refund(*r) for r in d["rf"]],
            last_eff_ms=d["le"],
            last_key=RecordKey(*d["lk"]),
            retention=RetentionTimer(*d["rt"]) if d["rt"] else None,
            holds=[Hold.from_json(h) for h in d.get("h", ())],
        )


# Builds a named tuple from a tuple of its fields without the Python frame of its `__new__`.
_new_tuple: Final[Any] = tuple.__new__

# A ledger entry's saved array (a plain tuple of its first five fields) and its account: C
# callables, so saving a reference costs no Python frame per entry.
_entry_fields: Callable[[LedgerEntry], tuple[Any, ...]] = itemgetter(slice(None, 5))
_entry_account: Callable[[LedgerEntry], str | None] = itemgetter(5)
# A request's saved array (version 4): its fields without its type and reference, in one C call.
_request_fields: Callable[[PaymentEvent], tuple[Any, ...]] = itemgetter(
    EVENT_ID, *range(REFERENCE + 1, len(PaymentEvent._fields))
)


def _saved_entries(
    saved: Iterable[list[Any]], accounts: list[str | None] | None, guarded_at_ms: list[int | None] | None = None
) -> list[LedgerEntry]:
    # `accounts` (`debit_accounts`, `reversal_accounts`) is absent when no entry has one, and in
    # state saved before entries had accounts: each entry is then on the reference's account.
    # `guarded_at_ms` (`debit_guarded_at_ms`) likewise: no entry has a guarded date then.
    if accounts is None:
        entries = [LedgerEntry(*x) for x in saved]
    else:
        entries = [LedgerEntry._make((*x, a, None)) for x, a in zip(saved, accounts, strict=True)]
    if guarded_at_ms is not None:
        entries = [x._replace(guarded_at_ms=g) for x, g in zip(entries, guarded_at_ms, strict=True)]
    return entries


def _saved_refunds(saved: Iterable[list[Any]], requested_at_ms: list[int | None] | None) -> list[Refund]:
    # `requested_at_ms` (`refunds_requested_at_ms`) is absent when no refund was requested at a
    # hold's end, and in state saved without it: each refund then has none (told by its deadline).
    refunds = [Refund(*r) for r in saved]
    if requested_at_ms is not None:
        for refund, at_ms in zip(refunds, requested_at_ms, strict=True):
            refund.requested_at_ms = at_ms
    return refunds


def _id_digest(event_id: str) -> str:
    return blake2b(event_id.encode("utf-8"), digest_size=12).hexdigest()


def _keep(entries: list[LedgerEntry], entry: LedgerEntry) -> None:
    # The first EVIDENCE_FIRST entries stay; after them a window of the last EVIDENCE_LAST.
    entries.append(entry)
    if len(entries) > EVIDENCE_FIRST + EVIDENCE_LAST:
        del entries[EVIDENCE_FIRST]


# The shared fields of requests seen (merchant_id through response_code, as one tuple) -> the
# same fields interned: one dict lookup a request instead of eight `sys.intern` calls (the
# mixed day: 13,831 distinct among 100,572 requests). Emptied when full, so a worker that runs
# for weeks keeps it small and useful.
_SHARED: Final[dict[tuple[str | None, ...], tuple[str | None, ...]]] = {}
_SHARED_MAX: Final = 65_536


def _interned(e: PaymentEvent) -> PaymentEvent:
    # A request is kept for the reference's whole life (R, 48 h by default); its merchant,
    # routing and channel fields come from small sets, so one shared string each saves memory.
    shared_fields = e[7:]
    shared = _SHARED.get(shared_fields)
    if shared is None:
        i = sys.intern
        shared = tuple([None if v is None else i(v) for v in shared_fields])  # (a list: no generator)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[shared] = shared
    interned: PaymentEvent = _new_tuple(PaymentEvent, e[:7] + shared)
    return interned
