"""Scale-out on the real broker: one worker process against two in the same consumer group on
the same backlog, side by side in one run, beside raw aiokafka (not a test).

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/scale_out.py --records 200000 --rounds 2

Produces the simulator's `mixed` day once into fresh co-partitioned topics (8 partitions by
default), then alternates the variants (one worker, two workers; `--rounds` times each), every
run with a fresh app id (consumer group), data directories and burst topics, so each run takes
the whole backlog from offset 0. A run's rate is timed from the first record any of its workers
took to the moment their records add up to the backlog (their /qris/stats pages), rebalance
included (the second worker joins while the first may have started); the run counts as complete
only when the group's committed offsets reach the end of every input partition. The raw
aiokafka rate (no processing, one consumer) is measured in every round, so each ratio is from
the same minutes of a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from kafka.admin import KafkaAdminClient

from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from live_throughput import free_port, raw_consume, stats  # noqa: E402  (bench/, the script's folder)

from stream.security import kafka_python_config  # noqa: E402
from stream.settings import Settings, from_env, to_env  # noqa: E402
from stream.simulate.output import produce  # noqa: E402
from stream.simulate.traffic import generate  # noqa: E402
from stream.topics import create_topics  # noqa: E402


@dataclass
class Run:
    workers: int
    rate: float  # records/s, first record taken to the backlog taken
    taken: list[int]  # records each worker took
    to_first_record_s: float  # start of the processes to the first record taken
    commit_lag_s: float  # backlog taken to every input offset committed


def committed_complete(client: Settings, group: str, ends: dict[TopicPartition, int]) -> bool:
    """True when the group's committed offset of every input partition is at its end."""
    admin = KafkaAdminClient(**kafka_python_config(client), client_id="qris-bench")
    try:
        got = admin.list_group_offsets({group: list(ends)}).get(group, {})
    finally:
        admin.close()
    return all(tp in got and got[tp].offset >= end for tp, end in ends.items())


def group_run(
    client: Settings, prefix: str, n: int, partitions: int, workers: int, ends: dict[TopicPartition, int]
) -> Run:
    """`workers` worker processes in one fresh group on the backlog under `prefix`."""
    run_id = uuid.uuid4().hex[:4]
    base = replace(
        client.with_topic_prefix(prefix),
        # Each run has its own burst detector: its own signals, incidents and snapshot topics.
        signals_topic=f"{prefix}.burst-signals-{run_id}",
        incidents_topic=f"{prefix}.incidents-{run_id}",
        snapshots_topic=f"{prefix}.burst-snapshots-{run_id}",
        app_id=f"{prefix}-{run_id}",
        partitions=partitions,
        log_level="warning",
        idle_timeout_s=3600.0,  # a backlog, not an outage: the wall-clock idle rule stays out
    )
    create_topics(base)  # the run's burst topics (the inputs and outputs exist)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    logs: list[Path] = []
    started = time.perf_counter()
    for _ in range(workers):
        settings = replace(base, data_dir=tempfile.mkdtemp(prefix="qris-scale-"), web_port=free_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_") or k.startswith("QRIS_KAFKA_")}
        env.update(to_env(settings))
        log_path = Path(settings.data_dir) / "worker.log"
        log = open(log_path, "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen([sys.executable, "-m", "stream", "worker"], cwd=ROOT, env=env, stdout=log, stderr=log)
        )
        ports.append(settings.web_port)
        logs.append(log_path)
    try:
        first_t: float | None = None
        first_n = 0
        taken = [0] * workers
        deadline = time.monotonic() + 900
        while sum(taken) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} worker(s) took only {sum(taken)} of {n} records; logs {logs}")
            for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited {proc.returncode}; log {logs[i]}")
                try:
                    taken[i] = int(stats(port)["counts"]["records"])
                except OSError:
                    continue
            if first_t is None and sum(taken) > 0:
                first_t, first_n = time.perf_counter(), sum(taken)
            time.sleep(0.1)
        done_t = time.perf_counter()
        assert first_t is not None
        # Complete means decided and committed: every input offset, not merely a count.
        while not committed_complete(client, base.app_id, ends):
            if time.monotonic() > deadline:
                raise SystemExit(f"the group {base.app_id} never committed the whole backlog; logs {logs}")
            time.sleep(0.5)
        for log_path in logs:  # kept only when the run failed
            shutil.rmtree(log_path.parent, ignore_errors=True)
        return Run(
            workers=workers,
            rate=(sum(taken) - first_n) / (done_t - first_t),
            taken=taken,
            to_first_record_s=first_t - started,
            commit_lag_s=time.perf_counter() - done_t,
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def end_offsets(client: Settings, topics: list[str], partitions: int) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**kafka_python_config(client), group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternated")
    args = ap.parse_args()
    client = from_env(os.environ)  # QRIS_BOOTSTRAP and the Kafka security settings
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    shared = replace(client.with_topic_prefix(prefix), partitions=args.partitions)
    create_topics(shared)
    topics = [shared.payment_topic, shared.ledger_topic]
    payments = args.records // 3
    records = list(
        generate(
            "mixed",
            seed=11,
            start_ms=1743213600000,
            minutes=max(60, payments // 400),
            rate_per_min=600,
            payments=payments,
            partitions=args.partitions,
            payment_topic=topics[0],
            ledger_topic=topics[1],
        )
    )
    n = len(records)
    t = time.perf_counter()
    produce(records, shared, partitions=args.partitions)
    ends = end_offsets(shared, topics, args.partitions)
    assert sum(ends.values()) == n, f"{sum(ends.values())} records on the broker, {n} produced"
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"produced {n} records to {prefix}.* ({args.partitions} partitions) in {time.perf_counter() - t:.1f} s")
    runs: list[tuple[Run, float]] = []
    for r in range(args.rounds):
        raw = asyncio.run(raw_consume(shared, topics, n, args.partitions))
        print(f"round {r + 1}: raw aiokafka consumer {raw:,.0f} records/s")
        # Alternate which variant goes first, so neither always follows the other.
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            run = group_run(client, prefix, n, args.partitions, workers, ends)
            runs.append((run, raw))
            print(
                f"round {r + 1}: {workers} worker(s): {run.rate:,.0f} records/s ({run.rate / raw:.3f} of raw); "
                f"records per worker {run.taken}; first record {run.to_first_record_s:.1f} s after start; "
                f"all offsets committed {run.commit_lag_s:.1f} s after the last record"
            )
    for workers in (1, 2):
        rates = [run.rate for run, _raw in runs if run.workers == workers]
        ratios = [run.rate / raw for run, raw in runs if run.workers == workers]
        print(
            f"{workers} worker(s): median {statistics.median(rates):,.0f} records/s over {len(rates)} runs "
            f"({', '.join(f'{x:,.0f}' for x in rates)}); {min(ratios):.3f}-{max(ratios):.3f} of raw"
        )
    one = [run.rate for run, _raw in runs if run.workers == 1]
    two = [run.rate for run, _raw in runs if run.workers == 2]
    per_round = [b / a for a, b in zip(one, two, strict=True)]
    print(f"two/one: {sum(two) / sum(one):.2f} (per round {', '.join(f'{x:.2f}' for x in per_round)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
