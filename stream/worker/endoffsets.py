"""The broker's end offsets of topic partitions, asked at the moment they are needed: whether an
input stream is silent (the idle rule, `ReconcileShell.check_idle_feeds`) and whether a feed has
records the worker is not given (the feed-stall watchdog).

The high watermark Faust's consumer knows is the one its last answered fetch carried. A broker
that stops answering this worker's fetches (a partition leader it cannot reach, a quota, a sick
broker) leaves it where it was while records keep arriving, so a stream with records waiting
would look silent. Here a side aiokafka consumer with no group (client id `<app id>-end-offsets`)
sends one ListOffsets request per partition leader for every partition asked, and either the
broker answers within `timeout_s` or the answer is `EndOffsetsUnknown`: never an old value.
Imports no faust.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from ..topics import INPUT_ISOLATION

TopicPartitionKey = tuple[str, int]

END_OFFSETS_TIMEOUT_S = 5.0


class EndOffsetsUnknown(Exception):
    """The broker did not give the end offsets asked for in time (or refused)."""


class BrokerEndOffsets:
    """Asks the broker for end offsets (the offset after the last record); started on first use."""

    def __init__(self, client_config: Mapping[str, Any], client_id: str, timeout_s: float = END_OFFSETS_TIMEOUT_S):
        # Bootstrap servers and security options (`security.aiokafka_config`), as every client.
        self.client_config = dict(client_config)
        self.client_id = client_id
        self.timeout_s = timeout_s
        # The latest answer per topic partition (the consumer-lag metric shows the larger of it
        # and Faust's fetched high watermark).
        self.latest: dict[TopicPartitionKey, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping: set[asyncio.Future[None]] = set()  # clients that failed to start, stopping
        self._starting = asyncio.Lock()

    async def ask(self, tps: Collection[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The end offset of each of `tps` as the broker gives it now; raises
        `EndOffsetsUnknown` when it does not answer for all of them within `timeout_s`."""
        if not tps:
            return {}
        try:
            got = await asyncio.wait_for(self._ask(tps), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise EndOffsetsUnknown(f"{type(exc).__name__} asking the end offsets of {len(tps)} partition(s)") from exc
        missing = [tp for tp in tps if tp not in got]
        if missing:
            raise EndOffsetsUnknown(f"no end offset for {len(missing)} of {len(tps)} partition(s)")
        self.latest.update(got)
        return got

    async def _client(self) -> AIOKafkaConsumer:
        async with self._starting:  # the idle timer and the watchdog ask from their own tasks
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    **self.client_config,
                    group_id=None,
                    enable_auto_commit=False,
                    client_id=self.client_id,
                    request_timeout_ms=int(self.timeout_s * 1000),
                    # The last stable offset: what the worker's consumer can be given.
                    isolation_level=INPUT_ISOLATION,
                )
                try:
                    await consumer.start()
                except BaseException:  # a broker that does not answer at all: try afresh next time
                    stopping = asyncio.ensure_future(_stop_quietly(consumer))
                    self._stopping.add(stopping)
                    stopping.add_done_callback(self._stopping.discard)
                    raise
                self._consumer = consumer
            return self._consumer

    async def beginning(self, tps: Collection[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The first offset the broker still holds of each of `tps` (the log start: retention
        deleted what lies before it); raises `EndOffsetsUnknown` as `ask` does."""
        if not tps:
            return {}
        try:
            consumer = await self._client()
            got = await asyncio.wait_for(
                consumer.beginning_offsets([TopicPartition(t, p) for t, p in tps]), self.timeout_s
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise EndOffsetsUnknown(f"{type(exc).__name__} asking where {len(tps)} partition(s) begin") from exc
        return {(tp.topic, tp.partition): int(offset) for tp, offset in got.items()}

    async def _ask(self, tps: Collection[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        consumer = await self._client()
        ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items() if offset is not None}

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):  # it never started; nothing of it is used again
        await asyncio.wait_for(consumer.stop(), 5.0)
