"""`copy-inputs`' pure parts: the key a record is copied with, its new partition, the merge of
the old partitions, the refusal of unusable targets; and, offline, that an outage day copied
from 2 to 4 and 3 partitions replays to the same refunds (the Kafka tier does it on the broker,
tests/test_kafka_copyinputs.py)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from stream.drivers.copyinputs import (
    CopyRefused,
    InputRecord,
    TopicTally,
    check_targets,
    merged,
    placed,
    reference_key,
    summary,
    target_partition,
)
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from stream.simulate import generate, partition_for
from tests.records import T0


def test_the_key_is_the_records_own_else_the_reference_in_its_value() -> None:
    assert reference_key(b"QR1", b'{"reference": "QR1"}') == (b"QR1", "key")
    # A key that is not the reference stays: the record is a key mismatch, dead-lettered as before.
    assert reference_key(b"QR9", b'{"reference": "QR1"}') == (b"QR9", "key")
    assert reference_key(b"\xff", None) == (b"\xff", "key")
    assert reference_key(None, b'{"event_id": "e", "reference": "QR1", "amount": 1}') == (b"QR1", "value")
    assert reference_key(None, '{"reference": "Café"}'.encode()) == ("Café".encode(), "value")
    assert reference_key(None, b'{"reference": "QR\\"1"}') == (b'QR"1', "value")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b'{"reference": "QR1"',  # cut
        b"[1, 2]",
        b'"QR1"',
        b'{"ref": "QR1"}',
        b'{"reference": 12345}',
        b'{"reference": null}',
        b'{"reference": "\\ud800"}',  # a lone surrogate: no UTF-8 key can equal it
    ],
)
def test_a_keyless_record_with_no_reference_to_read_keeps_no_key(value: bytes | None) -> None:
    assert reference_key(None, value) == (None, "none")


def test_the_partition_is_kafkas_default_partitioners_and_a_keyless_one_keeps_its_old_modulo() -> None:
    for ref in (b"QR2025032900000001", b"QR2025032900000002", "Café".encode(), b""):
        for n in (1, 3, 4, 8):
            assert target_partition(ref, 7, n) == partition_for(ref, n)
    assert [target_partition(None, old, 4) for old in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [target_partition(None, old, 3) for old in range(4)] == [0, 1, 2, 0]
    # kafka-python's and the Java client's vectors
    assert target_partition(b"abc", 0, 1000) == 107 and target_partition(b"123456789", 0, 1000) == 566


def _rec(partition: int, offset: int, ts: int, ref: str = "R") -> InputRecord:
    return InputRecord("p", partition, offset, ts, ref.encode(), b"{}")


def test_the_merge_interleaves_by_time_and_keeps_each_old_partitions_order() -> None:
    p0 = [_rec(0, 0, 100), _rec(0, 1, 300), _rec(0, 2, 200), _rec(0, 3, 300)]  # offset 2 dated earlier
    p1 = [_rec(1, 0, 100), _rec(1, 1, 250), _rec(1, 2, 300)]
    p2: list[InputRecord] = []
    order = [(r.partition, r.offset) for r in merged([p0, p1, p2])]
    # ties on time: the lower old partition first, then the offset
    assert order == [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (0, 3), (1, 2)]
    for part in (p0, p1):  # each partition's records in their offset order
        mine = [o for p, o in order if p == part[0].partition]
        assert mine == sorted(mine)
    assert sorted(order) == sorted((r.partition, r.offset) for r in p0 + p1)


def test_the_merge_is_lazy() -> None:
    taken: list[int] = []

    def part(p: int) -> object:
        for i in range(1000):
            taken.append(p)
            yield _rec(p, i, i * 10 + p)

    it = merged([part(0), part(1)])  # type: ignore[list-item]
    [next(it) for _ in range(3)]
    assert len(taken) <= 5


def test_placed_keeps_value_time_and_headers_and_counts() -> None:
    rec = InputRecord("old.p", 1, 42, 1_743_213_600_123, None, b'{"reference": "QR7"}', (("trace-id", b"\x00\x01"),))
    p = placed(rec, "new.p", 4)
    assert (p.topic, p.key, p.value, p.timestamp_ms, p.headers) == (
        "new.p",
        b"QR7",
        rec.value,
        rec.timestamp_ms,
        (("trace-id", b"\x00\x01"),),
    )
    assert p.partition == partition_for(b"QR7", 4) and p.key_source == "value" and p.source is rec
    tally = TopicTally("old.p", "new.p", 4)
    tally.count(p)
    tally.count(placed(rec._replace(key=b"QR1"), "new.p", 4))
    tally.count(placed(rec._replace(value=b"junk", partition=6), "new.p", 4))
    assert (tally.records, tally.keyed_from_value, tally.without_key) == (3, 1, 1)
    assert sum(tally.per_partition) == 3 and tally.per_partition[2] >= 1  # 6 % 4
    text = summary([tally], 1.25)
    assert text.startswith("copied 3 records in 1.2 s") or text.startswith("copied 3 records in 1.3 s")
    assert "1 keyless keyed by the reference in their value, 1 kept without a key" in text


def test_unusable_targets_are_refused_with_the_reason() -> None:
    src = ("in.p", "in.l")
    check_targets(src, ("new.p", "new.l"), 4, {}, {})
    check_targets(src, ("new.p", "new.l"), 4, {"new.p": 4}, {"new.p": 0})
    with pytest.raises(CopyRefused, match="same topic"):
        check_targets(src, ("new.p", "new.p"), 4, {}, {})
    with pytest.raises(CopyRefused, match="in.l is an input topic"):
        check_targets(src, ("new.p", "in.l"), 4, {}, {})
    with pytest.raises(CopyRefused, match="exists with 2 partitions, not --to-partitions 4"):
        check_targets(src, ("new.p", "new.l"), 4, {"new.l": 2}, {})
    with pytest.raises(CopyRefused, match=r"new.p is not empty \(12 records\)"):
        check_targets(src, ("new.p", "new.l"), 4, {"new.p": 4}, {"new.p": 12})


def _copied_offline(records: list[KafkaRecord], topics: tuple[str, str], partitions: int) -> list[KafkaRecord]:
    """What `copy_inputs` writes, as the new topics' records (offsets as on fresh topics)."""
    out: list[KafkaRecord] = []
    for topic in topics:
        old: dict[int, list[InputRecord]] = defaultdict(list)
        for r in records:
            if r.topic == topic:
                assert r.timestamp_ms is not None
                old[r.partition].append(InputRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value))
        offsets: dict[int, int] = defaultdict(int)
        for rec in merged(old[p] for p in sorted(old)):
            p = placed(rec, topic, partitions)
            out.append(KafkaRecord(topic, p.partition, offsets[p.partition], p.timestamp_ms, p.key, p.value))
            offsets[p.partition] += 1
    return out


