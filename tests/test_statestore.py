"""The worker's own state store without a broker: a changelog kept in memory (with Kafka's offsets
and a compaction), local state in memory or in RocksDB. A batch is restored whole or not at all,
local state plus the changelog tail equals the changelog alone, and a deleted key stays deleted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stream.worker import statestore
from stream.worker.statestore import (
    APPLIED_OFFSET_KEY,
    BATCH_SEQ_KEY,
    CURRENT_AT_KEY,
    IDENTITY_OFFSET_KEY,
    PIECE_BYTES,
    ChangelogBatch,
    ChangelogMessage,
    MemoryPartition,
    PartitionStore,
    RestoreBuffer,
    RocksPartition,
    commit_key,
    identity_key,
)

P = 2


class MemoryChangelog:
    """A changelog topic in memory: offsets per partition as Kafka gives them, and a compaction."""

    def __init__(self, tombstone_retention_ms: int | None = 86_400_000) -> None:
        self.log: dict[int, list[ChangelogMessage]] = {}
        self.next_offset: dict[int, int] = {}
        self.read_messages = 0
        self.retention_ms = tombstone_retention_ms

    def append(
        self,
        partition: int,
        key: bytes,
        value: bytes | None,
        seq: int | None,
        commit: bool,
        generation: int | None = None,
    ) -> int:
        offset = self.next_offset.get(partition, 0)
        self.next_offset[partition] = offset + 1
        self.log.setdefault(partition, []).append(ChangelogMessage(offset, key, value, seq, commit, generation))
        return offset

    async def send_batch(self, batches: Mapping[int, ChangelogBatch]) -> dict[int, int]:
        out = {}
        for p, (changes, seq, generation) in batches.items():
            for key, value in changes:
                self.append(p, key, value, seq, False, generation)
            out[p] = self.append(p, commit_key(p), b"%d" % seq, seq, True, generation)
        return out

    async def end_offset(self, partition: int) -> int:
        return self.next_offset.get(partition, 0)

    async def tombstone_retention_ms(self) -> int | None:
        return self.retention_ms

    async def read(self, partition: int, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
        for msg in list(self.log.get(partition, [])):
            if start <= msg.offset < end:
                self.read_messages += 1
                yield msg

    async def read_range(self, partition: int, start: int, end: int) -> list[ChangelogMessage]:
        return [msg async for msg in self.read(partition, start, end)]

    async def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        return {p: self.next_offset.get(p, 0) for p in partitions}

    def compact(self, partition: int, *, tombstones_expired: bool = False) -> None:
        """Kafka's log cleaner over the whole partition: the last message of every key stays,
        but not a tombstone whose `delete.retention.ms` has passed (`tombstones_expired`)."""
        last = {m.key: m.offset for m in self.log.get(partition, [])}
        self.log[partition] = [
            m
            for m in self.log.get(partition, [])
            if last[m.key] == m.offset and not (tombstones_expired and m.value is None)
        ]


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def restored(changelog: MemoryChangelog, local_dir: Path | None = None, partition: int = P) -> dict[bytes, bytes]:
    store = PartitionStore(changelog, local_dir)
    run(store.restore(partition))
    try:
        return dict(store.load(partition))
    finally:
        store.close()


def state_of(local: RocksPartition) -> dict[bytes, bytes]:
    """A local DB's state as `PartitionStore.load` gives it (without the identity record)."""
    return {k: v for k, v in local.items() if k != identity_key(P)}


def write(store: PartitionStore, changes: dict[bytes, bytes | None], partition: int = P) -> None:
    for key, value in changes.items():
        store.put(partition, key, value)
    run(store.commit())


