"""A stopping worker that does not stop exits on its own.

Seen in a benchmark: a worker of `worker --processes 2` was stopping (SIGTERM) when
its connection to the group coordinator closed; aiokafka then retried its heartbeat every 100 ms
("GroupCoordinatorNotAvailableError", "Heartbeat session expired") and Faust's consumer never
finished stopping: 15 minutes later the process was still alive, out of its group, holding its
data directory. A container runtime would kill it after its grace period; a plain process
supervisor (systemd without a stop timeout, `worker --processes` itself, a shell) waits for ever.

So the first stop request (a signal, or the worker's start ending for any reason) arms a timer
on its own thread: if the process is still there `QRIS_STOP_TIMEOUT_S` later, it logs why and
exits with code 70, as a crash. Exiting without finishing the stop is safe for the money: input
offsets are committed only after the decisions they led to are on Kafka (`finish_before_ack`),
so the next start takes the uncommitted records again and repeats those decisions with the same
ids and content (the chaos tests kill workers with SIGKILL at random moments and compare).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("qris_guard.worker")

EXIT_CODE = 70  # as the worker's other self-exits (EX_SOFTWARE)


class StopDeadline:
    """`arm(why)` once a stop begins; `exit(EXIT_CODE)` if `cancel()` has not come `timeout_s` later.

    >>> exits = []
    >>> d = StopDeadline(0.01, exit=exits.append)
    >>> d.arm("test"); d.arm("again"); d.wait(5.0)
    True
    >>> exits
    [70]
    """

    def __init__(self, timeout_s: float, exit: Callable[[int], object] = os._exit) -> None:
        self.timeout_s = timeout_s
        self._exit = exit
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._fired = threading.Event()
        self.armed_for: str | None = None

    def arm(self, why: str) -> None:
        """Start the clock (only the first call counts: a stop has one deadline)."""
        with self._lock:
            if self._timer is not None:
                return
            self.armed_for = why
            self._timer = threading.Timer(self.timeout_s, self._expire, args=(why,))
            self._timer.daemon = True
            self._timer.name = "qris-stop-deadline"
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def wait(self, timeout_s: float) -> bool:
        """Whether the deadline passed within `timeout_s` (tests)."""
        return self._fired.wait(timeout_s)

    def _expire(self, why: str) -> None:
        # Logged from yet another thread, given 2 s: a main thread stuck inside a log handler
        # must not keep this one from exiting.
        said = threading.Thread(
            target=log.critical,
            args=(
                "worker still stopping %.0f s after %s (QRIS_STOP_TIMEOUT_S); exiting with code %d without "
                "finishing the stop: the next start goes on from the last committed offsets",
                self.timeout_s,
                why,
                EXIT_CODE,
            ),
            daemon=True,
        )
        said.start()
        said.join(2.0)
        self._fired.set()
        self._exit(EXIT_CODE)
