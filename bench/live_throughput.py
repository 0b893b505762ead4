"""Live worker throughput on the real broker, beside raw aiokafka consumption in the same run
(not a test).

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/live_throughput.py --records 200000

Pre-produces the simulator's `mixed` scenario into fresh co-partitioned topics, then
1. consumes them with a bare aiokafka consumer (the ceiling for Python on this box);
2. runs a bare Faust agent on them (`bench/bare_agent.py`: the worker's own Faust app and
   `intake.take_batches` batches, counting records only): the ceiling of Faust's per-event path;
3. starts `python -m stream worker` on them and times, from its first to its last record
   (its /qris/stats page), how fast it takes the backlog: decode, decide, persist state to
   the state store (RocksDB per partition) and its changelog, send outputs. The decisions the
   last records release come after the last record: each worker run is also timed to its last
   decision (its decision counts unchanged for SETTLE_S afterwards), "to its last decision".
All rates come from the same run, so their ratios are meaningful on a noisy machine;
`--rounds N` repeats 2 and 3 alternately (and every `--variant`, `--base` tree).
`--base DIR` also runs another tree's worker and bare agent (e.g. `git archive main` unpacked)
beside this one's.
`--py-spy DIR` samples each worker (and bare agent) with py-spy while it takes the backlog, from
its first record to its last, and writes the collapsed stacks and a top-N summary to DIR
(`bench/spy_top.py`). `--profile FILE` runs the (first) worker under cProfile instead (skewed:
its stats thread's GIL waits are charged to whatever the event loop was doing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
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
from stream.topics import broker_holds, create_topics, delete_topics_with_prefix  # noqa: E402

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


def stats(port: int, processes: int = 1) -> dict:
    """The worker's /qris/stats; with several processes, their record counts added up."""
    pages = []
    for i in range(processes):
        with urllib.request.urlopen(f"http://127.0.0.1:{port + i}/qris/stats", timeout=5) as resp:
            pages.append(orjson.loads(resp.read()))
    if processes == 1:
        return pages[0]
    records = [page["counts"]["records"] for page in pages]
    return {"counts": {"records": sum(records), "per_process": records}}


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (`worker --processes N` runs N)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(k) for k in kids)]


def worker_rate(
    client: Settings,
    prefix: str,
    n: int,
    partitions: int,
    variant: dict[str, str],
    profile: str | None = None,
    *,
    bare: bool = False,
    tree: Path = ROOT,
    spy: Path | None = None,
) -> tuple[float, dict]:
    """Records/s of one process taking the whole backlog: the worker of `tree` (or, `bare`, the
    bare Faust agent), timed by its /qris/stats from its first record to its last. The bench-only
    variant key PROCESSES=N runs `worker --processes N` instead (N processes, one group)."""
    variant = dict(variant)
    processes = int(variant.pop("PROCESSES", "1"))
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
    # Only what differs from the defaults: a `--base` tree older than this one refuses settings
    # it does not know.
    defaults = to_env(Settings())
    env.update({k: v for k, v in to_env(settings).items() if defaults.get(k) != v})
    env.update(variant)
    log_path = Path(settings.data_dir) / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115
    # `--profile`: the worker under cProfile (its main thread, where the event loop runs: Faust's
    # consumer and agents, the core); the stats are written every 5 s, since a stopping worker
    # may end with os._exit.
    if bare:
        argv = [str(tree / "bench" / "bare_agent.py")]  # on that tree's Faust app and consumer
    else:
        argv = ["-c", PROFILED_WORKER, profile] if profile else ["-m", "stream", "worker"]
        if processes > 1:
            argv = ["-m", "stream", "worker", "--processes", str(processes)]
    # A tree's own `stream` package wins over the installed one: `-m` puts the cwd first.
    proc = subprocess.Popen([sys.executable, *argv], cwd=tree, env=env, stdout=log, stderr=log)
    sampler: subprocess.Popen[bytes] | None = None
    try:
        first_t = first_n = None
        first_cpu = 0.0
        last: dict = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; log {log_path}")
            try:
                last = stats(port, processes)
            except OSError:
                time.sleep(0.2)
                continue
            done = last["counts"]["records"]
            if first_t is None and done > 0:
                first_t, first_n = time.perf_counter(), done
                first_cpu = sum(cpu_s(pid) for pid in process_tree(proc.pid))
                if spy is not None:  # sample only while the backlog is being taken
                    sampler = start_sampler(proc.pid, spy, children=processes > 1)
            if done >= n:
                break
            time.sleep(POLL_S)
        if first_t is None or first_n is None or last["counts"]["records"] < n:
            raise SystemExit(f"the worker did not take all {n} records in time: {last.get('counts')}; log {log_path}")
        taken = last["counts"]["records"] - first_n
        last_t = time.perf_counter()
        cpu = sum(cpu_s(pid) for pid in process_tree(proc.pid)) - first_cpu
        counts = {**last["counts"], "cpu_us_per_record": round(1e6 * cpu / taken)}
        if not bare:
            # The decisions the last records release (and what the incidents then release) come
            # after the last record is counted: also timed up to the last decision, the moment
            # the worker's decision counts last moved before SETTLE_S without a change.
            decided = decided_count(last["counts"])
            end_t, end_cpu, end_decided = settle(
                lambda: decided_count(stats(port, processes)["counts"]),
                lambda: sum(cpu_s(pid) for pid in process_tree(proc.pid)) - first_cpu,
                last_t,
                cpu,
                decided,
                deadline,
                POLL_S,
            )
            counts["to_last_decision"] = {
                "records_per_s": round(taken / (end_t - first_t)),
                "cpu_us_per_record": round(1e6 * end_cpu / taken),
                "decisions_after_last_record": end_decided - decided,
                "s_after_last_record": round(end_t - last_t, 2),
            }
        return taken / (last_t - first_t), counts
    finally:
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            sampler.wait(60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)  # the worker's own stop deadline (QRIS_STOP_TIMEOUT_S, 90 s) comes first
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used: on a shared machine its CPU
    per record moves less than its records per wall second."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The status page is polled this often: each poll costs the worker a request on its event loop.
