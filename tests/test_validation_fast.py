"""The parsers' fast paths against their detailed paths: on any input the fast path either
declines (None) or gives exactly what the detailed path gives, so the accept/reject decisions and
the dead-letter texts are the detailed path's; and the record types the readers build."""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import eventtime
from stream.core.records import MAX_AMOUNT, LedgerEvent, PaymentEvent, event_fields
from stream.core.validation import (
    MAX_MERCHANT_NAME_CHARS,
    MAX_REFERENCE_CHARS,
    MAX_STRING_CHARS,
    Rejection,
    _detailed_ledger,
    _detailed_payment,
    _fast_ledger,
    _fast_payment,
    parse_ledger,
    parse_payment,
)
from stream.drivers.replayfile import KafkaRecord, ReplayLineError, line_fields, parse_line
from stream.worker.boundary import LiveRecord
from tests.records import ledger, payment

PAYMENT_FIELDS = (
    "event_id",
    "type",
    "reference",
    "occurred_at",
    "amount",
    "currency",
    "account_id",
    "merchant_id",
    "merchant_name",
    "mcc",
    "acquirer_id",
    "issuer_id",
    "switch_id",
    "terminal_id",
    "channel",
    "response_code",
)
LEDGER_FIELDS = ("event_id", "type", "reference", "occurred_at", "amount", "currency", "entry_id", "account_id")
# Lengths at and around every limit, and characters the identifier rule or JSON escapes care about.
LENGTHS = sorted({0, 1, MAX_REFERENCE_CHARS, MAX_STRING_CHARS, MAX_MERCHANT_NAME_CHARS} | {65, 129, 257})
CHARS = ["x", "é", "\x00", "\x1b", "\x7f", "\x85", "\u202e", "\u2068", '"', "\\", "\U0001f600"]
TIMES = [
    "2025-03-29T09:00:00.234+07:00",
    "2025-03-29T02:00:00.450Z",
    "2025-03-29T02:00:00.45Z",
    "2025-03-29T02:00:00Z",
    "2025-03-29T02:00:00.4501234Z",
    "2025-03-29T02:00:00.45a+07:00",
    "2025-03-29T02:00:00,450+07:00",
    "2025-02-30T02:00:00.450Z",
    "2025-03-29T02:00:00.450+24:00",
    "",
]


def _text() -> st.SearchStrategy[str]:
    return st.builds(lambda n, c: (c * n)[:n], st.sampled_from(LENGTHS), st.sampled_from(CHARS))


def _json_value() -> st.SearchStrategy[Any]:
    return st.one_of(
        _text(),
        st.sampled_from(TIMES),
        st.sampled_from(["requested", "settled", "failed", "debited", "reversed", "IDR", "idr", "R1"]),
        st.none(),
        st.booleans(),
        st.integers(-2, 10**12 + 1),
        st.sampled_from([10**12, 10**12 + 1, 0, 25_000]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=2),
    )


def _edits(fields: tuple[str, ...]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    # (field, new value); the value `...` deletes the field.
    return st.lists(st.tuples(st.sampled_from(fields), st.one_of(_json_value(), st.just(...))), max_size=4)


def _edited(raw: bytes, edits: list[tuple[str, Any]]) -> bytes:
    obj = orjson.loads(raw)
    for field, value in edits:
        if value is ...:
            obj.pop(field, None)
        else:
            obj[field] = value
    return orjson.dumps(obj)


KEYS = st.sampled_from([None, b"R1", b"R2", b"\xff", "é".encode()])


def _typed_exactly(parsed: object) -> bool:
    """An accepted event holds exactly the types its fields are annotated with: `int` for the
    two numbers (not a bool or a float), `str` for the texts, None only for an optional field.
    Compiled (`make compiled`), the engine's code checks them where it reads them: a float read
    as an int is a TypeError inside the worker, not a dead letter. Tuple equality, which the
    tests above compare with, takes `True`, `1.0` and `1` as equal. (None and rejections: true.)"""
    if not isinstance(parsed, PaymentEvent | LedgerEvent):
        return True
    optional = set(type(parsed)._field_defaults)
    for name, v in zip(parsed._fields, parsed, strict=True):
        if name in ("occurred_at_ms", "amount"):
            ok = type(v) is int
        else:
            ok = type(v) is str or (v is None and name in optional)
        if not ok:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["requested", "settled", "failed"]), _edits(PAYMENT_FIELDS), KEYS, st.sampled_from(TIMES))
