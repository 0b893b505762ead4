"""How the worker's agents take records (`stream/worker/intake.py`): `take_batches` against Faust's
own `take_events` on the same events delivered by Faust's conductor (same batches, same acks, at
the same points), Faust's generation and flow checks, the rebalance bookkeeping (tracked while a
batch is out, acked only when the agent comes back), errors thrown into the channel, the buffer's
pressure-drop and putters; `RawSchema` against Faust's raw codecs; and the Faust source the
module copies, pinned. No broker: the app is built, not started."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, cast

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream.settings import Settings
from stream.worker.app import faust_app, raw_topic
from stream.worker.intake import RawSchema, take_batches

PAY, LED = "payment-requests", "ledger-debits"


def new_app() -> Any:
    app = faust_app(Settings(store="memory://", web_port=0))
    app.flow_control.resume()  # Faust resumes the flow once partitions are assigned
    app.topics._acking_topics.update({PAY, LED})  # as the conductor's subscription does
    return app


def message(topic: str, partition: int, offset: int, generation: int = 0) -> ConsumerMessage:
    return ConsumerMessage(
        topic,
        partition,
        offset,
        1.7e9 + offset,
        0,
        [],
        b"k%d" % offset,
        b"v%d" % offset,
        None,
        generation_id=generation,
    )


async def deliver(app: Any, messages: list[ConsumerMessage]) -> None:
    """As Faust's conductor: each message through the callback it compiles for its partition."""
    conductor = app.topics
    for m in messages:
        tp = TP(m.topic, m.partition)
        if tp not in conductor._tp_to_callback:
            channels = {ch for ch in conductor._topics if m.topic in ch.topics}
            conductor._tp_to_callback[tp] = conductor._build_handler(tp, channels)
        await conductor._tp_to_callback[tp](m)


def acked(app: Any) -> dict[TP, list[int]]:
    return {tp: sorted(offsets) for tp, offsets in app.consumer._acked.items() if offsets}


Take = Callable[[faust.Stream[Any], int, float], AsyncIterator[list[Any]]]


def fausts(stream: faust.Stream[Any], max_: int, within_s: float) -> AsyncIterator[list[Any]]:
    return cast(AsyncIterator[list[Any]], stream.take_events(max_, within=within_s))


async def run(take: Take, messages: list[ConsumerMessage], max_: int, within_s: float = 0.05) -> list[Any]:
    """Batches of `take` over `messages`, and what was acked and tracked while each batch was out."""
    app = new_app()
    stream = app.stream(raw_topic(app, PAY, LED))
    seen: list[Any] = []
    await deliver(app, messages)
    n = sum(1 for m in messages if m.generation_id == 0)

    async def agent() -> None:
        got = 0
        batches = take(stream, max_, within_s)
        async for events in batches:
            unacked = sorted((m.topic, m.offset) for m in app.consumer._unacked_messages)
            seen.append(([(e.message.topic, e.message.offset) for e in events], acked(app), unacked))
            got += len(events)
            if got >= n:
                break
        await cast(Any, batches).aclose()  # as the event loop does once the agent drops it
        seen.append(("after", acked(app), sorted((m.topic, m.offset) for m in app.consumer._unacked_messages)))

    await asyncio.wait_for(agent(), 5)
    return seen


def messages7() -> list[ConsumerMessage]:
    return [message(PAY if i % 2 else LED, i % 3, i) for i in range(7)]


def waited_for(seen: list[Any]) -> list[Any]:
    """`run`'s record with each batch's unacked messages as: is a revocation waiting for the batch
    (some of its messages unacked, none of another batch)? Faust tracks every message of a batch,
    `take_batches` one per batch (`Consumer.wait_empty` waits while any is tracked)."""
    out = []
    for batch, acked_then, unacked in seen:
        waits = bool(unacked) and set(unacked) <= set(batch) if batch != "after" else unacked
        out.append((batch, acked_then, waits))
    return out


