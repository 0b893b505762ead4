"""The worker's Faust consumer (`stream/worker/consumer.py`): acked offsets are committed before a
revocation forgets them, and a seek back to committed offsets also rewinds partitions that have
none. Faust's own consumer is checked too, so a Faust upgrade that fixes or moves the defects is
noticed. No broker: the consumer is built, not started."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.settings import Settings
from stream.worker.app import build_app
from stream.worker.consumer import GuardedConsumer, guarded_consumer, rewind_uncommitted

TP0, TP1, TP2 = TP("ledger-debits", 0), TP("ledger-debits", 1), TP("payment-requests", 0)


def make_consumer(cls: type[Any]) -> Any:
    app = faust.App("qris-consumer-test", broker="kafka://127.0.0.1:1")
    app.transport.Consumer = cls
    return app.consumer


async def acked_seen_by_commits(consumer: Any) -> list[dict[TP, list[int]]]:
    """Revoke TP0 and TP1, both with acked offsets not committed yet; return what each commit
    (the consumer's own, then the app's) found acked."""
    seen: list[dict[TP, list[int]]] = []

    async def commit(*args: Any, **kwargs: Any) -> bool:
        seen.append({tp: sorted(offsets) for tp, offsets in consumer._acked.items() if offsets})
        return True

    async def app_revoke_handler(revoked: set[TP]) -> None:
        await consumer.commit()  # what Faust's app does (wait_empty, then commit)

    consumer.commit = commit
    consumer._on_partitions_revoked = app_revoke_handler
    for tp, offsets in ((TP0, [0, 1]), (TP1, [7])):
        consumer._acked[tp].extend(offsets)
        consumer._acked_index[tp].update(offsets)
    await consumer.on_partitions_revoked({TP0, TP1})
    return seen


def test_fausts_own_consumer_forgets_acked_offsets_before_the_app_commits() -> None:
    seen = asyncio.run(acked_seen_by_commits(make_consumer(faust_aiokafka.Consumer)))
    assert seen == [{}]  # the defect the worker's consumer works around


def test_the_worker_consumer_commits_acked_offsets_before_a_revocation_forgets_them() -> None:
    seen = asyncio.run(acked_seen_by_commits(make_consumer(GuardedConsumer)))
    assert seen[0] == {TP0: [0, 1], TP1: [7]}


def test_seek_to_committed_rewinds_partitions_without_a_committed_offset() -> None:
    consumer = make_consumer(GuardedConsumer)
    committed: Mapping[TP, int | None] = {TP0: 12, TP1: None, TP2: 0}
    calls: list[Any] = []

    class Aiokafka:
        def assignment(self) -> set[TP]:
            return {TP0, TP1, TP2}

        async def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
            return {tp: 3 for tp in tps}

        def seek(self, tp: TP, offset: int) -> None:
            calls.append((tp, offset))

    aiokafka = Aiokafka()

    async def thread_seek_to_committed() -> Mapping[TP, int | None]:
        return committed

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    consumer._thread.seek_to_committed = thread_seek_to_committed
    consumer._thread.call_thread = call_thread
    consumer._thread._ensure_consumer = lambda: aiokafka
    assert asyncio.run(consumer.seek_to_committed()) == committed
    assert sorted(calls) == [(TP1, 3), (TP2, 3)]


def test_rewind_leaves_partitions_no_longer_assigned_alone() -> None:
    class Aiokafka:
        def assignment(self) -> set[TP]:
            return {TP0}

        async def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

        def seek(self, tp: TP, offset: int) -> None:
            raise AssertionError(f"seek of {tp}")

    assert asyncio.run(rewind_uncommitted(Aiokafka(), {TP0: 5, TP1: None})) == []


def test_the_worker_app_uses_the_guarded_consumer() -> None:
    app, _shell = build_app(Settings(store="memory://"))
    assert isinstance(app.consumer, GuardedConsumer)


def test_the_worker_consumer_fetches_with_its_own_wait_faust_fixes_1500() -> None:
    """`QRIS_FETCH_MAX_WAIT_MS` reaches the aiokafka consumer the worker's Faust consumer thread
    builds, and aiokafka's Fetcher reads the attribute it is written to (an upgrade that moves it
    fails here, not silently in production)."""
    import inspect

    import aiokafka

    async def built(cls: type[Any]) -> Any:
        app = faust.App("qris-consumer-test", broker="kafka://127.0.0.1:1")
        app.transport.Consumer = cls
        thread = app.consumer._thread
        return thread._create_worker_consumer(app.transport)

    assert asyncio.run(built(faust_aiokafka.Consumer))._fetch_max_wait_ms == 1500  # Faust's own
    assert asyncio.run(built(guarded_consumer(100)))._fetch_max_wait_ms == 100
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    app, _shell = build_app(Settings(fetch_max_wait_ms=250))
    assert app.transport.Consumer.fetch_max_wait_ms == 250
