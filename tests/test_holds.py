"""Refund holds during an incident (CONTRACT.md): literal records and incident events with
explicit event times, one partition engine; then the simulator's outage through replay and
through a live-like loop that feeds the detector's incidents back as they are decided."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import codec, ids
from stream.core.burst import BurstDetector, BurstParams
from stream.core.decisions import Decision
from stream.core.eventtime import format_ms
from stream.core.holds import IncidentEvent, IncidentTimeline, incident_event
from stream.core.holdtally import HoldTally, held_scope_tags, holds_phrase, is_hold_report
from stream.core.partition import NEG_INF, POS_INF, Params, PartitionEngine
from stream.core.records import Stream
from stream.core.reference import ReferenceState
from stream.core.refunds import Refund
from stream.core.signals import MINUTE_MS
from stream.core.validation import Rejection, parse_payment
from stream.drivers.replay import replay
from stream.drivers.replayfile import KafkaRecord
from stream.simulate import generate
from tests.conftest import not_compiled
from tests.records import T0, ledger, payment, saved_state_v2
from tests.test_properties import decided, partition_input, persist
from tests.test_schemas import beyond_schema_errors, validator_for

P, L = Stream.P, Stream.L
H_MS, G_MS = 7_200_000, 900_000
HOLDS = Params(timeout_ms=300_000, lateness_ms=30_000, retention_ms=3_600_000, max_hold_ms=H_MS, hold_grace_ms=G_MS)
OFF = replace(HOLDS, max_hold_ms=0)
EVERYTHING = T0 + 10**9  # incidents known far past every test
CLOSED_REFUNDS = validator_for("qris.refunds", closed_schema=True)
ALERTS = validator_for("qris.alerts", closed_schema=True)


def ms(t: float) -> int:
    return T0 + round(t * 1000)


def inc(status: str, t: float, incident: str = "in_a", scope: tuple[str, str] = ("switch", "RINTIS")) -> IncidentEvent:
    return IncidentEvent(ms(t), status, incident, *scope)


class Feed:
    """One engine, offsets numbered per stream; `tick` moves both streams to T0 + t."""

    def __init__(self, params: Params = HOLDS, eng: PartitionEngine | None = None) -> None:
        self.eng = eng or PartitionEngine(0, params)
        self.offsets = [0, 0]
        self.out: list[Decision] = []

    def _feed(self, s: Stream, value: bytes) -> list[Decision]:
        off = self.offsets[s]
        self.offsets[s] += 1
        got = self.eng.on_record(s, off, orjson.loads(value)["reference"].encode(), value, None)
        self.out.extend(got)
        return got

    def p(self, value: bytes) -> list[Decision]:
        return self._feed(P, value)

    def l(self, value: bytes) -> list[Decision]:  # noqa: E743
        return self._feed(L, value)

    def tick(self, t: float) -> list[Decision]:
        return self.p(payment(f"tick-p-{t}", "requested", "TICK", t)) + self.l(
            ledger(f"tick-l-{t}", "reversed", "TICK", t, amount=1)
        )

    def incidents(self, events: list[IncidentEvent], known_through_ms: int) -> list[Decision]:
        got = self.eng.on_incidents(events, known_through_ms)
        self.out.extend(got)
        return got

    def refunds(self) -> list[dict[str, Any]]:
        found = [d.value for d in self.out if d.role == "refunds"]
        for v in found:  # every record emitted here validates, the rules beyond the schema too
            assert [e.message for e in CLOSED_REFUNDS.iter_errors(v)] == [], v
            assert beyond_schema_errors("qris.refunds", v) == [], v
        return found

    def alerts(self) -> list[dict[str, Any]]:
        return [d.value for d in self.out if d.role == "alerts"]


def unsettled(f: Feed, ref: str = "QR1", t: float = 0.0, amount: int = 25_000, **request: Any) -> None:
    f.p(payment(f"{ref}-q", "requested", ref, t, amount, **request))
    f.l(ledger(f"{ref}-d", "debited", ref, t, amount))


# -- a hold and its end -----------------------------------------------------------------------


def test_a_timeout_refund_covered_by_an_open_incident_is_held_then_requested_g_after_resolution() -> None:
    f = Feed()
    f.incidents([inc("opened", 100), inc("updated", 400), inc("resolved", 1000)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    [held] = f.refunds()
    assert held["type"] == "refund.held"
    assert held["refund_id"] == ids.refund_id("QR1", ms(300))  # the id the refund would have had
    assert held["amount"] == 25_000 and held["reason"] == "SETTLEMENT_TIMEOUT"
    assert held["incident_id"] == "in_a" and held["incident_ids"] == ["in_a"]
    assert held["deadline"] == held["decided_at"] == format_ms(ms(300))
    assert held["release_by"] == format_ms(ms(300) + H_MS)
    f.tick(1000 + 900)  # W = 1870: G after the resolution is 1900
    assert len(f.refunds()) == 1
    f.tick(1931)
    _, requested = f.refunds()
    assert requested["type"] == "refund.requested"
    assert requested["refund_id"] == held["refund_id"] and requested["amount"] == 25_000
    assert requested["decided_at"] == format_ms(ms(1900))
    assert requested["hold"] == {
        "held_from": format_ms(ms(300)),
        "held_until": format_ms(ms(1900)),
        "held_ms": 1_600_000,
        "held_amount": 25_000,
        "incident_id": "in_a",
        "incident_ids": ["in_a"],
        "release_by": format_ms(ms(300) + H_MS),
        "released_because": "incident_resolved",
    }


def test_a_settlement_during_the_hold_releases_it_without_payment_or_clawback() -> None:
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    f.p(payment("QR1-s", "settled", "QR1", 500))
    f.tick(600)
    held, released = f.refunds()
    assert released["type"] == "refund.hold_released"
    assert released["refund_id"] == held["refund_id"]
    assert released["hold_release_id"] == ids.hold_release_id(held["refund_id"])
    assert released["reason"] == "LATE_SETTLEMENT" and released["amount"] == 25_000
    assert released["decided_at"] == format_ms(ms(500))
    assert released["evidence"]["trigger"]["event_id"] == "QR1-s"
    assert released["hold"]["released_because"] == "owed_covered"
    assert released["hold"]["held_until"] == format_ms(ms(500))
    assert f.alerts() == []  # nothing was paid: nothing to claw back, no LATE_SETTLEMENT alert
    f.tick(8000)
    assert len(f.refunds()) == 2  # the hold's timer finds nothing left to do


def test_a_ledger_reversal_during_the_hold_releases_it_as_late_reversal() -> None:
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    f.l(ledger("QR1-r", "reversed", "QR1", 450))
    f.tick(500)
    assert [r["type"] for r in f.refunds()] == ["refund.held", "refund.hold_released"]
    assert f.refunds()[1]["reason"] == "LATE_REVERSAL"


def test_an_incident_that_never_resolves_holds_at_most_h_past_the_deadline() -> None:
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(300 + 7200 - 31)
    assert [r["type"] for r in f.refunds()] == ["refund.held"]
    f.tick(300 + 7200 + 31)
    requested = f.refunds()[1]
    assert requested["type"] == "refund.requested"
    assert requested["decided_at"] == format_ms(ms(7500))
    assert requested["hold"]["released_because"] == "max_hold"
    assert requested["hold"]["held_ms"] == H_MS


@pytest.mark.parametrize(("second_opens_at", "released_at"), [(1900, 2900), (1901, 1900)])
def test_a_covering_incident_opening_within_the_grace_keeps_the_hold_on(
    second_opens_at: float, released_at: float
) -> None:
    f = Feed()
    # The second incident (the acquirer of the payment) opens exactly at, or just after,
    # resolution + G of the first; it resolves 100 s later.
    f.incidents(
        [
            inc("opened", 100),
            inc("resolved", 1000),
            inc("opened", second_opens_at, "in_b", ("acquirer", "BCA")),
            inc("resolved", second_opens_at + 100, "in_b", ("acquirer", "BCA")),
        ],
        EVERYTHING,
    )
    unsettled(f)
    f.tick(4000)
    held, requested = f.refunds()
    assert requested["decided_at"] == format_ms(ms(released_at))
    expected_ids = ["in_a", "in_b"] if released_at > 1900 else ["in_a"]
    assert requested["hold"]["incident_ids"] == expected_ids


@pytest.mark.parametrize(
    ("scope", "covers"),
    [
        (("all", "all"), True),
        (("switch", "RINTIS"), True),
        (("switch", "JALIN"), False),
        (("acquirer", "BCA"), True),
        (("issuer", "BANKDKI"), True),
        (("merchant", "ID1020012345678"), True),
        (("merchant", "MCC-5812"), True),
        (("merchant", "MCC-5411"), False),
        (("merchant", "ID999"), False),
    ],
)
def test_which_incidents_cover_a_payment(scope: tuple[str, str], covers: bool) -> None:
    f = Feed()
    f.incidents([inc("opened", 100, "in_x", scope)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    assert f.refunds()[0]["type"] == ("refund.held" if covers else "refund.requested")


@pytest.mark.parametrize(
    ("request_fields", "scope", "covers"),
    [
        # A merchant whose id looks like a pool's: its own incident covers it, the pool's does not.
        ({"merchant_id": "MCC-5812", "mcc": "4121"}, ("merchant", "\\MCC-5812"), True),
        ({"merchant_id": "MCC-5812", "mcc": "4121"}, ("merchant", "MCC-5812"), False),
        ({"merchant_id": "MCC-4121", "mcc": "4121"}, ("merchant", "MCC-4121"), True),  # as its MCC's merchant
        ({"merchant_id": "\\X", "mcc": "4121"}, ("merchant", "\\\\X"), True),
        ({"merchant_id": "\\X", "mcc": "4121"}, ("merchant", "\\X"), False),
        # A pool's id is its MCC escaped and cut (`signals.pool_id`).
        ({"mcc": "58\x1b[2J"}, ("merchant", "MCC-58\\u001b[2J"), True),
        ({"mcc": "58\x1b[2J"}, ("merchant", "MCC-58\x1b[2J"), False),
    ],
)
def test_a_merchant_is_never_taken_for_a_pool_and_a_pool_is_named_by_its_escaped_mcc(
    request_fields: dict[str, str], scope: tuple[str, str], covers: bool
) -> None:
    f = Feed()
    f.incidents([inc("opened", 100, "in_x", scope)], EVERYTHING)
    unsettled(f, **request_fields)
    f.tick(400)
    assert f.refunds()[0]["type"] == ("refund.held" if covers else "refund.requested")


def test_without_a_request_only_an_all_incident_covers() -> None:
    for scope, expected in ((("switch", "RINTIS"), "refund.requested"), (("all", "all"), "refund.held")):
        f = Feed()
        f.incidents([inc("opened", 100, "in_x", scope)], EVERYTHING)
        f.l(ledger("QR1-d", "debited", "QR1", 0))
        f.tick(400)
        assert f.refunds()[0]["type"] == expected


def test_open_at_means_opened_at_or_before_and_not_resolved_before_the_deadline() -> None:
    # Deadline at 300: an incident resolved exactly at 300 is still open then; one opened
    # exactly at 300 is open; one resolved at 299.999 or opened at 300.001 is not.
    cases = [((100, 300), True), ((300, None), True), ((100, 299.999), False), ((300.001, None), False)]
    for (opened, resolved), held in cases:
        f = Feed()
        events = [inc("opened", opened)] + ([inc("resolved", resolved)] if resolved is not None else [])
        f.incidents(events, EVERYTHING)
        unsettled(f)
        f.tick(400)
        assert (f.refunds()[0]["type"] == "refund.held") is held, (opened, resolved)


def test_payment_failed_and_excess_debit_are_never_held() -> None:
    f = Feed()
    f.incidents([inc("opened", 0)], EVERYTHING)
    unsettled(f, "QR1")
    f.p(payment("QR1-f", "failed", "QR1", 10, response_code="05"))
    unsettled(f, "QR2")
    f.l(ledger("QR2-d2", "debited", "QR2", 5))
    f.p(payment("QR2-s", "settled", "QR2", 10))
    f.tick(400)
    assert sorted((r["type"], r["reason"]) for r in f.refunds()) == [
        ("refund.requested", "EXCESS_DEBIT"),
        ("refund.requested", "PAYMENT_FAILED"),
    ]


def test_holds_off_gives_the_old_decisions_even_during_an_incident() -> None:
    f = Feed(OFF)
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    assert [r["type"] for r in f.refunds()] == ["refund.requested"]
    assert "hold" not in f.refunds()[0]


# -- the incidents are a third input of the watermark ---------------------------------------


def test_a_deadline_waits_until_the_incidents_are_known_through_it() -> None:
    f = Feed()
    unsettled(f)
    f.tick(400)  # W = 370 is past the deadline (300), but no incident is known yet
    assert f.refunds() == []
    f.incidents([inc("opened", 100)], ms(299))
    assert f.refunds() == []
    f.incidents([], ms(300))  # every decision up to the deadline is known: decide it
    assert [r["type"] for r in f.refunds()] == ["refund.held"]


def test_a_deadline_known_through_1_ms_before_it_still_waits_for_the_incidents() -> None:
    # The edge of the rule above: incidents known through 1 ms before the deadline do not tell
    # whether one opens at the deadline itself (it would be open at it: held, not paid).
    f = Feed()
    f.incidents([], ms(300) - 1)
    unsettled(f)
    f.tick(400)
    assert f.refunds() == []
    f.incidents([inc("opened", 300)], ms(300))
    [held] = f.refunds()
    assert held["type"] == "refund.held" and held["incident_id"] == "in_a"


def test_records_after_the_deadline_wait_behind_it_for_the_incidents() -> None:
    f = Feed()
    unsettled(f)
    f.p(payment("QR1-s", "settled", "QR1", 350))
    f.tick(400)
    assert f.refunds() == []
    f.incidents([inc("opened", 100)], ms(1000))
    held, released = f.refunds()
    assert held["type"] == "refund.held" and released["type"] == "refund.hold_released"


def test_incidents_given_bit_by_bit_decide_exactly_what_the_whole_timeline_decides() -> None:
    events = [
        inc("opened", 100),
        inc("opened", 200, "in_b", ("merchant", "MCC-5812")),
        inc("resolved", 1000),
        inc("resolved", 1500, "in_b", ("merchant", "MCC-5812")),
        inc("opened", 2300, "in_c", ("all", "all")),
        inc("resolved", 2600, "in_c", ("all", "all")),
    ]

    def run(bit_by_bit: bool) -> list[dict[str, Any]]:
        f = Feed()
        if not bit_by_bit:
            f.incidents(events, EVERYTHING)
        for i in range(40):
            t = i * 100.0
            unsettled(f, f"QR{i}", t)
            if i % 3 == 0:
                f.p(payment(f"QR{i}-s", "settled", f"QR{i}", t + 900))
            f.tick(t + 50)
            if bit_by_bit:  # known through a minute behind the watermark, like the detector
                known = ms(t + 50 - 90)
                f.incidents([e for e in events if e.at_ms <= known], known)
        f.tick(20_000)
        if bit_by_bit:
            f.incidents(events, EVERYTHING)
        return f.refunds()

    whole, bits = run(False), run(True)
    assert {"refund.held", "refund.requested", "refund.hold_released"} <= {r["type"] for r in whole}
    assert bits == whole


# -- state: retention, restore, new cycles ---------------------------------------------------


def test_retention_never_drops_a_reference_with_an_open_hold() -> None:
    params = replace(HOLDS, retention_ms=600_000)
    f = Feed(params)
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(2000)  # W passed last eff + R long ago
    assert "QR1" in f.eng.refs and f.eng.refs["QR1"].holds
    f.p(payment("QR1-s", "settled", "QR1", 2100))
    f.tick(2200)
    assert f.refunds()[-1]["type"] == "refund.hold_released"
    f.tick(2100 + 700)
    assert "QR1" not in f.eng.refs


def test_a_restored_engine_continues_a_hold_with_the_same_decisions() -> None:
    events = [inc("opened", 100), inc("resolved", 1000)]
    whole = Feed()
    whole.incidents(events, EVERYTHING)
    unsettled(whole)
    unsettled(whole, "QR2", 10)
    whole.tick(400)
    whole.p(payment("QR2-s", "settled", "QR2", 500))
    whole.tick(3000)

    first = Feed()
    first.incidents(events, EVERYTHING)
    unsettled(first)
    unsettled(first, "QR2", 10)
    first.tick(400)
    refs, meta = first.eng.take_dirty()
    entries = [(k, v) for k, v in refs.items() if v is not None]
    assert any(b'"holds"' in v for _k, v in entries)  # holds are saved
    eng = PartitionEngine.restore(0, HOLDS, meta, entries)
    second = Feed(eng=eng)
    second.offsets = list(first.offsets)
    second.incidents(events, EVERYTHING)  # a restored engine is given the timeline again
    second.p(payment("QR2-s", "settled", "QR2", 500))
    second.tick(3000)
    assert first.refunds() + second.refunds() == whole.refunds()


def test_state_saved_before_holds_existed_still_restores() -> None:
    f = Feed(OFF)
    unsettled(f)
    f.tick(100)
    refs, meta = f.eng.take_dirty()
    old = []
    for k, v in refs.items():
        assert v is not None
        d = codec.loads(v)
        if d["state"] is not None:
            d["state"] = saved_state_v2(d["state"])
            d["state"].pop("v")  # version 1: no version, no holds
            assert "h" not in d["state"]
        old.append((k, codec.dumps(d)))
    eng = PartitionEngine.restore(0, HOLDS, meta, old)
    g = Feed(eng=eng)
    g.offsets = list(f.offsets)
    g.incidents([], EVERYTHING)
    g.tick(400)
    assert [r["type"] for r in g.refunds()] == ["refund.requested"]


def _paid_after_hold_then_settled(restore: bool = False, drop_request_times: bool = False) -> Feed:
    # Held at its deadline (300), requested at the hold's end (G after the resolution: 1900),
    # settled 5 s later; `restore`: the engine is rebuilt from its saved state in between,
    # `drop_request_times` as the previous release saved it (no refund request times).
    events = [inc("opened", 100), inc("resolved", 1000)]
    f = Feed()
    f.incidents(events, EVERYTHING)
    unsettled(f)
    f.tick(1931)
    if restore:
        refs, meta = f.eng.take_dirty()
        entries = []
        for k, v in refs.items():
            assert v is not None
            d = codec.loads(v)
            if k == "QR1":
                assert d["state"]["refunds_requested_at_ms"] == [ms(1900)]
                assert [len(r) for r in d["state"]["refunds"]] == [5]  # what every release reads
                if drop_request_times:
                    del d["state"]["refunds_requested_at_ms"]
            entries.append((k, codec.dumps(d)))
        g = Feed(eng=PartitionEngine.restore(0, HOLDS, meta, entries))
        g.offsets, g.out = list(f.offsets), list(f.out)
        g.incidents(events, EVERYTHING)
        f = g
    f.p(payment("QR1-s", "settled", "QR1", 1905))
    f.tick(2000)
    return f


def test_a_settlement_seconds_after_a_held_refund_was_requested_says_so() -> None:
    f = _paid_after_hold_then_settled()
    held, requested, cancel = f.refunds()
    assert requested["decided_at"] == format_ms(ms(1900)) and requested["hold"]["held_ms"] == 1_600_000
    assert cancel["type"] == "refund.cancel_requested" and cancel["cancels_refund_id"] == held["refund_id"]
    assert cancel["cancel_id"] == ids.cancel_id(held["refund_id"], "QR1-s")
    [alert] = f.alerts()
    assert alert["kind"] == "LATE_SETTLEMENT" and alert["incident_id"] == "in_a"
    assert (
        "arrived 5 s after the refund was requested at the end of its hold (26 min after the refund deadline);"
        in alert["summary"]
    )
    assert alert["observed"]["after_request_s"] == 5.0 and alert["observed"]["late_by_s"] == 1605.0
    assert [e.message for e in ALERTS.iter_errors(alert)] == [] and beyond_schema_errors("qris.alerts", alert) == []
    # A restore between the request and the settlement tells it the same.
    restored = _paid_after_hold_then_settled(restore=True)
    assert restored.refunds() == f.refunds() and restored.alerts() == f.alerts()


def test_a_held_refund_saved_without_its_request_time_is_told_by_its_deadline() -> None:
    # State the previous release saved: the same decisions and ids; the alert says what it knows.
    f = _paid_after_hold_then_settled()
    old = _paid_after_hold_then_settled(restore=True, drop_request_times=True)
    assert old.refunds() == f.refunds()
    [alert], [known] = old.alerts(), f.alerts()
    assert alert["alert_id"] == known["alert_id"] and alert["incident_id"] == known["incident_id"]
    assert "settlement QR1-s arrived 26 min after the refund deadline; check whether" in alert["summary"]
    assert "requested" not in alert["summary"]
    assert "after_request_s" not in alert["observed"] and alert["observed"]["late_by_s"] == 1605.0
    assert {k: v for k, v in alert.items() if k not in ("summary", "observed")} == {
        k: v for k, v in known.items() if k not in ("summary", "observed")
    }


def test_a_refund_requested_at_its_deadline_saves_no_request_time_and_reads_as_before() -> None:
    f = Feed(OFF)
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    refs, _meta = f.eng.take_dirty()
    saved = codec.loads(refs["QR1"] or b"")["state"]
    assert len(saved["refunds"]) == 1 and "refunds_requested_at_ms" not in saved
    f.p(payment("QR1-s", "settled", "QR1", 500))
    f.tick(600)
    [alert] = f.alerts()
    assert "arrived 3 min after the refund deadline; check whether" in alert["summary"]
    assert "after_request_s" not in alert["observed"]


def test_refund_request_times_round_trip_beside_the_refunds() -> None:
    st = ReferenceState(
        "QR1",
        refunds=[
            Refund("rf_a", 10_000, ms(300), "SETTLEMENT_TIMEOUT", False),
            Refund("rf_b", 25_000, ms(600), "PAYMENT_FAILED", True, requested_at_ms=ms(1900)),
        ],
    )
    saved = orjson.loads(orjson.dumps(st.to_json()))
    assert saved["refunds_requested_at_ms"] == [None, ms(1900)]
    assert [len(r) for r in saved["refunds"]] == [5, 5]
    assert ReferenceState.from_json(saved) == st
    del saved["refunds_requested_at_ms"]  # as a release that did not keep them saved it
    assert [r.requested_at_ms for r in ReferenceState.from_json(saved).refunds] == [None, None]
    st.refunds[1].requested_at_ms = None
    assert "refunds_requested_at_ms" not in st.to_json()


def test_a_new_cycle_during_a_hold_never_pays_twice() -> None:
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 2000)], EVERYTHING)
    unsettled(f)
    f.tick(400)
    f.l(ledger("QR1-d2", "debited", "QR1", 600))  # a second debit, a new cycle (deadline 900)
    f.tick(4000)
    refunds = f.refunds()
    assert [r["type"] for r in refunds] == ["refund.held", "refund.held", "refund.requested", "refund.requested"]
    assert [r["amount"] for r in refunds] == [25_000, 25_000, 25_000, 25_000]
    assert len({r["refund_id"] for r in refunds}) == 2


def test_a_settlement_during_two_holds_releases_one_and_pays_the_excess_once() -> None:
    def run(params: Params) -> int:
        f = Feed(params)
        f.incidents([inc("opened", 100), inc("resolved", 2000)], EVERYTHING)
        unsettled(f)
        f.tick(400)
        f.l(ledger("QR1-d2", "debited", "QR1", 600))
        f.p(payment("QR1-s", "settled", "QR1", 700))
        f.tick(4000)
        active: dict[str, int] = {}
        for r in f.refunds():
            if r["type"] == "refund.requested":
                active[r["refund_id"]] = r["amount"]
            elif r["type"] == "refund.cancel_requested":
                active.pop(r["refund_id"])
        return sum(active.values())

    assert run(HOLDS) == run(OFF) == 25_000


def test_the_timeline_ignores_repeated_events() -> None:
    tl = IncidentTimeline()
    assert not tl.add([inc("opened", 100), inc("opened", 100)], ms(100))
    assert tl.add([inc("resolved", 200)] * 2, ms(200))  # a resolution became known
    assert not tl.add([inc("resolved", 200)], ms(300))  # a repeat changes nothing
    assert tl.incidents["in_a"].resolved_at_ms == ms(200)
    assert tl.release_at(None, ms(150), G_MS) == (ms(150), [])  # a switch does not cover "no request"
    tl.add([inc("opened", 100, "in_all", ("all", "all")), inc("resolved", 250, "in_all", ("all", "all"))], ms(300))
    assert tl.release_at(None, ms(150), G_MS) == (ms(250) + G_MS, ["in_all"])


_SCOPE_IDS = ["S1", "A1", "I1", "M1", "MCC-5812", "\\MCC-5812", "\\\\x", "5812", "MCC-unknown", "all", ""]
_IDS = st.sampled_from(_SCOPE_IDS)
_REQUEST_SCOPE_FIELDS = ("switch_id", "acquirer_id", "issuer_id", "merchant_id", "mcc")


@settings(max_examples=300, deadline=None)
@given(
    request=st.none()
    | st.fixed_dictionaries(
        {k: st.none() | _IDS for k in ("switch_id", "acquirer_id", "issuer_id", "merchant_id")}
        | {"mcc": st.none() | st.sampled_from(["5812", "unknown", "x" * 40])}
    ),
)
def test_the_incidents_filed_under_a_payments_scopes_are_exactly_those_that_cover_it(
    request: dict[str, Any] | None,
) -> None:
    # The timeline looks a payment's incidents up by scope (a hostile minute opened thousands:
    # scanning all of them at every deadline was quadratic); the answer must be `covers`'s, for
    # an incident of every scope type and id against any payment.
    tl = IncidentTimeline()
    scopes = [(t, sid) for t in ("all", "switch", "acquirer", "issuer", "merchant", "other") for sid in _SCOPE_IDS]
    tl.add([IncidentEvent(ms(10), "opened", f"in{i:03d}", t, sid) for i, (t, sid) in enumerate(scopes)], ms(100))
    rq = None
    if request is not None:
        value = {
            "event_id": "e",
            "type": "requested",
            "reference": "R",
            "occurred_at": "2025-03-29T00:00:00Z",
            "amount": 1,
            "currency": "IDR",
            "account_id": "A",
            "merchant_id": "M9",
            **{k: v for k, v in request.items() if v},
        }
        rq = parse_payment(b"R", orjson.dumps(value))
        assert not isinstance(rq, Rejection), rq
    want = sorted(i.incident_id for i in tl.incidents.values() if i.covers(rq))
    assert sorted(i.incident_id for i in tl.covering_open_at(rq, ms(50))) == want
    assert tl.release_at(rq, ms(50), G_MS)[1] == want  # (all opened at once: by id)
    # The hold tally's `kept_held` covers the same payments, from the `refund.held` record's
    # evidence of the request.
    evidence = {"request": None if rq is None else {k: getattr(rq, k) for k in _REQUEST_SCOPE_FIELDS}}
    held = Decision("refunds", b"R", {"type": "refund.held", "evidence": evidence}, ms(10))
    tally = HoldTally([0], 0)
    tags = held_scope_tags(held)
    tally.on_report(
        {
            "partition": 0,
            "hold_events": [["held", "rf", "in_x", 7, ms(10)]],
            "decided_through_ms": ms(20),
            "hold_scopes": {"rf": tags},
        }
    )
    kept = sorted(
        i.incident_id for i in tl.incidents.values() if tally.kept("in_y", i.scope_type, i.scope_id, ms(50)) == [1, 7]
    )
    assert kept == want


# -- the simulator's outage: replay, live-like loop, H = 0 -----------------------------------


def _records(scenario: str, minutes: float = 40, rate: float = 200, **knobs: Any) -> list[KafkaRecord]:
    start = T0 + 2 * 3600 * 1000
    return [
        KafkaRecord(topic, partition, offset, ts, key.encode() if key is not None else None, value)
        for topic, partition, offset, key, value, ts in generate(
            scenario, seed=3, start_ms=start, minutes=minutes, rate_per_min=rate, partitions=2, **knobs
        )
    ]


@pytest.fixture(scope="module")
def outage() -> list[KafkaRecord]:
    return _records("outage")


def _lines(decisions: list[tuple[int, Decision]]) -> list[bytes]:
    return [codec.dumps([p, d.role, d.value, d.at_ms]) for p, d in decisions]


@pytest.mark.slow
def test_the_outage_replayed_with_holds_claws_nothing_back_and_ends_with_the_same_refunds(
    outage: list[KafkaRecord],
) -> None:
    off = list(replay(outage, replace(HOLDS, max_hold_ms=0), drain=True))
    on = list(replay(outage, HOLDS, drain=True))
    bursts = [d.value for p, d in on if p == -1]
    assert any(b["status"] == "opened" for b in bursts)

    # The same incidents; with holds on, their updated/resolved alerts carry the holds, and
    # their summary lines end with them in words.
    def without_holds(b: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in b.items() if k != "holds"}
        if phrase := holds_phrase(b.get("holds") or {"held": {"count": 0}}):
            assert out["summary"].endswith(f"; {phrase}")
            out["summary"] = out["summary"].removesuffix(f"; {phrase}")
        return out

    assert [without_holds(b) for b in bursts] == [d.value for p, d in off if p == -1]
    assert all("holds" in b for b in bursts if b["status"] != "opened")
    assert any("refunds held: " in b["summary"] for b in bursts)

    def final_active(decisions: list[tuple[int, Decision]]) -> dict[str, int]:
        active: dict[str, dict[str, int]] = defaultdict(dict)
        for _p, d in decisions:
            v = d.value
            if v.get("type") == "refund.requested":
                active[v["reference"]][v["refund_id"]] = v["amount"]
            elif v.get("type") == "refund.cancel_requested":
                active[v["reference"]].pop(v["refund_id"])
        return {r: sum(a.values()) for r, a in active.items() if a}

    assert final_active(on) == final_active(off)
    cancels_off = sum(1 for _p, d in off if d.value.get("type") == "refund.cancel_requested")
    cancels_on = sum(1 for _p, d in on if d.value.get("type") == "refund.cancel_requested")
    assert cancels_off > 50 and cancels_on <= cancels_off // 10
    held = {d.value["refund_id"]: d.value for _p, d in on if d.value.get("type") == "refund.held"}
    ended = {d.value["refund_id"]: d.value["hold"] for _p, d in on if "hold" in d.value}
    assert held and set(held) == set(ended)  # every hold ends
    assert all(h["held_until"] <= h["release_by"] for h in ended.values())


@pytest.mark.slow
def test_a_day_without_incidents_is_unchanged_by_holds() -> None:
    records = _records("normal", minutes=30)
    off = list(replay(records, replace(HOLDS, max_hold_ms=0), drain=True))
    on = list(replay(records, HOLDS, drain=True))
    assert not any(p == -1 for p, _d in on)
    assert _lines(on) == _lines(off)


class LiveLoop:
    """The live system in one process: partitions take records in arrival order, their signals
    go to one detector as they close, and the detector's incidents go back to every partition
    with how far they are known (what the worker does through topics)."""

    def __init__(self, params: Params, partitions: list[int], burst: BurstParams) -> None:
        self.params = params
        self.engines = {p: PartitionEngine(p, params) for p in partitions}
        self.detector = BurstDetector(partitions, burst)
        self.tally = HoldTally(partitions, params.probe_age_ms)
        self.out: list[tuple[int, Decision]] = []

    def feed(self, rec: KafkaRecord) -> None:
        stream = Stream.P if rec.topic == "qris.payment-requests" else Stream.L
        self._take(
            rec.partition,
            self.engines[rec.partition].on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms),
        )

    def _take(self, p: int, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.role != "signals":
                self.out.append((p, d))
                continue
            if is_hold_report(d.value):  # the tally sends the alerts it kept for the holds
                self.out.extend((-1, a) for a in self.tally.on_report(d.value))
                continue
            alerts = self.detector.on_signals(d.value)
            self.out.extend((-1, a) for a in self.tally.on_alerts(alerts))
            events = [e for a in alerts if (e := incident_event(a.value, self.params.probe_age_ms)) is not None]
            closed = self.detector.closed_through
            if closed is None:
                continue
            known = (closed + 1) * MINUTE_MS + self.params.probe_age_ms
            for q, eng in self.engines.items():
                self._take(q, eng.on_incidents(events, known))


@pytest.mark.slow
def test_live_like_feedback_decides_exactly_what_replay_decides(outage: list[KafkaRecord]) -> None:
    burst = BurstParams()
    live = LiveLoop(HOLDS, [0, 1], burst)
    for rec in outage:
        live.feed(rec)
    replayed = list(replay(outage, HOLDS))
    assert any(d.value.get("type") == "refund.held" for _p, d in replayed)
    for p in (0, 1):
        assert _lines([x for x in live.out if x[0] == p]) == _lines([x for x in replayed if x[0] == p]), p
    # The alerts are the same, with the same holds; the tally may send an `opened` alert before
    # an earlier `updated` one that waits for the partitions.
    alerts = _lines([x for x in replayed if x[0] == -1])
    assert sorted(_lines([x for x in live.out if x[0] == -1])) == sorted(alerts)
    assert any(b'"holds"' in a for a in alerts)


@pytest.mark.slow
def test_signals_do_not_wait_for_the_incidents(outage: list[KafkaRecord]) -> None:
    # The same records with incidents never known: decisions stop, signals go on unchanged.
    blocked = {p: PartitionEngine(p, HOLDS) for p in (0, 1)}
    free = {p: PartitionEngine(p, OFF) for p in (0, 1)}
    got: dict[str, list[Any]] = {"blocked": [], "free": []}
    refunds_blocked = 0
    for rec in outage:
        stream = Stream.P if rec.topic == "qris.payment-requests" else Stream.L
        for name, engines in (("blocked", blocked), ("free", free)):
            for d in engines[rec.partition].on_record(stream, rec.offset, rec.key, rec.value, rec.timestamp_ms):
                if d.role == "signals":
                    got[name].append(d.value)
                elif name == "blocked" and d.role == "refunds":
                    refunds_blocked += 1
    assert refunds_blocked == 0
    assert len(got["free"]) > 30
    assert got["blocked"] == got["free"]


def test_h_zero_is_the_default_of_the_core_and_changes_nothing() -> None:
    assert Params().max_hold_ms == 0
    assert PartitionEngine(0, Params()).incidents.known_through_ms == POS_INF


def test_a_hold_names_only_incidents_opened_by_its_end_whatever_is_known_later() -> None:
    # Replay knows the whole timeline, the live worker only what was decided so far: the hold's
    # incidents must not depend on that.
    f = Feed()
    f.incidents([inc("opened", 100), inc("opened", 7600, "in_b", ("acquirer", "BCA"))], EVERYTHING)
    unsettled(f)
    f.tick(8000)
    requested = f.refunds()[1]
    assert requested["hold"]["released_because"] == "max_hold"
    assert requested["hold"]["incident_ids"] == ["in_a"]


# -- properties --------------------------------------------------------------------------------

PROP = replace(HOLDS, retention_ms=3_600_000, max_hold_ms=1_200_000, hold_grace_ms=120_000)
SCOPES = [("all", "all"), ("switch", "RINTIS"), ("switch", "JALIN"), ("acquirer", "BCA"), ("merchant", "MCC-5812")]


@st.composite
def timelines(draw: st.DrawFn) -> list[IncidentEvent]:
    events = []
    for i in range(draw(st.integers(0, 3))):
        opened = draw(st.integers(-100, 900))
        scope = draw(st.sampled_from(SCOPES))
        events.append(inc("opened", opened, f"in_{i}", scope))
        if draw(st.booleans()):
            events.append(inc("resolved", opened + draw(st.integers(0, 600)), f"in_{i}", scope))
    return sorted(events, key=lambda e: e.at_ms)


@st.composite
def held_input(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """`partition_input` with late settlements and reversals, which end holds by a record."""
    p, l = draw(partition_input())  # noqa: E741
    for r in range(4):
        if draw(st.booleans()):
            t = draw(st.integers(400, 900))
            amount = draw(st.sampled_from([25_000, 10_000]))
            if draw(st.booleans()):
                p.insert(len(p) - 1, payment(f"R{r}-late", "settled", f"R{r}", t, amount))
            else:
                l.insert(len(l) - 1, ledger(f"R{r}-late", "reversed", f"R{r}", t, amount))
    return p, l


def run_with_incidents(
    p: list[bytes],
    l: list[bytes],  # noqa: E741
    schedule: list[int],
    events: list[IncidentEvent],
    lag_ms: int | None,  # noqa: E741
) -> list[dict[str, Any]]:
    """Feed one engine in `schedule`'s interleaving; incidents all at once (`lag_ms` None) or
    known through `lag_ms` behind the watermark after every record; drain at the end."""
    eng = PartitionEngine(0, PROP)
    out: list[Decision] = []
    if lag_ms is None:
        out += eng.on_incidents(events, POS_INF)
    idx = [0, 0]
    recs = (p, l)
    order = [s for s in schedule if s in (0, 1)] + [0] * len(p) + [1] * len(l)
    for s in order:
        if idx[s] < len(recs[s]):
            out += eng.on_record(Stream(s), idx[s], None, recs[s][idx[s]])
            idx[s] += 1
            if lag_ms is not None:
                known = eng.watermark_ms - lag_ms
                out += eng.on_incidents([e for e in events if e.at_ms <= known], known)
    out += eng.on_incidents(events, POS_INF)
    out += eng.drain()
    return [d.value for d in out if d.role != "signals"]


@settings(max_examples=120, deadline=None)
@given(held_input(), timelines(), st.lists(st.integers(0, 1), max_size=40), st.integers(0, 120_000))
def test_holds_depend_only_on_the_records_and_the_timeline(
    inp: tuple[list[bytes], list[bytes]], events: list[IncidentEvent], schedule: list[int], lag_ms: int
) -> None:
    p, l = inp  # noqa: E741
    whole = run_with_incidents(p, l, [], events, None)
    assert run_with_incidents(p, l, schedule, events, lag_ms) == whole
    held = [v["refund_id"] for v in whole if v.get("type") == "refund.held"]
    ended = [v["refund_id"] for v in whole if "hold" in v]
    assert sorted(held) == sorted(ended)  # after a drain every hold ended, once
    for v in whole:
        assert "hold" not in v or v["hold"]["held_until"] <= v["hold"]["release_by"]
        role = "refunds" if "refund_id" in v and "type" in v else "other"
        if role == "refunds":
            assert [e.message for e in CLOSED_REFUNDS.iter_errors(v)] == [], v
            assert beyond_schema_errors("qris.refunds", v) == [], v


def test_a_replayed_partition_without_a_watermark_does_not_hold_back_the_others() -> None:
    # Partition 1 holds one rejected record only: it never has a watermark, reports no burst
    # signals, and must not keep the detector (and so every refund) waiting.
    def rec(topic: str, partition: int, offset: int, value: bytes) -> KafkaRecord:
        return KafkaRecord(topic, partition, offset, None, orjson.loads(value)["reference"].encode(), value)

    records = [
        rec("qris.payment-requests", 0, 0, payment("QR1-q", "requested", "QR1", 0)),
        rec("qris.ledger-debits", 0, 0, ledger("QR1-d", "debited", "QR1", 0)),
        KafkaRecord("qris.payment-requests", 1, 0, None, b"BAD", b"{not json"),
        rec("qris.payment-requests", 0, 1, payment("T-q", "requested", "T", 500)),
        rec("qris.ledger-debits", 0, 1, ledger("T-d", "reversed", "T", 500, 1)),
    ]
    on = [d.value for _p, d in replay(records, HOLDS) if d.role == "refunds"]
    assert [(r["type"], r["reference"]) for r in on] == [("refund.requested", "QR1")]


def run_restored(
    p: list[bytes],
    l: list[bytes],  # noqa: E741
    schedule: list[int],
    events: list[IncidentEvent],
    lag_ms: int,
    restarts: set[int],
    engine: type[PartitionEngine] = PartitionEngine,
) -> tuple[list[tuple[str, bytes | None, bytes, int | None]], dict[str, bytes], list[int]]:
    """As `run_with_incidents` with incidents known `lag_ms` behind the watermark, the state
    saved after every step and the engine rebuilt from it after the steps in `restarts`; the
    rebuilt engine is given the incidents known so far, as `ReconcileShell.engine` gives them.
    Returns the decisions in order, the saved state at the end, and the steps after which a
    hold was open."""
    eng = engine(0, PROP)
    saved: dict[str, bytes] = {}
    meta: bytes | None = None
    known_events: list[IncidentEvent] = []
    known_through_ms = NEG_INF
    out: list[Decision] = []
    holding: list[int] = []
    idx = [0, 0]
    recs = (p, l)
    order = [s for s in schedule if s in (0, 1)] + [0] * len(p) + [1] * len(l)
    for i, s in enumerate(order):
        if idx[s] < len(recs[s]):
            out += eng.on_record(Stream(s), idx[s], None, recs[s][idx[s]])
            idx[s] += 1
            known_through_ms = eng.watermark_ms - lag_ms
            known_events = [e for e in events if e.at_ms <= known_through_ms]
            out += eng.on_incidents(known_events, known_through_ms)
        meta = persist(eng, saved, meta)
        if eng.held_refs:
            holding.append(i)
        if i in restarts:
            eng = engine.restore(0, PROP, meta, sorted(saved.items(), reverse=True))
            out += eng.on_incidents(known_events, known_through_ms)
    out += eng.on_incidents(events, POS_INF)
    out += eng.drain()
    meta = persist(eng, saved, meta)
    return decided(out), {**saved, "~meta": meta or b""}, holding


@st.composite
def outage_timelines(draw: st.DrawFn) -> list[IncidentEvent]:
    """`timelines`, most of them with an outage of every scope from early on, so that most
    unsettled debits reach their deadline inside an incident and are held."""
    events = draw(timelines())
    if draw(st.integers(0, 3)):
        opened = draw(st.integers(-100, 300))
        events.append(inc("opened", opened, "in_all", ("all", "all")))
        if draw(st.booleans()):
            events.append(inc("resolved", opened + draw(st.integers(300, 1500)), "in_all", ("all", "all")))
    return sorted(events, key=lambda e: e.at_ms)


@st.composite
def held_input_then_ticks(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """`held_input` followed by records of an unrelated reference on both streams, every 100 s
    up to 3000 s, so that the watermark passes deadlines, hold ends and resolutions step by step;
    among them, settlements and reversals late enough to cancel a refund requested at the end of
    its hold, whose alert tells how long after that request it came (`Refund.requested_at_ms`)."""
    p, l = draw(held_input())  # noqa: E741
    later: list[tuple[int, int, bytes]] = []
    for r in range(4):
        if draw(st.booleans()):
            t = draw(st.integers(1300, 2900))
            amount = draw(st.sampled_from([25_000, 10_000, 1_000_000]))  # (the last: all of it)
            if draw(st.booleans()):
                later.append((t, 0, payment(f"R{r}-later", "settled", f"R{r}", t, amount)))
            else:
                later.append((t, 1, ledger(f"R{r}-later", "reversed", f"R{r}", t, amount)))
    later.sort(key=lambda x: x[0])
    for k in range(draw(st.integers(4, 26))):
        while later and later[0][0] < 400 + 100 * k:
            _t, s, record = later.pop(0)
            (l if s else p).append(record)
        p.append(payment(f"tick-p-{k}", "requested", "TICK", 400 + 100 * k))
        l.append(ledger(f"tick-l-{k}", "reversed", "TICK", 400 + 100 * k, 1))
    for _t, s, record in later:  # (after the last tick: decided at the drain, after the holds' ends)
        (l if s else p).append(record)
    return p, l


@settings(max_examples=200, deadline=None)
@given(
    held_input_then_ticks(),
    outage_timelines(),
    st.lists(st.integers(0, 1), max_size=40),
    st.integers(0, 120_000),
    st.data(),
)
def test_an_engine_restored_mid_hold_at_any_step_decides_what_the_uninterrupted_one_does(
    inp: tuple[list[bytes], list[bytes]],
    events: list[IncidentEvent],
    schedule: list[int],
    lag_ms: int,
    data: st.DataObject,
) -> None:
    """Refund holds on: a worker restarted from its saved state after any step (mostly while
    a hold is open, when there is one) decides exactly what it would have decided, in order,
    and ends with the same saved state."""
    p, l = inp  # noqa: E741
    whole, state, holding = run_restored(p, l, schedule, events, lag_ms, set())
    steps = len([s for s in schedule if s in (0, 1)]) + len(p) + len(l)
    at: st.SearchStrategy[int] = st.sampled_from(holding) if holding else st.integers(0, steps - 1)
    restarts = data.draw(st.sets(at, min_size=1, max_size=4))
    at_first_hold: bool = data.draw(st.booleans())
    if holding and at_first_hold:
        restarts.add(holding[0])  # just after the first hold opened: its incident is not over yet
    assert run_restored(p, l, schedule, events, lag_ms, restarts)[:2] == (whole, state)


def views_by_heap_scan(eng: PartitionEngine, through: int, watermark_ms: int) -> dict[str, ReferenceState]:
    """The burst views as `_views_ahead` selected them before its index: every record of the
    heap below W grouped by reference, each reference checked."""
    prev = eng.signals_through
    lo_ms = (prev + 1) * MINUTE_MS if prev is not None else -(2**64)
    hi_ms = (through + 1) * MINUTE_MS
    ahead: dict[str, list[Any]] = defaultdict(list)
    for item in eng.heap:
        if item[0] < watermark_ms:
            ahead[item[4]].append(item)
    views = {}
    for ref, items in ahead.items():
        st = eng.refs.get(ref)
        view = st.facts_copy() if st is not None else ReferenceState(ref)
        for eff, _kind, s, _offset, _ref, event in sorted(items, key=lambda it: it[:4]):
            view.apply_facts(Stream(s), eff, event)
        if view.request_eff_ms is not None and lo_ms <= view.request_eff_ms < hi_ms:
            views[ref] = view
    return views


class HeapScanChecked(PartitionEngine):
    """Checks every minute's burst views against `views_by_heap_scan`."""

    views_built = 0

    def _views_ahead(self, through: int, watermark_ms: int, cap: int) -> dict[tuple[str, int], ReferenceState]:
        expected = views_by_heap_scan(self, through, watermark_ms)
        views = super()._views_ahead(through, watermark_ms, cap)
        assert {ref: view for (ref, _minute), view in views.items()} == expected
        HeapScanChecked.views_built += len(views)
        return views


