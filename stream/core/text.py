"""Input quoted in text for people: control, bidirectional and other non-printable characters
escaped, right-to-left text isolated, and a length cap.

Every human-facing string that quotes input (alert summaries, dead-letter reasons, the report)
goes through `escape_text`, so a terminal escape or a right-to-left override in an id can never
reach a pager, a chat or a terminal raw. Right-to-left letters are printable and stay, between
FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE: without them, a Hebrew or Arabic merchant id
takes the counts after it into its own direction ("Merchant <id> 68" shown as "68 <id>"). A
line that quotes escaped pieces is escaped again as a whole with `escape_line`, which keeps
those isolates. Imports nothing outside the standard library.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Characters that are shown as `\uXXXX`: C0 and C1 controls, DEL, the bidirectional
# embeddings/overrides/isolates and marks, and every other code point Python does not call
# printable (format characters, separators other than the space, surrogates, unassigned).
_PLAIN: Final = re.compile(r"[ -~]*")  # printable ASCII: the common case needs no work
DEFAULT_MAX_CHARS: Final = 128
ELLIPSIS: Final = "…"


def _escape_char(c: str) -> str:
    n = ord(c)
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def escape_text(s: str, max_chars: int = DEFAULT_MAX_CHARS, *, isolate: bool = True) -> str:
    """`s` with non-printable characters as `\\uXXXX` (`\\UXXXXXXXX` beyond the BMP), cut to at
    most `max_chars` characters of input, plus `…` when cut; between FSI and PDI (U+2068,
    U+2069) when it holds right-to-left text, so it cannot reorder the text around it.
    `isolate=False` for a machine-read field (an Alertmanager label, a key of `observed`),
    whose value must not change with the way people read it, and for markup that isolates
    it itself (HTML's `<bdi>`).

    >>> escape_text("QR\\x1b[31m1\\u202e")
    'QR\\\\u001b[31m1\\\\u202e'
    >>> escape_text("Warung Bu Sri")
    'Warung Bu Sri'
    >>> escape_text("x" * 10, 4)
    'xxxx…'
    >>> escape_text("M\\u05d0\\u05d1") == "\\u2068M\\u05d0\\u05d1\\u2069"
    True
    """
    cut = len(s) > max_chars
    if cut:
        s = s[:max_chars]
    if _PLAIN.fullmatch(s) is None:
        s = _escape_chars(s)
        if isolate and _right_to_left(s):
            return f"{FSI}{s}{ELLIPSIS if cut else ''}{PDI}"
    return s + ELLIPSIS if cut else s


def escape_line(s: str, max_chars: int) -> str:
    """`escape_text` for a line that quotes pieces `escape_text` wrote (an alert's summary, a
    dead-letter reason), escaped again as a net under them or when read back from a file: the
    isolates those pieces carry (FSI, text without bidirectional characters, PDI) stay, an
    isolate the cut leaves open is closed, and a word holding right-to-left text outside them
    (a piece that was not escaped) is isolated on its own. Every other bidirectional character
    is escaped. Escaping a line twice gives the same line.

    >>> line = "Merchant " + escape_text("\\u05d0\\u05d1") + " 68 of 70"
    >>> escape_line(line, 100) == line
    True
    >>> escape_line("Merchant \\u05d0\\u05d1: 68", 100) == "Merchant \\u2068\\u05d0\\u05d1:\\u2069 68"
    True
    >>> escape_line("a \\u2069b\\u2068", 100)
    'a \\\\u2069b\\\\u2068'
    """
    cut = len(s) > max_chars
    if cut:
        s = s[:max_chars]
    if _PLAIN.fullmatch(s) is not None:
        return s + ELLIPSIS if cut else s
    out: list[str] = []
    at = 0
    for m in _ISOLATE.finditer(s):
        closed = m.group().endswith(PDI)
        if not closed and not cut:
            continue  # (a lone FSI of the input's own: escaped below)
        out.append(_isolate_words(_escape_chars(s[at : m.start()])))
        inner = m.group()[1:-1] if closed else m.group()[1:]
        out.append(f"{FSI}{_escape_chars(inner)}{'' if closed else ELLIPSIS}{PDI}")
        at = m.end()
        if not closed:
            return "".join(out)  # (the cut's `…` is inside the isolate it closes)
    out.append(_isolate_words(_escape_chars(s[at:])))
    return "".join(out) + (ELLIPSIS if cut else "")


FSI: Final = "\u2068"  # FIRST STRONG ISOLATE: the isolate takes the direction of its first letter
PDI: Final = "\u2069"  # POP DIRECTIONAL ISOLATE


def _escape_chars(s: str) -> str:
    return "".join(c if c.isprintable() and c not in _BIDI else _escape_char(c) for c in s)


# The bidirectional classes that reorder the text after them in a left-to-right line: right-to-left
# letters (Hebrew, Arabic, Syriac, Thaana, ...) and Arabic-Indic digits, which act as them.
_RIGHT_TO_LEFT: Final = frozenset({"R", "AL", "AN"})


def _right_to_left(s: str) -> bool:
    return _PLAIN.fullmatch(s) is None and any(unicodedata.bidirectional(c) in _RIGHT_TO_LEFT for c in s)


_WORD: Final = re.compile(r"\S+")


def _isolate_words(s: str) -> str:
    if not _right_to_left(s):
        return s
    return _WORD.sub(lambda m: f"{FSI}{m.group()}{PDI}" if _right_to_left(m.group()) else m.group(), s)


# Bidirectional formatting characters (all category Cf, which `isprintable` already refuses);
# listed so the rule does not depend on the running Python's Unicode tables.
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# An isolate as `escape_text` writes it (FSI, text without a bidirectional character or a line
# break, PDI), or one the cut left open at the end.
_ISOLATE: Final = re.compile("\u2068[^\n\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*(?:\u2069|\\Z)")


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
