"""Silent feeds per topic (live only): one FEED_SILENT for a topic whatever the number of its
silent partitions, with the partitions, and one resolved when all deliver again."""

from __future__ import annotations

from stream.core.decisions import Decision
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.worker.feeds import TopicSilence
from tests.records import T0, ledger, payment
from tests.test_schemas import beyond_schema_errors, validator_for

TOPICS = ("qris.payment-requests", "qris.ledger-debits")


def _engines(n: int) -> dict[int, PartitionEngine]:
    engines = {}
    for p in range(n):
        eng = PartitionEngine(p, Params())
        ref = f"R{p}"
        eng.on_record(Stream.P, 0, ref.encode(), payment(f"{ref}-q", "requested", ref, 0))
        eng.on_record(Stream.L, 0, ref.encode(), ledger(f"{ref}-d", "debited", ref, 1))
        eng.on_record(Stream.L, 1, b"X", ledger(f"X{p}-d", "debited", f"X{p}", 600))
        engines[p] = eng
    return engines


def _check(value: dict) -> None:
    assert not list(validator_for("qris.alerts", closed_schema=True).iter_errors(value))
    assert beyond_schema_errors("qris.alerts", value) == []


def test_a_dead_payment_feed_is_one_alert_for_the_topic_and_one_recovery() -> None:
    engines = _engines(4)
    silence = TopicSilence(TOPICS, lambda: engines)
    per_partition: list[Decision] = []
    for eng in engines.values():
        per_partition += eng.declare_silent(Stream.P)
    assert sum(d.value.get("kind") == "FEED_SILENT" for d in per_partition) == 4
    out = silence(per_partition)
    alerts = [d.value for d in out if d.role == "alerts"]
    assert len(alerts) == 1
    [a] = alerts
    assert a["kind"] == "FEED_SILENT" and a["status"] == "opened" and a["topic"] == TOPICS[0]
    assert a["partitions"] == [0, 1, 2, 3] and a["partition"] is None
    assert a["dedup_key"] == "FEED_SILENT:qris.payment-requests" and a["severity"] == "critical"
    assert "partitions 0, 1, 2, 3" in a["summary"]
    # The payment feed's last event at 0 s, the ledger's newest valid record at 1 s (its record at
    # 600 s is keyed apart from its reference: dead-lettered): 1 s of the ledger's event time, where
    # the watermark, which trails the ledger by the allowed lateness, would give -29 s.
    assert a["observed"]["last_event_ms"] == T0 and a["observed"]["silent_event_time_s"] == 1.0
    _check(a)
    assert [d for d in out if d.role != "alerts"] == [d for d in per_partition if d.role != "alerts"]
    # Still silent: no new page.
    assert not [d for d in silence([]) if d.role == "alerts"]
    # Two partitions deliver again: still open.
    for p in (0, 1):
        engines[p].on_record(Stream.P, 1, f"Y{p}".encode(), payment(f"Y{p}-q", "requested", f"Y{p}", 620))
    assert not [d for d in silence([]) if d.role == "alerts"]
    for p in (2, 3):
        engines[p].on_record(Stream.P, 1, f"Y{p}".encode(), payment(f"Y{p}-q", "requested", f"Y{p}", 620))
    [r] = [d.value for d in silence([]) if d.role == "alerts"]
    assert r["status"] == "resolved" and r["severity"] == "info" and r["partitions"] == [0, 1, 2, 3]
    assert r["dedup_key"] == a["dedup_key"] and r["alert_id"] != a["alert_id"]
    assert r["observed"]["last_event_ms"] == T0 and r["observed"]["silent_event_time_s"] == 1.0
    _check(r)
    assert not silence([])


def test_no_engines_after_a_rebalance_resolves_nothing() -> None:
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for eng in engines.values() for d in eng.declare_silent(Stream.P)])
    engines.clear()
    assert silence([]) == []
    assert TOPICS[0] in silence.open


def test_a_silent_partition_moved_to_another_worker_is_no_recovery() -> None:
    # Still silent on its new owner, which takes the page over and resolves it when it delivers
    # again: no `resolved` here while any partition of the episode moved (under the shared dedup
    # key it would close the page while the moved partition is still silent, and its new owner,
    # having taken the page over, would not page it again).
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for d in engines[1].declare_silent(Stream.P)])
    del engines[1]  # a rebalance gave partition 1 to another worker: still silent there
    assert [d for d in silence([]) if d.role == "alerts"] == []
    assert TOPICS[0] not in silence.open
    # Partitions 0 and 1 silent, 1 moves away, 0 delivers again: the page stays open.
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for eng in engines.values() for d in eng.declare_silent(Stream.P)])
    moved = {1: engines.pop(1)}
    engines[0].on_record(Stream.P, 1, b"Y0", payment("Y0-q", "requested", "Y0", 620))
    assert [d for d in silence([]) if d.role == "alerts"] == []
    assert TOPICS[0] not in silence.open  # (this worker's episode ended: 0 is no longer silent)
    # The new owner: partition 1 restored silent, taken over without a page; resolved when it delivers.
    owner = TopicSilence(TOPICS, lambda: moved)
    owner.restored(moved[1])
    assert owner([]) == []
    moved[1].on_record(Stream.P, 1, b"Y1", payment("Y1-q", "requested", "Y1", 630))
    [r] = [d.value for d in owner([]) if d.role == "alerts"]
    assert r["status"] == "resolved" and r["partitions"] == [1] and r["dedup_key"] == f"FEED_SILENT:{TOPICS[0]}"
    _check(r)


