"""What the live worker saw, kept for the people around it: counts for `/metrics`, the open
incidents, refunds per minute for the dashboard, and the account index of the
customer-service lookup.

`WorkerWatch` is fed from two places only: an `EngineObserver` on each partition engine (the
core's observer hook: records taken, applied or ignored as duplicates, references dropped by
retention) and the output records as the worker sends them. It decides nothing and sends
nothing; it reads the wall clock only to bucket outputs by minute. No Faust or Kafka imports.
"""

from __future__ import annotations

import base64
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..core import codec
from ..core.decisions import Decision
from ..core.holds import Hold, Incident
from ..core.partition import PartitionEngine
from ..core.records import LedgerEvent, PaymentEvent, Stream
from ..core.reference import ReferenceState
from ..settings import Settings

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]

# Refund record type -> the word used in metrics and on the dashboard.
REFUND_KIND = {
    "refund.requested": "requested",
    "refund.held": "held",
    "refund.cancel_requested": "cancelled",
    "refund.hold_released": "released",
}
MINUTES_KEPT = 60


def open_holds(engines: Mapping[int, PartitionEngine]) -> list[Hold]:
    """The refund holds open in these engines' state, every hold of every held reference. (Not
    counted from the refund.held records this worker sent until it saw them end: a hold ended by
    another worker after a rebalance would stay "held" here for good, in the lookup, the
    dashboard and `qris_refunds_held`, and a reference's second hold would be counted once.)"""
    out = []
    for eng in engines.values():
        refs = eng.refs
        for ref in eng.held_refs:
            st = refs.get(ref)
            if st is not None:
                out.extend(st.holds)
    return out


def accounts_of(st: ReferenceState) -> set[str]:
    """The accounts a reference belongs to: the first debit's (its refunds'), the requesting
    one, and every account a kept ledger entry was booked on, debited from or reversed to: a
    customer whose money moved on the payment finds it under their own account."""
    out = {st.account_id} if st.account_id else set()
    if st.request is not None and st.request.account_id:
        out.add(st.request.account_id)
    out.update(entry_accounts_of(st))
    return out


def entry_accounts_of(st: ReferenceState) -> set[str]:
    """The accounts kept ledger entries name: those other than the first debit's, and any of a
    reversal processed before every debit."""
    return {x.account_id for x in (*st.debits, *st.reversals) if x.account_id is not None}


class EngineWatch:
    """The observer on one partition's engine. `processed` runs for every record: it counts into
    the watch's plain list counts and indexes the record's accounts without building a set."""

    def __init__(self, watch: WorkerWatch, partition: int) -> None:
        self.watch = watch
        self.partition = partition
        self.applied = watch.applied  # [stream][duplicate]
        self.accounts = watch.accounts

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
        if rejection is not None:
            self.watch.dead_lettered[stream] += 1

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
        self.applied[stream][duplicate] += 1
        if duplicate:
            return
        # `accounts_of(state)`, each indexed: the first debit's and the request's account here,
        # a ledger entry's other account below.
        accounts = self.accounts
        account = state.account_id
        if account:
            refs = accounts.get(account)
            if refs is None:
                accounts[account] = {state.reference: self.partition}
            else:
                refs[state.reference] = self.partition
        request = state.request
        if request is not None:
            other = request.account_id
            if other and other != account:
                refs = accounts.get(other)
                if refs is None:
                    accounts[other] = {state.reference: self.partition}
                else:
                    refs[state.reference] = self.partition
        else:
            other = None
        if type(event) is LedgerEvent:
            booked = event.account_id
            if booked != account and booked != other:
                self.watch.index_entry_account(state.reference, booked, self.partition)

    def deadline(
        self,
        reference: str,
        deadline_ms: int,
        watermark_ms: int,
        numbers: tuple[int, int, int],
        state: ReferenceState,
        decisions: list[Decision],
    ) -> None:
        return None

    def dropped(self, reference: str, at_ms: int, watermark_ms: int, state: ReferenceState) -> None:
        self.watch.unindex(reference, accounts_of(state) | self.watch.entry_accounts.pop(reference, set()))


