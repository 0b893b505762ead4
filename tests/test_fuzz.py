"""Fuzz suite (fast tier): realistic traffic with hostile records mixed in, through replay.

A corpus of hostile kinds (wrong clocks far ahead, just over and just under F, far past; values
just under and over 64 KiB and of 1 MiB; deep JSON nesting; invalid UTF-8; control and bidi
characters in every identifier; over-long fields; duplicate JSON keys; keys that name another
reference; amount edge cases; tombstones) is placed by Hypothesis into generated traffic of two
partitions. Asserted: nothing raises; every record that breaks a rule is dead-lettered once, with
its reason and its original bytes (or their first 64 KiB, length and SHA-256); no valid record is
lost; decisions equal those of the same traffic without the bad records; and a record caught by
the clock guard decides exactly what the same record dated at its Kafka timestamp decides.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import codec
from stream.core.decisions import Decision
from stream.core.eventtime import format_ms, parse_ms
from stream.core.partition import Params
from stream.drivers.replay import Replay
from stream.drivers.replayfile import KafkaRecord
from tests.test_properties import partition_input

PARAMS = Params(timeout_ms=60_000, lateness_ms=10_000, retention_ms=10**9, clock_skew_ms=60_000)
TOPICS = ("qris.payment-requests", "qris.ledger-debits")
IDS_P = ("event_id", "reference", "account_id", "merchant_id", "acquirer_id", "issuer_id", "switch_id", "terminal_id")
IDS_L = ("event_id", "reference", "entry_id", "account_id")
BAD_CHARS = ["\x00", "\x1b", "\t", "\n", "\x7f", "\x85", "\x9b", "\u202a", "\u202e", "\u2066", "\u2069"]
BAD_AMOUNTS = [0, -1, 10**12 + 1, 1.0, 2.5e4, "25000", True, None, 2**64, [1], {"v": 1}]

# Hostile kinds that must be dead-lettered, and kinds that are valid (processed as usual).
INVALID = [
    "too_large",
    "one_mib",
    "deep",
    "not_utf8",
    "bad_char",
    "too_long",
    "bad_amount",
    "dup_key_bad",
    "key_other_ref",
    "tombstone",
    "cut_json",
    "huge_number",
]
VALID = ["far_future", "just_over_f", "just_under_f", "far_past", "dup_key_good", "size_64_kib", "text_controls"]


def _base(stream: int, value: bytes) -> dict[str, Any]:
    d: dict[str, Any] = orjson.loads(value)
    return d


def _hostile(
    draw: st.DrawFn, kind: str, stream: int, model: bytes, ts: int, n: int
) -> tuple[bytes | None, bytes | None]:
    """(key, value) of one hostile record of `kind`, built from the valid record `model`."""
    d = _base(stream, model)
    d["event_id"] = f"h{n}-{kind}"
    key: bytes | None = d["reference"].encode()
    if kind == "too_large":
        d["pad"] = "x" * 65_537
    elif kind == "one_mib":
        d["pad"] = "x" * (1 << 20)
    elif kind == "deep":
        return key, b"[" * 3000 + b"]" * 3000
    elif kind == "not_utf8":
        return key, orjson.dumps(d)[:-1] + b',"merchant_name":"caf\xe9"}'
    elif kind == "bad_char":
        field = draw(st.sampled_from(IDS_P if stream == 0 else IDS_L))
        d[field] = f"X{draw(st.sampled_from(BAD_CHARS))}Y"
        if field == "reference":
            key = None  # else the key check would reject it first, which is fine but less telling
    elif kind == "too_long":
        field = draw(st.sampled_from([*(IDS_P if stream == 0 else IDS_L), "occurred_at"]))
        d[field] = (
            "r" * 65 if field == "reference" else ("Z" * 129 if field != "occurred_at" else d[field][:-1] + "0" * 129)
        )
        key = None
    elif kind == "bad_amount":
        d["amount"] = draw(st.sampled_from(BAD_AMOUNTS))
        return key, json.dumps(d, ensure_ascii=False).encode()  # orjson refuses 2**64
    elif kind == "dup_key_bad":
        return key, orjson.dumps(d)[:-1] + b',"currency":"USD"}'
    elif kind == "key_other_ref":
        key = b"OTHER-" + key
    elif kind == "tombstone":
        return key, None
    elif kind == "cut_json":
        return key, orjson.dumps(d)[: draw(st.integers(0, 40))]
    elif kind == "huge_number":
        return key, orjson.dumps(d).replace(b'"amount":', b'"amount":1e400,"x":')
    elif kind == "far_future":
        d["occurred_at"] = draw(st.sampled_from(["9999-12-31T23:59:59+07:00", "2100-01-01T00:00:00Z"]))
    elif kind == "just_over_f":
        d["occurred_at"] = format_ms(ts + 60_001)
    elif kind == "just_under_f":
        d["occurred_at"] = format_ms(ts + 60_000)
    elif kind == "far_past":
        d["occurred_at"] = "1970-01-01T00:00:00Z"
    elif kind == "dup_key_good":
        return key, b'{"amount":0,"currency":"USD",' + orjson.dumps(d)[1:]
    elif kind == "size_64_kib":
        d["pad"] = ""
        body = orjson.dumps(d)
        d["pad"] = "x" * (65_536 - len(body))
    elif kind == "text_controls":
        if stream == 0:
            d["merchant_name"] = "Warung\x1b[2J\u202e"
        else:
            d["memo"] = "\x00\u2066"
    return key, orjson.dumps(d)


@st.composite
def hostile_traffic(draw: st.DrawFn) -> tuple[list[KafkaRecord], set[tuple[str, int, int]], dict[int, int]]:
    """Records of two partitions (each stream in offset order), the ids of the records that
    must be dead-lettered, and for each guarded record (by index) its Kafka timestamp."""
    records: list[KafkaRecord] = []
    invalid: set[tuple[str, int, int]] = set()
    guarded: dict[int, int] = {}
    n = 0
    for p in (0, 1):
        pp, ll = draw(partition_input())
        streams: list[list[tuple[bytes | None, bytes | None, int, str | None]]] = [[], []]
        for s, recs in ((0, pp), (1, ll)):
            for raw in recs:
                occ = parse_ms(orjson.loads(raw)["occurred_at"])
                ts = occ + draw(st.integers(0, 5_000))
                streams[s].append((orjson.loads(raw)["reference"].encode(), raw, ts, None))
            originals = list(streams[s])
            for _ in range(draw(st.integers(0, 4))):
                kind = draw(st.sampled_from(INVALID + VALID))
                at = draw(st.integers(0, len(streams[s]) - 1))
                _k, model, ts, _ = originals[min(at, len(originals) - 1)]
                assert model is not None
                key, value = _hostile(draw, kind, s, model, ts, n)
                n += 1
                streams[s].insert(at, (key, value, ts, kind))
        # Interleave the two streams in any order that keeps each stream's order.
        idx = [0, 0]
        offsets = [0, 0]
        while idx[0] < len(streams[0]) or idx[1] < len(streams[1]):
            s = (
                draw(st.integers(0, 1))
                if all(idx[i] < len(streams[i]) for i in (0, 1))
                else int(idx[0] >= len(streams[0]))
            )
            key, value, ts, kind = streams[s][idx[s]]
            idx[s] += 1
            offsets[s] += draw(st.sampled_from([1, 1, 1, 2]))  # offsets need not be contiguous
            if kind in INVALID:
                invalid.add((TOPICS[s], p, offsets[s]))
            if kind in ("far_future", "just_over_f"):
                guarded[len(records)] = ts
            records.append(KafkaRecord(TOPICS[s], p, offsets[s], ts, key, value))
    return records, invalid, guarded


def _run(records: list[KafkaRecord]) -> tuple[list[Decision], Replay]:
    r = Replay(PARAMS)
    out: list[Decision] = []
    for rec in records:
        out += r.feed(rec)
    out += [d for _p, d in r.drain()]
    out += r.bursts()
    return out, r


def _decided(out: list[Decision], skip: tuple[str, ...] = ("DEAD_LETTER",)) -> list[bytes]:
    """What the contract decides, without dead letters and the alerts about bad input."""
    kept = []
    for d in out:
        if d.role == "dead_letter" or (d.role == "alerts" and d.value["kind"] in skip):
            continue
        if d.role == "refunds":
            v = d.value
            kept.append(
                codec.dumps([v[k] for k in ("type", "refund_id", "amount", "reason", "deadline", "decided_at")])
            )
            kept.append(
                codec.dumps([v.get("cancel_id"), v["evidence"]["net_debited"], v["evidence"]["settled_amount"]])
            )
        elif d.role == "alerts":
            kept.append(codec.dumps([d.value["alert_id"], d.value["kind"], d.value["observed"]]))
        else:
            kept.append(codec.dumps_sorted(d.value))
    return kept


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_traffic())
def test_hostile_records_are_dead_lettered_and_change_no_decision(
    case: tuple[list[KafkaRecord], set[tuple[str, int, int]], dict[int, int]],
) -> None:
    records, invalid, guarded = case
    out, r = _run(records)  # nothing raises: the engine never crashes on input

    letters = {d.value["dead_letter_id"]: d.value for d in out if d.role == "dead_letter"}
    assert len(letters) == len([d for d in out if d.role == "dead_letter"]), "one dead letter per record"
    assert set(letters) == {f"{t}:{p}:{o}" for t, p, o in invalid}, "exactly the bad records"
    by_id = {f"{rec.topic}:{rec.partition}:{rec.offset}": rec for rec in records}
    for dl_id, v in letters.items():
        original = by_id[dl_id].value or b""
        carried = base64.b64decode(v["value_b64"])
        assert v["reason"] and v["error"]
        assert carried == original[:65_536] and v["value_truncated"] == (len(original) > 65_536)
        if by_id[dl_id].value is not None:
            assert v["value_length"] == len(original) and v["value_sha256"] == hashlib.sha256(original).hexdigest()
        assert len(codec.dumps(v)) < 1_000_000

    valid = len(records) - len(invalid)
    assert sum(e.stats["records"] for e in r.engines.values()) == valid, "no valid record lost"
    assert sum(e.stats["rejected"] for e in r.engines.values()) == len(invalid)

    # Without the bad records (same offsets), the contract decides exactly the same.
    clean = [rec for rec in records if (rec.topic, rec.partition, rec.offset) not in invalid]
    clean_out, _ = _run(clean)
    assert _decided(out) == _decided(clean_out)

    # A guarded record decides what the same record dated at its Kafka timestamp decides.
    skewed = [d for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"]
    assert bool(skewed) == bool(guarded)
    redated = list(records)
    for i, ts in guarded.items():
        v = orjson.loads(records[i].value or b"")
        v["occurred_at"] = format_ms(ts)
        redated[i] = KafkaRecord(
            records[i].topic, records[i].partition, records[i].offset, ts, records[i].key, orjson.dumps(v)
        )
    redated_out, _ = _run(redated)
    skip = ("DEAD_LETTER", "CLOCK_SKEW")
    assert _decided(out, skip) == _decided(redated_out, skip)


def test_duplicate_json_keys_keep_the_last_so_a_bad_last_value_is_rejected() -> None:
    # orjson, like Python's json and the schemas' validator, keeps the last of duplicate names.
    good = orjson.dumps(
        {
            "event_id": "e",
            "type": "settled",
            "reference": "R",
            "occurred_at": "2025-03-29T00:00:00Z",
            "amount": 1,
            "currency": "IDR",
        }
    )
    out, _ = _run([KafkaRecord(TOPICS[0], 0, 0, None, b"R", good[:-1] + b',"amount":-5}')])
    assert [d.value["field"] for d in out if d.role == "dead_letter"] == ["amount"]


_TIMES = [
    "2025-03-29T09:00:00+07:00",
    "2025-03-29T09:00:00.123Z",
    "2025-03-29t09:00:59.1z",
    "2025-12-31T23:59:60-05:30",
    "2025-03-29T09:00:00.123456789+07:00",
    "2025-03-29T09:00:00.234+07:00",  # the usual texts, 29 and 24 characters (the first fast path)
    "2025-03-29T02:00:00.450z",
]


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_TIMES),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 40), st.sampled_from(list("0123456789:.+-ZzTt ٣"))),
        max_size=3,
    ),
)
def test_the_cached_minute_fast_path_reads_timestamps_as_the_full_parser_does(base: str, edits: list) -> None:
    # parse_ms answers from caches of seconds and minutes seen in valid texts; a near-miss of a
    # cached one (a digit, separator or zone changed, added or removed) must get the full
    # parser's answer: the same instant, or the same rejection.
    from stream.core import eventtime

    chars = list(base)
    for op, at, ch in edits:
        at = min(at, len(chars))
        if op == 0 and at < len(chars):
            chars[at] = ch
        elif op == 1:
            chars.insert(at, ch)
        elif op == 2 and at < len(chars):
            del chars[at]
    text = "".join(chars)

    def read(parse: Any, t: str) -> int | str:
        try:
            return int(parse(t))
        except eventtime.BadTimestamp:
            return "rejected"

    for t in (base, text):  # the base first, so its second and minute are cached
        assert read(parse_ms, t) == read(eventtime._parse_ms_full, t), t
