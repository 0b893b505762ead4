"""The customer-service lookup: a payment's status from the live state of the partition that
owns it, by reference or by account (`/qris/payments/{reference}`,
`/qris/accounts/{account_id}/payments?since=...`).

Pure answers from a `ReferenceState` and the worker's watch (holds and open incidents); the
web pages, the bearer token and the fan-out to other workers live in `pages`. Account ids are
answered masked: customer service already knows the account it asked about.
"""

from __future__ import annotations

import hmac
import shlex
from collections.abc import Collection
from typing import Any
from urllib.parse import quote, urlencode

from ..core.alerts import duration_text, rupiah
from ..core.decisions import mask_account
from ..core.eventtime import format_ms, parse_ms, wib_and_utc
from ..core.holds import Incident
from ..core.partition import Item, PartitionEngine, waiting_list
from ..core.records import LedgerEvent, PaymentEvent
from ..core.reference import LedgerEntry, ReferenceState, Settlement
from ..core.refunds import Refund
from ..core.text import escape_ascii, escape_text
from .watch import WorkerWatch, accounts_of


def trace_command(reference: str) -> str:
    r"""The command that explains `reference` (`trace --from-kafka`), to be copied from a hint into
    a shell: the reference quoted for the shell, after `--` when it starts with `-` (else it is
    read as an option). One that text for people escapes (right-to-left letters, characters
    not printable) is written in ASCII with `--escaped`, which `trace` reads back exactly: raw,
    the letters would reorder the command around them on the screen.

    >>> print(trace_command("QR1")); print(trace_command("QR 1's")); print(trace_command("-QR1"))
    qris-guard trace QR1 --from-kafka
    qris-guard trace 'QR 1'"'"'s' --from-kafka
    qris-guard trace --from-kafka -- -QR1
    >>> print(trace_command("M\u05d0-7")); print(trace_command("-\u05d0")); print(trace_command("QR\\u05d0"))
    qris-guard trace --escaped 'M\u05d0-7' --from-kafka
    qris-guard trace --from-kafka --escaped -- '-\u05d0'
    qris-guard trace 'QR\u05d0' --from-kafka
    """
    # (Escapes are at most 10 characters each: nothing is cut.)
    escaped = escape_text(reference, 10 * len(reference)) != reference
    arg = shlex.quote(escape_ascii(reference) if escaped else reference)
    flag = "--escaped " if escaped else ""
    if reference.startswith("-"):
        return f"qris-guard trace --from-kafka {flag}-- {arg}"
    return f"qris-guard trace {flag}{arg} --from-kafka"


def payment_path(reference: str) -> str:
    """The lookup's path for a reference, as a worker forwards it to its peers: quoted, since a
    reference may hold `?`, `#`, `/`, `%` or `+` (unquoted, `QR2025?x` would be asked as
    `QR2025`, another payment)."""
    return "/qris/payments/" + quote(reference, safe="")


# Payments an account query answers at most (`limit`), newest first: an account that pays many
# times a day (a business's) has thousands in state, 3.4 MB of JSON for 5,000.
ACCOUNT_LIMIT_DEFAULT = 500
ACCOUNT_LIMIT_MAX = 5000


def account_path(account_id: str, since: str | None, limit: int | None = None) -> str:
    """The account query's path and query as forwarded: quoted (a `since` with a `+07:00` offset
    unquoted reads as a space to the peer, which refuses it, and the merged answer would leave
    out every payment held by the other workers)."""
    params = {"since": since} if since else {}
    if limit is not None:
        params["limit"] = str(limit)
    query = "?" + urlencode(params) if params else ""
    return "/qris/accounts/" + quote(account_id, safe="") + "/payments" + query


def parse_limit(text: str | None) -> int:
    """An account query's `limit`: 1 to `ACCOUNT_LIMIT_MAX`, `ACCOUNT_LIMIT_DEFAULT` when not given.

    >>> parse_limit(None), parse_limit("20")
    (500, 20)
    >>> parse_limit("0")
    Traceback (most recent call last):
    ValueError: limit: '0' is not a whole number from 1 to 5000
    """
    if text is None:
        return ACCOUNT_LIMIT_DEFAULT
    if text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= ACCOUNT_LIMIT_MAX:
        return int(text)
    shown = text if len(text) <= 20 else text[:20] + "..."
    raise ValueError(f"limit: {shown!r} is not a whole number from 1 to {ACCOUNT_LIMIT_MAX}")


def token_ok(configured: str, authorization: str | None) -> bool:
    """A bearer token matches, compared in constant time. No configured token: never.

    >>> token_ok("s3cret", "Bearer s3cret"), token_ok("s3cret", "Bearer nope"), token_ok("", "Bearer ")
    (True, False, False)

    A header byte that is not UTF-8 (aiohttp hands it over as a lone surrogate) is a wrong
    token, not a 500 with a traceback in the worker's log:

    >>> token_ok("s3cret", "Bearer s3\\udcffcret")
    False
    """
    if not configured or not authorization or not authorization.startswith("Bearer "):
        return False
    given = authorization[len("Bearer ") :].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, configured.encode())


FORWARD_WINDOW_S = 30  # how old a forwarded query's signature may be (the workers' clocks agree)


def forward_signature(configured: str, question: str, now_s: int) -> str:
    """What a worker sends its peers instead of the caller's bearer token: a signature of the
    question (`question_of`) and the time, keyed by the token. The token stays on the worker;
    a peer's address comes from what it announced in the consumer group, so whoever may join
    the group would otherwise collect it, and a signature seen there answers one question for
    `FORWARD_WINDOW_S` only."""
    mac = hmac.new(configured.encode(), f"{now_s}\n{question}".encode("utf-8", "surrogateescape"), "sha256")
    return f"{now_s}:{mac.hexdigest()}"


