"""Stalled event time (live only): one EVENT_TIME_STALLED for the topic whose stream holds the
watermark of partitions that keep taking records, after `stall_s` of wall time, and one resolved
when each moves again; silent partitions are FEED_SILENT's, not this alert's."""

from __future__ import annotations

import gc
import weakref

from stream import BUILD
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.worker.clockstall import ClockStall
from tests.records import ledger, payment
from tests.test_schemas import beyond_schema_errors, validator_for

TOPICS = ("qris.payment-requests", "qris.ledger-debits")


class _Feed:
    """Engines fed as a live worker feeds them: payments whose event time moves, and ledger
    records whose event time moves or stands still (a producer's frozen clock)."""

    def __init__(self, n: int) -> None:
        self.engines = {p: PartitionEngine(p, Params()) for p in range(n)}
        self.offsets = {p: [0, 0] for p in range(n)}
        self.seq = 0

    def record(self, p: int, stream: Stream, t_s: float) -> None:
        self.seq += 1
        ref = f"R{self.seq}"
        eng, s = self.engines[p], int(stream)
        value = (
            payment(f"{ref}-q", "requested", ref, t_s)
            if stream is Stream.P
            else ledger(f"{ref}-d", "debited", ref, t_s)
        )
        eng.on_record(stream, self.offsets[p][s], ref.encode(), value)
        self.offsets[p][s] += 1


def _check(value: dict) -> None:
    assert not list(validator_for("qris.alerts", closed_schema=True).iter_errors(value))
    assert beyond_schema_errors("qris.alerts", value) == []


def _alerts(stall: ClockStall, now_s: float) -> list[dict]:
    out = stall(now_s)
    assert all(d.role == "alerts" for d in out)
    return [d.value for d in out]


def test_a_frozen_ledger_clock_is_one_alert_for_its_topic_after_the_stall_time_and_one_recovery() -> None:
    feed = _Feed(4)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    for p in range(4):
        feed.record(p, Stream.P, 0)
        feed.record(p, Stream.L, 0)
    assert _alerts(stall, 0) == []  # first seen
    # Payments move on; the ledger of partitions 1 and 2 keeps coming dated 10 s (frozen clock),
    # that of 0 and 3 moves with the payments. (Their watermark rises once, to 10 s - A, seen at
    # the check of minute 1; the check of minute 2 is the first to see records taken while it
    # stands: the wall time counts from there.)
    for minute in range(1, 13):
        for p in range(4):
            feed.record(p, Stream.P, 60 * minute)
            feed.record(p, Stream.L, 10 if p in (1, 2) else 60 * minute)
        if minute < 12:
            assert _alerts(stall, 60 * minute) == [], minute  # under 600 s of wall time
    [a] = _alerts(stall, 720)
    assert (a["kind"], a["status"], a["severity"]) == ("EVENT_TIME_STALLED", "opened", "critical")
    assert a["topic"] == TOPICS[1] and a["partitions"] == [1, 2] and a["partition"] is None
    assert a["dedup_key"] == "EVENT_TIME_STALLED:qris.ledger-debits"
    assert a["observed"]["records"] == 2 * 2 * 11 and a["observed"]["wall_s"] == 600.0
    assert a["observed"]["stood_at_ms"] == feed.engines[1].max_ms[1]
    assert "for 10 min of wall time" in a["summary"]
    assert "partitions 1, 2" in a["summary"] and "no refund of these partitions is decided" in a["summary"]
    _check(a)
    # Still stalled: no new page.
    feed.record(1, Stream.L, 10)
    assert _alerts(stall, 730) == []
    # Partition 1's ledger clock comes back: 2 still holds the episode open.
    feed.record(1, Stream.L, 700)
    assert _alerts(stall, 740) == []
    feed.record(2, Stream.L, 700)
    [r] = _alerts(stall, 750)
    assert (r["status"], r["severity"], r["partitions"]) == ("resolved", "info", [1, 2])
    assert r["dedup_key"] == a["dedup_key"] and r["alert_id"] != a["alert_id"]
    assert "moved to another worker" not in r["summary"]
    _check(r)
    assert _alerts(stall, 2000) == []  # nothing taken since: silent, not stalled


