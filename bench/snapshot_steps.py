"""How long the live shell holds the event loop while it writes and reads the burst snapshot
(`stream.core.burstsnapshot`), not a test: the largest step of `encode_pieces` and of
`decode_steps` (the shell gives the loop back between steps), beside `decode` at once.

    python bench/snapshot_steps.py --holds 50000 [--scope-bound] [--rounds 3] [--base TREE] [--default-gc]

The state is built in the process, the same on every run: a hold tally of `--holds` holds over
4 partitions (a third of them released, every hold kept by a pending `updated` alert, four
scope tags each) and, with `--scope-bound`, a burst detector filled to its scope bound (1,000
scopes a type for switch, acquirer, issuer and merchant, 10,000 merchants' volumes, 12 minutes
of every scope failing, so every ring holds its full 10 minutes: 4,001 scopes); without it an
empty detector. Each round encodes the state with `encode_pieces`, decodes the bytes with
`decode` at once and with `decode_steps`, and checks that the snapshot restored in steps equals
`decode`'s (the exit status is 1 when one does not). Printed per round: the pieces and largest
step of the encode; `decode`'s wall and CPU time; the steps of `decode_steps`, the largest in
wall and in CPU time with its index, and their sums.

The collector is the live worker's (`worker.app.young_collections_freeze_survivors`: the young
generation every 10,000 allocations, its survivors frozen), unless `--default-gc`.

`--base TREE` runs the same in a subprocess whose `stream` is TREE's (e.g. `git archive main`
unpacked), its rounds alternating with this tree's, and prints the ratios of the medians: the
machine's noise falls on both trees alike.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
T0_MS = 1_743_206_700_000
PARTITIONS = 4
SIGNALS_OFFSET = 7
# The detector's minutes: a minute number (minutes since the epoch) and ids of about 128
# characters, as a hostile producer's random ids come.
M0 = 29_000_000
PAD = "x" * 100


def build_tally(holds: int, partitions: int = PARTITIONS) -> Any:
    """A `HoldTally` of `holds` holds spread over `partitions` partitions, every one kept."""
    from stream.core.holds import scope_tag
    from stream.core.holdtally import HoldTally
    from stream.core.ids import incident_id, refund_id

    tally = HoldTally(range(partitions), 30_000)
    incidents = [incident_id("switch", f"SW{i}", T0_MS) for i in range(3)]
    switches = [scope_tag(("switch", f"SW{i}")) for i in range(3)]
    # An `updated` alert older than every hold's end keeps every hold, ended or not.
    tally.pending.append((T0_MS, {"alert_id": "al", "incident_id": incidents[0], "status": "updated"}, b"k", T0_MS))
    for p in range(partitions):
        events: list[list[Any]] = []
        scopes: dict[str, list[str]] = {}
        for i in range(p, holds, partitions):
            rid = refund_id(f"QR{i:09d}", T0_MS + i)
            inc = incidents[i % 3]
            at_ms = T0_MS + 60_000 + i
            events.append(["held", rid, inc, 12_500 + i, at_ms])
            scopes[rid] = [
                switches[i % 3],
                scope_tag(("acquirer", f"AQ{i % 7}")),
                scope_tag(("issuer", f"IS{i % 11}")),
                scope_tag(("merchant", f"M{i % 997}")),
            ]
            if i % 3 == 0:
                events.append(["released_without_payment", rid, inc, 12_500 + i, at_ms + 600_000])
        for k in range(0, len(events), 2000):
            batch = events[k : k + 2000]
            tally.on_report(
                {
                    "partition": p,
                    "hold_events": batch,
                    "decided_through_ms": T0_MS - 1,
                    "hold_scopes": {e[1]: scopes[e[1]] for e in batch if e[0] == "held"},
                }
            )
    return tally


def _scope_minute(payments: int, bad: int, shared: dict[str, int] | None, attrs: list[str] | None) -> dict[str, Any]:
    # One scope's minute as a partition reports it (`signals`): counts, the bad payments it
    # shares with other scopes, reasons and samples.
    out: dict[str, Any] = {
        "c": [payments, bad, bad, 0, 0, 0],
        "w": shared or {},
        "k": {"91": bad} if bad else {},
        "s": [[(M0 + 1) * 60_000 + i, f"QR{i}", "failed", "******9876"] for i in range(min(bad, 3))],
    }
    if attrs:
        out["a"] = attrs
    return out


def _bound_minute(per_type: int, merchants: int) -> dict[str, Any]:
    # Every scope failing: `per_type` scopes of each type, each failure seen by one of each
    # type, and the merchants past them with a payment each.
    out: dict[str, Any] = {}
    payments = 0
    for j in range(per_type):
        keys = (
            f"switch:SW{j:05d}{PAD}",
            f"acquirer:AQ{j:05d}{PAD}",
            f"issuer:IS{j:05d}{PAD}",
            f"merchant:ME{j:05d}{PAD}",
        )
        for k in keys:
            is_merchant = k == keys[-1]
            out[k] = _scope_minute(
                50 if is_merchant else 5,
                3,
                {o: 3 for o in keys if o != k},
                ["5411", "BCA", "Kedai"] if is_merchant else None,
            )
        payments += 5
    for j in range(per_type, merchants):
        out[f"merchant:ME{j:05d}{PAD}"] = _scope_minute(1, 1, None, [f"{5000 + j % 40}", "BCA", "Kedai"])
        payments += 1
    out["all"] = _scope_minute(payments, payments // 5, None, None)
    return out


def build_bound_detector(
    per_type: int = 1000, merchants: int = 10_000, minutes: int = 12, partitions: int = PARTITIONS
) -> Any:
    """A `BurstDetector` (default bounds scaled to `per_type` and `merchants`) fed `minutes`
    minutes of every scope failing; partition 0 reports them, the others report the minutes
    closed with nothing in them."""
    from stream.core.burst import BurstDetector, BurstParams

    params = BurstParams(max_scopes_per_type=per_type, max_merchants_tracked=merchants)
    det = BurstDetector(range(partitions), params)
    data = _bound_minute(per_type, merchants)
    for i in range(minutes):
        minute = M0 + i
        det.on_signals({"partition": 0, "through_minute": minute, "minutes": [{"minute": minute, "scopes": data}]})
        for p in range(1, partitions):
            det.on_signals({"partition": p, "through_minute": minute, "minutes": []})
    return det


def build_state(holds: int, scope_bound: bool, per_type: int = 1000, merchants: int = 10_000) -> tuple[Any, Any]:
    """The detector and the tally one round encodes."""
    from stream.core.burst import BurstDetector

    det = build_bound_detector(per_type, merchants) if scope_bound else BurstDetector(range(PARTITIONS))
    return det, build_tally(holds)


@dataclass(frozen=True)
class Round:
    """One round's figures (times in ms; indexes count steps from 0)."""

    snapshot_bytes: int
    encode_pieces: int
    encode_largest_ms: float
    encode_ms: float
    once_ms: float
    once_cpu_ms: float
    steps: int  # 0: the tree has no `decode_steps`
    largest_ms: float
    largest_at: int
    largest_cpu_ms: float
    largest_cpu_at: int
    sum_ms: float
    sum_cpu_ms: float
    equal: bool

    def line(self) -> str:
        text = (
            f"snapshot {self.snapshot_bytes / 1e6:.2f} MB; encode {self.encode_pieces} pieces, "
            f"largest step {self.encode_largest_ms:.1f} ms, {self.encode_ms:.0f} ms; "
            f"decode at once {self.once_ms:.0f} ms (CPU {self.once_cpu_ms:.0f})"
        )
        if not self.steps:
            return text + "; no decode_steps"
        return text + (
            f"; in steps: {self.steps} steps, largest {self.largest_ms:.1f} ms (#{self.largest_at}), "
            f"in CPU {self.largest_cpu_ms:.1f} ms (#{self.largest_cpu_at}), "
            f"sum {self.sum_ms:.0f} ms (CPU {self.sum_cpu_ms:.0f}), equal {self.equal}"
        )


