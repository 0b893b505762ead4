"""Refund holds during an incident (CONTRACT.md "Refund holds during an incident"): the incident
timeline a partition knows, which incidents cover a payment, and when a hold ends.

The timeline is built from the burst detector's `FAILURE_BURST` decisions. An incident's event
times are those of the decisions: the decided minute's end (the alert's `occurred_at`) plus the
probe age, the detector's fixed decision delay. `known_through_ms` says up to which event time
every decision is known: a hold or deadline at t is decided only once t <= known_through_ms.
Imports nothing outside the core; reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from hashlib import blake2b
from typing import Any, Final, Literal

from .eventtime import parse_ms
from .ids import encode_parts
from .records import PaymentEvent
from .signals import merchant_scope_id, pool_id

NEG_INF: Final = -(2**62)
POS_INF: Final = 2**62

ReleasedBecause = Literal["incident_resolved", "max_hold", "owed_covered"]


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One incident decision: `status` opened | updated | resolved, at event time `at_ms`."""

    at_ms: int
    status: str
    incident_id: str
    scope_type: str
    scope_id: str

    def __reduce__(self) -> tuple[type[IncidentEvent], tuple[Any, ...]]:
        # Rebuilt by its constructor when pickled: see `partition.Params.__reduce__`.
        return IncidentEvent, tuple(getattr(self, f.name) for f in fields(self))


def incident_event(alert: dict[str, Any], probe_age_ms: int) -> IncidentEvent | None:
    """The timeline event of a `FAILURE_BURST` alert value (None for any other alert): its event
    time is the alert's `occurred_at` (end of the decided minute) plus the probe age."""
    if alert.get("kind") != "FAILURE_BURST":
        return None
    scope = alert["scope"]
    return IncidentEvent(
        parse_ms(alert["occurred_at"]) + probe_age_ms,
        alert["status"],
        alert["incident_id"],
        scope["type"],
        scope["id"],
    )


@dataclass(slots=True)
class Incident:
    incident_id: str
    scope_type: str
    scope_id: str
    opened_at_ms: int
    resolved_at_ms: int | None = None

    def __reduce__(self) -> tuple[type[Incident], tuple[Any, ...]]:
        # Pickled in a timeline by `replay --jobs`. Compiled, a native class whose constructor
        # needs arguments has no default pickling: see `partition.Params.__reduce__`.
        return Incident, tuple(getattr(self, f.name) for f in fields(self))

    def open_at(self, t_ms: int) -> bool:
        """Opened at or before t and not resolved before t."""
        return self.opened_at_ms <= t_ms and (self.resolved_at_ms is None or not self.resolved_at_ms < t_ms)

    def covers(self, request: PaymentEvent | None) -> bool:
        """Scope `all` covers every payment; otherwise the request's switch, acquirer, issuer or
        merchant must be the scope. A merchant pool `MCC-xxxx` covers every payment whose request
        has that `mcc` (`MCC-unknown`: no mcc). Without a request only `all` covers."""
        if self.scope_type == "all":
            return True
        if request is None:
            return False
        keys = payment_scope_keys(
            request.switch_id, request.acquirer_id, request.issuer_id, request.merchant_id, request.mcc
        )
        return (self.scope_type, self.scope_id) in keys


_ALL = ("all", "")


def scope_key(scope_type: str, scope_id: str) -> tuple[str, str]:
    """Where an incident is filed in `IncidentTimeline.by_scope`: scope `all` whatever its id
    (it covers every payment), any other by its type and id."""
    return _ALL if scope_type == "all" else (scope_type, scope_id)


def payment_scope_keys(
    switch_id: str | None, acquirer_id: str | None, issuer_id: str | None, merchant_id: str | None, mcc: str | None
) -> list[tuple[str, str]]:
    """The scope keys (`scope_key`) besides `all` under which the incidents covering a payment
    are filed, from its `requested` record's fields: an incident covers the payment if and only if
    its key is `all` or one of these (`Incident.covers`).

    >>> payment_scope_keys("RINTIS", "BCA", None, "ID1020", "5812")
    [('switch', 'RINTIS'), ('acquirer', 'BCA'), ('merchant', 'MCC-5812'), ('merchant', 'ID1020')]
    """
    keys = [
        ("switch", switch_id),
        ("acquirer", acquirer_id),
        ("issuer", issuer_id),
        ("merchant", pool_id(mcc)),
        ("merchant", None if merchant_id is None else merchant_scope_id(merchant_id)),
    ]
    return [(t, i) for t, i in keys if i is not None]


def scope_tag(key: tuple[str, str]) -> str:
    """A short fixed-size digest of a scope key (`scope_key`), 16 hex digits: what a partition's
    hold report carries of a held payment's scopes, so that the report's size does not grow with
    the length of the input's ids (`holdtally`). Collisions need 2**32 scopes.

    >>> scope_tag(("switch", "RINTIS")) == scope_tag(scope_key("switch", "RINTIS"))
    True
    """
    return blake2b(encode_parts(*key), digest_size=8).hexdigest()


