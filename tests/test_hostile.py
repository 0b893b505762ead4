"""Hostile input (issue 8): the size and character rules, dead letters of oversized records, the
clock guard, bounded output records, state keys and ids that cannot collide, escaped text."""

from __future__ import annotations

import base64
import hashlib
import time
import unicodedata
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import codec, ids
from stream.core.deadletter import dead_letter_record
from stream.core.eventtime import format_ms, parse_ms
from stream.core.partition import OffsetOrderError, Params, PartitionEngine, occurred_max_ms
from stream.core.records import Stream
from stream.core.text import escape_ascii, escape_text, unescape_ascii
from stream.core.validation import (
    Rejection,
    _detailed_ledger,
    _detailed_payment,
    parse_ledger,
    parse_payment,
)
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord, ReplayFile
from stream.drivers.report import render, summarise
from stream.simulate.partitioner import partition_for
from stream.simulate.traffic import generate
from stream.worker.shell import meta_key, reference_of, state_key
from tests.records import T0, at, ledger, payment, saved_state_v2

P, L = Stream.P, Stream.L
MAX_SEND_BYTES = 1_000_000  # below the producer's 1 MiB max.request.size with room for headers
PAYMENT_IDS = ("event_id", "reference", "account_id", "merchant_id", "acquirer_id", "issuer_id", "switch_id")
PAYMENT_IDS += ("terminal_id",)
FORBIDDEN = ["\x00", "\x1b", "\n", "\x1f", "\x7f", "\x80", "\x9b", "\x9f", "\u202a", "\u202e", "\u2066", "\u2069"]
ALLOWED = ["\x20", "\x7e", "\xa0", "\u200e", "\u2029", "\u2070", "é", "漢", "\U0001f600"]


def _parse(stream: Stream, key: bytes | None, value: bytes) -> Any:
    fast = parse_payment(key, value) if stream is P else parse_ledger(key, value)
    detailed = _detailed_payment(key, value) if stream is P else _detailed_ledger(key, value)
    assert fast == detailed, "the fast and the detailed path disagree"
    return fast


def _requested(**fields: Any) -> bytes:
    return payment("e1", "requested", fields.pop("reference", "R1"), 0, **fields)


# -- sizes and characters ------------------------------------------------------------------


@pytest.mark.parametrize("field", [*PAYMENT_IDS, "mcc", "channel", "response_code", "merchant_name"])
def test_every_payment_string_field_has_its_length_limit(field: str) -> None:
    limit = {"reference": 64, "merchant_name": 256}.get(field, 128)
    ok = orjson.loads(_requested())
    ok[field] = "x" * limit
    assert not isinstance(_parse(P, None, orjson.dumps(ok)), Rejection)
    ok[field] = "x" * (limit + 1)
    got = _parse(P, None, orjson.dumps(ok))
    assert isinstance(got, Rejection) and got.field == field and got.error == "bad_value"
    assert f"at most {limit}" in got.reason


@pytest.mark.parametrize("field", ["event_id", "reference", "entry_id", "account_id"])
def test_every_ledger_string_field_has_its_length_limit(field: str) -> None:
    limit = 64 if field == "reference" else 128
    v = orjson.loads(ledger("d1", "debited", "R1", 0))
    v[field] = "é" * limit  # characters are code points, not bytes
    assert not isinstance(_parse(L, None, orjson.dumps(v)), Rejection)
    v[field] = "é" * (limit + 1)
    got = _parse(L, None, orjson.dumps(v))
    assert isinstance(got, Rejection) and got.field == field


def test_occurred_at_over_128_characters_is_rejected() -> None:
    v = orjson.loads(payment("e1", "settled", "R1", 0))
    v["occurred_at"] = "2025-03-29T00:00:00." + "0" * 102 + "Z"
    assert len(v["occurred_at"]) == 123 and not isinstance(_parse(P, None, orjson.dumps(v)), Rejection)
    v["occurred_at"] = "2025-03-29T00:00:00." + "0" * 108 + "Z"
    got = _parse(P, None, orjson.dumps(v))
    assert isinstance(got, Rejection) and got.field == "occurred_at"


@pytest.mark.parametrize("stream", [P, L])
def test_an_empty_occurred_at_is_a_bad_timestamp_as_the_dead_letter_schema_words_it(stream: Stream) -> None:
    # (An independent oracle of the validation rules found it dead-lettered as `bad_value`.)
    v = orjson.loads(payment("e1", "settled", "R1", 0) if stream is P else ledger("e1", "debited", "R1", 0))
    v["occurred_at"] = ""
    got = _parse(stream, None, orjson.dumps(v))
    assert isinstance(got, Rejection) and (got.error, got.field) == ("bad_timestamp", "occurred_at")


@pytest.mark.parametrize("amount", [b"18446744073709551616", b"-9223372036854775809", b"1e19"])
def test_an_amount_past_64_bits_is_rejected_and_its_reason_does_not_say_it_had_a_fraction(amount: bytes) -> None:
    # orjson reads an integer past 64 bits as a float: the reason says it may have been one.
    v = payment("e1", "settled", "R1", 0).replace(b'"amount":25000', b'"amount":' + amount)
    assert amount in v
    got = _parse(P, None, v)
    assert isinstance(got, Rejection) and (got.error, got.field) == ("wrong_type", "amount")
    assert "or an integer beyond 64 bits" in got.reason


@pytest.mark.parametrize("field", PAYMENT_IDS)
@pytest.mark.parametrize("char", FORBIDDEN)
@pytest.mark.parametrize("raw", [True, False], ids=["raw-utf8", "json-escape"])
def test_control_and_bidi_characters_are_rejected_in_every_payment_identifier(field: str, char: str, raw: bool) -> None:
    v = orjson.loads(_requested())
    v[field] = f"ID{char}9"
    value = orjson.dumps(v)  # orjson writes C0 controls as escapes and the rest raw
    if not raw:
        value = value.replace(char.encode("utf-8"), f"\\u{ord(char):04x}".encode())
    key = None if field != "reference" else f"ID{char}9".encode()
    got = _parse(P, key, value)
    assert isinstance(got, Rejection) and got.field == field, got
    assert f"U+{ord(char):04X}" in got.reason
    assert all(c not in got.reason for c in FORBIDDEN)  # the reason itself is safe to print


@pytest.mark.parametrize("field", ["event_id", "reference", "entry_id", "account_id"])
@pytest.mark.parametrize("char", FORBIDDEN)
def test_control_and_bidi_characters_are_rejected_in_every_ledger_identifier(field: str, char: str) -> None:
    v = orjson.loads(ledger("d1", "debited", "R1", 0))
    v[field] = f"ID{char}"
    got = _parse(L, None, orjson.dumps(v))
    assert isinstance(got, Rejection) and got.field == field


