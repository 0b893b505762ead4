"""Warm-up: the burst detector's state built from history, written as a snapshot the live worker
restores (`qris-guard warmup`). From the signals topic (`--from-kafka --since 7d`: the reports the
live partitions wrote) or from a replay file of input records (`--in FILE`, through the same
replay core as `replay`). Alerts of the history are not emitted: it is learning, not deciding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core import codec
from ..core.burst import BurstDetector, BurstParams
from ..core.partition import Params
from .replay import Replay
from .replayfile import KafkaRecord


class PartitionsMistake(ValueError):
    """`--partitions` fewer than the replay file's input partitions."""


@dataclass
class Warmed:
    detector: BurstDetector
    reports: int  # signal reports the detector took
    incidents_seen: int  # incidents the history held (not emitted)
    last_signals_offset: int | None = None  # offset of the last signals record read, if from the topic


def from_records(records: Iterable[KafkaRecord], params: Params, burst: BurstParams, partitions: int | None) -> Warmed:
    """Input records (a replay file) through the partition engines, their closed minutes through
    the detector. `partitions`: the input's partition count (default: the partitions seen)."""
    replay = Replay(params, burst)
    for rec in records:
        replay.feed(rec)
    seen = set(replay.engines)
    if not seen:
        raise SystemExit("warmup: no input record in the replay file")
    if partitions and not seen <= set(range(partitions)):
        # (The detector refuses a report of a partition beyond its own: a bug's exit, not a word.)
        raise PartitionsMistake(
            f"--partitions {partitions}: the replay file has records of input partition(s) "
            f"{', '.join(map(str, sorted(seen - set(range(partitions)))))} beyond them"
        )
    warmed = _feed(replay.signals, set(range(partitions)) if partitions else seen, burst)
    warmed.detector.end_history()  # (none of its minutes or incidents goes on into the live ones)
    warmed.incidents_seen = warmed.detector.stats["incidents"]  # (with those its last minutes opened)
    warmed.detector.warmed_through = warmed.detector.closed_through  # (its last minutes included)
    return warmed


def from_signals(records: Iterable[KafkaRecord], partitions: int, burst: BurstParams) -> Warmed:
    """Signal reports as read from the signals topic, in its order."""
    last: list[int] = []

    def values() -> Iterator[dict[str, Any]]:
        for rec in records:
            last[:] = [rec.offset]
            if rec.value is None:
                continue
            try:
                yield codec.loads(rec.value)
            except ValueError:
                continue  # the live shell skips it too

    warmed = _feed(values(), set(range(partitions)), burst)
    warmed.last_signals_offset = last[0] if last else None
    return warmed


def _feed(values: Iterable[dict[str, Any]], partitions: set[int], burst: BurstParams) -> Warmed:
    detector = BurstDetector(partitions, burst)
    n = 0
    for value in values:
        detector.on_signals(value)
        n += 1
    detector.warmed_through = detector.closed_through
    return Warmed(detector, n, detector.stats["incidents"])
