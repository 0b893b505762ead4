"""Live worker throughput on the real broker, beside raw aiokafka consumption in the same run
(not a test).

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/live_throughput.py --records 200000

Pre-produces the simulator's `mixed` scenario into fresh co-partitioned topics, then
1. consumes them with a bare aiokafka consumer (the ceiling for Python on this box);
2. starts `python -m stream worker` on them and times, from its first to its last record
   (its /qris/stats page), how fast it takes the backlog: decode, decide, persist state to
   the state store (RocksDB per partition) and its changelog, send outputs.
Both rates come from the same run, so their ratio is meaningful on a noisy machine.
`--profile FILE` runs the (first) worker under cProfile and writes its stats to FILE every 5 s
(read them with `python -m pstats FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.security import aiokafka_config  # noqa: E402
from stream.settings import Settings, from_env, to_env  # noqa: E402
from stream.simulate.output import produce  # noqa: E402
from stream.simulate.traffic import generate  # noqa: E402
from stream.topics import create_topics  # noqa: E402

PROFILED_WORKER = """
import cProfile, marshal, runpy, sys, threading, time
path = sys.argv[1]
prof = cProfile.Profile()
def dump():
    while True:
        time.sleep(5)
        prof.snapshot_stats()  # (not dump_stats: that disables the profiler)
        with open(path + ".part", "wb") as fh:
            marshal.dump(prof.stats, fh)
        import os
        os.replace(path + ".part", path)
threading.Thread(target=dump, daemon=True).start()
sys.argv = ["stream", "worker"]
prof.enable()
runpy.run_module("stream", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def raw_consume(client: Settings, topics: list[str], n: int, partitions: int) -> float:
    consumer = AIOKafkaConsumer(
        **aiokafka_config(client), group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    got, started = 0, None
    give_up = time.monotonic() + 180
    try:
        while got < n:
            if time.monotonic() > give_up:
                raise SystemExit(f"raw consumer got only {got} of {n} records in 180 s")
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batch.values():
                if started is None:
                    started = time.perf_counter()
                got += len(msgs)
    finally:
        await consumer.stop()
    assert started is not None
    return n / (time.perf_counter() - started)


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/qris/stats", timeout=5) as resp:
        return orjson.loads(resp.read())


def worker_rate(
    client: Settings, prefix: str, n: int, partitions: int, variant: dict[str, str], profile: str | None = None
) -> tuple[float, dict]:
    port = free_port()
    run_id = uuid.uuid4().hex[:4]
    settings = replace(
        client.with_topic_prefix(prefix),
        # Each variant runs its own burst detector: its own signals topic, not the previous one's.
        signals_topic=f"{prefix}.burst-signals-{run_id}",
        incidents_topic=f"{prefix}.incidents-{run_id}",
        app_id=f"{prefix}-{run_id}",
        data_dir=tempfile.mkdtemp(prefix="qris-bench-"),
        web_port=port,
        partitions=partitions,
        log_level="warning",
        idle_timeout_s=3600.0,  # a backlog, not an outage: the wall-clock idle rule stays out
    )
    create_topics(settings)  # the variant's signals and incidents topics (the others exist)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_") or k.startswith("QRIS_KAFKA_")}
    env.update(to_env(settings))
    env.update(variant)
    log_path = Path(settings.data_dir) / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115
    # `--profile`: the worker under cProfile (its main thread, where the event loop runs: Faust's
    # consumer and agents, the core); the stats are written every 5 s, since a stopping worker
    # may end with os._exit.
    argv = ["-c", PROFILED_WORKER, profile] if profile else ["-m", "stream", "worker"]
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        first_t = first_n = None
        last: dict = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; log {log_path}")
            try:
                last = stats(port)
            except OSError:
                time.sleep(0.2)
                continue
            done = last["counts"]["records"]
            if first_t is None and done > 0:
                first_t, first_n = time.perf_counter(), done
            if done >= n:
                break
            time.sleep(0.1)
        if first_t is None or first_n is None or last["counts"]["records"] < n:
            raise SystemExit(f"the worker did not take all {n} records in time: {last.get('counts')}; log {log_path}")
        return (last["counts"]["records"] - first_n) / (time.perf_counter() - first_t), last["counts"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def mixed_backlog(client: Settings, prefix: str, n_records: int, partitions: int) -> tuple[Settings, list]:
    """A fresh topic set `{prefix}.*` (created, with its own app id: `create_topics` also makes
    the state changelog `<app_id>-state-changelog`) and about `n_records` of the simulator's
    `mixed` day for it, not yet produced."""
    shared = replace(client.with_topic_prefix(prefix), partitions=partitions, app_id=prefix)
    create_topics(shared)
    payments = n_records // 3
    records = list(
        generate(
            "mixed",
            seed=11,
            start_ms=1743213600000,
            minutes=max(60, payments // 400),
            rate_per_min=600,
            payments=payments,
            partitions=partitions,
            payment_topic=shared.payment_topic,
            ledger_topic=shared.ledger_topic,
        )
    )
    return shared, records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--variant",
        nargs="+",
        default=[""],
        help="worker settings to compare, e.g. QRIS_UVLOOP=0 QRIS_UVLOOP=1 ('' = defaults)",
    )
    ap.add_argument("--profile", help="run the (first) worker under cProfile, stats written to this file")
    args = ap.parse_args()
    client = from_env(os.environ)  # QRIS_BOOTSTRAP and the Kafka security settings
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    shared, records = mixed_backlog(client, prefix, args.records, args.partitions)
    topics = [shared.payment_topic, shared.ledger_topic]
    n = len(records)
    t = time.perf_counter()
    produce(records, shared, partitions=args.partitions)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"produced {n} records to {prefix}.* in {time.perf_counter() - t:.1f} s")
    raw = asyncio.run(raw_consume(shared, topics, n, args.partitions))
    print(f"raw aiokafka consumer: {raw:,.0f} records/s")
    for text in args.variant:
        variant = dict(kv.split("=", 1) for kv in text.split(",") if kv)
        profile = args.profile if text == args.variant[0] else None
        rate, counts = worker_rate(client, prefix, n, args.partitions, variant, profile)
        label = text or "defaults"
        print(f"worker ({label}): {rate:,.0f} records/s sustained; {rate / raw:.3f} of raw; {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
