"""An independent oracle of the input-record validation rules: a raw Kafka record (key, value
bytes) of `qris.payment-requests` or `qris.ledger-debits`, accepted with its fields or rejected.

Written from the text of /work/shared/CONTRACT.md only (the two input tables, "Sizes" and the
dead-letter paragraph), independent of the engine (`stream.core.validation`, `eventtime`,
`codec`): it reads JSON with the standard library's `json`, not orjson, and RFC 3339 with its own
parser. It imports nothing from `stream`; the error codes are the dead-letter schema's words,
written out here. tests/test_validation_oracle.py compares it with the engine's parsers.

Where the contract is silent or open to two readings, the oracle makes a CHOICE (marked so in
the code and knobs below); the engine makes the same ones, most stated in schemas/README.md
("What the schemas cannot check"). The engine's JSON parser also has LIMITS that the contract
does not state (RFC 8259 section 9 lets a parser set them): the oracle models them.

- CHOICE: an optional field that is `null` counts as absent.
- CHOICE: a required string field may not be empty (`bad_value`); an empty `occurred_at` is not
  a timestamp (`bad_timestamp`), an empty `currency` is not IDR (`bad_currency`). Optional string
  fields may be empty.
- CHOICE: a string over its length limit is `bad_value`, whatever else is wrong with it.
- CHOICE: "bidirectional overrides" are the embeddings, overrides and isolates (U+202A-U+202E,
  U+2066-U+2069); marks such as U+200E are allowed.
- CHOICE: the ledger `amount` is capped at 10^12 like the payment amount.
- CHOICE: a duplicate member name is not an error; the last one counts.
- CHOICE: a record without a value (tombstone), or a value with a byte order mark, is
  `invalid_json`; a JSON `\\u` escape of a lone surrogate anywhere is `invalid_json` (not text).
- CHOICE: a leap second (`:60`) is allowed at any minute and counts as the next minute's first
  instant; years 0000 to 9999; `t` and `z` may be lower case (RFC 3339 section 5.6).
- LIMIT: nesting deeper than 1,024 levels, or a number outside the double range (`1e400`), anywhere
  in the value is `invalid_json`; an integer outside [-2^63, 2^64 - 1] is read as a double, so it
  is `wrong_type` as an `amount`.

A record that breaks several rules may be rejected for any one of them (the contract does not
order the rules): a rejection lists every broken rule as (error code, field), at most one per
field, and the comparison asks that the engine's be among them. Record-level errors (`too_large`,
`not_utf8`, `invalid_json`, `not_an_object`) come alone: nothing else is read then.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

MAX_VALUE_BYTES = 64 * 1024
MAX_AMOUNT = 10**12
LEDGER_AMOUNT_CAP = True  # CHOICE (the ledger table says only "> 0")
OPTIONAL_NULL_IS_ABSENT = True  # CHOICE
DUPLICATE_LAST_WINS = True  # CHOICE
MAX_NESTING = 1024  # LIMIT
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # LIMIT: other integers are read as doubles
MAX_SECOND = 60  # CHOICE: leap seconds allowed

MAX_CHARS = {"reference": 64, "merchant_name": 256}  # every other string field: 128
DEFAULT_MAX_CHARS = 128
# Required string fields that may not be empty (`bad_value`); optional ones may.
NON_EMPTY = {"event_id", "type", "reference", "entry_id", "account_id", "merchant_id"}
IDENTIFIERS = frozenset(
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
FORBIDDEN_IN_IDENTIFIER = frozenset(
    [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
PAYMENT_TYPES = ("requested", "settled", "failed")
LEDGER_TYPES = ("debited", "reversed")
PAYMENT_OPTIONAL = (
    "merchant_name",
    "mcc",
    "acquirer_id",
    "issuer_id",
    "switch_id",
    "terminal_id",
    "channel",
    "response_code",
)
ERROR_CODES = frozenset(
    {
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
    }
)

Error = tuple[str, str | None]  # (error code, field or None)


@dataclass(frozen=True)
class Verdict:
    """Accepted (`fields`: the event's fields, `occurred_at_ms` included) or rejected (`errors`)."""

    fields: dict[str, Any] | None = None
    errors: frozenset[Error] = field(default_factory=frozenset)

    @property
    def accepted(self) -> bool:
        return self.fields is not None


class _RecordError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ---- JSON ------------------------------------------------------------------------------------


def length(text: str) -> int:
    """A string's length in characters: Unicode code points."""
    return len(text)


def _double(token: str) -> float:
    x = float(token)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"number outside the double range: {token[:20]}")
    return x


