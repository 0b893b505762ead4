"""Alerts for payment operations (`qris.alerts`) that the reconciliation itself raises:
cancelled refunds, over-refunds, a second debited account or a reversal to an account never
debited, dead letters, clocks and silent feeds. Failure bursts live in `burst`.

Alerts never carry a plain account id (masked to the last four characters), also where an
event id quoted in a summary contains one. The key is the scope id. Imports nothing outside the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import ids
from .decisions import SCHEMA_VERSION, Decision, mask_account
from .eventtime import format_ms, wib_and_utc
from .records import LedgerEvent, PaymentEvent
from .text import ELLIPSIS, escape_text

if TYPE_CHECKING:
    from .reference import LedgerEntry, ReferenceState
    from .refunds import Refund


MAX_SUMMARY_CHARS = 1000


def rupiah(amount: int) -> str:
    """Rupiah as people write it.

    >>> rupiah(31200000)
    'Rp 31.200.000'
    """
    return "Rp " + f"{amount:,}".replace(",", ".")


def with_suffix(summary: str, suffix: str, cap: int = MAX_SUMMARY_CHARS) -> str:
    """`summary` + `suffix` within `cap` characters: the suffix gets at most half of it, and
    the summary's end gives way, so the line keeps its own start and what was added.

    >>> with_suffix("a" * 10, "; b", 8)
    'aaaa…; b'
    >>> len(with_suffix("x", "y" * 20, 10)), with_suffix("x", "y" * 20, 10)[-1]
    (6, '…')
    """
    if len(suffix) > cap // 2:
        suffix = suffix[: cap // 2 - 1] + ELLIPSIS
    room = cap - len(suffix)
    if len(summary) > room:
        summary = summary[: room - 1] + ELLIPSIS
    return summary + suffix


def duration_text(ms: int) -> str:
    """A span of time as a summary line gives it, to the minute (to the second below one).

    >>> duration_text(45_000), duration_text(41 * 60_000), duration_text(125 * 60_000)
    ('45 s', '41 min', '2 h 5 min')
    >>> duration_text(2 * 86_400_000 + 3_600_000), duration_text(7_200_000)
    ('2 d 1 h', '2 h')
    >>> duration_text(1), duration_text(0)
    ('under 1 s', '0 s')
    """
    if 0 < ms < 1000:  # (a settlement 1 ms past its deadline did not arrive "0 s after" it)
        return "under 1 s"
    if ms < 60_000:
        return f"{max(0, ms) // 1000} s"
    minutes = ms // 60_000
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _alert(
    alert_id: str,
    kind: str,
    severity: str,
    scope_type: str,
    scope_id: str,
    at_ms: int | None,
    partition: int | None,
    summary: str,
    observed: dict[str, Any],
    **extra: Any,
) -> Decision:
    value: dict[str, Any] = {
        "alert_id": alert_id,
        "kind": kind,
        "severity": severity,
        "scope": {"type": scope_type, "id": scope_id},
        "window": extra.pop("window", None),
        "observed": observed,
        "expected": extra.pop("expected", None),
        "score": extra.pop("score", None),
        "references": extra.pop("references", []),
        # Pieces quoting input are escaped where they are written; this is the net under them.
        "summary": escape_text(" ".join(summary.split()), MAX_SUMMARY_CHARS),
        "occurred_at": format_ms(at_ms if at_ms is not None else 0),
        "partition": partition,
        **extra,
        "schema_version": SCHEMA_VERSION,
    }
    return Decision("alerts", scope_id.encode("utf-8"), value, at_ms)


def _account_ids(st: ReferenceState | None, event: PaymentEvent | LedgerEvent | None) -> list[str]:
    ids_ = [st.account_id, st.request.account_id if st.request is not None else None] if st is not None else []
    ids_.append(event.account_id if event is not None else None)
    return [a for a in ids_ if a]


def quoted_id(event_id: str, account_ids: list[str]) -> str:
    """An event id for a summary, escaped, with the payment's account ids in it masked: a
    producer that builds its event ids from account numbers would put them in the alert. Only
    the accounts of the payment are masked, not every long number: event ids that carry a
    timestamp stay as operations search for them.

    >>> quoted_id("8598468444042-20250329-1", ["8598468444042"])
    '*********4042-20250329-1'
    >>> quoted_id("QR1:settled", ["8598468444042"]), quoted_id("x1234y", ["1234"])
    ('QR1:settled', 'x1234y')

    The longest first: an account that holds another of the payment's in its digits is masked
    whole, not left in plain past the shorter one's mask.

    >>> quoted_id("77000098761234-d2", ["7700009876", "77000098761234"])
    '**********1234-d2'
    """
    for account_id in sorted(account_ids, key=len, reverse=True):
        if len(account_id) > 4 and account_id in event_id:
            event_id = event_id.replace(account_id, mask_account(account_id) or "")
    return escape_text(event_id)


def _merchant_scope(st: ReferenceState) -> tuple[str, str]:
    merchant = st.request.merchant_id if st.request is not None else None
    return ("merchant", merchant) if merchant else ("all", "all")


def _payment_alert(
    st: ReferenceState,
    alert_id: str,
    kind: str,
    severity: str,
    eff_ms: int,
    partition: int,
    summary: str,
    observed: dict[str, Any],
    **extra: Any,
) -> Decision:
    # An alert about one payment: scoped to its merchant, naming the reference and its masked
    # account (the refunds' account).
    scope_type, scope_id = _merchant_scope(st)
    return _alert(
        alert_id,
        kind,
        severity,
        scope_type,
        scope_id,
        eff_ms,
        partition,
        summary,
        observed,
        references=[st.reference],
        reference=st.reference,
        **extra,
        account_id_masked=mask_account(st.account_id),
    )


def cancellation_alert(
    st: ReferenceState,
    refund: Refund,
    cancel_id: str,
    reason: str,
    trigger: PaymentEvent | LedgerEvent,
    eff_ms: int,
    partition: int,
) -> Decision:
    """A refund was cancelled: it may already have been paid out, so a person checks. The
    record's delay is told after the refund's deadline (`late_by_s`) and, for a refund held
    during an incident and requested at its hold's end, after that request (`after_request_s`):
    "26 min after the deadline" alone would hide that the refund went out seconds before. A
    refund without a request time (requested at its deadline, or restored from state saved
    without it) is told by its deadline only, which is true either way.

    >>> from .refunds import Refund
    >>> from .reference import ReferenceState
    >>> from .records import PaymentEvent
    >>> s = PaymentEvent("QR1-s", "settled", "QR1", "2025-03-29T00:31:45Z", 0, 25000)
    >>> held = Refund("rf_1", 25000, 300_000, "SETTLEMENT_TIMEOUT", False, requested_at_ms=1_900_000)
    >>> a = cancellation_alert(ReferenceState("QR1"), held, "cn_1", "LATE_SETTLEMENT", s, 1_905_000, 0).value
    >>> def arrived(alert): return alert["summary"].split(" arrived ")[1].split(";")[0]
    >>> arrived(a)
    '5 s after the refund was requested at the end of its hold (26 min after the refund deadline)'
    >>> a["observed"]["after_request_s"], a["observed"]["late_by_s"]
    (5.0, 1605.0)
    >>> plain = Refund("rf_2", 25000, 300_000, "SETTLEMENT_TIMEOUT", False)
    >>> a = cancellation_alert(ReferenceState("QR1"), plain, "cn_2", "LATE_SETTLEMENT", s, 1_905_000, 0).value
    >>> arrived(a)
    '26 min after the refund deadline'
    >>> "after_request_s" in a["observed"]
    False
    """
    what = "settlement" if reason == "LATE_SETTLEMENT" else "ledger reversal"
    trigger_id = quoted_id(trigger.event_id, _account_ids(st, trigger))
    late_ms = eff_ms - refund.deadline_ms
    requested_at_ms = refund.requested_at_ms
    if requested_at_ms is None:
        when = f"{duration_text(late_ms)} after the refund deadline"
    else:
        when = (
            f"{duration_text(eff_ms - requested_at_ms)} after the refund was requested at the end of its hold "
            f"({duration_text(late_ms)} after the refund deadline)"
        )
    summary = (
        f"Refund {refund.refund_id} of {rupiah(refund.amount)} for {escape_text(st.reference)} cancelled: "
        f"{what} {trigger_id} arrived {when}; check whether it was already paid out"
    )
    observed: dict[str, Any] = {"amount_idr": refund.amount, "late_by_s": late_ms / 1000}
    if requested_at_ms is not None:
        observed["after_request_s"] = (eff_ms - requested_at_ms) / 1000
    observed["net_debited_idr"] = st.net
    observed["settled_idr"] = st.settled
    return _payment_alert(
        st,
        ids.alert_id(reason, cancel_id),
        reason,
        "warning",
        eff_ms,
        partition,
        summary,
        observed,
        refund_id=refund.refund_id,
    )


def over_refund_alert(
    st: ReferenceState, excess: int, trigger: PaymentEvent | LedgerEvent, eff_ms: int, partition: int
) -> Decision:
    """Active refunds exceed what is owed and no whole refund can be cancelled: a person must look."""
    active = st.active
    trigger_id = quoted_id(trigger.event_id, _account_ids(st, trigger))
    summary = (
        f"Over-refund on {escape_text(st.reference)}: {rupiah(active)} of refunds active but only "
        f"{rupiah(max(0, st.net - st.settled))} owed after {trigger.type} {trigger_id}; "
        f"{rupiah(excess)} too much, needs a person"
    )
    return _payment_alert(
        st,
        ids.alert_id("OVER_REFUND", st.reference, trigger.event_id),
        "OVER_REFUND",
        "critical",
        eff_ms,
        partition,
        summary,
        {"active_refunds_idr": active, "net_debited_idr": st.net, "settled_idr": st.settled, "excess_idr": excess},
    )


def debit_account_mismatch_alert(st: ReferenceState, debit: LedgerEvent, eff_ms: int, partition: int) -> Decision:
    """A reference was debited from an account other than its first debit's: a refund goes to
    the first, and the other account's customer may be the one owed, so a person checks."""
    first = mask_account(st.account_id)
    debit_id = quoted_id(debit.event_id, _account_ids(st, debit))
    summary = (
        f"{escape_text(st.reference)} debited {rupiah(debit.amount)} from account {mask_account(debit.account_id)}"
        f" ({debit_id}) after its first debit from {first}: refunds go to {first}; check which customer is owed"
    )
    return _payment_alert(
        st,
        ids.alert_id("DEBIT_ACCOUNT_MISMATCH", st.reference, debit.event_id),
        "DEBIT_ACCOUNT_MISMATCH",
        "warning",
        eff_ms,
        partition,
        summary,
        {
            "amount_idr": debit.amount,
            "debited_idr": st.debited_total,
            "net_debited_idr": st.net,
            "settled_idr": st.settled,
        },
    )


