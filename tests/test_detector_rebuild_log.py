"""The log line of a burst detector rebuilt from the signals topic names the offsets it read:
not those retention deleted (said by their own ERROR and an INPUT_LOST alert), nor a range
that runs backwards when a snapshot covers it all."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from stream.settings import Settings
from stream.worker import bursts as bursts_module
from stream.worker.bursts import BurstShell


class SignalsLog:
    """The signals partition as a group-less consumer reads it: offsets `begins` .. `ends - 1`."""

    def __init__(self, begins: int, ends: int) -> None:
        self.begins, self.ends, self.at = begins, ends, 0

    def __call__(self, **config: Any) -> SignalsLog:
        return self

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assign(self, tps: list[Any]) -> None:
        return None

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tps[0]: self.begins}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tps[0]: self.ends}

    def seek(self, tp: Any, offset: int) -> None:
        self.at = offset

    async def position(self, tp: Any) -> int:
        return self.at

    async def getmany(self, tp: Any, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        got = [SimpleNamespace(offset=o, value=b"{}") for o in range(max(self.at, self.begins), self.ends)]
        self.at = max(self.at, self.ends)
        return {tp: got}


@pytest.mark.parametrize(
    ("snapshot", "upto", "begins", "ends", "said"),
    [
        (0, 10, 0, 12, "burst detector rebuilt from 10 signal reports (offsets 0 to 9)"),
        (4, 10, 0, 12, "burst detector rebuilt from 6 signal reports (offsets 4 to 9)"),
        (12, 10, 0, 12, "burst detector resumes at signals offset 12: no report to read before it"),
        # Retention deleted 0..3: read from 4 (0..3 are said gone on their own).
        (0, 10, 4, 12, "burst detector rebuilt from 6 signal reports (offsets 4 to 9)"),
        # All deleted: nothing read.
        (0, 10, 12, 12, "burst detector resumes at signals offset 10: no report to read before it"),
        # The topic ends at 7, before the detector's offset 10: recreated, its reports taken live.
        (0, 10, 0, 7, "burst detector resumes at signals offset 0: no report to read before it"),
    ],
)
def test_a_rebuilt_detector_logs_the_offsets_it_read(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    snapshot: int,
    upto: int,
    begins: int,
    ends: int,
    said: str,
) -> None:
    shell = BurstShell(Settings(partitions=1), 1, lambda *a: asyncio.sleep(0), lambda: asyncio.sleep(0))
    monkeypatch.setattr(bursts_module, "AIOKafkaConsumer", SignalsLog(begins, ends))
    monkeypatch.setattr(shell, "_take", lambda value, out: None)

    async def restored() -> tuple[Any, int | None]:
        if not snapshot:
            return None, None
        from stream.core.burst import BurstDetector

        return BurstDetector(shell.partitions, shell.settings.burst), snapshot

    monkeypatch.setattr(shell, "_restore_snapshot", restored)
    with caplog.at_level(logging.INFO, logger="qris_guard"):
        asyncio.run(shell._rebuild_detector(upto))
    said_by = ("burst detector rebuilt", "burst detector resumes")
    rebuilt = [r.getMessage() for r in caplog.records if r.getMessage().startswith(said_by)]
    assert rebuilt == [said]
