"""Deadline-to-refund latency of the live worker on the real broker (issue 9; not a test): from
the moment a partition's watermark passes a refund's deadline to the refund on the topic.

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/refund_latency.py --rate 1000 5000 10000 --seconds 90
    python bench/refund_latency.py --rate 10000 --seconds 30 --write-day rt10k.jsonl  # the day only

Per rate R: the simulator's `mixed` day, generated at about R records/s, into fresh
co-partitioned topics with their own app id; the worker(s) started on them; then a separate
producer process offers the records in real time (each record at its produce time in the
simulated day, shifted to the wall clock, in the day's order per partition, in batches every
few ms) and notes when the broker acked each offset. The refund topic of the run is created with
`message.timestamp.type=LogAppendTime`, so a refund's timestamp is the moment it reached the
topic. The moment the watermark passed a deadline is a pure function of the input: feeding each
partition's records, in the order the broker acked them, to the core's own `PartitionEngine`
gives the watermark after every record; the first record whose arrival lifts it above the
deadline is the one that released the refund, and its ack time is the start of the latency.
Refunds whose deadline no input record passed were released by the live worker's wall-clock
idle rule; they are counted and timed apart. Holds are off by default (`--max-hold-s 0`), since a
held refund waits for the burst detector's incidents by design (CONTRACT.md "Refund holds").
T and A are shortened (`--timeout-s`, `--lateness-s`) so that a short run has deadlines in it, and
the clock guard F with them (`--clock-skew-s`, half of T - A by default).
The pure part (`arrival_order`, `watermark_steps`, `passed_at`) has a fast test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import pickle
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# bench/ itself, as when run as a script (imported as `bench.refund_latency` by its fast test).
sys.path.insert(0, str(ROOT / "bench"))

from live_throughput import variants_of  # noqa: E402  (bench/, the script's folder)

from stream.core.eventtime import parse_ms  # noqa: E402
from stream.core.partition import Params, PartitionEngine  # noqa: E402
from stream.core.records import Stream  # noqa: E402
from stream.security import aiokafka_config, topic_configs  # noqa: E402
from stream.settings import Settings, from_env, to_env  # noqa: E402
from stream.simulate.traffic import SimRecord, generate  # noqa: E402
from stream.topics import admin_client, broker_holds, create_topics, delete_topics_with_prefix  # noqa: E402

# How often the producer process wakes to send what is due (its batches span at most this).
PRODUCE_TICK_S = 0.005
# The simulator's records per second of produce time per payment-per-minute of `rate_per_min`
# varies with the daily rhythm; a short sample of the same hour calibrates it.
CALIBRATE_S = 10


# -- the pure part: when did a partition's watermark pass a deadline ------------------------


class Arrival(NamedTuple):
    """One input record of a partition as it reached the broker: its stream, offset, bytes,
    Kafka timestamp and the wall time (ms) the broker acked it."""

    stream: Stream
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    acked_ms: int


def arrival_order(payments: Iterable[Arrival], ledger: Iterable[Arrival]) -> list[Arrival]:
    """The two streams of one partition merged in the order the broker had them: by ack time,
    each stream in its offset order (a stream's acks never go back; ties keep the payment
    stream first, which changes no time: both were there at that instant)."""
    merged = sorted([*payments, *ledger], key=lambda a: (a.acked_ms, int(a.stream), a.offset))
    last = {Stream.P: -1, Stream.L: -1}
    for a in merged:
        if a.offset <= last[a.stream]:
            raise ValueError(f"stream {a.stream.name} offset {a.offset} acked before an earlier offset")
        last[a.stream] = a.offset
    return merged


@dataclass
class Steps:
    """A partition's watermark after each arrival (never decreasing), the arrivals' ack times,
    which arrival released each refund-topic decision the core made (by `(type, refund_id)`),
    and the engine left at the end (its newest event time, for the idle rule)."""

    watermark_ms: list[int]
    acked_ms: list[int]
    arrivals: Sequence[Arrival]
    released_by: dict[tuple[str, str], int]
    engine: PartitionEngine


def watermark_steps(partition: int, arrivals: Sequence[Arrival], params: Params) -> Steps:
    """Feed `arrivals` (in `arrival_order`) to the core's own engine, as replay does (no idle
    rule), and note the watermark after each: the contract's W, computed by the code that
    decides, not by a copy of its rules (clock guard, effective times, lateness)."""
    params = replace(params, burst_signals=False)
    engine = PartitionEngine(partition, params, persistent=False)
    watermarks: list[int] = []
    released: dict[tuple[str, str], int] = {}
    for i, a in enumerate(arrivals):
        for d in engine.on_record(a.stream, a.offset, a.key, a.value, a.timestamp_ms):
            if d.role == "refunds":
                released.setdefault((d.value["type"], d.value["refund_id"]), i)
        watermarks.append(engine.watermark_ms)
    return Steps(watermarks, [a.acked_ms for a in arrivals], arrivals, released, engine)


def passed_at(watermarks_ms: Sequence[int], deadline_ms: int) -> int | None:
    """Index of the first arrival after which the watermark is strictly past `deadline_ms`
    (the contract's "W > eff" for the deadline timer), or None if no arrival took it there.

    >>> passed_at([-5, 10, 10, 11, 20], 10)
    3
    >>> passed_at([-5, 10], 10) is None
    True
    """
    i = bisect.bisect_right(watermarks_ms, deadline_ms)
    return i if i < len(watermarks_ms) else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def by_slice(
    released: Sequence[tuple[int, float]], start_ms: int, slice_ms: int
) -> list[tuple[int, int, float, float]]:
    """Refunds grouped by when the record that released them was acked, in slices of
    `slice_ms` from `start_ms`: (slice start in s from `start_ms`, count, p50, p99) per slice
    that has any. The `mixed` day's switch outage (40% into the run, then T + A) makes most of a
    short run's refunds due in its last seconds, so the run's p99 is mostly theirs; this tells
    the steady part from that wave.

    >>> by_slice([(1_000, 5.0), (1_500, 7.0), (12_000, 100.0)], 0, 10_000)
    [(0, 2, 5.0, 7.0), (10, 1, 100.0, 100.0)]
    """
    slices: dict[int, list[float]] = {}
    for acked_ms, latency_ms in released:
        slices.setdefault((acked_ms - start_ms) // slice_ms, []).append(latency_ms)
    out = []
    for k in sorted(slices):
        v = sorted(slices[k])
        out.append((k * slice_ms // 1000, len(v), percentile(v, 50), percentile(v, 99)))
    return out


# -- the producer process -----------------------------------------------------------------


def produce_paced(plan_path: str, acks_path: str) -> None:
    """The producer process: send the plan's records at their wall times, batched per topic
    partition every PRODUCE_TICK_S, and write down when the broker acked each batch."""
    from aiokafka import AIOKafkaProducer

    with open(plan_path, "rb") as fh:
        plan = pickle.load(fh)
    settings: Settings = plan["settings"]
    start_wall_s: float = plan["start_wall_s"]
    # topic, partition, key, value, seconds after the start, Kafka timestamp (ms)
    sends: list[tuple[str, int, bytes | None, bytes, float, int]] = plan["sends"]

    async def run() -> dict[str, Any]:
        producer = AIOKafkaProducer(
            **aiokafka_config(settings), acks="all", linger_ms=0, max_batch_size=1 << 20, client_id="latency-bench"
        )
        await producer.start()
        acks: list[tuple[str, int, int, int, int]] = []  # topic, partition, base offset, count, acked ms
        queues: dict[tuple[str, int], asyncio.Queue[Any]] = {}
        failures: list[BaseException] = []

        def acked(tp: tuple[str, int], count: int, fut: asyncio.Future[Any]) -> None:
            now_ms = int(time.time() * 1000)
            if fut.exception() is not None:
                failures.append(fut.exception())  # type: ignore[arg-type]
                return
            acks.append((tp[0], tp[1], fut.result().offset, count, now_ms))

        async def sender(tp: tuple[str, int], queue: asyncio.Queue[Any]) -> None:
            # One task per topic partition keeps its batches in order.
            while True:
                item = await queue.get()
                if item is None:
                    return
                batch, count = item
                fut = await producer.send_batch(batch, tp[0], partition=tp[1])
                fut.add_done_callback(lambda f, tp=tp, count=count: acked(tp, count, f))

        tasks = []
        i, n = 0, len(sends)
        first_send = last_send = None
        while time.time() < start_wall_s:
            await asyncio.sleep(min(0.05, start_wall_s - time.time()))
        while i < n:
            now = time.time()
            due = now - start_wall_s
            batches: dict[tuple[str, int], list[Any]] = {}
            while i < n and sends[i][4] <= due:
                topic, p, key, value, _at, ts_ms = sends[i]
                tp = (topic, p)
                entry = batches.get(tp)
                if entry is None:
                    entry = batches[tp] = [producer.create_batch(), 0]
                if entry[0].append(key=key, value=value, timestamp=ts_ms) is None:  # full
                    queue_batch(queues, tasks, sender, tp, entry)
                    entry[:] = [producer.create_batch(), 0]
                    entry[0].append(key=key, value=value, timestamp=ts_ms)
                entry[1] += 1
                i += 1
            for tp, entry in batches.items():
                queue_batch(queues, tasks, sender, tp, entry)
            if batches:
                first_send = first_send or now
                last_send = now
            if failures:
                break
            if i < n:
                wait = sends[i][4] - (time.time() - start_wall_s)
                await asyncio.sleep(max(PRODUCE_TICK_S, min(wait, 0.1)))
        for q in queues.values():
            q.put_nowait(None)
        await asyncio.gather(*tasks)
        await producer.flush()
        await producer.stop()
        if failures:
            raise RuntimeError(f"producing failed: {failures[0]!r}")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "acks": acks,
            "sent": n,
            "first_send_s": first_send,
            "last_send_s": last_send,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }

    def queue_batch(queues: dict, tasks: list, sender: Any, tp: tuple[str, int], entry: list[Any]) -> None:
        if entry[1] == 0:
            return
        q = queues.get(tp)
        if q is None:
            q = queues[tp] = asyncio.Queue()
            tasks.append(asyncio.ensure_future(sender(tp, q)))
        q.put_nowait((entry[0], entry[1]))

    result = asyncio.run(run())
    with open(acks_path, "wb") as fh:
        pickle.dump(result, fh)


# The worker, with its batches timed: `ReconcileShell.process_records` wrapped (from outside; the
# worker's code is not changed) to note, per batch, when it started and ended and which offsets
# of each topic partition it held, written to a file every second by a thread. Costs a pass over
# each batch's records (well under 1 us a record against the worker's ~200).
TIMED_WORKER = """
import os, runpy, sys, threading, time, orjson
from stream.worker import shell
path = sys.argv[1]
batches = []
inner = shell.ReconcileShell.process_records
async def process_records(self, records, *args, **kwargs):
    start = time.time()
    spans = {}
    for r in records:
        k = (r.topic, r.partition)
        lo_hi = spans.get(k)
        if lo_hi is None:
            spans[k] = [r.offset, r.offset]
        elif r.offset > lo_hi[1]:
            lo_hi[1] = r.offset
        elif r.offset < lo_hi[0]:
            lo_hi[0] = r.offset
    try:
        return await inner(self, records, *args, **kwargs)
    finally:
        batches.append((start, time.time(), len(records), [(t, p, lo, hi) for (t, p), (lo, hi) in spans.items()]))
shell.ReconcileShell.process_records = process_records
# When the Kafka client handed records to Faust (in Faust's consumer thread, which calls the
# fetcher directly): the time and the offsets per topic partition ("fetch:<topic>").
from aiokafka.consumer import fetcher
fetched_records = fetcher.Fetcher.fetched_records
async def timed_fetched_records(self, *a, **kw):
    got = await fetched_records(self, *a, **kw)
    if got:
        now = time.time()
        spans = [("fetch:" + tp.topic, tp.partition, m[0].offset, m[-1].offset) for tp, m in got.items() if m]
        batches.append((now, now, sum(len(m) for m in got.values()), spans))
    return got
fetcher.Fetcher.fetched_records = timed_fetched_records
def dump():
    with open(path, "ab") as fh:
        while True:
            time.sleep(1.0)
            while batches:
                fh.write(orjson.dumps(batches.pop(0)) + b"\\n")
            fh.flush()
threading.Thread(target=dump, daemon=True).start()
sys.argv = ["stream", "worker"]
runpy.run_module("stream", run_name="__main__", alter_sys=True)
"""


# -- the run ------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_day(settings: Settings, rate: float, seconds: float, start_ms: int, partitions: int) -> list[SimRecord]:
    """The `mixed` day at about `rate` records/s of produce time, from `start_ms`, cut at
    `seconds` (records a real producer would send later, e.g. very late settlements, are not
    sent: the cut keeps each partition's prefix)."""

    def day(rate_per_min: float, secs: float) -> list[SimRecord]:
        end_ms = start_ms + int(secs * 1000)
        return [
            r
            for r in generate(
                "mixed",
                seed=11,
                start_ms=start_ms,
                minutes=secs / 60,
                rate_per_min=rate_per_min,
                partitions=partitions,
                payment_topic=settings.payment_topic,
                ledger_topic=settings.ledger_topic,
            )
            if r.timestamp_ms < end_ms
        ]

    guess = rate * 20.0  # about 3 records a payment
    # The sample's second half: in its first seconds the payments' later records are missing.
    half_ms = start_ms + CALIBRATE_S * 500
    sample = [r for r in day(guess, CALIBRATE_S) if r.timestamp_ms >= half_ms]
    per_min = guess * rate / max(1.0, len(sample) / (CALIBRATE_S / 2))
    return day(per_min, seconds)


def start_workers(
    settings: Settings, count: int, env_extra: dict[str, str], tree: Path = ROOT
) -> list[tuple[subprocess.Popen, int, Path]]:
    """`count` timed workers of the tree `tree` (this one, or another checkout: `--base`). Only the
    settings that differ from the defaults are passed, so each tree runs with its own defaults
    (and an older tree is not given a setting it does not know)."""
    workers = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_") or k.startswith("QRIS_KAFKA_")}
    defaults = to_env(Settings())
    for w in range(count):
        port = free_port()
        s = replace(settings, web_port=port, data_dir=tempfile.mkdtemp(prefix=f"qris-latency-w{w}-"))
        own = {k: v for k, v in to_env(s).items() if v != defaults[k]}
        env = {**base, **own, **env_extra}
        log_path = Path(s.data_dir) / "worker.log"
        log = open(log_path, "wb")  # noqa: SIM115
        timings = Path(s.data_dir) / "batches.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-c", TIMED_WORKER, str(timings)], cwd=tree, env=env, stdout=log, stderr=log
        )
        workers.append((proc, port, log_path))
    deadline = time.monotonic() + 120
    for proc, port, log_path in workers:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; log {log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"worker not ready in 120 s; log {log_path}")
            try:
                status, _ = get_json(port, "/qris/ready")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
    return workers


