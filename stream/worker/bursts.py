"""The live burst detector's shell: the partitions' closed minutes in, `FAILURE_BURST` alerts out.

Every worker sends its partitions' `signals` to one single-partition topic, so exactly one
worker (the owner of that partition in the consumer group) runs the `BurstDetector`. Every
`snapshot_every` reports (at most one every `snapshot_min_interval_s`), once the batch's alerts
are sent, it writes the detector's snapshot
(state and the signals offset it covers, `core.burstsnapshot`) to the compacted single-partition
topic `qris.burst-snapshots`. A worker that takes the partition over, or restarts, restores the
latest snapshot and reads only the signals between it and the group's committed offset, with
the alerts of that part suppressed (they were sent before); without a usable snapshot it reads
the signals topic from the beginning. The detector drops repeated reports, so at-least-once
delivery of signals changes nothing.

With refund holds on, the detector also publishes its incident decisions and its progress to the
single-partition incidents topic after every batch that has something new or sent an alert, and
at a clean stop (`incidents_records`, `publish_progress`): the incident events of the batch's
alerts, the event time through which every decision is known (the last minute it closed, plus
the probe age), and the signals offset through which its outputs are sent. Every worker reads
that topic whole and gives it to its partition engines. A takeover or a crash can repeat a
record: the same events with the same ids, which the engines ignore. The partitions' hold
reports come on the signals topic too: they go to the hold tally (`core.holdtally`), which keeps
each incident's `updated` and `resolved` alert until every partition has decided past it and
then adds the holds it covers. The tally is rebuilt, snapshotted and restored with the detector.

The detector's intake has the input's guarantees (`boundary.py`): every signals record at or
after the detector's position is taken once, in offset order. The position is the detector's
own next offset; after a rebalance it is the group's committed offset of the signals partition
(asked of the broker) or the snapshot's, whichever is further: records before it are rebuilt
with their alerts suppressed, records from it on are taken live. Redeliveries are skipped;
offsets missing in front of a delivered record are read from the broker and taken first; and
signals that Faust does not deliver at all (nothing follows them to show the gap) are read
from the broker by `catch_up`, which the worker's feed-stall check calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# Loaded with the worker, not at a rate model's first EWMean (`ratemodel` imports river.stats
# there, for the replay's start-up): a fifth of a second's import would stall the live loop.
import river.stats  # noqa: F401
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..core import burstsnapshot, codec
from ..core.alerts import signals_lost_alert
from ..core.burst import BurstDetector
from ..core.decisions import Decision
from ..core.holds import IncidentEvent, incident_event
from ..core.holdtally import HoldTally, is_hold_report
from ..core.partition import NEG_INF
from ..core.signals import MINUTE_MS
from ..security import aiokafka_config
from ..settings import Settings
from .boundary import Gap, InputRecord, LiveRecord, PartitionPlan, plan_batch
from .freeze import LoopWatch, now_s, stop_if_frozen
from .gapfill import fill_gaps

log = logging.getLogger("qris_guard.bursts")

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]
# Reads offsets of the signals partition from the broker (`gapfill.BrokerGapFetcher.fetch`).
FetchGap = Callable[[Gap], Awaitable[Sequence[InputRecord]]]
# The consumer group's committed offset of the signals partition, asked of the broker (None: none).
Committed = Callable[[], Awaitable[int | None]]

# A snapshot larger than this is not written (the previous one and more signals still restore
# the detector); the snapshots topic accepts records up to SNAPSHOT_TOPIC_MAX_BYTES.
SNAPSHOT_MAX_BYTES = 15 * 1024 * 1024
# An incidents-topic record's events, at most (`BurstShell.incidents_records`): well below the
# producer's 1,000,000-byte requests and the topic's 1 MiB.
INCIDENTS_RECORD_MAX_BYTES = 256 * 1024
SNAPSHOT_TOPIC_MAX_BYTES = 16 * 1024 * 1024
# The group's committed offset not answered in this long: not known (a check), or the batch
# fails (a rebuild; the process exits before the batch is acked, a restart asks again).
COMMITTED_TIMEOUT_S = 10.0


class BurstShell:
    def __init__(
        self,
        settings: Settings,
        partitions: int,
        send: Send,
        flush: Callable[[], Awaitable[None]],
        fetch_gap: FetchGap | None = None,
        committed: Committed | None = None,
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        self.send = send
        self.flush = flush
        # None (tests of the shell alone): a gap cannot be read (the batch fails, as the input's),
        # and after a rebalance the detector resumes where the first delivered batch starts.
        self.fetch_gap = fetch_gap
        self.committed = committed
        self.tp = (settings.signals_topic, 0)
        self.detector: BurstDetector | None = None
        # Told the open incidents of each detector rebuilt here (`WorkerWatch.detector_restored`).
        self.on_restored: Callable[[list[dict[str, Any]]], None] | None = None
        self.tally: HoldTally | None = None
        self.next_offset = -1
        # The known-through time of the last incidents record sent (None: none since the
        # detector was built here; a rebuilt detector sends its progress again).
        self.known_through_sent: int | None = None
        # The signals offset through which the incidents topic says the detector's outputs are
        # sent, as far as this detector knows: its last record's, or where it was rebuilt (None:
        # no detector). A restart resumes there at the latest (`_resume_offset`), so a stop
        # brings it up to `next_offset` (`publish_progress`).
        self.offset_sent: int | None = None
        # The `opened` events of the incidents a rebuilt detector has open, sent again with its
        # first incidents record: a timeline that lost them (the incidents topic trimmed or
        # recreated while the detector kept its history) would decide the deadlines they cover
        # unheld. Repeats are ignored by the followers.
        self.reannounce: list[IncidentEvent] = []
        # Signals gone when the detector was rebuilt here, not said yet: (first, end, log start).
        self.lost: list[tuple[int, int, int | None]] = []
        self.since_snapshot = 0
        self.snapshots = SnapshotWriter(settings)
        self._snapshot_task: asyncio.Future[None] | None = None
        # When the last snapshot was made (monotonic s): at most one every
        # `snapshot_min_interval_s`. In a backlog the reports come many a second and the
        # detector's state is at its largest (the partitions' minutes not closed by all of them:
        # 1 MB compressed, 4.9 MB of JSON, 34 ms to encode, in a 300k backlog), so writing one
        # every `snapshot_every` reports cost its worker about 4% of its CPU; live, 60 reports
        # are minutes apart and the floor changes nothing.
        self.snapshot_at = -math.inf
        self.lock = asyncio.Lock()
        self.counts = {
            "signals": 0,
            "alerts": 0,
            "rebuilt_from": 0,
            "restored_snapshot_offset": -1,
            "signals_read_to_rebuild": 0,
            "signals_lost": 0,
            "snapshots_written": 0,
            "snapshot_write_ms": 0,
            "internal_errors": 0,
            "incident_records": 0,
            "redelivered_skipped": 0,
            "gap_records_fetched": 0,
            "gap_offsets_empty": 0,
            "caught_up": 0,
        }
        self.holds = settings.max_hold_s > 0
        # The worker's freeze watch (`freeze.py`; None: tests of this shell alone): a detector
        # frozen past the session sends no alert or incidents record it made before the freeze
        # (an `opened` after the new owner's `resolved` would page again).
        self.loop: LoopWatch | None = None
        self.on_frozen: Callable[[], None] | None = None

    async def close(self) -> None:
        """The snapshot under way written, then its producer stopped (the worker's stop; the
        next snapshot starts another)."""
        await self.snapshot_written()
        await self.snapshots.close()

    async def hand_over(self) -> None:
        """Partitions revoked (under the lock): the detector may move to another worker, which
        resumes at the last incidents record. Its position is published first, as at a clean
        stop (the group's committed offset past that record: signals taken again, their alerts
        sent again, and a WARNING), then it is forgotten. Faust hands the partitions on once the
        revocation's handlers return; after a freeze past the session, nothing is published."""
        await self.publish_progress("the revocation")
        self.forget()

    def forget(self) -> None:
        """After a rebalance the snapshot and the signals topic are the truth: rebuilt at the next report."""
        self.detector = None
        self.tally = None
        self.next_offset = -1
        self.known_through_sent = None
        self.offset_sent = None
        self.reannounce = []
        self.lost = []  # (the next owner finds them gone too)

    async def process_batch(self, events: Sequence[Any]) -> None:
        """Feed a batch of reports to the detector and send its alerts. Faust acks the batch
        when this returns, even if it raised: a failure to send ends the process first."""
        try:
            topic, partition = self.tp
            await self.take_records(
                [LiveRecord(topic, partition, ev.message.offset, None, None, ev.message.value) for ev in events]
            )
        except Exception:
            log.critical(
                "cannot rebuild the detector or send its alerts; exiting before the batch is acked", exc_info=True
            )
            os._exit(70)

    async def take_records(self, records: Sequence[InputRecord]) -> None:
        """Take delivered signals records through the boundary: from the detector's position,
        in offset order, each once; missing offsets read from the broker first. Raises when
        the detector cannot be rebuilt, a gap read or an alert sent."""
        since = self.loop.freezes if self.loop is not None else 0
        async with self.lock:
            if self.detector is None:
                self.detector = await self._rebuild(await self._resume_offset(records))
            plan = plan_batch({self.tp: self.next_offset}, records).get(self.tp, PartitionPlan())
            take = await self._fill_gaps(plan) if plan.gaps else plan.records
            self.counts["redelivered_skipped"] += plan.redelivered
            await self._take_in_order(take, since)

    def _stop_if_frozen(self, since: int) -> None:
        if self.loop is not None:
            stop_if_frozen(self.loop, since, self.on_frozen, "scoring failure bursts")

    async def catch_up(self, end: int) -> int:
        """Take the signals the broker has from the detector's position up to offset `end`
        (exclusive) that Faust has not delivered: records the agent never got with nothing
        after them to show the gap (seen after a rebalance: offsets 0-36 for 90 s). Returns how
        many were taken; 0 if the broker did not answer (tried again at the next check). A
        failure after the detector took records ends the process, as a batch's does."""
        since = self.loop.freezes if self.loop is not None else 0
        async with self.lock:
            try:
                if self.detector is None:
                    self.detector = await self._rebuild(await self._resume_offset(()))
            except Exception:
                log.critical("cannot rebuild the detector to catch up; exiting", exc_info=True)
                os._exit(70)
            start = self.next_offset
            if start >= end or self.fetch_gap is None:
                return 0
            try:
                fetched = await self.fetch_gap(Gap(self.tp[0], self.tp[1], start, end))
            except Exception:  # noqa: BLE001 - nothing taken yet: the next check tries again
                log.warning("signals offsets %d..%d not read from the broker to catch up", start, end - 1)
                return 0
            take = plan_batch({self.tp: start}, fetched).get(self.tp, PartitionPlan()).records
            take = [r for r in take if r.offset < end]
            if not take:
                return 0
            log.warning(
                "signals offsets %d..%d are on the broker but were not delivered: %d read from the broker "
                "and taken in order",
                start,
                end - 1,
                len(take),
            )
            self.counts["caught_up"] += len(take)
            try:
                await self._take_in_order(take, since)
            except Exception:
                log.critical("cannot send the detector's alerts while catching up; exiting", exc_info=True)
                os._exit(70)
            return len(take)

    async def position(self) -> int | None:
        """The next signals offset the detector would take: its own while it runs; after a
        rebalance (not rebuilt yet) the group's committed offset, 0 if none, where Faust should
        deliver from. None when not known (no group to ask, or no answer)."""
        if self.detector is not None:
            return self.next_offset
        if self.committed is None:
            return None
        try:
            committed = await asyncio.wait_for(self.committed(), COMMITTED_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - not known now: asked again at the next check
            return None
        return committed or 0

    async def _resume_offset(self, records: Sequence[InputRecord]) -> int:
        """Where a rebuilt detector goes on live: the group's committed offset (0 if none; what
        was acked had its alerts sent), else where the delivered records start. With holds on,
        never past the signals offset of the detector's last incidents record: Faust acks the
        offsets of a jump in its delivery as if taken (faust-streaming #312), so a committed
        offset can cover signals no detector took; the incidents record is sent after the
        batch's alerts and says through which offset they were sent."""
        if self.committed is None:
            return min((r.offset for r in records), default=0)
        committed = (await asyncio.wait_for(self.committed(), COMMITTED_TIMEOUT_S)) or 0
        if not self.holds:
            return committed
        published = await read_published_offset(self.settings)
        if published is not None and published < committed:
            log.warning(
                "signals committed to offset %d but the detector's last incidents record covers them only "
                "to offset %d: of offsets %d..%d, those no snapshot covers are taken live",
                committed,
                published,
                published,
                committed - 1,
            )
            return published
        return committed

    async def _fill_gaps(self, plan: PartitionPlan) -> list[InputRecord]:
        # Faust delivered past signals the detector has not taken (their alerts are the
        # detector's): read from the broker and taken first, in order.
        return await fill_gaps(plan, self.fetch_gap, self.counts)

    async def _take_in_order(self, take: Sequence[InputRecord], since: int) -> None:
        """The detector takes `take` (new records in offset order, each once); its alerts and
        the incidents record are sent, then a snapshot written when one is due. Under the lock.
        `since`: the freezes counted when the batch began (none is sent after a freeze)."""
        if not take:  # (a batch of redeliveries only: e.g. a takeover at a snapshot past the group's offset)
            return
        alerts: list[Decision] = []
        made: list[Decision] = []  # every alert the detector made (incident events)
        for msg in take:
            self.next_offset = msg.offset + 1
            self.counts["signals"] += 1
            self.since_snapshot += 1
            try:
                value = codec.loads(msg.value or b"")
            except ValueError:
                log.error("signals offset %d is not JSON; skipped", msg.offset)
                continue
            try:
                alerts.extend(self._take(value, made))
            except Exception:  # a bug must not stop the worker: the report is skipped, loudly
                self.counts["internal_errors"] += 1
                log.error("burst detector failed on signals offset %d; report skipped", msg.offset, exc_info=True)
        alerts = self._lost_alerts() + alerts
        for d in alerts:
            self._stop_if_frozen(since)
            await self.send(self.settings.alert_topic, d.key, codec.dumps(d.value))
            self.counts["alerts"] += 1
        # A batch that sent alerts writes a record even with nothing new for the followers (the
        # tally's `updated`/`resolved` alerts go out with hold reports, which move no minute):
        # a restart resumes at the last record's signals offset and would send them again.
        records = self.incidents_records(made, take[0].offset, progress=bool(alerts)) if self.holds else []
        for record in records:
            self._stop_if_frozen(since)
            await self.send(self.settings.incidents_topic, b"incidents", record)
            self.counts["incident_records"] += 1
        if alerts or records:
            await self.flush()
            if alerts:
                log.info(
                    "burst alerts sent for signals offsets %d..%d: %s",
                    take[0].offset,
                    take[-1].offset,
                    ", ".join(
                        f"{d.value.get('status', '')} {d.value['kind']} {d.value['scope']['type']}" for d in alerts
                    ),
                )
        every = self.settings.snapshot_every
        if (
            every > 0
            and self.since_snapshot >= every
            and time.monotonic() - self.snapshot_at >= self.settings.snapshot_min_interval_s
        ):
            assert self.detector is not None
            # After the alerts are sent: a snapshot never covers an alert not yet sent.
            await self._write_snapshot(self.detector, self.next_offset)

    async def _write_snapshot(self, detector: BurstDetector, signals_offset: int) -> None:
        # The write goes on beside the detector: in a backlog the broker's acknowledgement took
        # 37-60 ms a snapshot, which the detector spent waiting under its lock while the
        # partitions' decisions waited for its incidents. One write at a time: a snapshot due
        # while the last is still being written waits for it first (they stay in order).
        await self.snapshot_written()
        # In pieces, the loop's other work between them: at the scope bound a snapshot took
        # 0.5-1 s to encode at once, a freeze of every partition's agent. The detector does not
        # change meanwhile (its lock is held), so the snapshot is the one of this offset.
        pieces = []
        for piece in burstsnapshot.encode_pieces(detector, signals_offset, self.tally):
            pieces.append(piece)
            await asyncio.sleep(0)
        raw = b"".join(pieces)
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()
        if len(raw) > SNAPSHOT_MAX_BYTES:
            log.warning("burst detector snapshot of %d bytes not written (limit %d)", len(raw), SNAPSHOT_MAX_BYTES)
            return
        self._snapshot_task = asyncio.ensure_future(self._send_snapshot(raw, signals_offset))

    async def _send_snapshot(self, raw: bytes, signals_offset: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.snapshots.write(raw)
        except Exception:  # a snapshot only shortens a takeover: failing to write one stops nothing
            log.error("burst detector snapshot not written", exc_info=True)
            return
        finally:
            self.counts["snapshot_write_ms"] += round((loop.time() - started) * 1000)
        self.counts["snapshots_written"] += 1
        log.info("burst detector snapshot written: %d bytes, covers signals before offset %d", len(raw), signals_offset)

    async def snapshot_written(self) -> None:
        """Wait for the snapshot write under way, if there is one (it goes on beside the
        detector; a failed write is logged, not raised)."""
        task, self._snapshot_task = self._snapshot_task, None
        if task is not None:
            await task

    def _take(self, value: dict[str, Any], made: list[Decision]) -> list[Decision]:
        """One signals record: a partition's closed minutes for the detector, or (holds on) its
        hold report for the tally. Returns the alerts to send now; `made` gets every alert the
        detector made, sent now or kept by the tally."""
        assert self.detector is not None
        if is_hold_report(value):
            return self.tally.on_report(value) if self.tally is not None else []
        got = self.detector.on_signals(value)
        made.extend(got)
        return self.tally.on_alerts(got) if self.tally is not None else got

    def _new_tally(self) -> HoldTally | None:
        if not self.holds:
            return None
        return HoldTally(range(self.partitions), round(self.settings.probe_age_s * 1000))

    def incidents_records(self, alerts: list[Decision], batch_start: int, progress: bool = False) -> list[bytes]:
        """The incidents topic's records for a batch that began at signals offset `batch_start`: its
        incident events and how far every decision is known (none before the detector closed any
        minute, or when nothing is new and `progress` is false; `progress`: a record of the
        detector's position `next_offset` all the same, if it moved since the last). The events go
        in records of at most INCIDENTS_RECORD_MAX_BYTES (a hostile minute opened 2,998 incidents in
        one 1.8 MB record, which the producer refused, and the detector's worker exited at every
        restart): only the last record moves the known-through time and the published signals
        offset, so a follower (or a restarted detector, `read_published_offset`) that saw part of
        them waits for the rest, which the batch taken again sends again (repeated events are
        ignored)."""
        d = self.detector
        if d is None or d.closed_through is None:
            return []
        probe_age_ms = round(self.settings.probe_age_s * 1000)
        events = [e for a in alerts if (e := incident_event(a.value, probe_age_ms)) is not None]
        if self.reannounce:
            opened_now = {e.incident_id for e in events if e.status == "opened"}
            events = [e for e in self.reannounce if e.incident_id not in opened_now] + events
            self.reannounce = []
        known_through_ms = (d.closed_through + 1) * MINUTE_MS + probe_age_ms
        if not events and known_through_ms == self.known_through_sent and not (progress and self.moved()):
            # Nothing new for the followers (the topic is kept for good and read whole at every
            # start): a batch that moved no minute adds no record.
            return []
        before = self.known_through_sent if self.known_through_sent is not None else NEG_INF
        chunks: list[list[dict[str, Any]]] = [[]]
        size = 0
        for e in events:
            entry = {
                "at_ms": e.at_ms,
                "status": e.status,
                "incident_id": e.incident_id,
                "scope": [e.scope_type, e.scope_id],
            }
            n = len(codec.dumps(entry)) + 1
            if chunks[-1] and size + n > INCIDENTS_RECORD_MAX_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += n
        self.known_through_sent = known_through_ms
        self.offset_sent = self.next_offset
        last = len(chunks) - 1
        return [
            codec.dumps(
                {
                    "events": chunk,
                    "known_through_ms": known_through_ms if i == last else before,
                    "signals_offset": self.next_offset if i == last else batch_start,
                }
            )
            for i, chunk in enumerate(chunks)
        ]

    def moved(self) -> bool:
        """Whether the detector took signals past the last incidents record sent."""
        return self.detector is not None and self.next_offset != self.offset_sent

    async def publish_progress(self, at: str = "the stop") -> None:
        """At a clean stop or a revocation (under the lock, after the last batch; `at` says
        which, for the log): an incidents record of the detector's position, if it took signals
        since the last record. Batches that moved no minute and sent nothing (hold reports, a
        minute some partitions have not closed yet) add no record; without this one the next
        owner finds the group's committed offset past the published one, warns, and takes those
        signals again, sending their alerts again. Not sent after a freeze past the session
        (another worker may run the detector now: its records stay the last), nor with holds off
        (no worker reads the topic). A failure is logged: the next owner takes those signals
        again, as after a crash."""
        if not self.holds or not self.moved():
            return
        if self.loop is not None and self.loop.frozen_since(0, now_s()):
            return
        start = self.offset_sent if self.offset_sent is not None else self.next_offset
        try:
            records = self.incidents_records([], start, progress=True)
            for record in records:
                await self.send(self.settings.incidents_topic, b"incidents", record)
                self.counts["incident_records"] += 1
            if records:
                await self.flush()
                log.info("burst detector's position published at %s: signals offset %d", at, self.next_offset)
        except Exception:  # noqa: BLE001 - the stop goes on: the next owner takes those signals again
            log.warning(
                "burst detector's position (signals offset %d) not published at %s",
                self.next_offset,
                at,
                exc_info=True,
            )

    async def _rebuild(self, upto: int) -> BurstDetector:
        """`_rebuild_detector`, then `on_restored` told which incidents it has open."""
        detector = await self._rebuild_detector(upto)
        self.offset_sent = self.next_offset
        if self.on_restored is not None:
            self.on_restored(detector.incidents.open_incidents())
        if self.holds:
            self.reannounce = detector.incidents.opening_events(round(self.settings.probe_age_s * 1000))
            unknown = len(detector.incidents) - len(self.reannounce)
            if unknown:
                log.warning(
                    "%d open incidents restored from a snapshot that does not say when they opened: "
                    "not announced again on the incidents topic",
                    unknown,
                )
        return detector

    async def _rebuild_detector(self, upto: int) -> BurstDetector:
        """The detector as it was after the signals before offset `upto`: the latest snapshot,
        then the signals after it."""
        self.counts["rebuilt_from"] = upto
        detector, start = await self._restore_snapshot()
        if detector is None or start is None:
            detector, start = BurstDetector(self.partitions, self.settings.burst), 0
            self.tally = self._new_tally()
        else:
            log.info("burst detector restored from a snapshot covering signals before offset %d", start)
        resume = self.next_offset = max(upto, start)
        self.detector = detector
        if resume == 0:  # nothing to read, and nothing to skip as a repeat
            return detector
        tp = TopicPartition(self.settings.signals_topic, 0)
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False, group_id=None)
        await consumer.start()
        taken = 0
        lost: list[tuple[int, int, int | None]] = []  # (first, end, where the log begins)
        try:
            consumer.assign([tp])
            begins = (await consumer.beginning_offsets([tp]))[tp]
            ends = (await consumer.end_offsets([tp]))[tp]
            if ends < resume:
                # Recreated (its offsets start again): none of its reports is the history before
                # `resume` (the group's offset, or the snapshot's when it covers more); they are
                # new, and taken live from where it begins, alerts sent. Resumed there, the
                # detector would skip each as a repeat until the new topic passed it.
                log.error(
                    "signals topic ends at offset %d, before offset %d the detector resumes at: recreated", ends, resume
                )
                if start < upto:
                    lost.append((start, upto, None))
                self.next_offset = begins
                upto = start  # nothing to read
            elif begins > start:  # deleted before any snapshot covered them (also past `upto`: never read again)
                lost.append((start, begins, begins))
            # What is read: from where the log begins, if retention deleted the offsets after
            # the snapshot (`_lost`), to `upto` or where the topic ends before it.
            read_from = max(start, begins)
            consumer.seek(tp, read_from)
            idle_polls = 0
            while (at := await consumer.position(tp)) < upto:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                messages = batch.get(tp, [])
                idle_polls = 0 if messages else idle_polls + 1
                if idle_polls >= 60:  # the topic ends before `upto`: it was truncated or recreated
                    end = (await consumer.end_offsets([tp]))[tp]
                    if end > at:  # they are there (a leader moving, the network): not lost
                        raise RuntimeError(
                            f"signals offsets {at}..{end - 1} are on the broker but none was read in 60 s "
                            "to rebuild the detector"
                        )
                    log.error("signals topic ends before offset %d; detector rebuilt from what is there", upto)
                    lost.append((at, upto, None))
                    break
                for msg in messages:
                    if msg.offset >= upto:
                        break
                    self._take(codec.loads(msg.value), [])  # alerts suppressed: sent before
                    taken += 1
        finally:
            await consumer.stop()
        for first, end, log_begins in lost:
            self._lost(first, end, log_begins)
        self.counts["signals_read_to_rebuild"] += taken
        # What the next rebuild reads again unless a snapshot covers it: counted toward the next
        # snapshot, so a worker restarting more often than `snapshot_every` new reports (a crash
        # loop, rebalances) writes one at its first batch and does not read more at each restart.
        self.since_snapshot = taken
        if read_from < min(at, upto):
            log.info(
                "burst detector rebuilt from %d signal reports (offsets %d to %d)", taken, read_from, min(at, upto) - 1
            )
        else:
            log.info("burst detector resumes at signals offset %d: no report to read before it", self.next_offset)
        return detector

    def _lost(self, first: int, end: int, begins: int | None) -> None:
        """Signals `first`..`end - 1` were not on the broker for the detector being rebuilt:
        logged, counted, and said in an INPUT_LOST alert on the signals topic with the next
        reports the detector takes (`_lost_alerts`), since it goes on without what they taught
        it and without the incidents they opened."""
        self.counts["signals_lost"] += end - first
        self.lost.append((first, end, begins))
        log.error(
            "signals offsets %d..%d are gone (%s) and no snapshot covers them: the burst detector is rebuilt "
            "without them (its normal learned again, incidents open before unknown to it)",
            first,
            end - 1,
            f"the log begins at {begins}" if begins is not None else "the topic ends before them",
        )

    def _lost_alerts(self) -> list[Decision]:
        """The INPUT_LOST alerts of `_lost`, dated by the event time the detector has reached
        (its reports' newest minute), once it has taken a report."""
        d = self.detector
        if not self.lost or d is None or not d.merge.through:
            return []
        closed = d.merge.closed_through
        at_ms = ((closed if closed is not None else max(d.merge.through.values())) + 1) * MINUTE_MS
        out = [
            signals_lost_alert(self.settings.signals_topic, first, end - 1, end - first, begins, at_ms)
            for first, end, begins in self.lost
        ]
        self.lost = []
        return out

    async def _restore_snapshot(self) -> tuple[BurstDetector | None, int | None]:
        raw = await read_latest_snapshot(self.settings)
        if raw is None:
            return None, None
        try:
            snap = await self._decoded(raw)
        except ValueError as exc:
            log.warning("burst detector snapshot not usable (%s); rebuilding from the signals", exc)
            return None, None
        if snap.detector.partitions != frozenset(range(self.partitions)):
            log.warning(
                "burst detector snapshot is of partitions %s, the input has %d; rebuilding from the signals",
                sorted(snap.detector.partitions),
                self.partitions,
            )
            return None, None
        start = 0 if snap.signals_offset is None else snap.signals_offset
        self.counts["restored_snapshot_offset"] = start
        # A snapshot without a tally (holds were off, or `warmup` wrote it): a fresh one; its
        # alerts then count only the holds reported after the snapshot.
        self.tally = snap.tally if self.holds and snap.tally is not None else self._new_tally()
        return snap.detector, start

    async def _decoded(self, raw: bytes) -> burstsnapshot.DetectorSnapshot:
        """The snapshot in `raw`, decoded in steps with the loop's other work between them (a
        tally of 50,000 holds takes 0.26-0.57 s at once: the other partitions' records and the
        pages waited). The lock is held, and the detector and tally are set only once whole:
        no report or alert meets a half-restored tally."""
        steps = burstsnapshot.decode_steps(raw, self.settings.burst)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                snap: burstsnapshot.DetectorSnapshot = done.value
                return snap
            await asyncio.sleep(0)

    def stats(self) -> dict[str, Any]:
        d = self.detector
        return {
            "counts": dict(self.counts),
            "partitions": self.partitions,
            "closed_through_minute": d.closed_through if d else None,
            "scopes": len(d.scopes) if d else 0,
            "open_incidents": d.incidents.open_scopes() if d else [],
            "alerts_waiting_for_holds": len(self.tally.pending) if self.tally else 0,
        }


def group_committed(app: Any, topic: str) -> Committed:
    """The consumer group's committed offset of `topic`'s partition 0, asked of the broker by
    the group's own aiokafka consumer in Faust's consumer thread (`app`: a Faust app)."""

    async def committed() -> int | None:
        thread: Any = app.consumer._thread
        aio = thread._ensure_consumer()
        offset = await thread.call_thread(aio.committed, TopicPartition(topic, 0))
        return None if offset is None else int(offset)

    return committed


async def read_published_offset(settings: Settings) -> int | None:
    """The `signals_offset` of the last record on the incidents topic (the detector's position
    after the last batch whose outputs it sent), or None if there is none."""
    tp = TopicPartition(settings.incidents_topic, 0)
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        if settings.incidents_topic not in await consumer.topics():
            return None
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        last: int | None = None
        for start in (end - 1, end - 10, begin):  # the last record is usually at end - 1
            if start < begin or last is not None:
                continue
            consumer.seek(tp, max(start, begin))
            idle_polls = 0
            while await consumer.position(tp) < end and idle_polls < 30:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                messages = batch.get(tp, [])
                idle_polls = 0 if messages else idle_polls + 1
                for msg in messages:
                    try:
                        offset = codec.loads(msg.value or b"").get("signals_offset")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(offset, int):
                        last = offset
        return last
    finally:
        await consumer.stop()


async def read_latest_snapshot(settings: Settings) -> bytes | None:
    """The value of the last snapshot record on the snapshots topic, or None."""
    tp = TopicPartition(settings.snapshots_topic, 0)
    consumer = AIOKafkaConsumer(
        **aiokafka_config(settings),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=SNAPSHOT_TOPIC_MAX_BYTES,
        fetch_max_bytes=SNAPSHOT_TOPIC_MAX_BYTES,
    )
    await consumer.start()
    try:
        if settings.snapshots_topic not in await consumer.topics():
            return None
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        # An explicit seek: a lazy seek_to_beginning can lose to the reset of a fresh assignment.
        consumer.seek(tp, begin)
        latest: bytes | None = None
        idle_polls = 0
        while await consumer.position(tp) < end and idle_polls < 30:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            messages = batch.get(tp, [])
            idle_polls = 0 if messages else idle_polls + 1
            for msg in messages:
                if msg.key == burstsnapshot.SNAPSHOT_KEY and msg.value is not None:
                    latest = msg.value
        return latest
    finally:
        await consumer.stop()


class SnapshotWriter:
    """Writes snapshot records with a producer of its own (a snapshot may be larger than the
    worker's outputs may be), started on first use and kept: a producer started and stopped for
    each snapshot took 7.1 ms of wall time a write against 1.9 ms with a kept one (median of 20
    writes of 150 KB each, interleaved, on the test broker). A failed write drops the producer;
    the next write starts a new one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def write(self, raw: bytes) -> None:
        """Write one snapshot record and wait for the broker's acknowledgement."""
        if self._producer is None:
            producer = AIOKafkaProducer(
                **aiokafka_config(self.settings), acks="all", max_request_size=SNAPSHOT_TOPIC_MAX_BYTES
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        try:
            await self._producer.send_and_wait(
                self.settings.snapshots_topic, raw, key=burstsnapshot.SNAPSHOT_KEY, partition=0
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


async def write_snapshot(settings: Settings, raw: bytes) -> None:
    """Write one snapshot record and wait for the broker's acknowledgement (`warmup`)."""
    writer = SnapshotWriter(settings)
    try:
        await writer.write(raw)
    finally:
        await writer.close()