def forward_ok(configured: str, question: str, signature: str | None, now_s: float) -> bool:
    """A forwarded query's signature matches its question, is recent, and was made with the
    configured token (compared in constant time).

    >>> q1, q2 = question_of("payment", "QR1"), question_of("payment", "QR2")
    >>> sig = forward_signature("s3cret", q1, 1000)
    >>> forward_ok("s3cret", q1, sig, 1010), forward_ok("s3cret", q2, sig, 1010)
    (True, False)
    >>> forward_ok("other", q1, sig, 1010), forward_ok("s3cret", q1, sig, 1031)
    (False, False)
    >>> forward_ok("s3cret", q1, "1", 1000), forward_ok("", q1, sig, 1000)
    (False, False)
    >>> forward_ok("s3cret", q1, "\u00b2:00", 1000), forward_ok("s3cret", q1, "1" * 5000 + ":00", 1000)
    (False, False)
    """
    if not configured or not signature:
        return False
    at, _, _ = signature.partition(":")
    # ASCII digits, at most 12 (`str.isdigit` takes '²', which `int` refuses, and `int` refuses
    # more than 4,300 digits): an unauthenticated header is a 401, never a 500.
    if not (at.isascii() and at.isdigit() and len(at) <= 12) or abs(now_s - int(at)) > FORWARD_WINDOW_S:
        return False
    expected = forward_signature(configured, question, int(at))
    return hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected.encode())


def question_of(kind: str, ident: str, since: str | None = None) -> str:
    """What a forwarded query's signature covers, as the peer decodes it from the path: the
    kind (`payment`, `account`), the reference or account id, and `since`, each with its length
    first, so no two questions read the same (an account id holding a line break is not a
    shorter account with a `since`).

    >>> question_of("account", "X" + chr(10) + "Y") != question_of("account", "X", "Y" + chr(10))
    True
    """
    return "\n".join(f"{len(part)}:{part}" for part in (kind, ident, since or ""))


def _at(ms: int | None) -> str | None:
    return format_ms(ms) if ms is not None else None


def _holds(st: ReferenceState, engine: PartitionEngine | None) -> list[dict[str, Any]]:
    """The reference's open holds, from its state (the truth the worker decides from), oldest
    first. `incident_ids`: every incident covering the payment that kept the hold on, as far as
    the engine's incident timeline knows (the refund.held's, then those that opened within a
    grace); `open_incident_ids`: those of them open at the engine's decided-through time, which
    the hold waits for (the first incident may have resolved half an hour before while a second
    one keeps the hold on)."""
    out = []
    for h in st.holds:
        ids = list(h.incident_ids)
        open_now: list[str] = []
        release_at_ms = h.release_at_ms
        if engine is not None:
            # (The end from the timeline, not the hold's scheduled one: an incident that opened
            # within the grace keeps the hold on before the hold's timer reschedules it.)
            timeline = engine.incidents
            until, chain = timeline.release_at(st.request, h.deadline_ms, engine.params.hold_grace_ms, h.incident_ids)
            if chain:
                # (Not from a timeline that knows none of its incidents yet: a restored engine's,
                # before the incidents topic is read, would give the deadline.)
                release_at_ms = min(until, h.release_by_ms)
            ids += [i for i in chain if i not in ids]
            now = {i.incident_id for i in timeline.covering_open_at(st.request, engine.decided_through_ms)}
            open_now = [i for i in ids if i in now]
        known = engine.incidents.incidents if engine is not None else {}
        out.append(
            {
                "refund_id": h.refund_id,
                "amount": h.amount,
                "incident_scopes": {
                    i: {"type": known[i].scope_type, "id": known[i].scope_id} for i in ids if i in known
                },
                "incident_id": open_now[0] if open_now else (ids[0] if ids else None),
                "incident_ids": ids,
                "open_incident_ids": open_now,
                "release_at": format_ms(release_at_ms) if release_at_ms < h.release_by_ms else None,
                "release_by": format_ms(h.release_by_ms),
                "deadline": format_ms(h.deadline_ms),
            }
        )
    return out


def _held_before(st: ReferenceState, refund: Refund, engine: PartitionEngine | None) -> dict[str, Any]:
    """For a refund that was held before it was requested (a `SETTLEMENT_TIMEOUT` whose deadline
    an incident covered): when it was requested (the hold's end, not its deadline), how long it
    was held, and the incidents that held it, as the refund record's `decided_at` and `hold`
    say; else nothing.

    The request time is the refund's own (`Refund.requested_at_ms`, what the engine decided and
    the `LATE_SETTLEMENT` alerts count from), whatever the engine's settings and timeline are
    now: a timeline restored before the incidents topic is read, or one whose incidents were
    trimmed, would give another time or none. The incidents are the timeline's (the refund does
    not keep them): none when it knows none. A refund without a request time was requested at
    its deadline, unless it may come from state saved without request times (its deadline before
    the engine's `request_times_from_ms`): that one is worked out from the timeline, as the
    engine decided it."""
    at_ms = refund.requested_at_ms
    if at_ms is None:
        if engine is not None and refund.deadline_ms >= engine.request_times_from_ms:
            # (Not from the timeline: holds may have been off when it was requested.)
            return {}
        return _held_before_from_timeline(st, refund, engine)
    chain: list[str] = []
    known: dict[str, Incident] = {}
    if engine is not None:
        known = engine.incidents.incidents
        # (The request as known at the hold's end, as the engine's hold timer read it.)
        _until, chain = engine.incidents.release_at(
            _request_known_by(st, at_ms), refund.deadline_ms, engine.params.hold_grace_ms
        )
        # As the refund record's `hold.incident_ids`: those opened by the hold's end.
        chain = [i for i in chain if i not in known or known[i].opened_at_ms <= at_ms]
    return _held_fields(at_ms, refund.deadline_ms, chain, known)


