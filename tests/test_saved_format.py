"""The saved-state format, byte for byte: entries written by the stop-11 worker (main 38f4eae,
copied below as it wrote them, reference states of version 3) restore exactly in this tree, and
this tree writes the same state as reference states of version 4 (`STATES`: the request without
its type and reference, and values the rest of the entry gives left out), which a worker that
reads only versions up to 3 refuses. A change to how state is encoded
(`PartitionEngine.save_reference`, `ReferenceState.to_json`) must keep both: a worker is
upgraded and rolled back over its store (the metadata may gain a field an older worker ignores:
`VERSION`, `STAMP`)."""

# ruff: noqa: E501  (saved entries are kept as the worker wrote them, one line each)

from __future__ import annotations

import orjson
import pytest

from stream.core import reference
from stream.core.decisions import Decision
from stream.core.holds import IncidentEvent
from stream.core.partition import Params, PartitionEngine
from stream.core.records import Stream
from stream.core.reference import STATE_VERSION, ReferenceState, StateVersionError
from tests.conftest import not_compiled
from tests.records import T0, ledger, payment

HOLDS = Params(
    timeout_ms=300_000, lateness_ms=30_000, retention_ms=3_600_000, max_hold_ms=7_200_000, hold_grace_ms=900_000
)
INCIDENTS = [IncidentEvent(T0 + 100_000, "opened", "in_a", "switch", "RINTIS")]
KNOWN = T0 + 10**9