# Output ids remembered to count each output once (`WorkerWatch._first_time`), at most.
SEEN_IDS_MAX = 200_000
# References with rejected records remembered for the lookup (`WorkerWatch.rejected`), at most,
# the oldest forgotten first; and rejected records kept per reference.
REJECTED_REFS_MAX = 20_000
REJECTED_PER_REF = 5
# Accounts indexed for one reference from its ledger entries (`WorkerWatch.index_entry_account`),
# at most: its first ones. A payment moves money on one or two accounts; a ledger that books
# each of a reference's thousands of entries on another account would otherwise grow the index
# by one entry a record for the reference's whole life, while its state keeps 25 entries a kind.
ENTRY_ACCOUNTS_MAX = 64
REFERENCE_MAX_CHARS = 128  # (a longer key or reference is no payment reference to look up)


def rejected_references(dead_letter: Mapping[str, Any]) -> list[str]:
    """The references a dead letter may be of: its record's key, and the `reference` of its
    value when the value is a JSON object with one (a record with a wrong key, or none).

    >>> import base64
    >>> raw = base64.b64encode(b'{"reference": "QR1", "amount": "x"}').decode()
    >>> rejected_references({"key": "QR9", "value_b64": raw}), rejected_references({"value_b64": "gA=="})
    (['QR9', 'QR1'], [])
    """
    out: list[str] = []
    key = dead_letter.get("key")
    if isinstance(key, str) and 0 < len(key) <= REFERENCE_MAX_CHARS:
        out.append(key)
    try:
        value = codec.loads(base64.b64decode(str(dead_letter.get("value_b64") or ""), validate=True))
    except (ValueError, TypeError):
        return out
    ref = value.get("reference") if isinstance(value, dict) else None
    if isinstance(ref, str) and 0 < len(ref) <= REFERENCE_MAX_CHARS and ref not in out:
        out.append(ref)
    return out


