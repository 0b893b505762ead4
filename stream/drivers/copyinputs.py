"""`qris-guard copy-inputs`: the input topics copied into a new co-partitioned set with another
partition count, keyed by reference, the supported way to grow (README, "Input partitions are
fixed").

Each record keeps its value bytes, its Kafka timestamp (as CreateTime) and its headers; its key
is its reference (its own key, else the `reference` in its value), and its partition is the one
Kafka's default partitioner gives that key. The old partitions of a topic are merged by
`(timestamp_ms, old partition, offset)`, each one kept in its offset order, so that every new
partition sees its records in the time order they had and a reference's records in their
order. The pure parts (the key, the partition, the merge, the tally) do no I/O; `copy_inputs`
is the shell that reads, creates and produces (kafka-python).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ..core import codec
from ..settings import Settings
from ..simulate.partitioner import partition_for

KeySource = Literal["key", "value", "none"]


class InputRecord(NamedTuple):
    """An input record as read, with what a copy must keep."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Placed(NamedTuple):
    """An input record as it is written to the new topics."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    key_source: KeySource
    source: InputRecord


def reference_key(key: bytes | None, value: bytes | None) -> tuple[bytes | None, KeySource]:
    """The key a record is copied with and where it came from: its own key when it has one (even
    one that differs from its reference: it is dead-lettered as a key mismatch, as before), else
    its value's `reference` (a string) as UTF-8, else None (not JSON, no reference: dead-lettered).

    >>> reference_key(b"QR1", b'{"reference": "QR2"}')
    (b'QR1', 'key')
    >>> reference_key(None, b'{"reference": "QR-Caf\\\\u00e9"}')
    (b'QR-Caf\\xc3\\xa9', 'value')
    >>> reference_key(None, b"not json"), reference_key(None, b'{"reference": 7}'), reference_key(None, None)
    ((None, 'none'), (None, 'none'), (None, 'none'))
    """
    if key is not None:
        return key, "key"
    if not value:
        return None, "none"
    try:
        obj = codec.loads(value)
    except ValueError:
        return None, "none"
    ref = obj.get("reference") if isinstance(obj, dict) else None
    if not isinstance(ref, str):
        return None, "none"
    try:
        return ref.encode("utf-8"), "value"
    except UnicodeEncodeError:  # (a lone surrogate written as `\\ud800`: no key can equal it)
        return None, "none"


def target_partition(key: bytes | None, old_partition: int, partitions: int) -> int:
    """Kafka's default partitioner on `key` (murmur2, as a producer would choose); a record
    without one (no reference to read) goes to its old partition modulo `partitions`.

    >>> target_partition(b"abc", 0, 1000), target_partition(None, 5, 4)
    (107, 1)
    """
    if key is None:
        return old_partition % partitions
    return partition_for(key, partitions)


def _merge_key(rec: InputRecord) -> tuple[int, int, int]:
    return rec.timestamp_ms, rec.partition, rec.offset


def merged(partitions: Iterable[Iterable[InputRecord]]) -> Iterator[InputRecord]:
    """The records of one topic's partitions (each in offset order) as one sequence, the next
    always the head with the smallest `(timestamp_ms, partition, offset)`: each partition keeps
    its own order (a record dated earlier than one before it in its partition still comes after
    it), and the partitions interleave by Kafka time. Lazy: one record per partition is held.

    >>> a = [InputRecord("p", 0, 0, 10, None, b""), InputRecord("p", 0, 1, 5, None, b"")]
    >>> b = [InputRecord("p", 1, 0, 7, None, b""), InputRecord("p", 1, 1, 10, None, b"")]
    >>> [(r.partition, r.offset) for r in merged([a, b])]
    [(1, 0), (0, 0), (0, 1), (1, 1)]
    """
    return heapq.merge(*partitions, key=_merge_key)


def placed(rec: InputRecord, target_topic: str, partitions: int) -> Placed:
    """Where and how `rec` is written to `target_topic` of `partitions` partitions."""
    key, source = reference_key(rec.key, rec.value)
    return Placed(
        target_topic,
        target_partition(key, rec.partition, partitions),
        key,
        rec.value,
        rec.timestamp_ms,
        rec.headers,
        source,
        rec,
    )


@dataclass
class TopicTally:
    """What was copied from one input topic."""

    source: str
    target: str
    partitions: int
    records: int = 0
    per_partition: list[int] = field(default_factory=list)
    keyed_from_value: int = 0
    without_key: int = 0

    def __post_init__(self) -> None:
        if not self.per_partition:
            self.per_partition = [0] * self.partitions

    def count(self, p: Placed) -> None:
        self.records += 1
        self.per_partition[p.partition] += 1
        if p.key_source == "value":
            self.keyed_from_value += 1
        elif p.key_source == "none":
            self.without_key += 1

    def line(self) -> str:
        parts = ", ".join(f"{i}: {n:,}" for i, n in enumerate(self.per_partition))
        return (
            f"{self.source} -> {self.target}: {self.records:,} records (per partition {parts}); "
            f"{self.keyed_from_value:,} keyless keyed by the reference in their value, "
            f"{self.without_key:,} kept without a key (no reference to read)"
        )


def summary(tallies: Iterable[TopicTally], elapsed_s: float) -> str:
    """The command's closing lines."""
    tallies = list(tallies)
    total = sum(t.records for t in tallies)
    return "\n".join([f"copied {total:,} records in {elapsed_s:.1f} s", *(t.line() for t in tallies)])