# Every field of a reference's entry: a hold, a refund, a failure, a reversal, cut evidence
# (counts), event-id digests on both streams, an open cycle, and records still waiting beside a
# state and without one. Written by main 38f4eae for `feed_all` below (do not regenerate).
ENTRIES = [
    (
        "QR1",
        b'{"state":{"v":3,"reference":"QR1","seen_p":["QR1-q"],"seen_l":["QR1-d"],"debits":[["QR1-d","J-QR1-d",25000,"2025-03-29T00:00:00.000Z",1743206400000]],"request":["QR1-q","requested","QR1","2025-03-29T00:00:00.000Z",1743206400000,25000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","RINTIS",null,null,null],"request_eff_ms":1743206400000,"account_id":"7700009876","net":25000,"settled":0,"last_eff_ms":1743206400000,"last_key":[1,0],"retention":[1743210000000,0,0],"holds":[["rf_ca2cd5a2f2ed470807c47184d06bbdff",1743206700000,25000,["in_a"],1743213900000,[1,0],1743213900000]]}}',
    ),
    (
        "QR2",
        b'{"state":{"v":3,"reference":"QR2","seen_p":["QR2-q","QR2-f","QR2-late"],"seen_l":["QR2-d1","QR2-d2","QR2-r2"],"debits":[["QR2-d1","J-QR2-d1",40000,"2025-03-29T00:00:02.000Z",1743206402000],["QR2-d2","J-QR2-d2",40000,"2025-03-29T00:00:03.000Z",1743206403000]],"reversals":[["QR2-r2","J-QR2-r2",40000,"2025-03-29T00:00:04.000Z",1743206404000]],"failure":["QR2-f","2025-03-29T00:00:05.000Z",1743206405000,"05"],"request":["QR2-q","requested","QR2","2025-03-29T00:00:01.000Z",1743206401000,40000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","ALTO",null,null,null],"request_eff_ms":1743206401000,"account_id":"7700009876","net":40000,"settled":0,"refunds":[["rf_381b7a785b143ce58d2ffeaa0604a039",40000,1743206702000,"PAYMENT_FAILED",true]],"last_eff_ms":1743206720000,"last_key":[0,22],"retention":[1743210001000,0,1]},"pending":[[1743206785000,1,35,["QR2-d3","debited","QR2","2025-03-29T00:06:25.000Z",1743206785000,40000,"J-QR2-d3","7700009876"]]]}',
    ),
    (
        "QR3",
        b'{"state":{"v":3,"reference":"QR3","seen_p":["QR3-s"],"seen_l":["QR3-d0","QR3-d1","QR3-d2","QR3-d3","QR3-d4","QR3-d5","QR3-d6","QR3-d7","QR3-d8","QR3-d9","QR3-d10","QR3-d11","QR3-d12","QR3-d13","QR3-d14","QR3-d15"],"seen_l_digests":["0902d338d3784dc709b755a4","0dc8dbb73679a117d4ae82a2","1efe2965794c76c8be0fdfd3","5f0ba8ec17ddb59993e2ad67","6c9062f79c60ecd80f17910e","6d55b506c95154934a4adb82","752dc36673905680a4fcde32","76ed3d17535adf05a93de76c","b1e5aac99ed4f93b0b6733b8","baab804a5b2b8d3d15599eb1","cd4acaea9cb60ba107e8f0f9","e6cc8374f4af51ffce7a60ae","f1e54f964f3cb8b9b1449f79","f6e6341829822bc43928b2bd"],"debits":[["QR3-d0","J-QR3-d0",1000,"2025-03-29T00:00:10.000Z",1743206410000],["QR3-d1","J-QR3-d1",1001,"2025-03-29T00:00:11.000Z",1743206411000],["QR3-d2","J-QR3-d2",1002,"2025-03-29T00:00:12.000Z",1743206412000],["QR3-d3","J-QR3-d3",1003,"2025-03-29T00:00:13.000Z",1743206413000],["QR3-d4","J-QR3-d4",1004,"2025-03-29T00:00:14.000Z",1743206414000],["QR3-d5","J-QR3-d5",1005,"2025-03-29T00:00:15.000Z",1743206415000],["QR3-d6","J-QR3-d6",1006,"2025-03-29T00:00:16.000Z",1743206416000],["QR3-d7","J-QR3-d7",1007,"2025-03-29T00:00:17.000Z",1743206417000],["QR3-d8","J-QR3-d8",1008,"2025-03-29T00:00:18.000Z",1743206418000],["QR3-d9","J-QR3-d9",1009,"2025-03-29T00:00:19.000Z",1743206419000],["QR3-d10","J-QR3-d10",1010,"2025-03-29T00:00:20.000Z",1743206420000],["QR3-d11","J-QR3-d11",1011,"2025-03-29T00:00:21.000Z",1743206421000],["QR3-d12","J-QR3-d12",1012,"2025-03-29T00:00:22.000Z",1743206422000],["QR3-d13","J-QR3-d13",1013,"2025-03-29T00:00:23.000Z",1743206423000],["QR3-d14","J-QR3-d14",1014,"2025-03-29T00:00:24.000Z",1743206424000],["QR3-d15","J-QR3-d15",1015,"2025-03-29T00:00:25.000Z",1743206425000],["QR3-d16","J-QR3-d16",1016,"2025-03-29T00:00:26.000Z",1743206426000],["QR3-d17","J-QR3-d17",1017,"2025-03-29T00:00:27.000Z",1743206427000],["QR3-d18","J-QR3-d18",1018,"2025-03-29T00:00:28.000Z",1743206428000],["QR3-d19","J-QR3-d19",1019,"2025-03-29T00:00:29.000Z",1743206429000],["QR3-d25","J-QR3-d25",1025,"2025-03-29T00:00:35.000Z",1743206435000],["QR3-d26","J-QR3-d26",1026,"2025-03-29T00:00:36.000Z",1743206436000],["QR3-d27","J-QR3-d27",1027,"2025-03-29T00:00:37.000Z",1743206437000],["QR3-d28","J-QR3-d28",1028,"2025-03-29T00:00:38.000Z",1743206438000],["QR3-d29","J-QR3-d29",1029,"2025-03-29T00:00:39.000Z",1743206439000]],"debit_count":30,"debited_total":30435,"settlement":["QR3-s",1000,"2025-03-29T00:00:50.000Z",1743206450000],"account_id":"7700009876","net":30435,"settled":1000,"refunds":[["rf_95614837453029b184856062d1168964",29435,1743206710000,"EXCESS_DEBIT",true]],"last_eff_ms":1743206450000,"last_key":[0,3],"retention":[1743210010000,1,4]}}',
    ),
    (
        "QR4",
        b'{"state":null,"pending":[[1743206790000,0,23,["QR4-q","requested","QR4","2025-03-29T00:06:30.000Z",1743206790000,9000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","RINTIS",null,null,null]],[1743206795000,1,36,["QR4-d","debited","QR4","2025-03-29T00:06:35.000Z",1743206795000,9000,"J-QR4-d","7700009876"]]]}',
    ),
    (
        "QR5",
        b'{"state":{"v":3,"reference":"QR5","seen_p":["QR5-x0","QR5-x1","QR5-x2","QR5-x3","QR5-x4","QR5-x5","QR5-x6","QR5-x7","QR5-x8","QR5-x9","QR5-x10","QR5-x11","QR5-x12","QR5-x13","QR5-x14","QR5-x15"],"seen_p_digests":["ced267de0f423acecaf72e3e","d004db2cc29c3886db038209"],"settlement":["QR5-x0",500,"2025-03-29T00:01:00.000Z",1743206460000],"net":0,"settled":500,"last_eff_ms":1743206477000,"last_key":[0,21],"retention":[1743210060000,0,4]}}',
    ),
    (
        "QR6",
        b'{"state":{"v":3,"reference":"QR6","seen_l":["QR6-d"],"debits":[["QR6-d","J-QR6-d",7000,"2025-03-29T00:05:30.000Z",1743206730000]],"account_id":"7700009876","net":7000,"settled":0,"cycle_deadline_ms":1743207030000,"cycle_opened_by":[1,34],"last_eff_ms":1743206730000,"last_key":[1,34],"retention":[1743210330000,1,34]}}',
    ),
    (
        "TICK",
        b'{"state":null,"pending":[[1743206800000,0,24,["TICK-p","requested","TICK","2025-03-29T00:06:40.000Z",1743206800000,25000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","RINTIS",null,null,null]],[1743206800000,1,37,["TICK-l","reversed","TICK","2025-03-29T00:06:40.000Z",1743206800000,1,"J-TICK-l","7700009876"]]]}',
    ),
]
# The stop-11 entries' states alone, as version 3 saved them (QR4 and TICK, with no state, have
# none).
STATES_V3 = [
    (ref, orjson.dumps({"state": state})) for ref, v in ENTRIES if (state := orjson.loads(v)["state"]) is not None
]
# The same states as this tree saves them, of version 4. Written by this tree for `feed_all`
# below (do not regenerate).
STATES = [
    (
        "QR1",
        b'{"state":{"v":4,"reference":"QR1","seen_p":["QR1-q"],"seen_l":["QR1-d"],"debits":[["QR1-d","J-QR1-d",25000,"2025-03-29T00:00:00.000Z",1743206400000]],"request":["QR1-q","2025-03-29T00:00:00.000Z",1743206400000,25000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","RINTIS",null,null,null],"account_id":"7700009876","last_eff_ms":1743206400000,"last_key":[1,0],"retention":[1743210000000,0,0],"holds":[["rf_ca2cd5a2f2ed470807c47184d06bbdff",1743206700000,25000,["in_a"],1743213900000,[1,0],1743213900000]]}}',
    ),
    (
        "QR2",
        b'{"state":{"v":4,"reference":"QR2","seen_p":["QR2-q","QR2-f","QR2-late"],"seen_l":["QR2-d1","QR2-d2","QR2-r2"],"debits":[["QR2-d1","J-QR2-d1",40000,"2025-03-29T00:00:02.000Z",1743206402000],["QR2-d2","J-QR2-d2",40000,"2025-03-29T00:00:03.000Z",1743206403000]],"reversals":[["QR2-r2","J-QR2-r2",40000,"2025-03-29T00:00:04.000Z",1743206404000]],"failure":["QR2-f","2025-03-29T00:00:05.000Z",1743206405000,"05"],"request":["QR2-q","2025-03-29T00:00:01.000Z",1743206401000,40000,"7700009876","ID1020012345678","Warung Bu Sri","5812","BCA","BANKDKI","ALTO",null,null,null],"account_id":"7700009876","refunds":[["rf_381b7a785b143ce58d2ffeaa0604a039",40000,1743206702000,"PAYMENT_FAILED",true]],"last_eff_ms":1743206720000,"last_key":[0,22],"retention":[1743210001000,0,1]}}',
    ),
    (
        "QR3",
        b'{"state":{"v":4,"reference":"QR3","seen_p":["QR3-s"],"seen_l":["QR3-d0","QR3-d1","QR3-d2","QR3-d3","QR3-d4","QR3-d5","QR3-d6","QR3-d7","QR3-d8","QR3-d9","QR3-d10","QR3-d11","QR3-d12","QR3-d13","QR3-d14","QR3-d15"],"seen_l_digests":["0902d338d3784dc709b755a4","0dc8dbb73679a117d4ae82a2","1efe2965794c76c8be0fdfd3","5f0ba8ec17ddb59993e2ad67","6c9062f79c60ecd80f17910e","6d55b506c95154934a4adb82","752dc36673905680a4fcde32","76ed3d17535adf05a93de76c","b1e5aac99ed4f93b0b6733b8","baab804a5b2b8d3d15599eb1","cd4acaea9cb60ba107e8f0f9","e6cc8374f4af51ffce7a60ae","f1e54f964f3cb8b9b1449f79","f6e6341829822bc43928b2bd"],"debits":[["QR3-d0","J-QR3-d0",1000,"2025-03-29T00:00:10.000Z",1743206410000],["QR3-d1","J-QR3-d1",1001,"2025-03-29T00:00:11.000Z",1743206411000],["QR3-d2","J-QR3-d2",1002,"2025-03-29T00:00:12.000Z",1743206412000],["QR3-d3","J-QR3-d3",1003,"2025-03-29T00:00:13.000Z",1743206413000],["QR3-d4","J-QR3-d4",1004,"2025-03-29T00:00:14.000Z",1743206414000],["QR3-d5","J-QR3-d5",1005,"2025-03-29T00:00:15.000Z",1743206415000],["QR3-d6","J-QR3-d6",1006,"2025-03-29T00:00:16.000Z",1743206416000],["QR3-d7","J-QR3-d7",1007,"2025-03-29T00:00:17.000Z",1743206417000],["QR3-d8","J-QR3-d8",1008,"2025-03-29T00:00:18.000Z",1743206418000],["QR3-d9","J-QR3-d9",1009,"2025-03-29T00:00:19.000Z",1743206419000],["QR3-d10","J-QR3-d10",1010,"2025-03-29T00:00:20.000Z",1743206420000],["QR3-d11","J-QR3-d11",1011,"2025-03-29T00:00:21.000Z",1743206421000],["QR3-d12","J-QR3-d12",1012,"2025-03-29T00:00:22.000Z",1743206422000],["QR3-d13","J-QR3-d13",1013,"2025-03-29T00:00:23.000Z",1743206423000],["QR3-d14","J-QR3-d14",1014,"2025-03-29T00:00:24.000Z",1743206424000],["QR3-d15","J-QR3-d15",1015,"2025-03-29T00:00:25.000Z",1743206425000],["QR3-d16","J-QR3-d16",1016,"2025-03-29T00:00:26.000Z",1743206426000],["QR3-d17","J-QR3-d17",1017,"2025-03-29T00:00:27.000Z",1743206427000],["QR3-d18","J-QR3-d18",1018,"2025-03-29T00:00:28.000Z",1743206428000],["QR3-d19","J-QR3-d19",1019,"2025-03-29T00:00:29.000Z",1743206429000],["QR3-d25","J-QR3-d25",1025,"2025-03-29T00:00:35.000Z",1743206435000],["QR3-d26","J-QR3-d26",1026,"2025-03-29T00:00:36.000Z",1743206436000],["QR3-d27","J-QR3-d27",1027,"2025-03-29T00:00:37.000Z",1743206437000],["QR3-d28","J-QR3-d28",1028,"2025-03-29T00:00:38.000Z",1743206438000],["QR3-d29","J-QR3-d29",1029,"2025-03-29T00:00:39.000Z",1743206439000]],"debit_count":30,"debited_total":30435,"settlement":["QR3-s",1000,"2025-03-29T00:00:50.000Z",1743206450000],"account_id":"7700009876","refunds":[["rf_95614837453029b184856062d1168964",29435,1743206710000,"EXCESS_DEBIT",true]],"last_eff_ms":1743206450000,"last_key":[0,3],"retention":[1743210010000,1,4]}}',
    ),
    (
        "QR5",
        b'{"state":{"v":4,"reference":"QR5","seen_p":["QR5-x0","QR5-x1","QR5-x2","QR5-x3","QR5-x4","QR5-x5","QR5-x6","QR5-x7","QR5-x8","QR5-x9","QR5-x10","QR5-x11","QR5-x12","QR5-x13","QR5-x14","QR5-x15"],"seen_p_digests":["ced267de0f423acecaf72e3e","d004db2cc29c3886db038209"],"settlement":["QR5-x0",500,"2025-03-29T00:01:00.000Z",1743206460000],"last_eff_ms":1743206477000,"last_key":[0,21],"retention":[1743210060000,0,4]}}',
    ),
    (
        "QR6",
        b'{"state":{"v":4,"reference":"QR6","seen_l":["QR6-d"],"debits":[["QR6-d","J-QR6-d",7000,"2025-03-29T00:05:30.000Z",1743206730000]],"account_id":"7700009876","cycle_deadline_ms":1743207030000,"cycle_opened_by":[1,34],"last_eff_ms":1743206730000,"last_key":[1,34],"retention":[1743210330000,1,34]}}',
    ),
]
# The stop-11 entries as this tree writes them: each state of version 4 (`STATES`), the records
# waiting for the watermark beside it as they were (`pending`).
ENTRIES_V4 = [
    (
        ref,
        orjson.dumps({**orjson.loads(v), "state": orjson.loads(dict(STATES)[ref])["state"]})
        if ref in dict(STATES)
        else v,
    )
    for ref, v in ENTRIES
]
META = b'{"partition":0,"max_ms":[1743206800000,1743206800000],"last_offset":[24,37],"forced_ms":-4611686018427387904,"silent":[false,false],"rejected":[0,0],"skewed":[0,0],"signals_through":29053444,"hold_events":[],"hold_reported_ms":1743206760000}'
# What this tree adds to the metadata: its version, first, and last the parameters the state
# was decided with (a restore with others says so); before them, the deadline from which the
# refunds' request times are kept (from the start here; restored from the stop-11 metadata,
# just past the latest deadline of the refunds restored, QR3's). A worker that does not know the
# fields reads the metadata by name and ignores them, so a rollback over this store restores as
# before.
VERSION = b'{"v":2,'
STAMP = b',"params":{"timeout_ms":300000,"lateness_ms":30000,"retention_ms":3600000,"clock_skew_ms":60000,"probe_age_ms":30000,"hold_grace_ms":900000,"max_hold_ms":7200000}}'
META_NOW = VERSION + META[1:-1] + b',"request_times_from_ms":-4611686018427387904' + STAMP
META_RESTORED = VERSION + META[1:-1] + b',"request_times_from_ms":1743206710001' + STAMP


