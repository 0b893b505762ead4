"""The shell-cost bench (bench/shell_cost.py) run end to end on a small simulated day: it wires
the live shell as the worker does, and the worker's interfaces move (`PartitionStore`'s local
`apply`, the watch's `on_output`); run here, it breaks with them, not when next measured. Slow
tier: a subprocess and a simulated day. No broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_shell_cost_bench_runs_a_small_day_through_the_live_shell(tmp_path: Path) -> None:
    day = tmp_path / "day.jsonl"
    simulate = [sys.executable, "-m", "stream", "simulate", "--scenario", "mixed", "--seed", "3"]
    simulate += ["--payments", "600", "--minutes", "20", "--rate-per-min", "60", "--out", str(day)]
    subprocess.run(simulate, cwd=ROOT, check=True, capture_output=True)
    run = subprocess.run(
        [sys.executable, "bench/shell_cost.py", "--in", str(day), "--records", "1500"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "us CPU per record" in run.stdout and "'records': 1500" in run.stdout, run.stdout
    assert "'internal_errors': 0" in run.stdout and "'commits': 0" not in run.stdout, run.stdout
    assert "local DB writes" in run.stdout, run.stdout
