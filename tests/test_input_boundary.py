"""The live worker's input boundary without a broker: each topic partition in offset order, each
offset once, no silent gap (stream/worker/boundary.py and the shell that applies it)."""

from __future__ import annotations

import asyncio
import doctest
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from stream.worker import boundary
from stream.worker.boundary import Gap, GapNotFilled, merge_filled, plan_batch
from stream.worker.shell import ReconcileShell
from tests.scenario import LEDGER, PAYMENT, scenario_records

# Refund holds off: these tests are about the input boundary (no incidents topic here).
SETTINGS = Settings(payment_topic=PAYMENT, ledger_topic=LEDGER, partitions=2, max_hold_s=0)


def rec(offset: int, topic: str = "t", partition: int = 0) -> KafkaRecord:
    return KafkaRecord(topic, partition, offset, None, None, f"{offset}".encode())


def test_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(boundary, raise_on_error=False, verbose=False)
    assert tried > 0 and failures == 0


def test_a_batch_is_split_per_topic_partition_in_offset_order() -> None:
    plans = plan_batch(
        {("t", 0): 10, ("u", 0): 0},
        [rec(12), rec(3, "u"), rec(10), rec(9), rec(11), rec(0, "u"), rec(1, "t", 1)],
    )
    assert [r.offset for r in plans[("t", 0)].records] == [10, 11, 12]
    assert plans[("t", 0)].redelivered == 1 and plans[("t", 0)].gaps == []
    assert [r.offset for r in plans[("u", 0)].records] == [0, 3]
    assert plans[("u", 0)].gaps == [Gap("u", 0, 1, 3)]
    # A partition the state knows nothing of starts at offset 0: offsets before are missing.
    assert plans[("t", 1)].gaps == [Gap("t", 1, 0, 1)]


def test_a_repeated_offset_in_one_batch_is_taken_once_the_first_delivered() -> None:
    first = KafkaRecord("t", 0, 4, None, None, b"first")
    again = KafkaRecord("t", 0, 4, None, None, b"again")
    plan = plan_batch({("t", 0): 4}, [first, again])[("t", 0)]
    assert plan.records == [first] and plan.redelivered == 1


def test_fetched_records_fill_only_the_gaps_and_the_rest_is_confirmed_empty() -> None:
    plan = plan_batch({("t", 0): 0}, [rec(4), rec(9)])[("t", 0)]
    assert [(g.start, g.end) for g in plan.gaps] == [(0, 4), (5, 9)]
    merged, empty = merge_filled(plan, [rec(1), rec(4), rec(6), rec(7), rec(12)])
    assert [r.offset for r in merged] == [1, 4, 6, 7, 9]
    assert empty == 5  # 0, 2, 3, 5, 8: markers or compacted away


# -- the shell with the boundary, a store in memory and a stand-in broker ---------------------


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}

    def put_many(self, partition: int, changes: list[tuple[bytes, bytes | None]]) -> None:
        part = self.data.setdefault(partition, {})
        for key, value in changes:
            if value is None:
                part.pop(key, None)
            else:
                part[key] = value

    def load(self, partition: int) -> list[tuple[bytes, bytes]]:
        return list(self.data.get(partition, {}).items())


class Broker:
    """What the topics hold: serves gaps as the side consumer does, and counts the reads."""

    def __init__(self, records: Iterable[KafkaRecord]) -> None:
        self.records = list(records)
        self.reads: list[Gap] = []

    async def fetch(self, gap: Gap) -> list[KafkaRecord]:
        self.reads.append(gap)
        return [
            r
            for r in self.records
            if (r.topic, r.partition) == (gap.topic, gap.partition) and gap.start <= r.offset < gap.end
        ]


def make_shell(store: MemoryStore, broker: Broker | None, sent: list[tuple[str, dict[str, Any]]]) -> ReconcileShell:
    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append((topic, orjson.loads(value)))

    async def nothing() -> None:
        return None

    return ReconcileShell(SETTINGS, store, send, nothing, nothing, fetch_gap=broker.fetch if broker else None)


def stamped(partitions: int) -> list[KafkaRecord]:
    """The hand-made day with Kafka timestamps, as a broker gives them (without one, a dead
    letter's alert time falls back to the newest event time seen, which depends on how the
    two topics interleave)."""
    return [
        KafkaRecord(r.topic, r.partition, r.offset, 1743206400000 + 1000 * i, r.key, r.value)
        for i, r in enumerate(scenario_records(partitions))
    ]


