"""`report` (net outstanding, time and scope filters, CSV, WIB and UTC, a warning for input
files), progress on a terminal, and JSON log lines."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import cli
from stream.core import codec
from stream.core.eventtime import parse_ms
from stream.core.partition import Params
from stream.drivers.progress import Progress
from stream.drivers.replay import replay
from stream.drivers.replayfile import decision_line, record_to_line
from stream.drivers.report import _when as report_when
from stream.drivers.report import render, summarise
from stream.drivers.reportselect import SCOPES, Selection, output_problem, outstanding
from stream.worker.logs import JsonFormatter
from tests.records import at
from tests.scenario import scenario_records


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("report")
    inp, dec = d / "in.jsonl", d / "decisions.jsonl"
    recs = scenario_records(4)
    inp.write_bytes(b"".join(codec.dumps(record_to_line(r)) + b"\n" for r in recs))
    topics = {"refunds": "qris.refunds", "alerts": "qris.alerts", "dead_letter": "qris.dead-letter"}
    with dec.open("wb") as fh:
        for i, (p, d_) in enumerate(replay(recs, Params(), drain=True)):
            if d_.role in topics:
                fh.write(decision_line(topics[d_.role], p, i, d_))
    return inp, dec


def test_net_outstanding_is_requested_minus_cancelled(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _inp, dec = files
    assert cli.main(["report", "--in", str(dec), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    t = got["refund_totals"]
    assert t["requested"]["count"] == 40 and t["cancelled"]["count"] == 10
    assert t["net_outstanding"] == {"count": 30, "idr": 30 * 25_000}
    assert cli.main(["report", "--in", str(dec)]) == 0
    text = capsys.readouterr().out
    assert "net outstanding 30 (Rp 750.000)" in text
    # Incident windows are written in WIB with UTC beside (this small day opens no incident:
    # the detector starts cold), so the format is checked on its own.
    assert report_when("2025-03-29T00:00:00Z") == "2025-03-29 07:00:00 WIB (00:00:00 UTC)"


def test_time_and_scope_filters_and_csv(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _inp, dec = files
    assert cli.main(["report", "--in", str(dec), "--csv", "--until", "2025-03-29T07:05:30+07:00"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    requested = next(r for r in rows if r["section"] == "refunds" and r["item"] == "requested")
    assert 0 < int(requested["count"]) < 40
    assert cli.main(["report", "--in", str(dec), "--csv", "--merchant", "NOBODY"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert all(r["count"] == "0" for r in rows if r["section"] == "refunds")
    sel = Selection(scope_type="switch", scope_id="RINTIS")
    assert sel.keep("refunds", {"switch_id": "RINTIS", "decided_at": "2025-03-29T00:00:00Z"})
    assert not sel.keep("dead_letter", {"source_timestamp_ms": 1})


def test_an_input_file_is_refused_and_one_with_decisions_too_gets_a_warning(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An input file given instead of decisions would summarise as all zeros, "nothing
    # outstanding" to a script that trusts the exit status: refused. A record whose value is not
    # JSON (`value_b64`, as `dump` writes it) is an input record too, not a broken line.
    inp, dec = files
    lines = inp.read_bytes().splitlines()
    first = orjson.loads(lines[0])
    binary = {k: v for k, v in first.items() if k != "value"} | {"value_b64": "gA=="}
    with_binary = tmp_path / "with-binary.jsonl"
    with_binary.write_bytes(b"\n".join([*lines[:5], orjson.dumps(binary), *lines[5:]]) + b"\n")
    assert cli.main(["report", "--in", str(with_binary)]) == 2
    err = capsys.readouterr().err
    assert "holds input records" in err and "no decision" in err and "run `qris-guard replay" in err
    assert err.count("\n") == 1 and "not an output line" not in err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(inp.read_bytes() + dec.read_bytes())
    assert cli.main(["report", "--in", str(mixed)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "holds input records" in err


def test_a_held_refund_counts_as_held_not_outstanding() -> None:
    held = {"type": "refund.held", "refund_id": "h", "amount": 9}
    out = outstanding([("refunds", held)])
    assert out["held_now"] == {"count": 1, "idr": 9} and out["net_outstanding"]["count"] == 0
    out = outstanding([("refunds", held), ("refunds", {**held, "type": "refund.requested"})])
    assert out["net_outstanding"] == {"count": 1, "idr": 9} and out["held_now"]["count"] == 0


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_on_a_terminal_only() -> None:
    now = [0.0]
    tty = _Tty(True)
    p = Progress("replay", fraction=lambda: now[0] / 10, out=tty, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 1
        p.tick(1000)
    assert "replay: 5,000 records, 1,000/s, 50%, ETA 5 s" in tty.getvalue()
    piped = _Tty(False)
    assert list(Progress("dump", out=piped, clock=lambda: now[0]).wrap(range(3))) == [0, 1, 2]
    assert piped.getvalue() == ""


def test_json_log_lines() -> None:
    try:
        raise KeyError("x")
    except KeyError:
        rec = logging.LogRecord("qris_guard.worker", logging.ERROR, __file__, 1, "batch %d failed", (3,), None)
        import sys

        rec.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(rec))
    assert line["level"] == "error" and line["message"] == "batch 3 failed" and line["error"] == "KeyError"
    assert line["ts"].endswith("+00:00")


def test_the_report_shows_each_incidents_holds_from_its_resolved_alert() -> None:
    from stream.drivers.report import render, summarise

    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    updated = json.loads((example / "failure-burst-updated-with-holds.json").read_text())
    summary = summarise([("alerts", updated), ("alerts", resolved)])
    assert summary["incident_holds"] == {resolved["incident_id"]: resolved["holds"]}
    text = render(summary)
    assert "Failure-burst incidents (opened/updated/resolved alerts): 2" in text
    held = resolved["holds"]["held"]
    [line] = [x for x in text.splitlines() if "holds at" in x]
    assert f"held {held['count']} (Rp " in line and "released without payment" in line and "still held" in line


def test_the_report_shows_how_each_incidents_holds_ended_after_its_resolved_alert() -> None:
    # The resolved alert counts the holds as of its time, most still held; the refunds after it
    # (read here, a repeat ignored) say how they ended.
    from stream.drivers.report import render, summarise

    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    inc = resolved["incident_id"]
    held = [_refund("refund.held", f"r{i}", 10_000, 20, incident_id=inc) for i in range(3)]
    hold = {"incident_id": inc, "held_ms": 60_000}
    paid = _refund("refund.requested", "r0", 10_000, 40, hold=hold)
    freed = _refund("refund.hold_released", "r1", 10_000, 41, hold=hold)
    outputs = [("refunds", v) for v in held] + [("alerts", resolved), ("refunds", paid), ("refunds", paid)]
    summary = summarise([*outputs, ("refunds", freed)])
    assert summary["incident_holds_ended"] == {
        inc: {
            "held": {"count": 3, "amount_idr": 30_000},
            "requested": {"count": 1, "amount_idr": 10_000},
            "released": {"count": 1, "amount_idr": 10_000},
        }
    }
    lines = render(summary).splitlines()
    at = next(i for i, x in enumerate(lines) if "holds at" in x)
    assert lines[at + 1].strip() == (
        "holds in the end (the refunds read): held 3 (Rp 30.000), requested after the hold 1 (Rp 10.000), "
        "released without payment 1 (Rp 10.000), still held 1, clawbacks explained by it 0 (Rp 0)"
    )


def test_a_merchants_report_says_which_holds_are_the_whole_incidents_and_which_its_own() -> None:
    """A merchant's report of its switch's incident: the resolved alert counts the holds of the
    whole incident (1828), the refunds read are the merchant's alone (3); each line says whose
    they are. A report of every scope has nothing to tell apart and keeps its words."""
    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    inc = resolved["incident_id"]
    held = [
        _refund("refund.held", f"r{i}", 10_000, 20, incident_id=inc, incident_ids=[inc], merchant_id=m)
        for i, m in enumerate(["M1", "M1", "M1", "M2"])
    ]
    outputs = [("refunds", v) for v in held] + [("alerts", resolved)]
    selected = list(Selection(scope_type="merchant", scope_id="M1").select(outputs))
    lines = [x.strip() for x in render(summarise(selected, ("merchant", "M1"))).splitlines()]
    [whole] = [x for x in lines if x.startswith("holds at")]
    [own] = [x for x in lines if x.startswith("holds in the end")]
    assert whole.startswith(
        "holds at 2025-03-29 09:40:30 WIB (02:40:30 UTC), the whole incident (all its scopes, as its resolved "
        "alert counts them): held 1828 (Rp 133.242.500)"
    )
    assert own.startswith("holds in the end, merchant M1 only (the refunds read): held 3 (Rp 30.000)")
    lines = [x.strip() for x in render(summarise(outputs)).splitlines()]
    assert any(x.startswith("holds at 2025-03-29 09:40:30 WIB (02:40:30 UTC): held 1828") for x in lines)
    assert any(x.startswith("holds in the end (the refunds read): held 4 (Rp 40.000)") for x in lines)


def test_a_report_of_a_right_to_left_merchant_escapes_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hebrew or Arabic letters are printable and allowed in a merchant id: the report's lines
    show it escaped, so it cannot take the counts after it into its direction."""
    merchant = "\u05d0\u05d1\u05d2-7"
    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    inc = resolved["incident_id"]
    held = _refund("refund.held", "r0", 10_000, 20, incident_id=inc, incident_ids=[inc], merchant_id=merchant)
    dec = tmp_path / "decisions.jsonl"
    values = [("qris.refunds", held), ("qris.alerts", resolved)]
    dec.write_bytes(b"".join(codec.dumps({"topic": t, "value": v}) + b"\n" for t, v in values))
    assert cli.main(["report", "--in", str(dec), "--merchant", merchant]) == 0
    out = capsys.readouterr().out
    shown = "\\u05d0\\u05d1\\u05d2-7"
    assert out.startswith(f"Selection: merchant {shown}\n")
    assert f"holds in the end, merchant {shown} only (the refunds read): held 1 (Rp 10.000)" in out
    assert merchant[0] not in out