@pytest.mark.parametrize("max_", [1, 3, 7, 100])
def test_take_batches_hands_out_and_acks_what_fausts_take_events_does(max_: int) -> None:
    faust_seen = asyncio.run(run(fausts, messages7(), max_))
    ours = asyncio.run(run(take_batches, messages7(), max_))
    assert waited_for(ours) == waited_for(faust_seen)
    first_batch, acked_during, unacked_during = ours[0]
    assert acked_during == {}  # nothing acked while the agent holds its first batch
    assert unacked_during == [first_batch[0]]  # and a revocation waits for it (its first message tracked)
    assert faust_seen[0][2] == sorted(first_batch)
    assert all(len(unacked) == 1 for _, _, unacked in ours[:-1])
    every: dict[TP, list[int]] = {}
    for m in messages7():
        every.setdefault(m.tp, []).append(m.offset)
    assert ours[-1][1] == every  # all acked once the agent is done
    assert ours[-1][2] == []


def test_events_of_an_older_generation_are_left_out_and_not_acked() -> None:
    """An event fetched before a rebalance is skipped and not acked, as by Faust's compiled
    iterator (the app's, `cython_optimizations`; Faust's pure-Python one acks it): its partition is
    sought back to the committed offset, so it comes again, and a commit stops before it."""

    def messages() -> list[ConsumerMessage]:
        return [message(PAY, 0, 0, generation=0), message(PAY, 0, 1, generation=-1), message(PAY, 0, 2)]

    faust_seen = asyncio.run(run(fausts, messages(), 10))
    ours = asyncio.run(run(take_batches, messages(), 10))
    assert waited_for(ours) == waited_for(faust_seen)
    assert [batch for batch, *_ in ours[:-1]] == [[(PAY, 0), (PAY, 2)]]
    assert ours[-1][1] == {TP(PAY, 0): [0, 2]}


def test_nothing_is_taken_while_the_flow_is_suspended() -> None:
    async def scenario() -> tuple[list[Any], int]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        await deliver(app, [message(PAY, 0, 0), message(PAY, 0, 1)])
        app.flow_control.suspend()  # a rebalance began (Faust clears the queues right after)
        got: list[Any] = []

        async def agent() -> None:
            async for events in take_batches(stream, 10, 0.02):
                got.append(events)

        task = asyncio.ensure_future(agent())
        await asyncio.sleep(0.1)
        task.cancel()
        return got, len(app.consumer._unacked_messages)

    got, unacked = asyncio.run(scenario())
    assert got == [] and unacked == 0


def test_a_batch_is_acked_only_when_the_agent_comes_back_or_leaves_even_by_cancellation() -> None:
    async def scenario() -> list[Any]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        await deliver(app, [message(PAY, 0, i) for i in range(3)])
        states: list[Any] = []
        holding = asyncio.Event()

        async def agent() -> None:
            async for _events in take_batches(stream, 2, 0.02):
                states.append(acked(app))
                holding.set()
                await asyncio.sleep(3600)  # the agent's work, cancelled by a stop

        task = asyncio.ensure_future(agent())
        await holding.wait()
        states.append(acked(app))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):  # the event loop closes the dropped generator (`aclose`) in a task
            await asyncio.sleep(0)
        states.append(acked(app))
        return states

    during, still, after = asyncio.run(scenario())
    assert during == still == {}
    assert after == {TP(PAY, 0): [0, 1]}  # the batch out; offset 2 was never handed out


def test_an_actor_stop_ends_the_batches_and_another_error_is_raised_in_the_agent() -> None:
    async def scenario(stop: Callable[[Any], None], after_s: float, within_s: float = 10.0) -> list[Any]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        got: list[Any] = []

        async def agent() -> None:
            async for events in take_batches(stream, 10, within_s):
                got.append(events)

        task = asyncio.ensure_future(agent())
        await asyncio.sleep(after_s)
        stop(stream)
        await asyncio.wait_for(task, 1)
        return got

    def throw(exc: BaseException) -> Callable[[Any], None]:
        return lambda stream: cast(Any, stream.channel)._throw(exc)  # how Faust's `Actor.cancel` stops an actor

    assert asyncio.run(scenario(throw(StopAsyncIteration()), 0.05)) == []
    assert asyncio.run(scenario(throw(StopAsyncIteration()), 0)) == []  # thrown before it waits
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario(throw(RuntimeError("boom")), 0.05))
    # The stream told to stop (`should_stop`) without anything thrown in, while windows end
    # with nothing in them: the batches end too.
    assert asyncio.run(scenario(lambda stream: stream._stopped.set(), 0.1, within_s=0.02)) == []