def reversal_account_mismatch_alert(
    st: ReferenceState, reversal: LedgerEntry, account_id: str, eff_ms: int, partition: int
) -> Decision:
    """A reference was reversed to an account it was never debited from (as far as the kept
    debits show): the net debit counts the reversal as given back whatever its account, so the
    debited customer gets no refund of it while the money went to `account_id`; a person checks.
    Kind `DEBIT_ACCOUNT_MISMATCH`: the same question (which customer is owed) and the same
    routing as a debit from another account, and one dedup key per payment for both."""
    first = mask_account(st.account_id)
    reversal_id = quoted_id(reversal.event_id, [*_account_ids(st, None), account_id])
    summary = (
        f"{escape_text(st.reference)} reversed {rupiah(reversal.amount)} to account {mask_account(account_id)}"
        f" ({reversal_id}), an account it was never debited from (debited from {first}, where refunds go): the"
        f" net debit counts it as given back, so no refund is made for it; check that {first}'s customer got"
        " the money back"
    )
    return _payment_alert(
        st,
        ids.alert_id("DEBIT_ACCOUNT_MISMATCH", st.reference, "reversed", reversal.event_id),
        "DEBIT_ACCOUNT_MISMATCH",
        "warning",
        eff_ms,
        partition,
        summary,
        {
            "amount_idr": reversal.amount,
            "debited_idr": st.debited_total,
            "reversed_idr": st.reversed_total,
            "net_debited_idr": st.net,
            "settled_idr": st.settled,
        },
    )


