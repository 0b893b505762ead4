"""The worker's own state store: per input partition a local RocksDB (rocksdict) and a compacted
changelog topic the project writes itself, a batch at a time, atomically.

A batch's state changes of partition p go to changelog partition p in order, each message with
the header `qris.batch` (its batch number), followed by a commit marker (key `<p>/c`, header
`qris.commit`). A restore applies messages only when a commit marker after them arrives: a
commit commits everything before it in the log, so a batch whose own marker was compacted away
(a later marker has the same key) is still committed by the next one, and a trailing half batch
(a crash between the messages of one batch) is dropped. Whoever restores a partition with such a
tail writes its keys' committed values again (or tombstones) with a commit of its own at once,
so the half batch can never be committed by a later marker. The changelog send is awaited
(delivered) before a batch returns; the local DB then takes the batch and the changelog offset
of its marker in one WriteBatch (without RocksDB's write-ahead log: `RocksPartition`), so a
restart with the disk kept reads only the changelog tail (after a crash, the tail since the
DB's last memtable flush).

Compaction removes a tombstone (a reference dropped) `delete.retention.ms` after it is first
cleaned (Kafka's default: 24 h), so a local DB that missed some of the changelog for longer (its
partition held by another worker meanwhile, an old disk) would read a tail without the deletions
it missed and bring dropped references back. The local DB therefore keeps the wall time at which
it was last the whole changelog; a restore that finds writes after it (another worker's, or its
own lost from the memtable in a crash) and that time older than half the topic's
`delete.retention.ms`, or not known, rebuilds the partition from the changelog's start.

A changelog topic deleted and created again (a reset) may grow past a local DB's offset, and the
tail read from there would be another topic's. Each changelog partition therefore holds one
identity record (key `<p>/e`, a random value, written with the first batch after a restore that
found none, and never rewritten, so compaction keeps it where it was), and a local DB keeps its
offset: a restore reads the record there first (with a tail or without: a new topic can end
exactly where the DB does), and rebuilds the partition if it is not the DB's (or, with a tail,
if the DB does not know one).

Each batch also carries the consumer-group generation in which its writer took the partition
(`qris.generation`). Before a batch is sent, a partition whose changelog grew since the store's
last write is read: a message of a later generation there means this store is an owner the
group dropped (a zombie), and it writes nothing more of the partition until its next restore.
A batch whose marker lands past the offset its store expected had another writer since the
restore: if every such message is of an older generation (a zombie's), their keys are written
again with this store's values at once, so the changelog's last values are the current owner's.
Imports no faust (the changelog's Kafka client is aiokafka's public API).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

log = logging.getLogger("qris_guard.worker")

BATCH_HEADER = "qris.batch"
COMMIT_HEADER = "qris.commit"
# The consumer-group generation in which the writer owned the partition (absent: not known, as in
# a changelog of an older version or of a store without a group).
GENERATION_HEADER = "qris.generation"
# Local-only keys (never on the changelog, never loaded as state): state keys start with a digit.
APPLIED_OFFSET_KEY = b"\x00changelog-offset"
BATCH_SEQ_KEY = b"\x00batch-seq"
CURRENT_AT_KEY = b"\x00current-at-ms"
IDENTITY_OFFSET_KEY = b"\x00identity-offset"  # the changelog offset of the `identity_key` record
# A tombstone written after a DB was last whole is kept at least `delete.retention.ms` after
# that. A DB is read from its tail only if it was whole less than this share of that ago, and the
# tail is read to its end before this share: the rest is room for clocks that differ between
# hosts and for the log cleaner's timing (a pass reads the clock once, at its start).
SAFE_SHARE_OF_TOMBSTONE_RETENTION = 0.5
READ_BY_SHARE_OF_TOMBSTONE_RETENTION = 0.75
# A DB whose time is later than now by more than this (a clock stepped back, a disk from a host
# whose clock ran fast) is of unknown age.
FUTURE_STAMP_TOLERANCE_MS = 5 * 60_000
# The changelog's `delete.retention.ms` is asked at most once in this long (a rebalance restores
# several partitions; the restores run under the shell's lock), and waited for at most this long.
RETENTION_KNOWN_FOR_MS = 5 * 60_000
RETENTION_ASK_TIMEOUT_S = 5.0

Change = tuple[bytes, bytes | None]

# A value longer than PIECE_BYTES (a reference hammered with thousands of records, all waiting for
# the watermark in its one entry) is written as pieces of at most this many bytes. Each write of
# such a value draws a token of its own: `piece_key(key, token, i)` holds piece i (1 .. n-1) and the
# key itself holds PIECES_HEAD, the token, the number of pieces and a newline, then piece 0. Within
# a batch a key's new pieces come first, then its head (or plain value), then deletions of the
# pieces it had before. A commit marker commits everything before it, also another writer's half
# batch (a zombie's, a send that failed part way): whatever prefix is committed, each head's own
# pieces are there and none was overwritten (the token is unique to that write), so `load` joins
# the value either as before the batch or as after it. The changelog topic's and the producer's
# limits are 1 MiB; a record batch here is at most 512 KiB (`KafkaChangelog`), so a piece and its
# key fit in one whatever else it holds.
PIECE_BYTES = 256 * 1024
PIECES_HEAD = b"\x00pieces "
_PIECE_KEY = re.compile(rb"(.*)\x00([0-9a-f]{16})\.([1-9][0-9]*)", re.DOTALL)


def piece_key(key: bytes, token: bytes, i: int) -> bytes:
    """The changelog key of piece `i` (from 1) of `key`'s value written with `token` (state keys
    have no NUL byte)."""
    return b"%s\x00%s.%d" % (key, token, i)


class ChangelogBatch(NamedTuple):
    """One partition's part of a batch: its changes in order, each a message stamped with the
    batch number `seq`, then the commit marker (key `commit_key(p)`, value `seq`)."""

    changes: Sequence[Change]
    seq: int
    generation: int | None = None  # each message's `qris.generation` header, if known


def commit_key(partition: int) -> bytes:
    """The changelog key of partition p's commit markers (one value kept after compaction).

    >>> commit_key(3)
    b'3/c'
    """
    return b"%d/c" % partition


def identity_key(partition: int) -> bytes:
    """The changelog key of partition p's identity record (a random value, written once).

    >>> identity_key(3)
    b'3/e'
    """
    return b"%d/e" % partition


def new_identity(now_ms: int) -> bytes:
    """A changelog partition's identity record's value: random, with when it was made."""
    return b"%s %d" % (os.urandom(16).hex().encode(), now_ms)


def changelog_topic_name(app_id: str) -> str:
    """The compacted changelog topic of the worker's state.

    >>> changelog_topic_name("qris-guard")
    'qris-guard-state-changelog'
    """
    return f"{app_id}-state-changelog"


@dataclass(frozen=True, slots=True)
class ChangelogMessage:
    """One message of a changelog partition as a restore reads it."""

    offset: int
    key: bytes
    value: bytes | None
    seq: int | None  # the `qris.batch` header, None if absent
    commit: bool  # the `qris.commit` header is present
    generation: int | None = None  # the `qris.generation` header, None if absent

    def __reduce__(self) -> tuple[type[ChangelogMessage], tuple[Any, ...]]:
        # Compiled (bench/build_compiled.py), a frozen dataclass pickles only this way: see
        # `partition.Params.__reduce__`.
        return ChangelogMessage, (self.offset, self.key, self.value, self.seq, self.commit, self.generation)


class Changelog(Protocol):
    """The Kafka side of the store: write a partition's batch, read a partition from an offset."""

    async def send_batch(self, batches: Mapping[int, ChangelogBatch]) -> dict[int, int]:
        """Send each partition's changes and its commit marker in order; wait until all are
        delivered; return the offset of each partition's marker (its last message)."""
        ...

    async def end_offset(self, partition: int) -> int: ...

    async def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        """The end offsets of several partitions in one ask (apart from `read`, as `read_range`)."""
        ...

    async def tombstone_retention_ms(self) -> int | None:
        """The topic's `delete.retention.ms` (how long compaction keeps a deletion at least),
        None if it cannot be told."""
        ...

    def read(self, partition: int, start: int, end: int) -> Any:
        """An async iterator of the partition's `ChangelogMessage`s at offsets start .. end - 1."""
        ...

    async def read_range(self, partition: int, start: int, end: int) -> list[ChangelogMessage]:
        """The same messages as a list, read apart from `read` (which a restore may be using)."""
        ...