@pytest.mark.parametrize("char", ALLOWED)
def test_other_characters_are_accepted_in_identifiers(char: str) -> None:
    v = orjson.loads(_requested())
    for field in PAYMENT_IDS:
        v[field] = f"ID{char}"
    assert not isinstance(_parse(P, f"ID{char}".encode(), orjson.dumps(v)), Rejection)


@pytest.mark.parametrize("field", ["merchant_name", "mcc", "channel", "response_code"])
def test_free_text_fields_may_hold_control_characters(field: str) -> None:
    v = orjson.loads(_requested())
    v[field] = "A\x1b[2J\u202eB"
    assert not isinstance(_parse(P, None, orjson.dumps(v)), Rejection)


def _value_of_size(size: int) -> bytes:
    head = payment("e1", "settled", "R1", 0)[:-1] + b',"pad":"'
    value = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(value) == size
    return value


def test_a_value_of_64_kib_is_parsed_and_one_byte_more_is_rejected_unparsed() -> None:
    assert not isinstance(_parse(P, b"R1", _value_of_size(65_536)), Rejection)
    got = _parse(P, b"R1", _value_of_size(65_537))
    assert isinstance(got, Rejection) and got.error == "too_large" and "65,537 bytes" in got.reason
    # Not parsed: a huge value that is not even JSON gets the size reason, not a JSON error.
    for stream in (P, L):
        got = _parse(stream, None, b"[" * 1_048_576)
        assert isinstance(got, Rejection) and got.error == "too_large"


def test_duplicate_json_keys_keep_the_last_as_the_schemas_validator_does() -> None:
    base = payment("e1", "settled", "R1", 0)
    got = _parse(P, None, base[:-1] + b',"amount":0}')
    assert isinstance(got, Rejection) and got.field == "amount"
    got = _parse(P, None, b'{"amount":0,' + base[1:])
    assert not isinstance(got, Rejection) and got.amount == 25_000


# -- dead letters ----------------------------------------------------------------------------


def test_the_dead_letter_of_the_largest_record_a_broker_accepts_is_sendable() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, not UTF-8
    key = ("\x00" * 65_537).encode()  # a key over 64 KiB that escapes to 6 bytes a character
    eng = PartitionEngine(0, Params())
    out = eng.on_record(P, 5, key, value, 1_743_206_400_000)
    [dl] = [d for d in out if d.role == "dead_letter"]
    v = dl.value
    assert v["error"] == "too_large"
    assert base64.b64decode(v["value_b64"]) == value[:65_536]
    assert (v["value_truncated"], v["value_length"], v["value_sha256"]) == (
        True,
        len(value),
        hashlib.sha256(value).hexdigest(),
    )
    assert base64.b64decode(v["key_b64"]) == key[:65_536] and v["key_truncated"] and v["key"] is None
    assert v["key_sha256"] == hashlib.sha256(key).hexdigest() and v["key_length"] == 65_537
    assert dl.key == key[:65_536]
    for d in out:
        assert len(codec.dumps(d.value)) + len(d.key or b"") < MAX_SEND_BYTES


def test_a_dead_letter_carries_length_and_sha256_of_every_value() -> None:
    d = dead_letter_record("t", 0, 1, None, b"k", b"{}", Rejection("missing_field", "x"))
    assert (d.value["value_length"], d.value["value_sha256"], d.value["value_truncated"]) == (
        2,
        hashlib.sha256(b"{}").hexdigest(),
        False,
    )
    tomb = dead_letter_record("t", 0, 1, None, None, None, Rejection("invalid_json", "x"))
    assert (tomb.value["value_b64"], tomb.value["value_length"], tomb.value["key_b64"]) == ("", None, None)


# -- bounded output records ------------------------------------------------------------------


def test_the_biggest_refund_cancellation_and_alert_are_sendable() -> None:
    """A reference hammered with thousands of debits and reversals, every field at its limit."""
    ref = "R" * 64
    long_id = "\u202f" * 128  # 3 UTF-8 bytes per character (allowed: not a bidi control)
    params = Params(timeout_ms=60_000, lateness_ms=0, retention_ms=10**12)
    eng = PartitionEngine(0, params)
    req = orjson.loads(_requested(reference=ref))
    for f in ("account_id", "merchant_id", "acquirer_id", "issuer_id", "switch_id", "terminal_id", "event_id"):
        req[f] = long_id
    for f in ("mcc", "channel", "response_code"):
        req[f] = "\x01" * 128  # escapes to 6 bytes a character in JSON
    req["merchant_name"] = "\x01" * 256
    req["occurred_at"] = "2025-03-29T00:00:00." + "0" * 102 + "+07:00"  # 128 characters
    out = eng.on_record(P, 0, ref.encode(), orjson.dumps(req), None)
    n = 3000
    for i in range(n):
        d = orjson.loads(ledger(f"{i:0128d}", "debited", ref, i / 10, amount=10**9))
        d["entry_id"] = f"{i:0128d}"
        d["occurred_at"] = d["occurred_at"][:-1] + "0" * (127 - len(d["occurred_at"])) + "Z"
        d["account_id"] = long_id
        out += eng.on_record(L, i, ref.encode(), orjson.dumps(d), None)
    out += eng.on_record(P, 1, b"T", payment("t1", "requested", "T", 400), None)
    out += eng.on_record(L, n, b"T", ledger("t2", "reversed", "T", 400, amount=1), None)
    for i in range(n):  # reversals after the refunds: cancellations, then an over-refund
        d = orjson.loads(ledger(f"v{i:0127d}", "reversed", ref, 401 + i / 100, amount=10**9 - 1))
        d["entry_id"] = d["event_id"]
        out += eng.on_record(L, n + 1 + i, ref.encode(), orjson.dumps(d), None)
    out += eng.drain()
    kinds = {d.value.get("type") or d.value.get("kind") for d in out if d.role != "signals"}
    assert {"refund.requested", "refund.cancel_requested", "LATE_REVERSAL", "OVER_REFUND"} <= kinds
    biggest = max(len(codec.dumps(d.value)) for d in out)
    assert biggest < 100_000, biggest  # far below the limit whatever the input
    for d in out:
        if d.role == "refunds":
            ev = d.value["evidence"]
            assert ev["truncated"] == (ev["debit_count"] > 25 or ev["reversal_count"] > 25)
            assert len(ev["debits"]) == min(ev["debit_count"], 25)
            assert ev["debited_total"] - ev["reversed_total"] == ev["net_debited"]
    assert max(d.value["evidence"]["reversal_count"] for d in out if d.role == "refunds") > 1000
    saved, _meta = eng.take_dirty()
    assert max(len(v or b"") for v in saved.values()) < MAX_SEND_BYTES


