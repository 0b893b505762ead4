"""Kafka tier, chaos: a realistic day with an outage (the simulator's `mixed` scenario) while the
worker is killed with SIGKILL at seeded random moments and restarted, (a) with its local store
kept, (b) with its data directory wiped before each restart (state from the changelog). Every
decision is compared with offline replay of the topics (no `--drain` on either side): 0 missed,
0 extra, and every repeated delivery identical to the first (same id, same content).

`make test` runs a short version (about 8k records, 2 kills per case); `make chaos` the full
one (`QRIS_TEST_CHAOS=full`: about 45k records, 5 kills per case) and prints the summary line.
`make chaos` also kills the BROKER (SIGKILL, 3 times) and starts it again under a working worker:
on a broker of the test's own (kafka/broker.sh on free ports, data in the test's temp dir), never
the shared one; that case is not in `make test` (the short version takes over two minutes, most
of it the broker's two starts).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from kafka import KafkaProducer
from stream.drivers.replayfile import KafkaRecord
from stream.settings import Settings
from tests.kafka_support import ROOT, Topics, Worker, consume, free_port, fresh_topics, require_broker
from tests.test_kafka_worker import expected_outputs, simulated

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

FULL = os.environ.get("QRIS_TEST_CHAOS", "") == "full"
# The paused-worker case's group session timeout (the broker's least by default: 6 s).
PAUSE_SESSION_TIMEOUT_S = 6
# About 3 records per payment; QRIS_TEST_CHAOS_PAYMENTS / _PRODUCE_S make a bigger day.
PAYMENTS = int(os.environ.get("QRIS_TEST_CHAOS_PAYMENTS", 15_000 if FULL else 2_700))
KILLS = 5 if FULL else 2
# Broker kills in the run on the test's own broker (each restart takes 15-30 s on this box).
BROKER_KILLS = 3 if FULL else 1
# The input arrives over this much wall time, as live traffic.
PRODUCE_S = float(os.environ.get("QRIS_TEST_CHAOS_PRODUCE_S", 75.0 if FULL else 20.0))
SEED = int(os.environ.get("QRIS_TEST_CHAOS_SEED", "20261201"))


@dataclass
class ChaosResult:
    case: str
    records: int
    kills: int = 0
    restarts: int = 0
    killed_after: list[int] = field(default_factory=list)  # records taken by each killed worker
    expected: int = 0
    delivered: int = 0
    missed: list[bytes] = field(default_factory=list)
    extra: list[bytes] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    gap_fills: int = 0  # batches in which Faust left offsets out, over all incarnations
    gap_records_fetched: int = 0  # records read from the broker for them
    tail_restores: int = 0  # partitions restored from a local DB and the changelog after it
    start_restores: int = 0  # partitions restored from the changelog's start
    pauses: int = 0  # workers stopped (SIGSTOP) past the session timeout, then let go on
    rewrites: int = 0  # older owners' changelog messages written over (`older owner` in the logs)
    superseded: int = 0  # partitions in which a worker saw a later generation's writes
    frozen_restarts: int = 0  # workers that found they had been stopped past the session and restarted

    def line(self) -> str:
        return (
            f"chaos {self.case}: {self.records} records, {self.kills} kills, {self.restarts} restarts, "
            f"{self.expected} decisions ({self.delivered} deliveries); "
            f"{len(self.missed)} missed, {len(self.extra)} extra, {len(self.conflicting)} conflicting duplicates; "
            f"gaps in delivered batches: {self.gap_fills}, {self.gap_records_fetched} records read from the broker; "
            f"restores from a local DB and its changelog tail: {self.tail_restores}, "
            f"from the changelog's start: {self.start_restores}"
            + (
                f"; pauses: {self.pauses}, restarts after a freeze: {self.frozen_restarts}, "
                f"older owners' writes written over: {self.rewrites}, partitions superseded: {self.superseded}"
                if self.pauses
                else ""
            )
        )


def output_id(value: dict[str, Any]) -> str:
    """The id a consumer deduplicates on: a repeated delivery must carry identical content."""
    for key in ("cancel_id", "dead_letter_id", "alert_id"):
        if key in value:
            return f"{key}:{value[key]}"
    return f"{value['type']}:{value['refund_id']}"


def paced_produce(
    bootstrap: str,
    records: list[KafkaRecord],
    seconds: float,
    *,
    flush_s: float = 60,
    produced: list[int] | None = None,
) -> None:
    """Produce to each record's partition in order, spread over `seconds` of wall time. The
    client's defaults (idempotent, retries until `delivery_timeout_ms`) ride out a broker
    restart; `flush_s` bounds each wait for one step's records to be written. `produced[0]`
    follows how many records are written."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        delivery_timeout_ms=int(flush_s * 1000),
        reconnect_backoff_max_ms=1000,  # back as soon as a restarted broker listens, not 30 s later
    )
    try:
        steps = max(1, int(seconds / 0.25))
        per = -(-len(records) // steps)
        for i in range(0, len(records), per):
            for rec in records[i : i + per]:
                producer.send(rec.topic, key=rec.key, value=rec.value, partition=rec.partition)
            producer.flush(flush_s)
            if produced is not None:
                produced[0] = min(len(records), i + per)
            time.sleep(0.25)
    finally:
        producer.close()


def consuming(worker: Worker) -> int:
    """Records this incarnation has taken or skipped as already held (0 until it serves stats)."""
    try:
        counts = worker.stats().get("counts", {})
    except OSError:
        return 0
    return int(counts.get("records", 0)) + int(counts.get("redelivered_skipped", 0))


def serving(worker: Worker) -> bool:
    """This incarnation answers its stats page (started, its web server up)."""
    try:
        worker.stats()
    except OSError:
        return False
    return True


def run_chaos(
    tmp_path: Path, case: str, wipe: bool, seed: int, group_size: int = 1, pause: bool = False
) -> ChaosResult:
    """`group_size` workers in one group; at each kill a seeded random one of them is killed and
    another takes its place (with `wipe`, in a fresh data directory: a new pod; without, on the
    killed one's, its local DBs flushed every second so that its restore reads a changelog tail).
    With `pause`, before each kill a random worker is stopped (SIGSTOP) past the group's session
    timeout, so the group gives its partitions to another, and let go on (SIGCONT): a zombie,
    which may still write what it was doing; then another worker (the one that took them over)
    is the one killed, so the partitions are restored from a changelog the zombie wrote."""
    bootstrap = require_broker()
    topics: Topics = fresh_topics()
    topics.create(bootstrap)
    records = simulated(topics, "mixed", seed=seed % 1000, minutes=None, payments=PAYMENTS, rate_per_min=120)
    result = ChaosResult(case, len(records))
    rng = random.Random(seed)
    env = {} if wipe else {"QRIS_STATE_FLUSH_S": "1"}
    if pause:
        env["QRIS_SESSION_TIMEOUT_S"] = str(PAUSE_SESSION_TIMEOUT_S)
    first = Worker(topics, tmp_path / case / "w0", extra_env=env)
    live = [first] + [
        Worker(topics, tmp_path / case / f"w{i}", extra_env=env, app_id=first.app_id) for i in range(1, group_size)
    ]
    workers = list(live)
    producer = threading.Thread(target=paced_produce, args=(bootstrap, records, PRODUCE_S), daemon=True)
    for w in live:
        w.start(bootstrap)
    producer.start()
    worker = first
    got: list[tuple[str, bytes | None, dict[str, Any]]] = []
    ever: set[int] = set()  # workers seen consuming (one restarted in place counts from 0 again)

    def has_consumed(w: Worker) -> bool:
        if id(w) not in ever and consuming(w) > 0:
            ever.add(id(w))
        return id(w) in ever

    try:
        for _ in range(KILLS):
            # A random moment once the group is consuming (recovered and assigned).
            victim = live.pop(rng.randrange(len(live)))
            deadline = time.monotonic() + 180
            while not has_consumed(victim) and not any(has_consumed(w) for w in live):
                victim.assert_alive()
                if not producer.is_alive() and serving(victim):
                    # The input is all out and may be all taken: an incarnation started after
                    # that (a kill or a freeze's restart) has nothing left to consume.
                    break
                assert time.monotonic() < deadline, f"worker never consumed:\n{victim.log_tail()}"
                time.sleep(0.2)
            time.sleep(rng.uniform(0.2, 4.0))
            if pause:
                zombie = live[rng.randrange(len(live))]
                assert zombie.proc is not None
                os.killpg(zombie.proc.pid, signal.SIGSTOP)
                time.sleep(PAUSE_SESSION_TIMEOUT_S + 6)  # the group moves its partitions meanwhile
                os.killpg(zombie.proc.pid, signal.SIGCONT)
                result.pauses += 1
                time.sleep(rng.uniform(1.0, 6.0))
            result.killed_after.append(consuming(victim))
            victim.kill()
            result.kills += 1
            assert victim.data_dir is not None
            if wipe:  # a new pod: the local store is gone (the worker logs are kept, for the counts)
                for entry in victim.data_dir.iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    elif entry.suffix != ".log":
                        entry.unlink()
            worker = Worker(topics, victim.data_dir, extra_env=env, app_id=first.app_id)
            live.append(worker)
            workers.append(worker)
            worker.start(bootstrap)
            result.restarts += 1
        producer.join(300)
        assert not producer.is_alive(), "producing the input took too long"
        got = await_replays_decisions(bootstrap, topics, live, lambda: None)
    finally:
        producer.join(300)
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
    judge(result, bootstrap, topics, got, workers)
    for w in workers:
        text = w.log_tail(10**6)
        result.rewrites += text.count("by an owner of an older consumer-group generation")
        result.superseded += text.count("no longer the partition's owner")
        result.frozen_restarts += text.count("frozen past the group's session timeout")
    print(result.line(), f"(killed after {result.killed_after} records; logs in {tmp_path / case})", file=sys.stderr)
    return result


def await_replays_decisions(
    bootstrap: str,
    topics: Topics,
    live: list[Worker],
    check_workers: Callable[[], None],
    settings: Settings | None = None,
) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    """The outputs on the broker once they hold every decision offline replay of the input
    topics makes (or the time is up), plus a few seconds for any extra one to show.
    `check_workers` is called between reads (a worker that died fails, or is restarted);
    `settings`: the workers' rules when not the defaults."""
    want = expected_outputs(bootstrap, topics, settings)
    want_all = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for vs in want.values() for v in vs}
    deadline = time.monotonic() + (600 if FULL else 240)
    while time.monotonic() < deadline:
        for w in live:
            w.assert_alive()
        check_workers()
        got = consume(bootstrap, topics.outputs(), until=10**9, timeout_s=8, settle_s=0)
        if want_all <= {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for _t, _k, v in got}:
            break
    time.sleep(5)  # room for any extra decision to show
    return consume(bootstrap, topics.outputs(), until=10**9, timeout_s=10, settle_s=0)


