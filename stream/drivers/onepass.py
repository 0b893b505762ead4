"""Replay with refund holds in one pass, as the live worker decides: the partitions' burst
signals go to the detector as they close, its incidents come back to every engine at once, and
each engine decides what the incidents have released (they are a third input of its watermark).

The decisions are those of the two-pass replay (`replay.with_incidents`: a first pass for the
incident timeline, a second that decides with the whole of it): given bit by bit, the incidents
decide exactly what the whole timeline decides. So is their order in the output: the second
pass decides a record or timer of key `e` at the first record of its partition after which the
watermark is past `e` (the timeline is known through +inf with `--drain`, else through the
detector's last minute, which every decision of this pass is below), or at the end with
`--drain`. Each decision is put back at that place: every engine's watermark after each record
is kept (two integers a record), and a decision, made a minute or two of event time later here,
waits in a small buffer until nothing can come before it.

The detector must know the input partitions before the first minute closes: `partitions`, a
superset of the partitions that have records on the two input topics (a file's are found by a
quick scan). A partition that never reports signals (no watermark: one stream only, without
`--drain`) leaves the detector waiting for it; the two-pass replay would not have waited, so
then this pass stops at the end and says so (`Fallback`): until then it has given out only
records' own dead letters and alerts, the first lines of the two-pass output, which the caller
then runs and continues. Imports no Kafka client; reads no clock.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Any

from ..core.burst import BurstDetector, BurstParams
from ..core.decisions import Decision
from ..core.holds import IncidentEvent, incident_event
from ..core.holdtally import is_hold_report
from ..core.partition import NEG_INF, POS_INF, Params
from ..core.records import Stream
from ..core.signals import MINUTE_MS
from .replay import Replay, WarmStart, start_detector, warn_input, with_holds
from .replayfile import KafkaRecord, ReplayFile


class Fallback(Exception):
    """The partitions given were not those that report signals: replay in two passes, leaving
    out the first `given` decisions (already given, the same in both)."""

    def __init__(self, given: int) -> None:
        super().__init__(f"one-pass replay gave up after {given} decisions")
        self.given = given


class OnePass:
    """The state of a one-pass replay with holds (see the module docstring)."""

    def __init__(self, params: Params, partitions: Iterable[int], detector: BurstDetector | None) -> None:
        # `detector` None: a job of a parallel replay; its closed minutes go to `outbox` for the
        # parent's detector, and the parent's incidents come back through `incidents`.
        assert params.holds
        self.params = params
        self.partitions = frozenset(partitions)
        self.r = Replay(params)
        self.detector = detector
        self.outbox: list[tuple[int, dict[str, Any]]] = []
        self.bursts: list[Decision] = []
        self.reports: list[dict[str, Any]] = []
        self.reporting: set[int] = set()
        # Per partition: the input index of each record after which its watermark rose, and the
        # watermark then (strictly increasing). Lists, not arrays: compiled, a list's append and
        # last item are direct, an array's a method call by name (a tenth of `take`); `ready`
        # keeps them short.
        self.mark_at: dict[int, list[int]] = {}
        self.mark_w: dict[int, list[int]] = {}
        # Decisions waiting for their place: (input index, 0 for a record's own / 1 for a
        # released decision, sequence, partition, decision).
        self.buffer: list[tuple[int, int, int, int, Decision]] = []
        self.seq = 0
        self.given = 0  # decisions handed out
        self.index = 0  # the input index of the record being fed
        self.draining = False
        self.drain_index: dict[int, int] = {}
        # What `take` reads for every record, looked up once.
        self._payment_topic, self._ledger_topic = params.payment_topic, params.ledger_topic
        self._lateness_ms = params.lateness_ms
        self._engines = self.r.engines

    # -- input ---------------------------------------------------------------------------

    def feed(self, i: int, rec: KafkaRecord) -> None:
        self.take(i, rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, rec.value)

    def take(
        self,
        i: int,
        topic: str,
        part: int,
        offset: int,
        timestamp_ms: int | None,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """`feed` for a record given as its fields (`replayfile.Fields`)."""
        if topic == self._payment_topic:
            stream, s = Stream.P, 0
        elif topic == self._ledger_topic:
            stream, s = Stream.L, 1
        else:
            self.r.ignored += 1
            return
        if part not in self.partitions:
            raise ValueError(f"one-pass replay: a record of partition {part}, not one of {sorted(self.partitions)}")
        self.index = i
        eng = self._engines.get(part) or self.r.engine(part)
        rejected, skewed = eng.rejected[s], eng.skewed[s]
        got = eng.on_record(stream, offset, key, value, timestamp_ms)
        # `eng.watermark_ms`, inline (a property: a frame a record).
        mp, ml = eng.max_ms
        w = NEG_INF if mp is None or ml is None else (mp if mp < ml else ml) - self._lateness_ms
        forced_ms = eng.forced_ms
        if w < forced_ms:
            w = forced_ms
        ws = self.mark_w.get(part)
        if ws is None:
            if w > NEG_INF:
                self.mark_at[part] = [i]
                self.mark_w[part] = [w]
        elif w > ws[-1]:
            self.mark_at[part].append(i)
            ws.append(w)
        if not got:
            return
        if eng.rejected[s] != rejected:
            own = len(got)  # its dead letter (and alert): nothing is released by a rejected record
        elif eng.skewed[s] != skewed and got[0].role == "alerts" and got[0].value.get("kind") == "CLOCK_SKEW":
            own = 1
        else:
            own = 0
        for d in got[:own]:
            self._put(i, 0, part, d)
        self._released(part, got[own:])

    def _released(self, part: int, decisions: list[Decision]) -> None:
        signals: list[tuple[int, dict[str, Any]]] = []
        for d in decisions:
            if d.role == "signals":
                signals.append((part, d.value))
            else:
                self._put(self._place(part, d), 1, part, d)
        if signals:
            self._signals(signals)

    def _place(self, part: int, d: Decision) -> int:
        # The record after which the second pass would have decided it: the first whose
        # watermark is past the decision's time (its record's or timer's key).
        e = d.at_ms
        assert e is not None
        ws = self.mark_w.get(part)
        j = bisect_right(ws, e) if ws is not None else 0
        if ws is not None and j < len(ws):
            return self.mark_at[part][j]
        assert self.draining, "a decision released past its partition's watermark"
        return self.drain_index[part]

    def _put(self, index: int, phase: int, part: int, d: Decision) -> None:
        heapq.heappush(self.buffer, (index, phase, self.seq, part, d))
        self.seq += 1

    def _signals(self, work: list[tuple[int, dict[str, Any]]]) -> None:
        # Closed minutes to the detector; its incidents to every engine; what they release.
        while work:
            part, value = work.pop(0)
            if is_hold_report(value):
                self.reports.append(value)
                continue
            self.reporting.add(part)
            if self.detector is None:
                self.outbox.append((part, value))
                continue
            before = self.detector.closed_through
            alerts = self.detector.on_signals(value)
            self.bursts.extend(alerts)
            closed = self.detector.closed_through
            if not alerts and closed == before:
                continue
            probe = self.params.probe_age_ms
            events = [e for d in alerts if (e := incident_event(d.value, probe)) is not None]
            known = NEG_INF if closed is None else (closed + 1) * MINUTE_MS + probe
            work.extend(self._tell(events, known))

    def incidents(self, events: list[IncidentEvent], known_through_ms: int) -> None:
        """The detector's new incident events and how far they are known (a parallel job)."""
        self._signals(list(self._tell(events, known_through_ms)))

    def _tell(self, events: list[IncidentEvent], known_through_ms: int) -> Iterator[tuple[int, dict[str, Any]]]:
        r = self.r
        r.incidents.extend(events)
        r.incidents_known_through_ms = max(r.incidents_known_through_ms, known_through_ms)
        for part in sorted(r.engines):
            for d in r.engines[part].on_incidents(events, known_through_ms):
                if d.role == "signals":
                    yield part, d.value
                else:
                    self._put(self._place(part, d), 1, part, d)

    # -- output --------------------------------------------------------------------------

    def ready(self, final: bool = False) -> Iterator[tuple[int, Decision]]:
        """The decisions whose place is settled: nothing still to be decided comes before them."""
        if final:
            low = POS_INF
        else:
            low = self.index + 1
            for part, eng in self.r.engines.items():
                ws = self.mark_w.get(part)
                if ws is None:
                    continue
                # A later decision of `part` has a time at or after what it decided through:
                # the marks before it are never read again (kept, they would cost 80 bytes a record).
                j = bisect_right(ws, eng.decided_through_ms - 1)
                if j > 4096:
                    del ws[:j], self.mark_at[part][:j]
                    j = 0
                if j < len(ws):
                    low = min(low, self.mark_at[part][j])
        buf = self.buffer
        while buf and buf[0][0] < low:
            _i, _ph, _s, part, d = heapq.heappop(buf)
            self.given += 1
            yield part, d

    def end_input(self, drain: bool) -> None:
        """The end of the input; with `--drain`, the watermark to +inf (the decisions still
        wait for the last incidents: `complete`)."""
        r = self.r
        if drain:
            self.draining = True
            end = self.index + 1
            for n, part in enumerate(sorted(r.engines)):
                self.drain_index[part] = end + n
            for part in sorted(r.engines):
                self._released(part, [_as_first_pass(d) for d in r.engines[part].drain()])

    def complete(self, drain: bool) -> None:
        """The whole timeline is known (given to `incidents`): with `--drain`, decide the rest."""
        if drain:
            for part in sorted(self.r.engines):
                self._released(part, self.r.engines[part].drain())

    def finish(self, drain: bool, source: str) -> Iterator[tuple[int, Decision]]:
        """The end of the input: `--drain`, the last incidents, the rest of the decisions, then
        the burst alerts (partition -1). Raises `Fallback` if the detector waited in vain."""
        self.end_input(drain)
        if self.reporting != self.partitions:
            raise Fallback(self.given)
        if drain:
            self.incidents([], POS_INF)  # every minute is closed: the whole timeline is known
        self.complete(drain)
        yield from self.ready(final=True)
        warn_input(self.r, source)
        for d in with_holds(self.bursts, self.reports, self.partitions, self.params):
            yield -1, d


