"""What burst detection costs offline replay (not a test): the same records replayed side by
side in one process, with and without the partitions' burst signals and the detector.

    python bench/signals_cost.py --records 300000
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.core.partition import Params  # noqa: E402
from stream.drivers.replay import Replay  # noqa: E402
from stream.drivers.replayfile import KafkaRecord  # noqa: E402
from stream.simulate import generate  # noqa: E402


def replay_seconds(records: list[KafkaRecord], signals: bool) -> float:
    started = time.perf_counter()
    replay = Replay(Params(burst_signals=signals))
    for rec in records:
        replay.feed(rec)
    list(replay.drain())
    replay.bursts()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    payments = args.records // 3
    records = [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in generate("mixed", seed=11, start_ms=1743213600000, minutes=None, payments=payments, rate_per_min=600)
    ]
    print(f"# {len(records):,} mixed records, {platform.machine()}, Python {platform.python_version()}")
    ratios = []
    for n in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
        without = replay_seconds(records, False)
        with_ = replay_seconds(records, True)
        ratios.append(with_ / without)
        print(f"round {n + 1}: without {len(records) / without:,.0f} records/s, with {len(records) / with_:,.0f}")
    print(f"with / without time: {min(ratios):.3f} .. {max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
