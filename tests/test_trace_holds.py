"""Refund holds as the operations views show them: `trace` of a held refund (paid after the
incident, or released by a late settlement) on the demo's outage scenario, and the lookup's
status from a hold kept in state."""

from __future__ import annotations

import pytest

from stream.core.holds import Hold
from stream.core.partition import Params
from stream.core.reference import ReferenceState
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord
from stream.drivers.trace import partitions_of, render, trace
from stream.simulate import generate
from stream.worker.lookup import payment_status
from tests.records import T0

P, L = "qris.payment-requests", "qris.ledger-debits"
HOLDS = Params(max_hold_ms=7_200_000)


def _outage() -> list[KafkaRecord]:
    # The detector reports an outage once `all` has learned its baseline (2,000 payments, 10
    # minutes): the switch stops settling 12 minutes in.
    sim = generate("outage", seed=29, start_ms=T0, minutes=30, rate_per_min=300, partitions=4, outage_at=0.4)
    return [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in sim
    ]


@pytest.mark.slow
def test_trace_explains_a_held_refund_paid_later_and_one_released() -> None:
    recs = _outage()
    by_ref: dict[str, list[str]] = {}
    for _p, d in replay(recs, HOLDS, drain=True):
        if d.role == "refunds":
            by_ref.setdefault(d.value["reference"], []).append(d.value["type"])
    paid = next(r for r, t in sorted(by_ref.items()) if t == ["refund.held", "refund.requested"])
    released = next(r for r, t in sorted(by_ref.items()) if t == ["refund.held", "refund.hold_released"])
    for ref, word in ((paid, "refund requested"), (released, "hold released")):
        t = trace(recs, ref, HOLDS, partitions_of(recs, ref, (P, L)), drain=True)
        assert t is not None and t["incidents_known"]
        held = t["decisions"][0]["value"]
        assert held["type"] == "refund.held"
        text = render(t)
        assert "refund HELD" in text and word in text and "paid by" in text
        assert f"incident {held['incident_id']} opened" in text  # the incident behind the hold
        assert [d["value"]["type"] for d in t["decisions"] if d["role"] == "refunds"] == by_ref[ref]


def test_the_lookup_reads_a_hold_from_state() -> None:
    st = ReferenceState("H1", net=25_000)
    st.holds.append(Hold("rf_h", T0, 25_000, ["in_1"], T0 + 7_200_000, (1, 4), T0 + 7_200_000))
    got = payment_status(st, 0)
    assert got["status"] == "refund_held" and got["hold"]["incident_ids"] == ["in_1"]
    assert got["hold"]["release_by"] == "2025-03-29T02:00:00.000Z"
