"""The live worker's shell around the core: batches of raw Kafka events in, decisions out.

Faust only moves bytes here. For each batch the shell routes events to their partition's
`PartitionEngine` and sends the decisions. A commit (`commit`) then makes everything decided so
far durable: it waits until the producer has the decisions sent (so state never runs ahead of
what was sent), writes the changed state of each partition to the state store in one coalesced
write per reference (a record cache, as Kafka Streams' KIP-63), the partition's metadata last,
waits until the store has them on its changelog (`statestore`), and only then acks the batches
it covers (their offsets may be committed). The agent's batches are committed as a group
commit: one commit runs at a time, in the background, beside the next batches, and takes
everything decided while the previous one was on its way (two broker round trips per commit,
not per batch; a reference changed by several batches is written once). A partition newly
assigned here is restored (local state and changelog tail) before its engine is built, pending
records included.

The one wall-clock rule (live only) is here too: `check_idle_feeds` advances a partition's
watermark when an input stream has been silent for `idle_timeout_s` (FEED_SILENT alert) and the
broker, asked at that moment, has none of its records left for this worker (`end_offsets`; what
lies before the end offset read when it is a few offsets, `fetch_lag`: transaction markers only
are nothing left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, Protocol

from ..core import codec
from ..core.alerts import input_lost_alert
from ..core.deadletter import dead_letter_record
from ..core.decisions import Decision
from ..core.eventtime import format_ms
from ..core.holds import IncidentEvent
from ..core.partition import NEG_INF, PartitionEngine
from ..core.records import Stream
from ..core.reference import StateVersionError
from ..core.validation import Rejection
from ..drivers.replayfile import KafkaRecord
from ..settings import DOCS, Settings
from .boundary import Gap, InputRecord, LiveRecord, PartitionPlan, plan_batch, topic_partition
from .freeze import LoopWatch, stop_if_frozen
from .gapfill import fill_gaps, only_markers
from .recovery import stop_unreadable_state

log = logging.getLogger("qris_guard.worker")

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]
# The broker's end offset of each (topic, partition) asked, now; raises when it does not answer
# (`endoffsets.BrokerEndOffsets.ask`).
EndOffsets = Callable[[Collection[tuple[str, int]]], Awaitable[Mapping[tuple[str, int], int]]]

# State keys carry a type after the partition, so no reference can name another entry:
# `<p>/r/<reference>` for a reference, `<p>/m` for the partition's metadata. (The earlier
# `<p>/<reference>` and `<p>/\x00meta` let a reference "\x00meta" overwrite the metadata.)


def state_key(partition: int, reference: str) -> bytes:
    """The table key of a reference's state.

    >>> state_key(3, "QR1"), meta_key(3)
    (b'3/r/QR1', b'3/m')
    """
    return b"%d/r/" % partition + reference.encode("utf-8")


def meta_key(partition: int) -> bytes:
    """The table key of a partition's metadata (stream maxima, offsets, counts)."""
    return b"%d/m" % partition


def reference_of(partition: int, key: bytes) -> str | None:
    """The reference a table key of `partition` holds, or None for any other key."""
    prefix = b"%d/r/" % partition
    return key[len(prefix) :].decode("utf-8") if key.startswith(prefix) else None


# Batches decided and not yet taken by a commit, at most; the one that reaches it waits for a
# commit. 2: a batch is decided while the previous one's commit is on its way (its two round
# trips overlap the next batch's work), no further. With holds on, running further ahead of the
# commits lets the burst detector's incidents fall behind, and records waiting for them cost CPU:
# a 100k backlog to its last decision took 19,289 records/s (48 µs a record) with 2, 16,894-17,150
# with 1 (a commit per batch, as before) and 13,625 (68 µs) with 8, alternated in one run each
# (README, Benchmarks).
MAX_UNCOMMITTED_BATCHES = 2

# The longest a batch waits for the incidents (`ReconcileShell.paced`), and after a wait that
# ended with them still too far behind (they do not move, or hardly), how long the worker then
# takes its input without waiting. At most 5 s of every 65 waiting: a worker whose incidents are
# stuck still takes more than nine tenths of what it would, so each of its partitions keeps
# moving and the feed-stall watchdog (`QRIS_FEED_STALL_S`, 120 s) never restarts it for this;
# at 2,000 records a batch every 5 s, a partition behind others' 4 MB fetches could wait longer.
PACE_WAIT_S = 5.0
PACE_COOLDOWN_S = 60.0
# How long a partition's log start, once asked, is taken as known (`_lost_to_retention`):
# retention moves it by whole segments, minutes or hours apart.
LOG_START_TTL_S = 10.0


def _setting_change(name: str, saved_ms: int, now_ms: int) -> str:
    """A stamped parameter's change as its setting says it (`timeout_ms` is `QRIS_TIMEOUT_S`)."""
    return f"{DOCS[name.removesuffix('_ms') + '_s'][0]} {saved_ms / 1000:g} now {now_ms / 1000:g}"


# A stream is silent while the other flows only when the other delivered this share of the idle
# timeout after it fell quiet: two streams that stopped together (the end of the day's traffic,
# or a backlog taken at a restart) fall quiet a batch apart, and an idle check between the two
# timeouts would page the first as silent beside the second, a critical FEED_SILENT for a
# quiet spell. Until then the check does nothing; at the next, both are quiet, or the other has
# delivered again and the silence is paged.
APART = 0.25


def _flows_apart(ages: list[float], flowing: int, idle_s: float) -> bool:
    """Whether stream `flowing`, not silent beside the other, flows apart from it (`APART`): it
    delivered well after the other fell quiet, or the broker holds records of it not taken yet
    (quiet as long, but late)."""
    return ages[flowing] >= idle_s or ages[1 - flowing] - ages[flowing] >= idle_s * APART


