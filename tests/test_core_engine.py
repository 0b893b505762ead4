"""Core unit tests: literal records, explicit event times, one partition engine."""

from __future__ import annotations

import base64
import dataclasses
import random
from dataclasses import replace
from typing import Any

import orjson
import pytest

from stream.core import ids
from stream.core.eventtime import format_ms
from stream.core.holds import IncidentEvent
from stream.core.partition import NEG_INF, OffsetOrderError, Params, PartitionEngine
from stream.core.records import Stream
from stream.core.reference import RecordKey, ReferenceState
from tests.conftest import not_compiled
from tests.records import T0, ledger, payment, saved_state_v2
from tests.test_schemas import beyond_schema_errors, validator_for

P, L = Stream.P, Stream.L
PARAMS = Params(timeout_ms=300_000, lateness_ms=30_000, retention_ms=3_600_000)
CLOSED_REFUNDS = validator_for("qris.refunds", closed_schema=True)
CLOSED_ALERTS = validator_for("qris.alerts", closed_schema=True)


class Feed:
    """Feeds one engine, numbering offsets per stream, collecting decisions."""

    def __init__(self, params: Params = PARAMS) -> None:
        self.eng = PartitionEngine(0, params)
        self.offsets = [0, 0]
        self.out: list = []

    def p(self, value: bytes, key: bytes | None = None) -> list:
        return self._feed(P, value, key)

    def l(self, value: bytes, key: bytes | None = None) -> list:  # noqa: E743
        return self._feed(L, value, key)

    def _feed(self, s: Stream, value: bytes, key: bytes | None) -> list:
        off = self.offsets[s]
        self.offsets[s] += 1
        got = self.eng.on_record(
            s, off, key if key is not None else orjson.loads(value)["reference"].encode(), value, None
        )
        self.out.extend(got)
        return got

    def tick(self, t: float) -> list:
        """Advance both streams to event time T0+t with records of an unrelated reference."""
        a = self.p(payment(f"tick-p-{t}", "requested", "TICK", t))
        b = self.l(ledger(f"tick-l-{t}", "reversed", "TICK", t, amount=1))
        return a + b

    def refunds(self) -> list[dict]:
        return [d.value for d in self.out if d.role == "refunds"]

    def alerts(self, kind: str | None = None) -> list[dict]:
        return [d.value for d in self.out if d.role == "alerts" and (kind is None or d.value["kind"] == kind)]


def test_unsettled_debit_is_refunded_at_its_deadline_once_the_watermark_passes() -> None:
    f = Feed()
    f.p(payment("e1", "requested", "R1", 0))
    f.l(ledger("e2", "debited", "R1", 1))
    f.tick(300)
    assert f.refunds() == []  # W = 300 - 30 = 270 < deadline 301
    f.tick(331)
    assert f.refunds() == []  # W = 301: not strictly past the deadline yet
    f.tick(331.001)
    [r] = f.refunds()
    assert r["type"] == "refund.requested"
    assert r["reason"] == "SETTLEMENT_TIMEOUT"
    assert r["amount"] == 25_000 and r["currency"] == "IDR" and r["account_id"] == "7700009876"
    assert r["deadline"] == format_ms(T0 + 301_000) == r["decided_at"]
    assert r["merchant_id"] == "ID1020012345678" and r["switch_id"] == "RINTIS"
    assert [d["event_id"] for d in r["evidence"]["debits"]] == ["e2"]
    assert r["evidence"]["request"]["event_id"] == "e1"
    assert "account_id" not in r["evidence"]["request"]
    f.tick(10_000)
    assert len(f.refunds()) == 1  # the cycle closed; nothing more


def test_settlement_before_the_deadline_means_no_refund() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "R1", 299))
    f.tick(2000)
    assert f.refunds() == []


def test_settlement_at_exactly_the_deadline_is_processed_before_the_timer() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "R1", 300))
    f.tick(2000)
    assert f.refunds() == []


def test_failed_payment_without_reversal_is_refunded_as_payment_failed() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("f1", "failed", "R1", 2, response_code="68"))
    f.tick(2000)
    [r] = f.refunds()
    assert r["reason"] == "PAYMENT_FAILED"
    assert r["evidence"]["failure"]["response_code"] == "68"


def test_failed_payment_reversed_by_the_ledger_needs_no_refund() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("f1", "failed", "R1", 2))
    f.l(ledger("v1", "reversed", "R1", 3))
    f.tick(2000)
    assert f.refunds() == []


def test_a_payment_that_failed_and_settled_is_refunded_its_excess_as_excess_debit() -> None:
    # Rule 2's reasons in order: EXCESS_DEBIT when settled > 0, whatever failed before.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0, amount=30_000))
    f.p(payment("f1", "failed", "R1", 1))
    f.p(payment("s1", "settled", "R1", 2))
    f.tick(400)
    [r] = f.refunds()
    assert (r["reason"], r["amount"]) == ("EXCESS_DEBIT", 5_000)


def test_only_the_first_settled_record_counts_as_settled() -> None:
    # `settled` is the amount of the first processed settled record: a second one (another
    # event id, another amount) changes nothing.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0, amount=30_000))
    f.p(payment("s1", "settled", "R1", 1))
    f.p(payment("s2", "settled", "R1", 2, amount=30_000))
    f.tick(400)
    [r] = f.refunds()
    assert (r["reason"], r["amount"]) == ("EXCESS_DEBIT", 5_000)


def test_double_debit_settled_once_refunds_the_excess() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.l(ledger("d2", "debited", "R1", 1))
    f.p(payment("s1", "settled", "R1", 5))
    f.tick(2000)
    [r] = f.refunds()
    assert (r["reason"], r["amount"]) == ("EXCESS_DEBIT", 25_000)
    assert [d["event_id"] for d in r["evidence"]["debits"]] == ["d1", "d2"]


OTHER_ACCOUNT = "7700001111"


def test_a_debit_from_a_second_account_names_that_account_in_the_refund_evidence() -> None:
    # The refund goes to the first debit's account; the evidence shows the refund service that
    # another account was debited (and reversed) too, so it can check whose money is owed.
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger("d2", "debited", "R1", 2, account_id=OTHER_ACCOUNT))
    f.l(ledger("r2", "reversed", "R1", 3, amount=5_000, account_id=OTHER_ACCOUNT))
    f.l(ledger("r1", "reversed", "R1", 4, amount=1_000))
    f.tick(400)
    [r] = f.refunds()
    assert (r["account_id"], r["amount"]) == ("7700009876", 44_000)
    assert r["refund_id"] == ids.refund_id("R1", T0 + 301_000)
    ev = r["evidence"]
    assert [(d["event_id"], d.get("account_id")) for d in ev["debits"]] == [("d1", None), ("d2", OTHER_ACCOUNT)]
    assert [(d["event_id"], d.get("account_id")) for d in ev["reversals"]] == [("r2", OTHER_ACCOUNT), ("r1", None)]
    assert CLOSED_REFUNDS.is_valid(r) and beyond_schema_errors("qris.refunds", r) == []