def _request_known_by(st: ReferenceState, t_ms: int) -> PaymentEvent | None:
    # The request as the engine knew it at t (records of an instant go before its timers).
    return st.request if st.request_eff_ms is not None and st.request_eff_ms <= t_ms else None


def _held_fields(at_ms: int, deadline_ms: int, chain: list[str], known: dict[str, Incident]) -> dict[str, Any]:
    return {
        "requested_at": format_ms(at_ms),
        "held_ms": at_ms - deadline_ms,
        "held_by": chain,
        "held_by_scopes": {i: {"type": known[i].scope_type, "id": known[i].scope_id} for i in chain if i in known},
    }


def _held_before_from_timeline(st: ReferenceState, refund: Refund, engine: PartitionEngine | None) -> dict[str, Any]:
    # A refund without its request time: held, and until when, as the engine's incident
    # timeline and hold settings say now (an active `SETTLEMENT_TIMEOUT` refund only).
    if engine is None or not engine.params.holds or refund.reason != "SETTLEMENT_TIMEOUT" or not refund.active:
        return {}
    timeline, deadline_ms, grace_ms = engine.incidents, refund.deadline_ms, engine.params.hold_grace_ms
    # Held only if an incident covering the payment as known at the deadline was open then (a
    # request that came after the deadline does not make a refund paid at its deadline held).
    if not timeline.covering_open_at(_request_known_by(st, deadline_ms), deadline_ms):
        return {}
    release_by_ms = deadline_ms + engine.params.max_hold_ms
    until, chain = timeline.release_at(_request_known_by(st, deadline_ms), deadline_ms, grace_ms)
    if _request_known_by(st, min(until, release_by_ms)) is not None:  # the request came during the hold
        until, chain = timeline.release_at(st.request, deadline_ms, grace_ms)
    at_ms = min(until, release_by_ms)
    if not chain or at_ms <= deadline_ms:
        return {}
    known = timeline.incidents
    # As the refund record's `hold.incident_ids`: those opened by the hold's end.
    chain = [i for i in chain if i not in known or known[i].opened_at_ms <= at_ms]
    return _held_fields(at_ms, deadline_ms, chain, known)


def _held_while(before: dict[str, Any], refund: Refund) -> str:
    # How long and why a refund was held before it was requested (`_held_before`'s fields).
    ids = before["held_by"]
    why = (
        f"incident {_named({'incident_scopes': before['held_by_scopes']}, ids)} was open"
        if ids
        else "an incident covering this payment was open"  # (one this worker's timeline does not know)
    )
    return (
        f"held for {duration_text(before['held_ms'])} from its deadline ({_said(format_ms(refund.deadline_ms))}) "
        f"while {why}"
    )


def _said(rfc3339: str) -> str:
    # A time in a sentence read to the customer: Jakarta time first (the fields stay RFC 3339).
    return wib_and_utc(parse_ms(rfc3339))


def _named(hold: dict[str, Any], ids: list[str]) -> str:
    # An incident id with what it is about (`in_x: switch RINTIS`): an id alone explains nothing
    # to a customer once the incident has resolved and its alert is no longer in `incidents`.
    # (The scope id escaped as in alerts, so that a right-to-left one cannot reorder the words.)
    scopes = hold.get("incident_scopes") or {}
    return ", ".join(f"{i}: {scopes[i]['type']} {escape_text(str(scopes[i]['id']))}" if i in scopes else i for i in ids)


# A hold ends without a refund when the payment settles first (`refund.hold_released`): on an
# outage day about half of them. "It comes by ..." alone is a promise the desk cannot keep.
UNLESS_SETTLED = ", unless the payment settles first (the merchant is then paid and nothing is refunded)"


def _unless_settled(st: ReferenceState) -> str:
    """What a settlement does to the held refunds: a settlement ends a hold only when it covers
    what the hold would pay (`ReferenceState._release_covered_holds`), so a customer charged more
    than the payment (twice) still gets the rest at the hold's end, and a hold that a settlement
    did not end is the rest of what was taken.

    >>> st = ReferenceState("QR1")
    >>> st.net = 50_000
    >>> _unless_settled(st)[:90]
    ', unless the payment settles first (the merchant is then paid, and only what was taken bey'
    """
    if st.settlement is not None:
        rest = max(0, st.net - st.settled - st.active)
        return (
            f"; the payment settled meanwhile (the merchant was paid): what comes is the {rupiah(rest)} "
            "taken beyond what it settled for"
        )
    amount = st.request.amount if st.request is not None else None
    if amount is None:
        return (
            ", unless the payment settles first (the merchant is then paid, and only what was taken beyond "
            "what it settles for is refunded)"
        )
    beyond = st.net - amount - st.active
    if beyond <= 0:
        return UNLESS_SETTLED
    return (
        f", unless the payment settles first (the merchant is then paid, and only the {rupiah(beyond)} taken "
        "beyond the payment is refunded)"
    )


