"""The burst detector's intake (`BurstShell`) without a broker: the signals partition gets the
input's boundary. Batches as Faust may hand them (a record missing and delivered later,
repeats, out of order, a takeover whose first batch starts past the group's committed offset,
nothing delivered at all) give the detector every record from its position once and in order,
so the same alerts as the reports taken one by one; what is missing is read from a fake broker."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from stream.worker import bursts as bursts_module
from stream.worker.boundary import Gap, GapNotFilled
from stream.worker.bursts import BurstShell
from tests.test_burst import outage_reports

# Holds off: alerts go out as the detector makes them (with holds, updated/resolved wait for
# hold reports). No snapshots: they would be written to a broker.
SETTINGS = Settings(partitions=2, max_hold_s=0, snapshot_every=0)
TOPIC = SETTINGS.signals_topic


def signals(settings: Settings = SETTINGS) -> list[KafkaRecord]:
    reports = outage_reports()
    return [KafkaRecord(settings.signals_topic, 0, i, None, None, orjson.dumps(r)) for i, r in enumerate(reports)]


class Broker:
    """The signals partition as a broker has it: gaps are read from it, counted."""

    def __init__(self, records: list[KafkaRecord], committed: int | None = None) -> None:
        self.records = records
        self.committed_offset = committed
        self.reads: list[tuple[int, int]] = []

    async def fetch(self, gap: Gap) -> list[KafkaRecord]:
        assert (gap.topic, gap.partition) == (TOPIC, 0)
        self.reads.append((gap.start, gap.end))
        return [r for r in self.records if gap.start <= r.offset < gap.end]

    async def committed(self) -> int | None:
        return self.committed_offset


def shell_for(broker: Broker | None, sent: list[dict[str, Any]], settings: Settings = SETTINGS) -> BurstShell:
    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        if topic == settings.alert_topic:
            sent.append(orjson.loads(value))

    async def nothing() -> None:
        return None

    if broker is None:
        return BurstShell(settings, 2, send, nothing)
    return BurstShell(settings, 2, send, nothing, fetch_gap=broker.fetch, committed=broker.committed)


@pytest.fixture(autouse=True)
def no_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    async def none(settings: Settings) -> None:
        return None

    monkeypatch.setattr(bursts_module, "read_latest_snapshot", none)
    monkeypatch.setattr(bursts_module, "read_published_offset", none)


def reference(records: list[KafkaRecord]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    shell = shell_for(Broker(records, None), sent)
    for r in records:
        asyncio.run(shell.take_records([r]))
    return sent


def ids(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["alert_id"] for a in alerts]


def test_the_outage_makes_alerts_to_compare() -> None:
    want = reference(signals())
    assert len(want) >= 2 and {a["status"] for a in want} >= {"opened", "resolved"}


def test_a_record_missing_from_a_batch_is_read_from_the_broker_and_taken_once_in_order() -> None:
    records = signals()
    want = reference(records)
    broker = Broker(records, None)
    sent: list[dict[str, Any]] = []
    shell = shell_for(broker, sent)
    missing = {700, 701, 905, 1100}
    delivered = [r for r in records if r.offset not in missing]
    shuffled = delivered[600:900][::-1]  # out of order within a batch
    batches = [delivered[:600], [*shuffled, *shuffled[:50]], delivered[900:]]
    batches.append([r for r in records if r.offset in missing])  # delivered late: redeliveries
    for b in batches:
        asyncio.run(shell.take_records(b))
    assert ids(sent) == ids(want)
    assert shell.counts["signals"] == len(records) and shell.next_offset == len(records)
    assert shell.counts["gap_records_fetched"] == len(missing)
    assert shell.counts["redelivered_skipped"] == 50 + len(missing)
    # one read per batch and partition, from its first gap to its last (905 and 1100 came in one batch)
    assert broker.reads == [(700, 702), (905, 1101)]


def test_a_takeover_whose_first_batch_starts_past_the_committed_offset_reads_the_rest_live() -> None:
    """After a rebalance Faust should deliver from the group's committed offset (0: none). Here
    it starts at 300: offsets 0-299 are read from the broker and their alerts sent, not rebuilt
    with alerts suppressed (before, the detector was rebuilt up to the first delivered offset)."""
    records = signals()
    want = reference(records)
    broker = Broker(records, None)
    sent: list[dict[str, Any]] = []
    shell = shell_for(broker, sent)
    asyncio.run(shell.take_records(records[300:]))
    assert ids(sent) == ids(want)
    assert broker.reads == [(0, 300)] and shell.counts["gap_records_fetched"] == 300


def test_with_no_broker_to_read_from_a_gap_fails_the_batch() -> None:
    records = signals()
    shell = shell_for(None, [])
    asyncio.run(shell.take_records(records[:10]))
    with pytest.raises(GapNotFilled):
        asyncio.run(shell.take_records(records[11:20]))
    assert shell.next_offset == 10  # nothing past the gap taken


def test_signals_never_delivered_are_caught_up_from_the_broker_and_not_taken_again() -> None:
    """The case seen once: after a rebalance the detector's agent got none of offsets 0-36 and
    nothing after them showed the gap. The feed check finds the committed offset behind the
    broker's end and `catch_up` takes what is there; Faust's late delivery is skipped."""
    records = signals()
    want = reference(records)
    broker = Broker(records, None)
    sent: list[dict[str, Any]] = []
    shell = shell_for(broker, sent)
    assert asyncio.run(shell.position()) == 0  # no detector yet: the committed offset (none: 0)
    assert asyncio.run(shell.catch_up(len(records))) == len(records)
    assert ids(sent) == ids(want) and asyncio.run(shell.position()) == len(records)
    asyncio.run(shell.take_records(records[:500]))  # Faust delivers them after all
    assert asyncio.run(shell.catch_up(len(records))) == 0
    assert ids(sent) == ids(want)
    assert shell.counts["caught_up"] == len(records) and shell.counts["redelivered_skipped"] == 500


def test_catching_up_stops_at_the_end_asked_and_a_broker_that_does_not_answer_takes_nothing() -> None:
    records = signals()
    broker = Broker(records, None)
    shell = shell_for(broker, [])
    assert asyncio.run(shell.catch_up(100)) == 100 and shell.next_offset == 100

    async def no_answer(gap: Gap) -> list[KafkaRecord]:
        raise GapNotFilled("no answer")

    shell.fetch_gap = no_answer
    assert asyncio.run(shell.catch_up(200)) == 0 and shell.next_offset == 100
    shell.fetch_gap = broker.fetch
    assert asyncio.run(shell.catch_up(200)) == 100 and shell.counts["signals"] == 200


def test_after_a_rebalance_the_position_is_the_committed_offset_until_the_detector_is_rebuilt() -> None:
    records = signals()
    broker = Broker(records, 0)
    shell = shell_for(broker, [])
    asyncio.run(shell.take_records(records[:40]))
    shell.forget()
    broker.committed_offset = 37
    assert asyncio.run(shell.position()) == 37
    assert asyncio.run(shell_for(None, []).position()) is None  # no group to ask: not known


def test_a_process_batch_of_faust_events_goes_through_the_boundary() -> None:
    from types import SimpleNamespace

    records = signals()
    want = reference(records)
    broker = Broker(records, None)
    sent: list[dict[str, Any]] = []
    shell = shell_for(broker, sent)

    def events(rs: list[KafkaRecord]) -> list[Any]:  # Faust's events carry more; the shell reads these
        return [SimpleNamespace(message=SimpleNamespace(offset=r.offset, value=r.value)) for r in rs]

    asyncio.run(shell.process_batch(events(records[:100])))
    asyncio.run(shell.process_batch(events([*records[150:], *records[90:120]])))
    assert ids(sent) == ids(want) and shell.counts["gap_records_fetched"] == 30  # 120..149