def test_the_payment_fast_path_gives_the_detailed_paths_answer_or_declines(
    typ: str, edits: list[tuple[str, Any]], key: bytes | None, occurred_at: str
) -> None:
    eventtime.parse_ms("2025-03-29T09:00:00.111+07:00")  # its second cached, as a worker would have
    value = _edited(payment("e1", typ, "R1", 0, occurred_at=occurred_at), edits)
    detailed = _detailed_payment(key, value)
    fast = _fast_payment(key, value)
    assert fast is None or (fast == detailed and type(fast) is PaymentEvent), (fast, detailed)
    assert parse_payment(key, value) == detailed
    assert _typed_exactly(fast) and _typed_exactly(detailed), (fast, detailed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["debited", "reversed"]), _edits(LEDGER_FIELDS), KEYS, st.sampled_from(TIMES))
def test_the_ledger_fast_path_gives_the_detailed_paths_answer_or_declines(
    typ: str, edits: list[tuple[str, Any]], key: bytes | None, occurred_at: str
) -> None:
    eventtime.parse_ms("2025-03-29T02:00:00.111Z")
    value = _edited(ledger("d1", typ, "R1", 0, occurred_at=occurred_at), edits)
    detailed = _detailed_ledger(key, value)
    fast = _fast_ledger(key, value)
    assert fast is None or (fast == detailed and type(fast) is LedgerEvent), (fast, detailed)
    assert parse_ledger(key, value) == detailed
    assert _typed_exactly(fast) and _typed_exactly(detailed), (fast, detailed)


# A JSON value of another type than its field's, for every field: the numbers a producer might
# send for a text, a bool or float for the integer `amount`, text for a number.
OTHER_TYPES = [True, False, 1.0, 25_000.0, "25000", [], {}, [25_000], {"amount": 25_000}]
_TEXT_FIELDS = frozenset(PAYMENT_FIELDS + LEDGER_FIELDS) - {"type", "amount", "currency", "occurred_at"}


@pytest.mark.parametrize("wrong", OTHER_TYPES, ids=repr)
@pytest.mark.parametrize("field", sorted(set(PAYMENT_FIELDS + LEDGER_FIELDS)))
def test_a_field_of_another_json_type_is_rejected_by_both_paths(field: str, wrong: Any) -> None:
    # Only text where text goes is taken; anything else is a dead letter from the detailed path,
    # and the fast path declines it (it must not hand the engine a bool or float as `amount`).
    taken = type(wrong) is str and field in _TEXT_FIELDS
    records = [(typ, payment, _fast_payment, parse_payment) for typ in ("requested", "settled", "failed")]
    records += [(typ, ledger, _fast_ledger, parse_ledger) for typ in ("debited", "reversed")]
    for typ, build, fast_path, parse in records:
        if field not in (PAYMENT_FIELDS if build is payment else LEDGER_FIELDS):
            continue
        value = _edited(build("e1", typ, "R1", 0), [(field, wrong)])
        got = parse(None, value)
        fast = fast_path(None, value)
        assert isinstance(got, Rejection) != taken, (typ, got)
        assert fast is None or fast == got, (typ, fast)
        assert _typed_exactly(got) and _typed_exactly(fast), (typ, got, fast)


def test_the_fast_paths_take_the_common_records() -> None:
    # Declining is always correct, so a fast path that declined everything would pass the
    # properties above: the usual records must take it.
    for typ in ("requested", "settled", "failed"):
        for t in TIMES[:5]:
            got = _fast_payment(b"R1", payment("e1", typ, "R1", 0, occurred_at=t, terminal_id="T1", channel="MPM"))
            assert type(got) is PaymentEvent and got == _detailed_payment(
                b"R1", payment("e1", typ, "R1", 0, occurred_at=t, terminal_id="T1", channel="MPM")
            )
    for typ in ("debited", "reversed"):
        got = _fast_ledger(None, ledger("d1", typ, "R1", 0))
        assert type(got) is LedgerEvent


