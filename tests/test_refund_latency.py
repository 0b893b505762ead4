"""The latency bench's pure part (bench/refund_latency.py): which input record's arrival moved a
partition's watermark past a refund's deadline. Fast tier: no broker."""

from __future__ import annotations

import pytest

from bench.refund_latency import Arrival, arrival_order, passed_at, watermark_steps
from stream.core.partition import Params
from stream.core.records import Stream
from tests.records import T0, ledger, payment

# T = 10 s, A = 2 s: a debit at t = 0 has its deadline at 10 s; W = min(max_P, max_L) - 2 s
# passes it once both streams have a record dated after 12 s.
PARAMS = Params(timeout_ms=10_000, lateness_ms=2_000, max_hold_ms=0)


def p_arrival(offset: int, body: bytes, acked_ms: int) -> Arrival:
    return Arrival(Stream.P, offset, None, body, T0 + 60_000, acked_ms)


def l_arrival(offset: int, body: bytes, acked_ms: int) -> Arrival:
    return Arrival(Stream.L, offset, None, body, T0 + 60_000, acked_ms)


def unsettled_day() -> tuple[list[Arrival], list[Arrival]]:
    # R1 requested and debited at 0 s, never settled: SETTLEMENT_TIMEOUT at its deadline (10 s).
    # Then other references move each stream's event time on, the ledger lagging behind.
    payments = [
        p_arrival(0, payment("p0", "requested", "R1", 0), 1000),
        p_arrival(1, payment("p1", "requested", "R2", 11), 1100),
        p_arrival(2, payment("p2", "requested", "R3", 12.5), 1200),  # max_P past 12 s
        p_arrival(3, payment("p3", "requested", "R4", 20), 1300),
    ]
    debits = [
        l_arrival(0, ledger("l0", "debited", "R1", 0), 1050),
        l_arrival(1, ledger("l1", "debited", "R2", 11), 1250),
        l_arrival(2, ledger("l2", "debited", "R3", 12.001), 1400),  # max_L past 12 s: W = 10.001 s
        l_arrival(3, ledger("l3", "debited", "R4", 20), 1500),
    ]
    return payments, debits


def test_the_record_that_passes_the_deadline_is_the_one_that_released_the_refund() -> None:
    payments, debits = unsettled_day()
    order = arrival_order(payments, debits)
    assert [(a.stream, a.offset) for a in order] == [
        (Stream.P, 0),
        (Stream.L, 0),
        (Stream.P, 1),
        (Stream.P, 2),
        (Stream.L, 1),
        (Stream.P, 3),
        (Stream.L, 2),
        (Stream.L, 3),
    ]
    steps = watermark_steps(0, order, PARAMS)
    assert steps.watermark_ms == sorted(steps.watermark_ms)  # W never goes back
    (key,) = [k for k in steps.released_by if k[0] == "refund.requested"]
    deadline_ms = T0 + 10_000
    i = passed_at(steps.watermark_ms, deadline_ms)
    # ledger offset 2 (acked at 1400 ms) lifts W to 10.001 s: past the deadline, strictly.
    assert i == 6 and order[i].stream is Stream.L and order[i].offset == 2
    assert steps.acked_ms[i] == 1400
    assert steps.released_by[key] == i
    assert steps.watermark_ms[i - 1] <= deadline_ms < steps.watermark_ms[i]


def test_a_watermark_exactly_at_the_deadline_has_not_passed_it() -> None:
    payments, debits = unsettled_day()
    # The ledger's third record dated 12.000 s: W = 10.000 s, equal to the deadline, not past it.
    debits[2] = l_arrival(2, ledger("l2", "debited", "R3", 12.0), 1400)
    steps = watermark_steps(0, arrival_order(payments, debits), PARAMS)
    i = passed_at(steps.watermark_ms, T0 + 10_000)
    assert i is not None and steps.acked_ms[i] == 1500  # the next ledger record does it


def test_a_deadline_no_record_passes_is_none() -> None:
    payments, debits = unsettled_day()
    steps = watermark_steps(0, arrival_order(payments, debits[:2]), PARAMS)
    assert passed_at(steps.watermark_ms, T0 + 10_000) is None
    assert not [k for k in steps.released_by if k[0] == "refund.requested"]


def test_the_order_is_by_ack_time_and_a_stream_going_back_is_refused() -> None:
    payments, debits = unsettled_day()
    late = [*debits[:1], l_arrival(1, debits[1].value, 900)]  # offset 1 acked before offset 0
    with pytest.raises(ValueError, match="acked before an earlier offset"):
        arrival_order(payments, late)


def test_the_bench_runs_its_short_timeout_with_a_clock_guard_the_worker_accepts() -> None:
    # The worker refuses a clock guard F at or above T - A; the bench shortens T and A, so F too.
    import argparse
    from dataclasses import replace

    from bench.refund_latency import clock_skew_s
    from stream.settings import Settings, refused_at_start

    for t, a, f, want in ((15.0, 5.0, None, 5.0), (300.0, 30.0, None, 60.0), (15.0, 5.0, 2.0, 2.0)):
        args = argparse.Namespace(timeout_s=t, lateness_s=a, clock_skew_s=f)
        assert clock_skew_s(args) == want
        assert refused_at_start(replace(Settings(), timeout_s=t, lateness_s=a, clock_skew_s=clock_skew_s(args))) == []


def test_refunds_are_grouped_by_when_their_releasing_record_was_acked() -> None:
    from bench.refund_latency import by_slice

    released = [(10_400, 30.0), (10_100, 10.0), (14_999, 20.0), (15_000, 900.0), (27_000, 5.0)]
    assert by_slice(released, 10_000, 5_000) == [(0, 3, 20.0, 30.0), (5, 1, 900.0, 900.0), (15, 1, 5.0, 5.0)]
    assert by_slice([], 0, 5_000) == []