# -- the shell: Kafka ------------------------------------------------------------------------


class CopyRefused(SystemExit):
    """Topics the copy cannot work with (exit status 1 with the message)."""


def check_targets(
    sources: tuple[str, str],
    targets: tuple[str, str],
    partitions: int,
    counts: Mapping[str, int],
    held: Mapping[str, int],
) -> None:
    """Refuse targets that are sources, the same topic twice, of another count, or not empty.
    `counts`: the partition count of each existing target; `held`: its records (end - start)."""
    if targets[0] == targets[1]:
        raise CopyRefused(f"--to-payment-topic and --to-ledger-topic are the same topic {targets[0]!r}")
    for t in targets:
        if t in sources:
            raise CopyRefused(f"{t} is an input topic: the copy goes to new topics")
    for t in targets:
        if t in counts and counts[t] != partitions:
            raise CopyRefused(
                f"{t} exists with {counts[t]} partitions, not --to-partitions {partitions}: the new inputs must "
                "be co-partitioned with that count"
            )
        if held.get(t, 0) > 0:
            raise CopyRefused(
                f"{t} is not empty ({held[t]:,} records): copy into new, empty topics (delete and recreate it, "
                "e.g. after a copy that failed)"
            )


def _target_topics(settings: Settings, names: Iterable[str], partitions: int) -> list[Any]:
    from kafka.admin import NewTopic

    from ..security import topic_configs

    # CreateTime explicitly: a broker whose default is LogAppendTime would stamp the copies with
    # the time of the copy, and the clock guard would see other times than the worker saw.
    return [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=settings.replication_factor,
            topic_configs={**topic_configs(settings), "message.timestamp.type": "CreateTime"},
        )
        for name in names
    ]


