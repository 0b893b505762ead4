"""Replay with refund holds in one pass (`stream/drivers/onepass.py`) against the two-pass replay
it replaces: the same decisions, byte for byte and in the same order, with and without
`--drain`; a partition list that is not the input's falls back to two passes without repeating
or losing a line."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import orjson
import pytest

from stream.core import codec
from stream.core.decisions import Decision
from stream.drivers.parallel import replay_file_parallel
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord, decision_line, file_partitions, write_records
from stream.simulate import generate
from tests.conftest import not_compiled
from tests.records import T0, ledger, payment
from tests.test_holds import HOLDS, _records


def _lines(decisions: list[tuple[int, Decision]]) -> list[bytes]:
    return [codec.dumps([p, d.role, d.value, d.at_ms]) for p, d in decisions]


def _rec(topic: str, partition: int, offset: int, value: bytes, ts: int | None = None) -> KafkaRecord:
    return KafkaRecord(topic, partition, offset, ts, orjson.loads(value)["reference"].encode(), value)


P_TOPIC, L_TOPIC = "qris.payment-requests", "qris.ledger-debits"


def _small() -> list[KafkaRecord]:
    # Two partitions with timeouts, a rejected record and a clock-skewed one (alerts of a record's
    # own, which the one pass gives at once and the second pass at the same place).
    return [
        _rec(P_TOPIC, 0, 0, payment("A-q", "requested", "A", 0)),
        _rec(L_TOPIC, 0, 0, ledger("A-d", "debited", "A", 0)),
        _rec(P_TOPIC, 1, 0, payment("B-q", "requested", "B", 10)),
        KafkaRecord(P_TOPIC, 1, 1, None, b"BAD", b"{not json"),
        _rec(L_TOPIC, 1, 0, ledger("B-d", "debited", "B", 10)),
        _rec(P_TOPIC, 0, 1, payment("C-q", "requested", "C", 200), ts=0),
        _rec(P_TOPIC, 0, 2, payment("T0-q", "requested", "T0", 400)),
        _rec(L_TOPIC, 0, 1, ledger("T0-d", "reversed", "T0", 400, 1)),
        _rec(P_TOPIC, 1, 2, payment("T1-q", "requested", "T1", 400)),
        _rec(L_TOPIC, 1, 1, ledger("T1-d", "reversed", "T1", 400, 1)),
    ]


@pytest.mark.parametrize("drain", [True, False])
@pytest.mark.parametrize("partitions", [None, {0, 1}, {0, 1, 7}])
def test_one_pass_gives_the_two_pass_lines_also_when_it_falls_back(drain: bool, partitions: Any) -> None:
    # {0, 1, 7}: partition 7 never reports, so the one pass gives up and the two passes go on.
    records = _small()
    two = list(replay(records, HOLDS, drain=drain, one_pass=False))
    one = list(replay(records, HOLDS, drain=drain, partitions=partitions))
    assert any(d.role == "dead_letter" for _p, d in two)
    assert any(d.value.get("kind") == "CLOCK_SKEW" for _p, d in two)
    assert _lines(one) == _lines(two)


def test_a_partition_with_one_stream_only_falls_back_without_drain() -> None:
    records = [*_small(), _rec(P_TOPIC, 2, 0, payment("D-q", "requested", "D", 5))]
    two = list(replay(records, HOLDS, one_pass=False))
    assert _lines(list(replay(records, HOLDS))) == _lines(two)
    assert _lines(list(replay(records, HOLDS, drain=True))) == _lines(
        list(replay(records, HOLDS, drain=True, one_pass=False))
    )


def test_the_partitions_of_a_replay_file(tmp_path: Any) -> None:
    path = tmp_path / "day.jsonl"
    with open(path, "wb") as fh:
        write_records(fh, [*_small(), KafkaRecord("other", 9, 0, None, None, b"x")])
        fh.write(b"\n{not a record\n")
    assert file_partitions(str(path), (P_TOPIC, L_TOPIC)) == {0, 1}


@pytest.mark.slow
@pytest.mark.parametrize("drain", [True, False])
def test_the_outage_in_one_pass_is_the_two_pass_replay_line_for_line(drain: bool) -> None:
    records = _records("outage")
    two = list(replay(records, HOLDS, drain=drain, one_pass=False))
    one = list(replay(records, HOLDS, drain=drain))
    assert sum(1 for _p, d in two if d.value.get("type") == "refund.held") > 10
    assert any(p == -1 and "holds" in d.value for p, d in two)
    assert _lines(one) == _lines(two)


def _file_lines(decisions: list[tuple[int, Decision]]) -> list[bytes]:
    # As `qris-guard replay` writes them: offsets numbered per output topic and partition.
    topics = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}
    seq: dict[tuple[str, int], int] = {}
    out = []
    for p, d in decisions:
        k = (topics[d.role], p)
        seq[k] = seq.get(k, -1) + 1
        out.append(decision_line(k[0], p, seq[k], d))
    return out


@pytest.mark.parametrize("drain", [True, False])
@pytest.mark.parametrize("one_stream_partition", [False, True])
def test_a_parallel_replay_in_one_pass_gives_the_two_pass_lines(
    tmp_path: Any, drain: bool, one_stream_partition: bool
) -> None:
    # With a partition of one stream only and no drain, the jobs' one pass gives up and the two
    # passes run instead.
    records = _small()
    if one_stream_partition:
        records.append(_rec(P_TOPIC, 2, 0, payment("D-q", "requested", "D", 5)))
    path = tmp_path / "day.jsonl"
    with open(path, "wb") as fh:
        write_records(fh, records)
    topics = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}
    out = io.BytesIO()
    n = replay_file_parallel(str(path), HOLDS, drain=drain, jobs=2, topics=topics, out=out)
    expected = _file_lines(list(replay(records, HOLDS, drain=drain, one_pass=False)))
    assert n == len(expected)
    assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(expected)


@pytest.mark.slow
@not_compiled  # (it patches `partition.signals_decisions`, which compiled code calls directly)
def test_the_outage_with_every_report_in_parts_gives_the_same_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reports past `SIGNALS_PART_MAX_BYTES` go in parts (a national switch's partition-minute has
    # tens of thousands of merchants); here every report of the outage is cut small.
    from stream.core import partition, signals

    records = _records("outage")
    whole = list(replay(records, HOLDS, drain=True))
    sizes: list[int] = []

    def counted(*args: Any) -> list[Decision]:
        made = signals.signals_decisions(*args)
        sizes.append(len(made))
        return made

    monkeypatch.setattr(partition, "signals_decisions", counted)
    cut = list(replay(records, replace(HOLDS, signals_part_max_bytes=2_000), drain=True))
    assert sum(1 for _p, d in whole if d.value.get("type") == "refund.held") > 10
    assert max(sizes) > 3 and sum(sizes) > 2 * len(sizes)  # reports in parts indeed
    assert _lines(cut) == _lines(whole)


@pytest.mark.parametrize("offset_ms", [0, 1, -1])
def test_a_record_whose_time_is_refused_is_refused_alike_by_both_passes_with_its_original_bytes(offset_ms: int) -> None:
    # The engine refuses a time whose deadline RFC 3339 cannot write (`partition.out_of_range`).
    # A helper's review of this stop: the two-pass replay's first pass (holds off) used another
    # limit than live (it depended on H), and its second pass had dropped a parsed record's bytes,
    # so the dead letter said the value was null. Both passes now refuse at the same time, and the
    # second keeps the bytes of any record the engine might refuse for its time.
    from stream.core.eventtime import format_ms
    from stream.core.partition import occurred_max_ms
    from tests.records import payment
    from tests.test_holds import HOLDS

    v = orjson.loads(payment("Z-q", "requested", "Z", 0))
    v["occurred_at"] = format_ms(occurred_max_ms(HOLDS) + offset_ms)
    records = [*_small(), KafkaRecord("qris.payment-requests", 0, 3, None, b"Z", orjson.dumps(v))]
    one, two = list(replay(records, HOLDS)), list(replay(records, HOLDS, one_pass=False))
    assert _lines(one) == _lines(two)
    dead = [d.value for _, d in one if d.role == "dead_letter" and d.value["source_offset"] == 3]
    assert len(dead) == (offset_ms > 0)
    for d in dead:
        assert d["field"] == "occurred_at" and d["value_length"] == len(orjson.dumps(v)) and d["value_b64"]


def _outage_then_a_gap(gap_ms: int) -> list[KafkaRecord]:
    # Two outages of 20 minutes on 2 partitions, the second `gap_ms` after the first: a dump
    # spanning a quiet gap (offsets go on per topic partition).
    first = T0 + 2 * 3600 * 1000
    records: list[KafkaRecord] = []
    offsets: dict[tuple[str, int], int] = {}
    for seed, start in ((3, first), (4, first + 20 * 60_000 + gap_ms)):
        for topic, partition, _offset, key, value, ts in generate(
            "outage", seed=seed, start_ms=start, minutes=20, rate_per_min=100, partitions=2
        ):
            offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
            records.append(KafkaRecord(topic, partition, offset, ts, key.encode() if key is not None else None, value))
    return records


@pytest.mark.parametrize("drain", [True, False])
def test_a_jump_of_more_than_r_in_event_time_decides_alike_in_one_pass_and_two(tmp_path: Any, drain: bool) -> None:
    # A replay file whose event time jumps by more than R (here 1 h) in one step. With holds off
    # (the two passes' first pass), the decisions up to the jump dropped the payments of the
    # minutes still open (their retention passed) before those minutes closed: the burst
    # signals counted them as no payment, and the two passes found fewer bursts, and held fewer
    # refunds, than the one pass, whose decisions wait for the incidents (a helper's replay
    # fuzz: 6 bursts against 10, 40 holds against 56). Now the minutes close first.
    records = _outage_then_a_gap(3 * HOLDS.retention_ms)
    one = _file_lines(list(replay(records, HOLDS, drain=drain)))
    two = _file_lines(list(replay(records, HOLDS, drain=drain, one_pass=False)))
    assert sum(b'"FAILURE_BURST"' in line and b'"opened"' in line for line in one) >= 2
    assert sum(b"refund.held" in line for line in one) > 10
    assert one == two
    path = tmp_path / "gap.jsonl"
    with open(path, "wb") as fh:
        write_records(fh, records)
    out = io.BytesIO()
    topics = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}
    replay_file_parallel(str(path), HOLDS, drain=drain, jobs=2, topics=topics, out=out)
    assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(one)


@pytest.mark.parametrize("drain", [True, False])
def test_a_reference_whose_next_record_comes_after_its_retention_is_judged_anew_in_one_pass_as_in_two(
    drain: bool,
) -> None:
    # 60 debits in a quiet gap, each reference's request R + 1 min later inside the second
    # outage, and the watermark passing both in one step. The decisions drop each debit at its
    # retention check before the request comes: the request is a payment with no answer. The
    # one pass judged the minute from a view that kept the debit (60 unsettled, Rp 5.4 m
    # exposed more); the view now drops what the decisions will drop.
    from stream.core.eventtime import format_ms, parse_ms

    params = replace(HOLDS, retention_ms=3 * 3600 * 1000)  # R >= T + H: the drop is certain
    r_ms = params.retention_ms
    base = _outage_then_a_gap(3 * r_ms)
    second = T0 + 2 * 3600 * 1000 + 20 * 60_000 + 3 * r_ms
    asked = second + 5 * 60_000

    def values(topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in base if r.topic == topic and r.partition == 0]

    pays, debits = values(P_TOPIC), values(L_TOPIC)
    refs = [f"GAP{i:04d}" for i in range(60)]
    late = [
        dict(pays[0], event_id=ref + ":q", reference=ref, occurred_at=format_ms(asked + i), amount=90_000)
        for i, ref in enumerate(refs)
    ]
    early = [
        dict(debits[0], event_id=ref + ":d", reference=ref, occurred_at=format_ms(asked - r_ms - 60_000 + i))
        for i, ref in enumerate(refs)
    ]
    before = [v for v in debits if parse_ms(v["occurred_at"]) < second]
    ledger_0 = before + [dict(v, amount=90_000, entry_id="J" + v["reference"]) for v in early] + debits[len(before) :]
    payments_0 = sorted(pays + late, key=lambda v: parse_ms(v["occurred_at"]))

    def partition_0(topic: str, vals: list[dict[str, Any]]) -> list[KafkaRecord]:
        return [
            KafkaRecord(topic, 0, i, parse_ms(v["occurred_at"]) + 5, v["reference"].encode(), orjson.dumps(v))
            for i, v in enumerate(vals)
        ]

    records = [
        *partition_0(P_TOPIC, payments_0),
        *partition_0(L_TOPIC, ledger_0),
        *(r for r in base if r.partition != 0),
    ]
    one = _file_lines(list(replay(records, params, drain=drain)))
    two = _file_lines(list(replay(records, params, drain=drain, one_pass=False)))
    assert one == two
    opened = [orjson.loads(line)["value"] for line in one if b'"GAP0000"' in line and b'"opened"' in line]
    assert opened and all(a["observed"]["no_answer"] >= 60 for a in opened)
