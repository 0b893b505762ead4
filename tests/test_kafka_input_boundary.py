"""Kafka tier: the input boundary against the real broker. The shell is handed batches as Faust
handed them in issue 9 (a record missing from a batch, delivered again later) and reads what
is missing from the broker itself; offsets taken by transaction markers are confirmed empty."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from kafka.admin import KafkaAdminClient

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from stream.drivers import kafkaread
from stream.drivers.kafkaread import read_topics
from stream.drivers.replay import replay
from stream.security import aiokafka_config
from stream.settings import Settings
from stream.worker.gapfill import BrokerGapFetcher
from stream.worker.shell import ReconcileShell
from tests.kafka_support import client_config, fresh_topics, produce, require_broker
from tests.scenario import LEDGER, PAYMENT, scenario_records
from tests.test_input_boundary import MemoryStore, canon

pytestmark = pytest.mark.kafka


def shell_for(settings: Settings, fetcher: BrokerGapFetcher, sent: list[dict[str, Any]]) -> ReconcileShell:
    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if topic != settings.signals_topic:
            sent.append(orjson.loads(value))

    async def nothing() -> None:
        return None

    return ReconcileShell(settings, MemoryStore(), send, nothing, nothing, fetch_gap=fetcher.fetch)


def drained(shell: ReconcileShell, sent: list[dict[str, Any]]) -> list[bytes]:
    for eng in shell.engines.values():
        sent.extend(d.value for d in eng.drain() if d.role != "signals")
    return canon(sent)


def test_a_record_missing_from_a_batch_is_read_from_the_broker_and_taken_once_in_order() -> None:
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    # Refund holds off: the input boundary is tested here, with no incidents topic feeding the shell.
    settings = Settings(bootstrap=bootstrap, partitions=topics.partitions, max_hold_s=0).with_topic_prefix(
        topics.prefix
    )
    produce(bootstrap, scenario_records(topics.partitions), {PAYMENT: topics.payment, LEDGER: topics.ledger})
    on_broker = list(read_topics(bootstrap, [topics.payment, topics.ledger]))
    settles = [r for r in on_broker if r.topic == topics.payment and b'"settled"' in (r.value or b"") and r.offset > 0]
    missing = settles[: len(settles) // 2 : 3]  # a few `settled`, in different partitions
    assert len(missing) >= 3
    gone = {(r.topic, r.partition, r.offset) for r in missing}
    batch1 = [r for r in on_broker if (r.topic, r.partition, r.offset) not in gone]
    half = len(batch1) // 2

    async def run() -> list[bytes]:
        fetcher = BrokerGapFetcher(aiokafka_config(settings), wait_s=60)
        sent: list[dict[str, Any]] = []
        shell = shell_for(settings, fetcher, sent)
        try:
            await shell.process_records(batch1[:half])
            await shell.process_records([*batch1[half:], *missing])  # the missing ones come late
            assert shell.counts["gap_records_fetched"] == len(missing)
            assert shell.counts["redelivered_skipped"] == len(missing)
            assert shell.counts["records"] == len(on_broker)
            return drained(shell, sent)
        finally:
            await fetcher.close()

    live = asyncio.run(run())
    want = canon(d.value for p, d in replay(on_broker, settings.params, drain=True) if p != -1)
    assert live == want


def test_offsets_of_transaction_markers_are_confirmed_empty_by_the_broker() -> None:
    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    settings = Settings(bootstrap=bootstrap, partitions=1, max_hold_s=0).with_topic_prefix(topics.prefix)
    records = [r for r in scenario_records(1) if r.topic == LEDGER]
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"qris-test-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        for i in range(0, len(records), 10):  # each commit marker takes an offset
            producer.begin_transaction()
            for r in records[i : i + 10]:
                producer.send(topics.ledger, key=r.key, value=r.value, partition=0)
            producer.commit_transaction()
    finally:
        producer.close()
    on_broker = list(read_topics(bootstrap, [topics.ledger]))
    assert len(on_broker) == len(records) and on_broker[-1].offset > len(records) - 1

    async def run() -> ReconcileShell:
        fetcher = BrokerGapFetcher(aiokafka_config(settings), wait_s=60)
        shell = shell_for(settings, fetcher, [])
        try:
            for i in range(0, len(on_broker), 7):
                await shell.process_records(on_broker[i : i + 7])
            return shell
        finally:
            await fetcher.close()

    shell = asyncio.run(run())
    markers = on_broker[-1].offset + 1 - len(on_broker)
    assert shell.counts["gap_offsets_empty"] == markers > 0
    assert shell.counts["records"] == len(records) and shell.counts["gap_records_fetched"] == 0


@pytest.mark.kafka
def test_a_read_goes_on_from_what_retention_left_when_it_deleted_the_first_records_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention deletes a partition's first records after `dump` / `replay --from-kafka` asked
    where the partition begins: the read goes on from what is left and yields every record still
    on the broker. (Reset to the end of the log, as a consumer does by default, it would end at
    once and drop them, silently.)"""
    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    producer = KafkaProducer(**client_config(bootstrap), acks="all")
    try:
        for i in range(10):
            producer.send(topics.ledger, key=b"R%d" % i, value=b"v%d" % i, partition=0)
        producer.flush()
    finally:
        producer.close()
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    tp = TopicPartition(topics.ledger, 0)

    class RetentionMeanwhile(KafkaConsumer):  # type: ignore[misc]  # (kafka-python has no types)
        def end_offsets(self, partitions: Any) -> Any:
            ends = super().end_offsets(partitions)
            admin.delete_records({tp: 5})  # after the log start was read: the read seeks below it
            return ends

    monkeypatch.setattr(kafkaread, "KafkaConsumer", RetentionMeanwhile)
    try:
        got = [r.offset for r in read_topics(bootstrap, [topics.ledger])]
    finally:
        admin.close()
    assert got == [5, 6, 7, 8, 9]


