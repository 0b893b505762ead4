"""Offline replay: the same core as the live worker, driven from a replay file or from Kafka.

Records are routed by topic to their partition's engine; each engine decides in event time,
so the output equals what the live worker decided for the same records (except where the
live worker used the documented wall-clock idle rule). `--drain` moves every watermark to
+inf at the end of the input, firing all pending deadlines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..core.decisions import Decision
from ..core.partition import Params, PartitionEngine
from ..core.records import Stream
from .replayfile import KafkaRecord


@dataclass
class Replay:
    params: Params
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
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
        return self.engine(rec.partition).on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms)

    def drain(self) -> Iterator[tuple[int, Decision]]:
        for p in sorted(self.engines):
            for d in self.engines[p].drain():
                yield p, d


def replay(records: Iterable[KafkaRecord], params: Params, *, drain: bool = False) -> Iterator[tuple[int, Decision]]:
    """Decisions for `records` as (input partition, decision), in the order they are made."""
    r = Replay(params)
    for rec in records:
        for d in r.feed(rec):
            yield rec.partition, d
    if drain:
        yield from r.drain()