def test_a_second_account_debited_alerts_a_person_once_per_account_with_accounts_masked() -> None:
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger("d2", "debited", "R1", 2, account_id=OTHER_ACCOUNT))
    f.l(ledger("d2", "debited", "R1", 2, account_id=OTHER_ACCOUNT))  # redelivered: nothing
    f.l(ledger("d3", "debited", "R1", 3, account_id=OTHER_ACCOUNT))  # the same other account
    f.l(ledger("d4", "debited", "R1", 4))
    f.l(ledger("d5", "debited", "R1", 5, account_id="7700002222"))
    f.l(ledger("r5", "reversed", "R1", 6, account_id="7700002222"))  # back to a debited account: no alert
    f.tick(100)
    alerts = f.alerts("DEBIT_ACCOUNT_MISMATCH")
    assert [a["summary"].split(" (")[0] for a in alerts] == [
        "R1 debited Rp 25.000 from account ******1111",
        "R1 debited Rp 25.000 from account ******2222",
    ]
    a = alerts[0]
    assert (a["severity"], a["scope"], a["reference"], a["references"]) == (
        "warning",
        {"type": "merchant", "id": "ID1020012345678"},
        "R1",
        ["R1"],
    )
    assert a["account_id_masked"] == "******9876" and a["dedup_key"] == "DEBIT_ACCOUNT_MISMATCH:R1"
    assert a["observed"] == {"amount_idr": 25_000, "debited_idr": 50_000, "net_debited_idr": 50_000, "settled_idr": 0}
    assert "refunds go to ******9876" in a["summary"]
    for value in alerts:
        text = orjson.dumps(value).decode()
        assert "7700009876" not in text and "7700001111" not in text and "7700002222" not in text
        assert CLOSED_ALERTS.is_valid(value) and beyond_schema_errors("qris.alerts", value) == []
    f.tick(400)
    assert [r["account_id"] for r in f.refunds()] == ["7700009876"]


def test_a_reversal_to_an_account_never_debited_alerts_once_per_account_and_refunds_as_the_contract_says() -> None:
    # Debited from 7700009876, reversed to 7700003333: the net debit is 0 whatever the account
    # (CONTRACT.md), so no refund; the first customer's money went to another account, and only
    # the alert says so. Its event id is built from the account it names: masked there too.
    third = "7700003333"
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger(f"{third}-r1", "reversed", "R1", 2, account_id=third))
    f.l(ledger(f"{third}-r1", "reversed", "R1", 2, account_id=third))  # redelivered: nothing
    f.l(ledger("r2", "reversed", "R1", 3, amount=1_000, account_id=third))  # the same account again
    f.l(ledger("d2", "debited", "R1", 4, amount=1_000))
    f.l(ledger("r3", "reversed", "R1", 5, amount=1_000))  # to the debited account: no alert
    f.tick(400)
    assert f.refunds() == []
    [a] = f.alerts("DEBIT_ACCOUNT_MISMATCH")
    assert a["summary"] == (
        "R1 reversed Rp 25.000 to account ******3333 (******3333-r1), an account it was never debited from"
        " (debited from ******9876, where refunds go): the net debit counts it as given back, so no refund is"
        " made for it; check that ******9876's customer got the money back"
    )
    assert (a["severity"], a["reference"], a["account_id_masked"]) == ("warning", "R1", "******9876")
    assert a["dedup_key"] == "DEBIT_ACCOUNT_MISMATCH:R1" and a["occurred_at"] == format_ms(T0 + 2_000)
    assert a["observed"] == {
        "amount_idr": 25_000,
        "debited_idr": 25_000,
        "reversed_idr": 25_000,
        "net_debited_idr": 0,
        "settled_idr": 0,
    }
    assert a["alert_id"] == ids.alert_id("DEBIT_ACCOUNT_MISMATCH", "R1", "reversed", f"{third}-r1")
    text = orjson.dumps(a).decode()
    assert "7700009876" not in text and third not in text
    assert CLOSED_ALERTS.is_valid(a) and beyond_schema_errors("qris.alerts", a) == []


def test_a_debit_from_another_account_and_a_reversal_to_another_stay_two_alertmanager_alerts() -> None:
    # One payment, two questions for the refund desk: who is owed before the refund is paid (the
    # debit from 7700001111), and whether the first customer got the money back (the reversal to
    # 7700003333). One dedup_key groups them; their labels differ, or Alertmanager keeps one.
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger("d2", "debited", "R1", 2, account_id=OTHER_ACCOUNT))
    f.l(ledger("r1", "reversed", "R1", 3, amount=1_000, account_id="7700003333"))
    f.tick(100)
    debit, reversal = f.alerts("DEBIT_ACCOUNT_MISMATCH")
    assert debit["dedup_key"] == reversal["dedup_key"] == "DEBIT_ACCOUNT_MISMATCH:R1"
    assert debit["labels"] != reversal["labels"]
    assert (debit["labels"]["ledger_entry"], reversal["labels"]["ledger_entry"]) == ("debited", "reversed")
    assert all(CLOSED_ALERTS.is_valid(a) and beyond_schema_errors("qris.alerts", a) == [] for a in (debit, reversal))


def test_a_reversal_dated_before_every_debit_is_alerted_at_the_first_debit_when_its_account_is_another() -> None:
    # Processed ahead of the debits, a reversal has no debited account to be compared with: the
    # first debit judges it (once per account). One on the first debit's own account is not
    # alerted, nor is a reference that was never debited.
    f = Feed()
    f.l(ledger("r1", "reversed", "R1", 0, account_id=OTHER_ACCOUNT))
    f.l(ledger("r2", "reversed", "R1", 1, amount=1_000, account_id=OTHER_ACCOUNT))
    f.l(ledger("r3", "reversed", "R1", 2, amount=1_000))
    f.l(ledger("r9", "reversed", "R9", 2, account_id=OTHER_ACCOUNT))
    f.tick(100)
    assert f.alerts("DEBIT_ACCOUNT_MISMATCH") == []
    f.l(ledger("d1", "debited", "R1", 110))
    f.l(ledger("d2", "debited", "R1", 111))
    f.tick(200)
    [a] = f.alerts("DEBIT_ACCOUNT_MISMATCH")
    assert a["summary"].startswith("R1 reversed Rp 25.000 to account ******1111 (r1), an account it was never")
    assert a["occurred_at"] == format_ms(T0 + 110_000) and a["account_id_masked"] == "******9876"
    assert "7700001111" not in orjson.dumps(a).decode()


