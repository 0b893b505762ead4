"""The worker's Faust consumer (`stream/worker/consumer.py`): acked offsets are committed before a
revocation forgets them, and a seek back to committed offsets also rewinds partitions that have
none. Faust's own consumer is checked too, so a Faust upgrade that fixes or moves the defects is
noticed. No broker: the consumer is built, not started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.settings import Settings
from stream.worker.app import build_app
from stream.worker.consumer import (
    PAUSED_FETCH_WAIT_S,
    GuardedConsumer,
    guarded_consumer,
    rewind_uncommitted,
    start_inline,
)

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


def test_before_a_revocation_the_decided_batches_are_acked_first_and_the_commit_covers_them() -> None:
    """The shell's group commit acks batches after they are durable: the consumer's commit before
    a revocation asks for that first (`before_revocation`), so it commits their offsets too."""
    cls = guarded_consumer(100)
    consumer = make_consumer(cls)

    async def durable() -> None:  # what the shell's commit ends with: the batch's acks
        consumer._acked[TP1].append(8)
        consumer._acked_index[TP1].add(8)

    cls.before_revocation.append(durable)
    seen = asyncio.run(acked_seen_by_commits(consumer))
    assert seen[0] == {TP0: [0, 1], TP1: [7, 8]}
    assert guarded_consumer(100).before_revocation == []  # each app's class has its own


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


# --- The drain loop: a message's callback runs inline unless it has to wait -------------------


def test_start_inline_runs_a_coroutine_that_does_not_wait_to_its_end_before_anything_else() -> None:
    order: list[str] = []

    async def deliver() -> None:
        order.append("delivered")

    async def main() -> None:
        asyncio.get_running_loop().call_soon(order.append, "other work")
        assert start_inline(deliver()) is None
        order.append("after")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert order == ["delivered", "after", "other work"]


def test_start_inline_hands_back_the_rest_of_a_coroutine_that_waits_and_awaiting_it_finishes_it() -> None:
    steps: list[str] = []

    async def deliver(gate: asyncio.Event) -> str:
        steps.append("first step")
        await gate.wait()
        await asyncio.sleep(0)
        steps.append("rest")
        return "done"

    async def main() -> str:
        gate = asyncio.Event()
        rest = start_inline(deliver(gate))
        assert rest is not None and steps == ["first step"]
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0.01)
        assert not task.done()
        gate.set()
        return await task

    assert asyncio.run(main()) == "done"
    assert steps == ["first step", "rest"]


def test_the_rest_of_a_coroutine_is_cancelled_inside_it_and_its_errors_propagate() -> None:
    seen: list[str] = []

    async def blocked() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def fails_after_a_wait() -> None:
        await asyncio.sleep(0)
        raise ValueError("after the wait")

    async def fails_at_once() -> None:
        raise KeyError("first step")

    async def main() -> None:
        rest = start_inline(blocked())
        assert rest is not None
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rest = start_inline(fails_after_a_wait())
        assert rest is not None
        with pytest.raises(ValueError, match="after the wait"):
            await rest
        with pytest.raises(KeyError):
            start_inline(fails_at_once())

    asyncio.run(main())
    assert seen == ["cancelled inside"]


def record(tp: TP, offset: int, value: bytes = b"v") -> ConsumerRecord[bytes, bytes]:
    """A record as aiokafka's fetcher hands it to Faust's `getmany`."""
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 1_700_000_000_000 + offset, 0, b"k", value, None, 1, len(value), ()
    )


LATER = -2


async def drained(
    cls: type[Any], fetch: dict[TP, list[int]], block_at: int, suspend_at: int, app: Any = None
) -> dict[str, Any]:
    """Run `cls`'s drain loop (Faust's `getmany` included) over one fetch (offsets by partition).
    The callback of TP0's offset `block_at` waits for an event that never comes; the flow is
    suspended (as a rebalance does) when the callback of TP0's offset `suspend_at` runs (`LATER`:
    50 ms after the blocked callback started). What was delivered, by partition in order, which
    callbacks were aborted, and the read offsets at the end."""
    consumer = make_consumer(cls) if app is None else app.consumer
    fetcher = type("Fetcher", (), {"_stopped": asyncio.Event()})()
    delivered: dict[TP, list[int]] = {}
    aborted: list[int] = []

    async def callback(message: Any) -> None:
        if (message.tp, message.offset) == (TP0, suspend_at):
            consumer.stop_flow()
        if (message.tp, message.offset) == (TP0, block_at):
            if suspend_at == LATER:
                asyncio.get_running_loop().call_later(0.05, consumer.stop_flow)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                aborted.append(message.offset)
                raise
        delivered.setdefault(message.tp, []).append(message.offset)

    async def wait_next_records(timeout: float) -> Any:
        if fetcher._stopped.is_set():
            return None, None
        fetcher._stopped.set()  # one fetch, then the loop ends
        return {tp: [record(tp, offset) for offset in offsets] for tp, offsets in fetch.items()}, None

    waits = [0]
    wait_first = consumer.wait_first

    async def counted_wait_first(*coros: Any, **kwargs: Any) -> Any:
        waits[0] += 1  # four tasks and an asyncio.wait each
        return await wait_first(*coros, **kwargs)

    consumer.callback = callback
    consumer._wait_next_records = wait_next_records
    consumer.highwater = lambda tp: 1000
    consumer.wait_first = counted_wait_first
    await asyncio.wait_for(consumer._drain_messages(fetcher), 10)
    return {"delivered": delivered, "aborted": aborted, "read": dict(consumer._read_offset), "waits": waits[0]}


@pytest.mark.parametrize(("block_at", "suspend_at"), [(-1, -1), (3, LATER), (3, 3), (5, 2)])
def test_the_worker_drain_loop_delivers_and_aborts_exactly_as_fausts(block_at: int, suspend_at: int) -> None:
    """The same fetch of one partition through Faust's loop and the worker's: the same messages
    delivered in the same order, the same blocked callback aborted when the flow is suspended (no
    deadlock), nothing delivered after the suspend (the rest of the fetch is fetched again after
    the rebalance), the same read offsets. Offset 4 comes again after 5 (below the read offset:
    dropped by both); 6 is missing (a gap)."""
    fetch = {TP0: [0, 1, 2, 3, 5, 4, 7, 8]}
    fausts = asyncio.run(drained(faust_aiokafka.Consumer, fetch, block_at, suspend_at))
    workers = asyncio.run(drained(GuardedConsumer, fetch, block_at, suspend_at))
    fausts_waits, workers_waits = fausts.pop("waits"), workers.pop("waits")
    assert workers == fausts
    # The worker's loop waits only for a callback that has to wait, and while the flow is suspended.
    assert workers_waits == len(workers["aborted"])
    assert fausts_waits == len(fausts["delivered"].get(TP0, [])) + len(fausts["aborted"])
    if block_at < 0:
        assert fausts["delivered"] == {TP0: [0, 1, 2, 3, 5, 7, 8]} and fausts["read"] == {TP0: 8}
    elif suspend_at in (LATER, block_at):  # the blocked callback was aborted, nothing after it delivered
        assert fausts["aborted"] == [block_at] and fausts["delivered"][TP0] == [0, 1, 2]
    else:  # suspended first: nothing after the suspending message delivered, nothing blocked
        assert fausts["aborted"] == [] and fausts["delivered"][TP0] == [0, 1, 2]


def test_the_worker_drain_loop_delivers_each_partition_in_fausts_order() -> None:
    """Several partitions: Faust interleaves them record by record, the worker's loop hands them
    over one partition after the other; each partition's messages and the read offsets are the same."""
    fetch = {TP0: [0, 1, 2, 5, 3, 6], TP1: [100, 101, 106], TP2: [7]}
    fausts = asyncio.run(drained(faust_aiokafka.Consumer, fetch, -1, -1))
    workers = asyncio.run(drained(GuardedConsumer, fetch, -1, -1))
    assert workers["waits"] == 0
    assert workers["delivered"] == fausts["delivered"] == {TP0: [0, 1, 2, 5, 6], TP1: [100, 101, 106], TP2: [7]}
    assert workers["read"] == fausts["read"]