# -- the clock guard -------------------------------------------------------------------------


def _engine_with_traffic() -> PartitionEngine:
    eng = PartitionEngine(0, Params())
    eng.on_record(P, 0, b"A", payment("a1", "requested", "A", 0), T0)
    eng.on_record(L, 0, b"A", ledger("a2", "debited", "A", 1), T0 + 1000)
    return eng


@pytest.mark.parametrize(
    ("ahead_ms", "guarded"), [(60_000, False), (60_001, True), (-3_600_000, False), (10**13, True)]
)
def test_a_record_dated_more_than_f_ahead_counts_at_its_kafka_timestamp(ahead_ms: int, guarded: bool) -> None:
    eng = _engine_with_traffic()
    ts = T0 + 2_000
    when = format_ms(min(ts + ahead_ms, parse_ms("9999-12-31T23:59:59Z")))
    out = eng.on_record(P, 1, b"A", payment("a3", "settled", "A", 0, occurred_at=when), ts)
    skew = [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"]
    assert eng.max_ms[0] == (ts if guarded else max(T0, parse_ms(when)))
    assert len(skew) == guarded and eng.skewed == [int(guarded), 0]
    if guarded:
        assert skew[0]["occurred_at"] == format_ms(ts) and skew[0]["topic"] == "qris.payment-requests"
        assert skew[0]["references"] == ["A"] and skew[0]["scope"] == {"type": "all", "id": "all"}


def test_a_clock_skew_alert_masks_the_account_number_in_the_event_id_it_quotes() -> None:
    eng = _engine_with_traffic()
    ahead = format_ms(T0 + 3_600_000)
    out = eng.on_record(L, 1, b"A", ledger("7700009876:d2", "debited", "A", 0, occurred_at=ahead), T0 + 2_000)
    [skew] = [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"]
    assert "7700009876" not in orjson.dumps(skew).decode() and "debited ******9876:d2 of A" in skew["summary"]


@pytest.mark.parametrize("ts", [None, -1])
def test_no_kafka_timestamp_no_guard(ts: int | None) -> None:
    eng = _engine_with_traffic()
    out = eng.on_record(P, 1, b"A", payment("a3", "settled", "A", 0, occurred_at="9999-11-30T00:00:00Z"), ts)
    assert eng.max_ms[0] == parse_ms("9999-11-30T00:00:00Z") and not [d for d in out if d.role == "alerts"]


def test_a_kafka_timestamp_of_zero_is_a_timestamp_the_guard_compares_with() -> None:
    # Only -1 (or none) means "no timestamp"; 0 is the epoch, and a record dated 2025 is far
    # more than F ahead of it.
    eng = _engine_with_traffic()
    out = eng.on_record(P, 1, b"A", payment("a3", "settled", "A", 0), 0)
    [skew] = [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"]
    assert skew["occurred_at"] == format_ms(0) and eng.skewed == [1, 0]


@pytest.mark.parametrize(
    ("order", "kinds"),
    [
        ("L0 L1 L2 P0 P1", ["CLOCK_SKEW", "LATE_SETTLEMENT"]),
        ("L0 L1 P0 P1 L2", ["LATE_SETTLEMENT", "CLOCK_SKEW"]),
    ],
)
def test_a_clock_skew_alert_goes_out_with_its_record_so_its_place_follows_the_interleaving(
    order: str, kinds: list[str]
) -> None:
    # README, "Where the contract is silent": like a dead letter, a CLOCK_SKEW alert is
    # decided when its record is read; its content and every refund do not depend on the
    # interleaving, its place among the partition's alerts does.
    records = {
        "L0": (L, 0, b"A", ledger("d1", "debited", "A", 0), T0),
        "L1": (L, 1, b"B", ledger("d2", "debited", "B", 500), T0 + 500_000),
        "L2": (L, 2, b"C", ledger("d3", "debited", "C", 1000), T0 + 500_000),
        "P0": (P, 0, b"A", payment("s1", "settled", "A", 400), T0 + 400_000),
        "P1": (P, 1, b"Z", payment("q9", "requested", "Z", 600), T0 + 600_000),
    }
    eng = PartitionEngine(0, Params())
    out = [d for name in order.split() for d in eng.on_record(*records[name])]
    alerts = [d.value for d in out if d.role == "alerts"]
    assert [a["kind"] for a in alerts] == kinds
    skew = next(a for a in alerts if a["kind"] == "CLOCK_SKEW")
    late = next(a for a in alerts if a["kind"] == "LATE_SETTLEMENT")
    assert parse_ms(skew["occurred_at"]) == T0 + 500_000 and parse_ms(late["occurred_at"]) == T0 + 400_000
    refunds = [(d.value["type"], d.value["refund_id"]) for d in out if d.role == "refunds"]
    assert [t for t, _ in refunds] == ["refund.requested", "refund.cancel_requested"]


def test_clock_skew_alerts_come_at_1_10_100_and_the_count_survives_a_restore() -> None:
    eng = _engine_with_traffic()
    counts = []
    for i in range(1, 120):
        if i == 50:
            _refs, meta = eng.take_dirty()
            eng = PartitionEngine.restore(0, eng.params, meta, [])
        v = payment(f"s{i}", "failed", f"S{i}", 0, occurred_at="2100-01-01T00:00:00Z")
        out = eng.on_record(P, i, f"S{i}".encode(), v, T0 + i)
        counts += [d.value["observed"]["skewed_records"] for d in out if d.role == "alerts"]
    assert counts == [1, 10, 100]
    # A redelivery never reaches the core (the input boundary skips it); if one did, it is
    # refused, not counted again.
    with pytest.raises(OffsetOrderError):
        eng.on_record(P, 119, b"S119", payment("s119", "failed", "S119", 0), T0 + 119)
    assert eng.skewed == [119, 0]


def _mismatch_alerts(out: list[Any]) -> list[dict[str, Any]]:
    return [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_MISMATCH"]


@pytest.mark.parametrize(
    ("request_after_debit_s", "raised"), [(60, False), (60.001, True), (-30, False), (0, False), (3_600, True)]
)
def test_a_payment_debited_more_than_f_before_its_request_raises_clock_mismatch(
    request_after_debit_s: float, raised: bool
) -> None:
    eng = PartitionEngine(0, Params())
    req_ms = T0 + round(request_after_debit_s * 1000)
    out = eng.on_record(L, 0, b"A", ledger("a1", "debited", "A", 0), T0)
    out += eng.on_record(P, 0, b"A", payment("a2", "requested", "A", request_after_debit_s), req_ms)
    out += eng.on_record(P, 1, b"A", payment("a3", "settled", "A", request_after_debit_s + 2), req_ms + 2000)
    out += eng.drain()
    alerts = _mismatch_alerts(out)
    assert len(alerts) == raised and eng.mismatched == int(raised)
    # The decisions are the contract's either way: the deadline counts from the debit, so a
    # settlement dated past it cancels the refund made there.
    refunds = [d.value for d in out if d.role == "refunds"]
    clawed_back = request_after_debit_s + 2 > 300
    assert [r["type"] for r in refunds] == (["refund.requested", "refund.cancel_requested"] if clawed_back else [])
    if raised:
        [a] = alerts
        assert a["topic"] == "qris.ledger-debits" and a["partition"] == 0 and a["references"] == ["A"]
        assert a["observed"]["debit_before_request_s"] == request_after_debit_s
        assert a["occurred_at"] == at(request_after_debit_s) and a["severity"] == "warning"
        assert "clock" in a["summary"] and "LATE_SETTLEMENT" in a["summary"]


def test_a_request_the_clock_guard_dates_at_its_kafka_timestamp_is_compared_at_that_date() -> None:
    """The guard counts a record dated more than F ahead of its Kafka timestamp "as if it
    occurred at its Kafka timestamp, here and below": so does `CLOCK_MISMATCH`. A request dated
    60.001 s ahead, sent at its debit's instant, is no debit before its request, even when
    lateness puts its effective time past its own date (a stream already pushed ahead)."""
    eng = PartitionEngine(0, Params(lateness_ms=10_000))
    # Another payment's request, also guarded, takes the stream to T0 + 71 s.
    out = eng.on_record(P, 0, b"B", payment("b1", "requested", "B", 131.001), T0 + 71_000)
    out += eng.on_record(L, 0, b"A", ledger("a1", "debited", "A", 0), T0)
    out += eng.on_record(P, 1, b"A", payment("a2", "requested", "A", 60.001), T0)
    out += eng.on_record(L, 1, b"C", ledger("c1", "debited", "C", 200), T0 + 200_000)  # (W past A's request)
    out += eng.on_record(P, 2, b"C", payment("c2", "requested", "C", 200), T0 + 200_000)
    # Its own `occurred_at` text is kept (the evidence shows what the feed sent).
    request = eng.refs["A"].request
    assert request is not None and request.occurred_at == at(60.001) and request.occurred_at_ms == T0
    out += eng.drain()
    skews = [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"]
    assert len(skews) == 1 and _mismatch_alerts(out) == [] and eng.mismatched == 0


# A guarded first debit processed before its request: B's and C's records take both streams to
# 100-110 s, so A's debit, dated 300 s by a clock 300 s ahead of its Kafka timestamp (T0), counts
# at T0 with the effective time 70 s (lateness 30 s), and is processed before A's request, dated
# 100 s: 100 s apart at the guard's date, 30 s at its effective time, after it by its text.
_PT, _LT = Params().payment_topic, Params().ledger_topic
_GUARDED_FIRST_DEBIT = [
    KafkaRecord(_LT, 0, 0, T0 + 100_000, b"B", ledger("B-d", "debited", "B", 100)),
    KafkaRecord(_LT, 0, 1, T0, b"A", ledger("A-d", "debited", "A", 300)),
    KafkaRecord(_PT, 0, 0, T0 + 100_000, b"B", payment("B-q", "requested", "B", 100)),
    KafkaRecord(_LT, 0, 2, T0 + 110_000, b"C", ledger("C-d", "debited", "C", 110)),
    KafkaRecord(_PT, 0, 1, T0 + 110_000, b"C", payment("C-q", "requested", "C", 110)),
    KafkaRecord(_PT, 0, 2, T0 + 100_000, b"A", payment("A-q", "requested", "A", 100)),
]


@pytest.mark.parametrize("restore_at", [None, *range(len(_GUARDED_FIRST_DEBIT))])
def test_a_guarded_first_debit_processed_before_its_request_is_compared_at_the_guards_date(
    restore_at: int | None,
) -> None:
    """The guard's "here and below" for a debit processed first: the date the guard left it (T0)
    is the one compared when its request comes, whether the engine runs on or restores in
    between (the debit saved waiting, or in its entry once processed), and a replay agrees."""
    eng = PartitionEngine(0, Params())
    saved: dict[str, bytes] = {}
    meta = b""
    out: list[Any] = []
    for i, r in enumerate(_GUARDED_FIRST_DEBIT):
        s = P if r.topic == _PT else L
        out += eng.on_record(s, r.offset, r.key, r.value, r.timestamp_ms)
        if i == 4:
            assert eng.refs["A"].debits[0].effective_at_ms == T0 + 70_000 and eng.refs["A"].request is None
        refs, changed = eng.take_dirty()
        saved.update({k: v for k, v in refs.items() if v is not None})
        meta = changed or meta
        if i == restore_at:
            eng = PartitionEngine.restore(0, eng.params, meta, saved.items())
    out += eng.drain()
    [alert] = _mismatch_alerts(out)
    assert alert["references"] == ["A"] and alert["observed"]["debit_before_request_s"] == 100
    assert eng.mismatched == 1
    replayed = [d for _p, d in replay(_GUARDED_FIRST_DEBIT, Params(), drain=True)]
    assert _mismatch_alerts(replayed) == [alert]
    # The same debit dated at its Kafka timestamp raises the very same alert.
    redated = [
        r._replace(value=ledger("A-d", "debited", "A", 0)) if r.key == b"A" and r.topic == _LT else r
        for r in _GUARDED_FIRST_DEBIT
    ]
    assert _mismatch_alerts([d for _p, d in replay(redated, Params(), drain=True)]) == [alert]


def test_clock_mismatch_alerts_come_at_1_10_100_critical_from_10_and_the_count_survives_a_restore() -> None:
    eng = PartitionEngine(0, Params())
    alerts: list[dict[str, Any]] = []
    for i in range(1, 120):
        if i == 50:
            refs, meta = eng.take_dirty()
            eng = PartitionEngine.restore(0, eng.params, meta, [(k, v) for k, v in refs.items() if v is not None])
        ref = f"M{i}"
        out = eng.on_record(L, i, ref.encode(), ledger(f"d{i}", "debited", ref, i * 10), T0 + i * 10_000)
        req_ms = T0 + (i * 10 + 120) * 1000
        out += eng.on_record(P, i, ref.encode(), payment(f"r{i}", "requested", ref, i * 10 + 120), req_ms)
        alerts += _mismatch_alerts(out)
    alerts += _mismatch_alerts(eng.drain())
    assert [(a["observed"]["mismatched_payments"], a["severity"]) for a in alerts] == [
        (1, "warning"),
        (10, "critical"),
        (100, "critical"),
    ]
    assert eng.mismatched == 119
    assert len({a["alert_id"] for a in alerts}) == 3


@pytest.mark.parametrize("request_after_debit_s", [10, 120])
def test_a_request_saved_by_a_version_1_worker_is_compared_by_its_date(request_after_debit_s: int) -> None:
    # Version 1 kept no effective time of the request ("re"): its first debit after the upgrade
    # is compared with the request's own date, never an AssertionError (or a TypeError under -O)
    # in the middle of a batch.
    eng = PartitionEngine(0, Params())
    eng.on_record(P, 0, b"A", payment("A-q", "requested", "A", 0), T0)
    eng.on_record(P, 1, b"Y", payment("Y-q", "requested", "Y", 100), T0 + 100_000)
    eng.on_record(L, 0, b"Y", ledger("Y-d", "reversed", "Y", 100, 1), T0 + 100_000)
    refs, meta = eng.take_dirty()
    saved = []
    for ref, raw in refs.items():
        assert raw is not None
        d = orjson.loads(raw)
        if d["state"] is not None:
            d["state"] = saved_state_v2(d["state"])
            del d["state"]["re"], d["state"]["v"]
        saved.append((ref, orjson.dumps(d)))
    eng = PartitionEngine.restore(0, Params(), meta, saved)
    assert eng.refs["A"].request_eff_ms is None
    debit_s = -request_after_debit_s
    out = eng.on_record(L, 1, b"A", ledger("A-d", "debited", "A", debit_s), T0 + 110_000)
    out += eng.drain()
    assert len(_mismatch_alerts(out)) == (request_after_debit_s > 60)


@pytest.mark.slow
def test_a_ledger_clock_behind_is_said_before_its_first_clawback_and_a_clean_day_raises_nothing() -> None:
    records = _outage()
    clean = [d.value for _p, d in replay(records, Params(), drain=True)]
    assert not _mismatch_alerts_of(clean)
    # The ledger's clock 5 minutes behind from the 10th minute: its dates and its Kafka times.
    start = records[0].timestamp_ms + 10 * 60_000
    behind = []
    for r in records:
        if r.topic == "qris.ledger-debits" and r.timestamp_ms >= start:
            v = orjson.loads(r.value)
            v["occurred_at"] = format_ms(parse_ms(v["occurred_at"]) - 300_000)
            r = r._replace(value=orjson.dumps(v), timestamp_ms=r.timestamp_ms - 300_000)
        behind.append(r)
    out = [d.value for _p, d in replay(behind, Params(), drain=True)]
    kinds = [v.get("kind") or v.get("type") for v in out]
    first_alert = kinds.index("CLOCK_MISMATCH")
    first_clawback = kinds.index("refund.cancel_requested")
    assert first_alert < first_clawback
    assert kinds.count("refund.cancel_requested") > 100
    assert {a["partition"] for a in _mismatch_alerts_of(out)} == {0, 1, 2, 3}


def _mismatch_alerts_of(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in values if v.get("kind") == "CLOCK_MISMATCH"]


def test_evidence_keeps_the_original_text_and_shows_the_time_used() -> None:
    eng = _engine_with_traffic()
    far = "9999-12-31T23:59:59+07:00"
    eng.on_record(L, 1, b"A", ledger("a3", "debited", "A", 0, occurred_at=far, amount=5_000), T0 + 2_000)
    out = eng.drain()
    [r] = [d.value for d in out if d.role == "refunds"]
    second = r["evidence"]["debits"][1]
    assert second["occurred_at"] == far and second["effective_at"] == format_ms(T0 + 2_000)
    assert r["amount"] == 30_000 and r["deadline"] == at(301)


def _outage() -> list[KafkaRecord]:
    recs = generate("outage", seed=8, start_ms=T0, minutes=40, rate_per_min=150, outage_at=0.3)
    return [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in recs
    ]


def _with_clock_record(records: list[KafkaRecord], ref: str) -> list[KafkaRecord]:
    """`records` with one valid `settled` dated 9999-12-31 in the middle of its partition."""
    p = partition_for(ref.encode(), 4)
    topic = "qris.payment-requests"
    mine = [i for i, r in enumerate(records) if r.topic == topic and r.partition == p]
    i = mine[len(mine) // 2]
    ts = records[i].timestamp_ms
    bad = payment("clock-1", "settled", ref, 0, occurred_at="9999-12-31T23:59:59+07:00")
    later = set(mine)
    shifted = [r._replace(offset=r.offset + 1) if j in later else r for j, r in enumerate(records)]
    return records[:i] + [KafkaRecord(topic, p, records[i].offset, ts, ref.encode(), bad)] + shifted[i:]


def _decisions(records: list[KafkaRecord], params: Params, ref: str) -> tuple[list[bytes], list[dict[str, Any]]]:
    kept, own = [], []
    for _p, d in replay(records, params, drain=True):
        if d.key == ref.encode() or (d.role == "alerts" and d.value["kind"] == "CLOCK_SKEW"):
            own.append(d.value)
        else:
            kept.append(codec.dumps_sorted(d.value))
    return kept, own


@pytest.mark.slow
def test_one_record_dated_9999_in_an_outage_changes_no_other_reference() -> None:
    records, ref = _outage(), "QRCLOCK"
    clean, _ = _decisions(records, Params(), ref)
    assert sum(b'"refund.requested"' in d for d in clean) > 100
    dirty, own = _decisions(_with_clock_record(records, ref), Params(), ref)
    assert dirty == clean
    assert [v["kind"] for v in own if "kind" in v] == ["CLOCK_SKEW"]
    # Without the guard the same record poisons its partition: the test can tell.
    unguarded, _ = _decisions(_with_clock_record(records, ref), Params(clock_skew_ms=10**15), ref)
    assert unguarded != clean


# -- keys, ids and text ----------------------------------------------------------------------

ADVERSARIAL_REFS = ["\x00meta", "m", "r", "r/", "r/x", "/m", "0/m", "1/r/x", "", "\x00", "é/漢"]


@pytest.mark.parametrize("ref", ADVERSARIAL_REFS)
def test_no_reference_can_name_the_metadata_or_another_partition(ref: str) -> None:
    for p in (0, 1, 10, 11):
        k = state_key(p, ref)
        assert reference_of(p, k) == ref
        assert all(k != meta_key(q) for q in (0, 1, 10, 11))
        assert all(reference_of(q, k) is None for q in (0, 1, 10, 11) if q != p)
        assert reference_of(p, meta_key(p)) is None
    keys = {state_key(p, r) for p in (0, 1, 10, 11) for r in ADVERSARIAL_REFS}
    assert len(keys) == 4 * len(ADVERSARIAL_REFS)


_parts = st.lists(st.one_of(st.text(alphabet="ab:0123\x1f", max_size=6), st.integers(-20, 200)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_parts, _parts)
def test_different_id_parts_never_encode_to_the_same_bytes(a: list[Any], b: list[Any]) -> None:
    if list(map(str, a)) != list(map(str, b)):
        assert ids.encode_parts(*a) != ids.encode_parts(*b)
    assert ids.alert_id("K", "a\x1fb") != ids.alert_id("K", "a", "b")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_escaped_text_holds_no_control_bidi_or_right_to_left_character(s: str) -> None:
    out = escape_text(s, 100)
    assert all(c.isprintable() for c in out) and not set(out) & set(FORBIDDEN)
    assert not any(unicodedata.bidirectional(c) in ("R", "AL", "AN") for c in out)
    assert len(out) <= 100 * 10 + 1
    assert escape_text(out, len(out)) == out  # a summary escaped again as a whole is unchanged
    kept = escape_text(s, 100, keep_right_to_left=True)
    assert all(c.isprintable() for c in kept) and not set(kept) & set(FORBIDDEN)


def test_alert_summaries_and_the_report_escape_what_they_quote() -> None:
    eng = PartitionEngine(0, Params(timeout_ms=1_000, lateness_ms=0))
    mcc = "58\x1b[2J\u202e12"
    out = eng.on_record(P, 0, b"R1", payment("q", "requested", "R1", 0, mcc=mcc), None)
    out += eng.on_record(L, 0, b"R1", ledger("d", "debited", "R1", 0), None)
    out += eng.on_record(P, 1, b"T", payment("t", "requested", "T", 5), None)
    out += eng.on_record(L, 1, b"T", ledger("t", "reversed", "T", 5, amount=1), None)
    out += eng.on_record(P, 2, b"R1", payment("s", "settled\x1b[2J\u202e", "R1", 9), None)  # rejected
    out += eng.on_record(P, 3, b"R1", payment("s", "settled", "R1", 9), None)
    out += eng.drain()
    alerts = [d.value for d in out if d.role == "alerts"]
    assert {a["kind"] for a in alerts} == {"DEAD_LETTER", "LATE_SETTLEMENT"}
    for a in alerts:
        assert all(c.isprintable() for c in a["summary"]), a["summary"]
    assert "settled\\u001b[2J\\u202e" in next(a["summary"] for a in alerts if a["kind"] == "DEAD_LETTER")
    hostile = {"kind": "X\x1b[31m", "alert_id": "a", "severity": "w\u202e", "summary": "s\x07\n"}
    text = render(summarise([("alerts", a) for a in alerts] + [("alerts", hostile)]))
    assert not set(text) & (set(FORBIDDEN) - {"\n"}) and "\\u001b[31m" in text and "\\u0007" in text


def test_right_to_left_ids_are_escaped_in_summaries_and_the_report_not_in_fields() -> None:
    """Hebrew letters are printable and allowed in an identifier: in every summary (a
    cancellation's, a dead letter's quoting a record key) and in the report's lines the id is
    escaped, so no right-to-left letter is left to reorder the counts beside it, and no
    bidirectional character is added; the fields the contract fixes (`reference`, `scope.id`)
    and the labels keep it as it came."""
    ref = "\u05d0\u05d1\u05d2-7"
    shown = "\\u05d0\\u05d1\\u05d2-7"
    eng = PartitionEngine(0, Params(timeout_ms=1_000, lateness_ms=0))
    out = eng.on_record(P, 0, ref.encode(), payment("q", "requested", ref, 0, merchant_id=ref), None)
    out += eng.on_record(L, 0, ref.encode(), ledger("d", "debited", ref, 0), None)
    out += eng.on_record(P, 1, b"T", payment("t", "requested", "T", 5), None)
    out += eng.on_record(L, 1, b"T", ledger("t", "reversed", "T", 5, amount=1), None)
    out += eng.on_record(P, 2, ("x" + ref).encode(), payment("s2", "settled", ref, 9), None)  # key differs: rejected
    out += eng.on_record(P, 3, ref.encode(), payment("s", "settled", ref, 9), None)
    out += eng.drain()
    alerts = [d.value for d in out if d.role == "alerts"]
    assert {a["kind"] for a in alerts} == {"DEAD_LETTER", "LATE_SETTLEMENT"}
    late = next(a for a in alerts if a["kind"] == "LATE_SETTLEMENT")
    assert f" for {shown} cancelled: " in late["summary"]
    assert late["reference"] == ref and late["scope"]["id"] == ref and late["labels"]["scope_id"] == ref
    dead = next(a for a in alerts if a["kind"] == "DEAD_LETTER")
    assert f"the record key 'x{shown}' differs" in dead["summary"]
    text = render(summarise([("alerts", a) for a in alerts]))
    for t in [*(a["summary"] for a in alerts), text]:
        assert not any(
            unicodedata.bidirectional(c) in ("R", "AL", "AN") or c in "\u2066\u2067\u2068\u2069" for c in t
        ), t
    assert shown in text


def test_a_summary_quoting_long_right_to_left_ids_keeps_its_end_and_whole_escapes() -> None:
    """Escaped, a Hebrew letter is six characters: the longest ids the contract allows (a
    reference of 64, an event id of 128) would fill the summary's 1,000 and cut its end, what to
    check, mid-escape. Each quoted id is capped as shown, so the line keeps its end."""
    ref, eid = "\u05d0" * 64, "\u05d1" * 128
    eng = PartitionEngine(0, Params(timeout_ms=1_000, lateness_ms=0))
    out = eng.on_record(P, 0, ref.encode(), payment("q", "requested", ref, 0), None)
    out += eng.on_record(L, 0, ref.encode(), ledger("d", "debited", ref, 0), None)
    out += eng.on_record(P, 1, b"T", payment("t", "requested", "T", 5), None)
    out += eng.on_record(L, 1, b"T", ledger("t", "reversed", "T", 5, amount=1), None)
    out += eng.on_record(P, 2, ref.encode(), payment(eid, "settled", ref, 9), None)
    out += eng.drain()
    late = next(d.value for d in out if d.role == "alerts" and d.value["kind"] == "LATE_SETTLEMENT")
    assert late["summary"].endswith("; check whether it was already paid out"), late["summary"]
    assert late["reference"] == ref and len(late["summary"]) <= 1000
    assert "\\u05d0…" in late["summary"] and "\\u05d1…" in late["summary"]  # (cut between escapes)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.integers(0, 80), st.booleans())
def test_escaped_text_is_capped_as_shown_and_unchanged_escaped_again(s: str, cap: int, keep: bool) -> None:
    out = escape_text(s, cap, keep_right_to_left=keep)
    assert len(out) <= cap + 1 and (len(out) <= cap or out.endswith("\u2026"))
    assert escape_text(out, cap, keep_right_to_left=keep) == out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet="\\uU05d0\u05d0-", max_size=12))
def test_ascii_escaped_text_reads_back_exactly(s: str) -> None:
    # Read back exactly, so no two texts escape alike: the second alphabet makes texts holding a
    # literal `\u05d0` beside the letter itself, which `escape_text` shows alike.
    out = escape_ascii(s)
    assert all(" " <= c <= "~" for c in out) and unescape_ascii(out) == s
    assert escape_ascii("QR\\u05d0") != escape_ascii("QR\u05d0") and escape_text("QR\\u05d0") == escape_text("QR\u05d0")


@pytest.mark.parametrize("bad", ["\\", "x\\q", "\\u05d", "\\U00110000", "\\U0010fff"])
def test_an_ascii_escape_that_is_none_is_refused_not_read_as_itself(bad: str) -> None:
    with pytest.raises(ValueError, match="at character"):
        unescape_ascii(bad)


@pytest.mark.slow
def test_a_reference_hammered_with_distinct_events_stays_small_and_still_deduplicates() -> None:
    params = Params(timeout_ms=10**12, lateness_ms=0, retention_ms=10**12)
    eng = PartitionEngine(0, params)
    n = 20_000
    for i in range(n):
        eng.on_record(L, i, b"H", ledger(f"{i:0128d}", "debited", "H", i / 1000, amount=1, entry_id="J"), None)
    eng.on_record(P, 0, b"T", payment("t", "requested", "T", 100), None)
    eng.on_record(L, n + 5, b"T", ledger("tl", "reversed", "T", 100, amount=1), None)
    saved, meta = eng.take_dirty()
    assert len(saved["H"] or b"") < 800_000, len(saved["H"] or b"")
    restored = PartitionEngine.restore(0, params, meta, [(r, v) for r, v in saved.items() if v is not None])
    for e in (eng, restored):
        st = e.refs["H"]
        assert st.net == n and st.has_seen(1, f"{0:0128d}") and st.has_seen(1, f"{n - 1:0128d}")
        assert not st.has_seen(1, f"{n:0128d}") and not st.has_seen(0, f"{0:0128d}")
        # Redeliveries of the first and of the last event change nothing.
        e.on_record(L, n + 10, b"H", ledger(f"{0:0128d}", "debited", "H", 50, amount=1, entry_id="J"), None)
        e.on_record(L, n + 11, b"H", ledger(f"{n - 1:0128d}", "debited", "H", 50, amount=1, entry_id="J"), None)
        e.on_record(P, 1, b"T", payment("t2", "requested", "T", 200), None)
        e.on_record(L, n + 16, b"T", ledger("tl2", "reversed", "T", 200, amount=1), None)
        assert e.refs["H"].net == n


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-62_167_219_200_000, max_value=253_402_300_799_999))
def test_every_instant_of_the_accepted_years_formats_back_to_itself(ms: int) -> None:
    # Years 0000-9999 are accepted (RFC 3339). Before, every instant before 0000-03-01 was
    # written a day late (a C idiom for negative days under Python's floor division).
    assert parse_ms(format_ms(ms)) == ms


def test_the_first_and_last_instants_of_the_accepted_years_format_exactly() -> None:
    for text in ("0000-01-01T00:00:00.000Z", "0000-02-29T23:59:59.999Z", "0000-03-01T00:00:00.000Z"):
        assert format_ms(parse_ms(text)) == text
    assert format_ms(parse_ms("9999-12-31T23:59:59.999Z")) == "9999-12-31T23:59:59.999Z"
    assert format_ms(parse_ms("1969-12-31T23:59:59.999Z")) == "1969-12-31T23:59:59.999Z"


def test_a_time_rfc_3339_cannot_write_the_deadline_of_is_dead_lettered_not_decided() -> None:
    # "0000-01-01T00:00:00+07:00" (a zero date in local time) is an instant of year -1 in UTC:
    # its refund's deadline was written "-001-12-31T..." (schema-invalid) and, with holds on, a
    # later cancellation parsed that text back and raised inside the engine: live, an exit and a
    # crash loop; replay, no output. The end of year 9999 without a Kafka timestamp (a replay
    # line) had a deadline in year 10000 the same way. Both are refused now; a 9999 record with a
    # Kafka timestamp is still the clock guard's (moved to that timestamp).
    params = Params(max_hold_ms=7_200_000)
    eng = PartitionEngine(0, params, persistent=False)
    out = []
    for offset, (typ, when, ts) in enumerate(
        [
            ("requested", "0000-01-01T00:00:00+07:00", None),
            ("requested", "0000-01-01T00:00:00Z", None),  # the first instant RFC 3339 can write: taken
            ("requested", "9999-12-31T22:00:00Z", None),
            ("requested", "9999-12-31T22:00:00Z", parse_ms("2025-03-29T07:00:00Z")),  # the clock guard's
        ]
    ):
        value = orjson.dumps(
            {
                "event_id": f"e{offset}",
                "type": typ,
                "reference": f"R{offset}",
                "occurred_at": when,
                "amount": 1000,
                "currency": "IDR",
                "account_id": "7700009876",
                "merchant_id": "M1",
            }
        )
        out.append(eng.on_record(Stream.P, offset, f"R{offset}".encode(), value, ts))
    dead = [[d.value for d in got if d.role == "dead_letter"] for got in out]
    assert [len(d) for d in dead] == [1, 0, 1, 0]
    for (d,) in (dead[0], dead[2]):
        assert d["error"] == "bad_value" and d["field"] == "occurred_at", d
    assert "before 0000-01-01T00:00:00Z" in dead[0][0]["reason"]
    assert "end of year 9999" in dead[2][0]["reason"]
    assert [d.value["kind"] for d in out[3] if d.role == "alerts"] == ["CLOCK_SKEW"]
    assert eng.stats["rejected"] == 2 and eng.stats["records"] == 2


def test_the_last_instant_a_record_may_count_at_is_taken_and_1_ms_later_is_refused() -> None:
    # The upper edge of the range above (`occurred_max_ms`: the deadline, a hold's release-by and
    # the detector's minutes still before year 10000).
    params = Params(max_hold_ms=7_200_000)
    eng = PartitionEngine(0, params, persistent=False)
    last_ms = occurred_max_ms(params)
    for offset, at_ms in enumerate((last_ms, last_ms + 1)):
        value = payment(f"e{offset}", "requested", f"R{offset}", 0, occurred_at=format_ms(at_ms))
        dead = [
            d.value
            for d in eng.on_record(Stream.P, offset, f"R{offset}".encode(), value, None)
            if d.role == "dead_letter"
        ]
        assert [d["field"] for d in dead] == ["occurred_at"] * offset


def test_a_replay_with_holds_of_zero_dated_payments_cancelled_later_finishes(tmp_path: Any) -> None:
    # The helper's repro: a partition's first records zero-dated in local time, one of them
    # settled after its deadline (a cancellation, whose explanation parsed the deadline text),
    # then normal traffic; holds on, drained. It raised BadTimestamp before.
    zero = "0000-01-01T00:%02d:00+07:00"
    lines = []
    offsets = {"P": 0, "L": 0}

    def add(stream: str, value: dict[str, Any]) -> None:
        topic = "qris.payment-requests" if stream == "P" else "qris.ledger-debits"
        lines.append(
            {
                "topic": topic,
                "partition": 0,
                "offset": offsets[stream],
                "timestamp_ms": None,
                "key": value["reference"],
                "value": orjson.dumps(value).decode(),
            }
        )
        offsets[stream] += 1

    def rec(eid: str, typ: str, ref: str, when: str, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": eid,
            "type": typ,
            "reference": ref,
            "occurred_at": when,
            "amount": 1000,
            "currency": "IDR",
            **extra,
        }

    for k in range(12):
        add("P", rec(f"z{k}", "requested", f"Z{k}", zero % k, account_id="7700009876", merchant_id="M1"))
        add("L", rec(f"zd{k}", "debited", f"Z{k}", zero % k, entry_id=f"J{k}", account_id="7700009876"))
        if k == 10:
            add("P", rec("s0", "settled", "Z0", zero % k))
    t0 = parse_ms("2025-03-29T07:00:00Z")
    for k in range(12):
        when = format_ms(t0 + k * 60_000)
        add("P", rec(f"n{k}", "requested", f"N{k}", when, account_id="7700009876", merchant_id="M1"))
        add("L", rec(f"nd{k}", "debited", f"N{k}", when, entry_id=f"K{k}", account_id="7700009876"))
    path = tmp_path / "zero.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    got = [d for _, d in replay(ReplayFile(str(path)), Params(max_hold_ms=7_200_000), drain=True)]
    dead = [d.value for d in got if d.role == "dead_letter"]
    assert len(dead) == 25 and {d["field"] for d in dead} == {"occurred_at"}
    refunds = [d.value for d in got if d.role == "refunds"]
    assert sorted(r["reference"] for r in refunds) == sorted(f"N{k}" for k in range(12))
    assert all(r["type"] == "refund.requested" and r["deadline"].startswith("2025-") for r in refunds)


@pytest.mark.parametrize("written", [b"7700009876.5", b"77000098761234567890123", b"7.700009876e9"])
def test_an_account_number_written_as_a_number_is_not_quoted_in_the_reason(written: bytes) -> None:
    # The reason goes into the DEAD_LETTER alert, which masks account ids (a helper's hunt: it
    # quoted the number). The dead letter keeps the original bytes, as for every record.
    raw = _requested().replace(b'"account_id":"7700009876"', b'"account_id":' + written)
    assert raw != _requested()
    got = _parse(P, None, raw)
    assert isinstance(got, Rejection) and (got.error, got.field) == ("wrong_type", "account_id")
    assert "77000" not in got.reason and "must be a string, got a number" in got.reason
    amount = _parse(P, None, _requested().replace(b'"amount":25000', b'"amount":25000.5'))
    # Nor an amount's (a shifted column puts the account id there): its shape only.
    assert isinstance(amount, Rejection) and "25000" not in amount.reason
    assert amount.reason.endswith("got a number with a fraction or exponent")


ACCOUNT = "7700123456789"


@pytest.mark.parametrize(
    ("stream", "key", "field", "written"),
    [
        (P, ACCOUNT.encode(), None, None),  # a producer that keys its records by account
        (P, None, "type", ACCOUNT),
        (P, None, "occurred_at", ACCOUNT),
        (P, None, "occurred_at", "2025-03-29 7700-1234-56789"),
        (P, None, "currency", ACCOUNT),
        (P, None, "currency", "ID " + ACCOUNT),
        (L, None, "currency", float(ACCOUNT)),
        (P, b"R1", "reference", ACCOUNT),
    ],
)
def test_an_account_number_in_a_field_a_reason_quotes_is_masked(
    stream: Stream, key: bytes | None, field: str | None, written: Any
) -> None:
    # A shifted column (or records keyed by account) puts an account number where the reason
    # quotes the field: the reason goes into the DEAD_LETTER alert, which masks account ids, the
    # dashboard and reports. Its last four digits stay, as in alerts; the dead letter keeps the
    # original bytes.
    extra = {} if field is None else {field: written}
    raw = _requested(**extra) if stream is P else ledger("d1", "debited", "R1", 0, **extra)
    got = _parse(stream, key, raw)
    assert isinstance(got, Rejection), got
    assert not any(ACCOUNT[i : i + 5] in got.reason.replace("-", "") for i in range(len(ACCOUNT) - 4)), got.reason
    eng = PartitionEngine(0, Params())
    (alert,) = [d.value for d in eng.on_record(stream, 0, key, raw, T0) if d.role == "alerts"]
    assert alert["kind"] == "DEAD_LETTER" and "01234" not in alert["summary"].replace("-", ""), alert["summary"]


@pytest.mark.parametrize("written", ["2025-03-29 07:00:00Z", "29/03/2025 07:00:00+07:00"])
def test_a_date_time_written_with_a_space_is_quoted_whole_in_the_reason(written: str) -> None:
    # The commonest wrong `occurred_at`: its date and hour make a run of ten digits, masked as
    # an account number, which hid what the reason is about.
    got = _parse(P, None, _requested(occurred_at=written))
    assert isinstance(got, Rejection) and got.error == "bad_timestamp"
    assert f"'{written}'" in got.reason, got.reason


def test_a_huge_record_key_is_masked_as_far_as_the_reason_shows_it() -> None:
    # A record key has no size limit (only the value's is checked): masked whole, a megabyte of
    # digits cost the rejected record 0.6 s of the partition's loop.
    key = (ACCOUNT * 80_000).encode()
    started = time.perf_counter()
    got = _parse(P, key, _requested())
    took_s = time.perf_counter() - started
    assert isinstance(got, Rejection) and got.error == "key_mismatch"
    assert got.reason.startswith("the record key '" + "*" * 64 + "…'"), got.reason
    assert took_s < 0.05, took_s