def test_quiet_is_not_stalled_and_the_wall_time_counts_from_the_first_record_that_cannot_move_it() -> None:
    feed = _Feed(2)
    for p in range(2):
        feed.record(p, Stream.P, 0)
        feed.record(p, Stream.L, 0)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    off = ClockStall(TOPICS, lambda: feed.engines, stall_s=0)
    assert stall(0) == [] and off(0) == []
    assert stall(10_000) == []  # quiet partitions: the idle rule's (FEED_SILENT)
    feed.record(0, Stream.P, 5)  # traffic again, but the ledger stream holds W at 0 - A
    assert stall(10_001) == []  # (a review found a page here: the wall time ran from W's last move)
    assert stall(10_060) == []
    [a] = _alerts(stall, 10_061)
    assert a["topic"] == TOPICS[1] and a["partitions"] == [0] and a["observed"]["records"] == 1
    assert "for 60 s of wall time" in a["summary"]
    assert off(10_061) == []


def test_a_partition_with_one_stream_only_names_the_other_and_validates() -> None:
    feed = _Feed(1)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    feed.record(0, Stream.P, 0)
    assert stall(0) == []
    feed.record(0, Stream.P, 30)
    assert stall(61) == []
    [a] = _alerts(stall, 121)
    assert a["topic"] == TOPICS[1] and "stood_at_ms" not in a["observed"] and "no record yet" in a["summary"]
    assert a["occurred_at"]  # no watermark yet: still a valid alert
    _check(a)


def _stalled(feed: _Feed, stall: ClockStall, partitions: tuple[int, ...]) -> dict:
    """Partitions' ledger clock frozen at 0 while payments move: opened at the 11th check."""
    for p in partitions:
        feed.record(p, Stream.P, 0)
        feed.record(p, Stream.L, 0)
    assert stall(0) == []
    for minute in range(1, 12):
        for p in partitions:
            feed.record(p, Stream.P, 60 * minute)
            feed.record(p, Stream.L, 0)
        got = _alerts(stall, 60 * minute)
        if minute < 11:
            assert got == [], minute
    [a] = got
    assert a["status"] == "opened"
    return a


def test_an_engine_restored_while_the_clock_stands_still_keeps_the_episode() -> None:
    feed = _Feed(1)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    _stalled(feed, stall, (0,))
    refs, meta = feed.engines[0].take_dirty()
    assert meta is not None
    feed.engines[0] = PartitionEngine.restore(0, Params(), meta, [(k, v) for k, v in refs.items() if v])
    assert _alerts(stall, 670) == []  # (a review found a false resolved, then a second page)
    feed.record(0, Stream.L, 0)
    assert _alerts(stall, 1300) == []  # the same episode
    feed.record(0, Stream.L, 700)
    [r] = _alerts(stall, 1310)
    assert r["status"] == "resolved"


def test_the_stream_named_is_the_frozen_one_when_the_other_was_declared_silent() -> None:
    feed = _Feed(1)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    eng = feed.engines[0]
    feed.record(0, Stream.P, 0)
    feed.record(0, Stream.L, 0)
    feed.record(0, Stream.P, 100)
    eng.declare_silent(Stream.L)  # the idle rule: the watermark follows the payments now
    assert stall(0) == []
    for k in range(1, 4):
        feed.record(0, Stream.P, 100)  # and the payments' clock freezes
        eng.declare_silent(Stream.L)
        got = _alerts(stall, 40 * k)
    [a] = got
    assert a["topic"] == TOPICS[0]  # (a review found the silent ledger named)


def test_a_partition_moved_to_another_worker_is_not_reported_recovered() -> None:
    feed = _Feed(3)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    a = _stalled(feed, stall, (0, 1))
    assert a["partitions"] == [0, 1]
    moved = feed.engines.pop(1)
    assert _alerts(stall, 670) == []  # still stood here: no resolved
    feed.record(0, Stream.L, 700)
    [r] = _alerts(stall, 680)
    assert r["status"] == "resolved" and r["partitions"] == [0, 1]
    assert (
        "partitions 0: event time moves again; decisions resumed (partitions 1 moved to another worker)"
        in (r["summary"])
    )
    _check(r)
    # An episode whose partitions all moved away is resolved too, naming them: the other worker
    # raises its own if the stall goes on (a page nobody here watches would never close); and no
    # engine of a partition gone is kept alive.
    b = _stalled(feed, stall, (2,))
    assert b["partitions"] == [2]
    # (A compiled engine takes no weak reference: that check runs on the source build.)
    gone = weakref.ref(feed.engines[2]) if BUILD == "source" else None
    del feed.engines[2]
    feed.engines.clear()
    [r] = _alerts(stall, 2000)
    assert r["status"] == "resolved" and r["partitions"] == [2] and not stall.open
    assert "partitions 2 moved to another worker, which raises this alert again" in r["summary"]
    _check(r)
    gc.collect()
    assert (gone is None or gone() is None) and moved is not None