def test_a_committed_batch_is_restored_from_the_changelog_alone() -> None:
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, None)
    run(store.restore(P))
    write(store, {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m1"})
    write(store, {b"2/r/A": b"a2", b"2/m": b"m2"})
    assert dict(store.load(P)) == {b"2/r/A": b"a2", b"2/r/B": b"b1", b"2/m": b"m2"}
    assert restored(changelog) == dict(store.load(P))
    # Every message of a batch carries its number; the batch ends with its commit marker.
    msgs = changelog.log[P]
    assert [(m.key, m.seq, m.commit) for m in msgs[-3:]] == [
        (b"2/r/A", 2, False),
        (b"2/m", 2, False),
        (commit_key(P), 2, True),
    ]


def test_a_half_written_batch_on_the_changelog_is_not_restored_and_never_committed_later() -> None:
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, None)
    run(store.restore(P))
    write(store, {b"2/r/A": b"a1", b"2/m": b"m1"})
    committed = dict(store.load(P))
    # A crash between the messages of batch 2: its references reached the changelog, its
    # metadata and commit marker did not.
    changelog.append(P, b"2/r/A", b"a-half", 2, False)
    changelog.append(P, b"2/r/NEW", b"n-half", 2, False)
    # The worker that restores it does not apply it, and rewrites the half batch's keys (A's value, NEW's tombstone)
    # with a commit of its own, numbered past the half batch ...
    taker = PartitionStore(changelog, None)
    run(taker.restore(P))
    assert dict(taker.load(P)) == committed
    assert taker.counts["dropped_half_batch_messages"] == 2
    rewrite = changelog.log[P][-3:]
    assert [(m.key, m.value, m.seq, m.commit) for m in rewrite] == [
        (b"2/r/A", b"a1", 3, False),
        (b"2/r/NEW", None, 3, False),
        (commit_key(P), b"3", 3, True),
    ]
    # ... so its later batches (whose markers commit everything before them) never commit it,
    # before or after compaction.
    write(taker, {b"2/r/B": b"b1", b"2/m": b"m2"})
    want = {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m2"}
    assert dict(taker.load(P)) == want
    assert restored(changelog) == want
    changelog.compact(P)
    assert restored(changelog) == want


def test_a_deleted_key_is_gone_after_restore_also_after_compaction(tmp_path: Path) -> None:
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, tmp_path / "w1")
    run(store.restore(P))
    write(store, {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m1"})
    write(store, {b"2/r/A": None, b"2/m": b"m2"})
    assert dict(store.load(P)) == {b"2/r/B": b"b1", b"2/m": b"m2"}
    store.close()
    assert restored(changelog) == {b"2/r/B": b"b1", b"2/m": b"m2"}
    assert restored(changelog, tmp_path / "w1") == {b"2/r/B": b"b1", b"2/m": b"m2"}
    changelog.compact(P)  # the tombstone stays until delete.retention.ms; the old value is gone
    assert restored(changelog) == {b"2/r/B": b"b1", b"2/m": b"m2"}


def test_local_state_plus_the_changelog_tail_equals_the_changelog_alone(tmp_path: Path) -> None:
    rng = random.Random(9)
    changelog = MemoryChangelog()
    first = PartitionStore(changelog, tmp_path / "w1")
    run(first.restore(P))
    keys = [b"2/r/%d" % i for i in range(30)] + [b"2/m"]

    def random_batches(store: PartitionStore, n: int) -> None:
        for _ in range(n):
            write(store, {k: rng.choice([None, b"v%d" % rng.randrange(1000)]) for k in rng.sample(keys, 6)})

    random_batches(first, 40)
    first.close()  # the worker stops; another takes the partition and writes on
    second = PartitionStore(changelog, tmp_path / "w2")
    run(second.restore(P))
    random_batches(second, 25)
    changelog.append(P, b"2/r/1", b"half", 999, False)  # and crashes in a batch
    want = restored(changelog)
    # The first worker's disk was kept: it reads only what came after its last commit.
    back = PartitionStore(changelog, tmp_path / "w1")
    changelog.read_messages = 0
    run(back.restore(P))
    assert dict(back.load(P)) == want
    assert 25 * 3 <= changelog.read_messages < 25 * 8 + 2  # the tail, not the 40 batches before it
    back.close()
    changelog.compact(P)
    assert restored(changelog) == want
    assert restored(changelog, tmp_path / "w1") == want


HOUR_MS = 3_600_000


START_S = 1_800_000_000.0


def moved_away_and_back(
    tmp_path: Path, changelog: MemoryChangelog, away_h: float, *, tombstones_expired: bool = True
) -> PartitionStore:
    """A worker writes A, B and C, lets the partition go; another worker drops A and writes D,
    compaction runs (with A's tombstone expired, unless told), and `away_h` hours after its last
    batch (its clock) the first worker gets the partition back with its disk kept (returned,
    not yet restored)."""
    start = START_S
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: start
    run(first.restore(P))
    write(first, {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/r/C": b"c1"})
    first.close()
    other = PartitionStore(changelog, None)
    run(other.restore(P))
    write(other, {b"2/r/A": None, b"2/r/D": b"d1"})
    other.close()
    changelog.compact(P, tombstones_expired=tombstones_expired)
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: start + away_h * 3600
    return back


def test_a_local_table_older_than_the_changelog_keeps_deletions_is_rebuilt_from_the_changelog(tmp_path: Path) -> None:
    # Kafka's default delete.retention.ms (24 h): 13 hours away is more than half of it.
    changelog = MemoryChangelog(tombstone_retention_ms=24 * HOUR_MS)
    back = moved_away_and_back(tmp_path, changelog, away_h=13)
    run(back.restore(P))
    # The dropped reference stays dropped (the tail alone would bring A back: its tombstone is gone).
    assert dict(back.load(P)) == {b"2/r/B": b"b1", b"2/r/C": b"c1", b"2/r/D": b"d1"}
    assert back.counts["stale_rebuilds"] == 1
    assert asyncio.run(back.is_current(P))
    back.close()


def test_a_local_table_younger_than_half_the_tombstones_life_reads_only_the_tail(tmp_path: Path) -> None:
    # 11 hours: A's tombstone is still there (Kafka keeps it 24 hours at least).
    changelog = MemoryChangelog(tombstone_retention_ms=24 * HOUR_MS)
    back = moved_away_and_back(tmp_path, changelog, away_h=11, tombstones_expired=False)
    changelog.read_messages = 0
    run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 0
    # The identity record (`_same_changelog`), then A's tombstone, D and the marker: not the
    # whole partition.
    assert changelog.read_messages == 4
    assert dict(back.load(P)) == {b"2/r/B": b"b1", b"2/r/C": b"c1", b"2/r/D": b"d1"}
    back.close()


def test_a_local_tables_time_is_when_it_was_last_whole_and_a_future_one_is_unknown(tmp_path: Path) -> None:
    now = [START_S]

    class Slow(MemoryChangelog):
        async def send_batch(self, batches: Mapping[int, ChangelogBatch]) -> dict[int, int]:
            now[0] += 3600  # an hour passes while the batch is sent
            return await super().send_batch(batches)

        async def end_offset(self, partition: int) -> int:
            now[0] += 60  # and a minute while the restore asks for the end
            return await super().end_offset(partition)

    changelog = Slow(tombstone_retention_ms=24 * HOUR_MS)
    store = PartitionStore(changelog, tmp_path / "w1")
    store.clock = lambda: now[0]
    run(store.restore(P))
    assert store.locals[P].current_at_ms() == START_S * 1000  # read to the end asked for then
    write(store, {b"2/r/A": b"a1"})
    assert store.locals[P].current_at_ms() == (START_S + 60) * 1000  # before the send, not after
    # Kept through a rebalance, nobody wrote: whole as of the question, a quiet partition too.
    now[0] += 5 * 3600
    assert asyncio.run(store.is_current(P))
    assert store.locals[P].current_at_ms() == (START_S + 60 + 3600 + 5 * 3600) * 1000
    store.close()
    # A time an hour ahead of this host's clock: unknown, rebuilt (after another worker wrote).
    other = PartitionStore(changelog, None)
    run(other.restore(P))
    write(other, {b"2/r/B": b"b1"})
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: now[0] - 2 * 3600
    run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 1 and dict(back.load(P)) == {b"2/r/A": b"a1", b"2/r/B": b"b1"}
    back.close()


def test_a_tail_read_past_its_time_is_rebuilt_and_a_tail_restore_killed_part_way_keeps_its_old_time(
    tmp_path: Path,
) -> None:
    now = [START_S]
    changelog = MemoryChangelog(tombstone_retention_ms=24 * HOUR_MS)
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: now[0]
    run(first.restore(P))
    write(first, {b"2/r/A": b"a1"})
    first.close()
    other = PartitionStore(changelog, None)
    run(other.restore(P))
    write(other, {b"2/r/%d" % i: b"v" for i in range(10_000)})  # a restore applies every 10,000 keys
    write(other, {b"2/r/A": None})
    other.close()

    class Dies(MemoryChangelog):
        async def read(self, partition: int, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
            async for msg in changelog.read(partition, start, end):
                if msg.offset > 10_003:  # past the other worker's first marker
                    raise ConnectionError("killed")
                yield msg

        async def end_offset(self, partition: int) -> int:
            return await changelog.end_offset(partition)

        async def tombstone_retention_ms(self) -> int | None:
            return 24 * HOUR_MS

    # 11 hours later a restore reads the tail (10,000 keys applied) and is killed ...
    now[0] += 11 * 3600
    dying = PartitionStore(Dies(), tmp_path / "w1")
    dying.clock = lambda: now[0]
    with contextlib.suppress(ConnectionError):
        run(dying.restore(P))
    assert dying.counts["stale_rebuilds"] == 0 and dying.locals[P].position()[0] == 10_003
    dying.close()
    # ... and 2 hours after that the DB is 13 hours old, not 2: rebuilt.
    now[0] += 2 * 3600
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: now[0]
    run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 1 and b"2/r/A" not in dict(back.load(P))
    back.close()

    # A tail whose reading ends past three quarters of delete.retention.ms: read again from the start.
    class Slow(MemoryChangelog):
        async def read(self, partition: int, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
            async for msg in changelog.read(partition, start, end):
                now[0] += 10  # 10 s a message: 10,000 messages take 28 hours
                yield msg

        async def end_offset(self, partition: int) -> int:
            return await changelog.end_offset(partition)

        async def tombstone_retention_ms(self) -> int | None:
            return 24 * HOUR_MS

    table = PartitionStore(changelog, tmp_path / "w2")
    table.clock = lambda: now[0]
    run(table.restore(P))
    table.close()
    again = PartitionStore(changelog, None)
    run(again.restore(P))
    write(again, {b"2/r/%d" % i: b"w" for i in range(10_000)})
    write(again, {b"2/r/0": None})
    again.close()
    slow = PartitionStore(Slow(), tmp_path / "w2")
    slow.clock = lambda: now[0]
    run(slow.restore(P))
    assert slow.counts["stale_rebuilds"] == 1
    assert dict(slow.load(P)) == restored(changelog) and b"2/r/0" not in dict(slow.load(P))
    slow.close()


def test_delete_retention_is_asked_once_for_many_partitions_and_kept_when_the_broker_does_not_answer(
    tmp_path: Path,
) -> None:
    asked: list[int] = []
    answer: list[Any] = [24 * HOUR_MS]

    class Counting(MemoryChangelog):
        async def tombstone_retention_ms(self) -> int | None:
            asked.append(1)
            if isinstance(answer[0], Exception):
                raise answer[0]
            return int(answer[0])

    changelog = Counting()
    now = [START_S]
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: now[0]
    for p in range(4):
        run(first.restore(p))
        write(first, {b"%d/r/A" % p: b"a"}, partition=p)
    first.close()
    other = PartitionStore(changelog, None)
    for p in range(4):
        run(other.restore(p))
        write(other, {b"%d/r/B" % p: b"b"}, partition=p)
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: now[0]
    for p in range(4):
        run(back.restore(p))
    assert len(asked) == 1 and back.counts["stale_rebuilds"] == 0
    back.close()
    # Ten minutes later the broker does not answer: the value it gave last is used.
    now[0] += 600
    answer[0] = ConnectionError("no DescribeConfigs")
    for p in range(4):
        write(other, {b"%d/r/C" % p: b"c"}, partition=p)
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: now[0]
    back._retention = (int((now[0] - 600) * 1000), 24 * HOUR_MS)  # what the last store was told
    for p in range(4):
        run(back.restore(p))
    assert len(asked) == 2 and back.counts["stale_rebuilds"] == 0
    assert dict(back.load(3)) == {b"3/r/A": b"a", b"3/r/B": b"b", b"3/r/C": b"c"}
    back.close()


def test_a_local_table_that_cannot_be_emptied_is_not_rebuilt_over(tmp_path: Path, monkeypatch: Any) -> None:
    changelog = MemoryChangelog(tombstone_retention_ms=None)
    back = moved_away_and_back(tmp_path, changelog, away_h=0)
    monkeypatch.setattr(shutil, "rmtree", lambda path: None)  # the directory stays as it was
    try:
        run(back.restore(P))
        raise AssertionError("restored over the old keys")
    except RuntimeError as exc:
        assert "not emptied" in str(exc)
    back.close()


def test_a_local_table_of_unknown_age_or_unknown_retention_is_rebuilt(tmp_path: Path) -> None:
    want = {b"2/r/B": b"b1", b"2/r/C": b"c1", b"2/r/D": b"d1"}
    # The changelog's delete.retention.ms cannot be told (no DescribeConfigs, a broker error).
    back = moved_away_and_back(tmp_path / "none", MemoryChangelog(tombstone_retention_ms=None), away_h=0)
    run(back.restore(P))
    assert dict(back.load(P)) == want and back.counts["stale_rebuilds"] == 1
    back.close()

    class Failing(MemoryChangelog):
        async def tombstone_retention_ms(self) -> int | None:
            raise ConnectionError("broker gone")

    back = moved_away_and_back(tmp_path / "fails", Failing(), away_h=0)
    run(back.restore(P))
    assert dict(back.load(P)) == want and back.counts["stale_rebuilds"] == 1
    back.close()
    # A DB written before the time was kept (an older version): its age is unknown.
    changelog = MemoryChangelog()
    back = moved_away_and_back(tmp_path / "old", changelog, away_h=0)
    back.close()
    db = RocksPartition(tmp_path / "old" / "w1" / f"p{P}")
    db.db.delete(CURRENT_AT_KEY)
    db.close()
    back = PartitionStore(changelog, tmp_path / "old" / "w1")
    run(back.restore(P))
    assert dict(back.load(P)) == want and back.counts["stale_rebuilds"] == 1
    back.close()


def test_an_old_local_table_nobody_wrote_after_is_read_as_it_is(tmp_path: Path) -> None:
    # A worker stopped for a week, its partition untouched: its table is the whole changelog.
    changelog = MemoryChangelog(tombstone_retention_ms=24 * HOUR_MS)
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: 1_800_000_000.0
    run(first.restore(P))
    write(first, {b"2/r/A": b"a1", b"2/r/B": b"b1"})
    write(first, {b"2/r/A": None})
    first.close()
    changelog.compact(P, tombstones_expired=True)
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: 1_800_000_000.0 + 7 * 24 * 3600
    changelog.read_messages = 0
    run(back.restore(P))
    assert dict(back.load(P)) == {b"2/r/B": b"b1"}
    # Only the identity record (the changelog is still the DB's), no tail.
    assert changelog.read_messages == 1 and back.counts["stale_rebuilds"] == 0
    back.close()


def test_a_restore_from_the_start_killed_part_way_starts_again_from_the_start(tmp_path: Path) -> None:
    changelog = MemoryChangelog(tombstone_retention_ms=24 * HOUR_MS)
    writer = PartitionStore(changelog, None)
    run(writer.restore(P))
    write(writer, {b"2/r/%d" % i: b"v" for i in range(10_000)})  # a restore applies every 10,000 keys
    write(writer, {b"2/r/0": None, b"2/r/X": b"x"})
    end = asyncio.run(changelog.end_offset(P))

    class Dies(MemoryChangelog):
        async def read(self, partition: int, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
            async for msg in changelog.read(partition, start, end):
                if msg.offset > 10_001:  # past the first batch's marker (after its identity record)
                    raise ConnectionError("killed")
                yield msg

        async def end_offset(self, partition: int) -> int:
            return end

    dying = PartitionStore(Dies(), tmp_path / "w1")
    dying.clock = lambda: 1_800_000_000.0
    with contextlib.suppress(ConnectionError):
        run(dying.restore(P))
    dying.close()
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: 1_800_000_000.0 + 60
    changelog.read_messages = 0
    run(back.restore(P))
    # The DB killed part way has no time: read again from the start (after its identity record,
    # which it has: the first batch was applied).
    assert back.locals[P].identity_offset() == 10_000
    assert changelog.read_messages == 1 + end and back.counts["stale_rebuilds"] == 1
    assert b"2/r/0" not in dict(back.load(P)) and dict(back.load(P))[b"2/r/X"] == b"x"
    back.close()


def test_a_partition_kept_through_a_rebalance_is_current_until_another_worker_writes() -> None:
    changelog = MemoryChangelog()
    mine = PartitionStore(changelog, None)
    run(mine.restore(P))
    write(mine, {b"2/r/A": b"a1"})
    assert asyncio.run(mine.is_current(P))
    other = PartitionStore(changelog, None)
    run(other.restore(P))
    write(other, {b"2/r/A": b"a2"})
    assert not asyncio.run(mine.is_current(P))
    mine.release(P)
    run(mine.restore(P))  # re-assigned: the tail is read again
    assert dict(mine.load(P)) == {b"2/r/A": b"a2"}


def test_a_batch_of_several_partitions_is_committed_per_partition() -> None:
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, None)
    for p in (0, 1):
        run(store.restore(p))
    store.put(0, b"0/r/A", b"x")
    store.put(1, b"1/r/B", b"y")
    run(store.commit())
    assert restored(changelog, partition=0) == {b"0/r/A": b"x"}
    assert restored(changelog, partition=1) == {b"1/r/B": b"y"}
    # The change, the changelog partition's identity record (its first batch), the marker.
    assert [(m.key, m.commit) for m in changelog.log[0]] == [(b"0/r/A", False), (b"0/e", False), (b"0/c", True)]


def test_local_partitions_apply_a_batch_and_its_position_together(tmp_path: Path) -> None:
    for local in (MemoryPartition(), RocksPartition(tmp_path / "p0")):
        assert local.position() == (-1, 0)
        local.apply([(b"0/r/A", b"1"), (b"0/r/B", b"2"), (b"0/r/A", None)], 7, 3)
        assert sorted(local.items()) == [(b"0/r/B", b"2")]  # positions are not state
        assert local.position() == (7, 3) and local.get(b"0/r/B") == b"2" and local.get(b"0/r/A") is None
        local.close()
    again = RocksPartition(tmp_path / "p0")
    assert again.position() == (7, 3) and list(again.items()) == [(b"0/r/B", b"2")]
    again.close()


def test_a_local_db_written_with_the_skip_list_memtable_opens_with_the_vector_one_and_back(tmp_path: Path) -> None:
    """The worker's DBs use the vector memtable (`rocks_options`); a data directory written by
    an earlier version (RocksDB's default skip list) opens with its state and position, and the
    position kept in memory is the one the DB has after a reopen, also for a later write
    (overwrites of one key in one memtable: the last wins)."""
    from rocksdict import Options, Rdict, WriteBatch

    old = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    wb = WriteBatch(raw_mode=True)
    for key, value in ((b"0/r/A", b"1"), (APPLIED_OFFSET_KEY, b"41"), (BATCH_SEQ_KEY, b"5")):
        wb.put(key, value)
    old.write(wb)
    old.close()
    local = RocksPartition(tmp_path / "p0")
    assert local.position() == (41, 5) and list(local.items()) == [(b"0/r/A", b"1")]
    local.apply([(b"0/r/A", b"2"), (b"0/r/B", b"3"), (b"0/r/A", b"4")], 44, 6)
    local.apply([(b"0/r/B", None)], 45, 7)
    assert local.position() == (45, 7) and list(local.items()) == [(b"0/r/A", b"4")]
    assert local.get(b"0/r/A") == b"4" and local.get(b"0/r/B") is None
    local.close()
    again = RocksPartition(tmp_path / "p0")
    assert again.position() == (45, 7) and list(again.items()) == [(b"0/r/A", b"4")]
    again.close()
    back = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))  # and an older version again
    assert back.get(b"0/r/A") == b"4" and back.get(APPLIED_OFFSET_KEY) == b"45"
    back.close()


def test_a_point_read_of_a_local_db_flushes_its_memtable_first(tmp_path: Path) -> None:
    """A read from the vector memtable sorts every unflushed write (128 ms a read with 50,000 of
    them): `get` (a restore's half-batch keys, read one by one) reads from a flushed DB."""
    local = RocksPartition(tmp_path / "p0")
    unflushed = "rocksdb.num-entries-active-mem-table"
    local.apply([(b"0/r/A", b"1"), (b"0/r/B", b"2")], 3, 1)
    assert local.db.property_int_value(unflushed) == 4  # two references, offset and batch number
    assert local.get(b"0/r/A") == b"1" and local.db.property_int_value(unflushed) == 0
    assert local.get(b"0/r/B") == b"2" and local.get(b"0/r/C") is None and local.position() == (3, 1)
    local.close()


def test_a_local_db_lost_with_its_process_comes_back_at_a_flushed_batch_and_the_tail_restores_the_rest(
    tmp_path: Path,
) -> None:
    """The local DB is written without RocksDB's log: a process that dies (no `close`) loses the
    batches since the memtable's last flush, never part of one, and the DB's changelog offset is
    that of the last batch it kept, so the restore reads the rest from the changelog."""
    script = f"""
import asyncio, os, pickle, sys
sys.path[:0] = {sys.path!r}
from tests.test_statestore import MemoryChangelog, write
from stream.worker.statestore import PartitionStore
changelog = MemoryChangelog()
store = PartitionStore(changelog, __import__("pathlib").Path({str(tmp_path / "db")!r}))
asyncio.run(store.restore({P}))
for i in range(30):
    write(store, {{b"{P}/r/%d" % (i % 7): b"v%d" % i, b"{P}/r/gone": None if i % 2 else b"x", b"{P}/m": b"m%d" % i}})
    if i == 11:
        store.locals[{P}].db.flush()  # what RocksDB does when a memtable fills
with open({str(tmp_path / "changelog.pickle")!r}, "wb") as f:
    pickle.dump((changelog.log, changelog.next_offset), f)
os._exit(9)  # killed: no close, no flush
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    changelog = MemoryChangelog()
    with open(tmp_path / "changelog.pickle", "rb") as f:
        changelog.log, changelog.next_offset = pickle.load(f)
    local = RocksPartition(tmp_path / "db" / f"p{P}")
    offset, seq = local.position()
    assert seq == 12 and changelog.log[P][offset].commit and changelog.log[P][offset].seq == 12
    assert state_of(local) == restored(_cut(changelog, offset + 1))  # batch 12 whole, none after
    local.close()
    want = restored(changelog)
    back = PartitionStore(changelog, tmp_path / "db")
    changelog.read_messages = 0
    run(back.restore(P))
    assert dict(back.load(P)) == want and want
    # The identity record, then the tail after the DB's offset.
    assert changelog.read_messages == 1 + changelog.next_offset[P] - offset - 1
    back.close()


def test_a_local_db_flushed_in_the_background_comes_back_near_its_last_batch_after_a_kill(tmp_path: Path) -> None:
    """A RocksDB flush asked every `flush_every_s` (here every write): a killed process's DB
    comes back at its last batch, with that batch's time, not at its last memtable flush."""
    script = f"""
import asyncio, os, pickle, sys, time
sys.path[:0] = {sys.path!r}
from tests.test_statestore import MemoryChangelog, write
from stream.worker.statestore import PartitionStore
changelog = MemoryChangelog()
store = PartitionStore(changelog, __import__("pathlib").Path({str(tmp_path / "db")!r}), flush_every_s=0.0)
store.clock = lambda: 1_800_000_000.0
asyncio.run(store.restore({P}))
for i in range(30):
    write(store, {{b"{P}/r/%d" % (i % 7): b"v%d" % i, b"{P}/m": b"m%d" % i}})
time.sleep(1)  # the last background flush
with open({str(tmp_path / "changelog.pickle")!r}, "wb") as f:
    pickle.dump((changelog.log, changelog.next_offset), f)
os._exit(9)  # killed: no close
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    changelog = MemoryChangelog()
    with open(tmp_path / "changelog.pickle", "rb") as f:
        changelog.log, changelog.next_offset = pickle.load(f)
    local = RocksPartition(tmp_path / "db" / f"p{P}")
    assert local.position() == (changelog.next_offset[P] - 1, 30)
    assert local.current_at_ms() == 1_800_000_000_000
    assert state_of(local) == restored(changelog)
    local.close()


def _cut(changelog: MemoryChangelog, end: int) -> MemoryChangelog:
    cut = MemoryChangelog()
    cut.log = {p: [m for m in msgs if m.offset < end] for p, msgs in changelog.log.items()}
    cut.next_offset = {p: min(n, end) for p, n in changelog.next_offset.items()}
    return cut


def test_a_commit_marker_commits_everything_before_it() -> None:
    # Compaction can remove a batch's own marker (a later marker has the same key): the next
    # marker commits it.
    b = RestoreBuffer(0)
    assert b.add(ChangelogMessage(0, b"0/r/A", b"1", 1, False)) is None
    assert b.add(ChangelogMessage(3, b"0/r/B", b"2", 2, False)) is None
    assert b.add(ChangelogMessage(5, commit_key(0), b"2", 2, True)) == [(b"0/r/A", b"1"), (b"0/r/B", b"2")]
    assert b.committed_offset == 5 and b.pending_keys() == []


class ShellOverStore:
    """The live shell over the real store and the in-memory changelog (partition 0)."""

    def __init__(self, changelog: MemoryChangelog, offsets: dict[str, int] | None = None) -> None:
        from stream.settings import Settings
        from stream.worker.shell import ReconcileShell

        self.settings = Settings(partitions=1, idle_timeout_s=3600, max_hold_s=0)
        self.store = PartitionStore(changelog, None)
        self.sent: list[bytes] = []
        self.offsets = offsets or {self.settings.payment_topic: 0, self.settings.ledger_topic: 0}

        async def send(topic: str, key: bytes | None, value: bytes) -> None:
            self.sent.append(value)

        async def nothing() -> None:
            return None

        self.shell = ReconcileShell(
            self.settings, self.store, send, nothing, self.store.commit, restore=self.store.restore
        )

    def batch(self, records: list[tuple[str, bytes]]) -> None:
        import orjson

        from stream.drivers.replayfile import KafkaRecord

        plain = []
        for role, value in records:
            topic = self.settings.payment_topic if role == "P" else self.settings.ledger_topic
            key = orjson.loads(value)["reference"].encode()
            plain.append(KafkaRecord(topic, 0, self.offsets[topic], None, key, value))
            self.offsets[topic] += 1
        run(self.shell.process_records(plain))


def test_a_shell_restored_from_the_changelog_decides_as_one_that_never_stopped() -> None:
    from tests.test_worker_shell import tick, unsettled

    batches = [unsettled("QR1", 0), unsettled("QR2", 30), tick(200), unsettled("QR3", 250), tick(500), tick(900)]
    alone = ShellOverStore(MemoryChangelog())
    for b in batches:
        alone.batch(b)
    assert len(alone.sent) >= 3  # refunds of QR1..QR3 at least
    for cut in range(1, len(batches)):
        changelog = MemoryChangelog()
        first = ShellOverStore(changelog)
        for b in batches[:cut]:
            first.batch(b)
        # A crash in the next batch: half of it on the changelog, no commit marker.
        changelog.append(0, b"0/m", b"not metadata", 99, False)
        second = ShellOverStore(changelog, dict(first.offsets))  # a new worker, no local state
        for b in batches[cut:]:
            second.batch(b)
        assert second.store.counts["dropped_half_batch_messages"] == 1
        assert first.sent + second.sent == alone.sent, cut


def test_a_rebalance_keeps_the_engines_of_partitions_that_stayed_unless_their_changelog_grew() -> None:
    from stream.worker.app import drop_moved_partitions
    from tests.test_worker_shell import unsettled

    changelog = MemoryChangelog()
    mine = ShellOverStore(changelog)
    mine.batch(unsettled("QR1", 0))
    engine = mine.shell.engines[0]
    assert run_value(drop_moved_partitions(mine.shell, mine.store, {0})) == []
    assert mine.shell.engines[0] is engine  # kept: nothing restored
    other = ShellOverStore(changelog, dict(mine.offsets))  # owned it meanwhile, wrote a batch
    other.batch(unsettled("QR2", 10))
    assert run_value(drop_moved_partitions(mine.shell, mine.store, {0})) == [0]
    mine.offsets = dict(other.offsets)
    mine.batch(unsettled("QR3", 20))  # restored with the tail: QR2's records are there
    alone = ShellOverStore(MemoryChangelog())
    for ref, t in (("QR1", 0), ("QR2", 10), ("QR3", 20)):
        alone.batch(unsettled(ref, t))
    got, want = mine.shell.engines[0], alone.shell.engines[0]
    assert (sorted(got.heap), got.last_offset) == (sorted(want.heap), want.last_offset)
    assert len(got.heap) == 6
    assert run_value(drop_moved_partitions(mine.shell, mine.store, set())) == [0]  # moved away
    assert mine.shell.engines == {} and mine.store.locals == {}


def run_value(coro: Any) -> Any:
    return asyncio.run(coro)


def old_table_and_recreated_changelog(local_dir: Path, batches: list[dict[bytes, bytes | None]]) -> MemoryChangelog:
    """A worker's disk keeps partition P's table at offset 4 (A, B, m, the identity record, the
    marker); the changelog topic is deleted and created again (a reset), and another worker
    writes `batches` to it."""
    first = PartitionStore(MemoryChangelog(), local_dir)
    run(first.restore(P))
    write(first, {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m1"})
    assert first.locals[P].position()[0] == 4
    first.close()
    recreated = MemoryChangelog()
    other = PartitionStore(recreated, None)
    run(other.restore(P))
    for batch in batches:
        write(other, batch)
    other.close()
    return recreated


def test_a_changelog_recreated_and_grown_past_a_local_tables_offset_is_not_read_as_its_tail(tmp_path: Path) -> None:
    # Read from the old table's offset, the new topic's tail would be laid over the old table: A
    # and B would come back.
    recreated = old_table_and_recreated_changelog(
        tmp_path / "w1", [{b"2/r/N%d" % i: b"n", b"2/m": b"m%d" % i} for i in range(5)]
    )
    assert recreated.next_offset[P] > 5  # past the old table's offset: a tail
    back = PartitionStore(recreated, tmp_path / "w1")
    run(back.restore(P))
    assert dict(back.load(P)) == restored(recreated) == {**{b"2/r/N%d" % i: b"n" for i in range(5)}, b"2/m": b"m4"}
    assert back.counts["stale_rebuilds"] == 1
    back.close()


def test_the_identity_record_is_written_once_survives_compaction_and_a_db_without_it_is_rebuilt(
    tmp_path: Path,
) -> None:
    changelog = MemoryChangelog()
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: START_S
    run(first.restore(P))
    for i in range(3):
        write(first, {b"2/r/A": b"a%d" % i})
    first.close()
    other = PartitionStore(changelog, None)
    run(other.restore(P))
    write(other, {b"2/r/B": b"b"})
    other.close()
    # One identity record, in the first batch (the other worker found it and wrote none).
    assert [m.offset for m in changelog.log[P] if m.key == identity_key(P)] == [1]
    changelog.compact(P, tombstones_expired=True)
    assert [m.offset for m in changelog.log[P] if m.key == identity_key(P)] == [1]
    # After compaction the table is still this changelog's: only its tail is read.
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: START_S
    changelog.read_messages = 0
    run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 0 and changelog.read_messages == 1 + 2  # identity, B, marker
    assert dict(back.load(P)) == {b"2/r/A": b"a2", b"2/r/B": b"b"}
    back.close()
    # A DB that does not know where the identity record is (an older version's) with a tail: rebuilt.
    local = RocksPartition(tmp_path / "w1" / f"p{P}")
    local.db.delete(IDENTITY_OFFSET_KEY)
    local.close()
    write_other = PartitionStore(changelog, None)
    run(write_other.restore(P))
    write(write_other, {b"2/r/C": b"c"})
    write_other.close()
    again = PartitionStore(changelog, tmp_path / "w1")
    again.clock = lambda: START_S
    run(again.restore(P))
    assert again.counts["stale_rebuilds"] == 1 and dict(again.load(P)) == restored(changelog)
    assert again.locals[P].identity_offset() == 1  # the rebuild found it
    again.close()


def test_an_identity_record_cut_off_in_a_half_batch_is_written_again_with_the_next_batch() -> None:
    changelog = MemoryChangelog()
    # A crash between the messages of the first batch: its change and identity record, no marker.
    changelog.append(P, b"2/r/A", b"a", 1, False)
    changelog.append(P, identity_key(P), b"lost", 1, False)
    store = PartitionStore(changelog, None)
    run(store.restore(P))
    assert P in store.identity_needed
    write(store, {b"2/r/B": b"b"})
    ids = [m for m in changelog.log[P] if m.key == identity_key(P)]
    # The half batch's record rewritten as a deletion (its key had no committed value), then a new one.
    assert [m.value for m in ids[:2]] == [b"lost", None] and ids[2].value not in (None, b"lost")
    assert store.locals[P].identity_offset() == ids[2].offset and P not in store.identity_needed
    assert restored(changelog) == {b"2/r/B": b"b"}


def test_a_changelog_recreated_to_end_exactly_where_a_local_table_does_is_not_read_as_it(tmp_path: Path) -> None:
    # No tail at all: the new topic ends where the old table stands (offset 4, end 5): N, the
    # identity record and the marker at 0-2, then m and the marker at 3-4.
    recreated = old_table_and_recreated_changelog(tmp_path / "w1", [{b"2/r/N": b"n"}, {b"2/m": b"new"}])
    assert recreated.next_offset[P] == 5
    back = PartitionStore(recreated, tmp_path / "w1")
    run(back.restore(P))
    assert dict(back.load(P)) == {b"2/r/N": b"n", b"2/m": b"new"} and back.counts["stale_rebuilds"] == 1
    assert P not in back.identity_needed  # the rebuild read the new topic's identity record
    back.close()


def test_a_db_whose_identity_record_a_second_owners_replaced_is_rebuilt_once_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two owners that both found no identity record each write one; compaction keeps the later.
    changelog = MemoryChangelog()
    first = PartitionStore(changelog, tmp_path / "w1")
    first.clock = lambda: START_S
    run(first.restore(P))
    second = PartitionStore(changelog, None)
    run(second.restore(P))
    write(first, {b"2/r/A": b"a"})
    write(second, {b"2/r/B": b"b"})
    assert [m.offset for m in changelog.log[P] if m.key == identity_key(P)] == [1, 4]
    first.close()
    second.close()
    changelog.compact(P)
    back = PartitionStore(changelog, tmp_path / "w1")
    back.clock = lambda: START_S
    with caplog.at_level(logging.WARNING, logger="qris_guard.worker"):
        run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 1 and dict(back.load(P)) == restored(changelog)
    assert back.locals[P].identity_offset() == 4
    (line,) = [r.getMessage() for r in caplog.records if "identity record" in r.getMessage()]
    assert "offset 1, which the changelog no longer has" in line and "second owner" in line
    back.close()
    again = PartitionStore(changelog, tmp_path / "w1")
    again.clock = lambda: START_S
    run(again.restore(P))
    assert again.counts["stale_rebuilds"] == 0  # once
    again.close()


def test_an_older_generations_writes_after_the_owners_restore_are_written_over_and_the_zombie_stops(
    tmp_path: Path,
) -> None:
    # A worker the group dropped (generation 1) finishes a batch after the partition's new owner
    # (generation 2) restored it: its stale values land after what the owner read. Before, the
    # owner only stopped its DB's offset; a restore then read the zombie's values as the last.
    changelog = MemoryChangelog()
    zombie = PartitionStore(changelog, tmp_path / "z")
    zombie.generation = lambda: 1
    run(zombie.restore(P))
    write(zombie, {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m1"})
    owner = PartitionStore(changelog, tmp_path / "o")
    owner.generation = lambda: 2
    run(owner.restore(P))
    write(zombie, {b"2/r/B": b"b-stale", b"2/r/C": b"c-zombie", b"2/m": b"m-stale"})  # lands: nothing new
    assert zombie.counts["foreign_writes"] == 0 and not zombie.superseded
    assert restored(changelog)[b"2/r/B"] == b"b-stale"  # what a restore would read now
    write(owner, {b"2/r/D": b"d2"})  # sees the older generation's messages: writes them over
    assert owner.counts["foreign_writes"] == 1 and owner.counts["older_owner_rewrites"] == 1
    assert P not in owner.behind and owner.locals[P].position()[0] == changelog.next_offset[P] - 1
    want = {b"2/r/A": b"a1", b"2/r/B": b"b1", b"2/m": b"m1", b"2/r/D": b"d2"}  # C: never the owner's
    assert dict(owner.load(P)) == want == restored(changelog)
    # The zombie's next batch: it sees the later generation first and writes nothing.
    end = changelog.next_offset[P]
    write(zombie, {b"2/r/E": b"e-zombie"})
    assert changelog.next_offset[P] == end and zombie.counts["superseded_batches"] == 1
    assert P in zombie.superseded and zombie.counts["foreign_writes"] == 0
    # The owner goes on as the whole changelog's: no more foreign writes, a tail restore is exact.
    write(owner, {b"2/r/F": b"f2"})
    assert owner.counts["foreign_writes"] == 1 and owner.locals[P].position()[0] == changelog.next_offset[P] - 1
    owner.close()
    changelog.compact(P)
    back = PartitionStore(changelog, tmp_path / "o")
    run(back.restore(P))
    assert back.counts["stale_rebuilds"] == 0
    assert dict(back.load(P)) == {**want, b"2/r/F": b"f2"} == restored(changelog)
    back.close()
    # The zombie's own disk, restored again (assigned anew): the changelog's state, not its own.
    zombie.release(P)
    run(zombie.restore(P))
    assert dict(zombie.load(P)) == {**want, b"2/r/F": b"f2"} and P not in zombie.superseded
    zombie.close()


def test_the_stamp_is_the_generation_a_partition_was_taken_in_not_the_groups_latest(tmp_path: Path) -> None:
    # A worker whose group moved on (generation 7) still writes a partition it took in
    # generation 5, before it lets it go: stamped 5, so the partition's owner of generation 6
    # does not take it for a later owner's writes.
    changelog = MemoryChangelog()
    current = [5]
    old = PartitionStore(changelog, tmp_path / "a")
    old.generation = lambda: current[0]
    run(old.restore(P))
    write(old, {b"2/r/A": b"a5"})
    owner = PartitionStore(changelog, tmp_path / "b")
    owner.generation = lambda: 6
    run(owner.restore(P))
    current[0] = 7  # the old worker rejoined; its assignment has not dropped the partition yet
    write(old, {b"2/r/A": b"a-late"})
    assert [m.generation for m in changelog.log[P]][-2:] == [5, 5]
    write(owner, {b"2/r/B": b"b6"})
    assert owner.counts["older_owner_rewrites"] == 1 and not owner.superseded
    assert restored(changelog) == {b"2/r/A": b"a5", b"2/r/B": b"b6"}
    # Kept through a rebalance (its DB still the whole changelog), a partition takes the new one.
    assert run_value(owner.is_current(P)) and owner.generations[P] == 6
    owner_gen = [6]
    owner.generation = lambda: owner_gen[0]
    owner_gen[0] = 8
    assert run_value(owner.is_current(P)) and owner.generations[P] == 8


def test_a_foreign_write_not_only_of_an_older_generation_is_not_written_over() -> None:
    # A batch of this store's own generation that landed but was not applied, beside an older
    # owner's: the DB lacks it, so its values are not the ones to write back. The DB stays.
    changelog = MemoryChangelog()
    owner = PartitionStore(changelog, None)
    owner.generation = lambda: 2
    run(owner.restore(P))
    write(owner, {b"2/r/A": b"a"})
    changelog.append(P, b"2/r/B", b"b-own-lost", 9, False, 2)
    changelog.append(P, commit_key(P), b"9", 9, True, 2)
    changelog.append(P, b"2/r/C", b"c-zombie", 4, False, 1)
    changelog.append(P, commit_key(P), b"4", 4, True, 1)
    at = owner.locals[P].position()[0]
    write(owner, {b"2/r/D": b"d"})
    assert owner.counts["older_owner_rewrites"] == 0 and P in owner.behind
    assert owner.locals[P].position()[0] == at
    # And a writer that does not stamp its generation (an older version) is not known to be older.
    legacy = MemoryChangelog()
    owner = PartitionStore(legacy, None)
    owner.generation = lambda: 2
    run(owner.restore(P))
    write(owner, {b"2/r/A": b"a"})
    legacy.append(P, b"2/r/C", b"c-legacy", 4, False)
    legacy.append(P, commit_key(P), b"4", 4, True)
    write(owner, {b"2/r/D": b"d"})
    assert owner.counts["older_owner_rewrites"] == 0 and P in owner.behind and not owner.superseded


def test_a_half_batch_holding_the_identity_record_rewrites_the_committed_one_and_the_db_follows_it() -> None:
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, None)
    run(store.restore(P))
    write(store, {b"2/r/A": b"a"})
    committed = [m for m in changelog.log[P] if m.key == identity_key(P)][0].value
    # A second owner's half batch: its own identity record, no marker.
    changelog.append(P, identity_key(P), b"other", 9, False)
    again = PartitionStore(changelog, None)
    run(again.restore(P))
    last = [m for m in changelog.log[P] if m.key == identity_key(P)][-1]
    assert last.value == committed and again.locals[P].identity_offset() == last.offset
    assert changelog.log[P][last.offset + 1].commit  # just before its marker
    assert P not in again.identity_needed
    assert restored(changelog) == {b"2/r/A": b"a"}


def test_a_db_does_not_stand_past_another_writers_messages_it_never_had(tmp_path: Path) -> None:
    # Two owners of one partition at once (a zombie still writing after the partition moved):
    # each batch's marker lands past the other's messages. Before, the DB took its marker's
    # offset and its next restore read nothing of the other's writes.
    changelog = MemoryChangelog()
    zombie = PartitionStore(changelog, tmp_path / "z")
    run(zombie.restore(P))
    write(zombie, {b"2/r/A": b"a1"})
    owner = PartitionStore(changelog, tmp_path / "o")
    run(owner.restore(P))
    write(owner, {b"2/r/B": b"b1"})
    write(zombie, {b"2/r/C": b"c-zombie"})  # after the owner's restore and batch
    assert zombie.counts["foreign_writes"] == 1 and owner.counts["foreign_writes"] == 0
    write(owner, {b"2/r/D": b"d1"})  # the owner's marker now lands past the zombie's batch
    assert owner.counts["foreign_writes"] == 1
    write(owner, {b"2/r/E": b"e1"})
    assert owner.counts["foreign_writes"] == 1  # counted once; the DB stays where it was
    owner_at = owner.locals[P].position()[0]
    assert changelog.log[P][owner_at].commit and owner_at < changelog.next_offset[P] - 1
    stamped = owner.locals[P].current_at_ms()
    owner.clock = lambda: START_S  # a later time than the stamp's (now)
    write(owner, {b"2/r/G": b"g1"})
    assert owner.locals[P].current_at_ms() == stamped  # nor its time: it is not the whole changelog
    assert not asyncio.run(owner.is_current(P))
    # The same store restoring the partition again reads what it missed, and is current after.
    owner.release(P)
    run(owner.restore(P))
    assert dict(owner.load(P)) == restored(changelog) and P not in owner.behind
    write(owner, {b"2/r/H": b"h1"})
    assert owner.counts["foreign_writes"] == 1 and owner.locals[P].position()[0] == changelog.next_offset[P] - 1
    zombie.close()
    owner.close()
    # Each DB restored again reads what it missed: the changelog's state, whatever it holds.
    for d in ("z", "o"):
        again = PartitionStore(changelog, tmp_path / d)
        run(again.restore(P))
        assert dict(again.load(P)) == restored(changelog), d
        write(again, {b"2/r/F": b"f"})
        assert again.counts["foreign_writes"] == 0 and again.locals[P].position()[0] == changelog.next_offset[P] - 1
        again.close()


def test_a_restore_whose_half_batch_rewrite_meets_a_later_owner_leaves_the_partition_to_it() -> None:
    # Between the restore's read and its rewrite of a half batch, the partition's owner of a
    # later generation writes: the rewrite is not sent, and the restore ends without an error.
    class Racy(MemoryChangelog):
        fired = False

        async def end_offsets(self, partitions: list[int]) -> dict[int, int]:
            if not self.fired:
                self.fired = True
                self.append(P, b"2/r/X", b"x9", 50, False, 9)
                self.append(P, commit_key(P), b"50", 50, True, 9)
            return await super().end_offsets(partitions)

    changelog = Racy()
    changelog.append(P, b"2/r/A", b"a", 1, False, 7)
    changelog.append(P, commit_key(P), b"1", 1, True, 7)
    changelog.append(P, b"2/r/B", b"half", 2, False, 7)  # no commit marker
    store = PartitionStore(changelog, None)
    store.generation = lambda: 8
    run(store.restore(P))
    assert P in store.superseded and dict(store.load(P)) == {b"2/r/A": b"a"}
    assert [m.key for m in changelog.log[P]][-2:] == [b"2/r/X", commit_key(P)]  # nothing of ours after


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_value_past_the_piece_size_is_written_in_pieces_and_read_whole_and_its_pieces_go_with_it(
    tmp_path: Path, on_disk: bool
) -> None:
    # A reference hammered with thousands of records waiting for the watermark makes an entry
    # past Kafka's 1 MiB: it goes as pieces no larger than PIECE_BYTES, in one batch, and comes
    # back whole from the DB, from the changelog alone, and from a half batch of its pieces.
    rng = random.Random(7)
    big = bytes(rng.getrandbits(8) for _ in range(PIECE_BYTES * 3 + 123))
    changelog = MemoryChangelog()
    store = PartitionStore(changelog, tmp_path / "a" if on_disk else None)
    run(store.restore(P))
    write(store, {b"2/r/A": big, b"2/r/B": b"b1", b"2/m": b"m1"})
    assert all(len(m.value or b"") <= PIECE_BYTES + 64 for m in changelog.log[P])
    assert len([m for m in changelog.log[P] if m.key.startswith(b"2/r/A")]) == 4
    assert dict(store.load(P)) == {b"2/r/A": big, b"2/r/B": b"b1", b"2/m": b"m1"}
    assert restored(changelog) == dict(store.load(P))
    # Smaller, then in pieces again, then deleted: no piece outlives its value.
    half = big[: PIECE_BYTES + 1]
    write(store, {b"2/r/A": half})
    assert dict(store.load(P))[b"2/r/A"] == half
    write(store, {b"2/r/A": b"a-small"})
    assert restored(changelog)[b"2/r/A"] == b"a-small"
    changelog.compact(P, tombstones_expired=True)
    assert [m.key for m in changelog.log[P] if m.key.startswith(b"2/r/A")] == [b"2/r/A"]
    write(store, {b"2/r/A": big})
    store.close()
    # A store that never loaded the partition (restored only) still knows the pieces it must delete.
    store = PartitionStore(changelog, tmp_path / "b" if on_disk else None)
    run(store.restore(P))
    write(store, {b"2/r/A": None})
    changelog.compact(P, tombstones_expired=True)
    assert not [m.key for m in changelog.log[P] if m.key.startswith(b"2/r/A")]
    assert restored(changelog) == {b"2/r/B": b"b1", b"2/m": b"m1"}
    store.close()
    # A half batch of pieces (a crash between them) is not restored, and its keys are rewritten.
    store = PartitionStore(changelog, None)
    run(store.restore(P))
    write(store, {b"2/r/C": big})
    store.close()
    head = next(i for i, m in enumerate(changelog.log[P]) if m.key == b"2/r/C" and m.value is not None)
    seq = changelog.log[P][head].seq
    changelog.append(P, b"2/r/A" + b"\x001", b"stale", seq + 1, False)
    changelog.append(P, b"2/r/C" + b"\x001", b"half", seq + 1, False)
    after = restored(changelog)
    assert after == {b"2/r/B": b"b1", b"2/m": b"m1", b"2/r/C": big}


@pytest.mark.parametrize("seed", range(40))
def test_two_writers_pieces_interleaved_any_way_and_committed_at_any_point_restore_as_some_writers_value(
    seed: int, monkeypatch: Any
) -> None:
    # A zombie and the owner (or a send that failed part way, then a later marker) can leave
    # any prefix of any interleaving of two batches committed by a marker after it. Pieces are
    # 8 bytes here. Every restore must give each key a value one of them wrote whole (or the
    # value before, or none after a deletion): never a head without its pieces, never a mix.
    monkeypatch.setattr(statestore, "PIECE_BYTES", 8)
    rng = random.Random(seed)
    keys = [b"2/r/A", b"2/r/B", b"2/r/C"]

    def value(tag: str) -> bytes | None:
        if rng.random() < 0.15:
            return None
        return (tag + "".join(rng.choice("xyz") for _ in range(rng.randint(0, 40)))).encode()

    changelog = MemoryChangelog()
    first = PartitionStore(changelog, None)
    run(first.restore(P))
    written: dict[bytes, set[bytes | None]] = {k: {None} for k in keys}
    before = {k: value("0") for k in keys}
    write(first, before)
    for k, v in before.items():
        written[k].add(v)
    second = PartitionStore(changelog, None)  # restored after the first wrote: knows its pieces
    run(second.restore(P))
    second.load(P)
    batches = []
    for store, tag in ((first, "a"), (second, "b")):
        new = {k: value(tag) for k in rng.sample(keys, rng.randint(1, 3))}
        for k, v in new.items():
            written[k].add(v)
        batches.append(store._pieced(P, list(new.items())))
    mixed: list[tuple[bytes, bytes | None]] = []
    a, b = list(batches[0]), list(batches[1])
    while a or b:
        mixed.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
    base = list(changelog.log[P])
    for cut in range(len(mixed) + 1):
        log = MemoryChangelog()
        log.log[P], log.next_offset[P] = list(base), len(base)
        for k, v in mixed[:cut]:
            log.append(P, k, v, 9, False)
        log.append(P, commit_key(P), b"9", 9, True)
        got = restored(log)
        for k in keys:
            assert got.get(k) in written[k], (cut, k, got.get(k))
        assert all(b"\x00" not in k for k in got)
        # Without the marker, the same prefix is a half batch: the restore writes its keys again
        # with their committed values, and any prefix of that rewrite committed by a later
        # marker restores as some writer's value too.
        half = MemoryChangelog()
        half.log[P], half.next_offset[P] = list(base), len(base)
        for k, v in mixed[:cut]:
            half.append(P, k, v, 9, False)
        at = half.next_offset[P]
        committed = restored(half)
        rewrite = [(m.key, m.value) for m in half.log[P][at:] if not m.commit]
        assert restored(half) == committed
        for rcut in range(len(rewrite) + 1):
            log = MemoryChangelog()
            log.log[P] = [m for m in half.log[P] if m.offset < at]
            log.next_offset[P] = at
            for k, v in rewrite[:rcut]:
                log.append(P, k, v, 10, False)
            log.append(P, commit_key(P), b"10", 10, True)
            got = restored(log)
            for k in keys:
                assert got.get(k) in written[k], (cut, rcut, k, got.get(k))


def test_a_partition_dbs_memtable_is_bounded_by_its_write_buffer(tmp_path: Path) -> None:
    # The worker rewrites every reference a batch changed: each partition's memtable fills to
    # its write buffer whatever the state's size, so that bound (QRIS_STATE_WRITE_BUFFER_MB) is
    # what a partition costs in memory.
    import os

    from rocksdict import WriteBatch

    from stream.worker.statestore import RocksPartition

    def active_after_9_mib(mib: int) -> int:
        rp = RocksPartition(tmp_path / f"p{mib}", write_buffer_bytes=mib * 1024 * 1024)
        value = os.urandom(900)
        for b in range(10):
            wb = WriteBatch(raw_mode=True)
            for i in range(1000):
                wb.put(b"%d/r/QR%d-%d" % (mib, b, i), value)
            rp.db.write(wb, rp.write_options)
        size = int(rp.db.property_int_value("rocksdb.cur-size-active-mem-table") or 0)
        rp.db.close()
        return size

    assert active_after_9_mib(1) < 2 * 1024 * 1024 < 8 * 1024 * 1024 < active_after_9_mib(64)


def test_a_changelog_client_still_starting_when_the_changelog_closes_is_closed_with_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stop closes the changelog while a batch's first send starts its producer and restore
    # reader and an idle check starts its check reader: all three end stopped, none left open.
    import aiokafka

    started = asyncio.Event()
    made: list[Any] = []

    class Client:
        def __init__(self, **config: Any) -> None:
            self.role, self.stopped = config["client_id"], False
            made.append(self)

        async def start(self) -> None:
            await started.wait()

        async def stop(self) -> None:
            self.stopped = True

        async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
            return {tp: 0 for tp in tps}

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", Client)
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", Client)

    async def scenario() -> None:
        changelog = statestore.KafkaChangelog({"bootstrap_servers": "broker:9092"}, "app-changelog")
        sending = asyncio.create_task(changelog.end_offset(0))
        checking = asyncio.create_task(changelog.end_offsets([0]))
        await asyncio.sleep(0.01)  # both in their clients' start
        closing = asyncio.create_task(changelog.close())
        await asyncio.sleep(0.01)
        started.set()
        await asyncio.gather(sending, checking, closing)

    asyncio.run(scenario())
    assert sorted((c.role, c.stopped) for c in made) == [
        ("app", True),
        ("app-check", True),
        ("app-restore", True),
    ]
