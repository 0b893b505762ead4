"""Failure-burst incidents: the open incident of each scope (queried and snapshotted on its
own), and the `FAILURE_BURST` alerts that report them (opened, updated, resolved) with their
one-line summary for payment operations. Every piece of input quoted in a summary (scope ids,
merchant names) goes through `_quote`. Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from . import ids
from .alerts import duration_text, rupiah
from .decisions import SCHEMA_VERSION, Decision
from .eventtime import WIB_OFFSET_MS, civil_from_days, format_ms
from .holds import IncidentEvent
from .scopes import scope_id, scope_type
from .signals import BAD, CODE_MAX_CHARS, COUNTS, EXPOSURE, FAILED, MINUTE_MS, NO_ANSWER, UNSETTLED, capped_codes
from .text import escape_text

Status = Literal["opened", "updated", "resolved"]


@dataclass
class Incident:
    incident_id: str
    start_minute: int
    last_bad_minute: int
    counts: list[int]
    expected_bad: float
    peak_score: float
    children: dict[str, int]
    codes: dict[str, int]
    samples: list[list[Any]]
    first_bad_ms: int | None
    calm_minutes: int = 0
    reported_bad: int = 0
    reported_minute: int = 0
    # The minute its `opened` alert was decided at (None: restored from a snapshot that does not
    # carry it). A rebuilt detector announces its open incidents again from it
    # (`BurstShell.incidents_records`).
    opened_minute: int | None = None
    # Payments and good payments of the calm minutes since its last minute that was not calm:
    # evidence that a low-share failure stopped adds up over a long calm at low volume
    # (`BurstDetector._follow`).
    calm_payments: int = 0
    calm_good: int = 0


# Incident fields saved beside the incidents, not in them (`IncidentBook.to_state`).
BESIDE = frozenset({"opened_minute", "calm_payments", "calm_good"})


class IncidentBook:
    """The open incident of each scope, by scope key (`switch:RINTIS`, `all`)."""

    def __init__(self) -> None:
        self._open: dict[str, Incident] = {}
        # When each scope's last incident resolved (minute), kept `BurstParams.flap_window_minutes`
        # past it: a scope failing again within that is flapping (`again_after`).
        self._resolved_at: dict[str, int] = {}

    def get(self, key: str) -> Incident | None:
        """The open incident of scope `key`, if any."""
        return self._open.get(key)

    def is_open(self, key: str) -> bool:
        return key in self._open

    def open_scopes(self) -> list[str]:
        """Scope keys with an open incident, sorted."""
        return sorted(self._open)

    def by_scope(self, stype: str, sid: str) -> Incident | None:
        """The open incident of the scope named as in an alert's `scope` ({type, id})."""
        return self._open.get("all" if stype == "all" else f"{stype}:{sid}")

    def open_incidents(self) -> list[dict[str, Any]]:
        """What is open, as an operator would ask for it: id, scope and since when."""
        return [
            {
                "incident_id": inc.incident_id,
                "scope": {"type": scope_type(key), "id": scope_id(key)},
                "since": format_ms(inc.start_minute * MINUTE_MS),
                "affected_payments": inc.counts[BAD],
            }
            for key, inc in sorted(self._open.items())
        ]

    def opening_events(self, probe_age_ms: int) -> list[IncidentEvent]:
        """The `opened` timeline event of each open incident, as its alert made it
        (`holds.incident_event`), earliest first; an incident restored without its opening
        minute has none."""
        events = [
            IncidentEvent(
                (inc.opened_minute + 1) * MINUTE_MS + probe_age_ms,
                "opened",
                inc.incident_id,
                scope_type(key),
                scope_id(key),
            )
            for key, inc in self._open.items()
            if inc.opened_minute is not None
        ]
        events.sort(key=lambda e: (e.at_ms, e.incident_id))
        return events

    def open(self, key: str, incident: Incident, forget_before: int | None = None) -> None:
        """Open `incident` for scope `key`; resolutions of scopes without an open incident from
        before minute `forget_before` are forgotten (no later incident can be flapping by them)."""
        if key in self._open:
            raise ValueError(f"scope {key!r} already has an open incident")
        self._open[key] = incident
        if forget_before is not None:
            old = [k for k, m in self._resolved_at.items() if m < forget_before and k not in self._open]
            for k in old:
                del self._resolved_at[k]

    def resolve(self, key: str, minute: int) -> Incident:
        self._resolved_at[key] = minute
        return self._open.pop(key)

    def again_after(self, key: str, window: int) -> int | None:
        """Minutes from the resolution of scope `key`'s incident before its open one (the end of
        the minute it was decided at) to the open one's start, when that is within `window`
        minutes (the scope is flapping), else None.

        >>> book = IncidentBook()
        >>> book.open("switch:RINTIS", Incident("i1", 600, 603, [0] * 6, 0.0, 0.0, {}, {}, [], None))
        >>> _ = book.resolve("switch:RINTIS", 606)
        >>> book.open("switch:RINTIS", Incident("i2", 610, 610, [0] * 6, 0.0, 0.0, {}, {}, [], None))
        >>> book.again_after("switch:RINTIS", 30), book.again_after("switch:RINTIS", 2)
        (3, None)
        """
        inc, before = self._open.get(key), self._resolved_at.get(key)
        if inc is None or before is None or inc.start_minute - (before + 1) > window:
            return None
        return max(inc.start_minute - (before + 1), 0)

    def __len__(self) -> int:
        return len(self._open)

    def to_state(self) -> dict[str, Any]:
        """The open incidents as JSON-ready named fields (`from_state` rebuilds them exactly)."""
        # The opening minutes beside the incidents, not in them: a worker of an earlier release
        # builds each incident from its fields by name and would refuse the whole snapshot (a
        # rollback would rebuild the detector from the whole signals topic).
        # The calm streaks likewise.
        return {
            "open": [
                [key, {k: v for k, v in asdict(inc).items() if k not in BESIDE}]
                for key, inc in sorted(self._open.items())
            ],
            "resolved_at": sorted(self._resolved_at.items()),
            "opened_minute": sorted(
                (key, inc.opened_minute) for key, inc in self._open.items() if inc.opened_minute is not None
            ),
            "calm_streak": sorted(
                (key, inc.calm_payments, inc.calm_good) for key, inc in self._open.items() if inc.calm_payments
            ),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IncidentBook:
        if "resolved_at" not in state:
            # Written by a worker that does not keep resolutions (a rolling upgrade from one): it
            # cannot say which scopes resolved within the flap window, and read as none it would
            # resolve a flapping scope's next incident after 3 calm minutes instead of 15, holds
            # released minutes before replay releases them. Not usable: the caller rebuilds from
            # the signals, exactly.
            raise ValueError("incidents saved without their resolutions (a worker that does not keep them)")
        book = cls()
        opened = {key: int(m) for key, m in state.get("opened_minute", [])}
        streaks = {key: (int(n), int(good)) for key, n, good in state.get("calm_streak", [])}
        for key, fields in state["open"]:
            n, good = streaks.get(key, (0, 0))
            book._open[key] = Incident(
                **{"opened_minute": opened.get(key), "calm_payments": n, "calm_good": good, **fields}
            )
        book._resolved_at = {key: int(m) for key, m in state["resolved_at"]}
        return book


# -- the alert ----------------------------------------------------------------------------


def incident_alert(
    key: str,
    inc: Incident,
    status: Status,
    minute: int,
    score: float,
    top_children: int,
    again_after: int | None = None,
) -> Decision:
    """The `FAILURE_BURST` alert of incident `inc` of scope `key`, decided at the end of
    `minute`; `score` is the minute's (the peak's when resolved). `again_after`: the minutes
    since the scope's incident before resolved, when it is flapping (`IncidentBook.again_after`)."""
    stype, sid = scope_type(key), scope_id(key)
    end_minute = inc.last_bad_minute + 1 if status == "resolved" else minute + 1
    start_ms, end_ms = inc.start_minute * MINUTE_MS, end_minute * MINUTE_MS
    c = inc.counts
    payments, bad = c[0], c[BAD]
    observed: dict[str, float] = {name: c[i] for i, name in enumerate(COUNTS)}
    observed["bad_rate"] = round(bad / payments, 4) if payments else 0.0
    expected = {
        "bad": round(inc.expected_bad, 2),
        "bad_rate": round(inc.expected_bad / payments, 4) if payments else 0,
    }
    decided_ms = (minute + 1) * MINUTE_MS
    oldest_s = max(0.0, (decided_ms - inc.first_bad_ms) / 1000) if inc.first_bad_ms is not None else 0.0
    children = sorted(inc.children.items(), key=lambda kv: (-kv[1], kv[0]))
    top: list[dict[str, Any]] = []
    per_type: dict[str, int] = {}
    for child, n in children:
        t = scope_type(child)
        if per_type.get(t, 0) >= top_children:
            continue
        per_type[t] = per_type.get(t, 0) + 1
        top.append({"scope": {"type": t, "id": scope_id(child)}, "observed": {"bad": n}})
    name = scope_name(stype, sid)
    what = f"{bad} of {payments} payments failed or unsettled"
    normal = f"{_breakdown(c)}; about {_count(inc.expected_bad)} expected"
    if status == "resolved":
        # The window is the failing span (to the last bad minute); the counts run on through the
        # calm minutes that resolved it, so the summary gives both ends: read against the shorter
        # span, the counts would seem larger than the `updated` alert's, at a lower rate.
        span = f"{_wib_clock(start_ms, decided_ms)} to {_wib_clock(end_ms, decided_ms)} WIB"
        summary = (
            f"RESOLVED {name}: failing from {span} ({duration_text(end_ms - start_ms)}); {what} from "
            f"{_wib_clock(start_ms, decided_ms)} to its resolution at {_wib_clock(decided_ms, decided_ms)} WIB "
            f"({normal}); {rupiah(c[EXPOSURE])} was exposed"
        )
        severity = "info"
    else:
        worst = ", ".join(f"{scope_name(t['scope']['type'], t['scope']['id'])} {t['observed']['bad']}" for t in top[:3])
        summary = (
            f"{name}: {what} since {_wib_clock(start_ms, decided_ms)} WIB ({normal}); "
            f"{rupiah(c[EXPOSURE])} exposed"
            + (f"; failing again {again_after} min after its last incident resolved" if again_after is not None else "")
            + (f"; most affected: {worst}" if worst else "")
        )
        severity = "warning" if stype == "merchant" else "critical"
    value: dict[str, Any] = {
        "alert_id": ids.alert_id("FAILURE_BURST", inc.incident_id, status, minute),
        "kind": "FAILURE_BURST",
        "severity": severity,
        "scope": {"type": stype, "id": sid},
        "window": {"start": format_ms(start_ms), "end": format_ms(end_ms)},
        "observed": observed,
        "expected": expected,
        "score": round(score, 2),
        "references": [s[1] for s in inc.samples],
        "summary": summary,
        "occurred_at": format_ms(decided_ms),
        "partition": None,
        "status": status,
        "incident_id": inc.incident_id,
        "exposure_idr": c[EXPOSURE],
        "affected_payments": bad,
        "oldest_pending_s": oldest_s,
        "top_children": top,
        "samples": [
            {"reference": s[1], "requested_at": format_ms(s[0]), "state": s[2], "account_id_masked": s[3]}
            for s in inc.samples
        ],
        "response_codes": _response_codes(inc.codes),
        "schema_version": SCHEMA_VERSION,
    }
    if not value["samples"] or any(s["account_id_masked"] is None for s in value["samples"]):
        value["samples"] = [{k: v for k, v in s.items() if v is not None} for s in value["samples"]]
    return Decision("alerts", sid.encode("utf-8"), value, decided_ms)


def scope_limit_alert(stype: str, limit: int, new: int, replaced: int, untracked: int, minute: int) -> Decision:
    """`SCOPE_LIMIT`: the detector tracks at most `limit` scopes of type `stype`, and in `minute`
    `new` scopes of that type arrived with no free place: `replaced` took the places of scopes
    still learning their baseline, `untracked` found none and count only in broader scopes."""
    decided_ms = (minute + 1) * MINUTE_MS
    summary = (
        f"Burst detection tracks at most {limit} {stype} scopes and reached it at "
        f"{_wib_clock(minute * MINUTE_MS, decided_ms)} WIB: {new} new {stype} ids, {replaced} in place of scopes "
        f"still learning, {untracked} judged only within the broader scopes they belong to; "
        "many distinct ids can mean a producer sending random ones"
    )
    value: dict[str, Any] = {
        "alert_id": ids.alert_id("SCOPE_LIMIT", stype, minute),
        "kind": "SCOPE_LIMIT",
        "severity": "warning",
        "scope": {"type": "all", "id": "all"},
        "window": {"start": format_ms(minute * MINUTE_MS), "end": format_ms(decided_ms)},
        "observed": {"new_scopes": new, "replaced_scopes": replaced, "untracked_scopes": untracked},
        "expected": {"max_scopes": limit},
        "score": None,
        "references": [],
        "summary": summary,
        "occurred_at": format_ms(decided_ms),
        "partition": None,
        "schema_version": SCHEMA_VERSION,
        "scope_type": stype,
    }
    return Decision("alerts", b"all", value, decided_ms)


# -- the summary's words -----------------------------------------------------------------


def _quote(text: str) -> str:
    """Input text as it may appear in a summary line (`text.escape_text`: controls,
    bidirectional and other non-printable characters as `\\uXXXX`, long ids cut). The one
    function every quoted piece of input in burst alerts goes through.

    >>> _quote("RINTIS")
    'RINTIS'
    >>> _quote("EVIL\\x1b[2J\\u202eX")
    'EVIL\\\\u001b[2J\\\\u202eX'
    """
    return escape_text(text)


def _response_codes(codes: dict[str, int]) -> dict[str, int]:
    r"""An incident's response codes as an alert shows them: escaped (`_quote`), cut, at most
    `signals.CODES_KEPT` of them (an incident from before the bound may hold more).

    >>> _response_codes({"05": 3, "[31m": 1})
    {'05': 3, '\\u001b[31m': 1}
    """
    shown: dict[str, int] = {}
    for code, n in codes.items():
        code = escape_text(code, CODE_MAX_CHARS, keep_right_to_left=True)  # (keys of a field)
        shown[code] = shown.get(code, 0) + n
    return dict(sorted(capped_codes(shown).items()))


def scope_name(stype: str, sid: str) -> str:
    if stype == "all":
        return "All payments"
    if stype == "merchant" and sid.startswith("MCC-"):
        return f"Small merchants of MCC {_quote(sid[4:])}"
    return f"{stype.capitalize()} {_quote(sid)}"


def _count(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def _breakdown(c: list[int]) -> str:
    """What the bad payments were, for a summary line: a failure-only incident exposes no
    rupiah, and its line says why.

    >>> _breakdown([100, 60, 50, 10, 0, 0])
    '50 failed, 10 unsettled'
    """
    parts = [(c[FAILED], "failed"), (c[UNSETTLED], "unsettled"), (c[NO_ANSWER], "without an answer")]
    return ", ".join(f"{n} {word}" for n, word in parts if n) or "none bad"


def _wib_clock(at_ms: int, read_at_ms: int) -> str:
    """The WIB clock of `at_ms` as a summary gives it: with its day when that is not the WIB
    day of `read_at_ms` (the alert's own time), and the year when that is not its year either,
    so "since 23:50" read at 00:10 is not taken for a time still to come, nor a two-day
    incident for a short one.

    >>> _wib_clock(1743263400000, 1743264600000)  # 22:50 read at 23:10 the same day
    '22:50'
    >>> _wib_clock(1743267000000, 1743268200000)  # 23:50 read at 00:10
    'Sat 29 Mar 23:50'
    >>> _wib_clock(1743267000000, 1767225600000)  # read on 1 January 2026
    'Sat 29 Mar 2025 23:50'
    """
    local = (at_ms + WIB_OFFSET_MS) // MINUTE_MS
    clock = f"{(local // 60) % 24:02d}:{local % 60:02d}"
    day, read_day = local // 1440, (read_at_ms + WIB_OFFSET_MS) // MINUTE_MS // 1440
    if day == read_day:
        return clock
    year, month, dom = civil_from_days(day)
    weekday = _WEEKDAYS[(day + 3) % 7]  # (1970-01-01 was a Thursday)
    same_year = civil_from_days(read_day)[0] == year
    return f"{weekday} {dom} {_MONTHS[month - 1]}{'' if same_year else f' {year}'} {clock}"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