def _held_summary(hold: dict[str, Any], n: int, unless: str = UNLESS_SETTLED) -> str:
    more = unless + (f" ({n} refunds of this payment are held)" if n > 1 else "")
    by = _said(hold["release_by"])
    if hold["open_incident_ids"]:
        return (
            f"refund of {rupiah(hold['amount'])} held while incident {', '.join(hold['open_incident_ids'])} is open "
            f"({_named(hold, hold['open_incident_ids'])}); it comes by {by} at the latest{more}"
        )
    if hold["release_at"] is not None and hold["incident_ids"]:
        return (
            f"refund of {rupiah(hold['amount'])} held; the incidents that held it "
            f"({_named(hold, hold['incident_ids'])}) resolved: it comes at {_said(hold['release_at'])} "
            f"unless another one opens, by {by} at the latest{more}"
        )
    return (
        f"refund of {rupiah(hold['amount'])} held (incident {hold['incident_id']}); it comes by {by} "
        f"at the latest{more}"
    )


def _due(st: ReferenceState, engine: PartitionEngine | None) -> str:
    """When the refund of an open cycle comes if the payment does not settle: at its deadline,
    unless an incident covering the payment is open then (the refund is held: CONTRACT.md
    "Refund holds"; only a `SETTLEMENT_TIMEOUT` refund is). Known for sure when the incident
    timeline reaches the deadline; else an incident open now may still be open then."""
    assert st.cycle_deadline_ms is not None
    deadline_ms = st.cycle_deadline_ms
    plain = f"a refund is due at {wib_and_utc(deadline_ms)} if it does not settle"
    p = engine.params if engine is not None else None
    if engine is None or p is None or not p.holds or st.settled > 0 or st.failure is not None:
        return plain
    timeline = engine.incidents
    latest = wib_and_utc(deadline_ms + p.max_hold_ms)
    if deadline_ms <= timeline.known_through_ms:
        then = timeline.covering_open_at(st.request, deadline_ms)
        if not then:
            return plain
        return (
            f"if it does not settle, the refund is held at its deadline ({wib_and_utc(deadline_ms)}): incident "
            f"{', '.join(i.incident_id for i in then)} covering this payment is open then; it comes by {latest} "
            "at the latest"
        )
    now = timeline.covering_open_at(st.request, engine.decided_through_ms)
    if not now:
        # The detector has not decided the deadline yet: an outage is declared a minute or more
        # after its first payments, whose refunds are then held. Said, not promised.
        return (
            f"{plain}, unless an incident covering this payment is declared open at the deadline: then the "
            f"refund is held, and comes by {latest} at the latest"
        )
    return (
        f"if it does not settle, a refund is due at {wib_and_utc(deadline_ms)}; incident "
        f"{', '.join(i.incident_id for i in now)} covering this payment is open, and while one is open at the "
        f"deadline the refund is held: it then comes by {latest} at the latest"
    )


def _not_processed(st: ReferenceState, engine: PartitionEngine | None) -> str:
    # Records of the payment received and waiting for the watermark: the answer above does not
    # count them yet, and a debit among them is money the customer sees taken. A repeat of an
    # event already processed (same event id on its stream) is ignored when its turn comes.
    items = engine.pending.get(st.reference) if engine is not None else None
    if not items:
        return ""
    said = []
    for *_x, s, _offset, _ref, ev in waiting_list(items):
        if ev is not None:
            repeat = " (a repeat of one already processed: ignored)" if st.has_seen(s, ev.event_id) else ""
            said.append(f"{ev.type} {'' if ev.amount is None else rupiah(ev.amount)}{repeat}")
    return (
        f"; also received and not processed yet: {', '.join(said)} (this answer changes once they are)" if said else ""
    )


# A refund's reason as the desk says it.
REFUND_REASONS = {
    "SETTLEMENT_TIMEOUT": "the payment did not reach the merchant in time",
    "PAYMENT_FAILED": "the payment failed after the money was taken",
    "EXCESS_DEBIT": "more was taken than the payment",
}


def _owed_since(st: ReferenceState, engine: PartitionEngine | None) -> str:
    # A refund requested or cancelled earlier says nothing of a debit since: a new cycle whose
    # amount is owed now (a second charge) is told with when its refund comes.
    if st.cycle_deadline_ms is None:
        return ""
    owed = st.net - st.settled - st.active - st.held
    return f"; {rupiah(owed)} more was taken since and is not settled: {_due(st, engine)}" if owed > 0 else ""


def _without_start(st: ReferenceState, engine: PartitionEngine | None) -> str:
    """A state holding neither the request nor a debit: only a settlement, failure or reversal.
    Either the start of the payment has not arrived yet, or it is older than the state kept
    (rule 4 dropped it): then any refund decided for it is on the refunds topic, and this
    record could not cancel it: "the merchant was paid" alone would tell customer service a
    refunded payment was only settled."""
    kept = f" ({duration_text(engine.params.retention_ms)} of event time)" if engine is not None else ""
    return (
        "NOTE: neither the request nor a debit of this payment is in the live state: they have not "
        f"arrived yet, or they are older than the state is kept{kept}, and then any refund decided for it "
        "is on the refunds topic and was not cancelled by this record: "
        f"`{trace_command(st.reference)}` explains it. "
    )


