"""How records reach the worker's agents through Faust, at less cost per record (issue 9): the
conductor hands a fetched message to the agent's channel without a chain of coroutines when it
need not wait (`QuickConductor`, `QuickHandler`), raw topics build their events without Faust's
codec registry (`RawSchema`), and the agents take whole batches straight from the channel's queue
(`take_batches`). Faust agents stay the way records enter. Imports faust and mode only, nothing
of the decision path.

Faust's `Stream.take_events` takes one event per loop round trip: its stream iterator sleeps
(`sleep(0)`) before every event, runs the buffer's processor on it, calls the sensors, sets the
current event, and acks every event of the batch one by one (issue 9: about a third of a bare
agent's CPU per record). `take_batches` gives the agent the same batches (at most `max_` events,
or what came within `within_s`) with Faust's checks and bookkeeping done once per batch:

* an event taken while the flow is suspended or of an older consumer generation (fetched before
  a rebalance) is left out and not acked, as by Faust's compiled iterator (the app's; Faust's
  pure-Python one acks it): its partition is sought back to its committed offset at the
  rebalance, so it comes again, and an ack could let a commit pass records not processed yet;
* a batch being filled or handed out is tracked as unacked (Faust's `Consumer.track_message`),
  so a revocation waits for it (`Consumer.wait_empty`, which waits while the consumer's set of
  unacked messages is not empty): by one of its messages, not each (a `WeakSet` add and discard
  per message was 2% of the live worker), until the whole batch is acked;
* a batch is acked when the agent comes back for the next one (or leaves the loop), never
  before: `_ack_batch` is Faust's `Message.ack` and `Consumer.ack` for the whole batch under
  Faust's `ack_lock` (`tests/test_worker_intake.py` pins the Faust source it copies);
* taking from the queue does what Faust's `get_nowait` does per event: waiting putters (a
  conductor blocked on a full queue) are woken, and the queue's pressure-drop callbacks run
  (they resume the partitions paused when the buffer filled, `GuardedConsumer.on_buffer_drop`);
* an error thrown into the channel is raised in the agent, except `StopAsyncIteration` (how
  Faust stops an actor, `Actor.cancel`), which ends the batches.

The app's sensors are only the `QuietMonitor`, which keeps nothing per event, so the per-event
sensor calls (`on_message_in`, `on_stream_event_in/out`, `on_message_out`) are not made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import faust
from faust.transport._cython.conductor import ConductorHandler as _FaustsHandler  # type: ignore[import-not-found]
from faust.transport.conductor import Conductor
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify


class RawSchema(faust.Schema[bytes, bytes]):
    """Raw bytes in, raw bytes out, as `key_serializer="raw"`/`value_serializer="raw"` with
    `bytes` types: the message's key and value are the event's. Faust's decode passes each
    through its codec registry (a codec lookup, the raw codec, `want_bytes`) and finds the
    event class in the app's settings per message; sending is Faust's, unchanged."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, **kwargs: Any) -> Any:
        event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