def _same(a: Any, b: Any) -> bool:
    # Two restored snapshots: the same offset, detector and tally.
    return (
        a.signals_offset == b.signals_offset
        and a.detector.snapshot() == b.detector.snapshot()
        and (a.tally is None) == (b.tally is None)
        and (a.tally is None or a.tally.to_state() == b.tally.to_state())
    )


def measure(det: Any, tally: Any) -> Round:
    """One round: encode in pieces, decode at once and in steps, compare."""
    from stream.core import burstsnapshot

    # Encode: each piece a step (a tree without `encode_pieces`: the whole in one).
    it = (
        iter(burstsnapshot.encode_pieces(det, SIGNALS_OFFSET, tally))
        if hasattr(burstsnapshot, "encode_pieces")
        else None
    )
    pieces: list[bytes] = []
    encode_steps: list[float] = []
    if it is None:
        t = time.perf_counter()
        pieces.append(burstsnapshot.encode(det, SIGNALS_OFFSET, tally))
        encode_steps.append(time.perf_counter() - t)
    else:
        while True:
            t = time.perf_counter()
            piece = next(it, None)
            encode_steps.append(time.perf_counter() - t)
            if piece is None:
                break
            pieces.append(piece)
    raw = b"".join(pieces)
    del pieces

    t, c = time.perf_counter(), time.thread_time()
    once = burstsnapshot.decode(raw)
    once_s, once_cpu_s = time.perf_counter() - t, time.thread_time() - c

    walls: list[float] = []
    cpus: list[float] = []
    snap = None
    if hasattr(burstsnapshot, "decode_steps"):
        steps = burstsnapshot.decode_steps(raw)
        while True:
            t, c = time.perf_counter(), time.thread_time()
            try:
                next(steps)
            except StopIteration as done:
                snap = done.value
            walls.append(time.perf_counter() - t)
            cpus.append(time.thread_time() - c)
            if snap is not None:
                break
    at_wall = max(range(len(walls)), key=walls.__getitem__, default=0)
    at_cpu = max(range(len(cpus)), key=cpus.__getitem__, default=0)
    return Round(
        snapshot_bytes=len(raw),
        encode_pieces=len(encode_steps) - (0 if it is None else 1),
        encode_largest_ms=max(encode_steps) * 1000,
        encode_ms=sum(encode_steps) * 1000,
        once_ms=once_s * 1000,
        once_cpu_ms=once_cpu_s * 1000,
        steps=len(walls),
        largest_ms=walls[at_wall] * 1000 if walls else 0.0,
        largest_at=at_wall,
        largest_cpu_ms=cpus[at_cpu] * 1000 if cpus else 0.0,
        largest_cpu_at=at_cpu,
        sum_ms=sum(walls) * 1000,
        sum_cpu_ms=sum(cpus) * 1000,
        equal=snap is None or _same(snap, once),
    )


