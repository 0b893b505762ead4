"""What operations and customer service see, without a broker: the watch fed by the engines'
observer and the outputs, the payment status, the account index with retention, the
Prometheus text and the dashboard page."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.core import codec
from stream.core.eventtime import format_ms, parse_ms, wib_and_utc
from stream.core.holds import IncidentEvent
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.core.validation import Rejection, parse_payment
from stream.settings import Settings
from stream.worker import dashboard
from stream.worker import watch as watch_module
from stream.worker.dashboard import render
from stream.worker.lookup import (
    account_payments,
    looked_and_holds_none,
    lookup_reference,
    not_found,
    payment_status,
    token_ok,
)
from stream.worker.metrics import WorkerMetrics
from stream.worker.watch import WorkerWatch, open_holds
from tests.records import T0, ledger, payment
from tests.test_holds import EVERYTHING, G_MS, HOLDS, OFF, Feed, inc, ms, unsettled

NOW_S = T0 / 1000 + 3600


def _run(
    records: list[tuple[Stream, bytes, bytes]], params: Params | None = None
) -> tuple[WorkerWatch, PartitionEngine]:
    s = Settings()
    watch = WorkerWatch(s, clock=lambda: NOW_S)
    eng = PartitionEngine(0, params or Params())  # holds off: no incidents to wait for here
    watch.watch_engine(eng)
    offsets = [0, 0]
    for stream, key, value in records:
        for d in eng.on_record(stream, offsets[stream], key, value, None):  # no Kafka time: no clock guard
            topic = {"refunds": s.refund_topic, "alerts": s.alert_topic, "dead_letter": s.dead_letter_topic}.get(d.role)
            if topic:
                watch.on_output(d.role, d.value)
        offsets[stream] += 1
    return watch, eng


P, L = Stream.P, Stream.L
DAY = [
    (P, b"A1", payment("A1-q", "requested", "A1", 0)),
    (L, b"A1", ledger("A1-d", "debited", "A1", 1)),
    (P, b"A2", payment("A2-q", "requested", "A2", 2)),
    (L, b"A2", ledger("A2-d", "debited", "A2", 3)),
    (P, b"A2", payment("A2-s", "settled", "A2", 4)),
    (L, b"A2", ledger("A2-d", "debited", "A2", 3)),  # redelivered: a duplicate
    (L, b"A3", b"{not json"),
    (P, b"A4", payment("A4-q", "requested", "A4", 5, account_id="5550001111")),
    (L, b"A4", ledger("A4-d", "debited", "A4", 6, account_id="5550001111")),
    (P, b"A4", payment("A4-late", "settled", "A4", 500)),
    (P, b"A5", payment("A5-q", "requested", "A5", 900)),
    (L, b"A5", ledger("A5-d", "debited", "A5", 901)),
    (P, b"A6", payment("A6-q", "requested", "A6", 1000)),
    (L, b"A7", ledger("A7-r", "reversed", "A7", 1000, amount=1)),
]


def test_statuses_from_live_state() -> None:
    watch, eng = _run(DAY)
    status = {ref: payment_status(st, 0, watch)["status"] for ref, st in eng.refs.items()}
    assert status == {"A1": "refund_requested", "A2": "settled", "A4": "refund_cancelled", "A5": "debited"}
    waiting = lookup_reference({0: eng}, "A6", watch)
    assert waiting is not None and waiting["status"] == "received" and waiting["records"][0]["event_id"] == "A6-q"
    assert lookup_reference({0: eng}, "NOPE", watch) is None
    a1 = payment_status(eng.refs["A1"], 0, watch)
    assert a1["refunds"][0]["refund_id"].startswith("rf_") and a1["net_debited"] == 25_000
    assert a1["account_id_masked"] == "******9876"
    assert payment_status(eng.refs["A5"], 0, watch)["refund_due_at"] is not None


def _two_incidents_hold_one_payment() -> Feed:
    """QR1 (switch RINTIS, acquirer BCA) unsettled at 0, its deadline at 300 while both
    in_rintis (opened 100) and in_bca (opened 200) are open: held. in_rintis resolves at 1000,
    in_bca stays open; the engine has decided through about 1,970 s."""
    f = Feed()
    f.incidents(
        [
            inc("opened", 100, "in_rintis"),
            inc("opened", 200, "in_bca", ("acquirer", "BCA")),
            inc("resolved", 1000, "in_rintis"),
        ],
        EVERYTHING,
    )
    unsettled(f)
    f.tick(2000)
    [held] = f.refunds()
    assert held["type"] == "refund.held" and held["incident_ids"] == ["in_rintis", "in_bca"]
    return f


def test_a_held_refund_is_told_from_state_with_the_incident_that_keeps_it_on_and_ends_with_it() -> None:
    # (A helper's hunt: the lookup named `incident_ids[0]`, in_rintis, resolved half an hour
    # before, while in_bca kept the hold on; and it read holds from the refund.held records this
    # worker sent, so a hold ended by another worker after a rebalance stayed "held" here.)
    f = _two_incidents_hold_one_payment()
    watch = WorkerWatch(Settings())
    got = payment_status(f.eng.refs["QR1"], 0, watch, f.eng)
    assert got["status"] == "refund_held"
    assert got["hold"]["open_incident_ids"] == ["in_bca"] and got["hold"]["incident_id"] == "in_bca"
    assert got["hold"]["incident_ids"] == ["in_rintis", "in_bca"]
    assert "held while incident in_bca is open" in got["summary"] and "in_rintis" not in got["summary"]
    assert _said(got["hold"]["release_by"]) in got["summary"] and " WIB (" in got["summary"]
    assert [i["incident_id"] for i in got["incidents"]] == ["in_bca"]  # the timeline's, on any worker
    # A refund.held of another hold seen on the refund topic changes nothing: the state decides.
    watch.on_output("refunds", {"type": "refund.held", "refund_id": "rf_x", "reference": "QR2", "amount": 1})
    assert payment_status(f.eng.refs["QR1"], 0, watch, f.eng)["hold"]["refund_id"] != "rf_x"
    # in_bca resolves at 2000: the hold ends G (900 s) after, the refund is requested.
    f.incidents([inc("resolved", 2000, "in_bca", ("acquirer", "BCA"))], EVERYTHING)
    f.tick(2100)  # decided through 2,070 s: in_bca was open until 2,000
    got = payment_status(f.eng.refs["QR1"], 0, watch, f.eng)
    assert got["status"] == "refund_held" and got["hold"]["open_incident_ids"] == []
    assert "resolved: it comes at" in got["summary"] and _said(got["hold"]["release_at"]) in got["summary"]
    f.tick(2000 + 900 + 31)
    assert payment_status(f.eng.refs["QR1"], 0, watch, f.eng)["status"] == "refund_requested"
    assert len(open_holds({0: f.eng})) == 0


def _said(rfc3339: str) -> str:
    return wib_and_utc(parse_ms(rfc3339))


def test_a_payment_an_open_incident_covers_is_told_its_refund_would_be_held() -> None:
    # The deadline is still ahead and incident in_a (switch RINTIS) is open: at the deadline the
    # refund is held, not paid; customer service must not promise it at the deadline.
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f, "QR1", 150)
    f.tick(300)  # decided through 270 s: the deadline (450 s) is ahead
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "debited" and got["refund_due_at"] == format_ms(ms(450))
    deadline, latest = wib_and_utc(ms(450)), wib_and_utc(ms(450) + HOLDS.max_hold_ms)
    assert f"the refund is held at its deadline ({deadline}): incident in_a" in got["summary"]
    assert f"it comes by {latest} at the latest" in got["summary"]
    # Known only up to now (the deadline past what the detector decided): an incident open now
    # may still be open at the deadline.
    f.eng.incidents.known_through_ms = ms(300)
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert f"a refund is due at {deadline}; incident in_a covering this payment is open" in got["summary"]
    assert f"held: it then comes by {latest} at the latest" in got["summary"]
    f.eng.incidents.known_through_ms = EVERYTHING
    # Not covered (another switch): due at the deadline, nothing said of holds.
    unsettled(f, "QR2", 310, switch_id="ALTO")
    f.tick(400)  # decided through 370 s: QR1's deadline still ahead
    other = payment_status(f.eng.refs["QR2"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    assert other.endswith(f"a refund is due at {wib_and_utc(ms(610))} if it does not settle"), other
    # What the engine decides at the deadline is what was said: held.
    f.tick(500)
    assert [(r["type"], r["reference"]) for r in f.refunds()] == [("refund.held", "QR1")]


def test_a_held_refund_is_not_promised_to_a_payment_that_may_still_settle() -> None:
    # Held at its deadline, then the settlement: the hold ends without a refund
    # (refund.hold_released). What was said while it was held must allow for that.
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f, "QR1", 0)
    f.tick(400)
    said = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    latest = wib_and_utc(ms(300) + HOLDS.max_hold_ms)
    assert said.endswith(
        f"it comes by {latest} at the latest, unless the payment settles first (the merchant is then paid and "
        "nothing is refunded)"
    ), said
    f.p(payment("QR1-s", "settled", "QR1", 500))
    f.tick(600)
    assert [r["type"] for r in f.refunds()] == ["refund.held", "refund.hold_released"]


def test_a_held_refund_of_a_payment_charged_twice_is_not_told_a_settlement_refunds_nothing() -> None:
    # Debited twice, held at its deadline for both: a settlement of the payment covers one debit
    # only, so the hold goes on and the other is refunded at its end. "Nothing is refunded" would
    # be false; after the settlement the hold is told as what it is, the rest.
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f, "QR1", 0)
    f.l(ledger("QR1-d2", "debited", "QR1", 1, 25_000))
    f.tick(400)
    said = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    assert said.endswith(
        "unless the payment settles first (the merchant is then paid, and only the Rp 25.000 taken beyond the "
        "payment is refunded)"
    ), said
    f.p(payment("QR1-s", "settled", "QR1", 500))
    f.tick(600)
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "refund_held"
    assert "the payment settled meanwhile (the merchant was paid): what comes is the Rp 25.000" in got["summary"]
    assert "nothing is refunded" not in got["summary"]
    # ... which is what the hold's end pays.
    f.tick(300 + HOLDS.max_hold_ms / 1000 + 60)
    assert [(r["type"], r["amount"]) for r in f.refunds()] == [("refund.held", 50_000), ("refund.requested", 25_000)]


def test_a_reversal_without_its_debit_is_not_told_as_a_request_that_took_no_money() -> None:
    # Only the reversal in state (its debit not arrived yet, or dropped after R): "the payment was
    # requested; no money was taken" said two false things beside the NOTE that no request is here.
    f = Feed(OFF)
    f.l(ledger("QRX-r", "reversed", "QRX", 0, 25_000))
    f.p(payment("QRY-q", "requested", "QRY", 0))
    f.l(ledger("QRY-r", "reversed", "QRY", 0, 25_000))
    f.tick(400)
    only = payment_status(f.eng.refs["QRX"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    assert only.startswith("NOTE: neither the request nor a debit") and "requested" not in only.split("explains it")[1]
    assert only.endswith("the bank gave back Rp 25.000 (a reversal) of a debit not in the live state"), only
    asked = payment_status(f.eng.refs["QRY"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    assert (
        asked == "the payment was requested; the bank gave back Rp 25.000 (a reversal) of a debit not in the live state"
    )


def test_a_deadline_the_detector_has_not_decided_yet_is_not_promised_without_a_hold() -> None:
    # No incident open now, and the detector has decided only up to 300 s: the deadline (450 s)
    # may still fall in an outage declared meanwhile (its first payments are debited a minute or
    # more before it is). The refund is then held: said, with how late it may come.
    f = Feed()
    f.incidents([], ms(300))
    unsettled(f, "QR1", 150)
    f.tick(330)
    said = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    deadline, latest = wib_and_utc(ms(450)), wib_and_utc(ms(450) + HOLDS.max_hold_ms)
    assert said.endswith(
        f"a refund is due at {deadline} if it does not settle, unless an incident covering this payment is "
        f"declared open at the deadline: then the refund is held, and comes by {latest} at the latest"
    ), said
    # ... which is what happens: an incident opening at 400 s holds it.
    f.incidents([inc("opened", 400)], EVERYTHING)
    f.tick(500)
    assert [(r["type"], r["reference"]) for r in f.refunds()] == [("refund.held", "QR1")]


def test_a_settlement_alone_in_state_is_not_told_as_a_paid_merchant_and_nothing_else() -> None:
    # Refunded at the deadline, the state dropped after R, then the settlement: the worker holds
    # only the settlement. "The merchant was paid" alone hides the refund paid earlier, which
    # this settlement did not cancel.
    params = Params(timeout_ms=300_000, lateness_ms=30_000, retention_ms=1_000_000, max_hold_ms=0)
    f = Feed(params)
    unsettled(f, "QR1", 0)
    f.tick(400)
    assert [r["type"] for r in f.refunds()] == ["refund.requested"]
    f.tick(1100)  # W 1070 s: past the last record's 0 s + R
    assert "QR1" not in f.eng.refs
    f.p(payment("QR1-s", "settled", "QR1", 1100))
    f.tick(1200)
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert (
        got["status"] == "settled" and got["refunds"] == [] and [r["type"] for r in f.refunds()] == ["refund.requested"]
    )
    assert got["summary"].startswith("NOTE: neither the request nor a debit of this payment is in the live state")
    assert "older than the state is kept (16 min of event time)" in got["summary"]
    assert "`qris-guard trace QR1 --from-kafka`" in got["summary"]
    assert got["summary"].endswith("the merchant was paid"), got["summary"]


def _right_to_left(text: str) -> list[str]:
    return [c for c in text if unicodedata.bidirectional(c) in ("R", "AL", "AN")]


def test_the_trace_hints_of_a_right_to_left_reference_are_escaped_and_still_trace_it() -> None:
    # A settlement alone in state (the NOTE's hint) and a reference no worker holds (the 404's):
    # the sentence shows no right-to-left letter, and the command it names is `--escaped`, which
    # `trace` reads back as the reference (tests/test_trace.py runs it). The JSON keeps the id.
    ref = "\u05d0\u05d1-7"
    f = Feed(replace(HOLDS, max_hold_ms=0))
    f.p(payment("S-s", "settled", ref, 0))
    f.tick(100)
    got = payment_status(f.eng.refs[ref], 0, WorkerWatch(Settings()), f.eng)
    assert got["reference"] == ref and _right_to_left(got["summary"]) == []
    assert "`qris-guard trace --escaped '\\u05d0\\u05d1-7' --from-kafka` explains it" in got["summary"]
    body, status = not_found(ref, 1_000_000, [])
    assert status == 404 and _right_to_left(body["error"] + body["hint"]) == []
    assert body["error"].endswith(": \\u05d0\\u05d1-7") and looked_and_holds_none(status, body)
    assert body["hint"].endswith("`qris-guard trace --escaped '\\u05d0\\u05d1-7' --from-kafka`")
    body, status = not_found(ref, 1_000_000, ["http://w2:6066"])
    assert status == 503 and _right_to_left(body["error"]) == []
    # A plain reference's hint is the plain command.
    assert not_found("QR1", 1_000_000, [])[0]["hint"].endswith("`qris-guard trace QR1 --from-kafka`")


def test_an_incident_known_to_be_open_at_the_deadline_or_to_end_before_it_is_told_as_decided() -> None:
    # The timeline already knows the deadline (450 s): in_b opens at 400 s, so the refund is held
    # although nothing is open now; in_a resolves at 420 s, so it holds nothing of QR3's.
    f = Feed()
    f.incidents([inc("opened", 400, "in_b"), inc("opened", 100, "in_a", ("acquirer", "BCA"))], EVERYTHING)
    f.incidents([inc("resolved", 420, "in_a", ("acquirer", "BCA"))], EVERYTHING)
    unsettled(f, "QR1", 150)
    unsettled(f, "QR3", 150, switch_id="ALTO")
    f.tick(300)
    watch = WorkerWatch(Settings())
    said = payment_status(f.eng.refs["QR1"], 0, watch, f.eng)["summary"]
    assert f"the refund is held at its deadline ({wib_and_utc(ms(450))}): incident in_b" in said, said
    said = payment_status(f.eng.refs["QR3"], 0, watch, f.eng)["summary"]
    assert said.endswith(f"a refund is due at {wib_and_utc(ms(450))} if it does not settle"), said
    f.tick(500)
    assert sorted((r["type"], r["reference"]) for r in f.refunds()) == [
        ("refund.held", "QR1"),
        ("refund.requested", "QR3"),
    ]


def test_a_second_charge_after_a_refund_is_told_with_its_own_refund() -> None:
    # Refunded at the deadline, the refund cancelled by a late settlement, then charged again:
    # the second debit is owed (EXCESS_DEBIT at its own deadline), not hidden behind "cancelled".
    recs = [(P, b"C", payment("C-q", "requested", "C", 0)), (L, b"C", ledger("C-d1", "debited", "C", 1))]
    recs += [(P, b"T", payment("T-q", "requested", "T", 400)), (L, b"T", ledger("T-d", "debited", "T", 400))]
    recs += [(P, b"C", payment("C-s", "settled", "C", 401)), (L, b"C", ledger("C-d2", "debited", "C", 402))]
    recs += [(L, b"C", ledger("C-d2", "debited", "C", 402))]  # the second debit sent again
    recs += [(P, b"T2", payment("T2-q", "requested", "T2", 500)), (L, b"T2", ledger("T2-d", "debited", "T2", 500))]
    watch, eng = _run(recs)
    got = payment_status(eng.refs["C"], 0, watch, eng)
    assert got["status"] == "refund_cancelled", got
    due = wib_and_utc(ms(702))
    assert f"; Rp 25.000 more was taken since and is not settled: a refund is due at {due}" in got["summary"]
    # A repeat waiting is named as one.
    f = Feed()
    f.incidents([], EVERYTHING)
    unsettled(f, "R", 200)
    f.tick(300)
    f.l(ledger("R-d", "debited", "R", 280))  # the same debit again, ahead of the watermark: waits
    f.l(ledger("R-d2", "debited", "R", 290))  # a second debit: waits
    said = payment_status(f.eng.refs["R"], 0, WorkerWatch(Settings()), f.eng)["summary"]
    repeat = "debited Rp 25.000 (a repeat of one already processed: ignored)"
    assert f"not processed yet: {repeat}, debited Rp 25.000 (this answer changes once they are)" in said, said


def test_a_time_past_what_jakarta_time_writes_is_said_in_utc() -> None:
    # The core accepts year 0000 (UTC); `datetime` cannot write it in Jakarta: the lookup must not
    # fail (a 500, and an account query that drops this worker's payments).
    f = Feed(OFF)
    year0 = {"occurred_at": "0000-01-01T00:00:01Z"}
    f.p(payment("Y-q", "requested", "Y", 0, **year0))
    f.l(ledger("Y-d", "debited", "Y", 0, **year0))
    later = {"occurred_at": "0000-01-01T00:02:00Z"}
    f.p(payment("Z-q", "requested", "Z", 0, **later))
    f.l(ledger("Z-d", "debited", "Z", 0, **later))
    got = payment_status(f.eng.refs["Y"], 0, None, f.eng)
    assert got["status"] == "debited" and got["refund_due_at"] == "0000-01-01T00:05:01.000Z"
    assert got["summary"].endswith("a refund is due at 0000-01-01 07:05:01 WIB (00:05:01 UTC) if it does not settle")


def test_a_debit_received_and_not_processed_yet_is_not_told_as_no_money_taken() -> None:
    f = Feed(HOLDS)
    f.incidents([], EVERYTHING)
    f.p(payment("W2-q", "requested", "W2", 200))
    f.tick(300)  # the request is processed (W 270 s)
    f.l(ledger("W2-d", "debited", "W2", 280))  # past the watermark: waits
    got = lookup_reference({0: f.eng}, "W2", WorkerWatch(Settings()))
    assert got is not None and got["status"] == "requested" and got["waiting_records"]
    assert "no money was taken" not in got["summary"], got["summary"]
    assert "not processed yet: debited Rp 25.000" in got["summary"], got["summary"]


def test_a_double_debit_of_a_settled_payment_is_told_with_its_refund() -> None:
    recs = [(P, b"D", payment("D-q", "requested", "D", 0)), (L, b"D", ledger("D-d1", "debited", "D", 1))]
    recs += [(L, b"D", ledger("D-d2", "debited", "D", 2)), (P, b"D", payment("D-s", "settled", "D", 3))]
    recs += [(P, b"T", payment("T-q", "requested", "T", 100)), (L, b"T", ledger("T-d", "debited", "T", 100))]
    watch, eng = _run(recs)
    got = payment_status(eng.refs["D"], 0, watch, eng)
    assert got["status"] == "settled" and got["net_debited"] == 50_000
    due = wib_and_utc(ms(301))
    assert (
        got["summary"] == "the merchant was paid; Rp 25.000 more was taken than the payment settled for: "
        f"a refund of it is due at {due}"
    )


def test_a_debit_given_back_is_not_told_as_no_money_taken() -> None:
    recs = [(P, b"R", payment("R-q", "requested", "R", 0)), (L, b"R", ledger("R-d", "debited", "R", 1))]
    recs += [(L, b"R", ledger("R-r", "reversed", "R", 2)), (P, b"T", payment("T-q", "requested", "T", 400))]
    recs += [(L, b"T", ledger("T-d", "debited", "T", 400))]
    watch, eng = _run(recs)
    got = payment_status(eng.refs["R"], 0, watch, eng)
    assert got["status"] == "requested" and "given back" in got["summary"] and "no money" not in got["summary"]


def test_the_account_index_follows_state_and_its_retention() -> None:
    recs = [*DAY, (P, b"Z", payment("Z-q", "requested", "Z", 2000)), (L, b"Z", ledger("Z-r", "reversed", "Z", 2000))]
    watch, eng = _run(recs, Params(retention_ms=1_200_000))
    # A1..A4 are past retention (20 min) at W = 1970 s: dropped from state and from the index.
    assert set(eng.refs) == {"A5", "A6", "A7"}
    assert set(watch.accounts["7700009876"]) == {"A5", "A6", "A7"}  # A7: a lone reversal to it
    assert "5550001111" not in watch.accounts
    watch2, eng2 = _run(DAY)
    got, total = account_payments({0: eng2}, watch2, "7700009876", None)
    # Newest first; A6's request and A7's reversal still wait for the watermark (W 970 s), and
    # are listed (A7 at its reversal's time, tied with A6's request: by reference).
    assert [x["reference"] for x in got] == ["A7", "A6", "A5", "A2", "A1"] and total == 5
    assert got[0]["status"] == got[1]["status"] == "received"
    since, total = account_payments({0: eng2}, watch2, "7700009876", T0 + 2000)
    assert [x["reference"] for x in since] == ["A7", "A6", "A5", "A2"] and total == 4
    # At most `limit`, the newest, and how many there are.
    newest, total = account_payments({0: eng2}, watch2, "7700009876", None, limit=2)
    assert [x["reference"] for x in newest] == ["A7", "A6"] and total == 5
    watch2.keep_partitions({1})  # partition 0 moved to another worker
    assert watch2.accounts == {}
    # A restored engine is indexed again from its state.
    watch3 = WorkerWatch(Settings())
    watch3.watch_engine(eng2)
    assert set(watch3.accounts["7700009876"]) == {"A1", "A2", "A5"}


def test_an_account_lists_payments_waiting_for_the_watermark_as_their_reference_lookup_tells_them() -> None:
    # W 970 s after these: Q1 decided; Q2's request decided and its debit waiting; Q3 settled
    # (a state naming no account) with its debit waiting; Q4's request waiting alone; Q5 a
    # waiting reversal alone (to the account: listed); Q6 another account's request.
    watch, eng = _run(
        [
            (P, b"Q1", payment("Q1-q", "requested", "Q1", 0)),
            (L, b"Q1", ledger("Q1-d", "debited", "Q1", 1)),
            (P, b"Q2", payment("Q2-q", "requested", "Q2", 100)),
            (P, b"Q3", payment("Q3-s", "settled", "Q3", 100)),
            (P, b"Q4", payment("Q4-q", "requested", "Q4", 1000)),
            (P, b"Q6", payment("Q6-q", "requested", "Q6", 1000, account_id="5550001111")),
            (L, b"Q2", ledger("Q2-d", "debited", "Q2", 1000)),
            (L, b"Q3", ledger("Q3-d", "debited", "Q3", 1000)),
            (L, b"Q5", ledger("Q5-r", "reversed", "Q5", 1000, amount=1)),
        ]
    )
    assert set(eng.pending) == {"Q2", "Q3", "Q4", "Q5", "Q6"} and set(watch.accounts["7700009876"]) == {"Q1", "Q2"}
    got, total = account_payments({0: eng}, watch, "7700009876", None)
    # Each payment once, newest first (Q3 by its waiting debit, without a request; Q5 by its
    # reversal, tied with Q4's request: by reference).
    assert [x["reference"] for x in got] == ["Q5", "Q4", "Q3", "Q2", "Q1"] and total == 5
    for item in got:
        # What the reference lookup says at the same moment, word for word.
        assert {k: v for k, v in item.items() if k != "first_seen_ms"} == lookup_reference(
            {0: eng}, item["reference"], watch
        )
    q5, q4, q3, q2 = got[0], got[1], got[2], got[3]
    assert q5["status"] == "received" and q5["first_seen_ms"] == T0 + 1_000_000
    assert q4["status"] == "received" and q4["first_seen_ms"] == T0 + 1_000_000
    assert q3["status"] == "settled" and [r["event_id"] for r in q3["waiting_records"]] == ["Q3-d"]
    assert q2["first_seen_ms"] == T0 + 100_000 and [r["event_id"] for r in q2["waiting_records"]] == ["Q2-d"]
    # `since` and `limit` count them; their account ids are not in the answer unmasked.
    since, total = account_payments({0: eng}, watch, "7700009876", T0 + 500_000)
    assert [x["reference"] for x in since] == ["Q5", "Q4", "Q3"] and total == 3
    newest, total = account_payments({0: eng}, watch, "7700009876", None, limit=1)
    assert [x["reference"] for x in newest] == ["Q5"] and total == 5
    assert "7700009876" not in repr(got) and "5550001111" not in repr(got)
    other, total = account_payments({0: eng}, watch, "5550001111", None)
    assert [(x["reference"], x["status"]) for x in other] == [("Q6", "received")] and total == 1


def test_an_account_lists_a_payment_under_every_account_it_was_debited_from_or_reversed_to_masked() -> None:
    # R: requested and first debited by 7700009876, debited again from 7700001111, reversed to
    # 7700003333; S: reversed to 7700004444 ahead of its debit; W: a second debit from 7700005555
    # still waiting for the watermark. Each is listed under every account its money moved on, and
    # no answer shows another account than the one asked about unmasked.
    mine, second, third, fourth, fifth = "7700009876", "7700001111", "7700003333", "7700004444", "7700005555"
    watch, eng = _run(
        [
            (P, b"R", payment("R-q", "requested", "R", 0)),
            (L, b"R", ledger("R-d1", "debited", "R", 1)),
            (L, b"R", ledger("R-d2", "debited", "R", 2, account_id=second)),
            (L, b"R", ledger("R-r", "reversed", "R", 3, account_id=third)),
            (L, b"S", ledger("S-r", "reversed", "S", 4, account_id=fourth)),
            (L, b"S", ledger("S-d", "debited", "S", 5)),
            (P, b"W", payment("W-q", "requested", "W", 6)),
            (L, b"W", ledger("W-d1", "debited", "W", 7)),
            (L, b"W", ledger("W-d2", "debited", "W", 1000, account_id=fifth)),
            (P, b"T", payment("T-q", "requested", "T", 1000)),
        ]
    )
    assert "W" in eng.pending and {"R", "S", "W"} <= set(eng.refs)

    def listed(account: str, in_watch: WorkerWatch = watch) -> list[str]:
        got, total = account_payments({0: eng}, in_watch, account, None)
        assert total == len(got)
        others = {mine, second, third, fourth, fifth} - {account}
        assert not [a for a in others if a in repr(got)], (account, got)
        return [x["reference"] for x in got]

    assert listed(mine) == ["T", "W", "S", "R"]
    assert (listed(second), listed(third), listed(fourth), listed(fifth)) == (["R"], ["R"], ["S"], ["W"])
    [r] = account_payments({0: eng}, watch, second, None)[0]
    assert r["account_id_masked"] == "******9876"  # the refunds' account
    assert [d.get("account_id_masked") for d in r["debits"]] == [None, "******1111"]
    assert [d.get("account_id_masked") for d in r["reversals"]] == ["******3333"]
    # A worker that restores the engine indexes the same accounts from its state.
    restored = WorkerWatch(Settings())
    restored.watch_engine(eng)
    assert [listed(a, restored) for a in (second, third, fourth, fifth)] == [["R"], ["R"], ["S"], ["W"]]


def test_an_account_only_a_cut_ledger_entry_named_leaves_the_index_with_its_reference() -> None:
    # A reference keeps its first 20 and last 5 ledger entries; the 22nd, on another account, is
    # cut from its state: the index entry made for it goes when the reference's state does.
    other = "5550009999"
    debits = [
        (L, b"M", ledger(f"M-d{i}", "debited", "M", i, amount=1, **({"account_id": other} if i == 21 else {})))
        for i in range(30)
    ]
    recs = [*debits, (P, b"T", payment("T-q", "requested", "T", 100)), (L, b"T", ledger("T-d", "debited", "T", 100))]
    watch, eng = _run(recs, Params(retention_ms=1_200_000))
    assert other not in {x.account_id for x in eng.refs["M"].debits} and set(watch.accounts[other]) == {"M"}
    watch.keep_partitions({0})
    assert watch.entry_accounts == {"M": {other}}
    watch.keep_partitions({1})  # partition 0 moved to another worker
    assert watch.entry_accounts == {} and watch.accounts == {}
    late = [(P, b"U", payment("U-q", "requested", "U", 2000)), (L, b"U", ledger("U-d", "debited", "U", 2000))]
    watch, eng = _run(recs + late, Params(retention_ms=1_200_000))
    assert "M" not in eng.refs and other not in watch.accounts and "M" not in watch.entry_accounts


def test_a_reference_indexes_at_most_its_first_entry_accounts_whatever_its_ledger_sends() -> None:
    # M's state keeps 25 reversals of 3,000, each booked on another account: the index takes the
    # first ENTRY_ACCOUNTS_MAX of those accounts, not one per record, and they go with M.
    n = 3_000
    recs = [
        (P, b"M", payment("M-q", "requested", "M", 0)),
        (L, b"M", ledger("M-d", "debited", "M", 0, amount=n)),
        *[(L, b"M", ledger(f"M-r{i}", "reversed", "M", 1, amount=1, account_id=f"55{i:08d}")) for i in range(n)],
        (P, b"T", payment("T-q", "requested", "T", 100)),
        (L, b"T", ledger("T-d", "debited", "T", 100)),
    ]
    watch, eng = _run(recs, Params(retention_ms=1_200_000))
    assert "M" in eng.refs and len(watch.accounts) < 100, len(watch.accounts)
    cap = watch_module.ENTRY_ACCOUNTS_MAX
    assert len(watch.entry_accounts["M"]) == cap and len(watch.accounts) == cap + 1  # and the debited one
    assert [x["reference"] for x in account_payments({0: eng}, watch, "5500000000", None)[0]] == ["M"]
    late = [(P, b"U", payment("U-q", "requested", "U", 2000)), (L, b"U", ledger("U-d", "debited", "U", 2000))]
    watch, eng = _run(recs + late, Params(retention_ms=1_200_000))
    assert "M" not in eng.refs and watch.entry_accounts == {} and watch.accounts == {}


def test_a_payment_waiting_on_two_partitions_is_listed_once_for_its_account() -> None:
    # K's records came without a key: its request waits on partition 0, its debit on 2.
    tick = [
        (P, b"Z", payment("Z-q", "requested", "Z", 900, account_id="5550001111")),
        (L, b"Z", ledger("Z-d", "debited", "Z", 900, account_id="5550001111")),
    ]
    _, p0 = _run(
        tick + [(P, None, payment("K-q", "requested", "K", 1000)), (L, b"Y", ledger("Y-d", "debited", "Y", 1000))]
    )
    _, p2 = _run(
        tick + [(L, None, ledger("K-d", "debited", "K", 1000)), (P, b"X", payment("X-s", "settled", "X", 1000))]
    )
    assert "K" in p0.pending and "K" in p2.pending and "K" not in p0.refs and "K" not in p2.refs
    watch = WorkerWatch(Settings())
    watch.watch_engine(p0)
    watch.watch_engine(p2)
    engines = {0: p0, 2: p2}
    got, total = account_payments(engines, watch, "7700009876", None)
    assert [x["reference"] for x in got] == ["Y", "K"] and total == 2  # (tied on time: by reference)
    assert {k: v for k, v in got[1].items() if k != "first_seen_ms"} == lookup_reference(engines, "K", watch)


def test_bearer_tokens() -> None:
    assert token_ok("t0k", "Bearer t0k")
    assert not token_ok("t0k", "Bearer t0K") and not token_ok("t0k", None) and not token_ok("t0k", "t0k")
    assert not token_ok("", "Bearer ")
    # A header byte that is not UTF-8 reaches the check as a lone surrogate: refused, not raised.
    assert not token_ok("t0k", "Bearer t0\udcffk")


def test_malformed_requests_are_logged_without_their_content() -> None:
    # aiohttp quotes the offending request line in its parser error: a bearer token followed by a
    # stray CR, or an account id in a lookup path with a space, would be written to the log.
    import logging

    from aiohttp.http_exceptions import BadHttpMessage

    from stream.worker.logs import RequestContentDropped

    exc = BadHttpMessage("Invalid header value char", headers=None)
    exc.message = "b'Authorization: Bearer s3cret\\r' and b'GET /qris/accounts/0012345678 /payments'"
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        (BadHttpMessage, exc, None),
    )
    assert RequestContentDropped().filter(record)
    text = logging.Formatter().format(record)
    assert "s3cret" not in text and "0012345678" not in text
    assert "Error handling request from 127.0.0.1 (BadHttpMessage 400" in text
    # An error of the worker's own handlers keeps its traceback.
    bug = ValueError("a bug")
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "m", (), (ValueError, bug, None))
    assert RequestContentDropped().filter(record) and record.exc_info is not None


def test_settings_repr_hides_every_secret() -> None:
    s = Settings(
        api_token="tok-9f",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="pw-9f",
        ssl_key_password="kp-9f",
    )
    assert not any(secret in repr(s) for secret in ("tok-9f", "pw-9f", "kp-9f"))


def test_metrics_text_parses_and_counts_records_by_outcome() -> None:
    watch, eng = _run(DAY)
    watch.on_output(
        "alerts",
        {"alert_id": "a1", "kind": "FAILURE_BURST", "severity": "critical", "status": "opened", "incident_id": "i1"}
        | {"scope": {"type": "switch", "id": "RINTIS"}, "summary": "x"},
    )
    counts = {"idle_checks_unanswered": 3, "state_stale_rebuilds": 2, "state_foreign_writes": 1}
    counts |= {"state_older_owner_rewrites": 4, "state_superseded_batches": 5, "state_pieced_entries": 6}
    m = WorkerMetrics(watch, lambda: {0: eng}, lambda t, p: 20, clock=lambda: NOW_S, counts=lambda: counts)
    m.batch_seconds.observe(0.02)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    P_T, L_T = "qris.payment-requests", "qris.ledger-debits"
    assert samples[("qris_input_records_total", (("outcome", "duplicate"), ("topic", L_T)))] == 1
    assert samples[("qris_input_records_total", (("outcome", "dead_lettered"), ("topic", L_T)))] == 1
    accepted = sum(
        v for (n, lab), v in samples.items() if n == "qris_input_records_total" and ("outcome", "accepted") in lab
    )
    assert accepted == 10  # 14 records: 1 dead-lettered, 1 duplicate, 2 waiting
    assert (
        samples[("qris_refund_decisions_total", (("reason", "SETTLEMENT_TIMEOUT"), ("type", "refund.requested")))] == 2
    )
    assert samples[("qris_refund_rupiah_total", (("kind", "cancelled"),))] == 25_000
    assert samples[("qris_open_incidents", (("scope_type", "switch"),))] == 1
    assert samples[("qris_records_waiting", (("partition", "0"),))] == 2
    assert samples[("qris_state_references", (("partition", "0"),))] == 4
    assert samples[("qris_consumer_lag_records", (("partition", "0"), ("topic", P_T)))] == 20 - 7
    assert samples[("qris_batch_duration_seconds_count", ())] == 1
    assert ("qris_watermark_delay_seconds", (("partition", "0"),)) in samples
    assert samples[("qris_dead_letters_total", (("topic", L_T),))] == 1
    assert samples[("qris_idle_checks_unanswered_total", ())] == 3
    assert samples[("qris_state_stale_rebuilds_total", ())] == 2
    assert samples[("qris_state_foreign_writes_total", ())] == 1
    assert samples[("qris_state_older_owner_rewrites_total", ())] == 4
    assert samples[("qris_state_superseded_batches_total", ())] == 5
    assert samples[("qris_state_pieced_entries_total", ())] == 6


def test_metrics_count_clock_faults_from_the_partitions_state_through_a_restore() -> None:
    # The skewed records and debit-before-request payments of each partition, as its saved
    # state counts them: every one (the alerts come at the 1st, 10th, 100th, ...), the same
    # after a restore, so a rule's `increase` over them stops when the clock is fixed.
    eng = PartitionEngine(0, Params())
    for i in range(12):  # dated a century ahead of their Kafka time: the guard's
        v = payment(f"s{i}", "failed", f"S{i}", 0, occurred_at="2100-01-01T00:00:00Z")
        eng.on_record(P, i, f"S{i}".encode(), v, T0 + i)
    for i in range(3):  # each debited two minutes before its request
        ref = f"M{i}"
        eng.on_record(L, i, ref.encode(), ledger(f"d{i}", "debited", ref, i * 10), T0 + i * 10_000)
        req_ms = T0 + (i * 10 + 120) * 1000
        eng.on_record(P, 12 + i, ref.encode(), payment(f"r{i}", "requested", ref, i * 10 + 120), req_ms)
    eng.drain()  # (a payment is compared when the watermark takes its records)
    refs, meta = eng.take_dirty()
    restored = PartitionEngine.restore(0, eng.params, meta, [(k, v) for k, v in refs.items() if v is not None])
    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    P_T, L_T = "qris.payment-requests", "qris.ledger-debits"
    for engine in (eng, restored):
        text = WorkerMetrics(watch, lambda e=engine: {3: e}, clock=lambda: NOW_S).render().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
        assert samples[("qris_clock_skewed_records_total", (("partition", "3"), ("topic", P_T)))] == 12
        assert samples[("qris_clock_skewed_records_total", (("partition", "3"), ("topic", L_T)))] == 0
        assert samples[("qris_clock_mismatches_total", (("partition", "3"),))] == 3
        assert fams["qris_clock_skewed_records"].type == fams["qris_clock_mismatches"].type == "counter"


def test_metrics_show_the_collections_after_rebalances_and_the_process_memory() -> None:
    import os

    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    watch.gc_reclaimed(180, 0.25)
    watch.gc_reclaimed(0, 0.5)
    fams = {f.name: f for f in text_string_to_metric_families(WorkerMetrics(watch, dict).render().decode())}
    samples = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
    assert samples["qris_gc_rebalance_collections_total"] == 2
    assert samples["qris_gc_rebalance_unreachable_objects_total"] == 180
    assert samples["qris_gc_rebalance_seconds_total"] == 0.75
    if os.path.exists("/proc/self/stat"):  # (prometheus_client reads the process's figures there)
        assert samples["process_resident_memory_bytes"] > 10 * 1024 * 1024  # (a Python with this test's imports)
        assert samples["process_open_fds"] >= 3 and samples["process_cpu_seconds_total"] > 0
        assert fams["process_resident_memory_bytes"].type == "gauge"


def test_the_dashboard_shows_incidents_holds_feeds_and_escapes_input() -> None:
    watch, eng = _run(DAY)
    watch.on_output(
        "alerts",
        {"alert_id": "a1", "kind": "FAILURE_BURST", "severity": "critical", "status": "opened", "incident_id": "i1"}
        | {
            "scope": {"type": "switch", "id": "<b>RINTIS</b>"},
            "summary": "Switch RINTIS: 40 of 50",
            "exposure_idr": 1_000_000,
        },
    )
    held = _two_incidents_hold_one_payment().eng  # a hold attributed to in_rintis, in state
    held.refs["QR1"].holds[0].incident_ids[0] = "i1"
    page = render(watch, {0: eng, 1: held}, NOW_S, "qris-test")
    assert 'Open incidents: <span class="bad">1</span>' in page
    assert "&lt;b&gt;RINTIS&lt;/b&gt;" in page and "<b>RINTIS" not in page
    assert "1 (Rp 25.000)" in page and "holds open now: 1." in page  # the incident's holds, from state
    assert "Dead letters: 1" in page and "WIB" in page
    # Nothing loaded from elsewhere: one inline script, the page's own refresh.
    assert page.count("<script") == 1 and "src=" not in page and "http" not in page.replace("http-equiv", "")
    assert '<td class="ok">moves</td>' in page and "stands still" not in page
    # A partition paged for its event time standing still (`clockstall`) says so in its row.
    eng.stall_paged = (2, eng.watermark_ms)  # the ledger's (a bit a stream)
    page = render(watch, {0: eng}, NOW_S, "qris-test")
    assert f'<td class="bad">stands still, held by {watch.topics[1]}: nothing decided' in page
    # Holds open with no incident known here (a restart: the detector not rebuilt yet): not
    # "nothing is burning".
    fresh = WorkerWatch(Settings(), clock=lambda: NOW_S)
    page = render(fresh, {1: held}, NOW_S, "qris-test")
    # (in_bca, open here, before i1, which this worker's timeline does not know: `incident_rank`)
    assert "Nothing is burning" not in page and "1 refund(s) are still held by incident(s) in_bca, i1" in page
    assert "Nothing is burning" in render(fresh, {0: eng}, NOW_S, "qris-test")


def test_a_worker_without_the_detector_shows_the_incidents_topic_open_never_nothing_is_burning() -> None:
    # The second worker of a group, without the detector, knows the open incidents from the
    # incidents topic (its lookup names them): its page must not say "Nothing is burning".
    from stream.core.holds import Incident

    watch, eng = _run(DAY)
    assert "Nothing is burning" in render(watch, {0: eng}, NOW_S, "qris-test")
    eng.incidents.incidents["in_x"] = Incident("in_x", "switch", "<i>RINTIS</i>\u202e", T0)
    page = render(watch, {0: eng}, NOW_S, "qris-test")
    assert "Nothing is burning" not in page and 'Open incidents: <span class="bad">1</span>' in page
    assert "switch <bdi>&lt;i&gt;RINTIS&lt;/i&gt;\\u202e</bdi>." in page and "<i>RINTIS" not in page
    assert "\u202e" not in page
    eng.incidents.incidents["in_x"].resolved_at_ms = T0 + 60_000
    assert "Nothing is burning" in render(watch, {0: eng}, NOW_S, "qris-test")


def test_a_worker_without_the_detector_names_the_widest_incidents_first_then_the_newest() -> None:
    """25 merchant incidents opened before a switch's and `all`'s: the page names the first 20,
    and `all` and the switches are among them, first (`dashboard.incident_rank`), not behind
    the merchants by their opening times."""
    from stream.core.holds import Incident

    watch, eng = _run(DAY)
    book = eng.incidents.incidents
    for i in range(25):
        book[f"in_m{i:02d}"] = Incident(f"in_m{i:02d}", "merchant", f"M{i:02d}", T0 + i * 60_000)
    book["in_rintis"] = Incident("in_rintis", "switch", "RINTIS", T0 + 30 * 60_000)
    book["in_jalin"] = Incident("in_jalin", "switch", "JALIN", T0 + 31 * 60_000)
    book["in_all"] = Incident("in_all", "all", "all", T0 + 32 * 60_000)
    book["in_old"] = Incident("in_old", "issuer", "BNI", T0, resolved_at_ms=T0 + 60_000)
    page = render(watch, {0: eng}, NOW_S, "qris-test")
    assert 'Open incidents: <span class="bad">28</span>' in page
    named = page.split("Open by the incidents topic: ", 1)[1].split(". The burst detector", 1)[0]
    shown = [x.removesuffix("</bdi>").split(" <bdi>") for x in named.split(" and ")[0].split(", ")]
    assert shown[:5] == [
        ["all", "all"],
        ["switch", "JALIN"],
        ["switch", "RINTIS"],
        ["merchant", "M24"],
        ["merchant", "M23"],
    ]
    assert len(shown) == dashboard.SHOWN_INCIDENTS and named.endswith(" and 8 more") and "BNI" not in page


def test_the_detectors_table_puts_a_switch_above_a_more_exposed_merchant() -> None:
    """The worker running the detector lists every open incident in the same order
    (`dashboard.incident_rank`): a switch's, critical, above a merchant's warning, whatever
    the merchant's exposure."""
    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    for ident, stype, sid, exposure in (("i_m", "merchant", "M1", 9_000_000), ("i_s", "switch", "RINTIS", 100)):
        watch.on_output(
            "alerts",
            {"alert_id": ident, "kind": "FAILURE_BURST", "severity": "critical", "status": "opened"}
            | {"incident_id": ident, "scope": {"type": stype, "id": sid}, "summary": sid, "exposure_idr": exposure}
            | {"window": {"start": format_ms(T0), "end": format_ms(T0 + 60_000)}},
        )
    page = render(watch, {}, NOW_S, "qris-test")
    assert page.index("<td>switch <bdi>RINTIS</bdi></td>") < page.index("<td>merchant <bdi>M1</bdi></td>")


