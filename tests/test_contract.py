"""Contract tests: the core parser and the schemas agree, and every record the project emits
validates against its topic's schema (closed: no undocumented field) and the rules beyond it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.partition import Params
from stream.core.validation import Rejection, parse_ledger, parse_payment
from stream.drivers.replay import replay
from tests.scenario import scenario_records
from tests.test_properties import partition_input, run_engine
from tests.test_schemas import EXAMPLES_DIR, StrictIntegerValidator, beyond_schema_errors, load_schema, validator_for

PARSERS = {"qris.payment-requests": parse_payment, "qris.ledger-debits": parse_ledger}
ROLE_TOPIC = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}
CLOSED = {topic: validator_for(topic, closed_schema=True) for topic in ROLE_TOPIC.values()}


def _examples(kind: str) -> list[Path]:
    return sorted(p for topic in PARSERS for p in (EXAMPLES_DIR / topic / kind).glob("*.json"))


@pytest.mark.parametrize("path", _examples("valid"), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_parser_accepts_every_valid_example(path: Path) -> None:
    parsed = PARSERS[path.parent.parent.name](None, path.read_bytes())
    assert not isinstance(parsed, Rejection), parsed


@pytest.mark.parametrize(
    "path",
    _examples("invalid") + _examples("beyond-schema"),
    ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}",
)
def test_parser_rejects_every_invalid_example(path: Path) -> None:
    parsed = PARSERS[path.parent.parent.name](None, path.read_bytes())
    assert isinstance(parsed, Rejection)
    assert parsed.reason


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**41)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


@st.composite
def mutated_input(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    topic = draw(st.sampled_from(sorted(PARSERS)))
    base = orjson.loads(sorted((EXAMPLES_DIR / topic / "valid").glob("*.json"))[draw(st.integers(0, 5))].read_bytes())
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(base) + ["extra"]))
        if draw(st.booleans()):
            base.pop(field, None)
        else:
            base[field] = draw(
                _json
                | st.sampled_from(["IDR", "settled", "debited", "requested", "2025-03-29T07:00:00Z", 0, 1, 10**12])
            )
    return topic, base


@settings(max_examples=400, deadline=None)
@given(mutated_input())
def test_parser_and_schema_agree_on_mutated_records(case: tuple[str, dict[str, Any]]) -> None:
    topic, value = case
    schema_ok = StrictIntegerValidator(load_schema(topic)).is_valid(value)
    parsed = PARSERS[topic](None, orjson.dumps(value))
    assert schema_ok == (not isinstance(parsed, Rejection)), (value, parsed)


def _check_emitted(role: str, value: dict[str, Any]) -> None:
    topic = ROLE_TOPIC[role]
    errors = [e.message for e in CLOSED[topic].iter_errors(value)]
    assert not errors, (value, errors)
    assert beyond_schema_errors(topic, value) == [], value


def test_every_record_emitted_for_the_scenario_validates() -> None:
    seen: set[str] = set()
    for _p, d in replay(scenario_records(4), Params(), drain=True):
        _check_emitted(d.role, d.value)
        seen.add(d.value.get("type") or d.value.get("kind") or "dead_letter")
    assert {"refund.requested", "refund.cancel_requested", "LATE_SETTLEMENT", "DEAD_LETTER", "dead_letter"} <= seen


@pytest.mark.slow
def test_every_record_emitted_with_holds_during_an_outage_validates() -> None:
    from tests.test_holds import HOLDS, _records

    seen: set[str] = set()
    for _p, d in replay(_records("outage", minutes=30), HOLDS, drain=True):
        _check_emitted(d.role, d.value)
        seen.add(d.value.get("type") or d.value.get("kind") or "dead_letter")
        if "hold" in d.value:
            seen.add("after hold " + d.value["type"])
    assert {"refund.held", "refund.hold_released", "after hold refund.requested", "FAILURE_BURST"} <= seen


@settings(max_examples=150, deadline=None)
@given(partition_input(), st.lists(st.integers(0, 1), max_size=40))
def test_every_record_emitted_for_generated_input_validates(
    inp: tuple[list[bytes], list[bytes]], schedule: list[int]
) -> None:
    p, l = inp  # noqa: E741
    for v in run_engine(p, l, schedule, True):
        if "closed_minutes" in v:
            continue  # burst signals: internal, between the partitions and the detector
        role = "refunds" if "refund_id" in v and "type" in v else "alerts" if "alert_id" in v else "dead_letter"
        _check_emitted(role, v)
