"""Kafka tier: a live worker whose burst detector restored a warm-up's snapshot (`qris-guard
warmup --in HISTORY`, written to its snapshots topic) decides exactly what `replay --from-kafka
--detector-snapshot FILE` decides, FILE being the same warm-up rebuilt with `--out FILE`; a cold
replay of the same topics holds less, and says how to replay from the warm-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.drivers.replayfile import KafkaRecord
from stream.simulate import generate
from tests.kafka_support import ROOT, Worker, consume, fresh_topics, produce, require_broker
from tests.test_replay_warmstart import DAY_START_MS, LEARN_ENV, held, incidents, paid_unheld, write_history

pytestmark = pytest.mark.kafka


def canon(values: list[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


def test_a_live_worker_warmed_up_decides_as_a_replay_from_the_rebuilt_warm_up(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics(partitions=4)
    topics.create(bootstrap)
    history = tmp_path / "history.jsonl"
    write_history(history, payment_topic=topics.payment, ledger_topic=topics.ledger)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")} | topics.env() | LEARN_ENV
    env["QRIS_BOOTSTRAP"] = bootstrap

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "stream", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done

    # The warm-up as an operator runs it before the worker starts: to the app's snapshots topic.
    assert "snapshot of" in cli("warmup", "--in", str(history)).stderr
    day = [
        KafkaRecord(r.topic, r.partition, r.offset, None, r.key.encode() if r.key else None, r.value)
        for r in generate(
            "outage",
            seed=3,
            start_ms=DAY_START_MS,
            minutes=10,
            rate_per_min=100,
            partitions=topics.partitions,
            payment_topic=topics.payment,
            ledger_topic=topics.ledger,
            outage_start_ms=DAY_START_MS + 60_000,
            outage_minutes=5,
        )
    ]
    worker = Worker(topics, tmp_path / "w", extra_env=LEARN_ENV)
    worker.start(bootstrap)
    try:
        produce(bootstrap, day, {topics.payment: topics.payment, topics.ledger: topics.ledger})
        # The engineer, later: the same warm-up rebuilt to a file, and a replay from it.
        snapshot = tmp_path / "detector.snapshot"
        cli("warmup", "--in", str(history), "--out", str(snapshot))
        warm_out, cold_out = tmp_path / "warm.jsonl", tmp_path / "cold.jsonl"
        warm_run = cli(
            "replay", "--from-kafka", "--jobs", "1", "--detector-snapshot", str(snapshot), "--out", str(warm_out)
        )
        want = [orjson.loads(line) for line in warm_out.read_bytes().splitlines()]
        got = consume(bootstrap, topics.outputs(), until=len(want), timeout_s=90, worker=worker)
        restored = worker.stats()["bursts"]["counts"]["restored_snapshot_offset"]
    finally:
        worker.stop()
    cold_run = cli("replay", "--from-kafka", "--jobs", "1", "--out", str(cold_out))
    cold = [orjson.loads(line) for line in cold_out.read_bytes().splitlines()]
    # The replay from the warm-up decides what the live worker decided, record for record.
    for topic in topics.outputs():
        live = [v for t, _k, v in got if t == topic]
        assert canon(live) == canon([x["value"] for x in want if x["topic"] == topic]), (topic, worker.log_tail())
    assert restored == 0, worker.log_tail()  # (the warm-up's snapshot, before any signal report)
    assert incidents(want) and len(held(want)) >= 10
    assert "starts it cold" not in warm_run.stderr
    # The cold replay pays refunds the live worker held, and says how to replay as it decided.
    assert len(held(want) & paid_unheld(cold)) >= 10
    assert "starts it cold" in cold_run.stderr and "--detector-snapshot FILE" in cold_run.stderr, cold_run.stderr