def _integer(token: str) -> int | float:
    digits = len(token.lstrip("-"))
    if digits <= 20 and INT_MIN <= (n := int(token)) <= INT_MAX:
        return n
    return _double(token)


def _no_lone_surrogate(v: Any) -> None:
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise ValueError("a lone surrogate escape")
    elif isinstance(v, list):
        for x in v:
            _no_lone_surrogate(x)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Sees every member, a shadowed duplicate too (its text must be valid as well).
    out: dict[str, Any] = {}
    for k, v in pairs:
        _no_lone_surrogate(k)
        _no_lone_surrogate(v)
        if DUPLICATE_LAST_WINS or k not in out:
            out[k] = v
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def nesting(text: str) -> int:
    """The deepest nesting of arrays and objects, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def decode(value: bytes | None) -> dict[str, Any]:
    """The record value as a JSON object, or a record-level error."""
    if value is None:
        raise _RecordError("invalid_json")  # CHOICE: a tombstone is not a JSON object
    if len(value) > MAX_VALUE_BYTES:
        raise _RecordError("too_large")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _RecordError("not_utf8") from None
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_NESTING and nesting(text) > MAX_NESTING:
        raise _RecordError("invalid_json")
    limit = sys.getrecursionlimit()
    if brackets > 100:
        sys.setrecursionlimit(limit + 2 * MAX_NESTING)  # the json module recurses once per level
    try:
        obj = json.loads(
            text, object_pairs_hook=_object, parse_int=_integer, parse_float=_double, parse_constant=_refuse_constant
        )
        _no_lone_surrogate(obj)
    except ValueError:  # JSONDecodeError (a BOM too) or a hook's refusal
        raise _RecordError("invalid_json") from None
    finally:
        sys.setrecursionlimit(limit)
    if not isinstance(obj, dict):
        raise _RecordError("not_an_object")
    return obj


# ---- RFC 3339 --------------------------------------------------------------------------------

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _number(text: str, start: int, width: int) -> int:
    part = text[start : start + width]
    if len(part) != width or not all("0" <= c <= "9" for c in part):
        raise ValueError(f"expected {width} digits at {start}")
    return int(part)


def _expect(text: str, at: int, allowed: str) -> None:
    if text[at : at + 1] == "" or text[at] not in allowed:
        raise ValueError(f"expected one of {allowed!r} at {at}")


def _leap_year(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 in the proleptic Gregorian calendar, counted month by month."""
    days = (year - 1970) * 365
    # Leap days between the epoch year and this year: those of the years before each, counted from 0.
    days += _leaps_before(year) - _leaps_before(1970)
    days += sum(_DAYS_IN_MONTH[: month - 1]) + (1 if month > 2 and _leap_year(year) else 0)
    return days + day - 1


def _leaps_before(year: int) -> int:
    """Leap years in [0, year)."""
    y = year - 1
    return y // 4 - y // 100 + y // 400 + 1 if year > 0 else 0


