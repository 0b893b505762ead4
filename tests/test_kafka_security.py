"""Kafka tier, security: the worker runs end to end over SASL_SSL (SCRAM-SHA-512, TLS with the
broker's own CA) and decides what replay decides; a wrong password and an untrusted CA are
refused at once with one clear line; the web port is on 127.0.0.1 with Faust's table and
router pages off; a worker without an input partition is not ready."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from stream.security import aiokafka_config
from stream.topics import ensure_state_changelog
from stream.worker.statestore import KafkaChangelog, changelog_topic_name
from tests.conftest import ROOT
from tests.kafka_support import (
    Worker,
    consume,
    fresh_prefix,
    fresh_topics,
    produce,
    require_broker,
    require_sasl_ssl,
    security_env,
)
from tests.scenario import LEDGER, PAYMENT, scenario_records
from tests.test_kafka_worker import canon, expected_outputs, live_by_role

pytestmark = pytest.mark.kafka


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (`ss -ltn`)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[3]
        host, _, p = local.rpartition(":")
        if p == str(port):
            found.add(host)
    return found


def test_worker_runs_end_to_end_over_sasl_ssl(tmp_path: Path) -> None:
    secure = require_sasl_ssl()
    topics = fresh_topics()
    topics.create(secure)
    records = scenario_records(topics.partitions)
    worker = Worker(topics, tmp_path / "w", extra_env=security_env(secure))
    worker.start(secure.bootstrap)
    try:
        produce(secure, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
        want = expected_outputs(secure, topics)
        n = sum(len(v) for v in want.values())
        assert len(want["refunds"]) == 50
        got = live_by_role(consume(secure, topics.outputs(), until=n, timeout_s=180, worker=worker), topics)
        base = f"http://127.0.0.1:{worker.web_port}"
        ready, table, router, root = (http_status(base + p) for p in ("/qris/ready", "/table/", "/router/", "/"))
        addresses = listening_addresses(worker.web_port)
    finally:
        worker.stop()
    for role in want:
        assert canon(got[role]) == canon(want[role]), f"{role} differs:\n{worker.log_tail()}"
    assert (ready, table, router, root) == (200, 404, 404, 404)
    assert addresses == {"127.0.0.1"}, addresses
    password = Path(secure.sasl_password_file).read_text().strip()
    assert worker.log_path is not None and password not in worker.log_path.read_text(errors="replace")
    # The CLI's own clients over the same listener: `dump` and `replay --from-kafka`.
    env = {**security_env(secure), **topics.env(), "QRIS_BOOTSTRAP": secure.bootstrap}
    dumped = cli(["dump", "--out", str(tmp_path / "dump.jsonl")], env)
    replayed = cli(["replay", "--from-kafka", "--out", str(tmp_path / "replay.jsonl")], env)
    assert dumped.returncode == replayed.returncode == 0, dumped.stderr + replayed.stderr
    assert len((tmp_path / "dump.jsonl").read_bytes().splitlines()) == len(records)
    assert len((tmp_path / "replay.jsonl").read_bytes().splitlines()) == n


def cli(args: list[str], env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_wrong_password_and_untrusted_ca_are_refused_in_one_line(tmp_path: Path) -> None:
    secure = require_sasl_ssl()
    wrong_password = replace(secure, sasl_password="not-the-password", sasl_password_file="")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=someone else"]
        + ["-keyout", str(tmp_path / "other.key"), "-out", str(tmp_path / "other.pem")],
        check=True,
        capture_output=True,
    )
    other_ca = replace(secure, ssl_cafile=str(tmp_path / "other.pem"))
    topics = fresh_topics()
    cases = [
        (wrong_password, "refused user 'qris' (SCRAM-SHA-512)"),
        (other_ca, "TLS certificate is not trusted by QRIS_SSL_CAFILE="),
    ]
    failures = []
    for settings, said in cases:
        env = {**security_env(settings), **topics.env(), "QRIS_BOOTSTRAP": settings.bootstrap}
        env["QRIS_DATA_DIR"] = str(tmp_path / "w")
        for args in (["worker"], ["topics"], ["dump", "--out", str(tmp_path / "d.jsonl")]):
            done = cli(args, env)
            lines = done.stderr.strip().splitlines()
            if not (done.returncode == 69 and len(lines) == 1 and said in lines[0] and "Traceback" not in done.stderr):
                failures.append(f"{args[0]} with {said!r}: exit {done.returncode}\n{done.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)


def readiness(worker: Worker) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{worker.web_port}/qris/ready"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), orjson.loads(exc.read())
    except OSError:
        return 0, {}


def test_a_worker_without_an_input_partition_is_not_ready(tmp_path: Path) -> None:
    """One input partition, two workers: the one that owns it is ready, the other answers 503
    and says why (a readiness probe must not send traffic to a worker with nothing to do)."""
    bootstrap = require_broker()
    topics = fresh_topics(partitions=1)
    topics.create(bootstrap)
    first = Worker(topics, tmp_path / "a")
    second = Worker(topics, tmp_path / "b", app_id=first.app_id)
    first.start(bootstrap)
    second.start(bootstrap)
    try:
        deadline = time.monotonic() + 120
        states: list[tuple[int, dict[str, object]]] = []
        while time.monotonic() < deadline:
            first.assert_alive()
            second.assert_alive()
            states = sorted([readiness(first), readiness(second)], key=lambda s: s[0])
            if [code for code, _ in states] == [200, 503] and "no input partition" in str(states[0][1]) + str(
                states[1][1]
            ):
                break
            time.sleep(1)
    finally:
        first.stop()
        second.stop()
    assert [code for code, _ in states] == [200, 503], states
    assert states[0][1] == {"ready": True}
    assert states[1][1] == {"ready": False, "reason": "no input partition is assigned to this worker"}


def test_the_state_store_reads_its_changelogs_delete_retention_over_sasl_ssl() -> None:
    # A restore asks it (DescribeConfigs) to decide whether a local table's tail can be trusted.
    secure = require_sasl_ssl()
    settings = replace(secure, app_id=fresh_prefix("qris-test-", 8))
    ensure_state_changelog(settings, 1)
    changelog = KafkaChangelog(aiokafka_config(secure), changelog_topic_name(settings.app_id))
    assert asyncio.run(changelog.tombstone_retention_ms()) == 24 * 3600 * 1000  # Kafka's default