def stop_workers(workers: list[tuple[subprocess.Popen, int, Path]]) -> None:
    for proc, _, _ in workers:
        proc.send_signal(signal.SIGTERM)
    for proc, _, _ in workers:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def taken(workers: list[tuple[subprocess.Popen, int, Path]]) -> int:
    total = 0
    for proc, port, log_path in workers:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}; log {log_path}")
        try:
            _, st = get_json(port, "/qris/stats")
        except OSError:
            continue
        total += int(st["counts"]["records"]) if st else 0
    return total


@dataclass
class Observed:
    """What reached the run's refund and alert topics, as the bench's consumer saw it."""

    refunds: list[tuple[dict[str, Any], int, int]]  # value, append time ms, received ms
    alert_kinds: Counter[str]


async def follow_outputs(settings: Settings, observed: Observed, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**aiokafka_config(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in (settings.refund_topic, settings.alert_topic)
            for p in range(settings.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            now_ms = int(time.time() * 1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    value = orjson.loads(m.value)
                    if tp.topic == settings.refund_topic:
                        observed.refunds.append((value, m.timestamp, now_ms))
                    else:
                        observed.alert_kinds[value.get("kind", "?")] += 1
    finally:
        await consumer.stop()


def clock_skew_s(args: argparse.Namespace) -> float:
    """F for the run: as given, else half of the shortened T - A (the Settings default's 60 s is
    above it, and the worker refuses a clock guard at or above T - A)."""
    if args.clock_skew_s is not None:
        return float(args.clock_skew_s)
    return max(0.0, min(60.0, (args.timeout_s - args.lateness_s) / 2))


def run_rate(
    client: Settings,
    args: argparse.Namespace,
    rate: float,
    fetch_max_wait_ms: int,
    variant: dict[str, str] | None = None,
    tree: Path = ROOT,
) -> dict[str, Any]:
    prefix = f"latency-{uuid.uuid4().hex[:8]}"
    settings = replace(
        client.with_topic_prefix(prefix),
        partitions=args.partitions,
        app_id=prefix,
        timeout_s=args.timeout_s,
        lateness_s=args.lateness_s,
        clock_skew_s=clock_skew_s(args),
        idle_timeout_s=args.idle_timeout_s,
        max_hold_s=args.max_hold_s,
        log_level="warning",
    )
    # The refund topic first, stamped by the broker on append; create_topics makes the rest.
    from kafka.admin import NewTopic

    admin = admin_client(settings)
    try:
        admin.create_topics(
            [
                NewTopic(
                    settings.refund_topic,
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                    topic_configs={**topic_configs(settings), "message.timestamp.type": "LogAppendTime"},
                )
            ]
        )
    finally:
        admin.close()
    create_topics(settings)

    # Generated for a start a little ahead, so that event time is close to the wall clock.
    t = time.perf_counter()
    lead_s = 25 + args.seconds * rate / 12_000  # generation (about 15k records/s) and start-up
    start_ms = int((time.time() + lead_s) * 1000)
    records = make_day(settings, rate, args.seconds, start_ms, args.partitions)
    gen_s = time.perf_counter() - t
    plan_dir = Path(tempfile.mkdtemp(prefix="qris-latency-plan-"))
    plan_path, acks_path = plan_dir / "plan.pickle", plan_dir / "acks.pickle"

    env_extra = dict(variant or {})
    if fetch_max_wait_ms:
        env_extra["QRIS_FETCH_MAX_WAIT_MS"] = str(fetch_max_wait_ms)
    workers = start_workers(settings, args.workers, env_extra, tree)
    start_wall_s = max(time.time() + 2.0, start_ms / 1000)
    # The day's produce times, moved to the wall clock: the Kafka timestamp of each record is the
    # moment it is due (sent within PRODUCE_TICK_S of it when the producer keeps up).
    shift_ms = round(start_wall_s * 1000) - start_ms
    with open(plan_path, "wb") as fh:
        pickle.dump(
            {
                "settings": settings,
                "start_wall_s": start_wall_s,
                "sends": [
                    (
                        r.topic,
                        r.partition,
                        r.key.encode() if r.key is not None else None,
                        r.value,
                        (r.timestamp_ms - start_ms) / 1000,
                        r.timestamp_ms + shift_ms,
                    )
                    for r in records
                ],
            },
            fh,
        )
    producer = subprocess.Popen(
        [sys.executable, __file__, "--produce", str(plan_path), str(acks_path)], cwd=ROOT, env=os.environ.copy()
    )
    worker_pids = [w[0].pid for w in workers]
    cpu_before = [proc_cpu_s(pid) for pid in worker_pids]
    load_before = os.getloadavg()
    observed = Observed([], Counter())

    async def watch() -> dict[str, Any]:
        stop = asyncio.Event()
        follower = asyncio.ensure_future(follow_outputs(settings, observed, stop))
        at_start = at_end = None
        while producer.poll() is None:
            await asyncio.sleep(1.0)
            if at_start is None and time.time() >= start_wall_s:
                at_start = (time.time(), await asyncio.to_thread(taken, workers))
        end_wall = time.time()
        at_end = (end_wall, await asyncio.to_thread(taken, workers))
        cpu_end = [proc_cpu_s(pid) for pid in worker_pids]
        load_end = os.getloadavg()
        # Drain: until the worker has every record and the refunds stop coming (the idle rule
        # releases the last deadlines once the feeds are quiet), or the drain limit.
        n = len(records)
        quiet_s = args.idle_timeout_s + max(1.0, min(args.idle_timeout_s / 4, 10.0)) + 5
        drain_until = time.time() + args.drain_s
        last_count, last_change = -1, time.time()
        caught_up_s = None
        while time.time() < drain_until:
            await asyncio.sleep(1.0)
            done = await asyncio.to_thread(taken, workers)
            if done >= n and caught_up_s is None:
                caught_up_s = time.time() - end_wall
            if len(observed.refunds) != last_count:
                last_count, last_change = len(observed.refunds), time.time()
            if done >= n and time.time() - last_change > quiet_s:
                break
        stop.set()
        await follower
        return {
            "at_start": at_start,
            "at_end": at_end,
            "caught_up_s": caught_up_s,
            "taken_final": await asyncio.to_thread(taken, workers),
            "worker_cpu_s": sum(cpu_end) - sum(cpu_before),
            "load": (load_before, load_end),
            "shift_ms": shift_ms,
            "timings": [log_path.parent / "batches.jsonl" for _, _, log_path in workers],
        }

    try:
        live = asyncio.run(watch())
    finally:
        stop_workers(workers)
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        if not args.keep_topics:  # also when the run failed (as live_throughput's and scale_out's)
            delete_topics_with_prefix(settings, prefix)
    if producer.returncode != 0:
        raise SystemExit(f"the producer process failed ({producer.returncode})")
    with open(acks_path, "rb") as fh:
        produced = pickle.load(fh)
    observed.refunds.sort(key=lambda r: r[1])
    return analyse(settings, args, rate, records, produced, live, observed, gen_s)


def analyse(
    settings: Settings,
    args: argparse.Namespace,
    rate: float,
    records: list[SimRecord],
    produced: dict[str, Any],
    live: dict[str, Any],
    observed: Observed,
    gen_s: float,
) -> dict[str, Any]:
    acked: dict[tuple[str, int, int], int] = {}
    for topic, p, base, count, ack_ms in produced["acks"]:
        for k in range(count):
            acked[(topic, p, base + k)] = ack_ms
    per_partition: dict[int, tuple[list[Arrival], list[Arrival]]] = {p: ([], []) for p in range(args.partitions)}
    for r in records:
        s = Stream.P if r.topic == settings.payment_topic else Stream.L
        ack_ms = acked.get((r.topic, r.partition, r.offset))
        if ack_ms is None:
            raise SystemExit(f"no ack for {r.topic}[{r.partition}]@{r.offset}: offsets differ from the plan")
        key = r.key.encode() if r.key is not None else None
        # The Kafka timestamp the producer gave it: its due time on the wall clock.
        ts_ms = r.timestamp_ms + live["shift_ms"]
        per_partition[r.partition][int(s)].append(Arrival(s, r.offset, key, r.value, ts_ms, ack_ms))
    params = settings.params
    steps = {p: watermark_steps(p, arrival_order(*streams), params) for p, streams in per_partition.items()}

    batch_of = BatchIndex(live["timings"])
    to_fetch: list[float] = []  # passing record acked -> the worker's Kafka client hands it to Faust
    to_batch: list[float] = []  # passing record acked -> the worker's batch holding it starts
    in_batch: list[float] = []  # that batch starts -> the refund appended
    batch_s: list[float] = []  # that batch's whole time (decide, send, flush, state, changelog)
    batch_n: list[float] = []
    topics = (settings.payment_topic, settings.ledger_topic)
    by_input: list[float] = []  # refund.requested / held at the deadline, W passed by a record
    by_input_at: list[tuple[int, float]] = []  # (ack time of the record that released it, latency)
    by_input_recv: list[float] = []
    by_idle: list[float] = []
    other: dict[str, list[float]] = {}
    not_released = agree = disagree = early = 0
    unmatched: Counter[str] = Counter()
    idle_s = args.idle_timeout_s
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    for value, append_ms, recv_ms in observed.refunds:
        kind, rid = value["type"], value["refund_id"]
        if (kind, rid) in seen:
            duplicates += 1
            continue
        seen.add((kind, rid))
        st = steps.get(int(value["partition"]))
        deadline_ms = parse_ms(value["deadline"])
        at_deadline = kind in ("refund.requested", "refund.held") and "hold" not in value
        if at_deadline and st is not None:
            i = passed_at(st.watermark_ms, deadline_ms)
            if i is not None and append_ms < st.acked_ms[i]:
                # On the topic before the input passed its deadline: the live idle rule moved
                # the watermark first (a stream the worker had not taken for the idle timeout).
                early += 1
                continue
            if i is not None:
                by_input.append(append_ms - st.acked_ms[i])
                by_input_at.append((st.acked_ms[i], append_ms - st.acked_ms[i]))
                by_input_recv.append(recv_ms - st.acked_ms[i])
                a = st.arrivals[i]
                b = batch_of.find(topics[int(a.stream)], int(value["partition"]), a.offset)
                f = batch_of.find("fetch:" + topics[int(a.stream)], int(value["partition"]), a.offset)
                if f is not None:
                    to_fetch.append(f[0] * 1000 - a.acked_ms)
                if b is not None:
                    to_batch.append(b[0] * 1000 - a.acked_ms)
                    in_batch.append(append_ms - b[0] * 1000)
                    batch_s.append((b[1] - b[0]) * 1000)
                    batch_n.append(b[2])
                j = st.released_by.get((kind, rid))
                if j is not None:
                    agree += j == i
                    disagree += j != i
                continue
            # Released by the idle rule: both feeds quiet for the idle timeout, then event time
            # follows the wall clock from the newest record (`ReconcileShell.check_idle_feeds`).
            eng = st.engine
            newest = max(x for x in eng.max_ms if x is not None)
            last_ms = st.acked_ms[-1]
            nominal = last_ms + max(idle_s * 1000, deadline_ms + 1 - (newest - params.lateness_ms))
            by_idle.append(append_ms - nominal)
            continue
        # Cancellations and the rest: released by the record whose arrival passed its own time.
        if st is not None and (j := st.released_by.get((kind, rid))) is not None:
            other.setdefault(kind, []).append(append_ms - st.acked_ms[j])
        else:
            not_released += 1
            unmatched[kind] += 1
    expected = {key for s in steps.values() for key in s.released_by if key[0] == "refund.requested"}
    missing = len(expected - seen)
    # A refund the core decided from the input but the worker had not sent by the end of the
    # drain wait counts as later than everything seen (a worker falling behind must not look
    # fast because its slowest refunds were never timed).
    by_input.extend([float("inf")] * missing)

    def summary(values: list[float]) -> dict[str, Any]:
        v = sorted(values)
        return {
            "count": len(v),
            "p50_ms": percentile(v, 50),
            "p90_ms": percentile(v, 90),
            "p99_ms": percentile(v, 99),
            "max_ms": v[-1] if v else float("nan"),
            "mean_ms": statistics.fmean(v) if v and v[-1] != float("inf") else float("nan"),
        }

    n = len(records)
    t0, taken0 = live["at_start"] or (produced["first_send_s"], 0)
    t1, taken1 = live["at_end"]
    offered_s = (produced["last_send_s"] or 0) - (produced["first_send_s"] or 0)
    return {
        "rate_target": rate,
        "records": n,
        "generated_s": gen_s,
        "offered_rate": n / offered_s if offered_s > 0 else float("nan"),
        "offered_s": offered_s,
        "producer_cpu_s": produced["cpu_s"],
        "worker_rate_during": (taken1 - taken0) / (t1 - t0) if t1 > t0 else float("nan"),
        "lag_at_end": n - taken1,
        "caught_up_s": live["caught_up_s"],
        "taken_final": live["taken_final"],
        "worker_cpu_share": live["worker_cpu_s"] / (t1 - t0) if t1 > t0 else float("nan"),
        "load": live["load"],
        "deadline": summary(by_input),
        "deadline_by_5s": by_slice(by_input_at, round((produced["first_send_s"] or 0) * 1000), 5000),
        "deadline_received": summary(by_input_recv),
        "to_fetch": summary(to_fetch),
        "to_batch": summary(to_batch),
        "in_batch": summary(in_batch),
        "batch_ms": summary(batch_s),
        "batch_records": summary(batch_n),
        "batches": batch_of.summary(),
        "idle_rule": summary(by_idle),
        "other": {k: summary(v) for k, v in sorted(other.items())},
        "released_index_agrees": (agree, disagree),
        "not_matched": dict(unmatched),
        "early": early,
        "missing_requested": missing,
        "duplicates": duplicates,
        "alerts": dict(observed.alert_kinds),
    }


class BatchIndex:
    """The worker's timed batches (`TIMED_WORKER`): which batch took a given input offset."""

    def __init__(self, paths: list[Path]) -> None:
        self.spans: dict[tuple[str, int], list[tuple[int, int, float, float, int]]] = {}
        self.batches: list[tuple[float, float, int]] = []
        for path in paths:
            if not path.exists():
                continue
            for line in path.read_bytes().splitlines():
                start, end, n, spans = orjson.loads(line)
                if not spans or not spans[0][0].startswith("fetch:"):
                    self.batches.append((start, end, n))
                for topic, p, lo, hi in spans:
                    self.spans.setdefault((topic, p), []).append((lo, hi, start, end, n))
        for v in self.spans.values():
            v.sort()

    def find(self, topic: str, partition: int, offset: int) -> tuple[float, float, int] | None:
        spans = self.spans.get((topic, partition), [])
        i = bisect.bisect_right(spans, (offset, float("inf"))) - 1
        if i >= 0 and spans[i][0] <= offset <= spans[i][1]:
            return spans[i][2], spans[i][3], spans[i][4]
        return None

    def summary(self) -> dict[str, Any]:
        if not self.batches:
            return {"count": 0}
        sizes = sorted(n for _, _, n in self.batches)
        times = sorted((e - s) * 1000 for s, e, _ in self.batches)
        return {
            "count": len(sizes),
            "records_p50": percentile(sizes, 50),
            "records_max": sizes[-1],
            "ms_p50": percentile(times, 50),
            "ms_p99": percentile(times, 99),
            "ms_max": times[-1],
        }


def fmt(summary: dict[str, Any], unit: str = " ms") -> str:
    if not summary["count"]:
        return "none"

    def v(x: float) -> str:
        return "not sent in time" if x == float("inf") else f"{x:,.0f}{unit}"

    return (
        f"n={summary['count']:,} p50 {v(summary['p50_ms'])}, p90 {v(summary['p90_ms'])}, "
        f"p99 {v(summary['p99_ms'])}, max {v(summary['max_ms'])}"
    )


def write_day(client: Settings, args: argparse.Namespace) -> int:
    """The day a run offers (`make_day`) as a replay file, records in produce-time order."""
    from stream.simulate.output import write_replay

    day = sorted(
        make_day(client, args.rate[0], args.seconds, 1743213600000, args.partitions), key=lambda r: r.timestamp_ms
    )
    with open(args.write_day, "wb") as fh:
        write_replay(day, fh)
    print(f"{args.write_day}: {len(day):,} records, about {args.rate[0]:,.0f}/s for {args.seconds:g} s")
    return 0


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--produce":
        produce_paced(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, nargs="+", default=[1000.0, 5000.0, 10000.0], help="records/s offered")
    ap.add_argument("--seconds", type=float, default=90.0, help="seconds of traffic per rate")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=15.0, help="T (shortened: deadlines inside a short run)")
    ap.add_argument("--lateness-s", type=float, default=5.0, help="A (shortened likewise)")
    ap.add_argument(
        "--clock-skew-s",
        type=float,
        help="F (default: half of T - A, at most 60: the worker refuses F at or above T - A)",
    )
    ap.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        help="the idle rule (releases the last deadlines after the traffic)",
    )
    ap.add_argument("--max-hold-s", type=float, default=0.0, help="H; 0: holds off (refunds not held)")
    ap.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        nargs="+",
        default=[0],
        help="the worker's QRIS_FETCH_MAX_WAIT_MS for a run (repeatable: 0 100 1500; 0: as shipped, 100; "
        "1500 is Faust's own fixed value)",
    )
    ap.add_argument(
        "--variant",
        nargs="+",
        default=[""],
        help="worker settings to compare, each a comma-separated list of NAME=VALUE ('' = defaults), "
        "e.g. '' QRIS_BATCH_MAX=500",
    )
    ap.add_argument("--base", type=Path, help="also run this tree's worker (e.g. main unpacked), with its own defaults")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every run, alternating trees and variants")
    ap.add_argument("--drain-s", type=float, default=240.0, help="longest wait after the traffic")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--keep-topics", action="store_true", help="keep the run's topics (deleted by default)")
    ap.add_argument(
        "--write-day",
        type=Path,
        help="only write the day of the first --rate and --seconds to this replay file, in the order the "
        "producer offers it (for `bench/shell_cost.py`), and exit; needs no broker",
    )
    args = ap.parse_args()
    client = from_env(os.environ)
    if args.write_day:
        return write_day(client, args)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}; "
        f"T={args.timeout_s:g}s A={args.lateness_s:g}s F={clock_skew_s(args):g}s "
        f"idle={args.idle_timeout_s:g}s H={args.max_hold_s:g}s, "
        f"{args.partitions} partitions, {args.workers} worker(s), {args.seconds:g} s of traffic per rate, "
        f"consumer fetch.max.wait.ms {args.fetch_max_wait_ms} (0: as shipped, QRIS_FETCH_MAX_WAIT_MS's default)",
        flush=True,
    )
    print("broker holds {} topics, {} partitions".format(*broker_holds(client)), flush=True)
    results = []
    trees = [("", ROOT)] + ([(f"base {args.base}", args.base.resolve())] if args.base else [])
    variants = variants_of(args.variant)
    runs = [
        (rate, wait_ms, tree_label, tree, text, variant)
        for rate in args.rate
        for _ in range(args.rounds)
        for tree_label, tree in trees
        for text, variant in (variants if not tree_label else [("", {})])
        for wait_ms in args.fetch_max_wait_ms
    ]
    for rate, wait_ms, tree_label, tree, text, variant in runs:
        r = run_rate(client, args, rate, wait_ms, variant, tree)
        r["fetch_max_wait_ms"] = wait_ms or Settings().fetch_max_wait_ms
        r["worker"] = tree_label or "this tree"
        r["variant"] = text
        results.append(r)
        label = ", ".join(x for x in (tree_label, text) if x)
        if label:
            print(f"worker: {label}", flush=True)
        la, lb = r["load"]
        caught = r["caught_up_s"]
        caught_text = f"{caught:.1f} s later" if caught is not None else "never, in the drain time"
        print(
            f"rate {rate:,.0f}/s, fetch.max.wait.ms {r['fetch_max_wait_ms']}: "
            f"offered {r['offered_rate']:,.0f} records/s "
            f"({r['records']:,} records in "
            f"{r['offered_s']:.1f} s, producer CPU {r['producer_cpu_s']:.1f} s); worker took "
            f"{r['worker_rate_during']:,.0f} records/s during the traffic, lag at its end {r['lag_at_end']:,} "
            f"(caught up {caught_text}), "
            f"worker CPU {r['worker_cpu_share']:.0%} of one; load average {la[0]:.1f} -> {lb[0]:.1f}",
            flush=True,
        )
        print(f"  deadline -> refund on the topic (broker append time): {fmt(r['deadline'])}")
        print(f"  deadline -> refund received by the bench's consumer:  {fmt(r['deadline_received'])}")
        slices = ", ".join(f"{at}s: n={n:,} p50 {p50:,.0f} p99 {p99:,.0f}" for at, n, p50, p99 in r["deadline_by_5s"])
        print(f"  by when the releasing record was acked (5 s slices of the traffic): {slices}")
        print(f"  of which: acked -> worker's Kafka client returns it: {fmt(r['to_fetch'])}")
        print(f"            acked -> worker's batch starts: {fmt(r['to_batch'])}")
        print(f"            batch starts -> refund appended:  {fmt(r['in_batch'])}")
        print(f"            that batch's time: {fmt(r['batch_ms'])}; its records: {fmt(r['batch_records'], '')}")
        print(f"  the worker's batches: {r['batches']}")
        print(f"  deadlines passed by the idle rule (vs its nominal time): {fmt(r['idle_rule'])}")
        for kind, s in r["other"].items():
            print(f"  {kind} (released by a record's arrival): {fmt(s)}")
        agree, disagree = r["released_index_agrees"]
        print(
            f"  checks: release record = first record past the deadline {agree:,}/{agree + disagree:,}; "
            f"refunds the core decided but not seen {r['missing_requested']}; sent before the input passed the "
            f"deadline (idle rule) {r['early']}; released by no input record (idle rule) {r['not_matched']}; "
            f"repeated {r['duplicates']}; alerts {r['alerts']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
