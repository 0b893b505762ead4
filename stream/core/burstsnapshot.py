"""The burst detector's snapshot as bytes: its state (`BurstDetector.snapshot`, versioned JSON)
and the offset of the first signal report it does not cover, zlib-compressed. The live shell
keeps the latest one on a compacted topic and `qris-guard warmup` writes one from history, so a
takeover restores it and reads only the signals after it. With refund holds on it also holds
the hold tally (`holdtally`: pending incident alerts and the hold events they will count).
Imports nothing outside the core.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, fields
from itertools import accumulate, islice
from typing import Any, NamedTuple

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
    the whole snapshot's at once, with its index last (`INDEX_KEY`).

    >>> det = BurstDetector(1)
    >>> text = zlib.decompress(b"".join(encode_pieces(det, 7)))
    >>> value = codec.loads(text)
    >>> value.pop(INDEX_KEY)
    [[['detector', 'scopes'], [149, 149]], [['detector', 'merchant_volume'], [247, 247]]]
    >>> text[149 - 1 : 149 + 1], value == {"signals_offset": 7, "detector": det.snapshot()}
    (b'[]', True)
    """
    value: dict[str, Any] = {"signals_offset": signals_offset, "detector": detector.snapshot(lazily=True)}
    if tally is not None:
        value["hold_tally"] = tally.to_state(lazily=True)
    index: list[list[Any]] = []
    value[INDEX_KEY] = _Deferred(lambda: index)
    # Level 1: the live detector writes one every `snapshot_every` reports, on the worker that
    # owns the signals partition (in a backlog, several a second). Level 6 was 4.8% of that
    # worker's CPU in a two-worker backlog (py-spy); on the mixed day's detector 4.5 ms against
    # 1.1 ms at level 1, for 54 KB instead of 46 KB (207 KB of JSON). Any level decodes alike.
    compressor = zlib.compressobj(1)
    held: list[bytes] = []
    size = at = 0
    cuts: list[int] = []
    for text in _json_pieces(value, _CUTS):
        if type(text) is _Mark:
            if text.kind == _OPEN_KIND:
                cuts = [at]
                index.append([list(text.path), cuts])
            elif text.kind == _CLOSE_KIND:
                if at > cuts[-1] or len(cuts) == 1:
                    cuts.append(at)
            elif at - cuts[-1] >= INDEX_BYTES:
                cuts.append(at)
            continue
        assert type(text) is bytes
        held.append(text)
        size += len(text)
        at += len(text)
        if size >= PIECE_BYTES:
            yield compressor.compress(b"".join(held))
            held, size = [], 0
    yield compressor.compress(b"".join(held)) + compressor.flush()


def _json_pieces(value: Any, cuts: dict[Any, Any] | None, path: tuple[str | int, ...] = ()) -> Iterator[bytes | _Mark]:
    """`codec.dumps(value)` in pieces, cut where `cuts` says (an iterator is a JSON array), with
    marks around and between the batches of each part cut item by item (`_Mark`: not JSON)."""
    if isinstance(value, _Deferred):
        yield codec.dumps(value())
        return
    if cuts is None and not isinstance(value, Iterator):
        yield codec.dumps(value)
        return
    cuts = cuts or {}
    if cuts == {EVERY: None}:
        # Each item whole: a few dozen at a time, the brackets of their array or object cut off.
        items = iter(value.items() if isinstance(value, dict) else value)
        yield b"{" if isinstance(value, dict) else b"["
        yield _Mark(_OPEN_KIND, path)
        first = True
        while batch := list(islice(items, _BATCH)):
            text = codec.dumps(dict(batch) if isinstance(value, dict) else batch)[1:-1]
            yield text if first else b"," + text
            first = False
            yield _BETWEEN
        yield _CLOSE
        yield b"}" if isinstance(value, dict) else b"]"
        return
    if isinstance(value, dict):
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b"," if i else b"") + codec.dumps(key) + b":"
            yield from _json_pieces(item, cuts.get(key, cuts.get(EVERY)), (*path, key))
        yield b"}"
        return
    yield b"["
    for i, item in enumerate(value):
        if i:
            yield b","
        yield from _json_pieces(item, cuts.get(i, cuts.get(EVERY)), (*path, i))
    yield b"]"