def test_a_partition_that_stands_again_and_then_moves_away_is_not_named_recovered() -> None:
    # (A second review: it recovered, stood again in the same episode, then moved away; the
    # resolved named it among the recovered ones.)
    feed = _Feed(2)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    _stalled(feed, stall, (0, 1))
    feed.record(0, Stream.L, 100)  # 0 moves: the episode stays open for 1
    assert _alerts(stall, 670) == []
    for t in range(680, 1300, 10):
        feed.record(0, Stream.L, 100)  # 0 stands again, records still coming: back in the episode
        assert _alerts(stall, t) == []
    assert stall.open[TOPICS[1]].stood == {0, 1}
    del feed.engines[0]
    feed.record(1, Stream.L, 700)
    [r] = _alerts(stall, 1300)
    assert r["partitions"] == [0, 1] and "partitions 1: event time moves again" in r["summary"]
    assert "(partitions 0 moved to another worker)" in r["summary"]


def test_a_watermark_lowered_by_a_restore_is_not_a_move_when_it_comes_back() -> None:
    feed = _Feed(1)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    _stalled(feed, stall, (0,))
    old = PartitionEngine(0, Params())  # restored from state older than the stall
    old.on_record(Stream.P, 0, b"A", payment("a", "requested", "A", -100))
    old.on_record(Stream.L, 0, b"A", ledger("b", "debited", "A", -100))
    stood = feed.engines[0]
    feed.engines[0] = old
    assert _alerts(stall, 670) == []
    feed.engines[0] = stood  # the records taken again bring it back where it stood
    assert _alerts(stall, 680) == []
    assert stall.open


def _restarted(feed: _Feed, partitions: tuple[int, ...]) -> None:
    """The worker restarts: each engine restored from what it saved (a new ClockStall follows)."""
    for p in partitions:
        refs, meta = feed.engines[p].take_dirty()
        assert meta is not None
        feed.engines[p] = PartitionEngine.restore(p, Params(), meta, [(k, v) for k, v in refs.items() if v])


def test_a_worker_restarted_during_an_episode_resolves_the_page_when_the_clock_came_back_meanwhile() -> None:
    # Episodes lived in memory: a worker restarted while the clock stood, whose clock came back
    # while it was down, never resolved the page (left open for good). The page is now kept
    # with the partition's state.
    feed = _Feed(2)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    a = _stalled(feed, stall, (0, 1))
    assert feed.engines[0].stall_paged == (2, feed.engines[0].watermark_ms)  # the ledger's bit
    _restarted(feed, (0, 1))
    # The clock came back while no worker ran: the first records after the restart move W.
    feed.record(0, Stream.L, 700)
    after = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    assert _alerts(after, 0) == []  # partition 1 still stands: no new page, no resolve yet
    assert after.taken[TOPICS[1]].stood == {1} and not after.open
    feed.record(1, Stream.L, 700)
    [r] = _alerts(after, 10)
    assert (r["status"], r["partitions"], r["dedup_key"]) == ("resolved", [0, 1], a["dedup_key"])
    assert "moved to another worker" not in r["summary"]
    _check(r)
    # Resolved: the page is gone from the saved state too.
    assert feed.engines[0].stall_paged is None and feed.engines[1].stall_paged is None
    _refs, meta = feed.engines[0].take_dirty()
    assert meta is not None and b"stall_paged" not in meta
    assert _alerts(after, 2000) == []


def test_a_page_taken_over_pages_again_if_the_partition_still_stands_the_stall_time_later() -> None:
    # The worker that lost the partition resolved its page ("moved to another worker"); the one
    # given it takes the episode over without a page, and pages if it still stands 600 s later.
    feed = _Feed(1)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    _stalled(feed, stall, (0,))
    _restarted(feed, (0,))
    given = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    assert _alerts(given, 0) == []
    for t in range(10, 600, 10):
        feed.record(0, Stream.P, 700 + t)
        feed.record(0, Stream.L, 0)
        assert _alerts(given, t) == [], t
    feed.record(0, Stream.L, 0)
    [a] = _alerts(given, 610)
    assert (a["status"], a["partitions"], a["topic"]) == ("opened", [0], TOPICS[1])
    _check(a)
    for t in range(620, 1300, 10):
        feed.record(0, Stream.L, 0)
        assert _alerts(given, t) == []  # one page
    feed.record(0, Stream.L, 2000)
    [r] = _alerts(given, 1300)
    assert (r["status"], r["partitions"]) == ("resolved", [0])
    assert feed.engines[0].stall_paged is None


