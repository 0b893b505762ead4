"""Offline replay: the same core as the live worker, driven from a replay file or from Kafka.

Records are routed by topic to their partition's engine; each engine decides in event time,
so the output equals what the live worker decided for the same records (except where the
live worker used the documented wall-clock idle rule). `--drain` moves every watermark to
+inf at the end of the input, firing all pending deadlines.

Failure bursts span partitions: each engine's closed minutes (`signals`) are kept and given to
one `BurstDetector` at the end, with the number of partitions seen, so the incidents do not
depend on how the input interleaves partitions. Their lines carry partition -1 (all partitions).
The detector starts cold, or from a warm-up's snapshot (`WarmStart`, `--detector-snapshot`) as
the live worker that restored that warm-up did, on every path below.

With refund holds on (`Params.max_hold_ms` > 0) the refund decisions depend on the incidents.
When the input partitions are known up front, a replay takes one pass, as live (`onepass`).
Otherwise, or when that pass gives up, it takes two passes over the input: the first (holds
off) only for the partitions' signals and the detector's incidents (over the partitions that
reported signals); the second decides with the whole incident timeline, known through the
detector's last closed minute (what a live worker knows after the same input; +inf with
`--drain`). Signals are a function of the records alone, so the first pass sees exactly the
incidents a live run sees. The second pass's engines report their hold decisions, and the
detector's `updated`/`resolved` alerts are given the holds they cover (`holdtally`) once every
partition decided past them, as the live detector does. The second pass does not parse again:
the first keeps each record's parse result (`validation.parse`, without the value bytes of a
valid record), up to `KEEP_PARSED_MAX_RECORDS`; a longer input is read and parsed again instead.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ..core import burstsnapshot
from ..core.burst import BurstDetector, BurstParams
from ..core.decisions import Decision
from ..core.holds import IncidentEvent, incident_event
from ..core.holdtally import tallied_alerts
from ..core.partition import NEG_INF, POS_INF, Params, PartitionEngine, occurred_max_ms
from ..core.records import LedgerEvent, PaymentEvent, Stream
from ..core.signals import MINUTE_MS
from ..core.validation import Rejection, parse_ledger, parse_payment
from .replayfile import KafkaRecord, ReplayFile, file_partitions

# A record of the first pass of a replay with holds, kept for the second: the record (its value
# dropped when it parsed) and its parse result; None for a record of another topic.
Parsed = PaymentEvent | LedgerEvent | Rejection
Kept = tuple[KafkaRecord, Parsed | None]
# About 0.8 KiB each (peak RSS 612 MiB against 365 MiB without, 300k mixed records): 2 million
# kept records cost about 1.6 GiB on top of the engines' state.
KEEP_PARSED_MAX_RECORDS = 2_000_000


@dataclass(frozen=True)
class WarmStart:
    """A snapshot of the burst detector (`burstsnapshot`, as `qris-guard warmup --out FILE`
    writes it) that a replay's detector starts from instead of cold: what the live worker
    restores from its snapshots topic after a `warmup`, so that a replay decides what it decided.
    Each detector is decoded afresh from the bytes, with the replay's parameters, as the live
    worker restores it (a one-pass replay that falls back to two passes starts a second one).
    The snapshot's partitions are the detector's: `partitions_mistake` compares them with the
    input's. A hold tally in the snapshot (`warmup` writes none) is not used: a replay tallies
    the holds of its own input."""

    raw: bytes
    partitions: frozenset[int]
    warmed_through: int | None  # the last minute of the warm-up's history, if it says

    @classmethod
    def of(cls, raw: bytes, params: BurstParams) -> WarmStart:
        """The warm start of snapshot bytes `raw`; `ValueError` if it is not one to restore."""
        det = burstsnapshot.decode(raw, params).detector
        return cls(raw, det.partitions, det.warmed_through)

    def detector(self, params: BurstParams) -> BurstDetector:
        return burstsnapshot.decode(self.raw, params).detector


def partitions_mistake(warm: WarmStart, partitions: Iterable[int]) -> str | None:
    """What is wrong with starting a replay of input `partitions` from `warm`, or None. The
    detector waits for every partition of its snapshot before it closes a minute, and takes no
    other partition's reports, so the two must be the same set (the live worker, too, restores
    only a snapshot of its input topics' partitions).

    >>> warm = WarmStart(b"", frozenset(range(4)), None)
    >>> partitions_mistake(warm, range(4)) is None
    True
    >>> partitions_mistake(warm, [0, 1])
    'a snapshot of input partitions 0, 1, 2, 3; the input is of partitions 0, 1'
    """
    given = set(partitions)
    if given == warm.partitions:
        return None
    return (
        f"a snapshot of input partitions {', '.join(map(str, sorted(warm.partitions)))}; the input is of "
        f"partitions {', '.join(map(str, sorted(given))) or '(none)'}"
    )


@dataclass
class Replay:
    params: Params
    burst: BurstParams = field(default_factory=BurstParams)
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    # Holds on: the incident timeline every engine is given, and how far it is known.
    incidents: list[IncidentEvent] = field(default_factory=list)
    incidents_known_through_ms: int = NEG_INF
    # Holds on: the partitions the detector waited for; its updated/resolved alerts wait for
    # their hold reports too (`holdtally`).
    detector_partitions: frozenset[int] = frozenset()
    # The snapshot the detector starts from (None: cold).
    warm: WarmStart | None = None

    # The latest time the engines take a record at (`partition.occurred_max_ms`), once.
    _occurred_max_ms: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._occurred_max_ms = occurred_max_ms(self.params)

    def engine(self, partition: int) -> PartitionEngine:
        eng = self.engines.get(partition)
        if eng is None:
            eng = self.engines[partition] = PartitionEngine(partition, self.params, persistent=False)
            if self.params.holds:
                eng.on_incidents(self.incidents, self.incidents_known_through_ms)
        return eng

    def feed(self, rec: KafkaRecord, parsed: Parsed | None = None) -> list[Decision]:
        """Decide one input record; `parsed`: its parse result if already known."""
        if rec.topic == self.params.payment_topic:
            stream = Stream.P
        elif rec.topic == self.params.ledger_topic:
            stream = Stream.L
        else:
            self.ignored += 1
            return []
        got = self.engine(rec.partition).on_record(
            stream, rec.offset, rec.key, rec.value, rec.timestamp_ms, parsed=parsed
        )
        return self._keep_signals(got) if got else got

    def take(
        self, topic: str, partition: int, offset: int, timestamp_ms: int | None, key: bytes | None, value: bytes | None
    ) -> list[Decision]:
        """`feed` for a record given as its fields (`replayfile.Fields`)."""
        if topic == self.params.payment_topic:
            stream = Stream.P
        elif topic == self.params.ledger_topic:
            stream = Stream.L
        else:
            self.ignored += 1
            return []
        eng = self.engines.get(partition) or self.engine(partition)
        got = eng.on_record(stream, offset, key, value, timestamp_ms)
        return self._keep_signals(got) if got else got

    def feed_keeping(self, rec: KafkaRecord, kept: list[Kept]) -> list[Decision]:
        """`feed`, and append the record with its parse result to `kept` (a first pass)."""
        topic = rec.topic
        if topic == self.params.payment_topic:
            parsed: Parsed | None = parse_payment(rec.key, rec.value)
        elif topic == self.params.ledger_topic:
            parsed = parse_ledger(rec.key, rec.value)
        else:
            parsed = None
        if parsed is None or isinstance(parsed, Rejection) or not 0 <= parsed.occurred_at_ms < self._occurred_max_ms:
            # A dead letter carries the original bytes: a parse rejection's, and a record the
            # engine may refuse for its time (`partition.out_of_range`; a time in [0, max) stays
            # in range whatever the clock guard does, which only moves it to a Kafka time < it).
            kept.append((rec, parsed))
        else:
            kept.append((KafkaRecord(topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, None), parsed))
        return self.feed(rec, parsed)

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
        return detect_bursts(self.signals, set(self.engines) | set(partitions), self.burst, self.warm)


def tune_collector() -> None:
    """For a replay process: collect the youngest generation every 100,000 allocations instead
    of Python's default 700. A replay allocates a few small objects per record and keeps most
    of them (state for R = 48 h, the burst signals); at the default the cyclic collector took a
    third of a replay's CPU, at this setting no more than with the collector off (141k records:
    10.9, 6.8 and 7.3 CPU seconds). The core makes almost no reference cycles: same memory."""
    gc.set_threshold(100_000, 50, 100)


@contextmanager
def collector_paused(pause: bool = True) -> Iterator[None]:
    """No cyclic collector inside the block (if `pause`), as it was after it. The state a replay
    builds is long-lived and the core makes no reference cycles (a full collection after
    replaying each of the three simulated days, 659k records, holds on and off, found nothing
    unreachable; peak RSS the same), so a collection only walks the young survivors: even at
    `tune_collector`'s threshold 13 collections, 0.63-0.71 CPU s of a 6.4-7.1 s replay of 300k
    mixed records (holds on, `--jobs 1`), against 5.7-5.8 s without (same run, alternating).
    Reference counting frees everything else as before."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class InputNotes:
    """What a replay says about its input besides the decisions: records at or below an earlier
    offset of their topic partition (`out_of_order`), the input partitions whose first
    record read is past offset 0 (`late_starts`: topic, partition, first offset), and the records
    of other topics, which are not read (`other_topics`). Jobs of a parallel replay add theirs
    up (`+`)."""

    out_of_order: int = 0
    late_starts: tuple[tuple[str, int, int], ...] = ()
    partitions: int = 0  # input partitions with a record (none: nothing on the input topics)
    topics: tuple[str, ...] = ()  # the input topics, as the settings name them
    other_topics: int = 0  # records of topics that are not the input topics

    def __add__(self, other: InputNotes) -> InputNotes:
        first: dict[tuple[str, int], int] = {}
        for topic, p, offset in self.late_starts + other.late_starts:
            first[(topic, p)] = min(offset, first.get((topic, p), offset))
        starts = tuple(sorted((t, p, o) for (t, p), o in first.items()))
        total = self.out_of_order + other.out_of_order
        return InputNotes(
            total,
            starts,
            self.partitions + other.partitions,
            self.topics or other.topics,
            self.other_topics + other.other_topics,
        )


