"""Kafka tier: the tooling's topic clean-up deletes exactly the topics of the prefixes it is
given, and says what the broker holds (benchmarks print it beside their numbers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from stream.settings import Settings
from stream.topics import broker_holds, delete_topics_with_prefix
from tests.kafka_support import client_config, require_broker


def test_an_empty_prefix_is_refused_before_the_broker_is_asked() -> None:
    # (No broker here: the address is never dialled.)
    settings = Settings(bootstrap="127.0.0.1:1")
    with pytest.raises(ValueError, match="empty prefix"):
        delete_topics_with_prefix(settings, "")
    with pytest.raises(ValueError, match="empty prefix"):
        delete_topics_with_prefix(settings, "bench-1", "")
    with pytest.raises(ValueError, match="empty prefix"):
        delete_topics_with_prefix(settings)


def _until(check: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    # Topic creation and deletion reach the broker's metadata a moment after the admin call.
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.kafka
def test_delete_topics_with_prefix_deletes_those_topics_and_no_other() -> None:
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap)
    run = uuid.uuid4().hex[:8]
    a, b, other = f"tdel{run}a", f"tdel{run}b", f"tkeep{run}"
    names = [f"{a}.payment-requests", f"{a}-state-changelog", f"{b}.refunds", f"{other}.refunds"]
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        topics_0, partitions_0 = broker_holds(settings)
        admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1) for n in names])
        assert _until(lambda: broker_holds(settings) == (topics_0 + 4, partitions_0 + 12)), broker_holds(settings)
        gone = delete_topics_with_prefix(settings, a, b)
        assert gone == sorted(names[:3])
        assert _until(lambda: not set(admin.list_topics()) & set(names[:3]))
        assert other + ".refunds" in admin.list_topics()
        assert _until(lambda: broker_holds(settings) == (topics_0 + 1, partitions_0 + 3)), broker_holds(settings)
    finally:
        admin.delete_topics([f"{other}.refunds"])
        admin.close()


@pytest.mark.kafka
def test_simulate_writes_to_the_configured_topics_and_refuses_another_partition_count() -> None:
    """`simulate --bootstrap` writes where the worker reads (`QRIS_*_TOPIC`, `QRIS_PARTITIONS`),
    not into the contract's default topics; topics of another partition count than the one
    simulated are topics it cannot work with: exit 1, one line."""
    import os
    import subprocess
    import sys

    from kafka import KafkaConsumer, TopicPartition
    from tests.kafka_support import ROOT

    bootstrap = require_broker()
    run = uuid.uuid4().hex[:8]
    pay, led = f"tsim{run}.payment-requests", f"tsim{run}.ledger-debits"
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    admin.create_topics([NewTopic(n, num_partitions=2, replication_factor=1) for n in (pay, led)])
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    env = {**base, "QRIS_PAYMENT_TOPIC": pay, "QRIS_LEDGER_TOPIC": led, "QRIS_PARTITIONS": "2"}

    def simulate(*extra: str) -> subprocess.CompletedProcess[str]:
        args = ["simulate", "--scenario", "normal", "--minutes", "2", "--bootstrap", bootstrap, *extra]
        command = [sys.executable, "-m", "stream", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    consumer = KafkaConsumer(**client_config(bootstrap), client_id="qris-test")
    try:
        assert _until(lambda: {pay, led} <= set(admin.list_topics()))
        done = simulate()
        assert done.returncode == 0, done.stderr
        ends = consumer.end_offsets([TopicPartition(t, p) for t in (pay, led) for p in (0, 1)])
        assert all(n > 0 for n in ends.values()), ends
        refused = simulate("--partitions", "4")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr
        assert f"topic {pay} has 2 partitions, the simulation assumed 4" in lines[0]
    finally:
        consumer.close()
        admin.delete_topics([pay, led])
        admin.close()


@pytest.mark.kafka
def test_a_worker_whose_output_topic_is_missing_refuses_to_start_and_creates_nothing() -> None:
    """A mistyped `QRIS_REFUND_TOPIC` (`.refund` for `.refunds`): the broker here creates a topic
    at its first send (`auto.create.topics.enable`), so the refunds would go where the refund
    service does not read. The worker stops before its first record: exit 1, naming the topic."""
    import os
    import subprocess
    import sys

    from tests.kafka_support import ROOT, fresh_topics

    bootstrap = require_broker()
    topics = fresh_topics(2)
    topics.create(bootstrap)
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        assert _until(lambda: {topics.payment, topics.ledger, topics.refunds} <= set(admin.list_topics()))
        mistyped = topics.refunds[: -len("s")]
        base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
        env = {**base, **topics.env(), "QRIS_BOOTSTRAP": bootstrap, "QRIS_REFUND_TOPIC": mistyped}
        done = subprocess.run(
            [sys.executable, "-m", "stream", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1, done.stderr
        assert f"output topics missing on {bootstrap}: {mistyped};" in done.stderr
        assert mistyped not in admin.list_topics()
    finally:
        admin.close()