def test_a_reversal_booked_on_one_of_the_ledgers_own_accounts_raises_no_account_mismatch() -> None:
    # A ledger that books every reversal on a suspense account: with that account declared
    # (QRIS_LEDGER_OWN_ACCOUNTS), its reversals alert nothing, after the debit or ahead of it;
    # a reversal to any other account still alerts, and so does a debit from the suspense
    # account (the refund goes to the first debit's account: who is owed is still a question).
    # The refunds are the contract's either way.
    suspense, third = "GL-SUSPENSE-01", "7700003333"
    params = Params(
        timeout_ms=300_000, lateness_ms=30_000, retention_ms=3_600_000, ledger_own_accounts=frozenset({suspense})
    )

    def run(p: Params) -> Feed:
        f = Feed(p)
        f.p(payment("q1", "requested", "R1", 0))
        f.l(ledger("d1", "debited", "R1", 1))
        f.l(ledger("r1", "reversed", "R1", 2, amount=5_000, account_id=suspense))
        f.l(ledger("r0", "reversed", "R0", 2, amount=5_000, account_id=suspense))  # ahead of R0's debit
        f.l(ledger("d0", "debited", "R0", 3))
        f.l(ledger("r2", "reversed", "R1", 4, amount=1_000, account_id=third))
        f.l(ledger("d3", "debited", "R3", 5))
        f.l(ledger("d4", "debited", "R3", 6, amount=1_000, account_id=suspense))
        f.tick(400)
        return f

    declared, default = run(params), run(PARAMS)
    got = [(a["reference"], a["labels"]["ledger_entry"]) for a in declared.alerts("DEBIT_ACCOUNT_MISMATCH")]
    assert got == [("R1", "reversed"), ("R3", "debited")]
    assert "******3333" in declared.alerts("DEBIT_ACCOUNT_MISMATCH")[0]["summary"]
    # Undeclared, the suspense account's reversals are alerted as any other account's.
    got = [(a["reference"], a["labels"]["ledger_entry"]) for a in default.alerts("DEBIT_ACCOUNT_MISMATCH")]
    assert got == [("R1", "reversed"), ("R0", "reversed"), ("R1", "reversed"), ("R3", "debited")]
    assert declared.refunds() == default.refunds() != []


def test_a_single_account_reference_names_no_account_on_its_evidence_entries() -> None:
    # A reversal ahead of every debit is compared with no account yet; once the debit shows it
    # is the same one, the refund's evidence names no account on either entry.
    f = Feed()
    f.l(ledger("r1", "reversed", "R1", 0, amount=5_000))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger("d2", "debited", "R1", 2))
    f.tick(400)
    [r] = f.refunds()
    assert (r["account_id"], r["amount"]) == ("7700009876", 45_000)
    ev = r["evidence"]
    keys = {"event_id", "entry_id", "amount", "occurred_at", "effective_at"}
    assert [set(d) for d in ev["debits"] + ev["reversals"]] == [keys, keys, keys]
    assert f.alerts("DEBIT_ACCOUNT_MISMATCH") == []


def test_late_settlement_cancels_the_refund_and_alerts_operations() -> None:
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    [r] = f.refunds()
    f.p(payment("s1", "settled", "R1", 500))
    f.tick(600)
    req, cancel = f.refunds()
    assert cancel["type"] == "refund.cancel_requested"
    assert cancel["reason"] == "LATE_SETTLEMENT"
    assert cancel["refund_id"] == cancel["cancels_refund_id"] == r["refund_id"]
    assert cancel["amount"] == 25_000
    assert cancel["evidence"]["trigger"]["event_id"] == "s1"
    [alert] = f.alerts("LATE_SETTLEMENT")
    assert alert["refund_id"] == r["refund_id"]
    assert alert["scope"] == {"type": "merchant", "id": "ID1020012345678"}
    assert "7700009876" not in orjson.dumps(alert).decode()
    assert alert["account_id_masked"] == "******9876"


def test_event_ids_built_from_the_account_number_are_masked_in_alert_summaries() -> None:
    # OVER_REFUND quotes the settlement's event id, LATE_REVERSAL the reversal's; the producer
    # here builds its ids from the account number.
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    f.p(payment("7700009876-s1", "settled", "R1", 500, amount=10_000))
    f.l(ledger("7700009876-r1", "reversed", "R1", 501, amount=15_000))
    f.tick(600)
    alerts = f.alerts("OVER_REFUND") + f.alerts("LATE_REVERSAL")
    assert [a["kind"] for a in alerts] == ["OVER_REFUND", "LATE_REVERSAL"]
    for alert in alerts:
        assert "7700009876" not in orjson.dumps(alert).decode()
        assert "******9876-" in alert["summary"]


def test_late_reversal_cancels_with_late_reversal() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    f.l(ledger("v1", "reversed", "R1", 500))
    f.tick(600)
    assert [r["type"] for r in f.refunds()] == ["refund.requested", "refund.cancel_requested"]
    assert f.refunds()[1]["reason"] == "LATE_REVERSAL"
    assert len(f.alerts("LATE_REVERSAL")) == 1


def test_a_cancelled_refund_is_not_active_for_the_next_cycle() -> None:
    # `active` sums refunds requested and not cancelled: once a late reversal cancelled the
    # first refund, a new debit's cycle owes its whole amount.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    f.l(ledger("v1", "reversed", "R1", 500))
    f.l(ledger("d2", "debited", "R1", 600))
    f.tick(1000)
    assert [(r["type"], r["amount"]) for r in f.refunds()] == [
        ("refund.requested", 25_000),
        ("refund.cancel_requested", 25_000),
        ("refund.requested", 25_000),
    ]


def test_partial_reversal_smaller_than_the_refund_is_an_over_refund_not_a_cancel() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0, amount=50_000))
    f.tick(400)
    f.l(ledger("v1", "reversed", "R1", 500, amount=20_000))
    f.tick(600)
    assert [r["type"] for r in f.refunds()] == ["refund.requested"]
    [a] = f.alerts("OVER_REFUND")
    assert a["observed"]["excess_idr"] == 20_000
    assert a["severity"] == "critical"


