"""The topic schemas in schemas/ are valid JSON Schema 2020-12 and agree with their examples.

Also holds the loader other tests reuse (`load_schema`, `validator_for`) and the contract rules
JSON Schema cannot express (`beyond_schema_errors`). Imports only the standard library, pytest
and jsonschema: never the qris-guard package, so the schemas are checked on their own.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.validators import extend

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
INPUT_TOPICS = ("qris.payment-requests", "qris.ledger-debits")
OUTPUT_TOPICS = ("qris.refunds", "qris.alerts", "qris.dead-letter")
TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
ID_BASE = "https://qris-guard.example/schemas/"


def load_schema(topic: str) -> dict[str, Any]:
    """The schema of `topic`'s record values, e.g. `load_schema("qris.refunds")`."""
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{topic}.schema.json").read_text())
    return schema


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` that also rejects properties it does not declare.

    The published output schemas stay open so that consumers survive additive changes; tests of
    what the project emits validate against the closed copy, so that a field the emitter adds
    without documenting it in the schema fails. Object schemas that set `additionalProperties`
    themselves (deliberately free-form ones) are left alone.
    """

    def close(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: close(value) for key, value in node.items()}
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [close(item) for item in node]
        return node

    result: dict[str, Any] = close(copy.deepcopy(schema))
    return result


def validator_for(topic: str, *, closed_schema: bool = False) -> Draft202012Validator:
    """A validator for `topic`'s values; `closed_schema=True` also rejects undeclared fields."""
    schema = load_schema(topic)
    return Draft202012Validator(closed(schema) if closed_schema else schema)


# JSON Schema's "integer" is any number with a zero fractional part, so `25000.0` passes it.
# After json.loads/orjson.loads a float token stays a Python float, so this checker sees the
# difference the parser enforces: "integer" means a JSON integer token.
_STRICT_TYPES = Draft202012Validator.TYPE_CHECKER.redefine(
    "integer",
    lambda _checker, instance: isinstance(instance, int) and not isinstance(instance, bool),
)
StrictIntegerValidator = extend(Draft202012Validator, type_checker=_STRICT_TYPES)

_INSTANT = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))$"
)
_EPOCH = dt.datetime(1970, 1, 1)
_GREGORIAN_CYCLE = dt.timedelta(days=146097)  # 400 years: year 0 has year 400's calendar


def instant_ms(text: str) -> int:
    """Milliseconds since the epoch of a schema-valid RFC 3339 timestamp.

    Digits finer than a millisecond are truncated and a leap second `:60` is the first instant
    of the next minute, as the contract and the core read them.

    >>> instant_ms("1970-01-01T07:00:00.0019+07:00")
    1
    """
    match = _INSTANT.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp with offset: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, offset_h, offset_m = match.groups()[6:]
    shift = _GREGORIAN_CYCLE if year == 0 else dt.timedelta(0)
    since_epoch = dt.datetime(year or 400, month, day, hour, minute, min(second, 59)) - _EPOCH
    since_epoch += dt.timedelta(seconds=second - min(second, 59)) - shift
    if sign is not None:
        offset = dt.timedelta(hours=int(offset_h), minutes=int(offset_m))
        since_epoch -= offset if sign == "+" else -offset
    millis = int((fraction or "0")[:3].ljust(3, "0"))
    return since_epoch // dt.timedelta(milliseconds=1) + millis


def decode_b64(text: str) -> bytes:
    """The bytes of canonical base64 `text`, as the dead-letter schema defines it.

    Python's decoders also accept superfluous padding (`QUJD=`) and non-zero pad bits (`QR==`);
    requiring the round trip makes this exactly as strict as the schema's pattern.
    """
    data = binascii.a2b_base64(text, strict_mode=True)
    if base64.b64encode(data).decode() != text:
        raise ValueError(f"not canonical base64: {text!r}")
    return data


def _refund_errors(value: dict[str, Any]) -> Iterator[str]:
    evidence = value["evidence"]
    net = evidence["net_debited"]
    settled = evidence["settled_amount"]
    active = evidence["active_refunds_before"]
    totals = evidence["debited_total"] - evidence["reversed_total"]
    if net != totals:
        yield f"net_debited {net} != debited_total - reversed_total {totals}"
    for kind, count, total in (
        ("debits", "debit_count", "debited_total"),
        ("reversals", "reversal_count", "reversed_total"),
    ):
        shown = evidence[kind]
        if not evidence["truncated"]:
            if evidence[count] != len(shown) or evidence[total] != sum(e["amount"] for e in shown):
                yield f"{count} / {total} do not describe the {kind} shown (not truncated)"
        elif len(shown) != min(evidence[count], 25):
            yield f"truncated {kind}: {len(shown)} shown of {evidence[count]}, expected the first 20 and last 5"
    if evidence["truncated"] and max(evidence["debit_count"], evidence["reversal_count"]) <= 25:
        yield "truncated although no list has more than 25 entries"
    for kind in ("debits", "reversals"):
        if any(e.get("account_id") == value["account_id"] for e in evidence[kind]):
            yield f"an entry of {kind} names the refund's own account_id (it names only another one)"
    settlement = evidence["settlement"]
    if settled != (settlement["amount"] if settlement else 0):
        yield f"settled_amount {settled} disagrees with settlement {settlement}"
    owed = net - settled - active - evidence.get("held_refunds_before", 0)
    hold = value.get("hold")
    if value["type"] in ("refund.requested", "refund.held"):
        if value["amount"] != owed:
            yield f"amount {value['amount']} != net - settled - active - held = {owed}"
        decided = instant_ms(hold["held_until"]) if hold else instant_ms(value["deadline"])
        if instant_ms(value["decided_at"]) != decided:
            yield "a refund request is decided at its deadline, or when the hold on it ended"
    elif value["type"] == "refund.hold_released":
        if evidence["trigger"] is not None and owed > 0:
            yield f"a hold released by a record leaves {owed} owed"
        if instant_ms(value["decided_at"]) != instant_ms(hold["held_until"]):
            yield "a hold is released when it ends"
        if value["amount"] != hold["held_amount"]:
            yield "a released hold's amount is the held amount"
    else:
        if value["cancels_refund_id"] != value["refund_id"]:
            yield "cancels_refund_id != refund_id"
        excess = active - max(0, net - settled)
        if value["amount"] > excess:
            yield f"cancelled amount {value['amount']} > excess {excess}"
    if hold is not None:
        if instant_ms(hold["held_from"]) != instant_ms(value["deadline"]):
            yield "a hold starts at the deadline"
        if hold["held_ms"] != instant_ms(hold["held_until"]) - instant_ms(hold["held_from"]):
            yield "held_ms != held_until - held_from"
        if instant_ms(hold["held_until"]) > instant_ms(hold["release_by"]):
            yield "a hold lasts at most until release_by"


def _alert_errors(value: dict[str, Any]) -> Iterator[str]:
    window = value["window"]
    if window and instant_ms(window["end"]) < instant_ms(window["start"]):
        yield "window ends before it starts"
    labels = value["labels"]
    scope = value["scope"]
    wanted = {"alertname": value["kind"], "kind": value["kind"], "severity": value["severity"]}
    wanted |= {"scope_type": scope["type"], "scope_id": scope["id"]}
    for name, want in wanted.items():
        if labels.get(name) != want:
            yield f"labels.{name} {labels.get(name)!r} != {want!r} (routing labels must agree with the alert)"
    if value["kind"] == "FAILURE_BURST" and value["dedup_key"] != value["incident_id"]:
        yield "a FAILURE_BURST's dedup_key is its incident_id"
    explained = value["kind"] in ("LATE_SETTLEMENT", "LATE_REVERSAL") and value.get("incident_id")
    if explained and value["dedup_key"] != value["incident_id"]:
        yield "a cancellation explained by an incident is paged with it: its dedup_key is the incident_id"
    if value.get("holds") is not None and (value["kind"] != "FAILURE_BURST" or value.get("status") == "opened"):
        yield "only an incident's updated and resolved alerts carry holds"


def _dead_letter_errors(value: dict[str, Any]) -> Iterator[str]:
    source = f"{value['source_topic']}:{value['source_partition']}:{value['source_offset']}"
    if value["dead_letter_id"] != source:
        yield f"dead_letter_id {value['dead_letter_id']!r} != {source!r}"
    for part in ("key", "value"):
        yield from _carried_errors(part, value)
    key_b64 = value["key_b64"]
    if key_b64 is None:
        return
    if value["key_truncated"]:
        if value["key"] is not None:
            yield "a truncated key has no text"
        return
    key_bytes = decode_b64(key_b64)
    try:
        key_text: str | None = key_bytes.decode("utf-8")
    except UnicodeDecodeError:
        key_text = None
    if value["key"] != key_text:
        yield f"key {value['key']!r} is not key_b64 decoded as UTF-8 ({key_text!r})"


def _carried_errors(part: str, value: dict[str, Any]) -> Iterator[str]:
    # `<part>_b64` holds the bytes, or their first 64 KiB when `<part>_truncated`; the length and
    # SHA-256 describe the whole original, and are null exactly when there were no bytes.
    b64, truncated = value[f"{part}_b64"], value[f"{part}_truncated"]
    length, sha = value[f"{part}_length"], value[f"{part}_sha256"]
    if length is None or sha is None:
        if not (length is None and sha is None and not truncated and b64 in (None, "")):
            yield f"{part}: length and sha256 are null together, only when there are no bytes"
        return
    data = decode_b64(b64)
    if truncated:
        if len(data) != 65_536 or length <= 65_536:
            yield f"{part}: a truncated {part} carries its first 65,536 bytes of more than that"
    elif len(data) != length or hashlib.sha256(data).hexdigest() != sha:
        yield f"{part}: {part}_length / {part}_sha256 do not describe {part}_b64"


_CROSS_FIELD = {
    "qris.refunds": _refund_errors,
    "qris.alerts": _alert_errors,
    "qris.dead-letter": _dead_letter_errors,
}


def beyond_schema_errors(topic: str, value: Any) -> list[str]:
    """Contract rules a schema-valid `value` of `topic` can still break.

    `value` must come from a JSON parser that keeps float tokens as floats (json, orjson).
    Covers: integers written as `25000.0`/`2.5e4`, and the cross-field rules of the outputs.
    Does not cover key = reference, which needs the Kafka record.
    """
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in StrictIntegerValidator(load_schema(topic)).iter_errors(value)
    ]
    check = _CROSS_FIELD.get(topic)
    if check is not None and not errors:
        errors.extend(check(value))
    return errors


def _example_paths(kind: str) -> list[Path]:
    return sorted(EXAMPLES_DIR.glob(f"*/{kind}/*.json"))


def _example_id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES_DIR).with_suffix(""))


def _load_example(path: Path) -> tuple[str, Any]:
    return path.parent.parent.name, json.loads(path.read_text())


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_is_valid_draft_2020_12(topic: str) -> None:
    schema = load_schema(topic)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{ID_BASE}{topic}.schema.json"
    assert schema["title"] and schema["description"]


def test_no_stray_schema_files() -> None:
    assert sorted(p.name for p in SCHEMAS_DIR.glob("*.json")) == sorted(f"{t}.schema.json" for t in TOPICS)
    assert sorted(p.name for p in EXAMPLES_DIR.iterdir()) == sorted(TOPICS)


def _property_schemas(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield from node.get("properties", {}).items()
        for value in node.values():
            yield from _property_schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _property_schemas(item)


@pytest.mark.parametrize("topic", TOPICS)
def test_every_declared_property_is_described(topic: str) -> None:
    schema = load_schema(topic)
    for name, sub in _property_schemas(schema):
        if set(sub) - {"type", "const", "enum", "minItems", "exclusiveMinimum", "properties"}:
            target = sub
            if "$ref" in sub and "description" not in sub:
                target = schema["$defs"][sub["$ref"].removeprefix("#/$defs/")]
            assert target.get("description"), f"{topic}: property {name!r} has no description"


def test_shared_definitions_are_identical_across_schemas() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for topic in TOPICS:
        for name, definition in load_schema(topic).get("$defs", {}).items():
            first = seen.setdefault(name, (topic, definition))
            assert definition == first[1], f"$defs/{name} differs in {topic} and {first[0]}"


@pytest.mark.parametrize("path", _example_paths("valid"), ids=_example_id)
def test_valid_example_validates(path: Path) -> None:
    topic, value = _load_example(path)
    errors = [e.message for e in validator_for(topic).iter_errors(value)]
    assert errors == []
    assert beyond_schema_errors(topic, value) == []


@pytest.mark.parametrize("path", _example_paths("valid"), ids=_example_id)
def test_valid_output_examples_declare_every_field_unless_forward_compat(path: Path) -> None:
    topic, value = _load_example(path)
    declared_only = validator_for(topic, closed_schema=True).is_valid(value)
    if topic in INPUT_TOPICS:
        assert declared_only, "input schemas stay open even when closed()"
    else:
        assert declared_only != path.stem.startswith("forward-compat"), path.stem


@pytest.mark.parametrize("path", _example_paths("invalid"), ids=_example_id)
def test_invalid_example_fails(path: Path) -> None:
    topic, value = _load_example(path)
    assert not validator_for(topic).is_valid(value)


@pytest.mark.parametrize("path", _example_paths("beyond-schema"), ids=_example_id)
def test_beyond_schema_example_passes_schema_but_breaks_contract(path: Path) -> None:
    topic, value = _load_example(path)
    assert validator_for(topic).is_valid(value), "belongs in invalid/: the schema catches it"
    assert beyond_schema_errors(topic, value), "breaks no rule: belongs in valid/"


@pytest.mark.parametrize("topic", TOPICS)
def test_every_topic_has_valid_and_invalid_examples(topic: str) -> None:
    for kind in ("valid", "invalid"):
        assert len(list((EXAMPLES_DIR / topic / kind).glob("*.json"))) >= 3, (topic, kind)


def _valid_values(topic: str, field: str) -> set[Any]:
    return {json.loads(p.read_text()).get(field) for p in (EXAMPLES_DIR / topic / "valid").glob("*.json")}


@pytest.mark.parametrize(
    ("topic", "field", "expected"),
    [
        ("qris.payment-requests", "type", {"requested", "settled", "failed"}),
        ("qris.ledger-debits", "type", {"debited", "reversed"}),
        (
            "qris.refunds",
            "type",
            {"refund.requested", "refund.cancel_requested", "refund.held", "refund.hold_released"},
        ),
        (
            "qris.refunds",
            "reason",
            {
                "SETTLEMENT_TIMEOUT",
                "PAYMENT_FAILED",
                "EXCESS_DEBIT",
                "LATE_SETTLEMENT",
                "LATE_REVERSAL",
            },
        ),
        (
            "qris.alerts",
            "kind",
            {
                "LATE_SETTLEMENT",
                "LATE_REVERSAL",
                "OVER_REFUND",
                "DEBIT_ACCOUNT_MISMATCH",
                "DEAD_LETTER",
                "FEED_SILENT",
                "EVENT_TIME_STALLED",
                "FAILURE_BURST",
                "CLOCK_SKEW",
                "CLOCK_MISMATCH",
                "SCOPE_LIMIT",
                "INPUT_LOST",
                "INPUT_REPARTITIONED",
            },
        ),
        ("qris.alerts", "status", {None, "opened", "updated", "resolved"}),
    ],
)
def test_valid_examples_cover_every_value_of_closed_sets(topic: str, field: str, expected: set[Any]) -> None:
    assert _valid_values(topic, field) == expected


def test_input_amount_written_as_float_is_caught_only_outside_the_schema() -> None:
    record = {
        "event_id": "e1",
        "type": "settled",
        "reference": "R1",
        "occurred_at": "2025-03-01T02:16:10Z",
        "amount": 25000.0,
        "currency": "IDR",
    }
    assert validator_for("qris.payment-requests").is_valid(record)
    assert beyond_schema_errors("qris.payment-requests", record) != []
    assert beyond_schema_errors("qris.payment-requests", {**record, "amount": 25000}) == []


def _timestamp_accepts(text: str) -> bool:
    timestamp = load_schema("qris.payment-requests")["$defs"]["timestamp"]
    return bool(Draft202012Validator(timestamp).is_valid(text))


@pytest.mark.slow
def test_timestamp_pattern_accepts_exactly_the_real_calendar_dates() -> None:
    years = [0, 1, 4, 100, 400, 1900, 1999, 2000, 2023, 2024, 2100, 2400, 9999]
    for year in years:
        for month in range(0, 14):
            for day in range(0, 33):
                try:
                    dt.date(year or 400, month, day)  # year 0 has year 400's calendar
                    real = True
                except ValueError:
                    real = False
                text = f"{year:04d}-{month:02d}-{day:02d}T12:00:00Z"
                assert _timestamp_accepts(text) == real, text


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("1970-01-01T07:00:00.0019+07:00", 1),
        ("2025-03-01T09:15:00.250+07:00", 1740795300250),
        ("2025-03-01t02:15:00.250z", 1740795300250),
        ("2025-03-01T02:15:00.2509999Z", 1740795300250),
        ("2025-03-01T02:15:00Z", 1740795300000),
        ("2025-02-28T21:15:00.25-05:00", 1740795300250),
        ("2024-02-29T23:59:59+23:59", 1709164859000),
        ("2016-12-31T23:59:60Z", 1483228800000),
        ("2016-12-31T23:59:60.5Z", 1483228800500),
        ("0000-03-01T00:00:00Z", -62162035200000),
    ],
)
def test_timestamp_pattern_accepts_what_the_millisecond_reading_understands(text: str, expected_ms: int) -> None:
    assert _timestamp_accepts(text)
    assert instant_ms(text) == expected_ms


@pytest.mark.parametrize(
    "text",
    [
        "2025-03-01T02:15:00",
        "2025-03-01 02:15:00Z",
        "2025-03-01T02:15Z",
        "2025-03-01T02:15:00.Z",
        "2025-03-01T02:15:00+0700",
        "2025-03-01T02:15:00+07",
        "2025-03-01T24:00:00Z",
        "2025-03-01T23:59:61Z",
        "2025-03-01T23:60:00Z",
        "2025-03-01T02:15:00+24:00",
        "2025-03-01T02:15:00Z\n",
        "\n2025-03-01T02:15:00Z",
        "2025-03-01T02:15:00ZZ",
        "２０２５-03-01T02:15:00Z",
        "2025-03-01T02:15:00,250Z",
        "20250301T021500Z",
        "",
    ],
)
def test_timestamp_pattern_rejects(text: str) -> None:
    assert not _timestamp_accepts(text)


def test_base64_pattern_accepts_exactly_canonical_base64() -> None:
    validator = Draft202012Validator(load_schema("qris.dead-letter")["properties"]["value_b64"])
    for size in range(0, 40):
        data = bytes((7 * i + size) % 256 for i in range(size))
        assert validator.is_valid(base64.b64encode(data).decode()), data
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    candidates = [f"QUJD{a}{b}==" for a in "Qz+" for b in alphabet]
    candidates += [f"QU{a}=" for a in alphabet] + [f"QUJDQU{a}=" for a in alphabet]
    candidates += ["QQ", "QQ=", "QUJD=", "QU JD", "QUJD\n", "-_8=", "====", "QQ==QQ==", "Q==="]
    for text in candidates:
        try:
            decode_b64(text)
            canonical = True
        except (binascii.Error, ValueError):
            canonical = False
        assert validator.is_valid(text) == canonical, text


def test_closed_copy_leaves_published_schema_and_free_form_objects_open() -> None:
    schema = load_schema("qris.alerts")
    strict = closed(schema)
    assert "additionalProperties" not in schema
    assert strict["additionalProperties"] is False
    assert strict["properties"]["observed"]["additionalProperties"] == {"type": "number"}
    assert strict["properties"]["top_children"]["items"]["additionalProperties"] is True
