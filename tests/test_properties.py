"""Property tests (Hypothesis) of the contract's invariants, against the reference model."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.eventtime import parse_ms
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from tests.records import ledger, payment
from tests.reference_model import decide

TIMEOUT_MS, LATENESS_MS = 60_000, 10_000
PARAMS = Params(timeout_ms=TIMEOUT_MS, lateness_ms=LATENESS_MS, retention_ms=10**9)
AMOUNTS = st.sampled_from([10_000, 20_000, 25_000, 50_000])


@st.composite
def partition_input(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Records of a few references: debits, reversals, settlements, failures, requests, at
    event times with disorder within and beyond the allowed lateness, some redelivered."""
    p: list[tuple[float, bytes]] = []
    l: list[tuple[float, bytes]] = []  # noqa: E741
    n_refs = draw(st.integers(1, 4))
    for r in range(n_refs):
        ref = f"R{r}"
        for i in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["requested", "settled", "failed", "debited", "debited", "reversed"]))
            t = draw(st.floats(0, 400, allow_nan=False)) // 1
            amount = draw(AMOUNTS)
            eid = f"{ref}-{i}"
            if kind in ("debited", "reversed"):
                l.append((t, ledger(eid, kind, ref, t, amount)))
            else:
                p.append((t, payment(eid, kind, ref, t, amount)))

    # Mostly time-ordered, with local disorder: sort by a jittered time.
    def order(recs: list[tuple[float, bytes]]) -> list[bytes]:
        jitter = [draw(st.floats(-40, 40, allow_nan=False)) for _ in recs]
        return [b for _, _, b in sorted((t + j, k, b) for k, ((t, b), j) in enumerate(zip(recs, jitter, strict=True)))]

    pp, ll = order(p), order(l)
    # Redeliveries: repeat some records later in their own stream.
    for recs in (pp, ll):
        for _ in range(draw(st.integers(0, 2))):
            if recs:
                i = draw(st.integers(0, len(recs) - 1))
                j = draw(st.integers(i + 1, len(recs)))
                recs.insert(j, recs[i])
    # A tail that moves both streams forward past some deadlines.
    end = draw(st.floats(0, 800, allow_nan=False)) // 1
    pp.append(payment("tail-p", "requested", "TAIL", end))
    ll.append(ledger("tail-l", "reversed", "TAIL", end, 1))
    return pp, ll


def run_engine(p: list[bytes], l: list[bytes], schedule: list[int], drain: bool) -> list[dict[str, Any]]:  # noqa: E741
    """Feed the engine, taking the next record from stream schedule[i] at each step."""
    eng = PartitionEngine(0, PARAMS)
    out = []
    idx = [0, 0]
    recs = (p, l)
    for s in schedule:
        if idx[s] < len(recs[s]):
            raw = recs[s][idx[s]]
            out += eng.on_record(Stream(s), idx[s], None, raw)
            idx[s] += 1
    for s in (0, 1):
        while idx[s] < len(recs[s]):
            out += eng.on_record(Stream(s), idx[s], None, recs[s][idx[s]])
            idx[s] += 1
    if drain:
        out += eng.drain()
    # Burst signals report closed minutes as the watermark moves, so how many reports there are
    # depends on the interleaving; what each minute holds, and how far the partition closed, do not.
    closed = {str(m["minute"]): m["scopes"] for d in out if d.role == "signals" for m in d.value["minutes"]}
    through = [d.value["through_minute"] for d in out if d.role == "signals"]
    signals = [{"closed_minutes": closed, "through_minute": through[-1]}] if through else []
    return [d.value for d in out if d.role != "signals"] + signals


def refund_view(values: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (v["type"], v["refund_id"], v["reference"], v["amount"], v["reason"], parse_ms(v["deadline"]))
        for v in values
        if "refund_id" in v and "type" in v
    )


def model_view(values: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (v["type"], v["refund_id"], v["reference"], v["amount"], v["reason"], v["deadline_ms"]) for v in values
    )


def canon(values: list[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


COMMON = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(partition_input(), st.lists(st.integers(0, 1), max_size=80), st.booleans())
def test_engine_agrees_with_the_reference_model(
    inp: tuple[list[bytes], list[bytes]], schedule: list[int], drain: bool
) -> None:
    p, l = inp  # noqa: E741
    got = refund_view(run_engine(p, l, schedule, drain))
    want = model_view(decide(p, l, timeout_ms=TIMEOUT_MS, lateness_ms=LATENESS_MS, drain=drain))
    assert got == want


@COMMON
@given(
    partition_input(), st.lists(st.integers(0, 1), max_size=80), st.lists(st.integers(0, 1), max_size=80), st.booleans()
)
def test_any_interleaving_of_the_two_streams_gives_the_same_decisions(
    inp: tuple[list[bytes], list[bytes]], a: list[int], b: list[int], drain: bool
) -> None:
    p, l = inp  # noqa: E741
    assert canon(run_engine(p, l, a, drain)) == canon(run_engine(p, l, b, drain))


@COMMON
@given(partition_input(), st.data())
def test_redelivery_changes_nothing(inp: tuple[list[bytes], list[bytes]], data: st.DataObject) -> None:
    p, l = inp  # noqa: E741
    base = canon(run_engine(p, l, [], True))
    s = data.draw(st.integers(0, 1))
    recs = list((p, l)[s])
    i = data.draw(st.integers(0, len(recs) - 1))
    j = data.draw(st.integers(i + 1, len(recs)))
    recs.insert(j, recs[i])
    p2, l2 = (recs, l) if s == 0 else (p, recs)
    assert canon(run_engine(p2, l2, [], True)) == base


@COMMON
@given(partition_input(), st.lists(st.integers(0, 1), max_size=80))
def test_active_refunds_never_exceed_what_was_debited(
    inp: tuple[list[bytes], list[bytes]], schedule: list[int]
) -> None:
    p, l = inp  # noqa: E741
    eng = PartitionEngine(0, PARAMS)
    idx = [0, 0]
    recs = (p, l)
    alerts: set[str] = set()
    for s in [*schedule, *([0] * len(p)), *([1] * len(l))]:
        if idx[s] < len(recs[s]):
            for d in eng.on_record(Stream(s), idx[s], None, recs[s][idx[s]]):
                if d.value.get("kind") == "OVER_REFUND":
                    alerts.add(d.value["reference"])
            idx[s] += 1
            for ref, state in eng.refs.items():
                debited = sum(d[2] for d in state.debits)
                assert state.active <= debited
                if state.active > max(0, state.net - state.settled):
                    assert ref in alerts, "an over-refund must be raised to a person"


@COMMON
@given(partition_input())
def test_replay_is_repeatable(inp: tuple[list[bytes], list[bytes]]) -> None:
    p, l = inp  # noqa: E741
    a = [orjson.dumps(v) for v in run_engine(p, l, [0, 1] * 40, True)]
    b = [orjson.dumps(v) for v in run_engine(p, l, [0, 1] * 40, True)]
    assert a == b