def outage_day(minutes: float, seed: int) -> list[KafkaRecord]:
    """The `mixed` scenario (a switch outage, late settlements and reversals, redeliveries,
    disorder, malformed records) on 2 partitions, every 7th record sent without its key."""
    return [
        KafkaRecord(
            r.topic, r.partition, r.offset, r.timestamp_ms, None if i % 7 == 3 else (r.key or "").encode(), r.value
        )
        for i, r in enumerate(generate("mixed", seed=seed, start_ms=T0, minutes=minutes, partitions=2))
    ]


def refunds(records: list[KafkaRecord]) -> list[tuple[str, str, str, int]]:
    s = Settings()
    return sorted(
        (d.value["type"], d.value["refund_id"], d.value["reference"], d.value["amount"])
        for _p, d in replay(records, s.params, burst=s.burst, drain=True)
        if d.role == "refunds"
    )


@pytest.mark.parametrize("partitions", [4, 3])
def test_an_outage_day_copied_to_more_partitions_replays_to_the_same_refunds(partitions: int) -> None:
    s = Settings()
    old = outage_day(10, seed=3)
    new = _copied_offline(old, (s.payment_topic, s.ledger_topic), partitions)
    assert len(new) == len(old) and sorted(r.value or b"" for r in new) == sorted(r.value or b"" for r in old)
    before, after = refunds(old), refunds(new)
    assert len(before) > 300 and any(t == "refund.cancel_requested" for t, *_ in before)
    assert after == before
