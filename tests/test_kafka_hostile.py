"""Kafka tier: hostile input live. A record of about 1 MiB and a record dated 9999-12-31 among
normal traffic: the worker neither restarts nor decides anything replay would not."""

from __future__ import annotations

import base64
import re
import shutil
import time
from pathlib import Path

import orjson
import pytest

from kafka import KafkaProducer
from stream.core.eventtime import format_ms, parse_ms
from stream.drivers.replayfile import KafkaRecord
from stream.simulate.partitioner import partition_for
from tests.kafka_support import Worker, consume, fresh_topics, require_broker
from tests.records import payment
from tests.scenario import LEDGER, PAYMENT, scenario_records
from tests.test_kafka_worker import canon, expected_outputs, live_by_role

pytestmark = pytest.mark.kafka


def _timestamped_day(partitions: int) -> list[KafkaRecord]:
    """The hand-made day, each record with a Kafka timestamp a second after its event time (a
    record without one: the previous record's)."""
    out: list[KafkaRecord] = []
    for r in scenario_records(partitions):
        try:
            ts = parse_ms(orjson.loads(r.value or b"")["occurred_at"]) + 1_000
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ts = out[-1].timestamp_ms if out else parse_ms("2025-03-29T00:00:00Z")
        out.append(KafkaRecord(r.topic, r.partition, r.offset, ts, r.key, r.value))
    return out


def _hostile_day(partitions: int) -> list[KafkaRecord]:
    """The hand-made day with Kafka timestamps (`_timestamped_day`), plus a ~1 MiB value and a
    valid `settled` dated 9999-12-31, both in the middle of partition 0."""
    out = _timestamped_day(partitions)
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


def _hammered_day(partitions: int) -> tuple[list[KafkaRecord], int]:
    """The hand-made day with Kafka timestamps, and in the middle of partition 0 one reference
    hammered with 4,000 distinct `debited` records of 128-character ids, all in one second: while
    its partition's watermark stands, they all wait in that reference's one state entry, about
    1.3 MB of it (past the producer's and the changelog topic's 1 MiB). Returns the records and
    the index in them just after the hammer."""
    out = _timestamped_day(partitions)
    ref = next(f"QRHAMMER{i}" for i in range(100) if partition_for(f"QRHAMMER{i}".encode(), partitions) == 0)
    mine = [i for i, r in enumerate(out) if r.topic == LEDGER and r.partition == 0]
    middle = mine[len(mine) // 2]
    ts = out[middle].timestamp_ms
    occurred = format_ms(ts - 1_000)
    hammer = []
    for n in range(4_000):
        eid = f"{n:06d}".ljust(128, "h")
        value = orjson.dumps(
            {
                "event_id": eid,
                "type": "debited",
                "reference": ref,
                "occurred_at": occurred,
                "amount": 1_000,
                "currency": "IDR",
                "entry_id": eid.replace("h", "e"),
                "account_id": "7700009876".ljust(128, "0"),
            }
        )
        hammer.append(KafkaRecord(LEDGER, 0, -1, ts, ref.encode(), value))
    return out[:middle] + hammer + out[middle:], middle + len(hammer)


def test_a_reference_hammered_past_1_mib_of_state_neither_restarts_the_worker_nor_differs_from_replay(
    tmp_path: Path,
) -> None:
    # Killed just after the hammer and restarted on a wiped disk: the restore reads the
    # reference's entry (in pieces) back from the changelog alone.
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    records, cut = _hammered_day(topics.partitions)
    topic_map = {PAYMENT: topics.payment, LEDGER: topics.ledger}
    worker = Worker(topics, tmp_path / "w")
    worker.start(bootstrap)
    try:
        _produce_with_timestamps(bootstrap, records[:cut], topic_map)
        worker.wait_processed(cut, timeout_s=180)
        time.sleep(2)  # a commit or two after the hammer
        worker.assert_alive()
        worker.kill()
        assert worker.log_path is not None
        first_log = worker.log_path.read_text()
        for d in worker.data_dir.iterdir():
            if d.is_dir():
                shutil.rmtree(d)
        worker.start(bootstrap)
        _produce_with_timestamps(bootstrap, records[cut:], topic_map)
        want = expected_outputs(bootstrap, topics)
        n = sum(len(v) for v in want.values())
        got = live_by_role(consume(bootstrap, topics.outputs(), until=n, timeout_s=240, worker=worker), topics)
        worker.assert_alive()
        stats = worker.stats()
    finally:
        worker.stop()
    for role in want:
        assert canon(got[role]) == canon(want[role]), f"{role} differs:\n{worker.log_tail()}"
    assert stats["counts"]["internal_errors"] == 0
    log = worker.log_tail(400)
    assert "exiting" not in log, log
    # The successor read the hammered reference's thousands of waiting records back from pieces.
    assert re.search(r"partition 0: state restored \(\d+ references, 4\d\d\d waiting items", log), log
    assert "written to the changelog in" in first_log
