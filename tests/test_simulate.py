"""The simulator: deterministic, Kafka-exact partitioning, contract-conforming records, and
scenarios that really contain what they promise. No Kafka; the contract's field rules are
re-read here independently (stream.core is not imported).
"""

from __future__ import annotations

import argparse
import base64
import doctest
import hashlib
import io
import re
import types
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from stream.simulate import (
    LEDGER_TOPIC,
    PAYMENT_TOPIC,
    SCENARIOS,
    GroundTruth,
    SimRecord,
    accounts,
    cli,
    degradation,
    generate,
    malformed,
    merchants,
    murmur2,
    output,
    partition_for,
    partitioner,
    replay_line,
    rhythm,
    scenarios,
    timestamps,
    traffic,
    write_replay,
)
from stream.simulate.cli import add_arguments
from stream.simulate.cli import main as simulate_main
from stream.simulate.malformed import MALFORMED_KINDS
from stream.simulate.partitioner import KeyPartitioner
from stream.simulate.rhythm import load_factor

START_MS = 1743213600000  # 2025-03-29T09:00:00+07:00, a Saturday
TIMEOUT_MS = 300_000  # the contract's default T
LATENESS_MS = 30_000  # the contract's default A


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339_ms(text: str) -> int:
    """An oracle independent of the core's parser: epoch ms of an RFC 3339 date-time with a zone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"date-time without a zone offset: {text!r}")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


# -- the contract's input rules, read independently of stream.core --------------------------

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-](\d{2}):(\d{2}))")
_TYPES = {PAYMENT_TOPIC: {"requested", "settled", "failed"}, LEDGER_TOPIC: {"debited", "reversed"}}
_OPTIONAL_STRINGS = (
    "merchant_name",
    "mcc",
    "acquirer_id",
    "issuer_id",
    "switch_id",
    "terminal_id",
    "channel",
    "response_code",
)


def _valid_time(text: object) -> bool:
    if not isinstance(text, str):
        return False
    match = _RFC3339.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return match.group(9) is None or (int(match.group(9)) < 24 and int(match.group(10)) < 60)


def violations(topic: str, key: str | None, value: bytes) -> list[str]:
    """Why a record breaks CONTRACT.md's input rules (empty when it is valid)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return ["not UTF-8"]
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ["invalid JSON"]
    if not isinstance(obj, dict):
        return ["not an object"]
    problems = []

    def text(name: str, max_len: int | None = None) -> None:
        if name not in obj:
            problems.append(f"missing {name}")
        elif not isinstance(obj[name], str) or not obj[name]:
            problems.append(f"{name} not a non-empty string")
        elif max_len is not None and len(obj[name]) > max_len:
            problems.append(f"{name} longer than {max_len}")

    text("event_id", 128)
    text("reference", 64)
    if "type" not in obj:
        problems.append("missing type")
    elif not isinstance(obj["type"], str) or obj["type"] not in _TYPES[topic]:
        problems.append("type not allowed on this topic")
    if "occurred_at" not in obj:
        problems.append("missing occurred_at")
    elif not _valid_time(obj["occurred_at"]):
        problems.append("occurred_at not RFC 3339 with a zone")
    if "amount" not in obj:
        problems.append("missing amount")
    elif type(obj["amount"]) is not int:
        problems.append("amount not a JSON integer")
    elif not 0 < obj["amount"] <= 10**12:
        problems.append("amount out of range")
    if "currency" not in obj:
        problems.append("missing currency")
    elif obj["currency"] != "IDR":
        problems.append("currency not IDR")
    if key is not None and isinstance(obj.get("reference"), str) and obj["reference"] != key:
        problems.append("key differs from reference")
    if topic == LEDGER_TOPIC:
        text("entry_id")
        text("account_id")
    elif obj.get("type") == "requested":
        text("account_id")
        text("merchant_id")
    for name in _OPTIONAL_STRINGS:
        if name in obj and not isinstance(obj[name], str):
            problems.append(f"{name} not a string")
    return problems


# -- runs, generated once per module -------------------------------------------------------


@dataclass
class Run:
    records: list[SimRecord]
    truth: GroundTruth
    valid: list[tuple[SimRecord, dict[str, Any]]] = field(default_factory=list)
    invalid: list[tuple[SimRecord, list[str]]] = field(default_factory=list)


