"""Stalled event time (live only): one `EVENT_TIME_STALLED` for an input topic when partitions of
this worker take valid records but their watermark has not moved for `stall_s` seconds of wall
time, held back by that topic's stream; one `resolved` when each of them moves again.

By the contract a partition's watermark is min(max_P, max_L) - A: if one stream's records keep
coming with an event time that stands still (a producer's clock frozen in `occurred_at`, or in
its Kafka timestamps, to which the clock guard moves records dated ahead of them), nothing of the
partition is decided, refunds included, and its records wait in memory. The idle rule does not
apply (the stream is not silent) and nothing else on `qris.alerts` says so. A stream that is
silent is `FEED_SILENT`'s (`feeds`), so only partitions that took records since their watermark
last moved count. Alerts of several workers about one topic share the dedup key
`EVENT_TIME_STALLED:<topic>`, as `FEED_SILENT`'s do. No Faust imports; the wall clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.alerts import event_time_stalled_alert
from ..core.decisions import Decision
from ..core.partition import NEG_INF, PartitionEngine


@dataclass
class _Since:
    """A partition's watermark and, since it last moved (or since this engine was first seen),
    the wall time and the engine's count of valid records then."""

    engine: PartitionEngine
    watermark_ms: int
    since_s: float
    records: int


@dataclass
class _Episode:
    partitions: set[int]


@dataclass
class ClockStall:
    topics: tuple[str, str]  # Stream.P, Stream.L
    engines: Callable[[], dict[int, PartitionEngine]]
    stall_s: float
    seen: dict[int, _Since] = field(default_factory=dict)
    open: dict[str, _Episode] = field(default_factory=dict)

    def __call__(self, now_s: float) -> list[Decision]:
        """The alerts of this check: opened for a topic whose partitions newly stalled, resolved
        for a topic none of whose partitions is stalled any more (`stall_s` 0: never)."""
        if self.stall_s <= 0:
            return []
        engines = self.engines()
        if not engines:  # just after a rebalance: nothing known yet
            return []
        for p in [p for p in self.seen if p not in engines]:
            del self.seen[p]  # moved to another worker: it speaks for it now
        stalled: dict[str, dict[int, _Since]] = {topic: {} for topic in self.topics}
        for p, eng in engines.items():
            w, n = eng.watermark_ms, eng.stats["records"]
            at = self.seen.get(p)
            if at is None or at.engine is not eng or w > at.watermark_ms:
                self.seen[p] = _Since(eng, w, now_s, n)
                continue
            if n > at.records and now_s - at.since_s >= self.stall_s:
                stalled[self.topics[_behind(eng)]][p] = at
        out: list[Decision] = []
        w_max = max(eng.watermark_ms for eng in engines.values())
        at_ms = w_max if w_max > NEG_INF else None
        for s, topic in enumerate(self.topics):
            now_stalled = stalled[topic]
            episode = self.open.get(topic)
            if now_stalled and episode is None:
                self.open[topic] = _Episode(set(now_stalled))
                known = [m for p in now_stalled if (m := engines[p].max_ms[s]) is not None]
                since = min(at.since_s for at in now_stalled.values())
                records = sum(engines[p].stats["records"] - at.records for p, at in now_stalled.items())
                out.append(
                    event_time_stalled_alert(
                        topic,
                        sorted(now_stalled),
                        "opened",
                        max(known) if known else None,
                        at_ms,
                        now_s - since,
                        records,
                    )
                )
            elif now_stalled and episode is not None:
                episode.partitions |= set(now_stalled)  # more partitions of the same problem: no new page
            elif not now_stalled and episode is not None:
                del self.open[topic]
                known = [m for p in episode.partitions if p in engines and (m := engines[p].max_ms[s]) is not None]
                out.append(
                    event_time_stalled_alert(
                        topic, sorted(episode.partitions), "resolved", max(known) if known else None, at_ms, 0.0, 0
                    )
                )
        return out


def _behind(eng: PartitionEngine) -> int:
    """The stream that holds the watermark back: the one whose newest event time is the
    earlier (or that has none), payments on a tie."""
    mp, ml = eng.max_ms
    if mp is None:
        return 0
    if ml is None:
        return 1
    return 0 if mp <= ml else 1
