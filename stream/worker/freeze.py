"""Whether this worker was frozen past its consumer group's session: a zombie's case.

A process stopped (SIGSTOP, a paused VM, a host suspended) longer than the group's session
timeout has most likely been dropped by the group, and its partitions given to another worker,
which decides their records and sends what they release. When the frozen process resumes, a
batch it was in the middle of, or one fetched before the freeze, would send its decisions late:
a `refund.held` after the new owner's `refund.hold_released` of the same refund, an incident's
`opened` after its `resolved`. So every sender checks, before each send, whether a freeze
happened since it began deciding (`stop_if_frozen`), and the worker replaces its process
(`recovery.restart_self`): nothing of the batch is sent, acked or kept, and the new process
rejoins the group and takes from the last commit what is still its to take.

What is measured is what the group measures: whether any thread of the process could run. A
plain thread (`LoopWatch.run`) ticks every 0.1 s; a gap between its ticks longer than the
session means no thread ran, so the consumer thread's heartbeats did not either. An event loop
that is merely blocked (CPU work, a write to a full pipe, a slow disk) leaves the thread
ticking, and the group keeps the worker, so that is no freeze. Between ticks, `frozen_since`
also counts the time since the last one, so a sender that resumes before the thread does still
sees the freeze; a SIGCONT handler (`on_sigcont`) restarts the process before any other Python
code runs when a stop was the cause, so nothing already handed to the producer goes out either.
The clock is CLOCK_BOOTTIME where there is one (it goes on while the host is suspended).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("qris_guard.worker")

TICK_S = 0.1


def now_s() -> float:
    """Seconds of a clock that also counts time the host was suspended (Linux), else monotonic."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


@dataclass
class LoopWatch:
    """The ticker thread's last tick, and the freezes it found so far.

    >>> w = LoopWatch(session_timeout_s=30.0)
    >>> w.tick(100.0), w.tick(100.1)  # (the first tick only starts the watch)
    (False, False)
    >>> since = w.freezes
    >>> w.frozen_since(since, 110.0)  # 10 s without a tick: not past the session
    False
    >>> w.frozen_since(since, 140.0)  # 40 s stopped, the thread not run yet
    True
    >>> w.tick(140.0), w.freezes, w.frozen_since(since, 140.05)
    (True, 1, True)
    >>> w.frozen_since(w.freezes, 140.05)  # a sender that began after it
    False
    """

    session_timeout_s: float
    seen_s: float | None = None  # `now_s()` at the last tick (None: no ticker runs)
    freezes: int = 0

    def stood_still_s(self, now: float) -> float:
        """Seconds since the last tick (0 when no ticker runs)."""
        return 0.0 if self.seen_s is None else now - self.seen_s

    def tick(self, now: float) -> bool:
        """The ticker's tick; True if no thread ran for longer than the session since the last."""
        frozen = self.stood_still_s(now) > self.session_timeout_s
        if frozen:
            self.freezes += 1
        self.seen_s = now
        return frozen

    def frozen_since(self, freezes: int, now: float) -> bool:
        """Whether a freeze past the session happened since the ticker had counted `freezes`:
        one it found, or one it has not ticked after yet."""
        return self.freezes != freezes or self.stood_still_s(now) > self.session_timeout_s

    def run(self, stop: threading.Event, tick_s: float = TICK_S) -> None:
        """The ticker thread's body: a tick every `tick_s` until `stop` is set."""
        while not stop.is_set():
            self.tick(now_s())
            time.sleep(tick_s)


class FrozenBatch(Exception):
    """A batch or hand-over of decisions straddled a freeze past the session: not sent."""


def _warn(watch: LoopWatch, what: str) -> None:
    log.warning(
        "the worker was frozen past the group's session timeout (%.0f s)%s: its partitions may have another "
        "owner; nothing more is sent, the worker restarts from its last commit",
        watch.session_timeout_s,
        what,
    )


def stop_if_frozen(watch: LoopWatch, since: int, on_frozen: Callable[[], None] | None, what: str) -> None:
    """Before a send: if the process was frozen past the session since `since` (the freezes
    counted when the sender began deciding), nothing more is sent: `on_frozen` replaces the
    process; without one (tests), `FrozenBatch` is raised and the caller's batch fails unacked."""
    if not watch.frozen_since(since, now_s()):
        return
    _warn(watch, f" while {what}")
    if on_frozen is not None:
        on_frozen()
    raise FrozenBatch(f"frozen past the session timeout while {what}")


def on_sigcont(watch: LoopWatch, on_frozen: Callable[[], None]) -> Callable[[int, object], None]:
    """A SIGCONT handler: a process let go after a stop past the session restarts at once (the
    handler runs before the event loop's next callback, so before the producer's sender sends
    what was handed to it before the stop)."""

    def handler(_signum: int, _frame: object) -> None:
        if watch.freezes or watch.stood_still_s(now_s()) > watch.session_timeout_s:
            _warn(watch, " (stopped, then continued)")
            on_frozen()

    return handler


async def watch_for_freezes(watch: LoopWatch, on_freeze: Callable[[], None], check_s: float = 0.5) -> None:
    """Runs the ticker thread and, every `check_s`, restarts the worker (`on_freeze`) once it
    found a freeze: the partitions may have another owner, and what this process decided before
    the freeze and has not committed is the new owner's or its own next incarnation's to decide."""
    stop = threading.Event()
    threading.Thread(target=watch.run, args=(stop,), name="qris-freeze-watch", daemon=True).start()
    try:
        while True:
            await asyncio.sleep(check_s)
            if watch.freezes:
                _warn(watch, "")
                on_freeze()
    finally:
        stop.set()