def _refund(typ: str, rid: str, amount: int, minute: int, **extra: Any) -> dict[str, Any]:
    reason = {"refund.cancel_requested": "LATE_SETTLEMENT"}.get(typ, "SETTLEMENT_TIMEOUT")
    v = {"type": typ, "refund_id": rid, "amount": amount, "reason": reason, "decided_at": at(minute * 60), **extra}
    if typ == "refund.cancel_requested":
        v.update(cancel_id=f"c_{rid}", cancels_refund_id=rid)
    return v


# A window from minute 10 to 30: a requested before and cancelled in it; b requested in it; c
# requested and cancelled in it; d requested in it, cancelled after it; e held before, paid in it;
# f held in it.
WINDOW_REFUNDS = [
    _refund("refund.requested", "a", 40_000, 0),
    _refund("refund.held", "e", 3_000, 5),
    _refund("refund.requested", "b", 25_000, 12),
    _refund("refund.requested", "c", 10_000, 13),
    _refund("refund.cancel_requested", "a", 40_000, 15),
    _refund("refund.requested", "e", 3_000, 16, hold={"held_ms": 660_000}),
    _refund("refund.held", "f", 2_000, 18),
    _refund("refund.cancel_requested", "c", 10_000, 20),
    _refund("refund.requested", "d", 7_000, 25),
    _refund("refund.cancel_requested", "d", 7_000, 40),
]


