"""Reading a replay file for `replay --jobs N` (`replayfile.FileScan`, `WholeFile`) and the replay's own line
reader (`replayfile.line_fields`): every job gets exactly the lines of its partitions as the
replay reads them (odd spacing, key order, `value_b64`, escaped and repeated keys, blank and
broken lines), a broken line is named by its line number, and `--jobs 2` decides what `--jobs 1`
decides."""

from __future__ import annotations

import io
import multiprocessing as mp
import signal
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.core.burst import BurstParams
from stream.core.partition import Params
from stream.drivers.parallel import _tell, replay_file_parallel
from stream.drivers.replay import replay
from stream.drivers.replayfile import (
    FileScan,
    KafkaRecord,
    ReplayFile,
    ReplayLineError,
    TimeRange,
    WholeFile,
    _ranges,
    _scan_span,
    _spans,
    decision_line,
    line_fields,
    line_to_record,
    read_records,
    record_to_line,
)
from tests.records import ledger, payment
from tests.test_holds import HOLDS
from tests.test_replay_onepass import L_TOPIC, P_TOPIC, _file_lines, _rec, _small

TOPICS = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}


def _odd_lines() -> list[bytes]:
    """Record lines as other writers may write them, each with what the replay reads in it."""
    spaced = _rec(P_TOPIC, 3, 0, payment("E-q", "requested", "E", 20))
    reordered = _rec(L_TOPIC, 3, 0, ledger("E-d", "debited", "E", 20))
    b64 = KafkaRecord(P_TOPIC, 2, 0, None, b"F", b"\xff\xfe not UTF-8")
    return [
        # Spaces after the separators.
        orjson.dumps(record_to_line(spaced)).replace(b'","', b'", "').replace(b'":', b'": '),
        # Keys in another order: the partition comes last.
        orjson.dumps(dict(reversed(list(record_to_line(reordered).items())))),
        # Not UTF-8: `value_b64`.
        orjson.dumps(record_to_line(b64)),
        # A repeated key, escaped: JSON readers take the last one, partition 3, not 2 (a second
        # debit of E: read as partition 2, it would be missing from E's refund).
        orjson.dumps(record_to_line(_rec(L_TOPIC, 2, 1, ledger("E-d2", "debited", "E", 25, 1_000))))[:-1]
        + b',"p\\u0061rtition":3}',
        # A topic that is not an input: left to the job of its partition, which ignores it.
        orjson.dumps(record_to_line(KafkaRecord("other", 5, 0, None, None, b"x"))),
    ]


def _write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def _day_lines() -> list[bytes]:
    lines = [orjson.dumps(record_to_line(r)) for r in _small()]
    # Blank lines between records (a last line without its newline: see the first test).
    return [*lines[:3], b"", b"   ", *lines[3:], *_odd_lines()]


def test_every_job_reads_exactly_its_partitions_lines_as_the_replay_reads_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "day.jsonl", _day_lines())
    with open(path, "rb") as fh:
        records = list(read_records(fh))
    assert [r.partition for r in records if r.key == b"E"] == [3, 3, 3]
    for jobs in (1, 2, 3):
        scan = FileScan(path, (P_TOPIC, L_TOPIC), jobs)
        assert scan.partitions == {0, 1, 2, 3}
        for job in range(jobs):
            want = [r for r in records if r.partition % jobs == job]
            assert [KafkaRecord(*f) for f in scan.job_lines(job)] == want
            # Read whole by each job (a replay without holds): the same lines.
            assert [KafkaRecord(*f) for f in WholeFile(path, jobs).job_lines(job)] == want
    # The last line without its newline.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(Path(path).read_bytes().rstrip(b"\n"))
    for source in (FileScan(str(cut), (P_TOPIC, L_TOPIC), 2), WholeFile(str(cut), 2)):
        assert [KafkaRecord(*f) for job in (0, 1) for f in source.job_lines(job)] == [
            r for job in (0, 1) for r in records if r.partition % 2 == job
        ]
    # The single-process reader gives the same records, as tuples, and again on a second pass.
    rf = ReplayFile(path)
    assert list(rf) == records and list(rf) == records


def _scanned(scan: FileScan) -> tuple[set[int], list[list[int]], list[list[int]]]:
    return scan.partitions, [a.tolist() for a in scan.starts], [a.tolist() for a in scan.ends]


