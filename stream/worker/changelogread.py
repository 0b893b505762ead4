"""Reading the state changelog: a partition's messages in an offset range, as an async iterator
of `statestore.ChangelogMessage`s. Apart from `statestore` because the compiled build compiles
that module with mypyc, which does not compile async generators (bench/build_compiled.py). Imports
no faust; the consumer is aiokafka's, handed in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .statestore import BATCH_HEADER, COMMIT_HEADER, GENERATION_HEADER, ChangelogMessage, KafkaChangelog


async def read_partition(
    changelog: KafkaChangelog, partition: int, start: int, end: int
) -> AsyncIterator[ChangelogMessage]:
    """`changelog`'s partition at offsets start .. end - 1, read by its restore consumer."""
    from aiokafka import TopicPartition

    if start >= end:
        return
    _, consumer = await changelog._clients()
    async for msg in read_messages(consumer, TopicPartition(changelog.topic, partition), start, end):
        yield msg


async def read_messages(consumer: Any, tp: Any, start: int, end: int) -> AsyncIterator[ChangelogMessage]:
    """The `ChangelogMessage`s of `tp` at offsets start .. end - 1, read by `consumer` (assigned
    to `tp` alone for it)."""
    if start >= end:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    while True:
        got = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
        for m in got.get(tp, ()):
            if m.offset >= end:
                return
            headers = dict(m.headers or ())
            seq, generation = headers.get(BATCH_HEADER), headers.get(GENERATION_HEADER)
            yield ChangelogMessage(
                m.offset,
                m.key or b"",
                m.value,
                int(seq) if seq else None,
                COMMIT_HEADER in headers,
                int(generation) if generation else None,
            )
        if await consumer.position(tp) >= end:
            return
