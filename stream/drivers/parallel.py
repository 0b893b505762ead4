"""Partition-parallel offline replay of a replay file.

Partitions are independent by the contract (each has its own watermark and references), so
`jobs` processes decide them with the same core. With refund holds on, the parent reads the
file once (`replayfile.FileScan`: each line's partition as the replay reads it, and the input
partitions); each job then reads only the byte ranges of its own partitions' lines. Without,
each job reads the whole file and keeps its partitions' lines (`replayfile.WholeFile`): no
scan before the jobs start. Each job writes its own output; the parent concatenates them in job order. Decisions
are identical to a single-process replay; only the interleaving of lines from different
partitions differs. Each job hands back its partitions' burst signals and the parent runs the
one burst detector over all of them. With refund holds on, the jobs take one pass (`onepass`):
they send their closed minutes to the parent as they close, and the parent sends the
detector's incidents back to every job as they come (a job far ahead of the incidents waits
for them: `_lead_ms`). If a partition never reports, the parent
runs two passes instead: a first (signals only), then the detector's incident timeline to the
same job processes, which decide their second pass with it from the first pass's parse results
(see `replay`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import IO, Any

from ..core import codec
from ..core.burst import BurstParams
from ..core.decisions import Decision
from ..core.holds import IncidentEvent, incident_event
from ..core.partition import NEG_INF, POS_INF, Params
from ..core.signals import MINUTE_MS
from .onepass import OnePass
from .replay import (
    KEEP_PARSED_MAX_RECORDS,
    InputNotes,
    Kept,
    Replay,
    WarmStart,
    collector_paused,
    detector_waits_for,
    incident_timeline,
    input_notes,
    reporting,
    run_detector,
    say_input,
    start_detector,
    with_holds,
)
from .replayfile import FileScan, KafkaRecord, TimeRange, WholeFile, decision_line


def _records(scan: FileScan | WholeFile, index: int, times: tuple[int | None, int | None]) -> Iterator[KafkaRecord]:
    """The records of the file that belong to job `index` (and to `--from/--to`)."""
    new = tuple.__new__
    for fields in scan.job_lines(index, TimeRange(*times)):
        yield new(KafkaRecord, fields)


def _job(
    scan: FileScan | WholeFile,
    index: int,
    params: Params,
    drain: bool,
    topics: dict[str, str],
    out: str | None,
    times: tuple[int | None, int | None],
    incidents: tuple[list[IncidentEvent], int] = ([], NEG_INF),
    kept: list[Kept] | None = None,
) -> tuple[int, list[Any], list[int], InputNotes]:
    # `out` None: a first pass of a replay with holds, for the signals only; it appends its
    # records and their parse results to `kept` if given. A second pass given a non-empty
    # `kept` decides from it instead of reading the file again.
    r = Replay(params, incidents=incidents[0], incidents_known_through_ms=incidents[1])
    seq: dict[tuple[str, int], int] = {}
    n = 0

    def write(fh: IO[bytes], partition: int, role: str, d: Decision) -> None:
        topic = topics[role]
        k = (topic, partition)
        seq[k] = seq.get(k, -1) + 1
        fh.write(decision_line(topic, partition, seq[k], d))

    def fed() -> Iterator[tuple[int, list[Decision]]]:
        # (input partition, what its record decided)
        if out is not None and kept:
            kept.reverse()  # taken from the end, so memory is freed as the pass goes
            while kept:
                rec, parsed = kept.pop()
                yield rec.partition, r.feed(rec, parsed)
            return
        keeping = out is None and kept is not None
        if not keeping:
            # The common case in one loop: the job's lines as fields, no record objects.
            take = r.take
            for topic, part, offset, ts, key, value in scan.job_lines(index, TimeRange(*times)):
                got = take(topic, part, offset, ts, key, value)
                if got:
                    yield part, got
            return
        for rec in _records(scan, index, times):
            if keeping and kept is not None:
                yield rec.partition, r.feed_keeping(rec, kept)
                if len(kept) >= KEEP_PARSED_MAX_RECORDS:
                    kept.clear()  # too many to keep: the second pass reads the file again
                    keeping = False
            else:
                yield rec.partition, r.feed(rec)

    with open(out or "/dev/null", "wb") as sink:
        for part, got in fed():
            if out is None:
                continue
            for d in got:
                write(sink, part, d.role, d)
                n += 1
        if drain:
            for p, d in r.drain():
                if out is not None:
                    write(sink, p, d.role, d)
                    n += 1
    # The records at or below an earlier offset: the parent says how many, once for the file.
    back = input_notes(r) if out is not None else InputNotes()
    return n, r.signals, sorted(r.engines), back


# The file as the jobs read it, for the forked processes of a pool (a Pool pickles its tasks'
# arguments).
_SCAN: list[FileScan | WholeFile | None] = [None]


def _pool_job(
    index: int,
    params: Params,
    drain: bool,
    topics: dict[str, str],
    out: str,
    times: tuple[int | None, int | None],
) -> tuple[int, bytes, list[int], InputNotes]:
    scan = _SCAN[0]
    assert scan is not None, "a replay pool job without its file"
    n, signals, engines, back = _job(scan, index, params, drain, topics, out, times)
    return n, codec.dumps(signals), engines, back  # (see `_SIGNALS`)


def _two_pass_job(
    conn: Connection,
    scan: FileScan,
    index: int,
    params: Params,
    drain: bool,
    topics: dict[str, str],
    out: str,
    times: tuple[int | None, int | None],
) -> None:
    # Holds on, in one process: the first pass sends its signals to the parent, receives the
    # incident timeline and decides the second pass from the first's parse results.
    try:
        kept: list[Kept] = []
        first = replace(params, max_hold_ms=0)
        _n, signals, partitions, _back = _job(scan, index, first, drain, topics, None, times, kept=kept)
        conn.send(("signals", (codec.dumps(signals), partitions)))
        del signals
        timeline = conn.recv()
        second = replace(params, burst_signals=False)
        conn.send(("done", _job(scan, index, second, drain, topics, out, times, timeline, kept=kept)))
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that cannot be pickled
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def _answer(conn: Connection) -> Any:
    try:
        kind, payload = conn.recv()
    except EOFError:
        raise RuntimeError("a replay job ended without an answer") from None
    if kind == "error":
        raise payload
    return payload


@contextmanager
def _started(
    ctx: Any, target: Callable[..., None], jobs: int, args_of: Callable[[int], tuple[Any, ...]]
) -> Iterator[tuple[list[Connection], list[Any]]]:
    """`jobs` processes running `target(conn, *args_of(i))`, each with its end of a pipe: the
    parent's ends and the processes. A job still running when the block ends is terminated (one
    failed: the others would wait for ever for what the parent no longer sends)."""
    conns: list[Connection] = []
    procs: list[Any] = []
    try:
        for i in range(jobs):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(theirs, *args_of(i)))
            proc.start()
            theirs.close()
            conns.append(ours)
            procs.append(proc)
        yield conns, procs
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _two_passes(
    ctx: Any,
    scan: FileScan,
    params: Params,
    drain: bool,
    jobs: int,
    topics: dict[str, str],
    outs: list[str],
    times: tuple[int | None, int | None],
    burst: BurstParams,
    warm: WarmStart | None,
) -> tuple[list[tuple[int, list[Any], list[int], InputNotes]], list[Decision]]:
    def args_of(i: int) -> tuple[Any, ...]:
        return (scan, i, params, drain, topics, outs[i], times)

    with _started(ctx, _two_pass_job, jobs, args_of) as (conns, procs):
        signals = [value for conn in conns for value in codec.loads(_answer(conn)[0])]
        bursts, closed_through = run_detector(signals, reporting(signals), burst, warm)
        timeline = incident_timeline(bursts, closed_through, params, drain=drain)
        for conn in conns:
            conn.send(timeline)
        results: list[tuple[int, list[Any], list[int], InputNotes]] = [_answer(conn) for conn in conns]
        for proc in procs:
            proc.join()
        # The second pass's signals are the partitions' hold reports (`holdtally`).
        reports = [value for _n, values, _p, _b in results for value in values]
        waited = detector_waits_for(reporting(signals), warm)
        return results, with_holds(bursts, reports, waited, params)


def _inbox(conn: Connection) -> queue.SimpleQueue[Any]:
    """The parent's messages to a one-pass job, taken from the pipe by a thread of their own (so
    neither side can block the other on a full pipe) until the "final" one. If the pipe fails
    (the parent gone, a message that cannot be unpickled), the failure is put in the inbox: the
    job fails with it instead of waiting for ever for a message that will not come."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        try:
            while True:
                msg = conn.recv()
                inbox.put(msg)
                if msg[0] == "final":
                    return
        except BaseException as exc:
            inbox.put(("failed", exc))

    threading.Thread(target=receive, daemon=True).start()
    return inbox


