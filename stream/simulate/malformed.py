"""Bad input records, one defect each, made from a copy of a good record: what a buggy or
foreign producer puts on the input topics. A contract-conforming reader rejects every one
of them to the dead-letter topic; none is a valid event.
"""

import random
from typing import Literal, get_args

import orjson

MalformedKind = Literal[
    "invalid_json",
    "not_an_object",
    "amount_string",
    "amount_float",
    "amount_bool",
    "amount_not_positive",
    "amount_too_large",
    "missing_field",
    "wrong_field_type",
    "unknown_type",
    "key_mismatch",
    "currency",
    "non_utf8",
    "bad_timestamp",
    "reference_too_long",
]
MALFORMED_KINDS: tuple[MalformedKind, ...] = get_args(MalformedKind)

_REQUIRED_PAYMENT: tuple[str, ...] = (
    "event_id",
    "type",
    "reference",
    "occurred_at",
    "amount",
    "currency",
)
_REQUIRED_REQUESTED = (*_REQUIRED_PAYMENT, "account_id", "merchant_id")
_REQUIRED_LEDGER = (*_REQUIRED_PAYMENT, "entry_id", "account_id")
_WRONG_TYPES_PAYMENT = ("SETTLED", "refunded", "debited", "")
_WRONG_TYPES_LEDGER = ("DEBITED", "refund", "settled", "")
_BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xe9", b"\xed\xa0\x80")


def _bad_timestamps(good: str) -> tuple[object, ...]:
    zoneless = good[:-1] if good.endswith("Z") else good[:-6]
    return (
        zoneless,  # no zone offset
        zoneless.replace("T", " ")[:19],
        "29/03/2025 09:00:00",
        "2025-02-30T10:00:00+07:00",  # no such day
        "2025-03-29T25:61:00Z",
        "",
        1743213600000,  # epoch milliseconds: a number, not a string
    )


def corrupt(
    kind: MalformedKind,
    record: dict[str, object],
    key: str,
    ledger: bool,
    rng: random.Random,
) -> tuple[str, bytes]:
    """The (key, value bytes) of a copy of ``record`` (keyed ``key``) broken as ``kind``.

    >>> rng = random.Random(1)
    >>> good = {"event_id": "e1", "type": "settled", "reference": "R1",
    ...         "occurred_at": "2025-03-29T09:00:00.000+07:00", "amount": 25000,
    ...         "currency": "IDR"}
    >>> corrupt("amount_float", good, "R1", False, rng)[1]
    b'{"event_id":"e1:bad","type":"settled","reference":"R1","occurred_at":"2025-03-29T09:00:00.000+07:00","amount":25000.0,"currency":"IDR"}'
    """
    bad = dict(record)
    bad["event_id"] = f"{record['event_id']}:bad"
    amount = record["amount"]
    assert isinstance(amount, int)
    reference = str(record["reference"])
    if kind == "invalid_json":
        text = orjson.dumps(bad)
        variant = rng.randrange(3)
        if variant == 0:
            return key, text[: rng.randrange(1, len(text) - 1)]  # truncated
        if variant == 1:
            return key, text[:-1] + b",}"  # trailing comma
        return key, text.replace(b'"', b"'")  # single quotes
    if kind == "not_an_object":
        return key, rng.choice((orjson.dumps([bad]), orjson.dumps(reference), b"null", b"42"))
    if kind == "amount_string":
        bad["amount"] = str(amount)
    elif kind == "amount_float":
        bad["amount"] = float(amount)
    elif kind == "amount_bool":
        bad["amount"] = True
    elif kind == "amount_not_positive":
        bad["amount"] = rng.choice((0, -amount))
    elif kind == "amount_too_large":
        bad["amount"] = 10**12 + amount
    elif kind == "missing_field":
        required: tuple[str, ...]
        if ledger:
            required = _REQUIRED_LEDGER
        elif record["type"] == "requested":
            required = _REQUIRED_REQUESTED
        else:
            required = _REQUIRED_PAYMENT
        del bad[rng.choice(required)]
    elif kind == "wrong_field_type":
        field = rng.choice(("event_id", "reference", "occurred_at", "currency", "type"))
        bad[field] = rng.choice((12345, None, ["x"], {"value": "x"}))
    elif kind == "unknown_type":
        bad["type"] = rng.choice(_WRONG_TYPES_LEDGER if ledger else _WRONG_TYPES_PAYMENT)
    elif kind == "key_mismatch":
        bad["reference"] = reference[:-1] + ("1" if reference[-1] != "1" else "2")
    elif kind == "currency":
        bad["currency"] = rng.choice(("USD", "idr", "SGD", ""))
    elif kind == "non_utf8":
        text = orjson.dumps(bad)
        broken = b'"event_id":"' + rng.choice(_BAD_UTF8)
        return key, text.replace(b'"event_id":"', broken, 1)
    elif kind == "bad_timestamp":
        bad["occurred_at"] = rng.choice(_bad_timestamps(str(record["occurred_at"])))
    elif kind == "reference_too_long":
        long_reference = reference + "X" * (65 - len(reference))
        bad["reference"] = long_reference
        return long_reference, orjson.dumps(bad)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return key, orjson.dumps(bad)
