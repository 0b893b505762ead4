"""A detector rebuilt while the broker does not serve the signals partition for a minute (its
leader moving, the network) with every report still on it: not declared lost (a critical
INPUT_LOST alert and the reports skipped for good) but the rebuild fails, as a broker that does
not answer at all makes it fail, and is tried again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.worker import bursts as bursts_module
from tests.test_signals_boundary import Broker, no_snapshot, shell_for, signals  # noqa: F401 (autouse fixture)


class StalledConsumer:
    """The signals partition holds offsets 0..end-1; fetches return nothing."""

    end = 0

    def __init__(self, **_config: Any) -> None:
        self.at = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assign(self, tps: Any) -> None:
        return None

    def seek(self, tp: Any, offset: int) -> None:
        self.at = offset

    async def beginning_offsets(self, tps: Any) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: Any) -> dict[Any, int]:
        return dict.fromkeys(tps, self.end)

    async def position(self, tp: Any) -> int:
        return self.at

    async def getmany(self, tp: Any, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Any]]:
        return {}


def test_signals_on_the_broker_not_served_for_a_minute_are_not_declared_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    records = signals()
    monkeypatch.setattr(bursts_module, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(StalledConsumer, "end", len(records))
    sent: list[dict[str, Any]] = []
    shell = shell_for(Broker(records, committed=300), sent)
    with pytest.raises(RuntimeError, match="on the broker but none was read"):
        asyncio.run(shell.take_records(records[300:]))
    assert shell.counts["signals_lost"] == 0 and not [a for a in sent if a.get("kind") == "INPUT_LOST"]


def test_a_topic_that_really_ends_before_the_groups_offset_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    records = signals()
    monkeypatch.setattr(bursts_module, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(StalledConsumer, "end", 0)  # recreated: empty
    sent: list[dict[str, Any]] = []
    shell = shell_for(Broker(records, committed=300), sent)
    # Faust delivers the recreated topic from its start: its reports are new and taken, not
    # skipped as repeats of the old topic's offsets below the group's.
    asyncio.run(shell.take_records(records[:200]))
    lost = [a for a in sent if a.get("kind") == "INPUT_LOST"]
    assert [a["observed"]["first_offset"] for a in lost] == [0] and shell.counts["signals_lost"] == 300
    assert shell.counts["signals"] == 200 and shell.counts["redelivered_skipped"] == 0 and shell.next_offset == 200


def test_a_topic_recreated_under_a_snapshot_covering_the_groups_offset_is_taken_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = signals()
    monkeypatch.setattr(bursts_module, "AIOKafkaConsumer", StalledConsumer)
    monkeypatch.setattr(StalledConsumer, "end", 0)  # recreated: empty
    sent: list[dict[str, Any]] = []
    shell = shell_for(Broker(records, committed=300), sent)

    async def covering(self: Any) -> tuple[Any, int]:  # a snapshot of the old topic, past the group's offset
        return bursts_module.BurstDetector(2, shell.settings.burst), 400

    monkeypatch.setattr(bursts_module.BurstShell, "_restore_snapshot", covering)
    # The new topic's reports are new: taken, not skipped as repeats of the old one's below 400.
    asyncio.run(shell.take_records(records[:200]))
    assert shell.counts["signals"] == 200 and shell.counts["redelivered_skipped"] == 0 and shell.next_offset == 200
    # The snapshot holds the history: nothing is said lost.
    assert shell.counts["signals_lost"] == 0 and not [a for a in sent if a.get("kind") == "INPUT_LOST"]
