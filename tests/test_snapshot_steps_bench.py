"""The snapshot-steps bench's pure part (bench/snapshot_steps.py) at a tiny size: the state it
builds is what it claims, and a round's decode in steps restores `decode`'s snapshot. Run here,
the bench breaks with the snapshot's interfaces, not when next measured. Fast tier: no broker,
no subprocess."""

from __future__ import annotations

import pytest

from bench.snapshot_steps import SIGNALS_OFFSET, build_bound_detector, build_state, build_tally, measure
from stream.core import burstsnapshot


def test_the_tally_holds_every_hold_and_restores_from_the_snapshot_as_built() -> None:
    tally = build_tally(300)
    assert len(tally.held) == 300
    det, _ = build_state(0, scope_bound=False)
    back = burstsnapshot.decode(burstsnapshot.encode(det, SIGNALS_OFFSET, tally))
    assert back.tally is not None and back.tally.to_state() == tally.to_state()


def test_the_bound_detector_is_filled_to_its_bounds_with_full_rings() -> None:
    det = build_bound_detector(per_type=5, merchants=40, minutes=13)
    assert det.closed_through is not None  # every partition closed the minutes
    kinds: dict[str, int] = {}
    for key in det.scopes:
        kinds[key.split(":")[0]] = kinds.get(key.split(":")[0], 0) + 1
    assert kinds == {"all": 1, "switch": 5, "acquirer": 5, "issuer": 5, "merchant": 5}
    assert len(det.merchant_volume) == 40
    assert {len(s.ring) for s in det.scopes.values()} == {10}


def test_a_round_decodes_in_several_steps_to_decodes_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    # Smaller pieces and cuts than the live ones: a tiny state still spans several of each.
    monkeypatch.setattr(burstsnapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(burstsnapshot, "INDEX_BYTES", 1024)
    monkeypatch.setattr(burstsnapshot, "DECOMPRESS_BYTES", 1024)
    det, tally = build_state(300, scope_bound=True, per_type=5, merchants=40)
    got = measure(det, tally)
    assert got.equal
    assert got.encode_pieces > 1
    assert got.steps > 10
    assert 0 <= got.largest_at < got.steps and 0 <= got.largest_cpu_at < got.steps
    assert got.largest_cpu_ms <= got.sum_cpu_ms and got.largest_ms <= got.sum_ms


def test_a_round_notices_a_decode_in_steps_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    det, tally = build_state(30, scope_bound=False)
    decode = burstsnapshot.decode

    def short_one(raw: bytes) -> burstsnapshot.DetectorSnapshot:
        snap = decode(raw)
        assert snap.tally is not None
        snap.tally.held.popitem()
        return snap

    monkeypatch.setattr(burstsnapshot, "decode", short_one)
    assert not measure(det, tally).equal