@not_compiled
@settings(max_examples=150, deadline=None)
@given(
    held_input_then_ticks(),
    outage_timelines(),
    st.lists(st.integers(0, 1), max_size=40),
    st.integers(0, 400_000),
    st.sets(st.integers(0, 120), max_size=3),
)
def test_the_burst_views_index_selects_what_a_scan_of_the_heap_selects_across_restores(
    inp: tuple[list[bytes], list[bytes]],
    events: list[IncidentEvent],
    schedule: list[int],
    lag_ms: int,
    restarts: set[int],
) -> None:
    """The requests waiting per minute (`PartitionEngine.waiting`) and the records per reference
    (`pending`) give the views a scan of the
    whole heap gives, with incidents minutes behind and restores in the middle of open minutes;
    a restored engine emits the same signals and decisions as a never-restored one."""
    p, l = inp  # noqa: E741
    whole = run_restored(p, l, schedule, events, lag_ms, set(), HeapScanChecked)
    assert run_restored(p, l, schedule, events, lag_ms, restarts, HeapScanChecked)[:2] == whole[:2]


@not_compiled
def test_the_burst_views_index_is_exercised_and_emptied() -> None:
    HeapScanChecked.views_built = 0
    p = [payment(f"Q{k}-q", "requested", f"Q{k}", 7 * k) for k in range(300)]
    l = [ledger(f"Q{k}-d", "debited", f"Q{k}", 7 * k + 3) for k in range(300)]  # noqa: E741
    for restarts in (set(), {150, 400}):
        run_restored(p, l, [0, 1] * 300, [], 300_000, restarts, HeapScanChecked)
    assert HeapScanChecked.views_built > 100
    eng = PartitionEngine(0, PROP)
    for k in range(300):
        eng.on_record(Stream.P, k, None, p[k])
        eng.on_record(Stream.L, k, None, l[k])
        eng.on_incidents([], eng.watermark_ms - 300_000)
    assert eng.waiting is not None and min(eng.waiting) * MINUTE_MS >= eng.decided_through_ms - 2 * MINUTE_MS
    eng.on_incidents([], POS_INF)
    eng.drain()
    assert not eng.heap and eng.waiting == {}


