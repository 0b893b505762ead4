"""Faust's aiokafka consumer with two narrow fixes for offsets it loses in a rebalance (issue 9).
Imports faust and aiokafka only, nothing of the decision path.

1. **Acked offsets are committed before a revocation forgets them.** Faust's
   `Consumer.on_partitions_revoked` (faust-streaming 0.15.3, `transport/consumer.py`) pops the
   acked offsets of every revoked partition and only then lets the app commit (`wait_empty`,
   `commit`): whatever was acked since the last periodic commit (`broker_commit_interval`,
   2.8 s) is never committed. With eager rebalancing every partition is revoked at every
   rebalance, so a tiny backlog taken just before one has no committed offset afterwards, and
   its new owner gets it again (seen: a revocation dropping offsets 0-1 of 55 partitions, each
   partition's whole content). Here the acked offsets are committed first.
2. **"Seek back to committed offsets" also rewinds a partition with no committed offset.**
   Faust's `getmany` drops records that aiokafka hands it while the flow is stopped (during a
   rebalance, after the new assignment: aiokafka's position has already moved past them) and
   calls `perform_seek` to fetch them again; the seek is aiokafka's `seek_to_committed`, which
   does nothing for a partition whose committed offset is None or 0. Such a partition's fetch
   position stays past the dropped records: they are never delivered in this process, and if
   nothing follows them on the broker the partition stalls (nothing arrives after them to
   show the gap to the input boundary). Here such partitions are sought explicitly to their
   first offset on the broker (what a fresh assignment with `auto_offset_reset=earliest` does);
   the input boundary skips what the state already covers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from typing import Any, ClassVar, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger("qris_guard.worker")


async def rewind_uncommitted(consumer: Any, committed: Mapping[Any, int | None]) -> list[Any]:
    """Seek every partition of `committed` still assigned whose committed offset is None or 0 to
    its first offset on the broker (an aiokafka consumer, run in its own event loop); returns
    those partitions. `AIOKafkaConsumer.seek_to_committed` leaves them where they are."""
    assigned = consumer.assignment()
    tps = sorted(tp for tp, offset in committed.items() if not offset and tp in assigned)
    if tps:
        first = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, first[tp])
    return tps


class QuickFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread whose worker consumer waits at most the consumer class's
    `fetch_max_wait_ms` for a fetch. Faust fixes aiokafka's `fetch_max_wait_ms` at 1500 with no
    setting; aiokafka keeps one fetch in flight per broker, so a fetch of partitions with nothing
    new (the signals topic, a caught-up partition) holds back the next records of every other
    partition for up to that long, and a refund whose deadline they pass with it (measured with
    `bench/refund_latency.py`: p99 549 ms at 1,000 records/s with 1500, 329 ms with 100)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when the consumer starts (`AIOKafkaConsumer.start` builds its Fetcher
        # from it); a test checks that an upgrade keeps that so.
        consumer._fetch_max_wait_ms = cast(GuardedConsumer, self.consumer).fetch_max_wait_ms
        return consumer


class GuardedConsumer(faust_aiokafka.Consumer):
    """The app's consumer (`build_app` installs `guarded_consumer(...)` on the transport)."""

    fetch_max_wait_ms: ClassVar[int] = 1500  # Faust's own value; `guarded_consumer` sets the worker's

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return QuickFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        if revoked and not self.app.client_only:
            try:
                await self.commit()  # before Faust forgets the acked offsets of `revoked`
            except Exception:  # noqa: BLE001 - not committing means redelivery, never loss
                log.warning("cannot commit acked offsets before a revocation", exc_info=True)
        await super().on_partitions_revoked(revoked)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        rewound = await self._thread.call_thread(rewind_uncommitted, self._thread._ensure_consumer(), committed)
        if rewound:
            log.info("no committed offset: fetching %s from its first offset", _names(rewound))
        return committed


def guarded_consumer(fetch_max_wait_ms: int) -> type[GuardedConsumer]:
    """The worker's consumer class with its fetch wait (`QRIS_FETCH_MAX_WAIT_MS`)."""
    return type("GuardedConsumer", (GuardedConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms})


def _names(tps: list[Any], most: int = 6) -> str:
    named = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps[:most])
    return named if len(tps) <= most else f"{named} and {len(tps) - most} more"
