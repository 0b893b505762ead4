"""One input partition's event-time engine: effective times, the watermark, and the processing
order of records and timers (CONTRACT.md "Time").

`PartitionEngine` is told raw records of its two streams (P: payment-requests, L: ledger-debits)
in each stream's offset order, in any interleaving, and returns decisions. Everything waits
in a heap ordered by `(eff, kind, stream, offset)` until the watermark has strictly passed it,
so the decisions do not depend on how the two streams interleave. Timers are heap items too:
deadlines (kind 1), hold releases (kind 2) and retention checks (last) sort after records (kind
0) of the same instant; timers of one instant are ordered by the (stream, offset) of the record
that set them.

With refund holds on, the burst detector's incidents are a third input of the watermark
(`on_incidents`): records and timers are decided only up to `min(W, known_through + 1)`. Records
wait in one heap, timers in another (`decide`), and the two are decided together in key order.
Burst signals judge payments from the records that passed the uncapped `W` (those of the record
heap below it, "ahead" of the decisions), so a partition's signals never wait for the incidents
that need them.

As the watermark passes a minute's end plus the probe age, the engine also reports that
minute's burst signals (`signals`: each payment judged shortly after its request, per scope).

State can be saved per reference (`take_dirty`) and restored (`restore`), so the live worker
persists it in tables and a restarted worker continues where it stopped, including records
still waiting for the watermark. Imports nothing outside the core; reads no clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Final

from . import codec
from .alerts import clock_mismatch_alert, clock_skew_alert, dead_letter_alert, feed_silent_alert
from .deadletter import dead_letter_record
from .decisions import Decision
from .eventtime import parse_ms
from .holds import IncidentEvent, IncidentTimeline
from .holdtally import (
    HOLD_REPORT_MAX_EVENTS,
    HoldEvent,
    explain_cancellations,
    held_scope_tags,
    hold_event,
    hold_report,
    report_floor_ms,
)
from .observe import EngineObserver
from .records import OCCURRED_AT_MS, REFERENCE, TYPE, LedgerEvent, PaymentEvent, Stream, event_fields
from .reference import ReferenceState, RetentionTimer, StateVersionError
from .signals import (
    MINUTE_MS,
    SIGNALS_PART_MAX_BYTES,
    close_scope_minutes,
    count_payment,
    judge,
    signals_decisions,
)
from .text import escape_text
from .validation import Rejection, parse_ledger, parse_payment

# (`Final`: compiled, each name below is a constant, not a look-up in the module's dict.)
RECORD: Final = 0  # heap kinds; retention checks have a heap of their own
DEADLINE: Final = 1
HOLD: Final = 2
_STREAMS: Final = (Stream.P, Stream.L)
NEG_INF: Final = -(2**62)
_NO_DECISIONS: Final[list[Decision]] = []  # (never changed: read only)
POS_INF: Final = 2**62
# The event times a record may count at (after the clock guard): every time decided from it (its
# deadline, a hold's end and release-by, the minutes and incidents it counts in) must be writable
# as RFC 3339 UTC text, years 0000 to 9999. The hour of margin covers the burst detector's minute
# and decision delay.
OCCURRED_MIN_MS: Final = -62_167_219_200_000  # 0000-01-01T00:00:00Z
_YEAR_10000_MS: Final = 253_402_300_800_000  # 10000-01-01T00:00:00Z
_OCCURRED_MARGIN_MS: Final = 3_600_000
# The longest hold the settings allow (`QRIS_MAX_HOLD_S`). The range above leaves room for it
# whatever H is, so a replay's first pass (holds off) refuses exactly what live refuses.
HOLD_MAX_MS: Final = 7 * 86_400_000
# Version of a partition's saved metadata (`save_meta`; metadata without "v" is version 1).
# Fields are only added, each optional, so a worker restores an older worker's metadata by name
# and an older worker ignores what it does not know (a rollback). A field whose meaning changes
# takes a new version, and `restore` refuses a version above its own rather than misread it.
META_VERSION = 2
# Numbers the engine objects of this process (`PartitionEngine.incarnation`).
_INCARNATIONS = itertools.count()


def occurred_max_ms(params: Params) -> int:
    """The latest time a record may count at (`OCCURRED_MIN_MS`): its deadline, a hold's
    release-by and the detector's minutes still before year 10000."""
    return _YEAR_10000_MS - 1 - params.timeout_ms - max(params.max_hold_ms, HOLD_MAX_MS) - _OCCURRED_MARGIN_MS


def out_of_range(occurred_at: str, occ_ms: int) -> Rejection:
    """Why a record counting at `occ_ms` (`OCCURRED_MIN_MS`, `PartitionEngine._occurred_max_ms`)
    is refused."""
    where = "before 0000-01-01T00:00:00Z" if occ_ms < OCCURRED_MIN_MS else "too close to the end of year 9999"
    return Rejection(
        "bad_value",
        f"'occurred_at' {escape_text(occurred_at, 64)} is {where}: its deadline could not be written in RFC 3339",
        "occurred_at",
    )


@dataclass(frozen=True, slots=True)
class Params:
    """Decision parameters (CONTRACT.md): timeout T, allowed lateness A, retention R."""

    timeout_ms: int = 300_000
    lateness_ms: int = 30_000
    retention_ms: int = 48 * 3600 * 1000
    payment_topic: str = "qris.payment-requests"
    ledger_topic: str = "qris.ledger-debits"
    # Burst signals: a payment is judged this long after its request (`signals`).
    probe_age_ms: int = 30_000
    burst_signals: bool = True
    # Clock guard F: a record dated more than this ahead of its Kafka timestamp counts as if it
    # occurred at its Kafka timestamp (and raises CLOCK_SKEW).
    clock_skew_ms: int = 60_000
    # Refund holds during an incident: grace G and maximum hold H; H = 0 turns holds off.
    hold_grace_ms: int = 900_000
    max_hold_ms: int = 0
    # A partition's burst report larger than this many bytes of JSON goes in parts (`signals`);
    # the parts carry the same decisions whatever the size.
    signals_part_max_bytes: int = SIGNALS_PART_MAX_BYTES
    # Accounts the ledger books reversals on for its own purposes (a suspense or general-ledger
    # account): a reversal booked on one is not a reversal to another customer, and raises no
    # DEBIT_ACCOUNT_MISMATCH (`ReferenceState.apply`). A debit from one still does.
    ledger_own_accounts: frozenset[str] = frozenset()

    def __reduce__(self) -> tuple[type[Params], tuple[Any, ...]]:
        # Pickled by `replay --jobs` (a pool's tasks). Compiled (`make compiled`), a frozen
        # dataclass is a native class whose default unpickling sets its fields one by one, which
        # frozen refuses (the job failed and the pool waited for ever): rebuilt by its constructor,
        # compiled or not, as for every frozen dataclass of the compiled modules.
        return Params, tuple(getattr(self, f.name) for f in fields(self))

    @property
    def holds(self) -> bool:
        """Refund holds are on: decisions wait for the detector's incidents (`on_incidents`)."""
        return self.max_hold_ms > 0