class Feed:
    """One engine, offsets numbered per stream, decisions collected."""

    def __init__(self, eng: PartitionEngine) -> None:
        self.eng = eng
        self.offsets = [0, 0]
        self.out: list[Decision] = []

    def feed(self, s: Stream, value: bytes) -> None:
        off = self.offsets[s]
        self.offsets[s] += 1
        self.out += self.eng.on_record(s, off, orjson.loads(value)["reference"].encode(), value, None)


def feed_all(f: Feed) -> None:
    P, L = Stream.P, Stream.L
    f.out += f.eng.on_incidents(INCIDENTS, KNOWN)
    f.feed(P, payment("QR1-q", "requested", "QR1", 0, 25_000))
    f.feed(L, ledger("QR1-d", "debited", "QR1", 0, 25_000))
    f.feed(P, payment("QR2-q", "requested", "QR2", 1, 40_000, switch_id="ALTO", terminal_id=None))
    f.feed(L, ledger("QR2-d1", "debited", "QR2", 2, 40_000))
    f.feed(L, ledger("QR2-d2", "debited", "QR2", 3, 40_000))
    f.feed(L, ledger("QR2-r2", "reversed", "QR2", 4, 40_000))
    f.feed(P, payment("QR2-f", "failed", "QR2", 5, response_code="05"))
    for i in range(30):
        f.feed(L, ledger(f"QR3-d{i}", "debited", "QR3", 10 + i, 1_000 + i))
    f.feed(P, payment("QR3-s", "settled", "QR3", 50, 1_000))
    for i in range(18):
        f.feed(P, payment(f"QR5-x{i}", "settled", "QR5", 60 + i, 500))
    f.feed(P, payment("QR2-late", "requested", "QR2", 320))
    f.feed(L, ledger("QR6-d", "debited", "QR6", 330, 7_000))
    f.feed(L, ledger("QR2-d3", "debited", "QR2", 385, 40_000))  # waits beside a state
    f.feed(P, payment("QR4-q", "requested", "QR4", 390, 9_000))  # waits: W = 370
    f.feed(L, ledger("QR4-d", "debited", "QR4", 395, 9_000))
    f.feed(P, payment("TICK-p", "requested", "TICK", 400))
    f.feed(L, ledger("TICK-l", "reversed", "TICK", 400, amount=1))


