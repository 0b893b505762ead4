"""The contract's replay file: JSON Lines, one Kafka record per line, in the order read.

`{"topic", "partition", "offset", "timestamp_ms", "key", "value"}`; `value_b64` replaces `value`
for bytes that are not UTF-8. Output files use the same shape with `value` holding the emitted
JSON object.
"""

from __future__ import annotations

import base64
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


def line_to_record(line: dict[str, Any]) -> KafkaRecord:
    key = line.get("key")
    if "value_b64" in line:
        value: bytes | None = base64.b64decode(line["value_b64"])
    else:
        v = line.get("value")
        value = None if v is None else (v.encode("utf-8") if isinstance(v, str) else codec.dumps(v))
    timestamp_ms = line.get("timestamp_ms")
    if timestamp_ms is not None and type(timestamp_ms) is not int:
        # The clock guard compares it with event times: only an integer (or null) means a time.
        raise ValueError(f"timestamp_ms must be an integer of epoch milliseconds or null, got {timestamp_ms!r:.40}")
    return KafkaRecord(
        line["topic"],
        int(line["partition"]),
        int(line["offset"]),
        timestamp_ms,
        key.encode("utf-8") if key is not None else None,
        value,
    )


def read_records(fh: IO[bytes]) -> Iterator[KafkaRecord]:
    for _n, rec in numbered_records(fh):
        yield rec


def numbered_records(fh: IO[bytes]) -> Iterator[tuple[int, KafkaRecord]]:
    """(line number, record) for every record line, so errors can name the line."""
    for n, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        try:
            rec = line_to_record(codec.loads(raw))
        except (codec.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"replay file line {n} is not a replay record: {exc}") from None
        yield n, rec


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
