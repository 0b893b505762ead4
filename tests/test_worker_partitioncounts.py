"""The running worker's check of its input topics' partition counts: what it does after each
answer (`topics.InputPartitionsCheck`, pure), and its client (`BrokerPartitionCounts`) against a
broker that refuses or never answers. The Kafka tier asks a real one and sees a change
(tests/test_kafka_repartition.py)."""

from __future__ import annotations

import asyncio
import doctest
import socket
import threading
import time

import pytest

from stream import topics
from stream.settings import Settings
from stream.topics import REPARTITION_HELP, UNANSWERED_WARNINGS_AT, InputPartitionsCheck, PartitionsRefused
from stream.worker.partitioncounts import BrokerPartitionCounts, PartitionCountsUnknown

INPUTS = ("p", "l")


def test_the_check_stops_on_a_changed_count_in_either_direction_and_on_one_topic_alone() -> None:
    more = InputPartitionsCheck(4, INPUTS).answered({"p": 8, "l": 8})
    assert more is not None and more.kind == "stop" and "p: 4 -> 8, l: 4 -> 8" in more.text
    assert REPARTITION_HELP in more.text
    fewer = InputPartitionsCheck(4, INPUTS).answered({"p": 2, "l": 2})
    assert fewer is not None and fewer.kind == "stop" and "recreated" in fewer.text
    # The broker answered for the ledger topic only: what it answered is judged.
    one = InputPartitionsCheck(4, INPUTS).answered({"l": 5})
    assert one is not None and one.kind == "stop" and "l: 4 -> 5" in one.text


def test_no_answer_or_no_partitions_never_stops_and_warns_after_a_minute_and_an_hour() -> None:
    check = InputPartitionsCheck(4, INPUTS)
    answers: list[dict[str, int | None] | None] = [None, {}, {"p": 4}, {"p": 0, "l": 0}, {"p": None, "l": 4}]
    actions = []
    for i in range(400):
        answer = answers[i % len(answers)]
        actions.append(check.not_answered("TimeoutError") if answer is None else check.answered(answer))
    said = [(n, a) for n, a in enumerate(actions, 1) if a is not None]
    assert [n for n, _ in said] == list(UNANSWERED_WARNINGS_AT) == [6, 360]
    assert all(a.kind == "warn" and "a change would not be seen" in a.text for _, a in said)
    assert "6 checks in a row (TimeoutError)" in said[0][1].text
    assert "360 checks in a row (no partitions known for p)" in said[1][1].text


def test_a_full_answer_ends_the_run_of_unanswered_checks() -> None:
    check = InputPartitionsCheck(4, INPUTS)
    for _ in range(5):
        assert check.not_answered("TimeoutError") is None
    assert check.answered({"p": 4, "l": 4}) is None and check.unanswered_in_a_row == 0
    assert [check.not_answered("TimeoutError") for _ in range(5)] == [None] * 5
    warned = check.not_answered("TimeoutError")
    assert warned is not None and warned.kind == "warn"
    # A change seen after a run of unanswered checks still stops the worker.
    stop = check.answered({"p": 6, "l": 6})
    assert stop is not None and stop.kind == "stop"


@pytest.mark.parametrize("grown", ["payment", "ledger"])
def test_a_refusal_of_inputs_not_co_partitioned_names_the_topic_that_got_partitions(
    grown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same change the running check stopped for: the same topic, counts and alert id.
    s = Settings()
    counts = {s.payment_topic: 4, s.ledger_topic: 4, getattr(s, f"{grown}_topic"): 8}

    class NoAdmin:
        def close(self) -> None:
            pass

    monkeypatch.setattr(topics, "admin_client", lambda *a, **k: NoAdmin())
    monkeypatch.setattr(topics, "partition_counts", lambda admin, names: dict(counts))
    with pytest.raises(PartitionsRefused) as refused:
        topics.check_copartitioned(s)
    stop = InputPartitionsCheck(4, (s.payment_topic, s.ledger_topic)).answered(counts)
    assert stop is not None and stop.kind == "stop"
    assert (refused.value.topic, refused.value.found, refused.value.expected) == (stop.topic, stop.found, 4)
    assert refused.value.topic == getattr(s, f"{grown}_topic")


def test_the_topics_doctests() -> None:
    assert doctest.testmod(topics, raise_on_error=False, verbose=False).failed == 0


def test_nothing_asked_is_answered_without_the_broker() -> None:
    counts = BrokerPartitionCounts({"bootstrap_servers": "127.0.0.1:1"}, "qris-x-partition-counts", timeout_s=0.5)
    assert asyncio.run(counts.ask([])) == {}


@pytest.mark.slow
def test_a_broker_that_refuses_or_never_answers_is_unknown_within_the_timeout_each_check() -> None:
    """Each check is asked again (a failed start is not kept), on the event loop: no thread."""
    with socket.socket() as silent:  # accepts connections, never answers a request
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for address in ("127.0.0.1:1", f"127.0.0.1:{silent.getsockname()[1]}"):
            counts = BrokerPartitionCounts({"bootstrap_servers": address}, "qris-x-partition-counts", timeout_s=0.3)
            threads = threading.active_count()

            async def check_three_times(counts: BrokerPartitionCounts = counts, threads: int = threads) -> list[float]:
                took = []
                try:
                    for _ in range(3):
                        started = time.monotonic()
                        with pytest.raises(PartitionCountsUnknown):
                            await counts.ask(INPUTS)
                        took.append(time.monotonic() - started)
                        assert threading.active_count() == threads
                        await asyncio.sleep(0.1)
                finally:
                    await counts.close()
                return took

            assert all(s < 1.0 for s in asyncio.run(check_three_times())), address