def fraction_ms(digits: str) -> int:
    """Fractional-second digits to whole milliseconds, finer digits truncated."""
    return int((digits + "000")[:3])


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 section 5.6 `date-time` (zone offset required) to epoch ms; ValueError if not one."""
    year, month, day = _number(text, 0, 4), _number(text, 5, 2), _number(text, 8, 2)
    _expect(text, 4, "-")
    _expect(text, 7, "-")
    _expect(text, 10, "Tt")
    hour, minute, second = _number(text, 11, 2), _number(text, 14, 2), _number(text, 17, 2)
    _expect(text, 13, ":")
    _expect(text, 16, ":")
    at, millis = 19, 0
    if text[at : at + 1] == ".":
        end = at + 1
        while end < len(text) and "0" <= text[end] <= "9":
            end += 1
        if end == at + 1:
            raise ValueError("a fraction without digits")
        millis, at = fraction_ms(text[at + 1 : end]), end
    zone = text[at:]
    if zone in ("Z", "z"):
        offset_min = 0
    else:
        if len(zone) != 6:
            raise ValueError("no zone offset")
        _expect(zone, 0, "+-")
        _expect(zone, 3, ":")
        oh, om = _number(zone, 1, 2), _number(zone, 4, 2)
        if oh > 23 or om > 59:
            raise ValueError("offset out of range")
        offset_min = (oh * 60 + om) * (1 if zone[0] == "+" else -1)
    if not 1 <= month <= 12:
        raise ValueError("month out of range")
    month_days = 29 if month == 2 and _leap_year(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= month_days:
        raise ValueError("day out of range")
    if hour > 23 or minute > 59 or second > MAX_SECOND:
        raise ValueError("time out of range")
    seconds = _days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_min * 60) * 1000 + millis


# ---- fields ----------------------------------------------------------------------------------


class _Fields:
    """The record's object, and the broken rules found while reading its fields."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.errors: set[Error] = set()

    def present(self, name: str) -> bool:
        if name not in self.obj:
            return False
        return self.obj[name] is not None or not OPTIONAL_NULL_IS_ABSENT

    def string(self, name: str, required: bool) -> str | None:
        """A string field's value if it keeps every rule, else None (and the error noted)."""
        obj = self.obj
        if required and obj.get(name) is None:
            self.errors.add(("missing_field", name))
            return None
        if not self.present(name):
            return None
        v = obj[name]
        if not isinstance(v, str):
            self.errors.add(("wrong_type", name))
            return None
        too_long = length(v) > MAX_CHARS.get(name, DEFAULT_MAX_CHARS)
        empty = v == "" and required and name in NON_EMPTY
        forbidden = name in IDENTIFIERS and any(ord(c) in FORBIDDEN_IN_IDENTIFIER for c in v)
        if too_long or empty or forbidden:
            self.errors.add(("bad_value", name))
            return None
        return v

    def one_of(self, name: str, allowed: tuple[str, ...]) -> str | None:
        v = self.string(name, required=True)
        if v is not None and v not in allowed:
            self.errors.add(("bad_value", name))
            return None
        return v

    def occurred_at(self) -> tuple[str, int] | None:
        v = self.string("occurred_at", required=True)
        if v is None:
            return None
        try:
            return v, parse_rfc3339_ms(v)
        except ValueError:
            self.errors.add(("bad_timestamp", "occurred_at"))
            return None

    def amount(self, capped: bool) -> int | None:
        v = self.obj.get("amount")
        if v is None:
            self.errors.add(("missing_field", "amount"))
        elif isinstance(v, bool) or not isinstance(v, int):
            self.errors.add(("wrong_type", "amount"))
        elif v <= 0 or (capped and v > MAX_AMOUNT):
            self.errors.add(("bad_value", "amount"))
        else:
            return v
        return None

    def currency(self) -> None:
        v = self.obj.get("currency")
        if v is None:
            self.errors.add(("missing_field", "currency"))
        elif not isinstance(v, str):
            self.errors.add(("wrong_type", "currency"))
        elif v != "IDR":
            self.errors.add(("bad_currency", "currency"))

    def key(self, key: bytes | None, reference: str | None) -> None:
        """The record key, when present, equals `reference` (a key that is not UTF-8 cannot)."""
        if key is not None and reference is not None and key != reference.encode("utf-8"):
            self.errors.add(("key_mismatch", "reference"))


def _common(f: _Fields, key: bytes | None, types: tuple[str, ...]) -> dict[str, Any]:
    reference = f.string("reference", required=True)
    f.key(key, reference)
    when = f.occurred_at()
    f.currency()
    return {
        "event_id": f.string("event_id", required=True),
        "type": f.one_of("type", types),
        "reference": reference,
        "occurred_at": when and when[0],
        "occurred_at_ms": when and when[1],
    }


def _verdict(f: _Fields, fields: dict[str, Any]) -> Verdict:
    return Verdict(errors=frozenset(f.errors)) if f.errors else Verdict(fields=fields)


def check_payment(key: bytes | None, value: bytes | None) -> Verdict:
    """A `qris.payment-requests` record: accepted with its fields, or every rule it breaks."""
    try:
        f = _Fields(decode(value))
    except _RecordError as e:
        return Verdict(errors=frozenset({(e.code, None)}))
    out = _common(f, key, PAYMENT_TYPES)
    out["amount"] = f.amount(capped=True)
    # `account_id` and `merchant_id` are required when `type` = `requested` (optional when the
    # type is another or is itself broken).
    requested = f.obj.get("type") == "requested"
    out["account_id"] = f.string("account_id", required=requested)
    out["merchant_id"] = f.string("merchant_id", required=requested)
    for name in PAYMENT_OPTIONAL:
        out[name] = f.string(name, required=False)
    return _verdict(f, out)


def check_ledger(key: bytes | None, value: bytes | None) -> Verdict:
    """A `qris.ledger-debits` record: accepted with its fields, or every rule it breaks."""
    try:
        f = _Fields(decode(value))
    except _RecordError as e:
        return Verdict(errors=frozenset({(e.code, None)}))
    out = _common(f, key, LEDGER_TYPES)
    out["amount"] = f.amount(capped=LEDGER_AMOUNT_CAP)
    out["entry_id"] = f.string("entry_id", required=True)
    out["account_id"] = f.string("account_id", required=True)
    return _verdict(f, out)
