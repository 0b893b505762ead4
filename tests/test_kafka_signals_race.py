"""Kafka tier: the burst detector's intake under Faust's drop, caused for real. Two members of a
group run the worker's `BurstShell` on a single-partition signals topic with Faust's own
consumer and the race of `test_kafka_worker_consumer.py` forced (`tests/faust_signals_race_app.py`:
the drain loop fetches while the flow is stopped; records fetched then are dropped and, the
partition having no committed offset, not fetched again). The reports of an outage are sent
once the second member's joining is under way, trickled (Faust drops the first ones and
delivers the rest: a gap, read from the broker; seen: offsets 0-279) or all at once (Faust
may drop all of them, with nothing after to show it: caught up from the broker). Whatever
Faust delivers, the alerts are exactly those of one detector taking every report once, in
order: each member's in that order, none twice, and together all of them. Whether Faust did
drop records in the run is printed (`-s`); with `RACE_REQUIRE_DROP=1` the test fails when it
did not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from stream.drivers.kafkaread import read_topics
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from tests.kafka_support import ROOT, free_port, fresh_prefix, fresh_topics, produce, require_broker
from tests.test_burst import outage_reports
from tests.test_kafka_signals_boundary import reference

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("sent", ["trickled", "at_once"])
def test_a_detector_under_faust_s_forced_drop_sends_every_alert_once_in_order(sent: str, tmp_path: Path) -> None:
    bootstrap = require_broker()
    prefix = fresh_topics(partitions=2).prefix
    settings = Settings(bootstrap=bootstrap, partitions=2, max_hold_s=0, snapshot_every=0).with_topic_prefix(prefix)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="qris-test")
    try:
        admin.create_topics([NewTopic(settings.signals_topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    app_id = fresh_prefix("qris-test-", 8)
    members: list[subprocess.Popen[bytes]] = []

    def start(member: str) -> Path:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("QRIS_", "RACE_"))},
            "RACE_APP_ID": app_id,
            "RACE_BOOTSTRAP": bootstrap,
            "RACE_PREFIX": prefix,
            "RACE_DATA_DIR": str(tmp_path / member),
            "RACE_OUT": str(tmp_path / f"{member}.alerts"),
        }
        log = tmp_path / f"{member}.log"
        members.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "faust_signals_race_app.py"), "worker", "-l", "info"]
                + ["--web-port", str(free_port())],
                env=env,
                stdout=open(log, "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        return log

    def alerts(member: str) -> list[str]:
        f = tmp_path / f"{member}.alerts"
        return [orjson.loads(line)["alert_id"] for line in f.read_text().splitlines()] if f.exists() else []

    reports = [KafkaRecord(settings.signals_topic, 0, 0, None, None, orjson.dumps(r)) for r in outage_reports()]
    try:
        first_log = start("a")
        deadline = time.monotonic() + 90
        while "Ready" not in first_log.read_text(errors="replace"):
            assert time.monotonic() < deadline and members[0].poll() is None, first_log.read_text()[-3000:]
            time.sleep(0.5)
        start("b")
        # The first reports once the rebalance is under way: fetched while the flow is stopped,
        # on a partition nobody committed yet (Faust's "seek back to committed" moves nothing).
        while first_log.read_text(errors="replace").count("Revoking previously assigned") < 2:  # 1: its own join
            assert time.monotonic() < deadline + 60 and members[0].poll() is None, first_log.read_text()[-3000:]
            time.sleep(0.1)
        # Trickled through the rebalance (its handler takes 5 s): the first ones are dropped and
        # the later ones show the gap. At once: all are dropped and nothing follows them (the
        # stall of the lookup test; the detector's watch catches them up after 5 s).
        chunk = 40 if sent == "trickled" else len(reports)
        for i in range(0, len(reports), chunk):
            produce(bootstrap, reports[i : i + chunk], {settings.signals_topic: settings.signals_topic})
            time.sleep(0.6)
        on_broker = list(read_topics(bootstrap, [settings.signals_topic]))
        assert len(on_broker) == len(reports)
        want = reference(settings, on_broker)
        deadline = time.monotonic() + 90
        while not set(want) <= set(alerts("a")) | set(alerts("b")) and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        for member in members:
            if member.poll() is None:
                os.killpg(member.pid, signal.SIGTERM)
                try:
                    member.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(member.pid, signal.SIGKILL)
                    member.wait()
    counts = {}
    for m in ("a", "b"):
        f = tmp_path / f"{m}.alerts.counts"
        counts[m] = json.loads(f.read_text()) if f.exists() else {}
    dropped = sum(c.get("gap_records_fetched", 0) + c.get("caught_up", 0) for c in counts.values())
    print(f"signals race: Faust's drop taken from the broker: {dropped} record(s); counts {counts}")
    got = {m: alerts(m) for m in ("a", "b")}
    assert set(got["a"]) | set(got["b"]) == set(want), f"logs in {tmp_path}"
    for m, ids in got.items():
        assert ids == [x for x in want if x in set(ids)], (m, f"logs in {tmp_path}")  # in order, once
    if os.environ.get("RACE_REQUIRE_DROP") == "1":
        assert dropped > 0, f"Faust dropped nothing this run; logs in {tmp_path}"
