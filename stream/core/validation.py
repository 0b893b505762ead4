"""Parsing raw Kafka records into contract records, or rejecting them with a reason.

One strict parser per input topic, with a fast path for well-formed records and a detailed
path that finds and words the first broken rule. It agrees with `schemas/<topic>.schema.json` (tested), and
adds what a schema cannot see: the record key must equal `reference`, the value must be UTF-8
and at most 64 KiB (checked before parsing, so a huge value costs nothing), and `amount` must be
a JSON integer (`25000.0` is refused). Sizes and characters (CONTRACT.md): every string field at
most 128 characters (code points), `merchant_name` 256, `reference` 64; identifiers hold no
control characters (U+0000-U+001F, U+007F-U+009F) and no bidirectional embeddings, overrides or
isolates (U+202A-U+202E, U+2066-U+2069). Optional string fields may be `null`, read as absent,
so a producer that writes nulls does not lose settlements. Input quoted in a reason is escaped
(`text.escape_text`), with long numbers masked (`text.escape_masked`): a reason travels to the
DEAD_LETTER alert, the dashboard and reports, and a producer that shifted a column or keyed its
records by account puts an account number in the field it quotes. Imports nothing outside the core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from . import codec
from .eventtime import BadTimestamp, parse_ms
from .records import (
    CURRENCY,
    LEDGER_TYPES,
    MAX_AMOUNT,
    PAYMENT_OPTIONAL_FIELDS,
    PAYMENT_TYPES,
    LedgerEvent,
    PaymentEvent,
    Stream,
)
from .text import escape_masked, escape_text

MAX_VALUE_BYTES: Final = 65_536  # a record value is at most 64 KiB
MAX_STRING_CHARS: Final = 128  # every string field, unless named below
MAX_MERCHANT_NAME_CHARS: Final = 256
MAX_REFERENCE_CHARS: Final = 64
# Identifier fields: no control or bidirectional formatting characters.
IDENTIFIER_FIELDS: Final = frozenset(
    {
        "event_id",
        "reference",
        "entry_id",
        "account_id",
        "merchant_id",
        "acquirer_id",
        "issuer_id",
        "switch_id",
        "terminal_id",
    }
)
_OPTIONAL_MAX_CHARS: Final = tuple(
    MAX_MERCHANT_NAME_CHARS if f == "merchant_name" else MAX_STRING_CHARS for f in PAYMENT_OPTIONAL_FIELDS
)
# C0 controls, DEL and C1 controls; bidirectional embeddings/overrides (LRE RLE PDF LRO RLO) and
# isolates (LRI RLI FSI PDI), the characters of "Trojan Source" (CVE-2021-42574).
_FORBIDDEN_IN_IDENTIFIER: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# The raw bytes through which such a character can reach a parsed string: a JSON escape
# (`\t`, `\u001b`, ...: C0 controls cannot appear raw in valid JSON), DEL, or the UTF-8 of a C1
# control or of a bidirectional character. A value without any of them needs no per-field check.
# An ASCII value (most) can hold only the first two: the fast paths then search for a backslash
# or DEL (a superset; the per-field check decides), not with the expression, which tries its
# alternatives at every byte (a fifth of a parse).
_SUSPECT_BYTES: Final = re.compile(b"\\\\[bfnrtu]|\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]")
# The two bytes as ints: `int in bytes` is one memchr, while `bytes in bytes` first tries its
# needle as an int and raises (and clears) a TypeError each time, five times as slow.
_BACKSLASH: Final = ord("\\")
_DEL: Final = 0x7F
_loads: Final = codec.loads
# `bytes.isascii` itself: compiled, `value.isascii()` looks the method up by name at each call.
_is_ascii: Final = bytes.isascii
_JSONDecodeError: Final = codec.JSONDecodeError
_new_tuple: Final = tuple.__new__


ErrorCode = Literal[
    "too_large",
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "key_mismatch",
    "bad_timestamp",
    "bad_currency",
    "internal_error",
]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not processed. `reason` is a sentence for a person."""

    error: ErrorCode
    reason: str
    field: str | None = None

    def __reduce__(self) -> tuple[type[Rejection], tuple[Any, ...]]:
        # Rebuilt by its constructor when pickled: see `partition.Params.__reduce__`.
        return Rejection, tuple(getattr(self, f.name) for f in fields(self))