def feed_rest(f: Feed) -> None:
    f.feed(Stream.P, payment("QR6-s", "settled", "QR6", 500, 7_000))
    f.feed(Stream.L, ledger("QR1-r", "reversed", "QR1", 600, 25_000))
    f.out += f.eng.drain()


def test_this_tree_saves_what_the_stop_11_worker_saved_byte_for_byte() -> None:
    f = Feed(PartitionEngine(0, HOLDS))
    feed_all(f)
    refs, meta = f.eng.take_dirty()
    assert [(k, v) for k, v in ENTRIES if b'"pending"' not in v] == [(k, v) for k, v in STATES_V3 if k != "QR2"]
    assert sorted((k, v) for k, v in refs.items() if v is not None) == ENTRIES_V4
    assert meta == META_NOW


def test_state_saved_by_the_stop_11_worker_restores_exactly_and_decides_the_same() -> None:
    whole = Feed(PartitionEngine(0, HOLDS))
    feed_all(whole)
    decided_before = len(whole.out)
    feed_rest(whole)

    eng = PartitionEngine.restore(0, HOLDS, META, reversed(ENTRIES))
    # Restored, every entry is saved again in this tree's form (version 4, of the very same
    # state).
    assert [(ref, eng.save_reference(ref)) for ref, _v in ENTRIES] == ENTRIES_V4
    assert eng.save_meta() == META_RESTORED
    assert eng.saved_params is None and eng.changed_params() == []  # saved before the stamp: nothing to compare
    restored = Feed(eng)
    restored.offsets = [o + 1 for o in eng.last_offset]
    restored.out += eng.on_incidents(INCIDENTS, KNOWN)  # a restored engine is given the timeline again
    feed_rest(restored)
    assert [d.value for d in restored.out] == [d.value for d in whole.out[decided_before:]]
    refunds = [(d.value["type"], d.value["reference"]) for d in restored.out if d.role == "refunds"]
    assert refunds == [
        ("refund.hold_released", "QR1"),
        ("refund.requested", "QR2"),
        ("refund.held", "QR4"),
        ("refund.requested", "QR4"),
    ]