# A heap item: (eff_ms, kind, stream, offset, reference, event or None), a tuple
# `tuple[int, int, int, int, str, PaymentEvent | LedgerEvent | None]`, declared a tuple of any
# length: a reference's waiting records are found by the identity of their item (`pending`), and
# mypyc (`make compiled`) keeps a value of a fixed-length tuple type unboxed, boxing it anew at
# each use, so `id()` and `is` would not find an item twice (a `KeyError` at the first release).
# A tuple of any length stays the one object, and is read and unpacked by index (typed `Any`,
# it would be unpacked through an iterator). Not keyed by (stream, offset) instead: a replay file may
# repeat an offset (`on_record`).
Item = tuple[Any, ...]
# One reference's records waiting in the heap, in the order taken (`PartitionEngine.pending`).
Waiting = list[Item] | dict[int, Item]


def waiting_list(waiting: Waiting) -> list[Item]:
    """A reference's waiting records (`PartitionEngine.pending`), in the order taken."""
    return list(waiting.values()) if type(waiting) is dict else waiting  # type: ignore[return-value]


class OffsetOrderError(ValueError):
    """A record of a stream at or below the offset already taken on that stream."""

    def __init__(self, topic: str, partition: int, offset: int, last_offset: int) -> None:
        super().__init__(
            f"{topic}[{partition}]@{offset}: offsets of a topic partition must increase "
            f"(offset {last_offset} was already taken); refused, not skipped"
        )
        self.topic, self.partition, self.offset, self.last_offset = topic, partition, offset, last_offset


def _alert_due(count: int) -> bool:
    # 1, 10, 100, ...: one alert per order of magnitude of rejections.
    while count % 10 == 0 and count > 1:
        count //= 10
    return count == 1


# The decision parameters a partition's saved state is stamped with (`save_meta`): references
# open in it keep the deadlines and holds these made when another run restores it with others
# (`PartitionEngine.changed_params`).
STAMPED_PARAMS = (
    "timeout_ms",
    "lateness_ms",
    "retention_ms",
    "clock_skew_ms",
    "probe_age_ms",
    "hold_grace_ms",
    "max_hold_ms",
)