def test_the_worker_drain_loop_is_fausts_0_15_3_loop() -> None:
    """`GuardedConsumer._drain_messages` is a copy of Faust 0.15.3's but for the callback: a Faust
    upgrade that changes Faust's loop fails here, to be copied again."""
    import hashlib
    import inspect

    from faust.transport.consumer import Consumer

    source = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "44a2500309e83c63", source


def test_fetching_resumes_as_soon_as_the_agents_buffer_drains_not_after_fausts_second() -> None:
    """Every partition paused by a full buffer: Faust's `_wait_next_records` sleeps a fixed
    second; the worker's returns to fetching when a partition is resumed (`on_buffer_drop`)."""

    async def wait_with_drop_after(cls: type[Any], drop_after_s: float) -> tuple[float, Any]:
        consumer = make_consumer(cls)
        consumer._active_partitions = set()
        consumer._buffered_partitions = {TP0}

        async def getmany(active_partitions: Any, timeout: float) -> Any:
            return {tp: [f"record of {tp.partition}"] for tp in active_partitions}

        consumer._getmany = getmany
        asyncio.get_running_loop().call_later(drop_after_s, consumer.on_buffer_drop, TP0)
        started = time.monotonic()
        records, _active = await consumer._wait_next_records(5.0)
        return time.monotonic() - started, records

    fausts_s, fausts = asyncio.run(wait_with_drop_after(faust_aiokafka.Consumer, 0.05))
    workers_s, workers = asyncio.run(wait_with_drop_after(GuardedConsumer, 0.05))
    assert fausts_s >= 0.95 and fausts == {}  # slept its second, fetched nothing
    assert workers_s < 0.5 and workers == {TP0: ["record of 0"]}
    nothing_s, nothing = asyncio.run(wait_with_drop_after(GuardedConsumer, 3.0))
    assert 0.95 <= nothing_s < 2.0 and nothing == {}  # no drop: a second, as Faust