@dataclass
class PartitionClock:
    """Wall-clock arrival times of one partition's two streams (monotonic seconds)."""

    last_arrival: list[float] = field(default_factory=lambda: [0.0, 0.0])
    started: float = field(default_factory=time.monotonic)
    # When a stream first delivered after both were quiet for the idle timeout: the other
    # stream's silence counts from then at the earliest. A stream is silent *while the other
    # flows*: after a night with both quiet, the first payment's debit a few seconds behind it
    # must not page the ledger as silent since its last record of the evening.
    # (-inf: none has yet. Not 0: monotonic time starts near 0 at boot.)
    resumed: float = -math.inf

    def arrived(self, stream: int, now: float, idle_s: float) -> None:
        """A batch brought records of `stream` at `now`."""
        mine, other = (self.last_arrival[s] or self.started for s in (stream, 1 - stream))
        # Only the first record after the quiet: the same stream's next one, with nothing of the
        # other since, does not count its silence again (a dead feed beside one whose records
        # come further apart than the idle timeout would never be silent).
        if now - mine >= idle_s and other >= self.resumed:
            self.resumed = now
        self.last_arrival[stream] = now

    def ages(self, now: float) -> list[float]:
        """Seconds each stream has been quiet while the other could flow."""
        return [now - max(t or self.started, self.resumed) for t in self.last_arrival]


class StateStore(Protocol):
    """Where the shell keeps engine state, per partition (`statestore.PartitionStore`)."""

    def put_many(self, partition: int, changes: list[tuple[bytes, bytes | None]]) -> None:
        """Queue changes (key, value; None deletes) of a partition, in order, for `write_state`."""
        ...

    def load(self, partition: int) -> Iterable[tuple[bytes, bytes]]: ...


class TimedLock(asyncio.Lock):
    """The shell's lock, remembering since when (monotonic seconds) it is held: every batch,
    idle-feed tick and hand-over of incidents runs under it, so a lock held for minutes means
    a send, flush or state write that hangs, which the worker's watchdog turns into a restart
    instead of a silent stop."""

    held_since: float | None = None

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        self.held_since = time.monotonic()
        return True

    def release(self) -> None:
        self.held_since = None
        super().release()

    def held_for_s(self, now_s: float) -> float:
        return 0.0 if self.held_since is None else now_s - self.held_since


