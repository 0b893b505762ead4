"""Replay from a warm-up's snapshot (`replay --detector-snapshot FILE`): a live worker that
restored a `warmup` snapshot holds refunds in an outage its warm detector sees at once, which a
cold replay (still learning) pays; started from the same snapshot, every replay path (one pass,
two passes, `--jobs 2`, holds off) decides what that detector decides. The Kafka tier compares
it with the live worker itself (`test_kafka_warmstart.py`).

Small days: the detector learns from 300 payments and 5 minutes here (the settings, as the live
worker would have them), so an outage one minute into a 10-minute day is still inside a cold
detector's learning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.cli import main
from stream.core import burstsnapshot
from stream.core.burst import BurstParams
from stream.drivers.replay import WarmStart, replay
from stream.drivers.replayfile import ReplayFile
from stream.settings import from_env
from stream.simulate import generate, write_replay

LEARN_ENV = {"QRIS_BURST_LEARN_MIN_PAYMENTS": "300", "QRIS_BURST_LEARN_MIN_MINUTES": "5"}
DAY_MS = 86_400_000
HISTORY_START_MS = 1743127200000  # 2025-03-28T09:00:00+07:00
DAY_START_MS = HISTORY_START_MS + DAY_MS


def write_day(path: Path, partitions: int = 4) -> None:
    """The outage day: RINTIS stops settling one minute in, for five minutes."""
    records = generate(
        "outage",
        seed=3,
        start_ms=DAY_START_MS,
        minutes=10,
        rate_per_min=100,
        partitions=partitions,
        outage_start_ms=DAY_START_MS + 60_000,
        outage_minutes=5,
    )
    with open(path, "wb") as fh:
        write_replay(records, fh)


def write_history(path: Path, partitions: int = 4, **topics: str) -> None:
    """The day before: eight ordinary minutes, enough for the detector to learn its baselines.
    `topics`: `payment_topic` and `ledger_topic`, if not the default names."""
    records = generate(
        "normal", seed=2, start_ms=HISTORY_START_MS, minutes=8, rate_per_min=100, partitions=partitions, **topics
    )
    with open(path, "wb") as fh:
        write_replay(records, fh)


@pytest.fixture(autouse=True)
def _learn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in LEARN_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("QRIS_MAX_HOLD_S", raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("warmstart")
    paths = {"history": tmp / "history.jsonl", "day": tmp / "day.jsonl", "snapshot": tmp / "detector.snapshot"}
    write_history(paths["history"])
    write_day(paths["day"])
    with pytest.MonkeyPatch.context() as mp:
        for k, v in LEARN_ENV.items():
            mp.setenv(k, v)
        assert main(["warmup", "--in", str(paths["history"]), "--out", str(paths["snapshot"])]) == 0
    yield paths


def replayed(files: dict[str, Path], out: Path, *args: str) -> list[dict[str, Any]]:
    """`qris-guard replay` of the day with `args`: its output lines."""
    assert main(["replay", "--in", str(files["day"]), "--out", str(out), *args]) == 0
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def held(lines: list[dict[str, Any]]) -> set[str]:
    return {x["value"]["reference"] for x in lines if x["value"].get("type") == "refund.held"}


def paid_unheld(lines: list[dict[str, Any]]) -> set[str]:
    """References refunded at once: a `refund.requested` with no hold before it."""
    holds = held(lines)
    return {x["value"]["reference"] for x in lines if x["value"].get("type") == "refund.requested"} - holds


def incidents(lines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (x["value"]["incident_id"], x["value"]["status"], x["value"]["occurred_at"])
        for x in lines
        if x["value"].get("kind") == "FAILURE_BURST"
    ]


def canon(lines: list[dict[str, Any]]) -> list[bytes]:
    """Decisions without their place among other partitions' lines (`--jobs N` interleaves)."""
    return sorted(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) for x in lines)


def test_a_cold_replay_pays_what_a_replay_from_the_warm_up_holds(files: dict[str, Path], tmp_path: Path) -> None:
    cold = replayed(files, tmp_path / "cold.jsonl", "--jobs", "1")
    warm = replayed(files, tmp_path / "warm.jsonl", "--jobs", "1", "--detector-snapshot", str(files["snapshot"]))
    # The warm detector opens the outage's incident at once; the cold one only after learning.
    (warm_opened,) = [at for _i, status, at in incidents(warm) if status == "opened"]
    (cold_opened,) = [at for _i, status, at in incidents(cold) if status == "opened"]
    assert warm_opened < cold_opened
    # Refunds the warm detector holds that the cold replay pays at once.
    differ = held(warm) & paid_unheld(cold)
    assert len(differ) >= 10, (len(held(warm)), len(held(cold)))
    assert not held(cold) - held(warm)


def test_every_replay_path_decides_alike_from_the_snapshot(files: dict[str, Path], tmp_path: Path) -> None:
    snap = ["--detector-snapshot", str(files["snapshot"])]
    for drain in ([], ["--drain"]):
        one = replayed(files, tmp_path / "j1.jsonl", "--jobs", "1", *drain, *snap)
        two = replayed(files, tmp_path / "j2.jsonl", "--jobs", "2", *drain, *snap)
        assert canon(one) == canon(two), drain
        assert held(one)
        # Two passes (what a one-pass replay falls back to) decide the same, in the same order.
        s = from_env({**LEARN_ENV})
        warm = WarmStart.of(files["snapshot"].read_bytes(), s.burst)
        passes = [
            {"partition": p, "role": d.role, "value": d.value}
            for p, d in replay(
                ReplayFile(str(files["day"])), s.params, drain=bool(drain), burst=s.burst, one_pass=False, warm=warm
            )
        ]
        assert [(x["partition"], x["value"]) for x in passes] == [(x["partition"], x["value"]) for x in one]
    # Holds off: the same incidents (their alerts carry no hold counts then), whichever the jobs.
    held_on = replayed(files, tmp_path / "on.jsonl", "--jobs", "1", "--drain", *snap)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QRIS_MAX_HOLD_S", "0")
        off1 = replayed(files, tmp_path / "off1.jsonl", "--jobs", "1", "--drain", *snap)
        off2 = replayed(files, tmp_path / "off2.jsonl", "--jobs", "2", "--drain", *snap)
    assert canon(off1) == canon(off2) and not held(off1)
    assert [i[:2] for i in incidents(off1)] == [i[:2] for i in incidents(held_on)]


