"""Failure-burst detection measured on simulated traffic (not a test).

    python bench/detection.py                # the full evaluation, a few minutes on 2 CPUs
    python bench/detection.py --quick        # fewer seeds and shorter normal days

Each run generates a scenario with the simulator, replays it offline through the core (the
same code as the live worker), and gives the partitions' closed minutes to the burst
detector and, side by side on the very same scope-minutes, to a plain river baseline: one
`anomaly.GaussianScorer` per scope on the minute's bad-payment rate, alarming at
score >= 0.9999 above the mean, incident closed after 3 calm minutes, no attribution.

Per scenario it reports, for both: recall of the injected incidents at the right scope,
detection delay (alert window end - incident start, event time; for the slow burn also from
when it reached full strength), incidents at other scopes during an injected one, and false
incidents per scope-day (incidents that overlap no injected incident; scope-days = scored
scope-minutes / 1440). Also the detector's cost per scope-minute and the size of a warm
scope model. Targets are in the README ("Failure bursts").
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from river import anomaly  # noqa: E402

from stream.core.burst import BurstDetector, BurstParams, FailureRateModel, ScopeState  # noqa: E402
from stream.core.partition import Params  # noqa: E402
from stream.core.signals import BAD  # noqa: E402
from stream.drivers.replay import Replay  # noqa: E402
from stream.drivers.replayfile import KafkaRecord  # noqa: E402
from stream.simulate import GroundTruth, generate  # noqa: E402

MONDAY_00_WIB_MS = 1742749200000  # 2025-03-24T00:00+07:00
MINUTE_MS = 60_000


class _Recording(BurstDetector):
    """The detector, also keeping each complete minute's pooled scope data for the baseline and
    timing its minute work."""

    def __init__(self, partitions: set[int], params: BurstParams) -> None:
        super().__init__(partitions, params)
        self.minutes: list[tuple[int, dict[str, list[int]]]] = []
        self.seconds = 0.0  # whole minutes: pooling, scoring, attribution, learning, alerts
        self.pool_seconds = 0.0  # of which: pooling small merchants
        self.signal_seconds = 0.0  # everything, merging the partitions' reports included

    def on_signals(self, value: dict[str, Any]) -> list[Any]:
        started = time.perf_counter()
        out = super().on_signals(value)
        self.signal_seconds += time.perf_counter() - started
        return out

    def _pool_small_merchants(self, minute: int, data: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        started = time.perf_counter()
        out = super()._pool_small_merchants(minute, data)
        self.pool_seconds += time.perf_counter() - started
        return out

    def close_minute(self, minute: int, data: dict[str, dict[str, Any]]) -> list[Any]:
        started = time.perf_counter()
        out = super().close_minute(minute, data)
        self.seconds += time.perf_counter() - started
        counts = {k: list(s.ring[-1][1]) for k, s in self.scopes.items() if s.ring and s.ring[-1][0] == minute}
        self.minutes.append((minute, counts))
        return out


class Baseline:
    """Plain river: a GaussianScorer per scope on the minute's bad rate (scopes with >= 5
    payments that minute), learning every minute outside its own incidents."""

    def __init__(self, score_at: float = 0.9999, calm_minutes: int = 3) -> None:
        self.score_at = score_at
        self.calm_minutes = calm_minutes
        self.models: dict[str, Any] = {}
        self.open: dict[str, list[int]] = {}  # scope -> [opened minute, calm minutes]
        self.incidents: list[dict[str, Any]] = []

    def minute(self, minute: int, counts: dict[str, list[int]]) -> None:
        for key in sorted(counts):
            n, bad = counts[key][0], counts[key][BAD]
            if n < 5:
                continue
            y = bad / n
            model = self.models.setdefault(key, anomaly.GaussianScorer(grace_period=60))
            mean = model.gaussian.mu if model.gaussian.n_samples else 0.0
            alarm = model.score_one(None, y) >= self.score_at and y > mean
            if key in self.open:
                if alarm:
                    self.open[key][1] = 0
                else:
                    self.open[key][1] += 1
                    if self.open[key][1] >= self.calm_minutes:
                        del self.open[key]
                continue
            if alarm:
                self.open[key] = [minute, 0]
                self.incidents.append({"scope": key, "end_ms": (minute + 1) * MINUTE_MS})
                continue
            model.learn_one(None, y)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    truth = GroundTruth()
    records = generate(
        spec["scenario"],
        seed=spec["seed"],
        start_ms=spec["start_ms"],
        minutes=spec["minutes"],
        rate_per_min=spec["rate"],
        truth=truth,
        **spec.get("knobs", {}),
    )
    replay = Replay(Params())
    n = 0
    for r in records:
        replay.feed(
            KafkaRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key.encode() if r.key else None, r.value)
        )
        n += 1
    list(replay.drain())
    detector = _Recording(set(replay.engines), BurstParams())
    alerts = []
    for value in replay.signals:
        alerts.extend(d.value for d in detector.on_signals(value))
    baseline = Baseline()
    for minute, counts in detector.minutes:
        baseline.minute(minute, counts)
    opened = [
        {
            "scope": f"{a['scope']['type']}:{a['scope']['id']}" if a["scope"]["type"] != "all" else "all",
            "end_ms": _ms(a["window"]["end"]),
            "summary": a["summary"],
        }
        for a in alerts
        if a["status"] == "opened"
    ]
    return {
        "name": spec["name"],
        "seed": spec["seed"],
        "records": n,
        "truth": truth.incidents,
        "detector": opened,
        "baseline": baseline.incidents,
        "scope_minutes": detector.stats["scope_minutes"],
        "seconds": detector.seconds,
        "pool_seconds": detector.pool_seconds,
        "detector_pickled_bytes": len(pickle.dumps(_plain(detector))),
        "scopes": len(detector.scopes),
        "merchants_tracked": len(detector.merchant_volume),
        "signal_seconds": detector.signal_seconds,
    }


def _plain(detector: _Recording) -> BurstDetector:
    """The detector's state without the bench's recordings."""
    plain = BurstDetector(detector.partitions, detector.params)
    plain.__dict__.update({k: v for k, v in detector.__dict__.items() if k in plain.__dict__})
    return plain


def _wib(at_ms: int) -> str:
    local_min = (at_ms + 7 * 3600_000) // MINUTE_MS
    return f"{(local_min // 60) % 24:02d}:{local_min % 60:02d}"


def _ms(text: str) -> int:
    from stream.core.eventtime import parse_ms

    return parse_ms(text)


def evaluate(results: list[dict[str, Any]], which: str, grace_ms: int = 10 * MINUTE_MS) -> dict[str, Any]:
    injected = detected = 0
    delays_s: list[float] = []
    delays_full_s: list[float] = []
    elsewhere = false = 0
    scope_minutes = 0
    for res in results:
        scope_minutes += res["scope_minutes"]
        incidents = res[which]
        windows = [(t["start_ms"] - grace_ms, t["end_ms"] + grace_ms) for t in res["truth"]]
        for t in res["truth"]:
            injected += 1
            key = f"{t['scope']['type']}:{t['scope']['id']}"
            hits = [i for i in incidents if i["scope"] == key and t["start_ms"] < i["end_ms"] <= t["end_ms"] + grace_ms]
            if hits:
                detected += 1
                first = min(i["end_ms"] for i in hits)
                delays_s.append((first - t["start_ms"]) / 1000)
                delays_full_s.append(max(0.0, (first - t["full_from_ms"]) / 1000))
        for i in incidents:
            inside = any(a <= i["end_ms"] <= b for a, b in windows)
            if not inside:
                false += 1
            elif not any(i["scope"] == f"{t['scope']['type']}:{t['scope']['id']}" for t in res["truth"]):
                elsewhere += 1
    scope_days = scope_minutes / 1440
    return {
        "injected": injected,
        "recall": detected / injected if injected else None,
        "median_delay_s": statistics.median(delays_s) if delays_s else None,
        "p90_delay_s": _p90(delays_s),
        "median_delay_from_full_s": statistics.median(delays_full_s) if delays_full_s else None,
        "p90_delay_from_full_s": _p90(delays_full_s),
        "other_scope_incidents": elsewhere,
        "false_incidents": false,
        "scope_days": round(scope_days, 1),
        "false_per_scope_day": false / scope_days if scope_days else None,
    }


def _p90(xs: list[float]) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.9 * len(xs) + 0.5) - 1 if len(xs) > 1 else 0)]


def specs(quick: bool) -> list[dict[str, Any]]:
    seeds = range(1, 4) if quick else range(1, 11)
    weekday_8am = MONDAY_00_WIB_MS + 24 * 3600_000 + 8 * 3600_000  # Tuesday 08:00 WIB
    out: list[dict[str, Any]] = []
    days = 1 if quick else 3
    out.append(
        {
            "name": "normal days",
            "scenario": "normal",
            "seed": 1,
            "start_ms": MONDAY_00_WIB_MS,
            "minutes": days * 1440,
            "rate": 100.0,
        }
    )
    out.append(
        {
            "name": "Lebaran day (4x)",
            "scenario": "lebaran",
            "seed": 2,
            "start_ms": MONDAY_00_WIB_MS,
            "minutes": 720 if quick else 1440,
            "rate": 100.0,
        }
    )
    out.append(
        {
            "name": "low-volume merchants",
            "scenario": "low_volume",
            "seed": 3,
            "start_ms": weekday_8am,
            "minutes": 240 if quick else 480,
            "rate": 300.0,
        }
    )
    # Cold start: the detector starts on traffic whose normal failure rate (3%) is not the
    # simulator's (0.8%) nor the detector's prior (1%); any incident there is a false one.
    for name, rate, minutes in (("cold start, 3% failing normally", 300.0, 240 if quick else 480),
                                ("cold start, 3% failing, busy", 600.0, 180 if quick else 360)):  # fmt: skip
        out.append(
            {
                "name": name,
                "scenario": "normal",
                "seed": 4,
                "start_ms": weekday_8am,
                "minutes": minutes,
                "rate": rate,
                "knobs": {"failure_rate": 0.03},
            }
        )
    incident_runs = {
        "switch outage": ("outage", {"outage_at": 2 / 3}),
        "acquirer degradation 30%": ("acquirer_degradation", {"degrade_at": 2 / 3}),
        "busy merchant failure": ("merchant_failure", {"degrade_at": 2 / 3}),
        "slow burn to 30%": ("slow_burn", {"degrade_at": 0.5}),
    }
    for name, (scenario, knobs) in incident_runs.items():
        for seed in seeds:
            out.append(
                {
                    "name": name,
                    "scenario": scenario,
                    "seed": 100 + seed,
                    "start_ms": weekday_8am,
                    "minutes": 180.0,
                    "rate": 300.0,
                    "knobs": knobs,
                }
            )
    return out


def model_cost() -> dict[str, float]:
    """Bytes of a warm scope model (every rhythm bucket seen) and of its whole scope state."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    models = [FailureRateModel() for _ in range(200)]
    for m in models:
        for minute in range(0, 14 * 1440, 7):  # two weeks: every bucket past its warm-up
            m.learn_one({"minute": minute, "payments": 20, "bad": minute % 3 == 0})
    model_bytes = (tracemalloc.get_traced_memory()[0] - before) / len(models)
    tracemalloc.stop()
    state = ScopeState("merchant:X", "acquirer:Y", models[0])
    for minute in range(10):
        state.ring.append(
            (minute, [20, 1, 1, 0, 0, 0], {"switch:RINTIS": 1}, {"91": 1}, [[0, "QR1", "failed", "****1"]])
        )
    return {
        "model_bytes_traced": model_bytes,
        "model_bytes_pickled": len(pickle.dumps(models[0])),
        "scope_state_bytes_pickled": len(pickle.dumps(state)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--only", help="run only the scenarios whose name starts with this")
    args = ap.parse_args()
    started = time.perf_counter()
    todo = [s for s in specs(args.quick) if not args.only or s["name"].startswith(args.only)]
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(run, todo, chunksize=1)
    print(
        f"# bench/detection.py{' --quick' if args.quick else ''}: {len(todo)} runs, "
        f"{sum(r['records'] for r in results):,} records, {time.perf_counter() - started:.0f} s, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    names = list(dict.fromkeys(r["name"] for r in results))
    header = (
        "scenario",
        "runs",
        "recall",
        "median delay s",
        "p90 delay s",
        "other-scope inc.",
        "false inc.",
        "false/scope-day",
    )
    for which in ("detector", "baseline"):
        print(f"\n## {which}{' (river GaussianScorer per scope)' if which == 'baseline' else ''}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name in names + ["all incident runs"]:
            group = (
                [r for r in results if r["name"] == name]
                if name != "all incident runs"
                else [r for r in results if r["truth"]]
            )
            ev = evaluate(group, which)
            recall = "-" if ev["recall"] is None else f"{ev['recall']:.2f} of {ev['injected']}"
            med = "-" if ev["median_delay_s"] is None else f"{ev['median_delay_s']:.0f}"
            p90 = "-" if ev["p90_delay_s"] is None else f"{ev['p90_delay_s']:.0f}"
            if name.startswith(("slow burn", "all")) and ev["median_delay_from_full_s"] is not None:
                # Outage-class (>= 30% failing) from when it got there: the slow burn's full strength.
                med += f" ({ev['median_delay_from_full_s']:.0f} from full)"
                p90 += f" ({ev['p90_delay_from_full_s']:.0f} from full)"
            fpd = "-" if ev["false_per_scope_day"] is None else f"{ev['false_per_scope_day']:.4f}"
            print(
                f"| {name} | {len(group)} | {recall} | {med} | {p90} | {ev['other_scope_incidents']} | "
                f"{ev['false_incidents']} | {fpd} ({ev['scope_days']} scope-days) |"
            )
    scoring = sum(r["seconds"] - r["pool_seconds"] for r in results)
    pooling = sum(r["pool_seconds"] for r in results)
    everything = sum(r["signal_seconds"] for r in results)
    scope_minutes = sum(r["scope_minutes"] for r in results)
    cost = model_cost()
    print(
        f"\ndetector cost per scored scope-minute ({scope_minutes:,} of them): "
        f"{scoring * 1e6 / scope_minutes:.1f} µs to score, attribute, learn and follow incidents; "
        f"{everything * 1e6 / scope_minutes:.1f} µs in all, with merging the partitions' reports "
        f"and pooling small merchants ({pooling * 1e6 / scope_minutes:.1f} µs of it)"
    )
    print(
        f"scope model: {cost['model_bytes_traced'] / 1024:.1f} KiB traced "
        f"({cost['model_bytes_pickled'] / 1024:.1f} KiB pickled) when every rhythm bucket is warm; "
        f"scope state with a full 10-minute ring: {cost['scope_state_bytes_pickled'] / 1024:.1f} KiB pickled"
    )
    for r in results:
        if not r["truth"]:
            print(
                f"  {r['name']}: detector state {r['detector_pickled_bytes'] / 1024:.0f} KiB pickled at the end, "
                f"{r['scopes']} scopes, {r['merchants_tracked']} merchants' volumes tracked; opened: "
                + ("; ".join(f"{i['scope']} at {_wib(i['end_ms'])} WIB" for i in r["detector"]) or "none")
            )
    for r in results:
        if r["truth"]:
            t = r["truth"][0]
            print(
                f"  {r['name']} seed {r['seed']}: injected {t['scope']['type']}:{t['scope']['id']}; opened: "
                + "; ".join(f"{i['scope']} at +{(i['end_ms'] - t['start_ms']) / 1000:.0f} s" for i in r["detector"])
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
