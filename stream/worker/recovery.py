"""A watchdog for the state restore after an assignment: a restore that stops making progress
is detected, and the worker restarts itself.

Faust's table recovery (the state before `statestore.py`) once hung in the two-worker
rebalance test: the new owner received no changelog record for two partitions for two minutes
and decided nothing for them (faust-streaming #74 describes a similar hang). The project's own
restore reads the changelog with a plain aiokafka consumer and could stall the same way (a
broker that stops answering fetches). `RecoveryWatchdog` is told, every few seconds, whether a
restore is running and how many changelog records it still has to read; when that number has
not gone down for `stall_s` (`QRIS_RECOVERY_STALL_S`, 60 s), it says so, and the worker
replaces its process with a fresh one of itself (`restart_self`): nothing of the batch in
flight is acked, and the new process joins the group and restores again; the restarts are
counted in the environment the new process inherits. The watchdogs decide from what they are
told and read no clock. Imports no faust.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Literal, get_args

log = logging.getLogger("qris_guard.worker")

RECOVERY_STALL_S = 60.0


class RecoveryWatchdog:
    """Says when a running recovery has made no progress for `stall_s` seconds.

    >>> w = RecoveryWatchdog(stall_s=60)
    >>> w.stalled(True, 500, now_s=0), w.stalled(True, 400, now_s=50), w.stalled(True, 400, now_s=100)
    (False, False, False)
    >>> w.stalled(True, 400, now_s=110.5)
    True
    >>> w.stalled(False, 0, now_s=111), w.stalled(True, 400, now_s=112)
    (False, False)
    """

    def __init__(self, stall_s: float = RECOVERY_STALL_S) -> None:
        self.stall_s = stall_s
        self._least: int | None = None  # fewest records remaining seen in this recovery
        self._progress_at_s = 0.0

    def stalled(self, in_recovery: bool, remaining: int, now_s: float) -> bool:
        if not in_recovery:
            self._least = None
            return False
        if self._least is None or remaining < self._least:
            self._least = remaining
            self._progress_at_s = now_s
            return False
        return now_s - self._progress_at_s >= self.stall_s


# The worker's own restarts so far, by reason ("state_restore_stalled=1,feed_stalled=2"): the
# process that `execv` makes is a new one, so the count travels in its environment.
SELF_RESTARTS_ENV = "QRIS_WORKER_SELF_RESTARTS"
RestartReason = Literal[
    "state_restore_stalled", "state_restore_failed", "feed_stalled", "shell_stalled", "frozen_past_session"
]
RESTART_REASONS: tuple[RestartReason, ...] = get_args(RestartReason)


def self_restarts(environ: Mapping[str, str] = os.environ) -> dict[RestartReason, int]:
    """The restarts by reason this worker made of itself since it was started (every reason,
    0 if none). Unreadable parts count as none.

    >>> self_restarts({SELF_RESTARTS_ENV: "state_restore_stalled=2,bogus,feed_stalled=x"})["state_restore_stalled"]
    2
    >>> sum(self_restarts({}).values())
    0
    """
    counts = dict.fromkeys(RESTART_REASONS, 0)
    for part in environ.get(SELF_RESTARTS_ENV, "").split(","):
        name, _, n = part.partition("=")
        for reason in RESTART_REASONS:
            if name == reason and n.isdigit():
                counts[reason] = int(n)
    return counts


def counted_restart(reason: RestartReason, environ: MutableMapping[str, str] = os.environ) -> None:
    """Count one more restart for `reason` in `environ` (what the next process inherits).

    >>> env: dict[str, str] = {}
    >>> counted_restart("feed_stalled", env); counted_restart("feed_stalled", env); env[SELF_RESTARTS_ENV]
    'state_restore_stalled=0,state_restore_failed=0,feed_stalled=2,shell_stalled=0,frozen_past_session=0'
    """
    counts = self_restarts(environ)
    counts[reason] += 1
    environ[SELF_RESTARTS_ENV] = ",".join(f"{r}={n}" for r, n in counts.items())


# The exit status of a worker that stops because its saved state is of a version it does not
# read (`stop_unreadable_state`): a supervisor's backoff applies to its restarts.
UNREADABLE_STATE_EXIT = 1

UNREADABLE_STATE_HELP = (
    "The state was saved by a newer release of qris-guard: this worker decides nothing from state "
    "it would misread. Run the newer release on this group (a rollback over its state is not "
    "supported), or start this release with a new QRIS_APP_ID, which decides everything again "
    "from the input topics."
)


def stop_unreadable_state(problem: str) -> None:  # pragma: no cover - ends the process
    """Stop at once, deciding nothing more, with exit status `UNREADABLE_STATE_EXIT`: a restart
    in place (`restart_self`) would meet the same state and loop without a pause, each new
    member rebalancing the whole group."""
    log.critical("%s. %s", problem, UNREADABLE_STATE_HELP)
    logging.shutdown()
    os._exit(UNREADABLE_STATE_EXIT)


def restart_self(reason: RestartReason) -> None:  # pragma: no cover - replaces the process
    """Replace this process with a fresh worker with the same arguments and environment, one
    more restart for `reason` counted in it (`/metrics`: qris_worker_self_restarts_total)."""
    counted_restart(reason)
    logging.shutdown()
    try:
        os.execv(sys.executable, [sys.executable, "-m", "stream", *sys.argv[1:]])
    except OSError:  # never go on as if restarted: a supervisor starts the worker again
        os._exit(70)


# A topic partition with records on the broker that the worker has not taken for this long is
# stalled: Faust stopped handing it over (seen at this stop after restarts and rebalances: two
# ledger-debits partitions, then the signals partition, delivered nothing more for minutes), or
# the broker stopped serving this worker's fetches. `QRIS_FEED_STALL_S` sets it.
FEED_STALL_S = 120.0
# The signals partition's: the refunds that holds keep wait for the detector, and what it does
# not get is read from the broker (`bursts.BurstShell.catch_up`), not by a restart. At most
# `QRIS_FEED_STALL_S`.
SIGNALS_STALL_S = 20.0

TopicPartitionKey = tuple[str, int]


class FeedStallWatchdog:
    """Says which topic partitions have records waiting on the broker (its end offset is past
    the next offset the worker would take) but have taken none for `stall_s` seconds.

    `positions` maps each topic partition assigned here to (next offset to take, the broker's end
    offset asked at this check, not the high watermark Faust last fetched, which stays put when
    the broker stops serving the worker's fetches); None where unknown (not restored yet, not
    asked, no answer), which counts as no lag.

    >>> w = FeedStallWatchdog(stall_s=120)
    >>> tp = ("ledger-debits", 2)
    >>> w.stalled({tp: (549, 673)}, now_s=0), w.stalled({tp: (549, 673)}, now_s=119)
    ([], [])
    >>> w.stalled({tp: (549, 673)}, now_s=121)
    [('ledger-debits', 2)]
    >>> w.stalled({tp: (600, 673)}, now_s=200), w.stalled({tp: (673, 673)}, now_s=400)
    ([], [])
    >>> w.stalled({tp: (673, 700)}, now_s=401), w.stalled({}, now_s=600), w.stalled({tp: (673, 700)}, now_s=601)
    ([], [], [])
    """

    def __init__(self, stall_s: float = FEED_STALL_S) -> None:
        self.stall_s = stall_s
        self._since: dict[TopicPartitionKey, tuple[int, float]] = {}  # next offset, when first seen
        self._taken_before: dict[TopicPartitionKey, int | None] = {}  # next offsets at the last check

    def unmoved(self, next_offsets: Mapping[TopicPartitionKey, int | None]) -> list[TopicPartitionKey]:
        """The topic partitions whose next offset is known and the same as at the previous call:
        the only ones whose end offset the broker is asked for (a partition taking records is
        not stalled).

        >>> w = FeedStallWatchdog()
        >>> w.unmoved({("l", 0): 5, ("l", 1): 7, ("s", 0): None}), w.unmoved({("l", 0): 5, ("l", 1): 9, ("s", 0): None})
        ([], [('l', 0)])
        """
        out = sorted(tp for tp, n in next_offsets.items() if n is not None and self._taken_before.get(tp) == n)
        self._taken_before = dict(next_offsets)
        return out

    def stalled(
        self, positions: dict[TopicPartitionKey, tuple[int | None, int | None]], now_s: float
    ) -> list[TopicPartitionKey]:
        out: list[TopicPartitionKey] = []
        for tp in list(self._since):
            if tp not in positions:
                del self._since[tp]
        for tp, (next_offset, highwater) in sorted(positions.items()):
            if next_offset is None or highwater is None or highwater <= next_offset:
                self._since.pop(tp, None)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != next_offset:
                self._since[tp] = (next_offset, now_s)
            elif now_s - seen[1] >= self.stall_s:
                out.append(tp)
        return out

    def confirmed_empty(self, tp: TopicPartitionKey, now_s: float) -> None:
        """The broker has no record in the lag (transaction markers only): not a stall."""
        if tp in self._since:
            self._since[tp] = (self._since[tp][0], now_s)
