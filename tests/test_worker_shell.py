"""The live shell without a broker: batches of fake Kafka events, an in-memory state store, and
the incidents as the incidents topic delivers them (refund holds)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from stream.core.decisions import Decision
from stream.core.eventtime import format_ms, parse_ms
from stream.core.holds import IncidentEvent
from stream.core.partition import OffsetOrderError
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from stream.worker import shell as shell_module
from stream.worker.boundary import Gap
from stream.worker.bursts import INCIDENTS_RECORD_MAX_BYTES, BurstShell
from stream.worker.feeds import TopicSilence
from stream.worker.gapfill import MARKERS_PROBE_OFFSETS
from stream.worker.incidents import parse_incidents_record
from stream.worker.shell import ReconcileShell, _plain, meta_key
from tests.conftest import not_compiled
from tests.records import T0, ledger, payment

SETTINGS = Settings(partitions=1, idle_timeout_s=3600)


@dataclass
class MemoryStore:
    data: dict[bytes, bytes]

    def put_many(self, partition: int, changes: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in changes:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def load(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        return list(self.data.items())


class Harness:
    def __init__(self, store: MemoryStore | None = None, settings: Settings = SETTINGS) -> None:
        self.store = store or MemoryStore({})
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.offsets = {settings.payment_topic: 0, settings.ledger_topic: 0}
        self.settings = settings

        async def send(topic: str, key: bytes | None, value: bytes) -> None:
            self.sent.append((topic, orjson.loads(value)))

        async def nothing() -> None:
            return None

        self.shell = ReconcileShell(settings, self.store, send, nothing, nothing)

    def batch(self, *records: tuple[str, bytes]) -> None:
        asyncio.run(self.shell.process_batch(self.events(*records)))

    def records(self, *records: tuple[str, bytes]) -> list[Any]:
        """The next records as the shell takes them (`process_records`)."""
        return _plain(self.events(*records))

    def events(self, *records: tuple[str, bytes]) -> list[Any]:
        """The next records of partition 0 as Faust events (offsets counted per topic)."""
        events = []
        for topic_role, value in records:
            topic = self.settings.payment_topic if topic_role == "P" else self.settings.ledger_topic
            msg = SimpleNamespace(
                topic=topic,
                partition=0,
                offset=self.offsets[topic],
                key=orjson.loads(value)["reference"].encode(),
                value=value,
                timestamp=None,
            )
            self.offsets[topic] += 1
            events.append(SimpleNamespace(message=msg))
        return events

    def refunds(self) -> list[dict[str, Any]]:
        return [v for t, v in self.sent if t == self.settings.refund_topic]

    def broker(self, not_taken: dict[str, int] | None) -> list[list[tuple[str, int]]]:
        """The broker's end offsets as the idle rule asks them: `not_taken[topic]` records of it
        past what the shell took (None: the broker does not answer). Returns the questions asked."""
        asked: list[list[tuple[str, int]]] = []

        async def end_offsets(tps: Collection[tuple[str, int]]) -> dict[tuple[str, int], int]:
            asked.append(sorted(tps))
            if not_taken is None:
                raise TimeoutError("no answer")
            return {(t, p): (self.shell.next_offset(t, p) or 0) + not_taken[t] for t, p in tps}

        self.shell.end_offsets = end_offsets
        return asked

    def lag(self, holds: str) -> list[Gap]:
        """What the broker has before an idle stream's end offset when the idle rule reads it:
        "markers" (transaction markers only), "records", or "no answer". Returns the reads."""
        read: list[Gap] = []

        async def fetch_lag(gap: Gap) -> list[KafkaRecord]:
            read.append(gap)
            if holds == "no answer":
                raise TimeoutError("not read in 5 s")
            return [] if holds == "markers" else [KafkaRecord(gap.topic, 0, gap.start, None, b"R", b"{}")]

        self.shell.fetch_lag = fetch_lag
        return read


def unsettled(ref: str, t: float) -> list[tuple[str, bytes]]:
    return [("P", payment(f"{ref}-q", "requested", ref, t)), ("L", ledger(f"{ref}-d", "debited", ref, t))]


def tick(t: float) -> list[tuple[str, bytes]]:
    return [("P", payment(f"tick-{t}", "requested", "TICK", t)), ("L", ledger(f"tick-l-{t}", "reversed", "TICK", t, 1))]


OPENED = IncidentEvent(T0 + 100_000, "opened", "in_a", "switch", "RINTIS")


def test_decisions_wait_for_the_incidents_topic_and_a_restored_engine_gets_the_timeline() -> None:
    h = Harness()
    h.batch(*unsettled("QR1", 0), *tick(400))
    assert h.refunds() == []  # the watermark passed the deadline; the incidents did not
    asyncio.run(h.shell.on_incidents([OPENED], T0 + 200_000))
    assert h.refunds() == []
    # A restart: a new shell over the same store, the incidents topic read again from the start.
    h2 = Harness(h.store)
    h2.offsets = dict(h.offsets)
    asyncio.run(h2.shell.on_incidents([OPENED], T0 + 500_000))
    h2.batch(*tick(410))  # the engine is restored with the timeline: the deadline is decided
    assert [r["type"] for r in h2.refunds()] == ["refund.held"]
    assert h2.refunds()[0]["incident_id"] == "in_a"
    assert h2.shell.stats()["partitions"][0]["held_references"] == 1
    assert h.shell.stats()["partitions"][0]["held_references"] == 0  # decided nothing yet


def test_incidents_taken_while_holding_back_release_nothing_until_the_assignment() -> None:
    # A rebalance revoked the partitions: what the incidents would release is a new owner's to
    # decide, until the assignment says what stays.
    h = Harness()
    h.batch(*unsettled("QR1", 0), *tick(400))
    h.shell.holding_back = True
    asyncio.run(h.shell.on_incidents([OPENED], T0 + 500_000))
    assert h.refunds() == [] and h.shell.incidents_known_through_ms == T0 + 500_000  # taken, not released
    asyncio.run(h.shell.on_incidents([OPENED], T0 + 500_000))  # (a repeat changes nothing)
    asyncio.run(h.shell.release_held_back())  # the partition stayed here
    assert not h.shell.holding_back
    assert [(r["type"], r["incident_id"]) for r in h.refunds()] == [("refund.held", "in_a")]
    asyncio.run(h.shell.release_held_back())
    assert len(h.refunds()) == 1  # once


def test_each_decision_sent_is_shown_to_the_watch_as_the_record_sent() -> None:
    # The watch (metrics, dashboard, lookup) is given the values as built, not parsed back from
    # the bytes sent: they must say the same, and come in the order sent.
    h = Harness(settings=NO_HOLDS)
    shown: list[tuple[str, dict[str, Any]]] = []
    h.shell.on_output = lambda role, value: shown.append((role, value))
    h.batch(*unsettled("QR1", 0), *unsettled("QR2", 1), ("P", payment("bad", "requested", "QR3", 2, amount=-1)))
    h.batch(*tick(400))
    roles = {role: NO_HOLDS.output_topic(role) for role in ("refunds", "alerts", "dead_letter", "signals")}
    assert [(roles[r], orjson.loads(orjson.dumps(v))) for r, v in shown] == h.sent
    assert [r for r, _v in shown].count("refunds") == 2 and "dead_letter" in {r for r, _v in shown}


def test_the_freeze_watch_tells_a_stopped_process_from_a_busy_loop() -> None:
    import doctest

    from stream.worker import freeze

    failures, tried = doctest.testmod(freeze, raise_on_error=False, verbose=False)
    assert tried > 0 and failures == 0


class Restarted(BaseException):
    """The app's `on_frozen` replaces the process and never returns; a test's raises this."""


NO_HOLDS = Settings(partitions=1, idle_timeout_s=3600, max_hold_s=0)


def frozen_harness(settings: Settings = NO_HOLDS) -> tuple[Harness, list[str]]:
    """A harness whose shell restarts (raises `Restarted`) when it finds itself frozen."""
    h = Harness(settings=settings)
    restarts: list[str] = []

    def restart() -> None:
        restarts.append("frozen")
        raise Restarted

    h.shell.on_frozen = restart
    return h, restarts


def freeze_now(h: Harness, stopped_s: float) -> None:
    """The freeze watch's ticker thread last ticked `stopped_s` ago: no thread of the process
    ran since (stopped)."""
    from stream.worker.freeze import now_s

    h.shell.loop.seen_s = now_s() - stopped_s


def test_a_batch_that_straddled_a_freeze_past_the_session_sends_nothing_and_restarts() -> None:
    # A worker stopped longer than its group session (SIGSTOP, a paused VM) may have lost its
    # partitions to another worker, which has decided them since: what this batch decided would
    # come late (a `refund.requested` after the new owner's cancellation of it, a `refund.held`
    # after its release). Nothing is sent or kept; the next incarnation decides from the commit.
    h, restarts = frozen_harness()
    h.batch(*unsettled("QR1", 0))
    batch = h.records(*tick(400))
    freeze_now(h, stopped_s=35.0)  # the watch has not ticked since the process resumed
    with pytest.raises(Restarted):
        asyncio.run(h.shell.process_records(batch))
    assert restarts == ["frozen"] and h.refunds() == []
    # The restarted worker (its store as committed) takes the batch again and decides it.
    h2 = Harness(h.store, settings=NO_HOLDS)
    asyncio.run(h2.shell.process_records(batch))
    assert [r["type"] for r in h2.refunds()] == ["refund.requested"]


def test_a_blocked_event_loop_is_no_freeze() -> None:
    # The loop blocked past the session (a write to a full pipe, a slow disk, CPU work) while
    # the process's other threads ran: the consumer thread's heartbeats kept the group, and the
    # ticker thread saw it; the batch is sent.
    import threading

    from stream.worker.freeze import LoopWatch

    h, restarts = frozen_harness()
    h.batch(*unsettled("QR1", 0), *unsettled("QR2", 1))
    h.shell.loop = LoopWatch(session_timeout_s=0.3)
    stop = threading.Event()
    threading.Thread(target=h.shell.loop.run, args=(stop, 0.02), daemon=True).start()
    sent = h.shell.send

    async def blocking_send(topic: str, key: bytes | None, value: bytes) -> None:
        time.sleep(0.5)  # the loop blocked, not the process
        await sent(topic, key, value)

    h.shell.send = blocking_send
    try:
        asyncio.run(h.shell.process_records(h.records(*tick(400))))
    finally:
        stop.set()
    assert restarts == [] and [r["type"] for r in h.refunds()] == ["refund.requested"] * 2


def test_a_freeze_between_two_sends_stops_the_second() -> None:
    h, restarts = frozen_harness()
    h.batch(*unsettled("QR1", 0), *unsettled("QR2", 1))
    sent = h.shell.send

    async def send_then_freeze(topic: str, key: bytes | None, value: bytes) -> None:
        await sent(topic, key, value)
        h.shell.loop.freezes += 1  # the watch found a freeze while this send waited

    h.shell.send = send_then_freeze
    with pytest.raises(Restarted):
        asyncio.run(h.shell.process_records(h.records(*tick(400))))
    assert restarts == ["frozen"] and len(h.refunds()) == 1


def test_incidents_released_after_a_freeze_are_not_sent() -> None:
    h, restarts = frozen_harness(SETTINGS)
    h.batch(*unsettled("QR1", 0), *tick(400))
    freeze_now(h, stopped_s=35.0)
    with pytest.raises(Restarted):
        asyncio.run(h.shell.on_incidents([OPENED], T0 + 500_000))
    assert restarts == ["frozen"] and h.refunds() == []


def test_the_idle_rule_still_fires_deadlines_that_wait_with_nothing_else() -> None:
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))

    def quiet_for(seconds: float) -> None:  # both feeds quiet: event time follows the wall clock
        h.shell.clocks[0].last_arrival = [time.monotonic() - seconds] * 2
        h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(h.shell.check_idle_feeds())

    quiet_for(40)  # W = 100 - 30 + 40 = 110: every record is processed
    eng = h.shell.engines[0]
    assert not eng.heap and eng.decide and h.refunds() == []  # only the deadline (300) waits
    quiet_for(240)  # W = 310
    assert [r["type"] for r in h.refunds()] == ["refund.requested"]


def test_both_feeds_quiet_move_the_watermark_from_the_lagging_stream_not_the_leading_one() -> None:
    # The ledger runs 300 s of event time ahead of the payments: a quiet pause of 40 s moves
    # the watermark 40 s from where it stands (the payments' newest, less A), not 40 s past the
    # ledger's newest, which would decide QR1's deadline before its settlement, still to come.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), ("P", payment("tick-p", "requested", "TICKP", 20)))
    h.batch(("L", ledger("tick-l", "reversed", "TICKL", 320, 1)))
    quiet_check(h.shell, 40)
    assert h.shell.engines[0].watermark_ms == T0 + (20 - 30 + 40) * 1000
    h.batch(("P", payment("QR1-s", "settled", "QR1", 25)))
    h.batch(*tick(400))
    assert h.refunds() == []


def test_a_restart_during_a_quiet_spell_goes_on_from_where_the_watermark_stood() -> None:
    # Both feeds quiet for 400 s moved the watermark 400 s past the records. Restarted from its
    # store, the worker counts the quiet again from its start: from the records, the watermark
    # stood still for as long as the quiet had lasted (QR1's deadline, 40 s further, waited
    # 440 s of quiet instead of 40). It goes on from where it stood; the time down is not counted.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    h.batch(*unsettled("QR1", 100))  # deadline 400 (T = 300)

    def quiet(shell: ReconcileShell, s: float) -> None:
        quiet_check(shell, s)

    quiet(h.shell, 300)  # W = 100 - 30 + 300 = 370: QR1's deadline not yet passed
    stood = T0 + 370_000
    assert h.shell.engines[0].watermark_ms == stood and h.refunds() == []
    h2 = Harness(h.store, settings=settings)
    h2.offsets = dict(h.offsets)
    h2.shell.engine(0)
    quiet(h2.shell, 2)  # two quiet seconds since the restart: from where it stood, not from 70
    assert h2.shell.engines[0].watermark_ms == stood + 2_000
    quiet(h2.shell, 40)
    assert [r["reference"] for r in h2.refunds()] == ["QR1"]
    # A record of the partition ends that quiet: the next one moves from the records again.
    h2.batch(("P", payment("tick-q", "requested", "TICKQ", 200)), ("L", ledger("tick-r", "reversed", "TICKR", 200, 1)))
    assert 0 not in h2.shell._quiet_from
    # Saved so: restarted again, it moves from the records too.
    h3 = Harness(h2.store, settings=settings)
    h3.shell.engine(0)
    assert 0 not in h3.shell._quiet_from


def test_a_restart_goes_on_from_a_quiet_spell_only_not_from_a_silent_stream_it_followed() -> None:
    # The payments were silent while the ledger ran 320 s ahead (W followed it to 570); then
    # they came again, still 300 s behind. W stands at 570 above the records' 260: not a quiet's
    # progress. Both quiet for 20 s then, from the records W stays at 570 (QR1's deadline, 580,
    # waits, and its settlement comes in time), restarted or not.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), ("P", payment("QR1-q", "requested", "QR1", 280)), ("L", ledger("QR1-d", "debited", "QR1", 280)))
    h.batch(("L", ledger("x", "debited", "X", 600)))

    def quiet(shell: ReconcileShell, p_s: float, l_s: float) -> None:
        now = time.monotonic()
        shell.clocks[0].last_arrival = [now - p_s, now - l_s]
        shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(shell.check_idle_feeds())

    quiet(h.shell, 100, 0.2)  # the payments silent: W = 600 - 30
    h.batch(("P", payment("y-q", "requested", "Y", 290)))
    assert h.shell.engines[0].silent == [False, False] and h.shell.engines[0].watermark_ms == T0 + 570_000
    h2 = Harness(h.store, settings=settings)
    h2.offsets = dict(h.offsets)
    h2.shell.engine(0)
    quiet(h2.shell, 20, 20)
    assert h2.shell.engines[0].watermark_ms == T0 + 570_000
    h2.batch(("P", payment("QR1-s", "settled", "QR1", 295)))
    assert h2.refunds() == []


def test_a_restart_after_a_backlog_on_a_partition_that_had_no_record_goes_on_from_the_records() -> None:
    # Holds on: a partition without records follows the wall clock (partition 1, another
    # worker's, has records); a backlog of older records then comes, taken at their own times
    # (the floor goes with the first of them, and with it the quiet's). Quiet, restarted, the
    # watermark moves from the records, never from the floor it had before them.
    settings = Settings(partitions=2, idle_timeout_s=1)

    def quiet(shell: ReconcileShell, s: float) -> None:
        quiet_check(shell, s)

    h = Harness(settings=settings)
    answer_ends(h, {(settings.ledger_topic, 1): 7})
    h.shell.engine(0)
    quiet(h.shell, 5)
    assert h.shell.engines[0].forced_ms > T0 + 86_400_000
    h.batch(*tick(0), *unsettled("QR1", 10))  # deadline 310
    assert h.shell.engines[0].watermark_ms == T0 - 20_000 and saved_meta(h)["forced_ms"] < T0
    h2 = Harness(h.store, settings=settings)
    h2.offsets = dict(h.offsets)
    answer_ends(h2, {(settings.ledger_topic, 1): 7, (settings.payment_topic, 0): 2, (settings.ledger_topic, 0): 2})
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}
    quiet(h2.shell, 400)
    assert h2.shell.engines[0].watermark_ms == T0 + 380_000
    asyncio.run(h2.shell.on_incidents([], T0 + 3_600_000))
    assert [(r["reference"], r["deadline"]) for r in h2.refunds()] == [("QR1", format_ms(T0 + 310_000))]


@pytest.mark.parametrize("floor", ["the wall clock", "another partition's watermark"])
def test_a_backlog_after_a_quiet_start_is_decided_as_a_replay_decides_it(floor: str) -> None:
    # Holds on: partition 1 had no record when the idle rule moved it (to the wall clock, partition
    # 0 being another worker's, with records; or to partition 0's watermark here); then a backlog
    # of older records comes. Nothing was decided under that floor: the records count at their
    # own times, and the refunds are a replay's (the same deadlines and refund ids), decided as the
    # backlog's own watermark passes them.
    settings = Settings(partitions=2, idle_timeout_s=1)
    h = Harness(settings=settings)
    if floor == "the wall clock":
        answer_ends(h, {(settings.ledger_topic, 0): 7})
    else:
        h.broker({settings.payment_topic: 0, settings.ledger_topic: 0})
    taken: list[KafkaRecord] = []
    offsets: dict[int, dict[str, int]] = {0: {}, 1: {}}

    def feed(p: int, *records: tuple[str, bytes]) -> None:  # (and kept for the replay)
        next_offset = dict(offsets[p])
        for role, value in records:
            topic = settings.payment_topic if role == "P" else settings.ledger_topic
            offset = next_offset.get(topic, 0)
            next_offset[topic] = offset + 1
            taken.append(KafkaRecord(topic, p, offset, None, orjson.loads(value)["reference"].encode(), value))
        batch_on(h, p, offsets[p], *records)

    if floor == "the wall clock":
        h.shell.engine(1)
        quiet_check(h.shell, 5, partitions=(1,))
        assert h.shell.engines[1].forced_ms > T0 + 86_400_000  # (today, past the backlog's day)
    else:
        feed(0, *tick(0), *tick(3000))
        h.shell.engine(1)
        quiet_check(h.shell, 5, partitions=(1,))
        assert h.shell.engines[1].forced_ms == T0 + 2_970_000
    backlog = [*unsettled("QR1", 10), *unsettled("QR2", 20), ("P", payment("QR2-s", "settled", "QR2", 100)), *tick(400)]
    feed(1, *backlog)
    asyncio.run(h.shell.on_incidents([], T0 + 10 * 86_400_000))  # (no incident: refunds paid when due)
    replayed = [d.value for p, d in replay(taken, settings.params) if p == 1 and d.role == "refunds"]
    assert [r["reference"] for r in replayed] == ["QR1"]
    assert h.refunds() == replayed
    assert h.shell.engines[1].watermark_ms == T0 + 370_000


class _ShellTimeAt:
    """`time` as the shell module sees it, its monotonic clock standing at `now`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def quiet_check(shell: ReconcileShell, p_s: float, l_s: float | None = None, partitions: Iterable[int] = (0,)) -> None:
    """The payments of `partitions` not heard from for `p_s` seconds, the ledger for `l_s` (the
    same by default), then one idle check. The check reads the clock at the moment the ages are
    set: the watermark moves by whole milliseconds of age, and a loaded machine's millisecond
    between setting them and the check made an exact watermark one millisecond more."""
    now = time.monotonic()
    for p in partitions:
        shell.clocks[p].last_arrival = [now - p_s, now - (p_s if l_s is None else l_s)]
        shell.clocks[p].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
    names = vars(shell_module)  # (the shell's `time` only: asyncio's loop keeps the real clock)
    real = names["time"]
    names["time"] = _ShellTimeAt(now)
    try:
        asyncio.run(shell.check_idle_feeds())
    finally:
        names["time"] = real


