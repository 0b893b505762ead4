"""Kafka tier: a state restore that really hangs is detected and the worker restarts itself
(issue 9), then decides exactly what offline replay decides.

The hang is the broker's, not a mock: the test gives the restore consumer of this test's app
(client id `<app id>-state-restore`, its own) a fetch quota of 1 byte/s with Kafka's
AlterClientQuotas, so the broker holds back every fetch of that client past its request timeout
while the rest of the worker (its group, its input, its producers) goes on; a new pod (data
directory wiped) must read the whole changelog. The worker logs the stall, counts it in
`qris_worker_self_restarts_total{reason="state_restore_stalled"}` and replaces its process
(`execv`, same pid); the test lifts the quota once the restart is logged, and the new process
restores and catches up. The second test has the hang in a rebalance: a second worker joins a
running one and the restore of the partitions it is given stalls. Both run on the broker the
session was given: the quota names only this test's client id and is removed in any case, so
nothing else on that broker is slowed or paused.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from kafka.protocol.admin.client_quotas import AlterClientQuotasRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.kafka_support import Worker, client_config, fresh_topics, produce, require_broker
from tests.test_kafka_chaos import ChaosResult, await_replays_decisions, brief, judge
from tests.test_kafka_worker import simulated

pytestmark = pytest.mark.kafka

STALL_S = 5  # QRIS_RECOVERY_STALL_S of the test's worker (60 by default)
STALL_LOG = re.compile(r"state restore of partition (\d+) made no progress for (\d+) s")


def set_fetch_quota(bootstrap: str, client_id: str, bytes_per_s: float | None) -> None:
    """Kafka's `consumer_byte_rate` quota of one client id (None: removed). kafka-python 3.0 has
    the protocol message but no admin call for it yet: sent over the admin client's connection."""
    entry = AlterClientQuotasRequest.EntryData
    op = entry.OpData(key="consumer_byte_rate", value=float(bytes_per_s or 0), remove=bytes_per_s is None)
    request = AlterClientQuotasRequest(
        entries=[entry(entity=[entry.EntityData(entity_type="client-id", entity_name=client_id)], ops=[op])],
        validate_only=False,
    )
    admin = KafkaAdminClient(**client_config(bootstrap), client_id="qris-test")
    try:
        response = admin._manager.run(admin._manager.send, request)
    finally:
        admin.close()
    errors = [e.error_message or e.error_code for e in response.entries if e.error_code]
    assert not errors, f"AlterClientQuotas {client_id}: {errors}"