def test_the_dashboard_escapes_right_to_left_ids_beside_the_counts() -> None:
    """A Hebrew merchant id (printable, allowed) is shown escaped, in a `<bdi>`, wherever the page
    names a scope, and so is it in an alert's summary (escaped by the core): no right-to-left
    letter is left on the page to move the counts beside it."""
    from stream.core.holds import Incident
    from stream.core.incidents import scope_name

    merchant = "\u05d0\u05d1\u05d2-7"
    shown = "\\u05d0\\u05d1\\u05d2-7"
    watch, eng = _run(DAY)
    summary = f"{scope_name('merchant', merchant)}: 40 of 50 payments failed"
    watch.on_output(
        "alerts",
        {"alert_id": "a1", "kind": "FAILURE_BURST", "severity": "warning", "status": "opened", "incident_id": "i1"}
        | {"scope": {"type": "merchant", "id": merchant}, "summary": summary, "exposure_idr": 1},
    )
    page = render(watch, {0: eng}, NOW_S, "qris-test")
    assert f"<td>merchant <bdi>{shown}</bdi></td>" in page
    assert f"<td>Merchant {shown}: 40 of 50 payments failed</td>" in page
    eng.incidents.incidents["in_x"] = Incident("in_x", "merchant", merchant, T0)
    page = render(WorkerWatch(Settings(), clock=lambda: NOW_S), {0: eng}, NOW_S, "qris-test")
    assert f"Open by the incidents topic: merchant <bdi>{shown}</bdi>." in page
    assert not any(unicodedata.bidirectional(c) in ("R", "AL", "AN") for c in page)
    # The lookup's sentence names the incidents that held a payment with their scopes, the same way.
    from stream.worker.lookup import _named

    named = _named({"incident_scopes": {"in_x": {"type": "merchant", "id": merchant}}}, ["in_x"])
    assert named == f"in_x: merchant {shown}"