class LocalPartition(Protocol):
    """The local copy of one partition's state and how far in the changelog it is."""

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    def get(self, key: bytes) -> bytes | None: ...

    def apply(
        self,
        changes: Iterable[Change],
        applied_offset: int,
        seq: int,
        current_at_ms: int | None = None,
        identity_offset: int | None = None,
    ) -> None:
        """All of `changes` and the two positions, at once or not at all; with `current_at_ms`
        also the wall time (ms) at which the DB is then the whole changelog, with
        `identity_offset` the offset of the changelog's identity record (`identity_key`)."""
        ...

    def position(self) -> tuple[int, int]:
        """The changelog offset applied last (-1: none) and the highest batch number seen (0)."""
        ...

    def current_at_ms(self) -> int | None:
        """When this DB was last the whole changelog (None: never said, a DB of an older version)."""
        ...

    def identity_offset(self) -> int | None:
        """The changelog offset of the identity record this DB holds (None: not known)."""
        ...

    def close(self) -> None: ...


class MemoryPartition:
    """memory:// (trials and tests): state in this process only; a restart reads the changelog."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.applied_offset = -1
        self.seq = 0
        self.current_at: int | None = None
        self.identity_at: int | None = None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.items()))

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(
        self,
        changes: Iterable[Change],
        applied_offset: int,
        seq: int,
        current_at_ms: int | None = None,
        identity_offset: int | None = None,
    ) -> None:
        for key, value in changes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.applied_offset, self.seq = applied_offset, seq
        if current_at_ms is not None:
            self.current_at = current_at_ms
        if identity_offset is not None:
            self.identity_at = identity_offset

    def position(self) -> tuple[int, int]:
        return self.applied_offset, self.seq

    def current_at_ms(self) -> int | None:
        return self.current_at

    def identity_offset(self) -> int | None:
        return self.identity_at

    def close(self) -> None:
        return None


# A partition DB's memtable: the most of its writes RocksDB holds in memory before it flushes
# them (two while one flushes). The worker rewrites every reference a batch changed, so each
# memtable fills to this whatever the state's size: a worker's memory is up to twice it per
# partition (RSS 445 MB for 954 open references on 4 partitions in a 19-day soak with 64 MiB).
# Smaller costs CPU: 16 MiB about 15% more of the write's (`python bench/rocks_write.py
# --write-buffer-mb 64 16`), and in a backlog its flushes delay the last decisions (to the last
# decision 0.88-0.94 of 64 MiB's, `bench/live_throughput.py`). `QRIS_STATE_WRITE_BUFFER_MB`.
WRITE_BUFFER_BYTES = 64 * 1024 * 1024


def rocks_options(write_buffer_bytes: int = WRITE_BUFFER_BYTES) -> Any:
    """A partition DB's options: raw bytes, the vector memtable (`RocksPartition`) of
    `write_buffer_bytes`."""
    from rocksdict import MemtableFactory, Options

    options = Options(raw_mode=True)
    options.set_allow_concurrent_memtable_write(False)  # the vector memtable requires it
    options.set_memtable_factory(MemtableFactory.vector())
    options.set_write_buffer_size(write_buffer_bytes)
    return options


class RocksPartition:
    """rocksdb://: one RocksDB per input partition (rocksdict, raw bytes).

    Written without RocksDB's write-ahead log (as Kafka Streams' RocksDB stores): the changelog
    is the durable copy. A process that dies loses what the memtable held since its last flush,
    and a `WriteBatch` is flushed whole or not at all, so the DB comes back as it was after some
    earlier batch, with that batch's changelog offset: the restore reads the changelog tail from
    there (at most about a memtable, `WRITE_BUFFER_BYTES`, more than with the log). `close` flushes. The log
    cost about 4.5 us of CPU per changed reference (a third of the store's per-record cost).

    The memtable is RocksDB's vector memtable (an append per write, sorted when it is flushed or
    iterated) instead of its skip list: the worker writes every changed reference at each commit
    and reads the DB only when a partition is restored (`items`, `get`: rare), which is what the
    vector memtable is made for. A write costs about half (`bench/rocks_write.py`). A point read
    from it sorts the unflushed writes (128 ms a read with 50,000 of them), so the applied offset
    and batch number are kept in memory too (`position` is asked at every commit), and `get` (a
    restore's half-batch keys) flushes the memtable first if it has writes.

    Every `flush_every_s` (`QRIS_STATE_FLUSH_S`) a write also asks RocksDB to flush in the
    background (0.1 ms here; the flush runs on RocksDB's thread), so a killed process's DB is at
    most about that far behind, with its time (`current_at_ms`): a quiet partition's memtable
    would otherwise keep its writes for days, and the restore after a crash would read a long
    tail, or rebuild."""

    FLUSH_EVERY_S = 600.0  # the default of `flush_every_s`

    def __init__(
        self, path: Path, flush_every_s: float | None = None, write_buffer_bytes: int = WRITE_BUFFER_BYTES
    ) -> None:
        from rocksdict import Rdict, WriteOptions

        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), options=rocks_options(write_buffer_bytes))
        self.write_options = WriteOptions()
        # A property at run time; rocksdict's stub declares a method.
        self.write_options.disable_wal = True  # type: ignore[method-assign, assignment]
        offset, seq = self.db.get(APPLIED_OFFSET_KEY), self.db.get(BATCH_SEQ_KEY)
        self._position = ((int(offset) if offset else -1), (int(seq) if seq else 0))
        current_at = self.db.get(CURRENT_AT_KEY)
        self._current_at = int(current_at) if current_at else None
        identity_at = self.db.get(IDENTITY_OFFSET_KEY)
        self._identity_at = int(identity_at) if identity_at else None
        self._unflushed = False  # writes in the memtable since the last flush (`get`)
        self._flush_asked_at = time.monotonic()
        self.flush_every_s = self.FLUSH_EVERY_S if flush_every_s is None else flush_every_s

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.db.items():
            if isinstance(key, bytes) and isinstance(value, bytes) and not key.startswith(b"\x00"):
                yield key, value

    def get(self, key: bytes) -> bytes | None:
        if self._unflushed:
            self.db.flush()
            self._unflushed = False
        value = self.db.get(key)
        return value if isinstance(value, bytes) else None

    def apply(
        self,
        changes: Iterable[Change],
        applied_offset: int,
        seq: int,
        current_at_ms: int | None = None,
        identity_offset: int | None = None,
    ) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        put, delete = wb.put, wb.delete
        for key, value in changes:
            if value is None:
                delete(key)
            else:
                put(key, value)
        wb.put(APPLIED_OFFSET_KEY, b"%d" % applied_offset)
        wb.put(BATCH_SEQ_KEY, b"%d" % seq)
        if current_at_ms is not None:
            wb.put(CURRENT_AT_KEY, b"%d" % current_at_ms)
        if identity_offset is not None:
            wb.put(IDENTITY_OFFSET_KEY, b"%d" % identity_offset)
        self.db.write(wb, self.write_options)
        self._position = (applied_offset, seq)
        if current_at_ms is not None:
            self._current_at = current_at_ms
        if identity_offset is not None:
            self._identity_at = identity_offset
        self._unflushed = True
        now = time.monotonic()
        if now - self._flush_asked_at >= self.flush_every_s:
            self.db.flush(False)  # in the background: the next batches go on meanwhile
            self._flush_asked_at = now

    def position(self) -> tuple[int, int]:
        return self._position

    def current_at_ms(self) -> int | None:
        return self._current_at

    def identity_offset(self) -> int | None:
        return self._identity_at

    def close(self) -> None:
        self.db.close()


class RestoreBuffer:
    """Reads a changelog partition's messages in order and says what a commit makes visible.

    >>> b = RestoreBuffer(3)
    >>> b.add(ChangelogMessage(0, b"3/r/A", b"1", 1, False)), b.add(ChangelogMessage(1, b"3/c", b"1", 1, True))
    (None, [(b'3/r/A', b'1')])
    >>> b.add(ChangelogMessage(2, b"3/r/B", b"2", 2, False)), b.pending_keys(), b.max_seq
    (None, [b'3/r/B'], 2)
    """

    def __init__(self, partition: int) -> None:
        self.marker = commit_key(partition)
        self.pending: list[Change] = []
        self.max_seq = 0
        self.committed_offset: int | None = None

    def add(self, msg: ChangelogMessage) -> list[Change] | None:
        """None, or the changes a commit marker makes visible (everything since the last)."""
        if msg.seq is not None:
            self.max_seq = max(self.max_seq, msg.seq)
        if msg.commit:
            changes, self.pending = self.pending, []
            self.committed_offset = msg.offset
            return changes
        if msg.key != self.marker:
            self.pending.append((msg.key, msg.value))
        return None

    def pending_keys(self) -> list[bytes]:
        """The keys of the uncommitted tail (a half batch), each once, in order."""
        return list(dict.fromkeys(k for k, _ in self.pending))


# Changelog records remaining before the restore knows the partition's end offset.
UNKNOWN_REMAINING = 1 << 62


@dataclass
class RestoreProgress:
    """What the recovery watchdog watches: the partition being restored and what is left."""

    partition: int | None = None
    remaining: int = 0


class PartitionStore:
    """The `StateStore` of the shell: puts queued per partition, `commit` makes them durable
    (changelog delivered, then the local DB), `restore` brings a partition up to date before
    its engine is built, `release` lets go of a partition that moved away."""

    def __init__(
        self,
        changelog: Changelog,
        local_dir: Path | None,
        flush_every_s: float | None = None,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES,
    ) -> None:
        self.changelog = changelog
        self.local_dir = local_dir  # None: memory://
        self.flush_every_s = flush_every_s  # the local DBs' (`RocksPartition`); None: its default
        self.write_buffer_bytes = write_buffer_bytes  # the local DBs' memtable
        self.locals: dict[int, LocalPartition] = {}
        self.current: set[int] = set()  # restored and not released since
        self.pending: dict[int, list[Change]] = {}
        # Restored partitions whose changelog has no identity record: their next batch writes one.
        self.identity_needed: set[int] = set()
        # Per partition restored here: the changelog offset this store's next message gets if
        # nobody else writes the partition; and the partitions with messages since their restore
        # that the DB does not have (another writer's, or a batch of this store's own that landed
        # but was not applied), whose DB offset stays where it was until their next restore.
        self.next_offset: dict[int, int] = {}
        self.behind: set[int] = set()
        # The group's current consumer-group generation (the app sets it; None: not known, no
        # messages are stamped), the one each partition was taken in (restored or kept: its
        # batches' stamp), and the partitions in which a writer of a later generation was seen:
        # this worker is an owner the group dropped (a zombie), and their batches are not
        # written until the partition's next restore.
        self.generation: Callable[[], int | None] = lambda: None
        self.generations: dict[int, int | None] = {}  # per partition: the generation it was taken in
        self.superseded: set[int] = set()
        # Per partition: the keys that have pieces (`PIECE_BYTES`) in the DB, and their pieces'
        # keys (found in the DB on first use after a restore).
        self.piece_keys: dict[int, dict[bytes, list[bytes]]] = {}
        self.progress = RestoreProgress()
        self.counts = {
            "restored_messages": 0,
            "dropped_half_batch_messages": 0,
            "commits": 0,
            "stale_rebuilds": 0,
            "foreign_writes": 0,
            "older_owner_rewrites": 0,
            "superseded_batches": 0,
            "pieced_entries": 0,
        }
        self.clock: Callable[[], float] = time.time  # wall time: the local DBs' `current_at_ms`
        self._retention: tuple[int, int | None] | None = None  # (asked at, ms), `_tombstone_retention_ms`

    # -- the StateStore protocol -------------------------------------------------------------

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.pending.setdefault(partition, []).append((key, value))

    def put_many(self, partition: int, changes: list[Change]) -> None:
        """`put` of each change in order (the list is the store's from now on)."""
        queued = self.pending.get(partition)
        if queued is None:
            self.pending[partition] = changes
        else:
            queued.extend(changes)

    def load(self, partition: int) -> list[tuple[bytes, bytes]]:
        """The partition's state (its changelog's identity record is the store's own), each value
        written in pieces joined again."""
        local = self.locals.get(partition)
        if local is None:
            return []
        own = identity_key(partition)
        out: list[tuple[bytes, bytes]] = []
        pieced: list[tuple[bytes, bytes]] = []
        pieces: dict[bytes, list[bytes]] = {}
        for k, v in local.items():
            if b"\x00" in k:
                _note_piece(pieces, k)
            elif v.startswith(PIECES_HEAD):
                pieced.append((k, v))
            elif k != own:
                out.append((k, v))
        self.piece_keys[partition] = pieces
        out.extend((k, _joined(partition, local, k, head)) for k, head in pieced)
        return out

    def _pieced(self, partition: int, changes: list[Change]) -> list[Change]:
        """`changes` with each value longer than PIECE_BYTES written as pieces under a new token,
        and deletions of the pieces each key had before (after its new head: see PIECE_BYTES)."""
        known = self.piece_keys.get(partition)
        if known is None:
            known = self.piece_keys[partition] = {}
            local = self.locals.get(partition)
            for k, _ in local.items() if local is not None else ():
                if b"\x00" in k:
                    _note_piece(known, k)
        big = PIECE_BYTES
        if not known and not any(v is not None and len(v) > big for _, v in changes):
            return changes
        out: list[Change] = []
        gone: list[Change] = []  # deletions of earlier pieces, after every head of the batch
        for key, value in changes:
            had = known.pop(key, None)
            if had:
                gone.extend((k, None) for k in had)
            if value is None or len(value) <= big:
                out.append((key, value))
                continue
            n = -(-len(value) // big)
            token = os.urandom(8).hex().encode()
            keys = [piece_key(key, token, i) for i in range(1, n)]
            out.extend((k, value[i * big : (i + 1) * big]) for i, k in enumerate(keys, 1))
            out.append((key, PIECES_HEAD + b"%s %d\n" % (token, n) + value[:big]))
            known[key] = keys
            if had is None:
                self.counts["pieced_entries"] += 1
                log.warning(
                    "partition %d: state entry %r is %d bytes (a reference with thousands of records), written"
                    " to the changelog in %d pieces",
                    partition,
                    key.decode("utf-8", "replace")[:80],
                    len(value),
                    n,
                )
        return out + gone

    async def commit(self) -> None:
        """Write this batch's changes of every partition with a commit marker each, wait until
        the broker has them all, then apply them to the local DBs with the marker's offset."""
        if self.pending:
            pending, self.pending = self.pending, {}
            await self._write(pending)

    async def _write(
        self, pending: dict[int, list[Change]], *, rewrite_older: bool = True, pieced: bool = True
    ) -> dict[int, int]:
        """Send the partitions' changes (and an identity record where one is needed), then apply
        them to the local DBs; the offset of each partition's commit marker. With
        `rewrite_older`, the keys an owner of an older generation wrote meanwhile (a zombie) are
        written again with this store's values (`_rewrite_older_owners`). With `pieced`, long
        values are written in pieces (`_pieced`); without, the changes are the DB's own messages
        written again as they are (`_as_written_again`)."""
        # A partition written here was restored to the changelog's end: with this batch, its DB
        # is the whole changelog as of before the send (nothing written later is in it).
        await self._check_superseded(pending)
        for p in [p for p in pending if p in self.superseded]:
            # A later generation's owner writes this partition: this worker's batch is not its
            # to write (the group dropped this worker; its next restore reads the other's).
            del pending[p]
            self.counts["superseded_batches"] += 1
        if not pending:
            return {}
        if pieced:
            for p, changes in pending.items():
                pending[p] = self._pieced(p, changes)
        sent_at_ms = self._now_ms()
        identified = [p for p in pending if p in self.identity_needed]
        for p in identified:
            # The identity record last, just before the commit marker: at the marker's offset - 1.
            pending[p] = [*pending[p], (identity_key(p), new_identity(sent_at_ms))]
        batches = {
            p: ChangelogBatch(changes, self._local(p).position()[1] + 1, self.generations.get(p))
            for p, changes in pending.items()
        }
        offsets = await self.changelog.send_batch(batches)
        older: dict[int, list[bytes]] = {}  # partition -> keys an older owner wrote since its restore
        for p, batch in batches.items():
            at = offsets[p] - 1 if p in identified else None
            expected = self.next_offset.get(p)
            # Messages the DB does not have are in the partition since its restore: another
            # writer's (a worker still writing after its partition moved: a zombie, or this one),
            # or a batch of this store's own that landed but was not applied (its send raised or
            # was cancelled after delivery, or the local write failed). The DB must not stand past
            # them: it keeps its offset (and time) until the partition's next restore, which
            # reads them and everything after, unless they are an older owner's only and are
            # written over at once (below).
            if expected is not None and offsets[p] != expected + len(batch.changes) and p not in self.behind:
                self.behind.add(p)
                self.counts["foreign_writes"] += 1
                keys = await self._older_owners_keys(p, expected, offsets[p], len(batch.changes) + 1, batch.generation)
                if keys is not None and rewrite_older:
                    older[p] = keys
                else:
                    log.warning(
                        "partition %d: changelog messages this worker did not apply (%s): this batch's marker at %d,"
                        " %d expected; the local state keeps its offset until the partition's next restore",
                        p,
                        "a writer of a later generation: this worker is no longer the partition's owner"
                        if p in self.superseded
                        else "another writer, or a batch of its own that failed after landing",
                        offsets[p],
                        expected + len(batch.changes),
                    )
            local = self._local(p)
            if p in self.behind:
                local.apply(batch.changes, local.position()[0], batch.seq, None, at)
            else:
                local.apply(batch.changes, offsets[p], batch.seq, sent_at_ms, at)
            self.next_offset[p] = offsets[p] + 1  # (after the local write: one that fails is seen next)
        self.identity_needed.difference_update(identified)
        self.counts["commits"] += len(pending)
        for p, keys in older.items():
            await self._rewrite_older_owners(p, keys)
        return offsets

    async def _check_superseded(self, pending: Mapping[int, list[Change]]) -> None:
        """Before a batch is sent: a partition whose changelog grew since this store's last write
        with a message of a later generation than the one it holds the partition in goes into
        `superseded` (this worker is the owner the group dropped: it writes nothing more of it,
        so none of its batches lands after the new owner's writes; one sent between this check
        and the other's first write is written over by the other's next batch)."""
        ours = {
            p: self.next_offset[p]
            for p in pending
            if p not in self.superseded and p in self.next_offset and self.generations.get(p) is not None
        }
        if not ours:
            return
        ends = await self.changelog.end_offsets(sorted(ours))
        for p, expected in ours.items():
            if ends[p] == expected:
                continue
            generation = self.generations[p]
            assert generation is not None
            for msg in await self.changelog.read_range(p, expected, ends[p]):
                if msg.generation is not None and msg.generation > generation:
                    self.superseded.add(p)
                    log.warning(
                        "partition %d: the changelog has a writer of a later consumer-group generation (%d, this"
                        " worker's %d): this worker is no longer the partition's owner and writes nothing more of it"
                        " until its next restore",
                        p,
                        msg.generation,
                        generation,
                    )
                    break

    async def _older_owners_keys(
        self, partition: int, start: int, marker: int, own_messages: int, generation: int | None
    ) -> list[bytes] | None:
        """The keys written at offsets start .. marker of a changelog partition by owners of an
        older consumer-group generation, if every message there that is not this store's batch
        (`own_messages`, of `generation`) is theirs; else None. A message of a later generation
        marks the partition superseded (this worker is the one the group dropped)."""
        if generation is None:
            return None
        mine, keys, others = 0, [], 0
        for msg in await self.changelog.read_range(partition, start, marker + 1):
            if msg.generation == generation:
                mine += 1
                continue
            others += 1
            if msg.generation is not None and msg.generation > generation:
                self.superseded.add(partition)
                return None
            if msg.generation is None:
                return None  # a writer that does not say (an older version): not known to be older
            if msg.key != commit_key(partition):
                keys.append(msg.key)
        if mine != own_messages or not others:
            # Fewer or more of this generation's than this batch (a batch of this store's own that
            # landed but was not applied, compaction): not only an older owner's.
            return None
        return list(dict.fromkeys(keys))

    async def _rewrite_older_owners(self, partition: int, keys: list[bytes]) -> None:
        """Write the keys an older owner (a zombie) wrote after this store's restore again with this
        store's values (a deletion where it has none), so the changelog's last value of each is the
        current owner's whatever the zombie wrote; then the DB is the whole changelog again."""
        local = self._local(partition)
        own = identity_key(partition)
        rewrite = _as_written_again([(key, local.get(key)) for key in keys if key != own])
        if own in keys:  # last, so a committed identity record stands just before its marker
            rewrite.append((own, local.get(own)))
        # (`_write` adds an identity record if the partition has none yet.)
        expected = self.next_offset[partition] + len(rewrite) + (partition in self.identity_needed)
        sent_at_ms = self._now_ms()  # with the rewrite, the DB is the whole changelog as of then
        marker = (await self._write({partition: rewrite}, rewrite_older=False, pieced=False)).get(partition)
        if marker != expected or partition not in self.current:
            log.warning(
                "partition %d: an older owner's changelog messages written over, but more messages came between;"
                " the local state keeps its offset until the partition's next restore",
                partition,
            )
            return
        identity_at = local.identity_offset()
        if own in keys:
            identity_at = marker - 1 if local.get(own) is not None else None
            if identity_at is None:
                self.identity_needed.add(partition)
        self.behind.discard(partition)
        local.apply((), marker, local.position()[1], sent_at_ms, identity_at)
        self.counts["older_owner_rewrites"] += 1
        log.warning(
            "partition %d: %d key(s) written meanwhile to the changelog by an owner of an older consumer-group"
            " generation (a worker the group dropped, still writing) written again with this worker's values",
            partition,
            len(rewrite),
        )

    # -- partitions --------------------------------------------------------------------------

    async def is_current(self, partition: int) -> bool:
        """Whether the local state of a partition kept through a rebalance is still the whole
        changelog (nobody else wrote to it meanwhile). If so, its time moves to now (a quiet
        partition's DB is as current as a busy one's)."""
        local = self.locals.get(partition)
        if local is None or partition not in self.current:
            return False
        asked_at_ms = self._now_ms()
        end = await self.changelog.end_offset(partition)
        applied, seq = local.position()
        if end != applied + 1:
            return False
        local.apply((), applied, seq, asked_at_ms)
        self.generations[partition] = self.generation()  # kept in this generation
        return True

    def release(self, partition: int) -> None:
        """A partition no longer assigned here: its next assignment reads the changelog tail."""
        self.current.discard(partition)
        self.identity_needed.discard(partition)
        self.next_offset.pop(partition, None)
        self.behind.discard(partition)
        self.superseded.discard(partition)
        self.generations.pop(partition, None)
        self.pending.pop(partition, None)
        self.piece_keys.pop(partition, None)
        local = self.locals.pop(partition, None)
        if local is not None:
            local.close()

    async def restore(self, partition: int) -> None:
        """Bring partition p's local state up to the end of its changelog partition."""
        if partition in self.current:
            return
        self.identity_needed.discard(partition)  # (known again at the end)
        self.next_offset.pop(partition, None)
        self.behind.discard(partition)  # (the restore reads from the DB's offset: what it missed too)
        self.superseded.discard(partition)  # (assigned again: in a generation at least the other's)
        self.piece_keys.pop(partition, None)  # (found again in the DB: `load`, `_pieced`)
        self.generations[partition] = self.generation()
        local = self._local(partition)
        applied, seq = local.position()
        self.progress = RestoreProgress(partition, UNKNOWN_REMAINING)  # any answer is progress
        asked_at_ms = self._now_ms()  # read to `end`, the DB is the whole changelog as of then
        end = await self.changelog.end_offset(partition)
        if applied + 1 > end:
            # The local DB is ahead of the changelog: not this changelog's (a topic recreated).
            log.warning("partition %d: local state ahead of the changelog (%d > %d); rebuilt", partition, applied, end)
            local = self._wipe(partition)
            applied, seq = -1, 0
        own = identity_key(partition)
        read_by_ms: int | None = None  # a tail read after this may have missed deletions
        if applied >= 0 and applied + 1 < end:
            if await self._same_changelog(partition, local):
                read_by_ms = await self._tail_read_by(partition, local, asked_at_ms)
            if read_by_ms is None:
                local = self._wipe(partition)
                applied, seq = -1, 0
        elif (
            # No tail, but a recreated topic may end exactly where the DB does: checked too (a DB
            # that knows no identity record and has no tail is read as it is, as before).
            applied >= 0
            and local.identity_offset() is not None
            and local.get(own) is not None
            and not await self._same_changelog(partition, local)
        ):
            local = self._wipe(partition)
            applied, seq = -1, 0
        identity = local.get(own)  # the committed identity record's value as of now
        identity_read: ChangelogMessage | None = None  # an identity record read, not committed yet
        identity_at: int | None = None  # the offset of the last one committed here
        buffer = RestoreBuffer(partition)
        buffer.max_seq = seq
        self.progress = RestoreProgress(partition, end - applied - 1)
        read = 0
        changes: dict[bytes, bytes | None] = {}
        # Applied part way, a DB keeps its time (none, read from the start): it is the whole
        # changelog only once read to `end`. A restore killed part way from the start begins
        # again from the start (a deletion after the part read may start its retention before
        # the value it deletes leaves the log: the cleaner's clock is read once a pass).
        async for msg in self.changelog.read(partition, applied + 1, end):
            read += 1
            self.progress.remaining = end - msg.offset - 1
            if msg.key == own:
                identity_read = msg
            got = buffer.add(msg)
            if got is not None:
                if identity_read is not None:  # committed by this marker: where it is
                    identity = identity_read.value
                    if identity is not None:
                        identity_at = identity_read.offset
                    identity_read = None
                changes.update(got)  # dicts keep the first insertion's place; values are the last
                if len(changes) >= 10_000:
                    local.apply(changes.items(), msg.offset, buffer.max_seq, identity_offset=identity_at)
                    changes = {}
        if read_by_ms is not None and self._now_ms() >= read_by_ms:
            # The tail took so long that deletions in it may have gone meanwhile: from the start.
            self.counts["stale_rebuilds"] += 1
            log.warning("partition %d: the changelog tail took too long to read; rebuilt from the changelog", partition)
            self._wipe(partition)
            self.progress = RestoreProgress()
            self.counts["restored_messages"] += read
            await self.restore(partition)
            return
        committed = local.position()[0] if buffer.committed_offset is None else buffer.committed_offset
        # With max_seq, the next batch is numbered past a half batch read here.
        local.apply(changes.items(), committed, buffer.max_seq, asked_at_ms, identity_at)
        self.progress = RestoreProgress()
        self.counts["restored_messages"] += read
        self.next_offset[partition] = end
        tail = buffer.pending_keys()
        if tail:
            # A half batch (a crash between the messages of one batch): not applied. Its keys
            # get their committed values again, committed now, so no later marker commits it.
            self.counts["dropped_half_batch_messages"] += len(buffer.pending)
            log.warning(
                "partition %d: %d changelog message(s) of a batch without its commit dropped; keys rewritten",
                partition,
                len(buffer.pending),
            )
            # The identity record's key last (its committed value, or a deletion), so a
            # committed one keeps the rule that it stands just before its marker.
            rewrite = _as_written_again([(key, local.get(key)) for key in tail if key != own])
            if own in tail:
                rewrite.append((own, identity))
            marker = (await self._write({partition: rewrite}, pieced=False)).get(partition)
            if marker is None:  # a later generation wrote the partition meanwhile: superseded
                log.warning("partition %d: half batch not rewritten: a later owner writes it", partition)
            elif own in tail and identity is not None:
                local.apply((), *local.position(), identity_offset=marker - 1)
        if local.identity_offset() is None or identity is None:
            # None on the changelog (or a DB that does not know where): the next batch writes one.
            self.identity_needed.add(partition)
        self.current.add(partition)
        if read:
            log.info("partition %d: %d changelog message(s) read from offset %d", partition, read, applied + 1)

    async def _same_changelog(self, partition: int, local: LocalPartition) -> bool:
        """Whether the changelog partition is the one the local DB was written from: its identity
        record is at the DB's offset for it. If not (a topic recreated, or a DB that does not
        know it), the DB is to be rebuilt."""
        at, value = local.identity_offset(), local.get(identity_key(partition))
        if at is None or value is None:
            why = "does not know the changelog's identity record (a DB of an older version, or none written yet)"
        else:
            found: ChangelogMessage | None = None
            async for msg in self.changelog.read(partition, at, at + 1):
                if msg.key == identity_key(partition) and msg.value == value:
                    return True
                found = msg
            if found is not None:  # another message there: another topic
                why = f"knows another identity record than the changelog's message at {at} (the topic was recreated)"
            else:
                # Compaction removes an identity record only for a later one of the same key:
                # two owners that each found none wrote one each (a zombie), or the topic was
                # recreated and is now shorter or compacted.
                why = (
                    f"knows an identity record at offset {at}, which the changelog no longer has (a later one"
                    " replaced it, written by a second owner of the partition, or the topic was recreated)"
                )
        self.counts["stale_rebuilds"] += 1
        log.warning("partition %d: local state %s: rebuilt from the changelog", partition, why)
        return False

    async def _tail_read_by(self, partition: int, local: LocalPartition, now_ms: int) -> int | None:
        """The wall time (ms) by which the local DB's changelog tail must have been read, or None
        if the DB is to be rebuilt: it was last the whole changelog at least half the topic's
        `delete.retention.ms` ago (others' deletions after it may be gone), or either is unknown."""
        since = local.current_at_ms()
        retention = None if since is None else await self._tombstone_retention_ms(now_ms)
        if since is not None and since > now_ms + FUTURE_STAMP_TOLERANCE_MS:
            why = f"in the future ({(since - now_ms) / 60_000:.0f} min ahead of this host's clock)"
        elif since is None:
            why = "at an unknown time"
        elif retention is None:
            why = f"{(now_ms - since) / 3_600_000:.1f} h ago, the changelog's delete.retention.ms unknown"
        elif now_ms - since >= retention * SAFE_SHARE_OF_TOMBSTONE_RETENTION:
            why = (
                f"{(now_ms - since) / 3_600_000:.1f} h ago, the changelog keeps deletions {retention / 3_600_000:.1f} h"
            )
        else:
            return since + int(retention * READ_BY_SHARE_OF_TOMBSTONE_RETENTION)
        self.counts["stale_rebuilds"] += 1
        log.warning("partition %d: local state last whole %s: rebuilt from the changelog", partition, why)
        return None

    async def _tombstone_retention_ms(self, now_ms: int) -> int | None:
        """The changelog's `delete.retention.ms`, asked at most once in `RETENTION_KNOWN_FOR_MS`;
        if the broker does not say, the last value it said (None: never)."""
        known = self._retention
        if known is not None and 0 <= now_ms - known[0] < RETENTION_KNOWN_FOR_MS:
            return known[1]
        last = None if known is None else known[1]
        try:
            async with asyncio.timeout(RETENTION_ASK_TIMEOUT_S):
                value = await self.changelog.tombstone_retention_ms()
        except Exception as exc:  # noqa: BLE001 - then the last known, else unknown (a rebuild: exact, slower)
            log.warning(
                "the changelog's delete.retention.ms not answered (%s: %s); %s",
                type(exc).__name__,
                exc,
                "unknown: a local state with a tail is rebuilt" if last is None else f"{last} ms, as last answered",
            )
            value = last
        self._retention = (now_ms, value)
        return value

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def close(self) -> None:
        for p in list(self.locals):
            self.release(p)

    def _local(self, partition: int) -> LocalPartition:
        local = self.locals.get(partition)
        if local is None:
            local = (
                MemoryPartition()
                if self.local_dir is None
                else RocksPartition(self.local_dir / f"p{partition}", self.flush_every_s, self.write_buffer_bytes)
            )
            self.locals[partition] = local
        return local

    def _wipe(self, partition: int) -> LocalPartition:
        local = self.locals.pop(partition)
        local.close()
        if self.local_dir is not None and (self.local_dir / f"p{partition}").exists():
            shutil.rmtree(self.local_dir / f"p{partition}")  # a failure raises: never rebuild over old keys
        fresh = self._local(partition)
        if fresh.position() != (-1, 0) or next(fresh.items(), None) is not None:
            raise RuntimeError(f"partition {partition}: the local state was not emptied for its rebuild")
        return fresh


DELETE_RETENTION = "delete.retention.ms"


def _note_piece(pieces: dict[bytes, list[bytes]], key: bytes) -> None:
    """Note piece key `key` (`piece_key`) under its value's key."""
    m = _PIECE_KEY.fullmatch(key)
    if m is not None:
        pieces.setdefault(m[1], []).append(key)


def _joined(partition: int, local: LocalPartition, key: bytes, head: bytes) -> bytes:
    """The value written in pieces under `key`, its first (`head`) given."""
    end = head.index(b"\n")
    token, n = head[len(PIECES_HEAD) : end].split(b" ")
    parts = [head[end + 1 :]]
    for i in range(1, int(n)):
        piece = local.get(piece_key(key, token, i))
        if piece is None:  # (never, by the order of a batch's messages: see PIECE_BYTES)
            raise RuntimeError(f"partition {partition}: state entry {key!r} lacks piece {i} of {int(n)}")
        parts.append(piece)
    return b"".join(parts)


def _as_written_again(changes: list[Change]) -> list[Change]:
    """A rewrite of the DB's own messages (values or deletions) in the order a batch writes
    pieces: the pieces the DB has, then the rest, then deletions of piece keys. A prefix of it
    committed by another writer's marker (see PIECE_BYTES) leaves no head without its pieces."""
    first = [c for c in changes if c[1] is not None and b"\x00" in c[0]]
    last = [c for c in changes if c[1] is None and b"\x00" in c[0]]
    if not first and not last:
        return changes
    return first + [c for c in changes if b"\x00" not in c[0]] + last


def config_value_ms(response: Mapping[str, Any], topic: str, name: str) -> int | None:
    """A topic's config value (ms) from a DescribeConfigs response as aiokafka's `to_object`
    gives it; None if the topic or the value is missing or not a number; LookupError if the
    broker answered with an error for the topic (29: not authorized, DescribeConfigs denied).

    >>> r = {"resources": [{"error_code": 0, "resource_name": "t", "config_entries": [
    ...     {"config_names": "delete.retention.ms", "config_value": "86400000"}]}]}
    >>> config_value_ms(r, "t", "delete.retention.ms"), config_value_ms(r, "u", "delete.retention.ms")
    (86400000, None)
    >>> config_value_ms({"resources": [{"error_code": 29, "resource_name": "t"}]}, "t", "x")
    Traceback (most recent call last):
    ...
    LookupError: DescribeConfigs of topic t: error code 29
    """
    for resource in response.get("resources", ()):
        if resource.get("resource_name") != topic:
            continue
        if resource.get("error_code"):
            raise LookupError(f"DescribeConfigs of topic {topic}: error code {resource['error_code']}")
        for entry in resource.get("config_entries", ()):
            # aiokafka names the entry's name field `config_names`; Kafka's schema `name`.
            if (entry.get("config_names") or entry.get("name")) == name:
                value = entry.get("config_value")
                return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else None
    return None


class KafkaChangelog:
    """The changelog on Kafka: the project's own aiokafka producer (acks from all in-sync
    replicas, idempotent, so a retry neither repeats nor reorders a message) and a consumer
    with no group for restores. Both start on first use."""

    def __init__(self, client_config: Mapping[str, Any], topic: str) -> None:
        self.client_config = dict(client_config)  # bootstrap and security (`aiokafka_config`)
        self.topic = topic
        # Client ids per app (`<app id>-state`, `<app id>-state-restore`): a broker's quotas and
        # request metrics tell one app's restore from another's (the Kafka tier throttles one).
        self.client_id = topic.removesuffix("-changelog")
        self._producer: Any = None
        self._consumer: Any = None
        self._starting = asyncio.Lock()
        self._checker: Any = None  # `read_range`'s and `end_offsets`' own consumer, one ask at a time
        self._checking = asyncio.Lock()

    async def _clients(self) -> tuple[Any, Any]:
        async with self._starting:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(
                    **self.client_config,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=0,  # a batch is sent whole and awaited at once
                    max_batch_size=512 * 1024,
                    client_id=self.client_id,
                )
                consumer = self._reader("restore")
                await producer.start()
                await consumer.start()
                self._producer, self._consumer = producer, consumer
        return self._producer, self._consumer

    def _reader(self, role: str) -> Any:
        """A consumer with no group that reads the changelog where it is told (not started)."""
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            **self.client_config,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A fetch still waiting for the previous partition delays the next restore by this
            # much (the default 500 ms per partition restored).
            fetch_max_wait_ms=20,
            client_id=f"{self.client_id}-{role}",
        )

    async def send_batch(self, batches: Mapping[int, ChangelogBatch]) -> dict[int, int]:
        # Each partition's messages go as Kafka record batches built here (aiokafka's
        # `create_batch`/`send_batch`), not one `send` each: a batch's messages stay separate
        # records (compaction keeps each key's last value), but cost one future and one
        # metadata check per record batch instead of per message (a changelog message per
        # changed reference was about a tenth of the worker's CPU). A record batch is at most
        # the producer's `max_batch_size`; a longer partition batch takes several, in order.
        producer, _ = await self._clients()
        futures: list[Any] = []
        last: dict[int, tuple[Any, int]] = {}  # partition -> (its last record batch, records in it)

        async def submit(p: int, batch: Any, count: int) -> None:
            fut = await producer.send_batch(batch, self.topic, partition=p)
            futures.append(fut)
            last[p] = (fut, count)

        for p, (changes, seq, generation) in batches.items():
            seq_bytes = b"%d" % seq
            headers = [(BATCH_HEADER, seq_bytes)]  # the same for every change of the batch
            if generation is not None:
                headers.append((GENERATION_HEADER, b"%d" % generation))
            batch = producer.create_batch()
            append, count = batch.append, 0
            for key, value in changes:  # once per changed key: no tuple or generator step each
                if append(key=key, value=value, timestamp=None, headers=headers) is None:
                    await submit(p, batch, count)  # full (and closed by the failed append)
                    batch = producer.create_batch()
                    append, count = batch.append, 0
                    append(key=key, value=value, timestamp=None, headers=headers)  # a first always fits
                count += 1
            marker_key, marker_headers = commit_key(p), [*headers, (COMMIT_HEADER, b"1")]
            if append(key=marker_key, value=seq_bytes, timestamp=None, headers=marker_headers) is None:
                await submit(p, batch, count)
                batch, count = producer.create_batch(), 0
                batch.append(key=marker_key, value=seq_bytes, timestamp=None, headers=marker_headers)
            await submit(p, batch, count + 1)
        await asyncio.gather(*futures)  # every record batch delivered, not only each partition's last
        # A record batch's future gives its base offset; its records have the offsets after it.
        return {p: int(fut.result().offset) + count - 1 for p, (fut, count) in last.items()}

    async def end_offset(self, partition: int) -> int:
        from aiokafka import TopicPartition

        _, consumer = await self._clients()
        tp = TopicPartition(self.topic, partition)
        return int((await consumer.end_offsets([tp]))[tp])

    async def tombstone_retention_ms(self) -> int | None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(**self.client_config, client_id=f"{self.client_id}-admin")
        try:
            await admin.start()
            asked = ConfigResource(ConfigResourceType.TOPIC, self.topic, {DELETE_RETENTION: None})
            responses = await admin.describe_configs([asked])
        finally:
            await admin.close()
        return config_value_ms(responses[0].to_object(), self.topic, DELETE_RETENTION)

    def read(self, partition: int, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
        from .changelogread import read_partition  # (it imports this module)

        return read_partition(self, partition, start, end)

    async def read_range(self, partition: int, start: int, end: int) -> list[ChangelogMessage]:
        # A batch's check of what another writer wrote (`PartitionStore._older_owners_keys`) runs
        # outside the shell's lock, maybe while a restore reads with the restore consumer: its
        # own consumer.
        from aiokafka import TopicPartition

        from .changelogread import read_messages

        async with self._checking:
            checker = await self._checker_started()
            return [msg async for msg in read_messages(checker, TopicPartition(self.topic, partition), start, end)]

    async def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        from aiokafka import TopicPartition

        async with self._checking:
            checker = await self._checker_started()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            ends = await checker.end_offsets(tps)
            return {tp.partition: int(ends[tp]) for tp in tps}

    async def _checker_started(self) -> Any:
        """The checks' consumer (`read_range`, `end_offsets`), started on first use."""
        if self._checker is None:
            checker = self._reader("check")
            await checker.start()
            self._checker = checker
        return self._checker

    async def close(self) -> None:
        # Under both locks: a client still starting is set once started, and closed here with
        # the others rather than left open; a check under way ends first.
        async with self._starting, self._checking:
            producer, consumer, checker = self._producer, self._consumer, self._checker
            self._producer = self._consumer = self._checker = None
        if producer is not None:
            await producer.stop()
        if consumer is not None:
            await consumer.stop()
        if checker is not None:
            await checker.stop()