POLL_S = 0.25
# Decision counts unchanged this long after the last record: the worker has decided the backlog.
SETTLE_S = 3.0


def settle(
    decided: Callable[[], int | None],
    cpu: Callable[[], float],
    last_t: float,
    last_cpu: float,
    last_decided: int | None,
    deadline: float,
    poll_s: float,
) -> tuple[float, float, int]:
    """Wait until the workers' decision count (`decided()`; None or OSError: no answer, asked
    again) has not moved for SETTLE_S after `last_t`, when it was `last_decided` (None: read
    first) and the CPU `last_cpu`: the time, the CPU (`cpu()`) and the count when it last moved
    (`last_t`'s if it never did). `scale_out.py` and this bench's one worker both settle here."""
    end_t, end_cpu, end_decided = last_t, last_cpu, last_decided
    while time.perf_counter() - end_t < SETTLE_S and time.monotonic() < deadline:
        if end_decided is not None:
            time.sleep(poll_s)
        try:
            now = decided()
        except OSError:
            now = None
        if now is not None and end_decided is None:
            end_decided = now
        elif now is not None and now != end_decided:
            end_t, end_decided, end_cpu = time.perf_counter(), now, cpu()
    if end_decided is None:
        raise SystemExit("the workers' stats pages did not answer while the backlog was decided")
    return end_t, end_cpu, end_decided


def variants_of(texts: list[str]) -> list[tuple[str, dict[str, str]]]:
    """`--variant` arguments as (text, worker settings): each NAME=VALUE[,NAME=VALUE], '' for the
    defaults (`refund_latency.py`, `scale_out.py`)."""
    return [(text, dict(kv.split("=", 1) for kv in text.split(",") if kv)) for text in texts]


def decided_count(counts: dict) -> int:
    """A worker's decisions so far, from its stats counts: what it has sent on its outputs."""
    return sum(counts.get(k, 0) for k in ("refunds", "alerts", "dead_letter", "signals"))


