"""`qris-guard trace`: the facts of one reference, from literal records and from the demo's
outage scenario, built through the core's observer hook."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stream import cli
from stream.core import codec
from stream.core.decisions import Decision
from stream.core.eventtime import format_ms, parse_ms, wib_and_utc
from stream.core.holds import IncidentEvent
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.drivers import trace as trace_module
from stream.drivers.replay import Replay, replay
from stream.drivers.replayfile import KafkaRecord, record_to_line
from stream.drivers.trace import TraceObserver, explain, partitions_of, render, trace
from stream.simulate import generate
from tests.records import T0, ledger, payment

P, L = "qris.payment-requests", "qris.ledger-debits"
TOPICS = (P, L)


def _recs(items: list[tuple[str, str, bytes]]) -> list[KafkaRecord]:
    offsets = {P: 0, L: 0}
    out = []
    for topic, key, value in items:
        try:  # Kafka time: half a second after the event (the clock guard leaves it alone)
            ts = parse_ms(json.loads(value)["occurred_at"]) + 500
        except ValueError:
            ts = T0
        out.append(KafkaRecord(topic, 0, offsets[topic], ts, key.encode(), value))
        offsets[topic] += 1
    return out


def _day() -> list[KafkaRecord]:
    return _recs(
        [
            (P, "R1", payment("R1-q", "requested", "R1", 0)),
            (L, "R1", ledger("R1-d", "debited", "R1", 1)),
            (P, "R2", payment("R2-q", "requested", "R2", 2)),
            (L, "R2", ledger("R2-d", "debited", "R2", 3)),
            (P, "R2", payment("R2-s", "settled", "R2", 4)),
            (L, "R1", ledger("R1-d", "debited", "R1", 1)),  # a redelivered debit
            (P, "R3", payment("R3-q", "requested", "R3", 5)),
            (L, "R3", ledger("R3-d", "debited", "R3", 6)),
            (L, "R1", b'{"event_id": "R1-x", "type": "debited", "reference": "R1"'),  # bad JSON, keyed R1
            (P, "R3", payment("R3-late", "settled", "R3", 400)),
            (P, "TAIL", payment("T-q", "requested", "TAIL", 2000)),
            (L, "TAIL", ledger("T-r", "reversed", "TAIL", 2000, amount=1)),
        ]
    )


def _trace(ref: str, records: list[KafkaRecord], **kw: object) -> dict:
    t = trace(records, ref, Params(), partitions_of(records, ref, TOPICS), **kw)  # type: ignore[arg-type]
    assert t is not None
    return t


def test_a_refunded_payment_shows_every_record_the_deadline_arithmetic_and_the_refund() -> None:
    t = _trace("R1", _day())
    by_id = [(f.get("event_id"), f["outcome"]) for f in t["records"]]
    assert by_id == [("R1-q", "accepted"), ("R1-d", "accepted"), ("R1-d", "duplicate"), (None, "dead-lettered")]
    dead = t["records"][-1]
    assert dead["topic"] == L and dead["offset"] == 4 and "JSON" in dead["reason"]
    debit = t["records"][1]
    assert debit["effective_ms"] == T0 + 1000 and debit["kafka_time_ms"] == T0 + 1500
    assert debit["watermark_when_processed_ms"] > debit["effective_ms"]
    assert t["deadlines"] == [
        {
            "deadline_ms": T0 + 301_000,
            "watermark_ms": t["deadlines"][0]["watermark_ms"],
            "net": 25_000,
            "settled": 0,
            "active": 0,
            "owed": 25_000,
            "decided": [("refund.requested", t["decisions"][0]["value"]["refund_id"])],
        }
    ]
    [d] = t["decisions"]
    assert d["value"]["type"] == "refund.requested" and d["value"]["reason"] == "SETTLEMENT_TIMEOUT"
    text = render(t)
    for needle in ("R1-q", "R1-d", "DUPLICATE", "DEAD-LETTERED", d["value"]["refund_id"], "WIB", "UTC"):
        assert needle in text
    assert "owed = net 25000 - settled 0 - active 0 = 25000" in text


def test_records_read_topic_after_topic_meet_the_watermark_a_live_worker_would() -> None:
    # `trace --from-kafka` reads the payment topic, then the ledger's: taken in that order, every
    # payment record would arrive before any debit, at a watermark of -inf. Merged by Kafka time,
    # R3's late settlement arrives after the debits that moved the watermark; the decisions are
    # the same in either order.
    from stream.core.partition import NEG_INF
    from stream.drivers.kafkaread import merged_by_time

    day = _day()
    read = [r for r in day if r.topic == P] + [r for r in day if r.topic == L]
    merged = merged_by_time(read)
    assert [r for r in merged if r.topic == P] == [r for r in day if r.topic == P]  # each topic's own order
    assert [r for r in merged if r.topic == L] == [r for r in day if r.topic == L]
    apart, together = _trace("R3", read), _trace("R3", merged)
    assert apart["decisions"] == together["decisions"]
    arrival = {f["event_id"]: f["watermark_on_arrival_ms"] for f in together["records"]}
    assert {f["event_id"]: f["watermark_on_arrival_ms"] for f in apart["records"]}["R3-late"] == NEG_INF
    assert arrival["R3-late"] == T0 + 6_000 - 30_000  # min(payments' 400 s, its own, ledger's 6 s) - A
    assert arrival["R3-q"] == T0 + 3_000 - 30_000  # min(payments' 5 s, its own, ledger's 3 s) - A


def test_a_cancelled_refund_names_both_ids_and_the_late_settlement() -> None:
    t = _trace("R3", _day())
    types = [d["value"].get("type") or d["value"]["kind"] for d in t["decisions"]]
    assert types == ["refund.requested", "refund.cancel_requested", "LATE_SETTLEMENT"]
    rid = t["decisions"][0]["value"]["refund_id"]
    text = render(t)
    assert f"cancels {rid}" in text and "R3-late" in text and "LATE_SETTLEMENT" in text


def test_a_settled_payment_says_why_nothing_was_refunded() -> None:
    t = _trace("R2", _day())
    assert t["decisions"] == []
    assert any("owed = net 25000 - settled 25000 - active refunds 0 = 0" in w for w in t["why"])


def test_a_rejected_ledger_record_is_not_told_as_money_not_taken() -> None:
    # The only debit of R9 was dead-lettered (its amount a string): the core bank may have taken
    # the money, so the trace must not tell the engineer it did not.
    records = _recs(
        [
            (P, "R9", payment("R9-q", "requested", "R9", 0)),
            (L, "R9", ledger("R9-d", "debited", "R9", 1).replace(b'"amount":25000', b'"amount":"25000"')),
            (P, "R8", payment("R8-q", "requested", "R8", 2)),
        ]
    )
    assert b'"amount":"25000"' in records[1].value
    why = _trace("R9", records, drain=True)["why"]
    assert any("1 ledger record(s) of this reference were dead-lettered" in w for w in why), why
    assert not any("money was not taken" in w for w in why)
    why = _trace("R8", records, drain=True)["why"]
    assert any("No debit was processed: the customer's money was not taken" in w for w in why), why


def test_not_yet_due_without_drain_and_due_with_it() -> None:
    recs = _recs([(P, "R9", payment("R9-q", "requested", "R9", 0)), (L, "R9", ledger("R9-d", "debited", "R9", 1))])
    early = _trace("R9", recs)
    assert early["decisions"] == []
    assert any("still waiting for the watermark" in w for w in early["why"])
    recs += _recs([])  # nothing more: the watermark stays behind the deadline
    drained = _trace("R9", recs, drain=True)
    assert [d["value"]["type"] for d in drained["decisions"]] == ["refund.requested"]


def test_invisible_and_bidirectional_characters_of_an_identifier_are_escaped() -> None:
    """The contract forbids control characters and bidirectional overrides in identifiers, not a
    zero-width space or a right-to-left mark: a reference holding one reads, raw, as another
    reference. Trace writes them as `\\uXXXX`, as alerts and reports do, also in the line that
    names a redelivered event's id."""
    ref = "R1\u200f"
    debit = ledger("R1\u200b-d", "debited", ref, 1)
    t = _trace(
        ref, _recs([(P, ref, payment("R1\u200b-q", "requested", ref, 0)), (L, ref, debit), (L, ref, debit)]), drain=True
    )
    text = render(t)
    assert "\u200f" not in text and "\u200b" not in text
    assert text.startswith("Reference R1\\u200f: ") and "event_id R1\\u200b-q: " in text
    assert "event_id R1\\u200b-d already processed on this stream: ignored" in text


