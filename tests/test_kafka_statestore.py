"""Kafka tier: the worker's own state store on the real broker. A half batch written to the
changelog by hand (what a SIGKILL between the messages of one batch leaves) is not restored, by
the store alone or by a worker whose disk was wiped, which then decides exactly what replay does.
A local table whose changelog tail lost a deletion to the broker's log cleaner is rebuilt, by
the store alone and by a worker back on its old disk, which then makes no wrong refund; so is a
table from before its changelog topic was deleted and created again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stream.drivers.replayfile import KafkaRecord
from stream.security import aiokafka_config
from stream.settings import Settings
from stream.simulate.partitioner import partition_for
from stream.topics import ensure_state_changelog
from stream.worker.statestore import (
    BATCH_HEADER,
    KafkaChangelog,
    PartitionStore,
    RocksPartition,
    changelog_topic_name,
    commit_key,
    identity_key,
)
from tests.kafka_support import Worker, consume, fresh_prefix, fresh_topics, produce, require_broker
from tests.records import ledger, payment
from tests.scenario import LEDGER, PAYMENT, scenario_records
from tests.test_kafka_worker import canon, expected_outputs, live_by_role

pytestmark = pytest.mark.kafka


async def write_half_batch(bootstrap: str, topic: str, partition: int, messages: list[tuple[bytes, bytes]]) -> None:
    """Messages of a batch numbered far ahead, without the commit marker."""
    producer = AIOKafkaProducer(**aiokafka_config(Settings(bootstrap=bootstrap)))
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key, partition=partition, headers=[(BATCH_HEADER, b"1000000")])
    finally:
        await producer.stop()


def test_the_store_on_kafka_ignores_a_half_batch_and_rewrites_its_keys(tmp_path: Path) -> None:
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    ensure_state_changelog(settings, 2)
    topic = changelog_topic_name(settings.app_id)

    async def scenario() -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes], int]:
        writer = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "a")
        await writer.restore(1)
        writer.put(1, b"1/r/A", b"a1")
        writer.put(1, b"1/r/B", b"b1")
        writer.put(1, b"1/m", b"m1")
        await writer.commit()
        writer.put(1, b"1/r/B", None)
        writer.put(1, b"1/m", b"m2")
        await writer.commit()
        committed = dict(writer.load(1))
        writer.close()
        await writer.changelog.close()  # type: ignore[attr-defined]
        await write_half_batch(bootstrap, topic, 1, [(b"1/r/A", b"half"), (b"1/r/C", b"half"), (b"1/m", b"x")])
        # A wiped disk: the whole changelog partition; the half batch is dropped and rewritten.
        fresh = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "b")
        await fresh.restore(1)
        from_changelog = dict(fresh.load(1))
        dropped = fresh.counts["dropped_half_batch_messages"]
        fresh.put(1, b"1/r/D", b"d1")
        await fresh.commit()
        fresh.close()
        await fresh.changelog.close()  # type: ignore[attr-defined]
        # The first writer's disk kept: only the tail (the half batch, its rewrite, one batch).
        back = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "a")
        await back.restore(1)
        from_local = dict(back.load(1))
        assert await back.is_current(1)
        back.close()
        await back.changelog.close()  # type: ignore[attr-defined]
        return committed, from_changelog, from_local, dropped

    committed, from_changelog, from_local, dropped = asyncio.run(scenario())
    assert committed == {b"1/r/A": b"a1", b"1/m": b"m2"}
    assert from_changelog == committed and dropped == 3
    assert from_local == {**committed, b"1/r/D": b"d1"}
    assert commit_key(1) not in from_local


def test_a_worker_restored_from_a_changelog_with_a_half_batch_decides_what_replay_decides(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    records = scenario_records(topics.partitions)
    tmap = {PAYMENT: topics.payment, LEDGER: topics.ledger}
    half = len(records) // 2
    worker = Worker(topics, tmp_path / "w")
    worker.start(bootstrap)
    try:
        produce(bootstrap, records[:half], tmap)
        worker.wait_processed(half)
        time.sleep(4)  # an offset commit
    finally:
        worker.stop()
    # A crash in the middle of a batch, by hand: every partition's metadata and a reference
    # overwritten with bytes no engine can restore, without the commit marker.
    topic = changelog_topic_name(worker.app_id)
    for p in range(topics.partitions):
        garbage = [(b"%d/r/QR-HALF" % p, b"not state"), (b"%d/m" % p, b"not metadata")]
        asyncio.run(write_half_batch(bootstrap, topic, p, garbage))
    worker2 = Worker(topics, tmp_path / "w2", app_id=worker.app_id)  # a new disk
    worker2.start(bootstrap)
    try:
        produce(bootstrap, records[half:], tmap)
        want = expected_outputs(bootstrap, topics)
        n = sum(len(v) for v in want.values())
        got = live_by_role(consume(bootstrap, topics.outputs(), until=n, timeout_s=120, worker=worker2), topics)
        worker2.wait_processed(len(records) - half)
    finally:
        worker2.stop()
    log_text = worker2.log_tail(10_000)
    assert log_text.count("without its commit dropped") == topics.partitions, log_text[-3000:]
    for role in want:
        assert sorted(set(canon(got[role]))) == sorted(set(canon(want[role]))), f"{role}:\n{worker2.log_tail()}"


def test_a_batch_longer_than_one_record_batch_is_committed_whole_at_its_last_offset(tmp_path: Path) -> None:
    # The changelog sends a partition's batch as Kafka record batches of at most 512 KiB: 1,500
    # values of 1 KiB take three; the marker's offset (the last) is where the local DB stands.
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    ensure_state_changelog(settings, 2)
    topic = changelog_topic_name(settings.app_id)
    values = {b"0/r/R%04d" % i: bytes([65 + i % 26]) * 1024 for i in range(1500)}

    async def scenario() -> tuple[dict[bytes, bytes], int, int, bool, dict[bytes, bytes], int, list[int], int]:
        writer = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "a")
        await writer.restore(0)
        for key, value in values.items():
            writer.put(0, key, value)
        writer.put(0, b"0/m", b"m1")
        await writer.commit()
        writer.put(0, b"0/r/R0001", None)
        await writer.commit()
        applied = writer.locals[0].position()[0]
        end = await writer.changelog.end_offset(0)
        current = await writer.is_current(0)
        local = dict(writer.load(0))
        identity_at = writer.locals[0].identity_offset()
        assert writer.counts["foreign_writes"] == 0  # offsets as expected across record batches
        identity_offsets = [m.offset async for m in writer.changelog.read(0, 0, end) if m.key == identity_key(0)]
        writer.close()
        await writer.changelog.close()  # type: ignore[attr-defined]
        fresh = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "b")
        await fresh.restore(0)
        restored = dict(fresh.load(0))
        fresh.put(0, b"0/r/R0002", None)  # a tail for the first DB
        await fresh.commit()
        fresh.close()
        await fresh.changelog.close()  # type: ignore[attr-defined]
        assert restored == local
        # Back on the first disk: the identity record is where its DB says, so only the tail.
        back = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path / "a")
        await back.restore(0)
        rebuilds = back.counts["stale_rebuilds"]
        assert b"0/r/R0002" not in dict(back.load(0)) and back.counts["restored_messages"] == 2
        back.close()
        await back.changelog.close()  # type: ignore[attr-defined]
        assert identity_at is not None
        return local, applied, end, current, restored, identity_at, identity_offsets, rebuilds

    local, applied, end, current, restored, identity_at, identity_offsets, rebuilds = asyncio.run(scenario())
    expected = {**values, b"0/m": b"m1"}
    del expected[b"0/r/R0001"]
    assert local == expected and restored == expected
    # 1,501 messages, the changelog partition's identity record and a marker, then a tombstone
    # and a marker: the DB stands at the last.
    assert (applied, end, current) == (1504, 1505, True)
    # The identity record, in the third record batch, is at the offset the DB keeps for it.
    assert identity_offsets == [identity_at] == [1501] and rebuilds == 0


def test_a_local_table_the_broker_compacted_deletions_away_from_is_rebuilt(tmp_path: Path) -> None:
    # The changelog keeps a deletion 0 ms after cleaning it (delete.retention.ms=0): the broker's
    # log cleaner removes a tombstone within seconds, as Kafka's default does after 24 hours.
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    topic = changelog_topic_name(settings.app_id)
    quick = {"delete.retention.ms": "0", "min.cleanable.dirty.ratio": "0.0001", "segment.ms": "100"}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact", **quick})])
    finally:
        admin.close()
    config = aiokafka_config(Settings(bootstrap=bootstrap))

    async def keys_on_the_changelog(changelog: KafkaChangelog) -> set[bytes]:
        return {m.key async for m in changelog.read(0, 0, await changelog.end_offset(0))}

    async def scenario() -> tuple[int | None, float, dict[bytes, bytes], int]:
        first = PartitionStore(KafkaChangelog(config, topic), tmp_path / "a")
        await first.restore(0)
        for key in (b"0/r/A", b"0/r/B"):
            first.put(0, key, b"open")
        await first.commit()
        first.close()
        await first.changelog.close()  # type: ignore[attr-defined]
        # The partition moves to another worker, which drops A and goes on writing.
        other_log = KafkaChangelog(config, topic)
        retention = await other_log.tombstone_retention_ms()
        other = PartitionStore(other_log, None)
        await other.restore(0)
        other.put(0, b"0/r/A", None)
        await other.commit()
        started = time.monotonic()
        while b"0/r/A" in await keys_on_the_changelog(other_log):  # A's value and its tombstone
            assert time.monotonic() - started < 120, "the log cleaner did not remove the tombstone"
            other.put(0, b"0/m", b"%d" % time.monotonic_ns())  # segments roll only when written to
            await other.commit()
            await asyncio.sleep(0.5)
        waited = time.monotonic() - started
        other.close()
        await other_log.close()
        # The partition comes back to the first worker, disk kept: the tail after its offset has
        # no trace of A's deletion, so the table is rebuilt from the changelog instead.
        back = PartitionStore(KafkaChangelog(config, topic), tmp_path / "a")
        await back.restore(0)
        state = dict(back.load(0))
        rebuilds = back.counts["stale_rebuilds"]
        back.close()
        await back.changelog.close()  # type: ignore[attr-defined]
        return retention, waited, state, rebuilds

    retention, waited, state, rebuilds = asyncio.run(scenario())
    assert retention == 0, "the store reads the changelog's delete.retention.ms from the broker"
    assert b"0/r/A" not in state and state[b"0/r/B"] == b"open", (waited, state)
    assert rebuilds == 1


def test_a_local_table_from_before_the_changelog_topic_was_recreated_is_rebuilt(tmp_path: Path) -> None:
    # A reset: the changelog topic is deleted and created again while a worker's disk keeps a
    # table, and another worker writes the new topic past the table's offset before the
    # partition comes back to the first: the new topic's tail must not be laid over the old table.
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    topic = changelog_topic_name(settings.app_id)
    ensure_state_changelog(settings, 1)
    config = aiokafka_config(Settings(bootstrap=bootstrap))

    def recreate() -> None:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics([topic])
            started = time.monotonic()
            while True:  # deleted, then created again once the broker lets it
                assert time.monotonic() - started < 60, "the changelog topic was not recreated"
                if topic not in set(admin.list_topics()):
                    try:
                        ensure_state_changelog(settings, 1)
                        return
                    except Exception:  # noqa: BLE001 - still being deleted: try again
                        pass
                time.sleep(0.5)
        finally:
            admin.close()

    async def scenario() -> tuple[int, int, dict[bytes, bytes], dict[bytes, bytes], int]:
        first = PartitionStore(KafkaChangelog(config, topic), tmp_path / "a")
        await first.restore(0)
        first.put(0, b"0/r/OLD", b"waiting")
        first.put(0, b"0/m", b"old")
        await first.commit()
        old_offset = first.locals[0].position()[0]
        first.close()
        await first.changelog.close()  # type: ignore[attr-defined]
        await asyncio.to_thread(recreate)
        other = PartitionStore(KafkaChangelog(config, topic), None)
        await other.restore(0)
        for i in range(4):
            other.put(0, b"0/r/NEW%d" % i, b"n")
            other.put(0, b"0/m", b"new%d" % i)
            await other.commit()
        end = await other.changelog.end_offset(0)
        other.close()
        await other.changelog.close()  # type: ignore[attr-defined]
        back = PartitionStore(KafkaChangelog(config, topic), tmp_path / "a")
        await back.restore(0)
        state, rebuilds = dict(back.load(0)), back.counts["stale_rebuilds"]
        back.close()
        await back.changelog.close()  # type: ignore[attr-defined]
        fresh = PartitionStore(KafkaChangelog(config, topic), None)
        await fresh.restore(0)
        want = dict(fresh.load(0))
        fresh.close()
        await fresh.changelog.close()  # type: ignore[attr-defined]
        return old_offset, end, state, want, rebuilds

    old_offset, end, state, want, rebuilds = asyncio.run(scenario())
    assert end > old_offset + 1, "the new topic grew past the old table's offset"
    assert state == want == {**{b"0/r/NEW%d" % i: b"n" for i in range(4)}, b"0/m": b"new3"}
    assert rebuilds == 1


@pytest.mark.parametrize("generations", [(None, None), (1, 2)], ids=["unstamped", "generations"])
def test_two_owners_of_a_partition_on_kafka_see_each_others_writes_and_their_dbs_do_not_skip_them(
    tmp_path: Path, generations: tuple[int | None, int | None]
) -> None:
    # A zombie (a worker still writing after its partition moved) and the new owner, both on the
    # real changelog: each notices the other's messages at its next batch, and each DB restored
    # again holds the changelog's state (before, it stood at its own marker and skipped them).
    # With the consumer-group generations on the messages (the worker's), the owner writes the
    # zombie's keys over with its own values, and the zombie stops writing.
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    ensure_state_changelog(settings, 1)
    topic = changelog_topic_name(settings.app_id)
    config = aiokafka_config(Settings(bootstrap=bootstrap))

    async def store(d: str, generation: int | None = None) -> PartitionStore:
        s = PartitionStore(KafkaChangelog(config, topic), tmp_path / d)
        s.generation = lambda: generation
        await s.restore(0)
        return s

    async def put(s: PartitionStore, key: bytes, value: bytes) -> None:
        s.put(0, key, value)
        await s.commit()

    async def done(s: PartitionStore) -> None:
        s.close()
        await s.changelog.close()  # type: ignore[attr-defined]

    async def scenario() -> tuple[list[int], list[dict[bytes, bytes]], dict[bytes, bytes]]:
        zombie = await store("z", generations[0])
        await put(zombie, b"0/r/A", b"a1")
        owner = await store("o", generations[1])
        await put(zombie, b"0/r/A", b"a-stale")  # after the owner's restore, before its first write
        await put(owner, b"0/r/B", b"b1")
        await put(zombie, b"0/r/C", b"c-zombie")  # after the owner's first write
        await put(owner, b"0/r/D", b"d1")
        counts = [zombie.counts["foreign_writes"], owner.counts["foreign_writes"]]
        counts += [owner.counts["older_owner_rewrites"], zombie.counts["superseded_batches"]]
        await done(zombie)
        await done(owner)
        states = []
        for d in ("z", "o"):
            again = await store(d)
            states.append(dict(again.load(0)))
            await done(again)
        fresh = PartitionStore(KafkaChangelog(config, topic), None)
        await fresh.restore(0)
        want = dict(fresh.load(0))
        await done(fresh)
        return counts, states, want

    counts, states, want = asyncio.run(scenario())
    assert states == [want, want]
    if generations == (None, None):
        # Both notice, neither knows which is the older: the zombie's stale A is what a restore reads.
        assert counts == [1, 1, 0, 0]
        assert want == {b"0/r/A": b"a-stale", b"0/r/B": b"b1", b"0/r/C": b"c-zombie", b"0/r/D": b"d1"}
    else:
        # The owner writes A back over the zombie's at its first write; the zombie sees the later
        # generation before its C and does not write it.
        assert counts == [0, 1, 1, 1]
        assert want == {b"0/r/A": b"a1", b"0/r/B": b"b1", b"0/r/D": b"d1"}


def test_a_worker_back_on_its_old_disk_after_the_broker_compacted_a_deletion_does_not_refund_a_settled_payment(
    tmp_path: Path,
) -> None:
    # Worker 1 sees payment P debited (its deadline pending) and stops. Worker 2, on another
    # disk, sees P settled in time, moves on until retention drops P (a tombstone on the
    # changelog), and the broker's cleaner removes that tombstone (delete.retention.ms=0, as
    # Kafka's default does a day later). Worker 1 comes back on its old disk. Read from its
    # tail, its table would bring P back as it was, debited with a deadline long past: a
    # SETTLEMENT_TIMEOUT refund for a settled payment. Decisions must equal replay's.
    bootstrap = require_broker()
    topics = fresh_topics(partitions=2)
    topics.create(bootstrap)
    # (Holds of at most 4 min: T + H under R, as the worker requires.)
    settings = Settings(retention_s=600, max_hold_s=240)
    env = {"QRIS_RETENTION_S": "600", "QRIS_MAX_HOLD_S": "240"}
    app_id = fresh_prefix("qris-test-", 8)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        quick = {"delete.retention.ms": "0", "min.cleanable.dirty.ratio": "0.0001", "segment.ms": "100"}
        configs = {"cleanup.policy": "compact", **quick}
        admin.create_topics([NewTopic(changelog_topic_name(app_id), topics.partitions, 1, topic_configs=configs)])
    finally:
        admin.close()
    tmap = {PAYMENT: topics.payment, LEDGER: topics.ledger}
    offsets: dict[tuple[str, int], int] = {}

    def rec(topic: str, key: str, value: bytes) -> KafkaRecord:
        p = partition_for(key.encode(), topics.partitions)
        n = offsets.get((topic, p), 0)
        offsets[(topic, p)] = n + 1
        return KafkaRecord(topic, p, n, None, key.encode(), value)

    def tails(t: float, tag: str) -> list[KafkaRecord]:
        """A harmless reference on every partition at event time t: both streams move past t."""
        out, seen, k = [], set(), 0
        while len(seen) < topics.partitions:
            ref = f"T{tag}{k}"
            k += 1
            if partition_for(ref.encode(), topics.partitions) in seen:
                continue
            seen.add(partition_for(ref.encode(), topics.partitions))
            out += [
                rec(PAYMENT, ref, payment(f"{ref}-p", "requested", ref, t)),
                rec(LEDGER, ref, ledger(f"{ref}-l", "reversed", ref, t, amount=1)),
            ]
        return out

    ref = "QRSTALE1"
    p_ref = partition_for(ref.encode(), topics.partitions)
    first = [
        rec(PAYMENT, ref, payment(f"{ref}-q", "requested", ref, 0)),
        rec(LEDGER, ref, ledger(f"{ref}-d", "debited", ref, 1)),
    ]
    first += tails(10, "a")
    second = [rec(PAYMENT, ref, payment(f"{ref}-s", "settled", ref, 100))] + tails(2000, "b")
    worker1 = Worker(topics, tmp_path / "w1", extra_env=env, app_id=app_id)
    worker1.start(bootstrap)
    try:
        produce(bootstrap, first, tmap)
        worker1.wait_processed(len(first))
    finally:
        worker1.stop()
    # Stopped (SIGTERM), the worker flushed its DBs: they hold P and the offset they stand at.
    db = RocksPartition(tmp_path / "w1" / app_id / "state" / f"p{p_ref}")
    kept = dict(db.items())
    db.close()
    assert db.position()[0] >= 0 and b"%d/r/%s" % (p_ref, ref.encode()) in kept
    worker2 = Worker(topics, tmp_path / "w2", extra_env=env, app_id=app_id)
    worker2.start(bootstrap)
    produced = len(second)
    try:
        produce(bootstrap, second, tmap)
        worker2.wait_processed(len(second))
        changelog = KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), changelog_topic_name(app_id))
        key = b"%d/r/%s" % (p_ref, ref.encode())

        async def on_changelog() -> bool:
            try:
                return key in {m.key async for m in changelog.read(p_ref, 0, await changelog.end_offset(p_ref))}
            finally:
                await changelog.close()

        assert asyncio.run(on_changelog()), "P was never saved"
        started, k = time.monotonic(), 0
        while asyncio.run(on_changelog()):  # P's state and its tombstone, both gone
            assert time.monotonic() - started < 120, "the log cleaner did not remove P's tombstone"
            more = tails(2000 + k, f"c{k}")  # the worker writes on: segments roll, the cleaner runs
            produce(bootstrap, more, tmap)
            produced += len(more)
            k += 1
            time.sleep(0.5)
        worker2.wait_processed(produced)
    finally:
        worker2.stop()
    worker3 = Worker(topics, tmp_path / "w1", extra_env=env, app_id=app_id)  # worker 1's disk again
    worker3.start(bootstrap)
    try:
        last = tails(3000, "d")
        produce(bootstrap, last, tmap)
        worker3.wait_processed(len(last))
        want = expected_outputs(bootstrap, topics, settings)
        n = sum(len(v) for v in want.values())
        # (3 s more after the n-th, to see an extra: a wrong refund comes with the first batch)
        got = live_by_role(consume(bootstrap, topics.outputs(), until=n, timeout_s=60, worker=worker3), topics)
    finally:
        worker3.stop()
    assert not [r for r in want["refunds"] if r.get("reference") == ref]  # replay: P settled in time
    log_text = worker3.log_tail(10_000)
    for role in want:
        assert sorted(set(canon(got[role]))) == sorted(set(canon(want[role]))), f"{role}:\n{log_text[-3000:]}"
    assert "rebuilt from the changelog" in log_text, log_text[-3000:]


def test_the_worker_stop_closes_the_changelogs_three_clients_on_the_broker(tmp_path: Path) -> None:
    # Its producer and its restore reader (started together by a batch) and its check reader
    # (end offsets), each connected to the real broker, then the stop path of the worker's app.
    from stream.worker.app import close_changelog

    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("qris-test-", 8))
    ensure_state_changelog(settings, 1)
    topic = changelog_topic_name(settings.app_id)

    async def scenario() -> list[tuple[bool, bool]]:
        store = PartitionStore(KafkaChangelog(aiokafka_config(Settings(bootstrap=bootstrap)), topic), tmp_path)
        await store.restore(0)
        store.put(0, b"0/r/R0001", b"v")
        await store.commit()
        changelog = store.changelog
        assert isinstance(changelog, KafkaChangelog)
        assert await changelog.end_offsets([0]) == {0: 3}  # the identity record, the value, the marker
        clients = [changelog._producer, changelog._consumer, changelog._checker]
        before = [c._closed for c in clients]
        store.close()
        await close_changelog(changelog)
        return list(zip(before, [c._closed for c in clients], strict=True))

    assert asyncio.run(scenario()) == [(False, True)] * 3
