"""Prometheus metrics of the live worker (`/metrics`), in Prometheus naming conventions:
`qris_` prefix, units in names, `_total` for counters. docs/metrics.md lists them.

Counters come from `WorkerWatch` (the engines' observer and the outputs sent); per-partition
gauges (watermark delay, records waiting, state size, consumer lag, silent feeds) are read from
the engines when scraped, so nothing is kept twice; the process's own (`process_*`: resident
memory, CPU time, open files) from prometheus_client's `ProcessCollector`. One registry per app,
not the global one.
No Faust imports: the consumer is passed in as a callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.partition import PartitionEngine
from .recovery import self_restarts
from .watch import WorkerWatch, open_holds

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The consumer's high-water mark of (topic, partition), or None when not known.
Highwater = Callable[[str, int], int | None]
# The shell's counts (`ReconcileShell.counts`).
ShellCounts = Callable[[], Mapping[str, int]]


class _WorkerCollector(Collector):
    def __init__(
        self,
        watch: WorkerWatch,
        engines: Callable[[], dict[int, PartitionEngine]],
        highwater: Highwater | None,
        clock: Callable[[], float],
        counts: ShellCounts | None = None,
    ) -> None:
        self.watch = watch
        self.engines = engines
        self.highwater = highwater
        self.clock = clock
        self.counts = counts

    def collect(self) -> Iterator[Any]:
        w = self.watch
        c = CounterMetricFamily(
            "qris_input_records",
            "Input records by topic and outcome (accepted, duplicate, dead_lettered)",
            labels=["topic", "outcome"],
        )
        for (topic, outcome), n in sorted(w.records_in.items()):
            c.add_metric([topic, outcome], n)
        yield c
        c = CounterMetricFamily(
            "qris_refund_decisions", "Refund records sent, by type and reason", labels=["type", "reason"]
        )
        for (typ, reason), n in sorted(w.refund_decisions.items()):
            c.add_metric([typ, reason], n)
        yield c
        c = CounterMetricFamily(
            "qris_refund_rupiah", "Rupiah in refund records sent: requested, held, cancelled, released", labels=["kind"]
        )
        for kind in ("requested", "held", "cancelled", "released"):
            c.add_metric([kind], w.refund_rupiah.get(kind, 0))
        yield c
        c = CounterMetricFamily("qris_alerts", "Alerts sent, by kind and severity", labels=["kind", "severity"])
        for (kind, sev), n in sorted(w.alerts.items()):
            c.add_metric([kind, sev], n)
        yield c
        c = CounterMetricFamily("qris_dead_letters", "Input records dead-lettered, by source topic", labels=["topic"])
        for topic, n in sorted(w.dead_letters.items()):
            c.add_metric([topic], n)
        yield c
        c = CounterMetricFamily("qris_rebalances", "Partition assignments and revocations seen by this worker")
        c.add_metric([], w.rebalances)
        yield c
        for name, text, value in (
            (
                "qris_gc_rebalance_collections",
                "Full garbage collections after a rebalance, which collect the reference cycles that died "
                "after they were frozen",
                w.gc_rebalance_collections,
            ),
            (
                "qris_gc_rebalance_unreachable_objects",
                "Unreachable objects those collections found",
                w.gc_rebalance_unreachable_objects,
            ),
            (
                "qris_gc_rebalance_seconds",
                "Seconds those collections held the process (every thread waits for one)",
                w.gc_rebalance_seconds,
            ),
        ):
            c = CounterMetricFamily(name, text)
            c.add_metric([], value)
            yield c
        c = CounterMetricFamily(
            "qris_worker_self_restarts",
            "Times this worker replaced its own process (execv) since it was started, by the watchdog that did it",
            labels=["reason"],
        )
        for reason, n in self_restarts().items():
            c.add_metric([reason], n)
        yield c
        counts = self.counts() if self.counts is not None else {}
        for name, text in _COUNT_HELP:  # plain counters of the shell's and the store's counts
            c = CounterMetricFamily(f"qris_{name}", text)
            c.add_metric([], counts.get(name, 0))
            yield c
        g = GaugeMetricFamily(
            "qris_open_incidents",
            "FAILURE_BURST incidents open (as sent by this worker), by scope type",
            labels=["scope_type"],
        )
        by_type: dict[str, int] = {t: 0 for t in ("all", "switch", "acquirer", "issuer", "merchant")}
        for inc in w.incidents.values():
            by_type[inc["scope"]["type"]] = by_type.get(inc["scope"]["type"], 0) + 1
        for t, n in by_type.items():
            g.add_metric([t], n)
        yield g
        g = GaugeMetricFamily(
            "qris_refunds_held", "Refund holds open now in this worker's partitions (refund.held, not yet ended)"
        )
        g.add_metric([], len(open_holds(dict(self.engines()))))
        yield g
        yield from self._partitions()

    def _partitions(self) -> Iterator[Any]:
        engines = dict(self.engines())
        now_s = self.clock()
        delay = GaugeMetricFamily(
            "qris_watermark_delay_seconds",
            "Wall-clock time minus the partition's watermark (event time); absent until both streams have a record",
            labels=["partition"],
        )
        waiting = GaugeMetricFamily("qris_records_waiting", "Records waiting for the watermark", labels=["partition"])
        refs = GaugeMetricFamily("qris_state_references", "References kept in state", labels=["partition"])
        silent = GaugeMetricFamily(
            "qris_feed_silent", "1 while an input topic's partition is declared silent", labels=["topic", "partition"]
        )
        lag = GaugeMetricFamily(
            "qris_consumer_lag_records",
            "End offset (Faust's fetched high-water mark, or the broker's latest answer when larger) "
            "minus the next offset to take",
            labels=["topic", "partition"],
        )
        # Counts kept in each partition's state (a record counted once, whatever restarts and
        # redeliveries; they move with the partition): the rules' `increase` over them says when
        # a producer's clock went wrong and, by resolving, when it was fixed, which the alerts at
        # the 1st, 10th, 100th, ... such record cannot. Read as the engines hold them, ahead of
        # the last commit by the batch in flight (a kill shows them back at it: a reset).
        skewed = CounterMetricFamily(
            "qris_clock_skewed_records",
            "Input records dated more than the clock guard ahead of their Kafka timestamp (counted at it)",
            labels=["topic", "partition"],
        )
        mismatched = CounterMetricFamily(
            "qris_clock_mismatches",
            "Payments whose first debit is dated more than the clock guard before their request",
            labels=["partition"],
        )
        topics = self.watch.topics
        for p, eng in sorted(engines.items()):
            lp = str(p)
            w_ms = eng.watermark_ms
            if w_ms > -(2**61):
                delay.add_metric([lp], now_s - w_ms / 1000)
            waiting.add_metric([lp], sum(len(v) for v in eng.pending.values()))
            refs.add_metric([lp], len(eng.refs))
            mismatched.add_metric([lp], eng.mismatched)
            for s, topic in enumerate(topics):
                silent.add_metric([topic, lp], 1.0 if eng.silent[s] else 0.0)
                skewed.add_metric([topic, lp], eng.skewed[s])
                hw = self.highwater(topic, p) if self.highwater is not None else None
                if hw is not None and hw >= 0:
                    lag.add_metric([topic, lp], max(0, hw - (eng.last_offset[s] + 1)))
        yield from (delay, waiting, refs, silent, lag, skewed, mismatched)


class WorkerMetrics:
    """The registry behind `/metrics`."""

    def __init__(
        self,
        watch: WorkerWatch,
        engines: Callable[[], dict[int, PartitionEngine]],
        highwater: Highwater | None = None,
        clock: Callable[[], float] = time.time,
        counts: ShellCounts | None = None,
    ) -> None:
        # `_created` series: noise for a single worker's histogram.
        disable_created_metrics()  # type: ignore[no-untyped-call,unused-ignore]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WorkerCollector(watch, engines, highwater, clock, counts))
        # The process's resident memory, CPU time and open files (`process_*`, read from /proc
        # at each scrape; none where there is no /proc): the worker's memory is watched here.
        ProcessCollector(registry=self.registry)
        self.batch_seconds = Histogram(
            "qris_batch_duration_seconds",
            "Time to decide, send and persist one input batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Plain counters read from the worker's counts (`WorkerMetrics(counts=...)`): name, help.
_COUNT_HELP: tuple[tuple[str, str], ...] = (
    (
        "idle_checks_unanswered",
        "Idle-rule checks whose question to the broker (end offsets of idle input streams, or whether the few "
        "offsets before one hold records or transaction markers only) got no answer: no stream asked about "
        "counted as silent, no watermark moved by the wall clock for it",
    ),
    (
        "internal_errors",
        "Input records the core failed on (a bug): each dead-lettered with its original bytes, logged at ERROR",
    ),
    (
        "detector_internal_errors",
        "Signals reports the burst detector failed on (a bug): each skipped, logged at ERROR; the incidents it "
        "would have opened, updated or resolved are missing, so refund holds can last to their maximum",
    ),
    (
        "detector_signals_lost",
        "Burst signals reports gone from the broker (deleted, or the topic recreated) when the detector was "
        "rebuilt, with no snapshot covering them (an INPUT_LOST alert on the signals topic): the detector "
        "learns its normal again and does not know the incidents open before",
    ),
    (
        "idle_quiet_decisions",
        "Decisions made after both input streams of a partition went quiet and its event time followed the wall "
        "clock (the idle rule); a replay of the same records makes them only with --drain",
    ),
    (
        "input_offsets_lost",
        "Input offsets deleted by retention before this worker read them (an INPUT_LOST alert per range): "
        "payments among them are not decided",
    ),
    (
        "restored_with_other_settings",
        "Partitions whose saved state this worker restored with another timeout, lateness, retention, clock guard "
        "or hold limits than the run that saved it: their open references keep the old run's deadlines and holds",
    ),
    (
        "idle_streams_behind",
        "Times an input stream idle for the idle timeout still had records on the broker not taken by this worker "
        "(late, not silent: a backlog, or fetches the broker does not serve)",
    ),
    (
        "state_stale_rebuilds",
        "Partitions whose local state was rebuilt from the changelog's start instead of read from its tail, "
        "which could lack deletions compaction removed: the state was last whole half the changelog's "
        "delete.retention.ms ago or more, at an unknown time, or with that setting unknown, or its tail took "
        "too long to read",
    ),
    (
        "state_foreign_writes",
        "Partitions whose changelog got messages this worker did not apply after it restored them (another "
        "writer: a zombie still writing after its partition moved, or this worker the zombie; or a batch of "
        "its own that landed but was not applied); the local state keeps its offset until the partition's "
        "next restore, unless they are all an older generation's and are written over (older_owner_rewrites)",
    ),
    (
        "state_older_owner_rewrites",
        "Times this worker wrote over a partition's changelog messages that an owner of an older consumer-group "
        "generation wrote after this worker restored it (a worker the group dropped, still writing): the "
        "changelog's last values are the current owner's again",
    ),
    (
        "state_superseded_batches",
        "Batches of a partition this worker did not write to the changelog: an owner of a later consumer-group "
        "generation writes it (this worker is the one the group dropped), until the partition's next restore",
    ),
    (
        "state_pieced_entries",
        "Times a state entry grew past 256 KiB and was written to the changelog in pieces (a reference hammered "
        "with thousands of records while its partition's watermark stands: a faulty or hostile producer)",
    ),
)
