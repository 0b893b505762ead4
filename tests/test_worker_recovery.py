"""The state-recovery watchdog (stream/worker/recovery.py): a recovery that stops making
progress is detected; one that progresses slowly, or none running, is left alone."""

from __future__ import annotations

import doctest

from stream.worker import recovery
from stream.worker.recovery import FeedStallWatchdog, RecoveryWatchdog


def test_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(recovery, raise_on_error=False, verbose=False)
    assert tried > 0 and failures == 0


def test_a_slow_recovery_that_keeps_progressing_is_not_a_hang() -> None:
    w = RecoveryWatchdog(stall_s=60)
    assert not any(w.stalled(True, 10_000 - i, now_s=i * 50.0) for i in range(100))


def test_a_recovery_with_nothing_left_that_never_ends_is_a_hang() -> None:
    # Faust's "Recovery has no remaining offsets to fetch, but ... waiting" case.
    w = RecoveryWatchdog(stall_s=60)
    assert not w.stalled(True, 0, now_s=0)
    assert not w.stalled(True, 0, now_s=59)
    assert w.stalled(True, 0, now_s=60)


def test_each_recovery_is_timed_from_its_own_start() -> None:
    w = RecoveryWatchdog(stall_s=60)
    assert not w.stalled(True, 5, now_s=0)
    assert not w.stalled(False, 0, now_s=30)  # done
    assert not w.stalled(True, 5, now_s=1000)  # a new recovery after a rebalance
    assert not w.stalled(True, 5, now_s=1059)
    assert w.stalled(True, 5, now_s=1060)


def test_a_partition_with_records_waiting_and_none_taken_is_a_stall() -> None:
    w = FeedStallWatchdog(stall_s=120)
    tp, other = ("ledger-debits", 2), ("ledger-debits", 1)
    # The other partition keeps taking records; partition 2 stays at offset 549 with 673 on the broker.
    for i in range(12):
        assert w.stalled({tp: (549, 673), other: (100 + i, 900)}, now_s=i * 10.0) == []
    assert w.stalled({tp: (549, 673), other: (200, 900)}, now_s=125.0) == [tp]


def test_a_partition_that_caught_up_or_was_never_restored_is_not_a_stall() -> None:
    w = FeedStallWatchdog(stall_s=120)
    tp = ("payment-requests", 0)
    assert w.stalled({tp: (673, 673)}, now_s=0) == []
    assert w.stalled({tp: (673, 673)}, now_s=500) == []  # nothing waiting
    assert w.stalled({tp: (None, 900)}, now_s=600) == []  # not restored yet
    assert w.stalled({tp: (10, None)}, now_s=700) == []  # high watermark not fetched yet


def test_a_lag_of_transaction_markers_only_is_timed_again() -> None:
    w = FeedStallWatchdog(stall_s=120)
    tp = ("payment-requests", 0)
    w.stalled({tp: (50, 51)}, now_s=0)
    assert w.stalled({tp: (50, 51)}, now_s=130) == [tp]
    w.confirmed_empty(tp, now_s=130)
    assert w.stalled({tp: (50, 51)}, now_s=200) == []
    assert w.stalled({tp: (50, 51)}, now_s=251) == [tp]


def test_restarts_are_counted_in_the_environment_the_next_process_inherits() -> None:
    from stream.settings import from_env
    from stream.worker.recovery import SELF_RESTARTS_ENV, counted_restart, self_restarts

    env: dict[str, str] = {"QRIS_RECOVERY_STALL_S": "5"}
    counted_restart("state_restore_stalled", env)
    inherited = dict(env)  # what `execv` hands the next process
    counted_restart("state_restore_stalled", inherited)
    counted_restart("feed_stalled", inherited)
    assert self_restarts(inherited) == {
        "state_restore_stalled": 2,
        "state_restore_failed": 0,
        "feed_stalled": 1,
        "shell_stalled": 0,
        "frozen_past_session": 0,
    }
    # The restarted worker's settings accept the variable (it is not an unknown QRIS_ setting).
    assert from_env(inherited).recovery_stall_s == 5.0 and SELF_RESTARTS_ENV in inherited
