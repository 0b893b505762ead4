"""Stalled event time (live only): one `EVENT_TIME_STALLED` for an input topic when partitions of
this worker keep taking valid records for `stall_s` seconds of wall time while their watermark
stands still, held back by that topic's stream; one `resolved` when each of them moves again.

By the contract a partition's watermark is min(max_P, max_L) - A: if one stream's records keep
coming with an event time that stands still (a producer's clock frozen in `occurred_at`, or in
its Kafka timestamps, to which the clock guard moves records dated ahead of them), nothing of the
partition is decided, refunds included, and its records wait in memory. The idle rule does not
apply (the stream is not silent) and nothing else on `qris.alerts` says so.

The wall time counts from the first check that saw records taken since the watermark last moved
(a partition quiet for hours whose first record cannot move its watermark is not stalled then),
per partition, across a restored engine (its record count starts again; its watermark is the
saved one). A silent stream is `FEED_SILENT`'s (`feeds`): once the idle rule declared one stream
silent, the other is the one that holds the watermark. A partition that moves to another worker
leaves the episode without counting as recovered (that worker speaks for it now); an episode
left that way is resolved too, naming them (the other worker raises its own if the stall goes
on there: a page left open for a partition nobody here watches would never close). Alerts of
several workers about one topic share the dedup key `EVENT_TIME_STALLED:<topic>`, as
`FEED_SILENT`'s do. A partition's page is kept with its state (`PartitionEngine.stall_paged`,
the streams paged and the watermark that stood): a worker that restarts during an episode, or is
given the partition, takes it over without a new page, resolves it when the watermark moves past
the one that stood (also if it moved while no worker ran), and pages again (the same dedup key)
if the partition still stands `stall_s` after it took it over, under the topic holding it then:
the page it took over may have been resolved by the worker that lost the partition
(docs/alert-routing.md). No Faust imports; the wall clock is passed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.alerts import event_time_stalled_alert
from ..core.decisions import Decision
from ..core.partition import NEG_INF, PartitionEngine


@dataclass
class _Partition:
    """What the checks saw of one partition: its engine's `incarnation` (a restored engine is a
    new object whose record count starts again; a number keeps no engine alive), the highest
    watermark seen, the engine's count of valid records at the last check, and since the
    watermark last moved, the first check that saw records taken (None: none yet) and how many;
    whether it had a valid record when the highest watermark was seen."""

    incarnation: int
    watermark_ms: int
    records_seen: int
    taking_since_s: float | None = None
    taken: int = 0
    fed: bool = True


@dataclass
class _Episode:
    partitions: set[int]  # every partition the episode listed
    stood: set[int]  # those not seen moving yet
    recovered: set[int] = field(default_factory=set)


@dataclass
class ClockStall:
    topics: tuple[str, str]  # Stream.P, Stream.L
    engines: Callable[[], dict[int, PartitionEngine]]
    stall_s: float
    seen: dict[int, _Partition] = field(default_factory=dict)
    open: dict[str, _Episode] = field(default_factory=dict)  # paged by this worker, by topic
    # Pages taken over from the partitions' saved state (this worker restarted, or was given
    # them), by topic: no page of this worker's. When this worker pages the topic, the episode
    # taken over joins its own (one page, one resolved: under the shared dedup key a resolved of
    # either would close the other's page; kept apart, its own new stalls would be swallowed by
    # a page taken over, never sent).
    taken: dict[str, _Episode] = field(default_factory=dict)

    def __call__(self, now_s: float) -> list[Decision]:
        """The alerts of this check: opened for a topic whose partitions newly stalled, resolved
        for a topic none of whose listed partitions stands still any more (`stall_s` 0: never)."""
        if self.stall_s <= 0:
            return []
        engines = self.engines()
        for p in [p for p in self.seen if p not in engines]:
            del self.seen[p]  # moved to another worker: it speaks for it now
            for ep in self._episodes():
                ep.stood.discard(p)
        if not engines:  # just after a rebalance: nothing known yet
            return self._ends(engines)
        stalled: dict[str, list[int]] = {topic: [] for topic in self.topics}
        for p, eng in engines.items():
            w, n = eng.watermark_ms, eng.stats["records"]
            at = self.seen.get(p)
            fed = eng.max_ms[0] is not None or eng.max_ms[1] is not None
            if at is None:
                at = self.seen[p] = _Partition(eng.incarnation, w, n, fed=fed)
                if eng.stall_paged is None:
                    continue
                # Paged by a worker before this one: the episode goes on here; a watermark past
                # the one that stood then is its recovery (below), also if it moved while no
                # worker ran. If it still stands `stall_s` later it is paged as any other.
                streams, at.watermark_ms = eng.stall_paged
                for topic in _paged_topics(self.topics, streams):
                    taken = self.open.get(topic) or self.taken.setdefault(topic, _Episode(set(), set()))
                    taken.partitions.add(p)
                    taken.stood.add(p)
                    taken.recovered.discard(p)
            if at.incarnation == eng.incarnation:
                new = n - at.records_seen
            else:  # restored: its count starts from 0
                new, at.incarnation = n, eng.incarnation
            at.records_seen = n
            if fed and not at.fed:
                # The highest watermark seen was a floor the idle rule set while the partition had
                # no record, and its first records dropped it (a backlog of older days counts at
                # its own times): event time is the records' from here, lower but moving.
                at.watermark_ms, at.taking_since_s, at.taken, at.fed = w, None, 0, True
                continue
            if w > at.watermark_ms:
                at.watermark_ms, at.taking_since_s, at.taken = w, None, 0
                for ep in self._episodes():
                    if p in ep.stood:
                        ep.stood.discard(p)
                        ep.recovered.add(p)
                if eng.stall_paged is not None:
                    eng.stall_paged = None
                    eng.meta_dirty = True
                continue
            # (A watermark lower than the highest seen, after a restore from older state, is not a
            # move when it comes back.)
            if new > 0:
                if at.taking_since_s is None:
                    at.taking_since_s = now_s
                at.taken += new
            if at.taking_since_s is not None and now_s - at.taking_since_s >= self.stall_s:
                stalled[self.topics[_holding(eng)]].append(p)
        out: list[Decision] = []
        for s, topic in enumerate(self.topics):
            now_stalled = [p for p in stalled[topic] if not any(p in e.stood for e in self.open.values())]
            for p in now_stalled:
                # (Added to a page taken over under the other topic, if any: both are kept, or a
                # second restart would forget the first, never resolved then.)
                paged = engines[p].stall_paged
                engines[p].stall_paged = ((paged[0] if paged else 0) | 1 << s, self.seen[p].watermark_ms)
                engines[p].meta_dirty = True
            episode = self.open.get(topic)
            if now_stalled and episode is None:
                episode = self.open[topic] = _Episode(set(now_stalled), set(now_stalled))
                if (kept := self.taken.pop(topic, None)) is not None:  # one page for both
                    episode.partitions.update(kept.partitions)
                    episode.recovered.update(kept.recovered - episode.stood)
                    episode.stood.update(kept.stood)
                known = [m for p in now_stalled if (m := engines[p].max_ms[s]) is not None]
                since = min(t for p in now_stalled if (t := self.seen[p].taking_since_s) is not None)
                out.append(
                    event_time_stalled_alert(
                        topic,
                        sorted(episode.stood),
                        "opened",
                        max(known) if known else None,
                        _at_ms(engines),
                        now_s - since,
                        sum(self.seen[p].taken for p in now_stalled),
                    )
                )
            elif now_stalled and episode is not None:
                episode.partitions.update(now_stalled)  # more partitions of the same problem: no new page
                episode.stood.update(now_stalled)
                episode.recovered.difference_update(now_stalled)
        return out + self._ends(engines)

    def _ends(self, engines: dict[int, PartitionEngine]) -> list[Decision]:
        # Episodes none of whose partitions stands still here any more (each seen moving, or
        # moved to another worker): resolved.
        out: list[Decision] = []
        for (s, topic), episodes in itertools.product(enumerate(self.topics), (self.open, self.taken)):
            episode = episodes.get(topic)
            if episode is None or episode.stood:
                continue
            del episodes[topic]
            known = [m for p in episode.recovered if p in engines and (m := engines[p].max_ms[s]) is not None]
            moved = sorted(episode.partitions - episode.recovered)
            out.append(
                event_time_stalled_alert(
                    topic,
                    sorted(episode.partitions),
                    "resolved",
                    max(known) if known else None,
                    _at_ms(engines),
                    0.0,
                    0,
                    moved_away=moved,
                )
            )
        return out

    def _episodes(self) -> list[_Episode]:
        return [*self.open.values(), *self.taken.values()]


def _paged_topics(topics: tuple[str, str], streams: int) -> list[str]:
    """The topics of `PartitionEngine.stall_paged`'s streams (a bit each)."""
    return [topic for s, topic in enumerate(topics) if streams & 1 << s]


def _at_ms(engines: dict[int, PartitionEngine]) -> int | None:
    w = max((eng.watermark_ms for eng in engines.values()), default=NEG_INF)
    return w if w > NEG_INF else None


def _holding(eng: PartitionEngine) -> int:
    """The stream that holds the watermark back: the flowing one when the idle rule declared
    the other silent (the watermark follows it then), else the one whose newest event time is
    the earlier (or that has none), payments on a tie."""
    silent_p, silent_l = eng.silent
    if silent_l and not silent_p:
        return 0
    if silent_p and not silent_l:
        return 1
    mp, ml = eng.max_ms
    if mp is None:
        return 0
    if ml is None:
        return 1
    return 0 if mp <= ml else 1