def start_sampler(pid: int, out: Path, children: bool = False) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` (all threads; a thread waiting in a system call is idle and not
    counted; `children`: its child processes too), writing collapsed stacks to `out` when it gets
    SIGINT."""
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
    if children:
        argv.append("--subprocesses")
    return subprocess.Popen([*argv, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
        help="worker settings to compare, e.g. QRIS_UVLOOP=0 QRIS_UVLOOP=1 ('' = defaults); Faust's own "
        "settings are read from the environment too (CYTHON_OPTIMIZATIONS=0, STREAM_BUFFER_MAXSIZE=8192)",
    )
    ap.add_argument(
        "--base", type=Path, help="also run the worker and bare agent of this tree (e.g. main's), beside this one's"
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the bare agent and the workers, alternating")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare Faust agent")
    ap.add_argument(
        "--bare-variant",
        nargs="*",
        default=[],
        help="more bare agents with other settings, as --variant (Faust reads its own from the environment: "
        "CYTHON_OPTIMIZATIONS=0)",
    )
    ap.add_argument("--py-spy", type=Path, dest="spy", help="sample each run with py-spy; stacks and tops to DIR")
    ap.add_argument("--profile", help="run the (first) worker under cProfile, stats written to this file")
    ap.add_argument("--keep-topics", action="store_true", help="keep the run's topics (deleted by default)")
    args = ap.parse_args()
    client = from_env(os.environ)  # QRIS_BOOTSTRAP and the Kafka security settings
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    return deleting_topics(client, prefix, args.keep_topics, lambda: measure(args, client, prefix))


def deleting_topics(client: Settings, prefix: str, keep: bool, measure: Callable[[], int]) -> int:
    """`measure()`, then the run's topics (`prefix...`) deleted unless `keep`, also if it fails."""
    try:
        return measure()
    finally:
        if not keep:
            print(f"deleted {len(delete_topics_with_prefix(client, prefix))} topics of {prefix}")


def measure(args: argparse.Namespace, client: Settings, prefix: str) -> int:
    shared, records = mixed_backlog(client, prefix, args.records, args.partitions)
    topics = [shared.payment_topic, shared.ledger_topic]
    n = len(records)
    t = time.perf_counter()
    produce(records, shared, partitions=args.partitions)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print("broker holds {} topics, {} partitions (this run's included)".format(*broker_holds(client)))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"produced {n} records to {prefix}.* in {time.perf_counter() - t:.1f} s", flush=True)
    raw = asyncio.run(raw_consume(shared, topics, n, args.partitions))
    print(f"raw aiokafka consumer: {raw:,.0f} records/s", flush=True)
    runs: list[tuple[str, bool, Path, dict[str, str]]] = []
    if not args.no_bare:
        runs.append(("bare Faust agent", True, ROOT, {}))
        if args.base is not None:  # the ceiling of the base tree's Faust app, beside this one's
            runs.append((f"base bare Faust agent ({args.base})", True, args.base.resolve(), {}))
    for text in args.bare_variant:
        runs.append((f"bare Faust agent ({text})", True, ROOT, dict(kv.split("=", 1) for kv in text.split(",") if kv)))
    for text in args.variant:
        variant = dict(kv.split("=", 1) for kv in text.split(",") if kv)
        label = text or "defaults"
        runs.append((f"worker ({label})", False, ROOT, variant))
        if args.base is not None and "PROCESSES" not in variant:  # an older tree may lack --processes
            runs.append((f"base worker ({label}, {args.base})", False, args.base.resolve(), variant))
    if args.spy is not None:
        args.spy.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}
    settled: dict[str, list[float]] = {}
    settled_cpu: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = runs if r % 2 == 0 else runs[::-1]
        for label, bare, tree, variant in order:
            profile = args.profile if (label, r) == (runs[-1][0], 0) and not bare else None
            spy = None
            if args.spy is not None:
                kind = ("base-" if tree != ROOT else "") + ("bare" if bare else "worker")
                spy = args.spy / f"{kind}-{r}-{uuid.uuid4().hex[:4]}.txt"
            rate, counts = worker_rate(
                client, prefix, n, args.partitions, variant, profile, bare=bare, tree=tree, spy=spy
            )
            rates.setdefault(label, []).append(rate)
            cpu_us.setdefault(label, []).append(counts["cpu_us_per_record"])
            if "to_last_decision" in counts:
                settled.setdefault(label, []).append(counts["to_last_decision"]["records_per_s"])
                settled_cpu.setdefault(label, []).append(counts["to_last_decision"]["cpu_us_per_record"])
            print(f"{label}: {rate:,.0f} records/s sustained; {rate / raw:.3f} of raw; {counts}", flush=True)
            if spy is not None and spy.exists():
                from spy_top import summarise

                top = spy.with_suffix(".top.txt")
                top.write_text(summarise(spy.read_text(), title=f"{label}, {n} records, {rate:,.0f} records/s"))
                print(f"  py-spy: {spy} and {top}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("summary (median of the rounds):")
    medians = {label: statistics.median(v) for label, v in rates.items()}
    bare_rate = medians.get("bare Faust agent")
    bare_cpu = statistics.median(cpu_us["bare Faust agent"]) if "bare Faust agent" in cpu_us else None
    for label, rate in medians.items():
        cpu = statistics.median(cpu_us[label])
        extra = ""
        if bare_rate and bare_cpu and label != "bare Faust agent":
            extra = f", {rate / bare_rate:.2f} of the bare agent's rate, {cpu / bare_cpu:.2f}x its CPU per record"
        print(f"  {label}: {rate:,.0f} records/s, {rate / raw:.4f} of raw, {cpu:.0f} µs CPU per record{extra}")
        if label in settled:
            print(
                f"    to its last decision: {statistics.median(settled[label]):,.0f} records/s "
                f"({', '.join(f'{x:,.0f}' for x in settled[label])}), "
                f"{statistics.median(settled_cpu[label]):.0f} µs CPU per record"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