def input_notes(r: Replay) -> InputNotes:
    """`InputNotes` of what the replay `r` took."""
    topics = (r.params.payment_topic, r.params.ledger_topic)  # (by stream: Stream.P, Stream.L)
    starts = tuple(
        (topics[s], p, eng.first_offset[s])
        for p, eng in sorted(r.engines.items())
        for s in (0, 1)
        if eng.first_offset[s] > 0
    )
    back = sum(eng.stats["out_of_order"] for eng in r.engines.values())
    return InputNotes(back, starts, len(r.engines), topics, r.ignored)


def warn_input(r: Replay, source: str) -> InputNotes:
    """Say on stderr what `say_input` says of the replay `r`'s input."""
    return say_input(input_notes(r), source)


def say_input(notes: InputNotes, source: str) -> InputNotes:
    """Say on stderr how many records came at or below an earlier offset of their topic
    partition (their effective times as read, as the contract's replay format says, and records of
    one time taken by their offsets as given, the contract's order; a file that `dump` wrote never
    has any), and which input partitions start past offset 0: their earlier
    records (a dump or a replay with `--from`, records deleted by the topic's retention) are not
    in this replay, so a reference open before them is not known and the burst detector starts
    without their history; its incidents, and the refund holds that follow them, can then differ
    from the live worker's; when no record was on the input topics at all (a file of other
    topics' names: `QRIS_PAYMENT_TOPIC` and `QRIS_LEDGER_TOPIC` name them); and how many records
    of other topics were not read beside them (a line whose topic is misspelt would otherwise be
    a payment or a debit dropped in silence). Nothing is said when there is nothing to say."""
    if not notes.partitions and notes.topics:
        print(
            f"replay: warning: {source}: no record on the input topics {' and '.join(notes.topics)}, so nothing "
            "was decided; if the input's topics have other names, set QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC "
            "to them",
            file=sys.stderr,
        )
    if notes.partitions and notes.other_topics:
        print(
            f"replay: warning: {source}: {notes.other_topics} record(s) of topics other than "
            f"{' and '.join(notes.topics)} were not read; if some are input under another name, set "
            "QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC to it",
            file=sys.stderr,
        )
    if notes.out_of_order:
        print(
            f"replay: warning: {source}: {notes.out_of_order} record(s) at or below an earlier offset of their "
            "topic partition; not skipped: their effective times are as read, and records of the same time are "
            "taken by their offsets as given (a Kafka read or a dump never has any)",
            file=sys.stderr,
        )
    if notes.late_starts:
        shown = ", ".join(f"{t}[{p}] at offset {o}" for t, p, o in notes.late_starts[:4])
        more = f" and {len(notes.late_starts) - 4} more" if len(notes.late_starts) > 4 else ""
        print(
            f"replay: warning: {source}: {len(notes.late_starts)} input partition(s) start past offset 0 "
            f"({shown}{more}): the records before them (a dump or replay with --from, or deleted by the topic's "
            "retention) are not in this replay, so references open before then are unknown and the burst "
            "detector starts without their history; its incidents and the refund holds can differ from the "
            "live worker's (replay from the topics' start and narrow the view with `report --since`)",
            file=sys.stderr,
        )
    return notes


