"""What a simulation meant to happen, recorded while it generates: which references are
owed money at the end and why, which refunds should be requested and later cancelled, and
what was injected (outage victims, degradations, malformed records, redeliveries, late
deliveries). It is the business intent, cheap to keep, for tests and benchmarks to compare
decisions with; ``incidents`` is what a burst detector should find.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

RefundReason = Literal["EXCESS_DEBIT", "PAYMENT_FAILED", "SETTLEMENT_TIMEOUT"]
CancelReason = Literal["LATE_SETTLEMENT", "LATE_REVERSAL"]
OutageFate = Literal["late_settled", "never_settled", "no_response"]


@dataclass
class GroundTruth:
    """Filled in by ``generate`` when passed as ``truth=``; complete once the records are."""

    payments: int = 0
    records: int = 0  # every record emitted, duplicates and malformed ones included
    # reference -> (amount, reason): debited minus reversed minus settled, when > 0 at the end
    owed: dict[str, tuple[int, RefundReason]] = field(default_factory=dict)
    # reference -> why the refund requested at its deadline is later cancelled
    cancelled: dict[str, CancelReason] = field(default_factory=dict)
    # reference -> fate, for payments the switch outage held
    outage: dict[str, OutageFate] = field(default_factory=dict)
    outage_window_ms: tuple[int, int] | None = None
    outage_switch: str | None = None
    malformed: Counter[str] = field(default_factory=Counter)  # kind -> records
    redelivered: int = 0
    late_within_lateness: int = 0
    late_beyond_lateness: int = 0
    # Each injected incident, outage first: {"kind": "switch_outage" | "degradation",
    # "scope": {"type", "id"}, "start_ms", "end_ms", "full_from_ms" (full strength from here),
    # "failure_rate", "payments" (the scope's payments requested in the window),
    # "affected" (payments held by the outage, or failed by the degradation)}.
    incidents: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (sorted, so the same run gives the same document)."""
        return {
            "payments": self.payments,
            "records": self.records,
            "owed": {ref: {"amount": a, "reason": r} for ref, (a, r) in sorted(self.owed.items())},
            "owed_total": sum(amount for amount, _ in self.owed.values()),
            "cancelled": dict(sorted(self.cancelled.items())),
            "outage": dict(sorted(self.outage.items())),
            "outage_window_ms": list(self.outage_window_ms) if self.outage_window_ms else None,
            "outage_switch": self.outage_switch,
            "malformed": dict(sorted(self.malformed.items())),
            "redelivered": self.redelivered,
            "late_within_lateness": self.late_within_lateness,
            "late_beyond_lateness": self.late_beyond_lateness,
            "incidents": [{**incident, "scope": dict(incident["scope"])} for incident in self.incidents],
        }
