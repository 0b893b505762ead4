"""Offline replay: the same core as the live worker, driven from a replay file or from Kafka.

Records are routed by topic to their partition's engine; each engine decides in event time,
so the output equals what the live worker decided for the same records (except where the
live worker used the documented wall-clock idle rule). `--drain` moves every watermark to
+inf at the end of the input, firing all pending deadlines.

Failure bursts span partitions: each engine's closed minutes (`signals`) are kept and given to
one `BurstDetector` at the end, with the number of partitions seen, so the incidents do not
depend on how the input interleaves partitions. Their lines carry partition -1 (all partitions).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.burst import BurstDetector, BurstParams
from ..core.decisions import Decision
from ..core.partition import Params, PartitionEngine
from ..core.records import Stream
from .replayfile import KafkaRecord


@dataclass
class Replay:
    params: Params
    burst: BurstParams = field(default_factory=BurstParams)
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0

    def engine(self, partition: int) -> PartitionEngine:
        eng = self.engines.get(partition)
        if eng is None:
            eng = self.engines[partition] = PartitionEngine(partition, self.params, persistent=False)
        return eng

    def feed(self, rec: KafkaRecord) -> list[Decision]:
        if rec.topic == self.params.payment_topic:
            stream = Stream.P
        elif rec.topic == self.params.ledger_topic:
            stream = Stream.L
        else:
            self.ignored += 1
            return []
        got = self.engine(rec.partition).on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms)
        return self._keep_signals(got) if got else got

    def _keep_signals(self, decisions: list[Decision]) -> list[Decision]:
        if not any(d.role == "signals" for d in decisions):
            return decisions
        self.signals.extend(d.value for d in decisions if d.role == "signals")
        return [d for d in decisions if d.role != "signals"]

    def drain(self) -> Iterator[tuple[int, Decision]]:
        for p in sorted(self.engines):
            for d in self._keep_signals(self.engines[p].drain()):
                yield p, d

    def bursts(self, partitions: Iterable[int] = ()) -> list[Decision]:
        """The failure-burst alerts of everything fed so far, from the kept signals of
        `partitions` (default: the partitions seen)."""
        return detect_bursts(self.signals, set(self.engines) | set(partitions), self.burst)


def detect_bursts(signals: Iterable[dict[str, Any]], partitions: Iterable[int], params: BurstParams) -> list[Decision]:
    """Run one `BurstDetector` over the partitions' signals (each partition's in its order)."""
    partitions = set(partitions)
    if not partitions:
        return []
    detector = BurstDetector(partitions, params)
    out: list[Decision] = []
    for value in signals:
        out.extend(detector.on_signals(value))
    return out


def replay(
    records: Iterable[KafkaRecord], params: Params, *, drain: bool = False, burst: BurstParams | None = None
) -> Iterator[tuple[int, Decision]]:
    """Decisions for `records` as (input partition, decision), in the order they are made; the
    failure-burst alerts (partition -1) come last."""
    r = Replay(params, burst or BurstParams())
    for rec in records:
        for d in r.feed(rec):
            yield rec.partition, d
    if drain:
        yield from r.drain()
    for d in r.bursts():
        yield -1, d
