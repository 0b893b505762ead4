"""The engine's input parsers against an independent oracle of the validation rules
(tests/validation_oracle.py, written from CONTRACT.md's text only) on deterministic cases built
from small valid records: each field missing, null, of the wrong type, empty, at its length limit
and one past it; characters forbidden in identifiers and allowed in free text; amounts and
timestamps at their edges; record keys; values that are not objects, not JSON, not UTF-8, at
64 KiB and one byte more; duplicate members; the JSON parser's limits; and seeded random records,
valid ones and ones with several faults. An accepted record must have the oracle's fields; a
rejected one the oracle's (error, field), or, when the record breaks several rules, one of them.
The public parsers must also give what their detailed paths give. The cases must keep covering
every kind and every error code, and deliberately wrong oracles must disagree, so the comparison
can see a wrong boundary."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, Literal, NamedTuple, get_args

import pytest

from stream.core.validation import (
    ErrorCode,
    Rejection,
    _detailed_ledger,
    _detailed_payment,
    parse_ledger,
    parse_payment,
)
from tests import validation_oracle as oracle

SEEDS = (1, 2, 3)
RANDOM_CASES_PER_SEED = 900
REF = "QR20250329A0000001"
KEY = REF.encode()

Stream = Literal["P", "L"]
Pairs = list[tuple[str, Any]]


class Raw(str):
    """A JSON token (or member name) written as it is: escapes, number spellings, broken text."""


class Case(NamedTuple):
    kind: str
    stream: Stream
    key: bytes | None
    value: bytes | None
    note: str


PAY_REQUESTED: Pairs = [
    ("event_id", f"{REF}:requested"),
    ("type", "requested"),
    ("reference", REF),
    ("occurred_at", "2025-03-29T09:00:00.165+07:00"),
    ("amount", 70000),
    ("currency", "IDR"),
    ("account_id", "8598468444042"),
    ("merchant_id", "ID1076211799156"),
    ("merchant_name", "Toko Sumber Rejeki"),
    ("mcc", "5411"),
    ("acquirer_id", "BNI"),
    ("issuer_id", "BANKDKI"),
    ("switch_id", "JALIN"),
    ("terminal_id", "T9019739"),
    ("channel", "MPM"),
    ("response_code", "00"),
]
PAY_SETTLED: Pairs = [
    ("event_id", f"{REF}:settled"),
    ("type", "settled"),
    ("reference", REF),
    ("occurred_at", "2025-03-29T02:00:01.456Z"),
    ("amount", 70000),
    ("currency", "IDR"),
    ("response_code", "00"),
]
PAY_FAILED: Pairs = [
    ("event_id", "e-fail"),
    ("type", "failed"),
    ("reference", REF),
    ("occurred_at", "2025-03-29T09:00:04+07:00"),
    ("amount", 125000),
    ("currency", "IDR"),
]
LED_DEBITED: Pairs = [
    ("event_id", f"{REF}:debited:JE1"),
    ("type", "debited"),
    ("reference", REF),
    ("entry_id", "JE1"),
    ("account_id", "8598468444042"),
    ("amount", 70000),
    ("currency", "IDR"),
    ("occurred_at", "2025-03-29T02:00:00.285Z"),
]
LED_REVERSED: Pairs = [(k, "reversed" if k == "type" else v) for k, v in LED_DEBITED]
BASES: dict[str, tuple[Stream, Pairs]] = {
    "requested": ("P", PAY_REQUESTED),
    "settled": ("P", PAY_SETTLED),
    "failed": ("P", PAY_FAILED),
    "debited": ("L", LED_DEBITED),
    "reversed": ("L", LED_REVERSED),
}
STRING_LIMITS = {
    "P": {
        "event_id": 128,
        "reference": 64,
        "account_id": 128,
        "merchant_id": 128,
        "merchant_name": 256,
        "mcc": 128,
        "acquirer_id": 128,
        "issuer_id": 128,
        "switch_id": 128,
        "terminal_id": 128,
        "channel": 128,
        "response_code": 128,
    },
    "L": {"event_id": 128, "reference": 64, "entry_id": 128, "account_id": 128},
}
IDENTIFIERS = {
    "P": ["event_id", "reference", "account_id", "merchant_id", "acquirer_id", "issuer_id", "switch_id", "terminal_id"],
    "L": ["event_id", "reference", "entry_id", "account_id"],
}
FREE_TEXT = ["merchant_name", "mcc", "channel", "response_code"]
OPTIONAL = [*FREE_TEXT, "acquirer_id", "issuer_id", "switch_id", "terminal_id"]  # payment fields
# Characters the identifier rule refuses (C0, DEL, C1, bidirectional embeddings, overrides and
# isolates), and their neighbours and look-alikes that it allows.
FORBIDDEN = [0x00, 0x01, 0x09, 0x0A, 0x1B, 0x1F, 0x7F, 0x80, 0x85, 0x9F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E]
FORBIDDEN += [0x2066, 0x2067, 0x2068, 0x2069]
ALLOWED = [0x20, 0x7E, 0xA0, 0xAD, 0x061C, 0x200B, 0x200E, 0x200F, 0x2028, 0x2029, 0x202F, 0x2060, 0x2065, 0x206A]
ALLOWED += [0xFEFF, 0xFFFD, 0x1F600, 0xE0041, 0x10FFFF]
WRONG_TYPES = [Raw("1.5"), Raw("true"), Raw("false"), Raw("[]"), Raw("{}"), Raw('["x"]')]
TIMESTAMPS = [
    *("2025-03-29T02:00:00Z", "2025-03-29t02:00:00z", "2025-03-29t02:00:00Z", "2025-03-29T02:00:00z"),
    *("2025-03-29T02:00:00+00:00", "2025-03-29T02:00:00-00:00", "2025-03-29T16:00:00+14:00"),
    *("2025-03-28T14:00:00-12:00", "2025-03-29T02:00:00+23:59", "2025-03-29T02:00:00-23:59"),
    *("2025-03-29T02:00:00+24:00", "2025-03-29T02:00:00+07:60", "2025-03-29T02:00:00+0700"),
    *("2025-03-29T02:00:00+07", "2025-03-29T02:00:00 +07:00", "2025-03-29T02:00:00", "2025-03-29T02:00Z"),
    *("2025-03-29 02:00:00Z", "2025-03-29_02:00:00Z", "20250329T020000Z", "2025-03-29", "T", ""),
    *("2025-03-29T02:00:00.Z", "2025-03-29T02:00:00,5Z", "2025-03-29T02:00:00.5Z", "2025-03-29T02:00:00.+07:00"),
    *("2025-03-29T23:59:60Z", "2025-03-29T23:59:60.999Z", "2025-03-29T06:59:60+07:00", "2025-03-29T12:34:60Z"),
    *("2025-12-31T23:59:60Z", "2025-03-29T23:59:61Z", "2025-03-29T24:00:00Z", "2025-03-29T23:60:00Z"),
    *("2025-03-29T2:00:00Z", "2025-3-29T02:00:00Z", "+2025-03-29T02:00:00Z", "02025-03-29T02:00:00Z"),
    *("0000-01-01T00:00:00Z", "0000-02-29T00:00:00Z", "0000-01-01T00:00:00+00:01", "0000-01-01T00:00:00-00:01"),
    *("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "0100-02-29T00:00:00Z", "0400-02-29T00:00:00Z"),
    *("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59-01:00"),
    *("9999-12-31T23:59:60Z", "9999-12-31T23:00:00-00:59", "1969-12-31T23:59:59.9999Z", "1969-12-31T23:59:59.5Z"),
    *("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.0001Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z"),
    *("2100-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2025-02-29T00:00:00Z", "2025-02-28T00:00:00Z"),
    *("2025-04-31T00:00:00Z", "2025-06-31T00:00:00Z", "2025-09-31T00:00:00Z", "2025-11-31T00:00:00Z"),
    *("2025-01-31T00:00:00Z", "2025-12-31T00:00:00Z", "2025-00-10T00:00:00Z", "2025-13-10T00:00:00Z"),
    *("2025-01-00T00:00:00Z", "2025-01-32T00:00:00Z", "２０２５-03-29T02:00:00Z", "2025-03-29T0٢:00:00Z"),
    *("2025-03-29T02:00:00.１Z", "2025-03-29T02:00:00Z\n", " 2025-03-29T02:00:00Z", "2025-03-29T02:00:00Z "),
    *("2025-03-29T02:00:00Z\u0000", "2025-03-29T02:00:00ZZ", "2025-03-29T02:00:00Z+07:00", "2025-03-29T02:00:00−07:00"),
    *("2025-03-29T02:00:00.1239Z", "2025-03-29T02:00:00.123Z", "2025-03-29T02:00:00.9999999999Z"),
    *("2025-03-29T02:00:00.5x+07:00", "2025-03-29T02:00:00-07:00", "2025-03-29T02:00:00UTC", "2025-W13-6T02:00:00Z"),
    *("2025-088T02:00:00Z", "1743213600", "2025-03-29T02:00:00+7:00", "2025-03-29T02:00:00+07:00:00"),
    *("2025-03-29T02:00:00.000+07:00\u200b", "2025-03-29T02:00:00.000000000000000000001Z"),
    *(f"2025-03-29T02:00:00{'.' + '7' * n if n else ''}+07:00" for n in range(12)),
    # The length limit (128 characters) applies to `occurred_at` too: a long fraction.
    *("2025-03-29T02:00:00." + "1" * n + "+07:00" for n in (102, 103, 5000)),
]
AMOUNTS = [
    *("0", "-0", "-1", "1", "2", "999999999999", "1000000000000", "1000000000001", "9007199254740993"),
    *("1.0", "1e3", "1E3", "1E+3", "1e0", "1e-3", "25000.0", "-0.0", "0.0", "1000000000000.0", "1e12", "0.5"),
    *("2.5e4", "25000.00000000000000000001", "9223372036854775807", "9223372036854775808"),
    *("18446744073709551615", "18446744073709551616", "99999999999999999999999", "-99999999999999999999999"),
    *("-9223372036854775808", "-9223372036854775809", "1" + "0" * 308, "1" + "0" * 309, "1e400", "-1e400"),
    *('"25000"', '"1"', "true", "false", "null", "[]", "{}", "[70000]", "01", "+1", "0x10", "Infinity"),
    *("NaN", "25_000", ".5", "1.", "1e", "- 1"),
]


# ---- building values -------------------------------------------------------------------------


def token(v: Any, ascii_only: bool = False) -> str:
    return str(v) if isinstance(v, Raw) else json.dumps(v, ensure_ascii=ascii_only)


def build(pairs: Pairs, ascii_only: bool = False, spaced: bool = False) -> bytes:
    """A JSON object with these members in this order (repeated names and raw tokens as they are)."""
    comma, colon = (", ", ": ") if spaced else (",", ":")
    members = comma.join(token(k, ascii_only) + colon + token(v, ascii_only) for k, v in pairs)
    return ("{" + members + "}").encode()


def setf(pairs: Pairs, name: str, v: Any) -> Pairs:
    if any(k == name for k, _ in pairs):
        return [(k, v if k == name else x) for k, x in pairs]
    return [*pairs, (name, v)]


def delf(pairs: Pairs, name: str) -> Pairs:
    return [(k, x) for k, x in pairs if k != name]


def key_of(pairs: Pairs) -> bytes | None:
    """The record key a producer would send: the `reference`, if it is text."""
    ref = dict(pairs).get("reference")
    return ref.encode() if isinstance(ref, str) and not isinstance(ref, Raw) else None


# ---- the cases -------------------------------------------------------------------------------


def systematic_cases() -> Iterator[Case]:
    """Every rule at its edges, one fault at a time (some faults break two rules, such as a new
    `reference` under the old key)."""
    for name, (s, base) in BASES.items():
        yield Case("valid", s, KEY, build(base), name)
        yield Case("valid", s, None, build(base, ascii_only=True, spaced=True), f"{name} no key")
        names = dict.fromkeys([k for k, _ in base] + list(STRING_LIMITS[s]) + ["amount", "currency", "occurred_at"])
        for f in names:
            yield Case("missing", s, KEY, build(delf(base, f)), f"{name} -{f}")
            yield Case("null", s, KEY, build(setf(base, f, None)), f"{name} {f}=null")
            yield Case("empty", s, KEY, build(setf(base, f, "")), f"{name} {f}=''")
            for w in WRONG_TYPES:
                yield Case("wrong_type", s, KEY, build(setf(base, f, w)), f"{name} {f}={w}")
            if f != "amount":
                yield Case("wrong_type", s, KEY, build(setf(base, f, Raw("70000"))), f"{name} {f}=70000")
    # Lengths in code points: ASCII, two- three- and four-byte UTF-8 characters, a combining pair.
    for s, base in (("P", PAY_REQUESTED), ("L", LED_DEBITED)):
        for f, limit in STRING_LIMITS[s].items():
            for unit in ("a", "é", "中", "😀", "e\u0301"):
                for n in (1, limit - 1, limit, limit + 1):
                    text = unit * (n // len(unit)) + "x" * (n % len(unit))
                    pairs = setf(base, f, text)
                    yield Case("length", s, key_of(pairs), build(pairs, ascii_only=unit == "😀"), f"{f} {unit!r}*{n}")
            yield Case("length", s, None, build(setf(base, f, "x" * 2 * limit)), f"{f} twice the limit, no key")
    # Characters: in identifiers (refused or allowed), in free text and in the other strings.
    for s, base in (("P", PAY_REQUESTED), ("L", LED_DEBITED)):
        for f in IDENTIFIERS[s]:
            for cp in FORBIDDEN + ALLOWED:
                text = "AB" + chr(cp) + "CD" if cp % 2 else "ABCD" + chr(cp)
                pairs = setf(base, f, text)
                for ascii_only in (False, True):
                    if cp >= 0x20 or ascii_only:
                        kind = "identifier_refused" if cp in FORBIDDEN else "identifier_allowed"
                        yield Case(kind, s, key_of(pairs), build(pairs, ascii_only), f"{f} U+{cp:04X} {ascii_only}")
    for f in FREE_TEXT:
        for cp in FORBIDDEN:
            text = f"a{chr(cp)}b"
            yield Case("free_text", "P", KEY, build(setf(PAY_REQUESTED, f, text), cp % 2 == 0), f"{f} U+{cp:04X}")
    for f, text in (("type", "settled\u202e"), ("type", "settled\x00"), ("currency", "ID\u0085R")):
        yield Case("free_text", "P", KEY, build(setf(PAY_SETTLED, f, text)), f"{f}={text!r}")
    raw_control = build(setf(PAY_SETTLED, "merchant_name", "a@b")).replace(b"a@b", b"a\x01b")
    yield Case("invalid_json", "P", KEY, raw_control, "a raw control character in a string")
    # Amounts and timestamps.
    for s, base in (("P", PAY_SETTLED), ("L", LED_DEBITED), ("L", LED_REVERSED)):
        for a in AMOUNTS:
            yield Case("amount", s, KEY, build(setf(base, "amount", Raw(a))), f"amount {a[:30]}")
    for s, base in (("P", PAY_FAILED), ("L", LED_DEBITED)):
        for ts in TIMESTAMPS:
            yield Case("timestamp", s, KEY, build(setf(base, "occurred_at", ts)), f"occurred_at {ts[:60]!r}")
    # Currency and type.
    for c in ("IDR", "idr", "Idr", "IDR ", " IDR", "USD", "ＩＤＲ", "I\u200bDR", "360"):
        yield Case("currency", "P", KEY, build(setf(PAY_FAILED, "currency", c)), f"currency {c!r}")
        yield Case("currency", "L", KEY, build(setf(LED_DEBITED, "currency", c)), f"currency {c!r}")
    for name, (s, base) in BASES.items():
        for t in ("requested", "settled", "failed", "debited", "reversed", "REQUESTED", " debited", "refunded"):
            yield Case("type", s, KEY, build(setf(base, "type", t)), f"{name} type={t}")
    # `account_id` and `merchant_id` are required for `requested` only.
    for t in ("requested", "settled", "failed"):
        base = setf(PAY_REQUESTED, "type", t)
        for f in ("account_id", "merchant_id"):
            for how, pairs in (("missing", delf(base, f)), ("null", setf(base, f, None)), ("empty", setf(base, f, ""))):
                yield Case("conditional", "P", KEY, build(pairs), f"{t} {f} {how}")
    # Keys: none, equal, different, not UTF-8; `reference` written with escapes.
    keys = {
        "none": None,
        "equal": KEY,
        "empty": b"",
        "other": b"QR2",
        "prefix": KEY[:-1],
        "longer": KEY + b"1",
        "lower": KEY.lower(),
        "space": KEY + b" ",
        "nul": KEY + b"\x00",
        "bom": b"\xef\xbb\xbf" + KEY,
        "not_utf8": b"\xff" + KEY,
        "latin1": "Réf".encode("latin-1"),
        "huge": b"Q" * 70_000,
    }
    for name, (s, base) in BASES.items():
        for kname, k in keys.items():
            yield Case("key", s, k, build(base), f"{name} key {kname}")
    for s, base in (("P", PAY_SETTLED), ("L", LED_DEBITED)):
        nfc = setf(base, "reference", "Réf")
        yield Case("key", s, "Réf".encode(), build(nfc), "NFC reference, NFC key")
        yield Case("key", s, "Re\u0301f".encode(), build(nfc), "NFC reference, NFD key")
        yield Case("key", s, "Réf".encode(), build(setf(base, "reference", Raw('"R\\u00e9f"'))), "escaped reference")
        astral = setf(base, "reference", Raw('"R\\ud83d\\ude00"'))
        yield Case("key", s, "R😀".encode(), build(astral), "reference with an escaped surrogate pair")
    # Values that are not objects, not JSON or not UTF-8.
    for s, base in (("P", PAY_SETTLED), ("L", LED_DEBITED)):
        v = build(base)
        for other in (b"null", b"[]", b"[" + v + b"]", b'"x"', b"1", b"-1.5", b"true", b" 7 "):
            yield Case("not_an_object", s, KEY, other, repr(other[:20]))
        yield Case("empty_object", s, KEY, b"{}", "{}")
        framing = {
            "tombstone": None,
            "empty": b"",
            "spaces": b"   ",
            "truncated": v[:-1],
            "trailing comma": v[:-1] + b",}",
            "two documents": v + b"{}",
            "garbage after": v + b"x",
            "single quotes": v.replace(b'"', b"'"),
            "comment": b"/*c*/" + v,
            "bom": b"\xef\xbb\xbf" + v,
            "nul after": v + b"\x00",
            "form feed": b"\x0c" + v,
            "nbsp": "\u00a0".encode() + v,
            "NaN extra": v[:-1] + b',"x":NaN}',
            "Infinity extra": v[:-1] + b',"x":-Infinity}',
            "unquoted name": v[:-1] + b",x:1}",
            "bad escape": v[:-1] + b',"x":"\\x41"}',
        }
        for fname, framed in framing.items():
            yield Case("invalid_json", s, KEY, framed, fname)
        for fname, framed in {"spaces": b" " + v + b" ", "tab": b"\t" + v, "crlf": b"\r\n" + v + b"\r\n"}.items():
            yield Case("valid", s, KEY, framed, f"whitespace: {fname}")
        for fname, framed in {"utf16": v.decode().encode("utf-16"), "utf16le": v.decode().encode("utf-16-le")}.items():
            yield Case("not_utf8", s, KEY, framed, fname)
        pairs = setf(base, "event_id", "AB@@CD")
        for raw in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xf8\x88"):
            yield Case("not_utf8", s, KEY, build(pairs).replace(b"@@", raw), f"bytes {raw.hex()} in event_id")
        yield Case("not_utf8", s, KEY, b"\xff" * 100, "no JSON at all")
        # Lone surrogate escapes: not text, anywhere (in a shadowed duplicate or an unknown field too).
        for where, pairs in (
            ("event_id", setf(base, "event_id", Raw('"AB\\ud800"'))),
            ("low", setf(base, "event_id", Raw('"\\udc00AB"'))),
            ("reversed pair", setf(base, "event_id", Raw('"\\ude00\\ud83d"'))),
            ("extra", [*base, ("x_extra", Raw('["a", ["\\udbff"]]'))]),
            ("member name", [*base, (Raw('"\\ud800"'), 1)]),
            ("shadowed", [*base, ("event_id", Raw('"\\ud800"')), ("event_id", "e2")]),
        ):
            yield Case("lone_surrogate", s, KEY, build(pairs), where)
        yield Case("valid", s, KEY, build(setf(base, "event_id", Raw('"AB\\ud83d\\ude00"'))), "surrogate pair")
    # Sizes: at 64 KiB and one byte more (padding in an unknown field, or whitespace).
    for s, base in (("P", PAY_SETTLED), ("L", LED_DEBITED)):
        for size in (65_535, 65_536, 65_537, 70_000):
            pad = size - len(build([*base, ("pad", "")]))
            yield Case("size", s, KEY, build([*base, ("pad", "p" * pad)]), f"{size} bytes")
            yield Case("size", s, KEY, build(base) + b" " * (size - len(build(base))), f"{size} bytes, whitespace")
            yield Case("size", s, None, build(delf(base, "amount") + [("pad", "p" * pad)]), f"{size} bytes, no amount")
            yield Case("size", s, KEY, b"\xff" * size, f"{size} bytes, not UTF-8")
    # Duplicate members: the last counts (with names spelled with escapes too).
    for name, (s, base) in BASES.items():
        typ = dict(base)["type"]
        for f, good, bad in (
            ("amount", Raw("70000"), Raw("-1")),
            ("currency", "IDR", "USD"),
            ("reference", REF, "OTHER"),
            ("type", typ, "bogus"),
            ("occurred_at", "2025-03-29T02:00:00Z", "nope"),
            ("event_id", "e1", ""),
        ):
            yield Case("duplicate", s, KEY, build([*base, (f, bad), (f, good)]), f"{name} {f} bad then good")
            yield Case("duplicate", s, KEY, build([*base, (f, good), (f, bad)]), f"{name} {f} good then bad")
            escaped = Raw('"\\u' + f"{ord(f[0]):04x}" + f[1:] + '"')
            yield Case("duplicate", s, KEY, build([*base, (escaped, bad)]), f"{name} escaped {f} bad last")
            yield Case("duplicate", s, KEY, build([(escaped, bad), *base]), f"{name} escaped {f} bad first")
    # Unknown members are ignored, whatever they hold (payment fields in a ledger record too).
    unknown: Pairs = [
        ("x_extra", Raw('{"a": [1, {"b": null}]}')),
        ("x_extra", "a\x00\u202eb" * 50),
        ("x_extra", Raw("1" + "0" * 30)),
        ("Amount", -1),
        ("", 1),
        ("x\x00y", 1),
        ("reverses_entry_id", "JE0"),
    ]
    for s, base in (("P", PAY_FAILED), ("L", LED_DEBITED)):
        for member, content in unknown:
            yield Case("unknown_field", s, KEY, build([*base, (member, content)]), f"{member!r}")
    for f in ("merchant_id", "acquirer_id", "merchant_name", "terminal_id"):
        yield Case("unknown_field", "L", KEY, build([*LED_DEBITED, (f, "\u202e" * 300)]), f"ledger {f}")
        yield Case("unknown_field", "L", KEY, build([*LED_DEBITED, (f, 5)]), f"ledger {f}=5")
    yield Case("unknown_field", "P", KEY, build([*PAY_REQUESTED, ("entry_id", "\x00" * 300)]), "payment entry_id")
    # The JSON parser's limits, anywhere in the value.
    for s, base in (("P", PAY_SETTLED), ("L", LED_DEBITED)):
        for depth in (500, 1022, 1023, 1024, 1025, 3000):
            yield Case("json_limits", s, KEY, build([*base, ("x", Raw("[" * depth + "]" * depth))]), f"depth {depth}")
        nested = '{"a":' * 1023 + "1" + "}" * 1023
        yield Case("json_limits", s, KEY, build([*base, ("x", Raw(nested))]), "objects 1,024 deep")
        yield Case("json_limits", s, KEY, build([*base, ("x", Raw(nested[5:-1]))]), "objects 1,023 deep")
        yield Case("json_limits", s, KEY, build([*base, ("x", Raw('"' + "[" * 2000 + '"'))]), "brackets in a string")
        for number in ("1e400", "-1e400", "1e308", "1.8e308", "1.7976931348623157e308", "1e-400", "4.9e-324"):
            yield Case("json_limits", s, KEY, build([*base, ("x", Raw(number))]), f"extra {number}")
        for digits in (308, 309, 400, 5000):
            yield Case("json_limits", s, KEY, build([*base, ("x", Raw("9" * digits))]), f"extra {digits} digits")


PIECES = {
    "Y": ["2025", "2024", "2000", "2100", "1900", "0000", "9999", "1970", "1969", "0001", "２０２５", "202", "20255"],
    "M": ["03", "01", "02", "04", "06", "09", "11", "12", "00", "13", "1", "99"],
    "D": ["29", "01", "28", "30", "31", "00", "32", "1"],
    "T": ["T", "t", " ", "_", "TT"],
    "h": ["02", "00", "09", "12", "23", "24", "2", "99"],
    "m": ["00", "30", "59", "60", "5"],
    "s": ["00", "01", "59", "60", "61", "5", "99"],
    "f": ["", ".", ".0", ".5", ".123", ".1239", ".999999999", ".12345678", ".12", ".١", ".x"],
    "z": ["Z", "z", "+07:00", "-00:00", "+00:00", "+14:00", "-12:00", "+23:59", "+24:00", "+07:60", "+0700", "+07"],
}


def near_timestamp(rnd: random.Random) -> str:
    """RFC 3339 text from a few pieces, mostly valid, often sharing a minute (the engine's
    parser remembers minutes and seconds it has seen), sometimes with one character changed."""
    p = {
        k: rnd.choice(v) if rnd.random() < 0.25 else v[rnd.randrange(1, 6) if k == "f" else 0]
        for k, v in PIECES.items()
    }
    text = f"{p['Y']}-{p['M']}-{p['D']}{p['T']}{p['h']}:{p['m']}:{p['s']}{p['f']}{p['z']}"
    if rnd.random() < 0.1:
        i = rnd.randrange(len(text))
        text = text[:i] + rnd.choice("0123456789:-.TZ+ ") + text[i + 1 :]
    return text


def valid_timestamp(rnd: random.Random) -> str:
    """A random valid RFC 3339 text, years 0000 to 9999, leap seconds and lower case included."""
    year = rnd.choice([rnd.randint(0, 9999), rnd.randint(1969, 2100), 0, 9999])
    month = rnd.randint(1, 12)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    day = rnd.choice([rnd.randint(1, days), days])
    second = 60 if rnd.random() < 0.05 else rnd.randint(0, 59)
    frac = rnd.choice(["", "", "." + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 12)))])
    zone = rnd.choice(["Z", "z", f"{rnd.choice('+-')}{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}", "+07:00"])
    t, hour, minute = rnd.choice("TTTt"), rnd.randint(0, 23), rnd.randint(0, 59)
    return f"{year:04d}-{month:02d}-{day:02d}{t}{hour:02d}:{minute:02d}:{second:02d}{frac}{zone}"


ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_./ é中😀\u00a0\u200e\u2028\ufeff"\\'
TEXT_ALPHABET = ID_ALPHABET + "\x00\x1b\x7f\x85\u202e\u2066"


def random_text(rnd: random.Random, limit: int, alphabet: str, empty_ok: bool) -> str:
    n = rnd.choice([rnd.randint(1, 12), rnd.randint(1, limit), limit, 0 if empty_ok else 1])
    return "".join(rnd.choice(alphabet) for _ in range(n))


def random_valid(rnd: random.Random) -> tuple[Stream, Pairs]:
    """A valid record with random contents: every optional field present, absent or null."""
    name = rnd.choice(list(BASES))
    s, base = BASES[name]
    pairs: Pairs = []
    for f, v in base:
        limit = STRING_LIMITS[s].get(f)
        optional = f in OPTIONAL or (f in ("account_id", "merchant_id") and name in ("settled", "failed"))
        if optional and rnd.random() < 0.3:
            if rnd.random() < 0.5:
                pairs.append((f, None))
            continue
        if limit is not None:
            alphabet = ID_ALPHABET if f in IDENTIFIERS[s] else TEXT_ALPHABET
            v = random_text(rnd, limit, alphabet, empty_ok=optional)
        elif f == "occurred_at":
            v = valid_timestamp(rnd)
        elif f == "amount":
            v = rnd.choice([rnd.randint(1, 10**6), rnd.randint(1, 10**12), 10**12, 1])
        pairs.append((f, v))
    if name in ("settled", "failed") and rnd.random() < 0.5:
        pairs.append(("merchant_id", random_text(rnd, 128, ID_ALPHABET, empty_ok=True)))
    if rnd.random() < 0.3:
        pairs.append(("x_extra", rnd.choice([1, -1.5, None, "x", [1, {"a": "\u202e"}], True])))
    rnd.shuffle(pairs)
    return s, pairs


MUTATIONS: list[Any] = [
    *(None, Raw("1"), Raw("-1"), Raw("0"), Raw("1.0"), Raw("true"), Raw("[]"), Raw("{}"), "", " ", "x"),
    *("IDR", "idr", "requested", "settled", "failed", "debited", "reversed", REF, REF + "x"),
    *("a" * 64, "a" * 65, "a" * 128, "a" * 129, "a" * 256, "a" * 257, "😀" * 64, "😀" * 65, "😀" * 129),
    *("a\u202eb", "a\u0085b", "a\u007fb", "a\u200eb", "a\u0000b", Raw('"\\u0041"'), Raw('"a\\u2066"')),
    *("2025-03-29T02:00:00Z", "2025-03-29T02:00:00", "2025-02-29T02:00:00Z", "2025-03-29t02:00:60.5z"),
    *(Raw("1000000000000"), Raw("1000000000001"), Raw("18446744073709551616"), Raw("25000.0"), Raw('"25000"')),
]
MUTATED_FIELDS = [*STRING_LIMITS["P"], "entry_id", "type", "occurred_at", "amount", "currency", "x_extra"]


def random_cases(seed: int) -> Iterator[Case]:
    """Random timestamps on one record; random valid records; records with two to four faults."""
    rnd = random.Random(seed)
    for i in range(RANDOM_CASES_PER_SEED):
        ascii_only, spaced = rnd.random() < 0.3, rnd.random() < 0.2
        if i % 3 == 0:
            name = rnd.choice(list(BASES))
            s, base = BASES[name]
            ts = near_timestamp(rnd) if rnd.random() < 0.7 else valid_timestamp(rnd)
            yield Case("timestamp_random", s, KEY, build(setf(base, "occurred_at", ts), ascii_only, spaced), ts)
        elif i % 3 == 1:
            s, pairs = random_valid(rnd)
            key = key_of(pairs) if rnd.random() < 0.7 else None
            yield Case("valid_random", s, key, build(pairs, ascii_only, spaced), f"seed {seed} #{i}")
        else:
            name = rnd.choice(list(BASES))
            s, pairs = BASES[name]
            notes = []
            for _ in range(rnd.randint(2, 4)):
                f = rnd.choice(MUTATED_FIELDS)
                if rnd.random() < 0.15:
                    pairs, note = delf(pairs, f), f"-{f}"
                elif rnd.random() < 0.15:
                    v = rnd.choice(MUTATIONS)
                    pairs, note = [*pairs, (f, v)], f"+{f}={v!r}"
                else:
                    v = rnd.choice(MUTATIONS)
                    pairs, note = setf(pairs, f, v), f"{f}={v!r}"
                notes.append(note[:40])
            k = rnd.random()
            key = None if k < 0.3 else key_of(pairs) if k < 0.8 else KEY
            yield Case("multi", s, key, build(pairs, ascii_only, spaced), " ".join(notes))


# ---- the comparison --------------------------------------------------------------------------

Outcome = tuple[Any, ...]  # ("accepted", fields) or ("rejected", error, field)


def engine_outcome(case: Case) -> Outcome:
    """The public parser's verdict, checked equal to a second call (its time parser remembers
    what it has seen) and to the detailed path's."""
    parse, detailed = (parse_payment, _detailed_payment) if case.stream == "P" else (parse_ledger, _detailed_ledger)
    first = parse(case.key, case.value)
    again, slow = parse(case.key, case.value), detailed(case.key, case.value)
    assert first == again == slow, f"{case}: public {first!r}, again {again!r}, detailed {slow!r}"
    if isinstance(first, Rejection):
        return ("rejected", first.error, first.field)
    return ("accepted", first._asdict())


