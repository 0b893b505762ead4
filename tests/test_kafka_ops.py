"""Kafka tier: what operations and customer service see from live workers: the lookup API
answered by two workers for every reference (and refused without the token), /metrics parsed
by the Prometheus parser, and the dashboard in headless Chromium during an outage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.drivers.replayfile import KafkaRecord
from stream.simulate import generate
from tests.kafka_support import ROOT, Worker, consume, free_port, fresh_topics, produce, require_broker
from tests.records import T0, ledger, payment
from tests.scenario import LEDGER, PAYMENT, scenario_records

pytestmark = pytest.mark.kafka
TOKEN = "cs-test-token-1234"


def _get(port: int, path: str, token: str | None = TOKEN, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, body if path == "/metrics" else json.loads(body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(port, "/metrics", token=None)
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def test_two_workers_answer_the_lookup_for_every_reference_and_refuse_without_the_token(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = fresh_topics(partitions=4)
    topics.create(bootstrap)
    env = {"QRIS_API_TOKEN": TOKEN}
    a = Worker(topics, tmp_path / "a", extra_env=env)
    b = Worker(topics, tmp_path / "b", extra_env=env, app_id="")
    b.app_id = a.app_id  # one consumer group
    a.start(bootstrap)
    b.start(bootstrap)
    records = scenario_records(topics.partitions)
    refs = sorted({r.key.decode() for r in records if r.key and r.key.startswith(b"QR0")})
    try:
        # Both workers in the group before the input arrives (each has partitions).
        deadline = time.monotonic() + 120
        produce(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
        taken = 0
        while time.monotonic() < deadline:
            a.assert_alive()
            b.assert_alive()
            try:
                taken = a.stats()["counts"]["records"] + b.stats()["counts"]["records"]
                owned = [bool(a.stats()["partitions"]), bool(b.stats()["partitions"])]
            except OSError:
                taken, owned = 0, [False, False]
            if taken >= len(records) and all(owned):
                break
            time.sleep(0.5)
        assert taken >= len(records), (taken, a.log_tail(), b.log_tail())
        # Every reference is answered by either worker at once (`received` while its records
        # wait for the watermark or, with holds, for the detector's incidents); then decided.
        answered: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while True:
            for ref in refs:
                for w in (a, b):
                    status, body = _get(w.web_port, f"/qris/payments/{ref}")
                    assert status == 200, (ref, body)
                    assert body["reference"] == ref
                    answered[ref] = body["status"]
            if "received" not in answered.values() or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert answered["QR0000"] == "settled"
        assert answered["QR0004"] in {"refund_requested", "debited", "refund_held"}
        assert _get(a.web_port, "/qris/payments/QR0004", token=None)[0] == 401
        assert _get(b.web_port, "/qris/payments/QR0004", token="wrong")[0] == 401
        assert _get(a.web_port, "/qris/payments/NOPE")[0] == 404
        # The workers forward a signature of the question, never the caller's token: a forwarded
        # mark without it, or signed with another token or for another question, is refused.
        from stream.worker.lookup import forward_signature, question_of

        now = int(time.time())
        for sig in ("1", forward_signature("wrong", question_of("payment", "QR0004"), now)):
            assert _get(a.web_port, "/qris/payments/QR0004", None, {"X-QRIS-Forwarded": sig})[0] == 401
        other = forward_signature(TOKEN, question_of("payment", "QR0000"), now)
        assert _get(a.web_port, "/qris/payments/QR0004", None, {"X-QRIS-Forwarded": other})[0] == 401
        signed = forward_signature(TOKEN, question_of("payment", "QR0004"), now)
        assert _get(a.web_port, "/qris/payments/QR0004", None, {"X-QRIS-Forwarded": signed})[0] in (200, 404)
        # A caller's own mark beside a valid token is no peer's: each worker still asks the other.
        for ref in refs:
            for w in (a, b):
                status, body = _get(w.web_port, f"/qris/payments/{ref}", TOKEN, {"X-QRIS-Forwarded": "1"})
                assert status == 200 and body["reference"] == ref, (ref, w.web_port, body)
        status, body = _get(a.web_port, "/qris/accounts/7700009876/payments")
        assert status == 200
        got = {p["reference"] for p in body["payments"]}
        assert set(refs) <= got, set(refs) - got
        status, since = _get(b.web_port, "/qris/accounts/7700009876/payments?since=2025-03-29T07:05:00%2B07:00")
        assert status == 200 and 0 < since["count"] < body["count"]
        status, plus = _get(b.web_port, "/qris/accounts/7700009876/payments?since=2025-03-29T07:05:00+07:00")
        assert status == 400 and "write it %2B" in plus["error"]  # (an unencoded '+' is a space)
        assert _get(b.web_port, "/qris/accounts/7700009876/payments", token=None)[0] == 401
        # At most `limit` over both workers, the newest, with how many there are.
        status, two = _get(b.web_port, "/qris/accounts/7700009876/payments?limit=2")
        assert status == 200 and two["count"] == 2 and two["total"] == body["total"] == body["count"] > 2
        assert [p["reference"] for p in two["payments"]] == [p["reference"] for p in body["payments"][:2]]
        assert "the newest 2 of" in two["hint"] and "hint" not in body
        assert _get(b.web_port, "/qris/accounts/7700009876/payments?limit=0")[0] == 400
        # /metrics of both workers parse; together they saw every input record.
        ma, mb = _metrics(a.web_port), _metrics(b.web_port)
        total = 0.0
        for m in (ma, mb):
            total += sum(v for (n, _l), v in m.items() if n == "qris_input_records_total")
            total += sum(v for (n, _l), v in m.items() if n == "qris_records_waiting")
            assert ("qris_batch_duration_seconds_count", ()) in m
        assert total == len(records)
        rejected = sum(
            v
            for m in (ma, mb)
            for (n, lab), v in m.items()
            if n == "qris_input_records_total" and ("outcome", "dead_lettered") in lab
        )
        assert rejected == 2
        # Dead letters sent: a record redelivered to a partition's new owner has its dead letter
        # sent (and counted) again there, with the same id.
        dead = sum(v for m in (ma, mb) for (n, _l), v in m.items() if n == "qris_dead_letters_total")
        assert dead >= 2
    finally:
        a.stop()
        b.stop()


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (`worker --processes 2` serves on p and p + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("web_host", ["127.0.0.1", "0.0.0.0"])  # the default; docker-compose.yml's
def test_worker_processes_answer_the_lookup_of_a_reference_the_other_process_owns(
    tmp_path: Path, web_host: str
) -> None:
    """`worker --processes 2`: each process advertises its own web port in the group, and a
    process asked for a reference of a partition it does not own answers with the owner's
    answer (forwarded), as between hosts; account queries merge both processes. Also with the
    pages bound to every interface, as in the Compose worker container (`QRIS_WORKER_PROCESSES`):
    each process then advertises http://0.0.0.0:<its port>, which its sibling reaches."""
    bootstrap = require_broker()
    topics = fresh_topics(partitions=4)
    topics.create(bootstrap)
    env = {"QRIS_API_TOKEN": TOKEN, "QRIS_WEB_HOST": web_host}
    group = Worker(topics, tmp_path / "w", extra_env=env, args=["--processes", "2"])
    group.web_port = _two_free_ports()
    ports = [group.web_port, group.web_port + 1]
    records = scenario_records(topics.partitions)
    refs = sorted({r.key.decode() for r in records if r.key and r.key.startswith(b"QR0")})
    group.start(bootstrap)
    assert group.proc is not None
    children: list[int] = []
    try:
        owned: list[set[int]] = [set(), set()]
        deadline = time.monotonic() + 180
        produced = False
        while True:
            group.assert_alive()
            children = children or _children(group.proc.pid)
            try:
                stats = [_get(port, "/qris/stats", token=None) for port in ports]
            except OSError:  # a process not serving yet
                stats = []
            if stats and all(status == 200 for status, _ in stats):
                owned = [{int(p) for p in body["partitions"]} for _, body in stats]
                if not produced and all(owned):
                    produce(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
                    produced = True
                taken = sum(body["counts"]["records"] for _, body in stats)
                if produced and taken >= len(records) and all(owned) and owned[0] | owned[1] == {0, 1, 2, 3}:
                    break
            assert time.monotonic() < deadline, (stats, group.log_tail())
            time.sleep(0.5)
        assert not owned[0] & owned[1], owned
        # Settled answers (nothing left waiting for the watermark or the incidents), then each
        # reference asked of the process that does not own its partition: the owner's answer.
        deadline = time.monotonic() + 90
        while True:
            direct = {}
            for ref in refs:
                for port, mine in zip(ports, owned, strict=True):
                    status, body = _get(port, f"/qris/payments/{ref}")
                    assert status == 200, (ref, port, body)
                    if body["partition"] in mine:
                        direct[ref] = (port, body)
            assert set(direct) == set(refs)
            if all(body["status"] != "received" for _port, body in direct.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
        forwarded = 0
        for ref, (owner_port, body) in direct.items():
            other = ports[1 - ports.index(owner_port)]
            status, answer = _get(other, f"/qris/payments/{ref}")
            assert status == 200 and answer == body, (ref, answer, body)
            forwarded += 1
        assert forwarded == len(refs) and {b["partition"] for _p, b in direct.values()} == {0, 1, 2, 3}
        assert direct["QR0000"][1]["status"] == "settled"
        for port in ports:
            assert _get(port, "/qris/payments/NOPE")[0] == 404
            assert _get(port, "/qris/payments/QR0004", token="wrong")[0] == 401
            status, body = _get(port, "/qris/accounts/7700009876/payments")
            assert status == 200 and set(refs) <= {p["reference"] for p in body["payments"]}, body
    finally:
        group.stop()
        for pid in children:  # a child the parent failed to stop (never by name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_dashboard_shows_the_incident_during_an_outage_in_headless_chromium(tmp_path: Path) -> None:
    bootstrap = require_broker()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    topics = fresh_topics(partitions=2)
    topics.create(bootstrap)
    w = Worker(topics, tmp_path / "w")
    w.start(bootstrap)
    # The outage scenario up to 8 minutes after the switch stopped settling (16 minutes in, once
    # the detector has learned the baseline of `all`: 2,000 payments, 10 minutes): still open.
    sim = generate("outage", seed=29, start_ms=T0, minutes=40, rate_per_min=300, partitions=2, outage_at=0.4)
    cut_ms = T0 + 24 * 60_000
    records = [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in sim
        if r.timestamp_ms < cut_ms
    ]
    try:
        produce(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
        w.wait_processed(len(records), timeout_s=180)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = _metrics(w.web_port)
            if sum(v for (n, _l), v in m.items() if n == "qris_open_incidents") >= 1:
                break
            time.sleep(1)
        assert m[("qris_open_incidents", (("scope_type", "switch"),))] >= 1, m
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{w.web_port}/qris/dashboard")
            heading = page.locator("#incidents").inner_text()
            incident = page.locator("tr.incident").first.inner_text()
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert heading.startswith("Open incidents: ") and int(heading.split(": ")[1]) >= 1
        assert "switch" in incident and "RINTIS" in incident and ("opened" in incident or "updated" in incident)
        assert shot.stat().st_size > 10_000
        docs = ROOT / "docs" / "dashboard.png"
        shutil.copyfile(shot, docs)  # the README shows the latest run's page
    finally:
        w.stop()


def test_a_dead_payment_feed_pages_once_for_the_topic_and_recovers_once(tmp_path: Path) -> None:
    from kafka import KafkaProducer
    from stream.simulate import partition_for
    from tests.kafka_support import consume
    from tests.records import ledger, payment

    bootstrap = require_broker()
    topics = fresh_topics(partitions=2)
    topics.create(bootstrap)
    w = Worker(topics, tmp_path / "w", extra_env={"QRIS_IDLE_TIMEOUT_S": "3", "QRIS_LOG_FORMAT": "json"})
    w.start(bootstrap)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def send(topic: str, ref: str, value: bytes) -> None:
        producer.send(topic, key=ref.encode(), value=value, partition=partition_for(ref.encode(), 2))

    try:
        for i in range(8):  # both feeds flow on both partitions
            ref = f"OK{i}"
            send(topics.payment, ref, payment(f"{ref}-q", "requested", ref, i))
            send(topics.ledger, ref, ledger(f"{ref}-d", "debited", ref, i))
            send(topics.payment, ref, payment(f"{ref}-s", "settled", ref, i + 1))
        producer.flush()
        w.wait_processed(24, timeout_s=120)  # the worker is up and has seen both feeds
        for k in range(14):  # the payment feed is dead; the ledger goes on
            ref = f"L{k}"
            send(topics.ledger, ref, ledger(f"{ref}-d", "debited", ref, 60 + 40 * k))
            send(topics.ledger, f"M{k}", ledger(f"M{k}-d", "debited", f"M{k}", 60 + 40 * k))
            producer.flush()
            time.sleep(1)
        for i in range(8):  # it comes back on both partitions
            ref = f"B{i}"
            send(topics.payment, ref, payment(f"{ref}-q", "requested", ref, 700 + i))
            producer.flush()
        deadline = time.monotonic() + 60
        silent: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = consume(bootstrap, [topics.alerts], until=2, timeout_s=5, settle_s=1, worker=w)
            # (Once payments are back and the ledger stops, the ledger may go silent in turn.)
            silent = [v for _t, _k, v in got if v.get("kind") == "FEED_SILENT" and v["topic"] == topics.payment]
            if any(v["status"] == "resolved" for v in silent):
                break
            time.sleep(1)
    finally:
        producer.close()
        w.stop()
    assert [v["status"] for v in silent] == ["opened", "resolved"], silent
    assert all(v["topic"] == topics.payment and v["partitions"] == [0, 1] for v in silent)
    assert silent[0]["dedup_key"] == silent[1]["dedup_key"] == f"FEED_SILENT:{topics.payment}"
    # QRIS_LOG_FORMAT=json: the worker's log records are JSON lines, none in the text format.
    assert w.log_path is not None
    lines = w.log_path.read_text().splitlines()
    logged = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(logged) > 5 and {"ts", "level", "logger", "message"} <= set(logged[0])
    assert not [x for x in lines if x.startswith("[20")], "a log line in the text format"


def test_trace_from_kafka_names_the_records_and_the_refund(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    bootstrap = require_broker()
    topics = fresh_topics(partitions=4)
    topics.create(bootstrap)
    produce(bootstrap, scenario_records(4), {PAYMENT: topics.payment, LEDGER: topics.ledger})
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")} | topics.env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stream", "trace", *args, "--from-kafka", "--bootstrap", bootstrap]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    got = run("QR0004", "--json")
    assert got.returncode == 0, got.stderr
    t = json.loads(got.stdout)
    assert {f["event_id"] for f in t["records"]} == {"QR0004-q", "QR0004-d"}
    types = [d["value"]["type"] for d in t["decisions"] if d["role"] == "refunds"]
    assert types and types[0] in {"refund.requested", "refund.held"}  # held if an incident covers it
    unknown = run("NOPE")
    assert unknown.returncode == 1 and unknown.stdout.count("\n") == 1 and "unknown reference" in unknown.stdout
    # Records sent without a key can be in any partition (here 0; its key's is 2): trace reads
    # every one, also with holds off (it read only the key's partition then).
    from kafka import KafkaProducer
    from stream.simulate.partitioner import partition_for

    assert partition_for(b"KEYLESS7", 4) != 0
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topics.payment, value=payment("K7-q", "requested", "KEYLESS7", 5), partition=0)
    producer.send(topics.ledger, value=ledger("K7-d", "debited", "KEYLESS7", 5), partition=0)
    producer.flush()
    producer.close()
    env["QRIS_MAX_HOLD_S"] = "0"
    got = run("KEYLESS7", "--json", "--drain")
    assert got.returncode == 0, got.stdout + got.stderr
    assert {f["event_id"] for f in json.loads(got.stdout)["records"]} == {"K7-q", "K7-d"}


def test_a_replay_from_kafka_with_other_settings_than_the_live_worker_says_so(tmp_path: Path) -> None:
    # The live worker stamps the settings its decisions depend on on every output record; a
    # replay with another timeout decides otherwise, and says which setting differs.
    import subprocess
    import sys

    from kafka import KafkaConsumer, TopicPartition
    from stream.drivers.livesettings import SENT_BEHIND_HEADER, SETTINGS_HEADER, parse_header

    bootstrap = require_broker()
    topics = fresh_topics(partitions=2)
    topics.create(bootstrap)
    live_env = {"QRIS_TIMEOUT_S": "200", "QRIS_MAX_HOLD_S": "0"}
    w = Worker(topics, tmp_path / "w", extra_env=live_env)
    w.start(bootstrap)
    try:
        produce(bootstrap, scenario_records(2), {PAYMENT: topics.payment, LEDGER: topics.ledger})
        got = consume(bootstrap, [topics.refunds], until=1, timeout_s=120, settle_s=1, worker=w)
    finally:
        w.stop()
    assert got, "the live worker refunded nothing"

    def read(topic: str) -> list[tuple[dict[str, bytes], dict[str, Any]]]:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        try:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            msgs = [m for batch in consumer.poll(timeout_ms=5000).values() for m in batch]
            return [(dict(m.headers), json.loads(m.value)) for m in msgs]
        finally:
            consumer.close()

    refunds = read(topics.refunds)
    assert refunds and all(set(h) == {SETTINGS_HEADER} for h, _v in refunds)
    assert all(parse_header(h.items())["QRIS_TIMEOUT_S"] == "200" for h, _v in refunds)  # type: ignore[index]
    # Alerts also say how long after their `occurred_at` they were sent, for a forwarder to
    # route a backlog's alerts as a catch-up: the scenario's day is in 2025, more than a year
    # behind (the live-only alerts of the wall clock, such as FEED_SILENT, are not).
    behind = {v["alert_id"]: (v["occurred_at"][:4], int(h[SENT_BEHIND_HEADER])) for h, v in read(topics.alerts)}
    assert any(year == "2025" for year, _b in behind.values())
    assert all(b > 365 * 86_400_000 for year, b in behind.values() if year == "2025"), behind
    assert all(b < 3_600_000 for year, b in behind.values() if year != "2025"), behind

    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")} | topics.env()

    def replay(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stream", "replay", "--from-kafka", "--bootstrap", bootstrap, "--drain"]
        cmd += ["--out", str(tmp_path / "o.jsonl")]
        return subprocess.run(cmd, cwd=ROOT, env=env | extra, capture_output=True, text=True, timeout=120)

    # (the doctests of the check itself)
    import doctest

    from stream.drivers import livesettings

    assert doctest.testmod(livesettings).failed == 0
    other = replay({"QRIS_MAX_HOLD_S": "0"})
    assert other.returncode == 0, other.stderr
    assert "QRIS_TIMEOUT_S: live 200, here 300" in other.stderr and "decided with other settings" in other.stderr
    same = replay(live_env)
    assert same.returncode == 0, same.stderr
    assert "other settings" not in same.stderr


def test_a_replay_from_kafka_says_when_the_live_settings_are_not_on_the_outputs(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kafka import KafkaProducer

    bootstrap = require_broker()
    topics = fresh_topics(partitions=2)
    topics.create(bootstrap)
    produce(bootstrap, scenario_records(2), {PAYMENT: topics.payment, LEDGER: topics.ledger})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topics.refunds, key=b"r", value=b"{}", partition=0)  # a worker older than the stamp
    producer.flush()
    producer.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")} | topics.env()
    cmd = [sys.executable, "-m", "stream", "replay", "--from-kafka", "--bootstrap", bootstrap]
    got = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o.jsonl")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stderr
    assert "carry no settings of the live worker" in got.stderr and "other settings" not in got.stderr
