"""Faust's aiokafka consumer with two narrow fixes for offsets it loses in a rebalance, and a
cheaper hand-over of fetched records to the agents (issue 9). Imports faust, mode and aiokafka
only, nothing of the decision path.

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

And one change of cost, not of behaviour: **a message is handed to the agent's channel without
four tasks.** Faust's drain loop (`Consumer._drain_messages`) runs, for every message,
`wait_first(callback(message), suspend_flow.wait())`: four tasks (the callback, the suspend
event, the consumer's stopped and crashed events) and an `asyncio.wait`, so that a callback
blocked when a rebalance suspends the flow is cancelled instead of deadlocking it. Almost
always the callback (the conductor: flow control, producer buffer, decode, a queue put) finishes
without waiting at all. Here its first step runs inline; only if it has to wait (a full queue,
the flow suspended, the conductor's lock taken) does the rest of it run under Faust's
`wait_first` as before, with the same abort on a suspend (`_drain_messages`). Before that, the
conductor's callback for the partition takes what it has room for synchronously, a fetched
partition's records at a time (`_deliver_fetch`, `intake.QuickHandler.room`/`put_all`): without the callback's chain
of coroutines, and with Faust's `getmany` checks once per run; else the message goes the way
above.

And a wait Faust adds when the agent falls behind: when the agent's buffer fills, Faust pauses
the partitions whose records went in (`on_buffer_full`) until it drains. With every partition
paused Faust sleeps a fixed second; with some paused, the next fetch (of the others, often
empty) waits up to a second while the paused ones, resumed meanwhile, wait with their records
already in memory. A bare agent lost four such seconds in a 60k-record backlog (9,000 records/s
instead of 22,000 at the same CPU per record). Here a resumed partition ends the first wait
(`_wait_next_records`) and a fetch waits at most `PAUSED_FETCH_WAIT_S` while any is paused.
Faust pauses only the partition whose record met the full buffer, so the next fetches (of the
partitions not yet paused) went on filling it until it was full and each further record took
Faust's slow path (a task per record and an `asyncio.wait`); here every partition feeding the
same agents is paused at once, and the app's buffer holds a whole fetch above its pause mark.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Set
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING, RecordMap
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service
from mode.utils.locks import Event

from ..topics import INPUT_ISOLATION
from .intake import adopt, fetched_message

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


class MessageResults(OrderedDict[Any, Any]):
    """aiokafka's fetched results by partition (`Fetcher._records`: a `FetchResult` or a
    `FetchError` each, stored as each fetch response is read) whose fetched records are unpacked
    into Faust's messages (`intake.fetched_message`) instead of aiokafka's `ConsumerRecord`s,
    which Faust's `_to_message` then copied into a message each: a third of the CPU aiokafka and
    the hand-over spent per record. aiokafka's `PartitionRecords` still unpacks, checks and skips
    (CRCs, control batches, aborted transactions, offsets before the fetch position) and keeps
    the position; only the object it builds of each record is another (its `_consumer_record`,
    per fetched partition; with a key or value deserializer it is left as it is).
    `tests/test_kafka_worker_consumer.py` fails if aiokafka stops calling either."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        build_messages(result)
        super().__setitem__(tp, result)


def build_messages(result: Any) -> None:
    records = getattr(result, "_partition_records", None)
    if records is not None and records._key_deserializer is None and records._value_deserializer is None:
        records._consumer_record = fetched_message


def unpack_into_messages(fetcher: Any) -> None:
    """Make an aiokafka `Fetcher` unpack what it fetches into Faust messages (`MessageResults`),
    also what it holds already; once (the results dict is replaced)."""
    if fetcher is not None and type(fetcher._records) is not MessageResults:
        for result in fetcher._records.values():
            build_messages(result)
        fetcher._records = MessageResults(fetcher._records)


class QuickFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread whose worker consumer waits at most the consumer class's
    `fetch_max_wait_ms` for a fetch, and unpacks fetched records straight into Faust's messages
    (`MessageResults`). Faust fixes aiokafka's `fetch_max_wait_ms` at 1500 with no
    setting; aiokafka keeps one fetch in flight per broker, so a fetch of partitions with nothing
    new (the signals topic, a caught-up partition) holds back the next records of every other
    partition for up to that long, and a refund whose deadline they pass with it (measured with
    `bench/refund_latency.py`: p99 549 ms at 1,000 records/s with 1500, 329 ms with 100)."""

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # In the consumer thread, where aiokafka's fetcher runs (it exists once the consumer started).
        unpack_into_messages(consumer._fetcher)
        return await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when the consumer starts (`AIOKafkaConsumer.start` builds its Fetcher
        # from it); a test checks that an upgrade keeps that so.
        consumer._fetch_max_wait_ms = cast(GuardedConsumer, self.consumer).fetch_max_wait_ms
        # Committed records only (Faust reads uncommitted ones unless the app is exactly-once): a
        # core-banking producer's aborted transaction holds debits that never happened, and
        # refunding them pays money never taken. `dump`, replay from Kafka and the worker's other
        # readers of the input topics read the same (`topics.INPUT_ISOLATION`), so live equals replay.
        consumer._isolation_level = INPUT_ISOLATION
        return consumer


# The longest a fetch waits while some partitions are paused (`_drain_messages`).
PAUSED_FETCH_WAIT_S = 0.05


class GuardedConsumer(faust_aiokafka.Consumer):
    """The app's consumer (`build_app` installs `guarded_consumer(...)` on the transport)."""

    fetch_max_wait_ms: ClassVar[int] = 1500  # Faust's own value; `guarded_consumer` sets the worker's
    # Makes the batches decided so far durable and acks them (the shell's group commit), so that
    # the commit before a revocation covers them; set by `build_app` on the app's class.
    before_revocation: ClassVar[list[Callable[[], Awaitable[None]]]] = []

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return QuickFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        if revoked and not self.app.client_only:
            try:
                for durable in self.before_revocation:
                    await durable()
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

    _resumed: Event | None = None

    def on_buffer_full(self, tp: TP) -> None:
        # Faust pauses only `tp`, so the next fetches (each up to `broker_max_poll_records`) go on
        # filling the agent's buffer with the other partitions until it is full and every further
        # record waits in Faust's slow path (tasks and an asyncio.wait each). Every partition
        # feeding the same agents is paused at once: at most the rest of one fetch goes in.
        for shared in self._feeding_the_same_agents(tp):
            super().on_buffer_full(shared)

    def on_buffer_drop(self, tp: TP) -> None:
        for shared in self._feeding_the_same_agents(tp):
            super().on_buffer_drop(shared)
        if self._resumed is not None:
            self._resumed.set()

    def _feeding_the_same_agents(self, tp: TP) -> list[TP]:
        """`tp` and every other assigned partition of the topics of the channels `tp` feeds."""
        names = {name for channel in self.app.topics if tp.topic in channel.topics for name in channel.topics}
        known = self._get_active_partitions() | self._buffered_partitions
        return [tp, *(other for other in known if other.topic in names and other != tp)]

    async def _wait_next_records(self, timeout: float) -> tuple[RecordMap | None, set[TP] | None]:
        """Faust's, but when every partition is paused because the agent's buffer is full,
        fetching resumes as soon as the buffer drains (`on_buffer_drop`) instead of after Faust's
        fixed `sleep(1)`: a drain loop quick enough to fill the buffer would otherwise idle up
        to a second each time (seen: a bare agent's wall rate halved, its CPU per record not)."""
        if self.flow_active and not self.app.client_only:
            if self._resumed is None:
                self._resumed = Event()
            self._resumed.clear()  # before looking, so a drop from now on is seen
            if not self._get_active_partitions():
                await self.wait_for_stopped(self._resumed, timeout=1.0)
                if not self._get_active_partitions():
                    return {}, set()  # as Faust after its sleep: nothing fetched, try again
        return await super()._wait_next_records(timeout)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run on the broker
        """Faust 0.15.3's drain loop (`faust/transport/consumer.py`, with its `getmany` inlined;
        the same logging and errors; `tests/test_worker_consumer.py` fails if Faust's changes):
        every fetched message of a partition at or past its read offset goes to the conductor's
        callback, but a fetched partition's messages at a time (`_deliver_fetch`)."""
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        app: Any = self.app

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                # Faust waits up to 1 s for a fetch. While partitions are paused (the agent's
                # buffer was full), the fetch covers only the others, which may have nothing:
                # a paused partition resumed meanwhile waited for that second with its records
                # in memory (seen: four 1-second stalls in a 60k-record backlog).
                timeout = PAUSED_FETCH_WAIT_S if self._buffered_partitions else 1.0

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    # Faust's `getmany`, up to its iteration.
                    records, active_partitions = await self._wait_next_records(timeout)
                    generation_id = app.consumer_generation_id
                    if records is not None and not self.should_stop:
                        if self.flow_active:
                            await self._deliver_fetch(records, active_partitions, generation_id)
                        else:
                            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
                            try:
                                await self.perform_seek()
                            except Exception as ex:
                                self.log.warning(f"exception performing seek when flow not active {ex}")
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    async def _deliver_fetch(self, records: RecordMap, active_partitions: Set[TP] | None, generation_id: int) -> None:
        """One fetch's records (Faust's messages built in the consumer thread, `MessageResults`,
        or aiokafka's records, by partition) to the conductor, as Faust's `getmany`
        and drain loop hand them over one at a time: a record goes on only while the flow is
        active and the consumer generation is the fetch's (else the rest of the fetch is
        dropped; it is fetched again after the rebalance's seek), only if its partition was
        being fetched; one below the read offset is dropped, a gap after it is noted first
        (`_add_gap`), acked offsets are committed every `broker_commit_every` acks, and the read
        offset is set once the conductor took it. While the flow is suspended, a record goes to
        the callback under `wait_first` with the suspend event, as in Faust.

        The difference is the grain. Faust converts, checks and hands over one message per loop
        round (an async generator step, the round-robin `TopicBuffer`, `_to_message`, a callback
        call each). Here a partition's records go in runs: what the conductor's fast path has
        room for (`QuickHandler.room`/`put_all`) and needs no wait goes into the agent's queue at
        once (one pressure check, the events built without `__init__` calls, the messages
        already built: `intake.adopt`), with the checks above made once per run, which is exact because
        nothing they read changes until the event loop runs something else (the acks and
        rebalances that change them run in other tasks). A record that needs a wait (a gap, a
        commit, a full queue, the conductor's lock) goes Faust's way alone. Partitions are
        handed over one after the other, not interleaved record by record (`getmany`'s
        round-robin): each partition's order is the same, and the agent's batch takes whole
        fetches anyway. The event loop runs between runs, not every 100 records."""
        app: Any = self.app
        conductor: Any = app.topics
        callback = self.callback
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = conductor.acks_enabled_for
        buffered = self._buffered_partitions
        track_end = app.monitor.track_tp_end_offset
        for tp, fetched in records.items():
            tp_records = adopt(tp, fetched, generation_id)
            n = len(tp_records)
            i = 0
            gap_noted = -1
            while i < n:
                # `getmany`'s checks before each record; nothing they read changes in a run
                if not self.flow_active or app.consumer_generation_id != generation_id:
                    return
                if not (active_partitions is None or tp in active_partitions or tp in buffered):
                    i += 1
                    continue
                track_end(tp, self.highwater(tp))
                record = tp_records[i]
                offset = record.offset
                r_offset = get_read_offset(tp)
                if r_offset is not None and offset < r_offset:
                    self.log.dev("DROPPED MESSAGE ROFF %r", offset)  # (not its key and value: customer data)
                    i += 1
                    continue
                if offset - (r_offset or 0) > 1 and r_offset and gap_noted != i:
                    # We have a gap in income messages
                    gap_noted = i
                    if acks_enabled_for(record.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                if not suspended() and not conductor._tp_to_callback_lock.locked():
                    handler = conductor._tp_to_callback.get(tp)
                    room = getattr(handler, "room", None)
                    queue, free = room() if room is not None else (None, 0)
                    if free:
                        # The run from record i: what the queue has room for, up to a gap.
                        run = [record]
                        last = offset
                        j = i + 1
                        while j < n and len(run) < free:
                            nxt = tp_records[j]
                            offset = nxt.offset
                            if offset < last:
                                self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                            elif offset - last > 1:
                                break  # a gap: noted first, at the head of the next run
                            else:
                                run.append(nxt)
                                last = offset
                            j += 1
                        handler.put_all(queue, run)
                        set_read_offset(tp, last)
                        i = j
                        await asyncio.sleep(0)  # as Faust's loop every 100 messages
                        continue
                if suspended():
                    await self.wait_first(callback(record), self.suspend_flow.wait())
                else:
                    rest = start_inline(callback(record))
                    if rest is not None:
                        await self.wait_first(rest, self.suspend_flow.wait())
                set_read_offset(tp, offset)
                i += 1


class Rest(Coroutine[Any, Any, Any]):
    """The rest of an awaitable whose first step has run and yielded `waiting` (what it waits
    for) to the event loop: a coroutine that goes on from there. A task running it is first
    handed `waiting`, then drives the awaitable on; a cancellation or exception thrown in, even
    before the task's first step, goes into the awaitable where it waits, as it would have gone
    into a task running the awaitable from its start (so its own clean-up runs, as in Faust)."""

    __slots__ = ("_steps", "_waiting", "_handed")

    def __init__(self, steps: Generator[Any, Any, Any], waiting: Any) -> None:
        self._steps = steps
        self._waiting = waiting
        self._handed = False

    def send(self, value: Any) -> Any:
        if not self._handed:  # a task's first step: it waits for what the first step waits for
            self._handed = True
            return self._waiting
        return self._steps.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if not self._handed:
            # Thrown in before a task ever waited on `waiting`: a task cancelled while waiting
            # cancels what it waits for; so is this.
            self._handed = True
            if asyncio.isfuture(self._waiting):
                self._waiting.cancel()
        if val is None and tb is None:
            return self._steps.throw(typ)
        return self._steps.throw(typ, val, tb)  # the three-argument form, as it came

    def close(self) -> None:
        self._steps.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        return self  # an iterator with send/throw/close, as a generator

    def __iter__(self) -> Rest:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def start_inline(awaitable: Awaitable[Any]) -> Rest | None:
    """Run `awaitable` (a coroutine) up to its first wait, here and now, as Python 3.12's eager
    tasks do: None when it finished without waiting (its result is dropped; an exception it
    raised propagates), else what is left of it, to be awaited. Nothing else runs on the event
    loop meanwhile."""
    steps = awaitable.__await__()
    try:
        waiting = steps.send(None)
    except StopIteration:
        return None
    return Rest(steps, waiting)


def guarded_consumer(fetch_max_wait_ms: int) -> type[GuardedConsumer]:
    """The worker's consumer class with its fetch wait (`QRIS_FETCH_MAX_WAIT_MS`)."""
    return type(
        "GuardedConsumer", (GuardedConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms, "before_revocation": []}
    )


def _names(tps: list[Any], most: int = 6) -> str:
    named = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps[:most])
    return named if len(tps) <= most else f"{named} and {len(tps) - most} more"
