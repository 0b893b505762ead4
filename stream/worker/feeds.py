"""Silent feeds per topic (live only): one `FEED_SILENT` for an input topic when the worker's
partitions of it go silent, listing them, and one `resolved` when every one delivers again.

The core declares silence per partition (`PartitionEngine.declare_silent`) and builds an alert
for each; a dead payment feed would page once per partition. The shell hands those alerts here
(`ReconcileShell.on_idle`): they are replaced by the topic's alert. Each worker speaks for the
partitions it owns; alerts of several workers about one topic share the dedup key
`FEED_SILENT:<topic>`, so Alertmanager and PagerDuty show one problem. No Faust imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.alerts import feed_silent_topic_alert
from ..core.decisions import Decision
from ..core.partition import NEG_INF, PartitionEngine


@dataclass
class _Silence:
    partitions: set[int]
    since_ms: int | None


@dataclass
class TopicSilence:
    topics: tuple[str, str]
    engines: Callable[[], dict[int, PartitionEngine]]
    open: dict[str, _Silence] = field(default_factory=dict)

    def __call__(self, decisions: list[Decision]) -> list[Decision]:
        """The idle check's decisions with per-partition FEED_SILENT alerts replaced by the
        topics' opened and resolved alerts."""
        out = [d for d in decisions if not (d.role == "alerts" and d.value.get("kind") == "FEED_SILENT")]
        engines = self.engines()
        if not engines:  # just after a rebalance: nothing known yet, nothing recovered
            return out
        for s, topic in enumerate(self.topics):
            silent = {p for p, eng in engines.items() if eng.silent[s]}
            at_ms = max((eng.watermark_ms for eng in engines.values()), default=NEG_INF)
            episode = self.open.get(topic)
            if silent and episode is None:
                known = [m for p in silent if (m := engines[p].max_ms[s]) is not None]
                since = max(known) if known else None
                self.open[topic] = _Silence(set(silent), since)
                other = self.topics[1 - s]
                out.append(feed_silent_topic_alert(topic, sorted(silent), "opened", since, at_ms, other))
            elif silent and episode is not None:
                episode.partitions |= silent  # more partitions of the same outage: no new page
            elif not silent and episode is not None:
                del self.open[topic]
                # A partition a rebalance moved to another worker is not said to deliver again:
                # it is still silent there (its state keeps the flag), and its new owner pages
                # for it. When all moved, nothing is sent: under the shared dedup key a
                # `resolved` (sent late, at this worker's next assignment) would close the new
                # owner's page while the feed is still silent; the new owner's own `resolved`
                # ends the episode.
                moved = sorted(episode.partitions - set(engines))
                if len(moved) == len(episode.partitions):
                    continue
                other = self.topics[1 - s]
                out.append(
                    feed_silent_topic_alert(
                        topic, sorted(episode.partitions), "resolved", episode.since_ms, at_ms, other, moved
                    )
                )
        return out
