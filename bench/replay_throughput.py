"""Offline replay throughput and peak memory on simulated traffic (not a test).

    python bench/replay_throughput.py --records 300000            # or --in FILE
    python bench/replay_throughput.py --in day.jsonl --jobs 1 --holds on --repeat 1

Generates the `mixed` scenario (every kind of trouble, a switch outage) with the simulator
into a replay file (or takes `--in`), then runs `python -m stream replay --in FILE --out FILE
--drain` in a child process, with refund holds on (the default: two passes) and off
(`--max-hold-s 0`), for each `--jobs`, and reports records/s by wall time and by CPU time (the
child and its jobs; on a shared machine the CPU rate is the steadier one) and the child's peak
RSS. Beside them, in the same run, a plain reading of the same file (each line and its value
parsed with orjson, nothing decided) gives the ratio: how many times a plain read the replay
costs. Runs are interleaved, so a noisy moment hits every variant alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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


def _child(argv: list[str], tree: Path = ROOT) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the child and the processes it waited for) and peak RSS (KiB,
    the largest of the child and its jobs) of one child run."""
    code = (
        "import resource, sys; sys.argv = sys.argv[1:]; "
        "from stream.cli import main; rc = main(sys.argv) if sys.argv[0] != 'read' else read(sys.argv[1]); "
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(max(own, kids), file=sys.stderr); sys.exit(rc)"
    )
    code = READ + code
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # Run from `tree`: its own `stream` package comes first on the path ("-c" puts the cwd first).
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tree, check=True, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, int(proc.stderr.decode().strip().splitlines()[-1])


# The plain read: every line and its value through orjson, nothing else.
READ = """
import orjson
def read(path):
    n = 0
    with open(path, "rb") as fh:
        for raw in fh:
            line = orjson.loads(raw)
            v = line.get("value")
            if isinstance(v, str):
                try:
                    orjson.loads(v)
                except orjson.JSONDecodeError:
                    pass  # a malformed record of the scenario
            n += 1
    return 0
"""


def run_replay(path: Path, out: Path, jobs: int, holds: bool, tree: Path = ROOT) -> tuple[float, float, int]:
    argv = ["replay", "--in", str(path), "--out", str(out), "--drain", "--jobs", str(jobs)]
    return _child(argv + ([] if holds else ["--max-hold-s", "0"]), tree)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--in", dest="input", type=Path, help="replay this file instead of generating one")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="keep the generated replay file at this path")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="replay --jobs values to compare")
    ap.add_argument("--holds", nargs="+", choices=["on", "off"], default=["on", "off"], help="refund holds")
    ap.add_argument("--base", type=Path, help="also replay with this tree (e.g. main from git archive), interleaved")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            path = args.input
            with open(path, "rb") as fh:
                n = sum(1 for _ in fh)
        else:
            path = Path(args.keep) if args.keep else Path(tmp) / "input.jsonl"
            n = generate(path, args.records, args.seed)
        out = Path(tmp) / "out.jsonl"
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"input: {path.name}, {n} records ({path.stat().st_size / 2**20:.0f} MiB)")
        trees = [("", ROOT)] + ([("base ", args.base)] if args.base else [])
        variants = [("read", 0, False, ROOT)] + [
            (f"{who}replay holds {h}", j, h == "on", tree) for h in args.holds for j in args.jobs for who, tree in trees
        ]
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        for i in range(args.repeat):
            for label, jobs, holds, tree in variants:
                name = label if label == "read" else f"{label} jobs={jobs}"
                if label == "read":
                    elapsed, cpu, peak_kib = _child(["read", str(path)])
                else:
                    elapsed, cpu, peak_kib = run_replay(path, out, jobs, holds, tree)
                walls.setdefault(name, []).append(elapsed)
                cpus.setdefault(name, []).append(cpu)
                print(
                    f"run {i + 1} {name}: {elapsed:.2f} s wall, {cpu:.2f} s CPU, {n / elapsed:,.0f} records/s "
                    f"({n / cpu:,.0f} per CPU second), peak RSS per process {peak_kib / 1024:.0f} MiB"
                )
        with open(out, "rb") as fh:
            decisions = sum(1 for _ in fh)
        print(f"decisions (last run): {decisions}")
        read_wall = min(walls["read"])
        read_cpu = min(cpus["read"])
        for name in walls:
            w, c = min(walls[name]), min(cpus[name])
            print(
                f"{name}: best {n / w:,.0f} records/s wall ({w / read_wall:.1f}x the plain read), "
                f"{n / c:,.0f} records per CPU second ({c / read_cpu:.1f}x the plain read)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