def _from_parent(inbox: queue.SimpleQueue[Any]) -> Any:
    """The next message from the parent (waits for it); raises if the pipe failed."""
    msg = inbox.get()
    if msg[0] == "failed":
        raise RuntimeError(f"replay job: the pipe from the parent failed ({type(msg[1]).__name__})") from msg[1]
    return msg


def _one_pass_job(
    conn: Connection,
    scan: FileScan,
    index: int,
    params: Params,
    drain: bool,
    topics: dict[str, str],
    out: str,
    times: tuple[int | None, int | None],
    partitions: frozenset[int],
) -> None:
    # Holds on, one pass (`onepass`): closed minutes go to the parent as they close, its
    # incidents come back while the job goes on (a thread takes them from the pipe, so neither
    # side can block the other on a full pipe).
    try:
        inbox = _inbox(conn)
        one = OnePass(params, partitions, None)
        seq: dict[tuple[str, int], int] = {}
        n = 0
        with open(out, "wb") as sink:

            def write(given: Iterator[tuple[int, Decision]]) -> int:
                count = 0
                for part, d in given:
                    topic = topics[d.role]
                    k = (topic, part)
                    seq[k] = seq.get(k, -1) + 1
                    sink.write(decision_line(topic, part, seq[k], d))
                    count += 1
                return count

            def send_signals() -> None:
                if one.outbox:
                    conn.send_bytes(_SIGNALS + codec.dumps(one.outbox))
                    one.outbox = []

            paced = True

            def told(msg: tuple[str, list[IncidentEvent], int]) -> None:
                nonlocal paced
                kind, events, known = msg
                if kind == "unpace":
                    paced = False
                else:
                    one.incidents(events, known)

            take = one.take
            for i, (topic, part, offset, ts, key, value) in enumerate(scan.job_lines(index, TimeRange(*times))):
                take(i, topic, part, offset, ts, key, value)
                if one.outbox:
                    send_signals()
                while not inbox.empty():
                    told(_from_parent(inbox))
                if i & 255 == 0:
                    n += write(one.ready())
                    while paced and _lead_ms(one) > _PACE_MS:
                        send_signals()  # (all of them out before waiting)
                        told(_from_parent(inbox))  # wait for the other jobs (see `_lead_ms`)
            one.end_input(drain)
            send_signals()
            conn.send(("ended", None))
            while True:
                kind, events, known = _from_parent(inbox)
                if kind != "unpace":
                    one.incidents(events, known)
                if kind == "final":
                    break
            one.complete(drain)
            n += write(one.ready(final=True))
        done = (n, one.reports, sorted(one.r.engines), sorted(one.reporting), input_notes(one.r))
        conn.send(("done", done))
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that cannot be pickled
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