def test_metadata_of_this_version_restores_as_it_was_saved() -> None:
    eng = PartitionEngine.restore(0, HOLDS, META_NOW, reversed(ENTRIES))
    assert eng.save_meta() == META_NOW
    assert eng.last_offset == [24, 37] and eng.changed_params() == []


def test_each_stop_11_state_and_this_trees_form_of_it_restore_the_same_reference() -> None:
    # Version 4 leaves out what the rest of the entry gives (the request's type and reference,
    # its effective time when it is its occurred time, `net` and `settled`): restored, it is the
    # very reference version 3 saved, which this tree saves again in those bytes.
    for (ref, v3), (ref4, v4) in zip(STATES_V3, STATES, strict=True):
        assert ref == ref4
        old, new = orjson.loads(v3)["state"], orjson.loads(v4)["state"]
        st = ReferenceState.from_json(old)
        assert ReferenceState.from_json(new) == st, ref
        assert orjson.dumps({"state": st.to_json()}) == v4
        if st.request is not None:
            assert new["request"] == [old["request"][0], *old["request"][3:]]
            assert st.request.type == "requested" and st.request.reference == ref
            assert "request_eff_ms" not in new and old["request_eff_ms"] == st.request.occurred_at_ms
        assert old["net"] == st.debited_total - st.reversed_total and "net" not in new
        assert old["settled"] == (st.settlement.amount if st.settlement else 0) and "settled" not in new


