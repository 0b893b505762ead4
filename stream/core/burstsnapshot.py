"""The burst detector's snapshot as bytes: its state (`BurstDetector.snapshot`, versioned JSON)
and the offset of the first signal report it does not cover, zlib-compressed. The live shell
keeps the latest one on a compacted topic and `qris-guard warmup` writes one from history, so a
takeover restores it and reads only the signals after it. With refund holds on it also holds
the hold tally (`holdtally`: pending incident alerts and the hold events they will count).
Imports nothing outside the core.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from . import codec
from .burst import BurstDetector, BurstParams
from .holdtally import HoldTally

SNAPSHOT_KEY = b"burst-detector"


@dataclass(frozen=True, slots=True)
class DetectorSnapshot:
    detector: BurstDetector
    # Offset in the signals topic of the first report the state does not hold (the reports
    # before it are in the state); None for a state built from a replay file.
    signals_offset: int | None
    # Holds on: the tally of the incidents' holds; None in a snapshot written without one.
    tally: HoldTally | None = None


def encode(detector: BurstDetector, signals_offset: int | None, tally: HoldTally | None = None) -> bytes:
    """The snapshot record's value."""
    value = {"signals_offset": signals_offset, "detector": detector.snapshot()}
    if tally is not None:
        value["hold_tally"] = tally.to_state()
    # Level 1: the live detector writes one every `snapshot_every` reports, on the worker that
    # owns the signals partition (in a backlog, several a second). Level 6 was 4.8% of that
    # worker's CPU in a two-worker backlog (py-spy); on the mixed day's detector 4.5 ms against
    # 1.1 ms at level 1, for 54 KB instead of 46 KB (207 KB of JSON). Any level decodes alike.
    return zlib.compress(codec.dumps(value), 1)


def decode(raw: bytes, params: BurstParams | None = None) -> DetectorSnapshot:
    """The snapshot in `raw`; `ValueError` when it is not one this code can restore."""
    try:
        value = codec.loads(zlib.decompress(raw))
    except zlib.error as exc:
        raise ValueError(f"not a burst detector snapshot: {exc}") from None
    if not isinstance(value, dict) or "detector" not in value:
        raise ValueError("not a burst detector snapshot")
    offset = value.get("signals_offset")
    try:
        detector = BurstDetector.restore(value["detector"], params)
        tally = HoldTally.from_state(value["hold_tally"]) if value.get("hold_tally") is not None else None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"burst detector snapshot is incomplete: {exc!r}") from None
    return DetectorSnapshot(detector, None if offset is None else int(offset), tally)