def test_newest_refunds_are_cancelled_first_and_only_while_they_fit_the_excess() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0, amount=10_000))
    f.tick(400)  # refund A: 10_000
    f.l(ledger("d2", "debited", "R1", 500, amount=30_000))
    f.tick(900)  # refund B: 30_000
    f.p(payment("s1", "settled", "R1", 1000, amount=30_000))
    f.tick(1100)
    types = [(r["type"], r["amount"]) for r in f.refunds()]
    # excess = 40_000 - (40_000 - 30_000) = 30_000: B (newest, 30_000) is cancelled; A stays.
    assert types == [("refund.requested", 10_000), ("refund.requested", 30_000), ("refund.cancel_requested", 30_000)]
    assert f.alerts("OVER_REFUND") == []


def test_a_settlement_above_the_net_debit_cancels_the_refund_and_raises_no_over_refund() -> None:
    # Rule 3: excess = active - max(0, net - settled) = 25_000 - max(0, -5_000) = 25_000: the
    # refund is cancelled whole and nothing is left over for a person to look at.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    f.p(payment("s1", "settled", "R1", 500, amount=30_000))
    f.tick(600)
    assert [(r["type"], r["amount"]) for r in f.refunds()] == [
        ("refund.requested", 25_000),
        ("refund.cancel_requested", 25_000),
    ]
    assert f.alerts("OVER_REFUND") == []


def test_a_second_debit_after_the_cycle_closed_opens_a_new_cycle() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    f.l(ledger("d2", "debited", "R1", 500))
    f.tick(900)
    r1, r2 = f.refunds()
    assert r1["refund_id"] != r2["refund_id"]
    assert r2["deadline"] == format_ms(T0 + 800_000)


def test_redelivered_records_are_ignored() -> None:
    f = Feed()
    d = ledger("d1", "debited", "R1", 0)
    f.l(d)
    f.l(d)
    f.l(d)
    f.tick(400)
    [r] = f.refunds()
    assert r["amount"] == 25_000


def test_a_redelivered_debit_is_ignored_however_many_events_its_reference_has() -> None:
    # Duplicates by event_id on a stream are ignored entirely, the seventeenth event of a
    # reference and later ones too (kept as digests past the first few).
    f = Feed()
    for i in range(20):
        f.l(ledger(f"d{i}", "debited", "R1", i, amount=1_000))
    f.l(ledger("d3", "debited", "R1", 3, amount=1_000))
    f.l(ledger("d17", "debited", "R1", 17, amount=1_000))
    f.l(ledger("d19", "debited", "R1", 19, amount=1_000))
    f.tick(400)
    [r] = f.refunds()
    assert r["amount"] == 20_000


def test_the_same_event_id_on_the_other_stream_is_another_event() -> None:
    # Duplicates are by event_id on the same stream: a debit whose id a payment record of the
    # reference also has is processed.
    f = Feed()
    f.p(payment("x1", "requested", "R1", 0))
    f.l(ledger("x1", "debited", "R1", 0))
    f.tick(400)
    [r] = f.refunds()
    assert (r["reason"], r["amount"]) == ("SETTLEMENT_TIMEOUT", 25_000)


def test_a_record_later_than_the_allowed_lateness_takes_the_streams_watermark() -> None:
    f = Feed()
    f.p(payment("x", "requested", "OTHER", 100))
    f.l(ledger("y", "debited", "OTHER2", 100))
    # 100 s behind its stream: effective time = 100 - 30 = 70, deadline 370.
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "OTHER2", 365))
    f.tick(400.5)  # W = 370.5
    refs = {r["reference"]: r for r in f.refunds()}
    assert refs["R1"]["deadline"] == format_ms(T0 + 370_000)
    assert refs["R1"]["evidence"]["debits"][0]["effective_at"] == format_ms(T0 + 70_000)
    assert "OTHER2" not in refs


def test_nothing_is_decided_while_one_stream_has_no_records() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.l(ledger("d2", "debited", "R2", 10_000))
    assert f.refunds() == []
    assert f.eng.watermark_ms < -(10**15)


def test_drain_fires_every_pending_deadline() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.out.extend(f.eng.drain())
    [r] = f.refunds()
    assert r["reason"] == "SETTLEMENT_TIMEOUT"


@pytest.mark.parametrize(
    ("value", "key", "error"),
    [
        (b"{not json", b"R1", "invalid_json"),
        (b"\xff\xfe\x00", b"R1", "not_utf8"),
        (b"[1,2]", b"R1", "not_an_object"),
        (payment("e", "settled", "R1", 0, amount="25000"), b"R1", "wrong_type"),
        (payment("e", "settled", "R1", 0, amount=25000.0), b"R1", "wrong_type"),
        (payment("e", "settled", "R1", 0, amount=True), b"R1", "wrong_type"),
        (payment("e", "settled", "R1", 0, amount=0), b"R1", "bad_value"),
        (payment("e", "settled", "R1", 0, amount=10**12 + 1), b"R1", "bad_value"),
        (payment("e", "settled", "R1", 0, currency="USD"), b"R1", "bad_currency"),
        (payment("e", "settled", "R1", 0), b"R2", "key_mismatch"),
        (payment("e", "settled", "R1", 0, occurred_at="2025-03-29T07:00:00"), b"R1", "bad_timestamp"),
        (payment("e", "settled", "R1", 0, occurred_at="2025-02-30T07:00:00Z"), b"R1", "bad_timestamp"),
        (payment("e", "refunded", "R1", 0), b"R1", "bad_value"),
        (payment("e", "settled", "R" * 65, 0), None, "bad_value"),
        (payment("e", "requested", "R1", 0, account_id=None), b"R1", "missing_field"),
        (payment("e", "settled", "R1", 0, terminal_id=7), b"R1", "wrong_type"),
    ],
)
def test_bad_records_go_to_the_dead_letter_topic_with_their_original_bytes(
    value: bytes, key: bytes | None, error: str
) -> None:
    eng = PartitionEngine(3, PARAMS)
    out = eng.on_record(P, 17, key, value, 1234)
    dl = [d for d in out if d.role == "dead_letter"]
    assert len(dl) == 1
    v = dl[0].value
    assert v["error"] == error, v["reason"]
    assert base64.b64decode(v["value_b64"]) == value
    assert (v["source_topic"], v["source_partition"], v["source_offset"]) == ("qris.payment-requests", 3, 17)
    assert v["dead_letter_id"] == "qris.payment-requests:3:17"
    assert dl[0].key == key
    assert v["reason"] and "\n" not in v["reason"]
    # The first rejection of a partition also raises a DEAD_LETTER alert.
    assert [d.value["kind"] for d in out if d.role == "alerts"] == ["DEAD_LETTER"]