def dead_letter_alert(topic: str, partition: int, count: int, error: str, reason: str, at_ms: int) -> Decision:
    """Rejected input is arriving on a topic partition: raised at the 1st, 10th, 100th, ...
    rejection of that partition, so a stream of bad records is one alert per order of magnitude."""
    summary = (
        f"{count} rejected record(s) on {topic} partition {partition}; "
        f"latest ({escape_text(error, 40)}): {escape_text(reason, 400)}"
    )
    return _alert(
        ids.alert_id("DEAD_LETTER", topic, partition, count),
        "DEAD_LETTER",
        "warning" if count < 100 else "critical",
        "all",
        "all",
        at_ms,
        partition,
        summary,
        {"rejected": count},
        topic=topic,
    )


def clock_skew_alert(
    topic: str,
    partition: int,
    count: int,
    event: PaymentEvent | LedgerEvent,
    timestamp_ms: int,
    allowed_ms: int,
) -> Decision:
    """Records dated ahead of their Kafka timestamp are arriving on a topic partition: raised at
    the 1st, 10th, 100th, ... such record. Each was counted at its Kafka timestamp (clock guard)."""
    ahead_s = (event.occurred_at_ms - timestamp_ms) / 1000
    summary = (
        f"{count} record(s) on {topic} partition {partition} dated more than {allowed_ms / 1000:g} s ahead of "
        f"their Kafka timestamp; latest: {event.type} {quoted_id(event.event_id, _account_ids(None, event))} of "
        f"{escape_text(event.reference)} dated {escape_text(event.occurred_at)}, {ahead_s:.0f} s ahead, "
        f"counted at its Kafka time {wib_and_utc(timestamp_ms)}; check the producer's clock"
    )
    return _alert(
        ids.alert_id("CLOCK_SKEW", topic, partition, count),
        "CLOCK_SKEW",
        "warning" if count < 100 else "critical",
        "all",
        "all",
        timestamp_ms,
        partition,
        summary,
        {
            "skewed_records": count,
            "ahead_s": ahead_s,
            "allowed_skew_s": allowed_ms / 1000,
            "kafka_timestamp_ms": timestamp_ms,
        },
        references=[event.reference],
        topic=topic,
    )


