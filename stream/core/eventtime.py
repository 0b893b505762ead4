"""Event-time instants: RFC 3339 text to epoch milliseconds and back.

The contract compares instants at millisecond resolution (finer digits truncated), so the core
carries `*_ms` integers everywhere and formats text only at the edge: RFC 3339 UTC in records,
Jakarta time (WIB) with UTC beside it in text people read. Pure arithmetic: no datetime objects,
no clock, no time zone database.
"""

from __future__ import annotations

import re
from typing import Final

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# (`Final`, here and below: compiled, a constant or a C static, not a look-up in the module's
# dict at each use.)
MS_PER_S: Final = 1000
MS_PER_MIN: Final = 60_000
MS_PER_DAY: Final = 86_400_000
# Western Indonesia Time (UTC+7), the zone of the bank's daily rhythm and of alert text.
WIB_OFFSET_MS: Final = 7 * 3600 * 1000


class BadTimestamp(ValueError):
    """The text is not an RFC 3339 date-time with a zone offset."""


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's days_from_civil: days since 1970-01-01 in the proleptic Gregorian calendar.
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097  # (floor division: C's version adjusts negative days by hand)
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return year + (month <= 2), month, day


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# Calendar dates seen so far -> days since the epoch: records of a day share a handful of dates.
_DAYS: Final[dict[str, int]] = {}


# Minutes seen so far ("YYYY-MM-DDTHH:MM" + zone text) -> epoch ms of the minute's start.
_MINUTES: Final[dict[str, int]] = {}


# Seconds seen so far ("YYYY-MM-DDTHH:MM:SS" + zone text) -> epoch ms of the second's start: a
# text with a fraction (most) then costs a lookup and the fraction. Records arrive within
# minutes of each other, so emptying it when full loses little and keeps it small (about 1.4 MB).
_SECONDS: Final[dict[str, int]] = {}
_SECONDS_MAX: Final = 10_000

# Three-digit fractions ("000" .. "999", ASCII digits only) -> milliseconds: one lookup checks
# and converts the fraction of the usual text.
_MILLIS3: Final[dict[str, int]] = {f"{ms:03d}": ms for ms in range(1000)}


def _date_days(text: str, year: int, month: int, day: int) -> int:
    if not 1 <= month <= 12:
        raise BadTimestamp(f"{text!r}: month {month} out of range")
    last_day = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= last_day:
        raise BadTimestamp(f"{text!r}: day {day} out of range")
    days = _days_from_civil(year, month, day)
    if len(_DAYS) < 100_000:
        _DAYS[text[:10]] = days
    return days


def parse_ms(text: str) -> int:
    """Parse an RFC 3339 date-time with a zone offset to epoch milliseconds (UTC).

    Fractional seconds are optional and truncated to milliseconds; `T`/`Z` may be lower case
    (RFC 3339 section 5.6). A leap second (`:60`) counts as the first instant of the next minute.

    >>> parse_ms("2025-03-29T07:00:00+07:00")
    1743206400000
    >>> parse_ms("2025-03-29T00:00:00.123987Z")
    1743206400123
    """
    # Fast paths: a second (date, time to the second and zone) seen before in a valid text, and
    # this one has a fraction: only the fraction is read and checked here (first for the usual
    # text, milliseconds and `Z` or `+HH:MM`: 24 or 29 characters; a key of `_SECONDS` ends in
    # a zone, so `text[23:]` finds one only if it is the zone). Else a minute seen before: the
    # seconds and their fraction.
    n = len(text)
    if n == 24 or n == 29:
        millis = _MILLIS3.get(text[20:23])
        if millis is not None and text[19] == ".":
            second = _SECONDS.get(text[:19] + text[23:])
            if second is not None:
                return second + millis
    zone_at = n - 1 if text[-1:] in ("Z", "z") else n - 6
    if n > 20 and text[19] == ".":
        second = _SECONDS.get(text[:19] + text[zone_at:])
        if second is not None:
            frac = text[20:zone_at]
            if frac.isdigit() and frac.isascii():
                return second + int((frac + "00")[:3])
    base = _MINUTES.get(text[:16] + text[zone_at:]) if zone_at >= 19 else None
    if base is not None and text[16] == ":":
        sec = text[17:19]
        frac = text[20:zone_at]
        if (
            sec.isdigit()
            and sec.isascii()
            and sec <= "60"
            and (zone_at == 19 or (text[19] == "." and frac.isdigit() and frac.isascii()))
        ):
            second = base + int(sec) * MS_PER_S
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            _SECONDS[text[:19] + text[zone_at:]] = second
            return second + (int((frac + "00")[:3]) if frac else 0)
    return _parse_ms_full(text)


