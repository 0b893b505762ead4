"""The input topics' partition counts as the broker answers now, for the running worker's check
that they are still the ones it started with (`topics.InputPartitionsCheck`).

One long-lived aiokafka client (client id `<app id>-partition-counts`), started on first use,
sends one Metadata request for the topics asked, on the event loop, and either a broker answers
within `timeout_s` or the answer is `PartitionCountsUnknown`. The counts are read from that
answer alone, never from the client's cached metadata (refreshed every 5 minutes), and the
request does not create a topic it asks for: aiokafka's own metadata requests let a broker with
`auto.create.topics.enable` create an input topic deleted to be recreated. A topic the broker
answers for with an error (unknown, leader not available) or with no partitions is missing from
the result, never a count of 0. Imports no faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

PARTITION_COUNTS_TIMEOUT_S = 5.0


class PartitionCountsUnknown(Exception):
    """No broker answered the metadata request in time (or none could be reached)."""


class BrokerPartitionCounts:
    """Asks the broker how many partitions topics have; its client is started on first use."""

    def __init__(self, client_config: Mapping[str, Any], client_id: str, timeout_s: float = PARTITION_COUNTS_TIMEOUT_S):
        # Bootstrap servers and security options (`security.aiokafka_config`), as every client.
        self.client_config = dict(client_config)
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._client: AIOKafkaClient | None = None
        self._starting: asyncio.Future[Any] | None = None

    async def ask(self, topics: Collection[str]) -> dict[str, int]:
        """The partition count of each of `topics` the broker answers for now; a topic it answers
        for with an error is missing. Raises `PartitionCountsUnknown` when no broker answers
        within `timeout_s`."""
        if not topics:
            return {}
        try:
            return await asyncio.wait_for(self._ask(list(topics)), self.timeout_s)
        except (asyncio.CancelledError, PartitionCountsUnknown):
            raise
        except Exception as exc:
            raise PartitionCountsUnknown(
                f"{type(exc).__name__} asking the partition counts of {len(topics)} topic(s)"
            ) from exc

    async def _ask(self, topics: list[str]) -> dict[str, int]:
        client = await self._started()
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        random.shuffle(nodes)  # (as aiokafka's own metadata updates: no broker asked first every time)
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        failures: list[str] = []
        for node in nodes:
            try:
                response = await client.send(node, request)
            except (KafkaError, OSError) as exc:  # (a timeout too) another broker may answer
                failures.append(type(exc).__name__)
                continue
            answered = ClusterMetadata()
            answered.update_metadata(response)
            return {t: len(partitions) for t in topics if (partitions := answered.partitions_for_topic(t))}
        raise PartitionCountsUnknown(f"no broker answered ({', '.join(failures) or 'none known'})")

    async def _started(self) -> AIOKafkaClient:
        if self._client is not None:
            return self._client
        if self._starting is None:
            self._starting = starting = asyncio.ensure_future(self._start())
            starting.add_done_callback(self._on_start_done)
        # Shielded: aiokafka's bootstrap cut off by `ask`'s timeout in the middle of its request
        # would leave that connection open; a start goes on to its own end (each of its requests
        # times out in `timeout_s`), and the next ask waits for the same start.
        client: AIOKafkaClient = await asyncio.shield(self._starting)
        return client

    def _on_start_done(self, starting: asyncio.Future[Any]) -> None:
        # Run before any ask waiting for the start resumes; a failed start is retried afresh.
        self._starting = None
        if not starting.cancelled() and starting.exception() is None:
            self._client = starting.result()

    async def _start(self) -> AIOKafkaClient:
        client = AIOKafkaClient(
            **self.client_config, client_id=self.client_id, request_timeout_ms=int(self.timeout_s * 1000)
        )
        try:
            await client.bootstrap()
        except BaseException:
            with contextlib.suppress(Exception):  # it never started; nothing of it is used again
                await client.close()
            raise
        return client

    async def close(self) -> None:
        if self._starting is not None:  # (not cancelled: see `_started`)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
