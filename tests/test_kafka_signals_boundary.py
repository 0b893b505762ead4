"""Kafka tier: the burst detector's intake boundary against the real broker. A worker takes the
signals up to a committed offset (snapshots written on the way), then a takeover is handed the
signals as Faust handed them once (none of those after the committed offset for a while: offsets
0-36 for 90 s in the two-worker lookup test), or with a hole in front of its first batch. The
takeover rebuilds the detector from the snapshot and the committed part (alerts suppressed) and
reads what Faust skipped from the broker, live: the alerts of both workers are exactly those of
one detector taking every report once, in order.

Faust's drop itself is not forced here (it needs a rebalance race; `test_kafka_worker_consumer.py`
forces the one known for the input): the shell is handed the batches Faust would have handed."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.drivers.kafkaread import read_topics
from stream.drivers.replayfile import KafkaRecord
from stream.security import aiokafka_config
from stream.settings import Settings
from stream.worker.bursts import BurstShell
from stream.worker.gapfill import BrokerGapFetcher
from tests.kafka_support import fresh_topics, produce, require_broker
from tests.test_burst import outage_reports

pytestmark = pytest.mark.kafka

COMMITTED = 400  # what the first worker took and the group committed
SKIPPED = 700  # Faust hands the takeover nothing before this offset


def settings_for(bootstrap: str) -> Settings:
    topics = fresh_topics(partitions=2)
    # Holds off: alerts go out as the detector makes them. Snapshots every 150 reports: the
    # takeover restores the one covering offsets before 300, then reads 300-399 to rebuild.
    return Settings(
        bootstrap=bootstrap, partitions=2, max_hold_s=0, snapshot_every=150, snapshot_min_interval_s=0
    ).with_topic_prefix(topics.prefix)


class Group:
    """The consumer group's committed offset of the signals partition, on the broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tp = TopicPartition(settings.signals_topic, 0)
        self.consumer = AIOKafkaConsumer(
            **aiokafka_config(settings), group_id=f"qris-test-{uuid.uuid4().hex[:8]}", enable_auto_commit=False
        )

    async def __aenter__(self) -> Group:
        await self.consumer.start()
        self.consumer.assign([self.tp])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def commit(self, offset: int) -> None:
        await self.consumer.commit({self.tp: offset})

    async def committed(self) -> int | None:
        return int(x) if (x := await self.consumer.committed(self.tp)) is not None else None


def shell_for(settings: Settings, group: Group, fetcher: BrokerGapFetcher, sent: list[dict[str, Any]]) -> BurstShell:
    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if topic == settings.alert_topic:
            sent.append(orjson.loads(value))

    async def nothing() -> None:
        return None

    return BurstShell(settings, 2, send, nothing, fetch_gap=fetcher.fetch, committed=group.committed)


async def first_worker(
    settings: Settings,
    group: Group,
    fetcher: BrokerGapFetcher,
    sent: list[dict[str, Any]],
    records: list[KafkaRecord],
    shells: list[BurstShell],
) -> BurstShell:
    """The first worker (added to `shells`, closed by the caller): takes the signals before
    COMMITTED batch by batch, then the group commits them; its snapshots (written beside the
    detector) are on the broker when it returns."""
    first = shell_for(settings, group, fetcher, sent)
    shells.append(first)
    for i in range(0, COMMITTED, 50):
        await first.take_records(records[i : i + 50])
    await group.commit(COMMITTED)
    await first.snapshot_written()
    return first


def on_broker(bootstrap: str, settings: Settings) -> list[KafkaRecord]:
    reports = outage_reports()
    produce(
        bootstrap,
        [KafkaRecord(settings.signals_topic, 0, 0, None, None, orjson.dumps(r)) for r in reports],
        {settings.signals_topic: settings.signals_topic},
    )
    records = list(read_topics(bootstrap, [settings.signals_topic]))
    assert [r.offset for r in records] == list(range(len(reports)))
    return records