def judge(
    result: ChaosResult,
    bootstrap: str,
    topics: Topics,
    got: list[tuple[str, bytes | None, dict[str, Any]]],
    workers: list[Worker],
    settings: Settings | None = None,
) -> None:
    """Fill `result` with what replay decides against what the workers delivered."""
    want = expected_outputs(bootstrap, topics, settings)
    want_all = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for vs in want.values() for v in vs}
    result.expected = len(want_all)
    result.delivered = len(got)
    for w in workers:
        text = w.log_tail(10**6)
        for n in re.findall(r"gap\(s\)\): (\d+) read from the broker", text):
            result.gap_fills += 1
            result.gap_records_fetched += int(n)
        for start in re.findall(r"changelog message\(s\) read from offset (\d+)", text):
            if int(start) > 0:
                result.tail_restores += 1
            else:
                result.start_restores += 1
    seen = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for _t, _k, v in got}
    result.missed = sorted(want_all - seen)
    result.extra = sorted(seen - want_all)
    first: dict[str, bytes] = {}
    for _t, _k, v in got:
        raw = orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
        ident = output_id(v)
        if first.setdefault(ident, raw) != raw:
            result.conflicting.append(ident)


class OwnBroker:
    """A broker of this test's own, never the shared one (the test kills it): kafka/broker.sh
    on free ports, no SASL_SSL listener, its run and data directory under `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.run_dir = run_dir
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, command: str, timeout_s: float = 300) -> None:
        """`kafka/broker.sh <command>` for this broker; its output goes to run_dir/broker-sh.log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
        env.update(
            {
                "QRIS_KAFKA_PORT": str(self.port),
                "QRIS_KAFKA_CONTROLLER_PORT": str(self.controller_port),
                "QRIS_KAFKA_SASL_SSL_PORT": "0",
                "QRIS_KAFKA_RUN_DIR": str(self.run_dir),
                # Faust's own topics are created with as many partitions as the inputs have.
                "QRIS_KAFKA_PARTITIONS": "4",
            }
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "broker-sh.log", "ab") as out:
            proc = subprocess.run(
                [str(ROOT / "kafka" / "broker.sh"), command], env=env, stdout=out, stderr=out, timeout=timeout_s
            )
        tail = (self.run_dir / "broker-sh.log").read_text(errors="replace")[-3000:]
        assert proc.returncode == 0, f"kafka/broker.sh {command} exited {proc.returncode}:\n{tail}"