def prepare_targets(settings: Settings, targets: tuple[str, str], partitions: int, *, timeout_s: float = 30.0) -> None:
    """Check the targets (`check_targets`) and create the missing ones with `partitions`."""
    from kafka.errors import TopicAlreadyExistsError

    from kafka import KafkaConsumer, TopicPartition

    from ..security import kafka_python_config
    from ..topics import admin_client, partition_counts

    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        counts = partition_counts(admin, [t for t in targets if t in existing])
        held: dict[str, int] = {}
        if counts:
            probe = KafkaConsumer(**kafka_python_config(settings), group_id=None, enable_auto_commit=False)
            try:
                tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
                begin, end = probe.beginning_offsets(tps), probe.end_offsets(tps)
                for tp in tps:
                    held[tp.topic] = held.get(tp.topic, 0) + end[tp] - begin[tp]
            finally:
                probe.close()
        check_targets((settings.payment_topic, settings.ledger_topic), targets, partitions, counts, held)
        missing = tuple(t for t in targets if t not in counts)
        if missing:
            try:
                admin.create_topics(_target_topics(settings, missing, partitions), timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                raise CopyRefused(f"{', '.join(missing)}: created by someone else meanwhile; run again") from None
            deadline = time.monotonic() + timeout_s
            while partition_counts(admin, list(missing)).keys() != set(missing):
                if time.monotonic() > deadline:
                    raise CopyRefused(f"{', '.join(missing)} not created in {timeout_s:.0f} s")
                time.sleep(0.2)
    finally:
        admin.close()


def _input_records(settings: Settings, topic: str, partition: int, end: int) -> Iterator[InputRecord]:
    from .kafkaread import read_messages

    # One reader per partition, so that the merge pulls each as it needs it; smaller fetches
    # than `dump`'s, as several are open at once.
    for m in read_messages(
        settings,
        [topic],
        partitions={partition},
        end_offsets={(topic, partition): end},
        max_partition_fetch_bytes=4 * 1024 * 1024,
    ):
        yield InputRecord(
            m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, tuple((k, v) for k, v in m.headers or ())
        )


class SendFailed(SystemExit):
    """A record not written as it should be (exit status 1 with the message)."""


def copy_inputs(
    settings: Settings,
    targets: tuple[str, str],
    partitions: int,
    *,
    tick: Callable[[], None] | None = None,
    flush_timeout_s: float = 120.0,
) -> list[TopicTally]:
    """Copy the settings' input topics, up to their end offsets when it starts, into `targets`
    (payment, ledger) of `partitions` partitions; return what was copied. Raises `SendFailed`
    at the first record the broker did not take, or took with another partition or timestamp."""
    from kafka.errors import KafkaError

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from ..security import kafka_python_config
    from ..topics import INPUT_ISOLATION, admin_client, partition_counts

    if partitions < 1:
        raise ValueError(f"--to-partitions {partitions}: expected 1 or more")
    sources = (settings.payment_topic, settings.ledger_topic)
    admin = admin_client(settings)
    try:
        source_counts = partition_counts(admin, list(sources))
    finally:
        admin.close()
    for t in sources:
        if t not in source_counts:
            raise CopyRefused(f"input topic {t} does not exist on {settings.bootstrap}")
    prepare_targets(settings, targets, partitions)
    probe = KafkaConsumer(
        **kafka_python_config(settings), group_id=None, enable_auto_commit=False, isolation_level=INPUT_ISOLATION
    )
    try:
        tps = [TopicPartition(t, p) for t in sources for p in range(source_counts[t])]
        ends = {(tp.topic, tp.partition): n for tp, n in probe.end_offsets(tps).items()}
    finally:
        probe.close()

    failures: list[str] = []
    lock = threading.Lock()
    producer = KafkaProducer(
        **kafka_python_config(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=256 * 1024,
        # The broker decides what fits (a record the input took fits a topic of the same config).
        max_request_size=16 * 1024 * 1024,
        client_id="qris-guard-copy-inputs",
    )

    def sent(p: Placed) -> Callable[[Any], None]:
        def check(meta: Any) -> None:
            if meta.partition != p.partition or meta.timestamp != p.timestamp_ms:
                with lock:
                    failures.append(
                        f"{p.source.topic}[{p.source.partition}]@{p.source.offset} written to "
                        f"{meta.topic}[{meta.partition}] with timestamp {meta.timestamp}, not [{p.partition}] "
                        f"with {p.timestamp_ms} (is {meta.topic} message.timestamp.type=LogAppendTime?)"
                    )

        return check

    def failed(p: Placed) -> Callable[[BaseException], None]:
        def note(exc: BaseException) -> None:
            with lock:
                failures.append(
                    f"{p.source.topic}[{p.source.partition}]@{p.source.offset}: {type(exc).__name__}: {exc}"
                )

        return note

    tallies = [TopicTally(s, t, partitions) for s, t in zip(sources, targets, strict=True)]
    try:
        for source, target, tally in zip(sources, targets, tallies, strict=True):
            streams = [_input_records(settings, source, p, ends[(source, p)]) for p in range(source_counts[source])]
            for rec in merged(streams):
                p = placed(rec, target, partitions)
                try:
                    future = producer.send(
                        p.topic,
                        key=p.key,
                        value=p.value,
                        partition=p.partition,
                        timestamp_ms=p.timestamp_ms,
                        headers=list(p.headers),
                    )
                except KafkaError as exc:  # (refused before sending: too large, no metadata in time)
                    failed(p)(exc)
                    break
                future.add_callback(sent(p))
                future.add_errback(failed(p))
                tally.count(p)
                if tick is not None:
                    tick()
                if failures:
                    break
            if failures:
                break
        producer.flush(timeout=flush_timeout_s)
    finally:
        producer.close(timeout=flush_timeout_s)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise SendFailed(
            f"copy stopped: {failures[0]}{more}; {targets[0]} and {targets[1]} hold a partial copy: delete them "
            "and run again"
        )
    return tallies