@cache
def simulated(scenario: str, minutes: float = 30.0, rate: float = 100.0, **knobs: Any) -> Run:
    truth = GroundTruth()
    records = list(
        generate(
            scenario,
            seed=11,
            start_ms=START_MS,
            minutes=minutes,
            rate_per_min=rate,
            truth=truth,
            **knobs,
        )
    )
    run = Run(records, truth)
    for record in records:
        problems = violations(record.topic, record.key, record.value)
        if problems:
            run.invalid.append((record, problems))
        else:
            run.valid.append((record, orjson.loads(record.value)))
    return run


@dataclass
class Reference:
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def times(self, kind: str) -> list[int]:
        return [parse_rfc3339_ms(e["occurred_at"]) for e in self.events[kind]]

    @property
    def requested(self) -> dict[str, Any]:
        return self.events["requested"][0]


def by_reference(run: Run) -> dict[str, Reference]:
    """Valid events per reference, redeliveries (same event_id) counted once."""
    references: dict[str, Reference] = defaultdict(Reference)
    seen: set[str] = set()
    for _, value in run.valid:
        if value["event_id"] in seen:
            continue
        seen.add(value["event_id"])
        references[value["reference"]].events[value["type"]].append(value)
    return references


def unsettled(references: dict[str, Reference]) -> dict[str, Reference]:
    return {
        ref: r
        for ref, r in references.items()
        if r.events["debited"] and not r.events["settled"] and not r.events["failed"]
    }


# -- determinism ---------------------------------------------------------------------------


def _replay_bytes(scenario: str, seed: int, **knobs: Any) -> bytes:
    sink = io.BytesIO()
    write_replay(generate(scenario, seed=seed, start_ms=START_MS, minutes=30, rate_per_min=200, **knobs), sink)
    return sink.getvalue()


@pytest.mark.slow
def test_same_seed_and_parameters_give_identical_bytes() -> None:
    first = _replay_bytes("mixed", 5)
    assert first == _replay_bytes("mixed", 5)
    assert first != _replay_bytes("mixed", 6)
    assert len(first.splitlines()) > 10_000


# sha256 of _replay_bytes(scenario, 5), taken before degradations were added: a scenario
# without one must keep its bytes (the degradation draws only inside its own window).
PINNED_SHA256 = {
    "normal": "4bb52451e3866b5ef0ee556cb6167786de9490e7dcc9aefe2d1060e5ba98f752",
    "outage": "32ad83121e50fc0e1fb06c2cbce99a1c644b6e0b9f307529eec3cf4a7c9df29d",
    "mixed": "497f9c79cf2a48d673382c34b4c288caaa2068308f42865a055c453ce2b4804c",
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(PINNED_SHA256))
def test_output_without_a_degradation_is_unchanged(scenario: str) -> None:
    pinned = _replay_bytes(scenario, 5)
    assert hashlib.sha256(pinned).hexdigest() == PINNED_SHA256[scenario]
    assert _replay_bytes(scenario, 5, degrade_scope="") == pinned
    # A degradation that starts after the last arrival draws nothing either.
    after_the_run = START_MS + 31 * 60_000
    assert (
        _replay_bytes(scenario, 5, degrade_scope="switch", degrade_id="JALIN", degrade_start_ms=after_the_run) == pinned
    )


def test_knobs_and_scenarios_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        generate("nope", seed=1, start_ms=START_MS)
    with pytest.raises(TypeError, match="unknown knob"):
        generate("normal", seed=1, start_ms=START_MS, failure_rat=0.1)
    with pytest.raises(ValueError, match="failure_rate"):
        generate("normal", seed=1, start_ms=START_MS, failure_rate=1.5)
    with pytest.raises(ValueError, match="minutes, payments"):
        generate("normal", seed=1, start_ms=START_MS, minutes=None)
    with pytest.raises(ValueError, match="unknown degrade_scope"):
        generate("normal", seed=1, start_ms=START_MS, degrade_scope="bank", degrade_at=0.5)
    with pytest.raises(ValueError, match="degrade_start_ms or degrade_at"):
        generate("normal", seed=1, start_ms=START_MS, degrade_scope="switch", degrade_id="JALIN")
    with pytest.raises(ValueError, match="no switch"):
        generate("slow_burn", seed=1, start_ms=START_MS, degrade_id="Jalin")
    with pytest.raises(ValueError, match="degrade_ramp_minutes"):
        generate("slow_burn", seed=1, start_ms=START_MS, degrade_ramp_minutes=61)
    with pytest.raises(ValueError, match="degrade_failure_rate"):
        generate("acquirer_degradation", seed=1, start_ms=START_MS, degrade_failure_rate=1.2)
    with pytest.raises(ValueError, match="no merchant"):
        generate("merchant_failure", seed=1, start_ms=START_MS, degrade_id="ID100000000000")