def run_broker_chaos(tmp_path: Path, case: str, seed: int) -> ChaosResult:
    """One worker on a broker of the test's own; the broker is killed (SIGKILL) at seeded
    random moments spread over the day while it is produced, left down a few seconds and started again with
    its data. A worker that exits meanwhile is started again in the same data directory, as a
    supervisor (systemd, Kubernetes) would; those restarts are counted."""
    broker = OwnBroker(tmp_path / case / "broker")
    broker.run("start")
    try:
        bootstrap = broker.bootstrap
        topics: Topics = fresh_topics()
        topics.create(bootstrap)
        records = simulated(topics, "mixed", seed=seed % 1000, minutes=None, payments=PAYMENTS, rate_per_min=120)
        result = ChaosResult(case, len(records))
        rng = random.Random(seed)
        worker = Worker(topics, tmp_path / case / "w0")
        workers = [worker]
        live = [worker]

        def supervise() -> None:
            for i, w in enumerate(live):
                if w.proc is not None and w.proc.poll() is not None:
                    print(f"worker exited with {w.proc.returncode}; starting it again", file=sys.stderr)
                    assert w.data_dir is not None
                    again = Worker(topics, w.data_dir, app_id=w.app_id)
                    again.start(bootstrap)
                    live[i] = again
                    workers.append(again)
                    result.restarts += 1

        produced = [0]
        # Long enough for any record to outlast a broker restart (tens of seconds on this box).
        producer = threading.Thread(
            target=paced_produce,
            args=(bootstrap, records, PRODUCE_S),
            kwargs={"flush_s": 300, "produced": produced},
            daemon=True,
        )
        # Kill k at a seeded random point of the k-th share of the day, so the kills spread over
        # it although each restart takes longer than the pacing between two of them.
        kill_at = [int(rng.uniform(k, k + 1) / BROKER_KILLS * len(records)) for k in range(BROKER_KILLS)]
        worker.start(bootstrap)
        producer.start()
        got: list[tuple[str, bytes | None, dict[str, Any]]] = []
        try:
            for at in kill_at:
                deadline = time.monotonic() + 300
                while sum(consuming(w) for w in live) == 0 or produced[0] < at:
                    supervise()
                    assert time.monotonic() < deadline, (
                        f"kill point {at} not reached: {produced[0]} records produced, "
                        f"{sum(consuming(w) for w in live)} taken:\n{live[0].log_tail()}"
                    )
                    time.sleep(0.2)
                result.killed_after.append(sum(consuming(w) for w in live))
                broker.run("kill")
                result.kills += 1
                down_until = time.monotonic() + rng.uniform(2.0, 10.0)
                while time.monotonic() < down_until:
                    supervise()
                    time.sleep(0.2)
                broker.run("start")
                supervise()
            deadline = time.monotonic() + 600
            while producer.is_alive():
                supervise()
                assert time.monotonic() < deadline, "producing the input took too long"
                producer.join(1)
            got = await_replays_decisions(bootstrap, topics, [], supervise)
        finally:
            producer.join(300)
            for w in workers:
                if w.proc is not None and w.proc.poll() is None:
                    w.stop()
        judge(result, bootstrap, topics, got, workers)
    finally:
        broker.run("stop")
    print(
        result.line(),
        f"(broker killed after {result.killed_after} records; worker restarts {result.restarts}; "
        f"logs in {tmp_path / case})",
        file=sys.stderr,
    )
    return result


