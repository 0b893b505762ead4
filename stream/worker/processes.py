"""`qris-guard worker --processes N`: N worker processes on one host, in one consumer group.

One worker is one Python event loop, so it uses at most one CPU; more records/s per host take
more processes, as more hosts would (Kafka splits the input partitions among them; partition p
of both input topics stays on one process). Each child is a plain `python -m stream worker`
with its own data directory (`<QRIS_DATA_DIR>/w<i>`: its RocksDB state and Faust's files) and
web port (`QRIS_WEB_PORT + i`; 0 stays off). The parent only supervises: SIGTERM or SIGINT is
passed to every child; a child that exits on its own (a failure: the worker exits before
acking what it could not finish) stops the others and the parent exits with its code, so the
host's supervisor (Docker's restart policy, systemd) restarts the set from the last commits, as
it restarts a single worker. Imports no faust (the children do).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from ..settings import Settings, to_env

log = logging.getLogger("qris_guard.worker")


def child_settings(settings: Settings, index: int) -> Settings:
    """The settings of child `index`: its own data directory and web port.

    >>> s = child_settings(Settings(data_dir="var/worker", web_port=6066), 1)
    >>> s.data_dir, s.web_port
    ('var/worker/w1', 6067)
    """
    port = settings.web_port + index if settings.web_port > 0 else 0
    return replace(settings, data_dir=str(Path(settings.data_dir) / f"w{index}"), web_port=port)


def run_processes(settings: Settings, n: int, poll_s: float = 0.5, command: list[str] | None = None) -> int:
    """Run `n` worker processes until they stop; the exit code of the first that failed, else 0.
    `command` replaces `python -m stream worker` (tests)."""
    argv = command or [sys.executable, "-m", "stream", "worker"]
    if settings.web_port > 0 and settings.web_port + n - 1 > 65535:
        last = settings.web_port + n - 1
        raise ValueError(f"QRIS_WEB_PORT={settings.web_port}: {n} processes need web ports up to {last}")
    children: list[subprocess.Popen[bytes]] = []
    stopping = False
    stop_sent: tuple[float, int] | None = None  # when the stop was passed on, and which signal
    # Each child exits on its own QRIS_STOP_TIMEOUT_S after a stop began (`stopdeadline`); this
    # is the parent's backstop for a child that cannot (its children are in their own sessions:
    # nobody else would ever stop them).
    kill_after_s = settings.stop_timeout_s + max(2.0, settings.stop_timeout_s / 6)

    def stop(signum: int, _frame: FrameType | None = None) -> None:
        nonlocal stopping, stop_sent
        stopping = True
        stop_sent = stop_sent or (time.monotonic(), signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(n):
        env = {**os.environ, **to_env(child_settings(settings, i))}
        # Its own session: a terminal's Ctrl-C reaches the parent only, which passes it on once.
        children.append(subprocess.Popen(argv, env=env, start_new_session=True))
        log.info("worker process %d started (pid %d)", i, children[-1].pid)
        if stop_sent is not None:  # a stop came while the children were starting
            children[-1].send_signal(stop_sent[1])
    failed: int | None = None
    while any(child.poll() is None for child in children):
        for i, child in enumerate(children):
            code = child.poll()
            if code is not None and not stopping:
                log.critical("worker process %d (pid %d) exited with %d; stopping the others", i, child.pid, code)
                failed = code or 1
                stop(signal.SIGTERM)
            elif code is None and stop_sent is not None and time.monotonic() - stop_sent[0] > kill_after_s:
                log.critical(
                    "worker process %d (pid %d) still running %.0f s after the stop; killing it",
                    i,
                    child.pid,
                    kill_after_s,
                )
                child.kill()
                failed = failed or 70
        time.sleep(poll_s)
    if failed is not None:
        return failed
    codes = [child.returncode for child in children]
    return next((c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)), 0)