class WorkerWatch:
    """Counts and live views of one worker (its partitions, the outputs it sent)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.topics = (settings.payment_topic, settings.ledger_topic)
        self.roles = {
            settings.refund_topic: "refunds",
            settings.alert_topic: "alerts",
            settings.dead_letter_topic: "dead_letter",
        }
        # Input records by stream: [accepted, duplicate] (`records_in`), dead-lettered.
        self.applied: list[list[int]] = [[0, 0], [0, 0]]
        self.dead_lettered: list[int] = [0, 0]
        self.refund_decisions: Counter[tuple[str, str]] = Counter()  # (type, reason)
        self.refund_rupiah: Counter[str] = Counter()  # requested | held | cancelled | released
        self.alerts: Counter[tuple[str, str]] = Counter()  # (kind, severity)
        self.dead_letters: Counter[str] = Counter()  # source topic
        self.rebalances = 0
        # Full collections after rebalances (`app.reclaim_frozen_cycles`): how many, the
        # unreachable objects they found, the seconds they held the process.
        self.gc_rebalance_collections = 0
        self.gc_rebalance_unreachable_objects = 0
        self.gc_rebalance_seconds = 0.0
        self.incidents: dict[str, dict[str, Any]] = {}  # open FAILURE_BURST incidents, latest alert
        self._incidents_aside: dict[str, dict[str, Any]] = {}  # (`detector_moved`)
        self.per_minute: dict[int, Counter[str]] = {}  # wall-clock minute -> refunds by kind
        self._pruned_minute: int | None = None  # the minute `per_minute` was last pruned for
        self.recent_alerts: deque[dict[str, Any]] = deque(maxlen=30)
        # Critical alerts other than incidents (OVER_REFUND, INPUT_LOST, ...), kept apart: a
        # flood of LATE_SETTLEMENT warnings at an outage's end pushes them out of the latest.
        self.recent_critical: deque[dict[str, Any]] = deque(maxlen=10)
        self.accounts: dict[str, dict[str, int]] = {}  # account id -> {reference: partition}
        # The accounts indexed for a reference from its ledger entries (`index_entry_account`):
        # a reference with more than EVIDENCE_FIRST + EVIDENCE_LAST entries of a kind cuts the
        # middle ones from its state, which then cannot say which index entries go with it.
        self.entry_accounts: dict[str, set[str]] = {}
        # The input partitions assigned here by the last assignment (None before the first): the
        # lookup answers "not yet" for those whose engines are not restored yet.
        self.owned: set[int] | None = None
        self.seen_ids: set[str] = set()
        # Rejected records by the reference they may be of, since this worker started: a lookup
        # of it says its answer may leave them out (a rejected debit is money taken that the
        # state does not know of). Bounded: REJECTED_REFS_MAX references, oldest forgotten.
        self.rejected: dict[str, list[dict[str, Any]]] = {}
        self.started_at_ms = int(clock() * 1000)

    @property
    def records_in(self) -> Counter[tuple[str, str]]:
        """Input records by (topic, outcome): accepted, duplicate, dead_lettered."""
        out: Counter[tuple[str, str]] = Counter()
        for topic, (accepted, duplicate), dead in zip(self.topics, self.applied, self.dead_lettered, strict=True):
            for outcome, n in (("accepted", accepted), ("duplicate", duplicate), ("dead_lettered", dead)):
                if n:
                    out[(topic, outcome)] = n
        return out

    def gc_reclaimed(self, unreachable: int, seconds: float) -> None:
        """Count one full collection after a rebalance (`app.reclaim_frozen_cycles`)."""
        self.gc_rebalance_collections += 1
        self.gc_rebalance_unreachable_objects += unreachable
        self.gc_rebalance_seconds += seconds

    # -- engines ---------------------------------------------------------------------------

    def watch_engine(self, engine: PartitionEngine) -> None:
        """Attach to a (restored) engine: index its references, observe what comes next."""
        engine.observer = EngineWatch(self, engine.partition)
        for ref, st in engine.refs.items():
            for account in accounts_of(st):
                self.accounts.setdefault(account, {})[ref] = engine.partition
            entries = entry_accounts_of(st)
            if entries:
                self.entry_accounts.setdefault(ref, set()).update(entries)

    def index_entry_account(self, reference: str, account_id: str, partition: int) -> None:
        """Index `reference` under an account one of its ledger entries was booked on (debited
        from or reversed to), beside its first debit's and its request's: its first
        ENTRY_ACCOUNTS_MAX such accounts."""
        accounts = self.entry_accounts.get(reference)
        if accounts is None:
            self.entry_accounts[reference] = {account_id}
        elif account_id not in accounts:
            if len(accounts) >= ENTRY_ACCOUNTS_MAX:
                return
            accounts.add(account_id)
        refs = self.accounts.get(account_id)
        if refs is None:
            self.accounts[account_id] = {reference: partition}
        else:
            refs[reference] = partition

    def keep_partitions(self, partitions: set[int]) -> None:
        """After a rebalance: forget the index entries of partitions no longer owned here (the
        ones still owned are re-indexed when their engines are restored)."""
        self.owned = set(partitions)
        for account in list(self.accounts):
            refs = {r: p for r, p in self.accounts[account].items() if p in partitions}
            if refs:
                self.accounts[account] = refs
            else:
                del self.accounts[account]
        for ref, accounts in list(self.entry_accounts.items()):
            kept = {a for a in accounts if ref in self.accounts.get(a, {})}
            if kept:
                self.entry_accounts[ref] = kept
            else:
                del self.entry_accounts[ref]

    def unindex(self, reference: str, accounts: set[str]) -> None:
        for account in accounts:
            refs = self.accounts.get(account)
            if refs is not None:
                refs.pop(reference, None)
                if not refs:
                    del self.accounts[account]

    # -- outputs ---------------------------------------------------------------------------

    def wrap_send(self, send: Send) -> Send:
        """`send` that also shows each output record to this watch."""

        async def watched(topic: str, key: bytes | None, value: bytes) -> Any:
            result = await send(topic, key, value)
            role = self.roles.get(topic)
            if role is not None:
                self.on_output(role, codec.loads(value))
            return result

        return watched

    def on_output(self, role: str, v: dict[str, Any]) -> None:
        if role == "refunds":
            self._on_refund(v)
        elif role == "alerts":
            self._on_alert(v)
        elif role == "dead_letter" and self._first_time(str(v.get("dead_letter_id"))):
            self.dead_letters[str(v.get("source_topic"))] += 1  # (not the same record's again)
            self._on_rejected(v)

    def _on_rejected(self, v: dict[str, Any]) -> None:
        seen = {
            "dead_letter_id": v.get("dead_letter_id"),
            "source_topic": v.get("source_topic"),
            "source_offset": v.get("source_offset"),
            "error": v.get("error"),
            "reason": v.get("reason"),
        }
        for ref in rejected_references(v):
            entries = self.rejected.pop(ref, [])  # (re-inserted: the most recent last)
            if len(entries) < REJECTED_PER_REF:
                entries.append(seen)
            self.rejected[ref] = entries
        while len(self.rejected) > REJECTED_REFS_MAX:
            del self.rejected[next(iter(self.rejected))]

    def _first_time(self, ident: str) -> bool:
        """Whether an output with this id is counted for the first time (one sent again after a
        restart or rebalance has the same id). The ids kept are bounded (SEEN_IDS_MAX, every
        role: a producer whose every record is rejected makes only dead letters): a repeat
        after a clear is counted twice at worst."""
        if ident in self.seen_ids:
            return False
        if len(self.seen_ids) >= SEEN_IDS_MAX:
            self.seen_ids.clear()
        self.seen_ids.add(ident)
        return True

    def _on_refund(self, v: dict[str, Any]) -> None:
        kind = REFUND_KIND.get(v["type"], v["type"])
        if not self._first_time(v["type"] + v.get("cancel_id", v["refund_id"])):
            return
        self.refund_decisions[(v["type"], str(v.get("reason")))] += 1
        self.refund_rupiah[kind] += int(v.get("amount") or 0)
        minute = int(self.clock() // 60)
        of_minute = self.per_minute.get(minute)
        if of_minute is None:
            of_minute = self.per_minute[minute] = Counter()
        of_minute[kind] += 1
        if minute != self._pruned_minute:
            # (Once a minute, not for each of a wave's refunds: again in the same minute, it
            # would find nothing to drop.)
            self._pruned_minute = minute
            for old in [m for m in self.per_minute if m <= minute - MINUTES_KEPT]:
                del self.per_minute[old]

    def _on_alert(self, v: dict[str, Any]) -> None:
        if self._first_time(str(v.get("alert_id", ""))):
            self.alerts[(v["kind"], v["severity"])] += 1
            self.recent_alerts.appendleft(v)
            if v["severity"] == "critical" and v["kind"] != "FAILURE_BURST":
                self.recent_critical.appendleft(v)
        # An incident's alert sent again (a detector rebuilt from an older offset sends the alerts
        # after it again, with their ids) still moves the incident: one put aside at the
        # rebalance may have resolved, or opened, since the offset rebuilt from.
        if v["kind"] == "FAILURE_BURST" and v.get("incident_id"):
            if v.get("status") == "resolved":
                self.incidents.pop(v["incident_id"], None)
            else:
                self.incidents[v["incident_id"]] = v

    def detector_moved(self) -> None:
        """A rebalance: the burst detector may run on another worker from now on, and this one
        would never see the alerts that resolve the incidents it shows (they would stay open for
        good on the dashboard, in `qris_open_incidents` and in the lookup). They are put aside
        until the detector is rebuilt here (`detector_restored`)."""
        if self.incidents:
            self._incidents_aside = self.incidents
        self.incidents = {}

    def detector_restored(self, open_incidents: list[dict[str, Any]]) -> None:
        """The detector runs here, rebuilt with these open incidents (`IncidentBook.open_incidents`):
        they are shown again, with the latest alert this worker sent of each where it has one,
        else what the detector knows (the next alert brings the rest)."""
        aside, self._incidents_aside = self._incidents_aside, {}
        for inc in open_incidents:
            ident = str(inc["incident_id"])
            if ident in self.incidents:
                continue
            self.incidents[ident] = aside.get(ident) or {
                "incident_id": ident,
                "kind": "FAILURE_BURST",
                "status": "opened",
                "scope": inc["scope"],
                "window": {"start": inc["since"]},
                "affected_payments": inc["affected_payments"],
                "summary": "open (the detector was restored on this worker; its next alert brings the details)",
            }

    # -- views -----------------------------------------------------------------------------

    def minutes(self, last: int = 15) -> list[tuple[int, Counter[str]]]:
        """Refunds by kind for each of the `last` wall-clock minutes (oldest first)."""
        now = int(self.clock() // 60)
        return [(m, self.per_minute.get(m, Counter())) for m in range(now - last + 1, now + 1)]

    def incidents_covering(self, request: PaymentEvent | None) -> list[dict[str, Any]]:
        """Open incidents whose scope covers a payment (CONTRACT.md "Refund holds")."""
        if request is None:
            return []
        # The core's own rule (`holds.Incident.covers`: pools by their escaped id, `MCC-unknown`,
        # merchants whose id begins with `MCC-`), so the page says what the engine decides.
        return [
            v
            for v in self.incidents.values()
            if Incident(str(v["incident_id"]), str(v["scope"]["type"]), str(v["scope"]["id"]), 0).covers(request)
        ]