def self_restarts(worker: Worker) -> dict[str, float]:
    """`qris_worker_self_restarts_total` by reason, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "qris_worker_self_restarts_total"
    }


def stall_lines(worker: Worker) -> list[tuple[str, str]]:
    """(partition, seconds) of each restore stall the worker logged, over its incarnations."""
    return STALL_LOG.findall(worker.log_tail(10**6))


def test_a_hung_state_restore_restarts_the_worker_which_then_decides_exactly_what_replay_decides(
    tmp_path: Path,
) -> None:
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    # The chaos tier's short day (about 8k records: an outage, holds, late settlements, dead letters).
    records = simulated(topics, "mixed", seed=61, minutes=None, payments=2_700, rate_per_min=120)
    first, rest = records[: len(records) * 2 // 3], records[len(records) * 2 // 3 :]
    identity = {topics.payment: topics.payment, topics.ledger: topics.ledger}
    env = {"QRIS_RECOVERY_STALL_S": str(STALL_S)}
    data_dir = tmp_path / "w"
    a = Worker(topics, data_dir, extra_env=env)
    b = Worker(topics, data_dir, extra_env=env, app_id=a.app_id)
    restore_client = f"{a.app_id}-state-restore"
    result = ChaosResult("restore-hang", len(records), kills=1, restarts=1)  # the first worker's pod replaced
    got = []
    try:
        # A first worker builds state (and its changelog), then dies; its pod is replaced by one
        # with an empty disk, which must restore every partition from the changelog.
        a.start(bootstrap)
        produce(bootstrap, first, identity)
        a.wait_processed(len(first), timeout_s=180)
        a.kill()
        for entry in data_dir.iterdir():  # the worker logs stay, for the record
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.suffix != ".log":
                entry.unlink()
        produce(bootstrap, rest, identity)
        set_fetch_quota(bootstrap, restore_client, 1.0)
        try:
            b.start(bootstrap)
            deadline = time.monotonic() + 180
            while not STALL_LOG.search(b.log_tail(10**6)):
                b.assert_alive()
                assert time.monotonic() < deadline, f"no stall detected in 180 s:\n{b.log_tail()}"
                time.sleep(0.5)
        finally:
            set_fetch_quota(bootstrap, restore_client, None)
        got = await_replays_decisions(bootstrap, topics, [b], lambda: None)
        restarts = self_restarts(b)
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
    log = b.log_tail(10**6)
    stalls = STALL_LOG.findall(log)
    judge(result, bootstrap, topics, got, [a, b])
    print(result.line(), f"({len(stalls)} restore stall(s) restarted; logs in {tmp_path})", file=sys.stderr)
    # Detected at the watchdog's setting; the process replaced itself (it never exited: the test
    # checked it alive throughout), the new one counts it and then read the whole changelog.
    assert stalls and all(int(s) == STALL_S for _p, s in stalls), stalls
    assert restarts["state_restore_stalled"] == len(stalls) and sum(restarts.values()) == len(stalls), restarts
    after_last_stall = log[[m.end() for m in STALL_LOG.finditer(log)][-1] :]
    assert re.search(r"partition \d+: \d+ changelog message\(s\) read from offset 0", after_last_stall), log[-3000:]
    assert not result.missed and not result.extra and not result.conflicting, (
        f"{result.line()}\nmissed {brief(result.missed)}\nextra {brief(result.extra)}\n"
        f"conflicting {result.conflicting[:5]}; logs in {tmp_path}"
    )


@pytest.mark.chaos
def test_a_group_member_whose_restore_hangs_in_a_rebalance_restarts_and_the_group_decides_exactly(
    tmp_path: Path,
) -> None:
    """The shape of the hang issue 9 saw in the two-worker test: a second worker joins a running
    one and the restore of the partitions it is given stalls (the same quota, which applies to
    every restore of this app: the first worker's too, if a rebalance gives it partitions to
    restore meanwhile). Whoever stalls restarts itself; once the quota is lifted the group
    settles, both workers own partitions, and every decision equals offline replay's."""
    bootstrap = require_broker()
    topics = fresh_topics()
    topics.create(bootstrap)
    records = simulated(topics, "mixed", seed=62, minutes=None, payments=2_700, rate_per_min=120)
    first, rest = records[: len(records) // 2], records[len(records) // 2 :]
    identity = {topics.payment: topics.payment, topics.ledger: topics.ledger}
    env = {"QRIS_RECOVERY_STALL_S": str(STALL_S)}
    a = Worker(topics, tmp_path / "a", extra_env=env)
    b = Worker(topics, tmp_path / "b", extra_env=env, app_id=a.app_id)
    restore_client = f"{a.app_id}-state-restore"
    result = ChaosResult("restore-hang-rebalance", len(records))
    got = []
    try:
        a.start(bootstrap)
        produce(bootstrap, first, identity)
        a.wait_processed(len(first), timeout_s=180)
        set_fetch_quota(bootstrap, restore_client, 1.0)
        try:
            b.start(bootstrap)
            deadline = time.monotonic() + 180
            while not stall_lines(b):  # the joiner's restore (the first worker restores nothing here)
                a.assert_alive()
                b.assert_alive()
                assert time.monotonic() < deadline, f"no stall detected in 180 s:\n{b.log_tail()}"
                time.sleep(0.5)
        finally:
            set_fetch_quota(bootstrap, restore_client, None)
        produce(bootstrap, rest, identity)
        got = await_replays_decisions(bootstrap, topics, [a, b], lambda: None)
        restarts = [self_restarts(a), self_restarts(b)]
        owned = [a.stats()["partitions"], b.stats()["partitions"]]
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
    stalls = [stall_lines(a), stall_lines(b)]
    judge(result, bootstrap, topics, got, [a, b])
    print(
        result.line(),
        f"(restore stalls restarted: first worker {len(stalls[0])}, second {len(stalls[1])}; logs in {tmp_path})",
        file=sys.stderr,
    )
    assert stalls[1], "the joining worker's restore did not stall"
    for lines, counted in zip(stalls, restarts, strict=True):
        assert counted["state_restore_stalled"] == len(lines) and sum(counted.values()) == len(lines), counted
    assert all(owned), owned  # both in the group at the end, each with partitions
    assert not result.missed and not result.extra and not result.conflicting, (
        f"{result.line()}\nmissed {brief(result.missed)}\nextra {brief(result.extra)}\n"
        f"conflicting {result.conflicting[:5]}; logs in {tmp_path}"
    )