def test_dead_letter_alerts_are_one_per_order_of_magnitude() -> None:
    eng = PartitionEngine(0, PARAMS)
    alerts = []
    for i in range(120):
        alerts += [d for d in eng.on_record(L, i, b"k", b"nope", None) if d.role == "alerts"]
    assert [a.value["observed"]["rejected"] for a in alerts] == [1, 10, 100]


def test_null_optional_fields_are_read_as_absent() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "R1", 1, terminal_id=None, merchant_name=None))
    f.tick(2000)
    assert f.refunds() == [] and [d for d in f.out if d.role == "dead_letter"] == []


def test_state_of_a_quiet_reference_is_dropped_after_retention() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "R1", 1))
    f.tick(1000)
    assert "R1" in f.eng.refs
    f.tick(3700)
    assert "R1" not in f.eng.refs


def test_retention_drops_a_reference_only_once_the_watermark_passes_last_eff_plus_r() -> None:
    # Rule 4 at its edge (R = 3600 s, A = 30 s): the last record of R1 is at 1 s, so its state
    # stays while W = 3601 s and goes when W passes it by 1 ms. A debit with the same event id
    # then starts a new reference: the contract's consequence of a state dropped.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("s1", "settled", "R1", 1))
    f.tick(3631)
    assert f.eng.watermark_ms == T0 + 3_601_000 and "R1" in f.eng.refs
    f.tick(3631.001)
    assert "R1" not in f.eng.refs
    f.l(ledger("d1", "debited", "R1", 3632))
    f.tick(3632 + 300 + 31)
    assert [(r["type"], r["reason"], r["reference"]) for r in f.refunds()] == [
        ("refund.requested", "SETTLEMENT_TIMEOUT", "R1")
    ]


@pytest.mark.parametrize(("settled_at", "cancelled"), [(3600, True), (3600.001, False)])
def test_a_single_record_reference_is_dropped_once_the_watermark_passes_its_eff_plus_r(
    settled_at: float, cancelled: bool
) -> None:
    # Rule 4 for a reference whose only record is its debit at 0 s (R = 3600 s): a settlement at
    # exactly 3600 s is processed before the retention check of that instant (timers after
    # records) and cancels the refund; one 1 ms later comes after the state was dropped.
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(3600)
    f.p(payment("s1", "settled", "R1", settled_at))
    f.tick(3700)
    assert [r["type"] for r in f.refunds()] == ["refund.requested"] + ["refund.cancel_requested"] * cancelled
    assert len(f.alerts("LATE_SETTLEMENT")) == cancelled


def test_retention_never_drops_a_reference_with_an_open_cycle() -> None:
    # Rule 4 drops a state only without an open cycle: with R below T (the live worker refuses
    # such settings, a replay only warns) the debit's cycle outlives R and is still refunded.
    f = Feed(replace(PARAMS, retention_ms=100_000))
    f.l(ledger("d1", "debited", "R1", 0))
    f.tick(400)
    [r] = f.refunds()
    assert (r["type"], r["reason"], r["amount"]) == ("refund.requested", "SETTLEMENT_TIMEOUT", 25_000)


def _save(f: Feed, saved: dict[str, bytes]) -> None:
    """What the worker would write after a batch: the changed references and the metadata."""
    refs, meta = f.eng.take_dirty()
    for k, v in refs.items():
        if v is None:
            saved.pop(k, None)
        else:
            saved[k] = v
    if meta is not None:
        saved["~meta"] = meta


def _restore(f: Feed, saved: dict[str, bytes]) -> None:
    """The feed's engine replaced by one restored from `saved`."""
    m = saved.pop("~meta")
    f.eng = PartitionEngine.restore(0, PARAMS, m, saved.items())
    saved["~meta"] = m


def test_restore_from_saved_state_continues_with_the_same_decisions() -> None:
    def run(save_at: int | None) -> list:
        f = Feed()
        steps = [
            lambda: f.p(payment("q1", "requested", "R1", 0)),
            lambda: f.l(ledger("d1", "debited", "R1", 0)),
            lambda: f.l(ledger("d2", "debited", "R2", 5)),
            lambda: f.tick(200),
            lambda: f.l(ledger("d3", "debited", "R3", 250)),
            lambda: f.tick(400),
            lambda: f.p(payment("s1", "settled", "R1", 450)),
            lambda: f.tick(700),
        ]
        saved: dict[str, bytes] = {}
        for i, step in enumerate(steps):
            step()
            _save(f, saved)
            if i == save_at:
                _restore(f, saved)
        return [d.value for d in f.out]

    baseline = run(None)
    assert len([v for v in baseline if v.get("type") == "refund.requested"]) == 3
    for i in range(8):
        assert run(i) == baseline, i


@pytest.mark.parametrize("swapped", [False, True])
def test_a_replay_repeating_an_offset_with_events_that_differ_in_an_optional_field_decides(swapped: bool) -> None:
    # Two records of one reference at one stream offset and time, one without `account_id`: the
    # heap compared their events and raised (None against text), an internal error of replay (a
    # helper's review). Either order read decides the same.
    eng = PartitionEngine(0, PARAMS, persistent=False)
    a, b = payment("e1", "settled", "R", 0), payment("e1", "settled", "R", 0, account_id="A")
    for value in (b, a) if swapped else (a, b):
        eng.on_record(P, 5, b"R", value)
    eng.on_record(L, 1, b"R", ledger("d1", "debited", "R", 0))
    eng.on_record(P, 6, b"Z", payment("z", "requested", "Z", 200))
    eng.on_record(L, 2, b"Z", ledger("dz", "debited", "Z", 200))
    st = eng.refs["R"]
    assert st.settlement is not None and st.settlement.amount == 25_000
    assert eng.stats["out_of_order"] == 1


