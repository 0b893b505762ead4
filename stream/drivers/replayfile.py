"""The contract's replay file: JSON Lines, one Kafka record per line, in the order read.

`{"topic", "partition", "offset", "timestamp_ms", "key", "value"}`; `value_b64` replaces `value`
for bytes that are not UTF-8, and `key_b64` replaces `key` likewise (a key that is not UTF-8 is a
key mismatch live: text with U+FFFD in its place could equal the reference and be accepted).
Output files use the same shape with `value` holding the emitted JSON object.
"""

from __future__ import annotations

import base64
import binascii
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple

from ..core import codec
from ..core.decisions import Decision

# The buffer a replay file is read through, line by line: with Python's default (8 KiB) the
# line iteration alone cost about twice as much (0.08-0.10 s against 0.04 s for 300,000 lines).
READ_BUFFER = 1 << 16


class KafkaRecord(NamedTuple):
    """A Kafka record: a replay file's line, a record read from the broker, or one Faust delivered
    to the live worker (`boundary.LiveRecord` is this type). A named tuple, made once per record
    in the replay's and the worker's hot paths: built with `tuple.__new__` it costs a tenth of a
    frozen dataclass (and it pickles as a tuple, for the jobs of a parallel replay)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


def record_to_line(rec: KafkaRecord) -> dict[str, Any]:
    line: dict[str, Any] = {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp_ms": rec.timestamp_ms,
    }
    _put_bytes(line, "key", rec.key)
    _put_bytes(line, "value", rec.value)
    return line


def _put_bytes(line: dict[str, Any], name: str, raw: bytes | None) -> None:
    # Bytes as text if they are UTF-8, else base64 under `<name>_b64`.
    if raw is None:
        line[name] = None
        return
    try:
        line[name] = raw.decode("utf-8")
    except UnicodeDecodeError:
        line[name + "_b64"] = base64.b64encode(raw).decode("ascii")


class ReplayLineError(ValueError):
    """A replay file line that is not a replay record: `file:line: why`."""


def _field(line: dict[str, Any], name: str, kinds: tuple[type, ...], *, required: bool = True) -> Any:
    if name not in line:
        if required:
            raise ValueError(f'"{name}" is missing')
        return None
    value = line[name]
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = " or ".join("integer" if k is int else "string" for k in kinds)
        shown = codec.dumps(value)[:40].decode("utf-8", "replace")
        raise ValueError(f'"{name}" must be {want}{"" if required else " or null"}, not {shown}')
    return value


def line_to_record(line: Any) -> KafkaRecord:
    """The Kafka record of a replay line (any JSON value: one that is not an object is refused);
    `ValueError` says which field is wrong and why. (`Any`, not a dict: compiled by mypyc, an
    argument of another type would be a `TypeError` at the call, an internal error.)"""
    if type(line) is dict:
        # The common line in one pass; anything unusual (a missing or wrong field, `value_b64`)
        # takes the field-by-field path below, which words the mistake. (`obj.get` on a dict-typed
        # value: compiled, a direct look-up, as in `line_fields`.)
        obj: dict[str, Any] = line
        topic, partition, offset, timestamp_ms, key = (
            obj.get("topic"),
            obj.get("partition"),
            obj.get("offset"),
            obj.get("timestamp_ms"),
            obj.get("key"),
        )
        if (
            type(topic) is str
            and type(partition) is int
            and type(offset) is int
            and partition >= 0
            and offset >= 0
            and (timestamp_ms is None or type(timestamp_ms) is int)
            and (key is None or type(key) is str)
            and "value_b64" not in line
            and "key_b64" not in line
        ):
            v = obj.get("value")
            value = v.encode("utf-8") if type(v) is str else (None if v is None else codec.dumps(v))
            raw_key = None if key is None else key.encode("utf-8")
            return KafkaRecord(topic, partition, offset, timestamp_ms, raw_key, value)
    return _checked_line_to_record(line)


def _checked_line_to_record(line: Any) -> KafkaRecord:
    if not isinstance(line, dict):
        raise ValueError("a line must be a JSON object")
    topic = _field(line, "topic", (str,))
    partition = _field(line, "partition", (int,))
    offset = _field(line, "offset", (int,))
    if partition < 0 or offset < 0:
        raise ValueError('"partition" and "offset" must not be negative')
    # The clock guard compares it with event times: only an integer (or null) means a time.
    timestamp_ms = _field(line, "timestamp_ms", (int,), required=False)
    if "key_b64" in line:
        if line.get("key") is not None:
            raise ValueError('"key" and "key_b64" are both given')
        raw_key: bytes | None = _b64(line, "key_b64")
    else:
        key = _field(line, "key", (str,), required=False)
        raw_key = key.encode("utf-8") if key is not None else None
    if "value_b64" in line:
        value: bytes | None = _b64(line, "value_b64")
    else:
        v = line.get("value")
        value = None if v is None else (v.encode("utf-8") if isinstance(v, str) else codec.dumps(v))
    return KafkaRecord(topic, partition, offset, timestamp_ms, raw_key, value)


def _b64(line: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(_field(line, name, (str,)), validate=True)
    except binascii.Error as exc:
        raise ValueError(f'"{name}" is not base64: {exc}') from None


def parse_line(raw: bytes, where: str, n: int) -> KafkaRecord:
    """Line `n` of replay file `where` as a record, or `ReplayLineError` naming the line."""
    try:
        return line_to_record(codec.loads(raw))
    except (codec.JSONDecodeError, UnicodeEncodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReplayLineError(f"{where}:{n}: not a replay record: {reason}") from None


# A replay line's record as a plain tuple, in `KafkaRecord`'s field order: the replay's own reader
# hands these to the engines (no object per line but the tuple).
Fields = tuple[str, int, int, int | None, bytes | None, bytes | None]


def line_fields(
    lines: Iterable[bytes],
    where: str,
    line_no: Callable[[int], int],
    within: TimeRange | None = None,
    tick: Callable[[int], None] | None = None,
    share: tuple[int, int] | None = None,
) -> Iterator[Fields]:
    """The records of `lines` (the i-th is line `line_no(i)` of `where`), as `Fields`, in one
    loop: one `orjson.loads` a line, the common line checked inline as `line_to_record` checks
    it, anything else (`value_b64`, a wrong field, not JSON) through `parse_line`, which words
    the mistake. Blank lines are skipped; `within` selects as `TimeRange.keep` does; `tick(1024)`
    is called every 1,024 records given (here, not in a generator around this one: a layer less
    a record). `share` (job, jobs): only the lines of job `job` of `jobs`, as `FileScan` shares
    them out (by partition; a line that is not a record to job 0)."""
    loads, error = codec.loads, codec.JSONDecodeError
    keep = within.keep_fields if within is not None and within.selects else None
    job, jobs = share if share is not None else (0, 0)
    given = 0
    for i, raw in enumerate(lines):
        try:
            line = loads(raw)
        except error:
            if not raw.strip():
                continue
            line = None
        if jobs:
            p = line.get("partition") if type(line) is dict else None
            if (p % jobs if type(p) is int and p >= 0 else 0) != job:
                continue
        fields: Fields | None = None
        if type(line) is dict:
            # (`obj.get`, not a bound `get` in a local: on a dict-typed value, compiled, a direct
            # dict look-up rather than a call through Python's protocol; interpreted, no slower.)
            obj: dict[str, Any] = line
            topic, partition, offset, timestamp_ms, key, value = (
                obj.get("topic"),
                obj.get("partition"),
                obj.get("offset"),
                obj.get("timestamp_ms"),
                obj.get("key"),
                obj.get("value"),
            )
            if (
                type(topic) is str
                and type(partition) is int
                and type(offset) is int
                and partition >= 0
                and offset >= 0
                and (timestamp_ms is None or type(timestamp_ms) is int)
                and (key is None or type(key) is str)
                and type(value) is str
                and "value_b64" not in obj
                and "key_b64" not in obj
            ):
                try:
                    fields = (
                        topic,
                        partition,
                        offset,
                        timestamp_ms,
                        None if key is None else key.encode("utf-8"),
                        value.encode("utf-8"),
                    )
                except UnicodeEncodeError:
                    fields = None  # (a lone surrogate: `parse_line` words it)
        if fields is None:
            try:
                rec = parse_line(raw, where, 0)
            except ReplayLineError:
                parse_line(raw, where, line_no(i))  # raises again, naming the line (found only now)
                raise
            fields = (rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, rec.value)
        if keep is not None and not keep(fields[0], fields[1], fields[3]):
            continue
        if tick is not None:
            given += 1
            if given & 1023 == 0:
                tick(1024)
        yield fields


class ReplayFile:
    """A replay file as the replay reads it: iterable again and again (as `KafkaRecord`s, for
    the two-pass replay and `trace`), and `fields()` for the one-pass replay's fast path.
    `from_ms`/`to_ms` select as `TimeRange` does; `tick(n)` is told every 1,024 records."""

    def __init__(
        self,
        path: str,
        from_ms: int | None = None,
        to_ms: int | None = None,
        tick: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.from_ms, self.to_ms = from_ms, to_ms
        self.tick = tick
        self._reading: IO[bytes] | None = None

    def share(self) -> float | None:
        """The share of the file read so far by the pass under way (None if unknown)."""
        fh = self._reading
        try:
            size = os.fstat(fh.fileno()).st_size if fh is not None else 0
            return fh.tell() / size if fh is not None and size > 0 else None
        except (OSError, ValueError):
            return None

    def fields(self) -> Iterator[Fields]:
        with open(self.path, "rb", buffering=READ_BUFFER) as fh:
            self._reading = fh
            yield from line_fields(fh, self.path, lambda i: i + 1, TimeRange(self.from_ms, self.to_ms), self.tick)

    def __iter__(self) -> Iterator[KafkaRecord]:
        new = tuple.__new__
        for fields in self.fields():
            yield new(KafkaRecord, fields)


class FileScan:
    """One read of a replay file for a replay with `jobs` processes: the partitions its lines
    give for the input topics (as `file_partitions`), and for each job the byte ranges of its
    lines (those of partitions `p % jobs == job`; a line that is not a record goes to job 0,
    which says what is wrong with it). Each line is read with `orjson.loads`, so its partition
    is the one the replay reads, whatever its spacing, key order, escapes or repeated keys."""

    def __init__(
        self, path: str, topics: Iterable[str], jobs: int = 1, *, ranges: bool = True, workers: int = 1
    ) -> None:
        wanted = set(topics)
        self.path = path
        self.partitions: set[int] = set()
        self.starts = [array("q") for _ in range(jobs)]
        self.ends = [array("q") for _ in range(jobs)]
        if not ranges:  # the partitions only (a replay in one process)
            loads, error = codec.loads, codec.JSONDecodeError
            # (`partitions.add`, not a bound `add` in a local: compiled, a direct set insert.)
            partitions = self.partitions
            with open(path, "rb", buffering=READ_BUFFER) as fh:
                for raw in fh:
                    try:
                        line = loads(raw)
                    except error:
                        continue
                    # (A topic may be any JSON type: a list or dict one cannot be looked up in a set.)
                    if type(line) is dict and type(topic := line.get("topic")) is str and topic in wanted:
                        p = line.get("partition")
                        if type(p) is int and p >= 0:
                            partitions.add(p)
            return
        spans = _spans(path, workers) if workers > 1 else [(0, -1)]
        if len(spans) == 1:
            found = [_scan_span(path, 0, -1, wanted, jobs)]
        else:
            # The first span here, each other in a forked process (the scan is serial work
            # before any job starts): the same partitions and ranges, put together in order.
            import multiprocessing as mp

            with mp.get_context("fork").Pool(len(spans) - 1) as pool:
                others = pool.starmap_async(_scan_span, [(path, a, b, wanted, jobs) for a, b in spans[1:]])
                found = [_scan_span(path, *spans[0], wanted, jobs), *others.get()]
        for parts, starts, ends in found:
            self.partitions.update(parts)
            for j in range(jobs):
                self.starts[j].extend(starts[j])
                self.ends[j].extend(ends[j])

    def busy_jobs(self) -> int:
        """Leave out the jobs that have no line (more jobs than the file has partitions) and say
        how many are left (at least one). The others keep their lines and their order, so their
        outputs, put together in job order, are what all the jobs would have written."""
        busy = [j for j, starts in enumerate(self.starts) if starts] or [0]
        self.starts = [self.starts[j] for j in busy]
        self.ends = [self.ends[j] for j in busy]
        return len(busy)

    def job_lines(self, job: int, within: TimeRange | None = None) -> Iterator[Fields]:
        """The records of job `job`'s lines, in file order (`line_fields`; only these lines
        are parsed)."""
        starts, ends = self.starts[job], self.ends[job]
        if not starts:
            return
        path = self.path
        with open(path, "rb", buffering=0) as fh:
            yield from line_fields(_ranges(fh, starts, ends), path, lambda i: _line_number(path, starts[i]), within)


class WholeFile:
    """A replay file for a replay with `jobs` processes, without a scan first: each job reads
    every line and keeps those of its partitions, as `FileScan` shares them out. A replay
    without holds needs nothing of the file before its jobs start, and a JSON read of every
    line in each job costs less than a scan in the parent (every line, before any job starts)
    and each job's second read of its own lines."""

    def __init__(self, path: str, jobs: int) -> None:
        self.path = path
        self.jobs = jobs

    def job_lines(self, job: int, within: TimeRange | None = None) -> Iterator[Fields]:
        """The records of job `job`'s lines, in file order (`line_fields`)."""
        with open(self.path, "rb", buffering=READ_BUFFER) as fh:
            yield from line_fields(fh, self.path, lambda i: i + 1, within, share=(job, self.jobs))