def test_values_the_rest_of_the_entry_does_not_give_are_saved_as_they_are() -> None:
    # A request effective after its occurred time (taken behind the watermark), and a `net` or
    # `settled` other than the evidence gives: each saved, and restored the same.
    st = ReferenceState.from_json(orjson.loads(dict(STATES)["QR2"])["state"])
    assert st.request is not None
    st.request_eff_ms = st.request.occurred_at_ms + 30_000
    st.net, st.settled = st.net + 1, 7
    saved = orjson.loads(orjson.dumps(st.to_json()))
    assert (saved["request_eff_ms"], saved["net"], saved["settled"]) == (st.request_eff_ms, st.net, 7)
    assert ReferenceState.from_json(saved) == st


def test_a_reference_entry_of_a_version_this_worker_does_not_read_is_refused() -> None:
    state = orjson.loads(dict(STATES)["QR1"])["state"]
    assert state["v"] == STATE_VERSION == 4
    with pytest.raises(StateVersionError, match="of version 5, this worker reads versions 1 to 4"):
        ReferenceState.from_json({**state, "v": 5})


@not_compiled
def test_a_worker_that_reads_reference_entries_up_to_version_3_refuses_this_trees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read as version 3, the request would be misread (its fields shifted by two): refused, as
    # the previous release's check refuses any version past its own.
    monkeypatch.setattr(reference, "STATE_VERSION", 3)
    for _ref, v4 in STATES:
        with pytest.raises(StateVersionError, match="of version 4, this worker reads versions 1 to 3"):
            ReferenceState.from_json(orjson.loads(v4)["state"])
    for _ref, v3 in STATES_V3:
        ReferenceState.from_json(orjson.loads(v3)["state"])


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_metadata_of_a_version_this_worker_does_not_read_is_refused(version: object) -> None:
    # A newer release's metadata may mean something else by a field this worker knows: refused
    # (the worker's restore fails and it restarts, saying why), not read as if it were its own.
    meta = orjson.dumps({**orjson.loads(META_NOW), "v": version})
    with pytest.raises(ValueError, match=f"saved metadata of version {version!r}, this worker reads versions 1 to 2"):
        PartitionEngine.restore(0, HOLDS, meta, reversed(ENTRIES))


