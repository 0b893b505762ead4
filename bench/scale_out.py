"""Scale-out on the real broker: one worker process against two in the same consumer group on
the same backlog, side by side in one run, beside raw aiokafka (not a test).

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/scale_out.py --records 200000 --rounds 2

Produces the simulator's `mixed` day once into fresh co-partitioned topics (8 partitions by
default), then alternates the variants (one worker, two workers; `--rounds` times each), every
run with a fresh app id (consumer group), data directories and burst topics, so each run takes
the whole backlog from offset 0. A run's rate is timed from the first record any of its workers
took to the moment their records add up to the backlog (their /qris/stats pages), rebalance
included: on a broker with Kafka's default `group.initial.rebalance.delay.ms` (3000) both
workers join the group's first generation and split the partitions from the start; on the test
broker (0) the second joins while the first has started on every partition (the delay is
printed; `QRIS_KAFKA_INITIAL_REBALANCE_DELAY_MS=3000 kafka/broker.sh start` gives the default).
A second rate runs to the workers' last decision (their decision counts unchanged for 3 s): with
holds on, records wait in the engines for the incidents, and a share of the deciding that
varies from run to run (the incidents' lag) comes after the last record is taken, so the ratio
of the first rate moves with it; the ratio to the last decision is the one that compares.
The run counts as complete only when its own output topics hold exactly the decisions offline
replay of the inputs makes (every input offset decided), and the input partitions whose
committed offset is then still short of the end are reported (a rebalance can leave some
uncommitted; README). The raw aiokafka rate (no processing, one consumer) is measured in every
round, so each ratio is from the same minutes of a shared machine.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from kafka.admin import ConfigResource, ConfigResourceType

from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ itself, as when run as a script (imported as `bench.scale_out` by its fast test).
sys.path.insert(0, str(ROOT / "bench"))

from live_throughput import (  # noqa: E402  (bench/, the script's folder)
    decided_count,
    deleting_topics,
    free_port,
    mixed_backlog,
    raw_consume,
    settle,
    stats,
    variants_of,
)

from stream.core.partition import NEG_INF  # noqa: E402
from stream.drivers.kafkaread import read_topics  # noqa: E402
from stream.drivers.replay import replay  # noqa: E402
from stream.security import kafka_python_config  # noqa: E402
from stream.settings import Settings, from_env, to_env  # noqa: E402
from stream.simulate.output import produce  # noqa: E402
from stream.topics import admin_client, broker_holds, create_topics  # noqa: E402


@dataclass
class Run:
    workers: int
    rate: float  # records/s, first record taken to the backlog taken
    taken: list[int]  # records each worker took
    to_first_record_s: float  # start of the processes to the first record taken
    decided_lag_s: float  # backlog taken to the outputs holding every decision replay makes
    partitions_not_committed: int  # input partitions whose committed offset is short of the end then
    worker_cpu_us: float  # CPU time of the worker processes per record, while timed
    machine_busy: float  # share of all the machine's CPUs busy (any process) while timed
    logs: list[Path]
    # Per worker, while timed: its CPU µs per record it took, and the median of the incidents'
    # lag it saw (its slowest partition's watermark minus the incidents known through, event
    # seconds; records past the incidents wait in the engines and cost CPU as they wait).
    cpu_us_each: list[float] = field(default_factory=list)
    lag_s_each: list[float | None] = field(default_factory=list)
    # records/s from the moment every worker had taken a record to the backlog taken (None: a
    # worker took none). On the test broker (`group.initial.rebalance.delay.ms=0`) the first
    # worker to join starts on every partition before the second joins; this leaves that start
    # out and keeps the rebalance after it (stop 18: lower than `rate`, 1.39x against 1.51x).
    rate_all_in: float | None = None
    # Per worker, from its last stats page while timed: commits, and reference entries written
    # to the state per record taken (a reference changed between two commits is written once).
    commits_each: list[int] = field(default_factory=list)
    saves_per_record_each: list[float] = field(default_factory=list)
    # Per worker: signal reports its burst detector took and snapshots it wrote (0: not its).
    signals_each: list[int] = field(default_factory=list)
    snapshots_each: list[int] = field(default_factory=list)
    snapshot_ms_each: list[int] = field(default_factory=list)  # wall ms writing them
    # Per worker: ms its batches waited for the incidents (`QRIS_MAX_LEAD_S`, `paced_ms`).
    paced_ms_each: list[int] = field(default_factory=list)
    # records/s from the first record taken to the workers' last decision (the moment their
    # decision counts last moved before SETTLE_S without a change), and the workers' CPU µs per
    # record to then. With holds on, records wait in the engines for the incidents, so a
    # varying share of the deciding comes after the last record is taken: this is the rate
    # that compares (`rate` counts records taken).
    rate_decided: float = 0.0
    decided_after_s: float = 0.0
    worker_cpu_us_decided: float = 0.0
    # Per record, to the last decision: the local broker's CPU µs (None: no broker process of
    # `kafka/broker.sh` on this host) and the rest of the machine's busy CPU (this bench's
    # polling, the system), beside the workers'. The three share the machine's CPUs.
    broker_cpu_us_decided: float | None = None
    other_cpu_us_decided: float = 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_broker_pid() -> int | None:
    """The broker that `kafka/broker.sh` started on this host (its pid file; the process must be
    Kafka's), or None (a broker elsewhere, or none)."""
    run_dir = Path(os.environ.get("QRIS_KAFKA_RUN_DIR") or ROOT / "kafka" / ".run")
    try:
        pid = int((run_dir / "broker.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"kafka.Kafka" in cmdline else None


def allowed_ratio(one: Run, two: Run, cpus: int) -> float:
    """The two/one ratio (to the last decision) that the machine's CPUs allow: one worker is
    bound by its own process (one CPU over its CPU a record), two by all `cpus`, which they
    share with the broker and the rest of the machine (over the sum of their CPU a record)."""
    shared = two.worker_cpu_us_decided + (two.broker_cpu_us_decided or 0.0) + two.other_cpu_us_decided
    return (cpus / shared) / (1 / one.worker_cpu_us_decided)


def incidents_lag_s(page: dict[str, Any]) -> float | None:
    """From a worker's `/qris/stats`: its slowest partition's watermark minus the event time the
    incidents are known through, in seconds (None before both are known)."""
    known = page.get("incidents_known_through_ms")
    marks = [v["watermark_ms"] for v in page.get("partitions", {}).values()]
    marks = [w for w in marks if w is not None and w > NEG_INF]
    if known is None or known <= NEG_INF or not marks:
        return None
    return float(min(marks) - known) / 1000


def decided_now(ports: list[int]) -> int:
    """Everything the workers have decided so far: each one's refunds, alerts, dead letters and
    signal reports, and its burst detector's alerts and incidents records."""
    total = 0
    for port in ports:
        page = stats(port)
        b = page.get("bursts", {}).get("counts", {})
        total += decided_count(page["counts"]) + int(b.get("alerts", 0)) + int(b.get("incident_records", 0))
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat; idle and iowait are idle)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def initial_rebalance_delay_ms(client: Settings) -> int | None:
    """The broker's `group.initial.rebalance.delay.ms` (None if it does not say): how long a new
    group's first rebalance waits for more members. Kafka's default is 3000; the test broker's
    is 0 (`kafka/broker.sh`, `QRIS_KAFKA_INITIAL_REBALANCE_DELAY_MS`), so there the first
    worker to join starts on every partition and gives half back when the second joins."""
    name = "group.initial.rebalance.delay.ms"
    admin = admin_client(client)
    try:
        brokers = admin.describe_cluster().get("brokers") or []
        ids = sorted(b.get("broker_id", b.get("node_id")) for b in brokers)
        if not ids:
            return None
        got = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(ids[0]), configs=[name])], config_filter="all"
        )
        value = got.get("broker", {}).get(str(ids[0]), {}).get(name, {}).get("value")
        return int(value) if value is not None else None
    finally:
        admin.close()


