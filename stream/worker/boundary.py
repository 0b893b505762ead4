"""The live worker's input boundary: every input topic partition is taken in offset order, each
offset once, with no silent gap, whatever order and holes Faust delivers in.

Faust's consumer drops records below its read offset and treats a jump in offsets as acked
(faust-streaming #606, #312), so after a restart a batch can miss a record that was never
processed. The shell knows from the restored state the next offset it expects per topic
partition; `plan_batch` compares a batch with it and says, per topic partition, which records
to take (sorted, each offset once), which were redeliveries of what the state already holds,
and which offsets are missing in front of them (to be fetched from the broker and taken first).
Pure: imports no Kafka client and does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Protocol

from ..drivers.replayfile import KafkaRecord

TopicPartition = tuple[str, int]


class InputRecord(Protocol):
    """What the boundary and the shell read of a delivered record: a `LiveRecord` from Faust or a
    record read from the broker for a gap (both `replayfile.KafkaRecord`), or one a test gives."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp_ms(self) -> int | None: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


# A record as Faust delivered it, made once per record in the worker's hot path (`tuple.__new__`):
# the same named tuple as a record read from the broker or a replay file.
LiveRecord = KafkaRecord


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets `start` .. `end - 1` of a topic partition, missing from what was delivered."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class GapNotFilled(RuntimeError):
    """Offsets missing from a batch could not be read from the broker (in time)."""


@dataclass
class PartitionPlan:
    """What to do with one topic partition's part of a batch."""

    records: list[InputRecord] = field(default_factory=list)  # new, in offset order, each once
    gaps: list[Gap] = field(default_factory=list)  # missing offsets before or between them
    redelivered: int = 0  # at or below what the state already covers, or repeated in the batch


_offset = attrgetter("offset")
# A record's (topic, partition), for grouping and sets without a Python step per record.
topic_partition = attrgetter("topic", "partition")


def plan_batch(
    next_offset: Mapping[TopicPartition, int], records: Iterable[InputRecord]
) -> dict[TopicPartition, PartitionPlan]:
    """Split a delivered batch per topic partition against the next offset each expects.

    >>> r = lambda o: LiveRecord("t", 0, o, None, None, b"")
    >>> p = plan_batch({("t", 0): 3}, [r(2), r(5), r(4), r(8), r(5)])[("t", 0)]
    >>> [x.offset for x in p.records], [(g.start, g.end) for g in p.gaps], p.redelivered
    ([4, 5, 8], [(3, 4), (6, 8)], 2)
    """
    # Once per record of every batch: grouped by runs (Faust delivers a fetched partition's
    # records one after the other) and checked by offsets list, without a Python step per record.
    by_tp: dict[TopicPartition, list[InputRecord]] = {}
    for tp, run in groupby(records, topic_partition):
        recs = by_tp.get(tp)
        if recs is None:
            by_tp[tp] = list(run)
        else:
            recs.extend(run)
    plans: dict[TopicPartition, PartitionPlan] = {}
    for tp, recs in by_tp.items():
        plan = plans[tp] = PartitionPlan()
        expected = next_offset.get(tp, 0)
        if list(map(_offset, recs)) == list(range(expected, expected + len(recs))):
            plan.records = recs  # the usual batch: the next offsets, in order, each once
            continue
        recs.sort(key=_offset)  # stable: of repeated offsets the first delivered wins
        for rec in recs:
            if rec.offset < expected:
                plan.redelivered += 1
                continue
            if rec.offset > expected:
                plan.gaps.append(Gap(tp[0], tp[1], expected, rec.offset))
            plan.records.append(rec)
            expected = rec.offset + 1
    return plans


def merge_filled(plan: PartitionPlan, fetched: Iterable[InputRecord]) -> tuple[list[InputRecord], int]:
    """The records to take for one topic partition: the delivered ones and those fetched for
    its gaps, in offset order. Fetched records outside the gaps are ignored. Also returns how
    many missing offsets the broker confirmed empty (transaction markers, compaction).

    >>> r = lambda o: LiveRecord("t", 0, o, None, None, b"")
    >>> p = plan_batch({("t", 0): 3}, [r(5), r(8)])[("t", 0)]
    >>> recs, empty = merge_filled(p, [r(3), r(6), r(9)])
    >>> [x.offset for x in recs], empty
    ([3, 5, 6, 8], 2)
    """
    missing: set[int] = set()
    for g in plan.gaps:
        missing.update(range(g.start, g.end))
    found = {rec.offset: rec for rec in fetched if rec.offset in missing}
    merged = sorted([*plan.records, *found.values()], key=lambda x: x.offset)
    return merged, len(missing) - len(found)
