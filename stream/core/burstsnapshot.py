"""The burst detector's snapshot as bytes: its state (`BurstDetector.snapshot`, versioned JSON)
and the offset of the first signal report it does not cover, zlib-compressed. The live shell
keeps the latest one on a compacted topic and `qris-guard warmup` writes one from history, so a
takeover restores it and reads only the signals after it. With refund holds on it also holds
the hold tally (`holdtally`: pending incident alerts and the hold events they will count).
Imports nothing outside the core.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from itertools import islice
from typing import Any

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

    def __reduce__(self) -> tuple[type[DetectorSnapshot], tuple[Any, ...]]:
        # Rebuilt by its constructor when pickled: see `partition.Params.__reduce__`.
        return DetectorSnapshot, tuple(getattr(self, f.name) for f in fields(self))


# Where a snapshot's JSON is cut into pieces: the parts that grow with the state (the scopes,
# the merchants, the scopes of a pending minute, the parts of a report taken so far; the tally's
# events of each incident, its holds, its pending alerts and finished incidents). A key, an
# item's index, or `EVERY` for each key or item; None: that part whole.
EVERY = "*"
_CUTS: dict[Any, Any] = {
    "detector": {
        "scopes": {EVERY: None},
        "merchant_volume": {EVERY: None},
        "merge": {"pending": {EVERY: {1: {EVERY: None}}}, "parts": {EVERY: {4: {EVERY: {1: {EVERY: None}}}}}},
    },
    "hold_tally": {
        "events": {EVERY: {EVERY: None}},
        "held": {EVERY: None},
        "pending": {EVERY: None},
        "finished": {EVERY: None},
    },
}
# JSON compressed at once, at least this much (bar the last piece) and at most this much and
# one batch of `_BATCH` parts (scopes, merchants, scope-minutes).
PIECE_BYTES = 256 * 1024
_BATCH = 32


def encode(detector: BurstDetector, signals_offset: int | None, tally: HoldTally | None = None) -> bytes:
    """The snapshot record's value."""
    return b"".join(encode_pieces(detector, signals_offset, tally))


def encode_pieces(
    detector: BurstDetector, signals_offset: int | None, tally: HoldTally | None = None
) -> Iterator[bytes]:
    """The snapshot record's value in pieces (joined, `encode`'s bytes): the JSON of the
    snapshot, built and compressed about `PIECE_BYTES` at a time, so that the live shell can
    give the event loop back between pieces (a detector at its scope bound took 0.5-1 s to
    encode at once, a tally of 50,000 holds 0.2-0.5 s). The detector and the tally must not
    change until the last piece: the shell holds the detector's lock. The JSON is the same as
    the whole snapshot's at once.

    >>> det = BurstDetector(1)
    >>> whole = codec.dumps({"signals_offset": 7, "detector": det.snapshot()})
    >>> b"".join(encode_pieces(det, 7)) == zlib.compress(whole, 1)
    True
    """
    value: dict[str, Any] = {"signals_offset": signals_offset, "detector": detector.snapshot(lazily=True)}
    if tally is not None:
        value["hold_tally"] = tally.to_state(lazily=True)
    # Level 1: the live detector writes one every `snapshot_every` reports, on the worker that
    # owns the signals partition (in a backlog, several a second). Level 6 was 4.8% of that
    # worker's CPU in a two-worker backlog (py-spy); on the mixed day's detector 4.5 ms against
    # 1.1 ms at level 1, for 54 KB instead of 46 KB (207 KB of JSON). Any level decodes alike.
    compressor = zlib.compressobj(1)
    held: list[bytes] = []
    size = 0
    for text in _json_pieces(value, _CUTS):
        held.append(text)
        size += len(text)
        if size >= PIECE_BYTES:
            yield compressor.compress(b"".join(held))
            held, size = [], 0
    yield compressor.compress(b"".join(held)) + compressor.flush()


def _json_pieces(value: Any, cuts: dict[Any, Any] | None) -> Iterator[bytes]:
    """`codec.dumps(value)` in pieces, cut where `cuts` says (an iterator is a JSON array)."""
    if cuts is None and not isinstance(value, Iterator):
        yield codec.dumps(value)
        return
    cuts = cuts or {}
    if cuts == {EVERY: None}:
        # Each item whole: a few dozen at a time, the brackets of their array or object cut off.
        items = iter(value.items() if isinstance(value, dict) else value)
        yield b"{" if isinstance(value, dict) else b"["
        first = True
        while batch := list(islice(items, _BATCH)):
            text = codec.dumps(dict(batch) if isinstance(value, dict) else batch)[1:-1]
            yield text if first else b"," + text
            first = False
        yield b"}" if isinstance(value, dict) else b"]"
        return
    if isinstance(value, dict):
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b"," if i else b"") + codec.dumps(key) + b":"
            yield from _json_pieces(item, cuts.get(key, cuts.get(EVERY)))
        yield b"}"
        return
    yield b"["
    for i, item in enumerate(value):
        if i:
            yield b","
        yield from _json_pieces(item, cuts.get(i, cuts.get(EVERY)))
    yield b"]"


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
