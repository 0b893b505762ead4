"""The normal rate of bad (failed or unsettled) payments of one scope, learned online:
`FailureRateModel`, a river `AnomalyDetector` with river `stats.EWMean` per rhythm bucket,
scored with the binomial surprise before each minute is learned. Imports nothing outside the
core (river's statistics are pure computation). `river.stats` is imported where an `EWMean` is
first made (`_ewmean`), not here: it loads numpy, scipy and narwhals (a fifth of a second),
which a process whose scopes never leave their warm-up (a replay of a few hours) never needs.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from river import base

from .eventtime import WIB_OFFSET_MS
from .signals import MINUTE_MS
from .surprise import binomial_surprise

if TYPE_CHECKING:
    from river.stats import EWMean


def rhythm_bucket(minute: int) -> int:
    """The rhythm bucket of an event-time minute: weekday or weekend (WIB) times one of six
    four-hour blocks of the WIB day.

    >>> rhythm_bucket(1743213600000 // 60000)  # Saturday 29 March 2025, 09:00 WIB
    8
    """
    local_minute = minute + WIB_OFFSET_MS // MINUTE_MS
    day = local_minute // 1440
    weekend = (day + 3) % 7 >= 5
    return (6 if weekend else 0) + (local_minute % 1440) // 240


class FailureRateModel(base.AnomalyDetector):
    """The normal rate of bad (failed or unsettled) payments of one scope, by rhythm bucket.

    `x` is a scope-minute: `{"minute": epoch minute, "payments": n, "bad": b}`, optionally
    with `"parent_rate"` (the parent scope's expected rate, used while this scope is young)
    and, for `score_one`, the window to score as `"window_payments"` / `"window_bad"`.
    `score_one` is the binomial surprise of the window; score before `learn_one`.

    >>> m = FailureRateModel()
    >>> for minute in range(600):
    ...     m.learn_one({"minute": minute, "payments": 100, "bad": 1})
    >>> round(m.expected_rate(599), 3)
    0.01
    >>> m.score_one({"minute": 600, "payments": 100, "bad": 2}) < 1.0
    True
    >>> m.score_one({"minute": 600, "payments": 100, "bad": 40}) > 30
    True
    """

    def __init__(
        self,
        fading_factor: float = 0.002,
        prior_payments: float = 400.0,
        prior_rate: float = 0.01,
        min_rate: float = 0.001,
    ) -> None:
        self.fading_factor = fading_factor
        self.prior_payments = prior_payments
        self.prior_rate = prior_rate
        self.min_rate = min_rate
        # Overall and per rhythm bucket: EW mean of bad and of payments per active minute,
        # and how many payments were learned (the weight of the evidence).
        self._overall = _RateStat(fading_factor)
        self._buckets: dict[int, _RateStat] = {}

    def expected_rate(self, minute: int, parent_rate: float | None = None) -> float:
        """The rate of bad payments expected in `minute`: the bucket's learned rate, pulled
        toward the scope's overall rate, pulled toward `parent_rate` (or the prior), each by
        how little has been seen."""
        k = self.prior_payments
        prior = self.prior_rate if parent_rate is None else parent_rate
        rate = self._overall.shrunk(prior, k)
        bucket = self._buckets.get(rhythm_bucket(minute))
        if bucket is not None:
            rate = bucket.shrunk(rate, k)
        return max(rate, self.min_rate)

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        payments = x["payments"]
        if payments <= 0:
            return
        bad = x["bad"]
        self._overall.update(bad, payments)
        key = rhythm_bucket(x["minute"])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _RateStat(self.fading_factor)
        bucket.update(bad, payments)

    def score_one(self, x: dict[Hashable, Any]) -> float:
        rate = self.expected_rate(x["minute"], x.get("parent_rate"))
        return binomial_surprise(x.get("window_bad", x["bad"]), x.get("window_payments", x["payments"]), rate)

    @property
    def payments_seen(self) -> float:
        """Payments learned so far (all rhythm buckets)."""
        return self._overall.seen

    @property
    def minutes_seen(self) -> int:
        """Active minutes learned so far (minutes with payments)."""
        return self._overall.minutes

    def to_state(self) -> dict[str, Any]:
        """The model as JSON-ready named fields (`from_state` rebuilds it exactly)."""
        return {
            "fading_factor": self.fading_factor,
            "prior_payments": self.prior_payments,
            "prior_rate": self.prior_rate,
            "min_rate": self.min_rate,
            "overall": self._overall.to_state(),
            "buckets": [[k, b.to_state()] for k, b in sorted(self._buckets.items())],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FailureRateModel:
        model = cls(state["fading_factor"], state["prior_payments"], state["prior_rate"], state["min_rate"])
        model._overall = _RateStat.from_state(state["overall"], model.fading_factor)
        model._buckets = {int(k): _RateStat.from_state(b, model.fading_factor) for k, b in state["buckets"]}
        return model


class _RateStat:
    """Bad and total payments per active minute, exponentially weighted. An EWMean starts at
    its first value and forgets it only slowly, so a first minute without failures would pin
    the rate near zero for hours: until `1 / fading_factor` minutes are seen the stat keeps
    plain sums, then seeds the two `stats.EWMean` with their means."""

    __slots__ = ("bad", "payments", "seen", "minutes", "sum_bad", "sum_payments", "fading_factor")

    def __init__(self, fading_factor: float) -> None:
        self.fading_factor = fading_factor
        self.bad: EWMean | None = None
        self.payments: EWMean | None = None
        self.seen = 0.0
        self.minutes = 0
        self.sum_bad = 0.0
        self.sum_payments = 0.0

    def update(self, bad: int, payments: int) -> None:
        self.seen += payments
        self.minutes += 1
        if self.bad is None or self.payments is None:
            self.sum_bad += bad
            self.sum_payments += payments
            if self.minutes * self.fading_factor >= 1.0:
                self.bad = _ewmean(self.fading_factor, self.sum_bad / self.minutes)
                self.payments = _ewmean(self.fading_factor, self.sum_payments / self.minutes)
            return
        self.bad.update(bad)
        self.payments.update(payments)

    def rate(self) -> float:
        if self.bad is None or self.payments is None:
            return self.sum_bad / max(self.sum_payments, 1e-9)
        return self.bad.get() / max(self.payments.get(), 1e-9)

    def shrunk(self, toward: float, prior_payments: float) -> float:
        if self.seen <= 0.0:
            return toward
        w = self.seen / (self.seen + prior_payments)
        return w * self.rate() + (1.0 - w) * toward

    def to_state(self) -> dict[str, Any]:
        # An EWMean is fully described by its current value: one started at that value and fed
        # the same minutes gives the same means (checked by the snapshot tests).
        return {
            "bad": None if self.bad is None else self.bad.get(),
            "payments": None if self.payments is None else self.payments.get(),
            "seen": self.seen,
            "minutes": self.minutes,
            "sum_bad": self.sum_bad,
            "sum_payments": self.sum_payments,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], fading_factor: float) -> _RateStat:
        stat = cls(fading_factor)
        stat.seen = float(state["seen"])
        stat.minutes = int(state["minutes"])
        stat.sum_bad = float(state["sum_bad"])
        stat.sum_payments = float(state["sum_payments"])
        if state["bad"] is not None and state["payments"] is not None:
            stat.bad = _ewmean(fading_factor, float(state["bad"]))
            stat.payments = _ewmean(fading_factor, float(state["payments"]))
        return stat

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


def _ewmean(fading_factor: float, first: float) -> EWMean:
    """A river `stats.EWMean` started at `first` (river's statistics imported on first use)."""
    from river import stats

    mean = stats.EWMean(fading_factor)
    mean.update(first)
    return mean