def clock_mismatch_alert(
    ledger_topic: str,
    payment_topic: str,
    partition: int,
    count: int,
    st: ReferenceState,
    debit_ms: int,
    request_ms: int,
    at_ms: int,
    allowed_ms: int,
) -> Decision:
    """Payments debited more than F before their own request are being decided on a partition:
    raised at the 1st, 10th, 100th, ... such payment. No bank debits a customer before the
    payment is requested, so the two feeds' clocks disagree. The deadline counts from the debit
    (CONTRACT.md rule 1), so it comes early by as much: settled payments among them are refunded
    before their settlement is processed, and the refunds cancelled when it is (a clawback each),
    which no other alert explains. `debit_ms`, `request_ms`: the dates compared (as the clock
    guard left them), in the summary in WIB with UTC beside."""
    apart_ms = request_ms - debit_ms
    payments = "1 payment" if count == 1 else f"{count:,} payments"
    summary = (
        f"{payments} on partition {partition} debited on {ledger_topic} more than "
        f"{allowed_ms / 1000:g} s before their request on {payment_topic}; latest: "
        f"{escape_text(st.reference)} debited {wib_and_utc(debit_ms)}, requested {wib_and_utc(request_ms)} "
        f"({apart_ms / 1000:.0f} s later). No debit precedes its request: "
        "the ledger's clock runs behind the payment feed's, or the payment feed's ahead. Their refund "
        "deadlines come that much early, so settled payments among them are refunded and then cancelled "
        "(LATE_SETTLEMENT); check both producers' clocks"
    )
    return _alert(
        ids.alert_id("CLOCK_MISMATCH", ledger_topic, partition, count),
        "CLOCK_MISMATCH",
        "warning" if count < 10 else "critical",
        "all",
        "all",
        at_ms,
        partition,
        summary,
        {
            "mismatched_payments": count,
            "debit_before_request_s": apart_ms / 1000,
            "allowed_skew_s": allowed_ms / 1000,
        },
        references=[st.reference],
        topic=ledger_topic,
    )


def input_repartitioned_alert(problem: str, topic: str, found: int, expected: int, at_ms: int) -> Decision:
    """Live only: the worker stopped, or refused to start, because `topic` has `found` partitions
    where its state was kept for `expected` (`topics.PartitionsRefused`). Nothing is decided,
    refunds included, until it runs again; the same alert id at every refusal of the same counts."""
    summary = (
        "qris-guard stopped: no payment is decided and no refund made until it runs again. "
        f"{problem[:1].upper()}{problem[1:]}"
    )
    return _alert(
        ids.alert_id("INPUT_REPARTITIONED", topic, found, expected),
        "INPUT_REPARTITIONED",
        "critical",
        "all",
        "all",
        at_ms,
        None,
        summary,
        {"partitions": found, "expected_partitions": expected},
        topic=topic,
    )