def payment_status(
    st: ReferenceState, partition: int, watch: WorkerWatch | None = None, engine: PartitionEngine | None = None
) -> dict[str, Any]:
    """What customer service tells the customer about one payment (`engine`: the partition's,
    for its incident timeline: which incidents hold a refund now, which cover the payment)."""
    rq = st.request
    holds = _holds(st, engine)
    hold = holds[-1] if holds else None
    active = [r for r in st.refunds if r.active]
    cancelled = [r for r in st.refunds if not r.active]
    if hold is not None:
        status = "refund_held"
        say = _held_summary(hold, len(holds), _unless_settled(st))
    elif active:
        status = "refund_requested"
        why = REFUND_REASONS.get(active[-1].reason, active[-1].reason)
        say = f"refund {active[-1].refund_id} of {rupiah(active[-1].amount)} requested ({why})"
        before = _held_before(st, active[-1], engine)
        if before:
            say += f", at {_said(before['requested_at'])}, after it was {_held_while(before, active[-1])}"
        if st.reversed_total > 0:
            say += f"; the bank also gave back {rupiah(st.reversed_total)} of the money taken (a reversal)"
        excess = st.active - max(0, st.net - st.settled)
        if excess > 0:
            # Rule 3 cancels whole refunds only: what a late settlement or reversal made too much
            # is an OVER_REFUND alert, for a person to settle with the customer.
            say += (
                f"; {excess} more is refunded than is owed now (a settlement or reversal came after the refund): "
                "payment operations were alerted (OVER_REFUND) and settle it with the customer"
            )
        say += _owed_since(st, engine)
    elif cancelled:
        status = "refund_cancelled"
        # Which of the two it was, and when: "you refunded me and then took it back" is answered
        # with the record that made the refund unnecessary, not with "settled or reversed".
        refund = cancelled[-1]
        before = _held_before(st, refund, engine)
        late: LedgerEntry | Settlement | None = None
        if st.settlement is not None and not st.reversals:
            late = st.settlement
            why = f"the payment settled late (the merchant was paid, {_said(late.occurred_at)}"
        elif st.reversals and st.settlement is None:
            late = st.reversals[-1]
            why = f"the bank reversed the debit late ({_said(late.occurred_at)}"
        else:
            why = "the payment settled or was reversed late"
        if late is not None and refund.requested_at_ms is not None:
            # As the LATE_SETTLEMENT / LATE_REVERSAL alert counts it: from the request at the
            # hold's end, not from the deadline ("26 min late" of a refund requested 5 s before).
            why += f"; {duration_text(late.effective_at_ms - refund.requested_at_ms)} after the refund was requested"
        why += ")" if late is not None else ""
        held = ""
        if before:
            held = f" at {_said(before['requested_at'])}, at the end of its hold (it was {_held_while(before, refund)})"
        say = f"a refund of {rupiah(refund.amount)} was requested{held}, then cancelled: {why}"
        say += _owed_since(st, engine)
    elif st.settled > 0:
        status = "settled"
        say = "the merchant was paid"
        if st.net > st.settled:
            # Charged twice (or more than the payment): the excess is refunded at the deadline.
            say += f"; {rupiah(st.net - st.settled)} more was taken than the payment settled for"
            if st.cycle_deadline_ms is not None:
                say += f": a refund of it is due at {wib_and_utc(st.cycle_deadline_ms)}"
    elif st.failure is not None:
        status = "failed" if st.net <= 0 else "failed_debited"
        say = "the payment failed"
        if st.net > 0:
            say += ", the money was taken; a refund follows at the deadline"
            if st.cycle_deadline_ms is not None:
                say += f" ({wib_and_utc(st.cycle_deadline_ms)})"
        if st.net <= 0 and st.debits:
            say += "; the money taken was given back (reversed)"
    elif st.net > 0:
        status = "debited"
        say = "the money was taken and the payment is not settled yet"
        if st.cycle_deadline_ms is not None:
            say += "; " + _due(st, engine)
    elif st.debits:
        # (Not "no money was taken": a debit and its reversal are both on the customer's
        # statement.)
        status = "requested"
        say = "the payment was requested; the money taken was given back (reversed)"
    elif st.reversals:
        # A reversal without its debit (not arrived yet, or dropped after R): neither "requested"
        # (no request may be here either) nor "no money was taken" (the customer's statement
        # shows the debit and its reversal).
        status = "requested"
        say = (
            f"{'the payment was requested; ' if rq is not None else ''}the bank gave back "
            f"{rupiah(st.reversed_total)} (a reversal) of a debit not in the live state"
        )
    else:
        status = "requested"
        say = "the payment was requested; no money was taken"
        if engine is not None and st.reference in engine.pending:
            say = "the payment was requested; no debit is processed yet"
    say += _not_processed(st, engine)
    if rq is None and not st.debits:
        say = _without_start(st, engine) + say
    incidents = _incidents_covering(st, watch, engine)
    return {
        "reference": st.reference,
        "status": status,
        "summary": say,
        "partition": partition,
        "account_id_masked": mask_account(st.account_id or (rq.account_id if rq else None)),
        "merchant_id": rq.merchant_id if rq else None,
        "merchant_name": rq.merchant_name if rq else None,
        "amount": rq.amount if rq else None,
        "requested_at": rq.occurred_at if rq else None,
        "debits": [_entry(d, st.account_id) for d in st.debits],
        "reversals": [_entry(r, st.account_id) for r in st.reversals],
        "net_debited": st.net,
        "settled_amount": st.settled,
        "settled_at": st.settlement.occurred_at if st.settlement else None,
        "failed_at": st.failure.occurred_at if st.failure else None,
        "response_code": st.failure.response_code if st.failure else None,
        "refund_due_at": _at(st.cycle_deadline_ms),
        "refunds": [
            {
                "refund_id": r.refund_id,
                "amount": r.amount,
                "reason": r.reason,
                "deadline": format_ms(r.deadline_ms),
                "status": "requested" if r.active else "cancelled",
                **_held_before(st, r, engine),
            }
            for r in st.refunds
        ],
        "hold": hold,
        "holds": holds,
        "incidents": incidents,
    }


def _entry(x: LedgerEntry, account_id: str | None) -> dict[str, Any]:
    """A debit or reversal as the lookup answers it; one booked on another account than the
    refunds' names that account, masked as every account in an answer (a payment is listed
    under each account it moved money on, and the caller asked about one of them only)."""
    out: dict[str, Any] = {"event_id": x.event_id, "amount": x.amount, "occurred_at": x.occurred_at}
    if x.account_id is not None and x.account_id != account_id:
        out["account_id_masked"] = mask_account(x.account_id)
    return out