def reference(settings: Settings, records: list[KafkaRecord]) -> list[str]:
    """One detector taking every report once, in order (no broker needed)."""
    sent: list[dict[str, Any]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if topic == settings.alert_topic:
            sent.append(orjson.loads(value))

    async def nothing() -> None:
        return None

    from stream.core.burst import BurstDetector

    shell = BurstShell(dataclasses.replace(settings, snapshot_every=0), 2, send, nothing)
    shell.detector = BurstDetector(2, settings.burst)
    shell.tally = shell._new_tally()  # holds on: updated/resolved alerts wait for hold reports
    shell.next_offset = 0
    asyncio.run(shell.take_records(records))
    return [a["alert_id"] for a in sent]


@pytest.mark.parametrize("faust_delivers", ["from_past_the_committed_offset", "nothing"])
def test_a_takeover_takes_every_signal_from_the_committed_offset_once_whatever_faust_delivers(
    faust_delivers: str,
) -> None:
    bootstrap = require_broker()
    settings = settings_for(bootstrap)
    records = on_broker(bootstrap, settings)
    want = reference(settings, records)
    assert len(want) >= 2

    async def run() -> tuple[list[dict[str, Any]], BurstShell]:
        fetcher = BrokerGapFetcher(aiokafka_config(settings), wait_s=60)
        sent: list[dict[str, Any]] = []
        shells: list[BurstShell] = []
        try:
            async with Group(settings) as group:
                first = await first_worker(settings, group, fetcher, sent, records, shells)
                assert first.counts["snapshots_written"] == 2  # covering offsets before 150 and 300
                takeover = shell_for(settings, group, fetcher, sent)
                shells.append(takeover)
                assert await takeover.position() == COMMITTED  # watched before any batch
                if faust_delivers == "nothing":
                    assert await takeover.catch_up(len(records)) == len(records) - COMMITTED
                    await takeover.take_records(records[COMMITTED:])  # a late delivery: skipped
                else:
                    for i in range(SKIPPED, len(records), 100):
                        await takeover.take_records(records[i : i + 100])
                return sent, takeover
        finally:
            for shell in shells:
                await shell.close()
            await fetcher.close()

    sent, takeover = asyncio.run(run())
    assert [a["alert_id"] for a in sent] == want
    counts = takeover.counts
    assert counts["restored_snapshot_offset"] == 300 and counts["signals_read_to_rebuild"] == COMMITTED - 300
    assert counts["signals"] == len(records) - COMMITTED and takeover.next_offset == len(records)
    if faust_delivers == "nothing":
        assert counts["caught_up"] == len(records) - COMMITTED
        assert counts["redelivered_skipped"] == len(records) - COMMITTED
    else:
        assert counts["gap_records_fetched"] == SKIPPED - COMMITTED


def test_a_takeover_counts_the_signals_it_read_again_toward_its_next_snapshot() -> None:
    """Workers that restart more often than `snapshot_every` new reports: each rebuild reads the
    signals after the last snapshot again, and counts them, so the next snapshot comes that many
    reports sooner and the rebuild after it reads nothing again."""
    bootstrap = require_broker()
    settings = settings_for(bootstrap)  # a snapshot every 150 reports
    records = on_broker(bootstrap, settings)

    async def run() -> list[BurstShell]:
        fetcher = BrokerGapFetcher(aiokafka_config(settings), wait_s=60)
        sent: list[dict[str, Any]] = []
        shells: list[BurstShell] = []
        try:
            async with Group(settings) as group:
                await first_worker(settings, group, fetcher, sent, records, shells)
                for end in (COMMITTED + 50, COMMITTED + 100):  # two restarts, 50 new reports each
                    shell = shell_for(settings, group, fetcher, sent)
                    shells.append(shell)
                    await shell.take_records(records[end - 50 : end])
                    await shell.snapshot_written()
                    await group.commit(end)
                return shells
        finally:
            for shell in shells:
                await shell.close()
            await fetcher.close()

    first, second, third = asyncio.run(run())
    assert first.counts["snapshots_written"] == 2
    # The second read 300..399 again (100) and took 50: 150 since the snapshot, one written.
    assert second.counts["signals_read_to_rebuild"] == COMMITTED - 300
    assert second.counts["snapshots_written"] == 1
    assert third.counts["restored_snapshot_offset"] == COMMITTED + 50
    assert third.counts["signals_read_to_rebuild"] == 0


def test_with_holds_a_committed_offset_past_the_detector_s_last_incidents_record_is_taken_live() -> None:
    """Faust acks the offsets of a jump in its delivery as taken (faust-streaming #312), so the
    group's committed offset can cover signals no detector took. With holds on, the detector's
    last incidents record says through which offset its alerts were sent: a takeover goes on
    live from there. Here the group committed 1230 but the last record covers offsets before
    1190: the `opened` alert of the outage (made in between) is sent, not suppressed."""
    bootstrap = require_broker()
    settings = dataclasses.replace(settings_for(bootstrap), snapshot_every=0, max_hold_s=7200.0)
    records = on_broker(bootstrap, settings)
    want = reference(settings, records)  # holds on: the `opened` alert (the rest waits for holds)
    assert want
    published = {"events": [], "known_through_ms": 0, "signals_offset": 1190}
    produce(
        bootstrap,
        [KafkaRecord(settings.incidents_topic, 0, 0, b"incidents", None, orjson.dumps(published))],
        {settings.incidents_topic: settings.incidents_topic},
    )

    async def run() -> tuple[list[dict[str, Any]], BurstShell]:
        fetcher = BrokerGapFetcher(aiokafka_config(settings), wait_s=60)
        sent: list[dict[str, Any]] = []
        try:
            async with Group(settings) as group:
                await group.commit(1230)
                takeover = shell_for(settings, group, fetcher, sent)
                await takeover.take_records(records[1231:])
                return sent, takeover
        finally:
            await fetcher.close()

    sent, takeover = asyncio.run(run())
    assert [a["alert_id"] for a in sent] == want
    assert takeover.counts["signals_read_to_rebuild"] == 1190 and takeover.counts["gap_records_fetched"] == 41
