"""The live burst detector's shell: the partitions' closed minutes in, `FAILURE_BURST` alerts out.

Every worker sends its partitions' `signals` to one single-partition topic, so exactly one
worker (the owner of that partition in the consumer group) runs the `BurstDetector`. Every
`snapshot_every` reports, once the batch's alerts are sent, it writes the detector's snapshot
(state and the signals offset it covers, `core.burstsnapshot`) to the compacted single-partition
topic `qris.burst-snapshots`. A worker that takes the partition over, or restarts, restores the
latest snapshot and reads only the signals between it and the group's committed offset, with
the alerts of that part suppressed (they were sent before); without a usable snapshot it reads
the signals topic from the beginning. The detector drops repeated reports, so at-least-once
delivery of signals changes nothing.

With refund holds on, the detector also publishes its incident decisions and its progress to
the single-partition incidents topic after every batch (`incidents_record`): the incident
events of the batch's alerts and the event time through which every decision is known (the
last minute it closed, plus the probe age). Every worker reads that topic whole and gives it
to its partition engines. A takeover or a crash can repeat a record: the same events with the
same ids, which the engines ignore. The partitions' hold reports come on the signals topic
too: they go to the hold tally (`core.holdtally`), which keeps each incident's `updated` and
`resolved` alert until every partition has decided past it and then adds the holds it covers.
The tally is rebuilt, snapshotted and restored with the detector.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..core import burstsnapshot, codec
from ..core.burst import BurstDetector
from ..core.decisions import Decision
from ..core.holds import incident_event
from ..core.holdtally import HoldTally, is_hold_report
from ..core.signals import MINUTE_MS
from ..security import aiokafka_config
from ..settings import Settings

log = logging.getLogger("qris_guard.bursts")

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]

# A snapshot larger than this is not written (the previous one and more signals still restore
# the detector); the snapshots topic accepts records up to SNAPSHOT_TOPIC_MAX_BYTES.
SNAPSHOT_MAX_BYTES = 15 * 1024 * 1024
SNAPSHOT_TOPIC_MAX_BYTES = 16 * 1024 * 1024


class BurstShell:
    def __init__(self, settings: Settings, partitions: int, send: Send, flush: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.partitions = partitions
        self.send = send
        self.flush = flush
        self.detector: BurstDetector | None = None
        self.tally: HoldTally | None = None
        self.next_offset = -1
        self.since_snapshot = 0
        self.lock = asyncio.Lock()
        self.counts = {
            "signals": 0,
            "alerts": 0,
            "rebuilt_from": 0,
            "restored_snapshot_offset": -1,
            "signals_read_to_rebuild": 0,
            "snapshots_written": 0,
            "internal_errors": 0,
            "incident_records": 0,
        }
        self.holds = settings.max_hold_s > 0

    def forget(self) -> None:
        """After a rebalance the snapshot and the signals topic are the truth: rebuilt at the next report."""
        self.detector = None
        self.tally = None
        self.next_offset = -1

    async def process_batch(self, events: Sequence[Any]) -> None:
        """Feed a batch of reports to the detector and send its alerts. Faust acks the batch
        when this returns, even if it raised: a failure to send ends the process first."""
        try:
            await self._process_batch(events)
        except Exception:
            log.critical(
                "cannot rebuild the detector or send its alerts; exiting before the batch is acked", exc_info=True
            )
            os._exit(70)

    async def _process_batch(self, events: Sequence[Any]) -> None:
        async with self.lock:
            first = events[0].message.offset
            # Reports before `next_offset` are in the detector already (a snapshot may be ahead
            # of the group's committed offset); a gap after it means the detector is not ours.
            if self.detector is None or first > self.next_offset:
                self.detector = await self._rebuild(first)
            alerts: list[Decision] = []
            made: list[Decision] = []  # every alert the detector made (incident events)
            for ev in events:
                msg = ev.message
                if msg.offset < self.next_offset:
                    continue
                self.next_offset = msg.offset + 1
                self.counts["signals"] += 1
                self.since_snapshot += 1
                try:
                    value = codec.loads(msg.value)
                except ValueError:
                    log.error("signals offset %d is not JSON; skipped", msg.offset)
                    continue
                try:
                    alerts.extend(self._take(value, made))
                except Exception:  # a bug must not stop the worker: the report is skipped, loudly
                    self.counts["internal_errors"] += 1
                    log.error("burst detector failed on signals offset %d; report skipped", msg.offset, exc_info=True)
            for d in alerts:
                await self.send(self.settings.alert_topic, d.key, codec.dumps(d.value))
                self.counts["alerts"] += 1
            record = self.incidents_record(made) if self.holds else None
            if record is not None:
                await self.send(self.settings.incidents_topic, b"incidents", record)
                self.counts["incident_records"] += 1
            if alerts or record is not None:
                await self.flush()
                log.info(
                    "burst alerts sent for signals offsets %d..%d: %s",
                    events[0].message.offset,
                    events[-1].message.offset,
                    ", ".join(
                        f"{d.value.get('status', '')} {d.value['kind']} {d.value['scope']['type']}" for d in alerts
                    ),
                )
            every = self.settings.snapshot_every
            if every > 0 and self.since_snapshot >= every:
                # After the alerts are sent: a snapshot never covers an alert not yet sent.
                await self._write_snapshot(self.detector, self.next_offset)

    async def _write_snapshot(self, detector: BurstDetector, signals_offset: int) -> None:
        raw = burstsnapshot.encode(detector, signals_offset, self.tally)
        self.since_snapshot = 0
        if len(raw) > SNAPSHOT_MAX_BYTES:
            log.warning("burst detector snapshot of %d bytes not written (limit %d)", len(raw), SNAPSHOT_MAX_BYTES)
            return
        try:
            await write_snapshot(self.settings, raw)
        except Exception:  # a snapshot only shortens a takeover: failing to write one stops nothing
            log.error("burst detector snapshot not written", exc_info=True)
            return
        self.counts["snapshots_written"] += 1
        log.info("burst detector snapshot written: %d bytes, covers signals before offset %d", len(raw), signals_offset)

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

    def incidents_record(self, alerts: list[Decision]) -> bytes | None:
        """The incidents topic's record for a batch: its incident events and how far every
        decision is known (None before the detector closed any minute)."""
        d = self.detector
        if d is None or d.closed_through is None:
            return None
        probe_age_ms = round(self.settings.probe_age_s * 1000)
        events = [e for a in alerts if (e := incident_event(a.value, probe_age_ms)) is not None]
        return codec.dumps(
            {
                "events": [
                    {
                        "at_ms": e.at_ms,
                        "status": e.status,
                        "incident_id": e.incident_id,
                        "scope": [e.scope_type, e.scope_id],
                    }
                    for e in events
                ],
                "known_through_ms": (d.closed_through + 1) * MINUTE_MS + probe_age_ms,
                "signals_offset": self.next_offset,
            }
        )

    async def _rebuild(self, upto: int) -> BurstDetector:
        """The detector as it was after the signals before offset `upto`: the latest snapshot,
        then the signals after it."""
        self.counts["rebuilt_from"] = upto
        detector, start = await self._restore_snapshot()
        if detector is None or start is None:
            detector, start = BurstDetector(self.partitions, self.settings.burst), 0
            self.tally = self._new_tally()
        else:
            log.info("burst detector restored from a snapshot covering signals before offset %d", start)
        self.next_offset = max(upto, start)
        self.detector = detector
        if start >= upto:
            return detector
        tp = TopicPartition(self.settings.signals_topic, 0)
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False, group_id=None)
        await consumer.start()
        taken = 0
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            idle_polls = 0
            while await consumer.position(tp) < upto:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                messages = batch.get(tp, [])
                idle_polls = 0 if messages else idle_polls + 1
                if idle_polls >= 60:  # the topic ends before `upto`: it was truncated or recreated
                    log.error("signals topic ends before offset %d; detector rebuilt from what is there", upto)
                    break
                for msg in messages:
                    if msg.offset >= upto:
                        break
                    self._take(codec.loads(msg.value), [])  # alerts suppressed: sent before
                    taken += 1
        finally:
            await consumer.stop()
        self.counts["signals_read_to_rebuild"] += taken
        log.info(
            "burst detector rebuilt from %d signal reports (offsets %d to %d, up to offset %d)",
            taken,
            start,
            upto,
            upto,
        )
        return detector

    async def _restore_snapshot(self) -> tuple[BurstDetector | None, int | None]:
        raw = await read_latest_snapshot(self.settings)
        if raw is None:
            return None, None
        try:
            snap = burstsnapshot.decode(raw, self.settings.burst)
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


async def write_snapshot(settings: Settings, raw: bytes) -> None:
    """Write one snapshot record and wait for the broker's acknowledgement. Its own producer:
    a snapshot may be larger than the worker's outputs may be."""
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", max_request_size=SNAPSHOT_TOPIC_MAX_BYTES)
    await producer.start()
    try:
        await producer.send_and_wait(settings.snapshots_topic, raw, key=burstsnapshot.SNAPSHOT_KEY, partition=0)
    finally:
        await producer.stop()
