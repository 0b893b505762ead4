"""CPU per input record of saving state alone, as the live worker saves it (not a test).

    python bench/save_cost.py --in day.jsonl [--records 60000] [--batch 1000] [--base DIR]

Feeds a replay file to persistent engines in batches, as the worker's shell takes them (per
topic partition in offset order), and after each batch saves what changed as the shell does
(`ReconcileShell._persist`: `PartitionEngine.take_dirty` and the state keys, then the store's
queue and a local RocksDB `WriteBatch` per partition). Holds on (the worker's default): the
incidents' progress follows each batch `--lag-s` of event time behind the slowest partition's
watermark, as the detector's does. Times the deciding and the saving apart (process CPU) and
prints microseconds per record for this tree and, with `--base`, another tree in the same run
(each in its own process, alternating, `--rounds` times). No Kafka: the changelog's sending
is not measured.

Counted instead of timed (load-independent; docs/profiles/save-path-cachegrind-stop12.txt):

    PYTHONHASHSEED=0 OPENBLAS_NUM_THREADS=1 valgrind --tool=cachegrind python bench/save_cost.py \
        --in day.jsonl --records 12000 --batch 2000 --store memory --child TREE [--skip-save]

the save path being the difference between the run without and with `--skip-save`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tree(
    path: str, records: int, batch: int, lag_s: float, holds: bool, rocks: bool, profile: str, skip_save: bool
) -> None:
    """In a child process whose `stream` package is the tree's: print 'decide_us save_us'."""
    import gc
    import time
    from dataclasses import replace
    from types import SimpleNamespace

    from stream.core.partition import NEG_INF, Params, PartitionEngine
    from stream.core.records import Stream
    from stream.drivers.replayfile import read_records
    from stream.worker.shell import ReconcileShell
    from stream.worker.statestore import MemoryPartition, PartitionStore, RocksPartition

    try:  # the worker's collector (`app.prepare_process`)
        from stream.worker.app import young_collections_freeze_survivors

        young_collections_freeze_survivors()
    except ImportError:  # a tree without it: the collector as its worker set it
        gc.set_threshold(100_000, 50, 100)
    params = Params() if not holds else replace(Params(), max_hold_ms=7_200_000)
    with open(path, "rb") as fh:
        recs = []
        for rec in read_records(fh):
            recs.append(rec)
            if len(recs) >= records:
                break
    engines: dict[int, PartitionEngine] = {}
    store = PartitionStore(changelog=None, local_dir=None)  # type: ignore[arg-type]
    tmp = tempfile.mkdtemp(prefix="save-cost-")
    locals_: dict[int, object] = {}
    shell = SimpleNamespace(engines=engines, store=store)
    persist = ReconcileShell._persist
    lag_ms = int(lag_s * 1000)
    decide = save = 0.0
    pc = time.process_time
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    for start in range(0, len(recs), batch):
        part = sorted(recs[start : start + batch], key=lambda r: (r.topic, r.partition))
        t0 = pc()
        touched = set()
        for rec in part:
            stream = Stream.P if rec.topic == params.payment_topic else Stream.L
            eng = engines.get(rec.partition)
            if eng is None:
                eng = engines[rec.partition] = PartitionEngine(rec.partition, params)
            eng.on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms)
            touched.add(rec.partition)
            if rec.partition not in locals_:  # (opening a RocksDB is not a save)
                locals_[rec.partition] = RocksPartition(Path(tmp) / f"p{rec.partition}") if rocks else MemoryPartition()
        if holds:
            known = min(e.watermark_ms for e in engines.values()) - lag_ms
            if known > NEG_INF // 2:
                for p, eng in engines.items():
                    eng.on_incidents([], known)
                    touched.add(p)
        t1 = pc()
        if skip_save:  # (instruction counts: this run's total is the rest of the program)
            for eng in engines.values():
                eng.dirty.clear()
                eng.meta_dirty = False
            decide += t1 - t0
            continue
        if prof is not None:
            prof.enable()
        for p in sorted(touched):
            persist(shell, p)  # type: ignore[arg-type]
        pending, store.pending = store.pending, {}
        for p, changes in pending.items():
            local = locals_[p]
            local.apply(changes, start, start)  # type: ignore[attr-defined]
        if prof is not None:
            prof.disable()
        t2 = pc()
        decide += t1 - t0
        save += t2 - t1
    n = len(recs)
    print(f"{decide / n * 1e6:.3f} {save / n * 1e6:.3f}")
    if prof is not None:
        prof.dump_stats(profile)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="input", required=True)
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=1000, help="records per batch (the worker's: up to 2,000)")
    ap.add_argument("--lag-s", type=float, default=60.0, help="incidents' progress behind the watermark")
    ap.add_argument("--holds", choices=("on", "off"), default="on")
    ap.add_argument("--store", choices=("rocks", "memory"), default="rocks")
    ap.add_argument("--base", help="another tree, measured beside this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", help="cProfile the save path of this tree (first round) to this file")
    ap.add_argument("--child", help="run one tree in this process (e.g. under valgrind), print its numbers")
    ap.add_argument("--skip-save", action="store_true", help="with --child: decide only, drop what changed")
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        run_tree(
            args.input,
            args.records,
            args.batch,
            args.lag_s,
            args.holds == "on",
            args.store == "rocks",
            args.profile or "",
            args.skip_save,
        )
        return 0
    trees = {"this": str(ROOT)}
    if args.base:
        trees["base"] = str(Path(args.base).resolve())
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            cmd = [sys.executable, str(Path(__file__).resolve()), "--in", args.input, "--child", tree]
            cmd += ["--records", str(args.records), "--batch", str(args.batch), "--lag-s", str(args.lag_s)]
            cmd += ["--holds", args.holds, "--store", args.store]
            if args.profile and name == "this" and r == 0:
                cmd += ["--profile", args.profile]
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree, env=env).stdout
            d, s = map(float, out.split())
            got[name].append((d, s))
            print(f"round {r + 1} {name:4}: decide {d:6.2f} us/record, save {s:6.2f} us/record", flush=True)
    med = {k: (statistics.median(d for d, _ in v), statistics.median(s for _, s in v)) for k, v in got.items()}
    for k, (d, s) in med.items():
        print(f"median {k:4}: decide {d:6.2f}, save {s:6.2f} us/record")
    if "base" in med:
        print(f"save this/base: {med['this'][1] / med['base'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
