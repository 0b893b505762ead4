"""Kafka tier: the tooling's topic clean-up deletes exactly the topics of the prefixes it is
given, and says what the broker holds (benchmarks print it beside their numbers)."""

from __future__ import annotations

import uuid

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


@pytest.mark.kafka
def test_delete_topics_with_prefix_deletes_those_topics_and_no_other() -> None:
    bootstrap = require_broker()
    settings = Settings(bootstrap=bootstrap)
    run = uuid.uuid4().hex[:8]
    a, b, other = f"tdel{run}a", f"tdel{run}b", f"tkeep{run}"
    names = [f"{a}.payment-requests", f"{a}-state-changelog", f"{b}.refunds", f"{other}.refunds"]
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1) for n in names])
        topics_before, partitions_before = broker_holds(settings)
        gone = delete_topics_with_prefix(settings, a, b)
        assert gone == sorted(names[:3])
        left = set(admin.list_topics())
        assert other + ".refunds" in left
        assert not left & set(names[:3])
        topics_after, partitions_after = broker_holds(settings)
        # Other sessions may add or delete topics meanwhile; this one's three went.
        assert topics_before >= len(names) and partitions_before >= 3 * len(names)
        assert topics_after <= topics_before - 3 or partitions_after <= partitions_before - 9
    finally:
        admin.delete_topics([f"{other}.refunds"])
        admin.close()