def canon(values: Iterable[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


def replay_outputs(records: list[KafkaRecord]) -> list[bytes]:
    # Burst incidents (partition -1) come from the signals topic's detector, not from the shell.
    return canon(d.value for p, d in replay(records, SETTINGS.params, drain=True) if p != -1)


def live_outputs(shell: ReconcileShell, sent: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    for p in range(SETTINGS.partitions):
        for d in shell.engine(p).drain():
            if d.role != "signals":
                sent.append((SETTINGS.output_topic(d.role), d.value))
    return canon(v for topic, v in sent if topic != SETTINGS.signals_topic)


def test_a_record_faust_left_out_of_a_batch_is_read_from_the_broker_and_taken_once_in_order() -> None:
    """As in issue 9: one batch held offsets 309-856 and 858-916; 857 was a `settled`. The
    shell reads 857 from the broker and takes it before 858; when Faust delivers it later, it
    is a redelivery and is skipped. Decisions equal a replay in offset order, none twice."""
    records = stamped(SETTINGS.partitions)
    p0_payments = [r for r in records if r.topic == PAYMENT and r.partition == 0]
    settled = next(r for r in p0_payments[5:] if b'"settled"' in (r.value or b""))
    half = len(records) // 2
    first = [r for r in records[:half] if r is not settled]
    rest = [r for r in records[half:] if r is not settled]
    assert settled in records[:half]
    store, broker, sent = MemoryStore(), Broker(records), []
    shell = make_shell(store, broker, sent)
    asyncio.run(shell.process_records(first))
    asyncio.run(shell.process_records([settled, *rest]))  # Faust hands it over late
    assert [(g.topic, g.partition, g.start, g.end) for g in broker.reads] == [
        (PAYMENT, 0, settled.offset, settled.offset + 1)
    ]
    assert shell.counts["gap_records_fetched"] == 1 and shell.counts["gap_offsets_empty"] == 0
    assert shell.counts["redelivered_skipped"] == 1
    assert shell.counts["records"] == len(records)
    assert live_outputs(shell, sent) == replay_outputs(records)


def test_after_a_restart_redeliveries_are_skipped_and_a_hole_is_filled_from_the_broker() -> None:
    """A restarted shell knows from the saved state where each topic partition stands: what
    Kafka delivers again from an older commit is skipped, and what Faust acked as a gap but
    never handed over is read from the broker. Nothing is missed or decided twice."""
    records = stamped(SETTINGS.partitions)
    cut = len(records) * 2 // 3
    store, broker, sent = MemoryStore(), Broker(records), []
    shell = make_shell(store, broker, sent)
    for i in range(0, cut, 17):
        asyncio.run(shell.process_records(records[i : min(i + 17, cut)]))
    assert broker.reads == []
    # The successor: the commit was well behind the state; and Faust skips a few records.
    skipped = {id(r) for r in records[cut : cut + 40 : 9]}
    again = [r for r in records[cut // 2 :] if id(r) not in skipped]
    shell2 = make_shell(store, broker, sent)
    for i in range(0, len(again), 23):
        asyncio.run(shell2.process_records(again[i : i + 23]))
    assert shell2.counts["gap_records_fetched"] == len(skipped)
    assert shell2.counts["redelivered_skipped"] == cut - cut // 2
    assert shell.counts["records"] + shell2.counts["records"] == len(records)
    assert live_outputs(shell2, sent) == replay_outputs(records)
    assert len(sent) == len(set(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for _t, v in sent))


def test_a_gap_with_nothing_on_the_broker_is_accepted_and_counted() -> None:
    records = [r for r in stamped(1) if r.topic == LEDGER]
    with_holes = [r for r in records if r.offset % 5 != 3]  # e.g. transaction markers
    sent: list[tuple[str, dict[str, Any]]] = []
    shell = make_shell(MemoryStore(), Broker(with_holes), sent)
    asyncio.run(shell.process_records(with_holes))
    assert shell.counts["gap_offsets_empty"] == len(records) - len(with_holes)
    assert shell.counts["gap_records_fetched"] == 0
    assert shell.counts["records"] == len(with_holes)


def test_without_a_broker_to_read_from_a_gap_is_an_error_not_a_skip() -> None:
    records = [r for r in stamped(1) if r.topic == LEDGER]
    shell = make_shell(MemoryStore(), None, [])
    with pytest.raises(GapNotFilled, match="offsets missing"):
        asyncio.run(shell.process_records(records[3:]))
    assert shell.counts["records"] == 0


def test_a_replay_file_that_repeats_its_records_is_decided_with_holds_on() -> None:
    """A file holding its records twice (a dump appended to itself: the same offsets again) is
    processed in the order read with holds on: a reference's waiting records are found by their
    heap item, not by stream and offset, which repeat here (`partition.Item`)."""
    recs = stamped(1)
    s = Settings()
    assert s.params.holds and s.params.burst_signals  # (waiting records kept: `pending`)
    decided = list(replay(iter(recs + recs), s.params, drain=True, burst=s.burst))
    assert len(decided) >= len(list(replay(iter(recs), s.params, drain=True, burst=s.burst)))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_replay_processes_a_file_whose_offsets_go_back_and_says_so(
    jobs: str, tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """Offsets 5, 7, 6 of one topic partition: replay used to drop 6 silently. It is taken in
    the order read (the contract's replay format), exactly as if its offsets rose in that
    order, and replay warns on stderr (the jobs are processes: their stderr is the fd's)."""

    from stream.cli import main
    from stream.drivers.replayfile import write_records

    recs = [r for r in stamped(1) if r.topic == LEDGER][:8]
    moved = [*recs[:5], recs[6], recs[5], recs[7]]
    renumbered = [r._replace(offset=i) for i, r in enumerate(moved)]
    outs = []
    for name, records in (("disordered", moved), ("renumbered", renumbered)):
        path, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-out.jsonl"
        with open(path, "wb") as fh:
            write_records(fh, records)
        status = main(["replay", "--in", str(path), "--out", str(out), "--jobs", jobs, "--drain", "--max-hold-s", "0"])
        assert status == 0
        outs.append([line for line in out.read_bytes().splitlines()])
        err = capfd.readouterr().err
        if name == "disordered":
            assert "1 record(s) at or below an earlier offset of their topic partition" in err
        else:
            assert "earlier offset" not in err
    assert outs[0] and outs[0] == outs[1]


@pytest.mark.parametrize("holds", [[], ["--max-hold-s", "0"]], ids=["holds", "no-holds"])
@pytest.mark.parametrize("drain", [[], ["--drain"]], ids=["", "drain"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_replay_says_once_how_many_offsets_went_back_over_all_jobs(
    jobs: str, drain: list[str], holds: list[str], tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """One record back in each of two partitions: one warning line for the file, counting both,
    whatever the jobs' split and whether a one-pass replay gave way to two passes (not a line
    from each job, nor one from the abandoned pass)."""
    from stream.cli import main

    def line(partition: int, offset: int) -> bytes:
        return orjson.dumps(
            {
                "topic": "qris.payment-requests",
                "partition": partition,
                "offset": offset,
                "timestamp_ms": 1000 + offset,
                "key": "R1",
                "value": "not json",
            }
        )

    path, out = tmp_path / "back.jsonl", tmp_path / "out.jsonl"
    path.write_bytes(
        b"\n".join(line(p, o) for p, o in ((0, 5), (0, 7), (0, 6), (1, 2), (1, 1), (2, 0), (2, 1), (3, 1), (3, 0)))
    )
    assert main(["replay", "--in", str(path), "--out", str(out), "--jobs", jobs, *drain, *holds]) == 0
    err = capfd.readouterr().err.splitlines()
    said = [x for x in err if "earlier offset" in x]
    assert len(said) == 1 and "3 record(s) at or below an earlier offset" in said[0], said
    assert len(out.read_bytes().splitlines()) >= 9  # every record dead-lettered, none skipped
    # Partitions 0 and 1 start past offset 0 (their lowest offsets read: 5 and 1); partition 3's
    # offset 0 comes after its 1, but it is in the input: not said. One line for the file.
    late = [x for x in err if "start past offset 0" in x]
    assert len(late) == 1, late
    assert "2 input partition(s) start past offset 0 (qris.payment-requests[0] at offset 5, " in late[0]
    assert "qris.payment-requests[1] at offset 1)" in late[0] and "report --since" in late[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_delivery_faust_can_make_gives_the_decisions_of_a_replay_in_offset_order(data: st.DataObject) -> None:
    """Batches of any size; records left out (read from the broker) or delivered late; runs of
    records delivered again from an older offset; restarts from the saved state between
    batches: the decisions are exactly a replay's, none made twice."""
    records = stamped(SETTINGS.partitions)
    last_of_tp = {(r.topic, r.partition): i for i, r in enumerate(records)}
    keep_last = set(last_of_tp.values())  # Kafka delivers the newest record eventually
    order: list[int] = []
    late: list[int] = []
    for i in range(len(records)):
        roll = data.draw(st.integers(0, 99))
        if roll < 4 and i not in keep_last:
            continue  # left out for good: only the broker read fills it
        if roll < 8 and i not in keep_last:
            late.append(i)  # delivered after later records
            continue
        order.append(i)
        if roll >= 97:  # a restart resumes from an older commit: a run delivered again
            order.extend(range(max(0, i - data.draw(st.integers(1, 30))), i + 1))
        if late and data.draw(st.booleans()):
            order.append(late.pop(0))
    order.extend(late)
    store, broker, sent = MemoryStore(), Broker(records), []
    shell = make_shell(store, broker, sent)
    taken = 0
    pos = 0
    while pos < len(order):
        size = data.draw(st.integers(1, 60))
        asyncio.run(shell.process_records([records[i] for i in order[pos : pos + size]]))
        pos += size
        if data.draw(st.integers(0, 9)) == 0:  # killed and restarted: engines from the store
            taken += shell.counts["records"]
            shell = make_shell(store, broker, sent)
    taken += shell.counts["records"]
    assert taken == len(records)
    assert live_outputs(shell, sent) == replay_outputs(records)
    assert len(sent) == len({orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for _t, v in sent})