def committed_behind(client: Settings, group: str, ends: dict[TopicPartition, int]) -> int:
    """Input partitions whose committed offset in `group` is short of the end (or missing),
    after up to 10 s for the next commit."""
    admin = admin_client(client)
    try:
        give_up = time.monotonic() + 10
        while True:
            got = admin.list_group_offsets({group: list(ends)}).get(group, {})
            behind = sum(1 for tp, end in ends.items() if tp not in got or got[tp].offset < end)
            if not behind or time.monotonic() > give_up:
                return behind
            time.sleep(0.5)
    finally:
        admin.close()


def read_all(client: Settings, topics: list[str]) -> set[bytes]:
    """Every record value of `topics` now on the broker, canonical JSON (keys sorted)."""
    consumer = KafkaConsumer(**kafka_python_config(client), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: set[bytes] = set()
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for msgs in consumer.poll(timeout_ms=500).values():
                out.update(orjson.dumps(orjson.loads(m.value), option=orjson.OPT_SORT_KEYS) for m in msgs)
        return out
    finally:
        consumer.close()


def replay_decisions(client: Settings, topics: list[str]) -> set[bytes]:
    """What offline replay of the input topics decides (the worker's defaults, no drain)."""
    params = replace(Settings().params, payment_topic=topics[0], ledger_topic=topics[1])
    return {orjson.dumps(d.value, option=orjson.OPT_SORT_KEYS) for _p, d in replay(read_topics(client, topics), params)}


def group_run(
    client: Settings,
    prefix: str,
    n: int,
    partitions: int,
    workers: int,
    ends: dict[TopicPartition, int],
    expected: set[bytes],
    log_level: str = "warning",
    keep: bool = False,
    variant: dict[str, str] | None = None,
) -> Run:
    """`workers` worker processes in one fresh group on the backlog under `prefix`."""
    run_id = uuid.uuid4().hex[:4]
    base = replace(
        client.with_topic_prefix(prefix),
        # Each run has its own burst detector: its own signals, incidents and snapshot topics.
        signals_topic=f"{prefix}.burst-signals-{run_id}",
        incidents_topic=f"{prefix}.incidents-{run_id}",
        snapshots_topic=f"{prefix}.burst-snapshots-{run_id}",
        # Its own output topics, to check its decisions against replay's.
        refund_topic=f"{prefix}.refunds-{run_id}",
        alert_topic=f"{prefix}.alerts-{run_id}",
        dead_letter_topic=f"{prefix}.dead-letter-{run_id}",
        app_id=f"{prefix}-{run_id}",
        partitions=partitions,
        log_level=log_level,
        idle_timeout_s=3600.0,  # a backlog, not an outage: the wall-clock idle rule stays out
    )
    create_topics(base)  # the run's burst and output topics (the inputs exist)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    logs: list[Path] = []
    started = time.perf_counter()
    for _ in range(workers):
        settings = replace(base, data_dir=tempfile.mkdtemp(prefix="qris-scale-"), web_port=free_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_") or k.startswith("QRIS_KAFKA_")}
        env.update(to_env(settings))
        env.update(variant or {})  # `--variant`: settings of the workers, e.g. QRIS_MAX_LEAD_S=0
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
        first_machine = (0, 0)
        broker, first_broker = local_broker_pid(), 0.0
        taken = [0] * workers
        last_counts: list[dict[str, int]] = [{} for _ in range(workers)]
        last_bursts: list[dict[str, int]] = [{} for _ in range(workers)]
        first_each = [0.0] * workers
        taken_first = [0] * workers
        lags: list[list[float]] = [[] for _ in range(workers)]
        all_in: tuple[float, int] | None = None
        deadline = time.monotonic() + 900
        while sum(taken) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} worker(s) took only {sum(taken)} of {n} records; logs {logs}")
            for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited {proc.returncode}; log {logs[i]}")
                try:
                    page = stats(port)
                except OSError:
                    continue
                taken[i] = int(page["counts"]["records"])
                last_counts[i] = page["counts"]
                last_bursts[i] = page.get("bursts", {}).get("counts", {})
                if first_t is not None and (lag := incidents_lag_s(page)) is not None:
                    lags[i].append(lag)
            if all_in is None and all(taken):
                all_in = (time.perf_counter(), sum(taken))
            if first_t is None and sum(taken) > 0:
                first_t, first_n = time.perf_counter(), sum(taken)
                first_each = [process_cpu_s(p.pid) for p in procs]
                taken_first = list(taken)
                first_machine = machine_cpu()
                first_broker = process_cpu_s(broker) if broker is not None else 0.0
            time.sleep(0.1)
        done_t = time.perf_counter()
        cpu_each = [process_cpu_s(p.pid) - c for p, c in zip(procs, first_each, strict=True)]
        cpu_s = sum(cpu_each)
        busy, total = (a - b for a, b in zip(machine_cpu(), first_machine, strict=True))
        assert first_t is not None
        # The broker's and the machine's CPU with the workers' when their decisions last moved.
        marks: dict[str, float] = {}

        def workers_cpu() -> float:
            marks["broker"] = process_cpu_s(broker) - first_broker if broker is not None else 0.0
            marks["busy"] = (machine_cpu()[0] - first_machine[0]) / os.sysconf("SC_CLK_TCK")
            return sum(process_cpu_s(p.pid) - c for p, c in zip(procs, first_each, strict=True))

        # Then up to the last decision: the workers' decision counts unchanged for SETTLE_S.
        end_t, end_cpu, _decided = settle(
            lambda: decided_now(ports), workers_cpu, done_t, workers_cpu(), None, deadline, 0.1
        )
        # Complete means every input offset decided, not merely a count: the run's outputs hold
        # exactly what offline replay of the inputs decides.
        outputs = [base.refund_topic, base.alert_topic, base.dead_letter_topic]
        while (got := read_all(client, outputs)) != expected:
            if time.monotonic() > deadline or not got <= expected:
                raise SystemExit(
                    f"{workers} worker(s): {len(expected - got)} of replay's {len(expected)} decisions missing, "
                    f"{len(got - expected)} extra; logs {logs}"
                )
            time.sleep(1)
        decided_t = time.perf_counter()
        behind = committed_behind(client, base.app_id, ends)
        for log_path in logs:  # kept when the run failed, or with --keep
            if not keep:
                shutil.rmtree(log_path.parent, ignore_errors=True)
        rate_all_in = None
        if all_in is not None and done_t > all_in[0]:
            rate_all_in = (sum(taken) - all_in[1]) / (done_t - all_in[0])
        return Run(
            workers=workers,
            rate=(sum(taken) - first_n) / (done_t - first_t),
            taken=taken,
            to_first_record_s=first_t - started,
            decided_lag_s=decided_t - done_t,
            partitions_not_committed=behind,
            worker_cpu_us=cpu_s / max(1, sum(taken) - first_n) * 1e6,
            machine_busy=busy / total,
            logs=logs,
            cpu_us_each=[c / max(1, t - f) * 1e6 for c, t, f in zip(cpu_each, taken, taken_first, strict=True)],
            lag_s_each=[statistics.median(x) if x else None for x in lags],
            rate_all_in=rate_all_in,
            commits_each=[int(c.get("commits", 0)) for c in last_counts],
            paced_ms_each=[int(c.get("paced_ms", 0)) for c in last_counts],
            saves_per_record_each=[
                int(c.get("references_saved", 0)) / max(1, t) for c, t in zip(last_counts, taken, strict=True)
            ],
            rate_decided=(n - first_n) / (end_t - first_t),
            decided_after_s=end_t - done_t,
            worker_cpu_us_decided=end_cpu / max(1, n - first_n) * 1e6,
            broker_cpu_us_decided=None if broker is None else marks["broker"] / max(1, n - first_n) * 1e6,
            other_cpu_us_decided=max(0.0, marks["busy"] - marks["broker"] - end_cpu) / max(1, n - first_n) * 1e6,
            signals_each=[int(c.get("signals", 0)) for c in last_bursts],
            snapshots_each=[int(c.get("snapshots_written", 0)) for c in last_bursts],
            snapshot_ms_each=[int(c.get("snapshot_write_ms", 0)) for c in last_bursts],
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(120)  # the worker's own stop deadline (QRIS_STOP_TIMEOUT_S, 90 s) comes first
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
    ap.add_argument("--only", type=int, choices=[1, 2], help="run only the variant with this many workers")
    ap.add_argument("--log-level", default="warning", help="the workers' QRIS_LOG_LEVEL")
    ap.add_argument("--keep", action="store_true", help="keep the workers' data directories, logs and topics")
    ap.add_argument(
        "--variant",
        nargs="+",
        default=[""],
        help="worker settings to compare, each NAME=VALUE[,NAME=VALUE] ('' = the defaults); every round runs "
        "each variant, one and two workers, in alternating order",
    )
    args = ap.parse_args()
    client = from_env(os.environ)  # QRIS_BOOTSTRAP and the Kafka security settings
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    return deleting_topics(client, prefix, args.keep, lambda: measure(args, client, prefix))


def measure(args: argparse.Namespace, client: Settings, prefix: str) -> int:
    shared, records = mixed_backlog(client, prefix, args.records, args.partitions)
    topics = [shared.payment_topic, shared.ledger_topic]
    n = len(records)
    t = time.perf_counter()
    produce(records, shared, partitions=args.partitions)
    produce_s = time.perf_counter() - t
    ends = end_offsets(shared, topics, args.partitions)
    assert sum(ends.values()) == n, f"{sum(ends.values())} records on the broker, {n} produced"
    t = time.perf_counter()
    expected = replay_decisions(shared, topics)
    print(f"offline replay of the inputs: {len(expected)} decisions in {time.perf_counter() - t:.1f} s")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print("broker holds {} topics, {} partitions (this run's included)".format(*broker_holds(client)))
    delay = initial_rebalance_delay_ms(client)
    print(
        f"broker: group.initial.rebalance.delay.ms = {delay}"
        + (" (the first worker to join takes every partition until the second joins)" if delay == 0 else "")
    )
    print(f"produced {n} records to {prefix}.* ({args.partitions} partitions) in {produce_s:.1f} s")
    variants = variants_of(args.variant)
    runs: list[tuple[Run, float, str]] = []
    for r in range(args.rounds):
        raw = asyncio.run(raw_consume(shared, topics, n, args.partitions))
        print(f"round {r + 1}: raw aiokafka consumer {raw:,.0f} records/s")
        # Alternate which variant and worker count go first, so none always follows another.
        order = (1, 2) if r % 2 == 0 else (2, 1)
        for text, variant in variants if r % 2 == 0 else variants[::-1]:
            label = f" [{text or 'defaults'}]" if len(variants) > 1 else ""
            for workers in [w for w in order if args.only in (None, w)]:
                run = group_run(
                    client, prefix, n, args.partitions, workers, ends, expected, args.log_level, args.keep, variant
                )
                if args.keep:
                    print(f"logs: {run.logs}")
                runs.append((run, raw, text))
                report_run(r, workers, label, run, raw)
    if args.only:
        return 0
    for text, _variant in variants:
        if len(variants) > 1:
            print(f"[{text or 'defaults'}]")
        summarize([(run, raw) for run, raw, t in runs if t == text])
    return 0


def report_run(r: int, workers: int, label: str, run: Run, raw: float) -> None:
    print(
        f"round {r + 1}{label}: {workers} worker(s): {run.rate:,.0f} records/s ({run.rate / raw:.3f} of raw); "
        f"records per worker {run.taken}; first record {run.to_first_record_s:.1f} s after start; "
        f"outputs equal to replay's decisions {run.decided_lag_s:.1f} s after the last record (checked after "
        f"the settle); "
        f"input partitions not committed to the end: {run.partitions_not_committed}; "
        f"worker CPU {run.worker_cpu_us:.0f} µs/record; machine CPUs {run.machine_busy:.0%} busy"
    )
    print(
        f"  per worker: CPU µs per record taken {[round(x) for x in run.cpu_us_each]}; "
        f"incidents' lag (median, event s) {[None if x is None else round(x) for x in run.lag_s_each]}; "
        f"commits {run.commits_each}; reference saves per record "
        f"{[round(x, 2) for x in run.saves_per_record_each]}; "
        f"detector signals {run.signals_each}, snapshots {run.snapshots_each} "
        f"written in {run.snapshot_ms_each} ms; waited for the incidents {run.paced_ms_each} ms; "
        f"from every worker's first record: "
        + ("-" if run.rate_all_in is None else f"{run.rate_all_in:,.0f} records/s")
    )
    print(
        f"  to the last decision: {run.rate_decided:,.0f} records/s ({run.decided_after_s:.1f} s after the "
        f"last record taken), worker CPU {run.worker_cpu_us_decided:.0f} µs/record"
        + ("" if run.broker_cpu_us_decided is None else f", the broker's {run.broker_cpu_us_decided:.0f}")
        + f", the rest of the machine's {run.other_cpu_us_decided:.0f}"
    )


def summarize(runs: list[tuple[Run, float]]) -> None:
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
    print(f"two/one, records taken: {sum(two) / sum(one):.2f} (per round {', '.join(f'{x:.2f}' for x in per_round)})")
    one_d = [run.rate_decided for run, _raw in runs if run.workers == 1]
    two_d = [run.rate_decided for run, _raw in runs if run.workers == 2]
    rounds_d = [b / a for a, b in zip(one_d, two_d, strict=True)]
    print(
        f"two/one to the last decision: {sum(two_d) / sum(one_d):.2f} "
        f"(per round {', '.join(f'{x:.2f}' for x in rounds_d)}; median {statistics.median(rounds_d):.2f}); "
        f"one worker {', '.join(f'{x:,.0f}' for x in one_d)}, two {', '.join(f'{x:,.0f}' for x in two_d)} records/s"
    )
    one_in = [run.rate_all_in or 0.0 for run, _raw in runs if run.workers == 1]
    two_in = [run.rate_all_in or 0.0 for run, _raw in runs if run.workers == 2]
    if all(one_in + two_in):
        rounds_in = [b / a for a, b in zip(one_in, two_in, strict=True)]
        print(
            f"two/one from every worker's first record: {sum(two_in) / sum(one_in):.2f} "
            f"(per round {', '.join(f'{x:.2f}' for x in rounds_in)})"
        )
    cpus = os.cpu_count() or 1
    ones = [run for run, _raw in runs if run.workers == 1]
    twos = [run for run, _raw in runs if run.workers == 2]
    bounds = [allowed_ratio(a, b, cpus) for a, b in zip(ones, twos, strict=True)]
    print(
        f"two/one that the CPUs allow ({cpus} CPUs over the two workers' CPU a record, the broker's and the rest, "
        f"against one worker's CPU a record): per round {', '.join(f'{x:.2f}' for x in bounds)}"
    )


if __name__ == "__main__":
    sys.exit(main())