# -- Kafka's default partitioner -------------------------------------------------------------

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# kafka-python's test_murmur2_java_compatibility: partitions of 1000, from the Java client
JAVA_PARTITIONS_OF_1000 = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


@pytest.mark.parametrize("key,expected", JAVA_MURMUR2.items())
def test_murmur2_matches_kafkas_java_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected & 0xFFFFFFFF


@pytest.mark.parametrize("key,expected", JAVA_PARTITIONS_OF_1000.items())
def test_partition_matches_the_java_default_partitioner(key: bytes, expected: int) -> None:
    assert partition_for(key, 1000) == expected
    assert KeyPartitioner(1000)(key) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_murmur2_matches_kafka_python(key: bytes) -> None:
    assert murmur2(key) == kafka_python_murmur2(key)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=30), min_size=1, max_size=8),
    st.binary(max_size=12),
    st.integers(1, 64),
)
def test_key_partitioner_equals_the_plain_one(suffixes: list[bytes], prefix: bytes, partitions: int) -> None:
    partitioner = KeyPartitioner(partitions)
    for suffix in suffixes:  # shared prefixes exercise the cached hash states
        key = prefix + suffix
        assert partitioner(key) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions


# -- every scenario: records, partitions, offsets, produce order ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_records_are_keyed_partitioned_and_numbered_like_kafka(scenario: str) -> None:
    run = simulated(scenario)
    assert run.records, scenario
    next_offset: Counter[tuple[str, int]] = Counter()
    previous_ms = 0
    for record in run.records:
        assert record.topic in (PAYMENT_TOPIC, LEDGER_TOPIC)
        assert record.key is not None
        assert record.partition == partition_for(record.key.encode(), 4)
        assert record.offset == next_offset[(record.topic, record.partition)]
        next_offset[(record.topic, record.partition)] += 1
        assert record.timestamp_ms >= previous_ms  # emitted in produce order
        previous_ms = record.timestamp_ms
    assert {topic for topic, _ in next_offset} == {PAYMENT_TOPIC, LEDGER_TOPIC}
    assert {p for _, p in next_offset} == {0, 1, 2, 3}
    # Interleaved as produced, not grouped by topic.
    switches = sum(a.topic != b.topic for a, b in zip(run.records, run.records[1:], strict=False))
    assert switches > len(run.records) // 4
    assert run.truth.records == len(run.records)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_valid_records_follow_the_contract(scenario: str) -> None:
    run = simulated(scenario)
    if scenario in ("malformed", "mixed"):
        assert len(run.invalid) == sum(run.truth.malformed.values()) > 0
    else:
        assert run.invalid == []
    zones: Counter[str] = Counter()
    first_bytes: dict[str, bytes] = {}
    for record, value in run.valid:
        # An event_id names one event: a second record with it is a byte-exact redelivery.
        assert first_bytes.setdefault(value["event_id"], record.value) == record.value
        occurred_ms = parse_rfc3339_ms(value["occurred_at"])
        assert record.timestamp_ms >= occurred_ms  # produced after it happened
        zones["Z" if value["occurred_at"].endswith("Z") else "+07:00"] += 1
        assert value["currency"] == "IDR"
        if value["type"] == "requested":
            assert value["merchant_id"].startswith("ID") and len(value["merchant_id"]) == 15
            assert value["issuer_id"] == "BANKDKI"
            assert value["switch_id"] in ("ARTAJASA", "RINTIS", "JALIN", "ALTO")
            assert 10 <= len(value["account_id"]) <= 13 and value["account_id"].isdigit()
            assert 5_000 <= value["amount"] <= 2_000_000 and value["amount"] % 500 == 0
    assert zones["Z"] > 0 and zones["+07:00"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_ground_truth_owed_matches_the_records(scenario: str) -> None:
    assert_owed_matches_the_records(simulated(scenario))


def assert_owed_matches_the_records(run: Run) -> None:
    owed = {}
    for reference, r in by_reference(run).items():
        net = sum(e["amount"] for e in r.events["debited"]) - sum(e["amount"] for e in r.events["reversed"])
        settled = r.events["settled"][0]["amount"] if r.events["settled"] else 0
        if net - settled > 0:
            owed[reference] = net - settled
            reason = run.truth.owed[reference][1]
            if settled:
                assert reason == "EXCESS_DEBIT"
            elif r.events["failed"]:
                assert reason == "PAYMENT_FAILED"
            else:
                assert reason == "SETTLEMENT_TIMEOUT"
    assert owed == {ref: amount for ref, (amount, _) in run.truth.owed.items()}


# -- the scenarios contain what they promise -----------------------------------------------


@pytest.mark.slow
def test_normal_day_has_a_daily_rhythm_and_few_failures() -> None:
    run = simulated("normal", minutes=24 * 60, rate=4.0)
    per_hour: Counter[int] = Counter()
    for _, value in run.valid:
        if value["type"] == "requested":
            per_hour[(parse_rfc3339_ms(value["occurred_at"]) - START_MS) // 3_600_000] += 1
    # Hours since 09:00 WIB: 10 is 19:00 (evening peak), 18 is 03:00 (night).
    assert per_hour[10] > 5 * per_hour[18]
    failed = sum(1 for _, v in run.valid if v["type"] == "failed")
    assert 0.004 < failed / run.truth.payments < 0.013
    assert load_factor(START_MS - 5 * 3_600_000) < load_factor(START_MS + 10 * 3_600_000)


@pytest.mark.slow
def test_lebaran_is_several_times_normal_with_the_same_failure_rate() -> None:
    day: dict[str, GroundTruth] = {}
    failed: dict[str, int] = {}
    for scenario in ("normal", "lebaran"):
        truth = day[scenario] = GroundTruth()
        records = generate(scenario, seed=2, start_ms=START_MS, minutes=24 * 60, rate_per_min=8, truth=truth)
        failed[scenario] = sum(b'"type":"failed"' in r.value for r in records)
    assert 3.0 < day["lebaran"].payments / day["normal"].payments < 5.0
    for scenario, truth in day.items():
        assert 0.005 < failed[scenario] / truth.payments < 0.012
        assert len(truth.owed) < 0.003 * truth.payments


@pytest.mark.slow
def test_outage_leaves_unsettled_debits_on_one_switch_during_the_window_only() -> None:
    run = simulated("outage", minutes=60)
    begin_ms, end_ms = run.truth.outage_window_ms or (0, 0)
    assert end_ms - begin_ms == 20 * 60_000 and begin_ms == START_MS + 15 * 60_000
    references = by_reference(run)
    stuck = unsettled(references)
    assert len(stuck) > 100
    for r in stuck.values():
        assert r.requested["switch_id"] == "RINTIS"
        # Answers due in the window were held: requested at most ~20 s before it.
        assert begin_ms - 20_000 <= r.times("requested")[0] < end_ms
    answers_in_window: Counter[str] = Counter()
    late_minutes = []
    for r in references.values():
        for kind in ("settled", "failed"):
            for occurred_ms in r.times(kind):
                if begin_ms <= occurred_ms < end_ms:
                    answers_in_window[r.requested["switch_id"]] += 1
                elif (
                    occurred_ms >= end_ms
                    and r.times("requested")[0] < end_ms
                    and r.requested["switch_id"] == "RINTIS"
                    and kind == "settled"
                ):
                    late_minutes.append((occurred_ms - r.times("debited")[0]) / 60_000)
    assert answers_in_window["RINTIS"] == 0
    assert min(answers_in_window[s] for s in ("ARTAJASA", "JALIN", "ALTO")) > 100
    # Part of the held payments settle minutes late; the rest never do.
    fates = Counter(run.truth.outage.values())
    share = fates["late_settled"] / (fates["late_settled"] + fates["never_settled"])
    assert 0.5 < share < 0.7
    assert len(late_minutes) >= fates["late_settled"] and max(late_minutes) > 10
    assert set(stuck) == {ref for ref, fate in run.truth.outage.items() if fate == "never_settled"}


@pytest.mark.slow
def test_outage_switch_and_time_are_configurable() -> None:
    start = START_MS + 10 * 60_000
    run = simulated("outage", minutes=30, outage_switch="JALIN", outage_start_ms=start)
    assert run.truth.outage_window_ms == (start, start + 20 * 60_000)
    stuck = unsettled(by_reference(run))
    assert stuck and {r.requested["switch_id"] for r in stuck.values()} == {"JALIN"}


@pytest.mark.slow
def test_double_debits_are_two_ledger_entries_and_one_settlement() -> None:
    run = simulated("double_debit")
    doubles = [r for r in by_reference(run).values() if len(r.events["debited"]) == 2]
    assert len(doubles) > 50
    for r in doubles:
        first, second = r.events["debited"]
        assert first["entry_id"] != second["entry_id"] and first["event_id"] != second["event_id"]
        assert first["amount"] == second["amount"] and len(r.events["settled"]) == 1
    reversed_extra = [r for r in doubles if r.events["reversed"]]
    assert 0 < len(reversed_extra) < len(doubles)


@pytest.mark.slow
def test_failed_payments_with_and_without_reversal() -> None:
    references = by_reference(simulated("failed")).values()
    failed = [r for r in references if r.events["failed"]]
    kinds = Counter(
        "before debit" if not r.events["debited"] else ("reversed" if r.events["reversed"] else "not reversed")
        for r in failed
    )
    assert min(kinds.values()) > 30 and len(kinds) == 3
    codes = {r.events["failed"][0]["response_code"] for r in failed}
    assert {"05", "51", "68", "91", "96"} <= codes


@pytest.mark.slow
def test_late_settlements_and_reversals_come_after_the_timeout() -> None:
    run = simulated("late")
    references = by_reference(run)
    reasons = Counter(run.truth.cancelled.values())
    assert reasons["LATE_SETTLEMENT"] > 20 and reasons["LATE_REVERSAL"] > 20
    for reference, reason in run.truth.cancelled.items():
        r = references[reference]
        answer = r.times("settled" if reason == "LATE_SETTLEMENT" else "reversed")[0]
        assert answer - r.times("debited")[0] > TIMEOUT_MS


@pytest.mark.slow
def test_redelivered_records_are_exact_copies_later_in_the_same_partition() -> None:
    run = simulated("redelivery")
    first: dict[str, SimRecord] = {}
    copies = 0
    for record, value in run.valid:
        original = first.setdefault(value["event_id"], record)
        if original is not record:
            copies += 1
            assert record.value == original.value
            assert (record.topic, record.partition) == (original.topic, original.partition)
            assert record.offset > original.offset
    assert copies == run.truth.redelivered > 50


@pytest.mark.slow
def test_disorder_is_within_and_beyond_the_allowed_lateness() -> None:
    run = simulated("disorder")
    stream_max: dict[tuple[str, int], int] = {}
    behind = []
    for record, value in run.valid:
        occurred_ms = parse_rfc3339_ms(value["occurred_at"])
        stream = (record.topic, record.partition)
        behind.append(stream_max.get(stream, occurred_ms) - occurred_ms)
        stream_max[stream] = max(stream_max.get(stream, occurred_ms), occurred_ms)
    within = sum(1_000 < b <= LATENESS_MS for b in behind)
    beyond = sum(b > LATENESS_MS for b in behind)
    assert within > run.truth.late_within_lateness // 2 > 50
    assert beyond > run.truth.late_beyond_lateness // 2 > 10


@pytest.mark.slow
def test_malformed_scenario_produces_every_kind_of_bad_record() -> None:
    run = simulated("malformed")
    assert set(run.truth.malformed) == set(MALFORMED_KINDS)
    reasons = Counter(re.sub(r"^missing \w+$", "missing", p[0]) for _, p in run.invalid)
    for expected in (
        "not UTF-8",
        "invalid JSON",
        "not an object",
        "amount not a JSON integer",
        "amount out of range",
        "missing",
        "key differs from reference",
        "currency not IDR",
        "occurred_at not RFC 3339 with a zone",
        "reference longer than 64",
        "type not allowed on this topic",
    ):
        assert reasons[expected] > 0, expected
    amounts = {
        type(orjson.loads(r.value).get("amount")).__name__ for r, p in run.invalid if p == ["amount not a JSON integer"]
    }
    assert amounts == {"str", "float", "bool"}


@pytest.mark.slow
def test_mixed_has_a_bit_of_everything() -> None:
    truth = simulated("mixed", minutes=60).truth
    assert truth.outage and truth.cancelled and truth.redelivered and truth.malformed
    assert truth.late_within_lateness and truth.late_beyond_lateness
    assert {reason for _, reason in truth.owed.values()} == {
        "EXCESS_DEBIT",
        "PAYMENT_FAILED",
        "SETTLEMENT_TIMEOUT",
    }


def test_payments_cap_stops_arrivals_but_finishes_lifecycles() -> None:
    truth = GroundTruth()
    records = list(generate("mixed", seed=3, start_ms=START_MS, minutes=None, payments=500, truth=truth))
    assert truth.payments == 500
    # The outage is placed 40% into the expected length: 500 payments at 300 a minute.
    assert truth.outage_window_ms == (START_MS + 40_000, START_MS + 40_000 + 20 * 60_000)
    events = {
        (value["type"], value["event_id"])
        for value in (orjson.loads(r.value) for r in records if not violations(r.topic, r.key, r.value))
    }
    kinds = Counter(kind for kind, _ in events)
    assert kinds["requested"] == 500 and kinds["settled"] > 450


# -- degradations: a scope's payments fail more for a while --------------------------------


def requested_in(run: Run, begin_ms: int, end_ms: int) -> dict[str, Reference]:
    return {ref: r for ref, r in by_reference(run).items() if begin_ms <= r.times("requested")[0] < end_ms}


@pytest.mark.slow
def test_acquirer_degradation_fails_its_share_of_the_scope_in_the_window_only() -> None:
    # No other failures, so every failed payment is one the degradation chose.
    run = simulated("acquirer_degradation", minutes=60, rate=200, failure_rate=0.0)
    assert_owed_matches_the_records(run)
    [incident] = run.truth.incidents
    assert incident["kind"] == "degradation" and incident["scope"] == {"type": "acquirer", "id": "BCA"}
    begin_ms, end_ms = incident["start_ms"], incident["end_ms"]
    assert (begin_ms, end_ms) == (START_MS + 24 * 60_000, START_MS + 54 * 60_000)
    assert incident["full_from_ms"] == begin_ms and incident["failure_rate"] == 0.3
    references = by_reference(run)
    failed = {ref: r for ref, r in references.items() if r.events["failed"]}
    for r in failed.values():
        assert r.requested["acquirer_id"] == "BCA"
        assert begin_ms <= r.times("requested")[0] < end_ms
    in_scope = [r for r in requested_in(run, begin_ms, end_ms).values() if r.requested["acquirer_id"] == "BCA"]
    assert incident["payments"] == len(in_scope) > 1_000
    assert incident["affected"] == len(failed)
    assert abs(len(failed) / len(in_scope) - 0.3) < 0.05  # about 4 standard deviations
    # Like other failures: half before any debit (switch or issuer side), the rest debited,
    # most of those reversed; the unreversed ones are owed a refund.
    kinds = Counter(
        "before debit" if not r.events["debited"] else ("reversed" if r.events["reversed"] else "not reversed")
        for r in failed.values()
    )
    assert abs(kinds["before debit"] / len(failed) - 0.5) < 0.06
    assert abs(kinds["reversed"] / (kinds["reversed"] + kinds["not reversed"]) - 0.85) < 0.06
    assert {r.events["failed"][0]["response_code"] for r in failed.values() if not r.events["debited"]} == {
        "68",
        "91",
        "96",
    }
    assert {reason for _, reason in run.truth.owed.values()} == {"PAYMENT_FAILED"}


@pytest.mark.slow
def test_slow_burn_failure_share_ramps_up_then_holds() -> None:
    run = simulated("slow_burn", minutes=100, rate=200, failure_rate=0.0)
    assert_owed_matches_the_records(run)
    [incident] = run.truth.incidents
    begin_ms = START_MS + 30 * 60_000
    assert (incident["start_ms"], incident["full_from_ms"], incident["end_ms"]) == (
        begin_ms,
        begin_ms + 45 * 60_000,
        begin_ms + 60 * 60_000,
    )
    shares = []
    for quarter in range(4):  # 15 minutes each; the linear ramp averages 5%, 15%, 25%, then 30%
        start = begin_ms + quarter * 15 * 60_000
        jalin = [
            r for r in requested_in(run, start, start + 15 * 60_000).values() if r.requested["switch_id"] == "JALIN"
        ]
        assert len(jalin) > 500
        shares.append(sum(bool(r.events["failed"]) for r in jalin) / len(jalin))
    for share, expected in zip(shares, (0.05, 0.15, 0.25, 0.30), strict=True):
        assert abs(share - expected) < 0.04, shares
    assert shares[0] < shares[1] < shares[2]
    assert not [r for r in by_reference(run).values() if r.events["failed"] and r.requested["switch_id"] != "JALIN"]


@pytest.mark.slow
def test_merchant_degradation_defaults_to_the_busiest_merchant() -> None:
    catalogue = merchants.build_catalogue(11, 2000)
    busiest = catalogue.busiest()
    assert catalogue.weights[catalogue.merchants.index(busiest)] == max(catalogue.weights)
    run = simulated("merchant_failure", minutes=60, rate=200, failure_rate=0.0)
    assert_owed_matches_the_records(run)
    [incident] = run.truth.incidents
    assert incident["scope"] == {"type": "merchant", "id": busiest.nmid}
    assert simulated("merchant_failure").truth.incidents[0]["scope"]["id"] == busiest.nmid  # the seed decides
    failed = [r for r in by_reference(run).values() if r.events["failed"]]
    assert failed and {r.requested["merchant_id"] for r in failed} == {busiest.nmid}
    assert abs(incident["affected"] / incident["payments"] - 0.6) < 0.15  # ~100 payments: 3 sd
    # An explicit NMID picks that merchant instead.
    other = catalogue.merchants[1 if catalogue.merchants[0] == busiest else 0]
    chosen = simulated("merchant_failure", minutes=60, rate=200, failure_rate=0.0, degrade_id=other.nmid)
    assert chosen.truth.incidents[0]["scope"]["id"] == other.nmid
    assert {r.requested["merchant_id"] for r in by_reference(chosen).values() if r.events["failed"]} <= {other.nmid}


@pytest.mark.slow
def test_ground_truth_records_the_outage_and_the_degradation_as_incidents() -> None:
    degrade_start = START_MS + 40 * 60_000
    run = simulated("outage", minutes=60, degrade_scope="issuer", degrade_id="BANKDKI", degrade_start_ms=degrade_start)
    outage, degraded = run.truth.incidents
    begin_ms, end_ms = run.truth.outage_window_ms or (0, 0)
    assert outage == {
        "kind": "switch_outage",
        "scope": {"type": "switch", "id": "RINTIS"},
        "start_ms": begin_ms,
        "end_ms": end_ms,
        "full_from_ms": begin_ms,
        "failure_rate": 1.0,
        "payments": sum(r.requested["switch_id"] == "RINTIS" for r in requested_in(run, begin_ms, end_ms).values()),
        "affected": len(run.truth.outage),
    }
    assert outage["payments"] > 100 and outage["affected"] > 100
    assert degraded["kind"] == "degradation" and degraded["scope"] == {"type": "issuer", "id": "BANKDKI"}
    assert (degraded["start_ms"], degraded["end_ms"]) == (degrade_start, degrade_start + 30 * 60_000)
    # The run's arrivals end 20 minutes into the degradation: every payment of those is the issuer's.
    assert degraded["payments"] == len(requested_in(run, degrade_start, degrade_start + 30 * 60_000))
    assert 0.25 < degraded["affected"] / degraded["payments"] < 0.35
    assert run.truth.to_json()["incidents"] == [outage, degraded]
    assert simulated("normal").truth.incidents == []


@pytest.fixture
def no_topic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's defaults for topics and partitions come from these settings: the tests
    that compare its file with the API's defaults run without them, whatever the caller set."""
    for name in ("QRIS_PARTITIONS", "QRIS_PAYMENT_TOPIC", "QRIS_LEDGER_TOPIC"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@pytest.mark.usefixtures("no_topic_settings")
def test_command_maps_the_degradation_flags(tmp_path: Any) -> None:
    out, truth_file = tmp_path / "degraded.jsonl", tmp_path / "truth.json"
    status = simulate_main(
        [
            "--scenario=normal",
            "--seed=4",
            "--minutes=20",
            "--rate-per-min=100",
            "--degrade-scope=acquirer",
            "--degrade-id=BRI",
            "--degrade-start=2025-03-29T09:05:00+07:00",
            "--degrade-minutes=10",
            "--degrade-failure-rate=0.5",
            "--degrade-ramp-minutes=4",
            f"--out={out}",
            f"--truth={truth_file}",
        ]
    )
    assert status == 0
    expected = io.BytesIO()
    knobs = {
        "degrade_scope": "acquirer",
        "degrade_id": "BRI",
        "degrade_start_ms": START_MS + 5 * 60_000,
        "degrade_minutes": 10.0,
        "degrade_failure_rate": 0.5,
        "degrade_ramp_minutes": 4.0,
    }
    write_replay(generate("normal", seed=4, start_ms=START_MS, minutes=20, rate_per_min=100, **knobs), expected)
    assert out.read_bytes() == expected.getvalue()
    [incident] = orjson.loads(truth_file.read_bytes())["incidents"]
    assert incident["scope"] == {"type": "acquirer", "id": "BRI"}
    assert incident["full_from_ms"] - incident["start_ms"] == 4 * 60_000 and incident["affected"] > 0


# -- replay file ---------------------------------------------------------------------------


def test_replay_lines_have_the_contract_shape() -> None:
    run = simulated("malformed")
    sink = io.BytesIO()
    assert write_replay(run.records, sink) == len(run.records)
    lines = sink.getvalue().splitlines()
    assert len(lines) == len(run.records)
    b64 = 0
    for line, record in zip(lines, run.records, strict=True):
        obj = orjson.loads(line)
        value_field = "value_b64" if "value_b64" in obj else "value"
        assert list(obj) == ["topic", "partition", "offset", "timestamp_ms", "key", value_field]
        assert (obj["topic"], obj["partition"], obj["offset"]) == (
            record.topic,
            record.partition,
            record.offset,
        )
        assert obj["timestamp_ms"] == record.timestamp_ms and obj["key"] == record.key
        if value_field == "value":
            assert obj["value"].encode() == record.value  # the text exactly as produced
        else:
            b64 += 1
            assert base64.b64decode(obj["value_b64"]) == record.value
            with pytest.raises(UnicodeDecodeError):
                record.value.decode()
        assert line + b"\n" == replay_line(record)
    assert b64 == run.truth.malformed["non_utf8"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("no_topic_settings")
def test_command_writes_the_same_file_as_the_api(tmp_path: Any) -> None:
    out = tmp_path / "outage.jsonl"
    truth_file = tmp_path / "truth.json"
    status = simulate_main(
        [
            "--scenario=outage",
            "--seed=4",
            "--start=2025-03-29T09:00:00+07:00",
            "--minutes=30",
            "--rate-per-min=100",
            "--outage-start=2025-03-29T09:05:00+07:00",
            "--set",
            "failure_rate=0.02",
            f"--out={out}",
            f"--truth={truth_file}",
        ]
    )
    assert status == 0
    expected = io.BytesIO()
    write_replay(
        generate(
            "outage",
            seed=4,
            start_ms=START_MS,
            minutes=30,
            rate_per_min=100,
            outage_start_ms=START_MS + 5 * 60_000,
            failure_rate=0.02,
        ),
        expected,
    )
    assert out.read_bytes() == expected.getvalue()
    truth = orjson.loads(truth_file.read_bytes())
    assert truth["outage_window_ms"] == [START_MS + 300_000, START_MS + 1_500_000]
    assert truth["records"] == len(expected.getvalue().splitlines())


def test_command_help_renders() -> None:
    parser = argparse.ArgumentParser(prog="qris-guard simulate")
    add_arguments(parser)
    text = parser.format_help()
    for scenario in SCENARIOS:
        assert scenario in text


@pytest.mark.parametrize(
    "module",
    [
        accounts,
        cli,
        degradation,
        malformed,
        merchants,
        output,
        partitioner,
        rhythm,
        scenarios,
        timestamps,
        traffic,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module: types.ModuleType) -> None:
    failures, _ = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert failures == 0