# The index of a snapshot's JSON: its last key, written once the rest is, says where the parts
# cut item by item lie in the text: per part its path from the top and the offsets that cut it,
# the first just after its opening bracket, the last at its closing one, one between batches of
# items at least `INDEX_BYTES` apart. `decode_steps` parses the rest with those parts left
# empty, then each part a cut at a time: orjson reads whole documents only, and the whole of a
# tally of 50,000 holds is about 100 ms of one step. A reader without it (`decode`, a previous
# release) parses the whole and ignores the key. Inside a JSON string every quote is escaped, so
# the tag below is found only as a key.
INDEX_KEY = "json_pieces"
_INDEX_TAG = b',"json_pieces":'
INDEX_BYTES = 64 * 1024

_OPEN_KIND, _BETWEEN_KIND, _CLOSE_KIND = 0, 1, 2


class _Mark(NamedTuple):
    kind: int
    path: tuple[str | int, ...] = ()


_BETWEEN = _Mark(_BETWEEN_KIND)
_CLOSE = _Mark(_CLOSE_KIND)


class _Deferred:
    """A value computed when `_json_pieces` reaches it (the index, once the rest is written)."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute = compute

    def __call__(self) -> Any:
        return self.compute()


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
    `holdtally.RESTORE_ROWS` of the tally's rows, or frees as many of their parsed rows, or
    parses a cut of the JSON (`INDEX_KEY`; about `INDEX_BYTES`). A snapshot without an index
    (written by a previous release) is parsed in one step, as `decode` parses it (orjson reads
    whole documents only): at the detector's scope bound 120-200 ms of CPU for 25-29 MB of JSON.
    The snapshot is the caller's only when whole, and equal to `decode`'s.

    >>> det = BurstDetector(1)
    >>> snap = run_to_end(decode_steps(encode(det, 7)))
    >>> snap.signals_offset, snap.detector.snapshot() == det.snapshot()
    (7, True)
    """
    pieces: list[bytes] = []
    yield from _decompressed(raw, pieces)
    text = _Text(pieces)
    del pieces[:]  # (the text holds them, and only until parsed: one copy of the JSON at a time)
    at = text.rfind_tag()
    parts = _indexed_parts(text, at)
    value: Any = None
    if parts is not None:
        rest = _without_parts(text, parts, at)
        value = codec.loads(rest)
        if not _fits(value, rest, parts):
            # Valid JSON, but not as this code writes it (keys twice, parts elsewhere than the
            # index says): parsed whole, as `decode` parses it.
            parts = value = None
        del rest
        yield
    if parts is None:
        whole = text.whole()
        del text
        value = codec.loads(whole)
        del whole
    else:
        for node, cuts in _part_nodes(value, text, parts):
            yield from _parsed_into(node, text, cuts)
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


class _Text:
    """The snapshot's JSON as the pieces it was inflated in, sliced without joining the whole (a
    join of 43 MB at the detector's scope bound took 25 ms, a step of its own): a slice copies
    the pieces it spans."""

    __slots__ = ("pieces", "starts", "size")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [piece for piece in pieces if piece]
        self.starts = list(accumulate((len(piece) for piece in self.pieces[:-1]), initial=0))
        self.size = sum(map(len, self.pieces))

    def __getitem__(self, where: slice) -> bytes:
        a, b = max(where.start, 0), min(where.stop, self.size)
        out: list[bytes] = []
        i = bisect_right(self.starts, a) - 1
        while a < b:
            start, piece = self.starts[i], self.pieces[i]
            out.append(piece[a - start : b - start])
            a = start + len(piece)
            i += 1
        return b"".join(out)

    def rfind_tag(self) -> int:
        """Where the index's key starts (its last `_INDEX_TAG`), or -1. Sought at the end first:
        the index is the last key, a few KB."""
        span = 64 * 1024
        while True:
            lo = max(0, self.size - span)
            at = self[lo : self.size].rfind(_INDEX_TAG)
            if at >= 0 or lo == 0:
                return at if at < 0 else lo + at
            span *= 8

    def whole(self) -> bytes:
        return b"".join(self.pieces)