def _silence_observed(observed: dict[str, Any], silent_since_ms: int | None, flowing_ms: int | None) -> None:
    """How far the flowing stream's event time has gone past the silent stream's last event, and
    that last event: the watermark trails the flowing stream by the allowed lateness, so its
    distance to the last event reads negative when a silence is paged early in event time."""
    if silent_since_ms is None:
        return
    observed["last_event_ms"] = silent_since_ms
    if flowing_ms is not None:
        observed["silent_event_time_s"] = max(0, flowing_ms - silent_since_ms) / 1000


def feed_silent_alert(
    topic: str,
    partition: int,
    silent_since_ms: int | None,
    advanced_to_ms: int,
    other_topic: str,
    flowing_ms: int | None = None,
) -> Decision:
    """One input stream of a partition went quiet while the other flows (live mode only);
    `flowing_ms`: the other stream's newest event time."""
    since = wib_and_utc(silent_since_ms) if silent_since_ms is not None else "the start"
    summary = (
        f"{topic} partition {partition} is silent (last event {since}) while {other_topic} flows; "
        f"watermark advanced to {wib_and_utc(advanced_to_ms)} so refund timeouts still fire"
    )
    observed: dict[str, Any] = {"watermark_ms": advanced_to_ms}
    _silence_observed(observed, silent_since_ms, flowing_ms)
    return _alert(
        ids.alert_id("FEED_SILENT", topic, partition, silent_since_ms),
        "FEED_SILENT",
        "critical",
        "all",
        "all",
        advanced_to_ms,
        partition,
        summary,
        observed,
        topic=topic,
    )


def event_time_stalled_alert(
    topic: str,
    partitions: list[int],
    status: str,
    stood_at_ms: int | None,
    at_ms: int | None,
    wall_s: float,
    records: int,
    moved_away: list[int] | None = None,
) -> Decision:
    """Live only: one EVENT_TIME_STALLED per input topic and episode of a worker (`opened`): the
    partitions whose watermark has not moved for `wall_s` seconds of wall time although they took
    `records` valid records meanwhile, held back by this topic's stream (its newest event time
    `stood_at_ms`); and its end (`resolved`, listing the episode's partitions) once the watermark
    of each moves again or the partition moved to another worker (`moved_away`)."""
    where = f"{topic} partitions {', '.join(map(str, partitions))}"
    stood = wib_and_utc(stood_at_ms) if stood_at_ms is not None else "no record yet"
    if status == "opened":
        summary = (
            f"{where}: event time has stood still ({stood}) for {_duration(wall_s)} of wall time while "
            f"{records:,} valid records arrived; no refund of these partitions is decided until it moves "
            "(a producer's clock, occurred_at or Kafka timestamp, may be frozen)"
        )
        severity = "critical"
    else:
        summary = _ended(
            topic,
            partitions,
            moved_away,
            ": event time moves again; decisions resumed",
            "which raises this alert again if their event time still stands",
        )
        severity = "info"
    observed: dict[str, Any] = {"stalled_partitions": len(partitions), "wall_s": round(wall_s, 1), "records": records}
    if stood_at_ms is not None:
        observed["stood_at_ms"] = stood_at_ms
    return _topic_alert(
        "EVENT_TIME_STALLED", topic, partitions, status, stood_at_ms, at_ms, severity, summary, observed
    )


def input_lost_alert(
    topic: str, partition: int, first: int, last: int, count: int, begins_at: int, fresh: bool, at_ms: int | None
) -> Decision:
    """Live only: offsets `first`..`last` of an input topic partition (at most `count` records)
    were deleted by retention before this worker read them; the partition's log now begins at
    `begins_at`. `fresh`: the worker had taken nothing of the partition yet (a new deployment on
    a topic that already lost its oldest records: a warning); otherwise records it would have
    decided are gone (a worker down longer than the topic's retention: critical)."""
    where = f"{topic} partition {partition}"
    if fresh:
        summary = (
            f"{where} begins at offset {begins_at}: the records before it were deleted before qris-guard first read "
            "it; payments of references opened before then are unknown here, and a debit whose request or "
            "settlement was deleted is refunded as one without them"
        )
    else:
        summary = (
            f"{where}: offsets {first}..{last} (up to {count:,} records) were deleted by retention before this "
            "worker read them; their payments are not decided (a debit among them is not refunded, a debit "
            "whose settlement was among them is): reconcile those offsets from the bank's own copy"
        )
    return _alert(
        ids.alert_id("INPUT_LOST", topic, partition, first, last),
        "INPUT_LOST",
        "warning" if fresh else "critical",
        "all",
        "all",
        at_ms,
        partition,
        summary,
        {"lost_offsets": count, "first_offset": first, "last_offset": last, "log_start_offset": begins_at},
        topic=topic,
    )