class QuickHandler(_FaustsHandler):  # type: ignore[misc]  # Faust's compiled class is untyped
    """Faust's compiled conductor callback for one partition (`ConductorHandler`, what Faust's
    conductor uses when compiled) with a synchronous fast path, `room()` then `put_all(queue,
    messages)`, which the worker's drain loop tries first (`GuardedConsumer._deliver_fetch`):
    for one channel of raw bytes (`RawSchema`) with room in its queue, the flow active and the
    producer's buffer not over its mark, it does for a run of messages what the callback does
    for each (one reference more to the message, its event into the channel's queue with the
    same pressure callbacks); a message it has no room for takes the callback, which waits as
    Faust's does.
    The callback is a chain of coroutines per message (the conductor's lock, the flow control,
    the producer's buffer, the decode) that almost never waits."""

    def __init__(self, conductor: Any, tp: Any, channels: Any) -> None:
        super().__init__(conductor, tp, channels)
        app = conductor.app
        self._flow_suspended = app.flow_control._suspend.is_set
        self._producer_buffer = app.producer.buffer
        self._event_class = app.conf.Event
        self._quick = not app.conf.producer_threaded  # else its buffer is another queue

    def room(self) -> tuple[Any, int]:
        """The channel's queue and how many events it takes now without anything waiting, for
        `put_all`: (None, 0) when the fast path cannot take any (the flow suspended, the
        producer's buffer over its mark, not one raw channel). Checked once for the messages of
        one fetched partition (nothing that it checks changes until the event loop
        runs something else)."""
        channels = self.channels
        buffer = self._producer_buffer
        if (
            not self._quick
            or len(channels) != 1
            or self._flow_suspended()
            or len(buffer.pending._queue) > buffer.max_messages
        ):
            return None, 0
        for channel in channels:
            if not isinstance(channel.schema, RawSchema):
                return None, 0
            queue = channel.queue
            maxsize = queue.maxsize
            return queue, (maxsize - queue.qsize() if maxsize > 0 else 1 << 62)
        return None, 0

    def put_all(self, queue: Any, messages: list[Any]) -> None:
        """The callback's work for every message of `messages` (which `queue`, from `room`, has
        room for): one
        reference more to each, their events into the queue in order, and the pressure callbacks
        as `put_nowait_enhanced` per event (the first put at or over the queue's high mark, while
        this partition's drop callback is not pending, pauses the partition; later ones see it
        pending), the getters woken as by one put each."""
        n = len(messages)
        if not n:
            return
        on_pressure_drop = self.on_pressure_drop
        pending = queue._pending_pressure_drop_callbacks
        if on_pressure_drop not in pending and queue.qsize() + n - 1 >= queue.pressure_high_size:
            pending.add(on_pressure_drop)
            queue.on_pressure_high()
            self.on_pressure_high()
        app = self.app
        event_class = self._event_class
        if event_class is faust.Event:
            queue._queue.extend([_event(app, m) for m in messages])
        else:
            for m in messages:
                m.refcount += 1
            queue._queue.extend([event_class(app, m.key, m.value, m.headers, m) for m in messages])
        queue._unfinished_tasks += n
        queue._finished.clear()
        getters = queue._getters
        for _ in range(n):
            if not getters:
                break
            queue._wakeup_next(getters)


_new = object.__new__
_Event = faust.Event
_Message = ConsumerMessage


def _event(app: Any, message: Any) -> Any:
    """Faust's `Event(app, message.key, message.value, message.headers, message)` for a message
    taken by the conductor's fast path (one reference more to it, as `incref`), without the call
    of `Event.__init__`: the same six slots."""
    message.refcount += 1
    event = _new(_Event)
    event.app = app
    event.key = message.key
    event.value = message.value
    event.message = message
    headers = message.headers
    if headers is None:
        event.headers = {}
    elif isinstance(headers, dict):
        event.headers = headers
    else:
        event.headers = dict(headers) if headers else {}
    event.acked = False
    return event


def to_message(tp: Any, record: Any, generation_id: int | None) -> Any:
    """Faust's `Consumer._to_message` for the aiokafka driver (a `ConsumerMessage` of an aiokafka
    `ConsumerRecord` of `tp`, with the consumer generation it was fetched in) without the call of
    `Message.__init__` and its keyword arguments: every slot it sets, as it sets it (a test checks
    slot by slot)."""
    m = _new(_Message)
    m.topic = record.topic
    m.partition = record.partition
    m.offset = record.offset
    timestamp = record.timestamp
    m.timestamp = None if timestamp is None else timestamp / 1000.0  # type: ignore[assignment]  # as Faust, cast(float, None)
    m.timestamp_type = record.timestamp_type
    m.headers = record.headers
    key = m.key = record.key
    value = m.value = record.value
    m.checksum = record.checksum
    size = record.serialized_key_size
    m.serialized_key_size = (len(key) if isinstance(key, bytes) else 0) if size is None else size
    size = record.serialized_value_size
    m.serialized_value_size = (len(value) if isinstance(value, bytes) else 0) if size is None else size
    m.acked = False
    m.refcount = 0
    m.tp = tp
    m.tracked = False  # `not ConsumerMessage.use_tracking`
    m.time_in = None
    m.time_out = None
    m.time_total = None
    m.generation_id = generation_id
    return m