def test_a_fetch_waits_briefly_while_partitions_are_paused() -> None:
    """While the agent's buffer has paused partitions, a fetch of the others (which may have
    nothing) must not hold back the paused ones, once resumed, for Faust's whole second."""

    async def fetch_waits(paused: set[TP]) -> list[float]:
        consumer = make_consumer(GuardedConsumer)
        consumer._buffered_partitions = set(paused)
        fetcher = type("Fetcher", (), {"_stopped": asyncio.Event()})()
        waits: list[float] = []

        async def wait_next_records(timeout: float) -> Any:
            waits.append(timeout)
            fetcher._stopped.set()
            return {}, set()  # nothing fetched

        consumer._wait_next_records = wait_next_records
        await consumer._drain_messages(fetcher)
        return waits

    assert asyncio.run(fetch_waits(set())) == [1.0]  # Faust's wait
    assert asyncio.run(fetch_waits({TP0})) == [PAUSED_FETCH_WAIT_S]
    assert PAUSED_FETCH_WAIT_S <= 0.1


def test_the_worker_app_keeps_no_per_event_statistics_in_fausts_monitor() -> None:
    """Faust calls its monitor for every message and event (a dict per event); nothing reads them
    here, so the app's monitor (`QuietMonitor`) skips them and still records the rest."""
    from faust.sensors import Monitor

    from stream.worker.app import QuietMonitor

    app, _shell = build_app(Settings(store="memory://"))
    monitor = app.monitor
    assert isinstance(monitor, QuietMonitor)
    message: Any = type("Message", (), {"time_in": None})()
    monitor.on_message_in(TP0, 5, message)
    assert monitor.on_stream_event_in(TP0, 5, object(), object()) is None
    monitor.on_stream_event_out(TP0, 5, object(), object(), None)
    monitor.on_message_out(TP0, 5, message)
    monitor.track_tp_end_offset(TP0, 9)
    assert (monitor.messages_received_total, monitor.events_total, dict(monitor.tp_end_offsets)) == (0, 0, {})
    assert message.time_in is None
    per_event = ["on_message_in", "on_stream_event_in", "on_stream_event_out", "on_message_out", "track_tp_end_offset"]
    assert all(getattr(QuietMonitor, name) is not getattr(Monitor, name) for name in per_event)
    monitor.on_topic_buffer_full(TP0)  # not per event: still counted
    assert monitor.topic_buffer_full[TP0] == 1


