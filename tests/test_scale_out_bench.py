"""The scale-out bench's reading of a worker's `/qris/stats` (bench/scale_out.py): how far its
slowest partition's watermark is past the incidents known. Fast tier: no broker."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scale_out import incidents_lag_s
from stream.core.partition import NEG_INF


def page(known: int | None, *watermarks: int | None) -> dict[str, Any]:
    return {
        "incidents_known_through_ms": known,
        "partitions": {str(p): {"watermark_ms": w} for p, w in enumerate(watermarks)},
    }


def test_the_lag_is_the_slowest_partition_past_the_incidents_known() -> None:
    assert incidents_lag_s(page(60_000, 180_000, 90_000, 125_500)) == 30.0
    # Partitions without a watermark yet (one stream only) are left out.
    assert incidents_lag_s(page(60_000, NEG_INF, None, 75_000)) == 15.0
    # Incidents ahead of every partition: a negative lag (nothing waits for them).
    assert incidents_lag_s(page(100_000, 40_000)) == -60.0


def test_no_lag_before_both_are_known() -> None:
    assert incidents_lag_s(page(None, 90_000)) is None
    assert incidents_lag_s(page(NEG_INF, 90_000)) is None
    assert incidents_lag_s(page(60_000, NEG_INF, None)) is None
    assert incidents_lag_s({"incidents_known_through_ms": 60_000}) is None


def test_settle_ends_at_the_last_move_of_the_decision_count(monkeypatch: Any) -> None:
    """`settle` (both live benches): the time and CPU when the count last moved, asking again
    when a page does not answer; the clock here is the test's."""
    import time

    import live_throughput

    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    # What the stats pages say, a poll at a time: 5 decisions, no answer, 7, then no change.
    answers: list[int | None | type[OSError]] = [5, OSError, 7, 7, 7]

    def decided() -> int | None:
        got = answers.pop(0) if answers else 7
        if got is OSError:
            raise OSError("no answer")
        return got  # type: ignore[return-value]

    cpu = iter([1.5, 9.9])
    end_t, end_cpu, count = live_throughput.settle(
        decided, lambda: next(cpu), 100.0, 1.0, None, time.monotonic() + 60, 0.5
    )
    # Read at once (5), then every 0.5 s: no answer at 100.5, 7 at 101.0; unchanged for 3 s.
    assert (end_t, end_cpu, count) == (101.0, 1.5, 7)
    assert now[0] >= 101.0 + live_throughput.SETTLE_S


def test_the_local_broker_is_the_kafka_process_of_the_pid_file(tmp_path: Any, monkeypatch: Any) -> None:
    """`local_broker_pid`: the process in `kafka/broker.sh`'s pid file, only if it is Kafka's
    (a stale pid file may name any process); None without a pid file."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from bench.scale_out import local_broker_pid

    monkeypatch.setenv("QRIS_KAFKA_RUN_DIR", str(tmp_path))
    assert local_broker_pid() is None  # no pid file
    (tmp_path / "broker.pid").write_text("not a pid\n")
    assert local_broker_pid() is None
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kafka = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka"])
    try:
        # Popen returns once forked, maybe before the exec: until then the child's command line
        # is this test's, so wait for the one it is started with.
        deadline = time.monotonic() + 30
        cmdline = Path(f"/proc/{kafka.pid}/cmdline")
        while b"kafka.Kafka" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "broker.pid").write_text(f"{other.pid}\n")
        assert local_broker_pid() is None  # a process, but not Kafka
        (tmp_path / "broker.pid").write_text(f"{kafka.pid}\n")
        assert local_broker_pid() == kafka.pid
    finally:
        for proc in (other, kafka):
            proc.kill()
            proc.wait()
    assert local_broker_pid() is None  # gone


def test_the_ratio_the_cpus_allow() -> None:
    """Two workers share every CPU with the broker and the rest; one is bound by its own CPU."""
    from bench.scale_out import Run, allowed_ratio

    def run(workers: int, worker_us: float, broker_us: float | None, other_us: float) -> Run:
        return Run(
            workers=workers,
            rate=0.0,
            taken=[],
            to_first_record_s=0.0,
            decided_lag_s=0.0,
            partitions_not_committed=0,
            worker_cpu_us=0.0,
            machine_busy=0.0,
            logs=[],
            worker_cpu_us_decided=worker_us,
            broker_cpu_us_decided=broker_us,
            other_cpu_us_decided=other_us,
        )

    one = run(1, 40.0, 6.0, 1.0)
    # 2 CPUs over 40 + 9 + 1 = 50 µs a record (40,000 records/s) against 1 / 40 µs (25,000).
    assert allowed_ratio(one, run(2, 40.0, 9.0, 1.0), 2) == pytest.approx(1.6)
    # The broker elsewhere (not measured): the workers' and the rest's only.
    assert allowed_ratio(one, run(2, 45.0, None, 5.0), 2) == pytest.approx(1.6)
    assert allowed_ratio(one, run(2, 45.0, None, 5.0), 4) == pytest.approx(3.2)


def test_variants_are_worker_settings_by_name() -> None:
    """`--variant` of both live benches: '' is the defaults; a value may hold '='."""
    from live_throughput import variants_of

    assert variants_of(["", "QRIS_MAX_LEAD_S=0,QRIS_BATCH_MAX=500", "QRIS_API_TOKEN=a=b"]) == [
        ("", {}),
        ("QRIS_MAX_LEAD_S=0,QRIS_BATCH_MAX=500", {"QRIS_MAX_LEAD_S": "0", "QRIS_BATCH_MAX": "500"}),
        ("QRIS_API_TOKEN=a=b", {"QRIS_API_TOKEN": "a=b"}),
    ]