def test_an_aborted_transactions_debit_is_never_refunded_live_or_in_replay(tmp_path: Any) -> None:
    """A core-banking producer writes debits in transactions: one it aborts never happened, and
    refunding it pays money never taken. The worker, `replay --from-kafka` and `dump` read
    committed records only; a committed debit is refunded as usual."""
    import os
    import subprocess
    import sys

    from tests.kafka_support import ROOT, Worker, consume
    from tests.records import ledger, payment

    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    plain = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    core = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"qris-test-{uuid.uuid4().hex[:8]}")
    try:
        core.init_transactions()
        for ref, aborted in (("ABORTED", True), ("COMMITTED", False)):
            plain.send(topics.payment, key=ref.encode(), value=payment(f"{ref}-q", "requested", ref, 0), partition=0)
            core.begin_transaction()
            core.send(topics.ledger, key=ref.encode(), value=ledger(f"{ref}-d", "debited", ref, 1), partition=0)
            core.flush()
            (core.abort_transaction if aborted else core.commit_transaction)()
        core.begin_transaction()  # event time moves past both deadlines (300 s)
        core.send(topics.ledger, key=b"TICK", value=ledger("TICK-d", "debited", "TICK", 700), partition=0)
        core.commit_transaction()
        plain.send(topics.payment, key=b"TICK", value=payment("TICK-q", "requested", "TICK", 700), partition=0)
        plain.flush()
    finally:
        plain.close()
        core.close()
    on_broker = list(read_topics(bootstrap, [topics.payment, topics.ledger]))
    assert {orjson.loads(r.value or b"{}")["reference"] for r in on_broker if r.topic == topics.ledger} == {
        "COMMITTED",
        "TICK",
    }
    w = Worker(topics, tmp_path / "w", extra_env={"QRIS_MAX_HOLD_S": "0"})
    w.start(bootstrap)
    try:
        got = consume(bootstrap, [topics.refunds], until=1, timeout_s=120, settle_s=3, worker=w)
    finally:
        w.stop()
    assert [(v["type"], v["reference"]) for _t, _k, v in got] == [("refund.requested", "COMMITTED")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")} | topics.env() | {"QRIS_MAX_HOLD_S": "0"}
    out = tmp_path / "replay.jsonl"
    cmd = [sys.executable, "-m", "stream", "replay", "--from-kafka", "--bootstrap", bootstrap, "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    replayed = [orjson.loads(line)["value"] for line in out.read_bytes().splitlines()]
    assert [(v["type"], v["reference"]) for v in replayed if "refund_id" in v] == [("refund.requested", "COMMITTED")]


def test_records_deleted_by_retention_while_the_worker_was_down_raise_input_lost(tmp_path: Any) -> None:
    """The worker stops; the ledger goes on, and retention deletes records it never read. At its
    restart the log begins past where its state stands: a critical INPUT_LOST names the offsets
    lost, and the worker goes on with what is left."""
    from tests.kafka_support import Worker, consume
    from tests.records import ledger, payment

    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(topic: str, ref: str, value: bytes) -> None:
        producer.send(topic, key=ref.encode(), value=value, partition=0)

    w = Worker(topics, tmp_path / "w", extra_env={"QRIS_MAX_HOLD_S": "0"})
    try:
        for i in range(5):
            send(topics.payment, f"A{i}", payment(f"A{i}-q", "requested", f"A{i}", i))
            send(topics.ledger, f"A{i}", ledger(f"A{i}-d", "debited", f"A{i}", i))
        producer.flush()
        w.start(bootstrap)
        w.wait_processed(10, timeout_s=120)
        w.stop()
        for i in range(20):  # while it is down: 20 debits, of which retention deletes 15
            send(topics.ledger, f"B{i}", ledger(f"B{i}-d", "debited", f"B{i}", 10 + i))
        producer.flush()
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="qris-test")
        try:
            admin.delete_records({TopicPartition(topics.ledger, 0): 20}, timeout_ms=10_000)
        finally:
            admin.close()
        w.start(bootstrap)
        got = consume(bootstrap, [topics.alerts], until=1, timeout_s=120, settle_s=3, worker=w)
    finally:
        producer.close()
        w.stop()
    lost = [v for _t, _k, v in got if v["kind"] == "INPUT_LOST"]
    assert len(lost) == 1, [v["kind"] for _t, _k, v in got]
    assert lost[0]["severity"] == "critical" and lost[0]["topic"] == topics.ledger
    assert lost[0]["observed"] == {"lost_offsets": 15, "first_offset": 5, "last_offset": 19, "log_start_offset": 20}
