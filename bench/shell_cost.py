"""Instructions (or CPU) per input record of the live shell's whole batch path, in one process
with a stand-in broker (not a test): `ReconcileShell.process_records` on Faust-like events (a
partition's records in a run, as the worker's consumer delivers them), the decisions sent to a
no-op, the changed state persisted as the worker does (`_persist`, `PartitionStore.commit`:
aiokafka record batches built by `KafkaChangelog.send_batch` and closed, then the local RocksDB
`WriteBatch`), and, holds on, the incidents' progress `--lag-s` of event time behind the
slowest watermark after each batch. Not included: Faust, aiokafka's fetch, the network.

    python bench/shell_cost.py --in day.jsonl --records 60000 [--tree DIR]
    python bench/shell_cost.py --in rt.jsonl --records 300000 --batch 1000 --timeout-s 15 --lateness-s 5 --max-hold-s 0

(the second as `bench/refund_latency.py` runs the worker: a day offered in real time, so a
reference's records come in different batches and it is saved about twice a record). The local
DB's writes are timed apart (`RocksPartition.apply`, wall time in the thread).

Timing on the shared machine is noisy; count instructions instead, this tree against another:

    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no python bench/shell_cost.py \\
        --in day.jsonl --records 12000 --tree DIR

(the path's instructions per record: the difference of runs with 12,000 and 2,000 records,
divided by 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="input", required=True)
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--lag-s", type=float, default=60.0)
    ap.add_argument("--timeout-s", type=float, help="T (default: the Settings default)")
    ap.add_argument("--lateness-s", type=float, help="A (default: the Settings default)")
    ap.add_argument("--max-hold-s", type=float, help="H; 0: holds off (default: the Settings default)")
    ap.add_argument(
        "--clock-skew-s",
        type=float,
        help="F (default: the Settings default, or half of T - A when that is below it, as the worker requires)",
    )
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent), help="whose `stream` to run")
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    _store = asyncio.run(run(args))
    # Ended here with the store still held, its local DBs open: a DB freed is closed, which
    # flushes its memtable (in the worker RocksDB flushes on its own thread, not on the path
    # counted here), and whether the store is freed by then depends on the build (the compiled
    # one's by reference count, the source one's in a cycle).
    sys.stdout.flush()
    os._exit(0)


class _Producer:
    """aiokafka's record batches built as the changelog builds them, closed, not sent."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}

    def create_batch(self) -> Any:
        from aiokafka.producer.message_accumulator import BatchBuilder

        return BatchBuilder(512 * 1024, 0)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        count = batch.record_count()
        batch._build()
        base = self.offsets.get(partition, 0)
        self.offsets[partition] = base + count
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=base))
        return fut


class _Changelog:
    """The changelog as the store sees it: `KafkaChangelog.send_batch` on the stand-in producer
    (its clients set, not started: the compiled build's class takes no methods of an instance's
    own), an empty topic to restore from."""

    def __init__(self, kafka: Any, producer: _Producer) -> None:
        kafka._producer, kafka._consumer = producer, None
        self.kafka = kafka

    async def send_batch(self, batches: Any) -> dict[int, int]:
        result: dict[int, int] = await self.kafka.send_batch(batches)
        return result

    async def end_offset(self, partition: int) -> int:
        return 0

    async def read(self, partition: int, start: int, end: int) -> Any:
        return
        yield

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kafka, name)


