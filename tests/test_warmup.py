"""Warm-up and snapshots of the burst detector, offline: a detector warmed from history acts at
once where a cold one must still learn, and `qris-guard warmup` writes the snapshot the live
worker restores (the Kafka tier checks the takeover itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.cli import main
from stream.core import burstsnapshot
from stream.core.burst import BurstDetector, BurstParams
from stream.core.partition import Params
from stream.drivers import warmup
from stream.drivers.replay import Replay
from stream.drivers.replayfile import KafkaRecord
from stream.simulate import generate, write_replay
from tests.test_burst import M0, busy_minute, report, run

TUESDAY_08_WIB_MS = 1742749200000 + 32 * 3600_000


def as_signals_topic(reports: list[dict[str, Any]]) -> list[KafkaRecord]:
    return [KafkaRecord("sig", 0, i, None, b"0", orjson.dumps(r)) for i, r in enumerate(reports)]


def test_a_warmed_detector_catches_an_outage_at_once_where_a_cold_one_still_learns() -> None:
    history = [report(0, M0 + i, busy_minute(i)) for i in range(120)]
    live = [report(0, M0 + 120 + i, busy_minute(120 + i, rintis_bad=400 if i >= 2 else None)) for i in range(5)]
    warmed = warmup.from_signals(as_signals_topic(history), 1, BurstParams())
    assert warmed.reports == 120 and warmed.last_signals_offset == 119
    snap = burstsnapshot.decode(burstsnapshot.encode(warmed.detector, 120))
    assert snap.signals_offset == 120
    alerts = run(snap.detector, live)
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [("opened", "RINTIS")]
    cold = BurstDetector(1)
    assert run(cold, live) == []  # the same minutes are its first: still learning


def test_a_snapshot_that_is_not_one_is_refused_with_a_reason() -> None:
    for raw in (b"", b"not zlib", burstsnapshot.zlib.compress(b'{"x":1}')):
        try:
            burstsnapshot.decode(raw)
        except ValueError as exc:
            assert "snapshot" in str(exc)
        else:
            raise AssertionError(f"{raw!r} accepted")


@pytest.mark.slow
def test_warmup_from_a_replay_file_is_the_replay_core_over_its_records(tmp_path: Path) -> None:
    records = list(
        generate("normal", seed=5, start_ms=TUESDAY_08_WIB_MS, minutes=25, rate_per_min=120, failure_rate=0.03)
    )
    path = tmp_path / "history.jsonl"
    with open(path, "wb") as fh:
        write_replay(records, fh)
    out = tmp_path / "detector.snapshot"
    assert main(["warmup", "--in", str(path), "--out", str(out)]) == 0
    snap = burstsnapshot.decode(out.read_bytes())
    assert snap.signals_offset is None  # not from the signals topic
    kafka_records = [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in records
    ]
    direct = warmup.from_records(kafka_records, Params(), BurstParams(), None).detector
    assert snap.detector.snapshot() == direct.snapshot()
    det = snap.detector
    assert det.partitions == frozenset(range(4)) and det.closed_through is not None
    assert det.learned(det.scopes["all"]) and 0.02 < det.scopes["all"].model.expected_rate(det.closed_through) < 0.05


def test_a_warmed_detector_says_so_through_every_snapshot_and_a_replay_from_kafka_warns() -> None:
    # A live worker that restored a warm-up's snapshot decides with history the input topics need
    # not hold; a replay of those topics starts its detector cold and holds nothing the warm one
    # held (the warm-up test above: an outage the cold one does not see). The mark goes from the
    # warm-up through the live worker's own snapshots, and `replay --from-kafka` reads it.
    from stream.drivers.livesettings import warmed_detector_warning

    history = [report(0, M0 + i, busy_minute(i)) for i in range(120)]
    warmed = warmup.from_signals(as_signals_topic(history), 1, BurstParams())
    assert warmed.detector.warmed_through == warmed.detector.closed_through == M0 + 119
    live = burstsnapshot.decode(burstsnapshot.encode(warmed.detector, 120)).detector
    run(live, [report(0, M0 + 120, busy_minute(120))])
    again = burstsnapshot.encode(live, 121)  # the live worker's own snapshot after the takeover
    assert burstsnapshot.decode(again).detector.warmed_through == M0 + 119
    warning = warmed_detector_warning(again, BurstParams())
    assert warning is not None and "starts it cold" in warning
    # A detector that learned from the signals alone: nothing to say, and no field in its snapshot.
    cold = BurstDetector(1)
    run(cold, history)
    assert "warmed_through" not in cold.snapshot() and cold.warmed_through is None
    assert warmed_detector_warning(burstsnapshot.encode(cold, 120), BurstParams()) is None
    assert warmed_detector_warning(None, BurstParams()) is None


def kafka_records(scenario: str, seed: int, start_ms: int, minutes: float, **knobs: Any) -> list[KafkaRecord]:
    return [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in generate(scenario, seed=seed, start_ms=start_ms, minutes=minutes, rate_per_min=300, **knobs)
    ]


@pytest.mark.slow
def test_a_warmup_from_a_file_that_ends_in_an_outage_leaves_no_incident_open() -> None:
    # The history's incident was never on the alerts topic: the live worker must not send its
    # `updated` or `resolved` (nor hold refunds under its id) when the live minutes come.
    history = kafka_records("outage", 5, TUESDAY_08_WIB_MS, 40, outage_at=0.8, outage_minutes=60)
    warmed = warmup.from_records(history, Params(), BurstParams(), None)
    assert warmed.incidents_seen >= 1 and warmed.detector.incidents.open_scopes() == []
    snap = burstsnapshot.decode(burstsnapshot.encode(warmed.detector, None))
    # Three hours later, a calm day through the live worker's restored detector.
    replay = Replay(Params(), BurstParams())
    for rec in kafka_records("normal", 6, TUESDAY_08_WIB_MS + 3 * 3600_000, 20):
        replay.feed(rec)
    alerts = [d.value for value in replay.signals for d in snap.detector.on_signals(value)]
    assert [(a["status"], a["scope"]) for a in alerts if a["status"] != "opened"] == []