def test_records_leaving_out_of_the_order_taken_save_and_restore_as_taken() -> None:
    # One reference's ledger records taken before its payments: they leave the waiting list out
    # of the order taken (the list becomes a dict by identity, O(1) a record), and the state
    # saved at any step still lists what waits in the order taken and restores to the same
    # decisions.
    def run(save_at: int | None) -> tuple[list, list[list[tuple[int, int]]], set[str]]:
        f = Feed()
        steps = [lambda k=k: f.l(ledger(f"d{k}", "debited", "R1", 10 * k)) for k in range(10)]
        steps.append(lambda: f.p(payment("q", "requested", "R1", 0)))
        steps += [lambda k=k: f.p(payment(f"s{k}", "settled", "R1", 10 * k + 5, amount=1)) for k in range(10)]
        steps += [lambda t=t: f.tick(t) for t in (50, 90, 130, 700)]
        saved: dict[str, bytes] = {}
        waiting: list[list[tuple[int, int]]] = []
        shapes: set[str] = set()
        for i, step in enumerate(steps):
            step()
            shapes.add(type(f.eng.pending.get("R1")).__name__)
            _save(f, saved)
            raw = saved.get("R1")
            waiting.append([(s, o) for _e, s, o, _ev in orjson.loads(raw).get("pending", ())] if raw else [])
            if i == save_at:
                _restore(f, saved)
        return [d.value for d in f.out], waiting, shapes

    baseline, waiting, shapes = run(None)
    assert shapes == {"list", "dict", "NoneType"}  # the out-of-order path was taken, and it emptied
    taken = [(1, k) for k in range(10)] + [(0, k) for k in range(11)]
    for w in waiting:
        assert [taken.index(x) for x in w] == sorted(taken.index(x) for x in w), w
    assert [len(w) for w in waiting][19:] == [20 - 12, 21 - 13, 8, 8, 0, 0]  # (W = 55 s, 60 s, then 100 s)
    for i in range(25):
        assert run(i)[0] == baseline, i


def test_state_saved_by_version_2_restores_to_the_same_decisions_and_is_saved_named() -> None:
    # Versions 3 and 4 name every saved field (issue 9: no tuple positions); what an older
    # worker saved (version 2, two-letter keys) must still restore, to the very same state.
    def run(convert: bool) -> tuple[list, list[dict]]:
        f = Feed()
        f.p(payment("q1", "requested", "R1", 0))
        f.l(ledger("d1", "debited", "R1", 0))
        f.l(ledger("d2", "debited", "R1", 1))
        f.l(ledger("r2", "reversed", "R1", 2))
        f.p(payment("f1", "failed", "R1", 3, response_code="05"))
        f.l(ledger("d9", "debited", "R9", 5))
        f.tick(400)  # both deadlines have passed: R1 and R9 have refunds
        refs, meta = f.eng.take_dirty()
        saved = []
        for k, v in refs.items():
            assert v is not None
            d = orjson.loads(v)
            if convert and d["state"] is not None:
                d["state"] = saved_state_v2(d["state"])
            saved.append((k, orjson.dumps(d)))
        states = [s for _k, v in saved if (s := orjson.loads(v)["state"]) is not None]
        f.eng = PartitionEngine.restore(0, PARAMS, meta, saved)
        f.p(payment("s1", "settled", "R1", 450))  # a late settlement cancels R1's refund
        f.tick(800)
        resaved = [orjson.loads(f.eng.save_reference(ref) or b"null") for ref in ("R1", "R9")]
        return [d.value for d in f.out], [states, resaved]

    named, (states, resaved_named) = run(False)
    older, (old_states, resaved_old) = run(True)
    assert older == named
    assert resaved_old == resaved_named  # a restored old entry is saved as version 4
    assert {s["v"] for s in states} == {4} and {s["v"] for s in old_states} == {2}
    r1 = next(s for s in states if s["reference"] == "R1")
    assert r1["failure"][0] == "f1" and r1["refunds"] and "cycle_deadline_ms" not in r1
    assert all(s["state"]["v"] == 4 for s in resaved_named if s is not None)
    types = [v.get("type") for v in named]
    assert types.count("refund.requested") == 2 and types.count("refund.cancel_requested") == 1


def test_a_restored_engine_refuses_offsets_its_state_already_covers() -> None:
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("q1", "requested", "R1", 0))
    f.p(b"{broken", key=b"X")  # P offset 1: dead-lettered; the saved state covers it too
    refs, meta = f.eng.take_dirty()
    eng = PartitionEngine.restore(0, PARAMS, meta, [(k, v) for k, v in refs.items() if v])
    assert eng.last_offset == [1, 0] and eng.rejected == [1, 0]
    # A redelivery reaching the core is a bug of the input boundary: refused loudly, by name.
    with pytest.raises(OffsetOrderError, match=r"qris\.payment-requests\[0\]@1: .*offset 1 was already taken"):
        eng.on_record(P, 1, b"X", b"{broken")
    with pytest.raises(OffsetOrderError, match=r"qris\.ledger-debits\[0\]@0"):
        eng.on_record(L, 0, None, ledger("d1", "debited", "R1", 0))
    assert eng.rejected == [1, 0] and eng.stats["records"] == 0
    out = eng.on_record(P, 2, None, payment("q2", "requested", "R2", 5))  # the next offset is taken
    assert out == [] and eng.last_offset == [2, 0]


def test_restore_drops_waiting_records_saved_ahead_of_the_metadata_that_stamps_the_state() -> None:
    """A crash between a batch's reference entries and its metadata: the references are saved,
    the metadata (which says which offsets the state covers) is the previous batch's. The
    records above its offsets come again from Kafka and must be held once, not twice."""
    f = Feed()
    f.l(ledger("d1", "debited", "R1", 0))
    f.p(payment("q1", "requested", "R1", 0))
    f.tick(50)  # W = 20: R1's records processed
    refs1, meta1 = f.eng.take_dirty()
    f.l(ledger("d2", "debited", "R2", 20))  # L offset 2: waits for the watermark
    refs2, meta2 = f.eng.take_dirty()
    assert meta2 is not None
    saved = {**{k: v for k, v in refs1.items() if v}, **{k: v for k, v in refs2.items() if v}}
    eng = PartitionEngine.restore(0, PARAMS, meta1, saved.items())
    assert eng.last_offset == [1, 1]
    assert not any(it[4] == "R2" for it in eng.heap)
    out = eng.on_record(L, 2, None, ledger("d2", "debited", "R2", 20))  # taken again
    out += eng.drain()
    assert sorted(d.value["reference"] for d in out if d.role == "refunds") == ["R1", "R2"]