def test_a_batch_is_handed_out_when_full_without_waiting_for_within() -> None:
    async def scenario() -> float:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def produce() -> None:
            for i in range(4):
                await asyncio.sleep(0.01)
                await deliver(app, [message(PAY, 0, i)])

        producing = asyncio.ensure_future(produce())
        async for events in take_batches(stream, 4, 30.0):
            assert [e.message.offset for e in events] == [0, 1, 2, 3]
            break
        await producing
        return loop.time() - started

    assert asyncio.run(scenario()) < 1.0


def test_taking_from_a_full_buffer_resumes_fetching_and_wakes_a_blocked_conductor() -> None:
    """What Faust's `get_nowait` does per event: the pressure-drop callbacks of a buffer that went
    over its pause mark run (they resume fetching) and a conductor waiting on a full queue goes on."""

    async def scenario() -> tuple[list[TP], list[int]]:
        app = new_app()
        app.conf.stream_buffer_maxsize = 10
        stream = app.stream(raw_topic(app, PAY, LED))
        queue = cast(Any, stream.channel).queue
        assert queue.maxsize == 10
        resumed: list[TP] = []
        app.consumer.on_buffer_full = lambda tp: None
        app.consumer.on_buffer_drop = resumed.append
        await deliver(app, [message(PAY, 0, i) for i in range(10)])  # over the mark (8): paused
        assert queue.full() and queue._pending_pressure_drop_callbacks
        blocked = asyncio.ensure_future(deliver(app, [message(PAY, 0, 10)]))  # waits for room
        await asyncio.sleep(0.01)
        assert not blocked.done()
        offsets: list[int] = []
        async for events in take_batches(stream, 100, 0.05):
            offsets += [e.message.offset for e in events]
            if len(offsets) == 11:
                break
        await asyncio.wait_for(blocked, 1)
        return resumed, offsets

    resumed, offsets = asyncio.run(scenario())
    assert resumed == [TP(PAY, 0)]
    assert offsets == list(range(11))