def test_holds_waiting_out_g_after_their_incidents_resolved_here_say_nothing_is_open() -> None:
    # Both incidents of QR1's hold resolved in this worker's state: the page says nothing is open
    # and when the holds end, not that the detector may run on another worker.
    held = _two_incidents_hold_one_payment().eng
    fresh = WorkerWatch(Settings(), clock=lambda: NOW_S)
    page = render(fresh, {1: held}, NOW_S, "qris-test")  # in_bca still open
    assert "No incident is known open" not in page and "it may run on another worker" in page
    held.incidents.incidents["in_bca"].resolved_at_ms = T0 + 1_500_000
    page = render(fresh, {1: held}, NOW_S, "qris-test")
    assert "No incident is open, but 1 refund(s) are still held by incident(s) in_bca, in_rintis" in page
    assert "its holds end about" in page and "it may run on another worker" not in page


def test_the_latest_alerts_heading_says_how_many_of_how_many() -> None:
    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    for i in range(3):
        watch.on_output("alerts", {"alert_id": f"a{i}", "kind": "DEAD_LETTER", "severity": "warning", "summary": "s"})
    assert "<h2>Latest alerts (3)</h2>" in render(watch, {}, NOW_S, "qris-test")
    for i in range(3, 12):
        watch.on_output("alerts", {"alert_id": f"a{i}", "kind": "DEAD_LETTER", "severity": "warning", "summary": "s"})
    page = render(watch, {}, NOW_S, "qris-test")
    assert "<h2>Latest alerts (the 10 newest of 12 since this worker started)</h2>" in page


