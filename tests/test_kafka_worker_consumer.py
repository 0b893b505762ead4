"""Kafka tier: what Faust's "seek back to committed offsets" does to a partition with no
committed offset on the real broker. aiokafka's `seek_to_committed` leaves its position past
records already fetched (so records Faust dropped there are never fetched again: a feed stall);
`rewind_uncommitted`, which the worker's consumer adds, fetches them again."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from stream.drivers.replayfile import KafkaRecord
from stream.security import aiokafka_config
from stream.settings import Settings
from stream.worker.consumer import rewind_uncommitted
from tests.kafka_support import produce, require_broker

pytestmark = pytest.mark.kafka


async def positions_after_seeks(bootstrap: str, topic: str) -> tuple[dict[TopicPartition, int | None], int, int, int]:
    consumer = AIOKafkaConsumer(
        **aiokafka_config(Settings(bootstrap=bootstrap)),
        group_id=f"qris-test-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        tp = TopicPartition(topic, 0)
        taken = 0
        for _ in range(60):  # the group's first assignment, then the three records
            got = await consumer.getmany(timeout_ms=500)
            taken += len(got.get(tp, ()))
            if taken >= 3:
                break
        assert taken == 3
        committed = await consumer.seek_to_committed()
        after_seek = await consumer.position(tp)
        await rewind_uncommitted(consumer, committed)
        after_rewind = await consumer.position(tp)
        again = await consumer.getmany(tp, timeout_ms=5000)
        return committed, after_seek, after_rewind, len(again.get(tp, ()))
    finally:
        await consumer.stop()


def test_seek_to_committed_does_not_rewind_a_partition_without_a_commit_and_rewind_uncommitted_does() -> None:
    bootstrap = require_broker()
    topic = f"t{uuid.uuid4().hex[:10]}.feed"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="qris-test")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    produce(bootstrap, [KafkaRecord(topic, 0, i, None, None, b"x") for i in range(3)], {topic: topic})
    committed, after_seek, after_rewind, again = asyncio.run(positions_after_seeks(bootstrap, topic))
    assert list(committed.values()) == [None]
    assert after_seek == 3  # Faust's seek "back to committed offsets" moved nothing
    assert (after_rewind, again) == (0, 3)  # the worker's consumer fetches the records again
