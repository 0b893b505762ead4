"""The contract's replay file: JSON Lines, one Kafka record per line, in the order read.

`{"topic", "partition", "offset", "timestamp_ms", "key", "value"}`; `value_b64` replaces `value`
for bytes that are not UTF-8. Output files use the same shape with `value` holding the emitted
JSON object.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..core import codec
from ..core.decisions import Decision


@dataclass(frozen=True, slots=True)
class KafkaRecord:
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
        "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
    }
    if rec.value is None:
        line["value"] = None
    else:
        try:
            line["value"] = rec.value.decode("utf-8")
        except UnicodeDecodeError:
            line["value_b64"] = base64.b64encode(rec.value).decode("ascii")
    return line


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


def line_to_record(line: dict[str, Any]) -> KafkaRecord:
    """The Kafka record of a replay line; `ValueError` says which field is wrong and why."""
    if type(line) is dict:
        # The common line in one pass; anything unusual (a missing or wrong field, `value_b64`)
        # takes the field-by-field path below, which words the mistake.
        get = line.get
        topic, partition, offset, timestamp_ms, key = (
            get("topic"),
            get("partition"),
            get("offset"),
            get("timestamp_ms"),
            get("key"),
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
        ):
            v = get("value")
            value = v.encode("utf-8") if type(v) is str else (None if v is None else codec.dumps(v))
            raw_key = None if key is None else key.encode("utf-8")
            return KafkaRecord(topic, partition, offset, timestamp_ms, raw_key, value)
    return _checked_line_to_record(line)


def _checked_line_to_record(line: dict[str, Any]) -> KafkaRecord:
    if not isinstance(line, dict):
        raise ValueError("a line must be a JSON object")
    topic = _field(line, "topic", (str,))
    partition = _field(line, "partition", (int,))
    offset = _field(line, "offset", (int,))
    if partition < 0 or offset < 0:
        raise ValueError('"partition" and "offset" must not be negative')
    # The clock guard compares it with event times: only an integer (or null) means a time.
    timestamp_ms = _field(line, "timestamp_ms", (int,), required=False)
    key = _field(line, "key", (str,), required=False)
    if "value_b64" in line:
        try:
            value: bytes | None = base64.b64decode(_field(line, "value_b64", (str,)), validate=True)
        except binascii.Error as exc:
            raise ValueError(f'"value_b64" is not base64: {exc}') from None
    else:
        v = line.get("value")
        value = None if v is None else (v.encode("utf-8") if isinstance(v, str) else codec.dumps(v))
    return KafkaRecord(topic, partition, offset, timestamp_ms, key.encode("utf-8") if key is not None else None, value)


def parse_line(raw: bytes, where: str, n: int) -> KafkaRecord:
    """Line `n` of replay file `where` as a record, or `ReplayLineError` naming the line."""
    try:
        return line_to_record(codec.loads(raw))
    except (codec.JSONDecodeError, UnicodeEncodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReplayLineError(f"{where}:{n}: not a replay record: {reason}") from None


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
    wanted = set(topics)
    found: set[int] = set()
    loads, error = codec.loads, codec.JSONDecodeError
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                line = loads(raw)
            except error:
                continue
            if type(line) is dict and line.get("topic") in wanted:
                p = line.get("partition")
                if type(p) is int and p >= 0:
                    found.add(p)
    return found


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

    def keep(self, rec: KafkaRecord) -> bool:
        tp = (rec.topic, rec.partition)
        if tp in self.ended:
            return False
        ts = rec.timestamp_ms
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
    sequence number among that partition's outputs to `topic`."""
    return (
        codec.dumps(
            {
                "topic": topic,
                "partition": partition,
                "offset": seq,
                "timestamp_ms": d.at_ms,
                "key": d.key.decode("utf-8", "replace") if d.key is not None else None,
                "value": d.value,
            }
        )
        + b"\n"
    )