def test_a_scan_split_across_processes_equals_the_serial_scan_wherever_the_file_is_cut(tmp_path: Path) -> None:
    # `replay --jobs N` scans the file in N processes (`workers`), each from a line's start.
    lines = [*_day_lines(), b"{oops", b"", *_day_lines()[:4]]
    path = _write(tmp_path / "day.jsonl", lines)
    cut = tmp_path / "cut.jsonl"  # the last line without its newline
    cut.write_bytes(Path(path).read_bytes().rstrip(b"\n"))
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line) + 1)
    for source in (path, str(cut)):
        for jobs in (1, 2, 3):
            serial = _scanned(FileScan(source, (P_TOPIC, L_TOPIC), jobs))
            assert serial[1][0], "job 0 has lines"
            for workers in (2, 3, 5, 64):
                assert _scanned(FileScan(source, (P_TOPIC, L_TOPIC), jobs, workers=workers)) == serial
    # Two spans cut at any line's start give the serial scan (`_spans` cuts only there):
    serial = _scanned(FileScan(path, (P_TOPIC, L_TOPIC), 2))
    for at in line_starts[1:-1]:
        found = [_scan_span(path, a, b, {P_TOPIC, L_TOPIC}, 2) for a, b in ((0, at), (at, -1))]
        merged = (
            set().union(*(f[0] for f in found)),
            [sum((f[1][j].tolist() for f in found), []) for j in range(2)],
            [sum((f[2][j].tolist() for f in found), []) for j in range(2)],
        )
        assert merged == serial, at
    for n in (2, 3, 7, 1000):
        spans = _spans(path, n)
        assert spans[0][0] == 0 and spans[-1][1] == -1
        assert all(a in line_starts and a < b for a, b in spans[:-1])
        assert [b for _a, b in spans[:-1]] == [a for a, _b in spans[1:]]


def test_the_line_reader_agrees_with_the_checked_parser_on_every_shape() -> None:
    good = record_to_line(_rec(P_TOPIC, 0, 0, payment("A-q", "requested", "A", 0)))
    shapes: list[Any] = [
        good,
        {**good, "key": None},
        {**good, "timestamp_ms": None},
        {**good, "value": None},
        {**good, "value": {"as": "object"}},
        {k: v for k, v in good.items() if k != "timestamp_ms"},
        {**good, "value_b64": "AAEC"},
        {k: v for k, v in {**good, "key_b64": "/w=="}.items() if k != "key"},
        {**good, "key": None, "key_b64": "/w=="},
        {k: v for k, v in {**good, "key_b64": "%%"}.items() if k != "key"},
        {**good, "partition": True},
        {**good, "offset": -1},
        {**good, "key": 5},
        [1, 2],
    ]
    for shape in shapes:
        raw = orjson.dumps(shape)
        try:
            want: Any = line_to_record(orjson.loads(raw))
        except ValueError:
            want = ReplayLineError
        try:
            got: Any = [KafkaRecord(*f) for f in _read_lines([raw])]
        except ReplayLineError:
            got = ReplayLineError
        assert got == (want if want is ReplayLineError else [want]), shape


def test_a_key_that_is_not_utf8_survives_the_replay_file_and_is_a_key_mismatch() -> None:
    # As text with U+FFFD in place of the bad bytes, the key could equal the reference: live
    # dead-letters the debit (key mismatch), and the replay of its dump must too.
    bad_key = "E\ufffd".encode()[:-3] + b"\xff"
    reference_value = ledger("E-d", "debited", "E\ufffd", 20)
    rec = KafkaRecord(L_TOPIC, 0, 0, 1_743_213_600_000, bad_key, reference_value)
    line = record_to_line(rec)
    assert "key" not in line and line["key_b64"] == "Rf8="
    raw = orjson.dumps(line)
    assert line_to_record(orjson.loads(raw)) == rec
    assert [KafkaRecord(*f) for f in _read_lines([raw])] == [rec]
    records = [_rec(P_TOPIC, 0, 0, payment("E-q", "requested", "E\ufffd", 0)), rec]
    out = [d for _p, d in replay(records, Params(payment_topic=P_TOPIC, ledger_topic=L_TOPIC), drain=True)]
    assert sorted(d.role for d in out) == ["alerts", "dead_letter"]  # no refund
    (dead,) = [d for d in out if d.role == "dead_letter"]
    assert dead.value["error"] == "key_mismatch" and "not UTF-8" in dead.value["reason"] and dead.key == bad_key
    # The output line keeps it too.
    written = orjson.loads(decision_line(TOPICS["dead_letter"], 0, 0, dead))
    assert "key" not in written and written["key_b64"] == "Rf8="
    # A line with both is refused by both readers.
    both = orjson.dumps({**record_to_line(records[0]), "key_b64": "/w=="})
    with pytest.raises(ValueError, match='"key" and "key_b64" are both given'):
        line_to_record(orjson.loads(both))
    with pytest.raises(ReplayLineError, match="x.jsonl:1: .*both given"):
        _read_lines([both])


