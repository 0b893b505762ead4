"""Bytes of saved state per open reference (not a test): what the live worker writes to its
RocksDB store and changelog for each reference it keeps.

    python bench/state_size.py --in day.jsonl [--records 200000]

Feeds a replay file to persistent engines (as the live worker does, holds off: no incidents
are known offline without the detector), then saves every reference the engines hold
(`PartitionEngine.save_reference`, the exact bytes the worker writes) and reports the mean, the
99th percentile and the largest entry, and the partitions' metadata entries.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.core.partition import Params, PartitionEngine  # noqa: E402
from stream.core.records import Stream  # noqa: E402
from stream.drivers.replayfile import read_records  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="input", required=True, type=Path)
    ap.add_argument("--records", type=int, default=0, help="stop after this many records (0: all)")
    args = ap.parse_args()
    params = replace(Params(), max_hold_ms=0)
    engines: dict[int, PartitionEngine] = {}
    next_offset: dict[tuple[int, int], int] = {}
    n = 0
    with open(args.input, "rb") as fh:
        for rec in read_records(fh):
            stream = Stream.P if rec.topic == params.payment_topic else Stream.L
            eng = engines.get(rec.partition)
            if eng is None:
                eng = engines[rec.partition] = PartitionEngine(rec.partition, params)
            # The live core takes each stream in increasing offsets (the shell's boundary).
            k = (rec.partition, int(stream))
            offset = max(rec.offset, next_offset.get(k, 0))
            next_offset[k] = offset + 1
            eng.on_record(stream, offset, rec.key, rec.value, rec.timestamp_ms)
            n += 1
            if args.records and n >= args.records:
                break
    sizes: list[int] = []
    pending = 0
    for eng in engines.values():
        for ref in set(eng.refs) | set(eng.pending):
            saved = eng.save_reference(ref)
            if saved is not None:
                sizes.append(len(saved))
        pending += sum(len(v) for v in eng.pending.values())
    sizes.sort()
    meta = [len(eng.save_meta()) for eng in engines.values()]
    print(f"input: {args.input.name}, {n} records, {len(engines)} partitions")
    print(
        f"open references: {len(sizes)} ({pending} records still waiting for the watermark among them); "
        f"saved bytes per reference: mean {sum(sizes) / len(sizes):.0f}, "
        f"p99 {sizes[int(len(sizes) * 0.99)]}, max {sizes[-1]}"
    )
    print(f"partition metadata entries: {meta} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