def worker_collector() -> None:
    """The live worker's collector, as the tree measured sets it (or as `app` does)."""
    try:
        from stream.worker.app import young_collections_freeze_survivors

        young_collections_freeze_survivors()
    except ImportError:
        gc.set_threshold(10_000, 50, 100)
        gc.callbacks.append(lambda phase, info: gc.freeze() if phase == "stop" else None)


def serve(args: argparse.Namespace) -> int:
    # The base tree's side: build, say so, then one round for each line read, its figures as
    # one JSON line.
    det, tally = build_state(args.holds, args.scope_bound, args.per_type, args.merchants)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(orjson.dumps(asdict(measure(det, tally))).decode(), flush=True)
    return 0


class Base:
    """This script run on another tree's `stream`, a round per request."""

    def __init__(self, tree: Path, args: argparse.Namespace) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--tree", str(tree)]
        argv += ["--holds", str(args.holds), "--per-type", str(args.per_type), "--merchants", str(args.merchants)]
        argv += ["--scope-bound"] * args.scope_bound + ["--default-gc"] * args.default_gc
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(argv, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            raise SystemExit(f"the base tree's process did not start ({tree})")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the base tree's process stopped (exit {self.proc.wait()})")
        return line.strip()

    def round(self) -> Round:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return Round(**orjson.loads(self._line()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _median(rounds: list[Round], name: str) -> float:
    return float(statistics.median(getattr(r, name) for r in rounds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holds", type=int, default=50_000, help="holds in the tally")
    ap.add_argument("--scope-bound", action="store_true", help="the detector at its scope bound (else empty)")
    ap.add_argument("--per-type", type=int, default=1000, help="scopes a type at the bound (its max_scopes_per_type)")
    ap.add_argument("--merchants", type=int, default=10_000, help="merchants' volumes (its max_merchants_tracked)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, help="also run this tree's `stream`, rounds alternating")
    ap.add_argument("--default-gc", action="store_true", help="Python's default collector, not the worker's")
    ap.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    if not args.default_gc:
        worker_collector()
    if args.serve:
        return serve(args)
    base = Base(args.base.resolve(), args) if args.base is not None else None
    try:
        det, tally = build_state(args.holds, args.scope_bound, args.per_type, args.merchants)
        print(
            f"# holds {len(tally.held):,}, scopes {len(det.scopes):,}, merchants {len(det.merchant_volume):,}, "
            f"collector {'default' if args.default_gc else 'the worker’s'}"
        )
        runs: dict[str, list[Round]] = {"this": []}
        if base is not None:
            runs["base"] = []
        for n in range(args.rounds):
            for name in runs:
                got = base.round() if name == "base" and base is not None else measure(det, tally)
                runs[name].append(got)
                print(f"round {n} {name}: {got.line()}", flush=True)
    finally:
        if base is not None:
            base.close()
    if base is not None:
        ratios = []
        for name in ("largest_cpu_ms", "largest_ms", "sum_cpu_ms", "once_cpu_ms", "encode_largest_ms"):
            b = _median(runs["base"], name)
            ratios.append(f"{name} {_median(runs['this'], name) / b:.2f}" if b else f"{name} -")
        print("this / base, medians: " + ", ".join(ratios))
    return 0 if all(r.equal for rounds in runs.values() for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
