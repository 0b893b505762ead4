"""Input topics whose partition count changes under the worker (issue 9's "more partitions"):
Kafka's default partitioner then moves about half of the references to other partitions, a
payment in flight has its debit on one and its settlement on another, and each partition decides
alone: the debit is refunded although the payment settled (a helper's hunt: 272 refunds of
Rp 20,782,000 for settled payments on the outage day when both inputs went from 4 to 8
partitions mid-outage; 6,614 refunds of Rp 507,967,500 when only the ledger topic did). The
worker refuses to start on such topics and stops, with the same explanation, when it sees the
change while it runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewPartitions

from stream.security import aiokafka_config
from stream.settings import Settings
from stream.topics import (
    REPARTITION_HELP,
    assigned_beyond,
    changelog_mismatch,
    check_copartitioned,
    ensure_state_changelog,
    partitions_changed,
)
from stream.worker.partitioncounts import BrokerPartitionCounts
from tests.kafka_support import Topics, Worker, client_config, consume, fresh_prefix, require_broker


def test_a_changed_count_is_named_per_topic_and_an_unanswered_topic_is_not_judged() -> None:
    topics = ("p", "l")
    assert partitions_changed(4, {"p": 4, "l": 4}, topics) is None
    assert partitions_changed(4, {"p": 4}, topics) is None  # the broker did not answer for l
    problem = partitions_changed(4, {"p": 8, "l": 8}, topics)
    assert problem is not None and "p: 4 -> 8, l: 4 -> 8" in problem and REPARTITION_HELP in problem
    assert "l: 4 -> 8" in (partitions_changed(4, {"p": 4, "l": 8}, topics) or "")
    fewer = partitions_changed(4, {"p": 2, "l": 2}, topics)
    assert fewer is not None and "recreated" in fewer and "new QRIS_APP_ID" in fewer and REPARTITION_HELP not in fewer
    assert assigned_beyond({3, 0, 7, 4}, 4) == [4, 7]
    assert assigned_beyond(set(), 4) == []


def test_the_changelog_refusal_says_partitions_were_added_and_not_to_add_them_to_the_changelog() -> None:
    added = changelog_mismatch("app-state-changelog", 4, 8)
    assert "partitions were added to the input topics" in added
    assert "Do not add partitions to the state changelog" in added
    assert "settlement that lands on the other one cancels nothing" in added
    fewer = changelog_mismatch("app-state-changelog", 8, 4)
    assert "it must have one per input partition" in fewer and "new QRIS_APP_ID" in fewer


def _alter(bootstrap: str, count: int, *topics: str) -> None:
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        admin.create_partitions({t: NewPartitions(total_count=count) for t in topics})
    finally:
        admin.close()


def _wait_for(worker: Worker, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.log_path is not None
        if worker.log_path.exists() and text in worker.log_path.read_text(errors="replace"):
            return
        worker.assert_alive()
        time.sleep(0.3)
    raise AssertionError(f"no {text!r} in the worker's log in {timeout_s} s:\n{worker.log_tail()}")


@pytest.mark.kafka
def test_the_worker_stops_when_the_inputs_get_partitions_and_refuses_to_start_again(tmp_path: Path) -> None:
    bootstrap = require_broker()
    topics = Topics(fresh_prefix("trepart"), partitions=2)
    topics.create(bootstrap)
    worker = Worker(topics, tmp_path / "w", app_id=fresh_prefix("trepart-app-", 8))
    worker.start(bootstrap)
    try:
        _wait_for(worker, "assigned input partitions [0, 1]", 90)
        _alter(bootstrap, 3, topics.payment, topics.ledger)
        # The worker's own check (every 10 s), not its client's next metadata refresh (5 min).
        assert worker.proc is not None
        assert worker.proc.wait(60) == 1, worker.log_tail()
        log = worker.log_tail(200)
        assert "changed partition count while the worker ran" in log and "2 -> 3" in log, log
        assert "Do not add partitions to the state changelog" in log
        assert "IO loop starting" not in log  # (kafka-python at INFO: the running check uses none)
        # Started again (a supervisor's restart): refused, with the same explanation.
        worker.start(bootstrap)
        assert worker.proc.wait(60) == 1, worker.log_tail()
        assert "partitions were added to the input topics" in worker.log_tail(), worker.log_tail()
        # Both said on the alerts topic, where payment operations look: one problem, one alert id.
        said = [v for _t, _k, v in consume(bootstrap, [topics.alerts], until=2, timeout_s=30)]
        stops = [v for v in said if v["kind"] == "INPUT_REPARTITIONED"]
        assert len(stops) == 2, said
        assert {v["alert_id"] for v in stops} == {stops[0]["alert_id"]}
        assert [v["observed"] for v in stops] == [{"partitions": 3, "expected_partitions": 2}] * 2
        assert all(v["severity"] == "critical" and v["topic"] == topics.payment for v in stops)
        assert "2 -> 3" in stops[0]["summary"] and "partitions were added" in stops[1]["summary"]
        assert all(v["summary"].startswith("qris-guard stopped: no payment is decided") for v in stops)
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()


@pytest.mark.kafka
def test_only_one_input_given_partitions_is_refused_with_the_explanation() -> None:
    bootstrap = require_broker()
    topics = Topics(fresh_prefix("trepart"), partitions=2)
    topics.create(bootstrap)
    settings = Settings(bootstrap=bootstrap, app_id=fresh_prefix("trepart-app-", 8)).with_topic_prefix(topics.prefix)
    ensure_state_changelog(settings, check_copartitioned(settings))
    _alter(bootstrap, 3, topics.ledger)
    with pytest.raises(SystemExit, match="not co-partitioned") as refused:
        check_copartitioned(settings)
    assert "Do not add partitions to the state changelog" in str(refused.value)
    _alter(bootstrap, 3, topics.payment)  # the other one too: now the kept state's count differs
    with pytest.raises(SystemExit, match="partitions were added to the input topics"):
        ensure_state_changelog(settings, check_copartitioned(settings))


@pytest.mark.kafka
def test_the_running_check_sees_the_new_count_at_once_and_creates_no_missing_topic() -> None:
    """The client of the running worker's check (`BrokerPartitionCounts`): one long-lived client
    whose every ask is the broker's answer now, not its cached metadata; a topic the broker does
    not know is missing from the answer (never 0) and is not created, although this broker
    creates topics on a metadata request that lets it (`auto.create.topics.enable`)."""
    bootstrap = require_broker()
    topics = Topics(fresh_prefix("trepart"), partitions=2)
    topics.create(bootstrap)
    missing = f"{fresh_prefix('trepart')}.not-created"
    settings = Settings(bootstrap=bootstrap)
    counts = BrokerPartitionCounts(aiokafka_config(settings), f"{topics.prefix}-partition-counts")

    async def ask_around_a_change() -> list[dict[str, int]]:
        asked = [topics.payment, topics.ledger, missing]
        try:
            answers = [await counts.ask(asked)]
            await asyncio.to_thread(_alter, bootstrap, 3, topics.ledger)
            # (the broker's own metadata cache may take a moment after the change's answer)
            while len(answers) < 4 and answers[-1].get(topics.ledger) != 3:
                await asyncio.sleep(0.5)
                answers.append(await counts.ask(asked))
            return answers
        finally:
            await counts.close()

    answers = asyncio.run(ask_around_a_change())
    assert answers[0] == {topics.payment: 2, topics.ledger: 2}
    assert answers[-1] == {topics.payment: 2, topics.ledger: 3}, answers
    assert len(answers) <= 3, answers  # seen within a check or two
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        assert missing not in admin.list_topics()
    finally:
        admin.close()