def signals_lost_alert(
    topic: str, first: int, last: int, count: int, begins_at: int | None, at_ms: int | None
) -> Decision:
    """Live only: the burst detector's reports at offsets `first`..`last` of the signals topic
    (`count`) were gone (deleted, or the topic recreated) when a worker rebuilt the detector, and
    no snapshot covered them. The rebuilt detector knows nothing of them: not the normal it had
    learned, not the incidents it had open. `begins_at`: where the topic's log begins now, when
    reports before it were deleted (None: the topic ends before `first`, recreated or trimmed)."""
    summary = (
        f"{topic} partition 0: the burst detector's reports at offsets {first}..{last} (up to {count:,}) were gone "
        "when this worker rebuilt the detector, and no snapshot covers them. It learns the normal again from the "
        "reports left, cold for its first 10 minutes (an outage under way can be learned as normal); incidents "
        "it had open are unknown to it and will not resolve, so the refunds they hold are paid at their "
        "release_by. Restore the signals and snapshots topics, or warm the detector (qris-guard warmup) and "
        "restart the worker"
    )
    return _alert(
        ids.alert_id("INPUT_LOST", topic, 0, first, last),
        "INPUT_LOST",
        "critical",
        "all",
        "all",
        at_ms,
        0,
        summary,
        {"lost_offsets": count, "first_offset": first, "last_offset": last}
        | ({"log_start_offset": begins_at} if begins_at is not None else {}),
        topic=topic,
    )


def _ended(topic: str, partitions: list[int], moved_away: list[int] | None, recovered_text: str, gone_text: str) -> str:
    """The summary of a per-topic episode's end: the partitions that recovered here (followed by
    `recovered_text`), and those a rebalance moved to another worker (not recovered: their new
    owner judges them; `gone_text` follows when all moved)."""
    moved = set(moved_away or ())
    recovered = [p for p in partitions if p not in moved]
    gone = f"partitions {', '.join(map(str, sorted(moved)))} moved to another worker"
    if not recovered:
        return f"{topic} {gone}" + (f", {gone_text}" if gone_text else "")
    summary = f"{topic} partitions {', '.join(map(str, recovered))}{recovered_text}"
    return summary + (f" ({gone})" if moved else "")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def feed_silent_topic_alert(
    topic: str,
    partitions: list[int],
    status: str,
    silent_since_ms: int | None,
    at_ms: int,
    other_topic: str,
    flowing_ms: int | None = None,
) -> Decision:
    """Live only: one FEED_SILENT per input topic and silence episode of a worker (`opened`),
    listing the partitions found silent, and its end (`resolved`, listing the episode's
    partitions) once each delivers again. A partition moved to another worker meanwhile is
    still silent there: its new owner takes the page over and resolves it
    (`feeds.TopicSilence`). `flowing_ms`: the other topic's newest event time on those
    partitions."""
    where = f"{topic} partitions {', '.join(map(str, partitions))}"
    if status == "opened":
        since = wib_and_utc(silent_since_ms) if silent_since_ms is not None else "the start"
        summary = (
            f"{where} silent (last event {since}) while {other_topic} flows; the watermark follows "
            f"{other_topic} so refund timeouts still fire"
        )
        severity = "critical"
    else:
        summary = f"{where} deliver again: feed recovered"
        severity = "info"
    observed: dict[str, Any] = {"silent_partitions": len(partitions), "watermark_ms": at_ms}
    _silence_observed(observed, silent_since_ms, flowing_ms)
    return _topic_alert("FEED_SILENT", topic, partitions, status, silent_since_ms, at_ms, severity, summary, observed)


def _topic_alert(
    kind: str,
    topic: str,
    partitions: list[int],
    status: str,
    since_ms: int | None,
    at_ms: int | None,
    severity: str,
    summary: str,
    observed: dict[str, Any],
) -> Decision:
    """A worker's alert about partitions of one input topic (live only), scope `all`."""
    return _alert(
        ids.alert_id(kind, topic, status, since_ms, at_ms),
        kind,
        severity,
        "all",
        "all",
        at_ms,
        None,
        summary,
        observed,
        topic=topic,
        partitions=partitions,
        status=status,
    )