def test_a_full_agent_buffer_pauses_every_partition_feeding_it_and_its_drain_resumes_them_all() -> None:
    """Faust pauses only the partition whose record met the full buffer; the worker's consumer
    pauses every partition of the topics feeding the same agent (not those of other agents),
    so at most the rest of one fetch goes in, and resumes them all when the buffer drains."""
    consumer = make_consumer(GuardedConsumer)
    app = consumer.app
    inputs = app.topic("payments", "ledger", key_type=bytes, value_type=bytes)
    signals = app.topic("signals", key_type=bytes, value_type=bytes)
    app.topics.add(inputs)
    app.topics.add(signals)
    tps = {TP(t, p) for t in ("payments", "ledger") for p in (0, 1)}
    sig = TP("signals", 0)
    consumer._active_partitions = {*tps, sig}
    consumer.on_buffer_full(TP("ledger", 1))
    assert (consumer._active_partitions, consumer._buffered_partitions) == ({sig}, tps)
    consumer.on_buffer_drop(TP("payments", 0))
    assert (consumer._active_partitions, consumer._buffered_partitions) == ({*tps, sig}, set())
    consumer.on_buffer_full(sig)
    assert (consumer._active_partitions, consumer._buffered_partitions) == (tps, {sig})
    fausts = make_consumer(faust_aiokafka.Consumer)
    fausts._active_partitions = {*tps, sig}
    fausts.on_buffer_full(TP("ledger", 1))
    assert fausts._buffered_partitions == {TP("ledger", 1)}  # Faust's own: that one only


def test_the_agents_buffer_holds_a_whole_fetch_above_its_pause_mark() -> None:
    from mode.utils.queues import FlowControlQueue

    for batch_max in (1, 500, 2000, 5000, 20000):
        conf = build_app(Settings(store="memory://", batch_max=batch_max))[0].conf
        pause_mark = conf.stream_buffer_maxsize / FlowControlQueue.pressure_high_ratio
        assert conf.stream_buffer_maxsize - pause_mark >= conf.broker_max_poll_records


