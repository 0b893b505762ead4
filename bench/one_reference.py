"""CPU of one reference's records taken one stream first (not a test): N `failed` payments of
one reference, then N debits of it, through one persistent engine (the core alone), as a
producer's retry storm or a hostile producer sends them. Linear since stop 26; a list's
`remove` of each waiting record made it quadratic (20,000 of each: 4 s).

    python bench/one_reference.py 5000 10000 20000 40000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.core.partition import Params, PartitionEngine  # noqa: E402
from stream.core.records import Stream  # noqa: E402
from tests.records import ledger, payment  # noqa: E402


def run(n: int) -> tuple[float, float]:
    eng = PartitionEngine(0, Params())
    t0 = time.process_time()
    for i in range(n):
        eng.on_record(Stream.P, i, b"R", payment(f"p{i}", "failed", "R", i * 0.001))
    t1 = time.process_time()
    for i in range(n):
        eng.on_record(Stream.L, i, b"R", ledger(f"l{i}", "debited", "R", i * 0.001))
    # A later record on each stream moves the watermark past all of them: they are decided.
    eng.on_record(Stream.P, n, b"Z", payment("pz", "failed", "Z", 1000))
    eng.on_record(Stream.L, n, b"Z", ledger("lz", "debited", "Z", 1000))
    return t1 - t0, time.process_time() - t1


def main() -> int:
    for arg in sys.argv[1:] or ["5000", "10000", "20000"]:
        n = int(arg)
        payments_s, rest_s = run(n)
        print(f"N={n:,}: {payments_s:.2f} s CPU for the payments, {rest_s:.2f} s for the debits and the decisions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