# How far a job of a one-pass replay may run ahead of the incidents, in event time, before it
# waits for them. Its records wait for the incidents, which wait for every partition's minutes:
# a job that drifted minutes ahead of the others (one job has a little less to do) kept minutes
# of records waiting, and the burst views re-read them at each minute's close (`--jobs 2` spent
# 1.65 CPU s in them for the 300k mixed records against 1.04 in one process; paced, 1.18).
_PACE_MS = 2 * MINUTE_MS


def _lead_ms(one: OnePass) -> int:
    """How far the job's slowest partition is ahead of the incidents known (0 until the detector
    has closed a minute, or while one of its partitions has no watermark). The job that holds
    the slowest partition of all is less than a minute ahead (the incidents are known through
    the minute every partition closed), so it never waits: no job waits forever; and a job that
    ends its input tells the parent, which lets every other job go on unpaced."""
    r = one.r
    known = r.incidents_known_through_ms
    if known <= NEG_INF or not r.engines:
        return 0
    return min(eng.watermark_ms for eng in r.engines.values()) - known


def _one_pass(
    ctx: Any,
    scan: FileScan,
    params: Params,
    drain: bool,
    jobs: int,
    topics: dict[str, str],
    outs: list[str],
    times: tuple[int | None, int | None],
    burst: BurstParams,
    partitions: frozenset[int],
    warm: WarmStart | None,
) -> tuple[list[tuple[int, list[Any], list[int], InputNotes]], list[Decision]] | None:
    # The parent of a one-pass replay with holds: one detector over every job's closed minutes,
    # its incidents to every job as they come. None: some partition never reported (see
    # `onepass.Fallback`), and the two-pass replay must be run instead.
    detector = start_detector(partitions, burst, warm)
    probe = params.probe_age_ms
    bursts: list[Decision] = []

    def args_of(i: int) -> tuple[Any, ...]:
        return (scan, i, params, drain, topics, outs[i], times, partitions)

    with _started(ctx, _one_pass_job, jobs, args_of) as (conns, procs):
        ended: set[int] = set()
        while len(ended) < jobs:
            for conn in wait([c for i, c in enumerate(conns) if i not in ended]):
                assert isinstance(conn, Connection)
                kind, payload = _answer_kind(conn)
                if kind == "ended":
                    ended.add(conns.index(conn))
                    _tell(conns, ("unpace", [], NEG_INF))  # the others must not wait for it any more (`_lead_ms`)
                    continue
                before = detector.closed_through
                alerts: list[Decision] = []
                for part, value in payload:
                    if part in partitions:
                        alerts.extend(detector.on_signals(value))
                closed = detector.closed_through
                if alerts or closed != before:
                    bursts.extend(alerts)
                    events = [e for d in alerts if (e := incident_event(d.value, probe)) is not None]
                    known = NEG_INF if closed is None else (closed + 1) * MINUTE_MS + probe
                    _tell(conns, ("incidents", events, known))
        closed = detector.closed_through
        known = POS_INF if drain else (NEG_INF if closed is None else (closed + 1) * MINUTE_MS + probe)
        _tell(conns, ("final", [], known))
        done = [_answer(conn) for conn in conns]
        for proc in procs:
            proc.join()
        reporting = {p for _n, _r, _e, rep, _b in done for p in rep}
        if reporting != partitions:
            return None
        results = [(n, reports, engines, back) for n, reports, engines, _rep, back in done]
        reports = [value for _n, values, _e, _b in results for value in values]
        return results, with_holds(bursts, reports, partitions, params)