class _Reject(Exception):
    def __init__(self, error: ErrorCode, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.rejection = Rejection(error, reason, field)


# A JSON value's kind in JSON's words, for a value that is not an object: the reason is read by
# payment operations, who know JSON's names, not Python's (`NoneType` for `null`).
_JSON_KINDS: Final = {
    type(None): "JSON null",
    bool: "a JSON boolean",
    int: "a JSON number",
    float: "a JSON number",
    str: "a JSON string",
    list: "a JSON array",
}


def _decode(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise _Reject("invalid_json", "the record has no value (null / tombstone)")
    try:
        obj = codec.loads(value)
    except codec.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject("not_utf8", "the value is not UTF-8 text") from None
        raise _Reject("invalid_json", f"the value is not valid JSON: {escape_text(str(exc), 200)}") from None
    if type(obj) is not dict:
        raise _Reject("not_an_object", f"the value is {_JSON_KINDS.get(type(obj), 'JSON')}, not an object")
    return obj


def _forbidden_character(v: str) -> str | None:
    # The first character an identifier may not hold, worded for a reason, or None.
    bad = _FORBIDDEN_IN_IDENTIFIER.search(v)
    if bad is None:
        return None
    kind = "a bidirectional formatting" if bad.group() >= "\u202a" else "a control"
    return (
        f"contains {kind} character (U+{ord(bad.group()):04X}) at position {bad.start()}; "
        "identifiers may not hold control or bidirectional formatting characters"
    )


def identifier_problem(v: str) -> str | None:
    """Why `v` is no identifier by the contract's rules (not empty, at most 128 characters, no
    control or bidirectional formatting character), worded to follow the value's name; None
    when it is one. For identifiers given elsewhere than in a record (a setting listing account
    ids), so that they are held to the rules the records' are.

    >>> identifier_problem("7700001111") is None
    True
    >>> identifier_problem("77\\t01").split(";")[0]
    'contains a control character (U+0009) at position 2'
    >>> identifier_problem("7" * 129)
    'is 129 characters, at most 128 allowed'
    """
    if not v:
        return "is empty"
    if len(v) > MAX_STRING_CHARS:
        return f"is {len(v)} characters, at most {MAX_STRING_CHARS} allowed"
    return _forbidden_character(v)


def _check_text(field: str, v: str, max_len: int) -> None:
    if len(v) > max_len:
        raise _Reject("bad_value", f"'{field}' is {len(v)} characters, at most {max_len} allowed", field)
    if field in IDENTIFIER_FIELDS:
        bad = _forbidden_character(v)
        if bad is not None:
            raise _Reject("bad_value", f"'{field}' {bad}", field)


def _string(obj: dict[str, Any], field: str, max_len: int = MAX_STRING_CHARS) -> str:
    v = obj.get(field)
    if v is None:
        raise _Reject("missing_field", f"required field '{field}' is missing or null", field)
    if type(v) is not str:
        raise _Reject("wrong_type", f"'{field}' must be a string, got {_json_type(v)}", field)
    if not v:
        raise _Reject("bad_value", f"'{field}' must not be empty", field)
    _check_text(field, v, max_len)
    return v


def _optional_string(obj: dict[str, Any], field: str, max_len: int = MAX_STRING_CHARS) -> str | None:
    v = obj.get(field)
    if v is None:
        return None
    if type(v) is str:
        _check_text(field, v, max_len)
        return v
    raise _Reject("wrong_type", f"'{field}' must be a string when present, got {_json_type(v)}", field)


def _json_type(v: object) -> str:
    """`v`'s JSON type in words, never a number's value: an account number written as a number
    (or in the wrong field) would be quoted in the dead letter's reason and the DEAD_LETTER alert,
    which mask account ids."""
    if v is None:
        return "null"
    if type(v) is bool:
        return "boolean"
    if type(v) is float:
        if v.is_integer() and abs(v) >= 2**63:
            # orjson reads an integer past 64 bits as a float: the producer may have written one.
            return "a number with a fraction or exponent, or an integer beyond 64 bits"
        return "a number with a fraction or exponent"
    if type(v) is int:
        return "an integer"
    if type(v) is str:
        return f"a string ('{escape_masked(v, 20)}')"
    return "an array" if type(v) is list else "an object"


def _common(obj: dict[str, Any], key: bytes | None, types: frozenset[str]) -> tuple[str, str, str, str, int, int]:
    event_id = _string(obj, "event_id")
    typ = _string(obj, "type")
    if typ not in types:
        allowed = " | ".join(sorted(types))
        raise _Reject("bad_value", f"'type' is '{escape_masked(typ, 40)}', expected {allowed}", "type")
    reference = _string(obj, "reference", MAX_REFERENCE_CHARS)
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(
                "key_mismatch", "the record key is not UTF-8, so it cannot equal 'reference'", "reference"
            ) from None
        if key_text != reference:
            raise _Reject(
                "key_mismatch",
                f"the record key '{escape_masked(key_text, 64)}' differs from reference '{escape_masked(reference)}'",
                "reference",
            )
    if obj.get("occurred_at") == "":
        # (Not a timestamp, as the dead-letter schema words `bad_timestamp`, not an empty name.)
        raise _Reject("bad_timestamp", "'occurred_at' is empty: expected RFC 3339 with an offset", "occurred_at")
    occurred_at = _string(obj, "occurred_at")
    try:
        occurred_at_ms = parse_ms(occurred_at)
    except BadTimestamp as exc:
        raise _Reject("bad_timestamp", f"'occurred_at': {escape_masked(str(exc), 200)}", "occurred_at") from None
    amount = obj.get("amount")
    if amount is None:
        raise _Reject("missing_field", "required field 'amount' is missing or null", "amount")
    if type(amount) is not int:
        # Not its value either: a shifted column puts the account id (a JSON string) here.
        if type(amount) is str:
            got = f"a string of {len(amount)} character(s)" + (
                " (digits)" if amount.isascii() and amount.isdigit() else ""
            )
        else:
            got = _json_type(amount)
        raise _Reject("wrong_type", f"'amount' must be a JSON integer of rupiah, got {got}", "amount")
    if amount <= 0 or amount > MAX_AMOUNT:
        # Its size, not its digits: a producer that shifted a column sends an account number
        # here, and the reason travels to alerts, the dashboard and reports.
        got = "0" if amount == 0 else f"a {len(str(abs(amount)))}-digit {'negative ' if amount < 0 else ''}number"
        raise _Reject("bad_value", f"'amount' must be > 0 and <= 10^12 rupiah, got {got}", "amount")
    currency = obj.get("currency")
    if currency is None:
        raise _Reject("missing_field", "required field 'currency' is missing or null", "currency")
    if type(currency) is not str:
        raise _Reject("wrong_type", f"'currency' must be a string, got {_json_type(currency)}", "currency")
    if currency != CURRENCY:
        raise _Reject(
            "bad_currency",
            f"'currency' is '{escape_masked(currency, 10)}'; only IDR is accepted",
            "currency",
        )
    return event_id, typ, reference, occurred_at, occurred_at_ms, amount


def _fast_payment(key: bytes | None, value: bytes) -> PaymentEvent | None:
    # The common case in one frame, with no calls per field; anything unusual returns None and
    # the caller takes the detailed path, which is the one that words rejections. The limits
    # are literals (MAX_STRING_CHARS 128, MAX_REFERENCE_CHARS 64, MAX_MERCHANT_NAME_CHARS 256,
    # MAX_AMOUNT 10**12: tests/test_validation_fast.py checks each at its edge), each field is
    # read once, and the event is built with `tuple.__new__` (a named tuple's own `__new__` is a
    # Python frame). The fields are read with `obj.get`, not a bound `get` kept in a local: on a
    # value typed as a dict, compiled, that is a direct dict look-up, not a call through Python's
    # protocol (and interpreted, a specialised method call, no slower).
    try:
        parsed = _loads(value)
    except _JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    obj: dict[str, Any] = parsed
    event_id = obj.get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= 128:
        return None
    reference = obj.get("reference")
    if type(reference) is not str or not 0 < len(reference) <= 64:
        return None
    occurred_at = obj.get("occurred_at")
    if type(occurred_at) is not str or len(occurred_at) > 128:
        return None
    amount = obj.get("amount")
    if type(amount) is not int or not 0 < amount <= 1_000_000_000_000 or obj.get("currency") != "IDR":
        return None
    if key is not None and key != reference.encode("utf-8"):
        return None
    typ = obj.get("type")
    account_id = obj.get("account_id")
    merchant_id = obj.get("merchant_id")
    if typ == "requested":
        if (
            type(account_id) is not str
            or not 0 < len(account_id) <= 128
            or type(merchant_id) is not str
            or not 0 < len(merchant_id) <= 128
        ):
            return None
    elif typ == "settled" or typ == "failed":
        if (account_id is not None and (type(account_id) is not str or len(account_id) > 128)) or (
            merchant_id is not None and (type(merchant_id) is not str or len(merchant_id) > 128)
        ):
            return None
    else:
        return None
    merchant_name = obj.get("merchant_name")
    mcc = obj.get("mcc")
    acquirer_id = obj.get("acquirer_id")
    issuer_id = obj.get("issuer_id")
    switch_id = obj.get("switch_id")
    terminal_id = obj.get("terminal_id")
    channel = obj.get("channel")
    response_code = obj.get("response_code")
    if (
        (merchant_name is not None and (type(merchant_name) is not str or len(merchant_name) > 256))
        or (mcc is not None and (type(mcc) is not str or len(mcc) > 128))
        or (acquirer_id is not None and (type(acquirer_id) is not str or len(acquirer_id) > 128))
        or (issuer_id is not None and (type(issuer_id) is not str or len(issuer_id) > 128))
        or (switch_id is not None and (type(switch_id) is not str or len(switch_id) > 128))
        or (terminal_id is not None and (type(terminal_id) is not str or len(terminal_id) > 128))
        or (channel is not None and (type(channel) is not str or len(channel) > 128))
        or (response_code is not None and (type(response_code) is not str or len(response_code) > 128))
    ):
        return None
    try:
        occurred_at_ms = parse_ms(occurred_at)
    except BadTimestamp:
        return None
    if (_BACKSLASH in value or _DEL in value) if _is_ascii(value) else _SUSPECT_BYTES.search(value) is not None:
        bad = _FORBIDDEN_IN_IDENTIFIER.search
        ids = (event_id, reference, account_id, merchant_id, acquirer_id, issuer_id, switch_id, terminal_id)
        if any(v is not None and bad(v) for v in ids):
            return None
    return _new_tuple(
        PaymentEvent,
        (
            event_id,
            typ,
            reference,
            occurred_at,
            occurred_at_ms,
            amount,
            account_id,
            merchant_id,
            merchant_name,
            mcc,
            acquirer_id,
            issuer_id,
            switch_id,
            terminal_id,
            channel,
            response_code,
        ),
    )


def _fast_ledger(key: bytes | None, value: bytes) -> LedgerEvent | None:
    # As `_fast_payment`.
    try:
        parsed = _loads(value)
    except _JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    obj: dict[str, Any] = parsed
    event_id = obj.get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= 128:
        return None
    typ = obj.get("type")
    if typ != "debited" and typ != "reversed":
        return None
    reference = obj.get("reference")
    if type(reference) is not str or not 0 < len(reference) <= 64:
        return None
    occurred_at = obj.get("occurred_at")
    if type(occurred_at) is not str or len(occurred_at) > 128:
        return None
    amount = obj.get("amount")
    if type(amount) is not int or not 0 < amount <= 1_000_000_000_000 or obj.get("currency") != "IDR":
        return None
    entry_id = obj.get("entry_id")
    if type(entry_id) is not str or not 0 < len(entry_id) <= 128:
        return None
    account_id = obj.get("account_id")
    if type(account_id) is not str or not 0 < len(account_id) <= 128:
        return None
    if key is not None and key != reference.encode("utf-8"):
        return None
    try:
        occurred_at_ms = parse_ms(occurred_at)
    except BadTimestamp:
        return None
    if (_BACKSLASH in value or _DEL in value) if _is_ascii(value) else _SUSPECT_BYTES.search(value) is not None:
        bad = _FORBIDDEN_IN_IDENTIFIER.search
        if bad(event_id) or bad(reference) or bad(entry_id) or bad(account_id):
            return None
    return _new_tuple(
        LedgerEvent, (event_id, typ, reference, occurred_at, occurred_at_ms, amount, entry_id, account_id)
    )


def _too_large(value: bytes) -> Rejection:
    return Rejection(
        "too_large",
        f"the value is {len(value):,} bytes, more than the {MAX_VALUE_BYTES:,} (64 KiB) a record value may have; "
        "it was not parsed",
    )


def parse_payment(key: bytes | None, value: bytes | None) -> PaymentEvent | Rejection:
    """Parse a `qris.payment-requests` record, or say why it is rejected.

    >>> r = parse_payment(b"R1", b'{"event_id":"e1","type":"settled","reference":"R1",'
    ...     b'"occurred_at":"2025-03-29T07:00:00+07:00","amount":25000,"currency":"IDR"}')
    >>> (r.type, r.occurred_at_ms, r.amount)
    ('settled', 1743206400000, 25000)
    >>> parse_payment(b"R2", b'{"event_id":"e1"}').error
    'missing_field'
    """
    if value is not None:
        if len(value) > MAX_VALUE_BYTES:
            return _too_large(value)
        fast = _fast_payment(key, value)
        if fast is not None:
            return fast
    return _detailed_payment(key, value)


def _detailed_payment(key: bytes | None, value: bytes | None) -> PaymentEvent | Rejection:
    if value is not None and len(value) > MAX_VALUE_BYTES:
        return _too_large(value)
    try:
        obj = _decode(value)
        event_id, typ, reference, occurred_at, occurred_at_ms, amount = _common(obj, key, PAYMENT_TYPES)
        if typ == "requested":
            account_id: str | None = _string(obj, "account_id")
            merchant_id: str | None = _string(obj, "merchant_id")
        else:
            account_id = _optional_string(obj, "account_id")
            merchant_id = _optional_string(obj, "merchant_id")
        opt = [_optional_string(obj, f, n) for f, n in zip(PAYMENT_OPTIONAL_FIELDS, _OPTIONAL_MAX_CHARS, strict=True)]
    except _Reject as exc:
        return exc.rejection
    return PaymentEvent(
        event_id,
        typ,  # type: ignore[arg-type]
        reference,
        occurred_at,
        occurred_at_ms,
        amount,
        account_id,
        merchant_id,
        *opt,
    )


def parse_ledger(key: bytes | None, value: bytes | None) -> LedgerEvent | Rejection:
    """Parse a `qris.ledger-debits` record, or say why it is rejected.

    >>> parse_ledger(None, b'{"event_id":"e9","type":"debited","reference":"R1","entry_id":"J1",'
    ...     b'"account_id":"0012","amount":25000.0,"currency":"IDR",'
    ...     b'"occurred_at":"2025-03-29T07:00:00Z"}').reason
    "'amount' must be a JSON integer of rupiah, got a number with a fraction or exponent"
    """
    if value is not None:
        if len(value) > MAX_VALUE_BYTES:
            return _too_large(value)
        fast = _fast_ledger(key, value)
        if fast is not None:
            return fast
    return _detailed_ledger(key, value)


def _detailed_ledger(key: bytes | None, value: bytes | None) -> LedgerEvent | Rejection:
    if value is not None and len(value) > MAX_VALUE_BYTES:
        return _too_large(value)
    try:
        obj = _decode(value)
        event_id, typ, reference, occurred_at, occurred_at_ms, amount = _common(obj, key, LEDGER_TYPES)
        entry_id = _string(obj, "entry_id")
        account_id = _string(obj, "account_id")
    except _Reject as exc:
        return exc.rejection
    return LedgerEvent(event_id, typ, reference, occurred_at, occurred_at_ms, amount, entry_id, account_id)  # type: ignore[arg-type]


def parse(stream: Stream, key: bytes | None, value: bytes | None) -> PaymentEvent | LedgerEvent | Rejection:
    """Parse a record of either input stream."""
    return parse_payment(key, value) if stream is Stream.P else parse_ledger(key, value)