def test_an_offset_below_one_already_taken_is_refused_live_and_processed_in_replay() -> None:
    """Offsets 5, 7, 6. Live, the input boundary hands the core each stream in offset order, so
    6 after 7 is a bug and is refused by name. A replay file is taken in the order read (the
    contract's replay format): 6 is processed after 7, counted, never skipped (replay used to
    drop it silently)."""
    live = PartitionEngine(0, PARAMS)
    live.on_record(L, 5, None, ledger("d5", "debited", "R5", 0))
    live.on_record(L, 7, None, ledger("d7", "debited", "R7", 1))
    with pytest.raises(OffsetOrderError, match=r"qris\.ledger-debits\[0\]@6: .*offset 7 was already taken"):
        live.on_record(L, 6, None, ledger("d6", "debited", "R6", 0.5))
    eng = PartitionEngine(0, PARAMS, persistent=False)
    eng.on_record(L, 5, None, ledger("d5", "debited", "R5", 0))
    eng.on_record(L, 7, None, ledger("d7", "debited", "R7", 1))
    eng.on_record(L, 6, None, ledger("d6", "debited", "R6", 0.5))
    assert eng.stats["out_of_order"] == 1 and eng.last_offset[1] == 7
    eng.on_record(L, 9, None, ledger("d9", "debited", "R9", 2))  # a gap is fine (markers, compaction)
    out = eng.drain()
    assert sorted(d.value["reference"] for d in out if d.role == "refunds") == ["R5", "R6", "R7", "R9"]


def test_a_dead_letter_alert_without_a_kafka_timestamp_is_dated_by_its_own_stream() -> None:
    """A rejected record with no Kafka timestamp: its DEAD_LETTER alert's time must not depend
    on how far the other topic had been read when it arrived (replay equals live), so it is
    the newest event time of the record's own stream."""
    alerts = []
    for ledger_first in (False, True):
        eng = PartitionEngine(0, PARAMS)
        if ledger_first:
            eng.on_record(L, 0, None, ledger("d1", "debited", "R1", 500))
        eng.on_record(P, 0, None, payment("q1", "requested", "R2", 0))
        out = eng.on_record(P, 1, b"X", b"{broken", None)
        if not ledger_first:
            eng.on_record(L, 0, None, ledger("d1", "debited", "R1", 500))
        alerts += [d.value for d in out if d.role == "alerts"]
    assert [a["occurred_at"] for a in alerts] == [format_ms(T0)] * 2


def test_a_kept_request_shares_its_merchant_and_routing_strings_and_equals_the_parsed_one() -> None:
    # `_interned` answers from a cache of the shared fields seen; a full cache is emptied, and
    # a request is the same value whichever way it went.
    from stream.core import reference, validation
    from stream.core.reference import ReferenceState
    from stream.core.validation import parse_payment

    kept = []
    for n, name in enumerate(["Toko A", "Toko A", "Toko B", "Toko A"]):
        if n == 3:
            reference._SHARED.clear()  # as when full
        event = parse_payment(None, payment(f"e{n}", "requested", f"R{n}", 0, merchant_name=name, terminal_id=None))
        assert not isinstance(event, validation.Rejection)
        st = ReferenceState(f"R{n}")
        st.apply_facts(Stream.P, 0, event)
        assert st.request == event and type(st.request) is type(event)
        kept.append(st.request)
    assert kept[0].merchant_name is kept[1].merchant_name is kept[3].merchant_name
    assert kept[0].switch_id is kept[2].switch_id and kept[2].merchant_name == "Toko B"
    assert kept[0].terminal_id is None


def _backlog(f: Feed) -> None:
    f.p(payment("junk", "requested", "QR0", 0, currency="USD"))  # dead-lettered: no event time
    f.p(payment("q1", "requested", "QR1", 0))
    f.l(ledger("d1", "debited", "QR1", 1))  # never settled: refunded at 301
    f.p(payment("q2", "requested", "QR2", 5))
    f.l(ledger("d2", "debited", "QR2", 6))
    f.p(payment("s2", "settled", "QR2", 200))
    f.tick(400)


@pytest.mark.parametrize("restored", [False, True], ids=["same engine", "restored"])
def test_a_floor_set_before_the_partition_had_any_record_is_dropped_at_its_first_record(restored: bool) -> None:
    # Live, the idle rule moves a partition without records to another's watermark or the wall
    # clock. Nothing is decided under that floor: a backlog of older records produced after it is
    # taken at its own times, refunded with the deadlines and refund ids a replay gives it.
    replay = Feed()
    _backlog(replay)
    live = Feed()
    floor_ms = T0 + 86_400_000
    live.eng.advance_to(floor_ms)
    if restored:
        saved = live.eng.save_meta()
        live.eng = PartitionEngine.restore(0, PARAMS, saved, [])
        assert live.eng.forced_ms == floor_ms
    _backlog(live)
    decided = [[(d.role, d.value) for d in f.out if d.role != "signals"] for f in (live, replay)]
    assert decided[0] == decided[1] and [r["reference"] for r in live.refunds()] == ["QR1"]
    assert live.eng.watermark_ms == replay.eng.watermark_ms == T0 + 370_000
    assert live.eng.forced_ms < T0 and "forced_ms" in orjson.loads(live.eng.save_meta())


def test_a_floor_set_after_a_record_of_the_partition_stays() -> None:
    # One stream had a record: the idle rule's floor is where its records were decided, so the
    # records behind it that come next are taken at it (CONTRACT.md "Time": live only).
    f = Feed()
    f.p(payment("q1", "requested", "QR1", 0))
    f.eng.advance_to(T0 + 100_000)
    f.l(ledger("d1", "debited", "QR1", 1))
    assert f.eng.forced_ms == T0 + 100_000 and f.eng.watermark_ms == T0 + 100_000


def test_an_account_id_holding_another_of_the_payments_accounts_is_masked_whole_in_a_quoted_id() -> None:
    # The second account debited starts with the first's digits, and the event id is built from
    # it: masked from the shorter id first, the rest of the longer one showed in plain.
    longer = "77000098761234"
    f = Feed()
    f.p(payment("q1", "requested", "R1", 0))
    f.l(ledger("d1", "debited", "R1", 1))
    f.l(ledger(f"{longer}-d2", "debited", "R1", 2, account_id=longer))
    f.tick(100)
    [a] = f.alerts("DEBIT_ACCOUNT_MISMATCH")
    assert f"({'*' * 10}1234-d2)" in a["summary"], a["summary"]
    assert "98761234" not in orjson.dumps(a).decode()


def _decided(ds: list[Any]) -> list[tuple[Any, ...]]:
    return [(d.role, d.key, orjson.dumps(d.value, option=orjson.OPT_SORT_KEYS), d.at_ms) for d in ds]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("holds", "signals"), [(True, True), (True, False), (False, True), (False, False)])
