"""Named traffic scenarios as presets of the simulator's knobs. A scenario is data: the
simulation is a pure function of (scenario, knobs, seed, start time, duration or size).
Rates are per payment unless they say per record.
"""

from dataclasses import dataclass, fields, replace
from typing import Any

from stream.simulate.degradation import DEGRADE_SCOPES, DegradeScope
from stream.simulate.merchants import ACQUIRERS, SWITCHES
from stream.simulate.rhythm import PROFILES, Profile


@dataclass(frozen=True, slots=True)
class Knobs:
    """Every tunable of a simulation; a scenario overrides some defaults."""

    profile: Profile = "daily"  # daily rhythm: "daily", "lebaran" or "flat"
    volume_factor: float = 1.0  # multiplies rate_per_min (Lebaran: several times normal)
    issuer_id: str = "BANKDKI"
    merchants: int = 2000  # catalogue size
    accounts: int = 20_000  # customer accounts reused across payments
    timeout_s: float = 300.0  # detector's T: "late" events are placed after it
    allowed_lateness_s: float = 30.0  # detector's A: disorder is placed within or beyond it
    failure_rate: float = 0.008  # payments that fail ...
    failure_before_debit_share: float = 0.4  # ... of which fail before any debit (e.g. "51")
    failure_reversed_share: float = 0.85  # ... of the rest, the ledger reverses the debit
    stuck_rate: float = 0.0  # debited, never settled nor failed (refund owed)
    double_debit_rate: float = 0.0  # settled payments debited twice
    double_debit_reversed_share: float = 0.3  # ... whose extra debit the ledger reverses
    late_settlement_rate: float = 0.0  # settled after timeout_s (a refund gets cancelled)
    late_reversal_rate: float = 0.0  # failed, reversed by the ledger after timeout_s
    redelivery_rate: float = 0.0  # per record: the same bytes delivered again later
    disorder_rate: float = 0.0  # per record: delivered late, but within allowed_lateness_s
    disorder_beyond_rate: float = 0.0  # per record: delivered later than allowed_lateness_s
    malformed_rate: float = 0.0  # per record: a broken copy is also delivered
    outage_switch: str = "RINTIS"
    outage_start_ms: int | None = None  # event time the switch stops settling ...
    outage_at: float | None = None  # ... or, if that is None, this fraction into the run
    outage_minutes: float = 20.0
    outage_late_share: float = 0.6  # held payments that settle after recovery; rest never
    outage_late_max_minutes: float = 10.0  # how long after recovery the late ones trickle in
    degrade_scope: DegradeScope = ""  # "switch", "acquirer", "merchant" or "issuer" fails more; "" = none
    degrade_id: str = ""  # that scope's id (switch, acquirer, NMID, issuer); merchant "" = the busiest
    degrade_start_ms: int | None = None  # event time the degradation starts ...
    degrade_at: float | None = None  # ... or, if that is None, this fraction into the run
    degrade_minutes: float = 30.0
    degrade_failure_rate: float = 0.3  # share of the scope's payments that fail at full strength
    degrade_ramp_minutes: float = 0.0  # 0 = step; else the share grows linearly to full over this

    def outage_window_ms(self, start_ms: int, minutes: float) -> tuple[int, int] | None:
        """The [start, end) event-time window of the switch outage, if there is one."""
        return _window_ms(self.outage_start_ms, self.outage_at, self.outage_minutes, start_ms, minutes)

    def degrade_window_ms(self, start_ms: int, minutes: float) -> tuple[int, int] | None:
        """The [start, end) event-time window of the degradation, if there is one."""
        if not self.degrade_scope:
            return None
        return _window_ms(self.degrade_start_ms, self.degrade_at, self.degrade_minutes, start_ms, minutes)


def _window_ms(
    begin_ms: int | None, at: float | None, length_minutes: float, start_ms: int, minutes: float
) -> tuple[int, int] | None:
    """[begin, begin + length): begin given, or ``at`` of the run's ``minutes`` from ``start_ms``."""
    if begin_ms is None:
        if at is None:
            return None
        begin_ms = start_ms + int(at * minutes * 60_000)
    return begin_ms, begin_ms + int(length_minutes * 60_000)


SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "normal": ("a normal day: daily rhythm, ~0.8% failures, most reversed", {}),
    "lebaran": (
        "Lebaran peak: 4x volume, sahur and buka puasa peaks, the same failure rate",
        {"profile": "lebaran", "volume_factor": 4.0},
    ),
    "outage": (
        "one switch stops settling for 20 minutes a quarter into the run; 60% settle late",
        {"outage_at": 0.25},
    ),
    "double_debit": (
        "3% of settled payments debited twice, some extra debits reversed",
        {"double_debit_rate": 0.03},
    ),
    "failed": (
        "8% failures, with and without ledger reversal",
        {"failure_rate": 0.08, "failure_before_debit_share": 0.3, "failure_reversed_share": 0.5},
    ),
    "late": (
        "2% settlements and 2% reversals arrive after the refund timeout",
        {"late_settlement_rate": 0.02, "late_reversal_rate": 0.02},
    ),
    "redelivery": ("3% of records delivered twice (same bytes)", {"redelivery_rate": 0.03}),
    "disorder": (
        "5% of records late within the allowed lateness, 1% beyond it",
        {"disorder_rate": 0.05, "disorder_beyond_rate": 0.01},
    ),
    "malformed": ("2% extra records, each broken one way", {"malformed_rate": 0.02}),
    "mixed": (
        "all of the above at realistic rates, with a switch outage 40% into the run",
        {
            "failure_rate": 0.01,
            "stuck_rate": 0.0005,
            "double_debit_rate": 0.003,
            "late_settlement_rate": 0.002,
            "late_reversal_rate": 0.001,
            "redelivery_rate": 0.005,
            "disorder_rate": 0.01,
            "disorder_beyond_rate": 0.001,
            "malformed_rate": 0.001,
            "outage_at": 0.4,
        },
    ),
    "acquirer_degradation": (
        "30% of acquirer BCA's payments fail for 30 minutes from 40% into the run",
        {"degrade_scope": "acquirer", "degrade_id": "BCA", "degrade_at": 0.4},
    ),
    "merchant_failure": (
        "60% of the busiest merchant's payments fail for 20 minutes from 40% into the run",
        {"degrade_scope": "merchant", "degrade_failure_rate": 0.6, "degrade_minutes": 20.0, "degrade_at": 0.4},
    ),
    "slow_burn": (
        "switch JALIN degrades for 60 minutes from 30% into the run, failures ramping to 30% over 45",
        {
            "degrade_scope": "switch",
            "degrade_id": "JALIN",
            "degrade_at": 0.3,
            "degrade_minutes": 60.0,
            "degrade_ramp_minutes": 45.0,
        },
    ),
    "low_volume": (
        "a normal day spread over 10,000 merchants: few payments per merchant, no incident",
        {"merchants": 10_000},
    ),
}

_RATES = (
    "failure_rate",
    "failure_before_debit_share",
    "failure_reversed_share",
    "stuck_rate",
    "double_debit_rate",
    "double_debit_reversed_share",
    "late_settlement_rate",
    "late_reversal_rate",
    "redelivery_rate",
    "disorder_rate",
    "disorder_beyond_rate",
    "malformed_rate",
    "outage_late_share",
    "degrade_failure_rate",
)

KNOB_NAMES = tuple(f.name for f in fields(Knobs))


def resolve_knobs(scenario: str, overrides: dict[str, Any]) -> Knobs:
    """The scenario's knobs with ``overrides`` applied, checked.

    >>> resolve_knobs("lebaran", {"volume_factor": 3}).volume_factor
    3
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    unknown = sorted(set(overrides) - set(KNOB_NAMES))
    if unknown:
        raise TypeError(f"unknown knob(s) {unknown}; known: {', '.join(KNOB_NAMES)}")
    knobs = replace(Knobs(), **{**SCENARIOS[scenario][1], **overrides})
    for name in _RATES:
        value = getattr(knobs, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")
    payment_rates = knobs.failure_rate + knobs.stuck_rate + knobs.late_settlement_rate + knobs.late_reversal_rate
    if payment_rates > 1.0:
        raise ValueError("failure, stuck, late settlement and late reversal rates exceed 1")
    transport_rates = knobs.disorder_rate + knobs.disorder_beyond_rate + knobs.redelivery_rate + knobs.malformed_rate
    if transport_rates > 1.0:
        # One record gets at most one of these, so their rates must fit in one draw.
        raise ValueError("disorder, disorder beyond, redelivery and malformed rates exceed 1")
    if knobs.profile not in PROFILES:
        raise ValueError(f"unknown profile {knobs.profile!r}; known: {PROFILES}")
    if knobs.volume_factor <= 0 or knobs.merchants < 1 or knobs.accounts < 1:
        raise ValueError("volume_factor, merchants and accounts must be positive")
    if knobs.allowed_lateness_s < 3 or knobs.timeout_s <= knobs.allowed_lateness_s:
        raise ValueError("need allowed_lateness_s >= 3 and timeout_s > allowed_lateness_s")
    if knobs.outage_minutes < 0 or knobs.outage_late_max_minutes <= 0:
        raise ValueError("outage_minutes must be >= 0, outage_late_max_minutes > 0")
    _check_degradation(knobs)
    return knobs


def _check_degradation(knobs: Knobs) -> None:
    scope, scope_id = knobs.degrade_scope, knobs.degrade_id
    if scope not in DEGRADE_SCOPES:
        raise ValueError(f"unknown degrade_scope {scope!r}; known: {DEGRADE_SCOPES}")
    if not scope:
        return
    if knobs.degrade_start_ms is None and knobs.degrade_at is None:
        raise ValueError("a degradation needs degrade_start_ms or degrade_at")
    if not 0 <= knobs.degrade_ramp_minutes <= knobs.degrade_minutes:
        raise ValueError("need 0 <= degrade_ramp_minutes <= degrade_minutes")
    # A merchant's NMID is checked against the catalogue when it is built.
    known = {"switch": SWITCHES, "acquirer": tuple(ACQUIRERS), "issuer": (knobs.issuer_id,)}.get(scope)
    if known is not None and scope_id not in known:
        raise ValueError(f"degrade_id {scope_id!r} is no {scope} of the simulation; known: {', '.join(known)}")