async def queued_by_drain(
    quick: bool, fetch: dict[TP, list[int]], maxsize: int = 0, built: bool = False
) -> dict[str, Any]:
    """One fetch through the drain loop of the worker's app with its conductor (`quick`) or with
    Faust's drain loop and Faust's conductor callbacks: what the agent's queue holds (per event:
    type, key, value, headers, message fields), the read offsets, the partitions paused. `built`:
    the fetch holds the messages the worker's consumer thread builds (`intake.fetched_message`),
    else aiokafka's records."""
    from faust.transport.conductor import Conductor

    from stream.worker.app import faust_app, raw_topic
    from stream.worker.intake import fetched_message

    app: Any = faust_app(Settings(store="memory://", web_port=0))
    if maxsize:
        app.conf.stream_buffer_maxsize = maxsize
    app.flow_control.resume()
    topics = ("ledger-debits", "payment-requests")
    app.topics._acking_topics.update(topics)
    stream = app.stream(raw_topic(app, *topics))
    conductor = app.topics
    consumer = app.consumer
    paused: list[TP] = []
    consumer.on_buffer_full = paused.append  # before the callbacks are built: they keep it
    for tp in fetch:
        build = conductor._build_handler if quick else partial(Conductor._build_handler, conductor)
        conductor._tp_to_callback[tp] = build(tp, set(conductor._topics))
    consumer.callback = conductor.on_message
    fetcher = type("Fetcher", (), {"_stopped": asyncio.Event()})()

    async def wait_next_records(timeout: float) -> Any:
        if fetcher._stopped.is_set():
            return None, None
        fetcher._stopped.set()
        made = fetched_message if built else (lambda tp, r: r)
        return {
            tp: [made(tp, record(tp, offset, b"v%d" % offset)) for offset in offsets] for tp, offsets in fetch.items()
        }, None

    consumer._wait_next_records = wait_next_records
    consumer.highwater = lambda tp: 1000
    drain = consumer._drain_messages if quick else partial(faust_aiokafka.Consumer._drain_messages, consumer)
    queue = cast(Any, stream.channel).queue
    task = asyncio.ensure_future(drain(fetcher))
    await asyncio.sleep(0.2)
    held = list(queue._queue)
    took = 0
    while not task.done():  # a full queue: the agent takes what is there, the loop goes on
        took += len(queue._queue)
        for _ in range(len(queue._queue)):
            queue.get_nowait()
        await asyncio.sleep(0.05)
    await task
    fields = ("topic", "partition", "offset", "timestamp", "timestamp_type", "headers", "key", "value", "checksum")
    fields += ("serialized_key_size", "serialized_value_size", "acked", "refcount", "tp", "tracked", "generation_id")
    fields += ("time_in", "time_out", "time_total")
    by_tp: dict[TP, list[Any]] = {}
    for e in held:
        m = e.message
        by_tp.setdefault(m.tp, []).append(
            (type(e), type(m), e.key, e.value, e.headers, e.acked, e.app is app, *(getattr(m, f) for f in fields))
        )
    return {"queued": by_tp, "read": dict(consumer._read_offset), "paused": paused, "took": took + len(held)}


@pytest.mark.parametrize("built", [True, False])
def test_the_worker_drain_loop_queues_what_fausts_loop_and_conductor_queue(built: bool) -> None:
    """The conductor's fast path for a fetched partition's records at once (`QuickHandler.put_all`,
    the messages and events built without `__init__`): the same events, messages (every slot) and
    read offsets as Faust's drain loop, `getmany`, `_to_message` and conductor callbacks, from
    the messages the worker's consumer thread builds or from aiokafka's records."""
    fetch = {TP0: [0, 1, 2, 5, 3, 6], TP1: [100, 101, 106], TP2: [7]}
    fausts = asyncio.run(queued_by_drain(False, fetch))
    workers = asyncio.run(queued_by_drain(True, fetch, built=built))
    assert workers == fausts
    assert [row[9] for row in workers["queued"][TP0]] == [0, 1, 2, 5, 6]


def test_a_fetch_over_the_agents_buffer_pauses_its_partition_and_waits_as_fausts() -> None:
    """A fetch larger than the agent's buffer: the fast path fills it, the partition is paused at
    the buffer's high mark once per fill (as Faust's per-event pressure check), the rest waits for room."""
    fetch = {TP0: list(range(30))}
    fausts = asyncio.run(queued_by_drain(False, fetch, maxsize=10))
    workers = asyncio.run(queued_by_drain(True, fetch, maxsize=10, built=True))
    assert workers == fausts
    assert workers["paused"] == [TP0] * 3 and workers["took"] == 30  # paused once per fill, resumed by each take
    assert len(workers["queued"][TP0]) == 10


MESSAGE_SLOTS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "headers", "key", "value", "checksum")
MESSAGE_SLOTS += ("serialized_key_size", "serialized_value_size", "acked", "refcount", "tp", "tracked", "generation_id")
MESSAGE_SLOTS += ("time_in", "time_out", "time_total")


def fetched_bytes(batches: list[list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]]) -> bytes:
    """Record batches as the broker returns them in a fetch (offsets from 0 on)."""
    import struct

    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    out = bytearray()
    offset = 0
    for batch in batches:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for i, (key, value, headers) in enumerate(batch):
            assert builder.append(i, timestamp=1_700_000_000_000 + offset + i, key=key, value=value, headers=headers)
        data = builder.build()
        data[0:8] = struct.pack(">q", offset)  # the base offset, as the broker sets it
        out += data
        offset += len(batch)
    return bytes(out)