def test_a_partition_that_delivered_again_before_it_moved_does_not_hold_the_resolved_back() -> None:
    # Partitions 0 and 1 silent; 1 delivers again (the page stays open for 0), then moves to
    # another worker, whose restored state is not silent: it has no page to take over. When 0
    # delivers again, this worker's `resolved` is the only one that can end the page.
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for eng in engines.values() for d in eng.declare_silent(Stream.P)])
    engines[1].on_record(Stream.P, 1, b"Y1", payment("Y1-q", "requested", "Y1", 620))
    assert [d for d in silence([]) if d.role == "alerts"] == []
    moved = {1: engines.pop(1)}
    owner = TopicSilence(TOPICS, lambda: moved)
    owner.restored(moved[1])
    assert owner([]) == [] and not owner.open
    engines[0].on_record(Stream.P, 1, b"Y0", payment("Y0-q", "requested", "Y0", 630))
    [r] = [d.value for d in silence([]) if d.role == "alerts"]
    assert r["status"] == "resolved" and r["partitions"] == [0, 1]
    _check(r)
    # The same when 1 delivered again after the last check and before it left: its engine, as it
    # is dropped (`left`), says so.
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for eng in engines.values() for d in eng.declare_silent(Stream.P)])
    engines[1].on_record(Stream.P, 1, b"Y1", payment("Y1-q", "requested", "Y1", 620))
    silence.left(engines.pop(1))
    engines[0].on_record(Stream.P, 1, b"Y0", payment("Y0-q", "requested", "Y0", 630))
    [r] = [d.value for d in silence([]) if d.role == "alerts"]
    assert r["status"] == "resolved" and r["partitions"] == [0, 1]
    # Still silent as it left: the page is left to its new owner.
    engines = _engines(2)
    silence = TopicSilence(TOPICS, lambda: engines)
    silence([d for eng in engines.values() for d in eng.declare_silent(Stream.P)])
    silence.left(engines.pop(1))
    engines[0].on_record(Stream.P, 1, b"Y0", payment("Y0-q", "requested", "Y0", 630))
    assert [d for d in silence([]) if d.role == "alerts"] == []


def test_a_restarted_worker_takes_a_silence_paged_before_over_without_a_new_page() -> None:
    # The partitions' state keeps them silent; their page is the previous incarnation's (or the
    # previous owner's) and still open. Paged again, each restart in the quiet after a silence
    # would send a critical `opened` with a new alert_id saying the other topic flows while both
    # feeds are quiet.
    engines = _engines(2)
    before = TopicSilence(TOPICS, lambda: engines)
    [opened] = [d.value for d in before([d for eng in engines.values() for d in eng.declare_silent(Stream.L)])]
    restarted = TopicSilence(TOPICS, lambda: engines)  # the engines as restored: still silent
    assert restarted([]) == [] and restarted([]) == []
    assert restarted.open[TOPICS[1]].partitions == {0, 1}
    for p in (0, 1):
        engines[p].on_record(Stream.L, 2, f"Y{p}".encode(), ledger(f"Y{p}-d", "debited", f"Y{p}", 620))
    [r] = [d.value for d in restarted([])]
    assert r["status"] == "resolved" and r["dedup_key"] == opened["dedup_key"] and r["partitions"] == [0, 1]
    _check(r)
    assert restarted([]) == []


def test_a_silence_declared_beside_one_taken_over_is_paged_and_the_two_are_one_episode() -> None:
    engines = _engines(2)
    engines[0].declare_silent(Stream.L)  # paged by the worker before this one
    silence = TopicSilence(TOPICS, lambda: engines)
    assert silence([]) == []
    [a] = [d.value for d in silence(engines[1].declare_silent(Stream.L))]  # declared here
    assert a["status"] == "opened" and a["partitions"] == [0, 1] and a["severity"] == "critical"
    _check(a)
    engines[1].on_record(Stream.L, 2, b"Y1", ledger("Y1-d", "debited", "Y1", 620))
    assert silence([]) == []  # partition 0 still silent: one episode, no resolved yet
    engines[0].on_record(Stream.L, 2, b"Y0", ledger("Y0-d", "debited", "Y0", 620))
    [r] = [d.value for d in silence([])]
    assert r["status"] == "resolved" and r["partitions"] == [0, 1]
