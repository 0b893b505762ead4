"""`qris-guard demo`: the 29 March 2025 outage end to end on a real broker, for a first look.

Creates a fresh set of co-partitioned topics, starts the worker as a child process, sends the
simulator's `outage` scenario (a switch stops settling for 20 minutes; part of the stuck
payments settle late), waits until the worker has taken every record, prints what payment
operations would see, and stops the worker (unless `--keep-running`). The simulator's ground
truth is printed beside the detector's refunds so the two can be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core import codec
from .core.alerts import rupiah
from .core.eventtime import format_ms
from .drivers.report import render, summarise
from .settings import Settings, to_env


def _stats(port: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/qris/stats", timeout=5) as resp:
        return dict(codec.loads(resp.read()))


def _wait_records(proc: subprocess.Popen[bytes], port: int, n: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}; see its log")
        with contextlib.suppress(OSError):  # the web page is not up yet
            last = _stats(port)
        if last.get("counts", {}).get("records", 0) >= n:
            return last
        time.sleep(0.5)
    raise SystemExit(f"the worker took fewer than {n} records in {timeout_s:.0f} s: {last.get('counts')}")


def run(args: argparse.Namespace, base: Settings) -> int:
    # The Kafka clients here, not at the top: every command's parser imports this module for
    # `add_arguments`, and a replay needs none of them.
    from .drivers.kafkaread import read_topics
    from .simulate.output import produce
    from .simulate.traffic import generate
    from .simulate.truth import GroundTruth
    from .topics import create_topics

    run_id = time.strftime("%Y%m%d%H%M%S")
    prefix = f"qris-demo-{run_id}"
    s = replace(
        base.with_topic_prefix(prefix),
        app_id=prefix,
        data_dir=str(Path(args.data_dir) / prefix),
        partitions=max(base.partitions, 4),
    )
    print(f"[demo] broker {s.bootstrap}; topics {prefix}.* with {s.partitions} partitions")
    create_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_") or k.startswith("QRIS_KAFKA_")}
    env.update(to_env(s))
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(s.data_dir) / "worker.log"
    print(f"[demo] starting the worker (log {log_path}, stats http://127.0.0.1:{s.web_port}/qris/stats)")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        truth = GroundTruth()
        records = list(
            generate(
                "outage",
                seed=args.seed,
                start_ms=args.start_ms,
                minutes=args.minutes,
                rate_per_min=args.rate_per_min,
                partitions=s.partitions,
                payment_topic=s.payment_topic,
                ledger_topic=s.ledger_topic,
                truth=truth,
            )
        )
        print(f"[demo] simulating the outage scenario: {len(records)} records, {args.minutes:.0f} min of event time")
        started = time.monotonic()
        produce(records, s, partitions=s.partitions)
        stats = _wait_records(proc, s.web_port, len(records), args.timeout_s)
        took = time.monotonic() - started
        print(f"[demo] the worker took {stats['counts']['records']} records in {took:.1f} s; reading its outputs")
        time.sleep(2)  # let the last batch's outputs land
        roles = {s.refund_topic: "refunds", s.alert_topic: "alerts", s.dead_letter_topic: "dead_letter"}
        outputs = [(roles[r.topic], codec.loads(r.value)) for r in read_topics(s, list(roles)) if r.value is not None]
        summary = summarise(outputs)
        print()
        print(render(summary, max_alert_lines=args.alert_lines))
        active: dict[str, int] = {}
        for role, v in outputs:
            if role == "refunds":
                # Held refunds and released holds move no money: only requests and cancellations.
                sign = {"refund.requested": 1, "refund.cancel_requested": -1}.get(v["type"], 0)
                active[v["reference"]] = active.get(v["reference"], 0) + sign * v["amount"]
        owed_now = {ref: a for ref, a in active.items() if a > 0}
        print()
        for incident in truth.incidents:
            scope = incident["scope"]
            print(
                f"Simulator ground truth: {incident['kind']} of {scope['type']} {scope['id']} from "
                f"{format_ms(incident['start_ms'])} to {format_ms(incident['end_ms'])} "
                f"({incident['affected']} payments held or failed by it; {incident['payments']} requested through it "
                "in that time)."
            )
        owed_truth = sum(a for a, _ in truth.owed.values())
        print(
            f"Simulator ground truth: {len(truth.owed)} payments owed a refund ({rupiah(owed_truth)}); "
            f"detector's active refunds: {len(owed_now)} ({rupiah(sum(owed_now.values()))}). Payments in the last "
            f"{s.timeout_s / 60:.0f} min of the run are not yet due (their deadline is still ahead of the watermark)."
        )
    finally:
        if args.keep_running:
            print(f"[demo] the worker keeps running (pid {proc.pid}); stop it with: kill {proc.pid}")
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            print("[demo] worker stopped")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=29)
    p.add_argument("--minutes", type=float, default=60.0, help="event-time minutes of traffic (default 60)")
    p.add_argument("--rate-per-min", type=float, default=300.0, help="payments per minute (default 300)")
    p.add_argument(
        "--start-ms", type=int, default=1743213600000, help="event time start (default 2025-03-29 09:00 WIB)"
    )
    p.add_argument("--timeout-s", type=float, default=300.0, help="how long to wait for the worker (default 300)")
    p.add_argument("--alert-lines", type=int, default=8, help="alerts to print in full (default 8)")
    p.add_argument("--data-dir", default="var/demo", help="where the demo worker keeps its tables")
    p.add_argument("--keep-running", action="store_true", help="leave the worker running afterwards")