def oracle_verdict(case: Case) -> oracle.Verdict:
    check = oracle.check_payment if case.stream == "P" else oracle.check_ledger
    return check(case.key, case.value)


def agrees(engine: Outcome, verdict: oracle.Verdict) -> bool:
    if verdict.fields is not None:
        return engine == ("accepted", verdict.fields)
    return engine[0] == "rejected" and (engine[1], engine[2]) in verdict.errors


def groups() -> list[str]:
    return ["systematic", *(f"seed{seed}" for seed in SEEDS)]


@cache
def cases_of(group: str) -> tuple[tuple[Case, Outcome], ...]:
    """A group's cases with the engine's outcomes (computed once per session)."""
    cases = systematic_cases() if group == "systematic" else random_cases(int(group.removeprefix("seed")))
    return tuple((c, engine_outcome(c)) for c in cases)


def all_cases() -> list[tuple[Case, Outcome]]:
    return [c for g in groups() for c in cases_of(g)]


def shown(case: Case, engine: Outcome, verdict: oracle.Verdict) -> str:
    value = case.value if case.value is None or len(case.value) <= 400 else case.value[:400] + b"..."
    return (
        f"[{case.kind}] {case.note!r} stream {case.stream} key {case.key if case.key is None else case.key[:80]!r}\n"
        f"  value  {value!r}\n  engine {engine!r}\n  oracle {verdict!r}"
    )