def _incidents_covering(
    st: ReferenceState, watch: WorkerWatch | None, engine: PartitionEngine | None
) -> list[dict[str, Any]]:
    """The incidents covering the payment, open at the engine's decided-through time, from its
    incident timeline (every worker reads the incidents topic when holds are on), with the
    latest alert's status and summary where this worker sent it (the detector's worker);
    without a timeline (holds off), the open incidents this worker sent."""
    sent = {str(v["incident_id"]): v for v in watch.incidents_covering(st.request)} if watch is not None else {}
    if engine is None or not engine.params.holds:
        return [{"incident_id": i, "status": v.get("status"), "summary": v.get("summary")} for i, v in sent.items()]
    return [
        {
            "incident_id": inc.incident_id,
            "status": sent.get(inc.incident_id, {}).get("status", "opened"),
            "summary": sent.get(inc.incident_id, {}).get("summary"),
            "scope": {"type": inc.scope_type, "id": inc.scope_id},
        }
        for inc in engine.incidents.covering_open_at(st.request, engine.decided_through_ms)
    ]


def waiting_status(reference: str, partition: int, engine: PartitionEngine) -> dict[str, Any] | None:
    """A reference whose records arrived but wait for the watermark (not decided on yet)."""
    items = engine.pending.get(reference)
    if not items:
        return None
    events = [ev for *_x, ev in waiting_list(items) if ev is not None]
    return {
        "reference": reference,
        "status": "received",
        "summary": f"{len(events)} record(s) received, waiting for the watermark; nothing decided yet",
        "partition": partition,
        "records": [
            {"event_id": ev.event_id, "type": ev.type, "amount": ev.amount, "occurred_at": ev.occurred_at}
            for ev in events
        ],
    }


def lookup_reference(
    engines: dict[int, PartitionEngine], reference: str, watch: WorkerWatch | None = None
) -> dict[str, Any] | None:
    """The status of `reference` if one of `engines` holds it (processed or waiting), or if this
    worker rejected records of it (`with_rejected`). A reference whose records came without a
    key can live in several partitions, each deciding from its own records only (a settlement in
    one, the debit and its refund in another): every partition's answer is given, the others
    under `other_partitions`, and the summary says so."""
    got = _lookup(engines, reference, watch)
    return with_rejected(got, reference, watch) if watch is not None else got


def with_rejected(got: dict[str, Any] | None, reference: str, watch: WorkerWatch) -> dict[str, Any] | None:
    """`got` with the records of `reference` this worker rejected (dead letters) since it
    started: a rejected debit is money taken that the state does not know of, so an answer
    without them ("no money was taken") says it may leave something out.

    >>> from stream.settings import Settings
    >>> w = WorkerWatch(Settings(), clock=lambda: 0.0)
    >>> w.rejected["QR1"] = [{"source_topic": "qris.ledger-debits", "error": "bad_currency"}]
    >>> got = with_rejected({"summary": "the payment was requested; no money was taken"}, "QR1", w)
    >>> got["summary"][:80]
    'NOTE: 1 record(s) of this payment were rejected (bad_currency on qris.ledger-deb'
    >>> with_rejected(None, "QR1", w)["status"], with_rejected(None, "QR2", w)
    ('rejected', None)
    """
    rejected = watch.rejected.get(reference)
    if not rejected:
        return got
    what = ", ".join(sorted({f"{r.get('error')} on {r.get('source_topic')}" for r in rejected}))
    note = (
        f"NOTE: {len(rejected)} record(s) of this payment were rejected ({what}; the dead-letter topic has them"
        f" whole), so this answer may leave out money taken or paid: look at the core bank's journal"
    )
    if got is None:
        return {
            "reference": reference,
            "status": "rejected",
            "summary": f"{note}; no valid record of it was taken",
            "rejected_records": rejected,
        }
    return {**got, "summary": f"{note}. {got['summary']}", "rejected_records": rejected}


def _lookup(engines: dict[int, PartitionEngine], reference: str, watch: WorkerWatch | None) -> dict[str, Any] | None:
    found = []
    for p, eng in engines.items():
        st = eng.refs.get(reference)
        if st is not None:
            got = payment_status(st, p, watch, eng)
            waiting = waiting_status(reference, p, eng)
            if waiting is not None:
                got["waiting_records"] = waiting["records"]
            found.append(got)
    if found:
        # The partition that moved money (a refund or a hold) first: that is what the customer sees.
        found.sort(key=lambda g: (not (g["refunds"] or g["holds"]), g["partition"]))
        got = found[0]
        if len(found) > 1:
            got["other_partitions"] = found[1:]
            parts = ", ".join(str(g["partition"]) for g in found)
            got["summary"] = (
                f"WARNING: this reference's records arrived on partitions {parts}"
                " and each decided from its own records only; partition "
                + "; partition ".join(f"{g['partition']}: {g['summary']}" for g in found)
            )
        return got
    for p, eng in engines.items():
        waiting = waiting_status(reference, p, eng)
        if waiting is not None:
            return waiting
    return None


API_OFF = "the lookup API is off: QRIS_API_TOKEN is not set"
UNKNOWN_REFERENCE = "unknown reference"


def looked_and_holds_none(status: int, body: Any) -> bool:
    """A peer's 404 says it holds no state of the reference only when it is the lookup's own
    answer (`not_found`): a peer with the lookup API off answers 404 without looking.

    >>> looked_and_holds_none(404, not_found("QR1", 1_000, [])[0]), looked_and_holds_none(404, {"error": API_OFF})
    (True, False)
    """
    error = body.get("error") if isinstance(body, dict) else None
    return status == 404 and isinstance(error, str) and error.startswith(UNKNOWN_REFERENCE + " ")


