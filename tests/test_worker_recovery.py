"""The state-recovery watchdog (stream/worker/recovery.py): a recovery that stops making
progress is detected; one that progresses slowly, or none running, is left alone."""

from __future__ import annotations

import doctest

from stream.worker import recovery
from stream.worker.recovery import RecoveryWatchdog


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