def test_fetched_records_unpack_into_the_messages_faust_makes_of_aiokafkas_records() -> None:
    """aiokafka's unpacking of a fetched partition, hooked by the worker's consumer thread
    (`MessageResults`, `intake.fetched_message`, then `intake.adopt` in the drain loop): every
    slot of every message is what Faust's `_to_message` makes of the `ConsumerRecord` aiokafka
    builds unhooked, for keys and values or none, headers, several batches, and a fetch from
    the middle of a batch (the records before its offset skipped as aiokafka skips them)."""
    from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from stream.worker.consumer import MessageResults
    from stream.worker.intake import adopt

    data = fetched_bytes(
        [
            [(b"k0", b"v0", []), (None, b"v1", []), (b"k2", None, [("h", b"x"), ("g", b"")])],
            [(b"k%d" % i, b"value %d" % i, []) for i in range(3, 40)],
        ]
    )
    tp = TopicPartition("ledger-debits", 0)
    app = type("App", (), {"consumer_generation_id": 7})()
    faust_consumer = type("Consumer", (), {"app": app})()
    for fetch_offset, first in ((0, 0), (1, 1), (2, 2)):

        def records(fetch_offset: int) -> Any:
            return PartitionRecords(tp, MemoryRecords(data), [], fetch_offset, None, None, True, "read_uncommitted")

        plain = records(fetch_offset)
        fausts = [faust_aiokafka.Consumer._to_message(cast(Any, faust_consumer), tp, r) for r in plain]
        results: MessageResults = MessageResults()
        results[tp] = FetchResult(tp, assignment=None, partition_records=records(fetch_offset), backoff=0)
        hooked = results[tp]._partition_records
        workers = adopt(tp, list(hooked), 7)
        assert [type(m) for m in workers] == [type(m) for m in fausts]
        assert [[getattr(m, s) for s in MESSAGE_SLOTS] for m in workers] == [
            [getattr(m, s) for s in MESSAGE_SLOTS] for m in fausts
        ]
        assert [m.offset for m in workers] == list(range(first, 40))
        assert hooked.next_fetch_offset == plain.next_fetch_offset == 40


def test_records_of_a_deserializing_fetcher_are_left_to_aiokafka_and_converted_as_faust() -> None:
    from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import ConsumerRecord as AioRecord
    from aiokafka.structs import TopicPartition

    from stream.worker.consumer import MessageResults
    from stream.worker.intake import adopt

    tp = TopicPartition("ledger-debits", 0)
    data = fetched_bytes([[(b"k", b"v", [])]])
    records = PartitionRecords(tp, MemoryRecords(data), [], 0, bytes.upper, None, True, "read_uncommitted")
    results: MessageResults = MessageResults()
    results[tp] = FetchResult(tp, assignment=None, partition_records=records, backoff=0)
    fetched = list(records)
    assert [type(r) for r in fetched] == [AioRecord] and fetched[0].key == b"K"
    (message,) = adopt(tp, fetched, 3)
    assert (message.key, message.offset, message.generation_id, message.tp) == (b"K", 0, 3, tp)


def test_the_consumer_thread_unpacks_its_fetches_into_messages() -> None:
    """The worker's consumer thread hooks its aiokafka fetcher before each fetch is drained,
    also what it had fetched already."""
    from collections import OrderedDict

    from stream.worker.consumer import MessageResults, QuickFetchThread

    consumer = make_consumer(guarded_consumer(100))
    consumer.stop_flow()  # Faust's fetch returns nothing then, after the hook
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, QuickFetchThread)
    held = object()
    fetcher = type("Fetcher", (), {"_records": OrderedDict([("tp", held)]), "_closed": False})()
    aiokafka_consumer = type("AIOKafkaConsumer", (), {"_fetcher": fetcher, "_closed": False})()
    assert asyncio.run(thread._fetch_records(aiokafka_consumer, set(), timeout=0)) == {}  # the flow is stopped
    assert type(fetcher._records) is MessageResults and list(fetcher._records.items()) == [("tp", held)]
