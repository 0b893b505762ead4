"""Parsing raw Kafka records into contract records, or rejecting them with a reason.

One strict parser per input topic, with a fast path for well-formed records and a detailed
path that finds and words the first broken rule. It agrees with `schemas/<topic>.schema.json` (tested), and
adds what a schema cannot see: the record key must equal `reference`, the value must be UTF-8,
and `amount` must be a JSON integer (`25000.0` is refused). Optional string fields may be
`null`, read as absent, so a producer that writes nulls does not lose settlements.
Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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

ErrorCode = Literal[
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


class _Reject(Exception):
    def __init__(self, error: ErrorCode, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.rejection = Rejection(error, reason, field)


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
        raise _Reject("invalid_json", f"the value is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise _Reject("not_an_object", f"the value is JSON {type(obj).__name__}, not an object")
    return obj


def _string(obj: dict[str, Any], field: str, max_len: int | None = None) -> str:
    v = obj.get(field)
    if v is None:
        raise _Reject("missing_field", f"required field '{field}' is missing or null", field)
    if type(v) is not str:
        raise _Reject("wrong_type", f"'{field}' must be a string, got {_json_type(v)}", field)
    if not v:
        raise _Reject("bad_value", f"'{field}' must not be empty", field)
    if max_len is not None and len(v) > max_len:
        raise _Reject("bad_value", f"'{field}' is {len(v)} chars, at most {max_len} allowed", field)
    return v


def _optional_string(obj: dict[str, Any], field: str) -> str | None:
    v = obj.get(field)
    if v is None or type(v) is str:
        return v
    raise _Reject("wrong_type", f"'{field}' must be a string when present, got {_json_type(v)}", field)


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "boolean"
    if type(v) is float:
        return f"a number with a fraction or exponent ({v!r})"
    if type(v) is int:
        return "an integer"
    if type(v) is str:
        return f"a string ({v[:20]!r})"
    return "an array" if type(v) is list else "an object"


def _common(obj: dict[str, Any], key: bytes | None, types: frozenset[str]) -> tuple[str, str, str, str, int, int]:
    event_id = _string(obj, "event_id", 128)
    typ = _string(obj, "type")
    if typ not in types:
        allowed = " | ".join(sorted(types))
        raise _Reject("bad_value", f"'type' is {typ[:40]!r}, expected {allowed}", "type")
    reference = _string(obj, "reference", 64)
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(
                "key_mismatch", "the record key is not UTF-8, so it cannot equal 'reference'", "reference"
            ) from None
        if key_text != reference:
            raise _Reject(
                "key_mismatch", f"the record key {key_text[:64]!r} differs from reference {reference!r}", "reference"
            )
    occurred_at = _string(obj, "occurred_at")
    try:
        occurred_at_ms = parse_ms(occurred_at)
    except BadTimestamp as exc:
        raise _Reject("bad_timestamp", f"'occurred_at': {exc}", "occurred_at") from None
    amount = obj.get("amount")
    if amount is None:
        raise _Reject("missing_field", "required field 'amount' is missing or null", "amount")
    if type(amount) is not int:
        raise _Reject("wrong_type", f"'amount' must be a JSON integer of rupiah, got {_json_type(amount)}", "amount")
    if amount <= 0 or amount > MAX_AMOUNT:
        raise _Reject("bad_value", f"'amount' must be > 0 and <= 10^12 rupiah, got {amount}", "amount")
    currency = obj.get("currency")
    if currency is None:
        raise _Reject("missing_field", "required field 'currency' is missing or null", "currency")
    if type(currency) is not str:
        raise _Reject("wrong_type", f"'currency' must be a string, got {_json_type(currency)}", "currency")
    if currency != CURRENCY:
        raise _Reject("bad_currency", f"'currency' is {currency[:10]!r}; only IDR is accepted", "currency")
    return event_id, typ, reference, occurred_at, occurred_at_ms, amount


def _fast_common(obj: Any, key: bytes | None, types: frozenset[str]) -> tuple[str, str, str, str, int, int] | None:
    # The common case in one pass with no calls per field; anything unusual returns None and
    # the caller takes the detailed path, which is the one that words rejections.
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id, typ, reference, occurred_at, amount = (
        get("event_id"),
        get("type"),
        get("reference"),
        get("occurred_at"),
        get("amount"),
    )
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 128
        and type(typ) is str
        and typ in types
        and type(reference) is str
        and 0 < len(reference) <= 64
        and type(occurred_at) is str
        and type(amount) is int
        and 0 < amount <= MAX_AMOUNT
        and get("currency") == CURRENCY
        and (key is None or key == reference.encode("utf-8"))
    ):
        return None
    try:
        occurred_at_ms = parse_ms(occurred_at)
    except BadTimestamp:
        return None
    return event_id, typ, reference, occurred_at, occurred_at_ms, amount


def _fast_payment(key: bytes | None, value: bytes) -> PaymentEvent | None:
    try:
        obj = codec.loads(value)
    except codec.JSONDecodeError:
        return None
    common = _fast_common(obj, key, PAYMENT_TYPES)
    if common is None:
        return None
    get = obj.get
    account_id, merchant_id = get("account_id"), get("merchant_id")
    if common[1] == "requested":
        if not (type(account_id) is str and account_id and type(merchant_id) is str and merchant_id):
            return None
    elif not ((account_id is None or type(account_id) is str) and (merchant_id is None or type(merchant_id) is str)):
        return None
    opt = [get(f) for f in PAYMENT_OPTIONAL_FIELDS]
    for v in opt:
        if v is not None and type(v) is not str:
            return None
    return PaymentEvent(*common, account_id, merchant_id, *opt)  # type: ignore[arg-type]


def _fast_ledger(key: bytes | None, value: bytes) -> LedgerEvent | None:
    try:
        obj = codec.loads(value)
    except codec.JSONDecodeError:
        return None
    common = _fast_common(obj, key, LEDGER_TYPES)
    if common is None:
        return None
    entry_id, account_id = obj.get("entry_id"), obj.get("account_id")
    if not (type(entry_id) is str and entry_id and type(account_id) is str and account_id):
        return None
    return LedgerEvent(*common, entry_id, account_id)  # type: ignore[arg-type]


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
        fast = _fast_payment(key, value)
        if fast is not None:
            return fast
    try:
        obj = _decode(value)
        event_id, typ, reference, occurred_at, occurred_at_ms, amount = _common(obj, key, PAYMENT_TYPES)
        if typ == "requested":
            account_id: str | None = _string(obj, "account_id")
            merchant_id: str | None = _string(obj, "merchant_id")
        else:
            account_id = _optional_string(obj, "account_id")
            merchant_id = _optional_string(obj, "merchant_id")
        opt = [_optional_string(obj, f) for f in PAYMENT_OPTIONAL_FIELDS]
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
    "'amount' must be a JSON integer of rupiah, got a number with a fraction or exponent (25000.0)"
    """
    if value is not None:
        fast = _fast_ledger(key, value)
        if fast is not None:
            return fast
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
