"""A failure degradation: for a while, a share of one scope's payments fail (a switch, an
acquirer, a merchant or the issuer having a bad half hour), at full strength at once or
ramping up slowly. It exists so a burst detector can be evaluated against a known incident:
the simulator injects it and records it in the ground truth; this module only says whose
payments are hit, when, and how hard.
"""

from dataclasses import dataclass
from typing import Literal

DegradeScope = Literal["", "switch", "acquirer", "merchant", "issuer"]
DEGRADE_SCOPES: tuple[DegradeScope, ...] = ("", "switch", "acquirer", "merchant", "issuer")


@dataclass(frozen=True, slots=True)
class Degradation:
    """Payments of ``scope`` ``scope_id`` requested in [start_ms, end_ms) fail with a share
    that grows linearly from 0 at ``start_ms`` to ``failure_rate`` at ``full_from_ms``."""

    scope: DegradeScope
    scope_id: str
    start_ms: int
    end_ms: int
    full_from_ms: int  # start_ms for a step change
    failure_rate: float

    def failure_share(self, requested_ms: int) -> float:
        """Share of the scope's payments requested at ``requested_ms`` that fail.

        >>> ramp = Degradation("switch", "JALIN", 0, 3_600_000, 1_800_000, 0.3)
        >>> [round(ramp.failure_share(t), 3) for t in (-1, 0, 900_000, 2_000_000, 3_600_000)]
        [0.0, 0.0, 0.15, 0.3, 0.0]
        """
        if not self.start_ms <= requested_ms < self.end_ms:
            return 0.0
        if requested_ms >= self.full_from_ms:
            return self.failure_rate
        return self.failure_rate * (requested_ms - self.start_ms) / (self.full_from_ms - self.start_ms)

    def covers(self, *, switch_id: str, acquirer_id: str, merchant_id: str, issuer_id: str) -> bool:
        """Whether a payment with these parties is in the scope.

        >>> Degradation("acquirer", "BCA", 0, 1, 0, 0.3).covers(
        ...     switch_id="RINTIS", acquirer_id="BCA", merchant_id="ID1000000000001", issuer_id="BANKDKI"
        ... )
        True
        """
        scope = self.scope
        if scope == "switch":
            party = switch_id
        elif scope == "acquirer":
            party = acquirer_id
        elif scope == "merchant":
            party = merchant_id
        else:
            party = issuer_id
        return party == self.scope_id
