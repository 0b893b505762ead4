"""The burst detector's snapshot as bytes: its state (`BurstDetector.snapshot`, versioned JSON)
and the offset of the first signal report it does not cover, zlib-compressed. The live shell
keeps the latest one on a compacted topic and `qris-guard warmup` writes one from history, so a
takeover restores it and reads only the signals after it. With refund holds on it also holds
the hold tally (`holdtally`: pending incident alerts and the hold events they will count).
Imports nothing outside the core.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, fields
from itertools import islice
from typing import Any

from . import codec
from .burst import RESTORE_MERCHANTS, RESTORE_SCOPES, BurstDetector, BurstParams
from .holdtally import RESTORE_ROWS, HoldTally
from .steps import run_to_end

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
    """The snapshot in `raw`, at once; `ValueError` when it is not one this code can restore."""
    try:
        value = codec.loads(zlib.decompress(raw))
    except zlib.error as exc:
        raise ValueError(f"not a burst detector snapshot: {exc}") from None
    return run_to_end(_restored(value, params))


def decode_steps(raw: bytes, params: BurstParams | None = None) -> Generator[None, None, DetectorSnapshot]:
    """`decode` in steps (the generator's value, once it stops, is the snapshot), so that the
    live shell can give the event loop back between them: decoding a tally of 50,000 holds
    (14 MB of JSON) at once takes 0.26-0.57 s, while the worker's other partitions wait.
    A step inflates `DECOMPRESS_BYTES` of the snapshot, or rebuilds `burst.RESTORE_SCOPES` of the
    detector's scopes, `burst.RESTORE_MERCHANTS` of its merchants' volumes or
    `holdtally.RESTORE_ROWS` of the tally's rows, or frees as many of their parsed rows. The
    JSON is parsed in one step, by orjson as `decode` parses it (it reads whole documents only):
    about a quarter of the time, the rebuild most of the rest; at the detector's scope bound
    about half, 120-200 ms of CPU for 25-29 MB of JSON, the longest step. The snapshot is the
    caller's only when whole, and equal to `decode`'s.

    >>> det = BurstDetector(1)
    >>> snap = run_to_end(decode_steps(encode(det, 7)))
    >>> snap.signals_offset, snap.detector.snapshot() == det.snapshot()
    (7, True)
    """
    pieces: list[bytes] = []
    yield from _decompressed(raw, pieces)
    # (The pieces freed before the parse, the joined text after it: one copy of the JSON at a
    # time, as `decode` holds.)
    text = b"".join(pieces)
    pieces.clear()
    value = codec.loads(text)
    del text
    yield
    snap = yield from _restored(value, params)
    # Freed a batch of rows at a time too (the parsed rows of 50,000 holds take 20 ms to free
    # at once, 1,000 scopes' 6-8 ms): only the lists that the restore reads row by row and keeps
    # none of.
    for rows, batch in _row_lists(value):
        while rows:
            del rows[-batch:]
            yield
    return snap


def _restored(value: Any, params: BurstParams | None) -> Generator[None, None, DetectorSnapshot]:
    if not isinstance(value, dict) or "detector" not in value:
        raise ValueError("not a burst detector snapshot")
    offset = value.get("signals_offset")
    try:
        detector = yield from BurstDetector.restore_steps(value["detector"], params)
        tally = None
        if value.get("hold_tally") is not None:
            tally = yield from HoldTally.from_state_steps(value["hold_tally"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"burst detector snapshot is incomplete: {exc!r}") from None
    return DetectorSnapshot(detector, None if offset is None else int(offset), tally)


def _row_lists(value: dict[str, Any]) -> Iterator[tuple[list[Any], int]]:
    # (`restore_steps` and `from_state_steps` keep no reference to these lists, only to their
    # rows' parts: emptying them changes nothing restored. The merge's parts, for one, are
    # kept.) Each with the rows freed in one step: as many as are rebuilt in one.
    detector, tally = value["detector"], value.get("hold_tally")
    for rows, batch in ((detector["scopes"], RESTORE_SCOPES), (detector["merchant_volume"], RESTORE_MERCHANTS)):
        if isinstance(rows, list):
            yield rows, batch
    if isinstance(tally, dict):
        for rows in (*tally["events"].values(), tally.get("held")):
            if isinstance(rows, list):
                yield rows, RESTORE_ROWS


# Compressed bytes inflated in one step of `decode_steps` (about 0.2 MB of JSON, 1 ms).
DECOMPRESS_BYTES = 64 * 1024


def _decompressed(raw: bytes, pieces: list[bytes]) -> Generator[None, None, None]:
    """The snapshot's JSON into `pieces`, `DECOMPRESS_BYTES` of `raw` a step."""
    inflater = zlib.decompressobj()
    try:
        for at in range(0, len(raw), DECOMPRESS_BYTES):
            pieces.append(inflater.decompress(raw[at : at + DECOMPRESS_BYTES]))
            yield
        pieces.append(inflater.flush())
    except zlib.error as exc:
        raise ValueError(f"not a burst detector snapshot: {exc}") from None
    if not inflater.eof:  # (as `zlib.decompress` says of a stream cut short)
        raise ValueError("not a burst detector snapshot: incomplete or truncated stream")
