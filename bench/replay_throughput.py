"""Offline replay throughput and peak memory on simulated traffic (not a test).

    python bench/replay_throughput.py --records 1000000

Generates the `mixed` scenario (every kind of trouble, a switch outage) with the simulator
into a replay file, then runs `python -m stream replay --in FILE --out FILE --drain` in a
child process and reports records/s and the child's peak RSS. Each run is measured in the same
invocation, so numbers are comparable with each other, not across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(path: Path, records: int, seed: int) -> int:
    # ~3 records per payment in the mixed scenario; the simulator stops at --payments.
    payments = max(1, records // 3)
    minutes = max(60, payments // 400)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stream",
            "simulate",
            "--scenario",
            "mixed",
            "--seed",
            str(seed),
            "--payments",
            str(payments),
            "--minutes",
            str(minutes),
            "--rate-per-min",
            "600",
            "--out",
            str(path),
        ],
        cwd=ROOT,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def run_replay(path: Path, out: Path, jobs: int) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one replay; with jobs > 1 the peak is the largest of
    the processes (each holds its share of the partitions)."""
    code = (
        "import resource, sys, runpy; sys.argv = sys.argv[1:]; "
        "from stream.cli import main; rc = main(sys.argv); "
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(max(own, kids), file=sys.stderr); sys.exit(rc)"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, "replay", "--in", str(path), "--out", str(out), "--drain", "--jobs", str(jobs)],
        cwd=ROOT,
        check=True,
        stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - started
    return elapsed, int(proc.stderr.decode().strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="keep the generated replay file at this path")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="replay --jobs values to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "input.jsonl"
        n = generate(path, args.records, args.seed)
        out = Path(tmp) / "out.jsonl"
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
        print(f"input: {n} records ({path.stat().st_size / 2**20:.0f} MiB)")
        rates: dict[int, list[float]] = {j: [] for j in args.jobs}
        for i in range(args.repeat):
            for jobs in args.jobs:  # interleaved, so a noisy moment hits every variant alike
                elapsed, peak_kib = run_replay(path, out, jobs)
                rates[jobs].append(n / elapsed)
                print(
                    f"run {i + 1} jobs={jobs}: {elapsed:.2f} s, {n / elapsed:,.0f} records/s, "
                    f"peak RSS per process {peak_kib / 1024:.0f} MiB"
                )
        with open(out, "rb") as fh:
            decisions = sum(1 for _ in fh)
        print(f"decisions: {decisions}")
        for jobs, r in rates.items():
            print(f"jobs={jobs}: median {sorted(r)[len(r) // 2]:,.0f} records/s, best {max(r):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