def test_a_critical_alert_stays_on_the_dashboard_through_a_flood_of_warnings() -> None:
    """An OVER_REFUND (a person must look) followed by an outage's LATE_SETTLEMENT warnings: the
    10 newest alerts are warnings, and the page still shows it, and the counts by kind."""
    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    over = {"alert_id": "over", "kind": "OVER_REFUND", "severity": "critical", "summary": "Over-refund on QR1"}
    watch.on_output("alerts", over)
    for i in range(40):
        watch.on_output(
            "alerts", {"alert_id": f"l{i}", "kind": "LATE_SETTLEMENT", "severity": "warning", "summary": "s"}
        )
    page = render(watch, {}, NOW_S, "qris-test")
    assert "<h2>Critical alerts other than incidents (1 since this worker started)</h2>" in page
    assert "<li>OVER_REFUND: Over-refund on QR1</li>" in page
    assert "<p>By kind: OVER_REFUND [critical] 1, LATE_SETTLEMENT [warning] 40</p>" in page


def test_the_dashboard_shows_holds_released_without_payment_and_since_when_it_counts() -> None:
    watch = WorkerWatch(Settings(), clock=lambda: NOW_S)
    for t in ("refund.held", "refund.hold_released"):
        watch.on_output("refunds", {"type": t, "refund_id": "rf_1", "amount": 25_000, "reason": "SETTLEMENT_TIMEOUT"})
    page = render(watch, {}, NOW_S, "qris-test")
    assert "released without payment Rp 25.000" in page and "<th class=num>released without payment</th>" in page
    assert f"since it started ({wib_and_utc(watch.started_at_ms)})" in page