def test_a_right_to_left_identifier_is_escaped_in_the_text_and_kept_in_the_json() -> None:
    """Hebrew letters are printable and allowed in an identifier: trace's lines show the reference
    and the event ids escaped, so the counts after them keep their place; `--json` keeps them as
    they came."""
    ref = "\u05d0\u05d1\u05d2-7"
    recs = _recs([(P, ref, payment(ref + "-q", "requested", ref, 0)), (L, ref, ledger("d1", "debited", ref, 1))])
    t = _trace(ref, recs, drain=True)
    text = render(t)
    shown = "\\u05d0\\u05d1\\u05d2-7"
    assert text.startswith(f"Reference {shown}: partition 0, 2 input record(s)")
    assert f"event_id {shown}-q: ACCEPTED" in text
    assert t["reference"] == ref and t["records"][0]["event_id"] == ref + "-q"


def test_state_expired_is_explained() -> None:
    recs = _recs(
        [
            (P, "R5", payment("R5-q", "requested", "R5", 0)),
            (P, "R5", payment("R5-s", "settled", "R5", 1)),
            (L, "R5", ledger("R5-d", "debited", "R5", 2)),
            (P, "TAIL", payment("T-q", "requested", "TAIL", 5000)),
            (L, "TAIL", ledger("T-r", "reversed", "TAIL", 5000, amount=1)),
        ]
    )
    t = trace(recs, "R5", Params(retention_ms=600_000), {0})
    assert t is not None and t["dropped"] is not None
    assert any(w.startswith("State expired") for w in t["why"])
    assert t["final"] is None


