"""Kafka tier: the live-only wall-clock rule (silent feeds) and the dump tool."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from kafka import KafkaProducer
from stream.core.partition import Params
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord, read_records
from tests.kafka_support import ROOT, Worker, consume, fresh_topics, produce, require_broker
from tests.records import T0, ledger, payment
from tests.scenario import LEDGER, PAYMENT, scenario_records

pytestmark = pytest.mark.kafka


def test_a_silent_payment_feed_still_lets_refund_timeouts_fire_and_raises_feed_silent(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    worker = Worker(topics, tmp_path / "w", extra_env={"QRIS_IDLE_TIMEOUT_S": "3"})
    worker.start(bootstrap)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        # Both feeds flow for a while; then the payment feed stops (the outage) while the
        # ledger keeps debiting customers in real time.
        for i in range(5):
            ref = f"OK{i}"
            producer.send(topics.payment, key=ref.encode(), value=payment(f"{ref}-q", "requested", ref, i))
            producer.send(topics.ledger, key=ref.encode(), value=ledger(f"{ref}-d", "debited", ref, i))
            producer.send(topics.payment, key=ref.encode(), value=payment(f"{ref}-s", "settled", ref, i + 1))
        producer.send(topics.ledger, key=b"LOST", value=ledger("LOST-d", "debited", "LOST", 10))
        producer.flush()
        # Only the ledger flows now, every second, in event time up to 10 minutes later.
        for k in range(12):
            ref = f"L{k}"
            producer.send(topics.ledger, key=ref.encode(), value=ledger(f"{ref}-d", "debited", ref, 60 + 50 * k))
            producer.flush()
            time.sleep(1)
        got = consume(bootstrap, topics.outputs(), until=2, timeout_s=30, settle_s=2, worker=worker)
    finally:
        producer.close()
        worker.stop()
    values = [v for _t, _k, v in got]
    silent = [v for v in values if v.get("kind") == "FEED_SILENT"]
    assert len(silent) == 1, values
    assert silent[0]["topic"] == topics.payment
    refunds = {v["reference"]: v for v in values if v.get("type") == "refund.requested"}
    assert "LOST" in refunds and refunds["LOST"]["reason"] == "SETTLEMENT_TIMEOUT"
    assert not any(r.startswith("OK") for r in refunds)


class _FrozenLedger:
    """A worker on fresh one-partition topics that pages a stalled clock after 4 s, fed payments
    whose event time moves and ledger records all dated 1 s (a core-banking clock stuck)."""

    def __init__(self, tmp_path: Path) -> None:
        self.bootstrap = require_broker()
        self.topics = fresh_topics(partitions=1)
        self.topics.create(self.bootstrap)
        env = {"QRIS_STALL_ALERT_S": "4", "QRIS_IDLE_TIMEOUT_S": "4"}  # (the idle check runs every second)
        self.worker = Worker(self.topics, tmp_path / "w", extra_env=env)
        self.worker.start(self.bootstrap)
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        self.k = 0

    def stalled(self) -> list[dict]:
        got = consume(self.bootstrap, [self.topics.alerts], until=0, timeout_s=1, settle_s=0, worker=self.worker)
        return [v for _t, _k, v in got if v.get("kind") == "EVENT_TIME_STALLED"]

    def until_paged(self) -> list[dict]:
        found: list[dict] = []
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            self.k += 1
            ref = f"F{self.k}"
            self.producer.send(
                self.topics.payment, key=ref.encode(), value=payment(f"{ref}-q", "requested", ref, self.k)
            )
            self.producer.send(self.topics.ledger, key=ref.encode(), value=ledger(f"{ref}-d", "debited", ref, 1))
            self.producer.flush()
            found = self.stalled()
        return found

    def clock_back(self) -> None:
        self.producer.send(self.topics.ledger, key=b"B", value=ledger("B-d", "debited", "B", self.k + 60))
        self.producer.flush()

    def until_resolved(self, timeout_s: float) -> list[dict]:
        found = self.stalled()
        deadline = time.monotonic() + timeout_s
        while len(found) < 2 and time.monotonic() < deadline:
            found = self.stalled()
        return found

    def close(self) -> None:
        self.producer.close()
        self.worker.stop()


def test_a_frozen_ledger_clock_raises_event_time_stalled_and_its_recovery(tmp_path: Path) -> None:
    # Both feeds flow, but every ledger record is dated the same second (a core-banking clock
    # stuck): the partition's watermark stands still while its records arrive, so nothing of it
    # is decided. After QRIS_STALL_ALERT_S of wall time payment operations get one alert on the
    # alerts topic naming the ledger topic; when the ledger's clock moves again, its resolution.
    run = _FrozenLedger(tmp_path)
    ledger_topic = run.topics.ledger
    try:
        found = run.until_paged()
        assert len(found) == 1, found
        opened = found[0]
        assert opened["status"] == "opened" and opened["topic"] == ledger_topic and opened["partitions"] == [0]
        assert opened["severity"] == "critical" and opened["dedup_key"] == f"EVENT_TIME_STALLED:{ledger_topic}"
        assert opened["observed"]["stood_at_ms"] == T0 + 1000 and opened["observed"]["wall_s"] >= 4
        run.clock_back()
        found = run.until_resolved(30)
    finally:
        run.close()
    assert [a["status"] for a in found] == ["opened", "resolved"], found
    assert found[1]["dedup_key"] == opened["dedup_key"] and found[1]["severity"] == "info"


def test_a_page_for_a_frozen_clock_is_resolved_after_a_kill_and_a_wiped_disk_when_the_clock_came_back_meanwhile(
    tmp_path: Path,
) -> None:
    # Episodes lived in the worker's memory: a worker killed while the clock stood, whose clock
    # came back while it was down, never resolved its page. The page is now kept with the
    # partition's state (its changelog: here the disk is wiped before the restart).
    run = _FrozenLedger(tmp_path)
    try:
        found = run.until_paged()
        assert [a["status"] for a in found] == ["opened"], found
        time.sleep(3)  # its next commit (the idle check's) saves the page with the state
        run.worker.kill()
        run.clock_back()  # while no worker runs; and the disk is lost
        shutil.rmtree(run.worker.data_dir)
        run.worker.start(run.bootstrap)
        found = run.until_resolved(90)
    finally:
        run.close()
    assert [a["status"] for a in found] == ["opened", "resolved"], found
    assert found[1]["dedup_key"] == found[0]["dedup_key"] and found[1]["partitions"] == [0]
    assert "moved to another worker" not in found[1]["summary"]


def test_dump_ends_after_a_transaction_marker_and_keeps_a_key_that_is_not_utf8(tmp_path: Path) -> None:
    # A partition whose last offset is a transaction marker (a transactional producer's commit):
    # the marker takes an offset but is never handed out, and the read must still end. A key that
    # is not UTF-8, as text with U+FFFD, could equal the reference: it is kept as bytes.
    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    bad_key = b"QRX\xff"
    plain = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    ts = 1_743_213_600_000
    plain.send(topics.ledger, key=bad_key, value=ledger("X-d", "debited", "QRX\ufffd", 0), partition=0, timestamp_ms=ts)
    plain.flush(30)
    plain.close()
    txn = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topics.ledger}-txn")
    txn.init_transactions()
    txn.begin_transaction()
    txn.send(topics.ledger, key=b"QRY", value=ledger("Y-d", "debited", "QRY", 1), partition=0, timestamp_ms=ts + 1000)
    txn.flush(30)
    txn.commit_transaction()
    txn.close()
    out = tmp_path / "dump.jsonl"
    cmd = [sys.executable, "-m", "stream", "dump", "--bootstrap", bootstrap, "--topics", topics.ledger]
    subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, check=True, timeout=60)
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [x["offset"] for x in lines] == [0, 1]  # (the marker is offset 2)
    assert "key" not in lines[0] and lines[0]["key_b64"] == "UVJY/w==" and lines[1]["key"] == "QRY"
    assert [r.key for r in read_records(out.open("rb"))] == [bad_key, b"QRY"]


def test_dump_writes_the_contract_replay_file_and_replays_like_the_records(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    records = scenario_records(topics.partitions)
    produce(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
    out = tmp_path / "dump.jsonl"
    env_topics = ["--topics", topics.payment, topics.ledger]
    subprocess.run(
        [sys.executable, "-m", "stream", "dump", "--bootstrap", bootstrap, *env_topics, "--out", str(out)],
        cwd=ROOT,
        check=True,
    )
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == len(records)
    assert set(lines[0]) >= {"topic", "partition", "offset", "timestamp_ms", "key"}
    assert all(("value" in x) != ("value_b64" in x) for x in lines)
    # Per partition the dump keeps the offset order and the exact bytes.
    by_tp: dict[tuple[str, int], list[bytes | None]] = {}
    for rec in read_records(out.open("rb")):
        by_tp.setdefault((rec.topic, rec.partition), []).append(rec.value)
    for rec in records:
        topic = topics.payment if rec.topic == PAYMENT else topics.ledger
        assert rec.value in by_tp[(topic, rec.partition)]
    sent = {}
    for rec in records:
        sent.setdefault((topics.payment if rec.topic == PAYMENT else topics.ledger, rec.partition), []).append(
            rec.value
        )
    assert by_tp == sent
    # Replaying the dump decides the same as replaying the records themselves.
    params = Params(payment_topic=topics.payment, ledger_topic=topics.ledger)

    def refunds(recs: object) -> list[bytes]:
        return sorted(
            orjson.dumps(d.value, option=orjson.OPT_SORT_KEYS)
            for _p, d in replay(recs, params)  # type: ignore[arg-type]
            if d.role == "refunds"
        )

    renamed = [
        KafkaRecord(
            topics.payment if r.topic == PAYMENT else topics.ledger, r.partition, r.offset, None, r.key, r.value
        )
        for r in records
    ]
    from_dump = refunds(read_records(out.open("rb")))
    assert len(from_dump) == 50
    assert from_dump == refunds(renamed)
    # A time range selects by Kafka record time: nothing before the epoch start of the test.
    out2 = tmp_path / "later.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "dump",
            "--bootstrap",
            bootstrap,
            *env_topics,
            "--out",
            str(out2),
            "--from",
            str(int(time.time() * 1000) + 3_600_000),
        ],
        cwd=ROOT,
        check=True,
    )
    assert out2.read_bytes() == b""
    assert T0 > 0