def _read_lines(lines: list[bytes]) -> list[Any]:
    return list(line_fields(lines, "x.jsonl", lambda i: i + 1))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_broken_line_is_named_by_its_line_number(tmp_path: Path, jobs: int) -> None:
    lines = _day_lines()
    good = lines[-2]  # partition 3 (the escaped repeated key): the job of partition 1 with 2 jobs
    broken = good.replace(b'"offset":1', b'"offset":"1"')
    assert broken != good
    path = _write(tmp_path / "day.jsonl", [*lines, broken])
    for source in (FileScan(path, (P_TOPIC, L_TOPIC), jobs), WholeFile(path, jobs)):
        with pytest.raises(ReplayLineError, match=rf'day.jsonl:{len(lines) + 1}: not a replay record: "offset" must'):
            for job in range(jobs):
                list(source.job_lines(job))
    path = _write(tmp_path / "json.jsonl", [*lines[:4], b"{oops", *lines[4:]])
    for params in (HOLDS, HOLDS.__class__()):
        with pytest.raises(ReplayLineError, match=r"json.jsonl:5: not a replay record"):
            replay_file_parallel(path, params, drain=True, jobs=jobs, topics=TOPICS, out=io.BytesIO())


@pytest.mark.parametrize("topic", [[], ["qris.payment-requests"], {}, {"a": 1}, None, 7])
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_line_whose_topic_is_not_a_string_is_a_broken_line_not_an_internal_error(
    tmp_path: Path, topic: object, jobs: int
) -> None:
    # The scan for the input partitions runs before the line is checked: an array or object
    # there was looked up in the set of input topics (a TypeError, replay's internal error).
    lines = _day_lines()
    broken = orjson.dumps({**orjson.loads(lines[-2]), "topic": topic})
    path = _write(tmp_path / "day.jsonl", [*lines, broken])
    for ranges in (True, False):
        assert FileScan(path, (P_TOPIC, L_TOPIC), jobs, ranges=ranges).partitions == {0, 1, 2, 3}
    said = rf'day.jsonl:{len(lines) + 1}: not a replay record: "topic" must be string'
    with pytest.raises(ReplayLineError, match=said):
        replay_file_parallel(path, HOLDS, drain=True, jobs=jobs, topics=TOPICS, out=io.BytesIO())


@pytest.mark.parametrize("holds", [True, False])
@pytest.mark.parametrize("drain", [True, False])
def test_two_jobs_decide_what_one_process_decides_on_odd_lines(tmp_path: Path, holds: bool, drain: bool) -> None:
    path = _write(tmp_path / "day.jsonl", _day_lines())
    params = HOLDS if holds else HOLDS.__class__()
    with open(path, "rb") as fh:
        records = list(read_records(fh))
    expected = _file_lines(list(replay(records, params, drain=drain)))
    assert any(b"dead-letter" in line for line in expected)
    if drain:  # E's refund counts both debits
        assert any(b'"amount":26000' in line and b'"reference":"E"' in line for line in expected)
    assert _file_lines(list(replay(ReplayFile(path), params, drain=drain))) == expected
    for jobs in (2, 3):
        out = io.BytesIO()
        n = replay_file_parallel(path, params, drain=drain, jobs=jobs, topics=TOPICS, out=out)
        assert n == len(expected)
        assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(expected)


def test_from_to_selects_the_same_records_in_the_jobs(tmp_path: Path) -> None:
    records = [
        KafkaRecord(r.topic, r.partition, r.offset, 1_000 * i, r.key, r.value) for i, r in enumerate(_small() * 3)
    ]
    path = _write(tmp_path / "day.jsonl", [orjson.dumps(record_to_line(r)) for r in records])
    within = TimeRange(5_000, 20_000)
    chosen = [r for r in records if within.keep(r)]
    assert 0 < len(chosen) < len(records)
    assert list(ReplayFile(path, 5_000, 20_000)) == chosen
    for source in (FileScan(path, (P_TOPIC, L_TOPIC), 2), WholeFile(path, 2)):
        got = [KafkaRecord(*f) for job in (0, 1) for f in source.job_lines(job, TimeRange(5_000, 20_000))]
        assert sorted(got, key=records.index) == chosen


