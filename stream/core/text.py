"""Input quoted in text for people: control, bidirectional and other non-printable characters
escaped, right-to-left letters too, and a length cap.

Every human-facing string that quotes input (alert summaries, dead-letter reasons, the report)
goes through `escape_text`, so a terminal escape or a right-to-left override in an id can never
reach a pager, a chat or a terminal raw. Right-to-left letters (Hebrew, Arabic, ...) are printable
and allowed in an identifier, but shown raw they take the counts after them into their own
direction ("Merchant <id>: 68 of 70" shown as "Merchant 68 :<id> of 70"); they are escaped like
the rest, not wrapped in isolates: alert text that quotes input carries no bidirectional
character at all (CONTRACT.md "Alerts"). Imports nothing outside the standard library.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Characters that are shown as `\uXXXX`: C0 and C1 controls, DEL, the bidirectional
# embeddings/overrides/isolates and marks, every other code point Python does not call
# printable (format characters, separators other than the space, surrogates, unassigned), and
# right-to-left letters and Arabic-Indic digits (bidirectional classes R, AL, AN).
_PLAIN: Final = re.compile(r"[ -~]*")  # printable ASCII: the common case needs no work
DEFAULT_MAX_CHARS: Final = 128
ELLIPSIS: Final = "…"


def _escape_char(c: str) -> str:
    n = ord(c)
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def escape_text(s: str, max_chars: int = DEFAULT_MAX_CHARS, *, keep_right_to_left: bool = False) -> str:
    """`s` with non-printable characters and right-to-left letters as `\\uXXXX` (`\\UXXXXXXXX`
    beyond the BMP), cut to at most `max_chars` characters as shown (an escape counts its 6 or
    10 and is never split), plus `…` when cut. Counted as shown, not as read: an id of 128
    Hebrew letters shown whole would be 768 characters, and a summary quoting two such ids
    would lose its end, cut mid-escape, to the summary's own cap; counted so, escaping a
    result again with the same cap leaves it unchanged.
    `keep_right_to_left=True` for a machine-read value (an Alertmanager label, a key of a
    burst alert's `response_codes`), which keeps the letters as they came.

    >>> escape_text("QR\\x1b[31m1\\u202e")
    'QR\\\\u001b[31m1\\\\u202e'
    >>> escape_text("Warung Bu Sri")
    'Warung Bu Sri'
    >>> escape_text("x" * 10, 4)
    'xxxx…'
    >>> escape_text("M\\u05d0-7")
    'M\\\\u05d0-7'
    >>> escape_text("M\\u05d0\\u05d1", 8)
    'M\\\\u05d0…'
    """
    cut = len(s) > max_chars
    if cut:
        s = s[:max_chars]  # (an escape only lengthens: no more of the input can be shown)
    if _PLAIN.fullmatch(s) is None:
        rtl = _NONE if keep_right_to_left else _RIGHT_TO_LEFT
        pieces = [
            c if c.isprintable() and c not in _BIDI and unicodedata.bidirectional(c) not in rtl else _escape_char(c)
            for c in s
        ]
        s = "".join(pieces)
        if len(s) > max_chars:
            n = shown = 0
            while shown + len(pieces[n]) <= max_chars:  # (stops inside `pieces`: together they are longer)
                shown += len(pieces[n])
                n += 1
            s, cut = "".join(pieces[:n]), True
    return s + ELLIPSIS if cut else s


# Bidirectional formatting characters (all category Cf, which `isprintable` already refuses);
# listed so the rule does not depend on the running Python's Unicode tables.
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# The bidirectional classes that reorder the text after them in a left-to-right line:
# right-to-left letters (Hebrew, Arabic, Syriac, Thaana, ...) and Arabic-Indic digits.
_RIGHT_TO_LEFT: Final = frozenset({"R", "AL", "AN"})
_NONE: Final[frozenset[str]] = frozenset()


def escape_controls(s: str, max_chars: int) -> str:
    r"""`s` with the control characters (U+0000-U+001F, U+007F-U+009F) and the bidirectional
    formatting characters as `\uXXXX`, cut to at most `max_chars` characters of input, plus `…`
    when cut. A fixed set, unlike `escape_text` (which also escapes what the running Python's
    Unicode tables call not printable): for text that becomes an id that decides (a merchant
    pool's), the same on every interpreter.

    >>> escape_controls("59\x1b[2J\u202e\u2028", 16)
    '59\\u001b[2J\\u202e\u2028'
    """
    cut = len(s) > max_chars
    if cut:
        s = s[:max_chars]
    if _PLAIN.fullmatch(s) is None:
        s = "".join(_escape_char(c) if c < " " or "\x7f" <= c <= "\x9f" or c in _BIDI else c for c in s)
    return s + ELLIPSIS if cut else s


def escape_ascii(s: str) -> str:
    r"""`s` in printable ASCII that `unescape_ascii` turns back into `s` exactly: every other
    character as `\uXXXX` (`\UXXXXXXXX` beyond the BMP) and a backslash as `\\`, whole (no cap).
    For an id to be typed or pasted back (a command in a hint): `escape_text` leaves a backslash
    as it is, so an id holding a literal `\u05d0` and one holding the Hebrew letter read alike
    there, and a right-to-left letter or a combining mark left raw moves what is around it.

    >>> escape_ascii("M\u05d0-7"), escape_ascii("QR\\u05d0"), escape_ascii("caf\u00e9 \U0001f600")
    ('M\\u05d0-7', 'QR\\\\u05d0', 'caf\\u00e9 \\U0001f600')
    """
    if _PLAIN.fullmatch(s) is not None and "\\" not in s:
        return s
    return "".join("\\\\" if c == "\\" else c if " " <= c <= "~" else _escape_char(c) for c in s)


_ESCAPE: Final = re.compile(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(\\))|\\")


def _unescape_one(m: re.Match[str]) -> str:
    hex4, hex8, backslash = m.groups()
    if backslash is not None:
        return "\\"
    digits = hex4 or hex8
    if digits is None:
        raise ValueError(f"a backslash at character {m.start() + 1} starts no \\uXXXX, \\UXXXXXXXX or \\\\")
    if int(digits, 16) > 0x10FFFF:
        raise ValueError(f"\\U{digits} at character {m.start() + 1} names no character")
    return chr(int(digits, 16))


def unescape_ascii(s: str) -> str:
    r"""The text `escape_ascii` wrote: `\uXXXX`, `\UXXXXXXXX` and `\\` read back, everything else
    as it is. A backslash that starts none of them, or a code point past U+10FFFF, is a
    `ValueError` naming where: taken as it is, a mistyped escape would name another id.

    >>> unescape_ascii("M\\u05d0-7") == "M\u05d0-7", unescape_ascii("QR\\\\u05d0") == "QR\\u05d0"
    (True, True)
    >>> unescape_ascii("QR\\x41")
    Traceback (most recent call last):
    ValueError: a backslash at character 3 starts no \uXXXX, \UXXXXXXXX or \\
    """
    return _ESCAPE.sub(_unescape_one, s) if "\\" in s else s


# Ten or more digits in a row, single spaces, dots, hyphens or slashes allowed between them: how
# an account number looks (Indonesian banks' have 10 digits or more), written plain or grouped.
# A date is fewer (`2025-03-29`: 8), and a QRIS reference's runs too (`QR202503292BBEEB00000001`).
_LONG_NUMBER: Final = re.compile(r"\d(?:[ ./-]?\d){9,}")


# A date at a run's start (`2025-03-29`, `29/03/2025`): a date-time with a space for its `T`
# (`2025-03-29 07:00:00Z`, the commonest bad `occurred_at`) makes a run of 10 digits with its
# hour, whose date masked would hide what the reason is about. What follows it is masked alone.
_DATE: Final = re.compile(r"\d{4}([-/.])\d\d\1\d\d|\d\d([-/.])\d\d\2\d{4}")


def _mask_digits(match: re.Match[str]) -> str:
    run = match.group()
    date = _DATE.match(run)
    if date is not None:
        return run[: date.end()] + mask_numbers(run[date.end() :])
    hidden = sum(c.isdigit() for c in run) - 4
    out = []
    for c in run:
        if c.isdigit() and hidden > 0:
            hidden -= 1
            c = "*"
        out.append(c)
    return "".join(out)


def mask_numbers(s: str) -> str:
    """`s` with every long number masked as alerts mask account ids: its last four digits stay.
    For input quoted where a field is wrong (a dead letter's reason, which the DEAD_LETTER alert,
    the dashboard and reports repeat): a producer that shifted a column, or keyed its records by
    account, puts an account number there.

    >>> mask_numbers("7700123456789"), mask_numbers("key 7700 1234 56789, 2025-03-29T07:00:00Z")
    ('*********6789', 'key **** **** *6789, 2025-03-29T07:00:00Z')
    >>> mask_numbers("QR202503292BBEEB00000001")
    'QR202503292BBEEB00000001'
    >>> mask_numbers("2025-03-29 07:00:00Z"), mask_numbers("2025-03-29 7700123456789")
    ('2025-03-29 07:00:00Z', '2025-03-29 *********6789')
    """
    return _LONG_NUMBER.sub(_mask_digits, s)


# Past the characters shown, what `escape_masked` masks too: a number the cut splits is masked
# as it would be whole (its last four digits fall past the cut, and at least ten of its digits
# are before it: a run is a digit every two characters at least).
_MASK_MARGIN: Final = 24


def escape_masked(s: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """`escape_text` of `s` with long numbers masked (`mask_numbers`), masking only what is shown
    and a margin: a record key has no size limit, and a megabyte of digits masked whole costs
    a rejected record 0.6 s.

    >>> escape_masked("7700123456789" * 1000, 12) == escape_text(mask_numbers("7700123456789" * 1000), 12)
    True
    >>> escape_masked("key 770012345678", 8)
    'key ****…'
    """
    return escape_text(mask_numbers(s[: max_chars + _MASK_MARGIN]), max_chars)
