"""A fast test that loops forever stops the run with its name (`conftest.py`, `HANG_LIMIT_S`)
instead of hanging `make test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(folder: Path, limit_s: str) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text("from tests.conftest import _hung_test_stops, pytest_keyboard_interrupt\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QRIS_TEST_HANG_LIMIT_S": limit_s}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_test_that_loops_forever_stops_the_run_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "test_loops.py").write_text("def test_loops_forever():\n    while True:\n        pass\n")
    done = run_pytest(tmp_path, "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "test_loops.py::test_loops_forever ran past 1 s (QRIS_TEST_HANG_LIMIT_S): stopped as hung" in done.stderr


def test_a_test_within_the_limit_is_not_stopped(tmp_path: Path) -> None:
    (tmp_path / "test_quick.py").write_text("import time\n\ndef test_quick():\n    time.sleep(0.2)\n")
    done = run_pytest(tmp_path, "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "stopped as hung" not in done.stderr


def test_no_test_starts_with_an_earlier_tests_timer_still_running(tmp_path: Path) -> None:
    # A test that counts threads before and after what it checks (tests/test_topics_unreachable.py)
    # counts only its own: the timer of the test before it has ended when it starts. Many tests
    # in a row, as the timer thread's end races the next test's start.
    (tmp_path / "test_timers.py").write_text(
        "import threading\n\nimport pytest\n\n\n"
        '@pytest.mark.parametrize("n", range(300))\n'
        "def test_only_its_own_timer(n):\n"
        "    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]\n"
        "    assert len(timers) == 1, timers\n"
    )
    done = run_pytest(tmp_path, "600")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "300 passed" in done.stdout