def _parse_ms_full(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise BadTimestamp(f"{text!r} is not an RFC 3339 date-time with a zone offset")
    days = _DAYS.get(text[:10])
    if days is None:
        days = _date_days(text, int(m[1]), int(m[2]), int(m[3]))
    hour, minute, second = int(m[4]), int(m[5]), int(m[6])
    if hour > 23 or minute > 59 or second > 60:
        raise BadTimestamp(f"{text!r}: time of day out of range")
    frac = m[7]
    millis = int((frac + "00")[:3]) if frac else 0
    offset_min = 0
    if m[8] is None:
        off_h, off_m = int(m[10]), int(m[11])
        if off_h > 23 or off_m > 59:
            raise BadTimestamp(f"{text!r}: zone offset out of range")
        offset_min = off_h * 60 + off_m
        if m[9] == "-":
            offset_min = -offset_min
    minute_ms = (((days * 24 + hour) * 60 + minute) * 60 - offset_min * 60) * MS_PER_S
    zone = m[8] or text[-6:]
    if len(_MINUTES) < 100_000:
        _MINUTES[text[:16] + zone] = minute_ms
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[text[:19] + zone] = minute_ms + second * MS_PER_S
    return minute_ms + second * MS_PER_S + millis


# The text of each second of a minute ("00" .. "59") and each millisecond ("000" .. "999"), and
# "YYYY-MM-DDTHH:MM:" of the minutes formatted so far (epoch minute -> text): an f-string's `:02d`
# goes through Python's general number formatting, about 15,000 instructions a time formatted,
# nearly half of what the engine spent on a refund. Decisions of a day share a few thousand
# minutes; emptied when full, as `_SECONDS`.
_SECOND_TEXT = tuple([f"{s:02d}" for s in range(60)])
_MILLI_TEXT = tuple([f"{ms:03d}" for ms in range(1000)])
_MINUTE_TEXT: dict[int, str] = {}
_MINUTE_TEXT_MAX = 10_000


def format_ms(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC text with milliseconds.

    >>> format_ms(1743206400123)
    '2025-03-29T00:00:00.123Z'
    >>> format_ms(-62167219200001), format_ms(253402300800000)  # just past each end of RFC 3339
    ('-001-12-31T23:59:59.999Z', '10000-01-01T00:00:00.000Z')
    """
    minute, rem = divmod(ms, MS_PER_MIN)  # (floor: `rem` in 0 .. 59,999 for any ms)
    head = _MINUTE_TEXT.get(minute)
    if head is None:
        head = _minute_text(minute)
    second, millis = divmod(rem, MS_PER_S)
    return f"{head}{_SECOND_TEXT[second]}.{_MILLI_TEXT[millis]}Z"


def _minute_text(minute: int) -> str:
    days, minute_of_day = divmod(minute, 1440)
    year, month, day = civil_from_days(days)
    hour, minute_of_hour = divmod(minute_of_day, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute_of_hour:02d}:"
    if len(_MINUTE_TEXT) >= _MINUTE_TEXT_MAX:
        _MINUTE_TEXT.clear()
    _MINUTE_TEXT[minute] = text
    return text


def wib_and_utc(at_ms: int | None) -> str:
    """An instant as operations and customer service read it: Jakarta time (WIB, UTC+7) first,
    UTC beside it, the UTC date added when it differs.

    >>> wib_and_utc(1743214625000)
    '2025-03-29 09:17:05 WIB (02:17:05 UTC)'
    >>> wib_and_utc(1743181200000)
    '2025-03-29 00:00:00 WIB (2025-03-28 17:00:00 UTC)'
    >>> wib_and_utc(253402300799000)  # the last second of 9999 UTC is in 10000 in Jakarta
    '9999-12-31T23:59:59.000Z (UTC)'
    >>> wib_and_utc(253402300800000), wib_and_utc(-62167219200001)  # both past the range
    ('10000-01-01T00:00:00.000Z (UTC)', '-001-12-31T23:59:59.999Z (UTC)')
    """
    if at_ms is None:
        return "never"
    if at_ms <= -(2**61):
        return "-inf (no time yet)"
    if at_ms >= 2**61:
        return "+inf (end of input)"
    utc, local = format_ms(at_ms), format_ms(at_ms + WIB_OFFSET_MS)
    if not (len(local) == len(utc) == 24 and local[0] != "-" and utc[0] != "-"):
        # Either clock outside years 0000-9999 (Jakarta's past 9999 at the end of the range the
        # core accepts; a watermark before year 0): the fields below are not where they are
        # sliced. RFC 3339 in UTC, as format_ms writes it.
        return f"{utc} (UTC)"
    frac = f".{at_ms % 1000:03d}" if at_ms % 1000 else ""
    utc_text = utc[11:19] if utc[:10] == local[:10] else f"{utc[:10]} {utc[11:19]}"
    return f"{local[:10]} {local[11:19]}{frac} WIB ({utc_text}{frac} UTC)"


# Epoch milliseconds of the instants RFC 3339 writes (years 0000-9999, as `format_ms`).
INSTANT_MIN_MS, INSTANT_MAX_MS = -62167219200000, 253402300799999


def parse_instant(text: str) -> int:
    """An instant given on a command line or in a URL query (`since`): epoch milliseconds (ASCII
    digits, in the years RFC 3339 writes), or RFC 3339 with a zone. Anything else is a
    `BadTimestamp` (a 400 from the lookup API, exit 2 from the CLI): `int()` alone takes `²` or
    5,000 digits for a number and raises a plain `ValueError`, which both take for a bug.

    >>> parse_instant("1743213600000") == parse_instant("2025-03-29T09:00:00+07:00")
    True
    >>> for bad in ("²", "--5", "1" + "0" * 17, "9" * 5000):
    ...     try:
    ...         parse_instant(bad)
    ...     except BadTimestamp as exc:
    ...         print(exc)
    '²' is not an RFC 3339 date-time with a zone offset
    '--5' is not an RFC 3339 date-time with a zone offset
    epoch milliseconds 100000000000000000 are outside the years 0000-9999
    epoch milliseconds 9999999999999999999999999999999999999999... (5000 digits) are outside the years 0000-9999
    """
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    if digits.isascii() and digits.isdigit():
        # (17 digits are past year 9999 already: no need to convert a longer one to say so)
        ms = int(text) if len(digits) <= 16 else None
        if ms is None or not INSTANT_MIN_MS <= ms <= INSTANT_MAX_MS:
            shown = text if len(text) <= 40 else f"{text[:40]}... ({len(digits)} digits)"
            raise BadTimestamp(f"epoch milliseconds {shown} are outside the years 0000-9999")
        return ms
    return parse_ms(text)