# Closed minutes from a job to the parent: JSON (the same values the live worker sends to the
# signals topic), tagged with this byte; any other message is pickled (a pickle starts with
# 0x80). Unpickling these nested dicts cost the parent nine times what `orjson.loads` costs.
_SIGNALS = b"S"


def _tell(conns: list[Connection], message: tuple[str, list[Any], int]) -> None:
    """Send `message` to every job of a one-pass replay. A job that failed has sent its error
    and closed its end: the send breaks, and the job's error, still in the pipe, is raised here
    (a bad line with `--jobs 2` was an internal error, the broken pipe, in most runs)."""
    for c in conns:
        try:
            c.send(message)
        except (BrokenPipeError, ConnectionResetError):
            while True:
                _answer_kind(c)  # what the job sent before its error, then its error (or EOF)


def _answer_kind(conn: Connection) -> tuple[str, Any]:
    try:
        buf = conn.recv_bytes()
    except EOFError:
        raise RuntimeError("a replay job ended without an answer") from None
    if buf[:1] == _SIGNALS:
        return "signals", codec.loads(buf[1:])
    kind, payload = ForkingPickler.loads(buf)
    if kind == "error":
        raise payload
    return kind, payload


def replay_file_parallel(
    path: str,
    params: Params,
    *,
    drain: bool,
    jobs: int,
    topics: dict[str, str],
    out: IO[bytes],
    burst: BurstParams | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    warm: WarmStart | None = None,
    jobs_used: Callable[[int], None] | None = None,
) -> int:
    """Replay `path` with at most `jobs` processes; write decision lines to `out`; return their
    count. `from_ms`/`to_ms` select records by Kafka timestamp as `TimeRange` does. `warm`: the
    snapshot the parent's burst detector starts from (None: cold). No cyclic collector while it
    runs, here and in the forked jobs (`replay.collector_paused`). With holds, or with more jobs
    than CPUs, a job none of whose partitions is in the file is not started (`--jobs 1000` on a
    file of 4 partitions starts at most 4); `jobs_used` is told how many are."""
    burst = burst or BurstParams()
    cpus = os.cpu_count() or 1
    with collector_paused(), tempfile.TemporaryDirectory(prefix="qris-replay-") as tmp:
        ctx = mp.get_context("fork")
        times = (from_ms, to_ms)
        one_pass = None
        source: FileScan | WholeFile
        if params.holds or jobs > cpus:
            # One read of the file here: its input partitions (the detector needs them from the
            # start) and each job's lines (inherited by the forked jobs, which read only those),
            # in at most a process a CPU. Without holds, more jobs than CPUs would each read the
            # whole file on fewer CPUs: the scan costs less, and says which jobs have lines.
            source = scan = FileScan(path, (params.payment_topic, params.ledger_topic), jobs, workers=min(jobs, cpus))
            jobs = scan.busy_jobs()
        else:
            # Without holds each job reads the whole file for its lines: no scan first.
            source = WholeFile(path, jobs)
        if jobs_used is not None:
            jobs_used(jobs)
        outs = [str(Path(tmp) / f"job-{i}.jsonl") for i in range(jobs)]
        if params.holds:
            inputs = frozenset(scan.partitions)
            # No line gives an input partition (none, or none readable): the two passes read the
            # records and say what is wrong with them; a detector over no partition cannot run.
            if inputs:
                one_pass = _one_pass(ctx, scan, params, drain, jobs, topics, outs, times, burst, inputs, warm)
        if one_pass is not None:
            results, bursts = one_pass
        elif params.holds:
            results, bursts = _two_passes(ctx, scan, params, drain, jobs, topics, outs, times, burst, warm)
        else:
            _SCAN[0] = source  # the pool's forked processes inherit it (not pickled)
            try:
                with ctx.Pool(jobs) as pool:
                    answers = pool.starmap(_pool_job, [(i, params, drain, topics, outs[i], times) for i in range(jobs)])
                results = [(n, codec.loads(signals), engines, back) for n, signals, engines, back in answers]
            finally:
                _SCAN[0] = None
            signals = [value for _n, values, _p, _b in results for value in values]
            partitions = {p for _n, _v, ps, _b in results for p in ps}
            bursts, _closed = run_detector(signals, partitions, burst, warm)
        for o in outs:
            with open(o, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    for seq, d in enumerate(bursts):
        out.write(decision_line(topics[d.role], -1, seq, d))
    say_input(sum((back for _n, _v, _p, back in results), InputNotes()), path)
    return sum(n for n, _v, _p, _b in results) + len(bursts)
