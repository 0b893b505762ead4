"""What refund holds cost offline replay, and what they change (not a test): the simulator's
outage scenario replayed side by side in one process with holds off (`--max-hold-s 0`) and on
(H = 2 h, G = 15 min): records/s, clawbacks (cancellations) and rupiah, holds, the longest hold,
and whether every reference ends with the same active refund total.

    python bench/holds_cost.py --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.drivers.replay import replay  # noqa: E402
from stream.drivers.replayfile import KafkaRecord  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.simulate import generate  # noqa: E402


def run(records: list[KafkaRecord], max_hold_s: float) -> tuple[float, list[dict[str, Any]]]:
    params = Settings(max_hold_s=max_hold_s).params
    started = time.perf_counter()
    out = [d.value for _p, d in replay(records, params, drain=True) if d.role == "refunds"]
    return time.perf_counter() - started, out


def summary(refunds: list[dict[str, Any]]) -> dict[str, Any]:
    active: dict[str, dict[str, int]] = defaultdict(dict)
    cancels = [r for r in refunds if r["type"] == "refund.cancel_requested"]
    for r in refunds:
        if r["type"] == "refund.requested":
            active[r["reference"]][r["refund_id"]] = r["amount"]
        elif r["type"] == "refund.cancel_requested":
            active[r["reference"]].pop(r["refund_id"])
    held = {r["refund_id"] for r in refunds if r["type"] == "refund.held"}
    ended = {r["refund_id"]: r["hold"] for r in refunds if "hold" in r}
    return {
        "final_active": {ref: sum(a.values()) for ref, a in active.items() if a},
        "cancellations": len(cancels),
        "cancelled_idr": sum(r["amount"] for r in cancels),
        "held": len(held),
        "held_not_ended": len(held - set(ended)),
        "released_without_payment": sum(1 for r in refunds if r["type"] == "refund.hold_released"),
        "longest_hold_s": max((h["held_ms"] for h in ended.values()), default=0) / 1000,
        "past_release_by": sum(1 for h in ended.values() if h["held_until"] > h["release_by"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    records = [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in generate("outage", seed=args.seed, start_ms=1743213600000)
    ]
    print(f"# {len(records):,} outage records, {platform.machine()}, Python {platform.python_version()}")
    for n in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
        off_s, off = run(records, 0)
        on_s, on = run(records, 7200)
        print(
            f"round {n + 1}: holds off {len(records) / off_s:,.0f} records/s, "
            f"holds on {len(records) / on_s:,.0f} records/s (two passes)"
        )
    a, b = summary(off), summary(on)
    print(f"same final active refund total for every reference: {a['final_active'] == b['final_active']}")
    for key in ("cancellations", "cancelled_idr", "held", "held_not_ended", "released_without_payment"):
        print(f"{key}: off {a[key]:,}  on {b[key]:,}")
    print(f"longest hold: {b['longest_hold_s'] / 60:.1f} min; holds past release_by: {b['past_release_by']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
