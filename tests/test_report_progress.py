"""`report` (net outstanding, time and scope filters, CSV, WIB and UTC, a warning for input
files), progress on a terminal, and JSON log lines."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest

from stream import cli
from stream.core import codec
from stream.core.partition import Params
from stream.drivers.progress import Progress
from stream.drivers.replay import replay
from stream.drivers.replayfile import decision_line, record_to_line
from stream.drivers.report import _when as report_when
from stream.drivers.reportselect import Selection, outstanding
from stream.worker.logs import JsonFormatter
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


def test_an_input_file_gets_a_warning(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    inp, _dec = files
    assert cli.main(["report", "--in", str(inp)]) == 0
    err = capsys.readouterr().err
    assert "holds input records" in err and "run `qris-guard replay" in err


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
