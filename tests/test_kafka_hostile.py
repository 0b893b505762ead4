"""Kafka tier: hostile input live. A record of about 1 MiB and a record dated 9999-12-31 among
normal traffic: the worker neither restarts nor decides anything replay would not."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from kafka import KafkaProducer
from stream.core.eventtime import parse_ms
from stream.drivers.replayfile import KafkaRecord
from stream.simulate.partitioner import partition_for
from tests.kafka_support import Worker, consume, fresh_topics, require_broker
from tests.records import payment
from tests.scenario import LEDGER, PAYMENT, scenario_records
from tests.test_kafka_worker import canon, expected_outputs, live_by_role

pytestmark = pytest.mark.kafka


def _hostile_day(partitions: int) -> list[KafkaRecord]:
    """The hand-made day, each record with a Kafka timestamp a second after its event time, plus
    a ~1 MiB value and a valid `settled` dated 9999-12-31, both in the middle of partition 0."""
    out = []
    for r in scenario_records(partitions):
        try:
            ts = parse_ms(orjson.loads(r.value or b"")["occurred_at"]) + 1_000
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ts = out[-1].timestamp_ms if out else parse_ms("2025-03-29T00:00:00Z")
        out.append(KafkaRecord(r.topic, r.partition, r.offset, ts, r.key, r.value))
    ref = next(f"QRCLOCK{i}" for i in range(100) if partition_for(f"QRCLOCK{i}".encode(), partitions) == 0)
    mine = [i for i, r in enumerate(out) if r.topic == PAYMENT and r.partition == 0]
    middle = mine[len(mine) // 2]
    ts = out[middle].timestamp_ms
    huge = b'{"event_id":"huge","pad":"' + b"x" * 1_000_000 + b'"}'
    clock = payment("clock-1", "settled", ref, 0, occurred_at="9999-12-31T23:59:59+07:00")
    extra = [
        KafkaRecord(PAYMENT, 0, -1, ts, b"QRHUGE", huge),
        KafkaRecord(PAYMENT, 0, -1, ts, ref.encode(), clock),
    ]
    return out[:middle] + extra + out[middle:]


def _produce_with_timestamps(bootstrap: str, records: list[KafkaRecord], topic_map: dict[str, str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=1_048_576)
    try:
        for rec in records:
            producer.send(
                topic_map[rec.topic],
                key=rec.key,
                value=rec.value,
                partition=rec.partition,
                timestamp_ms=rec.timestamp_ms,
            )
        producer.flush(60)
    finally:
        producer.close()


def test_a_1_mib_record_and_a_9999_clock_neither_restart_the_worker_nor_differ_from_replay(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    records = _hostile_day(topics.partitions)
    worker = Worker(topics, tmp_path / "w")
    worker.start(bootstrap)
    try:
        _produce_with_timestamps(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
        want = expected_outputs(bootstrap, topics)
        n = sum(len(v) for v in want.values())
        got = live_by_role(consume(bootstrap, topics.outputs(), until=n, timeout_s=180, worker=worker), topics)
        worker.assert_alive()
        stats = worker.stats()
    finally:
        worker.stop()
    for role in want:
        assert canon(got[role]) == canon(want[role]), f"{role} differs:\n{worker.log_tail()}"
    assert len(want["refunds"]) == 50, "the clock record changed no other reference"
    [huge] = [v for v in got["dead_letter"] if v["key"] == "QRHUGE"]
    assert huge["error"] == "too_large" and huge["value_truncated"] and huge["value_length"] > 1_000_000
    assert len(base64.b64decode(huge["value_b64"])) == 65_536
    assert [v["kind"] for v in got["alerts"]].count("CLOCK_SKEW") == 1
    assert stats["counts"]["internal_errors"] == 0
    log = worker.log_tail(400)
    assert "exiting" not in log and log.count("state restored") <= topics.partitions, log
