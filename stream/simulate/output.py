"""Where simulated records go: a replay file in the contract's JSON Lines shape, or a Kafka
cluster through kafka-python's producer (keyed, so Kafka's default partitioner places them
exactly as the replay file says). The only module of the simulator that does I/O.
"""

import base64
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

import orjson

from stream.simulate.traffic import SimRecord

if TYPE_CHECKING:
    from stream.settings import Settings

_LINES_PER_WRITE = 4096


def replay_line(record: SimRecord) -> bytes:
    """One replay-file line (with its newline): ``value`` is the record's text exactly as on
    the topic, or ``value_b64`` when the bytes are not UTF-8.

    >>> replay_line(SimRecord("t", 0, 7, "R1", b'{"a":1}', 1000))
    b'{"topic":"t","partition":0,"offset":7,"timestamp_ms":1000,"key":"R1","value":"{\\\\"a\\\\":1}"}\\n'
    >>> replay_line(SimRecord("t", 1, 0, "R1", b"\\xff", 1000))[-20:]
    b'"value_b64":"/w=="}\\n'
    """
    line: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": record.key,
    }
    try:
        line["value"] = record.value.decode()
    except UnicodeDecodeError:
        line["value_b64"] = base64.b64encode(record.value).decode("ascii")
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def write_replay(records: Iterable[SimRecord], sink: IO[bytes]) -> int:
    """Write ``records`` to a binary file as replay lines (as ``replay_line``, inlined for
    speed); returns how many."""
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    count = 0
    batch: list[bytes] = []
    append = batch.append
    for topic, partition, offset, key, value, timestamp_ms in records:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            append(replay_line(SimRecord(topic, partition, offset, key, value, timestamp_ms)))
        else:
            line = {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "timestamp_ms": timestamp_ms,
                "key": key,
                "value": text,
            }
            append(dumps(line, option=newline))
        if len(batch) >= _LINES_PER_WRITE:
            sink.write(b"".join(batch))
            count += len(batch)
            batch.clear()
    sink.write(b"".join(batch))
    return count + len(batch)


def produce(
    records: Iterable[SimRecord],
    target: "str | Settings",
    *,
    partitions: int | None = None,
    linger_ms: int = 20,
    batch_size: int = 256 * 1024,
    flush_timeout_s: float = 120.0,
) -> int:
    """Send ``records`` to Kafka with acks=all, keyed (the default partitioner places them),
    each with its intended produce time as the record timestamp; returns how many were sent.

    ``target``: the settings to connect with (a bare address means PLAINTEXT). Each topic
    must already exist, with ``partitions`` partitions when given (the count the
    simulation assumed), else the replay file and the topic would disagree about where a
    reference lives. The first failed send is raised after the flush.
    """
    # Imported here: generating and writing files needs no Kafka client.
    from kafka import KafkaProducer
    from stream.security import kafka_python_config
    from stream.settings import Settings

    settings = target if isinstance(target, Settings) else Settings(bootstrap=target)
    bootstrap_servers = settings.bootstrap
    producer = KafkaProducer(
        **kafka_python_config(settings),
        acks="all",
        linger_ms=linger_ms,
        batch_size=batch_size,
        client_id="qris-guard-simulate",
    )
    checked: set[str] = set()
    failures: list[BaseException] = []
    count = 0
    try:
        for record in records:
            if record.topic not in checked:
                _check_topic(producer, record.topic, partitions)
                checked.add(record.topic)
            key = record.key.encode() if record.key is not None else None
            future = producer.send(record.topic, value=record.value, key=key, timestamp_ms=record.timestamp_ms)
            future.add_errback(failures.append)
            count += 1
            if failures:
                break
        producer.flush(timeout=flush_timeout_s)
    finally:
        producer.close(timeout=flush_timeout_s)
    if failures:
        raise RuntimeError(f"producing to {bootstrap_servers} failed: {failures[0]!r}")
    return count


class TopicUnusable(RuntimeError):
    """A topic the simulation cannot write as generated: missing, or another partition count."""


def _check_topic(producer: Any, topic: str, partitions: int | None) -> None:
    found = producer.partitions_for(topic)
    if not found:
        raise TopicUnusable(f"topic {topic} does not exist or has no partitions")
    if partitions is not None and len(found) != partitions:
        raise TopicUnusable(
            f"topic {topic} has {len(found)} partitions, the simulation assumed {partitions} "
            "(--partitions, else QRIS_PARTITIONS)"
        )