def from_peers(
    local: dict[str, Any] | None, answers: list[tuple[str, int, Any]], watch: WorkerWatch
) -> tuple[dict[str, Any] | None, list[str]]:
    """The answer for a reference this worker holds no state of (`local`: None, or only the
    records of it this worker rejected), from its peers' `(url, status, body)`, and the peers
    that did not answer (or answered without looking: `looked_and_holds_none`). A peer's live
    state comes first, with this worker's rejected records added: the rejected ones alone say
    "no valid record of it was taken", false when a rebalance moved the partition away since,
    or when the rejected record was keyed by something else (an account number) and went to
    another worker's partition. So an answer of rejected records only, with a peer that did not
    answer, names it (`unanswered_workers`) and says INCOMPLETE first, as the 503 of
    `not_found` would have.

    >>> from stream.settings import Settings
    >>> w = WorkerWatch(Settings(), clock=lambda: 0.0)
    >>> w.rejected["QR1"] = [{"source_topic": "qris.ledger-debits", "error": "key_mismatch"}]
    >>> local = with_rejected(None, "QR1", w)
    >>> peer = {"reference": "QR1", "status": "debited", "summary": "the money was taken"}
    >>> got, unanswered = from_peers(local, [("http://w2:6066", 200, peer)], w)
    >>> got["status"], got["summary"][:40], len(got["rejected_records"]), unanswered
    ('debited', 'NOTE: 1 record(s) of this payment were r', 1, [])
    >>> got, unanswered = from_peers(local, [("http://w2:6066", 599, None)], w)
    >>> got["status"], got["summary"][:54], got["unanswered_workers"], from_peers(None, [], w)
    ('rejected', 'INCOMPLETE: worker(s) http://w2:6066 did not answer: t', ['http://w2:6066'], (None, []))
    """
    unanswered: list[str] = []
    rejected_there: dict[str, Any] | None = None
    for url, status, body in answers:
        if status == 200 and isinstance(body, dict):
            if body.get("status") != "rejected":
                if local is None:
                    return body, unanswered
                got = with_rejected(body, local["reference"], watch) or body
                got["rejected_records"] = [*body.get("rejected_records", ()), *local["rejected_records"]]
                return got, unanswered
            rejected_there = rejected_there or body
        elif not looked_and_holds_none(status, body):  # (599: no answer in time)
            unanswered.append(url)
    rejected = local or rejected_there
    if rejected is not None and unanswered:
        rejected = {
            **rejected,
            "summary": f"INCOMPLETE: worker(s) {', '.join(unanswered)} did not answer: the payment's live state "
            f"may be held there; ask again. {rejected['summary']}",
            "unanswered_workers": unanswered,
        }
    return rejected, unanswered


def not_ready_here(owned: set[int] | None, engines: Collection[int]) -> str | None:
    """This worker as a part of the group that cannot answer yet, or None: before its first
    assignment it holds no partition, and a partition just assigned has no engine until its
    state is restored (the rebalance's end). Its "no state of it here" is then no answer: the
    payment may be on that partition. Told as a worker that did not answer.

    >>> not_ready_here(None, []), not_ready_here({1, 3}, [3]), not_ready_here({3}, [3, 5])
    ('this worker (no input partition assigned yet)', 'this worker (input partition(s) [1] being restored)', None)
    """
    if owned is None:
        return "this worker (no input partition assigned yet)"
    missing = sorted(owned.difference(engines))
    return f"this worker (input partition(s) {missing} being restored)" if missing else None


def not_found(reference: str, retention_ms: int, unanswered: list[str]) -> tuple[dict[str, Any], int]:
    """The answer for a reference no worker answered with its state: 404 when every other
    worker said it holds none, 503 when one did not answer (a peer timed out, frozen or busy:
    the payment may be on it): "unknown reference" would tell a customer with a refund in
    progress that no such payment exists.

    >>> not_found("QR1", 172_800_000, [])[1], not_found("QR1", 1_000_000, [])[0]["hint"][:30]
    (404, 'state is kept 16 min of event ')
    >>> body, status = not_found("QR1", 172_800_000, ["http://w2:6066"])
    >>> status, body["error"][:60]
    (503, 'worker(s) http://w2:6066 did not answer: QR1 may be held the')
    """
    if unanswered:
        return {
            "error": f"worker(s) {', '.join(unanswered)} did not answer: {escape_text(reference)} may be held there; "
            "ask again (this is not an unknown reference)",
            "unanswered_workers": unanswered,
        }, 503
    return {
        "error": f"{UNKNOWN_REFERENCE} (no live state of it on any worker): {escape_text(reference)}",
        # Not "no such payment": a payment older than the retention is forgotten here (its
        # refund, if any, was decided and is on the refunds topic).
        "hint": f"state is kept {duration_text(retention_ms)} of event time after a reference's last record "
        "(QRIS_RETENTION_S); an older payment, or one never received, is explained by "
        f"`{trace_command(reference)}`",
    }, 404


def account_answer(payments: list[dict[str, Any]], total: int, limit: int, unanswered: list[str]) -> dict[str, Any]:
    """The account query's answer; with a worker that did not answer, a `warning` that its
    payments are missing (an empty list read as "no payments" when the owner was slow).

    >>> account_answer([], 0, 500, ["http://w2:6066"])["warning"][:58]
    'INCOMPLETE: worker(s) http://w2:6066 did not answer; the p'
    >>> "warning" in account_answer([], 0, 500, [])
    False
    """
    answer: dict[str, Any] = {"payments": payments, "count": len(payments), "total": total, "limit": limit}
    if total > len(payments):
        answer["hint"] = (
            f"the newest {len(payments)} of {total} payments: a later `since` narrows them, "
            f"`limit` (at most {ACCOUNT_LIMIT_MAX}) shows more"
        )
    if unanswered:
        answer["warning"] = (
            f"INCOMPLETE: worker(s) {', '.join(unanswered)} did not answer; the payments of this account "
            "held there are missing from this answer (and from `total`): ask again"
        )
        answer["unanswered_workers"] = unanswered
    return answer