class ReconcileShell:
    """Holds the engines of the partitions this worker owns and drives them."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        send: Send,
        flush: Callable[[], Awaitable[None]],
        write_state: Callable[[], Awaitable[None]],
        assignment: Callable[[], Set[Any]] | None = None,
        fetch_gap: Callable[[Gap], Awaitable[list[KafkaRecord]]] | None = None,
        restore: Callable[[int], Awaitable[None]] | None = None,
        end_offsets: EndOffsets | None = None,
        fetch_lag: Callable[[Gap], Awaitable[Sequence[InputRecord]]] | None = None,
    ) -> None:
        self.settings = settings
        # An input stream is silent for the idle rule only when the broker, asked at the time of
        # the check, has none of its records left that this worker has not taken. A worker behind
        # its input (a backlog, Faust handing one topic's records over long after the other's) or
        # one the broker stopped serving (a leader it cannot reach, a quota) has not heard from a
        # stream for minutes although its records wait on the broker; declaring it silent would
        # decide deadlines before the settlements waiting there: wrong refunds, then their
        # cancellations. The high watermark Faust last fetched cannot tell: it stays where it was
        # when fetches stop being answered. No answer: not known to be silent. None: no broker
        # (tests of the shell alone), wall-clock silence only.
        self.end_offsets = end_offsets
        # An end offset past the next offset to take is not always a record: a transactional
        # producer's commit or abort marker takes an offset and no consumer is given it, so a
        # stream whose producer is transactional ends one offset past its last record, for ever.
        # The offsets between are read from the broker (`gapfill.only_markers`, a reader of the
        # idle rule's own); markers only: nothing left to take. None, or no answer: records.
        self.fetch_lag = fetch_lag
        self._unanswered = False  # the last question went unanswered (logged once per episode)
        self._unread: set[tuple[str, int]] = set()  # lags that could not be read (logged once)
        self._behind: set[tuple[str, int]] = set()  # idle streams with records waiting (logged once)
        # A worker's stop closes the readers the idle rule asks with (`stop_idle_checks`): a check
        # still asking then would start them again, left open when the process ends (and, its
        # start cut short by the stop, logged as an unclosed consumer).
        self._idle_checks_stopped = False
        self._idle_checking = asyncio.Lock()
        # Brings a partition's stored state up to date before its engine is built from it.
        self.restore = restore
        # Hands the batch's state writes (queued by `store.put`) to the Kafka client.
        self.write_state = write_state
        # The consumer's current assignment, to notice events of partitions no longer owned.
        self.assignment = assignment
        # Reads offsets missing from a delivered batch from the broker (`gapfill.py`).
        self.fetch_gap = fetch_gap
        self.params = settings.params
        # The input topics' partition count (the app's, when it differs from the settings').
        self.input_partitions = settings.partitions
        self.store = store
        self.send = send
        self.flush = flush
        self.engines: dict[int, PartitionEngine] = {}
        self.clocks: dict[int, PartitionClock] = {}
        # The detector's incidents as read from the incidents topic (refund holds), for every
        # engine, including engines restored later; decisions they release at a restore.
        self.incident_events: list[IncidentEvent] = []
        self.incident_keys: set[IncidentEvent] = set()
        # Partitions whose event time follows the wall clock because both input streams went
        # quiet (until a check sees one of them heard again): what they decide past their
        # records' own watermark is counted in `idle_quiet_decisions`, with holds on too, when
        # the detector's incidents release it (`on_incidents`).
        self._quiet: set[int] = set()
        # Restored engines whose watermark the idle rule had moved past their records' while both
        # streams were quiet (a restart during a quiet spell; `PartitionEngine.quiet_floor_ms`):
        # the watermark they stood at, from which the quiet goes on, until a record of the
        # partition comes. From the records alone it stood still for as long as the quiet had
        # lasted before the restart (hours after a night's restart).
        self._quiet_from: dict[int, int] = {}
        # Set while this worker may no longer own its partitions (a rebalance revoked them, or
        # the worker was stalled past the session timeout, a zombie's case): incidents are taken
        # but release nothing until the next assignment says which engines stay
        # (`release_held_back`). A frozen worker resumed otherwise sent a `refund.held` after the
        # new owner's `refund.hold_released` of the same refund.
        self.holding_back = False
        # The event loop as the freeze watch sees it (`freeze.py`): nothing decided before a
        # freeze past the session is sent after it; `on_frozen` replaces the process then.
        self.loop = LoopWatch(settings.session_timeout_s)
        self.on_frozen: Callable[[], None] | None = None
        # Where each input partition's log begins now (the app's broker reader; None: no broker):
        # offsets a batch misses below it were deleted before this worker read them (INPUT_LOST).
        self.begin_offsets: EndOffsets | None = None
        # Its latest answer per topic partition and when (monotonic s): a transactional producer
        # leaves a marker gap in nearly every batch, which must not cost a broker round trip each.
        self._log_start: dict[tuple[str, int], tuple[int, float]] = {}
        self.incidents_known_through_ms = NEG_INF
        self.released_at_restore: list[Decision] = []
        # Set when the incidents known move, while `paced` waits for them (a new one each wait);
        # no wait before this (monotonic s): the last one ended with them still too far behind.
        self._incidents_moved: asyncio.Event | None = None
        self._pace_again_at = 0.0
        self.lock = TimedLock()
        # Group commit (`commit`): one at a time; the batches decided and not yet committed, as
        # the callbacks that ack them; whether decisions were sent since the last commit.
        self.commit_lock = TimedLock()
        self._acks: list[Callable[[], None]] = []
        self._sent = False
        self._committer: asyncio.Task[None] | None = None
        # Shown each decision sent, as (role, value): the value as built, not parsed back from
        # the bytes sent (`watch.WorkerWatch.on_output`: metrics, dashboard, lookup). Parsing
        # each record again was nearly half of the shell's work for a refund sent.
        self.on_output: Callable[[str, dict[str, Any]], None] | None = None
        # Called with each engine made or restored here (metrics, the lookup index watch it).
        self.on_engine: Callable[[PartitionEngine], None] | None = None
        # Told each engine dropped here (`forget_partition`), as it goes (`feeds.TopicSilence.left`).
        self.on_forget: Callable[[PartitionEngine], None] | None = None
        # Rewrites the idle check's decisions (one FEED_SILENT per topic, and its recovery).
        self.on_idle: Callable[[list[Decision]], list[Decision]] | None = None
        # Stalled event time (`clockstall.ClockStall`): its alerts at each idle check, given the
        # wall clock (monotonic seconds).
        self.on_stall: Callable[[float], list[Decision]] | None = None
        self.counts: dict[str, int] = {
            "records": 0,
            "refunds": 0,
            "alerts": 0,
            "dead_letter": 0,
            "signals": 0,
            "batches": 0,
            "internal_errors": 0,
            "unowned_events": 0,
            "redelivered_skipped": 0,
            "gap_records_fetched": 0,
            "gap_offsets_empty": 0,
            "idle_checks_unanswered": 0,
            "idle_streams_behind": 0,
            # Decisions made after both input streams of a partition went quiet and event time
            # followed the wall clock: a replay makes them only with --drain (no alert: quiet
            # feeds at night are normal; logged with the partition).
            "idle_quiet_decisions": 0,
            # Input offsets deleted by retention before this worker read them (INPUT_LOST).
            "input_offsets_lost": 0,
            # Partitions restored from a state saved with other decision settings (`_params_changed`).
            "restored_with_other_settings": 0,
            "commits": 0,
            # Reference entries written to the state, deletions included (a reference changed
            # by several records between two commits is written once: the benches' saves per
            # record).
            "references_saved": 0,
            # Batches that waited for the incidents before they were taken, and how long in all
            # (`paced`).
            "paced_batches": 0,
            "paced_ms": 0,
        }

    # -- engines ---------------------------------------------------------------------------

    def forget_partition(self, partition: int) -> None:
        """A partition moved away (or its stored state moved on): its engine is rebuilt from
        the store when it is next needed."""
        eng = self.engines.pop(partition, None)
        if eng is not None and self.on_forget is not None:
            self.on_forget(eng)
        self.clocks.pop(partition, None)
        self._quiet.discard(partition)
        self._quiet_from.pop(partition, None)

    async def restore_engine(self, partition: int) -> PartitionEngine:
        """The partition's engine, restored from the store first if it is not held here."""
        if partition not in self.engines and self.restore is not None:
            await self.restore(partition)
        return self.engine(partition)

    def engine(self, partition: int) -> PartitionEngine:
        eng = self.engines.get(partition)
        if eng is None:
            own_meta = meta_key(partition)
            meta = None
            entries: list[tuple[str, bytes]] = []
            for k, v in self.store.load(partition):
                if k == own_meta:
                    meta = v
                    continue
                ref = reference_of(partition, k)
                if ref is not None:
                    entries.append((ref, v))
            eng = self.engines[partition] = PartitionEngine.restore(partition, self.params, meta, entries)
            if self.params.holds and not self.holding_back:
                # Sent before anything else is (`_emit`) and before any commit persists this
                # engine's state (`commit`). Held back: `release_held_back` gives them.
                self.released_at_restore.extend(eng.on_incidents(self.incident_events, self.incidents_known_through_ms))
            elif not self.params.holds:
                self._holds_left(partition, eng)
            self._params_changed(partition, eng)
            self.clocks[partition] = PartitionClock()
            if self._quiet_stands(eng):
                self._quiet_from[partition] = eng.forced_ms
            if self.on_engine is not None:
                self.on_engine(eng)
            log.info(
                "partition %d: state restored (%d references, %d waiting items, watermark %s, offsets taken %s)",
                partition,
                len(eng.refs),
                len(eng.heap) + len(eng.decide),
                eng.watermark_ms,
                eng.last_offset,
            )
        return eng

    def _params_changed(self, partition: int, eng: PartitionEngine) -> None:
        # A state saved by a run with another timeout, lateness, retention, clock guard or hold
        # limits: its open references keep the deadlines (and refund ids) and holds that run
        # decided, which a replay with today's settings does not reproduce. Said once per
        # partition and restore; the state saved from now on carries today's.
        changed = eng.changed_params()
        if not changed:
            return
        self.counts["restored_with_other_settings"] += 1
        log.warning(
            "partition %d: state saved with other settings (%s): the %d references it keeps keep the "
            "deadlines and holds decided with them; a replay with today's settings decides those differently",
            partition,
            ", ".join(_setting_change(name, saved, now) for name, saved, now in changed),
            len(eng.refs),
        )

    def _holds_left(self, partition: int, eng: PartitionEngine) -> None:
        # Holds saved by a run with refund holds on, restored with them off: this worker reads
        # no incidents, so each ends at its own `release_by` (the H of the run that made it) or
        # when its payment settles, not when its incident resolves. Said once per partition.
        holds = [h for st in eng.refs.values() for h in st.holds]
        if holds:
            log.warning(
                "partition %d: %d refund(s) held by a run with holds on, restored with holds off "
                "(QRIS_MAX_HOLD_S=0): no incident is read now, so each is paid at its release_by (the latest "
                "%s) unless its payment settles first",
                partition,
                len(holds),
                format_ms(max(h.release_by_ms for h in holds)),
            )

    # -- batches ---------------------------------------------------------------------------

    async def process_batch(self, events: Sequence[Any], ack: Callable[[], None] | None = None) -> None:
        """Decide a batch of Faust events. With `ack`, it is called once the batch is durable
        (a group commit in the background); without, the batch is durable when this returns
        and Faust acks it then, even if it raised. So input errors are dead letters here and
        infrastructure errors end the process before anything is acked (a restart resumes
        from the last commit)."""
        try:
            self._note_unowned(events)
            await self.process_records(_plain(events), ack=ack)
        except StateVersionError as exc:  # (a partition restored for this batch)
            stop_unreadable_state(str(exc))
        except Exception:
            log.critical("cannot send or persist a batch; exiting before it is acked", exc_info=True)
            os._exit(70)

    async def process_records(self, records: Sequence[InputRecord], ack: Callable[[], None] | None = None) -> None:
        """Decide a batch of plain records and send its decisions; raises on infrastructure
        errors. Without `ack`, the batch is durable when this returns (`commit`); with it, a
        commit in the background makes it durable and calls `ack` then (`commit_soon`).

        The input boundary (`boundary.py`): per topic partition, records are taken in offset
        order from the next offset the saved state expects; redeliveries of what it already
        covers are skipped (counted), and missing offsets are read from the broker and taken
        first. The engines never see an offset twice or out of order."""
        since = self.loop.freezes
        async with self.lock:
            decisions: list[Decision] = []
            now = time.monotonic()
            tps = set(map(topic_partition, records))  # (no Python step per record)
            for p in sorted({p for _t, p in tps}):
                await self.restore_engine(p)
            expected = {(t, p): self.engine(p).last_offset[self._stream(t)] + 1 for t, p in tps}
            plans = plan_batch(expected, records)
            for (topic, p), plan in sorted(plans.items()):
                take = plan.records
                if plan.gaps:
                    take = await self._fill_gaps(plan)
                    lost = await self._lost_to_retention(plan, take, expected[(topic, p)] == 0)
                    if lost is not None:
                        decisions.append(lost)
                if plan.redelivered:
                    self.counts["redelivered_skipped"] += plan.redelivered
                if not take:
                    continue
                stream = self._stream(topic)
                eng = self.engines.get(p) or self.engine(p)
                on_record = eng.on_record
                rejected_before = eng.rejected[stream]
                for rec in take:
                    try:
                        got = on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms)
                    except Exception as exc:  # a bug must not lose the record: dead-letter it
                        got = self._internal_error(stream, rec, exc)
                    if got:  # most records decide nothing yet
                        decisions.extend(got)
                self.clocks[p].arrived(stream, now, self.settings.idle_timeout_s)
                if eng.rejected[stream] - rejected_before == len(take) and self._quiet_stands(eng):
                    # Rejected records only: they bring no event time, so the quiet's watermark is
                    # where event time stands. They still count as the feed's life (a record the
                    # worker cannot read may be a settlement: the idle timeout passes before the
                    # watermark moves on), but from where it stood, as after a restart. Counted from
                    # the records again, it would stand still for as long as the quiet had lasted:
                    # a few junk records after a night's quiet would hold deadlines for hours.
                    self._quiet_from[p] = eng.forced_ms
                else:
                    self._quiet_from.pop(p, None)
                    if eng.quiet_floor_ms > NEG_INF:  # (saved with the records' offsets, or alone
                        eng.quiet_floor_ms = NEG_INF  # when no record of them was new)
                        eng.meta_dirty = True
                self.counts["records"] += len(take)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "batch: %s",
                    {
                        f"{t}[{p}]": (pl.records[0].offset, pl.records[-1].offset, len(pl.records), pl.redelivered)
                        for (t, p), pl in sorted(plans.items())
                        if pl.records
                    },
                )
            self.counts["batches"] += 1
            await self._emit(decisions, since)
            if ack is not None:
                self._acks.append(ack)
        if ack is None or len(self._acks) >= MAX_UNCOMMITTED_BATCHES:
            await self.commit()  # (a commit that falls behind holds the batches back)
        else:
            self.commit_soon()

    def _stream(self, topic: str) -> Stream:
        return Stream.P if topic == self.settings.payment_topic else Stream.L

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The next offset of an input topic partition the engine would take (None: no engine
        here yet, its saved state not restored)."""
        eng = self.engines.get(partition)
        return None if eng is None else eng.last_offset[self._stream(topic)] + 1

    async def _lost_to_retention(self, plan: PartitionPlan, take: list[InputRecord], fresh: bool) -> Decision | None:
        """An INPUT_LOST alert when offsets this partition's state expects were not on the broker
        because its log now begins past them (retention deleted them before this worker read
        them: a worker down longer than the topic keeps records), else None. Offsets missing
        above the log start are transaction markers or compacted away: nothing lost."""
        missing = sum(g.size for g in plan.gaps) - (len(take) - len(plan.records))
        if missing <= 0 or self.begin_offsets is None:
            return None
        g0 = plan.gaps[0]
        tp = (g0.topic, g0.partition)
        now = time.monotonic()
        known = self._log_start.get(tp)
        if known is not None and now - known[1] < LOG_START_TTL_S:
            begins = known[0]
        else:
            try:
                begins = (await self.begin_offsets([tp]))[tp]
            except Exception as exc:  # noqa: BLE001 - a check only: the records are taken either way
                log.warning("%s[%d]: where the log begins not known (%s): lost records not checked", *tp, exc)
                return None
            self._log_start[tp] = (begins, now)
        spans = [(g.start, min(g.end, begins)) for g in plan.gaps if g.start < begins]
        count = sum(end - start for start, end in spans)
        if count <= 0:
            return None
        first, last = spans[0][0], spans[-1][1] - 1
        self.counts["input_offsets_lost"] += count
        log.error(
            "%s[%d]: offsets %d..%d were deleted by retention before this worker read them (the log begins at %d)%s",
            *tp,
            first,
            last,
            begins,
            " (its first read)" if fresh else "",
        )
        after = next((r.timestamp_ms for r in take if r.offset >= begins and r.timestamp_ms is not None), None)
        return input_lost_alert(*tp, first, last, count, begins, fresh, after)

    async def _fill_gaps(self, plan: PartitionPlan) -> list[InputRecord]:
        # Faust delivered past offsets this partition's state has not taken.
        return await fill_gaps(plan, self.fetch_gap, self.counts)

    def _note_unowned(self, events: Sequence[Any]) -> None:
        # Evidence for the rebalance known bug: does Faust hand the agent events of partitions
        # this worker no longer owns (the batch was taken before a revocation)? Processed as
        # usual; only counted and logged (topic, partition, offsets: no content).
        if self.assignment is None:
            return
        owned = {(tp.topic, tp.partition) for tp in self.assignment()}
        stale = [ev.message for ev in events if (ev.message.topic, ev.message.partition) not in owned]
        if stale:
            self.counts["unowned_events"] += len(stale)
            log.warning(
                "batch holds %d event(s) of partitions not assigned here: %s",
                len(stale),
                sorted({(m.topic, m.partition, m.offset) for m in stale})[:10],
            )

    def _internal_error(self, stream: Stream, msg: InputRecord, exc: Exception) -> list[Decision]:
        self.counts["internal_errors"] += 1
        log.error(
            "internal error on %s[%d]@%d: %s (record dead-lettered)",
            msg.topic,
            msg.partition,
            msg.offset,
            type(exc).__name__,
            exc_info=True,
        )
        topic = self.settings.payment_topic if stream is Stream.P else self.settings.ledger_topic
        reason = f"internal error while processing the record ({type(exc).__name__}); engineers are alerted"
        return [
            dead_letter_record(
                topic,
                msg.partition,
                msg.offset,
                msg.timestamp_ms,
                msg.key,
                msg.value,
                Rejection("internal_error", reason),
            )
        ]

    async def _emit(self, decisions: list[Decision], since: int) -> None:
        # Sent, not waited for: the next commit waits until the producer has them. What restored
        # engines decided with the known incidents goes first: it was decided before. `since`:
        # the freezes counted when the caller began deciding (a zombie sends nothing late).
        stop_if_frozen(self.loop, since, self.on_frozen, "deciding")
        if self.released_at_restore:
            decisions = [*self.released_at_restore, *decisions]
            self.released_at_restore = []
        if decisions:
            on_output = self.on_output
            for i, d in enumerate(decisions):
                if i:  # (a send can wait)
                    stop_if_frozen(self.loop, since, self.on_frozen, "sending decisions")
                await self.send(self.settings.output_topic(d.role), d.key, codec.dumps(d.value))
                self.counts[d.role] += 1
                if on_output is not None:
                    on_output(d.role, d.value)
            self._sent = True

    async def commit(self) -> None:
        """Make everything decided so far durable, then ack the batches it covers.

        Under the shell's lock (between batches, never in the middle of one) it takes every
        engine's changed state; then, outside it, it waits until the producer has every
        decision sent so far (decisions must be on Kafka before the state that says they were
        made), writes the state and waits until the changelog has it, and calls the acks of
        the batches decided before it took the state. One commit at a time: a call waits for
        the commit under way, and then commits what it did not cover. Cancelled half way, it
        leaves its batches unacked (they come again and are skipped as covered, or taken again
        if their state did not reach the changelog) and its queued state for the next commit."""
        async with self.commit_lock:
            since = self.loop.freezes
            async with self.lock:
                await self._emit([], since)  # (a restored engine's releases: sent before its state is kept)
                taken = self._take_changes()
            await self._make_durable(*taken)

    @contextlib.asynccontextmanager
    async def committed(self) -> AsyncIterator[None]:
        """Everything decided so far made durable (`commit`), and nothing more decided or
        committed until the block ends: a rebalance drops engines in it, which must not hold a
        change that is not durable yet while the batches that made it are acked later."""
        since = self.loop.freezes
        async with self.commit_lock, self.lock:
            await self._emit([], since)
            await self._make_durable(*self._take_changes())
            yield

    def _take_changes(self) -> tuple[list[Callable[[], None]], bool]:
        for p, eng in self.engines.items():
            if eng.dirty or eng.meta_dirty:
                self._persist(p)
        acks, self._acks = self._acks, []
        sent, self._sent = self._sent, False
        return acks, sent

    async def _make_durable(self, acks: list[Callable[[], None]], sent: bool) -> None:
        if sent:
            await self.flush()
        await self.write_state()
        self.counts["commits"] += 1
        for ack in acks:
            ack()

    def commit_soon(self) -> None:
        """Commit in the background what is not committed yet: one commit runs at a time, and
        the batches decided while it runs go together in the next (a group commit)."""
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_behind())

    async def _commit_behind(self) -> None:
        try:
            while self._acks:
                await self.commit()
        except Exception:
            log.critical("cannot send or persist decided batches; exiting before they are acked", exc_info=True)
            os._exit(70)

    def uncommitted(self) -> int:
        """Batches decided and not yet durable (acked by a commit later)."""
        return len(self._acks)

    def _persist(self, partition: int) -> None:
        refs, meta = self.engines[partition].take_dirty()
        self.counts["references_saved"] += len(refs)
        prefix = b"%d/r/" % partition  # `state_key`, the prefix made once
        changes = [(prefix + ref.encode("utf-8"), value) for ref, value in refs.items()]
        if meta is not None:
            # Last: on the same changelog partition, so the meta's offsets never run ahead of
            # the references it covers.
            changes.append((meta_key(partition), meta))
        if changes:
            self.store.put_many(partition, changes)

    # -- incidents (refund holds) ------------------------------------------------------------

    async def on_incidents(self, events: list[IncidentEvent], known_through_ms: int) -> None:
        """The detector's incident decisions and progress, from the incidents topic: every
        engine of this worker gets them; what they release is sent and persisted."""
        async with self.lock:
            new = [e for e in events if e not in self.incident_keys]
            self.incident_keys.update(new)
            self.incident_events.extend(new)
            if not new and known_through_ms <= self.incidents_known_through_ms:
                return
            self.incidents_known_through_ms = max(self.incidents_known_through_ms, known_through_ms)
            if self._incidents_moved is not None:
                self._incidents_moved.set()
            if self.holding_back:
                return  # (taken; released by `release_held_back` for the engines that stay)
        await self._release_by_incidents(new)

    async def release_held_back(self) -> None:
        """After an assignment: what the incidents taken while holding back release in the
        engines kept here (repeats harmless: each engine takes the incidents it lacks)."""
        async with self.lock:
            self.holding_back = False
        await self._release_by_incidents(self.incident_events)

    async def _release_by_incidents(self, events: list[IncidentEvent]) -> None:
        # Every engine takes `events` and the incidents known; what that releases is sent and
        # persisted. A failure to send or persist ends the process (its batches are not acked).
        since = self.loop.freezes
        try:
            async with self.lock:
                if self.holding_back:
                    return  # (a revocation came in between: the next assignment releases)
                decisions: list[Decision] = []
                touched = False
                for p, eng in list(self.engines.items()):
                    got = eng.on_incidents(events, self.incidents_known_through_ms)
                    if got and p in self._quiet:
                        self._count_quiet(p, got, self._records_watermark(eng), None)
                    if got or eng.dirty or eng.meta_dirty:
                        decisions.extend(got)
                        touched = True
                if not touched:
                    return
                await self._emit(decisions, since)
            await self.commit()
        except Exception:
            log.critical("cannot send or persist decisions released by incidents; exiting", exc_info=True)
            os._exit(70)

    def lead_ms(self) -> int:
        """How far this worker's slowest partition is past the incidents known, in event ms: 0
        while either is unknown (no incidents yet; a partition without a watermark, one stream
        only)."""
        known = self.incidents_known_through_ms
        if known <= NEG_INF or not self.engines:
            return 0
        slowest = min(eng.watermark_ms for eng in self.engines.values())
        return 0 if slowest <= NEG_INF else slowest - known

    def max_lead_ms(self) -> int:
        """How far past the incidents known `paced` lets the worker run (0: no limit):
        `QRIS_MAX_LEAD_S`, but never less than the idle timeout plus 2 minutes. A partition whose
        feed went quiet holds the incidents back until the idle rule moves its watermark (up to
        `QRIS_IDLE_TIMEOUT_S` and a check later), and live traffic must not wait for that."""
        return int(self.settings.max_lead_in_effect_s * 1000)

    async def paced(self, wait_s: float = PACE_WAIT_S, cooldown_s: float = PACE_COOLDOWN_S) -> float:
        """Refund holds, a backlog: while this worker's slowest partition is more than
        `max_lead_ms()` of event time past the incidents known, wait for them to move, at most
        `wait_s`; if they are still too far behind then, take the input without waiting for
        `cooldown_s` (a worker is never stopped by this). Returns the seconds waited.

        Its records past the incidents can only wait in the engines (a deadline is decided once
        the incidents up to it are known), so taking more of them gains nothing and costs memory
        (in a backlog of hours, a worker ahead of the others could hold tens of minutes of
        records; no speed difference was measured either way, README "Benchmarks"). The worker
        with the slowest partition of all is less than a minute past the incidents, plus the
        detector's round trip, which is all it can wait for (in a one-worker backlog, 3-4 s a
        run while its own detector catches up): the group moves on. A worker whose incidents do
        not move (the detector's worker restoring, an input partition stuck somewhere) waits
        `wait_s` of every `wait_s + cooldown_s`."""
        max_lead_ms = self.max_lead_ms()
        if max_lead_ms <= 0 or self.lead_ms() <= max_lead_ms:
            return 0.0
        started = time.monotonic()
        if started < self._pace_again_at:
            return 0.0
        deadline = started + wait_s
        while self.lead_ms() > max_lead_ms:
            left = deadline - time.monotonic()
            if left <= 0:
                self._pace_again_at = time.monotonic() + cooldown_s
                break
            moved = self._incidents_moved = asyncio.Event()
            try:
                async with asyncio.timeout(left):  # (a cancellation is never swallowed)
                    await moved.wait()
            except TimeoutError:
                self._pace_again_at = time.monotonic() + cooldown_s
                break
            finally:
                self._incidents_moved = None
        waited = time.monotonic() - started
        self.counts["paced_batches"] += 1
        self.counts["paced_ms"] += int(waited * 1000)
        return waited

    # -- the wall-clock exception ----------------------------------------------------------

    async def check_idle_feeds(self) -> None:
        """Live only: advance the watermark of partitions whose input stream went silent."""
        if self._idle_checks_stopped:
            return
        async with self._idle_checking:
            await self._check_idle_feeds()

    async def stop_idle_checks(self) -> None:
        """No idle check after this, and one under way has ended (its broker questions cut short:
        no answer, nothing moves by the wall clock): the readers it asks with may be closed."""
        self._idle_checks_stopped = True
        async with self._idle_checking:
            pass

    async def _check_idle_feeds(self) -> None:
        idle_s = self.settings.idle_timeout_s
        topics = (self.settings.payment_topic, self.settings.ledger_topic)  # Stream.P, Stream.L
        since = self.loop.freezes  # (a freeze makes every feed look quiet: nothing of it is sent)
        # The broker is asked only about streams already idle by age (none while records flow),
        # once for all of them, and not under the lock (a batch need not wait for its answer).
        ends = await self._ends_now(self._idle_by_age(time.monotonic()) | self._input_elsewhere())
        now = time.monotonic()
        async with self.lock:
            decisions: list[Decision] = []
            touched: set[int] = set()
            holds = self.params.holds
            for p, eng in list(self.engines.items()):
                clock = self.clocks[p]
                waiting = bool(eng.heap or eng.decide)  # records, deadlines, holds
                if not waiting and not holds:
                    continue
                ages = clock.ages(now)
                silent = [
                    age >= idle_s and self._all_taken(topic, p, ends) for age, topic in zip(ages, topics, strict=True)
                ]
                got: list[Decision] = []
                if not (silent[0] and silent[1]):
                    self._quiet.discard(p)
                if not waiting:
                    # Holds on: every partition's refunds wait for the detector, which waits for
                    # every partition's closed minutes, so a quiet partition with nothing waiting
                    # must still let event time pass (no alert: nothing of its own is late).
                    if silent[0] and silent[1]:
                        natural = self._records_watermark(eng)
                        got = self._advance_quiet(p, eng, ages, ends)
                        self._quiet.add(p)
                        self._count_quiet(p, got, natural, min(ages))
                elif silent[0] and not silent[1]:
                    if _flows_apart(ages, 1, idle_s):
                        got = eng.declare_silent(Stream.P)
                elif silent[1] and not silent[0]:
                    if _flows_apart(ages, 0, idle_s):
                        got = eng.declare_silent(Stream.L)
                elif silent[0] and silent[1]:
                    # Both quiet: event time follows wall time from where the watermark stands.
                    natural = self._records_watermark(eng)
                    got = self._advance_from_lagging(p, eng, ages)
                    self._quiet.add(p)
                    self._count_quiet(p, got, natural, min(ages))
                if got or eng.meta_dirty:
                    decisions.extend(got)
                    touched.add(p)
            if self.on_idle is not None:  # per-topic silent-feed alerts (`feeds`)
                decisions = self.on_idle(decisions)
            if self.on_stall is not None:  # per-topic stalled event time (`clockstall`)
                decisions.extend(self.on_stall(now))
            if not (touched or decisions):
                return
            await self._emit(decisions, since)
        await self.commit()

    def _idle_by_age(self, now: float) -> set[tuple[str, int]]:
        """The input streams (topic, partition) of engines the idle rule could move that have
        taken no record for the idle timeout: the only ones the broker is asked about."""
        idle_s = self.settings.idle_timeout_s
        topics = (self.settings.payment_topic, self.settings.ledger_topic)
        out: set[tuple[str, int]] = set()
        for p, eng in self.engines.items():
            clock = self.clocks.get(p)
            if clock is None or not (eng.heap or eng.decide or self.params.holds):
                continue
            out.update((topic, p) for topic, age in zip(topics, clock.ages(now), strict=True) if age >= idle_s)
        return out

    async def _ends_now(self, tps: set[tuple[str, int]]) -> Mapping[tuple[str, int], int] | None:
        """The offset after the last record of each of `tps` the broker has now: its end offset,
        or the next offset to take when what lies between holds transaction markers only; None
        when it does not answer (then no stream is known to be silent, and no watermark moves by
        the wall clock)."""
        if not tps or self.end_offsets is None:
            return {}
        try:
            ends = await self.end_offsets(sorted(tps))
        except Exception as exc:  # noqa: BLE001 - any failure means no answer
            self.counts["idle_checks_unanswered"] += 1
            if not self._unanswered:
                log.warning(
                    "idle rule: the broker did not answer for the end offsets of %d idle input stream(s) (%s); "
                    "none counts as silent and no watermark moves by the wall clock until it answers",
                    len(tps),
                    exc,
                )
            self._unanswered = True
            return None
        if self._unanswered:
            log.info("idle rule: the broker answers for end offsets again")
        self._unanswered = False
        behind = set()
        records_end = dict(ends)
        for topic, p in sorted(tps):
            if self._idle_checks_stopped:
                return None  # the worker stops: its lag reader is being closed
            end, taken = ends.get((topic, p)), self.next_offset(topic, p)
            if end is not None and taken is not None and end > taken:
                if await self._markers_only(topic, p, taken, end):
                    records_end[(topic, p)] = taken
                    continue
                behind.add((topic, p))
                if (topic, p) not in self._behind:
                    # Late, not silent: Faust has not handed these records over (a backlog, or a
                    # broker that stopped serving this worker's fetches: the feed-stall watchdog's).
                    log.warning(
                        "%s[%d]: no record taken for %.0f s or more, but the broker has %d not taken yet "
                        "(offsets %d..%d): late, not silent",
                        topic,
                        p,
                        self.settings.idle_timeout_s,
                        end - taken,
                        taken,
                        end - 1,
                    )
        self.counts["idle_streams_behind"] += len(behind - self._behind)
        self._behind = behind
        self._unread &= behind  # (a lag not read counts as behind; the others' episodes are over)
        return records_end

    async def _markers_only(self, topic: str, p: int, start: int, end: int) -> bool:
        """Whether offsets `start` .. `end - 1` of an idle stream hold transaction markers only,
        as the broker answers now. Not known (no reader, a lag too long to read, no answer): False,
        records may wait there, and the stream is late, not silent."""
        if self.fetch_lag is None:
            return False
        try:
            markers = await only_markers(self.fetch_lag, topic, p, start, end)
        except Exception as exc:  # noqa: BLE001 - any failure means no answer
            self.counts["idle_checks_unanswered"] += 1
            if (topic, p) not in self._unread:
                log.warning(
                    "idle rule: %s[%d]: offsets %d..%d not read from the broker (%s): records or transaction "
                    "markers, not known; not silent until they are read",
                    topic,
                    p,
                    start,
                    end - 1,
                    exc,
                )
            self._unread.add((topic, p))
            return False
        self._unread.discard((topic, p))
        return markers

    def _all_taken(self, topic: str, p: int, ends: Mapping[tuple[str, int], int] | None) -> bool:
        """True when the broker said, at this check, that it has no record of the stream left
        that this worker has not taken (always, without a broker: tests of the shell alone)."""
        if self.end_offsets is None:
            return True
        if ends is None:
            return False
        end, taken = ends.get((topic, p)), self.next_offset(topic, p)
        return end is not None and taken is not None and end <= taken

    def _records_watermark(self, eng: PartitionEngine) -> int:
        # Where the records alone put event time (the streams still heard, as
        # `_advance_from_lagging` moves from): what is decided past it is the idle rule's.
        heard = [x for x, gone in zip(eng.max_ms, eng.silent, strict=True) if x is not None and not gone]
        known = heard or [x for x in eng.max_ms if x is not None]
        return min(known) - self.params.lateness_ms if known else NEG_INF

    def _count_quiet(self, p: int, got: list[Decision], natural: int, quiet_s: float | None) -> None:
        # Refunds, holds and alerts only: the burst signals and hold reports are no output a
        # replay writes.
        n = sum(1 for d in got if d.role != "signals" and (d.at_ms is None or d.at_ms > natural))
        if not n:
            return
        self.counts["idle_quiet_decisions"] += n
        log.info(
            "idle rule: partition %d: both input streams quiet%s; event time followed the wall clock and %d "
            "decision(s) came due (a replay makes them with --drain)",
            p,
            f" for {quiet_s:.0f} s or more" if quiet_s is not None else " (released as the incidents came)",
            n,
        )

    def _advance_from_lagging(self, p: int, eng: PartitionEngine, ages: list[float]) -> list[Decision]:
        # Both streams quiet: the watermark moves by the quiet time from the lagging stream's
        # newest record (where it stands), not from the leading stream's. With the ledger 5
        # minutes of event time ahead of the payments, a pause just past the idle timeout moved
        # the watermark 5 minutes past the payments, and the settlements sent after the pause
        # came after their deadlines: refunds, then their clawbacks (a helper's live hunt: 8
        # refunds clawed back and 618 holds for a 9 s pause).
        # A stream declared silent before is not where the watermark stands (it follows the
        # other since): counted, it would hold the watermark back by its whole silence.
        heard = [x for x, gone in zip(eng.max_ms, eng.silent, strict=True) if x is not None and not gone]
        known = heard or [x for x in eng.max_ms if x is not None]
        if not known:
            return []  # (no record yet: nothing stands anywhere to move from)
        # After a restart in the quiet, it goes on from where it stood (the time the worker was
        # down is not counted: refunds later by that, never earlier).
        target = max(min(known) - self.params.lateness_ms, self._quiet_from.get(p, NEG_INF)) + int(min(ages) * 1000)
        got = eng.advance_to(target)
        if eng.forced_ms == target != eng.quiet_floor_ms:
            eng.quiet_floor_ms = target  # (the floor is the quiet's own: a restart goes on from it)
            eng.meta_dirty = True
        return got

    def _quiet_stands(self, eng: PartitionEngine) -> bool:
        """Whether the watermark stands where a quiet spell moved it, past its records."""
        return eng.quiet_floor_ms == eng.forced_ms > self._records_watermark(eng)

    def _advance_quiet(
        self, p: int, eng: PartitionEngine, ages: list[float], ends: Mapping[tuple[str, int], int] | None
    ) -> list[Decision]:
        # Event time follows wall time from where the watermark stands; a partition that never
        # had a record follows the furthest watermark of this worker's other partitions (live
        # only, like every idle rule; nothing is decided for it until then).
        if any(x is not None for x in eng.max_ms):
            return self._advance_from_lagging(p, eng, ages)
        others = [e.watermark_ms for q, e in self.engines.items() if q != p and e.watermark_ms > NEG_INF]
        if others:
            return eng.advance_to(max(others))
        # No partition here has a watermark: event time follows the wall clock, less the lateness
        # and the idle timeout (a record on its way is not late), but only when the broker has
        # nothing for p not taken yet (else a backlog of old records would all be taken as late),
        # and only for the input's other partitions (`_fed_elsewhere`).
        topics = (self.settings.payment_topic, self.settings.ledger_topic)
        if (
            self.end_offsets is not None
            and all(self._all_taken(t, p, ends) for t in topics)
            and self._fed_elsewhere(ends)
        ):
            idle_ms = int(self.settings.idle_timeout_s * 1000)
            return eng.advance_to(int(time.time() * 1000) - self.params.lateness_ms - idle_ms)
        return []

    def _input_elsewhere(self) -> set[tuple[str, int]]:
        """The input streams of the partitions not held here, when the idle rule may move a
        partition of this worker by the wall clock (holds on, no watermark here): what the
        broker is asked about for `_fed_elsewhere`."""
        if not self.params.holds or not self.engines or self._fed_here():
            return set()
        topics = (self.settings.payment_topic, self.settings.ledger_topic)
        return {(t, q) for q in range(self.input_partitions) if q not in self.engines for t in topics}

    def _fed_here(self) -> bool:
        return any(x is not None for eng in self.engines.values() for x in eng.max_ms)

    def _fed_elsewhere(self, ends: Mapping[tuple[str, int], int] | None) -> bool:
        """Whether the input has records that the partitions here without any record wait for:
        records here, or, as the broker answered at this check, in a partition not held here (held by
        another worker, whose refunds wait, holds on, for the minutes every partition closes).
        An input without any record has nothing waiting: the idle rule then moves no partition
        by the wall clock, and the burst detector closes no minute for partitions without data
        (a backlog produced later would find its minutes closed, its requests not counted)."""
        if self._fed_here():
            return True
        return ends is not None and any(end > 0 for (_t, q), end in ends.items() if q not in self.engines)

    def stats(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "incidents_known_through_ms": self.incidents_known_through_ms,
            "partitions": {
                p: {
                    "watermark_ms": eng.watermark_ms,
                    "max_ms": eng.max_ms,
                    "references": len(eng.refs),
                    # Records waiting for the watermark, as `qris_records_waiting` and the
                    # dashboard count them; `queued` adds the deadlines' timers.
                    "waiting": sum(len(v) for v in eng.pending.values()),
                    "queued": len(eng.heap) + len(eng.decide),
                    "decided_through_ms": eng.decided_through_ms,
                    # References with a refund held (O(1): the page is polled while the worker
                    # runs, and counting the holds of each cost 4% of a backlog's CPU at 4 polls/s).
                    "held_references": len(eng.held_refs),
                    "rejected": eng.rejected,
                    "silent": eng.silent,
                }
                for p, eng in sorted(self.engines.items())
            },
        }


def _plain(events: Sequence[Any]) -> list[InputRecord]:
    """A batch of Faust events as plain records (Faust's timestamp is in float seconds). Once per
    record: one comprehension, and tuples made by `tuple.__new__` (no `__init__` call)."""
    new = tuple.__new__
    return [
        new(
            LiveRecord,
            (m.topic, m.partition, m.offset, None if (ts := m.timestamp) is None else round(ts * 1000), m.key, m.value),
        )
        for m in map(_message, events)
    ]


_message = attrgetter("message")