class PartitionEngine:
    """Event-time processing of one partition number `p` of both input topics."""

    def __init__(self, partition: int, params: Params, *, persistent: bool = True) -> None:
        self.partition = partition
        # This engine object's number in the process, never reused: how the worker's checks tell
        # a partition's engine from the one restored in its place (not a weak reference: compiled
        # by mypyc, the class takes none).
        self.incarnation = next(_INCARNATIONS)
        # Offline replay keeps nothing for saving: no waiting-record index, no dirty set.
        self.persistent = persistent
        self.params = params
        # (Read for every record.)
        self._lateness_ms, self._holds_on, self._signals_on = params.lateness_ms, params.holds, params.burst_signals
        self._occurred_max_ms = occurred_max_ms(params)
        self.max_ms: list[int | None] = [None, None]
        # Highest offset taken per stream (for the stats page and the dead-letter count).
        self.last_offset: list[int] = [-1, -1]
        # The lowest offset taken per stream in this engine's life (-1: none yet): a replay says
        # when its input starts past offset 0 (records before it unknown).
        self.first_offset: list[int] = [-1, -1]
        # Live mode only: a watermark floor set by the idle-feed rule (wall clock); dropped at the
        # partition's first valid record if it had none (`_drop_floor_without_records`).
        self.forced_ms = NEG_INF
        # Live only: the floor the idle rule set while both streams were quiet, until a record of
        # the partition is taken (NEG_INF otherwise). Only such a floor is the quiet's own
        # progress, which a worker restored before the quiet ends goes on from; a floor set by
        # one silent stream (the other stream's newest record) or by a partition with no record
        # (another partition's watermark, the wall clock) is not: going on from it would move
        # event time past where the records and the quiet put it.
        self.quiet_floor_ms = NEG_INF
        self.silent: list[bool] = [False, False]
        # Live only (`worker.clockstall`): the streams whose EVENT_TIME_STALLED alerts workers
        # raised for this partition and have not resolved yet (a bit each: 1 payments, 2 ledger;
        # a page taken over and one of the taker's own can both be open), and the watermark that
        # stood then; kept with the state so that a worker restarted (or given the partition)
        # during the episode still resolves them.
        self.stall_paged: tuple[int, int] | None = None
        # The parameters the restored state was saved with (`save_meta`; None: none restored).
        self.saved_params: dict[str, int] | None = None
        # A refund of this partition with its deadline at or after this was decided by a release
        # that keeps a held refund's request time (`Refund.requested_at_ms`): one without it was
        # requested at its deadline, never held. One before it may come from state saved without
        # request times, where held or not is worked out from the incident timeline (the
        # lookup). Saved with the metadata; restored from metadata without it, it is just past the
        # latest deadline of the refunds restored, all of which such a release may have decided.
        self.request_times_from_ms = NEG_INF
        self.rejected: list[int] = [0, 0]
        # Records per stream dated more than F ahead of their Kafka timestamp (clock guard).
        self.skewed: list[int] = [0, 0]
        # Payments whose first debit was processed more than F before their request (the two
        # feeds' clocks apart: `clock_mismatch_alert`).
        self.mismatched = 0
        self.refs: dict[str, ReferenceState] = {}
        # The records waiting in `heap`, per reference, in the order taken: saved with the
        # reference (live), and what the burst views read ahead of the decisions (holds on).
        # A reference's records leave in the order taken nearly always (first in the list); one
        # that leaves out of it (one stream's records taken before the other's) turns the
        # reference's list into a dict by `id(item)`, where each leaves in O(1), until it empties
        # (a list's `remove` made 20,000 of each stream of one reference take 4 s; a dict for
        # every reference would take three times a list's memory).
        self.pending: dict[str, Waiting] = {}
        self.keep_pending = persistent or (params.holds and params.burst_signals)
        # Records wait in `heap` until min(W, the incidents' watermark) passes them; timers wait
        # in `decide`. Records of `heap` below W are "ahead" of the decisions: burst signals
        # read them. (One heap for each, not records moved from one to the other as W passes
        # them: two heap operations a record fewer.)
        self.heap: list[Item] = []
        self.decide: list[Item] = []
        self.retention_heap: list[tuple[int, int, int, str]] = []
        # Holds on: the references of the `requested` records waiting in `heap`, by minute of
        # their effective time, so that a minute's close finds the requests it judges ahead of
        # the decisions without reading the whole heap (`_views_ahead`; their records are in
        # `pending`). A minute goes when it closes.
        self.waiting: dict[int, list[str]] | None = {} if params.holds and params.burst_signals else None
        self.incidents = IncidentTimeline()
        if not params.holds:
            self.incidents.known_through_ms = POS_INF
        self.held_refs: set[str] = set()
        self.dirty: set[str] = set()
        self.meta_dirty = False
        # Burst signals: references by minute of their request, until the minute is closed.
        self.open_minutes: dict[int, list[str]] = {}
        self.signals_through: int | None = None  # the last closed minute
        # Holds on: hold decisions not yet reported to the detector's tally, and the decided-
        # through time of the last report (`holdtally`).
        self.hold_events: list[HoldEvent] = []
        self.hold_reported_ms = NEG_INF
        # The scope tags of the `refund.held` among them (`held_scope_tags`), by refund_id.
        self.hold_scopes: dict[str, list[str]] = {}
        self._close_at_ms = NEG_INF + 1  # the watermark that closes the next minute
        # Below `_close_at_ms` + this, no retention check can drop a payment of a minute still
        # open (`_minutes_before_retention`); a retention within a minute and the probe age
        # (not a real setting) is left as it was: the payments can go before their minute closes.
        reach = params.retention_ms - MINUTE_MS - params.probe_age_ms
        self._retention_reach_ms = reach if reach > MINUTE_MS else POS_INF
        # The cap (min(W, the incidents' watermark), `_release`) of the last `_release` by a
        # record. A record that leaves the cap there releases nothing unless its W closes a
        # minute (`_close_at_ms`, burst signals on; off, no minute closes and `_close_at_ms`
        # stays at its start): every item below the cap was processed then, the record's own
        # effective time is at or above the W before it (so above the cap), the hold reports were
        # made for that cap, and items are added below it only by `on_incidents` (moved holds),
        # which resets this. Holds off, the cap is W; holds on, it stays at the incidents'
        # watermark while W moves on, for nearly every record of a one-pass replay.
        self._released_cap: int | None = None
        # This engine's counts (`stats`): attributes, not a dict's entries, as one is added to for
        # every record (compiled, a field of the object rather than two look-ups and a store).
        self.records_taken = 0
        self.records_rejected = 0
        self.records_out_of_order = 0
        # Watches records and timers (trace, metrics, lookup index); never changes a decision.
        self.observer: EngineObserver | None = None

    @property
    def stats(self) -> dict[str, int]:
        """The records this engine took (valid), rejected, and took out of their offset order."""
        return {
            "records": self.records_taken,
            "rejected": self.records_rejected,
            "out_of_order": self.records_out_of_order,
        }

    def _topic(self, s: int) -> str:
        return self.params.payment_topic if s == 0 else self.params.ledger_topic

    # -- time ------------------------------------------------------------------------------

    @property
    def watermark_ms(self) -> int:
        """W = min(max_P, max_L) - A, or the live idle floor if higher; -inf until both streams
        have a record."""
        mp, ml = self.max_ms
        w = NEG_INF if mp is None or ml is None else min(mp, ml) - self.params.lateness_ms
        return max(w, self.forced_ms)

    # -- input -----------------------------------------------------------------------------

    def on_record(
        self,
        stream: Stream,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None = None,
        *,
        parsed: PaymentEvent | LedgerEvent | Rejection | None = None,
    ) -> list[Decision]:
        """Take one raw record of `stream` (in that stream's offset order) and return what is
        decided now: its dead letter if rejected, plus whatever the advanced watermark releases.
        `parsed`: the record already parsed by `validation.parse` (a replay's second pass reuses
        the first's); `value` is then needed only when it is a `Rejection`."""
        # Live, each stream is taken in strictly increasing offset order (gaps allowed:
        # transaction markers, compaction): the shell (stream/worker/boundary.py) drops
        # redeliveries and fills gaps before calling this, so an offset that goes back is a bug
        # and is refused loudly. A replay file is processed in the order read (CONTRACT.md
        # "Replay file format"): an offset at or below an earlier one of its stream is taken like
        # any record, never skipped, and counted (`out_of_order`) so that replay can warn.
        s = 1 if stream else 0
        persistent = self.persistent
        last_offset = self.last_offset
        if offset <= last_offset[s]:
            if persistent:
                raise OffsetOrderError(self._topic(s), self.partition, offset, last_offset[s])
            self.records_out_of_order += 1
            if offset < self.first_offset[s]:
                self.first_offset[s] = offset  # (the lowest read: a file's records out of order)
        else:
            if last_offset[s] < 0:
                self.first_offset[s] = offset
            last_offset[s] = offset
        if persistent:
            self.meta_dirty = True  # the saved state covers this offset now
        event = parsed
        if event is None:
            event = parse_payment(key, value) if s == 0 else parse_ledger(key, value)
        if isinstance(event, Rejection):  # (one call: an exact type is its fast path)
            return self._reject(stream, offset, key, value, timestamp_ms, event)
        occ = event[OCCURRED_AT_MS]
        lateness_ms = self._lateness_ms
        skew_alert: list[Decision] | None = None  # (no list a record)
        skewed = timestamp_ms is not None and timestamp_ms >= 0 and occ - timestamp_ms > self.params.clock_skew_ms
        if skewed:
            # Clock guard: one wrong clock must not push the partition's watermark into the
            # future. The record counts as if it occurred at its Kafka timestamp, for max_S, its
            # effective time and everything after; its own `occurred_at` text is kept.
            assert timestamp_ms is not None
            occ = timestamp_ms
        if not OCCURRED_MIN_MS <= occ <= self._occurred_max_ms:
            # A time whose deadline or hold RFC 3339 cannot write (before year 0000 in UTC, or in
            # the last T + 7 days + 1 h of 9999): refused, not decided (README "Silent").
            return self._reject(stream, offset, key, value, timestamp_ms, out_of_range(event.occurred_at, occ))
        self.records_taken += 1
        if skewed:
            assert timestamp_ms is not None
            skew_alert = self._skewed(stream, event, timestamp_ms)
            # "Here and below": the dates `_check_clocks` compares are the guarded ones too (a
            # request dated 60.001 s ahead of its Kafka timestamp, with its debit at that
            # timestamp, is no debit before its request).
            event = event._replace(occurred_at_ms=occ)
        max_ms = self.max_ms
        prev = max_ms[s]
        if prev is None:
            if max_ms[1 - s] is None and self.forced_ms > NEG_INF:
                self._drop_floor_without_records()
            max_ms[s] = occ
            eff = occ
        else:
            eff = prev - lateness_ms
            if occ > eff:
                eff = occ
                if occ > prev:
                    max_ms[s] = occ
        forced_ms = self.forced_ms
        if eff < forced_ms:
            eff = forced_ms
        self.silent[s] = False
        # The watermark after this record (`watermark_ms`, inline).
        mp, ml = max_ms
        w = NEG_INF if mp is None or ml is None else (mp if mp < ml else ml) - lateness_ms
        if w < forced_ms:
            w = forced_ms
        ref = event[REFERENCE]
        if self.observer is not None:
            self.observer.taken(stream, offset, timestamp_ms, key, value, event, eff, w, None)
        item: Item = (eff, RECORD, s, offset, ref, event)
        heapq.heappush(self.heap, item)
        if self.keep_pending:
            pend = self.pending.get(ref)
            if pend is None:
                self.pending[ref] = [item]
            elif type(pend) is list:
                pend.append(item)
            else:
                pend[id(item)] = item
            if persistent:
                self.dirty.add(ref)
            waiting = self.waiting
            if waiting is not None and s == 0 and event[TYPE] == "requested":
                # `_index_request`, inline.
                minute = eff // MINUTE_MS
                refs_of_minute = waiting.get(minute)
                if refs_of_minute is None:
                    waiting[minute] = [ref]
                else:
                    refs_of_minute.append(ref)
        cap = self.incidents.known_through_ms + 1
        if cap > w:
            cap = w
        if w == NEG_INF or (cap == self._released_cap and (w < self._close_at_ms or not self._signals_on)):
            # Nothing to release (see `_released_cap`).
            released = []
        else:
            released = self._release(w)
            self._released_cap = cap
        if skew_alert:
            return skew_alert + released
        return released

    def _drop_floor_without_records(self) -> None:
        # The partition's first valid record, and the idle rule had moved its watermark while it
        # had none (live: to another partition's watermark, or the wall clock). Nothing was
        # decided under that floor: no record, no timer. Kept, it would move every record of a
        # backlog produced after it up to it (deadlines and refund ids of the floor's time, not a
        # replay's, and nothing decided until records dated past it come); dropped, the records
        # count at their own times, as in a replay. What the floor closed stays closed: the burst
        # minutes reported through it (`signals_through`; the detector takes no minute of a
        # partition twice, so the requests of those minutes are not counted) and the hold
        # reports' decided-through time (reports resume once the decisions pass it).
        self.forced_ms = NEG_INF
        self.quiet_floor_ms = NEG_INF
        self._released_cap = None
        self.meta_dirty = True

    def _skewed(self, stream: Stream, event: PaymentEvent | LedgerEvent, timestamp_ms: int) -> list[Decision]:
        s = int(stream)
        self.skewed[s] += 1
        self.meta_dirty = True
        if not _alert_due(self.skewed[s]):
            return []
        return [
            clock_skew_alert(
                self._topic(s), self.partition, self.skewed[s], event, timestamp_ms, self.params.clock_skew_ms
            )
        ]

    def _check_clocks(self, st: ReferenceState, debit_ms: int | None, now_ms: int) -> list[Decision]:
        """Counts a payment whose first debit is dated more than F before its request, and
        raises `CLOCK_MISMATCH` at the 1st, 10th, 100th, ... such payment of the partition.
        The dates compared are the records' own as the clock guard left them, not their effective
        times: lateness moves a record's effective time later, but no delivery delay dates a
        debit before its request. `debit_ms` None: read from the first debit's entry (the debit
        was processed first, which a clean feed seldom does)."""
        request = st.request
        assert request is not None
        debit = st.debits[0]
        if debit_ms is None:
            debit_ms = debit.guarded_at_ms
            if debit_ms is None:
                # Its text's date, which its effective time never precedes; an entry saved by a
                # release that kept no guarded date may be guarded, and the earlier of the two is
                # at or after the guard's date then (a mismatch may be missed, never raised falsely).
                debit_ms = min(parse_ms(debit.occurred_at), debit.effective_at_ms)
        request_ms = request.occurred_at_ms
        if st.request_eff_ms is not None:  # (None in a state saved by version 1: its own date then)
            request_ms = min(request_ms, st.request_eff_ms)
        apart_ms = request_ms - debit_ms
        if apart_ms <= self.params.clock_skew_ms:
            return []
        self.mismatched += 1
        self.meta_dirty = True
        if not _alert_due(self.mismatched):
            return []
        p = self.params
        alert = clock_mismatch_alert(
            p.ledger_topic,
            p.payment_topic,
            self.partition,
            self.mismatched,
            st,
            debit_ms,
            request_ms,
            now_ms,
            p.clock_skew_ms,
        )
        return [alert]

    def _reject(
        self,
        stream: Stream,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        rejection: Rejection,
    ) -> list[Decision]:
        if self.observer is not None:  # (the shell drops redeliveries before the engine)
            self.observer.taken(
                stream, offset, timestamp_ms, key, value, None, None, self.watermark_ms, rejection.reason
            )
        s = int(stream)
        topic = self._topic(s)
        if timestamp_ms is not None and timestamp_ms < 0:
            timestamp_ms = None  # Kafka's "no timestamp" (-1)
        out = [dead_letter_record(topic, self.partition, offset, timestamp_ms, key, value, rejection)]
        self.rejected[s] += 1
        self.records_rejected += 1
        if _alert_due(self.rejected[s]):
            # The alert's time: the record's Kafka time, else the newest event time of its own
            # stream (not both: that would depend on how the two topics interleave).
            own_max_ms = self.max_ms[s]
            at_ms = timestamp_ms if timestamp_ms is not None else (own_max_ms if own_max_ms is not None else 0)
            out.append(
                dead_letter_alert(topic, self.partition, self.rejected[s], rejection.error, rejection.reason, at_ms)
            )
        return out

    def advance_to(self, watermark_ms: int) -> list[Decision]:
        """Live mode only: move the watermark to at least `watermark_ms` (idle feeds)."""
        if watermark_ms > self.forced_ms:
            self.forced_ms = watermark_ms
            self.meta_dirty = True
        return self._release(self.watermark_ms)

    def declare_silent(self, stream: Stream) -> list[Decision]:
        """Live mode only: `stream` has been idle past the idle timeout while the other stream
        flows. The watermark follows the flowing stream alone, and one FEED_SILENT alert is
        raised per silence episode (until the silent stream delivers again)."""
        s, o = int(stream), 1 - int(stream)
        other_max = self.max_ms[o]
        if other_max is None:
            return []
        out: list[Decision] = []
        if not self.silent[s]:
            self.silent[s] = True
            self.meta_dirty = True
            topics = (self.params.payment_topic, self.params.ledger_topic)
            target = other_max - self.params.lateness_ms
            out.append(
                feed_silent_alert(
                    topics[s], self.partition, self.max_ms[s], max(target, self.watermark_ms), topics[o], other_max
                )
            )
        out.extend(self.advance_to(other_max - self.params.lateness_ms))
        return out

    def drain(self) -> list[Decision]:
        """End of input in replay `--drain`: the watermark goes to +inf, every timer fires
        (as far as the incidents are known: replay `--drain` knows them all)."""
        return self._release(POS_INF)

    def on_incidents(self, events: list[IncidentEvent], known_through_ms: int) -> list[Decision]:
        """The burst detector's incident decisions (repeats harmless) and the event time
        through which all of them are known; returns what the advanced incidents' watermark
        releases. A resolution can end holds earlier than scheduled."""
        inc = self.incidents
        before = inc.known_through_ms
        self._released_cap = None
        if inc.add(events, known_through_ms) and self.held_refs:
            grace = self.params.hold_grace_ms
            for ref in sorted(self.held_refs):
                st = self.refs[ref]
                for hold in st.reschedule_holds(inc, grace):
                    heapq.heappush(self.decide, (hold.release_at_ms, HOLD, *hold.opened_by, ref, None))
        if inc.known_through_ms == before:
            return []
        return self._release(self.watermark_ms)

    @property
    def decided_through_ms(self) -> int:
        """Everything before this event time is decided: min(W, incidents known through + 1)."""
        return min(self.watermark_ms, self.incidents.known_through_ms + 1)

    # -- processing ------------------------------------------------------------------------

    def _release(self, watermark_ms: int) -> list[Decision]:
        heap, decide, rheap = self.heap, self.decide, self.retention_heap
        cap = self.incidents.known_through_ms + 1
        if cap > watermark_ms:
            cap = watermark_ms
        if cap > self._close_at_ms + self._retention_reach_ms and cap < POS_INF and self._signals_on:
            # (Inline, what makes `_minutes_before_retention` do nothing: W moving in small steps.)
            out = self._minutes_before_retention(cap)
        else:
            out = []
        if (
            (not heap or heap[0][0] >= cap)
            and (not decide or decide[0][0] >= cap)
            and (not rheap or rheap[0][0] >= cap)
        ):
            pass
        elif out:
            out.extend(self._process(cap))
        else:
            out = self._process(cap)
        if watermark_ms >= self._close_at_ms and watermark_ms > NEG_INF and self._signals_on:
            out.extend(self._close_minutes(watermark_ms, cap))
        # (Inline, what makes `_report_holds` do nothing: most records decide nothing and stay
        # in the minute already reported.)
        if self._holds_on and (out or cap >= POS_INF or cap - cap % MINUTE_MS > self.hold_reported_ms):
            self._report_holds(out, cap)
        return out

    def _minutes_before_retention(self, cap: int) -> list[Decision]:
        # The decisions are to pass the retention of payments whose request minute is still open:
        # a jump of more than R in a partition's event time (a dump spanning a quiet gap of days).
        # Taken in one step, the retention checks would drop those payments before their minute
        # closes, and the burst signals would count them as no payment (with holds on, the
        # incidents' watermark keeps the decisions behind the closes, and they are counted: the
        # two-pass replay and the one pass would differ). So the decisions go
        # in steps that no such check passes: up to R after the earliest request that can be in
        # an open minute (a payment's retention comes at least R after its request), then the
        # minutes a watermark there closes. The counts are those of a watermark moving in small
        # steps: `judge` reads a payment's records up to its probe time only, all decided by
        # then. Not for the drain (cap +inf), which closes its last minutes after the retention
        # checks on purpose (README, Known limits).
        out: list[Decision] = []
        retention_ms, heap, open_minutes = self.params.retention_ms, self.heap, self.open_minutes
        last = NEG_INF
        while True:
            lo = min(open_minutes) * MINUTE_MS if open_minutes else None
            if heap and (lo is None or heap[0][0] < lo):
                lo = heap[0][0]
            if lo is None or lo + retention_ms >= cap or lo + retention_ms <= last:
                return out
            last = step = lo + retention_ms
            out.extend(self._process(step))
            out.extend(self._close_minutes(step, step))

    def _report_holds(self, out: list[Decision], decided_through_ms: int) -> None:
        # The detector's tally counts the hold decisions in the incidents' alerts: they are
        # reported once the decided-through time crosses a minute (not per record); those not
        # reported yet are saved with the metadata.
        for d in out:
            if d.role != "signals" and (e := hold_event(d)) is not None:
                self.hold_events.append(e)
                if (tags := held_scope_tags(d)) is not None:
                    self.hold_scopes[e[1]] = tags
                self.meta_dirty = True
        through = decided_through_ms
        if through <= NEG_INF // 2:
            return
        floor = report_floor_ms(through)
        if floor > self.hold_reported_ms:
            # A large outage can decide thousands of holds in a minute: reports stay small
            # records, the progress goes with the last one.
            events, n = self.hold_events, HOLD_REPORT_MAX_EVENTS
            scopes = self.hold_scopes
            while len(events) > n:
                out.append(hold_report(self.partition, events[:n], self.hold_reported_ms, scopes))
                events = events[n:]
            out.append(hold_report(self.partition, events, floor, scopes))
            self.hold_events = []
            self.hold_scopes = {}
            self.hold_reported_ms = floor
            self.meta_dirty = True

    def _close_minutes(self, watermark_ms: int, cap: int) -> list[Decision]:
        # Every request of minute m, and every record up to its probe time, has been processed
        # once W >= end of m + probe age: the minute's counts are final.
        age = self.params.probe_age_ms
        through = (watermark_ms - age) // MINUTE_MS - 1
        closed: dict[int, dict[str, Any]] = {}
        open_minutes, refs = self.open_minutes, self.refs
        # Payments whose records are past W but held back from the decisions by the incidents
        # are judged from a view of the facts they will have (`ahead`).
        views = self._views_ahead(through, watermark_ms, cap)
        counted: dict[int, set[str]] = {}
        for (ref, m), view in views.items():
            st = refs.get(ref)
            if st is None or st.request_eff_ms != view.request_eff_ms:  # its request is itself ahead
                counted.setdefault(m, set()).add(ref)
        for m in sorted({k for k in open_minutes if k <= through} | set(counted)):
            scopes: dict[str, Any] = {}
            of_minute = open_minutes.pop(m, [])
            if m in counted:
                of_minute = sorted(set(of_minute) | counted[m])
            for ref in of_minute:
                st = views.get((ref, m)) or refs.get(ref)
                if st is None or st.request is None or st.request_eff_ms is None:
                    continue  # dropped by retention shorter than the probe age
                probe_at_ms = st.request_eff_ms + age
                count_payment(scopes, st, judge(st, probe_at_ms), probe_at_ms)
            closed[m] = close_scope_minutes(scopes)
        self.signals_through = through
        self._close_at_ms = (through + 2) * MINUTE_MS + age if through < POS_INF // MINUTE_MS else POS_INF + 1
        self.meta_dirty = True
        return signals_decisions(self.partition, through, closed, self.params.signals_part_max_bytes)

    def _views_ahead(self, through: int, watermark_ms: int, cap: int) -> dict[tuple[str, int], ReferenceState]:
        # The facts of references with records past W but not yet decided (in `heap`, times in
        # [cap, W)): what the decisions will have seen by then, by reference and minute of the
        # request (a reference requested again after a gap that drops it is a payment of its
        # own, and both may be in the minutes closing at once: a W that jumps while the
        # incidents lag). Only references whose request is in a minute closing now count:
        # request times in [lo_ms, hi_ms), the minutes after the last closed one through
        # `through`. Candidates: references whose decided request is in
        # those minutes (`open_minutes`) and references with a waiting request in them
        # (`waiting`); their waiting records are in `pending`.
        waiting = self.waiting
        if waiting is None:
            return {}  # holds off: the decisions are at W, nothing waits past it
        closing = [m for m in waiting if m <= through]
        if cap >= watermark_ms:
            for m in closing:
                del waiting[m]  # decided: in `open_minutes` now
            return {}
        candidates: set[str] = set()
        for m in closing:
            candidates.update(waiting.pop(m))
        for m, of_minute in self.open_minutes.items():
            if m <= through:
                candidates.update(of_minute)
        prev = self.signals_through
        lo_ms = (prev + 1) * MINUTE_MS if prev is not None else -(2**64)  # (below every time)
        hi_ms = (through + 1) * MINUTE_MS
        refs, pending = self.refs, self.pending
        # A reference is dropped by its retention check once R passed since its last record and
        # its cycles and holds ended: the decisions drop it before a record that comes later
        # still. A view does so where that is certain whatever the incidents: past R after its
        # last record and T + H after it (the latest a cycle or hold it may have then ends), or
        # the latest end of the decided state's own (`_dropped_by`). (Only with R above the
        # probe age, so the records after such a gap are past the probe of a request before it.)
        p = self.params
        retention_ms = p.retention_ms if p.retention_ms > p.probe_age_ms else POS_INF
        gap_ms = max(retention_ms, p.timeout_ms + p.max_hold_ms)
        views: dict[tuple[str, int], ReferenceState] = {}
        for ref in candidates:
            waiting_items = pending.get(ref)
            if not waiting_items:
                continue
            items = [it for it in waiting_list(waiting_items) if cap <= it[0] < watermark_ms]
            if not items:
                continue
            if len(items) > 1:
                # (The whole item, as the heap orders it: records of one reference tied on time,
                # stream and offset, which only a replay file repeating an offset has, are seen
                # here in the order they will be decided; a key of the first four would keep the
                # order read, and the burst views, and so holds, would depend on it.)
                items.sort()
            st = refs.get(ref)
            if st is not None and st.last_eff_ms + retention_ms < items[0][0] and self._dropped_by(st) < items[0][0]:
                # Dropped before its next record: a request in the decided state is judged as
                # decided (the rest comes after its probe), and the records ahead are another
                # payment's.
                st = None
            if (
                st is not None
                and st.request_eff_ms is not None
                and not lo_ms <= st.request_eff_ms < hi_ms
                and items[-1][0] <= st.last_eff_ms + gap_ms
            ):
                # Its request is decided already (a view keeps it), in a minute not closing now,
                # and no record of it can come after a gap that drops it (a request after one
                # starts a payment of its own, which may be in a closing minute): no view.
                # (Live, while the incidents lag, thousands of references wait with records
                # ahead; building each one's view at every close was a third of the worker's
                # CPU.)
                continue
            if st is not None:
                view, last = st.facts_copy(), st.last_eff_ms
            else:
                view, last = ReferenceState(ref), None
            for eff, _kind, s, _offset, _ref, event in items:
                assert event is not None
                if last is not None and last + gap_ms < eff:
                    rq_ms = view.request_eff_ms
                    if rq_ms is not None and lo_ms <= rq_ms < hi_ms:
                        views[ref, rq_ms // MINUTE_MS] = view  # (the rest comes after its probe)
                    view = ReferenceState(ref)  # (as above)
                if view.apply_facts(s, eff, event, False) is not None:  # (a duplicate: no record)
                    last = eff
            rq_ms = view.request_eff_ms
            if rq_ms is not None and lo_ms <= rq_ms < hi_ms:
                views[ref, rq_ms // MINUTE_MS] = view
        return views

    def _dropped_by(self, st: ReferenceState) -> int:
        """The latest time the retention check can drop decided state `st` if no record of it
        comes: R after its last record, or the latest its open cycle's hold or its holds can
        end."""
        at = st.last_eff_ms + self.params.retention_ms
        if st.cycle_deadline_ms is not None:
            at = max(at, st.cycle_deadline_ms + self.params.max_hold_ms)
        for hold in st.holds:
            at = max(at, hold.release_by_ms)
        return at

    def _process(self, cap: int) -> list[Decision]:
        heap, decide, rheap = self.heap, self.decide, self.retention_heap
        out: list[Decision] = []
        p = self.params
        persistent = self.persistent
        keep_pending, pending = self.keep_pending, self.pending
        dirty = self.dirty
        refs = self.refs
        pop, push = heapq.heappop, heapq.heappush
        incidents = self.incidents
        grace_ms, max_hold_ms = p.hold_grace_ms, (p.max_hold_ms if p.holds else 0)
        through = self.signals_through
        timeout_ms, retention_ms, partition = p.timeout_ms, p.retention_ms, self.partition
        own_accounts = p.ledger_own_accounts
        clock_skew_ms = p.clock_skew_ms
        obs = self.observer
        open_minutes = self.open_minutes
        new_tuple: Any = tuple.__new__
        # A drain to +inf (replay): once no record waits, retention checks change nothing a
        # timer decides (a reference goes only without a cycle or holds, whose timers are then
        # stale anyway), and when every timer has fired every reference has gone. So they are
        # not run one by one (two heap operations a reference, a tenth of a short replay): the
        # references go at the end, all at once (`observer` watches each one go: not then).
        drop_at_end = cap >= POS_INF and self.observer is None
        while True:
            # The next record or timer in (eff, kind, stream, offset) order, of the two heaps.
            # Retention checks live in a third heap (one per reference, most far in the
            # future) and run when they come first in (eff, kind) order: after records,
            # deadlines and hold releases of the same instant.
            if heap and heap[0][0] < cap:
                nxt = heap if not decide or heap[0] < decide[0] else decide
            elif decide and decide[0][0] < cap:
                nxt = decide
            else:
                nxt = None
            if (
                rheap
                and rheap[0][0] < cap
                and (nxt is None or rheap[0][0] < nxt[0][0])
                and not (drop_at_end and not heap)
            ):
                due, s, offset, ref = pop(rheap)
                st = refs.get(ref)
                if st is None or st.retention != (due, s, offset):
                    continue
                st.retention = None
                if st.last_eff_ms + p.retention_ms > due:
                    self._schedule_retention(st)
                elif st.cycle_deadline_ms is None and not st.holds:
                    del refs[ref]
                    if self.observer is not None:
                        self.observer.dropped(ref, due, cap, st)
                # else: the deadline or the hold's end reschedules retention.
                if persistent:
                    dirty.add(ref)
                continue
            if nxt is None:
                break
            item: Item = pop(nxt)
            eff, kind, s, offset, ref, event = item
            if kind == RECORD:
                assert event is not None
                if keep_pending:
                    waiting_items = pending[ref]
                    if type(waiting_items) is list:
                        if waiting_items[0] is item:  # (taken in key order: nearly always the first)
                            del waiting_items[0]
                        else:
                            waiting_items = pending[ref] = {id(it): it for it in waiting_items}
                            del waiting_items[id(item)]
                    else:
                        del waiting_items[id(item)]
                    if not waiting_items:
                        del pending[ref]
                    if persistent:
                        dirty.add(ref)
                st = refs.get(ref)
                if st is None:
                    st = refs[ref] = ReferenceState(ref)
                had_request = st.request is not None
                had_holds = bool(st.holds)
                applied = st.apply(s, offset, eff, event, timeout_ms, partition, own_accounts)
                if applied is None:  # a duplicate event_id: ignored
                    decisions, opened = _NO_DECISIONS, None
                else:
                    decisions, opened = applied
                if obs is not None:
                    obs.processed(_STREAMS[s], offset, eff, cap, event, applied is None, st, decisions)
                # The dates of a payment's request and first debit, once both are processed
                # (`_check_clocks`): at the debit that opens the first cycle after its request
                # (the usual order, inline), or at a request after its debit.
                if opened is not None and had_request and st.debit_count == 1:
                    req_ms = st.request.occurred_at_ms  # type: ignore[union-attr]  # (had_request)
                    req_eff = st.request_eff_ms
                    if req_eff is not None and req_eff < req_ms:
                        req_ms = req_eff
                    debit_ms = event.occurred_at_ms
                    if eff < debit_ms:
                        debit_ms = eff
                    if req_ms - debit_ms > clock_skew_ms:
                        out.extend(self._check_clocks(st, debit_ms, eff))
                if not had_request and st.request is not None:
                    if st.debits:
                        out.extend(self._check_clocks(st, None, eff))
                    minute = eff // MINUTE_MS
                    # A request the burst signals already counted ahead of the decisions.
                    if through is None or minute > through:
                        of_minute = open_minutes.get(minute)
                        if of_minute is None:
                            open_minutes[minute] = [ref]
                        else:
                            of_minute.append(ref)
                if decisions:
                    if max_hold_ms:
                        explain_cancellations(decisions, st.request, incidents)
                    out.extend(decisions)
                if opened is not None:
                    push(decide, (opened, DEADLINE, s, offset, ref, None))
                if had_holds and not st.holds:
                    self.held_refs.discard(ref)
                if st.retention is None:
                    # `_schedule_retention`, inline (a reference's first record).
                    at = st.last_eff_ms + retention_ms
                    last_s, last_offset = st.last_key
                    st.retention = new_tuple(RetentionTimer, (at, last_s, last_offset))
                    push(rheap, (at, last_s, last_offset, ref))
            elif kind == DEADLINE:
                st = refs.get(ref)
                if st is None or st.cycle_deadline_ms != eff:
                    continue
                n_holds = len(st.holds)
                numbers = (st.net, st.settled, st.active) if self.observer is not None else (0, 0, 0)
                fired = st.on_deadline(eff, self.partition, incidents, max_hold_ms, grace_ms)
                if self.observer is not None:
                    self.observer.deadline(ref, eff, cap, numbers, st, fired)
                out.extend(fired)
                if len(st.holds) > n_holds:
                    hold = st.holds[-1]
                    self.held_refs.add(ref)
                    push(decide, (hold.release_at_ms, HOLD, *hold.opened_by, ref, None))
                if st.retention is None:
                    self._schedule_retention(st, not_before_ms=eff)
                if persistent:
                    dirty.add(ref)
            else:
                st = refs.get(ref)
                if st is None or not st.holds:
                    continue
                decisions, moved = st.on_hold_timer(eff, (s, offset), incidents, grace_ms, self.partition)
                if moved is not None:
                    push(decide, (moved.release_at_ms, HOLD, *moved.opened_by, ref, None))
                if decisions:
                    out.extend(decisions)
                    if not st.holds:
                        self.held_refs.discard(ref)
                    if st.retention is None:
                        self._schedule_retention(st, not_before_ms=eff)
                if persistent:
                    dirty.add(ref)
        if drop_at_end and not heap:
            gone = [ref for ref, st in refs.items() if st.cycle_deadline_ms is None and not st.holds]
            for ref in gone:
                del refs[ref]
            if persistent:
                dirty.update(gone)
            if refs:  # (not reached: every timer has fired)
                self.retention_heap = [it for it in rheap if it[3] in refs]
                heapq.heapify(self.retention_heap)
            else:
                rheap.clear()
        return out

    def _schedule_retention(self, st: ReferenceState, not_before_ms: int = NEG_INF) -> None:
        at = max(st.last_eff_ms + self.params.retention_ms, not_before_ms)
        s, offset = st.last_key
        st.retention = tuple.__new__(RetentionTimer, (at, s, offset))
        heapq.heappush(self.retention_heap, (at, s, offset, st.reference))

    @staticmethod
    def _index_request(waiting: dict[int, list[str]], eff: int, ref: str) -> None:
        refs_of_minute = waiting.get(eff // MINUTE_MS)
        if refs_of_minute is None:
            waiting[eff // MINUTE_MS] = [ref]
        else:
            refs_of_minute.append(ref)

    # -- persistence -----------------------------------------------------------------------

    def take_dirty(self) -> tuple[dict[str, bytes | None], bytes | None]:
        """What changed since the last call: per reference, its saved entry (None = delete),
        and the partition's metadata entry (None if unchanged). Coalesces many changes of one
        reference into one write, as a record cache does."""
        save = self.save_reference
        refs = {ref: save(ref) for ref in self.dirty}
        self.dirty.clear()
        meta = None
        if self.meta_dirty:
            meta = self.save_meta()
            self.meta_dirty = False
        return refs, meta

    def save_reference(self, ref: str) -> bytes | None:
        st = self.refs.get(ref)
        pend = self.pending.get(ref)
        if pend:  # records still waiting for the watermark: [eff_ms, stream, offset, event fields]
            # (Plain tuples, written as arrays: one allocation each where a list takes two.)
            waiting = [(e, s, o, event_fields(ev)) for e, _k, s, o, _r, ev in waiting_list(pend) if ev is not None]
            return codec.dumps({"state": None if st is None else st.to_json(), "pending": waiting})
        if st is None:
            return None
        return codec.dumps({"state": st.to_json()})

    def save_meta(self) -> bytes:
        return codec.dumps(
            {
                "v": META_VERSION,
                "partition": self.partition,
                "max_ms": self.max_ms,
                "last_offset": self.last_offset,
                "forced_ms": self.forced_ms,
                "silent": self.silent,
                "rejected": self.rejected,
                "skewed": self.skewed,
                "signals_through": self.signals_through,
                **(
                    {"hold_events": self.hold_events, "hold_reported_ms": self.hold_reported_ms}
                    if self.params.holds
                    else {}
                ),
                # Apart from `hold_events`, whose items keep their shape for an engine that does
                # not know it (restored without it, the reports carry no scopes: `holdtally`).
                **({"hold_scopes": self.hold_scopes} if self.hold_scopes else {}),
                **({"stall_paged": self.stall_paged} if self.stall_paged is not None else {}),
                **({"quiet_floor_ms": self.quiet_floor_ms} if self.quiet_floor_ms > NEG_INF else {}),
                **({"mismatched": self.mismatched} if self.mismatched else {}),
                "request_times_from_ms": self.request_times_from_ms,
                "params": {name: getattr(self.params, name) for name in STAMPED_PARAMS},
            }
        )

    def changed_params(self) -> list[tuple[str, int, int]]:
        """Each stamped parameter of the restored state that differs from this engine's, as
        (name, saved, now); none for a state saved without a stamp."""
        saved = self.saved_params or {}
        return [
            (name, saved[name], now)
            for name in STAMPED_PARAMS
            if name in saved and saved[name] != (now := getattr(self.params, name))
        ]

    @classmethod
    def restore(
        cls, partition: int, params: Params, meta: bytes | None, entries: Iterable[tuple[str, bytes]]
    ) -> PartitionEngine:
        """Rebuild an engine from saved metadata and reference entries (in any order).

        The metadata's `last_offset` stamps which input offsets the state covers: waiting
        records above it are dropped (they will be delivered again). A reference's processed
        history above it cannot be undone; its records come again and are ignored as
        duplicates by `event_id` (second line of defence, see README "Input boundary").
        Raises `StateVersionError` for metadata or an entry of a version this code does not read."""
        eng = cls(partition, params)
        request_times_from_ms: int | None = None
        if meta is not None:
            m: dict[str, Any] = codec.loads(meta)
            version = m.get("v", 1)
            if type(version) is not int or not 1 <= version <= META_VERSION:
                raise StateVersionError(
                    f"partition {partition}: saved metadata of version {version!r}, this worker reads"
                    f" versions 1 to {META_VERSION} (state saved by a newer release?)"
                )
            eng.max_ms = list(m["max_ms"])
            eng.last_offset = list(m["last_offset"])
            eng.forced_ms = m["forced_ms"]
            eng.silent = list(m["silent"])
            eng.rejected = list(m["rejected"])
            eng.skewed = list(m.get("skewed", (0, 0)))
            eng.mismatched = m.get("mismatched", 0)
            eng.signals_through = m.get("signals_through")
            eng.hold_events = list(m.get("hold_events", ()))
            eng.hold_scopes = {str(r): list(t) for r, t in m.get("hold_scopes", {}).items()}
            eng.hold_reported_ms = m.get("hold_reported_ms", NEG_INF)
            if (paged := m.get("stall_paged")) is not None:
                eng.stall_paged = (paged[0], paged[1])
            eng.quiet_floor_ms = m.get("quiet_floor_ms", NEG_INF)
            eng.saved_params = m.get("params")
            request_times_from_ms = m.get("request_times_from_ms")
            if eng.signals_through is not None:
                eng._close_at_ms = (eng.signals_through + 2) * MINUTE_MS + params.probe_age_ms
        heap = eng.heap
        for ref, raw in entries:
            d = codec.loads(raw)
            if d["state"] is not None:
                try:
                    st = eng.refs[ref] = ReferenceState.from_json(d["state"])
                except StateVersionError as exc:
                    raise StateVersionError(f"partition {partition}: {exc}") from None
                if st.cycle_deadline_ms is not None and st.cycle_opened_by is not None:
                    eng.decide.append((st.cycle_deadline_ms, DEADLINE, *st.cycle_opened_by, ref, None))
                for hold in st.holds:
                    eng.decide.append((hold.release_at_ms, HOLD, *hold.opened_by, ref, None))
                if st.holds:
                    eng.held_refs.add(ref)
                if st.retention is not None:
                    eng.retention_heap.append((*st.retention, ref))
            waiting_items: list[Item] = []
            for eff, s, offset, ev in d.get("pending", ()):
                if offset > eng.last_offset[s]:
                    # Written ahead of the metadata that stamps what the state covers (a crash
                    # between a batch's reference entries and its metadata): the record is
                    # taken again from Kafka, so keeping it here would hold it twice.
                    continue
                event = PaymentEvent(*ev) if s == 0 else LedgerEvent(*ev)
                item: Item = (eff, RECORD, s, offset, ref, event)
                heap.append(item)
                waiting_items.append(item)
                if eng.waiting is not None and s == 0 and event.type == "requested":
                    eng._index_request(eng.waiting, eff, ref)
            if waiting_items:
                eng.pending[ref] = waiting_items
        if request_times_from_ms is None:
            # (Once, at the first restore of state saved without the field.)
            request_times_from_ms = max(
                (r.deadline_ms + 1 for st in eng.refs.values() for r in st.refunds), default=NEG_INF
            )
        eng.request_times_from_ms = request_times_from_ms
        heapq.heapify(heap)
        heapq.heapify(eng.decide)
        heapq.heapify(eng.retention_heap)
        through = eng.signals_through
        for ref, st in eng.refs.items():
            if st.request_eff_ms is not None:
                minute = st.request_eff_ms // MINUTE_MS
                if through is None or minute > through:
                    eng.open_minutes.setdefault(minute, []).append(ref)
        for refs_of_minute in eng.open_minutes.values():
            refs_of_minute.sort()
        return eng