class _Watching:
    """An observer that watches nothing: with one, a drain runs every retention check."""

    def taken(self, *args: Any) -> None:
        pass

    def processed(self, *args: Any) -> None:
        pass

    def deadline(self, *args: Any) -> None:
        pass

    def dropped(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("max_hold_ms", [0, PROP.max_hold_ms])
def test_a_drain_that_drops_every_reference_at_once_decides_what_each_retention_check_decides(
    max_hold_ms: int,
) -> None:
    """A drain to +inf drops the references at the end, all at once, once no record waits; run
    one by one through the retention heap (as with an observer), the checks give the same
    decisions and signals, in the same order, and leave no reference either."""
    params = replace(PROP, max_hold_ms=max_hold_ms, retention_ms=20 * MINUTE_MS)
    records = [r for r in _records("outage", minutes=20, rate=60) if r.partition == 0]
    out: list[list[bytes]] = []
    for watched in (False, True):
        eng = PartitionEngine(0, params, persistent=False)
        if watched:
            eng.observer = _Watching()  # type: ignore[assignment]
        decided: list[Decision] = []
        for n, r in enumerate(records):
            stream = Stream.P if r.topic == params.payment_topic else Stream.L
            decided += eng.on_record(stream, r.offset, r.key, r.value, r.timestamp_ms)
            if n % 50 == 0:
                decided += eng.on_incidents([], eng.watermark_ms - 5 * MINUTE_MS)
        decided += eng.on_incidents([], POS_INF)
        assert eng.refs and eng.retention_heap
        decided += eng.drain()
        assert not eng.refs and not eng.retention_heap and not eng.heap and not eng.decide
        out.append([codec.dumps([d.role, d.value, d.at_ms]) for d in decided])
    assert out[0] == out[1]
    assert any(b'"refunds"' in line or b"refund" in line for line in out[0])


def test_a_hold_whose_incident_the_timeline_lost_stays_held_until_that_incident_resolves() -> None:
    # The incidents topic lost its first records (trimmed, or deleted and created again) while a
    # partition's state kept a hold of incident `in_a`: restored, the engine's timeline first
    # sees `in_a` in a later `updated` event, or only at its resolution, or never. The hold names
    # `in_a` (it covered the payment at the deadline): it must not end at once as "resolved",
    # to be paid and then clawed back by the late settlements an outage brings.
    held_from = ms(150)
    lost = IncidentTimeline()
    lost.add([], ms(400))
    assert lost.release_at(None, held_from, G_MS, ["in_all"]) == (POS_INF, ["in_all"])  # never seen: held on
    lost.add([inc("resolved", 300, "in_all", ("all", "all"))], ms(400))
    assert lost.release_at(None, held_from, G_MS, ["in_all"]) == (ms(300) + G_MS, ["in_all"])
    late = IncidentTimeline()  # first seen in its `updated` event, after the hold began
    late.add([inc("updated", 200, "in_all", ("all", "all"))], ms(250))
    assert late.release_at(None, held_from, G_MS, ["in_all"]) == (POS_INF, ["in_all"])
    late.add([inc("resolved", 300, "in_all", ("all", "all"))], ms(400))
    assert late.release_at(None, held_from, G_MS, ["in_all"]) == (ms(300) + G_MS, ["in_all"])
    # A whole timeline: the same answer with or without the hold's incidents.
    whole = IncidentTimeline()
    whole.add([inc("opened", 100, "in_all", ("all", "all")), inc("resolved", 300, "in_all", ("all", "all"))], ms(400))
    assert whole.release_at(None, held_from, G_MS, ["in_all"]) == whole.release_at(None, held_from, G_MS)


def test_a_reannounced_opening_of_an_incident_seen_resolved_does_not_reopen_it() -> None:
    f = Feed()
    # The topic kept only the later records: in_a's resolution (300 s) and progress to 2000 s.
    f.incidents([inc("resolved", 300)], 2_000_000 + inc("opened", 0).at_ms)
    unsettled(f, t=600)  # deadline 900 s: in_a resolved 600 s before it
    # The detector, rebuilt from an offset before in_a resolved, says in_a opened (100 s) again
    # in its first record; its own resolution comes again only once it reaches that offset.
    f.incidents([inc("opened", 100)], inc("opened", 250).at_ms)
    f.tick(1000)
    assert [r["type"] for r in f.refunds()] == ["refund.requested"]  # as a replay decides it


def payments_by_minute(params: Params, records: list[tuple[Stream, int, bytes]], lag_ms: int | None) -> dict[int, int]:
    """The payments each minute's burst report counts (scope `all`) when a partition takes
    `records` (stream, offset, value) in that order, the incidents known through `lag_ms` behind
    its watermark after each record, or (None) known ahead of every record."""
    eng = PartitionEngine(0, params)
    out: list[Decision] = [] if lag_ms is not None else eng.on_incidents([], POS_INF - 1)
    for s, offset, record in records:
        out += eng.on_record(s, offset, None, record)
        if lag_ms is not None and eng.watermark_ms > NEG_INF:
            out += eng.on_incidents([], eng.watermark_ms - lag_ms)
    out += eng.on_incidents([], POS_INF)
    out += eng.drain()
    counted: dict[int, int] = {}
    for d in out:
        for m in d.value.get("minutes", []) if d.role == "signals" else []:
            counted[m["minute"]] = counted.get(m["minute"], 0) + m["scopes"].get("all", {"c": [0]})["c"][0]
    return counted


def test_a_payment_requested_after_its_reference_was_dropped_counts_however_far_the_incidents_lag() -> None:
    """A reference requested and debited, its debit redelivered (a duplicate: not a record of
    it), then requested again after R: the retention check drops it first, so the second request
    is a payment of its own, counted in its minute. The burst views (incidents behind the
    watermark) see that too: how far the incidents lag must not change the minute reports (in a
    replay it depends on how the partitions interleave)."""
    params = replace(HOLDS, retention_ms=400_000, max_hold_ms=60_000)
    p = [payment("X-q1", "requested", "X", 0), payment("X-q2", "requested", "X", 420)]
    l = [ledger("X-d", "debited", "X", 0), ledger("X-d", "debited", "X", 120)]  # noqa: E741
    for k in range(1, 80):  # other payments, settled, every 10 s: the watermark moves on
        p.append(payment(f"K{k}-q", "requested", f"K{k}", 10 * k + 1))
        p.append(payment(f"K{k}-s", "settled", f"K{k}", 10 * k + 2))
        l.append(ledger(f"K{k}-d", "debited", f"K{k}", 10 * k + 1))
    p.sort(key=lambda r: orjson.loads(r)["occurred_at"])
    l.sort(key=lambda r: orjson.loads(r)["occurred_at"])  # noqa: E741
    # The two streams taken in turn, a record of each.
    records = [
        (s, k, rs[k]) for k in range(max(len(p), len(l))) for s, rs in ((Stream.P, p), (Stream.L, l)) if k < len(rs)
    ]

    on_time = payments_by_minute(params, records, 0)
    assert on_time[(T0 + 420_000) // MINUTE_MS] == 1 + 6  # X's second request and the minute's six others
    for lag_ms in (60_000, 450_000):
        assert payments_by_minute(params, records, lag_ms) == on_time


def test_two_payments_of_a_reference_closed_by_one_watermark_jump_count_however_the_incidents_lag() -> None:
    """A reference requested, then requested again after R (a payment of its own), and the
    ledger stream silent until after both: W jumps from nothing past both minutes at once. With
    the incidents behind W, the burst views judge both payments in that one close; each counts
    in its own minute, as when the incidents are known ahead of the records."""
    params = replace(HOLDS, retention_ms=400_000, max_hold_ms=60_000)
    p = [payment("X-q1", "requested", "X", 0), payment("X-q2", "requested", "X", 401)]
    l: list[bytes] = []  # noqa: E741
    for k in range(1, 160):  # other payments every 10 s; their debits only from 481 s
        p.append(payment(f"K{k}-q", "requested", f"K{k}", 10 * k + 1))
        if 10 * k + 1 >= 481:
            l.append(ledger(f"K{k}-d", "debited", f"K{k}", 10 * k + 1))
    p.sort(key=lambda r: orjson.loads(r)["occurred_at"])
    merged = sorted(
        [(orjson.loads(r)["occurred_at"], int(s), k, r) for s, rs in ((P, p), (L, l)) for k, r in enumerate(rs)]
    )
    records = [(Stream(s), k, r) for _at, s, k, r in merged]

    known_ahead = payments_by_minute(params, records, None)
    assert known_ahead[(T0 + 401_000) // MINUTE_MS] == 1 + 6  # X's second request and the minute's six others
    for lag_ms in (0, 30_000, 450_000):
        assert payments_by_minute(params, records, lag_ms) == known_ahead
