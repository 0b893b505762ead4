"""Whether this worker was frozen past its consumer group's session: a zombie's case.

A process stopped (SIGSTOP, a paused VM, a swap storm) longer than the group's session timeout
has most likely been dropped by the group, and its partitions given to another worker, which
decides their records and sends what they release. When the frozen process resumes, a batch it
was in the middle of, or one fetched before the freeze, would send its decisions late: a
`refund.held` after the new owner's `refund.hold_released` of the same refund. So a batch
checks, before each send, whether a freeze happened since it started, and the worker replaces
its process (`recovery.restart_self`): nothing of the batch is sent, acked or kept, and the new
process rejoins the group and takes from the last commit what is still its to take.

A freeze is told apart from a busy event loop by the process's CPU time: a loop blocked by the
worker's own work (a long restore, a large batch) uses CPU all along, and the consumer's thread
keeps its heartbeats going meanwhile, so the group keeps it; a stopped process uses none. The
watch task ticks every half second (`tick`); between ticks, `frozen_since` also counts the time
since the last tick, so a batch that resumes before the watch does still sees the freeze.
`LoopWatch` reads no clock (the times are given); `watch_for_freezes` is the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("qris_guard.worker")


@dataclass
class LoopWatch:
    """The event loop's last tick as the watch task saw it, and the freezes found so far.

    >>> w = LoopWatch(session_timeout_s=30.0)
    >>> w.tick(100.0, 5.0), w.tick(100.5, 5.1)  # (the first tick only starts the watch)
    (False, False)
    >>> w.tick(140.0, 45.0)  # the loop stood still 39.5 s, busy the whole time: no freeze
    False
    >>> since = w.freezes
    >>> w.frozen_since(since, 150.0, 45.2)  # 10 s without a tick: not past the session
    False
    >>> w.frozen_since(since, 180.0, 45.2)  # 40 s stopped, the watch not run yet
    True
    >>> w.tick(180.0, 45.2), w.freezes, w.frozen_since(since, 180.1, 45.2)
    (True, 1, True)
    >>> w.frozen_since(w.freezes, 180.1, 45.2)  # a batch that started after it
    False
    """

    session_timeout_s: float
    seen_s: float | None = None  # monotonic seconds at the last tick (None: no watch runs)
    seen_cpu_s: float = 0.0  # the process's CPU seconds then
    freezes: int = 0

    def stood_still_s(self, now_s: float, cpu_s: float) -> float:
        """Seconds since the last tick in which the process used no CPU."""
        if self.seen_s is None:
            return 0.0
        return (now_s - self.seen_s) - (cpu_s - self.seen_cpu_s)

    def tick(self, now_s: float, cpu_s: float) -> bool:
        """The watch's tick; True if the process was frozen past the session since the last."""
        frozen = self.stood_still_s(now_s, cpu_s) > self.session_timeout_s
        if frozen:
            self.freezes += 1
        self.seen_s, self.seen_cpu_s = now_s, cpu_s
        return frozen

    def frozen_since(self, freezes: int, now_s: float, cpu_s: float) -> bool:
        """Whether a freeze past the session happened since the watch had counted `freezes`:
        one it found, or one it has not ticked after yet."""
        return self.freezes != freezes or self.stood_still_s(now_s, cpu_s) > self.session_timeout_s


class FrozenBatch(Exception):
    """A batch or hand-over of decisions straddled a freeze past the session: not sent."""


def stop_if_frozen(watch: LoopWatch, since: int, on_frozen: Callable[[], None] | None, what: str) -> None:
    """Before a send: if the process was frozen past the session since `since` (the freezes
    counted when the sender began deciding), nothing more is sent: `on_frozen` replaces the
    process; without one (tests), `FrozenBatch` is raised and the caller's batch fails unacked."""
    if not watch.frozen_since(since, time.monotonic(), time.process_time()):
        return
    log.warning(
        "the worker was frozen past the group's session timeout (%.0f s) while %s: its partitions may have "
        "another owner; nothing more is sent, the worker restarts from its last commit",
        watch.session_timeout_s,
        what,
    )
    if on_frozen is not None:
        on_frozen()
    raise FrozenBatch(f"frozen past the session timeout while {what}")


async def watch_for_freezes(watch: LoopWatch, on_freeze: Callable[[], None], tick_s: float = 0.5) -> None:
    """Ticks `watch` every `tick_s`; a freeze past the session calls `on_freeze` (the worker
    restarts: its partitions may have another owner, and what it decided before the freeze and
    has not committed is the new owner's or its own next incarnation's to decide)."""
    while True:
        if watch.tick(time.monotonic(), time.process_time()):
            log.warning(
                "the worker was frozen past the group's session timeout (%.0f s): its partitions may have "
                "another owner; restarting from the last commit",
                watch.session_timeout_s,
            )
            on_freeze()
        await asyncio.sleep(tick_s)