@pytest.mark.parametrize("group", groups())
def test_the_engine_parses_every_record_as_an_independent_oracle_of_the_validation_rules(group: str) -> None:
    differing = [(c, e, v) for c, e in cases_of(group) if not agrees(e, v := oracle_verdict(c))]
    assert not differing, f"{len(differing)} of {len(cases_of(group))} cases differ; the first ones:\n" + "\n".join(
        shown(*d) for d in differing[:5]
    )


def test_the_oracle_speaks_the_engines_error_codes() -> None:
    assert set(get_args(ErrorCode)) >= oracle.ERROR_CODES


def test_the_cases_keep_covering_every_kind_and_every_error() -> None:
    """Thresholds well below what the cases give (in the comments)."""
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for case, engine in all_cases():
        verdict = oracle_verdict(case)
        kinds[case.kind] += 1
        if verdict.accepted:
            outcomes["accepted"] += 1
            outcomes[f"accepted:{case.kind}"] += 1
        elif len(verdict.errors) == 1:
            outcomes[f"exact:{engine[1]}"] += 1
        else:
            outcomes["several_errors"] += 1
    minimum_kinds = {
        "valid": 15,  # 18
        "missing": 50,  # 64 (each field of each base record)
        "null": 50,  # 64
        "empty": 50,  # 64
        "wrong_type": 300,  # 443
        "length": 200,  # 336 (1, limit - 1, limit, limit + 1 in five kinds of character)
        "identifier_refused": 300,  # 384
        "identifier_allowed": 300,  # 456
        "free_text": 40,  # 79
        "amount": 100,  # 159
        "timestamp": 200,  # 220
        "currency": 10,  # 18
        "type": 30,  # 40
        "conditional": 10,  # 18
        "key": 50,  # 73
        "not_an_object": 10,  # 16
        "empty_object": 2,  # 2
        "invalid_json": 20,  # 35
        "not_utf8": 10,  # 20
        "lone_surrogate": 10,  # 12
        "size": 20,  # 32
        "duplicate": 100,  # 120
        "unknown_field": 15,  # 23
        "json_limits": 30,  # 40
        "timestamp_random": 600,  # 900
        "valid_random": 600,  # 900
        "multi": 600,  # 900
    }
    minimum_outcomes = {
        "accepted": 1500,  # 2,746, every field compared
        "accepted:valid_random": 600,  # 900
        "accepted:timestamp_random": 200,  # 474
        "accepted:identifier_allowed": 300,  # 456
        "accepted:free_text": 40,  # 76
        "accepted:length": 150,  # 240
        "accepted:size": 4,  # 8 (65,535 and 65,536 bytes)
        "accepted:json_limits": 10,  # 22
        "accepted:duplicate": 20,  # 60
        "several_errors": 200,  # 304: the engine's (error, field) must be one of the oracle's
        **{f"exact:{code}": 10 for code in oracle.ERROR_CODES},  # 14 too_large, 16 not_an_object, ...
        "exact:bad_value": 400,  # 681
        "exact:bad_timestamp": 300,  # 583
        "exact:wrong_type": 400,  # 670
    }
    short = {k: (kinds[k], m) for k, m in minimum_kinds.items() if kinds[k] < m}
    short |= {k: (outcomes[k], m) for k, m in minimum_outcomes.items() if outcomes[k] < m}
    assert not short, f"too few (seen, minimum): {short}; kinds {dict(kinds)}; outcomes {dict(outcomes)}"