def detect_bursts(
    signals: Iterable[dict[str, Any]], partitions: Iterable[int], params: BurstParams, warm: WarmStart | None = None
) -> list[Decision]:
    """Run one `BurstDetector` over the partitions' signals (each partition's in its order)."""
    return run_detector(signals, partitions, params, warm)[0]


def start_detector(partitions: Iterable[int], params: BurstParams, warm: WarmStart | None = None) -> BurstDetector:
    """The replay's detector: cold over `partitions`, or restored from `warm`, waiting for
    `detector_waits_for` of them."""
    if warm is None:
        return BurstDetector(partitions, params)
    detector = warm.detector(params)
    waits = detector_waits_for(partitions, warm)
    if waits != detector.partitions:
        detector.merge.wait_for(waits)
    return detector


def detector_waits_for(partitions: Iterable[int], warm: WarmStart | None) -> frozenset[int]:
    """The partitions a replay's detector waits for: `partitions` (with holds on, those that
    report, `reporting`), also when it starts from `warm`, whose snapshot then keeps them
    only. A partition of the input that never reports (one stream only, or only rejected
    records) would otherwise hold every refund decision back, as for a cold detector. From
    `warm` with none of its partitions given: the snapshot's.

    >>> warm = WarmStart(b"", frozenset(range(4)), None)
    >>> sorted(detector_waits_for({0, 1, 2}, warm)), sorted(detector_waits_for(set(), warm))
    ([0, 1, 2], [0, 1, 2, 3])
    """
    given = frozenset(partitions)
    if warm is None or (given and given <= warm.partitions):
        return given
    return warm.partitions