def test_grafana_and_prometheus_files_use_only_metrics_the_worker_exports() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    watch, eng = _run(DAY)
    exported = {
        f.name for f in text_string_to_metric_families(WorkerMetrics(watch, lambda: {0: eng}).render().decode())
    }
    text = (root / "docker/grafana/dashboards/qris-guard.json").read_text()
    text += (root / "docker/prometheus/rules.yml").read_text()
    used = {re.sub(r"_(total|bucket|count|sum)$", "", m) for m in re.findall(r"(?:qris|process)_[a-z_]+", text)}
    if not any(name.startswith("process_") for name in exported):  # (no /proc: not Linux)
        used = {name for name in used if not name.startswith("process_")}
    assert used and used <= exported, used - exported
    documented = (root / "docs/metrics.md").read_text()
    assert all(f"`{name}" in documented for name in exported), [n for n in exported if f"`{n}" not in documented]


def test_the_ids_kept_to_count_each_output_once_are_bounded_for_dead_letters_and_alerts_too(monkeypatch: Any) -> None:
    # A producer whose every record is rejected makes only dead letters: the ids the watch keeps
    # to count a redelivered output once grew by one a record and were cleared only by refunds.
    monkeypatch.setattr(watch_module, "SEEN_IDS_MAX", 1_000)
    watch = WorkerWatch(Settings())
    for i in range(5_000):
        v = {"dead_letter_id": f"d{i}", "source_topic": "qris.payment-requests"}
        watch.on_output("dead_letter", v)
        watch.on_output("dead_letter", v)  # sent again: counted once
        watch.on_output("alerts", {"alert_id": f"a{i}", "kind": "DEAD_LETTER", "severity": "warning"})
    assert len(watch.seen_ids) <= 1_000
    assert watch.dead_letters["qris.payment-requests"] == 5_000
    assert watch.alerts[("DEAD_LETTER", "warning")] == 5_000


def test_the_incidents_a_payment_page_shows_are_the_ones_the_engine_holds_it_for() -> None:
    # The page built pool ids itself (`MCC-<mcc>`, raw merchant ids, no `MCC-unknown`): a
    # merchant whose id is `MCC-5999` was shown the pool's incident, and a payment without an
    # mcc was not shown the `MCC-unknown` pool's. It uses the core's coverage rule now.
    watch = WorkerWatch(Settings())
    for i, (scope_type, scope_id) in enumerate(
        [("merchant", "MCC-5999"), ("merchant", "\\MCC-5999"), ("merchant", "MCC-unknown"), ("switch", "ARTAJASA")]
    ):
        watch.on_output("alerts", _burst_alert(f"a{i}", "opened", f"inc{i}", {"type": scope_type, "id": scope_id}))
    request = parse_payment(b"QR1", payment("e1", "requested", "QR1", 0, merchant_id="MCC-5999", mcc=None))
    assert not isinstance(request, Rejection)
    assert sorted(v["incident_id"] for v in watch.incidents_covering(request)) == ["inc1", "inc2"]


@pytest.mark.parametrize(
    "reference", ["QR2025?x", "QR2025#x", "QR 2025+x", "QR%20x", "QR/2025", 'QR-Café"1', "QR2025&since=x"]
)
def test_a_lookup_forwarded_to_a_peer_asks_for_the_same_reference_and_since(reference: str) -> None:
    # A helper's hunt: the forwarded paths were pasted unquoted. `QR2025?x` was asked of the
    # peers as `QR2025` (another payment, answered if held), and a `since` with a `+07:00`
    # offset reached them as ` 07:00`: refused, and the merged account answer silently left out
    # every payment the other workers held. Here a real aiohttp server (Faust's web is aiohttp)
    # parses what `ask` sends, as a peer would.
    import asyncio

    import aiohttp
    from aiohttp import web

    from stream.worker.lookup import account_path, payment_path

    seen: list[tuple[str, str | None]] = []

    async def payment(request: web.Request) -> web.Response:
        seen.append((request.match_info["reference"], None))
        return web.json_response({})

    async def account(request: web.Request) -> web.Response:
        seen.append((request.match_info["account_id"], request.query.get("since")))
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/qris/payments/{reference}", payment)
        app.router.add_get("/qris/accounts/{account_id}/payments", account)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                for path in (payment_path(reference), account_path(reference, "2025-03-29T09:00:00+07:00")):
                    async with session.get(f"http://127.0.0.1:{port}" + path) as resp:
                        assert resp.status == 200, path
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert seen == [(reference, None), (reference, "2025-03-29T09:00:00+07:00")]
    assert account_path("7700009876", None) == "/qris/accounts/7700009876/payments"
    assert account_path("7700009876", None, 20) == "/qris/accounts/7700009876/payments?limit=20"


@pytest.mark.parametrize("limit", ["0", "5001", "-1", "x", "²", "9" * 5000, ""])
def test_an_account_querys_limit_is_a_whole_number_from_1_to_its_most(limit: str) -> None:
    from stream.worker.lookup import parse_limit

    with pytest.raises(ValueError, match="is not a whole number from 1 to 5000") as caught:
        parse_limit(limit)
    assert len(str(caught.value)) < 100


def test_incidents_shown_by_a_worker_the_detector_left_are_put_aside_and_back_when_it_returns() -> None:
    # (A helper's hunt: the worker that ran the detector kept showing its incidents open for
    # good once the detector moved to another worker, which sent their resolutions.)
    watch = WorkerWatch(Settings())
    opened = {"alert_id": "a1", "kind": "FAILURE_BURST", "severity": "critical", "status": "opened"}
    opened |= {"incident_id": "i1", "scope": {"type": "switch", "id": "RINTIS"}, "summary": "Switch RINTIS: 40 of 50"}
    watch.on_output("alerts", opened)
    metrics = WorkerMetrics(watch, lambda: {})
    assert _sample(metrics, "qris_open_incidents", ("switch",)) == 1
    watch.detector_moved()  # a rebalance
    assert watch.incidents == {} and _sample(metrics, "qris_open_incidents", ("switch",)) == 0
    # The detector is rebuilt here again: its open incidents come back, with the alert sent of
    # one this worker knows, what the detector knows of another.
    watch.detector_restored(
        [
            {"incident_id": "i1", "scope": {"type": "switch", "id": "RINTIS"}, "since": "x", "affected_payments": 40},
            {"incident_id": "i2", "scope": {"type": "all", "id": "all"}, "since": "2025-03-29T09:00:00Z"}
            | {"affected_payments": 7},
        ]
    )
    assert watch.incidents["i1"] is opened and watch.incidents["i2"]["affected_payments"] == 7
    page = render(watch, {}, NOW_S, "qris-test")
    assert 'Open incidents: <span class="bad">2</span>' in page and "the detector was restored" in page
    watch.detector_moved()
    watch.detector_restored([])  # rebuilt here with nothing open: nothing shown
    assert watch.incidents == {}