def _move(feed: _Feed, p: int) -> None:
    """Partition p's engine restored from its saved state (a restart, or another worker given it)."""
    refs, meta = feed.engines[p].take_dirty()
    assert meta is not None
    feed.engines[p] = PartitionEngine.restore(p, Params(), meta, [(k, v) for k, v in refs.items() if v])


def _view(feed: _Feed, owned: set[int]):
    return lambda: {p: e for p, e in feed.engines.items() if p in owned}


def test_a_page_taken_over_does_not_swallow_the_takers_own_new_stall_of_the_topic() -> None:
    # (A review of the first version: the episode taken over, never paged by W2, took W2's own
    # new stall in silently, and the worker that lost the partition had resolved the page.)
    feed = _Feed(2)
    own1, own2 = {0}, {1}
    w1 = ClockStall(TOPICS, _view(feed, own1), stall_s=600)
    w2 = ClockStall(TOPICS, _view(feed, own2), stall_s=600)
    for p in (0, 1):
        feed.record(p, Stream.P, 0)
        feed.record(p, Stream.L, 0)
    assert w1(0) == [] and w2(0) == []
    # p0's ledger clock frozen at 0 (W1 pages it); p1 flows normally on W2.
    got1: list[dict] = []
    for minute in range(1, 12):
        feed.record(0, Stream.P, 60 * minute)
        feed.record(0, Stream.L, 0)
        feed.record(1, Stream.P, 60 * minute)
        feed.record(1, Stream.L, 60 * minute)
        got1 += _alerts(w1, 60 * minute)
        assert _alerts(w2, 60 * minute) == []
    assert [(a["status"], a["partitions"]) for a in got1] == [("opened", [0])]
    # Rebalance: p0 moves to W2.
    _move(feed, 0)
    own1.clear()
    own2.add(0)
    [r] = _alerts(w1, 670)
    assert r["status"] == "resolved" and "moved to another worker" in r["summary"]  # the key is closed
    w2_alerts = _alerts(w2, 670)
    assert w2_alerts == []  # W2 takes p0's episode over, no page (as designed)
    # p0 takes no records for now (no re-page of it pending); p1's ledger clock freezes on W2.
    for t in range(680, 1400, 10):
        feed.record(1, Stream.P, t)
        feed.record(1, Stream.L, 660)
        w2_alerts += _alerts(w2, t)
    # p1 has stood 700 s of wall time on W2 with records coming: paged, with p0 taken over.
    assert 1 in w2.open[TOPICS[1]].stood
    assert feed.engines[1].stall_paged is not None
    assert [(a["status"], a["partitions"]) for a in w2_alerts] == [("opened", [0, 1])]
    # p0's clock comes back: p0 recovers, p1 still stands: no resolved yet.
    feed.record(0, Stream.L, 2000)
    for t in range(1400, 3000, 10):
        feed.record(1, Stream.P, t)
        feed.record(1, Stream.L, 660)
        w2_alerts += _alerts(w2, t)
    assert 1 in w2.open[TOPICS[1]].stood  # still stalled, 2300 s of wall time
    opened = [a for a in w2_alerts if a["status"] == "opened"]
    assert any(1 in a["partitions"] for a in opened) and len(w2_alerts) == 1, w2_alerts
    feed.record(1, Stream.L, 3000)
    [r] = _alerts(w2, 3000)
    assert (r["status"], r["partitions"]) == ("resolved", [0, 1]) and "moved" not in r["summary"]
    _check(r)


