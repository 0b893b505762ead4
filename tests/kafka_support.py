"""The Kafka tier's plumbing: the real broker (kafka/broker.sh), fresh topics and app ids per
test, the worker as a subprocess, producing records and consuming outputs until N arrive.

An unreachable broker is a failure, never a skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka.admin import KafkaAdminClient, NewTopic

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from stream.drivers.replayfile import KafkaRecord
from stream.security import kafka_python_config
from stream.settings import DOCS, Settings, to_env
from stream.topics import delete_topics_with_prefix, incidents_topic, signals_topic, snapshots_topic

# A broker address (PLAINTEXT) or the settings to connect with (security included).
Client = str | Settings


def client_config(client: Client) -> dict[str, Any]:
    """kafka-python's connection options for `client`, as the product builds them."""
    return kafka_python_config(client if isinstance(client, Settings) else Settings(bootstrap=client))


ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = os.environ.get("QRIS_BOOTSTRAP", "127.0.0.1:9092")


def require_broker() -> str:
    """The broker's address, after a real admin call; fails the test if it does not answer."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=10_000, client_id="qris-test")
        admin.list_topics()
        admin.close()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker fails the tier
        raise AssertionError(
            f"Kafka broker at {BOOTSTRAP} is not reachable ({exc!r}); start it with `make broker-up`"
        ) from exc
    return BOOTSTRAP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Topics:
    """A fresh set of the contract's topics for one test."""

    prefix: str
    partitions: int = 4
    # Named as the product names a prefixed set (`Settings.with_topic_prefix`).
    payment: str = field(init=False)
    ledger: str = field(init=False)
    refunds: str = field(init=False)
    alerts: str = field(init=False)
    dead_letter: str = field(init=False)
    signals: str = field(init=False)
    incidents: str = field(init=False)
    snapshots: str = field(init=False)
    _settings: Settings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = Settings(partitions=self.partitions).with_topic_prefix(self.prefix)
        self.payment, self.ledger = s.payment_topic, s.ledger_topic
        self.refunds, self.alerts, self.dead_letter = s.refund_topic, s.alert_topic, s.dead_letter_topic
        self.signals = s.signals_topic
        self.incidents = s.incidents_topic
        self.snapshots = s.snapshots_topic
        self._settings = s

    def outputs(self) -> list[str]:
        return [self.refunds, self.alerts, self.dead_letter]

    def env(self) -> dict[str, str]:
        """The worker's topic settings (and partition count) as `QRIS_*` variables."""
        env = to_env(self._settings)
        topic_vars = [v for name, (v, _doc) in DOCS.items() if name.endswith("_topic") or name == "partitions"]
        return {v: env[v] for v in topic_vars}

    def create(self, bootstrap: Client) -> None:
        admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
        try:
            admin.create_topics(
                [
                    *(
                        NewTopic(t, num_partitions=self.partitions, replication_factor=1)
                        for t in [self.payment, self.ledger, *self.outputs()]
                    ),
                    signals_topic(self.signals),
                    incidents_topic(self.incidents),
                    snapshots_topic(self.snapshots),
                ]
            )
        finally:
            admin.close()


# The prefixes of the topics this session's tests made (topic sets and workers' app ids):
# deleted when the session ends (`conftest.pytest_sessionfinish`), so a developer's broker does
# not pile up thousands of partitions over runs (it slows the broker and every benchmark on it).
RUN_PREFIXES: set[str] = set()


def fresh_prefix(start: str = "t", digits: int = 10) -> str:
    """A new name prefix (`start` and random hex digits) whose topics go when the session ends:
    for a test's own topic names and app ids (a Faust app's topics are named after its id)."""
    prefix = f"{start}{uuid.uuid4().hex[:digits]}"
    RUN_PREFIXES.add(prefix)
    return prefix


def fresh_topics(partitions: int = 4) -> Topics:
    return Topics(fresh_prefix(), partitions)


def delete_run_topics() -> int:
    """Delete the topics of `RUN_PREFIXES` (unless `QRIS_TEST_KEEP_TOPICS=1`); how many went."""
    if not RUN_PREFIXES or os.environ.get("QRIS_TEST_KEEP_TOPICS") == "1":
        return 0
    gone = delete_topics_with_prefix(Settings(bootstrap=BOOTSTRAP), *sorted(RUN_PREFIXES))
    RUN_PREFIXES.clear()
    return len(gone)