def test_two_holds_of_one_reference_are_both_counted() -> None:
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(400)  # the first cycle's deadline (300) held
    f.l(ledger("QR1-d2", "debited", "QR1", 400, 10_000))
    f.tick(800)  # the second's (700) held too
    assert [r["type"] for r in f.refunds()] == ["refund.held", "refund.held"]
    assert len(open_holds({0: f.eng})) == 2
    got = payment_status(f.eng.refs["QR1"], 0, None, f.eng)
    assert len(got["holds"]) == 2 and "(2 refunds of this payment are held)" in got["summary"]
    assert _sample(WorkerMetrics(WorkerWatch(Settings()), lambda: {0: f.eng}), "qris_refunds_held", ()) == 2


def _sample(metrics: WorkerMetrics, name: str, label_values: tuple[str, ...]) -> float:
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            if s.name == name and tuple(s.labels.values()) == label_values:
                return s.value
    raise AssertionError(f"no sample {name}{label_values}")


_SCOPE = {"type": "switch", "id": "RINTIS"}


def _burst_alert(alert_id: str, status: str, incident: str = "i1", scope: dict[str, str] | None = None) -> dict:
    return {
        "alert_id": alert_id,
        "kind": "FAILURE_BURST",
        "severity": "critical",
        "status": status,
        "incident_id": incident,
        "scope": scope or _SCOPE,
        "summary": f"{incident} {status}",
    }


def _restored(incident: str = "i1") -> dict:
    return {"incident_id": incident, "scope": _SCOPE, "since": "2025-03-29T02:00:00.000Z", "affected_payments": 3}


def test_a_resolution_sent_again_after_the_rebuild_resolves_the_restored_incident() -> None:
    # (A review: the watch dropped alerts sent again, by id, before moving the incident.)
    # The detector (on this worker) sent i1's resolution from signals offset k; the group had
    # committed only up to offset < k when the rebalance came (Faust commits every few seconds).
    watch = WorkerWatch(Settings())
    watch.on_output("alerts", _burst_alert("a-open", "opened"))
    watch.on_output("alerts", _burst_alert("a-res", "resolved"))
    assert watch.incidents == {}
    watch.detector_moved()
    # Rebuilt here from the committed offset: i1 is still open in the detector at that offset.
    watch.detector_restored([_restored()])
    # The detector takes offset k again and sends i1's resolution again (same deterministic id).
    watch.on_output("alerts", _burst_alert("a-res", "resolved"))
    assert "i1" not in watch.incidents, "i1 shown open for good (dashboard, qris_open_incidents, lookup)"


def test_an_incident_opened_after_the_commit_is_shown_again_once_its_opening_is_sent_again() -> None:
    watch = WorkerWatch(Settings())
    watch.on_output("alerts", _burst_alert("a-open", "opened"))  # from an offset above the commit
    watch.detector_moved()
    watch.detector_restored([])  # rebuilt to the committed offset: i1 not open there yet
    watch.on_output("alerts", _burst_alert("a-open", "opened"))  # the same signals taken again
    assert "i1" in watch.incidents, "an open incident disappeared from this worker's views"


_HOLDS, _INCIDENTS = 500, 100


class _CountingHold:
    reads = 0

    def __init__(self, i: int) -> None:
        self._ids = [f"in_{i % _INCIDENTS}"]
        self.amount = 1_000

    @property
    def incident_ids(self) -> list[str]:
        _CountingHold.reads += 1
        return self._ids


def test_a_render_reads_each_hold_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # (A review: every hold was read once per open incident, on the event loop at each refresh:
    # 2.2 s a render with 50,000 holds and 100 incidents.)
    holds: list[Any] = [_CountingHold(i) for i in range(_HOLDS)]
    monkeypatch.setattr(dashboard, "open_holds", lambda engines: holds)
    watch = WorkerWatch(Settings())
    for i in range(_INCIDENTS):
        watch.on_output("alerts", _burst_alert(f"a{i}", "opened", f"in_{i}", {"type": "switch", "id": f"S{i}"}))
    _CountingHold.reads = 0
    page = dashboard.render(watch, {}, 1.7e9, "qris-test")
    assert "holds open now: 500." in page
    assert _CountingHold.reads <= 4 * _HOLDS, (
        f"{_CountingHold.reads} reads of {_HOLDS} holds for {_INCIDENTS} incidents"
    )


def test_release_at_is_not_given_while_an_incident_that_keeps_the_hold_on_is_open() -> None:
    # Live order: in_a (switch RINTIS) opens at 100 and resolves at 1000 (the hold is to end at
    # 1900, G after); in_bca (acquirer BCA, covers the payment too) opens at 1200, within the
    # grace, and is learned later. An opening is not a resolution: the hold's release_at_ms is
    # not rescheduled until its timer at 1900 fires.
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 1000)], ms(1100))
    unsettled(f)
    f.tick(1130)
    [held] = f.refunds()
    assert held["type"] == "refund.held"
    f.incidents([inc("opened", 1200, "in_bca", ("acquirer", "BCA"))], ms(1300))
    f.tick(1330)
    got = payment_status(f.eng.refs["QR1"], 0, None, f.eng)["hold"]
    assert got["open_incident_ids"] == ["in_bca"]
    # The hold does not end at 1900 (in_bca is open); the answer gives it as the time it comes.
    assert got["release_at"] is None, f"release_at {got['release_at']} (= {format_ms(ms(1900))}) while in_bca is open"


def test_a_restored_engine_with_no_timeline_yet_does_not_claim_the_incident_resolved() -> None:
    # (A review: release_at from an empty timeline was the deadline, in the past.)
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)  # in_a open, never resolved
    unsettled(f)
    f.tick(400)
    [held] = f.refunds()
    assert held["type"] == "refund.held"
    before = payment_status(f.eng.refs["QR1"], 0, None, f.eng)
    assert before["hold"]["release_at"] is None
    # The worker restarts: the engine restored from its saved state; the incidents topic is
    # read afterwards (the timeline is not saved with the state).
    refs, meta = f.eng.take_dirty()
    eng = PartitionEngine.restore(0, HOLDS, meta, [(k, v) for k, v in refs.items() if v])
    assert not eng.incidents.incidents
    got = payment_status(eng.refs["QR1"], 0, None, eng)
    assert got["hold"]["release_at"] is None, (got["hold"]["release_at"], got["summary"])


def test_the_data_directory_is_the_workers_users_only_unless_it_existed(tmp_path: Any) -> None:
    import stat

    from stream.worker.app import private_data_dir

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    own = tmp_path / "a" / "state"
    private_data_dir(own, "app")
    assert mode(own) == 0o700 and mode(own / "app") == 0o700
    for given in (0o1777, 0o2775, 0o755):  # like /tmp; a group's directory; a home or the current one
        shared = tmp_path / f"shared-{given:o}"
        shared.mkdir()
        shared.chmod(given)
        private_data_dir(shared, "app")
        assert mode(shared) == given and mode(shared / "app") == 0o700


def test_the_lookups_examples_run() -> None:
    import doctest

    from stream.worker import lookup, watch

    for module in (lookup, watch):
        if not (module.__file__ or "").endswith(".py"):
            continue  # compiled by mypyc: doctest finds no examples in compiled functions (runs on the sources)
        failures, tried = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert tried > 0 and failures == 0


def test_a_reference_split_over_partitions_is_told_from_every_partition_that_holds_it() -> None:
    # Records of K sent without a key: the request and the settlement on partition 0, the debit
    # on partition 2, which refunds it. Partition 0 alone would say "the merchant was paid" and
    # hide the refund.
    tick = [(P, b"Z", payment("Z-q", "requested", "Z", 900)), (L, b"Z", ledger("Z-d", "debited", "Z", 900))]
    _, p0 = _run([(P, None, payment("K-q", "requested", "K", 0)), (P, None, payment("K-s", "settled", "K", 2))] + tick)
    _, p2 = _run([(L, None, ledger("K-d", "debited", "K", 1))] + tick)
    got = lookup_reference({0: p0, 2: p2}, "K", None)
    assert got is not None and got["status"] == "refund_requested" and got["partition"] == 2, got
    assert [o["status"] for o in got["other_partitions"]] == ["settled"]
    assert got["summary"].startswith("WARNING: this reference's records arrived on partitions 2, 0"), got["summary"]
    # The account list tells it the same way (its index points at one partition only).
    watch = WorkerWatch(Settings())
    watch.watch_engine(p0)
    watch.watch_engine(p2)
    [item] = [i for i in account_payments({0: p0, 2: p2}, watch, "7700009876", None)[0] if i["reference"] == "K"]
    assert item["summary"].startswith("WARNING:") and item["status"] == "refund_requested", item
    # One partition: as before, no warning.
    assert "other_partitions" not in (lookup_reference({0: p0}, "K", None) or {})


def test_a_cancelled_refund_is_told_with_what_made_it_unnecessary() -> None:
    watch, eng = _run(DAY)
    said = payment_status(eng.refs["A4"], 0, watch, eng)["summary"]
    assert said.startswith("a refund of Rp 25.000 was requested, then cancelled: the payment settled late"), said
    assert " WIB (" in said


def test_a_payment_with_a_rejected_record_is_not_told_as_no_money_taken() -> None:
    # The debit was rejected (a currency the contract refuses): the state knows the request
    # only, and "no money was taken" would be false for a customer whose statement shows the
    # debit. The lookup says records were rejected; one whose every record was rejected is found.
    watch, eng = _run(
        [
            (P, b"D1", payment("D1-q", "requested", "D1", 0)),
            (L, b"D1", ledger("D1-d", "debited", "D1", 1, currency="usd")),
            (L, b"D2", ledger("D2-d", "debited", "D2", 2, currency="usd")),
            (P, b"D9", payment("D9-q", "requested", "D9", 100)),
            (L, b"D9", ledger("D9-d", "debited", "D9", 100)),  # (the watermark past D1 and D2)
        ]
    )
    got = lookup_reference({0: eng}, "D1", watch)
    assert got is not None and got["status"] == "requested"
    assert got["summary"].startswith("NOTE: 1 record(s) of this payment were rejected (")
    assert "look at the core bank's journal" in got["summary"] and "no money was taken" in got["summary"]
    [rejected] = got["rejected_records"]
    assert rejected["source_topic"] == Settings().ledger_topic and rejected["source_offset"] == 0
    only = lookup_reference({0: eng}, "D2", watch)
    assert only is not None and only["status"] == "rejected" and len(only["rejected_records"]) == 1
    assert "NOTE" not in (lookup_reference({0: eng}, "D9", watch) or {}).get("summary", "")
    # (Bounded: the oldest references are forgotten first.)
    for i in range(watch_module.REJECTED_REFS_MAX + 5):
        watch.on_output("dead_letter", {"dead_letter_id": f"x{i}", "key": f"X{i}", "error": "e"})
    assert len(watch.rejected) == watch_module.REJECTED_REFS_MAX and "D1" not in watch.rejected


