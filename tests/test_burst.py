"""Failure bursts in the core: the partitions' minute signals, the river-style rate model, and
incidents (opened, updated, resolved; attribution) from literal scope-minutes."""

from __future__ import annotations

import copy
import math
import pickle
import zlib
from typing import Any

import orjson
import pytest

from stream.core import burst, burstsnapshot, ids
from stream.core.burst import BurstDetector, BurstParams, FailureRateModel, ScopeState, binomial_surprise
from stream.core.eventtime import format_ms, parse_ms
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.core.signals import signals_decisions
from tests.records import T0, ledger, payment

M0 = 29_000_000  # an epoch minute (2025-02-21)
WARM = 600  # minutes of normal traffic before anything happens


# -- the rate model, checked like river checks its models ---------------------------------


def minutes(n: int, payments: int = 100, bad_every: int = 100, start: int = M0) -> list[dict[str, Any]]:
    return [{"minute": start + i, "payments": payments, "bad": 1 if i % max(1, 100 // bad_every) == 0 else 0}
            for i in range(n)]  # fmt: skip


def prequential(model: FailureRateModel, xs: list[dict[str, Any]]) -> list[float]:
    scores = []
    for x in xs:
        scores.append(model.score_one(x))
        model.learn_one(x)
    return scores


def test_the_same_inputs_give_the_same_scores() -> None:
    xs = minutes(300) + [{"minute": M0 + 300, "payments": 100, "bad": 9}]
    assert prequential(FailureRateModel(), xs) == prequential(FailureRateModel(), xs)


def test_a_pickle_round_trip_mid_stream_gives_the_same_next_score() -> None:
    model = FailureRateModel()
    prequential(model, minutes(700))  # past the warm-up: the EWMeans exist
    clone = pickle.loads(pickle.dumps(model))
    nxt = minutes(50, start=M0 + 700) + [{"minute": M0 + 750, "payments": 80, "bad": 7}]
    assert prequential(clone, nxt) == prequential(model, nxt)


def test_learning_and_scoring_do_not_mutate_the_input() -> None:
    model = FailureRateModel()
    x = {"minute": M0, "payments": 50, "bad": 3, "parent_rate": 0.02}
    before = copy.deepcopy(x)
    model.score_one(x)
    model.learn_one(x)
    assert x == before


def test_a_first_minute_without_failures_does_not_pin_the_rate_to_zero() -> None:
    model = FailureRateModel()
    model.learn_one({"minute": M0, "payments": 100, "bad": 0})
    for x in minutes(99, start=M0 + 1):
        model.learn_one(x)
    assert 0.007 < model.expected_rate(M0 + 100) < 0.013


def test_a_young_scope_leans_on_its_parent() -> None:
    model = FailureRateModel(prior_payments=400)
    model.learn_one({"minute": M0, "payments": 10, "bad": 0})
    # Its rhythm bucket leans on the scope, the scope on its parent, both by what they saw.
    assert model.expected_rate(M0 + 1, parent_rate=0.05) == pytest.approx((400 / 410) ** 2 * 0.05)


def test_the_surprise_counts_payments() -> None:
    threshold = BurstParams().threshold
    assert binomial_surprise(2, 3, 0.01) < threshold  # 2 of 3 at a small merchant
    assert binomial_surprise(400, 500, 0.01) > threshold  # 400 of 500 at a switch
    assert binomial_surprise(5, 500, 0.01) == 0.0  # as expected
    # Exact against the sum of the binomial terms.
    from math import comb, log10

    tail = sum(comb(20, k) * 0.05**k * 0.95 ** (20 - k) for k in range(6, 21))
    assert binomial_surprise(6, 20, 0.05) == pytest.approx(-log10(tail), rel=1e-9)


# -- incidents from literal scope-minutes -------------------------------------------------


def sm(n: int, bad: int, shared: dict[str, int] | None = None, attrs: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "c": [n, bad, bad, 0, 0, 0],
        "w": shared or {},
        "k": {"91": bad} if bad else {},
        "s": [[(M0 + 1) * 60_000 + i, f"QR{i}", "failed", "******9876"] for i in range(min(bad, 3))],
    }
    if attrs:
        out["a"] = attrs
    return out


def report(partition: int, minute: int, scopes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"partition": partition, "through_minute": minute, "minutes": [{"minute": minute, "scopes": scopes}]}


def switch_minute(rintis_bad: int, jalin_bad: int = 1) -> dict[str, dict[str, Any]]:
    return {
        "all": sm(200, rintis_bad + jalin_bad),
        "switch:RINTIS": sm(100, rintis_bad),
        "switch:JALIN": sm(100, jalin_bad),
    }


def run(detector: BurstDetector, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d.value for r in reports for d in detector.on_signals(r)]


def warm(detector: BurstDetector, make: Any) -> None:
    assert run(detector, [report(0, M0 + i, make(i)) for i in range(WARM)]) == []


def test_a_switch_outage_is_one_incident_opened_updated_and_resolved() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    start = M0 + WARM
    burst = [report(0, start + i, switch_minute(60 + 5 * i)) for i in range(6)]
    calm = [report(0, start + 6 + i, switch_minute(1 if i % 2 else 0, 0)) for i in range(8)]
    alerts = run(det, burst + calm)
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [
        ("opened", "RINTIS"),
        ("updated", "RINTIS"),
        ("resolved", "RINTIS"),
    ]
    opened, updated, resolved = alerts
    incident = ids.incident_id("switch", "RINTIS", start * 60_000)
    assert {a["incident_id"] for a in alerts} == {incident}
    assert opened["window"] == {"start": format_ms(start * 60_000), "end": format_ms((start + 1) * 60_000)}
    assert opened["observed"]["bad"] == 60 and opened["observed"]["payments"] == 100
    assert opened["expected"]["bad"] < 2 and opened["score"] >= BurstParams().threshold
    assert opened["severity"] == "critical" and opened["kind"] == "FAILURE_BURST"
    assert opened["summary"].startswith("Switch RINTIS: 60 of 100 payments failed or unsettled since")
    assert updated["observed"]["bad"] == sum(60 + 5 * i for i in range(6))
    # Resolved after three calm minutes; the window ends after the last bad minute.
    assert resolved["window"]["end"] == format_ms((start + 6) * 60_000)
    assert resolved["severity"] == "info"
    assert len({a["alert_id"] for a in alerts}) == 3


def test_a_flapping_switch_is_one_page_for_the_episode_not_one_per_cycle() -> None:
    """A switch down 3 minutes in every 9 for an hour: the first cycle resolves after its three
    calm minutes; failing again within 30 minutes of that makes it flapping, and the second
    incident stays open until 15 calm minutes (one page for the rest of the episode, not one
    per cycle with its acquirers' besides, about ten an hour)."""
    det = BurstDetector(1)
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    start = M0 + WARM
    cycles = [report(0, start + i, switch_minute(60 if i % 9 < 3 else (1 if i % 2 else 0), 0)) for i in range(63)]
    calm = [report(0, start + 63 + i, switch_minute(1 if i % 2 else 0, 0)) for i in range(20)]
    alerts = run(det, cycles + calm)
    pages = [a for a in alerts if a["status"] == "opened"]
    assert [a["scope"]["id"] for a in pages] == ["RINTIS", "RINTIS"]
    first, again = pages
    assert "failing again" not in first["summary"]
    resolved = [a for a in alerts if a["status"] == "resolved"]
    assert [a["incident_id"] for a in resolved] == [first["incident_id"], again["incident_id"]]
    # Resolved at the end of minute 7, failing again from minute 9: 1 minute between the clocks.
    assert resolved[0]["occurred_at"] == format_ms((start + 8) * 60_000)
    assert "; failing again 1 min after its last incident resolved;" in again["summary"] + ";"
    # The last cycle fails in minutes 54-56; the 3-minute window is calm from minute 59, and the
    # 15th calm minute is 73, decided at its end.
    assert resolved[1]["occurred_at"] == format_ms((start + 74) * 60_000)
    # Without flapping it is one incident per cycle.
    det = BurstDetector(1, BurstParams(flap_window_minutes=-1))
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    assert [a["status"] for a in run(det, cycles + calm)].count("opened") == 7


def test_a_scope_failing_again_after_the_flap_window_is_a_new_incident_resolved_as_usual() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    start = M0 + WARM
    calm = lambda i: switch_minute(1 if i % 2 else 0, 0)  # noqa: E731
    feed = [report(0, start + i, switch_minute(60, 0) if i < 3 or 40 <= i < 43 else calm(i)) for i in range(60)]
    alerts = run(det, feed)
    assert [a["status"] for a in alerts if a["status"] != "updated"] == ["opened", "resolved"] * 2
    assert all("failing again" not in a["summary"] for a in alerts)
    opened = [parse_ms(a["occurred_at"]) for a in alerts if a["status"] == "opened"]
    ended = [parse_ms(a["occurred_at"]) for a in alerts if a["status"] == "resolved"]
    assert ended[1] - opened[1] == ended[0] - opened[0] == 7 * 60_000  # three calm minutes each
    # A restored detector knows the resolutions: flapping is the same after a restart.
    det2 = BurstDetector(1)
    warm(det2, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    head = run(det2, feed[:10])
    det3 = BurstDetector.restore(orjson.loads(orjson.dumps(det2.snapshot())))
    again = [report(0, start + 10 + i, switch_minute(60, 0) if i < 3 else calm(i)) for i in range(20)]
    assert head and any("failing again" in a["summary"] for a in run(det3, again) if a["status"] == "opened")
    # A snapshot of a worker that does not keep resolutions (a rolling upgrade from one): not
    # usable (the worker rebuilds from the signals), never read as "none is flapping".
    old = orjson.loads(orjson.dumps(det2.snapshot()))
    del old["incidents"]["resolved_at"]
    with pytest.raises(ValueError, match="without their resolutions"):
        BurstDetector.restore(old)


def test_an_incident_over_midnight_gives_the_dates_its_clocks_need() -> None:
    """Summaries give WIB clocks; a clock of another WIB day than the alert's carries its
    date, so "since 23:57" read at 00:02 is not taken for a time to come."""
    start = 29_002_617  # 2025-02-21 23:57 WIB
    det = BurstDetector(1)
    assert run(det, [report(0, start - WARM + i, switch_minute(i % 2)) for i in range(WARM)]) == []
    burst = [report(0, start + i, switch_minute(60 + 5 * i)) for i in range(6)]
    calm = [report(0, start + 6 + i, switch_minute(1 if i % 2 else 0, 0)) for i in range(8)]
    summaries = {a["status"]: a["summary"] for a in run(det, burst + calm)}
    assert "unsettled since 23:57 WIB (60 failed; about " in summaries["opened"]  # decided 23:58, that day
    assert "unsettled since Fri 21 Feb 23:57 WIB (" in summaries["updated"]
    # The failing span, then the counts to the resolution (calm minutes included), each end dated.
    assert summaries["resolved"].startswith(
        "RESOLVED Switch RINTIS: failing from Fri 21 Feb 23:57 to 00:03 WIB (6 min); "
    )
    assert (
        "437 of 1100 payments failed or unsettled from Fri 21 Feb 23:57 to its resolution at 00:08 WIB"
        " (437 failed; about " in summaries["resolved"]
    )


def test_an_incident_stays_open_while_a_quieter_scope_still_fails_well_above_its_normal() -> None:
    """After the outage the switch carries a night's few payments, and two of every 18 still
    fail (about 11 times its normal rate): too few payments for a surprising score, yet not
    recovered. The incident stays open (its holds go on) until the failures are back near normal;
    resolving in the lull ended the holds and paid refunds that the late settlements clawed back."""
    det = BurstDetector(1)
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    start = M0 + WARM

    def quiet(rintis_bad: int) -> dict[str, dict[str, Any]]:
        return {"all": sm(106, rintis_bad), "switch:RINTIS": sm(6, rintis_bad), "switch:JALIN": sm(100, 0)}

    burst = [report(0, start + i, switch_minute(60)) for i in range(4)]
    lull = [report(0, start + 4 + i, quiet(1 if i % 3 != 2 else 0)) for i in range(12)]
    recovered = [report(0, start + 16 + i, quiet(0)) for i in range(6)]
    alerts = run(det, burst + lull + recovered)
    statuses = [(a["status"], a["scope"]["id"]) for a in alerts]
    assert statuses[0] == ("opened", "RINTIS") and statuses[-1] == ("resolved", "RINTIS")
    assert [s for s, _ in statuses].count("resolved") == 1
    resolved = alerts[-1]
    assert resolved["occurred_at"] >= format_ms((start + 16 + 3) * 60_000)  # after three calm minutes


def test_an_incident_resolves_on_time_over_a_small_residue_of_a_large_outage() -> None:
    """After a 60% outage the switch runs at twice its learned rate or so (2 bad a minute of 100):
    above normal, but a thirtieth of the incident's failures, not the outage going on. It
    resolves when the score alone resolves it: three calm minutes once the 3-minute window
    holds no outage minute."""

    def resolved_at(params: BurstParams) -> list[tuple[str, str]]:
        det = BurstDetector(1, params)
        warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
        start = M0 + WARM
        burst = [report(0, start + i, switch_minute(60, 0)) for i in range(4)]
        after = [report(0, start + 4 + i, switch_minute(2, 0)) for i in range(12)]
        return [(a["status"], a["occurred_at"]) for a in run(det, burst + after)]

    alerts = resolved_at(BurstParams())
    assert alerts[-1] == ("resolved", format_ms((M0 + WARM + 9) * 60_000))
    assert alerts == resolved_at(BurstParams(calm_incident_share=math.inf))  # the score alone
    assert [s for s, _ in resolved_at(BurstParams(calm_incident_share=0))].count("resolved") == 0


def test_a_repeated_or_reordered_report_changes_nothing() -> None:
    def reports(order: list[int]) -> list[dict[str, Any]]:
        out = []
        for i in range(WARM + 8):
            rintis = 50 if WARM <= i < WARM + 3 else 1
            halves = [switch_minute(rintis // 2, 0), switch_minute(rintis - rintis // 2, 1)]
            for p in order:
                out.append(report(p, M0 + i, halves[p]))
                if i % 7 == 0:
                    out.append(report(p, M0 + i, halves[p]))  # redelivered
        return out

    one, other = BurstDetector(2), BurstDetector(2)
    a, b = run(one, reports([0, 1])), run(other, reports([1, 0]))
    assert a == b
    assert [x["status"] for x in a] == ["opened", "resolved"]


def test_a_minute_is_decided_only_when_every_partition_closed_it() -> None:
    det = BurstDetector(2)
    assert det.on_signals(report(0, M0, switch_minute(1))) == []
    assert det.closed_through is None and M0 in det.pending
    det.on_signals(report(1, M0, switch_minute(0)))
    assert det.closed_through == M0 and not det.pending


def test_the_partitions_are_the_ones_given_not_a_count() -> None:
    det = BurstDetector({0, 3})  # a replay file that holds partitions 0 and 3 only
    det.on_signals(report(3, M0, switch_minute(1)))
    det.on_signals(report(0, M0, switch_minute(0)))
    assert det.closed_through == M0
    with pytest.raises(ValueError, match="partition 1"):
        det.on_signals(report(1, M0 + 1, switch_minute(0)))


def merchant_minute(merchant_bad: int, others_bad: int = 0) -> dict[str, dict[str, Any]]:
    m = "merchant:ID1020012345678"
    total_bad = merchant_bad + others_bad
    return {
        "all": sm(300, total_bad),
        "switch:RINTIS": sm(300, total_bad, {"acquirer:BCA": total_bad}),
        "acquirer:BCA": sm(150, total_bad, {"switch:RINTIS": total_bad}),
        m: sm(20, merchant_bad, {"acquirer:BCA": merchant_bad, "switch:RINTIS": merchant_bad}, ["5812", "BCA", "W"]),
    }


def test_a_busy_merchant_failing_is_the_merchant_incident_not_its_acquirer_or_switch() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: merchant_minute(0, 1 if i % 2 else 0))
    alerts = run(det, [report(0, M0 + WARM + i, merchant_minute(15)) for i in range(3)])
    assert [(a["status"], a["scope"]["type"], a["scope"]["id"]) for a in alerts] == [
        ("opened", "merchant", "ID1020012345678")
    ]
    assert alerts[0]["severity"] == "warning"
    assert all(s["account_id_masked"] == "******9876" for s in alerts[0]["samples"])


def acquirer_minute(bca_bad: int) -> dict[str, dict[str, Any]]:
    # BCA routes 3/4 of its payments through RINTIS; RINTIS also carries other acquirers.
    via_rintis = bca_bad * 3 // 4
    return {
        "all": sm(400, bca_bad),
        "switch:RINTIS": sm(150, via_rintis, {"acquirer:BCA": via_rintis}),
        "switch:JALIN": sm(250, bca_bad - via_rintis, {"acquirer:BCA": bca_bad - via_rintis}),
        "acquirer:BCA": sm(80, bca_bad, {"switch:RINTIS": via_rintis, "switch:JALIN": bca_bad - via_rintis}),
        "acquirer:BRI": sm(320, 0),
    }


def test_an_acquirer_degradation_is_the_acquirer_incident_with_its_switch_inside() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: acquirer_minute(1 if i % 2 else 0))
    alerts = run(det, [report(0, M0 + WARM + i, acquirer_minute(24)) for i in range(4)])
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [("opened", "BCA")]
    children = {(c["scope"]["type"], c["scope"]["id"]) for c in alerts[0]["top_children"]}
    assert children == {("switch", "RINTIS"), ("switch", "JALIN")}  # where its payments went


def switch_with_merchants_minute(rintis_bad: int) -> dict[str, dict[str, Any]]:
    out = {"all": sm(300, rintis_bad), "switch:RINTIS": sm(150, rintis_bad), "switch:JALIN": sm(150, 0)}
    for i in range(5):  # five busy merchants on RINTIS share the outage
        key = f"merchant:ID10{i:011d}"
        bad = rintis_bad // 5
        out[key] = sm(30, bad, {"switch:RINTIS": bad, "acquirer:BCA": bad}, ["5812", "BCA", f"M{i}"])
    return out


def test_merchants_inside_a_switch_outage_are_listed_in_it_not_opened() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: switch_with_merchants_minute(0 if i % 3 else 1))
    alerts = run(det, [report(0, M0 + WARM + i, switch_with_merchants_minute(120)) for i in range(4)])
    assert [(a["status"], a["scope"]["type"], a["scope"]["id"]) for a in alerts] == [("opened", "switch", "RINTIS")]
    merchants = [c for c in alerts[0]["top_children"] if c["scope"]["type"] == "merchant"]
    assert len(merchants) == 5 and all(c["observed"]["bad"] == 24 for c in merchants)
    assert alerts[0]["summary"].startswith("Switch RINTIS: 120 of 150 payments failed or unsettled")


def two_switches_minute(rintis_bad: int, jalin_bad: int, quiet: int = 0) -> dict[str, dict[str, Any]]:
    # A merchant pool's payments go through RINTIS, JALIN and a healthy third switch: when
    # both fail, each holds about half of the pool's failures.
    in_rintis, in_jalin = rintis_bad // 3, jalin_bad // 3
    return {
        "all": sm(450, rintis_bad + jalin_bad + quiet),
        "switch:RINTIS": sm(150, rintis_bad),
        "switch:JALIN": sm(150, jalin_bad),
        "switch:ARTAJASA": sm(150, quiet),
        "merchant:MCC-5411": sm(
            90, in_rintis + in_jalin + quiet, {"switch:RINTIS": in_rintis, "switch:JALIN": in_jalin}
        ),
    }


def test_a_pool_whose_failures_lie_in_two_failing_switches_is_folded_not_opened() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: two_switches_minute(0, 0, 1 if i % 4 == 0 else 0))
    first = [report(0, M0 + WARM + i, two_switches_minute(90, 0)) for i in range(5)]
    both = [report(0, M0 + WARM + 5 + i, two_switches_minute(90, 80)) for i in range(10)]
    alerts = run(det, first + both)
    opened = [a["scope"]["id"] for a in alerts if a["status"] == "opened"]
    assert opened == ["RINTIS", "JALIN"]


def switch_outage_onset_minute(i: int, outage: bool) -> dict[str, dict[str, Any]]:
    # RINTIS fails; its acquirers BCA and SHOPEEPAY fail only there, and BCA has a background
    # failure elsewhere, so in the first minutes an acquirer's bad share is a hair above the
    # switch's.
    bca, shopee, other = (11 + i, 5 + i // 2, 5) if outage else (0, 0, 1 if i % 3 == 0 else 0)
    background = 1 if outage or i % 4 == 0 else 0
    rintis_bad = bca + shopee + other
    return {
        "all": sm(300, rintis_bad + background),
        "switch:RINTIS": sm(100, rintis_bad, {"acquirer:BCA": bca, "acquirer:SHOPEEPAY": shopee}),
        "switch:JALIN": sm(200, background, {"acquirer:BCA": background}),
        "acquirer:BCA": sm(52, bca + background, {"switch:RINTIS": bca, "switch:JALIN": background}),
        "acquirer:SHOPEEPAY": sm(20, shopee, {"switch:RINTIS": shopee}),
    }


def test_a_switch_outage_is_the_switchs_incident_not_its_acquirers_beside_it() -> None:
    det = BurstDetector(1)
    warm(det, lambda i: switch_outage_onset_minute(i, False))
    alerts = run(det, [report(0, M0 + WARM + i, switch_outage_onset_minute(i, True)) for i in range(6)])
    assert [a["scope"]["id"] for a in alerts if a["status"] == "opened"] == ["RINTIS"]
    children = {c["scope"]["id"] for c in alerts[0]["top_children"]}
    assert {"BCA", "SHOPEEPAY"} <= children


def issuers_and_switches_minute(i1: int, i2: int, rintis: int, quiet: int = 0) -> dict[str, dict[str, Any]]:
    # Three issuers by two switches, 60 payments a cell: `i1`/`i2` bad per cell of issuers I1/I2,
    # `rintis` bad per cell of RINTIS (half of it for I3's), on top.
    cells = {}
    for issuer in ("I1", "I2", "I3"):
        for switch in ("RINTIS", "JALIN"):
            bad = {"I1": i1, "I2": i2, "I3": 0}[issuer]
            if switch == "RINTIS":
                bad = max(bad, rintis if issuer != "I3" else rintis // 2)
            cells[(issuer, switch)] = min(60, bad)
    cells[("I3", "JALIN")] = quiet
    scopes = [(f"issuer:{i}", 0, i) for i in ("I1", "I2", "I3")] + [(f"switch:{w}", 1, w) for w in ("RINTIS", "JALIN")]

    def scope(axis: int | None, name: str | None, others: list[tuple[str, int, str]]) -> dict[str, Any]:
        mine = {k: v for k, v in cells.items() if axis is None or k[axis] == name}
        shared = {o: sum(v for k, v in mine.items() if k[oa] == on) for o, oa, on in others}
        return sm(60 * len(mine), sum(mine.values()), {o: n for o, n in shared.items() if n})

    out = {"all": scope(None, None, scopes)}
    for key, axis, name in scopes:
        out[key] = scope(axis, name, [x for x in scopes if x[0] != key])
    return out


def test_a_switch_failing_inside_two_issuers_incidents_still_opens_its_own() -> None:
    # Summed over two issuers' incidents the switch's failures would be "explained", but a third
    # issuer's payments through it are in no incident: their refunds would be paid, then clawed back.
    det = BurstDetector(1)
    warm(det, lambda i: issuers_and_switches_minute(0, 0, 0, 1 if i % 5 == 0 else 0))
    t = M0 + WARM
    minutes = [issuers_and_switches_minute(40, 0, 0)] * 4 + [issuers_and_switches_minute(40, 40, 0)] * 4
    minutes += [issuers_and_switches_minute(40, 40, 55)] * 6
    alerts = run(det, [report(0, t + i, m) for i, m in enumerate(minutes)])
    assert ("switch", "RINTIS") in {(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"}


def test_a_small_merchant_is_pooled_by_mcc() -> None:
    det = BurstDetector(1)
    small = {"all": sm(100, 0), "merchant:IDSMALL": sm(1, 0, None, ["5499", "BRI", "Kedai"])}
    run(det, [report(0, M0 + i, small) for i in range(30)])
    assert "merchant:MCC-5499" in det.scopes and "merchant:IDSMALL" not in det.scopes


def test_a_merchant_whose_id_looks_like_a_pool_is_judged_as_itself_not_as_the_pool() -> None:
    # A merchant_id `MCC-5999` (any string is a valid id) must not merge into the pool of small
    # merchants of MCC 5999: the incident would be the pool's, and holds would cover the pool's
    # merchants instead of this one's payments (`holds.covers`).
    own = "merchant:\\MCC-5999"  # `signals.merchant_scope_id`

    def minute(bad: int) -> dict[str, dict[str, Any]]:
        return {
            "all": sm(300, bad),
            "acquirer:BCA": sm(150, bad, {own: bad}),
            own: sm(20, bad, {"acquirer:BCA": bad}, ["4121", "BCA", "Ojek"]),
            "merchant:IDSMALL": sm(1, 0, None, ["5999", "BRI", "Kedai"]),
        }

    det = BurstDetector(1)
    warm(det, lambda i: minute(1 if i % 7 == 0 else 0))
    assert own in det.scopes and "merchant:MCC-5999" in det.scopes  # the pool holds only IDSMALL
    alerts = run(det, [report(0, M0 + WARM + i, minute(15)) for i in range(3)])
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [("opened", "\\MCC-5999")]
    assert alerts[0]["summary"].startswith("Merchant \\MCC-5999: ")


def test_a_pools_id_and_the_response_codes_of_an_alert_are_escaped_and_bounded() -> None:
    # `mcc` and `response_code` are free text (control characters allowed, up to 128 characters):
    # in a scope id (the alert's key, its labels) and the codes they are escaped, the codes cut
    # and at most CODES_KEPT of them kept (before, one alert grew past 1 MiB with 1,461 codes).
    mcc = "59\x1b[2J\u202e" + "9" * 100
    pool = "merchant:MCC-59\\u001b[2J\\u202e" + "9" * 9 + "\u2026"

    def minute(i: int, bad: int) -> dict[str, dict[str, Any]]:
        # 40 small merchants of that MCC (a payment a minute each: pooled), `bad` of them failing,
        # each failure with its own long response code.
        out = {"all": sm(300, bad), "acquirer:BRI": sm(150, bad)}
        for m in range(40):
            small = sm(1, int(m < bad), {"acquirer:BRI": int(m < bad)}, [mcc, "BRI", f"Kedai {m}"])
            small["k"] = {f"{i:04d}-{m:03d}\x01" + "\x07" * 120: 1} if m < bad else {}
            out[f"merchant:IDSMALL{m}"] = small
        return out

    det = BurstDetector(1)
    warm(det, lambda i: minute(i, 1 if i % 7 == 0 else 0))
    assert pool in det.scopes
    alerts = run(det, [report(0, M0 + WARM + i, minute(WARM + i, 40)) for i in range(6)])
    assert alerts and {a["scope"]["id"] for a in alerts} == {pool.removeprefix("merchant:")}
    for a in alerts:
        assert len(a["response_codes"]) <= 21 and "(other)" in a["response_codes"]
        assert all("\x01" not in code and "\x07" not in code and len(code) <= 96 for code in a["response_codes"])
        assert sum(a["response_codes"].values()) == a["observed"]["failed"]
        assert len(orjson.dumps(a)) < 20_000
    incident = det.incidents.get(pool)
    assert incident is not None and len(incident.codes) <= 21


# -- signals from the partition engine ----------------------------------------------------

P, L = Stream.P, Stream.L


def engine_signals(records: list[tuple[Stream, bytes]]) -> list[dict[str, Any]]:
    eng = PartitionEngine(0, Params())
    offsets = [0, 0]
    out = []
    for s, value in records:
        out += eng.on_record(s, offsets[s], orjson.loads(value)["reference"].encode(), value, None)
        offsets[s] += 1
    return [d.value for d in out if d.role == "signals"]


def closed(signals: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {m["minute"]: m["scopes"] for v in signals for m in v["minutes"]}


def test_payments_are_judged_at_the_probe_age() -> None:
    recs = [
        (P, payment("a-q", "requested", "A", 1)),
        (L, ledger("a-d", "debited", "A", 2)),
        (P, payment("a-s", "settled", "A", 5)),  # settled in time
        (P, payment("b-q", "requested", "B", 2)),
        (P, payment("b-f", "failed", "B", 4, response_code="51")),  # failed before any debit
        (P, payment("c-q", "requested", "C", 3)),
        (L, ledger("c-d", "debited", "C", 4, amount=40_000)),
        (P, payment("c-s", "settled", "C", 40, amount=40_000)),  # settled after the 30 s probe
        (P, payment("d-q", "requested", "D", 4)),  # nothing else: no answer
        (P, payment("tail", "requested", "TAIL", 200)),
        (L, ledger("tail-d", "debited", "TAIL", 200)),
    ]
    minute = T0 // 60_000
    scopes = closed(engine_signals(recs))[minute]
    assert scopes["all"]["c"] == [4, 3, 1, 1, 1, 40_000]
    assert scopes["switch:RINTIS"]["k"] == {"51": 1}
    merchant = scopes["merchant:ID1020012345678"]
    assert merchant["a"] == ["5812", "BCA", "Warung Bu Sri"]
    assert merchant["w"] == {"issuer:BANKDKI": 3, "switch:RINTIS": 3, "acquirer:BCA": 3}
    assert [s[1] for s in merchant["s"]] == ["B", "C", "D"]
    assert all(s[3] == "******9876" for s in merchant["s"])


def test_a_merchant_whose_id_looks_like_a_pool_gets_a_scope_of_its_own_and_codes_are_bounded() -> None:
    recs = [(P, payment("a-q", "requested", "A", 1, merchant_id="MCC-5812"))]
    for i in range(30):  # 30 failures with distinct, long response codes
        recs += [
            (P, payment(f"f{i}-q", "requested", f"F{i}", 2)),
            (P, payment(f"f{i}-f", "failed", f"F{i}", 3, response_code=f"{i:02d}" + "\x07" * 100)),
        ]
    recs += [(P, payment("tail", "requested", "TAIL", 200)), (L, ledger("tail-d", "debited", "TAIL", 200))]
    scopes = closed(engine_signals(recs))[T0 // 60_000]
    assert "merchant:\\MCC-5812" in scopes and "merchant:MCC-5812" not in scopes
    codes = scopes["switch:RINTIS"]["k"]
    assert len(codes) == 20 and codes["(other)"] == 11 and all(len(c) <= 16 for c in codes)


def test_the_scopes_a_scope_minute_shares_bad_payments_with_are_bounded() -> None:
    # Random acquirer ids (identifiers of up to 128 characters) on failed payments: the switch's
    # shared scopes keep the first SHARED_KEPT, so one scope-minute stays far below a record's size.
    recs = []
    for i in range(260):
        recs += [
            (P, payment(f"f{i}-q", "requested", f"F{i}", 2, acquirer_id=f"ACQ{i:04d}" + "x" * 120)),
            (P, payment(f"f{i}-f", "failed", f"F{i}", 3)),
        ]
    recs += [(P, payment("tail", "requested", "TAIL", 200)), (L, ledger("tail-d", "debited", "TAIL", 200))]
    scopes = closed(engine_signals(recs))[T0 // 60_000]
    shared = scopes["switch:RINTIS"]["w"]
    assert len(shared) == 200 and shared["issuer:BANKDKI"] == 260  # a scope met first keeps counting
    assert "acquirer:ACQ0000" + "x" * 120 in shared and "acquirer:ACQ0259" + "x" * 120 not in shared


def test_a_minute_closes_once_the_watermark_passed_its_end_plus_the_probe_age() -> None:
    base = [(P, payment("a-q", "requested", "A", 1)), (L, ledger("a-d", "debited", "A", 2))]
    minute = T0 // 60_000
    # W = min(max_P, max_L) - 30 s: 60 s + 30 s probe + 30 s lateness after T0 closes minute T0.
    just_before = base + [(P, payment("x", "requested", "X", 119.999)), (L, ledger("y", "debited", "Y", 119.999))]
    assert minute not in closed(engine_signals(just_before))
    at = base + [(P, payment("x", "requested", "X", 120)), (L, ledger("y", "debited", "Y", 120))]
    assert closed(engine_signals(at))[minute]["all"]["c"][0] == 1


@pytest.mark.parametrize("varied", [False, True])
def test_a_restored_engine_reports_the_same_minutes(varied: bool) -> None:
    # `varied`: many distinct response codes, shared scopes and merchant attributes, where the
    # bounds and the attributes kept must not depend on the order a minute's payments are judged
    # in (a restored engine judges them in another order).
    recs = []
    for i in range(40):
        ref = f"Z{99 - i}" if varied else f"R{i}"
        extra = {"acquirer_id": f"ACQ{i}", "mcc": str(5000 + i)} if varied else {}
        t = 1.4 * i if varied else 7 * i  # (varied: one minute)
        recs.append((P, payment(f"{ref}-q", "requested", ref, t, **extra)))
        recs.append((L, ledger(f"{ref}-d", "debited", ref, t + 1)))
        if varied:
            recs.append((P, payment(f"{ref}-f", "failed", ref, t + 2, response_code=f"C{i:02d}")))
        elif i % 4:
            recs.append((P, payment(f"{ref}-s", "settled", ref, 7 * i + 3)))
    if varied:  # past the minute's end and the probe age
        recs += [(P, payment("tail", "requested", "TAIL", 200)), (L, ledger("tail-d", "debited", "TAIL", 200))]
    whole = closed(engine_signals(recs))
    if varied:
        first = whole[min(whole)]
        assert len(first["switch:RINTIS"]["k"]) == 20 and "(other)" in first["switch:RINTIS"]["k"]
    eng = PartitionEngine(0, Params())
    offsets = [0, 0]
    out = []
    for n, (s, value) in enumerate(recs):
        if n == len(recs) // 2:  # save everything, start again from the saved state
            refs, meta = eng.take_dirty()
            eng = PartitionEngine.restore(0, Params(), meta, [(k, v) for k, v in refs.items() if v is not None])
        out += eng.on_record(s, offsets[s], orjson.loads(value)["reference"].encode(), value, None)
        offsets[s] += 1
    assert closed([d.value for d in out if d.role == "signals"]) == whole


@pytest.mark.parametrize(
    "module",
    [
        "stream.core.surprise",
        "stream.core.ratemodel",
        "stream.core.incidents",
        "stream.core.alerts",
        "stream.core.ids",
        "stream.core.decisions",
        "stream.core.text",
        "stream.core.validation",
        "stream.worker.statestore",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(module)
    if not (mod.__file__ or "").endswith(".py"):
        pytest.skip("compiled by mypyc: doctest finds no examples in compiled functions (runs on the sources)")
    failures, tried = doctest.testmod(mod, raise_on_error=False, verbose=False)
    assert tried > 0 and failures == 0


# -- incident state and snapshots ------------------------------------------------------------


def outage_reports(partitions: int = 2) -> list[dict[str, Any]]:
    """Normal minutes, a RINTIS outage, calm again; each minute split over the partitions."""
    out = []
    for i in range(WARM + 20):
        rintis = 60 if WARM <= i < WARM + 6 else (1 if i % 2 else 0)
        for p in range(partitions):
            share = rintis // partitions + (rintis % partitions if p == 0 else 0)
            out.append(report(p, M0 + i, switch_minute(share, 1 if (i + p) % 3 == 0 else 0)))
    return out


def in_parts(r: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    """A report as `signals_decisions` sends it with parts of at most `max_bytes`."""
    minutes = {e["minute"]: e["scopes"] for e in r["minutes"]}
    return [d.value for d in signals_decisions(r["partition"], r["through_minute"], minutes, max_bytes)]


def test_a_large_report_goes_in_parts_that_hold_every_scope_minute_once() -> None:
    scopes = {f"merchant:ID{i:06d}": sm(3, i % 2, None, ["5812", "BCA", f"Toko {i}"]) for i in range(400)}
    r = {
        "partition": 1,
        "through_minute": M0 + 1,
        "minutes": [{"minute": M0, "scopes": scopes}, {"minute": M0 + 1, "scopes": {}}],
    }
    assert in_parts(r, 10**9) == [r]  # small enough: one record, as before
    parts = in_parts(r, 8_000)
    assert len(parts) > 5 and [(p["part"], p["parts"]) for p in parts] == [(i, len(parts)) for i in range(len(parts))]
    assert all(len(orjson.dumps(p)) <= 8_000 + 1_000 and p["through_minute"] == M0 + 1 for p in parts)
    got = [(e["minute"], k) for p in parts for e in p["minutes"] for k in e["scopes"]]
    assert sorted(got) == sorted((M0, k) for k in scopes)  # each once
    assert [e["minute"] for p in parts for e in p["minutes"] if not e["scopes"]] == [M0 + 1]  # listed once


def test_a_report_closing_weeks_of_minutes_after_the_watermark_stood_goes_in_parts_below_the_limit() -> None:
    # A stream whose clock stood still for weeks while requests came: the report that closes
    # them lists tens of thousands of minutes. The last part listed every minute (1.6 MB at 40,000
    # minutes, which the producer refused) and no part counted its minutes' own bytes.
    minutes = [
        {"minute": M0 + i, "scopes": {} if i % 3 else {f"merchant:ID{i:06d}": sm(1, 1, None, ["5812", "BCA", "T"])}}
        for i in range(40_000)
    ]
    r = {"partition": 0, "through_minute": M0 + 40_000, "minutes": minutes}
    limit = 524_288
    parts = in_parts(r, limit)
    assert len(parts) > 2 and all(len(orjson.dumps(p)) <= limit for p in parts)
    listed = [e["minute"] for p in parts for e in p["minutes"]]
    assert sorted(set(listed)) == [M0 + i for i in range(40_000)]
    assert run(BurstDetector(1), parts) == run(BurstDetector(1), [r])


@pytest.mark.parametrize("order", ["as sent", "reversed", "repeated", "interleaved"])
def test_reports_in_parts_decide_exactly_what_whole_reports_decide(order: str) -> None:
    whole = outage_reports(2)
    sent: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for r in whole:
        parts = in_parts(r, len(orjson.dumps(r)) // 2)  # every report of this outage in parts
        assert len(parts) >= 2
        if order == "reversed":
            parts = parts[::-1]
        elif order == "repeated":
            parts = [parts[0], *parts, parts[-1]]
        elif order == "interleaved":  # partition 1's parts held back until partition 0's next report
            if r["partition"] == 1:
                pending += parts
                continue
            parts = parts[:1] + pending + parts[1:]
            pending = []
        sent += parts
    sent += pending
    assert run(BurstDetector(2), sent) == run(BurstDetector(2), whole)


def test_parts_of_a_report_sent_again_differently_or_of_two_senders_are_never_mixed() -> None:
    reports = outage_reports(2)
    for r in reports[-4:]:  # reports with enough scopes to split several ways
        scopes = r["minutes"][0]["scopes"]
        for i in range(12):
            scopes[f"merchant:ID{r['partition']}{i:04d}"] = sm(5, 0, None, ["5812", "BCA", f"Toko {i}"])
    big = reports[-4]
    size = len(orjson.dumps(big))
    first_try, again = in_parts(big, size // 2), in_parts(big, size // 4)  # split otherwise
    assert len(first_try) != len(again)
    # A sender stopped after all but its last part sends the report again, split otherwise.
    sent = reports[:-4] + first_try[:-1] + again + reports[-3:]
    assert run(BurstDetector(2), sent) == run(BurstDetector(2), reports)
    # Two senders of one partition at once (a zombie and the owner), their parts alternating:
    # each report is taken whole; the zombie's covers the minutes since its own last report.
    assert reports[-2]["partition"] == big["partition"]
    later = {**reports[-2], "minutes": big["minutes"] + reports[-2]["minutes"]}
    zombie, owner = in_parts(later, size // 4), in_parts(big, size // 4)
    mixed = [p for pair in zip(owner, zombie, strict=False) for p in pair]
    mixed += owner[len(zombie) :] + zombie[len(owner) :]
    det, alone = BurstDetector(2), BurstDetector(2)
    run(det, reports[:-4])
    run(alone, reports[:-4])
    assert run(det, mixed) == run(alone, [big, reports[-2]])
    assert det.merge.to_state() == alone.merge.to_state()


def test_parts_stay_below_the_limit_in_bytes_whatever_the_ids() -> None:
    # Identifiers are text: 128 emoji are 512 bytes. The split counts bytes, not characters.
    scopes = {
        "merchant:" + f"{i:04d}" + "\U0001f600" * 124: sm(3, 1, None, ["5812", "BCA", "\u4e2d" * 256])
        for i in range(600)
    }
    r = {"partition": 0, "through_minute": M0, "minutes": [{"minute": M0, "scopes": scopes}]}
    limit = 100_000
    parts = in_parts(r, limit)
    assert len(parts) > 5 and all(len(orjson.dumps(p)) <= limit for p in parts)
    assert len({p["report"] for p in parts}) == 1


def test_a_snapshot_keeps_the_parts_of_a_report_taken_so_far() -> None:
    reports = outage_reports(2)
    det = BurstDetector(2)
    run(det, reports[:-4])
    first, *rest = in_parts(reports[-4], len(orjson.dumps(reports[-4])) // 2)
    run(det, [first])
    assert det.merge.parts  # a part taken, the report not yet
    again = BurstDetector.restore(orjson.loads(orjson.dumps(det.snapshot())))
    assert again.merge.to_state() == det.merge.to_state()
    whole = BurstDetector(2)
    run(whole, reports[:-4])
    want = run(whole, reports[-4:])
    assert run(again, rest + reports[-3:]) == want
    assert again.merge.to_state() == whole.merge.to_state()


def test_open_incidents_can_be_queried_by_scope() -> None:
    det = BurstDetector(2)
    reports = outage_reports()
    run(det, reports[: 2 * (WARM + 2)])
    assert det.incidents.open_scopes() == ["switch:RINTIS"]
    inc = det.incidents.by_scope("switch", "RINTIS")
    assert inc is not None and inc.incident_id == ids.incident_id("switch", "RINTIS", (M0 + WARM) * 60_000)
    [listed] = det.incidents.open_incidents()
    assert listed["scope"] == {"type": "switch", "id": "RINTIS"} and listed["incident_id"] == inc.incident_id
    assert det.incidents.by_scope("switch", "JALIN") is None
    run(det, reports[2 * (WARM + 2) :])
    assert det.incidents.open_scopes() == []


@pytest.mark.parametrize("cut", [1, 101, 2 * WARM - 1, 2 * WARM + 1, 2 * WARM + 7, 2 * (WARM + 12)])
def test_a_restored_snapshot_makes_the_same_next_decisions(cut: int) -> None:
    reports = outage_reports()
    whole = BurstDetector(2)
    expected = run(whole, reports)
    assert [a["status"] for a in expected] == ["opened", "updated", "resolved"]
    first = BurstDetector(2)
    before = run(first, reports[:cut])
    # Through bytes, as the worker stores it: JSON keeps every float exact.
    saved = orjson.loads(orjson.dumps(first.snapshot()))
    restored = BurstDetector.restore(saved)
    after = run(restored, reports[cut:])
    assert before + after == expected
    assert restored.snapshot() == whole.snapshot()


def test_a_snapshot_of_another_version_is_refused() -> None:
    snap = BurstDetector(1).snapshot()
    snap["snapshot_version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        BurstDetector.restore(snap)


def test_summaries_escape_control_and_bidi_characters_of_quoted_ids() -> None:
    hostile = "RIN\x1b[2J\u202eTIS"

    def minute(bad: int) -> dict[str, dict[str, Any]]:
        return {"all": sm(200, bad + 1), f"switch:{hostile}": sm(100, bad), "switch:JALIN": sm(100, 1)}

    det = BurstDetector(1)
    warm(det, lambda i: minute(1 if i % 2 else 0))
    [opened] = [a for a in run(det, [report(0, M0 + WARM, minute(60))]) if a["status"] == "opened"]
    assert opened["scope"]["id"] == hostile  # the record keeps the id as sent
    assert opened["summary"].startswith("Switch RIN\\u001b[2J\\u202eTIS: 60 of 100")
    assert "\x1b" not in opened["summary"] and "\u202e" not in opened["summary"]


# -- cold start -------------------------------------------------------------------------------


def busy_minute(i: int, rintis_bad: int | None = None) -> dict[str, dict[str, Any]]:
    """A bank whose normal is 5% bad (the prior assumes 1%): 2,000 payments a minute."""
    normal = 45 + (i * 7) % 11  # 45..55 of 1,000
    rintis = normal if rintis_bad is None else rintis_bad
    jalin = 100 - normal
    return {
        "all": sm(2000, rintis + jalin),
        "issuer:BANKDKI": sm(2000, rintis + jalin, {"switch:RINTIS": rintis, "switch:JALIN": jalin}),
        "switch:RINTIS": sm(1000, rintis, {"issuer:BANKDKI": rintis}),
        "switch:JALIN": sm(1000, jalin, {"issuer:BANKDKI": jalin}),
    }


def test_a_cold_detector_opens_nothing_while_it_learns_a_bank_whose_normal_differs() -> None:
    cold_hours = [report(0, M0 + i, busy_minute(i)) for i in range(240)]
    # Without the learning gate the prior's 1% makes the first minutes an incident.
    ungated = BurstDetector(1, BurstParams(learn_min_payments=0, learn_min_minutes=0))
    assert {a["status"] for a in run(ungated, cold_hours[:5])} == {"opened"}
    det = BurstDetector(1)
    assert run(det, cold_hours) == []
    assert det.stats["bursts_while_learning"] > 0  # it would have opened, had it known less
    assert 0.045 < det.scopes["all"].model.expected_rate(M0 + 240) < 0.055
    # Learned: an outage of RINTIS is caught in its first minute, as on a warm detector.
    outage = [report(0, M0 + 240 + i, busy_minute(240 + i, rintis_bad=400)) for i in range(3)]
    alerts = run(det, outage)
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [("opened", "RINTIS")]
    assert alerts[0]["window"]["end"] == format_ms((M0 + 241) * 60_000)


def test_no_incident_opens_while_the_scope_and_its_parent_are_still_learning() -> None:
    det = BurstDetector(1)
    # An outage in the detector's first minutes: nothing tells it from the bank's normal.
    assert run(det, [report(0, M0 + i, busy_minute(i, rintis_bad=400)) for i in range(9)]) == []
    assert not det.may_open(det.scopes["switch:RINTIS"])


def test_a_young_scope_borrows_only_a_learned_parents_baseline() -> None:
    det = BurstDetector(1)
    run(det, [report(0, M0 + i, busy_minute(i)) for i in range(9)])
    young = ScopeState("switch:NEW", "all", FailureRateModel())
    assert not det.learned(det.scopes["all"]) and not det.may_open(young)
    run(det, [report(0, M0 + 9, busy_minute(9))])  # `all`: 10 minutes and 20,000 payments
    assert det.learned(det.scopes["all"]) and det.may_open(young) and not det.learned(young)
    small = BurstDetector(1)  # 10 minutes of 150 payments: minutes enough, payments not yet
    run(small, [report(0, M0 + i, {"all": sm(150, 2)}) for i in range(10)])
    assert not small.learned(small.scopes["all"])
    run(small, [report(0, M0 + 10 + i, {"all": sm(150, 2)}) for i in range(4)])  # 2,100 payments
    assert small.learned(small.scopes["all"])


# -- the bound on distinct scopes ---------------------------------------------------------------


def flooded_minute(i: int, random_ids: int, rintis_bad: int = 1) -> dict[str, dict[str, Any]]:
    """RINTIS and JALIN as usual, plus `random_ids` switches never seen before (one payment each)."""
    out = switch_minute(rintis_bad, 1 if i % 3 == 0 else 0)
    for j in range(random_ids):
        out[f"switch:X{i:05d}-{j:03d}"] = sm(1, 0)
    out["all"] = sm(200 + random_ids, rintis_bad + 1)
    return out


def test_distinct_scopes_are_bounded_with_one_alert_and_learned_scopes_kept() -> None:
    params = BurstParams(max_scopes_per_type=5)

    def reports() -> list[dict[str, Any]]:
        calm = [report(0, M0 + i, switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0)) for i in range(WARM)]
        flood = [report(0, M0 + WARM + i, flooded_minute(i, 40)) for i in range(20)]
        burst = [report(0, M0 + WARM + 20 + i, flooded_minute(20 + i, 40, rintis_bad=60)) for i in range(2)]
        return calm + flood + burst

    det = BurstDetector(1, params)
    alerts = run(det, reports())
    limits = [a for a in alerts if a["kind"] == "SCOPE_LIMIT"]
    assert len(limits) == 1 and limits[0]["scope_type"] == "switch"
    # Its page is the switch limit's own: another type's limit is another problem.
    assert limits[0]["dedup_key"] == "SCOPE_LIMIT:switch" and limits[0]["labels"]["limit_scope_type"] == "switch"
    # 40 new, 3 free places, no idle scope to replace yet
    assert limits[0]["observed"] == {"new_scopes": 40, "replaced_scopes": 0, "untracked_scopes": 37}
    switches = [k for k in det.scopes if k.startswith("switch:")]
    assert len(switches) == 5 and {"switch:RINTIS", "switch:JALIN"} <= set(switches)
    assert det.stats["scope_minutes_untracked"] > 0
    # The learned switch still opens its incident in the middle of the flood.
    opened = [(a["scope"]["id"]) for a in alerts if a.get("status") == "opened"]
    assert opened == ["RINTIS"]
    # Deterministic: the same input gives the same alerts and the same tracked scopes.
    again = BurstDetector(1, params)
    assert run(again, reports()) == alerts and list(again.scopes) == list(det.scopes)


def test_merchants_past_the_tracking_bound_stay_in_their_mcc_pool() -> None:
    det = BurstDetector(1, BurstParams(max_merchants_tracked=10))
    minute = {"all": sm(100, 0)}
    for j in range(30):
        minute[f"merchant:ID{j:03d}"] = sm(3, 0, None, ["5499", "BRI", "Kedai"])
    run(det, [report(0, M0 + i, minute) for i in range(40)])
    assert len(det.merchant_volume) == 10
    assert "merchant:MCC-5499" in det.scopes and det.scopes["merchant:MCC-5499"].ring[-1][1][0] >= 60


def random_merchants_minute(i: int, n: int) -> dict[str, dict[str, Any]]:
    """`n` merchants never seen before with 128-character ids, one failed payment each."""
    out = {f"merchant:{i:06d}-{j:05d}-{'x' * 115}": sm(1, 1, None, ["5411", "BCA", "M" * 256]) for j in range(n)}
    out["all"] = sm(200 + n, n)
    return out


def test_a_flood_of_distinct_merchant_ids_keeps_the_snapshot_bounded() -> None:
    # 30,000 ids seen once must not grow the snapshot (a takeover reads more signals when it is
    # too large to write): the merchants followed stay at ten times the merchant scopes.
    params = BurstParams()
    assert params.max_merchants_tracked == 10 * params.max_scopes_per_type
    det = BurstDetector(1, params)
    sizes = []
    for i in range(12):
        run(det, [report(0, M0 + i, random_merchants_minute(i, 2500))])
        sizes.append(len(burstsnapshot.encode(det, i)))
    assert len(det.merchant_volume) == params.max_merchants_tracked
    assert max(sizes) < 2_000_000 and sizes[-1] <= sizes[3] * 1.05


def test_a_merchant_becoming_busy_in_a_flood_of_ids_gets_a_place_and_its_own_scope() -> None:
    params = BurstParams(max_merchants_tracked=50)
    det = BurstDetector(1, params)
    for i in range(60):
        minute = random_merchants_minute(i, 100)  # more than the table holds, every minute
        if i >= 10:
            minute["merchant:BUSY"] = sm(5, 0, None, ["5411", "BCA", "Busy"])
        run(det, [report(0, M0 + i, minute)])
        assert len(det.merchant_volume) <= 50
    assert "merchant:BUSY" in det.merchant_volume and "merchant:BUSY" in det.scopes
    # Deterministic: which ids are followed depends on the minutes only.
    again = BurstDetector(1, params)
    for i in range(60):
        minute = random_merchants_minute(i, 100)
        if i >= 10:
            minute["merchant:BUSY"] = sm(5, 0, None, ["5411", "BCA", "Busy"])
        run(again, [report(0, M0 + i, minute)])
    assert again.snapshot() == det.snapshot()


def test_merchants_restored_past_a_lower_bound_come_back_to_it() -> None:
    # A snapshot of a worker with a higher bound: the least busy go as new merchants come.
    big = BurstDetector(1, BurstParams(max_merchants_tracked=1000))
    run(big, [report(0, M0 + i, random_merchants_minute(i, 100)) for i in range(5)])
    assert len(big.merchant_volume) == 500
    small = BurstDetector.restore(orjson.loads(orjson.dumps(big.snapshot())), BurstParams(max_merchants_tracked=100))
    busy = {"merchant:BUSY": sm(5, 0, None, ["5411", "BCA", "Busy"]), "all": sm(205, 0)}
    run(small, [report(0, M0 + 5, busy)])
    assert len(small.merchant_volume) == 100 and "merchant:BUSY" in small.merchant_volume


def test_a_snapshot_encoded_in_pieces_is_the_whole_snapshot_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # The previous release's reader decompresses and parses one JSON document: the pieces are
    # that document, cut where the state grows (scopes, merchants, pending minutes, parts).
    det = BurstDetector(2, BurstParams(max_merchants_tracked=100))
    run(det, [report(p, M0 + i, random_merchants_minute(2 * i + p, 80)) for i in range(3) for p in (0, 1)])
    run(det, [report(0, M0 + 3, random_merchants_minute(6, 80))])  # pending: partition 1 has not closed it
    last = report(1, M0 + 3, random_merchants_minute(7, 80))
    first, *_rest = in_parts(last, len(orjson.dumps(last)) // 2)
    run(det, [first])
    assert det.merge.parts and det.merge.pending and len(det.merchant_volume) == 100
    monkeypatch.setattr(burstsnapshot, "PIECE_BYTES", 4096)
    pieces = list(burstsnapshot.encode_pieces(det, 17))
    assert len(pieces) > 5
    whole = orjson.dumps({"signals_offset": 17, "detector": det.snapshot()})
    assert without_index(zlib.decompress(b"".join(pieces))) == whole
    assert burstsnapshot.encode(det, 17) == b"".join(pieces)
    back = burstsnapshot.decode(b"".join(pieces))
    assert back.signals_offset == 17 and back.detector.snapshot() == det.snapshot()


def test_parts_of_a_report_split_by_an_older_version_are_not_put_together_with_these() -> None:
    # Stop 25 changed where a report is cut; both versions give it the same digest of its content.
    # In a rolling upgrade an old sender's and a new sender's parts of one report, with the same
    # number of parts, would have made one set: scope-minutes lost or counted twice (a helper's
    # review). The new split's parts name it in their digest.
    r = outage_reports(1)[-1]
    parts = in_parts(r, len(orjson.dumps(r)) // 2)
    assert len(parts) >= 2 and all(p["report"].endswith("/2") for p in parts)
    old_last = {**parts[-1], "report": parts[-1]["report"].removesuffix("/2")}
    det = BurstDetector(1)
    assert run(det, [*parts[:-1], old_last]) == []  # not a whole report
    assert det.merge.closed_through is None
    assert run(det, [parts[-1]]) == run(BurstDetector(1), [r])


def test_whether_a_scope_is_flapping_does_not_depend_on_another_scope_opening_meanwhile() -> None:
    from stream.core.incidents import Incident, IncidentBook

    prm = BurstParams()

    def again(other_opens: bool) -> int | None:
        book = IncidentBook()
        book.open("switch:K", Incident("k1", 90, 95, [0] * 6, 0.0, 0.0, {}, {}, [], None))
        book.resolve("switch:K", 100)
        forget = lambda m: m - prm.flap_window_minutes - max(prm.windows_minutes)  # noqa: E731  (as `_open`)
        if other_opens:
            book.open("merchant:M", Incident("m1", 129, 131, [0] * 6, 0.0, 0.0, {}, {}, [], None), forget(131))
        # K's 10-minute window opened at minute 135 starts at 126: 25 minutes after the resolution.
        book.open("switch:K", Incident("k2", 126, 135, [0] * 6, 0.0, 0.0, {}, {}, [], None), forget(135))
        return book.again_after("switch:K", prm.flap_window_minutes)

    assert again(False) == again(True) == 25


def sparse_switch_minute(i: int, rintis: bool) -> dict[str, dict[str, Any]]:
    """A bank's issuer feed: JALIN busy (about 2% bad), RINTIS 4 payments a minute, 3 of them
    bad while it is down, and every fourth minute no RINTIS payment (and 2 more JALIN failures)."""
    jalin_bad = (2 if i % 2 else 1) + (0 if rintis else 2)
    rintis_bad = 3 if rintis else 0
    n = 90 + (4 if rintis else 0)
    minute: dict[str, dict[str, Any]] = {
        "all": sm(n, jalin_bad + rintis_bad),
        "issuer:BANKDKI": sm(
            n, jalin_bad + rintis_bad, {"switch:JALIN": jalin_bad, **({"switch:RINTIS": rintis_bad} if rintis else {})}
        ),
        "switch:JALIN": sm(90, jalin_bad, {"issuer:BANKDKI": jalin_bad}),
    }
    if rintis:
        minute["switch:RINTIS"] = sm(4, rintis_bad, {"issuer:BANKDKI": rintis_bad})
    return minute


def sparse_switch_normal(i: int) -> dict[str, dict[str, Any]]:
    """`sparse_switch_minute`'s feed before its outage: both switches about 1-2% bad."""
    bad = 2 if i % 2 else 1
    return {
        "all": sm(94, bad),
        "issuer:BANKDKI": sm(94, bad),
        "switch:JALIN": sm(90, bad),
        "switch:RINTIS": sm(4, 1 if i % 50 == 0 else 0),
    }


def test_a_switch_incident_explains_its_issuer_also_in_a_minute_without_payments_of_its_own() -> None:
    """A long partial outage of a low-volume switch: the issuer's 10-minute window holds the
    switch's bad payments; in a minute without a payment of the switch, its open incident still
    explains them, and the issuer does not open a critical incident of its own beside it."""
    det = BurstDetector(1)
    warm(det, sparse_switch_normal)
    start = M0 + WARM
    reports = [report(0, start + i, sparse_switch_minute(i, rintis=i % 4 != 3)) for i in range(120)]
    alerts = run(det, reports)
    opened = [(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"]
    assert opened == [("switch", "RINTIS")]


def test_a_long_incident_is_updated_at_least_every_few_hours_while_it_keeps_failing() -> None:
    """Growth by 25% makes updates ever rarer: a switch failing steadily for two days would
    go a day without one; `update_max_minutes` (4 h) keeps a heartbeat while bad payments come."""
    det = BurstDetector(1)
    warm(det, lambda i: switch_minute(1 if i % 2 else 0, 1 if i % 3 == 0 else 0))
    start = M0 + WARM
    alerts = run(det, [report(0, start + i, switch_minute(60)) for i in range(2 * 1440)])
    times = [parse_ms(a["occurred_at"]) // 60_000 for a in alerts]
    assert [a["status"] for a in alerts][0] == "opened"
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= BurstParams().update_max_minutes
    assert len(alerts) < 40  # a heartbeat, not a flood


def test_a_long_switch_outage_is_not_learned_as_the_bank_wide_normal() -> None:
    """A switch failing for hours explains the bank-wide scopes' failures (no incident of their
    own), and their minutes then score calm: learned as they are, the switch's failures would
    raise `all`'s and the issuer's expected rate several times over, and a later bank-wide
    failure would be judged against that. Failures inside a narrower scope's open incident are
    left out of a broader scope's learning."""
    det = BurstDetector(1)
    warm(det, sparse_switch_normal)
    start = M0 + WARM
    before = {k: det.scopes[k].model.expected_rate(start) for k in ("all", "issuer:BANKDKI")}
    hours = 12
    alerts = run(det, [report(0, start + i, sparse_switch_minute(i, rintis=i % 4 != 3)) for i in range(hours * 60)])
    assert [(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"] == [("switch", "RINTIS")]
    assert det.incidents.is_open("switch:RINTIS")
    end = start + hours * 60
    for key, rate in before.items():
        assert det.scopes[key].model.expected_rate(end) < 1.5 * rate, key


def test_a_long_merchant_outage_is_not_learned_as_its_acquirer_switch_or_issuer_normal() -> None:
    """A busy merchant failing for two days inside a big acquirer: its failures are few beside
    the acquirer's volume, so the acquirer's, switch's and issuer's minutes score calm and are
    learned. They lie in the merchant's open incident: left out of those scopes' learning as
    of `all`'s (a merchant records the broader scopes it shares them with, they do not record it)."""
    m = "merchant:ID1020012345678"

    def minute(i: int, merchant_bad: int) -> dict[str, dict[str, Any]]:
        bad = 15 + i % 3 + merchant_bad
        both = {"switch:RINTIS": bad, "acquirer:BCA": bad, "issuer:BANKDKI": bad}
        return {
            "all": sm(1500, bad),
            **{k: sm(1500, bad, {o: n for o, n in both.items() if o != k}) for k in both},
            m: sm(20, merchant_bad, {k: merchant_bad for k in both}, ["5812", "BCA", "W"]),
        }

    det = BurstDetector(1)
    warm(det, lambda i: minute(i, 0))
    start = M0 + WARM
    keys = ("all", "issuer:BANKDKI", "switch:RINTIS", "acquirer:BCA")
    before = {k: det.scopes[k].model.expected_rate(start) for k in keys}
    alerts = run(det, [report(0, start + i, minute(i, 12)) for i in range(2 * 1440)])
    assert [(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"] == [
        ("merchant", "ID1020012345678")
    ]
    assert det.incidents.is_open(m)
    for key, rate in before.items():
        assert det.scopes[key].model.expected_rate(start + 2 * 1440) < 1.1 * rate, key


def test_a_switch_incident_explains_all_also_in_a_minute_without_payments_of_its_own() -> None:
    """A low-volume switch's long outage with no issuer scope between it and `all`: in a minute
    without a payment of the switch, `all`'s 10-minute window still holds the switch's bad
    payments, and the switch's open incident explains them from its own window."""

    def minute(i: int, rintis: bool) -> dict[str, dict[str, Any]]:
        jalin_bad = (2 if i % 2 else 1) + (0 if rintis else 2)
        out = {
            "all": sm(90 + (4 if rintis else 0), jalin_bad + (3 if rintis else 0)),
            "switch:JALIN": sm(90, jalin_bad),
        }
        if rintis:
            out["switch:RINTIS"] = sm(4, 3)
        return out

    det = BurstDetector(1)
    warm(det, lambda i: {
        "all": sm(94, 2 if i % 2 else 1), "switch:JALIN": sm(90, 2 if i % 2 else 1),
        "switch:RINTIS": sm(4, 1 if i % 50 == 0 else 0),
    })  # fmt: skip
    start = M0 + WARM
    alerts = run(det, [report(0, start + i, minute(i, rintis=i % 4 != 3)) for i in range(120)])
    assert [(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"] == [("switch", "RINTIS")]


def bank_minute(jalin: int, rintis: int, artajasa: int) -> dict[str, dict[str, Any]]:
    """A bank's issuer feed at night: 50 payments a minute, 20 through JALIN, 15 through each of
    RINTIS and ARTAJASA, with these bad payments."""
    bad = jalin + rintis + artajasa
    issuer = "issuer:BANKDKI"
    switches = {"switch:JALIN": (20, jalin), "switch:RINTIS": (15, rintis), "switch:ARTAJASA": (15, artajasa)}
    minute = {"all": sm(50, bad), issuer: sm(50, bad, {k: b for k, (_n, b) in switches.items() if b})}
    for key, (n, b) in switches.items():
        minute[key] = sm(n, b, {issuer: b} if b else {})
    return minute


def test_a_bank_wide_failure_at_low_volume_is_one_issuer_incident_not_its_switches() -> None:
    """Every switch failing about 25% (the issuer failing): in the first minute JALIN, with 40%
    of the payments, holds 8 of the 12 bad payments by chance, 70% of the issuer's excess. On
    the 70% alone JALIN would explain the issuer, restarting its window, and the switches' open
    incidents each new minute of it: switch incidents, no issuer incident. 8 of 12 where 40% of
    the payments go is not beyond chance, so the issuer opens at once."""
    det = BurstDetector(1)
    warm(det, lambda i: bank_minute(1 if i % 4 == 0 else 0, 1 if i % 6 == 1 else 0, 1 if i % 6 == 4 else 0))
    start = M0 + WARM
    failing = [(8, 2, 2), (5, 4, 3), (4, 4, 4), (6, 3, 3), (5, 3, 4), (4, 5, 3)] * 3
    alerts = run(det, [report(0, start + i, bank_minute(*bad)) for i, bad in enumerate(failing)])
    opened = [a for a in alerts if a["status"] == "opened"]
    assert [(a["scope"]["type"], a["scope"]["id"]) for a in opened] == [("issuer", "BANKDKI")]
    assert opened[0]["window"]["start"] == format_ms(start * 60_000)
    assert opened[0]["top_children"][0]["scope"] == {"type": "switch", "id": "JALIN"}


def test_an_open_switch_incident_explains_its_issuer_through_a_night_of_a_few_payments() -> None:
    """A switch outage that goes on into the night: at two payments a minute the issuer's few
    failures lie in the switch no more than its share of the payments would give by chance,
    but the switch's incident is open (its cause is established), so it still explains them and
    the issuer does not open night after night beside it."""

    def minute(rintis: tuple[int, int], jalin: tuple[int, int]) -> dict[str, dict[str, Any]]:
        n, bad = rintis[0] + jalin[0], rintis[1] + jalin[1]
        out = {
            "all": sm(n, bad),
            "issuer:BANKDKI": sm(
                n, bad, {k: v for k, v in (("switch:RINTIS", rintis[1]), ("switch:JALIN", jalin[1])) if v}
            ),
        }
        for key, (k_n, k_bad) in (("switch:RINTIS", rintis), ("switch:JALIN", jalin)):
            if k_n:
                out[key] = sm(k_n, k_bad, {"issuer:BANKDKI": k_bad} if k_bad else None)
        return out

    det = BurstDetector(1)
    warm(det, lambda i: minute((30, 1 if i % 4 == 0 else 0), (70, 1 if i % 3 == 0 else 0)))
    start = M0 + WARM
    day = [report(0, start + i, minute((30, 25), (70, i % 2))) for i in range(60)]
    night = [
        report(0, start + 60 + i, minute((1, 1 if i % 4 else 0), (1, 1 if i % 10 == 0 else 0))) for i in range(240)
    ]
    alerts = run(det, day + night)
    assert [(a["scope"]["type"], a["scope"]["id"]) for a in alerts if a["status"] == "opened"] == [("switch", "RINTIS")]


def test_a_switch_failing_most_of_a_nights_few_payments_does_not_resolve_in_a_lull() -> None:
    """A switch outage into the night, the switch failing 3 of 4 of its one or two payments a
    minute. In a lull (a good payment, two good ones, then one failed payment alone in its
    window) the short windows score calm and are not "still failing" (one bad payment never
    is): the incident resolved there, and the issuer opened on the failures that followed. So
    few payments are no evidence that the failure stopped; a recovery at that volume is."""

    def minute(rintis: tuple[int, int]) -> dict[str, dict[str, Any]]:
        n, bad = rintis[0] + 2, rintis[1]
        out = {"all": sm(n, bad), "issuer:BANKDKI": sm(n, bad, {"switch:RINTIS": bad} if bad else None)}
        out["switch:JALIN"] = sm(2, 0)
        if rintis[0]:
            out["switch:RINTIS"] = sm(rintis[0], bad, {"issuer:BANKDKI": bad} if bad else None)
        return out

    det = BurstDetector(1)
    warm(det, lambda i: {
        "all": sm(100, (1 if i % 4 == 0 else 0) + (1 if i % 3 == 0 else 0)),
        "issuer:BANKDKI": sm(100, (1 if i % 4 == 0 else 0) + (1 if i % 3 == 0 else 0)),
        "switch:RINTIS": sm(30, 1 if i % 4 == 0 else 0),
        "switch:JALIN": sm(70, 1 if i % 3 == 0 else 0),
    })  # fmt: skip
    start = M0 + WARM
    failing = [(2, 2), (1, 1), (2, 1), (1, 1)] * 10
    lull = [(1, 0), (2, 0), (1, 1), (0, 0), (0, 0), (1, 1)]
    night = failing + lull + failing
    alerts = run(det, [report(0, start + i, minute(r)) for i, r in enumerate([(30, 25)] * 20 + night)])
    assert [(a["status"], a["scope"]["id"]) for a in alerts if a["status"] != "updated"] == [("opened", "RINTIS")]
    recovered = [report(0, start + 20 + len(night) + i, minute((1, 0))) for i in range(10)]
    assert [(a["status"], a["scope"]["id"]) for a in run(det, recovered)] == [("resolved", "RINTIS")]


def test_the_concentration_test_holds_when_a_broader_scope_missed_minutes_its_part_counted() -> None:
    """An issuer not tracked in one minute (the scope bound: no place for it) and tracked the
    next: the switch's shared counts hold its bad payments of both minutes, its own ring one.
    The concentration test counts at most the issuer's bad payments in the switch, not more
    (a count above them raised a math domain error each minute for 10 minutes)."""

    def minute(i: int, extra: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, Any]]:
        b1 = 1 if i % 2 else 0
        out = {
            "all": sm(100, b1),
            "issuer:I1": sm(100, b1, {"switch:SW": b1} if b1 else {}),
            "switch:SW": sm(50, b1, {"issuer:I1": b1} if b1 else {}),
            "switch:SW2": sm(50, 0),
        }
        if i == 5:  # a young issuer seen once: its place can be taken
            out["issuer:Y"] = sm(1, 0)
            out["all"]["c"][0] += 1
            out["switch:SW2"]["c"][0] += 1
        for key, (n, bad) in (extra or {}).items():
            out[key] = sm(n, bad, {"switch:SW": bad} if bad else {})
            for scope in ("all", "switch:SW"):
                c = out[scope]["c"]
                c[0], c[1], c[2] = c[0] + n, c[1] + bad, c[2] + bad
            if bad:
                out["switch:SW"]["w"] = {**out["switch:SW"]["w"], key: bad}
        return out

    det = BurstDetector(1, BurstParams(max_scopes_per_type=2))
    warm(det, minute)
    start = M0 + WARM
    # Three new issuers, one place: the busiest (I4) takes it; I3's bad payment counts in SW only.
    run(det, [report(0, start, minute(WARM, {"issuer:I3": (5, 1), "issuer:I4": (60, 0), "issuer:I5": (1, 0)}))])
    assert "issuer:I3" not in det.scopes and "issuer:I4" in det.scopes
    # I3 again, I4 idle and young: I3 takes its place, and fails 40 of 50 through SW.
    alerts = run(det, [report(0, start + i, minute(WARM + i, {"issuer:I3": (50, 40)})) for i in range(1, 12)])
    assert "issuer:I3" in det.scopes
    assert [a["status"] for a in alerts if a.get("kind") == "FAILURE_BURST"][:1] == ["opened"]


def pool_and_switch_minute(pool_bad: int, rintis_bad: int) -> dict[str, dict[str, Any]]:
    # A merchant pool's payments all go through RINTIS (acquirer BCA); `rintis_bad` more of
    # RINTIS's payments fail outside the pool.
    pool = "merchant:MCC-9999"
    return {
        "all": sm(400, pool_bad + rintis_bad + 1),
        "switch:RINTIS": sm(300, pool_bad + rintis_bad, {"acquirer:BCA": pool_bad + rintis_bad}),
        "switch:JALIN": sm(100, 1, {"acquirer:BRI": 1}),
        "acquirer:BCA": sm(300, pool_bad + rintis_bad, {"switch:RINTIS": pool_bad + rintis_bad}),
        "acquirer:BRI": sm(100, 1, {"switch:JALIN": 1}),
        pool: sm(30, pool_bad, {"switch:RINTIS": pool_bad, "acquirer:BCA": pool_bad}, ["9999", "BCA", "Kedai"]),
    }


@pytest.mark.parametrize(("pool_bad", "rintis_bad"), [(25, 40), (10, 6)])
def test_a_switch_failing_beside_a_merchant_pools_open_incident_opens(pool_bad: int, rintis_bad: int) -> None:
    # A merchant pool on RINTIS bursts a minute before RINTIS itself fails (a few dozen failed
    # payments a minute, e.g. a producer sending them), and its incident opens. Counted over the
    # pool's whole 10-minute window against RINTIS's excess of one restarted minute, the pool's
    # failures would explain RINTIS every minute (25, 40). With 6 a minute outside the pool, 18
    # times RINTIS's normal, what lies outside scores under the threshold in any one minute:
    # judged one restarted minute at a time, RINTIS would never open (10, 6). Either way its
    # payments outside the pool would be covered by no incident, and their refunds paid, then
    # clawed back when RINTIS recovers.
    det = BurstDetector(1)
    warm(det, lambda i: pool_and_switch_minute(0, 1 if i % 3 == 0 else 0))
    alerts = run(det, [report(0, M0 + WARM, pool_and_switch_minute(pool_bad, 0))])
    assert [(a["status"], a["scope"]["id"]) for a in alerts] == [("opened", "MCC-9999")]
    alerts = run(det, [report(0, M0 + WARM + 1 + i, pool_and_switch_minute(pool_bad, rintis_bad)) for i in range(3)])
    assert ("opened", "switch", "RINTIS") in [(a["status"], a["scope"]["type"], a["scope"]["id"]) for a in alerts]


def test_an_acquirers_few_failures_mostly_inside_an_open_switch_incident_open_nothing_of_its_own() -> None:
    # GOPAY's 17 bad payments in a minute, 10 of them inside RINTIS's open incident: under 70% of
    # its excess, but the 7 outside, against 2 a minute as usual, are no burst of their own.
    def minute(rintis_bad: int, gopay_in: int, gopay_out: int) -> dict[str, dict[str, Any]]:
        return {
            "all": sm(2000, rintis_bad + gopay_out),
            "switch:RINTIS": sm(1000, rintis_bad, {"acquirer:GOPAY": gopay_in}),
            "switch:JALIN": sm(1000, gopay_out, {"acquirer:GOPAY": gopay_out}),
            "acquirer:GOPAY": sm(300, gopay_in + gopay_out, {"switch:RINTIS": gopay_in, "switch:JALIN": gopay_out}),
        }

    det = BurstDetector(1)
    warm(det, lambda i: minute(1 if i % 3 == 0 else 0, 0, 2))
    t = M0 + WARM
    alerts = run(det, [report(0, t + i, minute(300, 1, 2)) for i in range(3)])
    assert [(a["status"], a["scope"]["id"]) for a in alerts][:1] == [("opened", "RINTIS")]
    alerts = run(det, [report(0, t + 3, minute(300, 10, 7))])
    assert ("acquirer", "GOPAY") not in {(a["scope"]["type"], a["scope"]["id"]) for a in alerts}
    # Beyond its background outside the switch, it is an incident of its own.
    alerts = run(det, [report(0, t + 4 + i, minute(300, 10, 40)) for i in range(2)])
    assert ("opened", "GOPAY") in {(a["status"], a["scope"]["id"]) for a in alerts}


def test_a_low_share_incident_recovering_at_night_volume_resolves_on_its_calm_streak() -> None:
    # RINTIS failed 3% of 1,000 payments a minute, then recovers as the night comes, at 10 a
    # minute: telling a 3% failure stopped takes a few hundred good payments, more than a
    # 3-minute window holds, so the calm minutes' evidence adds up over the calm streak.
    def minute(n: int, bad: int) -> dict[str, dict[str, Any]]:
        background = 1 if n % 3 == 0 else 0
        return {
            "all": sm(n + 1000, bad + background),
            "switch:RINTIS": sm(n, bad),
            "switch:JALIN": sm(1000, background),
        }

    det = BurstDetector(1)
    warm(det, lambda i: minute(1000, 1 if i % 3 == 0 else 0))
    t = M0 + WARM
    opened = run(det, [report(0, t + i, minute(1000, 30)) for i in range(15)])
    assert [a["status"] for a in opened if a["status"] != "updated"] == ["opened"]
    night = run(det, [report(0, t + 15 + i, minute(10, 1 if i % 30 == 0 else 0)) for i in range(90)])
    resolved = [a for a in night if a["status"] == "resolved"]
    assert len(resolved) == 1 and resolved[0]["occurred_at"] <= format_ms((t + 15 + 45) * 60_000)
    assert det.incidents.get("switch:RINTIS") is None


def without_index(text: bytes) -> bytes:
    """A snapshot's JSON without its index (`burstsnapshot.INDEX_KEY`, the last key)."""
    at = text.rfind(b',"json_pieces":')
    assert at > 0 and orjson.loads(text)[burstsnapshot.INDEX_KEY]
    return text[:at] + b"}"


def decoded_in_steps(raw: bytes) -> tuple[burstsnapshot.DetectorSnapshot, int]:
    """`burstsnapshot.decode_steps` run to its end: the snapshot and how many steps it took."""
    steps, n = burstsnapshot.decode_steps(raw), 0
    while True:
        try:
            assert next(steps) is None  # (a step shows nothing of the snapshot)
        except StopIteration as done:
            snap: burstsnapshot.DetectorSnapshot = done.value
            return snap, n
        n += 1


def test_a_detector_snapshot_decoded_in_steps_is_the_one_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same detector as the encoder's test: scopes, merchants, a pending minute and parts.
    det = BurstDetector(2, BurstParams(max_merchants_tracked=100))
    run(det, [report(p, M0 + i, random_merchants_minute(2 * i + p, 80)) for i in range(3) for p in (0, 1)])
    run(det, [report(0, M0 + 3, random_merchants_minute(6, 80))])
    first, *_rest = in_parts(last := report(1, M0 + 3, random_merchants_minute(7, 80)), len(orjson.dumps(last)) // 2)
    run(det, [first])
    assert det.merge.parts and det.merge.pending and det.scopes
    raw = burstsnapshot.encode(det, 17)
    monkeypatch.setattr(burstsnapshot, "DECOMPRESS_BYTES", 64)
    for module in (burst, burstsnapshot):  # (scopes and merchants rebuilt and freed a few a step)
        monkeypatch.setattr(module, "RESTORE_SCOPES", 3)
        monkeypatch.setattr(module, "RESTORE_MERCHANTS", 7)
    snap, steps = decoded_in_steps(raw)
    assert steps > 20 + 2 * (len(det.scopes) // 3 + len(det.merchant_volume) // 7)
    once = burstsnapshot.decode(raw)
    assert snap.signals_offset == once.signals_offset == 17 and snap.tally is None
    assert snap.detector.snapshot() == once.detector.snapshot() == det.snapshot()
    # What the restored detectors decide next is the same too.
    following = [report(1, M0 + 3, random_merchants_minute(8, 80)), report(0, M0 + 4, random_merchants_minute(9, 80))]
    assert run(snap.detector, following) == run(once.detector, following)


def many_scopes_minute(i: int) -> dict[str, dict[str, Any]]:
    """`random_merchants_minute` and 30 switches and issuers, one failed payment of 5 each."""
    out = random_merchants_minute(i, 80)
    for j in range(30):
        out[f"switch:S{j:02d}"] = sm(5, 1, {f"issuer:I{j:02d}": 1})
        out[f"issuer:I{j:02d}"] = sm(5, 1, {f"switch:S{j:02d}": 1})
    return out


def test_a_detector_restored_in_steps_is_the_one_restored_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    det = BurstDetector(2, BurstParams(max_merchants_tracked=100))
    run(det, [report(p, M0 + i, many_scopes_minute(2 * i + p)) for i in range(3) for p in (0, 1)])
    assert len(det.scopes) > 60 and len(det.merchant_volume) == 100
    monkeypatch.setattr(burst, "RESTORE_SCOPES", 3)
    monkeypatch.setattr(burst, "RESTORE_MERCHANTS", 7)
    steps, n = BurstDetector.restore_steps(orjson.loads(orjson.dumps(det.snapshot()))), 0
    while True:
        try:
            assert next(steps) is None
        except StopIteration as done:
            back: BurstDetector = done.value
            break
        n += 1
    assert n == len(det.scopes) // 3 + len(det.merchant_volume) // 7 and n > 20
    once = BurstDetector.restore(orjson.loads(orjson.dumps(det.snapshot())))
    assert back.snapshot() == once.snapshot() == det.snapshot()
    following = [report(p, M0 + 3 + i, many_scopes_minute(8 + 2 * i + p)) for i in range(2) for p in (0, 1)]
    assert run(back, following) == run(once, following) and back.snapshot() == once.snapshot()


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b'{"detector": [1, 2,]}', b'{"detector": 1} 2', b'{"detector": NaN}', b'{"a" 1}', b"[1 2]", b"\xff"],
)
def test_what_orjson_refuses_the_stepwise_decode_refuses(text: bytes) -> None:
    with pytest.raises(ValueError):
        orjson.loads(text)
    for decode in (burstsnapshot.decode, lambda raw: decoded_in_steps(raw)[0]):
        with pytest.raises(ValueError):
            decode(zlib.compress(text))
    with pytest.raises(ValueError):
        decoded_in_steps(zlib.compress(b'{"detector": 1}')[:-3])  # cut short