def _indexed_parts(text: _Text, at: int) -> list[tuple[list[str | int], list[int]]] | None:
    """The index at the end of a snapshot's JSON (`INDEX_KEY`, whose key starts at `at`:
    `_Text.rfind_tag`), checked against the text: its parts in order, apart, inside the text
    before the index, each between brackets. None when there is no index or it does not fit the
    text (then the whole is parsed, as `decode` does, and the index is ignored there)."""
    if at < 0 or text[text.size - 1 : text.size] != b"}":
        return None
    try:
        index = codec.loads(text[at + len(_INDEX_TAG) : text.size - 1])
    except codec.JSONDecodeError:
        return None
    if type(index) is not list:
        return None
    parts: list[tuple[list[str | int], list[int]]] = []
    end = 0
    for part in index:
        if type(part) is not list or len(part) != 2:
            return None
        path, cuts = part
        if (
            type(path) is not list
            or not path
            or not all(type(k) is str or type(k) is int for k in path)
            or type(cuts) is not list
            or len(cuts) < 2
            or not all(type(c) is int for c in cuts)
            or cuts[0] <= end
            or cuts[-1] >= at
            or any(b < a for a, b in zip(cuts, cuts[1:], strict=False))
            or text[cuts[0] - 1 : cuts[0]] + text[cuts[-1] : cuts[-1] + 1] not in (b"[]", b"{}")
        ):
            return None
        end = cuts[-1]
        parts.append((path, cuts))
    return parts


def _without_parts(text: _Text, parts: list[tuple[list[str | int], list[int]]], at: int) -> bytes:
    # The JSON with each indexed part empty and without the index (its key at `at`): the key
    # before it is the last, and the object closes after it.
    kept, start = [], 0
    for _path, cuts in parts:
        kept.append(text[start : cuts[0]])
        start = cuts[-1]
    kept.append(text[start:at])
    kept.append(b"}")
    return b"".join(kept)


def _fits(value: Any, rest: bytes, parts: list[tuple[list[str | int], list[int]]]) -> bool:
    """Whether `rest` is the JSON `encode_pieces` writes of `value` and the index's parts are the
    ones it marks, in its order and at its offsets: only then does the rest with each part parsed
    into it equal the whole `decode` parses (a path or a duplicate key alone would move items
    between two parts of the same form, such as two incidents' events)."""
    written: list[bytes] = []
    marked: list[tuple[list[str | int], int]] = []
    at = 0
    try:
        for piece in _json_pieces(value, _CUTS):
            if type(piece) is _Mark:
                if piece.kind == _OPEN_KIND:
                    marked.append((list(piece.path), at))
                continue
            assert type(piece) is bytes
            written.append(piece)
            at += len(piece)
    except TypeError:  # (a part where this code writes none, or the encoder's refusal)
        return False
    removed, indexed = 0, []
    for path, cuts in parts:
        indexed.append((path, cuts[0] - removed))
        removed += cuts[-1] - cuts[0]
    return indexed == marked and b"".join(written) == rest


def _part_nodes(
    value: Any, text: _Text, parts: list[tuple[list[str | int], list[int]]]
) -> Iterator[tuple[list[Any] | dict[str, Any], list[int]]]:
    # Each indexed part's empty array or object in the parsed rest, with its cuts.
    for path, cuts in parts:
        node = value
        try:
            for key in path:
                node = node[key]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"burst detector snapshot's index names no part at {path!r}") from None
        is_list = text[cuts[0] - 1 : cuts[0]] == b"["
        if (type(node) is not list if is_list else type(node) is not dict) or node:
            raise ValueError(f"burst detector snapshot's index does not fit its part at {path!r}")
        yield node, cuts


def _parsed_into(node: list[Any] | dict[str, Any], text: _Text, cuts: list[int]) -> Generator[None, None, None]:
    """The items of an indexed part parsed into its empty array or object, a cut a step: each
    cut after items starts with the comma between two items, and parses as items whole."""
    opening, closing = (b"[", b"]") if type(node) is list else (b"{", b"}")
    for a, b in zip(cuts, cuts[1:], strict=False):
        if a == b:
            continue
        # (After none, a cut that starts with a comma is not JSON as a whole: `decode` refuses it.)
        if node and text[a : a + 1] != b",":
            raise ValueError("burst detector snapshot's index cuts an item")
        items = codec.loads(opening + text[a + (1 if node else 0) : b] + closing)
        if isinstance(node, list):
            node.extend(items)
        else:
            node.update(items)
        yield


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
