"""How long the collection after a rebalance holds the process with a large state (not a test).

    python bench/rebalance_collection.py --in mixed.jsonl --copies 1 4

The worker freezes what survives its young collections and, once a rebalance's restore is
done, unfreezes, collects in full and freezes again (`app.reclaim_frozen_cycles`): a pause of
the whole process that grows with the objects it holds. Here the replay file's records are fed
to partition engines without a drain, `--copies` times over (each copy on partitions of its
own), so the references stay in state as on a worker holding that load; then the collector is
installed as the worker installs it, and `reclaim_frozen_cycles` is run `--rounds` times. Printed
per copy count: references in state, objects the collector tracks, peak RSS, and the seconds
each reclaim held the process.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.core.partition import Params, PartitionEngine  # noqa: E402
from stream.core.records import Stream  # noqa: E402
from stream.drivers.replayfile import ReplayFile  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.worker.app import reclaim_frozen_cycles, young_collections_freeze_survivors  # noqa: E402


def fill(path: str, copies: int) -> dict[int, PartitionEngine]:
    """The file's records in engines, `copies` times over, nothing drained."""
    settings = Settings()
    params = Params()
    engines: dict[int, PartitionEngine] = {}
    stride = 1 + max((p for _t, p, *_rest in ReplayFile(path).fields()), default=0)
    for copy in range(copies):
        for topic, part, offset, ts, key, value in ReplayFile(path).fields():
            if topic == settings.payment_topic:
                stream = Stream.P
            elif topic == settings.ledger_topic:
                stream = Stream.L
            else:
                continue
            p = copy * stride + part
            eng = engines.get(p)
            if eng is None:
                eng = engines[p] = PartitionEngine(p, params)
            eng.on_record(stream, offset, key, value, ts)
    return engines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="path", required=True, help="a replay file (`simulate --out`, `dump`)")
    ap.add_argument("--copies", type=int, nargs="+", default=[1], help="the file fed this many times over")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.python_version()}")
    young_collections_freeze_survivors()
    for copies in args.copies:
        started = time.perf_counter()
        engines = fill(args.path, copies)
        refs = sum(len(e.refs) for e in engines.values())
        fed_s = time.perf_counter() - started
        gc.collect()
        gc.freeze()
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"copies {copies}: fed in {fed_s:.1f} s, {refs:,} references in state, "
            f"{gc.get_freeze_count():,} objects frozen, peak RSS {rss_mib:,.0f} MiB"
        )
        for i in range(args.rounds):
            done = reclaim_frozen_cycles()
            assert done is not None, "the worker's collector is not installed"
            print(f"  reclaim {i + 1}: held the process {done.seconds:.3f} s, {done.unreachable} unreachable")
        del engines
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
