"""The daily rhythm of QRIS payments in Jakarta time (WIB): how busy each minute is relative
to the configured base rate. Quiet at night, peaks at breakfast and commute (07-09), lunch
(12-13) and evening (18-21); weekends start later and lean on the evening; Lebaran days add
the pre-dawn sahur meal and the buka puasa rush before sunset. Pure: time is an argument.
"""

from typing import Literal

from stream.simulate.timestamps import WIB_OFFSET_MS

Profile = Literal["daily", "lebaran", "flat"]
PROFILES: tuple[Profile, ...] = ("daily", "lebaran", "flat")

# Relative load at the middle of each WIB hour 00..23, before normalisation.
_WEEKDAY = (
    0.15, 0.08, 0.05, 0.05, 0.10, 0.35, 0.90, 1.60, 1.80, 1.30, 1.00, 1.30,
    2.00, 1.60, 1.00, 0.95, 1.10, 1.40, 1.90, 2.10, 1.80, 1.30, 0.70, 0.35,
)  # fmt: skip
_WEEKEND = (
    0.25, 0.12, 0.06, 0.05, 0.07, 0.20, 0.45, 0.80, 1.10, 1.30, 1.45, 1.60,
    1.90, 1.80, 1.50, 1.40, 1.50, 1.70, 2.10, 2.40, 2.20, 1.60, 0.95, 0.50,
)  # fmt: skip
_LEBARAN = (
    0.30, 0.20, 0.45, 0.95, 0.70, 0.30, 0.50, 0.90, 1.20, 1.40, 1.60, 1.80,
    1.70, 1.60, 1.70, 2.10, 2.70, 3.10, 2.40, 2.20, 2.30, 1.80, 1.00, 0.55,
)  # fmt: skip

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_MINUTE_MS = 60_000


def _normalised(hours: tuple[float, ...], mean_of: tuple[float, ...]) -> tuple[float, ...]:
    scale = len(mean_of) / sum(mean_of)
    return tuple(h * scale for h in hours)


# A weekday averages exactly 1.0, so `rate_per_min` is the mean rate of an ordinary weekday.
_TABLES: dict[Profile, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "daily": (_normalised(_WEEKDAY, _WEEKDAY), _normalised(_WEEKEND, _WEEKDAY)),
    "lebaran": (_normalised(_LEBARAN, _LEBARAN), _normalised(_LEBARAN, _LEBARAN)),
    "flat": ((1.0,) * 24, (1.0,) * 24),
}


def is_weekend(occurred_at_ms: int) -> bool:
    """Saturday or Sunday in WIB (1970-01-01 was a Thursday).

    >>> is_weekend(1743213600000)  # Saturday 29 March 2025, 09:00 WIB
    True
    """
    day = (occurred_at_ms + WIB_OFFSET_MS) // _DAY_MS
    return (day + 3) % 7 >= 5


def load_factor(occurred_at_ms: int, profile: Profile = "daily") -> float:
    """Relative load at this instant, interpolated linearly between the hourly anchors.

    >>> round(load_factor(1743213600000, "flat"), 3)
    1.0
    >>> load_factor(1743195600000) < 0.1 < 1.0 < load_factor(1743246000000)  # 04:00 vs 18:00
    True
    """
    weekday_table, weekend_table = _TABLES[profile]
    table = weekend_table if is_weekend(occurred_at_ms) else weekday_table
    position = ((occurred_at_ms + WIB_OFFSET_MS) % _DAY_MS) / _HOUR_MS - 0.5
    low = int(position // 1)
    weight = position - low
    return table[low % 24] * (1.0 - weight) + table[(low + 1) % 24] * weight


class Rhythm:
    """Payments per millisecond at an instant, cached per minute of event time."""

    def __init__(self, rate_per_min: float, profile: Profile = "daily") -> None:
        if rate_per_min <= 0:
            raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
        if profile not in _TABLES:
            raise ValueError(f"unknown rhythm profile {profile!r}; known: {PROFILES}")
        self._rate_per_ms = rate_per_min / _MINUTE_MS
        self._profile: Profile = profile
        self._minute = -1
        self._rate = 0.0

    def rate_per_ms(self, occurred_at_ms: int) -> float:
        minute = occurred_at_ms // _MINUTE_MS
        if minute != self._minute:
            self._minute = minute
            middle = minute * _MINUTE_MS + _MINUTE_MS // 2
            self._rate = self._rate_per_ms * load_factor(middle, self._profile)
        return self._rate