def test_raw_schema_events_are_fausts_raw_events() -> None:
    async def decoded(schema: Any) -> list[tuple[Any, Any, Any]]:
        app = new_app()
        topic = app.topic(
            PAY, schema=schema, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        out = []
        for m in [message(PAY, 0, 1), ConsumerMessage(PAY, 0, 2, 0.0, 0, None, None, b"\x00\xff", None)]:
            ev = await topic.decode(m, propagate=True)
            out.append((type(ev), ev.key, ev.value, ev.headers, ev.message is m))
        return out

    assert asyncio.run(decoded(RawSchema())) == asyncio.run(decoded(None))


def test_the_worker_topics_decode_with_the_raw_schema() -> None:
    app = new_app()
    assert isinstance(raw_topic(app, PAY).schema, RawSchema)


# What `intake.py` copies or relies on, as in Faust 0.15.3 and mode: an upgrade that changes
# any of these fails here, for `take_batches` and `_ack_batch` to be checked against it again.
PINNED = {
    "faust.streams.Stream.take_events": "607d48aead118ba8",
    "faust.transport.consumer.Consumer.ack": "5fcf41cf45153475",
    "faust.types.tuples.Message.ack": "4751b72c4ed84153",
    "faust.types.tuples.Message.decref": "f23396189d0e5592",
    "faust.transport.conductor.Conductor._build_handler": "5c071d1277988c57",
    "faust.transport.conductor.Conductor._compile_message_handler": "9fbc0538097aa4ec",
    "faust.transport.conductor.ConductorCompiler.build": "837cf521368c1ee4",
    "faust.serializers.schemas.Schema.compile": "d46eec5ce3195b2c",
    "faust.agents.actor.Actor.cancel": "27af54ce1443b5dd",
    "mode.utils.queues.FlowControlQueue.get_nowait": "57cb9b5c12e7ebd9",
    "mode.utils.queues.FlowControlQueue.maybe_endorse_pressure_drop": "dafd855ef5a0f61d",
    "mode.utils.queues.ThrowableQueue._throw": "c231e47644923a48",
}


def _source_of(dotted: str) -> str:
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return inspect.getsource(obj)
    raise AssertionError(dotted)


@pytest.mark.parametrize("dotted", sorted(PINNED))
def test_the_faust_source_intake_copies_is_pinned(dotted: str) -> None:
    source = _source_of(dotted)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == PINNED[dotted], source


def test_the_cython_sources_intake_relies_on_are_pinned() -> None:
    """Faust's compiled stream iterator (`cython_optimizations`), whose checks `take_batches`
    repeats, and its compiled conductor callback, which `QuickHandler` extends."""
    import pathlib

    import faust._cython

    pyx = pathlib.Path(faust._cython.__file__).parent / "streams.pyx"
    assert hashlib.sha256(pyx.read_bytes()).hexdigest()[:16] == "0041622f4a251188"
    import faust.transport._cython

    pyx = pathlib.Path(faust.transport._cython.__file__).parent / "conductor.pyx"
    assert hashlib.sha256(pyx.read_bytes()).hexdigest()[:16] == "dde1f974267881cf"


async def queued_by(app: Any, messages: list[ConsumerMessage], fast: bool) -> list[Any]:
    """What the conductor's callback for each message's partition put in the agent's queue: by
    its fast path (`room`/`put_all`, one message at a time; a message it has no room for goes
    to the callback) or by Faust's own."""
    from faust.transport.conductor import Conductor

    conductor = app.topics
    stream = app.stream(raw_topic(app, PAY, LED))
    declined = []
    for m in messages:
        tp = TP(m.topic, m.partition)
        if tp not in conductor._tp_to_callback:
            channels = {ch for ch in conductor._topics if m.topic in ch.topics}
            build = conductor._build_handler if fast else partial(Conductor._build_handler, conductor)
            conductor._tp_to_callback[tp] = build(tp, channels)
        if fast:
            handler = conductor._tp_to_callback[tp]
            queue, free = handler.room()
            if free:
                handler.put_all(queue, [m])
                continue
        declined.append(m.offset)
        await conductor.on_message(m)
    queue = cast(Any, stream.channel).queue
    return [declined] + [
        (type(e), e.key, e.value, e.headers, e.message.offset, e.message.refcount) for e in list(queue._queue)
    ]


def test_the_conductors_fast_path_queues_what_fausts_callback_queues() -> None:
    async def both() -> tuple[list[Any], list[Any]]:
        faust_queued = await queued_by(new_app(), messages7(), fast=False)
        return faust_queued, await queued_by(new_app(), messages7(), fast=True)

    fausts_queued, ours = asyncio.run(both())
    assert ours[0] == []  # every message took the fast path
    assert ours[1:] == fausts_queued[1:]
    assert len(ours) == 8


@pytest.mark.parametrize("why", ["flow suspended", "queue full", "producer buffer over", "not raw"])
def test_the_conductors_fast_path_has_no_room_when_a_message_could_wait(why: str) -> None:
    async def scenario() -> tuple[list[int], int]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED) if why != "not raw" else app.topic(PAY, LED))
        queue = cast(Any, stream.channel).queue
        tp = TP(PAY, 0)
        conductor = app.topics
        conductor._tp_to_callback[tp] = conductor._build_handler(tp, set(conductor._topics))
        if why == "flow suspended":
            app.flow_control.suspend()
        elif why == "queue full":
            for _ in range(queue.maxsize):
                queue.force_put_nowait(None)
        elif why == "producer buffer over":
            for _ in range(app.producer.buffer.max_messages + 1):
                app.producer.buffer.pending.put_nowait(None)
        size = queue.qsize()
        _queue, free = conductor._tp_to_callback[tp].room()
        return [free], queue.qsize() - size

    taken, added = asyncio.run(scenario())
    assert taken == [0] and added == 0


