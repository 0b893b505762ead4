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