# ---- deliberately wrong oracles ---------------------------------------------------------------


def empty_occurred_at_is_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty `occurred_at` read as an empty required string, not as a bad timestamp."""
    monkeypatch.setattr(oracle, "NON_EMPTY", oracle.NON_EMPTY | {"occurred_at"})


def ledger_amount_uncapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger table's literal text: `amount` > 0, no upper limit."""
    monkeypatch.setattr(oracle, "LEDGER_AMOUNT_CAP", False)


def reference_limit_128(monkeypatch: pytest.MonkeyPatch) -> None:
    """`reference` held to the general 128 characters, not its own 64."""
    monkeypatch.setitem(oracle.MAX_CHARS, "reference", 128)


def length_in_utf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lengths counted as JavaScript does (UTF-16 code units), not in code points."""
    monkeypatch.setattr(oracle, "length", lambda text: len(text.encode("utf-16-le", "surrogatepass")) // 2)


def isolates_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the embeddings and overrides refused in identifiers, not the isolates U+2066-U+2069."""
    monkeypatch.setattr(oracle, "FORBIDDEN_IN_IDENTIFIER", oracle.FORBIDDEN_IN_IDENTIFIER - set(range(0x2066, 0x206A)))


def leap_second_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "MAX_SECOND", 59)