@dataclass
class Worker:
    """`python -m stream worker` as a subprocess with its own app id and data dir."""

    topics: Topics
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    app_id: str = field(default_factory=lambda: fresh_prefix("qris-test-", 8))
    proc: subprocess.Popen[bytes] | None = None
    web_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)  # after `worker`, e.g. ["--processes", "2"]

    def start(self, bootstrap: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
        env.update(self.topics.env())
        env.update(
            {
                "QRIS_BOOTSTRAP": bootstrap,
                "QRIS_APP_ID": self.app_id,
                "QRIS_DATA_DIR": str(self.data_dir),
                "QRIS_WEB_PORT": str(self.web_port),
                "QRIS_IDLE_TIMEOUT_S": "3600",
                "QRIS_LOG_LEVEL": os.environ.get("QRIS_TEST_WORKER_LOG_LEVEL", "info"),
                "QRIS_SESSION_TIMEOUT_S": "8",
            }
        )
        env.update(self.extra_env)
        self.log_path = self.data_dir / f"worker-{int(time.time() * 1000)}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", *self.args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/qris/stats", timeout=5) as resp:
            return dict(orjson.loads(resp.read()))

    def wait_processed(self, n: int, timeout_s: float = 90) -> dict[str, Any]:
        """Wait until the worker has taken `n` input records (its /qris/stats page)."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                last = self.stats()
            except OSError:
                last = {}
            if last.get("counts", {}).get("records", 0) >= n:
                return last
            time.sleep(0.3)
        raise AssertionError(f"worker took fewer than {n} records in {timeout_s} s: {last}\n{self.log_tail()}")

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")


def produce(bootstrap: Client, records: Iterable[KafkaRecord], topic_map: dict[str, str]) -> int:
    """Produce records to their mapped topic and recorded partition, in order; flush."""
    producer = KafkaProducer(**client_config(bootstrap), acks="all", linger_ms=5, batch_size=256 * 1024)
    n = 0
    try:
        for rec in records:
            producer.send(topic_map[rec.topic], key=rec.key, value=rec.value, partition=rec.partition)
            n += 1
        producer.flush(60)
    finally:
        producer.close()
    return n


def consume(
    bootstrap: Client,
    topics: list[str],
    *,
    until: int,
    timeout_s: float,
    settle_s: float = 3.0,
    worker: Worker | None = None,
) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    """Read `topics` from the beginning until `until` records arrived (then `settle_s` more, to
    see any extras) or `timeout_s` passed. Returns (topic, key, value)."""
    consumer = KafkaConsumer(**client_config(bootstrap), group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[tuple[str, bytes | None, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if worker is not None:
                worker.assert_alive()
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                out += [(tp.topic, m.key, orjson.loads(m.value)) for m in msgs]
            if len(out) >= until and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        consumer.close()
    return out


# The security settings qris-guard clients take (`to_env` names), for a worker subprocess.
SECURITY_VARS = [
    var for name, (var, _doc) in DOCS.items() if name == "security_protocol" or name.startswith(("sasl_", "ssl_"))
]


def require_sasl_ssl() -> Settings:
    """Settings that reach the broker's SASL_SSL listener as user `qris` (SCRAM-SHA-512), found
    the way kafka/broker.sh makes them: its run dir (QRIS_KAFKA_RUN_DIR, else kafka/.run) holds
    the CA (tls/ca.pem) and the generated password (scram-password); the port is
    QRIS_KAFKA_SASL_SSL_PORT (default 9094) on the PLAINTEXT listener's host. Fails the test,
    never skips, when the listener is not there."""
    require_broker()
    run_dir = Path(os.environ.get("QRIS_KAFKA_RUN_DIR", ROOT / "kafka" / ".run"))
    ca, password = run_dir / "tls" / "ca.pem", run_dir / "scram-password"
    host = BOOTSTRAP.split(",")[0].rpartition(":")[0]
    port = os.environ.get("QRIS_KAFKA_SASL_SSL_PORT", "9094")
    if not (ca.is_file() and password.is_file()):
        raise AssertionError(
            f"no SASL_SSL material in {run_dir} (tls/ca.pem, scram-password): restart the broker with "
            "kafka/broker.sh (it adds the SASL_SSL listener), or set QRIS_KAFKA_RUN_DIR to its run dir"
        )
    return Settings(
        bootstrap=f"{host}:{port}",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=os.environ.get("QRIS_KAFKA_SCRAM_USER", "qris"),
        sasl_password_file=str(password),
        ssl_cafile=str(ca),
    )


def security_env(settings: Settings) -> dict[str, str]:
    """The settings' security as `QRIS_*` variables, for a qris-guard subprocess."""
    env = to_env(settings)
    return {var: env[var] for var in SECURITY_VARS}
