"""What a commit's RocksDB write costs per changed reference, skip-list memtable (RocksDB's
default) against the vector memtable the worker uses (`statestore.rocks_options`); not a test.

    python bench/rocks_write.py [--batches 300] [--per 1000] [--rounds 3]
    python bench/rocks_write.py --write-buffer-mb 64 16   # the worker's memtable at two sizes

Each batch is a `WriteBatch` of `--per` puts of `--value-bytes` (about a saved reference) to keys
drawn from a universe of references, written without the write-ahead log, as
`RocksPartition.apply` does. Printed per key: the time inside `db.write` (the part the worker's
thread spends holding the GIL: rocksdict does not release it) and the process CPU (the puts,
the write, and RocksDB's own flush threads). The two memtables alternate over `--rounds`, each
on a fresh DB; the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stream.worker.statestore import rocks_options  # noqa: E402


def skip_list() -> Any:
    from rocksdict import Options

    return Options(raw_mode=True)


def one_run(options: Callable[[], Any], args: argparse.Namespace) -> tuple[float, float]:
    from rocksdict import Rdict, WriteBatch, WriteOptions

    where = tempfile.mkdtemp(prefix="rocks-write-")
    try:
        db = Rdict(str(Path(where) / "db"), options=options())
        wo = WriteOptions()
        wo.disable_wal = True  # type: ignore[method-assign, assignment]
        value = os.urandom(args.value_bytes)
        keys = [b"3/r/QR20250329%010d" % i for i in range(args.universe)]
        rnd = random.Random(1)
        picks = [rnd.sample(keys, args.per) for _ in range(args.batches)]
        in_write = 0.0
        cpu0 = time.process_time()
        for chosen in picks:
            wb = WriteBatch(raw_mode=True)
            put = wb.put
            for k in chosen:
                put(k, value)
            t = time.perf_counter()
            db.write(wb, wo)
            in_write += time.perf_counter() - t
        db.close()  # (flushes: the flush threads' work is in the CPU figure)
        cpu = time.process_time() - cpu0
        n = args.batches * args.per
        return in_write / n * 1e6, cpu / n * 1e6
    finally:
        shutil.rmtree(where, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--per", type=int, default=1000, help="changed references per commit")
    ap.add_argument("--value-bytes", type=int, default=900)
    ap.add_argument("--universe", type=int, default=200_000, help="distinct references")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--write-buffer-mb",
        type=int,
        nargs=2,
        metavar=("A", "B"),
        help="compare the worker's memtable with a write buffer of A MiB and of B MiB (its memory bound)",
    )
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    contenders: list[tuple[str, Callable[[], Any]]] = [("skip list", skip_list), ("vector (worker)", rocks_options)]
    if args.write_buffer_mb:
        contenders = [(f"vector, {mb} MiB", _sized(mb)) for mb in args.write_buffer_mb]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _o in contenders}
    for _ in range(args.rounds):
        for name, options in contenders:
            results[name].append(one_run(options, args))
    med = {}
    for name, runs in results.items():
        w, c = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        med[name] = (w, c)
        print(
            f"{name}: in db.write {w:.2f} us/key, process CPU {c:.2f} us/key "
            f"(rounds: {', '.join(f'{a:.2f}/{b:.2f}' for a, b in runs)})"
        )
    (a, (sw, sc)), (b, (vw, vc)) = med.items()
    print(f"{b} / {a}: in db.write {vw / sw:.2f}, process CPU {vc / sc:.2f}")
    return 0


def _sized(mb: int) -> Callable[[], Any]:
    def options() -> Any:
        o = rocks_options()
        o.set_write_buffer_size(mb * 1024 * 1024)
        return o

    return options


if __name__ == "__main__":
    raise SystemExit(main())