def test_a_partition_taken_over_is_paged_again_under_the_topic_that_holds_it_now() -> None:
    # (A review of the first version: paged again only under the topic of the page taken over.)
    feed = _Feed(1)
    own1, own2 = {0}, set()
    w1 = ClockStall(TOPICS, _view(feed, own1), stall_s=60)
    w2 = ClockStall(TOPICS, _view(feed, own2), stall_s=60)
    eng = feed.engines[0]
    feed.record(0, Stream.P, 0)
    feed.record(0, Stream.L, 0)
    feed.record(0, Stream.P, 100)
    eng.declare_silent(Stream.L)  # the ledger went quiet: W follows the payments (100 s - A)
    assert w1(0) == []
    got: list[dict] = []
    for k in range(1, 4):
        feed.record(0, Stream.P, 100)  # and the payments' clock freezes
        eng.declare_silent(Stream.L)
        got += _alerts(w1, 40 * k)
    assert [(a["status"], a["topic"]) for a in got] == [("opened", TOPICS[0])]
    stood = feed.engines[0].watermark_ms
    _move(feed, 0)
    own1.clear()
    own2.add(0)
    [r] = _alerts(w1, 130)
    assert r["status"] == "resolved" and "moved to another worker" in r["summary"]
    assert _alerts(w2, 130) == []  # taken over
    # The ledger comes back, dated before the payments' frozen clock: W stands (forced floor),
    # records keep coming on both streams; the ledger is the stream that holds it now.
    w2_alerts: list[dict] = []
    for t in range(140, 1000, 10):
        feed.record(0, Stream.P, 100)
        feed.record(0, Stream.L, 50)
        w2_alerts += _alerts(w2, t)
    assert feed.engines[0].watermark_ms == stood  # never moved: stalled for 860 s on W2
    assert 0 in w2.taken[TOPICS[0]].stood
    assert [(a["status"], a["topic"], a["partitions"]) for a in w2_alerts] == [("opened", TOPICS[1], [0])]


def test_both_pages_of_a_partition_are_resolved_across_two_restarts() -> None:
    # (A review: the saved state kept one page a partition; the page taken over and the one
    # paged again under the other topic were both open, and a second restart forgot the first.)
    feed = _Feed(1)
    eng = feed.engines[0]
    w1 = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    feed.record(0, Stream.P, 0)
    feed.record(0, Stream.L, 0)
    feed.record(0, Stream.P, 100)
    eng.declare_silent(Stream.L)
    sent: list[dict] = []
    sent += _alerts(w1, 0)
    for k in range(1, 4):
        feed.record(0, Stream.P, 100)  # payments' clock frozen
        eng.declare_silent(Stream.L)
        sent += _alerts(w1, 40 * k)
    assert [(a["status"], a["topic"]) for a in sent] == [("opened", TOPICS[0])]
    # Restart 1 (no resolved from the process that died).
    _move(feed, 0)
    w2 = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    for t in range(0, 300, 10):
        feed.record(0, Stream.P, 100)
        feed.record(0, Stream.L, 50)  # the ledger comes back dated before: it holds W now
        sent += _alerts(w2, t)
    assert [(a["status"], a["topic"]) for a in sent] == [("opened", TOPICS[0]), ("opened", TOPICS[1])]
    # Restart 2.
    _move(feed, 0)
    w3 = ClockStall(TOPICS, lambda: feed.engines, stall_s=60)
    sent += _alerts(w3, 0)
    # Both clocks come back: the partition's watermark moves.
    feed.record(0, Stream.P, 5000)
    feed.record(0, Stream.L, 5000)
    sent += _alerts(w3, 10)
    sent += _alerts(w3, 20)
    open_keys: dict[str, int] = {}
    for a in sent:
        open_keys[a["dedup_key"]] = open_keys.get(a["dedup_key"], 0) + (1 if a["status"] == "opened" else -100)
    left = [k for k, v in open_keys.items() if v > 0]
    assert not left, f"pages never resolved: {left}; sent {[(a['status'], a['topic']) for a in sent]}"


def test_a_backlog_taken_below_a_floor_set_before_the_partition_had_records_is_not_stalled() -> None:
    # The idle rule moved a partition without records to today (live, holds on); its first
    # records, a backlog of older days, drop that floor (`PartitionEngine`) and move its
    # watermark from their own times on: below the floor seen, but moving, for longer than the
    # stall time. Not stalled.
    from tests.records import T0

    feed = _Feed(1)
    eng = feed.engines[0]
    eng.advance_to(T0 + 86_400_000)
    stall = ClockStall(TOPICS, lambda: feed.engines, stall_s=600)
    assert _alerts(stall, 0) == []
    for minute in range(1, 13):
        feed.record(0, Stream.P, 60 * minute)
        feed.record(0, Stream.L, 60 * minute)
        assert _alerts(stall, 60 * minute) == [], minute
    assert eng.watermark_ms == T0 + 690_000
    # The same partition whose watermark then stands while its records come is stalled as any.
    for minute in range(13, 24):
        feed.record(0, Stream.P, 720)
        feed.record(0, Stream.L, 60 * minute)
        if minute < 23:
            assert _alerts(stall, 60 * minute) == [], minute  # (counted from minute 13's check)
    [a] = _alerts(stall, 60 * 23)
    assert (a["status"], a["topic"]) == ("opened", TOPICS[0])