def test_the_worker_app_has_the_conductors_fast_path() -> None:
    from faust.transport import conductor

    from stream.worker.intake import QuickConductor, QuickHandler

    assert conductor.ConductorHandler is not None  # Faust's compiled callback, which QuickHandler extends
    app = new_app()
    assert isinstance(app.topics, QuickConductor)
    assert isinstance(app.topics._build_handler(TP(PAY, 0), set()), QuickHandler)


def test_an_empty_window_shorter_than_the_clock_step_does_not_starve_the_event_loop() -> None:
    """A window of 1e-12 s (QRIS_BATCH_WITHIN_S accepts any number above 0) ends before it is
    awaited. Before, an empty batch then started a new window without yielding, for ever: the
    other tasks (here the one that delivers; in the worker signals, heartbeats, a stop) never ran
    again. Run in a thread so that the old behaviour fails the test instead of hanging it."""
    ticks: list[int] = []
    got: list[list[int]] = []

    async def scenario() -> None:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))

        async def later() -> None:
            for i in range(3):
                await asyncio.sleep(0.01)
                ticks.append(i)
            await deliver(app, [message(PAY, 0, 0), message(PAY, 0, 1)])

        delivering = asyncio.ensure_future(later())
        async for events in take_batches(stream, 10, 1e-12):
            got.append([e.message.offset for e in events])
            break
        await delivering

    runner = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "take_batches kept the event loop for itself"
    assert ticks == [0, 1, 2] and got == [[0, 1]]


def test_after_a_window_with_nothing_the_first_records_are_handed_out_as_they_come() -> None:
    """Not a window later: the agent has waited long enough already."""

    async def scenario() -> tuple[list[int], float]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        loop = asyncio.get_running_loop()
        delivered: list[float] = []

        async def later() -> None:
            await asyncio.sleep(0.6)  # the agent's 0.5 s window ended with nothing in it
            await deliver(app, [message(PAY, 0, 7)])
            delivered.append(loop.time())

        delivering = asyncio.ensure_future(later())
        async for events in take_batches(stream, 10, 0.5):
            handed_out = loop.time()
            offsets = [e.message.offset for e in events]
            break
        await delivering
        return offsets, handed_out - delivered[0]

    offsets, waited = asyncio.run(scenario())
    assert offsets == [7]
    assert waited < 0.25  # a new window would have handed it out 0.4 s after it came


def test_before_is_awaited_before_each_batch_and_a_rebalance_meanwhile_drops_the_old_events() -> None:
    """`before` (the shell's `paced`) runs before a batch is taken, with none of its events in
    hand: events fetched before a rebalance that happened while it waited are skipped, not
    handed out (their partitions are read again from the committed offsets)."""

    async def scenario(rebalance_at_call: int | None) -> tuple[list[list[int]], list[int]]:
        app = new_app()
        stream = app.stream(raw_topic(app, PAY, LED))
        queue = cast(Any, stream.channel).queue
        await deliver(app, [message(PAY, 0, i) for i in range(5)])
        waiting: list[int] = []  # events in the channel at each call

        async def before() -> None:
            waiting.append(len(queue._queue))
            if len(waiting) == rebalance_at_call:
                app.consumer_generation_id = 1  # a rebalance while the batch waited
            await asyncio.sleep(0)

        batches: list[list[int]] = []

        async def agent() -> None:
            async for events in take_batches(stream, 2, 0.02, before=before):
                batches.append([e.message.offset for e in events])

        task = asyncio.create_task(agent())
        await asyncio.sleep(0.3)  # every batch there is to take, then waiting for more
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return batches, waiting

    batches, waiting = asyncio.run(asyncio.wait_for(scenario(None), 5))
    assert batches == [[0, 1], [2, 3], [4]] and waiting == [5, 3, 1, 0]  # (the last: before a fourth)
    batches, waiting = asyncio.run(asyncio.wait_for(scenario(2), 5))
    assert batches == [[0, 1]] and waiting[:2] == [5, 3]
