"""RFC 3339 text for simulated event times, in the zone styles real producers mix: WIB
(``+07:00``) and UTC (``Z``), with milliseconds, with finer digits, or whole seconds. Reads
no clock; the only input is the event time in epoch milliseconds.
"""

import time
from datetime import UTC, datetime, timedelta

WIB_OFFSET_MS = 7 * 3600 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Seconds of text are cached: a simulation produces many records per second of event time.
_CACHE_LIMIT = 1 << 16


class Rfc3339Formatter:
    """Formats epoch milliseconds as RFC 3339, caching the per-second part of the text.

    >>> fmt = Rfc3339Formatter()
    >>> fmt.format(1743213600123, wib=True)
    '2025-03-29T09:00:00.123+07:00'
    >>> fmt.format(1743213600123, wib=False, extra_digits=456)
    '2025-03-29T02:00:00.123456Z'
    >>> fmt.format(1743213600000, wib=False, whole_seconds=True)
    '2025-03-29T02:00:00Z'
    """

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def _second_text(self, local_s: int) -> str:
        text = self._seconds.get(local_s)
        if text is None:
            if len(self._seconds) >= _CACHE_LIMIT:
                self._seconds.clear()
            text = "%04d-%02d-%02dT%02d:%02d:%02d" % time.gmtime(local_s)[:6]
            self._seconds[local_s] = text
        return text

    def format(
        self,
        occurred_at_ms: int,
        *,
        wib: bool,
        extra_digits: int | None = None,
        whole_seconds: bool = False,
    ) -> str:
        """Text for ``occurred_at_ms``; ``extra_digits`` (0..999) are sub-millisecond digits,
        ``whole_seconds`` drops the fraction (only honest when the milliseconds are zero)."""
        local_ms = occurred_at_ms + WIB_OFFSET_MS if wib else occurred_at_ms
        zone = "+07:00" if wib else "Z"
        seconds = self._second_text(local_ms // 1000)
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


def parse_rfc3339_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 date-time that carries a zone.

    >>> parse_rfc3339_ms("2025-03-29T09:00:00.123+07:00")
    1743213600123
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"date-time without a zone offset: {text!r}")
    return (moment - _EPOCH) // _ONE_MS