def brief(values: list[bytes]) -> list[str]:
    out = []
    for raw in values[:8]:
        v = orjson.loads(raw)
        out.append(f"{v.get('type') or v.get('kind')} {v.get('reference')} {v.get('reason')} {v.get('amount')}")
    return out


RESULTS: list[ChaosResult] = []


@pytest.fixture(scope="module", autouse=True)
def summary_line() -> Any:
    """After all cases: one line with runs, kills, restarts and the result (`make chaos`)."""
    yield
    if RESULTS:
        print(
            f"\nchaos summary: {len(RESULTS)} runs ({', '.join(r.case for r in RESULTS)}), "
            f"{sum(r.records for r in RESULTS)} records, {sum(r.kills for r in RESULTS)} kills, "
            f"{sum(r.restarts for r in RESULTS)} restarts, {sum(r.expected for r in RESULTS)} decisions: "
            f"{sum(len(r.missed) for r in RESULTS)} missed, {sum(len(r.extra) for r in RESULTS)} extra, "
            f"{sum(len(r.conflicting) for r in RESULTS)} conflicting duplicates",
            file=sys.stderr,
        )


# (case, wipe the store, workers in the group, seed offset, pause a worker before each kill)
CASES = [("store-kept", False, 1, 0, False), ("store-wiped", True, 1, 1, False)]
if FULL:  # one of two workers killed, a new one (empty store) joining: rebalances under load
    CASES.append(("two-workers", True, 2, 2, False))
    # A zombie: one of two workers stopped past the session timeout, then the other killed.
    CASES.append(("paused-worker", False, 2, 4, True))


