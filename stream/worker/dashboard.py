"""The operations dashboard (`/qris/dashboard`): one server-rendered HTML page, no CDN,
refreshed every few seconds by a few lines of inline script (`REFRESH`; a browser without
scripts falls back to `<meta refresh>`). What is burning (open incidents with scope,
exposure and holds), refunds / holds / cancellations per minute, feed health per partition
(watermark delay, records waiting, silent feeds, event time paged as standing still) and dead
letters.

Every text that comes from input or alerts is HTML-escaped, and every id put in a sentence is in
a `<bdi>`: a right-to-left id cannot reorder the counts beside it. Pure rendering: no Faust imports.
"""

from __future__ import annotations

import html
from typing import Any

from ..core.alerts import rupiah
from ..core.eventtime import BadTimestamp, parse_ms, wib_and_utc
from ..core.holds import Hold, Incident
from ..core.partition import PartitionEngine
from ..core.routing import SEVERITY_RANK
from ..core.scopes import LEVEL
from ..core.text import escape_text
from .watch import WorkerWatch, open_holds

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40em}
td,th{border:1px solid #d5d9e0;padding:.3em .6em;text-align:left}
th{background:#eceff4} .num{text-align:right} .bad{color:#b00020;font-weight:600} .ok{color:#1b7f3b}
.bar{display:inline-block;height:.8em;background:#3b6fd8;vertical-align:middle} .held{background:#d89b3b}
.cancel{background:#8a8a8a} .released{background:#6fb26f} .muted{color:#667}
td{overflow-wrap:anywhere;max-width:40em} td.num,td:nth-child(2){overflow-wrap:normal}
.stale{background:#b00020;color:#fff;padding:.5em .8em;font-weight:600;margin:0 0 .8em}
"""

# The page fetches itself and swaps its body in, so a worker that died or froze does not leave
# the browser on its own error page (which a `<meta refresh>` cannot leave) or loading for ever:
# the last figures stay, under a banner that says since when the worker has not answered, and
# the page keeps trying. A fetch not answered within 4 s counts as not answering.
REFRESH = """
(function () {
  var every = %(every)d, lastOk = Date.now();
  function wib(ms) {
    return new Date(ms).toLocaleTimeString("en-GB", {timeZone: "Asia/Jakarta", hour12: false}) + " WIB";
  }
  function stale(why) {
    var b = document.getElementById("stale");
    if (!b) return;
    b.hidden = false;
    b.textContent = "This worker has not answered since " + wib(lastOk) + " (" + why + "): the figures below "
      + "are from then. Trying again every " + every / 1000 + " s.";
  }
  function tick() {
    var ctl = new AbortController(), timer = setTimeout(function () { ctl.abort(); }, 4000);
    fetch(location.href, {cache: "no-store", signal: ctl.signal})
      .then(function (r) { if (!r.ok) throw new Error("answered HTTP " + r.status); return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        if (!doc.getElementById("stale")) throw new Error("answered with another page");
        document.body.replaceWith(document.adoptNode(doc.body));
        document.title = doc.title;
        lastOk = Date.now();
      })
      .catch(function (e) {
        stale(e.name === "AbortError" ? "no answer within 4 s" : e.name === "TypeError" ? "unreachable" : e.message);
      })
      .finally(function () { clearTimeout(timer); setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _id(x: Any, max_chars: int = 128) -> str:
    """An id from input as the page shows it: escaped (`escape_text`), in `<bdi>` so that whatever
    the browser's rules for what is left make of it stays inside."""
    return f"<bdi>{_e(escape_text(str(x), max_chars))}</bdi>"


def incident_rank(
    scope_type: str, resolved: bool, opened_at_ms: int, incident_id: str, exposure_idr: int = 0
) -> tuple[bool, int, int, int, str]:
    """Where an incident goes in a list for operations, the first first: open before resolved,
    the widest scope first (`all`, an issuer, a switch or acquirer, then merchants: the
    critical before the warnings), the most exposed, the newest. Both ways the page lists
    incidents use it: the alerts this worker sent and the incidents topic's timeline, which
    shows only the first `SHOWN_INCIDENTS`, so an `all` or switch incident is never behind
    twenty merchants'.

    >>> merchant, switch = ("merchant", False, 9, "a"), ("switch", False, 1, "b")
    >>> sorted([merchant, switch, ("all", True, 5, "c")], key=lambda x: incident_rank(*x))[0][0]
    'switch'
    """
    return (resolved, LEVEL.get(scope_type, len(LEVEL)), -exposure_idr, -opened_at_ms, incident_id)


def render(
    watch: WorkerWatch, engines: dict[int, PartitionEngine], now_s: float, app_id: str, refresh_s: int = 5
) -> str:
    now_ms = int(now_s * 1000)
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<noscript><meta http-equiv="refresh" content="{refresh_s}"></noscript>',
        f"<title>qris-guard: {_e(app_id)}</title><style>{STYLE}</style>",
        f"<script>{REFRESH % {'every': refresh_s * 1000}}</script></head><body>",
        "<div id=stale class=stale hidden></div>",
        f"<h1>qris-guard operations: {_e(app_id)}</h1>",
        f"<div class=muted>This worker, {wib_and_utc(now_ms)}; started {wib_and_utc(watch.started_at_ms)}; "
        f"partitions {_e(sorted(engines)) or 'none yet'} (this worker's only: a group of several workers shows each "
        "worker's partitions, refunds and alerts on that worker's own page). Times are WIB (UTC+7), UTC in "
        "brackets.</div>",
    ]
    held = open_holds(engines)
    out += _incidents(watch, held, engines)
    out += _per_minute(watch, held)
    out += _feeds(watch, engines, now_ms)
    out += _dead_letters(watch)
    out.append("</body></html>")
    return "\n".join(out)


# Incidents named one by one in a paragraph, at most (the rest counted).
SHOWN_INCIDENTS = 20


def _timeline(engines: dict[int, PartitionEngine]) -> dict[str, Incident]:
    """The incidents this worker's engines know from the incidents topic (every worker reads it
    when holds are on), whichever worker runs the burst detector."""
    out: dict[str, Incident] = {}
    for eng in engines.values():
        for inc in eng.incidents.incidents.values():
            known = out.get(inc.incident_id)
            if known is None or (known.resolved_at_ms is None and inc.resolved_at_ms is not None):
                out[inc.incident_id] = inc
    return out


def _incidents(watch: WorkerWatch, held: list[Hold], engines: dict[int, PartitionEngine]) -> list[str]:
    timeline = _timeline(engines) if not watch.incidents else {}
    # Open by the incidents topic but not sent by this worker: the burst detector runs on another
    # worker (or is rebuilt here only at its next report). Never "nothing is burning" then.
    elsewhere = sorted(
        (i for i in timeline.values() if i.resolved_at_ms is None),
        key=lambda i: incident_rank(i.scope_type, False, i.opened_at_ms, i.incident_id),
    )
    n_open = len(watch.incidents) or len(elsewhere)
    out = [f'<h2 id=incidents>Open incidents: <span class="{"bad" if n_open else "ok"}">{n_open}</span></h2>']
    if not n_open and not held:
        return [*out, "<p class=ok>Nothing is burning.</p>"]
    if not watch.incidents:
        if elsewhere:
            shown = elsewhere[:SHOWN_INCIDENTS]
            # (The timeline keeps a scope's raw id: bidirectional and control characters escaped, as in
            # the alerts' text.)
            scopes = ", ".join(f"{_e(i.scope_type)} {_id(i.scope_id, 48)}" for i in shown)
            more = f" and {len(elsewhere) - len(shown)} more" if len(elsewhere) > len(shown) else ""
            out.append(
                f"<p class=bad>Open by the incidents topic: {scopes}{_e(more)}. The burst detector does not "
                "run on this worker (or is rebuilt here only at its next report): exposure, payments and summaries "
                "are on the page of the worker that runs it.</p>"
            )
        if held:
            # Holds still open: their incidents resolved less than G ago, or this worker does not
            # know them open (the detector runs on another worker, or is rebuilt here only at the
            # next burst report after a restart or a rebalance). Not "nothing is burning".
            # In `incident_rank`'s order (`_held_rank`).
            every_id = sorted({i for h in held for i in h.incident_ids}, key=lambda i: _held_rank(i, timeline))
            ids = every_id[:SHOWN_INCIDENTS]  # (a hostile minute opened thousands)
            more = f" and {len(every_id) - len(ids)} more" if len(every_id) > len(ids) else ""
            grace_ms = int(watch.settings.hold_grace_s * 1000)
            ends = [
                f"{i} resolved {wib_and_utc(r)}: its holds end about {wib_and_utc(r + grace_ms)} of event time"
                for i in ids
                if (known := timeline.get(i)) is not None and (r := known.resolved_at_ms) is not None
            ]
            when = f" ({'; '.join(ends)})" if ends else ""
            # Every incident of the holds known resolved here: nothing is open, the holds wait out G.
            all_resolved = not more and len(ends) == len(ids)
            if elsewhere:
                but = ""
            elif all_resolved:
                but = "No incident is open, but "
            else:
                but = "No incident is known open on this worker, but "
            rebuilt = (
                ""
                if all_resolved
                else " After a restart or a rebalance the open incidents show here again once the burst detector is "
                "rebuilt on this worker (at its next report); it may run on another worker."
            )
            out.append(
                f"<p class=bad>{but}{len(held)} refund(s) are still held by incident(s) {_e(', '.join(ids))}{_e(more)}"
                f"{_e(when)}: a hold ends G after its incidents resolve, or at its deadline + H.{rebuilt}</p>"
            )
        return out
    out.append(
        "<table><tr><th>scope</th><th>status</th><th>since</th><th class=num>payments bad</th>"
        "<th class=num>exposure</th><th class=num>holds</th><th>summary</th></tr>"
    )
    # (A hold counts for the incident it is attributed to, its first: README, "Refund holds".)
    by_incident: dict[str, list[int]] = {}
    for h in held:
        if h.incident_ids:
            by_incident.setdefault(h.incident_ids[0], []).append(h.amount)
    for inc in sorted(watch.incidents.values(), key=_alert_rank):
        amounts = by_incident.get(str(inc.get("incident_id")), [])
        n_held = f"{len(amounts)} ({rupiah(sum(amounts))})" if amounts else "0"
        window = inc.get("window") or {}
        out.append(
            f"<tr class=incident><td>{_e(inc['scope']['type'])} {_id(inc['scope']['id'])}</td>"
            f"<td class=bad>{_e(inc.get('status'))}</td>"
            f"<td>{_e(_since(window.get('start')))}</td><td class=num>{_e(inc.get('affected_payments'))}</td>"
            f"<td class=num>{_e(rupiah(int(inc.get('exposure_idr') or 0)))}</td><td class=num>{_e(n_held)}</td>"
            f"<td>{_e(inc.get('summary'))}</td></tr>"
        )
    out.append("</table>")
    return out


def _alert_rank(v: dict[str, Any]) -> tuple[bool, int, int, int, str]:
    """`incident_rank` of an incident by its latest alert."""
    try:
        opened_ms = parse_ms((v.get("window") or {}).get("start") or "")
    except BadTimestamp:
        opened_ms = 0
    return incident_rank(
        str(v["scope"]["type"]),
        v.get("status") == "resolved",
        opened_ms,
        str(v.get("incident_id")),
        int(v.get("exposure_idr") or 0),
    )


def _held_rank(incident_id: str, timeline: dict[str, Incident]) -> tuple[bool, int, int, int, str]:
    """`incident_rank` of an incident that holds refunds here; one this worker's timeline does
    not know (it may be open) after the open ones it knows, before the resolved."""
    inc = timeline.get(incident_id)
    if inc is None:
        return incident_rank("", False, 0, incident_id)
    return incident_rank(inc.scope_type, inc.resolved_at_ms is not None, inc.opened_at_ms, incident_id)


def _duration(seconds: float) -> str:
    """A delay as people read it: `42 s`, `12.5 min`, `3.2 h`, `613.0 d`."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.0f} s"


def _since(start: str | None) -> str:
    try:
        return wib_and_utc(parse_ms(start)) if start else "-"
    except BadTimestamp:
        return str(start)


def _per_minute(watch: WorkerWatch, held: list[Hold]) -> list[str]:
    rows = watch.minutes(15)
    top = max([sum(c.values()) for _m, c in rows] + [1])
    out = [
        "<h2>Refunds, holds and cancellations per minute (last 15, wall clock)</h2>",
        "<table><tr><th>minute (WIB)</th><th class=num>requested</th><th class=num>held</th>"
        "<th class=num>released without payment</th><th class=num>cancelled</th><th></th></tr>",
    ]
    for minute, c in rows:
        bars = "".join(
            f'<span class="bar {cls}" style="width:{int(200 * c.get(kind, 0) / top)}px"></span>'
            for kind, cls in (("requested", ""), ("held", "held"), ("released", "released"), ("cancelled", "cancel"))
        )
        out.append(
            f"<tr><td>{_e(wib_and_utc(minute * 60_000)[11:16])}</td><td class=num>{c.get('requested', 0)}</td>"
            f"<td class=num>{c.get('held', 0)}</td><td class=num>{c.get('released', 0)}</td>"
            f"<td class=num>{c.get('cancelled', 0)}</td><td>{bars}</td></tr>"
        )
    out.append("</table>")
    r = watch.refund_rupiah
    out.append(
        f"<p>Sent by this worker since it started ({_e(wib_and_utc(watch.started_at_ms))}): requested "
        f"{_e(rupiah(r.get('requested', 0)))}, held {_e(rupiah(r.get('held', 0)))}, released without payment "
        f"{_e(rupiah(r.get('released', 0)))}, cancelled {_e(rupiah(r.get('cancelled', 0)))}; holds open now: "
        f"{len(held)}.</p>"
    )
    return out


def _feeds(watch: WorkerWatch, engines: dict[int, PartitionEngine], now_ms: int) -> list[str]:
    out = [
        "<h2>Feed health</h2><table><tr><th>partition</th><th>watermark</th><th class=num>delay</th>"
        "<th class=num>waiting</th><th class=num>references</th><th>silent feeds</th><th>event time</th></tr>"
    ]
    for p, eng in sorted(engines.items()):
        w = eng.watermark_ms
        known = w > -(2**61)
        delay = _duration((now_ms - w) / 1000) if known else "-"
        silent = [t for t, s in zip(watch.topics, eng.silent, strict=True) if s]
        waiting = sum(len(v) for v in eng.pending.values())
        out.append(
            f"<tr><td>{p}</td><td>{_e(wib_and_utc(w) if known else 'not yet (a stream has no record)')}</td>"
            f"<td class=num>{_e(delay)}</td><td class=num>{waiting}</td><td class=num>{len(eng.refs)}</td>"
            f'<td class="{"bad" if silent else "ok"}">{_e(", ".join(silent) or "none")}</td>'
            f"{_stalled(watch, eng)}</tr>"
        )
    out.append("</table>")
    return out


def _stalled(watch: WorkerWatch, eng: PartitionEngine) -> str:
    # A partition paged for EVENT_TIME_STALLED (`clockstall`; kept with its state until its
    # watermark moves): nothing of it is decided, refunds included.
    if eng.stall_paged is None:
        return '<td class="ok">moves</td>'
    topics = ", ".join(t for s, t in enumerate(watch.topics) if eng.stall_paged[0] & 1 << s)
    return f'<td class="bad">stands still, held by {_e(topics)}: nothing decided (EVENT_TIME_STALLED)</td>'


def _dead_letters(watch: WorkerWatch) -> list[str]:
    total = sum(watch.dead_letters.values())
    out = [f"<h2>Dead letters: {total}</h2>"]
    if total:
        out.append("<ul>" + "".join(f"<li>{_e(t)}: {n}</li>" for t, n in sorted(watch.dead_letters.items())) + "</ul>")
    critical = sum(n for (kind, sev), n in watch.alerts.items() if sev == "critical" and kind != "FAILURE_BURST")
    if critical:
        # (Incidents are in their own table above; these are the other pages, each for a person.)
        kept = list(watch.recent_critical)
        shown = f"the {len(kept)} newest of {critical}" if critical > len(kept) else str(critical)
        out.append(f"<h2>Critical alerts other than incidents ({shown} since this worker started)</h2>")
        out.append("<ul>" + "".join(f"<li>{_e(a['kind'])}: {_e(a.get('summary'))}</li>" for a in kept) + "</ul>")
    recent = list(watch.recent_alerts)[:10]
    total = sum(watch.alerts.values())
    shown = f"the {len(recent)} newest of {total} since this worker started" if total > len(recent) else str(total)
    out.append(f"<h2>Latest alerts ({shown})</h2>")
    if total > len(recent):
        by_kind = sorted(watch.alerts.items(), key=lambda kv: (SEVERITY_RANK.get(kv[0][1], 3), kv[0]))
        out.append("<p>By kind: " + ", ".join(f"{_e(k)} [{_e(s)}] {n}" for (k, s), n in by_kind) + "</p>")
    if recent:
        out.append(
            "<ul>"
            + "".join(f"<li>[{_e(a['severity'])}] {_e(a['kind'])}: {_e(a.get('summary'))}</li>" for a in recent)
            + "</ul>"
        )
    return out