def test_the_observer_changes_no_decision() -> None:
    recs = _day()
    plain = [d for _p, d in replay(recs, Params(), drain=True)]
    eng = PartitionEngine(0, Params(), persistent=False)
    eng.observer = TraceObserver("R1", 0, TOPICS)
    watched = []
    for r in recs:
        watched.extend(eng.on_record(Stream.P if r.topic == P else Stream.L, r.offset, r.key, r.value, r.timestamp_ms))
    watched.extend(eng.drain())
    assert [d.value for d in watched if d.role != "signals"] == [d.value for d in plain if d.role != "signals"]


def test_a_hold_shows_its_incident_and_release_time() -> None:
    """Holds are decided by the core once it has them; here a literal `refund.held` shows how
    trace explains one (CONTRACT.md "Refund holds")."""
    held = {
        "type": "refund.held",
        "refund_id": "rf_1",
        "reference": "R7",
        "amount": 25_000,
        "reason": "SETTLEMENT_TIMEOUT",
        "incident_id": "inc_abc",
        "release_by": "2025-03-29T04:05:00.000Z",
        "evidence": {"net_debited": 25_000, "settled_amount": 0, "active_refunds_before": 0},
    }
    t = {
        "reference": "R7",
        "partitions": [0],
        "records": [],
        "deadlines": [],
        "decisions": [{"partition": 0, "role": "refunds", "at_ms": T0, "value": held}],
        "incidents_behind_holds": [
            {"incident_id": "inc_abc", "status": "opened", "summary": "Switch RINTIS: 40 of 50"}
        ],
        "incidents_known": True,
        "dropped": None,
        "final": None,
        "watermark_ms": {"0": T0},
    }
    t["why"] = explain(t)
    text = render(t)
    assert "refund HELD rf_1" in text and "inc_abc" in text and "2025-03-29 11:05:00 WIB (04:05:00 UTC)" in text
    assert "Switch RINTIS" in text


def _write(path: Path, recs: list[KafkaRecord]) -> None:
    with path.open("wb") as fh:
        for r in recs:
            fh.write(codec.dumps(record_to_line(r)) + b"\n")