def _as_decided(account_id: str, st: ReferenceState | None, waiting: list[Item]) -> tuple[bool, int | None]:
    """Whether a reference belongs to `account_id` once its records waiting for the watermark are
    decided, and when it was requested (or, without a request, first debited; without either,
    first reversed): what the account index (`accounts_of`) and the account query's order and
    `since` read from its state then. Each ledger entry names the account it was debited from
    or reversed to, and the first request the requesting one. Waiting records are decided after
    the state's, in key order.

    >>> debit = LedgerEvent("d", "debited", "QR1", "", 2_000, 100, "J-d", "77")
    >>> request = PaymentEvent("q", "requested", "QR1", "", 1_000, 100, "88")
    >>> _as_decided("77", None, [(2_000, 0, 1, 5, "QR1", debit), (1_000, 0, 0, 9, "QR1", request)])
    (True, 1000)
    >>> _as_decided("66", None, [(3_000, 0, 1, 5, "QR1", debit._replace(type="reversed", account_id="66"))])
    (True, 3000)
    >>> _as_decided("66", None, [(2_000, 0, 1, 5, "QR1", debit)])
    (False, 2000)
    """
    accounts = accounts_of(st) if st is not None else set()
    request = st.request if st is not None else None
    first_debit_ms = st.debits[0].effective_at_ms if st is not None and st.debits else None
    first_reversal_ms = st.reversals[0].effective_at_ms if st is not None and st.reversals else None
    for eff_ms, _kind, _s, _offset, _ref, ev in sorted(waiting):
        if type(ev) is LedgerEvent:
            accounts.add(ev.account_id)
            if ev.type == "debited":
                if first_debit_ms is None:
                    first_debit_ms = eff_ms
            elif first_reversal_ms is None:
                first_reversal_ms = eff_ms
        elif type(ev) is PaymentEvent and ev.type == "requested" and request is None:
            request = ev
            if ev.account_id:
                accounts.add(ev.account_id)
    belongs = bool(account_id) and account_id in accounts
    if request is not None:
        return belongs, request.occurred_at_ms
    return belongs, (first_debit_ms if first_debit_ms is not None else first_reversal_ms)


def account_payments(
    engines: dict[int, PartitionEngine],
    watch: WorkerWatch,
    account_id: str,
    since_ms: int | None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """This worker's payments of an account (debited from it, reversed to it or requested by
    it), requested (or first debited, or first reversed) at or after `since_ms`, newest first:
    the first `limit` of them (all with None), and how many there are. Each is answered as the
    reference lookup answers it (`lookup_reference`), once.

    The payments come from the account index (decided state) and from the records waiting for
    the watermark, which the index does not hold yet: a payment received a moment ago is
    `received` to the reference lookup and must not be missing here. The waiting records are
    read at the query, not indexed as they arrive: queries are rare and records many. That read
    is one pass over each partition's waiting records (`/qris/stats` `waiting`): a query with
    100,000 waiting took 11-18 ms on a shared machine (about 0.1 us a record). They are the
    records the watermark has not passed: about the allowed lateness (`QRIS_LATENESS_S`) of
    input, more while one stream is quiet (up to `QRIS_IDLE_TIMEOUT_S`) and, with holds on, up
    to `QRIS_MAX_LEAD_S` of event time past the incidents known (at 8,000 records/s, 2.4
    million: a quarter of a second)."""
    found: list[tuple[int | None, str]] = []
    seen: set[str] = set()
    for ref, p in list(watch.accounts.get(account_id, {}).items()):
        eng = engines.get(p)
        st = eng.refs.get(ref) if eng is not None else None
        if eng is None or st is None:
            continue  # the partition moved to another worker, or the state expired
        seen.add(ref)
        _, first_ms = _as_decided(account_id, st, waiting_list(eng.pending.get(ref) or []))
        if since_ms is None or (first_ms is not None and first_ms >= since_ms):
            found.append((first_ms, ref))
    for eng in engines.values():
        if not eng.pending:
            continue
        # (The heap holds the same records as `pending`, in one flat list: the cheaper pass.)
        named = {it[4] for it in eng.heap if (ev := it[5]) is not None and ev.account_id == account_id}
        for ref in named - seen:
            waiting = eng.pending.get(ref)
            if not waiting:
                continue
            belongs, first_ms = _as_decided(account_id, eng.refs.get(ref), waiting_list(waiting))
            if not belongs:
                continue
            # (Once: a reference whose records came without a key may wait on two partitions.)
            seen.add(ref)
            if since_ms is None or (first_ms is not None and first_ms >= since_ms):
                found.append((first_ms, ref))
    # Newest first, and only the answered ones built (a status is most of the query's time).
    found.sort(key=lambda x: (x[0] or 0, x[1]), reverse=True)
    out = []
    for first_ms, ref in found if limit is None else found[:limit]:
        # (Split over partitions, it gives every partition's answer; with records waiting, them.)
        item = lookup_reference(engines, ref, watch)
        if item is None:
            continue  # (not reached: the reference has state or waiting records here)
        item["first_seen_ms"] = first_ms
        out.append(item)
    return out, len(found)