def restarted(h: Harness) -> Harness:
    """A worker restarted from what `h` saved so far, while `h` goes on as if it never stopped."""
    h2 = Harness(MemoryStore(dict(h.store.data)), settings=h.settings)
    h2.offsets = dict(h.offsets)
    return h2


def saved_meta(h: Harness, p: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = orjson.loads(h.store.data[meta_key(p)])
    return meta


def batch_on(h: Harness, p: int, offsets: dict[str, int], *records: tuple[str, bytes]) -> None:
    """Records of partition `p` (`offsets`: its next offset per topic, counted here)."""
    events = []
    for role, value in records:
        topic = h.settings.payment_topic if role == "P" else h.settings.ledger_topic
        key = orjson.loads(value)["reference"].encode()
        msg = SimpleNamespace(
            topic=topic, partition=p, offset=offsets.get(topic, 0), key=key, value=value, timestamp=None
        )
        offsets[topic] = msg.offset + 1
        events.append(SimpleNamespace(message=msg))
    asyncio.run(h.shell.process_batch(events))


@pytest.mark.parametrize("holds", [False, True], ids=["holds off", "holds on"])
def test_a_restart_in_a_quiet_spell_stays_behind_the_worker_that_did_not_stop(holds: bool) -> None:
    # The ledger leads by 250 s; both feeds quiet. A worker restarted 20 s after its last check
    # goes on from the quiet's floor, but counts only the quiet since it started: its watermark
    # stays exactly the time it was down behind the worker that did not stop, and it refunds
    # nothing that one has not refunded first, with the same refund_id.
    settings = Settings(partitions=1, idle_timeout_s=1, **({} if holds else {"max_hold_s": 0}))
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100), *unsettled("QR2", 150))  # deadlines 400 and 450
    h.batch(("L", ledger("x", "debited", "X", 400)))
    quiet_check(h.shell, 200)  # W = 150 - 30 + 200 = 320: the quiet's floor
    assert h.shell.engines[0].watermark_ms == T0 + 320_000 == saved_meta(h)["quiet_floor_ms"]
    h2 = restarted(h)
    h2.shell.engine(0)
    down_s = 20
    for since_restart_s in (2, 30, 70, 90):
        quiet_check(h.shell, 200 + down_s + since_restart_s)
        quiet_check(h2.shell, since_restart_s)
        if holds:  # (the detector's incidents, no incident open: a refund is paid once due)
            for shell in (h.shell, h2.shell):
                asyncio.run(shell.on_incidents([], T0 + 3_600_000))
        w_live, w_restarted = h.shell.engines[0].watermark_ms, h2.shell.engines[0].watermark_ms
        assert w_restarted == T0 + (320 + since_restart_s) * 1000 == w_live - down_s * 1000
        assert {r["refund_id"] for r in h2.refunds()} <= {r["refund_id"] for r in h.refunds()}
    assert [r["reference"] for r in h.refunds()] == [r["reference"] for r in h2.refunds()] == ["QR1"]
    # QR2's settlement comes (W 430 and 410, its deadline 450): neither refunds it.
    for worker in (h, h2):
        worker.batch(("P", payment("QR2-s", "settled", "QR2", 160)))
        assert [r["reference"] for r in worker.refunds()] == ["QR1"]


def test_a_quiet_floor_that_a_silent_stream_then_raised_is_not_gone_on_from_after_a_restart() -> None:
    # Both feeds quiet set the floor at 170; then a ledger record waits on the broker (the ledger
    # is late, not silent) and the payments, still quiet, are declared silent: W follows the
    # ledger to 270. The quiet's floor saved (170) is not where W stands: a restarted
    # worker does not go on from it, and stays behind the worker that did not stop.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    not_taken = {settings.payment_topic: 0, settings.ledger_topic: 0}
    h.broker(not_taken)
    h.batch(*tick(0), *unsettled("QR1", 100))  # deadline 400
    h.batch(("L", ledger("x", "debited", "X", 300)))
    quiet_check(h.shell, 100)  # W = 100 - 30 + 100
    assert saved_meta(h)["quiet_floor_ms"] == T0 + 170_000
    not_taken[settings.ledger_topic] = 1
    quiet_check(h.shell, 150)
    assert h.shell.engines[0].silent == [True, False] and h.shell.engines[0].watermark_ms == T0 + 270_000
    h2 = restarted(h)
    h2.broker(not_taken)
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}
    for worker in (h, h2):
        not_taken[settings.ledger_topic] = 1
        quiet_check(worker.shell, 160)  # the ledger still late: nothing moves
        assert worker.shell.engines[0].watermark_ms == T0 + 270_000
        not_taken[settings.ledger_topic] = 0
        worker.batch(("L", ledger("y", "debited", "Y", 310)))
    quiet_check(h.shell, 200, 100)
    quiet_check(h2.shell, 100)
    assert h2.shell.engines[0].watermark_ms <= h.shell.engines[0].watermark_ms == T0 + 380_000
    for worker in (h, h2):
        worker.batch(("P", payment("QR1-s", "settled", "QR1", 105)))
        assert worker.refunds() == []


