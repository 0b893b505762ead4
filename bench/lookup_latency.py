"""Customer-service lookup latency on two live workers (not a test): the 60 references of
tests/scenario.py looked up 5 times each on one worker, answered there or forwarded to the
owner, and the time of a /metrics scrape. Needs the broker (QRIS_BOOTSTRAP).

    python bench/lookup_latency.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.kafka_support import Worker, fresh_topics, produce, require_broker  # noqa: E402
from tests.scenario import LEDGER, PAYMENT, scenario_records  # noqa: E402

TOKEN = "bench-token"


def _quantile(xs: list[float], p: float) -> float:
    return sorted(xs)[int(p * (len(xs) - 1))]


def _ready(a: Worker, b: Worker, n: int) -> bool:
    try:
        sa, sb = a.stats(), b.stats()
    except OSError:
        return False
    return bool(sa["counts"]["records"] + sb["counts"]["records"] >= n and sa["partitions"] and sb["partitions"])


def main() -> None:
    bootstrap = require_broker()
    topics = fresh_topics(4)
    topics.create(bootstrap)
    data = Path(tempfile.mkdtemp())
    env = {"QRIS_API_TOKEN": TOKEN}
    a = Worker(topics, data / "a", extra_env=env)
    b = Worker(topics, data / "b", extra_env=env)
    b.app_id = a.app_id
    a.start(bootstrap)
    b.start(bootstrap)
    records = scenario_records(4)
    produce(bootstrap, records, {PAYMENT: topics.payment, LEDGER: topics.ledger})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _ready(a, b, len(records)):
            time.sleep(0.5)
        owned = {int(p) for p in a.stats()["partitions"]}
        local: list[float] = []
        forwarded: list[float] = []
        for _round in range(5):
            for i in range(60):
                url = f"http://127.0.0.1:{a.web_port}/qris/payments/QR{i:04d}"
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
                t0 = time.perf_counter()
                body = json.loads(urllib.request.urlopen(req).read())
                took_ms = (time.perf_counter() - t0) * 1000
                (local if body["partition"] in owned else forwarded).append(took_ms)
        for name, xs in (("answered here", local), ("forwarded", forwarded)):
            print(f"{name}: n={len(xs)} median {statistics.median(xs):.1f} ms p95 {_quantile(xs, 0.95):.1f} ms")
        t0 = time.perf_counter()
        for _ in range(50):
            urllib.request.urlopen(f"http://127.0.0.1:{a.web_port}/metrics").read()
        print(f"/metrics scrape: {(time.perf_counter() - t0) / 50 * 1000:.1f} ms")
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