def test_the_warm_up_snapshot_is_the_same_bytes_each_time_it_is_built(files: dict[str, Path], tmp_path: Path) -> None:
    # What lets an engineer rebuild the live worker's warm-up for a replay: same history, same settings.
    again = tmp_path / "again.snapshot"
    assert main(["warmup", "--in", str(files["history"]), "--out", str(again)]) == 0
    assert again.read_bytes() == files["snapshot"].read_bytes()


def test_a_snapshot_of_other_partitions_or_not_one_is_a_mistake(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history2 = tmp_path / "history2.jsonl"
    write_history(history2, partitions=2)
    two = tmp_path / "two.snapshot"
    assert main(["warmup", "--in", str(history2), "--out", str(two)]) == 0
    capsys.readouterr()
    out = tmp_path / "out.jsonl"
    for jobs in ("1", "2"):
        assert (
            main(
                [
                    "replay",
                    "--in",
                    str(files["day"]),
                    "--jobs",
                    jobs,
                    "--out",
                    str(out),
                    "--detector-snapshot",
                    str(two),
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "a snapshot of input partitions 0, 1; the input is of partitions 0, 1, 2, 3" in err, err
        assert not out.exists()  # refused before anything is written
    assert main(["trace", "QR-NONE", "--in", str(files["day"]), "--detector-snapshot", str(two)]) == 2
    assert "a snapshot of input partitions 0, 1" in capsys.readouterr().err
    for bad in (files["day"], tmp_path / "missing.snapshot"):
        assert main(["replay", "--in", str(files["day"]), "--out", str(out), "--detector-snapshot", str(bad)]) == 2
        assert f"--detector-snapshot {bad}: " in capsys.readouterr().err


def test_trace_starts_the_detector_from_the_snapshot_as_replay_does(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cold = replayed(files, tmp_path / "cold.jsonl", "--jobs", "1")
    warm = replayed(files, tmp_path / "warm.jsonl", "--jobs", "1", "--detector-snapshot", str(files["snapshot"]))
    ref = sorted(held(warm) & paid_unheld(cold))[0]
    snap = ["--detector-snapshot", str(files["snapshot"])]
    capsys.readouterr()
    for extra, first in (([], "refund.requested"), (snap, "refund.held")):
        assert main(["trace", ref, "--in", str(files["day"]), "--json", *extra]) == 0
        facts = orjson.loads(capsys.readouterr().out)
        assert facts["decisions"][0]["value"]["type"] == first


def test_a_live_snapshot_of_the_same_warm_up_is_not_warned_about_and_another_is() -> None:
    from stream.core.burst import BurstDetector
    from stream.drivers.livesettings import warmed_detector_warning

    det = BurstDetector(4)
    det.warmed_through = 29052125
    live = burstsnapshot.encode(det, 0)
    cold = warmed_detector_warning(live, BurstParams())
    assert cold is not None and "--detector-snapshot FILE" in cold and "warmup --in HISTORY --out FILE" in cold
    same = WarmStart(b"", frozenset(range(4)), 29052125)
    assert warmed_detector_warning(live, BurstParams(), same) is None
    other = warmed_detector_warning(live, BurstParams(), WarmStart(b"", frozenset(range(4)), 29052000))
    assert other is not None and "the --detector-snapshot given holds history through" in other
    never = burstsnapshot.encode(BurstDetector(4), 0)
    assert warmed_detector_warning(never, BurstParams()) is None
    assert "holds no warm-up" in (warmed_detector_warning(never, BurstParams(), same) or "")


def test_a_partition_that_never_reports_holds_no_warm_decision_back(files: dict[str, Path], tmp_path: Path) -> None:
    # Partition 3 of the day has its payments only: no watermark, no closed minute reported. A
    # cold detector waits for the partitions that report; one from the snapshot must too, or
    # no minute closes after the warm-up's and every refund decision waits for good.
    day = tmp_path / "day.jsonl"
    ledger = from_env({}).ledger_topic
    day.write_bytes(
        b"".join(
            line + b"\n"
            for line in files["day"].read_bytes().splitlines()
            if not ((x := orjson.loads(line))["topic"] == ledger and x["partition"] == 3)
        )
    )
    one_stream = {**files, "day": day}
    cold = replayed(one_stream, tmp_path / "cold.jsonl", "--jobs", "1")
    snapshot = ("--detector-snapshot", str(files["snapshot"]))
    warm = replayed(one_stream, tmp_path / "warm.jsonl", "--jobs", "1", *snapshot)
    refunded = {"refund.requested", "refund.held"}
    assert {x["value"]["reference"] for x in warm if x["value"].get("type") in refunded} == {
        x["value"]["reference"] for x in cold if x["value"].get("type") in refunded
    }
    assert held(warm) and [status for _i, status, _at in incidents(warm)][:1] == ["opened"]
    assert canon(replayed(one_stream, tmp_path / "jobs.jsonl", "--jobs", "2", *snapshot)) == canon(warm)