def test_state_saved_without_the_quiet_floor_restarts_from_the_records() -> None:
    # A state saved by a worker that does not write which rule set the floor: the restart counts
    # the quiet from the records again (refunds late by the quiet so far, never early).
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))  # deadline 400
    quiet_check(h.shell, 300)
    stood = h.shell.engines[0].watermark_ms
    assert stood == T0 + 370_000
    meta = saved_meta(h)
    del meta["quiet_floor_ms"]
    h.store.data[meta_key(0)] = orjson.dumps(meta)
    h2 = restarted(h)
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}
    quiet_check(h2.shell, 100)  # from the records: 100 - 30 + 100, below the floor it keeps
    assert h2.shell.engines[0].watermark_ms == stood and h2.refunds() == []
    quiet_check(h2.shell, 340)
    assert [r["reference"] for r in h2.refunds()] == ["QR1"]


@pytest.mark.parametrize("after", ["quiet", "the ledger at once"])
def test_a_restart_during_a_silence_already_paged_takes_it_over_without_a_new_page(after: str) -> None:
    # The ledger went silent while the payments flowed (paged), then both went quiet (the end of
    # the traffic). A worker restarted then (SIGKILL or SIGTERM) restores the ledger's partitions
    # silent. Paged again at its first idle check, each restart would send a critical `opened`
    # with a new alert_id saying the payments flow while both are quiet. The page is the previous
    # incarnation's and still open: taken over at the restore, it is resolved when the ledger
    # delivers, also when its records are taken before the first idle check (the feed came back
    # while the worker was down: taken over only at that check, the page would stay open).
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)

    def worker(h: Harness) -> Harness:  # (wired as `app.py` wires them)
        silence = TopicSilence((settings.payment_topic, settings.ledger_topic), lambda: h.shell.engines)
        h.shell.on_idle, h.shell.on_engine = silence, silence.restored
        return h

    def feed_alerts(h: Harness) -> list[dict[str, Any]]:
        return [v for t, v in h.sent if t == settings.alert_topic and v["kind"] == "FEED_SILENT"]

    h = worker(Harness(settings=settings))
    h.batch(*tick(0), *unsettled("QR1", 10), ("P", payment("QR2-q", "requested", "QR2", 60)))
    quiet_check(h.shell, 0.2, 100)  # the ledger silent while the payments flow: paged
    [paged] = feed_alerts(h)
    assert paged["status"] == "opened" and paged["topic"] == settings.ledger_topic
    quiet_check(h.shell, 100)  # then both quiet: nothing pages
    assert feed_alerts(h) == [paged] and h.shell.engines[0].silent == [False, True]
    h2 = worker(restarted(h))
    if after == "quiet":
        h2.shell.engine(0)
        quiet_check(h2.shell, 0.5)  # the first check after the restart, before any idle timeout
        quiet_check(h2.shell, 100)  # and in the quiet
        assert feed_alerts(h2) == []
    h2.batch(("L", ledger("QR2-d", "debited", "QR2", 400)))  # the ledger delivers again
    quiet_check(h2.shell, 0.2)
    [resolved] = feed_alerts(h2)
    assert resolved["status"] == "resolved" and resolved["dedup_key"] == paged["dedup_key"]
    assert resolved["partitions"] == [0]


def test_a_restart_after_one_stream_came_back_from_a_quiet_spell_goes_on_from_the_records() -> None:
    # Both quiet moved W to 320. The payments come back (a payment behind that floor: taken at
    # it); the ledger stays quiet and is declared silent, W following the payments (100, under
    # the floor). Restarted, the worker must not go on from 320: QR1's deadline (400) would pass
    # in 80 s of quiet, before its settlement, still on its way.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))
    quiet_check(h.shell, 250)  # W = 70 + 250
    assert saved_meta(h)["quiet_floor_ms"] == T0 + 320_000
    h.batch(("P", payment("QR2-q", "requested", "QR2", 130)))
    assert "quiet_floor_ms" not in saved_meta(h)
    quiet_check(h.shell, 0.2, 300)  # the ledger silent while the payments flow
    assert h.shell.engines[0].silent == [False, True]
    h2 = restarted(h)
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}
    quiet_check(h.shell, 120)
    quiet_check(h2.shell, 100)
    for worker in (h, h2):
        assert worker.shell.engines[0].watermark_ms == T0 + 320_000
        worker.batch(("P", payment("QR1-s", "settled", "QR1", 110)))
        assert worker.refunds() == []


@pytest.mark.parametrize("records", ["behind the floor", "past the floor"])
def test_the_quiet_floor_saved_goes_with_the_first_record_after_the_quiet(records: str) -> None:
    # Whether its records leave W at the floor or lift it past, the quiet is over: the saved state
    # says so, and a worker restarted from it counts the next quiet from the records.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))
    quiet_check(h.shell, 200)
    assert saved_meta(h)["quiet_floor_ms"] == T0 + 270_000
    t = 120 if records == "behind the floor" else 400
    h.batch(("L", ledger("x", "debited", "X", t)))
    meta = saved_meta(h)
    assert "quiet_floor_ms" not in meta and meta["forced_ms"] == T0 + 270_000
    h2 = restarted(h)
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}
    quiet_check(h2.shell, 150)  # from the records: 100 - 30 + 150 = 220, under the floor
    assert h2.shell.engines[0].watermark_ms == T0 + 270_000


@not_compiled
def test_a_batch_whose_record_the_engine_refuses_still_ends_the_saved_quiet_floor() -> None:
    # A record that reaches the engine but is refused (an offset it takes as out of order, dead
    # lettered) changes no offset and saves nothing of its own: the quiet's end is saved anyway,
    # or a restart would go on from a floor the live worker no longer counts from.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))
    quiet_check(h.shell, 200)
    assert saved_meta(h)["quiet_floor_ms"] == T0 + 270_000
    eng = h.shell.engines[0]

    def refuse(*args: Any) -> list[Decision]:
        raise OffsetOrderError("qris.ledger-debits", 0, 2, 2)

    eng.on_record = refuse  # type: ignore[method-assign]
    h.batch(("L", ledger("x", "debited", "X", 400)))
    assert "quiet_floor_ms" not in saved_meta(h)
    h2 = restarted(h)
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {}


def test_after_a_restart_each_partition_goes_on_from_its_own_quiet_floor_only() -> None:
    # Holds on, two partitions: 0 has records and a quiet's floor; 1 had none and followed 0's
    # watermark (no quiet of its own), then took older records (at their own times: the floor it
    # had without records goes). Restarted, only 0 goes on from its floor, and 1's records do not
    # end 0's quiet. Neither runs ahead of the worker that did not stop.
    settings = Settings(partitions=2, idle_timeout_s=1)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))  # partition 0, deadline 400
    h.shell.engine(1)
    asyncio.run(h.shell.on_incidents([], T0 + 3_600_000))
    quiet_check(h.shell, 200, partitions=(0, 1))  # 0: W = 70 + 200; 1 follows it
    assert [h.shell.engines[p].watermark_ms for p in (0, 1)] == [T0 + 270_000] * 2
    assert saved_meta(h, 0)["quiet_floor_ms"] == T0 + 270_000 and "quiet_floor_ms" not in saved_meta(h, 1)
    offsets_1: dict[str, int] = {}
    batch_on(h, 1, offsets_1, *unsettled("QR5", 50))  # deadline 350; W = 50 - 30
    h2 = restarted(h)
    for p in (0, 1):
        h2.shell.engine(p)
    assert h2.shell._quiet_from == {0: T0 + 270_000}
    asyncio.run(h2.shell.on_incidents([], T0 + 3_600_000))
    h.shell.clocks[1].last_arrival = [time.monotonic() - 110] * 2  # (its records came 110 s ago)
    h.shell.clocks[1].resumed = -math.inf
    quiet_check(h.shell, 310)
    quiet_check(h2.shell, 100, partitions=(0, 1))
    assert [h2.shell.engines[p].watermark_ms for p in (0, 1)] == [T0 + 370_000, T0 + 120_000]
    assert [h.shell.engines[p].watermark_ms for p in (0, 1)] == [T0 + 380_000, T0 + 130_000]
    batch_on(h2, 1, dict(offsets_1), ("P", payment("QR6-q", "requested", "QR6", 60)))
    assert 0 in h2.shell._quiet_from
    for worker in (h, h2):
        assert worker.refunds() == []


def test_a_partition_moved_to_another_worker_and_back_goes_on_from_the_floor_last_saved() -> None:
    # The changelog is the store both workers restore from: B goes on from A's floor, and A, given
    # the partition back, from B's, not from its own older one.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    a = Harness(settings=settings)
    a.batch(*tick(0), *unsettled("QR1", 100))  # deadline 400
    quiet_check(a.shell, 100)  # W = 170
    a.shell.forget_partition(0)
    b = Harness(a.store, settings=settings)
    b.shell.engine(0)
    assert b.shell._quiet_from == {0: T0 + 170_000}
    quiet_check(b.shell, 50)
    assert saved_meta(b)["quiet_floor_ms"] == T0 + 220_000
    b.shell.forget_partition(0)
    a.shell.engine(0)
    assert a.shell._quiet_from == {0: T0 + 220_000}
    quiet_check(a.shell, 50)
    assert a.shell.engines[0].watermark_ms == T0 + 270_000  # (no time between the moves)
    a.batch(("P", payment("QR1-s", "settled", "QR1", 105)))
    assert a.refunds() == b.refunds() == []


def test_a_restart_that_lost_records_taken_after_the_quiet_does_not_go_on_while_they_wait() -> None:
    # Records ended the quiet but the worker stopped before saving them: restored, it has the
    # quiet's floor again, and its records wait on the broker. Not silent until they are taken
    # (they end the quiet again): the floor does not move meanwhile.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0), *unsettled("QR1", 100))  # deadline 400
    quiet_check(h.shell, 300)  # W = 370
    h2 = restarted(h)
    h2.broker({settings.payment_topic: 1, settings.ledger_topic: 0})  # QR1's settlement, not taken
    h2.shell.engine(0)
    assert h2.shell._quiet_from == {0: T0 + 370_000}
    quiet_check(h2.shell, 100)
    assert h2.shell.engines[0].watermark_ms == T0 + 370_000 and h2.refunds() == []
    h2.broker({settings.payment_topic: 0, settings.ledger_topic: 0})
    h2.batch(("P", payment("QR1-s", "settled", "QR1", 105)))
    assert h2.shell._quiet_from == {} and "quiet_floor_ms" not in saved_meta(h2)
    quiet_check(h2.shell, 100)
    assert h2.refunds() == []


def test_both_feeds_quiet_after_a_declared_silence_move_on_from_the_stream_still_heard() -> None:
    # The payments were silent for an hour while the ledger flowed (the watermark followed the
    # ledger); then both are quiet. The silent stream's newest record, an hour old, is not
    # where the watermark stands: counted, nothing would move for the hour the ledger leads by.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    h.batch(*[("L", ledger(f"x{i}", "debited", f"X{i}", 60 * i)) for i in range(1, 61)])
    eng = h.shell.engines[0]

    def quiet(p_s: float, l_s: float) -> None:
        quiet_check(h.shell, p_s, l_s)

    quiet(3600, 0.2)  # payments silent, the ledger flows: W = 3600 - 30
    assert eng.watermark_ms == T0 + 3_570_000
    before = len(h.refunds())
    assert h.shell.counts["idle_quiet_decisions"] == 0  # (one silent stream: FEED_SILENT says it)
    quiet(4000, 400)  # both quiet for 400 s: W = 3600 - 30 + 400
    assert eng.watermark_ms == T0 + 3_970_000
    assert len(h.refunds()) == 60  # X60's deadline (3900) passed: every debit refunded
    # What came due while both were quiet is counted (a replay makes it only with --drain).
    assert h.shell.counts["idle_quiet_decisions"] == 60 - before > 0  # (refunds: not the signals)


def test_after_both_feeds_were_quiet_the_first_payment_does_not_make_the_ledger_silent() -> None:
    # A night with both feeds quiet, then one payment: its debit comes seconds later. The ledger
    # is silent only while the payments flow, so its silence counts from the payment, not from
    # its own last record before the night (a critical FEED_SILENT that resolved 30 s later).
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    clock = h.shell.clocks[0]
    clock.last_arrival = [time.monotonic() - 1000] * 2
    h.batch(("P", payment("QR9-q", "requested", "QR9", 1000)))
    asyncio.run(h.shell.check_idle_feeds())
    eng = h.shell.engines[0]
    assert eng.silent == [False, False]
    # The payments go on flowing and the ledger stays quiet for the idle timeout: silent.
    now = time.monotonic()
    clock.resumed, clock.last_arrival = now - 2, [now - 0.1, now - 1000]
    asyncio.run(h.shell.check_idle_feeds())
    assert eng.silent == [False, True]


def test_with_holds_what_both_quiet_feeds_make_due_is_counted_when_the_incidents_release_it() -> None:
    # Holds on (the default): the refunds the quiet advance makes due wait for the detector's
    # incidents, and are released by them, not by the idle check.
    h = Harness(settings=Settings(partitions=1, idle_timeout_s=1))
    h.batch(*tick(0))
    h.batch(*[("L", ledger(f"x{i}", "debited", f"X{i}", 60 * i)) for i in range(1, 61)])
    now = time.monotonic()
    h.shell.clocks[0].last_arrival = [now - 4000, now - 4000]
    h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
    asyncio.run(h.shell.check_idle_feeds())
    assert h.refunds() == [] and h.shell.counts["idle_quiet_decisions"] == 0
    asyncio.run(h.shell.on_incidents([], h.shell.engines[0].watermark_ms + 600_000))
    assert len(h.refunds()) == 60 == h.shell.counts["idle_quiet_decisions"]