def test_a_refund_is_told_with_its_reason_a_partial_reversal_and_an_over_refund() -> None:
    # V: a failed payment refunded (25,000), then the bank reversed 10,000 of the debit: the
    # customer got 35,000 back for 25,000 taken. The desk reads why the refund was made, the
    # reversal, and that 10,000 too much was refunded (an OVER_REFUND alert, for a person).
    recs = [(P, b"V", payment("V-q", "requested", "V", 0)), (L, b"V", ledger("V-d", "debited", "V", 1))]
    recs += [(P, b"V", payment("V-f", "failed", "V", 2, response_code="91"))]
    recs += [(P, b"T", payment("T-q", "requested", "T", 400)), (L, b"T", ledger("T-d", "debited", "T", 400))]
    recs += [(L, b"V", ledger("V-r", "reversed", "V", 401, amount=10_000))]
    recs += [(P, b"T2", payment("T2-q", "requested", "T2", 500)), (L, b"T2", ledger("T2-d", "debited", "T2", 500))]
    watch, eng = _run(recs)
    got = payment_status(eng.refs["V"], 0, watch, eng)
    assert got["status"] == "refund_requested", got
    assert "of Rp 25.000 requested (the payment failed after the money was taken)" in got["summary"], got
    assert "the bank also gave back Rp 10.000 of the money taken" in got["summary"]
    assert "10000 more is refunded than is owed now" in got["summary"] and "OVER_REFUND" in got["summary"]
    a1 = payment_status(_run(DAY)[1].refs["A1"], 0)
    assert "(the payment did not reach the merchant in time)" in a1["summary"] and "OVER_REFUND" not in a1["summary"]


def test_a_refund_paid_after_a_hold_is_told_when_and_by_which_incident() -> None:
    # Held from its deadline (300) while switch RINTIS was down (100 to 1000), requested at the
    # hold's end: the desk reads when it was requested (not the deadline, 35 minutes early) and
    # why it waited, as the refund record's `decided_at` and `hold` say.
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 1000)], EVERYTHING)
    unsettled(f)
    f.tick(3000)
    requested = [r for r in f.refunds() if r["type"] == "refund.requested"]
    assert len(requested) == 1 and requested[0]["hold"] is not None
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "refund_requested"
    [item] = got["refunds"]
    assert item["requested_at"] == requested[0]["decided_at"] and item["held_by"] == ["in_a"]
    assert f", at {wib_and_utc(parse_ms(requested[0]['decided_at']))}, after it was held" in got["summary"]
    assert "while incident in_a: switch RINTIS was open" in got["summary"], got["summary"]
    # Holds off, or a refund never held: nothing more is said.
    assert "held_by" not in payment_status(_run(DAY)[1].refs["A1"], 0)["refunds"][0]


def test_a_refund_paid_at_its_deadline_is_not_said_held_by_an_incident_its_late_request_names() -> None:
    # Switch RINTIS is down 100..1000 s. The debit comes alone (deadline 300, decided with no
    # `requested` record: no switch known, nothing covers it): requested at 300, not held. The
    # request (switch RINTIS) comes at 350: the refund must not be told held until 1900.
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 1000)], EVERYTHING)
    f.l(ledger("QR1-d", "debited", "QR1", 0, 25_000))
    f.tick(340)
    f.p(payment("QR1-q", "requested", "QR1", 350, 25_000))
    f.tick(3000)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested"]
    assert requested.get("hold") is None and requested["decided_at"] == format_ms(ms(300))
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert "held_by" not in got["refunds"][0] and "after it was held" not in got["summary"]


def test_a_refund_paid_at_max_hold_is_told_held_by_the_incidents_its_record_names() -> None:
    # in_a never resolves: the hold ends at release_by (300 + 7200 s) as max_hold, naming in_a.
    # in_b (acquirer BCA) opens at 7600, after the refund was requested: not one that held it.
    f = Feed()
    f.incidents([inc("opened", 100), inc("opened", 7600, "in_b", ("acquirer", "BCA"))], EVERYTHING)
    unsettled(f)
    f.tick(7000)
    f.p(payment("QR1-q2", "requested", "QR1", 7000, 25_000))  # (keeps the state past R)
    f.tick(7540)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested"]
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    item = got["refunds"][0]
    assert item["held_by"] == requested["hold"]["incident_ids"] == ["in_a"]
    assert item["requested_at"] == requested["decided_at"]


def _held_and_requested(params: Params = HOLDS, restore: Params | None = None, **keep: bool) -> Feed:
    """QR1 held from its deadline (300) while switch RINTIS is down (100 to 1000), requested at
    the hold's end (G after the resolution: 1900). `restore`: the engine is then rebuilt from
    its saved state with these settings, its incident timeline given again unless
    `keep["incidents"]` is False; `keep["request_times"]` False drops the refunds' request
    times and the metadata's `request_times_from_ms` from the saved state, as a release that
    did not save them wrote it."""
    events = [inc("opened", 100), inc("resolved", 1000)]
    f = Feed(params)
    f.incidents(events, EVERYTHING)
    unsettled(f)
    f.tick(1931)
    if restore is None:
        return f
    return _restarted(f, restore, events, **keep)


def _restarted(f: Feed, params: Params, events: list[IncidentEvent], **keep: bool) -> Feed:
    # `f`'s engine rebuilt from its saved state with `params` (`_held_and_requested`'s `keep`).
    eng, meta = f.eng, f.eng.save_meta()
    entries = []
    for k in sorted(set(eng.refs) | set(eng.pending)):
        v = eng.save_reference(k)
        assert v is not None
        d = codec.loads(v)
        if k == "QR1" and not keep.get("request_times", True):
            d["state"].pop("refunds_requested_at_ms", None)
        entries.append((k, codec.dumps(d)))
    if not keep.get("request_times", True):
        m = codec.loads(meta)
        del m["request_times_from_ms"]
        meta = codec.dumps(m)
    g = Feed(eng=PartitionEngine.restore(0, params, meta, entries))
    g.offsets, g.out = list(f.offsets), list(f.out)
    if keep.get("incidents", True):
        g.incidents(events, EVERYTHING)
    return g


@pytest.mark.parametrize(
    "restore, incidents",
    [
        (HOLDS, False),  # restored, the incidents topic not read yet: the timeline knows none
        (replace(HOLDS, hold_grace_ms=2 * G_MS), True),  # restarted with another grace
        (OFF, False),  # restarted with holds off
    ],
    ids=["timeline-empty", "grace-changed", "holds-off"],
)
def test_a_held_refund_is_told_requested_when_the_engine_requested_it_whatever_the_timeline_says_now(
    restore: Params, incidents: bool
) -> None:
    # The request time is the refund's own (1900), saved with it: not worked out again from
    # what this engine's timeline and settings say now (none, or 300 + 1000 + 1800 = 2800).
    f = _held_and_requested(restore=restore, incidents=incidents)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested"]
    assert requested["decided_at"] == format_ms(ms(1900)) and requested["hold"]["held_ms"] == 1_600_000
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    [item] = got["refunds"]
    assert item["requested_at"] == requested["decided_at"] and item["held_ms"] == requested["hold"]["held_ms"]
    said = f", at {wib_and_utc(ms(1900))}, after it was held for 26 min from its deadline ({wib_and_utc(ms(300))})"
    assert said in got["summary"], got["summary"]
    if incidents:
        assert item["held_by"] == ["in_a"] and "while incident in_a: switch RINTIS was open" in got["summary"]
    else:  # (the incidents it names are the timeline's, which knows none)
        assert item["held_by"] == [] and "while an incident covering this payment was open" in got["summary"]


def test_a_held_refund_saved_without_its_request_time_is_told_from_the_timeline() -> None:
    f = _held_and_requested(restore=HOLDS, request_times=False)
    assert f.eng.refs["QR1"].refunds[0].requested_at_ms is None
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    [item] = got["refunds"]
    assert item["requested_at"] == format_ms(ms(1900)) and item["held_ms"] == 1_600_000
    assert item["held_by"] == ["in_a"] and "while incident in_a: switch RINTIS was open" in got["summary"]


def _requested_at_its_deadline_with_holds_off(**keep: bool) -> Feed:
    # Holds off: QR1 requested at its deadline (300) while switch RINTIS is down (100 to 1000);
    # then restarted with holds on and the incident timeline read again.
    events = [inc("opened", 100), inc("resolved", 1000)]
    f = Feed(OFF)
    f.incidents(events, EVERYTHING)
    unsettled(f)
    f.tick(1931)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested"]
    assert requested.get("hold") is None and requested["decided_at"] == format_ms(ms(300))
    return _restarted(f, HOLDS, events, **keep)


def test_a_refund_requested_at_its_deadline_with_holds_off_is_not_told_held_after_a_restart_with_holds_on() -> None:
    # The timeline now says an incident covered the deadline, and holds are on: the refund went
    # out at its deadline all the same, as its record says (`hold: null`).
    f = _requested_at_its_deadline_with_holds_off()
    assert f.eng.refs["QR1"].refunds[0].requested_at_ms is None
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "refund_requested"
    [item] = got["refunds"]
    assert "held_by" not in item and "requested_at" not in item
    assert "after it was held" not in got["summary"] and "in_a" not in got["summary"], got["summary"]


def test_a_refund_restored_from_state_saved_without_request_times_is_told_from_the_timeline() -> None:
    # State of a release that did not keep request times: every refund restored may have been
    # held, so the lookup works it out from the incident timeline (which cannot tell that holds
    # were off when QR1 was requested). Restarted with holds off again, QR2 is requested at its
    # deadline (2300) while incident in_b is open (2100 to 2500); after one more restart, with
    # holds on, QR2 is told requested at its deadline and QR1 still from the timeline.
    events = [inc("opened", 100), inc("resolved", 1000), inc("opened", 2100, "in_b"), inc("resolved", 2500, "in_b")]
    f = Feed(OFF)
    f.incidents(events, EVERYTHING)
    unsettled(f)
    f.tick(1931)
    f = _restarted(f, OFF, events, request_times=False)
    assert f.eng.request_times_from_ms == ms(300) + 1  # just past QR1's deadline
    unsettled(f, "QR2", 2000)
    f.tick(2600)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested" and r["reference"] == "QR2"]
    assert requested.get("hold") is None and requested["decided_at"] == format_ms(ms(2300))
    assert codec.loads(f.eng.save_meta())["request_times_from_ms"] == ms(300) + 1
    f = _restarted(f, HOLDS, events)
    assert f.eng.request_times_from_ms == ms(300) + 1
    qr1 = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert qr1["refunds"][0]["held_by"] == ["in_a"] and "after it was held" in qr1["summary"]
    qr2 = payment_status(f.eng.refs["QR2"], 0, WorkerWatch(Settings()), f.eng)
    assert "held_by" not in qr2["refunds"][0] and "after it was held" not in qr2["summary"], qr2["summary"]


def test_a_held_refund_whose_reason_changed_during_its_hold_is_told_held() -> None:
    # Charged twice (50,000 for a 25,000 payment), held at the deadline; the payment settles
    # during the hold, which pays the 25,000 taken beyond it at its end as EXCESS_DEBIT.
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 1000)], EVERYTHING)
    unsettled(f)
    f.l(ledger("QR1-d2", "debited", "QR1", 1, 25_000))
    f.tick(500)
    f.p(payment("QR1-s", "settled", "QR1", 500))
    f.tick(1931)
    [requested] = [r for r in f.refunds() if r["type"] == "refund.requested"]
    assert requested["reason"] == "EXCESS_DEBIT" and requested["decided_at"] == format_ms(ms(1900))
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "refund_requested" and got["refunds"][0]["requested_at"] == requested["decided_at"]
    assert "(more was taken than the payment), at " in got["summary"] and "after it was held" in got["summary"]