def run_detector(
    signals: Iterable[dict[str, Any]], partitions: Iterable[int], params: BurstParams, warm: WarmStart | None = None
) -> tuple[list[Decision], int | None]:
    """The detector's alerts over the partitions' signals, and the last minute it closed;
    `warm`: the snapshot it starts from (`start_detector`)."""
    partitions = set(partitions)
    if not partitions and warm is None:
        return [], None
    detector = start_detector(partitions, params, warm)
    out: list[Decision] = []
    for value in signals:
        out.extend(detector.on_signals(value))
    return out, detector.closed_through


def reporting(signals: Iterable[dict[str, Any]]) -> set[int]:
    """The partitions that reported burst signals. With holds on, the detector of a replay waits
    for these only: a partition of the input that never had a watermark (one stream only, or
    only rejected records) decides nothing and would otherwise hold every refund decision back."""
    return {int(v["partition"]) for v in signals}


def incident_timeline(
    bursts: Iterable[Decision], closed_through_minute: int | None, params: Params, *, drain: bool
) -> tuple[list[IncidentEvent], int]:
    """The incident events of the detector's alerts and the event time they are known through:
    a minute is decided at its end plus the probe age, so after the detector closed minute c
    every decision up to (c + 1) * 1 min + probe age is known. `drain`: all of them."""
    events = [e for d in bursts if (e := incident_event(d.value, params.probe_age_ms)) is not None]
    if drain:
        return events, POS_INF
    if closed_through_minute is None:
        return events, NEG_INF
    return events, (closed_through_minute + 1) * MINUTE_MS + params.probe_age_ms


def with_incidents(
    records: Iterable[KafkaRecord],
    params: Params,
    burst: BurstParams,
    *,
    drain: bool,
    kept: list[Kept] | None = None,
    warm: WarmStart | None = None,
) -> tuple[Replay, list[Decision]]:
    """Holds on: the first pass (holds off) over `records` for the detector's alerts, and the
    `Replay` for the second pass, which decides with their incident timeline (also `trace`).
    With `kept`, the records and their parse results are appended to it for the second pass, up
    to `KEEP_PARSED_MAX_RECORDS` (beyond, `kept` is emptied and the caller reads again). `warm`:
    the snapshot the detector starts from (None: cold)."""
    first = Replay(replace(params, max_hold_ms=0), burst)
    if kept is None:
        for rec in records:
            first.feed(rec)
    else:
        keeping = True
        for rec in records:
            if keeping:
                first.feed_keeping(rec, kept)
                if len(kept) >= KEEP_PARSED_MAX_RECORDS:
                    kept.clear()
                    keeping = False
            else:
                first.feed(rec)
    if drain:
        for _ in first.drain():
            pass
    bursts, closed_through = run_detector(first.signals, reporting(first.signals), burst, warm)
    events, known_through_ms = incident_timeline(bursts, closed_through, params, drain=drain)
    # The second pass needs no signals: the first pass's incidents are the detector's.
    second = replace(params, burst_signals=False)
    r = Replay(
        second,
        burst,
        incidents=events,
        incidents_known_through_ms=known_through_ms,
        detector_partitions=detector_waits_for(reporting(first.signals), warm),
    )
    return r, bursts