@dataclass(slots=True)
class IncidentTimeline:
    """The incidents a partition knows, and the event time through which it knows them all."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    known_through_ms: int = NEG_INF
    # The same incidents by scope (`scope_key`): a payment's covering incidents are looked up
    # under its own few scopes, not found by scanning every incident ever known (a hostile minute
    # opened thousands, and each deadline and each hold's reschedule scanned them all).
    by_scope: dict[tuple[str, str], list[Incident]] = field(default_factory=dict)
    # Resolutions of incidents whose opening this timeline never saw (see `add`).
    resolved_unseen: dict[str, int] = field(default_factory=dict)

    def add(self, events: Iterable[IncidentEvent], known_through_ms: int) -> bool:
        """Take incident events (repeats harmless) and the new known-through time. Returns
        whether a resolution became known (holds may end earlier than scheduled)."""
        resolved = False
        for ev in events:
            inc = self.incidents.get(ev.incident_id)
            if inc is None:
                if ev.status == "resolved":
                    # Its opening was never seen: nothing it could hold from now on. A hold
                    # already in the state may name it (the incidents topic lost its opening):
                    # its resolution is kept for those holds (`release_at`'s `held_by`).
                    if ev.incident_id not in self.resolved_unseen:
                        self.resolved_unseen[ev.incident_id] = ev.at_ms
                        resolved = True
                    continue
                # Its resolution may be known already: a rebuilt detector announces the openings
                # of its open incidents again, behind a resolution its previous run had sent.
                inc = self.incidents[ev.incident_id] = Incident(
                    ev.incident_id, ev.scope_type, ev.scope_id, ev.at_ms, self.resolved_unseen.get(ev.incident_id)
                )
                self.by_scope.setdefault(scope_key(ev.scope_type, ev.scope_id), []).append(inc)
            if ev.status == "resolved" and inc.resolved_at_ms is None:
                inc.resolved_at_ms = ev.at_ms
                resolved = True
        if known_through_ms > self.known_through_ms:
            self.known_through_ms = known_through_ms
        return resolved

    def covering_open_at(self, request: PaymentEvent | None, t_ms: int) -> list[Incident]:
        """The incidents covering the payment that are open at t, earliest opened first."""
        found = [i for i in self._covering(request) if i.open_at(t_ms)]
        found.sort(key=lambda i: (i.opened_at_ms, i.incident_id))
        return found

    def _covering(self, request: PaymentEvent | None) -> list[Incident]:
        """Every incident that covers the payment (`Incident.covers`), in no particular order:
        those filed under the payment's scopes (an incident is filed under one)."""
        by_scope = self.by_scope
        out = list(by_scope.get(_ALL, ()))
        if request is not None:
            keys = payment_scope_keys(
                request.switch_id, request.acquirer_id, request.issuer_id, request.merchant_id, request.mcc
            )
            for key in keys:
                out.extend(by_scope.get(key, ()))
        return out

    def release_at(
        self, request: PaymentEvent | None, held_from_ms: int, grace_ms: int, held_by: Iterable[str] = ()
    ) -> tuple[int, list[str]]:
        """When a hold that started at `held_from_ms` ends by its incidents, from what is known:
        G after the last covering incident resolved, where a covering incident that opens
        within that grace (at or before resolution + G) keeps the hold on. Unresolved: +inf.
        Also returns every covering incident that kept the hold on, in opening order.

        `held_by`: the incidents the hold itself names (its `incident_ids`). They covered the
        payment at its deadline whatever this timeline knows of them: one the timeline lost (its
        incidents topic trimmed or recreated while the state kept the hold) keeps the hold on
        until its resolution is known (else to the hold's `release_by`), and one the timeline
        first saw after its opening (an `updated` event) counts from the hold's start. With a
        whole timeline this changes nothing: a hold names only incidents of its chain."""
        held = set(held_by)

        def opened(i: Incident) -> int:
            return min(i.opened_at_ms, held_from_ms) if i.incident_id in held else i.opened_at_ms

        covering = sorted(self._covering(request), key=lambda i: (opened(i), i.incident_id))
        end = NEG_INF
        chain: list[str] = []
        for incident_id in sorted(held - self.incidents.keys()):
            end = max(end, self.resolved_unseen.get(incident_id, POS_INF))
            chain.append(incident_id)
        for inc in covering:
            res = POS_INF if inc.resolved_at_ms is None else inc.resolved_at_ms
            if opened(inc) <= held_from_ms:
                if res < held_from_ms:
                    continue  # resolved before the hold began
            elif end == NEG_INF or inc.opened_at_ms > end + grace_ms:
                if end != NEG_INF:
                    break  # opens after the hold ended
                continue
            end = max(end, res)
            chain.append(inc.incident_id)
        if end == NEG_INF:
            return held_from_ms, chain
        return (POS_INF if end >= POS_INF else end + grace_ms), chain


@dataclass(slots=True)
class Hold:
    """A `SETTLEMENT_TIMEOUT` refund not paid yet because an incident covers the payment.

    `opened_by` is the (stream, offset) of the debit that opened the held cycle: it orders
    hold-release timers of one instant. `release_at_ms` is the currently scheduled end."""

    refund_id: str
    deadline_ms: int
    amount: int
    incident_ids: list[str]
    release_by_ms: int
    opened_by: tuple[int, int]
    release_at_ms: int

    def to_json(self) -> list[Any]:
        return [
            self.refund_id,
            self.deadline_ms,
            self.amount,
            self.incident_ids,
            self.release_by_ms,
            list(self.opened_by),
            self.release_at_ms,
        ]

    @classmethod
    def from_json(cls, x: list[Any]) -> Hold:
        return cls(x[0], x[1], x[2], list(x[3]), x[4], (x[5][0], x[5][1]), x[6])