def test_a_record_that_leaves_the_cap_where_it_was_decides_what_a_release_at_every_record_decides(
    seed: int, holds: bool, signals: bool
) -> None:
    # `on_record` skips `_release` when the cap has not moved since the last record's: the same
    # decisions at the same calls as an engine that releases at every record, through incidents
    # (holds moved, their watermark), idle floors, silences, skewed clocks and restores.
    rnd = random.Random(seed)
    params = Params(
        timeout_ms=60_000,
        lateness_ms=5_000,
        retention_ms=600_000,
        probe_age_ms=10_000,
        burst_signals=signals,
        hold_grace_ms=30_000,
        max_hold_ms=300_000 if holds else 0,
    )
    skip, every = PartitionEngine(0, params), PartitionEngine(0, params)
    offsets, t_s, known_ms = [0, 0], [0.0, 0.0], NEG_INF
    opened: list[IncidentEvent] = []
    incidents: list[IncidentEvent] = []
    stores: list[dict[str, bytes]] = [{}, {}]
    metas: list[bytes | None] = [None, None]

    def restored(i: int, eng: PartitionEngine) -> tuple[PartitionEngine, list[Any]]:
        dirty, meta = eng.take_dirty()
        for ref, raw in dirty.items():
            if raw is None:
                stores[i].pop(ref, None)
            else:
                stores[i][ref] = raw
        metas[i] = meta if meta is not None else metas[i]
        back = PartitionEngine.restore(0, params, metas[i], list(stores[i].items()))
        return back, back.on_incidents(list(incidents), known_ms) if holds else []

    for step in range(300):
        r = rnd.random()
        if r < 0.75:
            s = rnd.randrange(2)
            t_s[s] += rnd.choice([0, 0.5, 1, 3, 10, 40]) - 20 * (rnd.random() < 0.1)
            ref = f"R{rnd.randrange(12)}"
            skewed_ms = T0 + round((t_s[s] - 200) * 1000) if rnd.random() < 0.05 else None
            kinds = ["requested", "requested", "settled", "failed"] if s == 0 else ["debited", "debited", "reversed"]
            typ = rnd.choice(kinds)
            value = (payment if s == 0 else ledger)(f"e{step}", typ, ref, t_s[s])
            got = skip.on_record(Stream(s), offsets[s], ref.encode(), value, skewed_ms)
            every._released_cap = None
            want = every.on_record(Stream(s), offsets[s], ref.encode(), value, skewed_ms)
            offsets[s] += 1
        elif r < 0.85:
            if not holds:
                continue
            w = skip.watermark_ms
            base = max(known_ms, w - 30_000 if w > NEG_INF else T0 + round(min(t_s) * 1000) - 60_000)
            events = []
            if rnd.random() < 0.5:
                scope = rnd.choice([("all", "all"), ("switch", "RINTIS"), ("merchant", "ID1020012345678")])
                opened.append(IncidentEvent(base + rnd.randrange(20_000), "opened", f"I{step}", *scope))
                events.append(opened[-1])
            elif opened:
                o = opened.pop(0)
                at_ms = base + rnd.randrange(20_000)
                events.append(IncidentEvent(at_ms, "resolved", o.incident_id, o.scope_type, o.scope_id))
            known_ms = max(known_ms, base + rnd.choice([0, 5_000, 20_000, 60_000]))
            incidents.extend(events)
            got, want = skip.on_incidents(list(events), known_ms), every.on_incidents(list(events), known_ms)
        elif r < 0.9:
            w = skip.watermark_ms
            floor_ms = (w if w > NEG_INF else T0 + round(min(t_s) * 1000)) + rnd.randrange(4_000)
            got, want = skip.advance_to(floor_ms), every.advance_to(floor_ms)
        elif r < 0.95:
            s = rnd.randrange(2)
            got, want = skip.declare_silent(Stream(s)), every.declare_silent(Stream(s))
        else:
            (skip, got), (every, want) = restored(0, skip), restored(1, every)
        assert _decided(got) == _decided(want), step
    assert _decided(skip.drain()) == _decided(every.drain())


@not_compiled
def test_with_burst_signals_off_a_record_that_leaves_the_cap_where_it_was_releases_nothing() -> None:
    # Replay's second pass runs without burst signals (no minute to close): a record that moves
    # neither W nor the incidents' watermark does not look for anything to release there either.
    class Counting(PartitionEngine):
        releases = 0

        def _release(self, watermark_ms: int) -> list[Any]:
            Counting.releases += 1
            return super()._release(watermark_ms)

    for signals in (True, False):
        Counting.releases = 0
        eng = Counting(0, replace(PARAMS, burst_signals=signals), persistent=False)
        for i in range(200):
            eng.on_record(Stream.P, i, b"R1", payment(f"q{i}", "settled", "R1", i // 10))
            eng.on_record(Stream.L, i, b"R1", ledger(f"d{i}", "reversed", "R1", i // 10))
        assert Counting.releases <= 40, (signals, Counting.releases)


def test_the_reference_states_constructor_takes_every_field_in_order_and_fills_the_rest() -> None:
    # `ReferenceState.__init__` is written out (compiled, a generated one stays interpreted): a
    # field added to the class and not to it would be left unset (slots), an error only where
    # it is first read. (Checked by constructing: a compiled constructor has no signature.)
    names = [f.name for f in dataclasses.fields(ReferenceState)]
    st = ReferenceState("R")
    assert all(hasattr(st, name) for name in names)
    lists = [name for name in names if type(getattr(st, name)) is list]
    assert lists == ["seen_p", "seen_l", "debits", "reversals", "refunds", "holds"]
    other = ReferenceState("R")
    assert all(getattr(st, name) is not getattr(other, name) for name in lists)  # (new lists each)
    assert st == other
    # A distinct value of each field's type, given by position and by name, is where it was put.
    values: dict[str, Any] = {"reference": "R1", "account_id": "A1", "last_key": RecordKey(3, 4)}
    for k, name in enumerate(names):
        now = getattr(st, name)
        if name in values:
            continue
        if type(now) is int or name.endswith("_ms"):
            values[name] = 100 + k
        elif type(now) is list:
            values[name] = []
        elif name.startswith("seen_more"):
            values[name] = {f"d{k}"}
        else:
            values[name] = None  # (a record or timer, None when absent)
    for made in (ReferenceState(*[values[n] for n in names]), ReferenceState(**values)):
        for name in names:
            assert getattr(made, name) is values[name] or getattr(made, name) == values[name], name