async def run(args: argparse.Namespace) -> Any:
    """The batches run; returns the store (its local DBs open)."""
    from stream.core.partition import NEG_INF
    from stream.drivers.replayfile import read_records
    from stream.settings import Settings
    from stream.worker import shell as shell_module
    from stream.worker.shell import ReconcileShell
    from stream.worker.statestore import KafkaChangelog, PartitionStore
    from stream.worker.watch import WorkerWatch

    try:  # the worker's collector (`app.prepare_process`)
        from stream.worker.app import young_collections_freeze_survivors

        young_collections_freeze_survivors()
    except ImportError:  # a tree without it: the collector as its worker set it
        gc.set_threshold(100_000, 50, 100)
    with open(args.input, "rb") as fh:
        recs = []
        for rec in read_records(fh):
            recs.append(rec)
            if len(recs) >= args.records:
                break
    topics = {r.topic for r in recs}
    settings = replace(
        Settings(),
        payment_topic=next(t for t in topics if "payment" in t),
        ledger_topic=next(t for t in topics if "ledger" in t),
    )
    for name in ("timeout_s", "lateness_s", "max_hold_s", "clock_skew_s"):
        if getattr(args, name) is not None:
            settings = replace(settings, **{name: getattr(args, name)})
    if args.clock_skew_s is None and settings.clock_skew_s >= settings.timeout_s - settings.lateness_s:
        # (A shortened T: the live worker refuses the default F at or above T - A.)
        settings = replace(settings, clock_skew_s=max(0.0, (settings.timeout_s - settings.lateness_s) / 2))
    changelog = _Changelog(KafkaChangelog({}, "bench-state-changelog"), _Producer())
    store = PartitionStore(changelog, Path(tempfile.mkdtemp(prefix="shell-cost-")))
    local_db = _timed_local_writes(store)
    watch = WorkerWatch(settings)

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    async def flush() -> None:
        return None

    shell = ReconcileShell(settings, store, send, flush, store.commit, restore=store.restore)
    shell.on_engine = watch.watch_engine
    shell.on_output = watch.on_output  # (as the worker wires it: each decision's value as built)
    batches = []
    for start in range(0, len(recs), args.batch):
        part = sorted(recs[start : start + args.batch], key=lambda r: (r.partition, r.topic))
        batches.append(
            [
                SimpleNamespace(
                    message=SimpleNamespace(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        timestamp=None if r.timestamp_ms is None else r.timestamp_ms / 1000.0,
                        key=r.key,
                        value=r.value,
                    )
                )
                for r in part
            ]
        )
    lag_ms = int(args.lag_s * 1000)
    t0 = time.process_time()
    for events in batches:
        await shell.process_records(shell_module._plain(events))
        known = min(e.watermark_ms for e in shell.engines.values()) - lag_ms
        if known > NEG_INF // 2 and settings.max_hold_s > 0:
            await shell.on_incidents([], known)
    cpu_s = time.process_time() - t0
    print(f"{shell_module.__file__}: {cpu_s / len(recs) * 1e6:.2f} us CPU per record, {shell.counts}")
    if local_db is None:
        print("local DB writes: not timed (the compiled build's store)")
        return store
    seconds, changes = local_db
    print(
        f"local DB writes (RocksDB, in the thread): {seconds:.2f} s for {changes:,} changed keys, "
        f"{seconds / max(1, changes) * 1e6:.2f} us a key, {seconds / len(recs) * 1e6:.2f} us a record"
    )
    return store


def _timed_local_writes(store: Any) -> list[Any] | None:
    """[seconds inside the local DBs' `apply`, keys changed], filled in as the run goes (None:
    not timed, a compiled store)."""
    totals: list[Any] = [0.0, 0]
    make = store._local

    def local(partition: int) -> Any:
        db = make(partition)
        if not getattr(db, "_timed", False):
            apply = db.apply

            def timed(
                changes: Any,
                applied_offset: int,
                seq: int,
                current_at_ms: int | None = None,
                identity_offset: int | None = None,
            ) -> None:
                changes = list(changes)
                t = time.perf_counter()
                apply(changes, applied_offset, seq, current_at_ms, identity_offset)
                totals[0] += time.perf_counter() - t
                totals[1] += len(changes)

            db.apply, db._timed = timed, True
        return db

    try:
        store._local = local
    except AttributeError:  # the compiled build's store: its methods are its class's
        return None
    return totals


if __name__ == "__main__":
    raise SystemExit(main())
