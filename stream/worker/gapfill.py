"""Missing input offsets read straight from the broker, for the input boundary (`boundary.py`).

A side aiokafka consumer with no group (manual assign and seek, nothing committed) reads a
topic partition from a gap's first offset until its position passes the gap's end, which the
broker has, since a record at that offset was delivered. What it returns inside the gap is
taken before the rest of the batch; what it does not is confirmed empty (transaction markers,
compaction). The wait is bounded: a gap that cannot be read in time is an infrastructure error
(the shell exits before the batch is acked, and a restart tries again). The same reads tell
whether a partition's lag (the offsets between the next one to take and the broker's end offset)
holds records or only transaction markers (`only_markers`: the idle rule and the feed-stall
watchdog). Imports no faust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from ..drivers.replayfile import KafkaRecord
from ..topics import INPUT_ISOLATION
from .boundary import Gap, GapNotFilled, InputRecord, PartitionPlan, merge_filled

log = logging.getLogger("qris_guard.worker")


async def fill_gaps(
    plan: PartitionPlan,
    fetch_gap: Callable[[Gap], Awaitable[Sequence[InputRecord]]] | None,
    counts: MutableMapping[str, int],
) -> list[InputRecord]:
    """The records to take for one topic partition whose delivered batch has gaps (`plan`):
    the missing offsets read from the broker with `fetch_gap` and merged in, in offset order
    (never a silent gap; the input's shell and the detector's both take them first). Counts
    `gap_records_fetched` and `gap_offsets_empty` in `counts` and logs the gap. Raises
    `GapNotFilled` when there is no broker to read from."""
    if fetch_gap is None:
        raise GapNotFilled(f"offsets missing and no broker to read them from: {plan.gaps[:3]}")
    # One read from the first gap's start to the last one's end, not one per gap: a transactional
    # producer that commits every record leaves a marker (a gap of one offset) after each, and a
    # read per gap cost a broker round trip each (3-46 ms), 6.6 times the time of the same day
    # without markers. `merge_filled` ignores what the read returns outside the gaps.
    first, last = plan.gaps[0], plan.gaps[-1]
    span = first if len(plan.gaps) == 1 else Gap(first.topic, first.partition, first.start, last.end)
    fetched: list[InputRecord] = list(await fetch_gap(span))
    take, empty = merge_filled(plan, fetched)
    filled = len(take) - len(plan.records)
    counts["gap_records_fetched"] += filled
    counts["gap_offsets_empty"] += empty
    g = plan.gaps[0]
    log.warning(
        "%s[%d]: %d offset(s) missing from the delivered batch (first %d..%d of %d gap(s)): "
        "%d read from the broker and taken in order, %d not on the broker (transaction markers, or records "
        "deleted by retention or compaction)",
        g.topic,
        g.partition,
        sum(x.size for x in plan.gaps),
        g.start,
        g.end - 1,
        len(plan.gaps),
        filled,
        empty,
    )
    return take


# The most offsets of a lag `only_markers` reads. A transactional producer leaves one marker (a
# control record: it takes an offset, and no consumer is given it) after its last record in each
# partition it wrote, so a lag of markers only is a few offsets; a longer one is not read, and
# counts as records.
MARKERS_PROBE_OFFSETS = 100


async def only_markers(
    fetch_gap: Callable[[Gap], Awaitable[Sequence[InputRecord]]], topic: str, partition: int, start: int, end: int
) -> bool:
    """Whether the broker has no record to take at offsets `start` .. `end - 1` of a topic
    partition (what is there are transaction markers, or nothing): read with `fetch_gap`, and
    only when there are at most `MARKERS_PROBE_OFFSETS` of them (more: False, unread). Raises
    what `fetch_gap` raises when the broker does not answer (the caller decides what no answer
    means)."""
    if end <= start:
        return True
    if end - start > MARKERS_PROBE_OFFSETS:
        return False
    return not await fetch_gap(Gap(topic, partition, start, end))


class BrokerGapFetcher:
    """Reads gaps of input topic partitions from the broker; started on first use."""

    def __init__(self, client_config: Mapping[str, Any], wait_s: float = 30.0) -> None:
        # Bootstrap servers and security options (`security.aiokafka_config`), as every client.
        self.client_config = dict(client_config)
        self.wait_s = wait_s
        self._consumer: AIOKafkaConsumer | None = None

    async def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.client_config,
                group_id=None,
                enable_auto_commit=False,
                # A gap below the log start (retention deleted it) starts at what is left.
                auto_offset_reset="earliest",
                client_id="qris-guard-gap-fill",
                # As the worker's consumer reads (an aborted transaction's records are nothing).
                isolation_level=INPUT_ISOLATION,
                # What a gap read asks for is on the broker (a record after it was delivered); a
                # long poll only delays the next read: after a read the consumer prefetches on to
                # the log's end and waits there, and the next read waited for that fetch (up to
                # aiokafka's 500 ms: 0.35 s a batch behind a transactional producer's markers).
                fetch_max_wait_ms=10,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def fetch(self, gap: Gap) -> list[KafkaRecord]:
        """The records the broker has at offsets `gap.start` .. `gap.end - 1`, in order."""
        consumer = await self._client()
        tp = TopicPartition(gap.topic, gap.partition)
        consumer.assign([tp])
        consumer.seek(tp, gap.start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        out: list[KafkaRecord] = []
        while True:
            got = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            passed = False
            for m in got.get(tp, ()):
                if m.offset >= gap.end:
                    passed = True
                elif m.offset >= gap.start:
                    out.append(KafkaRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value))
            if passed or await consumer.position(tp) >= gap.end:
                return out
            if loop.time() > deadline:
                raise GapNotFilled(
                    f"{gap.topic}[{gap.partition}] offsets {gap.start}..{gap.end - 1}: "
                    f"not read from the broker in {self.wait_s:.0f} s"
                )

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