def test_cli_unknown_reference_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.jsonl"
    _write(f, _day())
    assert cli.main(["trace", "NOPE", "--in", str(f)]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "unknown reference 'NOPE'" in out
    # A right-to-left reference is escaped as in all text for people: raw, its letters would
    # reorder the sentence around them.
    assert cli.main(["trace", "QR\u05d0\u05d1", "--in", str(f)]) == 1
    out = capsys.readouterr().out
    assert "unknown reference 'QR\\u05d0\\u05d1'" in out and "\u05d0" not in out
    assert cli.main(["trace", "R1", "--in", str(f), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["reference"] == "R1" and got["decisions"][0]["value"]["type"] == "refund.requested"


def test_the_demo_scenario_refunded_cancelled_and_unrefunded(tmp_path: Path) -> None:
    sim = list(
        generate(
            "outage", seed=29, start_ms=T0, minutes=40, rate_per_min=40, partitions=4, payment_topic=P, ledger_topic=L
        )
    )
    recs = [
        KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        for r in sim
    ]
    outs = [d.value for _p, d in replay(recs, Params(), drain=True) if d.role == "refunds"]
    requested = {v["reference"] for v in outs if v["type"] == "refund.requested"}
    cancelled = {v["reference"] for v in outs if v["type"] == "refund.cancel_requested"}
    refunded = sorted(requested - cancelled)[0]
    was_cancelled = sorted(cancelled)[0]
    debited = {codec.loads(r.value)["reference"] for r in recs if r.topic == L and r.value.startswith(b"{")}
    none = sorted(debited - requested)[0]
    f = tmp_path / "demo.jsonl"
    _write(f, recs)
    for ref, needle in ((refunded, "refund requested"), (was_cancelled, "refund cancelled"), (none, "nothing owed")):
        t = _trace(ref, recs, drain=True)
        text = render(t)
        assert needle in text, text
        # Every input event id and every refund id of the reference is named.
        ids = {
            codec.loads(r.value)["event_id"]
            for r in recs
            if r.value.startswith(b"{") and codec.loads(r.value).get("reference") == ref
        }
        assert ids and all(i in text for i in ids)
        assert all(d["value"]["refund_id"] in text for d in t["decisions"] if d["role"] == "refunds")


def test_a_keyless_record_that_escapes_the_reference_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records sent without a key (CONTRACT.md allows them) whose JSON escapes the reference, as
    Python's `json.dumps` does by default: a quote, a non-ASCII letter, or any character as
    `\\uXXXX`. Every valid spelling is found, and nothing else is."""
    ref = 'QR-Café"1'

    def keyless(topic: str, offset: int, value: bytes, partition: int = 0) -> KafkaRecord:
        v = json.loads(value)
        v["reference"] = ref
        return KafkaRecord(topic, partition, offset, parse_ms(v["occurred_at"]) + 500, None, json.dumps(v).encode())

    recs = [
        keyless(P, 0, payment("C-q", "requested", "-", 0)),
        keyless(L, 0, ledger("C-d", "debited", "-", 1)),
        KafkaRecord(P, 1, 0, T0, None, b'{"reference": "\\u0051\\u0052-Caf\\u00e9\\"1", "type": "x"}'),
        KafkaRecord(P, 2, 0, T0, None, b'{"reference": "QR-Caf\\u00e9\\"2", "type": "x"}'),
        KafkaRecord(P, 3, 0, T0, None, b'{"reference": "QR-Caf\\u00e9\\"1'),  # not JSON: not parsed as a match
    ]
    assert recs[0].value is not None and b'\\u00e9\\"1' in recs[0].value  # (json.dumps' spelling)
    assert partitions_of(recs, ref, TOPICS) == {0, 1}
    f = tmp_path / "keyless.jsonl"
    _write(f, recs[:2])
    assert cli.main(["trace", ref, "--in", str(f), "--drain", "--max-hold-s", "0", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [d["value"]["type"] for d in got["decisions"]] == ["refund.requested"]
    assert [r["event_id"] for r in got["records"]] == ["C-q", "C-d"]


def test_the_trace_doctests() -> None:
    import doctest

    failures, tried = doctest.testmod(trace_module, raise_on_error=False, verbose=False)
    assert failures == 0 and tried >= 2


def _two_incidents(
    monkeypatch: pytest.MonkeyPatch, bca_opened_s: int
) -> tuple[list[KafkaRecord], Params, list[IncidentEvent]]:
    """Payment H1 (switch RINTIS, acquirer BCA; deadline T0 + 401 s) and an incident timeline
    given in place of the first pass's detector (the only thing patched): RINTIS open from 0 to
    600 s, BCA from `bca_opened_s` to 1500 s. Either way the hold lasts until BCA's resolution
    + G (2400 s): RINTIS resolves while BCA is open (CONTRACT.md, "Refund holds")."""
    other = {"switch_id": "JALIN", "acquirer_id": "MANDIRI", "mcc": "5411", "merchant_id": "ID9"}
    recs = _recs(
        [
            (P, "H1", payment("H1-q", "requested", "H1", 100)),
            (L, "H1", ledger("H1-d", "debited", "H1", 101)),
            (P, "X", payment("X-q", "requested", "X", 3000, **other)),
            (L, "X", ledger("X-d", "debited", "X", 3000)),
        ]
    )
    events = sorted(
        [
            IncidentEvent(T0, "opened", "in_RINTIS", "switch", "RINTIS"),
            IncidentEvent(T0 + bca_opened_s * 1000, "opened", "in_BCA", "acquirer", "BCA"),
            IncidentEvent(T0 + 600_000, "resolved", "in_RINTIS", "switch", "RINTIS"),
            IncidentEvent(T0 + 1_500_000, "resolved", "in_BCA", "acquirer", "BCA"),
        ],
        key=lambda e: e.at_ms,
    )
    alerts = [
        Decision(
            "alerts",
            e.scope_id.encode(),
            {
                "alert_id": f"a{i}",
                "kind": "FAILURE_BURST",
                "severity": "critical",
                "status": e.status,
                "incident_id": e.incident_id,
                "scope": {"type": e.scope_type, "id": e.scope_id},
                "occurred_at": format_ms(e.at_ms),
                "summary": f"{e.scope_type} {e.scope_id} {e.status}",
            },
            e.at_ms,
        )
        for i, e in enumerate(events)
    ]
    params = replace(Params(max_hold_ms=7_200_000), burst_signals=False)

    def detector(
        records: object, params: Params, burst: object, drain: bool, warm: object = None
    ) -> tuple[Replay, list[Decision]]:
        return Replay(params, incidents=events, incidents_known_through_ms=T0 + 10_000_000), alerts

    monkeypatch.setattr(trace_module, "with_incidents", detector)
    return recs, params, events


@pytest.mark.parametrize("bca_opened_s", [60, 900])
def test_a_hold_kept_on_by_a_second_incident_names_both_and_the_one_that_ended_it(
    monkeypatch: pytest.MonkeyPatch, bca_opened_s: int
) -> None:
    """BCA open at the deadline too (60 s), or opened during the hold within G of RINTIS's
    resolution (900 s): trace names every incident that kept the hold on, as the records carry
    them, and BCA's resolution as the one that ended it, not the first incident's."""
    recs, params, _events = _two_incidents(monkeypatch, bca_opened_s)
    t = trace(recs, "H1", params, {0})
    assert t is not None
    held, paid = (d["value"] for d in t["decisions"])
    assert (held["type"], paid["type"]) == ("refund.held", "refund.requested")
    at_deadline = ["in_RINTIS", "in_BCA"] if bca_opened_s < 401 else ["in_RINTIS"]
    assert held["incident_ids"] == at_deadline
    assert paid["hold"]["incident_ids"] == ["in_RINTIS", "in_BCA"]
    assert paid["hold"]["released_because"] == "incident_resolved"
    assert paid["hold"]["held_until"] == format_ms(T0 + 2_400_000)
    assert {i["incident_id"] for i in t["incidents_behind_holds"]} == {"in_RINTIS", "in_BCA"}
    text = render(t)
    [ended] = [x for x in text.splitlines() if "ended by" in x]
    assert "in_BCA, resolved at 2025-03-29 07:25:00 WIB (00:25:00 UTC)" in ended
    assert "incidents that kept it on: in_RINTIS, in_BCA" in ended
    # Each incident line says when it took effect for the hold, the times the hold line uses.
    assert f"incident in_BCA opened at {wib_and_utc(T0 + bca_opened_s * 1000)}: acquirer BCA opened" in text
    assert "incident in_BCA resolved at 2025-03-29 07:25:00 WIB (00:25:00 UTC): acquirer BCA resolved" in text
    assert t["incident_times"]["in_RINTIS"] == {"opened_at_ms": T0, "resolved_at_ms": T0 + 600_000}
    assert "Its hold ended 15 min after in_BCA, the last of its incidents (in_RINTIS, in_BCA), resolved." in t["why"]
    assert t["holds"] == [
        {
            "refund_id": held["refund_id"],
            "partition": 0,
            "open_at_deadline": at_deadline,
            "incident_ids": ["in_RINTIS", "in_BCA"],
            "released_because": "incident_resolved",
            "ended_by_incident": "in_BCA",
            "resolved_at_ms": T0 + 1_500_000,
        }
    ]


_PT, _LT = "qris.payment-requests", "qris.ledger-debits"


def _kafka_broker(monkeypatch: pytest.MonkeyPatch, records: list[KafkaRecord]) -> list[Any]:
    asked: list[Any] = []

    def read_topics(s: Any, topics: Any, *, partitions: set[int] | None = None, **_: Any) -> Any:
        asked.append(partitions)
        return iter([r for r in records if r.topic in topics and (partitions is None or r.partition in partitions)])

    import stream.drivers.kafkaread as kafkaread
    import stream.topics as topics_mod

    monkeypatch.setattr(cli, "_connect", lambda s: s)
    monkeypatch.setattr(kafkaread, "read_topics", read_topics)
    monkeypatch.setattr(topics_mod, "check_copartitioned", lambda s: 4)
    return asked


class _Log:
    def __init__(self) -> None:
        self.records: list[KafkaRecord] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        self.records.append(KafkaRecord(topic, partition, off, None, key, value))

    def ticks(self, partition: int, ref: str, t: float) -> None:
        self.add(_PT, partition, ref.encode(), payment(f"{ref}-q{t}", "requested", f"{ref}", t))
        self.add(_LT, partition, ref.encode(), ledger(f"{ref}-r{t}", "reversed", f"{ref}", t, amount=1))


def _trace_from_kafka(capsys: pytest.CaptureFixture[str], ref: str) -> tuple[int, str]:
    rc = cli.main(["trace", ref, "--from-kafka", "--max-hold-s", "0", "--json", "--drain"])
    return rc, capsys.readouterr().out


def test_a_keyed_request_with_a_keyless_debit_elsewhere_traces_the_refund(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (A review: `trace --from-kafka` with holds off read the partition of the reference's key,
    # and every partition only when that one had no record of it.)
    # The payment service keys its records; the ledger producer sends without a key (allowed):
    # the debit lands in partition 3, where replay and the worker refund it at the deadline.
    log = _Log()
    log.add(_PT, 0, b"QR1", payment("QR1-q", "requested", "QR1", 0))
    log.ticks(0, "T0", 1)
    log.add(_LT, 3, None, ledger("QR1-d", "debited", "QR1", 0))
    log.ticks(3, "T2", 1)
    _kafka_broker(monkeypatch, log.records)
    rc, out = _trace_from_kafka(capsys, "QR1")
    assert rc == 0, out
    got = json.loads(out)
    assert "QR1-d" in {f.get("event_id") for f in got["records"]}, "the debit that was refunded is not shown"
    assert any(d["value"].get("type") == "refund.requested" for d in got["decisions"]), got["why"]


def test_a_keyless_reference_whose_name_is_inside_another_reference_of_its_key_partition_is_found(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Partition 0 (QR1's by key) holds QR11 only; QR1 was sent without a key to partition 3.
    log = _Log()
    log.add(_PT, 0, b"QR11", payment("QR11-q", "requested", "QR11", 0))
    log.add(_LT, 0, b"QR11", ledger("QR11-d", "debited", "QR11", 0))
    log.add(_PT, 3, None, payment("QR1-q", "requested", "QR1", 0))
    log.add(_LT, 3, None, ledger("QR1-d", "debited", "QR1", 0))
    _kafka_broker(monkeypatch, log.records)
    rc, out = _trace_from_kafka(capsys, "QR1")
    assert rc == 0, f"trace says: {out.strip()}"


def test_a_reference_split_across_partitions_is_said_with_what_it_means() -> None:
    # Partitions added to the input topics mid-payment: the debit stays on partition 0, the
    # settlement goes to partition 1. Partition 0 refunds a payment that settled.
    records = _recs(
        [
            (P, "S1", payment("S1-q", "requested", "S1", 0)),
            (L, "S1", ledger("S1-d", "debited", "S1", 1)),
            (P, "TICK", payment("T-q", "requested", "TICK", 2000)),
            (L, "TICK", ledger("T-d", "debited", "TICK", 2000)),
        ]
    )
    settled = KafkaRecord(P, 1, 0, T0 + 3_000, b"S1", payment("S1-s", "settled", "S1", 2))
    t = _trace("S1", [*records, settled])
    assert t["partitions"] == [0, 1]
    text = render(t)
    assert "WARNING: this reference's records are on 2 partitions" in text
    assert "Were partitions added to the input topics?" in text
    one = _trace("S1", records)
    assert "WARNING" not in render(one)


# A right-to-left reference, one holding a literal `\u05d0` (a backslash is allowed in an id),
# one starting with `-`, and one a shell would split or expand.
HINTED = ["M\u05d0-7", "QR\\u05d0", "-\u05d0-1", "QR 1's $HOME"]


@pytest.mark.parametrize("ref", HINTED, ids=["rtl", "backslash", "leading-dash", "shell"])
def test_the_lookups_trace_hint_pasted_into_a_shell_traces_that_reference(
    ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The four in one file: the hint of each traces it and no other (an escaped one and a
    # literal one that read alike are told apart). The hint is split by a real shell, then run
    # with the file in place of the broker.
    import subprocess

    from stream.worker.lookup import trace_command

    items: list[tuple[str, str, bytes]] = []
    for i, r in enumerate(HINTED):
        items += [(P, r, payment(f"H{i}-q", "requested", r, i)), (L, r, ledger(f"H{i}-d", "debited", r, i))]
    f = tmp_path / "in.jsonl"
    _write(f, _recs(items))
    hint = trace_command(ref)
    assert hint.isascii() and hint.startswith("qris-guard trace ")
    words = (
        subprocess.run(
            ["sh", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "sh", hint.removeprefix("qris-guard ")],
            capture_output=True,
            check=True,
            env={"HOME": "/nowhere", "PATH": "/usr/bin:/bin"},
        )
        .stdout.decode()
        .split("\0")[:-1]
    )
    from_file = ["--in", str(f), "--drain", "--max-hold-s", "0", "--json"]
    argv = [w for word in words for w in (from_file if word == "--from-kafka" else [word])]
    assert cli.main(argv) == 0, argv
    got = json.loads(capsys.readouterr().out)
    i = HINTED.index(ref)
    assert got["reference"] == ref and sorted(r["event_id"] for r in got["records"]) == [f"H{i}-d", f"H{i}-q"]


def test_an_escaped_reference_that_is_no_escape_is_a_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "in.jsonl"
    _write(f, _day())
    assert cli.main(["trace", "--escaped", "R\\x31", "--in", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--escaped 'R\\\\x31': a backslash at character 2 starts no \\uXXXX" in err and err.count("\n") == 1
    # Typed with a right-to-left letter in it: named in ASCII, as the hints write it.
    assert cli.main(["trace", "--escaped", "\u05d0\\x", "--in", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--escaped '\\u05d0\\\\x': a backslash at character 2" in err and "\u05d0" not in err
    assert cli.main(["trace", "--escaped", "\\u00521", "--in", str(f), "--json"]) == 0  # (R1)
    assert json.loads(capsys.readouterr().out)["reference"] == "R1"
