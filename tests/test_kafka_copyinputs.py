"""`qris-guard copy-inputs` on the broker: an outage day on 2-partition input topics copied into
new 4-partition topics replays to the same refunds and cancellations; the copies are
co-partitioned, keyed by reference, every reference on one partition, with the values, Kafka
timestamps and headers of the originals. The supported way to grow (README, "Input partitions
are fixed")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

from kafka import KafkaProducer
from stream.drivers.kafkaread import read_messages, read_topics
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from stream.simulate import partition_for
from stream.topics import partition_counts
from tests.kafka_support import ROOT, Topics, client_config, fresh_prefix, require_broker
from tests.test_copyinputs import outage_day, refunds


def _produce(bootstrap: str, records: list[KafkaRecord], topics: Topics) -> None:
    """As a producer did: each record to its partition, with its time; some with headers."""
    names = {Settings().payment_topic: topics.payment, Settings().ledger_topic: topics.ledger}
    producer = KafkaProducer(**client_config(bootstrap), acks="all", linger_ms=5, batch_size=256 * 1024)
    failures: list[BaseException] = []
    try:
        for i, r in enumerate(records):
            headers = [("origin", f"h{i}".encode()), ("bin", b"\x00\xff")] if i % 11 == 0 else []
            producer.send(
                names[r.topic],
                key=r.key,
                value=r.value,
                partition=r.partition,
                timestamp_ms=r.timestamp_ms,
                headers=headers,
            ).add_errback(failures.append)
        producer.flush(60)
    finally:
        producer.close()
    assert not failures, failures[:3]


def _copy(bootstrap: str, topics: Topics, to: Topics, partitions: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    env.update(topics.env())
    env["QRIS_BOOTSTRAP"] = bootstrap
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "copy-inputs",
            "--to-payment-topic",
            to.payment,
            "--to-ledger-topic",
            to.ledger,
            "--to-partitions",
            str(partitions),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _reference(key: bytes | None, value: bytes | None) -> str:
    from stream.drivers.copyinputs import reference_key

    found, _source = reference_key(key, value)
    return (found or b"?").decode("utf-8", "replace")


@pytest.mark.kafka
def test_an_outage_day_copied_to_four_partitions_decides_the_same_refunds() -> None:
    bootstrap = require_broker()
    old_topics = Topics(fresh_prefix("tcopy"), partitions=2)
    old_topics.create(bootstrap)
    new_topics = Topics(fresh_prefix("tcopy"), partitions=4)  # (only its input names: created by the copy)
    day = outage_day(10, seed=3)
    # A few records no reference can be read from, sent without a key (dead-lettered either way).
    day += [
        KafkaRecord(Settings().payment_topic, i % 2, 0, day[-1].timestamp_ms, None, junk)
        for i, junk in enumerate([b"not json", b'{"reference": 7}', b"[1]"])
    ]
    _produce(bootstrap, day, old_topics)
    old_settings = Settings(bootstrap=bootstrap).with_topic_prefix(old_topics.prefix)
    new_settings = Settings(bootstrap=bootstrap).with_topic_prefix(new_topics.prefix)

    started = time.monotonic()
    done = _copy(bootstrap, old_topics, new_topics, 4)
    took_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    keyless = sum(1 for r in day if r.key is None)
    print(f"copy-inputs: {len(day)} records ({keyless} keyless) in {took_s:.1f} s\n{done.stdout}")
    assert f"copied {len(day):,} records" in done.stdout
    from_value = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) keyless keyed by the reference", done.stdout)]
    without = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) kept without a key", done.stdout)]
    assert (sum(from_value), sum(without)) == (keyless - 3, 3), done.stdout

    # The new topics: co-partitioned with 4, created as `topics` creates inputs.
    from stream.topics import admin_client

    admin = admin_client(new_settings)
    try:
        assert partition_counts(admin, [new_topics.payment, new_topics.ledger]) == {
            new_topics.payment: 4,
            new_topics.ledger: 4,
        }
    finally:
        admin.close()

    old = list(read_messages(old_settings, [old_topics.payment, old_topics.ledger]))
    new = list(read_messages(new_settings, [new_topics.payment, new_topics.ledger]))
    assert len(new) == len(old) == len(day)

    # Each record as it was: value bytes, Kafka time (CreateTime), headers; keyed by reference.
    def kept(m: object) -> tuple[object, ...]:
        return (m.value, m.timestamp, m.timestamp_type, tuple(m.headers))  # type: ignore[attr-defined]

    assert Counter(kept(m) for m in new) == Counter(kept(m) for m in old)
    assert all(m.timestamp_type == 0 for m in new)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for m in new:
        ref = _reference(m.key, m.value)
        if m.key is not None:
            assert m.partition == partition_for(m.key, 4)
            partitions_of[ref].add(m.partition)
    assert all(len(ps) == 1 for ps in partitions_of.values())
    assert sum(1 for m in new if m.key is None) == 3

    # The records of each reference in the order they had.
    def per_reference(ms: list[object], topic_of: dict[str, str]) -> dict[tuple[str, str], list[bytes | None]]:
        out: dict[tuple[str, str], list[bytes | None]] = defaultdict(list)
        for m in sorted(ms, key=lambda m: (m.topic, m.partition, m.offset)):  # type: ignore[attr-defined]
            out[(topic_of[m.topic], _reference(m.key, m.value))].append(m.value)  # type: ignore[attr-defined]
        return out

    roles_old = {old_topics.payment: "P", old_topics.ledger: "L"}
    roles_new = {new_topics.payment: "P", new_topics.ledger: "L"}
    assert per_reference(new, roles_new) == per_reference(old, roles_old)  # type: ignore[arg-type]

    # The replay of the old topics and of the copies: the same refunds and cancellations.
    def from_kafka(s: Settings) -> list[KafkaRecord]:
        names = {s.payment_topic: Settings().payment_topic, s.ledger_topic: Settings().ledger_topic}
        return [r._replace(topic=names[r.topic]) for r in read_topics(s, [s.payment_topic, s.ledger_topic])]

    before, after = refunds(from_kafka(old_settings)), refunds(from_kafka(new_settings))
    assert len(before) > 300 and Counter(t for t, *_ in before)["refund.cancel_requested"] > 0
    assert after == before

    # Again into the same topics: refused, they are not empty.
    again = _copy(bootstrap, old_topics, new_topics, 4)
    assert again.returncode == 1 and "is not empty" in again.stderr, again.stderr


@pytest.mark.kafka
def test_a_record_not_written_with_its_time_stops_the_copy_with_a_non_zero_status() -> None:
    """A target created beforehand with LogAppendTime: the broker stamps the copies with the time
    of the copy, which the clock guard would see; every send's answer is checked."""
    from kafka.admin import NewTopic

    from stream.topics import admin_client

    bootstrap = require_broker()
    old_topics = Topics(fresh_prefix("tcopy"), partitions=2)
    old_topics.create(bootstrap)
    new_topics = Topics(fresh_prefix("tcopy"), partitions=3)
    _produce(bootstrap, outage_day(0.2, seed=3), old_topics)
    admin = admin_client(Settings(bootstrap=bootstrap))
    try:
        admin.create_topics(
            [NewTopic(new_topics.payment, 3, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})]
        )
    finally:
        admin.close()
    done = _copy(bootstrap, old_topics, new_topics, 3)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "copy stopped" in done.stderr and "LogAppendTime" in done.stderr and "delete them" in done.stderr
    assert "copied" not in done.stdout