def _spans(path: str, n: int) -> list[tuple[int, int]]:
    """`path` cut into at most `n` byte spans [a, b) of whole lines (b -1: to the end), each cut
    moved to the start of the line it falls in the middle of."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as fh:
        for k in range(1, n):
            at = size * k // n
            if at <= cuts[-1]:
                continue
            fh.seek(at - 1)
            fh.readline()  # to just after the newline at or after byte at - 1: a line's start
            at = fh.tell()
            if cuts[-1] < at < size:
                cuts.append(at)
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [-1], strict=True)]


def _scan_span(
    path: str, start: int, end: int, wanted: set[str], jobs: int
) -> tuple[set[int], list[array[int]], list[array[int]]]:
    """`FileScan` of the lines that start in bytes [start, end) of `path` (end -1: to the end;
    `start` is a line's start): their input partitions and each job's line ranges."""
    loads, error = codec.loads, codec.JSONDecodeError
    partitions: set[int] = set()
    add = partitions.add
    starts = [array("q") for _ in range(jobs)]
    ends = [array("q") for _ in range(jobs)]
    appends = [(starts[j].append, ends[j].append) for j in range(jobs)]
    pos = start
    with open(path, "rb", buffering=READ_BUFFER) as fh:
        fh.seek(start)
        for raw in fh:
            if 0 <= end <= pos:  # (a cut is a line's start: reached exactly, unless the file changed)
                break
            line_at = pos
            pos += len(raw)
            try:
                line = loads(raw)
            except error:
                if raw.strip():
                    appends[0][0](line_at)
                    appends[0][1](pos)
                continue
            p = line.get("partition") if type(line) is dict else None
            if type(p) is int and p >= 0:
                if type(topic := line.get("topic")) is str and topic in wanted:
                    add(p)
                start_at, end_at = appends[p % jobs]
            else:
                start_at, end_at = appends[0]
            start_at(line_at)
            end_at(pos)
    return partitions, starts, ends


def _ranges(fh: IO[bytes], starts: array[int], ends: array[int], block: int = 1 << 22) -> Iterator[bytes]:
    # The bytes of lines [start, end) of `fh` (rising, not overlapping), read in blocks: not
    # mapped into memory, where every page a job touches (all of them: partitions interleave)
    # would count in its resident size.
    buf, base = b"", 0  # buf holds the file's bytes [base, base + len(buf))
    for a, b in zip(starts, ends, strict=True):
        top = base + len(buf)
        if b > top:
            if a >= top:
                fh.seek(a)
                buf = fh.read(max(block, b - a))
            else:
                buf = buf[a - base :] + fh.read(max(block, b - top))
            base = a
            while base + len(buf) < b:  # a short read (or a file cut since the scan)
                more = fh.read(max(block, b - base - len(buf)))
                if not more:
                    break
                buf += more
        yield buf[a - base : b - base]


def _line_number(path: str, offset: int) -> int:
    # Only for a line with a mistake: count the newlines before it, a block at a time.
    n, pos, block = 1, 0, 1 << 24
    with open(path, "rb") as fh:
        while pos < offset:
            chunk = fh.read(min(block, offset - pos))
            if not chunk:
                break
            n += chunk.count(b"\n")
            pos += len(chunk)
    return n


def read_records(fh: IO[bytes]) -> Iterator[KafkaRecord]:
    for _n, rec in numbered_records(fh):
        yield rec


def numbered_records(fh: IO[bytes]) -> Iterator[tuple[int, KafkaRecord]]:
    """(line number, record) for every record line; a bad line is a `ReplayLineError`
    naming the file and the line."""
    where = str(getattr(fh, "name", "replay file"))
    for n, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        yield n, parse_line(raw, where, n)


def file_partitions(path: str, topics: Iterable[str]) -> set[int]:
    """The partitions that lines of `path` give for `topics`, read as `parse_line` reads them (a
    line that is not a record is left out: reading the records says what is wrong with it).
    A superset of the partitions of the records `--from/--to` keeps."""
    return FileScan(path, topics, ranges=False).partitions


class TimeRange:
    """`--from/--to` on a replay file, as Kafka's offsets for times select them: per topic
    partition, the records from the first whose timestamp is at or after `from_ms` up to,
    not including, the first at or after `to_ms` (records between keep their order, whatever
    their own timestamps).

    >>> r = TimeRange(100, 200)
    >>> [t for t in (50, 120, 90, 210, 150) if r.keep(KafkaRecord("a", 0, 0, t, None, None))]
    [120, 90]
    """

    def __init__(self, from_ms: int | None, to_ms: int | None) -> None:
        self.from_ms = from_ms
        self.to_ms = to_ms
        self.started: set[tuple[str, int]] = set()
        self.ended: set[tuple[str, int]] = set()

    @property
    def selects(self) -> bool:
        """Whether it can leave anything out."""
        return self.from_ms is not None or self.to_ms is not None

    def keep(self, rec: KafkaRecord) -> bool:
        return self.keep_fields(rec.topic, rec.partition, rec.timestamp_ms)

    def keep_fields(self, topic: str, partition: int, ts: int | None) -> bool:
        tp = (topic, partition)
        if tp in self.ended:
            return False
        if self.to_ms is not None and ts is not None and ts >= self.to_ms:
            self.ended.add(tp)
            return False
        if tp not in self.started:
            if self.from_ms is not None and (ts is None or ts < self.from_ms):
                return False
            self.started.add(tp)
        return True


def write_records(fh: IO[bytes], records: Iterable[KafkaRecord]) -> int:
    n = 0
    for rec in records:
        fh.write(codec.dumps(record_to_line(rec)) + b"\n")
        n += 1
    return n


def decision_line(topic: str, partition: int, seq: int, d: Decision) -> bytes:
    """An output line: `partition` is the input partition that decided, `offset` the decision's
    sequence number among that partition's outputs to `topic`; a key that is not UTF-8 (a dead
    letter's original key) as `key_b64`, as `dump` writes it."""
    line: dict[str, Any] = {"topic": topic, "partition": partition, "offset": seq, "timestamp_ms": d.at_ms}
    _put_bytes(line, "key", d.key)
    line["value"] = d.value
    return codec.dumps(line) + b"\n"
