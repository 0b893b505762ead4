"""Reading topics from Kafka into replay records (kafka-python), for `dump` and `replay --from-kafka`.

Reads each partition from a start offset (or the offset for a start time) up to the end offset
captured when reading began (or the offset for an end time), so a dump is a finite snapshot.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence

from kafka.consumer.fetcher import ConsumerRecord

from kafka import KafkaConsumer, TopicPartition

from ..security import kafka_python_config
from ..settings import Settings
from ..topics import INPUT_ISOLATION
from .replayfile import KafkaRecord


def read_topics(
    client: Settings | str,
    topics: Sequence[str],
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    poll_timeout_ms: int = 1000,
    partitions: set[int] | None = None,
) -> Iterator[KafkaRecord]:
    """Records of `topics` with Kafka timestamps in [from_ms, to_ms), per partition in offset
    order. `client`: the settings to connect with (a bare address means PLAINTEXT)."""
    for m in read_messages(
        client, topics, from_ms=from_ms, to_ms=to_ms, poll_timeout_ms=poll_timeout_ms, partitions=partitions
    ):
        yield KafkaRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)


def merged_by_time(records: Iterable[KafkaRecord]) -> list[KafkaRecord]:
    """`records` read topic after topic, as a live worker meets them: every topic partition in its
    own order, the partitions merged by Kafka timestamp (the heads compared; equal ones in the
    order read). Decisions do not depend on this order, only what a record finds on arrival (the
    watermark, read topic after topic, is -inf for every record of the first topic)."""
    streams: dict[tuple[str, int], list[KafkaRecord]] = {}
    for r in records:
        streams.setdefault((r.topic, r.partition), []).append(r)
    return list(heapq.merge(*streams.values(), key=lambda r: r.timestamp_ms or 0))


def read_messages(
    client: Settings | str,
    topics: Sequence[str],
    *,
    from_ms: int | None = None,
    to_ms: int | None = None,
    poll_timeout_ms: int = 1000,
    partitions: set[int] | None = None,
    end_offsets: Mapping[tuple[str, int], int] | None = None,
    max_partition_fetch_bytes: int = 16 * 1024 * 1024,
) -> Iterator[ConsumerRecord]:
    """As `read_topics`, kafka-python's records themselves (their headers and timestamp type
    too, for `copy-inputs`). `end_offsets`: (topic, partition) -> an offset to stop at if it
    comes before the end offset found when reading begins (one taken earlier, for all)."""
    settings = client if isinstance(client, Settings) else Settings(bootstrap=client)
    bootstrap = settings.bootstrap
    consumer = KafkaConsumer(
        **kafka_python_config(settings),
        enable_auto_commit=False,
        group_id=None,
        # Records deleted by retention while this reads (below the log start): go on from what is
        # left, never to the end of the log (kafka-python's default), which would end the read.
        auto_offset_reset="earliest",
        key_deserializer=None,
        value_deserializer=None,
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
        # As the live worker reads: committed records only (an aborted transaction's debit never
        # happened), and the end offsets captured are the last stable ones.
        isolation_level=INPUT_ISOLATION,
    )
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise SystemExit(f"topic {topic!r} does not exist on {bootstrap}")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts) if partitions is None or p in partitions)
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        if end_offsets is not None:
            for tp in tps:
                if (taken := end_offsets.get((tp.topic, tp.partition))) is not None:
                    end[tp] = min(end[tp], taken)
        if to_ms is not None:
            for tp, ot in consumer.offsets_for_times({tp: to_ms for tp in tps}).items():
                if ot is not None:
                    end[tp] = min(end[tp], ot.offset)
        start = dict(begin)
        if from_ms is not None:
            for tp, ot in consumer.offsets_for_times({tp: from_ms for tp in tps}).items():
                start[tp] = ot.offset if ot is not None else end[tp]
        remaining = {tp for tp in tps if start[tp] < end[tp]}
        for tp in tps:
            consumer.seek(tp, start[tp])
        consumer.pause(*[tp for tp in tps if tp not in remaining])
        while remaining:
            batch = consumer.poll(timeout_ms=poll_timeout_ms)
            for tp, msgs in batch.items():
                if tp not in remaining:
                    continue
                for m in msgs:
                    if m.offset >= end[tp]:
                        break
                    yield m
            # The partitions that gave records; when none did, every one left: the last offsets of
            # a partition can be transaction markers (a transactional producer's commit or abort),
            # which take an offset but are never handed out; the fetch moves the position past them.
            for tp in sorted(remaining.intersection(batch) if batch else remaining):
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()