def fraction_rounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fractional seconds rounded to the nearest millisecond, not truncated."""
    monkeypatch.setattr(oracle, "fraction_ms", lambda digits: round(int(digits) / 10 ** (len(digits) - 3)))


def offset_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zone offset read as UTC."""
    parse = oracle.parse_rfc3339_ms
    monkeypatch.setattr(oracle, "parse_rfc3339_ms", lambda text: parse(re.sub(r"[+-]\d\d:\d\d$", "Z", text)))


def first_duplicate_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "DUPLICATE_LAST_WINS", False)


def null_optional_is_wrong_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "OPTIONAL_NULL_IS_ABSENT", False)


def size_limit_one_byte_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "MAX_VALUE_BYTES", 65_535)


def nesting_limit_one_level_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle, "MAX_NESTING", 1023)


def integers_signed_64_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integers from 2^63 to 2^64 - 1 read as doubles (the parser reads them as integers)."""
    monkeypatch.setattr(oracle, "INT_MAX", 2**63 - 1)


WRONG_ORACLES: list[Callable[[pytest.MonkeyPatch], None]] = [
    empty_occurred_at_is_bad_value,
    ledger_amount_uncapped,
    reference_limit_128,
    length_in_utf16_units,
    isolates_allowed,
    leap_second_refused,
    fraction_rounded,
    offset_ignored,
    first_duplicate_wins,
    null_optional_is_wrong_type,
    size_limit_one_byte_short,
    nesting_limit_one_level_short,
    integers_signed_64_bit,
]


@pytest.mark.parametrize("wrong", WRONG_ORACLES, ids=lambda f: f.__name__)
def test_a_deliberately_wrong_oracle_disagrees_with_the_engine(
    wrong: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison can see a wrong boundary or a wrong reading: each wrong oracle differs from
    the engine in at least one of the cases."""
    cases = all_cases()
    wrong(monkeypatch)
    assert any(not agrees(engine, oracle_verdict(case)) for case, engine in cases), f"{wrong.__name__} agrees"