def _stalling_day() -> list[KafkaRecord]:
    # Partitions 0 and 2 (job 0 of two) run 20 minutes; partition 1 (job 1) stops after 5 and
    # partition 3 (job 1) comes back only at the end of the file: job 0 runs ahead of the
    # incidents (which wait for every partition's minutes) and must not wait for ever.
    out: list[KafkaRecord] = []
    offsets: dict[tuple[str, int], int] = {}

    def add(topic: str, part: int, value: bytes) -> None:
        k = (topic, part)
        offsets[k] = offsets.get(k, -1) + 1
        out.append(_rec(topic, part, offsets[k], value))

    late: list[tuple[str, int, bytes]] = []
    for i in range(120):
        t = 10.0 * i
        for part in (0, 1, 2, 3):
            if part == 1 and t > 300:
                continue
            ref = f"S{part}-{i}"
            q = payment(f"{ref}-q", "requested", ref, t)
            d = ledger(f"{ref}-d", "debited", ref, t + 1)
            if part == 3 and t > 300:
                late += [(P_TOPIC, 3, q), (L_TOPIC, 3, d)]
                continue
            add(P_TOPIC, part, q)
            add(L_TOPIC, part, d)
    for topic, part, value in late:
        add(topic, part, value)
    return out


@pytest.mark.parametrize("drain", [True, False])
def test_a_job_ahead_of_the_incidents_waits_but_never_for_ever(tmp_path: Path, drain: bool) -> None:
    records = _stalling_day()
    path = _write(tmp_path / "day.jsonl", [orjson.dumps(record_to_line(r)) for r in records])
    expected = _file_lines(list(replay(records, HOLDS, drain=drain)))
    assert len(expected) > 100 if drain else expected is not None
    out = io.BytesIO()

    def hung(_signum: int, _frame: Any) -> None:
        raise TimeoutError("the parallel replay hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        n = replay_file_parallel(path, HOLDS, drain=drain, jobs=2, topics=TOPICS, out=out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert n == len(expected)
    assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(expected)


def test_a_jobs_lines_are_read_whole_whatever_the_block_and_short_reads() -> None:
    lines = [b"line %d %s\n" % (i, b"x" * (i % 13)) for i in range(200)]
    data = b"".join(lines)
    starts, ends, pos = array("q"), array("q"), 0
    for i, line in enumerate(lines):
        if i % 3 == 0:
            starts.append(pos)
            ends.append(pos + len(line))
        pos += len(line)

    class ShortReads(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(n, 7) if n is not None and n > 0 else n)

    for fh in (io.BytesIO(data), ShortReads(data)):
        for block in (1, 5, 64, 1 << 22):
            fh.seek(0)
            assert list(_ranges(fh, starts, ends, block)) == lines[::3]


def test_a_job_whose_pipe_from_the_parent_fails_fails_instead_of_waiting_for_ever() -> None:
    # A message the job cannot unpickle (or the parent gone) ended its reader thread, and the
    # job waited for the parent's incidents for ever; now the failure reaches the job.
    from multiprocessing import Pipe

    from stream.drivers.parallel import _from_parent, _inbox

    ours, theirs = Pipe()
    inbox = _inbox(theirs)
    ours.send(("incidents", [], 7))
    assert _from_parent(inbox) == ("incidents", [], 7)
    ours.send_bytes(b"not a pickle")
    with pytest.raises(RuntimeError, match="the pipe from the parent failed"):
        _from_parent(inbox)
    ours.close()
    theirs.close()


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("holds", [True, False])
def test_a_replay_loads_no_kafka_client_and_no_numpy(tmp_path: Path, jobs: int, holds: bool) -> None:
    # Start-up is a share of every replay: `qris-guard replay` over a file imports no Kafka client
    # (the demo's parser options once pulled them in), no Faust, and not river's statistics with
    # numpy and scipy (imported only when a scope's rate model leaves its warm-up).
    import subprocess
    import sys

    path = _write(tmp_path / "day.jsonl", _day_lines())
    out = tmp_path / "decisions.jsonl"
    argv = ["replay", "--in", path, "--out", str(out), "--drain", "--jobs", str(jobs)]
    argv += [] if holds else ["--max-hold-s", "0"]
    code = (
        "import sys; from stream.cli import main; rc = main(sys.argv[1:]); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'mode', 'aiokafka', 'kafka', 'aiohttp', 'numpy', 'scipy', 'narwhals', 'ssl'}))); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.stdout.strip() == ""
    assert out.read_bytes().count(b"\n") > 0  # it did replay


def test_a_replay_of_records_tied_on_an_offset_decides_the_same_in_one_pass_two_passes_and_jobs(
    tmp_path: Path,
) -> None:
    # A replay file (tests/data, 7 lines, minimised by a helper's replay fuzz) whose first two
    # lines are one `requested` at one offset, sent twice with different switches. The burst
    # views saw the two in the order read, the decisions in the order of their contents: one
    # pass refunded a payment at once that two passes held for 2 h, and `--jobs 2` changed
    # from run to run. Now the views sort as the heap does: swapping the two lines changes nothing.
    lines = (Path(__file__).parent / "data" / "replay_tied_offsets.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[0] != lines[1] and orjson.loads(lines[0])["offset"] == orjson.loads(lines[1])["offset"]
    burst = BurstParams(threshold=2.0, learn_min_payments=0, learn_min_minutes=0)
    params = Params(max_hold_ms=7_200_000, hold_grace_ms=900_000)  # the worker's defaults
    outputs = []
    for order in (lines, [lines[1], lines[0], *lines[2:]]):
        path = _write(tmp_path / "tied.jsonl", order)
        one = _file_lines(list(replay(ReplayFile(path), params, drain=True, burst=burst)))
        two = _file_lines(list(replay(ReplayFile(path), params, drain=True, burst=burst, one_pass=False)))
        assert one == two
        assert any(b"FAILURE_BURST" in line for line in one) and any(b"refund.held" in line for line in one)
        for _ in range(3):
            out = io.BytesIO()
            replay_file_parallel(path, params, drain=True, jobs=2, topics=TOPICS, out=out, burst=burst)
            assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(one)
        outputs.append(one)
    assert outputs[0] == outputs[1]


def test_a_job_that_failed_before_the_parent_wrote_to_it_gives_its_own_error(tmp_path: Path) -> None:
    # The job sent its error and closed its end; the parent, not having read it yet, told every
    # job about new incidents: the send broke (BrokenPipeError), an internal error of `replay`
    # in 7 of 10 runs of a file whose last line was bad (a helper's replay fuzz).
    parent, child = mp.Pipe()
    child.send(("error", ReplayLineError("day.jsonl:439: not a replay record")))
    child.close()
    with pytest.raises(ReplayLineError, match="day.jsonl:439"):
        _tell([parent], ("incidents", [], 0))


@pytest.mark.parametrize("holds", [True, False])
def test_more_jobs_than_the_file_has_partitions_start_one_process_a_partition(
    tmp_path: Path, holds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs with no line of the file are not started (`--jobs 1000` on a file of 4 partitions
    # would fork 1,000 processes), and the lines written are those all the jobs would write.
    import stream.drivers.parallel as parallel

    path = _write(tmp_path / "day.jsonl", _day_lines())  # input partitions 0-3, another topic's 5
    params = HOLDS if holds else HOLDS.__class__()
    started: list[int] = []
    fork = mp.get_context("fork")

    class Counted:
        def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - multiprocessing's name
            started.append(1)
            return fork.Process(*args, **kwargs)

        def Pipe(self) -> Any:  # noqa: N802
            return fork.Pipe()

        def Pool(self, n: int) -> Any:  # noqa: N802
            started.append(n)
            return fork.Pool(n)

    monkeypatch.setattr(parallel.mp, "get_context", lambda _method: Counted())
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)
    want = io.BytesIO()
    replay_file_parallel(path, params, drain=True, jobs=2, topics=TOPICS, out=want)
    for jobs in (6, 64):
        started.clear()
        used: list[int] = []
        out = io.BytesIO()
        replay_file_parallel(path, params, drain=True, jobs=jobs, topics=TOPICS, out=out, jobs_used=used.append)
        # A job each for partitions 0, 1, 2, 3 and 5, and the scan's second process (2 CPUs).
        assert used == [5] and sum(started) == 5 + 1
        assert sorted(out.getvalue().splitlines()) == sorted(want.getvalue().splitlines())
    # With no more jobs than CPUs and no holds, each job reads the whole file: no scan first.
    if not holds:
        started.clear()
        replay_file_parallel(path, params, drain=True, jobs=2, topics=TOPICS, out=io.BytesIO())
        assert sum(started) == 2
