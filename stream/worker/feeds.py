"""Silent feeds per topic (live only): one `FEED_SILENT` for an input topic when the worker's
partitions of it go silent, listing them, and one `resolved` when every one delivers again.

The core declares silence per partition (`PartitionEngine.declare_silent`) and builds an alert
for each; a dead payment feed would page once per partition. The shell hands those alerts here
(`ReconcileShell.on_idle`): they are replaced by the topic's alert. Each worker speaks for the
partitions it owns; alerts of several workers about one topic share the dedup key
`FEED_SILENT:<topic>`, so Alertmanager and PagerDuty show one problem.

A partition's silence is kept with its state (`PartitionEngine.silent`), and a silence is paged
when it is declared. A worker that restarts during one, or is given a silent partition, finds the
partition silent without declaring it: that page is open already (the previous incarnation's, or
the previous owner's), so it takes the episode over without a new page and resolves it when the
partitions deliver again. Paged again, it would say the other topic flows when the silence goes
on in a quiet spell (both feeds quiet: the end of the day's traffic), a critical page with a new
`alert_id` at every restart. When it declares partitions of the topic silent itself, it pages,
listing those taken over too (one episode, one `resolved`). No Faust imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.alerts import feed_silent_topic_alert
from ..core.decisions import Decision
from ..core.partition import NEG_INF, PartitionEngine

log = logging.getLogger("qris_guard.worker")


@dataclass
class _Silence:
    partitions: set[int]
    since_ms: int | None
    # False: taken over from the partitions' saved state, paged before this worker had them.
    paged: bool = True
    # The episode's partitions silent when this worker last saw them (at a check, or as their
    # engine left, `left`): one that moved away delivering again is not silent at its new owner,
    # which then has no page to take over and resolve.
    silent: set[int] = field(default_factory=set)


@dataclass
class TopicSilence:
    topics: tuple[str, str]
    engines: Callable[[], dict[int, PartitionEngine]]
    open: dict[str, _Silence] = field(default_factory=dict)

    def restored(self, eng: PartitionEngine) -> None:
        """An engine restored here (`ReconcileShell.on_engine`: this worker restarted, or a
        rebalance gave it the partition): a silence its state keeps was paged before, and is taken
        over now, not at the next idle check: a record of the feed taken before that check would
        end the silence unseen, and the page taken over would never be resolved."""
        for s, topic in enumerate(self.topics):
            if eng.silent[s]:
                self._take_over(topic, {eng.partition}, eng.max_ms[s])

    def left(self, eng: PartitionEngine) -> None:
        """An engine dropped here (`ReconcileShell.on_forget`: its partition moved, or its state
        is read again): whether it is silent as it goes, which is what its next owner restores."""
        for s, topic in enumerate(self.topics):
            episode = self.open.get(topic)
            if episode is not None and eng.partition in episode.partitions:
                if eng.silent[s]:
                    episode.silent.add(eng.partition)
                else:
                    episode.silent.discard(eng.partition)

    def _take_over(self, topic: str, partitions: set[int], since_ms: int | None) -> None:
        episode = self.open.get(topic)
        if episode is None:
            self.open[topic] = _Silence(set(partitions), since_ms, paged=False, silent=set(partitions))
        elif partitions <= episode.partitions:
            episode.silent |= partitions
            return
        else:
            episode.silent |= partitions
            episode.partitions |= partitions  # (one episode: one `resolved` when all deliver)
            if not episode.paged and since_ms is not None:
                episode.since_ms = max(since_ms, episode.since_ms or since_ms)
        log.info(
            "FEED_SILENT of %s partitions %s taken over from their saved state (paged before this worker had "
            "them): no new page; resolved when they deliver again",
            topic,
            ", ".join(map(str, sorted(partitions))),
        )

    def __call__(self, decisions: list[Decision]) -> list[Decision]:
        """The idle check's decisions with per-partition FEED_SILENT alerts replaced by the
        topics' opened and resolved alerts."""
        ours = [d for d in decisions if d.role == "alerts" and d.value.get("kind") == "FEED_SILENT"]
        declared = {(d.value["topic"], d.value["partition"]) for d in ours}  # this check's, by this worker
        out = [d for d in decisions if not (d.role == "alerts" and d.value.get("kind") == "FEED_SILENT")]
        engines = self.engines()
        if not engines:  # just after a rebalance: nothing known yet, nothing recovered
            return out
        for s, topic in enumerate(self.topics):
            silent = {p for p, eng in engines.items() if eng.silent[s]}
            fresh = {p for p in silent if (topic, p) in declared}
            at_ms = max((eng.watermark_ms for eng in engines.values()), default=NEG_INF)
            episode = self.open.get(topic)
            if episode is not None:  # (partitions gone from here keep what was last seen of them)
                episode.silent = (episode.silent - set(engines)) | silent
            other = self.topics[1 - s]
            if silent and episode is None and not fresh:  # silent as restored (no `restored` call seen)
                self._take_over(topic, silent, _newest(engines, silent, s))
            elif silent and (episode is None or (fresh and not episode.paged)):
                since = _newest(engines, silent, s)
                if episode is None:
                    self.open[topic] = _Silence(set(silent), since, silent=set(silent))
                else:  # declared here beside partitions taken over: one episode, paged now
                    episode.partitions |= silent
                    episode.since_ms, episode.paged = since, True
                flowing = _newest(engines, silent, 1 - s)
                out.append(feed_silent_topic_alert(topic, sorted(silent), "opened", since, at_ms, other, flowing))
            elif silent and episode is not None:
                episode.partitions |= silent  # more partitions of the same outage: no new page
            elif not silent and episode is not None:
                del self.open[topic]
                # A partition a rebalance moved to another worker while silent is still silent
                # there (its state keeps the flag), and its new owner took the page over: the page
                # is left to that owner's `resolved`, sent when the partition delivers again.
                # Resolved here, under the shared dedup key, it would close the page while the
                # moved partition is still silent, and its new owner would not page it again. One
                # that delivered again before it moved is not silent there: its new owner has no
                # page to take over, so it does not hold this `resolved` back.
                moved = sorted(episode.silent - set(engines))
                if moved:
                    log.info(
                        "FEED_SILENT of %s: partitions %s deliver again; partitions %s moved to another worker, "
                        "whose resolved ends the page",
                        topic,
                        ", ".join(map(str, sorted(episode.partitions & set(engines)))),
                        ", ".join(map(str, moved)),
                    )
                    continue
                out.append(
                    feed_silent_topic_alert(
                        topic,
                        sorted(episode.partitions),
                        "resolved",
                        episode.since_ms,
                        at_ms,
                        other,
                        _newest(engines, episode.partitions, 1 - s),
                    )
                )
        return out


def _newest(engines: dict[int, PartitionEngine], partitions: set[int], s: int) -> int | None:
    """The newest event time of stream `s` of those of `partitions` held here (None: none has a
    record)."""
    known = [m for p in partitions if p in engines and (m := engines[p].max_ms[s]) is not None]
    return max(known) if known else None