def test_the_limits_at_their_edges_are_the_detailed_paths() -> None:
    # The fast paths write the limits as literals: at each limit they take the record, one past
    # it they decline (and the detailed path rejects it).
    limits = {"reference": MAX_REFERENCE_CHARS, "merchant_name": MAX_MERCHANT_NAME_CHARS}
    strings = [f for f in PAYMENT_FIELDS if f not in ("type", "amount", "currency", "occurred_at")]
    for field in strings:
        limit = limits.get(field, MAX_STRING_CHARS)
        for n in (limit, limit + 1):
            value = _edited(payment("e1", "requested", "R1", 0), [(field, "x" * n)])
            assert (_fast_payment(None, value) is not None) == (n == limit), (field, n)
            assert parse_payment(None, value) == _detailed_payment(None, value)
    for field in ("event_id", "reference", "entry_id", "account_id"):
        limit = limits.get(field, MAX_STRING_CHARS)
        for n in (limit, limit + 1):
            value = _edited(ledger("d1", "debited", "R1", 0), [(field, "é" * n)])
            assert (_fast_ledger(None, value) is not None) == (n == limit), (field, n)
    for amount in (MAX_AMOUNT, MAX_AMOUNT + 1, 1, 0):
        ok = 0 < amount <= MAX_AMOUNT
        value = ledger("d1", "debited", "R1", 0, amount=amount)
        assert (_fast_ledger(None, value) is not None) == ok
        assert isinstance(parse_ledger(None, value), Rejection) == (not ok)
        value = payment("e1", "settled", "R1", 0, amount=amount)
        assert (_fast_payment(None, value) is not None) == ok
        assert isinstance(parse_payment(None, value), Rejection) == (not ok)


def test_event_fields_rebuild_the_event() -> None:
    e = LedgerEvent("e1", "debited", "R1", "2025-03-29T00:00:00Z", 1743206400000, 5000, "J1", "0012")
    fields = event_fields(e)
    assert fields == ("e1", "debited", "R1", "2025-03-29T00:00:00Z", 1743206400000, 5000, "J1", "0012")
    # A plain tuple (orjson writes no tuple subclass), saved as the array a list gives.
    assert type(fields) is tuple
    assert orjson.dumps(fields) == orjson.dumps(list(e))
    assert LedgerEvent(*event_fields(e)) == e
    p = parse_payment(None, payment("e1", "requested", "R1", 0))
    assert isinstance(p, PaymentEvent) and PaymentEvent(*event_fields(p)) == p


def test_one_record_type_for_the_live_worker_the_broker_and_a_replay_file() -> None:
    assert LiveRecord is KafkaRecord
    line = b'{"topic":"t","partition":1,"offset":2,"timestamp_ms":3,"key":"k","value":"v"}'
    rec = parse_line(line, "f", 1)
    assert type(rec) is KafkaRecord and rec == KafkaRecord("t", 1, 2, 3, b"k", b"v")
    assert [KafkaRecord(*f) for f in line_fields([line], "f", lambda i: i + 1)] == [rec]
    # Pickled (a parallel replay's jobs) and renumbered (`_replace`) as a named tuple.
    assert pickle.loads(pickle.dumps(rec)) == rec and type(pickle.loads(pickle.dumps(rec))) is KafkaRecord
    assert rec._replace(offset=9).offset == 9 and rec.offset == 2


_LINE_KEYS = ("topic", "partition", "offset", "timestamp_ms", "key", "value", "key_b64", "value_b64")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_LINE_KEYS), st.one_of(_json_value(), st.just(...))), max_size=4))
def test_a_replay_line_is_read_into_exactly_the_types_of_a_kafka_record(edits: list[tuple[str, Any]]) -> None:
    # What the engines take from a replay file: compiled, a bool or a float where an `int` is
    # annotated (partition, offset, timestamp) is a TypeError in the engine, not a broken line.
    line = b'{"topic":"qris.payment-requests","partition":1,"offset":2,"timestamp_ms":3,"key":"R1","value":"{}"}'
    raw = _edited(line, edits)
    try:
        got = [KafkaRecord(*f) for f in line_fields([raw], "f", lambda i: i + 1)]
    except ReplayLineError:
        got = []
    with contextlib.suppress(ReplayLineError):
        got.append(parse_line(raw, "f", 1))
    for rec in got:
        topic, partition, offset, timestamp_ms, key, value = rec
        assert type(topic) is str and type(partition) is int and type(offset) is int, rec
        assert timestamp_ms is None or type(timestamp_ms) is int, rec
        assert (key is None or type(key) is bytes) and (value is None or type(value) is bytes), rec