@pytest.mark.parametrize(("case", "wipe", "group_size", "seed", "pause"), CASES)
def test_killed_workers_decide_exactly_what_replay_decides(
    tmp_path: Path, case: str, wipe: bool, group_size: int, seed: int, pause: bool
) -> None:
    result = run_chaos(tmp_path, case, wipe, SEED + seed, group_size, pause)
    RESULTS.append(result)
    assert result.kills == KILLS and result.restarts == KILLS
    assert result.pauses == (KILLS if pause else 0)
    if pause:  # a zombie let go restarts rather than send what it decided before the freeze
        assert result.frozen_restarts >= 1, result.line()
    if not wipe:  # the local DBs kept: restores read a tail after them, not the whole changelog
        assert result.tail_restores > 0, result.line()
    kinds = Counter(orjson.loads(raw).get("reason") for raw in result.missed + result.extra)
    assert not result.missed and not result.extra and not result.conflicting, (
        f"{result.line()}\nmissed {brief(result.missed)}\nextra {brief(result.extra)}\n"
        f"conflicting {result.conflicting[:5]}\nby reason {dict(kinds)}; logs in {tmp_path}"
    )


@pytest.mark.skipif(not FULL, reason="make chaos only: two broker starts alone take about a minute here")
def test_a_killed_broker_changes_no_decision(tmp_path: Path) -> None:
    """The broker itself killed (SIGKILL) and started again mid-day: the worker decides exactly
    what replay decides. On a broker of the test's own, never the shared one."""
    result = run_broker_chaos(tmp_path, "broker-killed", SEED + 3)
    RESULTS.append(result)
    assert result.kills == BROKER_KILLS
    kinds = Counter(orjson.loads(raw).get("reason") for raw in result.missed + result.extra)
    assert not result.missed and not result.extra and not result.conflicting, (
        f"{result.line()}\nmissed {brief(result.missed)}\nextra {brief(result.extra)}\n"
        f"conflicting {result.conflicting[:5]}\nby reason {dict(kinds)}; logs in {tmp_path}"
    )