def fetched_message(tp: Any, record: Any) -> Any:
    """What `to_message(tp, r, ...)` makes of the `ConsumerRecord` `r` that aiokafka builds of a
    record it unpacked from a fetch (`PartitionRecords._consumer_record`: no key or value
    deserializer), made straight from that record (aiokafka's `DefaultRecord`, or a legacy one)
    in the consumer thread: one object per record instead of two. The consumer generation is
    set when the drain loop takes the fetch (`adopt`), as Faust reads it then."""
    m = _new(_Message)
    m.topic = tp.topic
    m.partition = tp.partition
    m.offset = record.offset
    timestamp = record.timestamp
    m.timestamp = None if timestamp is None else timestamp / 1000.0  # type: ignore[assignment]  # as Faust
    m.timestamp_type = record.timestamp_type
    headers: Any = tuple(record.headers)  # aiokafka's `ConsumerRecord.headers`, which Faust passes on
    m.headers = headers
    key = m.key = record.key
    value = m.value = record.value
    m.checksum = record.checksum
    m.serialized_key_size = -1 if key is None else len(key)  # aiokafka's sizes
    m.serialized_value_size = -1 if value is None else len(value)
    m.acked = False
    m.refcount = 0
    m.tp = tp
    m.tracked = False
    m.time_in = None
    m.time_out = None
    m.time_total = None
    m.generation_id = None
    return m


def adopt(tp: Any, records: list[Any], generation_id: int | None) -> list[Any]:
    """A fetched partition's records as Faust's messages of the consumer generation
    `generation_id`: those the consumer thread built (`fetched_message`) are given it; any other
    (an aiokafka `ConsumerRecord`, fetched before the thread's fetcher built messages) is
    converted as Faust does (`to_message`)."""
    out = records
    for i, record in enumerate(records):
        if type(record) is _Message:
            record.generation_id = generation_id
        else:
            if out is records:
                out = list(records)
            out[i] = to_message(tp, record, generation_id)
    return out