def with_holds(
    bursts: list[Decision], reports: Iterable[dict[str, Any]], partitions: Iterable[int], params: Params
) -> list[Decision]:
    """Holds on: the detector's alerts as the live detector sends them, its `updated` and
    `resolved` incident alerts with the holds they cover, from the second pass's hold reports
    (`holdtally`). Without `--drain` an alert that some partition did not decide past stays out."""
    return tallied_alerts(bursts, reports, partitions, params.probe_age_ms)


def _second_pass(
    r: Replay, records: Iterable[KafkaRecord], kept: list[Kept], drain: bool
) -> Iterator[tuple[int, Decision]]:
    if kept:
        # The second pass over the first's parse results (the list shrinks as it goes).
        kept.reverse()
        while kept:
            rec, parsed = kept.pop()
            for d in r.feed(rec, parsed):
                yield rec.partition, d
    elif isinstance(records, ReplayFile):
        take = r.take
        for topic, part, offset, ts, key, value in records.fields():
            got = take(topic, part, offset, ts, key, value)
            if got:
                for d in got:
                    yield part, d
    else:
        for rec in records:
            for d in r.feed(rec):
                yield rec.partition, d
    if drain:
        yield from r.drain()


def replay(
    records: Iterable[KafkaRecord],
    params: Params,
    *,
    drain: bool = False,
    burst: BurstParams | None = None,
    source: str = "input",
    partitions: Iterable[int] | None = None,
    one_pass: bool = True,
    warm: WarmStart | None = None,
) -> Iterator[tuple[int, Decision]]:
    """Decisions for `records` as (input partition, decision), in the order they are made; the
    failure-burst alerts (partition -1) come last. With holds on, `records` may be read twice (an
    iterator is kept in memory first; pass a re-iterable, e.g. a `ReplayFile`, to avoid that):
    one pass (`onepass`) if `partitions` includes every partition of the input (found here for
    records in memory, and by a scan of a `ReplayFile`), else, or if that pass gives up, two.
    `one_pass` False: always two (the tests compare them). `warm`: the snapshot the burst
    detector starts from (None: cold; the caller checks its partitions, `partitions_mistake`).
    No cyclic collector while it runs (`collector_paused`), unless `records` is an iterator
    (read from Kafka as it goes)."""
    with collector_paused(not isinstance(records, Iterator)):
        yield from _replay(records, params, drain, burst, source, partitions, one_pass, warm)


def _replay(
    records: Iterable[KafkaRecord],
    params: Params,
    drain: bool,
    burst: BurstParams | None,
    source: str,
    partitions: Iterable[int] | None,
    one_pass: bool,
    warm: WarmStart | None,
) -> Iterator[tuple[int, Decision]]:
    burst = burst or BurstParams()
    bursts: list[Decision] | None = None  # holds off: the detector runs after the one pass
    kept: list[Kept] = []
    skip = 0
    if params.holds:
        from .onepass import Fallback, replay_one_pass

        if isinstance(records, Iterator):
            records = list(records)
        if partitions is None and isinstance(records, ReplayFile):
            partitions = file_partitions(records.path, (params.payment_topic, params.ledger_topic))
        if partitions is None and isinstance(records, list):
            inputs = (params.payment_topic, params.ledger_topic)
            partitions = {rec.partition for rec in records if rec.topic in inputs}
        if partitions is not None and one_pass:
            try:
                yield from replay_one_pass(records, params, burst, partitions, drain=drain, source=source, warm=warm)
                return
            except Fallback as fb:
                skip = fb.given  # the first decisions of the two passes, given already
        r, bursts = with_incidents(records, params, burst, drain=drain, kept=kept, warm=warm)
    else:
        r = Replay(params, burst, warm=warm)
    decided = _second_pass(r, records, kept, drain)
    for _ in range(skip):
        next(decided)
    yield from decided
    warn_input(r, source)
    if bursts is not None:
        bursts = with_holds(bursts, r.signals, r.detector_partitions, params)
    for d in r.bursts() if bursts is None else bursts:
        yield -1, d
