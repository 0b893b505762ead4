"""Each incident's `updated`/`resolved` alerts carry the holds it covers (`core.holdtally`): the
tally counts exactly the hold decisions up to the alert's time, an alert waits until every
partition decided past it, reports in any order or repeated give the same alerts, a restored
snapshot goes on with the same alerts; the partitions' reports and the replay around them."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import burstsnapshot, codec, holdtally
from stream.core.burst import BurstDetector, BurstParams
from stream.core.decisions import Decision
from stream.core.eventtime import format_ms, parse_ms
from stream.core.holds import IncidentEvent, payment_scope_keys, scope_tag
from stream.core.holdtally import HoldTally, is_hold_report, tallied_alerts
from stream.core.partition import Params, PartitionEngine
from stream.core.signals import MINUTE_MS
from stream.drivers.replay import with_holds, with_incidents
from stream.drivers.replayfile import read_records
from tests.records import T0, ledger, payment
from tests.test_holds import EVERYTHING, HOLDS, Feed, inc, ms, unsettled
from tests.test_schemas import beyond_schema_errors, validator_for

ROOT = Path(__file__).resolve().parents[1]
PROBE_MS = 30_000
ALERTS = validator_for("qris.alerts", closed_schema=True)


def burst_alert(status: str, minute: int, incident_id: str = "inc_a") -> Decision:
    """A FAILURE_BURST alert of the decided `minute` (its event time: the minute's end + probe)."""
    value = {
        "alert_id": f"al_{incident_id}_{status}_{minute}",
        "kind": "FAILURE_BURST",
        "severity": "critical" if status != "resolved" else "info",
        "scope": {"type": "switch", "id": "RINTIS"},
        "status": status,
        "incident_id": incident_id,
        "occurred_at": format_ms((minute + 1) * MINUTE_MS),
    }
    return Decision("alerts", b"RINTIS", value, (minute + 1) * MINUTE_MS)


def t_of(minute: int) -> int:
    return (minute + 1) * MINUTE_MS + PROBE_MS


def report(p: int, through_ms: int, *events: list[Any]) -> dict[str, Any]:
    return {"partition": p, "hold_events": [list(e) for e in events], "decided_through_ms": through_ms}


M = 29_000_000  # a minute number in 2025


def test_the_tally_counts_exactly_the_hold_decisions_up_to_the_alerts_time() -> None:
    t = t_of(M)
    tally = HoldTally([0, 1], PROBE_MS)
    assert tally.on_alerts([burst_alert("updated", M)]) == []
    got = tally.on_report(
        report(
            0,
            t + MINUTE_MS,
            ["held", "r1", "inc_a", 10_000, t - 5_000],
            ["held", "r2", "inc_a", 20_000, t - 4_000],
            ["held", "r3", "inc_a", 40_000, t],  # at t: counted
            ["held", "r4", "inc_a", 80_000, t + 1],  # after t: not
            ["held", "x1", "inc_other", 1_000, t - 1_000],  # another incident's
            ["released_without_payment", "r1", "inc_a", 10_000, t - 100],
            ["requested_after_hold", "r2", "inc_a", 19_000, t + 5],  # after t: still held at t
            ["cancellations", "c1", "inc_a", 7_000, t - 1],
        )
    )
    assert got == []  # partition 1 has not decided past t
    [alert] = tally.on_report(report(1, t + 1, ["held", "r5", "inc_a", 5, t - 60_000]))
    holds = alert.value["holds"]
    assert holds == {
        "held": {"count": 4, "amount_idr": 70_005},
        "requested_after_hold": {"count": 0, "amount_idr": 0},
        "released_without_payment": {"count": 1, "amount_idr": 10_000},
        "still_held": {"count": 3, "amount_idr": 60_005},
        "cancellations": {"count": 1, "amount_idr": 7_000},
        "kept_held": {"count": 0, "amount_idr": 0},  # x1's report gave no scope of its payment
        "as_of": format_ms(t),
    }
    assert alert.value["dedup_key"] == "inc_a"


def test_the_summary_line_tells_the_holds_only_when_the_incident_held_something() -> None:
    t = t_of(M)
    tally = HoldTally([0], PROBE_MS)
    alerts = [burst_alert("updated", M, inc) for inc in ("inc_a", "inc_b")]
    for a in alerts:
        a.value["summary"] = "Switch RINTIS: 9 of 10 payments failed"
    tally.on_alerts(alerts)
    held = [["held", f"r{i}", "inc_a", 1_250_000, t - 1_000] for i in range(2)]
    [alert, other] = tally.on_report(
        report(0, t + 1, *held, ["released_without_payment", "r0", "inc_a", 1_250_000, t - 10])
    )
    assert alert.value["summary"] == (
        "Switch RINTIS: 9 of 10 payments failed; refunds held: 2 (Rp 2.500.000), 1 released without payment, "
        "1 still held (Rp 1.250.000)"
    )
    assert other.value["summary"] == "Switch RINTIS: 9 of 10 payments failed"  # held nothing


def test_an_alert_waits_until_every_partition_decided_past_its_time() -> None:
    t = t_of(M)
    tally = HoldTally([0, 1, 2], PROBE_MS)
    opened = burst_alert("opened", M - 3)
    assert tally.on_alerts([opened, burst_alert("resolved", M)]) == [opened]  # opened: at once
    assert tally.on_report(report(0, t + MINUTE_MS)) == []
    assert tally.on_report(report(1, t)) == []  # decided *before* t only: not past it
    assert tally.on_report(report(2, POS)) == []
    [alert] = tally.on_report(report(1, t + 1))
    assert alert.value["status"] == "resolved" and alert.value["holds"]["as_of"] == format_ms(t)
    assert tally.pending == [] and "inc_a" in tally.finished


POS = 2**62


RINTIS_TAGS = [scope_tag(k) for k in payment_scope_keys("RINTIS", "BCA", "BANKDKI", "ID1020", "5812")]
OTHER_TAGS = [scope_tag(k) for k in payment_scope_keys("ARTAJASA", "BCA", "BANKDKI", "ID1020", "5812")]


def _scenario() -> tuple[list[Decision], list[dict[str, Any]]]:
    # Two RINTIS incidents and one of scope `all` (each counts the others' holds it keeps on),
    # holds of RINTIS payments and of others, ended by later events of the same partition.
    alerts = [burst_alert("opened", M), burst_alert("updated", M + 5), burst_alert("resolved", M + 12)]
    alerts += [burst_alert("opened", M + 2, "inc_b"), burst_alert("updated", M + 9, "inc_b")]
    alerts += [burst_alert("updated", M + 7, "inc_b"), burst_alert("resolved", M + 14, "inc_b")]
    everywhere = [burst_alert(s, m, "inc_all") for s, m in (("opened", M + 1), ("updated", M + 10))]
    for a in everywhere:
        a.value["scope"] = {"type": "all", "id": "all"}
    alerts += everywhere
    rnd = random.Random(4)
    reports: list[dict[str, Any]] = []
    for p in (0, 1, 2):
        n = 0
        open_holds: list[tuple[str, str]] = []  # of the minutes before: a hold ends after it began
        for minute in range(M, M + 16):
            events = []
            scopes = {}
            new_holds = []
            for _ in range(rnd.randrange(6)):
                n += 1
                kind = rnd.choice(["held", "held", "requested_after_hold", "released_without_payment", "cancellations"])
                at = minute * MINUTE_MS + rnd.randrange(MINUTE_MS)
                rid, incident = f"r{p}-{n}", rnd.choice(["inc_a", "inc_b", "inc_all"])
                if kind in ("requested_after_hold", "released_without_payment") and open_holds:
                    rid, incident = open_holds.pop(rnd.randrange(len(open_holds)))
                elif kind == "held":
                    new_holds.append((rid, incident))
                    scopes[rid] = rnd.choice([RINTIS_TAGS, RINTIS_TAGS, OTHER_TAGS, []])
                events.append([kind, rid, incident, rnd.randrange(1, 10**6), at])
            events.sort(key=lambda e: e[4])
            open_holds += new_holds
            reports.append(report(p, (minute + 1) * MINUTE_MS, *events) | ({"hold_scopes": scopes} if scopes else {}))
    return alerts, reports


def _interleave(reports: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    # Any interleaving of the partitions (each partition's reports in its order), with repeats.
    rnd = random.Random(seed)
    queues = {p: [r for r in reports if r["partition"] == p] for p in (0, 1, 2)}
    out: list[dict[str, Any]] = []
    while any(queues.values()):
        p = rnd.choice([q for q, v in queues.items() if v])
        out.append(queues[p].pop(0))
        if rnd.random() < 0.2:
            out.append(rnd.choice(out))  # a repeat (a crash resent it), maybe an older one
    return out


def _live(alerts: list[Decision], reports: list[dict[str, Any]], restore_at: int | None = None) -> list[bytes]:
    # Alerts reach the tally before the hold reports that refer to them (the partitions need
    # the incidents first); then the reports in the order given.
    tally = HoldTally([0, 1, 2], PROBE_MS)
    out = tally.on_alerts(alerts)
    for i, value in enumerate(reports):
        if i == restore_at:
            tally = HoldTally.from_state(codec.loads(codec.dumps(tally.to_state())))
        out.extend(tally.on_report(value))
    return sorted(codec.dumps(d.value) for d in out)


def test_reports_in_any_order_or_repeated_give_the_same_alerts() -> None:
    alerts, reports = _scenario()
    want = _live(alerts, reports)
    assert len(want) == 9 and sum(b'"holds"' in w for w in want) == 6
    kept = [orjson.loads(w)["holds"]["kept_held"]["count"] for w in want if b'"holds"' in w]
    assert all(kept) and len(set(kept)) > 2, kept
    for seed in range(8):
        assert _live(alerts, _interleave(reports, seed)) == want, seed
    tally = HoldTally([0, 1, 2], PROBE_MS)
    tally.on_alerts(alerts)
    for value in reports:
        tally.on_report(value)
    held = sum(e[0] == "held" for r in reports for e in r["hold_events"])
    assert 0 < len(tally.held) < held / 2 and all(h[3] is None for h in tally.held.values())  # the ended forgotten
    assert sorted(codec.dumps(d.value) for d in tallied_alerts(alerts, reports, [0, 1, 2], PROBE_MS)) == want


@pytest.mark.parametrize("cut", [1, 10, 25, 40])
def test_a_tally_restored_mid_way_gives_the_same_alerts(cut: int) -> None:
    alerts, reports = _scenario()
    mixed = _interleave(reports, 3)
    assert _live(alerts, mixed, restore_at=cut) == _live(alerts, reports)


def test_the_detectors_snapshot_carries_the_tally() -> None:
    tally = HoldTally([0, 1], PROBE_MS)
    tally.on_alerts([burst_alert("updated", M)])
    tally.on_report(report(0, t_of(M) + 1, ["held", "r1", "inc_a", 10, t_of(M) - 1]))
    snap = burstsnapshot.decode(burstsnapshot.encode(BurstDetector([0, 1]), 7, tally))
    assert snap.tally is not None and snap.tally.to_state() == tally.to_state()
    assert burstsnapshot.decode(burstsnapshot.encode(BurstDetector([0, 1]), 7)).tally is None
    [alert] = snap.tally.on_report(report(1, t_of(M) + 1))
    assert alert.value["holds"]["held"] == {"count": 1, "amount_idr": 10}


def many_holds(n: int) -> HoldTally:
    """A tally during a long outage: `inc_z` resolved and finished, an `updated` alert of `inc_a`
    pending, `n` holds of incidents `inc_a` and `inc_b` reported in no sorted order, each with
    scope tags, a third of them released (after the pending alert: remembered)."""
    tally = HoldTally([0, 1], PROBE_MS)
    tally.on_alerts([burst_alert("resolved", M - 10, "inc_z")])
    tally.on_report(report(0, t_of(M - 10) + 1, ["held", "rf_z", "inc_z", 7, t_of(M - 10) - 1]))
    assert tally.on_report(report(1, t_of(M - 10) + 1)) and tally.finished == {"inc_z"}
    tally.on_alerts([burst_alert("updated", M + 2, "inc_a")])
    ids = [f"rf_{i:07d}" for i in range(n)]
    random.Random(n).shuffle(ids)
    for p in (0, 1):
        mine = ids[p::2]
        for k in range(0, len(mine), 500):
            events: list[list[Any]] = []
            scopes: dict[str, list[str]] = {}
            for j, rid in enumerate(mine[k : k + 500]):
                incident = "inc_a" if j % 4 else "inc_b"
                events.append(["held", rid, incident, 10_000 + j, t_of(M) - j])
                scopes[rid] = [scope_tag(("switch", "RINTIS")), scope_tag(("merchant", f"M{j % 17}"))]
                if j % 3 == 0:
                    events.append(["released_without_payment", rid, incident, 10_000 + j, t_of(M + 3) + j])
            tally.on_report({**report(p, t_of(M + 1), *events), "hold_scopes": scopes})
    assert len(tally.held) == n + 1 and tally.ends and tally.pending  # and rf_z, never ended
    return tally


def tally_fields(tally: HoldTally) -> tuple[Any, ...]:
    """Everything a tally holds, with no order where the tally's order means nothing."""
    return (
        tally.partitions,
        tally.probe_age_ms,
        tally.decided,
        tally.events,
        tally.finished,
        tally.held,
        tally.held_by_tag,
        sorted(tally.ends),
        tally.pending,
    )


def alerts_after(tally: HoldTally) -> list[bytes]:
    """What the tally sends once both partitions decided past its pending alert."""
    out = tally.on_report(report(0, t_of(M + 6)))
    out += tally.on_report(report(1, t_of(M + 6), ["requested_after_hold", "rf_0000001", "inc_a", 5, t_of(M + 4)]))
    return [codec.dumps(d.value) for d in out]


def previous_release_state(tally: HoldTally) -> dict[str, Any]:
    """`HoldTally.to_state` as the previous release wrote it (every part sorted), kept here
    literally: a worker of this release restores what one of that release saved."""
    return {
        "partitions": sorted(tally.partitions),
        "probe_age_ms": tally.probe_age_ms,
        "decided": sorted(tally.decided.items()),
        "events": {
            inc: [[typ, rid, a, at] for (typ, rid), (a, at) in sorted(evs.items())]
            for inc, evs in sorted(tally.events.items())
        },
        "finished": sorted(tally.finished),
        "pending": [[t, v, None if k is None else k.decode("utf-8"), at] for t, v, k, at in tally.pending],
        **({"held": [[rid, *h] for rid, h in sorted(tally.held.items())]} if tally.held else {}),
    }


def test_a_tally_snapshot_in_pieces_restores_the_same_tally(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pieces are one JSON document, which this release's and the previous one's `decode`
    # read alike (the reader is unchanged; the order of events and holds is the tally's own).
    tally, det = many_holds(3000), BurstDetector([0, 1])
    monkeypatch.setattr(burstsnapshot, "PIECE_BYTES", 4096)
    pieces = list(burstsnapshot.encode_pieces(det, 7, tally))
    assert len(pieces) > 50
    whole = codec.dumps({"signals_offset": 7, "detector": det.snapshot(), "hold_tally": tally.to_state()})
    text = zlib.decompress(b"".join(pieces))
    assert text[: text.rfind(b',"json_pieces":')] + b"}" == whole  # (the index is the last key)
    back = burstsnapshot.decode(b"".join(pieces)).tally
    assert back is not None and tally_fields(back) == tally_fields(tally)
    assert back.to_state() == tally.to_state()  # restored in the order saved
    want = alerts_after(tally)
    assert want and b'"kept_held"' in want[0] and alerts_after(back) == want


def test_a_tally_snapshot_of_the_previous_release_restores_the_same_tally() -> None:
    tally, det = many_holds(3000), BurstDetector([0, 1])
    old = zlib.compress(
        codec.dumps({"signals_offset": 7, "detector": det.snapshot(), "hold_tally": previous_release_state(tally)}), 1
    )
    assert zlib.decompress(old) != zlib.decompress(burstsnapshot.encode(det, 7, tally))  # sorted there, not here
    back = burstsnapshot.decode(old).tally
    assert back is not None and tally_fields(back) == tally_fields(tally)
    assert alerts_after(back) == alerts_after(tally)


def test_a_tally_snapshot_decoded_in_steps_is_the_one_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A takeover decodes in steps, the loop running between them (a tally of 50,000 holds took
    # 0.26-0.57 s at once): what it restores is what `decode` restores, from a snapshot of this
    # release (the tally's own order) or of the previous one (sorted), or one without holds.
    from tests.test_burst import decoded_in_steps

    tally, det = many_holds(3000), BurstDetector([0, 1])
    monkeypatch.setattr(burstsnapshot, "DECOMPRESS_BYTES", 4096)
    monkeypatch.setattr(burstsnapshot, "RESTORE_ROWS", 100)
    monkeypatch.setattr(holdtally, "RESTORE_ROWS", 100)
    previous = zlib.compress(
        codec.dumps({"signals_offset": 7, "detector": det.snapshot(), "hold_tally": previous_release_state(tally)}), 1
    )
    without_held = {k: v for k, v in tally.to_state().items() if k != "held"}  # (a tally saved without its `held` rows)
    oldest = zlib.compress(codec.dumps({"signals_offset": 7, "detector": det.snapshot(), "hold_tally": without_held}))
    for raw in (burstsnapshot.encode(det, 7, tally), previous, oldest):
        once = burstsnapshot.decode(raw)
        snap, steps = decoded_in_steps(raw)
        assert steps > 50 and once.tally is not None and snap.tally is not None
        assert tally_fields(snap.tally) == tally_fields(once.tally)
        assert snap.tally.to_state() == once.tally.to_state()  # in the order saved
        assert alerts_after(snap.tally) == alerts_after(once.tally)
    assert tally_fields(decoded_in_steps(burstsnapshot.encode(det, 7, tally))[0].tally) == tally_fields(tally)
    assert decoded_in_steps(burstsnapshot.encode(det, 7))[0].tally is None


def test_a_takeover_parses_a_tally_snapshot_a_cut_of_its_index_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # orjson reads whole documents only: the snapshot's index lets `decode_steps` parse the rest
    # with the growing parts empty, then each part a cut at a time (the whole of 50,000 holds was
    # one step of 72-102 ms). Every parse of a step holds at most a cut and a batch of rows.
    from tests.test_burst import decoded_in_steps

    tally, det = many_holds(3000), BurstDetector([0, 1])
    monkeypatch.setattr(burstsnapshot, "INDEX_BYTES", 8 * 1024)
    raw = burstsnapshot.encode(det, 7, tally)
    text = zlib.decompress(raw)
    index = codec.loads(text)[burstsnapshot.INDEX_KEY]
    assert [path[:2] for path, _cuts in index if path[0] == "hold_tally"].count(["hold_tally", "held"]) == 1
    assert sum(len(cuts) - 1 for _path, cuts in index) > 40
    parsed: list[int] = []
    loads = codec.loads

    def noted_loads(data: bytes | str) -> Any:
        parsed.append(len(data))
        return loads(data)

    monkeypatch.setattr(codec, "loads", noted_loads)  # (the module `burstsnapshot` reads it from)
    snap, _steps = decoded_in_steps(raw)
    assert len(parsed) > 40 and sum(parsed) > 0.99 * len(text)
    assert max(parsed) < 8 * 1024 + 16 * 1024  # (a cut and a batch of holds at most)
    monkeypatch.setattr(codec, "loads", loads)
    once = burstsnapshot.decode(raw)
    assert snap.tally is not None and once.tally is not None
    assert snap.tally.to_state() == once.tally.to_state() == tally.to_state()
    assert snap.detector.snapshot() == once.detector.snapshot() == det.snapshot()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(-5, 500), st.integers(-5, 500))
def test_the_inflated_pieces_slice_and_find_the_index_as_the_joined_text(pieces: list[bytes], a: int, b: int) -> None:
    tag = b',"json_pieces":'
    pieces = [p.replace(b"J", tag) for p in pieces]  # (tags whole and across pieces)
    text, joined = burstsnapshot._Text(pieces), b"".join(pieces)
    assert text.size == len(joined) and text.whole() == joined
    a, b = max(a, 0), max(b, 0)  # (offsets from the start only)
    assert text[a:b] == joined[a:b]
    assert text.rfind_tag() == joined.rfind(tag)


def _with_index(raw: bytes, index: Any) -> bytes:
    # The snapshot with its index replaced.
    text = zlib.decompress(raw)
    return zlib.compress(text[: text.rfind(b',"json_pieces":')] + b',"json_pieces":' + codec.dumps(index) + b"}")


def test_an_index_that_does_not_fit_its_snapshot_is_ignored_or_refused() -> None:
    from tests.test_burst import decoded_in_steps

    tally, det = many_holds(300), BurstDetector([0, 1])
    raw = burstsnapshot.encode(det, 7, tally)
    index = codec.loads(zlib.decompress(raw))[burstsnapshot.INDEX_KEY]
    want = tally.to_state()
    # Cuts outside the text, in the wrong order, not between brackets, or of the wrong type: the
    # whole is parsed, as `decode` (and a previous release) parses it.
    (path, cuts), *rest = index
    for bad in (
        [[path, [cuts[0], 10**9]], *rest],
        [*rest, [path, cuts]],
        [[path, [cuts[0] + 1, cuts[-1]]], *rest],
        [[path, [str(c) for c in cuts]], *rest],
        {"not": "a list"},
        [],
    ):
        snap, _ = decoded_in_steps(_with_index(raw, bad))
        assert snap.tally is not None and snap.tally.to_state() == want
    # Cuts between brackets that name no part, another one, or one of the same form (two
    # incidents' events swapped): the whole is parsed too, never a part's items in another.
    held = next(i for i, (p, _c) in enumerate(index) if p == ["hold_tally", "held"])
    a, b = (i for i, (p, _c) in enumerate(index) if p[:2] == ["hold_tally", "events"])
    swapped = {a: index[b][0], b: index[a][0]}
    for bad in (
        [[["detector", "nowhere"], c] if i == held else [p, c] for i, (p, c) in enumerate(index)],
        [[["detector", "scopes"], c] if i == held else [p, c] for i, (p, c) in enumerate(index)],
        [[swapped.get(i, p), c] for i, (p, c) in enumerate(index)],
    ):
        snap, _ = decoded_in_steps(_with_index(raw, bad))
        assert snap.tally is not None and snap.tally.to_state() == want
    # A key twice, the indexed part first: the later one is the value, as `decode` reads it.
    text = zlib.decompress(raw)
    close = text.rfind(b"}", 0, text.rfind(b',"json_pieces":'))  # (the tally's, its last key "held")
    twice = zlib.compress(text[:close] + b',"held":[]' + text[close:])
    none_held = {k: v for k, v in want.items() if k != "held"}
    once = burstsnapshot.decode(twice).tally
    assert once is not None and once.to_state() == none_held != want
    snap, _ = decoded_in_steps(twice)
    assert snap.tally is not None and snap.tally.to_state() == none_held
    # Cuts that cut an item, or a part that starts with a comma (not JSON as a whole): refused,
    # not restored.
    c0 = index[held][1][0]
    comma = [
        [p, [c[0], c[0], *(x + 1 for x in c[1:])] if i == held else [x + (i > held) for x in c]]
        for i, (p, c) in enumerate(index)
    ]
    text_comma = text[:c0] + b"," + text[c0:]
    for bad_raw in (
        _with_index(raw, [[p, [c[0], c[0] + 5, c[-1]]] if i == held else [p, c] for i, (p, c) in enumerate(index)]),
        _with_index(zlib.compress(text_comma), comma),
    ):
        with pytest.raises(ValueError):
            decoded_in_steps(bad_raw)
    with pytest.raises(ValueError):
        burstsnapshot.decode(_with_index(zlib.compress(text_comma), comma))
    # An incident named as the index, in a snapshot without one (a previous release's) and in one
    # with it.
    second = list(tally.events)[1]
    tally.events = {("json_pieces" if k == second else k): v for k, v in tally.events.items()}
    old = zlib.compress(codec.dumps({"signals_offset": 7, "detector": det.snapshot(), "hold_tally": tally.to_state()}))
    assert b',"json_pieces":' in zlib.decompress(old)
    for raw in (old, burstsnapshot.encode(det, 7, tally)):
        back = decoded_in_steps(raw)[0].tally
        assert back is not None and back.to_state() == tally.to_state() and "json_pieces" in back.events


def test_a_tally_is_rebuilt_from_its_state_a_batch_of_rows_a_step() -> None:
    state = many_holds(3000).to_state()
    rows = sum(map(len, state["events"].values())) + len(state["held"])
    steps = HoldTally.from_state_steps(state)
    n = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            built = done.value
            break
        n += 1
    assert n == rows // holdtally.RESTORE_ROWS and tally_fields(built) == tally_fields(HoldTally.from_state(state))


def test_no_cut_of_a_tally_snapshot_holds_more_than_a_batch_of_holds() -> None:
    # What the shell does between two turns of the event loop: at most `PIECE_BYTES` of JSON and
    # one batch, each cut built when it is read (a tally of 50,000 holds took 0.2-0.5 s at once).
    tally = many_holds(3000)
    state = tally.to_state(lazily=True)
    assert isinstance(state["held"], Iterator) and all(isinstance(rows, Iterator) for rows in state["events"].values())
    value = {"signals_offset": 7, "detector": BurstDetector([0, 1]).snapshot(lazily=True), "hold_tally": state}
    cuts = [c for c in burstsnapshot._json_pieces(value, burstsnapshot._CUTS) if type(c) is bytes]  # (not marks)
    assert sum(map(len, cuts)) > 400_000
    assert max(c.count(b'"rf_') for c in cuts) <= burstsnapshot._BATCH
    assert max(map(len, cuts)) < 16 * 1024


def test_a_lazy_snapshot_builds_each_row_when_it_is_read() -> None:
    # A row built before it is read shows the value it had then: a compiled build (mypyc) makes
    # a generator expression a list, built whole at once, which the pieces were to avoid.
    tally = many_holds(40)
    det = BurstDetector([0, 1])
    det.merchant_volume = {"merchant:M1": (1.0, 5, False), "merchant:M2": (2.0, 5, True)}
    state, snap = tally.to_state(lazily=True), det.snapshot(lazily=True)
    rid = next(iter(tally.held))
    tally.held[rid][1] = -1
    inc = next(iter(state["events"]))
    key = next(iter(tally.events[inc]))
    tally.events[inc][key][0] = -2
    det.merchant_volume["merchant:M2"] = (9.0, 6, True)
    assert [rid, *tally.held[rid]] in list(state["held"]) and tally.held[rid][1] == -1
    assert [*key, -2, tally.events[inc][key][1]] in list(state["events"][inc])
    assert ["merchant:M2", 9.0, 6, True] in list(snap["merchant_volume"])


def test_the_detector_ignores_hold_reports_on_the_signals_topic() -> None:
    det = BurstDetector([0])
    assert det.on_signals(report(0, T0, ["held", "r", "i", 1, T0 - 1])) == []
    assert det.closed_through is None


# -- the partitions' side ---------------------------------------------------------------------


def _reports(f: Feed) -> list[dict[str, Any]]:
    return [d.value for d in f.out if d.role == "signals" and is_hold_report(d.value)]


def test_an_engine_reports_its_hold_decisions_once_per_minute_it_decides() -> None:
    f = Feed()
    f.incidents([inc("opened", 100), inc("resolved", 1000)], EVERYTHING)
    unsettled(f, "QR1")
    unsettled(f, "QR2", amount=40_000)
    f.tick(400)
    f.p(payment("QR2-s", "settled", "QR2", 450, 40_000))
    f.tick(2000)
    events = [e for r in _reports(f) for e in r["hold_events"]]
    types = sorted((e[0], e[3]) for e in events)
    assert types == [
        ("held", 25_000),
        ("held", 40_000),
        ("released_without_payment", 40_000),
        ("requested_after_hold", 25_000),
    ]
    assert {e[2] for e in events} == {"in_a"}
    throughs = [r["decided_through_ms"] for r in _reports(f)]
    assert throughs == sorted(set(throughs)) and all(t % MINUTE_MS == 0 for t in throughs)
    # Each event is in a report that says it is decided.
    for r in _reports(f):
        assert all(e[4] < r["decided_through_ms"] for e in r["hold_events"])


def test_hold_events_not_reported_yet_are_saved_with_the_metadata() -> None:
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    unsettled(f)
    f.tick(310)  # the deadline at 300 is held; the decided-through minute did not move since
    before = [e for r in _reports(f) for e in r["hold_events"]]
    meta = f.eng.save_meta()
    restored = PartitionEngine.restore(0, HOLDS, meta, [(r, f.eng.save_reference(r) or b"") for r in f.eng.refs])
    restored.on_incidents([inc("opened", 100)], EVERYTHING)
    g = Feed(eng=restored)
    g.offsets = list(f.offsets)
    g.tick(500)
    after = [e for r in _reports(g) for e in r["hold_events"]]
    assert [e[0] for e in before + after] == ["held"]
    # with the scopes of its payment, which the tally's `kept_held` needs
    tags = [scope_tag(k) for k in payment_scope_keys("RINTIS", "BCA", "BANKDKI", "ID1020012345678", "5812")]
    assert [r["hold_scopes"] for r in _reports(g) if r["hold_events"]] == [{after[0][1]: tags}]


def _incident_alert(ev: IncidentEvent) -> Decision:
    # The detector's alert of an incident event: its event time is `occurred_at` + the probe age.
    value = {
        "alert_id": f"al_{ev.incident_id}_{ev.status}",
        "kind": "FAILURE_BURST",
        "severity": "info" if ev.status == "resolved" else "critical",
        "scope": {"type": ev.scope_type, "id": ev.scope_id},
        "status": ev.status,
        "incident_id": ev.incident_id,
        "occurred_at": format_ms(ev.at_ms - PROBE_MS),
        "summary": f"{ev.scope_type} {ev.scope_id} failing",
    }
    return Decision("alerts", ev.scope_id.encode(), value, ev.at_ms - PROBE_MS)


def test_a_second_incident_counts_the_holds_of_the_first_that_it_keeps_on() -> None:
    # RINTIS resolves with holds still held and fails again within G as a new incident, which
    # keeps them on: they stay attributed to the first (totals count each hold once) and the
    # second's alerts show them as `kept_held`; so does a merchant pool incident covering them,
    # and no incident counts a hold of a payment it does not cover, or one ended by then.
    events = [
        inc("opened", 100),
        inc("resolved", 1000),
        inc("opened", 1500, "in_b"),  # within G (900 s) of in_a's resolution
        inc("updated", 1800, "in_b"),
        inc("resolved", 2400, "in_b"),
        inc("opened", 100, "in_c", ("switch", "ARTAJASA")),
        inc("opened", 1600, "in_d", ("merchant", "MCC-5812")),
        inc("resolved", 1700, "in_d", ("merchant", "MCC-5812")),
    ]
    f = Feed()
    f.incidents(events, EVERYTHING)
    unsettled(f, "QR1")  # deadline 300: held under in_a, kept on by in_b to 2400 + G
    unsettled(f, "QR2", amount=40_000)  # held under in_a too, released when it settles at 1200
    unsettled(f, "QR3", amount=70_000, switch_id="ARTAJASA")  # held under in_c: in_b does not cover it
    f.p(payment("QR2-s", "settled", "QR2", 1200, 40_000))
    f.tick(4000)
    assert [(v["type"], v["reference"], v["decided_at"]) for v in f.refunds()] == [
        ("refund.held", "QR1", format_ms(ms(300))),
        ("refund.held", "QR2", format_ms(ms(300))),
        ("refund.held", "QR3", format_ms(ms(300))),
        ("refund.hold_released", "QR2", format_ms(ms(1200))),
        ("refund.requested", "QR1", format_ms(ms(3300))),
    ]
    tally = HoldTally([0], PROBE_MS)
    assert len(tally.on_alerts([_incident_alert(ev) for ev in events])) == 4  # the openings
    out = [d.value for r in _reports(f) for d in tally.on_report(r)]
    holds = {v["alert_id"]: v["holds"] for v in out}

    def counts(alert_id: str, key: str) -> tuple[int, int]:
        return holds[alert_id][key]["count"], holds[alert_id][key]["amount_idr"]

    assert counts("al_in_a_resolved", "still_held") == (2, 65_000)
    assert counts("al_in_a_resolved", "kept_held") == (0, 0)  # QR3 is ARTAJASA's
    for alert_id in ("al_in_b_updated", "al_in_b_resolved"):
        assert counts(alert_id, "held") == (0, 0)
        assert counts(alert_id, "kept_held") == (1, 25_000)  # QR1; QR2 ended at 1200
    assert counts("al_in_d_resolved", "kept_held") == (2, 95_000)  # QR1 and QR3 (mcc 5812)
    [summary] = [v["summary"] for v in out if v["alert_id"] == "al_in_b_updated"]
    assert summary == "switch RINTIS failing; holds of other incidents kept on: 1 (Rp 25.000)"


def test_a_cancellation_an_incident_explains_carries_its_id_and_is_paged_with_it() -> None:
    f = Feed()
    f.incidents([inc("opened", 400), inc("resolved", 3000)], EVERYTHING)
    unsettled(f)  # deadline at 300, before the incident opened: requested, not held
    f.tick(350)
    f.p(payment("QR1-s", "settled", "QR1", 500))  # settles during the incident: a clawback
    f.tick(600)
    [alert] = f.alerts()
    assert alert["kind"] == "LATE_SETTLEMENT" and alert["incident_id"] == "in_a" and alert["dedup_key"] == "in_a"
    assert alert["summary"].endswith(
        "after the refund deadline; check whether it was already paid out (during the incident of Switch RINTIS, in_a)"
    )
    assert [e.message for e in ALERTS.iter_errors(alert)] == [] and beyond_schema_errors("qris.alerts", alert) == []
    [cancel] = [e for r in _reports(f) for e in r["hold_events"] if e[0] == "cancellations"]
    assert cancel[2] == "in_a" and cancel[3] == 25_000 and cancel[4] == ms(500)
    # No incident covering it: the alert stays as it was.
    g = Feed()
    g.incidents([inc("opened", 400, scope=("switch", "OTHER"))], EVERYTHING)
    unsettled(g)
    g.tick(350)
    g.p(payment("QR1-s", "settled", "QR1", 500))
    g.tick(600)
    [plain] = g.alerts()
    assert "incident_id" not in plain and plain["dedup_key"].startswith("LATE_SETTLEMENT:")
    assert plain["summary"].endswith("check whether it was already paid out")


def test_two_cancellations_one_incident_explains_are_two_alertmanager_alerts() -> None:
    # Alertmanager tells alerts apart by their labels; the routing recipe keeps them and adds
    # `dedup_key`, the incident's for both: the refund's own label keeps them two.
    f = Feed()
    f.incidents([inc("opened", 400), inc("resolved", 3000)], EVERYTHING)
    for ref in ("QR1", "QR2"):
        f.p(payment(ref + "-q", "requested", ref, 0))
        f.l(ledger(ref + "-d", "debited", ref, 0))
    f.tick(350)
    for ref in ("QR1", "QR2"):
        f.p(payment(ref + "-s", "settled", ref, 500))
    f.tick(600)
    first, second = f.alerts()
    assert first["dedup_key"] == second["dedup_key"] == "in_a"
    assert first["labels"]["refund_id"] == first["refund_id"] != second["labels"]["refund_id"]
    assert {k: v for k, v in first["labels"].items() if k != "refund_id"} == {
        k: v for k, v in second["labels"].items() if k != "refund_id"
    }


def test_a_cancellation_summary_naming_a_long_escaped_scope_stays_within_the_cap_and_keeps_its_start() -> None:
    # 128 private-use characters (allowed in ids) escape to 1,280: the incident's name is cut,
    # not the refund's own text.
    from stream.core.holds import IncidentEvent, IncidentTimeline
    from stream.core.holdtally import explain_cancellations
    from stream.core.records import PaymentEvent
    from stream.core.validation import parse_payment

    mid = "\U000f0000" * 128
    req = parse_payment(b"QR1", payment("QR1-q", "requested", "QR1", 0, merchant_id=mid))
    assert isinstance(req, PaymentEvent)
    timeline = IncidentTimeline()
    timeline.add([IncidentEvent(0, "opened", "in_a", "merchant", mid)], 10**15)
    text = "Refund rf_x of Rp 25.000 for QR1 cancelled: check whether it was already paid out"
    v = {
        "kind": "LATE_SETTLEMENT",
        "severity": "warning",
        "refund_id": "rf_x",
        "summary": text,
        "scope": {"type": "merchant", "id": mid},
    }
    explain_cancellations([Decision("alerts", b"QR1", v, ms(5))], req, timeline)
    assert v["incident_id"] == "in_a" and len(v["summary"]) <= 1000
    assert v["summary"].startswith(text) and " (during the incident of Merchant \\U000f0000" in v["summary"]


def test_holds_off_makes_no_reports() -> None:
    from dataclasses import replace

    f = Feed(replace(HOLDS, max_hold_ms=0))
    unsettled(f)
    f.l(ledger("QR1-r", "reversed", "QR1", 10))
    f.tick(2000)
    assert _reports(f) == [] and b"hold_events" not in f.eng.save_meta()


# -- replay --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outage_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tally") / "outage.jsonl"
    subprocess.run(
        [sys.executable, "-m", "stream", "simulate", "--scenario", "outage", "--seed", "7", "--minutes", "40",
         "--rate-per-min", "200", "--partitions", "2", "--out", str(path)],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    return path


def _replay(path: Path, out: Path, *args: str, python: str = sys.executable, cwd: Path = ROOT) -> list[dict[str, Any]]:
    subprocess.run(
        [python, "-m", "stream", "replay", "--in", str(path), "--out", str(out), *args],
        check=True, cwd=cwd, capture_output=True,
    )  # fmt: skip
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    return [x["value"] if isinstance(x["value"], dict) else orjson.loads(x["value"]) for x in lines]


@pytest.mark.slow  # replays of a simulated outage (CLI subprocesses)
def test_replay_the_resolved_alert_counts_the_refund_held_records_of_its_incident(
    outage_file: Path, tmp_path: Path
) -> None:
    values = _replay(outage_file, tmp_path / "one.jsonl", "--jobs", "1", "--max-hold-s", "7200", "--drain")
    bursts = [v for v in values if v.get("kind") == "FAILURE_BURST" and v["status"] != "opened"]
    resolved = [v for v in bursts if v["status"] == "resolved"]
    assert resolved and all("holds" in v for v in bursts)
    for a in bursts:
        assert [e.message for e in ALERTS.iter_errors(a)] == [] and beyond_schema_errors("qris.alerts", a) == []
        t = parse_ms(a["holds"]["as_of"])
        held = [
            v for v in values
            if v.get("type") == "refund.held" and v["incident_id"] == a["incident_id"]
            and parse_ms(v["decided_at"]) <= t
        ]  # fmt: skip
        assert a["holds"]["held"] == {"count": len(held), "amount_idr": sum(v["amount"] for v in held)}
    assert max(v["holds"]["held"]["count"] for v in resolved) > 100
    two = _replay(outage_file, tmp_path / "two.jsonl", "--jobs", "2", "--max-hold-s", "7200", "--drain")
    key = lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert sorted(map(key, two)) == sorted(map(key, values))
    assert [v for v in two if v.get("kind") == "FAILURE_BURST"] == [
        v for v in values if v.get("kind") == "FAILURE_BURST"
    ]


@pytest.mark.slow  # replays of a simulated outage (CLI subprocesses)
def test_replay_without_drain_leaves_out_the_alerts_not_decided_past_as_live_would(outage_file: Path) -> None:
    # The input cut in the middle of the incident: an updated/resolved alert is out (with its
    # holds) exactly when every partition decided past its time, as the live tally does.
    with open(outage_file, "rb") as fh:
        records = list(read_records(fh))
    params = Params(max_hold_ms=7_200_000)
    # Cut just after the detector could close the minute of the first `updated` alert.
    _r, full = with_incidents(records, params, BurstParams(), drain=False)
    first_update = next(d for d in full if d.value.get("status") == "updated")
    target = parse_ms(first_update.value["occurred_at"]) + 80_000
    at = next(i for i, rec in enumerate(records) if parse_ms(orjson.loads(rec.value)["occurred_at"]) >= target)
    cut = records[:at]
    r, made = with_incidents(cut, params, BurstParams(), drain=False)
    for rec in cut:
        r.feed(rec)
    emitted = with_holds(made, r.signals, r.detector_partitions, params)
    decided = min(r.engines[p].decided_through_ms for p in r.detector_partitions)
    deferred = [d for d in made if d.value["kind"] == "FAILURE_BURST" and d.value["status"] != "opened"]
    t = {d.value["alert_id"]: parse_ms(d.value["occurred_at"]) + PROBE_MS for d in deferred}
    out = {d.value["alert_id"] for d in emitted}
    assert first_update.value["alert_id"] in t and first_update.value["alert_id"] not in out
    for a, t_ms in t.items():
        # Reports state the decided time floored to the minute: an alert within the last
        # minute waits for the next one.
        assert (a in out) == (t_ms < decided - decided % MINUTE_MS), (a, t_ms, decided)
    assert [d.value["alert_id"] for d in made if d.value["alert_id"] in out or d.value["alert_id"] not in t] == [
        d.value["alert_id"] for d in emitted
    ]
    # With --drain every partition decides everything: all of them are out.
    r, made = with_incidents(cut, params, BurstParams(), drain=True)
    for rec in cut:
        r.feed(rec)
    for _p, _d in r.drain():
        pass
    assert len(with_holds(made, r.signals, r.detector_partitions, params)) == len(made)


@pytest.mark.slow  # replays of a simulated outage (CLI subprocesses)
def test_replay_with_holds_off_is_byte_identical_to_mains(outage_file: Path, tmp_path: Path) -> None:
    main = Path("/work/main")
    python = main / ".venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("no /work/main checkout to compare with")
    ours = tmp_path / "ours.jsonl"
    theirs = tmp_path / "theirs.jsonl"
    _replay(outage_file, ours, "--jobs", "1", "--max-hold-s", "0", "--drain")
    _replay(outage_file, theirs, "--jobs", "1", "--max-hold-s", "0", "--drain", python=str(python), cwd=main)
    assert ours.read_bytes() == theirs.read_bytes()


def test_many_holds_in_a_minute_go_in_several_small_reports_with_the_progress_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.core import partition

    monkeypatch.setattr(partition, "HOLD_REPORT_MAX_EVENTS", 2)
    f = Feed()
    f.incidents([inc("opened", 100)], EVERYTHING)
    for i in range(5):
        unsettled(f, f"QR{i}")
    f.tick(700)  # five deadlines at 300 held; the decided-through time crosses minutes
    reports = _reports(f)
    with_events = [r for r in reports if r["hold_events"]]
    assert [len(r["hold_events"]) for r in with_events] == [2, 2, 1]
    assert with_events[0]["decided_through_ms"] == with_events[1]["decided_through_ms"]
    assert with_events[2]["decided_through_ms"] > with_events[1]["decided_through_ms"]
    assert all(e[4] < with_events[2]["decided_through_ms"] for r in with_events for e in r["hold_events"])
    # The tally counts all five, whatever the split.
    tally = HoldTally([0], PROBE_MS)
    tally.on_alerts([burst_alert("updated", (ms(300) - PROBE_MS) // MINUTE_MS, "in_a")])  # t just past 300 s
    [alert] = [a for r in reports for a in tally.on_report(r)]
    assert alert.value["holds"]["held"]["count"] == 5


def test_holds_a_partition_reports_first_below_its_idle_floor_count_in_other_incidents_kept_held() -> None:
    # Live, a partition without any record follows the worker's other partitions (the idle rule)
    # and reports its progress; its first records are dated before that floor, which drops, and
    # it reports their holds then, below its previous report: new holds, not repeats. A second
    # RINTIS incident keeps QR1 on, as in a replay without the floor.
    events = [inc("opened", 100), inc("resolved", 1000), inc("opened", 1500, "in_b"), inc("updated", 1800, "in_b")]
    alerts = [_incident_alert(ev) for ev in events]
    floored, replayed = Feed(), Feed()
    for f in (floored, replayed):
        f.incidents(events, EVERYTHING)
    floored.out.extend(floored.eng.advance_to(ms(600)))
    for f in (floored, replayed):
        unsettled(f, "QR1")  # deadline 300: held under in_a, kept on by in_b
        f.tick(2000)
    [floor, *later] = [r["decided_through_ms"] for r in _reports(floored)]
    held_at = [e[4] for r in _reports(floored) for e in r["hold_events"] if e[0] == "held"]
    assert held_at == [ms(300)] and ms(300) < floor < min(later)

    def kept(f: Feed) -> list[tuple[str, int]]:
        out = tallied_alerts(alerts, _reports(f), [0], PROBE_MS)
        return [(d.value["alert_id"], d.value["holds"]["kept_held"]["count"]) for d in out if "holds" in d.value]

    assert kept(floored) == kept(replayed) == [("al_in_a_resolved", 0), ("al_in_b_updated", 1)]


def test_a_report_sent_again_after_its_holds_ended_and_were_forgotten_takes_none_again() -> None:
    # A partition restored from a state saved before two reports sends them again: the tally
    # forgot the hold they began and ended, which would otherwise look held for ever.
    t = HoldTally([0], PROBE_MS)
    first = report(0, (M + 1) * MINUTE_MS, ["held", "rX", "inc_a", 5, M * MINUTE_MS + 10])
    first["hold_scopes"] = {"rX": RINTIS_TAGS}
    second = report(0, (M + 2) * MINUTE_MS, ["requested_after_hold", "rX", "inc_a", 5, (M + 1) * MINUTE_MS + 10])
    for value in (first, second):
        t.on_report(value)
    assert t.held == {}
    for value in (first, second, report(0, (M + 3) * MINUTE_MS)):
        t.on_report(value)
    assert t.held == {} and t.kept("inc_b", "switch", "RINTIS", (M + 3) * MINUTE_MS) == [0, 0]
