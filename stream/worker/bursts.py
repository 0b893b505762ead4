"""The live burst detector's shell: the partitions' closed minutes in, `FAILURE_BURST` alerts out.

Every worker sends its partitions' `signals` to one single-partition topic, so exactly one
worker (the owner of that partition in the consumer group) runs the `BurstDetector`. Its
state is the detector fed with the whole signals topic: when a worker takes the partition
over, or restarts, it first reads the topic from the beginning up to where the group's
committed offset resumes, with the alerts of that part suppressed (they were sent before),
then carries on. The detector drops repeated reports, so at-least-once delivery of signals
changes nothing. The signals topic keeps everything (`retention.ms=-1`); it is small: one
report per input partition and closed minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..core import codec
from ..core.burst import BurstDetector
from ..security import aiokafka_config
from ..settings import Settings

log = logging.getLogger("qris_guard.bursts")

Send = Callable[[str, bytes | None, bytes], Awaitable[Any]]


class BurstShell:
    def __init__(self, settings: Settings, partitions: int, send: Send, flush: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.partitions = partitions
        self.send = send
        self.flush = flush
        self.detector: BurstDetector | None = None
        self.next_offset = -1
        self.lock = asyncio.Lock()
        self.counts = {"signals": 0, "alerts": 0, "rebuilt_from": 0, "internal_errors": 0}

    def forget(self) -> None:
        """After a rebalance the signals topic is the truth: rebuilt at the next report."""
        self.detector = None
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
            if self.detector is None or first != self.next_offset:
                self.detector = await self._rebuild(first)
            alerts = []
            for ev in events:
                msg = ev.message
                if msg.offset < self.next_offset:
                    continue
                self.next_offset = msg.offset + 1
                self.counts["signals"] += 1
                try:
                    value = codec.loads(msg.value)
                except ValueError:
                    log.error("signals offset %d is not JSON; skipped", msg.offset)
                    continue
                try:
                    alerts.extend(self.detector.on_signals(value))
                except Exception:  # a bug must not stop the worker: the report is skipped, loudly
                    self.counts["internal_errors"] += 1
                    log.error("burst detector failed on signals offset %d; report skipped", msg.offset, exc_info=True)
            for d in alerts:
                await self.send(self.settings.alert_topic, d.key, codec.dumps(d.value))
                self.counts["alerts"] += 1
            if alerts:
                await self.flush()
                log.info(
                    "burst alerts sent for signals offsets %d..%d: %s",
                    events[0].message.offset,
                    events[-1].message.offset,
                    ", ".join(f"{d.value['status']} {d.value['scope']['type']}" for d in alerts),
                )

    async def _rebuild(self, upto: int) -> BurstDetector:
        """The detector as it was after the signals before offset `upto`."""
        detector = BurstDetector(self.partitions, self.settings.burst)
        self.next_offset = upto
        self.counts["rebuilt_from"] = upto
        if upto <= 0:
            return detector
        tp = TopicPartition(self.settings.signals_topic, 0)
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            taken = 0
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
                    detector.on_signals(codec.loads(msg.value))
                    taken += 1
        finally:
            await consumer.stop()
        log.info("burst detector rebuilt from %d signal reports (up to offset %d)", taken, upto)
        return detector

    def stats(self) -> dict[str, Any]:
        d = self.detector
        return {
            "counts": dict(self.counts),
            "partitions": self.partitions,
            "closed_through_minute": d.closed_through if d else None,
            "scopes": len(d.scopes) if d else 0,
            "open_incidents": d.incidents.open_scopes() if d else [],
        }