def test_the_detector_publishes_its_incidents_and_progress_for_the_partitions() -> None:
    settings = Settings(partitions=1)
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append((topic, value))

    async def nothing() -> None:
        return None

    shell = BurstShell(settings, 1, send, nothing)
    from stream.core.burst import BurstDetector

    shell.detector = BurstDetector(1, settings.burst)
    shell.next_offset = 0
    report = {"partition": 0, "through_minute": T0 // 60_000 + 5, "minutes": []}
    event = SimpleNamespace(message=SimpleNamespace(offset=0, value=orjson.dumps(report)))
    asyncio.run(shell.process_batch([event]))
    [(topic, raw)] = [x for x in sent if x[0] == settings.incidents_topic]
    events, known = parse_incidents_record(raw)
    assert events == [] and known == (T0 // 60_000 + 6) * 60_000 + 30_000
    # The same report again (a batch that closes no further minute): nothing new, no record
    # (the topic is kept for good and read whole at every start); the next minute makes one.
    again = SimpleNamespace(message=SimpleNamespace(offset=1, value=orjson.dumps(report)))
    asyncio.run(shell.process_batch([again]))
    assert len([x for x in sent if x[0] == settings.incidents_topic]) == 1
    later = {**report, "through_minute": T0 // 60_000 + 6}
    asyncio.run(shell.process_batch([SimpleNamespace(message=SimpleNamespace(offset=2, value=orjson.dumps(later)))]))
    *_, (_, raw) = [x for x in sent if x[0] == settings.incidents_topic]
    assert parse_incidents_record(raw)[1] == known + 60_000


def test_a_detector_frozen_past_the_session_sends_no_incidents_record() -> None:
    # The detector's worker stopped past its session: the new owner of the signals partition
    # decides the incidents since; what this one made before the freeze (an `opened` after the
    # new owner's `resolved` would page again) is not sent, and the worker restarts.
    from stream.core.burst import BurstDetector
    from stream.worker.freeze import LoopWatch

    settings = Settings(partitions=1)
    sent: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append(topic)

    async def nothing() -> None:
        return None

    restarts: list[str] = []

    def restart() -> None:
        restarts.append("frozen")
        raise Restarted

    shell = BurstShell(settings, 1, send, nothing)
    shell.loop, shell.on_frozen = LoopWatch(settings.session_timeout_s), restart
    shell.detector = BurstDetector(1, settings.burst)
    shell.next_offset = 0
    report = {"partition": 0, "through_minute": T0 // 60_000 + 5, "minutes": []}
    event = SimpleNamespace(message=SimpleNamespace(offset=0, value=orjson.dumps(report)))
    from stream.worker.freeze import now_s

    shell.loop.seen_s = now_s() - 40.0
    with pytest.raises(Restarted):
        asyncio.run(shell.process_batch([event]))
    assert restarts == ["frozen"] and sent == []


def updated_alert(t: int) -> dict[str, Any]:
    """An incident's `updated` alert that occurred 30 s before `t`, as the hold tally keeps it
    until every partition has reported its holds past it."""
    return {
        "alert_id": "al_x", "kind": "FAILURE_BURST", "severity": "critical", "status": "updated",
        "incident_id": "inc_x", "scope": {"type": "all", "id": "all"}, "occurred_at": format_ms(t - 30_000),
    }  # fmt: skip


@not_compiled
def test_the_burst_shell_sends_an_incident_update_once_every_partition_reported_its_holds() -> None:
    """Holds on: the detector's `updated` alert goes to the incidents topic at once (the
    partitions need it) but to the alerts topic only when every partition's hold report says it
    decided past the alert's time, with the holds it covers; a snapshot carries what waits."""
    from stream.core import burstsnapshot
    from stream.core.burst import BurstDetector
    from stream.core.eventtime import format_ms
    from stream.core.holdtally import HoldTally

    settings = Settings(partitions=2)  # holds on (default H)
    sent: list[tuple[str, dict[str, Any]]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append((topic, orjson.loads(value)))

    async def nothing() -> None:
        return None

    minute = T0 // 60_000 + 10
    t = (minute + 1) * 60_000 + 30_000
    update = updated_alert(t)

    class OneUpdate(BurstDetector):  # a detector whose next complete minute is that update
        def on_signals(self, value: dict[str, Any]) -> list[Any]:
            from stream.core.decisions import Decision

            if "decided_through_ms" in value:
                raise AssertionError("hold reports are the tally's, not the detector's")
            self.merge.closed_through = minute
            return [Decision("alerts", b"all", dict(update), t - 30_000)]

    shell = BurstShell(settings, 2, send, nothing)
    shell.detector = OneUpdate(2, settings.burst)
    shell.tally = HoldTally(range(2), 30_000)
    shell.next_offset = 0

    def batch(offset: int, value: dict[str, Any]) -> None:
        event = SimpleNamespace(message=SimpleNamespace(offset=offset, value=orjson.dumps(value)))
        asyncio.run(shell.process_batch([event]))

    batch(0, {"partition": 0, "through_minute": minute, "minutes": []})
    [(topic, record)] = sent
    assert topic == settings.incidents_topic and record["events"][0]["status"] == "updated"
    held = ["held", "rf_1", "inc_x", 25_000, t - 10_000]
    batch(1, {"partition": 0, "hold_events": [held], "decided_through_ms": t + 30_000})
    assert [x for x in sent if x[0] == settings.alert_topic] == []  # partition 1 has not reported
    raw = burstsnapshot.encode(shell.detector, shell.next_offset, shell.tally)
    assert burstsnapshot.decode(raw).tally.pending  # type: ignore[union-attr]
    batch(2, {"partition": 1, "hold_events": [], "decided_through_ms": t + 30_000})
    [(_topic, alert)] = [x for x in sent if x[0] == settings.alert_topic]
    assert alert["alert_id"] == "al_x" and alert["holds"]["held"] == {"count": 1, "amount_idr": 25_000}
    assert alert["holds"]["still_held"]["count"] == 1 and alert["holds"]["as_of"] == format_ms(t)


TWO_PARTITIONS = Settings(partitions=2)  # holds on (default H)


class BurstHarness:
    """A burst shell with holds on (2 partitions, a real detector and tally) whose restarts read
    the incidents it sent and the group's committed offset (the signals it took, as Faust acks
    them at a clean stop): what `_resume_offset` finds at the next start."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, settings: Settings = TWO_PARTITIONS) -> None:
        from stream.core.burst import BurstDetector
        from stream.worker import bursts as bursts_module

        self.settings = settings
        self.sent: list[tuple[str, dict[str, Any]]] = []

        async def send(topic: str, key: bytes | None, value: bytes) -> None:
            self.sent.append((topic, orjson.loads(value)))

        async def nothing() -> None:
            return None

        async def committed() -> int:
            return self.shell.next_offset

        async def published(settings: Settings) -> int | None:
            return self.records()[-1]["signals_offset"] if self.records() else None

        monkeypatch.setattr(bursts_module, "read_published_offset", published)
        self.shell = BurstShell(settings, 2, send, nothing, committed=committed)
        self.shell.detector = BurstDetector(2, settings.burst)
        self.shell.tally = self.shell._new_tally()
        self.shell.next_offset = 0

    def batch(self, *values: dict[str, Any]) -> None:
        start = self.shell.next_offset
        events = [
            SimpleNamespace(message=SimpleNamespace(offset=start + i, value=orjson.dumps(v)))
            for i, v in enumerate(values)
        ]
        asyncio.run(self.shell.process_batch(events))

    def records(self) -> list[dict[str, Any]]:
        return [v for topic, v in self.sent if topic == self.settings.incidents_topic]

    def alerts(self) -> list[dict[str, Any]]:
        return [v for topic, v in self.sent if topic == self.settings.alert_topic]

    def resume_offset(self) -> int:
        """Where the next start's detector goes on live."""
        return asyncio.run(self.shell._resume_offset([]))


@not_compiled
def test_a_batch_that_only_sends_an_alert_the_tally_held_still_publishes_the_detectors_position(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The tally's `updated` alert goes out with the hold reports that complete it: a batch that
    moves no minute. Its incidents record says the alert is sent through that batch, or every
    restart takes those reports again and sends the alert again (the same `updated` alert_id at
    each SIGTERM and restart, beside a WARNING that the committed offset is past the last
    incidents record)."""
    h = BurstHarness(monkeypatch)
    minute = T0 // 60_000 + 10
    t = (minute + 1) * 60_000 + 30_000
    update = updated_alert(t)
    detector = h.shell.detector
    assert detector is not None

    def closes_the_minute(value: dict[str, Any]) -> list[Decision]:
        detector.merge.closed_through = minute
        return [Decision("alerts", b"all", dict(update), t - 30_000)]

    monkeypatch.setattr(detector, "on_signals", closes_the_minute)
    h.batch({"partition": 0, "through_minute": minute, "minutes": []})
    assert [r["signals_offset"] for r in h.records()] == [1]
    h.batch(*({"partition": p, "hold_events": [], "decided_through_ms": t + 30_000} for p in (0, 1)))
    assert [a["alert_id"] for a in h.alerts()] == ["al_x"]
    *_, record = h.records()
    assert record["signals_offset"] == 3 == h.shell.next_offset
    assert record["events"] == [] and record["known_through_ms"] == h.records()[0]["known_through_ms"]
    with caplog.at_level("WARNING"):
        assert h.resume_offset() == 3
    assert "covers them only" not in caplog.text


def test_a_clean_stop_publishes_the_position_of_batches_that_moved_no_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches that move no minute and send nothing (hold reports, a minute one partition has
    not closed yet) add no incidents record; at a clean stop the detector publishes its position,
    so the next start finds nothing behind the committed offset to warn about or take again."""
    h = BurstHarness(monkeypatch)
    minute = T0 // 60_000 + 5
    h.batch(*({"partition": p, "through_minute": minute, "minutes": []} for p in (0, 1)))
    assert [r["signals_offset"] for r in h.records()] == [2]
    h.batch({"partition": 0, "hold_events": [], "decided_through_ms": (minute + 1) * 60_000})
    h.batch({"partition": 0, "through_minute": minute + 1, "minutes": []})
    assert len(h.records()) == 1 and h.shell.next_offset == 4 and h.alerts() == []
    with caplog.at_level("WARNING"):
        assert h.resume_offset() == 2  # (a crash here: offsets 2..3 are taken again, and said)
    assert "signals committed to offset 4 but the detector's last incidents record covers them only to offset 2" in (
        caplog.text
    )
    caplog.clear()

    asyncio.run(h.shell.publish_progress())
    *_, record = h.records()
    assert record == {**h.records()[0], "signals_offset": 4}  # no event, the same known-through time
    asyncio.run(h.shell.publish_progress())  # nothing taken since: nothing more
    assert len(h.records()) == 2
    with caplog.at_level("WARNING"):
        assert h.resume_offset() == 4
    assert caplog.text == ""


def test_a_revocation_hands_the_detector_over_at_its_position(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Partitions revoked (a rebalance may move the detector): its position is published as at a
    clean stop, then it is forgotten; the next owner resumes at the committed offset with nothing
    to warn about or take again."""
    h = BurstHarness(monkeypatch)
    minute = T0 // 60_000 + 5
    h.batch(*({"partition": p, "through_minute": minute, "minutes": []} for p in (0, 1)))
    h.batch({"partition": 0, "hold_events": [], "decided_through_ms": (minute + 1) * 60_000})
    assert [r["signals_offset"] for r in h.records()] == [2] and h.shell.next_offset == 3
    with caplog.at_level("INFO"):
        asyncio.run(h.shell.hand_over())
    assert "position published at the revocation: signals offset 3" in caplog.text
    assert [r["signals_offset"] for r in h.records()] == [2, 3]
    assert h.shell.detector is None and h.shell.next_offset == -1
    caplog.clear()
    next_owner = BurstHarness(monkeypatch)
    next_owner.sent = h.sent  # the incidents topic as the first left it

    async def committed() -> int:
        return 3

    next_owner.shell.committed = committed
    with caplog.at_level("WARNING"):
        assert next_owner.resume_offset() == 3
    assert caplog.text == ""


def test_no_position_is_published_at_a_stop_after_a_freeze_past_the_session_or_with_holds_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Frozen past the session: another worker may run the detector now, and its records must
    # stay the last. Holds off: no worker reads the incidents topic.
    from stream.worker.freeze import LoopWatch, now_s

    minute = T0 // 60_000 + 5
    frozen = BurstHarness(monkeypatch)
    frozen.batch(*({"partition": p, "through_minute": minute, "minutes": []} for p in (0, 1)))
    frozen.batch({"partition": 0, "through_minute": minute + 1, "minutes": []})
    frozen.shell.loop = LoopWatch(frozen.settings.session_timeout_s)
    frozen.shell.loop.seen_s = now_s() - 40.0
    asyncio.run(frozen.shell.publish_progress())
    assert [r["signals_offset"] for r in frozen.records()] == [2]

    off = BurstHarness(monkeypatch, Settings(partitions=2, max_hold_s=0))
    off.batch(*({"partition": p, "through_minute": minute, "minutes": []} for p in (0, 1)))
    asyncio.run(off.shell.publish_progress())
    assert off.records() == []


def test_with_holds_a_quiet_partition_with_nothing_waiting_still_closes_its_minutes() -> None:
    """Holds on: every partition's refunds wait for the detector, which waits for every
    partition's closed minutes. A partition whose feeds went quiet with nothing waiting must
    still let event time pass, or one quiet partition would hold every refund back."""
    settings = Settings(partitions=1, idle_timeout_s=1)  # holds on (default H)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    asyncio.run(h.shell.on_incidents([], T0 + 600_000))

    def quiet_for(seconds: float) -> list[int]:
        h.shell.clocks[0].last_arrival = [time.monotonic() - seconds] * 2
        h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(h.shell.check_idle_feeds())
        return [v["through_minute"] for t, v in h.sent if t == settings.signals_topic and "through_minute" in v]

    def hold_progress() -> list[int]:
        return [v["decided_through_ms"] for t, v in h.sent if t == settings.signals_topic and "hold_events" in v]

    quiet_for(40)  # W = 0 - 30 + 40 = 10 s: both records decided, nothing waits any more
    eng = h.shell.engines[0]
    assert not eng.heap and not eng.decide
    closed = quiet_for(200)  # W = 170 s: minutes 0 and 1 close (end + 30 s probe age)
    assert closed and max(closed) == T0 // 60_000 + 1
    # ... and its hold reports say how far it decided, so no incident alert waits for it.
    assert max(hold_progress()) == T0 + 120_000  # decided through 170 s, floored to the minute


def test_a_stream_is_silent_only_when_the_broker_has_nothing_of_it_left_to_take() -> None:
    """A worker behind its input does not hear from a stream for longer than the idle timeout
    while its records wait on the broker (a backlog; Faust handing one topic's records over long
    after the other's). Declaring it silent would pass deadlines before the settlements waiting
    there: a wrong refund, then its cancellation. The idle rule waits until the broker has
    nothing of the stream left to take."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    on_broker = {settings.payment_topic: 3, settings.ledger_topic: 0}  # records not taken yet
    asked = h.broker(on_broker)
    h.batch(("L", ledger("later-l", "reversed", "TICK", 400, 1)))  # the ledger goes on to 400 s

    def quiet_payments() -> None:  # the payments stream not heard from for 400 s
        h.shell.clocks[0].last_arrival = [time.monotonic() - 400.0, time.monotonic()]
        h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(h.shell.check_idle_feeds())

    quiet_payments()
    quiet_payments()
    # Its settlement may be among the records waiting: the deadline (300 s) still waits.
    assert h.refunds() == [] and h.shell.engines[0].decide
    assert not [v for t, v in h.sent if t == settings.alert_topic and v["kind"] == "FEED_SILENT"]
    # Asked, at each check, about the stream idle by age only (the ledger flows: never asked).
    assert asked == [[(settings.payment_topic, 0)]] * 2 and h.shell.counts["idle_streams_behind"] == 1
    on_broker[settings.payment_topic] = 0  # taken: now the stream has truly gone quiet
    quiet_payments()
    assert [v["kind"] for t, v in h.sent if t == settings.alert_topic] == ["FEED_SILENT"]
    assert [r["type"] for r in h.refunds()] == ["refund.requested"]


def test_a_stream_is_not_silent_while_the_broker_does_not_answer_for_its_end_offsets() -> None:
    """A broker that stops answering this worker (a partition leader it cannot reach, a sick
    broker) may hold settlements the worker cannot see; the high watermark its consumer last
    fetched stays where it was. No answer to the idle rule's question is not silence: the
    watermark waits (no refund decided), the check is counted and logged, and the rule goes on
    once the broker answers that nothing is left."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    h.batch(("L", ledger("later-l", "reversed", "TICK", 400, 1)))
    asked = h.broker(None)

    def quiet(streams: list[float]) -> None:
        h.shell.clocks[0].last_arrival = [time.monotonic() - age for age in streams]
        h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(h.shell.check_idle_feeds())

    quiet([400.0, 0.0])  # payments silent by age, ledger flowing
    quiet([400.0, 400.0])  # both quiet by age: event time would follow the wall clock
    eng = h.shell.engines[0]
    assert h.refunds() == [] and eng.decide and eng.silent == [False, False]
    assert h.shell.counts["idle_checks_unanswered"] == 2
    assert asked == [[(settings.payment_topic, 0)], sorted([(settings.payment_topic, 0), (settings.ledger_topic, 0)])]
    h.broker({settings.payment_topic: 0, settings.ledger_topic: 0})  # it answers: nothing left
    quiet([400.0, 0.0])
    assert [r["type"] for r in h.refunds()] == ["refund.requested"] and eng.silent == [True, False]


def test_a_stream_that_ends_with_a_transaction_marker_is_silent_when_nothing_else_is_left() -> None:
    """A transactional producer's commit (or abort) marker takes an offset after its last record
    and no consumer is given it: the end offset stays one past the next offset to take for ever.
    Counted as a record, the payments stream of a transactional producer in an outage was never
    silent (late, for ever): no refund, and the other stream's FEED_SILENT said the watermark
    followed the payments. The offsets between are read from the broker: markers only is
    nothing left to take."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    h.batch(("L", ledger("later-l", "reversed", "TICK", 400, 1)))  # the ledger goes on to 400 s
    h.broker({settings.payment_topic: 1, settings.ledger_topic: 0})  # the payments' last marker
    read = h.lag("markers")
    h.shell.clocks[0].last_arrival = [time.monotonic() - 400.0, time.monotonic()]
    h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
    asyncio.run(h.shell.check_idle_feeds())
    taken = h.offsets[settings.payment_topic]
    assert read == [Gap(settings.payment_topic, 0, taken, taken + 1)]
    alerts = [v for t, v in h.sent if t == settings.alert_topic]
    assert [(a["kind"], a["topic"]) for a in alerts] == [("FEED_SILENT", settings.payment_topic)]
    assert [r["type"] for r in h.refunds()] == ["refund.requested"]
    assert h.shell.counts["idle_streams_behind"] == 0 and h.shell.counts["idle_checks_unanswered"] == 0


def test_a_stop_waits_for_the_idle_check_under_way_and_no_check_asks_the_broker_after_it() -> None:
    """The worker's stop closes the idle rule's readers (`close_side_clients`) while its timer
    may be in a check: the check ends first and reads no more lags, and no check asks after it
    (a read then would start a closed reader again, left open when the process ends)."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    asked = h.broker({settings.payment_topic: 1, settings.ledger_topic: 1})  # each ends with a marker
    read: list[Gap] = []

    async def scenario() -> None:
        reading, go_on = asyncio.Event(), asyncio.Event()

        async def fetch_lag(gap: Gap) -> list[KafkaRecord]:
            read.append(gap)
            reading.set()
            await go_on.wait()
            return []

        h.shell.fetch_lag = fetch_lag
        check = asyncio.create_task(h.shell.check_idle_feeds())
        await reading.wait()  # the first lag read is under way
        stop = asyncio.create_task(h.shell.stop_idle_checks())
        await asyncio.sleep(0.05)
        assert not stop.done()
        go_on.set()
        await asyncio.wait_for(stop, 5.0)
        assert check.done()
        await h.shell.check_idle_feeds()  # the timer's next tick, after the stop

    h.shell.clocks[0].last_arrival = [time.monotonic() - 400.0] * 2
    h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
    asyncio.run(scenario())
    assert len(asked) == 1 and len(read) == 1  # the other stream's lag not read; nothing asked after
    assert h.refunds() == [] and h.shell.engines[0].silent == [False, False]  # no answer: nothing moved


@pytest.mark.parametrize("holds", ["records", "no answer", "too long", "no reader"])
def test_a_stream_with_offsets_left_is_silent_only_when_they_are_read_and_hold_markers_only(holds: str) -> None:
    """A record not taken yet before the end offset (Faust slow to hand it over) may be the
    settlement: late, not silent. So is a lag the broker does not let the worker read in time,
    one longer than a few markers (not read: a backlog), and any lag when there is no reader."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    h.batch(("L", ledger("later-l", "reversed", "TICK", 400, 1)))
    not_taken = MARKERS_PROBE_OFFSETS + 1 if holds == "too long" else 2
    h.broker({settings.payment_topic: not_taken, settings.ledger_topic: 0})
    read = [] if holds == "no reader" else h.lag("markers" if holds == "too long" else holds)

    def quiet_payments() -> None:
        h.shell.clocks[0].last_arrival = [time.monotonic() - 400.0, time.monotonic()]
        h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
        asyncio.run(h.shell.check_idle_feeds())

    quiet_payments()
    quiet_payments()
    eng = h.shell.engines[0]
    assert h.refunds() == [] and eng.decide and eng.silent == [False, False]
    assert not [v for t, v in h.sent if t == settings.alert_topic]
    assert h.shell.counts["idle_streams_behind"] == 1  # logged and counted once per episode
    taken = h.offsets[settings.payment_topic]
    want = [] if holds in ("too long", "no reader") else [Gap(settings.payment_topic, 0, taken, taken + 2)] * 2
    assert read == want
    assert h.shell.counts["idle_checks_unanswered"] == (2 if holds == "no answer" else 0)
    if holds in ("records", "no answer"):  # then read, and markers only: silent at last
        h.lag("markers")
        quiet_payments()
        assert eng.silent == [True, False] and [r["type"] for r in h.refunds()] == ["refund.requested"]


def test_the_idle_rule_asks_the_broker_nothing_while_both_streams_flow() -> None:
    """The hot path pays nothing: no stream idle by age, no question to the broker."""
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(100))
    asked = h.broker({settings.payment_topic: 0, settings.ledger_topic: 0})
    asyncio.run(h.shell.check_idle_feeds())  # records just taken on both streams
    assert asked == [] and h.refunds() == []


def test_the_shell_lock_says_how_long_it_is_held() -> None:
    """The worker's watchdog restarts a worker whose shell lock stays held (a hung send, flush or
    state write): the lock must tell, and forget once released."""
    from stream.worker.shell import TimedLock

    async def run() -> tuple[float, float]:
        lock = TimedLock()
        async with lock:
            assert lock.held_since is not None
            during = lock.held_for_s(lock.held_since + 95.0)
        return during, lock.held_for_s(time.monotonic() + 95.0)

    during, after = asyncio.run(run())
    # (a + 95.0) - a is 95.0 only up to rounding: monotonic times are large floats.
    assert during == pytest.approx(95.0) and after == 0.0


def answer_ends(h: Harness, ends: dict[tuple[str, int], int]) -> list[list[tuple[str, int]]]:
    """The broker's end offsets as given (`ends`, 0 for a topic partition not listed), whatever
    this worker took. Returns the questions asked."""
    asked: list[list[tuple[str, int]]] = []

    async def end_offsets(tps: Collection[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(sorted(tps))
        return {tp: ends.get(tp, 0) for tp in tps}

    h.shell.end_offsets = end_offsets
    return asked


@pytest.mark.parametrize("broker", ["records elsewhere", "records of its own waiting", "no record anywhere"])
def test_with_holds_a_partition_never_fed_follows_the_wall_clock_only_for_records_elsewhere(broker: str) -> None:
    """Holds on, a worker whose only partition never had a record, while partition 1 of the input
    is another worker's: no watermark here to follow, so its minutes would never close and the
    other partition's refunds would wait. Event time then follows the wall clock (live only), but
    only when the input has records elsewhere, and the broker has none of its own partition not
    yet taken (a backlog of old records must not all be taken as late). An input without any
    record has nothing waiting for it: nothing moves, and the detector closes no minute (the
    backlog produced later would find them closed)."""
    settings = Settings(partitions=2, idle_timeout_s=1)  # holds on (default H)
    h = Harness(settings=settings)
    eng = h.shell.engine(0)
    ends = {
        "records elsewhere": {(settings.ledger_topic, 1): 7},
        "records of its own waiting": {(settings.payment_topic, 0): 5, (settings.ledger_topic, 1): 7},
        "no record anywhere": {},
    }[broker]
    asked = answer_ends(h, ends)
    h.shell.clocks[0].last_arrival = [time.monotonic() - 200.0] * 2
    h.shell.clocks[0].resumed = -math.inf  # (no stream delivered after a quiet: the ages set are the ages)
    before_ms = int(time.time() * 1000)
    asyncio.run(h.shell.check_idle_feeds())
    assert asked == [sorted((t, p) for t in (settings.payment_topic, settings.ledger_topic) for p in (0, 1))]
    closed = [v["through_minute"] for t, v in h.sent if t == settings.signals_topic and "through_minute" in v]
    if broker != "records elsewhere":
        assert closed == [] and eng.watermark_ms < 0
    else:
        # W = now - A (30 s) - idle timeout (1 s): the minutes up to about a minute ago close.
        assert before_ms - 32_000 <= eng.watermark_ms <= int(time.time() * 1000) - 31_000
        assert closed and (before_ms - 32_000 - 30_000) // 60_000 - 1 <= max(closed)


def test_with_holds_an_input_without_records_closes_no_minute_and_its_backlog_reaches_the_detector() -> None:
    # Deployed on empty topics (one worker, both partitions here), the feed then starts with a
    # backfill of yesterday on partition 1. No idle check moved anything before it: partition 1
    # reports the backfill's minutes to the detector (as a replay does), and partition 0, still
    # without records, follows partition 1's watermark, not the wall clock.
    settings = Settings(partitions=2, idle_timeout_s=1)
    h = Harness(settings=settings)
    answer_ends(h, {})
    for p in (0, 1):
        h.shell.engine(p)
    quiet_check(h.shell, 600, partitions=(0, 1))
    assert [h.shell.engines[p].watermark_ms < 0 for p in (0, 1)] == [True, True] and h.sent == []
    offsets: dict[str, int] = {}
    batch_on(h, 1, offsets, *unsettled("QR1", 10), *tick(400))
    quiet_check(h.shell, 5, partitions=(0,))
    assert h.shell.engines[0].watermark_ms == h.shell.engines[1].watermark_ms == T0 + 370_000
    reports = [v for t, v in h.sent if t == settings.signals_topic and v.get("partition") == 1 and "minutes" in v]
    requested = [m["minute"] for v in reports for m in v["minutes"] if m["scopes"]]
    assert (T0 + 10_000) // 60_000 in requested


def test_a_batch_is_acked_only_once_its_decisions_and_state_are_durable_and_batches_commit_together() -> None:
    """The agent's group commit: a batch's decisions are sent at once, but its ack waits for a
    commit that flushed the producer, then wrote the state (changelog delivered); the batches
    decided while a commit is on its way go together in the next one, and no more than
    MAX_UNCOMMITTED_BATCHES are decided ahead of it."""
    from stream.worker.shell import MAX_UNCOMMITTED_BATCHES

    h = Harness()
    order: list[str] = []
    gate = asyncio.Event()

    async def flush() -> None:
        order.append("flush")

    async def write_state() -> None:
        order.append("write")
        await gate.wait()
        order.append("written")

    h.shell.flush, h.shell.write_state = flush, write_state
    settings = h.settings

    def events(n: int, t: float) -> list[Any]:
        out = []
        for topic_role, value in unsettled(f"R{n}", t) + tick(t + 1_000):
            topic = settings.payment_topic if topic_role == "P" else settings.ledger_topic
            key = orjson.loads(value)["reference"].encode()
            msg = SimpleNamespace(
                topic=topic, partition=0, offset=h.offsets[topic], key=key, value=value, timestamp=None
            )
            h.offsets[topic] += 1
            out.append(SimpleNamespace(message=msg))
        return out

    acked: list[int] = []

    async def run() -> None:
        shell = h.shell
        # Batch 0: decided, its decisions sent, its commit started and held in the state write.
        await shell.process_batch(events(0, T0), lambda: acked.append(0))
        await asyncio.sleep(0)
        assert order[-1] == "write" and order.count("write") == 1 and acked == [] and shell.uncommitted() == 0
        assert shell.counts["refunds"] + shell.counts["signals"] + shell.counts["alerts"] == 0 or order[0] == "flush"
        # Batches 1..: decided while that commit waits; none acked, none committed yet.
        for i in range(1, MAX_UNCOMMITTED_BATCHES):
            await shell.process_batch(events(i, T0 + i * 60_000), lambda i=i: acked.append(i))
        assert acked == [] and shell.uncommitted() == MAX_UNCOMMITTED_BATCHES - 1
        stored_before = dict(h.store.data)
        # One more would be too many ahead: it waits for a commit of its own.
        last = asyncio.ensure_future(
            shell.process_batch(events(99, T0 + 99 * 60_000), lambda: acked.append(MAX_UNCOMMITTED_BATCHES))
        )
        await asyncio.sleep(0.01)
        assert not last.done() and acked == []
        gate.set()
        await last
        while shell.uncommitted() or (shell._committer and not shell._committer.done()):
            await asyncio.sleep(0.001)
        # Batch 0 alone in the first commit; the later ones together in the second (the waiting
        # batch's own commit found nothing left, or took the rest).
        assert acked == list(range(MAX_UNCOMMITTED_BATCHES + 1))
        assert 2 <= shell.counts["commits"] <= 3  # MAX_UNCOMMITTED_BATCHES + 1 batches
        # Every write started only after the one before it was written (one commit at a time).
        writes = [x for x in order if x != "flush"]
        assert writes == ["write", "written"] * (len(writes) // 2)
        assert h.store.data != stored_before  # the later batches' state was written

    asyncio.run(run())


class SnapshotBroker:
    """A `SnapshotWriter` for the shell alone: the snapshots' signals offsets, in the order
    written; with `release`, each write's acknowledgement waits for it."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.release = release
        self.written: list[int | None] = []

    async def write(self, raw: bytes) -> None:
        from stream.core import burstsnapshot

        if self.release is not None:
            await self.release.wait()
        self.written.append(burstsnapshot.decode(raw).signals_offset)

    async def close(self) -> None:
        return None


def detector_shell(settings: Settings, broker: SnapshotBroker) -> BurstShell:
    """A burst shell with a fresh detector of one partition, its snapshots written to `broker`."""
    from stream.core.burst import BurstDetector

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    async def nothing() -> None:
        return None

    shell = BurstShell(settings, 1, send, nothing)
    shell.snapshots = broker  # type: ignore[assignment]
    shell.detector = BurstDetector(1, settings.burst)
    shell.next_offset = 0
    return shell


def report_batch(offset: int) -> list[Any]:
    """One partition's report of minute T0 + `offset` at signals offset `offset`, as Faust gives it."""
    report = {"partition": 0, "through_minute": T0 // 60_000 + offset, "minutes": []}
    return [SimpleNamespace(message=SimpleNamespace(offset=offset, value=orjson.dumps(report)))]


def test_the_detector_goes_on_while_its_snapshot_is_written_one_write_at_a_time() -> None:
    """A snapshot's write (the broker's acknowledgement) goes on beside the detector: the batch
    that made the snapshot due ends without waiting for it; a snapshot due while the last is
    still being written waits for that one first, so they reach the topic in order."""
    settings = Settings(partitions=1, snapshot_every=1, snapshot_min_interval_s=0)

    async def run() -> None:
        broker = SnapshotBroker(release=asyncio.Event())
        shell = detector_shell(settings, broker)
        await asyncio.wait_for(shell.process_batch(report_batch(0)), 1)  # not waiting for the broker
        assert broker.written == [] and shell.counts["snapshots_written"] == 0
        second = asyncio.ensure_future(shell.process_batch(report_batch(1)))
        await asyncio.sleep(0.05)
        assert not second.done()  # its snapshot waits for the first one's write
        assert broker.release is not None
        broker.release.set()
        await asyncio.wait_for(second, 1)
        await shell.close()  # the write under way finished first
        assert broker.written == [1, 2] and shell.counts["snapshots_written"] == 2

    asyncio.run(run())


async def _snapshot_counting_turns(shell: Any, broker: SnapshotBroker) -> tuple[int, bytes]:
    """Processes one report batch that snapshots, counting the event loop's turns meanwhile;
    returns them and the one snapshot written."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    before = ticks
    raw = []
    real_write = broker.write

    async def keep(value: bytes) -> None:
        raw.append(value)
        await real_write(value)

    broker.write = keep  # type: ignore[method-assign]
    await shell.process_batch(report_batch(0))
    await shell.close()
    ticker.cancel()
    [value] = raw
    return ticks - before, value


def test_a_large_snapshot_is_encoded_in_pieces_with_the_loop_running_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event loop runs other tasks while a snapshot is encoded (at the scope bound one took
    0.5-1 s at once), and what is written is the detector's state at the snapshot's offset."""
    from stream.core import burstsnapshot

    settings = Settings(partitions=1, snapshot_every=1, snapshot_min_interval_s=0)
    monkeypatch.setattr(burstsnapshot, "PIECE_BYTES", 1024)

    async def run() -> None:
        broker = SnapshotBroker()
        shell = detector_shell(settings, broker)
        assert shell.detector is not None
        shell.detector.merchant_volume = {f"merchant:M{i:05d}{'x' * 100}": (0.5, 0, False) for i in range(2000)}
        want = shell.detector.snapshot()
        turns, value = await _snapshot_counting_turns(shell, broker)
        assert turns > 50  # the loop ran between the pieces
        saved = burstsnapshot.decode(value).detector.snapshot()
        assert saved["merchant_volume"] == want["merchant_volume"] and broker.written == [1]

    asyncio.run(run())


def test_a_tally_of_many_holds_is_snapshotted_with_the_loop_running_between_its_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """During an outage the tally holds every refund held (a tally of 50,000 holds took 0.2-0.5 s
    to encode at once, while refunds waited): the loop runs between its pieces too, and what is
    written restores the same tally."""
    from stream.core import burstsnapshot
    from stream.core.holdtally import HoldTally

    settings = Settings(partitions=1, snapshot_every=1, snapshot_min_interval_s=0)  # holds on (default H)
    monkeypatch.setattr(burstsnapshot, "PIECE_BYTES", 1024)

    async def run() -> None:
        broker = SnapshotBroker()
        shell = detector_shell(settings, broker)
        shell.tally = tally = HoldTally(range(1), 30_000)
        events = [["held", f"rf_{i:06d}", "inc_x", 10_000 + i, T0 + i] for i in range(3000)]
        tally.on_report({"partition": 0, "hold_events": events, "decided_through_ms": T0 - 60_000})
        turns, value = await _snapshot_counting_turns(shell, broker)
        assert turns > 3000 // burstsnapshot._BATCH  # at least a turn per batch of holds
        back = burstsnapshot.decode(value).tally
        assert back is not None and back.held == tally.held and back.events == tally.events
        assert back.to_state() == tally.to_state() and broker.written == [1]

    asyncio.run(run())


def test_a_takeover_decodes_a_tally_of_many_holds_with_the_loop_running_and_shows_it_only_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker taking the detector over restores its snapshot in steps (a tally of 50,000 holds
    took 0.26-0.57 s to decode at once, while every partition's records and the pages waited).
    Meanwhile the detector's lock is held, so no report or alert is taken, and the shell has no
    tally until the whole one: an alert counted by half a tally would say the wrong holds."""
    settings, tally = _takeover_snapshot(monkeypatch)

    async def run() -> None:
        shell = BurstShell(settings, 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))
        seen: list[tuple[bool, int | None]] = []  # at each turn of the loop: (lock held, holds in the tally)

        async def watch() -> None:
            while True:
                seen.append((shell.lock.locked(), None if shell.tally is None else len(shell.tally.held)))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)
        await shell.take_records([_first_report(settings)])
        watcher.cancel()
        restoring = [holds for locked, holds in seen if locked and holds is None]
        assert len(restoring) > 50  # the loop ran while the snapshot was decoded
        assert {holds for _locked, holds in seen if holds is not None} == {3000}  # never part of it
        assert shell.tally is not None and shell.tally.held == tally.held and shell.tally.events == tally.events

    asyncio.run(run())


def _takeover_snapshot(monkeypatch: pytest.MonkeyPatch, corrupt: str | None = None) -> tuple[Settings, Any]:
    """A snapshot of a tally of 3,000 holds as the takeover reads it (`read_latest_snapshot`),
    decoded in small steps; `corrupt` cuts it short or breaks its detector or a late tally row."""
    import zlib

    from stream.core import burstsnapshot, holdtally
    from stream.core.burst import BurstDetector
    from stream.core.holdtally import HoldTally
    from stream.worker import bursts as bursts_module

    monkeypatch.setattr(burstsnapshot, "RESTORE_ROWS", 100)
    monkeypatch.setattr(holdtally, "RESTORE_ROWS", 100)
    monkeypatch.setattr(burstsnapshot, "DECOMPRESS_BYTES", 256)
    settings = Settings(partitions=1, snapshot_every=0)  # holds on (default H)
    tally = HoldTally(range(1), 30_000)
    events = [["held", f"rf_{i:06d}", "inc_x", 10_000 + i, T0 + i] for i in range(3000)]
    tally.on_report({"partition": 0, "hold_events": events, "decided_through_ms": T0 - 60_000})
    raw = burstsnapshot.encode(BurstDetector(1, settings.burst), 0, tally)
    if corrupt == "cut":
        raw = raw[: len(raw) // 2]
    elif corrupt is not None:
        value = orjson.loads(zlib.decompress(raw))
        if corrupt == "detector":
            del value["detector"]["merge"]
        else:
            value["hold_tally"]["held"][2500] = ["rf", "inc"]
        raw = zlib.compress(orjson.dumps(value))

    async def latest(settings: Settings) -> bytes:
        return raw

    async def none(settings: Settings) -> None:
        return None

    monkeypatch.setattr(bursts_module, "read_latest_snapshot", latest)
    monkeypatch.setattr(bursts_module, "read_published_offset", none)
    return settings, tally


def _first_report(settings: Settings) -> KafkaRecord:
    report = {"partition": 0, "through_minute": T0 // 60_000, "minutes": []}
    return KafkaRecord(settings.signals_topic, 0, 0, None, None, orjson.dumps(report))


@pytest.mark.parametrize("corrupt", ["cut", "detector", "tally_row"])
def test_a_takeover_reports_a_corrupt_snapshot_found_in_the_middle_of_its_steps_and_frees_the_lock(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, corrupt: str
) -> None:
    # Found after steps of the loop ran: logged and rebuilt from the signals, as when it was
    # decoded at once, with the detector's lock free again and a fresh tally.
    settings, _tally = _takeover_snapshot(monkeypatch, corrupt)

    async def run() -> None:
        shell = BurstShell(settings, 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))
        with caplog.at_level("WARNING"):
            await shell.take_records([_first_report(settings)])
        assert "burst detector snapshot not usable" in caplog.text
        assert not shell.lock.locked() and shell.detector is not None
        assert shell.tally is not None and not shell.tally.held

    asyncio.run(run())


def test_a_takeover_cancelled_in_the_middle_of_its_decode_leaves_no_half_restored_detector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rebalance or a stop cancels the agent between two steps: the lock is freed, the shell
    # has no detector and no tally, and the next batch restores them whole.
    settings, tally = _takeover_snapshot(monkeypatch)

    async def run() -> None:
        shell = BurstShell(settings, 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))
        task = asyncio.ensure_future(shell.take_records([_first_report(settings)]))
        for _ in range(30):
            await asyncio.sleep(0)
        assert shell.lock.locked() and shell.tally is None and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not shell.lock.locked() and shell.detector is None and shell.tally is None
        await shell.take_records([_first_report(settings)])
        assert shell.detector is not None and shell.tally is not None and shell.tally.held == tally.held

    asyncio.run(run())


def test_in_a_backlog_the_detector_snapshots_at_most_once_every_min_interval() -> None:
    """Reports due a snapshot every report, many a second (a backlog): one snapshot, then none
    until `snapshot_min_interval_s` has passed."""
    settings = Settings(partitions=1, snapshot_every=1, snapshot_min_interval_s=3600)

    async def run() -> None:
        broker = SnapshotBroker()
        shell = detector_shell(settings, broker)
        for offset in range(5):
            await shell.process_batch(report_batch(offset))
        await shell.close()
        assert broker.written == [1] and shell.since_snapshot == 4
        shell.snapshot_at -= 3600  # the interval has passed: the next report writes one
        await shell.process_batch(report_batch(5))
        await shell.close()
        assert broker.written == [1, 6] and shell.since_snapshot == 0

    asyncio.run(run())


def test_a_worker_far_past_the_incidents_waits_for_them_before_its_next_batch() -> None:
    """`paced` (refund holds, `QRIS_MAX_LEAD_S`): the worker's slowest partition 240 s past the
    incidents known, 180 allowed (60 asked, but never less than the idle timeout, 60 s, plus 2
    minutes): the next batch waits until the incidents move, at most the wait given, and after
    a wait that ended with them still too far behind, not again for the cool-down given; not at
    all within the lead, without incidents, or with the setting at 0."""
    settings = Settings(partitions=1, idle_timeout_s=60, max_lead_s=60)
    h = Harness(settings=settings)
    h.batch(*unsettled("QR1", 0), *tick(400))  # watermark 400 - 30 (A) = 370 s
    shell = h.shell
    assert shell.lead_ms() == 0  # no incidents known yet: nothing to wait for
    assert asyncio.run(shell.paced(wait_s=5)) == 0.0
    asyncio.run(shell.on_incidents([], T0 + 130_000))
    assert shell.lead_ms() == 240_000

    async def incidents_move_later(known_ms: int, wait_s: float) -> float:
        async def move() -> None:
            await asyncio.sleep(0.05)
            await shell.on_incidents([], known_ms)

        mover = asyncio.create_task(move())
        waited = await shell.paced(wait_s=wait_s, cooldown_s=0)
        await mover
        return waited

    assert shell.max_lead_ms() == 180_000
    # Moved to 180 s: 190 s past them, still too far; the wait goes on to its end.
    waited = asyncio.run(incidents_move_later(T0 + 180_000, 0.3))
    assert 0.3 <= waited < 2 and shell.lead_ms() == 190_000
    # Moved to 320 s: 50 s past them, within the lead: the batch goes at once.
    waited = asyncio.run(incidents_move_later(T0 + 320_000, 30))
    assert 0.04 <= waited < 5
    assert shell.lead_ms() == 50_000
    assert asyncio.run(shell.paced(wait_s=5)) == 0.0  # within the lead: no wait
    assert shell.counts["paced_batches"] == 2

    # Incidents that do not move: the batch goes on after the wait given, and the next ones
    # during the cool-down without waiting; after it, the next batch waits again.
    h.batch(*tick(800))  # watermark 770 s, 450 past the incidents
    started = time.monotonic()
    waited = asyncio.run(shell.paced(wait_s=0.2, cooldown_s=0.5))
    assert 0.2 <= waited < 2 and time.monotonic() - started >= 0.2
    assert shell.counts["paced_batches"] == 3 and shell.counts["paced_ms"] >= 200
    assert asyncio.run(shell.paced(wait_s=5, cooldown_s=0.5)) == 0.0  # cooling down
    assert shell.counts["paced_batches"] == 3
    time.sleep(0.5)
    assert asyncio.run(shell.paced(wait_s=0.1, cooldown_s=0.5)) >= 0.1
    assert shell.counts["paced_batches"] == 4

    shell.settings = Settings(partitions=1, idle_timeout_s=60, max_lead_s=600)
    assert shell.max_lead_ms() == 600_000  # above the floor: as asked
    shell.settings = Settings(partitions=1, idle_timeout_s=3600, max_lead_s=300)
    assert shell.max_lead_ms() == 3_720_000  # a long idle timeout: its floor
    assert asyncio.run(shell.paced(wait_s=5)) == 0.0
    shell.settings = Settings(partitions=1, idle_timeout_s=60, max_lead_s=0)  # off
    assert shell.max_lead_ms() == 0
    assert asyncio.run(shell.paced(wait_s=5)) == 0.0


def test_a_batch_opening_thousands_of_incidents_publishes_them_in_records_the_producer_accepts() -> None:
    # A hostile minute opened 2,998 incidents (emoji ids of 128 characters): one 1.8 MB incidents
    # record, which the producer refused; the detector's worker exited and met it again after
    # every restart. The events now go in records of at most INCIDENTS_RECORD_MAX_BYTES, and only
    # the last moves the known-through time and the published signals offset.
    settings = Settings(partitions=1)
    shell = BurstShell(settings, 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))
    from stream.core.burst import BurstDetector

    shell.detector = BurstDetector(1, settings.burst)
    shell.detector.merge.closed_through = T0 // 60_000 + 5
    shell.known_through_sent = (T0 // 60_000 + 5) * 60_000 + 30_000
    shell.next_offset = 41
    at = format_ms((T0 // 60_000 + 6) * 60_000)
    alerts = [
        Decision(
            "alerts",
            None,
            {
                "kind": "FAILURE_BURST",
                "status": "opened",
                "incident_id": f"inc{i:05d}",
                "scope": {"type": "issuer", "id": f"{i:05d}" + "\U0001f600" * 123},
                "occurred_at": at,
                "dedup_key": f"inc{i:05d}",  # (routing fields: not what this test is about)
            },
            None,
        )
        for i in range(3_000)
    ]
    records = shell.incidents_records(alerts, 40)
    assert len(records) > 4 and all(len(r) <= INCIDENTS_RECORD_MAX_BYTES + 200 for r in records)
    parsed = [parse_incidents_record(r) for r in records]
    assert [e.incident_id for events, _ in parsed for e in events] == [f"inc{i:05d}" for i in range(3_000)]
    *first, last = records
    assert {parse_incidents_record(r)[1] for r in first} == {(T0 // 60_000 + 5) * 60_000 + 30_000}
    assert parsed[-1][1] == (T0 // 60_000 + 6) * 60_000 + 30_000
    assert {orjson.loads(r)["signals_offset"] for r in first} == {40} and orjson.loads(last)["signals_offset"] == 41


def test_a_batch_of_signals_the_detector_already_took_changes_nothing_and_raises_nothing(monkeypatch: Any) -> None:
    # A takeover at a snapshot past the group's committed offset is delivered records the
    # detector already has: a batch of redeliveries only. A change of this stop read the first
    # record of the (empty) batch taken and raised: an exit at every restart (a helper's review).
    from stream.drivers.replayfile import KafkaRecord
    from stream.worker import bursts as bursts_module
    from tests.test_burst import outage_reports

    async def none(settings: Settings) -> None:
        return None

    monkeypatch.setattr(bursts_module, "read_latest_snapshot", none)
    monkeypatch.setattr(bursts_module, "read_published_offset", none)
    settings = Settings(partitions=2, max_hold_s=600, snapshot_every=0)
    records = [
        KafkaRecord(settings.signals_topic, 0, i, None, None, orjson.dumps(r)) for i, r in enumerate(outage_reports())
    ]
    sent: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append(topic)

    async def nothing() -> None:
        return None

    async def fetch(gap: Any) -> list[KafkaRecord]:
        return [r for r in records if gap.start <= r.offset < gap.end]

    async def committed() -> None:
        return None

    shell = BurstShell(settings, 2, send, nothing, fetch_gap=fetch, committed=committed)
    asyncio.run(shell.take_records(records[:100]))
    before = (shell.next_offset, len(sent), {**shell.counts, "redelivered_skipped": 10})
    asyncio.run(shell.take_records(records[90:100]))  # delivered again
    assert (shell.next_offset, len(sent), dict(shell.counts)) == before


def test_what_a_restored_engine_releases_is_sent_before_its_state_is_kept_and_before_later_releases() -> None:
    # `on_recovered` restores an engine with the incidents known; no input batch comes (quiet
    # feeds). A commit by the incidents must not keep its state with the release unsent (a
    # crash then loses the refund), nor send a later release of the same refund first.
    h = Harness()
    h.batch(*unsettled("QR1", 0), *tick(400), *tick(2000))
    h2 = Harness(h.store)
    asyncio.run(h2.shell.on_incidents([OPENED], T0 + 500_000))
    h2.shell.engine(0)
    resolved = IncidentEvent(T0 + 400_000, "resolved", "in_a", "switch", "RINTIS")
    asyncio.run(h2.shell.on_incidents([resolved], T0 + 1_900_000))
    assert [r["type"] for r in h2.refunds()] == ["refund.held", "refund.requested"]
    h3 = Harness(h.store)
    asyncio.run(h3.shell.on_incidents([], T0 + 600_000))
    h3.shell.engine(0)
    assert h3.shell.released_at_restore == [] or all(d.value.get("type") is None for d in h3.shell.released_at_restore)


def test_an_engine_restored_while_holding_back_gets_the_incidents_at_the_release() -> None:
    h = Harness()
    h.batch(*unsettled("QR1", 0), *tick(400))
    h2 = Harness(h.store)
    h2.shell.holding_back = True
    asyncio.run(h2.shell.on_incidents([], T0 + 500_000))
    h2.shell.engine(0)
    assert h2.shell.released_at_restore == []
    asyncio.run(h2.shell.release_held_back())
    assert [r["type"] for r in h2.refunds()] == ["refund.requested"]


def test_holds_restored_with_holds_off_are_said_and_end_at_their_release_by(caplog: pytest.LogCaptureFixture) -> None:
    # A run with holds on held QR1 while an incident was open; the worker restarts with holds
    # off (QRIS_MAX_HOLD_S=0). It reads no incident now: the hold ends at its release_by, as
    # `max_hold`, not at once as if its incident had resolved, and the restore says so.
    h = Harness()
    asyncio.run(h.shell.on_incidents([OPENED], T0 + 500_000))
    h.batch(*unsettled("QR1", 0), *tick(400))
    [held] = h.refunds()
    assert held["type"] == "refund.held"
    off = Harness(h.store, settings=NO_HOLDS)
    off.offsets = dict(h.offsets)
    with caplog.at_level("WARNING"):
        off.batch(*tick(1000))
    assert "1 refund(s) held by a run with holds on, restored with holds off" in caplog.text
    assert off.refunds() == []  # not paid at once
    release_by = parse_ms(held["release_by"])
    off.batch(*tick((release_by - T0) / 1000 + 60))
    [paid] = off.refunds()
    assert paid["type"] == "refund.requested" and paid["hold"]["released_because"] == "max_hold"


def test_a_state_saved_with_another_timeout_is_said_at_its_restore_once(caplog: pytest.LogCaptureFixture) -> None:
    # An operator restarts the worker with QRIS_TIMEOUT_S 600 over a state saved with 300: the
    # open reference keeps the deadline decided with 300 (a replay with 600 decides it later).
    # The restore names the setting, both values, and counts the partition; a restore of the
    # state saved since (stamped with 600) says nothing.
    h = Harness(settings=NO_HOLDS)
    h.batch(*unsettled("QR1", 0), *tick(100))
    longer = Settings(partitions=1, idle_timeout_s=3600, max_hold_s=0, timeout_s=600)
    h2 = Harness(h.store, settings=longer)
    h2.offsets = dict(h.offsets)
    with caplog.at_level("WARNING"):
        h2.batch(*tick(200))
    assert "partition 0: state saved with other settings (QRIS_TIMEOUT_S 300 now 600)" in caplog.text
    assert h2.shell.counts["restored_with_other_settings"] == 1
    h2.batch(*tick(400))
    [paid] = h2.refunds()  # at the deadline the first run set: 300 s after the debit
    assert (
        paid["type"] == "refund.requested"
        and parse_ms(paid["deadline"]) - parse_ms(paid["evidence"]["debits"][0]["occurred_at"]) == 300_000
    )
    caplog.clear()
    h3 = Harness(h.store, settings=longer)
    h3.offsets = dict(h2.offsets)
    with caplog.at_level("WARNING"):
        h3.batch(*tick(500))
    assert "other settings" not in caplog.text and h3.shell.counts["restored_with_other_settings"] == 0


def test_every_stamped_parameter_is_named_by_its_setting_in_the_restore_warning() -> None:
    # (A stamped parameter without a `QRIS_*_S` setting of the same name would make the restore
    # that warns about it fail.)
    from stream.core.partition import STAMPED_PARAMS
    from stream.worker.shell import _setting_change

    assert [_setting_change(n, 1000, 2000).split()[0] for n in STAMPED_PARAMS] == [
        "QRIS_TIMEOUT_S",
        "QRIS_LATENESS_S",
        "QRIS_RETENTION_S",
        "QRIS_CLOCK_SKEW_S",
        "QRIS_PROBE_AGE_S",
        "QRIS_HOLD_GRACE_S",
        "QRIS_MAX_HOLD_S",
    ]


def test_offsets_deleted_by_retention_before_the_worker_read_them_raise_input_lost() -> None:
    # The worker was down longer than the topic keeps records: when it comes back, the log
    # begins past the offsets its state expects. What lies between is gone (not transaction
    # markers): payments among them are not decided, so operations get a critical INPUT_LOST
    # naming the offsets. A first read of a topic that already lost its oldest records is a
    # warning; offsets missing above the log start (markers) raise nothing.
    from tests.test_schemas import beyond_schema_errors, validator_for

    h = Harness(settings=NO_HOLDS)

    async def nothing_there(gap: Gap) -> list[KafkaRecord]:
        return []

    begins = {h.settings.payment_topic: 0, h.settings.ledger_topic: 0}
    asked: list[Any] = []

    async def begin_offsets(tps: Collection[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append(sorted(tps))
        return {(t, p): begins[t] for t, p in tps}

    h.shell.fetch_gap, h.shell.begin_offsets = nothing_there, begin_offsets
    h.batch(*unsettled("QR1", 0), *tick(100))
    assert asked == []  # (no gap: nothing asked)
    h.offsets[h.settings.payment_topic] += 3  # three offsets missing: the broker keeps them as markers
    h.batch(*tick(110))
    h.offsets[h.settings.payment_topic] += 1  # another marker at once: the log start is known
    h.batch(*tick(120))
    assert len(asked) == 1 and not [v for _t, v in h.sent if v.get("kind") == "INPUT_LOST"]
    # Down for days: the worker restarts over its store, and the ledger's log begins at 50.
    begins[h.settings.ledger_topic] = 50
    h2 = Harness(h.store, settings=NO_HOLDS)
    h2.offsets = {**h.offsets, h.settings.ledger_topic: 50}
    h2.shell.fetch_gap, h2.shell.begin_offsets = nothing_there, begin_offsets
    h2.batch(*tick(900))
    [lost] = [v for _t, v in h2.sent if v.get("kind") == "INPUT_LOST"]
    assert lost["severity"] == "critical" and lost["topic"] == h.settings.ledger_topic and lost["partition"] == 0
    assert lost["observed"] == {"lost_offsets": 46, "first_offset": 4, "last_offset": 49, "log_start_offset": 50}
    assert lost["dedup_key"] == f"INPUT_LOST:{h.settings.ledger_topic}:0"
    assert h2.shell.counts["input_offsets_lost"] == 46 and h2.shell.counts["gap_offsets_empty"] == 46
    assert h.shell.counts["gap_offsets_empty"] == 4  # (the markers)
    validator = validator_for("qris.alerts", closed_schema=True)
    assert [e.message for e in validator.iter_errors(lost)] == [] and beyond_schema_errors("qris.alerts", lost) == []
    # A first read of a topic that lost its oldest records: a warning.
    fresh = Harness(settings=NO_HOLDS)
    fresh.shell.fetch_gap, fresh.shell.begin_offsets = nothing_there, begin_offsets
    fresh.offsets = {h.settings.payment_topic: 0, h.settings.ledger_topic: 50}
    fresh.batch(*unsettled("QR2", 0), *tick(100))
    [first] = [v for _t, v in fresh.sent if v.get("kind") == "INPUT_LOST"]
    assert first["severity"] == "warning" and first["observed"]["lost_offsets"] == 50


def test_a_rebuilt_detector_announces_its_open_incidents_again_in_its_first_incidents_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The incidents topic can lose an open incident's opening (trimmed, or recreated) while the
    # detector keeps its history in the signals and snapshots: the partitions' timelines would
    # then decide the deadlines it covers unheld. The rebuilt detector's first record carries
    # the `opened` event again, as the opening alert made it; later records do not repeat it.
    from stream.core.burst import BurstDetector
    from stream.core.holds import IncidentTimeline, incident_event
    from tests.test_burst import M0, WARM, report, switch_minute, warm

    settings = Settings(partitions=1)
    detector = BurstDetector(1, settings.burst)
    warm(detector, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    made = [d for i in range(3) for d in detector.on_signals(report(0, M0 + WARM + i, switch_minute(60 + 5 * i)))]
    probe_age_ms = round(settings.probe_age_s * 1000)
    opened = [e for d in made if (e := incident_event(d.value, probe_age_ms)) is not None and e.status == "opened"]
    assert [e.scope_id for e in opened] == ["RINTIS"]

    shell = BurstShell(settings, 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))

    async def rebuilt(upto: int) -> BurstDetector:
        shell.detector = detector
        return detector

    monkeypatch.setattr(shell, "_rebuild_detector", rebuilt)
    asyncio.run(shell._rebuild(0))
    first = shell.incidents_records([], 0)
    assert len(first) == 1
    events, known = parse_incidents_record(first[0])
    assert events == opened
    timeline = IncidentTimeline()
    timeline.add(events, known)
    assert [i.incident_id for i in timeline.incidents.values() if i.open_at(known)] == [opened[0].incident_id]
    assert shell.incidents_records([], 0) == []  # nothing new: nothing sent again

    asyncio.run(shell._rebuild(0))
    shell.forget()  # a rebalance before any record: the next rebuild decides what is open
    assert shell.reannounce == []


@pytest.mark.parametrize("dead", [0, 1])
def test_a_dead_feed_beside_one_whose_records_come_further_apart_than_the_idle_timeout_is_silent(dead: int) -> None:
    # A quiet partition: the live feed's records come 1.3-1.5 idle timeouts apart, the other
    # feed is dead. Only the first record after both were quiet restarts the dead one's
    # silence: each of them restarting it, the dead feed would never be silent, and the
    # watermark would stand at its last record (no FEED_SILENT, no refund) for as long as it is dead.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    h.batch(("P", payment("QR9-q", "requested", "QR9", 1000)))
    clock = h.shell.clocks[0]
    now = time.monotonic()
    clock.last_arrival, clock.resumed = [now - 1000, now - 1000], 0.0
    for ago in (4.5, 3.0, 1.5, 0.2):
        clock.arrived(1 - dead, now - ago, settings.idle_timeout_s)
    asyncio.run(h.shell.check_idle_feeds())
    assert h.shell.engines[0].silent == [dead == 0, dead == 1]


@pytest.mark.parametrize("entry", ["metadata", "reference"])
def test_state_of_a_newer_version_stops_the_worker_before_it_decides_anything(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A newer release's state met by a batch (its partition restored for it): the worker stops
    # with the unreadable-state exit, not the exit of a failed send (70) nor a restart in place
    # that would meet the same state again; nothing of the batch is sent.
    from stream.worker import shell as shell_module

    h = Harness(settings=Settings(partitions=1, max_hold_s=0))
    h.batch(*unsettled("QR1", 0), *unsettled("QR9", 100))  # (QR1 taken: W = 70)
    key, value = next((k, v) for k, v in h.store.data.items() if k != meta_key(0) and orjson.loads(v)["state"])
    if entry == "metadata":
        h.store.data[meta_key(0)] = orjson.dumps({**saved_meta(h), "v": 3})
    else:
        saved = orjson.loads(value)
        h.store.data[key] = orjson.dumps({**saved, "state": {**saved["state"], "v": 5}})
    stops: list[str] = []

    def stop(problem: str) -> None:
        stops.append(problem)
        raise SystemExit(1)

    monkeypatch.setattr(shell_module, "stop_unreadable_state", stop)
    h2 = restarted(h)
    with pytest.raises(SystemExit):
        h2.batch(("P", payment("QR2-q", "requested", "QR2", 400)))
    version = (
        "saved metadata of version 3, this worker reads versions 1 to 2"
        if entry == "metadata"
        else "a saved reference entry of version 5, this worker reads versions 1 to 4"
    )
    assert stops == [f"partition 0: {version} (state saved by a newer release?)"]
    assert h2.sent == []


def test_rejected_records_in_a_quiet_spell_pause_it_for_the_idle_timeout_not_for_its_whole_length() -> None:
    # Both feeds quiet for 300 s moved the watermark 300 s past the records. A record the worker
    # rejects brings no event time: counted from the records again, the watermark would stand
    # still until the quiet had lasted as long once more (QR1's deadline, 30 s further, would
    # wait 330 s more). It is still a sign of life (the idle timeout passes first), then the
    # quiet goes on from where the watermark stood.
    settings = Settings(partitions=1, idle_timeout_s=1, max_hold_s=0)
    h = Harness(settings=settings)
    h.batch(*tick(0))
    h.batch(*unsettled("QR1", 100))  # deadline 400 (T = 300)
    quiet_check(h.shell, 300)  # W = 100 - 30 + 300 = 370
    stood = T0 + 370_000
    assert h.shell.engines[0].watermark_ms == stood and h.refunds() == []
    junk = orjson.dumps({**orjson.loads(payment("junk", "settled", "QR9", 500)), "currency": "USD"})
    h.batch(("P", junk))
    dead = [v["reason"] for t, v in h.sent if t == settings.dead_letter_topic]
    assert dead == ["'currency' is 'USD'; only IDR is accepted"]
    quiet_check(h.shell, 40)
    assert h.shell.engines[0].watermark_ms == stood + 40_000  # (from the records: 70 + 40, it stood at 370)
    assert [r["reference"] for r in h.refunds()] == ["QR1"]
    assert saved_meta(h)["quiet_floor_ms"] == stood + 40_000  # (a restart goes on from there too)
    # A valid record ends the quiet: the watermark is the records' again.
    h.batch(("P", payment("tick-q", "requested", "TICKQ", 600)), ("L", ledger("tick-r", "reversed", "TICKR", 600, 1)))
    assert 0 not in h.shell._quiet_from and "quiet_floor_ms" not in saved_meta(h)


def test_the_stats_page_counts_records_waiting_as_the_dashboard_and_metrics_do() -> None:
    # Two records at 0 wait for the watermark (it stands at 0 - A); the page says 2, as
    # `qris_records_waiting` does, and `queued` adds the deadline's timer once they are taken.
    h = Harness(settings=Settings(partitions=1, max_hold_s=0))  # (no incidents to wait for)
    h.batch(*unsettled("QR1", 0))
    part = h.shell.stats()["partitions"][0]
    assert part["waiting"] == 2 and part["queued"] == 2
    h.batch(*tick(100))  # QR1's records taken, its deadline (300) queued; the ticks wait
    part = h.shell.stats()["partitions"][0]
    assert part["waiting"] == 2 and part["queued"] == 3


def test_two_streams_that_fell_quiet_together_are_not_paged_as_one_silent_beside_the_other() -> None:
    # The day's traffic ends (or a backlog is taken at a restart): the ledger's last batch 0.5 s
    # before the payments'. A check between their two timeouts (idle 20 s) must not find the
    # ledger silent "while the payments flow": a critical FEED_SILENT for a quiet spell. Apart by
    # less than a quarter of the timeout, nothing is declared; at the next check both are quiet.
    settings = Settings(partitions=1, idle_timeout_s=20, max_hold_s=0)
    h = Harness(settings=settings)
    h.broker({settings.payment_topic: 0, settings.ledger_topic: 0})
    h.batch(*unsettled("QR1", 0), *tick(100))

    def pages() -> list[dict[str, Any]]:
        return [v for t, v in h.sent if t == settings.alert_topic and v["kind"] == "FEED_SILENT"]

    quiet_check(h.shell, 19.8, 20.3)
    assert pages() == [] and h.shell.engines[0].silent == [False, False]
    quiet_check(h.shell, 25.0, 25.5)  # both quiet: event time follows wall time, nothing pages
    assert pages() == [] and h.shell.engines[0].silent == [False, False]
    assert h.shell.engines[0].watermark_ms > T0 + 70_000
    # A ledger that is silent while the payments go on is paged.
    quiet_check(h.shell, 1.0, 30.0)
    assert len(pages()) == 1 and h.shell.engines[0].silent == [False, True]
