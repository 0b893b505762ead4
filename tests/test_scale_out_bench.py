"""The scale-out bench's reading of a worker's `/qris/stats` (bench/scale_out.py): how far its
slowest partition's watermark is past the incidents known. Fast tier: no broker."""

from __future__ import annotations

from typing import Any

from bench.scale_out import incidents_lag_s
from stream.core.partition import NEG_INF


def page(known: int | None, *watermarks: int | None) -> dict[str, Any]:
    return {
        "incidents_known_through_ms": known,
        "partitions": {str(p): {"watermark_ms": w} for p, w in enumerate(watermarks)},
    }


def test_the_lag_is_the_slowest_partition_past_the_incidents_known() -> None:
    assert incidents_lag_s(page(60_000, 180_000, 90_000, 125_500)) == 30.0
    # Partitions without a watermark yet (one stream only) are left out.
    assert incidents_lag_s(page(60_000, NEG_INF, None, 75_000)) == 15.0
    # Incidents ahead of every partition: a negative lag (nothing waits for them).
    assert incidents_lag_s(page(100_000, 40_000)) == -60.0


def test_no_lag_before_both_are_known() -> None:
    assert incidents_lag_s(page(None, 90_000)) is None
    assert incidents_lag_s(page(NEG_INF, 90_000)) is None
    assert incidents_lag_s(page(60_000, NEG_INF, None)) is None
    assert incidents_lag_s({"incidents_known_through_ms": 60_000}) is None
