"""Instants as operations and customer service read them: Jakarta time (WIB, UTC+7) first,
UTC beside it, both said plainly. Text only; imports nothing with I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from ..core.eventtime import format_ms

WIB = timezone(timedelta(hours=7), "WIB")


def wib_and_utc(at_ms: int | None) -> str:
    """`2025-03-29 09:17:05 WIB (02:17:05 UTC)`; the UTC date is added when it differs.

    >>> wib_and_utc(1743214625000)
    '2025-03-29 09:17:05 WIB (02:17:05 UTC)'
    >>> wib_and_utc(1743181200000)
    '2025-03-29 00:00:00 WIB (2025-03-28 17:00:00 UTC)'
    >>> wib_and_utc(-62167219199000)  # 0000-01-01T00:00:01Z
    '0000-01-01T00:00:01.000Z (UTC)'
    """
    if at_ms is None:
        return "never"
    if at_ms <= -(2**61):
        return "-inf (no time yet)"
    if at_ms >= 2**61:
        return "+inf (end of input)"
    try:
        utc = datetime.fromtimestamp(at_ms / 1000, UTC)
        local = utc.astimezone(WIB)
    except (ValueError, OverflowError, OSError):
        # Past what `datetime` writes in Jakarta (year 0000 in UTC, the very end of 9999: event
        # times the core accepts): RFC 3339 in UTC, which writes every accepted time.
        return f"{format_ms(at_ms)} (UTC)"
    frac = f".{at_ms % 1000:03d}" if at_ms % 1000 else ""
    utc_text = utc.strftime("%H:%M:%S") if utc.date() == local.date() else utc.strftime("%Y-%m-%d %H:%M:%S")
    return f"{local.strftime('%Y-%m-%d %H:%M:%S')}{frac} WIB ({utc_text}{frac} UTC)"