def test_a_window_s_net_outstanding_is_one_figure_never_negative(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --since/--until`: a refund requested before the window and cancelled in it takes
    nothing off the window's net (it was not outstanding there); one cancelled after the window
    is outstanding in it. The text's two net lines, the JSON and the CSV say the same."""
    dec = tmp_path / "decisions.jsonl"
    dec.write_bytes(b"".join(codec.dumps({"topic": "qris.refunds", "value": v}) + b"\n" for v in WINDOW_REFUNDS))
    window = ["--since", at(600), "--until", at(1800)]
    assert cli.main(["report", "--in", str(dec), *window, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    t = got["refund_totals"]
    assert got["net_outstanding_idr"] == t["net_outstanding"]["idr"] == 25_000 + 7_000 + 3_000
    assert t["net_outstanding"]["count"] == 3
    assert t["requested"] == {"count": 4, "idr": 45_000} and t["cancelled"] == {"count": 2, "idr": 50_000}
    assert t["cancelled_earlier"] == {"count": 1, "idr": 40_000}
    assert t["held_now"] == {"count": 1, "idr": 2_000}
    assert cli.main(["report", "--in", str(dec), *window]) == 0
    text = capsys.readouterr().out
    assert "net outstanding 3 (Rp 35.000)" in text
    assert (
        "Net refunds outstanding (requested and not cancelled, by each refund's latest record): 3 (Rp 35.000)" in text
    )
    assert "cancelled 2 (Rp 50.000; 1 of them (Rp 40.000) of refunds requested before the selection)" in text
    assert "Rp -" not in text
    assert cli.main(["report", "--in", str(dec), *window, "--csv"]) == 0
    rows = {r["item"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["section"] == "refunds"}
    assert (rows["net_outstanding"]["count"], rows["net_outstanding"]["idr"]) == ("3", "35000")
    assert (rows["cancelled_earlier"]["count"], rows["cancelled_earlier"]["idr"]) == ("1", "40000")


@given(
    lifecycles=st.lists(
        st.tuples(
            st.integers(1, 100_000),
            st.sampled_from(["requested", "held-requested", "held-released", "held"]),
            st.integers(0, 60),
            st.integers(0, 30),
            st.booleans(),
        ),
        max_size=12,
    ),
    since=st.integers(0, 90),
    length=st.integers(0, 90),
)
@settings(max_examples=200, deadline=None)
def test_every_window_s_net_is_its_refunds_latest_records(
    lifecycles: list[tuple[int, str, int, int, bool]], since: int, length: int
) -> None:
    """Any window over any refunds' records: the net is the sum of the refunds whose latest
    record in the window is a request, never negative, the same in the summary as in the
    totals, and requested - (cancelled - cancelled_earlier)."""
    values: list[dict[str, Any]] = []
    for i, (amount, path, start, step, cancelled) in enumerate(lifecycles):
        rid = f"r{i}"
        minute = start
        ended = {}
        if path.startswith("held"):
            values.append(_refund("refund.held", rid, amount, minute))
            minute += step
            ended = {"hold": {"held_ms": step * 60_000}}
        if path == "held-released":
            values.append(_refund("refund.hold_released", rid, amount, minute, **ended))
        elif path != "held":
            values.append(_refund("refund.requested", rid, amount, minute, **ended))
            if cancelled:
                values.append(_refund("refund.cancel_requested", rid, amount, minute + step))
    values.sort(key=lambda v: v["decided_at"])  # (stable: each refund's records stay in order)
    sel = Selection(parse_ms(at(since * 60)), parse_ms(at((since + length) * 60)))
    chosen = list(sel.select(("refunds", v) for v in values))
    summary, t = summarise(chosen), outstanding(chosen)
    latest = {v["refund_id"]: v for _role, v in chosen}
    expected = sum(v["amount"] for v in latest.values() if v["type"] == "refund.requested")
    assert summary["net_outstanding_idr"] == t["net_outstanding"]["idr"] == expected >= 0
    assert summary.get("refund_totals") == t
    assert expected == t["requested"]["idr"] - (t["cancelled"]["idr"] - t["cancelled_earlier"]["idr"])
    # The holds line adds up: the holds begun in the window ended there or are still held;
    # those begun before it that ended in it are counted apart.
    h = summary["holds"]
    assert h["held"] == h["requested_after"] + h["released"] + h["still_held"]
    assert h["held_idr"] >= h["released_idr"]
    started = {v["refund_id"] for _role, v in chosen if v["type"] == "refund.held"}
    earlier_ends = [v for _role, v in chosen if "hold" in v and v["refund_id"] not in started]
    assert h["earlier_requested_after"] + h["earlier_released"] == len(earlier_ends)


def _valid_outputs() -> list[tuple[str, dict[str, Any]]]:
    examples = Path(__file__).resolve().parents[1] / "schemas/examples"
    roles = {"qris.refunds": "refunds", "qris.alerts": "alerts", "qris.dead-letter": "dead_letter"}
    return [
        (role, json.loads(f.read_text()))
        for topic, role in roles.items()
        for f in sorted((examples / topic / "valid").glob("*.json"))
    ]


def _broken(v: dict[str, Any]) -> list[dict[str, Any]]:
    """`v` with one field (top level, or one level down) missing or of another type."""
    out = []
    for name, field in v.items():
        for other in (None, "x", 1.5, True, [], {}):
            out.append({**v, name: other})
        out.append({k: x for k, x in v.items() if k != name})
        if isinstance(field, dict):
            for sub in field:
                for other in (None, "x", [], {"count": "x"}):
                    out.append({**v, name: {**field, sub: other}})
    return out


def test_report_reads_every_output_value_it_lets_through() -> None:
    """Any field `summarise`, `render` or a scope selection reads, missing or of the wrong type,
    is found by `output_problem` (the CLI words it as the line's mistake); what it lets through
    is summarised without an error."""
    valid = _valid_outputs()
    assert {role for role, _v in valid} == {"refunds", "alerts", "dead_letter"}
    assert all(output_problem(role, v) is None for role, v in valid)
    selections = [Selection(), Selection(0, 1), *(Selection(scope_type=t, scope_id="X") for t in SCOPES)]
    for role, good in valid:
        # A scope's selection also reads the incident ids of the refunds it keeps, and of the
        # incident alerts of other scopes: the refund's own scope, and another.
        scoped = [*selections, *(Selection(scope_type=t, scope_id=good.get(f"{t}_id")) for t in SCOPES)]
        for v in _broken(good):
            if output_problem(role, v) is None:
                render(summarise([(role, v)]))
                assert all(sel.keep(role, v) in (True, False) for sel in selections)
                assert all(len(list(sel.select([(role, v)]))) in (0, 1) for sel in scoped)


def test_a_dump_of_the_output_topics_reports_as_the_replay_s_output(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `dump` writes each value as the text that was on the topic (a replay writes the object).
    _inp, dec = files
    lines = [codec.loads(raw) for raw in dec.read_bytes().splitlines()]
    dumped = tmp_path / "dump.jsonl"
    dumped.write_bytes(b"".join(codec.dumps({**x, "value": codec.dumps(x["value"]).decode()}) + b"\n" for x in lines))
    assert cli.main(["report", "--in", str(dec), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli.main(["report", "--in", str(dumped), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == want and want["refund_totals"]["requested"]["count"] == 40
    with dumped.open("ab") as fh:
        fh.write(codec.dumps({"topic": "qris.refunds", "value": "{not json"}) + b"\n")
    assert cli.main(["report", "--in", str(dumped)]) == cli.EXIT_MISTAKE
    [line] = capsys.readouterr().err.splitlines()
    assert f'{dumped}:{len(lines) + 1}: not an output line of replay: "value" is text that is not JSON' in line


def test_a_malformed_output_line_is_a_mistake_with_its_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = codec.dumps({"topic": "qris.refunds", "value": WINDOW_REFUNDS[0]})
    bad = codec.dumps({"topic": "qris.refunds", "value": {"type": "refund.requested"}})
    dec = tmp_path / "partial.jsonl"
    dec.write_bytes(good + b"\n" + bad + b"\n")
    assert cli.main(["report", "--in", str(dec)]) == cli.EXIT_MISTAKE
    [line] = capsys.readouterr().err.splitlines()
    assert f'{dec}:2: not an output line of replay: a refunds value needs "refund_id"' in line


def test_output_topics_named_otherwise_are_said_never_counted_as_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written with other output topic names than the configured ones: nothing of it
    counted is a mistake naming both (not an all-zero report); some of it counted, a warning."""
    dec = tmp_path / "bank.jsonl"
    dec.write_bytes(b"".join(codec.dumps({"topic": "bank.qris.refunds", "value": v}) + b"\n" for v in WINDOW_REFUNDS))
    assert cli.main(["report", "--in", str(dec)]) == cli.EXIT_MISTAKE
    [line] = capsys.readouterr().err.splitlines()
    assert f"{dec}: no line is of the configured output topics" in line
    assert f"{len(WINDOW_REFUNDS)} of bank.qris.refunds" in line and "QRIS_REFUND_TOPIC=qris.refunds" in line
    monkeypatch.setenv("QRIS_REFUND_TOPIC", "bank.qris.refunds")
    assert cli.main(["report", "--in", str(dec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["refund_totals"]["requested"]["count"] == 5
    with dec.open("ab") as fh:
        fh.write(codec.dumps({"topic": "bank.qris.alerts", "value": {}}) + b"\n")
    assert cli.main(["report", "--in", str(dec), "--json"]) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert "warning:" in line and "1 lines not counted" in line and "1 of bank.qris.alerts" in line
    assert "QRIS_ALERT_TOPIC=qris.alerts" in line


def test_a_window_s_holds_line_adds_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Holds begun before `--since` and ended in the window are said apart, not counted as ends
    of the window's holds (which made "held 1; released 2, still held 1")."""
    held_ms = {"hold": {"held_ms": 60_000}}
    values = [
        _refund("refund.held", "early", 5_000, 5),
        _refund("refund.held", "in", 7_000, 12),
        _refund("refund.held", "kept", 1_000, 13),
        _refund("refund.hold_released", "early", 5_000, 14, **held_ms),
        _refund("refund.hold_released", "in", 7_000, 15, **held_ms),
    ]
    dec = tmp_path / "decisions.jsonl"
    dec.write_bytes(b"".join(codec.dumps({"topic": "qris.refunds", "value": v}) + b"\n" for v in values))
    assert cli.main(["report", "--in", str(dec), "--since", at(600), "--until", at(1800)]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Refunds held")]
    assert "held during incidents: 2 (Rp 8.000); then requested 0, released without payment 1 (Rp 7.000)" in line
    assert "still held 1; 1 holds from before the selection ended in it: requested 0, released without" in line
    assert "payment 1 (Rp 5.000)" in line


def test_a_window_s_incident_line_says_apart_the_holds_begun_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a resolved incident in a `--since` window, the ends of holds begun before the window
    are not counted as ends of the window's holds (which would make "held 1, released without
    payment 2, still held 0" beside "held now 1")."""
    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    inc = resolved["incident_id"]
    resolved["occurred_at"] = at(16 * 60)
    hold = {"hold": {"held_ms": 60_000, "incident_id": inc}}
    values = [
        ("qris.refunds", _refund("refund.held", "early", 5_000, 5, incident_id=inc)),
        ("qris.refunds", _refund("refund.held", "early2", 6_000, 6, incident_id=inc)),
        ("qris.refunds", _refund("refund.held", "kept", 1_000, 12, incident_id=inc)),
        ("qris.refunds", _refund("refund.hold_released", "early", 5_000, 14, **hold)),
        ("qris.refunds", _refund("refund.hold_released", "early2", 6_000, 15, **hold)),
        ("qris.alerts", resolved),
    ]
    dec = tmp_path / "decisions.jsonl"
    dec.write_bytes(b"".join(codec.dumps({"topic": t, "value": v}) + b"\n" for t, v in values))
    assert cli.main(["report", "--in", str(dec), "--since", at(600), "--until", at(1800)]) == 0
    out = capsys.readouterr().out
    assert "held now 1 (Rp 1.000)" in out
    [line] = [x.strip() for x in out.splitlines() if "holds in the end" in x]
    assert line == (
        "holds in the end (the refunds read): held 1 (Rp 1.000), requested after the hold 0 (Rp 0), "
        "released without payment 0 (Rp 0), still held 1, clawbacks explained by it 0 (Rp 0); 2 holds from "
        "before the selection ended in it: "
        "requested 0 (Rp 0), released without payment 2 (Rp 11.000)"
    )


def test_an_incident_s_holds_in_the_end_count_the_clawbacks_it_explains() -> None:
    """A refund paid at its hold's end (H passed) and cancelled by a settlement after the
    incident's resolved alert: its LATE_SETTLEMENT alert carries the incident's id, and the
    incident's line in the end counts it, where the resolved alert, as of its time, says 0."""
    from stream.drivers.report import render, summarise

    example = Path(__file__).resolve().parents[1] / "schemas/examples/qris.alerts/valid"
    resolved = json.loads((example / "failure-burst-resolved-with-holds.json").read_text())
    inc = resolved["incident_id"]
    hold = {"incident_id": inc, "held_ms": 60_000}
    late = {
        "alert_id": "al_late",
        "kind": "LATE_SETTLEMENT",
        "severity": "warning",
        "summary": "Refund r0 of Rp 10.000 cancelled",
        "observed": {"amount_idr": 10_000},
        "incident_id": inc,
    }
    outputs = [
        ("refunds", _refund("refund.held", "r0", 10_000, 20, incident_id=inc)),
        ("alerts", resolved),
        ("refunds", _refund("refund.requested", "r0", 10_000, 40, hold=hold)),
        ("refunds", _refund("refund.cancel_requested", "r0", 10_000, 41)),
        ("alerts", late),
    ]
    summary = summarise(outputs)
    assert summary["incident_holds_ended"][inc]["clawed_back"] == {"count": 1, "amount_idr": 10_000}
    [line] = [x.strip() for x in render(summary).splitlines() if "holds in the end" in x]
    assert line.endswith("still held 0, clawbacks explained by it 1 (Rp 10.000)")


def test_a_switch_report_keeps_the_alerts_of_the_payments_whose_refunds_it_keeps() -> None:
    """A cancellation's LATE_SETTLEMENT alert is scoped to the payment's merchant: a switch's
    report that counts the cancellation keeps its alert (and so the clawback its incident
    explains), not 1 cancellation beside no alert of it."""
    from stream.drivers.report import summarise

    late = {
        "alert_id": "al_late",
        "kind": "LATE_SETTLEMENT",
        "severity": "warning",
        "summary": "Refund r0 of Rp 10.000 cancelled",
        "scope": {"type": "merchant", "id": "M1"},
        "reference": "QR1",
        "observed": {"amount_idr": 10_000},
        "incident_id": "in_1",
        "occurred_at": at(41 * 60),
    }
    other = {**late, "alert_id": "al_other", "reference": "QR2"}
    paid = _refund("refund.requested", "r0", 10_000, 40, reference="QR1", switch_id="S")
    cancelled = _refund("refund.cancel_requested", "r0", 10_000, 41, reference="QR1", switch_id="S")
    outputs = [("refunds", paid), ("refunds", cancelled), ("alerts", late), ("alerts", other)]
    kept = list(Selection(scope_type="switch", scope_id="S").select(outputs))
    assert [v.get("alert_id") for role, v in kept if role == "alerts"] == ["al_late"]
    summary = summarise(kept)
    assert summary["cancellations"]["count"] == 1 and summary["alerts"]["by_kind"] == {"LATE_SETTLEMENT": 1}


def test_holds_still_held_say_since_when_they_wait() -> None:
    """Mid-outage no hold has ended yet: "longest wait past the deadline 0.0 min" alone would read
    as no customer waiting, beside refunds held for a quarter of an hour."""
    held = [
        _refund("refund.held", "r0", 10_000, 20, deadline=at(20 * 60)),
        _refund("refund.held", "r1", 10_000, 25, deadline=at(25 * 60)),
        _refund("refund.held", "r2", 10_000, 30, deadline=at(30 * 60)),
        _refund("refund.hold_released", "r0", 10_000, 31, hold={"held_ms": 660_000}),
    ]
    summary = summarise([("refunds", v) for v in held])
    assert summary["holds"]["oldest_still_held_deadline"] == at(25 * 60)
    [line] = [x for x in render(summary).splitlines() if x.startswith("Refunds held")]
    assert line.endswith(
        f"still held 2; longest wait past the deadline 11.0 min (of the holds that ended); the oldest still "
        f"held waits since its deadline {report_when(at(25 * 60))}"
    )


def test_the_alerts_listed_are_the_most_severe_first() -> None:
    """The text lists the first 15 alerts: a critical OVER_REFUND after 16 LATE_SETTLEMENT
    warnings (a day of late settlements) is among them, not cut off."""

    def alert(i: int, kind: str, severity: str) -> dict[str, Any]:
        return {"alert_id": f"al_{i}", "kind": kind, "severity": severity, "summary": f"{kind} {i}"}

    outputs = [("alerts", alert(i, "LATE_SETTLEMENT", "warning")) for i in range(16)]
    outputs += [("alerts", alert(16, "OVER_REFUND", "critical")), ("alerts", alert(17, "SCOPE_LIMIT", "info"))]
    lines = render(summarise(outputs)).splitlines()
    at_ = lines.index("15 of 18 alerts, the most severe first:")
    assert lines[at_ + 1] == "  [critical] OVER_REFUND: OVER_REFUND 16"
    assert lines[at_ + 2] == "  [warning] LATE_SETTLEMENT: LATE_SETTLEMENT 0"
    assert len(lines) == at_ + 16


def test_a_scope_report_names_the_incidents_of_other_scopes_that_held_its_refunds() -> None:
    import doctest

    from stream.drivers import reportselect

    failures, tried = doctest.testmod(reportselect, raise_on_error=False, verbose=False)
    assert tried > 0 and failures == 0


def test_a_scope_report_keeps_every_incident_a_kept_refund_names_in_its_hold() -> None:
    from stream.drivers.reportselect import Selection

    def alert(i: str, t: str) -> dict[str, Any]:
        return {"kind": "FAILURE_BURST", "incident_id": i, "scope": {"type": "switch", "id": "S"}, "occurred_at": t}

    held = {"type": "refund.held", "merchant_id": "M", "incident_ids": ["in_1"], "decided_at": "2025-03-29T00:05:00Z"}
    paid: dict[str, Any] = {"type": "refund.requested", "merchant_id": "M", "decided_at": "2025-03-29T01:00:00Z"}
    paid["hold"] = {"incident_ids": ["in_1", "in_2"]}
    outs = [
        ("alerts", alert("in_1", "2025-03-29T00:01:00Z")),
        ("alerts", alert("in_2", "2025-03-29T00:30:00Z")),
        ("refunds", held),
        ("refunds", paid),
    ]
    got = Selection(scope_type="merchant", scope_id="M").select(outs)
    assert [v.get("incident_id") for _r, v in got] == ["in_1", "in_2", None, None]