def test_a_detector_snapshot_keeps_the_incident_fields_the_previous_release_restores() -> None:
    # A worker of the previous release builds each open incident from its saved fields by name
    # (`Incident(**fields)`) and refuses the whole snapshot on one it does not know: a rollback
    # would rebuild the detector from the whole signals topic while the refunds wait for it.
    # The opening minutes go beside the incidents; a snapshot with them inside still restores.
    from stream.core.incidents import Incident, IncidentBook

    previous = {
        "incident_id", "start_minute", "last_bad_minute", "counts", "expected_bad", "peak_score", "children",
        "codes", "samples", "first_bad_ms", "calm_minutes", "reported_bad", "reported_minute",
    }  # fmt: skip
    book = IncidentBook()
    book.open(
        "switch:RINTIS", Incident("i1", 600, 603, [9, 5, 5, 0, 0, 0], 0.5, 9.0, {}, {}, [], None, opened_minute=603)
    )
    state = book.to_state()
    assert [set(fields) for _key, fields in state["open"]] == [previous]
    again = IncidentBook.from_state(state)
    assert again.to_state() == state and again.opening_events(30_000) == book.opening_events(30_000) != []
    inside = {"open": [[k, {**f, "opened_minute": 603}] for k, f in state["open"]], "resolved_at": []}
    assert IncidentBook.from_state(inside).to_state() == state
    # A calm streak goes beside them too, and comes back.
    inc = book.get("switch:RINTIS")
    assert inc is not None
    inc.calm_payments, inc.calm_good = 40, 39
    state = book.to_state()
    assert [set(fields) for _key, fields in state["open"]] == [previous] and state["calm_streak"] == [
        ("switch:RINTIS", 40, 39)
    ]
    restored = IncidentBook.from_state(state).get("switch:RINTIS")
    assert restored is not None and (restored.calm_payments, restored.calm_good) == (40, 39)