def _as_first_pass(d: Decision) -> Decision:
    # The minutes a drain closes, as the two-pass replay's first pass (holds off) reports them:
    # its drain takes the watermark and every timer to +inf in one step, so retention drops
    # every reference before those minutes close and they count no payment (README "Known
    # limits"). Here the references are still there (their decisions wait for the incidents);
    # reporting the minutes empty keeps the incidents, and so every decision, the same.
    if d.role != "signals" or is_hold_report(d.value):
        return d
    value = dict(d.value)
    value["minutes"] = [{"minute": m["minute"], "scopes": {}} for m in d.value["minutes"]]
    return Decision(d.role, d.key, value, d.at_ms)


def replay_one_pass(
    records: Iterable[KafkaRecord] | ReplayFile,
    params: Params,
    burst: BurstParams,
    partitions: Iterable[int],
    *,
    drain: bool,
    source: str,
    warm: WarmStart | None = None,
) -> Iterator[tuple[int, Decision]]:
    """Decisions for `records` with holds on, in the two-pass replay's order; `partitions`: a
    superset of the input's partitions (with `warm`, the snapshot's partitions, which the
    detector starts from). Raises `Fallback` (see the module docstring)."""
    partitions = frozenset(partitions)
    detector = start_detector(partitions, burst, warm) if partitions else None
    one = OnePass(params, partitions, detector)
    if isinstance(records, ReplayFile):
        # (`one.take`, not a bound method kept in a local: compiled, that is a native call; the
        # local would box every argument for a call through Python's protocol.)
        for i, (topic, part, offset, ts, key, value) in enumerate(records.fields()):
            one.take(i, topic, part, offset, ts, key, value)
            if i & 255 == 0:
                yield from one.ready()
    else:
        feed = one.feed
        for i, rec in enumerate(records):
            feed(i, rec)
            if i & 255 == 0:
                yield from one.ready()
    yield from one.finish(drain, source)