class QuickConductor(Conductor):
    """Faust's conductor whose callbacks are `QuickHandler`s (the app's: `app.transport.Conductor`)."""

    def _build_handler(self, tp: Any, channels: Any) -> Any:
        return QuickHandler(self, tp, channels)


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _next_put(queue: Any, timeout_s: float) -> bool:
    """Wait until something is put in `queue` (a Faust channel's queue), an error is thrown into
    it, or `timeout_s` passes: a getter as `asyncio.Queue.get` waits with, which takes nothing.
    False if the error was `StopAsyncIteration` (the actor is stopping); another error is raised."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    queue._getters.append(waiter)
    timer = loop.call_later(timeout_s, _time_up, waiter)
    try:
        await waiter
        return True
    except StopAsyncIteration:  # thrown to the waiting getter by `ThrowableQueue._throw`
        return False
    finally:
        timer.cancel()
        if not waiter.done():
            waiter.cancel()
        with contextlib.suppress(ValueError):
            queue._getters.remove(waiter)  # still there when the time was up


def _ack_batch(consumer: Any, events: list[Any]) -> None:
    """Ack every event's message once: Faust's `Message.ack` (one reference less; at none, the
    message is acked) and `Consumer.ack` (its offset may be committed), in one critical section.
    A message is in the consumer's unacked set only if it was tracked (`message.tracked`: one per
    batch, `take_batches`); one still referenced by another channel after this ack is tracked
    now, so a revocation waits for it as it would in Faust, where every message is tracked."""
    acking_topics = consumer.app.topics._acking_topics  # `acks_enabled_for`
    committed_offset = consumer._committed_offset
    acked_index_of = consumer._acked_index
    acked_of = consumer._acked
    unacked = consumer._unacked_messages
    n = 0
    last_tp: Any = None
    committed: Any = None
    acked_index: Any = None
    acked: Any = None
    try:
        with ack_lock:
            for event in events:
                message = event.message
                if message.acked:
                    continue
                refcount = message.refcount - 1
                if refcount > 0:
                    message.refcount = refcount
                    if not message.tracked:
                        message.tracked = True
                        unacked.add(message)
                    continue
                message.refcount = 0
                message.acked = True
                if message.topic in acking_topics:
                    tp = message.tp
                    if tp is not last_tp:  # a batch's messages come in runs of one partition
                        last_tp = tp
                        committed = committed_offset[tp]
                        acked_index = acked_index_of[tp]
                        acked = acked_of[tp]
                    offset = message.offset
                    if (committed is None or offset >= committed) and offset not in acked_index:
                        if message.tracked:
                            unacked.discard(message)
                        acked_index.add(offset)
                        acked.append(offset)
                        n += 1
    finally:
        consumer._n_acked += n
        notify(consumer._waiting_for_ack)


def _untrack(consumer: Any, events: list[Any]) -> None:
    """Events taken but never handed out: no longer waited for by a revocation."""
    unacked = consumer._unacked_messages
    for event in events:
        unacked.discard(event.message)


def batch_ack(stream: faust.Stream[Any], events: list[Any]) -> Callable[[], None]:
    """What acks a batch of `take_batches(..., ack_later=True)`, to be called once its work is
    durable."""
    consumer: Any = stream.app.consumer
    return lambda: _ack_batch(consumer, events)


# The shortest wait of `take_batches` for the first record of a batch once a window ended with
# nothing (a put wakes it at once; the timeout only looks at `should_stop` again).
EMPTY_WAIT_MIN_S = 0.01


async def take_batches(
    stream: faust.Stream[Any],
    max_: int,
    within_s: float,
    *,
    ack_later: bool = False,
    before: Callable[[], Awaitable[object]] | None = None,
) -> AsyncIterator[list[Any]]:
    """The events of `stream`'s channel in batches of at most `max_`, each handed out as soon as
    it is full or `within_s` after the agent came back for it (if it holds anything; if not, as
    soon as something comes): what `stream.take_events(max_, within=within_s)` yields. A batch
    is acked when the agent asks for the next one or leaves the loop, also by an exception or a
    cancellation (so, as with Faust's, the agent's work must be done by then:
    `batches.finish_before_ack`). With `ack_later`, the agent acks each batch itself when its
    work is durable (`batch_ack`); until then a revocation waits for it (one message of each
    batch is tracked). `before` is awaited before each batch is taken, with no event in hand
    (the shell's `paced`): events of a generation that ended meanwhile are then skipped as
    usual, not handed out."""
    app: Any = stream.app
    consumer: Any = app.consumer
    queue: Any = cast(Any, stream.channel).queue  # the conductor's events for this agent (`app.stream` made it)
    items = queue._queue
    errors = queue._errors
    putters = queue._putters
    pending_drops = queue._pending_pressure_drop_callbacks
    flow_active = app.flow_control.is_active
    acking_topics = app.topics._acking_topics
    track = consumer._unacked_messages.add
    loop = asyncio.get_running_loop()

    popleft = items.popleft
    batch: list[Any] = []
    append = batch.append
    tracking = False  # one message of the batch is in the consumer's unacked set
    try:
        while not stream.should_stop:
            if before is not None:
                await before()
                if stream.should_stop:
                    return
            deadline = loop.time() + within_s
            while True:
                if errors:
                    exc = errors.popleft()
                    if isinstance(exc, StopAsyncIteration):
                        return
                    raise exc
                take = min(len(items), max_ - len(batch))
                if take:
                    if flow_active():
                        generation = app.consumer_generation_id
                        start = len(batch)
                        for _ in range(take):
                            event = popleft()
                            if event.message.generation_id == generation:
                                append(event)
                            # else Faust's skip; not acked (module docstring)
                        if not tracking:
                            for event in batch[start:]:
                                message = event.message
                                if message.topic in acking_topics:
                                    if not message.tracked:
                                        message.tracked = True
                                        track(message)
                                    tracking = True
                                    break
                    else:
                        for _ in range(take):
                            popleft()  # Faust's skip; not acked
                    for _ in range(take):  # one freed place each, as `get_nowait`
                        if not putters:
                            break
                        queue._wakeup_next(putters)
                while pending_drops:  # as `get_nowait` does before each get, `get` when empty
                    left = len(pending_drops)
                    queue.maybe_endorse_pressure_drop()
                    if len(pending_drops) == left:
                        break
                if len(batch) >= max_:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if batch:
                        break
                    # Nothing came within the window: wait for the first record (a put wakes
                    # this at once) and hand it out then, looking at `should_stop` as often as
                    # before. Starting a new window instead let a window shorter than the
                    # clock's step (QRIS_BATCH_WITHIN_S=1e-9) end before it was awaited: on the
                    # standard asyncio loop this went round without yielding, and nothing else
                    # (signals, heartbeats, a stop) ran again; uvloop, whose time is cached per
                    # round, polled at 100% of a CPU.
                    if stream.should_stop:
                        return
                    remaining = max(within_s, EMPTY_WAIT_MIN_S)
                if not await _next_put(queue, remaining):
                    return
            if not batch:
                continue
            events, batch = batch, []
            append = batch.append
            tracking = False
            try:
                yield events
            finally:
                if not ack_later:
                    _ack_batch(consumer, events)
    finally:
        _untrack(consumer, batch)