def test_an_entrys_account_survives_a_restore_in_a_list_beside_the_entries_every_release_reads() -> None:
    # A reference debited (and reversed) on a second account saves those entries' accounts in
    # `debit_accounts` / `reversal_accounts`, beside entries of the five fields every release
    # reads (a rollback restores them, without the accounts); a single-account reference saves
    # no such list. Restored at any step, the engine decides the very same refunds.
    other = "7700001111"
    steps = [
        (Stream.P, payment("A-q", "requested", "A", 0)),
        (Stream.L, ledger("A-d1", "debited", "A", 1)),
        (Stream.L, ledger("A-d2", "debited", "A", 2, account_id=other)),
        (Stream.L, ledger("A-r2", "reversed", "A", 3, amount=5_000, account_id=other)),
        (Stream.L, ledger("B-d1", "debited", "B", 4)),
        (Stream.L, ledger("B-r1", "reversed", "B", 5, amount=1_000)),
        (Stream.P, payment("TICK-p", "requested", "TICK", 100)),
        (Stream.L, ledger("TICK-l", "reversed", "TICK", 100, amount=1)),
        (Stream.P, payment("TOCK-p", "requested", "TOCK", 400)),
        (Stream.L, ledger("TOCK-l", "reversed", "TOCK", 400, amount=1)),
    ]

    params = Params(timeout_ms=300_000, lateness_ms=30_000, retention_ms=3_600_000)

    def run(restore_at: int | None) -> tuple[list[dict[str, object]], dict[str, bytes]]:
        f = Feed(PartitionEngine(0, params))
        saved: dict[str, bytes] = {}
        meta = b""
        for i, (s, value) in enumerate(steps):
            f.feed(s, value)
            refs, changed = f.eng.take_dirty()
            saved.update({k: v for k, v in refs.items() if v is not None})
            meta = changed or meta
            if i == restore_at:
                f.eng = PartitionEngine.restore(0, params, meta, saved.items())
            if i == 7:
                before_deadline = dict(saved)
        return [d.value for d in f.out], before_deadline

    whole, saved = run(None)
    a, b = (orjson.loads(saved[ref])["state"] for ref in ("A", "B"))
    assert a["debit_accounts"] == [None, other] and a["reversal_accounts"] == [other]
    assert [len(x) for x in a["debits"] + a["reversals"]] == [5, 5, 5]
    assert not {"debit_accounts", "reversal_accounts"} & set(b)
    for i in range(len(steps)):
        assert run(i)[0] == whole, i
    [refund_a] = [v for v in whole if v.get("reference") == "A" and v.get("type") == "refund.requested"]
    assert [v["kind"] for v in whole if "kind" in v] == ["DEBIT_ACCOUNT_MISMATCH"]
    assert [d.get("account_id") for d in refund_a["evidence"]["debits"]] == [None, other]  # type: ignore[index]

    # State saved without the lists (a single-account reference, or an older release): every
    # entry is on the reference's account.
    older = {**a}
    del older["debit_accounts"], older["reversal_accounts"]
    st = ReferenceState.from_json(older)
    assert [x.account_id for x in st.debits + st.reversals] == [None, None, None]
    assert orjson.loads(orjson.dumps(ReferenceState.from_json(a).to_json())) == a


def test_a_first_debits_guarded_date_is_saved_beside_the_entries_only_when_it_has_one() -> None:
    # A first debit dated more than F ahead of its Kafka timestamp and processed before its
    # request keeps the guard's date for `CLOCK_MISMATCH` in `debit_guarded_at_ms`, beside
    # entries of the five fields every release reads (a rollback restores them, without it); an
    # ordinary reference saves no such list. State without it (an older release's) compares that
    # debit at the earlier of its text and its effective time: a mismatch missed, none false.
    P, L = Stream.P, Stream.L
    params = Params()
    eng = PartitionEngine(0, params)
    eng.on_record(L, 0, b"B", ledger("B-d", "debited", "B", 100), T0 + 100_000)
    eng.on_record(L, 1, b"A", ledger("A-d", "debited", "A", 300), T0)  # counts at T0, effective at 70 s
    eng.on_record(P, 0, b"B", payment("B-q", "requested", "B", 100), T0 + 100_000)
    eng.on_record(L, 2, b"D", ledger("D-d", "debited", "D", 75), T0 + 75_000)  # a first debit, not guarded
    eng.on_record(L, 3, b"C", ledger("C-d", "debited", "C", 110), T0 + 110_000)
    eng.on_record(P, 1, b"C", payment("C-q", "requested", "C", 110), T0 + 110_000)
    refs, meta = eng.take_dirty()
    saved = {k: orjson.loads(v) for k, v in refs.items() if v is not None}
    a = saved["A"]["state"]
    assert a["debit_guarded_at_ms"] == [T0] and [len(x) for x in a["debits"]] == [5]
    d = saved["D"]["state"]
    assert d["debits"] and d.get("request") is None and "debit_guarded_at_ms" not in d
    assert orjson.loads(orjson.dumps(ReferenceState.from_json(a).to_json())) == a

    def mismatches(state_a: dict[str, object]) -> list[float]:
        entries = [(k, orjson.dumps({**v, "state": state_a} if k == "A" else v)) for k, v in saved.items()]
        restored = PartitionEngine.restore(0, params, meta, entries)
        out = restored.on_record(P, 2, b"A", payment("A-q", "requested", "A", 100), T0 + 100_000)
        out += restored.drain()
        kinds = [d.value for d in out if d.role == "alerts" and d.value["kind"] == "CLOCK_MISMATCH"]
        return [v["observed"]["debit_before_request_s"] for v in kinds]

    assert mismatches(a) == [100]
    assert mismatches({k: v for k, v in a.items() if k != "debit_guarded_at_ms"}) == []