def test_an_amount_out_of_range_is_told_by_its_size_not_its_digits() -> None:
    # A producer that shifted a column puts an account number in `amount`: the reason reaches
    # alerts, the dashboard and reports, so it names the number's size only.
    for amount, told in ((8675309000006, "a 13-digit number"), (-8675309, "a 7-digit negative number"), (0, "0")):
        got = parse_ledger(None, ledger("d1", "debited", "R1", 0, amount=amount))
        assert isinstance(got, Rejection) and got.reason.endswith(f"got {told}"), got
        assert str(abs(amount)) not in got.reason or amount == 0


def test_an_amount_of_the_wrong_type_is_told_without_its_value() -> None:
    # A producer that shifted a column puts the account id, a JSON string, in `amount`: the
    # reason travels to the DEAD_LETTER alert, the dashboard and reports.
    from stream.core.validation import parse_payment

    for amount, said in (
        ('"726162705258"', "a string of 12 character(s) (digits)"),
        ("7261627052.58", "a number with a fraction or exponent"),
        ("123456789012345678901234567890", "or an integer beyond 64 bits"),
    ):
        value = (
            b'{"event_id":"e","type":"requested","reference":"R","occurred_at":"2025-03-29T02:00:00Z",'
            b'"currency":"IDR","account_id":"726162705258","merchant_id":"m","amount":' + amount.encode() + b"}"
        )
        reason = parse_payment(b"R", value).reason
        assert said in reason and "7261627052" not in reason and "12345678901" not in reason, reason


def test_a_value_that_is_not_an_object_is_told_in_json_s_words() -> None:
    # The reason reaches the DEAD_LETTER alert, the dashboard and reports, read by people who
    # know JSON's names (`null`), not Python's (`NoneType`).
    for value, said in (
        (b"null", "JSON null"),
        (b'"726162705258"', "a JSON string"),
        (b"[1]", "a JSON array"),
        (b"true", "a JSON boolean"),
        (b"12.5", "a JSON number"),
        (b"7", "a JSON number"),
    ):
        got = parse_payment(b"R", value)
        assert isinstance(got, Rejection) and got.error == "not_an_object"
        assert got.reason == f"the value is {said}, not an object"


def _format_ms_plainly(ms: int) -> str:
    # RFC 3339 text of epoch milliseconds, computed field by field (what the per-minute table
    # in `eventtime.format_ms` must give for every millisecond).
    days, rem = divmod(ms, 86_400_000)
    year, month, day = eventtime.civil_from_days(days)
    secs, millis = divmod(rem, 1000)
    hour, secs = divmod(secs, 3600)
    minute, second = divmod(secs, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


@settings(max_examples=500, deadline=None)
@given(ms=st.integers(-(2**62), 2**62) | st.integers(-62_167_219_200_001, 253_402_300_800_000))
def test_format_ms_from_its_tables_is_the_plain_computation(ms: int) -> None:
    assert eventtime.format_ms(ms) == _format_ms_plainly(ms)
    assert eventtime.format_ms(ms) == _format_ms_plainly(ms)  # (the second from the minute's table)


def test_format_ms_keeps_its_minute_table_bounded() -> None:
    for minute in range(eventtime._MINUTE_TEXT_MAX + 5):
        assert eventtime.format_ms(minute * 60_000 + 59_999) == _format_ms_plainly(minute * 60_000 + 59_999)
    assert len(eventtime._MINUTE_TEXT) <= eventtime._MINUTE_TEXT_MAX


@settings(max_examples=300, deadline=None)
@given(reference=st.text(max_size=200), deadline_ms=st.integers(-(2**63), 2**63))
def test_a_refund_id_written_out_is_the_digest_of_its_parts(reference: str, deadline_ms: int) -> None:
    # Refund ids are what the refund service deduplicates on: the hot path's written-out
    # encoding must give the one `_digest` gives, for any reference.
    from stream.core import ids

    try:
        expected = "rf_" + ids._digest("refund", reference, deadline_ms)
    except UnicodeEncodeError:  # (a lone surrogate: no id either way)
        with pytest.raises(UnicodeEncodeError):
            ids.refund_id(reference, deadline_ms)
        return
    assert ids.refund_id(reference, deadline_ms) == expected
