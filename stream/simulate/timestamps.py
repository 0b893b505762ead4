"""RFC 3339 text for simulated event times, in the zone styles real producers mix: WIB
(``+07:00``) and UTC (``Z``), with milliseconds, with finer digits, or whole seconds. Reads
no clock; the only input is the event time in epoch milliseconds.
"""

import time

WIB_OFFSET_MS = 7 * 3600 * 1000


def second_text(local_s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a second already shifted into the wanted zone.

    >>> second_text(1743213600)
    '2025-03-29T02:00:00'
    """
    year, month, day, hour, minute, second = time.gmtime(local_s)[:6]
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


def format_rfc3339(
    occurred_at_ms: int,
    *,
    wib: bool,
    extra_digits: int | None = None,
    whole_seconds: bool = False,
) -> str:
    """``occurred_at_ms`` as RFC 3339 in WIB or UTC. ``extra_digits`` (0..999) are written
    after the milliseconds (finer than the contract compares); ``whole_seconds`` drops the
    fraction, which is only exact when the milliseconds are zero.

    >>> format_rfc3339(1743213600123, wib=True)
    '2025-03-29T09:00:00.123+07:00'
    >>> format_rfc3339(1743213600123, wib=False, extra_digits=456)
    '2025-03-29T02:00:00.123456Z'
    >>> format_rfc3339(1743213600000, wib=False, whole_seconds=True)
    '2025-03-29T02:00:00Z'
    """
    local_ms = occurred_at_ms + WIB_OFFSET_MS if wib else occurred_at_ms
    zone = "+07:00" if wib else "Z"
    seconds = second_text(local_ms // 1000)
    if whole_seconds:
        return f"{seconds}{zone}"
    if extra_digits is None:
        return f"{seconds}.{local_ms % 1000:03d}{zone}"
    return f"{seconds}.{local_ms % 1000:03d}{extra_digits:03d}{zone}"


def wib_date(occurred_at_ms: int) -> str:
    """The WIB calendar date as ``YYYYMMDD`` (QRIS references carry the local date).

    >>> wib_date(1743267600000)  # 2025-03-29T17:00:00Z is already the 30th in Jakarta
    '20250330'
    """
    return time.strftime("%Y%m%d", time.gmtime((occurred_at_ms + WIB_OFFSET_MS) // 1000))