def test_a_refund_cancelled_after_its_hold_is_told_as_its_late_settlement_alert_tells_it() -> None:
    # Requested at the hold's end (1900), the settlement 5 s later: the alert says "arrived 5 s
    # after the refund was requested at the end of its hold"; the lookup says the same, not
    # "requested, then cancelled" as if the refund had gone out at its deadline.
    f = _held_and_requested()
    f.p(payment("QR1-s", "settled", "QR1", 1905))
    f.tick(2000)
    [alert] = f.alerts()
    assert "arrived 5 s after the refund was requested at the end of its hold" in alert["summary"]
    got = payment_status(f.eng.refs["QR1"], 0, WorkerWatch(Settings()), f.eng)
    assert got["status"] == "refund_cancelled"
    assert got["summary"].startswith(
        f"a refund of Rp 25.000 was requested at {wib_and_utc(ms(1900))}, at the end of its hold (it was held for "
        f"26 min from its deadline ({wib_and_utc(ms(300))}) while incident in_a: switch RINTIS was open), then "
        f"cancelled: the payment settled late (the merchant was paid, {wib_and_utc(ms(1905))}; 5 s after the "
        "refund was requested)"
    ), got["summary"]
    [item] = got["refunds"]
    assert item["status"] == "cancelled" and item["requested_at"] == format_ms(ms(1900))
    # A refund requested at its deadline and cancelled says nothing of a hold.
    said = payment_status(_run(DAY)[1].refs["A4"], 0)["summary"]
    assert said.startswith("a refund of Rp 25.000 was requested, then cancelled: the payment settled late (")
    assert "after the refund was requested" not in said


@pytest.mark.parametrize("since", ["²", "١٢", "--5", "1" + "0" * 17, "9" * 5000])
def test_a_since_that_is_no_instant_is_a_bad_timestamp_not_a_bug(since: str) -> None:
    # The account lookup answers a BadTimestamp with a 400 naming it; a plain ValueError from
    # int() (a digit Python reads that is not ASCII, more digits than it converts) was a 500.
    from stream.core.eventtime import BadTimestamp, parse_instant

    with pytest.raises(BadTimestamp) as caught:
        parse_instant(since)
    assert len(str(caught.value)) < 200


def test_epoch_milliseconds_are_taken_in_the_years_rfc_3339_writes() -> None:
    from stream.core.eventtime import INSTANT_MAX_MS, INSTANT_MIN_MS, format_ms, parse_instant

    assert parse_instant(" 1743213600000 ") == 1743213600000 and parse_instant("-5") == -5
    assert format_ms(parse_instant(str(INSTANT_MAX_MS))) == "9999-12-31T23:59:59.999Z"
    assert format_ms(parse_instant(str(INSTANT_MIN_MS))) == "0000-01-01T00:00:00.000Z"


def _ask_pages(
    engine: PartitionEngine,
    watch: WorkerWatch,
    peers: dict[str, tuple[int, Any]],
    requests: list[tuple[str, dict[str, str]]],
    owned: set[int] | None = frozenset({0}),  # type: ignore[assignment]
) -> tuple[list[tuple[int, Any]], list[tuple[str, str]]]:
    """`requests` (path, headers) answered by the lookup pages of a worker holding `engine` (as
    partition 0) and assigned the input partitions `owned`, whose peers are real aiohttp servers
    answering every question with a fixed `(status, body)` (by name); what each answered, and
    which peer was asked what."""
    import asyncio
    from types import SimpleNamespace

    from aiohttp import web

    from stream.worker.pages import add_pages

    asked: list[tuple[str, str]] = []
    handlers: dict[str, Any] = {}

    class App:
        conf = SimpleNamespace(canonical_url="http://127.0.0.1:1")
        router = SimpleNamespace(tables_metadata=lambda: dict.fromkeys(urls))

        def page(self, path: str) -> Any:
            def attach(fun: Any) -> Any:
                handlers[path] = fun
                return fun

            return attach

    class Web:  # (the answer as (status, body) instead of a response)
        def json(self, body: Any, status: int = 200, headers: Any = None) -> tuple[int, Any]:
            return status, body

    def peer(name: str) -> Any:
        async def answer(request: web.Request) -> web.Response:
            asked.append((name, request.path))
            status, body = peers[name]
            return web.json_response(body, status=status)

        return answer

    urls: list[str] = []
    shell = SimpleNamespace(engines={0: engine})
    watch.owned = None if owned is None else set(owned)
    add_pages(App(), Settings(api_token=TOKEN), shell, watch, None)  # type: ignore[arg-type]

    async def main() -> list[tuple[int, Any]]:
        runners = []
        for name in peers:
            app = web.Application()
            app.router.add_get("/{tail:.*}", peer(name))
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        try:
            out = []
            for path, headers in requests:
                request = SimpleNamespace(headers=headers, query={})
                if path.startswith("/qris/payments/"):
                    reference = path.rsplit("/", 1)[1]
                    out.append(await handlers["/qris/payments/{reference}"](Web(), request, reference))
                else:
                    account_id = path.split("/")[3]
                    out.append(await handlers["/qris/accounts/{account_id}/payments"](Web(), request, account_id))
            return out
        finally:
            for runner in runners:
                await runner.cleanup()

    answers = asyncio.run(main())
    names = dict(zip(urls, peers, strict=True))
    return [(s, b) for s, b in answers], [(names.get(n, n), p) for n, p in asked]


TOKEN = "cs-test-token-1234"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_a_callers_own_forwarded_mark_does_not_stop_the_lookup_asking_the_other_workers() -> None:
    # A caller with a valid bearer token that adds any `X-QRIS-Forwarded` is no peer: its
    # question is still asked of every other worker (the payment is held by one of them), where
    # a mark read by its presence only answered "unknown reference" and an account with no
    # payments. A question signed by a peer is not asked again.
    import time as clock

    from stream.worker.lookup import forward_signature, question_of

    watch, eng = _run(DAY)
    held = {"reference": "QRX", "status": "settled", "summary": "the merchant was paid"}
    peers = {"owner": (200, held)}
    signed = forward_signature(TOKEN, question_of("payment", "QRX"), int(clock.time()))
    answers, asked = _ask_pages(
        eng,
        watch,
        peers,
        [
            ("/qris/payments/QRX", BEARER | {"X-QRIS-Forwarded": "1"}),
            ("/qris/accounts/7700009876/payments", BEARER | {"X-QRIS-Forwarded": "yes"}),
            ("/qris/payments/QRX", {"X-QRIS-Forwarded": signed}),
        ],
    )
    (status, body), (_s, accounts), (status_signed, _b) = answers
    assert status == 200 and body == held, body
    assert "unanswered_workers" not in accounts  # (the peer's 200 {...} was merged)
    assert status_signed == 404
    assert [name for name, _path in asked] == ["owner", "owner"], asked


def test_a_peer_with_the_lookup_api_off_did_not_look_and_is_named_as_not_answering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its 404 ("the lookup API is off") is no "I hold none of it": the payment may be on its
    # partitions. So the answer is a 503 naming it, not "unknown reference"; a peer that looked
    # and holds none is not named. An answer of only rejected records names it as well.
    from stream.worker.lookup import API_OFF, not_found

    watch, eng = _run(
        [
            (L, b"D2", ledger("D2-d", "debited", "D2", 2, currency="usd")),
            (P, b"D9", payment("D9-q", "requested", "D9", 100)),
            (L, b"D9", ledger("D9-d", "debited", "D9", 100)),
        ]
    )
    peers = {"off": (404, {"error": API_OFF}), "looked": (404, not_found("NOPE", 1000, [])[0])}
    answers, asked = _ask_pages(eng, watch, peers, [("/qris/payments/NOPE", BEARER), ("/qris/payments/D2", BEARER)])
    (status, body), (status_rejected, rejected) = answers
    assert len(asked) == 4
    assert status == 503 and len(body["unanswered_workers"]) == 1, body
    [off] = body["unanswered_workers"]
    assert body["error"].startswith(f"worker(s) {off} did not answer")
    assert status_rejected == 200 and rejected["status"] == "rejected", rejected
    assert rejected["unanswered_workers"] == [off]
    assert rejected["summary"].startswith(f"INCOMPLETE: worker(s) {off} did not answer: "), rejected["summary"]
    assert "NOTE: 1 record(s) of this payment were rejected" in rejected["summary"]
    assert f"peer {off} has the lookup API off" in caplog.text
    # Every peer looked: 404, and the rejected records alone, with nobody named.
    peers["off"] = peers["looked"]
    (status, body), (_s, rejected) = _ask_pages(
        eng, watch, peers, [("/qris/payments/NOPE", BEARER), ("/qris/payments/D2", BEARER)]
    )[0]
    assert status == 404 and body["error"].startswith("unknown reference"), body
    assert "unanswered_workers" not in rejected and rejected["summary"].startswith("NOTE:"), rejected


def test_a_worker_restoring_a_partition_or_not_yet_assigned_one_does_not_answer_unknown_reference() -> None:
    # Between an assignment and the end of its restore, a partition assigned here has no
    # engine: "no state of it here" is no answer then, for this worker's own question and for
    # a peer's, and an account answer says it is incomplete.
    import time as clock

    from stream.worker.lookup import forward_signature, not_found, question_of

    watch, eng = _run(DAY)
    peers = {"looked": (404, not_found("NOPE", 1000, [])[0])}
    signed = forward_signature(TOKEN, question_of("payment", "NOPE"), int(clock.time()))
    requests = [
        ("/qris/payments/NOPE", BEARER),
        ("/qris/payments/NOPE", {"X-QRIS-Forwarded": signed}),
        ("/qris/accounts/7700009876/payments", BEARER),
    ]
    for owned, why in [({0, 1}, "this worker (input partition(s) [1] being restored)"), (None, "no input partition")]:
        (status, body), (status_signed, body_signed), (_s, account) = _ask_pages(eng, watch, peers, requests, owned)[0]
        assert status == 503 and status_signed == 503, (body, body_signed)
        assert why in body["unanswered_workers"][0] and body["error"].startswith("worker(s) this worker (")
        assert body_signed["unanswered_workers"] == body["unanswered_workers"]
        assert account["warning"].startswith("INCOMPLETE: worker(s) this worker ("), account
        assert account["payments"]  # (what is here is answered)
    # Restored: the peer looked and holds none, so does this worker.
    (status, body), (status_signed, _b), (_s, account) = _ask_pages(eng, watch, peers, requests, {0})[0]
    # (The fixed peer's 404 to the account question is a peer that did not answer.)
    assert (status, status_signed) == (404, 404) and "this worker" not in account["warning"], body


def test_an_account_answer_names_the_workers_a_peer_could_not_answer_for() -> None:
    # A peer asked the account question while it restores a partition answers what it holds,
    # with itself named as not answering (`not_ready_here`): the caller's answer merges its
    # payments and says it is incomplete too, naming that peer; a 200 is not a whole answer.
    from stream.worker.lookup import account_answer

    watch, eng = _run(DAY)
    restoring = account_answer([], 0, 500, ["this worker (input partition(s) [1] being restored)"])
    peers = {"restoring": (200, restoring)}
    (_status, account), *_ = _ask_pages(eng, watch, peers, [("/qris/accounts/7700009876/payments", BEARER)])[0]
    assert account["payments"]
    [named] = account["unanswered_workers"]
    assert named.startswith("http://127.0.0.1:") and "being restored" in named, named
    assert account["warning"].startswith("INCOMPLETE: worker(s) http://127.0.0.1:"), account
