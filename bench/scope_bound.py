"""Memory of the burst detector under many distinct scope ids (issue 8), not a test.

    python bench/scope_bound.py --payments 60000

The simulator's normal traffic, with every `requested` record given random switch, acquirer,
issuer and merchant ids and a random MCC (a hostile or broken producer), replayed through the
core; the partitions' closed minutes then go to the burst detector, once unbounded (the bounds
set out of reach, as before the bound existed) and once with the default bounds. tracemalloc
measures the detector's state at the end and the peak while it runs; the replay's engines and
kept signals are the same for both and measured once.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.core import codec  # noqa: E402
from stream.core.burst import BurstDetector, BurstParams  # noqa: E402
from stream.core.partition import Params  # noqa: E402
from stream.drivers.replay import Replay  # noqa: E402
from stream.drivers.replayfile import KafkaRecord  # noqa: E402
from stream.simulate import generate  # noqa: E402

TUESDAY_08_WIB_MS = 1742749200000 + 32 * 3600_000


def hostile_records(payments: int, seed: int) -> list[KafkaRecord]:
    rng = random.Random(seed)
    rate = 300.0
    out = []
    for r in generate("normal", seed=seed, start_ms=TUESDAY_08_WIB_MS, minutes=payments / rate, rate_per_min=rate):
        value = r.value
        if r.topic.endswith("payment-requests") and b'"requested"' in value:
            v = codec.loads(value)
            for field in ("switch_id", "acquirer_id", "issuer_id", "merchant_id"):
                v[field] = f"{field[:3].upper()}{rng.getrandbits(48):012x}"
            v["mcc"] = f"{rng.randrange(10_000):04d}"
            value = codec.dumps(v)
        out.append(
            KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, value)
        )
    return out


def detector_memory(signals: list[dict[str, Any]], partitions: set[int], params: BurstParams) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    det = BurstDetector(partitions, params)
    alerts = [d.value for s in signals for d in det.on_signals(s)]
    seconds = time.perf_counter() - started
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kinds: dict[str, int] = {}
    for a in alerts:
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    return {
        "state_mib": (current - base) / 2**20,
        "peak_mib": (peak - base) / 2**20,
        "seconds": seconds,
        "scopes": len(det.scopes),
        "merchants_tracked": len(det.merchant_volume),
        "alerts": kinds,
        "untracked_scope_minutes": det.stats["scope_minutes_untracked"],
        "det": det,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--payments", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args()
    records = hostile_records(args.payments, args.seed)
    gc.collect()
    tracemalloc.start()
    replay = Replay(Params())
    for rec in records:
        replay.feed(rec)
    list(replay.drain())
    gc.collect()
    replay_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    signals, partitions = replay.signals, set(replay.engines)
    print(
        f"# bench/scope_bound.py --payments {args.payments}: {len(records):,} records, random switch, acquirer, "
        f"issuer, merchant ids and MCC on every payment; replay engines and kept signals: {replay_mib:.0f} MiB"
    )
    print("\n| detector | state at the end | peak while running | scopes | merchants' volumes | alerts | seconds |")
    print("|---|---|---|---|---|---|---|")
    unbounded = BurstParams(max_scopes_per_type=10**9, max_merchants_tracked=10**9)
    for name, params in (("unbounded (as before)", unbounded), ("bounded (defaults)", BurstParams())):
        m = detector_memory(signals, partitions, params)
        m.pop("det")
        print(
            f"| {name} | {m['state_mib']:.1f} MiB | {m['peak_mib']:.1f} MiB | {m['scopes']:,} | "
            f"{m['merchants_tracked']:,} | {m['alerts']} | {m['seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
