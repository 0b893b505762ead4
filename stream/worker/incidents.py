"""The incidents topic, read whole by every worker: the burst detector's incident decisions and
its progress go to every partition engine (refund holds: a deadline is decided only once the
incidents up to it are known).

A plain consumer with a manual assignment of the topic's one partition and no group, from the
beginning at every start: the topic is small (one record per signals batch of the detector that
moves its progress or decides an incident), and a restarted or rebalanced worker needs the whole
timeline for the engines it restores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..core import codec
from ..core.holds import IncidentEvent
from ..security import aiokafka_config
from ..settings import Settings
from .shell import ReconcileShell

log = logging.getLogger("qris_guard.incidents")


def parse_incidents_record(raw: bytes) -> tuple[list[IncidentEvent], int]:
    """Incident events and the known-through time of one incidents-topic record."""
    value: dict[str, Any] = codec.loads(raw)
    events = [
        IncidentEvent(int(e["at_ms"]), str(e["status"]), str(e["incident_id"]), str(e["scope"][0]), str(e["scope"][1]))
        for e in value["events"]
    ]
    return events, int(value["known_through_ms"])


# How long past the session timeout a stalled worker waits for the rejoin's assignment before
# the incidents release again without it.
STALL_GRACE_S = 60.0


def stalled_past_session(last_s: float, now_s: float, session_timeout_s: float) -> bool:
    """Whether the stall watch's loop (a tick every 0.5 s) stood still longer than the group's
    session timeout: the worker was frozen (SIGSTOP, a blocked event loop), the group has most likely
    dropped it, and its partitions may have another owner by now.

    >>> stalled_past_session(100.0, 100.6, 30.0), stalled_past_session(100.0, 135.0, 30.0)
    (False, True)
    """
    return now_s - last_s > session_timeout_s


async def watch_for_stalls(settings: Settings, shell: ReconcileShell, tick_s: float = 0.5) -> None:
    """Sets `shell.holding_back` when the event loop stood still longer than the group's session
    timeout (a frozen worker resumed: a zombie's case), and clears it again after
    `STALL_GRACE_S` more if no revocation came since (the group kept this worker). Its own
    loop does nothing but sleep: a reader waiting for the shell's lock (a long restore, a
    commit) is no stall."""
    stalled_at: float | None = None  # when this watch last set `shell.holding_back` for a stall
    revocations = shell.revocations
    last_s = time.monotonic()
    while True:
        await asyncio.sleep(tick_s)
        now_s = time.monotonic()
        if stalled_past_session(last_s, now_s, settings.session_timeout_s) and not shell.holding_back:
            # A zombie's case: hold back until the rejoin's assignment says what stays.
            shell.holding_back, stalled_at, revocations = True, now_s, shell.revocations
            log.warning(
                "the worker stood still for %.0f s, past the session timeout (%.0f s): incidents release "
                "nothing until the next partition assignment",
                now_s - last_s,
                settings.session_timeout_s,
            )
        elif not shell.holding_back or (stalled_at is not None and shell.revocations != revocations):
            stalled_at = None  # (released by an assignment, or one is under way: `on_assigned` releases)
        elif stalled_at is not None and now_s - stalled_at > settings.session_timeout_s + STALL_GRACE_S:
            # No rebalance came (the group kept this worker after all): holding back for
            # ever would stop every deadline waiting for the incidents.
            log.warning("no partition assignment since the stall: incidents release again")
            stalled_at = None
            await shell.release_held_back()
        last_s = time.monotonic()


async def follow_incidents_topic(settings: Settings, shell: ReconcileShell) -> None:
    tp = TopicPartition(settings.incidents_topic, 0)
    stalls = asyncio.ensure_future(watch_for_stalls(settings, shell))
    try:
        await _follow(settings, shell, tp)
    finally:
        stalls.cancel()


async def _follow(settings: Settings, shell: ReconcileShell, tp: TopicPartition) -> None:
    while True:
        consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, group_id=None)
        try:
            await consumer.start()
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
                events: list[IncidentEvent] = []
                known = None
                for msg in batch.get(tp, []):
                    try:
                        got, through = parse_incidents_record(msg.value)
                    except (ValueError, KeyError, TypeError, IndexError):
                        log.error("incidents offset %d is not an incidents record; skipped", msg.offset)
                        continue
                    events.extend(got)
                    known = through if known is None else max(known, through)
                if known is not None:
                    await shell.on_incidents(events, known)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("reading the incidents topic failed; retrying in 1 s", exc_info=True)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()
