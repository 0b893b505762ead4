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


async def follow_incidents_topic(settings: Settings, shell: ReconcileShell) -> None:
    tp = TopicPartition(settings.incidents_topic, 0)
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
