"""Kafka tier: what Faust's "seek back to committed offsets" does to a partition with no
committed offset on the real broker. aiokafka's `seek_to_committed` leaves its position past
records already fetched (so records Faust dropped there are never fetched again: a feed stall);
`rewind_uncommitted`, which the worker's consumer adds, fetches them again. And aiokafka's
fetcher, hooked as the worker's consumer thread hooks it, hands over Faust's messages."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from stream.drivers.replayfile import KafkaRecord
from stream.security import aiokafka_config
from stream.settings import Settings
from stream.worker.consumer import rewind_uncommitted, unpack_into_messages
from tests.kafka_support import ROOT, free_port, fresh_prefix, produce, require_broker

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


def new_topic(bootstrap: str, suffix: str, partitions: int) -> str:
    """A fresh topic of `partitions` partitions on the broker; its name."""
    name = f"{fresh_prefix()}.{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="qris-test")
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def test_seek_to_committed_does_not_rewind_a_partition_without_a_commit_and_rewind_uncommitted_does() -> None:
    bootstrap = require_broker()
    topic = new_topic(bootstrap, "feed", 1)
    produce(bootstrap, [KafkaRecord(topic, 0, i, None, None, b"x") for i in range(3)], {topic: topic})
    committed, after_seek, after_rewind, again = asyncio.run(positions_after_seeks(bootstrap, topic))
    assert list(committed.values()) == [None]
    assert after_seek == 3  # Faust's seek "back to committed offsets" moved nothing
    assert (after_rewind, again) == (0, 3)  # the worker's consumer fetches the records again


def test_records_fetched_while_the_flow_is_stopped_are_delivered_after_the_rebalance(tmp_path: Path) -> None:
    """The race behind the feed stalls, forced (`tests/faust_race_app.py`): a Faust app whose
    drain loop fetches while the flow is stopped, alone in its group, then a second member joins;
    one record pair goes to a partition nobody has committed every second, through the rebalance.
    With the worker's consumer every record is delivered. With Faust's own consumer
    (`RACE_GUARDED=0`) the pairs sent while the flow was stopped were never delivered (3 of 20
    pairs in each of 3 runs at this stop, 4 of 20 in 2 runs of a similar script): a feed stall."""
    bootstrap = require_broker()
    name = new_topic(bootstrap, "race", 8)
    app_id = fresh_prefix("qris-test-", 8)
    members: list[subprocess.Popen[bytes]] = []

    def start(member: str) -> Path:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("QRIS_", "RACE_"))},
            "RACE_APP_ID": app_id,
            "RACE_BOOTSTRAP": bootstrap,
            "RACE_TOPIC": name,
            "RACE_DATA_DIR": str(tmp_path / member),
            "RACE_OUT": str(tmp_path / f"{member}.delivered"),
            "RACE_GUARDED": os.environ.get("RACE_GUARDED", "1"),
        }
        log = tmp_path / f"{member}.log"
        members.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "faust_race_app.py"), "worker", "-l", "info"]
                + ["--web-port", str(free_port())],
                env=env,
                stdout=open(log, "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        return log

    def delivered() -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for f in tmp_path.glob("*.delivered"):
            out.update((int(p), int(o)) for p, o in (line.split() for line in f.read_text().splitlines()))
        return out

    try:
        first_log = start("a")
        deadline = time.monotonic() + 90
        while "Ready" not in first_log.read_text(errors="replace"):
            assert time.monotonic() < deadline and members[0].poll() is None, first_log.read_text()[-3000:]
            time.sleep(0.5)
        start("b")
        sent: set[tuple[int, int]] = set()
        for i in range(20):
            records = [KafkaRecord(name, i % 8, 0, None, None, b"x")] * 2
            before = {o for p, o in sent if p == i % 8}
            produce(bootstrap, records, {name: name})
            sent.update((i % 8, o) for o in range(len(before), len(before) + 2))
            time.sleep(1.0)
        deadline = time.monotonic() + 60
        while not sent <= delivered() and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        for member in members:
            if member.poll() is None:
                os.killpg(member.pid, signal.SIGTERM)
                try:
                    member.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(member.pid, signal.SIGKILL)
                    member.wait()
    missing = sorted(sent - delivered())
    assert not missing, f"never delivered: {missing}; logs in {tmp_path}"


async def fetched_with_hook(bootstrap: str, topic: str, n: int) -> tuple[list[Any], int]:
    """What an aiokafka consumer whose fetcher unpacks into Faust's messages (the worker consumer
    thread's `unpack_into_messages`) hands over of `topic`'s partition 0, and its position."""
    consumer = AIOKafkaConsumer(
        **aiokafka_config(Settings(bootstrap=bootstrap)), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        unpack_into_messages(consumer._fetcher)
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got.extend((await consumer.getmany(tp, timeout_ms=500)).get(tp, ()))
        return got, await consumer.position(tp)
    finally:
        await consumer.stop()


def test_aiokafkas_fetcher_hands_over_faust_messages_when_hooked() -> None:
    """aiokafka still stores each fetched partition in `Fetcher._records` and builds each record
    by `PartitionRecords._consumer_record`: else the records come as aiokafka's own and this fails
    (the worker would then convert them as Faust does, at the old cost)."""
    from faust.types.tuples import ConsumerMessage

    bootstrap = require_broker()
    topic = new_topic(bootstrap, "hooked", 1)
    values = [b"value %d" % i for i in range(300)]
    produce(bootstrap, [KafkaRecord(topic, 0, i, None, b"k%d" % i, v) for i, v in enumerate(values)], {topic: topic})
    got, position = asyncio.run(fetched_with_hook(bootstrap, topic, len(values)))
    assert {type(m) for m in got} == {ConsumerMessage}
    assert [(m.offset, m.key, m.value, m.topic, m.partition, m.serialized_value_size) for m in got] == [
        (i, b"k%d" % i, v, topic, 0, len(v)) for i, v in enumerate(values)
    ]
    assert all(isinstance(m.timestamp, float) and abs(m.timestamp - time.time()) < 600 for m in got)
    assert position == len(values)
